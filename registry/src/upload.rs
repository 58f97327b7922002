//! Blob upload sessions: `_uploads/<uuid>/{data,startedat}` in Distribution's layout, so
//! a session survives a restart. The session's content is the storage driver's
//! resumable [`Writer`] at its `data` key: each request resumes it, appends its body and
//! flushes (or commits it under its digest), and the writer keeps its own sha256 state
//! beside the data, so nothing here hashes or touches files. The filesystem driver
//! writes and hashes 1 MiB batches on the uploads' writer pool (`storage::append`)
//! while the next one arrives, so a slow client holds no thread; S3 sends parts of a
//! multipart upload. At most `oci.max_uploads` bodies are received at once; past that a
//! request is answered `429 TOOMANYREQUESTS`.
//!
//! The session's lock and the upload's slot are handed to the writer ([`Writer::hold`]):
//! a request dropped mid-body (client gone) releases them only once its writer has let
//! go of the content, so a retry never races a write still landing.
//!
//! Completion pins the digest, commits the writer (it verifies the digest, makes the
//! content durable and moves it into the pool, or keeps and touches the pool's copy)
//! and only then writes the layer link. Generic artifacts share the commit half
//! ([`Store::ingest_stream`]) and link the blob into their own tree instead.

use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use bytes::Bytes;
use dashmap::DashMap;
use futures::{Stream, StreamExt};
use tokio::sync::{Mutex, OwnedMutexGuard, OwnedSemaphorePermit};

use crate::digest::Digest;
use crate::hooks::Point;
use crate::liveness::PinGuard;
use crate::names::RepoName;
use crate::storage::{self, DriverError, PathSpec, Writer, WriterStart, path_for};
use crate::store::Store;
use crate::{Error, Result};

/// The locks of live sessions, keyed by repository and upload id.
#[derive(Default)]
pub struct Sessions {
    map: DashMap<String, Arc<Mutex<SessionState>>>,
}

/// What a session's lock guards: the session's content (its writer) and folder.
#[derive(Default)]
pub(crate) struct SessionState;

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

/// A session's lock, owned so that it can travel with the writer.
type SessionGuard = OwnedMutexGuard<SessionState>;

/// A write error: out of space is the client's business, with what it means for the
/// session.
fn write_err(e: DriverError) -> Error {
    match e {
        DriverError::Io { source, .. } => Error::from_io(source),
        e => e.into(),
    }
}

/// How a request body went into a writer.
enum Received {
    All,
    /// The body ended before its end (the client went, a framing error); `sent` bytes
    /// of it reached the writer.
    EndedEarly {
        sent: u64,
        why: String,
    },
}

/// Appends `body` to `w`.
async fn receive<S, E>(w: &mut dyn Writer, body: S) -> Result<Received>
where
    S: Stream<Item = std::result::Result<Bytes, E>> + Send,
    E: std::fmt::Display,
{
    futures::pin_mut!(body);
    let mut sent = 0u64;
    while let Some(chunk) = body.next().await {
        match chunk {
            Ok(b) => {
                sent += b.len() as u64;
                w.write(b).await.map_err(write_err)?;
            }
            Err(e) => {
                return Ok(Received::EndedEarly {
                    sent,
                    why: e.to_string(),
                });
            }
        }
    }
    Ok(Received::All)
}

impl Store {
    /// Takes an upload session's lock, owned (it travels with the session's writer).
    async fn lock_session(&self, session: Arc<Mutex<SessionState>>) -> SessionGuard {
        match session.clone().try_lock_owned() {
            Ok(g) => g,
            Err(_) => {
                self.liveness.hooks().reach(Point::SessionWaits, None).await;
                session.lock_owned().await
            }
        }
    }

    /// One of the `oci.max_uploads` slots for receiving a body, else `429`.
    fn upload_slot(&self) -> Result<OwnedSemaphorePermit> {
        self.upload_slots.clone().try_acquire_owned().map_err(|_| {
            Error::TooManyRequests(format!(
                "{} upload bodies are being received, the most this registry takes at once \
                 (oci.max_uploads); retry shortly",
                self.options.max_uploads
            ))
        })
    }

    /// Starts a session in `name`; returns its id.
    pub async fn start_upload(&self, name: &RepoName) -> Result<String> {
        let id = uuid::Uuid::new_v4().hyphenated().to_string();
        self.create_session(name, &id).await?;
        Ok(id)
    }

