//! The PostgreSQL implementation of [`Liveness`] (see the parent module for the model).

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};
use std::time::Duration;

use async_trait::async_trait;
use deadpool_postgres::{Manager, ManagerConfig, Pool, RecyclingMethod, Runtime};
use sha2::{Digest as _, Sha256};
use tokio::task::JoinHandle;
use tokio_postgres::{AsyncMessage, Client};
use tokio_postgres_rustls::MakeRustlsConnect;

use super::config::DatabaseConfig;
use crate::digest::Digest;
use crate::hooks::{Hooks, Point};
use crate::liveness::{Claim, Held, Liveness, PinGuard, Pins, Removal, Scheduler, Session};
use crate::{Error, Result};

/// The newest schema this build knows; a database at a newer one is refused.
pub const SCHEMA_VERSION: i32 = 1;

/// Each migration runs once, in order, in the start-up transaction.
const MIGRATIONS: &[(i32, &str)] = &[(
    1,
    "CREATE TABLE drydock_replicas (
         id serial PRIMARY KEY,
         started timestamptz NOT NULL DEFAULT now());
     CREATE TABLE drydock_pins (
         replica int NOT NULL REFERENCES drydock_replicas ON DELETE CASCADE,
         pin bigint NOT NULL,
         digest text NOT NULL,
         PRIMARY KEY (replica, pin, digest));
     CREATE INDEX drydock_pins_digest ON drydock_pins (digest);
     CREATE TABLE drydock_removals (
         id bigserial PRIMARY KEY,
         replica int NOT NULL REFERENCES drydock_replicas ON DELETE CASCADE,
         started timestamptz NOT NULL DEFAULT now());
     CREATE TABLE drydock_journal (
         removal bigint NOT NULL REFERENCES drydock_removals ON DELETE CASCADE,
         digest text NOT NULL,
         PRIMARY KEY (removal, digest));
     CREATE TABLE drydock_pending (
         digest text PRIMARY KEY,
         at timestamptz NOT NULL);
     CREATE TABLE drydock_gc (
         id int PRIMARY KEY CHECK (id = 1),
         requested bigint NOT NULL DEFAULT 0,
         served bigint NOT NULL DEFAULT 0);
     INSERT INTO drydock_gc (id) VALUES (1);",
)];

/// The first key of drydock's two-key advisory locks: a replica's presence, by id.
const NS_REPLICA: i32 = 0x6464_0001;
/// The first key of drydock's other two-key advisory locks, by second key.
const NS_GLOBAL: i32 = 0x6464_0002;
/// The first key of the tag locks; the second is from the tag's name ([`tag_key`]).
const NS_TAG: i32 = 0x6464_0003;
/// Pins (shared) against the opening of removal sessions (exclusive).
const ORDER: i32 = 0;
/// Schema migrations, one replica at a time.
const MIGRATE: i32 = 1;
/// The GC lease.
const LEASE: i32 = 2;
/// The GC scheduler: the one replica that runs the collections every replica requests.
const SCHEDULER: i32 = 3;

/// The `application_name`s of the connections outside the pool (what an operator sees
/// in `pg_stat_activity`, and what tests end to stand for a death).
pub const PRESENCE: &str = "drydock replica";
pub const REMOVAL: &str = "drydock removal session";
pub const LEASE_HOLDER: &str = "drydock gc lease";
pub const SCHEDULER_HOLDER: &str = "drydock gc scheduler";

/// The error with its causes ("db error" alone says nothing), on one line.
fn db_err(e: impl std::fmt::Display + DbCause) -> Error {
    let mut msg = format!("database: {e}");
    if let Some(cause) = e.cause() {
        msg.push_str(": ");
        msg.push_str(&cause);
    }
    Error::Internal(msg.replace('\n', " "))
}

/// What lies under an error, when it is the client's or the pool's.
trait DbCause {
    fn cause(&self) -> Option<String>;
}

impl DbCause for tokio_postgres::Error {
    fn cause(&self) -> Option<String> {
        std::error::Error::source(self).map(ToString::to_string)
    }
}

impl DbCause for deadpool_postgres::PoolError {
    fn cause(&self) -> Option<String> {
        std::error::Error::source(self).map(ToString::to_string)
    }
}

impl DbCause for deadpool_postgres::BuildError {
    fn cause(&self) -> Option<String> {
        None
    }
}

impl DbCause for &str {
    fn cause(&self) -> Option<String> {
        None
    }
}

