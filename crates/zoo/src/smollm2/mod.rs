//! SmolLM2 (or any tied-embedding Llama GGUF) fine-tuned by the Trainer: with LoRA
//! adapters on a frozen base (`smollm2-lora`), or every weight (`smollm2`). Batches are
//! `(ids, labels)` from [`crate::instruct::InstructData`]; the loss is the mean over the
//! labelled (answer) tokens. A LoRA run's checkpoints hold the adapters and their
//! optimizer state only, and name the base by its file's SHA-256, so a resume on another
//! base is refused by name.
pub mod hf;
pub mod model;
pub mod serving;

use model::LlamaModel;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use tch::{nn, Device, Tensor};
use volt_formats::gguf::Gguf;
use volt_train::checkpoint::Saved;
use volt_train::lora::LoraConfig;
use volt_train::metrics::LogOptions;
use volt_train::{OptimizerConfig, OptimizerSpec, StepContext, VoltModule};

/// The `[model.lora]` section: LoRA's shape and targets (LitGPT's defaults).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LoraSection {
    /// Rank of the update.
    pub r: i64,
    /// The update is scaled by `alpha / r`.
    pub alpha: f64,
    /// Dropout on the adapters' input while training.
    pub dropout: f64,
    /// Layers that get an adapter, by short name (`q_proj`, `k_proj`, `v_proj`,
    /// `o_proj`, `gate_proj`, `up_proj`, `down_proj`) or `all-linear`.
    pub targets: Vec<String>,
}

impl Default for LoraSection {
    fn default() -> Self {
        let d = LoraConfig::default();
        LoraSection { r: d.r, alpha: d.alpha, dropout: d.dropout, targets: d.targets }
    }
}

impl From<&LoraSection> for LoraConfig {
    fn from(s: &LoraSection) -> Self {
        LoraConfig { r: s.r, alpha: s.alpha, dropout: s.dropout, targets: s.targets.clone() }
    }
}

/// The `[model]` section of `smollm2` and `smollm2-lora`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SmolLm2Config {
    /// The base model's GGUF file; default the bundled SmolLM2-135M-Instruct.
    pub gguf: Option<PathBuf>,
    /// LoRA adapters on a frozen base; absent: every weight is trained.
    pub lora: Option<LoraSection>,
    /// AdamW's learning rate.
    pub lr: f64,
    /// AdamW's betas.
    pub betas: (f64, f64),
    /// AdamW's decoupled weight decay.
    pub weight_decay: f64,
}

impl SmolLm2Config {
    /// `smollm2-lora`'s defaults: LitGPT's `finetune_lora` (r 8, alpha 16, query and
    /// value, AdamW 2e-4, no weight decay).
    pub fn lora() -> Self {
        SmolLm2Config { lora: Some(LoraSection::default()), lr: 2e-4, ..Self::full() }
    }

    /// `smollm2`'s defaults: full fine-tuning, AdamW 5e-5 (LitGPT's `finetune_full`
    /// scale for a small model), betas (0.9, 0.95).
    pub fn full() -> Self {
        SmolLm2Config { gguf: None, lora: None, lr: 5e-5, betas: (0.9, 0.95), weight_decay: 0.0 }
    }
}

impl Default for SmolLm2Config {
    fn default() -> Self {
        Self::full()
    }
}

/// The GGUF file `config` names, or the bundled SmolLM2; an error says how to get it.
pub fn base_file(gguf: Option<&Path>) -> Result<PathBuf, String> {
    match gguf {
        Some(p) if p.is_file() => Ok(p.to_owned()),
        Some(p) => Err(format!("model.gguf = {}: file not found", p.display())),
        None => crate::smollm2_gguf().ok_or_else(|| {
            format!(
                "SmolLM2-135M-Instruct is not installed: run scripts/setup (or pip install {}), \
                 or give a Llama GGUF file with --model.gguf PATH",
                crate::SMOLLM2_PACKAGE
            )
        }),
    }
}

/// Which base a LoRA run was made on: its file's name and SHA-256.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct BaseId {
    /// The file's name (for messages).
    pub file: String,
    /// Hex SHA-256 of the file's bytes.
    pub sha256: String,
}

impl BaseId {
    /// The base whose file at `path` holds `bytes`.
    pub fn of(path: &Path, bytes: &[u8]) -> Self {
        // The file's own name, not a link's (scripts/setup links it as .smollm2).
        let real = std::fs::canonicalize(path).unwrap_or_else(|_| path.to_owned());
        let file =
            real.file_name().map_or_else(|| path.display().to_string(), |f| f.to_string_lossy().into_owned());
        BaseId { file, sha256: format!("{:x}", Sha256::digest(bytes)) }
    }
}

