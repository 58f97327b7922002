//! The collector as operators run it: the `registry garbage-collect` binary offline, the
//! same command delegating to a running server over the admin socket, SIGUSR1, the
//! one-server-per-root lock, and kill -9 in the middle of a sweep.

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use conformance::*;

fn write_config(dir: &Path, root: &Path, extra: &str) -> std::path::PathBuf {
    let p = dir.join("config.yml");
    std::fs::write(
        &p,
        format!(
            "version: 0.1\nlog:\n  level: info\n  accesslog:\n    disabled: true\nstorage:\n  filesystem:\n    rootdirectory: {}\n  delete:\n    enabled: true\nhttp:\n  addr: 127.0.0.1:0\n{extra}",
            root.display()
        ),
    )
    .unwrap();
    p
}

fn gc_cli(config: &Path, args: &[&str]) -> serde_json::Value {
    let out = Command::new(registry_binary())
        .arg("garbage-collect")
        .args(args)
        .arg("--json")
        .arg(config)
        .output()
        .expect("run garbage-collect");
    assert!(
        out.status.success(),
        "garbage-collect failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("bad JSON ({e}): {}", String::from_utf8_lossy(&out.stdout)))
}

/// Blobs in the pool: folders that have their data file.
fn data_count(root: &Path) -> usize {
    let blobs = root.join("docker/registry/v2/blobs/sha256");
    let Ok(rd) = std::fs::read_dir(blobs) else {
        return 0;
    };
    rd.flatten()
        .flat_map(|hh| std::fs::read_dir(hh.path()).into_iter().flatten().flatten())
        .filter(|b| b.path().join("data").exists())
        .count()
}

/// Blob folders in the pool, with or without their data file.
fn pool_count(root: &Path) -> usize {
    let blobs = root.join("docker/registry/v2/blobs/sha256");
    let Ok(rd) = std::fs::read_dir(blobs) else {
        return 0;
    };
    rd.flatten()
        .map(|hh| std::fs::read_dir(hh.path()).map(|r| r.count()).unwrap_or(0))
        .sum()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn offline_command_removes_garbage_and_reports_json() {
    let s = TestServer::start_with(|c| c.gc.on_startup = false).await;
    let c = client();
    let (keep, _) = push_image(&c, &s, "off/keep", "v1", 1, 2).await;
    let (gone, _) = push_image(&c, &s, "off/gone", "v1", 2, 2).await;
    let r = c
        .delete(s.url(&format!("/v2/off/gone/manifests/{gone}")))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 202);
    let root = s.stop().await;
    let dir = tempfile::tempdir().unwrap();
    let cfg = write_config(dir.path(), root.path(), "");
    let before = pool_count(root.path());
    let plan = tokio::task::spawn_blocking({
        let cfg = cfg.clone();
        move || gc_cli(&cfg, &["--dry-run", "--grace", "0s"])
    })
    .await
    .unwrap();
    assert_eq!(pool_count(root.path()), before, "dry run removed blobs");
    assert_eq!(plan["blobs_removed"], 4); // manifest, config, two layers of off/gone
    let report = tokio::task::spawn_blocking({
        let cfg = cfg.clone();
        move || gc_cli(&cfg, &["--grace", "0s"])
    })
    .await
    .unwrap();
    assert_eq!(report["removed"]["blobs"], plan["removed"]["blobs"]);
    assert_eq!(pool_count(root.path()), before - 4);
    // Within the default grace period nothing is young enough to go... nothing left anyway.
    let again = tokio::task::spawn_blocking(move || gc_cli(&cfg, &["--grace", "0s"]))
        .await
        .unwrap();
    assert_eq!(again["blobs_removed"], 0);
    let s = TestServer::start_on(root, s_config()).await;
    let r = c
        .get(s.url(&format!("/v2/off/keep/manifests/{keep}")))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
}

fn s_config() -> registry::Config {
    let mut c = test_config(Path::new("/nonexistent"));
    c.gc.on_startup = false;
    c
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn command_asks_the_running_server_and_a_second_server_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("root");
    std::fs::create_dir_all(&root).unwrap();
    let cfg = write_config(
        dir.path(),
        &root,
        "gc:\n  on_startup: false\n  pending_ttl: 0s\n",
    );
    let server = ServerProcess::spawn(&cfg);
    let c = client();
    let data = random_bytes(4096, 7);
    let dgst = digest_of(&data);
    let r = c
        .post(server.url(&format!("/v2/srv/blobs/uploads/?digest={dgst}")))
        .body(data)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201);

    let report = tokio::task::spawn_blocking({
        let cfg = cfg.clone();
        move || gc_cli(&cfg, &["--grace", "0s"])
    })
    .await
    .unwrap();
    assert_eq!(report["removed"]["blobs"][0], dgst.as_str());
    let (_, st) = conformance::admin(&root, "GET", "/admin/gc").await;
    assert_eq!(
        st["cycles"], 1,
        "the server did not run the collection: {st}"
    );

    let out = tokio::task::spawn_blocking(move || {
        Command::new(registry_binary())
            .arg("serve")
            .arg(&cfg)
            .output()
            .unwrap()
    })
    .await
    .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("owned by another drydock process"),
        "{stderr}"
    );
    assert!(
        stderr.contains(&format!("(pid {})", server.child.id())) && !stderr.contains("Some("),
        "the message should name the holder's pid plainly: {stderr}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigusr1_schedules_a_cycle() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("root");
    std::fs::create_dir_all(&root).unwrap();
    let cfg = write_config(dir.path(), &root, "gc:\n  on_startup: false\n");
    let server = ServerProcess::spawn(&cfg);
    let (_, st) = conformance::admin(&root, "GET", "/admin/gc").await;
    assert_eq!(st["cycles"], 0);
    let pid = server.child.id() as i32;
    // SAFETY: sending a signal to our own child process.
    assert_eq!(unsafe { libc::kill(pid, libc::SIGUSR1) }, 0);
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let (_, st) = conformance::admin(&root, "GET", "/admin/gc").await;
        if st["cycles"].as_u64() >= Some(1) {
            break;
        }
        assert!(Instant::now() < deadline, "SIGUSR1 did not start a cycle");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn collector_killed_mid_sweep_then_rerun_leaves_every_image_pullable() {
    let s = TestServer::start_with(|c| c.gc.on_startup = false).await;
    let c = client();
    let mut images = Vec::new();
    for i in 0..12u64 {
        let repo = format!("crash/r{}", i % 4);
        let (d, body) = push_image(&c, &s, &repo, &format!("t{i}"), 100 + i, 3).await;
        images.push((repo, d, body));
    }
    let root = s.stop().await;
    // Twenty thousand orphans, written straight into the pool's layout.
    let orphans = 20_000usize;
    for i in 0..orphans {
        let data = format!("orphan {i}");
        let hex = &digest_of(data.as_bytes())[7..];
        let dir = root.path().join(format!(
            "docker/registry/v2/blobs/sha256/{}/{hex}",
            &hex[..2]
        ));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("data"), data).unwrap();
    }
    let live = pool_count(root.path()) - orphans;
    let dir = tempfile::tempdir().unwrap();
    let cfg = write_config(dir.path(), root.path(), "");

    let mut child = Command::new(registry_binary())
        .args(["garbage-collect", "--grace", "0s", "--quiet"])
        .arg(&cfg)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let total = live + orphans;
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let n = pool_count(root.path());
        if n < total - orphans / 10 {
            break;
        }
        assert!(Instant::now() < deadline, "sweep never started");
        assert!(
            child.try_wait().unwrap().is_none(),
            "collector finished before it could be killed"
        );
        std::thread::sleep(Duration::from_millis(2));
    }
    child.kill().unwrap(); // SIGKILL
    child.wait().unwrap();
    let left = data_count(root.path());
    assert!(
        left > live,
        "the sweep had finished; the kill came too late ({left} left)"
    );

    let report = tokio::task::spawn_blocking(move || gc_cli(&cfg, &["--grace", "0s"]))
        .await
        .unwrap();
    // A deletion cut in half leaves a folder without data: not a blob, but tidied too.
    assert_eq!(report["blobs_removed"].as_u64(), Some((left - live) as u64));
    assert_eq!(pool_count(root.path()), live, "leftover folders remain");
    assert_eq!(data_count(root.path()), live);

    let s = TestServer::start_on(root, s_config()).await;
    for (repo, d, body) in images {
        let r = c
            .get(s.url(&format!("/v2/{repo}/manifests/{d}")))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
        assert_eq!(r.text().await.unwrap(), body);
        let m: serde_json::Value = serde_json::from_str(&body).unwrap();
        let mut blobs: Vec<String> = m["layers"]
            .as_array()
            .unwrap()
            .iter()
            .map(|l| l["digest"].as_str().unwrap().to_owned())
            .collect();
        blobs.push(m["config"]["digest"].as_str().unwrap().to_owned());
        for b in blobs {
            let r = c
                .get(s.url(&format!("/v2/{repo}/blobs/{b}")))
                .send()
                .await
                .unwrap();
            assert_eq!(r.status(), 200);
            assert_eq!(digest_of(&r.bytes().await.unwrap()), b);
        }
    }
}

/// The README's first commands work as written: without CONFIG, `garbage-collect` and
/// `maintenance` use the embedded default (`./data`) like `serve`, and `maintenance
/// status` only reads (no lock file, no folder appears).
#[test]
fn cli_commands_run_without_config_and_status_creates_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let run = |args: &[&str]| {
        Command::new(registry_binary())
            .args(args)
            .current_dir(dir.path())
            .env_remove("RUST_LOG")
            .output()
            .unwrap()
    };
    let out = run(&["maintenance", "status"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("server: none owns ./data"),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    assert_eq!(
        std::fs::read_dir(dir.path()).unwrap().count(),
        0,
        "maintenance status created something"
    );
    std::fs::create_dir_all(dir.path().join("data")).unwrap();
    let out = run(&["maintenance", "status"]);
    assert!(out.status.success());
    assert!(
        !dir.path().join("data/drydock").exists(),
        "maintenance status created drydock/ (a lock file)"
    );
    let out = run(&[
        "garbage-collect",
        "--dry-run",
        "--remove-untagged",
        "--json",
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(report["dry_run"], true, "{report}");
}
