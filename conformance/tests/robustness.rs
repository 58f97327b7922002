//! Slow and hostile clients (issue 16): extreme values in every parser of client input,
//! HTTP framing the server must refuse, stalled connections and bodies, the bound on
//! concurrent uploads, a full disk. Each test talks to the real server over loopback;
//! the wire-level ones use raw sockets, since a client library would not send what they
//! send.

mod common;

use std::time::Duration;

use common::*;
use conformance::*;

/// `grace` values that made `parse_duration` panic (the connection closed with no answer)
/// are refused with 400 and a message; the server keeps answering.
#[tokio::test]
async fn extreme_gc_grace_is_refused_not_a_crash() {
    let s = TestServer::start().await;
    for grace in [
        "99999999999999999999h",
        "10000000000000000000s10000000000000000000s",
        "18446744073709551615s",
    ] {
        // The admin API over TCP needs an admin; the socket (the CLI's channel) reaches
        // the same handler. A panic would close the connection unanswered.
        let (status, body) = s
            .admin(
                "POST",
                &format!("/admin/gc?wait=true&dry_run=true&grace={grace}"),
            )
            .await;
        assert_eq!(status, 400, "grace={grace}: {body}");
        assert!(body.to_string().contains("too large"), "{body}");
    }
    let r = raw_get(&s, "GET", "/v2/").await;
    assert_eq!(r.status, 200);
}

/// `Content-Range: 0-18446744073709551615` overflowed `end - start + 1`.
#[tokio::test]
async fn extreme_content_range_is_range_invalid() {
    let s = TestServer::start().await;
    let c = client();
    for range in [
        "0-18446744073709551615",
        "18446744073709551615-18446744073709551615",
        "0-99999999999999999999",
        "5-4",
        "-1-3",
    ] {
        let url = start_session(&c, &s, "r/x").await;
        let loc = url.strip_prefix(&s.base).unwrap_or(&url);
        let r = raw_request(
            &s,
            &format!(
                "PATCH {loc} HTTP/1.1\nHost: {}\nContent-Range: {range}\nContent-Length: 1\nConnection: close",
                s.host()
            ),
            b"a",
            false,
            Duration::from_secs(30),
        )
        .await
        .unwrap_or_else(|| panic!("no answer for Content-Range {range}"));
        r.check_error(416, &["RANGE_INVALID"]);
    }
    // A Range beyond any size on a blob GET, and a huge suffix.
    let d = push_blob(&c, &s, "r/x", b"hello").await;
    for range in [
        "bytes=18446744073709551615-",
        "bytes=0-18446744073709551615",
        "bytes=-18446744073709551615",
        "bytes=99999999999999999999-",
    ] {
        let r = c
            .get(s.url(&format!("/v2/r/x/blobs/{d}")))
            .header("range", range)
            .send()
            .await
            .unwrap();
        assert!(
            [206, 416].contains(&r.status().as_u16()),
            "{range}: {}",
            r.status()
        );
    }
}

/// `gc.enabled: false` stops every cycle that starts by itself: no timer (the clock is
/// paused and moved past three intervals), no startup cycle, no maintenance gc task.
#[tokio::test(start_paused = true)]
async fn gc_disabled_starts_no_cycle_by_itself() {
    let root = tempfile::tempdir().unwrap();
    let mut config = test_config(root.path());
    config.gc.enabled = false;
    config.gc.interval = Duration::from_secs(60);
    config.maintenance.enabled = false;
    let state = registry::server::state_from_config(&config).expect("store");
    let online = gc::online::app(state, &config).unwrap();
    for _ in 0..3 {
        tokio::time::advance(Duration::from_secs(61)).await;
        for _ in 0..20 {
            tokio::task::yield_now().await;
        }
    }
    let st = online.cleaner.status();
    assert!(!st.running && st.cycles == 0, "a cycle ran: {st:?}");
    assert!(!online.cleaner.schedule(), "a cycle was scheduled");
    let due = online.maintenance.due(None, false).await;
    assert!(!due.contains(&gc::maintenance::Task::Gc), "{due:?}");
    // An explicit run still collects.
    let report = online
        .cleaner
        .run_now(online.cleaner.options())
        .await
        .unwrap();
    assert_eq!(report.blobs_removed, 0);
}

