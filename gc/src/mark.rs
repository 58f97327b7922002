//! The mark phase: every digest some root reaches, per repository and for the pool.
//! Roots are tags (or every revision when untagged manifests are kept), revisions newer
//! than the grace period, and digests the server holds pending. From each root it
//! follows config and layers, index children (recursively), `subject`, and referrers
//! from the `_referrers` index, so a referrer whose subject is live is live. Every
//! generic-artifact link is a root too: the blob it names stays.

use std::collections::HashSet;
use std::sync::Mutex;
use std::sync::atomic::AtomicBool;
use std::time::SystemTime;

use registry::inventory::Inventory;
use registry::manifest;
use registry::names::RepoName;
use registry::{Digest, Store};

use crate::{GcError, Options, Scope, is_young, par};

/// A set of digests holding raw bytes (32 per sha256 digest).
#[derive(Default, Debug)]
pub struct DigestSet {
    sha256: HashSet<[u8; 32]>,
    other: HashSet<Digest>,
}

impl DigestSet {
    /// Adds every digest of `other`.
    pub fn extend(&mut self, other: &DigestSet) {
        self.sha256.extend(other.sha256.iter());
        self.other.extend(other.other.iter().cloned());
    }

    pub fn insert(&mut self, d: &Digest) -> bool {
        match d.sha256_bytes() {
            Some(b) => self.sha256.insert(b),
            None => self.other.insert(d.clone()),
        }
    }

    pub fn contains(&self, d: &Digest) -> bool {
        match d.sha256_bytes() {
            Some(b) => self.sha256.contains(&b),
            None => self.other.contains(d),
        }
    }

    pub fn len(&self) -> usize {
        self.sha256.len() + self.other.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

impl<'a> FromIterator<&'a Digest> for DigestSet {
    fn from_iter<I: IntoIterator<Item = &'a Digest>>(iter: I) -> Self {
        let mut s = DigestSet::default();
        for d in iter {
            s.insert(d);
        }
        s
    }
}

/// A large set of digests, built by appending and then sealed: a sorted array of raw
/// digests (32 bytes each, no hash-table overhead, growth by `mremap` without copying),
/// searched by bisection. The pool's mark set is this.
#[derive(Default, Debug)]
pub struct SortedDigests {
    sha256: Vec<[u8; 32]>,
    other: Vec<Digest>,
}

impl SortedDigests {
    pub fn push(&mut self, d: &Digest) {
        match d.sha256_bytes() {
            Some(b) => self.sha256.push(b),
            None => self.other.push(d.clone()),
        }
    }

    pub fn extend_set(&mut self, s: &DigestSet) {
        self.sha256.extend(s.sha256.iter());
        self.other.extend(s.other.iter().cloned());
    }

    /// Sorts and removes duplicates; call once, after the last push.
    pub fn seal(&mut self) {
        self.sha256.sort_unstable();
        self.sha256.dedup();
        self.sha256.shrink_to_fit();
        self.other.sort();
        self.other.dedup();
    }

    pub fn contains(&self, d: &Digest) -> bool {
        match d.sha256_bytes() {
            Some(b) => self.sha256.binary_search(&b).is_ok(),
            None => self.other.binary_search(d).is_ok(),
        }
    }

    /// Whether the sha256 digest whose hex is `hex` is in the set, without making a
    /// [`Digest`] of it (the sweep asks this for every blob in the pool).
    pub fn contains_sha256_hex(&self, hex: &str) -> Option<bool> {
        let b = registry::digest::sha256_hex_bytes(hex)?;
        Some(self.sha256.binary_search(&b).is_ok())
    }

