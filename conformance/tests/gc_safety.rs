//! Data safety while removers run: every write a client was told succeeded keeps what
//! it made reachable, whatever order a writer and a remover (online GC with and without
//! `remove_untagged`, retention's untagged policy) take their steps in. The orders are
//! chosen, not hoped for: `registry::hooks` pauses a remover after its mark or while it
//! holds a claim, or a writer between its checks and its link, and the test runs the
//! other side in between.
//!
//! Each scenario starts from garbage a remover would take: an image M whose tag was
//! deleted (config C, layer L), a blob B linked without any manifest, and a blob S linked
//! in another repository. The server is restarted after setting it up, so nothing is
//! pending from the setup's own pushes (as if they were pushed long ago).

mod common;

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use common::*;
use conformance::{TestServer, client, digest_of, push_blob, random_bytes};
use gc::Options;
use gc::maintenance::Task;
use registry::config::{Config, ImagePolicy};
use registry::coordination::DatabaseConfig;
use registry::hooks::Point;
use registry::liveness::Liveness;

const REPO: &str = "safe/app";
const OTHER: &str = "safe/src";
const THIRD: &str = "safe/dedup";

#[derive(Clone)]
struct Blob {
    digest: String,
    bytes: Vec<u8>,
}

impl Blob {
    fn new(bytes: Vec<u8>) -> Blob {
        Blob {
            digest: digest_of(&bytes),
            bytes,
        }
    }
}

/// The garbage every scenario starts from.
#[derive(Clone)]
struct Garbage {
    m: Blob,
    c: Blob,
    l: Blob,
    b: Blob,
    s: Blob,
}

fn quiet(c: &mut Config) {
    c.maintenance.enabled = false;
    c.gc.on_startup = false;
    c.retention.images = vec![ImagePolicy {
        repositories: String::new(),
        keep_last: None,
        keep_tags: None,
        untagged_older_than: Some(std::time::Duration::ZERO),
    }];
}

async fn put(
    c: &reqwest::Client,
    s: &TestServer,
    repo: &str,
    reference: &str,
    media_type: &str,
    body: &[u8],
) -> u16 {
    c.put(s.url(&format!("/v2/{repo}/manifests/{reference}")))
        .header("content-type", media_type)
        .body(body.to_vec())
        .send()
        .await
        .expect("put manifest")
        .status()
        .as_u16()
}

/// Pushes the garbage, then restarts the server on the same root.
/// Where the server under test keeps the liveness protocol.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Coordination {
    InProcess,
    /// A replica on a fresh PostgreSQL database (`conformance::pg`).
    Postgres,
    /// Two replicas on one root and one database: the writes go through one, the
    /// removers run on the other.
    TwoReplicas,
}

async fn setup(seed: u64) -> (TestServer, Garbage) {
    let (s, _, g, _) = setup_on(seed, Coordination::InProcess).await;
    (s, g)
}

