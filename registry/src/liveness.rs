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
//!   it; the claim is refused for a pinned, journaled or pending digest, and for one
//!   another session has claimed, under the same lock. A writer that pins a digest being deleted waits for the deletion to finish
//!   and then finds it absent, so the client uploads it again.
//!
//! Protection is per digest here; the collector turns it into protection of everything
//! a protected manifest reaches (see `gc::sweep`: a manifest it may not remove keeps its
//! whole closure). The registry only calls `pin` and `pending_add`; removers drive the
//! rest.
//!
//! The protocol is one object-safe interface, [`Liveness`], so that one server keeps it
//! in memory ([`InProcess`]) and replicas keep it in PostgreSQL
//! ([`crate::coordination::Postgres`]); the store and every remover call only the trait.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use async_trait::async_trait;

use crate::Result;
use crate::digest::Digest;
use crate::hooks::{Hooks, Point};

/// The protocol between writers and removers (see the module's documentation).
#[async_trait]
pub trait Liveness: Send + Sync + 'static {
    /// Pins `digests` for the lifetime of the returned guard. Waits while any of them is
    /// claimed by a remover (then the writer's check finds it absent).
    async fn pin(&self, digests: Vec<Digest>) -> Result<PinGuard>;

    /// Marks digests as linked (or announced) but not yet referenced by any manifest;
    /// they stay protected for the pending time.
    async fn pending_add(&self, digests: Vec<Digest>) -> Result<()>;

    /// Opens a removal session: from now until it ends, every digest pinned goes into
    /// its journal; digests pinned right now go in first.
    async fn begin_removal(&self) -> Result<Removal>;

    /// The test-only pause points of this server's writers and removers.
    fn hooks(&self) -> &Hooks;

    /// Whether other servers write the same storage through this protocol (replicas on
    /// one database): a store on it then keeps no cache (see [`crate::cache`]).
    fn shared(&self) -> bool {
        false
    }

    /// Serialises the writes of one tag (`key` names it) with those of every other
    /// server on this protocol, until the returned value is released or dropped; `None`
    /// where the store's own in-process tag locks are all there is.
    async fn lock_tag(&self, key: &str) -> Result<Option<Box<dyn Held>>> {
        let _ = key;
        Ok(None)
    }

    /// Waits until this server may run a collection cycle while no other server on this
    /// protocol runs one (replicas: the database's GC lease), and holds that until the
    /// returned value is released or dropped; `None` where one server's own cycle lock
    /// is all there is. Removers are safe together without it (claims, journals); it
    /// keeps replicas from doing one cycle's work twice at once.
    async fn collection_lease(&self) -> Result<Option<Box<dyn Held>>> {
        Ok(None)
    }

    /// Hands a request for a collection to the server that schedules them for every
    /// server on this protocol (see [`Liveness::scheduler`]); `false` where each server
    /// schedules its own cycles and nothing was sent.
    async fn request_collection(&self) -> Result<bool> {
        Ok(false)
    }

    /// Waits until this server schedules the collections requested on every server on
    /// this protocol (replicas: one at a time, by the database's scheduler lock), and
    /// keeps that role until the returned value is dropped or this server dies; `None`
    /// where each server schedules its own cycles.
    async fn scheduler(&self) -> Result<Option<Box<dyn Scheduler>>> {
        Ok(None)
    }
}

/// The role of the one server that runs the collections every server requests.
#[async_trait]
pub trait Scheduler: Send + Sync {
    /// Waits until a collection is requested on any server (or one waits already) and
    /// returns the count of requests made so far, for [`Scheduler::served`]. Fails when
    /// this server has lost the role (its connection ended).
    async fn next_request(&self) -> Result<i64>;

    /// Records that a cycle that started after [`Scheduler::next_request`] answered
    /// `upto` has ended: the requests up to it are served. A scheduler that dies before
    /// this leaves them to the next one, whose cycle finishes the work.
    async fn served(&self, upto: i64) -> Result<()>;
}

/// One implementation's side of a removal session.
#[async_trait]
pub trait Session: Send + Sync {
    /// Claims `digest`; refused (`None`) when it is pinned or, unless `only_pins`, when
    /// it is journaled in this session or pending.
    async fn claim(&self, digest: &Digest, only_pins: bool) -> Result<Option<Claim>>;
    /// The digests held pending now.
    async fn pending(&self) -> Result<Vec<Digest>>;
    /// How many digests the journal holds now.
    async fn journaled(&self) -> Result<usize>;
    /// The test-only pause points.
    fn hooks(&self) -> &Hooks;
    /// Ends the session now (dropping it ends it too, perhaps a moment later).
    async fn end(self: Box<Self>);
}

