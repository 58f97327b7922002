//! Shared helpers of the end-to-end tests that drive real clients (skopeo, podman,
//! docker, CNCF Distribution's `docker-registry`) against drydock: running external
//! commands off the async runtime with loud failures, guards that always stop the
//! daemons a test started, a byte-counting loopback TCP proxy, and a builder of OCI
//! image layouts (real tar layers, plain and gzip) written to disk.
//!
//! Every external command runs through [`Cmd`]: a missing program or a non-zero exit
//! panics with the command line, its exit status, stdout and stderr. Nothing is skipped.

#![allow(dead_code)] // each test file uses its own part of this module

use std::collections::BTreeSet;
use std::ffi::{OsStr, OsString};
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use sha2::{Digest as _, Sha256};

/// `sha256:<hex>` of `data`.
pub fn sha256(data: &[u8]) -> String {
    format!("sha256:{}", hex::encode(Sha256::digest(data)))
}

/// A fresh temporary directory (removed when dropped).
pub fn tempdir() -> tempfile::TempDir {
    tempfile::tempdir().expect("create a temporary directory")
}

/// Runs a blocking closure on tokio's blocking pool, so the in-process server keeps
/// serving; a panic inside `f` is re-raised with its own message.
pub async fn blocking<R: Send + 'static>(f: impl FnOnce() -> R + Send + 'static) -> R {
    match tokio::task::spawn_blocking(f).await {
        Ok(r) => r,
        Err(e) if e.is_panic() => std::panic::resume_unwind(e.into_panic()),
        Err(e) => panic!("blocking task failed: {e}"),
    }
}

// ---------------------------------------------------------------------------------
// External commands
// ---------------------------------------------------------------------------------

/// What a finished command printed.
#[derive(Debug, Clone)]
pub struct Out {
    pub status: ExitStatus,
    pub stdout: Vec<u8>,
    pub stderr: Vec<u8>,
}

impl Out {
    pub fn stdout(&self) -> String {
        String::from_utf8_lossy(&self.stdout).into_owned()
    }
    pub fn stderr(&self) -> String {
        String::from_utf8_lossy(&self.stderr).into_owned()
    }
    pub fn success(&self) -> bool {
        self.status.success()
    }
}

/// An external command line.
#[derive(Debug, Clone)]
pub struct Cmd {
    program: OsString,
    args: Vec<OsString>,
    envs: Vec<(OsString, OsString)>,
    stdin: Option<Vec<u8>>,
    dir: Option<PathBuf>,
    timeout: Duration,
}

impl Cmd {
    pub fn new(program: impl AsRef<OsStr>) -> Cmd {
        Cmd {
            program: program.as_ref().to_owned(),
            args: Vec::new(),
            envs: Vec::new(),
            stdin: None,
            dir: None,
            timeout: Duration::from_secs(180),
        }
    }

    pub fn arg(mut self, a: impl AsRef<OsStr>) -> Cmd {
        self.args.push(a.as_ref().to_owned());
        self
    }

    pub fn args<I, S>(mut self, args: I) -> Cmd
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        self.args
            .extend(args.into_iter().map(|a| a.as_ref().to_owned()));
        self
    }

    pub fn env(mut self, k: impl AsRef<OsStr>, v: impl AsRef<OsStr>) -> Cmd {
        self.envs
            .push((k.as_ref().to_owned(), v.as_ref().to_owned()));
        self
    }

    pub fn stdin(mut self, data: Vec<u8>) -> Cmd {
        self.stdin = Some(data);
        self
    }

    pub fn current_dir(mut self, dir: impl AsRef<Path>) -> Cmd {
        self.dir = Some(dir.as_ref().to_owned());
        self
    }

    pub fn timeout(mut self, t: Duration) -> Cmd {
        self.timeout = t;
        self
    }

    /// The command line, for messages.
    pub fn display(&self) -> String {
        let mut s = self.program.to_string_lossy().into_owned();
        for a in &self.args {
            s.push(' ');
            s.push_str(&a.to_string_lossy());
        }
        s
    }

    fn command(&self) -> Command {
        let mut c = Command::new(&self.program);
        c.args(&self.args);
        for (k, v) in &self.envs {
            c.env(k, v);
        }
        if let Some(d) = &self.dir {
            c.current_dir(d);
        }
        c
    }

    /// Spawns a long-running process whose stdout and stderr go to `log` (a file).
    pub fn spawn_logged(&self, log: &Path) -> Child {
        let f = std::fs::File::create(log).expect("create log file");
        let f2 = f.try_clone().expect("clone log file");
        self.command()
            .stdin(Stdio::null())
            .stdout(f)
            .stderr(f2)
            .spawn()
            .unwrap_or_else(|e| spawn_failure(&self.display(), &self.program, e))
    }

    /// Runs to completion whatever the exit status; panics only when the program is
    /// missing or overruns its timeout.
    pub fn try_run_sync(&self) -> Out {
        let mut child = self
            .command()
            .stdin(if self.stdin.is_some() {
                Stdio::piped()
            } else {
                Stdio::null()
            })
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| spawn_failure(&self.display(), &self.program, e));
        let feeder = match (child.stdin.take(), self.stdin.clone()) {
            (Some(mut w), Some(data)) => Some(std::thread::spawn(move || {
                let _ = w.write_all(&data);
            })),
            _ => None,
        };
        let mut out_pipe = child.stdout.take().expect("stdout pipe");
        let mut err_pipe = child.stderr.take().expect("stderr pipe");
        let out_t = std::thread::spawn(move || {
            let mut v = Vec::new();
            let _ = out_pipe.read_to_end(&mut v);
            v
        });
        let err_t = std::thread::spawn(move || {
            let mut v = Vec::new();
            let _ = err_pipe.read_to_end(&mut v);
            v
        });
        let deadline = Instant::now() + self.timeout;
        let status = loop {
            match child.try_wait().expect("wait for child") {
                Some(s) => break Some(s),
                None if Instant::now() >= deadline => {
                    let _ = child.kill();
                    let _ = child.wait();
                    break None;
                }
                None => std::thread::sleep(Duration::from_millis(20)),
            }
        };
        if let Some(f) = feeder {
            let _ = f.join();
        }
        let stdout = out_t.join().unwrap_or_default();
        let stderr = err_t.join().unwrap_or_default();
        match status {
            Some(status) => Out {
                status,
                stdout,
                stderr,
            },
            None => panic!(
                "`{}` did not finish within {:?}; killed it\n--- stdout ---\n{}\n--- stderr ---\n{}",
                self.display(),
                self.timeout,
                String::from_utf8_lossy(&stdout),
                String::from_utf8_lossy(&stderr)
            ),
        }
    }

    /// Runs to completion; panics (with stdout and stderr) unless it exits with 0.
    pub fn run_sync(&self) -> Out {
        let out = self.try_run_sync();
        if !out.success() {
            panic!(
                "`{}` failed: {}\n--- stdout ---\n{}\n--- stderr ---\n{}",
                self.display(),
                out.status,
                out.stdout(),
                out.stderr()
            );
        }
        out
    }

    /// Runs to completion and expects a non-zero exit; returns what it printed.
    pub fn fail_sync(&self) -> Out {
        let out = self.try_run_sync();
        if out.success() {
            panic!(
                "`{}` succeeded but was expected to fail\n--- stdout ---\n{}\n--- stderr ---\n{}",
                self.display(),
                out.stdout(),
                out.stderr()
            );
        }
        out
    }

    /// [`Cmd::run_sync`] on the blocking pool.
    pub async fn run(self) -> Out {
        blocking(move || self.run_sync()).await
    }

    /// [`Cmd::try_run_sync`] on the blocking pool.
    pub async fn try_run(self) -> Out {
        blocking(move || self.try_run_sync()).await
    }

    /// [`Cmd::fail_sync`] on the blocking pool.
    pub async fn fail(self) -> Out {
        blocking(move || self.fail_sync()).await
    }
}

