//! Users' own PyTorch models behind volt-serve's batching workers, with no Python in the
//! serving process: AOTInductor packages (`torch._inductor.aoti_compile_and_package`,
//! loaded through volt's C++ shim over `AOTIModelPackageLoader`) and TorchScript modules
//! (`torch.jit.save`, through tch's `CModule`). Each is a [`volt_serve::tensor::TensorModel`].
//!
//! What a model takes comes from the file itself: the input checks AOTInductor compiles
//! into every package (dtypes, sizes, the bounds of dynamic dimensions), and volt_export's
//! metadata (names, dtypes, named dimensions, torch version) where it wrote the file.
pub mod aoti;
pub mod batch;
pub mod metadata;
pub mod package;
mod probe;

use aoti::AotiLoader;
use metadata::{release, VoltMetadata};
use package::{AotiPackage, InputCheck};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use volt_serve::tensor::{BatchRange, Dim, Row, Signature, TensorModel, TensorSpec, ValueRange};
use volt_serve::{ApiError, Device};

/// Why an exported model cannot be served.
#[derive(Debug, thiserror::Error)]
pub enum ExportError {
    /// The file is not what it should be, or records something volt cannot serve.
    #[error("{0}")]
    Package(String),
}

/// How the model is stored.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Format {
    /// An AOTInductor package (`.pt2`).
    Aoti,
    /// A TorchScript module (`.pt`).
    TorchScript,
}

/// Options for opening a model.
#[derive(Clone, Debug, Default)]
pub struct OpenOptions {
    /// Worker threads that will run it at once (AOTInductor runners).
    pub workers: usize,
    /// The CUDA device to serve on, or the CPU.
    pub cuda: Option<usize>,
    /// The model's name in the protocol's routes (default: volt_export's, else the file's stem).
    pub name: Option<String>,
}

/// How a worker runs the model.
pub enum Worker {
    /// Every worker shares the package's loader (one runner each).
    Aoti(Arc<AotiLoader>),
    /// Each worker has its own module.
    TorchScript(tch::CModule),
}

/// An exported model ready to serve.
pub struct ExportedModel {
    name: String,
    path: PathBuf,
    format: Format,
    signature: Signature,
    device: tch::Device,
    /// The package's loader (AOTInductor).
    loader: Option<Arc<AotiLoader>>,
    /// Whether every input's dtype and shape is known, so that the model failing is the
    /// model's fault (500) rather than the input's (400).
    fully_checked: bool,
    torch_version: Option<String>,
}

impl ExportedModel {
    /// Opens an AOTInductor package: reads what it records, refuses a package of another
    /// torch version, for another device or for CPU features this machine lacks, loads
    /// it with `workers` runners, and runs it once on zeros to learn (and check) its outputs.
    pub fn open_aoti(path: &Path, options: &OpenOptions) -> Result<Self, ExportError> {
        let package = AotiPackage::read(path)?;
        let ours = aoti::torch_version();
        if let Some(meta) = &package.volt {
            if release(&meta.torch_version) != ours {
                return Err(ExportError::Package(format!(
                    "{}: exported with torch {}, but this volt runs libtorch {ours}; an AOTInductor \
                     package only loads on the torch that compiled it: export it again with torch {ours}",
                    path.display(),
                    meta.torch_version
                )));
            }
        }
        match (package.device(), options.cuda) {
            ("cpu", Some(n)) => {
                return Err(ExportError::Package(format!(
                "{}: the package was compiled for the CPU; serve it without --cuda {n}, or export it on cuda",
                path.display()
            )))
            }
            ("cuda", None) => {
                return Err(ExportError::Package(format!(
                    "{}: the package was compiled for CUDA; serve it with --cuda N",
                    path.display()
                )))
            }
            ("cpu" | "cuda", _) => {}
            (other, _) => {
                return Err(ExportError::Package(format!(
                    "{}: the package was compiled for device {other:?}, which volt does not serve",
                    path.display()
                )))
            }
        }
        let missing = package.missing_cpu_features();
        if !missing.is_empty() {
            return Err(ExportError::Package(format!(
                "{}: compiled for a CPU with {} (AOTInductor compiles for the CPU it runs on), which \
                 this CPU lacks: export the package on this machine",
                path.display(),
                missing.join(", ")
            )));
        }
        let signature = aoti_signature(path, &package)?;
        let loader =
            Arc::new(AotiLoader::load(path, &package.model_name, options.workers.max(1), options.cuda)?);
        let fully_checked = signature.inputs.iter().all(|s| s.dtype.is_some() && s.dims.is_some());
        let mut model = ExportedModel {
            name: model_name(path, options, package.volt.as_ref()),
            path: path.to_owned(),
            format: Format::Aoti,
            signature,
            device: device(options),
            loader: Some(loader),
            fully_checked,
            torch_version: package.volt.as_ref().map(|m| m.torch_version.clone()),
        };
        model.learn_outputs(None)?;
        Ok(model)
    }

