//! The memo of the replica rows' hashes (`checksum_memo.rs`) changes nothing the sums say.

use super::*;

/// Each hand edit (a row updated, a row deleted, an extra row) made with
/// another connection after the follower memoised the rows' hashes is found
/// at the next commit that touches the table: the memo is not trusted past
/// another writer. A change that then writes the edited row over makes the
/// replica equal to the leader again: no alarm, and the sum is the rows'.
#[test]
fn a_hand_edit_is_found_though_the_follower_memoised_the_rows() {
    let s = shape2();
    let edits = [
        "UPDATE t SET v = 'zz' WHERE id = 2",
        "DELETE FROM t WHERE id = 2",
        "INSERT INTO t(id, v) VALUES (2, 'extra')",
    ];
    for (edit, overwritten) in edits.iter().flat_map(|e| [(e, false), (e, true)]) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("r.db");
        let mut r = Replica::open(&path).unwrap();
        let mut rows = vec![row(1, "a"), row(3, "c")];
        let mut first = vec![
            change(&s, 1, Op::Create, None, Some(row(1, "a"))),
            change(&s, 2, Op::Create, None, Some(row(3, "c"))),
        ];
        if !edit.starts_with("INSERT") {
            first.push(change(&s, 3, Op::Create, None, Some(row(2, "b"))));
            rows.push(row(2, "b"));
        }
        let n = first.len() as i64;
        r.apply(&batch(first, vec![leader_sum(&s, &rows, 1)]))
            .unwrap();
        rusqlite::Connection::open(&path)
            .unwrap()
            .execute(edit, [])
            .unwrap();
        // The leader then changes row 2 (written over on the replica) or row 1.
        let key = if overwritten { 2 } else { 1 };
        let i = rows.iter().position(|r| r[0] == SqlValue::Integer(key));
        let before = i.map(|i| rows.remove(i));
        let op = if before.is_some() {
            Op::Update
        } else {
            Op::Create
        };
        rows.push(row(key, "new"));
        r.apply(&batch(
            vec![change(&s, n + 1, op, before, Some(row(key, "new")))],
            vec![leader_sum(&s, &rows, n + 1)],
        ))
        .unwrap();
        let d = r.divergence().cloned().map(|d| (d.table, d.position));
        if overwritten {
            assert_eq!(d, None, "{edit}: the replica equals the leader again");
            assert!(crate::verify::report(r.connection()).unwrap().ok, "{edit}");
        } else {
            assert_eq!(d, Some(("t".to_owned(), Position(n + 1))), "{edit}");
        }
    }
}

/// The stored sum equals the one recomputed from the rows after every
/// batch, whatever the mix of creates, resends, updates, key changes and
/// deletes, with the memo complete, dropped over its budget (rows read
/// instead), and forgotten after another connection wrote the file.
#[test]
fn the_stored_sum_follows_the_rows_with_or_without_the_memo() {
    for cap in [usize::MAX, 5, 0] {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("r.db");
        let mut r = Replica::open(&path).unwrap();
        r.sums_mut().set_memo_cap(cap);
        let s = shape2();
        let mut rows: std::collections::BTreeMap<i64, Vec<SqlValue>> = Default::default();
        let mut x = 7u64;
        let mut pos = 0;
        for b in 0..30 {
            let mut changes = Vec::new();
            for _ in 0..10 {
                x = x
                    .wrapping_mul(6364136223846793005)
                    .wrapping_add(1442695040888963407);
                let id = (x >> 33) as i64 % 12;
                let v = format!("v{}", x >> 60);
                pos += 1;
                let have = rows.get(&id).cloned();
                let c = match ((x >> 40) % 5, have) {
                    (0, Some(old)) => {
                        rows.remove(&id);
                        change(&s, pos, Op::Delete, Some(old), None)
                    }
                    (1, Some(old)) if !rows.contains_key(&(id + 100)) => {
                        let new = row(id + 100, &v);
                        rows.remove(&id);
                        rows.insert(id + 100, new.clone());
                        change(&s, pos, Op::Update, Some(old), Some(new))
                    }
                    (2, _) => {
                        // A resend (a re-snapshot, say) of the row as it is, if any.
                        let new = rows.get(&id).cloned().unwrap_or_else(|| row(id, &v));
                        rows.insert(id, new.clone());
                        change(&s, pos, Op::Read, None, Some(new))
                    }
                    (_, old) => {
                        let new = row(id, &v);
                        rows.insert(id, new.clone());
                        let op = if old.is_some() {
                            Op::Update
                        } else {
                            Op::Create
                        };
                        change(&s, pos, op, old, Some(new))
                    }
                };
                changes.push(c);
            }
            let all: Vec<_> = rows.values().cloned().collect();
            r.apply(&batch(changes, vec![leader_sum(&s, &all, pos - 9)]))
                .unwrap();
            assert_eq!(r.divergence(), None, "cap {cap}, batch {b}");
            let rep = crate::verify::report(r.connection()).unwrap();
            assert!(rep.ok, "cap {cap}, batch {b}: {rep:?}");
            if b == 15 {
                // Another connection writes the file (no row changes): every memo goes.
                rusqlite::Connection::open(&path)
                    .unwrap()
                    .execute("UPDATE t SET v = v WHERE id = -1", [])
                    .unwrap();
            }
        }
    }
}

/// The memo's keys: a key of one integer skips the hash but stays distinct from every
/// other integer, and the hashed keys (an integer among other values, a text, a real
/// with the same bits) are distinct from each other.
#[test]
fn one_integer_keys_are_distinct_from_each_other_and_from_hashed_keys() {
    use rusqlite::types::ValueRef as V;
    use std::collections::HashSet;
    let key = |vs: &[V]| crate::checksums::memo::key_hash(vs.iter().copied());
    let mut seen = HashSet::new();
    for i in (-1000..1000).chain([i64::MIN, i64::MAX]) {
        assert!(
            seen.insert(key(&[V::Integer(i)])),
            "integer {i} met another key"
        );
    }
    assert_eq!(key(&[V::Integer(7)]), key(&[V::Integer(7)]));
    for other in [
        key(&[V::Integer(7), V::Integer(0)]),
        key(&[V::Text(b"7")]),
        key(&[V::Real(f64::from_bits(7))]),
        key(&[V::Null]),
        key(&[]),
    ] {
        assert!(seen.insert(other), "a hashed key met a one-integer key");
    }
}
