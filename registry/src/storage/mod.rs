//! The storage driver: the only code that touches the disk. Its shape follows CNCF
//! Distribution's driver (small get/put, reader at an offset, stat, list, move, delete,
//! walk) over paths that [`paths::path_for`] builds. Every write lands under a temporary
//! name, is fsynced, renamed into place, and the folder is fsynced, so a crash leaves
//! either the old file or the new one, never a torn one.
//!
//! It knows nothing of digests, repositories or HTTP.

pub(crate) mod append;
pub mod driver;
mod fs;
mod hashstate;
pub mod metered;
pub mod paths;
pub mod s3;

use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::time::SystemTime;

pub use driver::{
    ByteStream, Capabilities, Committed, Driver, DriverError, DriverResult, Entry, PendingUpload,
    PutMode, Reader, Stat, Version, WalkEntry, Writer, WriterStart,
};
pub use paths::{PathSpec, path_for};

#[derive(Debug, thiserror::Error)]
pub enum StorageError {
    #[error("path not found: {0}")]
    NotFound(String),
    #[error("storage I/O error on {path}: {source}")]
    Io {
        path: String,
        #[source]
        source: io::Error,
    },
}

impl StorageError {
    fn io(path: &Path, source: io::Error) -> StorageError {
        if source.kind() == io::ErrorKind::NotFound {
            StorageError::NotFound(path.display().to_string())
        } else {
            StorageError::Io {
                path: path.display().to_string(),
                source,
            }
        }
    }

    pub fn is_not_found(&self) -> bool {
        matches!(self, StorageError::NotFound(_))
    }
}

pub type Result<T, E = StorageError> = std::result::Result<T, E>;

/// What `stat` tells about a path.
#[derive(Debug, Clone, Copy)]
pub struct FileInfo {
    pub size: u64,
    pub modified: SystemTime,
    pub is_dir: bool,
}

/// The filesystem driver, rooted at `storage.filesystem.rootdirectory`.
#[derive(Debug, Clone)]
pub struct FsDriver {
    root: PathBuf,
    /// Times each operation when the server keeps metrics.
    ops: Option<crate::metrics::StorageOps>,
    /// Writers append with `O_DIRECT` (see `append`).
    direct_writes: bool,
    /// The threads that write and hash writers' batches (never tokio's blocking pool,
    /// so reads never queue behind uploads); started on first use, shared by clones.
    writers: std::sync::Arc<std::sync::OnceLock<std::sync::Arc<append::WriterPool>>>,
    /// Called on the writer thread before each batch (a test hook).
    append_hook: fs::AppendHook,
}

async fn blocking<T: Send + 'static>(f: impl FnOnce() -> Result<T> + Send + 'static) -> Result<T> {
    match tokio::task::spawn_blocking(f).await {
        Ok(r) => r,
        Err(e) => Err(StorageError::Io {
            path: String::new(),
            source: io::Error::other(e),
        }),
    }
}

impl FsDriver {
    pub fn new(root: impl Into<PathBuf>) -> FsDriver {
        FsDriver {
            root: root.into(),
            ops: None,
            direct_writes: false,
            writers: Default::default(),
            append_hook: Default::default(),
        }
    }

    /// This driver calling `f` on the writer thread right before each batch a writer
    /// writes (the `Appending` test hook).
    pub(crate) fn with_append_hook(mut self, f: impl Fn() + Send + Sync + 'static) -> FsDriver {
        self.append_hook = fs::AppendHook::new(f);
        self
    }

    /// The writers' thread pool (started on first use).
    pub(crate) fn writer_pool(&self) -> std::sync::Arc<append::WriterPool> {
        self.writers
            .get_or_init(|| {
                std::sync::Arc::new(append::WriterPool::new(
                    append::WriterPool::default_threads(),
                ))
            })
            .clone()
    }

    /// This driver timing its operations into `ops` (`registry_storage_action_seconds`).
    pub fn with_metrics(mut self, ops: crate::metrics::StorageOps) -> FsDriver {
        self.ops = Some(ops);
        self
    }

    /// A guard that records the operation's latency when dropped (nothing without
    /// metrics).
    fn timed(&self, action: &'static str) -> Option<crate::metrics::OpTimer> {
        self.ops.as_ref().map(|o| o.start(action))
    }

    /// This driver as the trait object the domain holds: wrapped in [`metered::Metered`]
    /// when it was built `with_metrics` (the wrapped copy then times nothing itself, so
    /// no operation is counted twice).
    pub fn as_driver(&self) -> std::sync::Arc<dyn Driver> {
        match &self.ops {
            Some(ops) => {
                let bare = FsDriver {
                    ops: None,
                    ..self.clone()
                };
                std::sync::Arc::new(metered::Metered::new(
                    std::sync::Arc::new(bare),
                    ops.clone(),
                ))
            }
            None => std::sync::Arc::new(self.clone()),
        }
    }

