//! The artifacts tree itself: uploading a file (stream into the pool, then link),
//! reading one, listing folders, tag flags, deletes, branch policies, usage, and the
//! enumeration of every link the collector treats as a root.

use std::collections::{HashMap, HashSet};
use std::time::SystemTime;

use bytes::Bytes;
use futures::{Stream, StreamExt};
use serde::Serialize;

use super::{
    FilePath, FormatId, FormatMeta, Policy, ScratchDir, Segment, TagMeta, parse_rfc3339, rfc3339,
};
use crate::digest::Digest;
use crate::storage::paths::{ARTIFACT_LINK, Scratch};
use crate::storage::{FileInfo, PathSpec, path_for};
use crate::store::Store;
use crate::upload::Ingested;
use crate::{Error, Result};

/// How many link files are read at once when a subtree is enumerated.
const READ_AHEAD: usize = 32;

/// A tag flag set with `PUT` and cleared with `DELETE` on `…/{tag}/{flag}`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TagFlag {
    Released,
    Locked,
}

impl TagFlag {
    pub fn as_str(self) -> &'static str {
        match self {
            TagFlag::Released => "released",
            TagFlag::Locked => "locked",
        }
    }
}

/// A subtree of the artifacts tree.
#[derive(Debug, Clone, Copy)]
pub enum Scope<'a> {
    Branch(&'a Segment),
    Tag(&'a Segment, &'a Segment),
    Job(&'a Segment, &'a Segment, &'a Segment),
    Format(&'a FormatId),
}

impl<'a> Scope<'a> {
    fn spec(self) -> PathSpec<'a> {
        match self {
            Scope::Branch(b) => PathSpec::ArtifactBranch(b),
            Scope::Tag(b, t) => PathSpec::ArtifactTag(b, t),
            Scope::Job(b, t, j) => PathSpec::ArtifactJob(b, t, j),
            Scope::Format(f) => PathSpec::ArtifactFormat(f),
        }
    }

    fn branch(self) -> &'a Segment {
        match self {
            Scope::Branch(b) | Scope::Tag(b, _) | Scope::Job(b, _, _) => b,
            Scope::Format(f) => &f.branch,
        }
    }

    /// `branch[/tag[/job[/format]]]`
    pub fn display(self) -> String {
        match self {
            Scope::Branch(b) => b.to_string(),
            Scope::Tag(b, t) => format!("{b}/{t}"),
            Scope::Job(b, t, j) => format!("{b}/{t}/{j}"),
            Scope::Format(f) => f.to_string(),
        }
    }

    /// The format and file path of a link found at `rel` (relative to this scope's
    /// folder, ending in `/.link`); `None` for anything that is not a valid link path.
    fn resolve(self, rel: &str) -> Option<(FormatId, FilePath)> {
        let comps: Vec<&str> = rel.split('/').collect();
        let (last, comps) = comps.split_last()?;
        if *last != ARTIFACT_LINK {
            return None;
        }
        let seg = |what: &str, s: &str| Segment::parse(what, s).ok();
        let (f, path) = match self {
            Scope::Branch(b) => {
                let [t, j, fm, path @ ..] = comps else {
                    return None;
                };
                let f = FormatId {
                    branch: b.clone(),
                    tag: seg("tag", t)?,
                    job: seg("job", j)?,
                    format: seg("format", fm)?,
                };
                (f, path)
            }
            Scope::Tag(b, t) => {
                let [j, fm, path @ ..] = comps else {
                    return None;
                };
                let f = FormatId {
                    branch: b.clone(),
                    tag: t.clone(),
                    job: seg("job", j)?,
                    format: seg("format", fm)?,
                };
                (f, path)
            }
            Scope::Job(b, t, j) => {
                let [fm, path @ ..] = comps else {
                    return None;
                };
                let f = FormatId {
                    branch: b.clone(),
                    tag: t.clone(),
                    job: j.clone(),
                    format: seg("format", fm)?,
                };
                (f, path)
            }
            Scope::Format(f) => (f.clone(), comps),
        };
        Some((f, FilePath::from_components(path).ok()?))
    }
}

