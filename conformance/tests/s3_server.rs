//! The real server binary on `storage.s3`, against the Ceph RGW that `scripts/test.sh`
//! starts (`scripts/rgw.sh`; the same `DRYDOCK_TEST_S3_*` variables as the driver suite).
//! Without them these tests fail: they are never skipped. Each test works under a root
//! directory of its own in the bucket and removes it at the end.

mod clients;

use std::path::Path;

use conformance::{ServerProcess, digest_of, image_manifest, random_bytes, registry_binary};
use registry::storage::s3::S3Driver;
use registry::storage::{Driver, PathSpec, path_for};

const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
const MIB: usize = 1 << 20;

use conformance::s3::{bucket, keys, var, yaml_with_secret as s3_yaml};

/// A fresh root directory name in the bucket.
fn fresh_root(what: &str) -> String {
    conformance::s3::fresh_root(&format!("server-{what}"))
}

/// The real binary serving a fresh root in the bucket (its config file lives in the
/// returned folder).
fn serve(what: &str) -> (String, tempfile::TempDir, ServerProcess) {
    let root = fresh_root(what);
    let dir = tempfile::tempdir().unwrap();
    let yaml = s3_yaml(&root, &var("DRYDOCK_TEST_S3_SECRET_KEY"));
    let server = ServerProcess::spawn(&write_config(dir.path(), &yaml));
    (root, dir, server)
}

fn write_config(dir: &Path, yaml: &str) -> std::path::PathBuf {
    let cfg = dir.join("config.yml");
    std::fs::write(&cfg, yaml).unwrap();
    cfg
}

async fn json(c: &reqwest::Client, url: &str) -> serde_json::Value {
    let r = c.get(url).send().await.unwrap();
    assert_eq!(r.status(), 200, "{url}");
    r.json().await.unwrap()
}

async fn status(r: reqwest::RequestBuilder) -> u16 {
    r.send().await.unwrap().status().as_u16()
}

/// Completes the upload at `at` with `digest` (201).
async fn complete(c: &reqwest::Client, at: &str, digest: &str) {
    let sep = if at.contains('?') { '&' } else { '?' };
    let r = c
        .put(format!("{at}{sep}digest={digest}"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201, "{}", r.text().await.unwrap());
}

/// Writes the root's lock object as a dead server's that has expired (what 30 s after
/// a kill -9 leaves).
async fn expire_lock(b: &S3Driver) {
    let expired = br#"{"owner":"a-dead-server","expires":1}"#;
    b.put(
        &path_for(PathSpec::ServerLock),
        expired.to_vec().into(),
        registry::storage::PutMode::Overwrite,
    )
    .await
    .unwrap();
}

fn loc(server: &ServerProcess, r: &reqwest::Response) -> String {
    let l = r.headers()["location"].to_str().unwrap().to_owned();
    if l.starts_with("http") {
        l
    } else {
        server.url(&l)
    }
}

/// A config blob pushed monolithically through `s`: its bytes and digest.
async fn push_config(c: &reqwest::Client, s: &ServerProcess, repo: &str) -> (Vec<u8>, String) {
    let config = br#"{"architecture":"amd64","os":"linux"}"#.to_vec();
    let digest = digest_of(&config);
    let r = c
        .post(s.url(&format!("/v2/{repo}/blobs/uploads/?digest={digest}")))
        .header("content-type", "application/octet-stream")
        .body(config.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201, "{}", r.text().await.unwrap());
    (config, digest)
}

/// `layer` (7 MiB) pushed in two chunks (3 and 4 MiB; 5 MiB parts: two parts of a
/// multipart upload), its POST, two PATCHes and PUT sent to `via` in turn: its digest.
async fn push_chunked(
    c: &reqwest::Client,
    via: [&ServerProcess; 4],
    repo: &str,
    layer: &[u8],
) -> String {
    let digest = digest_of(layer);
    let r = c
        .post(via[0].url(&format!("/v2/{repo}/blobs/uploads/")))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 202);
    let mut at = loc(via[0], &r);
    for (server, from, to) in [(via[1], 0, 3 * MIB), (via[2], 3 * MIB, 7 * MIB)] {
        let r = c
            .patch(on(server, &at))
            .header("content-type", "application/octet-stream")
            .header("content-range", format!("{from}-{}", to - 1))
            .body(layer[from..to].to_vec())
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 202, "{}", r.text().await.unwrap());
        assert_eq!(r.headers()["range"], format!("0-{}", to - 1).as_str());
        at = loc(server, &r);
    }
    let sep = if at.contains('?') { '&' } else { '?' };
    let r = c
        .put(format!("{}{sep}digest={digest}", on(via[3], &at)))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201, "{}", r.text().await.unwrap());
    digest
}