    /// Opens a TorchScript module (each worker loads its own copy in `setup`). Without
    /// volt_export's metadata it takes one input, `input0`, of any dtype and shape,
    /// batched along its first dimension.
    pub fn open_torchscript(path: &Path, options: &OpenOptions) -> Result<Self, ExportError> {
        let meta = package::torchscript_metadata(path)?;
        let signature = match &meta {
            Some(meta) => meta_signature(meta, None)
                .map_err(|e| ExportError::Package(format!("{}: {e}", path.display())))?,
            None => Signature {
                inputs: vec![TensorSpec { name: "input0".into(), ..TensorSpec::default() }],
                outputs: Vec::new(),
                batch: Some(BatchRange { min: 1, max: None }),
            },
        };
        let device = device(options);
        // Loaded once here so that a broken file fails at start-up, not in a worker; this
        // copy runs the probe.
        let module = tch::CModule::load_on_device(path, device).map_err(|e| {
            ExportError::Package(format!("{}: not a loadable TorchScript module: {e}", path.display()))
        })?;
        let fully_checked = meta.is_some();
        let mut model = ExportedModel {
            name: model_name(path, options, meta.as_ref()),
            path: path.to_owned(),
            format: Format::TorchScript,
            signature,
            device,
            loader: None,
            fully_checked,
            torch_version: meta.as_ref().map(|m| m.torch_version.clone()),
        };
        if fully_checked {
            model.learn_outputs(Some(Worker::TorchScript(module)))?;
        }
        Ok(model)
    }

    /// The model's format.
    pub fn format(&self) -> Format {
        self.format
    }
}

fn device(options: &OpenOptions) -> tch::Device {
    options.cuda.map_or(tch::Device::Cpu, tch::Device::Cuda)
}

fn model_name(path: &Path, options: &OpenOptions, meta: Option<&VoltMetadata>) -> String {
    options
        .name
        .clone()
        .or_else(|| meta.and_then(|m| m.name.clone()))
        .or_else(|| path.file_stem().map(|s| s.to_string_lossy().into_owned()))
        .unwrap_or_else(|| "model".into())
}

/// A signature from volt_export's metadata alone (TorchScript), or checked against and
/// bounded by a package's own input checks (AOTInductor).
fn meta_signature(meta: &VoltMetadata, checks: Option<&[InputCheck]>) -> Result<Signature, String> {
    let batched = meta.batch_dim.is_some() && meta.inputs.iter().all(|t| meta.batched(t));
    let full_dims: Vec<Vec<Dim>> = meta
        .inputs
        .iter()
        .enumerate()
        .map(|(i, t)| checks.and_then(|c| c.get(i)).map_or_else(|| meta.dims_of(t), |c| c.dims.clone()))
        .collect();
    let batch = batched.then(|| batch_range(&full_dims)).flatten();
    let spec = |t: &metadata::TensorMeta, dims: Vec<Dim>| TensorSpec {
        name: t.name.clone(),
        dtype: volt_serve::tensor::DType::parse(&t.dtype),
        dims: Some(per_row(dims, batch.is_some())),
        values: t.values.map(|[low, high]| ValueRange { low, high }),
    };
    let inputs = meta.inputs.iter().zip(full_dims).map(|(t, d)| spec(t, d)).collect();
    let outputs = meta.outputs.iter().map(|t| spec(t, meta.dims_of(t))).collect();
    Ok(Signature { inputs, outputs, batch })
}

/// A tensor's dimensions per row: without the first when the model batches.
fn per_row(mut dims: Vec<Dim>, batched: bool) -> Vec<Dim> {
    if batched && !dims.is_empty() {
        dims.remove(0);
    }
    dims
}

/// The batch range when every input's first dimension is dynamic: the tightest bounds
/// (AOTInductor may have raised a minimum of 1 to 2, the 0/1 specialisation).
fn batch_range(dims: &[Vec<Dim>]) -> Option<BatchRange> {
    let mut range = BatchRange { min: 1, max: None };
    for d in dims {
        match d.first()? {
            Dim::Dynamic { min, max } => {
                range.min = range.min.max(*min);
                range.max = match (range.max, max) {
                    (Some(a), Some(b)) => Some(a.min(*b)),
                    (a, b) => a.or(*b),
                };
            }
            Dim::Fixed(_) => return None,
        }
    }
    Some(range)
}

