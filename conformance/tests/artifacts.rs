//! Generic artifacts against the real server and store: uploads deduplicated into the
//! shared pool (across jobs and with image layers), digest checks that leave nothing
//! behind, post-processing that never touches a shared pool blob, tag flags, deletes,
//! the retention policy, collection of orphaned blobs, and flat memory for a 1 GiB
//! upload.

use std::collections::BTreeSet;
use std::io::Read;
use std::path::Path;
use std::time::Duration;

use bytes::Bytes;
use conformance::*;
use registry::Digest;
use registry::storage::{FsDriver, PathSpec, path_for};
use registry::store::{Store, StoreOptions};
use serde_json::Value;
use sha2::{Digest as _, Sha256};

const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";

/// Signs (appends to) every selected file, adds a marker file; fails for job `bad`.
const SIGN: &str = r#"if [ "$DRYDOCK_JOB" = bad ]; then echo "rpmsign: no secret key for $DRYDOCK_BRANCH" >&2; exit 3; fi
for f in "$@"; do printf ' signed' >> "$f"; done
echo "$DRYDOCK_TAG/$DRYDOCK_JOB/$DRYDOCK_FORMAT" > SIGNED.txt"#;

/// A server with a post-process command for `*.rpm`, no startup cycle, and no in-memory
/// pending protection (so collections in tests see only what links protect).
async fn server() -> TestServer {
    TestServer::start_with(|c| {
        c.gc.pending_ttl = Duration::ZERO;
        c.gc.on_startup = false;
        c.artifacts.post_process.command = Some(SIGN.into());
        c.artifacts.post_process.filter = Some(r"\.rpm$".into());
    })
    .await
}

async fn put(s: &TestServer, path: &str, data: &[u8]) -> reqwest::Response {
    client()
        .put(s.url(&format!("/artifacts/{path}")))
        .body(data.to_vec())
        .send()
        .await
        .unwrap()
}

/// Uploads a file with its digest announced; returns the JSON answer.
async fn put_ok(s: &TestServer, path: &str, data: &[u8]) -> Value {
    let r = client()
        .put(s.url(&format!("/artifacts/{path}")))
        .header("digest", digest_of(data))
        .body(data.to_vec())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201, "PUT {path}: {}", r.text().await.unwrap());
    assert_eq!(
        r.headers()["docker-content-digest"].to_str().unwrap(),
        digest_of(data)
    );
    r.json().await.unwrap()
}

async fn get(s: &TestServer, path: &str) -> reqwest::Response {
    client()
        .get(s.url(&format!("/artifacts/{path}")))
        .send()
        .await
        .unwrap()
}

async fn get_json(s: &TestServer, path: &str) -> Value {
    let r = get(s, path).await;
    assert_eq!(r.status(), 200, "GET {path}");
    r.json().await.unwrap()
}

/// GETs a file; checks that the body hashes to the digest the server announces.
async fn get_file(s: &TestServer, path: &str) -> (Vec<u8>, String) {
    let r = get(s, path).await;
    assert_eq!(r.status(), 200, "GET {path}");
    let d = r.headers()["docker-content-digest"]
        .to_str()
        .unwrap()
        .to_owned();
    assert_eq!(r.headers()["digest"].to_str().unwrap(), d);
    let body = r.bytes().await.unwrap().to_vec();
    assert_eq!(digest_of(&body), d, "{path} does not hash to its digest");
    (body, d)
}

async fn send(s: &TestServer, method: reqwest::Method, path: &str) -> reqwest::Response {
    client()
        .request(method, s.url(&format!("/artifacts/{path}")))
        .send()
        .await
        .unwrap()
}

async fn error_code(r: reqwest::Response) -> String {
    let v: Value = r.json().await.unwrap();
    v["errors"][0]["code"]
        .as_str()
        .unwrap_or_default()
        .to_owned()
}

fn names(listing: &Value) -> BTreeSet<String> {
    listing["children"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["name"].as_str().unwrap().to_owned())
        .collect()
}

/// Every blob in the pool: (digest, path of its data file).
fn pool_blobs(root: &Path) -> Vec<(String, std::path::PathBuf)> {
    let mut out = Vec::new();
    let base = root.join(path_for(PathSpec::BlobsRoot)).join("sha256");
    let Ok(hh) = std::fs::read_dir(&base) else {
        return out;
    };
    for h in hh {
        for b in std::fs::read_dir(h.unwrap().path()).unwrap() {
            let b = b.unwrap();
            let data = b.path().join("data");
            if data.exists() {
                out.push((format!("sha256:{}", b.file_name().to_str().unwrap()), data));
            }
        }
    }
    out.sort();
    out
}

