//! Blob upload sessions: `_uploads/<uuid>/{data,startedat}` in Distribution's layout, so
//! a session survives a restart. A body is received on the async side in batches of
//! about 1 MiB; each full batch is written and hashed on the uploads' writer pool
//! (`storage::append`) while the next one arrives, so a slow client holds no thread,
//! and nothing holds a whole blob in memory. At most `oci.max_uploads` bodies are
//! received at once; past that a request is answered `429 TOOMANYREQUESTS`. The
//! session's lock and the upload's slot travel with the batch being written: a request
//! dropped mid-body (client gone) releases them only once its writer has let go of the
//! file.
//! The running sha256 state is kept in memory next to the offset it covers; when it is
//! missing (after a restart) it is rebuilt by re-reading the data file once.
//!
//! Completion verifies the digest, fsyncs once, renames the data into the pool and only
//! then writes the layer link. The pool-commit half is shared with generic artifacts
//! ([`Store::ingest_stream`], [`Store::commit_file_pinned`]), which link the blob into
//! their own tree instead of a repository.

use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use bytes::Bytes;
use dashmap::DashMap;
use futures::{Stream, StreamExt};
use tokio::sync::{Mutex, OwnedMutexGuard, OwnedSemaphorePermit};

use crate::digest::{Algorithm, Digest, Hasher};
use crate::hooks::Point;
use crate::liveness::PinGuard;
use crate::names::RepoName;
use crate::storage::append::{Appender, BATCH_BYTES, BATCH_FRAMES};
use crate::storage::{self, PathSpec, path_for};
use crate::store::Store;
use crate::{Error, Result};

/// In-memory state of live sessions, keyed by repository and upload id.
#[derive(Default)]
pub struct Sessions {
    map: DashMap<String, Arc<Mutex<SessionState>>>,
}

#[derive(Default)]
pub(crate) struct SessionState {
    /// sha256 of the first `.0` bytes of the data file.
    hasher: Option<(u64, Hasher)>,
}

impl Sessions {
    /// Sessions are keyed by repository and id, so a request naming the id under the
    /// wrong repository can never touch (or forget) the real session's lock.
    fn get(&self, name: &RepoName, id: &str) -> Arc<Mutex<SessionState>> {
        self.map
            .entry(format!("{name}/{id}"))
            .or_default()
            .value()
            .clone()
    }

    fn forget(&self, name: &RepoName, id: &str) {
        self.map.remove(&format!("{name}/{id}"));
    }
}

/// Upload ids are UUIDs; anything else is unknown (and can never name a path).
pub(crate) fn parse_id(id: &str) -> Result<String> {
    uuid::Uuid::parse_str(id)
        .map(|u| u.hyphenated().to_string())
        .map_err(|_| Error::BlobUploadUnknown)
}

fn io_err(e: io::Error) -> Error {
    Error::from_io(e)
}

/// A session's lock, owned so that it can travel with the writer.
type SessionGuard = OwnedMutexGuard<SessionState>;

/// What a batch's write carries to the pool thread and back. Fields drop in order: the
/// appender first (releasing any reserved blocks), then the lock and the slot.
struct Writer {
    appender: Appender,
    session: SessionGuard,
    _slot: OwnedSemaphorePermit,
}

/// The batch being received.
#[derive(Default)]
struct Batch {
    frames: Vec<Bytes>,
    bytes: usize,
}

impl Batch {
    fn push(&mut self, b: Bytes) {
        self.bytes += b.len();
        self.frames.push(b);
    }

    fn full(&self) -> bool {
        self.bytes >= BATCH_BYTES || self.frames.len() >= BATCH_FRAMES
    }
}

/// A batch on the pool: its write and its hash run side by side.
struct Inflight {
    write: futures::future::BoxFuture<'static, io::Result<(Writer, io::Result<()>)>>,
    hash: futures::future::BoxFuture<'static, io::Result<Hasher>>,
}

/// How a batch ended (short-lived, one at a time: its size does not matter).
#[allow(clippy::large_enum_variant)]
enum Landed {
    Done(Writer, Hasher),
    /// The write failed; the writer (and the lock) are back.
    WriteFailed(Writer, io::Error),
    /// A pool thread failed: the writer, and the lock with it, are gone.
    Lost(io::Error),
}

