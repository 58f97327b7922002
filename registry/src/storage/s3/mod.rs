//! The S3 driver behind [`Driver`], on the `object_store` crate (its `aws` feature: a
//! maintained client that resolves under the workspace's Rust 1.85 with resolver 3), in
//! CNCF Distribution's key layout: `<rootdirectory>/docker/registry/v2/...`, so a bucket
//! Distribution's s3 driver wrote is read as it is.
//!
//! Facts of Ceph RGW 16.2 (the server the tests run) that shape it:
//! - `If-None-Match: *` on PUT is atomic: create-only puts use it.
//! - `If-Match` compares the ETag without its quotes: a standard quoted ETag always
//!   fails. Versions are kept unquoted and sent that way, which RGW honours (the suite's
//!   racing replacers check it).
//! - Conditions on DeleteObject and CompleteMultipartUpload are ignored: nothing here
//!   relies on them.
//! - CompleteMultipartUpload answers an empty ETag: a committed writer's result does not
//!   use it.
//! - Copying an object onto itself needs `x-amz-metadata-directive: REPLACE`, which
//!   `object_store` cannot send: [`Driver::touch`] signs that one request itself.
//! - Uploads with trailing checksums (aws-chunked) get 400: none is configured.
//!
//! Uploads are multipart ([`writer`]): memory stays near two parts (`chunksize`) per
//! writer, one filling while the other is sent. Over `https` bodies are sent as
//! `UNSIGNED-PAYLOAD` (TLS protects them; one sha256 pass fewer per byte); over plain
//! `http` their sha256 is signed.

mod config;
mod writer;

use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use futures::{Stream, StreamExt, TryStreamExt};
use object_store::aws::{AmazonS3, AmazonS3Builder, AwsCredential, S3ConditionalPut};
use object_store::path::Path as ObjPath;
use object_store::{
    ClientOptions, GetOptions, GetRange, ObjectStore, ObjectStoreExt, PutMode as ObjPutMode,
    PutOptions, PutPayload, RetryConfig, UpdateVersion,
};

pub use config::{DEFAULT_CHUNK_SIZE, MIN_CHUNK_SIZE, S3Config, S3ConfigError};

use super::driver::{
    Capabilities, Driver, DriverError, DriverResult, Entry, PendingUpload, PutMode, Reader, Stat,
    Version, WalkEntry, Writer, WriterStart, check_file_path, check_path,
};

/// Listings a walk runs at once.
const WALK_PARALLELISM: usize = 16;
/// The largest object one CopyObject copies (S3's limit).
const COPY_THRESHOLD: u64 = 5 << 30;
/// Part size of a multipart copy.
const COPY_PART: u64 = 1 << 30;

/// The S3 driver. Cheap to clone.
#[derive(Clone)]
pub struct S3Driver {
    inner: Arc<Inner>,
}

struct Inner {
    store: AmazonS3,
    config: S3Config,
    endpoint: String,
    /// For the one request `object_store` cannot make (a copy onto itself).
    http: object_store::client::HttpClient,
    credential: AwsCredential,
    /// Objects larger than this are copied in parts (S3's CopyObject stops at 5 GiB).
    copy_threshold: u64,
    copy_part: u64,
}

impl std::fmt::Debug for S3Driver {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("S3Driver")
            .field("config", &self.inner.config)
            .finish()
    }
}

/// Whether an error's text says the server could not be reached or failed (rather than
/// refused the request).
fn looks_unavailable(message: &str) -> bool {
    let m = message.to_ascii_lowercase();
    [
        "error sending request",
        "connection refused",
        "connection reset",
        "timed out",
        "timeout",
        "dns error",
        "tcp connect",
        "broken pipe",
        "status code: 500",
        "status code: 502",
        "status code: 503",
        "status code: 504",
        "500 internal",
        "502 bad gateway",
        "503 service",
        "504 gateway",
    ]
    .iter()
    .any(|s| m.contains(s))
}

/// `scheme://bucket.host` of `scheme://host`.
fn virtual_hosted(endpoint: &str, bucket: &str) -> String {
    match endpoint.split_once("://") {
        Some((scheme, host)) => format!("{scheme}://{bucket}.{host}"),
        None => format!("{bucket}.{endpoint}"),
    }
}

