//! Choosing the next token from a row of logits: OpenAI's presence and frequency
//! penalties, then greedy at temperature 0, otherwise temperature, top-k and top-p
//! (nucleus) sampling with a per-request seeded generator; and the log-probabilities
//! OpenAI's `logprobs` reports (of the model's own distribution, before penalties, as
//! vLLM reports them).
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use std::collections::HashMap;

/// How one request samples.
#[derive(Clone, Debug, PartialEq)]
pub struct Sampling {
    /// 0 picks the most likely token (greedy).
    pub temperature: f64,
    /// Keep the smallest set of tokens whose probability reaches this (1 keeps all).
    pub top_p: f64,
    /// Keep this many most likely tokens (0 keeps all).
    pub top_k: usize,
    /// Seed of this request's generator (random when absent).
    pub seed: Option<u64>,
    /// Subtracted once from the logit of every token generated so far (OpenAI's
    /// `presence_penalty`).
    pub presence_penalty: f64,
    /// Subtracted from a token's logit once per time it was generated so far (OpenAI's
    /// `frequency_penalty`).
    pub frequency_penalty: f64,
}

impl Default for Sampling {
    fn default() -> Self {
        Sampling {
            temperature: 1.0,
            top_p: 1.0,
            top_k: 0,
            seed: None,
            presence_penalty: 0.0,
            frequency_penalty: 0.0,
        }
    }
}

/// A request's sampler: its settings, its own generator, and how often it drew each
/// token (for the penalties).
pub struct Sampler {
    settings: Sampling,
    rng: ChaCha8Rng,
    counts: HashMap<u32, u32>,
}

impl Sampler {
    /// A sampler for `settings`.
    pub fn new(settings: Sampling) -> Self {
        let rng = match settings.seed {
            Some(s) => ChaCha8Rng::seed_from_u64(s),
            None => ChaCha8Rng::from_entropy(),
        };
        Sampler { settings, rng, counts: HashMap::new() }
    }

    /// The next token for `logits` (one row over the vocabulary), counted for the
    /// penalties of the draws after it.
    pub fn sample(&mut self, logits: &[f32]) -> u32 {
        let s = &self.settings;
        let id = if self.counts.is_empty() || (s.presence_penalty == 0.0 && s.frequency_penalty == 0.0) {
            self.draw(logits)
        } else {
            let mut penalised = logits.to_vec();
            apply_penalties(&mut penalised, &self.counts, s.presence_penalty, s.frequency_penalty);
            self.draw(&penalised)
        };
        *self.counts.entry(id).or_insert(0) += 1;
        id
    }

    fn draw(&mut self, logits: &[f32]) -> u32 {
        let s = &self.settings;
        if s.temperature <= 0.0 || s.top_k == 1 {
            return argmax(logits);
        }
        let mut order: Vec<u32> = (0..logits.len() as u32).collect();
        // Most likely first; ties by id so that the draw depends only on the logits.
        order.sort_unstable_by(|&a, &b| logits[b as usize].total_cmp(&logits[a as usize]).then(a.cmp(&b)));
        if s.top_k > 0 {
            order.truncate(s.top_k);
        }
        let top = f64::from(logits[order[0] as usize]);
        let weights: Vec<f64> =
            order.iter().map(|&i| ((f64::from(logits[i as usize]) - top) / s.temperature).exp()).collect();
        let total: f64 = weights.iter().sum();
        let mut kept = weights.len();
        if s.top_p < 1.0 {
            let mut mass = 0.0;
            for (n, w) in weights.iter().enumerate() {
                mass += w / total;
                if mass >= s.top_p {
                    kept = n + 1;
                    break;
                }
            }
        }
        let kept_total: f64 = weights[..kept].iter().sum();
        let mut draw = self.rng.gen::<f64>() * kept_total;
        for (i, w) in order.iter().zip(&weights[..kept]) {
            draw -= w;
            if draw <= 0.0 {
                return *i;
            }
        }
        order[kept - 1]
    }
}

/// OpenAI's presence and frequency penalties: `logit[j] -= count[j] × frequency +
/// (count[j] > 0) × presence`, where `count[j]` is how often `j` was generated so far.
pub fn apply_penalties(logits: &mut [f32], counts: &HashMap<u32, u32>, presence: f64, frequency: f64) {
    for (&id, &count) in counts {
        if let Some(logit) = logits.get_mut(id as usize) {
            *logit = (f64::from(*logit) - f64::from(count) * frequency - presence) as f32;
        }
    }
}

