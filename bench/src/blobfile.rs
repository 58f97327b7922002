//! The big-blob test file: random data written once, hashed while it is written, its
//! digest kept in a `<file>.sha256` sidecar so later runs (and the pull after a push)
//! reuse it without hashing again. Requests send it with sendfile(2) ([`BlobFile::range`]).

use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{Context, bail};
use sha2::{Digest as _, Sha256};

use crate::client::FileRange;

pub struct BlobFile {
    pub path: PathBuf,
    pub size: u64,
    /// `sha256:<hex>`
    pub digest: String,
}

impl BlobFile {
    /// `len` bytes from `offset`, as a request body.
    pub fn range(&self, offset: u64, len: u64) -> FileRange {
        FileRange {
            path: self.path.clone(),
            offset,
            len,
        }
    }

    /// Reads the whole file once, so that a push timed next reads it from the page cache,
    /// as the `openssl dgst` reference does. Cold page cache does not stay: a VM may
    /// reclaim it (this bench machine's `kdamond` pages out page cache untouched for about
    /// 30 s), and a push that reads its file from the disk measures the disk.
    pub fn warm(&self) -> anyhow::Result<()> {
        let mut f = std::fs::File::open(&self.path)
            .with_context(|| format!("open {}", self.path.display()))?;
        let mut buf = vec![0u8; 1 << 20];
        while f
            .read(&mut buf)
            .with_context(|| format!("read {}", self.path.display()))?
            > 0
        {}
        Ok(())
    }
}

pub fn default_path(size_mib: u64) -> PathBuf {
    std::env::temp_dir().join(format!("drydock-bench-{size_mib}MiB.bin"))
}

fn sidecar(path: &Path) -> PathBuf {
    let mut s = path.as_os_str().to_owned();
    s.push(".sha256");
    PathBuf::from(s)
}

/// Reads the sidecar of an existing file, if it is there and describes this file.
pub fn existing(path: &Path) -> anyhow::Result<Option<BlobFile>> {
    let (Ok(meta), Ok(side)) = (std::fs::metadata(path), std::fs::metadata(sidecar(path))) else {
        return Ok(None);
    };
    if side.modified()? < meta.modified()? {
        return Ok(None); // the file changed after it was hashed
    }
    let text = std::fs::read_to_string(sidecar(path))?;
    let mut it = text.split_whitespace();
    let (Some(digest), Some(size)) = (it.next(), it.next()) else {
        return Ok(None);
    };
    let size: u64 = size.parse().context("sidecar size")?;
    if size != meta.len() || !digest.starts_with("sha256:") {
        return Ok(None);
    }
    Ok(Some(BlobFile {
        path: path.to_owned(),
        size,
        digest: digest.to_owned(),
    }))
}

/// The file at `path` with `size_mib` MiB of random data, created (and hashed) unless a
/// matching one is already there.
pub fn ensure(path: &Path, size_mib: u64) -> anyhow::Result<BlobFile> {
    let size = size_mib << 20;
    if let Some(f) = existing(path)?
        && f.size == size
    {
        return Ok(f);
    }
    if size_mib == 0 {
        bail!("--size-mib must be at least 1");
    }
    let start = Instant::now();
    let file =
        std::fs::File::create(path).with_context(|| format!("cannot create {}", path.display()))?;
    let mut out = std::io::BufWriter::with_capacity(1 << 20, file);
    let mut rng = fastrand::Rng::new();
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    for _ in 0..size_mib {
        rng.fill(&mut buf);
        hasher.update(&buf);
        out.write_all(&buf)?;
    }
    out.into_inner()
        .map_err(|e| e.into_error())?
        .sync_all()
        .with_context(|| format!("cannot write {}", path.display()))?;
    let digest = format!("sha256:{}", hex::encode(hasher.finalize()));
    std::fs::write(sidecar(path), format!("{digest} {size}\n"))?;
    eprintln!(
        "created {} ({size_mib} MiB, {digest}) in {:.1} s",
        path.display(),
        start.elapsed().as_secs_f64()
    );
    Ok(BlobFile {
        path: path.to_owned(),
        size,
        digest,
    })
}
