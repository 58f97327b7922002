//! Model-based soak of drydock's central promise (issue 15): nothing a client was told
//! it pushed, and still references, is lost to a remover running beside the writes.
//!
//! Clients (tasks) each own two repositories and keep a model built only from the
//! server's acknowledgements (`201`/`202`): the tags they hold and, from them, the live
//! closure that docs/gc.md promises to keep — the manifests the tags name, their config
//! and layers (or an artifact manifest's blobs), an index's children and everything
//! they reach, a referrer's subject, and the referrers pushed onto a live subject.
//! Untagged manifests are never expected to survive: they are the material of the
//! flows that make them reachable again (an index over them, a referrer tagged onto
//! them, a re-tag of their bytes), which must either be refused or keep everything they
//! reach. A write that references something neither live nor confirmed (by `HEAD`,
//! upload, mount or push) less than `gc.pending_ttl` before its answer may be refused;
//! any other refusal is a failure.
//!
//! The operation mix: images (config and layers, monolithic, chunked or mounted from
//! another repository, each blob `HEAD`ed first and skipped when present), tag moves,
//! pushes by digest, indexes over tagged and untagged manifests (`HEAD` by digest, then
//! the index), deleting a tag and at once pushing an index over the manifest it named,
//! referrers on tagged and untagged subjects, re-tags, deletes by tag and by digest,
//! abandoned upload sessions, and manifests accepted by their `Content-Type` alone
//! (an OCI 1.1-rc artifact manifest without `mediaType`: `201` keeps its blobs,
//! `400 MANIFEST_INVALID` is an acceptable refusal).
//!
//! Variants, one server each, removers back to back at grace 0 while the clients run:
//! `gc_untagged` (online cycles with `remove_untagged`), `gc_tagged` (without it),
//! `retention` (the retention task with `untagged_older_than: 0s`, the upload purge at
//! `uploads.max_age: 1s`, and plain cycles) and `scrub` (the scrub task and cycles with
//! `remove_untagged`). Each client pulls and hashes its whole live closure every few
//! operations; at the end the removers stop, one more cycle runs, every closure is
//! pulled, then the server restarts on the same root (which drops every in-memory
//! protection), a cycle with `remove_untagged` runs, and every closure is pulled again.
//!
//! `replicas` (issue 19) runs the same clients through nginx in front of three real
//! `registry serve` replicas on one Ceph RGW bucket root and a PostgreSQL cluster of the
//! test's own; one collector asks each replica in turn (`POST /admin/gc`, as the admin
//! `root` of an htpasswd policy: the admin API over TCP is the only way into a replica on
//! S3) for cycles back to back at grace 0 with untagged removal; every `SOAK_FAULT_EVERY`
//! cycles a replica (picked by the seed) or PostgreSQL's postmaster is killed with
//! kill -9 while a cycle runs, and restarted on the same port (and data). A transport
//! error or a 5xx to a request in flight while a fault lasts acknowledges nothing: the
//! client waits for the fault to end and goes on, sending a tag's write (`PUT`,
//! `DELETE`) again until it is answered, as docker pushes again; the figures count
//! them by cause (`cut_*`). Anything else is a failure. At the end: a cycle, every
//! closure through nginx, every replica restarted, a cycle, every closure again.
//! The replicas stay up while PostgreSQL restarts (they register again);
//! `SOAK_RESTART_REPLICAS_AFTER_PG=1` restarts them too.
//!
//! Seeded (`SOAK_SEED`, printed): a seed reproduces each client's operation mix (and
//! the replica run's faults), not the interleaving. Bounded by operations (`SOAK_OPS`
//! per client, `SOAK_CLIENTS`; 40 and 4 in the replica run), by `SOAK_FAULTS` faults
//! (default 4: replica, PostgreSQL, replica, PostgreSQL), and by `SOAK_CYCLES`
//! collector cycles when set (`scripts/soak-gc.sh` runs it long).
//!
//! `SOAK_EXPECT_FIXED=1` adds what today's main is known to lose (issue 15): indexes,
//! tagged referrers and re-tagged indexes over untagged manifests (flow 1), the
//! artifact manifest accepted by its `Content-Type` (flow 3), and the whole retention
//! variant (flow 2). [`EXPECT_FIXED_DEFAULT`] is its default.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet, VecDeque};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

mod clients;

use conformance::*;
use gc::maintenance::{Outcome, Task};
use registry::config::ImagePolicy;

/// Whether the flows issue 15 reported lost are in the mix when `SOAK_EXPECT_FIXED` is
/// not set: in, since the fix is on main.
const EXPECT_FIXED_DEFAULT: bool = true;

const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
const OCI_ARTIFACT: &str = "application/vnd.oci.artifact.manifest.v1+json";
const OCI_CONFIG: &str = "application/vnd.oci.image.config.v1+json";
const OCI_EMPTY: &str = "application/vnd.oci.empty.v1+json";
const OCI_LAYER: &str = "application/vnd.oci.image.layer.v1.tar+gzip";
const TAGS_PER_REPO: u64 = 6;
const CANDIDATES: usize = 12;

// ---------------------------------------------------------------------------------------
// Settings and figures

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Variant {
    GcUntagged,
    GcTagged,
    Retention,
    Scrub,
    /// Three replicas behind nginx, replicas and PostgreSQL killed (issue 19).
    Replicas,
}

impl Variant {
    fn name(self) -> &'static str {
        match self {
            Variant::GcUntagged => "gc-untagged",
            Variant::GcTagged => "gc-tagged",
            Variant::Retention => "retention",
            Variant::Scrub => "scrub",
            Variant::Replicas => "replicas",
        }
    }
}

#[derive(Clone, Debug)]
struct Settings {
    seed: u64,
    clients: u64,
    ops: u64,
    cycles: u64,
    pending_ttl: Duration,
    upload_max_age: Duration,
    verify_every: u64,
    /// The flows of issue 15 in the mix: 1 (re-use of untagged manifests), 2 (the
    /// retention variant), 3 (the artifact manifest accepted by Content-Type), and
    /// whether a failed scrub run counts (it failed when GC removed a link mid-scrub).
    flow1: bool,
    flow2: bool,
    flow3: bool,
    scrub_runs_must_succeed: bool,
    /// Replicas: faults injected (replica and PostgreSQL kills, alternating), one every
    /// `fault_every` collection cycles; after PostgreSQL restarts, whether the replicas
    /// are restarted too (see [`Settings::from_env`]).
    faults: u64,
    fault_every: u64,
    restart_replicas_after_pg: bool,
}

fn env_u64(name: &str) -> Option<u64> {
    let v = std::env::var(name).ok()?;
    Some(
        v.trim()
            .parse()
            .unwrap_or_else(|_| panic!("{name}={v:?} is not a number")),
    )
}

impl Settings {
    /// The settings from the environment; `variant`'s defaults for what is not set (the
    /// replica run is smaller: each operation crosses nginx, a replica, the bucket and
    /// the database, and the faults take their time).
    fn from_env(variant: Variant) -> Settings {
        let replicas = variant == Variant::Replicas;
        let seed = env_u64("SOAK_SEED").unwrap_or_else(|| {
            SystemTime::now()
                .duration_since(SystemTime::UNIX_EPOCH)
                .map(|d| d.as_nanos() as u64)
                .unwrap_or(1)
                % 1_000_000_007
        });
        let expect_fixed = match std::env::var("SOAK_EXPECT_FIXED") {
            Ok(v) => matches!(v.trim(), "1" | "true" | "yes"),
            Err(_) => EXPECT_FIXED_DEFAULT,
        };
        // SOAK_FLOWS=1,3 picks flows (to see which variant catches which).
        let flows: Option<Vec<String>> = std::env::var("SOAK_FLOWS")
            .ok()
            .map(|v| v.split(',').map(|f| f.trim().to_owned()).collect());
        let flow = |n: &str| {
            flows
                .as_ref()
                .map_or(expect_fixed, |f| f.iter().any(|x| x == n))
        };
        Settings {
            seed,
            clients: env_u64("SOAK_CLIENTS")
                .unwrap_or(if replicas { 4 } else { 8 })
                .max(1),
            ops: env_u64("SOAK_OPS").unwrap_or(if replicas { 40 } else { 100 }),
            cycles: env_u64("SOAK_CYCLES").unwrap_or(0),
            pending_ttl: Duration::from_millis(env_u64("SOAK_PENDING_TTL_MS").unwrap_or(400)),
            upload_max_age: Duration::from_millis(1000),
            verify_every: env_u64("SOAK_VERIFY_EVERY").unwrap_or(10).max(1),
            flow1: flow("1"),
            flow2: flow("2"),
            flow3: flow("3"),
            scrub_runs_must_succeed: expect_fixed,
            faults: env_u64("SOAK_FAULTS").unwrap_or(4),
            fault_every: env_u64("SOAK_FAULT_EVERY").unwrap_or(2).max(1),
            restart_replicas_after_pg: env_u64("SOAK_RESTART_REPLICAS_AFTER_PG")
                .is_some_and(|v| v != 0),
        }
    }

    /// The run's size and seed, for its first line.
    fn describe(&self) -> String {
        format!(
            "seed {} (SOAK_SEED={} reproduces the operation mix), {} clients x {} ops, {} cycles at least, pending_ttl {} ms",
            self.seed,
            self.seed,
            self.clients,
            self.ops,
            self.cycles,
            self.pending_ttl.as_millis(),
        )
    }
}

/// Counts shown at the end of a run (and by `scripts/soak-gc.sh`).
#[derive(Default)]
struct Stats {
    ops: AtomicU64,
    manifests_acked: AtomicU64,
    images: AtomicU64,
    pushed_by_digest: AtomicU64,
    tag_moves: AtomicU64,
    blobs_uploaded: AtomicU64,
    blobs_chunked: AtomicU64,
    blobs_skipped: AtomicU64,
    mounts: AtomicU64,
    mount_fallbacks: AtomicU64,
    indexes: AtomicU64,
    indexes_over_untagged: AtomicU64,
    delete_then_index: AtomicU64,
    referrers: AtomicU64,
    referrers_on_untagged: AtomicU64,
    retags: AtomicU64,
    deletes_by_tag: AtomicU64,
    deletes_by_digest: AtomicU64,
    abandoned_sessions: AtomicU64,
    sessions_purged: AtomicU64,
    artifacts_accepted: AtomicU64,
    artifacts_refused: AtomicU64,
    untagged_gone: AtomicU64,
    refusals_after_expiry: AtomicU64,
    verify_passes: AtomicU64,
    items_verified: AtomicU64,
    gc_cycles: AtomicU64,
    gc_removed: AtomicU64,
    retention_runs: AtomicU64,
    retention_removed: AtomicU64,
    purge_runs: AtomicU64,
    sessions_purged_by_task: AtomicU64,
    scrub_runs: AtomicU64,
    scrub_runs_failed: AtomicU64,
    /// Answers a fault explained ([`Shared::excuse`]), by cause: the write was not
    /// acknowledged (a tag's write was sent again).
    cut_transport: AtomicU64,
    cut_502: AtomicU64,
    cut_503: AtomicU64,
    cut_500: AtomicU64,
    cut_5xx_other: AtomicU64,
    /// Checks of one item a fault cut (the item is checked again later).
    checks_cut: AtomicU64,
    /// Collection cycles a fault cut.
    cycles_cut: AtomicU64,
    replica_kills: AtomicU64,
    /// Replica kills while the killed replica was running a cycle.
    replica_kills_mid_cycle: AtomicU64,
    pg_kills: AtomicU64,
    /// PostgreSQL kills while a replica was running a cycle.
    pg_kills_mid_cycle: AtomicU64,
    replica_restarts: AtomicU64,
}

fn inc(a: &AtomicU64) {
    a.fetch_add(1, Ordering::Relaxed);
}

fn get(a: &AtomicU64) -> u64 {
    a.load(Ordering::Relaxed)
}

/// How a manifest came to be (named in failures, to tell which flow lost content).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Flow {
    Image,
    IndexOverTagged,
    IndexOverUntagged,
    ReferrerOnTagged,
    ReferrerOnUntagged,
    Artifact,
}

impl Flow {
    fn name(self) -> &'static str {
        match self {
            Flow::Image => "image",
            Flow::IndexOverTagged => "index over tagged manifests",
            Flow::IndexOverUntagged => "index over untagged manifests",
            Flow::ReferrerOnTagged => "referrer on a tagged subject",
            Flow::ReferrerOnUntagged => "referrer on an untagged subject",
            Flow::Artifact => "artifact manifest accepted by Content-Type",
        }
    }
}

struct Failure {
    /// `None`: a remover.
    client: Option<u64>,
    class: &'static str,
    at: Duration,
    gc_cycles: u64,
    message: String,
}

