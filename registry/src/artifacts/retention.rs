//! The per-branch retention policy: for each branch with a policy, keep the newest
//! `max_daily_tags` tags that are not released and the newest `max_released_tags`
//! released ones (by creation time, ties broken by name), and delete the rest. Locked
//! tags are neither counted nor touched. Deleted tags only lose their links; the
//! collector frees their blobs. A run also removes scratch left by interrupted uploads,
//! post-processes and deletes.
//!
//! This is a plain function: the maintenance task calls it, and should schedule a
//! collection afterwards when something was removed.

use std::time::{Duration, SystemTime};

use serde::Serialize;

use super::tree::Scope;
use super::{Policy, Segment};
use crate::storage::paths::Scratch;
use crate::storage::{PathSpec, path_for};
use crate::store::Store;
use crate::{Error, Result};

/// Upload and post-process scratch older than this belongs to a request that is gone.
const STALE_WORK: Duration = Duration::from_secs(24 * 3600);
/// A deleted subtree is removed right after its rename; older trash was interrupted.
const STALE_TRASH: Duration = Duration::from_secs(600);

/// What a retention run removed (or, in a dry run, would remove).
#[derive(Debug, Clone, Default, Serialize)]
pub struct RetentionReport {
    pub dry_run: bool,
    /// Branches that have a policy.
    pub branches: usize,
    /// `branch/tag` of every tag removed, newest policy first per branch.
    pub removed: Vec<String>,
    /// Files (links) in the removed tags.
    pub files_removed: usize,
    /// Tags kept by the policies.
    pub kept: usize,
    /// Locked tags (never counted, never removed).
    pub locked: usize,
    /// Stale scratch folders removed.
    pub scratch_removed: usize,
}

impl Store {
    /// Applies every branch's retention policy. With `dry_run`, reports the same plan and
    /// deletes nothing.
    #[tracing::instrument(skip(self))]
    pub async fn apply_artifact_retention(&self, dry_run: bool) -> Result<RetentionReport> {
        let mut report = RetentionReport {
            dry_run,
            ..RetentionReport::default()
        };
        for b in self.artifact_branches().await? {
            let Some(policy) = self
                .read_json::<Policy>(PathSpec::ArtifactBranchMeta(&b))
                .await?
            else {
                continue;
            };
            if policy.max_daily_tags.is_none() && policy.max_released_tags.is_none() {
                continue;
            }
            report.branches += 1;
            self.retain_branch(&b, &policy, dry_run, &mut report)
                .await?;
        }
        if !dry_run {
            report.scratch_removed = self.purge_artifact_scratch().await?;
        }
        tracing::info!(
            branches = report.branches,
            removed = report.removed.len(),
            files_removed = report.files_removed,
            kept = report.kept,
            locked = report.locked,
            scratch_removed = report.scratch_removed,
            "artifact retention {}",
            if dry_run { "planned (dry run)" } else { "done" }
        );
        Ok(report)
    }

    async fn retain_branch(
        &self,
        b: &Segment,
        policy: &Policy,
        dry_run: bool,
        report: &mut RetentionReport,
    ) -> Result<()> {
        let (mut daily, mut released) = (Vec::new(), Vec::new());
        for (t, meta) in self.artifact_tags(b).await? {
            if meta.locked {
                report.locked += 1;
                continue;
            }
            let created = Store::tag_created(&meta);
            if meta.released {
                released.push((created, t));
            } else {
                daily.push((created, t));
            }
        }
        for (mut tags, max) in [
            (daily, policy.max_daily_tags),
            (released, policy.max_released_tags),
        ] {
            let Some(max) = max else {
                report.kept += tags.len();
                continue;
            };
            tags.sort_by(|x, y| y.cmp(x)); // newest first
            let excess = tags.split_off((max as usize).min(tags.len()));
            report.kept += tags.len();
            for (_, t) in excess {
                let scope = Scope::Tag(b, &t);
                if dry_run {
                    report.files_removed += self.count_artifact_links(scope).await?;
                    report.removed.push(scope.display());
                    continue;
                }
                match self.delete_artifacts(scope, true).await {
                    Ok(r) => {
                        report.files_removed += r.files;
                        report.removed.push(r.path);
                    }
                    // Locked or deleted since it was listed: leave it.
                    Err(Error::Conflict(why)) => {
                        tracing::info!(tag = %scope.display(), reason = why, "tag kept");
                        report.kept += 1;
                    }
                    Err(Error::NotFound) => {}
                    Err(e) => return Err(e),
                }
            }
        }
        Ok(())
    }

    /// Removes scratch folders of uploads, post-processes and deletes that were
    /// interrupted (a crash, a dropped connection). Returns how many went.
    async fn purge_artifact_scratch(&self) -> Result<usize> {
        let now = SystemTime::now();
        let mut removed = 0;
        for (kind, max_age) in [
            (Scratch::Uploads, STALE_WORK),
            (Scratch::Work, STALE_WORK),
            (Scratch::Trash, STALE_TRASH),
        ] {
            for id in self.list(PathSpec::ArtifactScratchDir(kind)).await? {
                let mut newest = match self
                    .fs()?
                    .stat(&path_for(PathSpec::ArtifactScratchEntry(kind, &id)))
                    .await
                {
                    Ok(i) => i.modified,
                    Err(_) => continue,
                };
                if kind == Scratch::Uploads
                    && let Ok(i) = self
                        .fs()?
                        .stat(&path_for(PathSpec::ArtifactUploadData(&id)))
                        .await
                {
                    newest = newest.max(i.modified);
                }
                let stale = now.duration_since(newest).is_ok_and(|age| age > max_age);
                if stale {
                    match self
                        .fs()?
                        .delete(&path_for(PathSpec::ArtifactScratchEntry(kind, &id)))
                        .await
                    {
                        Ok(()) => removed += 1,
                        Err(e) if e.is_not_found() => {}
                        Err(e) => {
                            tracing::warn!(error = %e, "cannot remove stale artifact scratch")
                        }
                    }
                }
            }
        }
        Ok(removed)
    }
}