fn aoti_signature(path: &Path, package: &AotiPackage) -> Result<Signature, ExportError> {
    let bad = |e: String| ExportError::Package(format!("{}: {e}", path.display()));
    if let (Some(meta), Some(checks)) = (&package.volt, &package.checks) {
        if meta.inputs.len() != checks.len() {
            return Err(bad(format!(
                "volt_export's metadata names {} inputs, the compiled model takes {}",
                meta.inputs.len(),
                checks.len()
            )));
        }
    }
    if let Some(meta) = &package.volt {
        return meta_signature(meta, package.checks.as_deref()).map_err(bad);
    }
    // No volt metadata: the package's own checks, inputs named by position.
    let Some(checks) = &package.checks else {
        return Err(bad(
            "the package records neither volt_export's metadata nor AOTInductor's input checks; \
             export it with volt_export"
                .into(),
        ));
    };
    let full: Vec<Vec<Dim>> = checks.iter().map(|c| c.dims.clone()).collect();
    let batch = batch_range(&full);
    let inputs = checks
        .iter()
        .enumerate()
        .map(|(i, c)| TensorSpec {
            name: format!("input{i}"),
            dtype: c.dtype,
            dims: Some(per_row(c.dims.clone(), batch.is_some())),
            values: None,
        })
        .collect();
    let outputs = package
        .output_names
        .iter()
        .map(|n| TensorSpec { name: n.clone(), ..TensorSpec::default() })
        .collect();
    Ok(Signature { inputs, outputs, batch })
}

impl TensorModel for ExportedModel {
    type Worker = Worker;

    fn name(&self) -> &str {
        &self.name
    }
    fn signature(&self) -> &Signature {
        &self.signature
    }
    fn platform(&self) -> &str {
        match self.format {
            Format::Aoti => "pytorch_aoti",
            Format::TorchScript => "pytorch_torchscript",
        }
    }
    fn setup(&self, _device: Device) -> Result<Worker, ApiError> {
        match &self.loader {
            Some(loader) => Ok(Worker::Aoti(Arc::clone(loader))),
            None => tch::CModule::load_on_device(&self.path, self.device)
                .map(Worker::TorchScript)
                .map_err(|e| ApiError::Internal(format!("{}: {e}", self.path.display()))),
        }
    }
    fn predict(&self, worker: &mut Worker, rows: Vec<Row>) -> Vec<Result<Row, ApiError>> {
        let fault = |e: String| {
            if self.fully_checked {
                ApiError::Internal(format!("the model failed: {e}"))
            } else {
                ApiError::BadRequest(format!("the model refused the input: {e}"))
            }
        };
        let _guard = tch::no_grad_guard();
        batch::run_rows(&self.signature, rows, self.device, |inputs| match worker {
            Worker::Aoti(loader) => loader.run(&inputs).map_err(fault),
            Worker::TorchScript(module) => {
                let ivalues: Vec<tch::IValue> = inputs.into_iter().map(tch::IValue::Tensor).collect();
                let out = module.forward_is(&ivalues).map_err(|e| fault(last_line(&e.to_string())))?;
                tensors_of(out).map_err(fault)
            }
        })
    }
    fn info(&self) -> serde_json::Value {
        serde_json::json!({
            "file": self.path.display().to_string(),
            "exported_with_torch": self.torch_version,
            "libtorch": aoti::torch_version(),
        })
    }
}

/// The error itself, without the TorchScript interpreter's two tracebacks before it.
fn last_line(message: &str) -> String {
    if !message.contains("Traceback of TorchScript") {
        return message.to_owned();
    }
    message.lines().rev().find(|l| !l.trim().is_empty()).unwrap_or(message).trim().to_owned()
}

/// A TorchScript result as tensors: one tensor, or a tuple or list of them.
fn tensors_of(value: tch::IValue) -> Result<Vec<tch::Tensor>, String> {
    match value {
        tch::IValue::Tensor(t) => Ok(vec![t]),
        tch::IValue::Tuple(items) | tch::IValue::GenericList(items) => items
            .into_iter()
            .map(|v| match v {
                tch::IValue::Tensor(t) => Ok(t),
                other => Err(format!("the module returned a {other:?} among its outputs, not a tensor")),
            })
            .collect(),
        tch::IValue::TensorList(ts) => Ok(ts),
        other => Err(format!("the module returned {other:?}, not tensors")),
    }
}
