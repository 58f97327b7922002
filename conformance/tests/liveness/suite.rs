//! One suite for every implementation of the liveness protocol (`registry::liveness`):
//! in one process and in PostgreSQL. A test asks for *parties*: the writers and removers
//! of one coordination. In one process every party is the same object; in PostgreSQL
//! each is a replica of its own on one database, so a writer on replica A meets a
//! remover on replica B. Orders are forced with the hooks (`registry::hooks`), never
//! with sleeps or timing.

#![allow(dead_code)]

use std::collections::HashSet;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use registry::Digest;
use registry::hooks::Point;
use registry::liveness::Liveness;

/// What a factory returns: `n` parties.
pub type Parties = Pin<Box<dyn Future<Output = Vec<Arc<dyn Liveness>>> + Send>>;

/// Makes `n` parties on one fresh coordination whose pending time is `ttl`.
pub type Make = fn(usize, Duration) -> Parties;

const HOUR: Duration = Duration::from_secs(3600);

fn d(s: &str) -> Digest {
    Digest::sha256(s.as_bytes())
}

async fn two(make: Make, ttl: Duration) -> (Arc<dyn Liveness>, Arc<dyn Liveness>) {
    let mut p = make(2, ttl).await;
    let b = p.pop().unwrap();
    let a = p.pop().unwrap();
    (a, b)
}

/// A pinned digest is refused to every claim, the scrubber's too.
pub async fn pinned_digest_is_refused(make: Make) {
    let (a, b) = two(make, HOUR).await;
    let x = d("x");
    let r = b.begin_removal().await.unwrap();
    let g = a.pin(vec![x.clone()]).await.unwrap();
    assert!(
        r.claim(&x).await.unwrap().is_none(),
        "pinned digest claimed"
    );
    assert!(
        r.claim_unpinned(&x).await.unwrap().is_none(),
        "pinned digest claimed by the scrubber"
    );
    g.release().await;
    r.end().await;
}

/// A digest pinned while a session is open stays refused to it after the unpin; a
/// session opened later inherits nothing.
pub async fn pins_during_a_session_are_journaled(make: Make) {
    let (a, b) = two(make, HOUR).await;
    let x = d("x");
    let r = b.begin_removal().await.unwrap();
    a.pin(vec![x.clone()]).await.unwrap().release().await;
    assert!(
        r.claim(&x).await.unwrap().is_none(),
        "digest pinned during the session claimed"
    );
    assert_eq!(r.journaled().await.unwrap(), 1);
    r.end().await;
    let r = b.begin_removal().await.unwrap();
    let c = r.claim(&x).await.unwrap();
    assert!(c.is_some(), "a new session inherited a journal");
    c.unwrap().release().await;
    r.end().await;
}

/// A pin taken before the session opened is journaled at the opening: its write may
/// land after the remover looked and unpin before it claims.
pub async fn pins_held_at_the_opening_are_journaled(make: Make) {
    let (a, b) = two(make, HOUR).await;
    let y = d("y");
    let early = a.pin(vec![y.clone()]).await.unwrap();
    let r = b.begin_removal().await.unwrap();
    early.release().await;
    assert!(
        r.claim(&y).await.unwrap().is_none(),
        "digest pinned before the session claimed"
    );
    r.end().await;
}

/// Two sessions at once (on two replicas in the database) each journal what is pinned
/// while they are open, and one's end leaves the other's journal alone.
pub async fn each_session_has_its_own_journal(make: Make) {
    let (a, b) = two(make, HOUR).await;
    let z = d("z");
    let r1 = b.begin_removal().await.unwrap();
    let r2 = a.begin_removal().await.unwrap();
    a.pin(vec![z.clone()]).await.unwrap().release().await;
    assert!(r1.claim(&z).await.unwrap().is_none());
    assert!(r2.claim(&z).await.unwrap().is_none());
    assert_eq!(
        (r1.journaled().await.unwrap(), r2.journaled().await.unwrap()),
        (1, 1)
    );
    r2.end().await;
    assert!(
        r1.claim(&z).await.unwrap().is_none(),
        "one session's end emptied another's journal"
    );
    r1.end().await;
}

