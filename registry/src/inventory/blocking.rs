//! The collector's view of the store for a caller that is already on a blocking thread:
//! the listings and removals a collection makes, done with plain system calls and no
//! hand-off to another thread per item. A collection over 100 000 blobs makes a few
//! hundred thousand of these calls, and with one thread hop each the hops, not the disk,
//! were most of its time. Removals invalidate the store's caches just as
//! `Store::remove` does.
//!
//! Listings read directory entries only (no `stat`): a folder's children and their
//! types come from `getdents`, and times are read just for the few candidates a sweep is
//! about to remove.

use std::ffi::CString;
use std::io::ErrorKind;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::SystemTime;

use crate::cache::Cache;
use crate::digest::{Algorithm, Digest};
use crate::manifest;
use crate::names::{RepoName, Tag};
use crate::storage::{PathSpec, path_for};

use super::PoolShard;
use crate::{Error, Result};

/// The store on the filesystem driver, as the collector walks and sweeps it from a
/// blocking thread.
#[derive(Clone)]
pub(super) struct Disk {
    root: PathBuf,
    cache: Arc<Cache>,
}

impl Disk {
    pub(super) fn new(root: PathBuf, cache: Arc<Cache>) -> Disk {
        Disk { root, cache }
    }
}

fn io_err(path: &Path, e: std::io::Error) -> Error {
    Error::internal(format!("{}: {e}", path.display()))
}

/// Names of the sub-folders of `dir` (empty when `dir` does not exist).
fn child_dirs(dir: &Path) -> Result<Vec<String>> {
    let rd = match std::fs::read_dir(dir) {
        Ok(rd) => rd,
        Err(e) if e.kind() == ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(io_err(dir, e)),
    };
    let mut out = Vec::new();
    for entry in rd {
        let entry = entry.map_err(|e| io_err(dir, e))?;
        if !entry.file_type().is_ok_and(|t| t.is_dir()) {
            continue;
        }
        if let Ok(name) = entry.file_name().into_string() {
            out.push(name);
        }
    }
    Ok(out)
}

/// Digests named by `<dir>/<alg>/<hex>/` folders, sorted. Only the known algorithms can
/// name one, so their folders are opened by name rather than found by listing `dir`
/// (a tag's history is listed once per tag in a sweep: 7 000 listings fewer on the bench
/// store).
fn digest_dirs(dir: &Path) -> Result<Vec<Digest>> {
    digest_dirs_of(dir, &Algorithm::ALL)
}

/// [`digest_dirs`] under the folders of `algorithms` only.
fn digest_dirs_of(dir: &Path, algorithms: &[Algorithm]) -> Result<Vec<Digest>> {
    let mut out = Vec::new();
    for alg in algorithms {
        let alg = alg.as_str();
        for hex in child_dirs(&dir.join(alg))? {
            if let Ok(d) = format!("{alg}:{hex}").parse::<Digest>() {
                out.push(d);
            }
        }
    }
    out.sort();
    Ok(out)
}

fn modified(path: &Path) -> Option<SystemTime> {
    std::fs::symlink_metadata(path)
        .and_then(|m| m.modified())
        .ok()
}

/// Removes `dir/file` and then `dir`; whatever else is in `dir` goes too. `false` when
/// neither was there. The common case costs two system calls.
fn remove_leaf(dir: &Path, file: &str) -> Result<bool> {
    let file_gone = match std::fs::remove_file(dir.join(file)) {
        Ok(()) => true,
        Err(e) if e.kind() == ErrorKind::NotFound => false,
        Err(e) => return Err(io_err(dir, e)),
    };
    let removed = match std::fs::remove_dir(dir) {
        Ok(()) => Ok(true),
        Err(e) if e.kind() == ErrorKind::NotFound => Ok(false),
        Err(e) => Err(e),
    };
    settle_leaf(|| dir.to_path_buf(), file_gone, removed)
}

