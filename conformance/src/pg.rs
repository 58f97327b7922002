//! The real PostgreSQL 15 the replica tests run against (`scripts/pg.sh`, started by
//! `scripts/test.sh`; its address in `DRYDOCK_TEST_PG_*`): a fresh database per test.
//! Without that environment these helpers panic, so the tests fail: never skipped.
//! A test that kills PostgreSQL starts a [`Cluster`] of its own instead.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use registry::coordination::{DatabaseConfig, Postgres};
use registry::liveness::Liveness;
use tokio_postgres::NoTls;

fn var(k: &str) -> String {
    std::env::var(k).unwrap_or_else(|_| {
        panic!(
            "{k} is not set: the PostgreSQL tests need the server scripts/test.sh starts \
             (or run `eval \"$(scripts/pg.sh env \"$(scripts/pg.sh start)\")\"` first)"
        )
    })
}

/// The test server's settings for database `dbname`.
pub fn config(dbname: &str) -> DatabaseConfig {
    config_at(
        &var("DRYDOCK_TEST_PG_HOST"),
        var("DRYDOCK_TEST_PG_PORT")
            .parse()
            .expect("DRYDOCK_TEST_PG_PORT"),
        &var("DRYDOCK_TEST_PG_USER"),
        dbname,
    )
}

fn config_at(host: &str, port: u16, user: &str, dbname: &str) -> DatabaseConfig {
    DatabaseConfig {
        host: host.into(),
        port,
        user: user.into(),
        dbname: dbname.into(),
        sslmode: "disable".into(),
        ..DatabaseConfig::default()
    }
}

/// A client on `dbname`, its connection driven in the background.
pub async fn client(dbname: &str) -> tokio_postgres::Client {
    connect(&config(dbname)).await
}

async fn connect(cfg: &DatabaseConfig) -> tokio_postgres::Client {
    let (c, conn) = cfg
        .pg_config()
        .connect(NoTls)
        .await
        .expect("connect to the test PostgreSQL");
    tokio::spawn(conn);
    c
}

/// A fresh, empty database for one test.
pub async fn fresh_db() -> DatabaseConfig {
    static N: AtomicU64 = AtomicU64::new(0);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.subsec_nanos());
    let name = format!(
        "t_{}_{}_{nanos}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    );
    client("postgres")
        .await
        .batch_execute(&format!("CREATE DATABASE {name}"))
        .await
        .expect("create a test database");
    config(&name)
}

/// Drops a test database, ending every connection still on it (servers a test has
/// stopped may keep their pools until the runtime ends).
pub async fn drop_db(cfg: &DatabaseConfig) {
    client("postgres")
        .await
        .batch_execute(&format!(
            "DROP DATABASE IF EXISTS {} WITH (FORCE)",
            cfg.dbname
        ))
        .await
        .expect("drop a test database");
}

/// `n` replicas on one fresh database.
pub async fn replicas(n: usize, ttl: Duration) -> (DatabaseConfig, Vec<Postgres>) {
    let cfg = fresh_db().await;
    let mut out = Vec::new();
    for _ in 0..n {
        out.push(
            Postgres::connect(&cfg, ttl)
                .await
                .expect("a replica connects"),
        );
    }
    (cfg, out)
}

/// `n` replicas on one fresh database, as the protocols servers run with.
pub async fn livenesses(n: usize, ttl: Duration) -> (DatabaseConfig, Vec<Arc<dyn Liveness>>) {
    let (cfg, r) = replicas(n, ttl).await;
    let l = r
        .into_iter()
        .map(|p| Arc::new(p) as Arc<dyn Liveness>)
        .collect();
    (cfg, l)
}

