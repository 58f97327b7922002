//! Attaching the collector to a server: the [`Cleaner`] wired to the registry's deletes,
//! the startup trigger, and the admin routes merged into the API router. Process-level
//! triggers (SIGUSR1, the admin socket) are the binary's.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use axum::Router;
use axum::response::IntoResponse;
use registry::api::telemetry::{self, Telemetry};
use registry::api::{AppState, DeleteListener};
use registry::config::Config;
use registry::metrics::{Metrics, PhaseLabels};

use crate::cleaner::{Cleaner, CycleObserver};
use crate::maintenance::Maintenance;
use crate::{GcError, Options, Report};

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
        let _ = self.cleaner.schedule();
        self.maintenance.note_delete();
    }
}

/// The parts of a running server the binary still wires to process-level triggers.
pub struct Online {
    pub router: Router,
    pub cleaner: Cleaner,
    pub maintenance: Maintenance,
    /// Readiness: the binary turns it to draining on SIGTERM.
    pub health: Arc<registry::health::Health>,
    /// The auth layer's state (reloaded on SIGHUP).
    pub auth: Arc<registry::auth::Auth>,
}

/// Builds the whole application of a server: the registry API plus the admin API (and
/// the token endpoint when configured), all behind the auth layer, with the online
/// cleaner attached when `gc.enabled` and the maintenance scheduler started when
/// `maintenance.enabled`. Must run inside a tokio runtime. An error names the
/// configuration key whose files could not be loaded (htpasswd, token keys).
pub fn app(mut state: AppState, config: &Config) -> Result<Online, String> {
    let auth = registry::auth::Auth::from_config(config, state.metrics.clone())?;
    auth.start_watching();
    let cleaner = if config.gc.enabled {
        Cleaner::start(state.store.clone(), options(config), config.gc_interval())
    } else {
        Cleaner::disabled(state.store.clone(), options(config), config.gc_interval())
    };
    let maintenance = Maintenance::new(state.store.clone(), config.clone(), Some(cleaner.clone()));
    let metrics = state.metrics.clone();
    let notifier = registry::notify::Notifier::start(config, state.store.clone(), metrics.clone());
    if let Some(n) = &notifier {
        cleaner.observe(Arc::new(NotifyDeletes(n.clone())));
        maintenance.set_notifier(n.clone());
    }
    let health = registry::health::Health::new(config);
    health.start(config, state.store.driver().clone());
    if let Some(m) = &metrics {
        cleaner.observe(Arc::new(GcMetrics(m.clone())));
        maintenance.set_metrics(m.clone());
    }
    if config.gc.enabled {
        state.on_delete = Some(Arc::new(OnDelete {
            cleaner: cleaner.clone(),
            maintenance: maintenance.clone(),
        }));
        if config.gc.on_startup {
            let _ = cleaner.schedule();
        }
    }
    if config.maintenance.enabled {
        maintenance.start();
    }
    let mut router = registry::api::router(state)
        .merge(crate::admin::router(cleaner.clone(), maintenance.clone()));
    if let (Some(m), true) = (&metrics, config.admin.metrics) {
        // Under /admin/: the auth layer lets only admins through.
        router = router.merge(metrics_router("/admin/metrics", m.clone()));
    }
    let router = telemetry::layer(
        registry::api::framing::layer(
            auth.wrap(router)
                .merge(registry::health::router(health.clone())),
        ),
        Telemetry {
            metrics,
            access_log: !config.log.accesslog.disabled,
            sink: notifier.map(|n| n as Arc<dyn telemetry::RequestSink>),
            trusted_proxies: config.http.trustedproxies.clone().into(),
        },
    );
    Ok(Online {
        router,
        cleaner,
        maintenance,
        health,
        auth,
    })
}

/// `GET path`: the metrics in Prometheus' text format.
pub fn metrics_router(path: &str, metrics: Arc<Metrics>) -> Router {
    Router::new().route(
        path,
        axum::routing::get(move || {
            let m = metrics.clone();
            async move {
                (
                    [(
                        axum::http::header::CONTENT_TYPE,
                        registry::metrics::CONTENT_TYPE,
                    )],
                    m.render(),
                )
                    .into_response()
            }
        }),
    )
}

/// Records each cycle of the server's collector in its metrics.
struct GcMetrics(Arc<Metrics>);

impl CycleObserver for GcMetrics {
    fn started(&self) {
        self.0.gc.in_progress.set(1);
    }

    fn finished(&self, result: &Result<Report, GcError>, _took: Duration) {
        let g = &self.0.gc;
        g.in_progress.set(0);
        g.cycles.inc();
        match result {
            Ok(r) => {
                for (phase, ms) in [("mark", r.mark_ms), ("sweep", r.sweep_ms)] {
                    let l = PhaseLabels { phase };
                    g.phase_seconds.get_or_create(&l).inc_by(ms / 1e3);
                    g.last_duration_seconds.get_or_create(&l).set(ms / 1e3);
                }
                if !r.dry_run {
                    g.freed_bytes.inc_by(r.bytes_freed);
                    g.removed_blobs.inc_by(r.blobs_removed as u64);
                    g.removed_manifests.inc_by(r.manifests_removed as u64);
                    g.removed_layer_links.inc_by(r.layer_links_removed as u64);
                }
                let now = SystemTime::now()
                    .duration_since(SystemTime::UNIX_EPOCH)
                    .map(|d| d.as_secs_f64())
                    .unwrap_or(0.0);
                g.last_success.set(now);
            }
            Err(_) => {
                g.failures.inc();
            }
        }
    }
}

/// Delete events for what a cycle of the server's collector removed: untagged
/// manifests and layer links, by repository (pool blobs belong to no repository).
struct NotifyDeletes(Arc<registry::notify::Notifier>);

impl CycleObserver for NotifyDeletes {
    fn finished(&self, result: &Result<Report, GcError>, _took: Duration) {
        let Ok(r) = result else { return };
        if r.dry_run {
            return;
        }
        for item in r
            .removed
            .manifests
            .iter()
            .chain(r.removed.layer_links.iter())
        {
            self.0.deleted_by("drydock-gc", &item);
        }
    }
}