/// The server the writes go through, the other replica the removers run on (if any),
/// the garbage, and the database (if any).
async fn setup_on(
    seed: u64,
    coordination: Coordination,
) -> (
    TestServer,
    Option<TestServer>,
    Garbage,
    Option<DatabaseConfig>,
) {
    let s = TestServer::start_with(quiet).await;
    let c = client();
    let cfg =
        Blob::new(format!(r#"{{"architecture":"amd64","os":"linux","seed":{seed}}}"#).into_bytes());
    let layer = Blob::new(random_bytes(2048, seed));
    push_blob(&c, &s, REPO, &cfg.bytes).await;
    push_blob(&c, &s, REPO, &layer.bytes).await;
    let m = Blob::new(
        conformance::image_manifest(
            (&cfg.digest, cfg.bytes.len()),
            &[(&layer.digest, layer.bytes.len())],
            "",
        )
        .into_bytes(),
    );
    assert_eq!(put(&c, &s, REPO, "v1", OCI_MANIFEST, &m.bytes).await, 201);
    let r = c
        .delete(s.url(&format!("/v2/{REPO}/manifests/v1")))
        .send()
        .await
        .expect("delete tag");
    assert_eq!(r.status(), 202);
    let b = Blob::new(random_bytes(1500, seed + 1));
    push_blob(&c, &s, REPO, &b.bytes).await;
    let sb = Blob::new(random_bytes(1700, seed + 2));
    push_blob(&c, &s, OTHER, &sb.bytes).await;
    let config = s.config.clone();
    let root = s.stop().await;
    let (db, mut replicas): (Option<DatabaseConfig>, Vec<Arc<dyn Liveness>>) = match coordination {
        Coordination::InProcess => (None, Vec::new()),
        Coordination::Postgres | Coordination::TwoReplicas => {
            let n = if coordination == Coordination::Postgres {
                1
            } else {
                2
            };
            let (cfg, l) = conformance::pg::livenesses(n, config.gc.pending_ttl).await;
            (Some(cfg), l)
        }
    };
    let other = (replicas.len() == 2).then(|| replicas.remove(1));
    let s = TestServer::start_coordinated(root, config, replicas.pop()).await;
    let other = match other {
        Some(l) => Some(s.start_replica(l).await),
        None => None,
    };
    (
        s,
        other,
        Garbage {
            m,
            c: cfg,
            l: layer,
            b,
            s: sb,
        },
        db,
    )
}

#[derive(Debug, Clone, Copy)]
enum Remover {
    /// Online GC with `remove_untagged`, grace 0.
    GcUntagged,
    /// Online GC keeping untagged manifests, grace 0: layer links and blobs only.
    GcLinksAndBlobs,
    /// The retention task's untagged policy (`untagged_older_than: 0s`).
    Retention,
}

impl Remover {
    const ALL: [Remover; 3] = [
        Remover::GcUntagged,
        Remover::GcLinksAndBlobs,
        Remover::Retention,
    ];
}

fn gc_options(remove_untagged: bool) -> Options {
    Options {
        dry_run: false,
        remove_untagged,
        grace: Duration::ZERO,
        workers: 4,
    }
}

/// Runs `r` to its end on the server.
fn run_remover(s: &TestServer, r: Remover) -> impl Future<Output = ()> + Send + 'static {
    let cleaner = s.cleaner.clone();
    let maintenance = s.maintenance.clone();
    async move {
        match r {
            Remover::GcUntagged | Remover::GcLinksAndBlobs => {
                let untagged = matches!(r, Remover::GcUntagged);
                cleaner
                    .run_now(&gc_options(untagged))
                    .await
                    .expect("gc cycle");
            }
            Remover::Retention => {
                let records = maintenance.run(vec![Task::Retention], "test").await;
                for rec in &records {
                    assert_eq!(
                        rec.outcome,
                        gc::maintenance::Outcome::Ok,
                        "retention: {}",
                        rec.message
                    );
                }
            }
        }
    }
}

#[derive(Debug, Clone, Copy)]
enum Writer {
    /// `HEAD` of the unreferenced blob B (a push checking it exists).
    HeadBlob,
    /// `HEAD` of the untagged manifest M by digest (before an index push).
    HeadManifest,
    /// Mount of S from the other repository.
    Mount,
    /// An upload of B's bytes into a third repository (deduplicated into the pool).
    Upload,
    /// A new image by tag over M's config and layer.
    ImagePut,
    /// An index over M, by tag (`crane index append`, `buildx imagetools create`).
    IndexPut,
    /// A referrer of M (with B as its config), by tag.
    ReferrerPut,
    /// M's own bytes put again under a tag.
    Retag,
}

impl Writer {
    const ALL: [Writer; 8] = [
        Writer::HeadBlob,
        Writer::HeadManifest,
        Writer::Mount,
        Writer::Upload,
        Writer::ImagePut,
        Writer::IndexPut,
        Writer::ReferrerPut,
        Writer::Retag,
    ];
}

/// What a write was acknowledged for: `(repo, "blobs"|"manifests", reference, bytes)`
/// that must stay readable.
type Acked = Vec<(String, &'static str, String, Vec<u8>)>;

struct Write {
    /// The digest the writer pauses at (`Point::Checked`).
    checked: String,
    /// The digest a remover's claim is paused at (`Point::Claimed`).
    claimed: String,
    run: std::pin::Pin<Box<dyn Future<Output = Option<Acked>> + Send>>,
}

fn manifest_closure(g: &Garbage) -> Acked {
    vec![
        (
            REPO.into(),
            "manifests",
            g.m.digest.clone(),
            g.m.bytes.clone(),
        ),
        (REPO.into(), "blobs", g.c.digest.clone(), g.c.bytes.clone()),
        (REPO.into(), "blobs", g.l.digest.clone(), g.l.bytes.clone()),
    ]
}

fn descriptor(media_type: &str, b: &Blob) -> String {
    format!(
        r#"{{"mediaType":"{media_type}","digest":"{}","size":{}}}"#,
        b.digest,
        b.bytes.len()
    )
}

/// Builds writer `w` over the garbage `g`; running it returns what was acknowledged
/// (`None` when the registry answered that something was absent).
fn writer(s: &TestServer, w: Writer, g: &Garbage) -> Write {
    let c = client();
    let base = s.base.clone();
    let url = move |p: String| format!("{base}{p}");
    let g = g.clone();
    match w {
        Writer::HeadBlob => Write {
            checked: g.b.digest.clone(),
            claimed: g.b.digest.clone(),
            run: Box::pin(async move {
                let r = c
                    .head(url(format!("/v2/{REPO}/blobs/{}", g.b.digest)))
                    .send()
                    .await
                    .expect("head blob");
                match r.status().as_u16() {
                    200 => Some(vec![(REPO.into(), "blobs", g.b.digest.clone(), g.b.bytes)]),
                    404 => None,
                    s => panic!("HEAD blob answered {s}"),
                }
            }),
        },
        Writer::HeadManifest => Write {
            checked: g.m.digest.clone(),
            claimed: g.m.digest.clone(),
            run: Box::pin(async move {
                let r = c
                    .head(url(format!("/v2/{REPO}/manifests/{}", g.m.digest)))
                    .header("accept", OCI_MANIFEST)
                    .send()
                    .await
                    .expect("head manifest");
                match r.status().as_u16() {
                    200 => Some(manifest_closure(&g)),
                    404 => None,
                    s => panic!("HEAD manifest answered {s}"),
                }
            }),
        },
        Writer::Mount => Write {
            checked: g.s.digest.clone(),
            claimed: g.s.digest.clone(),
            run: Box::pin(async move {
                let r = c
                    .post(url(format!(
                        "/v2/{REPO}/blobs/uploads/?mount={}&from={OTHER}",
                        g.s.digest
                    )))
                    .header("content-length", "0")
                    .send()
                    .await
                    .expect("mount");
                match r.status().as_u16() {
                    201 => Some(vec![(REPO.into(), "blobs", g.s.digest.clone(), g.s.bytes)]),
                    202 => None, // not mounted: the client uploads it
                    s => panic!("mount answered {s}: {:?}", r.text().await),
                }
            }),
        },
        Writer::Upload => Write {
            checked: g.b.digest.clone(),
            claimed: g.b.digest.clone(),
            run: Box::pin(async move {
                let r = c
                    .post(url(format!(
                        "/v2/{THIRD}/blobs/uploads/?digest={}",
                        g.b.digest
                    )))
                    .header("content-type", "application/octet-stream")
                    .body(g.b.bytes.clone())
                    .send()
                    .await
                    .expect("upload");
                assert_eq!(r.status(), 201, "upload");
                Some(vec![(THIRD.into(), "blobs", g.b.digest.clone(), g.b.bytes)])
            }),
        },
        Writer::ImagePut => {
            let n = conformance::image_manifest(
                (&g.c.digest, g.c.bytes.len()),
                &[(&g.l.digest, g.l.bytes.len())],
                r#","annotations":{"n":"1"}"#,
            )
            .into_bytes();
            let nd = digest_of(&n);
            Write {
                checked: nd,
                claimed: g.c.digest.clone(),
                run: Box::pin(async move {
                    manifest_put(
                        &c,
                        &url(format!("/v2/{REPO}/manifests/n1")),
                        OCI_MANIFEST,
                        &n,
                    )
                    .await
                    .then(|| {
                        vec![
                            (REPO.into(), "manifests", "n1".into(), n.clone()),
                            (REPO.into(), "blobs", g.c.digest.clone(), g.c.bytes.clone()),
                            (REPO.into(), "blobs", g.l.digest.clone(), g.l.bytes.clone()),
                        ]
                    })
                }),
            }
        }
        Writer::IndexPut => {
            let i = format!(
                r#"{{"schemaVersion":2,"mediaType":"{OCI_INDEX}","manifests":[{}]}}"#,
                descriptor(OCI_MANIFEST, &g.m)
            )
            .into_bytes();
            Write {
                checked: digest_of(&i),
                claimed: g.m.digest.clone(),
                run: Box::pin(async move {
                    manifest_put(&c, &url(format!("/v2/{REPO}/manifests/v2")), OCI_INDEX, &i)
                        .await
                        .then(|| {
                            let mut a = manifest_closure(&g);
                            a.push((REPO.into(), "manifests", "v2".into(), i.clone()));
                            a
                        })
                }),
            }
        }
        Writer::ReferrerPut => {
            let r = format!(
                r#"{{"schemaVersion":2,"mediaType":"{OCI_MANIFEST}","artifactType":"application/x-sig","config":{},"layers":[],"subject":{}}}"#,
                descriptor("application/x-sig", &g.b),
                descriptor(OCI_MANIFEST, &g.m)
            )
            .into_bytes();
            Write {
                checked: digest_of(&r),
                claimed: g.m.digest.clone(),
                run: Box::pin(async move {
                    manifest_put(
                        &c,
                        &url(format!("/v2/{REPO}/manifests/r1")),
                        OCI_MANIFEST,
                        &r,
                    )
                    .await
                    .then(|| {
                        // A referrer may name a subject that is not there (the spec
                        // accepts it), so only the referrer itself was acknowledged;
                        // a subject still there must be whole (`check_store_whole`).
                        vec![
                            (REPO.into(), "manifests", "r1".into(), r.clone()),
                            (REPO.into(), "blobs", g.b.digest.clone(), g.b.bytes.clone()),
                        ]
                    })
                }),
            }
        }
        Writer::Retag => Write {
            checked: g.m.digest.clone(),
            claimed: g.m.digest.clone(),
            run: Box::pin(async move {
                manifest_put(
                    &c,
                    &url(format!("/v2/{REPO}/manifests/v3")),
                    OCI_MANIFEST,
                    &g.m.bytes,
                )
                .await
                .then(|| {
                    let mut a = manifest_closure(&g);
                    a.push((REPO.into(), "manifests", "v3".into(), g.m.bytes.clone()));
                    a
                })
            }),
        },
    }
}

/// PUTs a manifest: `true` on 201, `false` when a reference was absent (the client
/// pushes it again), a failure on anything else.
async fn manifest_put(c: &reqwest::Client, url: &str, media_type: &str, body: &[u8]) -> bool {
    let r = c
        .put(url)
        .header("content-type", media_type)
        .body(body.to_vec())
        .send()
        .await
        .expect("put manifest");
    match r.status().as_u16() {
        201 => true,
        400 => {
            let b = r.text().await.unwrap_or_default();
            assert!(b.contains("MANIFEST_BLOB_UNKNOWN"), "PUT {url}: 400 {b}");
            false
        }
        s => panic!("PUT {url} answered {s}"),
    }
}

/// Checks every acknowledged item reads back byte for byte.
async fn check_acked(s: &TestServer, what: &str, acked: &Acked) {
    let c = client();
    for (repo, kind, reference, bytes) in acked {
        let r = c
            .get(s.url(&format!("/v2/{repo}/{kind}/{reference}")))
            .header("accept", format!("{OCI_MANIFEST}, {OCI_INDEX}"))
            .send()
            .await
            .expect("get");
        let status = r.status().as_u16();
        let body = r.bytes().await.expect("body");
        assert_eq!(
            status, 200,
            "{what}: acknowledged {repo}/{kind}/{reference} is gone"
        );
        assert_eq!(
            &body[..],
            &bytes[..],
            "{what}: {repo}/{kind}/{reference} changed"
        );
    }
}

/// Every tagged manifest of the scenario's repositories, and M when it is still there,
/// reads back with everything it reaches: no "200 for the manifest, 404 for its blobs"
/// anywhere.
async fn check_store_whole(s: &TestServer, what: &str, g: &Garbage) {
    let c = client();
    let r = c
        .get(s.url(&format!("/v2/{REPO}/manifests/{}", g.m.digest)))
        .send()
        .await
        .expect("get M");
    if r.status() == 200 {
        check_acked(s, &format!("{what}: M is there"), &manifest_closure(g)).await;
    }
    for repo in [REPO, OTHER, THIRD] {
        let r = c
            .get(s.url(&format!("/v2/{repo}/tags/list")))
            .send()
            .await
            .expect("tags");
        if r.status() == 404 {
            continue;
        }
        let v: serde_json::Value = r.json().await.expect("tags json");
        let tags: Vec<String> = v["tags"]
            .as_array()
            .map(|a| {
                a.iter()
                    .filter_map(|t| t.as_str().map(str::to_owned))
                    .collect()
            })
            .unwrap_or_default();
        for t in tags {
            let mut stack = vec![t.clone()];
            while let Some(reference) = stack.pop() {
                let r = c
                    .get(s.url(&format!("/v2/{repo}/manifests/{reference}")))
                    .header("accept", format!("{OCI_MANIFEST}, {OCI_INDEX}"))
                    .send()
                    .await
                    .expect("get manifest");
                assert_eq!(
                    r.status(),
                    200,
                    "{what}: {repo}:{t} reaches {reference}, gone"
                );
                let m: serde_json::Value = r.json().await.expect("manifest json");
                for child in m["manifests"].as_array().into_iter().flatten() {
                    stack.push(child["digest"].as_str().unwrap_or_default().to_owned());
                }
                let blobs = m["layers"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .chain(m.get("config"));
                for b in blobs {
                    let d = b["digest"].as_str().unwrap_or_default();
                    let r = c
                        .get(s.url(&format!("/v2/{repo}/blobs/{d}")))
                        .send()
                        .await
                        .expect("get blob");
                    assert_eq!(r.status(), 200, "{what}: {repo}:{t} needs blob {d}, gone");
                    let body = r.bytes().await.expect("blob body");
                    assert_eq!(digest_of(&body), d, "{what}: blob {d} changed");
                }
            }
        }
    }
}

#[derive(Debug, Clone, Copy)]
enum Order {
    /// The remover has marked; the write runs to its end; the remover goes on.
    RemoverMarkedFirst,
    /// The write has checked; the remover runs to its end; the write goes on.
    WriterCheckedFirst,
    /// The remover holds its claim on what the write needs; the write starts; the
    /// remover goes on.
    WriterMeetsClaim,
}

async fn scenario(seed: u64, w: Writer, r: Remover, order: Order, coordination: Coordination) {
    let what = format!("{w:?} x {r:?} ({order:?}, {coordination:?})");
    eprintln!("scenario {what}");
    let (s, other, g, db) = setup_on(seed, coordination).await;
    let write = writer(&s, w, &g);
    // The remover's replica (the writer's own server when there is one server); every
    // check reads through it.
    let rs = other.as_ref().unwrap_or(&s);
    let hooks = s.store.liveness().hooks();
    let rhooks = rs.store.liveness().hooks();
    let acked = match order {
        Order::RemoverMarkedFirst => {
            let gate = rhooks.arm(Point::Marked, None);
            let remover = tokio::spawn(run_remover(rs, r));
            gate.arrived().await;
            let acked = write.run.await;
            gate.release();
            remover.await.expect("remover");
            acked
        }
        Order::WriterCheckedFirst => {
            let digest = write.checked.parse().expect("digest");
            let gate = hooks.arm(Point::Checked, Some(digest));
            let mut writer = tokio::spawn(write.run);
            let held = tokio::select! {
                _ = gate.arrived() => true,
                _ = &mut writer => false,
            };
            assert!(held, "{what}: the write ended before its checks");
            // The write is held between its checks and its link: the remover runs whole.
            run_remover(rs, r).await;
            gate.release();
            writer.await.expect("writer")
        }
        Order::WriterMeetsClaim => {
            let digest: registry::Digest = write.claimed.parse().expect("digest");
            let claimed = rhooks.arm(Point::Claimed, Some(digest.clone()));
            let mut remover = tokio::spawn(run_remover(rs, r));
            let held = tokio::select! {
                _ = claimed.arrived() => true,
                done = &mut remover => { done.expect("remover"); false }
            };
            if held {
                // The write meets the claim and waits for it to end; the deletion then
                // goes on, and the write finds the digest absent.
                let waits = hooks.arm(Point::PinWaits, Some(digest));
                let writer = tokio::spawn(write.run);
                waits.arrived().await;
                waits.release();
                claimed.release();
                remover.await.expect("remover");
                writer.await.expect("writer")
            } else {
                // This remover never claimed it (the digest is live to it): the gate is
                // let open for whoever comes later, and the write runs after it.
                claimed.release();
                write.run.await
            }
        }
    };
    // A later full cycle must not take it either (pending or reachable by now).
    rs.cleaner
        .run_now(&gc_options(true))
        .await
        .expect("later cycle");
    if let Some(acked) = &acked {
        check_acked(rs, &what, acked).await;
    }
    check_store_whole(rs, &what, &g).await;
    if let Some(db) = db {
        conformance::pg::drop_db(&db).await;
    }
}

/// Every writer against every remover, in every dangerous order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_interleaving_of_a_write_and_a_remover_loses_what_the_write_was_told() {
    every_interleaving(Coordination::InProcess).await;
}

/// The same, the server's writers and removers coordinating through PostgreSQL (the
/// replicas' protocol, `registry::coordination`): its pins, journals, pending rows and
/// claims under the real writers and the real sweep.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_interleaving_loses_anything_with_the_protocol_in_postgresql() {
    every_interleaving(Coordination::Postgres).await;
}

/// The same across two replicas on one database: every write goes through replica A,
/// every remover runs on replica B, paused at the same points.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_interleaving_across_two_replicas_loses_anything() {
    every_interleaving(Coordination::TwoReplicas).await;
}

