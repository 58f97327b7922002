//! The filesystem driver behind [`Driver`]: [`FsDriver`] rooted at
//! `storage.filesystem.rootdirectory`. Its fast paths stay inside it: reads map the file
//! window by window ([`super::MappedFile`]), a writer reserves blocks ahead of a body whose
//! length is known and writes through [`super::append::Appender`] (page cache with
//! writeback kicks, or `O_DIRECT`), and batch deletes name each leaf relative to a
//! held-open folder (`unlinkat`), which spares the kernel the full path walk per call.
//!
//! Folders are implicit, as in a bucket: a delete or a move removes the folders it
//! empties, up to the root. Whatever creates a file retries when such a pruning removed
//! its folder between the `mkdir` and the create.
//!
//! Nothing here truncates or rewrites a file in place: every put, every new writer and
//! every commit makes a new file and renames it in. So a mapped reader can never see a
//! file shrink under it (which would be a `SIGBUS`).

use std::collections::BTreeMap;
use std::io::{self, Read, Seek, SeekFrom};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::Arc;
use std::time::SystemTime;

use bytes::Bytes;
use futures::{Stream, StreamExt};
use rustix::fs::{AtFlags, Mode, OFlags, RenameFlags};

use super::append::{Appender, BATCH_BYTES, BATCH_FRAMES, WriterPool};
use super::driver::{
    Capabilities, Committed, Driver, DriverError, DriverResult, Entry, PutMode, Reader, Stat,
    Version, WalkEntry, Writer, WriterStart, check_file_path, check_path, writer_state_path,
};
use super::hashstate::ResumableSha256;
use super::{FsDriver, TempGuard, create_dir_all_synced, is_temp_name, sync_dir, temp_sibling};
use crate::digest::{Algorithm, Digest, Hasher};

/// How often a create retries when a concurrent delete pruned its folder.
const CREATE_RETRIES: usize = 8;

fn ioe(path: &Path, e: io::Error) -> DriverError {
    if e.kind() == io::ErrorKind::NotFound || e.raw_os_error() == Some(libc::ENOTDIR) {
        DriverError::NotFound(path.display().to_string())
    } else {
        DriverError::Io {
            path: path.display().to_string(),
            source: e,
        }
    }
}

/// The older helpers' errors keep their kind (and the errno: out of space stays 507).
impl From<super::StorageError> for DriverError {
    fn from(e: super::StorageError) -> DriverError {
        match e {
            super::StorageError::NotFound(p) => DriverError::NotFound(p),
            super::StorageError::Io { path, source } => DriverError::Io { path, source },
        }
    }
}

fn errno(path: &Path, e: rustix::io::Errno) -> DriverError {
    ioe(path, io::Error::from(e))
}

async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> DriverResult<T> + Send + 'static,
) -> DriverResult<T> {
    match tokio::task::spawn_blocking(f).await {
        Ok(r) => r,
        Err(e) => Err(DriverError::Io {
            path: String::new(),
            source: io::Error::other(e),
        }),
    }
}

fn version_of(m: &std::fs::Metadata) -> Version {
    Version(format!(
        "{}:{}.{}:{}",
        m.ino(),
        m.mtime(),
        m.mtime_nsec(),
        m.len()
    ))
}

fn stat_of(m: &std::fs::Metadata) -> Stat {
    Stat {
        size: if m.is_dir() { 0 } else { m.len() },
        modified: m.modified().unwrap_or(SystemTime::UNIX_EPOCH),
        is_dir: m.is_dir(),
    }
}

/// Runs `create` after making `dir`; again when `create` finds the folder gone (a
/// concurrent delete pruned it in between).
fn in_dir<T>(dir: &Path, create: impl FnMut() -> DriverResult<T>) -> DriverResult<T> {
    in_dir_with(dir, true, create, &|| {})
}

/// [`in_dir`] without fsyncing the folders it creates (for content that is not durable
/// anyway: a writer's file before its commit, volatile puts).
fn in_dir_unsynced<T>(dir: &Path, create: impl FnMut() -> DriverResult<T>) -> DriverResult<T> {
    in_dir_with(dir, false, create, &|| {})
}

/// `between` runs after the folders are made and before `create` (a test prunes them
/// there, as a concurrent delete can).
fn in_dir_with<T>(
    dir: &Path,
    synced: bool,
    mut create: impl FnMut() -> DriverResult<T>,
    between: &dyn Fn(),
) -> DriverResult<T> {
    let mut tries = 0;
    loop {
        // A concurrent delete can prune a parent between the creation of the parent and
        // of its child (both empty for that moment): made again, like the file below.
        let made: DriverResult<()> = if synced {
            create_dir_all_synced(dir).map_err(Into::into)
        } else {
            std::fs::create_dir_all(dir).map_err(|e| ioe(dir, e))
        };
        match made {
            Err(DriverError::NotFound(_)) if tries < CREATE_RETRIES => {
                tries += 1;
                continue;
            }
            r => r?,
        }
        between();
        match create() {
            Err(DriverError::NotFound(_)) if tries < CREATE_RETRIES => tries += 1,
            r => return r,
        }
    }
}

