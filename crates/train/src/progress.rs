//! Where a run stands: the loop position that checkpoints store and resume from.
pub use volt_formats::checkpoint::Progress;
