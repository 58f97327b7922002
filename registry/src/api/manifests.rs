//! `GET`/`HEAD`/`PUT`/`DELETE /v2/<name>/manifests/<reference>`.

use axum::body::Body;
use axum::extract::Request;
use axum::http::{Method, StatusCode, header};
use bytes::BytesMut;
use http_body_util::BodyExt;
use tokio::sync::OwnedSemaphorePermit;

use super::{ApiResult, AppState, content_length, header_str, method_not_allowed, response};
use crate::api::error::Error;
use crate::names::{Reference, RepoName};

pub(super) async fn handle(
    state: &AppState,
    method: &Method,
    name: RepoName,
    reference: Result<Reference, String>,
    req: Request,
) -> ApiResult {
    let reference = match (reference, method) {
        (Ok(r), _) => r,
        (Err(e), &Method::PUT) => return Err(Error::ManifestInvalid(e)),
        (Err(e), _) => return Err(Error::ManifestUnknown(e)),
    };
    match *method {
        Method::GET | Method::HEAD => get(state, *method == Method::HEAD, name, reference).await,
        Method::PUT => put(state, name, reference, req).await,
        Method::DELETE => delete(state, name, reference).await,
        _ => Ok(method_not_allowed()),
    }
}

async fn get(state: &AppState, head: bool, name: RepoName, reference: Reference) -> ApiResult {
    let m = if head {
        state.store.manifest_for_push(&name, &reference).await?
    } else {
        state.store.get_manifest(&name, &reference).await?
    };
    let hdrs = [
        ("content-type", m.media_type.clone()),
        ("content-length", m.body.len().to_string()),
        ("docker-content-digest", m.digest.to_string()),
        ("etag", format!("\"{}\"", m.digest)),
    ];
    let body = if head {
        Body::empty()
    } else {
        Body::from(m.body)
    };
    Ok(response(StatusCode::OK, &hdrs, body))
}

async fn put(state: &AppState, name: RepoName, reference: Reference, req: Request) -> ApiResult {
    state.check_write()?;
    let limit = state.store.options().manifest_max_bytes;
    if let Some(len) = content_length(req.headers())
        && len > limit
    {
        return Err(Error::ManifestTooLarge { size: len, limit });
    }
    let content_type = header_str(req.headers(), header::CONTENT_TYPE).map(str::to_owned);
    let announced = content_length(req.headers());
    let mut held = Held::new(state);
    if let Some(len) = announced {
        held.take(len)?;
    }
    // Copied into one buffer as it arrives: the body is held once, not also in the
    // read buffers it came in.
    let mut buf = BytesMut::with_capacity(usize::try_from(announced.unwrap_or(0)).unwrap_or(0));
    let mut body = req.into_body();
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(|e| {
            Error::ManifestInvalid(format!("could not read the manifest body: {e}"))
        })?;
        let Ok(data) = frame.into_data() else {
            continue;
        };
        let size = (buf.len() + data.len()) as u64;
        if size > limit {
            return Err(Error::ManifestTooLarge { size, limit });
        }
        if announced.is_none() {
            held.take(data.len() as u64)?;
        }
        buf.extend_from_slice(&data);
    }
    let body = buf.freeze();
    let put = state
        .store
        .put_manifest(&name, &reference, content_type.as_deref(), body)
        .await?;
    let mut hdrs = vec![
        ("location", format!("/v2/{name}/manifests/{}", put.digest)),
        ("docker-content-digest", put.digest.to_string()),
        ("content-length", "0".to_owned()),
    ];
    if let Some(s) = &put.subject {
        hdrs.push(("oci-subject", s.to_string()));
    }
    drop(held);
    Ok(response(StatusCode::CREATED, &hdrs, Body::empty()))
}

/// The manifest body bytes one request holds, counted against `oci.manifest_memory`
/// until it is dropped.
struct Held<'a> {
    state: &'a AppState,
    permit: Option<OwnedSemaphorePermit>,
    bytes: u64,
}

impl<'a> Held<'a> {
    fn new(state: &'a AppState) -> Held<'a> {
        Held {
            state,
            permit: None,
            bytes: 0,
        }
    }

    /// Holds `n` more bytes, or refuses the request (429) when the budget is spent.
    fn take(&mut self, n: u64) -> Result<(), Error> {
        let mut left = n;
        while left > 0 {
            let step = u32::try_from(left).unwrap_or(u32::MAX);
            let Ok(p) = self
                .state
                .manifest_memory
                .clone()
                .try_acquire_many_owned(step)
            else {
                return Err(Error::TooManyRequests(
                    "manifest bodies being received hold the most memory this registry \
                     gives them (oci.manifest_memory); retry shortly"
                        .into(),
                ));
            };
            match &mut self.permit {
                Some(held) => held.merge(p),
                None => self.permit = Some(p),
            }
            left -= u64::from(step);
            self.bytes += u64::from(step);
            if let Some(m) = &self.state.metrics {
                m.http.manifest_body_bytes.inc_by(i64::from(step));
            }
        }
        Ok(())
    }
}

impl Drop for Held<'_> {
    fn drop(&mut self) {
        if let Some(m) = &self.state.metrics {
            m.http
                .manifest_body_bytes
                .dec_by(i64::try_from(self.bytes).unwrap_or(i64::MAX));
        }
    }
}

async fn delete(state: &AppState, name: RepoName, reference: Reference) -> ApiResult {
    state.check_delete()?;
    state.store.delete_manifest(&name, &reference).await?;
    state.deleted();
    Ok(response(
        StatusCode::ACCEPTED,
        &[("content-length", "0".into())],
        Body::empty(),
    ))
}
