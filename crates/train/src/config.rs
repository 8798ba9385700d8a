//! The Trainer's options, with Lightning's names and defaults (defined in volt-config,
//! which builds without libtorch).
pub use volt_config::trainer::{BatchLimit, FastDevRun, TrainerConfig};

use crate::fabric::FabricConfig;

/// The Fabric part of the Trainer's options.
pub fn fabric_config(config: &TrainerConfig) -> FabricConfig {
    FabricConfig {
        accelerator: config.accelerator,
        devices: config.devices,
        num_nodes: config.num_nodes,
        strategy: config.strategy,
        ddp_timeout_s: config.ddp_timeout_s,
        precision: config.precision,
        num_threads: config.num_threads,
    }
}
