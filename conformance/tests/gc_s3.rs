//! The online collector on S3 (issue 18): an in-process server on a root of its own in
//! the Ceph RGW bucket that `scripts/rgw.sh` starts (the `DRYDOCK_TEST_S3_*` variables;
//! without them these tests fail, never skip). What a cycle removes is checked key by
//! key in the bucket, what it keeps is pulled byte for byte, and a write that makes
//! garbage referenced again while a cycle runs keeps it (`registry::hooks` pauses the
//! cycle after its mark). Each test removes its root at the end.

mod common;

use std::collections::BTreeSet;
use std::time::Duration;

use common::{OCI_INDEX, OCI_MANIFEST};
use conformance::{TestServer, client, digest_of, image_manifest, push_blob, random_bytes};
use futures::StreamExt;
use gc::Options;
use gc::maintenance::{Outcome, Task};
use registry::Digest;
use registry::config::{Config, ImagePolicy};
use registry::hooks::Point;
use registry::names::RepoName;
use registry::storage::s3::S3Driver;
use registry::storage::{Driver, PathSpec, path_for};

const APP: &str = "s3gc/app";
const OTHER: &str = "s3gc/other";

/// A server on the bucket root `root`, collecting online but only when told to.
async fn serve(root: &str) -> TestServer {
    serve_with(root, |_| {}).await
}

/// [`serve`] after `adjust` has changed its configuration.
async fn serve_with(root: &str, adjust: impl FnOnce(&mut Config)) -> TestServer {
    let s3 = conformance::s3::config(root);
    TestServer::start_with(move |c: &mut Config| {
        c.storage.s3 = Some(s3);
        c.gc.enabled = true;
        c.gc.on_startup = false;
        // A DELETE schedules a cycle: with the default grace it removes nothing.
        c.gc.grace = Duration::from_secs(3600);
        c.maintenance.enabled = false;
        c.storage.delete.enabled = true;
        adjust(c);
    })
    .await
}

/// Every key below the root, sorted.
async fn all_keys(d: &S3Driver) -> BTreeSet<String> {
    d.walk("").map(|e| e.unwrap().path).collect().await
}

/// The registry's keys (Distribution's layout; not drydock's own state, such as the
/// health probe's object, which the server writes when it likes).
async fn keys(d: &S3Driver) -> BTreeSet<String> {
    let mut k = all_keys(d).await;
    k.retain(|k| k.starts_with(registry::storage::paths::ROOT));
    k
}

async fn remove_root(d: &S3Driver) {
    let all: Vec<String> = all_keys(d).await.into_iter().collect();
    for r in d.delete_many(&all).await.unwrap() {
        r.unwrap();
    }
}

fn options(dry_run: bool) -> Options {
    Options {
        dry_run,
        remove_untagged: true,
        grace: Duration::ZERO,
        workers: 4,
    }
}

/// PUTs a manifest, expecting 201; its digest.
async fn put(
    c: &reqwest::Client,
    s: &TestServer,
    repo: &str,
    reference: &str,
    media_type: &str,
    body: &str,
) -> String {
    let r = common::put_manifest(c, s, repo, reference, media_type, body).await;
    assert_eq!(
        r.status(),
        201,
        "PUT {repo}:{reference}: {:?}",
        r.text().await
    );
    digest_of(body.as_bytes())
}

