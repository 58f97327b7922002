//! End to end with Docker: each test starts its own `dockerd` (private socket, data and
//! exec roots in a temporary directory; no iptables, no bridge, the `vfs` storage
//! driver so no overlay mounts are needed), creates images without any network
//! (`docker import` of a tar made here, `docker build` of a `FROM scratch` context with
//! the classic builder), pushes them to drydock on 127.0.0.1 (loopback registries need
//! no insecure-registry flag), removes them, pulls them back and reads their files out
//! of a created (never started) container. The daemon is stopped by a guard, even when
//! the test panics.

mod clients;

use std::path::Path;

use clients::*;
use conformance::{TestServer, client};
use serde_json::Value;

impl Docker {
    /// Reads files out of `image` via a created (never started) container.
    async fn read_files(&self, image: &str, paths: &[&str]) -> Vec<Vec<u8>> {
        let name = unique("e2e-read-");
        self.run([
            "create",
            "--network",
            "none",
            "--name",
            &name,
            image,
            "/none",
        ])
        .await;
        let mut out = Vec::new();
        for path in paths {
            let tar = self
                .run(["cp", &format!("{name}:{path}"), "-"])
                .await
                .stdout;
            let want = Path::new(path).file_name().unwrap().to_string_lossy();
            let file = untar(&tar)
                .into_iter()
                .find(|(n, _)| n.ends_with(want.as_ref()))
                .unwrap_or_else(|| panic!("{path} not in the tar docker cp produced"))
                .1;
            out.push(file);
        }
        self.run(["rm", &name]).await;
        out
    }
}