/// Which reported flow of issue 15 a failure belongs to, by the flows its trail names
/// (a guide for reading results; the message says exactly what was lost).
fn classify(variant: Variant, message: &str) -> &'static str {
    // The trail: "repo:tag (how) → top manifest (…) → child/subject/blob …".
    let below_top = message
        .split(" → ")
        .skip(2)
        .any(|p| p.contains("again from untagged"));
    let flow1 = below_top
        || message.contains(Flow::IndexOverUntagged.name())
        || message.contains(Flow::ReferrerOnUntagged.name());
    if message.contains(Flow::Artifact.name()) {
        "flow 3 (artifact manifest accepted by Content-Type)"
    } else if flow1 {
        "flow 1 (untagged manifest made reachable again)"
    } else if variant == Variant::Retention && !message.contains("maintenance") {
        "flow 2 (retention and manifests tagged or re-tagged while it runs)"
    } else if message.contains("again from untagged") {
        "flow 1 (untagged manifest made reachable again)"
    } else {
        "other"
    }
}

/// What every client and remover of one variant shares.
struct Shared {
    variant: Variant,
    settings: Settings,
    stats: Stats,
    failures: Mutex<Vec<Failure>>,
    /// Unique layers recently pushed by any client: (repository, blob), to mount from.
    mountable: Mutex<VecDeque<(String, Blob)>>,
    started: Instant,
    /// The faults injected so far: from the kill until whatever was killed answers
    /// again (open while it lasts).
    faults: Mutex<Vec<(Instant, Option<Instant>)>>,
    /// Faults still to inject: the clients run until none is left.
    faults_to_go: AtomicU64,
    /// Whether a fault lasts now (what was cut waits for its end, then goes on).
    fault_open: tokio::sync::watch::Sender<bool>,
}

impl Shared {
    fn fail(&self, client: Option<u64>, message: String) {
        let f = Failure {
            class: classify(self.variant, &message),
            client,
            at: self.started.elapsed(),
            gc_cycles: get(&self.stats.gc_cycles),
            message,
        };
        eprintln!(
            "SOAK FAILURE [{} seed {}] {} at {:.1} s, after {} cycles: {}",
            self.variant.name(),
            self.settings.seed,
            f.client
                .map_or_else(|| "remover".to_owned(), |c| format!("client {c}")),
            f.at.as_secs_f64(),
            f.gc_cycles,
            f.message
        );
        self.failures
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(f);
    }

    /// Whether a fault explains an answer: a transport error or a 5xx (502 from nginx, a
    /// replica's 500/503) to a request that was in flight while a fault lasted. Such a
    /// write was not acknowledged; counted by cause. Anything else is a failure.
    fn excuse(&self, seen: &Seen) -> bool {
        let cause = match seen.status {
            None => &self.stats.cut_transport,
            Some(502) => &self.stats.cut_502,
            Some(503) => &self.stats.cut_503,
            Some(500) => &self.stats.cut_500,
            Some(s) if s >= 500 => &self.stats.cut_5xx_other,
            Some(_) => return false,
        };
        let faults = self.faults.lock().unwrap_or_else(|p| p.into_inner());
        let during = faults
            .iter()
            .any(|(from, to)| seen.got >= *from && to.is_none_or(|to| seen.sent <= to));
        if during {
            inc(cause);
        }
        during
    }

    /// A fault begins; [`Shared::fault_ends`] ends it.
    fn fault_begins(&self) {
        self.faults
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push((Instant::now(), None));
        self.fault_open.send_replace(true);
    }

    fn fault_ends(&self) {
        if let Some(f) = self
            .faults
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .last_mut()
        {
            f.1 = Some(Instant::now());
        }
        self.fault_open.send_replace(false);
    }

    /// Returns once no fault lasts: a client cut by one pushes again after it, as
    /// docker retries a push.
    async fn until_healed(&self) {
        let _ = self.fault_open.subscribe().wait_for(|open| !*open).await;
    }

    /// Whether the run has failed so often that going on shows nothing more (a fault
    /// that does not heal would otherwise keep the clients waiting for faults to come).
    fn gave_up(&self) -> bool {
        self.failure_count() >= 100
    }

    fn failure_count(&self) -> usize {
        self.failures
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .len()
    }
}

// ---------------------------------------------------------------------------------------
// Content

/// Blob bytes, regenerated on demand.
#[derive(Clone, Debug)]
enum Content {
    Random { seed: u64, len: usize },
    Text(Arc<str>),
}

impl Content {
    fn bytes(&self) -> Vec<u8> {
        match self {
            Content::Random { seed, len } => random_bytes(*len, *seed),
            Content::Text(t) => t.as_bytes().to_vec(),
        }
    }
}

#[derive(Clone, Debug)]
struct Blob {
    digest: String,
    media_type: &'static str,
    size: usize,
    content: Content,
}

impl Blob {
    fn new(media_type: &'static str, content: Content) -> Blob {
        let bytes = content.bytes();
        Blob {
            digest: digest_of(&bytes),
            media_type,
            size: bytes.len(),
            content,
        }
    }

    fn descriptor(&self) -> serde_json::Value {
        serde_json::json!({"mediaType": self.media_type, "digest": self.digest, "size": self.size})
    }
}

/// A manifest a client pushed (`201`), with what it references.
#[derive(Clone, Debug)]
struct Man {
    repo: usize,
    digest: String,
    media_type: &'static str,
    body: Arc<str>,
    blobs: Vec<Blob>,
    children: Vec<String>,
    subject: Option<String>,
    /// Whether the subject is part of the closure: it was live or confirmed when this
    /// manifest was last acknowledged (a referrer's subject need not exist).
    subject_kept: bool,
    flow: Flow,
    /// The op of the last write that made it reachable again after it was untagged.
    revived: Option<u64>,
    /// The client's operation number that pushed it.
    op: u64,
}

impl Man {
    fn label(&self) -> String {
        let revived = self
            .revived
            .map(|op| format!(", made reachable again from untagged at op {op}"))
            .unwrap_or_default();
        format!(
            "{} {} ({}, pushed at op {}{revived})",
            kind(self.media_type),
            short(&self.digest),
            self.flow.name(),
            self.op
        )
    }
}

fn kind(media_type: &str) -> &'static str {
    match media_type {
        OCI_INDEX => "index",
        OCI_ARTIFACT => "artifact manifest",
        _ => "manifest",
    }
}

fn short(d: &str) -> &str {
    &d[..d.len().min(19)]
}

// ---------------------------------------------------------------------------------------
// HTTP

struct Resp {
    status: u16,
    headers: reqwest::header::HeaderMap,
    body: bytes::Bytes,
    /// When the request was sent and its answer read.
    sent: Instant,
    got: Instant,
}

impl Resp {
    fn header(&self, name: &str) -> &str {
        self.headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
    }

    /// `STATUS CODE: message` of an error answer.
    fn describe(&self) -> String {
        let v: serde_json::Value = serde_json::from_slice(&self.body).unwrap_or_default();
        let e = &v["errors"][0];
        format!(
            "{} {} {}",
            self.status,
            e["code"].as_str().unwrap_or(""),
            e["message"].as_str().unwrap_or("")
        )
    }

    fn code(&self) -> String {
        let v: serde_json::Value = serde_json::from_slice(&self.body).unwrap_or_default();
        v["errors"][0]["code"].as_str().unwrap_or("").to_owned()
    }
}

/// A request that got no whole answer (a refused or cut connection).
struct SendError {
    message: String,
    sent: Instant,
    got: Instant,
}

impl std::fmt::Display for SendError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.message)
    }
}

/// When a request was sent and answered, and its status (`None`: no answer), for
/// [`Shared::excuse`].
#[derive(Clone, Copy)]
struct Seen {
    sent: Instant,
    got: Instant,
    status: Option<u16>,
}

impl SendError {
    fn seen(&self) -> Seen {
        Seen {
            sent: self.sent,
            got: self.got,
            status: None,
        }
    }
}

impl Resp {
    fn seen(&self) -> Seen {
        Seen {
            sent: self.sent,
            got: self.got,
            status: Some(self.status),
        }
    }
}

async fn send(rb: reqwest::RequestBuilder) -> Result<Resp, SendError> {
    let sent = Instant::now();
    let failed = |what: &str, e: reqwest::Error| SendError {
        message: format!("{what}: {e}"),
        sent,
        got: Instant::now(),
    };
    let r = rb.send().await.map_err(|e| failed("transport error", e))?;
    let status = r.status().as_u16();
    let headers = r.headers().clone();
    let body = r.bytes().await.map_err(|e| failed("reading the body", e))?;
    Ok(Resp {
        status,
        headers,
        body,
        sent,
        got: Instant::now(),
    })
}

// ---------------------------------------------------------------------------------------
// The client and its model

struct Rng(u64);

impl Rng {
    fn new(seed: u64) -> Rng {
        Rng(seed.wrapping_mul(0x2545_F491_4F6C_DD1D) | 1)
    }

    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }

    fn chance(&mut self, percent: u64) -> bool {
        self.below(100) < percent
    }
}

/// A (repository index, digest) pair.
type Key = (usize, String);

struct Client {
    id: u64,
    base: String,
    http: reqwest::Client,
    sh: Arc<Shared>,
    /// For redirects out of the registry (to the bucket): no credentials.
    direct: reqwest::Client,
    /// Whether a fault cut the current operation.
    cut: bool,
    rng: Rng,
    op: u64,
    counter: u64,
    /// Acknowledged tags: (repository, tag) → manifest digest.
    tags: BTreeMap<(usize, String), String>,
    /// How each tag got its manifest (named in failures).
    tag_how: BTreeMap<(usize, String), String>,
    /// Referrers pushed onto a subject while it was live, not deleted since.
    referrers: BTreeMap<Key, BTreeSet<String>>,
    /// Every manifest the model still needs to know (live, candidates and their closure).
    archive: HashMap<Key, Man>,
    /// The live manifests at the last [`Client::settle`].
    live: BTreeSet<Key>,
    /// Manifests that left the live set, newest last: material for re-use flows.
    candidates: VecDeque<Key>,
    /// When the request was sent whose answer told this client a blob or manifest
    /// exists in a repository (upload, mount, `HEAD`, push by digest).
    confirmed: HashMap<Key, (Instant, &'static str)>,
    /// Manifests this client deleted by digest (what reaches them cannot be re-used).
    deleted: HashSet<Key>,
    /// Failures already reported, by (repository, digest, what).
    reported: HashSet<String>,
}

/// What a manifest `PUT` came to.
enum Put {
    Created,
    /// Refused, acceptably (the answer was checked).
    Refused,
    /// A failure, already recorded.
    Failed,
}

impl Client {
    fn new(id: u64, base: String, sh: Arc<Shared>) -> Client {
        let seed = sh.settings.seed ^ (id + 1).wrapping_mul(0x9E37_79B9_7F4A_7C15);
        Client {
            id,
            base,
            // Replicas: a user the access policy lets push and delete (see `replica_yaml`).
            http: if sh.variant == Variant::Replicas {
                client_with(Some(auth::basic(auth::ALICE)))
            } else {
                client()
            },
            direct: reqwest::Client::new(),
            cut: false,
            sh,
            rng: Rng::new(seed),
            op: 0,
            counter: 0,
            tags: BTreeMap::new(),
            tag_how: BTreeMap::new(),
            referrers: BTreeMap::new(),
            archive: HashMap::new(),
            live: BTreeSet::new(),
            candidates: VecDeque::new(),
            confirmed: HashMap::new(),
            deleted: HashSet::new(),
            reported: HashSet::new(),
        }
    }

    fn repo(&self, r: usize) -> String {
        format!("soak/c{}/r{r}", self.id)
    }

    fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    fn fail(&mut self, message: String) {
        self.sh.fail(
            Some(self.id),
            format!("op {} of {}: {message}", self.op, self.sh.variant.name()),
        );
    }

    /// [`Client::fail`], unless a fault the run injected explains the answer
    /// ([`Shared::excuse`]): then the write was not acknowledged and the client goes on.
    fn fail_req(&mut self, seen: Seen, message: String) {
        if self.sh.excuse(&seen) {
            self.cut = true;
        } else {
            self.fail(message);
        }
    }

    /// A problem a check found, unless a fault explains the answer (the item is checked
    /// again later).
    fn problem(
        &mut self,
        problems: &mut Vec<String>,
        seen: Seen,
        message: impl FnOnce() -> String,
    ) {
        if self.sh.excuse(&seen) {
            self.cut = true;
            inc(&self.sh.stats.checks_cut);
        } else {
            problems.push(message());
        }
    }

