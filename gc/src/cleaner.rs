//! The online collector of one server. [`Cleaner::schedule`] asks for a cycle: it wakes
//! the loop (cancelling the timer's wait); a request that arrives while a cycle runs
//! leaves a permit, so exactly one more cycle starts right after. When a cycle ends with
//! no permit left, the periodic timer is armed again. Triggers: startup, every DELETE
//! (the response never waits), the timer, SIGUSR1 and the admin API. Cycles never
//! overlap: [`Cleaner::run_now`] (admin runs with their own options) takes the same lock.
//!
//! Replicas (a shared [`registry::liveness::Liveness`]): a request goes to the database
//! instead, and one replica at a time, the scheduler, runs the cycles that any replica
//! requested, and its own timer; the others wait for the role and take it over when its
//! holder dies, with the requests it had not served. `run_now` runs on the replica asked;
//! every cycle, scheduled or not, holds the database's GC lease.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use registry::Store;
use registry::api::DeleteListener;
use serde::Serialize;
use tokio::sync::Notify;

use crate::{GcError, Options, Report, collect};

struct Inner {
    store: Store,
    options: Options,
    interval: Duration,
    /// Cycles start by themselves (timer, deletes, signals); false with `gc.enabled:
    /// false`, where only an explicit [`Cleaner::run_now`] collects.
    periodic: bool,
    wake: Notify,
    cycle: tokio::sync::Mutex<()>,
    status: Mutex<Status>,
    observers: Mutex<Vec<Arc<dyn CycleObserver>>>,
}

/// Told about every cycle of a server's collector (metrics, delete notifications).
/// Called on the collector's task: must not block.
pub trait CycleObserver: Send + Sync {
    fn started(&self) {}
    /// `result` is the full report, with the lists of what was removed.
    fn finished(&self, result: &Result<Report, GcError>, took: Duration);
}

/// What `GET /admin/gc` answers.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Status {
    pub running: bool,
    pub cycles: u64,
    pub failures: u64,
    pub last_error: Option<String>,
    pub last: Option<Report>,
}

#[derive(Clone)]
pub struct Cleaner {
    inner: Arc<Inner>,
}

impl Cleaner {
    /// Starts the background loop on the current runtime.
    pub fn start(store: Store, options: Options, interval: Duration) -> Cleaner {
        let c = Cleaner::idle(store, options, interval, true);
        let bg = c.clone();
        tokio::spawn(async move { bg.run_loop().await });
        c
    }

    /// A cleaner without the background loop (`gc.enabled: false`): no timer, and
    /// [`Cleaner::schedule`] does nothing; [`Cleaner::run_now`] still runs a cycle.
    pub fn disabled(store: Store, options: Options, interval: Duration) -> Cleaner {
        Cleaner::idle(store, options, interval, false)
    }

    fn idle(store: Store, options: Options, interval: Duration, periodic: bool) -> Cleaner {
        let inner = Arc::new(Inner {
            store,
            options,
            interval,
            periodic,
            wake: Notify::new(),
            cycle: tokio::sync::Mutex::new(()),
            status: Mutex::new(Status::default()),
            observers: Mutex::new(Vec::new()),
        });
        Cleaner { inner }
    }

    /// Requests a cycle; returns at once. `false` when cycles are disabled
    /// (`gc.enabled: false`) and nothing was scheduled.
    pub fn schedule(&self) -> bool {
        if self.inner.periodic {
            self.inner.wake.notify_one();
        }
        self.inner.periodic
    }

    /// Whether cycles start by themselves (`gc.enabled`).
    pub fn enabled(&self) -> bool {
        self.inner.periodic
    }

    /// Runs a cycle with `options` now (after any running one) and returns its report.
    pub async fn run_now(&self, options: &Options) -> Result<Report, GcError> {
        self.cycle(options).await
    }

    /// Adds an observer of every later cycle.
    pub fn observe(&self, observer: Arc<dyn CycleObserver>) {
        self.observers().push(observer);
    }

