//! Finalising a format (`PATCH`), with the configured post-process command (e.g. to sign
//! RPMs). The command must never modify a pool blob, which other jobs, branches or images
//! may share (dlrepo's hardlinked files were rewritten in place by such a command and
//! corrupted every other job holding the same file). So it runs on private *copies* in a
//! work folder (`artifacts/.work/<uuid>/`, laid out like the format); afterwards every
//! file is hashed again, and changed or new files are moved into the pool as new entries
//! and their links repointed. A failing command changes nothing.
//!
//! The command runs in a process group of its own, killed when the command exits (on
//! success too) or runs out of time, so nothing it started outlives it in the group.
//! A process that left the group could still hold an output file, so an output is never
//! moved into the pool itself: it is copied into a file of the server's own, hashed as it
//! is copied, and the copy becomes the pool blob.
//!
//! The work folder is a local folder handed to a shell command, so this module reads and
//! writes inside it directly; everything else goes through the storage driver.

use std::collections::{HashMap, HashSet};
use std::io;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, SystemTime};

use serde::Serialize;
use tokio::io::{AsyncRead, AsyncReadExt};

use super::tree::{LinkEntry, Scope};
use super::{FilePath, FormatId, FormatMeta, ScratchDir, rfc3339};
use crate::config::PostProcessConfig;
use crate::digest::Digest;
use crate::hooks::Point;
use crate::storage::paths::Scratch;
use crate::storage::{PathSpec, path_for};
use crate::store::Store;
use crate::{Error, Result};

/// How much of the command's stderr an error reports (its end).
const STDERR_TAIL: usize = 2048;

/// The configured post-process command, ready to run.
#[derive(Debug, Clone)]
pub struct PostProcess {
    pub command: String,
    /// Selects files by their path inside the format; `None` selects all.
    pub filter: Option<regex::Regex>,
    /// A run longer than this is killed; `None`: no limit.
    pub timeout: Option<Duration>,
}

impl PostProcess {
    /// `None` when no command is configured (or the filter does not compile, which
    /// configuration loading reports first).
    pub fn from_config(c: &PostProcessConfig) -> Option<PostProcess> {
        let command = c.command.clone().filter(|s| !s.trim().is_empty())?;
        let filter = match &c.filter {
            None => None,
            Some(f) => match regex::Regex::new(f) {
                Ok(r) => Some(r),
                Err(e) => {
                    tracing::error!(error = %e, "artifacts.post_process.filter is invalid; post-processing disabled");
                    return None;
                }
            },
        };
        let timeout = c.timeout;
        Some(PostProcess {
            command,
            filter,
            timeout: (!timeout.is_zero()).then_some(timeout),
        })
    }

    fn selects(&self, path: &FilePath) -> bool {
        self.filter
            .as_ref()
            .is_none_or(|r| r.is_match(path.as_str()))
    }
}

/// What finalising a format did.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Finalized {
    pub format: String,
    pub dirty: bool,
    /// RFC 3339 time of the finalisation.
    pub finalized: Option<String>,
    /// The post-process command ran.
    pub post_processed: bool,
    /// Files the command changed, added or removed (paths inside the format).
    pub changed: Vec<String>,
    pub added: Vec<String>,
    pub removed: Vec<String>,
}

async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> io::Result<T> + Send + 'static,
) -> Result<T> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(Error::internal)?
        .map_err(Error::internal)
}

/// A file the command changed or created, waiting in the work folder.
struct Change {
    path: FilePath,
    /// The server's own copy of the output.
    file: PathBuf,
    digest: Digest,
    added: bool,
}

impl Store {
    /// Finalises format `f`: runs the post-process command when the format is dirty and
    /// a command is configured, then clears the dirty flag. Runs to completion even if
    /// the client goes away, so links are never left half-repointed by a cancellation.
    pub async fn finalize_format(&self, f: &FormatId) -> Result<Finalized> {
        let store = self.clone();
        let f = f.clone();
        tokio::spawn(async move { store.finalize_detached(&f).await })
            .await
            .map_err(Error::internal)?
    }

