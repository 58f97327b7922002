//! What a collector needs to enumerate and remove, expressed in the store's own terms:
//! repositories, manifest revisions, layer links, referrer entries and pool blobs, each
//! with the modification time the grace period is judged by. The collector decides;
//! this module only lists and deletes what it is told to.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::SystemTime;

use crate::digest::{Algorithm, Digest};
use crate::names::{RepoName, Tag};
use crate::storage::driver::writer_state_path;
use crate::storage::{DriverError, PathSpec, PendingUpload, WalkEntry, path_for};
use crate::store::Store;
use crate::{Error, Result};

mod blocking;
mod objects;

use blocking::{Disk, DiskDir};
use objects::{Objects, ObjectsDir};

/// The store, as the collector walks and sweeps it from a blocking thread (cheap to
/// clone and send): on the filesystem, plain system calls relative to held-open
/// folders (`blocking`); on any other driver (S3), driver calls run on the server's
/// runtime, listings that carry every leaf's time, and batch deletes (`objects`).
#[derive(Clone)]
pub struct Inventory(Backend);

#[derive(Clone)]
enum Backend {
    Disk(Disk),
    Objects(Objects),
}

/// One shard of the pool: the folder `blobs/<alg>/<hh>` holding the blobs whose hex
/// digest starts with `hh`.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct PoolShard {
    pub algorithm: Algorithm,
    hh: String,
}

/// A folder of `<hex>/<file>` leaves (a pool shard, a repository's `_layers/<alg>`) as
/// the sweep holds it: open on the filesystem (every `stat` and removal relative to
/// it), listed once on S3 (every leaf's size and `LastModified` from the listing).
pub struct LeafDir(Leaves);

enum Leaves {
    Disk(DiskDir),
    Objects(ObjectsDir),
}

impl LeafDir {
    /// Size and modification time of a leaf's file; when the file is missing (a removal
    /// cut short, or a write that has made the folder and not yet put its file in it),
    /// `None` with the folder's (the other keys') time; no time at all when that is gone
    /// too. A caller must treat a missing time as new, never as old.
    pub fn meta(&self, hex: &str) -> Result<(Option<u64>, Option<SystemTime>)> {
        match &self.0 {
            Leaves::Disk(d) => d.meta(hex),
            Leaves::Objects(o) => Ok(o.meta(hex)),
        }
    }

    /// Modification time of a leaf's file; `None` when it is not there (yet): a caller
    /// must treat that as new, never as old.
    pub fn time(&self, hex: &str) -> Option<SystemTime> {
        match &self.0 {
            Leaves::Disk(d) => d.time(hex),
            Leaves::Objects(o) => o.time(hex),
        }
    }

    /// The leaves' names (hex digests), sorted.
    pub fn entries(&self) -> Result<Vec<String>> {
        match &self.0 {
            Leaves::Disk(d) => d.entries(),
            Leaves::Objects(o) => Ok(o.entries()),
        }
    }

    /// Whether removals from this folder should go in batches
    /// ([`Inventory::remove_pool_blobs`], [`Inventory::remove_layer_links`]): one
    /// request per 1,000 keys on S3; on disk every removal is its own system calls.
    pub fn batches(&self) -> bool {
        matches!(self.0, Leaves::Objects(_))
    }
}

fn mismatch() -> Error {
    Error::internal("a folder of one storage backend handed to another")
}

impl Store {
    /// A handle for the blocking walk of a collection. Must be called inside a tokio
    /// runtime on a store that is not on the filesystem (its driver calls run there).
    pub fn inventory(&self) -> Result<Inventory> {
        Ok(Inventory(match &self.fs_root {
            Some(fs) => Backend::Disk(Disk::new(fs.root().to_path_buf(), self.cache.clone())),
            None => Backend::Objects(
                Objects::new(self.driver.clone(), self.cache.clone())
                    .ok_or_else(|| Error::internal("the collector needs a tokio runtime"))?,
            ),
        }))
    }
}

