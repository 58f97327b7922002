//! The sweep phase: removes what the mark phase did not reach, in an order that is safe
//! to interrupt at any point (kill -9 and run again): untagged manifests first (with
//! `remove_untagged`), then layer links, then pool blobs. Nothing newer than the grace
//! period goes, nor anything the server holds pinned, journaled or pending; in a dry run
//! the same decisions are recorded and nothing is deleted.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::SystemTime;

use registry::liveness::Liveness;
use registry::{Digest, Store};

use crate::mark::Marked;
use crate::{GcError, Options, is_young};

/// What the sweep removed (or, in a dry run, would remove).
#[derive(Debug, Default, Clone, serde::Serialize, serde::Deserialize)]
pub struct Swept {
    /// `repo@digest`
    pub manifests: Vec<String>,
    /// `repo@digest`
    pub layer_links: Vec<String>,
    /// digests
    pub blobs: Vec<String>,
    pub bytes_freed: u64,
    /// Candidates left alone because a write was using them.
    pub skipped_in_use: u64,
}

/// Runs `delete` under a claim of `digest` (in the server), or plainly (offline).
/// Returns whether it ran.
async fn claimed<F, Fut>(
    liveness: Option<&Arc<Liveness>>,
    digest: &Digest,
    delete: F,
) -> Result<bool, GcError>
where
    F: FnOnce() -> Fut,
    Fut: std::future::Future<Output = Result<(), registry::Error>>,
{
    match liveness {
        None => {
            delete().await?;
            Ok(true)
        }
        Some(l) => {
            if !l.claim(digest) {
                return Ok(false);
            }
            let r = delete().await;
            l.release(digest);
            r?;
            Ok(true)
        }
    }
}

pub async fn sweep(
    store: &Store,
    marked: &Marked,
    opts: &Options,
    pending: &HashSet<Digest>,
    liveness: Option<&Arc<Liveness>>,
    now: SystemTime,
) -> Result<Swept, GcError> {
    let mut out = Swept::default();
    let young = |t: SystemTime| is_young(t, now, opts.grace);

    if opts.remove_untagged {
        for (repo, rm) in &marked.repos {
            for (d, _) in &rm.unreached {
                if pending.contains(d) {
                    continue;
                }
                let ran =
                    opts.dry_run || claimed(liveness, d, || store.remove_revision(repo, d)).await?;
                if ran {
                    out.manifests.push(format!("{repo}@{d}"));
                } else {
                    out.skipped_in_use += 1;
                }
            }
        }
    }

    for (repo, rm) in &marked.repos {
        for d in &rm.layer_links {
            if rm.needed_layers.contains(d) || pending.contains(d) {
                continue;
            }
            if young(store.layer_link_time(repo, d).await) {
                continue;
            }
            let ran = opts.dry_run
                || claimed(liveness, d, || async {
                    store.unlink_layer(repo, d).await.map(|_| ())
                })
                .await?;
            if ran {
                out.layer_links.push(format!("{repo}@{d}"));
            } else {
                out.skipped_in_use += 1;
            }
        }
    }

    // One pass over the pool's names; only the unmarked are stat-ed.
    for d in store.pool_digests().await? {
        if marked.blobs.contains(&d) || pending.contains(&d) {
            continue;
        }
        let (size, modified) = store.pool_blob_meta(&d).await?;
        if young(modified) {
            continue;
        }
        let Some(size) = size else {
            // A folder a deletion cut short left without its data: tidy it.
            if !opts.dry_run {
                claimed(liveness, &d, || async {
                    store.remove_pool_blob(&d).await.map(|_| ())
                })
                .await?;
            }
            continue;
        };
        let ran = opts.dry_run
            || claimed(liveness, &d, || async {
                store.remove_pool_blob(&d).await.map(|_| ())
            })
            .await?;
        if ran {
            out.blobs.push(d.to_string());
            out.bytes_freed += size;
        } else {
            out.skipped_in_use += 1;
        }
    }
    Ok(out)
}
