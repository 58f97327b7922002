//! Parity with CNCF Distribution 2.8.2's collector (Debian's `docker-registry`): on the
//! same store, drydock's dry-run blob plan equals `docker-registry garbage-collect
//! --dry-run`'s, with and without untagged removal, where Distribution is right. The
//! cases where Distribution is wrong (untagged children of a tagged index under
//! `--delete-untagged`) are checked to differ in exactly that way.

use std::collections::BTreeSet;
use std::path::Path;
use std::process::Command;

use conformance::*;

const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";

fn distribution_plan(root: &Path, delete_untagged: bool) -> (BTreeSet<String>, BTreeSet<String>) {
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("config.yml");
    std::fs::write(
        &cfg,
        format!(
            "version: 0.1\nlog:\n  level: error\nstorage:\n  filesystem:\n    rootdirectory: {}\n  delete:\n    enabled: true\nhttp:\n  addr: 127.0.0.1:0\n",
            root.display()
        ),
    )
    .unwrap();
    let mut cmd = Command::new("docker-registry");
    cmd.args(["garbage-collect", "--dry-run"]);
    if delete_untagged {
        cmd.arg("--delete-untagged");
    }
    let out = cmd
        .arg(&cfg)
        .output()
        .expect("docker-registry must be installed (scripts/test.sh installs it)");
    let text =
        String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "docker-registry garbage-collect failed: {text}"
    );
    let grab = |prefix: &str| -> BTreeSet<String> {
        text.lines()
            .filter_map(|l| l.split_once(prefix).map(|(_, d)| d.trim().to_owned()))
            .collect()
    };
    (
        grab("blob eligible for deletion: "),
        grab("manifest eligible for deletion: "),
    )
}

fn drydock_plan(root: &Path, remove_untagged: bool) -> (BTreeSet<String>, BTreeSet<String>) {
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("config.yml");
    std::fs::write(
        &cfg,
        format!(
            "storage:\n  filesystem:\n    rootdirectory: {}\n",
            root.display()
        ),
    )
    .unwrap();
    let mut cmd = Command::new(registry_binary());
    cmd.args(["garbage-collect", "--dry-run", "--grace", "0s", "--json"]);
    if remove_untagged {
        cmd.arg("--remove-untagged");
    }
    let out = cmd.arg(&cfg).output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let blobs = v["removed"]["blobs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|b| b.as_str().unwrap().to_owned())
        .collect();
    let manifests = v["removed"]["manifests"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m.as_str().unwrap().split_once('@').unwrap().1.to_owned())
        .collect();
    (blobs, manifests)
}

async fn put(
    c: &reqwest::Client,
    s: &TestServer,
    repo: &str,
    reference: &str,
    ct: &str,
    body: &str,
) -> String {
    let r = c
        .put(s.url(&format!("/v2/{repo}/manifests/{reference}")))
        .header("content-type", ct)
        .body(body.to_owned())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201);
    digest_of(body.as_bytes())
}

/// A store with every kind of garbage Distribution understands.
async fn build_store(with_index: bool) -> tempfile::TempDir {
    let s = TestServer::start_with(|c| c.gc.on_startup = false).await;
    let c = client();
    push_image(&c, &s, "lib/app", "v1", 1, 3).await;
    push_image(&c, &s, "lib/app", "v1", 2, 2).await; // v1's first manifest is now untagged
    let (gone, _) = push_image(&c, &s, "lib/tool", "v1", 3, 2).await;
    push_image(&c, &s, "lib/tool", "v2", 4, 1).await;
    let r = c
        .delete(s.url(&format!("/v2/lib/tool/manifests/{gone}")))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 202);
    push_blob(&c, &s, "lib/tool", &random_bytes(333, 5)).await; // orphan
    // The same layers in two repositories; one of them deleted.
    push_image(&c, &s, "shared/a", "v1", 6, 2).await;
    let (b, _) = push_image(&c, &s, "shared/b", "v1", 6, 2).await;
    let r = c
        .delete(s.url(&format!("/v2/shared/b/manifests/{b}")))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 202);
    if with_index {
        let mut children = Vec::new();
        for (i, arch) in ["amd64", "arm64"].iter().enumerate() {
            let config = format!(r#"{{"architecture":"{arch}"}}"#);
            let cd = push_blob(&c, &s, "multi", config.as_bytes()).await;
            let layer = random_bytes(500, 70 + i as u64);
            let ld = push_blob(&c, &s, "multi", &layer).await;
            let m = image_manifest((&cd, config.len()), &[(&ld, layer.len())], "");
            let d = digest_of(m.as_bytes());
            put(&c, &s, "multi", &d, OCI_MANIFEST, &m).await;
            children.push((d, m.len(), *arch));
        }
        let entries: Vec<String> = children
            .iter()
            .map(|(d, n, a)| format!(r#"{{"mediaType":"{OCI_MANIFEST}","digest":"{d}","size":{n},"platform":{{"architecture":"{a}","os":"linux"}}}}"#))
            .collect();
        let index = format!(
            r#"{{"schemaVersion":2,"mediaType":"{OCI_INDEX}","manifests":[{}]}}"#,
            entries.join(",")
        );
        put(&c, &s, "multi", "latest", OCI_INDEX, &index).await;
    }
    s.stop().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn blob_plan_equals_distribution_without_untagged_removal() {
    let root = build_store(true).await;
    let ours = drydock_plan(root.path(), false);
    let theirs = distribution_plan(root.path(), false);
    assert!(ours.0.len() >= 5, "the store has garbage: {:?}", ours.0);
    assert_eq!(ours.0, theirs.0, "blob plans differ");
    assert!(ours.1.is_empty() && theirs.1.is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn blob_and_manifest_plans_equal_distribution_with_untagged_removal() {
    let root = build_store(false).await;
    let ours = drydock_plan(root.path(), true);
    let theirs = distribution_plan(root.path(), true);
    assert_eq!(ours.1.len(), 1, "one untagged manifest: {:?}", ours.1);
    assert_eq!(ours.1, theirs.1, "manifest plans differ");
    assert_eq!(ours.0, theirs.0, "blob plans differ");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn distribution_deletes_children_of_a_tagged_index_and_drydock_does_not() {
    let root = build_store(true).await;
    let ours = drydock_plan(root.path(), true);
    let theirs = distribution_plan(root.path(), true);
    let extra: BTreeSet<String> = theirs.1.difference(&ours.1).cloned().collect();
    assert_eq!(
        extra.len(),
        2,
        "Distribution removes exactly the two platform manifests: {extra:?}"
    );
    assert!(ours.1.is_subset(&theirs.1));
    // Everything else Distribution plans, drydock plans too.
    assert!(ours.0.is_subset(&theirs.0));
}
