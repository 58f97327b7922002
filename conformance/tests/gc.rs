//! Garbage collection scenarios against the real server and store: each test pushes
//! through the HTTP API, runs a cycle through the admin API (the same code the online
//! cleaner and the offline command run) and checks the files on disk and what pulls.

use conformance::*;
use gc::Report;
use registry::Digest;
use registry::names::RepoName;
use registry::storage::{PathSpec, path_for};

const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";

/// A server whose in-memory protection of unreferenced uploads is off, so only what
/// each test sets (grace) protects recent content.
async fn server() -> TestServer {
    TestServer::start_with(|c| {
        c.gc.pending_ttl = std::time::Duration::ZERO;
        c.gc.on_startup = false;
    })
    .await
}

async fn run_gc(s: &TestServer, dry_run: bool, remove_untagged: bool, grace: &str) -> Report {
    let (status, report) = s
        .admin(
            "POST",
            &format!(
                "/admin/gc?wait=true&dry_run={dry_run}&remove_untagged={remove_untagged}&grace={grace}"
            ),
        )
        .await;
    assert_eq!(status, 200, "{report}");
    serde_json::from_value(report).unwrap()
}

fn d(s: &str) -> Digest {
    s.parse().unwrap()
}

fn in_pool(s: &TestServer, digest: &str) -> bool {
    s.root()
        .join(path_for(PathSpec::BlobData(&d(digest))))
        .exists()
}

fn layer_linked(s: &TestServer, repo: &str, digest: &str) -> bool {
    let n = RepoName::parse(repo).unwrap();
    s.root()
        .join(path_for(PathSpec::LayerLink(&n, &d(digest))))
        .exists()
}

fn revision_linked(s: &TestServer, repo: &str, digest: &str) -> bool {
    let n = RepoName::parse(repo).unwrap();
    s.root()
        .join(path_for(PathSpec::ManifestRevisionLink(&n, &d(digest))))
        .exists()
}

async fn put_manifest(s: &TestServer, repo: &str, reference: &str, ct: &str, body: &str) {
    let r = client()
        .put(s.url(&format!("/v2/{repo}/manifests/{reference}")))
        .header("content-type", ct)
        .body(body.to_owned())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201, "{}", r.text().await.unwrap());
}

async fn delete(s: &TestServer, path: &str) {
    let r = client().delete(s.url(path)).send().await.unwrap();
    assert_eq!(r.status(), 202, "DELETE {path}");
}

/// Pulls a manifest and every blob it references; checks digests of what came back.
async fn pull_ok(s: &TestServer, repo: &str, reference: &str) {
    let c = client();
    let r = c
        .get(s.url(&format!("/v2/{repo}/manifests/{reference}")))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200, "pull {repo}:{reference}");
    let body = r.bytes().await.unwrap();
    let m: serde_json::Value = serde_json::from_slice(&body).unwrap();
    let mut blobs: Vec<String> = m["layers"]
        .as_array()
        .map(|l| {
            l.iter()
                .map(|x| x["digest"].as_str().unwrap().to_owned())
                .collect()
        })
        .unwrap_or_default();
    if let Some(cfg) = m["config"]["digest"].as_str() {
        blobs.push(cfg.to_owned());
    }
    for b in blobs {
        let r = c
            .get(s.url(&format!("/v2/{repo}/blobs/{b}")))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200, "blob {b} of {repo}:{reference}");
        assert_eq!(digest_of(&r.bytes().await.unwrap()), b);
    }
}

/// Pushes config + layers given as raw data; returns (manifest digest, body, blob digests).
async fn push_with_layers(
    s: &TestServer,
    repo: &str,
    reference: &str,
    config: &str,
    layers: &[Vec<u8>],
    extra: &str,
) -> (String, String, Vec<String>) {
    let c = client();
    let cd = push_blob(&c, s, repo, config.as_bytes()).await;
    let mut ds = Vec::new();
    for l in layers {
        ds.push(push_blob(&c, s, repo, l).await);
    }
    let refs: Vec<(&str, usize)> = ds
        .iter()
        .zip(layers)
        .map(|(d, l)| (d.as_str(), l.len()))
        .collect();
    let m = image_manifest((&cd, config.len()), &refs, extra);
    put_manifest(s, repo, reference, OCI_MANIFEST, &m).await;
    ds.push(cd);
    (digest_of(m.as_bytes()), m, ds)
}