impl Inflight {
    async fn land(self) -> Landed {
        match tokio::join!(self.write, self.hash) {
            (Ok((w, Ok(()))), Ok(h)) => Landed::Done(w, h),
            (Ok((w, Err(e))), _) => Landed::WriteFailed(w, e),
            (Ok((w, Ok(()))), Err(e)) => {
                drop(w);
                Landed::Lost(e)
            }
            (Err(e), _) => Landed::Lost(e),
        }
    }
}

async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> io::Result<T> + Send + 'static,
) -> Result<T> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(Error::internal)?
        .map_err(io_err)
}

/// Hashes a whole file with `algorithm`, in 1 MiB reads.
pub(crate) fn hash_file(path: &Path, algorithm: Algorithm) -> io::Result<(u64, Hasher)> {
    let mut h = Hasher::new(algorithm);
    let n = h.read_all(std::fs::File::open(path)?, |_| Ok(()))?;
    Ok((n, h))
}

impl Store {
    /// Takes an upload session's lock, owned (it may travel with a batch being written).
    async fn lock_session(&self, session: Arc<Mutex<SessionState>>) -> SessionGuard {
        match session.clone().try_lock_owned() {
            Ok(g) => g,
            Err(_) => {
                self.liveness.hooks().reach(Point::SessionWaits, None).await;
                session.lock_owned().await
            }
        }
    }

    /// Starts a session in `name`; returns its id.
    pub async fn start_upload(&self, name: &RepoName) -> Result<String> {
        let id = uuid::Uuid::new_v4().hyphenated().to_string();
        let now = time::OffsetDateTime::now_utc()
            .format(&time::format_description::well_known::Rfc3339)
            .map_err(Error::internal)?;
        // Session files need no fsync: a session lost in a crash is restarted by its
        // client; what is durable is the blob at completion.
        self.fs
            .put_content_unsynced(
                &path_for(PathSpec::UploadStartedAt(name, &id)),
                now.into_bytes(),
            )
            .await?;
        self.fs
            .put_content_unsynced(&path_for(PathSpec::UploadData(name, &id)), Vec::new())
            .await?;
        Ok(id)
    }

    fn upload_data_path(&self, name: &RepoName, id: &str) -> PathBuf {
        self.fs.full(&path_for(PathSpec::UploadData(name, id)))
    }

    async fn upload_size(&self, name: &RepoName, id: &str) -> Result<u64> {
        match self
            .fs
            .stat(&path_for(PathSpec::UploadData(name, id)))
            .await
        {
            Ok(info) => Ok(info.size),
            Err(e) if e.is_not_found() => Err(Error::BlobUploadUnknown),
            Err(e) => Err(e.into()),
        }
    }

    /// How many bytes a session holds.
    pub async fn upload_status(&self, name: &RepoName, id: &str) -> Result<(String, u64)> {
        let id = parse_id(id)?;
        let session = self.sessions.get(name, &id);
        let _guard = self.lock_session(session).await;
        let size = self.upload_size(name, &id).await;
        if size.is_err() {
            self.sessions.forget(name, &id);
        }
        Ok((id, size?))
    }

    /// Appends a chunk. With `expect_start`, the chunk must start at the current offset
    /// (else `RANGE_INVALID`, 416). Returns the new offset.
    pub async fn append_upload<S, E>(
        &self,
        name: &RepoName,
        id: &str,
        expect_start: Option<u64>,
        body: S,
        _announced: Option<u64>,
    ) -> Result<(String, u64)>
    where
        S: Stream<Item = std::result::Result<Bytes, E>> + Send,
        E: std::fmt::Display,
    {
        let id = parse_id(id)?;
        let session = self.sessions.get(name, &id);
        let state = self.lock_session(session).await;
        let size = match self.upload_size(name, &id).await {
            Ok(s) => s,
            Err(e) => {
                self.sessions.forget(name, &id);
                return Err(e);
            }
        };
        if let Some(start) = expect_start
            && start != size
        {
            return Err(Error::RangeInvalid {
                message: format!("chunk starts at byte {start}, but the upload has {size} bytes"),
                size: None,
            });
        }
        let path = self.upload_data_path(name, &id);
        let (_state, offset) = self.append_locked(path, state, size, body).await?;
        Ok((id, offset))
    }

