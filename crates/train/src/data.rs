//! Datasets, samplers and the prefetching [`DataLoader`], grouped by a [`DataModule`].
use crate::error::{Error, Result};
use rand::seq::SliceRandom;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use std::sync::mpsc;
use std::sync::Arc;
use tch::{Device, Tensor};

/// A map-style dataset: a length and random access by index.
pub trait Dataset: Send + Sync + 'static {
    /// One sample.
    type Item: Send;
    /// Number of samples.
    fn len(&self) -> usize;
    /// Whether the dataset has no samples.
    fn is_empty(&self) -> bool {
        self.len() == 0
    }
    /// The sample at `index` (always `< len()`).
    fn get(&self, index: usize) -> Result<Self::Item>;
}

/// What a step receives: knows its size (for epoch means) and how to move to a device.
pub trait Batch: Send + 'static {
    /// Number of samples in the batch, used to weight epoch-level means.
    fn batch_size(&self) -> usize;
    /// The same batch on `device` (a no-op when it is already there).
    fn to_device(self, device: Device) -> Self;
}

impl Batch for Tensor {
    fn batch_size(&self) -> usize {
        self.size().first().copied().unwrap_or(1) as usize
    }
    fn to_device(self, device: Device) -> Self {
        if self.device() == device {
            self
        } else {
            self.to_device(device)
        }
    }
}

impl Batch for (Tensor, Tensor) {
    fn batch_size(&self) -> usize {
        self.0.batch_size()
    }
    fn to_device(self, device: Device) -> Self {
        (Batch::to_device(self.0, device), Batch::to_device(self.1, device))
    }
}

impl Batch for Vec<Tensor> {
    fn batch_size(&self) -> usize {
        self.first().map_or(0, Batch::batch_size)
    }
    fn to_device(self, device: Device) -> Self {
        self.into_iter().map(|t| Batch::to_device(t, device)).collect()
    }
}

/// The order in which one epoch visits a dataset, and this rank's share of it.
///
/// The order depends only on `(seed, epoch)`, so a resumed run sees the same batches,
/// and every rank of a data-parallel job computes the same permutation before taking
/// its disjoint shard (as PyTorch's `DistributedSampler` does).
#[derive(Clone, Debug, PartialEq)]
pub struct Sampler {
    /// Shuffle each epoch (deterministically from seed and epoch).
    pub shuffle: bool,
    /// Seed of the shuffle.
    pub seed: u64,
    /// This process's rank among `world_size` data-parallel ranks.
    pub rank: usize,
    /// Number of data-parallel ranks.
    pub world_size: usize,
    /// Drop the tail that does not divide evenly among ranks instead of padding it.
    pub drop_last: bool,
}

impl Default for Sampler {
    fn default() -> Self {
        Sampler { shuffle: false, seed: 0, rank: 0, world_size: 1, drop_last: false }
    }
}

impl Sampler {
    /// The dataset indices this rank visits in `epoch`, in order.
    pub fn indices(&self, len: usize, epoch: usize) -> Vec<usize> {
        let mut order: Vec<usize> = (0..len).collect();
        if self.shuffle {
            let mut rng = ChaCha8Rng::seed_from_u64(mix(self.seed, epoch as u64));
            order.shuffle(&mut rng);
        }
        let world = self.world_size.max(1);
        if world == 1 {
            return order;
        }
        let per_rank = if self.drop_last { len / world } else { len.div_ceil(world) };
        let total = per_rank * world;
        if total > order.len() && !order.is_empty() {
            let pad: Vec<usize> = order.iter().copied().cycle().take(total - len).collect();
            order.extend(pad);
        }
        order.truncate(total);
        order.into_iter().skip(self.rank).step_by(world).collect()
    }
}

/// The seed `seed_everything` set last (0 before any), which loaders without a seed of
/// their own shuffle with: Lightning's `PL_GLOBAL_SEED`.
static RUN_SEED: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

/// Records the run's seed for loaders made from now on.
pub(crate) fn set_run_seed(seed: u64) {
    RUN_SEED.store(seed, std::sync::atomic::Ordering::SeqCst);
}

fn run_seed() -> u64 {
    RUN_SEED.load(std::sync::atomic::Ordering::SeqCst)
}

