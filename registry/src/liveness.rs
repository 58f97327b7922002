//! Coordination between writers and a collector running in the same process, so a
//! sweep never breaks a push in flight:
//!
//! - A write **pins** the digests it is about to link *before* it checks they exist, and
//!   unpins when its link is written ([`Liveness::pin`] returns a guard).
//! - While a cycle runs, every digest pinned goes into the cycle's **journal**.
//! - Digests a push linked (upload, mount, untagged manifest put) or was told exist
//!   (`HEAD`) stay **pending** for `pending_ttl`: a client pushes blobs first and the
//!   manifest later, and the blobs must survive cycles in between. A manifest put does
//!   not end it early: another client may have been told the same shared layer exists
//!   and not have pushed its manifest yet.
//! - The sweeper [`claims`](Liveness::claim) a digest before deleting anything named by
//!   it; a claim fails for a pinned, journaled or pending digest, under the same lock.
//!   A writer that pins a digest being deleted waits for the deletion to finish and then
//!   finds it absent, so the client uploads it again.
//!
//! The registry only calls `pin` and `pending_*`; the collector drives the rest.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use crate::digest::Digest;

#[derive(Default)]
struct State {
    pins: HashMap<Digest, usize>,
    journal: Option<HashSet<Digest>>,
    deleting: HashSet<Digest>,
    pending: HashMap<Digest, Instant>,
}

/// Shared by the store's writers and the collector of one server.
pub struct Liveness {
    state: Mutex<State>,
    released: tokio::sync::Notify,
    pending_ttl: Duration,
}

impl Default for Liveness {
    fn default() -> Self {
        Liveness::new(Duration::from_secs(3600))
    }
}

impl Liveness {
    pub fn new(pending_ttl: Duration) -> Liveness {
        Liveness {
            state: Mutex::new(State::default()),
            released: tokio::sync::Notify::new(),
            pending_ttl,
        }
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // A panic while holding this lock leaves plain sets behind; keep serving.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Pins `digests` for the lifetime of the returned guard. Waits while any of them is
    /// being deleted by the sweeper.
    pub async fn pin(self: &Arc<Self>, digests: Vec<Digest>) -> PinGuard {
        loop {
            let notified = self.released.notified();
            {
                let mut st = self.lock();
                if digests.iter().all(|d| !st.deleting.contains(d)) {
                    for d in &digests {
                        *st.pins.entry(d.clone()).or_insert(0) += 1;
                    }
                    if let Some(j) = st.journal.as_mut() {
                        j.extend(digests.iter().cloned());
                    }
                    drop(st);
                    return PinGuard {
                        owner: self.clone(),
                        digests,
                    };
                }
            }
            notified.await;
        }
    }

    fn unpin(&self, digests: &[Digest]) {
        let mut st = self.lock();
        for d in digests {
            if let Some(n) = st.pins.get_mut(d) {
                *n -= 1;
                if *n == 0 {
                    st.pins.remove(d);
                }
            }
        }
    }

    /// Marks digests as linked but not yet referenced by any manifest.
    pub fn pending_add(&self, digests: impl IntoIterator<Item = Digest>) {
        let now = Instant::now();
        let mut st = self.lock();
        for d in digests {
            st.pending.insert(d, now);
        }
    }

    /// The pending digests (expired ones are dropped first).
    pub fn pending(&self) -> Vec<Digest> {
        let ttl = self.pending_ttl;
        let mut st = self.lock();
        st.pending.retain(|_, t| t.elapsed() < ttl);
        st.pending.keys().cloned().collect()
    }

    /// Starts a cycle's journal. Digests pinned right now go in first: their writes may
    /// land after the mark has looked, and they unpin before the sweep looks.
    pub fn begin_cycle(&self) {
        let mut st = self.lock();
        let journal = st.pins.keys().cloned().collect();
        st.journal = Some(journal);
    }

    /// Ends the cycle's journal; returns how many digests it recorded.
    pub fn end_cycle(&self) -> usize {
        self.lock().journal.take().map_or(0, |j| j.len())
    }

    /// The sweeper asks to delete what `digest` names. Refused when the digest is pinned,
    /// journaled in this cycle or pending. On success the caller must [`release`] it.
    ///
    /// [`release`]: Liveness::release
    pub fn claim(&self, digest: &Digest) -> bool {
        let mut st = self.lock();
        let busy = st.pins.contains_key(digest)
            || st.journal.as_ref().is_some_and(|j| j.contains(digest))
            || st
                .pending
                .get(digest)
                .is_some_and(|t| t.elapsed() < self.pending_ttl);
        if busy {
            return false;
        }
        st.deleting.insert(digest.clone());
        true
    }

    /// A claim that only pinned digests refuse (the scrubber quarantining corrupt
    /// content: recent or journaled content is no less corrupt). Release it the same way.
    pub fn claim_unpinned(&self, digest: &Digest) -> bool {
        let mut st = self.lock();
        if st.pins.contains_key(digest) {
            return false;
        }
        st.deleting.insert(digest.clone());
        true
    }

    /// Ends a claim; writers waiting on the digest go on.
    pub fn release(&self, digest: &Digest) {
        self.lock().deleting.remove(digest);
        self.released.notify_waiters();
    }
}

/// Unpins on drop.
pub struct PinGuard {
    owner: Arc<Liveness>,
    digests: Vec<Digest>,
}

impl Drop for PinGuard {
    fn drop(&mut self) {
        self.owner.unpin(&self.digests);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn claims_respect_pins_journal_and_pending() {
        let l = Arc::new(Liveness::new(Duration::from_secs(60)));
        let a = Digest::sha256(b"a");
        let b = Digest::sha256(b"b");
        let g = l.pin(vec![a.clone()]).await;
        assert!(!l.claim(&a), "pinned digest claimed");
        drop(g);
        assert!(l.claim(&a));
        l.release(&a);
        l.begin_cycle();
        drop(l.pin(vec![b.clone()]).await);
        assert!(!l.claim(&b), "journaled digest claimed");
        assert_eq!(l.end_cycle(), 1);
        assert!(l.claim(&b));
        l.release(&b);
        l.pending_add([a.clone()]);
        assert!(!l.claim(&a), "pending digest claimed");
        let short = Liveness::new(Duration::from_millis(1));
        short.pending_add([a.clone()]);
        std::thread::sleep(Duration::from_millis(5));
        assert!(short.claim(&a), "expired pending digest still protected");
        assert!(short.pending().is_empty());
        // A pin taken before the cycle began is journaled too.
        let early = l.pin(vec![b.clone()]).await;
        l.begin_cycle();
        drop(early);
        assert!(!l.claim(&b), "digest pinned before the cycle claimed");
        l.end_cycle();
        l.pending_add([]);
        let l = Arc::new(Liveness::new(Duration::ZERO));
        assert!(l.claim(&a));
        // A pin waits for the claim to be released.
        let l2 = l.clone();
        let a2 = a.clone();
        let waiter = tokio::spawn(async move { l2.pin(vec![a2]).await });
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert!(!waiter.is_finished(), "pin did not wait for the deletion");
        l.release(&a);
        let g = tokio::time::timeout(Duration::from_secs(5), waiter)
            .await
            .unwrap()
            .unwrap();
        assert!(!l.claim(&a));
        drop(g);
    }
}
