//! The Ceph RGW bucket the S3 tests run against (`scripts/rgw.sh`, which
//! `scripts/test.sh` starts): its `DRYDOCK_TEST_S3_*` variables, a root directory of its
//! own in the bucket for each test, a `storage.s3` section for it, and that root seen
//! directly (not through a server). Without the variables the tests fail, never skip.

use futures::StreamExt;
use registry::storage::Driver;
use registry::storage::s3::{S3Config, S3Driver};

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

/// A server configuration on the bucket under `root` with `secretkey` as given
/// (`storage.s3`, deletes enabled), listening on an ephemeral loopback port.
pub fn yaml_with_secret(root: &str, secretkey: &str) -> String {
    format!(
        "storage:\n  s3:\n    region: {}\n    regionendpoint: {}\n    bucket: {}\n    \
         rootdirectory: {root}\n    accesskey: {}\n    secretkey: {secretkey}\n    \
         forcepathstyle: true\n    chunksize: 5242880\n  delete:\n    enabled: true\n\
         http:\n  addr: 127.0.0.1:0\n",
        var("DRYDOCK_TEST_S3_REGION"),
        var("DRYDOCK_TEST_S3_ENDPOINT"),
        var("DRYDOCK_TEST_S3_BUCKET"),
        var("DRYDOCK_TEST_S3_ACCESS_KEY"),
    )
}

/// [`yaml_with_secret`] with the RGW's own secret key.
pub fn yaml(root: &str) -> String {
    yaml_with_secret(root, &var("DRYDOCK_TEST_S3_SECRET_KEY"))
}

/// [`yaml`] in replica mode: the `database` section for `db` added.
pub fn replica_yaml(root: &str, db: &registry::coordination::DatabaseConfig) -> String {
    format!(
        "{}database:\n  enabled: true\n  host: {}\n  port: {}\n  user: {}\n  dbname: {}\n  \
         sslmode: disable\n",
        yaml(root),
        db.host,
        db.port,
        db.user,
        db.dbname,
    )
}

/// The bucket under `root`, seen directly.
pub fn bucket(root: &str) -> S3Driver {
    S3Driver::new(config(root)).expect("the S3 test driver")
}

/// Every key below the root, sorted.
pub async fn keys(d: &S3Driver) -> Vec<String> {
    let mut out: Vec<String> = d
        .walk("")
        .map(|e| e.expect("walk").path)
        .collect::<Vec<_>>()
        .await;
    out.sort();
    out
}

/// Removes every key below `root`.
pub async fn remove_root(root: &str) {
    let b = bucket(root);
    let all = keys(&b).await;
    for r in b.delete_many(&all).await.expect("delete_many") {
        r.expect("delete");
    }
}
