//! The S3 resumable writer: a multipart upload at the writer's key, with its state beside
//! it so that an upload continues after a restart (or on another server):
//!
//! - `<path>.state`: JSON with the upload id, every part's ETag and size, the key and size
//!   of the tail object, the total size, and the sha256 state of all of it;
//! - `<path>.tail-<size>`: the bytes after the last part (S3 parts but the last must be
//!   at least 5 MiB, so a flush inside a part keeps them here). Named by size, so the
//!   state never names a tail a later flush is overwriting; the old one goes once the
//!   new state is written.
//!
//! Memory: the bytes after the last part (less than one part, `chunksize`) and the one
//! full part being sent meanwhile. A part is sent once it is full, while the next fills;
//! `flush` waits for it and stores the tail and the state; `commit` sends the tail as
//! the last part, checks the digest, completes the upload and copies the object into
//! place.
//! Parts sent after the last flush and then lost to a crash are simply not listed at
//! completion (S3 drops unlisted parts).

use bytes::{Bytes, BytesMut};
use futures::TryStreamExt;
use object_store::PutPayload;
use object_store::multipart::{MultipartStore, PartId};
use object_store::path::Path as ObjPath;

use super::S3Driver;
use crate::digest::{Algorithm, Digest, Hasher};
use crate::storage::driver::{
    Committed, Driver, DriverError, DriverResult, PutMode, Writer, WriterStart, check_file_path,
    writer_state_path,
};
use crate::storage::hashstate::ResumableSha256;

#[derive(serde::Serialize, serde::Deserialize, Clone)]
struct Part {
    etag: String,
    size: u64,
}

#[derive(serde::Serialize, serde::Deserialize, Clone)]
struct State {
    upload_id: String,
    parts: Vec<Part>,
    /// Driver path of the tail object, when there is a tail.
    tail_key: Option<String>,
    tail: u64,
    size: u64,
    sha256: String,
}

pub(super) struct S3Writer {
    d: S3Driver,
    path: String,
    obj: ObjPath,
    upload_id: String,
    parts: Vec<Part>,
    /// The tail object the saved state names.
    saved_tail: Option<String>,
    /// Bytes after the last part.
    buf: BytesMut,
    hash: ResumableSha256,
    size: u64,
    failed: bool,
    /// The part being sent while the next one fills (one at a time).
    inflight: Option<tokio::task::JoinHandle<DriverResult<Part>>>,
    /// The caller's guard ([`Writer::hold`]).
    held: Option<Box<dyn std::any::Any + Send + Sync>>,
}

/// A writer dropped while a part is being sent keeps the caller's guard until the part
/// has landed (or failed).
impl Drop for S3Writer {
    fn drop(&mut self) {
        if let (Some(held), Some(task)) = (self.held.take(), self.inflight.take())
            && let Ok(rt) = tokio::runtime::Handle::try_current()
        {
            rt.spawn(async move {
                let _ = task.await;
                drop(held);
            });
        }
    }
}

fn corrupt(path: &str, why: &str) -> DriverError {
    DriverError::Backend {
        path: path.to_owned(),
        message: format!("writer state: {why}"),
    }
}

impl S3Writer {
    async fn load_state(d: &S3Driver, path: &str) -> DriverResult<State> {
        let (bytes, _) = d.get(&writer_state_path(path)).await?;
        serde_json::from_slice(&bytes).map_err(|e| corrupt(path, &e.to_string()))
    }

    pub(super) async fn saved_size(d: &S3Driver, path: &str) -> DriverResult<u64> {
        Ok(Self::load_state(d, path).await?.size)
    }

