//! The operational surface of a running server, driven as an operator would: the binary
//! refusing a configuration it cannot honour.

use std::process::Command;

use conformance::*;

/// A Distribution config that asks for a pull-through cache stops `registry serve`
/// with exit status 1 and one line naming the key, from the file and the environment
/// alike; listed under `ignore`, it starts.
#[test]
fn serve_refuses_a_section_it_cannot_honour_with_one_line() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("config.yml");
    let root = dir.path().join("root");
    let base = format!(
        "storage:\n  filesystem:\n    rootdirectory: {}\nhttp:\n  addr: 127.0.0.1:0\n",
        root.display()
    );
    let run = |yaml: &str, env: &[(&str, &str)]| {
        std::fs::write(&cfg, yaml).unwrap();
        let mut cmd = Command::new(registry_binary());
        cmd.arg("serve")
            .arg(&cfg)
            .env_remove("RUST_LOG")
            .env_remove("RUST_BACKTRACE")
            .env_remove("RUST_LIB_BACKTRACE");
        for (k, v) in env {
            cmd.env(k, v);
        }
        cmd.output().unwrap()
    };
    for (yaml, env) in [
        (
            format!("{base}proxy:\n  remoteurl: https://registry-1.docker.io\n"),
            vec![],
        ),
        (
            base.clone(),
            vec![("REGISTRY_PROXY_REMOTEURL", "https://registry-1.docker.io")],
        ),
    ] {
        let out = run(&yaml, &env);
        assert_eq!(out.status.code(), Some(1), "it started: {yaml} {env:?}");
        let stderr = String::from_utf8_lossy(&out.stderr);
        let lines: Vec<&str> = stderr.lines().filter(|l| !l.trim().is_empty()).collect();
        assert_eq!(lines.len(), 1, "{stderr}");
        assert!(
            lines[0].starts_with("Error: configuration key proxy: "),
            "{stderr}"
        );
        assert!(!root.exists(), "a refused configuration created the root");
    }
    // Listed under ignore, it starts (and says so); ServerProcess waits for it to listen.
    std::fs::write(
        &cfg,
        format!("{base}proxy:\n  remoteurl: https://registry-1.docker.io\nignore: [proxy]\n"),
    )
    .unwrap();
    let server = ServerProcess::spawn(&cfg);
    drop(server);
}

/// The value of the series `name{labels}` in a Prometheus text exposition (labels in
/// the order the server writes them); `None` when absent.
fn series(text: &str, name_and_labels: &str) -> Option<f64> {
    text.lines()
        .find_map(|l| l.strip_prefix(name_and_labels)?.strip_prefix(' '))
        .map(|v| v.trim().parse().expect("a number"))
}

/// A client that sends the test policy's admin credentials on every request.
fn as_admin() -> reqwest::Client {
    let mut headers = reqwest::header::HeaderMap::new();
    headers.insert(
        reqwest::header::AUTHORIZATION,
        conformance::auth::basic(conformance::auth::ADMIN)
            .parse()
            .unwrap(),
    );
    reqwest::Client::builder()
        .default_headers(headers)
        .build()
        .unwrap()
}

async fn scrape(c: &reqwest::Client, url: String) -> String {
    let r = c.get(url).send().await.unwrap();
    assert_eq!(r.status(), 200);
    assert!(
        hdr(&r, "content-type").starts_with("text/plain; version=0.0.4"),
        "{}",
        hdr(&r, "content-type")
    );
    r.text().await.unwrap()
}

fn hdr(r: &reqwest::Response, name: &str) -> String {
    r.headers()
        .get(name)
        .map(|v| v.to_str().unwrap().to_owned())
        .unwrap_or_default()
}

