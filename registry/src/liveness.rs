//! Coordination between the writers of one server and its removers (the collector,
//! retention, scrub's quarantine), so that no removal ever takes what a write was
//! acknowledged for:
//!
//! - A write **pins** the digests it is about to link (or, for a `HEAD`, to answer
//!   with) *before* it checks they exist, and unpins once its link is written
//!   ([`Liveness::pin`] returns a guard).
//! - Every remover runs as a [`Removal`] session with its own **journal**: every digest
//!   pinned while the session is open (and those pinned when it began) goes into it.
//! - Digests a push linked (upload, mount, untagged manifest put) or was told exist
//!   (`HEAD`) stay **pending** for `pending_ttl`: a client pushes blobs first and the
//!   manifest later, and the blobs must survive sessions in between. A manifest put does
//!   not end it early: another client may have been told the same shared layer exists
//!   and not have pushed its manifest yet.
//! - A remover [`claims`](Removal::claim) a digest before deleting anything named by
//!   it; the claim is refused for a pinned, journaled or pending digest, under the same
//!   lock. A writer that pins a digest being deleted waits for the deletion to finish
//!   and then finds it absent, so the client uploads it again.
//!
//! Protection is per digest here; the collector turns it into protection of everything
//! a protected manifest reaches (see `gc::sweep`: a manifest it may not remove keeps its
//! whole closure). The registry only calls `pin` and `pending_add`; removers drive the
//! rest.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use crate::digest::Digest;
use crate::hooks::{Hooks, Point};

#[derive(Default)]
struct State {
    pins: HashMap<Digest, usize>,
    /// The journals of the removal sessions open now, by session id.
    journals: HashMap<u64, HashSet<Digest>>,
    next_session: u64,
    deleting: HashSet<Digest>,
    pending: HashMap<Digest, Instant>,
}

/// Shared by the store's writers and the removers of one server.
pub struct Liveness {
    state: Mutex<State>,
    released: tokio::sync::Notify,
    pending_ttl: Duration,
    hooks: Hooks,
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
            hooks: Hooks::default(),
        }
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // A panic while holding this lock leaves plain sets behind; keep serving.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The test-only pause points of this server's writers and removers.
    pub fn hooks(&self) -> &Hooks {
        &self.hooks
    }

    /// Pins `digests` for the lifetime of the returned guard. Waits while any of them is
    /// being deleted by a remover.
    pub async fn pin(self: &Arc<Self>, digests: Vec<Digest>) -> PinGuard {
        loop {
            // Created before the check: a release between the check and the wait still
            // wakes it.
            let notified = self.released.notified();
            let busy = {
                let mut st = self.lock();
                let busy = digests.iter().find(|d| st.deleting.contains(*d)).cloned();
                if busy.is_none() {
                    for d in &digests {
                        *st.pins.entry(d.clone()).or_insert(0) += 1;
                    }
                    for j in st.journals.values_mut() {
                        j.extend(digests.iter().cloned());
                    }
                }
                busy
            };
            let Some(busy) = busy else {
                return PinGuard {
                    owner: self.clone(),
                    digests,
                };
            };
            self.hooks.reach(Point::PinWaits, Some(&busy)).await;
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

    /// Marks digests as linked (or announced) but not yet referenced by any manifest.
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

    /// Opens a removal session: from now until the returned session is dropped, every
    /// digest pinned goes into its journal. Digests pinned right now go in first: their
    /// writes may land after the remover has looked, and unpin before it claims.
    pub fn begin_removal(self: &Arc<Self>) -> Removal {
        let mut st = self.lock();
        let id = st.next_session;
        st.next_session += 1;
        let journal = st.pins.keys().cloned().collect();
        st.journals.insert(id, journal);
        Removal {
            owner: self.clone(),
            id,
        }
    }

    fn claim_if(&self, digest: &Digest, busy: impl FnOnce(&State) -> bool) -> Option<Claim<'_>> {
        let mut st = self.lock();
        if busy(&st) {
            return None;
        }
        st.deleting.insert(digest.clone());
        drop(st);
        Some(Claim {
            owner: self,
            digest: digest.clone(),
        })
    }

    fn release(&self, digest: &Digest) {
        self.lock().deleting.remove(digest);
        self.released.notify_waiters();
    }
}

/// One remover's session (a collection, a retention run, a scrub): its journal lives as
/// long as this value.
pub struct Removal {
    owner: Arc<Liveness>,
    id: u64,
}

