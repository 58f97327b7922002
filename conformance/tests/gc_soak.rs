//! Soak: eight clients push and delete images in a loop — blobs first (HEAD, upload if
//! missing, as docker does), the manifest after a random pause — while the collector
//! runs back to back with grace 0 and untagged removal on. Every push must succeed and
//! every pushed image must pull back byte-identical. Runs for `DRYDOCK_SOAK_SECS`
//! (default 40) seconds, with the server's pending protection at 3 s.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use conformance::*;

const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
const CLIENTS: u64 = 8;

#[derive(Default)]
struct Counts {
    pushes: AtomicU64,
    deletes: AtomicU64,
    failures: AtomicU64,
    blobs_uploaded: AtomicU64,
    blobs_reused: AtomicU64,
}

fn fail(counts: &Counts, what: String) {
    counts.failures.fetch_add(1, Ordering::Relaxed);
    eprintln!("SOAK FAILURE: {what}");
}

/// HEAD, then upload only when missing; returns false on any unexpected answer.
async fn ensure_blob(
    c: &reqwest::Client,
    s: &str,
    repo: &str,
    data: &[u8],
    counts: &Counts,
) -> bool {
    let d = digest_of(data);
    let r = c
        .head(format!("{s}/v2/{repo}/blobs/{d}"))
        .send()
        .await
        .unwrap();
    if r.status() == 200 {
        counts.blobs_reused.fetch_add(1, Ordering::Relaxed);
        return true;
    }
    let r = c
        .post(format!("{s}/v2/{repo}/blobs/uploads/?digest={d}"))
        .body(data.to_vec())
        .send()
        .await
        .unwrap();
    if r.status() != 201 {
        fail(counts, format!("upload {d} to {repo}: {}", r.status()));
        return false;
    }
    counts.blobs_uploaded.fetch_add(1, Ordering::Relaxed);
    true
}

async fn verify_pull(
    c: &reqwest::Client,
    s: &str,
    repo: &str,
    tag: &str,
    body: &str,
    blobs: &[(String, Vec<u8>)],
) -> Result<(), String> {
    let r = c
        .get(format!("{s}/v2/{repo}/manifests/{tag}"))
        .send()
        .await
        .unwrap();
    if r.status() != 200 {
        return Err(format!("pull {repo}:{tag}: {}", r.status()));
    }
    if r.text().await.unwrap() != body {
        return Err(format!("pull {repo}:{tag}: manifest bytes differ"));
    }
    for (d, data) in blobs {
        let r = c
            .get(format!("{s}/v2/{repo}/blobs/{d}"))
            .send()
            .await
            .unwrap();
        if r.status() != 200 {
            return Err(format!("pull {repo} blob {d}: {}", r.status()));
        }
        if r.bytes().await.unwrap().as_ref() != data.as_slice() {
            return Err(format!("pull {repo} blob {d}: bytes differ"));
        }
    }
    Ok(())
}

