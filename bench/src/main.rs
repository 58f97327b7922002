//! `drydock-bench`: load scenarios against any OCI distribution registry (drydock, CNCF
//! Distribution, ...), and a generator of Distribution-layout stores for GC benchmarks.
//! The client is hyper's bare HTTP/1.1 connection, one keep-alive connection per
//! worker, so the tool costs little next to the server it measures. Every scenario
//! prints a table, or JSON with `--json`; failed requests are counted and quoted.

mod blobfile;
mod client;
mod genstore;
mod load;
mod oci;
mod report;
mod scenarios;

use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use clap::{Args, Parser, Subcommand};

use crate::load::LoadOpts;
use crate::scenarios::{By, ReadMethod};

#[derive(Parser)]
#[command(
    name = "drydock-bench",
    version,
    about = "Load scenarios for OCI distribution registries, and a GC store generator"
)]
struct Cli {
    /// An `Authorization` value sent on every request (e.g. `Basic …` or `Bearer …`),
    /// for registries that require authentication.
    #[arg(
        long,
        global = true,
        env = "DRYDOCK_BENCH_AUTHORIZATION",
        hide_env_values = true
    )]
    authorization: Option<String>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Args, Clone)]
struct Common {
    /// The registry, e.g. http://127.0.0.1:5000
    #[arg(long, default_value = "http://127.0.0.1:5000")]
    url: String,
    /// Print the report as JSON.
    #[arg(long)]
    json: bool,
}

#[derive(Args, Clone)]
struct Load {
    /// Connections (one worker each).
    #[arg(short = 'c', long, default_value_t = 32)]
    connections: usize,
    /// How long to measure (e.g. 10s, 500ms, 1m).
    #[arg(short = 'd', long, default_value = "10s", value_parser = parse_duration)]
    duration: Duration,
    /// Unmeasured time before the measurement starts.
    #[arg(long, default_value = "1s", value_parser = parse_duration)]
    warmup: Duration,
    /// Client threads (default: the number of CPUs).
    #[arg(long)]
    threads: Option<usize>,
}

impl Load {
    fn opts(&self) -> LoadOpts {
        LoadOpts {
            connections: self.connections.max(1),
            threads: self.threads.unwrap_or_else(cpus),
            duration: self.duration,
            warmup: self.warmup,
        }
    }
}

#[derive(Args, Clone)]
struct FileArgs {
    /// Size of the test blob in MiB.
    #[arg(long, default_value_t = 512)]
    size_mib: u64,
    /// The test file (created with random data if missing; its digest is kept in
    /// FILE.sha256). Default: $TMPDIR/drydock-bench-<size>MiB.bin
    #[arg(long)]
    file: Option<PathBuf>,
}

impl FileArgs {
    fn path(&self) -> PathBuf {
        self.file
            .clone()
            .unwrap_or_else(|| blobfile::default_path(self.size_mib))
    }
}

