//! The sweep phase: removes what the mark phase did not reach, in an order that is safe
//! to interrupt at any point (kill -9 and run again): untagged manifests first (with
//! `remove_untagged`), then layer links, then pool blobs. Nothing newer than the grace
//! period goes, nor anything the server holds pinned, journaled or pending; in a dry run
//! the same decisions are recorded and nothing is deleted.
//!
//! Protection is of closures, not digests: a write that refers to an existing manifest
//! (a `HEAD` before an index push, an index or referrer put, a re-tag) holds that
//! manifest's digest, and the mark may already have judged everything the manifest
//! reaches unreachable. So the manifest phase claims all of a repository's candidates
//! first, computes the closure of the ones it was refused (children, subjects,
//! referrers, their blobs), releases the candidates in that closure, and keeps the
//! closure out of the later phases too. A writer that meets a claimed candidate waits
//! for the outcome: kept (it goes on) or removed (it answers as if absent).
//!
//! It runs on blocking threads: repositories, then pool shards, are spread over a few
//! workers. On disk each removal is two or three system calls with no thread hop; on
//! S3 a shard's (or a repository's layer links') removals go in batches, each one's
//! claim held until its batch is deleted.

use std::collections::HashSet;
use std::sync::atomic::AtomicBool;
use std::sync::{Arc, Mutex};
use std::time::SystemTime;

use registry::Digest;
use registry::digest::Algorithm;
use registry::hooks::Point;
use registry::inventory::{Inventory, LeafDir, PoolShard};
use registry::liveness::{Claim, Removal};
use registry::names::{RepoName, Tag};

use crate::items::Items;
use crate::mark::{DigestSet, Marked, RepoMark, SortedDigests};
use crate::{GcError, Options, Scope, is_young, par};

/// Removals that go together in one batch (where the backend batches: S3's
/// `DeleteObjects` takes 1,000 keys). Each holds its claim until the batch is gone, so a
/// writer meeting one waits at most one batch request.
const BATCH: usize = 500;

/// What the sweep removed (or, in a dry run, would remove).
#[derive(Debug, Default, Clone, serde::Serialize, serde::Deserialize)]
pub struct Swept {
    /// `repo@digest`
    pub manifests: Items,
    /// `repo@digest`
    pub layer_links: Items,
    /// digests
    pub blobs: Items,
    pub bytes_freed: u64,
    /// Candidates left alone because a write was using them.
    pub skipped_in_use: u64,
}

impl Swept {
    /// The parts one after the other.
    fn concat(parts: Vec<Swept>) -> Swept {
        let mut out = Swept::default();
        for p in parts {
            out.manifests.append(p.manifests);
            out.layer_links.append(p.layer_links);
            out.blobs.append(p.blobs);
            out.bytes_freed += p.bytes_freed;
            out.skipped_in_use += p.skipped_in_use;
        }
        out
    }
}

/// Everything one sweep decides with.
struct Sweeper<'a> {
    inv: &'a Inventory,
    opts: &'a Options,
    pending: DigestSet,
    removal: Option<&'a Removal>,
    now: SystemTime,
    /// The closures of manifests the manifest phase was refused: neither their layer
    /// links nor their pool blobs go in this sweep.
    rescued: Mutex<DigestSet>,
}

/// What a remover may do with one candidate.
enum Decision {
    /// Remove it (the claim, in a server, ends when this is dropped).
    Remove(Option<Claim>),
    /// A write holds it: leave it.
    Refused,
}

