//! GGUF, the file llama.cpp and most downloads ship LLMs in: a header, typed metadata,
//! a tensor table, and the tensor data at an aligned offset.
//!
//! Layout (little-endian, v2 and v3): `"GGUF"`, version `u32`, tensor count `u64`,
//! metadata count `u64`; each metadata entry a string key, a `u32` value type and the
//! value; each tensor a string name, `u32` dimension count, `u64` dimensions (ggml order:
//! the first is the fastest-moving, a row's length), `u32` element type and a `u64` offset
//! from the start of the data section, which begins at the next multiple of
//! `general.alignment` (32 when absent) after the table. Strings are a `u64` length and
//! UTF-8 bytes. Dequantization covers F32, F16, BF16, Q8_0 and Q4_1; other types (the
//! K-quants most downloads use) are refused by name.
use crate::FormatError;
use std::collections::BTreeMap;

const MAGIC: &[u8; 4] = b"GGUF";
const DEFAULT_ALIGNMENT: u64 = 32;
/// Values per block of the quantized types volt reads.
const BLOCK: usize = 32;

/// A metadata value.
#[derive(Clone, Debug, PartialEq)]
pub enum Value {
    /// Any unsigned integer type (u8, u16, u32, u64).
    Uint(u64),
    /// Any signed integer type.
    Int(i64),
    /// `f32` or `f64`.
    Float(f64),
    /// A boolean.
    Bool(bool),
    /// A string.
    String(String),
    /// An array of values (strings, numbers, nested arrays).
    Array(Vec<Value>),
}

impl Value {
    /// The value as a whole number, if it is one that fits.
    pub fn as_u64(&self) -> Option<u64> {
        match *self {
            Value::Uint(n) => Some(n),
            Value::Int(n) => u64::try_from(n).ok(),
            _ => None,
        }
    }
    /// The value as a float (integers convert).
    pub fn as_f64(&self) -> Option<f64> {
        match *self {
            Value::Float(x) => Some(x),
            Value::Uint(n) => Some(n as f64),
            Value::Int(n) => Some(n as f64),
            _ => None,
        }
    }
    /// The value as a string.
    pub fn as_str(&self) -> Option<&str> {
        match self {
            Value::String(s) => Some(s),
            _ => None,
        }
    }
    /// The value as an array.
    pub fn as_array(&self) -> Option<&[Value]> {
        match self {
            Value::Array(a) => Some(a),
            _ => None,
        }
    }
}

/// ggml's element types, by the id GGUF stores.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TensorType {
    /// 32-bit floats.
    F32,
    /// IEEE half floats.
    F16,
    /// bfloat16.
    BF16,
    /// Blocks of 32: an f16 scale and 32 signed bytes.
    Q8_0,
    /// Blocks of 32: an f16 scale, an f16 minimum and 32 four-bit values.
    Q4_1,
    /// Any other ggml type, by its id and name (not dequantized here).
    Other(u32, &'static str),
}

impl TensorType {
    fn from_id(id: u32) -> Self {
        match id {
            0 => TensorType::F32,
            1 => TensorType::F16,
            3 => TensorType::Q4_1,
            8 => TensorType::Q8_0,
            30 => TensorType::BF16,
            other => TensorType::Other(other, ggml_type_name(other)),
        }
    }

    /// ggml's name of the type (`Q4_1`, `Q4_K`, ...).
    pub fn name(self) -> &'static str {
        match self {
            TensorType::F32 => "F32",
            TensorType::F16 => "F16",
            TensorType::BF16 => "BF16",
            TensorType::Q8_0 => "Q8_0",
            TensorType::Q4_1 => "Q4_1",
            TensorType::Other(_, name) => name,
        }
    }

    /// (values per block, bytes per block) of the types volt reads.
    fn block(self) -> Option<(usize, usize)> {
        match self {
            TensorType::F32 => Some((1, 4)),
            TensorType::F16 | TensorType::BF16 => Some((1, 2)),
            TensorType::Q8_0 => Some((BLOCK, 2 + BLOCK)),
            TensorType::Q4_1 => Some((BLOCK, 4 + BLOCK / 2)),
            TensorType::Other(..) => None,
        }
    }
}