async fn every_interleaving(coordination: Coordination) {
    // The servers' warnings and errors (an internal error's cause) go with a failure.
    let _ = tracing_subscriber::fmt()
        .with_env_filter("warn")
        .with_test_writer()
        .try_init();
    let mut seed = 1000;
    for w in Writer::ALL {
        for r in Remover::ALL {
            for order in [
                Order::RemoverMarkedFirst,
                Order::WriterCheckedFirst,
                Order::WriterMeetsClaim,
            ] {
                seed += 7;
                scenario(seed, w, r, order, coordination).await;
            }
        }
    }
}

/// Two removers at once: retention's manifest pass holds its claim on the untagged M;
/// meanwhile a collection that removes untagged manifests marks M unreached too. Its
/// claim must be refused: were it granted, retention's release would let a push of M
/// through (M present, 201) while the collection still deleted M after it.
async fn two_removers_at_once(coordination: Coordination) {
    let what = format!("retention and a collection claim M ({coordination:?})");
    let (s, other, g, db) = setup_on(11, coordination).await;
    // Retention on the writer's server, the collection on the other replica (if any).
    let rs = other.as_ref().unwrap_or(&s);
    let m: registry::Digest = g.m.digest.parse().expect("digest");
    let retention_claimed = s
        .store
        .liveness()
        .hooks()
        .arm(Point::Claimed, Some(m.clone()));
    let retention = tokio::spawn(run_remover(&s, Remover::Retention));
    retention_claimed.arrived().await;
    let gc_claimed = rs
        .store
        .liveness()
        .hooks()
        .arm(Point::Claimed, Some(m.clone()));
    let mut cycle = tokio::spawn(run_remover(rs, Remover::GcUntagged));
    let both = tokio::select! {
        _ = gc_claimed.arrived() => true,
        done = &mut cycle => { done.expect("cycle"); false }
    };
    retention_claimed.release();
    retention.await.expect("retention");
    // M's revision is gone with retention; the client puts M again by tag.
    let acked = writer(&s, Writer::Retag, &g).run.await;
    gc_claimed.release();
    if both {
        cycle.await.expect("cycle");
    }
    let acked = acked.expect("M put again after retention (its blobs are kept)");
    check_acked(rs, &what, &acked).await;
    assert!(!both, "{what}: two sessions held a claim on M at once");
    check_store_whole(rs, &what, &g).await;
    if let Some(db) = db {
        conformance::pg::drop_db(&db).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_removers_never_hold_a_claim_on_one_digest_at_once() {
    two_removers_at_once(Coordination::InProcess).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_removers_never_hold_one_claim_in_postgresql_or_across_replicas() {
    two_removers_at_once(Coordination::Postgres).await;
    two_removers_at_once(Coordination::TwoReplicas).await;
}

/// One collection removes the links of a blob shared by two repositories on two workers
/// at once: its session claims the digest twice. A `HEAD` of the blob in either
/// repository waits until both links are gone (then 404), never answering 200 between
/// the first removal and the second (the retention soak saw a referrer's push refused
/// for the empty config blob it had `HEAD`ed 84 ms before).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_blob_claimed_twice_by_one_collection_is_absent_until_both_links_are_gone() {
    let s = TestServer::start_with(quiet).await;
    let c = client();
    let x = random_bytes(1024, 4242);
    let digest = push_blob(&c, &s, REPO, &x).await;
    push_blob(&c, &s, OTHER, &x).await;
    let config = s.config.clone();
    let root = s.stop().await;
    let s = TestServer::start_on(root, config).await; // nothing pending
    let hooks = s.store.liveness().hooks();
    let d: registry::Digest = digest.parse().expect("digest");
    let first = hooks.arm(Point::Claimed, Some(d.clone()));
    let second = hooks.arm(Point::Claimed, Some(d.clone()));
    let cycle = tokio::spawn(run_remover(&s, Remover::GcLinksAndBlobs));
    first.arrived().await;
    second.arrived().await;
    // Both links are claimed; a HEAD in each repository meets the claims.
    let waits: Vec<_> = (0..2)
        .map(|_| hooks.arm(Point::PinWaits, Some(d.clone())))
        .collect();
    let head = |repo: &'static str| {
        let (c, url) = (c.clone(), s.url(&format!("/v2/{repo}/blobs/{digest}")));
        tokio::spawn(async move { c.head(url).send().await.expect("head").status().as_u16() })
    };
    let (mut h0, mut h1) = (head(REPO), head(OTHER));
    for w in &waits {
        w.arrived().await;
    }
    let again: Vec<_> = (0..2)
        .map(|_| hooks.arm(Point::PinWaits, Some(d.clone())))
        .collect();
    for w in &waits {
        w.release();
    }
    // The first link goes and its claim ends; the second is still claimed.
    first.release();
    let (mut a0, mut a1) = (None, None);
    tokio::select! {
        _ = async { again[0].arrived().await; again[1].arrived().await } => {}
        r = &mut h0 => a0 = Some(r.expect("head")),
        r = &mut h1 => a1 = Some(r.expect("head")),
    }
    let still_waiting = a0.is_none() && a1.is_none();
    for w in &again {
        w.release();
    }
    second.release();
    cycle.await.expect("cycle");
    let answers = [
        match a0 {
            Some(a) => a,
            None => h0.await.expect("head"),
        },
        match a1 {
            Some(a) => a,
            None => h1.await.expect("head"),
        },
    ];
    assert!(
        still_waiting,
        "a HEAD went on while the collection still held a claim on the blob (answers {answers:?})"
    );
    assert_eq!(answers, [404, 404], "the blob's links were both removed");
}

/// Replicas collect in turn: while replica A's cycle runs (paused after its mark, holding
/// the database's GC lease), replica B's cycle waits for the lease and does not mark;
/// once A's cycle has ended, B's runs.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replicas_run_one_collection_at_a_time() {
    let (a, b, _g, db) = setup_on(12, Coordination::TwoReplicas).await;
    let b = b.expect("the second replica");
    let db = db.expect("the database");
    let a_marked = a.store.liveness().hooks().arm(Point::Marked, None);
    let mut a_cycle = tokio::spawn(run_remover(&a, Remover::GcUntagged));
    a_marked.arrived().await;
    let b_waits = b.store.liveness().hooks().arm(Point::LeaseWaits, None);
    let b_marked = b.store.liveness().hooks().arm(Point::Marked, None);
    let mut b_cycle = tokio::spawn(run_remover(&b, Remover::GcUntagged));
    tokio::select! {
        _ = b_waits.arrived() => {}
        _ = b_marked.arrived() => {
            b_marked.release();
            a_marked.release();
            panic!("replica B marked while replica A's cycle ran");
        }
    }
    b_waits.release();
    // B now waits in the database for the lease A holds.
    let pg = conformance::pg::client(&db.dbname).await;
    loop {
        let waiting: i64 = pg
            .query_one(
                "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND NOT granted",
                &[],
            )
            .await
            .unwrap()
            .get(0);
        if waiting > 0 {
            break;
        }
        tokio::task::yield_now().await;
    }
    assert!(!b_marked.has_arrived(), "B marked while A held the lease");
    assert!(!b_cycle.is_finished());
    a_marked.release();
    (&mut a_cycle).await.expect("A's cycle");
    b_marked.arrived().await;
    b_marked.release();
    (&mut b_cycle).await.expect("B's cycle");
    assert_eq!(a.cleaner.status().cycles + b.cleaner.status().cycles, 2);
    conformance::pg::drop_db(&db).await;
}

