//! The maintenance tasks on S3 (issue 18), each against an in-process server on a root of
//! its own in the Ceph RGW bucket that `scripts/rgw.sh` starts (the `DRYDOCK_TEST_S3_*`
//! variables; without them these tests fail, never skip): the upload purge with the
//! sessions' multipart uploads and the orphans a crash leaves, the scrub's streamed
//! re-hash and quarantine, and the scheduler's records and anchor in the bucket. What a
//! task removes is checked key by key (and upload by upload) in the bucket. Races are
//! driven with `registry::hooks`. Each test removes its root at the end.

use std::collections::BTreeSet;
use std::time::{Duration, SystemTime};

use conformance::s3::{bucket, keys, remove_root};
use conformance::{TestServer, client};
use gc::maintenance::{Maintenance, Outcome, Record, Task};
use registry::config::Config;
use registry::hooks::Point;
use registry::names::RepoName;
use registry::storage::s3::S3Driver;
use registry::storage::{Driver, PathSpec, PutMode, path_for};

/// A server on the bucket root `root` that runs maintenance only when told to.
async fn serve(root: &str, adjust: impl FnOnce(&mut Config)) -> TestServer {
    let s3 = conformance::s3::config(root);
    TestServer::start_with(move |c: &mut Config| {
        c.storage.s3 = Some(s3);
        c.gc.on_startup = false;
        c.maintenance.enabled = false;
        c.storage.delete.enabled = true;
        adjust(c);
    })
    .await
}

/// Runs one task on `m` (a dry run when asked), expecting it to succeed.
async fn run(m: &Maintenance, task: Task, dry_run: bool) -> Record {
    let r = m.run_with(vec![task], "test", dry_run).await.remove(0);
    assert_eq!(r.outcome, Outcome::Ok, "{task:?}: {}", r.message);
    r
}

/// The strings of a summary's list, sorted.
fn listed(r: &Record, key: &str) -> BTreeSet<String> {
    r.summary[key]
        .as_array()
        .unwrap_or_else(|| panic!("{key} in {}", r.summary))
        .iter()
        .map(|v| v.as_str().unwrap().to_owned())
        .collect()
}

/// The keys of the multipart uploads in progress below the root.
async fn multipart_keys(b: &S3Driver) -> BTreeSet<String> {
    b.multipart_uploads("")
        .await
        .unwrap()
        .into_iter()
        .map(|(k, _, _)| k)
        .collect()
}

/// Starts an upload session in `repo` (with `bytes` PATCHed when not empty); its id.
async fn session(c: &reqwest::Client, s: &TestServer, repo: &str, bytes: usize) -> String {
    let r = c
        .post(s.url(&format!("/v2/{repo}/blobs/uploads/")))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 202);
    let location = r.headers()["location"].to_str().unwrap().to_owned();
    if bytes > 0 {
        patch(c, s, &location, bytes).await;
    }
    location.rsplit('/').next().unwrap().to_owned()
}

async fn patch(c: &reqwest::Client, s: &TestServer, location: &str, bytes: usize) {
    let r = c
        .patch(s.url(location))
        .body(vec![7u8; bytes])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 202);
}

fn location(repo: &str, id: &str) -> String {
    format!("/v2/{repo}/blobs/uploads/{id}")
}

