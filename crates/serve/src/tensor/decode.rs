//! Request bodies to rows of host tensors: volt's `{"inputs": ...}` (nested lists, or
//! base64 buffers with dtype and shape) and the Open Inference Protocol's `inputs` list.
//! Every tensor is checked against the model's signature here, before it is queued; an
//! error names the input and says what was expected and what came.
use super::dtype::{self, DType};
use super::encode::output_index;
use super::signature::{show_shape, HostTensor, Row, Signature, TensorSpec};
use crate::error::ApiError;
use base64::Engine;
use serde_json::{Map, Value};

/// How a response should carry its tensors.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum OutputFormat {
    /// Nested JSON lists.
    Json,
    /// Base64 little-endian buffers with dtype and shape.
    Base64,
}

/// A decoded `/predict` request.
#[derive(Debug)]
pub struct PredictRequest {
    /// One row per batch row (one row holding whole tensors for a model that does not batch).
    pub rows: Vec<Row>,
    /// How to answer.
    pub format: OutputFormat,
}

/// A decoded `/v2/models/{name}/infer` request.
#[derive(Debug)]
pub struct InferRequest {
    /// The client's request id, echoed back.
    pub id: Option<Value>,
    /// As in [`PredictRequest::rows`].
    pub rows: Vec<Row>,
    /// Outputs asked for by name (all when `None`), in the model's order.
    pub outputs: Option<Vec<usize>>,
}

/// Decodes volt's `{"inputs": ..., "output_format": "json" | "b64"}`.
pub fn predict_request(sig: &Signature, body: &Value) -> Result<PredictRequest, ApiError> {
    let obj = body
        .as_object()
        .ok_or_else(|| ApiError::BadRequest("the body must be a JSON object with `inputs`".into()))?;
    if let Some(key) = obj.keys().find(|k| !matches!(k.as_str(), "inputs" | "output_format")) {
        return Err(ApiError::field(
            key,
            "is not a field of this API (it takes `inputs` and `output_format`)",
        ));
    }
    let format = match obj.get("output_format").map(|v| v.as_str()) {
        None | Some(Some("json")) => OutputFormat::Json,
        Some(Some("b64" | "base64")) => OutputFormat::Base64,
        Some(_) => return Err(ApiError::field("output_format", "must be \"json\" or \"b64\"")),
    };
    let inputs = obj.get("inputs").ok_or_else(|| ApiError::field("inputs", "is missing"))?;
    let names: Vec<&str> = sig.inputs.iter().map(|s| s.name.as_str()).collect();
    let tensors = match inputs {
        Value::Object(map) if !is_buffer(map) => {
            if let Some(extra) = map.keys().find(|k| !names.contains(&k.as_str())) {
                return Err(no_such("inputs", &sig.inputs, extra));
            }
            sig.inputs
                .iter()
                .map(|spec| {
                    let field = format!("inputs.{}", spec.name);
                    let value = map.get(&spec.name).ok_or_else(|| ApiError::field(&field, "is missing"))?;
                    tensor(&field, value, spec.dtype)
                })
                .collect::<Result<Vec<_>, _>>()?
        }
        _ if names.len() > 1 => {
            return Err(ApiError::field(
                "inputs",
                format!(
                    "the model takes {} inputs: give an object naming them ({})",
                    names.len(),
                    names.join(", ")
                ),
            ))
        }
        value => vec![tensor("inputs", value, sig.inputs.first().and_then(|s| s.dtype))?],
    };
    Ok(PredictRequest { rows: rows(sig, tensors)?, format })
}

