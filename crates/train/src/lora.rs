//! LoRA (Hu et al., 2021), as PEFT and LitGPT do it: a frozen linear layer `W` plus a
//! trainable low-rank update, `y = x Wᵀ + b + (α/r) · dropout(x) Aᵀ Bᵀ`, with `A` (r × in)
//! Kaiming-uniform as `nn.Linear` initialises (bound 1/√in) and `B` (out × r) zero, so a
//! fresh adapter changes nothing. The base weight is held untrainable: it gets no
//! gradient and no optimizer state. Adapter tensors are named as PEFT names them
//! (`<layer>.lora_A.weight`, `<layer>.lora_B.weight`), so a saved adapter maps onto
//! PEFT's by name. Any model whose linear layers are built through [`LoraLinear`] gets it.
use crate::error::{Error, Result};
use std::collections::{BTreeSet, HashMap};
use std::path::Path;
use tch::{nn, Tensor};

/// PEFT's file of adapter tensors, in an adapter folder.
pub const ADAPTER_WEIGHTS: &str = "adapter_model.safetensors";
/// PEFT's file of the adapter's configuration, in an adapter folder.
pub const ADAPTER_CONFIG: &str = "adapter_config.json";
/// What PEFT's `PeftModel` puts before a base model's own tensor names.
pub const PEFT_PREFIX: &str = "base_model.model.";

/// What targets `all-linear` means: every linear layer the model offers (PEFT's
/// `"all-linear"`, which leaves out the output head; the model decides what it offers).
pub const ALL_LINEAR: &str = "all-linear";

/// A LoRA adapter's shape and which layers get one.
#[derive(Clone, Debug, PartialEq)]
pub struct LoraConfig {
    /// The rank `r` of the update (≥ 1).
    pub r: i64,
    /// `alpha`: the update is scaled by `alpha / r`.
    pub alpha: f64,
    /// Dropout on the adapter's input while training, in [0, 1).
    pub dropout: f64,
    /// Layers that get an adapter, by name or name suffix (`q_proj` matches
    /// `model.layers.0.self_attn.q_proj`), or [`ALL_LINEAR`].
    pub targets: Vec<String>,
}

impl Default for LoraConfig {
    /// LitGPT's defaults: r 8, alpha 16, dropout 0.05, on the attention's query and value.
    fn default() -> Self {
        LoraConfig { r: 8, alpha: 16.0, dropout: 0.05, targets: vec!["q_proj".into(), "v_proj".into()] }
    }
}

impl LoraConfig {
    /// The update's scale, `alpha / r`.
    pub fn scale(&self) -> f64 {
        self.alpha / self.r as f64
    }

    /// Checks the ranges, naming the bad field as `lora.<field>`.
    pub fn check(&self) -> Result<()> {
        let bad = |field: &str, value: String, why: &str| {
            Err(Error::Config(format!("lora.{field} = {value}: {why}")))
        };
        if self.r < 1 {
            return bad("r", self.r.to_string(), "the rank must be at least 1");
        }
        if !self.alpha.is_finite() || self.alpha <= 0.0 {
            return bad("alpha", self.alpha.to_string(), "must be a number above 0");
        }
        if !(0.0..1.0).contains(&self.dropout) {
            return bad("dropout", self.dropout.to_string(), "must be in [0, 1)");
        }
        if self.targets.is_empty() {
            return bad("targets", "[]".into(), "name at least one layer, or \"all-linear\"");
        }
        Ok(())
    }

