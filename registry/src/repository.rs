//! Repositories: manifests (revision links), tags (current + index links), the referrers
//! index and the catalog. A manifest is stored in the pool like any blob and becomes
//! part of a repository through its revision link; a tag is a link to a revision.

use bytes::Bytes;

use crate::cache::CachedManifest;
use crate::digest::{Algorithm, Digest};
use crate::hooks::Point;
use crate::manifest::{self, Descriptor, Manifest};
use crate::names::{Reference, RepoName, Tag};
use crate::storage::{Driver, PathSpec, path_for};
use crate::store::Store;
use crate::{Error, Result};

/// A manifest as served: its digest, media type and exact bytes.
#[derive(Debug, Clone)]
pub struct StoredManifest {
    pub digest: Digest,
    pub media_type: String,
    pub body: Bytes,
}

/// What a successful manifest put did.
#[derive(Debug, Clone)]
pub struct PutManifest {
    pub digest: Digest,
    pub subject: Option<Digest>,
}

impl Store {
    /// Whether `name` exists (has been pushed to): it has layer links or manifests. A
    /// folder that only holds deeper repositories (`a` of `a/b`) is not a repository.
    pub async fn repository_exists(&self, name: &RepoName) -> Result<bool> {
        Ok(self.exists(PathSpec::LayersDir(name)).await?
            || self.exists(PathSpec::ManifestRevisionsDir(name)).await?)
    }

    /// The digest a tag points at.
    pub async fn resolve_tag(&self, name: &RepoName, tag: &Tag) -> Result<Option<Digest>> {
        self.read_link(PathSpec::TagCurrentLink(name, tag)).await
    }

    /// Whether `digest` is a manifest revision of `name`.
    pub async fn has_manifest(&self, name: &RepoName, digest: &Digest) -> Result<bool> {
        Ok(self
            .read_link(PathSpec::ManifestRevisionLink(name, digest))
            .await?
            .is_some_and(|d| &d == digest))
    }

    /// Fetches a manifest by tag or digest.
    pub async fn get_manifest(
        &self,
        name: &RepoName,
        reference: &Reference,
    ) -> Result<StoredManifest> {
        let unknown = || Error::ManifestUnknown(reference.to_string());
        let digest = match reference {
            Reference::Tag(t) => self.resolve_tag(name, t).await?.ok_or_else(unknown)?,
            Reference::Digest(d) => d.clone(),
        };
        if !self.has_manifest(name, &digest).await? {
            return Err(unknown());
        }
        if let Some(m) = self.cache.manifest(&digest) {
            return Ok(StoredManifest {
                digest,
                media_type: m.media_type,
                body: m.body,
            });
        }
        let generation = self.cache.generation();
        let body = self.get_pool_content(&digest).await?.ok_or_else(unknown)?;
        let media_type = manifest::stored_media_type(&body);
        self.cache.fill_manifest(
            &digest,
            CachedManifest {
                media_type: media_type.clone(),
                body: body.clone(),
            },
            generation,
        );
        Ok(StoredManifest {
            media_type,
            digest,
            body,
        })
    }

    /// A push's existence check of a manifest (`HEAD`): a manifest found by digest stays
    /// protected from an in-process collection for the pending period, since the client
    /// (pushing an index, say) will now reference it.
    pub async fn manifest_for_push(
        &self,
        name: &RepoName,
        reference: &Reference,
    ) -> Result<StoredManifest> {
        let Reference::Digest(d) = reference else {
            return self.get_manifest(name, reference).await;
        };
        let pin = self.liveness.pin(vec![d.clone()]).await?;
        let m = self.get_manifest(name, reference).await?;
        self.liveness.hooks().reach(Point::Checked, Some(d)).await;
        self.liveness.pending_add(vec![d.clone()]).await?;
        pin.finish().await?;
        Ok(m)
    }