    /// This driver with its writers appending past the page cache (`O_DIRECT`).
    pub fn with_direct_writes(mut self, on: bool) -> FsDriver {
        self.direct_writes = on;
        self
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    /// The absolute path of a store path.
    pub fn full(&self, path: &str) -> PathBuf {
        self.root.join(path)
    }

    /// Reads a small file whole (links, manifests, records).
    pub async fn get_content(&self, path: &str) -> Result<Vec<u8>> {
        let _t = self.timed("GetContent");
        let p = self.full(path);
        tokio::fs::read(&p)
            .await
            .map_err(|e| StorageError::io(&p, e))
    }

    /// Writes a small file atomically: temp name, fsync, rename, fsync the folder.
    pub async fn put_content(&self, path: &str, data: Vec<u8>) -> Result<()> {
        let _t = self.timed("PutContent");
        let p = self.full(path);
        blocking(move || put_atomic(&p, &data)).await
    }

    /// Writes a new file without fsync (upload session files: losing one in a crash
    /// only makes the client start its upload again).
    pub async fn put_content_unsynced(&self, path: &str, data: Vec<u8>) -> Result<()> {
        let _t = self.timed("PutContent");
        let p = self.full(path);
        blocking(move || {
            let dir = p.parent().unwrap_or(Path::new("."));
            std::fs::create_dir_all(dir).map_err(|e| StorageError::io(dir, e))?;
            std::fs::write(&p, data).map_err(|e| StorageError::io(&p, e))
        })
        .await
    }

    pub async fn stat(&self, path: &str) -> Result<FileInfo> {
        let _t = self.timed("Stat");
        let p = self.full(path);
        let m = tokio::fs::metadata(&p)
            .await
            .map_err(|e| StorageError::io(&p, e))?;
        Ok(FileInfo {
            size: m.len(),
            modified: m.modified().unwrap_or(SystemTime::UNIX_EPOCH),
            is_dir: m.is_dir(),
        })
    }

    /// Whether a file or folder exists (an I/O error other than not-found is an error).
    pub async fn exists(&self, path: &str) -> Result<bool> {
        match self.stat(path).await {
            Ok(_) => Ok(true),
            Err(e) if e.is_not_found() => Ok(false),
            Err(e) => Err(e),
        }
    }

    /// The names of a folder's children, sorted; temporary files are left out.
    pub async fn list(&self, path: &str) -> Result<Vec<String>> {
        let _t = self.timed("List");
        let p = self.full(path);
        blocking(move || list_sync(&p)).await
    }

    /// Moves a file into place, creating the target's folders; fsyncs the target folder.
    pub async fn rename(&self, from: &str, to: &str) -> Result<()> {
        let _t = self.timed("Move");
        let (f, t) = (self.full(from), self.full(to));
        blocking(move || rename_sync(&f, &t)).await
    }

    /// Removes a file or a whole folder.
    pub async fn delete(&self, path: &str) -> Result<()> {
        let _t = self.timed("Delete");
        let p = self.full(path);
        blocking(move || delete_sync(&p)).await
    }

    /// Sets a file's modification time to now: content that is reused (deduplicated or
    /// mounted) counts as new for the collector's grace period.
    pub async fn touch(&self, path: &str) -> Result<()> {
        let _t = self.timed("Touch");
        let p = self.full(path);
        blocking(move || touch_sync(&p)).await
    }

    /// Every file called `file_name` below `path`, with its path relative to `path` and
    /// its metadata, in one blocking pass (used to enumerate the pool and link folders).
    /// A missing `path` yields nothing.
    pub async fn walk_files(
        &self,
        path: &str,
        file_name: &'static str,
    ) -> Result<Vec<(String, FileInfo)>> {
        let _t = self.timed("Walk");
        let p = self.full(path);
        blocking(move || {
            let mut out = Vec::new();
            walk_sync(&p, "", file_name, &mut out, &|_| {})?;
            Ok(out)
        })
        .await
    }

    /// Opens an immutable file (a pool blob) for streaming by memory-mapped chunks.
    pub async fn open_mapped(&self, path: &str) -> Result<MappedFile> {
        let _t = self.timed("Reader");
        let p = self.full(path);
        blocking(move || {
            let file = std::fs::File::open(&p).map_err(|e| StorageError::io(&p, e))?;
            let size = file.metadata().map_err(|e| StorageError::io(&p, e))?.len();
            Ok(MappedFile {
                file: std::sync::Arc::new(file),
                size,
            })
        })
        .await
    }
}

/// Bytes of one mapped window; unmapped when hyper has written it and drops it.
struct Window {
    map: memmap2::Mmap,
    skip: usize,
}

impl AsRef<[u8]> for Window {
    fn as_ref(&self) -> &[u8] {
        &self.map[self.skip..]
    }
}

/// An open immutable file served by mapping it window by window: the socket write copies
/// straight from the page cache (no read into a user buffer), and each window is
/// unmapped once written, so resident memory stays at a few windows whatever the size.
/// Safe for pool blobs because they are never modified or truncated in place; a blob
/// unlinked by the collector stays readable through the open descriptor.
#[derive(Debug, Clone)]
pub struct MappedFile {
    file: std::sync::Arc<std::fs::File>,
    size: u64,
}

/// Size of one mapped window.
const WINDOW: u64 = 8 << 20;

impl MappedFile {
    pub fn size(&self) -> u64 {
        self.size
    }