/// `manifest` put through `s` under the tag `v1`.
async fn put_manifest(c: &reqwest::Client, s: &ServerProcess, repo: &str, manifest: &str) {
    let r = c
        .put(s.url(&format!("/v2/{repo}/manifests/v1")))
        .header("content-type", OCI_MANIFEST)
        .body(manifest.to_owned())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201, "{}", r.text().await.unwrap());
}

/// Pushes, pulls and deletes an image through the real binary serving a bucket: a
/// monolithic blob, a chunked one spanning two S3 parts (multipart upload), a manifest
/// under a tag; everything lands under Distribution's keys in the bucket, reads (whole
/// and ranged) give back the bytes, the catalog and tag list follow, and deletes take
/// the links out of the bucket (the pool stays for a collector).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_server_pushes_pulls_and_deletes_on_s3() {
    let (root, _dir, server) = serve("workflow");
    let c = reqwest::Client::new();
    let repo = "s3/app";

    // A config blob, monolithic; a 7 MiB layer in two chunks; the manifest, under a tag.
    let (config, config_digest) = push_config(&c, &server, repo).await;
    let layer = random_bytes(7 * MIB, 18);
    let layer_digest = push_chunked(&c, [&server; 4], repo, &layer).await;
    let manifest = image_manifest(
        (&config_digest, config.len()),
        &[(&layer_digest, layer.len())],
        "",
    );
    let manifest_digest = digest_of(manifest.as_bytes());
    put_manifest(&c, &server, repo, &manifest).await;

    // In the bucket, under Distribution's keys.
    let b = bucket(&root);
    let stored = keys(&b).await;
    let d = |s: &str| s.parse::<registry::Digest>().unwrap();
    let name = registry::RepoName::parse(repo).unwrap();
    let tag = registry::Tag::parse("v1").unwrap();
    for want in [
        path_for(PathSpec::BlobData(&d(&layer_digest))),
        path_for(PathSpec::BlobData(&d(&config_digest))),
        path_for(PathSpec::BlobData(&d(&manifest_digest))),
        path_for(PathSpec::LayerLink(&name, &d(&layer_digest))),
        path_for(PathSpec::ManifestRevisionLink(&name, &d(&manifest_digest))),
        path_for(PathSpec::TagCurrentLink(&name, &tag)),
    ] {
        assert!(
            stored.contains(&want),
            "{want} not in the bucket: {stored:?}"
        );
    }
    assert_eq!(
        b.stat(&path_for(PathSpec::BlobData(&d(&layer_digest))))
            .await
            .unwrap()
            .size,
        layer.len() as u64
    );
    assert!(
        !stored.iter().any(|k| k.contains("/_uploads/")),
        "a completed upload left its session: {stored:?}"
    );
    assert!(b.multipart_uploads("").await.unwrap().is_empty());

    // Pulled back: the manifest by tag, the blobs whole and by range.
    let r = c
        .get(server.url(&format!("/v2/{repo}/manifests/v1")))
        .header("accept", OCI_MANIFEST)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(
        r.headers()["docker-content-digest"],
        manifest_digest.as_str()
    );
    assert_eq!(r.text().await.unwrap(), manifest);
    let r = c
        .get(server.url(&format!("/v2/{repo}/blobs/{layer_digest}")))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert!(
        r.bytes().await.unwrap() == layer,
        "the layer read back differs"
    );
    let r = c
        .get(server.url(&format!("/v2/{repo}/blobs/{layer_digest}")))
        .header("range", format!("bytes={}-{}", 5 * MIB - 3, 5 * MIB + 2))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 206);
    assert_eq!(
        &r.bytes().await.unwrap()[..],
        &layer[5 * MIB - 3..5 * MIB + 3]
    );
    let v = json(&c, &server.url("/v2/_catalog")).await;
    assert_eq!(v["repositories"], serde_json::json!([repo]));
    let v = json(&c, &server.url(&format!("/v2/{repo}/tags/list"))).await;
    assert_eq!(v["tags"], serde_json::json!(["v1"]));

    // Deleted: the manifest (with its tag) and the layer's link.
    let url = |p: String| server.url(&p);
    for u in [
        format!("/v2/{repo}/manifests/{manifest_digest}"),
        format!("/v2/{repo}/blobs/{layer_digest}"),
        format!("/v2/{repo}/blobs/{config_digest}"),
    ] {
        assert_eq!(status(c.delete(url(u))).await, 202);
    }
    let by_tag = c
        .get(url(format!("/v2/{repo}/manifests/v1")))
        .header("accept", OCI_MANIFEST);
    assert_eq!(status(by_tag).await, 404);
    let layer_head = c.head(url(format!("/v2/{repo}/blobs/{layer_digest}")));
    assert_eq!(status(layer_head).await, 404);
    let v = json(&c, &server.url("/v2/_catalog")).await;
    assert_eq!(v["repositories"], serde_json::json!([]));
    let left = keys(&b).await;
    assert!(
        !left.iter().any(|k| k.contains("/repositories/")),
        "links left in the bucket after the deletes: {left:?}"
    );
    drop(server);

    // Cleanup: the pool (what a collector would remove) and anything else.
    let all: Vec<String> = keys(&b).await;
    for r in b.delete_many(&all).await.unwrap() {
        r.unwrap();
    }
    assert!(keys(&b).await.is_empty());
}

