//! `GET`/`HEAD`/`PUT`/`DELETE /v2/<name>/manifests/<reference>`.

use axum::body::Body;
use axum::extract::Request;
use axum::http::{Method, StatusCode, header};
use http_body_util::{BodyExt, LengthLimitError, Limited};

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
    let body = Limited::new(
        req.into_body(),
        usize::try_from(limit).unwrap_or(usize::MAX),
    )
    .collect()
    .await
    .map_err(|e| {
        if e.downcast_ref::<LengthLimitError>().is_some() {
            Error::ManifestTooLarge {
                size: limit.saturating_add(1),
                limit,
            }
        } else {
            Error::ManifestInvalid(format!("could not read the manifest body: {e}"))
        }
    })?
    .to_bytes();
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
    Ok(response(StatusCode::CREATED, &hdrs, Body::empty()))
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