#[derive(Subcommand)]
enum Command {
    /// Push one big blob streamed from the test file: monolithic (POST + PUT) or chunked
    /// (PATCH with Content-Range, then PUT).
    PushBlob {
        #[command(flatten)]
        common: Common,
        #[command(flatten)]
        file: FileArgs,
        /// Upload in PATCH chunks of this many MiB.
        #[arg(long)]
        chunk_mib: Option<u64>,
        #[arg(long, default_value = "bench/blob")]
        repo: String,
        /// Pushes (later ones push a digest the registry already has).
        #[arg(long, default_value_t = 1)]
        repeat: u32,
    },
    /// GET a blob (the test file's, or --digest) streaming to nowhere; verify sha256.
    PullBlob {
        #[command(flatten)]
        common: Common,
        #[command(flatten)]
        file: FileArgs,
        /// Pull this digest instead of the test file's.
        #[arg(long)]
        digest: Option<String>,
        #[arg(long, default_value = "bench/blob")]
        repo: String,
        /// Do not hash what arrives.
        #[arg(long)]
        no_verify: bool,
        #[arg(long, default_value_t = 3)]
        repeat: u32,
    },
    /// GET any URL (e.g. a static server as a reference), like pull-blob; --url is the
    /// whole URL. With --file or --size-mib, checks the test file's size and digest.
    Get {
        #[command(flatten)]
        common: Common,
        #[arg(long)]
        file: Option<PathBuf>,
        #[arg(long)]
        no_verify: bool,
        #[arg(long, default_value_t = 3)]
        repeat: u32,
    },
    /// Create the test file (if needed) and print its path, digest and size.
    GenFile {
        #[command(flatten)]
        file: FileArgs,
    },
    /// Push a small image, then GET or HEAD its manifest by tag or digest under load.
    Manifest {
        #[command(flatten)]
        common: Common,
        #[command(flatten)]
        load: Load,
        #[arg(long, value_enum, default_value = "tag", ignore_case = true)]
        by: By,
        #[arg(long, value_enum, default_value = "GET", ignore_case = true)]
        method: ReadMethod,
        #[arg(long, default_value = "bench/manifest")]
        repo: String,
    },
    /// Push a small image, then HEAD one of its blobs under load.
    BlobHead {
        #[command(flatten)]
        common: Common,
        #[command(flatten)]
        load: Load,
        #[arg(long, default_value = "bench/blobhead")]
        repo: String,
    },
    /// Concurrent clients push small images (HEAD, upload blobs, PUT manifest by tag) and
    /// pull and verify each.
    SmallImages {
        #[command(flatten)]
        common: Common,
        #[arg(long, default_value_t = 16)]
        clients: usize,
        /// Images in all (shared among the clients).
        #[arg(long, default_value_t = 320)]
        images: usize,
        /// Size of each of the two layers, in KiB.
        #[arg(long, default_value_t = 16)]
        layer_kib: usize,
        /// Client threads (default: the number of CPUs).
        #[arg(long)]
        threads: Option<usize>,
        /// Client i pushes to <prefix>-<i>.
        #[arg(long, default_value = "bench/small")]
        repo_prefix: String,
    },
    /// Create one repository with many tags (one shared manifest), then time tags/list
    /// whole, first page of n, and all pages of n.
    Tags {
        #[command(flatten)]
        common: Common,
        #[command(flatten)]
        load: Load,
        #[arg(long, default_value_t = 5000)]
        tags: usize,
        /// Page size for the paginated listings.
        #[arg(long, default_value_t = 100)]
        page: usize,
        /// Connections used to create the tags.
        #[arg(long, default_value_t = 8)]
        setup_connections: usize,
        #[arg(long, default_value = "bench/tags")]
        repo: String,
    },
    /// Create many repositories (blobs mounted from the first), then time _catalog whole,
    /// first page of n, and all pages of n.
    Catalog {
        #[command(flatten)]
        common: Common,
        #[command(flatten)]
        load: Load,
        #[arg(long, default_value_t = 1000)]
        repos: usize,
        #[arg(long, default_value_t = 100)]
        page: usize,
        #[arg(long, default_value_t = 8)]
        setup_connections: usize,
        #[arg(long, default_value = "bench-catalog")]
        repo_prefix: String,
    },
    /// Wait until GET /v2/ answers (any status).
    Wait {
        #[arg(long, default_value = "http://127.0.0.1:5000")]
        url: String,
        #[arg(long, default_value = "10s", value_parser = parse_duration)]
        timeout: Duration,
    },
    /// Write a store in Distribution's layout, for garbage-collection benchmarks.
    GenStore {
        #[arg(long, default_value_t = 100)]
        repos: usize,
        #[arg(long, default_value_t = 10_000)]
        manifests: usize,
        #[arg(long, default_value_t = 9)]
        layers_per_manifest: usize,
        #[arg(long, default_value_t = 0.3)]
        untagged_fraction: f64,
        #[arg(long, default_value_t = 5000)]
        orphans: usize,
        /// Shared base layers per repository (each manifest's first layer is one).
        #[arg(long, default_value_t = 4)]
        base_layers: usize,
        #[arg(long, default_value_t = 1)]
        seed: u64,
        #[arg(long)]
        threads: Option<usize>,
        #[arg(long)]
        json: bool,
        /// The storage root to fill (Distribution's rootdirectory).
        dir: PathBuf,
    },
}

