//! What the engine needs of a model: caches for its sequences, and one batched forward
//! pass over several of them. The tch float path ([`crate::Llama`]) and the quantized
//! CPU path ([`crate::QuantLlama`]) both implement it.
use crate::error::{LlmError, Result};
use tch::{Device, Kind, Tensor};

/// One sequence's part of a batched forward pass.
pub struct Step<'a, C> {
    /// The tokens that follow what `cache` holds.
    pub tokens: &'a [u32],
    /// The sequence's cache; it grows by `tokens`.
    pub cache: &'a mut C,
    /// Return the logits of every new position (a prompt's, for echo and logprobs),
    /// not only the last.
    pub all_logits: bool,
}

/// A causal language model the engine runs.
pub trait Model: Send + 'static {
    /// The keys and values one sequence has cached.
    type Cache: Send;
    /// An empty cache.
    fn new_cache(&self) -> Self::Cache;
    /// Positions `cache` holds.
    fn cached(cache: &Self::Cache) -> usize;
    /// Longest sequence the model takes.
    fn context_len(&self) -> usize;
    /// Bytes one cached position takes (all layers' keys and values).
    fn bytes_per_position(&self) -> usize;
    /// One forward pass over `seqs`; each one's logits, one row over the vocabulary per
    /// position it asked for (every new one with `all_logits`, else the last).
    fn step(&self, seqs: &mut [Step<'_, Self::Cache>]) -> Result<Vec<Vec<Vec<f32>>>>;
    /// Whether a generation may run past the context, the model then reading only its
    /// last positions (nanoGPT's crop, llama.cpp's context shift): the engine re-reads
    /// the last half of the context into a fresh cache. Otherwise the context ends it.
    fn slides(&self) -> bool {
        false
    }
}

/// Refuses a step with no tokens, past the context, or with a token outside the
/// vocabulary, before any work is done.
pub fn check_step(tokens: &[u32], cached: usize, context: usize, vocab: usize) -> Result<()> {
    let n = tokens.len();
    if n == 0 || cached + n > context {
        return Err(LlmError::input(format!(
            "{} positions are past the model's context of {context}",
            cached + n
        )));
    }
    if let Some(bad) = tokens.iter().find(|&&t| t as usize >= vocab) {
        return Err(LlmError::input(format!("token {bad} is not below the vocabulary's {vocab}")));
    }
    Ok(())
}

/// Where each sequence's new tokens sit among a step's rows: (first row, how many).
pub fn row_spans<C>(seqs: &[Step<'_, C>]) -> Vec<(i64, i64)> {
    seqs.iter()
        .scan(0i64, |at, s| {
            let span = (*at, s.tokens.len() as i64);
            *at += span.1;
            Some(span)
        })
        .collect()
}

/// Each sequence's attention mask over its `cached` positions and its new ones: none for
/// a single new position (it sees everything before it), else causal among the new ones.
pub fn chunk_masks<C>(
    seqs: &[Step<'_, C>],
    cached: impl Fn(&C) -> usize,
    device: Device,
) -> Vec<Option<Tensor>> {
    seqs.iter()
        .map(|s| {
            let (n, start) = (s.tokens.len() as i64, cached(s.cache) as i64);
            (n > 1).then(|| Tensor::ones([n, start + n], (Kind::Bool, device)).tril(start))
        })
        .collect()
}

/// The rows whose logits a step returns: every new one of a sequence that asks for
/// `all_logits`, else its last (the head is the largest matrix: it runs on these alone).
pub fn wanted_rows<C>(seqs: &[Step<'_, C>], spans: &[(i64, i64)]) -> Vec<i64> {
    seqs.iter()
        .zip(spans)
        .flat_map(|(s, &(at, n))| if s.all_logits { at..at + n } else { at + n - 1..at + n })
        .collect()
}

/// The logits of [`wanted_rows`] (`[rows, vocab]`), split back into each sequence's.
pub fn split_logits<C>(seqs: &[Step<'_, C>], logits: &Tensor) -> Vec<Tensor> {
    let mut at = 0;
    seqs.iter()
        .map(|s| {
            let n = if s.all_logits { s.tokens.len() as i64 } else { 1 };
            let out = logits.narrow(0, at, n);
            at += n;
            out
        })
        .collect()
}
