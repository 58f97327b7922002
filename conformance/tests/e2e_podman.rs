//! End to end with podman: a `FROM scratch` image built locally is pushed to drydock,
//! removed, pulled back, and its file read out of a container; a two-platform manifest
//! list made with `podman manifest` is pushed with `--all` and both children must be
//! complete in drydock and pullable by platform.
//!
//! Podman runs with its own storage in a temporary directory (`--root`, `--runroot`,
//! `--tmpdir`), the `vfs` driver (no overlay mounts needed), cgroupfs and file events
//! (no systemd or journald needed). Nothing here runs a container, so no namespaces or
//! isolation settings are involved.

mod clients;

use std::collections::BTreeSet;
use std::path::Path;

use clients::*;
use conformance::{TestServer, client};
use serde_json::Value;

impl Podman {
    async fn run<const N: usize>(&self, args: [&str; N]) -> Out {
        self.cmd().args(args).run().await
    }

    /// Reads `path` out of `image` via a created (never started) container.
    async fn read_file(&self, image: &str, path: &str) -> Vec<u8> {
        let name = unique("e2e-read-");
        self.run(["create", "--name", &name, image, "/none"]).await;
        let tar = self
            .run(["cp", &format!("{name}:{path}"), "-"])
            .await
            .stdout;
        self.run(["rm", &name]).await;
        let want = Path::new(path).file_name().unwrap().to_string_lossy();
        untar(&tar)
            .into_iter()
            .find(|(n, _)| n.trim_end_matches('/').ends_with(want.as_ref()))
            .unwrap_or_else(|| panic!("{path} not in the tar podman cp produced"))
            .1
    }
}

/// A build context with `Containerfile` (`FROM scratch`, `COPY file /file`).
fn context(file: &str, content: &str) -> tempfile::TempDir {
    let ctx = tempdir();
    std::fs::write(ctx.path().join(file), content).unwrap();
    std::fs::write(
        ctx.path().join("Containerfile"),
        format!("FROM scratch\nCOPY {file} /{file}\n"),
    )
    .unwrap();
    ctx
}

/// GETs a blob and checks its bytes against the digest.
async fn assert_blob(s: &TestServer, repo: &str, digest: &str) {
    let r = client()
        .get(s.url(&format!("/v2/{repo}/blobs/{digest}")))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200, "GET blob {digest} of {repo}");
    let body = r.bytes().await.unwrap();
    assert_eq!(sha256(&body), digest, "blob {digest} bytes");
}

