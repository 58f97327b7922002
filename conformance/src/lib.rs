//! Test harness: starts the real drydock server on a listener bound to `127.0.0.1:0`
//! with a fresh temporary root, and gives tests an HTTP client and small helpers to push
//! content. Nothing here is mocked: requests go over loopback TCP to the real router and
//! the real filesystem store.

pub mod auth;
pub mod pg;
pub mod receiver;
pub mod s3;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use registry::config::Config;
use sha2::{Digest as _, Sha256};

/// A running in-process server with its own root directory: the same application the
/// binary serves (registry API, admin API, online collector).
pub struct TestServer {
    pub addr: SocketAddr,
    /// `http://127.0.0.1:PORT` (`https://` when the configuration has `http.tls`)
    pub base: String,
    /// The listener's TLS (reload it as SIGHUP does), when `http.tls` is set.
    pub tls: Option<std::sync::Arc<registry::tls::Tls>>,
    pub config: Config,
    /// The server's online garbage collector.
    pub cleaner: gc::cleaner::Cleaner,
    /// The server's maintenance run queue.
    pub maintenance: gc::maintenance::Maintenance,
    /// The server's store (for tests that arm `registry::hooks` or run a task directly).
    pub store: registry::Store,
    /// The server's metrics, when its configuration keeps them (`admin.metrics`).
    pub metrics: Option<std::sync::Arc<registry::metrics::Metrics>>,
    root: tempfile::TempDir,
    shutdown: Option<tokio::sync::oneshot::Sender<()>>,
    handle: Option<tokio::task::JoinHandle<std::io::Result<()>>>,
}

/// The configuration tests start from: the embedded default with a private root.
pub fn test_config(root: &Path) -> Config {
    let mut config = Config::load(None, Vec::<(String, String)>::new())
        .expect("embedded default config loads")
        .config;
    config.storage.filesystem.rootdirectory = root.to_path_buf();
    config.http.addr = "127.0.0.1:0".into();
    config.log.accesslog.disabled = true;
    if test_auth() {
        // Outside the root, which tests inspect; one folder per test process.
        static DIR: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();
        let file = DIR.get_or_init(|| {
            let d = std::env::temp_dir().join(format!("drydock-test-auth-{}", std::process::id()));
            std::fs::create_dir_all(&d).expect("auth test folder");
            let f = d.join("htpasswd");
            auth::write_htpasswd(&f, &[auth::ADMIN, auth::ALICE, auth::READER]);
            f
        });
        auth::use_htpasswd(&mut config, file.clone());
    }
    config
}

/// Whether the suite runs with authentication on (`DRYDOCK_TEST_AUTH=htpasswd`): every
/// server then requires htpasswd credentials with [`auth::POLICY`], and [`client`] and
/// the raw requests of the tests authenticate as [`auth::ALICE`]. `scripts/test.sh`
/// runs the conformance workflows once without and once with it.
pub fn test_auth() -> bool {
    match std::env::var("DRYDOCK_TEST_AUTH").as_deref() {
        Ok("htpasswd") => true,
        Ok("") | Err(_) => false,
        Ok(other) => panic!("DRYDOCK_TEST_AUTH={other:?}: only htpasswd is known"),
    }
}

/// The `Authorization` header tests send when [`test_auth`] is on.
pub fn test_authorization() -> Option<String> {
    test_auth().then(|| auth::basic(auth::ALICE))
}

impl TestServer {
    /// Starts a server on the embedded default configuration.
    pub async fn start() -> TestServer {
        TestServer::start_with(|_| {}).await
    }

    /// Starts a server after `adjust` has changed the default configuration.
    pub async fn start_with(adjust: impl FnOnce(&mut Config)) -> TestServer {
        let root = tempfile::tempdir().expect("temp root");
        let mut config = test_config(root.path());
        adjust(&mut config);
        TestServer::start_on(root, config).await
    }

    /// Starts a server on an existing root folder (kept alive by the returned server).
    pub async fn start_on(root: tempfile::TempDir, config: Config) -> TestServer {
        TestServer::start_coordinated(root, config, None).await
    }

    /// [`TestServer::start_on`], its writers and removers coordinating through
    /// `liveness` (PostgreSQL, say) instead of the in-process protocol when given.
    pub async fn start_coordinated(
        root: tempfile::TempDir,
        config: Config,
        liveness: Option<std::sync::Arc<dyn registry::liveness::Liveness>>,
    ) -> TestServer {
        TestServer::start_full(root, None, config, liveness).await
    }

