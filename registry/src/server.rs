//! Wiring a configuration into a running server: `serve(listener, state, shutdown)` takes
//! a listener the caller already bound (tests bind `127.0.0.1:0`), and a graceful
//! shutdown stops accepting, then waits for in-flight requests up to the drain timeout.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::http::{HeaderName, HeaderValue};
use tokio::net::TcpListener;

use crate::api::AppState;
use crate::config::Config;
use crate::storage::FsDriver;
use crate::store::{Store, StoreOptions};

/// Builds the shared state of a server from its configuration.
pub fn state_from_config(config: &Config) -> AppState {
    let metrics = config.metrics_enabled().then(crate::metrics::Metrics::new);
    let mut driver = FsDriver::new(config.storage.filesystem.rootdirectory.clone());
    if let Some(m) = &metrics {
        driver = driver.with_metrics(m.storage.clone());
    }
    let store = Store::new(
        driver,
        StoreOptions {
            manifest_max_bytes: config.oci.manifest_max_bytes,
            mount_without_from: config.oci.mount_without_from,
            pending_ttl: config.gc.pending_ttl,
            post_process: crate::artifacts::PostProcess::from_config(
                &config.artifacts.post_process,
            ),
            direct_writes: config.storage.filesystem.directwrites,
            max_uploads: config.oci.max_uploads,
        },
    );
    let mut extra = Vec::new();
    for (k, values) in &config.http.headers {
        for v in values {
            match (
                HeaderName::try_from(k.as_str()),
                HeaderValue::try_from(v.as_str()),
            ) {
                (Ok(k), Ok(v)) => extra.push((k, v)),
                _ => {
                    tracing::warn!(header = %k, "http.headers entry is not a valid header; ignored")
                }
            }
        }
    }
    if let Some(m) = &metrics {
        m.watch_cache(store.cache().clone());
    }
    AppState {
        store,
        metrics,
        delete_enabled: config.storage.delete.enabled,
        read_only: config.storage.maintenance.readonly.enabled,
        access_log: !config.log.accesslog.disabled,
        extra_headers: Arc::new(extra),
        on_delete: None,
    }
}

/// Serves `app` on `listener` until `shutdown` completes, then drains for at most
/// `drain` before returning. Handlers can see the peer address (`ConnectInfo`).
pub async fn serve(
    listener: TcpListener,
    app: Router,
    drain: Duration,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    let signal = async move {
        shutdown.await;
        let _ = tx.send(());
    };
    // Without TCP_NODELAY a streamed body waits behind its headers for the client's
    // delayed ACK (40 ms per small blob GET on one connection).
    use axum::serve::ListenerExt;
    let listener = listener.tap_io(|tcp| {
        let _ = tcp.set_nodelay(true);
    });
    let server = axum::serve(
        listener,
        app.into_make_service_with_connect_info::<std::net::SocketAddr>(),
    )
    .with_graceful_shutdown(signal);
    let deadline = async move {
        if rx.await.is_ok() {
            tokio::time::sleep(drain).await;
        } else {
            std::future::pending::<()>().await;
        }
    };
    tokio::select! {
        r = server => r,
        _ = deadline => {
            tracing::warn!(?drain, "drain timeout reached; closing remaining connections");
            Ok(())
        }
    }
}
