//! Prometheus metrics of one server: one [`Metrics`] (with its own registry, so tests
//! running several servers in one process never share a series) per server, created
//! when `http.debug.prometheus.enabled` or `admin.metrics` asks for it and rendered in
//! the text format at scrape time. Names follow CNCF Distribution's where it has the
//! same metric (`registry_http_*`, `registry_storage_action_seconds`,
//! `registry_storage_cache_total`), drydock's own are `drydock_*`.
//!
//! What records here: the request layer (`api::telemetry`), the storage driver's
//! operations ([`StorageOps`]), the cache's lookups (read at scrape), and the collector
//! and maintenance through the handles below. Labels are bounded sets (route kinds,
//! methods, status codes, operation names, task names): never a repository name.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeLabelSet, EncodeMetric};
use prometheus_client::metrics::counter::{ConstCounter, Counter};
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

use crate::cache::Cache;

/// The content type of the text exposition format.
pub const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

type HistogramFamily<L> = Family<L, Histogram, fn() -> Histogram>;

/// Request latencies: 100 µs to about 100 s.
fn latency_histogram() -> Histogram {
    Histogram::new(exponential_buckets(0.0001, 2.5, 16))
}

/// Body sizes: Distribution's buckets, 1 KiB to 2 GiB by doubling.
fn size_histogram() -> Histogram {
    Histogram::new(exponential_buckets(1024.0, 2.0, 22))
}