/// A small image in `repo`: its config and one layer of its own, plus `shared`
/// (digest, bytes) when given. Returns the manifest and every blob it needs.
async fn image(
    c: &reqwest::Client,
    s: &TestServer,
    repo: &str,
    seed: u64,
    shared: Option<&(String, Vec<u8>)>,
) -> (String, Vec<(String, Vec<u8>)>) {
    let config = format!(r#"{{"architecture":"amd64","os":"linux","seed":{seed}}}"#).into_bytes();
    let layer = random_bytes(3000, seed);
    let mut blobs = vec![
        (push_blob(c, s, repo, &config).await, config),
        (push_blob(c, s, repo, &layer).await, layer),
    ];
    if let Some((d, b)) = shared {
        push_blob(c, s, repo, b).await;
        blobs.push((d.clone(), b.clone()));
    }
    let layers: Vec<(&str, usize)> = blobs[1..]
        .iter()
        .map(|(d, b)| (d.as_str(), b.len()))
        .collect();
    let m = image_manifest((&blobs[0].0, blobs[0].1.len()), &layers, "");
    (m, blobs)
}

/// GETs `/v2/{repo}/{kind}/{reference}`: the status and the body.
async fn get(s: &TestServer, repo: &str, kind: &str, reference: &str) -> (u16, Vec<u8>) {
    let r = client()
        .get(s.url(&format!("/v2/{repo}/{kind}/{reference}")))
        .header("accept", format!("{OCI_MANIFEST}, {OCI_INDEX}"))
        .send()
        .await
        .unwrap();
    // A blob GET on S3 redirects to the bucket (`storage.redirect`): followed here.
    let r = match r.headers().get("location") {
        Some(to) if r.status() == 307 => reqwest::get(to.to_str().unwrap()).await.unwrap(),
        _ => r,
    };
    (r.status().as_u16(), r.bytes().await.unwrap().to_vec())
}

fn digest(s: &str) -> Digest {
    s.parse().unwrap()
}

/// Tagged, untagged, an index, a referrer, a blob shared by two repositories and one
/// that nothing references: one cycle with `remove_untagged` and no grace removes
/// exactly the untagged manifests, their blobs and links and the lone blob — the bucket
/// loses those keys and no other — and everything else pulls byte for byte. Its dry
/// run reported exactly that and removed nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cycle_on_s3_removes_exactly_what_nothing_references() {
    let root = conformance::s3::fresh_root("gc-exact");
    let bucket = S3Driver::new(conformance::s3::config(&root)).unwrap();
    let s = serve(&root).await;
    let c = client();
    let shared_bytes = random_bytes(5000, 7);
    let shared = (digest_of(&shared_bytes), shared_bytes);

    // Kept: T (tagged, with the shared layer), the index I over M1, R (a referrer of T),
    // and B in the other repository (with the shared layer).
    let (t, t_blobs) = image(&c, &s, APP, 1, Some(&shared)).await;
    let t_digest = put(&c, &s, APP, "v1", OCI_MANIFEST, &t).await;
    let (m1, m1_blobs) = image(&c, &s, APP, 2, None).await;
    let m1_digest = put(&c, &s, APP, &digest_of(m1.as_bytes()), OCI_MANIFEST, &m1).await;
    let index = format!(
        r#"{{"schemaVersion":2,"mediaType":"{OCI_INDEX}","manifests":[{{"mediaType":"{OCI_MANIFEST}","digest":"{m1_digest}","size":{}}}]}}"#,
        m1.len()
    );
    put(&c, &s, APP, "multi", OCI_INDEX, &index).await;
    let sig = b"a signature".to_vec();
    let sig_digest = push_blob(&c, &s, APP, &sig).await;
    let referrer = format!(
        r#"{{"schemaVersion":2,"mediaType":"{OCI_MANIFEST}","artifactType":"application/x-sig","config":{{"mediaType":"application/x-sig","digest":"{sig_digest}","size":{}}},"layers":[],"subject":{{"mediaType":"{OCI_MANIFEST}","digest":"{t_digest}","size":{}}}}}"#,
        sig.len(),
        t.len()
    );
    let r_digest = put(
        &c,
        &s,
        APP,
        &digest_of(referrer.as_bytes()),
        OCI_MANIFEST,
        &referrer,
    )
    .await;
    let (b, b_blobs) = image(&c, &s, OTHER, 3, Some(&shared)).await;
    put(&c, &s, OTHER, "v1", OCI_MANIFEST, &b).await;

    // Garbage: U (untagged from the start), D (its tag deleted), X (no manifest).
    let (u, u_blobs) = image(&c, &s, APP, 4, None).await;
    let u_digest = put(&c, &s, APP, &digest_of(u.as_bytes()), OCI_MANIFEST, &u).await;
    let (d, d_blobs) = image(&c, &s, APP, 5, None).await;
    let d_digest = put(&c, &s, APP, "old", OCI_MANIFEST, &d).await;
    let r = c
        .delete(s.url(&format!("/v2/{APP}/manifests/old")))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 202);
    let x = random_bytes(1234, 9);
    let x_digest = push_blob(&c, &s, APP, &x).await;

    // A new server on the root: nothing is pending from the pushes above.
    drop(s.stop().await);
    let s = serve(&root).await;

    let app = RepoName::parse(APP).unwrap();
    let garbage_blobs: Vec<&String> = u_blobs
        .iter()
        .chain(&d_blobs)
        .map(|(d, _)| d)
        .chain([&x_digest])
        .collect();
    let mut want = BTreeSet::new();
    for m in [&u_digest, &d_digest] {
        want.insert(path_for(PathSpec::BlobData(&digest(m))));
        want.insert(path_for(PathSpec::ManifestRevisionLink(&app, &digest(m))));
    }
    for g in &garbage_blobs {
        want.insert(path_for(PathSpec::BlobData(&digest(g))));
        want.insert(path_for(PathSpec::LayerLink(&app, &digest(g))));
    }

    let before = keys(&bucket).await;
    assert!(want.is_subset(&before), "the garbage is in the bucket");
    let plan = s.cleaner.run_now(&options(true)).await.expect("dry run");
    assert_eq!(keys(&bucket).await, before, "a dry run removes nothing");
    let report = s.cleaner.run_now(&options(false)).await.expect("cycle");
    let after = keys(&bucket).await;
    let gone: BTreeSet<String> = before.difference(&after).cloned().collect();
    assert_eq!(gone, want, "the cycle removed exactly the garbage's keys");
    assert!(after.is_subset(&before), "the cycle wrote nothing");

    let sorted = |v: Vec<String>| v.into_iter().collect::<BTreeSet<String>>();
    let removed = &report.removed;
    assert_eq!(
        sorted(removed.manifests.iter().collect()),
        sorted(vec![
            format!("{APP}@{u_digest}"),
            format!("{APP}@{d_digest}")
        ])
    );
    assert_eq!(
        sorted(removed.blobs.iter().collect()),
        garbage_blobs
            .iter()
            .map(|d| d.to_string())
            .chain([u_digest.clone(), d_digest.clone()])
            .collect()
    );
    assert_eq!(
        sorted(removed.layer_links.iter().collect()),
        garbage_blobs.iter().map(|d| format!("{APP}@{d}")).collect()
    );
    for (what, p, r) in [
        ("manifests", &plan.removed.manifests, &removed.manifests),
        (
            "layer links",
            &plan.removed.layer_links,
            &removed.layer_links,
        ),
        ("blobs", &plan.removed.blobs, &removed.blobs),
    ] {
        assert_eq!(
            sorted(p.iter().collect()),
            sorted(r.iter().collect()),
            "the dry run planned the {what} the cycle removed"
        );
    }

    // Everything referenced pulls byte for byte; the garbage is unknown.
    for (repo, reference, body) in [
        (APP, "v1", t.as_bytes()),
        (APP, "multi", index.as_bytes()),
        (APP, m1_digest.as_str(), m1.as_bytes()),
        (APP, r_digest.as_str(), referrer.as_bytes()),
        (OTHER, "v1", b.as_bytes()),
    ] {
        assert_eq!(
            get(&s, repo, "manifests", reference).await,
            (200, body.to_vec())
        );
    }
    let kept = t_blobs
        .iter()
        .chain(&m1_blobs)
        .map(|b| (APP, b))
        .chain(b_blobs.iter().map(|b| (OTHER, b)));
    let sig_blob = (sig_digest.clone(), sig.clone());
    for (repo, (d, bytes)) in kept.chain([(APP, &sig_blob)]) {
        assert_eq!(
            get(&s, repo, "blobs", d).await,
            (200, bytes.clone()),
            "{repo}@{d}"
        );
    }
    for m in [&u_digest, &d_digest] {
        assert_eq!(get(&s, APP, "manifests", m).await.0, 404);
    }
    for g in &garbage_blobs {
        assert_eq!(get(&s, APP, "blobs", g).await.0, 404);
    }
    // A second cycle finds nothing left to remove.
    let again = s
        .cleaner
        .run_now(&options(false))
        .await
        .expect("second cycle");
    assert_eq!(
        (
            again.manifests_removed,
            again.layer_links_removed,
            again.blobs_removed
        ),
        (0, 0, 0)
    );
    drop(s);
    remove_root(&bucket).await;
}