/// Decodes the Open Inference Protocol's `{"id", "inputs": [{"name", "shape", "datatype",
/// "data"}], "outputs": [{"name"}]}`.
pub fn infer_request(sig: &Signature, body: &Value) -> Result<InferRequest, ApiError> {
    let obj = body
        .as_object()
        .ok_or_else(|| ApiError::BadRequest("the body must be a JSON object with `inputs`".into()))?;
    let list = obj
        .get("inputs")
        .and_then(Value::as_array)
        .ok_or_else(|| ApiError::field("inputs", "must be a list of {name, shape, datatype, data}"))?;
    let mut given: Vec<Option<HostTensor>> = vec![None; sig.inputs.len()];
    for (i, item) in list.iter().enumerate() {
        let at = format!("inputs[{i}]");
        let name =
            item.get("name").and_then(Value::as_str).ok_or_else(|| ApiError::field(&at, "has no `name`"))?;
        let field = format!("inputs.{name}");
        let index = sig
            .inputs
            .iter()
            .position(|s| s.name == name)
            .ok_or_else(|| no_such("inputs", &sig.inputs, name))?;
        if given[index].is_some() {
            return Err(ApiError::field(&field, "is given twice"));
        }
        if item.pointer("/parameters/binary_data_size").is_some() {
            return Err(ApiError::field(
                &field,
                "the binary tensor data extension is not supported; send `data`",
            ));
        }
        let datatype = item
            .get("datatype")
            .and_then(Value::as_str)
            .ok_or_else(|| ApiError::field(&field, "has no `datatype`"))?;
        let dtype = parse_dtype(&field, datatype)?;
        if let Some(expected) = sig.inputs[index].dtype.filter(|&e| e != dtype) {
            return Err(ApiError::field(
                &field,
                format!("expected datatype {}, got {datatype}", expected.oip_name()),
            ));
        }
        let shape = shape_field(&field, item.get("shape"))?;
        let data = item.get("data").ok_or_else(|| ApiError::field(&field, "has no `data`"))?;
        let mut bytes = Vec::new();
        let mut leaves = 0;
        flatten(&field, data, dtype, &mut bytes, &mut leaves)?;
        let numel = numel(&field, &shape)?;
        if leaves != numel {
            return Err(ApiError::field(
                &field,
                format!("`shape` {} holds {numel} elements, `data` has {leaves}", show_shape(&shape)),
            ));
        }
        given[index] = Some(HostTensor { dtype, shape, data: bytes });
    }
    let tensors = given
        .into_iter()
        .zip(&sig.inputs)
        .map(|(t, spec)| t.ok_or_else(|| ApiError::field(&format!("inputs.{}", spec.name), "is missing")))
        .collect::<Result<Vec<_>, _>>()?;
    let outputs = match obj.get("outputs") {
        None | Some(Value::Null) => None,
        Some(Value::Array(list)) => Some(
            list.iter()
                .enumerate()
                .map(|(i, o)| {
                    let name = o
                        .get("name")
                        .and_then(Value::as_str)
                        .ok_or_else(|| ApiError::field(&format!("outputs[{i}]"), "has no `name`"))?;
                    output_index(sig, name).ok_or_else(|| no_such("outputs", &sig.outputs, name))
                })
                .collect::<Result<Vec<_>, _>>()?,
        ),
        Some(_) => return Err(ApiError::field("outputs", "must be a list of {name}")),
    };
    Ok(InferRequest { id: obj.get("id").cloned(), rows: rows(sig, tensors)?, outputs })
}

/// The error for an input (`what` = "inputs") or output the model does not have, listing
/// those it has.
fn no_such(what: &str, specs: &[TensorSpec], name: &str) -> ApiError {
    let names: Vec<&str> = specs.iter().map(|s| s.name.as_str()).collect();
    let one = what.trim_end_matches('s');
    ApiError::field(
        &format!("{what}.{name}"),
        format!("the model has no such {one} (its {what}: {})", names.join(", ")),
    )
}

/// The most rows one request may carry: a row may hold no elements at all (a dynamic
/// dimension of size 0), so the payload's size alone does not bound their count.
pub const MAX_ROWS: usize = 65_536;

/// Whole request tensors (in the model's input order) into rows, checked.
fn rows(sig: &Signature, tensors: Vec<HostTensor>) -> Result<Vec<Row>, ApiError> {
    sig.check_values(&tensors).map_err(ApiError::BadRequest)?;
    if sig.batch.is_none() {
        let row = tensors;
        sig.check_row(&row).map_err(ApiError::BadRequest)?;
        return Ok(vec![row]);
    }
    let mut count = None;
    for (spec, t) in sig.inputs.iter().zip(&tensors) {
        let field = format!("inputs.{}", spec.name);
        let Some(&k) = t.shape.first() else {
            return Err(ApiError::field(
                &field,
                "is a scalar; the model batches, so its outer list is the batch",
            ));
        };
        if k == 0 {
            return Err(ApiError::field(&field, "has no rows"));
        }
        match count {
            Some((n, first)) if n != k => {
                return Err(ApiError::field(&field, format!("has {k} rows but `inputs.{first}` has {n}")));
            }
            _ => count = Some((k, spec.name.as_str())),
        }
    }
    let k = count.map_or(0, |(k, _)| k);
    if k > MAX_ROWS {
        return Err(ApiError::field(
            "inputs",
            format!("has {k} rows; a request takes at most {MAX_ROWS} (send more requests)"),
        ));
    }
    // Every row of a request has the same shapes: checking one, before splitting, checks
    // them all.
    let shapes: Row = tensors
        .iter()
        .map(|t| HostTensor { dtype: t.dtype, shape: t.shape[1..].to_vec(), data: Vec::new() })
        .collect();
    sig.check_row(&shapes).map_err(ApiError::BadRequest)?;
    let mut rows: Vec<Row> = (0..k).map(|_| Vec::with_capacity(tensors.len())).collect();
    for t in tensors {
        let step = t.data.len() / k;
        for (i, row) in rows.iter_mut().enumerate() {
            let data = t.data[i * step..(i + 1) * step].to_vec();
            row.push(HostTensor { dtype: t.dtype, shape: t.shape[1..].to_vec(), data });
        }
    }
    Ok(rows)
}

