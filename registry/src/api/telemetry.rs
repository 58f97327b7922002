//! The request layer around the whole application (registry API, artifacts, admin): one
//! tracing span per request, the request id, the per-request access log line, the HTTP
//! metrics and the request summary that notifications are made from. It is one layer
//! of its own (`layer`), outside every other, so the handlers know nothing of it.
//!
//! - **Span.** `request{id, method, route, repo, reference}`; `status`, `bytes_in`,
//!   `bytes_out` and `duration_ms` are recorded when the response body ends (or is
//!   dropped), and the access log line (`drydock::access`) is written inside it then.
//!   Handlers run inside the span, so an `Internal` error's one log line carries it.
//! - **Request id.** A client's `X-Request-Id` (1–128 visible ASCII characters) is kept;
//!   otherwise one is made. It is returned in `X-Request-Id` and put in the request's
//!   extensions ([`RequestId`]).
//! - **Metrics.** When the server keeps them, under CNCF Distribution's names and label
//!   values (its route names as `handler`, lower-case methods): requests by route kind,
//!   method and code, their duration until the last byte, in flight, request and
//!   response body sizes, upload bodies in progress. Labels never carry a repository
//!   name.

use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::task::{Context, Poll};
use std::time::Instant;

use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::{Request, State};
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode};
use axum::middleware::{self, Next};
use axum::response::Response;
use http_body_util::BodyExt;
use tracing::Instrument;

use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;

use crate::metrics::{HandlerLabels, Metrics, RequestLabels};

/// The request id of a request (in its extensions, and returned as `X-Request-Id`).
#[derive(Debug, Clone)]
pub struct RequestId(pub String);

/// Who made a request, as an inner layer (authentication) determined it: put it in the
/// *response's* extensions and notifications name it as the event's actor.
#[derive(Debug, Clone)]
pub struct Actor(pub String);

/// What a finished request looked like, for whoever turns requests into events.
#[derive(Debug, Clone)]
pub struct Summary {
    pub id: String,
    pub method: Method,
    pub route: RouteKind,
    /// The repository (or artifact branch) part of the path, unvalidated.
    pub repo: Option<String>,
    /// The tag or digest after `manifests/` / `blobs/`, unvalidated.
    pub reference: Option<String>,
    pub status: StatusCode,
    pub query: Option<String>,
    pub request_headers: HeaderMap,
    pub response_headers: HeaderMap,
    pub peer: Option<std::net::SocketAddr>,
    pub actor: Option<String>,
    pub bytes_in: u64,
}

/// Something that wants to see every answered request (notifications). Called once the
/// response head is ready; must not block.
pub trait RequestSink: Send + Sync {
    fn finished(&self, summary: Summary);
}

/// What kind of route a path is: the label of the HTTP metrics (a bounded set).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RouteKind {
    Base,
    Catalog,
    Manifest,
    Blob,
    /// `…/blobs/uploads/`: starting an upload (or a monolithic one, or a mount).
    BlobUpload,
    /// `…/blobs/uploads/<id>`: an upload session (Distribution's `blob-upload-chunk`).
    BlobUploadChunk,
    Tags,
    Referrers,
    Artifacts,
    Admin,
    Health,
    Other,
}

impl RouteKind {
    /// How many kinds there are (`Other` is the last).
    const COUNT: usize = RouteKind::Other as usize + 1;

