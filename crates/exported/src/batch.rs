//! Rows to model calls and back: rows of equal shapes are stacked into one call (rows
//! whose dynamic dimensions differ go in separate calls), a call larger than the model
//! takes is split, one smaller than it takes is padded by repeating its last row (the
//! padding's outputs are dropped), and each output is cut back into rows.
use std::collections::BTreeMap;
use tch::{Device, Kind, Tensor};
use volt_serve::tensor::encode::output_name;
use volt_serve::tensor::{BatchRange, DType, HostTensor, Row, Signature};
use volt_serve::ApiError;

/// libtorch's kind of a dtype.
pub fn kind(dtype: DType) -> Kind {
    match dtype {
        DType::Bool => Kind::Bool,
        DType::U8 => Kind::Uint8,
        DType::I8 => Kind::Int8,
        DType::I16 => Kind::Int16,
        DType::I32 => Kind::Int,
        DType::I64 => Kind::Int64,
        DType::F16 => Kind::Half,
        DType::BF16 => Kind::BFloat16,
        DType::F32 => Kind::Float,
        DType::F64 => Kind::Double,
    }
}

/// The dtype of a libtorch kind, `None` for kinds volt cannot serve (complex, quantized).
pub fn dtype(kind: Kind) -> Option<DType> {
    Some(match kind {
        Kind::Bool => DType::Bool,
        Kind::Uint8 => DType::U8,
        Kind::Int8 => DType::I8,
        Kind::Int16 => DType::I16,
        Kind::Int => DType::I32,
        Kind::Int64 => DType::I64,
        Kind::Half => DType::F16,
        Kind::BFloat16 => DType::BF16,
        Kind::Float => DType::F32,
        Kind::Double => DType::F64,
        _ => return None,
    })
}

/// A tensor on `device` from host bytes.
pub fn to_device(t: &HostTensor, shape: &[usize], device: Device) -> Result<Tensor, ApiError> {
    let dims: Vec<i64> = shape.iter().map(|&n| n as i64).collect();
    let host = Tensor::f_from_data_size(&t.data, &dims, kind(t.dtype))
        .map_err(|e| ApiError::Internal(e.to_string()))?;
    if device == Device::Cpu {
        Ok(host)
    } else {
        host.f_to_device(device).map_err(|e| ApiError::Internal(e.to_string()))
    }
}

/// A model output as host bytes; `name` is for the error.
pub fn to_host(t: &Tensor, name: &str) -> Result<HostTensor, ApiError> {
    let dtype = dtype(t.kind()).ok_or_else(|| {
        ApiError::Internal(format!("output `{name}` has dtype {:?}, which volt cannot serve", t.kind()))
    })?;
    let t = t.to_device(Device::Cpu).contiguous();
    let shape: Vec<usize> = t.size().iter().map(|&n| n as usize).collect();
    let numel = shape.iter().product::<usize>();
    let mut data = vec![0u8; numel * dtype.size()];
    t.copy_data_u8(&mut data, numel);
    Ok(HostTensor { dtype, shape, data })
}

/// Runs `rows` through `call` (inputs in, outputs out), in as few calls as the model's
/// batch range allows; answers one result per input row, in order. A call that fails
/// fails its own rows only: rows of other shapes (other requests) still get answers.
pub fn run_rows(
    sig: &Signature,
    rows: Vec<Row>,
    device: Device,
    mut call: impl FnMut(Vec<Tensor>) -> Result<Vec<Tensor>, ApiError>,
) -> Vec<Result<Row, ApiError>> {
    let Some(range) = sig.batch else {
        return rows
            .into_iter()
            .map(|row| {
                let inputs =
                    row.iter().map(|t| to_device(t, &t.shape, device)).collect::<Result<Vec<_>, _>>()?;
                let outputs = call(inputs)?;
                outputs.iter().enumerate().map(|(j, o)| to_host(o, &output_name(sig, j))).collect()
            })
            .collect();
    };
    let mut groups: BTreeMap<Vec<(u8, Vec<usize>)>, Vec<usize>> = BTreeMap::new();
    for (i, row) in rows.iter().enumerate() {
        let key = row.iter().map(|t| (t.dtype as u8, t.shape.clone())).collect();
        groups.entry(key).or_default().push(i);
    }
    let mut answers: Vec<Option<Result<Row, ApiError>>> = vec![None; rows.len()];
    for members in groups.values() {
        for chunk in members.chunks(range.max.unwrap_or(usize::MAX).max(1)) {
            match run_chunk(sig, &rows, chunk, range, device, &mut call) {
                Ok(outputs) => {
                    for (&i, out) in chunk.iter().zip(outputs) {
                        answers[i] = Some(Ok(out));
                    }
                }
                Err(e) => chunk.iter().for_each(|&i| answers[i] = Some(Err(e.clone()))),
            }
        }
    }
    answers
        .into_iter()
        .map(|a| a.unwrap_or_else(|| Err(ApiError::Internal("a row got no answer".into()))))
        .collect()
}

/// One call over the rows `chunk` (equal shapes), padded up to the batch minimum.
fn run_chunk(
    sig: &Signature,
    rows: &[Row],
    chunk: &[usize],
    range: BatchRange,
    device: Device,
    call: &mut impl FnMut(Vec<Tensor>) -> Result<Vec<Tensor>, ApiError>,
) -> Result<Vec<Row>, ApiError> {
    let n = chunk.len().max(range.min);
    let last = chunk[chunk.len() - 1];
    let padded = chunk.iter().copied().chain(std::iter::repeat(last)).take(n);
    let first = &rows[chunk[0]];
    let inputs = (0..first.len())
        .map(|k| {
            let mut data = Vec::with_capacity(first[k].data.len() * n);
            for i in padded.clone() {
                data.extend_from_slice(&rows[i][k].data);
            }
            let mut shape = vec![n];
            shape.extend(&first[k].shape);
            to_device(&HostTensor { dtype: first[k].dtype, shape: shape.clone(), data }, &shape, device)
        })
        .collect::<Result<Vec<_>, _>>()?;
    let outputs = call(inputs)?;
    let mut answers: Vec<Row> = vec![Vec::with_capacity(outputs.len()); chunk.len()];
    for (j, out) in outputs.iter().enumerate() {
        let name = output_name(sig, j);
        let host = to_host(out, &name)?;
        if host.shape.first() != Some(&n) {
            return Err(ApiError::Internal(format!(
                "output `{name}` has shape {:?}, not a batch of {n} along its first dimension",
                host.shape
            )));
        }
        let step = host.data.len() / n;
        for (r, answer) in answers.iter_mut().enumerate() {
            answer.push(HostTensor {
                dtype: host.dtype,
                shape: host.shape[1..].to_vec(),
                data: host.data[r * step..(r + 1) * step].to_vec(),
            });
        }
    }
    Ok(answers)
}
