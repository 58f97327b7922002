//! Notifications: Distribution's `notifications.endpoints[]` and its event envelope
//! (`application/vnd.docker.distribution.events.v2+json`, push / pull / mount / delete
//! events with target, request, actor and source), so existing receivers work unchanged.
//!
//! Unlike Distribution's in-memory queue, every endpoint has a **durable, bounded queue**
//! in the root (`drydock/notifications/<endpoint>/<seq>.json`, paths from `PathSpec`):
//!
//! ```text
//! request layer ──try_send──▶ intake (bounded channel; full: dropped, counted, logged)
//!     │  (never blocks a request)        │ batches, fills blob sizes, filters per endpoint
//!     │                                  ▼
//! collector / retention ──────▶ <seq>.json written atomically (temp, fsync, rename)
//!                                        │
//!                        deliverer ◀─────┘  POST {"events":[…]} oldest first; the file is
//!                                           removed only after a 2xx/3xx answer
//! ```
//!
//! Delivery is at least once: a batch is resent until acknowledged (after a crash too),
//! and every event carries a stable `id` for receivers to deduplicate. Failed attempts
//! are retried, immediately at first, then after `threshold` consecutive failures with
//! `backoff` doubling up to 64 × `backoff`. A full queue drops new events for that
//! endpoint, counts them (`drydock_notifications_dropped_total`) and logs an error.

use std::collections::VecDeque;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use axum::http::{HeaderMap, HeaderName, HeaderValue, Method, StatusCode, header};
use http_body_util::{BodyExt, Full};
use serde::{Deserialize, Serialize};
use tokio::sync::{Notify, mpsc};

use crate::api::telemetry::{RequestSink, RouteKind, Summary};
use crate::config::{Config, EndpointConfig};
use crate::metrics::{EndpointEventLabels, EndpointLabels, EndpointStatusLabels, Metrics};
use crate::storage::{PathSpec, path_for};
use crate::store::Store;

/// The envelope's content type.
pub const ENVELOPE: &str = "application/vnd.docker.distribution.events.v2+json";
const BLOB_MEDIA_TYPE: &str = "application/octet-stream";
/// Events written to one queue file at most.
const BATCH: usize = 256;

