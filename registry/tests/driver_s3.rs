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

fn s3_driver() -> (Arc<dyn Driver>, impl FnOnce()) {
    let root = format!("driver-suite-{}", uuid::Uuid::new_v4().simple());
    let d: Arc<dyn Driver> = Arc::new(S3Driver::new(rgw_config(&root)).unwrap());
    (d, || ())
}

all_driver_tests!(s3_driver());

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