/// A digest announced on one party is pending for every remover until its time ends;
/// the scrubber's claim ignores pending.
pub async fn pending_digests_are_refused(make: Make) {
    let (a, b) = two(make, HOUR).await;
    let x = d("x");
    a.pending_add(vec![x.clone()]).await.unwrap();
    let r = b.begin_removal().await.unwrap();
    assert!(r.pending().await.unwrap().contains(&x));
    assert!(
        r.claim(&x).await.unwrap().is_none(),
        "pending digest claimed"
    );
    let c = r.claim_unpinned(&x).await.unwrap();
    assert!(c.is_some(), "the scrubber's claim refused a pending digest");
    c.unwrap().release().await;
    r.end().await;
}

/// With a pending time of zero, an announcement protects nothing once made.
pub async fn expired_pending_protects_nothing(make: Make) {
    let (a, b) = two(make, Duration::ZERO).await;
    let x = d("x");
    a.pending_add(vec![x.clone()]).await.unwrap();
    let r = b.begin_removal().await.unwrap();
    assert!(r.pending().await.unwrap().is_empty());
    let c = r.claim(&x).await.unwrap();
    assert!(c.is_some(), "expired pending digest still protected");
    c.unwrap().release().await;
    r.end().await;
}

/// A guard extended with more pins holds them all and releases them all.
pub async fn extended_guards_release_everything(make: Make) {
    let (a, b) = two(make, Duration::ZERO).await;
    let (x, y) = (d("x"), d("y"));
    let mut g = a.pin(vec![x.clone()]).await.unwrap();
    g.extend(vec![y.clone()]).await.unwrap();
    let r = b.begin_removal().await.unwrap();
    assert!(r.claim_unpinned(&y).await.unwrap().is_none());
    assert!(r.claim_unpinned(&x).await.unwrap().is_none());
    g.release().await;
    for z in [&x, &y] {
        let c = r.claim_unpinned(z).await.unwrap();
        assert!(c.is_some(), "{z} still pinned after the guard's release");
        c.unwrap().release().await;
    }
    r.end().await;
}

/// The race the protocol exists for: a remover claims X and deletes it; a writer on
/// another party pins X meanwhile. The writer must wait for the deletion and then find
/// X absent (so the client uploads it again) — never find it present and then lose it.
pub async fn a_writer_waits_for_a_deletion_and_finds_it_absent(make: Make) {
    let (a, b) = two(make, HOUR).await;
    let x = d("x");
    let stored: Arc<Mutex<HashSet<Digest>>> = Arc::new(Mutex::new(HashSet::from([x.clone()])));
    let r = b.begin_removal().await.unwrap();
    let claim = r
        .claim(&x)
        .await
        .unwrap()
        .expect("an unprotected digest is claimable");
    let gate = a.hooks().arm(Point::PinWaits, Some(x.clone()));
    let mut writer = tokio::spawn({
        let (a, x, stored) = (a.clone(), x.clone(), stored.clone());
        async move {
            let g = a.pin(vec![x.clone()]).await.unwrap();
            let present = stored.lock().unwrap().contains(&x);
            (g, present)
        }
    });
    tokio::select! {
        _ = gate.arrived() => {}
        _ = &mut writer => panic!("the pin returned while its digest was claimed"),
    }
    stored.lock().unwrap().remove(&x);
    claim.release().await;
    gate.release();
    let (g, present) = writer.await.unwrap();
    assert!(!present, "the writer found the deleted digest present");
    // Now pinned: the remover is refused.
    assert!(r.claim(&x).await.unwrap().is_none());
    g.release().await;
    r.end().await;
}