/// One event, as Distribution writes it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Event {
    pub id: String,
    pub timestamp: String,
    pub action: String,
    pub target: Target,
    pub request: RequestInfo,
    pub actor: ActorInfo,
    pub source: SourceInfo,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Target {
    #[serde(rename = "mediaType", skip_serializing_if = "Option::is_none")]
    pub media_type: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub digest: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub size: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub length: Option<u64>,
    pub repository: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub url: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tag: Option<String>,
    #[serde(rename = "fromRepository", skip_serializing_if = "Option::is_none")]
    pub from_repository: Option<String>,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct RequestInfo {
    pub id: String,
    pub addr: String,
    pub host: String,
    pub method: String,
    pub useragent: String,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct ActorInfo {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct SourceInfo {
    pub addr: String,
    #[serde(rename = "instanceID")]
    pub instance_id: String,
}

fn now_rfc3339() -> String {
    time::OffsetDateTime::now_utc()
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_default()
}

/// The notifications of one server.
pub struct Notifier {
    intake: mpsc::Sender<Event>,
    source: SourceInfo,
    metrics: Option<Arc<Metrics>>,
    dropped: AtomicU64,
}

impl Notifier {
    /// Loads every enabled endpoint's queue and starts delivering; `None` without
    /// endpoints. Must run inside a tokio runtime.
    pub fn start(
        config: &Config,
        store: Store,
        metrics: Option<Arc<Metrics>>,
    ) -> Option<Arc<Notifier>> {
        let endpoints: Vec<Arc<Endpoint>> = config
            .notifications
            .endpoints
            .iter()
            .filter(|e| !e.disabled)
            .map(|e| Endpoint::new(e, &store, metrics.clone()))
            .collect();
        if endpoints.is_empty() {
            return None;
        }
        let (intake, rx) = mpsc::channel(8192);
        for e in &endpoints {
            let e = e.clone();
            tokio::spawn(async move {
                e.load().await;
                e.deliver_forever().await;
            });
        }
        tokio::spawn(write_batches(rx, endpoints, store));
        let port = config.http.addr.rsplit(':').next().unwrap_or("5000");
        Some(Arc::new(Notifier {
            intake,
            source: SourceInfo {
                addr: format!("{}:{port}", hostname()),
                instance_id: uuid::Uuid::new_v4().to_string(),
            },
            metrics,
            dropped: AtomicU64::new(0),
        }))
    }

    /// Queues `event` for every endpoint that wants it; never waits.
    fn offer(&self, event: Event) {
        if self.intake.try_send(event).is_err() {
            let n = self.dropped.fetch_add(1, Ordering::Relaxed);
            if let Some(m) = &self.metrics {
                m.notifications
                    .dropped
                    .get_or_create(&EndpointLabels {
                        endpoint: "*".into(),
                    })
                    .inc();
            }
            if n.is_multiple_of(1000) {
                tracing::error!(
                    dropped = n + 1,
                    "notification intake full (the queues cannot keep up): events dropped"
                );
            }
        }
    }

    fn event(
        &self,
        action: &str,
        target: Target,
        request: RequestInfo,
        actor: Option<String>,
    ) -> Event {
        Event {
            id: uuid::Uuid::new_v4().to_string(),
            timestamp: now_rfc3339(),
            action: action.into(),
            target,
            request,
            actor: ActorInfo { name: actor },
            source: self.source.clone(),
        }
    }

    /// A deletion the server made itself (a collection, a retention run): `reference`
    /// is `repo@digest` or `repo:tag`.
    pub fn deleted_by(&self, actor: &str, reference: &str) {
        let mut target = Target::default();
        if let Some((repo, digest)) = reference.split_once('@') {
            target.repository = repo.into();
            target.digest = Some(digest.into());
        } else if let Some((repo, tag)) = reference.rsplit_once(':') {
            target.repository = repo.into();
            target.tag = Some(tag.into());
        } else {
            return;
        }
        let request = RequestInfo {
            method: "DELETE".into(),
            ..RequestInfo::default()
        };
        self.offer(self.event("delete", target, request, Some(actor.into())));
    }
}

impl RequestSink for Notifier {
    fn finished(&self, s: Summary) {
        // A blob GET redirected to the bucket is a pull too (as Distribution counts it).
        let redirected_pull = s.route == RouteKind::Blob
            && s.method == Method::GET
            && s.status == StatusCode::TEMPORARY_REDIRECT;
        if !(s.status.is_success() || redirected_pull) {
            return;
        }
        let Some(repo) = s.repo.clone() else { return };
        let rh = |n: &str| {
            s.request_headers
                .get(n)
                .and_then(|v| v.to_str().ok())
                .map(str::to_owned)
        };
        let ph = |n: &str| {
            s.response_headers
                .get(n)
                .and_then(|v| v.to_str().ok())
                .map(str::to_owned)
        };
        let host = rh("host").unwrap_or_default();
        let digest = ph("docker-content-digest");
        let query: Vec<(String, String)> = s
            .query
            .as_deref()
            .and_then(|q| serde_urlencoded::from_str(q).ok())
            .unwrap_or_default();
        let param = |k: &str| query.iter().find(|(a, _)| a == k).map(|(_, v)| v.clone());
        let tag = s.reference.clone().filter(|r| !r.contains(':'));
        let manifest_url = |d: &str| format!("http://{host}/v2/{repo}/manifests/{d}");
        let blob_url = |d: &str| format!("http://{host}/v2/{repo}/blobs/{d}");
        let length = ph("content-length").and_then(|v| v.parse::<u64>().ok());
        let (action, target) = match (s.route, &s.method, s.status) {
            (RouteKind::Manifest, &Method::PUT, StatusCode::CREATED) => (
                "push",
                Target {
                    media_type: rh("content-type"),
                    size: Some(s.bytes_in),
                    length: Some(s.bytes_in),
                    url: digest.as_deref().map(manifest_url),
                    digest,
                    tag,
                    ..Target::default()
                },
            ),
            (RouteKind::Manifest, &Method::GET, StatusCode::OK) => (
                "pull",
                Target {
                    media_type: ph("content-type"),
                    size: length,
                    length,
                    url: digest.as_deref().map(manifest_url),
                    digest,
                    tag,
                    ..Target::default()
                },
            ),
            (RouteKind::Manifest, &Method::DELETE, StatusCode::ACCEPTED) => {
                let d = s.reference.clone().filter(|r| r.contains(':'));
                (
                    "delete",
                    Target {
                        digest: d,
                        tag,
                        ..Target::default()
                    },
                )
            }
            (RouteKind::Blob, &Method::GET, StatusCode::TEMPORARY_REDIRECT) => (
                "pull",
                Target {
                    media_type: Some(BLOB_MEDIA_TYPE.into()),
                    url: digest.as_deref().map(blob_url),
                    digest,
                    ..Target::default()
                },
            ),
            (RouteKind::Blob, &Method::GET, StatusCode::OK) => (
                "pull",
                Target {
                    media_type: Some(BLOB_MEDIA_TYPE.into()),
                    size: length,
                    length,
                    url: digest.as_deref().map(blob_url),
                    digest,
                    ..Target::default()
                },
            ),
            (RouteKind::Blob, &Method::DELETE, StatusCode::ACCEPTED) => (
                "delete",
                Target {
                    digest: s.reference.clone(),
                    ..Target::default()
                },
            ),
            (
                RouteKind::BlobUpload | RouteKind::BlobUploadChunk,
                &Method::POST | &Method::PUT,
                StatusCode::CREATED,
            ) => {
                let mount = param("mount").filter(|_| s.method == Method::POST);
                let from = param("from").filter(|_| mount.is_some());
                (
                    if mount.is_some() { "mount" } else { "push" },
                    Target {
                        media_type: Some(BLOB_MEDIA_TYPE.into()),
                        url: digest.as_deref().map(blob_url),
                        digest: digest.or(mount),
                        from_repository: from,
                        ..Target::default()
                    },
                )
            }
            _ => return,
        };
        let target = Target {
            repository: repo,
            ..target
        };
        let request = RequestInfo {
            id: s.id,
            addr: s.peer.map(|p| p.to_string()).unwrap_or_default(),
            host,
            method: s.method.to_string(),
            useragent: rh("user-agent").unwrap_or_default(),
        };
        self.offer(self.event(action, target, request, s.actor));
    }
}

fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_owned())
        .ok()
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "localhost".into())
}

