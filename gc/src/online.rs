//! Attaching the collector to a server: the [`Cleaner`] wired to the registry's deletes,
//! the startup trigger, and the admin routes merged into the API router. Process-level
//! triggers (SIGUSR1, the admin socket) are the binary's.

use std::sync::Arc;

use axum::Router;
use registry::api::{AppState, DeleteListener};
use registry::config::Config;

use crate::Options;
use crate::cleaner::Cleaner;
use crate::maintenance::Maintenance;

/// The collector options a configuration asks for.
pub fn options(config: &Config) -> Options {
    Options {
        dry_run: false,
        remove_untagged: config.gc.remove_untagged,
        grace: config.gc_grace(),
        workers: config.gc.workers,
    }
}

/// What a server does when content is deleted: schedule a cycle, count it for
/// maintenance's `--auto` gc threshold.
struct OnDelete {
    cleaner: Cleaner,
    maintenance: Maintenance,
}

impl DeleteListener for OnDelete {
    fn deleted(&self) {
        self.cleaner.schedule();
        self.maintenance.note_delete();
    }
}

/// The parts of a running server the binary still wires to process-level triggers.
pub struct Online {
    pub router: Router,
    pub cleaner: Cleaner,
    pub maintenance: Maintenance,
}

/// Builds the whole application of a server: the registry API plus the admin API, with
/// the online cleaner attached when `gc.enabled` and the maintenance scheduler started
/// when `maintenance.enabled`. Must run inside a tokio runtime.
pub fn app(mut state: AppState, config: &Config) -> Online {
    let cleaner = Cleaner::start(state.store.clone(), options(config), config.gc_interval());
    let maintenance = Maintenance::new(state.store.clone(), config.clone(), Some(cleaner.clone()));
    if config.gc.enabled {
        state.on_delete = Some(Arc::new(OnDelete {
            cleaner: cleaner.clone(),
            maintenance: maintenance.clone(),
        }));
        if config.gc.on_startup {
            cleaner.schedule();
        }
    }
    if config.maintenance.enabled {
        maintenance.start();
    }
    let router = registry::api::router(state).merge(crate::admin::router(
        cleaner.clone(),
        maintenance.clone(),
        config.admin.loopback_only,
    ));
    Online {
        router,
        cleaner,
        maintenance,
    }
}
