//! Instruction data for fine-tuning a chat model, as LitGPT's `JSON` data module reads
//! it: Alpaca-style records (`instruction`, optional `input`, `output`) or chat records
//! (`messages`: role and content, the last one the assistant's answer), from a JSON
//! array or JSON Lines. Each record goes through the model's chat template; only the
//! answer's tokens are learnt (`mask_prompt`, on by default), and batches are padded to
//! their longest member. With no file, HumanEval ([`crate::humaneval`]) is the data.
use crate::humaneval;
use rand::seq::SliceRandom;
use rand::SeedableRng;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use tch::Tensor;
use volt_formats::gguf::Gguf;
use volt_llm::{ChatTemplate, GgufTokenizer, LlamaConfig, Message};
use volt_train::{DataLoader, DataModule, Dataset, LoaderOptions};

pub use crate::smollm2::model::IGNORE_INDEX;

/// The `[data]` section.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct InstructDataConfig {
    /// A JSON or JSON Lines file of records; default HumanEval (bundled).
    pub json_path: Option<PathBuf>,
    /// The GGUF file whose tokenizer and chat template format the records; default the
    /// model's (`model.gguf`, else the bundled SmolLM2).
    pub tokenizer: Option<PathBuf>,
    /// Longest sample in tokens; longer ones are cut. Default: the model's context, and
    /// a record past it is an error.
    pub max_seq_length: Option<usize>,
    /// Learn only the answer's tokens, not the prompt's.
    pub mask_prompt: bool,
    /// Share of a file's records held back for validation (HumanEval has a fixed split).
    pub val_split_fraction: f64,
    /// Seed of that split.
    pub split_seed: u64,
    /// Samples per batch (LitGPT's micro-batch).
    pub batch_size: usize,
    /// Use only the first N records (a slice, for quick runs).
    pub max_records: Option<usize>,
    /// Seed of the training shuffle; default the run's (`--seed`).
    pub seed: Option<u64>,
    /// Batches prepared ahead on a background thread.
    pub prefetch: usize,
}

impl Default for InstructDataConfig {
    fn default() -> Self {
        InstructDataConfig {
            json_path: None,
            tokenizer: None,
            max_seq_length: None,
            mask_prompt: true,
            val_split_fraction: 0.05,
            split_seed: 42,
            batch_size: 4,
            max_records: None,
            seed: None,
            prefetch: 2,
        }
    }
}

/// One training example: a conversation whose last message is the answer to learn.
#[derive(Clone, Debug, PartialEq)]
pub struct Record {
    /// The prompt's messages (earlier turns included), then the answer.
    pub messages: Vec<Message>,
}

impl Record {
    /// An Alpaca record: the instruction (and its input, after a blank line) from the
    /// user, the output from the assistant.
    pub fn alpaca(instruction: &str, input: &str, output: &str) -> Self {
        let user =
            if input.is_empty() { instruction.to_owned() } else { format!("{instruction}\n\n{input}") };
        let msg = |role: &str, content: String| Message { role: role.into(), content };
        Record { messages: vec![msg("user", user), msg("assistant", output.to_owned())] }
    }

    fn from_json(v: &Value) -> Result<Self, String> {
        let obj = v.as_object().ok_or("is not an object")?;
        if let Some(messages) = obj.get("messages") {
            let list = messages.as_array().ok_or("`messages` is not a list")?;
            let messages = list
                .iter()
                .enumerate()
                .map(|(i, m)| {
                    let field = |f: &str| {
                        m.get(f)
                            .and_then(Value::as_str)
                            .map(str::to_owned)
                            .ok_or_else(|| format!("messages[{i}] has no string `{f}`"))
                    };
                    Ok(Message { role: field("role")?, content: field("content")? })
                })
                .collect::<Result<Vec<_>, String>>()?;
            if messages.last().is_none_or(|m| m.role != "assistant") {
                return Err("the last of `messages` must be the assistant's answer to learn".into());
            }
            return Ok(Record { messages });
        }
        let text = |f: &str, required: bool| -> Result<String, String> {
            match obj.get(f) {
                Some(Value::String(s)) => Ok(s.clone()),
                None | Some(Value::Null) if !required => Ok(String::new()),
                None => Err(format!(
                    "missing field `{f}` (an Alpaca record has instruction, input and output; a chat record has messages)"
                )),
                Some(other) => Err(format!("`{f}` is not a string: {other}")),
            }
        };
        Ok(Record::alpaca(&text("instruction", true)?, &text("input", false)?, &text("output", true)?))
    }
}