/// A digest's advisory lock key (single-key locks, a space apart from the two-key
/// ones): the first eight bytes of the SHA-256 of its text, the same on every replica.
/// Two digests sharing a key only wait for or refuse each other: never unsafe.
fn lock_key(d: &str) -> i64 {
    let h = Sha256::digest(d.as_bytes());
    let mut b = [0u8; 8];
    b.copy_from_slice(&h[..8]);
    i64::from_be_bytes(b)
}

/// A tag's lock key: the first four bytes of the SHA-256 of `repository:tag`. Two tags
/// sharing a key only wait for each other.
fn tag_key(key: &str) -> i32 {
    let h = Sha256::digest(key.as_bytes());
    i32::from_be_bytes([h[0], h[1], h[2], h[3]])
}

struct Inner {
    pool: Pool,
    pg: tokio_postgres::Config,
    /// Every connection's TLS (unused when `pg` asks for none).
    tls: MakeRustlsConnect,
    /// This replica's registration; replaced when its connection ended and the replica
    /// registered again ([`Postgres::connect`]).
    presence: std::sync::RwLock<Presence>,
    /// One registration at a time.
    registering: tokio::sync::Mutex<()>,
    next_pin: AtomicI64,
    pending_ttl: Duration,
    hooks: Hooks,
}

/// The protocol kept in PostgreSQL, shared by every replica on one database.
#[derive(Clone)]
pub struct Postgres(Arc<Inner>);

/// One registration of this replica: its row's id, and the connection whose session
/// lock says it lives (it closes when the last handle on this replica is dropped).
struct Presence {
    replica: i32,
    pid: i32,
    client: Client,
}

/// Registers a replica: a row in `drydock_replicas` and its advisory lock, in one
/// transaction on a connection of its own (no other replica ever sees the row without
/// its lock held). Whether its connection has ended shows on `Presence::client`.
async fn register(
    pg: &tokio_postgres::Config,
    tls: &MakeRustlsConnect,
    dbname: Option<&str>,
) -> Result<Presence> {
    let (mut client, _task) = dedicated(pg, tls, PRESENCE).await?;
    if let Some(dbname) = dbname {
        migrate(&mut client, dbname).await?;
    }
    let tx = client.transaction().await.map_err(db_err)?;
    let replica: i32 = tx
        .query_one(
            "INSERT INTO drydock_replicas DEFAULT VALUES RETURNING id",
            &[],
        )
        .await
        .map_err(db_err)?
        .get(0);
    tx.execute("SELECT pg_advisory_lock($1, $2)", &[&NS_REPLICA, &replica])
        .await
        .map_err(db_err)?;
    tx.commit().await.map_err(db_err)?;
    let pid: i32 = client
        .query_one("SELECT pg_backend_pid()", &[])
        .await
        .map_err(db_err)?
        .get(0);
    tracing::info!(replica, "registered with the database");
    Ok(Presence {
        replica,
        pid,
        client,
    })
}

/// How often a replica looks at its presence connection, and waits before it tries
/// again to register after it ended (the database restarting, a network cut).
const REGISTER_RETRY: Duration = Duration::from_secs(1);

/// Registers the replica again whenever its presence connection has ended, for as long
/// as the replica lives (a write or a removal session that finds it ended first
/// registers at once: [`Postgres::live_replica`]).
async fn keep_registered(inner: std::sync::Weak<Inner>) {
    loop {
        tokio::time::sleep(REGISTER_RETRY).await;
        let Some(strong) = inner.upgrade() else {
            return; // the replica is gone: its connection ended with it
        };
        if let Err(e) = Postgres(strong).live_replica().await {
            tracing::warn!(error = %e, "could not register with the database; trying again");
        }
    }
}

/// Opens a connection outside the pool (its session locks end with it), named for
/// `pg_stat_activity`.
async fn dedicated(
    pg: &tokio_postgres::Config,
    tls: &MakeRustlsConnect,
    name: &str,
) -> Result<(Client, JoinHandle<()>)> {
    let mut pg = pg.clone();
    pg.application_name(name);
    let (client, conn) = pg.connect(tls.clone()).await.map_err(db_err)?;
    let task = tokio::spawn(async move {
        if let Err(e) = conn.await {
            tracing::debug!(error = %e, "database connection ended");
        }
    });
    Ok((client, task))
}