/// Takes events off the intake in batches, fills the size of blob events (a stat of the
/// pool file) and appends each endpoint's share to its queue.
async fn write_batches(mut rx: mpsc::Receiver<Event>, endpoints: Vec<Arc<Endpoint>>, store: Store) {
    while let Some(first) = rx.recv().await {
        let mut batch = vec![first];
        while batch.len() < BATCH {
            match rx.try_recv() {
                Ok(e) => batch.push(e),
                Err(_) => break,
            }
        }
        for e in &mut batch {
            if e.target.size.is_none()
                && e.target.media_type.as_deref() == Some(BLOB_MEDIA_TYPE)
                && let Some(d) = e.target.digest.as_deref().and_then(|d| d.parse().ok())
                && let Ok(info) = store.driver.stat(&path_for(PathSpec::BlobData(&d))).await
            {
                e.target.size = Some(info.size);
                e.target.length = Some(info.size);
            }
        }
        for ep in &endpoints {
            let mine: Vec<&Event> = batch.iter().filter(|e| ep.wants(e)).collect();
            if !mine.is_empty() {
                ep.append(&mine).await;
            }
        }
    }
}

/// One endpoint: its settings, its durable queue and its delivery state.
struct Endpoint {
    name: String,
    url: http::Uri,
    headers: HeaderMap,
    timeout: Duration,
    threshold: u32,
    backoff: Duration,
    ignored_media_types: Vec<String>,
    ignored_actions: Vec<String>,
    limit: usize,
    store: Store,
    /// The store folder of the queue.
    dir: String,
    /// Queue files, oldest first: (sequence number, events in it).
    files: std::sync::Mutex<VecDeque<(u64, usize)>>,
    next_seq: AtomicU64,
    wake: Notify,
    metrics: Option<Arc<Metrics>>,
}

/// The queue folder's name for an endpoint: its name made path-safe, and a short hash
/// so two names that sanitize alike stay apart.
fn queue_name(name: &str) -> String {
    use sha2::Digest as _;
    let safe: String = name
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == '_' {
                c
            } else {
                '_'
            }
        })
        .take(48)
        .collect();
    let h = sha2::Sha256::digest(name.as_bytes());
    format!("{safe}-{}", &hex::encode(h)[..8])
}

