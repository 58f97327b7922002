//! One owner per storage root. A server holds an exclusive `flock` on
//! `<root>/drydock/server.lock` for its whole life and serves its admin API on
//! `<root>/drydock/admin.sock`; the offline `garbage-collect` command takes the same lock,
//! and when it cannot, a server owns the root and is asked to collect instead of being
//! raced. The kernel drops the lock when its holder dies, even by kill -9.

use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};

use registry::storage::{PathSpec, path_for};

pub fn drydock_dir(root: &Path) -> PathBuf {
    root.join(path_for(PathSpec::DrydockDir))
}

/// The admin socket of the server owning `root`.
pub fn admin_socket(root: &Path) -> PathBuf {
    drydock_dir(root).join("admin.sock")
}

/// An exclusive hold on a root; released on drop (or process death).
#[derive(Debug)]
pub struct RootLock {
    _file: File,
    pub path: PathBuf,
}

impl RootLock {
    /// Takes the lock, or `None` when another process holds it. Records this pid.
    pub fn try_acquire(root: &Path) -> io::Result<Option<RootLock>> {
        let dir = drydock_dir(root);
        std::fs::create_dir_all(&dir)?;
        let path = dir.join("server.lock");
        let mut file = OpenOptions::new()
            .create(true)
            .truncate(false)
            .read(true)
            .write(true)
            .open(&path)?;
        // SAFETY: flock on a file descriptor we own; no memory is shared.
        let rc = unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) };
        if rc != 0 {
            let e = io::Error::last_os_error();
            if e.kind() == io::ErrorKind::WouldBlock {
                return Ok(None);
            }
            return Err(e);
        }
        file.set_len(0)?;
        writeln!(file, "{}", std::process::id())?;
        Ok(Some(RootLock { _file: file, path }))
    }

    /// The pid written by the current holder, if readable.
    pub fn holder_pid(root: &Path) -> Option<u32> {
        std::fs::read_to_string(drydock_dir(root).join("server.lock"))
            .ok()?
            .trim()
            .parse()
            .ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn second_holder_is_refused_until_release() {
        let dir = tempfile::tempdir().unwrap();
        let a = RootLock::try_acquire(dir.path()).unwrap();
        assert!(a.is_some());
        assert!(RootLock::try_acquire(dir.path()).unwrap().is_none());
        assert_eq!(RootLock::holder_pid(dir.path()), Some(std::process::id()));
        drop(a);
        assert!(RootLock::try_acquire(dir.path()).unwrap().is_some());
    }
}