impl Sweeper<'_> {
    /// Whether a file modified at `t` is inside the grace period; a file whose time is
    /// unknown (not there, or not there yet) counts as new.
    fn young(&self, t: Option<SystemTime>) -> bool {
        t.is_none_or(|t| is_young(t, self.now, self.opts.grace))
    }

    fn rescued(&self, d: &Digest) -> bool {
        self.rescued
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .contains(d)
    }

    /// Claims `digest` in a server; offline and in a dry run there is nothing to claim.
    fn decide(&self, digest: &Digest) -> Result<Decision, GcError> {
        Ok(match self.removal {
            Some(r) if !self.opts.dry_run => match r.claim_blocking(digest)? {
                Some(c) => Decision::Remove(Some(c)),
                None => Decision::Refused,
            },
            _ => Decision::Remove(None),
        })
    }

    /// Runs `delete` holding the claim `decision` (none offline); in a dry run, only
    /// says it would have run.
    fn remove(
        &self,
        digest: &Digest,
        claim: Option<Claim>,
        delete: impl FnOnce() -> registry::Result<()>,
    ) -> Result<(), GcError> {
        if self.opts.dry_run {
            return Ok(());
        }
        if let Some(r) = self.removal {
            r.hooks().reach_blocking(Point::Claimed, Some(digest));
        }
        delete()?;
        drop(claim);
        Ok(())
    }

    /// Claims `digest` and runs `delete` under the claim. Returns whether it ran (or,
    /// in a dry run, would have).
    fn claimed(
        &self,
        digest: &Digest,
        delete: impl FnOnce() -> registry::Result<()>,
    ) -> Result<bool, GcError> {
        match self.decide(digest)? {
            Decision::Remove(claim) => {
                self.remove(digest, claim, delete)?;
                Ok(true)
            }
            Decision::Refused => Ok(false),
        }
    }

    /// Claims each of `digests`, runs `delete` once on those it got, holding all their
    /// claims, and then releases them: a batch deletion is as safe as one at a time
    /// (nothing is deleted that is not claimed when it goes). Returns, in order, whether
    /// each was (or, in a dry run, would be) removed.
    fn claimed_batch(
        &self,
        digests: &[Digest],
        delete: impl FnOnce(&[Digest]) -> registry::Result<()>,
    ) -> Result<Vec<bool>, GcError> {
        let mut claims = Vec::new();
        let mut taken = Vec::new();
        let mut removed = Vec::with_capacity(digests.len());
        for d in digests {
            match self.decide(d)? {
                Decision::Remove(c) => {
                    claims.push(c);
                    taken.push(d.clone());
                    removed.push(true);
                }
                Decision::Refused => removed.push(false),
            }
        }
        if !self.opts.dry_run && !taken.is_empty() {
            if let Some(r) = self.removal {
                for d in &taken {
                    r.hooks().reach_blocking(Point::Claimed, Some(d));
                }
            }
            delete(&taken)?;
        }
        drop(claims);
        Ok(removed)
    }

    /// Untagged revisions of one repository (with `remove_untagged`).
    fn revisions(&self, repo: &RepoName, rm: &RepoMark) -> Result<Swept, GcError> {
        let mut out = Swept::default();
        let name: Arc<str> = Arc::from(repo.as_str());
        let todo: Vec<&Digest> = rm
            .unreached
            .iter()
            .map(|(d, _)| d)
            .filter(|d| !self.pending.contains(d))
            .collect();
        if todo.is_empty() {
            return Ok(out);
        }
        // Which tags' histories name each revision: one listing per tag (and algorithm
        // of the revisions to remove), not one lookup per tag and revision.
        let mut algorithms: Vec<Algorithm> = todo.iter().map(|d| d.algorithm()).collect();
        algorithms.sort_by_key(|a| a.as_str());
        algorithms.dedup();
        let mut histories: Vec<(Tag, DigestSet)> = Vec::new();
        for tag in self.inv.tag_names(repo)? {
            let index: DigestSet = self
                .inv
                .tag_index(repo, &tag, &algorithms)?
                .iter()
                .collect();
            histories.push((tag, index));
        }
        // Claim every candidate first: a write that holds one of them (and so may
        // reference the others) must keep everything it reaches.
        let mut claimed = Vec::new();
        let mut refused = Vec::new();
        for d in todo {
            match self.decide(d)? {
                Decision::Remove(c) => claimed.push((d, c)),
                Decision::Refused => refused.push(d.clone()),
            }
        }
        out.skipped_in_use += refused.len() as u64;
        let keep = if refused.is_empty() {
            DigestSet::default()
        } else {
            let (manifests, blobs) = crate::mark::closure(self.inv, repo, refused)?;
            let mut rescued = self.rescued.lock().unwrap_or_else(|p| p.into_inner());
            rescued.extend(&manifests);
            rescued.extend(&blobs);
            manifests
        };
        for (d, claim) in claimed {
            if keep.contains(d) {
                out.skipped_in_use += 1;
                continue; // the claim ends here; waiting writers find it kept
            }
            let tags: Vec<Tag> = histories
                .iter()
                .filter(|(_, index)| index.contains(d))
                .map(|(t, _)| t.clone())
                .collect();
            self.remove(d, claim, || self.inv.remove_revision(repo, d, Some(&tags)))?;
            out.manifests.push_in(&name, d);
        }
        Ok(out)
    }

    /// Layer links of one repository that no live manifest of it needs.
    fn layer_links(&self, repo: &RepoName, rm: &RepoMark) -> Result<Swept, GcError> {
        let mut out = Swept::default();
        let name: Arc<str> = Arc::from(repo.as_str());
        if rm.unneeded_links.is_empty() {
            return Ok(out);
        }
        // `_layers/<alg>` held open: every stat and removal names the link relative to
        // it. The links come grouped by algorithm, so each folder is opened once. Where
        // removals go in batches (S3), a folder's batch goes before the next is opened.
        let mut open: Option<(Algorithm, Option<LeafDir>)> = None;
        let mut batch = Vec::new();
        for d in rm.unneeded_links.iter() {
            let alg = d.algorithm();
            if open.as_ref().map(|(a, _)| *a) != Some(alg) {
                if let Some((_, Some(dir))) = &open {
                    self.layer_links_batch(repo, dir, &mut batch, &mut out)?;
                }
                open = Some((alg, self.inv.open_layer_links(repo, alg)?));
            }
            // The folder is gone: so is every link in it.
            let Some((_, Some(dir))) = &open else {
                continue;
            };
            if self.young(dir.time(d.hex())) || self.rescued(&d) {
                continue;
            }
            if dir.batches() {
                batch.push(d);
                if batch.len() >= BATCH {
                    self.layer_links_batch(repo, dir, &mut batch, &mut out)?;
                }
                continue;
            }
            if self.claimed(&d, || self.inv.remove_layer_link(dir, repo, &d).map(|_| ()))? {
                out.layer_links.push_in(&name, &d);
            } else {
                out.skipped_in_use += 1;
            }
        }
        if let Some((_, Some(dir))) = &open {
            self.layer_links_batch(repo, dir, &mut batch, &mut out)?;
        }
        Ok(out)
    }

    /// Removes the layer links in `batch` (all of one folder `dir`) that it can claim.
    fn layer_links_batch(
        &self,
        repo: &RepoName,
        dir: &LeafDir,
        batch: &mut Vec<Digest>,
        out: &mut Swept,
    ) -> Result<(), GcError> {
        if batch.is_empty() {
            return Ok(());
        }
        let todo = std::mem::take(batch);
        let removed = self.claimed_batch(&todo, |ds| self.inv.remove_layer_links(dir, repo, ds))?;
        let name: Arc<str> = Arc::from(repo.as_str());
        for (d, gone) in todo.iter().zip(removed) {
            if gone {
                out.layer_links.push_in(&name, d);
            } else {
                out.skipped_in_use += 1;
            }
        }
        Ok(())
    }

    /// Pool blobs of one shard nobody marked. Only the unmarked are stat-ed.
    fn shard(&self, shard: &PoolShard, marked: &SortedDigests) -> Result<Swept, GcError> {
        let mut out = Swept::default();
        let Some(dir) = self.inv.open_shard(shard)? else {
            return Ok(out);
        };
        let mut batch = Vec::new();
        for hex in dir.entries()? {
            // Most entries are marked: answer those from the hex, without a `Digest`.
            let known = marked.contains_sha256_hex(&hex);
            if known == Some(true) {
                continue;
            }
            let Ok(d) = format!("{}:{hex}", shard.algorithm.as_str()).parse::<Digest>() else {
                continue;
            };
            if (known.is_none() && marked.contains(&d))
                || self.pending.contains(&d)
                || self.rescued(&d)
            {
                continue;
            }
            let (size, modified) = dir.meta(&hex)?;
            if self.young(modified) {
                continue;
            }
            if dir.batches() {
                if size.is_some() || !self.opts.dry_run {
                    batch.push((d, size));
                }
                if batch.len() >= BATCH {
                    self.blobs_batch(&dir, &mut batch, &mut out)?;
                }
                continue;
            }
            let remove = || self.inv.remove_pool_blob(&dir, &d).map(|_| ());
            let Some(size) = size else {
                // A folder a deletion cut short left without its data: tidy it.
                if !self.opts.dry_run {
                    self.claimed(&d, remove)?;
                }
                continue;
            };
            if self.claimed(&d, remove)? {
                out.blobs.push(&d);
                out.bytes_freed += size;
            } else {
                out.skipped_in_use += 1;
            }
        }
        self.blobs_batch(&dir, &mut batch, &mut out)?;
        Ok(out)
    }

    /// Removes the pool blobs in `batch` (all of the shard `dir`) that it can claim;
    /// one without its data (a deletion cut short) is tidied and not counted.
    fn blobs_batch(
        &self,
        dir: &LeafDir,
        batch: &mut Vec<(Digest, Option<u64>)>,
        out: &mut Swept,
    ) -> Result<(), GcError> {
        if batch.is_empty() {
            return Ok(());
        }
        let todo = std::mem::take(batch);
        let digests: Vec<Digest> = todo.iter().map(|(d, _)| d.clone()).collect();
        let removed = self.claimed_batch(&digests, |ds| self.inv.remove_pool_blobs(dir, ds))?;
        for ((d, size), gone) in todo.iter().zip(removed) {
            match (size, gone) {
                (Some(size), true) => {
                    out.blobs.push(d);
                    out.bytes_freed += size;
                }
                (Some(_), false) => out.skipped_in_use += 1,
                (None, _) => {}
            }
        }
        Ok(())
    }
}