/// Refuses an adapter (in `dir`, its file's header `metadata`) that names another base
/// than `base`, naming both; one that names none (PEFT's own) passes.
pub fn check_base(dir: &Path, metadata: &HashMap<String, String>, base: &BaseId) -> Result<(), String> {
    match metadata.get(BASE_SHA256_KEY).filter(|s| **s != base.sha256) {
        None => Ok(()),
        Some(sha) => {
            let file = metadata.get(BASE_FILE_KEY).map_or("another file", String::as_str);
            Err(format!(
                "{}: the adapter was trained on base {file} (sha256 {sha}), not on {} (sha256 {}): give that base with --gguf",
                dir.display(),
                base.file,
                base.sha256
            ))
        }
    }
}

/// SmolLM2 as a [`VoltModule`].
pub struct SmolLm2 {
    vs: nn::VarStore,
    model: LlamaModel,
    config: SmolLm2Config,
    base: BaseId,
    base_path: PathBuf,
}

/// The header key of an adapter file that names its base's SHA-256 (PEFT ignores it).
pub const BASE_SHA256_KEY: &str = "volt.base_sha256";
/// The header key of an adapter file that names its base's file.
pub const BASE_FILE_KEY: &str = "volt.base_file";

impl SmolLm2 {
    /// The model of `config`'s GGUF file on `device`. Errors name the file or the field.
    pub fn new(config: SmolLm2Config, device: Device) -> Result<Self, String> {
        let path = base_file(config.gguf.as_deref())?;
        let bytes = std::fs::read(&path).map_err(|e| format!("{}: {e}", path.display()))?;
        let g = Gguf::parse(&bytes).map_err(|e| format!("{}: {e}", path.display()))?;
        let lora = config.lora.as_ref().map(LoraConfig::from);
        let vs = nn::VarStore::new(device);
        let model = LlamaModel::from_gguf(&vs.root(), &bytes, &g, lora.as_ref())
            .map_err(|e| format!("{}: {e}", path.display()))?;
        let base = BaseId::of(&path, &bytes);
        Ok(SmolLm2 { vs, model, config, base, base_path: path })
    }

    /// The base of `gguf` (default the bundled SmolLM2) with the PEFT adapter in `dir`
    /// loaded onto it. An adapter made on another base (its recorded hash, or tensors
    /// that do not fit) is refused, naming both.
    pub fn from_adapter(dir: &Path, gguf: Option<&Path>, device: Device) -> Result<Self, String> {
        let adapter = volt_train::lora::read_peft_adapter(dir).map_err(|e| e.to_string())?;
        let c = &adapter.config;
        let lora = LoraSection { r: c.r, alpha: c.alpha, dropout: c.dropout, targets: c.targets.clone() };
        let config =
            SmolLm2Config { gguf: gguf.map(Path::to_owned), lora: Some(lora), ..SmolLm2Config::lora() };
        let model = SmolLm2::new(config, device)?;
        check_base(dir, &adapter.metadata, &model.base)?;
        let vars = model.vs.variables();
        let mut problems: Vec<String> = Vec::new();
        for (name, var) in vars.iter().filter(|(_, t)| t.requires_grad()) {
            match adapter.tensors.get(name) {
                None => problems.push(format!("missing in the adapter: {name}")),
                Some(t) if t.size() != var.size() => {
                    problems.push(format!("{name}: adapter {:?}, model {:?}", t.size(), var.size()))
                }
                Some(_) => {}
            }
        }
        let adapted = |n: &String| vars.get(n).is_some_and(|t| t.requires_grad());
        problems.extend(
            adapter
                .tensors
                .keys()
                .filter(|n| !adapted(n))
                .map(|n| format!("not an adapter of this model: {n}")),
        );
        if !problems.is_empty() {
            problems.sort();
            return Err(format!(
                "{}: the adapter does not fit base {}:\n  {}",
                dir.display(),
                model.base.file,
                problems.join("\n  ")
            ));
        }
        tch::no_grad(|| {
            for (name, mut var) in vars.into_iter().filter(|(_, t)| t.requires_grad()) {
                var.copy_(&adapter.tensors[&name].to_kind(var.kind()));
            }
        });
        Ok(model)
    }

    /// The base model's file.
    pub fn base_path(&self) -> &Path {
        &self.base_path
    }

    /// Every weight under Hugging Face's names, adapters folded in (what a merged model
    /// holds).
    pub fn merged_tensors(&self) -> Vec<(String, Tensor)> {
        let scale = self.lora().map_or(0.0, |l| l.scale());
        volt_train::lora::merged_tensors(&self.vs, scale)
    }