    /// Validates and stores a manifest. Every blob it references must be linked in `name`
    /// and every child manifest must be a revision of `name`; the bytes go to the pool,
    /// then the revision link, the referrers entry and last the tag.
    pub async fn put_manifest(
        &self,
        name: &RepoName,
        reference: &Reference,
        content_type: Option<&str>,
        body: Bytes,
    ) -> Result<PutManifest> {
        let digest = match reference {
            Reference::Digest(want) => {
                let got = Digest::of(want.algorithm(), &body);
                if &got != want {
                    return Err(Error::DigestInvalid(format!(
                        "manifest body has digest {got}, not {want}"
                    )));
                }
                got
            }
            Reference::Tag(_) => Digest::of(Algorithm::Sha256, &body),
        };
        let m: Manifest = manifest::parse(&body, content_type)?;
        // Everything this manifest makes reachable is held from before it is checked
        // until it is linked; a remover that was refused one of these keeps all it
        // reaches (its children's and its subject's closures too).
        let mut pinned: Vec<Digest> = m.blobs.iter().chain(&m.children).cloned().collect();
        pinned.extend(m.subject.iter().cloned());
        pinned.push(digest.clone());
        let pin = self.liveness.pin(pinned).await?;
        for b in &m.blobs {
            if self.blob_size(name, b).await?.is_none() {
                return Err(Error::ManifestBlobUnknown(b.clone()));
            }
        }
        for c in &m.children {
            if !self.has_manifest(name, c).await? || self.pool_blob_size(c).await?.is_none() {
                return Err(Error::ManifestBlobUnknown(c.clone()));
            }
        }
        self.liveness
            .hooks()
            .reach(Point::Checked, Some(&digest))
            .await;
        self.put_pool_content(&digest, body.clone()).await?;
        self.write_link(PathSpec::ManifestRevisionLink(name, &digest), &digest)
            .await?;
        if let Some(subject) = &m.subject {
            self.write_link(PathSpec::ReferrerLink(name, subject, &digest), &digest)
                .await?;
        }
        if let Reference::Tag(tag) = reference {
            let lock = self.lock_tag(name, tag).await?;
            self.write_link(PathSpec::TagIndexLink(name, tag, &digest), &digest)
                .await?;
            self.write_link(PathSpec::TagCurrentLink(name, tag), &digest)
                .await?;
            lock.release().await;
        }
        if let Reference::Digest(_) = reference {
            self.liveness.pending_add(vec![digest.clone()]).await?;
        }
        pin.finish().await?;
        Ok(PutManifest {
            digest,
            subject: m.subject,
        })
    }

    /// Deletes a manifest by digest (its revision, every tag pointing at it, its referrers
    /// entry) or a tag alone.
    pub async fn delete_manifest(&self, name: &RepoName, reference: &Reference) -> Result<()> {
        match reference {
            Reference::Tag(tag) => {
                let lock = self.lock_tag(name, tag).await?;
                if self.resolve_tag(name, tag).await?.is_none() {
                    return Err(Error::ManifestUnknown(tag.to_string()));
                }
                self.remove(PathSpec::TagDir(name, tag)).await?;
                lock.release().await;
                Ok(())
            }
            Reference::Digest(digest) => {
                if !self.has_manifest(name, digest).await? {
                    return Err(Error::ManifestUnknown(digest.to_string()));
                }
                for tag in self.tags(name).await? {
                    let lock = self.lock_tag(name, &tag).await?;
                    if self.resolve_tag(name, &tag).await?.as_ref() == Some(digest) {
                        self.remove(PathSpec::TagDir(name, &tag)).await?;
                    }
                    lock.release().await;
                }
                if let Some(body) = self.get_pool_content(digest).await?
                    && let Ok(m) = manifest::parse(&body, None)
                    && let Some(subject) = &m.subject
                {
                    self.remove(PathSpec::ReferrerDir(name, subject, digest))
                        .await?;
                }
                self.remove(PathSpec::ManifestRevisionDir(name, digest))
                    .await?;
                Ok(())
            }
        }
    }

    /// Removes `tag` only if it still is what a remover decided on: it names `digest`
    /// and was last pushed at `pushed`. A tag pushed again since (even to the same
    /// manifest) is a new, acknowledged push and stays. Returns whether it went.
    pub async fn delete_tag_if(
        &self,
        name: &RepoName,
        tag: &Tag,
        digest: &Digest,
        pushed: std::time::SystemTime,
    ) -> Result<bool> {
        let lock = self.lock_tag(name, tag).await?;
        let link = path_for(PathSpec::TagCurrentLink(name, tag));
        let now = match self.driver.stat(&link).await {
            Ok(info) => info.modified,
            Err(e) if e.is_not_found() => return Ok(false),
            Err(e) => return Err(e.into()),
        };
        if now != pushed || self.resolve_tag(name, tag).await?.as_ref() != Some(digest) {
            lock.release().await;
            return Ok(false);
        }
        self.liveness.hooks().reach(Point::TagChecked, None).await;
        self.remove(PathSpec::TagDir(name, tag)).await?;
        lock.release().await;
        Ok(true)
    }

    /// All tags of `name`, sorted; `NAME_UNKNOWN` when the repository does not exist.
    pub async fn tags(&self, name: &RepoName) -> Result<Vec<Tag>> {
        let names = self.list(PathSpec::TagsDir(name)).await?;
        if names.is_empty() && !self.repository_exists(name).await? {
            return Err(Error::NameUnknown(name.to_string()));
        }
        Ok(names.iter().filter_map(|n| Tag::parse(n).ok()).collect())
    }

    /// The tags of `name` in listing order ([`lexical`]), from the cache when it has
    /// them: a paginated listing asks for the same list once per page.
    pub async fn tag_listing(&self, name: &RepoName) -> Result<std::sync::Arc<[String]>> {
        if let Some(l) = self.cache.tag_list(name.as_str()) {
            return Ok(l);
        }
        let generation = self.cache.generation();
        let mut all: Vec<String> = self
            .tags(name)
            .await?
            .into_iter()
            .map(|t| t.as_str().to_owned())
            .collect();
        all.sort_by(|a, b| lexical(a, b));
        let all: std::sync::Arc<[String]> = all.into();
        if !all.is_empty() {
            self.cache
                .fill_tag_list(name.as_str(), all.clone(), generation);
        }
        Ok(all)
    }

