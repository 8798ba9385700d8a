//! The run configuration: volt-config's loader and sections, re-exported for users of
//! the command line as a library.
pub use volt_config::loader::*;
pub use volt_config::run::{CallbacksConfig, OptimizerOverrides, RunConfig};
