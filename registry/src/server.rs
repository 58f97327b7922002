//! Wiring a configuration into a running server: `serve(listener, app, options,
//! shutdown)` takes a listener the caller already bound (tests bind `127.0.0.1:0`) and
//! serves HTTP/1.1 connections on it with hyper, or with `options.tls` TLS connections
//! speaking HTTP/2 or HTTP/1.1 as ALPN chose: at most `http.max_connections` at once
//! (the rest wait in the listen backlog), each under the `http.timeouts` of [`conn`]
//! (a TLS handshake counts as the wait for the first request head). A
//! failed `accept` (the open-file limit) is logged, and accepting resumes when a
//! connection closes. A graceful shutdown stops accepting, closes idle connections and
//! waits for requests in flight up to the drain timeout.

mod conn;

pub use conn::requests_in_flight;

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
use crate::storage::metered::Metered;
use crate::storage::s3::S3Driver;
use crate::storage::{Driver, FsDriver};
use crate::store::{Store, StoreOptions};

/// Builds the shared state of a server from its configuration: a store on the S3
/// driver when `storage.s3` is set, else on the filesystem root. Makes no request to a
/// bucket (the binary checks it before it serves); an error says why the driver could
/// not be built.
pub fn state_from_config(config: &Config) -> Result<AppState, String> {
    state_coordinated(config, None)
}

/// [`state_from_config`], the store's writers and removers coordinating through
/// `liveness` when given (replica mode: PostgreSQL, shared by every replica, so the
/// store keeps no cache).
pub fn state_coordinated(
    config: &Config,
    liveness: Option<Arc<dyn crate::liveness::Liveness>>,
) -> Result<AppState, String> {
    let metrics = config.metrics_enabled().then(crate::metrics::Metrics::new);
    let options = StoreOptions {
        manifest_max_bytes: config.oci.manifest_max_bytes,
        mount_without_from: config.oci.mount_without_from,
        pending_ttl: config.gc.pending_ttl,
        post_process: crate::artifacts::PostProcess::from_config(&config.artifacts.post_process),
        direct_writes: config.storage.filesystem.directwrites,
        max_uploads: config.oci.max_uploads,
        redirect: !config.storage.redirect.disable,
    };
    let store = match &config.storage.s3 {
        Some(c) => {
            let s3 = S3Driver::new(c.clone()).map_err(|e| format!("storage.s3: {e}"))?;
            let mut driver: Arc<dyn Driver> = Arc::new(s3);
            if let Some(m) = &metrics {
                driver = Arc::new(Metered::new(driver, m.storage.clone()));
            }
            Store::on_driver(driver, options)
        }
        None => {
            let mut driver = FsDriver::new(config.storage.filesystem.rootdirectory.clone());
            if let Some(m) = &metrics {
                driver = driver.with_metrics(m.storage.clone());
            }
            Store::new(driver, options)
        }
    };
    let store = match liveness {
        Some(l) => store.with_liveness(l),
        None => store,
    };
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
    Ok(AppState {
        store,
        metrics,
        delete_enabled: config.storage.delete.enabled,
        read_only: config.storage.maintenance.readonly.enabled,
        access_log: !config.log.accesslog.disabled,
        extra_headers: Arc::new(extra),
        on_delete: None,
        manifest_memory: crate::api::manifest_memory(config.oci.manifest_memory),
    })
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
    /// Serve TLS (`http.tls`, loaded by the caller: a file that does not load is a
    /// start-up error).
    pub tls: Option<Arc<crate::tls::Tls>>,
}

impl ServeOptions {
    /// The options `config` asks for, recording into `metrics`.
    pub fn from_config(config: &Config, metrics: Option<Arc<Metrics>>) -> ServeOptions {
        ServeOptions {
            drain: config.drain_timeout(),
            timeouts: config.http.timeouts,
            max_connections: config.http.max_connections,
            metrics,
            tls: None,
        }
    }
}

