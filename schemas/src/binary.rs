//! The envelope in Avro binary, written and read without building
//! apache-avro `Value` trees.
//!
//! Profiles of the publisher and of a follower's decode put most of their
//! time in allocating, filling and walking `Value`s (a `String` per field
//! name, a `Box` per union) rather than in the bytes themselves. The envelope
//! is barista's own shape, so both directions are written against it here:
//! - [`TableSchemas::write_key`] and [`TableSchemas::write_envelope`] write
//!   the bytes apache-avro writes for [`TableSchemas::key_value`] and
//!   [`TableSchemas::envelope_value`] (a property test compares them);
//! - [`EnvelopeReader`] is planned once per writer schema and reads what
//!   apache-avro's generic reader plus [`decode_envelope`] read. A schema it
//!   does not recognise gives no plan, and the caller keeps the generic path.
//!
//! [`decode_envelope`]: crate::envelope::decode_envelope

use std::sync::Arc;

use apache_avro::schema::{RecordSchema, Schema};

use crate::avro_schema::TableSchemas;
use crate::envelope::{ChangeEvent, DecodedChange, Op, RowShape, Source};
use crate::value::{ColumnCodec, SqlValue};
use crate::ContractError;

/// Appends `n` as an Avro `long`: zig-zag, then a base-128 varint.
pub fn put_long(buf: &mut Vec<u8>, n: i64) {
    let mut z = ((n << 1) ^ (n >> 63)) as u64;
    while z >= 0x80 {
        buf.push((z as u8) | 0x80);
        z >>= 7;
    }
    buf.push(z as u8);
}

fn put_bytes(buf: &mut Vec<u8>, b: &[u8]) {
    put_long(buf, b.len() as i64);
    buf.extend_from_slice(b);
}

impl ColumnCodec {
    /// Appends one value, in the union branch [`ColumnCodec::branch`] chooses.
    pub fn write(&self, v: &SqlValue, buf: &mut Vec<u8>) -> Result<(), ContractError> {
        if let Some(i) = self.branch(v)? {
            put_long(buf, i as i64);
        }
        match v {
            SqlValue::Integer(i) => put_long(buf, *i),
            SqlValue::Real(f) => buf.extend_from_slice(&f.to_le_bytes()),
            SqlValue::Text(s) => put_bytes(buf, s.as_bytes()),
            SqlValue::Blob(b) => put_bytes(buf, b),
            SqlValue::Null => {}
        }
        Ok(())
    }
}

impl TableSchemas {
    fn write_row(&self, row: &[SqlValue], buf: &mut Vec<u8>) -> Result<(), ContractError> {
        self.check_row(row)?;
        for ((codec, v), name) in self.codecs.iter().zip(row).zip(&self.field_names) {
            codec.write(v, buf).map_err(|e| {
                ContractError::Malformed(format!(
                    "table {:?} column {:?}: {e}",
                    self.shape.name, name
                ))
            })?;
        }
        Ok(())
    }

    /// Appends the Avro key record of a row (the bytes of [`TableSchemas::key_value`]).
    pub fn write_key(&self, row: &[SqlValue], buf: &mut Vec<u8>) -> Result<(), ContractError> {
        for i in self.shape.pk_indexes() {
            let v = row
                .get(i)
                .ok_or_else(|| ContractError::Malformed("short row".into()))?;
            self.codecs[i].write(v, buf)?;
        }
        Ok(())
    }

    /// Appends the Avro envelope of a change (the bytes of [`TableSchemas::envelope_value`]).
    pub fn write_envelope(&self, ev: &ChangeEvent, buf: &mut Vec<u8>) -> Result<(), ContractError> {
        for image in [&ev.before, &ev.after] {
            match image {
                Some(row) => {
                    put_long(buf, 1);
                    self.write_row(row, buf)?;
                }
                None => put_long(buf, 0),
            }
        }
        put_bytes(buf, ev.op.code().as_bytes());
        let s = &ev.source;
        put_bytes(buf, crate::contract::CONNECTOR.as_bytes());
        put_bytes(buf, s.db.as_bytes());
        put_bytes(buf, s.table.as_bytes());
        put_long(buf, s.position);
        put_long(buf, s.txn);
        match s.prev_position {
            Some(p) => {
                put_long(buf, 1);
                put_long(buf, p);
            }
            None => put_long(buf, 0),
        }
        buf.push(u8::from(s.snapshot));
        put_long(buf, s.ts_ms);
        put_long(buf, ev.ts_ms);
        Ok(())
    }
}