    pub(super) async fn open(
        d: S3Driver,
        path: &str,
        start: WriterStart,
    ) -> DriverResult<S3Writer> {
        check_file_path(path)?;
        let obj = d.obj(path)?;
        match start {
            WriterStart::New => {
                if let Ok(old) = Self::load_state(&d, path).await {
                    let _ = d.inner.store.abort_multipart(&obj, &old.upload_id).await;
                    Self::remove_tails(&d, path, None).await?;
                }
                let upload_id = d
                    .inner
                    .store
                    .create_multipart(&obj)
                    .await
                    .map_err(|e| d.map_err(path, e))?;
                let w = S3Writer {
                    d,
                    path: path.to_owned(),
                    obj,
                    upload_id,
                    parts: Vec::new(),
                    saved_tail: None,
                    buf: BytesMut::new(),
                    hash: ResumableSha256::new(),
                    size: 0,
                    failed: false,
                    inflight: None,
                    held: None,
                };
                w.save_state(None).await?;
                Ok(w)
            }
            WriterStart::Resume => {
                let s = Self::load_state(&d, path).await?;
                let hash = ResumableSha256::restore(&s.sha256)
                    .ok_or_else(|| corrupt(path, "bad hash state"))?;
                let mut buf = BytesMut::new();
                if let Some(t) = &s.tail_key {
                    let (b, _) = d.get(t).await?;
                    if b.len() as u64 != s.tail {
                        return Err(corrupt(path, "tail size differs"));
                    }
                    buf.extend_from_slice(&b);
                }
                let in_parts: u64 = s.parts.iter().map(|p| p.size).sum();
                if in_parts + s.tail != s.size {
                    return Err(corrupt(path, "sizes do not add up"));
                }
                Ok(S3Writer {
                    d,
                    path: path.to_owned(),
                    obj,
                    upload_id: s.upload_id,
                    parts: s.parts,
                    saved_tail: s.tail_key,
                    buf,
                    hash,
                    size: s.size,
                    failed: false,
                    inflight: None,
                    held: None,
                })
            }
        }
    }

    fn tail_prefix(path: &str) -> String {
        format!("{path}.tail-")
    }

    /// Removes the tail objects of `path` but `keep`.
    async fn remove_tails(d: &S3Driver, path: &str, keep: Option<&str>) -> DriverResult<()> {
        let (dir, _) = path.rsplit_once('/').unwrap_or(("", path));
        let prefix = Self::tail_prefix(path);
        let names = match d.list(dir).await {
            Ok(n) => n,
            Err(DriverError::NotFound(_)) => return Ok(()),
            Err(e) => return Err(e),
        };
        let tails: Vec<String> = names
            .into_iter()
            .filter(|e| !e.is_dir)
            .map(|e| {
                if dir.is_empty() {
                    e.name
                } else {
                    format!("{dir}/{}", e.name)
                }
            })
            .filter(|k| k.starts_with(&prefix) && Some(k.as_str()) != keep)
            .collect();
        if !tails.is_empty() {
            for r in d.delete_many(&tails).await? {
                r?;
            }
        }
        Ok(())
    }

    async fn save_state(&self, tail_key: Option<String>) -> DriverResult<()> {
        let s = State {
            upload_id: self.upload_id.clone(),
            parts: self.parts.clone(),
            tail: if tail_key.is_some() {
                self.buf.len() as u64
            } else {
                0
            },
            tail_key,
            size: self.size,
            sha256: self.hash.save(),
        };
        let text = serde_json::to_vec(&s).map_err(|e| corrupt(&self.path, &e.to_string()))?;
        self.d
            .put(
                &writer_state_path(&self.path),
                Bytes::from(text),
                PutMode::Overwrite,
            )
            .await
            .map(drop)
    }

    /// Starts sending `data` as the next part, after the part in flight has gone: one
    /// part is sent while the next one fills.
    async fn send_part(&mut self, data: Bytes) -> DriverResult<()> {
        self.settle().await?;
        let (d, obj, id, path) = (
            self.d.clone(),
            self.obj.clone(),
            self.upload_id.clone(),
            self.path.clone(),
        );
        let index = self.parts.len();
        let size = data.len() as u64;
        self.inflight = Some(tokio::spawn(async move {
            let PartId { content_id } = d
                .inner
                .store
                .put_part(&obj, &id, index, PutPayload::from(data))
                .await
                .map_err(|e| d.map_err(&path, e))?;
            Ok(Part {
                etag: content_id,
                size,
            })
        }));
        Ok(())
    }

    /// Waits for the part in flight and records it.
    async fn settle(&mut self) -> DriverResult<()> {
        let Some(task) = self.inflight.take() else {
            return Ok(());
        };
        let part = match task.await {
            Ok(r) => r,
            Err(e) => Err(DriverError::Backend {
                path: self.path.clone(),
                message: format!("part upload task: {e}"),
            }),
        };
        match part {
            Ok(p) => {
                self.parts.push(p);
                Ok(())
            }
            Err(e) => {
                self.failed = true;
                Err(e)
            }
        }
    }

    fn poisoned(&self) -> DriverError {
        DriverError::Backend {
            path: self.path.clone(),
            message: "an earlier write to this writer failed".into(),
        }
    }