/// Brings the schema up to [`SCHEMA_VERSION`] in one transaction, or refuses a newer
/// one.
async fn migrate(client: &mut Client, dbname: &str) -> Result<()> {
    let tx = client.transaction().await.map_err(db_err)?;
    tx.execute(
        "SELECT pg_advisory_xact_lock($1, $2)",
        &[&NS_GLOBAL, &MIGRATE],
    )
    .await
    .map_err(db_err)?;
    tx.batch_execute(
        "CREATE TABLE IF NOT EXISTS drydock_schema (
             version int PRIMARY KEY,
             applied timestamptz NOT NULL DEFAULT now())",
    )
    .await
    .map_err(db_err)?;
    let at: i32 = tx
        .query_one("SELECT coalesce(max(version), 0) FROM drydock_schema", &[])
        .await
        .map_err(db_err)?
        .get(0);
    if at > SCHEMA_VERSION {
        return Err(Error::Internal(format!(
            "database: the schema of {dbname:?} is at version {at}, newer than this drydock \
             knows ({SCHEMA_VERSION}); run a drydock that knows it, or point database.dbname \
             elsewhere"
        )));
    }
    for (version, sql) in MIGRATIONS.iter().filter(|(v, _)| *v > at) {
        tx.batch_execute(sql).await.map_err(db_err)?;
        tx.execute(
            "INSERT INTO drydock_schema (version) VALUES ($1)",
            &[version],
        )
        .await
        .map_err(db_err)?;
        tracing::info!(version, "database schema migrated");
    }
    tx.commit().await.map_err(db_err)
}

impl Postgres {
    /// Connects, migrates the schema and registers this replica.
    pub async fn connect(config: &DatabaseConfig, pending_ttl: Duration) -> Result<Postgres> {
        let pg = config.pg_config();
        let tls = config
            .tls()
            .map_err(|(key, message)| Error::Internal(format!("{key}: {message}")))?;
        let manager = Manager::from_config(
            pg.clone(),
            tls.clone(),
            ManagerConfig {
                recycling_method: RecyclingMethod::Fast,
            },
        );
        let pool = Pool::builder(manager)
            .max_size(config.pool.maxopen.max(1))
            .runtime(Runtime::Tokio1)
            .build()
            .map_err(db_err)?;
        let presence = register(&pg, &tls, Some(&config.dbname)).await?;
        let inner = Arc::new(Inner {
            pool,
            pg,
            tls,
            presence: std::sync::RwLock::new(presence),
            next_pin: AtomicI64::new(1),
            pending_ttl,
            hooks: Hooks::default(),
            registering: tokio::sync::Mutex::new(()),
        });
        tokio::spawn(keep_registered(Arc::downgrade(&inner)));
        Ok(Postgres(inner))
    }

