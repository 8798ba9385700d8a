//! Element types of served tensors: their names in requests (PyTorch's, NumPy's and the
//! Open Inference Protocol's), their sizes, and JSON numbers to and from their
//! little-endian bytes.
use serde_json::{Number, Value};

/// An element type a tensor model takes or gives.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum DType {
    /// `bool`, one byte (0 or 1).
    Bool,
    /// `uint8`.
    U8,
    /// `int8`.
    I8,
    /// `int16`.
    I16,
    /// `int32`.
    I32,
    /// `int64`.
    I64,
    /// `float16`.
    F16,
    /// `bfloat16`.
    BF16,
    /// `float32`.
    F32,
    /// `float64`.
    F64,
}

/// Every dtype, for listing the accepted names in errors.
pub const ALL: [DType; 10] = [
    DType::Bool,
    DType::U8,
    DType::I8,
    DType::I16,
    DType::I32,
    DType::I64,
    DType::F16,
    DType::BF16,
    DType::F32,
    DType::F64,
];

impl DType {
    /// PyTorch's name (`float32`), which volt's API answers with.
    pub fn name(self) -> &'static str {
        match self {
            DType::Bool => "bool",
            DType::U8 => "uint8",
            DType::I8 => "int8",
            DType::I16 => "int16",
            DType::I32 => "int32",
            DType::I64 => "int64",
            DType::F16 => "float16",
            DType::BF16 => "bfloat16",
            DType::F32 => "float32",
            DType::F64 => "float64",
        }
    }

    /// The Open Inference Protocol's `datatype` (`FP32`).
    pub fn oip_name(self) -> &'static str {
        match self {
            DType::Bool => "BOOL",
            DType::U8 => "UINT8",
            DType::I8 => "INT8",
            DType::I16 => "INT16",
            DType::I32 => "INT32",
            DType::I64 => "INT64",
            DType::F16 => "FP16",
            DType::BF16 => "BF16",
            DType::F32 => "FP32",
            DType::F64 => "FP64",
        }
    }

    /// A dtype from PyTorch's, NumPy's (`<f4`, `float`) or the protocol's name.
    pub fn parse(name: &str) -> Option<DType> {
        let name = name.strip_prefix("torch.").unwrap_or(name);
        ALL.into_iter().find(|d| d.name() == name || d.oip_name() == name).or(match name {
            "float" | "f4" | "<f4" => Some(DType::F32),
            "double" | "f8" | "<f8" => Some(DType::F64),
            "half" | "f2" | "<f2" => Some(DType::F16),
            "long" | "i8" | "<i8" => Some(DType::I64),
            "int" | "i4" | "<i4" => Some(DType::I32),
            "short" | "i2" | "<i2" => Some(DType::I16),
            "i1" => Some(DType::I8),
            "u1" => Some(DType::U8),
            "b1" | "?" => Some(DType::Bool),
            _ => None,
        })
    }

    /// Bytes per element.
    pub fn size(self) -> usize {
        match self {
            DType::Bool | DType::U8 | DType::I8 => 1,
            DType::I16 | DType::F16 | DType::BF16 => 2,
            DType::I32 | DType::F32 => 4,
            DType::I64 | DType::F64 => 8,
        }
    }

    /// Whether the type holds fractions.
    pub fn is_float(self) -> bool {
        matches!(self, DType::F16 | DType::BF16 | DType::F32 | DType::F64)
    }

    /// Appends `value` (a JSON number, or a boolean for `bool`) as this type's
    /// little-endian bytes; the error says why it does not fit.
    pub fn push(self, value: &Value, out: &mut Vec<u8>) -> Result<(), String> {
        if self == DType::Bool {
            let b = match value {
                Value::Bool(b) => *b,
                Value::Number(n) if n.as_u64() == Some(0) => false,
                Value::Number(n) if n.as_u64() == Some(1) => true,
                other => return Err(format!("{other} is not a boolean")),
            };
            out.push(u8::from(b));
            return Ok(());
        }
        let Value::Number(n) = value else { return Err(format!("{value} is not a number")) };
        if self.is_float() {
            let x = n.as_f64().ok_or_else(|| format!("{n} is not a number"))?;
            match self {
                DType::F16 => out.extend(half::f16::from_f64(x).to_le_bytes()),
                DType::BF16 => out.extend(half::bf16::from_f64(x).to_le_bytes()),
                DType::F32 => out.extend((x as f32).to_le_bytes()),
                _ => out.extend(x.to_le_bytes()),
            }
            return Ok(());
        }
        let i = n.as_i64().ok_or_else(|| format!("{n} is not an integer (the input is {})", self.name()))?;
        let fits = |lo: i64, hi: i64| {
            if (lo..=hi).contains(&i) {
                Ok(())
            } else {
                Err(format!("{i} is outside {}'s range {lo}..={hi}", self.name()))
            }
        };
        match self {
            DType::U8 => fits(0, 255).map(|()| out.push(i as u8)),
            DType::I8 => fits(-128, 127).map(|()| out.push(i as i8 as u8)),
            DType::I16 => {
                fits(i16::MIN.into(), i16::MAX.into()).map(|()| out.extend((i as i16).to_le_bytes()))
            }
            DType::I32 => {
                fits(i32::MIN.into(), i32::MAX.into()).map(|()| out.extend((i as i32).to_le_bytes()))
            }
            _ => {
                out.extend(i.to_le_bytes());
                Ok(())
            }
        }
    }

    /// The integer element at the start of `bytes`; `None` for a float type.
    pub fn int_value(self, bytes: &[u8]) -> Option<i64> {
        match self.value(bytes) {
            Value::Bool(b) => Some(i64::from(b)),
            Value::Number(n) if !self.is_float() => n.as_i64(),
            _ => None,
        }
    }

    /// The element at the start of `bytes` as JSON (a float that is not finite becomes
    /// null, as JSON has no NaN).
    pub fn value(self, bytes: &[u8]) -> Value {
        let float = |x: f64| Number::from_f64(x).map_or(Value::Null, Value::Number);
        let b2 = || [bytes[0], bytes[1]];
        let b4 = || [bytes[0], bytes[1], bytes[2], bytes[3]];
        let b8 = || std::array::from_fn::<u8, 8, _>(|i| bytes[i]);
        match self {
            DType::Bool => Value::Bool(bytes[0] != 0),
            DType::U8 => bytes[0].into(),
            DType::I8 => (bytes[0] as i8).into(),
            DType::I16 => i16::from_le_bytes(b2()).into(),
            DType::I32 => i32::from_le_bytes(b4()).into(),
            DType::I64 => i64::from_le_bytes(b8()).into(),
            DType::F16 => float(half::f16::from_le_bytes(b2()).to_f64()),
            DType::BF16 => float(half::bf16::from_le_bytes(b2()).to_f64()),
            DType::F32 => float(f32::from_le_bytes(b4()).into()),
            DType::F64 => float(f64::from_le_bytes(b8())),
        }
    }
}

