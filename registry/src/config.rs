//! Configuration: CNCF Distribution's YAML format for the keys drydock supports, so an
//! existing `config.yml` works, plus drydock's own sections. Loading is: built-in
//! defaults ← the file (or the embedded default) ← `REGISTRY_*` environment overrides
//! (Distribution's names: `REGISTRY_HTTP_ADDR`, `REGISTRY_STORAGE_DELETE_ENABLED`, …).
//! A wrong type is an error naming the key's path.
//!
//! **Fail closed.** Every key drydock does not read goes through one table,
//! [`DISTRIBUTION_KEYS`]: a Distribution section that changes what is served or who may
//! do what, and that drydock does not implement (`proxy`, `redis`, `middleware`, an
//! `auth` scheme, a storage driver it lacks, …), stops start-up with one line naming the
//! key; a section that only tunes Distribution's own implementation (`storage.cache`,
//! `http.http2`, …) is accepted and has no effect. A key in no table is a typo or
//! something newer than drydock: refused when it comes from the file, only warned about
//! when it comes from a `REGISTRY_*` variable (Kubernetes sets `REGISTRY_PORT` and
//! friends for a service called `registry`). Keys listed under `ignore:` are accepted
//! with a warning, whatever they are.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Deserializer, Serialize};
use serde_yaml_ng::{Mapping, Value};

const HOUR: Duration = Duration::from_secs(3600);

/// What `registry serve` runs with when no CONFIG is given.
pub const EMBEDDED_DEFAULT: &str = "\
version: 0.1
log:
  level: info
storage:
  filesystem:
    rootdirectory: ./data
  delete:
    enabled: true
http:
  addr: 127.0.0.1:5000
";

#[derive(Debug, Clone, Serialize, Deserialize, Default)]
#[serde(default)]
pub struct Config {
    #[serde(deserialize_with = "string_or_number")]
    pub version: String,
    pub log: LogConfig,
    pub storage: StorageConfig,
    pub http: HttpConfig,
    pub oci: OciConfig,
    pub gc: GcConfig,
    pub admin: AdminConfig,
    pub artifacts: ArtifactsConfig,
    pub maintenance: SchedulerConfig,
    pub uploads: UploadsConfig,
    pub retention: RetentionConfig,
    /// Keys (dotted paths, e.g. `proxy`, `storage.s3`) the operator accepts drydock
    /// will not honour: start anyway, with a warning naming each.
    pub ignore: Vec<String>,
    pub health: HealthConfig,
    pub notifications: NotificationsConfig,
    pub auth: AuthConfig,
    pub access: crate::access::AccessConfig,
    /// Replica mode's coordination database (GitLab's `database:` keys).
    pub database: crate::coordination::DatabaseConfig,
}

/// Distribution's `notifications:` section: webhooks for push, pull, mount and delete.
#[derive(Debug, Clone, Serialize, Deserialize, Default)]
#[serde(default)]
pub struct NotificationsConfig {
    /// Distribution's `events.includereferences` (accepted; drydock sends no references).
    pub events: BTreeMap<String, Value>,
    pub endpoints: Vec<EndpointConfig>,
}

/// One receiver of events.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default)]
pub struct EndpointConfig {
    pub name: String,
    pub disabled: bool,
    /// `http://host:port/path` (https receivers are not supported yet).
    pub url: String,
    /// Headers sent with every request, e.g. `Authorization: [Bearer <token>]`.
    pub headers: BTreeMap<String, Vec<String>>,
    /// A delivery attempt longer than this fails.
    #[serde(with = "go_duration")]
    pub timeout: Duration,
    /// Consecutive failures after which delivery waits `backoff` between attempts.
    pub threshold: u32,
    #[serde(with = "go_duration")]
    pub backoff: Duration,
    /// Events whose target has one of these media types are not sent.
    pub ignoredmediatypes: Vec<String>,
    pub ignore: IgnoreConfig,
    /// drydock's: the most events the endpoint's durable queue holds; further events
    /// are dropped (and counted) until it drains.
    pub queue_limit: usize,
}