fn ggml_type_name(id: u32) -> &'static str {
    const NAMES: [&str; 42] = [
        "F32",
        "F16",
        "Q4_0",
        "Q4_1",
        "Q4_2",
        "Q4_3",
        "Q5_0",
        "Q5_1",
        "Q8_0",
        "Q8_1",
        "Q2_K",
        "Q3_K",
        "Q4_K",
        "Q5_K",
        "Q6_K",
        "Q8_K",
        "IQ2_XXS",
        "IQ2_XS",
        "IQ3_XXS",
        "IQ1_S",
        "IQ4_NL",
        "IQ3_S",
        "IQ2_S",
        "IQ4_XS",
        "I8",
        "I16",
        "I32",
        "I64",
        "F64",
        "IQ1_M",
        "BF16",
        "Q4_0_4_4",
        "Q4_0_4_8",
        "Q4_0_8_8",
        "TQ1_0",
        "TQ2_0",
        "IQ4_NL_4_4",
        "IQ4_NL_4_8",
        "IQ4_NL_8_8",
        "MXFP4",
        "NVFP4",
        "Q1_0",
    ];
    NAMES.get(id as usize).copied().unwrap_or("unknown")
}

/// One entry of the tensor table.
#[derive(Clone, Debug, PartialEq)]
pub struct TensorInfo {
    /// The tensor's name, e.g. `blk.0.attn_q.weight`.
    pub name: String,
    /// Dimensions in ggml's order: `dims[0]` is the length of a row.
    pub dims: Vec<u64>,
    /// The element type.
    pub kind: TensorType,
    /// Where its data starts, from the start of the data section.
    pub offset: u64,
}

impl TensorInfo {
    /// Number of values.
    pub fn len(&self) -> u64 {
        self.dims.iter().product()
    }
    /// Whether it holds no values.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
    /// Dimensions in PyTorch's order (the row length last).
    pub fn shape(&self) -> Vec<i64> {
        self.dims.iter().rev().map(|&d| d as i64).collect()
    }
    /// Bytes of data, when the type is one volt reads and its rows are whole blocks.
    fn byte_len(&self) -> Result<usize, FormatError> {
        let Some((per_block, block_bytes)) = self.kind.block() else {
            return Err(self.unsupported());
        };
        let row = self.dims.first().copied().unwrap_or(1);
        if row % per_block as u64 != 0 {
            return Err(FormatError::new(format!(
                "tensor {}: rows of {row} values are not whole {} blocks of {per_block}",
                self.name,
                self.kind.name()
            )));
        }
        (self.len() / per_block as u64)
            .checked_mul(block_bytes as u64)
            .and_then(|n| usize::try_from(n).ok())
            .ok_or_else(|| FormatError::new(format!("tensor {}: too large", self.name)))
    }
    fn unsupported(&self) -> FormatError {
        FormatError::new(format!(
            "tensor {} is {}, which volt cannot read (F32, F16, BF16, Q8_0 and Q4_1 only); \
             use a file quantized to Q8_0 or Q4_1",
            self.name,
            self.kind.name()
        ))
    }
}

/// A GGUF file's header: version, metadata and tensor table.
#[derive(Clone, Debug, PartialEq)]
pub struct Gguf {
    /// The format version (2 or 3).
    pub version: u32,
    /// Every metadata entry, by key.
    pub metadata: BTreeMap<String, Value>,
    /// The tensor table, in file order.
    pub tensors: Vec<TensorInfo>,
    /// Where the data section starts in the file.
    pub data_start: u64,
}

/// Reads fields off the front of a byte slice, with errors that say what was cut short.
struct Cursor<'a> {
    bytes: &'a [u8],
    pos: usize,
}