/// Every pool blob still hashes to its name.
fn assert_pool_intact(root: &Path) {
    for (d, data) in pool_blobs(root) {
        let mut f = std::fs::File::open(&data).unwrap();
        let mut h = Sha256::new();
        let mut buf = vec![0u8; 1 << 16];
        loop {
            let n = f.read(&mut buf).unwrap();
            if n == 0 {
                break;
            }
            h.update(&buf[..n]);
        }
        assert_eq!(
            format!("sha256:{}", hex::encode(h.finalize())),
            d,
            "pool blob modified in place"
        );
    }
}

/// Regular files below a folder.
fn files_below(dir: &Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    let Ok(rd) = std::fs::read_dir(dir) else {
        return out;
    };
    for e in rd {
        let e = e.unwrap();
        if e.file_type().unwrap().is_dir() {
            out.extend(files_below(&e.path()));
        } else {
            out.push(e.path());
        }
    }
    out
}

fn artifacts_root(s: &TestServer) -> std::path::PathBuf {
    s.root().join(path_for(PathSpec::ArtifactsRoot))
}

#[tokio::test]
async fn dedup_across_jobs_and_with_an_image_layer() {
    let s = server().await;
    let c = client();
    let rpm = random_bytes(50_000, 1);
    let layer = random_bytes(70_000, 2);
    let layer_digest = push_blob(&c, &s, "app", &layer).await;

    let a = put_ok(&s, "main/1.0/job1/rpm/x86_64/foo-c++-1.0.rpm", &rpm).await;
    assert_eq!(a["reused"], false);
    assert_eq!(a["size"], 50_000);
    let b = put_ok(&s, "main/1.0/job2/rpm/x86_64/foo-c++-1.0.rpm", &rpm).await;
    assert_eq!(b["reused"], true, "identical file not reused");
    // Without an announced digest: computed, and the image layer is reused.
    let r = put(&s, "main/1.0/job1/tar/rootfs.tar.gz", &layer).await;
    assert_eq!(r.status(), 201);
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["reused"], true, "image layer not reused");
    assert_eq!(v["digest"], layer_digest.as_str());

    let pool: Vec<String> = pool_blobs(s.root()).into_iter().map(|(d, _)| d).collect();
    assert_eq!(pool, {
        let mut v = vec![digest_of(&rpm), layer_digest.clone()];
        v.sort();
        v
    });

    let (body, d) = get_file(&s, "main/1.0/job2/rpm/x86_64/foo-c++-1.0.rpm").await;
    assert_eq!(body, rpm);
    assert_eq!(d, digest_of(&rpm));
    assert_eq!(
        get_file(&s, "main/1.0/job1/tar/rootfs.tar.gz").await.0,
        layer
    );
    // The layer still pulls as a layer.
    let r = c
        .get(s.url(&format!("/v2/app/blobs/{layer_digest}")))
        .send()
        .await
        .unwrap();
    assert_eq!(r.bytes().await.unwrap().to_vec(), layer);

    // HEAD and Range.
    let r = send(
        &s,
        reqwest::Method::HEAD,
        "main/1.0/job1/rpm/x86_64/foo-c++-1.0.rpm",
    )
    .await;
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["content-length"], "50000");
    assert_eq!(
        r.headers()["docker-content-digest"].to_str().unwrap(),
        digest_of(&rpm)
    );
    let r = c
        .get(s.url("/artifacts/main/1.0/job1/rpm/x86_64/foo-c++-1.0.rpm"))
        .header("range", "bytes=100-199")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 206);
    assert_eq!(r.headers()["content-range"], "bytes 100-199/50000");
    assert_eq!(r.bytes().await.unwrap().to_vec(), rpm[100..200].to_vec());

    // Listings at every level.
    assert_eq!(
        names(&get_json(&s, "").await),
        BTreeSet::from(["main".into()])
    );
    let branch = get_json(&s, "main").await;
    let tag = &branch["children"][0];
    assert_eq!(tag["name"], "1.0");
    assert_eq!(tag["released"], false);
    assert_eq!(tag["locked"], false);
    assert!(tag["created"].as_str().unwrap().len() >= 20);
    assert_eq!(
        names(&get_json(&s, "main/1.0").await),
        BTreeSet::from(["job1".into(), "job2".into()])
    );
    let job = get_json(&s, "main/1.0/job1/").await;
    assert_eq!(names(&job), BTreeSet::from(["rpm".into(), "tar".into()]));
    assert_eq!(job["children"][0]["dirty"], true);
    let fmt = get_json(&s, "main/1.0/job1/rpm").await;
    assert_eq!(fmt["children"][0]["name"], "x86_64");
    assert_eq!(fmt["children"][0]["type"], "folder");
    assert_eq!(fmt["format"]["dirty"], true);
    let folder = get_json(&s, "main/1.0/job1/rpm/x86_64").await;
    let file = &folder["children"][0];
    assert_eq!(file["name"], "foo-c++-1.0.rpm");
    assert_eq!(file["type"], "file");
    assert_eq!(file["size"], 50_000);
    assert_eq!(file["digest"], digest_of(&rpm).as_str());
    assert!(file["mtime"].is_string());
    assert_eq!(get(&s, "main/1.0/job1/rpm/nope").await.status(), 404);

    // Usage counts each blob once per branch and shows what the pool shares.
    let u = get_json(&s, "main/usage").await;
    assert_eq!(u["files"], 3);
    assert_eq!(u["blobs"], 2);
    assert_eq!(u["logical_bytes"], 2 * 50_000 + 70_000);
    assert_eq!(u["stored_bytes"], 50_000 + 70_000);
    assert_eq!(u["shared_with_images_bytes"], 70_000);
    assert_eq!(u["exclusive_bytes"], 50_000);
    assert_pool_intact(s.root());
}

