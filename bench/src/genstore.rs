//! `gen-store`: writes a registry store in CNCF Distribution's on-disk layout directly,
//! fast, for garbage-collection benchmarks. Exactly what Distribution writes:
//!
//! ```text
//! docker/registry/v2/blobs/sha256/<hh>/<hex>/data
//! docker/registry/v2/repositories/<name>/_layers/sha256/<hex>/link
//! docker/registry/v2/repositories/<name>/_manifests/revisions/sha256/<hex>/link
//! docker/registry/v2/repositories/<name>/_manifests/tags/<tag>/current/link
//! docker/registry/v2/repositories/<name>/_manifests/tags/<tag>/index/sha256/<hex>/link
//! ```
//!
//! Link files hold `sha256:<hex>` with no newline. Every manifest is a valid OCI image
//! manifest whose config and layers are in the pool with correct digests and sizes, and
//! linked into its repository (as an upload would). Each repository's first layer is one
//! of a few shared base layers; the rest are unique. A fraction of the manifests is
//! untagged (each left in the index of a tagged tag, as a tag that moved leaves it);
//! orphan blobs are in the pool with no link at all. The report says how many blobs a
//! collector should remove with and without untagged-manifest removal.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

use anyhow::{Context, bail};
use serde::Serialize;
use sha2::{Digest as _, Sha256};

use crate::oci::{OCI_CONFIG, OCI_LAYER, OCI_MANIFEST};

pub struct GenOpts {
    pub repos: usize,
    pub manifests: usize,
    pub layers_per_manifest: usize,
    pub untagged_fraction: f64,
    pub orphans: usize,
    pub base_layers: usize,
    pub seed: u64,
    pub threads: usize,
}

#[derive(Debug, Serialize, Default)]
pub struct GenReport {
    pub dir: PathBuf,
    pub repositories: u64,
    pub manifests: u64,
    pub tagged_manifests: u64,
    pub untagged_manifests: u64,
    pub tags: u64,
    /// Distinct blobs in the pool (manifests, configs, layers, orphans).
    pub blobs: u64,
    pub orphan_blobs: u64,
    pub layer_links: u64,
    pub bytes: u64,
    /// Blobs a collector must remove keeping every manifest: the orphans.
    pub expected_removed_blobs_plain: u64,
    /// Blobs a collector must remove when it also removes untagged manifests.
    pub expected_removed_blobs_untagged: u64,
    pub seconds: f64,
}

struct Digest {
    hex: String,
}

impl Digest {
    fn of(data: &[u8]) -> Digest {
        Digest {
            hex: hex::encode(Sha256::digest(data)),
        }
    }
    fn link(&self) -> String {
        format!("sha256:{}", self.hex)
    }
}

struct Writer {
    v2: PathBuf,
    blobs: AtomicU64,
    bytes: AtomicU64,
}

impl Writer {
    /// Writes a pool blob; `false` if it was already there.
    fn blob(&self, d: &Digest, data: &[u8]) -> std::io::Result<bool> {
        let dir = self.v2.join("blobs/sha256").join(&d.hex[..2]).join(&d.hex);
        match std::fs::create_dir(&dir) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => return Ok(false),
            Err(e) => return Err(e),
        }
        std::fs::write(dir.join("data"), data)?;
        self.blobs.fetch_add(1, Ordering::Relaxed);
        self.bytes.fetch_add(data.len() as u64, Ordering::Relaxed);
        Ok(true)
    }
}

/// `<dir>/<hex>/link` holding `sha256:<hex>`.
fn link(dir: &Path, d: &Digest) -> std::io::Result<()> {
    let leaf = dir.join(&d.hex);
    std::fs::create_dir_all(&leaf)?;
    std::fs::write(leaf.join("link"), d.link())
}

fn random_bytes(rng: &mut fastrand::Rng, min: usize, max: usize) -> Vec<u8> {
    let mut v = vec![0u8; rng.usize(min..=max)];
    rng.fill(&mut v);
    v
}

fn config_json(rng: &mut fastrand::Rng, diff_ids: &[String]) -> Vec<u8> {
    serde_json::json!({
        "architecture": "amd64",
        "os": "linux",
        "config": { "Env": [format!("GEN={:016x}{:016x}", rng.u64(..), rng.u64(..))] },
        "rootfs": { "type": "layers", "diff_ids": diff_ids },
    })
    .to_string()
    .into_bytes()
}

fn manifest_json(config: (&Digest, usize), layers: &[(String, usize)]) -> Vec<u8> {
    serde_json::json!({
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "config": { "mediaType": OCI_CONFIG, "digest": config.0.link(), "size": config.1 },
        "layers": layers.iter().map(|(d, s)| serde_json::json!({
            "mediaType": OCI_LAYER, "digest": d, "size": s,
        })).collect::<Vec<_>>(),
    })
    .to_string()
    .into_bytes()
}