fn unquote(etag: &str) -> String {
    etag.trim_matches('"').to_owned()
}

impl S3Driver {
    /// A driver for `config`. Makes no request; [`S3Driver::check`] does.
    pub fn new(config: S3Config) -> DriverResult<S3Driver> {
        let endpoint = config.endpoint();
        let fail = |message: String| DriverError::Backend {
            path: String::new(),
            message,
        };
        let (Some(ak), Some(sk)) = (&config.accesskey, &config.secretkey) else {
            return Err(fail("no S3 credentials".into()));
        };
        let options = ClientOptions::new()
            .with_allow_http(endpoint.starts_with("http://"))
            .with_allow_invalid_certificates(config.skipverify)
            .with_connect_timeout(Duration::from_secs(5))
            .with_timeout(Duration::from_secs(300));
        let mut b = AmazonS3Builder::new()
            .with_region(&config.region)
            .with_bucket_name(&config.bucket)
            .with_access_key_id(ak)
            .with_secret_access_key(sk)
            .with_client_options(options.clone())
            .with_conditional_put(S3ConditionalPut::ETagMatch)
            // Over TLS the body is protected on the wire, so it need not be hashed a
            // second time for the signature (the writer hashes it once already).
            .with_unsigned_payload(endpoint.starts_with("https://"))
            .with_retry(RetryConfig {
                max_retries: 3,
                retry_timeout: Duration::from_secs(30),
                ..RetryConfig::default()
            });
        if let Some(token) = &config.sessiontoken {
            b = b.with_token(token);
        }
        if config.regionendpoint.is_some() {
            b = if config.forcepathstyle {
                b.with_endpoint(&endpoint)
            } else {
                // Virtual-hosted: object_store wants the bucket's own endpoint.
                b.with_endpoint(virtual_hosted(&endpoint, &config.bucket))
                    .with_virtual_hosted_style_request(true)
            };
        }
        let store = b.build().map_err(|e| fail(e.to_string()))?;
        let http = object_store::client::HttpConnector::connect(
            &object_store::client::ReqwestConnector::default(),
            &options,
        )
        .map_err(|e| fail(e.to_string()))?;
        let credential = AwsCredential {
            key_id: ak.clone(),
            secret_key: sk.clone(),
            token: config.sessiontoken.clone(),
        };
        Ok(S3Driver {
            inner: Arc::new(Inner {
                store,
                config,
                endpoint,
                http,
                credential,
                copy_threshold: COPY_THRESHOLD,
                copy_part: COPY_PART,
            }),
        })
    }

    /// This driver copying objects above `threshold` bytes in parts of `part` bytes
    /// (tests exercise multipart copies with small objects this way).
    pub fn with_copy_limits(self, threshold: u64, part: u64) -> S3Driver {
        let inner = &self.inner;
        S3Driver {
            inner: Arc::new(Inner {
                store: inner.store.clone(),
                config: inner.config.clone(),
                endpoint: inner.endpoint.clone(),
                http: inner.http.clone(),
                credential: AwsCredential {
                    key_id: inner.credential.key_id.clone(),
                    secret_key: inner.credential.secret_key.clone(),
                    token: inner.credential.token.clone(),
                },
                copy_threshold: threshold,
                copy_part: part,
            }),
        }
    }

    pub fn config(&self) -> &S3Config {
        &self.inner.config
    }

    /// One listing of the root: fails with [`DriverError::Unavailable`] when the
    /// endpoint does not answer and [`DriverError::Backend`] when it refuses (wrong
    /// credentials, no such bucket), so the server can refuse to start.
    pub async fn check(&self) -> DriverResult<()> {
        let prefix = self.prefix("")?;
        self.inner
            .store
            .list_with_delimiter(prefix.as_ref())
            .await
            .map(drop)
            .map_err(|e| self.map_err("", e))
    }

