//! Bulk object work for the S3 benchmarks, with the client the S3 driver uses
//! (object_store), many requests in flight: about 470 objects/s on the test RGW
//! under load where `aws s3 sync` (one Python process) managed about 160.
//!
//! ```text
//! s3_tree put DIR PREFIX      every file under DIR to PREFIX/<its path below DIR>
//! s3_tree count PREFIX [SUFFIX]  keys under PREFIX (ending with SUFFIX)
//! s3_tree delete PREFIX       every key under PREFIX (DeleteObjects batches)
//! ```
//!
//! Reads the endpoint and credentials from `DRYDOCK_TEST_S3_*` (what `scripts/rgw.sh env`
//! prints); CONCURRENCY (64) requests at a time. `put` prints one JSON object
//! (objects, bytes, seconds); `count` and `delete` print the number of keys. Used by
//! `scripts/bench-gc-s3.sh` and `scripts/bench-replicas.sh`.

use std::path::PathBuf;
use std::time::Instant;

use futures::{StreamExt, TryStreamExt, stream};
use object_store::aws::{AmazonS3, AmazonS3Builder};
use object_store::path::Path;
use object_store::{ClientOptions, ObjectStore, ObjectStoreExt, PutPayload};

type Result<T> = std::result::Result<T, Box<dyn std::error::Error + Send + Sync>>;

fn var(k: &str) -> Result<String> {
    std::env::var(k).map_err(|_| format!("{k} is not set (scripts/rgw.sh env)").into())
}

fn store() -> Result<AmazonS3> {
    Ok(AmazonS3Builder::new()
        .with_region(var("DRYDOCK_TEST_S3_REGION")?)
        .with_endpoint(var("DRYDOCK_TEST_S3_ENDPOINT")?)
        .with_bucket_name(var("DRYDOCK_TEST_S3_BUCKET")?)
        .with_access_key_id(var("DRYDOCK_TEST_S3_ACCESS_KEY")?)
        .with_secret_access_key(var("DRYDOCK_TEST_S3_SECRET_KEY")?)
        // A DeleteObjects of 1,000 keys took longer than the default 30 s on a busy RGW.
        .with_client_options(
            ClientOptions::new()
                .with_allow_http(true)
                .with_timeout(std::time::Duration::from_secs(300)),
        )
        .build()?)
}

/// Every regular file below `dir`, as (path, path relative to `dir` with `/`).
fn files(dir: &std::path::Path) -> Result<Vec<(PathBuf, String)>> {
    let mut out = Vec::new();
    let mut todo = vec![dir.to_path_buf()];
    while let Some(d) = todo.pop() {
        for e in std::fs::read_dir(&d)? {
            let e = e?;
            let p = e.path();
            if e.file_type()?.is_dir() {
                todo.push(p);
            } else {
                let rel = p.strip_prefix(dir)?.to_string_lossy().into_owned();
                out.push((p, rel));
            }
        }
    }
    Ok(out)
}

fn key(prefix: &str, rel: &str) -> Path {
    Path::from(format!("{}/{rel}", prefix.trim_matches('/')))
}

fn report(objects: usize, bytes: u64, t0: Instant) {
    println!(
        "{{\"objects\": {objects}, \"bytes\": {bytes}, \"seconds\": {:.3}}}",
        t0.elapsed().as_secs_f64()
    );
}

#[tokio::main]
async fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let conc: usize = std::env::var("CONCURRENCY")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(64);
    let s3 = store()?;
    let s3 = &s3;
    match args.iter().map(String::as_str).collect::<Vec<_>>()[..] {
        ["put", dir, prefix] => {
            let t0 = Instant::now();
            let list = files(std::path::Path::new(dir))?;
            let n = list.len();
            let bytes = stream::iter(list)
                .map(|(path, rel)| async move {
                    let data = tokio::fs::read(&path).await?;
                    let len = data.len() as u64;
                    s3.put(&key(prefix, &rel), PutPayload::from(data)).await?;
                    Ok::<u64, Box<dyn std::error::Error + Send + Sync>>(len)
                })
                .buffer_unordered(conc)
                .try_fold(0u64, |a, b| async move { Ok(a + b) })
                .await?;
            report(n, bytes, t0);
        }
        ["count", prefix] | ["count", prefix, _] => {
            let suffix = args.get(2).map(String::as_str).unwrap_or("");
            let n = s3
                .list(Some(&Path::from(prefix.trim_matches('/'))))
                .try_fold(0usize, |n, m| async move {
                    Ok(n + usize::from(m.location.as_ref().ends_with(suffix)))
                })
                .await?;
            println!("{n}");
        }
        ["delete", prefix] => {
            let keys = s3
                .list(Some(&Path::from(prefix.trim_matches('/'))))
                .map_ok(|m| m.location)
                .boxed();
            let n = s3
                .delete_stream(keys)
                .try_fold(0usize, |n, _| async move { Ok(n + 1) })
                .await?;
            println!("{n}");
        }
        _ => {
            return Err(
                "usage: s3_tree put DIR PREFIX | count PREFIX [SUFFIX] | delete PREFIX".into(),
            );
        }
    }
    Ok(())
}