/// GETs a manifest by reference as Docker asks for it; checks every blob it names.
async fn assert_complete(s: &TestServer, repo: &str, reference: &str) -> (String, Value) {
    let c = client();
    let r = c
        .get(s.url(&format!("/v2/{repo}/manifests/{reference}")))
        .header(
            "accept",
            "application/vnd.docker.distribution.manifest.v2+json, \
             application/vnd.oci.image.manifest.v1+json",
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
    assert_eq!(sha256(&body), digest);
    let m: Value = serde_json::from_slice(&body).unwrap();
    let mut blobs = vec![m["config"]["digest"].as_str().unwrap().to_owned()];
    blobs.extend(
        m["layers"]
            .as_array()
            .unwrap()
            .iter()
            .map(|l| l["digest"].as_str().unwrap().to_owned()),
    );
    for b in blobs {
        let r = c
            .get(s.url(&format!("/v2/{repo}/blobs/{b}")))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200, "GET blob {b} of {repo}");
        assert_eq!(sha256(&r.bytes().await.unwrap()), b);
    }
    (digest, m)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn docker_import_push_rmi_pull_round_trip() {
    let docker = Docker::start().await;
    let s = TestServer::start().await;
    let host = s.host();
    let hello = format!("hello from docker {}\n", unique(""));
    let nested = noise(200 * 1024, 7);
    let tar = tar_archive(&[
        ("hello.txt", hello.as_bytes()),
        ("data/nested.bin", &nested),
    ]);
    let tar_path = docker.dir.path().join("rootfs.tar");
    std::fs::write(&tar_path, tar).unwrap();
    let image = format!("{host}/e2e/imported:v1");
    docker
        .run(["import", &tar_path.display().to_string(), &image])
        .await;

    let (digest, _) = docker.push(&image).await;
    let (served, m) = assert_complete(&s, "e2e/imported", "v1").await;
    assert_eq!(served, digest, "drydock serves what docker pushed");
    assert_eq!(
        m["mediaType"], "application/vnd.docker.distribution.manifest.v2+json",
        "docker pushes schema 2"
    );

    docker.forget(&image).await;
    let out = docker.run(["pull", &image]).await.stdout();
    assert!(
        out.contains(&format!("Digest: {digest}")),
        "docker pull reports the pushed digest:\n{out}"
    );
    let files = docker
        .read_files(&image, &["/hello.txt", "/data/nested.bin"])
        .await;
    assert_eq!(files[0], hello.as_bytes(), "hello.txt after the round trip");
    assert!(files[1] == nested, "nested.bin after the round trip");

    // And by digest.
    docker.forget(&image).await;
    let by_digest = format!("{host}/e2e/imported@{digest}");
    docker.run(["pull", &by_digest]).await;
    let files = docker.read_files(&by_digest, &["/hello.txt"]).await;
    assert_eq!(files[0], hello.as_bytes(), "hello.txt pulled by digest");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn docker_build_push_and_cross_repository_mount() {
    let docker = Docker::start().await;
    let s = TestServer::start().await;
    let host = s.host();
    let ctx = tempdir();
    let content = format!("built by docker {}\n", unique(""));
    std::fs::write(ctx.path().join("hello.txt"), &content).unwrap();
    std::fs::write(
        ctx.path().join("Dockerfile"),
        "FROM scratch\nCOPY hello.txt /hello.txt\n",
    )
    .unwrap();
    let built = format!("{host}/e2e/built:v1");
    docker
        .run(["build", "-t", &built, &ctx.path().display().to_string()])
        .await;
    let (digest, _) = docker.push(&built).await;
    let (served, m) = assert_complete(&s, "e2e/built", "v1").await;
    assert_eq!(served, digest);

    // The same image under another repository: docker mounts the layer from e2e/built.
    let copy = format!("{host}/e2e/copy:v1");
    docker.run(["tag", &built, &copy]).await;
    let pool_before = pool_blobs(s.root());
    let (copy_digest, out) = docker.push(&copy).await;
    assert_eq!(copy_digest, digest, "same manifest in both repositories");
    assert!(
        out.contains("Mounted from e2e/built"),
        "docker push did not mount the layer from e2e/built:\n{out}"
    );
    assert_eq!(
        pool_blobs(s.root()),
        pool_before,
        "a mount adds no pool blob"
    );
    for l in m["layers"].as_array().unwrap() {
        let d = l["digest"].as_str().unwrap();
        assert!(
            has_layer_link(s.root(), "e2e/copy", d),
            "e2e/copy links {d}"
        );
    }
    assert_complete(&s, "e2e/copy", "v1").await;

    // Pull the copy back into an empty daemon store and read the file.
    docker.forget(&built).await;
    docker.forget(&copy).await;
    docker.run(["pull", &copy]).await;
    let files = docker.read_files(&copy, &["/hello.txt"]).await;
    assert_eq!(files[0], content.as_bytes());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn docker_pulls_what_skopeo_pushed_each_platform_and_plain_layers() {
    require("skopeo");
    let seed = 600;
    let fx = blocking(move || fixture(seed)).await;
    let docker = Docker::start().await;
    let s = TestServer::start().await;
    let host = s.host();
    push_fixture(&fx, &host, "e2e/skopeo").await;

    // An OCI image with gzip and plain tar layers.
    let image = format!("{host}/e2e/skopeo:v1");
    let out = docker.run(["pull", &image]).await.stdout();
    assert!(
        out.contains(&format!("Digest: {}", fx.image.digest)),
        "{out}"
    );
    let files = docker
        .read_files(&image, &["/etc/hello.txt", "/data/blob.bin"])
        .await;
    assert_eq!(
        files[0],
        format!("hello from layer one ({seed})\n").as_bytes()
    );
    assert!(
        files[1] == noise(LAYER_PAYLOAD, seed + 1),
        "the plain tar layer's file"
    );

    // An OCI index: docker picks each platform asked for.
    let multi = format!("{host}/e2e/skopeo:multi");
    for arch in ["amd64", "arm64"] {
        docker
            .run(["pull", "--platform", &format!("linux/{arch}"), &multi])
            .await;
        let got = docker
            .run(["image", "inspect", "--format", "{{.Architecture}}", &multi])
            .await
            .stdout();
        assert_eq!(got.trim(), arch);
        let files = docker.read_files(&multi, &["/arch.txt"]).await;
        assert_eq!(files[0], format!("{arch} {seed}\n").as_bytes());
        docker.forget(&multi).await;
    }
}