    /// Which of a model's linear layers (`layers`, by full name) get an adapter. A target
    /// that matches none of them is an error that lists the names it could have been.
    pub fn select<'a>(&self, layers: &[&'a str]) -> Result<Vec<&'a str>> {
        self.check()?;
        if self.targets.iter().any(|t| t == ALL_LINEAR) {
            return Ok(layers.to_vec());
        }
        let matches = |layer: &str, target: &str| layer == target || layer.ends_with(&format!(".{target}"));
        if let Some(missing) = self.targets.iter().find(|t| !layers.iter().any(|l| matches(l, t))) {
            let mut short: Vec<&str> = layers.iter().map(|l| l.rsplit('.').next().unwrap_or(l)).collect();
            short.sort_unstable();
            short.dedup();
            return Err(Error::Config(format!(
                "lora.targets: no linear layer is named {missing:?}; this model's are {} (or \"{ALL_LINEAR}\")",
                short.join(", ")
            )));
        }
        Ok(layers.iter().copied().filter(|l| self.targets.iter().any(|t| matches(l, t))).collect())
    }
}

/// A linear layer, frozen, with an optional LoRA adapter.
#[derive(Debug)]
pub struct LoraLinear {
    weight: Tensor,
    bias: Option<Tensor>,
    adapter: Option<Adapter>,
}

#[derive(Debug)]
struct Adapter {
    a: Tensor,
    b: Tensor,
    scale: f64,
    dropout: f64,
}

impl LoraLinear {
    /// The linear layer `weight` (out × in) and `bias` kept under `path` as untrainable
    /// `weight` and `bias`, with an adapter (`lora_A.weight`, `lora_B.weight`) when
    /// `lora` is given.
    pub fn new(
        path: &nn::Path,
        weight: Tensor,
        bias: Option<Tensor>,
        lora: Option<&LoraConfig>,
    ) -> Result<Self> {
        let size = weight.size();
        let [out, inputs] = size[..] else {
            return Err(Error::Config(format!("a linear layer's weight is out × in, not {size:?}")));
        };
        let weight = path.add("weight", weight.set_requires_grad(false), false);
        let bias = bias.map(|b| path.add("bias", b.set_requires_grad(false), false));
        let adapter = match lora {
            None => None,
            Some(cfg) => {
                cfg.check()?;
                let bound = 1.0 / (inputs as f64).sqrt();
                let a =
                    Tensor::zeros([cfg.r, inputs], (weight.kind(), path.device())).uniform_(-bound, bound);
                let a = (path / "lora_A").add("weight", a, true);
                let b = (path / "lora_B").add(
                    "weight",
                    Tensor::zeros([out, cfg.r], (weight.kind(), path.device())),
                    true,
                );
                Some(Adapter { a, b, scale: cfg.scale(), dropout: cfg.dropout })
            }
        };
        Ok(LoraLinear { weight, bias, adapter })
    }

    /// The weight with the adapter folded in, `W + (α/r) · B A` (what a merged model
    /// holds); the base weight when there is no adapter.
    pub fn merged_weight(&self) -> Tensor {
        tch::no_grad(|| match &self.adapter {
            None => self.weight.copy(),
            Some(ad) => merge(&self.weight, &ad.a, &ad.b, ad.scale),
        })
    }

    /// The bias, if the layer has one.
    pub fn bias(&self) -> Option<&Tensor> {
        self.bias.as_ref()
    }
}

impl nn::ModuleT for LoraLinear {
    fn forward_t(&self, x: &Tensor, train: bool) -> Tensor {
        let base = x.linear(&self.weight, self.bias.as_ref());
        match &self.adapter {
            None => base,
            Some(ad) => {
                let x =
                    if train && ad.dropout > 0.0 { x.dropout(ad.dropout, true) } else { x.shallow_clone() };
                base + x.linear::<Tensor>(&ad.a, None).linear::<Tensor>(&ad.b, None) * ad.scale
            }
        }
    }
}