    pub fn len(&self) -> usize {
        self.sha256.len() + self.other.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The digests, sha256 ones first, each in order.
    pub fn iter(&self) -> impl Iterator<Item = Digest> + '_ {
        self.sha256
            .iter()
            .map(Digest::sha256_from_bytes)
            .chain(self.other.iter().cloned())
    }
}

/// What the mark found in one repository, and what its sweep may take.
#[derive(Debug, Default)]
pub struct RepoMark {
    /// How many manifest revisions the repository has.
    pub revisions: usize,
    /// Manifests reached from a root.
    pub live_manifests: usize,
    /// Revisions no root reaches and older than the grace period, with the time of
    /// their link: what untagged removal takes (empty when untagged ones are kept).
    pub unreached: Vec<(Digest, SystemTime)>,
    /// Layer links no live manifest of the repository needs (and not pending): what the
    /// sweep takes, subject to the grace period and claims. Links written after the
    /// mark are never among them.
    pub unneeded_links: SortedDigests,
    /// Manifests whose bytes did not parse: everything they mention was kept.
    pub unreadable: usize,
}

/// The result of the mark phase.
#[derive(Debug, Default)]
pub struct Marked {
    /// Pool digests that stay.
    pub blobs: SortedDigests,
    pub repos: Vec<(RepoName, RepoMark)>,
    pub manifests_marked: usize,
    /// Artifact links seen (each one a root).
    pub artifact_links: usize,
    /// Manifests whose bytes did not parse: everything they mention was kept.
    pub unreadable_manifests: usize,
}

/// The digests generic-artifact links name: roots of every mark.
pub(crate) async fn artifact_roots(store: &Store) -> Result<Vec<Digest>, GcError> {
    Ok(store
        .artifact_links()
        .await?
        .into_iter()
        .map(|(d, _)| d)
        .collect())
}

/// The mark phase on the calling (blocking) thread, repositories spread over a few
/// worker threads.
pub fn mark_blocking(
    inv: &Inventory,
    opts: &Options,
    scope: &Scope,
    pending: &HashSet<Digest>,
    now: SystemTime,
    artifact_roots: Vec<Digest>,
    cancel: &AtomicBool,
) -> Result<Marked, GcError> {
    let mut marked = Marked::default();
    for d in pending.iter().chain(&artifact_roots) {
        marked.blobs.push(d);
    }
    marked.artifact_links = artifact_roots.len();
    drop(artifact_roots);
    let blobs = Mutex::new(std::mem::take(&mut marked.blobs));
    let mut repos = inv.repositories()?;
    if let Some(only) = &scope.repositories {
        repos.retain(|r| only.is_match(r.as_str()));
    }
    let marks = par::map(&repos, opts.workers, cancel, |repo| {
        mark_repo(inv, opts, pending, now, repo, &blobs)
    })?;
    marked.blobs = blobs.into_inner().unwrap_or_else(|p| p.into_inner());
    marked.blobs.seal();
    for (repo, rm) in repos.into_iter().zip(marks) {
        marked.manifests_marked += rm.live_manifests;
        marked.unreadable_manifests += rm.unreadable;
        marked.repos.push((repo, rm));
    }
    Ok(marked)
}

fn mark_repo(
    inv: &Inventory,
    opts: &Options,
    pending: &HashSet<Digest>,
    now: SystemTime,
    repo: &RepoName,
    blobs: &Mutex<SortedDigests>,
) -> Result<RepoMark, GcError> {
    let revisions = inv.revisions(repo)?;
    let mut walk = Walk::new(inv, repo, &revisions)?;
    let mut rm = RepoMark {
        revisions: revisions.len(),
        ..RepoMark::default()
    };
    if !opts.remove_untagged {
        walk.traverse(revisions)?;
        return walk.finish(rm, pending, blobs);
    }
    let mut roots: Vec<Digest> = inv.tags(repo)?.into_iter().filter_map(|(_, d)| d).collect();
    roots.extend(revisions.iter().filter(|d| pending.contains(*d)).cloned());
    walk.traverse(roots)?;
    // Unreached revisions newer than the grace period are roots too, and so are those
    // whose link is not (or no longer) there to tell their age: a write may have made
    // the folder and not yet renamed its link into it.
    let mut old = Vec::new();
    let mut young = Vec::new();
    for d in revisions {
        if walk.live.contains(&d) {
            continue;
        }
        match inv.revision_time(repo, &d) {
            Some(t) if !is_young(t, now, opts.grace) => old.push((d, t)),
            _ => young.push(d),
        }
    }
    walk.traverse(young)?;
    rm.unreached = old
        .into_iter()
        .filter(|(d, _)| !walk.live.contains(d))
        .collect();
    walk.finish(rm, pending, blobs)
}

/// The closure of `roots` in `repo`: every manifest they reach (children, subjects,
/// referrers) and every blob those need, by the same rules as the mark. The sweep keeps
/// the closure of every manifest it was refused (a write holds it) with this.
pub fn closure(
    inv: &Inventory,
    repo: &RepoName,
    roots: Vec<Digest>,
) -> Result<(DigestSet, DigestSet), GcError> {
    let revisions = inv.revisions(repo)?;
    let mut walk = Walk::new(inv, repo, &revisions)?;
    walk.traverse(roots)?;
    Ok((walk.live, walk.needed_layers))
}

/// The traversal of one repository.
struct Walk<'a> {
    inv: &'a Inventory,
    repo: &'a RepoName,
    revision_set: DigestSet,
    /// Subjects that have a referrers index (most manifests have none: no lookup).
    subjects: DigestSet,
    /// Manifests reached.
    live: DigestSet,
    /// Blobs the live manifests reference (their layer links stay).
    needed_layers: DigestSet,
    /// Manifests reached whose bytes did not parse.
    unreadable: usize,
}