/// An Avro primitive a column or source field may be written as.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Prim {
    Null,
    Boolean,
    Int,
    Long,
    Float,
    Double,
    Bytes,
    String,
}

/// How one field is read: a primitive, or a union of primitives.
#[derive(Debug, Clone, PartialEq, Eq)]
struct FieldPlan {
    union: bool,
    branches: Vec<Prim>,
}

impl FieldPlan {
    fn of(schema: &Schema) -> Option<FieldPlan> {
        let prim = |s: &Schema| {
            Some(match s {
                Schema::Null => Prim::Null,
                Schema::Boolean => Prim::Boolean,
                Schema::Int => Prim::Int,
                Schema::Long => Prim::Long,
                Schema::Float => Prim::Float,
                Schema::Double => Prim::Double,
                Schema::Bytes => Prim::Bytes,
                Schema::String => Prim::String,
                _ => return None,
            })
        };
        match schema {
            Schema::Union(u) => Some(FieldPlan {
                union: true,
                branches: u.variants().iter().map(prim).collect::<Option<_>>()?,
            }),
            s => Some(FieldPlan {
                union: false,
                branches: vec![prim(s)?],
            }),
        }
    }

    fn read(&self, r: &mut Cursor<'_>) -> Result<SqlValue, ContractError> {
        self.read_prim(r).map(|(_, v)| v)
    }

    /// The value and the branch it was written as.
    fn read_prim(&self, r: &mut Cursor<'_>) -> Result<(Prim, SqlValue), ContractError> {
        let prim = if self.union {
            let i = r.long()?;
            *usize::try_from(i)
                .ok()
                .and_then(|i| self.branches.get(i))
                .ok_or_else(|| bad(format!("union branch {i} of {}", self.branches.len())))?
        } else {
            self.branches[0]
        };
        let v = match prim {
            Prim::Null => SqlValue::Null,
            Prim::Boolean => match r.byte()? {
                0 => SqlValue::Integer(0),
                1 => SqlValue::Integer(1),
                b => return Err(bad(format!("boolean byte {b}"))),
            },
            Prim::Int => {
                let i = r.long()?;
                i32::try_from(i).map_err(|_| bad(format!("int {i} out of range")))?;
                SqlValue::Integer(i)
            }
            Prim::Long => SqlValue::Integer(r.long()?),
            Prim::Float => SqlValue::Real(f64::from(f32::from_le_bytes(r.array()?))),
            Prim::Double => SqlValue::Real(f64::from_le_bytes(r.array()?)),
            Prim::Bytes => SqlValue::Blob(r.bytes()?.to_vec()),
            Prim::String => SqlValue::Text(
                std::str::from_utf8(r.bytes()?)
                    .map_err(|e| bad(format!("string is not UTF-8: {e}")))?
                    .to_owned(),
            ),
        };
        Ok((prim, v))
    }
}

fn bad(what: String) -> ContractError {
    ContractError::Malformed(what)
}

/// Reads Avro binary from a slice, failing (never panicking) on short input.
struct Cursor<'a>(&'a [u8]);

impl<'a> Cursor<'a> {
    fn byte(&mut self) -> Result<u8, ContractError> {
        let (&b, rest) = self
            .0
            .split_first()
            .ok_or_else(|| bad("truncated value".into()))?;
        self.0 = rest;
        Ok(b)
    }

    fn array<const N: usize>(&mut self) -> Result<[u8; N], ContractError> {
        let (head, rest) = self
            .0
            .split_first_chunk::<N>()
            .ok_or_else(|| bad("truncated value".into()))?;
        self.0 = rest;
        Ok(*head)
    }

    fn long(&mut self) -> Result<i64, ContractError> {
        let mut z: u64 = 0;
        for shift in (0..70).step_by(7) {
            let b = self.byte()?;
            if shift == 63 && b > 1 {
                break;
            }
            z |= u64::from(b & 0x7f) << shift;
            if b & 0x80 == 0 {
                return Ok(((z >> 1) as i64) ^ -((z & 1) as i64));
            }
        }
        Err(bad("a long longer than 64 bits".into()))
    }