impl<'a> Cursor<'a> {
    fn take(&mut self, n: usize, what: &str) -> Result<&'a [u8], FormatError> {
        let end = self.pos.checked_add(n).filter(|&e| e <= self.bytes.len()).ok_or_else(|| {
            FormatError::new(format!("truncated: the file ends inside {what} (at byte {})", self.pos))
        })?;
        let out = &self.bytes[self.pos..end];
        self.pos = end;
        Ok(out)
    }
    fn array<const N: usize>(&mut self, what: &str) -> Result<[u8; N], FormatError> {
        let b = self.take(N, what)?;
        let mut out = [0u8; N];
        out.copy_from_slice(b);
        Ok(out)
    }
    fn u32(&mut self, what: &str) -> Result<u32, FormatError> {
        Ok(u32::from_le_bytes(self.array(what)?))
    }
    fn u64(&mut self, what: &str) -> Result<u64, FormatError> {
        Ok(u64::from_le_bytes(self.array(what)?))
    }
    /// A count of items that each take at least `min_bytes`: more than the rest of the
    /// file can hold is corrupt (and must not become a huge allocation).
    fn count(&mut self, what: &str, min_bytes: usize) -> Result<usize, FormatError> {
        let n = self.u64(what)?;
        let left = (self.bytes.len() - self.pos) as u64;
        if n.saturating_mul(min_bytes.max(1) as u64) > left {
            return Err(FormatError::new(format!("{what} = {n} is more than the file can hold")));
        }
        Ok(n as usize)
    }
    fn string(&mut self, what: &str) -> Result<String, FormatError> {
        let n = self.count(what, 1)?;
        let b = self.take(n, what)?;
        String::from_utf8(b.to_vec()).map_err(|_| FormatError::new(format!("{what} is not UTF-8")))
    }
    fn value(&mut self, kind: u32, key: &str, depth: usize) -> Result<Value, FormatError> {
        Ok(match kind {
            0 => Value::Uint(u64::from(self.array::<1>(key)?[0])),
            1 => Value::Int(i64::from(i8::from_le_bytes(self.array(key)?))),
            2 => Value::Uint(u64::from(u16::from_le_bytes(self.array(key)?))),
            3 => Value::Int(i64::from(i16::from_le_bytes(self.array(key)?))),
            4 => Value::Uint(u64::from(self.u32(key)?)),
            5 => Value::Int(i64::from(i32::from_le_bytes(self.array(key)?))),
            6 => Value::Float(f64::from(f32::from_le_bytes(self.array(key)?))),
            7 => match self.array::<1>(key)?[0] {
                0 => Value::Bool(false),
                1 => Value::Bool(true),
                b => return Err(FormatError::new(format!("metadata {key}: {b} is not a boolean"))),
            },
            8 => Value::String(self.string(key)?),
            9 => {
                if depth >= 8 {
                    return Err(FormatError::new(format!("metadata {key}: arrays nested too deep")));
                }
                let elem = self.u32(key)?;
                let n = self.count(key, value_min_bytes(elem))?;
                let mut items = Vec::with_capacity(n);
                for _ in 0..n {
                    items.push(self.value(elem, key, depth + 1)?);
                }
                Value::Array(items)
            }
            10 => Value::Uint(self.u64(key)?),
            11 => Value::Int(i64::from_le_bytes(self.array(key)?)),
            12 => Value::Float(f64::from_le_bytes(self.array(key)?)),
            other => return Err(FormatError::new(format!("metadata {key}: unknown value type {other}"))),
        })
    }
}

/// The fewest bytes a value of `kind` takes (to bound array counts by the file's size).
fn value_min_bytes(kind: u32) -> usize {
    match kind {
        0 | 1 | 7 => 1,
        2 | 3 => 2,
        4..=6 => 4,
        8 | 10..=12 => 8,
        9 => 12,
        _ => 1,
    }
}

impl Gguf {
    /// Parses the header of a GGUF file's bytes (the tensors stay where they are).
    pub fn parse(bytes: &[u8]) -> Result<Self, FormatError> {
        let mut c = Cursor { bytes, pos: 0 };
        if c.take(4, "the magic number")? != MAGIC {
            return Err(FormatError::new("not a GGUF file (it does not start with \"GGUF\")"));
        }
        let version = c.u32("the version")?;
        if !(2..=3).contains(&version) {
            return Err(FormatError::new(format!("GGUF version {version}; volt reads versions 2 and 3")));
        }
        // A tensor entry takes at least 28 bytes, a metadata entry 13.
        let n_tensors = c.count("the tensor count", 28)?;
        let n_metadata = c.count("the metadata count", 13)?;
        let mut metadata = BTreeMap::new();
        for _ in 0..n_metadata {
            let key = c.string("a metadata key")?;
            let kind = c.u32(&key)?;
            let value = c.value(kind, &key, 0)?;
            metadata.insert(key, value);
        }
        let mut tensors = Vec::with_capacity(n_tensors);
        for _ in 0..n_tensors {
            let name = c.string("a tensor name")?;
            let n_dims = c.u32(&name)?;
            if n_dims > 4 {
                return Err(FormatError::new(format!(
                    "tensor {name}: {n_dims} dimensions (ggml has at most 4)"
                )));
            }
            let dims = (0..n_dims).map(|_| c.u64(&name)).collect::<Result<Vec<_>, _>>()?;
            if dims.iter().try_fold(1u64, |acc, &d| acc.checked_mul(d)).is_none() {
                return Err(FormatError::new(format!("tensor {name}: dimensions {dims:?} overflow")));
            }
            let kind = TensorType::from_id(c.u32(&name)?);
            let offset = c.u64(&name)?;
            tensors.push(TensorInfo { name, dims, kind, offset });
        }
        let alignment = match metadata.get("general.alignment") {
            None => DEFAULT_ALIGNMENT,
            Some(v) => v.as_u64().filter(|a| a.is_power_of_two()).ok_or_else(|| {
                FormatError::new(format!("general.alignment = {v:?} is not a power of two"))
            })?,
        };
        let data_start = (c.pos as u64).div_ceil(alignment) * alignment;
        Ok(Gguf { version, metadata, tensors, data_start })
    }

