//! Generic artifacts: build outputs (packages, ISO and VM images, tarballs, docs) kept
//! in the same content-addressed pool as image layers, named by a tree
//! `branch/tag/job/format/<file path>` whose files are link files into the pool (after
//! dlrepo). A file that is both an artifact and a layer is stored once, and one collector
//! cleans both: artifact links are roots of the mark phase.
//!
//! This module owns the artifacts tree (`docker/registry/v2/artifacts/`, see
//! [`crate::storage::paths`]): uploads and their links (`tree`), listings, tag flags,
//! deletes, per-branch policies and usage (`tree`), finalising a format with its
//! post-process command (`postprocess`) and the retention policy (`retention`). It never
//! modifies a pool blob: post-processing works on private copies and re-ingests its
//! results as new pool entries. It never removes pool blobs either — that is the
//! collector's job.
//!
//! Concurrency: link writes of one format are serialised by a per-format mutex (held by
//! a finalisation for its whole run); deletes and tag-flag changes take the tree lock
//! exclusively, link writes take it shared, so a delete never interleaves with a link
//! being written into the subtree it removes.

pub(crate) mod names;
mod postprocess;
mod retention;
mod tree;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::SystemTime;

use dashmap::DashMap;
use serde::{Deserialize, Serialize};
use tokio::sync::{Mutex, OwnedMutexGuard, RwLock};

pub use names::{FilePath, FormatId, RESERVED_JOBS, RESERVED_TAGS, Segment};
pub use postprocess::{Finalized, PostProcess};
pub use retention::RetentionReport;
pub use tree::{ArtifactStat, Entry, Listing, Lookup, PutArtifact, Removed, Scope, TagFlag, Usage};

use crate::storage::{PathSpec, path_for};
use crate::store::Store;
use crate::{Error, Result};

/// A tag's record (`.tag.json`).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct TagMeta {
    /// RFC 3339, set when the tag's first file was uploaded.
    pub created: String,
    #[serde(default)]
    pub released: bool,
    #[serde(default)]
    pub locked: bool,
}

/// A format's record (`.format.json`).
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct FormatMeta {
    /// Files were uploaded since the last finalisation.
    #[serde(default)]
    pub dirty: bool,
    /// RFC 3339 time of the last finalisation.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub finalized: Option<String>,
}

/// A branch's retention policy (`.branch.json`): keep the newest N tags of each kind, by
/// creation time. `None` keeps every tag of that kind; locked tags are never counted or
/// removed.
#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct Policy {
    #[serde(default)]
    pub max_daily_tags: Option<u32>,
    #[serde(default)]
    pub max_released_tags: Option<u32>,
}

/// The locks of the artifacts tree of one store.
#[derive(Default)]
pub struct Locks {
    tree: RwLock<()>,
    formats: DashMap<String, Arc<Mutex<()>>>,
}

/// A held per-format lock; the map entry goes when nobody holds or waits for it.
pub(crate) struct FormatLock {
    guard: Option<OwnedMutexGuard<()>>,
    key: String,
    locks: Arc<Locks>,
}

impl Drop for FormatLock {
    fn drop(&mut self) {
        self.guard.take();
        self.locks
            .formats
            .remove_if(&self.key, |_, m| Arc::strong_count(m) == 1);
    }
}

/// A scratch folder (an upload in flight, a post-process work dir). Removed with
/// [`ScratchDir::remove`]; if the request is dropped first, removed in the background.
pub(crate) struct ScratchDir {
    path: Option<PathBuf>,
}

impl ScratchDir {
    pub(crate) fn new(path: PathBuf) -> ScratchDir {
        ScratchDir { path: Some(path) }
    }

    pub(crate) fn path(&self) -> &std::path::Path {
        self.path.as_deref().unwrap_or(std::path::Path::new(""))
    }

    pub(crate) async fn remove(mut self) {
        if let Some(p) = self.path.take() {
            let _ = tokio::task::spawn_blocking(move || remove_dir_quietly(&p)).await;
        }
    }
}

impl Drop for ScratchDir {
    fn drop(&mut self) {
        if let Some(p) = self.path.take() {
            match tokio::runtime::Handle::try_current() {
                Ok(h) => {
                    h.spawn_blocking(move || remove_dir_quietly(&p));
                }
                Err(_) => remove_dir_quietly(&p),
            }
        }
    }
}

fn remove_dir_quietly(p: &std::path::Path) {
    if let Err(e) = std::fs::remove_dir_all(p)
        && e.kind() != std::io::ErrorKind::NotFound
    {
        tracing::warn!(path = %p.display(), error = %e, "cannot remove scratch folder");
    }
}

/// RFC 3339 (UTC) of a time.
pub(crate) fn rfc3339(t: SystemTime) -> String {
    time::OffsetDateTime::from(t)
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_default()
}

/// Parses an RFC 3339 time.
pub(crate) fn parse_rfc3339(s: &str) -> Option<SystemTime> {
    time::OffsetDateTime::parse(s, &time::format_description::well_known::Rfc3339)
        .ok()
        .map(SystemTime::from)
}

impl Store {
    pub(crate) async fn lock_format(&self, f: &FormatId) -> FormatLock {
        let key = f.to_string();
        let m = self
            .artifacts
            .formats
            .entry(key.clone())
            .or_default()
            .value()
            .clone();
        let guard = m.lock_owned().await;
        FormatLock {
            guard: Some(guard),
            key,
            locks: self.artifacts.clone(),
        }
    }

    /// Reads a small JSON record; `None` when it does not exist.
    pub(crate) async fn read_json<T: serde::de::DeserializeOwned>(
        &self,
        spec: PathSpec<'_>,
    ) -> Result<Option<T>> {
        let path = path_for(spec);
        match self.driver.get(&path).await {
            Ok((b, _)) => serde_json::from_slice(&b)
                .map(Some)
                .map_err(|e| Error::Internal(format!("corrupt record {path}: {e}"))),
            Err(e) if e.is_not_found() => Ok(None),
            Err(e) => Err(e.into()),
        }
    }

    /// Writes a small JSON record atomically.
    pub(crate) async fn write_json<T: Serialize>(&self, spec: PathSpec<'_>, v: &T) -> Result<()> {
        let data = serde_json::to_vec_pretty(v).map_err(Error::internal)?;
        self.driver
            .put(
                &path_for(spec),
                data.into(),
                crate::storage::PutMode::Overwrite,
            )
            .await?;
        Ok(())
    }
}