/// The end of a leaf removal, once its file is gone (`file_gone`: it was there) and
/// `rmdir` of its folder gave `removed`: a folder that is not empty (a temp file left by
/// a cut write, say) is removed whole. `false` when neither was there. `dir` gives the
/// folder's path, built only when it is needed.
fn settle_leaf(
    dir: impl Fn() -> PathBuf,
    file_gone: bool,
    removed: std::io::Result<bool>,
) -> Result<bool> {
    match removed {
        Ok(true) => Ok(true),
        Ok(false) => Ok(file_gone),
        Err(_) => {
            let dir = dir();
            match std::fs::remove_dir_all(&dir) {
                Ok(()) => Ok(true),
                Err(e) if e.kind() == ErrorKind::NotFound => Ok(file_gone),
                Err(e) => Err(io_err(&dir, e)),
            }
        }
    }
}

/// The folder of a `…/link` path.
fn link_dir(mut link: PathBuf) -> PathBuf {
    link.pop();
    link
}

/// A folder of `<hex>/<file>` leaves (a pool shard, a repository's `_layers/<alg>`),
/// held open so that the sweep's `stat`, `unlink` and `rmdir` name each leaf relative to
/// it. With full paths the kernel walked nine or more components per call, and that
/// walk was a fifth of a collection's CPU on tmpfs.
pub(super) struct DiskDir {
    fd: OwnedFd,
    path: PathBuf,
    file: &'static str,
}

/// `<hex>` or `<hex>/<file>` as a C string, in a buffer on the stack.
struct RelName {
    buf: [u8; 256],
}

impl RelName {
    fn new(hex: &str, file: Option<&str>) -> std::io::Result<RelName> {
        // A plain name: not empty, not `.` or `..`, no '/' or NUL (a hex digest never
        // has one). Anything else could name something outside the open folder.
        let plain =
            |s: &str| !matches!(s, "" | "." | "..") && !s.bytes().any(|c| c == b'/' || c == 0);
        if !plain(hex) || !file.is_none_or(plain) {
            return Err(std::io::Error::from(ErrorKind::InvalidInput));
        }
        let mut buf = [0u8; 256];
        let mut n = 0;
        for part in [Some(hex), file.map(|_| "/"), file].into_iter().flatten() {
            let b = part.as_bytes();
            // Room for the NUL.
            if n + b.len() >= buf.len() {
                return Err(std::io::Error::from(ErrorKind::InvalidInput));
            }
            buf[n..n + b.len()].copy_from_slice(b);
            n += b.len();
        }
        Ok(RelName { buf })
    }

    fn as_ptr(&self) -> *const libc::c_char {
        self.buf.as_ptr().cast()
    }
}

fn last_os_error_unless_missing(rc: libc::c_int) -> std::io::Result<bool> {
    if rc == 0 {
        return Ok(true);
    }
    let e = std::io::Error::last_os_error();
    if e.kind() == ErrorKind::NotFound {
        Ok(false)
    } else {
        Err(e)
    }
}

impl DiskDir {
    /// Opens `path` (`O_PATH`: only a handle for the `*at` calls); `None` when it is not
    /// there.
    fn open(path: PathBuf, file: &'static str) -> Result<Option<DiskDir>> {
        let c = CString::new(path.as_os_str().as_bytes())
            .map_err(|_| Error::internal(format!("{}: NUL in path", path.display())))?;
        // SAFETY: `c` is a valid NUL-terminated string for the duration of the call.
        let fd = unsafe {
            libc::open(
                c.as_ptr(),
                libc::O_PATH | libc::O_DIRECTORY | libc::O_CLOEXEC,
            )
        };
        if fd < 0 {
            let e = std::io::Error::last_os_error();
            return match e.kind() {
                ErrorKind::NotFound => Ok(None),
                _ => Err(io_err(&path, e)),
            };
        }
        // SAFETY: `open` returned a new descriptor that nothing else owns.
        let fd = unsafe { OwnedFd::from_raw_fd(fd) };
        Ok(Some(DiskDir { fd, path, file }))
    }