/// One file of the tree, as enumerated.
#[derive(Debug, Clone)]
pub(crate) struct LinkEntry {
    pub path: FilePath,
    pub digest: Digest,
    /// The link file's modification time.
    pub modified: SystemTime,
}

/// What an upload did.
#[derive(Debug, Clone, Serialize)]
pub struct PutArtifact {
    pub digest: Digest,
    pub size: u64,
    /// The pool already held this content (from another job, branch or an image).
    pub reused: bool,
}

/// A file: its content's digest and size, and when its link was written.
#[derive(Debug, Clone)]
pub struct ArtifactStat {
    pub digest: Digest,
    pub size: u64,
    pub modified: SystemTime,
}

/// What a path inside a format names.
#[derive(Debug)]
pub enum Lookup {
    File(ArtifactStat),
    Folder,
    Missing,
}

/// One child in a folder listing.
#[derive(Debug, Clone, Serialize)]
pub struct Entry {
    pub name: String,
    /// `folder` or `file`.
    #[serde(rename = "type")]
    pub kind: &'static str,
    /// RFC 3339: the folder's, or for a file its link's, modification time.
    pub mtime: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub size: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub digest: Option<Digest>,
    /// Tags: creation time (RFC 3339).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub created: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub released: Option<bool>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub locked: Option<bool>,
    /// Formats: files were uploaded since the last finalisation.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub dirty: Option<bool>,
}

impl Entry {
    fn folder(name: &str, modified: SystemTime) -> Entry {
        Entry {
            name: name.to_owned(),
            kind: "folder",
            mtime: rfc3339(modified),
            size: None,
            digest: None,
            created: None,
            released: None,
            locked: None,
            dirty: None,
        }
    }
}

/// A folder listing (`GET` on a folder).
#[derive(Debug, Clone, Serialize)]
pub struct Listing {
    /// The folder, relative to `/artifacts/` (empty for the root).
    pub path: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub policy: Option<Policy>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tag: Option<TagMeta>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub format: Option<FormatMeta>,
    pub children: Vec<Entry>,
}

impl Listing {
    fn new(path: String, children: Vec<Entry>) -> Listing {
        Listing {
            path,
            policy: None,
            tag: None,
            format: None,
            children,
        }
    }
}

/// What a delete removed.
#[derive(Debug, Clone, Serialize)]
pub struct Removed {
    pub path: String,
    /// Files (links) removed; their pool blobs go at the next collection when nothing
    /// else links them.
    pub files: usize,
}

/// Disk usage of one branch. Each pool blob is counted once per branch however many of
/// its files link it; `shared_*` is what the branch shares with other branches or with
/// images, `exclusive_bytes` what deleting the branch would free.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Usage {
    pub branch: String,
    pub tags: usize,
    pub files: usize,
    /// Sum of the files' sizes, each file counted.
    pub logical_bytes: u64,
    /// Distinct pool blobs.
    pub blobs: usize,
    /// Their size, each counted once.
    pub stored_bytes: u64,
    /// Blobs (and their bytes) also linked by another branch or by an image.
    pub shared_blobs: usize,
    pub shared_bytes: u64,
    pub shared_with_branches_bytes: u64,
    pub shared_with_images_bytes: u64,
    pub exclusive_bytes: u64,
}

impl Store {
    /// Branches of the tree (folders whose names are valid branch names).
    pub async fn artifact_branches(&self) -> Result<Vec<Segment>> {
        Ok(self
            .list(PathSpec::ArtifactsRoot)
            .await?
            .iter()
            .filter_map(|n| Segment::parse("branch", n).ok())
            .collect())
    }

    async fn stat_opt(&self, spec: PathSpec<'_>) -> Result<Option<FileInfo>> {
        match self.fs()?.stat(&path_for(spec)).await {
            Ok(i) => Ok(Some(i)),
            Err(e) if e.is_not_found() => Ok(None),
            Err(e) => Err(e.into()),
        }
    }