impl FsDriver {
    fn path_of(&self, path: &str) -> DriverResult<PathBuf> {
        check_path(path)?;
        Ok(if path.is_empty() {
            self.root().to_path_buf()
        } else {
            self.root().join(path)
        })
    }

    fn file_path(&self, path: &str) -> DriverResult<PathBuf> {
        check_file_path(path)?;
        self.path_of(path)
    }
}

/// Removes the folders below `root` that `dir` and its parents leave empty, stopping at
/// the first that is not.
fn prune(root: &Path, dir: &Path) {
    let mut d = dir;
    while d != root && d.starts_with(root) {
        if std::fs::remove_dir(d).is_err() {
            return;
        }
        match d.parent() {
            Some(p) => d = p,
            None => return,
        }
    }
}

/// Writes a temporary sibling of `p` with `data`, fsynced; returns its path (removed on
/// drop of the guard unless renamed) and its metadata.
fn write_temp(p: &Path, data: &[u8]) -> DriverResult<(TempGuard, PathBuf, std::fs::Metadata)> {
    use std::io::Write;
    let dir = p.parent().unwrap_or(Path::new("."));
    let tmp = temp_sibling(p);
    let f = in_dir(dir, || {
        std::fs::File::create(&tmp).map_err(|e| ioe(&tmp, e))
    })?;
    let guard = TempGuard(Some(tmp.clone()));
    let mut f = f;
    f.write_all(data).map_err(|e| ioe(&tmp, e))?;
    f.sync_all().map_err(|e| ioe(&tmp, e))?;
    let m = f.metadata().map_err(|e| ioe(&tmp, e))?;
    Ok((guard, tmp, m))
}

fn put_sync(p: &Path, data: &[u8], mode: PutMode) -> DriverResult<Version> {
    let dir = p.parent().unwrap_or(Path::new(".")).to_path_buf();
    match mode {
        PutMode::Overwrite => {
            let (mut guard, tmp, m) = write_temp(p, data)?;
            in_dir(&dir, || std::fs::rename(&tmp, p).map_err(|e| ioe(p, e)))?;
            guard.0 = None;
            sync_dir(&dir)?;
            Ok(version_of(&m))
        }
        PutMode::Create => {
            let (mut guard, tmp, m) = write_temp(p, data)?;
            let r = in_dir(&dir, || {
                match rustix::fs::renameat_with(
                    rustix::fs::CWD,
                    &tmp,
                    rustix::fs::CWD,
                    p,
                    RenameFlags::NOREPLACE,
                ) {
                    Ok(()) => Ok(true),
                    // A filesystem without RENAME_NOREPLACE: a hard link is atomic too.
                    Err(rustix::io::Errno::INVAL) => match std::fs::hard_link(&tmp, p) {
                        Ok(()) => Ok(false),
                        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {
                            Err(DriverError::AlreadyExists(p.display().to_string()))
                        }
                        Err(e) => Err(ioe(p, e)),
                    },
                    Err(rustix::io::Errno::EXIST) => {
                        Err(DriverError::AlreadyExists(p.display().to_string()))
                    }
                    Err(e) => Err(errno(p, e)),
                }
            });
            match r {
                Ok(true) => guard.0 = None,
                Ok(false) => {} // linked: the guard removes the temp name
                Err(e) => return Err(e),
            }
            drop(guard);
            sync_dir(&dir)?;
            Ok(version_of(&m))
        }
        PutMode::Replace(want) => {
            // Replacers serialise on an exclusive flock of the file they replace; the
            // one that wins renames a new file in, so the others find that the path no
            // longer names the inode they locked.
            let f = std::fs::File::open(p).map_err(|e| ioe(p, e))?;
            rustix::fs::flock(&f, rustix::fs::FlockOperation::LockExclusive)
                .map_err(|e| errno(p, e))?;
            let held = f.metadata().map_err(|e| ioe(p, e))?;
            let now = std::fs::metadata(p).map_err(|e| ioe(p, e))?;
            if now.ino() != held.ino() || version_of(&held) != want {
                return Err(DriverError::PreconditionFailed(p.display().to_string()));
            }
            let (mut guard, tmp, m) = write_temp(p, data)?;
            std::fs::rename(&tmp, p).map_err(|e| ioe(p, e))?;
            guard.0 = None;
            sync_dir(&dir)?;
            drop(f);
            Ok(version_of(&m))
        }
    }
}