/// A configuration file for the binary: a fresh root, a loopback port, and `extra`.
fn config_file(extra: &str) -> (tempfile::TempDir, std::path::PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("root");
    std::fs::create_dir_all(&root).unwrap();
    let cfg = dir.path().join("config.yml");
    std::fs::write(
        &cfg,
        format!(
            "version: 0.1\nstorage:\n  filesystem:\n    rootdirectory: {}\nhttp:\n  addr: 127.0.0.1:0\n{extra}",
            root.display()
        ),
    )
    .unwrap();
    (dir, cfg)
}

/// With `gc.enabled: false`, SIGUSR1 (`systemctl reload`) must not kill the server: it
/// is handled and logged. The SIGTERM sent after it then ends the server gracefully;
/// had SIGUSR1 no handler, the process would have died of it (signal 10).
#[test]
fn sigusr1_with_gc_disabled_does_not_kill_the_server() {
    use std::os::unix::process::ExitStatusExt;
    let (_dir, cfg) = config_file("gc:\n  enabled: false\n");
    let mut server = ServerProcess::spawn(&cfg);
    let pid = server.child.id() as i32;
    // SAFETY: signals to our own child process.
    assert_eq!(unsafe { libc::kill(pid, libc::SIGUSR1) }, 0);
    assert_eq!(unsafe { libc::kill(pid, libc::SIGTERM) }, 0);
    let status = server.child.wait().unwrap();
    assert_eq!(
        status.signal(),
        None,
        "the server died of a signal: {status:?}"
    );
    assert!(status.success(), "{status:?}");
}

/// Opens a connection that sends a request head announcing `announced` body bytes, then
/// `sent` of them, and holds it open (the returned socket).
async fn stalled_body(
    s: &TestServer,
    method: &str,
    path: &str,
    announced: usize,
    sent: usize,
) -> tokio::net::TcpStream {
    use tokio::io::AsyncWriteExt;
    let mut sock = tokio::net::TcpStream::connect(s.addr).await.unwrap();
    let head = format!(
        "{method} {path} HTTP/1.1\r\nHost: {}\r\nContent-Type: application/octet-stream\r\nContent-Length: {announced}\r\n\r\n",
        s.host()
    );
    sock.write_all(head.as_bytes()).await.unwrap();
    sock.write_all(&vec![b'x'; sent]).await.unwrap();
    sock.flush().await.unwrap();
    sock
}

/// The path of a session URL (`/v2/...?...`).
fn path_of(s: &TestServer, url: &str) -> String {
    url.strip_prefix(&s.base).unwrap_or(url).to_owned()
}

/// 300 uploads that stall mid-body hold no threads: past `oci.max_uploads` the next
/// one is answered 429 with Retry-After (not left hanging), and blob GETs, manifest
/// GETs and new sessions are answered while the stalled ones hold their connections.
/// (Before, each stalled body held two blocking threads, and at 256 of them every
/// request that touched the disk waited.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stalled_uploads_neither_freeze_reads_nor_pile_up() {
    const HELD: usize = 300;
    let s = TestServer::start_with(|c| c.oci.max_uploads = HELD).await;
    let c = client();
    let (manifest, _) = push_image(&c, &s, "r/img", "v1", 7, 2).await;
    let blob = push_blob(&c, &s, "r/img", b"readable while uploads stall").await;
    let mut held = Vec::new();
    for _ in 0..HELD {
        let url = start_session(&c, &s, "r/up").await;
        held.push(stalled_body(&s, "PATCH", &path_of(&s, &url), 1 << 20, 100).await);
    }
    // Once every stalled body holds its slot, one more upload is refused at once.
    let mut refused = None;
    for _ in 0..200 {
        let url = start_session(&c, &s, "r/up").await;
        let r = c
            .patch(&url)
            .header("content-type", "application/octet-stream")
            .body(vec![1u8; 10])
            .send()
            .await
            .unwrap();
        if r.status() == 429 {
            refused = Some(r);
            break;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    let r = refused.expect("no 429 past oci.max_uploads stalled uploads");
    assert_eq!(hdr(&r, "retry-after"), "1");
    let body = expect_error(r, 429, "TOOMANYREQUESTS").await;
    assert!(body.to_string().contains("oci.max_uploads"), "{body}");
    // Reads and new sessions are answered while all of them stall.
    let answered = async {
        let r = c
            .get(s.url(&format!("/v2/r/img/blobs/{blob}")))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
        assert_eq!(
            &r.bytes().await.unwrap()[..],
            b"readable while uploads stall"
        );
        let r = c
            .get(s.url(&format!("/v2/r/img/manifests/{manifest}")))
            .header("accept", OCI_MANIFEST)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
        start_session(&c, &s, "r/other").await;
    };
    tokio::time::timeout(Duration::from_secs(120), answered)
        .await
        .expect("reads hung behind stalled uploads");
    drop(held);
}

/// A client that announces a large body, sends a little and stalls holds no disk
/// blocks beyond what it sent (the writes used to reserve 64 MiB ahead of the data).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_upload_reserves_no_disk_ahead_of_its_data() {
    use std::os::unix::fs::MetadataExt;
    let s = TestServer::start().await;
    let c = client();
    let url = start_session(&c, &s, "r/res").await;
    let id = url
        .split('/')
        .next_back()
        .unwrap()
        .split('?')
        .next()
        .unwrap()
        .to_owned();
    let sent = (1 << 20) + 1;
    let _held = stalled_body(&s, "PATCH", &path_of(&s, &url), 512 << 20, sent).await;
    let data = repo_dir(s.root(), "r/res").join(format!("_uploads/{id}/data"));
    // The first MiB is written once the server has it; the last byte waits for more.
    assert!(
        eventually(|| std::fs::metadata(&data).is_ok_and(|m| m.len() >= 1 << 20)).await,
        "the first MiB never reached the file: {:?}",
        std::fs::metadata(&data).map(|m| m.len())
    );
    let m = std::fs::metadata(&data).unwrap();
    let allocated = m.blocks() * 512;
    assert!(
        allocated <= m.len() + (64 << 10),
        "{allocated} bytes allocated for {} bytes received",
        m.len()
    );
}

