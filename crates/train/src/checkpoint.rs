//! One `.safetensors` file per checkpoint: model and optimizer tensors, and the
//! trainer's state as JSON in the header metadata. Written atomically.
use crate::error::{Error, Result};
use safetensors::tensor::{Dtype, View};
use std::borrow::Cow;
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{mpsc, Arc, Mutex};
use tch::{nn, Kind, Tensor};
use volt_formats::checkpoint as format;

pub use volt_formats::checkpoint::{
    OptimizerScalars, Progress, TrainingState, FORMAT_VERSION, LAST_NAME, METADATA_KEY, MODEL_PREFIX,
    OPTIMIZER_PREFIX,
};

/// A checkpoint in memory.
pub struct Checkpoint {
    /// Named tensors, prefixed with [`MODEL_PREFIX`] or [`OPTIMIZER_PREFIX`].
    pub tensors: Vec<(String, Tensor)>,
    /// The trainer's state.
    pub state: TrainingState,
}

struct Bytes {
    dtype: Dtype,
    shape: Vec<usize>,
    data: Vec<u8>,
}

impl View for &Bytes {
    fn dtype(&self) -> Dtype {
        self.dtype
    }
    fn shape(&self) -> &[usize] {
        &self.shape
    }
    fn data(&self) -> Cow<'_, [u8]> {
        Cow::Borrowed(&self.data)
    }
    fn data_len(&self) -> usize {
        self.data.len()
    }
}

/// libtorch's element types as safetensors names them (tch's own conversion is for the
/// older safetensors it depends on).
const DTYPES: [(Kind, Dtype); 11] = [
    (Kind::Bool, Dtype::BOOL),
    (Kind::Uint8, Dtype::U8),
    (Kind::Int8, Dtype::I8),
    (Kind::Int16, Dtype::I16),
    (Kind::Int, Dtype::I32),
    (Kind::Int64, Dtype::I64),
    (Kind::Half, Dtype::F16),
    (Kind::BFloat16, Dtype::BF16),
    (Kind::Float, Dtype::F32),
    (Kind::Double, Dtype::F64),
    (Kind::Float8e4m3fn, Dtype::F8_E4M3),
];

fn dtype_of(kind: Kind) -> Option<Dtype> {
    DTYPES.iter().find(|(k, _)| *k == kind).map(|(_, d)| *d)
}

fn kind_of(dtype: Dtype) -> Option<Kind> {
    DTYPES.iter().find(|(_, d)| *d == dtype).map(|(k, _)| *k)
}

fn to_bytes(name: &str, t: &Tensor) -> Result<Bytes> {
    let t = t.f_to_device(tch::Device::Cpu)?.f_contiguous()?;
    let dtype = dtype_of(t.kind())
        .ok_or_else(|| Error::User(format!("tensor {name}: {:?} has no safetensors dtype", t.kind())))?;
    let shape = t.size().iter().map(|&d| d as usize).collect();
    let numel = t.numel();
    let mut data = vec![0u8; numel * t.kind().elt_size_in_bytes()];
    t.f_copy_data_u8(&mut data, numel)?;
    Ok(Bytes { dtype, shape, data })
}

impl Checkpoint {
    /// Writes the checkpoint to `path` atomically: a temporary file in the same folder,
    /// fsynced, then renamed over `path` (and the folder fsynced), so a crash at any
    /// moment leaves either the old file or the new one, never a torn one.
    pub fn save(&self, path: &Path) -> Result<()> {
        write_atomic(path, &self.to_bytes(path)?)
    }

    /// The file's bytes; `path` only names the file in errors.
    pub fn to_bytes(&self, path: &Path) -> Result<Vec<u8>> {
        let bytes =
            self.tensors.iter().map(|(n, t)| Ok((n.clone(), to_bytes(n, t)?))).collect::<Result<Vec<_>>>()?;
        let views: Vec<(&str, &Bytes)> = bytes.iter().map(|(n, b)| (n.as_str(), b)).collect();
        format::serialize(views, &self.state).map_err(|e| Error::checkpoint(path, e.to_string()))
    }

    /// Reads a checkpoint, with errors that name the file.
    pub fn load(path: &Path) -> Result<Self> {
        let buffer = std::fs::read(path).map_err(|e| read_error(path, e))?;
        let (state, st) = format::parse(&buffer).map_err(|e| Error::checkpoint(path, e.to_string()))?;
        Ok(Checkpoint { tensors: tensors_of(&st, path)?, state })
    }

