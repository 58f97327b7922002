//! Blob upload sessions: `_uploads/<uuid>/{data,startedat}` in Distribution's layout, so
//! a session survives a restart. Bodies stream through a bounded channel to a blocking
//! worker that appends and hashes in one pass; nothing holds a whole blob in memory.
//! The running sha256 state is kept in memory next to the offset it covers; when it is
//! missing (after a restart) it is rebuilt by re-reading the data file once.
//!
//! Completion verifies the digest, fsyncs once, renames the data into the pool and only
//! then writes the layer link. The pool-commit half is shared with generic artifacts
//! ([`Store::ingest_stream`], [`Store::commit_file_pinned`]), which link the blob into
//! their own tree instead of a repository.

use std::io::{self, Read};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use bytes::Bytes;
use dashmap::DashMap;
use futures::{Stream, StreamExt};
use tokio::sync::Mutex;

use crate::digest::{Algorithm, Digest, Hasher};
use crate::hooks::Point;
use crate::liveness::PinGuard;
use crate::names::RepoName;
use crate::storage::append::Appender;
use crate::storage::{self, PathSpec, path_for};
use crate::store::Store;
use crate::{Error, Result};

/// Frames in flight between the request body and the writer thread.
const CHANNEL_FRAMES: usize = 16;

/// In-memory state of live sessions, keyed by repository and upload id.
#[derive(Default)]
pub struct Sessions {
    map: DashMap<String, Arc<Mutex<SessionState>>>,
}

