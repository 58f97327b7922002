//! Scheduled maintenance: the tasks `gc`, `retention`, `uploads` and `scrub`, each with
//! a schedule, a time limit and a persisted last-run record in the store, through its
//! driver (`drydock/maintenance/<task>.json` under the root, on disk or in a bucket).
//! [`Maintenance`] is the run queue of one process: it never runs a task twice at once,
//! runs at most `max_parallel` tasks and at most one intensive task (gc, scrub)
//! together, holds queued tasks while the load average is above `load_pause`, cancels a
//! task at its time limit (recorded as killed), and logs a STATUS line periodically. Across processes the root lock decides: the server runs
//! tasks itself, and the CLI's runs go through the server when one owns the root.

mod runner;
mod tasks;
pub mod units;

use std::time::Duration;

use registry::config::{Config, TaskConfig, parse_duration};
use registry::storage::{Driver, PathSpec, path_for};
use serde::{Deserialize, Serialize};

pub use runner::{LoadProbe, Maintenance, Status, load_average};

/// A maintenance task.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Task {
    Gc,
    Retention,
    Uploads,
    Scrub,
}

impl Task {
    pub const ALL: [Task; 4] = [Task::Gc, Task::Retention, Task::Uploads, Task::Scrub];

    pub fn name(self) -> &'static str {
        match self {
            Task::Gc => "gc",
            Task::Retention => "retention",
            Task::Uploads => "uploads",
            Task::Scrub => "scrub",
        }
    }

    pub fn parse(s: &str) -> Option<Task> {
        Task::ALL.into_iter().find(|t| t.name() == s)
    }

    /// Heavy on the disk: at most one of these runs at a time.
    pub fn intensive(self) -> bool {
        matches!(self, Task::Gc | Task::Scrub)
    }

    /// Whether the task runs when due and in runs of "every task": its own `enabled`,
    /// and for gc `gc.enabled` too (an explicit `--task gc` still runs).
    pub fn enabled(self, config: &Config) -> bool {
        self.config(config).enabled && (self != Task::Gc || config.gc.enabled)
    }

    pub fn config(self, config: &Config) -> &TaskConfig {
        let t = &config.maintenance.tasks;
        match self {
            Task::Gc => &t.gc,
            Task::Retention => &t.retention,
            Task::Uploads => &t.uploads,
            Task::Scrub => &t.scrub,
        }
    }
}

/// `hourly`, `daily`, `weekly` or a Go duration.
pub fn schedule_period(s: &str) -> Result<Duration, String> {
    match s {
        "hourly" => Ok(Duration::from_secs(3600)),
        "daily" => Ok(Duration::from_secs(86_400)),
        "weekly" => Ok(Duration::from_secs(7 * 86_400)),
        other => parse_duration(other).and_then(|d| {
            if d.is_zero() {
                Err("a schedule of 0 would run constantly".into())
            } else {
                Ok(d)
            }
        }),
    }
}

/// How a run ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Outcome {
    Ok,
    Failed,
    /// Cancelled at its time limit.
    Killed,
    /// Not run: another run of the task was in progress.
    Skipped,
}

impl Outcome {
    pub fn name(self) -> &'static str {
        match self {
            Outcome::Ok => "ok",
            Outcome::Failed => "failed",
            Outcome::Killed => "killed",
            Outcome::Skipped => "skipped",
        }
    }
}

/// One run of a task, as persisted and reported.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Record {
    pub task: Task,
    /// What asked for it: `schedule`, `cli`, `admin`, `timer:daily`, …
    pub trigger: String,
    pub started_at: String,
    pub ended_at: String,
    /// Seconds since the epoch (for schedules).
    pub started_unix: f64,
    pub duration_ms: f64,
    pub outcome: Outcome,
    pub message: String,
    /// The task's own counts (a GC report, purged sessions, …).
    pub summary: serde_json::Value,
}

/// The last persisted record of `task` in the store behind `driver` (a key under the
/// root: a file on disk, an object in a bucket).
pub async fn last_record(driver: &dyn Driver, task: Task) -> Option<Record> {
    let (bytes, _) = driver
        .get(&path_for(PathSpec::MaintenanceRecord(task.name())))
        .await
        .ok()?;
    serde_json::from_slice(&bytes).ok()
}

/// Checks the maintenance parts of a configuration; the message names the key.
pub fn validate(config: &Config) -> Result<(), String> {
    let m = &config.maintenance;
    if m.max_parallel == 0 {
        return Err("maintenance.max_parallel: must be at least 1".into());
    }
    if m.load_pause > 0.0 && m.load_resume > m.load_pause {
        return Err("maintenance.load_resume: must not be above load_pause".into());
    }
    for t in Task::ALL {
        let c = t.config(config);
        schedule_period(&c.schedule)
            .map_err(|e| format!("maintenance.tasks.{}.schedule: {e}", t.name()))?;
    }
    for (i, p) in config.retention.images.iter().enumerate() {
        regex::Regex::new(&format!("^(?:{})$", p.repositories))
            .map_err(|e| format!("retention.images[{i}].repositories: {e}"))?;
        if let Some(k) = &p.keep_tags {
            regex::Regex::new(&format!("^(?:{k})$"))
                .map_err(|e| format!("retention.images[{i}].keep_tags: {e}"))?;
        }
    }
    Ok(())
}