#[derive(Default)]
struct RepoOut {
    manifests: u64,
    tagged: u64,
    untagged: u64,
    layer_links: u64,
    removed_untagged: u64,
}

fn repo_name(r: usize) -> String {
    format!("team{:02}/app-{r:03}", r % 10)
}

fn gen_repo(w: &Writer, opts: &GenOpts, r: usize, count: usize) -> anyhow::Result<RepoOut> {
    let mut rng =
        fastrand::Rng::with_seed(opts.seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) ^ r as u64);
    let repo = w.v2.join("repositories").join(repo_name(r));
    let layers_dir = repo.join("_layers/sha256");
    let revisions_dir = repo.join("_manifests/revisions/sha256");
    let tags_dir = repo.join("_manifests/tags");
    for d in [&layers_dir, &revisions_dir, &tags_dir] {
        std::fs::create_dir_all(d)?;
    }
    let mut out = RepoOut::default();
    // Which manifests are untagged: an exact fraction, at random positions.
    let n_untagged = ((count as f64) * opts.untagged_fraction).round() as usize;
    let mut order: Vec<usize> = (0..count).collect();
    rng.shuffle(&mut order);
    let mut untagged = vec![false; count];
    for &i in &order[..n_untagged.min(count)] {
        untagged[i] = true;
    }
    // Shared base layers, and for each blob of this repository whether a tagged
    // manifest reaches it (to predict what removal of untagged manifests frees).
    let bases: Vec<(Digest, usize)> = (0..opts.base_layers.max(1))
        .map(|_| {
            let data = random_bytes(&mut rng, 256, 1024);
            let d = Digest::of(&data);
            w.blob(&d, &data).map(|_| (d, data.len()))
        })
        .collect::<Result<_, _>>()?;
    let mut base_reached_by_tagged = vec![false; bases.len()];
    let mut base_used = vec![false; bases.len()];
    let mut tagged_names: Vec<String> = Vec::new();
    let mut pending_untagged: Vec<Digest> = Vec::new();
    for (m, &is_untagged) in untagged.iter().enumerate() {
        let mut layers: Vec<(String, usize)> = Vec::with_capacity(opts.layers_per_manifest);
        let mut new_blobs = 0u64;
        if opts.layers_per_manifest > 0 {
            let b = rng.usize(..bases.len());
            layers.push((bases[b].0.link(), bases[b].1));
            if !base_used[b] {
                base_used[b] = true;
                link(&layers_dir, &bases[b].0)?;
                out.layer_links += 1;
            }
            if !is_untagged {
                base_reached_by_tagged[b] = true;
            }
        }
        for _ in 1..opts.layers_per_manifest {
            let data = random_bytes(&mut rng, 64, 576);
            let d = Digest::of(&data);
            if w.blob(&d, &data)? {
                new_blobs += 1;
            }
            link(&layers_dir, &d)?;
            out.layer_links += 1;
            layers.push((d.link(), data.len()));
        }
        let diff_ids: Vec<String> = layers.iter().map(|(d, _)| d.clone()).collect();
        let config = config_json(&mut rng, &diff_ids);
        let cd = Digest::of(&config);
        if w.blob(&cd, &config)? {
            new_blobs += 1;
        }
        link(&layers_dir, &cd)?;
        out.layer_links += 1;
        let manifest = manifest_json((&cd, config.len()), &layers);
        let md = Digest::of(&manifest);
        if w.blob(&md, &manifest)? {
            new_blobs += 1;
        }
        link(&revisions_dir, &md)?;
        out.manifests += 1;
        if is_untagged {
            out.untagged += 1;
            out.removed_untagged += new_blobs;
            pending_untagged.push(md);
        } else {
            out.tagged += 1;
            let tag = format!("v{m}");
            let t = tags_dir.join(&tag);
            std::fs::create_dir_all(t.join("current"))?;
            std::fs::write(t.join("current/link"), md.link())?;
            link(&t.join("index/sha256"), &md)?;
            tagged_names.push(tag);
        }
    }
    // An untagged manifest is what a tag leaves behind when it moves: its digest stays
    // in that tag's index.
    if !tagged_names.is_empty() {
        for md in &pending_untagged {
            let tag = &tagged_names[rng.usize(..tagged_names.len())];
            link(&tags_dir.join(tag).join("index/sha256"), md)?;
        }
    }
    out.removed_untagged += base_used
        .iter()
        .zip(&base_reached_by_tagged)
        .filter(|(used, reached)| **used && !**reached)
        .count() as u64;
    // Base layers no manifest used are in the pool with no link: unreferenced too.
    out.removed_untagged += base_used.iter().filter(|u| !**u).count() as u64;
    Ok(out)
}