    /// Reads only a checkpoint's trainer state: the file's header, not its tensors.
    pub fn read_state(path: &Path) -> Result<TrainingState> {
        let mut file = std::fs::File::open(path).map_err(|e| read_error(path, e))?;
        format::read_state(&mut file).map_err(|e| Error::checkpoint(path, e.to_string()))
    }

    /// The tensors under `prefix`, with the prefix removed.
    pub fn section(&self, prefix: &str) -> HashMap<String, Tensor> {
        self.tensors
            .iter()
            .filter_map(|(n, t)| n.strip_prefix(prefix).map(|k| (k.to_owned(), t.shallow_clone())))
            .collect()
    }
}

fn read_error(path: &Path, e: std::io::Error) -> Error {
    let what = if e.kind() == std::io::ErrorKind::NotFound {
        "file not found".to_owned()
    } else {
        format!("cannot read: {e}")
    };
    Error::checkpoint(path, what)
}

/// Which of a model's variables a checkpoint holds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Saved {
    /// Every variable (Lightning's `state_dict`).
    All,
    /// Only the trainable ones: a frozen base (LoRA's) is referenced, not copied.
    Trainable,
}

impl Saved {
    fn keeps(self, t: &Tensor) -> bool {
        self == Saved::All || t.requires_grad()
    }
}

/// Model tensors of `vs`, named for a checkpoint.
pub fn model_tensors(vs: &nn::VarStore) -> Vec<(String, Tensor)> {
    model_tensors_of(vs, Saved::All)
}

/// The model tensors of `vs` that `saved` keeps, named for a checkpoint.
pub fn model_tensors_of(vs: &nn::VarStore, saved: Saved) -> Vec<(String, Tensor)> {
    let mut v: Vec<(String, Tensor)> = vs
        .variables()
        .into_iter()
        .filter(|(_, t)| saved.keeps(t))
        .map(|(n, t)| (format!("{MODEL_PREFIX}{n}"), t))
        .collect();
    v.sort_by(|a, b| a.0.cmp(&b.0));
    v
}

/// Copies a checkpoint's model tensors into `vs`; on any mismatch nothing is copied and
/// the error lists every missing, unexpected and mis-shaped tensor.
pub fn restore_model(vs: &nn::VarStore, ckpt: &Checkpoint, path: &Path) -> Result<()> {
    restore_model_of(vs, ckpt, path, Saved::All)
}

/// [`restore_model`] for a checkpoint that holds the variables `saved` keeps.
pub fn restore_model_of(vs: &nn::VarStore, ckpt: &Checkpoint, path: &Path, saved: Saved) -> Result<()> {
    let saved_tensors = ckpt.section(MODEL_PREFIX);
    let vars: HashMap<String, Tensor> = vs.variables().into_iter().filter(|(_, t)| saved.keeps(t)).collect();
    let mut problems = Vec::new();
    let mut names: Vec<&String> = vars.keys().collect();
    names.sort();
    for name in &names {
        match saved_tensors.get(*name) {
            None => problems.push(format!("  missing in checkpoint: {name} {:?}", vars[*name].size())),
            Some(t) if t.size() != vars[*name].size() => problems.push(format!(
                "  shape mismatch: {name}: checkpoint {:?}, model {:?}",
                t.size(),
                vars[*name].size()
            )),
            Some(_) => {}
        }
    }
    let frozen: Vec<String> = match saved {
        Saved::All => Vec::new(),
        Saved::Trainable => {
            vs.variables().into_iter().filter(|(_, t)| !t.requires_grad()).map(|(n, _)| n).collect()
        }
    };
    let mut extra: Vec<(&String, &Tensor)> =
        saved_tensors.iter().filter(|(n, _)| !vars.contains_key(*n)).collect();
    extra.sort_by(|a, b| a.0.cmp(b.0));
    for (name, t) in extra {
        if frozen.contains(name) {
            problems.push(format!("  frozen in this model, not restored from checkpoints: {name} (a full fine-tuning checkpoint?)"));
        } else {
            problems.push(format!("  not in model: {name} {:?}", t.size()));
        }
    }
    if !problems.is_empty() {
        return Err(Error::CheckpointMismatch { path: path.to_owned(), details: problems.join("\n") });
    }
    tch::no_grad(|| -> Result<()> {
        for (name, mut var) in vars {
            var.f_copy_(&saved_tensors[&name])?;
        }
        Ok(())
    })
}