/// Moves `from` to `to` (creating `to`'s folders), fsyncs `to`'s folder, prunes `from`'s.
fn rename_sync(root: &Path, from: &Path, to: &Path) -> DriverResult<()> {
    std::fs::symlink_metadata(from).map_err(|e| ioe(from, e))?;
    let dir = to.parent().unwrap_or(Path::new("."));
    in_dir(dir, || std::fs::rename(from, to).map_err(|e| ioe(from, e)))?;
    sync_dir(dir)?;
    if let Some(p) = from.parent() {
        prune(root, p);
    }
    Ok(())
}

fn touch_sync(p: &Path) -> DriverResult<()> {
    let f = std::fs::OpenOptions::new()
        .append(true)
        .open(p)
        .map_err(|e| ioe(p, e))?;
    f.set_modified(SystemTime::now()).map_err(|e| ioe(p, e))
}

fn walk_into(
    dir: &Path,
    rel: &str,
    tx: &tokio::sync::mpsc::Sender<DriverResult<WalkEntry>>,
) -> Result<(), ()> {
    let rd = match std::fs::read_dir(dir) {
        Ok(rd) => rd,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return tx.blocking_send(Err(ioe(dir, e))).map_err(drop),
    };
    for entry in rd {
        let entry = match entry {
            Ok(e) => e,
            Err(e) => return tx.blocking_send(Err(ioe(dir, e))).map_err(drop),
        };
        let Some(name) = entry.file_name().to_str().map(str::to_owned) else {
            continue;
        };
        if is_temp_name(&name) {
            continue;
        }
        let child = if rel.is_empty() {
            name
        } else {
            format!("{rel}/{name}")
        };
        let Ok(ft) = entry.file_type() else { continue };
        if ft.is_dir() {
            walk_into(&entry.path(), &child, tx)?;
        } else {
            // Gone between the listing and the stat: skipped, as if listed a moment later.
            let Ok(m) = entry.metadata() else { continue };
            tx.blocking_send(Ok(WalkEntry {
                path: child,
                size: m.len(),
                modified: m.modified().unwrap_or(SystemTime::UNIX_EPOCH),
            }))
            .map_err(drop)?;
        }
    }
    Ok(())
}

/// Removes files in groups that share a grandparent folder, held open: `unlinkat` of
/// `<leaf>/<file>` and then of the `<leaf>` folder when that emptied it (the layout's
/// leaves: `<hex>/data`, `<hex>/link`). One open per group instead of a path walk per call.
fn delete_many_sync(root: &Path, paths: &[PathBuf]) -> Vec<DriverResult<()>> {
    let mut out: Vec<DriverResult<()>> = (0..paths.len()).map(|_| Ok(())).collect();
    let mut groups: BTreeMap<&Path, Vec<usize>> = BTreeMap::new();
    for (i, p) in paths.iter().enumerate() {
        match p.parent().and_then(Path::parent) {
            Some(gp) if gp.starts_with(root) && gp != Path::new("") => {
                groups.entry(gp).or_default().push(i)
            }
            // A file right below the root: no folder to hold open.
            _ => match std::fs::remove_file(p) {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(e) => out[i] = Err(ioe(p, e)),
            },
        }
    }
    for (gp, idx) in groups {
        let fd = match rustix::fs::open(
            gp,
            OFlags::PATH | OFlags::DIRECTORY | OFlags::CLOEXEC,
            Mode::empty(),
        ) {
            Ok(fd) => fd,
            Err(rustix::io::Errno::NOENT) | Err(rustix::io::Errno::NOTDIR) => continue,
            Err(e) => {
                for i in idx {
                    out[i] = Err(errno(gp, e));
                }
                continue;
            }
        };
        for i in idx {
            let p = &paths[i];
            let (Some(leaf), Some(file)) = (p.parent().and_then(Path::file_name), p.file_name())
            else {
                out[i] = Err(DriverError::InvalidPath(p.display().to_string()));
                continue;
            };
            let rel = Path::new(leaf).join(file);
            match rustix::fs::unlinkat(&fd, &rel, AtFlags::empty()) {
                Ok(()) | Err(rustix::io::Errno::NOENT) | Err(rustix::io::Errno::NOTDIR) => {}
                Err(e) => {
                    out[i] = Err(errno(p, e));
                    continue;
                }
            }
            // Not empty (another file of the leaf) or gone: either way, done.
            let _ = rustix::fs::unlinkat(&fd, leaf, AtFlags::REMOVEDIR);
        }
        prune(root, gp);
    }
    out
}