/// The same call on either backend.
macro_rules! each {
    ($inv:expr, $b:ident => $e:expr) => {
        match &$inv.0 {
            Backend::Disk($b) => $e,
            Backend::Objects($b) => $e,
        }
    };
}

impl Inventory {
    /// Every repository folder that holds manifests, layer links or uploads, sorted.
    pub fn repositories(&self) -> Result<Vec<RepoName>> {
        let names = each!(self, b => b.repository_names())?;
        let mut repos: Vec<RepoName> = names
            .iter()
            .filter_map(|n| RepoName::parse(n).ok())
            .collect();
        repos.sort();
        Ok(repos)
    }

    /// The manifest revisions of `name`.
    pub fn revisions(&self, name: &RepoName) -> Result<Vec<Digest>> {
        each!(self, b => b.revisions(name))
    }

    /// The layer links of `name`.
    pub fn layer_links(&self, name: &RepoName) -> Result<Vec<Digest>> {
        each!(self, b => b.layer_links(name))
    }

    /// The subjects of `name` that have a referrers index.
    pub fn referrer_subjects(&self, name: &RepoName) -> Result<Vec<Digest>> {
        each!(self, b => b.referrer_subjects(name))
    }

    /// The referrers indexed for `subject` in `name`.
    pub fn referrers(&self, name: &RepoName, subject: &Digest) -> Result<Vec<Digest>> {
        each!(self, b => b.referrers(name, subject))
    }

    /// The tags of `name`, sorted, without reading their links.
    pub fn tag_names(&self, name: &RepoName) -> Result<Vec<Tag>> {
        each!(self, b => b.tag_names(name))
    }

    /// The tags of `name` with what each points at (`None` for a tag folder without a
    /// readable current link).
    pub fn tags(&self, name: &RepoName) -> Result<Vec<(Tag, Option<Digest>)>> {
        each!(self, b => b.tags(name))
    }

    /// The digests of `algorithms` that a tag's index (its history) holds. A sweep asks
    /// only for the algorithms of the revisions it removes: the folder of any other
    /// (usually `sha512`, usually missing) would be a lookup per tag for nothing.
    pub fn tag_index(
        &self,
        name: &RepoName,
        tag: &Tag,
        algorithms: &[Algorithm],
    ) -> Result<Vec<Digest>> {
        each!(self, b => b.tag_index(name, tag, algorithms))
    }

    /// A manifest's bytes from the pool; `None` when the blob is not there.
    pub fn manifest_bytes(&self, digest: &Digest) -> Result<Option<Vec<u8>>> {
        each!(self, b => b.manifest_bytes(digest))
    }

    /// Modification time of a revision link; `None` when it is not there: gone, or its
    /// folder made by a write that has not yet put the link into it. A caller must
    /// treat that as new, never as old.
    pub fn revision_time(&self, name: &RepoName, digest: &Digest) -> Option<SystemTime> {
        each!(self, b => b.revision_time(name, digest))
    }

    /// The pool's shards, sorted.
    pub fn pool_shards(&self) -> Result<Vec<PoolShard>> {
        each!(self, b => b.pool_shards())
    }

    /// A pool shard held for the sweep; `None` when it is gone.
    pub fn open_shard(&self, shard: &PoolShard) -> Result<Option<LeafDir>> {
        Ok(match &self.0 {
            Backend::Disk(b) => b.open_shard(shard)?.map(|d| LeafDir(Leaves::Disk(d))),
            Backend::Objects(b) => b.open_shard(shard)?.map(|d| LeafDir(Leaves::Objects(d))),
        })
    }

    /// A repository's `_layers/<alg>` folder held for the sweep; `None` when it is not
    /// there.
    pub fn open_layer_links(&self, name: &RepoName, alg: Algorithm) -> Result<Option<LeafDir>> {
        Ok(match &self.0 {
            Backend::Disk(b) => b
                .open_layer_links(name, alg)?
                .map(|d| LeafDir(Leaves::Disk(d))),
            Backend::Objects(b) => b
                .open_layer_links(name, alg)?
                .map(|d| LeafDir(Leaves::Objects(d))),
        })
    }

