//! The one place that knows where things live in the store. Every path is built by
//! [`path_for`] from a typed [`PathSpec`]; nobody else joins path strings.
//!
//! The layout is CNCF Distribution's, so an existing registry root is served as it is
//! (paths are relative to the storage root directory):
//!
//! ```text
//! drydock/                                              drydock's own state
//! ├── server.lock, admin.sock                            owner of the root
//! ├── maintenance/<task>.json, anchor                    last runs, schedule start
//! ├── quarantine/<alg>/<hex>-<unix time>/data            corrupt blobs, set aside
//! └── notifications/<endpoint>/<seq>.json                queued events
//! docker/registry/v2/
//! ├── blobs/<alg>/<hex[0..2]>/<hex>/data                 the pool
//! ├── artifacts/                                         drydock: generic artifacts
//! │   ├── .uploads/<uuid>/data                            artifact upload in flight
//! │   ├── .work/<uuid>/…                                  post-process working copies
//! │   ├── .trash/<uuid>/…                                 a deleted subtree, being removed
//! │   └── <branch>/
//! │       ├── .branch.json                                retention policy
//! │       └── <tag>/
//! │           ├── .tag.json                               created, released, locked
//! │           └── <job>/<format>/
//! │               ├── .format.json                        dirty, finalized
//! │               └── <file path…>/.link                  the file's digest
//! └── repositories/<name>/
//!     ├── _layers/<alg>/<hex>/link                        blob visible in <name>
//!     ├── _manifests/revisions/<alg>/<hex>/link           manifest stored in <name>
//!     ├── _manifests/tags/<tag>/current/link              what <tag> points at
//!     ├── _manifests/tags/<tag>/index/<alg>/<hex>/link    everything <tag> pointed at
//!     ├── _uploads/<uuid>/{data,startedat}                upload sessions
//!     └── _referrers/<alg>/<hex>/<alg>/<hex>/link         drydock: subject → referrer
//! ```
//!
//! `_referrers` is drydock's own addition. Distribution skips every `_`-prefixed folder
//! it does not know when it walks repositories, so it never misreads it. `artifacts/` is
//! drydock's too, beside `blobs/` and `repositories/`, where Distribution never looks.
//! Artifact names never start with `.`, so the tree's own files and scratch folders
//! (`.link`, `.tag.json`, `.work`, …) cannot collide with a client's names.

use crate::artifacts::{FilePath, FormatId, Segment};
use crate::digest::Digest;
use crate::names::{RepoName, Tag};

/// Prefix of everything drydock and Distribution store under the root directory.
pub const ROOT: &str = "docker/registry/v2";

/// Scratch folders of the artifacts tree (their names start with `.`, so they are never
/// a branch).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scratch {
    /// Artifact uploads in flight.
    Uploads,
    /// Post-process working copies.
    Work,
    /// Deleted subtrees, moved here in one rename and then removed.
    Trash,
}

impl Scratch {
    pub fn dir_name(self) -> &'static str {
        match self {
            Scratch::Uploads => ".uploads",
            Scratch::Work => ".work",
            Scratch::Trash => ".trash",
        }
    }
}

