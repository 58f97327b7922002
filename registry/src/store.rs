//! The `Store`: one registry root, seen through the storage driver ([`Driver`]). The
//! domain modules (`blobs`, `upload`, `repository`, `manifest`) each add their part of
//! its API in their own `impl Store` block. The HTTP layer talks to nothing else.
//!
//! Blobs, manifests, tag and layer links and upload sessions are read and written
//! through the trait only, and so is the collector's walk on a store that is not on
//! the filesystem (`inventory`). The modules not yet moved onto it (issue 18:
//! `artifacts` beyond their uploads, scrub) still call the filesystem driver's own
//! methods through [`Store::fs`], which a store on S3 does not have: there they answer
//! [`Error::Unsupported`].

use std::sync::Arc;

use crate::cache::Cache;
use crate::digest::Digest;
use crate::liveness::{InProcess, Liveness};
use crate::storage::{Driver, FsDriver, PathSpec, PutMode, path_for};
use crate::upload::Sessions;
use crate::{Error, Result};

/// Options of the store that come from configuration.
#[derive(Debug, Clone)]
pub struct StoreOptions {
    /// Largest manifest accepted (bytes).
    pub manifest_max_bytes: u64,
    /// Allow `?mount=` without `from` when the blob is already in the pool.
    pub mount_without_from: bool,
    /// How long a blob linked but not yet referenced by a manifest is protected from an
    /// in-process collection.
    pub pending_ttl: std::time::Duration,
    /// The command run when an artifact format is finalised.
    pub post_process: Option<crate::artifacts::PostProcess>,
    /// Write large upload bodies with `O_DIRECT`, past the page cache.
    pub direct_writes: bool,
    /// Upload bodies received at once; past it, `429 TOOMANYREQUESTS`.
    pub max_uploads: usize,
    /// Answer blob GETs with a redirect to the driver's own URL where the driver can
    /// give one (S3: a presigned URL); `storage.redirect.disable` turns it off.
    pub redirect: bool,
}

impl Default for StoreOptions {
    fn default() -> Self {
        StoreOptions {
            manifest_max_bytes: 4 * 1024 * 1024,
            mount_without_from: false,
            pending_ttl: std::time::Duration::from_secs(3600),
            post_process: None,
            direct_writes: false,
            max_uploads: 256,
            redirect: true,
        }
    }
}

#[derive(Clone)]
pub struct Store {
    /// The backend, as the trait (timed by `storage::Metered` when the server keeps
    /// metrics).
    pub(crate) driver: Arc<dyn Driver>,
    /// The same filesystem root through its own methods, for the modules not yet on the
    /// trait (see the module docs); `None` on another backend, where those modules
    /// answer [`Error::Unsupported`].
    pub(crate) fs_root: Option<FsDriver>,
    pub(crate) sessions: Arc<Sessions>,
    pub(crate) options: Arc<StoreOptions>,
    pub(crate) liveness: Arc<dyn Liveness>,
    pub(crate) cache: Arc<Cache>,
    pub(crate) artifacts: Arc<crate::artifacts::Locks>,
    /// Serialises the writes of one tag (push, delete, retention's conditional delete).
    pub(crate) tag_locks: Arc<TagLocks>,
    /// One permit per upload body being received (`max_uploads`).
    pub(crate) upload_slots: Arc<tokio::sync::Semaphore>,
}

/// Striped locks over `repository:tag`: a tag's writes take its stripe, so a remover
/// that decided on what a tag pointed at can check it still does and remove it as one
/// step. Tag writes are one or two small files; stripes shared by chance only queue.
pub(crate) struct TagLocks([tokio::sync::Mutex<()>; 64]);

impl Default for TagLocks {
    fn default() -> Self {
        TagLocks(std::array::from_fn(|_| tokio::sync::Mutex::new(())))
    }
}

/// A tag's locks: this process's stripe, and the database's when replicas share the
/// store. Released on drop; [`TagGuard::release`] returns once other replicas can take it.
pub(crate) struct TagGuard<'a> {
    _local: tokio::sync::MutexGuard<'a, ()>,
    shared: Option<Box<dyn crate::liveness::Held>>,
}

impl TagGuard<'_> {
    pub(crate) async fn release(mut self) {
        if let Some(h) = self.shared.take() {
            h.release().await;
        }
    }
}

impl TagLocks {
    pub(crate) async fn lock(
        &self,
        name: &crate::names::RepoName,
        tag: &crate::names::Tag,
    ) -> tokio::sync::MutexGuard<'_, ()> {
        use std::hash::{Hash, Hasher};
        let mut h = std::collections::hash_map::DefaultHasher::new();
        (name.as_str(), tag.as_str()).hash(&mut h);
        self.0[(h.finish() % 64) as usize].lock().await
    }
}

