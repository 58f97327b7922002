//! Helpers shared by the conformance workflows (pull, push, discovery, management):
//! checking OCI error bodies, reading headers, raw HTTP/1.1 over TCP for requests no
//! well-behaved client would send, and paths into the store to check what is on disk.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::time::Duration;

use conformance::TestServer;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

pub const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
pub const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
pub const OCI_CONFIG: &str = "application/vnd.oci.image.config.v1+json";
pub const DOCKER_MANIFEST: &str = "application/vnd.docker.distribution.manifest.v2+json";
pub const DOCKER_LIST: &str = "application/vnd.docker.distribution.manifest.list.v2+json";

/// The error codes of the distribution spec (code-1 … code-14), and `RANGE_INVALID`,
/// which CNCF Distribution answers with its 416s and drydock keeps for compatibility.
pub const SPEC_CODES: [&str; 15] = [
    "BLOB_UNKNOWN",
    "BLOB_UPLOAD_INVALID",
    "BLOB_UPLOAD_UNKNOWN",
    "DIGEST_INVALID",
    "MANIFEST_BLOB_UNKNOWN",
    "MANIFEST_INVALID",
    "MANIFEST_UNKNOWN",
    "NAME_INVALID",
    "NAME_UNKNOWN",
    "SIZE_INVALID",
    "UNAUTHORIZED",
    "DENIED",
    "UNSUPPORTED",
    "TOOMANYREQUESTS",
    "RANGE_INVALID",
];

/// A header's value as text ("" when absent).
pub fn hdr(r: &reqwest::Response, name: &str) -> String {
    r.headers()
        .get(name)
        .map(|v| v.to_str().unwrap_or("<non-ascii>").to_owned())
        .unwrap_or_default()
}

/// Checks an OCI error response: `status`, a JSON body `{"errors":[{code,message,..}]}`
/// whose codes are all spec codes and whose first code is one of `codes`. Returns the
/// body.
pub fn check_error(
    status: u16,
    body: &[u8],
    want_status: u16,
    codes: &[&str],
) -> serde_json::Value {
    let text = String::from_utf8_lossy(body);
    assert_eq!(status, want_status, "status (body: {text})");
    let v: serde_json::Value = serde_json::from_slice(body)
        .unwrap_or_else(|e| panic!("error body is not JSON ({e}): {text}"));
    let errors = v["errors"]
        .as_array()
        .unwrap_or_else(|| panic!("error body has no errors array: {text}"));
    assert!(!errors.is_empty(), "errors array is empty: {text}");
    for e in errors {
        let code = e["code"].as_str().unwrap_or("");
        assert!(
            SPEC_CODES.contains(&code),
            "{code:?} is not a spec error code"
        );
    }
    let code = errors[0]["code"].as_str().unwrap_or("");
    assert!(
        codes.contains(&code),
        "error code {code:?}, want one of {codes:?}: {text}"
    );
    v
}

/// [`check_error`] on a reqwest response (and its Content-Type is JSON).
pub async fn expect_error(r: reqwest::Response, status: u16, code: &str) -> serde_json::Value {
    expect_error_any(r, status, &[code]).await
}

/// [`check_error`] on a reqwest response, accepting any of `codes`.
pub async fn expect_error_any(
    r: reqwest::Response,
    status: u16,
    codes: &[&str],
) -> serde_json::Value {
    let got = r.status().as_u16();
    let ct = hdr(&r, "content-type");
    let body = r.bytes().await.expect("error body");
    let v = check_error(got, &body, status, codes);
    assert!(
        ct.starts_with("application/json"),
        "error Content-Type {ct:?}"
    );
    v
}

/// Appends a query parameter to an upload `Location`, whatever it already carries.
pub fn with_query(location: &str, param: &str) -> String {
    if location.contains('?') {
        format!("{location}&{param}")
    } else {
        format!("{location}?{param}")
    }
}

/// The absolute URL of a `Location` (relative or absolute).
pub fn abs(s: &TestServer, location: &str) -> String {
    if location.starts_with("http://") || location.starts_with("https://") {
        location.to_owned()
    } else {
        s.url(location)
    }
}

/// Starts an upload session in `repo`; returns its absolute location.
pub async fn start_session(c: &reqwest::Client, s: &TestServer, repo: &str) -> String {
    let r = c
        .post(s.url(&format!("/v2/{repo}/blobs/uploads/")))
        .header("content-length", "0")
        .send()
        .await
        .expect("start session");
    assert_eq!(r.status(), 202, "start session in {repo}");
    let loc = hdr(&r, "location");
    assert!(!loc.is_empty(), "session has a Location");
    abs(s, &loc)
}

/// PATCHes one chunk with `Content-Range: <start>-<end>`; returns the response.
pub async fn patch_chunk(
    c: &reqwest::Client,
    location: &str,
    start: usize,
    chunk: &[u8],
) -> reqwest::Response {
    c.patch(location)
        .header("content-type", "application/octet-stream")
        .header(
            "content-range",
            format!("{start}-{}", start + chunk.len() - 1),
        )
        .body(chunk.to_vec())
        .send()
        .await
        .expect("patch chunk")
}