/// RFC 9112: an HTTP/1.1 request without `Host`, or with two, is 400 (§3.2); a body in
/// a transfer coding the server does not decode is 501 (§6.1), not stored still coded.
/// Each refusal closes the connection. (Both were answered as if well-formed.)
#[tokio::test]
async fn host_and_transfer_coding_rules() {
    let s = TestServer::start().await;
    let c = client();
    for (head, want) in [
        ("GET /v2/ HTTP/1.1\nContent-Length: 0", 400),
        (
            "GET /v2/ HTTP/1.1\nHost: a\nHost: b\nContent-Length: 0",
            400,
        ),
        ("GET /v2/ HTTP/1.1\nHost: a b\nContent-Length: 0", 400),
        ("GET /v2/ HTTP/1.0\nContent-Length: 0", 200),
        ("GET /v2/ HTTP/1.1\nHost: \nConnection: close", 200),
    ] {
        let r = raw_request(&s, head, b"", false, Duration::from_secs(30))
            .await
            .unwrap_or_else(|| panic!("no answer to {head:?}"));
        assert_eq!(
            r.status,
            want,
            "{head:?}: {:?}",
            String::from_utf8_lossy(&r.body)
        );
        if want == 400 {
            assert_eq!(r.header("connection"), Some("close"), "{head:?}");
        }
    }
    let data = b"gzip-coded bytes are not the blob";
    let digest = digest_of(data);
    let mut body = format!("{:x}\r\n", data.len()).into_bytes();
    body.extend_from_slice(data);
    body.extend_from_slice(b"\r\n0\r\n\r\n");
    // Plain chunked, last, still works.
    for (te, want) in [
        ("gzip, chunked", 501),
        ("gzip\nTransfer-Encoding: chunked", 501),
        ("chunked", 201),
    ] {
        let url = start_session(&c, &s, "r/te").await;
        let path = path_of(&s, &with_query(&url, &format!("digest={digest}")));
        let r = raw_request(
            &s,
            &format!(
                "PUT {path} HTTP/1.1\nHost: {}\nContent-Type: application/octet-stream\nTransfer-Encoding: {te}\nConnection: close",
                s.host()
            ),
            &body,
            false,
            Duration::from_secs(30),
        )
        .await
        .unwrap_or_else(|| panic!("no answer with Transfer-Encoding {te:?}"));
        assert_eq!(
            r.status,
            want,
            "{te:?}: {:?}",
            String::from_utf8_lossy(&r.body)
        );
        let r = c
            .head(s.url(&format!("/v2/r/te/blobs/{digest}")))
            .send()
            .await
            .unwrap();
        let stored = if want == 201 { 200 } else { 404 };
        assert_eq!(r.status(), stored, "{te:?}");
    }
}

