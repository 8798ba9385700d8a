//! Ctrl-C, SIGTERM and SIGUSR1 (what Slurm's `--signal` sends ahead of a preemption)
//! during `fit`: the first asks the loop to stop after the current
//! step (and write `last`); a second Ctrl-C terminates as usual, a repeated SIGTERM or
//! SIGUSR1 only asks again (SIGKILL is the hard stop), also after a fit they stopped has
//! returned. Otherwise, outside `fit` the signals keep their default behaviour.
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock};

struct Flags {
    outside_fit: Arc<AtomicBool>,
    stop: Arc<AtomicBool>,
}

fn flags() -> Option<&'static Flags> {
    static FLAGS: OnceLock<Option<Flags>> = OnceLock::new();
    FLAGS
        .get_or_init(|| {
            let flags = Flags {
                outside_fit: Arc::new(AtomicBool::new(true)),
                stop: Arc::new(AtomicBool::new(false)),
            };
            use signal_hook::consts::{SIGINT, SIGTERM, SIGUSR1};
            use signal_hook::flag;
            for sig in [SIGINT, SIGTERM, SIGUSR1] {
                // Order matters: the default action runs when outside fit, or (Ctrl-C
                // only) when a stop was already requested; otherwise the signal only
                // requests a stop. SIGTERM and SIGUSR1 come from schedulers, which may send
                // them more than once (Slurm signals every process of a step, and srun
                // forwards it again): a repeat asks again, as Lightning's handler does.
                flag::register_conditional_default(sig, Arc::clone(&flags.outside_fit)).ok()?;
                if sig == SIGINT {
                    flag::register_conditional_default(sig, Arc::clone(&flags.stop)).ok()?;
                }
                flag::register(sig, Arc::clone(&flags.stop)).ok()?;
            }
            Some(flags)
        })
        .as_ref()
}

/// While alive, SIGINT/SIGTERM/SIGUSR1 request a graceful stop instead of terminating.
pub(crate) struct StopOnSignal {
    flags: Option<&'static Flags>,
}

impl StopOnSignal {
    pub fn install() -> Self {
        let flags = flags();
        if let Some(f) = flags {
            f.stop.store(false, Ordering::SeqCst);
            f.outside_fit.store(false, Ordering::SeqCst);
        }
        StopOnSignal { flags }
    }

    /// Whether a signal asked to stop.
    pub fn requested(&self) -> bool {
        self.flags.is_some_and(|f| f.stop.load(Ordering::Relaxed))
    }
}

impl Drop for StopOnSignal {
    /// Restores the default actions, unless a signal stopped this fit: the process is
    /// then on its way out, and a scheduler's repeat of the same SIGTERM that comes after
    /// fit returned (Slurm sends one, srun another) must not kill it before it exits
    /// cleanly. A Ctrl-C still terminates, and the next `fit` starts afresh.
    fn drop(&mut self) {
        if let Some(f) = self.flags {
            if !f.stop.load(Ordering::SeqCst) {
                f.outside_fit.store(true, Ordering::SeqCst);
            }
        }
    }
}
