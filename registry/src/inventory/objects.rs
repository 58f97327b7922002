//! The collector's view of a store on any [`Driver`] (an S3 bucket): the same listings
//! and removals as the filesystem's `Disk`, each a driver call run from the collector's
//! blocking threads on the server's runtime (`Handle::block_on`, as
//! `liveness::Removal::claim_blocking` does). Repositories are spread over the
//! collector's workers, so at most `gc.workers` listings are in flight.
//!
//! A pool shard or a repository's `_layers/<alg>` is listed once, recursively: one
//! request per 1,000 keys gives every leaf with its size and `LastModified` (the grace
//! clock), so the sweep needs no request per candidate to judge it, and removes its
//! choices with batch deletes (`DeleteObjects`). Removals invalidate the store's caches
//! just as `Store::remove` does.

use std::collections::BTreeMap;
use std::future::Future;
use std::sync::Arc;
use std::time::SystemTime;

use futures::StreamExt;

use super::PoolShard;
use crate::cache::Cache;
use crate::digest::{Algorithm, Digest};
use crate::manifest;
use crate::names::{RepoName, Tag};
use crate::storage::{Driver, PathSpec, path_for};
use crate::{Error, Result};

/// Tag links read at once per repository.
const TAGS_IN_FLIGHT: usize = 8;

/// The store on a driver, as the collector walks and sweeps it from a blocking thread.
#[derive(Clone)]
pub(super) struct Objects {
    driver: Arc<dyn Driver>,
    rt: tokio::runtime::Handle,
    cache: Arc<Cache>,
}

/// One leaf (`<hex>/…`) of a listed folder.
#[derive(Debug)]
struct Leaf {
    /// Size of its file (`data`, `link`); `None` when only other keys are there.
    size: Option<u64>,
    /// `LastModified` of its file, else the newest of its other keys.
    modified: SystemTime,
    /// Every key below it (driver paths).
    keys: Vec<String>,
}

/// A folder of `<hex>/<file>` leaves as one listing found it.
#[derive(Debug)]
pub(super) struct ObjectsDir {
    leaves: BTreeMap<String, Leaf>,
}

impl ObjectsDir {
    /// Size and time of a leaf's file (see `DiskDir::meta`): `(None, t)` when only
    /// other keys are there, `(None, None)` when the leaf was not listed.
    pub fn meta(&self, hex: &str) -> (Option<u64>, Option<SystemTime>) {
        match self.leaves.get(hex) {
            Some(l) => (l.size, Some(l.modified)),
            None => (None, None),
        }
    }

    /// Time of a leaf's file; `None` when it was not listed.
    pub fn time(&self, hex: &str) -> Option<SystemTime> {
        self.leaves
            .get(hex)
            .filter(|l| l.size.is_some())
            .map(|l| l.modified)
    }

    /// The leaves' names, sorted.
    pub fn entries(&self) -> Vec<String> {
        self.leaves.keys().cloned().collect()
    }

    /// Every key of the leaves `hexes` (none for one not listed).
    fn keys<'a>(&'a self, hexes: impl IntoIterator<Item = &'a str>) -> Vec<String> {
        hexes
            .into_iter()
            .filter_map(|h| self.leaves.get(h))
            .flat_map(|l| l.keys.iter().cloned())
            .collect()
    }
}

impl Objects {
    /// `None` outside a tokio runtime (the collector always starts inside one).
    pub(super) fn new(driver: Arc<dyn Driver>, cache: Arc<Cache>) -> Option<Objects> {
        let rt = tokio::runtime::Handle::try_current().ok()?;
        Some(Objects { driver, rt, cache })
    }

    fn run<T>(&self, f: impl Future<Output = T>) -> T {
        self.rt.block_on(f)
    }

    /// Names of the sub-folders of `dir` (empty when it does not exist).
    fn child_dirs(&self, dir: &str) -> Result<Vec<String>> {
        match self.run(self.driver.list(dir)) {
            Ok(v) => Ok(v.into_iter().filter(|e| e.is_dir).map(|e| e.name).collect()),
            Err(e) if e.is_not_found() => Ok(Vec::new()),
            Err(e) => Err(e.into()),
        }
    }

