//! What a tensor model takes and gives: each input's and output's name, dtype and shape,
//! and whether (and how far) it batches along its first dimension.
use super::dtype::DType;
use serde_json::{json, Value};

/// One dimension of a tensor's shape.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Dim {
    /// Always this size.
    Fixed(usize),
    /// Any size from `min` to `max` (no upper bound when `None`).
    Dynamic {
        /// Smallest size.
        min: usize,
        /// Largest size.
        max: Option<usize>,
    },
}

impl Dim {
    /// Whether `n` is allowed here.
    pub fn allows(self, n: usize) -> bool {
        match self {
            Dim::Fixed(m) => n == m,
            Dim::Dynamic { min, max } => n >= min && max.is_none_or(|max| n <= max),
        }
    }

    /// The size as the protocol's metadata writes it: -1 for a dynamic one.
    pub fn as_i64(self) -> i64 {
        match self {
            Dim::Fixed(n) => n as i64,
            Dim::Dynamic { .. } => -1,
        }
    }
}

impl std::fmt::Display for Dim {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Dim::Fixed(n) => write!(f, "{n}"),
            Dim::Dynamic { min, max: Some(max) } => write!(f, "{min}..{max}"),
            Dim::Dynamic { min, max: None } => write!(f, "{min}.."),
        }
    }
}

/// A shape as a user reads it: `[3, 1..64]`.
pub fn show_dims(dims: &[Dim]) -> String {
    format!("[{}]", dims.iter().map(Dim::to_string).collect::<Vec<_>>().join(", "))
}

/// A shape of sizes: `[3, 4]`.
pub fn show_shape(shape: &[usize]) -> String {
    format!("{shape:?}")
}

/// One input or output of a model.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct TensorSpec {
    /// Its name in requests and responses.
    pub name: String,
    /// Its element type, when the model records it.
    pub dtype: Option<DType>,
    /// Its shape per row (without the batch dimension when the model batches), when the
    /// model records it.
    pub dims: Option<Vec<Dim>>,
    /// The values an integer input may hold, when the model records them: a compiled
    /// lookup past its table's end is not an error a server can catch.
    pub values: Option<ValueRange>,
}

/// Integer values from `low` up to, not including, `high` (a vocabulary's ids).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ValueRange {
    /// Smallest value allowed.
    pub low: i64,
    /// One past the largest value allowed.
    pub high: i64,
}

/// How many rows a model takes in one call.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BatchRange {
    /// Fewest (a smaller batch is padded up to it).
    pub min: usize,
    /// Most (a request with more rows is split across calls).
    pub max: Option<usize>,
}

/// A model's inputs and outputs.
#[derive(Clone, Debug, PartialEq)]
pub struct Signature {
    /// The inputs, in the order the model takes them.
    pub inputs: Vec<TensorSpec>,
    /// The outputs, in the order the model gives them.
    pub outputs: Vec<TensorSpec>,
    /// The batch dimension (the first of every input and output), `None` when the model
    /// does not batch and each request is one call with whole tensors.
    pub batch: Option<BatchRange>,
}

/// A tensor on the host: little-endian elements, row-major.
#[derive(Clone, Debug, PartialEq)]
pub struct HostTensor {
    /// Element type.
    pub dtype: DType,
    /// Shape.
    pub shape: Vec<usize>,
    /// `shape.product() * dtype.size()` bytes.
    pub data: Vec<u8>,
}

impl HostTensor {
    /// Elements in the tensor.
    pub fn numel(&self) -> usize {
        self.shape.iter().product()
    }

    /// Elements as JSON nested lists in the tensor's shape.
    pub fn to_json(&self) -> Value {
        fn nest(dtype: DType, shape: &[usize], data: &[u8]) -> Value {
            match shape.split_first() {
                None => dtype.value(data),
                Some((&n, rest)) => {
                    let step = rest.iter().product::<usize>() * dtype.size();
                    Value::Array((0..n).map(|i| nest(dtype, rest, &data[i * step..(i + 1) * step])).collect())
                }
            }
        }
        nest(self.dtype, &self.shape, &self.data)
    }

    /// Elements as one flat JSON list (the protocol's `data`).
    pub fn to_flat_json(&self) -> Value {
        Value::Array(self.data.chunks_exact(self.dtype.size()).map(|e| self.dtype.value(e)).collect())
    }
}

/// The inputs (or outputs) of one row of a batch, in the model's order.
pub type Row = Vec<HostTensor>;

impl Signature {
    /// Checks one row's tensors (already in the model's input order) against the
    /// inputs' dtypes and shapes; the error names the input.
    pub fn check_row(&self, row: &Row) -> Result<(), String> {
        for (spec, t) in self.inputs.iter().zip(row) {
            if let Some(dtype) = spec.dtype {
                if dtype != t.dtype {
                    return Err(format!("input `{}`: expected dtype {dtype}, got {}", spec.name, t.dtype));
                }
            }
            if let Some(dims) = &spec.dims {
                let fits =
                    dims.len() == t.shape.len() && dims.iter().zip(&t.shape).all(|(d, &n)| d.allows(n));
                if !fits {
                    let per = if self.batch.is_some() { " per row" } else { "" };
                    return Err(format!(
                        "input `{}`: expected shape {}{per}, got {}",
                        spec.name,
                        show_dims(dims),
                        show_shape(&t.shape)
                    ));
                }
            }
        }
        Ok(())
    }