    /// Writes a session's `startedat` and opens its writer, empty.
    async fn create_session(&self, name: &RepoName, id: &str) -> Result<Box<dyn Writer>> {
        let now = time::OffsetDateTime::now_utc()
            .format(&time::format_description::well_known::Rfc3339)
            .map_err(Error::internal)?;
        // Session files need no fsync: a session lost in a crash is restarted by its
        // client; what is durable is the blob at completion.
        self.driver
            .put_volatile(&path_for(PathSpec::UploadStartedAt(name, id)), now.into())
            .await?;
        Ok(self
            .driver
            .writer(&path_for(PathSpec::UploadData(name, id)), WriterStart::New)
            .await?)
    }

    /// The bytes a session holds; `BLOB_UPLOAD_UNKNOWN` (and its lock forgotten) when
    /// it is gone.
    async fn upload_size(&self, name: &RepoName, id: &str) -> Result<u64> {
        match self
            .driver
            .writer_size(&path_for(PathSpec::UploadData(name, id)))
            .await
        {
            Ok(size) => Ok(size),
            Err(e) if e.is_not_found() => {
                self.sessions.forget(name, id);
                Err(Error::BlobUploadUnknown)
            }
            Err(e) => Err(e.into()),
        }
    }

    /// Resumes a session's writer.
    async fn resume_upload(&self, name: &RepoName, id: &str) -> Result<Box<dyn Writer>> {
        match self
            .driver
            .writer(
                &path_for(PathSpec::UploadData(name, id)),
                WriterStart::Resume,
            )
            .await
        {
            Ok(w) => Ok(w),
            Err(e) if e.is_not_found() => {
                self.sessions.forget(name, id);
                Err(Error::BlobUploadUnknown)
            }
            Err(e) => Err(e.into()),
        }
    }

    /// How many bytes a session holds.
    pub async fn upload_status(&self, name: &RepoName, id: &str) -> Result<(String, u64)> {
        let id = parse_id(id)?;
        let session = self.sessions.get(name, &id);
        let _guard = self.lock_session(session).await;
        let size = self.upload_size(name, &id).await?;
        Ok((id, size))
    }

    /// Appends a chunk. With `expect_start`, the chunk must start at the current offset
    /// (else `RANGE_INVALID`, 416). Returns the new offset. A body that ends early
    /// leaves what arrived in the session.
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
        let guard = self.lock_session(session).await;
        let slot = self.upload_slot()?;
        let mut w = self.resume_upload(name, &id).await?;
        let size = w.size();
        if let Some(start) = expect_start
            && start != size
        {
            return Err(Error::RangeInvalid {
                message: format!("chunk starts at byte {start}, but the upload has {size} bytes"),
                size: None,
            });
        }
        w.hold(Box::new((guard, slot)));
        if let Some(n) = announced {
            w.reserve(n);
        }
        let received = receive(&mut *w, body).await?;
        w.flush().await.map_err(write_err)?;
        match received {
            Received::All => Ok((id, w.size())),
            Received::EndedEarly { sent, why } => Err(ended_early(sent, &why)),
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
        let guard = self.lock_session(session).await;
        let slot = match body {
            Some(_) => Some(self.upload_slot()?),
            None => None,
        };
        let mut w = self.resume_upload(name, &id).await?;
        w.hold(Box::new((guard, slot)));
        self.complete_upload(name, &id, w, digest, body, announced)
            .await
    }

    /// Receives the last chunk (if any) into a session's writer, commits it to the pool
    /// under `digest` and links it into `name`; the session is removed. A digest
    /// mismatch removes the session.
    async fn complete_upload<S, E>(
        &self,
        name: &RepoName,
        id: &str,
        mut w: Box<dyn Writer>,
        digest: &Digest,
        body: Option<S>,
        announced: Option<u64>,
    ) -> Result<u64>
    where
        S: Stream<Item = std::result::Result<Bytes, E>> + Send,
        E: std::fmt::Display,
    {
        if let Some(body) = body {
            if let Some(n) = announced {
                w.reserve(n);
            }
            if let Received::EndedEarly { sent, why } = receive(&mut *w, body).await? {
                w.flush().await.map_err(write_err)?;
                return Err(ended_early(sent, &why));
            }
        }
        let size = w.size();
        let pin = self.liveness.pin(vec![digest.clone()]).await?;
        match w
            .commit(digest, &path_for(PathSpec::BlobData(digest)))
            .await
        {
            Ok(_) => {}
            Err(DriverError::DigestMismatch { computed, .. }) => {
                drop(pin);
                self.discard_upload(name, id).await?;
                return Err(Error::DigestInvalid(format!(
                    "the uploaded {size} bytes have digest {computed}, not {digest}"
                )));
            }
            Err(e) => return Err(write_err(e)),
        }
        self.liveness
            .hooks()
            .reach(Point::Checked, Some(digest))
            .await;
        self.link_layer(name, digest).await?;
        self.liveness.pending_add(vec![digest.clone()]).await?;
        pin.finish().await?;
        self.discard_upload(name, id).await?;
        Ok(size)
    }

