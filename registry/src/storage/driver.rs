//! [`Driver`]: the one interface to a backend (a local folder, an S3 bucket). Its shape
//! is CNCF Distribution's storage driver — a plain store of `/`-separated keys with small
//! get/put, a reader at an offset, an appending writer with commit and cancel, stat, list,
//! walk, move and delete, and typed errors — plus what drydock's domain needs and object
//! stores offer: create-only and replace-if-unchanged puts, batch deletes, a writer whose
//! state survives a restart, and an optional redirect URL for reads.
//!
//! Keys are the strings [`super::path_for`] builds (`docker/registry/v2/…`), relative to
//! the driver's root (a folder, or `<rootdirectory>/` in a bucket). Folders are implicit,
//! as in a bucket: a folder exists while something below it does, and a driver never
//! shows an empty one (the filesystem driver prunes the folders a delete or a move
//! empties). Nothing in here knows repositories, tags or HTTP; the one piece of domain it
//! knows is that a writer commits content under its digest.
//!
//! # What each driver guarantees
//!
//! | operation | filesystem | S3 (RGW 16.2 and AWS) |
//! | --- | --- | --- |
//! | `put` | temp + fsync + rename + fsync folder | one PUT (atomic) |
//! | `put` create-only | `renameat2(RENAME_NOREPLACE)` | `If-None-Match: *` |
//! | `put` replace-if-unchanged | `flock` on the file + version check | `If-Match` with the ETag as RGW compares it; see `s3` |
//! | `rename` | `rename(2)`, atomic | copy + delete: not atomic (the source stays visible until the delete) |
//! | `reader` | mapped windows of the open file | ranged GET, streamed |
//! | `writer` | appends to the file; state is the file + hash state | multipart upload; state under the session's keys |
//! | `walk` | one blocking thread, `getdents` | listings of the first level's prefixes in parallel |
//! | `delete_many` | `unlinkat` relative to held-open folders | `DeleteObjects`, 1,000 keys a request |
//! | `touch` | sets the mtime | copies the object onto itself (new `LastModified`) |
//! | `modified` | mtime | `LastModified` |
//! | `redirect_url` | never | a presigned GET |
//!
//! # How the direct-disk call sites map onto it (the migration)
//!
//! Done:
//! - `upload.rs`: `start_upload` puts `startedat` and opens [`Driver::writer`]; a PATCH
//!   resumes the writer ([`WriterStart::Resume`]), hands it the session's lock and the
//!   upload slot ([`Writer::hold`]), announces its length with [`Writer::reserve`],
//!   writes the frames and [`Writer::flush`]es before answering; status is
//!   [`Driver::writer_size`]. The writer hashes sha256 as it goes and keeps the hash
//!   state with its own state. Completion is [`Writer::commit`] with the digest and the
//!   pool key (verify, fsync/complete, move into the pool; when the pool has the blob
//!   already, touch it and drop the copy). Artifact uploads take the same writer.
//!   `cancel_upload` cancels the writer (on S3: aborts the multipart upload) before
//!   it deletes the session folder.
//! - `blobs.rs`: [`Driver::reader`] (mapped windows stay the filesystem reader; a
//!   ranged GET on S3), [`Driver::touch`], [`Driver::stat`]/[`Driver::get`]/
//!   [`Driver::put`]; `store.rs` (`read_link`, `write_link`, `remove`, `list`): the same
//!   calls on the trait object, which `Store` holds as `Arc<dyn Driver>`.
//! - `repository.rs` catalog walk: [`Driver::list`] level by level, 16 folders at a
//!   time ([`Driver::walk`] under `repositories/` would list every link on S3).
//! - `notify.rs` queues, `artifacts` records, maintenance records, the health probe:
//!   [`Driver::get`]/[`Driver::put`]/[`Driver::list`]/[`Driver::delete`]. With these, a
//!   `Store` can stand on any driver (`Store::on_driver`); what still needs the
//!   filesystem reaches it through `Store::fs`, which answers `Unsupported` on S3.
//! - `gc/src/lock.rs`: on S3, `BucketLock`, a lock object taken with a create-only
//!   [`Driver::put`] holding owner and expiry, renewed with replace-if-unchanged, marked
//!   expired on exit; the filesystem keeps `flock` (which a crash releases).
//! - `inventory/`: the collector's view has two backends behind one `Inventory`: the
//!   filesystem's system calls relative to held-open folders (`blocking`, unchanged),
//!   and `objects` on any driver: [`Driver::list`] level by level, [`Driver::list_below`]
//!   for a pool shard or a repository's layer links (key, size, modified: one listing
//!   on S3 gives `LastModified` for every leaf, so the sweep needs no stat per
//!   candidate there), [`Driver::delete_many`] (`DeleteObjects`) for the sweep's
//!   batches. The catalog walk and the collector's repository walk on a driver are one
//!   function (`repository::walk_repositories`, `_uploads` as a parameter). The grace
//!   clock is [`Stat::modified`] / [`WalkEntry::modified`] — mtime on disk,
//!   `LastModified` on S3; "touch on reuse" is [`Driver::touch`], on S3 a copy of the
//!   object onto itself (server-side; RGW shares the data).
//!
//! Next:
//! - `inventory/blocking.rs`: its fast paths could move into the filesystem driver
//!   (`delete_many` on held-open folders), leaving one backend.
//! - `artifacts/tree.rs`: a delete renames a subtree into `.trash` on disk; there is no
//!   atomic subtree rename on S3, so the tree deletes in order (the `.link` files first,
//!   the records last), which a crash can only leave as a smaller tree, never a torn file.
//!   `walk_files` → [`Driver::walk`]; artifact uploads → [`Driver::writer`].
//! - `artifacts/postprocess.rs`: copies inputs to local scratch with [`Driver::reader`],
//!   runs the command there (scratch is always a local temp folder, outside the store),
//!   and re-ingests the results with [`Driver::writer`].
//! - `src/main.rs` (`create_dir_all` of the root, the admin socket): the root is created
//!   by the filesystem driver's constructor; the admin socket stays a local file beside a
//!   filesystem root (on S3 the CLI is to talk to the server's admin endpoint; today it
//!   refuses).