    fn presence(&self) -> std::sync::RwLockReadGuard<'_, Presence> {
        self.0.presence.read().unwrap_or_else(|p| p.into_inner())
    }

    /// This replica's registration, made again first when its presence connection has
    /// ended (its lock with it: other replicas may have taken it for dead and dropped
    /// its pins). Pins recorded under the old one fail their fencing check; new ones
    /// are protected anew. Fails while the database does not answer.
    async fn live_replica(&self) -> Result<i32> {
        let current = |p: &Presence| (!p.client.is_closed()).then_some(p.replica);
        if let Some(id) = current(&self.presence()) {
            return Ok(id);
        }
        let _one = self.0.registering.lock().await;
        if let Some(id) = current(&self.presence()) {
            return Ok(id);
        }
        tracing::warn!("the replica's database connection ended; registering again");
        let presence = register(&self.0.pg, &self.0.tls, None).await?;
        let id = presence.replica;
        *self.0.presence.write().unwrap_or_else(|p| p.into_inner()) = presence;
        Ok(id)
    }

    /// This replica's id in `drydock_replicas`.
    pub fn replica(&self) -> i32 {
        self.presence().replica
    }

    /// The process id of the database backend serving this replica's presence
    /// connection: ending it (`pg_terminate_backend`) is this replica dying, as far as
    /// every other replica can tell.
    pub fn presence_backend(&self) -> i32 {
        self.presence().pid
    }

    /// The two keys of the advisory lock that says replica `id` lives (tests wait on it
    /// to know a dead replica's connection has ended).
    pub fn presence_lock(id: i32) -> (i32, i32) {
        (NS_REPLICA, id)
    }

    /// The two keys of the lock that orders pins (shared) against the opening of
    /// removal sessions (exclusive), and of the GC lease.
    pub fn order_lock() -> (i32, i32) {
        (NS_GLOBAL, ORDER)
    }

    pub fn lease_lock() -> (i32, i32) {
        (NS_GLOBAL, LEASE)
    }

    pub fn scheduler_lock() -> (i32, i32) {
        (NS_GLOBAL, SCHEDULER)
    }

    /// Takes the GC scheduler's role if no replica holds it; with `wait`, waits until it
    /// is free. It is held until the value is dropped or its holder dies (a session lock
    /// on a connection of its own, which also hears `NOTIFY drydock_gc`).
    pub async fn gc_scheduler(&self, wait: bool) -> Result<Option<GcScheduler>> {
        let mut pg = self.0.pg.clone();
        pg.application_name(SCHEDULER_HOLDER);
        let (client, mut conn) = pg.connect(self.0.tls.clone()).await.map_err(db_err)?;
        // Requests from any replica wake the holder waiting in `next_request`.
        let wake = Arc::new(tokio::sync::Notify::new());
        let task = tokio::spawn({
            let wake = wake.clone();
            async move {
                loop {
                    match std::future::poll_fn(|cx| conn.poll_message(cx)).await {
                        Some(Ok(AsyncMessage::Notification(_))) => wake.notify_waiters(),
                        Some(Ok(_)) => {}
                        Some(Err(e)) => {
                            tracing::debug!(error = %e, "the GC scheduler's connection ended");
                            break;
                        }
                        None => break,
                    }
                }
                // Waiters wake to find the connection gone.
                wake.notify_waiters();
            }
        });
        let scheduler = GcScheduler { client, task, wake };
        if wait {
            scheduler
                .client
                .execute("SELECT pg_advisory_lock($1, $2)", &[&NS_GLOBAL, &SCHEDULER])
                .await
                .map_err(db_err)?;
        } else {
            let got: bool = scheduler
                .client
                .query_one(
                    "SELECT pg_try_advisory_lock($1, $2)",
                    &[&NS_GLOBAL, &SCHEDULER],
                )
                .await
                .map_err(db_err)?
                .get(0);
            if !got {
                return Ok(None);
            }
        }
        scheduler
            .client
            .batch_execute("LISTEN drydock_gc")
            .await
            .map_err(db_err)?;
        Ok(Some(scheduler))
    }

    /// Asks for a collection (a DELETE, the timer, SIGUSR1, the admin API on any
    /// replica): requests made while a cycle runs coalesce into the next one.
    pub async fn request_gc(&self) -> Result<()> {
        let client = self.0.pool.get().await.map_err(db_err)?;
        client
            .batch_execute(
                "UPDATE drydock_gc SET requested = requested + 1 WHERE id = 1;
                 NOTIFY drydock_gc",
            )
            .await
            .map_err(db_err)
    }

    async fn record_pins(&self, replica: i32, pin: i64, digests: &[Digest]) -> Result<()> {
        let mut texts: Vec<String> = digests.iter().map(Digest::to_string).collect();
        texts.sort();
        texts.dedup();
        let keys: Vec<i64> = texts.iter().map(|t| lock_key(t)).collect();
        let by_key: HashMap<i64, &str> = keys
            .iter()
            .copied()
            .zip(texts.iter().map(String::as_str))
            .collect();
        let mut client = self.0.pool.get().await.map_err(db_err)?;
        let tx = client.transaction().await.map_err(db_err)?;
        // Shared locks: pins do not wait for each other, only for a remover's claim.
        let busy: Vec<i64> = tx
            .query(
                "SELECT k FROM unnest($1::int8[]) WITH ORDINALITY AS t(k, i)
                 WHERE NOT pg_try_advisory_xact_lock_shared(k) ORDER BY i",
                &[&keys],
            )
            .await
            .map_err(db_err)?
            .iter()
            .map(|r| r.get(0))
            .collect();
        if let Some(first) = busy.first() {
            let d = by_key.get(first).and_then(|t| t.parse::<Digest>().ok());
            self.0.hooks.reach(Point::PinWaits, d.as_ref()).await;
            // Waits in the database until the claims end (the deletion is done).
            tx.execute(
                "SELECT pg_advisory_xact_lock_shared(k) FROM unnest($1::int8[]) AS t(k)",
                &[&busy],
            )
            .await
            .map_err(db_err)?;
        }
        tx.execute(
            "SELECT pg_advisory_xact_lock_shared($1, $2)",
            &[&NS_GLOBAL, &ORDER],
        )
        .await
        .map_err(db_err)?;
        tx.execute(
            "INSERT INTO drydock_pins (replica, pin, digest)
             SELECT $1, $2, d FROM unnest($3::text[]) AS t(d) ON CONFLICT DO NOTHING",
            &[&replica, &pin, &texts],
        )
        .await
        .map_err(db_err)?;
        // Into the journal of every session still open: a session ending meanwhile
        // (its row deleted, uncommitted or just committed) is waited for and skipped by
        // the row lock, where reading it from the statement's snapshot would insert
        // rows naming a removal that is gone (a foreign key error, the write a 500).
        tx.execute(
            "WITH open AS (SELECT id FROM drydock_removals FOR KEY SHARE)
             INSERT INTO drydock_journal (removal, digest)
             SELECT open.id, t.d FROM open CROSS JOIN unnest($1::text[]) AS t(d)
             ON CONFLICT DO NOTHING",
            &[&texts],
        )
        .await
        .map_err(db_err)?;
        self.0
            .hooks
            .reach(Point::PinRecorded, digests.first())
            .await;
        tx.commit().await.map_err(db_err)
    }
}

