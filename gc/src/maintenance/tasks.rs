//! What each maintenance task does. `gc` is the collector itself (`crate::collect`);
//! these are the other three, written over the store's inventory API and its driver, so
//! each runs on every driver.

use std::collections::HashSet;
use std::time::{Duration, SystemTime};

use futures::StreamExt;

use registry::config::Config;
use registry::inventory::BlobHealth;
use registry::{Digest, Store};
use serde::Serialize;

use crate::{Options, Scope};

fn anchored(re: &str) -> Result<regex::Regex, String> {
    let re = if re.is_empty() { ".*" } else { re };
    regex::Regex::new(&format!("^(?:{re})$")).map_err(|e| e.to_string())
}

/// What the retention task removed (or, in a dry run, would remove).
#[derive(Debug, Default, Serialize)]
pub struct RetentionSummary {
    pub dry_run: bool,
    /// `repo:tag`
    pub tags_removed: Vec<String>,
    /// `repo@digest`
    pub manifests_removed: Vec<String>,
    pub tags_kept: usize,
    /// The artifact branch policies' report.
    pub artifacts: serde_json::Value,
}

/// Applies the artifact branch policies (see `registry::artifacts`), then the image tag
/// policies of `retention.images`: per matching repository, keep
/// tags matching `keep_tags`, keep the newest `keep_last` others (by when the tag was
/// last pushed), untag the rest; remove untagged manifests older than
/// `untagged_older_than` (never a child of a live index or a referrer of a live
/// subject: the collector's mark decides what is untagged). The content goes with the
/// next gc.
pub async fn retention(
    store: &Store,
    config: &Config,
    dry_run: bool,
) -> Result<RetentionSummary, String> {
    let mut out = RetentionSummary {
        dry_run,
        ..RetentionSummary::default()
    };
    let repos = store.repositories_all().await.map_err(|e| e.to_string())?;
    for policy in &config.retention.images {
        let matches = anchored(&policy.repositories)?;
        let keep_tags = match &policy.keep_tags {
            Some(k) => Some(anchored(k)?),
            None => None,
        };
        for repo in repos.iter().filter(|r| matches.is_match(r.as_str())) {
            let Some(keep_last) = policy.keep_last else {
                continue;
            };
            let mut tags = store.tags_with_time(repo).await.unwrap_or_default();
            tags.sort_by(|a, b| b.2.cmp(&a.2).then_with(|| a.0.cmp(&b.0)));
            store
                .liveness()
                .hooks()
                .reach(registry::hooks::Point::Marked, None)
                .await;
            let mut kept_newest = 0;
            for (tag, digest, pushed) in tags {
                if keep_tags.as_ref().is_some_and(|k| k.is_match(tag.as_str())) {
                    out.tags_kept += 1;
                    continue;
                }
                if kept_newest < keep_last {
                    kept_newest += 1;
                    out.tags_kept += 1;
                    continue;
                }
                // Only the tag as it was listed: one pushed again since then is new.
                if !dry_run
                    && !store
                        .delete_tag_if(repo, &tag, &digest, pushed)
                        .await
                        .map_err(|e| e.to_string())?
                {
                    out.tags_kept += 1;
                    continue;
                }
                out.tags_removed.push(format!("{repo}:{tag}"));
            }
        }
    }
    let artifacts = store
        .apply_artifact_retention(dry_run)
        .await
        .map_err(|e| e.to_string())?;
    out.artifacts = serde_json::to_value(artifacts).map_err(|e| e.to_string())?;
    // Untagged manifests: one collection of manifests only per policy, over the
    // repositories it matches, with its age as the grace period. It is the collector's
    // own manifest phase, so it marks, claims and keeps what writes hold the same way.
    for policy in &config.retention.images {
        let Some(age) = policy.untagged_older_than else {
            continue;
        };
        let opts = Options {
            dry_run,
            remove_untagged: true,
            grace: age,
            workers: config.gc.workers,
        };
        let scope = Scope {
            repositories: Some(anchored(&policy.repositories)?),
            revisions_only: true,
        };
        let report = crate::collect_in(store, &opts, Some(store.liveness()), &scope)
            .await
            .map_err(|e| e.to_string())?;
        out.manifests_removed
            .extend(report.removed.manifests.iter());
    }
    Ok(out)
}

/// What the upload purge did.
#[derive(Debug, Default, Serialize)]
pub struct UploadsSummary {
    pub max_age_seconds: f64,
    /// `repo/uuid`
    pub removed: Vec<String>,
    pub kept: usize,
    /// Keys of the pending uploads (S3 multipart uploads) that belonged to no session
    /// and were older than `max_age`: aborted.
    pub aborted: Vec<String>,
}

