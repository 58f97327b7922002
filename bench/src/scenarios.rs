//! The scenarios: big-blob push and pull, manifest and blob-HEAD load, many small images
//! pushed and pulled by concurrent clients, and tag and catalog listings. Each returns a
//! [`Report`]; setup steps that fail are fatal, measured requests that fail are counted.

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, anyhow, bail};
use bytes::Bytes;
use http::header::{self, HeaderValue};
use http::{Method, StatusCode};
use http_body_util::BodyExt;
use serde_json::json;

use crate::blobfile::BlobFile;
use crate::client::{self as h, Conn, Payload, Target};
use crate::load::{LoadOpts, Op, StartLine, run_load, run_workers};
use crate::oci::{self, Blob, Image};
use crate::report::{ErrorLog, Latency, Report, Row, histogram, record};

fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("cannot start a runtime")
}

fn report(
    scenario: &str,
    target: &Target,
    url: &str,
    params: serde_json::Value,
    rows: Vec<Row>,
    errors: ErrorLog,
) -> Report {
    let _ = target;
    Report {
        scenario: scenario.to_owned(),
        url: url.to_owned(),
        params,
        rows,
        error_samples: errors.samples,
    }
}

/// A row for `n` timed transfers of `bytes` each.
fn transfer_row(name: &str, bytes: u64, times: &[Duration], errors: u64) -> Row {
    let mut hist = histogram();
    for t in times {
        record(&mut hist, *t);
    }
    let total: f64 = times.iter().map(Duration::as_secs_f64).sum();
    let mibs: Vec<f64> = times
        .iter()
        .map(|t| bytes as f64 / (1u64 << 20) as f64 / t.as_secs_f64())
        .collect();
    let note = (mibs.len() > 1).then(|| {
        let best = mibs.iter().cloned().fold(f64::MIN, f64::max);
        let worst = mibs.iter().cloned().fold(f64::MAX, f64::min);
        format!("per transfer MiB/s: best {best:.1}, worst {worst:.1}")
    });
    Row {
        name: name.to_owned(),
        ops: times.len() as u64,
        errors,
        seconds: total,
        ops_per_s: None,
        mib_per_s: (total > 0.0)
            .then(|| (bytes * times.len() as u64) as f64 / total / (1u64 << 20) as f64),
        latency: Latency::of(&hist),
        bytes: Some(bytes * times.len() as u64),
        note,
        ..Row::default()
    }
}

// ---- push-blob ---------------------------------------------------------------------

/// One push of the whole file: monolithic (POST + PUT with the body) or chunked (POST,
/// PATCH per chunk with Content-Range, PUT without a body).
async fn push_once(
    c: &mut Conn,
    repo: &str,
    f: &BlobFile,
    chunk: Option<u64>,
) -> anyhow::Result<()> {
    let loc = oci::start_upload(c, repo).await?;
    match chunk {
        None => {
            let body = Payload::File(f.range(0, f.size));
            oci::finish_upload(c, &loc, &f.digest, body).await
        }
        Some(chunk) => {
            let mut loc = loc;
            let mut offset = 0;
            while offset < f.size {
                let len = chunk.min(f.size - offset);
                let body = Payload::File(f.range(offset, len));
                loc = oci::patch_chunk(c, &loc, offset, body).await?;
                offset += len;
            }
            oci::finish_upload(c, &loc, &f.digest, Payload::Body(h::empty())).await
        }
    }
}

pub fn push_blob(
    url: &str,
    repo: &str,
    f: &BlobFile,
    chunk_mib: Option<u64>,
    repeat: u32,
) -> anyhow::Result<Report> {
    let target = Target::parse(url)?;
    let chunk = chunk_mib.map(|m| m << 20);
    if chunk == Some(0) {
        bail!("--chunk-mib must be at least 1");
    }
    let rt = runtime()?;
    let mut errors = ErrorLog::default();
    let times = rt.block_on(async {
        let mut c = Conn::connect(target.clone()).await?;
        let mut times = Vec::new();
        for _ in 0..repeat {
            f.warm()?;
            let t0 = Instant::now();
            match push_once(&mut c, repo, f, chunk).await {
                Ok(()) => times.push(t0.elapsed()),
                Err(e) => errors.add(&e),
            }
        }
        anyhow::Ok(times)
    })?;
    let name = match chunk_mib {
        None => "push monolithic (POST + PUT)".to_owned(),
        Some(m) => format!("push chunked ({m} MiB PATCHes + PUT)"),
    };
    let row = transfer_row(&name, f.size, &times, errors.count);
    Ok(report(
        "push-blob",
        &target,
        url,
        json!({ "repo": repo, "size_mib": f.size >> 20, "chunk_mib": chunk_mib, "digest": f.digest, "repeat": repeat }),
        vec![row],
        errors,
    ))
}