use std::fmt;
use std::pin::Pin;
use std::time::SystemTime;

use bytes::Bytes;
use futures::Stream;

use crate::digest::Digest;

/// Why a driver call failed. Callers match on the kind; the message names the key (and,
/// for a backend that cannot be reached, the endpoint), never a credential.
#[derive(Debug, thiserror::Error)]
pub enum DriverError {
    #[error("not found: {0}")]
    NotFound(String),
    /// A create-only put found the key there already.
    #[error("already exists: {0}")]
    AlreadyExists(String),
    /// A replace-if-unchanged put found another version.
    #[error("precondition failed: {0} changed")]
    PreconditionFailed(String),
    /// A read at or past the end of the content, or a writer resumed at the wrong size.
    #[error("invalid offset {offset} for {path}")]
    InvalidOffset { path: String, offset: u64 },
    /// A key that is not a plain relative `/`-separated path.
    #[error("invalid path {0:?}")]
    InvalidPath(String),
    /// The content written does not have the digest the commit named; the writer was
    /// cancelled.
    #[error("the written content has digest {computed}, not {expected}")]
    DigestMismatch { expected: Digest, computed: Digest },
    /// The backend cannot do this (a replace-if-unchanged on a store without working
    /// conditional writes, say).
    #[error("{what} is not supported by the {driver} driver")]
    Unsupported {
        driver: &'static str,
        what: &'static str,
    },
    /// The backend did not answer (connection refused, timeout, 5xx after retries).
    #[error("storage backend {endpoint} is unavailable: {message}")]
    Unavailable { endpoint: String, message: String },
    /// The backend answered with an error that is none of the above.
    #[error("storage error on {path}: {message}")]
    Backend { path: String, message: String },
    #[error("storage I/O error on {path}: {source}")]
    Io {
        path: String,
        #[source]
        source: std::io::Error,
    },
}

impl DriverError {
    pub fn is_not_found(&self) -> bool {
        matches!(self, DriverError::NotFound(_))
    }
}

pub type DriverResult<T> = std::result::Result<T, DriverError>;

/// A stream of body chunks.
pub type ByteStream = Pin<Box<dyn Stream<Item = DriverResult<Bytes>> + Send + 'static>>;

/// What `stat` tells about a key. A folder (a prefix with something below it) has size
/// 0; its `modified` is the folder's mtime on disk and the epoch on S3.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Stat {
    pub size: u64,
    pub modified: SystemTime,
    pub is_dir: bool,
}

/// One child of a folder, from [`Driver::list`] (no stat: on disk this is what
/// `getdents` gives).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct Entry {
    pub name: String,
    pub is_dir: bool,
}

/// One file below a walked prefix.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WalkEntry {
    /// The key relative to the walked prefix (`a/b/data` under `x` for `x/a/b/data`).
    pub path: String,
    pub size: u64,
    pub modified: SystemTime,
}

/// A writer's upload that holds storage under no key a listing shows: an S3 multipart
/// upload (the bucket keeps and bills its parts until it is completed or aborted).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PendingUpload {
    /// The key it completes into.
    pub path: String,
    pub id: String,
    /// When it began (a time the backend does not give reads as now: never as old).
    pub started: SystemTime,
}

/// An opaque version of a key's content, for replace-if-unchanged.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Version(pub String);