/// GETs a manifest (any type) by reference; returns its digest header and JSON.
async fn get_manifest(s: &TestServer, repo: &str, reference: &str) -> (String, Value) {
    let r = client()
        .get(s.url(&format!("/v2/{repo}/manifests/{reference}")))
        .header(
            "accept",
            "application/vnd.oci.image.index.v1+json, \
             application/vnd.docker.distribution.manifest.list.v2+json, \
             application/vnd.oci.image.manifest.v1+json, \
             application/vnd.docker.distribution.manifest.v2+json",
        )
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200, "GET manifest {repo}:{reference}");
    let digest = r.headers()["docker-content-digest"]
        .to_str()
        .unwrap()
        .to_owned();
    let body = r.bytes().await.unwrap();
    assert_eq!(sha256(&body), digest, "manifest {reference} digest header");
    (
        digest,
        serde_json::from_slice(&body).expect("manifest JSON"),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn podman_builds_pushes_and_pulls_back_a_scratch_image() {
    let p = Podman::new();
    let s = TestServer::start().await;
    let host = s.host();
    let content = format!("hello from podman {}\n", unique(""));
    let ctx = context("hello.txt", &content);
    let image = format!("{host}/e2e/hello:v1");
    p.cmd()
        .args(["build", "-t", &image, "-f"])
        .arg(ctx.path().join("Containerfile"))
        .arg(ctx.path())
        .run()
        .await;

    let digestfile = p.dir.path().join("pushed.digest");
    p.cmd()
        .args(["push", "--tls-verify=false", "--digestfile"])
        .arg(&digestfile)
        .arg(&image)
        .run()
        .await;
    let pushed = std::fs::read_to_string(&digestfile).unwrap();
    let (digest, manifest) = get_manifest(&s, "e2e/hello", "v1").await;
    assert_eq!(digest, pushed.trim(), "drydock serves what podman pushed");
    assert_blob(
        &s,
        "e2e/hello",
        manifest["config"]["digest"].as_str().unwrap(),
    )
    .await;
    for l in manifest["layers"].as_array().unwrap() {
        assert_blob(&s, "e2e/hello", l["digest"].as_str().unwrap()).await;
    }

    // Forget it locally, then pull it back from drydock.
    p.run(["rmi", &image]).await;
    p.cmd().args(["image", "exists", &image]).fail().await;
    p.run(["pull", "--tls-verify=false", &image]).await;
    let local = p
        .run(["image", "inspect", "--format", "{{.Digest}}", &image])
        .await
        .stdout();
    assert_eq!(local.trim(), digest, "pulled image digest");
    assert_eq!(
        p.read_file(&image, "/hello.txt").await,
        content.as_bytes(),
        "file content after the round trip"
    );

    // The same image as Docker schema 2 under another tag.
    let v2s2 = format!("{host}/e2e/hello:v2s2");
    p.run([
        "push",
        "--tls-verify=false",
        "--format",
        "v2s2",
        &image,
        &v2s2,
    ])
    .await;
    let (_, m) = get_manifest(&s, "e2e/hello", "v2s2").await;
    assert_eq!(
        m["mediaType"],
        "application/vnd.docker.distribution.manifest.v2+json"
    );
    for l in m["layers"].as_array().unwrap() {
        assert_blob(&s, "e2e/hello", l["digest"].as_str().unwrap()).await;
    }
    p.run(["rmi", &image]).await;
    p.run(["pull", "--tls-verify=false", &v2s2]).await;
    assert_eq!(p.read_file(&v2s2, "/hello.txt").await, content.as_bytes());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn podman_manifest_push_all_sends_both_platforms() {
    let p = Podman::new();
    let s = TestServer::start().await;
    let host = s.host();
    let nonce = unique("");
    for arch in ["amd64", "arm64"] {
        let ctx = context("arch.txt", &format!("{arch} {nonce}\n"));
        p.cmd()
            .args(["build", "--arch", arch, "-t"])
            .arg(format!("localhost/e2e/m:{arch}"))
            .arg("-f")
            .arg(ctx.path().join("Containerfile"))
            .arg(ctx.path())
            .run()
            .await;
    }
    p.run(["manifest", "create", "localhost/e2e/list"]).await;
    for arch in ["amd64", "arm64"] {
        p.run([
            "manifest",
            "add",
            "--arch",
            arch,
            "--os",
            "linux",
            "localhost/e2e/list",
            &format!("containers-storage:localhost/e2e/m:{arch}"),
        ])
        .await;
    }
    let digestfile = p.dir.path().join("list.digest");
    p.cmd()
        .args([
            "manifest",
            "push",
            "--all",
            "--tls-verify=false",
            "--digestfile",
        ])
        .arg(&digestfile)
        .arg("localhost/e2e/list")
        .arg(format!("docker://{host}/e2e/multi:v1"))
        .run()
        .await;

    // The index is in drydock with both children, each complete.
    let (digest, index) = get_manifest(&s, "e2e/multi", "v1").await;
    assert_eq!(
        digest,
        std::fs::read_to_string(&digestfile).unwrap().trim(),
        "drydock serves the list podman pushed"
    );
    let children = index["manifests"].as_array().expect("manifests");
    assert_eq!(children.len(), 2, "two platform manifests: {index}");
    let mut archs = BTreeSet::new();
    for child in children {
        let arch = child["platform"]["architecture"].as_str().unwrap();
        assert_eq!(child["platform"]["os"], "linux");
        archs.insert(arch.to_owned());
        let cd = child["digest"].as_str().unwrap();
        let (got, m) = get_manifest(&s, "e2e/multi", cd).await;
        assert_eq!(got, cd);
        let config = m["config"]["digest"].as_str().unwrap();
        assert_blob(&s, "e2e/multi", config).await;
        for l in m["layers"].as_array().unwrap() {
            assert_blob(&s, "e2e/multi", l["digest"].as_str().unwrap()).await;
        }
        let cfg: Value = client()
            .get(s.url(&format!("/v2/e2e/multi/blobs/{config}")))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        assert_eq!(cfg["architecture"], arch, "config of the {arch} child");
    }
    assert_eq!(archs, BTreeSet::from(["amd64".into(), "arm64".into()]));

    // Pull each platform back into an empty store and read its file.
    p.run(["manifest", "rm", "localhost/e2e/list"]).await;
    p.run(["rmi", "localhost/e2e/m:amd64", "localhost/e2e/m:arm64"])
        .await;
    let image = format!("{host}/e2e/multi:v1");
    for arch in ["arm64", "amd64"] {
        p.run(["pull", "--tls-verify=false", "--arch", arch, &image])
            .await;
        let got_arch = p
            .run(["image", "inspect", "--format", "{{.Architecture}}", &image])
            .await
            .stdout();
        assert_eq!(got_arch.trim(), arch, "pulled the {arch} instance");
        assert_eq!(
            p.read_file(&image, "/arch.txt").await,
            format!("{arch} {nonce}\n").as_bytes(),
            "file of the {arch} image"
        );
        p.run(["rmi", &image]).await;
    }
}
