//! The direct writer and planned reader against apache-avro's own writer and generic reader:
//! property tests on every table shape, damaged bytes, longs at the edges, foreign schemas.

// apache-avro 0.22 deprecates the datum helpers in favour of a builder API
// that schema_registry_converter 6 does not use yet; the bytes are the same.
#![allow(deprecated)]

use std::sync::Arc;

use apache_avro::schema::Schema;
use apache_avro::{from_avro_datum, to_avro_datum};
use proptest::prelude::*;

use super::read::Cursor;
use super::{put_long, EnvelopeReader};
use crate::avro_schema::TableSchemas;
use crate::envelope::tests::any_value;
use crate::envelope::{decode_envelope, ChangeEvent, Op, RowShape, Source};
use crate::table::TableShape;
use crate::value::{SqlValue, StorageClass};
use crate::Position;

const TABLES: [&str; 3] = [
    "CREATE TABLE t(id INTEGER PRIMARY KEY, i INTEGER, r REAL, s TEXT, b BLOB, n NUMERIC, x)",
    "CREATE TABLE t(a TEXT NOT NULL, b INTEGER NOT NULL, c REAL NOT NULL, d BLOB NOT NULL, e ANY NOT NULL, f ANY, PRIMARY KEY (b, a)) STRICT",
    "CREATE TABLE t(\"weird name\" TEXT PRIMARY KEY, \"2nd\" INT NOT NULL DEFAULT 0, \"a-b\" BLOB, c NUMERIC NOT NULL, d TEXT, e REAL) WITHOUT ROWID",
];

fn schemas(ddl: &str) -> TableSchemas {
    let conn = rusqlite::Connection::open_in_memory().unwrap();
    conn.execute_batch(ddl).unwrap();
    TableSchemas::derive(TableShape::read(&conn, "t").unwrap()).unwrap()
}

/// A row the table's codecs can hold: each value moved to a class its
/// column takes (NULL only where the column allows it).
fn fit(s: &TableSchemas, vals: &[SqlValue]) -> Vec<SqlValue> {
    s.codecs
        .iter()
        .zip(vals)
        .map(|(c, v)| match v.class() {
            None if c.nullable => SqlValue::Null,
            Some(class) if c.classes.contains(&class) => v.clone(),
            _ => match c.classes[0] {
                StorageClass::Integer => SqlValue::Integer(7),
                StorageClass::Real => SqlValue::Real(0.5),
                StorageClass::Text => SqlValue::Text("t".into()),
                StorageClass::Blob => SqlValue::Blob(vec![1]),
            },
        })
        .collect()
}

fn event(
    s: &TableSchemas,
    before: Option<Vec<SqlValue>>,
    after: Option<Vec<SqlValue>>,
    op: Op,
    pos: i64,
    prev: Option<i64>,
) -> ChangeEvent {
    ChangeEvent {
        op,
        before,
        after,
        source: Source {
            connector: crate::contract::CONNECTOR.into(),
            db: "leader".into(),
            table: s.shape.name.clone(),
            position: Position(pos),
            txn: Position(pos.saturating_add(3)),
            prev_position: prev.map(Position),
            snapshot: op == Op::Read,
            ts_ms: pos / 2,
            epoch: pos % 4,
        },
        ts_ms: pos / 3,
    }
}

fn any_op() -> impl Strategy<Value = Op> {
    prop_oneof![
        Just(Op::Create),
        Just(Op::Update),
        Just(Op::Delete),
        Just(Op::Read)
    ]
}