impl Default for EndpointConfig {
    fn default() -> Self {
        EndpointConfig {
            name: String::new(),
            disabled: false,
            url: String::new(),
            headers: BTreeMap::new(),
            timeout: Duration::from_secs(1),
            threshold: 10,
            backoff: Duration::from_secs(1),
            ignoredmediatypes: Vec::new(),
            ignore: IgnoreConfig::default(),
            queue_limit: 100_000,
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize, Default)]
#[serde(default)]
pub struct IgnoreConfig {
    pub mediatypes: Vec<String>,
    /// `push`, `pull`, `mount`, `delete`.
    pub actions: Vec<String>,
}

/// Distribution's `health:` section (its `storagedriver` and `file` checks) and
/// drydock's readiness knobs; `/readyz` reports them.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default)]
pub struct HealthConfig {
    pub storagedriver: StorageDriverCheck,
    /// Files whose existence takes the server out of rotation (`/readyz` 503).
    pub file: Vec<FileCheck>,
    /// On SIGTERM, `/readyz` answers 503 this long before the listener stops accepting,
    /// so load balancers move traffic away first.
    #[serde(with = "go_duration")]
    pub shutdown_delay: Duration,
}

impl Default for HealthConfig {
    fn default() -> Self {
        HealthConfig {
            storagedriver: StorageDriverCheck::default(),
            file: Vec::new(),
            shutdown_delay: Duration::ZERO,
        }
    }
}

/// Writes, reads back and removes a probe file under the root every `interval`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default)]
pub struct StorageDriverCheck {
    /// drydock checks by default (Distribution only when enabled); `false` turns it off.
    pub enabled: bool,
    #[serde(with = "go_duration")]
    pub interval: Duration,
    /// Consecutive failures before `/readyz` turns red.
    pub threshold: u32,
    /// A probe slower than this fails (drydock's).
    #[serde(with = "go_duration")]
    pub timeout: Duration,
}

impl Default for StorageDriverCheck {
    fn default() -> Self {
        StorageDriverCheck {
            enabled: true,
            interval: Duration::from_secs(10),
            threshold: 1,
            timeout: Duration::from_secs(5),
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize, Default)]
#[serde(default)]
pub struct FileCheck {
    pub file: PathBuf,
    /// Accepted for Distribution's format; drydock looks at the file on every `/readyz`.
    #[serde(with = "go_duration::option")]
    pub interval: Option<Duration>,
}

/// Authentication (`auth:`): Distribution's `htpasswd` and `token` sections, drydock's
/// built-in token server and client-certificate identities. Every key is checked: an
/// unknown one stops start-up (a security setting is never ignored).
#[derive(Debug, Clone, Serialize, Deserialize, Default)]
#[serde(default, deny_unknown_fields)]
pub struct AuthConfig {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub htpasswd: Option<HtpasswdConfig>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub token: Option<TokenConfig>,
    /// drydock's own token service (off unless present).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tokenserver: Option<TokenServerConfig>,
    /// A client certificate verified against `http.tls.clientcas` names a user (its
    /// subject's common name) for the access policy.
    pub mtls: bool,
}

impl AuthConfig {
    /// Whether any authentication is configured (and so the access policy applies).
    pub fn enabled(&self) -> bool {
        self.htpasswd.is_some() || self.token.is_some() || self.mtls
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HtpasswdConfig {
    #[serde(default = "default_realm")]
    pub realm: String,
    /// An htpasswd file of bcrypt entries (`htpasswd -B`); re-read when it changes.
    pub path: PathBuf,
}

fn default_realm() -> String {
    "drydock".into()
}

/// Bearer tokens (JWTs) from a token service, Distribution's keys.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TokenConfig {
    /// Where clients get tokens: an absolute URL, or a path (`/token`) that is made
    /// absolute with the request's scheme and host.
    pub realm: String,
    /// The audience tokens must be issued for.
    pub service: String,
    /// The issuer tokens must name.
    pub issuer: String,
    /// PEM certificates: a token's `x5c` chain must end at one of them; a token with a
    /// `kid` may also name one of their keys.
    #[serde(default)]
    pub rootcertbundle: Option<PathBuf>,
    /// A JSON Web Key Set file whose keys are looked up by `kid`.
    #[serde(default)]
    pub jwks: Option<PathBuf>,
    /// Algorithms accepted (default RS256, RS384, RS512, ES256, ES384, EdDSA, PS256…).
    #[serde(default)]
    pub signingalgorithms: Vec<String>,
}

/// drydock's built-in token service (`auth.tokenserver`): answers the docker token
/// protocol at the path of `auth.token.realm`, authenticating with `auth.htpasswd` and
/// granting what the access policy allows.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TokenServerConfig {
    /// PKCS#8 PEM private key (EC P-256, Ed25519 or RSA) that signs tokens.
    pub key: PathBuf,
    /// Optional PEM certificate of that key, sent as the tokens' `x5c`.
    #[serde(default)]
    pub certificate: Option<PathBuf>,
    /// Lifetime of an access token (Go duration, at least 60s).
    #[serde(default = "default_token_expiration")]
    pub expiration: String,
    /// Lifetime of a refresh token (`offline_token=true`, OAuth2 `refresh_token`).
    #[serde(default = "default_refreshexpiration")]
    pub refreshexpiration: String,
}

fn default_token_expiration() -> String {
    "5m".into()
}

fn default_refreshexpiration() -> String {
    "720h".into()
}

/// TLS on the listener (`http.tls`), Distribution's keys where rustls can honour them.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlsConfig {
    /// PEM certificate chain (leaf first).
    pub certificate: PathBuf,
    /// PEM private key (PKCS#8, PKCS#1 or SEC1).
    pub key: PathBuf,
    /// PEM CA certificates that client certificates are verified against.
    #[serde(default)]
    pub clientcas: Vec<PathBuf>,
    /// `require-and-verify-client-cert` (the default with `clientcas`) or
    /// `verify-client-cert-if-given`.
    #[serde(default)]
    pub clientauth: Option<String>,
    /// `tls1.2` (default) or `tls1.3`.
    #[serde(default)]
    pub minimumtls: Option<String>,
}

/// Scheduled maintenance (`maintenance:`): which tasks run, when, and how hard.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default)]
pub struct SchedulerConfig {
    /// The server runs due tasks itself.
    pub enabled: bool,
    /// How often the server checks for due tasks.
    #[serde(with = "go_duration")]
    pub tick: Duration,
    /// Tasks running at once (gc and scrub never run together whatever this says).
    pub max_parallel: usize,
    /// Queued tasks wait while the 1-minute load average is above this (0: never).
    pub load_pause: f64,
    /// ...and start again once it is below this.
    pub load_resume: f64,
    /// Interval of the STATUS log line.
    #[serde(with = "go_duration")]
    pub status_interval: Duration,
    pub tasks: TasksConfig,
}

impl Default for SchedulerConfig {
    fn default() -> Self {
        SchedulerConfig {
            enabled: true,
            tick: Duration::from_secs(30),
            max_parallel: 2,
            load_pause: 0.0,
            load_resume: 0.0,
            status_interval: Duration::from_secs(300),
            tasks: TasksConfig::default(),
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default)]
pub struct TasksConfig {
    pub gc: TaskConfig,
    pub retention: TaskConfig,
    pub uploads: TaskConfig,
    pub scrub: TaskConfig,
}

impl Default for TasksConfig {
    fn default() -> Self {
        TasksConfig {
            gc: TaskConfig::new("daily", HOUR * 2),
            retention: TaskConfig::new("daily", HOUR),
            uploads: TaskConfig::new("hourly", HOUR / 2),
            scrub: TaskConfig::new("weekly", HOUR * 12),
        }
    }
}

/// One maintenance task's settings.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default)]
pub struct TaskConfig {
    pub enabled: bool,
    /// `hourly`, `daily`, `weekly`, or a Go duration (`6h`).
    pub schedule: String,
    /// A run longer than this is cancelled and recorded as killed.
    #[serde(with = "go_duration")]
    pub time_limit: Duration,
    /// `--auto` threshold: gc runs once this many deletes happened since its last run.
    pub min_deletes: u64,
}

impl TaskConfig {
    fn new(schedule: &str, time_limit: Duration) -> TaskConfig {
        TaskConfig {
            enabled: true,
            schedule: schedule.into(),
            time_limit,
            min_deletes: 1,
        }
    }
}

impl Default for TaskConfig {
    fn default() -> Self {
        TaskConfig::new("daily", HOUR)
    }
}

/// The upload purger (`uploads:`).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default)]
pub struct UploadsConfig {
    /// Upload sessions older than this are removed (Distribution's 168h).
    #[serde(with = "go_duration")]
    pub max_age: Duration,
}

impl Default for UploadsConfig {
    fn default() -> Self {
        UploadsConfig {
            max_age: HOUR * 168,
        }
    }
}

/// Image tag retention (`retention:`): policies applied by the `retention` task.
#[derive(Debug, Clone, Serialize, Deserialize, Default)]
#[serde(default)]
pub struct RetentionConfig {
    pub images: Vec<ImagePolicy>,
}

/// A tag policy for the repositories whose name matches `repositories`.
#[derive(Debug, Clone, Serialize, Deserialize, Default)]
#[serde(default)]
pub struct ImagePolicy {
    /// Regex over repository names (anchored); empty matches every repository.
    pub repositories: String,
    /// Keep the newest N tags (by the time the tag was last pushed); `None`: keep all.
    pub keep_last: Option<usize>,
    /// Tags matching this regex (anchored) are always kept.
    pub keep_tags: Option<String>,
    /// Untagged manifests older than this are removed.
    #[serde(with = "go_duration::option")]
    pub untagged_older_than: Option<Duration>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default)]
pub struct LogConfig {
    /// error, warn, info, debug, trace.
    pub level: String,
    /// text or json.
    pub formatter: String,
    pub accesslog: AccessLogConfig,
    /// Extra fields Distribution adds to every line (accepted, not used).
    pub fields: BTreeMap<String, Value>,
}

impl Default for LogConfig {
    fn default() -> Self {
        LogConfig {
            level: "info".into(),
            formatter: "text".into(),
            accesslog: AccessLogConfig::default(),
            fields: BTreeMap::new(),
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize, Default)]
#[serde(default)]
pub struct AccessLogConfig {
    pub disabled: bool,
}

#[derive(Debug, Clone, Serialize, Deserialize, Default)]
#[serde(default)]
pub struct StorageConfig {
    pub filesystem: FilesystemConfig,
    pub delete: EnabledFlag,
    pub maintenance: MaintenanceConfig,
    /// Distribution's blob descriptor cache settings (accepted; drydock's caches are
    /// always on and always coherent).
    pub cache: BTreeMap<String, Value>,
    /// Blob GETs redirected to the driver's URL (S3); see [`RedirectConfig`].
    pub redirect: RedirectConfig,
    /// `storage.s3`, Distribution's keys, parsed once (see [`Config::from_yaml`]); when
    /// set it is the driver and `filesystem` is not used.
    #[serde(skip)]
    pub s3: Option<crate::storage::s3::S3Config>,
}

/// `storage.redirect`, Distribution's key: on a driver that can give a URL of its own
/// (S3: presigned, valid 20 minutes), a blob `GET` answers `307` to it, so the bytes do
/// not pass through the server; `disable: true` serves them through the server. The
/// filesystem driver never redirects.
#[derive(Debug, Clone, Serialize, Deserialize, Default)]
#[serde(default)]
pub struct RedirectConfig {
    pub disable: bool,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default)]
pub struct FilesystemConfig {
    pub rootdirectory: PathBuf,
    pub maxthreads: Option<u64>,
    /// Write upload bodies with `O_DIRECT` (past the page cache); see
    /// `storage::append`. Falls back to buffered writes where the filesystem refuses.
    pub directwrites: bool,
}

impl Default for FilesystemConfig {
    fn default() -> Self {
        FilesystemConfig {
            rootdirectory: PathBuf::from("/var/lib/registry"),
            maxthreads: None,
            directwrites: false,
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize, Default)]
#[serde(default)]
pub struct EnabledFlag {
    pub enabled: bool,
}

#[derive(Debug, Clone, Serialize, Deserialize, Default)]
#[serde(default)]
pub struct MaintenanceConfig {
    pub uploadpurging: UploadPurgingConfig,
    pub readonly: EnabledFlag,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default)]
pub struct UploadPurgingConfig {
    pub enabled: bool,
    #[serde(with = "go_duration")]
    pub age: Duration,
    #[serde(with = "go_duration")]
    pub interval: Duration,
    pub dryrun: bool,
}

impl Default for UploadPurgingConfig {
    fn default() -> Self {
        UploadPurgingConfig {
            enabled: true,
            age: HOUR * 168,
            interval: HOUR * 24,
            dryrun: false,
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default)]
pub struct HttpConfig {
    /// `host:port`; `:port` listens on every address.
    pub addr: String,
    /// Only `tcp` is supported.
    pub net: String,
    /// How long a graceful shutdown waits for in-flight requests.
    #[serde(with = "go_duration")]
    pub draintimeout: Duration,
    /// Extra headers on every response.
    pub headers: BTreeMap<String, Vec<String>>,
    pub secret: String,
    pub relativeurls: bool,
    pub host: String,
    pub prefix: String,
    /// Distribution's debug listener: metrics (and health) on a separate address.
    pub debug: DebugConfig,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tls: Option<TlsConfig>,
    /// Addresses of reverse proxies whose `X-Forwarded-For` is logged as the client
    /// address. Never used for any access decision.
    pub trustedproxies: Vec<std::net::IpAddr>,
    /// drydock's: how long a connection may wait on its client.
    pub timeouts: TimeoutsConfig,
    /// drydock's: connections served at once; past it new ones wait in the listen
    /// backlog until one closes.
    pub max_connections: usize,
}

/// `http.timeouts`: each bounds a wait on the client, never the server's own work (a
/// long GC behind `?wait=true`, a post-process command). `0s` turns one off.
#[derive(Debug, Clone, Copy, Serialize, Deserialize)]
#[serde(default)]
pub struct TimeoutsConfig {
    /// From accepting a connection, or from the first byte of a later request, until
    /// the request's head is complete.
    #[serde(with = "go_duration")]
    pub header: Duration,
    /// A kept-alive connection with no request (longer than clients keep idle
    /// connections, 90 s in Go's and so Docker's, so a client never reuses a connection
    /// the server is closing).
    #[serde(with = "go_duration")]
    pub idle: Duration,
    /// While the server reads a request body: the longest it waits for the next bytes.
    #[serde(with = "go_duration")]
    pub body: Duration,
    /// While the server writes a response: the longest it waits for the client to take
    /// more bytes.
    #[serde(with = "go_duration")]
    pub send: Duration,
}

impl Default for TimeoutsConfig {
    fn default() -> Self {
        TimeoutsConfig {
            header: Duration::from_secs(60),
            idle: Duration::from_secs(120),
            body: Duration::from_secs(120),
            send: Duration::from_secs(120),
        }
    }
}

/// `http.debug`: a second listener for operators (never exposed with the API).
#[derive(Debug, Clone, Serialize, Deserialize, Default)]
#[serde(default)]
pub struct DebugConfig {
    /// `host:port` of the debug listener; empty: none.
    pub addr: String,
    pub prometheus: PrometheusConfig,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default)]
pub struct PrometheusConfig {
    /// Keep metrics and serve them on the debug listener at `path`.
    pub enabled: bool,
    pub path: String,
}

impl Default for PrometheusConfig {
    fn default() -> Self {
        PrometheusConfig {
            enabled: false,
            path: "/metrics".into(),
        }
    }
}

impl Default for HttpConfig {
    fn default() -> Self {
        HttpConfig {
            addr: ":5000".into(),
            net: "tcp".into(),
            draintimeout: Duration::from_secs(30),
            headers: BTreeMap::new(),
            secret: String::new(),
            relativeurls: true,
            host: String::new(),
            prefix: String::new(),
            debug: DebugConfig::default(),
            tls: None,
            trustedproxies: Vec::new(),
            timeouts: TimeoutsConfig::default(),
            max_connections: 4096,
        }
    }
}

/// drydock's own knobs for the OCI API.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default)]
pub struct OciConfig {
    /// `POST ?mount=<digest>` without `from` links any blob already in the pool.
    pub mount_without_from: bool,
    /// Largest manifest accepted, in bytes (413 above it).
    pub manifest_max_bytes: u64,
    /// Upload bodies (blob `PATCH`/`PUT`/`POST ?digest=`, artifact `PUT`) received at
    /// once; past it a request is answered `429 TOOMANYREQUESTS` with `Retry-After`.
    pub max_uploads: usize,
    /// Bytes of manifest bodies held in memory at once, all requests together; a body
    /// that would go past it is answered `429 TOOMANYREQUESTS`. At least
    /// `manifest_max_bytes`.
    pub manifest_memory: u64,
}

impl Default for OciConfig {
    fn default() -> Self {
        OciConfig {
            mount_without_from: false,
            manifest_max_bytes: 4 * 1024 * 1024,
            max_uploads: 256,
            manifest_memory: 64 * 1024 * 1024,
        }
    }
}

/// The garbage collector: the `garbage-collect` command's defaults and the online
/// cleaner inside the server.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default)]
pub struct GcConfig {
    /// Run the online cleaner inside the server.
    pub enabled: bool,
    /// Time between periodic cycles.
    #[serde(with = "go_duration")]
    pub interval: Duration,
    /// Nothing whose file is newer than this is removed.
    #[serde(with = "go_duration")]
    pub grace: Duration,
    /// Online cycles also remove untagged manifests.
    pub remove_untagged: bool,
    /// Run a cycle when the server starts.
    pub on_startup: bool,
    /// How long the server itself protects a blob linked but not yet referenced by any
    /// manifest (a push between its blobs and its manifest), independent of `grace`.
    #[serde(with = "go_duration")]
    pub pending_ttl: Duration,
    /// Threads a cycle walks and removes with. Removals mostly wait on the disk (on a
    /// filesystem mounted with `discard`, each waits for its discard), so more threads
    /// than cores pay off.
    pub workers: usize,
}

impl Default for GcConfig {
    fn default() -> Self {
        GcConfig {
            enabled: true,
            interval: HOUR * 24,
            grace: HOUR,
            remove_untagged: false,
            on_startup: true,
            pending_ttl: HOUR,
            workers: default_gc_workers(),
        }
    }
}

/// Two collector threads per core, at most 32: removals that wait on the disk overlap,
/// and on a fast filesystem threads past the cores only take turns.
pub fn default_gc_workers() -> usize {
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    (2 * cores).clamp(2, 32)
}

/// The admin endpoints (`/admin/...`) and the admin socket.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default)]
pub struct AdminConfig {
    /// Answer `/admin/...` on the HTTP listener only to loopback clients.
    pub loopback_only: bool,
    /// Keep metrics and serve them on the main listener at `/admin/metrics`, behind
    /// the same access rule as every admin endpoint.
    pub metrics: bool,
}

impl Default for AdminConfig {
    fn default() -> Self {
        AdminConfig {
            loopback_only: true,
            metrics: false,
        }
    }
}

/// Generic artifacts (`/artifacts/...`).
#[derive(Debug, Clone, Serialize, Deserialize, Default)]
#[serde(default)]
pub struct ArtifactsConfig {
    pub post_process: PostProcessConfig,
}

/// A command run when a format is finalised (`PATCH`), on private copies of its files.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default)]
pub struct PostProcessConfig {
    /// Run with `sh -c`, in a folder holding copies of the format's files (those the
    /// filter selects), which are also its arguments. None: no post-processing.
    pub command: Option<String>,
    /// A regular expression over file paths (relative to the format) that selects the
    /// files to copy and process; none selects every file.
    pub filter: Option<String>,
    /// A run longer than this is killed with everything it started, and the
    /// finalisation fails (`0s`: no limit).
    #[serde(with = "go_duration")]
    pub timeout: Duration,
}

impl Default for PostProcessConfig {
    fn default() -> Self {
        PostProcessConfig {
            command: None,
            filter: None,
            timeout: Duration::from_secs(600),
        }
    }
}

fn string_or_number<'de, D: Deserializer<'de>>(d: D) -> Result<String, D::Error> {
    let v = Value::deserialize(d)?;
    Ok(match v {
        Value::String(s) => s,
        Value::Number(n) => n.to_string(),
        Value::Null => String::new(),
        other => {
            return Err(serde::de::Error::custom(format!(
                "expected a version string, got {other:?}"
            )));
        }
    })
}

/// A loaded configuration and what was noticed while loading it.
#[derive(Debug)]
pub struct Loaded {
    pub config: Config,
    /// Keys present that have no effect and deserve a warning (dotted paths): unknown
    /// keys set from the environment, and keys accepted because `ignore:` lists them.
    pub unknown_keys: Vec<String>,
}

/// What drydock does about a Distribution key it does not read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NotHonoured {
    /// It would change what is served or who may do what: refuse to start (the text
    /// says what would be missing).
    Refuse(&'static str),
    /// A tuning hint for Distribution's own implementation: accepted, no effect.
    Hint,
}

/// Distribution's keys that drydock does not read, by dotted path; the longest prefix
/// of a key decides. Keys drydock reads are fields of [`Config`] and never get here.
pub const DISTRIBUTION_KEYS: &[(&str, NotHonoured)] = {
    use NotHonoured::{Hint, Refuse};
    const DRIVER: NotHonoured =
        Refuse("drydock has no such storage driver; it serves storage.filesystem and storage.s3");
    &[
        (
            "proxy",
            Refuse("drydock is not a pull-through cache; it would serve only what was pushed"),
        ),
        (
            "redis",
            Refuse("drydock does not share a cache through redis with other replicas"),
        ),
        (
            "middleware",
            Refuse("drydock has no middleware (CDN redirects, repository or storage filters)"),
        ),
        (
            "validation",
            Refuse("drydock does not apply manifest validation rules (allowed or denied URLs)"),
        ),
        (
            "log.hooks",
            Refuse("drydock sends no log hooks (mail on errors)"),
        ),
        (
            "reporting",
            Refuse("drydock reports errors to no service (bugsnag, newrelic)"),
        ),
        (
            "health.http",
            Refuse("drydock has no http health checks; an upstream failure would not show"),
        ),
        (
            "health.tcp",
            Refuse("drydock has no tcp health checks; an upstream failure would not show"),
        ),
        ("storage.s3-aws", DRIVER),
        ("storage.azure", DRIVER),
        ("storage.gcs", DRIVER),
        ("storage.swift", DRIVER),
        ("storage.oss", DRIVER),
        ("storage.inmemory", DRIVER),
        ("storage.tag", Hint),
        ("log.reportcaller", Hint),
        ("loglevel", Hint),
        ("http.http2", Hint),
        ("http.h2c", Hint),
        ("compatibility", Hint),
        ("catalog", Hint),
    ]
};

/// The table entry deciding `key` (the longest matching prefix), if any.
pub fn not_honoured(key: &str) -> Option<NotHonoured> {
    DISTRIBUTION_KEYS
        .iter()
        .filter(|(k, _)| is_under(key, k))
        .max_by_key(|(k, _)| k.len())
        .map(|(_, v)| *v)
}

/// `key` is `prefix` or below it (`storage.s3.bucket` is under `storage.s3`).
fn is_under(key: &str, prefix: &str) -> bool {
    key == prefix
        || key
            .strip_prefix(prefix)
            .is_some_and(|rest| rest.starts_with('.'))
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read {0}: {1}")]
    Read(PathBuf, std::io::Error),
    #[error("{0} is not valid YAML: {1}")]
    Yaml(String, serde_yaml_ng::Error),
    #[error("configuration key {path}: {message}")]
    Key { path: String, message: String },
}

impl Config {
    /// Loads `path`, or the embedded default when `None`, then applies `env` overrides.
    pub fn load(
        path: Option<&Path>,
        env: impl IntoIterator<Item = (String, String)>,
    ) -> Result<Loaded, ConfigError> {
        let (text, source) = match path {
            Some(p) => (
                std::fs::read_to_string(p).map_err(|e| ConfigError::Read(p.to_owned(), e))?,
                p.display().to_string(),
            ),
            None => (
                EMBEDDED_DEFAULT.to_owned(),
                "the embedded default".to_owned(),
            ),
        };
        Config::from_yaml(&text, &source, env)
    }