    /// Digests named by `<dir>/<alg>/<hex>/` folders of `algorithms`, sorted.
    fn digest_dirs_of(&self, dir: &str, algorithms: &[Algorithm]) -> Result<Vec<Digest>> {
        let mut out = Vec::new();
        for alg in algorithms {
            let alg = alg.as_str();
            for hex in self.child_dirs(&format!("{dir}/{alg}"))? {
                if let Ok(d) = format!("{alg}:{hex}").parse::<Digest>() {
                    out.push(d);
                }
            }
        }
        out.sort();
        Ok(out)
    }

    fn digest_dirs(&self, spec: PathSpec<'_>) -> Result<Vec<Digest>> {
        self.digest_dirs_of(&path_for(spec), &Algorithm::ALL)
    }

    /// Removes `keys` in batches; a key already gone counts as removed.
    fn delete_keys(&self, keys: &[String]) -> Result<()> {
        if keys.is_empty() {
            return Ok(());
        }
        for r in self.run(self.driver.delete_many(keys))? {
            r?;
        }
        Ok(())
    }

    pub fn repository_names(&self) -> Result<Vec<String>> {
        self.run(crate::repository::walk_repositories(
            self.driver.as_ref(),
            true,
        ))
    }

    pub fn revisions(&self, name: &RepoName) -> Result<Vec<Digest>> {
        self.digest_dirs(PathSpec::ManifestRevisionsDir(name))
    }

    pub fn layer_links(&self, name: &RepoName) -> Result<Vec<Digest>> {
        self.digest_dirs(PathSpec::LayersDir(name))
    }

    pub fn referrer_subjects(&self, name: &RepoName) -> Result<Vec<Digest>> {
        self.digest_dirs(PathSpec::ReferrersRoot(name))
    }

    pub fn referrers(&self, name: &RepoName, subject: &Digest) -> Result<Vec<Digest>> {
        self.digest_dirs(PathSpec::ReferrersDir(name, subject))
    }

    pub fn tag_names(&self, name: &RepoName) -> Result<Vec<Tag>> {
        let mut names = self.child_dirs(&path_for(PathSpec::TagsDir(name)))?;
        names.sort();
        Ok(names.iter().filter_map(|t| Tag::parse(t).ok()).collect())
    }

    pub fn tags(&self, name: &RepoName) -> Result<Vec<(Tag, Option<Digest>)>> {
        let tags = self.tag_names(name)?;
        let driver = &self.driver;
        let read = futures::stream::iter(tags)
            .map(|tag| async move {
                let link = path_for(PathSpec::TagCurrentLink(name, &tag));
                let target = match driver.get(&link).await {
                    Ok((b, _)) => String::from_utf8_lossy(&b).trim().parse::<Digest>().ok(),
                    Err(e) if e.is_not_found() => None,
                    Err(e) => return Err(Error::from(e)),
                };
                Ok((tag, target))
            })
            .buffered(TAGS_IN_FLIGHT)
            .collect::<Vec<_>>();
        self.run(read).into_iter().collect()
    }

    pub fn tag_index(
        &self,
        name: &RepoName,
        tag: &Tag,
        algorithms: &[Algorithm],
    ) -> Result<Vec<Digest>> {
        self.digest_dirs_of(&path_for(PathSpec::TagIndexDir(name, tag)), algorithms)
    }

    pub fn manifest_bytes(&self, digest: &Digest) -> Result<Option<Vec<u8>>> {
        match self.run(self.driver.get(&path_for(PathSpec::BlobData(digest)))) {
            Ok((b, _)) => Ok(Some(b.to_vec())),
            Err(e) if e.is_not_found() => Ok(None),
            Err(e) => Err(e.into()),
        }
    }

    /// `LastModified` of a revision link; `None` when it is not there (or cannot be
    /// read): a caller treats that as new.
    pub fn revision_time(&self, name: &RepoName, digest: &Digest) -> Option<SystemTime> {
        let link = path_for(PathSpec::ManifestRevisionLink(name, digest));
        self.run(self.driver.stat(&link))
            .ok()
            .filter(|s| !s.is_dir)
            .map(|s| s.modified)
    }

