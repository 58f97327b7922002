//! The collector's view of the store for a caller that is already on a blocking thread:
//! the listings and removals a collection makes, done with plain system calls and no
//! hand-off to another thread per item. A collection over 100 000 blobs makes a few
//! hundred thousand of these calls, and with one thread hop each the hops, not the disk,
//! were most of its time. Removals invalidate the store's caches just as
//! `Store::remove` does.
//!
//! Listings read directory entries only (no `stat`): a folder's children and their
//! types come from `getdents`, and times are read just for the few candidates a sweep is
//! about to remove.

use std::io::ErrorKind;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::SystemTime;

use crate::cache::Cache;
use crate::digest::{Algorithm, Digest};
use crate::manifest;
use crate::names::{RepoName, Tag};
use crate::storage::{PathSpec, path_for};
use crate::store::Store;
use crate::{Error, Result};

/// The store, as the collector walks and sweeps it from a blocking thread.
#[derive(Clone)]
pub struct Inventory {
    root: PathBuf,
    cache: Arc<Cache>,
}

/// One shard of the pool: the folder `blobs/<alg>/<hh>` holding the blobs whose hex
/// digest starts with `hh`.
#[derive(Debug, Clone)]
pub struct PoolShard {
    pub algorithm: Algorithm,
    dir: PathBuf,
}

impl Store {
    /// A handle for the blocking walk of a collection (cheap to clone and send).
    pub fn inventory(&self) -> Inventory {
        Inventory {
            root: self.driver.root().to_path_buf(),
            cache: self.cache.clone(),
        }
    }
}

fn io_err(path: &Path, e: std::io::Error) -> Error {
    Error::internal(format!("{}: {e}", path.display()))
}

/// Names of the sub-folders of `dir` (empty when `dir` does not exist).
fn child_dirs(dir: &Path) -> Result<Vec<String>> {
    let rd = match std::fs::read_dir(dir) {
        Ok(rd) => rd,
        Err(e) if e.kind() == ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(io_err(dir, e)),
    };
    let mut out = Vec::new();
    for entry in rd {
        let entry = entry.map_err(|e| io_err(dir, e))?;
        if !entry.file_type().is_ok_and(|t| t.is_dir()) {
            continue;
        }
        if let Ok(name) = entry.file_name().into_string() {
            out.push(name);
        }
    }
    Ok(out)
}

/// Digests named by `<dir>/<alg>/<hex>/` folders, sorted.
fn digest_dirs(dir: &Path) -> Result<Vec<Digest>> {
    let mut out = Vec::new();
    for alg in child_dirs(dir)? {
        if Algorithm::parse(&alg).is_none() {
            continue;
        }
        for hex in child_dirs(&dir.join(&alg))? {
            if let Ok(d) = format!("{alg}:{hex}").parse::<Digest>() {
                out.push(d);
            }
        }
    }
    out.sort();
    Ok(out)
}

fn modified(path: &Path) -> Option<SystemTime> {
    std::fs::symlink_metadata(path)
        .and_then(|m| m.modified())
        .ok()
}

/// Removes `dir/file` and then `dir`; whatever else is in `dir` goes too. `false` when
/// neither was there. The common case costs two system calls.
fn remove_leaf(dir: &Path, file: &str) -> Result<bool> {
    let file_gone = match std::fs::remove_file(dir.join(file)) {
        Ok(()) => true,
        Err(e) if e.kind() == ErrorKind::NotFound => false,
        Err(e) => return Err(io_err(dir, e)),
    };
    match std::fs::remove_dir(dir) {
        Ok(()) => Ok(true),
        Err(e) if e.kind() == ErrorKind::NotFound => Ok(file_gone),
        // Not empty (a temp file left by a cut write, say): remove it whole.
        Err(_) => match std::fs::remove_dir_all(dir) {
            Ok(()) => Ok(true),
            Err(e) if e.kind() == ErrorKind::NotFound => Ok(file_gone),
            Err(e) => Err(io_err(dir, e)),
        },
    }
}

