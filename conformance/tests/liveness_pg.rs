//! The liveness suite on PostgreSQL, every party a replica of its own on one database,
//! plus what only replicas have: two replicas' steps interleaved at the points where a
//! claim and a pin (or a session's opening) must serialise, replicas and removers that
//! die, the GC lease, trigger coalescing and schema versions. Runs against the real
//! PostgreSQL 15 that `scripts/test.sh` starts (`scripts/pg.sh`), each test in a fresh
//! database (one that kills PostgreSQL starts a cluster of its own). Without its
//! environment these tests fail: they are never skipped.

#[path = "liveness/suite.rs"]
mod suite;

use std::sync::Arc;
use std::time::Duration;

use conformance::pg::{client, kill_holder, replicas, wait_unlocked};
use registry::Digest;
use registry::coordination::{Postgres, SCHEMA_VERSION};
use registry::hooks::Point;
use registry::liveness::{Liveness, Scheduler};

fn parties(n: usize, ttl: Duration) -> suite::Parties {
    Box::pin(async move {
        let (_, r) = replicas(n, ttl).await;
        r.into_iter()
            .map(|p| Arc::new(p) as Arc<dyn Liveness>)
            .collect()
    })
}

all_liveness_tests!(parties);

const HOUR: Duration = Duration::from_secs(3600);

fn d(s: &str) -> Digest {
    Digest::sha256(s.as_bytes())
}

/// Ends every backend of `dbname` with this application name, as a crash or a lost
/// network would; returns how many.
async fn kill(db: &tokio_postgres::Client, application_name: &str) -> i64 {
    db.query_one(
        "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity
         WHERE datname = current_database() AND application_name = $1",
        &[&application_name],
    )
    .await
    .unwrap()
    .get(0)
}

/// Replica A is paused inside its pin's transaction (pins recorded, not committed);
/// replica B's claim of the same digest must be refused (the digest's lock serialises
/// them): it cannot see the uncommitted pin, so without the lock it would claim and
/// delete what A is about to answer for.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_claim_meeting_a_pin_being_recorded_is_refused() {
    let (_, r) = replicas(2, HOUR).await;
    let (a, b) = (r[0].clone(), r[1].clone());
    let x = d("x");
    let rm = b.begin_removal().await.unwrap();
    let gate = a.hooks().arm(Point::PinRecorded, Some(x.clone()));
    let pin = tokio::spawn({
        let (a, x) = (a.clone(), x.clone());
        async move { a.pin(vec![x]).await.unwrap() }
    });
    gate.arrived().await;
    let c = rm.claim(&x).await.unwrap();
    gate.release();
    let g = pin.await.unwrap();
    assert!(c.is_none(), "claimed a digest whose pin was being recorded");
    assert!(rm.claim(&x).await.unwrap().is_none());
    g.release().await;
    rm.end().await;
}

/// While a pin is being recorded, no removal session can open (the ordering lock is
/// held shared by the pin, and a session takes it exclusive): a session opened then
/// would neither journal the uncommitted pin nor be seen by its journal insert. The
/// session opened once the pin is in journals it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_session_opens_while_a_pin_is_being_recorded() {
    let (cfg, r) = replicas(2, HOUR).await;
    let (a, b) = (r[0].clone(), r[1].clone());
    let x = d("x");
    let gate = a.hooks().arm(Point::PinRecorded, Some(x.clone()));
    let pin = tokio::spawn({
        let (a, x) = (a.clone(), x.clone());
        async move { a.pin(vec![x]).await.unwrap() }
    });
    gate.arrived().await;
    let mut db = client(&cfg.dbname).await;
    let (k1, k2) = Postgres::order_lock();
    let tx = db.transaction().await.unwrap();
    let free: bool = tx
        .query_one("SELECT pg_try_advisory_xact_lock($1, $2)", &[&k1, &k2])
        .await
        .unwrap()
        .get(0);
    tx.rollback().await.unwrap();
    let opening = tokio::spawn({
        let b = b.clone();
        async move { b.begin_removal().await.unwrap() }
    });
    gate.release();
    let g = pin.await.unwrap();
    let rm = opening.await.unwrap();
    assert!(
        !free,
        "a session could have opened while a pin was half recorded"
    );
    g.release().await;
    assert!(
        rm.claim(&x).await.unwrap().is_none(),
        "the pin recorded around the session's opening was not journaled"
    );
    rm.end().await;
}