#[tokio::test]
async fn digest_mismatch_leaves_nothing_behind() {
    let s = server().await;
    let data = random_bytes(30_000, 3);
    let wrong = digest_of(b"something else");
    let r = client()
        .put(s.url("/artifacts/main/1/job/iso/disk.iso"))
        .header("digest", &wrong)
        .body(data.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    assert_eq!(error_code(r).await, "DIGEST_INVALID");
    let r = client()
        .put(s.url(&format!(
            "/artifacts/main/1/job/iso/disk.iso?digest={wrong}"
        )))
        .body(data.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    let r = client()
        .put(s.url("/artifacts/main/1/job/iso/disk.iso?digest=sha256:nothex"))
        .body(data.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);

    assert!(
        pool_blobs(s.root()).is_empty(),
        "mismatched upload in the pool"
    );
    assert_eq!(
        files_below(&artifacts_root(&s)),
        Vec::<std::path::PathBuf>::new()
    );
    assert_eq!(get(&s, "main/1/job/iso/disk.iso").await.status(), 404);
    assert_eq!(get(&s, "main").await.status(), 404);
    assert!(names(&get_json(&s, "").await).is_empty());

    // The right digest in both places stores it.
    let r = client()
        .put(s.url(&format!(
            "/artifacts/main/1/job/iso/disk.iso?digest={}",
            digest_of(&data)
        )))
        .header("digest", digest_of(&data))
        .body(data.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201);
    assert_eq!(get_file(&s, "main/1/job/iso/disk.iso").await.0, data);
}

// Blocking raw TCP below: the server needs a second worker thread.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn paths_cannot_escape_the_tree() {
    let s = server().await;
    for bad in [
        "main/1/job/rpm/a%2f..%2f..%2fx",
        "main/1/job/rpm/.link",
        "main/1/job/rpm/a/.tag.json",
        "main/1/job/rpm/a b",
        ".work/x/y/z/f",
        "main/policy/job/rpm/f",
        "main/1/released/rpm/f",
    ] {
        let r = put(&s, bad, b"x").await;
        assert_eq!(r.status(), 400, "{bad}");
        assert_eq!(error_code(r).await, "NAME_INVALID", "{bad}");
    }
    // Raw requests, since HTTP clients normalise dot segments away.
    for raw in [
        "/artifacts/main/1/job/rpm/../../../../../../etc/passwd",
        "/artifacts/main/1/job/rpm/%2e%2e/%2e%2e/x",
        "/artifacts/../../x",
        "/artifacts/main//1",
    ] {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let mut tcp = tokio::net::TcpStream::connect(s.addr).await.unwrap();
        let auth = conformance::test_authorization()
            .map(|a| format!("Authorization: {a}\r\n"))
            .unwrap_or_default();
        let req = format!(
            "PUT {raw} HTTP/1.1\r\nHost: x\r\n{auth}Content-Length: 1\r\nConnection: close\r\n\r\nx"
        );
        tcp.write_all(req.as_bytes()).await.unwrap();
        let mut answer = Vec::new();
        tokio::time::timeout(Duration::from_secs(10), tcp.read_to_end(&mut answer))
            .await
            .expect("no answer")
            .unwrap();
        let answer = String::from_utf8_lossy(&answer);
        assert!(answer.starts_with("HTTP/1.1 400"), "{raw}: {answer}");
    }
    assert!(pool_blobs(s.root()).is_empty());
    // A file cannot also be a folder.
    put_ok(&s, "main/1/job/rpm/a", b"file").await;
    let r = put(&s, "main/1/job/rpm/a/b", b"below a file").await;
    assert_eq!(r.status(), 409);
    put_ok(&s, "main/1/job/rpm/d/e", b"in a folder").await;
    assert_eq!(
        put(&s, "main/1/job/rpm/d", b"over a folder").await.status(),
        409
    );
}

#[tokio::test]
async fn post_process_rewrites_copies_and_never_a_shared_pool_blob() {
    let s = server().await;
    let rpm = random_bytes(40_000, 4);
    let notes = b"release notes".to_vec();
    put_ok(&s, "main/7/job1/rpm/foo.rpm", &rpm).await;
    put_ok(&s, "main/7/job1/rpm/notes.txt", &notes).await;
    put_ok(&s, "main/7/job2/rpm/foo.rpm", &rpm).await;
    put_ok(&s, "main/7/bad/rpm/foo.rpm", &rpm).await;

    let r = send(&s, reqwest::Method::PATCH, "main/7/job1/rpm").await;
    assert_eq!(r.status(), 200);
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["post_processed"], true);
    assert_eq!(v["changed"], serde_json::json!(["foo.rpm"]));
    assert_eq!(v["added"], serde_json::json!(["SIGNED.txt"]));
    assert_eq!(v["dirty"], false);

    let mut signed = rpm.clone();
    signed.extend_from_slice(b" signed");
    let (body1, d1) = get_file(&s, "main/7/job1/rpm/foo.rpm").await;
    assert_eq!(body1, signed, "job1's foo.rpm not signed");
    assert_eq!(d1, digest_of(&signed));
    let (body2, d2) = get_file(&s, "main/7/job2/rpm/foo.rpm").await;
    assert_eq!(body2, rpm, "job2's foo.rpm changed by job1's post-process");
    assert_eq!(d2, digest_of(&rpm));
    assert_eq!(get_file(&s, "main/7/job1/rpm/notes.txt").await.0, notes);
    assert_eq!(
        get_file(&s, "main/7/job1/rpm/SIGNED.txt").await.0,
        b"7/job1/rpm\n".to_vec()
    );
    assert_pool_intact(s.root());
    let fmt = get_json(&s, "main/7/job1/rpm").await;
    assert_eq!(fmt["format"]["dirty"], false);
    assert!(fmt["format"]["finalized"].is_string());
    // Finalising again without new uploads does not sign twice.
    let r = send(&s, reqwest::Method::PATCH, "main/7/job1/rpm").await;
    assert_eq!(r.status(), 200);
    assert_eq!(get_file(&s, "main/7/job1/rpm/foo.rpm").await.0, signed);

    // A failing command leaves the format as it was and says why.
    let r = send(&s, reqwest::Method::PATCH, "main/7/bad/rpm").await;
    assert_eq!(r.status(), 500);
    let v: Value = r.json().await.unwrap();
    let e = &v["errors"][0];
    assert_eq!(e["code"], "POST_PROCESS_FAILED");
    assert_eq!(e["detail"]["status"], "exit status 3");
    assert!(
        e["detail"]["stderr"]
            .as_str()
            .unwrap()
            .contains("no secret key for main"),
        "{v}"
    );
    assert!(e["message"].as_str().unwrap().contains("exit status 3"));
    let (body, d) = get_file(&s, "main/7/bad/rpm/foo.rpm").await;
    assert_eq!((body, d), (rpm.clone(), digest_of(&rpm)));
    assert_eq!(get(&s, "main/7/bad/rpm/SIGNED.txt").await.status(), 404);
    assert_eq!(
        get_json(&s, "main/7/bad/rpm").await["format"]["dirty"],
        true
    );
    assert_pool_intact(s.root());
    // No work folders or upload scratch left behind.
    for scratch in [".work", ".uploads"] {
        assert!(
            files_below(&artifacts_root(&s).join(scratch)).is_empty(),
            "{scratch} not cleaned"
        );
    }
}