impl std::fmt::Display for DType {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn every_dtype_reads_back_what_it_wrote_under_all_its_names() {
        for d in ALL {
            assert_eq!(DType::parse(d.name()), Some(d));
            assert_eq!(DType::parse(d.oip_name()), Some(d));
            assert_eq!(DType::parse(&format!("torch.{}", d.name())), Some(d));
            let v = if d == DType::Bool { json!(true) } else { json!(3) };
            let mut bytes = Vec::new();
            d.push(&v, &mut bytes).expect("fits");
            assert_eq!(bytes.len(), d.size(), "{d}");
            let back = d.value(&bytes);
            assert_eq!(
                back.as_f64().or(back.as_bool().map(f64::from)),
                Some(if d == DType::Bool { 1.0 } else { 3.0 }),
                "{d}"
            );
        }
        assert_eq!(DType::parse("<f4"), Some(DType::F32));
        assert_eq!(DType::parse("complex64"), None);
    }

    #[test]
    fn values_that_do_not_fit_say_why() {
        let e = |d: DType, v: Value| d.push(&v, &mut Vec::new()).unwrap_err();
        assert!(e(DType::I64, json!(1.5)).contains("not an integer (the input is int64)"));
        assert!(e(DType::U8, json!(256)).contains("outside uint8's range 0..=255"));
        assert!(e(DType::I8, json!(-129)).contains("outside int8's range"));
        assert!(e(DType::F32, json!("1")).contains("is not a number"));
        assert!(e(DType::Bool, json!(2)).contains("not a boolean"));
        assert_eq!(DType::F32.value(&f32::NAN.to_le_bytes()), Value::Null);
    }
}