/// Mixes a seed with a counter so that neighbouring epochs get unrelated streams.
pub(crate) fn mix(seed: u64, n: u64) -> u64 {
    let mut z = seed ^ n.wrapping_mul(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

type Fetch<B> = dyn Fn(&[usize]) -> Result<B> + Send + Sync;

/// Options of a [`DataLoader`], with PyTorch's names.
#[derive(Clone, Debug)]
pub struct LoaderOptions {
    /// Samples per batch.
    pub batch_size: usize,
    /// Shuffle every epoch.
    pub shuffle: bool,
    /// Drop the last incomplete batch.
    pub drop_last: bool,
    /// Seed of the shuffle; `None` follows the run's seed (`seed_everything`, the
    /// Trainer's `seed`, the command line's `--seed`), as Lightning's samplers do.
    pub seed: Option<u64>,
    /// Batches prepared ahead on a background thread (0: prepare on the caller's thread).
    pub prefetch: usize,
}

impl Default for LoaderOptions {
    fn default() -> Self {
        LoaderOptions { batch_size: 1, shuffle: false, drop_last: false, seed: None, prefetch: 2 }
    }
}

/// Batches a [`Dataset`] with a collate function, prefetching on a background thread.
pub struct DataLoader<B> {
    fetch: Arc<Fetch<B>>,
    dataset_len: usize,
    options: LoaderOptions,
    sampler: Sampler,
}

impl<B> Clone for DataLoader<B> {
    fn clone(&self) -> Self {
        DataLoader {
            fetch: Arc::clone(&self.fetch),
            dataset_len: self.dataset_len,
            options: self.options.clone(),
            sampler: self.sampler.clone(),
        }
    }
}

impl<B: Batch> DataLoader<B> {
    /// A loader over `dataset` whose batches `collate` builds from lists of samples.
    pub fn new<D, C>(dataset: D, collate: C, options: LoaderOptions) -> Result<Self>
    where
        D: Dataset,
        C: Fn(Vec<D::Item>) -> Result<B> + Send + Sync + 'static,
    {
        if options.batch_size == 0 {
            return Err(Error::Config("data.batch_size must be at least 1".into()));
        }
        let dataset_len = dataset.len();
        let dataset = Arc::new(dataset);
        let fetch = move |indices: &[usize]| -> Result<B> {
            let items = indices.iter().map(|&i| dataset.get(i)).collect::<Result<Vec<_>>>()?;
            collate(items)
        };
        let sampler = Sampler {
            shuffle: options.shuffle,
            seed: options.seed.unwrap_or_else(run_seed),
            ..Sampler::default()
        };
        Ok(DataLoader { fetch: Arc::new(fetch), dataset_len, options, sampler })
    }

    /// The loader's options.
    pub fn options(&self) -> &LoaderOptions {
        &self.options
    }

    /// The sampler that orders each epoch.
    pub fn sampler(&self) -> &Sampler {
        &self.sampler
    }

    /// The same loader giving only rank `rank` of `world_size` its shard of each epoch.
    pub fn sharded(mut self, rank: usize, world_size: usize) -> Self {
        self.sampler.rank = rank;
        self.sampler.world_size = world_size;
        self.sampler.drop_last = self.options.drop_last;
        self
    }

    /// Number of batches in one epoch on this rank.
    pub fn len(&self) -> usize {
        let samples = self.sampler.indices(self.dataset_len, 0).len();
        if self.options.drop_last {
            samples / self.options.batch_size
        } else {
            samples.div_ceil(self.options.batch_size)
        }
    }

    /// Whether an epoch yields no batch at all.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The dataset indices of each batch of `epoch` on this rank, in order (what
    /// Lightning hands prediction writers as `batch_indices`).
    pub fn batch_indices(&self, epoch: usize) -> Vec<Vec<usize>> {
        let indices = self.sampler.indices(self.dataset_len, epoch);
        let bs = self.options.batch_size;
        let mut chunks: Vec<Vec<usize>> = indices.chunks(bs).map(<[usize]>::to_vec).collect();
        if self.options.drop_last && chunks.last().is_some_and(|c| c.len() < bs) {
            chunks.pop();
        }
        chunks
    }

    /// The batches of `epoch`, starting after the first `skip` of them (for mid-epoch resume).
    pub fn epoch(&self, epoch: usize, skip: usize) -> Batches<B> {
        let chunks: Vec<Vec<usize>> = self.batch_indices(epoch).into_iter().skip(skip).collect();
        let remaining = chunks.len();
        let fetch = Arc::clone(&self.fetch);
        let source = if self.options.prefetch == 0 {
            Source::Inline { fetch, chunks: chunks.into_iter() }
        } else {
            let (tx, rx) = mpsc::sync_channel(self.options.prefetch);
            std::thread::Builder::new()
                .name("volt-dataloader".into())
                .spawn(move || {
                    for chunk in chunks {
                        // A closed channel means the consumer stopped early: nothing to do.
                        if tx.send(fetch(&chunk)).is_err() {
                            break;
                        }
                    }
                })
                .map_or_else(
                    |e| Source::Failed(Some(Error::Data(format!("cannot start loader thread: {e}")))),
                    |_| Source::Prefetch(rx),
                )
        };
        Batches { source, remaining }
    }
}

enum Source<B> {
    Inline { fetch: Arc<Fetch<B>>, chunks: std::vec::IntoIter<Vec<usize>> },
    Prefetch(mpsc::Receiver<Result<B>>),
    Failed(Option<Error>),
}

/// The batches of one epoch, in order.
pub struct Batches<B> {
    source: Source<B>,
    remaining: usize,
}

impl<B> Batches<B> {
    /// Batches still to come.
    pub fn remaining(&self) -> usize {
        self.remaining
    }
}

impl<B> Iterator for Batches<B> {
    type Item = Result<B>;
    fn next(&mut self) -> Option<Self::Item> {
        let next = match &mut self.source {
            Source::Inline { fetch, chunks } => chunks.next().map(|c| fetch(&c)),
            Source::Prefetch(rx) => rx.recv().ok(),
            Source::Failed(e) => e.take().map(Err),
        };
        if next.is_some() {
            self.remaining = self.remaining.saturating_sub(1);
        }
        next
    }
}

/// The loaders of one experiment, like Lightning's `LightningDataModule`.
pub trait DataModule {
    /// The batch type every loader yields.
    type Batch: Batch;
    /// Training batches (required by `fit`).
    fn train_dataloader(&self) -> Option<DataLoader<Self::Batch>> {
        None
    }
    /// Validation batches.
    fn val_dataloader(&self) -> Option<DataLoader<Self::Batch>> {
        None
    }
    /// Test batches.
    fn test_dataloader(&self) -> Option<DataLoader<Self::Batch>> {
        None
    }
    /// Prediction batches.
    fn predict_dataloader(&self) -> Option<DataLoader<Self::Batch>> {
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shuffle_depends_only_on_seed_and_epoch() {
        let s = Sampler { shuffle: true, seed: 7, ..Sampler::default() };
        assert_eq!(s.indices(100, 3), s.indices(100, 3));
        assert_ne!(s.indices(100, 3), s.indices(100, 4));
        let mut sorted = s.indices(100, 3);
        sorted.sort_unstable();
        assert_eq!(sorted, (0..100).collect::<Vec<_>>());
    }

    #[test]
    fn shards_are_disjoint_and_cover_the_epoch() {
        let base = Sampler { shuffle: true, seed: 1, world_size: 3, drop_last: true, ..Sampler::default() };
        let shards: Vec<Vec<usize>> =
            (0..3).map(|rank| Sampler { rank, ..base.clone() }.indices(10, 2)).collect();
        let mut all: Vec<usize> = shards.concat();
        assert!(shards.iter().all(|s| s.len() == 3));
        all.sort_unstable();
        all.dedup();
        assert_eq!(all.len(), 9, "drop_last keeps 9 distinct samples of 10");
    }

    #[test]
    fn every_sample_goes_to_exactly_one_rank_and_the_seed_fixes_the_shards() {
        // The digits training split under 2 ranks: 1437 samples, one padded.
        for epoch in 0..3 {
            let shard = |rank, seed| {
                Sampler { shuffle: true, seed, rank, world_size: 2, drop_last: false }.indices(1437, epoch)
            };
            let (a, b) = (shard(0, 5), shard(1, 5));
            assert_eq!((a.len(), b.len()), (719, 719));
            let mut seen = vec![0u32; 1437];
            for &i in a.iter().chain(&b) {
                seen[i] += 1;
            }
            // Padding repeats exactly one sample (the first of the epoch's order), as
            // PyTorch's DistributedSampler does; every other sample is seen once.
            assert_eq!(seen.iter().filter(|&&n| n == 1).count(), 1436);
            assert_eq!(seen.iter().filter(|&&n| n == 2).count(), 1);
            assert_eq!(seen[a[0]], 2, "the padded sample is the first of the order");
            // Without the padded tail, the two shards are disjoint.
            let (a_head, b_head) = (&a[..718], &b[..718]);
            assert!(a_head.iter().all(|i| !b_head.contains(i)));
            assert_eq!((shard(0, 5), shard(1, 5)), (a.clone(), b.clone()), "same seed, same shards");
            assert_ne!(shard(0, 6), a, "another seed, another order");
        }
    }
}