impl Endpoint {
    fn new(c: &EndpointConfig, store: &Store, metrics: Option<Arc<Metrics>>) -> Arc<Endpoint> {
        let mut headers = HeaderMap::new();
        for (k, values) in &c.headers {
            for v in values {
                // Checked when the configuration was loaded.
                if let (Ok(k), Ok(v)) = (
                    HeaderName::try_from(k.as_str()),
                    HeaderValue::try_from(v.as_str()),
                ) {
                    headers.append(k, v);
                }
            }
        }
        let mut ignored_media_types = c.ignoredmediatypes.clone();
        ignored_media_types.extend(c.ignore.mediatypes.iter().cloned());
        Arc::new(Endpoint {
            name: c.name.clone(),
            url: c.url.parse().unwrap_or_default(),
            headers,
            timeout: c.timeout,
            threshold: c.threshold.max(1),
            backoff: c.backoff,
            ignored_media_types,
            ignored_actions: c.ignore.actions.clone(),
            limit: c.queue_limit,
            store: store.clone(),
            dir: path_for(PathSpec::NotificationQueue(&queue_name(&c.name))),
            files: std::sync::Mutex::new(VecDeque::new()),
            next_seq: AtomicU64::new(1),
            wake: Notify::new(),
            metrics,
        })
    }

    fn labels(&self) -> EndpointLabels {
        EndpointLabels {
            endpoint: self.name.clone(),
        }
    }

    fn files(&self) -> std::sync::MutexGuard<'_, VecDeque<(u64, usize)>> {
        self.files.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn pending(&self) -> usize {
        self.files().iter().map(|(_, n)| n).sum()
    }

    fn wants(&self, e: &Event) -> bool {
        !self.ignored_actions.contains(&e.action)
            && !e
                .target
                .media_type
                .as_ref()
                .is_some_and(|m| self.ignored_media_types.iter().any(|i| i == m))
    }

    fn file(&self, seq: u64) -> String {
        format!("{}/{seq:020}.json", self.dir)
    }

    /// Finds the queue files left by an earlier run (a restart, a crash).
    async fn load(&self) {
        let names: Vec<String> = match self.store.driver.list(&self.dir).await {
            Ok(entries) => entries.into_iter().map(|e| e.name).collect(),
            Err(_) => Vec::new(),
        };
        let mut found = Vec::new();
        for n in names {
            let Some(seq) = n.strip_suffix(".json").and_then(|s| s.parse::<u64>().ok()) else {
                continue;
            };
            match self.store.driver.get(&self.file(seq)).await {
                Ok((bytes, _)) => match serde_json::from_slice::<Vec<serde_json::Value>>(&bytes) {
                    Ok(events) => found.push((seq, events.len())),
                    Err(e) => {
                        tracing::error!(endpoint = %self.name, file = %self.file(seq), error = %e, "unreadable notification queue file left in place")
                    }
                },
                Err(e) => {
                    tracing::error!(endpoint = %self.name, error = %e, "cannot read a notification queue file")
                }
            }
        }
        found.sort();
        if let Some((last, _)) = found.last() {
            self.next_seq.store(last + 1, Ordering::SeqCst);
        }
        let n: usize = found.iter().map(|(_, n)| n).sum();
        if n > 0 {
            tracing::info!(endpoint = %self.name, events = n, "notification queue resumed");
        }
        self.files().extend(found);
        self.set_pending_gauge();
        self.wake.notify_one();
    }

    fn set_pending_gauge(&self) {
        if let Some(m) = &self.metrics {
            m.notifications
                .pending
                .get_or_create(&self.labels())
                .set(self.pending() as i64);
        }
    }

    /// Appends events as one queue file (atomically), as many as the limit allows.
    async fn append(&self, events: &[&Event]) {
        let room = self.limit.saturating_sub(self.pending());
        let (keep, drop) = events.split_at(events.len().min(room));
        if !drop.is_empty() {
            if let Some(m) = &self.metrics {
                m.notifications
                    .dropped
                    .get_or_create(&self.labels())
                    .inc_by(drop.len() as u64);
            }
            tracing::error!(endpoint = %self.name, limit = self.limit, dropped = drop.len(), "notification queue full: events dropped");
        }
        if keep.is_empty() {
            return;
        }
        let bytes = match serde_json::to_vec(keep) {
            Ok(b) => b,
            Err(e) => {
                tracing::error!(error = %e, "cannot encode notification events");
                return;
            }
        };
        let seq = self.next_seq.fetch_add(1, Ordering::SeqCst);
        if let Err(e) = self
            .store
            .driver
            .put(
                &self.file(seq),
                bytes.into(),
                crate::storage::PutMode::Overwrite,
            )
            .await
        {
            tracing::error!(endpoint = %self.name, error = %e, "cannot queue notification events: dropped");
            return;
        }
        self.files().push_back((seq, keep.len()));
        self.count("Events", keep.len());
        self.set_pending_gauge();
        self.wake.notify_one();
    }