    /// Removes a blob of the shard `dir` from the pool; `false` when it was not there
    /// (on S3: when the listing did not show it).
    pub fn remove_pool_blob(&self, dir: &LeafDir, digest: &Digest) -> Result<bool> {
        match (&self.0, &dir.0) {
            (Backend::Disk(b), Leaves::Disk(d)) => b.remove_pool_blob(d, digest),
            (Backend::Objects(b), Leaves::Objects(d)) => {
                let there = d.meta(digest.hex()).1.is_some();
                b.remove_pool_blobs(d, std::slice::from_ref(digest))?;
                Ok(there)
            }
            _ => Err(mismatch()),
        }
    }

    /// Removes the blobs `digests` of the shard `dir` from the pool, in batches where
    /// the backend has them.
    pub fn remove_pool_blobs(&self, dir: &LeafDir, digests: &[Digest]) -> Result<()> {
        match (&self.0, &dir.0) {
            (Backend::Objects(b), Leaves::Objects(d)) => b.remove_pool_blobs(d, digests),
            _ => {
                for d in digests {
                    self.remove_pool_blob(dir, d)?;
                }
                Ok(())
            }
        }
    }

    /// Removes a layer link of `name` from its `_layers/<alg>` folder `dir`; `false`
    /// when it was not there.
    pub fn remove_layer_link(
        &self,
        dir: &LeafDir,
        name: &RepoName,
        digest: &Digest,
    ) -> Result<bool> {
        match (&self.0, &dir.0) {
            (Backend::Disk(b), Leaves::Disk(d)) => b.remove_layer_link(d, name, digest),
            (Backend::Objects(b), Leaves::Objects(d)) => {
                let there = d.meta(digest.hex()).1.is_some();
                b.remove_layer_links(d, name, std::slice::from_ref(digest))?;
                Ok(there)
            }
            _ => Err(mismatch()),
        }
    }