fn spawn_failure(line: &str, program: &OsStr, e: std::io::Error) -> ! {
    if e.kind() == std::io::ErrorKind::NotFound {
        panic!(
            "`{}` is not installed (not found on PATH), so `{line}` cannot run: the \
             end-to-end tests need it; `bash scripts/test.sh` installs it with apt",
            program.to_string_lossy()
        );
    }
    panic!("could not start `{line}`: {e}");
}

/// Panics with a clear message unless `program` can be found on `PATH`.
pub fn require(program: &str) {
    let found = std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).any(|d| d.join(program).is_file()))
        .unwrap_or(false);
    assert!(
        found,
        "`{program}` is not installed (not found on PATH): the end-to-end tests need it; \
         `bash scripts/test.sh` installs it with apt"
    );
}

// ---------------------------------------------------------------------------------
// Daemons
// ---------------------------------------------------------------------------------

/// A long-running child process (dockerd, docker-registry) that is always stopped when
/// the guard drops, even when the test panics: SIGTERM, a grace period, then SIGKILL.
/// Processes it started on its own (named by `pidfiles`) are killed after it.
pub struct Daemon {
    pub name: String,
    child: Option<Child>,
    log: PathBuf,
    grace: Duration,
    pidfiles: Vec<(PathBuf, String)>,
}

impl Daemon {
    pub fn spawn(name: &str, cmd: &Cmd, log: &Path) -> Daemon {
        let child = cmd.spawn_logged(log);
        Daemon {
            name: name.to_owned(),
            child: Some(child),
            log: log.to_owned(),
            grace: Duration::from_secs(20),
            pidfiles: Vec::new(),
        }
    }

    /// Also kill the process named in `pidfile` (a grandchild) when stopping, if it
    /// is still alive and its command line contains `marker` (so a recycled pid is
    /// never signalled).
    pub fn also_kill_pidfile(&mut self, pidfile: PathBuf, marker: &str) {
        self.pidfiles.push((pidfile, marker.to_owned()));
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().map_or(0, Child::id)
    }

    /// The last lines of the daemon's log.
    pub fn log_tail(&self) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(40)..].join("\n")
    }

    /// Panics (with the log) when the daemon has already exited.
    pub fn assert_running(&mut self) {
        if let Some(c) = self.child.as_mut()
            && let Ok(Some(status)) = c.try_wait()
        {
            panic!(
                "{} exited early ({status})\n--- log ---\n{}",
                self.name,
                self.log_tail()
            );
        }
    }

    /// Stops the daemon and waits for it; idempotent.
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            signal(child.id(), "TERM");
            let deadline = Instant::now() + self.grace;
            loop {
                match child.try_wait() {
                    Ok(Some(_)) | Err(_) => break,
                    Ok(None) if Instant::now() >= deadline => {
                        let _ = child.kill();
                        let _ = child.wait();
                        break;
                    }
                    Ok(None) => std::thread::sleep(Duration::from_millis(50)),
                }
            }
        }
        for (pf, marker) in std::mem::take(&mut self.pidfiles) {
            let Some(pid) = std::fs::read_to_string(&pf)
                .ok()
                .and_then(|s| s.trim().parse::<u32>().ok())
            else {
                continue;
            };
            let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
            if String::from_utf8_lossy(&cmdline).contains(&marker) {
                signal(pid, "KILL");
            }
        }
    }
}