/// A chunked upload that is cancelled (`DELETE` on its session) after a part went to
/// S3 leaves nothing in the bucket: not its keys, and not the multipart upload, which
/// no listing shows but the bucket keeps (and bills) until it is aborted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cancelled_upload_leaves_no_multipart_upload() {
    let (root, _dir, server) = serve("cancel");
    let c = reqwest::Client::new();
    let r = c
        .post(server.url("/v2/s3/cancel/blobs/uploads/"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 202);
    let at = loc(&server, &r);
    let r = c
        .patch(&at)
        .header("content-type", "application/octet-stream")
        .body(random_bytes(6 * MIB, 7))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 202, "{}", r.text().await.unwrap());
    let b = bucket(&root);
    assert_eq!(
        b.multipart_uploads("").await.unwrap().len(),
        1,
        "a 6 MiB chunk sends a 5 MiB part"
    );
    assert_eq!(status(c.delete(&at)).await, 204);
    assert!(b.multipart_uploads("").await.unwrap().is_empty());
    let left = keys(&b).await;
    assert!(
        left.iter().all(|k| k.starts_with("drydock/")),
        "only the server's own state (its lock) is left: {left:?}"
    );
    assert_eq!(status(c.get(&at)).await, 404);
    assert_eq!(status(c.delete(&at)).await, 404);
}

/// A chunked push whose server is killed (-9) after a part went to S3 continues on the
/// next server: the session, its multipart upload and its hash state are in the
/// bucket, the status says how much arrived, and the completed blob has every byte.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_chunked_push_continues_after_the_server_is_killed() {
    let (root, dir, mut first) = serve("killed");
    let c = reqwest::Client::new();
    let data = random_bytes(9 * MIB, 9);
    let digest = digest_of(&data);
    let r = c
        .post(first.url("/v2/s3/killed/blobs/uploads/"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 202);
    let path = r.headers()["location"].to_str().unwrap().to_owned();
    let r = c
        .patch(loc(&first, &r))
        .header("content-type", "application/octet-stream")
        .header("content-range", format!("0-{}", 6 * MIB - 1))
        .body(data[..6 * MIB].to_vec())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 202);
    first.kill();

    // The killed server's lock lasts until it expires: expire it, as 30 s would.
    let b = bucket(&root);
    expire_lock(&b).await;
    let yaml = s3_yaml(&root, &var("DRYDOCK_TEST_S3_SECRET_KEY"));
    let second = ServerProcess::spawn(&write_config(dir.path(), &yaml));
    let at = if path.starts_with("http") {
        path.replacen(&first.base, &second.base, 1)
    } else {
        second.url(&path)
    };
    let r = c.get(&at).send().await.unwrap();
    assert_eq!(r.status(), 204);
    assert_eq!(r.headers()["range"], format!("0-{}", 6 * MIB - 1).as_str());
    let r = c
        .patch(&at)
        .header("content-type", "application/octet-stream")
        .header("content-range", format!("{}-{}", 6 * MIB, 9 * MIB - 1))
        .body(data[6 * MIB..].to_vec())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 202, "{}", r.text().await.unwrap());
    let at = loc(&second, &r);
    complete(&c, &at, &digest).await;
    let r = c
        .get(second.url(&format!("/v2/s3/killed/blobs/{digest}")))
        .send()
        .await
        .unwrap();
    assert!(
        r.bytes().await.unwrap() == data,
        "the blob read back differs"
    );
    assert!(b.multipart_uploads("").await.unwrap().is_empty());
    drop(second);
    let all = keys(&b).await;
    for r in b.delete_many(&all).await.unwrap() {
        r.unwrap();
    }
}

