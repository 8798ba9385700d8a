//! Reading fields of a request body for `decode_request`, with errors that name the
//! field and the item, so an API's own decoding stays short (and can be fuzzed here,
//! away from its model).
use crate::error::ApiError;
use serde_json::Value;
use std::ops::RangeInclusive;

/// `body[field]` as exactly `len` numbers, each within `range`.
pub fn number_list(
    body: &Value,
    field: &str,
    len: usize,
    range: RangeInclusive<f64>,
) -> Result<Vec<f64>, ApiError> {
    let value = body.get(field).ok_or_else(|| ApiError::field(field, "is missing"))?;
    let list =
        value.as_array().ok_or_else(|| ApiError::field(field, format!("must be a list of {len} numbers")))?;
    if list.len() != len {
        return Err(ApiError::field(field, format!("expected {len} numbers, got {}", list.len())));
    }
    list.iter()
        .enumerate()
        .map(|(i, v)| {
            let x =
                v.as_f64().ok_or_else(|| ApiError::field(field, format!("item {i} is not a number: {v}")))?;
            if range.contains(&x) {
                Ok(x)
            } else {
                Err(ApiError::field(
                    field,
                    format!("item {i} = {x} is outside {}..{}", range.start(), range.end()),
                ))
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn numbers_are_checked_by_count_type_and_range_naming_the_item() {
        let ok = number_list(&json!({"x": [0, 1.5, 16]}), "x", 3, 0.0..=16.0).expect("valid");
        assert_eq!(ok, vec![0.0, 1.5, 16.0]);
        for (body, says) in [
            (json!({}), "`x`: is missing"),
            (json!({"x": 3}), "must be a list of 3 numbers"),
            (json!({"x": [1, 2]}), "expected 3 numbers, got 2"),
            (json!({"x": [1, "2", 3]}), "item 1 is not a number"),
            (json!({"x": [1, 2, 17]}), "item 2 = 17 is outside 0..16"),
            (json!({"x": [-0.5, 2, 3]}), "item 0 = -0.5 is outside"),
        ] {
            let e = number_list(&body, "x", 3, 0.0..=16.0).unwrap_err().to_string();
            assert!(e.contains(says), "{body}: {e}");
        }
    }
}
