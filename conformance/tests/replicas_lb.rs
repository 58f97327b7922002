//! Three replicas behind a real load balancer: the binary in replica mode (one Ceph RGW
//! bucket root, one PostgreSQL database, both started by `scripts/test.sh`) three times,
//! behind nginx configured with the example of docs/storage.md taken from the file itself
//! (round robin, no stickiness). skopeo and podman push and pull through nginx only, so
//! an upload's requests and a push's manifest land on whichever replica nginx picks.

mod clients;

use clients::*;
use conformance::{ServerProcess, digest_of, image_manifest, push_blob_to, random_bytes, s3};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_replicas_behind_nginx_serve_skopeo_and_podman() {
    require("nginx");
    require("skopeo");
    require("podman");
    let root = s3::fresh_root("lb");
    let db = conformance::pg::fresh_db().await;
    let dir = tempdir();
    let yaml = s3::replica_yaml(&root, &db);
    let cfg = dir.path().join("config.yml");
    std::fs::write(&cfg, yaml).unwrap();
    let replicas: Vec<ServerProcess> = (0..3).map(|_| ServerProcess::spawn(&cfg)).collect();
    let port = free_port();
    let mut lb = balancer(
        dir.path(),
        port,
        &replicas.iter().map(|r| r.addr).collect::<Vec<_>>(),
    );
    let host = format!("127.0.0.1:{port}");
    let c = reqwest::Client::new();
    wait_answers(&c, &format!("http://{host}/v2/"), &lb).await;

    // skopeo: an image and a multi-platform index in, and back byte for byte.
    let fx = blocking(|| fixture(313)).await;
    push_fixture(&fx, &host, "lb/img").await;
    assert_pulls_back(&host, "lb/img", "v1", fx.dir.path(), "v1").await;
    assert_pulls_back(&host, "lb/img", "multi", fx.dir.path(), "multi").await;
    assert_eq!(list_tags(&host, "lb/img").await, ["multi", "v1"]);

    // podman: pulls that image, pushes it to another repository, pulls that back.
    let p = Podman::new();
    let img = format!("{host}/lb/img:v1");
    let copy = format!("{host}/lb/copy:v1");
    p.cmd()
        .args(["pull", "--tls-verify=false", &img])
        .run()
        .await;
    let digestfile = p.dir.path().join("pushed.digest");
    p.cmd()
        .args(["push", "--tls-verify=false", "--digestfile"])
        .arg(&digestfile)
        .args([&img, &copy])
        .run()
        .await;
    let pushed = std::fs::read_to_string(&digestfile).unwrap();
    let r = c
        .get(format!("http://{host}/v2/lb/copy/manifests/v1"))
        .header(
            "accept",
            "application/vnd.oci.image.manifest.v1+json, \
             application/vnd.docker.distribution.manifest.v2+json",
        )
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(
        digest_of(&r.bytes().await.unwrap()),
        pushed.trim(),
        "the replicas serve what podman pushed"
    );
    p.cmd().args(["rmi", &img]).run().await;
    p.cmd()
        .args(["pull", "--tls-verify=false", &copy])
        .run()
        .await;
    let local = p
        .cmd()
        .args(["image", "inspect", "--format", "{{.Digest}}", &copy])
        .run()
        .await
        .stdout();
    assert_eq!(
        local.trim(),
        pushed.trim(),
        "podman pulled back what it pushed"
    );

    // Round robin spread the pushes: every replica answered some of their writes.
    for (i, r) in replicas.iter().enumerate() {
        let log = r.log_text();
        let writes = log
            .lines()
            .filter(|l| l.contains("drydock::access") && l.contains("repo=\"lb/"))
            .filter(|l| {
                ["method=POST", "method=PATCH", "method=PUT"]
                    .iter()
                    .any(|m| l.contains(m))
            })
            .count();
        assert!(writes > 0, "replica {i} answered no write:\n{log}");
    }

    lb.stop();
    drop(replicas);
    s3::remove_root(&root).await;
    conformance::pg::drop_db(&db).await;
}