/// A typed description of one place in the store.
#[derive(Debug, Clone, Copy)]
pub enum PathSpec<'a> {
    /// `blobs/`: the root of the pool.
    BlobsRoot,
    /// One shard of the pool, `blobs/<alg>/<hh>`: the blobs whose hex starts with `hh`.
    BlobShard(&'a str, &'a str),
    /// The folder holding one pool blob (removed whole by the sweeper).
    BlobDir(&'a Digest),
    BlobData(&'a Digest),
    RepositoriesRoot,
    /// A folder below `repositories/` by its name path as found on disk (a repository,
    /// or a namespace above some): what the catalog walk descends through.
    RepositoryFolder(&'a str),
    Repository(&'a RepoName),
    LayersDir(&'a RepoName),
    /// The layer links of one digest algorithm (`sha256`).
    LayersAlgDir(&'a RepoName, &'a str),
    /// The folder of one layer link (removed whole).
    LayerDir(&'a RepoName, &'a Digest),
    LayerLink(&'a RepoName, &'a Digest),
    ManifestRevisionsDir(&'a RepoName),
    ManifestRevisionDir(&'a RepoName, &'a Digest),
    ManifestRevisionLink(&'a RepoName, &'a Digest),
    TagsDir(&'a RepoName),
    TagDir(&'a RepoName, &'a Tag),
    TagCurrentLink(&'a RepoName, &'a Tag),
    TagIndexDir(&'a RepoName, &'a Tag),
    TagIndexLink(&'a RepoName, &'a Tag, &'a Digest),
    UploadsDir(&'a RepoName),
    UploadDir(&'a RepoName, &'a str),
    UploadData(&'a RepoName, &'a str),
    UploadStartedAt(&'a RepoName, &'a str),
    /// `_referrers/`: every subject of one repository that has referrers.
    ReferrersRoot(&'a RepoName),
    /// Referrers of one subject in one repository.
    ReferrersDir(&'a RepoName, &'a Digest),
    /// Referrers of one subject with one digest algorithm (`sha256`, as listed).
    ReferrersAlgDir(&'a RepoName, &'a Digest, &'a str),
    /// The folder of one referrer's link (removed whole).
    ReferrerDir(&'a RepoName, &'a Digest, &'a Digest),
    ReferrerLink(&'a RepoName, &'a Digest, &'a Digest),
    /// Where drydock keeps its own state (locks, admin socket, maintenance records).
    DrydockDir,
    /// The root's owner: a `flock`ed file on disk, a lock object with an expiry in a
    /// bucket.
    ServerLock,
    /// Where the scrubber moves a corrupt pool blob (digest, unix time of the move).
    Quarantine(&'a Digest, u64),
    /// The blob's bytes in its quarantine folder.
    QuarantineData(&'a Digest, u64),
    /// A maintenance task's last-run record.
    MaintenanceRecord(&'a str),
    /// When the server first scheduled maintenance on this root: a task that never ran
    /// is first due one period after it.
    MaintenanceAnchor,
    /// The file the storage health check writes, reads back and removes.
    HealthProbe,
    /// The durable event queue of one notification endpoint (by its name's digest).
    NotificationQueue(&'a str),
    /// One queued event of an endpoint (sequence number, zero-padded so names sort).
    NotificationEvent(&'a str, u64),
    /// `artifacts/`: the root of the generic-artifacts tree.
    ArtifactsRoot,
    /// A scratch folder (`.uploads`, `.work`, `.trash`).
    ArtifactScratchDir(Scratch),
    /// One entry (by uuid) of a scratch folder.
    ArtifactScratchEntry(Scratch, &'a str),
    /// The data file of an artifact upload in flight.
    ArtifactUploadData(&'a str),
    ArtifactBranch(&'a Segment),
    /// A branch's retention policy (JSON).
    ArtifactBranchMeta(&'a Segment),
    ArtifactTag(&'a Segment, &'a Segment),
    /// A tag's creation time and flags (JSON).
    ArtifactTagMeta(&'a Segment, &'a Segment),
    ArtifactJob(&'a Segment, &'a Segment, &'a Segment),
    ArtifactFormat(&'a FormatId),
    /// A format's state (JSON).
    ArtifactFormatMeta(&'a FormatId),
    /// The folder of a file path inside a format: a file's link folder or a sub-folder.
    ArtifactEntry(&'a FormatId, &'a FilePath),
    /// A file's link: the digest of its content in the pool.
    ArtifactLink(&'a FormatId, &'a FilePath),
}

/// Name of the link file of an artifact file, inside the file path's folder.
pub const ARTIFACT_LINK: &str = ".link";

/// The path of `spec`, relative to the storage root directory.
pub fn path_for(spec: PathSpec<'_>) -> String {
    use PathSpec::*;
    let repo = |n: &RepoName| format!("{ROOT}/repositories/{n}");
    let dig = |d: &Digest| format!("{}/{}", d.algorithm().as_str(), d.hex());
    match spec {
        BlobsRoot => format!("{ROOT}/blobs"),
        BlobShard(alg, hh) => format!("{ROOT}/blobs/{alg}/{hh}"),
        BlobDir(d) => format!(
            "{ROOT}/blobs/{}/{}/{}",
            d.algorithm().as_str(),
            &d.hex()[..2],
            d.hex()
        ),
        BlobData(d) => format!("{}/data", path_for(BlobDir(d))),
        RepositoriesRoot => format!("{ROOT}/repositories"),
        RepositoryFolder(p) => format!("{ROOT}/repositories/{p}"),
        Repository(n) => repo(n),
        LayersDir(n) => format!("{}/_layers", repo(n)),
        LayersAlgDir(n, alg) => format!("{}/_layers/{alg}", repo(n)),
        LayerDir(n, d) => format!("{}/_layers/{}", repo(n), dig(d)),
        LayerLink(n, d) => format!("{}/_layers/{}/link", repo(n), dig(d)),
        ManifestRevisionsDir(n) => format!("{}/_manifests/revisions", repo(n)),
        ManifestRevisionDir(n, d) => format!("{}/_manifests/revisions/{}", repo(n), dig(d)),
        ManifestRevisionLink(n, d) => {
            format!("{}/_manifests/revisions/{}/link", repo(n), dig(d))
        }
        TagsDir(n) => format!("{}/_manifests/tags", repo(n)),
        TagDir(n, t) => format!("{}/_manifests/tags/{t}", repo(n)),
        TagCurrentLink(n, t) => format!("{}/_manifests/tags/{t}/current/link", repo(n)),
        TagIndexDir(n, t) => format!("{}/_manifests/tags/{t}/index", repo(n)),
        TagIndexLink(n, t, d) => {
            format!("{}/_manifests/tags/{t}/index/{}/link", repo(n), dig(d))
        }
        UploadsDir(n) => format!("{}/_uploads", repo(n)),
        UploadDir(n, id) => format!("{}/_uploads/{id}", repo(n)),
        UploadData(n, id) => format!("{}/_uploads/{id}/data", repo(n)),
        UploadStartedAt(n, id) => format!("{}/_uploads/{id}/startedat", repo(n)),
        ReferrersRoot(n) => format!("{}/_referrers", repo(n)),
        ReferrersDir(n, s) => format!("{}/_referrers/{}", repo(n), dig(s)),
        ReferrersAlgDir(n, s, alg) => format!("{}/_referrers/{}/{alg}", repo(n), dig(s)),
        ReferrerDir(n, s, r) => format!("{}/_referrers/{}/{}", repo(n), dig(s), dig(r)),
        ReferrerLink(n, s, r) => format!("{}/link", path_for(ReferrerDir(n, s, r))),
        DrydockDir => "drydock".to_owned(),
        ServerLock => "drydock/server.lock".to_owned(),
        Quarantine(d, t) => format!(
            "drydock/quarantine/{}/{}-{t}",
            d.algorithm().as_str(),
            d.hex()
        ),
        QuarantineData(d, t) => format!("{}/data", path_for(Quarantine(d, t))),
        MaintenanceRecord(task) => format!("drydock/maintenance/{task}.json"),
        MaintenanceAnchor => "drydock/maintenance/anchor".to_owned(),
        HealthProbe => "drydock/health-probe".to_owned(),
        NotificationQueue(endpoint) => format!("drydock/notifications/{endpoint}"),
        NotificationEvent(endpoint, seq) => {
            format!("drydock/notifications/{endpoint}/{seq:020}.json")
        }
        ArtifactsRoot => format!("{ROOT}/artifacts"),
        ArtifactScratchDir(k) => format!("{ROOT}/artifacts/{}", k.dir_name()),
        ArtifactScratchEntry(k, id) => format!("{ROOT}/artifacts/{}/{id}", k.dir_name()),
        ArtifactUploadData(id) => format!("{ROOT}/artifacts/.uploads/{id}/data"),
        ArtifactBranch(b) => format!("{ROOT}/artifacts/{b}"),
        ArtifactBranchMeta(b) => format!("{ROOT}/artifacts/{b}/.branch.json"),
        ArtifactTag(b, t) => format!("{ROOT}/artifacts/{b}/{t}"),
        ArtifactTagMeta(b, t) => format!("{ROOT}/artifacts/{b}/{t}/.tag.json"),
        ArtifactJob(b, t, j) => format!("{ROOT}/artifacts/{b}/{t}/{j}"),
        ArtifactFormat(f) => format!("{ROOT}/artifacts/{f}"),
        ArtifactFormatMeta(f) => format!("{ROOT}/artifacts/{f}/.format.json"),
        ArtifactEntry(f, p) => format!("{ROOT}/artifacts/{f}/{p}"),
        ArtifactLink(f, p) => format!("{ROOT}/artifacts/{f}/{p}/{ARTIFACT_LINK}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use PathSpec::*;

    #[test]
    fn layout_matches_distribution() {
        let n = RepoName::parse("library/alpine").unwrap();
        let t = Tag::parse("3.20").unwrap();
        let d: Digest = "sha256:ab0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855e"
            .parse()
            .unwrap();
        let s: Digest = "sha256:cd0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855e"
            .parse()
            .unwrap();
        let h = d.hex();
        let r = "docker/registry/v2/repositories/library/alpine";
        let table: Vec<(PathSpec, String)> = vec![
            (BlobsRoot, "docker/registry/v2/blobs".into()),
            (
                BlobShard("sha256", "ab"),
                "docker/registry/v2/blobs/sha256/ab".into(),
            ),
            (
                BlobDir(&d),
                format!("docker/registry/v2/blobs/sha256/ab/{h}"),
            ),
            (
                BlobData(&d),
                format!("docker/registry/v2/blobs/sha256/ab/{h}/data"),
            ),
            (RepositoriesRoot, "docker/registry/v2/repositories".into()),
            (Repository(&n), r.into()),
            (RepositoryFolder("library/alpine"), r.into()),
            (LayersDir(&n), format!("{r}/_layers")),
            (LayersAlgDir(&n, "sha256"), format!("{r}/_layers/sha256")),
            (LayerDir(&n, &d), format!("{r}/_layers/sha256/{h}")),
            (LayerLink(&n, &d), format!("{r}/_layers/sha256/{h}/link")),
            (
                ManifestRevisionsDir(&n),
                format!("{r}/_manifests/revisions"),
            ),
            (
                ManifestRevisionDir(&n, &d),
                format!("{r}/_manifests/revisions/sha256/{h}"),
            ),
            (
                ManifestRevisionLink(&n, &d),
                format!("{r}/_manifests/revisions/sha256/{h}/link"),
            ),
            (TagsDir(&n), format!("{r}/_manifests/tags")),
            (TagDir(&n, &t), format!("{r}/_manifests/tags/3.20")),
            (
                TagCurrentLink(&n, &t),
                format!("{r}/_manifests/tags/3.20/current/link"),
            ),
            (
                TagIndexDir(&n, &t),
                format!("{r}/_manifests/tags/3.20/index"),
            ),
            (
                TagIndexLink(&n, &t, &d),
                format!("{r}/_manifests/tags/3.20/index/sha256/{h}/link"),
            ),
            (UploadsDir(&n), format!("{r}/_uploads")),
            (UploadDir(&n, "u1"), format!("{r}/_uploads/u1")),
            (UploadData(&n, "u1"), format!("{r}/_uploads/u1/data")),
            (
                UploadStartedAt(&n, "u1"),
                format!("{r}/_uploads/u1/startedat"),
            ),
            (ReferrersRoot(&n), format!("{r}/_referrers")),
            (
                ReferrersDir(&n, &s),
                format!("{r}/_referrers/sha256/{}", s.hex()),
            ),
            (
                ReferrersAlgDir(&n, &s, "sha256"),
                format!("{r}/_referrers/sha256/{}/sha256", s.hex()),
            ),
            (
                ReferrerDir(&n, &s, &d),
                format!("{r}/_referrers/sha256/{}/sha256/{h}", s.hex()),
            ),
            (
                ReferrerLink(&n, &s, &d),
                format!("{r}/_referrers/sha256/{}/sha256/{h}/link", s.hex()),
            ),
            (DrydockDir, "drydock".into()),
            (ServerLock, "drydock/server.lock".into()),
            (
                Quarantine(&d, 7),
                format!("drydock/quarantine/sha256/{h}-7"),
            ),
            (
                QuarantineData(&d, 7),
                format!("drydock/quarantine/sha256/{h}-7/data"),
            ),
            (
                MaintenanceRecord("gc"),
                "drydock/maintenance/gc.json".into(),
            ),
            (MaintenanceAnchor, "drydock/maintenance/anchor".into()),
            (HealthProbe, "drydock/health-probe".into()),
            (NotificationQueue("e1"), "drydock/notifications/e1".into()),
            (
                NotificationEvent("e1", 42),
                "drydock/notifications/e1/00000000000000000042.json".into(),
            ),
        ];
        for (spec, want) in table {
            assert_eq!(path_for(spec), want, "{spec:?}");
        }
    }

    #[test]
    fn artifacts_layout() {
        let seg = |s: &str| Segment::parse("x", s).unwrap();
        let (b, t, j) = (seg("main"), seg("v1.0"), seg("build-x86"));
        let f = FormatId {
            branch: b.clone(),
            tag: t.clone(),
            job: j.clone(),
            format: seg("rpm"),
        };
        let p = FilePath::parse("x86_64/foo.rpm").unwrap();
        let a = "docker/registry/v2/artifacts";
        let fmt = format!("{a}/main/v1.0/build-x86/rpm");
        let table: Vec<(PathSpec, String)> = vec![
            (ArtifactsRoot, a.into()),
            (
                ArtifactScratchDir(Scratch::Uploads),
                format!("{a}/.uploads"),
            ),
            (ArtifactScratchDir(Scratch::Work), format!("{a}/.work")),
            (ArtifactScratchDir(Scratch::Trash), format!("{a}/.trash")),
            (
                ArtifactScratchEntry(Scratch::Work, "u1"),
                format!("{a}/.work/u1"),
            ),
            (ArtifactUploadData("u1"), format!("{a}/.uploads/u1/data")),
            (ArtifactBranch(&b), format!("{a}/main")),
            (ArtifactBranchMeta(&b), format!("{a}/main/.branch.json")),
            (ArtifactTag(&b, &t), format!("{a}/main/v1.0")),
            (ArtifactTagMeta(&b, &t), format!("{a}/main/v1.0/.tag.json")),
            (ArtifactJob(&b, &t, &j), format!("{a}/main/v1.0/build-x86")),
            (ArtifactFormat(&f), fmt.clone()),
            (ArtifactFormatMeta(&f), format!("{fmt}/.format.json")),
            (ArtifactEntry(&f, &p), format!("{fmt}/x86_64/foo.rpm")),
            (ArtifactLink(&f, &p), format!("{fmt}/x86_64/foo.rpm/.link")),
        ];
        for (spec, want) in table {
            assert_eq!(path_for(spec), want, "{spec:?}");
        }
    }
}