// ---------------------------------------------------------------------------------------
// Connections (item 4): each wait on the client is bounded, connections are capped, and
// at the open-file limit the server says so and recovers. The timeouts are made tiny
// and each test waits for the server to close the connection: no clock is read.

/// Reads until the server closes the connection; returns what arrived. Panics if it
/// never closes (the bound is far above any timeout these tests configure).
async fn until_closed(sock: &mut tokio::net::TcpStream) -> Vec<u8> {
    use tokio::io::AsyncReadExt;
    let mut got = Vec::new();
    let read = async {
        let mut buf = vec![0u8; 64 << 10];
        loop {
            match sock.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => got.extend_from_slice(&buf[..n]),
            }
        }
    };
    tokio::time::timeout(Duration::from_secs(60), read)
        .await
        .expect("the server never closed the connection");
    got
}

/// Waits (up to a minute) until `check` holds.
async fn until(what: &str, mut check: impl FnMut() -> bool) {
    for _ in 0..6000 {
        if check() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("never: {what}");
}

/// How many connections the server closed for running out of `wait`.
fn timed_out(s: &TestServer, wait: &'static str) -> u64 {
    let m = s.metrics.as_ref().expect("admin.metrics is on");
    m.http
        .timed_out
        .get_or_create(&registry::metrics::WaitLabels { wait })
        .get()
}

fn status_of(response: &[u8]) -> u16 {
    let text = String::from_utf8_lossy(response);
    text.split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("no status line in {text:?}"))
}

async fn connect(s: &TestServer) -> tokio::net::TcpStream {
    tokio::net::TcpStream::connect(s.addr).await.unwrap()
}

/// Connects and sends `bytes` (in one write).
async fn send(s: &TestServer, bytes: &[u8]) -> tokio::net::TcpStream {
    use tokio::io::AsyncWriteExt;
    let mut sock = connect(s).await;
    sock.write_all(bytes).await.unwrap();
    sock
}

/// A server with metrics whose `http.timeouts` `tighten` changed.
async fn tight(tighten: impl FnOnce(&mut registry::config::TimeoutsConfig)) -> TestServer {
    TestServer::start_with(|c| {
        c.admin.metrics = true;
        tighten(&mut c.http.timeouts);
    })
    .await
}

/// A connection that says nothing, and one that stops mid-head, are closed after
/// `http.timeouts.header`, without an answer.
#[tokio::test]
async fn a_silent_or_stalled_request_head_is_cut_off() {
    let s = tight(|t| t.header = Duration::from_millis(50)).await;
    let mut silent = connect(&s).await;
    assert_eq!(until_closed(&mut silent).await, b"");
    let mut stalled = send(&s, b"GET /v2/ HTTP/1.1\r\nHost: x\r\nX-Stall: ").await;
    let got = until_closed(&mut stalled).await;
    assert!(!got.starts_with(b"HTTP/1.1 200"), "answered: {got:?}");
    assert_eq!(timed_out(&s, "header"), 2);
}

/// A kept-alive connection with no next request is closed after `http.timeouts.idle`;
/// its request was answered in full first.
#[tokio::test]
async fn an_idle_kept_alive_connection_is_closed() {
    let s = tight(|t| t.idle = Duration::from_millis(50)).await;
    let mut sock = send(&s, b"GET /v2/ HTTP/1.1\r\nHost: x\r\n\r\n").await;
    let got = until_closed(&mut sock).await;
    assert_eq!(status_of(&got), 200);
    assert!(
        got.ends_with(b"\r\n\r\n{}"),
        "{:?}",
        String::from_utf8_lossy(&got)
    );
    assert_eq!(timed_out(&s, "idle"), 1);
    assert_eq!(timed_out(&s, "header"), 0);
}

/// A body that stops arriving fails after `http.timeouts.body`: the upload answers 400
/// and keeps what arrived, and the connection closes.
#[tokio::test]
async fn a_stalled_body_is_cut_off_and_its_upload_keeps_what_arrived() {
    let s = tight(|t| t.body = Duration::from_millis(50)).await;
    let c = client();
    let url = start_session(&c, &s, "r/slow").await;
    // Head and the first 100 bytes in one write: all of it is there before any wait.
    let mut req = format!(
        "PATCH {} HTTP/1.1\r\nHost: x\r\nContent-Type: application/octet-stream\r\nContent-Length: 1048576\r\n\r\n",
        path_of(&s, &url)
    )
    .into_bytes();
    req.extend_from_slice(&[b'x'; 100]);
    let mut sock = send(&s, &req).await;
    let got = until_closed(&mut sock).await;
    assert_eq!(status_of(&got), 400, "{}", String::from_utf8_lossy(&got));
    assert!(
        String::from_utf8_lossy(&got).contains("BLOB_UPLOAD_INVALID"),
        "{}",
        String::from_utf8_lossy(&got)
    );
    assert_eq!(timed_out(&s, "body"), 1);
    let r = c.get(&url).send().await.unwrap();
    assert_eq!(r.status(), 204);
    assert_eq!(hdr(&r, "range"), "0-99");
}