fn ttl_secs(d: Duration) -> f64 {
    d.as_secs_f64()
}

#[async_trait]
impl Liveness for Postgres {
    async fn pin(&self, digests: Vec<Digest>) -> Result<PinGuard> {
        let pin = self.0.next_pin.fetch_add(1, Ordering::Relaxed);
        let replica = self.live_replica().await?;
        self.record_pins(replica, pin, &digests).await?;
        Ok(PinGuard::new(Box::new(PgPins {
            replica,
            owner: self.clone(),
            pin,
            recorded: !digests.is_empty(),
            released: false,
        })))
    }

    async fn pending_add(&self, digests: Vec<Digest>) -> Result<()> {
        let texts: Vec<String> = digests.iter().map(Digest::to_string).collect();
        let client = self.0.pool.get().await.map_err(db_err)?;
        client
            .execute(
                "INSERT INTO drydock_pending (digest, at)
                 SELECT d, now() FROM unnest($1::text[]) AS t(d)
                 ON CONFLICT (digest) DO UPDATE
                 SET at = greatest(drydock_pending.at, excluded.at)",
                &[&texts],
            )
            .await
            .map_err(db_err)?;
        Ok(())
    }

    async fn begin_removal(&self) -> Result<Removal> {
        let replica = self.live_replica().await?;
        let (mut client, task) = dedicated(&self.0.pg, &self.0.tls, REMOVAL).await?;
        let tx = client.transaction().await.map_err(db_err)?;
        // Exclusive: no pin is half recorded while the session opens.
        tx.execute(
            "SELECT pg_advisory_xact_lock($1, $2)",
            &[&NS_GLOBAL, &ORDER],
        )
        .await
        .map_err(db_err)?;
        // Replicas whose presence lock is gone are dead: their pins protect nothing.
        tx.execute(
            &format!(
                "DELETE FROM drydock_replicas r WHERE NOT EXISTS (
                     SELECT 1 FROM pg_locks l
                     WHERE l.locktype = 'advisory' AND l.granted AND l.objsubid = 2
                       AND l.database = (SELECT oid FROM pg_database
                                         WHERE datname = current_database())
                       AND l.classid = {NS_REPLICA}::oid AND l.objid = r.id::oid)"
            ),
            &[],
        )
        .await
        .map_err(db_err)?;
        tx.execute(
            "DELETE FROM drydock_pending WHERE at <= now() - $1 * interval '1 second'",
            &[&ttl_secs(self.0.pending_ttl)],
        )
        .await
        .map_err(db_err)?;
        let id: i64 = tx
            .query_one(
                "INSERT INTO drydock_removals (replica) VALUES ($1) RETURNING id",
                &[&replica],
            )
            .await
            .map_err(db_err)?
            .get(0);
        tx.execute(
            "INSERT INTO drydock_journal (removal, digest)
             SELECT DISTINCT $1::int8, digest FROM drydock_pins",
            &[&id],
        )
        .await
        .map_err(db_err)?;
        tx.commit().await.map_err(db_err)?;
        Ok(Removal::new(Box::new(PgSession {
            owner: self.clone(),
            conn: Some(Arc::new(SessionConn { client, task })),
            id,
        })))
    }

    fn hooks(&self) -> &Hooks {
        &self.0.hooks
    }

    fn shared(&self) -> bool {
        true
    }

    /// The GC lease as a session lock on a connection of its own (named
    /// [`LEASE_HOLDER`]): held until released, dropped, or the replica dies.
    async fn collection_lease(&self) -> Result<Option<Box<dyn Held>>> {
        let mut pg = self.0.pg.clone();
        pg.application_name(LEASE_HOLDER);
        let (client, conn) = pg.connect(self.0.tls.clone()).await.map_err(db_err)?;
        let task = tokio::spawn(async move {
            if let Err(e) = conn.await {
                tracing::debug!(error = %e, "the GC lease's connection ended");
            }
        });
        let lease = PgLease { client, task };
        let got: bool = lease
            .client
            .query_one("SELECT pg_try_advisory_lock($1, $2)", &[&NS_GLOBAL, &LEASE])
            .await
            .map_err(db_err)?
            .get(0);
        if !got {
            self.0.hooks.reach(Point::LeaseWaits, None).await;
            lease
                .client
                .execute("SELECT pg_advisory_lock($1, $2)", &[&NS_GLOBAL, &LEASE])
                .await
                .map_err(db_err)?;
        }
        Ok(Some(Box::new(lease)))
    }

    async fn request_collection(&self) -> Result<bool> {
        self.request_gc().await.map(|()| true)
    }

    async fn scheduler(&self) -> Result<Option<Box<dyn Scheduler>>> {
        Ok(self
            .gc_scheduler(true)
            .await?
            .map(|s| Box::new(s) as Box<dyn Scheduler>))
    }

    /// A session lock on a pooled connection, held with the connection until released.
    async fn lock_tag(&self, key: &str) -> Result<Option<Box<dyn Held>>> {
        let client = self.0.pool.get().await.map_err(db_err)?;
        let mut held = PgTagLock {
            client: Some(client),
            key: tag_key(key),
            locked: false,
        };
        let c = held.client()?;
        let got: bool = c
            .query_one("SELECT pg_try_advisory_lock($1, $2)", &[&NS_TAG, &held.key])
            .await
            .map_err(db_err)?
            .get(0);
        if !got {
            self.0.hooks.reach(Point::TagWaits, None).await;
            c.execute("SELECT pg_advisory_lock($1, $2)", &[&NS_TAG, &held.key])
                .await
                .map_err(db_err)?;
        }
        held.locked = true;
        Ok(Some(Box::new(held)))
    }
}