    /// Receives `body` in batches and appends them to `path` (holding `size` bytes) on
    /// the writer pool, hashing as it goes; see the module docs. Returns the lock and
    /// the new size. On an error the lock is released, the session's hash state matches
    /// its file again (a failed write is cut back to `size`; a body that ended early
    /// keeps what arrived).
    async fn append_locked<S, E>(
        &self,
        path: PathBuf,
        mut state: SessionGuard,
        size: u64,
        body: S,
    ) -> Result<(SessionGuard, u64)>
    where
        S: Stream<Item = std::result::Result<Bytes, E>> + Send,
        E: std::fmt::Display,
    {
        let Ok(slot) = self.upload_slots.clone().try_acquire_owned() else {
            return Err(Error::TooManyRequests(format!(
                "{} upload bodies are being received, the most this registry takes at once \
                 (oci.max_uploads); retry shortly",
                self.options.max_uploads
            )));
        };
        let hasher = match state.hasher.take() {
            Some((offset, h)) if offset == size => h,
            _ => {
                let p = path.clone();
                self.writers
                    .run(move || hash_file(&p, Algorithm::Sha256))
                    .await
                    .and_then(|r| r)
                    .map_err(io_err)?
                    .1
            }
        };
        let before = hasher.clone();
        let direct = self.options.direct_writes;
        let p = path.clone();
        let appender = match self
            .writers
            .run(move || Appender::open(&p, size, direct))
            .await
            .and_then(|r| r)
        {
            Ok(a) => a,
            Err(e) => {
                state.hasher = Some((size, before));
                return Err(io_err(e));
            }
        };
        let mut parked = Some((
            Writer {
                appender,
                session: state,
                _slot: slot,
            },
            hasher,
        ));
        let mut inflight: Option<Inflight> = None;
        let mut batch = Batch::default();
        let mut body_error = None;
        let mut sent = 0u64;
        let mut failure: Option<Landed> = None;
        futures::pin_mut!(body);
        loop {
            let end = match body.next().await {
                Some(Ok(b)) => {
                    if !b.is_empty() {
                        sent += b.len() as u64;
                        batch.push(b);
                    }
                    false
                }
                Some(Err(e)) => {
                    body_error = Some(e.to_string());
                    true
                }
                None => true,
            };
            if batch.full() || (end && !batch.frames.is_empty()) {
                // One batch on the pool at a time: take the writer back from the last.
                if let Some(f) = inflight.take() {
                    match f.land().await {
                        Landed::Done(w, h) => parked = Some((w, h)),
                        other => {
                            failure = Some(other);
                            break;
                        }
                    }
                }
                let Some((mut w, mut h)) = parked.take() else {
                    break;
                };
                let frames = Arc::new(std::mem::take(&mut batch).frames);
                let for_hash = frames.clone();
                let live = self.liveness.clone();
                inflight = Some(Inflight {
                    write: Box::pin(self.writers.submit(move || {
                        live.hooks().reach_blocking(Point::Appending, None);
                        let r = w.appender.write_batch(&frames);
                        (w, r)
                    })),
                    hash: Box::pin(self.writers.submit(move || {
                        for b in for_hash.iter() {
                            h.update(b);
                        }
                        h
                    })),
                });
            }
            if end {
                break;
            }
        }
        if let Some(f) = inflight.take() {
            match f.land().await {
                Landed::Done(w, h) => parked = Some((w, h)),
                other => failure = failure.or(Some(other)),
            }
        }
        let (w, h) = match (failure, parked) {
            (None, Some((w, h))) => (w, h),
            (Some(Landed::WriteFailed(w, e)), _) => {
                return Err(self.undo(w, &path, size, before, e).await);
            }
            (Some(Landed::Lost(e)), _) => return Err(io_err(e)),
            _ => return Err(Error::Internal("an upload lost its writer".into())),
        };
        let finished = self
            .writers
            .run(move || {
                let Writer {
                    appender,
                    session,
                    _slot,
                } = w;
                let mut appender = appender;
                let r = appender.finish_in_place();
                (
                    Writer {
                        appender,
                        session,
                        _slot,
                    },
                    r,
                )
            })
            .await
            .map_err(io_err)?;
        let mut w = match finished {
            (w, Ok(n)) if n == sent => w,
            (w, Ok(n)) => {
                let e = io::Error::other(format!("wrote {n} of {sent} bytes"));
                return Err(self.undo(w, &path, size, before, e).await);
            }
            (w, Err(e)) => return Err(self.undo(w, &path, size, before, e).await),
        };
        w.session.hasher = Some((size + sent, h));
        let Writer {
            appender, session, ..
        } = w;
        drop(appender);
        match body_error {
            Some(e) => Err(Error::BlobUploadInvalid(format!(
                "request body ended early after {sent} bytes ({e}); the session keeps them"
            ))),
            None => Ok((session, size + sent)),
        }
    }