/// Requests, bytes, storage operations, the cache, a collection and a maintenance run
/// all show in the metrics, with exact counts for what the test did, and no series is
/// labelled with a repository name.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_count_what_the_server_did() {
    // /admin/metrics on the main listener is for an admin: htpasswd on, every request
    // of this test made as the admin.
    let auth_dir = tempfile::tempdir().unwrap();
    let s = TestServer::start_with(|c| {
        conformance::auth::enable_htpasswd(c, auth_dir.path());
        c.admin.metrics = true;
        // Only the cycle the test runs: no cycle scheduled by the delete.
        c.gc.enabled = false;
        c.gc.on_startup = false;
        c.maintenance.enabled = false;
    })
    .await;
    let c = as_admin();
    let (digest, manifest) = push_image(&c, &s, "team/secret-name", "v1", 1, 2).await;
    for _ in 0..3 {
        let r = c
            .get(s.url("/v2/team/secret-name/manifests/v1"))
            .header("accept", "application/vnd.oci.image.manifest.v1+json")
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
        assert_eq!(r.bytes().await.unwrap().len(), manifest.len());
    }
    let blob = random_bytes(70_000, 9);
    let bd = push_blob(&c, &s, "team/secret-name", &blob).await;
    let r = c
        .get(s.url(&format!("/v2/team/secret-name/blobs/{bd}")))
        .send()
        .await
        .unwrap();
    assert_eq!(r.bytes().await.unwrap().len(), blob.len());
    let r = c
        .get(s.url("/v2/team/secret-name/manifests/nope"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 404);
    let not_found_len = r.bytes().await.unwrap().len();
    // Delete the image and collect it; then an uploads purge.
    let r = c
        .delete(s.url(&format!("/v2/team/secret-name/manifests/{digest}")))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 202);
    let mut opts = s.cleaner.options().clone();
    opts.grace = std::time::Duration::ZERO;
    // Held between its phases, the cycle shows as in progress.
    let gate = s
        .store
        .liveness()
        .hooks()
        .arm(registry::hooks::Point::Marked, None);
    let cleaner = s.cleaner.clone();
    let cycle = tokio::spawn(async move { cleaner.run_now(&opts).await });
    gate.arrived().await;
    let during = c.get(s.url("/admin/metrics")).send().await;
    // Released before any assertion, so a failing one cannot leave the cycle stuck.
    gate.release();
    let report = cycle.await.unwrap().unwrap();
    let during = during.unwrap().text().await.unwrap();
    assert_eq!(
        series(&during, "drydock_gc_in_progress"),
        Some(1.0),
        "{during}"
    );
    assert_eq!(
        series(&during, "drydock_gc_cycles_total"),
        Some(0.0),
        "{during}"
    );
    assert!(report.blobs_removed >= 1, "{report:?}");
    let run = s
        .maintenance
        .run(vec![gc::maintenance::Task::Uploads], "test")
        .await;
    assert_eq!(run[0].outcome, gc::maintenance::Outcome::Ok);

    let text = scrape(&c, s.url("/admin/metrics")).await;
    let get = |k: &str| series(&text, k).unwrap_or_else(|| panic!("no {k} in\n{text}"));
    assert_eq!(
        get(r#"registry_http_requests_total{handler="manifest",method="get",code="200"}"#),
        3.0
    );
    assert_eq!(
        get(r#"registry_http_requests_total{handler="manifest",method="get",code="404"}"#),
        1.0
    );
    assert_eq!(
        get(r#"registry_http_requests_total{handler="manifest",method="put",code="201"}"#),
        1.0
    );
    assert_eq!(
        get(r#"registry_http_requests_total{handler="blob_upload",method="post",code="201"}"#),
        4.0
    );
    assert_eq!(
        get(
            r#"registry_http_request_duration_seconds_count{handler="manifest",method="get",code="200"}"#
        ),
        3.0
    );
    assert_eq!(
        get(r#"registry_http_response_size_bytes_sum{handler="blob"}"#),
        blob.len() as f64
    );
    assert_eq!(
        get(r#"registry_http_response_size_bytes_sum{handler="manifest"}"#),
        (3 * manifest.len() + not_found_len) as f64
    );
    assert!(
        get(r#"registry_http_request_size_bytes_sum{handler="blob_upload"}"#) >= blob.len() as f64
    );
    assert_eq!(
        get(r#"registry_http_in_flight_requests{handler="manifest"}"#),
        0.0
    );
    assert_eq!(get("drydock_blob_uploads_in_progress"), 0.0);
    assert!(
        get(r#"registry_storage_action_seconds_count{driver="filesystem",action="PutContent"}"#)
            >= 1.0
    );
    assert!(get(r#"registry_storage_cache_total{type="Hit"}"#) >= 2.0);
    assert!(get(r#"registry_storage_cache_total{type="Miss"}"#) >= 1.0);
    assert_eq!(get("drydock_gc_cycles_total"), 1.0);
    assert_eq!(get("drydock_gc_failures_total"), 0.0);
    assert_eq!(get("drydock_gc_in_progress"), 0.0);
    assert_eq!(
        get("drydock_gc_removed_blobs_total"),
        report.blobs_removed as f64
    );
    assert_eq!(
        get("drydock_gc_freed_bytes_total"),
        report.bytes_freed as f64
    );
    assert!(get("drydock_gc_last_success_timestamp_seconds") > 1.7e9);
    assert!(get(r#"drydock_gc_phase_seconds_total{phase="mark"}"#) > 0.0);
    assert!(get(r#"drydock_gc_last_phase_seconds{phase="sweep"}"#) > 0.0);
    assert_eq!(
        get(r#"drydock_maintenance_runs_total{task="uploads",outcome="ok"}"#),
        1.0
    );
    assert_eq!(
        get(r#"drydock_maintenance_duration_seconds_count{task="uploads"}"#),
        1.0
    );
    assert_eq!(get(r#"drydock_maintenance_running{task="uploads"}"#), 0.0);
    assert!(get(r#"drydock_maintenance_last_success_timestamp_seconds{task="uploads"}"#) > 1.7e9);
    assert!(
        !text.contains("secret-name"),
        "a repository name became a label"
    );
}

/// Waits (polling, bounded) until the server has logged a line containing every one of
/// `parts`, and returns it.
async fn logged(server: &ServerProcess, parts: &[&str]) -> String {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    loop {
        if let Some(l) = server
            .log
            .lock()
            .unwrap()
            .iter()
            .find(|l| parts.iter().all(|p| l.contains(p)))
        {
            return l.clone();
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no log line with {parts:?}: {:?}",
            server.log.lock().unwrap()
        );
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
}

/// The binary with Distribution's debug section: metrics on `http.debug.addr` at
/// `http.debug.prometheus.path`, not on the main listener; every request answered with
/// an `X-Request-Id` (the client's when it sent one) and logged once in its span with
/// that id, the route kind, the repository, the status and the bytes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn debug_listener_serves_metrics_and_requests_carry_an_id() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("config.yml");
    std::fs::write(
        &cfg,
        format!(
            "storage:\n  filesystem:\n    rootdirectory: {}\nhttp:\n  addr: 127.0.0.1:0\n  debug:\n    addr: 127.0.0.1:0\n    prometheus:\n      enabled: true\n      path: /prom\ngc:\n  on_startup: false\n",
            dir.path().join("root").display()
        ),
    )
    .unwrap();
    let server = ServerProcess::spawn(&cfg);
    let debug = server
        .debug_addr
        .expect("the debug listener's address is logged");
    let c = client();
    let r = c
        .get(server.url("/v2/some/repo/tags/list"))
        .header("x-request-id", "trace-me-42")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 404);
    assert_eq!(hdr(&r, "x-request-id"), "trace-me-42");
    let r = c.get(server.url("/v2/")).send().await.unwrap();
    let made = hdr(&r, "x-request-id");
    assert!(!made.is_empty(), "no request id was made");
    let line = logged(&server, &["trace-me-42", "request"]).await;
    for want in [
        "route=\"tags\"",
        "repo=\"some/repo\"",
        "status=404",
        "method=GET",
        "bytes_out=",
    ] {
        assert!(line.contains(want), "{want} missing from {line}");
    }
    logged(&server, &[&made, "route=\"base\"", "status=200"]).await;

    let text = scrape(&c, format!("http://{debug}/prom")).await;
    assert_eq!(
        series(
            &text,
            r#"registry_http_requests_total{handler="tags",method="get",code="404"}"#
        ),
        Some(1.0),
        "{text}"
    );
    // Not on the main listener unless admin.metrics asks for it (and then only for an
    // admin: without auth there is none, so the admin API is the socket's alone).
    let r = c.get(server.url("/admin/metrics")).send().await.unwrap();
    assert_ne!(r.status(), 200);
    assert!(
        !r.text()
            .await
            .unwrap()
            .contains("registry_http_requests_total")
    );
    let text = scrape(&c, format!("http://{debug}/prom")).await;
    assert_eq!(
        series(&text, r#"drydock_auth_failures_total{reason="denied"}"#),
        Some(1.0),
        "the admin API refused over TCP is not counted: {text}"
    );
}

/// Every refusal of credentials is counted once under its reason, at the registry API
/// and at the token service alike; a request that passes counts nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn auth_failures_are_counted_by_reason() {
    use conformance::auth::{ALICE, READER, SERVICE};
    let dir = tempfile::tempdir().unwrap();
    let htpasswd = dir.path().join("htpasswd");
    conformance::auth::write_htpasswd(&htpasswd, &[conformance::auth::ADMIN, ALICE, READER]);
    let key = dir.path().join("token-key.pem");
    std::fs::write(&key, rcgen::KeyPair::generate().unwrap().serialize_pem()).unwrap();
    let policy: String = conformance::auth::POLICY
        .lines()
        .map(|l| format!("  {l}\n"))
        .collect();
    let cfg = dir.path().join("config.yml");
    std::fs::write(
        &cfg,
        format!(
            "storage:\n  filesystem:\n    rootdirectory: {}\nhttp:\n  addr: 127.0.0.1:0\n  debug:\n    addr: 127.0.0.1:0\n    prometheus:\n      enabled: true\ngc:\n  on_startup: false\nauth:\n  htpasswd:\n    realm: test\n    path: {}\n  token:\n    realm: /token\n    service: {SERVICE}\n    issuer: test-issuer\n  tokenserver:\n    key: {}\naccess:\n{policy}",
            dir.path().join("root").display(),
            htpasswd.display(),
            key.display(),
        ),
    )
    .unwrap();
    let server = ServerProcess::spawn(&cfg);
    let debug = server.debug_addr.expect("debug listener");
    let c = client();
    let status =
        |r: reqwest::RequestBuilder| async move { r.send().await.unwrap().status().as_u16() };
    let wrong = conformance::auth::basic(("alice", "not-her-password"));

    // Passes: counts nothing.
    let ok = c
        .get(server.url("/v2/"))
        .header("authorization", conformance::auth::basic(ALICE));
    assert_eq!(status(ok).await, 200);
    // missing: no credentials where the login check needs some.
    assert_eq!(status(c.get(server.url("/v2/"))).await, 401);
    // invalid_credentials: a wrong password.
    let r = c.get(server.url("/v2/")).header("authorization", &wrong);
    assert_eq!(status(r).await, 401);
    // invalid_token: a bearer token that does not verify.
    let r = c
        .get(server.url("/v2/"))
        .header("authorization", "Bearer not.a.token");
    assert_eq!(status(r).await, 401);
    // denied: a user the policy does not let push.
    let r = c
        .post(server.url("/v2/team/app/blobs/uploads/"))
        .header("authorization", conformance::auth::basic(READER));
    assert_eq!(status(r).await, 403);
    // insufficient_scope: the reader's token grants pull only.
    let token: serde_json::Value = c
        .get(server.url(&format!(
            "/token?service={SERVICE}&scope=repository:team/app:pull,push"
        )))
        .header("authorization", conformance::auth::basic(READER))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let bearer = format!("Bearer {}", token["token"].as_str().expect("a token"));
    let r = c
        .post(server.url("/v2/team/app/blobs/uploads/"))
        .header("authorization", &bearer);
    assert_eq!(status(r).await, 401);
    // The token service: a wrong password, an invalid refresh token.
    let r = c
        .get(server.url(&format!("/token?service={SERVICE}")))
        .header("authorization", &wrong);
    assert_eq!(status(r).await, 401);
    let r = c.post(server.url("/token")).form(&[
        ("grant_type", "refresh_token"),
        ("service", SERVICE),
        ("refresh_token", "not-a-refresh-token"),
    ]);
    assert_eq!(status(r).await, 401);
    // too_many_failures: wrong passwords until the source's budget is spent.
    let mut wrong_401 = 2;
    loop {
        let r = c.get(server.url("/v2/")).header("authorization", &wrong);
        match status(r).await {
            401 => wrong_401 += 1,
            429 => break,
            s => panic!("a wrong password answered {s}"),
        }
        assert!(wrong_401 < 500, "the failure budget was never spent");
    }

    let text = scrape(&c, format!("http://{debug}/metrics")).await;
    let count = |reason: &str| {
        series(
            &text,
            &format!(r#"drydock_auth_failures_total{{reason="{reason}"}}"#),
        )
        .unwrap_or(0.0)
    };
    assert_eq!(count("missing"), 1.0, "{text}");
    assert_eq!(count("invalid_credentials"), wrong_401 as f64, "{text}");
    assert_eq!(count("invalid_token"), 2.0, "{text}");
    assert_eq!(count("denied"), 1.0, "{text}");
    assert_eq!(count("insufficient_scope"), 1.0, "{text}");
    assert_eq!(count("too_many_failures"), 1.0, "{text}");
}

/// Polls `url` until it answers `status` (bounded); returns the body.
async fn until_status(c: &reqwest::Client, url: &str, status: u16) -> String {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    loop {
        if let Ok(r) = c.get(url).send().await {
            let got = r.status().as_u16();
            let body = r.text().await.unwrap_or_default();
            if got == status {
                return body;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "{url} stayed at {got} ({body}), want {status}"
            );
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
}

/// `/livez` answers while the process runs; `/readyz` follows the storage probe (a
/// write that fails turns it red after `threshold` probes, and green again once writes
/// work) and Distribution's file check.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readyz_follows_storage_writes_and_the_file_check() {
    let dir = tempfile::tempdir().unwrap();
    let out_of_rotation = dir.path().join("maintenance-window");
    let oor = out_of_rotation.clone();
    let s = TestServer::start_with(move |c| {
        c.health.storagedriver.interval = std::time::Duration::from_millis(50);
        c.health.storagedriver.threshold = 2;
        c.health.file = vec![registry::config::FileCheck {
            file: oor,
            interval: None,
        }];
    })
    .await;
    let c = client();
    let r = c.get(s.url("/livez")).send().await.unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(until_status(&c, &s.url("/readyz"), 200).await, "{}");

    std::fs::write(&out_of_rotation, "").unwrap();
    let body = until_status(&c, &s.url("/readyz"), 503).await;
    assert!(body.contains("file:"), "{body}");
    std::fs::remove_file(&out_of_rotation).unwrap();
    until_status(&c, &s.url("/readyz"), 200).await;

    // The probe's file cannot be written: a non-empty folder stands where it goes.
    // The probe's own file may stand there for a moment (it writes, reads back and
    // removes it): try again until the folder is made.
    let blocker = s.root().join("drydock/health-probe");
    let mut tries = 0;
    while let Err(e) = std::fs::create_dir_all(blocker.join("x")) {
        tries += 1;
        assert!(tries < 10_000, "cannot make {}: {e}", blocker.display());
        std::thread::yield_now();
    }
    let body = until_status(&c, &s.url("/readyz"), 503).await;
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert!(v["storage"].as_str().unwrap().contains("write"), "{body}");
    assert!(v.get("draining").is_none(), "{body}");
    // Distribution's path answers the same.
    let r = c.get(s.url("/debug/health")).send().await.unwrap();
    assert_eq!(r.status(), 503);
    // Liveness is not readiness.
    assert_eq!(c.get(s.url("/livez")).send().await.unwrap().status(), 200);
    std::fs::remove_dir_all(&blocker).unwrap();
    until_status(&c, &s.url("/readyz"), 200).await;
}

/// Unmounts a tmpfs when dropped, even when the test fails.
struct Mount(std::path::PathBuf);

impl Drop for Mount {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.0).status();
    }
}

/// A full disk shows on `/readyz`: the root is a 512 KiB tmpfs, filled up.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_disk_turns_readyz_red() {
    let root = tempfile::tempdir().unwrap();
    let st = Command::new("mount")
        .args(["-t", "tmpfs", "-o", "size=512k", "tmpfs"])
        .arg(root.path())
        .status()
        .expect("mount (the tests run as root)");
    assert!(st.success(), "cannot mount a tmpfs: the tests need root");
    let _mount = Mount(root.path().to_owned());
    let mut config = test_config(root.path());
    config.health.storagedriver.interval = std::time::Duration::from_millis(50);
    let s = TestServer::start_on(root, config).await;
    let c = client();
    until_status(&c, &s.url("/readyz"), 200).await;
    // Fill it: write until the filesystem refuses, and again after each look at
    // /readyz: a probe caught mid-write when the disk filled removes its own file,
    // and the page it frees must go to the filler, not to the next probe.
    let filler = s.root().join("filler");
    let fill = || {
        use std::io::Write;
        let mut f = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&filler)
            .unwrap();
        let chunk = vec![0u8; 4096];
        while f.write_all(&chunk).is_ok() {}
    };
    fill();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    let body = loop {
        let r = c.get(s.url("/readyz")).send().await.unwrap();
        let got = r.status().as_u16();
        let body = r.text().await.unwrap_or_default();
        if got == 503 {
            break body;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "/readyz stayed at {got} ({body}) on a full disk, want 503"
        );
        fill();
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    };
    assert!(body.contains("No space left"), "{body}");
    std::fs::remove_file(&filler).unwrap();
    until_status(&c, &s.url("/readyz"), 200).await;
}

/// SIGTERM turns `/readyz` red while the listener still accepts (for
/// `health.shutdown_delay`), and systemd hears READY=1 once the server listens,
/// STOPPING=1 at the signal, and WATCHDOG=1 pings when the unit asks for them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_drains_readiness_first_and_systemd_is_notified() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("config.yml");
    std::fs::write(
        &cfg,
        format!(
            "storage:\n  filesystem:\n    rootdirectory: {}\nhttp:\n  addr: 127.0.0.1:0\ngc:\n  on_startup: false\nhealth:\n  shutdown_delay: 60s\n",
            dir.path().join("root").display()
        ),
    )
    .unwrap();
    let sock_path = dir.path().join("notify.sock");
    let sock = std::os::unix::net::UnixDatagram::bind(&sock_path).unwrap();
    sock.set_read_timeout(Some(std::time::Duration::from_secs(20)))
        .unwrap();
    // WATCHDOG_PID must be the server's pid, as systemd sets it: exec through sh.
    let mut cmd = Command::new("sh");
    cmd.args([
        "-c",
        &format!(
            "WATCHDOG_PID=$$ exec {} serve {}",
            registry_binary().display(),
            cfg.display()
        ),
    ])
    .env("NOTIFY_SOCKET", &sock_path)
    .env("WATCHDOG_USEC", "200000");
    let server = ServerProcess::spawn_command(cmd);
    let recv = |want: &str| {
        let mut buf = [0u8; 512];
        let mut seen = Vec::new();
        loop {
            let n = sock
                .recv(&mut buf)
                .expect("a notification before the timeout");
            let msg = String::from_utf8_lossy(&buf[..n]).to_string();
            if msg.lines().any(|l| l == want) {
                return seen;
            }
            seen.push(msg);
        }
    };
    let before_ready = recv("READY=1");
    assert!(before_ready.is_empty(), "{before_ready:?}");
    // The server listens by the time READY=1 arrives.
    let c = client();
    let r = c.get(server.url("/readyz")).send().await.unwrap();
    assert_eq!(r.status(), 200);
    recv("WATCHDOG=1");

    // SAFETY: kill(2) on the child's pid.
    unsafe { libc::kill(server.child.id() as libc::pid_t, libc::SIGTERM) };
    recv("STOPPING=1");
    let body = until_status(&c, &server.url("/readyz"), 503).await;
    assert!(body.contains("draining"), "{body}");
    // Still serving while load balancers notice.
    let r = c.get(server.url("/v2/")).send().await.unwrap();
    assert_eq!(r.status(), 200);
}

/// Socket activation takes only a listening TCP socket: a UDP socket or a connected TCP
/// stream passed as fd 3 stops start-up with a clear message.
#[test]
fn socket_activation_refuses_what_is_not_a_listening_tcp_socket() {
    use std::os::fd::{AsRawFd, OwnedFd};
    use std::os::unix::process::CommandExt;
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("config.yml");
    std::fs::write(
        &cfg,
        format!(
            "storage:\n  filesystem:\n    rootdirectory: {}\nhttp:\n  addr: 127.0.0.1:0\n",
            dir.path().join("root").display()
        ),
    )
    .unwrap();
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let stream = std::net::TcpStream::connect(listener.local_addr().unwrap()).unwrap();
    let udp = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    for (fd, want) in [
        (OwnedFd::from(udp), "socket-activated"),
        (OwnedFd::from(stream), "not listening"),
    ] {
        let raw = fd.as_raw_fd();
        let mut cmd = Command::new("sh");
        cmd.args([
            "-c",
            &format!(
                "LISTEN_PID=$$ LISTEN_FDS=1 exec {} serve {}",
                registry_binary().display(),
                cfg.display()
            ),
        ])
        .env_remove("RUST_BACKTRACE");
        // SAFETY: only dup2 and fcntl, async-signal-safe, run between fork and exec.
        unsafe {
            cmd.pre_exec(move || {
                let rc = if raw == 3 {
                    libc::fcntl(3, libc::F_SETFD, 0)
                } else {
                    libc::dup2(raw, 3)
                };
                if rc < 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        let out = cmd.output().unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "it started: {stderr}");
        assert!(stderr.contains(want), "{stderr}");
    }
}