/// How [`Driver::put`] treats an existing key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PutMode {
    /// Replace whatever is there.
    Overwrite,
    /// Fail with [`DriverError::AlreadyExists`] when the key exists (atomic).
    Create,
    /// Replace only the version given, else [`DriverError::PreconditionFailed`]
    /// (or [`DriverError::NotFound`] when the key is gone).
    Replace(Version),
}

/// A ranged read: the object's whole size and the bytes asked for, as a stream.
pub struct Reader {
    /// Size of the whole object (not of the range).
    pub size: u64,
    pub body: ByteStream,
}

impl fmt::Debug for Reader {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Reader").field("size", &self.size).finish()
    }
}

/// How [`Driver::writer`] opens a key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WriterStart {
    /// A new, empty writer; a previous one at the same key is replaced.
    New,
    /// Continue the writer last flushed at this key (after a restart, or on another
    /// server); [`DriverError::NotFound`] when there is none.
    Resume,
}

/// What a committed writer left.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Committed {
    pub size: u64,
    /// The destination held this content already: it was kept (its time refreshed) and
    /// the writer's copy dropped.
    pub reused: bool,
}

/// What a driver can and cannot do, for callers that pick a strategy.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Capabilities {
    /// [`PutMode::Replace`] works.
    pub replace_if_unchanged: bool,
    /// [`Driver::rename`] is atomic (no moment where both or neither key exists).
    pub atomic_rename: bool,
    /// [`Driver::redirect_url`] can answer.
    pub redirect: bool,
}

/// A resumable appending writer (see [`Driver::writer`]). Not thread-safe; one request
/// at a time writes to an upload (the session lock).
///
/// Durability: what [`Writer::flush`] returned for survives a restart and is what a
/// resumed writer continues from. Bytes written after the last flush may or may not
/// (the filesystem keeps what reached the file, S3 keeps only flushed parts); a resumed
/// writer's [`Writer::size`] tells which, and its content is always the first `size`
/// bytes that were written.
#[async_trait::async_trait]
pub trait Writer: Send {
    /// Bytes in the content so far (flushed or not).
    fn size(&self) -> u64;
    /// A hint that about `len` more bytes follow (a request's Content-Length): the
    /// filesystem reserves blocks for them.
    fn reserve(&mut self, _len: u64) {}
    /// Keeps `guard` until everything this writer started has finished: it drops with
    /// the writer, or, when the writer is dropped while a write is still landing (its
    /// request went away), only once that write has let go of the content. A caller's
    /// lock on an upload session travels this way, so whoever takes the lock next finds
    /// no write still landing. Call it before the first write.
    fn hold(&mut self, guard: Box<dyn std::any::Any + Send + Sync>);
    /// Appends `chunk`. After an error the writer must be dropped (or cancelled); the
    /// state of the last flush is intact.
    async fn write(&mut self, chunk: Bytes) -> DriverResult<()>;
    /// The sha256 digest of everything written so far (the writer hashes as it goes).
    async fn sha256(&mut self) -> DriverResult<Digest>;
    /// Makes everything written so far resumable (see the trait's docs).
    async fn flush(&mut self) -> DriverResult<()>;
    /// Verifies that the content has `expected` as digest, makes it durable and moves it
    /// to `to` (a content-addressed key: when `to` exists it holds the same bytes, so it
    /// is kept, touched, and this copy is dropped). On a mismatch the writer is cancelled
    /// and [`DriverError::DigestMismatch`] returned. The writer's own state is removed.
    async fn commit(self: Box<Self>, expected: &Digest, to: &str) -> DriverResult<Committed>;
    /// Removes everything the writer made, flushed or not.
    async fn cancel(self: Box<Self>) -> DriverResult<()>;
}