    /// Cancels a session and removes its files.
    pub async fn cancel_upload(&self, name: &RepoName, id: &str) -> Result<()> {
        let id = parse_id(id)?;
        let session = self.sessions.get(name, &id);
        let _guard = self.lock_session(session).await;
        // A flushed writer may hold state outside the folder's keys (a multipart upload
        // on S3, which no listing shows and which the bucket bills): cancel it first.
        let data = path_for(PathSpec::UploadData(name, &id));
        let cancelled = match self.driver.writer(&data, WriterStart::Resume).await {
            Ok(w) => {
                w.cancel().await?;
                true
            }
            Err(e) if e.is_not_found() => false,
            Err(e) => return Err(e.into()),
        };
        let removed = self.remove(PathSpec::UploadDir(name, &id)).await?;
        self.sessions.forget(name, &id);
        if !(removed || cancelled) {
            return Err(Error::BlobUploadUnknown);
        }
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

    /// A whole blob in one request (`POST ?digest=`): a private session that is
    /// finished at once and discarded on any failure.
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
        let slot = self.upload_slot()?;
        let id = uuid::Uuid::new_v4().hyphenated().to_string();
        let r = match self.create_session(name, &id).await {
            Ok(mut w) => {
                w.hold(Box::new(slot));
                self.complete_upload(name, &id, w, digest, Some(body), announced)
                    .await
            }
            Err(e) => Err(e),
        };
        if r.is_err() {
            let _ = self.discard_upload(name, &id).await;
        }
        r
    }
}

fn ended_early(sent: u64, why: &str) -> Error {
    Error::BlobUploadInvalid(format!(
        "request body ended early after {sent} bytes ({why}); the session keeps them"
    ))
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
        let pin = self.liveness.pin(vec![digest.clone()]).await?;
        let pool = self.fs()?.full(&path_for(PathSpec::BlobData(digest)));
        let reused = tokio::task::spawn_blocking(move || commit_to_pool(&data, &pool))
            .await
            .map_err(Error::internal)?
            .map_err(Error::from_io)?;
        Ok((pin, reused))
    }

    /// Streams `body` into a new writer at `key` (the caller owns and removes its
    /// folder), verifies it against `expected` when given (else takes its sha256
    /// digest) and commits it to the pool, without linking it anywhere.
    pub(crate) async fn ingest_stream<S, E>(
        &self,
        key: &str,
        expected: Option<&Digest>,
        body: S,
    ) -> Result<Ingested>
    where
        S: Stream<Item = std::result::Result<Bytes, E>> + Send,
        E: std::fmt::Display,
    {
        let slot = self.upload_slot()?;
        let mut w = self.driver.writer(key, WriterStart::New).await?;
        w.hold(Box::new(slot));
        if let Received::EndedEarly { sent, why } = receive(&mut *w, body).await? {
            let _ = w.cancel().await;
            return Err(ended_early(sent, &why));
        }
        let size = w.size();
        let digest = match expected {
            Some(d) => d.clone(),
            None => w.sha256().await.map_err(write_err)?,
        };
        let pin = self.liveness.pin(vec![digest.clone()]).await?;
        let committed = match w
            .commit(&digest, &path_for(PathSpec::BlobData(&digest)))
            .await
        {
            Ok(c) => c,
            Err(DriverError::DigestMismatch { computed, .. }) => {
                return Err(Error::DigestInvalid(format!(
                    "the uploaded {size} bytes have digest {computed}, not {digest}"
                )));
            }
            Err(e) => return Err(write_err(e)),
        };
        Ok(Ingested {
            digest,
            size,
            reused: committed.reused,
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