/// The folder of a `…/link` path.
fn link_dir(mut link: PathBuf) -> PathBuf {
    link.pop();
    link
}

fn remove_tree(dir: &Path) -> Result<()> {
    match std::fs::remove_dir_all(dir) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == ErrorKind::NotFound => Ok(()),
        Err(e) => Err(io_err(dir, e)),
    }
}

impl Inventory {
    fn full(&self, spec: PathSpec<'_>) -> PathBuf {
        self.root.join(path_for(spec))
    }

    /// Every repository folder that holds manifests, layer links or uploads, sorted.
    pub fn repositories(&self) -> Result<Vec<RepoName>> {
        let mut names = Vec::new();
        super::walk_repos(&self.full(PathSpec::RepositoriesRoot), "", &mut names);
        let mut repos: Vec<RepoName> = names
            .iter()
            .filter_map(|n| RepoName::parse(n).ok())
            .collect();
        repos.sort();
        Ok(repos)
    }

    /// The manifest revisions of `name`.
    pub fn revisions(&self, name: &RepoName) -> Result<Vec<Digest>> {
        digest_dirs(&self.full(PathSpec::ManifestRevisionsDir(name)))
    }

    /// The layer links of `name`.
    pub fn layer_links(&self, name: &RepoName) -> Result<Vec<Digest>> {
        digest_dirs(&self.full(PathSpec::LayersDir(name)))
    }

    /// The subjects of `name` that have a referrers index.
    pub fn referrer_subjects(&self, name: &RepoName) -> Result<Vec<Digest>> {
        digest_dirs(&self.full(PathSpec::ReferrersRoot(name)))
    }

    /// The referrers indexed for `subject` in `name`.
    pub fn referrers(&self, name: &RepoName, subject: &Digest) -> Result<Vec<Digest>> {
        digest_dirs(&self.full(PathSpec::ReferrersDir(name, subject)))
    }

    /// The tags of `name` with what each points at (`None` for a tag folder without a
    /// readable current link).
    pub fn tags(&self, name: &RepoName) -> Result<Vec<(Tag, Option<Digest>)>> {
        let mut out = Vec::new();
        let mut names = child_dirs(&self.full(PathSpec::TagsDir(name)))?;
        names.sort();
        for t in names {
            let Ok(tag) = Tag::parse(&t) else {
                continue;
            };
            let link = self.full(PathSpec::TagCurrentLink(name, &tag));
            let target = match std::fs::read(&link) {
                Ok(b) => String::from_utf8_lossy(&b).trim().parse::<Digest>().ok(),
                Err(e) if e.kind() == ErrorKind::NotFound => None,
                Err(e) => return Err(io_err(&link, e)),
            };
            out.push((tag, target));
        }
        Ok(out)
    }

    /// Every digest a tag's index (its history) holds.
    pub fn tag_index(&self, name: &RepoName, tag: &Tag) -> Result<Vec<Digest>> {
        digest_dirs(&self.full(PathSpec::TagIndexDir(name, tag)))
    }

    /// A manifest's bytes from the pool; `None` when the blob is not there.
    pub fn manifest_bytes(&self, digest: &Digest) -> Result<Option<Vec<u8>>> {
        let p = self.full(PathSpec::BlobData(digest));
        match std::fs::read(&p) {
            Ok(b) => Ok(Some(b)),
            Err(e) if e.kind() == ErrorKind::NotFound => Ok(None),
            Err(e) => Err(io_err(&p, e)),
        }
    }

    /// Modification time of a revision link (the epoch when it is gone).
    pub fn revision_time(&self, name: &RepoName, digest: &Digest) -> SystemTime {
        modified(&self.full(PathSpec::ManifestRevisionLink(name, digest)))
            .unwrap_or(SystemTime::UNIX_EPOCH)
    }

    /// Modification time of a layer link (the epoch when it is gone).
    pub fn layer_link_time(&self, name: &RepoName, digest: &Digest) -> SystemTime {
        modified(&self.full(PathSpec::LayerLink(name, digest))).unwrap_or(SystemTime::UNIX_EPOCH)
    }