    /// Sends a write that changes what a tag names (a manifest `PUT`, a `DELETE`) until
    /// it is answered: one that a fault cut ([`Shared::excuse`]) may have been done
    /// anyway, so the model would no longer know the tag; the client sends it again, as
    /// docker pushes again. The answer (below 500, or a 5xx no fault explains, already
    /// reported), and whether it was sent more than once; `None` when it failed.
    async fn send_until_answered(
        &self,
        what: &str,
        request: impl Fn() -> reqwest::RequestBuilder,
    ) -> Option<(Resp, bool)> {
        const TRIES: u32 = 1200;
        let fail = |message: String| {
            self.sh.fail(
                Some(self.id),
                format!(
                    "op {} of {}: {what}: {message}",
                    self.op,
                    self.sh.variant.name()
                ),
            )
        };
        for attempt in 0..TRIES {
            match send(request()).await {
                Ok(r) if r.status < 500 => return Some((r, attempt > 0)),
                Ok(r) if self.sh.excuse(&r.seen()) => {}
                Ok(r) => {
                    fail(r.describe());
                    return None;
                }
                Err(e) if self.sh.excuse(&e.seen()) => {}
                Err(e) => {
                    fail(e.to_string());
                    return None;
                }
            }
            self.sh.until_healed().await;
        }
        fail(format!("still cut after {TRIES} tries"));
        None
    }

    /// A client's think time: a few milliseconds, at random.
    async fn think(&mut self, max_ms: u64) {
        let ms = self.rng.below(max_ms + 1);
        if ms > 0 {
            tokio::time::sleep(Duration::from_millis(ms)).await;
        }
    }

    fn unique(&mut self) -> u64 {
        self.counter += 1;
        ((self.id + 1) << 40) | self.counter
    }

    // --- the model -----------------------------------------------------------------

    /// The live closure of the model's tags (manifests only).
    fn closure(&self, tags: impl Iterator<Item = Key>) -> BTreeSet<Key> {
        self.closure_but(tags, None)
    }

    /// [`Client::closure`], not following referrer edges to `unlisted` (a referrer
    /// deleted by digest leaves its subject's listing).
    fn closure_but(
        &self,
        tags: impl Iterator<Item = Key>,
        unlisted: Option<&Key>,
    ) -> BTreeSet<Key> {
        let mut live = BTreeSet::new();
        let mut stack: Vec<Key> = tags.collect();
        while let Some(k) = stack.pop() {
            if !live.insert(k.clone()) {
                continue;
            }
            let Some(m) = self.archive.get(&k) else {
                continue;
            };
            for c in &m.children {
                stack.push((k.0, c.clone()));
            }
            if let Some(s) = m.subject.as_ref().filter(|_| m.subject_kept) {
                stack.push((k.0, s.clone()));
            }
            if let Some(rs) = self.referrers.get(&k) {
                stack.extend(
                    rs.iter()
                        .map(|r| (k.0, r.clone()))
                        .filter(|r| Some(r) != unlisted),
                );
            }
        }
        live
    }

    fn tag_roots(&self) -> impl Iterator<Item = Key> + '_ {
        self.tags.iter().map(|((r, _), d)| (*r, d.clone()))
    }

    /// Recomputes the live set after an acknowledged change: what left it becomes a
    /// candidate (no longer expected to exist), referrers of subjects that left it are
    /// forgotten, and the archive keeps only what live manifests and candidates reach.
    fn settle(&mut self) {
        let live = self.closure(self.tag_roots());
        for k in self.live.difference(&live) {
            if self.archive.contains_key(k) && !self.candidates.contains(k) {
                self.candidates.push_back(k.clone());
            }
        }
        self.candidates.retain(|k| !live.contains(k));
        while self.candidates.len() > CANDIDATES {
            self.candidates.pop_front();
        }
        self.referrers.retain(|s, _| live.contains(s));
        let keep = {
            let mut keep = live.clone();
            let mut stack: Vec<Key> = self.candidates.iter().cloned().collect();
            while let Some(k) = stack.pop() {
                if !keep.insert(k.clone()) {
                    continue;
                }
                if let Some(m) = self.archive.get(&k) {
                    stack.extend(m.children.iter().map(|c| (k.0, c.clone())));
                    stack.extend(m.subject.iter().map(|s| (k.0, s.clone())));
                }
            }
            keep
        };
        self.archive.retain(|k, _| keep.contains(k));
        let ttl = self.sh.settings.pending_ttl;
        self.confirmed.retain(|_, (t, _)| t.elapsed() < ttl);
        self.live = live;
    }

    /// A manifest pushed untagged (before [`Client::settle`], which keeps the archive
    /// of candidates).
    fn add_candidate(&mut self, k: Key) {
        self.candidates.retain(|c| c != &k);
        self.candidates.push_back(k);
    }

    /// The blobs of the live manifests, per repository.
    fn live_blobs(&self) -> HashSet<Key> {
        self.live
            .iter()
            .filter_map(|k| self.archive.get(k))
            .flat_map(|m| m.blobs.iter().map(move |b| (m.repo, b.digest.clone())))
            .collect()
    }

    fn confirm(&mut self, repo: usize, digest: &str, at: Instant, how: &'static str) {
        self.confirmed.insert((repo, digest.to_owned()), (at, how));
    }

    /// Whether the server must still have `digest` in `repo` at `answered`: it is in the
    /// live closure, or the client was told it exists less than `pending_ttl` before.
    fn guaranteed(
        &self,
        repo: usize,
        digest: &str,
        answered: Instant,
        blobs: &HashSet<Key>,
    ) -> bool {
        let k = (repo, digest.to_owned());
        self.live.contains(&k)
            || blobs.contains(&k)
            || self.confirmed.get(&k).is_some_and(|(t, _)| {
                answered.saturating_duration_since(*t) < self.sh.settings.pending_ttl
            })
    }

    // --- requests ------------------------------------------------------------------

    /// `HEAD`, then an upload (monolithic, chunked, or a mount from `from`) only when the
    /// repository does not have the blob. False when the blob could not be pushed (a
    /// failure is recorded unless the refusal was acceptable).
    async fn ensure_blob(&mut self, repo: usize, blob: &Blob, from: Option<String>) -> bool {
        let name = self.repo(repo);
        let r = match send(
            self.http
                .head(self.url(&format!("/v2/{name}/blobs/{}", blob.digest))),
        )
        .await
        {
            Ok(r) => r,
            Err(e) => {
                self.fail_req(
                    e.seen(),
                    format!("HEAD blob {} in {name}: {e}", blob.digest),
                );
                return false;
            }
        };
        match r.status {
            200 => {
                inc(&self.sh.stats.blobs_skipped);
                self.confirm(repo, &blob.digest, r.sent, "HEAD");
                return true;
            }
            404 => {}
            _ => {
                self.fail_req(
                    r.seen(),
                    format!("HEAD blob {} in {name}: {}", blob.digest, r.status),
                );
                return false;
            }
        }
        if let Some(from) = from {
            let r = match send(
                self.http
                    .post(self.url(&format!(
                        "/v2/{name}/blobs/uploads/?mount={}&from={from}",
                        blob.digest
                    )))
                    .header("content-length", "0"),
            )
            .await
            {
                Ok(r) => r,
                Err(e) => {
                    self.fail_req(
                        e.seen(),
                        format!("mount {} from {from} into {name}: {e}", blob.digest),
                    );
                    return false;
                }
            };
            match r.status {
                201 => {
                    inc(&self.sh.stats.mounts);
                    self.confirm(repo, &blob.digest, r.sent, "mount");
                    return true;
                }
                202 => {
                    // Not mountable (the source no longer has it): upload into the
                    // session the server opened instead.
                    inc(&self.sh.stats.mount_fallbacks);
                    let loc = r.header("location").to_owned();
                    return self.finish_session(repo, &loc, blob, r.sent).await;
                }
                _ => {
                    self.fail_req(
                        r.seen(),
                        format!(
                            "mount {} from {from} into {name}: {}",
                            blob.digest,
                            r.describe()
                        ),
                    );
                    return false;
                }
            }
        }
        if blob.size > 16 * 1024 {
            return self.upload_chunked(repo, blob).await;
        }
        let r = match send(
            self.http
                .post(self.url(&format!("/v2/{name}/blobs/uploads/?digest={}", blob.digest)))
                .header("content-type", "application/octet-stream")
                .body(blob.content.bytes()),
        )
        .await
        {
            Ok(r) => r,
            Err(e) => {
                self.fail_req(e.seen(), format!("upload {} to {name}: {e}", blob.digest));
                return false;
            }
        };
        if r.status != 201 {
            self.fail_req(
                r.seen(),
                format!("upload {} to {name}: {}", blob.digest, r.describe()),
            );
            return false;
        }
        inc(&self.sh.stats.blobs_uploaded);
        self.confirm(repo, &blob.digest, r.sent, "upload");
        true
    }

    fn abs(&self, loc: &str) -> String {
        if loc.starts_with("http") {
            loc.to_owned()
        } else {
            self.url(loc)
        }
    }

    fn with_digest(loc: &str, digest: &str) -> String {
        let sep = if loc.contains('?') { '&' } else { '?' };
        format!("{loc}{sep}digest={digest}")
    }

    /// A session answer the purge may explain: an unknown upload is acceptable only when
    /// the session was idle for at least `uploads.max_age` (by the client's clock, which
    /// can only overstate the server's idle time), and only where the purge runs.
    fn session_gone(&mut self, what: &str, r: &Resp, last_sent: Instant) -> bool {
        let idle = r.got.saturating_duration_since(last_sent);
        if r.status == 404
            && r.code() == "BLOB_UPLOAD_UNKNOWN"
            && self.sh.variant == Variant::Retention
            && idle >= self.sh.settings.upload_max_age
        {
            inc(&self.sh.stats.sessions_purged);
            return true;
        }
        self.fail_req(
            r.seen(),
            format!(
                "{what}: {} (session idle at most {} ms)",
                r.describe(),
                idle.as_millis()
            ),
        );
        false
    }

    /// PUTs the whole blob into an open session.
    async fn finish_session(&mut self, repo: usize, loc: &str, blob: &Blob, last: Instant) -> bool {
        let url = Self::with_digest(&self.abs(loc), &blob.digest);
        let what = format!("finish upload of {} to {}", blob.digest, self.repo(repo));
        let r = match send(
            self.http
                .put(url)
                .header("content-type", "application/octet-stream")
                .body(blob.content.bytes()),
        )
        .await
        {
            Ok(r) => r,
            Err(e) => {
                self.fail_req(e.seen(), format!("{what}: {e}"));
                return false;
            }
        };
        if r.status == 201 {
            inc(&self.sh.stats.blobs_uploaded);
            self.confirm(repo, &blob.digest, r.sent, "session upload");
            return true;
        }
        self.session_gone(&what, &r, last);
        false
    }

    async fn upload_chunked(&mut self, repo: usize, blob: &Blob) -> bool {
        let name = self.repo(repo);
        let what = format!("chunked upload of {} to {name}", blob.digest);
        let r = match send(
            self.http
                .post(self.url(&format!("/v2/{name}/blobs/uploads/")))
                .header("content-length", "0"),
        )
        .await
        {
            Ok(r) => r,
            Err(e) => {
                self.fail_req(e.seen(), format!("{what}: {e}"));
                return false;
            }
        };
        if r.status != 202 {
            self.fail_req(r.seen(), format!("{what}: POST {}", r.describe()));
            return false;
        }
        let mut loc = self.abs(r.header("location"));
        let mut last = r.sent;
        let data = blob.content.bytes();
        let parts = 2 + self.rng.below(2) as usize;
        let step = data.len().div_ceil(parts);
        let mut start = 0;
        // Every chunk but the last by PATCH; the last with the closing PUT.
        while start + step < data.len() {
            let chunk = data[start..start + step].to_vec();
            let r = match send(
                self.http
                    .patch(&loc)
                    .header("content-type", "application/octet-stream")
                    .header("content-range", format!("{start}-{}", start + step - 1))
                    .body(chunk),
            )
            .await
            {
                Ok(r) => r,
                Err(e) => {
                    self.fail_req(e.seen(), format!("{what}: PATCH: {e}"));
                    return false;
                }
            };
            if r.status != 202 {
                self.session_gone(&format!("{what}: PATCH"), &r, last);
                return false;
            }
            loc = self.abs(r.header("location"));
            last = r.sent;
            start += step;
            self.think(3).await;
        }
        let url = Self::with_digest(&loc, &blob.digest);
        let r = match send(
            self.http
                .put(url)
                .header("content-type", "application/octet-stream")
                .header(
                    "content-range",
                    format!("{start}-{}", data.len().saturating_sub(1)),
                )
                .body(data[start..].to_vec()),
        )
        .await
        {
            Ok(r) => r,
            Err(e) => {
                self.fail_req(e.seen(), format!("{what}: PUT: {e}"));
                return false;
            }
        };
        if r.status != 201 {
            self.session_gone(&format!("{what}: PUT"), &r, last);
            return false;
        }
        inc(&self.sh.stats.blobs_uploaded);
        inc(&self.sh.stats.blobs_chunked);
        self.confirm(repo, &blob.digest, r.sent, "chunked upload");
        true
    }