    /// Streams `len` bytes from `offset`.
    pub fn stream(
        self,
        offset: u64,
        len: u64,
    ) -> impl futures::Stream<Item = io::Result<bytes::Bytes>> + Send + 'static {
        let end = offset.saturating_add(len).min(self.size);
        futures::stream::try_unfold((self, offset), move |(f, pos)| async move {
            if pos >= end {
                return Ok(None);
            }
            let page = 4096u64;
            let start = pos - pos % page;
            let stop = (pos + WINDOW).min(end);
            let file = f.file.clone();
            let map = tokio::task::spawn_blocking(move || {
                // SAFETY: the file is an immutable pool blob: nobody writes or truncates
                // it while mapped (writers create new files and rename them in).
                let map = unsafe {
                    memmap2::MmapOptions::new()
                        .offset(start)
                        .len((stop - start) as usize)
                        .populate()
                        .map(&*file)
                }?;
                let _ = map.advise(memmap2::Advice::Sequential);
                Ok::<_, io::Error>(map)
            })
            .await
            .map_err(io::Error::other)??;
            let chunk = bytes::Bytes::from_owner(Window {
                map,
                skip: (pos - start) as usize,
            });
            Ok(Some((chunk, (f, stop))))
        })
    }
}

pub(crate) fn is_temp_name(name: &str) -> bool {
    name.starts_with(".tmp-")
}

fn temp_sibling(p: &Path) -> PathBuf {
    let name = format!(".tmp-{}", uuid::Uuid::new_v4().simple());
    p.with_file_name(name)
}

/// Removes a temporary file if the write that made it did not finish.
struct TempGuard(Option<PathBuf>);

impl Drop for TempGuard {
    fn drop(&mut self) {
        if let Some(p) = self.0.take() {
            let _ = std::fs::remove_file(p);
        }
    }
}

pub(crate) fn sync_dir(dir: &Path) -> Result<()> {
    let d = std::fs::File::open(dir).map_err(|e| StorageError::io(dir, e))?;
    d.sync_all().map_err(|e| StorageError::io(dir, e))
}

/// Creates `dir` and its missing parents, fsyncing each new folder's parent so that the
/// new entries themselves survive a power loss (not only the files put in them).
pub(crate) fn create_dir_all_synced(dir: &Path) -> Result<()> {
    if dir.is_dir() {
        return Ok(());
    }
    if let Some(parent) = dir.parent() {
        create_dir_all_synced(parent)?;
    }
    match std::fs::create_dir(dir) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => return Ok(()),
        Err(e) => return Err(StorageError::io(dir, e)),
    }
    match dir.parent() {
        Some(parent) if !parent.as_os_str().is_empty() => sync_dir(parent),
        _ => Ok(()),
    }
}

pub(crate) fn put_atomic(p: &Path, data: &[u8]) -> Result<()> {
    let dir = p.parent().unwrap_or(Path::new("."));
    create_dir_all_synced(dir)?;
    let tmp = temp_sibling(p);
    let mut guard = TempGuard(Some(tmp.clone()));
    let mut f = std::fs::File::create(&tmp).map_err(|e| StorageError::io(&tmp, e))?;
    f.write_all(data).map_err(|e| StorageError::io(&tmp, e))?;
    f.sync_all().map_err(|e| StorageError::io(&tmp, e))?;
    std::fs::rename(&tmp, p).map_err(|e| StorageError::io(p, e))?;
    guard.0 = None;
    sync_dir(dir)
}

pub(crate) fn touch_sync(p: &Path) -> Result<()> {
    let f = std::fs::OpenOptions::new()
        .append(true)
        .open(p)
        .map_err(|e| StorageError::io(p, e))?;
    f.set_modified(SystemTime::now())
        .map_err(|e| StorageError::io(p, e))
}

