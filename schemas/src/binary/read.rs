//! Reading: an [`EnvelopeReader`] planned once per writer schema, then envelopes read straight
//! from the bytes, failing (never panicking) on damaged input.

use std::sync::Arc;

use apache_avro::schema::{RecordSchema, Schema};

use crate::envelope::{DecodedChange, Op, RowShape, Source};
use crate::value::SqlValue;
use crate::{ContractError, Position};

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
pub(super) struct Cursor<'a>(pub(super) &'a [u8]);

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

    pub(super) fn long(&mut self) -> Result<i64, ContractError> {
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
    Epoch,
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
                                "epoch" => SourceField::Epoch,
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
        position: Position::ZERO,
        txn: Position::ZERO,
        prev_position: None,
        snapshot: false,
        ts_ms: 0,
        epoch: 0,
    };
    for (which, plan) in fields {
        let (prim, v) = plan.read_prim(r)?;
        match which {
            SourceField::Connector => s.connector = text(v, "connector")?,
            SourceField::Db => s.db = text(v, "db")?,
            SourceField::Table => s.table = text(v, "table")?,
            SourceField::Position => s.position = Position(integer(v, "position")?),
            SourceField::Txn => s.txn = Position(integer(v, "txn")?),
            SourceField::PrevPosition => {
                s.prev_position = match v {
                    SqlValue::Null => None,
                    v => Some(Position(integer(v, "prev_position")?)),
                }
            }
            // As the generic path: only a boolean `true` is a snapshot.
            SourceField::Snapshot => {
                s.snapshot = prim == Prim::Boolean && v == SqlValue::Integer(1)
            }
            SourceField::TsMs => s.ts_ms = integer(v, "ts_ms")?,
            SourceField::Epoch => s.epoch = integer(v, "epoch")?,
            SourceField::Other => {}
        }
    }
    Ok(s)
}