#[derive(Default)]
struct SessionState {
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
fn parse_id(id: &str) -> Result<String> {
    uuid::Uuid::parse_str(id)
        .map(|u| u.hyphenated().to_string())
        .map_err(|_| Error::BlobUploadUnknown)
}

fn io_err(e: io::Error) -> Error {
    Error::Internal(e.to_string())
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
fn hash_file(path: &Path, algorithm: Algorithm) -> io::Result<(u64, Hasher)> {
    let mut f = std::fs::File::open(path)?;
    let mut h = Hasher::new(algorithm);
    let mut buf = vec![0u8; 1 << 20];
    let mut n = 0u64;
    loop {
        let r = f.read(&mut buf)?;
        if r == 0 {
            break;
        }
        h.update(&buf[..r]);
        n += r as u64;
    }
    Ok((n, h))
}

impl Store {
    /// Starts a session in `name`; returns its id.
    pub async fn start_upload(&self, name: &RepoName) -> Result<String> {
        let id = uuid::Uuid::new_v4().hyphenated().to_string();
        let now = time::OffsetDateTime::now_utc()
            .format(&time::format_description::well_known::Rfc3339)
            .map_err(Error::internal)?;
        // Session files need no fsync: a session lost in a crash is restarted by its
        // client; what is durable is the blob at completion.
        self.driver
            .put_content_unsynced(
                &path_for(PathSpec::UploadStartedAt(name, &id)),
                now.into_bytes(),
            )
            .await?;
        self.driver
            .put_content_unsynced(&path_for(PathSpec::UploadData(name, &id)), Vec::new())
            .await?;
        Ok(id)
    }

    fn upload_data_path(&self, name: &RepoName, id: &str) -> PathBuf {
        self.driver.full(&path_for(PathSpec::UploadData(name, id)))
    }

    async fn upload_size(&self, name: &RepoName, id: &str) -> Result<u64> {
        match self
            .driver
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
        let _guard = session.lock().await;
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
        announced: Option<u64>,
    ) -> Result<(String, u64)>
    where
        S: Stream<Item = std::result::Result<Bytes, E>> + Send,
        E: std::fmt::Display,
    {
        let id = parse_id(id)?;
        let session = self.sessions.get(name, &id);
        let mut state = session.lock().await;
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
        let offset = self
            .append_locked(path, &mut state, size, body, announced)
            .await?;
        Ok((id, offset))
    }

    async fn append_locked<S, E>(
        &self,
        path: PathBuf,
        state: &mut SessionState,
        size: u64,
        body: S,
        announced: Option<u64>,
    ) -> Result<u64>
    where
        S: Stream<Item = std::result::Result<Bytes, E>> + Send,
        E: std::fmt::Display,
    {
        let hasher = match state.hasher.take() {
            Some((offset, h)) if offset == size => h,
            _ => {
                let p = path.clone();
                blocking(move || hash_file(&p, Algorithm::Sha256)).await?.1
            }
        };
        let before = hasher.clone();
        // Two threads per request body: one writes (see `storage::append`), one
        // hashes; the frames are shared, not copied.
        let (tx, mut rx) = tokio::sync::mpsc::channel::<Bytes>(CHANNEL_FRAMES);
        let (htx, mut hrx) = tokio::sync::mpsc::channel::<Bytes>(CHANNEL_FRAMES);
        let wpath = path.clone();
        let direct = self.options.direct_writes;
        let writer = tokio::task::spawn_blocking(move || -> io::Result<u64> {
            let mut w = Appender::open(&wpath, size, direct, announced)?;
            while let Some(b) = rx.blocking_recv() {
                w.write(b)?;
            }
            w.finish()
        });
        let hasher_task = tokio::task::spawn_blocking(move || {
            let mut h = hasher;
            while let Some(b) = hrx.blocking_recv() {
                h.update(&b);
            }
            h
        });
        let mut body_error = None;
        let mut sent = 0u64;
        futures::pin_mut!(body);
        while let Some(item) = body.next().await {
            match item {
                Ok(b) if b.is_empty() => {}
                Ok(b) => {
                    sent += b.len() as u64;
                    if htx.send(b.clone()).await.is_err() || tx.send(b).await.is_err() {
                        break; // a worker failed; its error is reported below
                    }
                }
                Err(e) => {
                    body_error = Some(e.to_string());
                    break;
                }
            }
        }
        drop(tx);
        drop(htx);
        let worker = match (writer.await, hasher_task.await) {
            (Ok(Ok(n)), Ok(h)) if n == sent => Ok(Ok((h, n))),
            (Ok(Ok(_)), _) => Ok(Err(io::Error::other("the hashing thread stopped early"))),
            (Ok(Err(e)), _) => Ok(Err(e)),
            (Err(e), _) => Err(e),
        };
        match worker {
            Ok(Ok((h, n))) => {
                state.hasher = Some((size + n, h));
                match body_error {
                    Some(e) => Err(Error::BlobUploadInvalid(format!(
                        "request body ended early after {n} bytes ({e}); the session keeps them"
                    ))),
                    None => Ok(size + n),
                }
            }
            failed => {
                // Undo a partial write so the data file matches the hash state again.
                let p = path.clone();
                blocking(move || {
                    std::fs::OpenOptions::new()
                        .write(true)
                        .open(&p)?
                        .set_len(size)
                })
                .await?;
                state.hasher = Some((size, before));
                Err(match failed {
                    Ok(Err(e)) => io_err(e),
                    Err(e) => Error::internal(e),
                    Ok(Ok(_)) => Error::Internal("unreachable".into()),
                })
            }
        }
    }

    /// Appends an optional last chunk, verifies `digest`, and moves the data into the pool
    /// and links it into `name`. A digest mismatch cancels the session. Returns the size.
    pub async fn finish_upload<S, E>(
        &self,
        name: &RepoName,
        id: &str,
        digest: &Digest,
        body: Option<S>,
        announced: Option<u64>,
    ) -> Result<u64>
    where
        S: Stream<Item = std::result::Result<Bytes, E>> + Send,
        E: std::fmt::Display,
    {
        let id = parse_id(id)?;
        let session = self.sessions.get(name, &id);
        let mut state = session.lock().await;
        let mut size = match self.upload_size(name, &id).await {
            Ok(s) => s,
            Err(e) => {
                self.sessions.forget(name, &id);
                return Err(e);
            }
        };
        let path = self.upload_data_path(name, &id);
        if let Some(body) = body {
            size = self
                .append_locked(path.clone(), &mut state, size, body, announced)
                .await?;
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
        let _guard = session.lock().await;
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
        let _guard = session.lock().await;
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
        let pool = self.driver.full(&path_for(PathSpec::BlobData(digest)));
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
        let mut state = SessionState {
            hasher: Some((0, Hasher::new(Algorithm::Sha256))),
        };
        let size = self
            .append_locked(data.clone(), &mut state, 0, body, None)
            .await?;
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

/// The size and sha256 digest of a local file (read once, on a blocking thread).
pub(crate) async fn hash_local_file(path: PathBuf) -> Result<(u64, Digest)> {
    let (n, h) = blocking(move || hash_file(&path, Algorithm::Sha256)).await?;
    Ok((n, h.finish()))
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