/// `fut`, failing the test (instead of hanging it) when it has not ended in two
/// minutes: the bound of a wait that never ends when the feature is broken.
async fn within<T>(what: &str, fut: impl Future<Output = T>) -> T {
    tokio::time::timeout(Duration::from_secs(120), fut)
        .await
        .unwrap_or_else(|_| panic!("{what}: not within two minutes"))
}

/// Releases its gates when dropped: a test that fails while a remover is paused then
/// ends, instead of waiting forever at runtime shutdown for the paused remover's thread.
struct ReleaseOnDrop(Vec<Arc<registry::hooks::Gate>>);

impl Drop for ReleaseOnDrop {
    fn drop(&mut self) {
        self.0.iter().for_each(|g| g.release());
    }
}

/// Waits until every collection requested on any replica is served (the scheduler has
/// recorded the cycle that covers the last request); returns how many were requested.
async fn wait_served(pg: &tokio_postgres::Client) -> i64 {
    loop {
        let row = pg
            .query_one("SELECT requested, served FROM drydock_gc WHERE id = 1", &[])
            .await
            .unwrap();
        let (requested, served): (i64, i64) = (row.get(0), row.get(1));
        if served == requested {
            return requested;
        }
        tokio::task::yield_now().await;
    }
}

/// A DELETE through `via` (the untagged garbage manifest, by digest); then which of the
/// two replicas, armed at `Marked`, runs the cycle it requested: (that one, the other).
async fn delete_and_find_scheduler(
    via: &TestServer,
    g: &Garbage,
    gates: &[Arc<registry::hooks::Gate>; 2],
) -> (usize, usize) {
    let r = client()
        .delete(via.url(&format!("/v2/{REPO}/manifests/{}", g.m.digest)))
        .send()
        .await
        .expect("delete");
    assert_eq!(r.status(), 202);
    within("a cycle after the DELETE", async {
        tokio::select! {
            _ = gates[0].arrived() => (0, 1),
            _ = gates[1].arrived() => (1, 0),
        }
    })
    .await
}