/// Every tensor of a safetensors file, sorted by name; `path` names the file in errors.
fn tensors_of(st: &safetensors::SafeTensors<'_>, path: &Path) -> Result<Vec<(String, Tensor)>> {
    let mut tensors = Vec::new();
    for (name, view) in st.tensors() {
        let kind = kind_of(view.dtype()).ok_or_else(|| {
            Error::checkpoint(path, format!("tensor {name}: dtype {:?} is not supported", view.dtype()))
        })?;
        let size: Vec<i64> = view.shape().iter().map(|&d| d as i64).collect();
        tensors.push((name, Tensor::f_from_data_size(view.data(), &size, kind)?));
    }
    tensors.sort_by(|a, b| a.0.cmp(&b.0));
    Ok(tensors)
}

/// Named tensors and a file header's metadata.
pub type TensorsAndMetadata = (Vec<(String, Tensor)>, HashMap<String, String>);

/// A plain safetensors file (one other programs wrote): its tensors, sorted by name, and
/// its header's metadata.
pub fn read_tensors(path: &Path) -> Result<TensorsAndMetadata> {
    let buffer = std::fs::read(path).map_err(|e| read_error(path, e))?;
    let bad =
        |e: safetensors::SafeTensorError| Error::checkpoint(path, format!("not a safetensors file: {e}"));
    let (_, header) = safetensors::SafeTensors::read_metadata(&buffer).map_err(bad)?;
    let metadata = header.metadata().clone().unwrap_or_default();
    let st = safetensors::SafeTensors::deserialize(&buffer).map_err(bad)?;
    Ok((tensors_of(&st, path)?, metadata))
}

/// Writes `tensors` as a plain safetensors file (no trainer state; `metadata` in the
/// header), atomically: what other programs load, such as PEFT's adapter files.
pub fn write_tensors(
    path: &Path,
    tensors: &[(String, Tensor)],
    metadata: HashMap<String, String>,
) -> Result<()> {
    let bytes = tensors.iter().map(|(n, t)| Ok((n.clone(), to_bytes(n, t)?))).collect::<Result<Vec<_>>>()?;
    let views: Vec<(&str, &Bytes)> = bytes.iter().map(|(n, b)| (n.as_str(), b)).collect();
    let data = safetensors::tensor::serialize(views, Some(metadata))
        .map_err(|e| Error::checkpoint(path, e.to_string()))?;
    write_atomic(path, &data)
}

/// Writes `bytes` to `path` atomically ([`volt_formats::atomic::write_atomic`]).
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    volt_formats::atomic::write_atomic(path, bytes).map_err(|e| Error::io(path, e))
}

enum WriteJob {
    Write(PathBuf, Arc<Vec<u8>>),
    Remove(PathBuf),
    Flush(mpsc::SyncSender<()>),
}

/// Writes checkpoints on a background thread, so that fsync does not stall training.
///
/// The tensors are copied when `save` is called (a consistent snapshot); writes and
/// removals happen in call order, each write atomic. Errors come back from the next
/// `save`, `remove` or `flush`. At most two snapshots wait in the queue.
pub struct CheckpointWriter {
    tx: Option<mpsc::SyncSender<WriteJob>>,
    thread: Option<std::thread::JoinHandle<()>>,
    errors: Arc<Mutex<Vec<Error>>>,
}

impl Default for CheckpointWriter {
    fn default() -> Self {
        Self::new()
    }
}

impl CheckpointWriter {
    /// Starts the writer thread.
    pub fn new() -> Self {
        let (tx, rx) = mpsc::sync_channel::<WriteJob>(2);
        let errors: Arc<Mutex<Vec<Error>>> = Arc::default();
        let sink = Arc::clone(&errors);
        let thread = std::thread::Builder::new()
            .name("volt-checkpoint-writer".into())
            .spawn(move || {
                for job in rx {
                    let result = match job {
                        WriteJob::Write(path, bytes) => write_atomic(&path, &bytes),
                        WriteJob::Remove(path) => match std::fs::remove_file(&path) {
                            Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(Error::io(&path, e)),
                            _ => Ok(()),
                        },
                        WriteJob::Flush(done) => {
                            let _ = done.send(());
                            Ok(())
                        }
                    };
                    if let Err(e) = result {
                        sink.lock().unwrap_or_else(|p| p.into_inner()).push(e);
                    }
                }
            })
            .ok();
        CheckpointWriter { tx: thread.as_ref().map(|_| tx), thread, errors }
    }

