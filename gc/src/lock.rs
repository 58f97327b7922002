//! One owner per storage root. A server holds an exclusive `flock` on
//! `<root>/drydock/server.lock` for its whole life and serves its admin API on
//! `<root>/drydock/admin.sock`; the offline `garbage-collect` command takes the same lock,
//! and when it cannot, a server owns the root and is asked to collect instead of being
//! raced. The kernel drops the lock when its holder dies, even by kill -9.
//!
//! A bucket has no `flock`: there a server holds [`BucketLock`], a lock object at the
//! same key taken with a create-only put, renewed with replace-if-unchanged puts before
//! it expires, and marked expired on a clean stop. A holder that died leaves it to expire; a
//! taker replaces an expired one only if it is still the version it read, so of two
//! servers starting at once on an expired lock exactly one wins.

use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};

use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use registry::storage::{Driver, DriverError, PathSpec, PutMode, Version, path_for};

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

/// How long a bucket lock lasts without renewal (renewed every third of it): how long
/// a root stays owned after its server died without a clean stop.
pub const BUCKET_LOCK_TTL: Duration = Duration::from_secs(30);

/// What a bucket's lock object says: who holds it and until when.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct LockRecord {
    /// `<host>:<pid>:<start nanos>`: unique per process start.
    pub owner: String,
    /// Unix seconds after which the lock may be taken over.
    pub expires: u64,
}

impl LockRecord {
    fn fresh(owner: &str, ttl: Duration) -> LockRecord {
        LockRecord {
            owner: owner.to_owned(),
            expires: unix_now() + ttl.as_secs().max(1),
        }
    }

    fn body(&self) -> bytes::Bytes {
        serde_json::to_vec(self).unwrap_or_default().into()
    }
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// One owner per bucket root (see the module docs). Dropping it stops the renewals
/// (the object then expires); [`BucketLock::release`] removes it at once.
#[derive(Debug)]
pub struct BucketLock {
    driver: Arc<dyn Driver>,
    owner: String,
    version: Arc<tokio::sync::Mutex<Version>>,
    renewal: tokio::task::JoinHandle<()>,
}

/// Why a bucket lock was not taken.
#[derive(Debug, thiserror::Error)]
pub enum BucketLockError {
    #[error("held by {} until {} (unix time)", .0.owner, .0.expires)]
    Held(LockRecord),
    #[error("{0}")]
    Storage(#[from] DriverError),
}

impl BucketLock {
    /// Takes the lock for `ttl` and renews it every third of `ttl` on the current
    /// runtime. A renewal that finds the lock taken over or gone calls `lost` (the
    /// server stops: another owns the root now).
    pub async fn acquire(
        driver: Arc<dyn Driver>,
        ttl: Duration,
        lost: impl Fn(String) + Send + Sync + 'static,
    ) -> Result<BucketLock, BucketLockError> {
        let key = path_for(PathSpec::ServerLock);
        let host = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap_or_default();
        let nanos = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos());
        let owner = format!("{}:{}:{nanos}", host.trim(), std::process::id());
        let mine = LockRecord::fresh(&owner, ttl);
        let version = match driver.put(&key, mine.body(), PutMode::Create).await {
            Ok(v) => v,
            Err(DriverError::AlreadyExists(_)) => {
                let (bytes, seen) = driver.get(&key).await?;
                let held: Option<LockRecord> = serde_json::from_slice(&bytes).ok();
                match held {
                    Some(h) if h.expires > unix_now() => return Err(BucketLockError::Held(h)),
                    // Expired (or unreadable): replace exactly the version read.
                    _ => match driver.put(&key, mine.body(), PutMode::Replace(seen)).await {
                        Ok(v) => v,
                        Err(DriverError::PreconditionFailed(_) | DriverError::NotFound(_)) => {
                            let (bytes, _) = driver.get(&key).await?;
                            let h = serde_json::from_slice(&bytes).unwrap_or(LockRecord {
                                owner: "unknown".into(),
                                expires: 0,
                            });
                            return Err(BucketLockError::Held(h));
                        }
                        Err(e) => return Err(e.into()),
                    },
                }
            }
            Err(e) => return Err(e.into()),
        };
        let version = Arc::new(tokio::sync::Mutex::new(version));
        let renewal = {
            let (driver, owner, version) = (driver.clone(), owner.clone(), version.clone());
            tokio::spawn(async move {
                let mut every = tokio::time::interval(ttl / 3);
                every.tick().await;
                loop {
                    every.tick().await;
                    let mut v = version.lock().await;
                    let next = LockRecord::fresh(&owner, ttl).body();
                    match driver.put(&key, next, PutMode::Replace(v.clone())).await {
                        Ok(new) => *v = new,
                        Err(
                            e @ (DriverError::PreconditionFailed(_) | DriverError::NotFound(_)),
                        ) => {
                            lost(format!(
                                "the bucket lock {key} was taken over or removed: {e}"
                            ));
                            return;
                        }
                        // Unreachable for now: try again at the next tick (the lock
                        // lasts `ttl`, three renewals).
                        Err(e) => tracing::warn!(error = %e, "cannot renew the bucket lock"),
                    }
                }
            })
        };
        Ok(BucketLock {
            driver,
            owner,
            version,
            renewal,
        })
    }

    /// This process's owner string (as written in the lock object).
    pub fn owner(&self) -> &str {
        &self.owner
    }

    /// Stops renewing and marks the lock expired, if it is still ours (a conditional
    /// put: a lock another server took is never touched). The object stays, expired,
    /// for the next server to take over: a delete could not be made conditional.
    pub async fn release(self) {
        self.renewal.abort();
        let key = path_for(PathSpec::ServerLock);
        let v = self.version.lock().await;
        let expired = LockRecord {
            owner: self.owner.clone(),
            expires: 0,
        };
        if let Err(e) = self
            .driver
            .put(&key, expired.body(), PutMode::Replace(v.clone()))
            .await
        {
            tracing::warn!(error = %e, "the bucket lock was not released (not ours any more, or unreachable)");
        }
    }
}

impl Drop for BucketLock {
    fn drop(&mut self) {
        self.renewal.abort();
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
