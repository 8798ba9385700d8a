//! Rows of output tensors back to response bodies, in the request's row order: volt's
//! `{"outputs": ...}` and the Open Inference Protocol's `outputs` list.
use super::decode::OutputFormat;
use super::signature::{HostTensor, Row, Signature};
use base64::Engine;
use serde_json::{json, Map, Value};

/// Output `j` of every row, stacked along a new batch dimension (or the one row's
/// tensor as it is, for a model that does not batch).
pub fn stack(sig: &Signature, rows: &[Row], j: usize) -> Result<HostTensor, String> {
    let name = output_name(sig, j);
    let missing = || format!("the model gave no output `{name}`");
    let first = rows.first().ok_or("the model gave no rows")?.get(j).ok_or_else(missing)?;
    if sig.batch.is_none() {
        return Ok(first.clone());
    }
    let mut data = Vec::with_capacity(first.data.len() * rows.len());
    for row in rows {
        let t = row.get(j).ok_or_else(missing)?;
        if t.shape != first.shape || t.dtype != first.dtype {
            return Err(format!("output `{name}` differs in shape between the rows of one request"));
        }
        data.extend_from_slice(&t.data);
    }
    let mut shape = vec![rows.len()];
    shape.extend(&first.shape);
    Ok(HostTensor { dtype: first.dtype, shape, data })
}

/// Output `j`'s name: the signature's, or `output{j}` for a model that does not record
/// its outputs (a TorchScript module without volt's metadata).
pub fn output_name(sig: &Signature, j: usize) -> String {
    sig.outputs.get(j).map_or_else(|| format!("output{j}"), |s| s.name.clone())
}

/// The output [`output_name`] calls `name`, by its index.
pub fn output_index(sig: &Signature, name: &str) -> Option<usize> {
    if sig.outputs.is_empty() {
        return name.strip_prefix("output")?.parse().ok();
    }
    sig.outputs.iter().position(|s| s.name == name)
}

/// How many outputs the rows carry.
fn output_count(rows: &[Row]) -> usize {
    rows.first().map_or(0, Vec::len)
}

fn encoded(t: &HostTensor, format: OutputFormat) -> Value {
    match format {
        OutputFormat::Json => t.to_json(),
        OutputFormat::Base64 => json!({
            "b64": base64::engine::general_purpose::STANDARD.encode(&t.data),
            "dtype": t.dtype.name(),
            "shape": t.shape,
        }),
    }
}

/// `{"outputs": tensor}` for a model with one output, `{"outputs": {name: tensor}}` for several.
pub fn predict_response(sig: &Signature, rows: &[Row], format: OutputFormat) -> Result<Value, String> {
    let tensors = (0..output_count(rows)).map(|j| stack(sig, rows, j)).collect::<Result<Vec<_>, _>>()?;
    if let [one] = tensors.as_slice() {
        return Ok(json!({"outputs": encoded(one, format)}));
    }
    let map: Map<String, Value> =
        tensors.iter().enumerate().map(|(j, t)| (output_name(sig, j), encoded(t, format))).collect();
    Ok(json!({"outputs": map}))
}

/// The protocol's response: `{"model_name", "model_version", "id", "outputs": [...]}`.
pub fn infer_response(
    sig: &Signature,
    model: &str,
    id: Option<Value>,
    rows: &[Row],
    selected: Option<&[usize]>,
) -> Result<Value, String> {
    let all: Vec<usize> = (0..output_count(rows)).collect();
    let outputs = selected
        .unwrap_or(&all)
        .iter()
        .map(|&j| {
            let t = stack(sig, rows, j)?;
            Ok(json!({"name": output_name(sig, j), "datatype": t.dtype.oip_name(), "shape": t.shape, "data": t.to_flat_json()}))
        })
        .collect::<Result<Vec<_>, String>>()?;
    let mut body = json!({"model_name": model, "model_version": "1", "outputs": outputs});
    if let Some(id) = id {
        body["id"] = id;
    }
    Ok(body)
}