    /// Checks whole request tensors (in the model's input order) against the values
    /// their inputs allow; the error names the input, the row and the value.
    pub fn check_values(&self, tensors: &[HostTensor]) -> Result<(), String> {
        for (spec, t) in self.inputs.iter().zip(tensors) {
            let Some(range) = spec.values else { continue };
            // Elements per row (a request without rows has no elements to look at).
            let per_row = match (self.batch, t.shape.first()) {
                (Some(_), Some(&rows)) => t.numel() / rows.max(1),
                _ => t.numel(),
            };
            for (i, bytes) in t.data.chunks_exact(t.dtype.size()).enumerate() {
                let Some(v) = t.dtype.int_value(bytes) else { break };
                if !(range.low..range.high).contains(&v) {
                    let row = match self.batch {
                        Some(_) => format!(" in row {}", i / per_row),
                        None => String::new(),
                    };
                    return Err(format!(
                        "input `{}`: value {v}{row} is outside {}..{}, the values the model takes",
                        spec.name, range.low, range.high
                    ));
                }
            }
        }
        Ok(())
    }

    /// The metadata the protocol's `GET /v2/models/{name}` answers, and `/info` shows.
    pub fn describe(&self, specs: &[TensorSpec]) -> Value {
        Value::Array(
            specs
                .iter()
                .map(|s| {
                    let mut shape: Vec<i64> = s.dims.iter().flatten().map(|d| d.as_i64()).collect();
                    if self.batch.is_some() {
                        shape.insert(0, -1);
                    }
                    json!({
                        "name": s.name,
                        "datatype": s.dtype.map_or("UNKNOWN", DType::oip_name),
                        "shape": if s.dims.is_some() || self.batch.is_some() { json!(shape) } else { Value::Null },
                    })
                })
                .collect(),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sig() -> Signature {
        Signature {
            inputs: vec![TensorSpec {
                name: "x".into(),
                dtype: Some(DType::F32),
                dims: Some(vec![Dim::Fixed(2), Dim::Dynamic { min: 1, max: Some(4) }]),
                values: None,
            }],
            outputs: vec![TensorSpec { name: "y".into(), ..TensorSpec::default() }],
            batch: Some(BatchRange { min: 2, max: Some(8) }),
        }
    }

    fn t(dtype: DType, shape: Vec<usize>) -> HostTensor {
        let data = vec![0; shape.iter().product::<usize>() * dtype.size()];
        HostTensor { dtype, shape, data }
    }

    #[test]
    fn rows_are_checked_against_dtype_and_every_dimension() {
        let s = sig();
        assert_eq!(s.check_row(&vec![t(DType::F32, vec![2, 3])]), Ok(()));
        assert_eq!(
            s.check_row(&vec![t(DType::F32, vec![2, 5])]),
            Err("input `x`: expected shape [2, 1..4] per row, got [2, 5]".into())
        );
        assert_eq!(
            s.check_row(&vec![t(DType::F32, vec![2])]),
            Err("input `x`: expected shape [2, 1..4] per row, got [2]".into())
        );
        assert_eq!(
            s.check_row(&vec![t(DType::I64, vec![2, 3])]),
            Err("input `x`: expected dtype float32, got int64".into())
        );
    }

    #[test]
    fn integer_values_outside_the_recorded_range_are_refused_naming_row_and_value() {
        let ids = |values: &[i64]| HostTensor {
            dtype: DType::I64,
            shape: vec![2, values.len() / 2],
            data: values.iter().flat_map(|v| v.to_le_bytes()).collect(),
        };
        let mut s = sig();
        s.inputs[0] = TensorSpec {
            name: "ids".into(),
            dtype: Some(DType::I64),
            values: Some(ValueRange { low: 0, high: 100 }),
            ..TensorSpec::default()
        };
        assert_eq!(s.check_values(&[ids(&[0, 99, 5, 6])]), Ok(()));
        assert_eq!(
            s.check_values(&[ids(&[0, 99, 5, 100])]),
            Err("input `ids`: value 100 in row 1 is outside 0..100, the values the model takes".into())
        );
        assert_eq!(
            s.check_values(&[ids(&[-1, 0, 5, 6])]),
            Err("input `ids`: value -1 in row 0 is outside 0..100, the values the model takes".into())
        );
        s.inputs[0].values = None;
        assert_eq!(s.check_values(&[ids(&[-1, 1000, 5, 6])]), Ok(()));
    }

    #[test]
    fn tensors_print_nested_and_flat() {
        let mut x = t(DType::I32, vec![2, 2]);
        x.data = [1i32, 2, 3, 4].iter().flat_map(|v| v.to_le_bytes()).collect();
        assert_eq!(x.to_json(), json!([[1, 2], [3, 4]]));
        assert_eq!(x.to_flat_json(), json!([1, 2, 3, 4]));
        assert_eq!(t(DType::F32, vec![]).to_json(), json!(0.0));
        assert_eq!(t(DType::F32, vec![0, 3]).to_json(), json!([]));
        assert_eq!(
            sig().describe(&sig().inputs),
            json!([{"name": "x", "datatype": "FP32", "shape": [-1, 2, -1]}])
        );
    }
}
