//! Writing: a row's key record and a change's envelope appended as Avro binary, the bytes
//! apache-avro writes for the same values.

use crate::avro_schema::TableSchemas;
use crate::envelope::ChangeEvent;
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
        put_long(buf, s.position.0);
        put_long(buf, s.txn.0);
        match s.prev_position {
            Some(p) => {
                put_long(buf, 1);
                put_long(buf, p.0);
            }
            None => put_long(buf, 0),
        }
        buf.push(u8::from(s.snapshot));
        put_long(buf, s.ts_ms);
        put_long(buf, s.epoch);
        put_long(buf, ev.ts_ms);
        Ok(())
    }
}
