//! Attaching the collector to a server: the [`Cleaner`] wired to the registry's deletes,
//! the startup trigger, and the admin routes merged into the API router. Process-level
//! triggers (SIGUSR1, the admin socket) are the binary's.

use std::sync::Arc;

use axum::Router;
use registry::api::AppState;
use registry::config::Config;

use crate::Options;
use crate::cleaner::Cleaner;

/// The collector options a configuration asks for.
pub fn options(config: &Config) -> Options {
    Options {
        dry_run: false,
        remove_untagged: config.gc.remove_untagged,
        grace: config.gc_grace(),
    }
}

/// Builds the whole application of a server: the registry API plus the admin API, with
/// the online cleaner attached when `gc.enabled`. Must run inside a tokio runtime.
pub fn app(mut state: AppState, config: &Config) -> (Router, Cleaner) {
    let cleaner = Cleaner::start(state.store.clone(), options(config), config.gc_interval());
    if config.gc.enabled {
        state.on_delete = Some(Arc::new(cleaner.clone()));
        if config.gc.on_startup {
            cleaner.schedule();
        }
    }
    let router = registry::api::router(state).merge(crate::admin::router(
        cleaner.clone(),
        config.admin.loopback_only,
    ));
    (router, cleaner)
}