#[async_trait::async_trait]
impl Driver for FsDriver {
    fn name(&self) -> &'static str {
        "filesystem"
    }

    fn capabilities(&self) -> Capabilities {
        Capabilities {
            replace_if_unchanged: true,
            atomic_rename: true,
            redirect: false,
        }
    }

    async fn get(&self, path: &str) -> DriverResult<(Bytes, Version)> {
        let p = self.file_path(path)?;
        blocking(move || {
            let mut f = std::fs::File::open(&p).map_err(|e| ioe(&p, e))?;
            let m = f.metadata().map_err(|e| ioe(&p, e))?;
            if m.is_dir() {
                return Err(DriverError::NotFound(p.display().to_string()));
            }
            let mut buf = Vec::with_capacity(m.len() as usize);
            f.read_to_end(&mut buf).map_err(|e| ioe(&p, e))?;
            Ok((Bytes::from(buf), version_of(&m)))
        })
        .await
    }

    async fn put(&self, path: &str, data: Bytes, mode: PutMode) -> DriverResult<Version> {
        let p = self.file_path(path)?;
        blocking(move || put_sync(&p, &data, mode)).await
    }

    async fn put_volatile(&self, path: &str, data: Bytes) -> DriverResult<()> {
        let p = self.file_path(path)?;
        blocking(move || {
            let dir = p.parent().unwrap_or(Path::new(".")).to_path_buf();
            let tmp = temp_sibling(&p);
            in_dir_unsynced(&dir, || {
                std::fs::write(&tmp, &data).map_err(|e| ioe(&tmp, e))
            })?;
            let mut guard = TempGuard(Some(tmp.clone()));
            in_dir_unsynced(&dir, || std::fs::rename(&tmp, &p).map_err(|e| ioe(&p, e)))?;
            guard.0 = None;
            Ok(())
        })
        .await
    }

    async fn reader(&self, path: &str, offset: u64, len: Option<u64>) -> DriverResult<Reader> {
        let p = self.file_path(path)?;
        let mapped = self.open_mapped(path).await?;
        let size = mapped.size();
        if offset > size {
            return Err(DriverError::InvalidOffset {
                path: path.to_owned(),
                offset,
            });
        }
        let len = len.unwrap_or(u64::MAX).min(size - offset);
        let shown = p.display().to_string();
        let body = mapped
            .stream(offset, len)
            .map(move |r| r.map_err(|e| ioe(Path::new(&shown), e)));
        Ok(Reader {
            size,
            body: Box::pin(body),
        })
    }

    async fn writer(&self, path: &str, start: WriterStart) -> DriverResult<Box<dyn Writer>> {
        let p = self.file_path(path)?;
        let state = self.file_path(&writer_state_path(path))?;
        Ok(Box::new(FsWriter::open(self, p, state, start).await?))
    }

    async fn writer_size(&self, path: &str) -> DriverResult<u64> {
        let p = self.file_path(path)?;
        let m = tokio::fs::metadata(&p).await.map_err(|e| ioe(&p, e))?;
        if m.is_dir() {
            return Err(DriverError::NotFound(p.display().to_string()));
        }
        Ok(m.len())
    }

    async fn stat(&self, path: &str) -> DriverResult<Stat> {
        let p = self.path_of(path)?;
        let m = tokio::fs::metadata(&p).await.map_err(|e| ioe(&p, e))?;
        Ok(stat_of(&m))
    }

    async fn list(&self, path: &str) -> DriverResult<Vec<Entry>> {
        let p = self.path_of(path)?;
        blocking(move || {
            let rd = std::fs::read_dir(&p).map_err(|e| ioe(&p, e))?;
            let mut out = Vec::new();
            for entry in rd {
                let entry = entry.map_err(|e| ioe(&p, e))?;
                let Some(name) = entry.file_name().to_str().map(str::to_owned) else {
                    continue;
                };
                if is_temp_name(&name) {
                    continue;
                }
                let is_dir = entry.file_type().is_ok_and(|t| t.is_dir());
                out.push(Entry { name, is_dir });
            }
            out.sort();
            Ok(out)
        })
        .await
    }

    fn walk(&self, prefix: &str) -> Pin<Box<dyn Stream<Item = DriverResult<WalkEntry>> + Send>> {
        let p = match self.path_of(prefix) {
            Ok(p) => p,
            Err(e) => return Box::pin(futures::stream::once(async { Err(e) })),
        };
        let (tx, rx) = tokio::sync::mpsc::channel(1024);
        tokio::task::spawn_blocking(move || {
            let _ = walk_into(&p, "", &tx);
        });
        Box::pin(tokio_stream_from(rx))
    }

    async fn delete(&self, path: &str) -> DriverResult<()> {
        let p = self.file_path(path)?;
        let root = self.root().to_path_buf();
        blocking(move || {
            let m = std::fs::symlink_metadata(&p).map_err(|e| ioe(&p, e))?;
            if m.is_dir() {
                std::fs::remove_dir_all(&p).map_err(|e| ioe(&p, e))?;
            } else {
                std::fs::remove_file(&p).map_err(|e| ioe(&p, e))?;
            }
            if let Some(parent) = p.parent() {
                prune(&root, parent);
            }
            Ok(())
        })
        .await
    }

    async fn delete_many(&self, paths: &[String]) -> DriverResult<Vec<DriverResult<()>>> {
        let mut full = Vec::with_capacity(paths.len());
        for p in paths {
            full.push(self.file_path(p)?);
        }
        let root = self.root().to_path_buf();
        blocking(move || Ok(delete_many_sync(&root, &full))).await
    }

    async fn rename(&self, from: &str, to: &str) -> DriverResult<()> {
        let (f, t) = (self.file_path(from)?, self.file_path(to)?);
        let root = self.root().to_path_buf();
        blocking(move || rename_sync(&root, &f, &t)).await
    }

    async fn touch(&self, path: &str) -> DriverResult<()> {
        let p = self.file_path(path)?;
        blocking(move || touch_sync(&p)).await
    }
}

