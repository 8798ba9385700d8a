//! The start-up probe: the model runs once on the smallest inputs it takes (zeros, or an
//! integer input's lowest allowed value), so that a model that cannot run is refused
//! before serving, and what it gives is known where the file does not record it.
use crate::{ExportError, ExportedModel, Worker};
use volt_serve::tensor::encode::output_name;
use volt_serve::tensor::{Dim, HostTensor, Row, TensorModel, TensorSpec};
use volt_serve::{ApiError, Device};

impl ExportedModel {
    /// Runs the probe and fills in the outputs' dtypes and per-row shapes where the file
    /// did not record them; a dimension that changes when the inputs' dynamic dimensions
    /// grow by one is dynamic. `worker` runs it when given (a module already loaded),
    /// else a new one.
    pub(crate) fn learn_outputs(&mut self, worker: Option<Worker>) -> Result<(), ExportError> {
        let Some(small) = self.probe_row(false) else { return Ok(()) };
        let recorded =
            !self.signature.outputs.is_empty() && self.signature.outputs.iter().all(|o| o.dims.is_some());
        let larger = if recorded { None } else { self.probe_row(true).filter(|r| *r != small) };
        let this = &*self;
        // On a thread of its own that ends with the probe: OpenMP keeps a team for every
        // thread that ran a parallel region, and once its teams hold more threads than
        // there are cores, libgomp stops spinning and every region pays a futex wake-up
        // (the main thread's team made MiniLM's package 1.6x slower in the workers).
        let (out, grown) = std::thread::scope(|scope| {
            scope
                .spawn(move || {
                    let mut worker = match worker {
                        Some(w) => w,
                        None => this.setup(Device::Cpu)?,
                    };
                    let out = this.run_one(&mut worker, small)?;
                    let grown = larger.map(|row| this.run_one(&mut worker, row)).transpose()?;
                    Ok((out, grown))
                })
                .join()
                .unwrap_or_else(|_| Err(ApiError::Internal("the model panicked".into())))
        })
        .map_err(|e: ApiError| {
            ExportError::Package(format!(
                "{}: the model fails on the smallest input it takes: {e}",
                self.path.display()
            ))
        })?;
        if !self.signature.outputs.is_empty() && self.signature.outputs.len() != out.len() {
            return Err(ExportError::Package(format!(
                "{}: the model gives {} outputs, its metadata names {}",
                self.path.display(),
                out.len(),
                self.signature.outputs.len()
            )));
        }
        let outputs = out
            .iter()
            .enumerate()
            .map(|(j, t)| {
                let seen = |d: usize, n: usize| match grown.as_ref().and_then(|g| g.get(j)?.shape.get(d)) {
                    Some(&m) if m != n => Dim::Dynamic { min: 0, max: None },
                    _ => Dim::Fixed(n),
                };
                TensorSpec {
                    name: output_name(&self.signature, j),
                    dtype: Some(t.dtype),
                    dims: self
                        .signature
                        .outputs
                        .get(j)
                        .and_then(|k| k.dims.clone())
                        .or_else(|| Some(t.shape.iter().enumerate().map(|(d, &n)| seen(d, n)).collect())),
                    values: None,
                }
            })
            .collect();
        self.signature.outputs = outputs;
        Ok(())
    }

    /// One row through the model.
    fn run_one(&self, worker: &mut Worker, row: Row) -> Result<Row, ApiError> {
        self.predict(worker, vec![row])
            .pop()
            .unwrap_or_else(|| Err(ApiError::Internal("the model answered no row".into())))
    }

    /// A row of the smallest shapes the inputs take (`larger`: dynamic dimensions one
    /// more, where their bounds allow), every element the lowest value allowed (0 unless
    /// the file records a range); `None` when an input's dtype or shape is unknown.
    fn probe_row(&self, larger: bool) -> Option<Row> {
        self.signature
            .inputs
            .iter()
            .map(|s| {
                let dtype = s.dtype?;
                let shape: Vec<usize> = s
                    .dims
                    .as_ref()?
                    .iter()
                    .map(|d| match *d {
                        Dim::Fixed(n) => n,
                        Dim::Dynamic { min, max } => {
                            let n = min.max(1);
                            n + usize::from(larger && max.is_none_or(|m| n < m))
                        }
                    })
                    .collect();
                let numel = shape.iter().product::<usize>();
                let low = serde_json::Value::from(s.values.map_or(0, |r| r.low));
                let mut data = Vec::with_capacity(numel * dtype.size());
                for _ in 0..numel {
                    dtype.push(&low, &mut data).ok()?;
                }
                Some(HostTensor { dtype, shape, data })
            })
            .collect()
    }
}