    pub fn from_yaml(
        text: &str,
        source: &str,
        env: impl IntoIterator<Item = (String, String)>,
    ) -> Result<Loaded, ConfigError> {
        let mut file: Value =
            serde_yaml_ng::from_str(text).map_err(|e| ConfigError::Yaml(source.to_owned(), e))?;
        normalize_auth(&mut file);
        let given = |path: &[&str]| {
            let mut v = &file;
            path.iter().all(|k| match v.get(*k) {
                Some(next) => {
                    v = next;
                    true
                }
                None => false,
            })
        };
        let file_gives = [
            given(&["storage", "filesystem"]),
            given(&["gc", "enabled"]),
            given(&["maintenance", "enabled"]),
            given(&["gc", "workers"]),
        ];
        let mut tree =
            serde_yaml_ng::to_value(Config::default()).map_err(|e| ConfigError::Key {
                path: String::new(),
                message: e.to_string(),
            })?;
        merge(&mut tree, file);
        let mut from_env: Vec<String> = Vec::new();
        // Shorter names first, so `REGISTRY_AUTH=htpasswd` selects the section before
        // `REGISTRY_AUTH_HTPASSWD_PATH` fills it in, whatever the environment's order.
        let all_env: Vec<(String, String)> = env.into_iter().collect();
        let mut env: Vec<(String, String)> = all_env
            .iter()
            .filter(|(k, _)| k.starts_with("REGISTRY_"))
            .cloned()
            .collect();
        env.sort_by(|a, b| a.0.len().cmp(&b.0.len()).then_with(|| a.0.cmp(&b.0)));
        for (k, v) in env {
            if let Some(rest) = k.strip_prefix("REGISTRY_") {
                let parts: Vec<String> = rest.split('_').map(|s| s.to_ascii_lowercase()).collect();
                let mut path = Vec::new();
                set_env(&mut tree, &parts, &v, &mut path);
                from_env.push(path.join("."));
            }
        }
        normalize_auth(&mut tree);
        let mut unknown: Vec<String> = Vec::new();
        let mut note = |p: serde_ignored::Path<'_>| unknown.push(p.to_string().replace("?.", ""));
        let read = tree.clone();
        let de = serde_ignored::Deserializer::new(tree, &mut note);
        let mut config: Config =
            serde_path_to_error::deserialize(de).map_err(|e| ConfigError::Key {
                path: e.path().to_string(),
                message: e.inner().to_string(),
            })?;
        if let Some(v) = read.get("storage").and_then(|s| s.get("s3")) {
            let explicit = |i: usize, key: &str| {
                file_gives[i]
                    || from_env
                        .iter()
                        .any(|e| is_under(e, key) || is_under(key, e))
            };
            config.storage.s3 = Some(s3_storage(&mut config, v, &all_env, explicit)?);
            unknown.retain(|k| !is_under(k, "storage.s3"));
        }
        crate::access::Policy::from_config(&config.access)
            .map_err(|(path, message)| ConfigError::Key { path, message })?;
        check_security(&config)?;
        if config.http.net != "tcp" {
            return Err(ConfigError::Key {
                path: "http.net".into(),
                message: format!("{:?} is not supported; use tcp", config.http.net),
            });
        }
        check_endpoints(&config.notifications.endpoints)?;
        let prometheus = &config.http.debug.prometheus;
        if prometheus.enabled && config.http.debug.addr.trim().is_empty() && !config.admin.metrics {
            return Err(ConfigError::Key {
                path: "http.debug.addr".into(),
                message: "is empty, so the metrics http.debug.prometheus.enabled asks for \
                          would be served nowhere (set it, or admin.metrics: true)"
                    .into(),
            });
        }
        if !prometheus.path.starts_with('/') {
            return Err(ConfigError::Key {
                path: "http.debug.prometheus.path".into(),
                message: format!("{:?} must start with /", prometheus.path),
            });
        }
        if config.http.max_connections == 0 {
            return Err(ConfigError::Key {
                path: "http.max_connections".into(),
                message: "must be at least 1".into(),
            });
        }
        if config.oci.manifest_memory < config.oci.manifest_max_bytes {
            return Err(ConfigError::Key {
                path: "oci.manifest_memory".into(),
                message: format!(
                    "{} is below oci.manifest_max_bytes ({}): a manifest of the largest \
                     size accepted could never be received",
                    config.oci.manifest_memory, config.oci.manifest_max_bytes
                ),
            });
        }
        if config.oci.max_uploads == 0 {
            return Err(ConfigError::Key {
                path: "oci.max_uploads".into(),
                message: "must be at least 1".into(),
            });
        }
        if !(1..=256).contains(&config.gc.workers) {
            return Err(ConfigError::Key {
                path: "gc.workers".into(),
                message: format!("{} is out of range; give 1 to 256", config.gc.workers),
            });
        }
        if let Some(f) = &config.artifacts.post_process.filter {
            regex::Regex::new(f).map_err(|e| ConfigError::Key {
                path: "artifacts.post_process.filter".into(),
                message: e.to_string(),
            })?;
        }
        check_database(&config)?;
        unknown.sort();
        let warned = fail_closed(&read, unknown, &from_env, &config.ignore)?;
        Ok(Loaded {
            config,
            unknown_keys: warned,
        })
    }