/// Whether process `pid` has ended (gone, or a zombie nobody has reaped yet).
fn process_ended(pid: &str) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        // The state follows the command name, which is in parentheses.
        Ok(stat) => stat
            .rsplit_once(") ")
            .is_some_and(|(_, rest)| rest.starts_with('Z') || rest.starts_with('X')),
        Err(_) => true,
    }
}

#[tokio::test]
async fn post_process_past_its_timeout_is_killed_with_what_it_started() {
    let tmp = tempfile::tempdir().unwrap();
    let pidfile = tmp.path().join("child.pid");
    // Signs, starts a background child that holds the output pipes, and waits for it.
    let command = format!(
        r#"for f in "$@"; do printf ' signed' >> "$f"; done; sleep 120 & echo $! > '{}'; wait"#,
        pidfile.display()
    );
    let s = TestServer::start_with(|c| {
        c.gc.on_startup = false;
        c.artifacts.post_process.command = Some(command);
        c.artifacts.post_process.timeout = Duration::from_secs(1);
    })
    .await;
    let rpm = random_bytes(10_000, 9);
    put_ok(&s, "main/8/job/rpm/foo.rpm", &rpm).await;

    let r = send(&s, reqwest::Method::PATCH, "main/8/job/rpm").await;
    assert_eq!(r.status(), 500);
    let v: Value = r.json().await.unwrap();
    let e = &v["errors"][0];
    assert_eq!(e["code"], "POST_PROCESS_FAILED", "{v}");
    assert!(
        e["detail"]["status"]
            .as_str()
            .unwrap()
            .starts_with("timed out after 1s"),
        "{v}"
    );
    // The format is as it was: unsigned, still dirty.
    assert_eq!(get_file(&s, "main/8/job/rpm/foo.rpm").await.0, rpm);
    assert_eq!(
        get_json(&s, "main/8/job/rpm").await["format"]["dirty"],
        true
    );
    // The background child went with the command (SIGKILL to its process group).
    let pid = std::fs::read_to_string(&pidfile).unwrap();
    let pid = pid.trim();
    let mut ended = process_ended(pid);
    for _ in 0..50 {
        if ended {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
        ended = process_ended(pid);
    }
    assert!(ended, "the command's background child {pid} still runs");
    assert!(
        files_below(&artifacts_root(&s).join(".work")).is_empty(),
        "work folder not cleaned"
    );
}

/// On success too, what the command started and left running is killed with its
/// process group (issue 16, item 10: a lingering child could rewrite an output after
/// it was hashed). The child holds the write end of a FIFO and nothing else; reading
/// the FIFO ends when the child dies.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn post_process_children_are_killed_when_it_succeeds() {
    use std::os::unix::ffi::OsStrExt;
    let tmp = tempfile::tempdir().unwrap();
    let fifo = tmp.path().join("alive");
    let name = std::ffi::CString::new(fifo.as_os_str().as_bytes()).unwrap();
    // SAFETY: mkfifo reads the NUL-terminated path we pass.
    assert_eq!(unsafe { libc::mkfifo(name.as_ptr(), 0o600) }, 0);
    // Signs, opens the FIFO, leaves a child holding it (not the output pipes), exits 0.
    let command = format!(
        r#"for f in "$@"; do printf ' signed' >> "$f"; done; exec 3>'{}'; sleep 120 >&3 2>/dev/null & exec 3>&-; exit 0"#,
        fifo.display()
    );
    let s = TestServer::start_with(|c| {
        c.gc.on_startup = false;
        c.artifacts.post_process.command = Some(command);
    })
    .await;
    let rpm = random_bytes(10_000, 11);
    put_ok(&s, "main/10/job/rpm/foo.rpm", &rpm).await;
    let held = tokio::task::spawn_blocking(move || {
        let mut held = Vec::new();
        std::fs::File::open(&fifo)?.read_to_end(&mut held)?;
        std::io::Result::Ok(held)
    });
    let r = send(&s, reqwest::Method::PATCH, "main/10/job/rpm").await;
    assert_eq!(r.status(), 200, "{}", r.text().await.unwrap());
    tokio::time::timeout(Duration::from_secs(60), held)
        .await
        .expect("the command's background child outlived it")
        .unwrap()
        .unwrap();
    let mut signed = rpm.clone();
    signed.extend_from_slice(b" signed");
    assert_eq!(get_file(&s, "main/10/job/rpm/foo.rpm").await.0, signed);
}