/// Something held until released: a claim, or a set of pins. Dropping it releases it
/// too (an implementation that needs a round trip for that does it in the background).
#[async_trait]
pub trait Held: Send + Sync {
    /// Releases it and returns once the release is visible to every other party.
    async fn release(self: Box<Self>);
}

/// A set of pins of one implementation.
#[async_trait]
pub trait Pins: Held {
    /// Pins more digests under the same guard (waits like [`Liveness::pin`]).
    async fn extend(&mut self, digests: Vec<Digest>) -> Result<()>;

    /// Releases them, failing if they did not hold until now: a write whose pins were
    /// dropped by others (its replica found dead) must not be answered as succeeded.
    async fn finish(self: Box<Self>) -> Result<()> {
        self.release().await;
        Ok(())
    }
}

/// One remover's session (a collection, a retention run, a scrub): its journal lives as
/// long as this value.
pub struct Removal {
    session: Box<dyn Session>,
    /// The runtime the session's futures run on, for removers on blocking threads.
    rt: Option<tokio::runtime::Handle>,
}

impl Removal {
    pub fn new(session: Box<dyn Session>) -> Removal {
        Removal {
            session,
            rt: tokio::runtime::Handle::try_current().ok(),
        }
    }

    fn session(&self) -> &dyn Session {
        self.session.as_ref()
    }

    /// Claims `digest` before deleting what it names. Refused (`None`) when the digest is
    /// pinned, claimed by another session, journaled in this session, or pending. Writers that pin the digest wait
    /// until the claim is released.
    pub async fn claim(&self, digest: &Digest) -> Result<Option<Claim>> {
        self.session().claim(digest, false).await
    }

    /// A claim that only pinned (or elsewhere claimed) digests refuse (the scrubber quarantining corrupt
    /// content: recent or announced content is no less corrupt).
    pub async fn claim_unpinned(&self, digest: &Digest) -> Result<Option<Claim>> {
        self.session().claim(digest, true).await
    }

    /// [`Removal::claim`] from a blocking thread (the sweep's workers).
    pub fn claim_blocking(&self, digest: &Digest) -> Result<Option<Claim>> {
        match &self.rt {
            Some(rt) => rt.block_on(self.claim(digest)),
            None => futures::executor::block_on(self.claim(digest)),
        }
    }

    /// The digests held pending now.
    pub async fn pending(&self) -> Result<Vec<Digest>> {
        self.session().pending().await
    }

    /// How many digests the journal holds now.
    pub async fn journaled(&self) -> Result<usize> {
        self.session().journaled().await
    }

    /// The test-only pause points.
    pub fn hooks(&self) -> &Hooks {
        self.session().hooks()
    }

    /// Ends the session, returning once its journal is gone.
    pub async fn end(self) {
        self.session.end().await;
    }
}

/// A remover's claim on a digest; released (writers waiting on it go on) on drop.
pub struct Claim(Option<Box<dyn Held>>);

impl Claim {
    pub fn new(held: Box<dyn Held>) -> Claim {
        Claim(Some(held))
    }

    /// Releases the claim, returning once writers can see it released.
    pub async fn release(mut self) {
        if let Some(h) = self.0.take() {
            h.release().await;
        }
    }
}

/// Unpins on drop.
pub struct PinGuard(Box<dyn Pins>);

impl PinGuard {
    pub fn new(pins: Box<dyn Pins>) -> PinGuard {
        PinGuard(pins)
    }

    /// Pins more digests under the same guard (what the digests it holds reach).
    pub async fn extend(&mut self, digests: Vec<Digest>) -> Result<()> {
        self.0.extend(digests).await
    }

    /// Unpins, returning once removers can see it unpinned.
    pub async fn release(self) {
        self.0.release().await;
    }

    /// Unpins once what the write made reachable is linked (or pending), and fails if
    /// the pins did not hold until now — the fencing check before a write is answered
    /// as succeeded: a replica found dead (its presence lost, in a partition, say) had
    /// its pins dropped by the next removal session, which may have deleted what the
    /// write checked.
    pub async fn finish(self) -> Result<()> {
        self.0.finish().await
    }
}

#[derive(Default)]
struct State {
    pins: HashMap<Digest, usize>,
    /// The journals of the removal sessions open now, by session id.
    journals: HashMap<u64, HashSet<Digest>>,
    next_session: u64,
    /// Digests claimed now: the session holding them and how many claims it holds on
    /// each. Another session's claim is refused (as PostgreSQL's advisory lock refuses
    /// it): two holders would let the first release open the digest to writers while
    /// the second still deletes it.
    deleting: HashMap<Digest, (u64, usize)>,
    pending: HashMap<Digest, Instant>,
}