    fn bytes(&mut self) -> Result<&'a [u8], ContractError> {
        let n = self.long()?;
        let n = usize::try_from(n).map_err(|_| bad(format!("negative length {n}")))?;
        if n > self.0.len() {
            return Err(bad(format!(
                "length {n} past the end ({} bytes left)",
                self.0.len()
            )));
        }
        let (head, rest) = self.0.split_at(n);
        self.0 = rest;
        Ok(head)
    }
}

/// The `source` fields barista reads; others are read and dropped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum SourceField {
    Connector,
    Db,
    Table,
    Position,
    Txn,
    PrevPosition,
    Snapshot,
    TsMs,
    Other,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Step {
    Before,
    After,
    Op,
    Source(Vec<(SourceField, FieldPlan)>),
    TsMs(FieldPlan),
}

/// A plan for reading envelopes written with one writer schema.
#[derive(Debug, Clone)]
pub struct EnvelopeReader {
    steps: Vec<Step>,
    row: Vec<FieldPlan>,
    shape: Arc<RowShape>,
}

fn record(schema: &Schema) -> Option<&RecordSchema> {
    match schema {
        Schema::Record(r) => Some(r),
        _ => None,
    }
}

/// The row record of `before`/`after`: `["null", record]`, or `["null", name]`
/// naming the record `before` defined.
fn row_union<'s>(
    schema: &'s Schema,
    defined: Option<&'s RecordSchema>,
) -> Option<&'s RecordSchema> {
    let Schema::Union(u) = schema else {
        return None;
    };
    match u.variants() {
        [Schema::Null, Schema::Record(r)] => Some(r),
        [Schema::Null, Schema::Ref { name }] => defined.filter(|d| &d.name == name),
        _ => None,
    }
}

impl EnvelopeReader {
    /// Plans reading envelopes of `schema`, or `None` when the schema is not
    /// one barista writes (the caller then reads it the generic way).
    pub fn plan(schema: &Schema, shape: Arc<RowShape>) -> Option<EnvelopeReader> {
        let env = record(schema)?;
        let mut steps = Vec::new();
        let mut row: Option<&RecordSchema> = None;
        let (mut seen_before, mut seen_after) = (false, false);
        let required = [
            SourceField::Connector,
            SourceField::Db,
            SourceField::Table,
            SourceField::Position,
            SourceField::Txn,
            SourceField::TsMs,
        ];
        for f in &env.fields {
            steps.push(match f.name.as_str() {
                "before" | "after" => {
                    let r = row_union(&f.schema, row)?;
                    if row.is_some_and(|d| d.name != r.name) {
                        return None;
                    }
                    row = Some(r);
                    if f.name == "before" {
                        seen_before = true;
                        Step::Before
                    } else {
                        seen_after = true;
                        Step::After
                    }
                }
                "op" if f.schema == Schema::String => Step::Op,
                "ts_ms" => Step::TsMs(long_plan(&f.schema)?),
                "source" => {
                    let src = record(&f.schema)?;
                    let fields = src
                        .fields
                        .iter()
                        .map(|sf| {
                            let plan = FieldPlan::of(&sf.schema)?;
                            let which = match sf.name.as_str() {
                                "connector" => SourceField::Connector,
                                "db" => SourceField::Db,
                                "table" => SourceField::Table,
                                "position" => SourceField::Position,
                                "txn" => SourceField::Txn,
                                "prev_position" => SourceField::PrevPosition,
                                "snapshot" => SourceField::Snapshot,
                                "ts_ms" => SourceField::TsMs,
                                _ => SourceField::Other,
                            };
                            Some((which, plan))
                        })
                        .collect::<Option<Vec<_>>>()?;
                    if !required.iter().all(|r| fields.iter().any(|(w, _)| w == r)) {
                        return None;
                    }
                    Step::Source(fields)
                }
                _ => return None,
            });
        }
        let has = |want: fn(&Step) -> bool| steps.iter().filter(|s| want(s)).count() == 1;
        if !(seen_before
            && seen_after
            && has(|s| matches!(s, Step::Op))
            && has(|s| matches!(s, Step::Source(_)))
            && has(|s| matches!(s, Step::TsMs(_))))
        {
            return None;
        }
        let row = row?
            .fields
            .iter()
            .map(|f| FieldPlan::of(&f.schema))
            .collect::<Option<Vec<_>>>()?;
        (row.len() == shape.columns.len()).then_some(EnvelopeReader { steps, row, shape })
    }