/// The upload purge on S3: a session's activity is judged on its writer's state (a
/// `startedat` days old does not make a session that wrote a minute ago idle); an idle
/// session goes with its keys and its multipart upload; a multipart upload no session
/// owns (its keys gone in a crash) is aborted once old; a session written to after the
/// task listed it stays (the task is paused there); and a dry run plans what the real
/// run does.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_upload_purge_on_s3_removes_idle_sessions_their_multipart_uploads_and_orphans() {
    const REPO: &str = "s3purge/app";
    let root = conformance::s3::fresh_root("maint-uploads");
    let b = bucket(&root);
    let s = serve(&root, |c| c.uploads.max_age = Duration::from_secs(3600)).await;
    let c = client();
    let repo = RepoName::parse(REPO).unwrap();
    let a = session(&c, &s, REPO, 100).await;
    let bb = session(&c, &s, REPO, 100).await;
    let cc = session(&c, &s, REPO, 0).await;
    let orphan = session(&c, &s, REPO, 100).await;
    // A crash after the session's keys went and before its multipart upload did.
    b.delete(&path_for(PathSpec::UploadDir(&repo, &orphan)))
        .await
        .unwrap();
    let data = |id: &str| path_for(PathSpec::UploadData(&repo, id));
    assert_eq!(
        multipart_keys(&b).await,
        [&a, &bb, &cc, &orphan].iter().map(|i| data(i)).collect(),
        "every session holds a multipart upload"
    );
    // `a` says it started three days ago; it wrote just now.
    let old = time::OffsetDateTime::from(SystemTime::now() - Duration::from_secs(3 * 86_400))
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap();
    b.put(
        &path_for(PathSpec::UploadStartedAt(&repo, &a)),
        old.into(),
        PutMode::Overwrite,
    )
    .await
    .unwrap();

    // An hour's age: everything is young, nothing goes.
    for dry_run in [true, false] {
        let r = run(&s.maintenance, Task::Uploads, dry_run).await;
        assert!(listed(&r, "removed").is_empty(), "{}", r.summary);
        assert!(listed(&r, "aborted").is_empty(), "{}", r.summary);
        assert_eq!(r.summary["kept"], 3);
    }
    assert_eq!(multipart_keys(&b).await.len(), 4);

    // No age at all: every session is idle, the orphan is old.
    let mut config = s.config.clone();
    config.uploads.max_age = Duration::ZERO;
    let m = Maintenance::new(s.store.clone(), config, None);
    let plan = run(&m, Task::Uploads, true).await;
    let name = |id: &str| format!("{REPO}/{id}");
    assert_eq!(
        listed(&plan, "removed"),
        [&a, &bb, &cc].iter().map(|i| name(i)).collect()
    );
    assert_eq!(listed(&plan, "aborted"), BTreeSet::from([data(&orphan)]));
    assert_eq!(multipart_keys(&b).await.len(), 4, "a dry run aborted");

    // `bb` writes after the listing: it stays; the rest goes as planned.
    let gate = s.store.liveness().hooks().arm(Point::UploadsListed, None);
    let purge = tokio::spawn({
        let m = m.clone();
        async move { run(&m, Task::Uploads, false).await }
    });
    gate.arrived().await;
    patch(&c, &s, &location(REPO, &bb), 50).await;
    gate.release();
    let r = purge.await.unwrap();
    assert_eq!(
        listed(&r, "removed"),
        [&a, &cc].iter().map(|i| name(i)).collect()
    );
    assert_eq!(r.summary["kept"], 1, "{}", r.summary);
    assert_eq!(listed(&r, "aborted"), listed(&plan, "aborted"));
    assert_eq!(multipart_keys(&b).await, BTreeSet::from([data(&bb)]));
    let uploads = path_for(PathSpec::UploadsDir(&repo));
    let left: BTreeSet<String> = keys(&b)
        .await
        .into_iter()
        .filter_map(|k| k.strip_prefix(&format!("{uploads}/")).map(str::to_owned))
        .filter_map(|k| k.split('/').next().map(str::to_owned))
        .collect();
    assert_eq!(
        left,
        BTreeSet::from([bb.clone()]),
        "keys of removed sessions"
    );
    for (id, status) in [(&a, 404), (&cc, 404), (&bb, 204)] {
        let r = c.get(s.url(&location(REPO, id))).send().await.unwrap();
        assert_eq!(r.status(), status, "{id}");
    }
    let r = c.get(s.url(&location(REPO, &bb))).send().await.unwrap();
    assert_eq!(
        r.headers()["range"],
        "0-149",
        "the raced session lost bytes"
    );

    // Nothing races now: the plan and the run are the same.
    let plan = run(&m, Task::Uploads, true).await;
    let r = run(&m, Task::Uploads, false).await;
    assert_eq!(listed(&plan, "removed"), BTreeSet::from([name(&bb)]));
    assert_eq!(listed(&r, "removed"), listed(&plan, "removed"));
    assert!(multipart_keys(&b).await.is_empty());
    assert!(
        keys(&b).await.iter().all(|k| !k.starts_with(&uploads)),
        "{:?}",
        keys(&b).await
    );
    drop(s);
    remove_root(&root).await;
}