/// A receiver as a stream (tokio's own adapter lives in `tokio-stream`).
fn tokio_stream_from<T: Send + 'static>(
    rx: tokio::sync::mpsc::Receiver<T>,
) -> impl Stream<Item = T> + Send + 'static {
    futures::stream::unfold(rx, |mut rx| async move { rx.recv().await.map(|v| (v, rx)) })
}

/// What a filesystem writer keeps beside its data file: the sha256 state of the first
/// `size` bytes. Optional (a session without it, or with a stale one, is re-hashed from
/// the data file), so it is written without fsync.
#[derive(serde::Serialize, serde::Deserialize)]
struct FsWriterState {
    size: u64,
    sha256: String,
}

/// What travels with a batch to a pool thread and back: the open file and the caller's
/// guard ([`Writer::hold`]). Fields drop in order: the appender first (releasing any
/// reserved blocks), then the guard. A writer dropped while a batch is being written
/// (its request went away) leaves this with the batch, so the guard goes only once the
/// file is let go.
#[derive(Default)]
struct Held {
    appender: Option<Appender>,
    /// The file's size when `appender` was opened.
    opened_at: u64,
    guard: Option<Box<dyn std::any::Any + Send + Sync>>,
}

/// A batch on the pool: its write and its hash run side by side.
struct Landing {
    write: futures::future::BoxFuture<'static, io::Result<(Held, io::Result<()>)>>,
    hash: futures::future::BoxFuture<'static, io::Result<ResumableSha256>>,
    len: u64,
}

/// The filesystem's resumable writer. A body is cut into batches on the async side
/// ([`BATCH_BYTES`] or [`BATCH_FRAMES`]); each whole batch is written (one `writev`,
/// blocks reserved for exactly it) and hashed on the uploads' [`WriterPool`] while the
/// next one arrives, so a slow client holds no thread and nothing holds a whole blob.
struct FsWriter {
    root: PathBuf,
    path: PathBuf,
    state_path: PathBuf,
    pool: Arc<WriterPool>,
    hook: AppendHook,
    direct_writes: bool,
    /// Bytes in the file and covered by the hash (every landed batch).
    base: u64,
    /// The file and its hash as of the last flush (or the open): what a failed write
    /// is cut back to, and what the state file covers.
    flushed: (u64, ResumableSha256),
    /// The file and the hash between batches.
    parked: Option<(Held, ResumableSha256)>,
    landing: Option<Landing>,
    batch: Vec<Bytes>,
    batch_bytes: usize,
    failed: bool,
    /// A guard handed over while no [`Held`] was at hand.
    spare_guard: Option<Box<dyn std::any::Any + Send + Sync>>,
}

/// Hashes `path` from `from` (where `h` stopped) to its end.
fn hash_rest(
    path: &Path,
    from: u64,
    mut h: ResumableSha256,
) -> DriverResult<(u64, ResumableSha256)> {
    let mut f = std::fs::File::open(path).map_err(|e| ioe(path, e))?;
    f.seek(SeekFrom::Start(from)).map_err(|e| ioe(path, e))?;
    let mut buf = vec![0u8; 1 << 20];
    let mut n = from;
    loop {
        let r = f.read(&mut buf).map_err(|e| ioe(path, e))?;
        if r == 0 {
            break;
        }
        h.update(&buf[..r]);
        n += r as u64;
    }
    Ok((n, h))
}