/// A TCP forwarder from `listener` to `target` (the RGW): aborting the task it returns
/// drops the listener and every connection, as a bucket endpoint that went away.
fn forward(
    listener: tokio::net::TcpListener,
    target: std::net::SocketAddr,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut conns = tokio::task::JoinSet::new();
        while let Ok((mut inbound, _)) = listener.accept().await {
            conns.spawn(async move {
                if let Ok(mut out) = tokio::net::TcpStream::connect(target).await {
                    let _ = tokio::io::copy_bidirectional(&mut inbound, &mut out).await;
                }
            });
        }
    })
}

/// The bucket's endpoint goes away under a running server: storage requests answer 503
/// `UNAVAILABLE` and the log names the endpoint, `/v2/` and a manifest pulled before
/// (held in memory) still answer, a manifest push
/// that could not be written leaves nothing behind, and everything works again once the
/// endpoint is back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreachable_bucket_is_503_and_leaves_nothing_half_written() {
    let rgw: std::net::SocketAddr = var("DRYDOCK_TEST_S3_ENDPOINT")
        .trim_start_matches("http://")
        .parse()
        .expect("the RGW endpoint is http://<ip>:<port>");
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let front = listener.local_addr().unwrap();
    let proxy = forward(listener, rgw);
    let root = fresh_root("outage");
    let endpoint = format!("http://{front}");
    let yaml = s3_yaml(&root, &var("DRYDOCK_TEST_S3_SECRET_KEY")).replace(
        &format!("regionendpoint: {}", var("DRYDOCK_TEST_S3_ENDPOINT")),
        &format!("regionendpoint: {endpoint}"),
    );
    let dir = tempfile::tempdir().unwrap();
    let server = ServerProcess::spawn(&write_config(dir.path(), &yaml));
    let c = reqwest::Client::new();
    let blob = b"kept through an outage".to_vec();
    let digest = digest_of(&blob);
    let r = c
        .post(server.url(&format!("/v2/s3/outage/blobs/uploads/?digest={digest}")))
        .body(blob.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201);
    // A manifest pulled once before the outage (so the server holds it in memory).
    let before = image_manifest((&digest, blob.len()), &[], r#","annotations":{"a":"b"}"#);
    let put = c
        .put(server.url("/v2/s3/outage/manifests/before"))
        .header("content-type", OCI_MANIFEST)
        .body(before.clone());
    assert_eq!(status(put).await, 201);
    let pull_before = || {
        c.get(server.url("/v2/s3/outage/manifests/before"))
            .header("accept", OCI_MANIFEST)
    };
    assert_eq!(status(pull_before()).await, 200);

    proxy.abort();
    assert!(proxy.await.unwrap_err().is_cancelled());
    // Served from memory while the bucket is away.
    let r = pull_before().send().await.unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.text().await.unwrap(), before);
    let r = c
        .get(server.url(&format!("/v2/s3/outage/blobs/{digest}")))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 503);
    let body = r.text().await.unwrap();
    assert!(body.contains(r#""code":"UNAVAILABLE""#), "{body}");
    assert!(
        !body.contains(&endpoint),
        "the client is not told the endpoint: {body}"
    );
    assert!(
        server.wait_for_log("storage backend unavailable", 1)
            && server.log_text().contains(&format!("endpoint={endpoint}")),
        "{}",
        server.log_text()
    );
    let manifest = image_manifest((&digest, blob.len()), &[], "");
    let put = c
        .put(server.url("/v2/s3/outage/manifests/during"))
        .header("content-type", OCI_MANIFEST)
        .body(manifest.clone());
    assert_eq!(status(put).await, 503);
    assert_eq!(status(c.get(server.url("/v2/"))).await, 200);

    // Back on the same address.
    let proxy = forward(tokio::net::TcpListener::bind(front).await.unwrap(), rgw);
    let r = c
        .get(server.url(&format!("/v2/s3/outage/blobs/{digest}")))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.bytes().await.unwrap(), blob);
    let by_tag = c
        .get(server.url("/v2/s3/outage/manifests/during"))
        .header("accept", OCI_MANIFEST);
    assert_eq!(status(by_tag).await, 404, "the failed push left its tag");
    let b = bucket(&root);
    let m = digest_of(manifest.as_bytes()).parse().unwrap();
    let keys_now = keys(&b).await;
    assert!(
        !keys_now.contains(&path_for(PathSpec::BlobData(&m))),
        "the failed push left its manifest in the pool: {keys_now:?}"
    );
    drop(server);
    for r in b.delete_many(&keys_now).await.unwrap() {
        r.unwrap();
    }
    proxy.abort();
}

