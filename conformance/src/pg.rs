//! The real PostgreSQL 15 the replica tests run against (`scripts/pg.sh`, started by
//! `scripts/test.sh`; its address in `DRYDOCK_TEST_PG_*`): a fresh database per test.
//! Without that environment these helpers panic, so the tests fail: never skipped.

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
    DatabaseConfig {
        host: var("DRYDOCK_TEST_PG_HOST"),
        port: var("DRYDOCK_TEST_PG_PORT")
            .parse()
            .expect("DRYDOCK_TEST_PG_PORT"),
        user: var("DRYDOCK_TEST_PG_USER"),
        dbname: dbname.into(),
        sslmode: "disable".into(),
        ..DatabaseConfig::default()
    }
}

/// A client on `dbname`, its connection driven in the background.
pub async fn client(dbname: &str) -> tokio_postgres::Client {
    let (c, conn) = config(dbname)
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