/// Whether an object is one base64 buffer rather than named inputs.
fn is_buffer(map: &Map<String, Value>) -> bool {
    map.contains_key("b64")
        && map.len() <= 3
        && map.keys().all(|k| matches!(k.as_str(), "b64" | "dtype" | "shape"))
}

/// One whole input: nested lists (in `dtype`, or inferred when the model does not
/// record it) or a base64 buffer.
fn tensor(field: &str, value: &Value, dtype: Option<DType>) -> Result<HostTensor, ApiError> {
    match value {
        Value::Object(map) if is_buffer(map) => buffer(field, map, dtype),
        Value::Object(_) => {
            Err(ApiError::field(field, "must be nested lists or {\"b64\", \"dtype\", \"shape\"}"))
        }
        _ => {
            let shape = nested_shape(value);
            let dtype = dtype.unwrap_or_else(|| infer_dtype(value));
            let mut data = Vec::new();
            let mut leaves = 0;
            walk(field, value, &shape, &mut Vec::new(), dtype, &mut data, &mut leaves)?;
            Ok(HostTensor { dtype, shape, data })
        }
    }
}

/// A base64 buffer: its dtype must be the input's, its length the shape's.
fn buffer(field: &str, map: &Map<String, Value>, expected: Option<DType>) -> Result<HostTensor, ApiError> {
    let name = map
        .get("dtype")
        .and_then(Value::as_str)
        .ok_or_else(|| ApiError::field(field, "a base64 buffer needs `dtype`"))?;
    let dtype = parse_dtype(field, name)?;
    if let Some(e) = expected.filter(|&e| e != dtype) {
        return Err(ApiError::field(field, format!("expected dtype {e}, got {dtype}")));
    }
    let shape = shape_field(field, map.get("shape"))?;
    let text = map
        .get("b64")
        .and_then(Value::as_str)
        .ok_or_else(|| ApiError::field(field, "`b64` must be a base64 string"))?;
    let data = base64::engine::general_purpose::STANDARD
        .decode(text)
        .map_err(|e| ApiError::field(field, format!("`b64` is not base64: {e}")))?;
    let want = numel(field, &shape)?
        .checked_mul(dtype.size())
        .ok_or_else(|| ApiError::field(field, "`shape` is too large"))?;
    if data.len() != want {
        return Err(ApiError::field(
            field,
            format!(
                "shape {} of {dtype} needs {want} bytes, the buffer has {}",
                show_shape(&shape),
                data.len()
            ),
        ));
    }
    Ok(HostTensor { dtype, shape, data })
}

fn parse_dtype(field: &str, name: &str) -> Result<DType, ApiError> {
    DType::parse(name).ok_or_else(|| {
        let known: Vec<&str> = dtype::ALL.iter().map(|d| d.name()).collect();
        ApiError::field(field, format!("unknown dtype {name:?} (one of {})", known.join(", ")))
    })
}

fn shape_field(field: &str, value: Option<&Value>) -> Result<Vec<usize>, ApiError> {
    let list = value
        .and_then(Value::as_array)
        .ok_or_else(|| ApiError::field(field, "`shape` must be a list of sizes"))?;
    list.iter()
        .map(|v| {
            v.as_u64()
                .map(|n| n as usize)
                .ok_or_else(|| ApiError::field(field, format!("`shape` has {v}, not a size")))
        })
        .collect()
}

fn numel(field: &str, shape: &[usize]) -> Result<usize, ApiError> {
    shape
        .iter()
        .try_fold(1usize, |a, &n| a.checked_mul(n))
        .ok_or_else(|| ApiError::field(field, "`shape` is too large"))
}