    /// Manifests in `name` whose `subject` is `subject`, as descriptors; filtered by
    /// `artifact_type` when given. Answered from the `_referrers` index, not a scan.
    pub async fn referrers(
        &self,
        name: &RepoName,
        subject: &Digest,
        artifact_type: Option<&str>,
    ) -> Result<Vec<Descriptor>> {
        let dir = path_for(PathSpec::ReferrersDir(name, subject));
        let mut out = Vec::new();
        for alg in self.driver.list(&dir).await.unwrap_or_default() {
            for hex in self
                .driver
                .list(&path_for(PathSpec::ReferrersAlgDir(
                    name, subject, &alg.name,
                )))
                .await
                .unwrap_or_default()
            {
                let (alg, hex) = (&alg.name, hex.name);
                let Ok(d) = format!("{alg}:{hex}").parse::<Digest>() else {
                    continue;
                };
                if !self.has_manifest(name, &d).await? {
                    continue;
                }
                let Some(body) = self.get_pool_content(&d).await? else {
                    continue;
                };
                let Ok(m) = manifest::parse(&body, None) else {
                    continue;
                };
                if artifact_type.is_some_and(|want| m.artifact_type.as_deref() != Some(want)) {
                    continue;
                }
                out.push(Descriptor {
                    media_type: m.media_type,
                    digest: d.to_string(),
                    size: body.len() as i64,
                    urls: None,
                    annotations: m.annotations,
                    artifact_type: m.artifact_type,
                    platform: None,
                });
            }
        }
        Ok(out)
    }

    /// Every repository name in the store, sorted.
    pub async fn catalog(&self) -> Result<std::sync::Arc<[String]>> {
        if let Some(l) = self.cache.catalog() {
            return Ok(l);
        }
        let generation = self.cache.generation();
        let all: std::sync::Arc<[String]> = self.walk_repositories().await?.into();
        self.cache.fill_catalog(all.clone(), generation);
        Ok(all)
    }

    async fn walk_repositories(&self) -> Result<Vec<String>> {
        walk_repositories(self.driver.as_ref(), false).await
    }
}

/// Every repository name, sorted: the folders below `repositories/` that hold
/// `_manifests` or `_layers` (Distribution 2.8 decides by `_layers`, 3.x by
/// `_manifests`; with `uploads`, the collector's and the upload purge's view, also one
/// that holds only `_uploads`), listed level by level through the driver, a few folders at a time
/// (one listing per folder; on S3 each is a request). Folders starting with `_` or `.`
/// are never descended into.
pub(crate) async fn walk_repositories(driver: &dyn Driver, uploads: bool) -> Result<Vec<String>> {
    use futures::stream::{FuturesUnordered, StreamExt};
    const IN_FLIGHT: usize = 16;
    let list = |prefix: String| async move {
        let spec = if prefix.is_empty() {
            PathSpec::RepositoriesRoot
        } else {
            PathSpec::RepositoryFolder(&prefix)
        };
        let r = driver.list(&path_for(spec)).await;
        (prefix, r)
    };
    let mut out = Vec::new();
    let mut todo = vec![String::new()];
    let mut running = FuturesUnordered::new();
    loop {
        while running.len() < IN_FLIGHT
            && let Some(p) = todo.pop()
        {
            running.push(list(p));
        }
        let Some((prefix, listed)) = running.next().await else {
            break;
        };
        let children = match listed {
            Ok(c) => c,
            // Gone since its parent was listed (a repository being deleted).
            Err(e) if e.is_not_found() => continue,
            Err(e) => return Err(e.into()),
        };
        let mut is_repo = false;
        for c in children.into_iter().filter(|c| c.is_dir) {
            if c.name == "_manifests" || c.name == "_layers" || (uploads && c.name == "_uploads") {
                is_repo = true;
            } else if !c.name.starts_with('_') && !c.name.starts_with('.') {
                todo.push(if prefix.is_empty() {
                    c.name
                } else {
                    format!("{prefix}/{}", c.name)
                });
            }
        }
        if is_repo && !prefix.is_empty() {
            out.push(prefix);
        }
    }
    out.sort();
    Ok(out)
}

/// The spec's order of listings: "lexical order (i.e. case-insensitive alphanumeric
/// order)"; names that differ only in case fall back to byte order, so it is total.
/// Repository names are lowercase, so for the catalog this is plain byte order.
pub fn lexical(a: &str, b: &str) -> std::cmp::Ordering {
    a.bytes()
        .map(|c| c.to_ascii_lowercase())
        .cmp(b.bytes().map(|c| c.to_ascii_lowercase()))
        .then_with(|| a.cmp(b))
}
