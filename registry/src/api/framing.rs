//! HTTP/1.1 message rules hyper leaves to the application (RFC 9112): a request names
//! its host exactly once (§3.2: 400 otherwise), and a body in a transfer coding the
//! server does not decode is refused (§6.1: 501) rather than stored still coded. hyper
//! already refuses a `Transfer-Encoding` whose last coding is not `chunked`, or any on
//! HTTP/1.0. Refusals close the connection: the body was not read.

use axum::Router;
use axum::extract::Request;
use axum::http::{HeaderMap, HeaderValue, StatusCode, Version, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};

/// Wraps `router` in the checks.
pub fn layer<S: Clone + Send + Sync + 'static>(router: Router<S>) -> Router<S> {
    router.layer(middleware::from_fn(check))
}

async fn check(req: Request, next: Next) -> Response {
    match refusal(req.version(), req.headers()) {
        Some((status, message)) => {
            tracing::debug!(%status, message, "request refused");
            (
                status,
                [
                    (header::CONTENT_TYPE, HeaderValue::from_static("text/plain")),
                    (header::CONNECTION, HeaderValue::from_static("close")),
                ],
                message,
            )
                .into_response()
        }
        None => next.run(req).await,
    }
}

/// Why a request with these headers is refused, if it is.
fn refusal(version: Version, headers: &HeaderMap) -> Option<(StatusCode, &'static str)> {
    let mut hosts = headers.get_all(header::HOST).iter();
    match (hosts.next(), hosts.next()) {
        (None, _) if version == Version::HTTP_11 => {
            return Some((StatusCode::BAD_REQUEST, "missing required Host header"));
        }
        (Some(_), Some(_)) => {
            return Some((StatusCode::BAD_REQUEST, "more than one Host header"));
        }
        // Empty is allowed (RFC 9112 §3.2: a target without an authority).
        (Some(h), None) if !h.is_empty() && !is_host(h.as_bytes()) => {
            return Some((StatusCode::BAD_REQUEST, "invalid Host header"));
        }
        _ => {}
    }
    let mut chunked = 0;
    for v in headers.get_all(header::TRANSFER_ENCODING) {
        let Ok(v) = v.to_str() else {
            return Some((StatusCode::NOT_IMPLEMENTED, "unsupported transfer encoding"));
        };
        for coding in v.split(',').map(str::trim).filter(|c| !c.is_empty()) {
            if !coding.eq_ignore_ascii_case("chunked") {
                return Some((StatusCode::NOT_IMPLEMENTED, "unsupported transfer encoding"));
            }
            chunked += 1;
        }
    }
    if chunked > 1 {
        // RFC 9112 §6.1: chunked is applied once; the framing is not to be trusted.
        return Some((StatusCode::BAD_REQUEST, "chunked applied more than once"));
    }
    None
}

/// `host[:port]`: an authority without user information (RFC 9110 §7.2).
fn is_host(v: &[u8]) -> bool {
    axum::http::uri::Authority::try_from(v).is_ok_and(|a| !a.as_str().contains('@'))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(
                axum::http::HeaderName::try_from(*k).unwrap(),
                HeaderValue::try_from(*v).unwrap(),
            );
        }
        h
    }

    #[test]
    fn host_and_transfer_codings() {
        let v11 = Version::HTTP_11;
        for (h, want) in [
            (&[("host", "r.example:5000")][..], None),
            (&[("host", "")][..], None),
            (&[("host", "[::1]:5000")][..], None),
            (&[][..], Some(400)),
            (&[("host", "a"), ("host", "a")][..], Some(400)),
            (&[("host", "a b")][..], Some(400)),
            (&[("host", "u@a")][..], Some(400)),
            (&[("host", "a"), ("transfer-encoding", "chunked")][..], None),
            (&[("host", "a"), ("transfer-encoding", "CHUNKED")][..], None),
            (
                &[("host", "a"), ("transfer-encoding", "gzip, chunked")][..],
                Some(501),
            ),
            (
                &[
                    ("host", "a"),
                    ("transfer-encoding", "gzip"),
                    ("transfer-encoding", "chunked"),
                ][..],
                Some(501),
            ),
            (
                &[("host", "a"), ("transfer-encoding", "chunked, chunked")][..],
                Some(400),
            ),
            (
                &[("host", "a"), ("transfer-encoding", " , chunked")][..],
                None,
            ),
        ] {
            let got = refusal(v11, &headers(h)).map(|(s, _)| s.as_u16());
            assert_eq!(got, want, "{h:?}");
        }
        // HTTP/1.0 may leave the host out.
        assert_eq!(refusal(Version::HTTP_10, &headers(&[])), None);
    }
}
