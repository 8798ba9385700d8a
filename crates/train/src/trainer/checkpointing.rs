//! Where `fit` starts from and what it saves: `ckpt_path` resolution, restoring a
//! checkpoint into the module, optimizer and scheduler, and the current state as a
//! checkpoint.
use super::{Run, Trainer};
use crate::checkpoint::{self, Checkpoint, CkptPath, TrainingState};
use crate::error::{Error, Result};
use crate::module::VoltModule;
use crate::optim::Optimizer;
use crate::progress::Progress;
use crate::schedule::LrScheduler;
use std::path::{Path, PathBuf};

impl Trainer {
    /// Finds the checkpoint `ckpt` names; `Ok(None)` for `last` when there is none yet.
    pub fn resolve_ckpt_path(&self, ckpt: &CkptPath) -> Result<Option<PathBuf>> {
        match ckpt {
            CkptPath::Path(p) => {
                if p.is_file() {
                    Ok(Some(p.clone()))
                } else {
                    Err(Error::checkpoint(p, "file not found"))
                }
            }
            CkptPath::Last => Ok(checkpoint::find_last(&self.experiment_dir())),
            CkptPath::Best => {
                if let Some(best) = self.callbacks.iter().find_map(|c| c.best_model_path()) {
                    return Ok(Some(best));
                }
                let experiment = self.experiment_dir();
                let last = checkpoint::find_last(&experiment).ok_or_else(|| {
                    Error::checkpoint(&experiment, "ckpt_path=\"best\": no checkpoint under this folder")
                })?;
                let best = Checkpoint::read_state(&last)?
                    .callbacks
                    .iter()
                    .filter(|(name, _)| name.starts_with("ModelCheckpoint"))
                    .find_map(|(_, s)| s.get("best_model_path")?.as_str().map(PathBuf::from))
                    .ok_or_else(|| {
                        Error::checkpoint(
                            &last,
                            "ckpt_path=\"best\": no ModelCheckpoint recorded a best model",
                        )
                    })?;
                if best.is_file() {
                    Ok(Some(best))
                } else {
                    Err(Error::checkpoint(best, "the recorded best checkpoint is missing"))
                }
            }
        }
    }

    pub(super) fn restore<M: VoltModule>(
        &mut self,
        module: &mut M,
        optimizer: &mut Optimizer,
        scheduler: &mut Option<LrScheduler>,
        ckpt: &Checkpoint,
        path: &Path,
    ) -> Result<Progress> {
        // Before the weights, as Lightning: the module may refuse a checkpoint (one made
        // on another base model) with a better reason than a tensor mismatch.
        module.on_load_checkpoint(&ckpt.state.module)?;
        checkpoint::restore_model_of(module.var_store(), ckpt, path, module.saved_variables())?;
        if let Some(scalars) = &ckpt.state.optimizer {
            let tensors = ckpt.section(checkpoint::OPTIMIZER_PREFIX);
            optimizer.load_state(scalars, &tensors).map_err(|problems| Error::CheckpointMismatch {
                path: path.to_owned(),
                details: problems.join("\n"),
            })?;
        }
        if let (Some(s), Some(state)) = (scheduler.as_mut(), &ckpt.state.scheduler) {
            s.load_state(state.clone());
        }
        Ok(ckpt.state.progress.clone())
    }

    /// The current state as a checkpoint.
    pub(super) fn checkpoint<M: VoltModule>(&self, module: &M, run: &Run) -> Checkpoint {
        let mut progress = run.state.progress.clone();
        if progress.batch_in_epoch >= run.state.epoch_len {
            progress.epoch += 1;
            progress.batch_in_epoch = 0;
        }
        let mut tensors = checkpoint::model_tensors_of(module.var_store(), module.saved_variables());
        tensors.extend(
            run.optimizer
                .state_tensors()
                .into_iter()
                .map(|(n, t)| (format!("{}{n}", checkpoint::OPTIMIZER_PREFIX), t)),
        );
        Checkpoint {
            tensors,
            state: TrainingState {
                volt_version: env!("CARGO_PKG_VERSION").to_owned(),
                format: checkpoint::FORMAT_VERSION,
                progress,
                optimizer: Some(run.optimizer.scalars()),
                scheduler: run.scheduler.as_ref().map(|s| s.state().clone()),
                callbacks: self.callbacks.iter().map(|c| (c.name(), c.state_dict())).collect(),
                seed: run.seed,
                hparams: module.hparams(),
                module: module.on_save_checkpoint(),
                metrics: run.state.metrics.clone(),
            },
        }
    }
}