    #[tracing::instrument(skip_all, fields(format = %f))]
    async fn finalize_detached(&self, f: &FormatId) -> Result<Finalized> {
        let _format = self.lock_format(f).await;
        if !self
            .fs()?
            .stat(&path_for(PathSpec::ArtifactFormat(f)))
            .await
            .is_ok_and(|i| i.is_dir)
        {
            return Err(Error::NotFound);
        }
        self.check_tag_writable(&f.branch, &f.tag).await?;
        let meta: FormatMeta = self
            .read_json(PathSpec::ArtifactFormatMeta(f))
            .await?
            .unwrap_or_default();
        let mut out = Finalized {
            format: f.to_string(),
            ..Finalized::default()
        };
        if !meta.dirty && meta.finalized.is_some() {
            out.finalized = meta.finalized;
            return Ok(out);
        }
        if let Some(pp) = self.options.post_process.clone() {
            self.post_process(&pp, f, &mut out).await?;
        }
        let now = rfc3339(SystemTime::now());
        let meta = FormatMeta {
            dirty: false,
            finalized: Some(now.clone()),
        };
        let _tree = self.artifacts.tree.read().await;
        if self
            .fs()?
            .exists(&path_for(PathSpec::ArtifactFormat(f)))
            .await?
        {
            self.write_json(PathSpec::ArtifactFormatMeta(f), &meta)
                .await?;
        }
        out.finalized = Some(now);
        tracing::info!(
            post_processed = out.post_processed,
            changed = out.changed.len(),
            added = out.added.len(),
            removed = out.removed.len(),
            "format finalised"
        );
        Ok(out)
    }

    async fn post_process(
        &self,
        pp: &PostProcess,
        f: &FormatId,
        out: &mut Finalized,
    ) -> Result<()> {
        let files: Vec<LinkEntry> = self
            .walk_links(Scope::Format(f))
            .await?
            .into_iter()
            .filter(|e| pp.selects(&e.path))
            .collect();
        if files.is_empty() {
            return Ok(());
        }
        let id = uuid::Uuid::new_v4().simple().to_string();
        let work = ScratchDir::new(self.fs()?.full(&path_for(PathSpec::ArtifactScratchEntry(
            Scratch::Work,
            &id,
        ))));
        let outputs = ScratchDir::new(self.fs()?.full(&path_for(PathSpec::ArtifactScratchEntry(
            Scratch::Work,
            &format!("{id}.out"),
        ))));
        let r = self
            .process_in(pp, f, &files, (work.path(), outputs.path()), out)
            .await;
        work.remove().await;
        outputs.remove().await;
        r
    }