/// Writes the adapters of `vs` (its `lora_A`/`lora_B` tensors) into `dir` as PEFT's
/// files, so that `PeftModel.from_pretrained(base, dir)` loads them onto the model named
/// `base_model` — which must name its layers as `vs` does (Hugging Face's names). The
/// config's `target_modules` names the adapted layers as PEFT matches them (by suffix:
/// `q_proj` when every such layer has one, else each layer's full name); `metadata` goes into the tensors' file header (PEFT reads
/// none of it). Each file is written atomically, the configuration last.
pub fn save_peft_adapter(
    vs: &nn::VarStore,
    dir: &Path,
    config: &LoraConfig,
    base_model: &str,
    mut metadata: HashMap<String, String>,
) -> Result<()> {
    let mut tensors: Vec<(String, Tensor)> = vs
        .variables()
        .into_iter()
        .filter(|(name, _)| name.contains(".lora_A.") || name.contains(".lora_B."))
        .map(|(name, t)| (format!("{PEFT_PREFIX}{name}"), t.detach()))
        .collect();
    if tensors.is_empty() {
        return Err(Error::User("the model has no LoRA adapter to save".into()));
    }
    tensors.sort_by(|a, b| a.0.cmp(&b.0));
    // PEFT matches a target by name suffix: a short name (`q_proj`) where every layer of
    // that name has an adapter, else the adapted layers' full names.
    let adapted: BTreeSet<String> = tensors
        .iter()
        .filter_map(|(name, _)| name.strip_prefix(PEFT_PREFIX)?.split(".lora_").next().map(str::to_owned))
        .collect();
    let all = vs.variables();
    let short = |layer: &str| layer.rsplit('.').next().unwrap_or(layer).to_owned();
    let targets: BTreeSet<String> = adapted
        .iter()
        .map(|layer| {
            let name = short(layer);
            let everywhere = all
                .keys()
                .filter_map(|k| k.strip_suffix(".weight"))
                .filter(|l| !l.contains(".lora_") && short(l) == name)
                .all(|l| adapted.contains(l));
            if everywhere {
                name
            } else {
                layer.clone()
            }
        })
        .collect();
    std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
    metadata.insert("format".to_owned(), "pt".to_owned());
    crate::checkpoint::write_tensors(&dir.join(ADAPTER_WEIGHTS), &tensors, metadata)?;
    let alpha = if config.alpha.fract() == 0.0 {
        serde_json::json!(config.alpha as i64)
    } else {
        serde_json::json!(config.alpha)
    };
    let json = serde_json::json!({
        "peft_type": "LORA",
        "task_type": "CAUSAL_LM",
        "base_model_name_or_path": base_model,
        "r": config.r,
        "lora_alpha": alpha,
        "lora_dropout": config.dropout,
        "target_modules": targets,
        "bias": "none",
        "fan_in_fan_out": false,
        "inference_mode": true,
        "init_lora_weights": true,
        "modules_to_save": null,
        "use_rslora": false,
        "use_dora": false,
        "layers_to_transform": null,
        "layers_pattern": null,
        "rank_pattern": {},
        "alpha_pattern": {},
        "revision": null,
    });
    let text = serde_json::to_string_pretty(&json).map_err(|e| Error::User(e.to_string()))?;
    crate::checkpoint::write_atomic(&dir.join(ADAPTER_CONFIG), text.as_bytes())
}

/// A PEFT adapter folder read back: its configuration, its tensors under the model's own
/// names (`<layer>.lora_A.weight`), and its tensor file's metadata.
pub struct PeftAdapter {
    /// `r`, `lora_alpha`, `lora_dropout`, `target_modules`.
    pub config: LoraConfig,
    /// The adapter tensors, by the model's variable names.
    pub tensors: HashMap<String, Tensor>,
    /// The header metadata of `adapter_model.safetensors`.
    pub metadata: HashMap<String, String>,
}