/// Replicas share one scheduler: a DELETE on a replica makes the replica holding the
/// scheduler's role run a cycle; requests made on both replicas while it runs coalesce
/// into exactly one more cycle there, and the other replica runs none.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gc_requests_on_any_replica_coalesce_into_the_schedulers_next_cycle() {
    let (a, b, g, db) = setup_on(14, Coordination::TwoReplicas).await;
    let b = b.expect("the second replica");
    let db = db.expect("the database");
    let servers = [&a, &b];
    let gates = servers.map(|s| s.store.liveness().hooks().arm(Point::Marked, None));
    let mut opened = ReleaseOnDrop(gates.to_vec());
    let (sched, other) = delete_and_find_scheduler(&b, &g, &gates).await;
    for s in [&a, &b, &a, &b, &a, &b] {
        assert!(s.store.liveness().request_collection().await.unwrap());
    }
    let again = servers[sched]
        .store
        .liveness()
        .hooks()
        .arm(Point::Marked, None);
    opened.0.push(again.clone());
    gates[sched].release();
    within("the coalesced cycle", again.arrived()).await;
    again.release();
    let pg = conformance::pg::client(&db.dbname).await;
    assert_eq!(
        within("every request served", wait_served(&pg)).await,
        7,
        "requests recorded"
    );
    assert_eq!(
        servers[sched].cleaner.status().cycles,
        2,
        "seven requests, one cycle running: one more cycle"
    );
    assert_eq!(servers[other].cleaner.status().cycles, 0);
    assert!(!gates[other].has_arrived(), "the other replica collected");
    gates[other].release();
    conformance::pg::drop_db(&db).await;
}