// ---- pull-blob / get -----------------------------------------------------------------

/// GETs `path`, streaming the body to nowhere; with `verify`, a second thread hashes it
/// as it arrives. Returns the time to the last byte, the length and the digest.
async fn pull_once(
    c: &mut Conn,
    path: &str,
    verify: bool,
) -> anyhow::Result<(Duration, u64, Option<String>)> {
    use sha2::{Digest as _, Sha256};
    let t0 = Instant::now();
    let resp = c.send(Method::GET, path, &[], h::empty()).await?;
    let status = resp.status();
    if status != StatusCode::OK {
        h::drain(resp).await?;
        bail!("GET {path}: {status}");
    }
    let (tx, hasher) = if verify {
        let (tx, rx) = std::sync::mpsc::sync_channel::<Bytes>(64);
        let hasher = std::thread::spawn(move || {
            let mut h = Sha256::new();
            for b in rx {
                h.update(&b);
            }
            format!("sha256:{}", hex::encode(h.finalize()))
        });
        (Some(tx), Some(hasher))
    } else {
        (None, None)
    };
    let mut body = resp.into_body();
    let mut n = 0u64;
    while let Some(frame) = body.frame().await {
        if let Ok(d) = frame.context("reading the blob")?.into_data() {
            n += d.len() as u64;
            if let Some(tx) = &tx {
                tx.send(d)
                    .map_err(|_| anyhow!("the hashing thread stopped"))?;
            }
        }
    }
    let elapsed = t0.elapsed();
    drop(tx);
    let digest = match hasher {
        Some(h) => Some(
            h.join()
                .map_err(|_| anyhow!("the hashing thread panicked"))?,
        ),
        None => None,
    };
    Ok((elapsed, n, digest))
}

/// Pulls `path` `repeat` times; checks the length and (with `verify`) the digest.
pub fn pull(
    scenario: &str,
    url: &str,
    path: &str,
    expect: Option<(&str, u64)>,
    verify: bool,
    repeat: u32,
) -> anyhow::Result<Report> {
    let target = Target::parse(url)?;
    let full_path = target.path(path);
    let rt = runtime()?;
    let mut errors = ErrorLog::default();
    let mut size = 0;
    let times = rt.block_on(async {
        let mut c = Conn::connect(target.clone()).await?;
        let mut times = Vec::new();
        for _ in 0..repeat {
            let r = pull_once(&mut c, &full_path, verify)
                .await
                .and_then(|(t, n, d)| {
                    if let Some((want_d, want_n)) = expect {
                        if n != want_n {
                            bail!("GET {full_path}: {n} bytes, wanted {want_n}");
                        }
                        if let Some(d) = &d
                            && d != want_d
                        {
                            bail!("GET {full_path}: content hashes to {d}, wanted {want_d}");
                        }
                    }
                    Ok((t, n))
                });
            match r {
                Ok((t, n)) => {
                    size = n;
                    times.push(t);
                }
                Err(e) => errors.add(&e),
            }
        }
        anyhow::Ok(times)
    })?;
    let name = if verify {
        "GET, sha256 verified"
    } else {
        "GET, not verified"
    };
    let row = transfer_row(name, size, &times, errors.count);
    Ok(report(
        scenario,
        &target,
        url,
        json!({ "path": path, "size": size, "verify": verify, "repeat": repeat }),
        vec![row],
        errors,
    ))
}

// ---- setup helpers -------------------------------------------------------------------

/// Pushes one small image (two layers) under `repo:tag`; checks it reads back.
async fn setup_image(c: &mut Conn, repo: &str, tag: &str) -> anyhow::Result<Image> {
    let mut rng = fastrand::Rng::new();
    let img = Image::random(&mut rng, 2, 4096);
    oci::push_image(c, repo, &img, tag)
        .await
        .with_context(|| format!("setup: pushing {repo}:{tag}"))?;
    oci::pull_image(c, repo, &img, tag)
        .await
        .with_context(|| format!("setup: pulling {repo}:{tag} back"))?;
    Ok(img)
}

