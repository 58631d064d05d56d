//! Schema resolution: whether a reader schema can read every datum a writer schema wrote, and
//! if not, every place and rule that breaks.
//!
//! apache-avro's [`SchemaCompatibility::can_read`] gives the verdict. It stops at the first
//! problem and does not say where it was, so when the verdict is not `Full` this module walks the
//! two schemas side by side, asking apache-avro again about each part, to name every field and
//! rule that breaks (`READER_FIELD_MISSING_DEFAULT_VALUE at /fields/2 (field 'price')`).
//!
//! A `Partial` verdict (a reader enum lacking some writer symbols, a union lacking some branches)
//! counts as incompatible, as in Confluent: such a reader fails on some of the data it may meet.

use std::fmt;

use apache_avro::schema::{
    ArraySchema, DecimalSchema, EnumSchema, FixedSchema, InnerDecimalSchema, MapSchema,
    RecordSchema, UuidSchema,
};
use apache_avro::schema_compatibility::{Compatibility, SchemaCompatibility};
use apache_avro::Schema;

/// The rule a reader schema breaks, with Confluent's (Avro Java's) names.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Rule {
    /// A reader field is absent from the writer and has no default value.
    ReaderFieldMissingDefaultValue,
    /// The reader's type cannot be resolved from the writer's type.
    TypeMismatch,
    /// The reader's union has no branch for one of the writer's types.
    MissingUnionBranch,
    /// The reader's enum lacks some of the writer's symbols and has no default.
    MissingEnumSymbols,
    /// A named type (record, enum, fixed) was renamed.
    NameMismatch,
    /// A fixed type changed size.
    FixedSizeMismatch,
}

impl Rule {
    /// The Confluent name, e.g. `READER_FIELD_MISSING_DEFAULT_VALUE`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::ReaderFieldMissingDefaultValue => "READER_FIELD_MISSING_DEFAULT_VALUE",
            Self::TypeMismatch => "TYPE_MISMATCH",
            Self::MissingUnionBranch => "MISSING_UNION_BRANCH",
            Self::MissingEnumSymbols => "MISSING_ENUM_SYMBOLS",
            Self::NameMismatch => "NAME_MISMATCH",
            Self::FixedSizeMismatch => "FIXED_SIZE_MISMATCH",
        }
    }
}

impl fmt::Display for Rule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One place where a reader schema cannot read what a writer schema wrote.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reason {
    /// The rule broken.
    pub rule: Rule,
    /// Where, as a JSON pointer into the schema in Confluent's notation (`/fields/1/type`);
    /// union branches are numbered in the schema that has the union.
    pub path: String,
    /// The record field concerned, dotted from the top record (`address.zip`), if any.
    pub field: Option<String>,
    /// What is wrong, in terms of "reader" and "writer".
    pub detail: String,
}

impl fmt::Display for Reason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} at {}", self.rule, self.path)?;
        if let Some(field) = &self.field {
            write!(f, " (field '{field}')")?;
        }
        write!(f, ": {}", self.detail)
    }
}
/// Why a reader schema cannot read a writer schema.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Unreadable {
    /// Every place the reader breaks; never empty.
    pub reasons: Vec<Reason>,
    /// apache-avro's own verdict, when it was an error rather than a partial match.
    pub avro_error: Option<String>,
}

/// Whether `reader` can read every datum written with `writer`, and if not, where and why.
pub fn can_read(writer: &Schema, reader: &Schema) -> Result<(), Unreadable> {
    let avro_error = match SchemaCompatibility::can_read(writer, reader) {
        Ok(Compatibility::Full) => return Ok(()),
        Ok(Compatibility::Partial) => None,
        Err(err) => Some(err.to_string()),
    };
    let mut walk = Walk::default();
    walk.explain(writer, reader);
    let mut reasons = walk.reasons;
    if reasons.is_empty() {
        // The walk mirrors apache-avro's rules, so this only happens if they drift apart;
        // still report something rather than an empty list.
        reasons.push(Reason {
            rule: Rule::TypeMismatch,
            path: "/".to_owned(),
            field: None,
            detail: avro_error
                .clone()
                .unwrap_or_else(|| "the reader can read only part of the writer's data".into()),
        });
    }
    Err(Unreadable {
        reasons,
        avro_error,
    })
}

/// apache-avro's verdict on one pair of sub-schemas: fully readable or not.
fn fully_readable(writer: &Schema, reader: &Schema) -> bool {
    matches!(
        SchemaCompatibility::can_read(writer, reader),
        Ok(Compatibility::Full)
    )
}

/// Side-by-side descent into a writer and a reader schema that are not fully compatible,
/// collecting a [`Reason`] at every leaf where they part.
#[derive(Default)]
struct Walk {
    path: Vec<String>,
    fields: Vec<String>,
    reasons: Vec<Reason>,
}