/// An output changed after it was hashed (by a process that left the command's group,
/// say) never becomes a pool blob: the pool gets the server's own copy, hashed as it
/// was copied. (The work file itself was moved into the pool: its content no longer
/// matched its digest.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_post_process_output_changed_after_hashing_never_reaches_the_pool() {
    use std::io::Write;
    let s = server().await;
    let rpm = random_bytes(20_000, 5);
    put_ok(&s, "main/9/job/rpm/foo.rpm", &rpm).await;
    let gate = s
        .store
        .liveness()
        .hooks()
        .arm(registry::hooks::Point::PostProcessed, None);
    let patch = tokio::spawn({
        let url = s.url("/artifacts/main/9/job/rpm");
        async move { client().patch(url).send().await.unwrap() }
    });
    gate.arrived().await;
    let outputs: Vec<_> = files_below(&artifacts_root(&s).join(".work"))
        .into_iter()
        .filter(|p| p.ends_with("foo.rpm"))
        .collect();
    assert_eq!(outputs.len(), 1, "{outputs:?}");
    std::fs::OpenOptions::new()
        .append(true)
        .open(&outputs[0])
        .unwrap()
        .write_all(b" rewritten later")
        .unwrap();
    gate.release();
    let r = patch.await.unwrap();
    assert_eq!(r.status(), 200, "{}", r.text().await.unwrap());
    assert_pool_intact(s.root());
    let (body, d) = get_file(&s, "main/9/job/rpm/foo.rpm").await;
    let mut signed = rpm.clone();
    signed.extend_from_slice(b" signed");
    assert_eq!(body, signed);
    assert_eq!(d, digest_of(&signed));
}