/// Replicas collect online: garbage made through one replica (a tag deleted, a blob no
/// manifest references) is removed from the bucket by a cycle that replica requests
/// (the DELETE, then SIGUSR1) and the other runs (the scheduler, A: started first, it
/// took the role); both then answer 404 for it, and what a tag still references stays.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_collects_what_another_replica_left_behind() {
    let root = s3::fresh_root("lb-gc");
    let db = conformance::pg::fresh_db().await;
    let dir = tempdir();
    let yaml = format!(
        "{}gc:\n  on_startup: false\n  grace: 0s\n  pending_ttl: 0s\n  remove_untagged: true\n",
        s3::replica_yaml(&root, &db)
    );
    let cfg = dir.path().join("config.yml");
    std::fs::write(&cfg, yaml).unwrap();
    let a = ServerProcess::spawn(&cfg);
    assert!(
        tokio::task::block_in_place(
            || a.wait_for_log("this replica schedules garbage collection", 1)
        ),
        "{}",
        a.log_text()
    );
    let b = ServerProcess::spawn(&cfg);
    let c = reqwest::Client::new();
    let repo = "lbgc/app";
    let put = |s: &ServerProcess, tag: &str, body: String| {
        c.put(s.url(&format!("/v2/{repo}/manifests/{tag}")))
            .header("content-type", "application/vnd.oci.image.manifest.v1+json")
            .body(body)
            .send()
    };
    // Kept: an image under a tag. Garbage: another image whose tag B deletes, and a blob
    // pushed through B that no manifest references.
    let mut images = Vec::new();
    for seed in [1u64, 2] {
        let config = format!("{{\"seed\":{seed}}}").into_bytes();
        let layer = random_bytes(4096, seed);
        let cd = push_blob_to(&c, &a.base, repo, &config).await;
        let ld = push_blob_to(&c, &a.base, repo, &layer).await;
        let m = image_manifest((&cd, config.len()), &[(&ld, layer.len())], "");
        assert_eq!(
            put(&a, &format!("v{seed}"), m.clone())
                .await
                .unwrap()
                .status(),
            201
        );
        images.push((digest_of(m.as_bytes()), cd, ld));
    }
    let lone = push_blob_to(&c, &b.base, repo, &random_bytes(2048, 3)).await;
    let del = c
        .delete(b.url(&format!("/v2/{repo}/manifests/v2")))
        .send()
        .await
        .unwrap();
    assert_eq!(del.status(), 202);

    // Requested on B (the DELETE, SIGUSR1), run on A.
    // SAFETY: kill(2) on the pid of a child the test owns.
    unsafe { libc::kill(b.child.id() as libc::pid_t, libc::SIGUSR1) };
    assert!(
        tokio::task::block_in_place(|| a.wait_for_log("garbage collection done", 1)),
        "{}",
        a.log_text()
    );
    assert!(
        !b.log_text().contains("garbage collection done"),
        "the replica that does not schedule collected"
    );
    let bucket = s3::bucket(&root);
    let keys = s3::keys(&bucket).await;
    let hex = |d: &str| d.trim_start_matches("sha256:").to_owned();
    let (m2, c2, l2) = &images[1];
    for gone in [m2, c2, l2, &lone] {
        assert!(
            !keys
                .iter()
                .any(|k| k.contains(&format!("/{}/data", hex(gone)))),
            "{gone} is still in the bucket"
        );
    }
    let (m1, c1, l1) = &images[0];
    for kept in [m1, c1, l1] {
        assert!(
            keys.iter()
                .any(|k| k.contains(&format!("/{}/data", hex(kept)))),
            "{kept} was removed"
        );
    }
    for s in [&a, &b] {
        let get = |p: String| c.get(s.url(&p)).send();
        assert_eq!(
            get(format!("/v2/{repo}/manifests/{m2}"))
                .await
                .unwrap()
                .status(),
            404
        );
        assert_eq!(
            get(format!("/v2/{repo}/blobs/{lone}"))
                .await
                .unwrap()
                .status(),
            404
        );
        assert_eq!(
            get(format!("/v2/{repo}/manifests/v1"))
                .await
                .unwrap()
                .status(),
            200
        );
        assert_eq!(
            get(format!("/v2/{repo}/blobs/{l1}"))
                .await
                .unwrap()
                .status(),
            200
        );
    }
    drop((a, b));
    s3::remove_root(&root).await;
    conformance::pg::drop_db(&db).await;
}