impl Walk {
    fn report(&mut self, rule: Rule, detail: String) {
        let path = if self.path.is_empty() {
            "/".to_owned()
        } else {
            self.path.iter().map(|part| format!("/{part}")).collect()
        };
        let field = (!self.fields.is_empty()).then(|| self.fields.join("."));
        self.reasons.push(Reason {
            rule,
            path,
            field,
            detail,
        });
    }

    /// Descends into `writer`/`reader` below the extra path segments `segments`.
    fn descend(&mut self, segments: &[&str], writer: &Schema, reader: &Schema) {
        self.path.extend(segments.iter().map(|s| (*s).to_owned()));
        self.explain(writer, reader);
        self.path.truncate(self.path.len() - segments.len());
    }

    /// Explains why `reader` cannot fully read `writer`; the caller knows it cannot.
    fn explain(&mut self, writer: &Schema, reader: &Schema) {
        // Same first check as apache-avro: named types compare their unqualified names.
        if let (Some(w_name), Some(r_name)) = (writer.name(), reader.name()) {
            if w_name.name() != r_name.name() {
                self.path.push("name".to_owned());
                self.report(
                    Rule::NameMismatch,
                    format!("the reader's type is named {r_name}, the writer's {w_name}"),
                );
                self.path.pop();
                return;
            }
        }
        match (writer, reader) {
            (Schema::Union(w_union), Schema::Union(r_union)) => {
                for (i, w_branch) in w_union.variants().iter().enumerate() {
                    let branches = r_union.variants();
                    if branches.iter().any(|r| fully_readable(w_branch, r)) {
                        continue;
                    }
                    let index = i.to_string();
                    match counterpart(w_branch, branches) {
                        Some(r_branch) => self.descend(&[&index], w_branch, r_branch),
                        None => {
                            self.path.push(index);
                            self.report(
                                Rule::MissingUnionBranch,
                                format!(
                                    "the reader's union has no branch for the writer's type {}",
                                    type_name(w_branch)
                                ),
                            );
                            self.path.pop();
                        }
                    }
                }
            }
            (Schema::Union(w_union), _) => {
                for (i, w_branch) in w_union.variants().iter().enumerate() {
                    if !fully_readable(w_branch, reader) {
                        self.descend(&[&i.to_string()], w_branch, reader);
                    }
                }
            }
            (_, Schema::Union(r_union)) => {
                let branches = r_union.variants();
                match counterpart(writer, branches) {
                    Some(r_branch) => {
                        let index = branches
                            .iter()
                            .position(|b| std::ptr::eq(b, r_branch))
                            .unwrap_or_default()
                            .to_string();
                        self.descend(&[&index], writer, r_branch);
                    }
                    None => self.report(
                        Rule::MissingUnionBranch,
                        format!(
                            "the reader's union {} has no branch for the writer's type {}",
                            type_name(reader),
                            type_name(writer)
                        ),
                    ),
                }
            }
            (
                Schema::Record(RecordSchema {
                    fields: w_fields, ..
                }),
                Schema::Record(RecordSchema {
                    fields: r_fields, ..
                }),
            ) => {
                for (i, r_field) in r_fields.iter().enumerate() {
                    // As apache-avro: the reader's name first, then its aliases.
                    let w_field = std::iter::once(&r_field.name)
                        .chain(r_field.aliases.iter())
                        .find_map(|name| w_fields.iter().find(|w| &w.name == name));
                    let index = i.to_string();
                    self.fields.push(r_field.name.clone());
                    match w_field {
                        Some(w_field) if !fully_readable(&w_field.schema, &r_field.schema) => {
                            self.descend(
                                &["fields", &index, "type"],
                                &w_field.schema,
                                &r_field.schema,
                            );
                        }
                        None if r_field.default.is_none() => {
                            self.path.extend(["fields".to_owned(), index]);
                            self.report(
                                Rule::ReaderFieldMissingDefaultValue,
                                "the writer has no such field and the reader gives it no \
                                 default value"
                                    .to_owned(),
                            );
                            self.path.truncate(self.path.len() - 2);
                        }
                        Some(_) | None => {}
                    }
                    self.fields.pop();
                }
            }
            (
                Schema::Array(ArraySchema { items: w_items, .. }),
                Schema::Array(ArraySchema { items: r_items, .. }),
            ) => self.descend(&["items"], w_items, r_items),
            (
                Schema::Map(MapSchema {
                    types: w_values, ..
                }),
                Schema::Map(MapSchema {
                    types: r_values, ..
                }),
            ) => self.descend(&["values"], w_values, r_values),
            (
                Schema::Enum(EnumSchema {
                    symbols: w_symbols, ..
                }),
                Schema::Enum(EnumSchema {
                    name,
                    symbols: r_symbols,
                    ..
                }),
            ) => {
                let missing: Vec<&str> = w_symbols
                    .iter()
                    .filter(|s| !r_symbols.contains(s))
                    .map(String::as_str)
                    .collect();
                self.path.push("symbols".to_owned());
                self.report(
                    Rule::MissingEnumSymbols,
                    format!(
                        "the reader's enum {name} lacks the writer's symbols [{}] and has no \
                         default",
                        missing.join(", ")
                    ),
                );
                self.path.pop();
            }
            (
                Schema::Decimal(DecimalSchema {
                    precision: w_precision,
                    scale: w_scale,
                    ..
                }),
                Schema::Decimal(DecimalSchema {
                    precision: r_precision,
                    scale: r_scale,
                    ..
                }),
            ) if (w_precision, w_scale) != (r_precision, r_scale) => self.report(
                Rule::TypeMismatch,
                format!(
                    "the reader's decimal({r_precision},{r_scale}) cannot read the writer's \
                     decimal({w_precision},{w_scale})"
                ),
            ),
            _ => match (fixed_size(writer), fixed_size(reader)) {
                (Some(w_size), Some(r_size)) if w_size != r_size => {
                    self.path.push("size".to_owned());
                    self.report(
                        Rule::FixedSizeMismatch,
                        format!(
                            "the reader's fixed {} has size {r_size}, the writer's {w_size}",
                            type_name(reader)
                        ),
                    );
                    self.path.pop();
                }
                _ => self.report(
                    Rule::TypeMismatch,
                    format!(
                        "the reader's type {} cannot read the writer's type {}",
                        type_name(reader),
                        type_name(writer)
                    ),
                ),
            },
        }
    }
}

