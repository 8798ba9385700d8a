//! `metrics.csv` in PyTorch Lightning's CSVLogger layout: a header of sorted column
//! names (`step`, `epoch` and one per metric), one row per logged step, blank cells for
//! values a row does not have.
use crate::{FormatError, Metrics};

/// The header and rows of a `metrics.csv` file's bytes; blank cells are absent values.
pub fn parse(bytes: &[u8]) -> Result<(Vec<String>, Vec<Metrics>), FormatError> {
    let mut reader = csv::Reader::from_reader(bytes);
    let header: Vec<String> = reader.headers().map_err(bad)?.iter().map(str::to_owned).collect();
    let mut rows = Vec::new();
    for (i, record) in reader.records().enumerate() {
        let record = record.map_err(bad)?;
        let mut row = Metrics::new();
        for (key, cell) in header.iter().zip(record.iter()).filter(|(_, c)| !c.is_empty()) {
            let value = cell.parse::<f64>().map_err(|_| {
                FormatError::new(format!("row {}: column `{key}` holds {cell:?}, not a number", i + 1))
            })?;
            row.insert(key.clone(), value);
        }
        rows.push(row);
    }
    Ok((header, rows))
}

/// The file's bytes: `keys` as the header (when `header` is set), then `rows`.
pub fn write<'a>(
    keys: impl IntoIterator<Item = &'a String> + Clone,
    rows: &[Metrics],
    header: bool,
) -> Result<Vec<u8>, FormatError> {
    // A record of no fields would be written as `""`, one column named "": with no
    // columns there is nothing to write (and rows without columns hold no values).
    if keys.clone().into_iter().next().is_none() {
        return Ok(Vec::new());
    }
    let mut writer = csv::WriterBuilder::new().has_headers(false).from_writer(Vec::new());
    if header {
        writer.write_record(keys.clone()).map_err(bad)?;
    }
    for row in rows {
        let cells: Vec<String> = keys
            .clone()
            .into_iter()
            .map(|k| row.get(k).map(|v| format_value(k, *v)).unwrap_or_default())
            .collect();
        writer.write_record(&cells).map_err(bad)?;
    }
    writer.into_inner().map_err(|e| FormatError::new(e.to_string()))
}

/// `step` and `epoch` as integers (Lightning writes `3`, not `3.0`) when they are exactly
/// one, everything else as Rust prints floats, which reads back to the bit.
fn format_value(key: &str, v: f64) -> String {
    // Below 2^53 every whole f64 is an exact i64; -0 must stay -0.
    let whole = v.fract() == 0.0 && v.abs() < 9_007_199_254_740_992.0 && !(v == 0.0 && v.is_sign_negative());
    if (key == "step" || key == "epoch") && whole {
        format!("{}", v as i64)
    } else {
        format!("{v}")
    }
}

fn bad(e: csv::Error) -> FormatError {
    FormatError::new(e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_empty_file_writes_back_empty() {
        // Found by fuzzing: a header of no columns came back as one column named "".
        let (header, rows) = parse(b"").expect("an empty file");
        assert!(header.is_empty() && rows.is_empty());
        let bytes = write(&header, &rows, true).expect("write");
        assert_eq!(parse(&bytes).expect("read"), (vec![], vec![]));
    }

    #[test]
    fn step_and_epoch_values_read_back_exactly_however_large_or_signed() {
        // Found by fuzzing: an epoch of 1e173 was written as i64::MAX.
        for v in [1e20, 1.8e173, -0.0, -3.0, 9007199254740993.0, 12.0] {
            let rows = vec![Metrics::from([("epoch".to_owned(), v), ("step".to_owned(), v)])];
            let keys = vec!["epoch".to_owned(), "step".to_owned()];
            let (_, back) = parse(&write(&keys, &rows, true).expect("write")).expect("read");
            assert_eq!(back[0]["epoch"].to_bits(), v.to_bits(), "{v}");
            assert_eq!(back[0]["step"].to_bits(), v.to_bits(), "{v}");
        }
    }
}