/// The scheduler dies while its cycle runs (its connection ends): the other replica
/// takes the role over with the request the dead one had not served, and runs its own
/// cycle once the first has ended (the GC lease).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn another_replica_serves_the_requests_of_a_scheduler_that_died() {
    let (a, b, g, db) = setup_on(15, Coordination::TwoReplicas).await;
    let b = b.expect("the second replica");
    let db = db.expect("the database");
    let servers = [&a, &b];
    let gates = servers.map(|s| s.store.liveness().hooks().arm(Point::Marked, None));
    let mut opened = ReleaseOnDrop(gates.to_vec());
    let (sched, other) = delete_and_find_scheduler(&a, &g, &gates).await;
    let waits = servers[other]
        .store
        .liveness()
        .hooks()
        .arm(Point::LeaseWaits, None);
    opened.0.push(waits.clone());
    let pg = conformance::pg::client(&db.dbname).await;
    assert_eq!(
        conformance::pg::kill_holder(&pg, registry::coordination::Postgres::scheduler_lock()).await,
        1
    );
    // The other replica took the role, found the request unserved and waits for the
    // lease that the first cycle holds.
    within("the other replica's cycle", waits.arrived()).await;
    waits.release();
    assert!(!gates[other].has_arrived(), "two cycles at once");
    gates[sched].release();
    within("the other replica's mark", gates[other].arrived()).await;
    gates[other].release();
    assert_eq!(within("the request served", wait_served(&pg)).await, 1);
    assert_eq!(servers[sched].cleaner.status().cycles, 1);
    assert_eq!(
        servers[other].cleaner.status().cycles,
        1,
        "the dead scheduler's request was not served again"
    );
    conformance::pg::drop_db(&db).await;
}