/// `fs` calling the `Appending` test hook of `liveness` before each batch it writes.
fn hooked(fs: FsDriver, liveness: &Arc<dyn Liveness>) -> FsDriver {
    let live = liveness.clone();
    fs.with_append_hook(move || {
        live.hooks()
            .reach_blocking(crate::hooks::Point::Appending, None)
    })
}

impl Store {
    pub fn new(fs: FsDriver, options: StoreOptions) -> Store {
        let liveness: Arc<dyn Liveness> = Arc::new(InProcess::new(options.pending_ttl));
        let fs = hooked(fs, &liveness);
        Store::build(fs.as_driver(), Some(fs), options, liveness)
    }

    /// A store on any driver (an S3 bucket): the modules not yet on the trait answer
    /// [`Error::Unsupported`] (see the module docs).
    pub fn on_driver(driver: Arc<dyn Driver>, options: StoreOptions) -> Store {
        let liveness: Arc<dyn Liveness> = Arc::new(InProcess::new(options.pending_ttl));
        Store::build(driver, None, options, liveness)
    }

    fn build(
        driver: Arc<dyn Driver>,
        fs_root: Option<FsDriver>,
        options: StoreOptions,
        liveness: Arc<dyn Liveness>,
    ) -> Store {
        Store {
            driver,
            fs_root,
            sessions: Arc::new(Sessions::default()),
            liveness,
            cache: Arc::new(Cache::default()),
            artifacts: Arc::default(),
            tag_locks: Arc::default(),
            upload_slots: Arc::new(tokio::sync::Semaphore::new(options.max_uploads.max(1))),
            options: Arc::new(options),
        }
    }

    /// This store with a cache that holds nothing, for a process that serves no reads
    /// (the offline collector, CLI maintenance): its sweep then skips invalidating
    /// entries no one could have filled.
    pub fn without_cache(mut self) -> Store {
        self.cache = Arc::new(Cache::off());
        self
    }

    /// The storage driver.
    pub fn driver(&self) -> &Arc<dyn Driver> {
        &self.driver
    }

    /// The filesystem driver's own methods, for the modules not yet on [`Store::driver`];
    /// [`Error::Unsupported`] when the store is on another backend.
    pub fn fs(&self) -> Result<&FsDriver> {
        self.fs_root.as_ref().ok_or_else(|| {
            Error::Unsupported(format!(
                "this operation is not available on the {} storage driver yet",
                self.driver.name()
            ))
        })
    }

    /// The cache in front of the small reads (its lookup counts feed the metrics).
    pub fn cache(&self) -> &Arc<Cache> {
        &self.cache
    }

    pub fn options(&self) -> &StoreOptions {
        &self.options
    }

    /// The pins, journal and pending set shared with the removers (in this process, or
    /// every replica's through the database).
    pub fn liveness(&self) -> &Arc<dyn Liveness> {
        &self.liveness
    }

    /// This store coordinating its writers and removers through `liveness`. On a
    /// protocol shared with other servers (replicas) it keeps no cache: another replica's
    /// writes and removals would leave it stale (see [`crate::cache`]).
    pub fn with_liveness(mut self, liveness: Arc<dyn Liveness>) -> Store {
        if liveness.shared() {
            self.cache = Arc::new(Cache::off());
        }
        // The writers' test hook follows the protocol's hooks.
        if let Some(fs) = self.fs_root.take() {
            let fs = hooked(fs, &liveness);
            self.driver = fs.as_driver();
            self.fs_root = Some(fs);
        }
        self.liveness = liveness;
        self
    }