    /// `HEAD` of a manifest by digest; true when it exists (then it is confirmed).
    async fn head_manifest(&mut self, repo: usize, digest: &str) -> Option<bool> {
        let name = self.repo(repo);
        let r = match send(
            self.http
                .head(self.url(&format!("/v2/{name}/manifests/{digest}"))),
        )
        .await
        {
            Ok(r) => r,
            Err(e) => {
                self.fail_req(e.seen(), format!("HEAD manifest {name}@{digest}: {e}"));
                return None;
            }
        };
        match r.status {
            200 => {
                self.confirm(repo, digest, r.sent, "HEAD");
                Some(true)
            }
            404 => {
                if self.live.contains(&(repo, digest.to_owned())) {
                    self.fail(format!("HEAD of live manifest {name}@{digest}: 404"));
                    return None;
                }
                Some(false)
            }
            _ => {
                self.fail_req(
                    r.seen(),
                    format!("HEAD manifest {name}@{digest}: {}", r.describe()),
                );
                None
            }
        }
    }

    /// PUTs a manifest by `reference` (a tag or its digest). A refusal is acceptable
    /// only when something it references is neither live in the model nor confirmed
    /// within `pending_ttl` of the answer, or (for an artifact manifest accepted by
    /// Content-Type only) a `400 MANIFEST_INVALID`.
    async fn put_manifest(&mut self, m: &Man, reference: &str) -> Put {
        let name = self.repo(m.repo);
        let what = format!(
            "PUT {} {name}:{reference} ({})",
            kind(m.media_type),
            m.flow.name()
        );
        let url = self.url(&format!("/v2/{name}/manifests/{reference}"));
        let Some((r, _)) = self
            .send_until_answered(&what, || {
                self.http
                    .put(&url)
                    .header("content-type", m.media_type)
                    .body(m.body.as_bytes().to_vec())
            })
            .await
        else {
            return Put::Failed;
        };
        if r.status == 201 {
            let got = r.header("docker-content-digest");
            if got != m.digest {
                self.fail(format!(
                    "{what}: Docker-Content-Digest {got:?}, want {}",
                    m.digest
                ));
                return Put::Failed;
            }
            inc(&self.sh.stats.manifests_acked);
            if reference == m.digest {
                // Pushed by digest: pending, like an uploaded blob.
                self.confirm(m.repo, &m.digest, r.sent, "push by digest");
            }
            return Put::Created;
        }
        let code = r.code();
        if m.flow == Flow::Artifact && r.status == 400 && code == "MANIFEST_INVALID" {
            return Put::Refused;
        }
        if r.status == 400 && (code == "MANIFEST_BLOB_UNKNOWN" || code == "MANIFEST_UNKNOWN") {
            let blobs = self.live_blobs();
            let needed: Vec<&str> = m
                .blobs
                .iter()
                .map(|b| b.digest.as_str())
                .chain(m.children.iter().map(String::as_str))
                .collect();
            let unguaranteed: Vec<&str> = needed
                .iter()
                .copied()
                .filter(|d| !self.guaranteed(m.repo, d, r.got, &blobs))
                .collect();
            if !unguaranteed.is_empty() {
                inc(&self.sh.stats.refusals_after_expiry);
                return Put::Refused;
            }
            let ages: Vec<String> = needed
                .iter()
                .map(|d| {
                    let k = (m.repo, d.to_string());
                    let live = if self.live.contains(&k) || blobs.contains(&k) {
                        " live"
                    } else {
                        ""
                    };
                    match self.confirmed.get(&k) {
                        Some((t, how)) => format!(
                            "{}{live} ({how} {} ms before the answer)",
                            short(d),
                            r.got.duration_since(*t).as_millis()
                        ),
                        None => format!("{}{live}", short(d)),
                    }
                })
                .collect();
            self.fail(format!(
                "{what}: {} although everything it references was live or confirmed within pending_ttl ({} ms): {}",
                r.describe(),
                self.sh.settings.pending_ttl.as_millis(),
                ages.join(", ")
            ));
            return Put::Failed;
        }
        self.fail_req(r.seen(), format!("{what}: {}", r.describe()));
        Put::Failed
    }

    // --- operations ----------------------------------------------------------------

    fn pick_repo(&mut self) -> usize {
        self.rng.below(2) as usize
    }

    fn pick_tag(&mut self) -> String {
        format!("t{}", self.rng.below(TAGS_PER_REPO))
    }

    /// Records a tag the server acknowledged.
    fn set_tag(&mut self, repo: usize, tag: String, digest: &str, how: &str) {
        let how = format!("{how} at op {}", self.op);
        self.tag_how.insert((repo, tag.clone()), how);
        if self
            .tags
            .insert((repo, tag), digest.to_owned())
            .is_some_and(|old| old != digest)
        {
            inc(&self.sh.stats.tag_moves);
        }
    }

    fn shared_layer(&mut self) -> Blob {
        let k = self.rng.below(4);
        Blob::new(
            OCI_LAYER,
            Content::Random {
                seed: 7_000_000 + k,
                len: 3000,
            },
        )
    }

    fn unique_layer(&mut self) -> Blob {
        let seed = self.unique();
        let len = if self.rng.chance(15) {
            20_000 + self.rng.below(40_000) as usize
        } else {
            500 + self.rng.below(6000) as usize
        };
        Blob::new(OCI_LAYER, Content::Random { seed, len })
    }