/// The records of a JSON array or JSON Lines file; errors name the file and the record.
pub fn read_records(path: &Path) -> Result<Vec<Record>, String> {
    let text =
        std::fs::read_to_string(path).map_err(|e| format!("data.json_path = {}: {e}", path.display()))?;
    let in_file = |what: String| format!("{}: {what}", path.display());
    let values: Vec<(String, Value)> = if text.trim_start().starts_with('[') {
        let list: Vec<Value> = serde_json::from_str(&text).map_err(|e| in_file(e.to_string()))?;
        list.into_iter().enumerate().map(|(i, v)| (format!("record {i}"), v)).collect()
    } else {
        text.lines()
            .enumerate()
            .filter(|(_, l)| !l.trim().is_empty())
            .map(|(i, l)| {
                let v = serde_json::from_str(l).map_err(|e| in_file(format!("line {}: {e}", i + 1)))?;
                Ok((format!("line {}", i + 1), v))
            })
            .collect::<Result<_, String>>()?
    };
    if values.is_empty() {
        return Err(in_file("holds no records".into()));
    }
    values.iter().map(|(at, v)| Record::from_json(v).map_err(|e| in_file(format!("{at}: {e}")))).collect()
}

/// Token ids and labels of one sample (labels [`IGNORE_INDEX`] where nothing is learnt).
pub type Sample = (Vec<i64>, Vec<i64>);

/// Turns records into samples with a model's tokenizer and chat template.
pub struct Encoder {
    tokenizer: GgufTokenizer,
    template: ChatTemplate,
    /// The model's context: no sample is longer.
    pub context: usize,
}

impl Encoder {
    /// The tokenizer, template and context of a GGUF file.
    pub fn from_gguf(path: &Path) -> Result<Self, String> {
        let bytes = std::fs::read(path).map_err(|e| format!("{}: {e}", path.display()))?;
        let in_file = |e: String| format!("{}: {e}", path.display());
        let g = Gguf::parse(&bytes).map_err(|e| in_file(e.to_string()))?;
        let tokenizer = GgufTokenizer::from_gguf(&g).map_err(|e| in_file(e.to_string()))?;
        let template = ChatTemplate::from_gguf_tokens(&g).map_err(|e| in_file(e.to_string()))?;
        let context = LlamaConfig::from_gguf(&g).map_err(|e| in_file(e.to_string()))?.context_len;
        Ok(Encoder { tokenizer, template, context })
    }

    /// The tokenizer.
    pub fn tokenizer(&self) -> &GgufTokenizer {
        &self.tokenizer
    }

    /// The id batches are padded with (the end-of-text token; never learnt).
    pub fn pad_id(&self) -> i64 {
        self.tokenizer.end_of_generation.first().map_or(0, |&i| i64::from(i))
    }