    pub(crate) async fn dir_exists(&self, spec: PathSpec<'_>) -> Result<Option<SystemTime>> {
        Ok(self
            .stat_opt(spec)
            .await?
            .filter(|i| i.is_dir)
            .map(|i| i.modified))
    }

    /// Every file of a subtree with its digest (links removed meanwhile are skipped).
    pub(crate) async fn walk_links(&self, scope: Scope<'_>) -> Result<Vec<LinkEntry>> {
        let files = self
            .fs()?
            .walk_files(&path_for(scope.spec()), ARTIFACT_LINK)
            .await?;
        let found: Vec<(FormatId, FilePath, SystemTime)> = files
            .into_iter()
            .filter_map(|(rel, info)| scope.resolve(&rel).map(|(f, p)| (f, p, info.modified)))
            .collect();
        let read: Vec<Result<Option<LinkEntry>>> = futures::stream::iter(found)
            .map(|(format, path, modified)| async move {
                let d = self
                    .read_link(PathSpec::ArtifactLink(&format, &path))
                    .await?;
                Ok(d.map(|digest| LinkEntry {
                    path,
                    digest,
                    modified,
                }))
            })
            .buffer_unordered(READ_AHEAD)
            .collect()
            .await;
        let mut out = Vec::with_capacity(read.len());
        for r in read {
            if let Some(e) = r? {
                out.push(e);
            }
        }
        Ok(out)
    }

    /// How many files a subtree holds (without reading their links).
    pub(crate) async fn count_artifact_links(&self, scope: Scope<'_>) -> Result<usize> {
        Ok(self
            .fs()?
            .walk_files(&path_for(scope.spec()), ARTIFACT_LINK)
            .await?
            .len())
    }

    /// Every artifact link in the store: its digest and the link's modification time.
    /// These are roots of the collector's mark phase.
    pub async fn artifact_links(&self) -> Result<Vec<(Digest, SystemTime)>> {
        let mut out = Vec::new();
        for b in self.artifact_branches().await? {
            out.extend(
                self.walk_links(Scope::Branch(&b))
                    .await?
                    .into_iter()
                    .map(|e| (e.digest, e.modified)),
            );
        }
        Ok(out)
    }

    /// A tag's record; one is made up from the folder for a tag that lacks it.
    pub async fn artifact_tag(&self, b: &Segment, t: &Segment) -> Result<Option<TagMeta>> {
        let Some(modified) = self.dir_exists(PathSpec::ArtifactTag(b, t)).await? else {
            return Ok(None);
        };
        Ok(Some(
            self.read_json(PathSpec::ArtifactTagMeta(b, t))
                .await?
                .unwrap_or_else(|| TagMeta {
                    created: rfc3339(modified),
                    released: false,
                    locked: false,
                }),
        ))
    }

    /// The tags of a branch with their records.
    pub(crate) async fn artifact_tags(&self, b: &Segment) -> Result<Vec<(Segment, TagMeta)>> {
        let mut out = Vec::new();
        for name in self.list(PathSpec::ArtifactBranch(b)).await? {
            let Ok(t) = Segment::parse("tag", &name) else {
                continue;
            };
            if let Some(meta) = self.artifact_tag(b, &t).await? {
                out.push((t, meta));
            }
        }
        Ok(out)
    }

    pub(crate) async fn check_tag_writable(&self, b: &Segment, t: &Segment) -> Result<()> {
        if let Some(m) = self
            .read_json::<TagMeta>(PathSpec::ArtifactTagMeta(b, t))
            .await?
            && m.locked
        {
            return Err(Error::Conflict(format!(
                "tag {b}/{t} is locked; unlock it before changing it"
            )));
        }
        Ok(())
    }