/// The shape nested lists claim, read down their first elements.
fn nested_shape(mut value: &Value) -> Vec<usize> {
    let mut shape = Vec::new();
    while let Value::Array(list) = value {
        shape.push(list.len());
        match list.first() {
            Some(first) => value = first,
            None => break,
        }
    }
    shape
}

/// float32 when any leaf has a fraction, bool when all are booleans, else int64.
fn infer_dtype(value: &Value) -> DType {
    fn scan(v: &Value, any_float: &mut bool, all_bool: &mut bool) {
        match v {
            Value::Array(list) => list.iter().for_each(|x| scan(x, any_float, all_bool)),
            Value::Bool(_) => {}
            Value::Number(n) => {
                *all_bool = false;
                *any_float |= n.as_i64().is_none();
            }
            _ => *all_bool = false,
        }
    }
    let (mut any_float, mut all_bool) = (false, true);
    scan(value, &mut any_float, &mut all_bool);
    match (all_bool, any_float) {
        (true, _) if value.is_array() || value.is_boolean() => DType::Bool,
        (_, true) => DType::F32,
        _ => DType::I64,
    }
}

/// Checks that nested lists are rectangular in `shape` and appends their leaves.
fn walk(
    field: &str,
    value: &Value,
    shape: &[usize],
    at: &mut Vec<usize>,
    dtype: DType,
    out: &mut Vec<u8>,
    leaves: &mut usize,
) -> Result<(), ApiError> {
    let here = || at.iter().map(|i| format!("[{i}]")).collect::<String>();
    match (value, shape.get(at.len())) {
        (Value::Array(list), Some(&n)) => {
            if list.len() != n {
                return Err(ApiError::field(
                    field,
                    format!(
                        "ragged lists: item {} has {} elements where {} were expected",
                        here(),
                        list.len(),
                        n
                    ),
                ));
            }
            for (i, v) in list.iter().enumerate() {
                at.push(i);
                walk(field, v, shape, at, dtype, out, leaves)?;
                at.pop();
            }
            Ok(())
        }
        (Value::Array(_), None) => Err(ApiError::field(
            field,
            format!("ragged lists: item {} is a list where a number was expected", here()),
        )),
        (_, Some(_)) => Err(ApiError::field(
            field,
            format!("ragged lists: item {} is {value} where a list was expected", here()),
        )),
        (leaf, None) => {
            *leaves += 1;
            dtype.push(leaf, out).map_err(|e| ApiError::field(field, format!("item {}: {e}", here())))
        }
    }
}

