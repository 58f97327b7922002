//! The report every cycle ends with: what was marked, what was removed (or would be, in
//! a dry run), bytes freed and the duration of each phase; as JSON or human text.

use std::time::{Duration, SystemTime};

use serde::{Deserialize, Serialize};

use crate::Options;
use crate::mark::Marked;
use crate::sweep::Swept;

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Report {
    pub dry_run: bool,
    pub remove_untagged: bool,
    pub grace_seconds: f64,
    /// RFC 3339.
    pub started_at: String,
    pub repositories: usize,
    pub manifests_marked: usize,
    pub blobs_marked: usize,
    pub manifests_removed: usize,
    pub layer_links_removed: usize,
    pub blobs_removed: usize,
    pub bytes_freed: u64,
    pub skipped_in_use: u64,
    /// Manifests whose bytes did not parse: everything they mention was kept.
    #[serde(default)]
    pub unreadable_manifests: usize,
    pub mark_ms: f64,
    pub sweep_ms: f64,
    pub duration_ms: f64,
    /// What was removed (or, in a dry run, the plan).
    pub removed: Swept,
}

impl Report {
    pub(crate) fn new(
        opts: &Options,
        started: SystemTime,
        marked: &Marked,
        swept: Swept,
        mark: Duration,
        sweep: Duration,
    ) -> Report {
        let started_at = time::OffsetDateTime::from(started)
            .format(&time::format_description::well_known::Rfc3339)
            .unwrap_or_default();
        Report {
            dry_run: opts.dry_run,
            remove_untagged: opts.remove_untagged,
            grace_seconds: opts.grace.as_secs_f64(),
            started_at,
            repositories: marked.repos.len(),
            manifests_marked: marked.manifests_marked,
            blobs_marked: marked.blobs.len(),
            manifests_removed: swept.manifests.len(),
            layer_links_removed: swept.layer_links.len(),
            blobs_removed: swept.blobs.len(),
            bytes_freed: swept.bytes_freed,
            skipped_in_use: swept.skipped_in_use,
            unreadable_manifests: marked.unreadable_manifests,
            mark_ms: mark.as_secs_f64() * 1e3,
            sweep_ms: sweep.as_secs_f64() * 1e3,
            duration_ms: (mark + sweep).as_secs_f64() * 1e3,
            removed: swept,
        }
    }

    /// The report without its item lists (what the server keeps in memory).
    pub fn summary(&self) -> Report {
        Report {
            dry_run: self.dry_run,
            remove_untagged: self.remove_untagged,
            grace_seconds: self.grace_seconds,
            started_at: self.started_at.clone(),
            repositories: self.repositories,
            manifests_marked: self.manifests_marked,
            blobs_marked: self.blobs_marked,
            manifests_removed: self.manifests_removed,
            layer_links_removed: self.layer_links_removed,
            blobs_removed: self.blobs_removed,
            bytes_freed: self.bytes_freed,
            skipped_in_use: self.skipped_in_use,
            unreadable_manifests: self.unreadable_manifests,
            mark_ms: self.mark_ms,
            sweep_ms: self.sweep_ms,
            duration_ms: self.duration_ms,
            removed: Swept {
                bytes_freed: self.removed.bytes_freed,
                skipped_in_use: self.removed.skipped_in_use,
                ..Swept::default()
            },
        }
    }

    /// Human text: one line per item unless `quiet`, then the summary; written as it
    /// goes (a large report is never one string in memory).
    pub fn write_text(&self, w: &mut dyn std::io::Write, quiet: bool) -> std::io::Result<()> {
        let verb = if self.dry_run {
            "would remove"
        } else {
            "removed"
        };
        if !quiet {
            for (kind, items) in [
                ("manifest", &self.removed.manifests),
                ("layer link", &self.removed.layer_links),
                ("blob", &self.removed.blobs),
            ] {
                for item in items.iter() {
                    writeln!(w, "{kind} {verb}: {item}")?;
                }
            }
        }
        writeln!(
            w,
            "{}marked {} repositories, {} manifests, {} blobs; {verb} {} manifests, {} layer links, {} blobs ({}); {} in use skipped; {}mark {:.0} ms, sweep {:.0} ms, total {:.0} ms",
            if self.dry_run { "dry run: " } else { "" },
            self.repositories,
            self.manifests_marked,
            self.blobs_marked,
            self.manifests_removed,
            self.layer_links_removed,
            self.blobs_removed,
            human_bytes(self.bytes_freed),
            self.skipped_in_use,
            match self.unreadable_manifests {
                0 => String::new(),
                n => format!("{n} unreadable manifests kept with all they mention; "),
            },
            self.mark_ms,
            self.sweep_ms,
            self.duration_ms,
        )
    }
}

fn human_bytes(n: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = n as f64;
    let mut u = 0;
    while v >= 1024.0 && u < UNITS.len() - 1 {
        v /= 1024.0;
        u += 1;
    }
    if u == 0 {
        format!("{n} B")
    } else {
        format!("{v:.1} {}", UNITS[u])
    }
}