    /// Refuses a file path below an existing file, or naming a folder that has files.
    pub(crate) async fn check_placement(&self, f: &FormatId, path: &FilePath) -> Result<()> {
        let comps: Vec<&str> = path.as_str().split('/').collect();
        for i in 1..comps.len() {
            let above = FilePath::from_components(&comps[..i])?;
            if self
                .stat_opt(PathSpec::ArtifactLink(f, &above))
                .await?
                .is_some()
            {
                return Err(Error::Conflict(format!(
                    "{f}/{above} is a file, so it cannot hold {path}"
                )));
            }
        }
        if self
            .stat_opt(PathSpec::ArtifactLink(f, path))
            .await?
            .is_none()
            && !self
                .list(PathSpec::ArtifactEntry(f, path))
                .await?
                .is_empty()
        {
            return Err(Error::Conflict(format!("{f}/{path} is a folder")));
        }
        Ok(())
    }

    /// Uploads one file: streams `body` into the pool (verified against `expected` when
    /// given; content the pool has already is reused), then links it at `path` in format
    /// `f`, creating the tag's record if needed and marking the format dirty. A digest
    /// mismatch stores and links nothing.
    #[tracing::instrument(skip_all, fields(format = %f, path = %path))]
    pub async fn put_artifact<S, E>(
        &self,
        f: &FormatId,
        path: &FilePath,
        expected: Option<&Digest>,
        body: S,
    ) -> Result<PutArtifact>
    where
        S: Stream<Item = std::result::Result<Bytes, E>> + Send,
        E: std::fmt::Display,
    {
        self.check_tag_writable(&f.branch, &f.tag).await?;
        self.check_placement(f, path).await?;
        let id = uuid::Uuid::new_v4().simple().to_string();
        let scratch = ScratchDir::new(self.fs()?.full(&path_for(PathSpec::ArtifactScratchEntry(
            Scratch::Uploads,
            &id,
        ))));
        let data = path_for(PathSpec::ArtifactUploadData(&id));
        let r = self.ingest_stream(&data, expected, body).await;
        scratch.remove().await;
        let Ingested {
            digest,
            size,
            reused,
            pin,
        } = r?;
        let _format = self.lock_format(f).await;
        let _tree = self.artifacts.tree.read().await;
        self.check_tag_writable(&f.branch, &f.tag).await?;
        if self
            .read_json::<TagMeta>(PathSpec::ArtifactTagMeta(&f.branch, &f.tag))
            .await?
            .is_none()
        {
            let meta = TagMeta {
                created: rfc3339(SystemTime::now()),
                released: false,
                locked: false,
            };
            self.write_json(PathSpec::ArtifactTagMeta(&f.branch, &f.tag), &meta)
                .await?;
        }
        self.write_link(PathSpec::ArtifactLink(f, path), &digest)
            .await?;
        let meta: FormatMeta = self
            .read_json(PathSpec::ArtifactFormatMeta(f))
            .await?
            .unwrap_or_default();
        if !meta.dirty {
            let meta = FormatMeta {
                dirty: true,
                ..meta
            };
            self.write_json(PathSpec::ArtifactFormatMeta(f), &meta)
                .await?;
        }
        self.liveness.pending_add(vec![digest.clone()]).await?;
        pin.finish().await?;
        tracing::info!(%digest, size, reused, "artifact stored");
        Ok(PutArtifact {
            digest,
            size,
            reused,
        })
    }

    /// A file's digest, size and link time; `None` when `path` is not a file.
    pub async fn stat_artifact(
        &self,
        f: &FormatId,
        path: &FilePath,
    ) -> Result<Option<ArtifactStat>> {
        let Some(digest) = self.read_link(PathSpec::ArtifactLink(f, path)).await? else {
            return Ok(None);
        };
        let Some(info) = self.stat_opt(PathSpec::ArtifactLink(f, path)).await? else {
            return Ok(None);
        };
        match self.pool_blob_size(&digest).await? {
            Some(size) => Ok(Some(ArtifactStat {
                digest,
                size,
                modified: info.modified,
            })),
            None => {
                tracing::warn!(format = %f, %path, %digest, "artifact link to a missing pool blob");
                Ok(None)
            }
        }
    }