    async fn deliver_forever(self: Arc<Self>) {
        let mut failures: u32 = 0;
        loop {
            let front = self.files().front().copied();
            let Some((seq, n)) = front else {
                self.wake.notified().await;
                continue;
            };
            let path = self.file(seq);
            let events: Vec<serde_json::Value> = match self.store.driver.get(&path).await {
                Ok((b, _)) => serde_json::from_slice(&b).unwrap_or_default(),
                Err(e) => {
                    tracing::error!(endpoint = %self.name, error = %e, "cannot read a queued notification file; skipped");
                    Vec::new()
                }
            };
            let delivered = events.is_empty() || self.send(&events).await;
            if !delivered {
                failures += 1;
                if failures == 1 || failures.is_multiple_of(self.threshold) {
                    tracing::warn!(endpoint = %self.name, failures, pending = self.pending(), "notification delivery failing; events kept");
                }
                let wait = if failures < self.threshold {
                    Duration::from_millis(50 * u64::from(failures))
                } else {
                    self.backoff
                        .checked_mul(1u32 << (failures - self.threshold).min(6))
                        .unwrap_or(crate::config::MAX_DURATION)
                };
                tokio::time::sleep(wait).await;
                continue;
            }
            if failures >= self.threshold {
                tracing::info!(endpoint = %self.name, "notification delivery works again");
            }
            failures = 0;
            if let Err(e) = self.store.driver.delete(&path).await
                && !e.is_not_found()
            {
                tracing::error!(endpoint = %self.name, error = %e, "cannot remove a delivered notification file");
            }
            {
                let mut f = self.files();
                if f.front().map(|(s, _)| *s) == Some(seq) {
                    f.pop_front();
                }
            }
            let _ = n;
            self.set_pending_gauge();
        }
    }

    /// One delivery attempt of a batch; true when the receiver took it (2xx or 3xx, as
    /// Distribution counts it).
    async fn send(&self, events: &[serde_json::Value]) -> bool {
        let body = serde_json::json!({ "events": events }).to_string();
        let attempt = tokio::time::timeout(self.timeout, self.post(body)).await;
        match attempt {
            Ok(Ok(status)) => {
                if let Some(m) = &self.metrics {
                    m.notifications
                        .status
                        .get_or_create(&EndpointStatusLabels {
                            code: format!(
                                "{} {}",
                                status.as_u16(),
                                status.canonical_reason().unwrap_or("")
                            ),
                            endpoint: self.name.clone(),
                        })
                        .inc();
                }
                let taken = status.is_success() || status.is_redirection();
                self.count(if taken { "Successes" } else { "Failures" }, events.len());
                taken
            }
            Ok(Err(e)) => {
                tracing::debug!(endpoint = %self.name, error = %e, "notification delivery failed");
                self.count("Errors", events.len());
                false
            }
            Err(_) => {
                self.count("Errors", events.len());
                false
            }
        }
    }

    /// Adds `n` events to `registry_notifications_events_total{type=kind}`.
    fn count(&self, kind: &'static str, n: usize) {
        if let Some(m) = &self.metrics {
            m.notifications
                .events
                .get_or_create(&EndpointEventLabels {
                    r#type: kind,
                    endpoint: self.name.clone(),
                })
                .inc_by(n as u64);
        }
    }

    async fn post(&self, body: String) -> Result<StatusCode, String> {
        let host = self.url.host().ok_or("no host")?;
        let port = self.url.port_u16().unwrap_or(80);
        let stream = tokio::net::TcpStream::connect((host.trim_matches(['[', ']']), port))
            .await
            .map_err(|e| e.to_string())?;
        let (mut sender, conn) =
            hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream))
                .await
                .map_err(|e| e.to_string())?;
        tokio::spawn(conn);
        let path = self.url.path_and_query().map(|p| p.as_str()).unwrap_or("/");
        let mut req = http::Request::builder()
            .method(Method::POST)
            .uri(path)
            .header(
                header::HOST,
                self.url.authority().map(|a| a.as_str()).unwrap_or(host),
            )
            .header(header::CONTENT_TYPE, ENVELOPE)
            .header(header::CONTENT_LENGTH, body.len())
            .body(Full::new(bytes::Bytes::from(body)))
            .map_err(|e| e.to_string())?;
        for (k, v) in &self.headers {
            req.headers_mut().append(k, v.clone());
        }
        let resp = sender.send_request(req).await.map_err(|e| e.to_string())?;
        let status = resp.status();
        let _ = resp.into_body().collect().await;
        Ok(status)
    }
}