/// The reader branch worth descending into to explain a writer type no branch fully reads:
/// one apache-avro finds partially compatible, else one of the same name or kind.
fn counterpart<'r>(writer: &Schema, branches: &'r [Schema]) -> Option<&'r Schema> {
    branches
        .iter()
        .find(|r| {
            matches!(
                SchemaCompatibility::can_read(writer, r),
                Ok(Compatibility::Partial)
            )
        })
        .or_else(|| {
            branches.iter().find(|r| match (writer.name(), r.name()) {
                (Some(w), Some(r)) => w.name() == r.name(),
                (None, None) => matches!(
                    (writer, r),
                    (Schema::Array(_), Schema::Array(_)) | (Schema::Map(_), Schema::Map(_))
                ),
                _ => false,
            })
        })
}

/// The size of a fixed-backed schema.
fn fixed_size(schema: &Schema) -> Option<usize> {
    match schema {
        Schema::Fixed(FixedSchema { size, .. })
        | Schema::Duration(FixedSchema { size, .. })
        | Schema::Uuid(UuidSchema::Fixed(FixedSchema { size, .. }))
        | Schema::Decimal(DecimalSchema {
            inner: InnerDecimalSchema::Fixed(FixedSchema { size, .. }),
            ..
        }) => Some(*size),
        _ => None,
    }
}

/// A short name for a schema in messages: `long`, `record shop.Order`, `array<string>`.
fn type_name(schema: &Schema) -> String {
    match schema {
        Schema::Null => "null".into(),
        Schema::Boolean => "boolean".into(),
        Schema::Int => "int".into(),
        Schema::Long => "long".into(),
        Schema::Float => "float".into(),
        Schema::Double => "double".into(),
        Schema::Bytes => "bytes".into(),
        Schema::String => "string".into(),
        Schema::Array(ArraySchema { items, .. }) => format!("array<{}>", type_name(items)),
        Schema::Map(MapSchema { types, .. }) => format!("map<{}>", type_name(types)),
        Schema::Union(union) => {
            let branches: Vec<String> = union.variants().iter().map(type_name).collect();
            format!("[{}]", branches.join(", "))
        }
        Schema::Record(RecordSchema { name, .. }) => format!("record {name}"),
        Schema::Enum(EnumSchema { name, .. }) => format!("enum {name}"),
        Schema::Fixed(FixedSchema { name, .. }) => format!("fixed {name}"),
        Schema::Decimal(DecimalSchema {
            precision, scale, ..
        }) => format!("decimal({precision},{scale})"),
        Schema::BigDecimal => "big-decimal".into(),
        Schema::Uuid(_) => "uuid".into(),
        Schema::Date => "date".into(),
        Schema::TimeMillis => "time-millis".into(),
        Schema::TimeMicros => "time-micros".into(),
        Schema::TimestampMillis => "timestamp-millis".into(),
        Schema::TimestampMicros => "timestamp-micros".into(),
        Schema::TimestampNanos => "timestamp-nanos".into(),
        Schema::LocalTimestampMillis => "local-timestamp-millis".into(),
        Schema::LocalTimestampMicros => "local-timestamp-micros".into(),
        Schema::LocalTimestampNanos => "local-timestamp-nanos".into(),
        Schema::Duration(_) => "duration".into(),
        Schema::Ref { name } => name.to_string(),
    }
}
