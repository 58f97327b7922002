//! Wiring a configuration into a running server: `serve(listener, app, options,
//! shutdown)` takes a listener the caller already bound (tests bind `127.0.0.1:0`) and
//! serves HTTP/1.1 connections on it with hyper: at most `http.max_connections` at once
//! (the rest wait in the listen backlog), each under the `http.timeouts` of [`conn`]. A
//! failed `accept` (the open-file limit) is logged, and accepting resumes when a
//! connection closes. A graceful shutdown stops accepting, closes idle connections and
//! waits for requests in flight up to the drain timeout.

mod conn;

use std::convert::Infallible;
use std::future::Future;
use std::pin::pin;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::extract::ConnectInfo;
use axum::http::{HeaderName, HeaderValue, Request};
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;
use tokio::sync::{Notify, Semaphore, watch};
use tower::ServiceExt;

use crate::api::AppState;
use crate::config::{Config, TimeoutsConfig};
use crate::metrics::Metrics;
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
        manifest_memory: crate::api::manifest_memory(config.oci.manifest_memory),
    }
}

/// How [`serve`] serves connections.
#[derive(Clone, Debug)]
pub struct ServeOptions {
    /// How long a graceful shutdown waits for requests in flight.
    pub drain: Duration,
    pub timeouts: TimeoutsConfig,
    pub max_connections: usize,
    /// Where connection counts and timeouts are recorded.
    pub metrics: Option<Arc<Metrics>>,
}

impl ServeOptions {
    /// The options `config` asks for, recording into `metrics`.
    pub fn from_config(config: &Config, metrics: Option<Arc<Metrics>>) -> ServeOptions {
        ServeOptions {
            drain: config.drain_timeout(),
            timeouts: config.http.timeouts,
            max_connections: config.http.max_connections,
            metrics,
        }
    }
}

/// Serves `app` on `listener` until `shutdown` completes, then drains for at most
/// `options.drain` before returning. Handlers can see the peer address (`ConnectInfo`).
pub async fn serve(
    listener: TcpListener,
    app: Router,
    options: ServeOptions,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let slots = Arc::new(Semaphore::new(options.max_connections.max(1)));
    // Every connection holds a sender and watches for the receiver to go: the signal
    // to shut down gracefully.
    let (signal_tx, signal_rx) = watch::channel(());
    // Every connection holds a receiver; when none is left, all have ended.
    let (done_tx, done_rx) = watch::channel(());
    // A connection ended (its descriptor is free: accept again after a failure).
    let ended = Arc::new(Notify::new());
    let mut shutdown = pin!(shutdown);
    let mut at_cap = false;
    let mut failing: u64 = 0;
    loop {
        let permit = match slots.clone().try_acquire_owned() {
            Ok(p) => p,
            Err(_) => {
                if let Some(m) = &options.metrics {
                    m.http.at_cap.inc();
                }
                if !at_cap {
                    tracing::warn!(
                        max_connections = options.max_connections,
                        "http.max_connections connections are open; new ones wait in the \
                         listen backlog until one closes"
                    );
                    at_cap = true;
                }
                tokio::select! {
                    p = slots.clone().acquire_owned() => match p {
                        Ok(p) => p,
                        Err(_) => break,
                    },
                    _ = &mut shutdown => break,
                }
            }
        };
        if at_cap && slots.available_permits() > 0 {
            at_cap = false;
        }
        let accepted = tokio::select! {
            r = listener.accept() => r,
            _ = &mut shutdown => break,
        };
        let (tcp, peer) = match accepted {
            Ok(c) => c,
            // The client gave up before it was accepted: nothing to do.
            Err(e) if is_connection_error(&e) => continue,
            Err(e) => {
                if let Some(m) = &options.metrics {
                    m.http.accept_errors.inc();
                }
                if failing == 0 {
                    tracing::error!(
                        error = %e,
                        open_files_limit = open_files_limit(),
                        "accept: {e}; new connections wait until one closes"
                    );
                }
                failing += 1;
                // Until a connection closes (freeing a descriptor), or a second passes
                // (descriptors freed elsewhere).
                tokio::select! {
                    _ = ended.notified() => {}
                    _ = tokio::time::sleep(Duration::from_secs(1)) => {}
                    _ = &mut shutdown => break,
                }
                continue;
            }
        };
        if failing > 0 {
            tracing::info!(failed = failing, "accepting connections again");
            failing = 0;
        }
        let _ = tcp.set_nodelay(true);
        let state = conn::ConnState::new(options.timeouts, options.metrics.clone());
        let io = TokioIo::new(conn::TimedIo::new(tcp, state.clone()));
        let router = app.clone();
        let service = hyper::service::service_fn(move |req: Request<Incoming>| {
            let n = state.request_started();
            let mut req = req.map(|b| Body::new(conn::TimedBody::new(b, state.clone())));
            req.extensions_mut().insert(ConnectInfo(peer));
            let state = state.clone();
            let answer = router.clone().oneshot(req);
            async move {
                let resp = match answer.await {
                    Ok(r) => r,
                    Err(never) => match never {},
                };
                Ok::<_, Infallible>(resp.map(|b| Body::new(conn::Ending::new(b, state, n))))
            }
        });
        let signal_tx = signal_tx.clone();
        let done_rx = done_rx.clone();
        let ended = ended.clone();
        let metrics = options.metrics.clone();
        tokio::spawn(async move {
            if let Some(m) = &metrics {
                m.http.connections.inc();
            }
            // Everything the connection owns (its request in flight too) is gone when
            // this returns, before the connection counts as closed.
            serve_connection(io, service, signal_tx, peer).await;
            if let Some(m) = &metrics {
                m.http.connections.dec();
            }
            drop(permit);
            drop(done_rx);
            ended.notify_one();
        });
    }
    drop(listener);
    drop(signal_rx);
    drop(done_rx);
    if tokio::time::timeout(options.drain, done_tx.closed())
        .await
        .is_err()
    {
        tracing::warn!(drain = ?options.drain, "drain timeout reached; closing remaining connections");
    }
    Ok(())
}

/// Serves one connection until it ends; from `signal` on, gracefully (the request in
/// flight is finished, then the connection closes).
async fn serve_connection<S>(
    io: TokioIo<conn::TimedIo<tokio::net::TcpStream>>,
    service: S,
    signal: watch::Sender<()>,
    peer: std::net::SocketAddr,
) where
    S: hyper::service::HttpService<Incoming, ResBody = Body>,
    S::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let mut builder = hyper::server::conn::http1::Builder::new();
    // The head's deadline is the connection's own (`conn`).
    builder.header_read_timeout(None);
    let mut connection = pin!(builder.serve_connection(io, service));
    let mut signal = pin!(signal.closed());
    let mut draining = false;
    loop {
        tokio::select! {
            r = connection.as_mut() => {
                if let Err(e) = r {
                    tracing::debug!(%peer, error = %e, "connection ended");
                }
                return;
            }
            _ = &mut signal, if !draining => {
                connection.as_mut().graceful_shutdown();
                draining = true;
            }
        }
    }
}

/// An accept error that concerns only the connection being accepted.
fn is_connection_error(e: &std::io::Error) -> bool {
    use std::io::ErrorKind::*;
    matches!(
        e.kind(),
        ConnectionRefused | ConnectionAborted | ConnectionReset
    )
}

/// The soft limit on open files (`RLIMIT_NOFILE`), for the log line of a failed accept.
fn open_files_limit() -> libc::rlim_t {
    let mut r = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes into the struct we pass.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut r) } == 0 {
        r.rlim_cur
    } else {
        0
    }
}