fn cpus() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}

/// `10s`, `500ms`, `1m`, `2h`, or plain seconds.
fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let (num, unit) = match s.find(|c: char| c.is_ascii_alphabetic()) {
        Some(i) => (&s[..i], &s[i..]),
        None => (s, "s"),
    };
    let n: f64 = num
        .parse()
        .map_err(|_| format!("{s:?} is not a duration like 10s or 500ms"))?;
    let secs = match unit {
        "ms" => n / 1e3,
        "s" => n,
        "m" => n * 60.0,
        "h" => n * 3600.0,
        _ => return Err(format!("{s:?}: unknown unit {unit:?} (ms, s, m, h)")),
    };
    if !(secs.is_finite() && secs >= 0.0) {
        return Err(format!("{s:?} is not a duration"));
    }
    Ok(Duration::from_secs_f64(secs))
}

fn main() {
    match run(Cli::parse()) {
        Ok(code) => std::process::exit(code),
        Err(e) => {
            eprintln!("drydock-bench: {e:#}");
            std::process::exit(1);
        }
    }
}

/// Exit code: 0, or 2 when a scenario ran but some of its requests failed.
fn run(cli: Cli) -> anyhow::Result<i32> {
    if let Some(a) = &cli.authorization {
        client::set_authorization(a)?;
    }
    let (report, json) = match cli.command {
        Command::PushBlob {
            common,
            file,
            chunk_mib,
            repo,
            repeat,
        } => {
            let f = blobfile::ensure(&file.path(), file.size_mib)?;
            (
                scenarios::push_blob(&common.url, &repo, &f, chunk_mib, repeat)?,
                common.json,
            )
        }
        Command::PullBlob {
            common,
            file,
            digest,
            repo,
            no_verify,
            repeat,
        } => {
            let (digest, size) = match digest {
                Some(d) => (d, None),
                None => {
                    let f = blobfile::existing(&file.path())?.with_context(|| {
                        format!(
                            "{} has no digest sidecar: push it first, or give --digest",
                            file.path().display()
                        )
                    })?;
                    (f.digest, Some(f.size))
                }
            };
            let path = format!("/v2/{repo}/blobs/{digest}");
            let expect = size.map(|s| (digest.as_str(), s));
            (
                scenarios::pull("pull-blob", &common.url, &path, expect, !no_verify, repeat)?,
                common.json,
            )
        }
        Command::Get {
            common,
            file,
            no_verify,
            repeat,
        } => {
            let f = match &file {
                Some(p) => Some(
                    blobfile::existing(p)?
                        .with_context(|| format!("{} has no digest sidecar", p.display()))?,
                ),
                None => None,
            };
            let expect = f.as_ref().map(|f| (f.digest.as_str(), f.size));
            let (base, path) = split_url(&common.url)?;
            (
                scenarios::pull("get", &base, &path, expect, !no_verify, repeat)?,
                common.json,
            )
        }
        Command::GenFile { file } => {
            let f = blobfile::ensure(&file.path(), file.size_mib)?;
            println!("{} {} {}", f.path.display(), f.digest, f.size);
            return Ok(0);
        }
        Command::Manifest {
            common,
            load,
            by,
            method,
            repo,
        } => (
            scenarios::manifest(&common.url, &repo, by, method, &load.opts())?,
            common.json,
        ),
        Command::BlobHead { common, load, repo } => (
            scenarios::blob_head(&common.url, &repo, &load.opts())?,
            common.json,
        ),
        Command::SmallImages {
            common,
            clients,
            images,
            layer_kib,
            threads,
            repo_prefix,
        } => (
            scenarios::small_images(
                &common.url,
                &repo_prefix,
                clients.max(1),
                images,
                layer_kib * 1024,
                threads.unwrap_or_else(cpus),
            )?,
            common.json,
        ),
        Command::Tags {
            common,
            load,
            tags,
            page,
            setup_connections,
            repo,
        } => (
            scenarios::tags(
                &common.url,
                &repo,
                tags.max(1),
                page.max(1),
                setup_connections,
                &load.opts(),
            )?,
            common.json,
        ),
        Command::Catalog {
            common,
            load,
            repos,
            page,
            setup_connections,
            repo_prefix,
        } => (
            scenarios::catalog(
                &common.url,
                &repo_prefix,
                repos.max(1),
                page.max(1),
                setup_connections,
                &load.opts(),
            )?,
            common.json,
        ),
        Command::Wait { url, timeout } => {
            let start = Instant::now();
            loop {
                match scenarios::ping(&url) {
                    Ok(_) => return Ok(0),
                    Err(e) if start.elapsed() >= timeout => {
                        bail!("{url} did not answer within {timeout:?}: {e:#}")
                    }
                    Err(_) => std::thread::sleep(Duration::from_millis(50)),
                }
            }
        }
        Command::GenStore {
            repos,
            manifests,
            layers_per_manifest,
            untagged_fraction,
            orphans,
            base_layers,
            seed,
            threads,
            json,
            dir,
        } => {
            let opts = genstore::GenOpts {
                repos,
                manifests,
                layers_per_manifest,
                untagged_fraction,
                orphans,
                base_layers,
                seed,
                threads: threads.unwrap_or_else(cpus),
            };
            let r = genstore::generate(&dir, &opts)?;
            if json {
                println!("{}", serde_json::to_string_pretty(&r)?);
            } else {
                println!(
                    "{}: {} repositories, {} manifests ({} tagged, {} untagged), {} blobs ({} orphans, {:.1} MiB), {} layer links, in {:.1} s",
                    r.dir.display(),
                    r.repositories,
                    r.manifests,
                    r.tagged_manifests,
                    r.untagged_manifests,
                    r.blobs,
                    r.orphan_blobs,
                    r.bytes as f64 / (1u64 << 20) as f64,
                    r.layer_links,
                    r.seconds
                );
                println!(
                    "a correct collector removes {} blobs, or {} when it also removes untagged manifests",
                    r.expected_removed_blobs_plain, r.expected_removed_blobs_untagged
                );
            }
            return Ok(0);
        }
    };
    report.print(json);
    Ok(if report.total_errors() > 0 { 2 } else { 0 })
}

/// `http://host:port/path` → (`http://host:port`, `/path`).
fn split_url(url: &str) -> anyhow::Result<(String, String)> {
    let rest = url
        .strip_prefix("http://")
        .with_context(|| format!("{url}: only http:// URLs are supported"))?;
    Ok(match rest.find('/') {
        Some(i) => (format!("http://{}", &rest[..i]), rest[i..].to_owned()),
        None => (url.to_owned(), "/".to_owned()),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        assert_eq!(parse_duration("10s"), Ok(Duration::from_secs(10)));
        assert_eq!(parse_duration("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_duration("2m"), Ok(Duration::from_secs(120)));
        assert_eq!(parse_duration("3"), Ok(Duration::from_secs(3)));
        assert!(parse_duration("x").is_err());
        assert!(parse_duration("1d").is_err());
    }

    #[test]
    fn urls() {
        assert_eq!(
            split_url("http://127.0.0.1:8080/blob.bin").unwrap(),
            ("http://127.0.0.1:8080".to_owned(), "/blob.bin".to_owned())
        );
    }
}