/// Reads PEFT's adapter files from `dir`. What volt's LoRA does not do (DoRA, rsLoRA,
/// bias training, per-layer ranks, modules_to_save) is refused by its field name, never
/// silently dropped.
pub fn read_peft_adapter(dir: &Path) -> Result<PeftAdapter> {
    let config_path = dir.join(ADAPTER_CONFIG);
    let bad = |why: String| Error::checkpoint(&config_path, why);
    let text = std::fs::read_to_string(&config_path).map_err(|e| Error::io(&config_path, e))?;
    let json: serde_json::Value = serde_json::from_str(&text).map_err(|e| bad(e.to_string()))?;
    let field = |name: &str| json.get(name).filter(|v| !v.is_null());
    if let Some(kind) = field("peft_type").and_then(|v| v.as_str()).filter(|k| *k != "LORA") {
        return Err(bad(format!("peft_type = {kind:?}: volt reads LoRA adapters only")));
    }
    for (name, fine) in [
        ("use_dora", serde_json::json!(false)),
        ("use_rslora", serde_json::json!(false)),
        ("fan_in_fan_out", serde_json::json!(false)),
        ("bias", serde_json::json!("none")),
    ] {
        if let Some(v) = field(name).filter(|v| **v != fine) {
            return Err(bad(format!("{name} = {v}: volt's LoRA supports only {fine}")));
        }
    }
    for name in ["modules_to_save", "layers_to_transform", "rank_pattern", "alpha_pattern"] {
        let empty = |v: &serde_json::Value| v.as_object().is_some_and(|o| o.is_empty());
        if let Some(v) = field(name).filter(|v| !empty(v)) {
            return Err(bad(format!("{name} = {v}: not supported by volt's LoRA")));
        }
    }
    let number =
        |name: &str| field(name).and_then(|v| v.as_f64()).ok_or_else(|| bad(format!("no number `{name}`")));
    let targets = match field("target_modules") {
        Some(serde_json::Value::String(s)) => vec![s.clone()],
        Some(serde_json::Value::Array(list)) => {
            list.iter().filter_map(|v| v.as_str().map(str::to_owned)).collect()
        }
        _ => return Err(bad("no `target_modules`".into())),
    };
    let config = LoraConfig {
        r: number("r")? as i64,
        alpha: number("lora_alpha")?,
        dropout: field("lora_dropout").and_then(|v| v.as_f64()).unwrap_or(0.0),
        targets,
    };
    config.check().map_err(|e| bad(e.to_string()))?;
    let (list, metadata) = crate::checkpoint::read_tensors(&dir.join(ADAPTER_WEIGHTS))?;
    let tensors = list
        .into_iter()
        .map(|(name, t)| {
            let name = name.strip_prefix(PEFT_PREFIX).unwrap_or(&name).replace(".default.", ".");
            (name, t)
        })
        .collect();
    Ok(PeftAdapter { config, tensors, metadata })
}

/// `W + scale · B A`: a weight with its adapter folded in.
fn merge(w: &Tensor, a: &Tensor, b: &Tensor, scale: f64) -> Tensor {
    w + b.matmul(a) * scale
}

/// Every variable of `vs` but the adapters, with each adapted layer's update folded into
/// its weight (`W + scale · B A`, what a merged model holds), sorted by name.
pub fn merged_tensors(vs: &nn::VarStore, scale: f64) -> Vec<(String, Tensor)> {
    let vars = vs.variables();
    let mut out: Vec<(String, Tensor)> = tch::no_grad(|| {
        vars.iter()
            .filter(|(name, _)| !name.contains(".lora_A.") && !name.contains(".lora_B."))
            .map(|(name, w)| {
                let layer = name.strip_suffix(".weight").unwrap_or(name);
                let (a, b) = (
                    vars.get(&format!("{layer}.lora_A.weight")),
                    vars.get(&format!("{layer}.lora_B.weight")),
                );
                let merged = match (a, b) {
                    (Some(a), Some(b)) => merge(w, a, b, scale),
                    _ => w.copy(),
                };
                (name.clone(), merged)
            })
            .collect()
    });
    out.sort_by(|a, b| a.0.cmp(&b.0));
    out
}