struct Shared {
    state: Mutex<State>,
    released: tokio::sync::Notify,
    pending_ttl: Duration,
    hooks: Hooks,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        // A panic while holding this lock leaves plain sets behind; keep serving.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    async fn pin(&self, digests: &[Digest]) {
        loop {
            // Created before the check: a release between the check and the wait still
            // wakes it.
            let notified = self.released.notified();
            let busy = {
                let mut st = self.lock();
                let busy = digests
                    .iter()
                    .find(|d| st.deleting.contains_key(*d))
                    .cloned();
                if busy.is_none() {
                    for d in digests {
                        *st.pins.entry(d.clone()).or_insert(0) += 1;
                    }
                    for j in st.journals.values_mut() {
                        j.extend(digests.iter().cloned());
                    }
                }
                busy
            };
            let Some(busy) = busy else {
                return;
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

    fn pending(&self) -> Vec<Digest> {
        let ttl = self.pending_ttl;
        let mut st = self.lock();
        st.pending.retain(|_, t| t.elapsed() < ttl);
        st.pending.keys().cloned().collect()
    }

    fn release(&self, digest: &Digest) {
        let mut st = self.lock();
        if let Some((_, n)) = st.deleting.get_mut(digest) {
            *n -= 1;
            if *n == 0 {
                st.deleting.remove(digest);
            }
        }
        drop(st);
        self.released.notify_waiters();
    }
}

/// The protocol in one process's memory: one server's writers and removers.
pub struct InProcess(Arc<Shared>);

impl Default for InProcess {
    fn default() -> Self {
        InProcess::new(Duration::from_secs(3600))
    }
}

impl InProcess {
    pub fn new(pending_ttl: Duration) -> InProcess {
        InProcess(Arc::new(Shared {
            state: Mutex::new(State::default()),
            released: tokio::sync::Notify::new(),
            pending_ttl,
            hooks: Hooks::default(),
        }))
    }

    /// The pending digests (expired ones are dropped first).
    pub fn pending(&self) -> Vec<Digest> {
        self.0.pending()
    }
}

#[async_trait]
impl Liveness for InProcess {
    async fn pin(&self, digests: Vec<Digest>) -> Result<PinGuard> {
        self.0.pin(&digests).await;
        Ok(PinGuard::new(Box::new(LocalPins {
            owner: self.0.clone(),
            digests,
        })))
    }

    async fn pending_add(&self, digests: Vec<Digest>) -> Result<()> {
        let now = Instant::now();
        let mut st = self.0.lock();
        for d in digests {
            st.pending.insert(d, now);
        }
        Ok(())
    }

    async fn begin_removal(&self) -> Result<Removal> {
        let mut st = self.0.lock();
        let id = st.next_session;
        st.next_session += 1;
        let journal = st.pins.keys().cloned().collect();
        st.journals.insert(id, journal);
        Ok(Removal::new(Box::new(LocalSession {
            owner: self.0.clone(),
            id,
        })))
    }

    fn hooks(&self) -> &Hooks {
        &self.0.hooks
    }
}

struct LocalSession {
    owner: Arc<Shared>,
    id: u64,
}

#[async_trait]
impl Session for LocalSession {
    async fn claim(&self, digest: &Digest, only_pins: bool) -> Result<Option<Claim>> {
        let ttl = self.owner.pending_ttl;
        let mut st = self.owner.lock();
        let busy = st.pins.contains_key(digest)
            || st
                .deleting
                .get(digest)
                .is_some_and(|(session, _)| *session != self.id)
            || (!only_pins
                && (st
                    .journals
                    .get(&self.id)
                    .is_some_and(|j| j.contains(digest))
                    || st.pending.get(digest).is_some_and(|t| t.elapsed() < ttl)));
        if busy {
            return Ok(None);
        }
        st.deleting.entry(digest.clone()).or_insert((self.id, 0)).1 += 1;
        drop(st);
        Ok(Some(Claim::new(Box::new(LocalClaim {
            owner: self.owner.clone(),
            digest: digest.clone(),
        }))))
    }

    async fn pending(&self) -> Result<Vec<Digest>> {
        Ok(self.owner.pending())
    }

    async fn journaled(&self) -> Result<usize> {
        Ok(self
            .owner
            .lock()
            .journals
            .get(&self.id)
            .map_or(0, HashSet::len))
    }

    fn hooks(&self) -> &Hooks {
        &self.owner.hooks
    }

    async fn end(self: Box<Self>) {}
}

impl Drop for LocalSession {
    fn drop(&mut self) {
        self.owner.lock().journals.remove(&self.id);
    }
}

struct LocalClaim {
    owner: Arc<Shared>,
    digest: Digest,
}

#[async_trait]
impl Held for LocalClaim {
    async fn release(self: Box<Self>) {}
}

impl Drop for LocalClaim {
    fn drop(&mut self) {
        self.owner.release(&self.digest);
    }
}

struct LocalPins {
    owner: Arc<Shared>,
    digests: Vec<Digest>,
}

#[async_trait]
impl Held for LocalPins {
    async fn release(self: Box<Self>) {}
}

#[async_trait]
impl Pins for LocalPins {
    async fn extend(&mut self, mut digests: Vec<Digest>) -> Result<()> {
        self.owner.pin(&digests).await;
        self.digests.append(&mut digests);
        Ok(())
    }
}

impl Drop for LocalPins {
    fn drop(&mut self) {
        self.owner.unpin(&self.digests);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn claim(r: &Removal, d: &Digest) -> Option<Claim> {
        r.claim(d).await.unwrap()
    }

    async fn claim_unpinned(r: &Removal, d: &Digest) -> Option<Claim> {
        r.claim_unpinned(d).await.unwrap()
    }

    /// A pin meets a digest one session claimed twice: it waits until both claims end.
    #[tokio::test]
    async fn a_pin_waits_for_every_claim_of_its_session() {
        use futures::FutureExt;
        let l = InProcess::new(Duration::from_secs(60));
        let a = Digest::sha256(b"a");
        let r = l.begin_removal().await.unwrap();
        let c1 = claim(&r, &a).await.unwrap();
        let c2 = claim(&r, &a).await.unwrap();
        drop(c1);
        assert!(
            l.pin(vec![a.clone()]).now_or_never().is_none(),
            "a pin went through while a claim was held"
        );
        drop(c2);
        assert!(
            l.pin(vec![a.clone()]).now_or_never().is_some(),
            "a pin waited with no claim held"
        );
    }

    #[tokio::test]
    async fn claims_respect_pins_journals_and_pending() {
        let l = InProcess::new(Duration::from_secs(60));
        let a = Digest::sha256(b"a");
        let b = Digest::sha256(b"b");
        let r = l.begin_removal().await.unwrap();
        let g = l.pin(vec![a.clone()]).await.unwrap();
        assert!(claim(&r, &a).await.is_none(), "pinned digest claimed");
        drop(g);
        assert!(
            claim(&r, &a).await.is_none(),
            "digest pinned during the session claimed"
        );
        drop(r);
        let r = l.begin_removal().await.unwrap();
        assert!(
            claim(&r, &a).await.is_some(),
            "a new session inherits no journal"
        );
        // Two sessions at once: each journals what is pinned while it is open.
        let r2 = l.begin_removal().await.unwrap();
        drop(l.pin(vec![b.clone()]).await.unwrap());
        assert!(claim(&r, &b).await.is_none() && claim(&r2, &b).await.is_none());
        assert_eq!(
            (r.journaled().await.unwrap(), r2.journaled().await.unwrap()),
            (1, 1)
        );
        drop(r2);
        assert!(
            claim(&r, &b).await.is_none(),
            "one session's end emptied another's journal"
        );
        drop(r);
        l.pending_add(vec![a.clone()]).await.unwrap();
        let r = l.begin_removal().await.unwrap();
        assert!(claim(&r, &a).await.is_none(), "pending digest claimed");
        assert!(claim_unpinned(&r, &a).await.is_some());
        drop(r);
        let short = InProcess::new(Duration::ZERO);
        short.pending_add(vec![a.clone()]).await.unwrap();
        let r = short.begin_removal().await.unwrap();
        assert!(
            claim(&r, &a).await.is_some(),
            "expired pending digest still protected"
        );
        drop(r);
        assert!(short.pending().is_empty());
        // A pin taken before the session began is journaled too.
        let early = l.pin(vec![b.clone()]).await.unwrap();
        let r = l.begin_removal().await.unwrap();
        drop(early);
        assert!(
            claim(&r, &b).await.is_none(),
            "digest pinned before the session claimed"
        );
        // Guards extended with more pins release them all.
        let mut g = short.pin(vec![a.clone()]).await.unwrap();
        g.extend(vec![b.clone()]).await.unwrap();
        let r = short.begin_removal().await.unwrap();
        assert!(claim_unpinned(&r, &b).await.is_none());
        drop(g);
        assert!(claim_unpinned(&r, &a).await.is_some() && claim_unpinned(&r, &b).await.is_some());
        drop(r);
        // A pin waits for the claim to be released.
        let short = Arc::new(short);
        let r = short.begin_removal().await.unwrap();
        let c = claim(&r, &a).await;
        assert!(c.is_some());
        let l2 = short.clone();
        let a2 = a.clone();
        let waiter = tokio::spawn(async move { l2.pin(vec![a2]).await });
        tokio::task::yield_now().await;
        assert!(!waiter.is_finished(), "pin did not wait for the deletion");
        drop(c);
        let g = waiter.await.unwrap().unwrap();
        assert!(claim(&r, &a).await.is_none());
        drop(g);
    }
}