async fn client_loop(
    id: u64,
    base: String,
    stop: Arc<AtomicBool>,
    counts: Arc<Counts>,
) -> Vec<(String, String, String, Vec<(String, Vec<u8>)>)> {
    let c = client();
    let mut kept = Vec::new();
    let mut n = 0u64;
    let mut rng = id.wrapping_mul(0x2545_F491_4F6C_DD1D) | 1;
    let mut next = move || {
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        rng
    };
    while !stop.load(Ordering::Relaxed) {
        n += 1;
        // Two repositories per client, layers shared across clients and pushes.
        let repo = format!("soak/c{id}/r{}", n % 2);
        let tag = format!("t{}", n % 5);
        let shared = random_bytes(2048, next() % 6);
        let unique = random_bytes(1024 + (next() % 4096) as usize, id * 1_000_000 + n);
        let config = format!(r#"{{"client":{id},"n":{n}}}"#).into_bytes();
        let mut ok = true;
        for data in [&shared, &unique, &config] {
            ok &= ensure_blob(&c, &base, &repo, data, &counts).await;
        }
        if !ok {
            continue;
        }
        tokio::time::sleep(Duration::from_millis(next() % 40)).await;
        let (sd, ud, cd) = (digest_of(&shared), digest_of(&unique), digest_of(&config));
        let m = image_manifest(
            (&cd, config.len()),
            &[(&sd, shared.len()), (&ud, unique.len())],
            "",
        );
        let r = c
            .put(format!("{base}/v2/{repo}/manifests/{tag}"))
            .header("content-type", OCI_MANIFEST)
            .body(m.clone())
            .send()
            .await
            .unwrap();
        if r.status() != 201 {
            let status = r.status();
            fail(
                &counts,
                format!(
                    "manifest {repo}:{tag}: {status} {}",
                    r.text().await.unwrap()
                ),
            );
            continue;
        }
        counts.pushes.fetch_add(1, Ordering::Relaxed);
        let blobs = vec![(sd, shared), (ud, unique), (cd, config)];
        if let Err(e) = verify_pull(&c, &base, &repo, &tag, &m, &blobs).await {
            fail(&counts, e);
        }
        if next() % 3 == 0 {
            let d = digest_of(m.as_bytes());
            let r = c
                .delete(format!("{base}/v2/{repo}/manifests/{d}"))
                .send()
                .await
                .unwrap();
            if r.status() != 202 {
                fail(&counts, format!("delete {repo}@{d}: {}", r.status()));
            }
            counts.deletes.fetch_add(1, Ordering::Relaxed);
            kept.retain(|(r, t, _, _): &(String, String, String, _)| !(r == &repo && t == &tag));
        } else {
            kept.retain(|(r, t, _, _): &(String, String, String, _)| !(r == &repo && t == &tag));
            kept.push((repo, tag, m, blobs));
        }
    }
    kept
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pushes_never_fail_while_the_collector_runs_back_to_back() {
    let secs: u64 = std::env::var("DRYDOCK_SOAK_SECS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(40);
    // Pending protection shortened from 1 h to 3 s so blobs really are collected during
    // the run; every push here completes well within it.
    let s = TestServer::start_with(|c| {
        c.gc.on_startup = false;
        c.gc.pending_ttl = Duration::from_secs(3);
    })
    .await;
    let stop = Arc::new(AtomicBool::new(false));
    let counts = Arc::new(Counts::default());
    let cycles = Arc::new(AtomicU64::new(0));
    let removed = Arc::new(AtomicU64::new(0));

    let collector = {
        let (cleaner, stop, cycles, removed) = (
            s.cleaner.clone(),
            stop.clone(),
            cycles.clone(),
            removed.clone(),
        );
        tokio::spawn(async move {
            let opts = gc::Options {
                dry_run: false,
                remove_untagged: true,
                grace: Duration::ZERO,
                ..gc::Options::default()
            };
            while !stop.load(Ordering::Relaxed) {
                let r = cleaner.run_now(&opts).await.expect("cycle");
                cycles.fetch_add(1, Ordering::Relaxed);
                removed.fetch_add(
                    (r.blobs_removed + r.manifests_removed) as u64,
                    Ordering::Relaxed,
                );
            }
        })
    };
    let clients: Vec<_> = (0..CLIENTS)
        .map(|id| {
            tokio::spawn(client_loop(
                id,
                s.base.clone(),
                stop.clone(),
                counts.clone(),
            ))
        })
        .collect();
    let start = Instant::now();
    tokio::time::sleep(Duration::from_secs(secs)).await;
    stop.store(true, Ordering::Relaxed);
    let mut kept = Vec::new();
    for c in clients {
        kept.extend(c.await.unwrap());
    }
    collector.await.unwrap();
    // Once more with everything settled, then every surviving image must pull intact.
    let opts = gc::Options {
        dry_run: false,
        remove_untagged: true,
        grace: Duration::ZERO,
        ..gc::Options::default()
    };
    s.cleaner.run_now(&opts).await.unwrap();
    let c = client();
    for (repo, tag, m, blobs) in &kept {
        if let Err(e) = verify_pull(&c, &s.base, repo, tag, m, blobs).await {
            fail(&counts, format!("after the soak: {e}"));
        }
    }
    let (pushes, failures) = (
        counts.pushes.load(Ordering::Relaxed),
        counts.failures.load(Ordering::Relaxed),
    );
    eprintln!(
        "soak: {:.0} s, {} cycles ({} manifests+blobs removed), {pushes} pushes, {} deletes, {} blobs uploaded, {} reused, {} images verified at the end, {failures} failures",
        start.elapsed().as_secs_f64(),
        cycles.load(Ordering::Relaxed),
        removed.load(Ordering::Relaxed),
        counts.deletes.load(Ordering::Relaxed),
        counts.blobs_uploaded.load(Ordering::Relaxed),
        counts.blobs_reused.load(Ordering::Relaxed),
        kept.len(),
    );
    assert_eq!(failures, 0, "pushes or pulls failed while collecting");
    assert!(
        cycles.load(Ordering::Relaxed) >= 20,
        "too few cycles to mean anything"
    );
    assert!(pushes >= 100, "too few pushes to mean anything");
    assert!(
        removed.load(Ordering::Relaxed) > 0,
        "the collector never removed anything"
    );
}