    /// The pool's shards, sorted.
    pub fn pool_shards(&self) -> Result<Vec<PoolShard>> {
        let root = self.full(PathSpec::BlobsRoot);
        let mut out = Vec::new();
        for alg in child_dirs(&root)? {
            let Some(algorithm) = Algorithm::parse(&alg) else {
                continue;
            };
            let dir = root.join(&alg);
            for hh in child_dirs(&dir)? {
                out.push(PoolShard {
                    algorithm,
                    dir: dir.join(hh),
                });
            }
        }
        out.sort_by(|a, b| a.dir.cmp(&b.dir));
        Ok(out)
    }

    /// The hex digests of the blob folders in one shard, sorted.
    pub fn shard_entries(&self, shard: &PoolShard) -> Result<Vec<String>> {
        let mut names = child_dirs(&shard.dir)?;
        names.sort();
        Ok(names)
    }

    /// Size and modification time of a pool blob's data; `None` when the folder has no
    /// data (a deletion cut short), with the folder's own time.
    pub fn pool_blob_meta(&self, digest: &Digest) -> Result<(Option<u64>, SystemTime)> {
        let data = self.full(PathSpec::BlobData(digest));
        match std::fs::symlink_metadata(&data) {
            Ok(m) => Ok((
                Some(m.len()),
                m.modified().unwrap_or(SystemTime::UNIX_EPOCH),
            )),
            Err(e) if e.kind() == ErrorKind::NotFound => {
                let t = modified(&self.full(PathSpec::BlobDir(digest)))
                    .unwrap_or(SystemTime::UNIX_EPOCH);
                Ok((None, t))
            }
            Err(e) => Err(io_err(&data, e)),
        }
    }

    /// Removes a blob from the pool; `false` when it was not there.
    pub fn remove_pool_blob(&self, digest: &Digest) -> Result<bool> {
        let r = remove_leaf(&self.full(PathSpec::BlobDir(digest)), "data");
        self.cache.invalidate_blob(digest);
        r
    }

    /// Removes a layer link; `false` when it was not there.
    pub fn remove_layer_link(&self, name: &RepoName, digest: &Digest) -> Result<bool> {
        let r = remove_leaf(&self.full(PathSpec::LayerDir(name, digest)), "link");
        self.cache
            .invalidate_link(&path_for(PathSpec::LayerLink(name, digest)));
        r
    }

    /// Removes a manifest revision of `name`: the tag-history entries naming it (of
    /// `tags`, the tags whose index holds it; every tag of the repository when `None`),
    /// its entry in its subject's referrers index, its own referrers index, and last its
    /// revision link.
    pub fn remove_revision(
        &self,
        name: &RepoName,
        digest: &Digest,
        tags: Option<&[Tag]>,
    ) -> Result<()> {
        let all;
        let tags = match tags {
            Some(t) => t,
            None => {
                all = self
                    .tags(name)?
                    .into_iter()
                    .map(|(t, _)| t)
                    .collect::<Vec<_>>();
                &all
            }
        };
        for tag in tags {
            remove_leaf(
                &link_dir(self.full(PathSpec::TagIndexLink(name, tag, digest))),
                "link",
            )?;
        }
        if let Some(body) = self.manifest_bytes(digest)?
            && let Ok(m) = manifest::parse(&body, None)
            && let Some(subject) = &m.subject
        {
            remove_leaf(
                &link_dir(self.full(PathSpec::ReferrerLink(name, subject, digest))),
                "link",
            )?;
        }
        remove_tree(&self.full(PathSpec::ReferrersDir(name, digest)))?;
        let r = remove_leaf(
            &self.full(PathSpec::ManifestRevisionDir(name, digest)),
            "link",
        );
        self.cache
            .invalidate_link(&path_for(PathSpec::ManifestRevisionLink(name, digest)));
        r.map(|_| ())
    }
}
