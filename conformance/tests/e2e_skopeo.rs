//! End to end with skopeo: OCI image layouts built on disk (real tar layers, gzip and
//! plain, and a linux/amd64 + linux/arm64 index) are copied into drydock and back, and
//! must come back byte for byte; `inspect`, `list-tags`, `delete`, and a copy between
//! two repositories of drydock that must mount the layers instead of uploading them.

mod clients;

use clients::*;
use conformance::TestServer;
use serde_json::Value;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn skopeo_round_trips_an_image_and_a_multi_platform_index() {
    require("skopeo");
    let fx = blocking(|| fixture(100)).await;
    let s = TestServer::start().await;
    let host = s.host();
    push_fixture(&fx, &host, "e2e/img").await;

    // Pull both back into fresh layouts: same manifest digests, same blob bytes (the
    // index with both platform manifests and everything they name).
    assert_pulls_back(&host, "e2e/img", "v1", fx.dir.path(), "v1").await;
    assert_pulls_back(&host, "e2e/img", "multi", fx.dir.path(), "multi").await;
    let all = closure(fx.dir.path(), &fx.index.digest);
    assert!(all.contains(&fx.amd64.digest) && all.contains(&fx.arm64.digest));

    // inspect --raw serves the exact manifest bytes.
    for (tag, desc) in [("v1", &fx.image), ("multi", &fx.index)] {
        let raw = skopeo(["inspect", "--raw", "--tls-verify=false"])
            .arg(format!("docker://{host}/e2e/img:{tag}"))
            .run()
            .await
            .stdout;
        assert_eq!(sha256(&raw), desc.digest, "inspect --raw digest of {tag}");
        assert_eq!(
            raw,
            read_blob(fx.dir.path(), &desc.digest),
            "inspect --raw bytes of {tag}"
        );
    }
    // inspect (parsed) sees the image's digest and layers.
    let v: Value = serde_json::from_slice(
        &skopeo(["inspect", "--tls-verify=false"])
            .arg(format!("docker://{host}/e2e/img:v1"))
            .run()
            .await
            .stdout,
    )
    .expect("inspect prints JSON");
    assert_eq!(v["Digest"], fx.image.digest.as_str());
    assert_eq!(v["Architecture"], "amd64");
    let manifest: Value =
        serde_json::from_slice(&read_blob(fx.dir.path(), &fx.image.digest)).unwrap();
    let layers: Vec<&Value> = manifest["layers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| &l["digest"])
        .collect();
    assert_eq!(layers.len(), 3);
    assert_eq!(
        v["Layers"].as_array().unwrap().iter().collect::<Vec<_>>(),
        layers
    );
    // Platform selection through the index: the arm64 instance's config.
    let cfg: Value = serde_json::from_slice(
        &skopeo(["--override-arch", "arm64", "--override-os", "linux"])
            .args(["inspect", "--config", "--tls-verify=false"])
            .arg(format!("docker://{host}/e2e/img:multi"))
            .run()
            .await
            .stdout,
    )
    .expect("inspect --config prints JSON");
    assert_eq!(cfg["architecture"], "arm64");

    // list-tags: exactly what was pushed.
    assert_eq!(list_tags(&host, "e2e/img").await, ["multi", "v1"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn skopeo_delete_makes_the_manifest_unknown() {
    require("skopeo");
    let fx = blocking(|| fixture(200)).await;
    let s = TestServer::start().await;
    let host = s.host();
    push_fixture(&fx, &host, "e2e/del").await;
    assert_eq!(list_tags(&host, "e2e/del").await, ["multi", "v1"]);

    skopeo(["delete", "--tls-verify=false"])
        .arg(format!("docker://{host}/e2e/del:v1"))
        .run()
        .await;

    let inspect = skopeo(["inspect", "--raw", "--tls-verify=false"])
        .arg(format!("docker://{host}/e2e/del:v1"))
        .fail()
        .await;
    assert!(
        inspect.stderr().contains("manifest unknown"),
        "inspect after delete: {}",
        inspect.stderr()
    );
    let out = tempdir();
    let pull = skopeo(["copy", "--preserve-digests", "--src-tls-verify=false"])
        .arg(format!("docker://{host}/e2e/del:v1"))
        .arg(oci(out.path(), "v1"))
        .fail()
        .await;
    assert!(
        pull.stderr().contains("manifest unknown"),
        "pull after delete: {}",
        pull.stderr()
    );
    // By digest too: the manifest is gone, not just the tag.
    let r = conformance::client()
        .get(s.url(&format!("/v2/e2e/del/manifests/{}", fx.image.digest)))
        .header("accept", OCI_MANIFEST)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 404, "GET by digest after delete");

    // The other tag is untouched and still pulls completely.
    assert_eq!(list_tags(&host, "e2e/del").await, ["multi"]);
    assert_pulls_back(&host, "e2e/del", "multi", fx.dir.path(), "multi").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn skopeo_copy_between_repositories_mounts_the_layers() {
    require("skopeo");
    let fx = blocking(|| fixture(300)).await;
    let s = TestServer::start().await;
    // Everything goes through a tap so the test can see what skopeo sends.
    let proxy = TapProxy::start(s.addr).await;
    let host = proxy.host();
    skopeo(["copy", "--preserve-digests", "--dest-tls-verify=false"])
        .arg(oci(fx.dir.path(), "v1"))
        .arg(format!("docker://{host}/e2e/a:t"))
        .run()
        .await;

    let manifest: Value =
        serde_json::from_slice(&read_blob(fx.dir.path(), &fx.image.digest)).unwrap();
    let layers: Vec<(String, u64)> = manifest["layers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| {
            (
                l["digest"].as_str().unwrap().to_owned(),
                l["size"].as_u64().unwrap(),
            )
        })
        .collect();
    let config = manifest["config"]["digest"].as_str().unwrap().to_owned();
    let smallest = layers.iter().map(|(_, n)| *n).min().unwrap();
    assert!(smallest >= LAYER_PAYLOAD as u64, "layers are big enough");

    let pool_before = pool_blobs(s.root());
    for (d, _) in &layers {
        assert!(pool_before.contains(d), "layer {d} is in the pool");
        assert!(!has_layer_link(s.root(), "e2e/b", d));
    }

    proxy.reset();
    skopeo([
        "copy",
        "--preserve-digests",
        "--src-tls-verify=false",
        "--dest-tls-verify=false",
    ])
    .arg(format!("docker://{host}/e2e/a:t"))
    .arg(format!("docker://{host}/e2e/b:t"))
    .run()
    .await;

    // Every layer was mounted from e2e/a, none uploaded: skopeo sent a mount request
    // for each, and fewer bytes in total than the smallest layer.
    let lines: Vec<String> = proxy
        .request_lines()
        .into_iter()
        .map(|l| {
            l.replace("%3A", ":")
                .replace("%3a", ":")
                .replace("%2F", "/")
        })
        .collect();
    for (d, _) in &layers {
        assert!(
            lines
                .iter()
                .any(|l| l.starts_with("POST /v2/e2e/b/blobs/uploads/")
                    && l.contains(&format!("mount={d}"))
                    && l.contains("from=e2e/a")),
            "no mount request for {d}; requests were:\n{}",
            lines.join("\n")
        );
    }
    let sent = proxy.sent().len() as u64;
    assert!(
        sent < smallest,
        "skopeo sent {sent} bytes, so some layer ({smallest} bytes or more) was uploaded \
         instead of mounted; requests were:\n{}",
        lines.join("\n")
    );

    // On disk: no new pool blob, and e2e/b links every layer and the config.
    assert_eq!(
        pool_blobs(s.root()),
        pool_before,
        "the pool is unchanged by a mount"
    );
    for d in layers.iter().map(|(d, _)| d).chain([&config]) {
        assert!(
            has_layer_link(s.root(), "e2e/b", d),
            "e2e/b has no _layers link for {d}"
        );
    }

    // And e2e/b:t pulls back identical.
    assert_pulls_back(&host, "e2e/b", "t", fx.dir.path(), "v1").await;
}
