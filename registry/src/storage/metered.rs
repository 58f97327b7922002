//! [`Metered`]: any [`Driver`] with each operation's latency recorded in
//! `registry_storage_action_seconds{driver, action}`. Code that holds its driver through
//! the trait wraps it in this when the server keeps metrics, so every backend is measured
//! the same way and no driver carries metrics code of its own. (The server's `Store` still
//! calls [`super::FsDriver`]'s own methods, which time themselves; see the migration in
//! [`super::driver`]. Wrap a bare driver, not one built `with_metrics`.)

use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures::Stream;

use super::driver::{
    Capabilities, Driver, DriverResult, Entry, PendingUpload, PutMode, Reader, Stat, Version,
    WalkEntry, Writer, WriterStart,
};
use crate::metrics::StorageOps;

/// `inner`, timed.
#[derive(Debug, Clone)]
pub struct Metered {
    inner: Arc<dyn Driver>,
    ops: StorageOps,
}

impl Metered {
    pub fn new(inner: Arc<dyn Driver>, ops: StorageOps) -> Metered {
        Metered { inner, ops }
    }

    fn timer(&self, action: &'static str) -> crate::metrics::OpTimer {
        self.ops.start_for(self.inner.name(), action)
    }
}

#[async_trait::async_trait]
impl Driver for Metered {
    fn name(&self) -> &'static str {
        self.inner.name()
    }

    fn capabilities(&self) -> Capabilities {
        self.inner.capabilities()
    }

    async fn get(&self, path: &str) -> DriverResult<(Bytes, Version)> {
        let _t = self.timer("GetContent");
        self.inner.get(path).await
    }

    async fn put(&self, path: &str, data: Bytes, mode: PutMode) -> DriverResult<Version> {
        let _t = self.timer("PutContent");
        self.inner.put(path, data, mode).await
    }

    async fn put_volatile(&self, path: &str, data: Bytes) -> DriverResult<()> {
        let _t = self.timer("PutContent");
        self.inner.put_volatile(path, data).await
    }

    async fn reader(&self, path: &str, offset: u64, len: Option<u64>) -> DriverResult<Reader> {
        let _t = self.timer("Reader");
        self.inner.reader(path, offset, len).await
    }

    async fn writer(&self, path: &str, start: WriterStart) -> DriverResult<Box<dyn Writer>> {
        let _t = self.timer("Writer");
        self.inner.writer(path, start).await
    }

    async fn writer_size(&self, path: &str) -> DriverResult<u64> {
        let _t = self.timer("WriterSize");
        self.inner.writer_size(path).await
    }

    async fn stat(&self, path: &str) -> DriverResult<Stat> {
        let _t = self.timer("Stat");
        self.inner.stat(path).await
    }

    async fn list(&self, path: &str) -> DriverResult<Vec<Entry>> {
        let _t = self.timer("List");
        self.inner.list(path).await
    }

    /// The walk is a stream: only its start is timed.
    fn walk(&self, prefix: &str) -> Pin<Box<dyn Stream<Item = DriverResult<WalkEntry>> + Send>> {
        let _t = self.timer("Walk");
        self.inner.walk(prefix)
    }

    async fn list_below(&self, prefix: &str) -> DriverResult<Vec<WalkEntry>> {
        let _t = self.timer("List");
        self.inner.list_below(prefix).await
    }

    async fn delete(&self, path: &str) -> DriverResult<()> {
        let _t = self.timer("Delete");
        self.inner.delete(path).await
    }

    async fn delete_many(&self, paths: &[String]) -> DriverResult<Vec<DriverResult<()>>> {
        let _t = self.timer("DeleteMany");
        self.inner.delete_many(paths).await
    }

    async fn rename(&self, from: &str, to: &str) -> DriverResult<()> {
        let _t = self.timer("Move");
        self.inner.rename(from, to).await
    }

    async fn touch(&self, path: &str) -> DriverResult<()> {
        let _t = self.timer("Touch");
        self.inner.touch(path).await
    }

    async fn pending_uploads(&self, prefix: &str) -> DriverResult<Vec<PendingUpload>> {
        let _t = self.timer("ListMultipartUploads");
        self.inner.pending_uploads(prefix).await
    }

    async fn abort_pending(&self, upload: &PendingUpload) -> DriverResult<()> {
        let _t = self.timer("AbortMultipartUpload");
        self.inner.abort_pending(upload).await
    }

    async fn redirect_url(&self, path: &str, expires: Duration) -> DriverResult<Option<String>> {
        let _t = self.timer("URLFor");
        self.inner.redirect_url(path, expires).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::metrics::Metrics;
    use crate::storage::FsDriver;

    #[tokio::test]
    async fn every_operation_is_timed_under_the_inner_drivers_name() {
        let dir = tempfile::tempdir().unwrap();
        let m = Metrics::new();
        let d = Metered::new(Arc::new(FsDriver::new(dir.path())), m.storage.clone());
        d.put("a/b", Bytes::from_static(b"x"), PutMode::Overwrite)
            .await
            .unwrap();
        d.get("a/b").await.unwrap();
        d.stat("a/b").await.unwrap();
        assert!(d.get("a/missing").await.is_err());
        d.delete("a/b").await.unwrap();
        let text = m.render();
        for (action, n) in [
            ("PutContent", 1),
            ("GetContent", 2),
            ("Stat", 1),
            ("Delete", 1),
        ] {
            let series = format!(
                "registry_storage_action_seconds_count{{driver=\"filesystem\",action=\"{action}\"}} {n}"
            );
            assert!(text.contains(&series), "{series} not in\n{text}");
        }
    }
}
