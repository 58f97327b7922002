//! Coordination between replicas in PostgreSQL: the [`Liveness`](crate::liveness)
//! protocol (pins, journals, pending, claims) kept in a shared database instead of one
//! process's memory, plus the GC lease and the coalescing of GC triggers. The database
//! holds coordination only, never content: the bucket stays the source of truth.
//!
//! How each part of the protocol is kept (docs/gc.md has the argument):
//!
//! - A **replica** is a row in `drydock_replicas` whose id a dedicated connection holds
//!   as a session advisory lock; a replica whose connection is gone (it died, or lost
//!   the database) is dead, and the next removal session deletes its rows and, by
//!   cascade, its pins.
//! - A **pin** is rows in `drydock_pins`, written in a transaction that first takes a
//!   *shared* transaction advisory lock on each digest (so it waits, in the database,
//!   while a remover holds the digest's exclusive lock), then the shared lock that
//!   orders pins against the opening of removal sessions, and adds the digests to the
//!   journal of every open session.
//! - A **removal session** is a row in `drydock_removals` and its journal rows in
//!   `drydock_journal`, opened under the exclusive ordering lock (no pin is half
//!   recorded) with the digests pinned at that moment journaled; it runs on its own
//!   connection.
//! - A **claim** is a *session* advisory lock on the digest, exclusive, taken without
//!   waiting on the session's connection, and kept only if, once it is held, no pin,
//!   journal entry (of this session) or unexpired pending row names the digest. It is
//!   released by unlocking, or by the session's connection ending.
//! - **Pending** digests are rows in `drydock_pending` with the database's time of the
//!   last announcement; the remover's `pending_ttl` decides expiry.

pub mod config;
mod postgres;

pub use config::{DatabaseConfig, PoolConfig};
pub use postgres::{
    GcScheduler, LEASE_HOLDER, PRESENCE, Postgres, REMOVAL, SCHEDULER_HOLDER, SCHEMA_VERSION,
};