/// A collection's hold on the GC lease: its own connection, closed on release or drop
/// (which ends the lock with it).
struct PgLease {
    client: Client,
    task: JoinHandle<()>,
}

#[async_trait]
impl Held for PgLease {
    async fn release(self: Box<Self>) {
        if let Err(e) = self
            .client
            .execute("SELECT pg_advisory_unlock($1, $2)", &[&NS_GLOBAL, &LEASE])
            .await
        {
            tracing::debug!(error = %e, "the GC lease ends with its connection");
        }
    }
}

impl Drop for PgLease {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// A tag's lock: its pooled connection goes back to the pool only unlocked. One that
/// may hold or be waiting for the lock otherwise (an error, a request dropped while it
/// waited) is taken out of the pool and closed, which ends the lock with it.
struct PgTagLock {
    client: Option<deadpool_postgres::Object>,
    key: i32,
    locked: bool,
}

impl PgTagLock {
    fn client(&self) -> Result<&deadpool_postgres::Object> {
        self.client
            .as_ref()
            .ok_or_else(|| db_err("the tag lock was released"))
    }

    async fn unlock(client: deadpool_postgres::Object, key: i32) {
        let unlocked = client
            .query_one("SELECT pg_advisory_unlock($1, $2)", &[&NS_TAG, &key])
            .await
            .map(|r| r.get::<_, bool>(0));
        if !matches!(unlocked, Ok(true)) {
            tracing::warn!(?unlocked, "could not unlock a tag: closing its connection");
            drop(deadpool_postgres::Object::take(client));
        }
    }
}

#[async_trait]
impl Held for PgTagLock {
    async fn release(mut self: Box<Self>) {
        if let Some(c) = self.client.take() {
            PgTagLock::unlock(c, self.key).await;
        }
    }
}

impl Drop for PgTagLock {
    fn drop(&mut self) {
        let Some(c) = self.client.take() else {
            return;
        };
        match tokio::runtime::Handle::try_current() {
            Ok(rt) if self.locked => {
                rt.spawn(PgTagLock::unlock(c, self.key));
            }
            _ => drop(deadpool_postgres::Object::take(c)),
        }
    }
}

struct PgPins {
    owner: Postgres,
    /// The registration its rows are recorded under (a later one does not vouch for
    /// them: the fencing check looks for these).
    replica: i32,
    pin: i64,
    /// Whether any rows were recorded (a pin of no digest has none to find at the end).
    recorded: bool,
    released: bool,
}

impl PgPins {
    /// Deletes the pin's rows; how many there were.
    async fn unpin(owner: &Postgres, replica: i32, pin: i64) -> Result<u64> {
        let client = owner.0.pool.get().await.map_err(db_err)?;
        client
            .execute(
                "DELETE FROM drydock_pins WHERE replica = $1 AND pin = $2",
                &[&replica, &pin],
            )
            .await
            .map_err(db_err)
    }
}

#[async_trait]
impl Held for PgPins {
    async fn release(mut self: Box<Self>) {
        self.released = true;
        if let Err(e) = PgPins::unpin(&self.owner, self.replica, self.pin).await {
            // Left pinned until this replica ends: removers skip more, never less.
            tracing::warn!(error = %e, "could not unpin");
        }
    }
}

#[async_trait]
impl Pins for PgPins {
    async fn extend(&mut self, digests: Vec<Digest>) -> Result<()> {
        self.owner
            .record_pins(self.replica, self.pin, &digests)
            .await?;
        self.recorded |= !digests.is_empty();
        Ok(())
    }