/// PUTs a manifest; returns the response.
pub async fn put_manifest(
    c: &reqwest::Client,
    s: &TestServer,
    repo: &str,
    reference: &str,
    media_type: &str,
    body: &str,
) -> reqwest::Response {
    c.put(s.url(&format!("/v2/{repo}/manifests/{reference}")))
        .header("content-type", media_type)
        .body(body.to_owned())
        .send()
        .await
        .expect("put manifest")
}

/// Pushes a config blob and one small layer to `repo` and returns an OCI image manifest
/// over them (config of `config_media_type`, `extra` JSON members appended). The
/// manifest itself is not pushed.
pub async fn image_with(
    c: &reqwest::Client,
    s: &TestServer,
    repo: &str,
    config_media_type: &str,
    seed: u64,
    extra: &str,
) -> String {
    let config = format!(r#"{{"seed":{seed}}}"#);
    let cd = conformance::push_blob(c, s, repo, config.as_bytes()).await;
    let layer = conformance::random_bytes(64, seed);
    let ld = conformance::push_blob(c, s, repo, &layer).await;
    format!(
        r#"{{"schemaVersion":2,"mediaType":"{OCI_MANIFEST}","config":{{"mediaType":"{config_media_type}","digest":"{cd}","size":{}}},"layers":[{{"mediaType":"application/vnd.oci.image.layer.v1.tar+gzip","digest":"{ld}","size":{}}}]{extra}}}"#,
        config.len(),
        layer.len()
    )
}

/// A `subject` member pointing at a manifest.
pub fn subject_member(digest: &str, size: usize) -> String {
    format!(r#","subject":{{"mediaType":"{OCI_MANIFEST}","digest":"{digest}","size":{size}}}"#)
}

/// Where the pool keeps `digest`'s bytes.
pub fn pool_data(root: &Path, digest: &str) -> PathBuf {
    let (alg, hex) = digest.split_once(':').expect("alg:hex");
    root.join("docker/registry/v2/blobs")
        .join(alg)
        .join(&hex[..2])
        .join(hex)
        .join("data")
}

/// The folder of `repo` in the store.
pub fn repo_dir(root: &Path, repo: &str) -> PathBuf {
    root.join("docker/registry/v2/repositories").join(repo)
}

/// Every file or folder under `dir` whose path contains `needle` (recursively; empty
/// when there is no such folder).
pub fn files_containing(dir: &Path, needle: &str) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let Ok(rd) = std::fs::read_dir(&d) else {
            continue;
        };
        for e in rd.flatten() {
            let p = e.path();
            if p.is_dir() {
                stack.push(p.clone());
            }
            if p.to_string_lossy().contains(needle) {
                out.push(p);
            }
        }
    }
    out
}