/// Runs `registry serve` on `yaml` expecting it to refuse to start; its stderr.
fn refused_start(yaml: &str) -> String {
    let dir = tempfile::tempdir().unwrap();
    let cfg = write_config(dir.path(), yaml);
    // `timeout` only guards against a server that would start and serve anyway.
    let out = std::process::Command::new("timeout")
        .arg("120")
        .arg(registry_binary())
        .arg("serve")
        .arg(&cfg)
        .env("RUST_LOG", "info")
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(!out.status.success(), "{stderr}");
    assert!(!stderr.contains("listening"), "{stderr}");
    stderr
}

/// Credentials the bucket refuses stop start-up with one line naming `storage.s3` and
/// the bucket; nothing is served.
#[test]
fn wrong_credentials_refuse_to_start() {
    let stderr = refused_start(&s3_yaml(&fresh_root("badkey"), "not-the-secret-key"));
    let bucket = var("DRYDOCK_TEST_S3_BUCKET");
    assert!(
        stderr.contains(&format!("Error: storage.s3: bucket {bucket}: ")),
        "{stderr}"
    );
}

/// One server per bucket root: a second one refuses to start, naming the holder; a
/// clean stop lets the next start at once; a server killed with -9 keeps the root until
/// its lock expires, and an expired lock is taken over.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_server_per_bucket_root() {
    let (root, _dir, mut first) = serve("lock");
    let yaml = s3_yaml(&root, &var("DRYDOCK_TEST_S3_SECRET_KEY"));
    let stderr = refused_start(&yaml);
    assert!(
        stderr.contains("is owned by another drydock process")
            && stderr.contains(&format!(":{}:", first.child.id())),
        "{stderr}"
    );
    assert!(first.terminate().success());

    // Stopped cleanly: the next server takes the root at once.
    let dir = tempfile::tempdir().unwrap();
    let mut second = ServerProcess::spawn(&write_config(dir.path(), &yaml));
    let c = reqwest::Client::new();
    assert_eq!(status(c.get(second.url("/v2/"))).await, 200);
    second.kill();
    // Killed: the lock outlives it until it expires.
    let stderr = refused_start(&yaml);
    assert!(
        stderr.contains(&format!(":{}:", second.child.id())),
        "{stderr}"
    );
    // Expired (as it will be 30 s after the kill): taken over.
    let b = bucket(&root);
    let key = path_for(PathSpec::ServerLock);
    expire_lock(&b).await;
    let mut third = ServerProcess::spawn(&write_config(dir.path(), &yaml));
    assert_eq!(status(c.get(third.url("/v2/"))).await, 200);
    let (held, _) = b.get(&key).await.unwrap();
    assert!(
        String::from_utf8_lossy(&held).contains(&format!(":{}:", third.child.id())),
        "the lock names the new holder"
    );
    assert!(third.terminate().success());
    let all = keys(&b).await;
    // (The readiness probe's object too, when the stop came while it was written; and
    // the maintenance schedule's start, which the first server on a root records.)
    let probe = path_for(PathSpec::HealthProbe);
    let anchor = path_for(PathSpec::MaintenanceAnchor);
    let state: Vec<&String> = all
        .iter()
        .filter(|k| **k != probe && **k != anchor)
        .collect();
    assert_eq!(state, [&key], "a clean stop leaves only the expired lock");
    let (held, _) = b.get(&key).await.unwrap();
    assert!(String::from_utf8_lossy(&held).contains(r#""expires":0"#));
    for r in b.delete_many(&all).await.unwrap() {
        r.unwrap();
    }
}

/// CNCF Distribution (Debian's `docker-registry`) serving the same bucket root, on a
/// free port, with its S3 driver (`AWS_CA_BUNDLE` unset: its driver panics on it).
async fn distribution_on(root: &str) -> (clients::Daemon, String, tempfile::TempDir) {
    clients::require("docker-registry");
    let dir = tempfile::tempdir().unwrap();
    let host = format!("127.0.0.1:{}", clients::free_port());
    let yaml = format!(
        "version: 0.1\nlog:\n  level: info\nstorage:\n  s3:\n    region: {}\n    \
         regionendpoint: {}\n    bucket: {}\n    rootdirectory: /{root}\n    \
         accesskey: {}\n    secretkey: {}\n    forcepathstyle: true\n    secure: false\n    \
         v4auth: true\n  delete:\n    enabled: true\n  redirect:\n    disable: true\n\
         http:\n  addr: {host}\n  secret: drydock-s3-interop\n",
        var("DRYDOCK_TEST_S3_REGION"),
        var("DRYDOCK_TEST_S3_ENDPOINT"),
        var("DRYDOCK_TEST_S3_BUCKET"),
        var("DRYDOCK_TEST_S3_ACCESS_KEY"),
        var("DRYDOCK_TEST_S3_SECRET_KEY"),
    );
    let cfg = write_config(dir.path(), &yaml);
    let cmd = clients::Cmd::new("env")
        .args(["-u", "AWS_CA_BUNDLE", "docker-registry", "serve"])
        .arg(&cfg);
    let mut daemon = clients::Daemon::spawn("docker-registry", &cmd, &dir.path().join("log"));
    let line = format!("listening on {host}");
    match clients::wait_ready(
        &mut daemon,
        &line,
        &host,
        std::time::Duration::from_secs(60),
    )
    .await
    {
        clients::Readiness::Ready => (daemon, host, dir),
        clients::Readiness::Exited(log) => panic!("docker-registry on S3 did not start: {log}"),
    }
}

/// Pushes a small image (a config, one layer) under `repo:tag` to `base` over plain
/// HTTP; returns the manifest and the blobs by digest.
async fn push_small_image(
    c: &reqwest::Client,
    base: &str,
    repo: &str,
    tag: &str,
    seed: u64,
) -> (String, Vec<(String, Vec<u8>)>) {
    let mut blobs = Vec::new();
    for (i, len) in [(0, 200), (1, 70_000)] {
        let data = random_bytes(len, seed * 10 + i);
        let d = digest_of(&data);
        // POST, then PUT with the body (Distribution 2.8 has no one-step POST).
        let r = c
            .post(format!("{base}/v2/{repo}/blobs/uploads/"))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 202, "{base}");
        let at = r.headers()["location"].to_str().unwrap().to_owned();
        let at = if at.starts_with("http") {
            at
        } else {
            format!("{base}{at}")
        };
        let sep = if at.contains('?') { '&' } else { '?' };
        let put = c
            .put(format!("{at}{sep}digest={d}"))
            .header("content-type", "application/octet-stream")
            .body(data.clone());
        assert_eq!(status(put).await, 201, "{base}: blob PUT");
        blobs.push((d, data));
    }
    let manifest = image_manifest(
        (&blobs[0].0, blobs[0].1.len()),
        &[(&blobs[1].0, blobs[1].1.len())],
        "",
    );
    let put = c
        .put(format!("{base}/v2/{repo}/manifests/{tag}"))
        .header("content-type", OCI_MANIFEST)
        .body(manifest.clone());
    assert_eq!(status(put).await, 201, "{base}: manifest PUT");
    (manifest, blobs)
}

