//! `GET`/`HEAD`/`DELETE /v2/<name>/blobs/<digest>`: streamed bodies, single `Range`
//! requests (206/416), and link removal on delete.

use axum::body::Body;
use axum::http::{HeaderMap, StatusCode, header};

use super::{ApiResult, AppState, header_str, response};
use crate::api::error::Error;
use crate::digest::Digest;
use crate::names::RepoName;

/// An inclusive byte range parsed from `Range: bytes=...`; `None` means the whole blob.
pub(crate) fn parse_range(value: &str, size: u64) -> Result<Option<(u64, u64)>, Error> {
    let unsatisfiable = || Error::RangeInvalid {
        message: format!("range {value:?} is outside the blob's {size} bytes"),
        size: Some(size),
    };
    let Some(spec) = value.trim().strip_prefix("bytes=") else {
        return Ok(None); // unknown unit: ignore, as RFC 9110 allows
    };
    if spec.contains(',') {
        return Ok(None); // multiple ranges: serve the whole blob
    }
    let Some((a, b)) = spec.split_once('-') else {
        return Err(unsatisfiable());
    };
    let (a, b) = (a.trim(), b.trim());
    let range = if a.is_empty() {
        let n: u64 = b.parse().map_err(|_| unsatisfiable())?;
        if n == 0 || size == 0 {
            return Err(unsatisfiable());
        }
        (size.saturating_sub(n), size - 1)
    } else {
        let start: u64 = a.parse().map_err(|_| unsatisfiable())?;
        let end: u64 = if b.is_empty() {
            size.saturating_sub(1)
        } else {
            b.parse::<u64>()
                .map_err(|_| unsatisfiable())?
                .min(size.saturating_sub(1))
        };
        if start >= size || end < start {
            return Err(unsatisfiable());
        }
        (start, end)
    };
    Ok(Some(range))
}

pub(super) async fn get(
    state: &AppState,
    head: bool,
    name: RepoName,
    digest: Digest,
    headers: &HeaderMap,
) -> ApiResult {
    if !head && let Some(url) = state.store.blob_redirect(&name, &digest).await? {
        // The client sends its Range, if any, to the URL.
        return Ok(response(
            StatusCode::TEMPORARY_REDIRECT,
            &[
                ("location", url),
                ("docker-content-digest", digest.to_string()),
                ("content-length", "0".to_owned()),
            ],
            Body::empty(),
        ));
    }
    let range = match header_str(headers, header::RANGE) {
        Some(r) => {
            let size = state
                .store
                .blob_size(&name, &digest)
                .await?
                .ok_or_else(|| Error::BlobUnknown(Some(digest.clone())))?;
            parse_range(r, size)?
        }
        None => None,
    };
    let (body, size) = if head {
        let size = state
            .store
            .blob_size_for_push(&name, &digest)
            .await?
            .ok_or_else(|| Error::BlobUnknown(Some(digest.clone())))?;
        (None, size)
    } else {
        let (offset, len) = match range {
            Some((a, b)) => (a, Some(b - a + 1)),
            None => (0, None),
        };
        let r = state.store.open_blob(&name, &digest, offset, len).await?;
        (Some(r.body), r.size)
    };
    let (status, len, mut hdrs) = match range {
        Some((a, b)) => (
            StatusCode::PARTIAL_CONTENT,
            b - a + 1,
            vec![("content-range", format!("bytes {a}-{b}/{size}"))],
        ),
        None => (StatusCode::OK, size, Vec::new()),
    };
    hdrs.extend([
        ("content-length", len.to_string()),
        ("content-type", "application/octet-stream".to_owned()),
        ("docker-content-digest", digest.to_string()),
        ("etag", format!("\"{digest}\"")),
        ("accept-ranges", "bytes".to_owned()),
        ("cache-control", "max-age=31536000".to_owned()),
    ]);
    let body = match body {
        Some(stream) => Body::from_stream(stream),
        None => Body::empty(),
    };
    Ok(response(status, &hdrs, body))
}

pub(super) async fn delete(state: &AppState, name: RepoName, digest: Digest) -> ApiResult {
    state.check_delete()?;
    if !state.store.unlink_layer(&name, &digest).await? {
        return Err(Error::BlobUnknown(Some(digest)));
    }
    state.deleted();
    Ok(response(
        StatusCode::ACCEPTED,
        &[
            ("content-length", "0".into()),
            ("docker-content-digest", digest.to_string()),
        ],
        Body::empty(),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges() {
        assert_eq!(parse_range("bytes=0-9", 100).unwrap(), Some((0, 9)));
        assert_eq!(parse_range("bytes=90-", 100).unwrap(), Some((90, 99)));
        assert_eq!(parse_range("bytes=-10", 100).unwrap(), Some((90, 99)));
        assert_eq!(parse_range("bytes=50-1000", 100).unwrap(), Some((50, 99)));
        assert_eq!(parse_range("bytes=0-1,5-6", 100).unwrap(), None);
        assert_eq!(parse_range("items=0-1", 100).unwrap(), None);
        for bad in [
            "bytes=100-",
            "bytes=5-2",
            "bytes=x-y",
            "bytes=-0",
            "bytes=5",
        ] {
            assert!(
                matches!(parse_range(bad, 100), Err(Error::RangeInvalid { .. })),
                "{bad}"
            );
        }
    }
}