/// The sweep phase on the calling (blocking) thread, with a few worker threads.
#[allow(clippy::too_many_arguments)]
pub fn sweep_blocking(
    inv: &Inventory,
    marked: &Marked,
    opts: &Options,
    scope: &Scope,
    pending: &HashSet<Digest>,
    removal: Option<&Removal>,
    now: SystemTime,
    cancel: &AtomicBool,
) -> Result<Swept, GcError> {
    let s = Sweeper {
        inv,
        opts,
        pending: pending.iter().collect(),
        removal,
        now,
        rescued: Mutex::new(DigestSet::default()),
    };
    let workers = opts.workers;
    let mut parts = Vec::new();
    // Each phase ends before the next begins: a manifest goes before the layer links
    // only it needed, and those before the blobs they name.
    if opts.remove_untagged {
        parts.extend(par::map(&marked.repos, workers, cancel, |(repo, rm)| {
            s.revisions(repo, rm)
        })?);
    }
    if scope.revisions_only {
        return Ok(Swept::concat(parts));
    }
    parts.extend(par::map(&marked.repos, workers, cancel, |(repo, rm)| {
        s.layer_links(repo, rm)
    })?);
    let shards = inv.pool_shards()?;
    parts.extend(par::map(&shards, workers, cancel, |shard| {
        s.shard(shard, &marked.blobs)
    })?);
    Ok(Swept::concat(parts))
}