#[tokio::test]
async fn gc_keeps_layer_shared_with_tagged_image() {
    let s = server().await;
    let shared = random_bytes(4000, 1);
    let only_b = random_bytes(3000, 2);
    let (_, _, a_blobs) = push_with_layers(
        &s,
        "team/a",
        "v1",
        r#"{"a":1}"#,
        std::slice::from_ref(&shared),
        "",
    )
    .await;
    let (b_digest, _, b_blobs) = push_with_layers(
        &s,
        "team/b",
        "v1",
        r#"{"b":1}"#,
        &[shared.clone(), only_b],
        "",
    )
    .await;
    delete(&s, &format!("/v2/team/b/manifests/{b_digest}")).await;
    let report = run_gc(&s, false, false, "0s").await;
    assert!(in_pool(&s, &a_blobs[0]), "shared layer removed");
    assert!(!in_pool(&s, &b_blobs[1]), "layer only b used was kept");
    assert!(!in_pool(&s, &b_blobs[2]), "config only b used was kept");
    assert!(!in_pool(&s, &b_digest), "deleted manifest blob was kept");
    assert!(report.blobs_removed >= 3);
    pull_ok(&s, "team/a", "v1").await;
}

#[tokio::test]
async fn gc_removes_orphan_blob_and_its_link() {
    let s = server().await;
    let c = client();
    let orphan = push_blob(&c, &s, "lonely", &random_bytes(5000, 3)).await;
    let (_, _, kept) =
        push_with_layers(&s, "lonely", "v1", "{}", &[random_bytes(100, 4)], "").await;
    let report = run_gc(&s, false, false, "0s").await;
    assert!(!in_pool(&s, &orphan));
    assert!(!layer_linked(&s, "lonely", &orphan));
    assert!(report.removed.blobs.contains(&orphan));
    assert_eq!(report.bytes_freed, 5000);
    for k in &kept {
        assert!(in_pool(&s, k) && layer_linked(&s, "lonely", k));
    }
    let r = c
        .head(s.url(&format!("/v2/lonely/blobs/{orphan}")))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 404);
}

#[tokio::test]
async fn gc_removes_layer_links_of_deleted_images_but_not_of_live_ones() {
    let s = server().await;
    let shared = random_bytes(2000, 5);
    let (live, _, live_blobs) = push_with_layers(
        &s,
        "x",
        "live",
        r#"{"l":1}"#,
        std::slice::from_ref(&shared),
        "",
    )
    .await;
    let (dead, _, dead_blobs) = push_with_layers(
        &s,
        "y",
        "dead",
        r#"{"d":1}"#,
        &[shared.clone(), random_bytes(10, 6)],
        "",
    )
    .await;
    delete(&s, &format!("/v2/y/manifests/{dead}")).await;
    run_gc(&s, false, false, "0s").await;
    // y's link to the shared layer goes even though the blob stays for x.
    assert!(!layer_linked(&s, "y", &dead_blobs[0]));
    assert!(in_pool(&s, &dead_blobs[0]));
    assert!(layer_linked(&s, "x", &live_blobs[0]));
    assert!(revision_linked(&s, "x", &live));
    pull_ok(&s, "x", "live").await;
}