/// `kill -SIG pid`; whether it succeeded.
fn signal(pid: u32, sig: &str) -> bool {
    Command::new("kill")
        .arg(format!("-{sig}"))
        .arg(pid.to_string())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

impl Drop for Daemon {
    fn drop(&mut self) {
        self.stop();
    }
}

/// A port on 127.0.0.1 that was free a moment ago.
/// nginx in the foreground (no master process) serving `site` inside its `http {}`
/// block, every file it writes under `dir`.
pub fn nginx(dir: &Path, site: &str) -> Daemon {
    let t = |n: &str| dir.join(n).display().to_string();
    let conf = dir.join("nginx.conf");
    std::fs::write(
        &conf,
        format!(
            "daemon off;\nmaster_process off;\npid {};\nerror_log {} info;\nevents {{}}\n\
             http {{\naccess_log off;\nclient_body_temp_path {};\nproxy_temp_path {};\n\
             fastcgi_temp_path {};\nuwsgi_temp_path {};\nscgi_temp_path {};\n{site}\n}}\n",
            t("nginx.pid"),
            t("nginx-error.log"),
            t("body"),
            t("proxy"),
            t("fastcgi"),
            t("uwsgi"),
            t("scgi"),
        ),
    )
    .expect("write nginx.conf");
    Daemon::spawn(
        "nginx",
        &Cmd::new("nginx").arg("-p").arg(dir).arg("-c").arg(&conf),
        &dir.join("nginx.log"),
    )
}

/// nginx in front of the replicas at `replicas` with docs/storage.md's example, listening on `port`.
pub fn balancer(dir: &Path, port: u16, replicas: &[SocketAddr]) -> Daemon {
    let doc = include_str!("../../../docs/storage.md");
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
        site = site.replacen(line, &format!("    server {r};"), 1);
    }
    assert!(
        site.contains("listen 80;"),
        "the example no longer listens on 80"
    );
    site = site.replace("listen 80;", &format!("listen 127.0.0.1:{port};"));
    nginx(dir, &site)
}