/// Appends the leaves of flat or nested lists (the protocol allows both).
fn flatten(
    field: &str,
    value: &Value,
    dtype: DType,
    out: &mut Vec<u8>,
    leaves: &mut usize,
) -> Result<(), ApiError> {
    match value {
        Value::Array(list) => list.iter().try_for_each(|v| flatten(field, v, dtype, out, leaves)),
        leaf => {
            *leaves += 1;
            dtype
                .push(leaf, out)
                .map_err(|e| ApiError::field(field, format!("`data` item {}: {e}", *leaves - 1)))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tensor::signature::{BatchRange, Dim};
    use serde_json::json;

    fn spec(name: &str, dtype: DType, dims: Vec<Dim>) -> TensorSpec {
        TensorSpec { name: name.into(), dtype: Some(dtype), dims: Some(dims), values: None }
    }

    fn one_input() -> Signature {
        Signature {
            inputs: vec![spec("x", DType::F32, vec![Dim::Fixed(3)])],
            outputs: vec![],
            batch: Some(BatchRange { min: 1, max: Some(4) }),
        }
    }

    fn two_inputs() -> Signature {
        let seq = Dim::Dynamic { min: 1, max: Some(8) };
        Signature {
            inputs: vec![spec("ids", DType::I64, vec![seq]), spec("mask", DType::I64, vec![seq])],
            outputs: vec![],
            batch: Some(BatchRange { min: 1, max: None }),
        }
    }

    /// One input that records neither dtype nor shape (a TorchScript module without
    /// volt's metadata), batched.
    fn untyped() -> Signature {
        Signature {
            inputs: vec![TensorSpec { name: "input0".into(), ..TensorSpec::default() }],
            outputs: vec![],
            batch: Some(BatchRange { min: 1, max: None }),
        }
    }

    fn refused(sig: &Signature, body: Value) -> String {
        predict_request(sig, &body).expect_err("refused").to_string()
    }

    #[test]
    fn the_outer_list_is_the_batch_and_each_row_is_its_own() {
        let r = predict_request(&one_input(), &json!({"inputs": [[1, 2, 3], [4, 5.5, 6]]})).expect("valid");
        assert_eq!(r.rows.len(), 2);
        assert_eq!(r.rows[1][0].shape, vec![3]);
        let floats: Vec<f32> =
            r.rows[1][0].data.chunks(4).map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]])).collect();
        assert_eq!(floats, vec![4.0, 5.5, 6.0]);
        assert_eq!(r.format, OutputFormat::Json);
        // More rows than one call takes are still one request: the queue splits them.
        let many = json!({"inputs": vec![[0, 0, 0]; 9], "output_format": "b64"});
        let r = predict_request(&one_input(), &many).expect("valid");
        assert_eq!((r.rows.len(), r.format), (9, OutputFormat::Base64));
    }

    #[test]
    fn rows_without_elements_cannot_flood_the_queue() {
        // Zero bytes of base64 for 10^11 rows of nothing: refused before any row is made.
        let untyped = untyped();
        for shape in [json!([100_000_000_000u64, 0]), json!([65_537, 0])] {
            let body = json!({"inputs": {"b64": "", "dtype": "float32", "shape": shape}});
            let e = refused(&untyped, body);
            assert!(e.contains("rows; a request takes at most 65536"), "{e}");
        }
        // A model that records its shapes refuses the empty rows by their shape first.
        let e = refused(&one_input(), json!({"inputs": {"b64": "", "dtype": "float32", "shape": [10, 0]}}));
        assert!(e.contains("expected shape [3] per row, got [0]"), "{e}");
        let ok = json!({"inputs": {"b64": "", "dtype": "float32", "shape": [65_536, 0]}});
        assert_eq!(predict_request(&untyped, &ok).expect("at the limit").rows.len(), 65_536);
    }

    #[test]
    fn base64_buffers_carry_dtype_and_shape() {
        let data: Vec<u8> = [1f32, 2.0, 3.0, 4.0, 5.0, 6.0].iter().flat_map(|v| v.to_le_bytes()).collect();
        let b64 = base64::engine::general_purpose::STANDARD.encode(&data);
        let r = predict_request(
            &one_input(),
            &json!({"inputs": {"b64": b64, "dtype": "float32", "shape": [2, 3]}}),
        )
        .expect("valid");
        assert_eq!(r.rows[1][0].data, data[12..].to_vec());
        let named = json!({"inputs": {"x": {"b64": b64, "dtype": "<f4", "shape": [2, 3]}}});
        assert_eq!(predict_request(&one_input(), &named).expect("valid").rows.len(), 2);
        for (body, says) in [
            (
                json!({"inputs": {"b64": b64, "dtype": "int32", "shape": [2, 3]}}),
                "`inputs`: expected dtype float32, got int32",
            ),
            (
                json!({"inputs": {"b64": b64, "dtype": "float32", "shape": [3, 3]}}),
                "needs 36 bytes, the buffer has 24",
            ),
            (json!({"inputs": {"b64": "***", "dtype": "float32", "shape": [2, 3]}}), "`b64` is not base64"),
            (json!({"inputs": {"b64": b64, "shape": [2, 3]}}), "needs `dtype`"),
            (json!({"inputs": {"b64": b64, "dtype": "float32", "shape": [2, -3]}}), "not a size"),
            (json!({"inputs": {"b64": b64, "dtype": "qint8", "shape": [2, 3]}}), "unknown dtype \"qint8\""),
            (
                json!({"inputs": {"b64": b64, "dtype": "float32", "shape": [u64::MAX, u64::MAX]}}),
                "`shape` is too large",
            ),
        ] {
            let e = refused(&one_input(), body);
            assert!(e.contains(says), "{e}");
        }
    }

    #[test]
    fn bad_inputs_are_named_with_what_was_expected() {
        let sig = one_input();
        for (body, says) in [
            (json!([1, 2, 3]), "must be a JSON object"),
            (json!({}), "`inputs`: is missing"),
            (json!({"inputs": [[1, 2, 3]], "temperature": 1}), "`temperature`: is not a field"),
            (json!({"inputs": [[1, 2]]}), "input `x`: expected shape [3] per row, got [2]"),
            (json!({"inputs": [1, 2, 3]}), "input `x`: expected shape [3] per row, got []"),
            (json!({"inputs": 3}), "`inputs.x`: is a scalar"),
            (json!({"inputs": []}), "`inputs.x`: has no rows"),
            (
                json!({"inputs": [[1, 2, 3], [4, 5]]}),
                "ragged lists: item [1] has 2 elements where 3 were expected",
            ),
            (json!({"inputs": [[1, 2, 3], [4, [5], 6]]}), "item [1][1] is a list where a number"),
            (json!({"inputs": [[1, "2", 3]]}), "item [0][1]: \"2\" is not a number"),
            (
                json!({"inputs": {"y": [[1, 2, 3]]}}),
                "`inputs.y`: the model has no such input (its inputs: x)",
            ),
            (json!({"inputs": [[1, 2, 3]], "output_format": "npy"}), "`output_format`"),
        ] {
            let e = refused(&sig, body.clone());
            assert!(e.contains(says), "{body}: {e}");
        }
        let sig = two_inputs();
        for (body, says) in [
            (json!({"inputs": [[1, 2]]}), "the model takes 2 inputs: give an object naming them (ids, mask)"),
            (json!({"inputs": {"ids": [[1, 2]]}}), "`inputs.mask`: is missing"),
            (
                json!({"inputs": {"ids": [[1, 2]], "mask": [[1, 1], [1, 1]]}}),
                "`inputs.mask`: has 2 rows but `inputs.ids` has 1",
            ),
            (
                json!({"inputs": {"ids": [[1.5, 2]], "mask": [[1, 1]]}}),
                "1.5 is not an integer (the input is int64)",
            ),
            (
                json!({"inputs": {"ids": [vec![1; 9]], "mask": [vec![1; 9]]}}),
                "expected shape [1..8] per row, got [9]",
            ),
        ] {
            let e = refused(&sig, body.clone());
            assert!(e.contains(says), "{body}: {e}");
        }
    }

    #[test]
    fn without_a_recorded_dtype_the_lists_say_it() {
        let sig = untyped();
        let dtype = |v: Value| predict_request(&sig, &json!({"inputs": v})).expect("valid").rows[0][0].dtype;
        assert_eq!(dtype(json!([[1, 2]])), DType::I64);
        assert_eq!(dtype(json!([[1, 2.5]])), DType::F32);
        assert_eq!(dtype(json!([[true, false]])), DType::Bool);
    }

    #[test]
    fn the_inference_protocol_names_inputs_and_outputs() {
        let mut sig = two_inputs();
        sig.outputs = vec![TensorSpec { name: "emb".into(), ..TensorSpec::default() }];
        let body = json!({"id": "7", "inputs": [
            {"name": "mask", "shape": [2, 2], "datatype": "INT64", "data": [1, 1, 1, 0]},
            {"name": "ids", "shape": [2, 2], "datatype": "INT64", "data": [[5, 6], [7, 0]]},
        ], "outputs": [{"name": "emb"}]});
        let r = infer_request(&sig, &body).expect("valid");
        assert_eq!((r.rows.len(), r.id, r.outputs), (2, Some(json!("7")), Some(vec![0])));
        assert_eq!(r.rows[1][0].data[..8], 7i64.to_le_bytes());
        let with = |f: &dyn Fn(&mut Value)| {
            let mut b = body.clone();
            f(&mut b);
            infer_request(&sig, &b).expect_err("refused").to_string()
        };
        assert!(with(&|b| b["inputs"][0]["datatype"] = json!("FP32"))
            .contains("`inputs.mask`: expected datatype INT64, got FP32"));
        assert!(with(&|b| b["inputs"][0]["shape"] = json!([2, 3]))
            .contains("`shape` [2, 3] holds 6 elements, `data` has 4"));
        assert!(with(&|b| b["inputs"][0]["name"] = json!("ids")).contains("`inputs.ids`: is given twice"));
        assert!(with(&|b| b["inputs"][0]["name"] = json!("x")).contains("no such input"));
        assert!(with(&|b| {
            b["inputs"].as_array_mut().map(|l| l.pop());
        })
        .contains("`inputs.ids`: is missing"));
        assert!(with(&|b| b["outputs"] = json!([{"name": "logits"}]))
            .contains("`outputs.logits`: the model has no such output (its outputs: emb)"));
        assert!(with(&|b| b["inputs"][0]["parameters"] = json!({"binary_data_size": 32}))
            .contains("binary tensor data extension"));
        assert!(with(&|b| b["inputs"][0]["datatype"] = json!("BYTES")).contains("unknown dtype \"BYTES\""));
    }
}