pub fn generate(dir: &Path, opts: &GenOpts) -> anyhow::Result<GenReport> {
    if !(0.0..=1.0).contains(&opts.untagged_fraction) {
        bail!("--untagged-fraction must be between 0 and 1");
    }
    if opts.repos == 0 {
        bail!("--repos must be at least 1");
    }
    let v2 = dir.join("docker/registry/v2");
    if v2.join("repositories").exists() || v2.join("blobs").exists() {
        bail!(
            "{} already holds a store; give an empty directory",
            dir.display()
        );
    }
    let start = Instant::now();
    for i in 0..=255u8 {
        std::fs::create_dir_all(v2.join("blobs/sha256").join(format!("{i:02x}")))
            .with_context(|| format!("cannot create the store in {}", dir.display()))?;
    }
    std::fs::create_dir_all(v2.join("repositories"))?;
    let w = Writer {
        v2,
        blobs: AtomicU64::new(0),
        bytes: AtomicU64::new(0),
    };
    let threads = opts.threads.clamp(1, opts.repos);
    let results: Vec<anyhow::Result<RepoOut>> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..threads)
            .map(|t| {
                let w = &w;
                s.spawn(move || -> anyhow::Result<RepoOut> {
                    let mut sum = RepoOut::default();
                    for r in (t..opts.repos).step_by(threads) {
                        let count = opts.manifests / opts.repos
                            + usize::from(r < opts.manifests % opts.repos);
                        let o = gen_repo(w, opts, r, count)
                            .with_context(|| format!("repository {}", repo_name(r)))?;
                        sum.manifests += o.manifests;
                        sum.tagged += o.tagged;
                        sum.untagged += o.untagged;
                        sum.layer_links += o.layer_links;
                        sum.removed_untagged += o.removed_untagged;
                    }
                    Ok(sum)
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| {
                h.join()
                    .unwrap_or_else(|_| Err(anyhow::anyhow!("a thread panicked")))
            })
            .collect()
    });
    let mut total = RepoOut::default();
    for r in results {
        let r = r?;
        total.manifests += r.manifests;
        total.tagged += r.tagged;
        total.untagged += r.untagged;
        total.layer_links += r.layer_links;
        total.removed_untagged += r.removed_untagged;
    }
    let mut rng = fastrand::Rng::with_seed(opts.seed ^ 0x0f0f_0f0f);
    let mut orphans = 0u64;
    while orphans < opts.orphans as u64 {
        let data = random_bytes(&mut rng, 64, 2048);
        if w.blob(&Digest::of(&data), &data)? {
            orphans += 1;
        }
    }
    let blobs = w.blobs.load(Ordering::Relaxed);
    let referenced_plain = count_referenced_plain(&w.v2)?;
    Ok(GenReport {
        dir: dir.to_owned(),
        repositories: opts.repos as u64,
        manifests: total.manifests,
        tagged_manifests: total.tagged,
        untagged_manifests: total.untagged,
        tags: total.tagged,
        blobs,
        orphan_blobs: orphans,
        layer_links: total.layer_links,
        bytes: w.bytes.load(Ordering::Relaxed),
        expected_removed_blobs_plain: blobs - referenced_plain,
        expected_removed_blobs_untagged: total.removed_untagged + orphans,
        seconds: start.elapsed().as_secs_f64(),
    })
}

/// Blobs reachable from some manifest revision: every manifest and what it names.
/// Computed from the written store, as a check on the bookkeeping above.
fn count_referenced_plain(v2: &Path) -> anyhow::Result<u64> {
    let mut seen: HashMap<String, ()> = HashMap::new();
    let repos = v2.join("repositories");
    let mut stack = vec![repos];
    while let Some(d) = stack.pop() {
        let rev = d.join("_manifests/revisions/sha256");
        if rev.is_dir() {
            for e in std::fs::read_dir(&rev)? {
                let hex = e?.file_name().to_string_lossy().into_owned();
                let data = std::fs::read(
                    v2.join("blobs/sha256")
                        .join(&hex[..2])
                        .join(&hex)
                        .join("data"),
                )?;
                seen.insert(hex, ());
                let m: serde_json::Value = serde_json::from_slice(&data)?;
                let mut refs = vec![m["config"]["digest"].as_str().unwrap_or("").to_owned()];
                if let Some(ls) = m["layers"].as_array() {
                    refs.extend(
                        ls.iter()
                            .filter_map(|l| l["digest"].as_str().map(str::to_owned)),
                    );
                }
                for r in refs {
                    if let Some(h) = r.strip_prefix("sha256:") {
                        seen.insert(h.to_owned(), ());
                    }
                }
            }
            continue;
        }
        for e in std::fs::read_dir(&d)? {
            let e = e?;
            if e.file_type()?.is_dir() && !e.file_name().to_string_lossy().starts_with('_') {
                stack.push(e.path());
            }
        }
    }
    Ok(seen.len() as u64)
}
