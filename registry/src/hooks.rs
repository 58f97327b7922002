//! Test-only pause points, so a test can drive a writer and a remover through a chosen
//! interleaving instead of hoping chance finds it. A test arms a [`Gate`] at a [`Point`]
//! (optionally for one digest); the next writer or remover to reach that point stops
//! there until the test releases it. Built only with the `test-hooks` feature; without
//! it every hook is an empty inline function and nothing can be armed.

#[cfg(not(feature = "test-hooks"))]
use crate::digest::Digest;

/// Where a writer or a remover can be paused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Point {
    /// A remover has marked (it knows what it will try to remove) and not yet claimed
    /// anything.
    Marked,
    /// A remover holds the claim on a digest and has not yet deleted what it names.
    Claimed,
    /// A write has pinned and checked what it is about to link (or, for a `HEAD`, what
    /// it is about to answer with) and has not yet written its link.
    Checked,
    /// A write found a digest it pins claimed by a remover and is about to wait for the
    /// claim to end.
    PinWaits,
    /// In the database: a write holds its digests' locks and has recorded its pins (and
    /// journal entries) in a transaction it has not committed yet.
    PinRecorded,
    /// An upload batch is about to be written on the writer pool, by a writer that
    /// holds its session's lock.
    Appending,
    /// A request found an upload session locked and is about to wait for its lock.
    SessionWaits,
    /// The uploads task has listed the upload sessions (with their activity) and has
    /// not yet judged any of them again under its lock.
    UploadsListed,
    /// A post-process command has exited and its outputs are hashed; nothing is in the
    /// pool yet.
    PostProcessed,
    /// A tag's conditional removal (retention) has found the tag still what it decided
    /// on, holds the tag's lock, and has not removed it yet.
    TagChecked,
    /// In the database: a tag's write or removal found the tag's lock held (by another
    /// replica) and is about to wait for it.
    TagWaits,
    /// In the database: a collection cycle found the GC lease held (by another replica's
    /// cycle) and is about to wait for it.
    LeaseWaits,
}

#[cfg(feature = "test-hooks")]
mod imp {
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::{Arc, Condvar, Mutex};

    use super::Point;
    use crate::digest::Digest;

    #[derive(Default)]
    struct GateState {
        arrived: bool,
        released: bool,
    }

    /// One armed pause: fires for the first caller that reaches its point (and digest).
    pub struct Gate {
        point: Point,
        digest: Option<Digest>,
        state: Mutex<GateState>,
        cv: Condvar,
        arrived: tokio::sync::Notify,
        released: tokio::sync::Notify,
    }

    impl Gate {
        fn lock(&self) -> std::sync::MutexGuard<'_, GateState> {
            self.state.lock().unwrap_or_else(|p| p.into_inner())
        }

        /// Waits until a caller has reached the point and stopped there.
        pub async fn arrived(&self) {
            loop {
                let n = self.arrived.notified();
                if self.lock().arrived {
                    return;
                }
                n.await;
            }
        }

        /// Whether a caller has reached the point.
        pub fn has_arrived(&self) -> bool {
            self.lock().arrived
        }

        /// Lets the stopped caller (or the next one to arrive) go on.
        pub fn release(&self) {
            self.lock().released = true;
            self.cv.notify_all();
            self.released.notify_waiters();
        }

        fn arrive(&self) {
            self.lock().arrived = true;
            self.arrived.notify_waiters();
        }
    }

    /// The armed gates of one store.
    #[derive(Default)]
    pub struct Hooks {
        armed: AtomicUsize,
        gates: Mutex<Vec<Arc<Gate>>>,
    }

    impl Hooks {
        /// Arms a one-shot pause at `point`, for `digest` only when given.
        pub fn arm(&self, point: Point, digest: Option<Digest>) -> Arc<Gate> {
            let g = Arc::new(Gate {
                point,
                digest,
                state: Mutex::new(GateState::default()),
                cv: Condvar::new(),
                arrived: tokio::sync::Notify::new(),
                released: tokio::sync::Notify::new(),
            });
            self.gates
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .push(g.clone());
            self.armed.fetch_add(1, Ordering::SeqCst);
            g
        }

        fn take(&self, point: Point, digest: Option<&Digest>) -> Option<Arc<Gate>> {
            if self.armed.load(Ordering::SeqCst) == 0 {
                return None;
            }
            let mut gates = self.gates.lock().unwrap_or_else(|p| p.into_inner());
            let i = gates.iter().position(|g| {
                g.point == point && (g.digest.is_none() || g.digest.as_ref() == digest)
            })?;
            self.armed.fetch_sub(1, Ordering::SeqCst);
            Some(gates.swap_remove(i))
        }

        /// A remover's pause (it runs on a blocking thread).
        pub fn reach_blocking(&self, point: Point, digest: Option<&Digest>) {
            let Some(g) = self.take(point, digest) else {
                return;
            };
            g.arrive();
            let mut st = g.lock();
            while !st.released {
                st = g.cv.wait(st).unwrap_or_else(|p| p.into_inner());
            }
        }

        /// A writer's pause (it runs on the async runtime).
        pub async fn reach(&self, point: Point, digest: Option<&Digest>) {
            let Some(g) = self.take(point, digest) else {
                return;
            };
            g.arrive();
            loop {
                let n = g.released.notified();
                if g.lock().released {
                    return;
                }
                n.await;
            }
        }
    }
}

#[cfg(feature = "test-hooks")]
pub use imp::{Gate, Hooks};

/// Without the `test-hooks` feature: nothing can be armed, every hook returns at once.
#[cfg(not(feature = "test-hooks"))]
#[derive(Default)]
pub struct Hooks;

#[cfg(not(feature = "test-hooks"))]
impl Hooks {
    #[inline(always)]
    pub fn reach_blocking(&self, _point: Point, _digest: Option<&Digest>) {}

    #[inline(always)]
    pub async fn reach(&self, _point: Point, _digest: Option<&Digest>) {}
}