/// `before_stat` runs between listing a file and reading its metadata (a test makes the
/// concurrent removal happen there).
fn walk_sync(
    dir: &Path,
    rel: &str,
    file_name: &str,
    out: &mut Vec<(String, FileInfo)>,
    before_stat: &dyn Fn(&Path),
) -> Result<()> {
    let rd = match std::fs::read_dir(dir) {
        Ok(rd) => rd,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(StorageError::io(dir, e)),
    };
    for entry in rd {
        let entry = entry.map_err(|e| StorageError::io(dir, e))?;
        let Some(name) = entry.file_name().to_str().map(str::to_owned) else {
            continue;
        };
        let ft = entry.file_type().map_err(|e| StorageError::io(dir, e))?;
        let child_rel = if rel.is_empty() {
            name.clone()
        } else {
            format!("{rel}/{name}")
        };
        if ft.is_dir() {
            walk_sync(&entry.path(), &child_rel, file_name, out, before_stat)?;
        } else if name == file_name {
            before_stat(&entry.path());
            let m = match entry.metadata() {
                Ok(m) => m,
                // Removed since the folder was read (the collector, a delete): not there.
                Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
                Err(e) => return Err(StorageError::io(dir, e)),
            };
            out.push((
                child_rel,
                FileInfo {
                    size: m.len(),
                    modified: m.modified().unwrap_or(SystemTime::UNIX_EPOCH),
                    is_dir: false,
                },
            ));
        }
    }
    Ok(())
}

fn list_sync(p: &Path) -> Result<Vec<String>> {
    let rd = std::fs::read_dir(p).map_err(|e| StorageError::io(p, e))?;
    let mut out = Vec::new();
    for entry in rd {
        let entry = entry.map_err(|e| StorageError::io(p, e))?;
        if let Some(name) = entry.file_name().to_str()
            && !is_temp_name(name)
        {
            out.push(name.to_owned());
        }
    }
    out.sort_unstable();
    Ok(out)
}

pub(crate) fn rename_sync(from: &Path, to: &Path) -> Result<()> {
    let dir = to.parent().unwrap_or(Path::new("."));
    create_dir_all_synced(dir)?;
    std::fs::rename(from, to).map_err(|e| StorageError::io(from, e))?;
    sync_dir(dir)
}

fn delete_sync(p: &Path) -> Result<()> {
    let m = std::fs::symlink_metadata(p).map_err(|e| StorageError::io(p, e))?;
    if m.is_dir() {
        std::fs::remove_dir_all(p).map_err(|e| StorageError::io(p, e))
    } else {
        std::fs::remove_file(p).map_err(|e| StorageError::io(p, e))
    }
}

#[cfg(test)]
mod tests {

    /// A file the walk listed and a concurrent delete removed before its stat (the
    /// collector sweeping a link the scrubber walks) is not there: skipped, no error.
    #[test]
    fn a_walk_skips_a_file_removed_before_its_stat() {
        let d = tempfile::tempdir().unwrap();
        for r in ["a", "b"] {
            std::fs::create_dir_all(d.path().join(r)).unwrap();
            std::fs::write(d.path().join(r).join("link"), r).unwrap();
        }
        let gone = d.path().join("a").join("link");
        let mut out = Vec::new();
        walk_sync(d.path(), "", "link", &mut out, &|p| {
            if p == gone {
                std::fs::remove_file(p).unwrap();
            }
        })
        .expect("the walk ends without an error");
        let found: Vec<&str> = out.iter().map(|(r, _)| r.as_str()).collect();
        assert_eq!(found, ["b/link"]);
    }

    use super::*;

    #[tokio::test]
    async fn put_get_list_rename_delete_leave_nothing_behind() {
        let dir = tempfile::tempdir().unwrap();
        let d = FsDriver::new(dir.path());
        d.put_content("a/b/link", b"sha256:x".to_vec())
            .await
            .unwrap();
        assert_eq!(d.get_content("a/b/link").await.unwrap(), b"sha256:x");
        d.put_content("a/b/link", b"v2".to_vec()).await.unwrap();
        assert_eq!(d.get_content("a/b/link").await.unwrap(), b"v2");
        assert_eq!(d.list("a/b").await.unwrap(), vec!["link"]);
        d.rename("a/b/link", "c/d/link").await.unwrap();
        assert!(d.get_content("a/b/link").await.unwrap_err().is_not_found());
        assert_eq!(d.stat("c/d/link").await.unwrap().size, 2);
        d.delete("c").await.unwrap();
        assert!(!d.exists("c").await.unwrap());
        d.delete("a").await.unwrap();
        assert_eq!(d.list("").await.unwrap(), Vec::<String>::new());
        assert!(d.open_mapped("missing").await.unwrap_err().is_not_found());
    }
}
