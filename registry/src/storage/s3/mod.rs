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
//! Uploads are multipart ([`writer`]): memory stays at one part (`chunksize`) per writer.

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
    Capabilities, Driver, DriverError, DriverResult, Entry, PutMode, Reader, Stat, Version,
    WalkEntry, Writer, WriterStart, check_file_path, check_path,
};

/// Listings a walk runs at once.
const WALK_PARALLELISM: usize = 16;

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
            }),
        })
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
        if c.forcepathstyle || c.regionendpoint.is_none() {
            format!("{e}/{}/{enc}", c.bucket)
        } else {
            format!("{}/{enc}", virtual_hosted(e, &c.bucket))
        }
    }

    /// A copy of `key` onto itself with new metadata: `LastModified` becomes now. The
    /// data is not rewritten (RGW shares it; AWS copies server-side).
    async fn copy_onto_itself(&self, path: &str) -> DriverResult<()> {
        let key = self.key(path);
        let url = self.url_of(&key);
        let source = format!("{}/{}", self.inner.config.bucket, key);
        let mut req = http::Request::builder()
            .method(http::Method::PUT)
            .uri(&url)
            .header("x-amz-copy-source", &source)
            .header("x-amz-metadata-directive", "REPLACE")
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
        let resp = self.inner.http.execute(req).await.map_err(|e| {
            let message = e.to_string();
            DriverError::Unavailable {
                endpoint: self.inner.endpoint.clone(),
                message,
            }
        })?;
        let status = resp.status();
        if status.is_success() {
            // A copy can fail after a 200 (the error is in the body).
            let body = resp.into_body().bytes().await.unwrap_or_default();
            if body.windows(7).any(|w| w == b"<Error>") {
                return Err(DriverError::Backend {
                    path: path.to_owned(),
                    message: String::from_utf8_lossy(&body).into_owned(),
                });
            }
            return Ok(());
        }
        match status.as_u16() {
            404 => Err(DriverError::NotFound(path.to_owned())),
            s if s >= 500 => Err(DriverError::Unavailable {
                endpoint: self.inner.endpoint.clone(),
                message: format!("copy answered {status}"),
            }),
            _ => {
                let body = resp.into_body().bytes().await.unwrap_or_default();
                Err(DriverError::Backend {
                    path: path.to_owned(),
                    message: format!("copy answered {status}: {}", String::from_utf8_lossy(&body)),
                })
            }
        }
    }
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
                break;
            }
            if folders.is_empty() && level != p {
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
        let (f, t) = (self.obj(from)?, self.obj(to)?);
        self.inner
            .store
            .copy(&f, &t)
            .await
            .map_err(|e| self.map_err(from, e))?;
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
