//! The one error type of volt-train.
use std::path::PathBuf;

/// Everything that can go wrong while training, evaluating or checkpointing.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A libtorch operation failed.
    #[error("libtorch: {0}")]
    Torch(#[from] tch::TchError),
    /// Reading or writing a file failed; the path says which.
    #[error("{path}: {source}")]
    Io {
        /// The file or folder involved.
        path: PathBuf,
        /// What the operating system said.
        source: std::io::Error,
    },
    /// A checkpoint file is missing, unreadable or not a volt checkpoint.
    #[error("checkpoint {path}: {message}")]
    Checkpoint {
        /// The checkpoint file.
        path: PathBuf,
        /// What is wrong with it.
        message: String,
    },
    /// A checkpoint's tensors do not fit the model or optimizer being restored.
    #[error("checkpoint {path} does not match this model:\n{details}")]
    CheckpointMismatch {
        /// The checkpoint file.
        path: PathBuf,
        /// One line per missing, unexpected or mis-shaped tensor.
        details: String,
    },
    /// The loss stopped being a finite number.
    #[error("loss is {value} at epoch {epoch}, step {step} (batch {batch} of the epoch); stopping")]
    NonFiniteLoss {
        /// The offending value (NaN or ±inf).
        value: f64,
        /// Epoch, counted from 0.
        epoch: usize,
        /// Global optimizer step, counted from 0.
        step: u64,
        /// Batch index within the epoch, counted from 0.
        batch: usize,
    },
    /// A configuration value is invalid; the message names the field.
    #[error("invalid configuration: {0}")]
    Config(String),
    /// A configuration or checkpoint problem that showed only once training was under way:
    /// the run stopped, and what it logged and saved before stays.
    #[error("{message}\n  fit stopped at epoch {epoch}, step {step}; the logs and checkpoints written before this stay")]
    DuringFit {
        /// What went wrong.
        message: String,
        /// Epoch, counted from 0.
        epoch: usize,
        /// Optimizer steps taken.
        step: u64,
    },
    /// Setting up or running data-parallel collectives failed.
    #[error("ddp: {0}")]
    Distributed(String),
    /// A collective failed because other ranks stopped answering (exited, killed, hung).
    #[error(
        "ddp: lost rank {lost} of {world_size} during {during}; rank {rank} stops too \
         (resubmit the job with --ckpt_path last to resume)\n  cause: {cause}"
    )]
    LostRank {
        /// The rank(s) that stopped answering, e.g. `1` or `1, 3`, with how they ended when known.
        lost: String,
        /// Number of ranks in the job.
        world_size: usize,
        /// This process's rank.
        rank: usize,
        /// The collective that failed.
        during: String,
        /// What the collective engine reported.
        cause: String,
    },
    /// A dataset or data loader was asked for something it cannot give.
    #[error("data: {0}")]
    Data(String),
    /// User code (a module, callback or logger) reported a failure.
    #[error("{0}")]
    User(String),
}

impl Error {
    /// Wraps an I/O error with the path it concerns.
    pub fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Error::Io { path: path.into(), source }
    }

    /// A checkpoint error for `path`.
    pub fn checkpoint(path: impl Into<PathBuf>, message: impl Into<String>) -> Self {
        Error::Checkpoint { path: path.into(), message: message.into() }
    }
}

/// `Result` with volt-train's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

impl From<volt_config::ConfigError> for Error {
    fn from(e: volt_config::ConfigError) -> Self {
        Error::Config(e.to_string())
    }
}

impl Error {
    /// This error as it reaches the caller of `fit` once training is under way: problems
    /// of configuration or checkpoints say where the run stopped (the command line exits
    /// 1 for them, not 2, since files were written); the others are already specific.
    pub(crate) fn during_fit(self, at: &crate::progress::Progress) -> Self {
        match self {
            Error::Config(_) | Error::Checkpoint { .. } | Error::CheckpointMismatch { .. } => {
                Error::DuringFit { message: self.to_string(), epoch: at.epoch, step: at.global_step }
            }
            other => other,
        }
    }
}