    /// The rows are deleted only by this unpin or, with this replica's row, by a removal
    /// session that found the replica dead: rows recorded and none left to delete means
    /// they stopped protecting the write at some point.
    async fn finish(mut self: Box<Self>) -> Result<()> {
        self.released = true;
        let deleted = PgPins::unpin(&self.owner, self.replica, self.pin).await?;
        if self.recorded && deleted == 0 {
            return Err(Error::Internal(format!(
                "database: replica {} was found dead while writing (its presence was \
                 lost) and its pins dropped: the write is not answered as succeeded",
                self.replica
            )));
        }
        Ok(())
    }
}

impl Drop for PgPins {
    fn drop(&mut self) {
        if self.released {
            return;
        }
        let (owner, replica, pin) = (self.owner.clone(), self.replica, self.pin);
        if let Ok(rt) = tokio::runtime::Handle::try_current() {
            rt.spawn(async move {
                if let Err(e) = PgPins::unpin(&owner, replica, pin).await {
                    tracing::warn!(error = %e, "could not unpin");
                }
            });
        }
    }
}

/// A removal session's own connection: its claims are session locks on it, so they
/// end with it.
struct SessionConn {
    client: Client,
    task: JoinHandle<()>,
}

impl Drop for SessionConn {
    fn drop(&mut self) {
        self.task.abort();
    }
}

struct PgSession {
    owner: Postgres,
    conn: Option<Arc<SessionConn>>,
    id: i64,
}

impl PgSession {
    fn client(&self) -> Result<&Client> {
        self.conn
            .as_ref()
            .map(|c| &c.client)
            .ok_or_else(|| db_err("the removal session has ended"))
    }

    async fn close(conn: Option<Arc<SessionConn>>, id: i64) {
        // Its journal first, then its connection (and with it every claim it holds);
        // on its own connection, so ending a session never waits for the pool.
        let Some(conn) = conn else {
            return;
        };
        if let Err(e) = conn
            .client
            .execute("DELETE FROM drydock_removals WHERE id = $1", &[&id])
            .await
        {
            // Its connection is gone: the rows go when this replica is found dead.
            tracing::warn!(error = %e, "could not close a removal session's journal");
        }
    }
}

#[async_trait]
impl Session for PgSession {
    async fn claim(&self, digest: &Digest, only_pins: bool) -> Result<Option<Claim>> {
        let client = self.client()?;
        let text = digest.to_string();
        let key = lock_key(&text);
        let got: bool = client
            .query_one("SELECT pg_try_advisory_lock($1)", &[&key])
            .await
            .map_err(db_err)?
            .get(0);
        if !got {
            // A pin is being recorded, or another session claims it.
            return Ok(None);
        }
        // A statement of its own: its snapshot is taken with the lock held, so every
        // pin recorded before the lock was granted is seen.
        let busy: std::result::Result<bool, _> = client
            .query_one(
                "SELECT EXISTS (SELECT 1 FROM drydock_pins WHERE digest = $1)
                     OR (NOT $2 AND (
                         EXISTS (SELECT 1 FROM drydock_journal
                                 WHERE removal = $3 AND digest = $1)
                         OR EXISTS (SELECT 1 FROM drydock_pending
                                    WHERE digest = $1
                                      AND at > now() - $4 * interval '1 second')))",
                &[
                    &text,
                    &only_pins,
                    &self.id,
                    &ttl_secs(self.owner.0.pending_ttl),
                ],
            )
            .await
            .map(|r| r.get(0));
        if !matches!(busy, Ok(false)) {
            client
                .execute("SELECT pg_advisory_unlock($1)", &[&key])
                .await
                .map_err(db_err)?;
            return busy.map(|_| None).map_err(db_err);
        }
        Ok(Some(Claim::new(Box::new(PgClaim {
            conn: self.conn.clone(),
            key,
            rt: tokio::runtime::Handle::try_current().ok(),
        }))))
    }