    /// Reads one envelope (the Avro datum, after the Confluent frame).
    pub fn read(&self, bytes: &[u8]) -> Result<DecodedChange, ContractError> {
        let mut r = Cursor(bytes);
        let (mut before, mut after, mut op, mut source, mut ts_ms) = (None, None, None, None, 0);
        for step in &self.steps {
            match step {
                Step::Before => before = self.read_image(&mut r)?,
                Step::After => after = self.read_image(&mut r)?,
                Step::Op => {
                    let code = std::str::from_utf8(r.bytes()?)
                        .map_err(|e| bad(format!("`op` is not UTF-8: {e}")))?;
                    op = Some(
                        Op::from_code(code).ok_or_else(|| bad(format!("unknown op {code:?}")))?,
                    );
                }
                Step::Source(fields) => source = Some(read_source(fields, &mut r)?),
                Step::TsMs(plan) => ts_ms = integer(plan.read(&mut r)?, "ts_ms")?,
            }
        }
        Ok(DecodedChange {
            shape: self.shape.clone(),
            op: op.ok_or_else(|| bad("missing field `op`".into()))?,
            before,
            after,
            source: source.ok_or_else(|| bad("missing field `source`".into()))?,
            ts_ms,
        })
    }

    fn read_image(&self, r: &mut Cursor<'_>) -> Result<Option<Vec<SqlValue>>, ContractError> {
        match r.long()? {
            0 => Ok(None),
            1 => self
                .row
                .iter()
                .map(|p| p.read(r))
                .collect::<Result<Vec<_>, _>>()
                .map(Some),
            i => Err(bad(format!("row image union branch {i} of 2"))),
        }
    }
}

fn long_plan(schema: &Schema) -> Option<FieldPlan> {
    let p = FieldPlan::of(schema)?;
    (!p.union && matches!(p.branches[0], Prim::Long | Prim::Int)).then_some(p)
}

fn integer(v: SqlValue, what: &str) -> Result<i64, ContractError> {
    match v {
        SqlValue::Integer(i) => Ok(i),
        _ => Err(bad(format!("`{what}` is not a long"))),
    }
}

fn text(v: SqlValue, what: &str) -> Result<String, ContractError> {
    match v {
        SqlValue::Text(s) => Ok(s),
        _ => Err(bad(format!("`{what}` is not a string"))),
    }
}

fn read_source(
    fields: &[(SourceField, FieldPlan)],
    r: &mut Cursor<'_>,
) -> Result<Source, ContractError> {
    let mut s = Source {
        connector: String::new(),
        db: String::new(),
        table: String::new(),
        position: 0,
        txn: 0,
        prev_position: None,
        snapshot: false,
        ts_ms: 0,
    };
    for (which, plan) in fields {
        let (prim, v) = plan.read_prim(r)?;
        match which {
            SourceField::Connector => s.connector = text(v, "connector")?,
            SourceField::Db => s.db = text(v, "db")?,
            SourceField::Table => s.table = text(v, "table")?,
            SourceField::Position => s.position = integer(v, "position")?,
            SourceField::Txn => s.txn = integer(v, "txn")?,
            SourceField::PrevPosition => {
                s.prev_position = match v {
                    SqlValue::Null => None,
                    v => Some(integer(v, "prev_position")?),
                }
            }
            // As the generic path: only a boolean `true` is a snapshot.
            SourceField::Snapshot => {
                s.snapshot = prim == Prim::Boolean && v == SqlValue::Integer(1)
            }
            SourceField::TsMs => s.ts_ms = integer(v, "ts_ms")?,
            SourceField::Other => {}
        }
    }
    Ok(s)
}

// apache-avro 0.22 deprecates the datum helpers in favour of a builder API
// that schema_registry_converter 6 does not use yet; the bytes are the same.
#[cfg(test)]
#[allow(deprecated)]
mod tests {
    use super::*;
    use crate::envelope::decode_envelope;
    use crate::envelope::tests::any_value;
    use crate::table::TableShape;
    use crate::value::StorageClass;
    use apache_avro::{from_avro_datum, to_avro_datum};
    use proptest::prelude::*;

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
                position: pos,
                txn: pos.saturating_add(3),
                prev_position: prev,
                snapshot: op == Op::Read,
                ts_ms: pos / 2,
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
}