    async fn process_in(
        &self,
        pp: &PostProcess,
        f: &FormatId,
        files: &[LinkEntry],
        (work, outputs): (&Path, &Path),
        out: &mut Finalized,
    ) -> Result<()> {
        // Private copies: a real copy of each pool blob, never a hard link.
        let fs = self.fs()?;
        let copies: Vec<(PathBuf, PathBuf)> = files
            .iter()
            .map(|e| {
                (
                    fs.full(&path_for(PathSpec::BlobData(&e.digest))),
                    work.join(e.path.as_str()),
                )
            })
            .collect();
        let w = work.to_owned();
        blocking(move || {
            std::fs::create_dir_all(&w)?;
            for (src, dst) in copies {
                if let Some(dir) = dst.parent() {
                    std::fs::create_dir_all(dir)?;
                }
                std::fs::copy(&src, &dst)?;
                std::fs::set_permissions(&dst, std::fs::Permissions::from_mode(0o644))?;
            }
            Ok(())
        })
        .await?;

        out.post_processed = true;
        run_command(pp, f, files, work).await?;

        let w = work.to_owned();
        let found = blocking(move || {
            let mut v = Vec::new();
            scan(&w, "", &mut v)?;
            Ok(v)
        })
        .await?;
        let before: HashMap<&FilePath, &Digest> =
            files.iter().map(|e| (&e.path, &e.digest)).collect();
        let mut seen: HashSet<FilePath> = HashSet::new();
        let mut changes = Vec::new();
        for (i, (rel, file)) in found.into_iter().enumerate() {
            let path = match FilePath::parse(&rel) {
                Ok(p) => p,
                Err(e) => {
                    tracing::warn!(format = %f, file = rel, error = %e, "post-process output with an invalid name ignored");
                    continue;
                }
            };
            // What may go into the pool is a copy only the server has held, hashed as
            // it is copied.
            let copy = outputs.join(i.to_string());
            let dst = copy.clone();
            let digest = blocking(move || copy_hashed(&file, &dst)).await?;
            seen.insert(path.clone());
            let added = match before.get(&path) {
                Some(d) if **d == digest => continue,
                Some(_) => false,
                None => true,
            };
            if added {
                self.check_placement(f, &path).await?;
            }
            changes.push(Change {
                path,
                file: copy,
                digest,
                added,
            });
        }
        self.liveness
            .hooks()
            .reach(Point::PostProcessed, None)
            .await;
        let removed: Vec<FilePath> = files
            .iter()
            .filter(|e| !seen.contains(&e.path))
            .map(|e| e.path.clone())
            .collect();

        // Commit: move each new content into the pool, then repoint its link.
        let _tree = self.artifacts.tree.read().await;
        if !self
            .fs()?
            .exists(&path_for(PathSpec::ArtifactFormat(f)))
            .await?
        {
            return Err(Error::NotFound);
        }
        self.check_tag_writable(&f.branch, &f.tag).await?;
        for c in changes {
            let (pin, _) = self.commit_file_pinned(c.file, &c.digest).await?;
            self.write_link(PathSpec::ArtifactLink(f, &c.path), &c.digest)
                .await?;
            self.liveness.pending_add(vec![c.digest.clone()]).await?;
            pin.finish().await?;
            if c.added {
                out.added.push(c.path.to_string());
            } else {
                out.changed.push(c.path.to_string());
            }
        }
        for p in removed {
            self.remove(PathSpec::ArtifactEntry(f, &p)).await?;
            out.removed.push(p.to_string());
        }
        Ok(())
    }
}

/// Runs `sh -c COMMAND sh FILE…` in `work`, with `DRYDOCK_BRANCH`, `DRYDOCK_TAG`,
/// `DRYDOCK_JOB` and `DRYDOCK_FORMAT` set. A non-zero exit is an error carrying the
/// status and the end of stderr.
async fn run_command(
    pp: &PostProcess,
    f: &FormatId,
    files: &[LinkEntry],
    work: &Path,
) -> Result<()> {
    let mut cmd = tokio::process::Command::new("sh");
    cmd.arg("-c")
        .arg(&pp.command)
        .arg("sh")
        .args(files.iter().map(|e| e.path.as_str()))
        .current_dir(work)
        .env("DRYDOCK_BRANCH", f.branch.as_str())
        .env("DRYDOCK_TAG", f.tag.as_str())
        .env("DRYDOCK_JOB", f.job.as_str())
        .env("DRYDOCK_FORMAT", f.format.as_str())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        // Its own process group: a timeout kills whatever the command started too (a
        // background child would otherwise hold the pipes, and the request, open).
        .process_group(0)
        .kill_on_drop(true);
    let mut child = cmd.spawn().map_err(|e| Error::PostProcessFailed {
        status: format!("could not start sh: {e}"),
        stderr: String::new(),
    })?;
    let group = child.id().and_then(|p| i32::try_from(p).ok());
    let (stdout, stderr) = (child.stdout.take(), child.stderr.take());
    let run = async {
        let exited = async {
            let status = child.wait().await;
            // Whatever it started and left running goes with it (and lets go of the
            // pipes). The group outlives its leader only while a member is left, so its
            // id cannot have been given to anyone else.
            kill_group(group);
            status
        };
        let ((out, err), status) =
            tokio::join!(async { tokio::join!(tail(stdout), tail(stderr)) }, exited);
        (out, err, status)
    };
    let ran = match pp.timeout {
        Some(limit) => tokio::time::timeout(limit, run).await.map_err(|_| limit),
        None => Ok(run.await),
    };
    let (out_tail, err_tail, status) = match ran {
        Ok(done) => done,
        Err(limit) => {
            kill_group(group);
            let _ = child.wait().await;
            let status = format!("timed out after {limit:?}; killed with everything it started");
            tracing::warn!(format = %f, %status, "post-process command failed");
            return Err(Error::PostProcessFailed {
                status,
                stderr: String::new(),
            });
        }
    };
    let status = status.map_err(Error::internal)?;
    if !status.success() {
        let status = match (status.code(), status.signal()) {
            (Some(c), _) => format!("exit status {c}"),
            (None, Some(s)) => format!("killed by signal {s}"),
            _ => "unknown exit status".to_owned(),
        };
        tracing::warn!(format = %f, %status, stderr = %err_tail, "post-process command failed");
        return Err(Error::PostProcessFailed {
            status,
            stderr: err_tail,
        });
    }
    tracing::debug!(format = %f, stdout = %out_tail, stderr = %err_tail, "post-process command done");
    Ok(())
}