    pub fn gc_grace(&self) -> Duration {
        self.gc.grace
    }

    pub fn gc_interval(&self) -> Duration {
        self.gc.interval
    }

    /// The tracing filter for `log.level`, accepting Distribution's level names.
    pub fn log_filter(&self) -> &'static str {
        match self.log.level.to_ascii_lowercase().as_str() {
            "trace" => "trace",
            "debug" => "debug",
            "warn" | "warning" => "warn",
            "error" | "fatal" | "panic" => "error",
            _ => "info",
        }
    }

    /// Whether this server keeps metrics (for the debug listener or `/admin/metrics`).
    pub fn metrics_enabled(&self) -> bool {
        self.http.debug.prometheus.enabled || self.admin.metrics
    }

    /// The debug listener's address, if one is configured (`:port`: every address).
    pub fn debug_addr(&self) -> Option<String> {
        let a = self.http.debug.addr.trim();
        match a {
            "" => None,
            a if a.starts_with(':') => Some(format!("0.0.0.0{a}")),
            a => Some(a.to_owned()),
        }
    }

    pub fn drain_timeout(&self) -> Duration {
        self.http.draintimeout
    }

    /// The address to bind: Distribution's `:5000` means every address.
    pub fn listen_addr(&self) -> String {
        let a = self.http.addr.trim();
        if a.starts_with(':') {
            format!("0.0.0.0{a}")
        } else {
            a.to_owned()
        }
    }
}

/// The `database:` section is checked; replica mode (`database.enabled`) needs
/// `storage.s3`: replicas share a bucket, and a filesystem root stays one server's.
fn check_database(config: &Config) -> Result<(), ConfigError> {
    let db = &config.database;
    db.check()
        .map_err(|(path, message)| ConfigError::Key { path, message })?;
    if db.enabled && config.storage.s3.is_none() {
        return Err(ConfigError::Key {
            path: "database.enabled".into(),
            message: "replica mode needs storage.s3 (replicas share a bucket; a filesystem \
                      root is one server's and needs no database: set it to false)"
                .into(),
        });
    }
    Ok(())
}

/// Checks `notifications.endpoints`: named uniquely, an http URL, durations that parse.
fn check_endpoints(endpoints: &[EndpointConfig]) -> Result<(), ConfigError> {
    let key = |i: usize, k: &str, message: String| ConfigError::Key {
        path: format!("notifications.endpoints[{i}].{k}"),
        message,
    };
    let mut names = std::collections::BTreeSet::new();
    for (i, e) in endpoints.iter().enumerate() {
        if e.name.trim().is_empty() {
            return Err(key(i, "name", "is empty".into()));
        }
        if !names.insert(e.name.as_str()) {
            return Err(key(i, "name", format!("{:?} names two endpoints", e.name)));
        }
        if e.disabled {
            continue;
        }
        let uri: http::Uri = e
            .url
            .parse()
            .map_err(|err| key(i, "url", format!("{:?}: {err}", e.url)))?;
        match uri.scheme_str() {
            Some("http") if uri.host().is_some() => {}
            Some("https") => {
                return Err(key(
                    i,
                    "url",
                    "https receivers are not supported yet; refusing to start rather than \
                     send nothing (use http on a trusted network, or list the endpoint as \
                     disabled)"
                        .into(),
                ));
            }
            _ => return Err(key(i, "url", format!("{:?} is not an http URL", e.url))),
        }
        for (h, values) in &e.headers {
            for v in values {
                if http::HeaderName::try_from(h.as_str()).is_err()
                    || http::HeaderValue::try_from(v.as_str()).is_err()
                {
                    return Err(key(i, "headers", format!("{h:?} is not a valid header")));
                }
            }
        }
        for a in &e.ignore.actions {
            if !["push", "pull", "mount", "delete"].contains(&a.as_str()) {
                return Err(key(
                    i,
                    "ignore.actions",
                    format!("{a:?} is not push, pull, mount or delete"),
                ));
            }
        }
        if e.queue_limit == 0 {
            return Err(key(i, "queue_limit", "must be at least 1".into()));
        }
    }
    Ok(())
}