    /// Another server on this one's storage root, coordinating through `liveness`: a
    /// replica, as servers on one bucket are (the filesystem stands in for the bucket;
    /// its one-server rule is the binary's, not the library's). Its admin socket is in
    /// a folder of its own.
    pub async fn start_replica(
        &self,
        liveness: std::sync::Arc<dyn registry::liveness::Liveness>,
    ) -> TestServer {
        let own = tempfile::tempdir().expect("temp dir");
        TestServer::start_full(
            own,
            Some(self.root().to_path_buf()),
            self.config.clone(),
            Some(liveness),
        )
        .await
    }

    async fn start_full(
        root: tempfile::TempDir,
        storage: Option<PathBuf>,
        mut config: Config,
        liveness: Option<std::sync::Arc<dyn registry::liveness::Liveness>>,
    ) -> TestServer {
        config.storage.filesystem.rootdirectory =
            storage.unwrap_or_else(|| root.path().to_path_buf());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind loopback");
        let addr = listener.local_addr().expect("local addr");
        let tls = config
            .http
            .tls
            .as_ref()
            .map(|t| registry::tls::Tls::from_config(t).expect("the test certificates load"));
        let state = registry::server::state_coordinated(&config, liveness)
            .expect("the test configuration builds a store");
        let store = state.store.clone();
        let metrics = state.metrics.clone();
        let options = registry::server::ServeOptions {
            drain: Duration::from_secs(5),
            tls: tls.clone(),
            ..registry::server::ServeOptions::from_config(&config, state.metrics.clone())
        };
        let gc::online::Online {
            router: app,
            cleaner,
            maintenance,
            ..
        } = gc::online::app(state, &config).expect("the test configuration loads");
        // The admin API is the CLI's through the socket in the root, as in the binary.
        gc::admin::serve_socket(
            gc::lock::admin_socket(root.path()),
            gc::admin::router(cleaner.clone(), maintenance.clone()),
        )
        .await
        .expect("admin socket");
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let handle = tokio::spawn(registry::server::serve(
            listener,
            app,
            options,
            async move {
                let _ = rx.await;
            },
        ));
        TestServer {
            addr,
            base: format!("{}://{addr}", if tls.is_some() { "https" } else { "http" }),
            tls,
            cleaner,
            maintenance,
            store,
            metrics,
            config,
            root,
            shutdown: Some(tx),
            handle: Some(handle),
        }
    }

    /// `METHOD path` on the admin socket in the root (the CLI's channel); the status and
    /// the JSON body.
    pub async fn admin(&self, method: &str, path: &str) -> (u16, serde_json::Value) {
        admin(self.root(), method, path).await
    }

    /// The storage root directory.
    pub fn root(&self) -> &Path {
        self.root.path()
    }

    /// `http://127.0.0.1:PORT{path}`
    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    /// `127.0.0.1:PORT`, as container clients want it.
    pub fn host(&self) -> String {
        self.addr.to_string()
    }

    /// Stops the server gracefully and hands back its root (to restart on it).
    pub async fn stop(mut self) -> tempfile::TempDir {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        if let Some(h) = self.handle.take() {
            let _ = h.await;
        }
        let dir = tempfile::tempdir().expect("temp dir");
        std::mem::replace(&mut self.root, dir)
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
    }
}

/// `METHOD path` on the admin socket of the server that owns `root`; the status and
/// the JSON body.
pub async fn admin(root: &Path, method: &str, path: &str) -> (u16, serde_json::Value) {
    let (status, body) = gc::admin::request(&gc::lock::admin_socket(root), method, path)
        .await
        .unwrap_or_else(|e| panic!("admin {method} {path}: {e}"));
    let v = serde_json::from_slice(&body).unwrap_or_else(|e| {
        panic!(
            "admin {method} {path}: not JSON ({e}): {}",
            String::from_utf8_lossy(&body)
        )
    });
    (status.as_u16(), v)
}

/// Every file under a storage root (relative paths, sorted) but the server's own state
/// (`drydock/`: lock, socket, maintenance records) and an `htpasswd` a test put there:
/// compare two to show a refused request changed nothing.
pub fn store_files(root: &Path) -> Vec<String> {
    fn walk(base: &Path, dir: &Path, out: &mut Vec<String>) {
        let Ok(rd) = std::fs::read_dir(dir) else {
            return;
        };
        for e in rd.flatten() {
            let p = e.path();
            let Ok(rel) = p.strip_prefix(base) else {
                continue;
            };
            let rel = rel.display().to_string();
            if rel.starts_with("drydock") || rel == "htpasswd" {
                continue;
            }
            if p.is_dir() {
                walk(base, &p, out);
            } else {
                out.push(rel);
            }
        }
    }
    let mut v = Vec::new();
    walk(root, root, &mut v);
    v.sort();
    v
}

