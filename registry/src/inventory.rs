//! What a collector needs to enumerate and remove, expressed in the store's own terms:
//! repositories, manifest revisions, layer links, referrer entries and pool blobs, each
//! with the modification time the grace period is judged by. The collector decides;
//! this module only lists and deletes what it is told to.

use std::path::Path;
use std::time::SystemTime;

use crate::digest::Digest;
use crate::manifest;
use crate::names::{RepoName, Tag};
use crate::storage::{PathSpec, path_for};
use crate::store::Store;
use crate::{Error, Result};

/// A digest named by a `<alg>/<hex>/<file>` relative path.
fn digest_of_rel(rel: &str) -> Option<Digest> {
    let mut parts = rel.split('/');
    let alg = parts.next()?;
    let hex = parts.next()?;
    format!("{alg}:{hex}").parse().ok()
}

/// A pool blob: digest, size and modification time.
#[derive(Debug, Clone)]
pub struct PoolBlob {
    pub digest: Digest,
    pub size: u64,
    pub modified: SystemTime,
}

impl Store {
    /// Every repository folder that holds manifests, layer links or uploads, sorted.
    pub async fn repositories_all(&self) -> Result<Vec<RepoName>> {
        let root = self.driver.full(&path_for(PathSpec::RepositoriesRoot));
        let names = tokio::task::spawn_blocking(move || {
            let mut out = Vec::new();
            walk_repos(&root, "", &mut out);
            out
        })
        .await
        .map_err(Error::internal)?;
        let mut repos: Vec<RepoName> = names
            .iter()
            .filter_map(|n| RepoName::parse(n).ok())
            .collect();
        repos.sort();
        Ok(repos)
    }

    /// Manifest revisions of `name` with their link's modification time.
    pub async fn revisions_with_time(&self, name: &RepoName) -> Result<Vec<(Digest, SystemTime)>> {
        let files = self
            .driver
            .walk_files(&path_for(PathSpec::ManifestRevisionsDir(name)), "link")
            .await?;
        Ok(files
            .into_iter()
            .filter_map(|(rel, info)| digest_of_rel(&rel).map(|d| (d, info.modified)))
            .collect())
    }

    /// Layer links of `name` with their modification time.
    pub async fn layer_links(&self, name: &RepoName) -> Result<Vec<(Digest, SystemTime)>> {
        let files = self
            .driver
            .walk_files(&path_for(PathSpec::LayersDir(name)), "link")
            .await?;
        Ok(files
            .into_iter()
            .filter_map(|(rel, info)| digest_of_rel(&rel).map(|d| (d, info.modified)))
            .collect())
    }

    /// Digests of the manifests indexed as referrers of `subject` in `name`.
    pub async fn referrer_digests(&self, name: &RepoName, subject: &Digest) -> Result<Vec<Digest>> {
        let files = self
            .driver
            .walk_files(&path_for(PathSpec::ReferrersDir(name, subject)), "link")
            .await?;
        Ok(files
            .into_iter()
            .filter_map(|(rel, _)| digest_of_rel(&rel))
            .collect())
    }

    /// Every blob in the pool.
    pub async fn pool_blobs(&self) -> Result<Vec<PoolBlob>> {
        let files = self
            .driver
            .walk_files(&path_for(PathSpec::BlobsRoot), "data")
            .await?;
        Ok(files
            .into_iter()
            .filter_map(|(rel, info)| {
                // <alg>/<hh>/<hex>/data
                let mut parts = rel.split('/');
                let alg = parts.next()?;
                let _hh = parts.next()?;
                let hex = parts.next()?;
                let digest = format!("{alg}:{hex}").parse().ok()?;
                Some(PoolBlob {
                    digest,
                    size: info.size,
                    modified: info.modified,
                })
            })
            .collect())
    }

    /// Reads manifest bytes from the pool (for the collector's traversal).
    pub async fn manifest_bytes(&self, digest: &Digest) -> Result<Option<Vec<u8>>> {
        self.get_pool_content(digest).await
    }

    /// Removes an (untagged) manifest revision of `name`: its revision link, tag history
    /// entries naming it, its entry in its subject's referrers index, and its own
    /// referrers index.
    pub async fn remove_revision(&self, name: &RepoName, digest: &Digest) -> Result<()> {
        for t in self.list(PathSpec::TagsDir(name)).await? {
            if let Ok(tag) = Tag::parse(&t) {
                let link = path_for(PathSpec::TagIndexLink(name, &tag, digest));
                remove_parent_of_link(self, &link).await?;
            }
        }
        if let Some(body) = self.get_pool_content(digest).await?
            && let Ok(m) = manifest::parse(&body, None)
            && let Some(subject) = &m.subject
        {
            let link = path_for(PathSpec::ReferrerLink(name, subject, digest));
            remove_parent_of_link(self, &link).await?;
        }
        self.remove(PathSpec::ReferrersDir(name, digest)).await?;
        self.remove(PathSpec::ManifestRevisionDir(name, digest))
            .await?;
        Ok(())
    }

    /// Removes a blob from the pool.
    pub async fn remove_pool_blob(&self, digest: &Digest) -> Result<bool> {
        self.remove(PathSpec::BlobDir(digest)).await
    }
}

async fn remove_parent_of_link(store: &Store, link: &str) -> Result<()> {
    let dir = link.trim_end_matches("/link");
    match store.driver.delete(dir).await {
        Ok(()) => Ok(()),
        Err(e) if e.is_not_found() => Ok(()),
        Err(e) => Err(e.into()),
    }
}

/// Repository folders: any folder with `_manifests`, `_layers` or `_uploads`.
fn walk_repos(dir: &Path, prefix: &str, out: &mut Vec<String>) {
    let Ok(rd) = std::fs::read_dir(dir) else {
        return;
    };
    let mut is_repo = false;
    for e in rd.filter_map(|e| e.ok()) {
        if !e.file_type().is_ok_and(|t| t.is_dir()) {
            continue;
        }
        let Some(c) = e.file_name().to_str().map(str::to_owned) else {
            continue;
        };
        if c == "_manifests" || c == "_layers" || c == "_uploads" {
            is_repo = true;
        } else if !c.starts_with('_') && !c.starts_with('.') {
            let p = if prefix.is_empty() {
                c.clone()
            } else {
                format!("{prefix}/{c}")
            };
            walk_repos(&e.path(), &p, out);
        }
    }
    if is_repo && !prefix.is_empty() {
        out.push(prefix.to_owned());
    }
}
