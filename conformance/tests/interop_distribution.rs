//! Interoperability with CNCF Distribution (Debian's `docker-registry` 2.8): a root
//! written by Distribution is served by drydock, and a root written by drydock is served
//! by Distribution, with identical digests and bytes, tags and catalog; and the same
//! requests show in both registries' metrics under the same names and labels, so an
//! operator's dashboards and alerts keep working.
//! Distribution runs with a private config (filesystem root in a temporary directory,
//! deletes enabled, no auth, a free loopback port); Debian's default config is never
//! used (it turns on htpasswd auth).

mod clients;

use clients::*;
use std::collections::BTreeMap;

use conformance::{ServerProcess, TestServer, client, digest_of, random_bytes, test_config};
use serde_json::Value;

async fn catalog(host: &str) -> Vec<String> {
    let v: Value = client()
        .get(format!("http://{host}/v2/_catalog"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .expect("catalog JSON");
    let mut repos: Vec<String> = v["repositories"]
        .as_array()
        .expect("repositories")
        .iter()
        .map(|r| r.as_str().unwrap().to_owned())
        .collect();
    repos.sort();
    repos
}

/// Pushes the fixture to `host` as `interop/img:{v1,multi}` and copies `v1` registry to
/// registry to `interop/other:t`.
async fn populate(fx: &Fixture, host: &str) {
    push_fixture(fx, host, "interop/img").await;
    skopeo([
        "copy",
        "--preserve-digests",
        "--src-tls-verify=false",
        "--dest-tls-verify=false",
    ])
    .arg(format!("docker://{host}/interop/img:v1"))
    .arg(format!("docker://{host}/interop/other:t"))
    .run()
    .await;
}

/// Everything `populate` wrote pulls back from `host` byte for byte, with its tags and
/// catalog, and `inspect --raw` gives the original digests.
async fn assert_populated(fx: &Fixture, host: &str) {
    let want = fx.dir.path();
    assert_pulls_back(host, "interop/img", "v1", want, "v1").await;
    assert_pulls_back(host, "interop/img", "multi", want, "multi").await;
    assert_pulls_back(host, "interop/other", "t", want, "v1").await;
    for (repo, tag, desc) in [
        ("interop/img", "v1", &fx.image),
        ("interop/img", "multi", &fx.index),
        ("interop/other", "t", &fx.image),
    ] {
        let raw = skopeo(["inspect", "--raw", "--tls-verify=false"])
            .arg(format!("docker://{host}/{repo}:{tag}"))
            .run()
            .await
            .stdout;
        assert_eq!(sha256(&raw), desc.digest, "{repo}:{tag} digest");
    }
    assert_eq!(list_tags(host, "interop/img").await, ["multi", "v1"]);
    assert_eq!(list_tags(host, "interop/other").await, ["t"]);
    assert_eq!(catalog(host).await, ["interop/img", "interop/other"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn drydock_serves_a_root_written_by_distribution() {
    require("skopeo");
    let fx = blocking(|| fixture(400)).await;
    let root = tempdir();
    let dist = Distribution::start(root.path()).await;
    populate(&fx, &dist.host).await;
    // Distribution serves it, of course.
    assert_populated(&fx, &dist.host).await;
    dist.stop();

    let config = test_config(root.path());
    let s = TestServer::start_on(root, config).await;
    assert_populated(&fx, &s.host()).await;

    // drydock can keep writing to that root: a new tag by registry-to-registry copy,
    // and a delete.
    skopeo([
        "copy",
        "--preserve-digests",
        "--src-tls-verify=false",
        "--dest-tls-verify=false",
    ])
    .arg(format!("docker://{}/interop/img:multi", s.host()))
    .arg(format!("docker://{}/interop/img:again", s.host()))
    .arg("--all")
    .run()
    .await;
    skopeo(["delete", "--tls-verify=false"])
        .arg(format!("docker://{}/interop/other:t", s.host()))
        .run()
        .await;
    assert_eq!(
        list_tags(&s.host(), "interop/img").await,
        ["again", "multi", "v1"]
    );
    assert_pulls_back(&s.host(), "interop/img", "again", fx.dir.path(), "multi").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn distribution_serves_a_root_written_by_drydock() {
    require("skopeo");
    let fx = blocking(|| fixture(500)).await;
    let s = TestServer::start().await;
    populate(&fx, &s.host()).await;
    assert_populated(&fx, &s.host()).await;
    let root = s.stop().await;

    let dist = Distribution::start(root.path()).await;
    assert_populated(&fx, &dist.host).await;
    dist.stop();

    // Distribution's own garbage collector reads drydock's root and finds every blob
    // referenced.
    let (_cfg_dir, cfg) = Distribution::write_config(root.path(), "127.0.0.1:0");
    let out = Cmd::new("docker-registry")
        .args(["garbage-collect", "--dry-run"])
        .arg(&cfg)
        .run()
        .await
        .stdout();
    assert!(
        out.contains(" 0 blobs and 0 manifests eligible for deletion"),
        "Distribution's GC on drydock's root:\n{out}"
    );
}

/// The series of a Prometheus text exposition: `(name, labels) -> value`.
type Series = BTreeMap<(String, BTreeMap<String, String>), f64>;

fn parse_series(text: &str) -> Series {
    let mut out = Series::new();
    for line in text
        .lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
    {
        let (key, value) = line.rsplit_once(' ').expect("name and value");
        let (name, labels) = match key.split_once('{') {
            Some((n, rest)) => (n, rest.trim_end_matches('}')),
            None => (key, ""),
        };
        let labels = labels
            .split(',')
            .filter(|p| !p.is_empty())
            .map(|p| {
                let (k, v) = p.split_once('=').expect("label=value");
                (k.to_owned(), v.trim_matches('"').to_owned())
            })
            .collect();
        out.insert((name.to_owned(), labels), value.parse().expect("a number"));
    }
    out
}

/// Scrapes `url`, retrying while the listener is not up yet (bounded).
async fn scrape_series(url: &str) -> Series {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    loop {
        if let Ok(r) = client().get(url).send().await
            && r.status() == 200
        {
            return parse_series(&r.text().await.unwrap());
        }
        assert!(std::time::Instant::now() < deadline, "{url} never answered");
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
}

/// A client's push and pull of one small image, and a few misses, as plain HTTP; returns
/// the status of each request so the two registries can be seen to agree.
async fn parity_requests(base: &str) -> Vec<u16> {
    let c = client();
    let mut seen = Vec::new();
    let mut note = |r: &reqwest::Response| seen.push(r.status().as_u16());
    let repo = format!("{base}/v2/parity/app");
    let blob = random_bytes(3000, 77);
    let d = digest_of(&blob);
    note(&c.get(format!("{base}/v2/")).send().await.unwrap());
    let r = c
        .post(format!("{repo}/blobs/uploads/"))
        .send()
        .await
        .unwrap();
    note(&r);
    let loc = r.headers()["location"].to_str().unwrap().to_owned();
    let abs = |l: &str| {
        if l.starts_with('/') {
            format!("{base}{l}")
        } else {
            l.to_owned()
        }
    };
    let r = c
        .patch(abs(&loc))
        .header("content-type", "application/octet-stream")
        .body(blob.clone())
        .send()
        .await
        .unwrap();
    note(&r);
    let loc = abs(r.headers()["location"].to_str().unwrap());
    let sep = if loc.contains('?') { '&' } else { '?' };
    note(&c.put(format!("{loc}{sep}digest={d}")).send().await.unwrap());
    note(&c.head(format!("{repo}/blobs/{d}")).send().await.unwrap());
    let r = c.get(format!("{repo}/blobs/{d}")).send().await.unwrap();
    note(&r);
    assert_eq!(r.bytes().await.unwrap().len(), blob.len());
    let manifest = serde_json::to_vec(&serde_json::json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": d, "size": blob.len()},
        "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar", "digest": d, "size": blob.len()}],
    }))
    .unwrap();
    let md = digest_of(&manifest);
    let oci = "application/vnd.oci.image.manifest.v1+json";
    let r = c
        .put(format!("{repo}/manifests/v1"))
        .header("content-type", oci)
        .body(manifest)
        .send()
        .await
        .unwrap();
    note(&r);
    for m in [reqwest::Method::GET, reqwest::Method::HEAD] {
        let r = c
            .request(m, format!("{repo}/manifests/v1"))
            .header("accept", oci)
            .send()
            .await
            .unwrap();
        note(&r);
    }
    note(&c.get(format!("{repo}/tags/list")).send().await.unwrap());
    note(&c.get(format!("{base}/v2/_catalog")).send().await.unwrap());
    note(
        &c.get(format!("{repo}/manifests/nope"))
            .send()
            .await
            .unwrap(),
    );
    let unknown = digest_of(b"nothing");
    note(
        &c.get(format!("{repo}/blobs/{unknown}"))
            .send()
            .await
            .unwrap(),
    );
    let r = c
        .delete(format!("{repo}/manifests/{md}"))
        .send()
        .await
        .unwrap();
    note(&r);
    seen
}

/// The HTTP series of `s` keyed by Distribution's labels only (drydock's duration
/// histogram also has `code`: its counts are summed over it).
fn http_counts(s: &Series) -> Series {
    let mut out = BTreeMap::new();
    for ((name, labels), v) in s {
        let keep: &[&str] = match name.as_str() {
            "registry_http_requests_total" => &["handler", "method", "code"],
            "registry_http_request_duration_seconds_count" => &["handler", "method"],
            "registry_http_request_size_bytes_count"
            | "registry_http_response_size_bytes_count" => &["handler"],
            _ => continue,
        };
        let labels: BTreeMap<String, String> = labels
            .iter()
            .filter(|(k, _)| keep.contains(&k.as_str()))
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        *out.entry((name.clone(), labels)).or_insert(0.0) += v;
    }
    out
}

/// `after` less `before`, series by series; series that did not move are left out.
fn since(after: Series, before: &Series) -> Series {
    after
        .into_iter()
        .map(|(k, v)| {
            let was = before.get(&k).copied().unwrap_or(0.0);
            (k, v - was)
        })
        .filter(|(_, v)| *v != 0.0)
        .collect()
}

/// The same requests to Distribution and to drydock, both with Distribution's debug
/// listener and Prometheus on, show as the same HTTP series — names, `handler` (route
/// names, the upload session as `blob_upload_chunk`), lower-case `method`, `code` — with
/// the same counts; storage operations carry Distribution's action names.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_carry_distributions_names_and_labels() {
    let dist_root = tempdir();
    let dist = Distribution::start_with(dist_root.path(), true).await;
    let dir = tempdir();
    let cfg = dir.path().join("config.yml");
    std::fs::write(
        &cfg,
        format!(
            "storage:\n  filesystem:\n    rootdirectory: {}\n  delete:\n    enabled: true\nhttp:\n  addr: 127.0.0.1:0\n  debug:\n    addr: 127.0.0.1:0\n    prometheus:\n      enabled: true\ngc:\n  on_startup: false\n",
            dir.path().join("root").display()
        ),
    )
    .unwrap();
    let drydock = ServerProcess::spawn(&cfg);

    let dist_metrics = format!("http://{}/metrics", dist.debug.as_ref().unwrap());
    let our_metrics = format!(
        "http://{}/metrics",
        drydock.debug_addr.expect("debug listener")
    );
    // What the start-up checks asked (`GET /v2/` until it answered) is not compared.
    let theirs_before = http_counts(&scrape_series(&dist_metrics).await);
    let ours_before = http_counts(&scrape_series(&our_metrics).await);

    let dist_status = parity_requests(&format!("http://{}", dist.host)).await;
    let ours = parity_requests(&drydock.base).await;
    assert_eq!(ours, dist_status, "the two registries answered differently");

    let theirs = since(
        http_counts(&scrape_series(&dist_metrics).await),
        &theirs_before,
    );
    let ours = since(
        http_counts(&scrape_series(&our_metrics).await),
        &ours_before,
    );
    assert!(
        theirs.len() > 20,
        "Distribution's scrape looks empty: {theirs:#?}"
    );
    let differ: Vec<String> = theirs
        .keys()
        .chain(ours.keys())
        .collect::<std::collections::BTreeSet<_>>()
        .into_iter()
        .filter(|k| theirs.get(*k) != ours.get(*k))
        .map(|k| {
            format!(
                "{k:?}: Distribution {:?}, drydock {:?}",
                theirs.get(k),
                ours.get(k)
            )
        })
        .collect();
    assert!(differ.is_empty(), "series differ:\n{}", differ.join("\n"));

    // Storage operations: Distribution's action names (its driver's method names); an
    // action Distribution did not show here must be one it has elsewhere or drydock's own.
    let actions = |s: &Series| -> std::collections::BTreeSet<String> {
        s.keys()
            .filter(|(n, l)| {
                n == "registry_storage_action_seconds_count"
                    && l.get("driver").map(String::as_str) == Some("filesystem")
            })
            .filter_map(|(_, l)| l.get("action").cloned())
            .collect()
    };
    let theirs = actions(&scrape_series(&dist_metrics).await);
    let ours = actions(&scrape_series(&our_metrics).await);
    assert!(theirs.contains("PutContent"), "{theirs:?}");
    let elsewhere = ["Reader", "Writer", "Walk", "URLFor"];
    let drydocks_own = ["Touch", "WriterSize", "DeleteMany"];
    let strange: Vec<&String> = ours
        .iter()
        .filter(|a| {
            !theirs.contains(*a)
                && !elsewhere.contains(&a.as_str())
                && !drydocks_own.contains(&a.as_str())
        })
        .collect();
    assert!(
        strange.is_empty(),
        "storage actions Distribution does not name: {strange:?} (Distribution: {theirs:?})"
    );
    assert!(
        ours.intersection(&theirs).count() >= 3,
        "ours {ours:?}, Distribution's {theirs:?}"
    );
    dist.stop();
}