/// Issue 15, flow 1, as reported: an image's tag is deleted; a cycle that removes
/// untagged manifests marks (M unreached); the client HEADs M and pushes an index over
/// it as a new tag; the cycle goes on. M's config and layer must stay.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_index_pushed_over_an_untagged_image_keeps_the_image_whole() {
    let (s, g) = setup(1).await;
    let c = client();
    let gate = s.store.liveness().hooks().arm(Point::Marked, None);
    let cycle = tokio::spawn(run_remover(&s, Remover::GcUntagged));
    gate.arrived().await;
    let r = c
        .head(s.url(&format!("/v2/{REPO}/manifests/{}", g.m.digest)))
        .send()
        .await
        .expect("head");
    assert_eq!(r.status(), 200);
    let index = format!(
        r#"{{"schemaVersion":2,"mediaType":"{OCI_INDEX}","manifests":[{}]}}"#,
        descriptor(OCI_MANIFEST, &g.m)
    );
    assert_eq!(
        put(&c, &s, REPO, "v2", OCI_INDEX, index.as_bytes()).await,
        201
    );
    gate.release();
    cycle.await.expect("cycle");
    let mut acked = manifest_closure(&g);
    acked.push((REPO.into(), "manifests", "v2".into(), index.into_bytes()));
    check_acked(&s, "index over an untagged image", &acked).await;
}

/// Issue 15, flow 2: the retention task's untagged policy marks; meanwhile a new image is
/// pushed by tag and the untagged M is tagged again; neither may be removed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retention_keeps_manifests_tagged_while_it_runs() {
    let (s, g) = setup(2).await;
    let c = client();
    let gate = s.store.liveness().hooks().arm(Point::Marked, None);
    let task = tokio::spawn(run_remover(&s, Remover::Retention));
    gate.arrived().await;
    let (_, n_body) = conformance::push_image(&c, &s, REPO, "new", 77, 1).await;
    assert_eq!(
        put(&c, &s, REPO, "again", OCI_MANIFEST, &g.m.bytes).await,
        201
    );
    gate.release();
    task.await.expect("retention");
    let mut acked = manifest_closure(&g);
    acked.push((REPO.into(), "manifests", "again".into(), g.m.bytes.clone()));
    acked.push((REPO.into(), "manifests", "new".into(), n_body.into_bytes()));
    check_acked(&s, "tagged during retention", &acked).await;
    check_store_whole(&s, "tagged during retention", &g).await;
}

/// A revision folder whose link is not there yet (a write between making the folder
/// and renaming its link into it) is new, not "as old as the epoch": no remover takes
/// it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_revision_whose_link_is_not_written_yet_counts_as_new() {
    let (s, g) = setup(3).await;
    let fresh = Blob::new(
        conformance::image_manifest(
            (&g.c.digest, g.c.bytes.len()),
            &[(&g.l.digest, g.l.bytes.len())],
            r#","annotations":{"fresh":"1"}"#,
        )
        .into_bytes(),
    );
    let hex = fresh.digest.trim_start_matches("sha256:");
    let folder = repo_dir(s.root(), REPO).join(format!("_manifests/revisions/sha256/{hex}"));
    std::fs::create_dir_all(&folder).expect("revision folder");
    for r in [Remover::Retention, Remover::GcUntagged] {
        run_remover(&s, r).await;
        assert!(folder.exists(), "{r:?} removed a revision being written");
    }
}