/// Applies the fail-closed rule to the keys deserialization did not read (`tree` is
/// what was read): returns the keys to warn about, or the error naming the first key
/// that stops start-up. An unread section whose parts the table decides one by one
/// (`health`: `http` and `tcp` are refused, the rest is read) is looked into.
/// Parses `storage.s3` and settles what a store on S3 cannot do yet (issue 18): the
/// maintenance scheduler in replica mode is off when the configuration does not
/// mention it and a start-up error when it turns it on; so is an artifact
/// post-process command, and a `storage.filesystem` beside it
/// (one driver, as in Distribution). `explicit(i, key)` tells whether the file (`i`
/// indexes the keys checked in [`Config::from_yaml`]) or the environment set `key`.
/// `gc.workers` on `storage.s3` when the configuration does not set it.
pub const S3_GC_WORKERS: usize = 16;

fn s3_storage(
    config: &mut Config,
    v: &Value,
    env: &[(String, String)],
    explicit: impl Fn(usize, &str) -> bool,
) -> Result<crate::storage::s3::S3Config, ConfigError> {
    let s3 = crate::storage::s3::S3Config::from_yaml(v, env.iter().cloned()).map_err(|e| {
        ConfigError::Key {
            path: e.key,
            message: e.message,
        }
    })?;
    let refuse = |path: &str, message: &str| ConfigError::Key {
        path: path.into(),
        message: message.into(),
    };
    if explicit(0, "storage.filesystem") {
        return Err(refuse(
            "storage.filesystem",
            "is set beside storage.s3; give one storage driver",
        ));
    }
    // One server per bucket root (its lock object) collects online as on a disk, and so
    // do replicas (`database.enabled`): their cycles take the database's GC lease in
    // turn, their removals coordinate through it with every replica's writes.
    // On a bucket every listing and read of the collector is a request that waits on
    // the network, not a core: more workers overlap them (100 repositories on RGW:
    // 43 s with 4 workers, 17.5 s with 16).
    if !explicit(3, "gc.workers") {
        config.gc.workers = config.gc.workers.max(S3_GC_WORKERS);
    }
    // One server per bucket root runs its maintenance as on a disk (its records and its
    // schedule's start are keys under the root). Replicas share no run queue yet: each
    // would run every due task.
    if config.database.enabled {
        if explicit(2, "maintenance.enabled") && config.maintenance.enabled {
            return Err(refuse(
                "maintenance.enabled",
                "replicas (database.enabled) do not share one maintenance queue yet, so \
                 each would run every task; remove the key or set it to false (a task runs \
                 on one replica through POST /admin/maintenance/run)",
            ));
        }
        config.maintenance.enabled = false;
    }
    if config.artifacts.post_process.command.is_some() {
        return Err(refuse(
            "artifacts.post_process.command",
            "artifact post-processing does not run on storage.s3 yet",
        ));
    }
    Ok(s3)
}

fn fail_closed(
    tree: &Value,
    unknown: Vec<String>,
    from_env: &[String],
    ignore: &[String],
) -> Result<Vec<String>, ConfigError> {
    let mut keys = Vec::new();
    for key in unknown {
        expand(tree, key, &mut keys);
    }
    let mut warned = Vec::new();
    for key in keys {
        if ignore.iter().any(|i| is_under(&key, i.trim())) {
            warned.push(key);
            continue;
        }
        match not_honoured(&key) {
            Some(NotHonoured::Hint) => {}
            Some(NotHonoured::Refuse(why)) => {
                return Err(ConfigError::Key {
                    message: format!(
                        "{why}; refusing to start (list {key:?} under `ignore:` to start \
                         anyway)"
                    ),
                    path: key,
                });
            }
            None if from_env
                .iter()
                .any(|e| is_under(e, &key) || is_under(&key, e)) =>
            {
                warned.push(key)
            }
            None => {
                return Err(ConfigError::Key {
                    message: "is not a configuration key drydock knows (a typo?); refusing to \
                              start rather than ignore it (list it under `ignore:` to start \
                              anyway)"
                        .into(),
                    path: key,
                });
            }
        }
    }
    Ok(warned)
}

/// `key`, or its children when the table decides keys below it but not `key` itself.
fn expand(tree: &Value, key: String, out: &mut Vec<String>) {
    let decided_below = not_honoured(&key).is_none()
        && DISTRIBUTION_KEYS
            .iter()
            .any(|(k, _)| is_under(k, &key) && *k != key);
    let node = key.split('.').try_fold(tree, |v, part| v.get(part));
    match node.and_then(Value::as_mapping) {
        Some(map) if decided_below => {
            for child in map.keys().filter_map(Value::as_str) {
                expand(tree, format!("{key}.{child}"), out);
            }
        }
        _ => out.push(key),
    }
}

/// `auth: htpasswd` (Distribution's `REGISTRY_AUTH=htpasswd`) means `auth: {htpasswd: {}}`,
/// and an auth section given with no keys is an empty section, never "absent": an
/// incomplete section must fail on its missing keys rather than switch auth off.
fn normalize_auth(tree: &mut Value) {
    let Some(map) = tree.as_mapping_mut() else {
        return;
    };
    let Some(auth) = map.get_mut("auth") else {
        return;
    };
    if let Value::String(kind) = auth {
        let mut m = Mapping::new();
        m.insert(Value::String(kind.clone()), Value::Null);
        *auth = Value::Mapping(m);
    }
    if let Value::Mapping(m) = auth {
        for (k, v) in m.iter_mut() {
            if v.is_null() && k.as_str() != Some("mtls") {
                *v = Value::Mapping(Mapping::new());
            }
        }
    }
}

/// Checks of `auth`, `access` and `http.tls` that need more than one key.
fn check_security(c: &Config) -> Result<(), ConfigError> {
    let key = |path: &str, message: String| ConfigError::Key {
        path: path.into(),
        message,
    };
    if let Some(t) = &c.auth.token {
        for (name, v) in [
            ("realm", &t.realm),
            ("service", &t.service),
            ("issuer", &t.issuer),
        ] {
            if v.is_empty() {
                return Err(key(
                    &format!("auth.token.{name}"),
                    "must not be empty".into(),
                ));
            }
        }
        if t.rootcertbundle.is_none() && t.jwks.is_none() && c.auth.tokenserver.is_none() {
            return Err(key(
                "auth.token",
                "needs rootcertbundle or jwks (or auth.tokenserver) to verify tokens with".into(),
            ));
        }
    }
    if let Some(ts) = &c.auth.tokenserver {
        if c.auth.token.is_none() {
            return Err(key(
                "auth.tokenserver",
                "needs auth.token (its realm, service and issuer)".into(),
            ));
        }
        if c.auth.htpasswd.is_none() {
            return Err(key(
                "auth.tokenserver",
                "needs auth.htpasswd to authenticate users with".into(),
            ));
        }
        let exp =
            parse_duration(&ts.expiration).map_err(|m| key("auth.tokenserver.expiration", m))?;
        if exp < Duration::from_secs(60) {
            return Err(key(
                "auth.tokenserver.expiration",
                "must be at least 60s (clients expect that much)".into(),
            ));
        }
        parse_duration(&ts.refreshexpiration)
            .map_err(|m| key("auth.tokenserver.refreshexpiration", m))?;
    }
    if c.auth.mtls && c.http.tls.as_ref().is_none_or(|t| t.clientcas.is_empty()) {
        return Err(key(
            "auth.mtls",
            "needs http.tls.clientcas to verify client certificates against".into(),
        ));
    }
    if let Some(t) = &c.http.tls {
        match t.minimumtls.as_deref() {
            None | Some("tls1.2") | Some("tls1.3") => {}
            Some(v @ ("tls1.0" | "tls1.1")) => {
                return Err(key(
                    "http.tls.minimumtls",
                    format!(
                        "{v:?} cannot be honoured: rustls (drydock's TLS) implements TLS 1.2 \
                         and 1.3 only; give tls1.2 or tls1.3"
                    ),
                ));
            }
            Some(v) => {
                return Err(key(
                    "http.tls.minimumtls",
                    format!("{v:?} is not a TLS version; give tls1.2 or tls1.3"),
                ));
            }
        }
        match t.clientauth.as_deref() {
            None | Some("require-and-verify-client-cert") | Some("verify-client-cert-if-given") => {
            }
            Some(v) => {
                return Err(key(
                    "http.tls.clientauth",
                    format!(
                        "{v:?} is not supported (a certificate is always verified); give \
                         require-and-verify-client-cert or verify-client-cert-if-given"
                    ),
                ));
            }
        }
        if t.clientauth.is_some() && t.clientcas.is_empty() {
            return Err(key(
                "http.tls.clientauth",
                "needs http.tls.clientcas".into(),
            ));
        }
    }
    Ok(())
}

fn merge(base: &mut Value, over: Value) {
    match (base, over) {
        (Value::Mapping(b), Value::Mapping(o)) => {
            for (k, v) in o {
                match b.get_mut(&k) {
                    Some(slot) => merge(slot, v),
                    // A key present with nothing under it (`proxy:`) asks for nothing.
                    None if v.is_null() => {}
                    None => {
                        b.insert(k, v);
                    }
                }
            }
        }
        (_, Value::Null) => {}
        (slot, v) => *slot = v,
    }
}