    pub fn pool_shards(&self) -> Result<Vec<PoolShard>> {
        let mut out = Vec::new();
        for alg in self.child_dirs(&path_for(PathSpec::BlobsRoot))? {
            let Some(algorithm) = Algorithm::parse(&alg) else {
                continue;
            };
            let blobs = path_for(PathSpec::BlobsRoot);
            for hh in self.child_dirs(&format!("{blobs}/{alg}"))? {
                out.push(PoolShard { algorithm, hh });
            }
        }
        out.sort();
        Ok(out)
    }

    /// Lists the leaves below `dir` whose file is `file`; `None` when there are none.
    fn open(&self, dir: String, file: &str) -> Result<Option<ObjectsDir>> {
        let found = match self.run(self.driver.list_below(&dir)) {
            Ok(v) => v,
            Err(e) if e.is_not_found() => Vec::new(),
            Err(e) => return Err(e.into()),
        };
        let mut leaves: BTreeMap<String, Leaf> = BTreeMap::new();
        for e in found {
            let Some((hex, rest)) = e.path.split_once('/') else {
                continue; // a file beside the leaves: not one of them
            };
            let leaf = leaves.entry(hex.to_owned()).or_insert(Leaf {
                size: None,
                modified: SystemTime::UNIX_EPOCH,
                keys: Vec::new(),
            });
            leaf.keys.push(format!("{dir}/{}", e.path));
            if rest == file {
                leaf.size = Some(e.size);
                leaf.modified = e.modified;
            } else if leaf.size.is_none() {
                leaf.modified = leaf.modified.max(e.modified);
            }
        }
        Ok((!leaves.is_empty()).then_some(ObjectsDir { leaves }))
    }

    pub fn open_shard(&self, shard: &PoolShard) -> Result<Option<ObjectsDir>> {
        let dir = path_for(PathSpec::BlobShard(shard.algorithm.as_str(), &shard.hh));
        self.open(dir, "data")
    }

    pub fn open_layer_links(&self, name: &RepoName, alg: Algorithm) -> Result<Option<ObjectsDir>> {
        self.open(path_for(PathSpec::LayersAlgDir(name, alg.as_str())), "link")
    }

    /// Removes the pool blobs `digests` of the listed shard `dir` in batches.
    pub fn remove_pool_blobs(&self, dir: &ObjectsDir, digests: &[Digest]) -> Result<()> {
        let r = self.delete_keys(&dir.keys(digests.iter().map(|d| d.hex())));
        for d in digests {
            self.cache.invalidate_blob(d);
        }
        r
    }

    /// Removes the layer links `digests` of `name` from the listed `dir` in batches.
    pub fn remove_layer_links(
        &self,
        dir: &ObjectsDir,
        name: &RepoName,
        digests: &[Digest],
    ) -> Result<()> {
        let r = self.delete_keys(&dir.keys(digests.iter().map(|d| d.hex())));
        if !self.cache.is_off() {
            for d in digests {
                self.cache
                    .invalidate_link(&path_for(PathSpec::LayerLink(name, d)));
            }
        }
        r
    }

    /// Removes a manifest revision as `Disk::remove_revision` does, in the same order:
    /// tag-history entries, the referrers entries, and last the revision link (a run
    /// cut short leaves the revision to be found again).
    pub fn remove_revision(&self, name: &RepoName, digest: &Digest, tags: &[Tag]) -> Result<()> {
        let history: Vec<String> = tags
            .iter()
            .map(|t| path_for(PathSpec::TagIndexLink(name, t, digest)))
            .collect();
        self.delete_keys(&history)?;
        if !self
            .child_dirs(&path_for(PathSpec::ReferrersRoot(name)))?
            .is_empty()
        {
            if let Some(body) = self.manifest_bytes(digest)?
                && let Ok(m) = manifest::parse(&body, None)
                && let Some(subject) = &m.subject
            {
                self.delete_keys(&[path_for(PathSpec::ReferrerLink(name, subject, digest))])?;
            }
            match self.run(
                self.driver
                    .delete(&path_for(PathSpec::ReferrersDir(name, digest))),
            ) {
                Ok(()) => {}
                Err(e) if e.is_not_found() => {}
                Err(e) => return Err(e.into()),
            }
        }
        let link = path_for(PathSpec::ManifestRevisionLink(name, digest));
        let r = self.delete_keys(std::slice::from_ref(&link));
        if !self.cache.is_off() {
            self.cache.invalidate_link(&link);
        }
        r
    }
}
