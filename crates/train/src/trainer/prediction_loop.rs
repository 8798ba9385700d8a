//! `predict`: `predict_step` over the predict loader (Lightning's `prediction_loop.py`).
use super::Trainer;
use crate::checkpoint::CkptPath;
use crate::data::{Batch, DataModule};
use crate::error::{Error, Result};
use crate::metrics::Stage;
use crate::module::{StepContext, VoltModule};

impl Trainer {
    /// Runs `predict_step` over the predict loader; returns one prediction per batch.
    pub fn predict<M, D>(
        &mut self,
        module: &mut M,
        data: &D,
        ckpt_path: Option<CkptPath>,
    ) -> Result<Vec<M::Prediction>>
    where
        M: VoltModule,
        D: DataModule<Batch = M::Batch>,
    {
        let mut out = Vec::new();
        self.predict_with(module, data, ckpt_path, |_, p| {
            out.push(p);
            Ok(())
        })?;
        Ok(out)
    }

    /// Runs `predict_step` over the predict loader, handing each batch's prediction to
    /// `sink` as soon as it exists, with the dataset indices of the batch's samples
    /// (Lightning's prediction writer hook). Returns the number of batches.
    pub fn predict_with<M, D>(
        &mut self,
        module: &mut M,
        data: &D,
        ckpt_path: Option<CkptPath>,
        mut sink: impl FnMut(&[usize], M::Prediction) -> Result<()>,
    ) -> Result<usize>
    where
        M: VoltModule,
        D: DataModule<Batch = M::Batch>,
    {
        let loader = data
            .predict_dataloader()
            .ok_or_else(|| Error::Data("predict needs a predict_dataloader".into()))?;
        self.prepare_eval(module, ckpt_path)?;
        let loader = self.fabric.setup_dataloader(loader);
        let limit = self
            .fast_dev_batches()
            .unwrap_or(usize::MAX)
            .min(self.config.limit_predict_batches.resolve(loader.len()));
        let indices = loader.batch_indices(0);
        let device = self.fabric.device();
        let mut ctx = StepContext::new(Stage::Predict, device);
        tch::no_grad(|| {
            for ((i, batch), batch_indices) in loader.epoch(0, 0).take(limit).enumerate().zip(&indices) {
                let batch = batch?.to_device(device);
                ctx.batch_idx = i;
                ctx.batch_size = batch.batch_size();
                sink(batch_indices, self.fabric.autocast(|| module.predict_step(&batch, &mut ctx))?)?;
            }
            Ok(limit.min(indices.len()))
        })
    }
}