/// SIGKILL to the process group the command leads.
fn kill_group(group: Option<i32>) {
    if let Some(g) = group {
        // SAFETY: a plain syscall; `-g` names the group the command leads.
        unsafe { libc::kill(-g, libc::SIGKILL) };
    }
}

/// Copies `src` into a new file `dst`, hashing what it copies: the digest is the copy's
/// whatever happens to `src` meanwhile.
fn copy_hashed(src: &Path, dst: &Path) -> io::Result<Digest> {
    use std::io::Write;
    if let Some(dir) = dst.parent() {
        std::fs::create_dir_all(dir)?;
    }
    let mut from = std::fs::File::open(src)?;
    let mut to = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(dst)?;
    to.set_permissions(std::fs::Permissions::from_mode(0o644))?;
    let mut h = crate::digest::Hasher::new(crate::digest::Algorithm::Sha256);
    h.read_all(&mut from, |b| to.write_all(b))?;
    Ok(h.finish())
}

/// Reads a pipe to its end, keeping only the last [`STDERR_TAIL`] bytes.
async fn tail<R: AsyncRead + Unpin>(r: Option<R>) -> String {
    let Some(mut r) = r else {
        return String::new();
    };
    let mut buf = vec![0u8; 8192];
    let mut kept: Vec<u8> = Vec::new();
    loop {
        match r.read(&mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(n) => {
                kept.extend_from_slice(&buf[..n]);
                if kept.len() > 2 * STDERR_TAIL {
                    kept.drain(..kept.len() - STDERR_TAIL);
                }
            }
        }
    }
    if kept.len() > STDERR_TAIL {
        kept.drain(..kept.len() - STDERR_TAIL);
    }
    String::from_utf8_lossy(&kept).into_owned()
}

/// Regular files below `dir` (symbolic links and special files are skipped: the result
/// must be content the command wrote, nothing outside the work folder).
fn scan(dir: &Path, rel: &str, out: &mut Vec<(String, PathBuf)>) -> io::Result<()> {
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        let Some(name) = entry.file_name().to_str().map(str::to_owned) else {
            tracing::warn!(dir = %dir.display(), "post-process output with a non-UTF-8 name ignored");
            continue;
        };
        let child = if rel.is_empty() {
            name
        } else {
            format!("{rel}/{name}")
        };
        let ft = entry.file_type()?;
        if ft.is_dir() {
            scan(&entry.path(), &child, out)?;
        } else if ft.is_file() {
            out.push((child, entry.path()));
        } else {
            tracing::warn!(
                file = child,
                "post-process output that is not a regular file ignored"
            );
        }
    }
    Ok(())
}
