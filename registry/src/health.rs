//! Liveness and readiness. `/livez` answers 200 while the process serves at all.
//! `/readyz` answers 200 only when every check passes, 503 with the failing checks
//! otherwise; both are cheap (no disk access on the request) and unauthenticated:
//!
//! - `storage`: a background probe every `health.storagedriver.interval` writes a small
//!   object through the storage driver (on disk: temp name, fsync, rename, the real
//!   write path; on S3: a PUT), reads it back and removes it, within `timeout`;
//!   `threshold` consecutive failures turn it red (a full disk, a read-only remount, a
//!   hung NFS mount, an unreachable bucket). The answer is the last probe's.
//! - `file:<path>`: Distribution's file check: while the file exists, out of rotation.
//! - `draining`: set on SIGTERM, before the listener stops accepting.
//!
//! Distribution's `/debug/health` answers the same way (`{}` when healthy).

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};

use axum::Router;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::get;

use crate::config::Config;
use crate::storage::{Driver, PathSpec, PutMode, path_for};

/// The readiness state of one server.
pub struct Health {
    draining: AtomicBool,
    storage_failures: AtomicU32,
    threshold: u32,
    last_error: std::sync::Mutex<Option<String>>,
    files: Vec<PathBuf>,
}

impl Health {
    /// The state for `config`; call [`Health::start`] to run the storage probe.
    pub fn new(config: &Config) -> Arc<Health> {
        Arc::new(Health {
            draining: AtomicBool::new(false),
            storage_failures: AtomicU32::new(0),
            threshold: config.health.storagedriver.threshold.max(1),
            last_error: std::sync::Mutex::new(None),
            files: config.health.file.iter().map(|f| f.file.clone()).collect(),
        })
    }

    /// Starts the storage probe (when enabled) on the current runtime; the first probe
    /// runs at once.
    pub fn start(self: &Arc<Self>, config: &Config, driver: Arc<dyn Driver>) {
        let c = &config.health.storagedriver;
        if !c.enabled {
            return;
        }
        let (every, timeout) = (c.interval, c.timeout);
        let me = self.clone();
        tokio::spawn(async move {
            loop {
                let r = match tokio::time::timeout(timeout, probe(driver.as_ref())).await {
                    Ok(r) => r,
                    Err(_) => Err(format!("no answer within {timeout:?}")),
                };
                me.record(r);
                tokio::time::sleep(every).await;
            }
        });
    }

    fn record(&self, r: Result<(), String>) {
        let mut last = self.last_error.lock().unwrap_or_else(|p| p.into_inner());
        match r {
            Ok(()) => {
                if self.storage_failures.swap(0, Ordering::Relaxed) >= self.threshold {
                    tracing::info!("storage health check passes again");
                }
                *last = None;
            }
            Err(e) => {
                let n = self.storage_failures.fetch_add(1, Ordering::Relaxed) + 1;
                if n == self.threshold {
                    tracing::error!(error = %e, failures = n, "storage health check failing: not ready");
                }
                *last = Some(e);
            }
        }
    }

    /// From now on `/readyz` answers 503 (`draining`).
    pub fn start_draining(&self) {
        self.draining.store(true, Ordering::SeqCst);
    }

    /// The failing checks, by name; empty when ready.
    pub fn failing(&self) -> Vec<(String, String)> {
        let mut out = Vec::new();
        if self.draining.load(Ordering::SeqCst) {
            out.push(("draining".into(), "shutting down".into()));
        }
        if self.storage_failures.load(Ordering::Relaxed) >= self.threshold {
            let e = self
                .last_error
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .clone()
                .unwrap_or_default();
            out.push(("storage".into(), e));
        }
        for f in &self.files {
            if f.exists() {
                out.push((
                    format!("file:{}", f.display()),
                    "file exists: out of rotation".into(),
                ));
            }
        }
        out
    }

    fn answer(&self) -> Response {
        let failing = self.failing();
        let body: serde_json::Map<String, serde_json::Value> = failing
            .iter()
            .map(|(k, v)| (k.clone(), serde_json::Value::String(v.clone())))
            .collect();
        let status = if failing.is_empty() {
            StatusCode::OK
        } else {
            StatusCode::SERVICE_UNAVAILABLE
        };
        (
            status,
            [
                ("content-type", "application/json"),
                ("cache-control", "no-store"),
            ],
            serde_json::Value::Object(body).to_string(),
        )
            .into_response()
    }
}

/// Writes, reads back and removes the probe file.
async fn probe(driver: &dyn Driver) -> Result<(), String> {
    let path = path_for(PathSpec::HealthProbe);
    let token = format!("{}\n", uuid::Uuid::new_v4());
    driver
        .put(&path, token.clone().into(), PutMode::Overwrite)
        .await
        .map_err(|e| format!("write: {e}"))?;
    let (back, _) = driver.get(&path).await.map_err(|e| format!("read: {e}"))?;
    if back != token.as_bytes() {
        return Err("read back something else than was written".into());
    }
    driver
        .delete(&path)
        .await
        .map_err(|e| format!("remove: {e}"))
}

/// `/livez`, `/readyz` and `/debug/health`.
pub fn router(health: Arc<Health>) -> Router {
    let ready = health.clone();
    let debug = health;
    Router::new()
        .route(
            "/livez",
            get(|| async { ([("cache-control", "no-store")], "ok\n").into_response() }),
        )
        .route("/readyz", get(move || async move { ready.answer() }))
        .route("/debug/health", get(move || async move { debug.answer() }))
}