/// Two removal sessions at once (a collection and retention's manifest pass, say) may
/// both want a digest: while one holds its claim the other is refused. Were both
/// granted, the first release would let writers pin the digest and find it present
/// while the second session still deletes it: an acknowledged push would lose it.
pub async fn a_claimed_digest_is_refused_to_another_session(make: Make) {
    let (a, b) = two(make, HOUR).await;
    let x = d("x");
    let r1 = a.begin_removal().await.unwrap();
    let r2 = b.begin_removal().await.unwrap();
    let c1 = r1
        .claim(&x)
        .await
        .unwrap()
        .expect("an unprotected digest is claimable");
    let c2 = r2.claim(&x).await.unwrap();
    let scrub = r2.claim_unpinned(&x).await.unwrap();
    let (granted, scrub_granted) = (c2.is_some(), scrub.is_some());
    for c in [c2, scrub].into_iter().flatten() {
        c.release().await;
    }
    c1.release().await;
    assert!(
        !granted,
        "a digest claimed by one session was claimed by another"
    );
    assert!(
        !scrub_granted,
        "a digest claimed by one session was claimed by another's scrubber"
    );
    // Once released, the other session may claim it.
    let c2 = r2.claim(&x).await.unwrap();
    assert!(
        c2.is_some(),
        "a released claim still refused another session"
    );
    c2.unwrap().release().await;
    r1.end().await;
    r2.end().await;
}

/// One session claiming a digest twice (its sweep removes the layer links of a shared
/// blob in several repositories at once) holds it until both claims end: the first
/// release must not open it to writers or to other sessions while the second still
/// deletes (a HEAD answered 200 for a link deleted right after: the retention soak).
pub async fn a_digest_claimed_twice_in_a_session_is_held_until_both_end(make: Make) {
    let (a, b) = two(make, HOUR).await;
    let x = d("x");
    let r = a.begin_removal().await.unwrap();
    let c1 = r.claim(&x).await.unwrap().expect("first claim");
    let c2 = r
        .claim(&x)
        .await
        .unwrap()
        .expect("the session's second claim");
    c1.release().await;
    let r2 = b.begin_removal().await.unwrap();
    let other = r2.claim(&x).await.unwrap();
    let held = other.is_none();
    if let Some(c) = other {
        c.release().await;
    }
    c2.release().await;
    assert!(held, "the first of two claims released the digest");
    let c = r2.claim(&x).await.unwrap();
    assert!(c.is_some(), "both claims released, the digest still held");
    c.unwrap().release().await;
    r.end().await;
    r2.end().await;
}

/// A released claim lets a later pin through at once, and a remover's claim of a
/// digest no one holds succeeds on any party.
pub async fn released_claims_let_pins_through(make: Make) {
    let (a, b) = two(make, HOUR).await;
    let x = d("x");
    let r = b.begin_removal().await.unwrap();
    r.claim(&x).await.unwrap().unwrap().release().await;
    a.pin(vec![x.clone()]).await.unwrap().release().await;
    r.end().await;
}

/// Every test of the suite, with `make` as the parties' factory.
#[macro_export]
macro_rules! all_liveness_tests {
    ($make:expr) => {
        liveness_suite!($make;
            pinned_digest_is_refused,
            pins_during_a_session_are_journaled,
            pins_held_at_the_opening_are_journaled,
            each_session_has_its_own_journal,
            pending_digests_are_refused,
            expired_pending_protects_nothing,
            extended_guards_release_everything,
            a_writer_waits_for_a_deletion_and_finds_it_absent,
            released_claims_let_pins_through,
            a_claimed_digest_is_refused_to_another_session,
            a_digest_claimed_twice_in_a_session_is_held_until_both_end,
        );
    };
}

#[macro_export]
macro_rules! liveness_suite {
    ($make:expr; $($name:ident),* $(,)?) => {
        $(
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $name() {
                suite::$name($make).await;
            }
        )*
    };
}