/// Opens a writer's file: a new empty one, or the existing one with its hash state
/// (re-hashing what the saved state does not cover). Returns the size and the hash.
fn open_sync(
    path: &Path,
    state_path: &Path,
    start: WriterStart,
) -> DriverResult<(u64, ResumableSha256)> {
    match start {
        WriterStart::New => {
            // A new empty file renamed over any old one: a reader mapping the old file
            // keeps its inode, so nothing shrinks under it.
            let dir = path.parent().unwrap_or(Path::new(".")).to_path_buf();
            let tmp = temp_sibling(path);
            in_dir_unsynced(&dir, || {
                std::fs::File::create(&tmp)
                    .map(drop)
                    .map_err(|e| ioe(&tmp, e))
            })?;
            let mut guard = TempGuard(Some(tmp.clone()));
            in_dir_unsynced(&dir, || {
                std::fs::rename(&tmp, path).map_err(|e| ioe(path, e))
            })?;
            guard.0 = None;
            match std::fs::remove_file(state_path) {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(e) => return Err(ioe(state_path, e)),
            }
            Ok((0, ResumableSha256::new()))
        }
        WriterStart::Resume => {
            let m = std::fs::metadata(path).map_err(|e| ioe(path, e))?;
            if m.is_dir() {
                return Err(DriverError::NotFound(path.display().to_string()));
            }
            let size = m.len();
            let saved = std::fs::read(state_path)
                .ok()
                .and_then(|b| serde_json::from_slice::<FsWriterState>(&b).ok())
                .and_then(|s| Some((s.size, ResumableSha256::restore(&s.sha256)?)))
                .filter(|(s, _)| *s <= size);
            let (from, h) = saved.unwrap_or((0, ResumableSha256::new()));
            // The file may hold more than the state covers (bytes that reached it after
            // the last flush): they count, hashed from where the state ends.
            if from == size {
                Ok((size, h))
            } else {
                hash_rest(path, from, h)
            }
        }
    }
}

impl FsWriter {
    async fn open(
        d: &FsDriver,
        path: PathBuf,
        state_path: PathBuf,
        start: WriterStart,
    ) -> DriverResult<FsWriter> {
        let pool = d.writer_pool();
        let (p, s) = (path.clone(), state_path.clone());
        let (size, hash) = pool
            .run(move || open_sync(&p, &s, start))
            .await
            .map_err(|e| ioe(&path, e))??;
        Ok(FsWriter {
            root: d.root().to_path_buf(),
            path,
            state_path,
            pool,
            hook: d.append_hook.clone(),
            direct_writes: d.direct_writes,
            base: size,
            flushed: (size, hash.clone()),
            parked: Some((Held::default(), hash)),
            landing: None,
            batch: Vec::new(),
            batch_bytes: 0,
            failed: false,
            spare_guard: None,
        })
    }

    fn poisoned(&self) -> DriverError {
        DriverError::Io {
            path: self.path.display().to_string(),
            source: io::Error::other("an earlier write to this writer failed"),
        }
    }

    /// Waits for the batch on the pool, if any; the file and the hash then cover
    /// `base` bytes. A failed write is cut back to the last flush (on the pool, with
    /// the guard still held) and poisons the writer.
    async fn land(&mut self) -> DriverResult<()> {
        let Some(l) = self.landing.take() else {
            return if self.failed {
                Err(self.poisoned())
            } else {
                Ok(())
            };
        };
        match tokio::join!(l.write, l.hash) {
            (Ok((held, Ok(()))), Ok(h)) => {
                self.base += l.len;
                self.parked = Some((held, h));
                Ok(())
            }
            (Ok((held, Err(e))), _) => {
                self.failed = true;
                self.cut_back(held).await;
                Err(ioe(&self.path, e))
            }
            // A pool thread failed: the file (and the guard with it) are gone.
            (Ok((held, Ok(()))), Err(e)) => {
                self.failed = true;
                self.cut_back(held).await;
                Err(ioe(&self.path, e))
            }
            (Err(e), _) => {
                self.failed = true;
                Err(ioe(&self.path, e))
            }
        }
    }

    /// Closes the file and cuts it back to the last flush; keeps the guard.
    async fn cut_back(&mut self, held: Held) {
        let (p, size) = (self.path.clone(), self.flushed.0);
        let r = self
            .pool
            .run(move || {
                let mut held = held;
                drop(held.appender.take());
                let r = std::fs::OpenOptions::new()
                    .write(true)
                    .open(&p)
                    .and_then(|f| f.set_len(size));
                (held, r)
            })
            .await;
        match r {
            Ok((held, r)) => {
                if let Err(e) = r {
                    tracing::error!(error = %e, path = %self.path.display(), "cannot cut a failed write back");
                }
                self.base = self.flushed.0;
                self.parked = Some((held, self.flushed.1.clone()));
            }
            Err(e) => {
                tracing::error!(error = %e, path = %self.path.display(), "cannot cut a failed write back")
            }
        }
    }

