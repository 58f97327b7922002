//! Storage interoperability with CNCF Distribution (Debian's `docker-registry` 2.8):
//! a root written by Distribution is served by drydock, and a root written by drydock
//! is served by Distribution, with identical digests and bytes, tags and catalog.
//! Distribution runs with a private config (filesystem root in a temporary directory,
//! deletes enabled, no auth, a free loopback port); Debian's default config is never
//! used (it turns on htpasswd auth).

mod clients;

use clients::*;
use conformance::{TestServer, client, test_config};
use serde_json::Value;

async fn catalog(host: &str) -> Vec<String> {
    let v: Value = client()
        .get(format!("http://{host}/v2/_catalog"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .expect("catalog JSON");
    let mut repos: Vec<String> = v["repositories"]
        .as_array()
        .expect("repositories")
        .iter()
        .map(|r| r.as_str().unwrap().to_owned())
        .collect();
    repos.sort();
    repos
}

/// Pushes the fixture to `host` as `interop/img:{v1,multi}` and copies `v1` registry to
/// registry to `interop/other:t`.
async fn populate(fx: &Fixture, host: &str) {
    push_fixture(fx, host, "interop/img").await;
    skopeo([
        "copy",
        "--preserve-digests",
        "--src-tls-verify=false",
        "--dest-tls-verify=false",
    ])
    .arg(format!("docker://{host}/interop/img:v1"))
    .arg(format!("docker://{host}/interop/other:t"))
    .run()
    .await;
}

/// Everything `populate` wrote pulls back from `host` byte for byte, with its tags and
/// catalog, and `inspect --raw` gives the original digests.
async fn assert_populated(fx: &Fixture, host: &str) {
    let want = fx.dir.path();
    assert_pulls_back(host, "interop/img", "v1", want, "v1").await;
    assert_pulls_back(host, "interop/img", "multi", want, "multi").await;
    assert_pulls_back(host, "interop/other", "t", want, "v1").await;
    for (repo, tag, desc) in [
        ("interop/img", "v1", &fx.image),
        ("interop/img", "multi", &fx.index),
        ("interop/other", "t", &fx.image),
    ] {
        let raw = skopeo(["inspect", "--raw", "--tls-verify=false"])
            .arg(format!("docker://{host}/{repo}:{tag}"))
            .run()
            .await
            .stdout;
        assert_eq!(sha256(&raw), desc.digest, "{repo}:{tag} digest");
    }
    assert_eq!(list_tags(host, "interop/img").await, ["multi", "v1"]);
    assert_eq!(list_tags(host, "interop/other").await, ["t"]);
    assert_eq!(catalog(host).await, ["interop/img", "interop/other"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn drydock_serves_a_root_written_by_distribution() {
    require("skopeo");
    let fx = blocking(|| fixture(400)).await;
    let root = tempdir();
    let dist = Distribution::start(root.path()).await;
    populate(&fx, &dist.host).await;
    // Distribution serves it, of course.
    assert_populated(&fx, &dist.host).await;
    dist.stop();

    let config = test_config(root.path());
    let s = TestServer::start_on(root, config).await;
    assert_populated(&fx, &s.host()).await;

    // drydock can keep writing to that root: a new tag by registry-to-registry copy,
    // and a delete.
    skopeo([
        "copy",
        "--preserve-digests",
        "--src-tls-verify=false",
        "--dest-tls-verify=false",
    ])
    .arg(format!("docker://{}/interop/img:multi", s.host()))
    .arg(format!("docker://{}/interop/img:again", s.host()))
    .arg("--all")
    .run()
    .await;
    skopeo(["delete", "--tls-verify=false"])
        .arg(format!("docker://{}/interop/other:t", s.host()))
        .run()
        .await;
    assert_eq!(
        list_tags(&s.host(), "interop/img").await,
        ["again", "multi", "v1"]
    );
    assert_pulls_back(&s.host(), "interop/img", "again", fx.dir.path(), "multi").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn distribution_serves_a_root_written_by_drydock() {
    require("skopeo");
    let fx = blocking(|| fixture(500)).await;
    let s = TestServer::start().await;
    populate(&fx, &s.host()).await;
    assert_populated(&fx, &s.host()).await;
    let root = s.stop().await;

    let dist = Distribution::start(root.path()).await;
    assert_populated(&fx, &dist.host).await;
    dist.stop();

    // Distribution's own garbage collector reads drydock's root and finds every blob
    // referenced.
    let (_cfg_dir, cfg) = Distribution::write_config(root.path(), "127.0.0.1:0");
    let out = Cmd::new("docker-registry")
        .args(["garbage-collect", "--dry-run"])
        .arg(&cfg)
        .run()
        .await
        .stdout();
    assert!(
        out.contains(" 0 blobs and 0 manifests eligible for deletion"),
        "Distribution's GC on drydock's root:\n{out}"
    );
}