impl Removal {
    /// Claims `digest` before deleting what it names. Refused (`None`) when the digest is
    /// pinned, journaled in this session, or pending. Writers that pin the digest wait
    /// until the claim is dropped.
    pub fn claim(&self, digest: &Digest) -> Option<Claim<'_>> {
        let ttl = self.owner.pending_ttl;
        self.owner.claim_if(digest, |st| {
            st.pins.contains_key(digest)
                || st
                    .journals
                    .get(&self.id)
                    .is_some_and(|j| j.contains(digest))
                || st.pending.get(digest).is_some_and(|t| t.elapsed() < ttl)
        })
    }

    /// A claim that only pinned digests refuse (the scrubber quarantining corrupt
    /// content: recent or announced content is no less corrupt).
    pub fn claim_unpinned(&self, digest: &Digest) -> Option<Claim<'_>> {
        self.owner
            .claim_if(digest, |st| st.pins.contains_key(digest))
    }

    /// The digests held pending now (see [`Liveness::pending`]).
    pub fn pending(&self) -> Vec<Digest> {
        self.owner.pending()
    }

    /// How many digests the journal holds now.
    pub fn journaled(&self) -> usize {
        self.owner
            .lock()
            .journals
            .get(&self.id)
            .map_or(0, HashSet::len)
    }

    /// The test-only pause points.
    pub fn hooks(&self) -> &Hooks {
        &self.owner.hooks
    }
}

impl Drop for Removal {
    fn drop(&mut self) {
        self.owner.lock().journals.remove(&self.id);
    }
}

/// A remover's claim on a digest; released (writers waiting on it go on) on drop.
pub struct Claim<'a> {
    owner: &'a Liveness,
    digest: Digest,
}

impl Drop for Claim<'_> {
    fn drop(&mut self) {
        self.owner.release(&self.digest);
    }
}

/// Unpins on drop.
pub struct PinGuard {
    owner: Arc<Liveness>,
    digests: Vec<Digest>,
}

impl PinGuard {
    /// Pins more digests under the same guard (what the digests it holds reach).
    pub async fn extend(&mut self, digests: Vec<Digest>) {
        let mut more = self.owner.pin(digests).await;
        // `more`'s pins now belong to `self`; it drops holding nothing.
        self.digests.append(&mut more.digests);
    }
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
    async fn claims_respect_pins_journals_and_pending() {
        let l = Arc::new(Liveness::new(Duration::from_secs(60)));
        let a = Digest::sha256(b"a");
        let b = Digest::sha256(b"b");
        let r = l.begin_removal();
        let g = l.pin(vec![a.clone()]).await;
        assert!(r.claim(&a).is_none(), "pinned digest claimed");
        drop(g);
        assert!(
            r.claim(&a).is_none(),
            "digest pinned during the session claimed"
        );
        drop(r);
        let r = l.begin_removal();
        assert!(r.claim(&a).is_some(), "a new session inherits no journal");
        // Two sessions at once: each journals what is pinned while it is open.
        let r2 = l.begin_removal();
        drop(l.pin(vec![b.clone()]).await);
        assert!(r.claim(&b).is_none() && r2.claim(&b).is_none());
        assert_eq!((r.journaled(), r2.journaled()), (1, 1));
        drop(r2);
        assert!(
            r.claim(&b).is_none(),
            "one session's end emptied another's journal"
        );
        drop(r);
        l.pending_add([a.clone()]);
        assert!(
            l.begin_removal().claim(&a).is_none(),
            "pending digest claimed"
        );
        assert!(l.begin_removal().claim_unpinned(&a).is_some());
        let short = Arc::new(Liveness::new(Duration::ZERO));
        short.pending_add([a.clone()]);
        assert!(
            short.begin_removal().claim(&a).is_some(),
            "expired pending digest still protected"
        );
        assert!(short.pending().is_empty());
        // A pin taken before the session began is journaled too.
        let early = l.pin(vec![b.clone()]).await;
        let r = l.begin_removal();
        drop(early);
        assert!(
            r.claim(&b).is_none(),
            "digest pinned before the session claimed"
        );
        // Guards extended with more pins release them all.
        let mut g = short.pin(vec![a.clone()]).await;
        g.extend(vec![b.clone()]).await;
        let r = short.begin_removal();
        assert!(r.claim_unpinned(&b).is_none());
        drop(g);
        assert!(r.claim_unpinned(&a).is_some() && r.claim_unpinned(&b).is_some());
        drop(r);
        // A pin waits for the claim to be released.
        let r = short.begin_removal();
        let claim = r.claim(&a);
        assert!(claim.is_some());
        let l2 = short.clone();
        let a2 = a.clone();
        let waiter = tokio::spawn(async move { l2.pin(vec![a2]).await });
        tokio::task::yield_now().await;
        assert!(!waiter.is_finished(), "pin did not wait for the deletion");
        drop(claim);
        let g = waiter.await.unwrap();
        assert!(r.claim(&a).is_none());
        drop(g);
    }
}
