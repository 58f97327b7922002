//! The pool of content-addressed blobs and each repository's view of it through layer
//! links. A repository sees a pool blob only through its own link: the link check is the
//! access check. Pool blobs are never modified once in place.

use bytes::Bytes;

use crate::digest::Digest;
use crate::hooks::Point;
use crate::names::RepoName;
use crate::storage::{PathSpec, PutMode, Reader, path_for};
use crate::store::Store;
use crate::{Error, Result};

/// How long a redirect URL for a blob stays valid (Distribution's s3 driver: 20 minutes).
pub const REDIRECT_EXPIRY: std::time::Duration = std::time::Duration::from_secs(20 * 60);

impl Store {
    /// Size of a blob in the pool, `None` if it is not there.
    pub async fn pool_blob_size(&self, digest: &Digest) -> Result<Option<u64>> {
        if let Some(size) = self.cache.size(digest) {
            return Ok(Some(size));
        }
        let generation = self.cache.generation();
        match self
            .driver
            .stat(&path_for(PathSpec::BlobData(digest)))
            .await
        {
            Ok(info) if !info.is_dir => {
                self.cache.fill_size(digest, info.size, generation);
                Ok(Some(info.size))
            }
            Ok(_) => Ok(None),
            Err(e) if e.is_not_found() => Ok(None),
            Err(e) => Err(e.into()),
        }
    }

    /// Size of a blob as `name` sees it: its layer link must exist and the pool blob too.
    pub async fn blob_size(&self, name: &RepoName, digest: &Digest) -> Result<Option<u64>> {
        if !self.layer_linked(name, digest).await? {
            return Ok(None);
        }
        self.pool_blob_size(digest).await
    }

    /// A push's existence check (`HEAD`): like [`Store::blob_size`], but a blob found
    /// present stays protected from an in-process collection for the pending period,
    /// since the client will now reference it instead of uploading it again. The pin
    /// taken before the check closes the gap between the answer and the protection.
    pub async fn blob_size_for_push(
        &self,
        name: &RepoName,
        digest: &Digest,
    ) -> Result<Option<u64>> {
        let pin = self.liveness.pin(vec![digest.clone()]).await?;
        let size = self.blob_size(name, digest).await?;
        if size.is_some() {
            self.liveness
                .hooks()
                .reach(Point::Checked, Some(digest))
                .await;
            self.liveness.pending_add(vec![digest.clone()]).await?;
        }
        pin.finish().await?;
        Ok(size)
    }

    pub async fn layer_linked(&self, name: &RepoName, digest: &Digest) -> Result<bool> {
        Ok(self
            .read_link(PathSpec::LayerLink(name, digest))
            .await?
            .is_some_and(|d| &d == digest))
    }

    /// Where a client may `GET` a blob of `name` itself: the driver's URL for it (S3: a
    /// presigned URL valid for [`REDIRECT_EXPIRY`], as Distribution's s3 driver gives),
    /// when the driver gives one and redirects are on (`storage.redirect`); `None`
    /// serves the blob through the server. A blob the repository does not link, or the
    /// pool does not hold, is [`Error::BlobUnknown`] here, not the bucket's own 404.
    pub async fn blob_redirect(&self, name: &RepoName, digest: &Digest) -> Result<Option<String>> {
        if !self.options.redirect || !self.driver.capabilities().redirect {
            return Ok(None);
        }
        if !self.layer_linked(name, digest).await? {
            return Err(Error::BlobUnknown(Some(digest.clone())));
        }
        let path = path_for(PathSpec::BlobData(digest));
        match self.driver.stat(&path).await {
            Ok(_) => {}
            Err(e) if e.is_not_found() => return Err(Error::BlobUnknown(Some(digest.clone()))),
            Err(e) => return Err(e.into()),
        }
        Ok(self.driver.redirect_url(&path, REDIRECT_EXPIRY).await?)
    }

    /// Opens a blob of `name` for streaming `len` bytes (to the end when `None`) from
    /// `offset`; the reader also tells the blob's whole size.
    pub async fn open_blob(
        &self,
        name: &RepoName,
        digest: &Digest,
        offset: u64,
        len: Option<u64>,
    ) -> Result<Reader> {
        if !self.layer_linked(name, digest).await? {
            return Err(Error::BlobUnknown(Some(digest.clone())));
        }
        self.open_pool_blob(digest, offset, len).await
    }

    /// Opens a pool blob for streaming (as [`Store::open_blob`]), whoever links it. The
    /// driver's reader is its fast path: mapped windows of the file on disk, a ranged
    /// GET on S3.
    pub async fn open_pool_blob(
        &self,
        digest: &Digest,
        offset: u64,
        len: Option<u64>,
    ) -> Result<Reader> {
        match self
            .driver
            .reader(&path_for(PathSpec::BlobData(digest)), offset, len)
            .await
        {
            Ok(r) => Ok(r),
            Err(e) if e.is_not_found() => Err(Error::BlobUnknown(Some(digest.clone()))),
            Err(e) => Err(e.into()),
        }
    }

    /// Makes a pool blob visible in `name`. The blob must already be in the pool.
    pub async fn link_layer(&self, name: &RepoName, digest: &Digest) -> Result<()> {
        self.write_link(PathSpec::LayerLink(name, digest), digest)
            .await
    }

    /// Removes `name`'s link to a blob (the pool blob stays for the collector).
    pub async fn unlink_layer(&self, name: &RepoName, digest: &Digest) -> Result<bool> {
        self.remove(PathSpec::LayerDir(name, digest)).await
    }

    /// Cross-repository mount: links a blob `from` sees into `name`. `from == None`
    /// mounts any pool blob when the store allows it. Returns the size when mounted.
    pub async fn mount_blob(
        &self,
        name: &RepoName,
        digest: &Digest,
        from: Option<&RepoName>,
    ) -> Result<Option<u64>> {
        let pin = self.liveness.pin(vec![digest.clone()]).await?;
        let size = match from {
            Some(from) => self.blob_size(from, digest).await?,
            None if self.options.mount_without_from => self.pool_blob_size(digest).await?,
            None => None,
        };
        if size.is_some() {
            self.liveness
                .hooks()
                .reach(Point::Checked, Some(digest))
                .await;
            self.driver
                .touch(&path_for(PathSpec::BlobData(digest)))
                .await?;
            self.link_layer(name, digest).await?;
            self.liveness.pending_add(vec![digest.clone()]).await?;
        }
        pin.finish().await?;
        Ok(size)
    }

    /// Puts small content (a manifest) into the pool under its digest, atomically.
    pub(crate) async fn put_pool_content(&self, digest: &Digest, data: Bytes) -> Result<()> {
        if self.pool_blob_size(digest).await?.is_some() {
            self.driver
                .touch(&path_for(PathSpec::BlobData(digest)))
                .await?;
            return Ok(());
        }
        self.driver
            .put(
                &path_for(PathSpec::BlobData(digest)),
                data,
                PutMode::Overwrite,
            )
            .await?;
        Ok(())
    }

    /// Reads small content (a manifest) from the pool.
    pub(crate) async fn get_pool_content(&self, digest: &Digest) -> Result<Option<Bytes>> {
        match self.driver.get(&path_for(PathSpec::BlobData(digest))).await {
            Ok((b, _)) => Ok(Some(b)),
            Err(e) if e.is_not_found() => Ok(None),
            Err(e) => Err(e.into()),
        }
    }
}
