//! A LoRA fit's adapter for `volt serve --adapter`: PEFT's files read into volt-llm's
//! unmerged adapter, refused when it names another base than the GGUF file served.
use super::{check_base, BaseId};
use std::path::Path;

/// The PEFT adapter in `dir`, for serving on the GGUF file `base` (`None`: a Hugging
/// Face folder, which cannot be checked against the hash the adapter records).
pub fn serving_adapter(dir: &Path, base: Option<&Path>) -> Result<volt_llm::Adapter, String> {
    let adapter = volt_train::lora::read_peft_adapter(dir).map_err(|e| e.to_string())?;
    if let Some(path) = base {
        let bytes = std::fs::read(path).map_err(|e| format!("{}: {e}", path.display()))?;
        check_base(dir, &adapter.metadata, &BaseId::of(path, &bytes))?;
    }
    volt_llm::Adapter::from_tensors(adapter.config.scale(), &adapter.tensors)
        .map_err(|e| format!("{}: {e}", dir.display()))
}