/// `n1` and B pull byte for byte.
async fn check_pulls(s: &TestServer, m: &str, b_digest: &str, b: &[u8], what: &str) {
    assert_eq!(
        get(s, APP, "manifests", "n1").await,
        (200, m.as_bytes().to_vec()),
        "{what}: the manifest"
    );
    assert_eq!(
        get(s, APP, "blobs", b_digest).await,
        (200, b.to_vec()),
        "{what}: B"
    );
}

/// A cycle on S3 has marked a lone blob B as garbage; before it sweeps, a client
/// checks B exists (`HEAD`: 200) and pushes a manifest that references it. B, its
/// link and the manifest survive the cycle and a later one, and pull byte for byte.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_blob_referenced_again_after_the_mark_survives_on_s3() {
    let root = conformance::s3::fresh_root("gc-safety");
    let bucket = S3Driver::new(conformance::s3::config(&root)).unwrap();
    let s = serve(&root).await;
    let c = client();
    let b = random_bytes(2500, 11);
    let b_digest = push_blob(&c, &s, APP, &b).await;
    drop(s.stop().await);
    let s = serve(&root).await;

    let gate = s.store.liveness().hooks().arm(Point::Marked, None);
    let cleaner = s.cleaner.clone();
    let cycle = tokio::spawn(async move { cleaner.run_now(&options(false)).await });
    gate.arrived().await;
    // The cycle has judged B garbage. A client finds it and references it.
    let r = c
        .head(s.url(&format!("/v2/{APP}/blobs/{b_digest}")))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200, "B is there when the client asks");
    let config = br#"{"architecture":"amd64","os":"linux"}"#.to_vec();
    let config_digest = push_blob(&c, &s, APP, &config).await;
    let m = image_manifest((&config_digest, config.len()), &[(&b_digest, b.len())], "");
    put(&c, &s, APP, "n1", OCI_MANIFEST, &m).await;
    gate.release();
    let report = cycle.await.unwrap().expect("cycle");
    assert!(
        !report.removed.blobs.iter().any(|d| d == b_digest),
        "the cycle removed B: {:?}",
        report.removed
    );

    check_pulls(&s, &m, &b_digest, &b, "after the cycle").await;
    let app = RepoName::parse(APP).unwrap();
    let left = keys(&bucket).await;
    for key in [
        path_for(PathSpec::BlobData(&digest(&b_digest))),
        path_for(PathSpec::LayerLink(&app, &digest(&b_digest))),
    ] {
        assert!(left.contains(&key), "{key} is gone");
    }
    // A later cycle (on a restarted server: nothing pending) keeps it too: it is tagged.
    drop(s.stop().await);
    let s = serve(&root).await;
    s.cleaner
        .run_now(&options(false))
        .await
        .expect("later cycle");
    check_pulls(&s, &m, &b_digest, &b, "after a later cycle").await;
    drop(s);
    remove_root(&bucket).await;
}

