//! drydock's registry library: the storage driver and layout (`storage`), the domain
//! (`blobs`, `upload`, `manifest`, `repository`, `artifacts`), the HTTP API (`api`) and the server
//! wiring (`server`). It knows nothing of garbage collection; deletions are announced
//! through [`api::DeleteListener`].

pub mod access;
pub mod api;
pub mod artifacts;
pub mod auth;
pub mod blobs;
pub mod cache;
pub mod config;
pub mod coordination;
pub mod digest;
#[cfg(test)]
mod fuzz;
pub mod health;
pub mod hooks;
pub mod inventory;
pub mod liveness;
pub mod manifest;
pub mod metrics;
pub mod names;
pub mod notify;
pub mod repository;
pub mod server;
pub mod storage;
pub mod store;
pub mod tls;
pub mod upload;

pub use api::error::Error;
pub use config::Config;
pub use digest::Digest;
pub use names::{Reference, RepoName, Tag};
pub use store::Store;

pub type Result<T, E = Error> = std::result::Result<T, E>;