    pub fn name(self) -> &'static str {
        match self {
            RouteKind::Base => "base",
            RouteKind::Catalog => "catalog",
            RouteKind::Manifest => "manifest",
            RouteKind::Blob => "blob",
            RouteKind::BlobUpload => "blob_upload",
            RouteKind::BlobUploadChunk => "blob_upload_chunk",
            RouteKind::Tags => "tags",
            RouteKind::Referrers => "referrers",
            RouteKind::Artifacts => "artifacts",
            RouteKind::Admin => "admin",
            RouteKind::Health => "health",
            RouteKind::Other => "other",
        }
    }

    /// Classifies a path as `Endpoint::parse` would, from the right, without validating
    /// anything; returns the kind, the repository part and the reference.
    pub fn of(path: &str) -> (RouteKind, Option<&str>, Option<&str>) {
        let Some(rest) = path.strip_prefix("/v2/") else {
            let kind = if path == "/v2" {
                RouteKind::Base
            } else if path == "/artifacts" || path.starts_with("/artifacts/") {
                RouteKind::Artifacts
            } else if path.starts_with("/admin/") {
                RouteKind::Admin
            } else if matches!(path, "/livez" | "/readyz" | "/healthz") {
                RouteKind::Health
            } else {
                RouteKind::Other
            };
            return (kind, None, None);
        };
        match rest {
            "" => return (RouteKind::Base, None, None),
            "_catalog" => return (RouteKind::Catalog, None, None),
            _ => {}
        }
        let cut = |n: usize| {
            // The repository: everything before the last `n` segments.
            let mut end = rest.len();
            for _ in 0..n {
                end = rest[..end].rfind('/').unwrap_or(0);
            }
            (end > 0).then(|| &rest[..end])
        };
        let mut seg = rest.rsplit('/');
        let last = seg.next().unwrap_or("");
        let second = seg.next().unwrap_or("");
        let third = seg.next().unwrap_or("");
        match (third, second, last) {
            (_, "tags", "list") => (RouteKind::Tags, cut(2), None),
            ("blobs", "uploads", "") => (RouteKind::BlobUpload, cut(3), None),
            ("blobs", "uploads", _) => (RouteKind::BlobUploadChunk, cut(3), None),
            (_, "blobs", "uploads") => (RouteKind::BlobUpload, cut(2), None),
            (_, "blobs", d) => (RouteKind::Blob, cut(2), Some(d)),
            (_, "manifests", r) => (RouteKind::Manifest, cut(2), Some(r)),
            (_, "referrers", d) => (RouteKind::Referrers, cut(2), Some(d)),
            _ => (RouteKind::Other, None, None),
        }
    }
}

/// What the layer needs: the server's metrics (if kept), whether to write the access
/// log line, and who wants request summaries.
#[derive(Clone, Default)]
pub struct Telemetry {
    pub metrics: Option<Arc<Metrics>>,
    pub access_log: bool,
    pub sink: Option<Arc<dyn RequestSink>>,
    /// `http.trustedproxies`: whose `X-Forwarded-For` names the client in the logs.
    pub trusted_proxies: Arc<[std::net::IpAddr]>,
}

/// Wraps `router` in the request layer.
pub fn layer<S: Clone + Send + Sync + 'static>(router: Router<S>, t: Telemetry) -> Router<S> {
    let state = Layer {
        t,
        handlers: std::array::from_fn(|_| OnceLock::new()),
    };
    router.layer(middleware::from_fn_with_state(Arc::new(state), observe))
}

/// The layer's state: the configuration, and each route kind's own series resolved on
/// first use, so a request looks up only the two labelled by its method and status.
struct Layer {
    t: Telemetry,
    handlers: [OnceLock<HandlerMetrics>; RouteKind::COUNT],
}

/// One route kind's series (metric handles share their value with the registry's).
struct HandlerMetrics {
    in_flight: Gauge,
    request_size: Histogram,
    response_size: Histogram,
}

impl Layer {
    /// `route`'s series, when the server keeps metrics.
    fn handler(&self, route: RouteKind) -> Option<&HandlerMetrics> {
        let m = self.t.metrics.as_ref()?;
        Some(self.handlers[route as usize].get_or_init(|| {
            let l = HandlerLabels {
                handler: route.name(),
            };
            HandlerMetrics {
                in_flight: m.http.in_flight.get_or_create(&l).clone(),
                request_size: m.http.request_size.get_or_create(&l).clone(),
                response_size: m.http.response_size.get_or_create(&l).clone(),
            }
        }))
    }
}

const REQUEST_ID: &str = "x-request-id";

/// A client's request id when it is one we can log and echo safely.
fn client_request_id(headers: &HeaderMap) -> Option<String> {
    let v = headers.get(REQUEST_ID)?.to_str().ok()?;
    (!v.is_empty() && v.len() <= 128 && v.bytes().all(|b| b.is_ascii_graphic()))
        .then(|| v.to_owned())
}

/// A new request id: a per-process random prefix and a counter (no system call).
fn new_request_id() -> String {
    static NEXT: AtomicU64 = AtomicU64::new(0);
    static PREFIX: std::sync::OnceLock<u32> = std::sync::OnceLock::new();
    let prefix = *PREFIX.get_or_init(|| uuid::Uuid::new_v4().as_u128() as u32);
    format!("{prefix:08x}-{:x}", NEXT.fetch_add(1, Ordering::Relaxed))
}