    /// The sample of `record`: the prompt is the template's rendering of every message
    /// but the last, with the assistant's turn opened; the answer is what the full
    /// conversation adds to it (the answer and its end-of-turn token). Cut at
    /// `max_len` when given (LitGPT cuts the end too); past the context without it is an
    /// error. `None` when the cut leaves no answer token to learn.
    pub fn encode(
        &self,
        record: &Record,
        mask_prompt: bool,
        max_len: Option<usize>,
    ) -> Result<Option<Sample>, String> {
        let n = record.messages.len();
        if n == 0 {
            return Err("the record has no messages".into());
        }
        let prompt = self.template.render(&record.messages[..n - 1], true).map_err(|e| e.to_string())?;
        let full = self.template.render(&record.messages, false).map_err(|e| e.to_string())?;
        let answer = full.strip_prefix(&prompt).ok_or(
            "the chat template does not render the conversation as its prompt followed by the answer",
        )?;
        let prompt_ids = self.tokenizer.encode(&prompt).map_err(|e| e.to_string())?;
        let mut answer_ids = self.tokenizer.encode(answer).map_err(|e| e.to_string())?;
        // The answer continues the prompt: no second bos.
        if self.tokenizer.add_bos
            && self.tokenizer.bos.is_some()
            && answer_ids.first() == self.tokenizer.bos.as_ref()
        {
            answer_ids.remove(0);
        }
        let total = prompt_ids.len() + answer_ids.len();
        let limit = match max_len {
            Some(m) => m,
            None if total > self.context => {
                return Err(format!(
                    "{total} tokens, past the model's context of {}; set data.max_seq_length to cut samples",
                    self.context
                ))
            }
            None => total,
        };
        let ids: Vec<i64> = prompt_ids.iter().chain(&answer_ids).map(|&t| i64::from(t)).take(limit).collect();
        let labels: Vec<i64> = ids
            .iter()
            .enumerate()
            .map(|(i, &t)| if mask_prompt && i < prompt_ids.len() { IGNORE_INDEX } else { t })
            .collect();
        // Position 0 is never predicted: a sample needs a learnt label after it.
        if labels.iter().skip(1).all(|&l| l == IGNORE_INDEX) {
            return Ok(None);
        }
        Ok(Some((ids, labels)))
    }
}

/// Samples in memory, as a [`Dataset`].
#[derive(Clone)]
pub struct Samples(pub Arc<Vec<Sample>>);

impl Dataset for Samples {
    type Item = Sample;
    fn len(&self) -> usize {
        self.0.len()
    }
    fn get(&self, index: usize) -> volt_train::Result<Sample> {
        self.0
            .get(index)
            .cloned()
            .ok_or_else(|| volt_train::Error::Data(format!("sample {index} is out of range")))
    }
}

/// Pads samples to the longest (ids with `pad`, labels with [`IGNORE_INDEX`]) into
/// `[B, T]` ids and labels.
pub fn collate(samples: Vec<Sample>, pad: i64) -> (Tensor, Tensor) {
    let t = samples.iter().map(|s| s.0.len()).max().unwrap_or(0);
    let b = samples.len() as i64;
    let mut ids = Vec::with_capacity(samples.len() * t);
    let mut labels = Vec::with_capacity(samples.len() * t);
    for (i, l) in samples {
        ids.extend(i.iter().copied().chain(std::iter::repeat(pad)).take(t));
        labels.extend(l.iter().copied().chain(std::iter::repeat(IGNORE_INDEX)).take(t));
    }
    (Tensor::from_slice(&ids).view([b, t as i64]), Tensor::from_slice(&labels).view([b, t as i64]))
}

/// A record and where it came from (file and record, or task id), for messages.
type Named = (String, Record);

/// Instruction data as a DataModule.
#[derive(Clone)]
pub struct InstructData {
    config: InstructDataConfig,
    train: Samples,
    val: Samples,
    pad: i64,
}

