//! volt_export's metadata: the names, dtypes and shapes of a model's inputs and outputs,
//! its named dimensions and the torch version that exported it. AOTInductor packages
//! carry it as `aot_inductor.metadata["volt"]`, TorchScript modules as `extra/volt.json`.
use serde::Deserialize;
use std::collections::BTreeMap;
use volt_serve::tensor::{DType, Dim};

/// One dimension as volt_export writes it: a size, or the name of a dynamic dimension.
#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(untagged)]
pub enum ShapeEntry {
    /// A fixed size.
    Size(usize),
    /// A dynamic dimension named in `dims`.
    Named(String),
}

/// A dynamic dimension's bounds (`torch.export.Dim(name, min=, max=)`).
#[derive(Clone, Copy, Debug, Deserialize, PartialEq)]
pub struct DimBounds {
    /// Smallest size.
    pub min: usize,
    /// Largest size, when bounded.
    pub max: Option<usize>,
}

/// One input or output.
#[derive(Clone, Debug, Deserialize, PartialEq)]
pub struct TensorMeta {
    /// Its name.
    pub name: String,
    /// PyTorch's dtype name.
    pub dtype: String,
    /// Its shape, batch dimension included.
    pub shape: Vec<ShapeEntry>,
    /// An integer input's allowed values, `[low, high)` (token ids below the vocabulary's size).
    #[serde(default)]
    pub values: Option<[i64; 2]>,
}

/// What volt_export records.
#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct VoltMetadata {
    /// The metadata's format version (1).
    pub volt_export: u32,
    /// `torch.__version__` of the exporting process.
    pub torch_version: String,
    /// The model's name, for the protocol's routes.
    #[serde(default)]
    pub name: Option<String>,
    /// Inputs, in the order the model takes them.
    pub inputs: Vec<TensorMeta>,
    /// Outputs, in the order the model gives them.
    pub outputs: Vec<TensorMeta>,
    /// The dynamic dimension that is the batch (first of every input and output).
    #[serde(default)]
    pub batch_dim: Option<String>,
    /// Every named dynamic dimension.
    #[serde(default)]
    pub dims: BTreeMap<String, DimBounds>,
}

impl VoltMetadata {
    /// Parses and checks the metadata.
    pub fn parse(text: &str) -> Result<Self, String> {
        let meta: VoltMetadata = serde_json::from_str(text).map_err(|e| e.to_string())?;
        if meta.volt_export != 1 {
            return Err(format!("format {} is newer than this volt reads (1)", meta.volt_export));
        }
        for t in meta.inputs.iter().chain(&meta.outputs) {
            if DType::parse(&t.dtype).is_none() {
                return Err(format!("`{}` has dtype {:?}, which volt cannot serve", t.name, t.dtype));
            }
            if let Some([low, high]) = t.values {
                if low >= high {
                    return Err(format!("`{}` allows the values {low}..{high}, which is none", t.name));
                }
            }
            for entry in &t.shape {
                if let ShapeEntry::Named(d) = entry {
                    if !meta.dims.contains_key(d) {
                        return Err(format!("`{}` names dimension {d:?}, which `dims` lacks", t.name));
                    }
                }
            }
        }
        for (what, list) in [("inputs", &meta.inputs), ("outputs", &meta.outputs)] {
            let mut seen = std::collections::BTreeSet::new();
            if let Some(t) = list.iter().find(|t| !seen.insert(t.name.as_str())) {
                return Err(format!("two {what} are named `{}`", t.name));
            }
        }
        if let Some(b) = &meta.batch_dim {
            if !meta.dims.contains_key(b) {
                return Err(format!("batch_dim {b:?} is not in `dims`"));
            }
        }
        Ok(meta)
    }

    /// A tensor's dimensions, dynamic ones with their bounds.
    pub fn dims_of(&self, t: &TensorMeta) -> Vec<Dim> {
        t.shape
            .iter()
            .map(|e| match e {
                ShapeEntry::Size(n) => Dim::Fixed(*n),
                ShapeEntry::Named(d) => {
                    let b = self.dims.get(d).copied().unwrap_or(DimBounds { min: 0, max: None });
                    Dim::Dynamic { min: b.min, max: b.max }
                }
            })
            .collect()
    }

    /// Whether `t`'s first dimension is the batch.
    pub fn batched(&self, t: &TensorMeta) -> bool {
        matches!((t.shape.first(), &self.batch_dim), (Some(ShapeEntry::Named(d)), Some(b)) if d == b)
    }
}

/// `2.11.0` of `2.11.0+cu130` (the local build tag does not change the ABI volt checks).
pub fn release(version: &str) -> &str {
    version.split('+').next().unwrap_or(version)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn metadata_is_checked_for_dtypes_dimensions_and_format() {
        let ok = r#"{"volt_export": 1, "torch_version": "2.11.0+cu130",
            "inputs": [{"name": "x", "dtype": "float32", "shape": ["batch", 4]}],
            "outputs": [{"name": "y", "dtype": "float32", "shape": ["batch", 3]}],
            "batch_dim": "batch", "dims": {"batch": {"min": 1, "max": 64}}}"#;
        let meta = VoltMetadata::parse(ok).expect("valid");
        assert_eq!(
            meta.dims_of(&meta.inputs[0]),
            vec![Dim::Dynamic { min: 1, max: Some(64) }, Dim::Fixed(4)]
        );
        assert!(meta.batched(&meta.inputs[0]));
        assert_eq!(release(&meta.torch_version), "2.11.0");
        for (bad, says) in [
            (ok.replace("\"volt_export\": 1", "\"volt_export\": 2"), "newer"),
            (ok.replacen("float32", "complex64", 1), "cannot serve"),
            (ok.replacen("[\"batch\", 4]", "[\"seq\", 4]", 1), "which `dims` lacks"),
            (ok.replace("\"batch_dim\": \"batch\"", "\"batch_dim\": \"b\""), "not in `dims`"),
            (ok.replace("\"torch_version\"", "\"torch\""), "torch"),
            (
                ok.replacen("\"shape\": [\"batch\", 4]", "\"shape\": [\"batch\", 4], \"values\": [5, 5]", 1),
                "which is none",
            ),
            (
                ok.replace(
                    "\"outputs\": [",
                    "\"outputs\": [{\"name\": \"y\", \"dtype\": \"float32\", \"shape\": [\"batch\"]}, ",
                ),
                "two outputs are named `y`",
            ),
        ] {
            let e = VoltMetadata::parse(&bad).unwrap_err();
            assert!(e.contains(says), "{e}");
        }
    }
}