/// The `method` label: lower case, as Distribution's metrics write it.
fn method_name(m: &Method) -> &'static str {
    match *m {
        Method::GET => "get",
        Method::HEAD => "head",
        Method::PUT => "put",
        Method::POST => "post",
        Method::PATCH => "patch",
        Method::DELETE => "delete",
        Method::OPTIONS => "options",
        _ => "other",
    }
}

async fn observe(State(layer): State<Arc<Layer>>, mut req: Request, next: Next) -> Response {
    let t = &layer.t;
    let start = Instant::now();
    let id = client_request_id(req.headers()).unwrap_or_else(new_request_id);
    let (route, repo, reference) = RouteKind::of(req.uri().path());
    let method = req.method().clone();
    let peer = crate::auth::Peer::of(req.extensions());
    let client = crate::auth::client_addr(peer.as_ref(), req.headers(), &t.trusted_proxies);
    let span = tracing::info_span!(
        "request",
        id = %id,
        client = %client.as_deref().unwrap_or(""),
        user = tracing::field::Empty,
        method = %method,
        route = route.name(),
        repo = repo,
        reference = reference,
        status = tracing::field::Empty,
        bytes_in = tracing::field::Empty,
        bytes_out = tracing::field::Empty,
        duration_ms = tracing::field::Empty,
    );
    let summary = t.sink.as_ref().map(|_| Summary {
        id: id.clone(),
        method: method.clone(),
        route,
        repo: repo.map(str::to_owned),
        reference: reference.map(str::to_owned),
        status: StatusCode::OK,
        query: req.uri().query().map(str::to_owned),
        request_headers: req.headers().clone(),
        response_headers: HeaderMap::new(),
        peer: peer.as_ref().map(|p| p.addr),
        actor: None,
        bytes_in: 0,
    });
    let uploading = matches!(route, RouteKind::BlobUpload | RouteKind::BlobUploadChunk)
        && matches!(method, Method::POST | Method::PATCH | Method::PUT);
    if let Some(h) = layer.handler(route) {
        h.in_flight.inc();
    }
    if let (Some(m), true) = (&t.metrics, uploading) {
        m.http.uploads_in_progress.inc();
    }
    let bytes_in = Arc::new(AtomicU64::new(0));
    let counter = bytes_in.clone();
    req.extensions_mut().insert(RequestId(id.clone()));
    let req = req.map(|b| {
        Body::new(b.map_frame(move |f| {
            if let Some(d) = f.data_ref() {
                counter.fetch_add(d.len() as u64, Ordering::Relaxed);
            }
            f
        }))
    });
    let mut resp = next.run(req).instrument(span.clone()).await;
    if let Ok(v) = HeaderValue::from_str(&id) {
        resp.headers_mut().insert(REQUEST_ID, v);
    }
    let status = resp.status();
    span.record("status", status.as_u16());
    if let (Some(sink), Some(mut s)) = (&t.sink, summary) {
        s.status = status;
        s.response_headers = resp.headers().clone();
        s.actor = resp.extensions().get::<Actor>().map(|a| a.0.clone());
        s.bytes_in = bytes_in.load(Ordering::Relaxed);
        sink.finished(s);
    }
    let finish = Finish {
        layer: layer.clone(),
        span,
        start,
        route,
        method: method_name(&method),
        status,
        uploading,
        bytes_in,
        bytes_out: 0,
    };
    resp.map(|body| {
        Body::new(Observed {
            inner: body,
            finish: Some(finish),
        })
    })
}

/// Records the request when its response body ends or is dropped (a client that
/// went away): duration, bytes, status, the access log line.
struct Finish {
    layer: Arc<Layer>,
    span: tracing::Span,
    start: Instant,
    route: RouteKind,
    method: &'static str,
    status: StatusCode,
    uploading: bool,
    bytes_in: Arc<AtomicU64>,
    bytes_out: u64,
}