async fn set_flag(s: &TestServer, tag: &str, flag: &str, on: bool) {
    let m = if on {
        reqwest::Method::PUT
    } else {
        reqwest::Method::DELETE
    };
    let r = send(s, m, &format!("{tag}/{flag}")).await;
    assert_eq!(r.status(), 200, "{flag} {tag}");
    let v: Value = r.json().await.unwrap();
    assert_eq!(v[flag], on);
}

#[tokio::test]
async fn released_tags_need_force_and_locked_tags_are_never_deleted() {
    let s = server().await;
    put_ok(&s, "main/rel/job/rpm/a.rpm", b"a").await;
    put_ok(&s, "main/lck/job/rpm/b.rpm", b"b").await;
    set_flag(&s, "main/rel", "released", true).await;
    set_flag(&s, "main/lck", "locked", true).await;
    let v = get_json(&s, "main/rel/released").await;
    assert_eq!(
        (v["released"].clone(), v["locked"].clone()),
        (true.into(), false.into())
    );

    let r = send(&s, reqwest::Method::DELETE, "main/rel").await;
    assert_eq!(r.status(), 409);
    assert_eq!(error_code(r).await, "DENIED");
    assert_eq!(
        send(&s, reqwest::Method::DELETE, "main/rel/job")
            .await
            .status(),
        409
    );
    assert_eq!(
        send(&s, reqwest::Method::DELETE, "main").await.status(),
        409
    );
    for path in [
        "main/lck",
        "main/lck?force",
        "main/lck/job?force",
        "main?force",
    ] {
        let r = send(&s, reqwest::Method::DELETE, path).await;
        assert_eq!(r.status(), 409, "DELETE {path}");
    }
    // Nothing can be added to a locked tag either.
    assert_eq!(put(&s, "main/lck/job/rpm/c.rpm", b"c").await.status(), 409);
    assert_eq!(
        send(&s, reqwest::Method::PATCH, "main/lck/job/rpm")
            .await
            .status(),
        409
    );
    assert_eq!(
        get_file(&s, "main/lck/job/rpm/b.rpm").await.0,
        b"b".to_vec()
    );

    let r = send(&s, reqwest::Method::DELETE, "main/rel?force").await;
    assert_eq!(r.status(), 200);
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["files"], 1);
    assert_eq!(get(&s, "main/rel/job/rpm/a.rpm").await.status(), 404);
    assert_eq!(
        names(&get_json(&s, "main").await),
        BTreeSet::from(["lck".into()])
    );

    set_flag(&s, "main/lck", "locked", false).await;
    assert_eq!(
        send(&s, reqwest::Method::DELETE, "main/lck/job")
            .await
            .status(),
        200
    );
    assert_eq!(
        send(&s, reqwest::Method::DELETE, "main").await.status(),
        200
    );
    assert_eq!(get(&s, "main").await.status(), 404);
    assert_eq!(
        send(&s, reqwest::Method::DELETE, "main").await.status(),
        404
    );
    // Trash is removed right away.
    assert!(files_below(&artifacts_root(&s).join(".trash")).is_empty());
}