    /// What `path` names inside format `f`.
    pub async fn lookup_artifact(&self, f: &FormatId, path: &FilePath) -> Result<Lookup> {
        if let Some(s) = self.stat_artifact(f, path).await? {
            return Ok(Lookup::File(s));
        }
        Ok(
            match self.dir_exists(PathSpec::ArtifactEntry(f, path)).await? {
                Some(_) => Lookup::Folder,
                None => Lookup::Missing,
            },
        )
    }

    /// `GET /artifacts/`: the branches.
    pub async fn list_artifact_root(&self) -> Result<Listing> {
        let mut children = Vec::new();
        for b in self.artifact_branches().await? {
            if let Some(m) = self.dir_exists(PathSpec::ArtifactBranch(&b)).await? {
                children.push(Entry::folder(b.as_str(), m));
            }
        }
        Ok(Listing::new(String::new(), children))
    }

    /// A branch: its tags with their creation time and flags, and its policy.
    pub async fn list_artifact_branch(&self, b: &Segment) -> Result<Listing> {
        if self
            .dir_exists(PathSpec::ArtifactBranch(b))
            .await?
            .is_none()
        {
            return Err(Error::NotFound);
        }
        let mut children = Vec::new();
        for (t, meta) in self.artifact_tags(b).await? {
            let Some(m) = self.dir_exists(PathSpec::ArtifactTag(b, &t)).await? else {
                continue;
            };
            let mut e = Entry::folder(t.as_str(), m);
            e.created = Some(meta.created);
            e.released = Some(meta.released);
            e.locked = Some(meta.locked);
            children.push(e);
        }
        let mut l = Listing::new(b.to_string(), children);
        l.policy = Some(
            self.read_json(PathSpec::ArtifactBranchMeta(b))
                .await?
                .unwrap_or_default(),
        );
        Ok(l)
    }

    /// A tag: its jobs, and its own record.
    pub async fn list_artifact_tag(&self, b: &Segment, t: &Segment) -> Result<Listing> {
        let meta = self.artifact_tag(b, t).await?.ok_or(Error::NotFound)?;
        let mut children = Vec::new();
        for name in self.list(PathSpec::ArtifactTag(b, t)).await? {
            let Ok(j) = Segment::parse("job", &name) else {
                continue;
            };
            if let Some(m) = self.dir_exists(PathSpec::ArtifactJob(b, t, &j)).await? {
                children.push(Entry::folder(j.as_str(), m));
            }
        }
        let mut l = Listing::new(format!("{b}/{t}"), children);
        l.tag = Some(meta);
        Ok(l)
    }

    /// A job: its formats, with their dirty flag.
    pub async fn list_artifact_job(
        &self,
        b: &Segment,
        t: &Segment,
        j: &Segment,
    ) -> Result<Listing> {
        if self
            .dir_exists(PathSpec::ArtifactJob(b, t, j))
            .await?
            .is_none()
        {
            return Err(Error::NotFound);
        }
        let mut children = Vec::new();
        for name in self.list(PathSpec::ArtifactJob(b, t, j)).await? {
            let Ok(format) = Segment::parse("format", &name) else {
                continue;
            };
            let f = FormatId {
                branch: b.clone(),
                tag: t.clone(),
                job: j.clone(),
                format,
            };
            if let Some(m) = self.dir_exists(PathSpec::ArtifactFormat(&f)).await? {
                let meta: FormatMeta = self
                    .read_json(PathSpec::ArtifactFormatMeta(&f))
                    .await?
                    .unwrap_or_default();
                let mut e = Entry::folder(f.format.as_str(), m);
                e.dirty = Some(meta.dirty);
                children.push(e);
            }
        }
        Ok(Listing::new(format!("{b}/{t}/{j}"), children))
    }