/// The storage driver. See the module docs.
#[async_trait::async_trait]
pub trait Driver: Send + Sync + fmt::Debug + 'static {
    /// `filesystem` or `s3`, for messages.
    fn name(&self) -> &'static str;
    fn capabilities(&self) -> Capabilities;

    /// Reads a small object whole, with its version.
    async fn get(&self, path: &str) -> DriverResult<(Bytes, Version)>;
    /// Writes a small object atomically (readers see the old content or the new, never
    /// a mix); returns the new version.
    async fn put(&self, path: &str, data: Bytes, mode: PutMode) -> DriverResult<Version>;
    /// Writes a small object atomically, like [`PutMode::Overwrite`], for content whose
    /// loss in a crash is harmless (an upload session's bookkeeping, which its client
    /// restarts): a driver may skip making it durable. On disk that spares the fsyncs,
    /// each of which may wait for the journal to write out other files' data.
    async fn put_volatile(&self, path: &str, data: Bytes) -> DriverResult<()> {
        self.put(path, data, PutMode::Overwrite).await.map(drop)
    }
    /// Streams `len` bytes (to the end when `None`) from `offset`. An offset at the end
    /// of a non-empty object, or past it, is [`DriverError::InvalidOffset`]; a range that
    /// runs past the end is cut at the end.
    async fn reader(&self, path: &str, offset: u64, len: Option<u64>) -> DriverResult<Reader>;
    /// Opens a resumable writer at `path` (see [`Writer`]). Its state lives beside
    /// `path` (keys starting with `path` and a `.`), so `path` should be the only file of
    /// its folder that the caller names that way (`_uploads/<id>/data`).
    async fn writer(&self, path: &str, start: WriterStart) -> DriverResult<Box<dyn Writer>>;
    /// Bytes a resumable writer at `path` holds as of its last flush (as a resumed
    /// writer would start from); [`DriverError::NotFound`] when there is none.
    async fn writer_size(&self, path: &str) -> DriverResult<u64>;
    async fn stat(&self, path: &str) -> DriverResult<Stat>;
    /// The children of a folder, sorted by name; [`DriverError::NotFound`] when the
    /// folder does not exist. Temporary files of in-flight writes are left out.
    async fn list(&self, path: &str) -> DriverResult<Vec<Entry>>;
    /// Every file below `prefix` (a folder), in no particular order, streamed as it is
    /// found; nothing for a missing prefix. Backends that can list in parallel do.
    fn walk(&self, prefix: &str) -> Pin<Box<dyn Stream<Item = DriverResult<WalkEntry>> + Send>>;
    /// Every file below `prefix` (a folder) in one sequential listing, for a folder of
    /// many small folders (a pool shard, a repository's layer links): on S3 one
    /// `ListObjectsV2` page per 1,000 keys, where [`Driver::walk`] would list each
    /// small folder apart. Nothing for a missing prefix.
    async fn list_below(&self, prefix: &str) -> DriverResult<Vec<WalkEntry>> {
        use futures::TryStreamExt;
        self.walk(prefix).try_collect().await
    }
    /// Removes a file, or a folder and everything below it; [`DriverError::NotFound`]
    /// when there was nothing.
    async fn delete(&self, path: &str) -> DriverResult<()>;
    /// Removes files (not folders) in batches; a missing file counts as removed. One
    /// result per path, in order.
    async fn delete_many(&self, paths: &[String]) -> DriverResult<Vec<DriverResult<()>>>;
    /// Moves a file to `to`, replacing what is there (see [`Capabilities::atomic_rename`]).
    async fn rename(&self, from: &str, to: &str) -> DriverResult<()>;
    /// Makes a file count as new: its `modified` becomes now (the grace clock of the
    /// collector; content reused by a push or a mount is touched).
    async fn touch(&self, path: &str) -> DriverResult<()>;
    /// The [`PendingUpload`]s whose key is below the folder `prefix`: what the uploads
    /// task aborts once no upload session owns them. The filesystem keeps a writer's
    /// bytes in its file, under its key: it has none.
    async fn pending_uploads(&self, _prefix: &str) -> DriverResult<Vec<PendingUpload>> {
        Ok(Vec::new())
    }
    /// Aborts a pending upload (its parts go; nothing at its key changes); one that is
    /// gone (completed or aborted) counts as aborted.
    async fn abort_pending(&self, _upload: &PendingUpload) -> DriverResult<()> {
        Ok(())
    }
    /// A URL a client may GET the object from directly, valid for `expires`; `None` when
    /// the driver does not redirect.
    async fn redirect_url(
        &self,
        _path: &str,
        _expires: std::time::Duration,
    ) -> DriverResult<Option<String>> {
        Ok(None)
    }
}

/// Checks a key: relative, `/`-separated, no empty, `.` or `..` segment, no NUL. The
/// empty key is the root (listing and walking it is allowed; writing it is not).
pub fn check_path(path: &str) -> DriverResult<()> {
    if path.is_empty() {
        return Ok(());
    }
    let bad = path.split('/').any(|s| matches!(s, "" | "." | "..")) || path.contains('\0');
    if bad {
        return Err(DriverError::InvalidPath(path.to_owned()));
    }
    Ok(())
}

/// Like [`check_path`], and not the root.
pub fn check_file_path(path: &str) -> DriverResult<()> {
    if path.is_empty() {
        return Err(DriverError::InvalidPath(String::new()));
    }
    check_path(path)
}

/// The key of a writer's state beside its data key.
pub(crate) fn writer_state_path(path: &str) -> String {
    format!("{path}.state")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_are_checked() {
        for ok in [
            "",
            "a",
            "a/b",
            "docker/registry/v2/blobs/sha256/ab/abc/data",
            ".a/b",
        ] {
            assert!(check_path(ok).is_ok(), "{ok}");
        }
        for bad in ["/a", "a/", "a//b", "a/../b", "..", ".", "a/./b", "a\0b"] {
            assert!(check_path(bad).is_err(), "{bad:?}");
        }
        assert!(check_file_path("").is_err());
    }
}