/// `base` serves `repo:tag` as pushed: the manifest by tag (same digest), every blob.
async fn assert_serves(
    c: &reqwest::Client,
    base: &str,
    repo: &str,
    tag: &str,
    (manifest, blobs): &(String, Vec<(String, Vec<u8>)>),
) {
    let r = c
        .get(format!("{base}/v2/{repo}/manifests/{tag}"))
        .header("accept", OCI_MANIFEST)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200, "{base}: {repo}:{tag}");
    assert_eq!(
        r.headers()["docker-content-digest"],
        digest_of(manifest.as_bytes()).as_str()
    );
    assert_eq!(&r.text().await.unwrap(), manifest);
    for (d, data) in blobs {
        let r = c
            .get(format!("{base}/v2/{repo}/blobs/{d}"))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200, "{base}: {d}");
        assert!(r.bytes().await.unwrap() == *data, "{base}: {d} differs");
    }
}

/// One bucket root, both ways: what Distribution's S3 driver wrote, drydock serves
/// (manifest, blobs, tags, catalog); what drydock then writes beside it, Distribution
/// serves.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn distribution_and_drydock_serve_each_others_bucket() {
    let root = fresh_root("interop");
    let c = reqwest::Client::new();
    let (mut dist, host, _d) = distribution_on(&root).await;
    let from_dist = push_small_image(&c, &format!("http://{host}"), "interop/a", "v1", 1).await;
    dist.stop();

    let dir = tempfile::tempdir().unwrap();
    let yaml = s3_yaml(&root, &var("DRYDOCK_TEST_S3_SECRET_KEY"));
    let mut ours = ServerProcess::spawn(&write_config(dir.path(), &yaml));
    assert_serves(&c, &ours.base, "interop/a", "v1", &from_dist).await;
    let v = json(&c, &ours.url("/v2/interop/a/tags/list")).await;
    assert_eq!(v["tags"], serde_json::json!(["v1"]));
    let from_ours = push_small_image(&c, &ours.base, "interop/b", "v2", 2).await;
    let v = json(&c, &ours.url("/v2/_catalog")).await;
    assert_eq!(
        v["repositories"],
        serde_json::json!(["interop/a", "interop/b"])
    );
    assert!(ours.terminate().success());

    let (mut dist, host, _d) = distribution_on(&root).await;
    let base = format!("http://{host}");
    assert_serves(&c, &base, "interop/b", "v2", &from_ours).await;
    assert_serves(&c, &base, "interop/a", "v1", &from_dist).await;
    let v = json(&c, &format!("{base}/v2/_catalog")).await;
    assert_eq!(
        v["repositories"],
        serde_json::json!(["interop/a", "interop/b"])
    );
    dist.stop();
    let b = bucket(&root);
    let all = keys(&b).await;
    for r in b.delete_many(&all).await.unwrap() {
        r.unwrap();
    }
}

