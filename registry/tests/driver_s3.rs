//! The driver suite on the S3 driver against the real Ceph RGW that `scripts/test.sh`
//! starts (`scripts/rgw.sh`). Each test runs under its own root directory in the bucket.
//! Without the RGW's environment these tests fail: they are never skipped.

#[path = "driver/suite.rs"]
mod suite;

use std::sync::Arc;

use registry::storage::Driver;
use registry::storage::s3::{S3Config, S3Driver};

/// The RGW's settings from the environment `scripts/rgw.sh env` prints.
pub fn rgw_config(rootdirectory: &str) -> S3Config {
    let var = |k: &str| {
        std::env::var(k).unwrap_or_else(|_| {
            panic!(
                "{k} is not set: the S3 tests need the Ceph RGW that scripts/test.sh starts \
                 (or run `eval \"$(scripts/rgw.sh env \"$(scripts/rgw.sh start)\")\"` first)"
            )
        })
    };
    let yaml = format!(
        "region: {}\nregionendpoint: {}\nbucket: {}\nrootdirectory: {rootdirectory}\n\
         accesskey: {}\nsecretkey: {}\nforcepathstyle: true\nchunksize: 5242880\n",
        var("DRYDOCK_TEST_S3_REGION"),
        var("DRYDOCK_TEST_S3_ENDPOINT"),
        var("DRYDOCK_TEST_S3_BUCKET"),
        var("DRYDOCK_TEST_S3_ACCESS_KEY"),
        var("DRYDOCK_TEST_S3_SECRET_KEY"),
    );
    let v: serde_yaml_ng::Value = serde_yaml_ng::from_str(&yaml).unwrap();
    S3Config::from_yaml(&v, std::iter::empty()).unwrap()
}

/// A driver under a root directory of its own, and the check that the test left no
/// multipart upload in progress below it (the suite's walk cannot see those).
type AfterCheck = std::pin::Pin<Box<dyn std::future::Future<Output = ()>>>;

fn s3_driver() -> (Arc<dyn Driver>, impl FnOnce() -> AfterCheck) {
    let root = format!("driver-suite-{}", uuid::Uuid::new_v4().simple());
    let s3 = S3Driver::new(rgw_config(&root)).unwrap();
    let d: Arc<dyn Driver> = Arc::new(s3.clone());
    (d, move || Box::pin(no_uploads_left(s3)))
}

async fn no_uploads_left(s3: S3Driver) {
    let left = s3.multipart_uploads("").await.unwrap();
    assert!(left.is_empty(), "multipart uploads left: {left:?}");
}

all_driver_tests!(s3_driver());

/// Objects above the copy threshold (5 GiB on S3) are copied with UploadPartCopy: run
/// the large-writer test and a move with the threshold at 5 MiB.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn large_objects_are_copied_in_parts() {
    let root = format!("copy-{}", uuid::Uuid::new_v4().simple());
    let s3 = S3Driver::new(rgw_config(&root))
        .unwrap()
        .with_copy_limits(5 << 20, 5 << 20);
    let d: Arc<dyn Driver> = Arc::new(s3.clone());
    suite::run(d.clone(), "large_copy", |d, p| {
        Box::pin(suite::writer_large_multipart(d, p))
    })
    .await;
    let data = suite::pattern(12 << 20, 42);
    d.put(
        "a/data",
        bytes::Bytes::from(data.clone()),
        registry::storage::PutMode::Overwrite,
    )
    .await
    .unwrap();
    d.rename("a/data", "b/data").await.unwrap();
    assert_eq!(suite::read_all(d.as_ref(), "b/data", 0, None).await, data);
    assert!(d.stat("a/data").await.unwrap_err().is_not_found());
    d.delete("b").await.unwrap();
    no_uploads_left(s3).await;
}

/// A writer's multipart upload is listed while it is in progress (what the uploads
/// task aborts when stale) and gone once the writer is cancelled.
#[tokio::test]
async fn uploads_in_progress_are_listed() {
    use registry::storage::WriterStart;
    let root = format!("mpu-{}", uuid::Uuid::new_v4().simple());
    let s3 = S3Driver::new(rgw_config(&root)).unwrap();
    let mut w = s3
        .writer("r/_uploads/u/data", WriterStart::New)
        .await
        .unwrap();
    w.write(bytes::Bytes::from_static(b"abc")).await.unwrap();
    w.flush().await.unwrap();
    drop(w);
    let ups = s3.multipart_uploads("r").await.unwrap();
    assert_eq!(ups.len(), 1, "{ups:?}");
    assert_eq!(ups[0].0, "r/_uploads/u/data");
    assert!(s3.multipart_uploads("other").await.unwrap().is_empty());
    s3.writer("r/_uploads/u/data", WriterStart::Resume)
        .await
        .unwrap()
        .cancel()
        .await
        .unwrap();
    no_uploads_left(s3).await;
}

/// Wrong credentials are refused at the check the server makes before it starts, with
/// a message that names the problem and not the secret.
#[tokio::test]
async fn wrong_credentials_fail_the_check() {
    let mut c = rgw_config("x");
    c.secretkey = Some("not-the-secret".into());
    let e = S3Driver::new(c).unwrap().check().await.unwrap_err();
    let msg = e.to_string();
    assert!(!msg.contains("not-the-secret"), "{msg}");
    assert!(
        msg.contains("SignatureDoesNotMatch") || msg.contains("403"),
        "{msg}"
    );
    S3Driver::new(rgw_config("x"))
        .unwrap()
        .check()
        .await
        .unwrap();
}

/// A bucket that cannot be reached is `Unavailable` and names the endpoint.
#[tokio::test]
async fn an_unreachable_endpoint_is_unavailable_and_named() {
    let mut c = rgw_config("x");
    // A loopback port nothing listens on (bound, then closed).
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    c.regionendpoint = Some(format!("http://127.0.0.1:{port}"));
    let d = S3Driver::new(c).unwrap();
    match d.stat("a/b").await.unwrap_err() {
        registry::storage::DriverError::Unavailable { endpoint, .. } => {
            assert_eq!(endpoint, format!("http://127.0.0.1:{port}"))
        }
        e => panic!("{e:?}"),
    }
}

/// Keys are Distribution's: `<rootdirectory>/<path>` in the bucket, nothing added.
#[tokio::test]
async fn keys_follow_distributions_layout() {
    use bytes::Bytes;
    use registry::storage::PutMode;
    let root = format!("layout-{}", uuid::Uuid::new_v4().simple());
    let d = S3Driver::new(rgw_config(&root)).unwrap();
    let bare = S3Driver::new(rgw_config("")).unwrap();
    let path = "docker/registry/v2/repositories/a/_layers/sha256/ab/link";
    d.put(path, Bytes::from_static(b"sha256:ab"), PutMode::Overwrite)
        .await
        .unwrap();
    let (b, _) = bare.get(&format!("{root}/{path}")).await.unwrap();
    assert_eq!(&b[..], b"sha256:ab");
    d.delete("docker").await.unwrap();
    assert!(bare.list(&root).await.unwrap_err().is_not_found());
}
