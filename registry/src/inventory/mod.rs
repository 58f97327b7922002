//! What a collector needs to enumerate and remove, expressed in the store's own terms:
//! repositories, manifest revisions, layer links, referrer entries and pool blobs, each
//! with the modification time the grace period is judged by. The collector decides;
//! this module only lists and deletes what it is told to.

use std::path::Path;
use std::time::SystemTime;

use crate::digest::Digest;
use crate::names::{RepoName, Tag};
use crate::storage::{PathSpec, path_for};
use crate::store::Store;
use crate::{Error, Result};

mod blocking;
pub use blocking::{Inventory, LeafDir, PoolShard};

/// A digest named by a `<alg>/<hex>/<file>` relative path.
fn digest_of_rel(rel: &str) -> Option<Digest> {
    let mut parts = rel.split('/');
    let alg = parts.next()?;
    let hex = parts.next()?;
    format!("{alg}:{hex}").parse().ok()
}

/// A pool blob: digest, size and modification time.
#[derive(Debug, Clone)]
pub struct PoolBlob {
    pub digest: Digest,
    pub size: u64,
    pub modified: SystemTime,
}

impl Store {
    /// Every repository folder that holds manifests, layer links or uploads, sorted.
    pub async fn repositories_all(&self) -> Result<Vec<RepoName>> {
        let inv = self.inventory()?;
        tokio::task::spawn_blocking(move || inv.repositories())
            .await
            .map_err(Error::internal)?
    }

    /// Manifest revisions of `name` with their link's modification time.
    pub async fn revisions_with_time(&self, name: &RepoName) -> Result<Vec<(Digest, SystemTime)>> {
        self.links_with_time(PathSpec::ManifestRevisionsDir(name))
            .await
    }

    /// Layer links of `name` with their modification time.
    pub async fn layer_links(&self, name: &RepoName) -> Result<Vec<(Digest, SystemTime)>> {
        self.links_with_time(PathSpec::LayersDir(name)).await
    }

    /// The `<alg>/<hex>/link` files below `dir`, with their modification time.
    async fn links_with_time(&self, dir: PathSpec<'_>) -> Result<Vec<(Digest, SystemTime)>> {
        let files = self.fs()?.walk_files(&path_for(dir), "link").await?;
        Ok(files
            .into_iter()
            .filter_map(|(rel, info)| digest_of_rel(&rel).map(|d| (d, info.modified)))
            .collect())
    }

    /// Every blob in the pool.
    pub async fn pool_blobs(&self) -> Result<Vec<PoolBlob>> {
        let files = self
            .fs()?
            .walk_files(&path_for(PathSpec::BlobsRoot), "data")
            .await?;
        Ok(files
            .into_iter()
            .filter_map(|(rel, info)| {
                // <alg>/<hh>/<hex>/data
                let mut parts = rel.split('/');
                let alg = parts.next()?;
                let _hh = parts.next()?;
                let hex = parts.next()?;
                let digest = format!("{alg}:{hex}").parse().ok()?;
                Some(PoolBlob {
                    digest,
                    size: info.size,
                    modified: info.modified,
                })
            })
            .collect())
    }

    /// Removes an (untagged) manifest revision of `name`: its revision link, tag history
    /// entries naming it, its entry in its subject's referrers index, and its own
    /// referrers index (see [`Inventory::remove_revision`]).
    pub async fn remove_revision(&self, name: &RepoName, digest: &Digest) -> Result<()> {
        let inv = self.inventory()?;
        let (name, digest) = (name.clone(), digest.clone());
        tokio::task::spawn_blocking(move || inv.remove_revision(&name, &digest, None))
            .await
            .map_err(Error::internal)?
    }
}

/// Repository folders: any folder with `_manifests`, `_layers` or `_uploads`.
fn walk_repos(dir: &Path, prefix: &str, out: &mut Vec<String>) {
    let Ok(rd) = std::fs::read_dir(dir) else {
        return;
    };
    let mut is_repo = false;
    for e in rd.filter_map(|e| e.ok()) {
        if !e.file_type().is_ok_and(|t| t.is_dir()) {
            continue;
        }
        let Some(c) = e.file_name().to_str().map(str::to_owned) else {
            continue;
        };
        if c == "_manifests" || c == "_layers" || c == "_uploads" {
            is_repo = true;
        } else if !c.starts_with('_') && !c.starts_with('.') {
            let p = if prefix.is_empty() {
                c.clone()
            } else {
                format!("{prefix}/{c}")
            };
            walk_repos(&e.path(), &p, out);
        }
    }
    if is_repo && !prefix.is_empty() {
        out.push(prefix.to_owned());
    }
}

/// An upload session and when it was last active.
#[derive(Debug, Clone)]
pub struct UploadSession {
    pub repository: RepoName,
    pub id: String,
    pub last_active: SystemTime,
}