    /// Serialises the writes of `name:tag` within this process and, for replicas, with
    /// every other replica (retention's check-then-remove against a push elsewhere).
    pub(crate) async fn lock_tag(
        &self,
        name: &crate::names::RepoName,
        tag: &crate::names::Tag,
    ) -> Result<TagGuard<'_>> {
        let local = self.tag_locks.lock(name, tag).await;
        let shared = self
            .liveness
            .lock_tag(&format!("{}:{}", name.as_str(), tag.as_str()))
            .await?;
        Ok(TagGuard {
            _local: local,
            shared,
        })
    }

    /// Reads a link file (`sha256:<hex>`); `None` when it does not exist.
    pub(crate) async fn read_link(&self, spec: PathSpec<'_>) -> Result<Option<Digest>> {
        let path = path_for(spec);
        // Tag, revision and layer links are what every pull and push asks; the cache
        // answers them (writes and removals of these links invalidate, see `remove`).
        let cacheable = matches!(
            spec,
            PathSpec::TagCurrentLink(..)
                | PathSpec::ManifestRevisionLink(..)
                | PathSpec::LayerLink(..)
        );
        if cacheable && let Some(d) = self.cache.link(&path) {
            return Ok(Some(d));
        }
        let generation = self.cache.generation();
        match self.driver.get(&path).await {
            Ok((bytes, _)) => {
                let text = String::from_utf8_lossy(&bytes);
                let d = text
                    .trim()
                    .parse::<Digest>()
                    .map_err(|e| Error::Internal(format!("corrupt link file {path}: {}", e.0)))?;
                if cacheable {
                    self.cache.fill_link(&path, &d, generation);
                }
                Ok(Some(d))
            }
            Err(e) if e.is_not_found() => Ok(None),
            Err(e) => Err(e.into()),
        }
    }

    /// Writes a link file naming `digest`, atomically.
    pub(crate) async fn write_link(&self, spec: PathSpec<'_>, digest: &Digest) -> Result<()> {
        let path = path_for(spec);
        let r = self
            .driver
            .put(&path, digest.to_string().into(), PutMode::Overwrite)
            .await;
        self.cache.invalidate_link(&path);
        match spec {
            PathSpec::TagCurrentLink(n, _) | PathSpec::TagIndexLink(n, _, _) => {
                self.cache.invalidate_tag_list(n.as_str());
                self.cache.note_repository(n.as_str());
            }
            PathSpec::LayerLink(n, _) | PathSpec::ManifestRevisionLink(n, _) => {
                self.cache.note_repository(n.as_str())
            }
            _ => {}
        }
        r?;
        Ok(())
    }

    /// Removes a file or folder; `false` when it was not there. Whatever the cache held
    /// for it is invalidated. The driver removes the folders this empties (folders are
    /// implicit, as in a bucket), so the last link's removal can take its repository out
    /// of the catalog: the cached catalog is dropped when a removal did.
    pub(crate) async fn remove(&self, spec: PathSpec<'_>) -> Result<bool> {
        let r = self.driver.delete(&path_for(spec)).await;
        match spec {
            PathSpec::TagDir(n, t) => {
                self.cache
                    .invalidate_link(&path_for(PathSpec::TagCurrentLink(n, t)));
                self.cache.invalidate_tag_list(n.as_str());
            }
            PathSpec::Repository(n) => {
                self.cache.invalidate_tag_list(n.as_str());
                self.cache.invalidate_catalog();
            }
            PathSpec::TagsDir(n) => self.cache.invalidate_tag_list(n.as_str()),
            PathSpec::ManifestRevisionDir(n, d) => self
                .cache
                .invalidate_link(&path_for(PathSpec::ManifestRevisionLink(n, d))),
            PathSpec::LayerDir(n, d) => self
                .cache
                .invalidate_link(&path_for(PathSpec::LayerLink(n, d))),
            PathSpec::BlobDir(d) => self.cache.invalidate_blob(d),
            _ => {}
        }
        let repo = match spec {
            PathSpec::TagDir(n, _)
            | PathSpec::TagsDir(n)
            | PathSpec::ManifestRevisionDir(n, _)
            | PathSpec::LayerDir(n, _) => Some(n),
            _ => None,
        };
        if let Some(n) = repo
            && r.is_ok()
            && !self.repository_exists(n).await.unwrap_or(false)
        {
            self.cache.invalidate_catalog();
        }
        match r {
            Ok(()) => Ok(true),
            Err(e) if e.is_not_found() => Ok(false),
            Err(e) => Err(e.into()),
        }
    }

    /// Whether a file or folder exists.
    pub(crate) async fn exists(&self, spec: PathSpec<'_>) -> Result<bool> {
        match self.driver.stat(&path_for(spec)).await {
            Ok(_) => Ok(true),
            Err(e) if e.is_not_found() => Ok(false),
            Err(e) => Err(e.into()),
        }
    }

    /// Lists a folder's children; empty when it does not exist.
    pub(crate) async fn list(&self, spec: PathSpec<'_>) -> Result<Vec<String>> {
        match self.driver.list(&path_for(spec)).await {
            Ok(v) => Ok(v.into_iter().map(|e| e.name).collect()),
            Err(e) if e.is_not_found() => Ok(Vec::new()),
            Err(e) => Err(e.into()),
        }
    }
}
