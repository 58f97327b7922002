//! Notifications against a real HTTP receiver (a small axum server in the test): the
//! events of pushes, pulls, mounts and deletes arrive with Distribution's fields; while
//! the receiver is down they are kept; and every event queued before a kill -9 of the
//! real binary is delivered after a restart once the receiver answers.

use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use conformance::receiver::Receiver;
use conformance::*;
use serde_json::Value;

fn endpoint(
    name: &str,
    url: &str,
    extra: impl FnOnce(&mut registry::config::EndpointConfig),
) -> registry::config::EndpointConfig {
    let mut e = registry::config::EndpointConfig {
        name: name.into(),
        url: url.into(),
        backoff: std::time::Duration::from_millis(50),
        threshold: 2,
        ..Default::default()
    };
    e.headers
        .insert("Authorization".into(), vec!["Bearer s3cret".into()]);
    extra(&mut e);
    e
}

fn find<'a>(ev: &'a [Value], action: &str, pred: impl Fn(&Value) -> bool) -> Option<&'a Value> {
    ev.iter()
        .find(|e| e["action"] == action && pred(&e["target"]))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn push_pull_mount_and_delete_arrive_with_distributions_fields() {
    let all = Receiver::start().await;
    let no_pulls = Receiver::start().await;
    let (u1, u2) = (all.url.clone(), no_pulls.url.clone());
    let s = TestServer::start_with(move |c| {
        c.gc.on_startup = false;
        c.notifications.endpoints = vec![
            endpoint("all", &u1, |_| {}),
            endpoint("no-pulls", &u2, |e| e.ignore.actions = vec!["pull".into()]),
        ];
    })
    .await;
    let c = client();
    let (digest, manifest) = push_image(&c, &s, "notify/app", "v1", 3, 1).await;
    let r = c
        .get(s.url("/v2/notify/app/manifests/v1"))
        .header("accept", "application/vnd.oci.image.manifest.v1+json")
        .header("user-agent", "notify-test/1.0")
        .header("x-request-id", "pull-1")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let blob = random_bytes(5000, 77);
    let bd = push_blob(&c, &s, "notify/app", &blob).await;
    let r = c
        .get(s.url(&format!("/v2/notify/app/blobs/{bd}")))
        .send()
        .await
        .unwrap();
    assert_eq!(r.bytes().await.unwrap().len(), blob.len());
    let r = c
        .post(s.url(&format!(
            "/v2/notify/other/blobs/uploads/?mount={bd}&from=notify/app"
        )))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201);
    let r = c
        .delete(s.url(&format!("/v2/notify/app/manifests/{digest}")))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 202);

    let ev = all
        .until("push, pulls, mount and delete", |ev| {
            find(ev, "delete", |_| true).is_some()
                && find(ev, "mount", |_| true).is_some()
                && ev.iter().filter(|e| e["action"] == "pull").count() >= 2
        })
        .await;
    let (headers, _) = all.got.lock().unwrap()[0].clone();
    assert_eq!(
        headers["content-type"],
        "application/vnd.docker.distribution.events.v2+json"
    );
    assert_eq!(headers["authorization"], "Bearer s3cret");

    let push = find(&ev, "push", |t| t["tag"] == "v1").expect("the manifest push");
    let t = &push["target"];
    assert_eq!(t["mediaType"], "application/vnd.oci.image.manifest.v1+json");
    assert_eq!(t["digest"], digest.as_str());
    assert_eq!(t["size"], manifest.len());
    assert_eq!(t["length"], manifest.len());
    assert_eq!(t["repository"], "notify/app");
    assert_eq!(
        t["url"],
        format!("http://{}/v2/notify/app/manifests/{digest}", s.host()).as_str()
    );
    assert_eq!(push["request"]["method"], "PUT");
    assert!(
        push["request"]["addr"]
            .as_str()
            .unwrap()
            .starts_with("127.0.0.1:")
    );
    assert_eq!(push["request"]["host"], s.host().as_str());
    assert!(!push["source"]["instanceID"].as_str().unwrap().is_empty());
    assert!(push["source"]["addr"].as_str().unwrap().contains(':'));
    assert!(push["timestamp"].as_str().unwrap().contains('T'));

    let pull = find(&ev, "pull", |t| t["tag"] == "v1").expect("the manifest pull");
    assert_eq!(pull["request"]["id"], "pull-1");
    assert_eq!(pull["request"]["useragent"], "notify-test/1.0");
    assert_eq!(pull["request"]["method"], "GET");
    assert_eq!(pull["target"]["digest"], digest.as_str());
    assert_eq!(pull["target"]["size"], manifest.len());

    let blob_push = find(&ev, "push", |t| t["digest"] == bd.as_str()).expect("the blob push");
    assert_eq!(blob_push["target"]["mediaType"], "application/octet-stream");
    assert_eq!(blob_push["target"]["size"], blob.len());
    let blob_pull = find(&ev, "pull", |t| t["digest"] == bd.as_str()).expect("the blob pull");
    assert_eq!(blob_pull["target"]["size"], blob.len());

    let mount = find(&ev, "mount", |_| true).unwrap();
    assert_eq!(mount["target"]["repository"], "notify/other");
    assert_eq!(mount["target"]["fromRepository"], "notify/app");
    assert_eq!(mount["target"]["digest"], bd.as_str());
    assert_eq!(mount["target"]["size"], blob.len());

    let delete = find(&ev, "delete", |_| true).unwrap();
    assert_eq!(delete["target"]["repository"], "notify/app");
    assert_eq!(delete["target"]["digest"], digest.as_str());

    let mut ids: Vec<&str> = ev.iter().map(|e| e["id"].as_str().unwrap()).collect();
    ids.sort();
    ids.dedup();
    assert_eq!(ids.len(), ev.len(), "event ids are not unique");

    // The second endpoint ignores pulls and gets everything else.
    let ev2 = no_pulls
        .until("the delete on the second endpoint", |ev| {
            find(ev, "delete", |_| true).is_some()
        })
        .await;
    assert!(ev2.iter().all(|e| e["action"] != "pull"), "{ev2:#?}");
    assert!(find(&ev2, "mount", |_| true).is_some());

    // A collection's removals are delete events too.
    let mut opts = s.cleaner.options().clone();
    opts.grace = Duration::ZERO;
    opts.remove_untagged = true;
    let (d2, _) = push_image(&c, &s, "notify/gc", "old", 4, 1).await;
    push_image(&c, &s, "notify/gc", "old", 5, 1).await; // moves the tag: d2 is untagged
    s.cleaner.run_now(&opts).await.unwrap();
    let ev = all
        .until("the collector's delete of the untagged manifest", |ev| {
            find(ev, "delete", |t| t["digest"] == d2.as_str()).is_some()
        })
        .await;
    let gc_delete = find(&ev, "delete", |t| t["digest"] == d2.as_str()).unwrap();
    assert_eq!(gc_delete["target"]["repository"], "notify/gc");
    assert_eq!(gc_delete["actor"]["name"], "drydock-gc");
}