impl<'a> Walk<'a> {
    fn new(inv: &'a Inventory, repo: &'a RepoName, revisions: &[Digest]) -> Result<Self, GcError> {
        Ok(Walk {
            inv,
            repo,
            revision_set: revisions.iter().collect(),
            subjects: inv.referrer_subjects(repo)?.iter().collect(),
            live: DigestSet::default(),
            needed_layers: DigestSet::default(),
            unreadable: 0,
        })
    }

    /// Marks everything reachable from `stack`: manifests, their blobs, index children,
    /// subjects and referrers.
    fn traverse(&mut self, mut stack: Vec<Digest>) -> Result<(), GcError> {
        while let Some(d) = stack.pop() {
            if !self.live.insert(&d) {
                continue;
            }
            if let Some(bytes) = self.inv.manifest_bytes(&d)? {
                let r = manifest::references(&bytes);
                if r.unreadable {
                    // Fail closed: whatever it names stays, and every revision it names
                    // is followed as a child.
                    self.unreadable += 1;
                    tracing::warn!(repository = %self.repo, digest = %d, mentioned = r.blobs.len(), "unreadable manifest: everything it mentions is kept");
                }
                for b in &r.blobs {
                    self.needed_layers.insert(b);
                }
                stack.extend(
                    r.children
                        .into_iter()
                        .filter(|c| !r.unreadable || self.revision_set.contains(c)),
                );
                if let Some(s) = r.subject
                    && self.revision_set.contains(&s)
                {
                    stack.push(s);
                }
            } else {
                tracing::warn!(repository = %self.repo, digest = %d, "manifest revision without pool blob");
            }
            if self.subjects.contains(&d) {
                for r in self.inv.referrers(self.repo, &d)? {
                    if self.revision_set.contains(&r) {
                        stack.push(r);
                    }
                }
            }
        }
        Ok(())
    }

    /// Adds what the walk reached to the pool's mark set, and lists the layer links no
    /// live manifest needs.
    fn finish(
        self,
        mut rm: RepoMark,
        pending: &HashSet<Digest>,
        blobs: &Mutex<SortedDigests>,
    ) -> Result<RepoMark, GcError> {
        rm.live_manifests = self.live.len();
        rm.unreadable = self.unreadable;
        for d in self.inv.layer_links(self.repo)? {
            if !self.needed_layers.contains(&d) && !pending.contains(&d) {
                rm.unneeded_links.push(&d);
            }
        }
        rm.unneeded_links.seal();
        let mut set = blobs.lock().unwrap_or_else(|p| p.into_inner());
        set.extend_set(&self.live);
        set.extend_set(&self.needed_layers);
        Ok(rm)
    }
}
