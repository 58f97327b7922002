//! The driver suite on the filesystem driver, each test in a fresh temporary root. After
//! each test the root must be empty on disk too: no folder the driver should have pruned,
//! no temporary file of a write (which listings and walks hide).

#[path = "driver/suite.rs"]
mod suite;

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use registry::storage::{Driver, FsDriver, PutMode};

fn fs_driver() -> (Arc<dyn Driver>, impl FnOnce() -> std::future::Ready<()>) {
    let dir = tempfile::tempdir().unwrap();
    let driver: Arc<dyn Driver> = Arc::new(FsDriver::new(dir.path()));
    let after = move || {
        let left: Vec<_> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().path())
            .collect();
        assert!(left.is_empty(), "left on disk: {left:?}");
        std::future::ready(())
    };
    (driver, after)
}

all_driver_tests!(fs_driver());

/// `touch` is the collector's grace clock on disk: an old file becomes new.
#[tokio::test]
async fn touch_makes_an_old_file_new() {
    let dir = tempfile::tempdir().unwrap();
    let d = FsDriver::new(dir.path());
    d.put(
        "a/data",
        bytes::Bytes::from_static(b"x"),
        PutMode::Overwrite,
    )
    .await
    .unwrap();
    let old = SystemTime::now() - Duration::from_secs(86_400);
    std::fs::File::options()
        .append(true)
        .open(dir.path().join("a/data"))
        .unwrap()
        .set_modified(old)
        .unwrap();
    assert!(Driver::stat(&d, "a/data").await.unwrap().modified < old + Duration::from_secs(1));
    Driver::touch(&d, "a/data").await.unwrap();
    let now = Driver::stat(&d, "a/data").await.unwrap().modified;
    assert!(now > old + Duration::from_secs(3600), "{now:?}");
}

/// A writer's data file counts as written up to its size after a crash even when the
/// saved hash state is older (bytes that reached the file after the last flush).
#[tokio::test]
async fn a_resumed_writer_hashes_bytes_past_its_saved_state() {
    use registry::storage::WriterStart;
    let dir = tempfile::tempdir().unwrap();
    let d = FsDriver::new(dir.path());
    let mut w = d.writer("u/data", WriterStart::New).await.unwrap();
    w.write(bytes::Bytes::from_static(b"hello ")).await.unwrap();
    w.flush().await.unwrap();
    drop(w);
    // What a crash between a write and the next flush leaves: more bytes in the file.
    use std::io::Write;
    std::fs::OpenOptions::new()
        .append(true)
        .open(dir.path().join("u/data"))
        .unwrap()
        .write_all(b"world")
        .unwrap();
    let w = d.writer("u/data", WriterStart::Resume).await.unwrap();
    assert_eq!(w.size(), 11);
    let digest = registry::Digest::sha256(b"hello world");
    w.commit(&digest, "pool/data").await.unwrap();
    assert_eq!(
        &d.get_content("pool/data").await.unwrap()[..],
        b"hello world"
    );
}

/// Batch deletes hold a folder open two levels up; a file right below the root has none.
#[tokio::test]
async fn batch_deletes_reach_files_below_the_root() {
    let dir = tempfile::tempdir().unwrap();
    let d = FsDriver::new(dir.path());
    for p in ["top", "a/leaf"] {
        d.put(p, bytes::Bytes::from_static(b"x"), PutMode::Overwrite)
            .await
            .unwrap();
    }
    let r = d
        .delete_many(&["top".to_owned(), "a/leaf".to_owned(), "gone".to_owned()])
        .await
        .unwrap();
    assert!(r.iter().all(Result::is_ok), "{r:?}");
    assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);
}
