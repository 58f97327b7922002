//! Blob uploads: `POST` (session, monolithic `?digest=`, cross-repository `?mount=`),
//! `PATCH` chunks, `GET` status, `PUT ?digest=` to finish, `DELETE` to cancel.

use axum::body::Body;
use axum::extract::Request;
use axum::http::{HeaderMap, StatusCode, header};

use super::{ApiResult, AppState, content_length, header_str, query_get, query_pairs, response};
use crate::api::error::Error;
use crate::digest::Digest;
use crate::names::RepoName;

fn upload_location(name: &RepoName, id: &str, offset: u64) -> Vec<(&'static str, String)> {
    vec![
        ("location", format!("/v2/{name}/blobs/uploads/{id}")),
        ("range", format!("0-{}", offset.saturating_sub(1))),
        ("docker-upload-uuid", id.to_owned()),
        ("content-length", "0".into()),
    ]
}

fn created(name: &RepoName, digest: &Digest) -> axum::response::Response {
    response(
        StatusCode::CREATED,
        &[
            ("location", format!("/v2/{name}/blobs/{digest}")),
            ("docker-content-digest", digest.to_string()),
            ("content-length", "0".into()),
        ],
        Body::empty(),
    )
}

/// `Content-Range: <start>-<end>` (also tolerates `bytes <start>-<end>/<total>`). The
/// end is inclusive, so it is below `u64::MAX` (no upload holds 2^64 bytes).
pub(crate) fn content_range(headers: &HeaderMap) -> Result<Option<(u64, u64)>, Error> {
    let Some(v) = header_str(headers, header::CONTENT_RANGE) else {
        return Ok(None);
    };
    let bad = || Error::RangeInvalid {
        message: format!("Content-Range {v:?} is not <start>-<end>"),
        size: None,
    };
    let v2 = v
        .trim()
        .trim_start_matches("bytes ")
        .trim_start_matches("bytes=");
    let v2 = v2.split('/').next().unwrap_or("");
    let (a, b) = v2.split_once('-').ok_or_else(bad)?;
    let (a, b): (u64, u64) = (
        a.trim().parse().map_err(|_| bad())?,
        b.trim().parse().map_err(|_| bad())?,
    );
    if b < a || b == u64::MAX {
        return Err(bad());
    }
    if let Some(len) = content_length(headers)
        && len != b - a + 1
    {
        return Err(Error::RangeInvalid {
            message: format!("Content-Range {v:?} does not match Content-Length {len}"),
            size: None,
        });
    }
    Ok(Some((a, b)))
}

/// Whether a request carries a body worth reading.
fn has_body(headers: &HeaderMap) -> bool {
    match content_length(headers) {
        Some(n) => n > 0,
        None => headers.contains_key(header::TRANSFER_ENCODING),
    }
}

pub(super) async fn start(state: &AppState, name: RepoName, req: Request) -> ApiResult {
    state.check_write()?;
    let q = query_pairs(req.uri());
    if let Some(mount) = query_get(&q, "mount") {
        let digest: Digest = mount.parse()?;
        let from = match query_get(&q, "from") {
            Some(f) => Some(RepoName::parse(f)?),
            None => None,
        };
        if state
            .store
            .mount_blob(&name, &digest, from.as_ref())
            .await?
            .is_some()
        {
            return Ok(created(&name, &digest));
        }
        // Not mountable: fall back to a fresh session, as the spec asks.
    } else if let Some(d) = query_get(&q, "digest") {
        let digest: Digest = d.parse()?;
        let announced = content_length(req.headers());
        let body = req.into_body().into_data_stream();
        state
            .store
            .put_blob(&name, &digest, body, announced)
            .await?;
        return Ok(created(&name, &digest));
    }
    let id = state.store.start_upload(&name).await?;
    Ok(response(
        StatusCode::ACCEPTED,
        &upload_location(&name, &id, 0),
        Body::empty(),
    ))
}

pub(super) async fn status(state: &AppState, name: RepoName, id: String) -> ApiResult {
    let (id, offset) = state.store.upload_status(&name, &id).await?;
    Ok(response(
        StatusCode::NO_CONTENT,
        &upload_location(&name, &id, offset),
        Body::empty(),
    ))
}

pub(super) async fn patch(state: &AppState, name: RepoName, id: String, req: Request) -> ApiResult {
    state.check_write()?;
    let range = content_range(req.headers())?;
    let announced = content_length(req.headers());
    let body = req.into_body().into_data_stream();
    let (id, offset) = state
        .store
        .append_upload(&name, &id, range.map(|(a, _)| a), body, announced)
        .await?;
    if let Some((a, b)) = range
        && offset != b + 1
    {
        return Err(Error::SizeInvalid(format!(
            "Content-Range {a}-{b} announced {} bytes, the upload now holds {offset}",
            b - a + 1
        )));
    }
    Ok(response(
        StatusCode::ACCEPTED,
        &upload_location(&name, &id, offset),
        Body::empty(),
    ))
}

pub(super) async fn finish(
    state: &AppState,
    name: RepoName,
    id: String,
    req: Request,
) -> ApiResult {
    state.check_write()?;
    let q = query_pairs(req.uri());
    let digest: Digest = query_get(&q, "digest")
        .ok_or_else(|| Error::DigestInvalid("the digest query parameter is required".into()))?
        .parse()?;
    let range = content_range(req.headers())?;
    if let Some((a, _)) = range {
        let (_, offset) = state.store.upload_status(&name, &id).await?;
        if a != offset {
            return Err(Error::RangeInvalid {
                message: format!("chunk starts at byte {a}, but the upload has {offset} bytes"),
                size: None,
            });
        }
    }
    let announced = content_length(req.headers());
    let body = has_body(req.headers()).then(|| req.into_body().into_data_stream());
    state
        .store
        .finish_upload(&name, &id, &digest, body, announced)
        .await?;
    Ok(created(&name, &digest))
}

pub(super) async fn cancel(state: &AppState, name: RepoName, id: String) -> ApiResult {
    state.check_write()?;
    state.store.cancel_upload(&name, &id).await?;
    Ok(response(
        StatusCode::NO_CONTENT,
        &[("content-length", "0".into())],
        Body::empty(),
    ))
}