    /// A failed write: cut the data file back to `size` (what the hash state `before`
    /// covers) on the pool, then release the lock.
    async fn undo(&self, w: Writer, path: &Path, size: u64, before: Hasher, e: io::Error) -> Error {
        let p = path.to_owned();
        let cut = self
            .writers
            .run(move || {
                let Writer {
                    appender,
                    mut session,
                    _slot,
                } = w;
                drop(appender);
                let r = std::fs::OpenOptions::new()
                    .write(true)
                    .open(&p)
                    .and_then(|f| f.set_len(size));
                if r.is_ok() {
                    session.hasher = Some((size, before));
                }
                r
            })
            .await
            .and_then(|r| r);
        if let Err(cut) = cut {
            tracing::error!(error = %cut, path = %path.display(), "cannot cut a failed upload back");
        }
        io_err(e)
    }

    /// Appends an optional last chunk, verifies `digest`, and moves the data into the pool
    /// and links it into `name`. A digest mismatch cancels the session. Returns the size.
    pub async fn finish_upload<S, E>(
        &self,
        name: &RepoName,
        id: &str,
        digest: &Digest,
        body: Option<S>,
        _announced: Option<u64>,
    ) -> Result<u64>
    where
        S: Stream<Item = std::result::Result<Bytes, E>> + Send,
        E: std::fmt::Display,
    {
        let id = parse_id(id)?;
        let session = self.sessions.get(name, &id);
        let mut state = self.lock_session(session).await;
        let mut size = match self.upload_size(name, &id).await {
            Ok(s) => s,
            Err(e) => {
                self.sessions.forget(name, &id);
                return Err(e);
            }
        };
        let path = self.upload_data_path(name, &id);
        if let Some(body) = body {
            (state, size) = self.append_locked(path.clone(), state, size, body).await?;
        }
        let computed = data_digest(&path, size, &state, digest.algorithm()).await?;
        if &computed != digest {
            drop(state);
            self.discard_upload(name, &id).await?;
            return Err(Error::DigestInvalid(format!(
                "the uploaded {size} bytes have digest {computed}, not {digest}"
            )));
        }
        let (pin, _) = self.commit_file_pinned(path, digest).await?;
        self.liveness
            .hooks()
            .reach(Point::Checked, Some(digest))
            .await;
        self.link_layer(name, digest).await?;
        self.liveness.pending_add([digest.clone()]);
        drop(pin);
        drop(state);
        self.discard_upload(name, &id).await?;
        Ok(size)
    }

    /// Cancels a session and removes its files.
    pub async fn cancel_upload(&self, name: &RepoName, id: &str) -> Result<()> {
        let id = parse_id(id)?;
        let session = self.sessions.get(name, &id);
        let _guard = self.lock_session(session).await;
        if !self.remove(PathSpec::UploadDir(name, &id)).await? {
            self.sessions.forget(name, &id);
            return Err(Error::BlobUploadUnknown);
        }
        self.sessions.forget(name, &id);
        Ok(())
    }

    /// Runs `f` with a session's id while holding the session's lock (the one every
    /// chunk write holds); `f` returns whether it removed the session, whose in-memory
    /// state then goes too. An id that is not an upload id names no session: `false`.
    pub(crate) async fn with_upload_session<F, Fut>(
        &self,
        name: &RepoName,
        id: &str,
        f: F,
    ) -> Result<bool>
    where
        F: FnOnce(String) -> Fut,
        Fut: std::future::Future<Output = Result<bool>>,
    {
        let Ok(id) = parse_id(id) else {
            return Ok(false);
        };
        let session = self.sessions.get(name, &id);
        let _guard = self.lock_session(session).await;
        let removed = f(id.clone()).await?;
        if removed {
            self.sessions.forget(name, &id);
        }
        Ok(removed)
    }

    async fn discard_upload(&self, name: &RepoName, id: &str) -> Result<()> {
        self.remove(PathSpec::UploadDir(name, id)).await?;
        self.sessions.forget(name, id);
        Ok(())
    }