/// The scrub on S3: every pool blob is streamed through the driver and re-hashed; a
/// corrupt one that a write holds (a manifest PUT paused after it pinned and checked its
/// layers) stays where it is; a dry run reports what the run does; the run moves it to
/// `drydock/quarantine/…/data` in the bucket, bytes intact, reports the layer link left
/// dangling, and a push of the right bytes heals the image.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_scrub_on_s3_quarantines_a_corrupt_blob_unless_a_write_holds_it() {
    const REPO: &str = "s3scrub/img";
    let root = conformance::s3::fresh_root("maint-scrub");
    let b = bucket(&root);
    let s = serve(&root, |c| c.storage.redirect.disable = true).await;
    let c = client();
    let config = br#"{"architecture":"amd64","os":"linux"}"#;
    let layer = conformance::random_bytes(3 << 20, 11);
    let config_digest = conformance::push_blob(&c, &s, REPO, config).await;
    let layer_digest = conformance::push_blob(&c, &s, REPO, &layer).await;
    let manifest = conformance::image_manifest(
        (&config_digest, config.len()),
        &[(&layer_digest, layer.len())],
        "",
    );
    let d: registry::Digest = layer_digest.parse().unwrap();
    let pool_key = path_for(PathSpec::BlobData(&d));
    let mut bad = layer.clone();
    bad[2 << 20] ^= 0xff;
    b.put(&pool_key, bad.clone().into(), PutMode::Overwrite)
        .await
        .unwrap();

    // A manifest PUT holds the layer (pinned, checked, its link not yet written).
    let gate = s.store.liveness().hooks().arm(Point::Checked, None);
    let put = tokio::spawn({
        let (c, url, manifest) = (
            c.clone(),
            s.url(&format!("/v2/{REPO}/manifests/v1")),
            manifest.clone(),
        );
        async move {
            c.put(url)
                .header("content-type", "application/vnd.oci.image.manifest.v1+json")
                .body(manifest)
                .send()
                .await
                .unwrap()
                .status()
        }
    });
    gate.arrived().await;
    let r = run(&s.maintenance, Task::Scrub, false).await;
    let corrupt = r.summary["corrupt"].as_array().unwrap();
    assert_eq!(corrupt.len(), 1, "{}", r.summary);
    assert_eq!(corrupt[0]["digest"], layer_digest.as_str());
    assert!(corrupt[0]["quarantined_to"].is_null(), "{}", r.summary);
    assert_eq!(b.get(&pool_key).await.unwrap().0, bad, "a held blob moved");
    gate.release();
    assert_eq!(put.await.unwrap(), 201);

    let plan = run(&s.maintenance, Task::Scrub, true).await;
    assert_eq!(plan.summary["corrupt"][0]["digest"], layer_digest.as_str());
    assert!(plan.summary["corrupt"][0]["quarantined_to"].is_null());
    assert!(b.stat(&pool_key).await.is_ok(), "a dry run moved the blob");
    let r = run(&s.maintenance, Task::Scrub, false).await;
    assert_eq!(r.summary["blobs_checked"], 3, "{}", r.summary);
    assert_eq!(r.summary["bytes_checked"], plan.summary["bytes_checked"]);
    assert_eq!(r.summary["corrupt"][0]["digest"], layer_digest.as_str());
    let moved = r.summary["corrupt"][0]["quarantined_to"]
        .as_str()
        .unwrap_or_else(|| panic!("{}", r.summary))
        .to_owned();
    assert!(
        moved.starts_with(&format!("drydock/quarantine/sha256/{}-", d.hex())),
        "{moved}"
    );
    assert_eq!(
        b.get(&format!("{moved}/data")).await.unwrap().0,
        bad,
        "quarantine lost the bytes"
    );
    assert!(
        b.stat(&pool_key).await.is_err(),
        "the corrupt blob stayed in the pool"
    );
    assert_eq!(
        r.summary["dangling_layer_links"],
        serde_json::json!([format!("{REPO}@{layer_digest}")])
    );
    let head = |digest: String| {
        let (c, url) = (c.clone(), s.url(&format!("/v2/{REPO}/blobs/{digest}")));
        async move { c.head(url).send().await.unwrap().status() }
    };
    assert_eq!(head(layer_digest.clone()).await, 404);

    // The right bytes again heal it.
    conformance::push_blob(&c, &s, REPO, &layer).await;
    let got = c
        .get(s.url(&format!("/v2/{REPO}/blobs/{layer_digest}")))
        .send()
        .await
        .unwrap()
        .bytes()
        .await
        .unwrap();
    assert_eq!(conformance::digest_of(&got), layer_digest);
    let again = run(&s.maintenance, Task::Scrub, false).await;
    assert!(
        again.summary["corrupt"].as_array().unwrap().is_empty(),
        "{}",
        again.summary
    );
    assert!(
        again.summary["dangling_layer_links"]
            .as_array()
            .unwrap()
            .is_empty()
    );
    drop(s);
    remove_root(&root).await;
}

