//! The mark phase: every digest some root reaches, per repository and for the pool.
//! Roots are tags (or every revision when untagged manifests are kept), revisions newer
//! than the grace period, and digests the server holds pending. From each root it
//! follows config and layers, index children (recursively), `subject`, and referrers
//! from the `_referrers` index, so a referrer whose subject is live is live. Every
//! generic-artifact link is a root too: the blob it names stays.

use std::collections::HashSet;
use std::time::SystemTime;

use registry::manifest;
use registry::names::RepoName;
use registry::{Digest, Store};

use crate::{GcError, Options, is_young};

/// A set of digests holding raw bytes (32 per sha256 digest).
#[derive(Default, Debug)]
pub struct DigestSet {
    sha256: HashSet<[u8; 32]>,
    other: HashSet<Digest>,
}

impl DigestSet {
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

/// What one repository holds and which of it is live.
#[derive(Debug, Default)]
pub struct RepoMark {
    /// Every manifest revision.
    pub revisions: Vec<Digest>,
    /// Revisions no root reaches and older than the grace period, with the time of
    /// their link: what untagged removal takes (empty when untagged ones are kept).
    pub unreached: Vec<(Digest, SystemTime)>,
    /// Every layer link.
    pub layer_links: Vec<Digest>,
    /// Manifests reached from a root.
    pub live_manifests: DigestSet,
    /// Blobs the live manifests reference (their layer links stay).
    pub needed_layers: DigestSet,
}

/// The result of the mark phase.
#[derive(Debug, Default)]
pub struct Marked {
    /// Pool digests that stay.
    pub blobs: DigestSet,
    pub repos: Vec<(RepoName, RepoMark)>,
    pub manifests_marked: usize,
    /// Artifact links seen (each one a root).
    pub artifact_links: usize,
}

/// Runs the mark phase.
pub async fn mark(
    store: &Store,
    opts: &Options,
    pending: &HashSet<Digest>,
    now: SystemTime,
) -> Result<Marked, GcError> {
    let mut marked = Marked::default();
    for d in pending {
        marked.blobs.insert(d);
    }
    for (d, _) in store.artifact_links().await? {
        marked.blobs.insert(&d);
        marked.artifact_links += 1;
    }
    for repo in store.repositories_all().await? {
        let rm = mark_repo(store, opts, pending, now, &repo, &mut marked.blobs).await?;
        marked.manifests_marked += rm.live_manifests.len();
        marked.repos.push((repo, rm));
    }
    Ok(marked)
}

async fn mark_repo(
    store: &Store,
    opts: &Options,
    pending: &HashSet<Digest>,
    now: SystemTime,
    repo: &RepoName,
    blobs: &mut DigestSet,
) -> Result<RepoMark, GcError> {
    // Names only: times are read for the few candidates, not for every entry.
    let mut rm = RepoMark {
        revisions: store.revision_digests(repo).await?,
        layer_links: store.layer_link_digests(repo).await?,
        ..RepoMark::default()
    };
    let revision_set: HashSet<Digest> = rm.revisions.iter().cloned().collect();
    if !opts.remove_untagged {
        let roots = rm.revisions.clone();
        traverse(store, repo, &revision_set, roots, &mut rm, blobs).await?;
        return Ok(rm);
    }
    let mut roots = Vec::new();
    for tag in store.tags(repo).await.unwrap_or_default() {
        if let Some(d) = store.resolve_tag(repo, &tag).await? {
            roots.push(d);
        }
    }
    roots.extend(
        rm.revisions
            .iter()
            .filter(|d| pending.contains(*d))
            .cloned(),
    );
    traverse(store, repo, &revision_set, roots, &mut rm, blobs).await?;
    // Unreached revisions newer than the grace period are roots too.
    let mut times = Vec::new();
    let mut young = Vec::new();
    for d in rm.revisions.clone() {
        if rm.live_manifests.contains(&d) {
            continue;
        }
        let t = store.revision_time(repo, &d).await;
        if is_young(t, now, opts.grace) {
            young.push(d);
        } else {
            times.push((d, t));
        }
    }
    traverse(store, repo, &revision_set, young, &mut rm, blobs).await?;
    rm.unreached = times
        .into_iter()
        .filter(|(d, _)| !rm.live_manifests.contains(d))
        .collect();
    Ok(rm)
}

/// Marks everything reachable from `stack`: manifests, their blobs, index children,
/// subjects and referrers.
async fn traverse(
    store: &Store,
    repo: &RepoName,
    revision_set: &HashSet<Digest>,
    mut stack: Vec<Digest>,
    rm: &mut RepoMark,
    blobs: &mut DigestSet,
) -> Result<(), GcError> {
    while let Some(d) = stack.pop() {
        if !rm.live_manifests.insert(&d) {
            continue;
        }
        blobs.insert(&d);
        if let Some(bytes) = store.manifest_bytes(&d).await? {
            match manifest::parse(&bytes, None) {
                Ok(m) => {
                    for b in &m.blobs {
                        blobs.insert(b);
                        rm.needed_layers.insert(b);
                    }
                    stack.extend(m.children.iter().cloned());
                    if let Some(s) = m.subject
                        && revision_set.contains(&s)
                    {
                        stack.push(s);
                    }
                }
                Err(e) => {
                    tracing::warn!(repository = %repo, digest = %d, error = %e, "unreadable manifest kept as is");
                }
            }
        } else {
            tracing::warn!(repository = %repo, digest = %d, "manifest revision without pool blob");
        }
        for r in store.referrer_digests(repo, &d).await? {
            if revision_set.contains(&r) {
                stack.push(r);
            }
        }
    }
    Ok(())
}