    /// Size and modification time of `<hex>/<file>`, without following a symlink;
    /// `None` when it is not there.
    fn stat(&self, hex: &str, file: bool) -> std::io::Result<Option<(u64, SystemTime)>> {
        let rel = RelName::new(hex, file.then_some(self.file))?;
        let mut st = std::mem::MaybeUninit::<libc::stat>::uninit();
        // SAFETY: `rel` is NUL-terminated, `st` is a valid out-pointer, and `fstatat`
        // initialises it when it returns 0.
        let rc = unsafe {
            libc::fstatat(
                self.fd.as_raw_fd(),
                rel.as_ptr(),
                st.as_mut_ptr(),
                libc::AT_SYMLINK_NOFOLLOW,
            )
        };
        if !last_os_error_unless_missing(rc)? {
            return Ok(None);
        }
        // SAFETY: rc == 0, so `fstatat` filled `st`.
        let st = unsafe { st.assume_init() };
        let mtime = u64::try_from(st.st_mtime)
            .ok()
            .and_then(|s| {
                let nanos = u32::try_from(st.st_mtime_nsec).unwrap_or(0);
                SystemTime::UNIX_EPOCH.checked_add(std::time::Duration::new(s, nanos))
            })
            .unwrap_or(SystemTime::UNIX_EPOCH);
        Ok(Some((u64::try_from(st.st_size).unwrap_or(0), mtime)))
    }

    /// `unlinkat` of `<hex>/<file>` (or of the folder `<hex>` itself); `false` when it
    /// was not there.
    fn unlink(&self, hex: &str, file: bool) -> std::io::Result<bool> {
        let rel = RelName::new(hex, file.then_some(self.file))?;
        let flags = if file { 0 } else { libc::AT_REMOVEDIR };
        // SAFETY: `rel` is NUL-terminated and the descriptor is open.
        let rc = unsafe { libc::unlinkat(self.fd.as_raw_fd(), rel.as_ptr(), flags) };
        last_os_error_unless_missing(rc)
    }

    /// Size and modification time of a leaf's file; when the file is missing (a removal
    /// cut short, or a write that has made the folder and not yet renamed its file into
    /// it), `None` with the folder's own time; no time at all when that is gone too.
    /// A caller must treat a missing time as new, never as old.
    pub fn meta(&self, hex: &str) -> Result<(Option<u64>, Option<SystemTime>)> {
        let err = |e| io_err(&self.path.join(hex), e);
        if let Some((size, t)) = self.stat(hex, true).map_err(err)? {
            return Ok((Some(size), Some(t)));
        }
        let t = self.stat(hex, false).map_err(err)?.map(|(_, t)| t);
        Ok((None, t))
    }

    /// Modification time of a leaf's file; `None` when it is not there (yet): a caller
    /// must treat that as new, never as old.
    pub fn time(&self, hex: &str) -> Option<SystemTime> {
        match self.stat(hex, true) {
            Ok(Some((_, t))) => Some(t),
            _ => None,
        }
    }

    /// The names of the leaves (`<hex>` folders), sorted.
    pub fn entries(&self) -> Result<Vec<String>> {
        let mut names = child_dirs(&self.path)?;
        names.sort();
        Ok(names)
    }

    /// Removes `<hex>/<file>` and then `<hex>`, as [`remove_leaf`] does, in two calls
    /// relative to the open folder.
    fn remove(&self, hex: &str) -> Result<bool> {
        let dir = || self.path.join(hex);
        let file_gone = self.unlink(hex, true).map_err(|e| io_err(&dir(), e))?;
        settle_leaf(dir, file_gone, self.unlink(hex, false))
    }
}

fn remove_tree(dir: &Path) -> Result<()> {
    match std::fs::remove_dir_all(dir) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == ErrorKind::NotFound => Ok(()),
        Err(e) => Err(io_err(dir, e)),
    }
}

impl Disk {
    fn full(&self, spec: PathSpec<'_>) -> PathBuf {
        self.root.join(path_for(spec))
    }

    /// Every repository folder that holds manifests, layer links or uploads.
    pub fn repository_names(&self) -> Result<Vec<String>> {
        let mut names = Vec::new();
        super::walk_repos(&self.full(PathSpec::RepositoriesRoot), "", &mut names);
        Ok(names)
    }

    /// The manifest revisions of `name`.
    pub fn revisions(&self, name: &RepoName) -> Result<Vec<Digest>> {
        digest_dirs(&self.full(PathSpec::ManifestRevisionsDir(name)))
    }

    /// The layer links of `name`.
    pub fn layer_links(&self, name: &RepoName) -> Result<Vec<Digest>> {
        digest_dirs(&self.full(PathSpec::LayersDir(name)))
    }