    /// The network.
    pub fn model(&self) -> &LlamaModel {
        &self.model
    }

    /// The base file this model was built on.
    pub fn base(&self) -> &BaseId {
        &self.base
    }

    /// The hyperparameters.
    pub fn config(&self) -> &SmolLm2Config {
        &self.config
    }

    /// The LoRA configuration, when the model has adapters.
    pub fn lora(&self) -> Option<LoraConfig> {
        self.config.lora.as_ref().map(LoraConfig::from)
    }

    /// Writes the adapters as PEFT's files into `dir` (an error for full fine-tuning).
    pub fn save_adapter(&self, dir: &Path) -> volt_train::Result<()> {
        let lora =
            self.lora().ok_or_else(|| volt_train::Error::User("this model has no LoRA adapters".into()))?;
        let metadata = std::collections::HashMap::from([
            (BASE_SHA256_KEY.to_owned(), self.base.sha256.clone()),
            (BASE_FILE_KEY.to_owned(), self.base.file.clone()),
        ]);
        // The Hugging Face name is the bundled file's origin; another base is named by its file.
        let base_name = if self.config.gguf.is_none() { BASE_MODEL_NAME } else { self.base.file.as_str() };
        volt_train::lora::save_peft_adapter(&self.vs, dir, &lora, base_name, metadata)
    }
}

/// What adapters name as their base (`base_model_name_or_path`): the Hugging Face model
/// the bundled GGUF file was converted from.
pub const BASE_MODEL_NAME: &str = "HuggingFaceTB/SmolLM2-135M-Instruct";

impl VoltModule for SmolLm2 {
    type Batch = (Tensor, Tensor);
    type Prediction = Vec<f32>;

    fn var_store(&self) -> &nn::VarStore {
        &self.vs
    }

    fn training_step(&mut self, batch: &Self::Batch, ctx: &mut StepContext) -> volt_train::Result<Tensor> {
        let loss = self.model.loss(&batch.0, &batch.1, true).map_err(volt_train::Error::Data)?;
        ctx.log_with("train_loss", &loss, LogOptions::prog_bar());
        Ok(loss)
    }

    fn validation_step(&mut self, batch: &Self::Batch, ctx: &mut StepContext) -> volt_train::Result<()> {
        let loss = self.model.loss(&batch.0, &batch.1, false).map_err(volt_train::Error::Data)?;
        ctx.log_with("val_loss", &loss, LogOptions { sync_dist: true, ..LogOptions::prog_bar() });
        Ok(())
    }

    fn configure_optimizers(&self) -> OptimizerConfig {
        let c = &self.config;
        OptimizerConfig {
            optimizer: OptimizerSpec::adamw_with(c.lr, c.betas, c.weight_decay),
            lr_scheduler: None,
        }
    }

    fn saved_variables(&self) -> Saved {
        if self.config.lora.is_some() {
            Saved::Trainable
        } else {
            Saved::All
        }
    }

    fn hparams(&self) -> serde_json::Value {
        serde_json::json!({"config": self.config, "base": self.base})
    }

    fn on_save_checkpoint(&self) -> serde_json::Value {
        serde_json::json!({"base": self.base, "lora": self.config.lora})
    }

    /// Refuses a LoRA checkpoint made on another base: its adapters mean nothing here.
    fn on_load_checkpoint(&mut self, state: &serde_json::Value) -> volt_train::Result<()> {
        let Some(saved) = state.get("base").and_then(|b| serde_json::from_value::<BaseId>(b.clone()).ok())
        else {
            return Ok(());
        };
        let then = state.get("lora").and_then(|l| serde_json::from_value::<LoraSection>(l.clone()).ok());
        if let (Some(now), Some(then)) = (&self.config.lora, then) {
            // Dropout may change; the rank, scale and layers are what the adapters mean.
            for (field, was, is) in [
                ("r", then.r.to_string(), now.r.to_string()),
                ("alpha", then.alpha.to_string(), now.alpha.to_string()),
                ("targets", format!("{:?}", then.targets), format!("{:?}", now.targets)),
            ] {
                if was != is {
                    return Err(volt_train::Error::Config(format!(
                        "model.lora.{field} = {is}, but the checkpoint's adapters were trained with {was}"
                    )));
                }
            }
        }
        if self.config.lora.is_some() && saved.sha256 != self.base.sha256 {
            return Err(volt_train::Error::Config(format!(
                "the checkpoint's adapters were trained on base {} (sha256 {}), but this run's base is {} \
                 (sha256 {}): give that base with --model.gguf",
                saved.file, saved.sha256, self.base.file, self.base.sha256
            )));
        }
        Ok(())
    }
}