/// Counts the events waiting in the root's queues.
fn queued_ids(root: &std::path::Path) -> Vec<String> {
    let mut ids = Vec::new();
    let Ok(dirs) = std::fs::read_dir(root.join("drydock/notifications")) else {
        return ids;
    };
    for d in dirs {
        for f in std::fs::read_dir(d.unwrap().path()).unwrap() {
            let p = f.unwrap().path();
            if p.extension().is_some_and(|e| e == "json") {
                let v: Vec<Value> = serde_json::from_slice(&std::fs::read(&p).unwrap()).unwrap();
                ids.extend(v.iter().map(|e| e["id"].as_str().unwrap().to_owned()));
            }
        }
    }
    ids
}

/// The value of `series` (name and labels as the server writes them) in the server's
/// metrics, 0 when absent.
fn metric(s: &TestServer, series: &str) -> f64 {
    let text = s.metrics.as_ref().expect("metrics kept").render();
    text.lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' '))
        .map_or(0.0, |v| v.trim().parse().unwrap())
}

/// Waits (bounded) until `series` has the value `want`.
async fn until_metric(s: &TestServer, series: &str, want: impl Fn(f64) -> bool) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while !want(metric(s, series)) {
        assert!(
            Instant::now() < deadline,
            "{series} is {}",
            metric(s, series)
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// While the receiver answers 503 events stay queued on disk; once it answers 200
/// they arrive, and the queue empties. Distribution's delivery metrics count it all:
/// events queued, refused (with the status as Go writes it), unanswered (an endpoint
/// nobody listens on), taken, and the queue's depth.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_wait_in_the_queue_while_the_receiver_is_down() {
    let rx = Receiver::start().await;
    rx.status.store(503, Ordering::SeqCst);
    let u = rx.url.clone();
    let nobody = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        format!("http://{}/events", l.local_addr().unwrap())
    };
    let s = TestServer::start_with(move |c| {
        c.gc.on_startup = false;
        c.admin.metrics = true;
        c.notifications.endpoints = vec![
            endpoint("down", &u, |e| {
                e.ignore.actions = vec!["pull".into()];
            }),
            endpoint("nobody", &nobody, |e| {
                e.ignore.actions = vec!["pull".into()];
            }),
        ];
    })
    .await;
    let c = client();
    push_image(&c, &s, "kept/app", "v1", 6, 2).await;
    // 3 blob pushes and a manifest push, queued for each endpoint.
    let deadline = Instant::now() + Duration::from_secs(30);
    while queued_ids(s.root()).len() < 8 {
        assert!(Instant::now() < deadline, "{:?}", queued_ids(s.root()));
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let queued = queued_ids(s.root());
    assert!(rx.events().is_empty());
    rx.status.store(200, Ordering::SeqCst);
    let ev = rx
        .until("the queued events after the receiver came back", |ev| {
            queued
                .iter()
                .all(|id| ev.iter().any(|e| e["id"] == id.as_str()))
        })
        .await;
    assert_eq!(ev.len(), 4, "{ev:#?}");
    let down = r#"endpoint="down"}"#;
    until_metric(
        &s,
        &format!("registry_notifications_pending_total{{{down}"),
        |v| v == 0.0,
    )
    .await;
    assert_eq!(
        metric(
            &s,
            &format!(r#"registry_notifications_events_total{{type="Events",{down}"#)
        ),
        4.0
    );
    assert_eq!(
        metric(
            &s,
            &format!(r#"registry_notifications_events_total{{type="Successes",{down}"#)
        ),
        4.0
    );
    assert!(
        metric(
            &s,
            &format!(r#"registry_notifications_events_total{{type="Failures",{down}"#)
        ) >= 1.0
    );
    assert!(
        metric(
            &s,
            &format!(
                r#"registry_notifications_status_total{{code="503 Service Unavailable",{down}"#
            )
        ) >= 1.0
    );
    assert!(
        metric(
            &s,
            &format!(r#"registry_notifications_status_total{{code="200 OK",{down}"#)
        ) >= 1.0
    );
    let nobody = r#"endpoint="nobody"}"#;
    until_metric(
        &s,
        &format!(r#"registry_notifications_events_total{{type="Errors",{nobody}"#),
        |v| v >= 4.0,
    )
    .await;
    assert_eq!(
        metric(
            &s,
            &format!("registry_notifications_pending_total{{{nobody}")
        ),
        4.0
    );
    // The one remaining queue is the unreachable endpoint's.
    assert_eq!(queued_ids(s.root()).len(), 4);
}

/// kill -9 with events queued and the receiver down; a restart delivers every one of
/// them once the receiver answers (at least once: each id arrives).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_queued_before_a_kill_are_delivered_after_the_restart() {
    let rx = Receiver::start().await;
    rx.status.store(503, Ordering::SeqCst);
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("root");
    let cfg = dir.path().join("config.yml");
    std::fs::write(
        &cfg,
        format!(
            "storage:\n  filesystem:\n    rootdirectory: {}\n  delete:\n    enabled: true\nhttp:\n  addr: 127.0.0.1:0\ngc:\n  on_startup: false\nnotifications:\n  endpoints:\n    - name: crash\n      url: {}\n      backoff: 50ms\n      threshold: 2\n",
            root.display(),
            rx.url
        ),
    )
    .unwrap();
    let mut server = ServerProcess::spawn(&cfg);
    let c = client();
    for i in 0..5u64 {
        let data = random_bytes(2000, 100 + i);
        let d = digest_of(&data);
        let r = c
            .post(server.url(&format!("/v2/crash/app/blobs/uploads/?digest={d}")))
            .body(data)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 201);
    }
    let deadline = Instant::now() + Duration::from_secs(30);
    while queued_ids(&root).len() < 5 {
        assert!(Instant::now() < deadline, "{:?}", queued_ids(&root));
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let queued = queued_ids(&root);
    server.kill();
    assert!(rx.events().is_empty());
    rx.status.store(200, Ordering::SeqCst);
    let _again = ServerProcess::spawn(&cfg);
    let ev = rx
        .until("every event queued before the kill", |ev| {
            queued
                .iter()
                .all(|id| ev.iter().any(|e| e["id"] == id.as_str()))
        })
        .await;
    assert!(ev.iter().all(|e| e["action"] == "push"), "{ev:#?}");
}