    /// An image (config, 0–1 shared and 1–2 unique layers, sometimes a layer mounted
    /// from another repository) pushed under a tag or by digest.
    async fn push_image(&mut self, tagged: bool) {
        let repo = self.pick_repo();
        let n = self.unique();
        let config = Blob::new(
            OCI_CONFIG,
            Content::Text(format!(r#"{{"architecture":"amd64","os":"linux","soak":{n}}}"#).into()),
        );
        let mut layers = Vec::new();
        let mut from = Vec::new();
        if self.rng.chance(50) {
            layers.push(self.shared_layer());
            from.push(None);
        }
        for _ in 0..1 + self.rng.below(2) {
            layers.push(self.unique_layer());
            from.push(None);
        }
        if self.rng.chance(25) {
            // A layer of another repository: of this client's other one, or of anyone.
            let other = self.rng.chance(50);
            let picked = if other {
                let src = 1 - repo;
                let blobs: Vec<Blob> = self
                    .live
                    .iter()
                    .filter(|k| k.0 == src)
                    .filter_map(|k| self.archive.get(k))
                    .flat_map(|m| {
                        m.blobs
                            .iter()
                            .filter(|b| b.media_type == OCI_LAYER)
                            .cloned()
                    })
                    .collect();
                if blobs.is_empty() {
                    None
                } else {
                    let i = self.rng.below(blobs.len() as u64) as usize;
                    Some((self.repo(src), blobs[i].clone()))
                }
            } else {
                let shared = self.sh.mountable.lock().unwrap_or_else(|p| p.into_inner());
                if shared.is_empty() {
                    None
                } else {
                    let i = (self.rng.next() % shared.len() as u64) as usize;
                    Some(shared[i].clone())
                }
            };
            if let Some((src, b)) = picked
                && !layers.iter().any(|l| l.digest == b.digest)
            {
                layers.push(b);
                from.push(Some(src));
            }
        }
        for (b, f) in std::iter::once(&config)
            .zip(std::iter::once(None))
            .chain(layers.iter().zip(from))
        {
            if !self.ensure_blob(repo, b, f).await {
                return;
            }
        }
        self.think(10).await;
        let mut blobs = vec![config];
        blobs.extend(layers);
        let body = serde_json::json!({
            "schemaVersion": 2,
            "mediaType": OCI_MANIFEST,
            "config": blobs[0].descriptor(),
            "layers": blobs[1..].iter().map(Blob::descriptor).collect::<Vec<_>>(),
        })
        .to_string();
        let m = Man {
            repo,
            digest: digest_of(body.as_bytes()),
            media_type: OCI_MANIFEST,
            body: body.into(),
            blobs,
            children: Vec::new(),
            subject: None,
            subject_kept: false,
            revived: None,
            flow: Flow::Image,
            op: self.op,
        };
        let tag = self.pick_tag();
        let reference = if tagged {
            tag.clone()
        } else {
            m.digest.clone()
        };
        let answer = self.put_manifest(&m, &reference).await;
        if !matches!(answer, Put::Created) {
            return;
        }
        inc(&self.sh.stats.images);
        {
            let name = self.repo(repo);
            let mut shared = self.sh.mountable.lock().unwrap_or_else(|p| p.into_inner());
            for b in m.blobs[1..].iter().filter(|b| b.size != 3000) {
                shared.push_back((name.clone(), b.clone()));
            }
            while shared.len() > 64 {
                shared.pop_front();
            }
        }
        let k = (repo, m.digest.clone());
        self.archive.insert(k.clone(), m.clone());
        if tagged {
            self.set_tag(repo, tag, &m.digest, "pushed");
            self.settle();
        } else {
            inc(&self.sh.stats.pushed_by_digest);
            // Untagged: protected only for pending_ttl, so only a candidate.
            self.add_candidate(k);
            self.settle();
        }
    }

    /// Untagged candidates of `repo` the server may still have (newest first).
    fn candidates_in(&self, repo: usize, media: &[&str]) -> Vec<Man> {
        self.candidates
            .iter()
            .rev()
            .filter(|k| k.0 == repo && !self.reaches_deleted(k))
            .filter_map(|k| self.archive.get(k))
            .filter(|m| media.contains(&m.media_type))
            .cloned()
            .collect()
    }

    /// Whether `k` or an index child below it was deleted by digest by this client
    /// (the server may still accept an index over it: it checks direct children only).
    fn reaches_deleted(&self, k: &Key) -> bool {
        let mut stack = vec![k.clone()];
        while let Some(k) = stack.pop() {
            if self.deleted.contains(&k) {
                return true;
            }
            if let Some(m) = self.archive.get(&k) {
                stack.extend(m.children.iter().map(|c| (k.0, c.clone())));
            }
        }
        false
    }

    /// After a write made `roots` reachable again: what it reaches that was not live is
    /// marked revived, and each subject in it is expected only if it is guaranteed now
    /// (the server does not check subjects). Call before [`Client::settle`].
    fn revive(&mut self, roots: &[Key]) {
        let now = Instant::now();
        let mut stack: Vec<Key> = roots.to_vec();
        let mut seen = HashSet::new();
        while let Some(k) = stack.pop() {
            if self.live.contains(&k) || !seen.insert(k.clone()) {
                continue;
            }
            let Some(mut m) = self.archive.get(&k).cloned() else {
                continue;
            };
            m.revived = Some(self.op);
            if let Some(s) = &m.subject {
                m.subject_kept = self.guaranteed(k.0, s, now, &HashSet::new());
                if m.subject_kept {
                    stack.push((k.0, s.clone()));
                }
            }
            stack.extend(m.children.iter().map(|c| (k.0, c.clone())));
            self.archive.insert(k, m);
        }
    }

    fn live_in(&self, repo: usize, media: &[&str]) -> Vec<Man> {
        self.live
            .iter()
            .filter(|k| k.0 == repo)
            .filter_map(|k| self.archive.get(k))
            .filter(|m| media.contains(&m.media_type))
            .cloned()
            .collect()
    }

    /// An index over `children` (each `HEAD`ed by digest first; those gone are left
    /// out), pushed under a tag.
    async fn push_index(&mut self, repo: usize, children: Vec<Man>) {
        let mut kept = Vec::new();
        let mut untagged = false;
        for c in children {
            match self.head_manifest(repo, &c.digest).await {
                Some(true) => {
                    untagged |= !self.live.contains(&(repo, c.digest.clone()));
                    kept.push(c);
                }
                Some(false) => inc(&self.sh.stats.untagged_gone),
                None => return,
            }
        }
        if kept.is_empty() {
            return;
        }
        self.think(10).await;
        let n = self.unique();
        let body = serde_json::json!({
            "schemaVersion": 2,
            "mediaType": OCI_INDEX,
            "manifests": kept.iter().map(|c| serde_json::json!({
                "mediaType": c.media_type,
                "digest": c.digest,
                "size": c.body.len(),
                "platform": {"architecture": "amd64", "os": "linux"},
            })).collect::<Vec<_>>(),
            "annotations": {"soak": n.to_string()},
        })
        .to_string();
        let flow = if untagged {
            Flow::IndexOverUntagged
        } else {
            Flow::IndexOverTagged
        };
        let m = Man {
            repo,
            digest: digest_of(body.as_bytes()),
            media_type: OCI_INDEX,
            body: body.into(),
            blobs: Vec::new(),
            children: kept.iter().map(|c| c.digest.clone()).collect(),
            subject: None,
            subject_kept: false,
            revived: None,
            flow,
            op: self.op,
        };
        let tag = self.pick_tag();
        if !matches!(self.put_manifest(&m, &tag).await, Put::Created) {
            return;
        }
        inc(&self.sh.stats.indexes);
        if untagged {
            inc(&self.sh.stats.indexes_over_untagged);
        }
        let children: Vec<Key> = m.children.iter().map(|c| (repo, c.clone())).collect();
        self.revive(&children);
        self.archive.insert((repo, m.digest.clone()), m.clone());
        self.set_tag(repo, tag, &m.digest, flow.name());
        self.settle();
    }

    async fn index_over_tagged(&mut self) {
        let repo = self.pick_repo();
        let mut pool = self.live_in(repo, &[OCI_MANIFEST]);
        if pool.is_empty() {
            return self.push_image(true).await;
        }
        let mut children = Vec::new();
        for _ in 0..1 + self.rng.below(2) {
            if pool.is_empty() {
                break;
            }
            let i = self.rng.below(pool.len() as u64) as usize;
            children.push(pool.swap_remove(i));
        }
        self.push_index(repo, children).await;
    }

    /// An index over untagged manifests (images or indexes), with a tagged one now
    /// and then.
    async fn index_over_untagged(&mut self) {
        let repo = self.pick_repo();
        let mut pool = self.candidates_in(repo, &[OCI_MANIFEST, OCI_INDEX]);
        if pool.is_empty() {
            return self.index_over_tagged().await;
        }
        let mut children = vec![pool.remove(0)];
        if !pool.is_empty() && self.rng.chance(30) {
            let i = self.rng.below(pool.len() as u64) as usize;
            children.push(pool.swap_remove(i));
        }
        let tagged = self.live_in(repo, &[OCI_MANIFEST]);
        if !tagged.is_empty() && self.rng.chance(30) {
            let i = self.rng.below(tagged.len() as u64) as usize;
            children.push(tagged[i].clone());
        }
        self.push_index(repo, children).await;
    }

    /// Tags whose manifest nothing else keeps live: deleting the tag leaves it untagged.
    fn sole_tags(&self, media: &[&str]) -> Vec<((usize, String), String)> {
        self.tags
            .iter()
            .filter(|((r, _), d)| {
                self.archive
                    .get(&(*r, (*d).clone()))
                    .is_some_and(|m| media.contains(&m.media_type))
            })
            .filter(|((r, _), d)| {
                let others = self
                    .tags
                    .iter()
                    .filter(|((r2, _), d2)| !(r2 == r && d2 == d))
                    .map(|((r2, _), d2)| (*r2, d2.clone()));
                !self.closure(others).contains(&(*r, (*d).clone()))
            })
            .map(|(k, d)| (k.clone(), d.clone()))
            .collect()
    }

    /// Flow 1 of issue 15: delete the tag of the oldest image nothing else keeps, then
    /// at once `HEAD` it and push an index over it under a tag.
    async fn delete_then_index(&mut self) {
        let mut sole = self.sole_tags(&[OCI_MANIFEST]);
        sole.sort_by_key(|((r, _), d)| self.archive.get(&(*r, d.clone())).map_or(0, |m| m.op));
        let Some(((repo, tag), digest)) = sole.into_iter().next() else {
            return self.push_image(true).await;
        };
        if !self.delete_tag(repo, &tag).await {
            return;
        }
        inc(&self.sh.stats.delete_then_index);
        self.think(20).await;
        let Some(m) = self.archive.get(&(repo, digest)).cloned() else {
            return;
        };
        self.push_index(repo, vec![m]).await;
    }

    /// `DELETE` of a manifest by tag or digest (`shown` names it); true on `202`, or on
    /// a `404` to a `DELETE` sent again (the first one was done, its answer lost).
    async fn delete_manifest(&mut self, repo: usize, reference: &str, shown: &str) -> bool {
        let name = self.repo(repo);
        let what = format!("DELETE {name}{shown}");
        let url = self.url(&format!("/v2/{name}/manifests/{reference}"));
        let Some((r, again)) = self
            .send_until_answered(&what, || self.http.delete(&url))
            .await
        else {
            return false;
        };
        if r.status != 202 && !(again && r.status == 404) {
            self.fail(format!("{what}: {}", r.describe()));
            return false;
        }
        true
    }

    /// `DELETE` of a tag the model holds; true on `202`.
    async fn delete_tag(&mut self, repo: usize, tag: &str) -> bool {
        if !self.delete_manifest(repo, tag, &format!(":{tag}")).await {
            return false;
        }
        inc(&self.sh.stats.deletes_by_tag);
        self.tags.remove(&(repo, tag.to_owned()));
        self.tag_how.remove(&(repo, tag.to_owned()));
        self.settle();
        true
    }

    async fn delete_random_tag(&mut self) {
        let all: Vec<(usize, String)> = self.tags.keys().cloned().collect();
        if all.is_empty() {
            return self.push_image(true).await;
        }
        let (repo, tag) = all[self.rng.below(all.len() as u64) as usize].clone();
        self.delete_tag(repo, &tag).await;
    }

    /// `DELETE` by digest of a manifest that only its own tags keep (so nothing live
    /// breaks): the revision, its tags and its referrers entry go.
    async fn delete_by_digest(&mut self) {
        // Live manifests that only their own tags or their subject's listing keep: the
        // delete removes those tags and that listing entry, and breaks nothing live.
        let deletable: Vec<Key> = self
            .live
            .iter()
            .filter(|k| {
                let listed = self
                    .referrers
                    .iter()
                    .any(|(s, rs)| s.0 == k.0 && rs.contains(&k.1));
                let tagged = self.tags.iter().any(|((r, _), d)| (*r, d) == (k.0, &k.1));
                (listed || tagged)
                    && !self
                        .closure_but(self.tag_roots().filter(|t| t != *k), Some(k))
                        .contains(*k)
            })
            .cloned()
            .collect();
        if deletable.is_empty() {
            return self.push_image(true).await;
        }
        let (repo, digest) = deletable[self.rng.below(deletable.len() as u64) as usize].clone();
        self.deleted.insert((repo, digest.clone()));
        if !self
            .delete_manifest(repo, &digest, &format!("@{digest}"))
            .await
        {
            return;
        }
        inc(&self.sh.stats.deletes_by_digest);
        self.tags.retain(|(r, _), d| !(*r == repo && *d == digest));
        let tags = &self.tags;
        self.tag_how.retain(|k, _| tags.contains_key(k));
        for (_, rs) in self.referrers.iter_mut().filter(|(s, _)| s.0 == repo) {
            rs.remove(&digest);
        }
        self.referrers.remove(&(repo, digest.clone()));
        self.settle();
        // Gone for good: no flow may reuse it, and what told the client it existed (a
        // HEAD, a push by digest) no longer holds: a referrer of it made reachable
        // again later does not bring it back.
        let k = (repo, digest);
        self.candidates.retain(|c| c != &k);
        self.confirmed.remove(&k);
    }

    /// A referrer (an SBOM-like artifact: empty config, one unique layer) onto a live or
    /// an untagged subject, under a tag or by digest.
    async fn push_referrer(&mut self, untagged_subject: bool, tagged: bool) {
        let repo = self.pick_repo();
        let pool = if untagged_subject {
            self.candidates_in(repo, &[OCI_MANIFEST, OCI_INDEX])
        } else {
            self.live_in(repo, &[OCI_MANIFEST, OCI_INDEX, OCI_ARTIFACT])
        };
        if pool.is_empty() {
            return self.push_image(true).await;
        }
        let subject = if untagged_subject {
            pool[0].clone()
        } else {
            pool[self.rng.below(pool.len() as u64) as usize].clone()
        };
        match self.head_manifest(repo, &subject.digest).await {
            Some(true) => {}
            Some(false) => {
                inc(&self.sh.stats.untagged_gone);
                return;
            }
            None => return,
        }
        let on_untagged = !self.live.contains(&(repo, subject.digest.clone()));
        let empty = Blob::new(OCI_EMPTY, Content::Text("{}".into()));
        let seed = self.unique();
        let payload = Blob::new(
            "application/spdx+json",
            Content::Random {
                seed,
                len: 200 + self.rng.below(800) as usize,
            },
        );
        for b in [&empty, &payload] {
            if !self.ensure_blob(repo, b, None).await {
                return;
            }
        }
        self.think(10).await;
        let body = serde_json::json!({
            "schemaVersion": 2,
            "mediaType": OCI_MANIFEST,
            "artifactType": "application/spdx+json",
            "config": empty.descriptor(),
            "layers": [payload.descriptor()],
            "subject": {"mediaType": subject.media_type, "digest": subject.digest, "size": subject.body.len()},
        })
        .to_string();
        let m = Man {
            repo,
            digest: digest_of(body.as_bytes()),
            media_type: OCI_MANIFEST,
            body: body.into(),
            blobs: vec![empty, payload],
            children: Vec::new(),
            subject: Some(subject.digest.clone()),
            subject_kept: true,
            revived: None,
            flow: if on_untagged {
                Flow::ReferrerOnUntagged
            } else {
                Flow::ReferrerOnTagged
            },
            op: self.op,
        };
        let tag = self.pick_tag();
        let reference = if tagged {
            tag.clone()
        } else {
            m.digest.clone()
        };
        // The server does not check that a subject exists (the spec lets a referrer come
        // first), so the referrer's 201 promises its subject only while the subject was
        // live or its HEAD's pending protection still ran when the PUT was answered.
        let mut m = m;
        if !matches!(self.put_manifest(&m, &reference).await, Put::Created) {
            return;
        }
        m.subject_kept = self.guaranteed(repo, &subject.digest, Instant::now(), &HashSet::new());
        inc(&self.sh.stats.referrers);
        if on_untagged {
            inc(&self.sh.stats.referrers_on_untagged);
        }
        let k = (repo, m.digest.clone());
        if tagged && on_untagged && m.subject_kept {
            self.revive(&[(repo, subject.digest.clone())]);
        }
        self.archive.insert(k.clone(), m.clone());
        if !on_untagged {
            // A referrer of a live subject is live while the subject is.
            self.referrers
                .entry((repo, subject.digest.clone()))
                .or_default()
                .insert(m.digest.clone());
        }
        if tagged {
            self.set_tag(repo, tag, &m.digest, m.flow.name());
        }
        if !tagged && on_untagged {
            self.add_candidate(k);
        }
        self.settle();
    }

    /// Re-tags an untagged manifest by PUTting its bytes under a tag (no `HEAD`).
    /// Without `referrers`, manifests with a subject are left out.
    async fn retag(&mut self, media: &[&str], referrers: bool) {
        let repo = self.pick_repo();
        let pool: Vec<Man> = self
            .candidates_in(repo, media)
            .into_iter()
            .filter(|m| referrers || m.subject.is_none())
            .collect();
        if pool.is_empty() {
            return self.push_image(false).await;
        }
        let m = pool[self.rng.below(pool.len() as u64) as usize].clone();
        let tag = self.pick_tag();
        if !matches!(self.put_manifest(&m, &tag).await, Put::Created) {
            return;
        }
        inc(&self.sh.stats.retags);
        self.revive(&[(repo, m.digest.clone())]);
        self.set_tag(repo, tag, &m.digest, "re-tagged from untagged");
        self.settle();
    }

    /// Flow 3 of issue 15: an OCI 1.1-rc artifact manifest without `mediaType`, known
    /// only by its `Content-Type`. `201` keeps its blobs; `400 MANIFEST_INVALID` is an
    /// acceptable refusal.
    async fn push_artifact(&mut self) {
        let repo = self.pick_repo();
        let mut blobs = Vec::new();
        for _ in 0..1 + self.rng.below(2) {
            let seed = self.unique();
            let len = 300 + self.rng.below(3000) as usize;
            blobs.push(Blob::new(
                "application/octet-stream",
                Content::Random { seed, len },
            ));
        }
        for b in blobs.clone() {
            if !self.ensure_blob(repo, &b, None).await {
                return;
            }
        }
        self.think(10).await;
        let descs: Vec<_> = blobs.iter().map(Blob::descriptor).collect();
        let body = if self.rng.chance(50) {
            serde_json::json!({"artifactType": "application/vnd.example.report.v1", "blobs": descs})
        } else {
            serde_json::json!({"schemaVersion": 2, "artifactType": "application/vnd.example.report.v1", "blobs": descs})
        }
        .to_string();
        let m = Man {
            repo,
            digest: digest_of(body.as_bytes()),
            media_type: OCI_ARTIFACT,
            body: body.into(),
            blobs,
            children: Vec::new(),
            subject: None,
            subject_kept: false,
            revived: None,
            flow: Flow::Artifact,
            op: self.op,
        };
        let tag = self.pick_tag();
        match self.put_manifest(&m, &tag).await {
            Put::Created => {
                inc(&self.sh.stats.artifacts_accepted);
                self.archive.insert((repo, m.digest.clone()), m.clone());
                self.set_tag(repo, tag, &m.digest, m.flow.name());
                self.settle();
            }
            Put::Refused => inc(&self.sh.stats.artifacts_refused),
            Put::Failed => {}
        }
    }

    /// An upload session started (and sometimes half-written), then left.
    async fn abandon_session(&mut self) {
        let repo = self.pick_repo();
        let name = self.repo(repo);
        let r = match send(
            self.http
                .post(self.url(&format!("/v2/{name}/blobs/uploads/")))
                .header("content-length", "0"),
        )
        .await
        {
            Ok(r) => r,
            Err(e) => return self.fail_req(e.seen(), format!("start a session in {name}: {e}")),
        };
        if r.status != 202 {
            return self.fail_req(
                r.seen(),
                format!("start a session in {name}: {}", r.describe()),
            );
        }
        inc(&self.sh.stats.abandoned_sessions);
        if self.rng.chance(60) {
            let loc = self.abs(r.header("location"));
            let seed = self.unique();
            let data = random_bytes(1000 + self.rng.below(4000) as usize, seed);
            let n = data.len();
            let r2 = match send(
                self.http
                    .patch(&loc)
                    .header("content-type", "application/octet-stream")
                    .header("content-range", format!("0-{}", n - 1))
                    .body(data),
            )
            .await
            {
                Ok(r) => r,
                Err(e) => {
                    return self.fail_req(e.seen(), format!("PATCH a session in {name}: {e}"));
                }
            };
            if r2.status != 202 {
                self.session_gone(&format!("PATCH a session in {name}"), &r2, r.sent);
            }
        }
    }

    async fn one_op(&mut self) {
        self.op += 1;
        inc(&self.sh.stats.ops);
        // Without flow 1 (re-use of untagged manifests) and flow 3 (artifact manifests
        // accepted by Content-Type), their slots run the nearest safe operation.
        let (reuse, artifact) = (self.sh.settings.flow1, self.sh.settings.flow3);
        let roll = self.rng.below(100);
        match roll {
            0..=21 => self.push_image(true).await,
            22..=25 => self.push_image(false).await,
            26..=32 => self.index_over_tagged().await,
            33..=40 if reuse => self.index_over_untagged().await,
            33..=40 => self.index_over_tagged().await,
            41..=48 if reuse => self.delete_then_index().await,
            41..=48 => self.delete_random_tag().await,
            49..=55 => {
                let tagged = self.rng.chance(50);
                self.push_referrer(false, tagged).await
            }
            56..=60 => {
                // A tagged referrer keeps its untagged subject (flow 1's class); by
                // digest it keeps nothing.
                let tagged = self.rng.chance(60) && reuse;
                self.push_referrer(true, tagged).await
            }
            61..=66 if reuse => self.retag(&[OCI_MANIFEST, OCI_INDEX], true).await,
            61..=66 => self.retag(&[OCI_MANIFEST], false).await,
            67..=74 => self.delete_random_tag().await,
            75..=79 => self.delete_by_digest().await,
            80..=83 => self.abandon_session().await,
            84..=88 if artifact => self.push_artifact().await,
            84..=88 => self.push_image(true).await,
            _ => self.pull_random().await,
        }
        if self.op.is_multiple_of(self.sh.settings.verify_every) {
            let base = self.base.clone();
            self.verify(&base, "periodic check").await;
        }
        if std::mem::take(&mut self.cut) {
            self.sh.until_healed().await;
        }
    }

    // --- verification ----------------------------------------------------------------

    async fn pull_random(&mut self) {
        let all: Vec<_> = self
            .tags
            .iter()
            .map(|(k, d)| (k.clone(), d.clone()))
            .collect();
        if all.is_empty() {
            return self.push_image(true).await;
        }
        let pick = all[self.rng.below(all.len() as u64) as usize].clone();
        let base = self.base.clone();
        let mut seen = HashSet::new();
        let mut broken = BTreeSet::new();
        self.verify_tag(&base, "pull", &pick.0, &pick.1, &mut seen, &mut broken)
            .await;
        self.drop_broken(broken);
    }

    /// Pulls every live tag's whole closure from `base` and hashes every byte: a tag
    /// GET compares bytes, digest and media type with what was pushed; every manifest
    /// in the closure is fetched by digest; every blob fetched and hashed; every live
    /// subject's referrers listing must name its referrers. Returns the failures seen.
    async fn verify(&mut self, base: &str, when: &str) -> usize {
        inc(&self.sh.stats.verify_passes);
        let before = self.sh.failure_count();
        let mut seen = HashSet::new();
        let mut broken = BTreeSet::new();
        let tags: Vec<_> = self
            .tags
            .iter()
            .map(|(k, d)| (k.clone(), d.clone()))
            .collect();
        for (k, d) in tags {
            self.verify_tag(base, when, &k, &d, &mut seen, &mut broken)
                .await;
        }
        self.drop_broken(broken);
        self.sh.failure_count() - before
    }

    /// A blob `GET` answered `307` (a replica on S3 redirects to a presigned URL of the
    /// object) followed, as clients do, without this client's credentials.
    async fn follow(&self, r: Result<Resp, SendError>) -> Result<Resp, SendError> {
        match r {
            Ok(r) if r.status == 307 => {
                let url = r.header("location").to_owned();
                send(self.direct.get(url)).await
            }
            other => other,
        }
    }

    /// Stops expecting tags whose closure lost something (already reported), so one
    /// loss is reported once.
    fn drop_broken(&mut self, broken: BTreeSet<(usize, String)>) {
        if broken.is_empty() {
            return;
        }
        for k in broken {
            self.tags.remove(&k);
            self.tag_how.remove(&k);
        }
        self.settle();
    }

    async fn verify_tag(
        &mut self,
        base: &str,
        when: &str,
        key: &(usize, String),
        digest: &str,
        seen: &mut HashSet<String>,
        broken: &mut BTreeSet<(usize, String)>,
    ) {
        let (repo, tag) = key;
        let name = self.repo(*repo);
        let Some(top) = self.archive.get(&(*repo, digest.to_owned())).cloned() else {
            self.fail(format!(
                "{when}: {name}:{tag} → {digest}: not in the model (test bug)"
            ));
            return;
        };
        let how = self.tag_how.get(key).cloned().unwrap_or_default();
        let trail = format!("{name}:{tag} ({how}) → {}", top.label());
        let mut problems = Vec::new();
        match send(
            self.http
                .get(format!("{base}/v2/{name}/manifests/{tag}"))
                .header("accept", "*/*"),
        )
        .await
        {
            Err(e) => self.problem(&mut problems, e.seen(), || {
                format!("{trail}: GET by tag: {e}")
            }),
            Ok(r) if r.status != 200 => self.problem(&mut problems, r.seen(), || {
                format!("{trail}: GET by tag: {}", r.describe())
            }),
            Ok(r) => {
                inc(&self.sh.stats.items_verified);
                if r.body.as_ref() != top.body.as_bytes() {
                    problems.push(format!(
                        "{trail}: GET by tag: other bytes (digest {})",
                        digest_of(&r.body)
                    ));
                }
                if r.header("docker-content-digest") != digest {
                    problems.push(format!(
                        "{trail}: GET by tag: Docker-Content-Digest {:?}",
                        r.header("docker-content-digest")
                    ));
                }
                let ct = r.header("content-type");
                if ct != top.media_type {
                    problems.push(format!(
                        "{trail}: GET by tag: Content-Type {ct:?}, pushed as {}",
                        top.media_type
                    ));
                }
            }
        }
        let mut stack = vec![(top.clone(), trail.clone())];
        while let Some((m, path)) = stack.pop() {
            if !seen.insert(format!("m {repo} {}", m.digest)) {
                continue;
            }
            match send(
                self.http
                    .get(format!("{base}/v2/{name}/manifests/{}", m.digest))
                    .header("accept", "*/*"),
            )
            .await
            {
                Err(e) => self.problem(&mut problems, e.seen(), || {
                    format!("{path}: GET by digest: {e}")
                }),
                Ok(r) if r.status != 200 => self.problem(&mut problems, r.seen(), || {
                    format!("{path}: GET by digest: {}", r.describe())
                }),
                Ok(r) => {
                    inc(&self.sh.stats.items_verified);
                    if digest_of(&r.body) != m.digest {
                        problems.push(format!(
                            "{path}: GET by digest: bytes hash to {}",
                            digest_of(&r.body)
                        ));
                    }
                }
            }
            for b in &m.blobs {
                if !seen.insert(format!("b {repo} {}", b.digest)) {
                    continue;
                }
                let what = if m.media_type == OCI_MANIFEST && b.digest == m.blobs[0].digest {
                    "config"
                } else {
                    "blob"
                };
                let r = send(
                    self.http
                        .get(format!("{base}/v2/{name}/blobs/{}", b.digest)),
                )
                .await;
                match self.follow(r).await {
                    Err(e) => self.problem(&mut problems, e.seen(), || {
                        format!("{path} → {what} {}: {e}", b.digest)
                    }),
                    Ok(r) if r.status != 200 => self.problem(&mut problems, r.seen(), || {
                        format!("{path} → {what} {}: {}", b.digest, r.describe())
                    }),
                    Ok(r) => {
                        inc(&self.sh.stats.items_verified);
                        if digest_of(&r.body) != b.digest {
                            problems.push(format!(
                                "{path} → {what} {}: bytes hash to {}",
                                b.digest,
                                digest_of(&r.body)
                            ));
                        }
                    }
                }
            }
            let mut next: Vec<(String, &str)> =
                m.children.iter().map(|c| (c.clone(), "child")).collect();
            if m.subject_kept {
                next.extend(m.subject.iter().map(|s| (s.clone(), "subject")));
            }
            let refs: Vec<String> = self
                .referrers
                .get(&(*repo, m.digest.clone()))
                .map(|s| s.iter().cloned().collect())
                .unwrap_or_default();
            if !refs.is_empty() {
                match send(
                    self.http
                        .get(format!("{base}/v2/{name}/referrers/{}", m.digest)),
                )
                .await
                {
                    Err(e) => self.problem(&mut problems, e.seen(), || {
                        format!("{path}: referrers listing: {e}")
                    }),
                    Ok(r) if r.status != 200 => self.problem(&mut problems, r.seen(), || {
                        format!("{path}: referrers listing: {}", r.describe())
                    }),
                    Ok(r) => {
                        let v: serde_json::Value =
                            serde_json::from_slice(&r.body).unwrap_or_default();
                        let listed: HashSet<&str> = v["manifests"]
                            .as_array()
                            .map(|a| a.iter().filter_map(|x| x["digest"].as_str()).collect())
                            .unwrap_or_default();
                        for rd in &refs {
                            if !listed.contains(rd.as_str()) {
                                problems
                                    .push(format!("{path}: referrers listing lacks referrer {rd}"));
                            }
                        }
                    }
                }
                next.extend(refs.into_iter().map(|r| (r, "referrer")));
            }
            for (d, rel) in next {
                match self.archive.get(&(*repo, d.clone())) {
                    Some(c) => stack.push((c.clone(), format!("{path} → {rel} {}", c.label()))),
                    None => {
                        problems.push(format!("{path} → {rel} {d}: not in the model (test bug)"))
                    }
                }
            }
        }
        if problems.is_empty() {
            return;
        }
        broken.insert(key.clone());
        for p in problems {
            if self.reported.insert(format!("{name} {p}")) {
                self.fail(format!("{when}: {p}"));
            }
        }
    }
}

// ---------------------------------------------------------------------------------------
// Removers

/// Runs `body` back to back until `stop`.
fn back_to_back<F, Fut>(stop: Arc<AtomicBool>, mut body: F) -> tokio::task::JoinHandle<()>
where
    F: FnMut() -> Fut + Send + 'static,
    Fut: std::future::Future<Output = ()> + Send,
{
    tokio::spawn(async move {
        while !stop.load(Ordering::Relaxed) {
            body().await;
        }
    })
}

fn gc_options(remove_untagged: bool) -> gc::Options {
    gc::Options {
        dry_run: false,
        remove_untagged,
        grace: Duration::ZERO,
        ..gc::Options::default()
    }
}

fn start_removers(
    s: &TestServer,
    sh: &Arc<Shared>,
    stop: &Arc<AtomicBool>,
) -> Vec<tokio::task::JoinHandle<()>> {
    let mut out = Vec::new();
    let remove_untagged = matches!(sh.variant, Variant::GcUntagged | Variant::Scrub);
    {
        let (cleaner, sh) = (s.cleaner.clone(), sh.clone());
        out.push(back_to_back(stop.clone(), move || {
            let (cleaner, sh) = (cleaner.clone(), sh.clone());
            async move {
                match cleaner.run_now(&gc_options(remove_untagged)).await {
                    Ok(r) => {
                        inc(&sh.stats.gc_cycles);
                        sh.stats.gc_removed.fetch_add(
                            (r.blobs_removed + r.manifests_removed + r.layer_links_removed) as u64,
                            Ordering::Relaxed,
                        );
                    }
                    Err(e) => sh.fail(None, format!("a collection cycle failed: {e}")),
                }
            }
        }));
    }
    let tasks: &[Task] = match sh.variant {
        Variant::GcUntagged | Variant::GcTagged | Variant::Replicas => &[],
        Variant::Retention => &[Task::Retention, Task::Uploads],
        Variant::Scrub => &[Task::Scrub],
    };
    for &task in tasks {
        let (queue, sh) = (s.maintenance.clone(), sh.clone());
        out.push(back_to_back(stop.clone(), move || {
            let (queue, sh) = (queue.clone(), sh.clone());
            async move {
                let Some(rec) = queue.run(vec![task], "soak").await.pop() else {
                    return;
                };
                match rec.outcome {
                    Outcome::Ok => {}
                    Outcome::Skipped => return,
                    Outcome::Failed
                        if task == Task::Scrub
                            && !sh.settings.scrub_runs_must_succeed
                            && rec.message.contains("path not found") =>
                    {
                        // Known: a scrub run fails when a cycle removes a link it listed.
                        inc(&sh.stats.scrub_runs_failed);
                        return;
                    }
                    _ => {
                        sh.fail(
                            None,
                            format!(
                                "maintenance {} ended {:?}: {}",
                                task.name(),
                                rec.outcome,
                                rec.message
                            ),
                        );
                        return;
                    }
                }
                match task {
                    Task::Retention => {
                        inc(&sh.stats.retention_runs);
                        let n = rec.summary["manifests_removed"]
                            .as_array()
                            .map_or(0, Vec::len);
                        sh.stats
                            .retention_removed
                            .fetch_add(n as u64, Ordering::Relaxed);
                    }
                    Task::Uploads => {
                        inc(&sh.stats.purge_runs);
                        let n = rec.summary["removed"].as_array().map_or(0, Vec::len);
                        sh.stats
                            .sessions_purged_by_task
                            .fetch_add(n as u64, Ordering::Relaxed);
                    }
                    Task::Scrub => {
                        inc(&sh.stats.scrub_runs);
                        if let Some(c) = rec.summary["corrupt"].as_array()
                            && !c.is_empty()
                        {
                            sh.fail(
                                None,
                                format!(
                                    "scrub found blobs corrupt that no client corrupted: {c:?}"
                                ),
                            );
                        }
                    }
                    Task::Gc => {}
                }
            }
        }));
    }
    out
}

// ---------------------------------------------------------------------------------------
// A run

fn shared(variant: Variant, settings: &Settings) -> Arc<Shared> {
    Arc::new(Shared {
        variant,
        settings: settings.clone(),
        stats: Stats::default(),
        failures: Mutex::new(Vec::new()),
        mountable: Mutex::new(VecDeque::new()),
        started: Instant::now(),
        faults: Mutex::new(Vec::new()),
        faults_to_go: AtomicU64::new(if variant == Variant::Replicas {
            settings.faults
        } else {
            0
        }),
        fault_open: tokio::sync::watch::Sender::new(false),
    })
}

/// The clients, on `base`: each runs its operations, and on while the collectors have
/// not run `SOAK_CYCLES` cycles or faults are still to come.
fn spawn_clients(base: &str, sh: &Arc<Shared>) -> Vec<tokio::task::JoinHandle<Client>> {
    (0..sh.settings.clients)
        .map(|id| {
            let mut c = Client::new(id, base.to_owned(), sh.clone());
            tokio::spawn(async move {
                while (c.op < c.sh.settings.ops
                    || get(&c.sh.stats.gc_cycles) < c.sh.settings.cycles
                    || get(&c.sh.faults_to_go) > 0)
                    && !c.sh.gave_up()
                {
                    c.one_op().await;
                }
                c
            })
        })
        .collect()
}

async fn join_clients(clients: Vec<tokio::task::JoinHandle<Client>>) -> Vec<Client> {
    let mut done = Vec::new();
    for c in clients {
        done.push(c.await.expect("a client panicked"));
    }
    done
}

fn configure(c: &mut registry::Config, variant: Variant, settings: &Settings) {
    c.gc.on_startup = false;
    c.gc.pending_ttl = settings.pending_ttl;
    c.maintenance.enabled = false;
    if variant == Variant::Retention {
        c.retention.images = vec![ImagePolicy {
            repositories: "soak/.*".into(),
            keep_last: None,
            keep_tags: None,
            untagged_older_than: Some(std::time::Duration::ZERO),
        }];
        c.uploads.max_age = settings.upload_max_age;
    }
}

async fn soak(variant: Variant) {
    let settings = Settings::from_env(variant);
    if variant == Variant::Retention && !settings.flow2 {
        eprintln!(
            "soak {}: left out until issue 15 is fixed (retention removes manifests tagged while it runs); SOAK_EXPECT_FIXED=1 runs it",
            variant.name()
        );
        return;
    }
    eprintln!(
        "soak {}: {}, issue 15 flows in the mix: 1 {}, 2 {}, 3 {}",
        variant.name(),
        settings.describe(),
        settings.flow1,
        settings.flow2,
        settings.flow3,
    );
    let s = TestServer::start_with(|c| configure(c, variant, &settings)).await;
    let sh = shared(variant, &settings);
    let stop = Arc::new(AtomicBool::new(false));
    let removers = start_removers(&s, &sh, &stop);
    let clients = spawn_clients(&s.base, &sh);
    let mut done = join_clients(clients).await;
    stop.store(true, Ordering::Relaxed);
    for r in removers {
        r.await.expect("a remover panicked");
    }
    let run_secs = sh.started.elapsed().as_secs_f64();

    // Settled: one more cycle of the variant, then every closure.
    let remove_untagged = matches!(variant, Variant::GcUntagged | Variant::Scrub);
    if let Err(e) = s.cleaner.run_now(&gc_options(remove_untagged)).await {
        sh.fail(None, format!("the final cycle failed: {e}"));
    }
    for c in &mut done {
        let base = c.base.clone();
        c.verify(&base, "final check").await;
    }
    // A restart drops every in-memory protection (pins, pending): a cycle with
    // untagged removal must keep exactly the tags' closures.
    let config = s.config.clone();
    let root = s.stop().await;
    let s = TestServer::start_on(root, config).await;
    if variant == Variant::Retention {
        let rec = s.maintenance.run(vec![Task::Retention], "soak").await;
        if let Some(r) = rec.first()
            && r.outcome != Outcome::Ok
        {
            sh.fail(
                None,
                format!(
                    "retention after the restart ended {:?}: {}",
                    r.outcome, r.message
                ),
            );
        }
    }
    match s.cleaner.run_now(&gc_options(true)).await {
        Ok(r) => sh.stats.gc_removed.fetch_add(
            (r.blobs_removed + r.manifests_removed + r.layer_links_removed) as u64,
            Ordering::Relaxed,
        ),
        Err(e) => {
            sh.fail(None, format!("the cycle after the restart failed: {e}"));
            0
        }
    };
    let mut live_tags = 0;
    for c in &mut done {
        c.verify(&s.base, "after a restart and a cycle with remove_untagged")
            .await;
        live_tags += c.tags.len();
    }

    report(&sh, run_secs, live_tags);
}

// ---------------------------------------------------------------------------------------
// Replicas (issue 19)

/// A fault of the replica run, chosen from the seed before the run.
#[derive(Clone, Copy, Debug)]
enum Fault {
    /// kill -9 of this replica, while it runs a cycle, then a restart on its port.
    Replica(usize),
    /// kill -9 of PostgreSQL's postmaster while a cycle runs, then a restart on the same
    /// data and port.
    Postgres,
}

/// Replica and PostgreSQL kills alternating, the replica picked by the seed.
fn fault_plan(settings: &Settings, replicas: usize) -> Vec<Fault> {
    let mut rng = Rng::new(settings.seed ^ 0xFA17_FA17);
    (0..settings.faults)
        .map(|i| {
            if i % 2 == 0 {
                Fault::Replica(rng.below(replicas as u64) as usize)
            } else {
                Fault::Postgres
            }
        })
        .collect()
}

/// A replica's configuration: the bucket root, the database, its own fixed port (a
/// restart comes back where nginx expects it), collections at grace 0 with untagged
/// removal, and htpasswd with the test policy: `root` is an admin (the admin API over
/// TCP, the only way into a replica on S3), `alice` pushes and deletes.
fn replica_yaml(
    root: &str,
    db: &registry::coordination::DatabaseConfig,
    port: u16,
    htpasswd: &std::path::Path,
    settings: &Settings,
) -> String {
    let policy: String = auth::POLICY.lines().map(|l| format!("  {l}\n")).collect();
    format!(
        "{}gc:\n  on_startup: false\n  grace: 0s\n  remove_untagged: true\n  pending_ttl: {}ms\n\
         auth:\n  htpasswd:\n    realm: drydock-soak\n    path: {}\naccess:\n{policy}",
        s3::replica_yaml(root, db).replace("addr: 127.0.0.1:0", &format!("addr: 127.0.0.1:{port}")),
        settings.pending_ttl.as_millis(),
        htpasswd.display(),
    )
}

/// The replicas, their configurations and addresses.
struct Fleet {
    configs: Vec<std::path::PathBuf>,
    replicas: Vec<ServerProcess>,
    bases: Vec<String>,
}

impl Fleet {
    /// Starts replica `i` (it must listen on its port and have registered with the
    /// database: a restart after PostgreSQL came back must not fail).
    fn spawn(&self, i: usize) -> ServerProcess {
        let p = tokio::task::block_in_place(|| ServerProcess::spawn(&self.configs[i]));
        assert!(
            p.log_text().contains("registered with the database"),
            "replica {i} did not register with the database:\n{}",
            p.log_text()
        );
        p
    }

    /// kill -9 of replica `i`, then it starts again on its port.
    fn kill_and_restart(&mut self, i: usize, sh: &Shared) {
        tokio::task::block_in_place(|| self.replicas[i].kill());
        self.replicas[i] = self.spawn(i);
        inc(&sh.stats.replica_restarts);
    }

    /// A clean restart of every replica, one after the other (SIGTERM, as systemd does).
    fn restart_all(&mut self, sh: &Shared) {
        for i in 0..self.replicas.len() {
            tokio::task::block_in_place(|| self.replicas[i].terminate());
            self.replicas[i] = self.spawn(i);
            inc(&sh.stats.replica_restarts);
        }
    }
}

/// `POST /admin/gc?wait=true` at grace 0 with untagged removal on the replica at
/// `base`: the report, or what was seen and the error.
async fn admin_cycle(
    admin: &reqwest::Client,
    base: &str,
) -> Result<serde_json::Value, (Seen, String)> {
    let r = send(admin.post(format!(
        "{base}/admin/gc?wait=true&grace=0s&remove_untagged=true"
    )))
    .await
    .map_err(|e| (e.seen(), e.to_string()))?;
    if r.status != 200 {
        let body = String::from_utf8_lossy(&r.body).into_owned();
        return Err((r.seen(), format!("{}: {body}", r.status)));
    }
    serde_json::from_slice(&r.body).map_err(|e| (r.seen(), format!("the report: {e}")))
}

/// Whether the replica at `base` is running a cycle now (`GET /admin/gc`).
async fn running(admin: &reqwest::Client, base: &str) -> bool {
    match send(admin.get(format!("{base}/admin/gc"))).await {
        Ok(r) if r.status == 200 => serde_json::from_slice::<serde_json::Value>(&r.body)
            .is_ok_and(|v| v["running"] == serde_json::Value::Bool(true)),
        _ => false,
    }
}

/// Waits (a bounded number of looks) until one of `bases` runs a cycle; whether one did.
async fn until_running(admin: &reqwest::Client, bases: &[String]) -> bool {
    for _ in 0..500 {
        for b in bases {
            if running(admin, b).await {
                return true;
            }
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    false
}

/// The collector of the replica run: cycles back to back, each asked of the next
/// replica in turn through its admin API. A cycle a fault cut is counted; any other
/// error is a failure. Every cycle done is published on `done`.
fn start_replica_remover(
    bases: Vec<String>,
    admin: reqwest::Client,
    sh: &Arc<Shared>,
    stop: &Arc<AtomicBool>,
    done: tokio::sync::watch::Sender<u64>,
) -> tokio::task::JoinHandle<()> {
    let sh = sh.clone();
    let next = Arc::new(AtomicU64::new(0));
    back_to_back(stop.clone(), move || {
        let (bases, admin, sh, next, done) = (
            bases.clone(),
            admin.clone(),
            sh.clone(),
            next.clone(),
            done.clone(),
        );
        async move {
            let i = next.fetch_add(1, Ordering::Relaxed) as usize % bases.len();
            match admin_cycle(&admin, &bases[i]).await {
                Ok(r) => {
                    inc(&sh.stats.gc_cycles);
                    let removed = ["blobs_removed", "manifests_removed", "layer_links_removed"]
                        .iter()
                        .map(|k| r[*k].as_u64().unwrap_or(0))
                        .sum::<u64>();
                    sh.stats.gc_removed.fetch_add(removed, Ordering::Relaxed);
                    done.send_replace(get(&sh.stats.gc_cycles));
                }
                Err((seen, e)) => {
                    // A refused connection or a 5xx while a fault lasted.
                    if sh.excuse(&seen) {
                        inc(&sh.stats.cycles_cut);
                        sh.until_healed().await;
                    } else {
                        sh.fail(None, format!("a cycle on replica {i} failed: {e}"));
                        done.send_replace(get(&sh.stats.gc_cycles));
                        // Not back to back on an error that repeats.
                        tokio::time::sleep(Duration::from_millis(200)).await;
                    }
                }
            }
        }
    })
}

/// Waits until nginx at `base` routes again after a fault: a replica that refused a
/// connection is out of its rotation for `fail_timeout` (10 s), and when every replica
/// was (the restarts after PostgreSQL's), nginx answers `502` until one is back in.
async fn until_routed(base: &str) {
    let c = reqwest::Client::new();
    for _ in 0..600 {
        if let Ok(r) = c.get(format!("{base}/v2/")).send().await
            && r.status() != 502
        {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("nginx at {base} still answers 502 after 30 s");
}

/// Injects the planned faults, one every `fault_every` cycles, while clients and the
/// collector run; hands the fleet back at the end.
async fn inject_faults(
    base: String,
    mut fleet: Fleet,
    cluster: conformance::pg::Cluster,
    plan: Vec<Fault>,
    admin: reqwest::Client,
    sh: Arc<Shared>,
    mut cycles: tokio::sync::watch::Receiver<u64>,
) -> (Fleet, conformance::pg::Cluster) {
    let every = sh.settings.fault_every;
    for (n, fault) in plan.into_iter().enumerate() {
        let at = (n as u64 + 1) * every;
        if cycles.wait_for(|c| *c >= at || sh.gave_up()).await.is_err() || sh.gave_up() {
            break;
        }
        let st = &sh.stats;
        let (mid, counters, what) = match fault {
            Fault::Replica(v) => {
                // Ask the victim for a cycle (it waits for the lease) and kill it once
                // it runs one.
                let _ = send(admin.post(format!("{}/admin/gc", fleet.bases[v]))).await;
                let mid = until_running(&admin, &fleet.bases[v..=v]).await;
                sh.fault_begins();
                fleet.kill_and_restart(v, &sh);
                let what = format!("replica {v} killed and restarted");
                (mid, (&st.replica_kills, &st.replica_kills_mid_cycle), what)
            }
            Fault::Postgres => {
                let mid = until_running(&admin, &fleet.bases).await;
                sh.fault_begins();
                tokio::task::block_in_place(|| {
                    cluster.kill();
                    cluster.restart();
                });
                let mut what = "PostgreSQL killed and restarted".to_owned();
                if sh.settings.restart_replicas_after_pg {
                    fleet.restart_all(&sh);
                    what.push_str(", then every replica");
                }
                (mid, (&st.pg_kills, &st.pg_kills_mid_cycle), what)
            }
        };
        until_routed(&base).await;
        sh.fault_ends();
        inc(counters.0);
        if mid {
            inc(counters.1);
        }
        eprintln!("soak replicas: fault {n}: {what} (mid-cycle: {mid})");
        sh.faults_to_go.fetch_sub(1, Ordering::Relaxed);
    }
    (fleet, cluster)
}

/// The replica soak (issue 19): three real-binary replicas on one RGW bucket root and a
/// PostgreSQL cluster of the test's own, behind nginx with docs/storage.md's example;
/// the model's clients push through nginx only, one collector asks each replica in turn
/// for a cycle at grace 0 with untagged removal, and a replica or PostgreSQL is killed
/// (kill -9) and restarted every `SOAK_FAULT_EVERY` cycles (`SOAK_FAULTS` times, the
/// replica chosen by the seed). An answer a fault cut acknowledges nothing (a tag's
/// write is sent again); any other refusal or loss is a failure. At the end: one more
/// cycle, every closure pulled through nginx, every replica restarted, a cycle, every
/// closure pulled again.
async fn soak_replicas() {
    clients::require("nginx");
    let settings = Settings::from_env(Variant::Replicas);
    let plan = fault_plan(&settings, 3);
    eprintln!(
        "soak replicas: {} and the faults, faults every {} cycles: {plan:?}, replicas restarted after PostgreSQL: {}",
        settings.describe(),
        settings.fault_every,
        settings.restart_replicas_after_pg,
    );
    let cluster = tokio::task::block_in_place(conformance::pg::Cluster::start);
    let db = cluster
        .fresh_db(&format!("soak_{}", std::process::id()))
        .await;
    let root = s3::fresh_root("soak-replicas");
    let dir = clients::tempdir();
    let htpasswd = dir.path().join("htpasswd");
    auth::write_htpasswd(&htpasswd, &[auth::ADMIN, auth::ALICE]);
    let ports: Vec<u16> = (0..3).map(|_| clients::free_port()).collect();
    let configs: Vec<std::path::PathBuf> = ports
        .iter()
        .map(|&port| {
            let path = dir.path().join(format!("replica-{port}.yml"));
            std::fs::write(&path, replica_yaml(&root, &db, port, &htpasswd, &settings))
                .expect("write a replica's configuration");
            path
        })
        .collect();
    let mut fleet = Fleet {
        configs,
        replicas: Vec::new(),
        bases: ports
            .iter()
            .map(|p| format!("http://127.0.0.1:{p}"))
            .collect(),
    };
    for i in 0..3 {
        let p = fleet.spawn(i);
        fleet.replicas.push(p);
    }
    let lb_port = clients::free_port();
    let addrs: Vec<std::net::SocketAddr> = fleet.replicas.iter().map(|r| r.addr).collect();
    let mut lb = clients::balancer(dir.path(), lb_port, &addrs);
    let base = format!("http://127.0.0.1:{lb_port}");
    clients::wait_answers(&reqwest::Client::new(), &format!("{base}/v2/"), &lb).await;
    let admin = client_with(Some(auth::basic(auth::ADMIN)));

    let sh = shared(Variant::Replicas, &settings);
    let stop = Arc::new(AtomicBool::new(false));
    let (cycles_tx, cycles_rx) = tokio::sync::watch::channel(0);
    let remover = start_replica_remover(fleet.bases.clone(), admin.clone(), &sh, &stop, cycles_tx);
    let faults = tokio::spawn(inject_faults(
        base.clone(),
        fleet,
        cluster,
        plan,
        admin.clone(),
        sh.clone(),
        cycles_rx,
    ));
    let clients = spawn_clients(&base, &sh);
    let mut done = join_clients(clients).await;
    let (mut fleet, cluster) = faults.await.expect("the fault injector panicked");
    stop.store(true, Ordering::Relaxed);
    remover.await.expect("the collector panicked");
    let run_secs = sh.started.elapsed().as_secs_f64();

    // Settled: one more cycle, then every closure through nginx.
    if let Err((_, e)) = admin_cycle(&admin, &fleet.bases[0]).await {
        sh.fail(None, format!("the final cycle failed: {e}"));
    }
    for c in &mut done {
        c.verify(&base, "final check").await;
    }
    // Every replica restarted (nothing in memory, every replica registered anew), a
    // cycle on another one, every closure again.
    fleet.restart_all(&sh);
    until_routed(&base).await;
    if let Err((_, e)) = admin_cycle(&admin, &fleet.bases[1]).await {
        sh.fail(None, format!("the cycle after the restarts failed: {e}"));
    }
    let mut live_tags = 0;
    for c in &mut done {
        c.verify(&base, "after every replica restarted and a cycle")
            .await;
        live_tags += c.tags.len();
    }
    lb.stop();
    drop(fleet);
    drop(cluster);
    s3::remove_root(&root).await;
    report(&sh, run_secs, live_tags);
}

/// Prints the figures (`SOAK-FIGURES`) and each class of failure (`SOAK-CAUGHT`), then
/// fails the test on any failure or when the run was too small to mean anything.
fn report(sh: &Shared, run_secs: f64, live_tags: usize) {
    let (variant, settings) = (sh.variant, &sh.settings);
    let st = &sh.stats;
    let failures = sh.failure_count();
    let figures = format!(
        "variant={} seed={} clients={} secs={:.1} gc_cycles={} removed={} retention_runs={} retention_removed={} purge_runs={} sessions_purged_by_task={} scrub_runs={} scrub_runs_failed={} ops={} manifests={} images={} by_digest={} tag_moves={} blobs_uploaded={} chunked={} skipped_by_head={} mounts={} mount_fallbacks={} indexes={} indexes_over_untagged={} delete_then_index={} referrers={} referrers_on_untagged={} retags={} deletes_by_tag={} deletes_by_digest={} abandoned_sessions={} sessions_purged={} artifacts_accepted={} artifacts_refused={} untagged_gone={} refusals_after_expiry={} verify_passes={} items_verified={} live_tags_at_end={} replica_kills={} replica_kills_mid_cycle={} pg_kills={} pg_kills_mid_cycle={} replica_restarts={} cut_transport={} cut_502={} cut_503={} cut_500={} cut_5xx_other={} checks_cut={} cycles_cut={} failures={}",
        variant.name(),
        settings.seed,
        settings.clients,
        run_secs,
        get(&st.gc_cycles),
        get(&st.gc_removed),
        get(&st.retention_runs),
        get(&st.retention_removed),
        get(&st.purge_runs),
        get(&st.sessions_purged_by_task),
        get(&st.scrub_runs),
        get(&st.scrub_runs_failed),
        get(&st.ops),
        get(&st.manifests_acked),
        get(&st.images),
        get(&st.pushed_by_digest),
        get(&st.tag_moves),
        get(&st.blobs_uploaded),
        get(&st.blobs_chunked),
        get(&st.blobs_skipped),
        get(&st.mounts),
        get(&st.mount_fallbacks),
        get(&st.indexes),
        get(&st.indexes_over_untagged),
        get(&st.delete_then_index),
        get(&st.referrers),
        get(&st.referrers_on_untagged),
        get(&st.retags),
        get(&st.deletes_by_tag),
        get(&st.deletes_by_digest),
        get(&st.abandoned_sessions),
        get(&st.sessions_purged),
        get(&st.artifacts_accepted),
        get(&st.artifacts_refused),
        get(&st.untagged_gone),
        get(&st.refusals_after_expiry),
        get(&st.verify_passes),
        get(&st.items_verified),
        live_tags,
        get(&st.replica_kills),
        get(&st.replica_kills_mid_cycle),
        get(&st.pg_kills),
        get(&st.pg_kills_mid_cycle),
        get(&st.replica_restarts),
        get(&st.cut_transport),
        get(&st.cut_502),
        get(&st.cut_503),
        get(&st.cut_500),
        get(&st.cut_5xx_other),
        get(&st.checks_cut),
        get(&st.cycles_cut),
        failures,
    );
    eprintln!("SOAK-FIGURES {figures}");
    if failures > 0 {
        let fs = sh.failures.lock().unwrap_or_else(|p| p.into_inner());
        let mut classes: BTreeMap<&str, (usize, &Failure)> = BTreeMap::new();
        for f in fs.iter() {
            classes.entry(f.class).or_insert((0, f)).0 += 1;
        }
        for (class, (n, first)) in &classes {
            eprintln!(
                "SOAK-CAUGHT variant={} seed={} class={class:?} failures={n} first_at_secs={:.1} first_after_cycles={}",
                variant.name(),
                settings.seed,
                first.at.as_secs_f64(),
                first.gc_cycles
            );
        }
        let first = &fs[0];
        panic!(
            "soak {} (SOAK_SEED={}): {failures} failures; the first, at {:.1} s after {} cycles: {}",
            variant.name(),
            settings.seed,
            first.at.as_secs_f64(),
            first.gc_cycles,
            first.message
        );
    }
    assert!(
        get(&st.gc_cycles) >= 5,
        "too few collection cycles to mean anything"
    );
    assert!(
        get(&st.manifests_acked) >= settings.clients * settings.ops / 4,
        "too few pushes acknowledged"
    );
    assert!(get(&st.items_verified) > 0, "nothing was verified");
    assert!(live_tags > 0, "no tag left to check at the end");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn soak_gc_with_untagged_removal() {
    soak(Variant::GcUntagged).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn soak_gc_keeping_untagged() {
    soak(Variant::GcTagged).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn soak_retention_and_upload_purge() {
    soak(Variant::Retention).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn soak_scrub() {
    soak(Variant::Scrub).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn soak_replicas_with_kills() {
    soak_replicas().await;
}