/// Serves `app` on `listener` until `shutdown` completes, then drains for at most
/// `options.drain` before returning. Handlers can see the peer (`ConnectInfo` of its
/// `SocketAddr`, and of an [`auth::Peer`](crate::auth::Peer) with what TLS settled).
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
        let io = conn::TimedIo::new(tcp, state.clone());
        // The TLS configuration of this moment: a reload does not touch this connection.
        let acceptor = options.tls.as_ref().map(|t| t.acceptor());
        let router = app.clone();
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
            match acceptor {
                None => {
                    let who = crate::auth::Peer {
                        addr: peer,
                        cert_user: None,
                        tls: false,
                    };
                    let service = connection_service(router, state, who);
                    serve_connection(TokioIo::new(io), false, service, signal_tx, peer).await;
                }
                Some(acceptor) => match acceptor.accept(io).await {
                    Ok(tls) => {
                        let (h2, cert_user) = crate::tls::negotiated(tls.get_ref().1);
                        let who = crate::auth::Peer {
                            addr: peer,
                            cert_user,
                            tls: true,
                        };
                        let service = connection_service(router, state, who);
                        serve_connection(TokioIo::new(tls), h2, service, signal_tx, peer).await;
                    }
                    Err(e) => tracing::debug!(%peer, error = %e, "TLS handshake failed"),
                },
            }
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

/// The service of one connection: each request gets the connection's body wait, its
/// peer (`ConnectInfo`), and a response that tells the connection when it has ended.
fn connection_service(
    router: Router,
    state: Arc<conn::ConnState>,
    who: crate::auth::Peer,
) -> impl hyper::service::Service<
    Request<Incoming>,
    Response = axum::http::Response<Body>,
    Error = Infallible,
    Future = impl Future<Output = Result<axum::http::Response<Body>, Infallible>> + Send + 'static,
> {
    hyper::service::service_fn(move |req: Request<Incoming>| {
        state.request_started();
        let mut req = req.map(|b| Body::new(conn::TimedBody::new(b, state.clone())));
        req.extensions_mut().insert(ConnectInfo(who.addr));
        req.extensions_mut().insert(ConnectInfo(who.clone()));
        let state = state.clone();
        let answer = router.clone().oneshot(req);
        async move {
            let resp = match answer.await {
                Ok(r) => r,
                Err(never) => match never {},
            };
            Ok::<_, Infallible>(resp.map(|b| Body::new(conn::Ending::new(b, state))))
        }
    })
}

/// Serves one connection (HTTP/2 when `h2`, else HTTP/1.1) until it ends; from
/// `signal` on, gracefully (the requests in flight are finished, then the connection
/// closes).
async fn serve_connection<I, S>(
    io: I,
    h2: bool,
    service: S,
    signal: watch::Sender<()>,
    peer: std::net::SocketAddr,
) where
    I: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
    S: hyper::service::HttpService<Incoming, ResBody = Body> + Send + 'static,
    S::Future: Send + 'static,
    S::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    if h2 {
        let builder =
            hyper::server::conn::http2::Builder::new(hyper_util::rt::TokioExecutor::new());
        let connection = builder.serve_connection(io, service);
        drive(connection, |c| c.graceful_shutdown(), signal, peer).await;
    } else {
        let mut builder = hyper::server::conn::http1::Builder::new();
        // The head's deadline is the connection's own (`conn`).
        builder.header_read_timeout(None);
        let connection = builder.serve_connection(io, service);
        drive(connection, |c| c.graceful_shutdown(), signal, peer).await;
    }
}

/// Runs `connection` to its end, asking it to shut down gracefully once `signal` is
/// closed.
async fn drive<C, E>(
    connection: C,
    graceful: impl FnOnce(std::pin::Pin<&mut C>),
    signal: watch::Sender<()>,
    peer: std::net::SocketAddr,
) where
    C: Future<Output = Result<(), E>>,
    E: std::fmt::Display,
{
    let mut connection = pin!(connection);
    let mut signal = pin!(signal.closed());
    let mut graceful = Some(graceful);
    loop {
        tokio::select! {
            r = connection.as_mut() => {
                if let Err(e) = r {
                    tracing::debug!(%peer, error = %e, "connection ended");
                }
                return;
            }
            _ = &mut signal, if graceful.is_some() => {
                if let Some(g) = graceful.take() {
                    g(connection.as_mut());
                }
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