    /// A format's folder (`sub` = `None`) or a folder inside it: files with size, digest
    /// and link time, and sub-folders.
    pub async fn list_artifact_folder(
        &self,
        f: &FormatId,
        sub: Option<&FilePath>,
    ) -> Result<Listing> {
        let spec = match sub {
            Some(p) => PathSpec::ArtifactEntry(f, p),
            None => PathSpec::ArtifactFormat(f),
        };
        if self.dir_exists(spec).await?.is_none() {
            return Err(Error::NotFound);
        }
        let names = self.list(spec).await?;
        let paths: Vec<FilePath> = names
            .iter()
            .filter_map(|n| match sub {
                Some(p) => p.join(n).ok(),
                None => FilePath::parse(n).ok(),
            })
            .collect();
        let entries: Vec<Result<Option<Entry>>> = futures::stream::iter(paths)
            .map(|p| async move {
                let name = p.file_name().to_owned();
                Ok(match self.lookup_artifact(f, &p).await? {
                    Lookup::File(s) => Some(Entry {
                        kind: "file",
                        mtime: rfc3339(s.modified),
                        size: Some(s.size),
                        digest: Some(s.digest),
                        ..Entry::folder(&name, s.modified)
                    }),
                    Lookup::Folder => self
                        .dir_exists(PathSpec::ArtifactEntry(f, &p))
                        .await?
                        .map(|m| Entry::folder(&name, m)),
                    Lookup::Missing => None,
                })
            })
            .buffered(READ_AHEAD)
            .collect()
            .await;
        let mut children = Vec::with_capacity(entries.len());
        for e in entries {
            if let Some(e) = e? {
                children.push(e);
            }
        }
        let path = match sub {
            Some(p) => format!("{f}/{p}"),
            None => f.to_string(),
        };
        let mut l = Listing::new(path, children);
        if sub.is_none() {
            l.format = Some(
                self.read_json(PathSpec::ArtifactFormatMeta(f))
                    .await?
                    .unwrap_or_default(),
            );
        }
        Ok(l)
    }

    /// Sets or clears a tag flag; returns the tag's record.
    #[tracing::instrument(skip(self))]
    pub async fn set_artifact_tag_flag(
        &self,
        b: &Segment,
        t: &Segment,
        flag: TagFlag,
        value: bool,
    ) -> Result<TagMeta> {
        let _tree = self.artifacts.tree.write().await;
        let mut meta = self.artifact_tag(b, t).await?.ok_or(Error::NotFound)?;
        match flag {
            TagFlag::Released => meta.released = value,
            TagFlag::Locked => meta.locked = value,
        }
        self.write_json(PathSpec::ArtifactTagMeta(b, t), &meta)
            .await?;
        tracing::info!("tag flag changed");
        Ok(meta)
    }

    /// Deletes a branch, tag, job or format. A locked tag is never deleted (nor anything
    /// in it); a released one only with `force`. The subtree leaves the tree in one
    /// rename, then is removed; its pool blobs are left for the collector.
    #[tracing::instrument(skip(self), fields(scope = %scope.display()))]
    pub async fn delete_artifacts(&self, scope: Scope<'_>, force: bool) -> Result<Removed> {
        let tree = self.artifacts.tree.write().await;
        if self.dir_exists(scope.spec()).await?.is_none() {
            return Err(Error::NotFound);
        }
        let b = scope.branch();
        let tags = match scope {
            Scope::Branch(b) => self.artifact_tags(b).await?,
            Scope::Tag(b, t) | Scope::Job(b, t, _) => self
                .artifact_tag(b, t)
                .await?
                .map(|m| vec![(t.clone(), m)])
                .unwrap_or_default(),
            Scope::Format(f) => self
                .artifact_tag(&f.branch, &f.tag)
                .await?
                .map(|m| vec![(f.tag.clone(), m)])
                .unwrap_or_default(),
        };
        for (t, m) in &tags {
            if m.locked {
                return Err(Error::Conflict(format!(
                    "tag {b}/{t} is locked and is never deleted; unlock it first"
                )));
            }
            if m.released && !force {
                return Err(Error::Conflict(format!(
                    "tag {b}/{t} is released; add ?force to delete it"
                )));
            }
        }
        let files = self.count_artifact_links(scope).await?;
        let id = uuid::Uuid::new_v4().simple().to_string();
        let trash = path_for(PathSpec::ArtifactScratchEntry(Scratch::Trash, &id));
        self.fs()?.rename(&path_for(scope.spec()), &trash).await?;
        drop(tree);
        if let Err(e) = self.fs()?.delete(&trash).await
            && !e.is_not_found()
        {
            tracing::warn!(error = %e, path = trash, "cannot remove deleted artifacts");
        }
        tracing::info!(files, "artifacts deleted");
        Ok(Removed {
            path: scope.display(),
            files,
        })
    }

