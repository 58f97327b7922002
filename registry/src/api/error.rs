//! The one error type of the registry. Each variant is a distribution-spec error code;
//! [`Error::code`] and [`Error::status`] are the only places that map them, and
//! `IntoResponse` the only place that serializes them as
//! `{"errors":[{"code","message","detail"}]}`. `Internal` logs its source once and tells
//! the client nothing private.

use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};

use crate::digest::{Digest, DigestError};
use crate::names::NameError;
use crate::storage::StorageError;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("blob unknown to registry")]
    BlobUnknown(Option<Digest>),
    #[error("blob upload invalid: {0}")]
    BlobUploadInvalid(String),
    #[error("blob upload unknown to registry")]
    BlobUploadUnknown,
    #[error("provided digest did not match uploaded content: {0}")]
    DigestInvalid(String),
    #[error("manifest references a manifest or blob unknown to registry: {0}")]
    ManifestBlobUnknown(Digest),
    #[error("manifest invalid: {0}")]
    ManifestInvalid(String),
    #[error("manifest of {size} bytes exceeds the limit of {limit} bytes")]
    ManifestTooLarge { size: u64, limit: u64 },
    #[error("manifest unknown to registry")]
    ManifestUnknown(String),
    #[error("invalid repository name: {0}")]
    NameInvalid(String),
    #[error("repository name not known to registry")]
    NameUnknown(String),
    #[error("provided length did not match content length: {0}")]
    SizeInvalid(String),
    #[error("requested range not satisfiable: {message}")]
    RangeInvalid { message: String, size: Option<u64> },
    #[error("authentication required")]
    Unauthorized,
    #[error("requested access to the resource is denied")]
    Denied,
    #[error("the operation is unsupported: {0}")]
    Unsupported(String),
    /// A bound on concurrent work was reached (uploads, manifest bodies); answered
    /// with `Retry-After`.
    #[error("too many requests: {0}")]
    TooManyRequests(String),
    /// The storage has no space left (ENOSPC, EDQUOT): the client is told so, with a
    /// 5xx status, instead of a bare internal error.
    #[error("the registry is out of storage space: {0}")]
    StorageFull(String),
    /// The storage backend did not answer (a bucket's endpoint down or unreachable):
    /// 503 with Distribution's `UNAVAILABLE` code; the log names the endpoint, the
    /// client is told only that storage is unavailable.
    #[error("the registry's storage is unavailable; try again later")]
    StorageUnavailable,
    #[error("invalid number of results requested: {0}")]
    PaginationNumberInvalid(String),
    #[error("not found")]
    NotFound,
    /// The target's state forbids the change (a locked or released artifact tag, a file
    /// path that is a folder): 409 with the spec's `DENIED` code and the reason.
    #[error("{0}")]
    Conflict(String),
    /// A request body that is not what the endpoint takes (an artifact policy's JSON).
    #[error("bad request: {0}")]
    BadRequest(String),
    /// An artifact format's post-process command failed; nothing was changed.
    #[error("post-process command failed ({status}); stderr: {stderr}")]
    PostProcessFailed { status: String, stderr: String },
    #[error("internal error: {0}")]
    Internal(String),
}

