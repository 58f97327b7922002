//! The run queue: one per process, shared by the scheduler loop, the admin API and
//! the CLI.

use std::collections::BTreeSet;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use registry::Store;
use registry::config::Config;
use registry::storage::{DriverError, PathSpec, PutMode, path_for};
use serde::Serialize;
use tokio::sync::Semaphore;

use super::{Outcome, Record, Task, last_record, schedule_period, tasks};
use crate::cleaner::Cleaner;

#[derive(Debug, Default, Clone, Serialize)]
pub struct Counters {
    pub queued: u64,
    pub running: u64,
    pub finished: u64,
    pub failed: u64,
    pub skipped: u64,
    pub killed: u64,
}

/// What `GET /admin/maintenance` answers.
#[derive(Debug, Clone, Serialize)]
pub struct Status {
    pub counters: Counters,
    pub running: Vec<Task>,
    pub paused_for_load: bool,
    pub load_average: Option<f64>,
    pub last: Vec<Record>,
}

struct Inner {
    store: Store,
    config: Config,
    cleaner: Option<Cleaner>,
    running: Mutex<BTreeSet<Task>>,
    slots: Semaphore,
    intensive: Semaphore,
    counters: Mutex<Counters>,
    paused: std::sync::atomic::AtomicBool,
    deletes_since_gc: AtomicU64,
    load: LoadProbe,
    /// When this root's schedule started (seconds since the epoch), once this process
    /// began it ([`Maintenance::begin_schedule`]); else it is read from the store. A
    /// task that never ran is first due one period after it; without one (a CLI on a
    /// root no server ever scheduled) a task that never ran is due now.
    anchor: Mutex<Option<f64>>,
    metrics: std::sync::OnceLock<Arc<registry::metrics::Metrics>>,
    notifier: std::sync::OnceLock<Arc<registry::notify::Notifier>>,
}

/// Where the load average comes from (`/proc/loadavg`; tests drive it themselves).
pub type LoadProbe = Arc<dyn Fn() -> Option<f64> + Send + Sync>;

/// The maintenance run queue of one process.
#[derive(Clone)]
pub struct Maintenance {
    inner: Arc<Inner>,
}

fn now_rfc3339(t: SystemTime) -> String {
    time::OffsetDateTime::from(t)
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_default()
}

fn unix_now() -> f64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or(0.0)
}

/// The schedule's start recorded in the store behind `driver`.
async fn stored_anchor(driver: &dyn registry::storage::Driver) -> Option<f64> {
    let (bytes, _) = driver
        .get(&path_for(PathSpec::MaintenanceAnchor))
        .await
        .ok()?;
    String::from_utf8_lossy(&bytes).trim().parse().ok()
}