    /// A whole blob in one request (`POST ?digest=`, or a `PUT` of an artifact): a private
    /// session that is finished at once and discarded on any failure.
    pub async fn put_blob<S, E>(
        &self,
        name: &RepoName,
        digest: &Digest,
        body: S,
        announced: Option<u64>,
    ) -> Result<u64>
    where
        S: Stream<Item = std::result::Result<Bytes, E>> + Send,
        E: std::fmt::Display,
    {
        let id = self.start_upload(name).await?;
        let r = self
            .finish_upload(name, &id, digest, Some(body), announced)
            .await;
        if r.is_err() {
            let _ = self.discard_upload(name, &id).await;
        }
        r
    }
}

/// The digest of a data file of `size` bytes: from the running hash state when it covers
/// the whole file (sha256), else by reading the file once.
async fn data_digest(
    path: &Path,
    size: u64,
    state: &SessionState,
    algorithm: Algorithm,
) -> Result<Digest> {
    Ok(match (&state.hasher, algorithm) {
        (Some((offset, h)), Algorithm::Sha256) if *offset == size => h.clone().finish(),
        (_, alg) => {
            let p = path.to_owned();
            blocking(move || hash_file(&p, alg)).await?.1.finish()
        }
    })
}

/// A blob that [`Store::ingest_stream`] put into the pool. The pin protects it from an
/// in-process collection until the caller has written its link and dropped the pin.
pub(crate) struct Ingested {
    pub digest: Digest,
    pub size: u64,
    /// The pool already held this content; the upload's copy was dropped.
    pub reused: bool,
    pub pin: PinGuard,
}

impl Store {
    /// Moves a finished data file (anywhere under the root) into the pool under
    /// `digest`, which the caller has verified. Returns the pin on `digest`, to hold
    /// until the caller's link is written, and whether the pool already had the blob.
    pub(crate) async fn commit_file_pinned(
        &self,
        data: PathBuf,
        digest: &Digest,
    ) -> Result<(PinGuard, bool)> {
        let pin = self.liveness.pin(vec![digest.clone()]).await;
        let pool = self.fs.full(&path_for(PathSpec::BlobData(digest)));
        let reused = blocking(move || commit_to_pool(&data, &pool)).await?;
        Ok((pin, reused))
    }

    /// Streams `body` into the data file `data` (created here; the caller owns and
    /// removes its folder), verifies it against `expected` when given (else computes
    /// the sha256 digest) and commits it to the pool, without linking it anywhere.
    pub(crate) async fn ingest_stream<S, E>(
        &self,
        data: PathBuf,
        expected: Option<&Digest>,
        body: S,
    ) -> Result<Ingested>
    where
        S: Stream<Item = std::result::Result<Bytes, E>> + Send,
        E: std::fmt::Display,
    {
        if let Some(dir) = data.parent() {
            let dir = dir.to_owned();
            blocking(move || std::fs::create_dir_all(dir)).await?;
        }
        let p = data.clone();
        blocking(move || std::fs::File::create(p).map(drop)).await?;
        let state = Arc::new(Mutex::new(SessionState {
            hasher: Some((0, Hasher::new(Algorithm::Sha256))),
        }))
        .lock_owned()
        .await;
        let (state, size) = self.append_locked(data.clone(), state, 0, body).await?;
        let algorithm = expected.map_or(Algorithm::Sha256, Digest::algorithm);
        let computed = data_digest(&data, size, &state, algorithm).await?;
        if let Some(expected) = expected
            && &computed != expected
        {
            return Err(Error::DigestInvalid(format!(
                "the uploaded {size} bytes have digest {computed}, not {expected}"
            )));
        }
        let (pin, reused) = self.commit_file_pinned(data, &computed).await?;
        Ok(Ingested {
            digest: computed,
            size,
            reused,
            pin,
        })
    }
}

/// fsync the data once, then rename it into the pool. If the pool has the blob already,
/// the existing (identical) copy stays, touched so it counts as new for the grace
/// period, and the upload's copy is dropped (returns `true`).
fn commit_to_pool(data: &Path, pool: &Path) -> io::Result<bool> {
    if pool.exists() {
        storage::touch_sync(pool).map_err(|e| io::Error::other(e.to_string()))?;
        std::fs::remove_file(data)?;
        return Ok(true);
    }
    std::fs::File::open(data)?.sync_all()?;
    storage::rename_sync(data, pool).map_err(|e| io::Error::other(e.to_string()))?;
    Ok(false)
}