/// A plain HTTP client (no redirects followed, so `Location` headers can be checked).
pub fn client() -> reqwest::Client {
    client_with(test_authorization())
}

/// [`client`] sending `authorization` (an `Authorization` header value) when given.
pub fn client_with(authorization: Option<String>) -> reqwest::Client {
    let mut headers = reqwest::header::HeaderMap::new();
    if let Some(a) = authorization {
        headers.insert(
            reqwest::header::AUTHORIZATION,
            a.parse().expect("header value"),
        );
    }
    reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .default_headers(headers)
        .build()
        .expect("http client")
}

/// `sha256:<hex>` of `data`.
pub fn digest_of(data: &[u8]) -> String {
    format!("sha256:{}", hex::encode(Sha256::digest(data)))
}

/// Deterministic pseudo-random bytes (xorshift), so tests need no rand crate.
pub fn random_bytes(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let mut out = Vec::with_capacity(len + 8);
    while out.len() < len {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        out.extend_from_slice(&x.to_le_bytes());
    }
    out.truncate(len);
    out
}

/// Pushes a blob monolithically (`POST ?digest=`); returns its digest.
pub async fn push_blob(c: &reqwest::Client, s: &TestServer, repo: &str, data: &[u8]) -> String {
    push_blob_to(c, &s.base, repo, data).await
}

/// [`push_blob`] to the server at `base` (`http://host:port`): a monolithic push.
pub async fn push_blob_to(c: &reqwest::Client, base: &str, repo: &str, data: &[u8]) -> String {
    let d = digest_of(data);
    let r = c
        .post(format!("{base}/v2/{repo}/blobs/uploads/?digest={d}"))
        .header("content-type", "application/octet-stream")
        .body(data.to_vec())
        .send()
        .await
        .expect("push blob");
    assert_eq!(r.status(), 201, "push blob {d} to {repo}");
    d
}

/// An OCI image manifest for a config and layers (digest, size) already pushed.
pub fn image_manifest(config: (&str, usize), layers: &[(&str, usize)], extra: &str) -> String {
    let layers: Vec<String> = layers
        .iter()
        .map(|(d, n)| {
            format!(
                r#"{{"mediaType":"application/vnd.oci.image.layer.v1.tar+gzip","digest":"{d}","size":{n}}}"#
            )
        })
        .collect();
    format!(
        r#"{{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json","config":{{"mediaType":"application/vnd.oci.image.config.v1+json","digest":"{}","size":{}}},"layers":[{}]{extra}}}"#,
        config.0,
        config.1,
        layers.join(",")
    )
}