    /// The metadata entry `key`, or an error naming it.
    pub fn get(&self, key: &str) -> Result<&Value, FormatError> {
        self.metadata.get(key).ok_or_else(|| FormatError::new(format!("metadata {key} is missing")))
    }

    /// The tensor named `name`, or an error naming it.
    pub fn tensor(&self, name: &str) -> Result<&TensorInfo, FormatError> {
        self.tensors
            .iter()
            .find(|t| t.name == name)
            .ok_or_else(|| FormatError::new(format!("tensor {name} is missing")))
    }

    /// The bytes of `tensor` in the whole file's `bytes`.
    pub fn data<'a>(&self, bytes: &'a [u8], tensor: &TensorInfo) -> Result<&'a [u8], FormatError> {
        let len = tensor.byte_len()?;
        let start = self.data_start.checked_add(tensor.offset).and_then(|s| usize::try_from(s).ok());
        start.and_then(|s| s.checked_add(len).map(|e| (s, e))).and_then(|(s, e)| bytes.get(s..e)).ok_or_else(
            || {
                FormatError::new(format!(
                    "truncated: tensor {} ({} bytes at offset {}) lies past the end of the file ({} bytes)",
                    tensor.name,
                    len,
                    tensor.offset,
                    bytes.len()
                ))
            },
        )
    }

    /// `tensor`'s values as f32, dequantized (ggml's reference arithmetic).
    pub fn dequantize(&self, bytes: &[u8], tensor: &TensorInfo) -> Result<Vec<f32>, FormatError> {
        Ok(dequantize(tensor.kind, self.data(bytes, tensor)?))
    }
}

/// Values of `data` holding whole blocks of `kind` (one of the types volt reads).
pub fn dequantize(kind: TensorType, data: &[u8]) -> Vec<f32> {
    let half = |b: &[u8]| half::f16::from_le_bytes([b[0], b[1]]).to_f32();
    match kind {
        TensorType::F32 => {
            data.chunks_exact(4).map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]])).collect()
        }
        TensorType::F16 => data.chunks_exact(2).map(half).collect(),
        TensorType::BF16 => {
            data.chunks_exact(2).map(|b| half::bf16::from_le_bytes([b[0], b[1]]).to_f32()).collect()
        }
        TensorType::Q8_0 => {
            let mut out = Vec::with_capacity(data.len() / 34 * BLOCK);
            for block in data.chunks_exact(2 + BLOCK) {
                let d = half(&block[..2]);
                out.extend(block[2..].iter().map(|&q| f32::from(q as i8) * d));
            }
            out
        }
        TensorType::Q4_1 => {
            let mut out = vec![0f32; data.len() / (4 + BLOCK / 2) * BLOCK];
            for (block, values) in data.chunks_exact(4 + BLOCK / 2).zip(out.chunks_exact_mut(BLOCK)) {
                let (d, m) = (half(&block[..2]), half(&block[2..4]));
                // Byte j holds weight j in its low nibble and weight j + 16 in its high one.
                for (j, &q) in block[4..].iter().enumerate() {
                    values[j] = f32::from(q & 0x0F) * d + m;
                    values[j + BLOCK / 2] = f32::from(q >> 4) * d + m;
                }
            }
            out
        }
        TensorType::Other(..) => Vec::new(),
    }
}
