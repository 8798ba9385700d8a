//! volt-studio: the control plane. Jobs live in its store (SQLite through sqlx); its
//! controller drives them on their backends and survives its own restart; its HTTP API
//! (token auth) is what `volt job` talks to. See `docs/jobs.md`.
#![warn(missing_docs)]

pub mod api;
pub mod backend;
pub mod client;
pub mod controller;
pub mod home;
pub mod jobs;
pub mod store;

pub use client::{Client, ClientError};
pub use home::{volt_home, Home, Listening};
pub use jobs::{Job, JobDetail, JobStatus, Node, NodeStatus};
pub use store::{Store, StoreError};

use std::sync::Arc;

/// What keeps a control plane from starting.
#[derive(Debug, thiserror::Error)]
pub enum StudioError {
    /// Its home, its lock or its port.
    #[error("{0}")]
    Io(#[from] std::io::Error),
    /// Its store.
    #[error("{0}")]
    Store(#[from] StoreError),
}

/// Runs a control plane over `home` on `listener` until the process ends: takes the
/// home's lock (one control plane per store), brings the store to the latest migration,
/// starts the job controller (which re-adopts the jobs that were running) and serves the
/// API. `ready` hears the URL once it answers.
pub async fn serve(
    home: Home,
    listener: tokio::net::TcpListener,
    ready: impl FnOnce(&str),
) -> Result<(), StudioError> {
    let _lock = home.lock()?;
    let store = Store::open(&home.store()).await?;
    let token = home.token()?;
    let controller = controller::Controller::new(store.clone(), home.dir.clone());
    tokio::spawn(Arc::clone(&controller).run());
    let url = format!("http://{}", listener.local_addr()?);
    home.set_listening(&Listening { url: url.clone(), pid: std::process::id() })?;
    ready(&url);
    let app = Arc::new(api::App { store, controller, token });
    axum::serve(listener, api::router(app)).await?;
    Ok(())
}