/// A cycle on S3 holds the claims of a batch (the layer links of lone blobs, the first
/// of its batches to claim them) and has not deleted it yet; a client's `HEAD` of one
/// of those blobs waits for the batch and answers 404, as if the blob were absent,
/// rather than 200 for a blob about to go. The blob's pool object, which the `HEAD`
/// touched while the cycle ran, goes in the next cycle.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_head_meeting_a_batch_claim_waits_and_finds_the_blob_gone_on_s3() {
    let root = conformance::s3::fresh_root("gc-claim");
    let bucket = S3Driver::new(conformance::s3::config(&root)).unwrap();
    let s = serve(&root).await;
    let c = client();
    let mut lone = Vec::new();
    for seed in 20..24 {
        lone.push(push_blob(&c, &s, APP, &random_bytes(1000 + seed as usize, seed)).await);
    }
    drop(s.stop().await);
    let s = serve(&root).await;

    let b = digest(&lone[2]);
    let hooks = s.store.liveness().hooks();
    let claimed = hooks.arm(Point::Claimed, Some(b.clone()));
    let cleaner = s.cleaner.clone();
    let mut cycle = tokio::spawn(async move { cleaner.run_now(&options(false)).await });
    tokio::select! {
        _ = claimed.arrived() => {}
        r = &mut cycle => panic!("the cycle ended without claiming B: {r:?}"),
    }
    let waits = hooks.arm(Point::PinWaits, Some(b.clone()));
    let url = s.url(&format!("/v2/{APP}/blobs/{b}"));
    let mut head = tokio::spawn(async move { c.head(url).send().await.unwrap().status() });
    tokio::select! {
        _ = waits.arrived() => {}
        r = &mut head => {
            claimed.release(); // let the cycle end, so the runtime can stop
            panic!("the HEAD answered {r:?} while the batch held B's claim")
        }
    }
    waits.release();
    claimed.release();
    cycle.await.unwrap().expect("cycle");
    assert_eq!(head.await.unwrap(), 404, "the HEAD found B being removed");
    let app = RepoName::parse(APP).unwrap();
    assert!(
        !keys(&bucket)
            .await
            .contains(&path_for(PathSpec::LayerLink(&app, &b))),
        "B's link is still in the bucket"
    );
    s.cleaner
        .run_now(&options(false))
        .await
        .expect("next cycle");
    let left = keys(&bucket).await;
    assert!(
        left.iter().all(|k| !k.contains(b.hex())),
        "B is still in the bucket: {left:?}"
    );
    drop(s);
    remove_root(&bucket).await;
}