    fn observers(&self) -> std::sync::MutexGuard<'_, Vec<Arc<dyn CycleObserver>>> {
        self.inner
            .observers
            .lock()
            .unwrap_or_else(|p| p.into_inner())
    }

    pub fn options(&self) -> &Options {
        &self.inner.options
    }

    pub fn status(&self) -> Status {
        self.lock_status().clone()
    }

    fn lock_status(&self) -> std::sync::MutexGuard<'_, Status> {
        self.inner.status.lock().unwrap_or_else(|p| p.into_inner())
    }

    async fn cycle(&self, options: &Options) -> Result<Report, GcError> {
        let _one_at_a_time = self.inner.cycle.lock().await;
        // Replicas: one cycle at a time across all of them (the database's GC lease).
        let lease = match self.inner.store.liveness().collection_lease().await {
            Ok(l) => l,
            Err(e) => {
                let e = GcError::from(e);
                let mut st = self.lock_status();
                st.failures += 1;
                st.last_error = Some(e.to_string());
                tracing::error!(error = %e, "garbage collection cycle could not take the lease");
                return Err(e);
            }
        };
        self.lock_status().running = true;
        let observers = self.observers().clone();
        observers.iter().for_each(|o| o.started());
        let t0 = std::time::Instant::now();
        let r = collect(
            &self.inner.store,
            options,
            Some(self.inner.store.liveness()),
        )
        .await;
        observers.iter().for_each(|o| o.finished(&r, t0.elapsed()));
        {
            let mut st = self.lock_status();
            st.running = false;
            st.cycles += 1;
            match &r {
                Ok(report) => {
                    st.last = Some(report.summary());
                    st.last_error = None;
                }
                Err(e) => {
                    st.failures += 1;
                    st.last_error = Some(e.to_string());
                    tracing::error!(error = %e, "garbage collection cycle failed");
                }
            }
        }
        // Recorded before the next cycle, on any replica, may start.
        if let Some(l) = lease {
            l.release().await;
        }
        r
    }

    async fn run_loop(self) {
        if self.inner.store.liveness().shared() {
            let forwarder = tokio::spawn(self.clone().forward_requests());
            self.schedule_shared().await;
            // The protocol has no scheduler's role after all: this server schedules.
            forwarder.abort();
        }
        loop {
            tokio::select! {
                _ = self.inner.wake.notified() => {}
                _ = tokio::time::sleep(self.inner.interval) => {}
            }
            let options = self.inner.options.clone();
            let _ = self.cycle(&options).await;
        }
    }

    /// Replicas: sends this server's requests to the database (requests made while
    /// one is on its way leave one permit: they coalesce into one more). A request the
    /// database cannot take is tried again until it can: none is lost to an outage.
    async fn forward_requests(self) {
        loop {
            self.inner.wake.notified().await;
            while let Err(e) = self.inner.store.liveness().request_collection().await {
                tracing::warn!(error = %e, "a garbage collection request could not reach the database; trying again");
                tokio::time::sleep(RETRY).await;
            }
        }
    }

    /// Replicas: waits for the scheduler's role, then runs the cycles every replica
    /// requests and those of its timer until the role is lost; then waits for it
    /// again. Returns only where the store's protocol has no such role.
    async fn schedule_shared(&self) {
        let liveness = self.inner.store.liveness().clone();
        loop {
            let role = match liveness.scheduler().await {
                Ok(Some(role)) => role,
                Ok(None) => return,
                Err(e) => {
                    tracing::warn!(error = %e, "waiting for the garbage collection scheduler's role failed; trying again");
                    tokio::time::sleep(RETRY).await;
                    continue;
                }
            };
            tracing::info!("this replica schedules garbage collection");
            loop {
                let options = self.inner.options.clone();
                tokio::select! {
                    upto = role.next_request() => {
                        let upto = match upto {
                            Ok(n) => n,
                            Err(e) => {
                                tracing::warn!(error = %e, "this replica no longer schedules garbage collection");
                                break;
                            }
                        };
                        let _ = self.cycle(&options).await;
                        if let Err(e) = role.served(upto).await {
                            tracing::warn!(error = %e, "this replica no longer schedules garbage collection");
                            break;
                        }
                    }
                    _ = tokio::time::sleep(self.inner.interval) => {
                        let _ = self.cycle(&options).await;
                    }
                }
            }
        }
    }
}

/// How long a replica waits before it asks the database again for the scheduler's role
/// after an error (the database restarting, say).
const RETRY: Duration = Duration::from_secs(1);

impl DeleteListener for Cleaner {
    fn deleted(&self) {
        let _ = self.schedule();
    }
}