/// The scheduler on S3: when it began (its anchor) and every run's record are keys under
/// the bucket root, so a restarted server reads them back: its status lists the runs, a
/// task that never ran waits a period from the first start, the anchor keeps the first
/// start's time, and a task whose last run is a period old is due. With
/// `maintenance.enabled` the server runs it by itself.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn maintenance_records_and_schedule_live_in_the_bucket() {
    let root = conformance::s3::fresh_root("maint-records");
    let b = bucket(&root);
    let record_key = path_for(PathSpec::MaintenanceRecord("uploads"));
    let anchor_key = path_for(PathSpec::MaintenanceAnchor);
    let s = serve(&root, |_| {}).await;
    let m = &s.maintenance;
    assert_eq!(
        m.due(None, false).await,
        m.enabled_tasks(),
        "a root no server scheduled: every task is due"
    );
    m.begin_schedule().await;
    assert_eq!(m.due(None, false).await, Vec::<Task>::new());
    let anchor = b
        .get(&anchor_key)
        .await
        .expect("the anchor in the bucket")
        .0;
    let ran = run(m, Task::Uploads, false).await;
    let stored: Record =
        serde_json::from_slice(&b.get(&record_key).await.expect("the record").0).unwrap();
    assert_eq!(stored.started_at, ran.started_at);
    drop(s.stop().await);

    // Another server on the root (a restart) reads both back.
    let s = serve(&root, |_| {}).await;
    let m = &s.maintenance;
    let last = m.status().await.last;
    assert_eq!(last.len(), 1, "{last:?}");
    assert_eq!(
        (last[0].task, &last[0].started_at),
        (Task::Uploads, &ran.started_at)
    );
    assert_eq!(
        m.due(None, false).await,
        Vec::<Task>::new(),
        "a restart made tasks due"
    );
    m.begin_schedule().await;
    assert_eq!(
        b.get(&anchor_key).await.unwrap().0,
        anchor,
        "a restart moved the start"
    );
    let mut old = stored.clone();
    old.started_unix -= 3601.0;
    b.put(
        &record_key,
        serde_json::to_vec(&old).unwrap().into(),
        PutMode::Overwrite,
    )
    .await
    .unwrap();
    assert_eq!(m.due(None, false).await, vec![Task::Uploads]);
    drop(s.stop().await);

    // The scheduler itself, on the bucket: it runs the due task and records it there.
    let s = serve(&root, |c| {
        c.maintenance.enabled = true;
        c.maintenance.tick = Duration::from_millis(100);
    })
    .await;
    let next = tokio::time::timeout(Duration::from_secs(60), async {
        loop {
            if let Ok((bytes, _)) = b.get(&record_key).await
                && let Ok(r) = serde_json::from_slice::<Record>(&bytes)
                && r.started_at != ran.started_at
            {
                return r;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await
    .expect("the scheduler ran the due task within a minute");
    assert_eq!(
        (next.trigger.as_str(), next.outcome),
        ("schedule", Outcome::Ok),
        "{}",
        next.message
    );
    drop(s);
    remove_root(&root).await;
}