/// Children of a folder (empty if it does not exist).
pub fn children(dir: &Path) -> Vec<String> {
    std::fs::read_dir(dir)
        .map(|rd| {
            rd.flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default()
}

/// A response read off a raw socket.
#[derive(Debug)]
pub struct RawResponse {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl RawResponse {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    pub fn check_error(&self, status: u16, codes: &[&str]) -> serde_json::Value {
        check_error(self.status, &self.body, status, codes)
    }
}

/// Sends `head` (a request line and headers separated by `\n`, without the blank line)
/// and `body` as they are, half-closes the socket when `close` (a client that gives up
/// mid-body), and reads the response until it is complete, the server closes, or `wait`
/// passes. `None` when no status line arrived.
pub async fn raw_request(
    s: &TestServer,
    head: &str,
    body: &[u8],
    close: bool,
    wait: Duration,
) -> Option<RawResponse> {
    let mut sock = tokio::net::TcpStream::connect(s.addr)
        .await
        .expect("connect");
    let mut head = head.to_owned();
    if let Some(a) = conformance::test_authorization() {
        head.push_str(&format!("\nAuthorization: {a}"));
    }
    let mut req = head.replace('\n', "\r\n").into_bytes();
    req.extend_from_slice(b"\r\n\r\n");
    req.extend_from_slice(body);
    sock.write_all(&req).await.expect("write request");
    if close {
        let _ = sock.shutdown().await;
    }
    let mut buf = Vec::new();
    let read = async {
        let mut chunk = [0u8; 8192];
        loop {
            match sock.read(&mut chunk).await {
                Ok(0) | Err(_) => break,
                Ok(n) => buf.extend_from_slice(&chunk[..n]),
            }
            if parse_raw(&buf).is_some_and(|(_, complete)| complete) {
                break;
            }
        }
    };
    let _ = tokio::time::timeout(wait, read).await;
    parse_raw(&buf).map(|(r, _)| r)
}

/// A request without a body (`Connection: close`) to a raw path, for paths a URL library
/// would normalize (`..`, `%2e%2e`).
pub async fn raw_get(s: &TestServer, method: &str, path: &str) -> RawResponse {
    raw_request(
        s,
        &format!(
            "{method} {path} HTTP/1.1\nHost: {}\nContent-Length: 0\nConnection: close",
            s.host()
        ),
        b"",
        false,
        Duration::from_secs(10),
    )
    .await
    .unwrap_or_else(|| panic!("no response to {method} {path}"))
}

/// Parses a response; the flag says whether its body is complete.
fn parse_raw(buf: &[u8]) -> Option<(RawResponse, bool)> {
    let end = buf.windows(4).position(|w| w == b"\r\n\r\n")?;
    let head = String::from_utf8_lossy(&buf[..end]);
    let mut lines = head.split("\r\n");
    let status: u16 = lines.next()?.split_whitespace().nth(1)?.parse().ok()?;
    let headers: Vec<(String, String)> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_owned()))
        .collect();
    let rest = &buf[end + 4..];
    let get = |k: &str| headers.iter().find(|(h, _)| h == k).map(|(_, v)| v.clone());
    let (body, complete) = if let Some(len) = get("content-length").and_then(|v| v.parse().ok()) {
        let len: usize = len;
        (rest[..rest.len().min(len)].to_vec(), rest.len() >= len)
    } else if get("transfer-encoding").is_some_and(|v| v.contains("chunked")) {
        dechunk(rest)
    } else {
        (rest.to_vec(), false)
    };
    Some((
        RawResponse {
            status,
            headers,
            body,
        },
        complete,
    ))
}

fn dechunk(mut rest: &[u8]) -> (Vec<u8>, bool) {
    let mut out = Vec::new();
    loop {
        let Some(eol) = rest.windows(2).position(|w| w == b"\r\n") else {
            return (out, false);
        };
        let size_text = String::from_utf8_lossy(&rest[..eol]);
        let Ok(size) = usize::from_str_radix(size_text.split(';').next().unwrap_or("").trim(), 16)
        else {
            return (out, false);
        };
        rest = &rest[eol + 2..];
        if size == 0 {
            return (out, true);
        }
        if rest.len() < size + 2 {
            out.extend_from_slice(&rest[..rest.len().min(size)]);
            return (out, false);
        }
        out.extend_from_slice(&rest[..size]);
        rest = &rest[size + 2..];
    }
}

/// Polls `check` every 50 ms for up to 5 s; true as soon as it holds.
pub async fn eventually(mut check: impl FnMut() -> bool) -> bool {
    for _ in 0..100 {
        if check() {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    check()
}

/// A filesystem mounted over a folder for one test (the tests run as root), unmounted
/// when dropped, even when the test fails.
pub struct Mount(PathBuf);

impl Mount {
    /// A fresh ext4 of `mib` MiB (no blocks reserved for root) from an image file in
    /// `images`, mounted over `at`: a real block filesystem, so `fallocate` and ENOSPC
    /// behave as on a server's disk.
    pub fn ext4(images: &Path, at: &Path, mib: u64) -> Mount {
        let image = images.join("fs.img");
        std::fs::File::create(&image)
            .and_then(|f| f.set_len(mib << 20))
            .expect("image file");
        run_root_tool("mkfs.ext4", &["-q", "-F", "-m", "0"], &image, None);
        run_root_tool("mount", &["-o", "loop"], &image, Some(at));
        Mount(at.to_owned())
    }
}

/// Runs `tool args… path [at]`, failing the test loudly when it cannot.
fn run_root_tool(tool: &str, args: &[&str], path: &Path, at: Option<&Path>) {
    let mut cmd = std::process::Command::new(tool);
    cmd.args(args).arg(path);
    if let Some(at) = at {
        cmd.arg(at);
    }
    let st = cmd
        .status()
        .unwrap_or_else(|e| panic!("{tool}: {e} (the tests need root and e2fsprogs)"));
    assert!(
        st.success(),
        "{tool} {args:?} {} failed: the tests need root and loop devices",
        path.display()
    );
}

impl Drop for Mount {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount")
            .arg("-l")
            .arg(&self.0)
            .status();
    }
}

/// Fills the filesystem holding `filler` with that one file until it refuses a write;
/// then gives back `leave` bytes (whole 4 KiB blocks) from its end.
pub fn fill_disk(filler: &Path, leave: u64) {
    use std::io::Write;
    let mut f = std::fs::File::create(filler).expect("filler");
    let chunk = vec![0u8; 64 << 10];
    while f.write_all(&chunk).is_ok() {}
    let small = [0u8; 4096];
    while f.write_all(&small).is_ok() {}
    let _ = f.sync_all();
    let len = f.metadata().expect("filler size").len();
    f.set_len(len.saturating_sub(leave))
        .expect("give space back");
    f.sync_all().expect("filler sync");
}

/// Bytes allocated on disk to `path` (not its size).
pub fn allocated(path: &Path) -> u64 {
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata(path)
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
        .blocks()
        * 512
}