/// The most likely token (the lowest id among equals).
pub fn argmax(logits: &[f32]) -> u32 {
    let mut best = 0;
    for (i, &x) in logits.iter().enumerate() {
        if x > logits[best] {
            best = i;
        }
    }
    best as u32
}

/// Natural-log probabilities of `ids` under `logits`' softmax, and the `top` most likely
/// tokens with theirs.
pub fn log_probs(logits: &[f32], ids: &[u32], top: usize) -> (Vec<f64>, Vec<(u32, f64)>) {
    let max = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let lse = f64::from(max) + logits.iter().map(|&x| f64::from(x - max).exp()).sum::<f64>().ln();
    let of = |i: u32| f64::from(logits[i as usize]) - lse;
    let mut best: Vec<u32> = (0..logits.len() as u32).collect();
    let top = top.min(best.len());
    if top > 0 {
        best.select_nth_unstable_by(top - 1, |&a, &b| logits[b as usize].total_cmp(&logits[a as usize]));
    }
    best.truncate(top);
    best.sort_by(|&a, &b| logits[b as usize].total_cmp(&logits[a as usize]).then(a.cmp(&b)));
    (ids.iter().map(|&i| of(i)).collect(), best.into_iter().map(|i| (i, of(i))).collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn greedy_takes_the_largest_and_seeds_repeat_their_draws() {
        let logits = [0.1f32, 2.0, 1.9, -1.0];
        assert_eq!(Sampler::new(Sampling { temperature: 0.0, ..Sampling::default() }).sample(&logits), 1);
        let draws = |seed| {
            let mut s = Sampler::new(Sampling { seed: Some(seed), ..Sampling::default() });
            (0..50).map(|_| s.sample(&logits)).collect::<Vec<_>>()
        };
        assert_eq!(draws(7), draws(7));
        assert_ne!(draws(7), draws(8));
        let top1 = Sampler::new(Sampling { top_k: 1, seed: Some(1), ..Sampling::default() }).sample(&logits);
        assert_eq!(top1, 1);
        // top_p = 0.5 keeps only the most likely token here (its share is above a half).
        let mut s =
            Sampler::new(Sampling { top_p: 0.5, seed: Some(3), temperature: 0.1, ..Sampling::default() });
        assert!((0..20).all(|_| s.sample(&logits) == 1));
        // top_k = 2 never draws outside the two most likely.
        let mut s =
            Sampler::new(Sampling { top_k: 2, seed: Some(4), temperature: 5.0, ..Sampling::default() });
        assert!((0..200).all(|_| matches!(s.sample(&logits), 1 | 2)));
    }

    #[test]
    fn penalties_follow_openais_formula_and_steer_greedy_draws() {
        let mut logits = [1.0f32, 1.0, 1.0, 1.0];
        let counts = HashMap::from([(1, 2), (3, 1)]);
        apply_penalties(&mut logits, &counts, 0.5, 0.25);
        assert_eq!(logits, [1.0, 1.0 - 2.0 * 0.25 - 0.5, 1.0, 1.0 - 0.25 - 0.5]);
        // Greedy with a presence penalty larger than the gap never repeats a token
        // until every one was drawn; without it, always the largest.
        let logits = [3.0f32, 2.5, 2.0, 0.0];
        let greedy = Sampling { temperature: 0.0, ..Sampling::default() };
        let mut plain = Sampler::new(greedy.clone());
        assert_eq!((0..3).map(|_| plain.sample(&logits)).collect::<Vec<_>>(), [0, 0, 0]);
        let mut spread = Sampler::new(Sampling { presence_penalty: 2.0, ..greedy.clone() });
        assert_eq!((0..4).map(|_| spread.sample(&logits)).collect::<Vec<_>>(), [0, 1, 2, 0]);
        // A negative frequency penalty rewards repeats.
        let mut repeat = Sampler::new(Sampling { frequency_penalty: -2.0, ..greedy });
        assert_eq!((0..3).map(|_| repeat.sample(&[2.0f32, 2.5])).collect::<Vec<_>>(), [1, 1, 1]);
    }

    #[test]
    fn log_probabilities_are_the_log_softmax() {
        let logits = [1.0f32, 2.0, 3.0];
        let (lp, top) = log_probs(&logits, &[2, 0], 2);
        let lse = (1f64.exp() + 2f64.exp() + 3f64.exp()).ln();
        assert!((lp[0] - (3.0 - lse)).abs() < 1e-12 && (lp[1] - (1.0 - lse)).abs() < 1e-12);
        assert_eq!(top.iter().map(|t| t.0).collect::<Vec<_>>(), vec![2, 1]);
    }
}