/// Sets `parts` (lowercased env segments) in the tree. Keys that contain `_` are found by
/// joining segments greedily against the keys already in the tree. `path` receives the
/// keys the value was set at.
fn set_env(tree: &mut Value, parts: &[String], raw: &str, path: &mut Vec<String>) {
    if parts.is_empty() {
        let as_string = matches!(tree, Value::String(_));
        *tree = if as_string {
            Value::String(raw.to_owned())
        } else {
            serde_yaml_ng::from_str(raw).unwrap_or_else(|_| Value::String(raw.to_owned()))
        };
        return;
    }
    if !matches!(tree, Value::Mapping(_)) {
        // `REGISTRY_AUTH=htpasswd` then `REGISTRY_AUTH_HTPASSWD_PATH`: keep the type.
        let mut m = Mapping::new();
        if let Value::String(s) = tree {
            m.insert(Value::String(s.clone()), Value::Null);
        }
        *tree = Value::Mapping(m);
    }
    let Value::Mapping(map) = tree else { return };
    for n in (1..=parts.len()).rev() {
        let key = parts[..n].join("_");
        let existing = map
            .keys()
            .find(|k| k.as_str().is_some_and(|s| s.eq_ignore_ascii_case(&key)))
            .cloned();
        if let Some(k) = existing {
            path.push(k.as_str().unwrap_or_default().to_owned());
            if let Some(child) = map.get_mut(&k) {
                set_env(child, &parts[n..], raw, path);
            }
            return;
        }
    }
    let mut child = Value::Null;
    path.push(parts[0].clone());
    set_env(&mut child, &parts[1..], raw, path);
    map.insert(Value::String(parts[0].clone()), child);
}

/// The longest duration accepted: Go's (`time.Duration` is an i64 of nanoseconds),
/// about 292 years. Anything longer is an error, never a wrap or a panic, and every
/// accepted value can be added to an `Instant` or subtracted from a `SystemTime`.
pub const MAX_DURATION: Duration = Duration::from_nanos(i64::MAX as u64);

/// Parses a Go-style duration: `0s`, `500ms`, `30m`, `1h30m`, `1.5h`, `168h`, `2d` (days
/// too). Exact integer arithmetic on nanoseconds; above [`MAX_DURATION`] is an error.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    if s.is_empty() {
        return Err("empty duration".into());
    }
    if s == "0" {
        return Ok(Duration::ZERO);
    }
    let max = MAX_DURATION.as_nanos();
    let too_large = || format!("duration {s:?} is too large (the most is {MAX_DURATION:?})");
    let mut total: u128 = 0;
    let mut rest = s;
    while !rest.is_empty() {
        let num_end = rest
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .ok_or_else(|| format!("duration {s:?} lacks a unit (ms, s, m, h, d)"))?;
        let (num, tail) = rest.split_at(num_end);
        let unit_end = tail
            .find(|c: char| c.is_ascii_digit() || c == '.')
            .unwrap_or(tail.len());
        let (unit, next) = tail.split_at(unit_end);
        let per_unit: u128 = match unit {
            "ns" => 1,
            "us" | "µs" => 1_000,
            "ms" => 1_000_000,
            "s" => 1_000_000_000,
            "m" => 60_000_000_000,
            "h" => 3_600_000_000_000,
            "d" => 86_400_000_000_000,
            _ => return Err(format!("duration {s:?} has an unknown unit {unit:?}")),
        };
        let bad_number = || format!("duration {s:?} has a bad number {num:?}");
        let (int, frac) = num.split_once('.').unwrap_or((num, ""));
        if (int.is_empty() && frac.is_empty()) || frac.contains('.') {
            return Err(bad_number());
        }
        let mut whole: u128 = 0;
        for d in int.bytes() {
            whole = whole * 10 + u128::from(d - b'0');
            if whole > max {
                return Err(too_large());
            }
        }
        let mut nanos = whole.checked_mul(per_unit).ok_or_else(too_large)?;
        // The fraction, digit by digit; below a nanosecond it is dropped (as Go does).
        let mut scale = per_unit;
        for d in frac.bytes() {
            scale /= 10;
            nanos += u128::from(d - b'0') * scale;
        }
        total = total.checked_add(nanos).ok_or_else(too_large)?;
        if total > max {
            return Err(too_large());
        }
        rest = next;
    }
    // `total` is at most `max`, which fits in a u64.
    Ok(Duration::from_nanos(
        u64::try_from(total).map_err(|_| too_large())?,
    ))
}

/// Writes a duration so that [`parse_duration`] reads it back exactly: `1h30m`,
/// `2m5s`, `1500ms`, `0s`.
pub fn format_duration(d: Duration) -> String {
    if d.is_zero() {
        return "0s".into();
    }
    let secs = d.as_secs();
    let (h, m, s) = (secs / 3600, secs / 60 % 60, secs % 60);
    let mut out = String::new();
    for (n, unit) in [(h, "h"), (m, "m"), (s, "s")] {
        if n > 0 {
            out.push_str(&format!("{n}{unit}"));
        }
    }
    let sub = d.subsec_nanos();
    if sub > 0 {
        let (n, unit) = if sub.is_multiple_of(1_000_000) {
            (sub / 1_000_000, "ms")
        } else if sub.is_multiple_of(1_000) {
            (sub / 1_000, "us")
        } else {
            (sub, "ns")
        };
        out.push_str(&format!("{n}{unit}"));
    }
    out
}

