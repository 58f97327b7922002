//! drydock's garbage collector. [`collect`] runs one cycle: [`mark`] walks every
//! repository's roots (tags, or every revision when untagged manifests are kept) through
//! manifests, index children, subjects and referrers into a set of raw digests;
//! [`sweep`] removes untagged manifests (with `remove_untagged`), layer links no live
//! manifest of their repository needs, and pool blobs nobody marked. Nothing newer than
//! the grace period is removed. In the server, the [`cleaner::Cleaner`] runs cycles while
//! the registry serves, coordinating with writers through `registry::liveness`.
//!
//! This crate decides what is garbage; `registry::inventory` lists and deletes.

pub mod admin;
pub mod cleaner;
pub mod items;
pub mod lock;
pub mod maintenance;
pub mod mark;
pub mod online;
mod par;
pub mod report;
pub mod sweep;

use std::collections::HashSet;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant, SystemTime};

use registry::liveness::{self, Liveness};
use registry::{Digest, Store};

pub use report::Report;

/// How one cycle runs.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct Options {
    /// Plan only; delete nothing.
    pub dry_run: bool,
    /// Also remove manifests no tag reaches.
    pub remove_untagged: bool,
    /// Nothing whose file is newer than this is removed.
    #[serde(with = "secs")]
    pub grace: Duration,
    /// Worker threads of the walk and the removals.
    #[serde(default = "default_workers")]
    pub workers: usize,
}

fn default_workers() -> usize {
    registry::config::default_gc_workers()
}

impl Default for Options {
    fn default() -> Self {
        Options {
            dry_run: false,
            remove_untagged: false,
            grace: Duration::from_secs(3600),
            workers: default_workers(),
        }
    }
}

mod secs {
    use std::time::Duration;

    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_f64(d.as_secs_f64())
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        let v = f64::deserialize(d)?;
        // Checked: a value out of range (or not a number) is an error, never a panic.
        Duration::try_from_secs_f64(v.max(0.0)).map_err(serde::de::Error::custom)
    }
}

/// The digests the server holds pending, read once the session is open (so a digest
/// pending before it began is either here or journaled).
async fn liveness_pending(removal: Option<&liveness::Removal>) -> Result<HashSet<Digest>, GcError> {
    Ok(match removal {
        Some(r) => r.pending().await?.into_iter().collect(),
        None => HashSet::default(),
    })
}

#[derive(Debug, thiserror::Error)]
pub enum GcError {
    #[error(transparent)]
    Registry(#[from] registry::Error),
    #[error("{0}")]
    Other(String),
    #[error("the collection was cancelled")]
    Cancelled,
}

/// Which part of the store a collection covers; the whole store by default.
#[derive(Debug, Clone, Default)]
pub struct Scope {
    /// Only the repositories whose name matches (every one when `None`).
    pub repositories: Option<regex::Regex>,
    /// Remove manifest revisions only (retention's untagged policy); their layer links
    /// and blobs wait for the next full collection.
    pub revisions_only: bool,
}

/// Whether a file modified at `modified` is still inside the grace period at `now`.
pub(crate) fn is_young(modified: SystemTime, now: SystemTime, grace: Duration) -> bool {
    match now.duration_since(modified) {
        Ok(age) => age < grace,
        Err(_) => true, // modified in the future: young
    }
}

/// Runs one full cycle. `liveness` is the server's coordination with its writers (none
/// for the offline command, where only the grace period protects recent content).
///
/// The walk and the removals run on blocking threads. When this future is dropped (a
/// maintenance time limit), they stop at the next item, and the cycle's journal stays
/// open until they have: a dropped sweep is as safe as a killed one.
pub async fn collect(
    store: &Store,
    opts: &Options,
    liveness: Option<&Arc<dyn Liveness>>,
) -> Result<Report, GcError> {
    collect_in(store, opts, liveness, &Scope::default()).await
}

/// Runs one cycle over `scope`: every remover of untagged manifests (the collector and
/// retention's untagged policy) is this function, so all of them mark, claim and keep
/// closures the same way.
#[tracing::instrument(skip_all, fields(dry_run = opts.dry_run, remove_untagged = opts.remove_untagged))]
pub async fn collect_in(
    store: &Store,
    opts: &Options,
    liveness: Option<&Arc<dyn Liveness>>,
    scope: &Scope,
) -> Result<Report, GcError> {
    let started = SystemTime::now();
    let t0 = Instant::now();
    /// Asks the blocking work to stop when the future is dropped.
    struct CancelOnDrop(Arc<AtomicBool>);
    impl Drop for CancelOnDrop {
        fn drop(&mut self) {
            self.0.store(true, Ordering::Relaxed);
        }
    }
    // The session (and its journal) opens before anything is looked at, and closes when
    // the blocking work returns, however the cycle ends.
    let removal = match liveness {
        Some(l) => Some(l.begin_removal().await?),
        None => None,
    };
    let cancel = Arc::new(AtomicBool::new(false));
    let _cancel_on_drop = CancelOnDrop(cancel.clone());
    let artifact_roots = mark::artifact_roots(store).await?;
    let inv = store.inventory()?;
    let opts_owned = opts.clone();
    let scope = scope.clone();
    let pending: HashSet<Digest> = liveness_pending(removal.as_ref()).await?;
    let result = tokio::task::spawn_blocking(move || {
        let opts = &opts_owned;
        let removal = removal.as_ref();
        let marked = mark::mark_blocking(
            &inv,
            opts,
            &scope,
            &pending,
            started,
            artifact_roots,
            &cancel,
        )?;
        if let Some(r) = removal {
            r.hooks()
                .reach_blocking(registry::hooks::Point::Marked, None);
        }
        let mark_time = t0.elapsed();
        let t1 = Instant::now();
        let swept = sweep::sweep_blocking(
            &inv, &marked, opts, &scope, &pending, removal, started, &cancel,
        )?;
        Ok::<_, GcError>(Report::new(
            opts,
            started,
            &marked,
            swept,
            mark_time,
            t1.elapsed(),
        ))
    })
    .await
    .map_err(|e| GcError::Other(e.to_string()))?;
    let report = result?;
    tracing::info!(
        repositories = report.repositories,
        manifests_marked = report.manifests_marked,
        blobs_marked = report.blobs_marked,
        manifests_removed = report.manifests_removed,
        layer_links_removed = report.layer_links_removed,
        blobs_removed = report.blobs_removed,
        bytes_freed = report.bytes_freed,
        skipped_in_use = report.skipped_in_use,
        unreadable_manifests = report.unreadable_manifests,
        duration_ms = report.duration_ms,
        "garbage collection {}",
        if opts.dry_run {
            "planned (dry run)"
        } else {
            "done"
        }
    );
    Ok(report)
}