    /// The subjects of `name` that have a referrers index.
    pub fn referrer_subjects(&self, name: &RepoName) -> Result<Vec<Digest>> {
        digest_dirs(&self.full(PathSpec::ReferrersRoot(name)))
    }

    /// The referrers indexed for `subject` in `name`.
    pub fn referrers(&self, name: &RepoName, subject: &Digest) -> Result<Vec<Digest>> {
        digest_dirs(&self.full(PathSpec::ReferrersDir(name, subject)))
    }

    /// The tags of `name`, sorted, without reading their links.
    pub fn tag_names(&self, name: &RepoName) -> Result<Vec<Tag>> {
        let mut names = child_dirs(&self.full(PathSpec::TagsDir(name)))?;
        names.sort();
        Ok(names.iter().filter_map(|t| Tag::parse(t).ok()).collect())
    }

    /// The tags of `name` with what each points at (`None` for a tag folder without a
    /// readable current link).
    pub fn tags(&self, name: &RepoName) -> Result<Vec<(Tag, Option<Digest>)>> {
        let mut out = Vec::new();
        for tag in self.tag_names(name)? {
            let link = self.full(PathSpec::TagCurrentLink(name, &tag));
            let target = match std::fs::read(&link) {
                Ok(b) => String::from_utf8_lossy(&b).trim().parse::<Digest>().ok(),
                Err(e) if e.kind() == ErrorKind::NotFound => None,
                Err(e) => return Err(io_err(&link, e)),
            };
            out.push((tag, target));
        }
        Ok(out)
    }

    /// The digests of `algorithms` that a tag's index (its history) holds. A sweep asks
    /// only for the algorithms of the revisions it removes: the folder of any other
    /// (usually `sha512`, usually missing) would be a lookup per tag for nothing.
    pub fn tag_index(
        &self,
        name: &RepoName,
        tag: &Tag,
        algorithms: &[Algorithm],
    ) -> Result<Vec<Digest>> {
        digest_dirs_of(&self.full(PathSpec::TagIndexDir(name, tag)), algorithms)
    }

    /// A manifest's bytes from the pool; `None` when the blob is not there.
    pub fn manifest_bytes(&self, digest: &Digest) -> Result<Option<Vec<u8>>> {
        let p = self.full(PathSpec::BlobData(digest));
        match std::fs::read(&p) {
            Ok(b) => Ok(Some(b)),
            Err(e) if e.kind() == ErrorKind::NotFound => Ok(None),
            Err(e) => Err(io_err(&p, e)),
        }
    }

    /// Modification time of a revision link; `None` when it is not there: gone, or its
    /// folder made by a write that has not yet renamed the link into it. A caller must
    /// treat that as new, never as old.
    pub fn revision_time(&self, name: &RepoName, digest: &Digest) -> Option<SystemTime> {
        modified(&self.full(PathSpec::ManifestRevisionLink(name, digest)))
    }

    /// The pool's shards, sorted.
    pub fn pool_shards(&self) -> Result<Vec<PoolShard>> {
        let root = self.full(PathSpec::BlobsRoot);
        let mut out = Vec::new();
        for alg in child_dirs(&root)? {
            let Some(algorithm) = Algorithm::parse(&alg) else {
                continue;
            };
            for hh in child_dirs(&root.join(&alg))? {
                out.push(PoolShard { algorithm, hh });
            }
        }
        out.sort();
        Ok(out)
    }

    /// A pool shard held open for the sweep; `None` when it is gone.
    pub fn open_shard(&self, shard: &PoolShard) -> Result<Option<DiskDir>> {
        let dir = self.full(PathSpec::BlobShard(shard.algorithm.as_str(), &shard.hh));
        DiskDir::open(dir, "data")
    }

    /// A repository's `_layers/<alg>` folder held open for the sweep; `None` when it is
    /// not there.
    pub fn open_layer_links(&self, name: &RepoName, alg: Algorithm) -> Result<Option<DiskDir>> {
        DiskDir::open(
            self.full(PathSpec::LayersAlgDir(name, alg.as_str())),
            "link",
        )
    }

    /// Removes a blob of the open shard `dir` from the pool; `false` when it was not
    /// there.
    pub fn remove_pool_blob(&self, dir: &DiskDir, digest: &Digest) -> Result<bool> {
        let r = dir.remove(digest.hex());
        self.cache.invalidate_blob(digest);
        r
    }

