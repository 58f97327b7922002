//! Three replicas behind a real load balancer: the binary in replica mode (one Ceph RGW
//! bucket root, one PostgreSQL database, both started by `scripts/test.sh`) three times,
//! behind nginx configured with the example of docs/storage.md taken from the file itself
//! (round robin, no stickiness). skopeo and podman push and pull through nginx only, so
//! an upload's requests and a push's manifest land on whichever replica nginx picks.

mod clients;

use clients::*;
use conformance::{ServerProcess, digest_of, s3};

/// nginx in front of `replicas` with docs/storage.md's example, listening on `port`.
fn balancer(dir: &std::path::Path, port: u16, replicas: &[&ServerProcess]) -> Daemon {
    let doc = include_str!("../../docs/storage.md");
    let example = doc
        .split("```nginx\n")
        .nth(1)
        .and_then(|rest| rest.split("```").next())
        .expect("an nginx example in docs/storage.md");
    let servers: Vec<&str> = example
        .lines()
        .filter(|l| l.trim_start().starts_with("server 10.0.0."))
        .collect();
    assert_eq!(
        servers.len(),
        replicas.len(),
        "the example's upstream servers"
    );
    let mut site = example.to_owned();
    for (line, r) in servers.iter().zip(replicas) {
        site = site.replacen(line, &format!("    server {};", r.addr), 1);
    }
    assert!(
        site.contains("listen 80;"),
        "the example no longer listens on 80"
    );
    site = site.replace("listen 80;", &format!("listen 127.0.0.1:{port};"));
    nginx(dir, &site)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_replicas_behind_nginx_serve_skopeo_and_podman() {
    require("nginx");
    require("skopeo");
    require("podman");
    let root = s3::fresh_root("lb");
    let db = conformance::pg::fresh_db().await;
    let dir = tempdir();
    let yaml = format!(
        "{}database:\n  enabled: true\n  host: {}\n  port: {}\n  user: {}\n  dbname: {}\n  \
         sslmode: disable\n",
        s3::yaml(&root),
        db.host,
        db.port,
        db.user,
        db.dbname,
    );
    let cfg = dir.path().join("config.yml");
    std::fs::write(&cfg, yaml).unwrap();
    let replicas: Vec<ServerProcess> = (0..3).map(|_| ServerProcess::spawn(&cfg)).collect();
    let port = free_port();
    let mut lb = balancer(dir.path(), port, &replicas.iter().collect::<Vec<_>>());
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