    /// Aborts the upload and removes the state, the tails and the writer's own object.
    async fn remove_all(&self) -> DriverResult<()> {
        match self
            .d
            .inner
            .store
            .abort_multipart(&self.obj, &self.upload_id)
            .await
        {
            Ok(()) | Err(object_store::Error::NotFound { .. }) => {}
            Err(e) => return Err(self.d.map_err(&self.path, e)),
        }
        Self::remove_tails(&self.d, &self.path, None).await?;
        let own = vec![writer_state_path(&self.path), self.path.clone()];
        for r in self.d.delete_many(&own).await? {
            r?;
        }
        Ok(())
    }
}

#[async_trait::async_trait]
impl Writer for S3Writer {
    fn size(&self) -> u64 {
        self.size
    }

    fn hold(&mut self, guard: Box<dyn std::any::Any + Send + Sync>) {
        self.held = Some(guard);
    }

    async fn write(&mut self, chunk: Bytes) -> DriverResult<()> {
        if self.failed {
            return Err(self.poisoned());
        }
        let part = self.d.inner.config.chunksize as usize;
        self.hash.update(&chunk);
        self.size += chunk.len() as u64;
        if self.buf.capacity() - self.buf.len() < chunk.len() {
            // A whole part at once: growing by doubling would copy each part twice.
            self.buf.reserve(part.max(chunk.len()));
        }
        self.buf.extend_from_slice(&chunk);
        while self.buf.len() >= part {
            let data = self.buf.split_to(part).freeze();
            if let Err(e) = self.send_part(data).await {
                self.failed = true;
                return Err(e);
            }
        }
        Ok(())
    }

    async fn sha256(&mut self) -> DriverResult<Digest> {
        if self.failed {
            return Err(self.poisoned());
        }
        Ok(self.hash.clone().finish())
    }

    async fn flush(&mut self) -> DriverResult<()> {
        if self.failed {
            return Err(self.poisoned());
        }
        self.settle().await?;
        let tail_key = if self.buf.is_empty() {
            None
        } else {
            let key = format!("{}{}", Self::tail_prefix(&self.path), self.size);
            self.d
                .put(&key, Bytes::copy_from_slice(&self.buf), PutMode::Overwrite)
                .await?;
            Some(key)
        };
        self.save_state(tail_key.clone()).await?;
        if self.saved_tail.is_some() && self.saved_tail != tail_key {
            Self::remove_tails(&self.d, &self.path, tail_key.as_deref()).await?;
        }
        self.saved_tail = tail_key;
        Ok(())
    }

    async fn commit(mut self: Box<Self>, expected: &Digest, to: &str) -> DriverResult<Committed> {
        if self.failed {
            return Err(self.poisoned());
        }
        check_file_path(to)?;
        self.d.obj(to)?;
        // No part may still be on its way when the upload is aborted or completed.
        self.settle().await?;
        if expected.algorithm() == Algorithm::Sha256 {
            let computed = self.hash.clone().finish();
            if &computed != expected {
                self.remove_all().await?;
                return Err(DriverError::DigestMismatch {
                    expected: expected.clone(),
                    computed,
                });
            }
        }
        let size = self.size;
        // Content-addressed: a destination that exists holds these bytes already.
        match self.d.head(to).await {
            Ok(_) => {
                self.d.touch(to).await?;
                self.remove_all().await?;
                return Ok(Committed { size, reused: true });
            }
            Err(DriverError::NotFound(_)) => {}
            Err(e) => return Err(e),
        }
        if !self.buf.is_empty() || self.parts.is_empty() {
            let last = std::mem::take(&mut self.buf).freeze();
            self.send_part(last).await?;
            self.settle().await?;
        }
        let parts: Vec<PartId> = self
            .parts
            .iter()
            .map(|p| PartId {
                content_id: p.etag.clone(),
            })
            .collect();
        self.d
            .inner
            .store
            .complete_multipart(&self.obj, &self.upload_id, parts)
            .await
            .map_err(|e| self.d.map_err(&self.path, e))?;
        if expected.algorithm() != Algorithm::Sha256 {
            let mut h = Hasher::new(expected.algorithm());
            let r = self.d.reader(&self.path, 0, None).await?;
            let mut body = r.body;
            while let Some(chunk) = body.try_next().await? {
                h.update(&chunk);
            }
            let computed = h.finish();
            if &computed != expected {
                self.remove_all().await?;
                return Err(DriverError::DigestMismatch {
                    expected: expected.clone(),
                    computed,
                });
            }
        }
        self.d.copy_object(&self.path, to).await?;
        self.remove_all().await?;
        Ok(Committed {
            size,
            reused: false,
        })
    }

    async fn cancel(mut self: Box<Self>) -> DriverResult<()> {
        let _ = self.settle().await;
        self.remove_all().await
    }
}
