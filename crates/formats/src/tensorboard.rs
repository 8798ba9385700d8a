//! TensorBoard event files (scalars) that TensorBoard itself reads.
//!
//! An event file is a sequence of TFRecords (length, masked CRC-32C of the length,
//! payload, masked CRC-32C of the payload), each payload an `Event` protocol buffer.
//! volt writes only three messages, so the few protobuf fields are encoded here rather
//! than through a protobuf code generator.
use crate::FormatError;

/// One scalar read back from an event file.
#[derive(Clone, Debug, PartialEq)]
pub struct Scalar {
    /// The metric's name.
    pub tag: String,
    /// The global step.
    pub step: u64,
    /// The value.
    pub value: f32,
}

/// One TFRecord around `payload`: length, masked CRC-32C of the length, payload, masked
/// CRC-32C of the payload.
pub fn record(payload: &[u8]) -> Vec<u8> {
    let len = (payload.len() as u64).to_le_bytes();
    let mut rec = Vec::with_capacity(payload.len() + 16);
    rec.extend_from_slice(&len);
    rec.extend_from_slice(&masked_crc(&len).to_le_bytes());
    rec.extend_from_slice(payload);
    rec.extend_from_slice(&masked_crc(payload).to_le_bytes());
    rec
}

/// The `Event` that opens every event file (`file_version: "brain.Event:2"`).
pub fn file_version_event(wall_time: f64) -> Vec<u8> {
    let mut event = Vec::new();
    put_double(&mut event, 1, wall_time);
    put_bytes(&mut event, 3, b"brain.Event:2");
    event
}

/// An `Event` holding one `simple_value` per `(tag, value)` at `step`.
pub fn scalars_event<'a>(
    wall_time: f64,
    step: u64,
    scalars: impl IntoIterator<Item = (&'a str, f32)>,
) -> Vec<u8> {
    let mut summary = Vec::new();
    for (tag, value) in scalars {
        let mut v = Vec::new();
        put_bytes(&mut v, 1, tag.as_bytes());
        put_float(&mut v, 2, value);
        put_bytes(&mut summary, 1, &v);
    }
    let mut event = Vec::new();
    put_double(&mut event, 1, wall_time);
    put_varint_field(&mut event, 2, step);
    put_bytes(&mut event, 5, &summary);
    event
}

/// Every scalar of an event file's bytes, checking each record's CRCs.
pub fn read_scalars(data: &[u8]) -> Result<Vec<Scalar>, FormatError> {
    let bad = |what: &str| FormatError::new(what);
    let mut out = Vec::new();
    let mut pos = 0;
    while pos < data.len() {
        let header = data.get(pos..pos + 12).ok_or_else(|| bad("truncated record header"))?;
        let len_bytes: [u8; 8] = header[..8].try_into().map_err(|_| bad("bad length"))?;
        if masked_crc(&len_bytes) != u32::from_le_bytes(header[8..12].try_into().map_err(|_| bad("bad crc"))?)
        {
            return Err(bad("length CRC mismatch"));
        }
        // The length comes from the file: the record must fit in what is left of it.
        let len = usize::try_from(u64::from_le_bytes(len_bytes))
            .ok()
            .filter(|len| data.len() - pos - 12 >= *len)
            .ok_or_else(|| bad("truncated record"))?;
        let payload = &data[pos + 12..pos + 12 + len];
        let crc = data.get(pos + 12 + len..pos + 16 + len).ok_or_else(|| bad("truncated CRC"))?;
        if masked_crc(payload) != u32::from_le_bytes(crc.try_into().map_err(|_| bad("bad crc"))?) {
            return Err(bad("payload CRC mismatch"));
        }
        pos += 16 + len;
        let mut step = 0;
        let mut values = Vec::new();
        for (field, value) in Fields::new(payload) {
            match (field, value) {
                (2, Wire::Varint(s)) => step = s,
                (5, Wire::Bytes(summary)) => {
                    for (f, v) in Fields::new(summary) {
                        if let (1, Wire::Bytes(val)) = (f, v) {
                            let mut tag = String::new();
                            let mut simple = None;
                            for (vf, vv) in Fields::new(val) {
                                match (vf, vv) {
                                    (1, Wire::Bytes(t)) => tag = String::from_utf8_lossy(t).into_owned(),
                                    (2, Wire::Fixed32(x)) => simple = Some(f32::from_bits(x)),
                                    _ => {}
                                }
                            }
                            if let Some(value) = simple {
                                values.push((tag, value));
                            }
                        }
                    }
                }
                _ => {}
            }
        }
        out.extend(values.into_iter().map(|(tag, value)| Scalar { tag, step, value }));
    }
    Ok(out)
}