proptest! {
    /// The direct writer produces apache-avro's bytes, and the planned
    /// reader reads them as apache-avro's reader plus `decode_envelope` do.
    #[test]
    fn direct_bytes_and_reads_match_apache_avro(
        table in 0..TABLES.len(),
        b in proptest::collection::vec(any_value(), 7),
        a in proptest::collection::vec(any_value(), 7),
        has_before in any::<bool>(),
        has_after in any::<bool>(),
        op in any_op(),
        pos in any::<i64>(),
        prev in proptest::option::of(any::<i64>()),
    ) {
        let s = schemas(TABLES[table]);
        let before = has_before.then(|| fit(&s, &b));
        let after = has_after.then(|| fit(&s, &a));
        let ev = event(&s, before, after, op, pos, prev);

        let want = to_avro_datum(&s.value, s.envelope_value(&ev).unwrap()).unwrap();
        let mut got = Vec::new();
        s.write_envelope(&ev, &mut got).unwrap();
        prop_assert_eq!(&got, &want);

        let row = ev.key_row().unwrap_or(&[]).to_vec();
        if !row.is_empty() {
            let want = to_avro_datum(&s.key, s.key_value(&row).unwrap()).unwrap();
            let mut got = Vec::new();
            s.write_key(&row, &mut got).unwrap();
            prop_assert_eq!(got, want);
        }

        let shape = Arc::new(RowShape::from_value_schema(&s.value_json).unwrap());
        let reader = EnvelopeReader::plan(&s.value, shape.clone()).expect("barista's own schema has a plan");
        let generic = decode_envelope(shape, &from_avro_datum(&s.value, &mut want.as_slice(), None).unwrap()).unwrap();
        let direct = reader.read(&want).unwrap();
        prop_assert_eq!(&direct, &generic);
        prop_assert_eq!(direct.before, ev.before);
        prop_assert_eq!(direct.after, ev.after);
        prop_assert_eq!(direct.source, ev.source);
    }

    /// Damaged bytes: the planned reader never panics, and whatever it
    /// accepts the generic path accepts with the same result.
    #[test]
    fn damaged_bytes_are_refused_like_the_generic_reader(
        table in 0..TABLES.len(),
        a in proptest::collection::vec(any_value(), 7),
        cut in any::<prop::sample::Index>(),
        flips in proptest::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 0..4),
    ) {
        let s = schemas(TABLES[table]);
        let ev = event(&s, None, Some(fit(&s, &a)), Op::Create, 42, Some(41));
        let mut bytes = Vec::new();
        s.write_envelope(&ev, &mut bytes).unwrap();
        for (i, b) in flips {
            let i = i.index(bytes.len());
            bytes[i] = b;
        }
        bytes.truncate(cut.index(bytes.len() + 1));
        let shape = Arc::new(RowShape::from_value_schema(&s.value_json).unwrap());
        let reader = EnvelopeReader::plan(&s.value, shape.clone()).unwrap();
        let direct = reader.read(&bytes);
        let generic = from_avro_datum(&s.value, &mut bytes.as_slice(), None)
            .map_err(|e| e.to_string())
            .and_then(|v| decode_envelope(shape, &v).map_err(|e| e.to_string()));
        if let Ok(d) = &direct {
            prop_assert_eq!(Ok(d), generic.as_ref(), "direct accepted what generic did not");
        }
    }
}

#[test]
fn longs_at_the_edges_are_apache_avro_longs() {
    for n in [
        0,
        1,
        -1,
        63,
        -64,
        64,
        i64::MAX,
        i64::MIN,
        1 << 35,
        -(1 << 35),
    ] {
        let mut got = Vec::new();
        put_long(&mut got, n);
        assert_eq!(
            got,
            to_avro_datum(&Schema::Long, apache_avro::types::Value::Long(n)).unwrap(),
            "{n}"
        );
        assert_eq!(Cursor(&got).long().unwrap(), n);
    }
    // Eleven bytes, or a tenth byte above 1, do not fit in 64 bits.
    assert!(Cursor(&[0xff; 11]).long().is_err());
    assert!(
        Cursor(&[0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x02])
            .long()
            .is_err()
    );
}

#[test]
fn schemas_barista_does_not_write_get_no_plan() {
    let s = schemas(TABLES[0]);
    let shape = Arc::new(RowShape::from_value_schema(&s.value_json).unwrap());
    let mut v: serde_json::Value = serde_json::from_str(&s.value_json).unwrap();
    v["fields"][2]["type"] =
        serde_json::json!({"type": "enum", "name": "Op", "symbols": ["c", "u", "d", "r"]});
    let odd = Schema::parse_str(&v.to_string()).unwrap();
    assert!(EnvelopeReader::plan(&odd, shape.clone()).is_none());
    let mut v: serde_json::Value = serde_json::from_str(&s.value_json).unwrap();
    v["fields"]
        .as_array_mut()
        .unwrap()
        .push(serde_json::json!({"name": "extra", "type": "long", "default": 0}));
    let extra = Schema::parse_str(&v.to_string()).unwrap();
    assert!(EnvelopeReader::plan(&extra, shape).is_none());
}