/// Polls `url` through `c` until it answers at all (bounded): nginx says nothing when
/// it listens.
pub async fn wait_answers(c: &reqwest::Client, url: &str, daemon: &Daemon) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while c.get(url).send().await.is_err() {
        assert!(
            Instant::now() < deadline,
            "{url} did not answer: {}",
            daemon.log_tail()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

pub fn free_port() -> u16 {
    let l = TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0");
    l.local_addr().expect("local addr").port()
}

/// Whether a daemon came up.
pub enum Readiness {
    Ready,
    /// It exited before it was ready; its log.
    Exited(String),
}

/// Waits until the daemon's log contains `line` and `GET http://addr/v2/` answers (any
/// HTTP status); `Exited` when the daemon dies first; panics with its log after
/// `timeout`.
pub async fn wait_ready(
    daemon: &mut Daemon,
    line: &str,
    addr: &str,
    timeout: Duration,
) -> Readiness {
    let c = reqwest::Client::new();
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(c) = daemon.child.as_mut()
            && let Ok(Some(status)) = c.try_wait()
        {
            return Readiness::Exited(format!("exited with {status}\n{}", daemon.log_tail()));
        }
        let logged = std::fs::read_to_string(&daemon.log).is_ok_and(|l| l.contains(line));
        if logged && c.get(format!("http://{addr}/v2/")).send().await.is_ok() {
            return Readiness::Ready;
        }
        if Instant::now() >= deadline {
            panic!(
                "{} did not answer on {addr} within {timeout:?}\n--- log ---\n{}",
                daemon.name,
                daemon.log_tail()
            );
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// CNCF Distribution's registry (`docker-registry serve CONFIG`) on `root`, with a
/// private config: filesystem storage, deletes enabled, no auth, loopback only.
pub struct Distribution {
    pub daemon: Daemon,
    pub host: String,
    /// Its debug listener (Prometheus metrics at `/metrics`), when started with one.
    pub debug: Option<String>,
    _dir: tempfile::TempDir,
}

impl Distribution {
    /// Writes a config for `root` listening on `addr`; returns its folder and path.
    pub fn write_config(root: &Path, addr: &str) -> (tempfile::TempDir, PathBuf) {
        Distribution::write_config_with(root, addr, None)
    }

    /// [`Distribution::write_config`], with metrics on a debug listener at `debug`.
    fn write_config_with(
        root: &Path,
        addr: &str,
        debug: Option<&str>,
    ) -> (tempfile::TempDir, PathBuf) {
        let dir = tempdir();
        let mut config = format!(
            "version: 0.1\n\
             log:\n  level: info\n\
             storage:\n  filesystem:\n    rootdirectory: {}\n  delete:\n    enabled: true\n\
             http:\n  addr: {addr}\n  secret: drydock-e2e-test-secret\n",
            root.display()
        );
        if let Some(d) = debug {
            config.push_str(&format!(
                "  debug:\n    addr: {d}\n    prometheus:\n      enabled: true\n      path: /metrics\n"
            ));
        }
        let cfg = dir.path().join("config.yml");
        std::fs::write(&cfg, config).expect("write docker-registry config");
        (dir, cfg)
    }

    /// Starts it on a free port (retrying with another port when the one picked was
    /// taken in the meantime) and waits until it listens.
    pub async fn start(root: &Path) -> Distribution {
        Distribution::start_with(root, false).await
    }

    /// [`Distribution::start`], with Prometheus metrics on a debug listener of its own
    /// (`debug`) when `metrics`.
    pub async fn start_with(root: &Path, metrics: bool) -> Distribution {
        require("docker-registry");
        let mut attempts = Vec::new();
        for _ in 0..5 {
            let host = format!("127.0.0.1:{}", free_port());
            let debug = metrics.then(|| format!("127.0.0.1:{}", free_port()));
            let (dir, cfg) = Distribution::write_config_with(root, &host, debug.as_deref());
            let cmd = Cmd::new("docker-registry").arg("serve").arg(&cfg);
            let mut daemon = Daemon::spawn("docker-registry", &cmd, &dir.path().join("log"));
            daemon.grace = Duration::from_secs(10);
            let line = format!("listening on {host}");
            match wait_ready(&mut daemon, &line, &host, Duration::from_secs(30)).await {
                Readiness::Ready => {
                    return Distribution {
                        daemon,
                        host,
                        debug,
                        _dir: dir,
                    };
                }
                Readiness::Exited(log) if log.contains("address already in use") => {
                    attempts.push(log);
                }
                Readiness::Exited(log) => panic!("docker-registry serve failed: {log}"),
            }
        }
        panic!(
            "docker-registry found no free port:\n{}",
            attempts.join("\n")
        );
    }

    /// Stops it (SIGTERM), waiting until it has exited.
    pub fn stop(mut self) {
        self.daemon.stop();
    }
}

// ---------------------------------------------------------------------------------
// A byte-counting TCP proxy
// ---------------------------------------------------------------------------------

/// A transparent loopback TCP proxy in front of a registry that records every byte the
/// clients send (requests, bodies), so a test can tell what a client uploaded.
pub struct TapProxy {
    pub addr: SocketAddr,
    sent: Arc<Mutex<Vec<u8>>>,
    task: tokio::task::JoinHandle<()>,
}

impl TapProxy {
    pub async fn start(upstream: SocketAddr) -> TapProxy {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind proxy");
        let addr = listener.local_addr().expect("proxy addr");
        let sent = Arc::new(Mutex::new(Vec::new()));
        let sent2 = sent.clone();
        let task = tokio::spawn(async move {
            loop {
                let Ok((client, _)) = listener.accept().await else {
                    return;
                };
                let sent = sent2.clone();
                tokio::spawn(async move {
                    use tokio::io::{AsyncReadExt, AsyncWriteExt};
                    let Ok(server) = tokio::net::TcpStream::connect(upstream).await else {
                        return;
                    };
                    let (mut cr, mut cw) = client.into_split();
                    let (mut sr, mut sw) = server.into_split();
                    let up = async {
                        let mut buf = vec![0u8; 64 * 1024];
                        loop {
                            let n = match cr.read(&mut buf).await {
                                Ok(0) | Err(_) => break,
                                Ok(n) => n,
                            };
                            sent.lock().unwrap().extend_from_slice(&buf[..n]);
                            if sw.write_all(&buf[..n]).await.is_err() {
                                break;
                            }
                        }
                        let _ = sw.shutdown().await;
                    };
                    let down = async {
                        let _ = tokio::io::copy(&mut sr, &mut cw).await;
                        let _ = cw.shutdown().await;
                    };
                    tokio::join!(up, down);
                });
            }
        });
        TapProxy { addr, sent, task }
    }

    /// `127.0.0.1:PORT` of the proxy.
    pub fn host(&self) -> String {
        self.addr.to_string()
    }

    /// Forgets what was recorded so far.
    pub fn reset(&self) {
        self.sent.lock().unwrap().clear();
    }

    /// Everything clients sent since the last reset.
    pub fn sent(&self) -> Vec<u8> {
        self.sent.lock().unwrap().clone()
    }

    /// The request lines (`METHOD /path HTTP/1.1`) clients sent since the last reset.
    pub fn request_lines(&self) -> Vec<String> {
        let sent = self.sent();
        let text = String::from_utf8_lossy(&sent);
        text.split("\r\n")
            .filter(|l| {
                ["GET ", "HEAD ", "POST ", "PUT ", "PATCH ", "DELETE "]
                    .iter()
                    .any(|m| l.starts_with(m))
                    && l.ends_with(" HTTP/1.1")
            })
            .map(str::to_owned)
            .collect()
    }
}

impl Drop for TapProxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}

// ---------------------------------------------------------------------------------
// Tar and gzip
// ---------------------------------------------------------------------------------

/// A ustar archive of regular files (`path`, `content`), mode 0644, mtime 0.
pub fn tar_archive(files: &[(&str, &[u8])]) -> Vec<u8> {
    let mut out = Vec::new();
    for (name, data) in files {
        assert!(name.len() < 100, "tar member name too long: {name}");
        let mut h = [0u8; 512];
        h[..name.len()].copy_from_slice(name.as_bytes());
        let octal = |h: &mut [u8; 512], at: usize, width: usize, v: u64| {
            let s = format!("{v:0w$o}\0", w = width - 1);
            h[at..at + width].copy_from_slice(s.as_bytes());
        };
        octal(&mut h, 100, 8, 0o644);
        octal(&mut h, 108, 8, 0);
        octal(&mut h, 116, 8, 0);
        octal(&mut h, 124, 12, data.len() as u64);
        octal(&mut h, 136, 12, 0);
        h[148..156].copy_from_slice(b"        ");
        h[156] = b'0';
        h[257..263].copy_from_slice(b"ustar\0");
        h[263..265].copy_from_slice(b"00");
        h[265..269].copy_from_slice(b"root");
        h[297..301].copy_from_slice(b"root");
        let sum: u64 = h.iter().map(|&b| u64::from(b)).sum();
        let s = format!("{sum:06o}\0 ");
        h[148..156].copy_from_slice(s.as_bytes());
        out.extend_from_slice(&h);
        out.extend_from_slice(data);
        out.resize(out.len().div_ceil(512) * 512, 0);
    }
    out.resize(out.len() + 1024, 0);
    out
}

/// The regular files of a tar archive (ustar/GNU/pax headers; pax records skipped).
pub fn untar(data: &[u8]) -> Vec<(String, Vec<u8>)> {
    let mut files = Vec::new();
    let mut at = 0;
    let field = |h: &[u8], a: usize, n: usize| -> String {
        let s = &h[a..a + n];
        let end = s.iter().position(|&b| b == 0).unwrap_or(n);
        String::from_utf8_lossy(&s[..end]).trim().to_owned()
    };
    while at + 512 <= data.len() {
        let h = &data[at..at + 512];
        if h.iter().all(|&b| b == 0) {
            break;
        }
        let size = u64::from_str_radix(&field(h, 124, 12), 8).expect("tar size field") as usize;
        let mut name = field(h, 0, 100);
        let prefix = field(h, 345, 155);
        if &h[257..262] == b"ustar" && !prefix.is_empty() {
            name = format!("{prefix}/{name}");
        }
        let body = &data[at + 512..at + 512 + size];
        if matches!(h[156], b'0' | 0) {
            files.push((name.trim_start_matches("./").to_owned(), body.to_vec()));
        }
        at += 512 + size.div_ceil(512) * 512;
    }
    files
}

/// gzip (`gzip -n`, so no name or time is stored and the output is reproducible).
pub fn gzip(data: &[u8]) -> Vec<u8> {
    Cmd::new("gzip")
        .args(["-n", "-c", "-6"])
        .stdin(data.to_vec())
        .run_sync()
        .stdout
}

/// Deterministic pseudo-random (incompressible) bytes.
pub fn noise(len: usize, seed: u64) -> Vec<u8> {
    conformance::random_bytes(len, seed)
}

// ---------------------------------------------------------------------------------
// OCI image layouts
// ---------------------------------------------------------------------------------

pub const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
pub const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
pub const OCI_CONFIG: &str = "application/vnd.oci.image.config.v1+json";
pub const OCI_LAYER_TAR: &str = "application/vnd.oci.image.layer.v1.tar";
pub const OCI_LAYER_GZIP: &str = "application/vnd.oci.image.layer.v1.tar+gzip";

/// A content descriptor.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Desc {
    pub media_type: String,
    pub digest: String,
    pub size: usize,
    pub platform: Option<(String, String)>,
}

impl Desc {
    pub fn json(&self) -> Value {
        let mut v = json!({
            "mediaType": self.media_type,
            "digest": self.digest,
            "size": self.size,
        });
        if let Some((os, arch)) = &self.platform {
            v["platform"] = json!({"architecture": arch, "os": os});
        }
        v
    }
}

/// One layer of an image to build: files, and whether the tar is gzipped.
pub struct LayerSpec {
    pub files: Vec<(String, Vec<u8>)>,
    pub gzip: bool,
}

impl LayerSpec {
    pub fn new(gzip: bool, files: &[(&str, &[u8])]) -> LayerSpec {
        LayerSpec {
            files: files
                .iter()
                .map(|(n, d)| ((*n).to_owned(), d.to_vec()))
                .collect(),
            gzip,
        }
    }
}

/// An OCI image layout being written under `dir`.
pub struct Layout {
    pub dir: PathBuf,
    refs: Vec<(Desc, String)>,
}

impl Layout {
    /// Creates `dir/oci-layout` and `dir/blobs/sha256/`.
    pub fn create(dir: &Path) -> Layout {
        std::fs::create_dir_all(dir.join("blobs/sha256")).expect("create layout");
        std::fs::write(dir.join("oci-layout"), br#"{"imageLayoutVersion":"1.0.0"}"#)
            .expect("write oci-layout");
        let layout = Layout {
            dir: dir.to_owned(),
            refs: Vec::new(),
        };
        layout.write_index();
        layout
    }

    /// Stores a blob; returns its descriptor.
    pub fn blob(&self, media_type: &str, data: &[u8]) -> Desc {
        let digest = sha256(data);
        let path = blob_path(&self.dir, &digest);
        std::fs::write(&path, data).expect("write blob");
        Desc {
            media_type: media_type.to_owned(),
            digest,
            size: data.len(),
            platform: None,
        }
    }

    /// Builds an image: each layer a real tar (gzipped or not), a config naming their
    /// diff IDs, and a manifest; returns the manifest's descriptor (with its platform).
    pub fn image(&self, os: &str, arch: &str, layers: &[LayerSpec]) -> Desc {
        let mut descs = Vec::new();
        let mut diff_ids = Vec::new();
        for l in layers {
            let files: Vec<(&str, &[u8])> = l
                .files
                .iter()
                .map(|(n, d)| (n.as_str(), d.as_slice()))
                .collect();
            let tar = tar_archive(&files);
            diff_ids.push(sha256(&tar));
            descs.push(if l.gzip {
                self.blob(OCI_LAYER_GZIP, &gzip(&tar))
            } else {
                self.blob(OCI_LAYER_TAR, &tar)
            });
        }
        let config = json!({
            "architecture": arch,
            "os": os,
            "config": {"Cmd": ["/bin/true"]},
            "rootfs": {"type": "layers", "diff_ids": diff_ids},
            "history": layers.iter().map(|_| json!({"created_by": "drydock e2e"})).collect::<Vec<_>>(),
        });
        let config = self.blob(OCI_CONFIG, config.to_string().as_bytes());
        let manifest = json!({
            "schemaVersion": 2,
            "mediaType": OCI_MANIFEST,
            "config": config.json(),
            "layers": descs.iter().map(Desc::json).collect::<Vec<_>>(),
        });
        let mut d = self.blob(OCI_MANIFEST, manifest.to_string().as_bytes());
        d.platform = Some((os.to_owned(), arch.to_owned()));
        d
    }

    /// Builds an image index of `manifests` (their platforms included).
    pub fn index(&self, manifests: &[Desc]) -> Desc {
        let index = json!({
            "schemaVersion": 2,
            "mediaType": OCI_INDEX,
            "manifests": manifests.iter().map(Desc::json).collect::<Vec<_>>(),
        });
        self.blob(OCI_INDEX, index.to_string().as_bytes())
    }

    /// Names `desc` `tag` in `index.json`.
    pub fn tag(&mut self, desc: &Desc, tag: &str) {
        let mut d = desc.clone();
        d.platform = None;
        self.refs.push((d, tag.to_owned()));
        self.write_index();
    }

    fn write_index(&self) {
        let manifests: Vec<Value> = self
            .refs
            .iter()
            .map(|(d, t)| {
                let mut v = d.json();
                v["annotations"] = json!({"org.opencontainers.image.ref.name": t});
                v
            })
            .collect();
        let index = json!({"schemaVersion": 2, "manifests": manifests});
        std::fs::write(self.dir.join("index.json"), index.to_string()).expect("write index.json");
    }
}

/// `dir/blobs/sha256/<hex>`.
pub fn blob_path(dir: &Path, digest: &str) -> PathBuf {
    let hex = digest.strip_prefix("sha256:").expect("sha256 digest");
    dir.join("blobs/sha256").join(hex)
}

/// A blob's bytes in an OCI layout, checked against its digest.
pub fn read_blob(dir: &Path, digest: &str) -> Vec<u8> {
    let p = blob_path(dir, digest);
    let data = std::fs::read(&p)
        .unwrap_or_else(|e| panic!("blob {digest} missing from {}: {e}", dir.display()));
    assert_eq!(sha256(&data), digest, "blob {} is corrupt", p.display());
    data
}

/// The descriptor `index.json` of a layout names `tag`.
pub fn layout_ref(dir: &Path, tag: &str) -> Desc {
    let text = std::fs::read_to_string(dir.join("index.json"))
        .unwrap_or_else(|e| panic!("no index.json in {}: {e}", dir.display()));
    let v: Value = serde_json::from_str(&text).expect("index.json is JSON");
    let m = v["manifests"]
        .as_array()
        .expect("index.json manifests")
        .iter()
        .find(|m| m["annotations"]["org.opencontainers.image.ref.name"] == tag)
        .unwrap_or_else(|| {
            panic!(
                "index.json of {} does not name {tag}: {text}",
                dir.display()
            )
        });
    Desc {
        media_type: m["mediaType"].as_str().unwrap_or_default().to_owned(),
        digest: m["digest"].as_str().expect("digest").to_owned(),
        size: m["size"].as_u64().expect("size") as usize,
        platform: None,
    }
}

/// Every digest reachable from `digest` in a layout (itself, children, configs, layers).
pub fn closure(dir: &Path, digest: &str) -> BTreeSet<String> {
    let mut seen = BTreeSet::new();
    let mut todo = vec![digest.to_owned()];
    while let Some(d) = todo.pop() {
        if !seen.insert(d.clone()) {
            continue;
        }
        let data = read_blob(dir, &d);
        let Ok(v) = serde_json::from_slice::<Value>(&data) else {
            continue;
        };
        if v.get("schemaVersion").is_none() {
            continue; // a config
        }
        for key in ["manifests", "layers"] {
            if let Some(a) = v[key].as_array() {
                todo.extend(
                    a.iter()
                        .filter_map(|m| m["digest"].as_str().map(str::to_owned)),
                );
            }
        }
        if let Some(c) = v["config"]["digest"].as_str() {
            todo.push(c.to_owned());
        }
    }
    seen
}

/// Asserts that everything reachable from `tag` in layout `a` is byte-for-byte in `b`
/// under the same tag and digest.
pub fn assert_same_content(a: &Path, b: &Path, tag: &str) {
    let ra = layout_ref(a, tag);
    let rb = layout_ref(b, tag);
    assert_eq!(
        ra.digest, rb.digest,
        "{tag}: manifest digest changed on the round trip"
    );
    let ca = closure(a, &ra.digest);
    let cb = closure(b, &rb.digest);
    assert_eq!(ca, cb, "{tag}: the set of blobs changed on the round trip");
    for d in &ca {
        assert!(
            read_blob(a, d) == read_blob(b, d),
            "{tag}: blob {d} differs after the round trip"
        );
    }
}

// ---------------------------------------------------------------------------------
// Skopeo
// ---------------------------------------------------------------------------------

/// `skopeo --insecure-policy ARGS` (the policy only concerns signatures; the registry
/// is plain HTTP on loopback, so every docker:// reference gets `--*tls-verify=false`).
pub fn skopeo<I, S>(args: I) -> Cmd
where
    I: IntoIterator<Item = S>,
    S: AsRef<OsStr>,
{
    Cmd::new("skopeo").arg("--insecure-policy").args(args)
}

/// podman with its own storage, credentials, locks and temporary files in a temporary
/// directory (`--root`, `--runroot`, `--tmpdir`, `REGISTRY_AUTH_FILE`, file locks under
/// its tmpdir), the `vfs` driver (no overlay mounts), cgroupfs and file events (no
/// systemd or journald). File locks, because podman's default shared-memory lock
/// (`/dev/shm/libpod_lock`) is one per machine and two first runs at once race to create
/// it ("failed to create 2048 locks in /libpod_lock: file exists").
pub struct Podman {
    pub dir: tempfile::TempDir,
}

impl Podman {
    pub fn new() -> Podman {
        require("podman");
        let dir = tempdir();
        // Its own credentials file, so nothing of the user's is read or written.
        std::fs::write(dir.path().join("auth.json"), "{}").expect("write auth.json");
        std::fs::write(
            dir.path().join("containers.conf"),
            "[engine]\nlock_type = \"file\"\n",
        )
        .expect("write containers.conf");
        Podman { dir }
    }

    pub fn cmd(&self) -> Cmd {
        let d = self.dir.path();
        Cmd::new("podman")
            .arg("--root")
            .arg(d.join("root"))
            .arg("--runroot")
            .arg(d.join("run"))
            .arg("--tmpdir")
            .arg(d.join("tmp"))
            .args([
                "--storage-driver",
                "vfs",
                "--cgroup-manager",
                "cgroupfs",
                "--events-backend",
                "file",
            ])
            .env("REGISTRY_AUTH_FILE", d.join("auth.json"))
            .env("CONTAINERS_CONF", d.join("containers.conf"))
    }
}

/// A private `dockerd` (its own socket, data and exec roots in a temporary directory; no
/// iptables, no bridge, the `vfs` storage driver), stopped by its guard even when a test
/// panics; `cmd()` is the docker CLI talking to it, with its own `DOCKER_CONFIG`.
pub struct Docker {
    // Field order matters: the daemon stops before its directory is removed.
    pub daemon: Daemon,
    pub sock: PathBuf,
    pub dir: tempfile::TempDir,
}

impl Docker {
    pub async fn start() -> Docker {
        require("dockerd");
        require("docker");
        let dir = tempdir();
        let d = dir.path();
        let sock = d.join("docker.sock");
        let exec = d.join("exec");
        let cmd = Cmd::new("dockerd")
            .arg("-H")
            .arg(format!("unix://{}", sock.display()))
            .arg("--data-root")
            .arg(d.join("data"))
            .arg("--exec-root")
            .arg(&exec)
            .arg("--pidfile")
            .arg(d.join("pid"))
            .args([
                "--iptables=false",
                "--ip6tables=false",
                "--bridge=none",
                "--storage-driver=vfs",
                "--log-level=warn",
            ]);
        let mut daemon = Daemon::spawn("dockerd", &cmd, &d.join("dockerd.log"));
        // dockerd starts its own containerd; stop it too if dockerd could not.
        daemon.also_kill_pidfile(
            exec.join("containerd/containerd.pid"),
            &exec.display().to_string(),
        );
        let mut docker = Docker { daemon, sock, dir };
        docker.wait_ready().await;
        docker
    }

    async fn wait_ready(&mut self) {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let out = self.cmd().arg("version").try_run().await;
            if out.success() {
                return;
            }
            if Instant::now() >= deadline {
                panic!(
                    "dockerd did not answer on {} within 60s: {}\n--- dockerd log ---\n{}",
                    self.sock.display(),
                    out.stderr(),
                    self.daemon.log_tail()
                );
            }
            self.daemon.assert_running();
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    pub fn cmd(&self) -> Cmd {
        Cmd::new("docker")
            .env("DOCKER_HOST", format!("unix://{}", self.sock.display()))
            .env("DOCKER_BUILDKIT", "0")
            .env("DOCKER_CONFIG", self.dir.path().join("client"))
    }

    pub async fn run<const N: usize>(&self, args: [&str; N]) -> Out {
        let out = self.cmd().args(args).try_run().await;
        if !out.success() {
            panic!(
                "`docker {}` failed: {}\n--- stdout ---\n{}\n--- stderr ---\n{}\n--- dockerd log ---\n{}",
                args.join(" "),
                out.status,
                out.stdout(),
                out.stderr(),
                self.daemon.log_tail()
            );
        }
        out
    }

    /// `docker push`; returns the manifest digest it reports, and its output.
    pub async fn push(&self, image: &str) -> (String, String) {
        let out = self.run(["push", image]).await.stdout();
        let digest = out
            .split_whitespace()
            .skip_while(|w| *w != "digest:")
            .nth(1)
            .unwrap_or_else(|| panic!("no digest in the output of docker push:\n{out}"))
            .to_owned();
        (digest, out)
    }

    /// Removes `image` locally and checks it is gone.
    pub async fn forget(&self, image: &str) {
        self.run(["rmi", image]).await;
        self.cmd().args(["image", "inspect", image]).fail().await;
    }
}

// ---------------------------------------------------------------------------------
// The standard fixture
// ---------------------------------------------------------------------------------

/// An OCI layout with a 3-layer image tagged `v1` and a 2-platform index tagged `multi`.
pub struct Fixture {
    pub dir: tempfile::TempDir,
    pub image: Desc,
    pub index: Desc,
    pub amd64: Desc,
    pub arm64: Desc,
}

/// Size of each of the image's random (incompressible) layer payloads.
pub const LAYER_PAYLOAD: usize = 96 * 1024;

pub fn fixture(seed: u64) -> Fixture {
    let dir = tempdir();
    let mut l = Layout::create(dir.path());
    let tool = noise(LAYER_PAYLOAD, seed);
    let data = noise(LAYER_PAYLOAD, seed + 1);
    let more = noise(LAYER_PAYLOAD, seed + 2);
    let hello = format!("hello from layer one ({seed})\n");
    let image = l.image(
        "linux",
        "amd64",
        &[
            LayerSpec::new(
                true,
                &[("etc/hello.txt", hello.as_bytes()), ("bin/tool", &tool)],
            ),
            LayerSpec::new(false, &[("data/blob.bin", &data)]),
            LayerSpec::new(true, &[("data/more.bin", &more), ("README", b"third\n")]),
        ],
    );
    l.tag(&image, "v1");
    let amd64 = l.image(
        "linux",
        "amd64",
        &[LayerSpec::new(
            true,
            &[("arch.txt", format!("amd64 {seed}\n").as_bytes())],
        )],
    );
    let arm64 = l.image(
        "linux",
        "arm64",
        &[LayerSpec::new(
            true,
            &[("arch.txt", format!("arm64 {seed}\n").as_bytes())],
        )],
    );
    let index = l.index(&[amd64.clone(), arm64.clone()]);
    l.tag(&index, "multi");
    Fixture {
        dir,
        image,
        index,
        amd64,
        arm64,
    }
}

pub fn oci(dir: &std::path::Path, tag: &str) -> String {
    format!("oci:{}:{tag}", dir.display())
}

/// Pushes the fixture's `v1` image and `multi` index to `host/repo`. Every copy uses
/// `--preserve-digests`: without it skopeo gzips the plain-tar layer on the way to a
/// registry, which changes the manifest (a client choice, not a registry matter).
pub async fn push_fixture(fx: &Fixture, host: &str, repo: &str) {
    skopeo(["copy", "--preserve-digests", "--dest-tls-verify=false"])
        .arg(oci(fx.dir.path(), "v1"))
        .arg(format!("docker://{host}/{repo}:v1"))
        .run()
        .await;
    skopeo([
        "copy",
        "--preserve-digests",
        "--all",
        "--dest-tls-verify=false",
    ])
    .arg(oci(fx.dir.path(), "multi"))
    .arg(format!("docker://{host}/{repo}:multi"))
    .run()
    .await;
}

pub async fn list_tags(host: &str, repo: &str) -> Vec<String> {
    let out = skopeo(["list-tags", "--tls-verify=false"])
        .arg(format!("docker://{host}/{repo}"))
        .run()
        .await;
    let v: Value = serde_json::from_slice(&out.stdout).expect("list-tags prints JSON");
    let mut tags: Vec<String> = v["Tags"]
        .as_array()
        .expect("Tags")
        .iter()
        .map(|t| t.as_str().expect("tag").to_owned())
        .collect();
    tags.sort();
    tags
}

/// Pulls `docker://host/repo:tag` (with `--all` for an index) into a fresh layout,
/// naming it `want_tag` there, and asserts it is byte for byte what `want_tag` names
/// in the layout `want`.
pub async fn assert_pulls_back(host: &str, repo: &str, tag: &str, want: &Path, want_tag: &str) {
    let is_index = layout_ref(want, want_tag).media_type == OCI_INDEX;
    let out = tempdir();
    let mut cmd = skopeo(["copy", "--preserve-digests", "--src-tls-verify=false"]);
    if is_index {
        cmd = cmd.arg("--all");
    }
    cmd.arg(format!("docker://{host}/{repo}:{tag}"))
        .arg(oci(out.path(), want_tag))
        .run()
        .await;
    assert_same_content(want, out.path(), want_tag);
}

/// The registry's storage pool: `ROOT/docker/registry/v2/blobs/sha256/*/*/data`.
pub fn pool_blobs(root: &Path) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    let base = root.join("docker/registry/v2/blobs/sha256");
    for prefix in std::fs::read_dir(&base).into_iter().flatten().flatten() {
        for b in std::fs::read_dir(prefix.path())
            .into_iter()
            .flatten()
            .flatten()
        {
            if b.path().join("data").is_file() {
                out.insert(format!("sha256:{}", b.file_name().to_string_lossy()));
            }
        }
    }
    out
}

/// Whether `repo` links layer `digest`: `ROOT/.../repositories/REPO/_layers/sha256/HEX/link`.
pub fn has_layer_link(root: &Path, repo: &str, digest: &str) -> bool {
    let hex = digest.strip_prefix("sha256:").expect("sha256 digest");
    let p = root
        .join("docker/registry/v2/repositories")
        .join(repo)
        .join("_layers/sha256")
        .join(hex)
        .join("link");
    std::fs::read_to_string(p).is_ok_and(|s| s.trim() == digest)
}

/// A counter for unique names within a test binary.
pub fn unique(prefix: &str) -> String {
    static N: AtomicU64 = AtomicU64::new(0);
    format!(
        "{prefix}{}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    )
}