/// skopeo against the server on S3: an image and a multi-platform index (real tar
/// layers) go in and come back byte for byte, also after a copy (`--all`) between two
/// of its repositories.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn skopeo_round_trips_images_on_s3() {
    clients::require("skopeo");
    let fx = clients::blocking(|| clients::fixture(180)).await;
    let (root, _dir, server) = serve("skopeo");
    let host = server.addr.to_string();
    clients::push_fixture(&fx, &host, "e2e/img").await;
    clients::assert_pulls_back(&host, "e2e/img", "v1", fx.dir.path(), "v1").await;
    clients::assert_pulls_back(&host, "e2e/img", "multi", fx.dir.path(), "multi").await;
    clients::skopeo([
        "copy",
        "--all",
        "--preserve-digests",
        "--src-tls-verify=false",
        "--dest-tls-verify=false",
    ])
    .arg(format!("docker://{host}/e2e/img:multi"))
    .arg(format!("docker://{host}/e2e/copy:multi"))
    .run()
    .await;
    clients::assert_pulls_back(&host, "e2e/copy", "multi", fx.dir.path(), "multi").await;
    assert_eq!(clients::list_tags(&host, "e2e/img").await, ["multi", "v1"]);
    drop(server);
    let b = bucket(&root);
    let all = keys(&b).await;
    for r in b.delete_many(&all).await.unwrap() {
        r.unwrap();
    }
}