    /// Hands the batch received so far to the pool (after the previous one landed).
    async fn send_batch(&mut self) -> DriverResult<()> {
        if self.batch.is_empty() {
            return Ok(());
        }
        self.land().await?;
        let Some((mut held, mut h)) = self.parked.take() else {
            return Err(self.poisoned());
        };
        let frames = Arc::new(std::mem::take(&mut self.batch));
        let len = std::mem::take(&mut self.batch_bytes) as u64;
        let for_hash = frames.clone();
        let (path, base, direct, hook) = (
            self.path.clone(),
            self.base,
            self.direct_writes,
            self.hook.clone(),
        );
        self.landing = Some(Landing {
            write: Box::pin(self.pool.submit(move || {
                hook.call();
                let appender = match held.appender.take() {
                    Some(a) => Ok(a),
                    None => {
                        held.opened_at = base;
                        Appender::open(&path, base, direct)
                    }
                };
                let r = match appender {
                    Ok(mut a) => {
                        let r = a.write_batch(&frames);
                        held.appender = Some(a);
                        r
                    }
                    Err(e) => Err(e),
                };
                (held, r)
            })),
            hash: Box::pin(self.pool.submit(move || {
                for b in for_hash.iter() {
                    h.update(b);
                }
                h
            })),
            len,
        });
        Ok(())
    }

    /// Writes out everything received and closes the file (whatever direct writes
    /// still buffer goes out); the file and the hash then cover `base` bytes.
    async fn settle(&mut self) -> DriverResult<()> {
        if self.failed {
            return Err(self.poisoned());
        }
        self.send_batch().await?;
        self.land().await?;
        let Some((held, h)) = self.parked.take() else {
            return Err(self.poisoned());
        };
        let expected = self.base;
        let r = self
            .pool
            .run(move || {
                let mut held = held;
                let r = match held.appender.take() {
                    // Closed here, on the pool: what direct writes still buffer goes out.
                    Some(mut a) => a.finish_in_place().and_then(|n| {
                        if held.opened_at + n == expected {
                            Ok(())
                        } else {
                            Err(io::Error::other(format!(
                                "wrote {n} of {} bytes",
                                expected - held.opened_at
                            )))
                        }
                    }),
                    None => Ok(()),
                };
                (held, r)
            })
            .await;
        match r {
            Ok((held, Ok(()))) => {
                self.parked = Some((held, h));
                Ok(())
            }
            Ok((held, Err(e))) => {
                self.failed = true;
                self.cut_back(held).await;
                Err(ioe(&self.path, e))
            }
            Err(e) => {
                self.failed = true;
                Err(ioe(&self.path, e))
            }
        }
    }

    async fn save_state(&mut self) -> DriverResult<()> {
        let Some((_, h)) = &self.parked else {
            return Err(self.poisoned());
        };
        let text = serde_json::to_vec(&FsWriterState {
            size: self.base,
            sha256: h.save(),
        })
        .map_err(|e| ioe(&self.state_path, io::Error::other(e)))?;
        self.flushed = (self.base, h.clone());
        let p = self.state_path.clone();
        blocking(move || {
            let (mut guard, tmp, _) = write_temp_unsynced(&p, &text)?;
            std::fs::rename(&tmp, &p).map_err(|e| ioe(&p, e))?;
            guard.0 = None;
            Ok(())
        })
        .await
    }

    async fn remove_own(&mut self) -> DriverResult<()> {
        let (p, s, root) = (
            self.path.clone(),
            self.state_path.clone(),
            self.root.clone(),
        );
        blocking(move || {
            for f in [&p, &s] {
                match std::fs::remove_file(f) {
                    Ok(()) => {}
                    Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                    Err(e) => return Err(ioe(f, e)),
                }
            }
            if let Some(d) = p.parent() {
                prune(&root, d);
            }
            Ok(())
        })
        .await
    }
}

/// [`write_temp`] without the fsync.
fn write_temp_unsynced(p: &Path, data: &[u8]) -> DriverResult<(TempGuard, PathBuf, ())> {
    let dir = p.parent().unwrap_or(Path::new("."));
    let tmp = temp_sibling(p);
    in_dir_unsynced(dir, || std::fs::write(&tmp, data).map_err(|e| ioe(&tmp, e)))?;
    Ok((TempGuard(Some(tmp.clone())), tmp, ()))
}

#[async_trait::async_trait]
impl Writer for FsWriter {
    fn size(&self) -> u64 {
        let landing = self.landing.as_ref().map_or(0, |l| l.len);
        self.base + landing + self.batch_bytes as u64
    }

    fn hold(&mut self, guard: Box<dyn std::any::Any + Send + Sync>) {
        match &mut self.parked {
            Some((held, _)) => held.guard = Some(guard),
            // Mid-batch or failed: kept until the writer drops.
            None => self.spare_guard = Some(guard),
        }
    }