impl InstructData {
    /// Reads, splits and tokenizes the records `config` names. Errors name the field,
    /// the file and the record.
    pub fn new(config: InstructDataConfig) -> Result<Self, String> {
        if config.batch_size == 0 {
            return Err("data.batch_size must be at least 1".into());
        }
        if !(0.0..1.0).contains(&config.val_split_fraction) {
            return Err(format!(
                "data.val_split_fraction = {}: must be in [0, 1)",
                config.val_split_fraction
            ));
        }
        let tokenizer = crate::smollm2::base_file(config.tokenizer.as_deref())
            .map_err(|e| e.replace("model.gguf", "data.tokenizer"))?;
        let encoder = Encoder::from_gguf(&tokenizer)?;
        if let Some(m) = config.max_seq_length {
            if m < 2 || m > encoder.context {
                return Err(format!(
                    "data.max_seq_length = {m}: must be from 2 to the model's context of {}",
                    encoder.context
                ));
            }
        }
        let take = config.max_records.unwrap_or(usize::MAX);
        let (train, val): (Vec<Named>, Vec<Named>) = match &config.json_path {
            None => {
                let problems = humaneval::problems()?;
                let named = |p: &humaneval::Problem| {
                    (p.task_id.clone(), Record::alpaca(&p.prompt, "", &p.canonical_solution))
                };
                let slice = &problems[..take.min(problems.len())];
                (
                    slice.iter().filter(|p| !p.held_back()).map(named).collect(),
                    slice.iter().filter(|p| p.held_back()).map(named).collect(),
                )
            }
            Some(path) => {
                let mut records: Vec<Named> = read_records(path)?
                    .into_iter()
                    .enumerate()
                    .map(|(i, r)| (format!("{}: record {i}", path.display()), r))
                    .take(take)
                    .collect();
                let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(config.split_seed);
                records.shuffle(&mut rng);
                let n_val = (records.len() as f64 * config.val_split_fraction).ceil() as usize;
                let n_val = if records.len() < 2 { 0 } else { n_val.min(records.len() - 1) };
                let train = records.split_off(n_val);
                (train, records)
            }
        };
        // A record whose prompt alone fills max_seq_length has nothing to learn: it is
        // left out and counted, rather than trained on as an all-masked (NaN) sample.
        let mut dropped: Vec<String> = Vec::new();
        let mut encode = |set: Vec<Named>| -> Result<Samples, String> {
            let mut samples = Vec::with_capacity(set.len());
            for (at, r) in set {
                match encoder
                    .encode(&r, config.mask_prompt, config.max_seq_length)
                    .map_err(|e| format!("{at}: {e}"))?
                {
                    Some(s) => samples.push(s),
                    None => dropped.push(at),
                }
            }
            Ok(Samples(Arc::new(samples)))
        };
        let (train, val) = (encode(train)?, encode(val)?);
        let limit = config.max_seq_length.unwrap_or(encoder.context);
        if train.0.is_empty() {
            return Err(match dropped.first() {
                Some(first) => format!(
                    "no training record has an answer token within data.max_seq_length = {limit}: \
                     their prompts alone fill it (the first: {first}); raise it"
                ),
                None => "no training records (data.max_records too small?)".into(),
            });
        }
        if let Some(first) = dropped.first() {
            eprintln!(
                "data: {} record(s) left out: the prompt alone fills data.max_seq_length = {limit} (the first: {first})",
                dropped.len()
            );
        }
        Ok(InstructData { pad: encoder.pad_id(), config, train, val })
    }

    /// The training samples.
    pub fn train(&self) -> &[Sample] {
        &self.train.0
    }

    /// The validation samples.
    pub fn val(&self) -> &[Sample] {
        &self.val.0
    }

    fn loader(&self, samples: &Samples, shuffle: bool) -> Option<DataLoader<(Tensor, Tensor)>> {
        if samples.0.is_empty() {
            return None;
        }
        let options = LoaderOptions {
            batch_size: self.config.batch_size,
            shuffle,
            drop_last: false,
            seed: self.config.seed,
            prefetch: self.config.prefetch,
        };
        let pad = self.pad;
        DataLoader::new(samples.clone(), move |s| Ok(collate(s, pad)), options).ok()
    }
}

impl DataModule for InstructData {
    type Batch = (Tensor, Tensor);
    fn train_dataloader(&self) -> Option<DataLoader<Self::Batch>> {
        self.loader(&self.train, true)
    }
    fn val_dataloader(&self) -> Option<DataLoader<Self::Batch>> {
        self.loader(&self.val, false)
    }
}