/// Removes upload sessions idle for longer than `uploads.max_age` (with what their
/// writers hold outside their keys: on S3 the multipart upload), and aborts the
/// driver's pending uploads that no session owns once they are that old. A session
/// written to after the listing stays (see [`Store::purge_upload`]).
pub async fn purge_uploads(
    store: &Store,
    config: &Config,
    dry_run: bool,
) -> Result<UploadsSummary, String> {
    let max_age = config.uploads.max_age;
    let mut out = UploadsSummary {
        max_age_seconds: max_age.as_secs_f64(),
        ..UploadsSummary::default()
    };
    let listed = store.upload_sessions().await.map_err(|e| e.to_string())?;
    let now = SystemTime::now();
    let old = |t: SystemTime| now.duration_since(t).unwrap_or(Duration::ZERO) >= max_age;
    store
        .liveness()
        .hooks()
        .reach(registry::hooks::Point::UploadsListed, None)
        .await;
    for s in &listed.sessions {
        if !old(s.last_active) {
            out.kept += 1;
            continue;
        }
        if dry_run
            || store
                .purge_upload(s, max_age)
                .await
                .map_err(|e| e.to_string())?
        {
            out.removed.push(format!("{}/{}", s.repository, s.id));
        } else {
            out.kept += 1; // it wrote something since it was listed
        }
    }
    for p in listed.orphans.iter().filter(|p| old(p.started)) {
        if !dry_run {
            store.abort_pending(p).await.map_err(|e| e.to_string())?;
        }
        out.aborted.push(p.path.clone());
    }
    Ok(out)
}

#[derive(Debug, Serialize)]
pub struct Corrupt {
    pub digest: String,
    pub actual: String,
    /// Where the blob was moved; `None` when a write held it and it stayed.
    pub quarantined_to: Option<String>,
}

/// What the scrub found.
#[derive(Debug, Default, Serialize)]
pub struct ScrubSummary {
    pub blobs_checked: usize,
    pub bytes_checked: u64,
    pub corrupt: Vec<Corrupt>,
    /// `repo@digest` of layer links whose blob is not in the pool.
    pub dangling_layer_links: Vec<String>,
    /// `repo@digest` of manifest revisions whose blob is not in the pool.
    pub dangling_manifests: Vec<String>,
}

/// Re-hashes every pool blob, streamed through the driver's reader, `workers` blobs at
/// once (`gc.workers`: on S3 each blob is a request that waits on the network; memory is
/// a chunk per worker whatever the blobs' sizes); a corrupt one is moved to the
/// quarantine folder (never deleted; not while a write holds it) so clients see it as
/// unknown and push it again; links whose blob is missing are reported.
pub async fn scrub(store: &Store, workers: usize, dry_run: bool) -> Result<ScrubSummary, String> {
    let mut out = ScrubSummary::default();
    let removal = store
        .liveness()
        .begin_removal()
        .await
        .map_err(|e| e.to_string())?;
    let blobs = store.pool_blobs().await.map_err(|e| e.to_string())?;
    // What the pool holds, for the link checks below: one listing rather than a request
    // per link on S3.
    let mut in_pool: HashSet<Digest> = blobs.iter().map(|b| b.digest.clone()).collect();
    // Owned values in the stream: a future borrowing from here is not `Send` enough for
    // the run queue's spawned task.
    let mut checked = futures::stream::iter(blobs)
        .map(|b| {
            let store = store.clone();
            async move {
                let health = store.verify_pool_blob(&b.digest).await;
                (b, health)
            }
        })
        .boxed()
        .buffered(workers.max(1));
    while let Some((blob, health)) = checked.next().await {
        let d: &Digest = &blob.digest;
        match health.map_err(|e| e.to_string())? {
            BlobHealth::Ok => {}
            BlobHealth::Missing => {
                in_pool.remove(d);
                continue;
            }
            BlobHealth::Corrupt { actual } => {
                let claim = if dry_run {
                    None
                } else {
                    removal.claim_unpinned(d).await.map_err(|e| e.to_string())?
                };
                let quarantined_to = match claim {
                    Some(_claim) => Some(
                        store
                            .quarantine_pool_blob(d)
                            .await
                            .map_err(|e| e.to_string())?,
                    ),
                    None => None,
                };
                if quarantined_to.is_some() {
                    in_pool.remove(d);
                }
                tracing::warn!(digest = %d, actual = %actual, quarantined = ?quarantined_to, "corrupt blob");
                out.corrupt.push(Corrupt {
                    digest: d.to_string(),
                    actual: actual.to_string(),
                    quarantined_to,
                });
            }
        }
        out.blobs_checked += 1;
        out.bytes_checked += blob.size;
    }
    // A digest the listing did not show is asked for again: it may have come since.
    let missing = |d: Digest| {
        let listed = in_pool.contains(&d);
        async move {
            Ok::<bool, String>(
                !listed
                    && !store
                        .pool_blob_on_disk(&d)
                        .await
                        .map_err(|e| e.to_string())?,
            )
        }
    };
    for repo in store.repositories_all().await.map_err(|e| e.to_string())? {
        for (d, _) in store.layer_links(&repo).await.map_err(|e| e.to_string())? {
            if missing(d.clone()).await? {
                out.dangling_layer_links.push(format!("{repo}@{d}"));
            }
        }
        for (d, _) in store
            .revisions_with_time(&repo)
            .await
            .map_err(|e| e.to_string())?
        {
            if missing(d.clone()).await? {
                out.dangling_manifests.push(format!("{repo}@{d}"));
            }
        }
    }
    Ok(out)
}
