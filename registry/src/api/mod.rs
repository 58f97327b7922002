//! The HTTP API: `/v2/` of the OCI distribution spec. One wildcard route takes every
//! `/v2/...` path and [`Endpoint::parse`] reads it from the right (names may contain
//! slashes, and even `blobs` or `manifests` as components) into a typed endpoint, so
//! a name, tag or digest is validated before any handler sees it. The raw, undecoded
//! path is parsed: `%2e%2e` is just an invalid name.

pub mod error;
pub mod framing;
pub mod telemetry;

pub(crate) mod artifacts;
pub(crate) mod blobs;
pub(crate) mod discovery;
mod manifests;
pub(crate) mod uploads;

use std::sync::Arc;

use axum::Router;
use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{HeaderMap, HeaderName, HeaderValue, Method, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{any, get};

use crate::digest::Digest;
use crate::names::{Reference, RepoName, Tag};
use crate::store::Store;
pub use error::Error;

pub(crate) use artifacts::branch_action as artifacts_branch;

pub type ApiResult = Result<Response, Error>;

/// Something that wants to know when content was deleted (the online collector).
pub trait DeleteListener: Send + Sync {
    fn deleted(&self);
}

/// What every handler shares.
#[derive(Clone)]
pub struct AppState {
    pub store: Store,
    pub delete_enabled: bool,
    pub read_only: bool,
    pub access_log: bool,
    pub extra_headers: Arc<Vec<(HeaderName, HeaderValue)>>,
    pub on_delete: Option<Arc<dyn DeleteListener>>,
    /// The server's metrics, when it keeps them (see `telemetry`).
    pub metrics: Option<Arc<crate::metrics::Metrics>>,
    /// One permit per byte of manifest body held (`oci.manifest_memory`).
    pub manifest_memory: Arc<tokio::sync::Semaphore>,
}

impl AppState {
    pub fn new(store: Store) -> AppState {
        AppState {
            store,
            delete_enabled: true,
            read_only: false,
            access_log: true,
            extra_headers: Arc::new(Vec::new()),
            on_delete: None,
            metrics: None,
            manifest_memory: manifest_memory(64 * 1024 * 1024),
        }
    }

    fn check_write(&self) -> Result<(), Error> {
        if self.read_only {
            return Err(Error::Unsupported(
                "the registry is in read-only mode".into(),
            ));
        }
        Ok(())
    }

    fn check_delete(&self) -> Result<(), Error> {
        self.check_write()?;
        if !self.delete_enabled {
            return Err(Error::Unsupported(
                "deletes are disabled (storage.delete.enabled is false)".into(),
            ));
        }
        Ok(())
    }

    fn deleted(&self) {
        if let Some(l) = &self.on_delete {
            l.deleted();
        }
    }
}

/// The budget of manifest body bytes held at once.
pub fn manifest_memory(bytes: u64) -> Arc<tokio::sync::Semaphore> {
    let permits = usize::try_from(bytes)
        .unwrap_or(usize::MAX)
        .min(tokio::sync::Semaphore::MAX_PERMITS);
    Arc::new(tokio::sync::Semaphore::new(permits))
}

/// A parsed `/v2/<name>/...` path.
#[derive(Debug)]
pub enum Endpoint {
    Manifest(RepoName, Result<Reference, String>),
    Blob(RepoName, Digest),
    UploadStart(RepoName),
    Upload(RepoName, String),
    Tags(RepoName),
    Referrers(RepoName, Digest),
}

impl Endpoint {
    /// The repository the endpoint is in.
    pub fn repo(&self) -> &RepoName {
        match self {
            Endpoint::Manifest(n, _)
            | Endpoint::Blob(n, _)
            | Endpoint::UploadStart(n)
            | Endpoint::Upload(n, _)
            | Endpoint::Tags(n)
            | Endpoint::Referrers(n, _) => n,
        }
    }

    /// Parses the part of the path after `/v2/`.
    pub fn parse(rest: &str) -> Result<Endpoint, Error> {
        let seg: Vec<&str> = rest.split('/').collect();
        let n = seg.len();
        let name = |upto: usize| RepoName::parse(&seg[..upto].join("/")).map_err(Error::from);
        if n >= 3 && seg[n - 2] == "tags" && seg[n - 1] == "list" {
            return Ok(Endpoint::Tags(name(n - 2)?));
        }
        if n >= 4 && seg[n - 3] == "blobs" && seg[n - 2] == "uploads" {
            let repo = name(n - 3)?;
            return Ok(if seg[n - 1].is_empty() {
                Endpoint::UploadStart(repo)
            } else {
                Endpoint::Upload(repo, seg[n - 1].to_owned())
            });
        }
        if n >= 3 && seg[n - 2] == "blobs" && seg[n - 1] == "uploads" {
            return Ok(Endpoint::UploadStart(name(n - 2)?));
        }
        if n >= 3 && seg[n - 2] == "blobs" {
            let repo = name(n - 2)?;
            return Ok(Endpoint::Blob(repo, seg[n - 1].parse()?));
        }
        if n >= 3 && seg[n - 2] == "manifests" {
            let repo = name(n - 2)?;
            let r = seg[n - 1];
            let reference = if r.contains(':') {
                r.parse::<Digest>().map(Reference::Digest).map_err(|e| e.0)
            } else {
                Tag::parse(r).map(Reference::Tag).map_err(|e| e.0)
            };
            return Ok(Endpoint::Manifest(repo, reference));
        }
        if n >= 3 && seg[n - 2] == "referrers" {
            let repo = name(n - 2)?;
            return Ok(Endpoint::Referrers(repo, seg[n - 1].parse()?));
        }
        Err(Error::NotFound)
    }
}

/// The router of the whole registry API. Its handlers share the state through one
/// `Arc`: axum clones a router's state for every request (twice), and `AppState` is
/// a dozen reference counts and a path.
pub fn router(state: AppState) -> Router {
    let headers = state.extra_headers.clone();
    Router::new()
        .route("/v2", get(base))
        .route("/v2/", get(base))
        .route("/v2/_catalog", get(discovery::catalog))
        .route("/v2/{*rest}", any(dispatch))
        .route("/artifacts", any(artifacts::dispatch))
        .route("/artifacts/", any(artifacts::dispatch))
        .route("/artifacts/{*rest}", any(artifacts::dispatch))
        .fallback(|| async { Error::NotFound })
        .layer(middleware::from_fn_with_state(headers, observe))
        .with_state(Arc::new(state))
}

async fn base() -> Response {
    ([(header::CONTENT_TYPE, "application/json")], "{}").into_response()
}

async fn dispatch(State(state): State<Arc<AppState>>, req: Request) -> Response {
    let path = req.uri().path().to_owned();
    let rest = path.strip_prefix("/v2/").unwrap_or("");
    let endpoint = match Endpoint::parse(rest) {
        Ok(e) => e,
        Err(e) => return e.into_response(),
    };
    let method = req.method().clone();
    let result = match (&method, endpoint) {
        (m, Endpoint::Manifest(name, reference)) => {
            manifests::handle(&state, m, name, reference, req).await
        }
        (&Method::GET | &Method::HEAD, Endpoint::Blob(name, digest)) => {
            blobs::get(&state, method == Method::HEAD, name, digest, req.headers()).await
        }
        (&Method::DELETE, Endpoint::Blob(name, digest)) => {
            blobs::delete(&state, name, digest).await
        }
        (&Method::POST, Endpoint::UploadStart(name)) => uploads::start(&state, name, req).await,
        (&Method::GET, Endpoint::Upload(name, id)) => uploads::status(&state, name, id).await,
        (&Method::PATCH, Endpoint::Upload(name, id)) => uploads::patch(&state, name, id, req).await,
        (&Method::PUT, Endpoint::Upload(name, id)) => uploads::finish(&state, name, id, req).await,
        (&Method::DELETE, Endpoint::Upload(name, id)) => uploads::cancel(&state, name, id).await,
        (&Method::GET, Endpoint::Tags(name)) => discovery::tags(&state, name, req.uri()).await,
        (&Method::GET, Endpoint::Referrers(name, digest)) => {
            discovery::referrers(&state, name, digest, req.uri()).await
        }
        _ => Ok(method_not_allowed()),
    };
    result.unwrap_or_else(IntoResponse::into_response)
}

fn method_not_allowed() -> Response {
    let mut r = Error::Unsupported("method not allowed on this endpoint".into()).into_response();
    *r.status_mut() = StatusCode::METHOD_NOT_ALLOWED;
    r
}

/// Adds the API version header and `http.headers` to every response (the access log
/// line, span and metrics are `telemetry`'s).
async fn observe(
    State(headers): State<Arc<Vec<(HeaderName, HeaderValue)>>>,
    req: Request,
    next: Next,
) -> Response {
    const API_VERSION: HeaderName = HeaderName::from_static("docker-distribution-api-version");
    let mut resp = next.run(req).await;
    let h = resp.headers_mut();
    h.insert(API_VERSION, HeaderValue::from_static("registry/2.0"));
    for (k, v) in headers.iter() {
        h.append(k.clone(), v.clone());
    }
    resp
}

/// Parses the query string into pairs.
fn query_pairs(uri: &axum::http::Uri) -> Vec<(String, String)> {
    uri.query()
        .and_then(|q| serde_urlencoded::from_str::<Vec<(String, String)>>(q).ok())
        .unwrap_or_default()
}

fn query_get<'a>(pairs: &'a [(String, String)], key: &str) -> Option<&'a str> {
    pairs
        .iter()
        .find(|(k, _)| k == key)
        .map(|(_, v)| v.as_str())
}