/// Pushes a small image (a config and `layers` random layers) under `reference`;
/// returns the manifest digest and body.
pub async fn push_image(
    c: &reqwest::Client,
    s: &TestServer,
    repo: &str,
    reference: &str,
    seed: u64,
    layers: usize,
) -> (String, String) {
    let config = format!(r#"{{"architecture":"amd64","os":"linux","seed":{seed}}}"#);
    let cd = push_blob(c, s, repo, config.as_bytes()).await;
    let mut ls = Vec::new();
    for i in 0..layers {
        let data = random_bytes(1024 + i * 100, seed * 1000 + i as u64);
        let d = push_blob(c, s, repo, &data).await;
        ls.push((d, data.len()));
    }
    let refs: Vec<(&str, usize)> = ls.iter().map(|(d, n)| (d.as_str(), *n)).collect();
    let m = image_manifest((&cd, config.len()), &refs, "");
    let r = c
        .put(s.url(&format!("/v2/{repo}/manifests/{reference}")))
        .header("content-type", "application/vnd.oci.image.manifest.v1+json")
        .body(m.clone())
        .send()
        .await
        .expect("push manifest");
    assert_eq!(r.status(), 201, "push manifest {repo}:{reference}");
    (digest_of(m.as_bytes()), m)
}

/// The `registry` binary built from this workspace (for tests that spawn processes).
pub fn registry_binary() -> PathBuf {
    workspace_binary("registry")
}

/// A binary built from this workspace (`cargo build --workspace --bins`), debug first.
pub fn workspace_binary(name: &str) -> PathBuf {
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../target"));
    for profile in ["debug", "release"] {
        let p = target.join(profile).join(name);
        if p.exists() {
            return p;
        }
    }
    panic!(
        "the {name} binary is not built under {}: run `cargo build --workspace --bins` first",
        target.display()
    );
}

/// A `registry serve` child process on its own root, for crash and restart tests.
pub struct ServerProcess {
    pub child: std::process::Child,
    pub addr: SocketAddr,
    pub base: String,
    /// The debug listener (`http.debug.addr`), when the config has one.
    pub debug_addr: Option<SocketAddr>,
    /// Every stderr line, as it arrives (start-up lines included).
    pub log: std::sync::Arc<std::sync::Mutex<Vec<String>>>,
    /// Notified when a line arrives (see [`ServerProcess::wait_for_log`]).
    log_grew: std::sync::Arc<std::sync::Condvar>,
}

impl ServerProcess {
    /// Spawns `registry serve CONFIG` (the config must listen on `127.0.0.1:0`) and waits
    /// for the log line announcing the bound address.
    pub fn spawn(config_path: &Path) -> ServerProcess {
        ServerProcess::spawn_with_env(config_path, &[])
    }

    /// [`ServerProcess::spawn`] with extra environment variables.
    pub fn spawn_with_env(config_path: &Path, env: &[(&str, &str)]) -> ServerProcess {
        let mut cmd = std::process::Command::new(registry_binary());
        cmd.arg("serve").arg(config_path).envs(env.iter().copied());
        ServerProcess::spawn_command(cmd)
    }

    /// Runs `cmd`, which must end up exec'ing `registry serve` (through `sh -c` when a
    /// variable must name the server's own pid), and waits for it to listen.
    pub fn spawn_command(mut cmd: std::process::Command) -> ServerProcess {
        use std::io::BufRead;
        let mut child = cmd
            .env("RUST_LOG", "info")
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn registry");
        let stderr = child.stderr.take().expect("stderr");
        let mut lines = std::io::BufReader::new(stderr).lines();
        let mut debug_addr = None;
        let mut early = Vec::new();
        let addr = loop {
            let Some(line) = lines.next() else {
                panic!("registry exited before listening:\n{}", early.join("\n"));
            };
            let line = line.expect("read stderr");
            early.push(line.clone());
            if let Some(i) = line.find("debug_addr=") {
                let a = line[i + 11..].split_whitespace().next().unwrap_or("");
                debug_addr = a.parse::<SocketAddr>().ok();
                continue;
            }
            // The line `serve` logs once bound (a start-up warning may also say
            // "listening" and name the address).
            if let Some(i) = line.find("addr=")
                && line.contains("drydock registry listening")
            {
                let a = line[i + 5..].split_whitespace().next().unwrap_or("");
                break a.parse::<SocketAddr>().expect("listening address");
            }
        };
        let log = std::sync::Arc::new(std::sync::Mutex::new(early));
        let log_grew = std::sync::Arc::new(std::sync::Condvar::new());
        let (sink, grew) = (log.clone(), log_grew.clone());
        std::thread::spawn(move || {
            for line in lines.map_while(Result::ok) {
                sink.lock().unwrap_or_else(|p| p.into_inner()).push(line);
                grew.notify_all();
            }
            // The server closed stderr (it exited): waiters need not wait any longer.
            sink.lock()
                .unwrap_or_else(|p| p.into_inner())
                .push("<stderr closed>".into());
            grew.notify_all();
        });
        ServerProcess {
            child,
            addr,
            base: format!("http://{addr}"),
            debug_addr,
            log,
            log_grew,
        }
    }

    /// Blocks until `n` stderr lines contain `needle` (the server's own signal that
    /// something happened, e.g. a reload) and returns true; false if stderr closed or
    /// 60 s passed first. It blocks: in a test, call it inside `block_in_place`.
    pub fn wait_for_log(&self, needle: &str, n: usize) -> bool {
        let deadline = std::time::Instant::now() + Duration::from_secs(60);
        let mut lines = self.log.lock().unwrap_or_else(|p| p.into_inner());
        loop {
            if lines.iter().filter(|l| l.contains(needle)).count() >= n {
                return true;
            }
            let now = std::time::Instant::now();
            if now >= deadline || lines.last().is_some_and(|l| l == "<stderr closed>") {
                return false;
            }
            lines = self
                .log_grew
                .wait_timeout(lines, deadline - now)
                .unwrap_or_else(|p| p.into_inner())
                .0;
        }
    }

    /// The stderr lines so far, joined (for failure messages).
    pub fn log_text(&self) -> String {
        self.log
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .join("\n")
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    /// SIGTERM, and waits for the process to exit (a clean stop).
    pub fn terminate(&mut self) -> std::process::ExitStatus {
        // SAFETY: kill(2) on the pid of a child this value owns and has not reaped.
        unsafe { libc::kill(self.child.id() as libc::pid_t, libc::SIGTERM) };
        self.child.wait().expect("wait for the registry")
    }

    /// kill -9.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for ServerProcess {
    fn drop(&mut self) {
        self.kill();
    }
}