    async fn write(&mut self, chunk: Bytes) -> DriverResult<()> {
        if self.failed {
            return Err(self.poisoned());
        }
        if chunk.is_empty() {
            return Ok(());
        }
        self.batch_bytes += chunk.len();
        self.batch.push(chunk);
        if self.batch_bytes >= BATCH_BYTES || self.batch.len() >= BATCH_FRAMES {
            self.send_batch().await?;
        }
        Ok(())
    }

    async fn sha256(&mut self) -> DriverResult<Digest> {
        self.settle().await?;
        match &self.parked {
            Some((_, h)) => Ok(h.clone().finish()),
            None => Err(self.poisoned()),
        }
    }

    async fn flush(&mut self) -> DriverResult<()> {
        self.settle().await?;
        self.save_state().await
    }

    async fn commit(mut self: Box<Self>, expected: &Digest, to: &str) -> DriverResult<Committed> {
        self.settle().await?;
        let Some((held, h)) = self.parked.take() else {
            return Err(self.poisoned());
        };
        let computed = match expected.algorithm() {
            Algorithm::Sha256 => h.finish(),
            alg => {
                let p = self.path.clone();
                blocking(move || {
                    let mut f = std::fs::File::open(&p).map_err(|e| ioe(&p, e))?;
                    let mut h = Hasher::new(alg);
                    let mut buf = vec![0u8; 1 << 20];
                    loop {
                        let r = f.read(&mut buf).map_err(|e| ioe(&p, e))?;
                        if r == 0 {
                            break;
                        }
                        h.update(&buf[..r]);
                    }
                    Ok(h.finish())
                })
                .await?
            }
        };
        if &computed != expected {
            self.remove_own().await?;
            drop(held);
            return Err(DriverError::DigestMismatch {
                expected: expected.clone(),
                computed,
            });
        }
        check_file_path(to)?;
        let dest = self.root.join(to);
        let (data, state, root, size) = (
            self.path.clone(),
            self.state_path.clone(),
            self.root.clone(),
            self.base,
        );
        let r = blocking(move || {
            let _ = std::fs::remove_file(&state);
            let reused = if dest.exists() {
                touch_sync(&dest)?;
                std::fs::remove_file(&data).map_err(|e| ioe(&data, e))?;
                if let Some(d) = data.parent() {
                    prune(&root, d);
                }
                true
            } else {
                std::fs::File::open(&data)
                    .and_then(|f| f.sync_all())
                    .map_err(|e| ioe(&data, e))?;
                rename_sync(&root, &data, &dest)?;
                false
            };
            Ok(Committed { size, reused })
        })
        .await;
        drop(held);
        r
    }

    async fn cancel(mut self: Box<Self>) -> DriverResult<()> {
        let _ = self.settle().await;
        let r = self.remove_own().await;
        drop(self.parked.take());
        r
    }
}

/// Called on the writer thread right before each batch is written (a test hook).
#[derive(Clone, Default)]
pub(crate) struct AppendHook(Option<Arc<dyn Fn() + Send + Sync>>);

impl AppendHook {
    pub(crate) fn new(f: impl Fn() + Send + Sync + 'static) -> AppendHook {
        AppendHook(Some(Arc::new(f)))
    }

    fn call(&self) {
        if let Some(f) = &self.0 {
            f();
        }
    }
}

impl std::fmt::Debug for AppendHook {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(if self.0.is_some() {
            "AppendHook(set)"
        } else {
            "AppendHook"
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A concurrent delete prunes the folders a put just made (both empty for that
    /// moment) before the file is created in them: the put makes them again and its
    /// file is there.
    #[test]
    fn a_put_makes_its_folders_again_when_a_delete_pruned_them() {
        let d = tempfile::tempdir().unwrap();
        let parent = d.path().join("repo");
        let dir = parent.join("_layers").join("sha256");
        let file = dir.join("link");
        let pruned = std::sync::atomic::AtomicUsize::new(0);
        let prune = || {
            if pruned.fetch_add(1, std::sync::atomic::Ordering::SeqCst) == 0 {
                std::fs::remove_dir_all(&parent).unwrap();
            }
        };
        for synced in [false, true] {
            pruned.store(0, std::sync::atomic::Ordering::SeqCst);
            in_dir_with(
                &dir,
                synced,
                || std::fs::write(&file, b"x").map_err(|e| ioe(&file, e)),
                &prune,
            )
            .expect("the put succeeds");
            assert_eq!(std::fs::read(&file).unwrap(), b"x");
            assert_eq!(
                pruned.load(std::sync::atomic::Ordering::SeqCst),
                2,
                "one retry"
            );
        }
    }
}
