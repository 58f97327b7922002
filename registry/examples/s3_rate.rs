//! Raw S3 PUT/GET rate of the client the S3 driver uses (object_store), next to the
//! driver's own writer and reader, on one object of SIZE_MIB: the limit the push and pull
//! targets on S3 are judged against. Run by `scripts/bench-s3.sh`; reads the endpoint
//! and credentials from `DRYDOCK_TEST_S3_*` (what `scripts/rgw.sh env` prints).
//!
//! Prints one JSON object: MiB/s for each line and the part size.

use std::time::Instant;

use bytes::Bytes;
use futures::TryStreamExt;
use object_store::aws::AmazonS3Builder;
use object_store::multipart::MultipartStore;
use object_store::path::Path;
use object_store::{ClientOptions, ObjectStoreExt, PutPayload};
use registry::storage::s3::{S3Config, S3Driver};
use registry::storage::{Driver, WriterStart};

fn var(k: &str) -> String {
    std::env::var(k).unwrap_or_else(|_| panic!("{k} is not set (scripts/rgw.sh env)"))
}

/// `n` bytes of cheap pseudo-random data (compression or dedup on the server would
/// flatter zeros).
fn chunk(n: usize, seed: u64) -> Bytes {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let mut v = Vec::with_capacity(n);
    while v.len() < n {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        v.extend_from_slice(&x.to_le_bytes());
    }
    v.truncate(n);
    Bytes::from(v)
}

#[tokio::main]
async fn main() -> anyhow_free::Result<()> {
    let size_mib: usize = std::env::var("SIZE_MIB")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(512);
    let part: usize = std::env::var("PART_MIB")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(10)
        << 20;
    let total = size_mib << 20;
    let (endpoint, bucket) = (
        var("DRYDOCK_TEST_S3_ENDPOINT"),
        var("DRYDOCK_TEST_S3_BUCKET"),
    );
    let store = AmazonS3Builder::new()
        .with_region(var("DRYDOCK_TEST_S3_REGION"))
        .with_endpoint(&endpoint)
        .with_bucket_name(&bucket)
        .with_access_key_id(var("DRYDOCK_TEST_S3_ACCESS_KEY"))
        .with_secret_access_key(var("DRYDOCK_TEST_S3_SECRET_KEY"))
        .with_client_options(ClientOptions::new().with_allow_http(true))
        .build()?;
    let mib = |secs: f64| total as f64 / (1 << 20) as f64 / secs;
    let parts: Vec<Bytes> = (0..total.div_ceil(part))
        .map(|i| chunk(part.min(total - i * part), i as u64 + 1))
        .take(2)
        .collect();
    let part_of = |i: usize| {
        // Two distinct parts alternate: memory stays at two parts, and no two
        // neighbours are equal.
        let p = parts[i % 2].clone();
        if (i + 1) * part > total {
            p.slice(..total - i * part)
        } else {
            p
        }
    };
    let n_parts = total.div_ceil(part);

    // Raw multipart PUT, one part at a time (what the driver's writer does).
    let key = Path::from(format!("bench-raw-{}", std::process::id()));
    let t = Instant::now();
    let id = store.create_multipart(&key).await?;
    let mut ids = Vec::new();
    for i in 0..n_parts {
        ids.push(
            store
                .put_part(&key, &id, i, PutPayload::from(part_of(i)))
                .await?,
        );
    }
    store.complete_multipart(&key, &id, ids).await?;
    let raw_put = mib(t.elapsed().as_secs_f64());

    // Raw multipart PUT, four parts in flight.
    let key4 = Path::from(format!("bench-raw4-{}", std::process::id()));
    let t = Instant::now();
    let id4 = store.create_multipart(&key4).await?;
    let ids4: Vec<_> = futures::stream::iter(0..n_parts)
        .map(|i| {
            let (store, key4, id4) = (&store, &key4, &id4);
            async move {
                store
                    .put_part(key4, id4, i, PutPayload::from(part_of(i)))
                    .await
            }
        })
        .buffered(4)
        .try_collect()
        .await?;
    store.complete_multipart(&key4, &id4, ids4).await?;
    let raw_put4 = mib(t.elapsed().as_secs_f64());

    // Raw GET, streamed and dropped.
    let t = Instant::now();
    let mut n = 0usize;
    let mut s = store.get(&key).await?.into_stream();
    while let Some(b) = s.try_next().await? {
        n += b.len();
    }
    assert_eq!(n, total);
    let raw_get = mib(t.elapsed().as_secs_f64());

    // The driver: writer (hashes, parts, completes, copies into place) and reader.
    let yaml = format!(
        "region: {}\nregionendpoint: {endpoint}\nbucket: {bucket}\nrootdirectory: bench-{}\n\
         accesskey: {}\nsecretkey: {}\nforcepathstyle: true\nchunksize: {part}\n",
        var("DRYDOCK_TEST_S3_REGION"),
        std::process::id(),
        var("DRYDOCK_TEST_S3_ACCESS_KEY"),
        var("DRYDOCK_TEST_S3_SECRET_KEY"),
    );
    let config = S3Config::from_yaml(&serde_yaml_ng::from_str(&yaml)?, std::iter::empty())?;
    let d = S3Driver::new(config)?;
    let mut hasher = registry::digest::Hasher::new(registry::digest::Algorithm::Sha256);
    for i in 0..n_parts {
        hasher.update(&part_of(i));
    }
    let digest = hasher.finish();
    let t = Instant::now();
    let mut w = d.writer("_uploads/bench/data", WriterStart::New).await?;
    for i in 0..n_parts {
        // Frames of 64 KiB, as a request body arrives.
        let p = part_of(i);
        let mut at = 0;
        while at < p.len() {
            let end = (at + 65_536).min(p.len());
            w.write(p.slice(at..end)).await?;
            at = end;
        }
    }
    let t_commit = Instant::now();
    w.commit(&digest, "blobs/bench/data").await?;
    let commit_ms = t_commit.elapsed().as_millis();
    let driver_put = mib(t.elapsed().as_secs_f64());
    let t = Instant::now();
    let r = d.reader("blobs/bench/data", 0, None).await?;
    let n: usize = r
        .body
        .map_ok(|b| b.len())
        .try_fold(0, |a, b| async move { Ok(a + b) })
        .await?;
    assert_eq!(n, total);
    let driver_get = mib(t.elapsed().as_secs_f64());

    store.delete(&key).await?;
    store.delete(&key4).await?;
    d.delete("blobs").await?;
    println!(
        "{{\"size_mib\":{size_mib},\"part_mib\":{},\"raw_put_mibs\":{raw_put:.0},\
         \"raw_put_4_parts_mibs\":{raw_put4:.0},\"raw_get_mibs\":{raw_get:.0},\
         \"driver_put_mibs\":{driver_put:.0},\"driver_commit_ms\":{commit_ms},\
         \"driver_get_mibs\":{driver_get:.0}}}",
        part >> 20
    );
    Ok(())
}

/// A boxed error, so the example needs no error crate of its own.
mod anyhow_free {
    pub type Result<T> = std::result::Result<T, Box<dyn std::error::Error + Send + Sync>>;
}

use futures::StreamExt;