    /// Removes the layer links `digests` of `name` from `dir`, in batches where the
    /// backend has them.
    pub fn remove_layer_links(
        &self,
        dir: &LeafDir,
        name: &RepoName,
        digests: &[Digest],
    ) -> Result<()> {
        match (&self.0, &dir.0) {
            (Backend::Objects(b), Leaves::Objects(d)) => b.remove_layer_links(d, name, digests),
            _ => {
                for d in digests {
                    self.remove_layer_link(dir, name, d)?;
                }
                Ok(())
            }
        }
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
                all = self.tag_names(name)?;
                &all
            }
        };
        each!(self, b => b.remove_revision(name, digest, tags))
    }
}

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
        let files = self.files_named(&path_for(dir), "link").await?;
        Ok(files
            .into_iter()
            .filter_map(|e| digest_of_rel(&e.path).map(|d| (d, e.modified)))
            .collect())
    }

    /// The files called `name` below `prefix` (paths relative to it), through the
    /// driver's walk: on S3 listings in parallel.
    async fn files_named(&self, prefix: &str, name: &str) -> Result<Vec<WalkEntry>> {
        use futures::TryStreamExt;
        let suffix = format!("/{name}");
        Ok(self
            .driver
            .walk(prefix)
            .try_filter(|e| std::future::ready(e.path.ends_with(&suffix)))
            .try_collect()
            .await?)
    }

    /// Every blob in the pool.
    pub async fn pool_blobs(&self) -> Result<Vec<PoolBlob>> {
        let files = self
            .files_named(&path_for(PathSpec::BlobsRoot), "data")
            .await?;
        Ok(files
            .into_iter()
            .filter_map(|e| {
                // <alg>/<hh>/<hex>/data
                let mut parts = e.path.split('/');
                let alg = parts.next()?;
                let _hh = parts.next()?;
                let hex = parts.next()?;
                let digest = format!("{alg}:{hex}").parse().ok()?;
                Some(PoolBlob {
                    digest,
                    size: e.size,
                    modified: e.modified,
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
    /// What its writer held at the listing ([`Driver::writer_size`]; `None` without a
    /// writer): a purge that finds another size knows the session was written since,
    /// whatever a clock of one-second steps (S3's `LastModified`) says.
    ///
    /// [`Driver::writer_size`]: crate::storage::Driver::writer_size
    pub size: Option<u64>,
    /// The driver's pending uploads at its data key ([`PendingUpload`]: on S3 its
    /// multipart upload, and any a crash left there before its state named it).
    pub pending: Vec<PendingUpload>,
}

/// The upload sessions of a store, and the pending uploads no session owns (a crash left
/// them: a blob's multipart copy cut short, a session whose keys went and whose
/// multipart upload stayed).
#[derive(Debug, Default)]
pub struct UploadSessions {
    pub sessions: Vec<UploadSession>,
    pub orphans: Vec<PendingUpload>,
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
    /// Every upload session with the time of its last activity, and the driver's pending
    /// uploads that belong to none. The pending uploads are listed first: one that
    /// begins after that listing is not seen at all, and one seen belongs to a session
    /// that the second listing shows unless that session ended meanwhile.
    pub async fn upload_sessions(&self) -> Result<UploadSessions> {
        let mut pending: BTreeMap<String, Vec<PendingUpload>> = BTreeMap::new();
        for p in self.driver.pending_uploads("").await? {
            pending.entry(p.path.clone()).or_default().push(p);
        }
        let mut out = UploadSessions::default();
        for repo in self.repositories_all().await? {
            for id in self.list(PathSpec::UploadsDir(&repo)).await? {
                let last_active = self.upload_last_active(&repo, &id).await;
                let size = self.session_writer_size(&repo, &id).await?;
                let data = path_for(PathSpec::UploadData(&repo, &id));
                out.sessions.push(UploadSession {
                    repository: repo.clone(),
                    pending: pending.remove(&data).unwrap_or_default(),
                    id,
                    last_active,
                    size,
                });
            }
        }
        out.orphans = pending.into_values().flatten().collect();
        Ok(out)
    }

    /// What a session's writer holds as of its last flush; `None` without a writer, or
    /// with a state that cannot be read (the session is judged by its clock alone).
    async fn session_writer_size(&self, repo: &RepoName, id: &str) -> Result<Option<u64>> {
        match self
            .driver
            .writer_size(&path_for(PathSpec::UploadData(repo, id)))
            .await
        {
            Ok(n) => Ok(Some(n)),
            Err(e) if e.is_not_found() => Ok(None),
            Err(e @ DriverError::Unavailable { .. }) => Err(e.into()),
            Err(e) => {
                tracing::warn!(repository = %repo, id, error = %e, "an upload session's writer state does not read");
                Ok(None)
            }
        }
    }

    /// When a session last did something: the latest of its `startedat`, its data
    /// file's, its writer state's (every flush rewrites it: on S3 the data key appears
    /// only at completion, so this is its clock there) and its folder's modification
    /// times (the epoch when none is readable).
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
        let data = path_for(PathSpec::UploadData(repo, id));
        let mtime =
            |path: String| async move { self.driver.stat(&path).await.ok().map(|i| i.modified) };
        let state = mtime(writer_state_path(&data)).await;
        let data = mtime(data).await;
        let dir = mtime(path_for(PathSpec::UploadDir(repo, id))).await;
        [started, data, state, dir]
            .into_iter()
            .flatten()
            .max()
            .unwrap_or(SystemTime::UNIX_EPOCH)
    }

    /// Removes an upload session listed by [`Store::upload_sessions`] that has been idle
    /// for `max_age` — judged again under the session's lock, so a chunk written since it
    /// was listed (its writer's size moved, or its clock) or being written now (the lock
    /// waits for it) keeps the session. Its pending uploads are aborted before its keys
    /// go (a crash in between leaves keys that the next run finds idle). Returns whether
    /// it went.
    pub async fn purge_upload(
        &self,
        session: &UploadSession,
        max_age: std::time::Duration,
    ) -> Result<bool> {
        let name = &session.repository;
        self.with_upload_session(name, &session.id, |id| async move {
            let last = self.upload_last_active(name, &id).await;
            let idle = SystemTime::now()
                .duration_since(last)
                .unwrap_or(std::time::Duration::ZERO);
            if idle < max_age || self.session_writer_size(name, &id).await? != session.size {
                return Ok(false);
            }
            // Its writer is not resumed to be cancelled (on disk that may hash the whole
            // file again): what it holds outside the keys is its pending uploads, listed
            // by key (whatever its state says), and the folder's removal takes the rest.
            for p in &session.pending {
                self.driver.abort_pending(p).await?;
            }
            self.remove(PathSpec::UploadDir(name, &id)).await
        })
        .await
    }

    /// Aborts a pending upload that no session owns.
    pub async fn abort_pending(&self, upload: &PendingUpload) -> Result<()> {
        Ok(self.driver.abort_pending(upload).await?)
    }

    /// Re-hashes a pool blob with its own algorithm, bypassing every cache: streamed
    /// through the driver's reader (memory stays one chunk whatever the blob's size).
    pub async fn verify_pool_blob(&self, digest: &Digest) -> Result<BlobHealth> {
        use futures::TryStreamExt;
        let path = path_for(PathSpec::BlobData(digest));
        let mut body = match self.driver.reader(&path, 0, None).await {
            Ok(r) => r.body,
            Err(e) if e.is_not_found() => return Ok(BlobHealth::Missing),
            Err(e) => return Err(e.into()),
        };
        let mut h = crate::digest::Hasher::new(digest.algorithm());
        loop {
            match body.try_next().await {
                Ok(Some(chunk)) => h.update(&chunk),
                Ok(None) => break,
                Err(e) if e.is_not_found() => return Ok(BlobHealth::Missing),
                Err(e) => return Err(e.into()),
            }
        }
        let actual = h.finish();
        if &actual == digest {
            Ok(BlobHealth::Ok)
        } else {
            Ok(BlobHealth::Corrupt { actual })
        }
    }

    /// Moves a pool blob into the quarantine folder (never deletes it); from then on it
    /// is unknown to clients, so they push it again. Returns where it went: the folder's
    /// path on the filesystem, its key under the root elsewhere. A move on S3 is a copy
    /// and then a delete: a crash between leaves the blob in the pool and a copy in
    /// quarantine (the next scrub moves it again), never a blob that is in neither.
    pub async fn quarantine_pool_blob(&self, digest: &Digest) -> Result<String> {
        let secs = SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0);
        let to = path_for(PathSpec::Quarantine(digest, secs));
        let r = self
            .driver
            .rename(
                &path_for(PathSpec::BlobData(digest)),
                &path_for(PathSpec::QuarantineData(digest, secs)),
            )
            .await;
        self.cache.invalidate_blob(digest);
        r?;
        Ok(match &self.fs_root {
            Some(fs) => fs.full(&to).display().to_string(),
            None => to,
        })
    }

    /// Whether the pool has a blob, asking the driver (not the cache).
    pub async fn pool_blob_on_disk(&self, digest: &Digest) -> Result<bool> {
        match self
            .driver
            .stat(&path_for(PathSpec::BlobData(digest)))
            .await
        {
            Ok(s) => Ok(!s.is_dir),
            Err(e) if e.is_not_found() => Ok(false),
            Err(e) => Err(e.into()),
        }
    }

    /// Tags of `name` with the digest they point at and when they were last pushed.
    pub async fn tags_with_time(&self, name: &RepoName) -> Result<Vec<(Tag, Digest, SystemTime)>> {
        let mut out = Vec::new();
        for tag in self.tags(name).await? {
            let link = path_for(PathSpec::TagCurrentLink(name, &tag));
            let Ok(info) = self.driver.stat(&link).await else {
                continue;
            };
            if let Some(d) = self.resolve_tag(name, &tag).await? {
                out.push((tag, d, info.modified));
            }
        }
        Ok(out)
    }
}