    fn take_error(&self) -> Result<()> {
        let first = self.errors.lock().unwrap_or_else(|p| p.into_inner()).drain(..).next();
        first.map_or(Ok(()), Err)
    }

    fn send(&self, job: WriteJob) -> Result<()> {
        self.take_error()?;
        match &self.tx {
            Some(tx) => tx.send(job).map_err(|_| Error::User("the checkpoint writer thread stopped".into())),
            // No thread could be started: do the work inline.
            None => match job {
                WriteJob::Write(path, bytes) => write_atomic(&path, &bytes),
                WriteJob::Remove(path) => std::fs::remove_file(&path).or_else(|e| {
                    if e.kind() == std::io::ErrorKind::NotFound {
                        Ok(())
                    } else {
                        Err(Error::io(&path, e))
                    }
                }),
                WriteJob::Flush(_) => Ok(()),
            },
        }
    }

    /// Snapshots `ckpt` now and writes it to every path in `paths`.
    pub fn save(&self, ckpt: &Checkpoint, paths: &[PathBuf]) -> Result<()> {
        let Some(first) = paths.first() else { return Ok(()) };
        let bytes = Arc::new(ckpt.to_bytes(first)?);
        for path in paths {
            self.send(WriteJob::Write(path.clone(), Arc::clone(&bytes)))?;
        }
        Ok(())
    }

    /// Deletes `path` after the writes queued before it.
    pub fn remove(&self, path: &Path) -> Result<()> {
        self.send(WriteJob::Remove(path.to_owned()))
    }

    /// Waits until everything queued is on disk; returns the first error.
    pub fn flush(&self) -> Result<()> {
        if let Some(tx) = &self.tx {
            let (done_tx, done_rx) = mpsc::sync_channel(1);
            if tx.send(WriteJob::Flush(done_tx)).is_ok() {
                let _ = done_rx.recv();
            }
        }
        self.take_error()
    }
}

impl Drop for CheckpointWriter {
    fn drop(&mut self) {
        self.tx.take();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Which checkpoint to start from, as in Lightning's `ckpt_path`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum CkptPath {
    /// The newest `last.safetensors` of any version of this experiment.
    Last,
    /// The best checkpoint recorded by ModelCheckpoint.
    Best,
    /// A file.
    Path(PathBuf),
}

impl std::str::FromStr for CkptPath {
    type Err = std::convert::Infallible;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Ok(match s {
            "last" => CkptPath::Last,
            "best" => CkptPath::Best,
            p => CkptPath::Path(PathBuf::from(p)),
        })
    }
}

impl From<&str> for CkptPath {
    fn from(s: &str) -> Self {
        match s.parse() {
            Ok(p) => p,
            Err(never) => match never {},
        }
    }
}

/// The newest `last.safetensors` under `experiment_dir/version_*/checkpoints/`.
///
/// Newest by modification time, then by version number: a fresh, empty version folder
/// never hides an older run's checkpoint (Lightning's `"last"` can lose it that way).
pub fn find_last(experiment_dir: &Path) -> Option<PathBuf> {
    let entries = std::fs::read_dir(experiment_dir).ok()?;
    entries
        .filter_map(|e| e.ok())
        .filter_map(|e| {
            let version = parse_version(&e.file_name().to_string_lossy())?;
            let path = e.path().join("checkpoints").join(LAST_NAME);
            let modified = std::fs::metadata(&path).ok()?.modified().ok()?;
            Some((modified, version, path))
        })
        .max_by(|a, b| (a.0, a.1).cmp(&(b.0, b.1)))
        .map(|(_, _, p)| p)
}

/// `N` of a `version_N` folder name.
pub fn parse_version(name: &str) -> Option<u32> {
    name.strip_prefix("version_")?.parse().ok()
}

/// The `version_N` folder a checkpoint at `version_N/checkpoints/<file>` belongs to.
pub fn version_dir_of(checkpoint: &Path) -> Option<PathBuf> {
    let dir = checkpoint.parent()?;
    if dir.file_name()? != "checkpoints" {
        return None;
    }
    let version = dir.parent()?;
    parse_version(&version.file_name()?.to_string_lossy()).map(|_| version.to_owned())
}