impl Error {
    /// The spec's error code.
    pub fn code(&self) -> &'static str {
        match self {
            Error::BlobUnknown(_) => "BLOB_UNKNOWN",
            Error::BlobUploadInvalid(_) => "BLOB_UPLOAD_INVALID",
            Error::BlobUploadUnknown => "BLOB_UPLOAD_UNKNOWN",
            Error::DigestInvalid(_) => "DIGEST_INVALID",
            Error::ManifestBlobUnknown(_) => "MANIFEST_BLOB_UNKNOWN",
            Error::ManifestInvalid(_) => "MANIFEST_INVALID",
            Error::ManifestTooLarge { .. } => "SIZE_INVALID",
            Error::ManifestUnknown(_) => "MANIFEST_UNKNOWN",
            Error::NameInvalid(_) => "NAME_INVALID",
            Error::NameUnknown(_) => "NAME_UNKNOWN",
            Error::SizeInvalid(_) => "SIZE_INVALID",
            Error::RangeInvalid { .. } => "RANGE_INVALID",
            Error::Unauthorized => "UNAUTHORIZED",
            Error::Denied => "DENIED",
            Error::Unsupported(_) => "UNSUPPORTED",
            Error::TooManyRequests(_) => "TOOMANYREQUESTS",
            Error::StorageFull(_) => "UNKNOWN",
            Error::StorageUnavailable => "UNAVAILABLE",
            Error::PaginationNumberInvalid(_) => "PAGINATION_NUMBER_INVALID",
            Error::NotFound => "NOT_FOUND",
            Error::Conflict(_) => "DENIED",
            Error::BadRequest(_) => "BAD_REQUEST",
            Error::PostProcessFailed { .. } => "POST_PROCESS_FAILED",
            Error::Internal(_) => "UNKNOWN",
        }
    }

    pub fn status(&self) -> StatusCode {
        match self {
            Error::BlobUnknown(_)
            | Error::BlobUploadUnknown
            | Error::ManifestUnknown(_)
            | Error::NameUnknown(_)
            | Error::NotFound => StatusCode::NOT_FOUND,
            Error::BlobUploadInvalid(_)
            | Error::DigestInvalid(_)
            | Error::ManifestBlobUnknown(_)
            | Error::ManifestInvalid(_)
            | Error::NameInvalid(_)
            | Error::PaginationNumberInvalid(_)
            | Error::SizeInvalid(_)
            | Error::BadRequest(_) => StatusCode::BAD_REQUEST,
            Error::ManifestTooLarge { .. } => StatusCode::PAYLOAD_TOO_LARGE,
            Error::RangeInvalid { .. } => StatusCode::RANGE_NOT_SATISFIABLE,
            Error::Unauthorized => StatusCode::UNAUTHORIZED,
            Error::Denied => StatusCode::FORBIDDEN,
            Error::Unsupported(_) => StatusCode::METHOD_NOT_ALLOWED,
            Error::TooManyRequests(_) => StatusCode::TOO_MANY_REQUESTS,
            Error::StorageFull(_) => StatusCode::INSUFFICIENT_STORAGE,
            Error::StorageUnavailable => StatusCode::SERVICE_UNAVAILABLE,
            Error::Conflict(_) => StatusCode::CONFLICT,
            Error::Internal(_) | Error::PostProcessFailed { .. } => {
                StatusCode::INTERNAL_SERVER_ERROR
            }
        }
    }

    fn detail(&self) -> serde_json::Value {
        match self {
            Error::BlobUnknown(Some(d)) | Error::ManifestBlobUnknown(d) => {
                serde_json::json!({ "digest": d.to_string() })
            }
            Error::ManifestUnknown(r) => serde_json::json!({ "reference": r }),
            Error::NameUnknown(n) => serde_json::json!({ "name": n }),
            Error::PostProcessFailed { status, stderr } => {
                serde_json::json!({ "status": status, "stderr": stderr })
            }
            _ => serde_json::Value::Null,
        }
    }

    pub fn internal(e: impl std::fmt::Display) -> Error {
        Error::Internal(e.to_string())
    }

    /// An I/O error: out of space is the client's business ([`Error::StorageFull`]),
    /// anything else is internal.
    pub fn from_io(e: std::io::Error) -> Error {
        if is_out_of_space(&e) {
            Error::StorageFull(
                "no space left on the device; the upload keeps what was written before".into(),
            )
        } else {
            Error::Internal(e.to_string())
        }
    }
}

fn is_out_of_space(e: &std::io::Error) -> bool {
    matches!(e.raw_os_error(), Some(libc::ENOSPC) | Some(libc::EDQUOT))
        || e.kind() == std::io::ErrorKind::StorageFull
}

impl From<StorageError> for Error {
    fn from(e: StorageError) -> Error {
        if let StorageError::Io { source, .. } = &e
            && is_out_of_space(source)
        {
            tracing::error!(error = %e, "out of storage space");
            return Error::StorageFull("no space left on the device".into());
        }
        Error::Internal(e.to_string())
    }
}

impl From<crate::storage::DriverError> for Error {
    fn from(e: crate::storage::DriverError) -> Error {
        use crate::storage::DriverError;
        match &e {
            DriverError::Io { source, .. } if is_out_of_space(source) => {
                tracing::error!(error = %e, "out of storage space");
                Error::StorageFull("no space left on the device".into())
            }
            DriverError::DigestMismatch { .. } => Error::DigestInvalid(e.to_string()),
            DriverError::Unavailable { endpoint, message } => {
                tracing::error!(%endpoint, error = %message, "storage backend unavailable");
                Error::StorageUnavailable
            }
            _ => Error::Internal(e.to_string()),
        }
    }
}

impl From<DigestError> for Error {
    fn from(e: DigestError) -> Error {
        Error::DigestInvalid(e.0)
    }
}

impl From<NameError> for Error {
    fn from(e: NameError) -> Error {
        Error::NameInvalid(e.0)
    }
}

impl IntoResponse for Error {
    fn into_response(self) -> Response {
        let status = self.status();
        let message = match &self {
            Error::Internal(source) => {
                tracing::error!(error = %source, "internal error");
                "internal server error".to_owned()
            }
            other => other.to_string(),
        };
        let body = serde_json::json!({
            "errors": [{ "code": self.code(), "message": message, "detail": self.detail() }]
        });
        let mut resp = (status, body.to_string()).into_response();
        let h = resp.headers_mut();
        h.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        );
        if let Error::TooManyRequests(_) = &self {
            h.insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
        }
        if let Error::RangeInvalid {
            size: Some(size), ..
        } = &self
            && let Ok(v) = HeaderValue::from_str(&format!("bytes */{size}"))
        {
            h.insert(header::CONTENT_RANGE, v);
        }
        resp
    }
}
