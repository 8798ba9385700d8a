//! scikit-learn's 8x8 digits (1,797 images), embedded in the binary, split 80/20.
use rand::seq::SliceRandom;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use std::io::Read;
use std::sync::{Arc, OnceLock};
use tch::Tensor;
use volt_train::{DataLoader, DataModule, Dataset, LoaderOptions};

/// Pixels per image.
pub const PIXELS: usize = 64;
/// Number of classes.
pub const CLASSES: usize = 10;
/// Largest pixel value in the raw data.
pub const MAX_PIXEL: f32 = 16.0;
/// Seed of the fixed train/validation split.
pub const SPLIT_SEED: u64 = 42;

static DIGITS_CSV_GZ: &[u8] = include_bytes!("../data/digits.csv.gz");

/// One image: 64 pixels scaled to [0, 1], and its label.
#[derive(Clone, Debug, PartialEq)]
pub struct Digit {
    /// Row-major 8x8 pixels in [0, 1].
    pub pixels: [f32; PIXELS],
    /// The digit, 0..=9.
    pub label: i64,
}

/// All 1,797 samples, parsed once.
pub fn all() -> Arc<Vec<Digit>> {
    static DATA: OnceLock<Arc<Vec<Digit>>> = OnceLock::new();
    Arc::clone(DATA.get_or_init(|| Arc::new(parse(DIGITS_CSV_GZ).expect("embedded digits.csv.gz is valid"))))
}

fn parse(gz: &[u8]) -> Result<Vec<Digit>, String> {
    let mut text = String::new();
    flate2::read::GzDecoder::new(gz).read_to_string(&mut text).map_err(|e| format!("digits.csv.gz: {e}"))?;
    text.lines()
        .filter(|l| !l.trim().is_empty())
        .enumerate()
        .map(|(i, line)| {
            let values: Vec<f32> = line
                .split(',')
                .map(|v| v.trim().parse::<f32>())
                .collect::<Result<_, _>>()
                .map_err(|e| format!("digits.csv.gz line {}: {e}", i + 1))?;
            if values.len() != PIXELS + 1 {
                return Err(format!("digits.csv.gz line {}: {} values, expected 65", i + 1, values.len()));
            }
            let mut pixels = [0f32; PIXELS];
            for (p, v) in pixels.iter_mut().zip(&values) {
                *p = v / MAX_PIXEL;
            }
            Ok(Digit { pixels, label: values[PIXELS] as i64 })
        })
        .collect()
}

/// Indices of the train and validation samples (80/20, fixed seed).
pub fn split() -> (Vec<usize>, Vec<usize>) {
    let n = all().len();
    let mut order: Vec<usize> = (0..n).collect();
    order.shuffle(&mut ChaCha8Rng::seed_from_u64(SPLIT_SEED));
    let n_train = n * 4 / 5;
    let val = order.split_off(n_train);
    (order, val)
}

/// A subset of the digits.
#[derive(Clone)]
pub struct DigitsSubset {
    data: Arc<Vec<Digit>>,
    indices: Vec<usize>,
}

impl DigitsSubset {
    /// The samples at `indices` of [`all`].
    pub fn new(indices: Vec<usize>) -> Self {
        DigitsSubset { data: all(), indices }
    }
}

impl Dataset for DigitsSubset {
    type Item = Digit;
    fn len(&self) -> usize {
        self.indices.len()
    }
    fn get(&self, index: usize) -> volt_train::Result<Digit> {
        let i = *self
            .indices
            .get(index)
            .ok_or_else(|| volt_train::Error::Data(format!("digit {index} out of range")))?;
        Ok(self.data[i].clone())
    }
}

/// Stacks digits into `(pixels [B, 64] f32, labels [B] i64)`.
pub fn collate(items: Vec<Digit>) -> volt_train::Result<(Tensor, Tensor)> {
    let mut pixels = Vec::with_capacity(items.len() * PIXELS);
    let mut labels = Vec::with_capacity(items.len());
    for d in &items {
        pixels.extend_from_slice(&d.pixels);
        labels.push(d.label);
    }
    let x = Tensor::f_from_slice(&pixels)?.f_view([items.len() as i64, PIXELS as i64])?;
    let y = Tensor::f_from_slice(&labels)?;
    Ok((x, y))
}

/// Options of [`DigitsData`].
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct DigitsDataConfig {
    /// Samples per batch.
    pub batch_size: usize,
    /// Seed of the per-epoch shuffle of the training set; default: the run's seed (`--seed`).
    pub seed: Option<u64>,
    /// Batches prefetched on a background thread.
    pub prefetch: usize,
}

impl Default for DigitsDataConfig {
    fn default() -> Self {
        DigitsDataConfig { batch_size: 32, seed: None, prefetch: 2 }
    }
}

/// The digits as a DataModule: shuffled training loader, ordered validation/test/predict loaders
/// (test and predict use the validation split).
#[derive(Clone, Debug, Default)]
pub struct DigitsData {
    config: DigitsDataConfig,
}

impl DigitsData {
    /// The digits with `config`; refuses a zero batch size.
    pub fn new(config: DigitsDataConfig) -> volt_train::Result<Self> {
        if config.batch_size == 0 {
            return Err(volt_train::Error::Config("data.batch_size must be at least 1".into()));
        }
        Ok(DigitsData { config })
    }

    /// The loader options.
    pub fn config(&self) -> &DigitsDataConfig {
        &self.config
    }

    fn loader(&self, indices: Vec<usize>, shuffle: bool) -> Option<DataLoader<(Tensor, Tensor)>> {
        let options = LoaderOptions {
            batch_size: self.config.batch_size,
            shuffle,
            drop_last: false,
            seed: self.config.seed,
            prefetch: self.config.prefetch,
        };
        // `new` checked the only option DataLoader::new can refuse.
        DataLoader::new(DigitsSubset::new(indices), collate, options).ok()
    }
}

impl DataModule for DigitsData {
    type Batch = (Tensor, Tensor);
    fn train_dataloader(&self) -> Option<DataLoader<Self::Batch>> {
        self.loader(split().0, true)
    }
    fn val_dataloader(&self) -> Option<DataLoader<Self::Batch>> {
        self.loader(split().1, false)
    }
    fn test_dataloader(&self) -> Option<DataLoader<Self::Batch>> {
        self.val_dataloader()
    }
    fn predict_dataloader(&self) -> Option<DataLoader<Self::Batch>> {
        self.val_dataloader()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn embedded_data_has_1797_labelled_images_in_range() {
        let d = all();
        assert_eq!(d.len(), 1797);
        assert!(d.iter().all(|s| (0..10).contains(&s.label)));
        assert!(d.iter().flat_map(|s| s.pixels).all(|p| (0.0..=1.0).contains(&p)));
        assert_eq!(d[0].label, 0);
        assert_eq!(d[0].pixels[2], 5.0 / 16.0);
    }

    #[test]
    fn split_is_80_20_disjoint_and_fixed() {
        let (train, val) = split();
        assert_eq!((train.len(), val.len()), (1437, 360));
        let mut all: Vec<usize> = train.iter().chain(&val).copied().collect();
        all.sort_unstable();
        assert_eq!(all, (0..1797).collect::<Vec<_>>());
        assert_eq!(split(), (train, val));
    }
}
