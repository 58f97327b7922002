//! An htpasswd file of bcrypt entries (`htpasswd -B`), re-read when it changes. Other
//! hash kinds (MD5-crypt, SHA-1, crypt, plain) are refused: the file fails to load and
//! the line is named. An unknown user costs one bcrypt against a dummy hash of the same
//! cost as the file's entries, so timing does not tell which users exist.

use std::collections::HashMap;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};

pub struct Entries {
    users: HashMap<String, String>,
    /// A bcrypt hash of nothing anyone knows, at the file's cost.
    dummy: String,
}

/// The file's identity as last loaded (changes when the file is replaced or written).
type Stamp = (u64, u64, i64, i64, u64);

pub struct Htpasswd {
    path: PathBuf,
    entries: RwLock<Arc<Entries>>,
    stamp: Mutex<Option<Stamp>>,
    /// Bumped on every successful reload; cached checks of an older generation are void.
    generation: AtomicU64,
}

impl Entries {
    /// Whether `password` is `user`'s. Runs one bcrypt whether or not the user exists
    /// (blocking: call it off the async runtime).
    pub fn verify(&self, user: &str, password: &str) -> bool {
        match self.users.get(user) {
            Some(h) => bcrypt::verify(password, h).unwrap_or(false),
            None => {
                let _ = bcrypt::verify(password, &self.dummy);
                false
            }
        }
    }
}

fn stamp(path: &Path) -> Option<Stamp> {
    let m = std::fs::metadata(path).ok()?;
    Some((m.dev(), m.ino(), m.mtime(), m.mtime_nsec(), m.len()))
}

fn is_bcrypt(h: &str) -> bool {
    ["$2a$", "$2b$", "$2y$"].iter().any(|p| h.starts_with(p)) && h.len() == 60
}

fn load(path: &Path) -> Result<Entries, String> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    let mut users = HashMap::new();
    let mut cost = None;
    for (i, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let (user, hash) = line
            .split_once(':')
            .ok_or_else(|| format!("{} line {}: not user:hash", path.display(), i + 1))?;
        if !is_bcrypt(hash) {
            return Err(format!(
                "{} line {} ({user}): only bcrypt entries are accepted (htpasswd -B)",
                path.display(),
                i + 1
            ));
        }
        if cost.is_none() {
            cost = hash.get(4..6).and_then(|c| c.parse::<u32>().ok());
        }
        users.insert(user.to_owned(), hash.to_owned());
    }
    let dummy = bcrypt::hash(uuid::Uuid::new_v4().as_bytes(), cost.unwrap_or(10))
        .map_err(|e| format!("bcrypt: {e}"))?;
    Ok(Entries { users, dummy })
}

impl Htpasswd {
    /// Loads the file; an unreadable file or a non-bcrypt entry is an error.
    pub fn open(path: &Path) -> Result<Htpasswd, String> {
        let st = stamp(path);
        let entries = load(path)?;
        Ok(Htpasswd {
            path: path.to_owned(),
            entries: RwLock::new(Arc::new(entries)),
            stamp: Mutex::new(st),
            generation: AtomicU64::new(1),
        })
    }

    pub fn generation(&self) -> u64 {
        self.generation.load(Ordering::Acquire)
    }

    /// Re-reads the file if it changed since it was last loaded. A file that no longer
    /// loads keeps the users it had (logged); returns whether the users changed.
    pub fn reload_if_changed(&self) -> bool {
        let now = stamp(&self.path);
        {
            let Ok(mut last) = self.stamp.lock() else {
                return false;
            };
            if *last == now {
                return false;
            }
            *last = now;
        }
        match load(&self.path) {
            Ok(e) => {
                if let Ok(mut w) = self.entries.write() {
                    *w = Arc::new(e);
                }
                self.generation.fetch_add(1, Ordering::AcqRel);
                tracing::info!(path = %self.path.display(), "htpasswd file reloaded");
                true
            }
            Err(e) => {
                tracing::error!(error = %e, "htpasswd file not reloaded; keeping the users it had");
                false
            }
        }
    }

    /// The users as loaded now.
    pub fn snapshot(&self) -> Arc<Entries> {
        match self.entries.read() {
            Ok(e) => e.clone(),
            Err(p) => p.into_inner().clone(),
        }
    }

    /// Whether `password` is `user`'s (blocking: see [`Entries::verify`]).
    pub fn verify(&self, user: &str, password: &str) -> bool {
        self.snapshot().verify(user, password)
    }

    /// Whether `user` still has an entry (refresh tokens of removed users stop working).
    pub fn has_user(&self, user: &str) -> bool {
        self.entries
            .read()
            .map(|e| e.users.contains_key(user))
            .unwrap_or(false)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bcrypt_only_and_reload() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("htpasswd");
        let h = bcrypt::hash("secret", 4).unwrap();
        std::fs::write(&p, format!("# users\nalice:{h}\n")).unwrap();
        let f = Htpasswd::open(&p).unwrap();
        assert!(f.verify("alice", "secret"));
        assert!(!f.verify("alice", "wrong"));
        assert!(!f.verify("bob", "secret"));
        let g = f.generation();
        assert!(!f.reload_if_changed());
        let h2 = bcrypt::hash("other", 4).unwrap();
        std::fs::write(&p, format!("bob:{h2}\n")).unwrap();
        assert!(f.reload_if_changed());
        assert!(f.generation() > g);
        assert!(f.verify("bob", "other"));
        assert!(!f.verify("alice", "secret"));
        // A broken file keeps the users it had.
        std::fs::write(&p, "carol:{SHA}abc\n").unwrap();
        assert!(!f.reload_if_changed());
        assert!(f.verify("bob", "other"));
        let e = Htpasswd::open(&p).err().unwrap();
        assert!(e.contains("line 1 (carol): only bcrypt"), "{e}");
    }
}