/// Labels of a served request.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RequestLabels {
    /// The route kind (`manifest`, `blob`, `blob_upload`, `tags`, …).
    pub handler: &'static str,
    pub method: &'static str,
    pub code: u16,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct HandlerLabels {
    pub handler: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ActionLabels {
    pub driver: &'static str,
    pub action: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct PhaseLabels {
    pub phase: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct TaskLabels {
    pub task: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct TaskOutcomeLabels {
    pub task: &'static str,
    pub outcome: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReasonLabels {
    pub reason: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct EndpointLabels {
    pub endpoint: String,
}

/// `registry_notifications_events_total`'s labels, Distribution's.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct EndpointEventLabels {
    /// `Events` (queued), `Successes` (taken by the receiver), `Failures` (answered
    /// with an error status), `Errors` (no answer): events, counted per attempt.
    pub r#type: &'static str,
    pub endpoint: String,
}

/// `registry_notifications_status_total`'s labels, Distribution's.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct EndpointStatusLabels {
    /// The status as Go's `net/http` writes it: `200 OK`, `503 Service Unavailable`.
    pub code: String,
    pub endpoint: String,
}

/// The HTTP metrics, recorded by the request layer.
#[derive(Debug, Clone)]
pub struct HttpMetrics {
    pub requests: Family<RequestLabels, Counter>,
    pub duration: HistogramFamily<RequestLabels>,
    pub in_flight: Family<HandlerLabels, Gauge>,
    /// Request body bytes per request.
    pub request_size: HistogramFamily<HandlerLabels>,
    /// Response body bytes per request.
    pub response_size: HistogramFamily<HandlerLabels>,
    pub uploads_in_progress: Gauge,
    /// Bytes of manifest bodies held by requests (`oci.manifest_memory`).
    pub manifest_body_bytes: Gauge,
    /// Connections open (the server's own, `server::serve`).
    pub connections: Gauge,
    /// Connections closed because the client kept the server waiting, by which wait
    /// (`header`, `idle`, `body`, `send`: `http.timeouts`).
    pub timed_out: Family<WaitLabels, Counter>,
    /// Times the server stopped accepting at `http.max_connections`.
    pub at_cap: Counter,
    /// Failed `accept` calls other than a client's aborted connection (the open-file
    /// limit, mostly).
    pub accept_errors: Counter,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct WaitLabels {
    pub wait: &'static str,
}

/// The collector's metrics, recorded after each cycle of a server's collector.
#[derive(Debug, Clone, Default)]
pub struct GcMetrics {
    pub cycles: Counter,
    pub failures: Counter,
    pub in_progress: Gauge,
    pub phase_seconds: Family<PhaseLabels, Counter<f64>>,
    pub last_duration_seconds: Family<PhaseLabels, Gauge<f64, std::sync::atomic::AtomicU64>>,
    pub freed_bytes: Counter,
    pub removed_blobs: Counter,
    pub removed_manifests: Counter,
    pub removed_layer_links: Counter,
    pub last_success: Gauge<f64, std::sync::atomic::AtomicU64>,
}

/// Maintenance task runs.
#[derive(Debug, Clone)]
pub struct MaintenanceMetrics {
    pub runs: Family<TaskOutcomeLabels, Counter>,
    pub duration: HistogramFamily<TaskLabels>,
    pub running: Family<TaskLabels, Gauge>,
    pub last_success: Family<TaskLabels, Gauge<f64, std::sync::atomic::AtomicU64>>,
}

/// Notification delivery, per endpoint.
#[derive(Debug, Clone, Default)]
pub struct NotificationMetrics {
    pub events: Family<EndpointEventLabels, Counter>,
    pub pending: Family<EndpointLabels, Gauge>,
    pub status: Family<EndpointStatusLabels, Counter>,
    pub dropped: Family<EndpointLabels, Counter>,
}

/// Every metric of one server.
#[derive(Debug)]
pub struct Metrics {
    registry: Mutex<Registry>,
    pub http: HttpMetrics,
    pub storage: StorageOps,
    pub gc: GcMetrics,
    pub maintenance: MaintenanceMetrics,
    pub notifications: NotificationMetrics,
    /// Requests refused for their credentials, by reason (`auth::FailureReason`): the
    /// auth layer and the token service count here.
    pub auth_failures: Family<ReasonLabels, Counter>,
}

impl Metrics {
    pub fn new() -> Arc<Metrics> {
        let mut r = Registry::default();
        let http = HttpMetrics {
            requests: Family::default(),
            duration: Family::new_with_constructor(latency_histogram),
            in_flight: Family::default(),
            request_size: Family::new_with_constructor(size_histogram),
            response_size: Family::new_with_constructor(size_histogram),
            uploads_in_progress: Gauge::default(),
            manifest_body_bytes: Gauge::default(),
            connections: Gauge::default(),
            timed_out: Family::default(),
            accept_errors: Counter::default(),
            at_cap: Counter::default(),
        };
        r.register(
            "registry_http_requests",
            "Requests answered, by route kind, method and status code",
            http.requests.clone(),
        );
        r.register(
            "registry_http_request_duration_seconds",
            "Request duration until the last byte of the response, by route kind, method and status code",
            http.duration.clone(),
        );
        r.register(
            "registry_http_in_flight_requests",
            "Requests being served, by route kind",
            http.in_flight.clone(),
        );
        r.register(
            "registry_http_request_size_bytes",
            "Request body sizes, by route kind",
            http.request_size.clone(),
        );
        r.register(
            "registry_http_response_size_bytes",
            "Response body sizes (bytes sent), by route kind",
            http.response_size.clone(),
        );
        r.register(
            "drydock_blob_uploads_in_progress",
            "Blob upload requests (POST, PATCH, PUT) whose body is being received",
            http.uploads_in_progress.clone(),
        );
        r.register(
            "drydock_manifest_body_bytes",
            "Bytes of manifest bodies being received or handled (bounded by oci.manifest_memory)",
            http.manifest_body_bytes.clone(),
        );
        r.register(
            "drydock_http_connections",
            "Connections open",
            http.connections.clone(),
        );
        r.register(
            "drydock_http_connections_timed_out",
            "Connections closed because the client kept the server waiting longer than http.timeouts allow, by wait (header, idle, body, send)",
            http.timed_out.clone(),
        );
        r.register(
            "drydock_http_connection_cap_reached",
            "Times the server stopped accepting because http.max_connections connections were open",
            http.at_cap.clone(),
        );
        r.register(
            "drydock_http_accept_errors",
            "Connections the server could not accept (the open-file limit, mostly)",
            http.accept_errors.clone(),
        );
        let storage = StorageOps {
            seconds: Family::new_with_constructor(latency_histogram),
        };
        r.register(
            "registry_storage_action_seconds",
            "Storage driver operation latency, by operation",
            storage.seconds.clone(),
        );
        let gc = GcMetrics::default();
        r.register(
            "drydock_gc_cycles",
            "Collection cycles run by this server (failed ones included)",
            gc.cycles.clone(),
        );
        r.register(
            "drydock_gc_failures",
            "Collection cycles that failed",
            gc.failures.clone(),
        );
        r.register(
            "drydock_gc_in_progress",
            "1 while a collection cycle runs",
            gc.in_progress.clone(),
        );
        r.register(
            "drydock_gc_phase_seconds",
            "Time spent in each phase of collection (mark, sweep), summed over cycles",
            gc.phase_seconds.clone(),
        );
        r.register(
            "drydock_gc_last_phase_seconds",
            "Duration of each phase of the last cycle",
            gc.last_duration_seconds.clone(),
        );
        r.register(
            "drydock_gc_freed_bytes",
            "Bytes of pool blobs removed by collection",
            gc.freed_bytes.clone(),
        );
        r.register(
            "drydock_gc_removed_blobs",
            "Pool blobs removed by collection",
            gc.removed_blobs.clone(),
        );
        r.register(
            "drydock_gc_removed_manifests",
            "Untagged manifests removed by collection",
            gc.removed_manifests.clone(),
        );
        r.register(
            "drydock_gc_removed_layer_links",
            "Layer links removed by collection",
            gc.removed_layer_links.clone(),
        );
        r.register(
            "drydock_gc_last_success_timestamp_seconds",
            "When the last successful cycle ended (seconds since the epoch; 0: none yet)",
            gc.last_success.clone(),
        );
        let maintenance = MaintenanceMetrics {
            runs: Family::default(),
            duration: Family::new_with_constructor(latency_histogram),
            running: Family::default(),
            last_success: Family::default(),
        };
        r.register(
            "drydock_maintenance_runs",
            "Maintenance task runs, by task and outcome (ok, failed, killed, skipped)",
            maintenance.runs.clone(),
        );
        r.register(
            "drydock_maintenance_duration_seconds",
            "Maintenance task run duration, by task",
            maintenance.duration.clone(),
        );
        r.register(
            "drydock_maintenance_running",
            "1 while a task runs",
            maintenance.running.clone(),
        );
        r.register(
            "drydock_maintenance_last_success_timestamp_seconds",
            "When each task last ended ok (seconds since the epoch)",
            maintenance.last_success.clone(),
        );
        let notifications = NotificationMetrics::default();
        r.register(
            "registry_notifications_events",
            "Events by endpoint: queued (Events), and per delivery attempt taken (Successes), refused with a status (Failures) or unanswered (Errors)",
            notifications.events.clone(),
        );
        // A gauge named `_total`: Distribution's name.
        r.register(
            "registry_notifications_pending_total",
            "Events waiting in an endpoint's durable queue",
            notifications.pending.clone(),
        );
        r.register(
            "registry_notifications_status",
            "Delivery attempts by HTTP status and endpoint",
            notifications.status.clone(),
        );
        r.register(
            "drydock_notifications_dropped",
            "Events not queued because the endpoint's queue was full",
            notifications.dropped.clone(),
        );
        let auth_failures = Family::default();
        r.register(
            "drydock_auth_failures",
            "Requests refused for their credentials, by reason",
            auth_failures.clone(),
        );
        Arc::new(Metrics {
            registry: Mutex::new(r),
            http,
            storage,
            gc,
            maintenance,
            notifications,
            auth_failures,
        })
    }

    /// Adds a collector read at every scrape.
    pub fn register_collector(&self, collector: impl Collector) {
        self.lock().register_collector(Box::new(collector));
    }

    /// The cache's hit and miss counts, read at every scrape.
    pub fn watch_cache(&self, cache: Arc<Cache>) {
        self.register_collector(CacheCollector(cache));
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Registry> {
        self.registry.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Every metric in the text exposition format.
    pub fn render(&self) -> String {
        let mut out = String::with_capacity(16 << 10);
        if let Err(e) = prometheus_client::encoding::text::encode(&mut out, &self.lock()) {
            tracing::error!(error = %e, "cannot encode the metrics");
        }
        out
    }
}

/// The storage driver's operation timer (`registry_storage_action_seconds`).
#[derive(Debug, Clone)]
pub struct StorageOps {
    seconds: HistogramFamily<ActionLabels>,
}

impl StorageOps {
    /// Times `action` of the filesystem driver until the returned guard is dropped.
    pub fn start(&self, action: &'static str) -> OpTimer {
        self.start_for("filesystem", action)
    }

    /// Times `action` of `driver` until the returned guard is dropped.
    pub fn start_for(&self, driver: &'static str, action: &'static str) -> OpTimer {
        OpTimer {
            ops: self.clone(),
            driver,
            action,
            start: Instant::now(),
        }
    }

    pub fn observe(&self, driver: &'static str, action: &'static str, took: Duration) {
        self.seconds
            .get_or_create(&ActionLabels { driver, action })
            .observe(took.as_secs_f64());
    }
}

/// Records one storage operation's latency when dropped.
pub struct OpTimer {
    ops: StorageOps,
    driver: &'static str,
    action: &'static str,
    start: Instant,
}

impl Drop for OpTimer {
    fn drop(&mut self) {
        self.ops
            .observe(self.driver, self.action, self.start.elapsed());
    }
}

/// `registry_storage_cache_total{type}` (Distribution's names: Request, Hit, Miss) and
/// drydock's per-kind split.
struct CacheCollector(Arc<Cache>);

impl std::fmt::Debug for CacheCollector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("CacheCollector")
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct CacheTypeLabels {
    r#type: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct CacheKindLabels {
    kind: &'static str,
    result: &'static str,
}

impl Collector for CacheCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let lookups = self.0.lookups();
        let (hits, misses) = lookups
            .iter()
            .fold((0, 0), |(h, m), l| (h + l.hits, m + l.misses));
        let total = ConstCounter::new(0u64);
        let mut family = encoder.encode_descriptor(
            "registry_storage_cache",
            "Cache lookups (Request), answered from memory (Hit) or not (Miss)",
            None,
            total.metric_type(),
        )?;
        for (t, v) in [("Request", hits + misses), ("Hit", hits), ("Miss", misses)] {
            ConstCounter::new(v).encode(family.encode_family(&CacheTypeLabels { r#type: t })?)?;
        }
        let mut family = encoder.encode_descriptor(
            "drydock_cache_lookups",
            "Cache lookups by kind (link, size, manifest, tags, catalog) and result",
            None,
            total.metric_type(),
        )?;
        for l in &lookups {
            for (result, v) in [("hit", l.hits), ("miss", l.misses)] {
                ConstCounter::new(v).encode(family.encode_family(&CacheKindLabels {
                    kind: l.kind,
                    result,
                })?)?;
            }
        }
        Ok(())
    }
}