#[tokio::test]
async fn retention_keeps_exactly_the_newest_daily_and_released_tags_and_no_locked_one() {
    let s = server().await;
    for t in ["d1", "r1", "d2", "r2", "d3", "d4", "r3", "d5"] {
        put_ok(&s, &format!("main/{t}/job/rpm/{t}.rpm"), t.as_bytes()).await;
        put_ok(&s, &format!("other/{t}/job/rpm/{t}.rpm"), t.as_bytes()).await;
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    for t in ["r1", "r2", "r3"] {
        set_flag(&s, &format!("main/{t}"), "released", true).await;
    }
    set_flag(&s, "main/d2", "locked", true).await; // oldest kept daily would be d4
    set_flag(&s, "main/r1", "locked", true).await;

    let policy = serde_json::json!({"max_daily_tags": 2, "max_released_tags": 1});
    assert_eq!(
        get_json(&s, "main/policy").await["max_daily_tags"],
        Value::Null
    );
    let r = client()
        .put(s.url("/artifacts/main/policy"))
        .json(&policy)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(get_json(&s, "main/policy").await, policy);
    let r = client()
        .put(s.url("/artifacts/main/policy"))
        .body(r#"{"max_daily":2}"#)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);

    // A store over the same root, as the maintenance task runs it.
    let store = Store::new(FsDriver::new(s.root()), StoreOptions::default());
    let plan = store.apply_artifact_retention(true).await.unwrap();
    let want: Vec<String> = ["main/d1", "main/d3", "main/r2"]
        .iter()
        .map(|s| s.to_string())
        .collect();
    let mut planned = plan.removed.clone();
    planned.sort();
    assert_eq!(planned, want);
    assert_eq!(plan.files_removed, 3);
    assert_eq!(plan.locked, 2);
    assert_eq!(
        names(&get_json(&s, "main").await).len(),
        8,
        "dry run deleted"
    );

    let done = store.apply_artifact_retention(false).await.unwrap();
    let mut removed = done.removed.clone();
    removed.sort();
    assert_eq!(removed, want);
    assert_eq!(done.kept, 3);
    assert_eq!(
        names(&get_json(&s, "main").await),
        ["d2", "d4", "d5", "r1", "r3"]
            .iter()
            .map(|s| s.to_string())
            .collect()
    );
    // Locked tags untouched; a branch without a policy untouched.
    assert_eq!(
        get_file(&s, "main/d2/job/rpm/d2.rpm").await.0,
        b"d2".to_vec()
    );
    assert_eq!(
        get_file(&s, "main/r1/job/rpm/r1.rpm").await.0,
        b"r1".to_vec()
    );
    assert_eq!(names(&get_json(&s, "other").await).len(), 8);
    // A second run has nothing left to do.
    let again = store.apply_artifact_retention(false).await.unwrap();
    assert!(again.removed.is_empty());
}

async fn run_gc(s: &TestServer) -> BTreeSet<String> {
    let report = s
        .cleaner
        .run_now(&gc::Options {
            dry_run: false,
            remove_untagged: false,
            grace: Duration::ZERO,
            ..gc::Options::default()
        })
        .await
        .unwrap();
    report.removed.blobs.iter().collect()
}

fn set(v: &[&str]) -> BTreeSet<String> {
    v.iter().map(|s| s.to_string()).collect()
}

#[tokio::test]
async fn collection_after_deleting_jobs_frees_exactly_the_orphaned_blobs() {
    let s = server().await;
    let c = client();
    let (a, shared, b) = (
        random_bytes(1000, 10),
        random_bytes(1100, 11),
        random_bytes(1200, 12),
    );
    let (l, m) = (random_bytes(1300, 13), random_bytes(1400, 14));
    // An image with layers l and m.
    let config = r#"{"architecture":"amd64","os":"linux"}"#;
    let cd = push_blob(&c, &s, "app", config.as_bytes()).await;
    let ld = push_blob(&c, &s, "app", &l).await;
    let md = push_blob(&c, &s, "app", &m).await;
    let manifest = image_manifest((&cd, config.len()), &[(&ld, l.len()), (&md, m.len())], "");
    let r = c
        .put(s.url("/v2/app/manifests/v1"))
        .header("content-type", OCI_MANIFEST)
        .body(manifest.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201);
    let manifest_digest = digest_of(manifest.as_bytes());
    // job1: a, shared, l (also a layer); job2: shared, b, m (also a layer).
    put_ok(&s, "main/1/job1/bin/a", &a).await;
    put_ok(&s, "main/1/job1/bin/shared", &shared).await;
    put_ok(&s, "main/1/job1/bin/l", &l).await;
    put_ok(&s, "main/1/job2/bin/shared", &shared).await;
    put_ok(&s, "main/1/job2/bin/b", &b).await;
    put_ok(&s, "main/1/job2/bin/m", &m).await;
    assert!(run_gc(&s).await.is_empty(), "a cycle removed linked blobs");

    // Deleting a job schedules the online collector, like image deletes.
    let cycles = s.cleaner.status().cycles;
    let r = send(&s, reqwest::Method::DELETE, "main/1/job1").await;
    assert_eq!(r.status(), 200);
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["files"], 3);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while s.cleaner.status().cycles == cycles {
        assert!(
            tokio::time::Instant::now() < deadline,
            "delete scheduled no cycle"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // Only a is orphaned: shared is linked by job2, l is an image layer.
    assert_eq!(run_gc(&s).await, set(&[&digest_of(&a)]));
    assert_eq!(get_file(&s, "main/1/job2/bin/shared").await.0, shared);

    // Deleting the image frees its manifest, config and l; m stays for job2.
    let r = c
        .delete(s.url(&format!("/v2/app/manifests/{manifest_digest}")))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 202);
    assert_eq!(run_gc(&s).await, set(&[&manifest_digest, &cd, &ld]));
    assert_eq!(get_file(&s, "main/1/job2/bin/m").await.0, m);

    // Deleting the last job frees the rest.
    assert_eq!(
        send(&s, reqwest::Method::DELETE, "main/1/job2")
            .await
            .status(),
        200
    );
    assert_eq!(
        run_gc(&s).await,
        set(&[&digest_of(&shared), &digest_of(&b), &md])
    );
    assert!(pool_blobs(s.root()).is_empty());
}

fn vm_hwm_kib() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap()
}

/// Takes a while: 1 GiB goes through loopback, is hashed twice and written to disk.
#[tokio::test]
async fn a_1gib_artifact_upload_keeps_server_memory_flat() {
    const CHUNK: usize = 1 << 20;
    const CHUNKS: usize = 1024;
    let s = server().await;
    let chunk = Bytes::from(random_bytes(CHUNK, 99));
    let mut h = Sha256::new();
    for _ in 0..CHUNKS {
        h.update(&chunk);
    }
    let digest = format!("sha256:{}", hex::encode(h.finalize()));

    let before = vm_hwm_kib();
    let c2 = chunk.clone();
    let body = futures::stream::iter((0..CHUNKS).map(move |_| Ok::<_, std::io::Error>(c2.clone())));
    let r = client()
        .put(s.url("/artifacts/main/1/job/iso/big.iso"))
        .header("digest", &digest)
        .header("content-length", (CHUNK * CHUNKS).to_string())
        .body(reqwest::Body::wrap_stream(body))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201, "{}", r.text().await.unwrap());
    let after = vm_hwm_kib();
    let growth_mib = (after.saturating_sub(before)) as f64 / 1024.0;
    eprintln!("1 GiB artifact upload: VmHWM {before} kB -> {after} kB (+{growth_mib:.1} MiB)");
    assert!(
        growth_mib < 100.0,
        "peak memory grew by {growth_mib:.1} MiB"
    );

    let r = send(&s, reqwest::Method::HEAD, "main/1/job/iso/big.iso").await;
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["content-length"], (CHUNK * CHUNKS).to_string());
    assert_eq!(
        r.headers()["docker-content-digest"].to_str().unwrap(),
        digest
    );
    let r = client()
        .get(s.url("/artifacts/main/1/job/iso/big.iso"))
        .header("range", "bytes=-16")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 206);
    assert_eq!(r.bytes().await.unwrap(), chunk.slice(CHUNK - 16..));
    let d: Digest = digest.parse().unwrap();
    let blob = s.root().join(path_for(PathSpec::BlobData(&d)));
    assert_eq!(
        std::fs::metadata(blob).unwrap().len(),
        (CHUNK * CHUNKS) as u64
    );
}
