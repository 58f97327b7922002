//! TLS to PostgreSQL (`database.sslmode`), against the test server `scripts/pg.sh` starts:
//! it speaks TLS with a certificate from a private CA (in `DRYDOCK_TEST_PG_TLS`), and
//! lets the role `drydock_cert` in only with the client certificate that CA signed.

use std::path::PathBuf;
use std::time::Duration;

use conformance::auth::Ca;
use conformance::pg::{client, fresh_db};
use registry::Digest;
use registry::coordination::{DatabaseConfig, Postgres};
use registry::liveness::Liveness;

const HOUR: Duration = Duration::from_secs(3600);

fn tls_file(name: &str) -> String {
    let dir = std::env::var("DRYDOCK_TEST_PG_TLS")
        .expect("DRYDOCK_TEST_PG_TLS: the TLS files of scripts/pg.sh's server");
    PathBuf::from(dir).join(name).to_string_lossy().into_owned()
}

/// Whether the backend `pid` of `cfg`'s database talks TLS.
async fn over_tls(cfg: &DatabaseConfig, pid: i32) -> bool {
    client(&cfg.dbname)
        .await
        .query_one("SELECT ssl FROM pg_stat_ssl WHERE pid = $1", &[&pid])
        .await
        .unwrap()
        .get(0)
}

fn verified(mut cfg: DatabaseConfig, mode: &str) -> DatabaseConfig {
    cfg.sslmode = mode.into();
    cfg.sslrootcert = Some(tls_file("ca.pem"));
    cfg
}

async fn connect_error(cfg: &DatabaseConfig) -> String {
    match Postgres::connect(cfg, HOUR).await {
        Ok(_) => panic!("connected with sslmode {}", cfg.sslmode),
        Err(e) => e.to_string(),
    }
}

/// `verify-full` and `require` connect over TLS, every connection (the presence's, the
/// pool's that pins), after verifying the server's certificate against `sslrootcert`;
/// `disable` connects without it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_modes_connect_over_verified_tls() {
    let db = fresh_db().await;
    for mode in ["verify-full", "require", "verify-ca"] {
        let r = Postgres::connect(&verified(db.clone(), mode), HOUR)
            .await
            .unwrap_or_else(|e| panic!("sslmode {mode}: {e}"));
        assert!(over_tls(&db, r.presence_backend()).await, "{mode}");
        let pin = r.pin(vec![Digest::sha256(mode.as_bytes())]).await.unwrap();
        let pooled: Vec<bool> = client(&db.dbname)
            .await
            .query(
                "SELECT s.ssl FROM pg_stat_ssl s JOIN pg_stat_activity a USING (pid)
                 WHERE a.datname = current_database() AND a.application_name = 'drydock'
                   AND pid <> pg_backend_pid()",
                &[],
            )
            .await
            .unwrap()
            .iter()
            .map(|row| row.get(0))
            .collect();
        assert!(
            !pooled.is_empty() && pooled.iter().all(|t| *t),
            "{mode}: {pooled:?}"
        );
        pin.release().await;
    }
    let mut plain = db.clone();
    plain.sslmode = "disable".into();
    let r = Postgres::connect(&plain, HOUR).await.unwrap();
    assert!(!over_tls(&db, r.presence_backend()).await);
    conformance::pg::drop_db(&db).await;
}

/// A server whose certificate another CA signed is refused in every TLS mode, also in
/// `require` without `sslrootcert` (the system's roots do not know the test CA): no
/// mode connects to a server it cannot verify.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unverified_server_is_refused() {
    let db = fresh_db().await;
    let dir = tempfile::tempdir().unwrap();
    let other = Ca::new("another CA").write(&dir.path().join("other.pem"));
    for mode in ["verify-full", "require"] {
        let mut cfg = verified(db.clone(), mode);
        cfg.sslrootcert = Some(other.to_string_lossy().into_owned());
        let e = connect_error(&cfg).await;
        assert!(e.contains("certificate"), "{mode}: {e}");
    }
    let mut cfg = verified(db.clone(), "require");
    cfg.sslrootcert = None;
    let e = connect_error(&cfg).await;
    assert!(e.contains("certificate"), "{e}");
    conformance::pg::drop_db(&db).await;
}

/// `sslcert`/`sslkey` are presented: the role `drydock_cert` (certificate login only)
/// gets in with them and not without.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_certificate_logs_in() {
    let db = fresh_db().await;
    let mut cfg = verified(db.clone(), "verify-full");
    cfg.user = "drydock_cert".into();
    let e = connect_error(&cfg).await;
    assert!(e.contains("certificate"), "{e}");
    cfg.sslcert = Some(tls_file("client.pem"));
    cfg.sslkey = Some(tls_file("client.key"));
    let r = Postgres::connect(&cfg, HOUR)
        .await
        .unwrap_or_else(|e| panic!("with the client certificate: {e}"));
    assert!(over_tls(&db, r.presence_backend()).await);
    conformance::pg::drop_db(&db).await;
}