/// `#[serde(with = "go_duration")]`: a Go-style duration string in the file, a
/// `Duration` in memory, parsed once at load (a bad one is an error naming the key).
pub mod go_duration {
    use std::time::Duration;

    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&super::format_duration(*d))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        let text = String::deserialize(d)?;
        super::parse_duration(&text).map_err(serde::de::Error::custom)
    }

    /// The same for an optional duration.
    pub mod option {
        use std::time::Duration;

        use serde::{Deserialize, Deserializer, Serializer};

        pub fn serialize<S: Serializer>(d: &Option<Duration>, s: S) -> Result<S::Ok, S::Error> {
            match d {
                Some(d) => super::serialize(d, s),
                None => s.serialize_none(),
            }
        }

        pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Duration>, D::Error> {
            match Option::<String>::deserialize(d)? {
                Some(text) => super::super::parse_duration(&text)
                    .map(Some)
                    .map_err(serde::de::Error::custom),
                None => Ok(None),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(v: &[(&str, &str)]) -> Vec<(String, String)> {
        v.iter()
            .map(|(a, b)| (a.to_string(), b.to_string()))
            .collect()
    }

    #[test]
    fn embedded_default() {
        let l = Config::load(None, env(&[])).unwrap();
        assert_eq!(l.config.http.addr, "127.0.0.1:5000");
        assert!(l.config.storage.delete.enabled);
        assert_eq!(
            l.config.storage.filesystem.rootdirectory,
            PathBuf::from("./data")
        );
        assert!(l.unknown_keys.is_empty(), "{:?}", l.unknown_keys);
    }

    #[test]
    fn distribution_config_with_unknown_keys_and_env() {
        // Distribution's own example config (cmd/registry/config-example.yml) starts.
        let yaml = "version: 0.1\nlog:\n  fields:\n    service: registry\nstorage:\n  cache:\n    blobdescriptor: inmemory\n  filesystem:\n    rootdirectory: /var/lib/registry\nhttp:\n  addr: :5000\n  headers:\n    X-Content-Type-Options: [nosniff]\nhealth:\n  storagedriver:\n    enabled: true\n    interval: 10s\n    threshold: 3\n";
        let l = Config::from_yaml(
            yaml,
            "t",
            env(&[
                ("REGISTRY_HTTP_ADDR", "127.0.0.1:6000"),
                ("REGISTRY_STORAGE_DELETE_ENABLED", "true"),
                ("REGISTRY_OCI_MOUNT_WITHOUT_FROM", "true"),
                ("REGISTRY_STORAGE_FILESYSTEM_ROOTDIRECTORY", "/tmp/x"),
                // Kubernetes' variables for a service called `registry`: warned about.
                ("REGISTRY_PORT", "tcp://10.0.0.1:5000"),
                ("REGISTRY_SERVICE_HOST", "10.0.0.1"),
            ]),
        )
        .unwrap();
        assert_eq!(l.config.http.addr, "127.0.0.1:6000");
        assert!(l.config.storage.delete.enabled);
        assert!(l.config.oci.mount_without_from);
        assert_eq!(
            l.config.storage.filesystem.rootdirectory,
            PathBuf::from("/tmp/x")
        );
        assert_eq!(l.unknown_keys, vec!["port", "service"]);
        assert!(
            !Config::from_yaml("storage:\n  filesystem: {}\n", "t", env(&[]))
                .unwrap()
                .config
                .storage
                .delete
                .enabled
        );
    }

    #[test]
    fn errors_name_the_key() {
        let e = Config::from_yaml("storage:\n  delete:\n    enabled: maybe\n", "t", env(&[]))
            .unwrap_err()
            .to_string();
        assert!(e.contains("storage.delete.enabled"), "{e}");
        // Security sections fail closed: an incomplete or unknown one stops start-up.
        for (refused, key) in [
            ("auth:\n  htpasswd:\n    realm: r\n", "auth.htpasswd"),
            ("auth:\n  htpasswd:\n", "auth.htpasswd"),
            ("auth:\n  silly:\n    realm: r\n", "auth"),
            (
                "auth:\n  htpasswd:\n    path: p\n    bogus: 1\n",
                "auth.htpasswd",
            ),
            ("http:\n  tls:\n    certificate: c\n", "http.tls"),
            (
                "http:\n  tls:\n    certificate: c\n    key: k\n    minimumtls: tls1.0\n",
                "http.tls.minimumtls",
            ),
            (
                "http:\n  tls:\n    certificate: c\n    key: k\n    letsencrypt: {}\n",
                "http.tls",
            ),
            (
                "auth:\n  token:\n    realm: r\n    service: s\n    issuer: i\n",
                "auth.token",
            ),
            ("auth:\n  mtls: true\n", "auth.mtls"),
            (
                "access:\n  rules:\n  - repositories: a\n    users: {x: [write]}\n",
                "access.rules",
            ),
        ] {
            let e = Config::from_yaml(refused, "t", env(&[]))
                .unwrap_err()
                .to_string();
            assert!(e.contains(&format!("key {key}")), "{refused}: {e}");
        }
        let l = Config::from_yaml(
            "log:\n  level: warning\n",
            "t",
            env(&[("REGISTRY_HTTP_SECRET", "12345")]),
        )
        .unwrap();
        assert_eq!(l.config.log_filter(), "warn");
        assert_eq!(l.config.http.secret, "12345");
        let e = Config::from_yaml("gc:\n  workers: 0\n", "t", env(&[]))
            .unwrap_err()
            .to_string();
        assert!(e.contains("gc.workers"), "{e}");
        let l = Config::from_yaml("", "t", env(&[("REGISTRY_GC_WORKERS", "4")])).unwrap();
        assert_eq!(l.config.gc.workers, 4);
        let e = Config::from_yaml("storage:\n  s3:\n    bucket: x\n", "t", env(&[]))
            .unwrap_err()
            .to_string();
        assert!(e.contains("storage.s3"), "{e}");
        let e = Config::from_yaml(
            "artifacts:\n  post_process:\n    command: 'true'\n    filter: '(['\n",
            "t",
            env(&[]),
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("artifacts.post_process.filter"), "{e}");
    }

    #[test]
    fn storage_s3_is_the_driver_and_turns_off_what_does_not_run_on_it() {
        const S3: &str = "storage:\n  s3:\n    region: r\n    bucket: b\n    \
                          regionendpoint: http://127.0.0.1:9\n    accesskey: a\n    \
                          secretkey: s\n    forcepathstyle: true\n";
        let c = Config::from_yaml(S3, "t", env(&[])).unwrap().config;
        let s3 = c.storage.s3.expect("storage.s3 parsed");
        assert_eq!((s3.bucket.as_str(), s3.forcepathstyle), ("b", true));
        // One server on a bucket collects online and runs its maintenance, as on a disk.
        assert!(c.gc.enabled && c.maintenance.enabled);
        let yaml = format!("{S3}maintenance:\n  enabled: true\n");
        assert!(refusal(&yaml, &[]).is_none(), "maintenance on S3 starts");
        assert_eq!(c.gc.workers, S3_GC_WORKERS.max(default_gc_workers()));
        let c = Config::from_yaml(&format!("{S3}gc:\n  workers: 3\n"), "t", env(&[]))
            .unwrap()
            .config;
        assert_eq!(c.gc.workers, 3, "an explicit gc.workers is kept");
        let yaml = format!("{S3}gc:\n  enabled: true\n");
        assert!(refusal(&yaml, &[]).is_none(), "gc.enabled on S3 starts");
        // Replicas collect too (in turn, through the database's lease).
        let c = Config::from_yaml(
            &format!("{S3}database:\n  enabled: true\n  user: u\n  dbname: d\n"),
            "t",
            env(&[]),
        )
        .unwrap()
        .config;
        assert!(c.gc.enabled, "replica mode collects");
        assert!(
            !c.maintenance.enabled,
            "replicas share no maintenance queue yet"
        );
        // From the environment, with credentials from AWS_* (Distribution's names).
        let c = Config::from_yaml(
            "",
            "t",
            env(&[
                ("REGISTRY_STORAGE_S3_REGION", "r"),
                ("REGISTRY_STORAGE_S3_BUCKET", "env-b"),
                ("AWS_ACCESS_KEY_ID", "a"),
                ("AWS_SECRET_ACCESS_KEY", "s"),
            ]),
        )
        .unwrap()
        .config;
        let s3 = c.storage.s3.expect("storage.s3 from the environment");
        assert_eq!(
            (s3.bucket.as_str(), s3.accesskey.as_deref()),
            ("env-b", Some("a"))
        );
        for (extra, vars, key) in [
            (
                "maintenance:\n  enabled: true\ndatabase:\n  enabled: true\n  user: u\n  \
                 dbname: d\n",
                &[][..],
                "maintenance.enabled",
            ),
            (
                "  filesystem:\n    rootdirectory: /x\n",
                &[],
                "storage.filesystem",
            ),
            (
                "artifacts:\n  post_process:\n    command: 'true'\n",
                &[],
                "artifacts.post_process.command",
            ),
            (
                "",
                &[("REGISTRY_STORAGE_S3_ENCRYPT", "true")],
                "storage.s3.encrypt",
            ),
            (
                "",
                &[("REGISTRY_STORAGE_S3_CHUNKSIZE", "1")],
                "storage.s3.chunksize",
            ),
        ] {
            let yaml = format!("{S3}{extra}");
            let e = refusal(&yaml, vars).unwrap_or_else(|| panic!("{extra} {vars:?} started"));
            assert!(e.starts_with(&format!("configuration key {key}: ")), "{e}");
        }
        // Turned off explicitly: fine.
        let yaml = format!("{S3}gc:\n  enabled: false\nmaintenance:\n  enabled: false\n");
        assert!(refusal(&yaml, &[]).is_none());
    }

    fn refusal(yaml: &str, vars: &[(&str, &str)]) -> Option<String> {
        Config::from_yaml(yaml, "t", env(vars))
            .err()
            .map(|e| e.to_string())
    }

    #[test]
    fn storage_redirect_disable_is_read_and_other_keys_refused() {
        let c =
            Config::from_yaml("storage:\n  redirect:\n    disable: true\n", "t", env(&[])).unwrap();
        assert!(c.config.storage.redirect.disable);
        let c = Config::from_yaml("storage:\n  redirect: {}\n", "t", env(&[])).unwrap();
        assert!(
            !c.config.storage.redirect.disable,
            "redirects are on by default"
        );
        let e = refusal("storage:\n  redirect:\n    disabled: true\n", &[]).unwrap();
        assert!(e.contains("storage.redirect.disabled"), "{e}");
    }

    #[test]
    fn sections_drydock_cannot_honour_stop_start_up_from_file_and_env() {
        for (yaml, vars, key) in [
            (
                "proxy:\n  remoteurl: https://registry-1.docker.io\n",
                &[][..],
                "proxy",
            ),
            ("redis:\n  addr: localhost:6379\n", &[], "redis"),
            (
                "middleware:\n  registry:\n    - name: cloudfront\n",
                &[],
                "middleware",
            ),
            (
                "validation:\n  manifests:\n    urls:\n      allow: ['^https://']\n",
                &[],
                "validation",
            ),
            (
                "storage:\n  azure:\n    container: b\n",
                &[],
                "storage.azure",
            ),
            ("", &[("REGISTRY_PROXY_REMOTEURL", "https://x")], "proxy"),
            ("", &[("REGISTRY_STORAGE_GCS_BUCKET", "b")], "storage.gcs"),
            // A typo in the file is refused too.
            (
                "storage:\n  delete:\n    enbled: true\n",
                &[],
                "storage.delete.enbled",
            ),
            ("gc:\n  intervall: 1h\n", &[], "gc.intervall"),
        ] {
            let e = refusal(yaml, vars).unwrap_or_else(|| panic!("{yaml} {vars:?} started"));
            assert!(e.starts_with(&format!("configuration key {key}: ")), "{e}");
            assert!(e.contains("ignore"), "{e}");
            assert!(!e.contains('\n'), "one line: {e}");
        }
        // Parts of one section are decided one by one.
        let e = refusal(
            "health:\n  storagedriver: {enabled: true}\n  http:\n    - uri: http://x\n",
            &[],
        )
        .unwrap();
        assert!(e.starts_with("configuration key health.http:"), "{e}");
        // Hints only tune Distribution itself: accepted, nothing to warn about.
        for hint in [
            "storage:\n  cache:\n    blobdescriptor: redis\n",
            "storage:\n  redirect:\n    disable: true\n",
            "storage:\n  tag:\n    concurrencylimit: 8\n",
            "http:\n  http2:\n    disabled: true\n",
            "compatibility:\n  schema1:\n    enabled: false\n",
            "proxy:\n",
        ] {
            let l = Config::from_yaml(hint, "t", env(&[])).unwrap();
            assert!(l.unknown_keys.is_empty(), "{hint}: {:?}", l.unknown_keys);
        }
    }

    #[test]
    fn ignore_lets_the_operator_start_without_a_section() {
        let yaml = "proxy:\n  remoteurl: https://x\nredis:\n  addr: r:6379\nhttp:\n  bogus: 1\nignore: [proxy, redis, http.bogus]\n";
        let l = Config::from_yaml(yaml, "t", env(&[])).unwrap();
        assert_eq!(l.unknown_keys, vec!["http.bogus", "proxy", "redis"]);
        let l = Config::from_yaml(
            "",
            "t",
            env(&[
                ("REGISTRY_PROXY_REMOTEURL", "https://x"),
                ("REGISTRY_IGNORE", "[proxy]"),
            ]),
        )
        .unwrap();
        assert_eq!(l.unknown_keys, vec!["proxy"]);
        // Only what is listed: ignoring `proxy` does not let `redis` through.
        let e = refusal(
            "proxy: {remoteurl: x}\nredis: {addr: r}\nignore: [proxy]\n",
            &[],
        )
        .unwrap();
        assert!(e.starts_with("configuration key redis:"), "{e}");
    }

    #[test]
    fn manifest_memory_holds_at_least_the_largest_manifest() {
        let e = refusal("oci:\n  manifest_memory: 1000\n", &[]).unwrap();
        assert!(
            e.starts_with("configuration key oci.manifest_memory:"),
            "{e}"
        );
        let yaml = "oci:\n  manifest_max_bytes: 1000\n  manifest_memory: 1000\n";
        assert!(refusal(yaml, &[]).is_none());
    }

    #[test]
    fn notification_endpoints_are_checked_at_load() {
        let ok = "notifications:\n  events: {includereferences: true}\n  endpoints:\n    - name: a\n      url: http://127.0.0.1:9/e\n      headers: {Authorization: [Bearer x]}\n      ignore: {actions: [pull]}\n";
        let l = Config::from_yaml(ok, "t", env(&[])).unwrap();
        assert_eq!(l.config.notifications.endpoints[0].threshold, 10);
        assert!(l.unknown_keys.is_empty(), "{:?}", l.unknown_keys);
        for (yaml, key) in [
            (
                "url: https://hooks.example/e",
                "notifications.endpoints[0].url",
            ),
            ("url: ftp://x/e", "notifications.endpoints[0].url"),
            (
                "url: http://x/e\n      timeout: soon",
                "notifications.endpoints[0].timeout",
            ),
            (
                "url: http://x/e\n      ignore: {actions: [pul]}",
                "notifications.endpoints[0].ignore.actions",
            ),
            (
                "url: http://x/e\n    - name: a\n      url: http://y/e",
                "notifications.endpoints[1].name",
            ),
        ] {
            let text = format!("notifications:\n  endpoints:\n    - name: a\n      {yaml}\n");
            let e = refusal(&text, &[]).unwrap_or_else(|| panic!("{text} loaded"));
            assert!(e.starts_with(&format!("configuration key {key}:")), "{e}");
        }
    }

    #[test]
    fn the_shipped_configs_load_with_every_key_known() {
        let deploy = Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy");
        for f in ["config.yml", "container-config.yml"] {
            let l = Config::load(Some(&deploy.join(f)), env(&[]))
                .unwrap_or_else(|e| panic!("deploy/{f}: {e}"));
            assert!(
                l.unknown_keys.is_empty(),
                "deploy/{f}: {:?}",
                l.unknown_keys
            );
        }
    }

    #[test]
    fn artifacts_post_process() {
        let l = Config::from_yaml(
            "artifacts:\n  post_process:\n    command: rpmsign --addsign \"$@\"\n    filter: '\\.rpm$'\n",
            "t",
            env(&[]),
        )
        .unwrap();
        let pp = &l.config.artifacts.post_process;
        assert_eq!(pp.command.as_deref(), Some("rpmsign --addsign \"$@\""));
        assert_eq!(pp.filter.as_deref(), Some("\\.rpm$"));
        assert!(l.unknown_keys.is_empty(), "{:?}", l.unknown_keys);
        assert_eq!(pp.timeout, Duration::from_secs(600));
        let d = Config::load(None, env(&[])).unwrap().config;
        assert!(d.artifacts.post_process.command.is_none());
        let e = Config::from_yaml(
            "artifacts:\n  post_process:\n    timeout: ten minutes\n",
            "t",
            env(&[]),
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("artifacts.post_process.timeout"), "{e}");
    }

    #[test]
    fn security_sections_from_the_environment() {
        // Distribution's names, in either order.
        for vars in [
            [
                ("REGISTRY_AUTH", "htpasswd"),
                ("REGISTRY_AUTH_HTPASSWD_PATH", "/h"),
            ],
            [
                ("REGISTRY_AUTH_HTPASSWD_PATH", "/h"),
                ("REGISTRY_AUTH", "htpasswd"),
            ],
        ] {
            let mut v = vars.to_vec();
            v.push(("REGISTRY_AUTH_HTPASSWD_REALM", "Registry Realm"));
            let c = Config::from_yaml("", "t", env(&v)).unwrap().config;
            assert!(c.auth.enabled());
            let h = c.auth.htpasswd.expect("htpasswd from the environment");
            assert_eq!(h.path, PathBuf::from("/h"));
            assert_eq!(h.realm, "Registry Realm");
        }
        // Selected but incomplete: refused, never ignored.
        let e = Config::from_yaml("", "t", env(&[("REGISTRY_AUTH", "htpasswd")]))
            .unwrap_err()
            .to_string();
        assert!(e.contains("auth.htpasswd"), "{e}");
        let e = Config::from_yaml("", "t", env(&[("REGISTRY_AUTH", "silly")]))
            .unwrap_err()
            .to_string();
        assert!(e.contains("key auth"), "{e}");
        let c = Config::from_yaml(
            "",
            "t",
            env(&[
                ("REGISTRY_HTTP_TLS_CERTIFICATE", "/c.pem"),
                ("REGISTRY_HTTP_TLS_KEY", "/k.pem"),
                ("REGISTRY_AUTH_TOKEN_REALM", "/token"),
                ("REGISTRY_AUTH_TOKEN_SERVICE", "reg"),
                ("REGISTRY_AUTH_TOKEN_ISSUER", "iss"),
                ("REGISTRY_AUTH_TOKEN_JWKS", "/jwks.json"),
            ]),
        )
        .unwrap()
        .config;
        assert_eq!(c.http.tls.unwrap().certificate, PathBuf::from("/c.pem"));
        assert_eq!(
            c.auth.token.unwrap().jwks,
            Some(PathBuf::from("/jwks.json"))
        );
        let e = Config::from_yaml("", "t", env(&[("REGISTRY_HTTP_TLS_CERTIFICATE", "/c.pem")]))
            .unwrap_err()
            .to_string();
        assert!(e.contains("http.tls"), "{e}");
    }

    #[test]
    fn durations() {
        assert_eq!(parse_duration("1h30m").unwrap(), Duration::from_secs(5400));
        assert_eq!(parse_duration("0s").unwrap(), Duration::ZERO);
        assert_eq!(parse_duration("500ms").unwrap(), Duration::from_millis(500));
        assert!(parse_duration("10").is_err());
        assert!(parse_duration("5y").is_err());
        assert_eq!(parse_duration("1.5h").unwrap(), Duration::from_secs(5400));
        assert_eq!(parse_duration(".5s").unwrap(), Duration::from_millis(500));
        assert_eq!(parse_duration("2d").unwrap(), Duration::from_secs(172_800));
        for d in [
            Duration::ZERO,
            Duration::from_secs(5400),
            Duration::from_millis(1500),
            Duration::from_nanos(1),
            Duration::from_nanos(3_600_000_001_001),
            MAX_DURATION,
        ] {
            assert_eq!(parse_duration(&format_duration(d)).unwrap(), d, "{d:?}");
        }
    }

    /// Values that once panicked (float overflow, addition overflow) are errors now,
    /// in the parser and in every configuration key that holds a duration.
    #[test]
    fn extreme_durations_are_errors_not_panics() {
        let max = format!("{}ns", MAX_DURATION.as_nanos());
        assert_eq!(parse_duration(&max).unwrap(), MAX_DURATION);
        for bad in [
            "99999999999999999999h",
            "10000000000000000000s10000000000000000000s",
            "18446744073709551615s",
            "9223372036854775808ns",
            "9223372036s9223372036s",
            "106752d",
            "1e400h",
            "340282366920938463463374607431768211456ns",
            "1..5s",
            ".s",
            "h",
            "-5s",
            "5s-",
            "\u{0}s",
        ] {
            assert!(parse_duration(bad).is_err(), "{bad} accepted");
        }
        for key in [
            "http:\n  draintimeout: {v}\n",
            "http:\n  timeouts:\n    header: {v}\n",
            "http:\n  timeouts:\n    idle: {v}\n",
            "http:\n  timeouts:\n    body: {v}\n",
            "http:\n  timeouts:\n    send: {v}\n",
            "gc:\n  grace: {v}\n",
            "gc:\n  interval: {v}\n",
            "gc:\n  pending_ttl: {v}\n",
            "maintenance:\n  tick: {v}\n",
            "maintenance:\n  status_interval: {v}\n",
            "maintenance:\n  tasks:\n    gc:\n      time_limit: {v}\n",
            "uploads:\n  max_age: {v}\n",
            "artifacts:\n  post_process:\n    timeout: {v}\n",
            "health:\n  shutdown_delay: {v}\n",
            "health:\n  storagedriver:\n    interval: {v}\n",
            "health:\n  storagedriver:\n    timeout: {v}\n",
            "notifications:\n  endpoints:\n  - name: a\n    url: http://127.0.0.1:1/\n    timeout: {v}\n",
            "notifications:\n  endpoints:\n  - name: a\n    url: http://127.0.0.1:1/\n    backoff: {v}\n",
            "storage:\n  maintenance:\n    uploadpurging:\n      age: {v}\n",
            "retention:\n  images:\n  - untagged_older_than: {v}\n",
        ] {
            let yaml = key.replace("{v}", "'99999999999999999999h'");
            let e = Config::from_yaml(&yaml, "t", env(&[]))
                .unwrap_err()
                .to_string();
            assert!(e.starts_with("configuration key "), "{e}");
            assert!(e.contains("too large") && !e.contains('\n'), "{e}");
        }
        let e = Config::from_yaml("", "t", env(&[("REGISTRY_GC_GRACE", "1e9999h")]))
            .unwrap_err()
            .to_string();
        assert!(e.contains("gc.grace"), "{e}");
        let l = Config::from_yaml("gc:\n  grace: 90m\n", "t", env(&[])).unwrap();
        assert_eq!(l.config.gc.grace, Duration::from_secs(5400));
    }
}