    /// The object key of a driver path.
    fn key(&self, path: &str) -> String {
        let root = &self.inner.config.rootdirectory;
        match (root.is_empty(), path.is_empty()) {
            (true, _) => path.to_owned(),
            (false, true) => root.clone(),
            (false, false) => format!("{root}/{path}"),
        }
    }

    fn obj(&self, path: &str) -> DriverResult<ObjPath> {
        check_file_path(path)?;
        ObjPath::parse(self.key(path)).map_err(|_| DriverError::InvalidPath(path.to_owned()))
    }

    /// The listing prefix of a folder (`None`: the whole bucket).
    fn prefix(&self, path: &str) -> DriverResult<Option<ObjPath>> {
        check_path(path)?;
        let key = self.key(path);
        if key.is_empty() {
            return Ok(None);
        }
        ObjPath::parse(key)
            .map(Some)
            .map_err(|_| DriverError::InvalidPath(path.to_owned()))
    }

    /// A driver path back from an object key below `prefix_key`.
    fn rel<'a>(&self, key: &'a str, prefix_key: &str) -> Option<&'a str> {
        if prefix_key.is_empty() {
            return Some(key);
        }
        key.strip_prefix(prefix_key)?.strip_prefix('/')
    }

    fn map_err(&self, path: &str, e: object_store::Error) -> DriverError {
        use object_store::Error as E;
        match e {
            E::NotFound { .. } => DriverError::NotFound(path.to_owned()),
            E::AlreadyExists { .. } => DriverError::AlreadyExists(path.to_owned()),
            E::Precondition { .. } | E::NotModified { .. } => {
                DriverError::PreconditionFailed(path.to_owned())
            }
            E::NotImplemented { .. } | E::NotSupported { .. } => DriverError::Unsupported {
                driver: "s3",
                what: "this operation",
            },
            other => {
                let mut message = other.to_string();
                let mut src: Option<&dyn std::error::Error> = std::error::Error::source(&other);
                while let Some(s) = src {
                    message.push_str(": ");
                    message.push_str(&s.to_string());
                    src = s.source();
                }
                if looks_unavailable(&message) {
                    DriverError::Unavailable {
                        endpoint: self.inner.endpoint.clone(),
                        message,
                    }
                } else {
                    DriverError::Backend {
                        path: path.to_owned(),
                        message,
                    }
                }
            }
        }
    }

    async fn head(&self, path: &str) -> DriverResult<object_store::ObjectMeta> {
        let o = self.obj(path)?;
        self.inner
            .store
            .head(&o)
            .await
            .map_err(|e| self.map_err(path, e))
    }

    /// Keys below the folder `path` (recursive), as object paths.
    async fn keys_below(&self, path: &str) -> DriverResult<Vec<ObjPath>> {
        let p = self.prefix(path)?;
        self.inner
            .store
            .list(p.as_ref())
            .map_ok(|m| m.location)
            .try_collect()
            .await
            .map_err(|e| self.map_err(path, e))
    }

    async fn delete_objects(&self, keys: Vec<ObjPath>) -> DriverResult<Vec<DriverResult<()>>> {
        let n = keys.len();
        let shown: Vec<String> = keys.iter().map(|k| k.to_string()).collect();
        let results: Vec<object_store::Result<ObjPath>> = self
            .inner
            .store
            .delete_stream(futures::stream::iter(keys.into_iter().map(Ok)).boxed())
            .collect()
            .await;
        let mut out: Vec<DriverResult<()>> = Vec::with_capacity(n);
        for (r, key) in results.into_iter().zip(shown) {
            out.push(match r {
                Ok(_) => Ok(()),
                Err(object_store::Error::NotFound { .. }) => Ok(()),
                Err(e) => Err(self.map_err(&key, e)),
            });
        }
        while out.len() < n {
            out.push(Err(DriverError::Backend {
                path: String::new(),
                message: "no answer for this key in the batch delete".into(),
            }));
        }
        Ok(out)
    }

    /// The URL of an object key, path-style or virtual-hosted as configured.
    fn url_of(&self, key: &str) -> String {
        let enc: String = key
            .split('/')
            .map(|seg| {
                seg.bytes()
                    .map(|b| match b {
                        b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                            (b as char).to_string()
                        }
                        _ => format!("%{b:02X}"),
                    })
                    .collect::<String>()
            })
            .collect::<Vec<_>>()
            .join("/");
        let c = &self.inner.config;
        let e = &self.inner.endpoint;
        if self.path_style() {
            format!("{e}/{}/{enc}", c.bucket)
        } else {
            format!("{}/{enc}", virtual_hosted(e, &c.bucket))
        }
    }

    /// Sends one request `object_store` cannot make, signed here: `query` and `headers`
    /// as given, an empty body. Returns the body of a 2xx answer; a 2xx whose body is an
    /// `<Error>` (a copy can fail after its status line) is an error too.
    async fn signed(
        &self,
        path: &str,
        key: &str,
        query: &str,
        headers: &[(&str, String)],
        method: http::Method,
    ) -> DriverResult<Bytes> {
        let mut url = self.url_of(key);
        if !query.is_empty() {
            url.push('?');
            url.push_str(query);
        }
        let mut b = http::Request::builder().method(method).uri(&url);
        for (k, v) in headers {
            b = b.header(*k, v);
        }
        let mut req = b
            .header(http::header::CONTENT_LENGTH, "0")
            .body(object_store::client::HttpRequestBody::empty())
            .map_err(|e| DriverError::Backend {
                path: path.to_owned(),
                message: e.to_string(),
            })?;
        let auth = object_store::aws::AwsAuthorizer::new(
            &self.inner.credential,
            "s3",
            &self.inner.config.region,
        );
        auth.try_authorize(&mut req, None)
            .map_err(|e| self.map_err(path, e))?;
        let resp = self
            .inner
            .http
            .execute(req)
            .await
            .map_err(|e| DriverError::Unavailable {
                endpoint: self.inner.endpoint.clone(),
                message: e.to_string(),
            })?;
        let status = resp.status();
        let body = resp.into_body().bytes().await.unwrap_or_default();
        let text = || String::from_utf8_lossy(&body).into_owned();
        if status.is_success() {
            if body.windows(7).any(|w| w == b"<Error>") {
                return Err(DriverError::Backend {
                    path: path.to_owned(),
                    message: text(),
                });
            }
            return Ok(body);
        }
        match status.as_u16() {
            404 => Err(DriverError::NotFound(path.to_owned())),
            s if s >= 500 => Err(DriverError::Unavailable {
                endpoint: self.inner.endpoint.clone(),
                message: format!("{status}: {}", text()),
            }),
            _ => Err(DriverError::Backend {
                path: path.to_owned(),
                message: format!("{status}: {}", text()),
            }),
        }
    }

    /// `x-amz-copy-source` of an object key: `/bucket/key`, each segment URL-encoded.
    fn copy_source(&self, key: &str) -> String {
        let url = self.url_of(key);
        let enc = url
            .split_once("://")
            .and_then(|(_, rest)| rest.split_once('/'))
            .map(|(_, p)| p.to_owned())
            .unwrap_or_default();
        if self.path_style() {
            format!("/{enc}")
        } else {
            format!("/{}/{enc}", self.inner.config.bucket)
        }
    }

    fn path_style(&self) -> bool {
        let c = &self.inner.config;
        c.forcepathstyle || c.regionendpoint.is_none()
    }

    /// A copy of `key` onto itself with new metadata: `LastModified` becomes now. The
    /// data is not sent again (the copy is the server's).
    async fn copy_onto_itself(&self, path: &str) -> DriverResult<()> {
        let key = self.key(path);
        self.signed(
            path,
            &key,
            "",
            &[
                ("x-amz-copy-source", self.copy_source(&key)),
                ("x-amz-metadata-directive", "REPLACE".to_owned()),
            ],
            http::Method::PUT,
        )
        .await
        .map(drop)
    }

    /// Copies `from` to `to` (driver paths) server-side: one CopyObject up to the copy
    /// threshold (S3 allows 5 GiB), else a multipart upload of UploadPartCopy ranges
    /// (sent with `Content-Length: 0`: RGW answers 411 without it).
    async fn copy_object(&self, from: &str, to: &str) -> DriverResult<()> {
        let (f, t) = (self.obj(from)?, self.obj(to)?);
        let size = self.head(from).await?.size;
        if size <= self.inner.copy_threshold {
            return self
                .inner
                .store
                .copy(&f, &t)
                .await
                .map_err(|e| self.map_err(from, e));
        }
        use object_store::multipart::{MultipartStore, PartId};
        let id = self
            .inner
            .store
            .create_multipart(&t)
            .await
            .map_err(|e| self.map_err(to, e))?;
        let part = self.inner.copy_part.max(MIN_CHUNK_SIZE);
        let ranges: Vec<(u64, u64)> = (0..size.div_ceil(part))
            .map(|i| (i * part, ((i + 1) * part).min(size) - 1))
            .collect();
        let (src, dst_key) = (self.copy_source(&self.key(from)), self.key(to));
        let parts: DriverResult<Vec<PartId>> =
            futures::stream::iter(ranges.into_iter().enumerate())
                .map(|(i, (a, b))| {
                    let (src, dst_key, id) = (src.clone(), dst_key.clone(), id.clone());
                    async move {
                        let q = format!("partNumber={}&uploadId={}", i + 1, url_encode(&id));
                        let body = self
                            .signed(
                                to,
                                &dst_key,
                                &q,
                                &[
                                    ("x-amz-copy-source", src),
                                    ("x-amz-copy-source-range", format!("bytes={a}-{b}")),
                                ],
                                http::Method::PUT,
                            )
                            .await?;
                        let text = String::from_utf8_lossy(&body);
                        let etag =
                            xml_values(&text, "ETag")
                                .into_iter()
                                .next()
                                .ok_or_else(|| DriverError::Backend {
                                    path: to.to_owned(),
                                    message: format!("UploadPartCopy answered no ETag: {text}"),
                                })?;
                        Ok(PartId { content_id: etag })
                    }
                })
                .buffered(4)
                .try_collect()
                .await;
        let parts = match parts {
            Ok(p) => p,
            Err(e) => {
                let _ = self.inner.store.abort_multipart(&t, &id).await;
                return Err(e);
            }
        };
        self.inner
            .store
            .complete_multipart(&t, &id, parts)
            .await
            .map(drop)
            .map_err(|e| self.map_err(to, e))
    }

    /// The multipart uploads in progress below the folder `path`: (driver path, upload
    /// id, when it started). What the uploads task aborts when stale, and what the
    /// driver suite checks a test did not leave.
    pub async fn multipart_uploads(
        &self,
        path: &str,
    ) -> DriverResult<Vec<(String, String, SystemTime)>> {
        check_path(path)?;
        let base = self.key(path);
        let prefix = if base.is_empty() {
            String::new()
        } else {
            format!("{base}/")
        };
        let root = self.key("");
        let mut out = Vec::new();
        let (mut key_marker, mut id_marker) = (String::new(), String::new());
        loop {
            let mut q = format!("prefix={}&uploads=", url_encode(&prefix));
            if !key_marker.is_empty() {
                q = format!(
                    "key-marker={}&prefix={}&upload-id-marker={}&uploads=",
                    url_encode(&key_marker),
                    url_encode(&prefix),
                    url_encode(&id_marker)
                );
            }
            let body = self.signed(path, "", &q, &[], http::Method::GET).await?;
            let text = String::from_utf8_lossy(&body).into_owned();
            for upload in text.split("<Upload>").skip(1) {
                let get = |tag| {
                    xml_values(upload, tag)
                        .into_iter()
                        .next()
                        .unwrap_or_default()
                };
                let key = get("Key");
                // A time that does not parse reads as now: the uploads task aborts old
                // uploads, and must never take one for old that it cannot date.
                let started = time::OffsetDateTime::parse(
                    &get("Initiated"),
                    &time::format_description::well_known::Rfc3339,
                )
                .map(SystemTime::from)
                .unwrap_or_else(|_| SystemTime::now());
                if let Some(rel) = self.rel(&key, &root) {
                    out.push((rel.to_owned(), get("UploadId"), started));
                }
            }
            let truncated =
                xml_values(&text, "IsTruncated").first().map(String::as_str) == Some("true");
            key_marker = xml_values(&text, "NextKeyMarker")
                .into_iter()
                .next()
                .unwrap_or_default();
            id_marker = xml_values(&text, "NextUploadIdMarker")
                .into_iter()
                .next()
                .unwrap_or_default();
            if !truncated || key_marker.is_empty() {
                return Ok(out);
            }
        }
    }
}