/// Retention's untagged policy runs on S3 (the collector's manifest pass, through the
/// maintenance queue): an untagged manifest older than `untagged_older_than` loses its
/// revision, a tagged one keeps it, and the blobs wait for the next collection.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retention_removes_untagged_manifests_on_s3() {
    let root = conformance::s3::fresh_root("gc-retention");
    let bucket = S3Driver::new(conformance::s3::config(&root)).unwrap();
    let policy = |c: &mut Config| {
        c.retention.images = vec![ImagePolicy {
            repositories: String::new(),
            keep_last: None,
            keep_tags: None,
            untagged_older_than: Some(Duration::ZERO),
        }]
    };
    let s = serve_with(&root, policy).await;
    let c = client();
    let (t, _) = image(&c, &s, APP, 30, None).await;
    let t_digest = put(&c, &s, APP, "v1", OCI_MANIFEST, &t).await;
    let (u, u_blobs) = image(&c, &s, APP, 31, None).await;
    let u_digest = put(&c, &s, APP, &digest_of(u.as_bytes()), OCI_MANIFEST, &u).await;
    drop(s.stop().await);
    let s = serve_with(&root, policy).await;

    let records = s.maintenance.run(vec![Task::Retention], "test").await;
    assert_eq!(records[0].outcome, Outcome::Ok, "{}", records[0].message);
    let app = RepoName::parse(APP).unwrap();
    let left = keys(&bucket).await;
    let revision = |d: &str| path_for(PathSpec::ManifestRevisionLink(&app, &digest(d)));
    assert!(
        !left.contains(&revision(&u_digest)),
        "the untagged revision stayed"
    );
    assert!(
        left.contains(&revision(&t_digest)),
        "the tagged revision went"
    );
    for (d, _) in &u_blobs {
        assert!(
            left.contains(&path_for(PathSpec::BlobData(&digest(d)))),
            "{d} went"
        );
    }
    assert_eq!(get(&s, APP, "manifests", "v1").await, (200, t.into_bytes()));
    assert_eq!(get(&s, APP, "manifests", &u_digest).await.0, 404);

    drop(s);
    remove_root(&bucket).await;
}