    /// Removes a layer link of `name` from its open `_layers/<alg>` folder `dir`;
    /// `false` when it was not there.
    pub fn remove_layer_link(
        &self,
        dir: &DiskDir,
        name: &RepoName,
        digest: &Digest,
    ) -> Result<bool> {
        let r = dir.remove(digest.hex());
        if !self.cache.is_off() {
            self.cache
                .invalidate_link(&path_for(PathSpec::LayerLink(name, digest)));
        }
        r
    }

    /// Removes a manifest revision of `name`: the tag-history entries naming it (of
    /// `tags`, the tags whose index holds it), its entry in its subject's referrers
    /// index, its own referrers index, and last its revision link.
    pub fn remove_revision(&self, name: &RepoName, digest: &Digest, tags: &[Tag]) -> Result<()> {
        for tag in tags {
            remove_leaf(
                &link_dir(self.full(PathSpec::TagIndexLink(name, tag, digest))),
                "link",
            )?;
        }
        // Both referrer steps live under `_referrers`: most repositories have none, and
        // one failed lookup spares reading and parsing the manifest.
        let referrers = self.full(PathSpec::ReferrersRoot(name));
        if std::fs::symlink_metadata(&referrers).is_ok() {
            if let Some(body) = self.manifest_bytes(digest)?
                && let Ok(m) = manifest::parse(&body, None)
                && let Some(subject) = &m.subject
            {
                remove_leaf(
                    &link_dir(self.full(PathSpec::ReferrerLink(name, subject, digest))),
                    "link",
                )?;
            }
            remove_tree(&self.full(PathSpec::ReferrersDir(name, digest)))?;
        }
        let r = remove_leaf(
            &self.full(PathSpec::ManifestRevisionDir(name, digest)),
            "link",
        );
        if !self.cache.is_off() {
            self.cache
                .invalidate_link(&path_for(PathSpec::ManifestRevisionLink(name, digest)));
        }
        r.map(|_| ())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn leaf(root: &Path, hex: &str, files: &[&str]) {
        let dir = root.join(hex);
        std::fs::create_dir_all(&dir).unwrap();
        for f in files {
            std::fs::write(dir.join(f), f.as_bytes()).unwrap();
        }
    }

    #[test]
    fn leaf_dir_reads_and_removes_relative_to_the_open_folder() {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path().join("shard");
        leaf(&root, "aa", &["data"]);
        leaf(&root, "bb", &[]); // a removal cut short: the folder without its data
        leaf(&root, "cc", &["data", "data.tmp-1"]); // a cut write left a temp file
        let dir = DiskDir::open(root.clone(), "data").unwrap().unwrap();

        let (size, t) = dir.meta("aa").unwrap();
        assert_eq!(size, Some(4));
        let want = std::fs::metadata(root.join("aa/data"))
            .unwrap()
            .modified()
            .unwrap();
        assert_eq!(t, Some(want));
        assert_eq!(dir.time("aa"), Some(want));
        let (size, t) = dir.meta("bb").unwrap();
        assert_eq!(size, None);
        assert_eq!(
            t,
            Some(
                std::fs::metadata(root.join("bb"))
                    .unwrap()
                    .modified()
                    .unwrap()
            )
        );
        assert_eq!(dir.meta("zz").unwrap(), (None, None));
        assert_eq!(dir.time("zz"), None);

        assert!(dir.remove("aa").unwrap());
        assert!(!root.join("aa").exists());
        assert!(dir.remove("bb").unwrap(), "the empty folder is tidied");
        assert!(!root.join("bb").exists());
        assert!(dir.remove("cc").unwrap());
        assert!(
            !root.join("cc").exists(),
            "a folder with a temp file goes whole"
        );
        assert!(!dir.remove("aa").unwrap(), "nothing left to remove");

        // Names that could leave the folder are refused, not resolved.
        assert!(dir.remove("../shard").is_err());
        assert!(dir.meta("").is_err());
        assert!(root.exists());
        assert!(
            DiskDir::open(tmp.path().join("missing"), "data")
                .unwrap()
                .is_none()
        );
    }
}