/// What the scrubber found about one pool blob.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BlobHealth {
    Ok,
    /// The bytes hash to another digest.
    Corrupt {
        actual: Digest,
    },
    /// Gone between listing and checking.
    Missing,
}

impl Store {
    /// Every upload session with the time of its last activity (the later of its
    /// `startedat` and its data file's modification time).
    pub async fn upload_sessions(&self) -> Result<Vec<UploadSession>> {
        let mut out = Vec::new();
        for repo in self.repositories_all().await? {
            for id in self.list(PathSpec::UploadsDir(&repo)).await? {
                let last_active = self.upload_last_active(&repo, &id).await;
                out.push(UploadSession {
                    repository: repo.clone(),
                    id,
                    last_active,
                });
            }
        }
        Ok(out)
    }

    /// When a session last did something: the latest of its `startedat`, its data
    /// file's and its folder's modification times (the epoch when none is readable).
    async fn upload_last_active(&self, repo: &RepoName, id: &str) -> SystemTime {
        let started = self
            .driver
            .get(&path_for(PathSpec::UploadStartedAt(repo, id)))
            .await
            .ok()
            .and_then(|(b, _)| {
                time::OffsetDateTime::parse(
                    String::from_utf8_lossy(&b).trim(),
                    &time::format_description::well_known::Rfc3339,
                )
                .ok()
            })
            .map(SystemTime::from);
        let mtime = |spec| async move {
            self.driver
                .stat(&path_for(spec))
                .await
                .ok()
                .map(|i| i.modified)
        };
        let data = mtime(PathSpec::UploadData(repo, id)).await;
        let dir = mtime(PathSpec::UploadDir(repo, id)).await;
        [started, data, dir]
            .into_iter()
            .flatten()
            .max()
            .unwrap_or(SystemTime::UNIX_EPOCH)
    }

    /// Removes an upload session that has been idle for `max_age` — judged again under
    /// the session's lock, so a chunk written since it was listed (or being written
    /// now: the lock waits for it) keeps the session. Returns whether it went.
    pub async fn purge_upload(
        &self,
        name: &RepoName,
        id: &str,
        max_age: std::time::Duration,
    ) -> Result<bool> {
        self.with_upload_session(name, id, |id| async move {
            let last = self.upload_last_active(name, &id).await;
            let idle = SystemTime::now()
                .duration_since(last)
                .unwrap_or(std::time::Duration::ZERO);
            if idle < max_age {
                return Ok(false);
            }
            self.remove(PathSpec::UploadDir(name, &id)).await
        })
        .await
    }

    /// Re-hashes a pool blob with its own algorithm, bypassing every cache.
    pub async fn verify_pool_blob(&self, digest: &Digest) -> Result<BlobHealth> {
        let path = self.fs()?.full(&path_for(PathSpec::BlobData(digest)));
        let algorithm = digest.algorithm();
        let hashed = tokio::task::spawn_blocking(move || {
            crate::upload::hash_file(&path, algorithm).map(|(_, h)| h.finish())
        })
        .await
        .map_err(Error::internal)?;
        match hashed {
            Ok(actual) if &actual == digest => Ok(BlobHealth::Ok),
            Ok(actual) => Ok(BlobHealth::Corrupt { actual }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(BlobHealth::Missing),
            Err(e) => Err(Error::internal(e)),
        }
    }

    /// Moves a pool blob into the quarantine folder (never deletes it); from then on it
    /// is unknown to clients, so they push it again. Returns the quarantine path.
    pub async fn quarantine_pool_blob(&self, digest: &Digest) -> Result<std::path::PathBuf> {
        let secs = SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0);
        let to = path_for(PathSpec::Quarantine(digest, secs));
        let r = self
            .fs()?
            .rename(&path_for(PathSpec::BlobDir(digest)), &to)
            .await;
        self.cache.invalidate_blob(digest);
        r?;
        Ok(self.fs()?.full(&to))
    }

    /// Whether the pool has a blob, asking the disk (not the cache).
    pub async fn pool_blob_on_disk(&self, digest: &Digest) -> Result<bool> {
        Ok(self
            .fs()?
            .exists(&path_for(PathSpec::BlobData(digest)))
            .await?)
    }

    /// Tags of `name` with the digest they point at and when they were last pushed.
    pub async fn tags_with_time(&self, name: &RepoName) -> Result<Vec<(Tag, Digest, SystemTime)>> {
        let mut out = Vec::new();
        for tag in self.tags(name).await? {
            let link = path_for(PathSpec::TagCurrentLink(name, &tag));
            let Ok(info) = self.fs()?.stat(&link).await else {
                continue;
            };
            if let Some(d) = self.resolve_tag(name, &tag).await? {
                out.push((tag, d, info.modified));
            }
        }
        Ok(out)
    }
}