    /// A branch's retention policy (the default keeps everything).
    pub async fn artifact_policy(&self, b: &Segment) -> Result<Policy> {
        if self
            .dir_exists(PathSpec::ArtifactBranch(b))
            .await?
            .is_none()
        {
            return Err(Error::NotFound);
        }
        Ok(self
            .read_json(PathSpec::ArtifactBranchMeta(b))
            .await?
            .unwrap_or_default())
    }

    /// Sets a branch's retention policy (the branch is created if needed).
    pub async fn set_artifact_policy(&self, b: &Segment, p: &Policy) -> Result<()> {
        let _tree = self.artifacts.tree.read().await;
        self.write_json(PathSpec::ArtifactBranchMeta(b), p).await
    }

    /// Disk usage of a branch, and what of it is shared with other branches and images.
    pub async fn artifact_usage(&self, b: &Segment) -> Result<Usage> {
        if self
            .dir_exists(PathSpec::ArtifactBranch(b))
            .await?
            .is_none()
        {
            return Err(Error::NotFound);
        }
        let mut u = Usage {
            branch: b.to_string(),
            tags: self.artifact_tags(b).await?.len(),
            ..Usage::default()
        };
        let mut mine: HashMap<Digest, u64> = HashMap::new();
        for e in self.walk_links(Scope::Branch(b)).await? {
            let size = match mine.get(&e.digest) {
                Some(s) => *s,
                None => {
                    let s = self.pool_blob_size(&e.digest).await?.unwrap_or(0);
                    mine.insert(e.digest.clone(), s);
                    s
                }
            };
            u.files += 1;
            u.logical_bytes += size;
        }
        u.blobs = mine.len();
        u.stored_bytes = mine.values().sum();
        let mut other_branches: HashSet<Digest> = HashSet::new();
        for other in self.artifact_branches().await? {
            if &other != b {
                other_branches.extend(
                    self.walk_links(Scope::Branch(&other))
                        .await?
                        .into_iter()
                        .map(|e| e.digest),
                );
            }
        }
        let mut images: HashSet<Digest> = HashSet::new();
        for repo in self.repositories_all().await? {
            images.extend(self.layer_links(&repo).await?.into_iter().map(|(d, _)| d));
            images.extend(
                self.revisions_with_time(&repo)
                    .await?
                    .into_iter()
                    .map(|(d, _)| d),
            );
        }
        for (d, size) in &mine {
            let (in_branches, in_images) = (other_branches.contains(d), images.contains(d));
            if in_branches {
                u.shared_with_branches_bytes += size;
            }
            if in_images {
                u.shared_with_images_bytes += size;
            }
            if in_branches || in_images {
                u.shared_blobs += 1;
                u.shared_bytes += size;
            }
        }
        u.exclusive_bytes = u.stored_bytes - u.shared_bytes;
        Ok(u)
    }

    /// The creation time of a tag record, for ordering (unparsable: the epoch).
    pub(crate) fn tag_created(meta: &TagMeta) -> SystemTime {
        parse_rfc3339(&meta.created).unwrap_or(SystemTime::UNIX_EPOCH)
    }
}