#[tokio::test]
async fn gc_keeps_untagged_manifest_without_remove_untagged_and_removes_it_with() {
    let s = server().await;
    let (old, _, old_blobs) =
        push_with_layers(&s, "r", "v1", r#"{"v":1}"#, &[random_bytes(700, 7)], "").await;
    let (new, _, _) =
        push_with_layers(&s, "r", "v1", r#"{"v":2}"#, &[random_bytes(800, 8)], "").await;
    let report = run_gc(&s, false, false, "0s").await;
    assert_eq!(report.manifests_removed, 0);
    assert!(revision_linked(&s, "r", &old) && in_pool(&s, &old_blobs[0]));
    pull_ok(&s, "r", &old).await;

    let report = run_gc(&s, false, true, "0s").await;
    assert_eq!(
        report.removed.manifests.to_strings(),
        vec![format!("r@{old}")]
    );
    assert!(!revision_linked(&s, "r", &old));
    assert!(!in_pool(&s, &old) && !in_pool(&s, &old_blobs[0]));
    let r = client()
        .get(s.url(&format!("/v2/r/manifests/{old}")))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 404);
    assert!(revision_linked(&s, "r", &new));
    pull_ok(&s, "r", "v1").await;
}

/// An untagged sha512 revision goes with `-m`, and so do the entries naming it in tag
/// histories (written here by hand, as a tag once pointing at it would have left them),
/// while the tagged sha256 image and its history stay.
#[tokio::test]
async fn gc_removes_an_untagged_sha512_revision_and_its_tag_history_entries() {
    use sha2::Digest as _;
    let s = server().await;
    let (tagged, _, _) =
        push_with_layers(&s, "r", "v1", r#"{"v":1}"#, &[random_bytes(700, 7)], "").await;
    let c = client();
    let cfg = push_blob(&c, &s, "r", b"{}").await;
    let m = image_manifest((&cfg, 2), &[], "");
    let old = format!("sha512:{}", hex::encode(sha2::Sha512::digest(m.as_bytes())));
    put_manifest(&s, "r", &old, OCI_MANIFEST, &m).await;
    let n = RepoName::parse("r").unwrap();
    let tag = registry::names::Tag::parse("v1").unwrap();
    let entry = |digest: &str| {
        s.root()
            .join(path_for(PathSpec::TagIndexLink(&n, &tag, &d(digest))))
    };
    let history = entry(&old);
    std::fs::create_dir_all(history.parent().unwrap()).unwrap();
    std::fs::write(&history, &old).unwrap();
    assert!(entry(&tagged).exists());

    let report = run_gc(&s, false, true, "0s").await;
    assert_eq!(
        report.removed.manifests.to_strings(),
        vec![format!("r@{old}")]
    );
    assert!(!revision_linked(&s, "r", &old) && !in_pool(&s, &old));
    assert!(!history.exists(), "the sha512 history entry is still there");
    assert!(!history.parent().unwrap().exists());
    assert!(entry(&tagged).exists() && revision_linked(&s, "r", &tagged));
    pull_ok(&s, "r", "v1").await;
}

/// Pushes an image manifest by digest (untagged); returns (digest, blob digests).
async fn push_untagged(
    s: &TestServer,
    repo: &str,
    seed: u64,
    extra: &str,
) -> (String, Vec<String>) {
    let c = client();
    let config = format!(r#"{{"seed":{seed}}}"#);
    let cd = push_blob(&c, s, repo, config.as_bytes()).await;
    let layer = random_bytes(600 + seed as usize, seed);
    let ld = push_blob(&c, s, repo, &layer).await;
    let m = image_manifest((&cd, config.len()), &[(&ld, layer.len())], extra);
    let digest = digest_of(m.as_bytes());
    put_manifest(s, repo, &digest, OCI_MANIFEST, &m).await;
    (digest, vec![ld, cd])
}

#[tokio::test]
async fn gc_keeps_untagged_platform_manifests_of_tagged_index() {
    let s = server().await;
    let (amd, amd_blobs) = push_untagged(&s, "multi", 11, "").await;
    let (arm, arm_blobs) = push_untagged(&s, "multi", 12, "").await;
    let (stray, stray_blobs) = push_untagged(&s, "multi", 13, "").await;
    let index = format!(
        r#"{{"schemaVersion":2,"mediaType":"{OCI_INDEX}","manifests":[{{"mediaType":"{OCI_MANIFEST}","digest":"{amd}","size":1,"platform":{{"architecture":"amd64","os":"linux"}}}},{{"mediaType":"{OCI_MANIFEST}","digest":"{arm}","size":1,"platform":{{"architecture":"arm64","os":"linux"}}}}]}}"#
    );
    put_manifest(&s, "multi", "latest", OCI_INDEX, &index).await;
    let report = run_gc(&s, false, true, "0s").await;
    assert_eq!(
        report.removed.manifests.to_strings(),
        vec![format!("multi@{stray}")]
    );
    for dgst in [&amd, &arm] {
        assert!(revision_linked(&s, "multi", dgst));
        pull_ok(&s, "multi", dgst).await;
    }
    for b in amd_blobs.iter().chain(&arm_blobs) {
        assert!(in_pool(&s, b));
    }
    for b in &stray_blobs {
        assert!(!in_pool(&s, b));
    }
}

#[tokio::test]
async fn gc_keeps_referrer_while_subject_lives_and_removes_it_with_subject() {
    let s = server().await;
    let (subject, _, subject_blobs) = push_with_layers(
        &s,
        "signed",
        "v1",
        r#"{"s":1}"#,
        &[random_bytes(900, 21)],
        "",
    )
    .await;
    let extra = format!(
        r#","artifactType":"application/vnd.example.signature","subject":{{"mediaType":"{OCI_MANIFEST}","digest":"{subject}","size":1}}"#
    );
    let (sig, sig_blobs) = push_untagged(&s, "signed", 22, &extra).await;
    let report = run_gc(&s, false, true, "0s").await;
    assert_eq!(report.manifests_removed, 0, "{:?}", report.removed);
    assert!(revision_linked(&s, "signed", &sig));
    let r = client()
        .get(s.url(&format!("/v2/signed/referrers/{subject}")))
        .send()
        .await
        .unwrap();
    let v: serde_json::Value = r.json().await.unwrap();
    assert_eq!(v["manifests"][0]["digest"], sig.as_str());

    delete(&s, "/v2/signed/manifests/v1").await; // the tag only: subject now untagged
    let report = run_gc(&s, false, true, "0s").await;
    let mut removed = report.removed.manifests.to_strings();
    removed.sort();
    let mut want = vec![format!("signed@{subject}"), format!("signed@{sig}")];
    want.sort();
    assert_eq!(removed, want);
    for b in subject_blobs.iter().chain(&sig_blobs) {
        assert!(!in_pool(&s, b), "{b} kept");
    }
    let r = client()
        .get(s.url(&format!("/v2/signed/referrers/{subject}")))
        .send()
        .await
        .unwrap();
    let v: serde_json::Value = r.json().await.unwrap();
    assert_eq!(v["manifests"].as_array().map(Vec::len), Some(0));
}

#[tokio::test]
async fn gc_grace_period_protects_a_fresh_unreferenced_blob() {
    let s = server().await;
    let c = client();
    let fresh = push_blob(&c, &s, "g", &random_bytes(1234, 31)).await;
    let report = run_gc(&s, false, false, "1h").await;
    assert!(in_pool(&s, &fresh) && layer_linked(&s, "g", &fresh));
    assert_eq!(report.blobs_removed, 0);
    run_gc(&s, false, false, "0s").await;
    assert!(!in_pool(&s, &fresh));
}

#[tokio::test]
async fn gc_dry_run_deletes_nothing_and_plans_exactly_what_the_real_run_removes() {
    let s = server().await;
    let c = client();
    push_with_layers(&s, "d", "keep", r#"{"k":1}"#, &[random_bytes(100, 41)], "").await;
    let (gone, _, _) =
        push_with_layers(&s, "d", "gone", r#"{"g":1}"#, &[random_bytes(100, 42)], "").await;
    push_with_layers(&s, "d", "gone", r#"{"g":2}"#, &[random_bytes(100, 43)], "").await;
    push_blob(&c, &s, "e", &random_bytes(100, 44)).await;
    let _ = gone;
    let before = file_list(s.root());
    let plan = run_gc(&s, true, true, "0s").await;
    assert!(plan.dry_run);
    assert_eq!(file_list(s.root()), before, "dry run changed the store");
    assert!(
        plan.manifests_removed == 1 && plan.blobs_removed >= 4 && plan.layer_links_removed >= 3
    );
    let real = run_gc(&s, false, true, "0s").await;
    assert_eq!(real.removed.manifests, plan.removed.manifests);
    assert_eq!(real.removed.layer_links, plan.removed.layer_links);
    assert_eq!(real.removed.blobs, plan.removed.blobs);
    assert_eq!(real.bytes_freed, plan.bytes_freed);
    pull_ok(&s, "d", "keep").await;
    pull_ok(&s, "d", "gone").await;
}

fn file_list(root: &std::path::Path) -> Vec<String> {
    let mut out = Vec::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(p) = stack.pop() {
        for e in std::fs::read_dir(&p).unwrap().flatten() {
            let path = e.path();
            if path.is_dir() {
                stack.push(path);
            } else {
                out.push(path.strip_prefix(root).unwrap().display().to_string());
            }
        }
    }
    out.retain(|p| !p.starts_with("drydock/"));
    out.sort();
    out
}

#[tokio::test]
async fn gc_in_server_keeps_blobs_of_a_push_whose_manifest_comes_later() {
    // Default pending protection on, grace 0: cycles between blob upload and manifest
    // put must not take the blobs.
    let s = TestServer::start_with(|c| c.gc.on_startup = false).await;
    let c = client();
    let config = br#"{"late":1}"#;
    let cd = push_blob(&c, &s, "late", config).await;
    let layer = random_bytes(3000, 51);
    let ld = push_blob(&c, &s, "late", &layer).await;
    for _ in 0..3 {
        let report = run_gc(&s, false, true, "0s").await;
        assert_eq!(report.blobs_removed, 0);
    }
    let m = image_manifest((&cd, config.len()), &[(&ld, layer.len())], "");
    put_manifest(&s, "late", "v1", OCI_MANIFEST, &m).await;
    pull_ok(&s, "late", "v1").await;
}

#[tokio::test]
async fn delete_schedules_a_cycle_without_waiting_for_it() {
    let s = TestServer::start_with(|c| c.gc.on_startup = false).await;
    let c = client();
    let (dgst, _) = push_image(&c, &s, "trig", "v1", 61, 1).await;
    let (_, before) = s.admin("GET", "/admin/gc").await;
    assert_eq!(before["cycles"], 0);
    delete(&s, &format!("/v2/trig/manifests/{dgst}")).await;
    let mut cycles = 0;
    for _ in 0..100 {
        let (_, st) = s.admin("GET", "/admin/gc").await;
        cycles = st["cycles"].as_u64().unwrap_or(0);
        if cycles >= 1 {
            assert!(st["last"]["repositories"].as_u64().is_some());
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    assert!(cycles >= 1, "no cycle ran after DELETE");
    let (status, _) = s.admin("POST", "/admin/gc").await;
    assert_eq!(status, 202);
}