/// A session ends (its row's deletion not yet committed) while replica A records a pin:
/// the pin's journal insert saw the session open, waits for the deletion and must then
/// skip the session, not fail (a foreign key error was a 500 on a push).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pin_recorded_while_a_session_ends_succeeds() {
    let (cfg, r) = replicas(2, HOUR).await;
    let (a, b) = (r[0].clone(), r[1].clone());
    let x = d("x");
    let rm = b.begin_removal().await.unwrap();
    let mut db = client(&cfg.dbname).await;
    let ending = db.transaction().await.unwrap();
    ending
        .execute("DELETE FROM drydock_removals", &[])
        .await
        .unwrap();
    let pin = tokio::spawn({
        let (a, x) = (a.clone(), x.clone());
        async move { a.pin(vec![x]).await }
    });
    // Until the pin's statement waits on the deleted row (a lock wait in the database).
    let watch = client(&cfg.dbname).await;
    loop {
        let waiting: i64 = watch
            .query_one(
                "SELECT count(*) FROM pg_stat_activity
                 WHERE datname = current_database() AND wait_event_type = 'Lock'",
                &[],
            )
            .await
            .unwrap()
            .get(0);
        if waiting > 0 {
            break;
        }
        tokio::task::yield_now().await;
    }
    ending.commit().await.unwrap();
    let g = pin
        .await
        .unwrap()
        .expect("a pin recorded while a session ended");
    g.release().await;
    drop(rm);
}

/// A replica that dies holding a pin (its presence connection ends) protects nothing
/// once the next removal session opens; before it dies, its pin is refused on every
/// replica. A replica found dead cannot pin any more, and the pins it held fail their
/// fencing check (its writes fail, never succeed unprotected); a live replica's pass.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_replicas_pins_are_released() {
    let (cfg, r) = replicas(2, HOUR).await;
    let (a, b) = (r[0].clone(), r[1].clone());
    let x = d("x");
    let g = a.pin(vec![x.clone()]).await.unwrap();
    let rm = b.begin_removal().await.unwrap();
    assert!(
        rm.claim(&x).await.unwrap().is_none(),
        "a live replica's pin claimed"
    );
    rm.end().await;
    let db = client(&cfg.dbname).await;
    let first = a.replica();
    let killed: bool = db
        .query_one("SELECT pg_terminate_backend($1)", &[&a.presence_backend()])
        .await
        .unwrap()
        .get(0);
    assert!(killed);
    wait_unlocked(&db, Postgres::presence_lock(first)).await;
    let rm = b.begin_removal().await.unwrap();
    let c = rm.claim(&x).await.unwrap();
    assert!(
        c.is_some(),
        "a dead replica's pin still protects its digest"
    );
    c.unwrap().release().await;
    rm.end().await;
    assert!(
        g.finish().await.is_err(),
        "a write whose pins were dropped passed the fencing check"
    );
    let live = b.pin(vec![d("z")]).await.unwrap();
    live.finish().await.expect("a live replica's pins hold");
    // The replica that lost its connection registers again, under a new row, and its
    // new pins protect again.
    tokio::time::timeout(Duration::from_secs(120), async {
        while a.replica() == first {
            tokio::task::yield_now().await;
        }
    })
    .await
    .expect("the replica did not register again");
    let again = a
        .pin(vec![d("y")])
        .await
        .expect("a pin after registering again");
    let rm = b.begin_removal().await.unwrap();
    assert!(
        rm.claim(&d("y")).await.unwrap().is_none(),
        "a pin after registering again did not protect"
    );
    rm.end().await;
    again.finish().await.expect("its fencing check");
}