/// A client that stops reading a response is cut off after `http.timeouts.send`: the
/// response stops short and the connection closes.
#[tokio::test]
async fn a_client_that_stops_reading_is_cut_off() {
    use tokio::io::AsyncWriteExt;
    let s = tight(|t| t.send = Duration::from_millis(50)).await;
    let c = client();
    const SIZE: usize = 32 << 20;
    let d = push_blob(&c, &s, "r/big", &random_bytes(SIZE, 7)).await;
    let sock = tokio::net::TcpSocket::new_v4().unwrap();
    sock.set_recv_buffer_size(4096).unwrap();
    let mut sock = sock.connect(s.addr).await.unwrap();
    sock.write_all(format!("GET /v2/r/big/blobs/{d} HTTP/1.1\r\nHost: x\r\n\r\n").as_bytes())
        .await
        .unwrap();
    // Read nothing until the server has given up on us.
    until("the send timeout", || timed_out(&s, "send") == 1).await;
    let got = until_closed(&mut sock).await;
    assert_eq!(status_of(&got), 200);
    assert!(got.len() < SIZE, "the whole body arrived");
}

/// Past `http.max_connections` the server stops accepting (and counts it); a waiting
/// connection is served once another closes.
#[tokio::test]
async fn connections_past_the_cap_wait_for_a_free_slot() {
    let s = TestServer::start_with(|c| {
        c.admin.metrics = true;
        c.http.max_connections = 2;
    })
    .await;
    let m = s.metrics.clone().unwrap();
    let a = connect(&s).await;
    let _b = connect(&s).await;
    until("two connections open and the cap reached", || {
        m.http.connections.get() == 2 && m.http.at_cap.get() >= 1
    })
    .await;
    let mut waiting = send(
        &s,
        b"GET /v2/ HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert_eq!(m.http.connections.get(), 2);
    drop(a);
    let got = until_closed(&mut waiting).await;
    assert_eq!(status_of(&got), 200);
    assert!(m.http.connections.get() <= 2);
}

/// At the open-file limit the server logs the failed accept (Distribution logs
/// `accept4: too many open files`; drydock logged nothing) and serves again once
/// descriptors are free.
#[test]
fn at_the_open_file_limit_the_server_logs_and_recovers() {
    use std::io::{Read, Write};
    use std::os::unix::process::CommandExt;
    let (_dir, cfg) = config_file("");
    let mut cmd = std::process::Command::new(registry_binary());
    cmd.arg("serve").arg(&cfg);
    // SAFETY: setrlimit only, between fork and exec.
    unsafe {
        cmd.pre_exec(|| {
            let lim = libc::rlimit {
                rlim_cur: 64,
                rlim_max: 64,
            };
            if libc::setrlimit(libc::RLIMIT_NOFILE, &lim) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let server = ServerProcess::spawn_command(cmd);
    let held: Vec<_> = (0..100)
        .map(|_| std::net::TcpStream::connect(server.addr).unwrap())
        .collect();
    let logged = |needle: &str| {
        server
            .log
            .lock()
            .unwrap()
            .iter()
            .any(|l| l.contains(needle))
    };
    let mut seen = false;
    for _ in 0..6000 {
        if logged("accept: Too many open files") {
            seen = true;
            break;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    assert!(seen, "no log line: {:?}", server.log.lock().unwrap());
    drop(held);
    let mut sock = std::net::TcpStream::connect(server.addr).unwrap();
    sock.set_read_timeout(Some(Duration::from_secs(60)))
        .unwrap();
    sock.write_all(b"GET /v2/ HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .unwrap();
    let mut got = Vec::new();
    sock.read_to_end(&mut got).unwrap();
    assert_eq!(status_of(&got), 200);
    assert!(logged("accepting connections again"));
}

/// A client that goes away while its last batch is being written (item 9): the request
/// is dropped, but the writer keeps the session's lock until it has let go of the file,
/// so a retry waits for it and nothing the retry writes is cut afterwards. (With the
/// lock borrowed by the request, dropping the request freed the session while the old
/// writer still appended, and its drop-time truncation could cut the retry's bytes.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_retry_waits_for_the_writer_of_a_request_that_went_away() {
    use registry::hooks::Point;
    let s = TestServer::start_with(|c| c.admin.metrics = true).await;
    let m = s.metrics.clone().unwrap();
    let c = client();
    let url = start_session(&c, &s, "r/retry").await;
    let hooks = s.store.liveness().hooks();
    let appending = hooks.arm(Point::Appending, None);
    let first = random_bytes(1 << 20, 3);
    let mut req = format!(
        "PATCH {} HTTP/1.1\r\nHost: x\r\nContent-Type: application/octet-stream\r\nContent-Length: {}\r\n\r\n",
        path_of(&s, &url),
        first.len()
    )
    .into_bytes();
    req.extend_from_slice(&first);
    let sock = send(&s, &req).await;
    appending.arrived().await;
    // The client goes; the server drops the request (the connection is counted
    // closed only once everything it owned is gone).
    let open = m.http.connections.get();
    drop(sock);
    until("the request dropped", || {
        m.http.connections.get() == open - 1
    })
    .await;
    // A retry asks where the session stands: it must wait for the old writer.
    let waits = hooks.arm(Point::SessionWaits, None);
    let mut status = tokio::spawn({
        let (c, url) = (c.clone(), url.clone());
        async move { c.get(&url).send().await.unwrap() }
    });
    tokio::select! {
        _ = waits.arrived() => {}
        r = &mut status => panic!(
            "answered ({:?}) while the old writer still held the session",
            r.map(|r| r.headers().get("range").cloned())
        ),
    }
    waits.release();
    appending.release();
    let r = status.await.unwrap();
    assert_eq!(r.status(), 204);
    assert_eq!(hdr(&r, "range"), "0-1048575");
    let second = b"what the retry sent";
    let r = patch_chunk(&c, &url, first.len(), second).await;
    assert_eq!(r.status(), 202);
    let whole = [&first[..], &second[..]].concat();
    let digest = digest_of(&whole);
    let r = c
        .put(with_query(&url, &format!("digest={digest}")))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201, "{:?}", r.text().await);
    let got = c
        .get(s.url(&format!("/v2/r/retry/blobs/{digest}")))
        .send()
        .await
        .unwrap()
        .bytes()
        .await
        .unwrap();
    assert!(
        got[..] == whole[..],
        "the blob is not what was acknowledged"
    );
}

/// Manifest bodies held at once share a bounded budget (item 5: 100 bodies of 4 MiB
/// took 424 MiB): while a stalled body holds all of `oci.manifest_memory`, the next
/// manifest is refused with 429 at once instead of held; once the stalled one is gone,
/// pushes go through.
#[tokio::test]
async fn manifest_bodies_share_a_bounded_budget() {
    let s = TestServer::start_with(|c| {
        c.admin.metrics = true;
        c.oci.manifest_max_bytes = 8192;
        c.oci.manifest_memory = 8192;
    })
    .await;
    let m = s.metrics.clone().unwrap();
    let c = client();
    let stalled = send(
        &s,
        format!(
            "PUT /v2/r/m/manifests/x HTTP/1.1\r\nHost: x\r\nContent-Type: {OCI_MANIFEST}\r\nContent-Length: 8192\r\n\r\n{{"
        )
        .as_bytes(),
    )
    .await;
    until("the stalled body holds the budget", || {
        m.http.manifest_body_bytes.get() == 8192
    })
    .await;
    let r = c
        .put(s.url("/v2/r/m/manifests/y"))
        .header("content-type", OCI_MANIFEST)
        .body("{}")
        .send()
        .await
        .unwrap();
    assert_eq!(hdr(&r, "retry-after"), "1");
    let body = expect_error(r, 429, "TOOMANYREQUESTS").await;
    assert!(body.to_string().contains("oci.manifest_memory"), "{body}");
    drop(stalled);
    until("the stalled body let go", || {
        m.http.manifest_body_bytes.get() == 0
    })
    .await;
    push_image(&c, &s, "r/m", "v1", 7, 2).await;
}

/// A full disk (a real ext4, filled up), items 3 and 7: a chunk that does not fit is
/// answered 507 with a message; the session keeps what it had and holds no block past it
/// (the reservation that failed part-way is given back); a manifest that cannot be
/// written leaves its tag where it was and every stored byte readable. Once space
/// returns, the same session resumes and completes, and the pool blob holds no more
/// blocks than its bytes need.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_disk_is_507_damages_nothing_and_the_upload_resumes() {
    const MIB: usize = 1 << 20;
    let images = tempfile::tempdir().unwrap();
    let root = tempfile::tempdir().unwrap();
    let mount = Mount::ext4(images.path(), root.path(), 48);
    let config = test_config(root.path());
    let s = TestServer::start_on(root, config).await;
    let c = client();
    let repo = "full/disk";

    // Before: an image under `t`, the blobs of a second one, 2 MiB of an upload.
    let a = image_with(&c, &s, repo, OCI_CONFIG, 1, "").await;
    let r = put_manifest(&c, &s, repo, "t", OCI_MANIFEST, &a).await;
    assert_eq!(r.status(), 201);
    let b = image_with(&c, &s, repo, OCI_CONFIG, 2, "").await;
    let data = random_bytes(6 * MIB, 3);
    let loc = start_session(&c, &s, repo).await;
    let r = patch_chunk(&c, &loc, 0, &data[..2 * MIB]).await;
    assert_eq!(r.status(), 202);
    let loc = abs(&s, &hdr(&r, "location"));
    let id = loc
        .split("/blobs/uploads/")
        .nth(1)
        .and_then(|rest| rest.split('?').next())
        .expect("an upload id in the location")
        .to_owned();
    let session_data = repo_dir(s.root(), repo)
        .join("_uploads")
        .join(&id)
        .join("data");

    // Half a batch of room: the next chunk's reservation and write fail part-way.
    let filler = s.root().join("filler");
    fill_disk(&filler, 512 << 10);
    let r = patch_chunk(&c, &loc, 2 * MIB, &data[2 * MIB..3 * MIB]).await;
    assert_eq!(r.status(), 507, "a chunk that does not fit");
    let body = r.text().await.unwrap();
    assert!(body.contains("no space left"), "{body}");
    let r = c.get(&loc).send().await.unwrap();
    assert_eq!(r.status(), 204);
    assert_eq!(hdr(&r, "range"), format!("0-{}", 2 * MIB - 1));
    assert_eq!(
        std::fs::metadata(&session_data).unwrap().len(),
        2 * MIB as u64
    );
    let held = allocated(&session_data);
    assert!(
        held <= (2 * MIB + 64 * 1024) as u64,
        "the session's file holds {held} bytes of disk for {} of data",
        2 * MIB
    );

    // No room at all: moving the tag fails and leaves it where it was.
    fill_disk(&s.root().join("filler-2"), 0);
    let r = put_manifest(&c, &s, repo, "t", OCI_MANIFEST, &b).await;
    assert_eq!(r.status(), 507, "a manifest that cannot be written");
    let r = c
        .get(s.url(&format!("/v2/{repo}/manifests/t")))
        .header("accept", OCI_MANIFEST)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(
        r.text().await.unwrap(),
        a,
        "the tag still names the first image"
    );

    // Space returns: the same session goes on from where it was and completes.
    std::fs::remove_file(&filler).unwrap();
    std::fs::remove_file(s.root().join("filler-2")).unwrap();
    let r = patch_chunk(&c, &loc, 2 * MIB, &data[2 * MIB..]).await;
    assert_eq!(r.status(), 202);
    let loc = abs(&s, &hdr(&r, "location"));
    let digest = digest_of(&data);
    let r = c
        .put(with_query(&loc, &format!("digest={digest}")))
        .header("content-length", "0")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201);
    let r = c
        .get(s.url(&format!("/v2/{repo}/blobs/{digest}")))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert!(r.bytes().await.unwrap()[..] == data[..], "the blob's bytes");
    let held = allocated(&pool_data(s.root(), &digest));
    assert!(
        held <= (6 * MIB + 64 * 1024) as u64,
        "the pool blob holds {held} bytes of disk for {} of data",
        6 * MIB
    );
    let r = put_manifest(&c, &s, repo, "t", OCI_MANIFEST, &b).await;
    assert_eq!(r.status(), 201, "with room, the tag moves");

    let root = s.stop().await;
    drop(mount);
    drop(root);
}
