//! The progress bar: an indicatif bar on a terminal, one plain line per epoch otherwise.
use super::{Callback, CallbackContext};
use crate::error::Result;
use crate::metrics::Metrics;
use indicatif::{ProgressDrawTarget, ProgressStyle};
use std::io::IsTerminal;
use std::time::Instant;

/// Shows epoch, step, it/s, ETA and the `prog_bar` metrics.
pub struct ProgressBar {
    bar: Option<indicatif::ProgressBar>,
    interactive: bool,
    epoch_start: Instant,
    epoch_steps: u64,
}

impl Default for ProgressBar {
    fn default() -> Self {
        ProgressBar {
            bar: None,
            interactive: std::io::stderr().is_terminal(),
            epoch_start: Instant::now(),
            epoch_steps: 0,
        }
    }
}

fn format_metrics(m: &Metrics) -> String {
    m.iter().map(|(k, v)| format!("{k}={v:.4}")).collect::<Vec<_>>().join(" ")
}

impl Callback for ProgressBar {
    fn name(&self) -> String {
        "ProgressBar".into()
    }

    fn on_train_epoch_start(&mut self, ctx: &mut CallbackContext) -> Result<()> {
        self.epoch_start = Instant::now();
        self.epoch_steps = 0;
        if self.interactive && ctx.is_global_zero {
            let total = ctx.num_training_batches as u64;
            let bar = indicatif::ProgressBar::with_draw_target(Some(total), ProgressDrawTarget::stderr());
            let style = ProgressStyle::with_template(
                "Epoch {prefix} {bar:30} {pos}/{len} [{elapsed_precise}<{eta_precise}, {per_sec}] {msg}",
            )
            .unwrap_or_else(|_| ProgressStyle::default_bar());
            bar.set_style(style);
            bar.set_prefix(format!("{}", ctx.progress.epoch));
            bar.set_position(ctx.progress.batch_in_epoch as u64);
            self.bar = Some(bar);
        }
        Ok(())
    }

    fn on_train_batch_end(&mut self, ctx: &mut CallbackContext, _loss: f64) -> Result<()> {
        self.epoch_steps += 1;
        if let Some(bar) = &self.bar {
            bar.set_position(ctx.progress.batch_in_epoch as u64);
            bar.set_message(format_metrics(ctx.progress_bar_metrics));
        }
        Ok(())
    }

    fn on_validation_end(&mut self, ctx: &mut CallbackContext) -> Result<()> {
        if let Some(bar) = &self.bar {
            bar.set_message(format_metrics(ctx.progress_bar_metrics));
        }
        Ok(())
    }

    fn on_train_epoch_end(&mut self, ctx: &mut CallbackContext) -> Result<()> {
        if !ctx.is_global_zero {
            return Ok(());
        }
        let secs = self.epoch_start.elapsed().as_secs_f64();
        let rate = self.epoch_steps as f64 / secs.max(1e-9);
        let line = format!(
            "Epoch {} | step {} | {:.1} it/s | {}",
            ctx.progress.epoch,
            ctx.progress.global_step,
            rate,
            format_metrics(ctx.progress_bar_metrics)
        );
        match self.bar.take() {
            Some(bar) => bar.finish_with_message(format_metrics(ctx.progress_bar_metrics)),
            None => println!("{line}"),
        }
        Ok(())
    }
}