/// A remover that dies holding a claim (its session's connection ends) releases it: the
/// writer waiting on the claim goes on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_removers_claims_end_with_it() {
    let (cfg, r) = replicas(2, HOUR).await;
    let (a, b) = (r[0].clone(), r[1].clone());
    let x = d("x");
    let rm = b.begin_removal().await.unwrap();
    let claim = rm.claim(&x).await.unwrap().unwrap();
    let gate = a.hooks().arm(Point::PinWaits, Some(x.clone()));
    let mut writer = tokio::spawn({
        let (a, x) = (a.clone(), x.clone());
        async move { a.pin(vec![x]).await.unwrap() }
    });
    tokio::select! {
        _ = gate.arrived() => {}
        _ = &mut writer => panic!("the pin returned while its digest was claimed"),
    }
    gate.release();
    let db = client(&cfg.dbname).await;
    assert_eq!(kill(&db, registry::coordination::REMOVAL).await, 1);
    let g = writer.await.unwrap();
    g.release().await;
    // The claim and the session are gone with the connection; dropping them is a no-op.
    drop(claim);
    drop(rm);
}

/// One replica schedules the collections; the role is lost when its holder dies, and a
/// dropped role is free again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_gc_scheduler_is_one_replica_and_lost_with_it() {
    let (cfg, r) = replicas(2, HOUR).await;
    let (a, b) = (r[0].clone(), r[1].clone());
    let db = client(&cfg.dbname).await;
    let held = a.gc_scheduler(false).await.unwrap().expect("a free role");
    assert!(
        b.gc_scheduler(false).await.unwrap().is_none(),
        "two schedulers at once"
    );
    assert!(
        a.gc_scheduler(false).await.unwrap().is_none(),
        "two schedulers at once"
    );
    assert_eq!(kill_holder(&db, Postgres::scheduler_lock()).await, 1);
    wait_unlocked(&db, Postgres::scheduler_lock()).await;
    let held_b = b
        .gc_scheduler(false)
        .await
        .unwrap()
        .expect("the dead holder's role");
    drop(held);
    drop(held_b);
    wait_unlocked(&db, Postgres::scheduler_lock()).await;
    assert!(
        a.gc_scheduler(false).await.unwrap().is_some(),
        "a dropped role stayed taken"
    );
}

/// Requests on any replica coalesce: those made before a cycle are served by it, those
/// made while it runs wait for the next one; a scheduler that never records its cycle
/// (it died) leaves them to the next scheduler.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gc_requests_coalesce_and_outlive_their_scheduler() {
    let (cfg, r) = replicas(2, HOUR).await;
    let (a, b) = (r[0].clone(), r[1].clone());
    let s = a.gc_scheduler(false).await.unwrap().unwrap();
    assert_eq!(s.pending().await.unwrap(), None, "a request out of nowhere");
    assert!(a.request_collection().await.unwrap());
    b.request_gc().await.unwrap();
    a.request_gc().await.unwrap();
    let upto = s.next_request().await.unwrap();
    assert_eq!(upto, 3);
    // A request while "the cycle" runs.
    b.request_gc().await.unwrap();
    s.served(upto).await.unwrap();
    assert_eq!(
        s.next_request().await.unwrap(),
        4,
        "the request made meanwhile"
    );
    s.served(4).await.unwrap();
    s.served(3).await.unwrap();
    assert_eq!(s.pending().await.unwrap(), None, "served went backwards");
    // The scheduler dies between taking a request and recording its cycle.
    b.request_gc().await.unwrap();
    assert_eq!(s.next_request().await.unwrap(), 5);
    let db = client(&cfg.dbname).await;
    assert_eq!(kill_holder(&db, Postgres::scheduler_lock()).await, 1);
    assert!(
        s.served(5).await.is_err(),
        "a dead scheduler recorded its cycle"
    );
    wait_unlocked(&db, Postgres::scheduler_lock()).await;
    let next = b.gc_scheduler(false).await.unwrap().expect("the free role");
    assert_eq!(
        next.pending().await.unwrap(),
        Some(5),
        "the dead scheduler's request was lost"
    );
}