fn header_str(headers: &HeaderMap, name: header::HeaderName) -> Option<&str> {
    headers.get(name).and_then(|v| v.to_str().ok())
}

fn content_length(headers: &HeaderMap) -> Option<u64> {
    header_str(headers, header::CONTENT_LENGTH).and_then(|v| v.parse().ok())
}

/// Builds a response from a status and headers; values are known to be valid header text.
fn response(status: StatusCode, headers: &[(&str, String)], body: Body) -> Response {
    let mut r = Response::new(body);
    *r.status_mut() = status;
    let h = r.headers_mut();
    for (k, v) in headers {
        if let (Ok(k), Ok(v)) = (HeaderName::try_from(*k), HeaderValue::try_from(v.as_str())) {
            h.insert(k, v);
        }
    }
    r
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_from_the_right() {
        let d = "sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";
        assert!(
            matches!(Endpoint::parse("a/b/tags/list"), Ok(Endpoint::Tags(n)) if n.as_str() == "a/b")
        );
        assert!(
            matches!(Endpoint::parse("a/blobs/uploads/"), Ok(Endpoint::UploadStart(n)) if n.as_str() == "a")
        );
        assert!(matches!(
            Endpoint::parse("a/blobs/uploads"),
            Ok(Endpoint::UploadStart(_))
        ));
        assert!(
            matches!(Endpoint::parse("a/blobs/uploads/xyz"), Ok(Endpoint::Upload(_, id)) if id == "xyz")
        );
        assert!(
            matches!(Endpoint::parse(&format!("x/blobs/uploads/blobs/{d}")), Ok(Endpoint::Blob(n, _)) if n.as_str() == "x/blobs/uploads")
        );
        assert!(
            matches!(Endpoint::parse("m/manifests/manifests/latest"), Ok(Endpoint::Manifest(n, Ok(Reference::Tag(_)))) if n.as_str() == "m/manifests")
        );
        assert!(matches!(
            Endpoint::parse(&format!("r/referrers/{d}")),
            Ok(Endpoint::Referrers(..))
        ));
        assert!(matches!(
            Endpoint::parse("../manifests/latest"),
            Err(Error::NameInvalid(_))
        ));
        assert!(matches!(
            Endpoint::parse("%2e%2e/manifests/latest"),
            Err(Error::NameInvalid(_))
        ));
        assert!(matches!(
            Endpoint::parse("a/blobs/sha256:zz"),
            Err(Error::DigestInvalid(_))
        ));
        assert!(matches!(
            Endpoint::parse("a/other/thing"),
            Err(Error::NotFound)
        ));
    }
}