/// Two servers on one fresh database and one storage root (the filesystem standing in
/// for the bucket), on the test configuration changed by `adjust`: replicas. The
/// database, to drop at the end.
pub async fn two_servers(
    adjust: impl FnOnce(&mut registry::Config),
) -> (crate::TestServer, crate::TestServer, DatabaseConfig) {
    let root = tempfile::tempdir().expect("temp root");
    let mut config = crate::test_config(root.path());
    adjust(&mut config);
    let (db, mut l) = livenesses(2, config.gc.pending_ttl).await;
    let (second, first) = (l.remove(1), l.remove(0));
    let a = crate::TestServer::start_coordinated(root, config, Some(first)).await;
    let b = a.start_replica(second).await;
    (a, b, db)
}

/// Waits (a lock wait in the database, no polling) until no session holds the two-key
/// advisory lock `key`: the backend that held it has ended.
pub async fn wait_unlocked(db: &tokio_postgres::Client, key: (i32, i32)) {
    db.execute("SELECT pg_advisory_lock($1, $2)", &[&key.0, &key.1])
        .await
        .unwrap();
    db.execute("SELECT pg_advisory_unlock($1, $2)", &[&key.0, &key.1])
        .await
        .unwrap();
}

/// Ends the backend that holds the two-key advisory lock `key` in this database (the
/// lease's holder), as a crash would; returns how many. Not by application name: a
/// replica's failed attempts close their connections asynchronously, so for a moment
/// they are still listed under the same name.
pub async fn kill_holder(db: &tokio_postgres::Client, key: (i32, i32)) -> i64 {
    db.query_one(
        "SELECT count(pg_terminate_backend(l.pid)) FROM pg_locks l
         JOIN pg_database d ON d.oid = l.database AND d.datname = current_database()
         WHERE l.locktype = 'advisory' AND l.granted
           AND l.classid = $1::int::oid AND l.objid = $2::int::oid AND l.objsubid = 2",
        &[&key.0, &key.1],
    )
    .await
    .unwrap()
    .get(0)
}

/// A PostgreSQL cluster of the test's own (`scripts/pg.sh start`, with commits that
/// survive a crash of the server process), for tests that kill it: the shared one of
/// `scripts/test.sh` serves other tests at the same time. Stopped and removed on drop.
/// Every step fails the test loudly when the script fails.
pub struct Cluster {
    dir: std::path::PathBuf,
    pub port: u16,
}

fn pg_sh(args: &[&str]) -> String {
    let script = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../scripts/pg.sh");
    let out = std::process::Command::new("bash")
        .arg(&script)
        .args(args)
        .env("PG_SYNCHRONOUS_COMMIT", "on")
        .stderr(std::process::Stdio::inherit())
        .output()
        .unwrap_or_else(|e| panic!("run {}: {e}", script.display()));
    assert!(
        out.status.success(),
        "scripts/pg.sh {} failed ({}): see its messages above",
        args.join(" "),
        out.status
    );
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}

impl Cluster {
    /// Starts a fresh cluster (installing PostgreSQL 15 if missing).
    pub fn start() -> Cluster {
        let dir = std::path::PathBuf::from(pg_sh(&["start"]));
        let port = std::fs::read_to_string(dir.join("port"))
            .ok()
            .and_then(|p| p.trim().parse().ok())
            .unwrap_or_else(|| panic!("no port in {}", dir.display()));
        Cluster { dir, port }
    }

    /// A fresh database on this cluster.
    pub async fn fresh_db(&self, name: &str) -> DatabaseConfig {
        connect(&config_at("127.0.0.1", self.port, "drydock", "postgres"))
            .await
            .batch_execute(&format!("CREATE DATABASE {name}"))
            .await
            .expect("create a database on the test's own cluster");
        config_at("127.0.0.1", self.port, "drydock", name)
    }

    /// kill -9 of the postmaster; returns once it and its processes are gone.
    pub fn kill(&self) {
        pg_sh(&["kill", &self.dir.display().to_string()]);
    }

    /// Starts the killed server again on the same data and port.
    pub fn restart(&self) {
        pg_sh(&["restart", &self.dir.display().to_string()]);
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        let _ = std::process::Command::new("bash")
            .arg(std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../scripts/pg.sh"))
            .arg("stop")
            .arg(&self.dir)
            .status();
    }
}