// ---- manifest / blob-head ------------------------------------------------------------

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum By {
    Tag,
    Digest,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
#[clap(rename_all = "UPPER")]
pub enum ReadMethod {
    Get,
    Head,
}

pub fn manifest(
    url: &str,
    repo: &str,
    by: By,
    method: ReadMethod,
    opts: &LoadOpts,
) -> anyhow::Result<Report> {
    let target = Target::parse(url)?;
    let img = runtime()?.block_on(async {
        let mut c = Conn::connect(target.clone()).await?;
        setup_image(&mut c, repo, "latest").await
    })?;
    let reference = match by {
        By::Tag => "latest".to_owned(),
        By::Digest => img.manifest.digest.clone(),
    };
    let m = match method {
        ReadMethod::Get => Method::GET,
        ReadMethod::Head => Method::HEAD,
    };
    let name = format!("{m} manifest by {by:?}").to_lowercase();
    let op = Op::Request {
        method: m,
        path: target.path(&format!("/v2/{repo}/manifests/{reference}")),
        headers: vec![oci::accept_manifests()],
    };
    let (row, errors) = run_load(&target, &name, op, opts)?;
    Ok(report(
        "manifest",
        &target,
        url,
        load_params(
            opts,
            json!({ "repo": repo, "by": format!("{by:?}").to_lowercase(), "method": format!("{method:?}").to_uppercase(), "manifest_bytes": img.manifest.data.len() }),
        ),
        vec![row],
        errors,
    ))
}

fn load_params(opts: &LoadOpts, mut extra: serde_json::Value) -> serde_json::Value {
    if let Some(o) = extra.as_object_mut() {
        o.insert("connections".into(), json!(opts.connections));
        o.insert("threads".into(), json!(opts.threads));
        o.insert("duration_s".into(), json!(opts.duration.as_secs_f64()));
        o.insert("warmup_s".into(), json!(opts.warmup.as_secs_f64()));
    }
    extra
}

pub fn blob_head(url: &str, repo: &str, opts: &LoadOpts) -> anyhow::Result<Report> {
    let target = Target::parse(url)?;
    let img = runtime()?.block_on(async {
        let mut c = Conn::connect(target.clone()).await?;
        setup_image(&mut c, repo, "latest").await
    })?;
    let op = Op::Request {
        method: Method::HEAD,
        path: target.path(&format!("/v2/{repo}/blobs/{}", img.layers[0].digest)),
        headers: Vec::new(),
    };
    let (row, errors) = run_load(&target, "HEAD blob", op, opts)?;
    Ok(report(
        "blob-head",
        &target,
        url,
        load_params(opts, json!({ "repo": repo })),
        vec![row],
        errors,
    ))
}

// ---- small-images --------------------------------------------------------------------

struct ClientOut {
    images: u64,
    requests: u64,
    total: hdrhistogram::Histogram<u64>,
    push: hdrhistogram::Histogram<u64>,
    pull: hdrhistogram::Histogram<u64>,
    errors: ErrorLog,
    end: Option<Instant>,
    start: Instant,
}

pub fn small_images(
    url: &str,
    repo_prefix: &str,
    clients: usize,
    images: usize,
    layer_bytes: usize,
    threads: usize,
) -> anyhow::Result<Report> {
    let target = Target::parse(url)?;
    let line = StartLine::new(clients);
    let run_id = format!("{:08x}", fastrand::u32(..));
    let outs = run_workers(threads, clients, |i| {
        let (target, line) = (target.clone(), line.clone());
        let repo = format!("{repo_prefix}-{i}");
        let mine = images / clients + usize::from(i < images % clients);
        let run_id = run_id.clone();
        async move {
            let conn = Conn::connect(target).await;
            let start = line.wait().await;
            let mut out = ClientOut {
                images: 0,
                requests: 0,
                total: histogram(),
                push: histogram(),
                pull: histogram(),
                errors: ErrorLog::default(),
                end: None,
                start,
            };
            let mut c = match conn {
                Ok(c) => c,
                Err(e) => {
                    out.errors.add(&e);
                    return out;
                }
            };
            let mut rng = fastrand::Rng::new();
            for n in 0..mine {
                let img = Image::random(&mut rng, 2, layer_bytes);
                let tag = format!("{run_id}-{n}");
                let t0 = Instant::now();
                let r = async {
                    let a = oci::push_image(&mut c, &repo, &img, &tag).await?;
                    let t1 = Instant::now();
                    let b = oci::pull_image(&mut c, &repo, &img, &tag).await?;
                    anyhow::Ok((t1, a + b))
                }
                .await;
                let t2 = Instant::now();
                match r {
                    Ok((t1, reqs)) => {
                        out.images += 1;
                        out.requests += u64::from(reqs);
                        record(&mut out.total, t2 - t0);
                        record(&mut out.push, t1 - t0);
                        record(&mut out.pull, t2 - t1);
                    }
                    Err(e) => out.errors.add(&e.context(format!("image {repo}:{tag}"))),
                }
                out.end = Some(t2);
            }
            out
        }
    })?;
    let (mut total, mut push, mut pull) = (histogram(), histogram(), histogram());
    let mut errors = ErrorLog::default();
    let (mut ok, mut requests) = (0u64, 0u64);
    let mut end: Option<Instant> = None;
    let mut start: Option<Instant> = None;
    for o in outs {
        total.add(&o.total).map_err(|e| anyhow!("{e}"))?;
        push.add(&o.push).map_err(|e| anyhow!("{e}"))?;
        pull.add(&o.pull).map_err(|e| anyhow!("{e}"))?;
        ok += o.images;
        requests += o.requests;
        errors.merge(o.errors);
        end = end.max(o.end);
        start = Some(start.map_or(o.start, |s| s.min(o.start)));
    }
    let seconds = match (start, end) {
        (Some(s), Some(e)) if e > s => (e - s).as_secs_f64(),
        _ => 0.0,
    };
    let rate = (seconds > 0.0).then(|| ok as f64 / seconds);
    let rows = vec![
        Row {
            name: "image push+pull".into(),
            ops: ok,
            errors: errors.count,
            seconds,
            ops_per_s: rate,
            latency: Latency::of(&total),
            requests_per_op: (ok > 0).then(|| requests as f64 / ok as f64),
            note: Some(format!(
                "{clients} clients; each image: config + 2 layers of {layer_bytes} B; HEAD, POST, PUT per blob, PUT manifest by tag; then GET manifest and blobs, sha256 verified"
            )),
            ..Row::default()
        },
        Row {
            name: "  of which push".into(),
            ops: ok,
            seconds,
            latency: Latency::of(&push),
            ..Row::default()
        },
        Row {
            name: "  of which pull".into(),
            ops: ok,
            seconds,
            latency: Latency::of(&pull),
            ..Row::default()
        },
    ];
    Ok(report(
        "small-images",
        &target,
        url,
        json!({ "clients": clients, "images": images, "layer_bytes": layer_bytes, "repo_prefix": repo_prefix, "threads": threads }),
        rows,
        errors,
    ))
}

// ---- tags / catalog --------------------------------------------------------------------

/// Runs `jobs` setup steps on `conns` connections; a row with their rate and latency.
fn setup_parallel<F, Fut>(
    target: &Arc<Target>,
    name: &str,
    jobs: usize,
    conns: usize,
    threads: usize,
    job: F,
) -> anyhow::Result<Row>
where
    F: Fn(Conn, usize) -> Fut + Sync + Send + Clone + 'static,
    Fut: std::future::Future<Output = (Conn, anyhow::Result<()>)> + Send + 'static,
{
    let conns = conns.clamp(1, jobs.max(1));
    let t0 = Instant::now();
    let outs = run_workers(threads, conns, |w| {
        let target = target.clone();
        let job = job.clone();
        async move {
            let mut hist = histogram();
            let mut c = Conn::connect(target).await?;
            for j in (w..jobs).step_by(conns) {
                let t = Instant::now();
                let (c2, r) = job(c, j).await;
                c = c2;
                r.with_context(|| format!("setup step {j}"))?;
                record(&mut hist, t.elapsed());
            }
            anyhow::Ok(hist)
        }
    })?;
    let seconds = t0.elapsed().as_secs_f64();
    let mut hist = histogram();
    for o in outs {
        hist.add(&o?).map_err(|e| anyhow!("{e}"))?;
    }
    Ok(Row {
        name: name.to_owned(),
        ops: jobs as u64,
        seconds,
        ops_per_s: Some(jobs as f64 / seconds),
        latency: Latency::of(&hist),
        note: Some(format!("setup, {conns} connections")),
        ..Row::default()
    })
}

/// Lists `path` three ways: whole (following any `Link` the registry sends unasked), the
/// first page of `n`, and every page of `n`.
fn listing_rows(
    target: &Arc<Target>,
    path: &str,
    key: &'static str,
    page: usize,
    opts: &LoadOpts,
) -> anyhow::Result<(Vec<Row>, ErrorLog)> {
    let mut rows = Vec::new();
    let mut errors = ErrorLog::default();
    let sep = if path.contains('?') { '&' } else { '?' };
    for (name, p, max_pages) in [
        ("whole list, no n".to_owned(), path.to_owned(), u32::MAX),
        (
            format!("first page, n={page}"),
            format!("{path}{sep}n={page}"),
            1,
        ),
        (
            format!("all pages, n={page}"),
            format!("{path}{sep}n={page}"),
            u32::MAX,
        ),
    ] {
        let op = Op::Walk {
            path: p,
            key,
            max_pages,
        };
        let (row, e) = run_load(target, &name, op, opts)?;
        rows.push(row);
        errors.merge(e);
    }
    Ok((rows, errors))
}

pub fn tags(
    url: &str,
    repo: &str,
    count: usize,
    page: usize,
    setup_conns: usize,
    opts: &LoadOpts,
) -> anyhow::Result<Report> {
    let target = Target::parse(url)?;
    let img = runtime()?.block_on(async {
        let mut c = Conn::connect(target.clone()).await?;
        setup_image(&mut c, repo, "t0").await
    })?;
    let manifest = img.manifest.data.clone();
    let repo_s: Arc<str> = repo.into();
    let setup = setup_parallel(
        &target,
        &format!("PUT manifest under {count} tags"),
        count,
        setup_conns,
        opts.threads,
        move |mut c, j| {
            let (manifest, repo) = (manifest.clone(), repo_s.clone());
            async move {
                let r =
                    oci::put_manifest(&mut c, &repo, &format!("t{j}"), oci::OCI_MANIFEST, manifest)
                        .await
                        .map(|_| ());
                (c, r)
            }
        },
    )?;
    let path = target.path(&format!("/v2/{repo}/tags/list"));
    let (mut rows, errors) = listing_rows(&target, &path, "tags", page, opts)?;
    rows.insert(0, setup);
    Ok(report(
        "tags",
        &target,
        url,
        load_params(opts, json!({ "repo": repo, "tags": count, "page": page })),
        rows,
        errors,
    ))
}

pub fn catalog(
    url: &str,
    repo_prefix: &str,
    count: usize,
    page: usize,
    setup_conns: usize,
    opts: &LoadOpts,
) -> anyhow::Result<Report> {
    let target = Target::parse(url)?;
    let first = format!("{repo_prefix}/r00000");
    let img = runtime()?.block_on(async {
        let mut c = Conn::connect(target.clone()).await?;
        setup_image(&mut c, &first, "latest").await
    })?;
    let blobs: Arc<Vec<Blob>> = Arc::new(img.blobs().cloned().collect());
    let manifest = img.manifest.data.clone();
    let (first_s, prefix): (Arc<str>, Arc<str>) = (first.as_str().into(), repo_prefix.into());
    let setup = setup_parallel(
        &target,
        &format!("create {count} repositories (mount blobs, PUT manifest)"),
        count.saturating_sub(1),
        setup_conns,
        opts.threads,
        move |mut c, j| {
            let (blobs, manifest, first, prefix) = (
                blobs.clone(),
                manifest.clone(),
                first_s.clone(),
                prefix.clone(),
            );
            async move {
                let repo = format!("{prefix}/r{:05}", j + 1);
                let r = async {
                    for b in blobs.iter() {
                        oci::mount_or_push(&mut c, &repo, &first, &b.digest, &b.data).await?;
                    }
                    oci::put_manifest(&mut c, &repo, "latest", oci::OCI_MANIFEST, manifest).await?;
                    anyhow::Ok(())
                }
                .await;
                (c, r)
            }
        },
    )?;
    let path = target.path("/v2/_catalog");
    let (mut rows, errors) = listing_rows(&target, &path, "repositories", page, opts)?;
    rows.insert(0, setup);
    Ok(report(
        "catalog",
        &target,
        url,
        load_params(
            opts,
            json!({ "repo_prefix": repo_prefix, "repos": count, "page": page }),
        ),
        rows,
        errors,
    ))
}

/// `GET /v2/` answers (any status: Distribution with auth answers 401).
pub fn ping(url: &str) -> anyhow::Result<StatusCode> {
    let target = Target::parse(url)?;
    runtime()?.block_on(async {
        let mut c = Conn::connect(target.clone()).await?;
        let path = target.path("/v2/");
        let resp = c
            .send(
                Method::GET,
                &path,
                &[(header::ACCEPT, HeaderValue::from_static("*/*"))],
                h::empty(),
            )
            .await?;
        let s = resp.status();
        h::drain(resp).await?;
        Ok(s)
    })
}