impl Drop for Finish {
    fn drop(&mut self) {
        let took = self.start.elapsed();
        let bytes_in = self.bytes_in.load(Ordering::Relaxed);
        if let (Some(m), Some(h)) = (&self.layer.t.metrics, self.layer.handler(self.route)) {
            let labels = RequestLabels {
                handler: self.route.name(),
                method: self.method,
                code: self.status.as_u16(),
            };
            m.http.requests.get_or_create(&labels).inc();
            m.http
                .duration
                .get_or_create(&labels)
                .observe(took.as_secs_f64());
            h.in_flight.dec();
            h.request_size.observe(bytes_in as f64);
            h.response_size.observe(self.bytes_out as f64);
            if self.uploading {
                m.http.uploads_in_progress.dec();
            }
        }
        let ms = took.as_secs_f64() * 1e3;
        self.span.record("bytes_in", bytes_in);
        self.span.record("bytes_out", self.bytes_out);
        self.span.record("duration_ms", ms);
        if self.layer.t.access_log {
            let _in = self.span.enter();
            // The span carries every field (status, bytes, duration recorded above).
            tracing::info!(target: "drydock::access", "request");
        }
    }
}

/// A response body that counts what it sends and finishes the request at its end.
struct Observed {
    inner: Body,
    finish: Option<Finish>,
}

impl http_body::Body for Observed {
    type Data = Bytes;
    type Error = axum::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<Bytes>, axum::Error>>> {
        let this = self.get_mut();
        let r = Pin::new(&mut this.inner).poll_frame(cx);
        match &r {
            Poll::Ready(Some(Ok(f))) => {
                if let (Some(d), Some(fin)) = (f.data_ref(), this.finish.as_mut()) {
                    fin.bytes_out += d.len() as u64;
                }
            }
            Poll::Ready(None) => drop(this.finish.take()),
            _ => {}
        }
        r
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.inner.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn route_kinds_from_the_right() {
        let d = "sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";
        let table: Vec<(String, RouteKind, Option<&str>, Option<&str>)> = vec![
            ("/v2/".into(), RouteKind::Base, None, None),
            ("/v2".into(), RouteKind::Base, None, None),
            ("/v2/_catalog".into(), RouteKind::Catalog, None, None),
            (
                "/v2/a/b/tags/list".into(),
                RouteKind::Tags,
                Some("a/b"),
                None,
            ),
            (
                "/v2/a/manifests/latest".into(),
                RouteKind::Manifest,
                Some("a"),
                Some("latest"),
            ),
            (
                format!("/v2/x/blobs/uploads/blobs/{d}"),
                RouteKind::Blob,
                Some("x/blobs/uploads"),
                Some(d),
            ),
            (
                "/v2/a/blobs/uploads/".into(),
                RouteKind::BlobUpload,
                Some("a"),
                None,
            ),
            (
                "/v2/a/blobs/uploads".into(),
                RouteKind::BlobUpload,
                Some("a"),
                None,
            ),
            (
                "/v2/a/blobs/uploads/u1".into(),
                RouteKind::BlobUploadChunk,
                Some("a"),
                None,
            ),
            (
                format!("/v2/r/referrers/{d}"),
                RouteKind::Referrers,
                Some("r"),
                Some(d),
            ),
            (
                "/v2/manifests/x".into(),
                RouteKind::Manifest,
                None,
                Some("x"),
            ),
            ("/v2/a/b/c".into(), RouteKind::Other, None, None),
            (
                "/artifacts/main/v1".into(),
                RouteKind::Artifacts,
                None,
                None,
            ),
            ("/admin/gc".into(), RouteKind::Admin, None, None),
            ("/readyz".into(), RouteKind::Health, None, None),
            ("/favicon.ico".into(), RouteKind::Other, None, None),
        ];
        for (path, kind, repo, reference) in table {
            let (k, r, f) = RouteKind::of(&path);
            assert_eq!((k, r, f), (kind, repo, reference), "{path}");
        }
    }

    #[test]
    fn request_ids_are_kept_when_sane_and_made_otherwise() {
        let mut h = HeaderMap::new();
        h.insert(REQUEST_ID, HeaderValue::from_static("abc-123"));
        assert_eq!(client_request_id(&h).as_deref(), Some("abc-123"));
        h.insert(REQUEST_ID, HeaderValue::from_static("has space"));
        assert_eq!(client_request_id(&h), None);
        let long = "x".repeat(129);
        h.insert(REQUEST_ID, HeaderValue::from_str(&long).unwrap());
        assert_eq!(client_request_id(&h), None);
        assert_ne!(new_request_id(), new_request_id());
    }
}