/// RFC 3986 percent-encoding of a query value.
fn url_encode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// The text of every `<tag>…</tag>` in `xml`, entities decoded (S3's answers are flat
/// enough for this; `object_store` keeps its XML types private).
fn xml_values(xml: &str, tag: &str) -> Vec<String> {
    let (open, close) = (format!("<{tag}>"), format!("</{tag}>"));
    let mut out = Vec::new();
    let mut rest = xml;
    while let Some(i) = rest.find(&open) {
        let after = &rest[i + open.len()..];
        let Some(j) = after.find(&close) else { break };
        out.push(
            after[..j]
                .replace("&quot;", "\"")
                .replace("&apos;", "'")
                .replace("&lt;", "<")
                .replace("&gt;", ">")
                .replace("&amp;", "&"),
        );
        rest = &after[j + close.len()..];
    }
    out
}

#[async_trait::async_trait]
impl Driver for S3Driver {
    fn name(&self) -> &'static str {
        "s3"
    }

    fn capabilities(&self) -> Capabilities {
        Capabilities {
            replace_if_unchanged: true,
            atomic_rename: false,
            redirect: true,
        }
    }

    async fn get(&self, path: &str) -> DriverResult<(Bytes, Version)> {
        let o = self.obj(path)?;
        let r = self
            .inner
            .store
            .get(&o)
            .await
            .map_err(|e| self.map_err(path, e))?;
        let version = Version(unquote(r.meta.e_tag.as_deref().unwrap_or_default()));
        let bytes = r.bytes().await.map_err(|e| self.map_err(path, e))?;
        Ok((bytes, version))
    }

    async fn put(&self, path: &str, data: Bytes, mode: PutMode) -> DriverResult<Version> {
        let o = self.obj(path)?;
        let mode = match mode {
            PutMode::Overwrite => ObjPutMode::Overwrite,
            PutMode::Create => ObjPutMode::Create,
            // Unquoted: RGW 16.2 compares If-Match without the quotes.
            PutMode::Replace(v) => ObjPutMode::Update(UpdateVersion {
                e_tag: Some(v.0),
                version: None,
            }),
        };
        let r = self
            .inner
            .store
            .put_opts(&o, PutPayload::from(data), PutOptions::from(mode))
            .await
            .map_err(|e| self.map_err(path, e))?;
        Ok(Version(unquote(r.e_tag.as_deref().unwrap_or_default())))
    }

    async fn reader(&self, path: &str, offset: u64, len: Option<u64>) -> DriverResult<Reader> {
        let o = self.obj(path)?;
        let range = match len {
            Some(0) => None,
            Some(n) => Some(GetRange::Bounded(offset..offset.saturating_add(n))),
            None if offset == 0 => None,
            None => Some(GetRange::Offset(offset)),
        };
        if len == Some(0) || range.is_some() {
            // A range S3 cannot satisfy (at or past the end) is an error there: decide
            // with the size first when the read may start at the end.
            let meta = self.head(path).await?;
            if offset > meta.size {
                return Err(DriverError::InvalidOffset {
                    path: path.to_owned(),
                    offset,
                });
            }
            if offset == meta.size || len == Some(0) {
                return Ok(Reader {
                    size: meta.size,
                    body: Box::pin(futures::stream::empty()),
                });
            }
            let end = len.map_or(meta.size, |n| offset.saturating_add(n).min(meta.size));
            let opts = GetOptions {
                range: Some(GetRange::Bounded(offset..end)),
                ..GetOptions::default()
            };
            let r = self
                .inner
                .store
                .get_opts(&o, opts)
                .await
                .map_err(|e| self.map_err(path, e))?;
            let size = r.meta.size;
            let me = self.clone();
            let p = path.to_owned();
            let body = r.into_stream().map_err(move |e| me.map_err(&p, e));
            return Ok(Reader {
                size,
                body: Box::pin(body),
            });
        }
        let r = self
            .inner
            .store
            .get(&o)
            .await
            .map_err(|e| self.map_err(path, e))?;
        let size = r.meta.size;
        let me = self.clone();
        let p = path.to_owned();
        let body = r.into_stream().map_err(move |e| me.map_err(&p, e));
        Ok(Reader {
            size,
            body: Box::pin(body),
        })
    }

    async fn writer(&self, path: &str, start: WriterStart) -> DriverResult<Box<dyn Writer>> {
        check_file_path(path)?;
        let w = writer::S3Writer::open(self.clone(), path, start).await?;
        Ok(Box::new(w))
    }

    async fn writer_size(&self, path: &str) -> DriverResult<u64> {
        check_file_path(path)?;
        writer::S3Writer::saved_size(self, path).await
    }

    async fn stat(&self, path: &str) -> DriverResult<Stat> {
        check_path(path)?;
        if !path.is_empty() {
            match self.head(path).await {
                Ok(m) => {
                    return Ok(Stat {
                        size: m.size,
                        modified: SystemTime::from(m.last_modified),
                        is_dir: false,
                    });
                }
                Err(DriverError::NotFound(_)) => {}
                Err(e) => return Err(e),
            }
        }
        let p = self.prefix(path)?;
        let first = self
            .inner
            .store
            .list(p.as_ref())
            .next()
            .await
            .transpose()
            .map_err(|e| self.map_err(path, e))?;
        match first {
            Some(_) => Ok(Stat {
                size: 0,
                modified: SystemTime::UNIX_EPOCH,
                is_dir: true,
            }),
            None => Err(DriverError::NotFound(path.to_owned())),
        }
    }

    async fn list(&self, path: &str) -> DriverResult<Vec<Entry>> {
        let p = self.prefix(path)?;
        let r = self
            .inner
            .store
            .list_with_delimiter(p.as_ref())
            .await
            .map_err(|e| self.map_err(path, e))?;
        let mut out: Vec<Entry> = r
            .common_prefixes
            .iter()
            .filter_map(|c| c.filename())
            .map(|n| Entry {
                name: n.to_owned(),
                is_dir: true,
            })
            .chain(
                r.objects
                    .iter()
                    .filter_map(|o| o.location.filename())
                    .map(|n| Entry {
                        name: n.to_owned(),
                        is_dir: false,
                    }),
            )
            .collect();
        if out.is_empty() {
            return Err(DriverError::NotFound(path.to_owned()));
        }
        out.sort();
        Ok(out)
    }

    fn walk(&self, prefix: &str) -> Pin<Box<dyn Stream<Item = DriverResult<WalkEntry>> + Send>> {
        let p = match self.prefix(prefix) {
            Ok(p) => p,
            Err(e) => return Box::pin(futures::stream::once(async { Err(e) })),
        };
        let (tx, rx) = tokio::sync::mpsc::channel::<DriverResult<WalkEntry>>(1024);
        let me = self.clone();
        let shown = prefix.to_owned();
        tokio::spawn(async move {
            let base = p.as_ref().map(|p| p.to_string()).unwrap_or_default();
            let send = |m: object_store::ObjectMeta| {
                let rel = me.rel(m.location.as_ref(), &base).map(str::to_owned);
                rel.map(|path| WalkEntry {
                    path,
                    size: m.size,
                    modified: SystemTime::from(m.last_modified),
                })
            };
            // Go down while there is one folder and nothing else (blobs/ → sha256/),
            // then list the folders found there in parallel.
            let mut level = p.clone();
            let mut folders = Vec::new();
            // Whether every level had one folder: the last one found is then not
            // listed yet (when a level had files or several folders, it was).
            let mut descending = true;
            for _ in 0..4 {
                let r = match me.inner.store.list_with_delimiter(level.as_ref()).await {
                    Ok(r) => r,
                    Err(e) => {
                        let _ = tx.send(Err(me.map_err(&shown, e))).await;
                        return;
                    }
                };
                for o in r.objects {
                    if let Some(e) = send(o)
                        && tx.send(Ok(e)).await.is_err()
                    {
                        return;
                    }
                }
                if r.common_prefixes.len() == 1 {
                    level = r.common_prefixes.into_iter().next();
                    continue;
                }
                folders = r.common_prefixes;
                descending = false;
                break;
            }
            if descending {
                folders = level.into_iter().collect();
            }
            let mut lists = futures::stream::iter(folders)
                .map(|f| me.inner.store.list(Some(&f)))
                .flatten_unordered(WALK_PARALLELISM);
            while let Some(item) = lists.next().await {
                let msg = match item {
                    Ok(m) => match send(m) {
                        Some(e) => Ok(e),
                        None => continue,
                    },
                    Err(e) => Err(me.map_err(&shown, e)),
                };
                if tx.send(msg).await.is_err() {
                    return;
                }
            }
        });
        Box::pin(futures::stream::unfold(rx, |mut rx| async move {
            rx.recv().await.map(|v| (v, rx))
        }))
    }

    async fn list_below(&self, prefix: &str) -> DriverResult<Vec<WalkEntry>> {
        let p = self.prefix(prefix)?;
        let base = p.as_ref().map(|p| p.to_string()).unwrap_or_default();
        let found: Vec<object_store::ObjectMeta> = self
            .inner
            .store
            .list(p.as_ref())
            .try_collect()
            .await
            .map_err(|e| self.map_err(prefix, e))?;
        Ok(found
            .into_iter()
            .filter_map(|m| {
                let path = self.rel(m.location.as_ref(), &base)?.to_owned();
                Some(WalkEntry {
                    path,
                    size: m.size,
                    modified: SystemTime::from(m.last_modified),
                })
            })
            .collect())
    }

    async fn delete(&self, path: &str) -> DriverResult<()> {
        check_file_path(path)?;
        let file = match self.head(path).await {
            Ok(m) => Some(m.location),
            Err(DriverError::NotFound(_)) => None,
            Err(e) => return Err(e),
        };
        let mut keys = self.keys_below(path).await?;
        keys.extend(file);
        if keys.is_empty() {
            return Err(DriverError::NotFound(path.to_owned()));
        }
        for r in self.delete_objects(keys).await? {
            r?;
        }
        Ok(())
    }

    async fn delete_many(&self, paths: &[String]) -> DriverResult<Vec<DriverResult<()>>> {
        let mut keys = Vec::with_capacity(paths.len());
        for p in paths {
            keys.push(self.obj(p)?);
        }
        self.delete_objects(keys).await
    }

    async fn rename(&self, from: &str, to: &str) -> DriverResult<()> {
        let f = self.obj(from)?;
        self.copy_object(from, to).await?;
        self.inner
            .store
            .delete(&f)
            .await
            .map_err(|e| self.map_err(from, e))
    }

    async fn touch(&self, path: &str) -> DriverResult<()> {
        check_file_path(path)?;
        self.copy_onto_itself(path).await
    }

    async fn pending_uploads(&self, prefix: &str) -> DriverResult<Vec<PendingUpload>> {
        Ok(self
            .multipart_uploads(prefix)
            .await?
            .into_iter()
            .map(|(path, id, started)| PendingUpload { path, id, started })
            .collect())
    }

    async fn abort_pending(&self, upload: &PendingUpload) -> DriverResult<()> {
        use object_store::multipart::MultipartStore;
        let o = self.obj(&upload.path)?;
        match self.inner.store.abort_multipart(&o, &upload.id).await {
            Ok(()) | Err(object_store::Error::NotFound { .. }) => Ok(()),
            Err(e) => Err(self.map_err(&upload.path, e)),
        }
    }

    async fn redirect_url(&self, path: &str, expires: Duration) -> DriverResult<Option<String>> {
        use object_store::signer::Signer;
        let o = self.obj(path)?;
        let url = self
            .inner
            .store
            .signed_url(http::Method::GET, &o, expires)
            .await
            .map_err(|e| self.map_err(path, e))?;
        Ok(Some(url.to_string()))
    }
}