fn masked_crc(data: &[u8]) -> u32 {
    let crc = crc32c::crc32c(data);
    crc.rotate_right(15).wrapping_add(0xa282_ead8)
}

fn put_varint(out: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        out.push((v as u8) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}
fn put_varint_field(out: &mut Vec<u8>, field: u64, v: u64) {
    put_varint(out, field << 3);
    put_varint(out, v);
}
fn put_double(out: &mut Vec<u8>, field: u64, v: f64) {
    put_varint(out, (field << 3) | 1);
    out.extend_from_slice(&v.to_le_bytes());
}
fn put_float(out: &mut Vec<u8>, field: u64, v: f32) {
    put_varint(out, (field << 3) | 5);
    out.extend_from_slice(&v.to_le_bytes());
}
fn put_bytes(out: &mut Vec<u8>, field: u64, bytes: &[u8]) {
    put_varint(out, (field << 3) | 2);
    put_varint(out, bytes.len() as u64);
    out.extend_from_slice(bytes);
}

enum Wire<'a> {
    Varint(u64),
    Fixed64,
    Fixed32(u32),
    Bytes(&'a [u8]),
}

struct Fields<'a> {
    data: &'a [u8],
    pos: usize,
}

impl<'a> Fields<'a> {
    fn new(data: &'a [u8]) -> Self {
        Fields { data, pos: 0 }
    }
    fn varint(&mut self) -> Option<u64> {
        let mut v = 0u64;
        for shift in (0..64).step_by(7) {
            let b = *self.data.get(self.pos)?;
            self.pos += 1;
            v |= u64::from(b & 0x7f) << shift;
            if b < 0x80 {
                return Some(v);
            }
        }
        None
    }
}

impl<'a> Iterator for Fields<'a> {
    type Item = (u64, Wire<'a>);
    fn next(&mut self) -> Option<Self::Item> {
        let key = self.varint()?;
        let value = match key & 7 {
            0 => Wire::Varint(self.varint()?),
            1 => {
                self.pos = self.pos.saturating_add(8);
                Wire::Fixed64
            }
            2 => {
                let len = self.varint()? as usize;
                let b = self.data.get(self.pos..self.pos.checked_add(len)?)?;
                self.pos += len;
                Wire::Bytes(b)
            }
            5 => {
                let b = self.data.get(self.pos..self.pos.checked_add(4)?)?;
                self.pos += 4;
                Wire::Fixed32(u32::from_le_bytes(b.try_into().ok()?))
            }
            _ => return None,
        };
        Some((key >> 3, value))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_record_whose_field_claims_more_bytes_than_exist_is_no_panic() {
        // A length-delimited field (the summary, field 5) claiming u64::MAX bytes, inside a
        // record whose CRCs are right: the length must not overflow the position.
        let mut payload = vec![(5 << 3) | 2];
        put_varint(&mut payload, u64::MAX);
        let mut fixed = vec![(1 << 3) | 1];
        fixed.extend_from_slice(&[0; 3]);
        for p in [payload, fixed] {
            let file = record(&p);
            assert!(read_scalars(&file).is_ok_and(|s| s.is_empty()), "{p:?}");
        }
        // A record header claiming u64::MAX bytes, with its length CRC right.
        let len = u64::MAX.to_le_bytes();
        let mut file = len.to_vec();
        file.extend_from_slice(&masked_crc(&len).to_le_bytes());
        file.extend_from_slice(b"short");
        assert!(read_scalars(&file).is_err());
    }
}