/// Issue 15, flow 3: a manifest whose type only its Content-Type tells (no `mediaType`
/// in the bytes) would read back as another type; it is refused, and nothing is linked.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_manifest_typed_only_by_its_content_type_is_refused() {
    let s = TestServer::start_with(quiet).await;
    let c = client();
    let blob = Blob::new(b"signature".to_vec());
    push_blob(&c, &s, REPO, &blob.bytes).await;
    let artifact_type = "application/vnd.oci.artifact.manifest.v1+json";
    for body in [
        format!(
            r#"{{"artifactType":"application/x-sig","blobs":[{}]}}"#,
            descriptor("application/x-sig", &blob)
        ),
        format!(
            r#"{{"schemaVersion":2,"artifactType":"application/x-sig","blobs":[{}]}}"#,
            descriptor("application/x-sig", &blob)
        ),
    ] {
        let r = c
            .put(s.url(&format!("/v2/{REPO}/manifests/sig")))
            .header("content-type", artifact_type)
            .body(body.clone())
            .send()
            .await
            .expect("put");
        let v = expect_error(r, 400, "MANIFEST_INVALID").await;
        assert!(v.to_string().contains("mediaType"), "{v}");
        let r = c
            .get(s.url(&format!(
                "/v2/{REPO}/manifests/{}",
                digest_of(body.as_bytes())
            )))
            .send()
            .await
            .expect("get");
        assert_eq!(r.status(), 404, "a refused manifest was stored");
    }
}

/// A manifest the collector cannot parse — here a schema 1 manifest that an older
/// registry wrote into the store drydock now serves — keeps every blob it mentions.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_manifest_the_collector_cannot_read_keeps_everything_it_mentions() {
    let s = TestServer::start_with(quiet).await;
    let c = client();
    let layer = Blob::new(random_bytes(900, 5));
    push_blob(&c, &s, REPO, &layer.bytes).await;
    let v1 = Blob::new(
        format!(
            r#"{{"schemaVersion":1,"name":"{REPO}","tag":"old","fsLayers":[{{"blobSum":"{}"}}],"history":[]}}"#,
            layer.digest
        )
        .into_bytes(),
    );
    // Written as Distribution 2.x did: pool blob, revision link, tag links.
    let v2 = s.root().join("docker/registry/v2");
    let hex = v1.digest.trim_start_matches("sha256:");
    let data = v2.join(format!("blobs/sha256/{}/{hex}/data", &hex[..2]));
    std::fs::create_dir_all(data.parent().expect("parent")).expect("pool folder");
    std::fs::write(&data, &v1.bytes).expect("pool blob");
    let repo = repo_dir(s.root(), REPO);
    for link in [
        format!("_manifests/revisions/sha256/{hex}/link"),
        "_manifests/tags/old/current/link".to_owned(),
        format!("_manifests/tags/old/index/sha256/{hex}/link"),
    ] {
        let p = repo.join(link);
        std::fs::create_dir_all(p.parent().expect("parent")).expect("link folder");
        std::fs::write(p, &v1.digest).expect("link");
    }
    // Restarted: the layer's own push no longer protects it.
    let config = s.config.clone();
    let s = TestServer::start_on(s.stop().await, config).await;
    let report = s.cleaner.run_now(&gc_options(true)).await.expect("gc");
    assert_eq!(report.unreadable_manifests, 1, "{report:?}");
    let data = s.root().join(format!(
        "docker/registry/v2/blobs/sha256/{}/{hex}/data",
        &hex[..2]
    ));
    let r = c
        .get(s.url(&format!("/v2/{REPO}/blobs/{}", layer.digest)))
        .send()
        .await
        .expect("get layer");
    assert_eq!(
        r.status(),
        200,
        "the layer an unreadable manifest names was removed"
    );
    assert!(data.exists());
}

/// Retention's tag policy decides on a listing; a tag pushed again after that listing
/// (even to the same manifest) is a new push the client was told succeeded, and stays.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retention_keeps_a_tag_pushed_again_after_it_listed_it() {
    let s = TestServer::start_with(|c| {
        quiet(c);
        c.retention.images = vec![ImagePolicy {
            repositories: String::new(),
            keep_last: Some(1),
            keep_tags: None,
            untagged_older_than: None,
        }];
    })
    .await;
    let c = client();
    let (_, old) = conformance::push_image(&c, &s, REPO, "old", 1, 1).await;
    let (_, newer) = conformance::push_image(&c, &s, REPO, "newer", 2, 1).await;
    // Far enough apart that the tags' times differ on any filesystem.
    let old_link = repo_dir(s.root(), REPO).join("_manifests/tags/old/current/link");
    let f = std::fs::File::options()
        .write(true)
        .open(&old_link)
        .expect("link");
    f.set_modified(std::time::SystemTime::now() - Duration::from_secs(3600))
        .expect("set mtime");
    drop(f);
    let gate = s.store.liveness().hooks().arm(Point::Marked, None);
    let task = tokio::spawn(run_remover(&s, Remover::Retention));
    gate.arrived().await;
    // Listed as the older tag; pushed again now.
    assert_eq!(
        put(&c, &s, REPO, "old", OCI_MANIFEST, old.as_bytes()).await,
        201
    );
    gate.release();
    task.await.expect("retention");
    for (t, body) in [("old", &old), ("newer", &newer)] {
        let r = c
            .get(s.url(&format!("/v2/{REPO}/manifests/{t}")))
            .send()
            .await
            .expect("get");
        assert_eq!(r.status(), 200, "tag {t} removed");
        assert_eq!(r.text().await.expect("body"), *body);
    }
}
