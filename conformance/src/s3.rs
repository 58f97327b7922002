//! The Ceph RGW bucket the S3 tests run against (`scripts/rgw.sh`, which
//! `scripts/test.sh` starts): its `DRYDOCK_TEST_S3_*` variables, and a root directory
//! of its own in the bucket for each test. Without the variables the tests fail, never
//! skip.

use registry::storage::s3::S3Config;

/// A `DRYDOCK_TEST_S3_*` variable; a panic saying how to start the RGW when unset.
pub fn var(k: &str) -> String {
    std::env::var(k).unwrap_or_else(|_| {
        panic!(
            "{k} is not set: the S3 tests need the Ceph RGW that scripts/test.sh starts \
             (or run `eval \"$(scripts/rgw.sh env \"$(scripts/rgw.sh start)\")\"` first)"
        )
    })
}

/// A fresh root directory name in the bucket, starting with `prefix`.
pub fn fresh_root(prefix: &str) -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0);
    format!("{prefix}-{}-{nanos}", std::process::id())
}

/// The bucket under `root`, as `storage.s3` would name it.
pub fn config(root: &str) -> S3Config {
    let yaml = format!(
        "region: {}\nregionendpoint: {}\nbucket: {}\nrootdirectory: {root}\naccesskey: {}\n\
         secretkey: {}\nforcepathstyle: true\n",
        var("DRYDOCK_TEST_S3_REGION"),
        var("DRYDOCK_TEST_S3_ENDPOINT"),
        var("DRYDOCK_TEST_S3_BUCKET"),
        var("DRYDOCK_TEST_S3_ACCESS_KEY"),
        var("DRYDOCK_TEST_S3_SECRET_KEY"),
    );
    let v: serde_yaml_ng::Value = serde_yaml_ng::from_str(&yaml).expect("the S3 test yaml");
    S3Config::from_yaml(&v, std::iter::empty()).expect("the S3 test configuration")
}