/// What does not run on S3 yet is refused, never half done against a local folder: the
/// CLI's collector and maintenance exit with the reason, a replica configuration that
/// turns the maintenance scheduler on does not start, and an artifact upload answers
/// `405 UNSUPPORTED` leaving nothing in the bucket.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn what_does_not_run_on_s3_yet_is_refused() {
    let (root, dir, server) = serve("refused");
    let cfg = dir.path().join("config.yml");
    for args in [
        &["garbage-collect"][..],
        &["maintenance", "run"],
        &["maintenance", "status"],
    ] {
        let out = std::process::Command::new(registry_binary())
            .args(args)
            .arg(&cfg)
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{args:?}: {stderr}");
        assert!(
            stderr.contains("does not run on storage.s3 yet"),
            "{args:?}: {stderr}"
        );
    }
    let yaml = s3_yaml(&root, &var("DRYDOCK_TEST_S3_SECRET_KEY"));
    let stderr = refused_start(&format!(
        "{yaml}maintenance:\n  enabled: true\ndatabase:\n  enabled: true\n  user: u\n  \
         dbname: d\n"
    ));
    assert!(
        stderr.contains("configuration key maintenance.enabled: "),
        "{stderr}"
    );

    let c = reqwest::Client::new();
    let body = b"an artifact".to_vec();
    let r = c
        .put(server.url("/artifacts/main/t1/job/bin/file.bin"))
        .header("digest", digest_of(&body))
        .body(body)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 405);
    assert!(r.text().await.unwrap().contains(r#""code":"UNSUPPORTED""#));
    let b = bucket(&root);
    let left = keys(&b).await;
    assert!(
        left.iter().all(|k| k.starts_with("drydock/")),
        "the refused upload left {left:?}"
    );
    drop(server);
    for r in b.delete_many(&left).await.unwrap() {
        r.unwrap();
    }
}

/// `location` (absolute or a path) sent to `server` instead: another replica.
fn on(server: &ServerProcess, location: &str) -> String {
    let path = match location.strip_prefix("http://") {
        Some(rest) => &rest[rest.find('/').unwrap_or(rest.len())..],
        None => location,
    };
    server.url(path)
}

/// Replica mode in the binary: two `registry serve` processes on one bucket root and one
/// PostgreSQL database (`database.enabled`). Both register with the database; a chunked
/// upload whose POST, PATCHes and PUT alternate between them completes byte-exact; a
/// manifest pushed through one is pulled at once through the other; a tag read through
/// one and deleted through the other is gone on the first (no cache kept).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_replicas_share_a_bucket_and_a_database() {
    let root = fresh_root("replicas");
    let db = conformance::pg::fresh_db().await;
    let dir = tempfile::tempdir().unwrap();
    let cfg = write_config(dir.path(), &conformance::s3::replica_yaml(&root, &db));
    let a = ServerProcess::spawn(&cfg);
    let b = ServerProcess::spawn(&cfg);
    for s in [&a, &b] {
        assert!(
            s.log_text()
                .contains("replica mode: coordinating through the database"),
            "{}",
            s.log_text()
        );
    }
    let replicas: i64 = conformance::pg::client(&db.dbname)
        .await
        .query_one("SELECT count(*) FROM drydock_replicas", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(replicas, 2);
    let c = reqwest::Client::new();
    let repo = "replicas/app";

    // A 7 MiB layer: POST on A, a PATCH on B, a PATCH on A, the PUT on B.
    let layer = random_bytes(7 * MIB, 19);
    let layer_digest = push_chunked(&c, [&a, &b, &a, &b], repo, &layer).await;
    // The config blob and the manifest through A, pulled at once through B.
    let (config, config_digest) = push_config(&c, &a, repo).await;
    let manifest = image_manifest(
        (&config_digest, config.len()),
        &[(&layer_digest, layer.len())],
        "",
    );
    put_manifest(&c, &a, repo, &manifest).await;
    let get = |s: &ServerProcess| {
        c.get(s.url(&format!("/v2/{repo}/manifests/v1")))
            .header("accept", OCI_MANIFEST)
    };
    let r = get(&b).send().await.unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.text().await.unwrap(), manifest);
    let r = c
        .get(b.url(&format!("/v2/{repo}/blobs/{layer_digest}")))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert!(r.bytes().await.unwrap() == layer, "the layer differs on B");

    // The tag, read through A (a cache would now hold it), deleted through B: gone on A.
    let tags = |v: serde_json::Value| v["tags"].as_array().cloned().unwrap_or_default();
    let list = a.url(&format!("/v2/{repo}/tags/list"));
    assert_eq!(tags(json(&c, &list).await), ["v1"]);
    assert_eq!(status(get(&a)).await, 200);
    let del = c.delete(b.url(&format!("/v2/{repo}/manifests/v1")));
    assert_eq!(status(del).await, 202);
    assert_eq!(status(get(&a)).await, 404);
    assert!(tags(json(&c, &list).await).is_empty());
    drop((a, b));

    let bk = bucket(&root);
    let all: Vec<String> = keys(&bk).await;
    for r in bk.delete_many(&all).await.unwrap() {
        r.unwrap();
    }
    conformance::pg::drop_db(&db).await;
}

/// Replica mode on a filesystem root is refused by the binary with one line naming
/// `database.enabled` and `storage.s3`; nothing is served (filesystem replicas are not a
/// supported deployment).
#[test]
fn a_database_without_s3_refuses_to_start() {
    let dir = tempfile::tempdir().unwrap();
    let yaml = format!(
        "storage:\n  filesystem:\n    rootdirectory: {}\nhttp:\n  addr: 127.0.0.1:0\n\
         database:\n  enabled: true\n  host: 127.0.0.1\n  user: u\n  dbname: d\n",
        dir.path().join("root").display()
    );
    let cfg = write_config(dir.path(), &yaml);
    let out = std::process::Command::new("timeout")
        .arg("120")
        .arg(registry_binary())
        .arg("serve")
        .arg(&cfg)
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    let line = stderr
        .lines()
        .find(|l| l.contains("database.enabled"))
        .unwrap_or_else(|| panic!("{stderr}"));
    assert!(line.contains("replica mode needs storage.s3"), "{stderr}");
    assert!(!stderr.contains("listening"), "{stderr}");
    assert!(
        !dir.path().join("root").exists(),
        "a root was created: {stderr}"
    );
}
