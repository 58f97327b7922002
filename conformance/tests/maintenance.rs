//! Scheduled maintenance against the real server and store: schedules fire and record
//! their runs, runs never overlap, time limits cancel, load pauses and resumes, the
//! upload purge, the scrubber's quarantine, tag retention, and the systemd/crontab
//! installers (checked with `systemd-analyze verify`).

use std::path::Path;
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant, SystemTime};

use conformance::*;
use gc::maintenance::{Maintenance, Outcome, Task};
use registry::config::ImagePolicy;

async fn quiet_server(adjust: impl FnOnce(&mut registry::Config)) -> TestServer {
    TestServer::start_with(|c| {
        c.gc.on_startup = false;
        c.maintenance.enabled = false;
        adjust(c);
    })
    .await
}

fn queue(s: &TestServer) -> Maintenance {
    s.maintenance.clone()
}

fn set_mtime(p: &Path, t: SystemTime) {
    let f = std::fs::File::open(p).unwrap();
    f.set_modified(t).unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn schedules_fire_and_record_last_runs() {
    let s = TestServer::start_with(|c| {
        c.gc.on_startup = false;
        c.maintenance.tick = Duration::from_millis(100);
        for t in [
            &mut c.maintenance.tasks.gc,
            &mut c.maintenance.tasks.retention,
            &mut c.maintenance.tasks.scrub,
        ] {
            t.enabled = false;
        }
        c.maintenance.tasks.uploads.schedule = "1s".into();
    })
    .await;
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut runs = Vec::new();
    while Instant::now() < deadline {
        let (_, st) = s.admin("GET", "/admin/maintenance").await;
        if let Some(r) = st["last"].as_array().and_then(|l| l.first()).cloned() {
            if runs.last() != Some(&r["started_at"]) {
                runs.push(r["started_at"].clone());
            }
            assert_eq!(r["task"], "uploads");
            assert_eq!(r["trigger"], "schedule");
            assert_eq!(r["outcome"], "ok");
            if runs.len() >= 2 {
                break;
            }
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(
        runs.len() >= 2,
        "the 1 s schedule did not fire twice: {runs:?}"
    );
    let record =
        gc::maintenance::last_record(&registry::storage::FsDriver::new(s.root()), Task::Uploads)
            .await
            .expect("record on disk");
    assert_eq!(record.outcome, Outcome::Ok);
    assert!(
        gc::maintenance::last_record(&registry::storage::FsDriver::new(s.root()), Task::Scrub)
            .await
            .is_none(),
        "a disabled task ran"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn overlapping_requests_never_run_a_task_twice_at_once() {
    let s = quiet_server(|_| {}).await;
    let c = client();
    for i in 0..20 {
        push_blob(&c, &s, "overlap", &random_bytes(64 << 10, i)).await;
    }
    let records = queue(&s)
        .run(vec![Task::Scrub, Task::Scrub, Task::Uploads], "test")
        .await;
    let outcomes: Vec<_> = records.iter().map(|r| (r.task, r.outcome)).collect();
    assert_eq!(
        outcomes,
        vec![
            (Task::Scrub, Outcome::Ok),
            (Task::Scrub, Outcome::Skipped),
            (Task::Uploads, Outcome::Ok)
        ]
    );
    let st = queue(&s).status().await;
    assert_eq!(st.counters.skipped, 1);
    assert_eq!(st.counters.finished, 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_task_over_its_time_limit_is_cancelled_and_recorded_killed() {
    let s = quiet_server(|c| {
        c.maintenance.tasks.scrub.time_limit = Duration::from_millis(20);
        c.admin.metrics = true;
    })
    .await;
    let c = client();
    for i in 0..8 {
        push_blob(&c, &s, "slow", &random_bytes(16 << 20, 100 + i)).await;
    }
    let r = queue(&s).run(vec![Task::Scrub], "test").await.remove(0);
    assert_eq!(r.outcome, Outcome::Killed, "{r:?}");
    assert!(r.message.contains("time limit"));
    assert_eq!(
        gc::maintenance::last_record(&registry::storage::FsDriver::new(s.root()), Task::Scrub)
            .await
            .unwrap()
            .outcome,
        Outcome::Killed
    );
    assert_eq!(queue(&s).status().await.counters.killed, 1);
    let text = s.metrics.as_ref().unwrap().render();
    for want in [
        r#"drydock_maintenance_runs_total{task="scrub",outcome="killed"} 1"#,
        r#"drydock_maintenance_duration_seconds_count{task="scrub"} 1"#,
        r#"drydock_maintenance_running{task="scrub"} 0"#,
    ] {
        assert!(text.lines().any(|l| l == want), "no {want} in\n{text}");
    }
    assert!(
        !text.contains(r#"drydock_maintenance_last_success_timestamp_seconds{task="scrub"}"#),
        "a killed run counted as a success"
    );
    // A killed run does not wedge the task.
    let s2 = quiet_server(|_| {}).await;
    assert_eq!(
        queue(&s2).run(vec![Task::Scrub], "test").await[0].outcome,
        Outcome::Ok
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tasks_wait_while_the_load_is_high_and_resume_below_the_lower_mark() {
    let s = quiet_server(|c| {
        c.maintenance.load_pause = 4.0;
        c.maintenance.load_resume = 1.0;
    })
    .await;
    let high = Arc::new(AtomicBool::new(true));
    let probe_flag = high.clone();
    let m = queue(&s).with_load_probe(Arc::new(move || {
        Some(if probe_flag.load(Ordering::SeqCst) {
            9.0
        } else {
            0.5
        })
    }));
    let runner = {
        let m = m.clone();
        tokio::spawn(async move { m.run(vec![Task::Uploads], "test").await })
    };
    tokio::time::sleep(Duration::from_millis(700)).await;
    let st = m.status().await;
    assert!(st.paused_for_load, "not paused at load 9 > 4");
    assert_eq!(st.counters.queued, 1);
    assert!(!runner.is_finished());
    high.store(false, Ordering::SeqCst);
    let records = tokio::time::timeout(Duration::from_secs(5), runner)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(records[0].outcome, Outcome::Ok);
    assert!(!m.status().await.paused_for_load);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upload_purge_removes_only_old_sessions() {
    let s = quiet_server(|c| c.uploads.max_age = Duration::from_secs(24 * 3600)).await;
    let c = client();
    let mut locations = Vec::new();
    for _ in 0..2 {
        let r = c
            .post(s.url("/v2/purge/blobs/uploads/"))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 202);
        locations.push(r.headers()["location"].to_str().unwrap().to_owned());
    }
    let r = c
        .patch(s.url(&locations[0]))
        .body(vec![1u8; 100])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 202);
    // Age the first session by three days: its start, its data, its writer's state
    // (every flush rewrites it) and its folder.
    let id = locations[0].rsplit('/').next().unwrap();
    let dir = s.root().join(format!(
        "docker/registry/v2/repositories/purge/_uploads/{id}"
    ));
    let old = SystemTime::now() - Duration::from_secs(3 * 86_400);
    let old_text = time::OffsetDateTime::from(old)
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap();
    std::fs::write(dir.join("startedat"), old_text).unwrap();
    for p in [
        dir.join("startedat"),
        dir.join("data"),
        dir.join("data.state"),
        dir.clone(),
    ] {
        set_mtime(&p, old);
    }
    let r = queue(&s).run(vec![Task::Uploads], "test").await.remove(0);
    assert_eq!(r.outcome, Outcome::Ok);
    assert_eq!(r.summary["removed"].as_array().unwrap().len(), 1);
    assert_eq!(r.summary["kept"], 1);
    assert_eq!(
        c.get(s.url(&locations[0])).send().await.unwrap().status(),
        404
    );
    assert_eq!(
        c.get(s.url(&locations[1])).send().await.unwrap().status(),
        204
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scrub_quarantines_a_corrupted_blob_and_a_repush_heals_it() {
    let s = quiet_server(|_| {}).await;
    let c = client();
    let (dgst, body) = push_image(&c, &s, "scrub/img", "v1", 7, 2).await;
    let m: serde_json::Value = serde_json::from_str(&body).unwrap();
    let layer = m["layers"][0]["digest"].as_str().unwrap().to_owned();
    let hex = &layer[7..];
    let data = s.root().join(format!(
        "docker/registry/v2/blobs/sha256/{}/{hex}/data",
        &hex[..2]
    ));
    let original = std::fs::read(&data).unwrap();
    let mut bad = original.clone();
    bad[10] ^= 0xff;
    std::fs::write(&data, &bad).unwrap();

    let r = queue(&s).run(vec![Task::Scrub], "test").await.remove(0);
    assert_eq!(r.outcome, Outcome::Ok);
    let corrupt = r.summary["corrupt"].as_array().unwrap();
    assert_eq!(corrupt.len(), 1, "{}", r.summary);
    assert_eq!(corrupt[0]["digest"], layer.as_str());
    let moved = corrupt[0]["quarantined_to"].as_str().unwrap();
    assert_eq!(
        std::fs::read(Path::new(moved).join("data")).unwrap(),
        bad,
        "quarantine lost the bytes"
    );
    assert!(!data.exists());
    assert_eq!(
        r.summary["dangling_layer_links"].as_array().unwrap().len(),
        1
    );
    // Clients now see it as unknown, push it again, and the image pulls intact.
    assert_eq!(
        c.head(s.url(&format!("/v2/scrub/img/blobs/{layer}")))
            .send()
            .await
            .unwrap()
            .status(),
        404
    );
    push_blob(&c, &s, "scrub/img", &original).await;
    let got = c
        .get(s.url(&format!("/v2/scrub/img/blobs/{layer}")))
        .send()
        .await
        .unwrap()
        .bytes()
        .await
        .unwrap();
    assert_eq!(digest_of(&got), layer);
    let r = c
        .get(s.url(&format!("/v2/scrub/img/manifests/{dgst}")))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let again = queue(&s).run(vec![Task::Scrub], "test").await.remove(0);
    assert!(again.summary["corrupt"].as_array().unwrap().is_empty());
}

async fn tags(c: &reqwest::Client, s: &TestServer, repo: &str) -> Vec<String> {
    let v: serde_json::Value = c
        .get(s.url(&format!("/v2/{repo}/tags/list")))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let mut t: Vec<String> = v["tags"]
        .as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_str().unwrap().to_owned())
        .collect();
    t.sort();
    t
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retention_keeps_exactly_what_the_policies_promise() {
    let s = quiet_server(|c| {
        c.retention.images = vec![ImagePolicy {
            repositories: "ret/.*".into(),
            keep_last: Some(2),
            keep_tags: Some("release-.*".into()),
            untagged_older_than: Some(Duration::from_secs(3600)),
        }];
    })
    .await;
    let c = client();
    for (i, t) in ["release-1", "t1", "t2", "t3", "t4"].iter().enumerate() {
        push_image(&c, &s, "ret/app", t, 10 + i as u64, 1).await;
        push_image(&c, &s, "keep/app", t, 10 + i as u64, 1).await;
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // Two untagged manifests: one old, one fresh.
    let (old, _) = push_image(&c, &s, "ret/app", "tmp-old", 30, 1).await;
    let (fresh, _) = push_image(&c, &s, "ret/app", "tmp-fresh", 31, 1).await;
    for t in ["tmp-old", "tmp-fresh"] {
        assert_eq!(
            c.delete(s.url(&format!("/v2/ret/app/manifests/{t}")))
                .send()
                .await
                .unwrap()
                .status(),
            202
        );
    }
    let rev = |d: &str| {
        s.root().join(format!(
            "docker/registry/v2/repositories/ret/app/_manifests/revisions/sha256/{}/link",
            &d[7..]
        ))
    };
    set_mtime(&rev(&old), SystemTime::now() - Duration::from_secs(7200));

    let dry = queue(&s)
        .run_with(vec![Task::Retention], "test", true)
        .await
        .remove(0)
        .summary;
    assert_eq!(
        tags(&c, &s, "ret/app").await.len(),
        5,
        "dry run removed tags"
    );
    let r = queue(&s).run(vec![Task::Retention], "test").await.remove(0);
    assert_eq!(r.outcome, Outcome::Ok, "{r:?}");
    assert_eq!(r.summary["tags_removed"], dry["tags_removed"]);
    assert_eq!(tags(&c, &s, "ret/app").await, vec!["release-1", "t3", "t4"]);
    assert_eq!(
        tags(&c, &s, "keep/app").await.len(),
        5,
        "a repository outside the pattern was touched"
    );
    assert_eq!(
        r.summary["manifests_removed"],
        serde_json::json!([format!("ret/app@{old}")])
    );
    assert_eq!(
        c.get(s.url(&format!("/v2/ret/app/manifests/{old}")))
            .send()
            .await
            .unwrap()
            .status(),
        404
    );
    assert_eq!(
        c.get(s.url(&format!("/v2/ret/app/manifests/{fresh}")))
            .send()
            .await
            .unwrap()
            .status(),
        200
    );
}

fn config_file(dir: &Path, root: &Path, extra: &str) -> std::path::PathBuf {
    let p = dir.join("config.yml");
    std::fs::write(
        &p,
        format!("storage:\n  filesystem:\n    rootdirectory: {}\n  delete:\n    enabled: true\nhttp:\n  addr: 127.0.0.1:0\n{extra}", root.display()),
    )
    .unwrap();
    p
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cli_runs_go_through_the_server_that_owns_the_root() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("root");
    std::fs::create_dir_all(&root).unwrap();
    let cfg = config_file(
        dir.path(),
        &root,
        "gc:\n  on_startup: false\nmaintenance:\n  enabled: false\n",
    );
    let _server = ServerProcess::spawn(&cfg);
    let out = tokio::task::spawn_blocking(move || {
        Command::new(registry_binary())
            .args([
                "maintenance",
                "run",
                "--task",
                "uploads",
                "--task",
                "gc",
                "--json",
            ])
            .arg(&cfg)
            .output()
            .unwrap()
    })
    .await
    .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let records: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(records.as_array().unwrap().len(), 2);
    assert!(
        records
            .as_array()
            .unwrap()
            .iter()
            .all(|r| r["outcome"] == "ok" && r["trigger"] == "cli")
    );
    let (_, st) = conformance::admin(&root, "GET", "/admin/maintenance").await;
    assert_eq!(
        st["counters"]["finished"], 2,
        "the server did not run them: {st}"
    );
    let (_, gc_status) = conformance::admin(&root, "GET", "/admin/gc").await;
    assert_eq!(
        gc_status["cycles"], 1,
        "gc did not go through the server's collector"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn start_writes_units_systemd_accepts_and_a_crontab_block_stop_removes_whole() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("root");
    let cfg = config_file(dir.path(), &root, "");
    let units = dir.path().join("units");
    let run = |args: &[&str]| {
        let out = Command::new(registry_binary())
            .arg("maintenance")
            .args(args)
            .arg(&cfg)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    };
    run(&[
        "start",
        "--scheduler",
        "systemd-timer",
        "--unit-dir",
        units.to_str().unwrap(),
    ]);
    let mut files: Vec<String> = std::fs::read_dir(&units)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    files.sort();
    assert_eq!(files.len(), 6, "{files:?}");
    for schedule in ["hourly", "daily", "weekly"] {
        let timer =
            std::fs::read_to_string(units.join(format!("registry-maintenance@{schedule}.timer")))
                .unwrap();
        assert!(
            timer.contains("Persistent=true") && timer.contains(&format!("OnCalendar={schedule}"))
        );
        let service =
            std::fs::read_to_string(units.join(format!("registry-maintenance@{schedule}.service")))
                .unwrap();
        assert!(service.contains(&format!(
            "{} maintenance run --schedule={schedule}",
            registry_binary().canonicalize().unwrap().display()
        )));
        let out = Command::new("systemd-analyze")
            .current_dir(&units)
            .args([
                "verify",
                &format!("registry-maintenance@{schedule}.timer"),
                &format!("registry-maintenance@{schedule}.service"),
            ])
            .output()
            .expect("systemd-analyze (package systemd) must be installed");
        assert!(
            out.status.success(),
            "systemd-analyze verify: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    // The verifier is not vacuous: a unit naming a missing binary fails it.
    let broken = units.join("registry-maintenance@daily.service");
    let text = std::fs::read_to_string(&broken).unwrap();
    std::fs::write(
        &broken,
        text.replace(
            &registry_binary()
                .canonicalize()
                .unwrap()
                .display()
                .to_string(),
            "/nonexistent/registry",
        ),
    )
    .unwrap();
    let out = Command::new("systemd-analyze")
        .current_dir(&units)
        .args(["verify", "registry-maintenance@daily.service"])
        .output()
        .unwrap();
    assert!(
        !out.status.success(),
        "systemd-analyze accepted a unit with a missing binary"
    );
    run(&[
        "stop",
        "--scheduler",
        "systemd-timer",
        "--unit-dir",
        units.to_str().unwrap(),
    ]);
    assert_eq!(std::fs::read_dir(&units).unwrap().count(), 0);

    let crontab = dir.path().join("crontab");
    let mine = "MAILTO=ops@example.com\n0 2 * * * /usr/local/bin/backup\n";
    std::fs::write(&crontab, mine).unwrap();
    run(&[
        "start",
        "--scheduler",
        "crontab",
        "--crontab-file",
        crontab.to_str().unwrap(),
    ]);
    let with = std::fs::read_to_string(&crontab).unwrap();
    assert!(with.starts_with(mine));
    assert_eq!(with.matches("maintenance run --schedule=").count(), 3);
    run(&[
        "start",
        "--scheduler",
        "crontab",
        "--crontab-file",
        crontab.to_str().unwrap(),
    ]);
    assert_eq!(
        std::fs::read_to_string(&crontab).unwrap(),
        with,
        "a second start added a second block"
    );
    run(&[
        "stop",
        "--scheduler",
        "crontab",
        "--crontab-file",
        crontab.to_str().unwrap(),
    ]);
    assert_eq!(std::fs::read_to_string(&crontab).unwrap(), mine);
}

#[test]
fn deploy_units_pass_systemd_analyze_verify() {
    let deploy = Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy");
    let dir = tempfile::tempdir().unwrap();
    let binary = registry_binary().canonicalize().unwrap();
    for (src, dst) in [
        ("registry.service", "registry.service"),
        ("registry.socket", "registry.socket"),
        (
            "registry-maintenance@.service",
            "registry-maintenance@daily.service",
        ),
        (
            "registry-maintenance@.timer",
            "registry-maintenance@daily.timer",
        ),
    ] {
        let text = std::fs::read_to_string(deploy.join(src)).unwrap();
        assert!(
            text.contains("/usr/bin/registry")
                || src.ends_with(".socket")
                || src.ends_with(".timer")
        );
        std::fs::write(
            dir.path().join(dst),
            text.replace("/usr/bin/registry", &binary.display().to_string()),
        )
        .unwrap();
    }
    let service = std::fs::read_to_string(deploy.join("registry.service")).unwrap();
    // The shipped config's root is where the hardened unit may write.
    let config = registry::Config::load(
        Some(&deploy.join("config.yml")),
        Vec::<(String, String)>::new(),
    )
    .unwrap()
    .config;
    let root = config
        .storage
        .filesystem
        .rootdirectory
        .display()
        .to_string();
    assert!(
        service.contains(&format!("ReadWritePaths={root}\n")),
        "deploy/config.yml stores under {root}, which registry.service cannot write"
    );
    for hardening in [
        "ProtectSystem=strict",
        "ReadWritePaths=/var/lib/drydock",
        "NoNewPrivileges=yes",
        "User=drydock",
        "Type=notify",
        "WatchdogSec=",
    ] {
        assert!(
            service.contains(hardening),
            "registry.service lacks {hardening}"
        );
    }
    let out = Command::new("systemd-analyze")
        .current_dir(dir.path())
        .args([
            "verify",
            "registry.socket",
            "registry.service",
            "registry-maintenance@daily.timer",
            "registry-maintenance@daily.service",
        ])
        .output()
        .expect("systemd-analyze (package systemd) must be installed");
    assert!(
        out.status.success(),
        "systemd-analyze verify: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_server_accepts_a_socket_activated_listener() {
    use std::os::fd::AsRawFd;
    use std::os::unix::process::CommandExt;
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("root");
    // http.addr names an address this machine does not have: only the passed socket
    // can serve.
    let cfg = config_file(dir.path(), &root, "");
    let text = std::fs::read_to_string(&cfg)
        .unwrap()
        .replace("127.0.0.1:0", "203.0.113.1:1");
    std::fs::write(&cfg, text).unwrap();
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let fd = listener.as_raw_fd();
    // LISTEN_PID must be the server's pid: exec through sh, which knows it as $$.
    let mut cmd = Command::new("sh");
    cmd.args([
        "-c",
        &format!(
            "LISTEN_PID=$$ exec {} serve {}",
            registry_binary().display(),
            cfg.display()
        ),
    ])
    .env("LISTEN_FDS", "1")
    .stderr(std::process::Stdio::null());
    // SAFETY: only dup2 and fcntl, which are async-signal-safe, run between fork and
    // exec.
    unsafe {
        cmd.pre_exec(move || {
            // dup2 onto itself keeps FD_CLOEXEC: when the listener already is fd 3, the
            // flag is cleared instead, or exec would close it.
            let rc = if fd == 3 {
                libc::fcntl(3, libc::F_SETFD, 0)
            } else {
                libc::dup2(fd, 3)
            };
            if rc < 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let mut child = cmd.spawn().unwrap();
    drop(listener);
    let c = reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .build()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    let status = loop {
        match c.get(format!("http://{addr}/v2/")).send().await {
            Ok(r) => break r.status(),
            Err(_) if Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(50)).await
            }
            Err(e) => panic!("the activated server never answered: {e}"),
        }
    };
    let _ = child.kill();
    let _ = child.wait();
    assert_eq!(status, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_retention_task_applies_artifact_branch_policies_too() {
    let s = quiet_server(|_| {}).await;
    let c = client();
    for tag in ["b1", "b2", "b3"] {
        let r = c
            .put(s.url(&format!("/artifacts/main/{tag}/job/docs/index.html")))
            .body(format!("docs of {tag}"))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 201, "{}", r.text().await.unwrap());
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let r = c
        .put(s.url("/artifacts/main/policy"))
        .body(r#"{"max_daily_tags": 1}"#)
        .send()
        .await
        .unwrap();
    assert!(r.status().is_success(), "{}", r.status());
    let r = queue(&s).run(vec![Task::Retention], "test").await.remove(0);
    assert_eq!(r.outcome, Outcome::Ok, "{r:?}");
    for (tag, status) in [("b1", 404), ("b2", 404), ("b3", 200)] {
        let got = c
            .get(s.url(&format!("/artifacts/main/{tag}/job/docs/index.html")))
            .send()
            .await
            .unwrap();
        assert_eq!(got.status(), status, "{tag}: {}", r.summary);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_first_start_runs_no_task_until_its_period_has_passed() {
    let s = quiet_server(|_| {}).await;
    let m = queue(&s);
    // A CLI on a root no server ever scheduled: a task that never ran is due.
    assert_eq!(m.due(None, false).await.len(), 4);
    m.begin_schedule().await;
    assert_eq!(
        m.due(None, false).await,
        Vec::<Task>::new(),
        "a first start made every task due at once"
    );
    // The start is remembered in the root: another process (a restart) agrees.
    let again = Maintenance::new(
        registry::server::state_from_config(&s.config)
            .expect("store")
            .store,
        s.config.clone(),
        None,
    );
    assert_eq!(again.due(None, false).await, Vec::<Task>::new());
    // A task whose last run is a period old is due again.
    let mut r = m.run(vec![Task::Uploads], "test").await.remove(0);
    r.started_unix -= 3601.0;
    std::fs::write(
        s.root().join("drydock/maintenance/uploads.json"),
        serde_json::to_vec(&r).unwrap(),
    )
    .unwrap();
    assert_eq!(m.due(None, false).await, vec![Task::Uploads]);
}