/// The 1-minute load average.
pub fn load_average() -> Option<f64> {
    std::fs::read_to_string("/proc/loadavg")
        .ok()?
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

impl Maintenance {
    /// A run queue over `store`. With a `cleaner` (in the server) the gc task runs
    /// through it, so it never overlaps the online collector.
    pub fn new(store: Store, config: Config, cleaner: Option<Cleaner>) -> Maintenance {
        Maintenance::build(store, config, cleaner, Arc::new(load_average))
    }

    /// The same queue reading the load average from `probe` instead of `/proc/loadavg`.
    pub fn with_load_probe(self, probe: LoadProbe) -> Maintenance {
        let i = &self.inner;
        Maintenance::build(i.store.clone(), i.config.clone(), i.cleaner.clone(), probe)
    }

    fn build(
        store: Store,
        config: Config,
        cleaner: Option<Cleaner>,
        load: LoadProbe,
    ) -> Maintenance {
        let max = config.maintenance.max_parallel.max(1);
        Maintenance {
            inner: Arc::new(Inner {
                store,
                config,
                cleaner,
                running: Mutex::new(BTreeSet::new()),
                slots: Semaphore::new(max),
                intensive: Semaphore::new(1),
                counters: Mutex::new(Counters::default()),
                paused: std::sync::atomic::AtomicBool::new(false),
                deletes_since_gc: AtomicU64::new(0),
                load,
                anchor: Mutex::new(None),
                metrics: std::sync::OnceLock::new(),
                notifier: std::sync::OnceLock::new(),
            }),
        }
    }

    fn counters(&self) -> std::sync::MutexGuard<'_, Counters> {
        self.inner
            .counters
            .lock()
            .unwrap_or_else(|p| p.into_inner())
    }

    fn running(&self) -> std::sync::MutexGuard<'_, BTreeSet<Task>> {
        self.inner.running.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Records every later run in `metrics` (runs by outcome, duration, running).
    pub fn set_metrics(&self, metrics: Arc<registry::metrics::Metrics>) {
        let _ = self.inner.metrics.set(metrics);
    }

    /// Sends a delete event for every tag and manifest retention removes.
    pub fn set_notifier(&self, notifier: Arc<registry::notify::Notifier>) {
        let _ = self.inner.notifier.set(notifier);
    }

    /// A delete happened (the gc task's `--auto` threshold counts them).
    pub fn note_delete(&self) {
        self.inner.deletes_since_gc.fetch_add(1, Ordering::Relaxed);
    }

    pub async fn status(&self) -> Status {
        let last = self.last_records().await;
        Status {
            counters: self.counters().clone(),
            running: self.running().iter().copied().collect(),
            paused_for_load: self.inner.paused.load(Ordering::Relaxed),
            load_average: (self.inner.load)(),
            last: last.into_iter().flatten().collect(),
        }
    }

    /// Each task's last record (in [`Task::ALL`]'s order), from the store.
    async fn last_records(&self) -> Vec<Option<Record>> {
        let driver = self.inner.store.driver().as_ref();
        futures::future::join_all(Task::ALL.map(|t| last_record(driver, t))).await
    }

    /// When this root's schedule began: as this process began it, else as the store
    /// says.
    async fn anchor(&self) -> Option<f64> {
        let mine = *self.inner.anchor.lock().unwrap_or_else(|p| p.into_inner());
        match mine {
            Some(a) => Some(a),
            None => stored_anchor(self.inner.store.driver().as_ref()).await,
        }
    }

    /// Enabled tasks whose schedule has come (never run, or last started one period
    /// ago). `schedule` keeps only tasks configured with that schedule name; `auto`
    /// also requires the task's threshold (gc: `min_deletes` deletes since its last
    /// run, in a server that counts them).
    pub async fn due(&self, schedule: Option<&str>, auto: bool) -> Vec<Task> {
        let anchor = self.anchor().await;
        let last = self.last_records().await;
        let now = unix_now();
        Task::ALL
            .into_iter()
            .zip(last)
            .filter(|(t, last)| {
                let c = t.config(&self.inner.config);
                if !t.enabled(&self.inner.config) {
                    return false;
                }
                if let Some(s) = schedule {
                    return c.schedule == s;
                }
                let Ok(period) = schedule_period(&c.schedule) else {
                    return false;
                };
                let since = last.as_ref().map(|r| r.started_unix).or(anchor);
                let due = since.is_none_or(|s| now - s >= period.as_secs_f64());
                let threshold = match t {
                    Task::Gc if auto && self.inner.cleaner.is_some() => {
                        self.inner.deletes_since_gc.load(Ordering::Relaxed) >= c.min_deletes
                    }
                    _ => true,
                };
                due && threshold
            })
            .map(|(t, _)| t)
            .collect()
    }

    /// The tasks a run of "every task" runs: the enabled ones.
    pub fn enabled_tasks(&self) -> Vec<Task> {
        Task::ALL
            .into_iter()
            .filter(|t| t.enabled(&self.inner.config))
            .collect()
    }

    /// Runs `tasks` (concurrently, within the queue's limits) and returns their records.
    pub async fn run(&self, tasks: Vec<Task>, trigger: &str) -> Vec<Record> {
        self.run_with(tasks, trigger, false).await
    }

    /// Like [`Maintenance::run`]; with `dry_run` every task only reports what it would
    /// do, and no last-run record is written.
    pub async fn run_with(&self, tasks: Vec<Task>, trigger: &str, dry_run: bool) -> Vec<Record> {
        let runs = tasks.into_iter().map(|t| {
            let me = self.clone();
            let trigger = trigger.to_owned();
            async move { me.run_one(t, &trigger, dry_run).await }
        });
        futures::future::join_all(runs).await
    }

    async fn wait_for_load(&self) {
        let (pause, resume) = (
            self.inner.config.maintenance.load_pause,
            self.inner.config.maintenance.load_resume,
        );
        if pause <= 0.0 {
            return;
        }
        let load = &self.inner.load;
        if load().is_none_or(|l| l <= pause) {
            return;
        }
        self.inner.paused.store(true, Ordering::Relaxed);
        let shown = || load().map_or_else(|| "unknown".to_owned(), |l| format!("{l:.2}"));
        tracing::info!(load = %shown(), pause, resume, "maintenance paused: load average above trigger");
        while load().is_some_and(|l| l > resume) {
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        self.inner.paused.store(false, Ordering::Relaxed);
        tracing::info!(load = %shown(), "maintenance resumed");
    }

    async fn run_one(&self, task: Task, trigger: &str, dry_run: bool) -> Record {
        let started = SystemTime::now();
        let skipped = |message: &str| Record {
            task,
            trigger: trigger.to_owned(),
            started_at: now_rfc3339(started),
            ended_at: now_rfc3339(started),
            started_unix: started
                .duration_since(SystemTime::UNIX_EPOCH)
                .map(|d| d.as_secs_f64())
                .unwrap_or(0.0),
            duration_ms: 0.0,
            outcome: Outcome::Skipped,
            message: message.to_owned(),
            summary: serde_json::Value::Null,
        };
        if !self.running().insert(task) {
            self.counters().skipped += 1;
            if let Some(m) = self.inner.metrics.get() {
                m.maintenance
                    .runs
                    .get_or_create(&registry::metrics::TaskOutcomeLabels {
                        task: task.name(),
                        outcome: Outcome::Skipped.name(),
                    })
                    .inc();
            }
            tracing::info!(
                task = task.name(),
                trigger,
                "maintenance skipped: a run is in progress"
            );
            return skipped("a run of this task is in progress");
        }
        /// Takes the task off the running set however the run ends.
        struct Done<'a>(&'a Maintenance, Task);
        impl Drop for Done<'_> {
            fn drop(&mut self) {
                self.0.running().remove(&self.1);
            }
        }
        let _done = Done(self, task);

        self.counters().queued += 1;
        let slot = self.inner.slots.acquire().await;
        let heavy = if task.intensive() {
            Some(self.inner.intensive.acquire().await)
        } else {
            None
        };
        self.wait_for_load().await;
        {
            let mut c = self.counters();
            c.queued -= 1;
            c.running += 1;
        }
        let labels = registry::metrics::TaskLabels { task: task.name() };
        if let Some(m) = self.inner.metrics.get() {
            m.maintenance.running.get_or_create(&labels).inc();
        }
        let started = SystemTime::now();
        let t0 = Instant::now();
        let limit = task.config(&self.inner.config).time_limit;
        let result = tokio::time::timeout(limit, self.execute(task, dry_run)).await;
        drop(heavy);
        drop(slot);
        let (outcome, message, summary) = match result {
            Ok(Ok(summary)) => (Outcome::Ok, String::new(), summary),
            Ok(Err(e)) => (Outcome::Failed, e, serde_json::Value::Null),
            Err(_) => (
                Outcome::Killed,
                format!("cancelled at its time limit of {limit:?}"),
                serde_json::Value::Null,
            ),
        };
        if let Some(m) = self.inner.metrics.get() {
            m.maintenance.running.get_or_create(&labels).dec();
            m.maintenance
                .duration
                .get_or_create(&labels)
                .observe(t0.elapsed().as_secs_f64());
            m.maintenance
                .runs
                .get_or_create(&registry::metrics::TaskOutcomeLabels {
                    task: task.name(),
                    outcome: outcome.name(),
                })
                .inc();
            if outcome == Outcome::Ok && !dry_run {
                m.maintenance
                    .last_success
                    .get_or_create(&labels)
                    .set(unix_now());
            }
        }
        {
            let mut c = self.counters();
            c.running -= 1;
            match outcome {
                Outcome::Ok => c.finished += 1,
                Outcome::Failed => c.failed += 1,
                Outcome::Killed => c.killed += 1,
                Outcome::Skipped => c.skipped += 1,
            }
        }
        let record = Record {
            task,
            trigger: trigger.to_owned(),
            started_at: now_rfc3339(started),
            ended_at: now_rfc3339(SystemTime::now()),
            started_unix: started
                .duration_since(SystemTime::UNIX_EPOCH)
                .map(|d| d.as_secs_f64())
                .unwrap_or(0.0),
            duration_ms: t0.elapsed().as_secs_f64() * 1e3,
            outcome,
            message,
            summary,
        };
        if !dry_run {
            self.save(&record).await;
        }
        tracing::info!(
            task = task.name(),
            trigger,
            outcome = ?record.outcome,
            duration_ms = record.duration_ms,
            summary = %record.summary,
            message = %record.message,
            "maintenance run"
        );
        record
    }

    /// Records when this root's schedule began, unless a server already did (in the
    /// store: a create-only put, so the first start's time stays).
    pub async fn begin_schedule(&self) {
        let driver = self.inner.store.driver().as_ref();
        let anchor = match self.anchor().await {
            Some(a) => a,
            None => {
                let now = unix_now();
                let path = path_for(PathSpec::MaintenanceAnchor);
                match driver
                    .put(&path, format!("{now}\n").into(), PutMode::Create)
                    .await
                {
                    Ok(_) => now,
                    Err(DriverError::AlreadyExists(_)) => {
                        stored_anchor(driver).await.unwrap_or(now)
                    }
                    Err(e) => {
                        tracing::error!(error = %e, "cannot record the maintenance schedule start");
                        now
                    }
                }
            }
        };
        *self.inner.anchor.lock().unwrap_or_else(|p| p.into_inner()) = Some(anchor);
    }

    async fn save(&self, record: &Record) {
        let path = path_for(PathSpec::MaintenanceRecord(record.task.name()));
        match serde_json::to_vec_pretty(record) {
            Ok(bytes) => {
                if let Err(e) = self
                    .inner
                    .store
                    .driver()
                    .put(&path, bytes.into(), PutMode::Overwrite)
                    .await
                {
                    tracing::error!(error = %e, "cannot write the maintenance record");
                }
            }
            Err(e) => tracing::error!(error = %e, "cannot encode the maintenance record"),
        }
    }

    async fn execute(&self, task: Task, dry_run: bool) -> Result<serde_json::Value, String> {
        let i = &self.inner;
        let v = match task {
            Task::Gc => {
                let mut opts = crate::online::options(&i.config);
                opts.dry_run = dry_run;
                let report = match &i.cleaner {
                    Some(c) => c.run_now(&opts).await,
                    None => crate::collect(&i.store, &opts, None).await,
                }
                .map_err(|e| e.to_string())?;
                if !dry_run {
                    i.deletes_since_gc.store(0, Ordering::Relaxed);
                }
                serde_json::to_value(report.summary())
            }
            Task::Retention => {
                let r = tasks::retention(&i.store, &i.config, dry_run).await?;
                if let (Some(n), false) = (i.notifier.get(), dry_run) {
                    for removed in r.tags_removed.iter().chain(&r.manifests_removed) {
                        n.deleted_by("drydock-retention", removed);
                    }
                }
                // What retention untagged or deleted is collected by the next cycle.
                if let Some(c) = &i.cleaner
                    && !dry_run
                {
                    c.schedule();
                }
                serde_json::to_value(r)
            }
            Task::Uploads => {
                serde_json::to_value(tasks::purge_uploads(&i.store, &i.config, dry_run).await?)
            }
            Task::Scrub => {
                serde_json::to_value(tasks::scrub(&i.store, i.config.gc.workers, dry_run).await?)
            }
        };
        v.map_err(|e| e.to_string())
    }

    /// Starts the scheduler (runs due tasks every `maintenance.tick`) and the STATUS
    /// log line. Call once, in the server. The first start on a root records when the
    /// schedule began, so a task that never ran waits one period from then instead of
    /// every task running at the first tick (a start-up cycle is `gc.on_startup`'s).
    pub fn start(&self) {
        let tick = self.inner.config.maintenance.tick;
        let me = self.clone();
        tokio::spawn(async move {
            me.begin_schedule().await;
            loop {
                tokio::time::sleep(tick).await;
                let due: Vec<Task> = me
                    .due(None, false)
                    .await
                    .into_iter()
                    .filter(|t| !me.running().contains(t))
                    .collect();
                if !due.is_empty() {
                    let m = me.clone();
                    tokio::spawn(async move { m.run(due, "schedule").await });
                }
            }
        });
        let every = self.inner.config.maintenance.status_interval;
        let me = self.clone();
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(every).await;
                let c = me.counters().clone();
                let running: Vec<&str> = me.running().iter().map(|t| t.name()).collect();
                tracing::info!(
                    queued = c.queued,
                    running = c.running,
                    finished = c.finished,
                    failed = c.failed,
                    skipped = c.skipped,
                    killed = c.killed,
                    tasks = ?running,
                    paused = me.inner.paused.load(Ordering::Relaxed),
                    "STATUS maintenance"
                );
            }
        });
    }
}