    async fn pending(&self) -> Result<Vec<Digest>> {
        let rows = self
            .client()?
            .query(
                "SELECT digest FROM drydock_pending
                 WHERE at > now() - $1 * interval '1 second'",
                &[&ttl_secs(self.owner.0.pending_ttl)],
            )
            .await
            .map_err(db_err)?;
        Ok(rows
            .iter()
            .filter_map(|r| r.get::<_, &str>(0).parse().ok())
            .collect())
    }

    async fn journaled(&self) -> Result<usize> {
        let n: i64 = self
            .client()?
            .query_one(
                "SELECT count(*) FROM drydock_journal WHERE removal = $1",
                &[&self.id],
            )
            .await
            .map_err(db_err)?
            .get(0);
        Ok(usize::try_from(n).unwrap_or(0))
    }

    fn hooks(&self) -> &Hooks {
        &self.owner.0.hooks
    }

    async fn end(mut self: Box<Self>) {
        PgSession::close(self.conn.take(), self.id).await;
    }
}

impl Drop for PgSession {
    fn drop(&mut self) {
        let Some(conn) = self.conn.take() else {
            return;
        };
        let id = self.id;
        match tokio::runtime::Handle::try_current() {
            Ok(rt) => {
                rt.spawn(PgSession::close(Some(conn), id));
            }
            // No runtime: the connection (and its claims) ends at once; the journal rows
            // stay until this replica is found dead, refusing claims only this session
            // would have made.
            Err(_) => drop(conn),
        }
    }
}

struct PgClaim {
    conn: Option<Arc<SessionConn>>,
    key: i64,
    rt: Option<tokio::runtime::Handle>,
}

impl PgClaim {
    async fn unlock(conn: Arc<SessionConn>, key: i64) {
        if let Err(e) = conn
            .client
            .execute("SELECT pg_advisory_unlock($1)", &[&key])
            .await
        {
            // The session's connection is gone, and the lock with it.
            tracing::debug!(error = %e, "claim released with its connection");
        }
    }
}

#[async_trait]
impl Held for PgClaim {
    async fn release(mut self: Box<Self>) {
        if let Some(conn) = self.conn.take() {
            PgClaim::unlock(conn, self.key).await;
        }
    }
}

impl Drop for PgClaim {
    fn drop(&mut self) {
        let Some(conn) = self.conn.take() else {
            return;
        };
        match &self.rt {
            Some(rt) => {
                rt.spawn(PgClaim::unlock(conn, self.key));
            }
            None => drop(conn),
        }
    }
}

/// The GC scheduler's role (see [`Postgres::gc_scheduler`]).
pub struct GcScheduler {
    client: Client,
    task: JoinHandle<()>,
    wake: Arc<tokio::sync::Notify>,
}

impl GcScheduler {
    /// The count of requests made so far, when some are not served yet.
    pub async fn pending(&self) -> Result<Option<i64>> {
        let row = self
            .client
            .query_opt(
                "SELECT requested FROM drydock_gc WHERE id = 1 AND served < requested",
                &[],
            )
            .await
            .map_err(db_err)?;
        Ok(row.map(|r| r.get(0)))
    }
}

#[async_trait]
impl Scheduler for GcScheduler {
    /// Woken by `NOTIFY`, not by polling.
    async fn next_request(&self) -> Result<i64> {
        loop {
            // Created before the check: a notification between the two still wakes it.
            let notified = self.wake.notified();
            if let Some(n) = self.pending().await? {
                return Ok(n);
            }
            if self.client.is_closed() {
                return Err(db_err("the GC scheduler's connection ended"));
            }
            notified.await;
        }
    }

    /// On the role's own connection: a scheduler that has lost its role records nothing.
    async fn served(&self, upto: i64) -> Result<()> {
        self.client
            .execute(
                "UPDATE drydock_gc SET served = GREATEST(served, $1) WHERE id = 1",
                &[&upto],
            )
            .await
            .map_err(db_err)
            .map(drop)
    }
}

impl Drop for GcScheduler {
    fn drop(&mut self) {
        self.task.abort();
    }
}