/// A scheduler waiting for work is woken by a request made on another replica
/// (`NOTIFY`), and a lost role ends the wait with an error instead of hanging.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_on_another_replica_wakes_the_scheduler() {
    let (cfg, r) = replicas(2, HOUR).await;
    let (a, b) = (r[0].clone(), r[1].clone());
    let s = Arc::new(a.gc_scheduler(false).await.unwrap().unwrap());
    let waiting = tokio::spawn({
        let s = s.clone();
        async move { s.next_request().await }
    });
    b.request_gc().await.unwrap();
    let upto = waiting.await.unwrap().unwrap();
    s.served(upto).await.unwrap();
    let waiting = tokio::spawn({
        let s = s.clone();
        async move { s.next_request().await }
    });
    let db = client(&cfg.dbname).await;
    assert_eq!(kill_holder(&db, Postgres::scheduler_lock()).await, 1);
    assert!(
        waiting.await.unwrap().is_err(),
        "a lost role still waited for work"
    );
}

/// Migrations run once (a second replica finds the schema current), and a replica
/// refuses a schema newer than it knows, with one line naming the `database` section.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn schema_versions() {
    let (cfg, _r) = replicas(2, HOUR).await;
    let db = client(&cfg.dbname).await;
    let versions: Vec<i32> = db
        .query("SELECT version FROM drydock_schema ORDER BY version", &[])
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(versions, (1..=SCHEMA_VERSION).collect::<Vec<_>>());
    db.execute(
        "INSERT INTO drydock_schema (version) VALUES ($1)",
        &[&(SCHEMA_VERSION + 1)],
    )
    .await
    .unwrap();
    let err = match Postgres::connect(&cfg, HOUR).await {
        Ok(_) => panic!("started against a newer schema"),
        Err(e) => e.to_string(),
    };
    assert!(err.contains("database"), "{err}");
    assert!(err.contains("newer than this drydock knows"), "{err}");
    assert!(!err.contains('\n'), "not one line: {err}");
}

/// PostgreSQL crashes (kill -9 of its postmaster) and comes back on the same data, as in
/// the replica soak: a replica that stayed up must go on collecting and writing, also
/// after a replica that started anew has opened a removal session. Its presence lock
/// ends with the old server; it registers again (without that, its sessions fail on
/// `drydock_removals_replica_fkey`, and a new replica's session takes it for dead).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_that_stayed_up_collects_and_writes_after_postgresql_restarts() {
    let cluster = tokio::task::block_in_place(conformance::pg::Cluster::start);
    let cfg = cluster.fresh_db("after_restart").await;
    let a = Postgres::connect(&cfg, HOUR).await.unwrap();
    a.begin_removal().await.unwrap().end().await;
    tokio::task::block_in_place(|| {
        cluster.kill();
        cluster.restart();
    });
    let b = Postgres::connect(&cfg, HOUR).await.unwrap();
    b.begin_removal().await.unwrap().end().await;
    let rm = a.begin_removal().await;
    assert!(
        rm.is_ok(),
        "the replica that stayed up cannot collect: {:?}",
        rm.err()
    );
    if let Ok(rm) = rm {
        rm.end().await;
    }
    let pin = a.pin(vec![d("x")]).await.expect("a pin after the restart");
    let answered = pin.finish().await;
    assert!(
        answered.is_ok(),
        "the replica that stayed up cannot answer a write: {:?}",
        answered.err()
    );
}
