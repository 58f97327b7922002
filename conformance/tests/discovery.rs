//! Content discovery workflow (distribution-spec "Content Discovery"): tag listing with
//! `n`/`last`/`Link` pagination, the catalog, and the referrers API with `artifactType`
//! filtering.

mod common;

use common::*;
use conformance::*;
use serde_json::{Value, json};

/// Pushes one image and tags it with every tag of `tags`, in that order.
async fn tag_all(c: &reqwest::Client, s: &TestServer, repo: &str, tags: &[&str]) -> String {
    let (d, m) = push_image(c, s, repo, tags[0], 1, 1).await;
    for t in &tags[1..] {
        let r = put_manifest(c, s, repo, t, OCI_MANIFEST, &m).await;
        assert_eq!(r.status(), 201, "tag {t}");
    }
    d
}

async fn get_json(c: &reqwest::Client, url: &str) -> (reqwest::Response, Value) {
    let r = c.get(url).send().await.unwrap();
    assert_eq!(r.status(), 200, "GET {url}");
    let head = c.get(url).send().await.unwrap();
    let v: Value = r.json().await.unwrap();
    (head, v)
}

fn strings(v: &Value) -> Vec<String> {
    v.as_array()
        .unwrap_or_else(|| panic!("not an array: {v}"))
        .iter()
        .map(|x| x.as_str().unwrap().to_owned())
        .collect()
}

/// The URL of a `Link: <url>; rel="next"` header, or None.
fn next_link(r: &reqwest::Response) -> Option<String> {
    let v = hdr(r, "link");
    if v.is_empty() {
        return None;
    }
    assert!(v.contains(r#"rel="next""#), "Link {v:?} has rel=\"next\"");
    let start = v.find('<').expect("Link has <url>") + 1;
    let end = v.find('>').expect("Link has <url>");
    Some(v[start..end].to_owned())
}

// ---------------------------------------------------------------- tags

#[tokio::test]
async fn tags_list_is_sorted() {
    let s = TestServer::start().await;
    let c = client();
    tag_all(
        &c,
        &s,
        "disc/tags",
        &["v2", "latest", "v10", "1.0", "alpha", "v1"],
    )
    .await;
    let (r, v) = get_json(&c, &s.url("/v2/disc/tags/tags/list")).await;
    assert!(hdr(&r, "content-type").starts_with("application/json"));
    assert_eq!(v["name"], "disc/tags");
    assert_eq!(
        strings(&v["tags"]),
        ["1.0", "alpha", "latest", "v1", "v10", "v2"]
    );
    assert!(next_link(&r).is_none());
}

/// The listing is cached between requests (a paginated client asks once per page);
/// a new tag, a moved tag and a deleted tag each show in the very next listing.
#[tokio::test]
async fn tags_list_follows_every_tag_write_and_delete() {
    let s = TestServer::start().await;
    let c = client();
    let repo = "disc/fresh";
    tag_all(&c, &s, repo, &["a", "b"]).await;
    let list = |v: &Value| strings(&v["tags"]);
    let url = s.url(&format!("/v2/{repo}/tags/list"));
    let (_, v) = get_json(&c, &url).await;
    assert_eq!(list(&v), ["a", "b"]);
    let (_, v) = get_json(&c, &format!("{url}?n=1&last=a")).await;
    assert_eq!(list(&v), ["b"]);
    // A new tag.
    let (_, m) = push_image(&c, &s, repo, "c", 2, 1).await;
    let (_, v) = get_json(&c, &url).await;
    assert_eq!(list(&v), ["a", "b", "c"]);
    // A moved tag stays listed once.
    let r = put_manifest(&c, &s, repo, "a", OCI_MANIFEST, &m).await;
    assert_eq!(r.status(), 201);
    let (_, v) = get_json(&c, &url).await;
    assert_eq!(list(&v), ["a", "b", "c"]);
    // A deleted tag.
    let r = c
        .delete(s.url(&format!("/v2/{repo}/manifests/b")))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 202);
    let (_, v) = get_json(&c, &url).await;
    assert_eq!(list(&v), ["a", "c"]);
    let (_, v) = get_json(&c, &format!("{url}?n=1&last=a")).await;
    assert_eq!(list(&v), ["c"]);
}

#[tokio::test]
async fn tags_list_is_in_case_insensitive_lexical_order() {
    // The spec: "lexical order (i.e. case-insensitive alphanumeric order)".
    let s = TestServer::start().await;
    let c = client();
    tag_all(&c, &s, "disc/case", &["b", "C", "a", "B2", "_x", "A1"]).await;
    let (_, v) = get_json(&c, &s.url("/v2/disc/case/tags/list")).await;
    let tags = strings(&v["tags"]);
    assert_eq!(tags, ["_x", "a", "A1", "b", "B2", "C"]);
    // Pagination follows the same order.
    let (r, v) = get_json(&c, &s.url("/v2/disc/case/tags/list?n=2&last=A1")).await;
    assert_eq!(strings(&v["tags"]), ["b", "B2"]);
    assert!(next_link(&r).is_some());
}

#[tokio::test]
async fn tags_list_with_n_returns_the_first_n_and_a_link() {
    let s = TestServer::start().await;
    let c = client();
    tag_all(&c, &s, "disc/page", &["e", "d", "c", "b", "a"]).await;
    let (r, v) = get_json(&c, &s.url("/v2/disc/page/tags/list?n=2")).await;
    assert_eq!(v["name"], "disc/page");
    assert_eq!(strings(&v["tags"]), ["a", "b"]);
    let link = next_link(&r).expect("a Link when more tags remain");
    assert!(link.starts_with("/v2/disc/page/tags/list?"), "{link}");
    assert!(link.contains("n=2"), "{link}");
    assert!(link.contains("last=b"), "{link}");
}

#[tokio::test]
async fn tags_list_with_n_and_last_continues_after_last() {
    let s = TestServer::start().await;
    let c = client();
    tag_all(&c, &s, "disc/page", &["e", "d", "c", "b", "a"]).await;
    let (r, v) = get_json(&c, &s.url("/v2/disc/page/tags/list?n=2&last=b")).await;
    assert_eq!(strings(&v["tags"]), ["c", "d"]);
    assert!(next_link(&r).is_some());
    // `last` need not be an existing tag.
    let (_, v) = get_json(&c, &s.url("/v2/disc/page/tags/list?n=2&last=bb")).await;
    assert_eq!(strings(&v["tags"]), ["c", "d"]);
    // `last` alone: everything after it.
    let (r, v) = get_json(&c, &s.url("/v2/disc/page/tags/list?last=c")).await;
    assert_eq!(strings(&v["tags"]), ["d", "e"]);
    assert!(next_link(&r).is_none());
    // Past the end: empty, no Link.
    let (r, v) = get_json(&c, &s.url("/v2/disc/page/tags/list?n=2&last=e")).await;
    assert_eq!(strings(&v["tags"]), Vec::<String>::new());
    assert!(next_link(&r).is_none());
}

#[tokio::test]
async fn tags_list_link_is_present_exactly_when_more_remain() {
    let s = TestServer::start().await;
    let c = client();
    tag_all(&c, &s, "disc/link", &["a", "b", "c", "d"]).await;
    for (query, tags, more) in [
        ("n=3", vec!["a", "b", "c"], true),
        ("n=4", vec!["a", "b", "c", "d"], false),
        ("n=100", vec!["a", "b", "c", "d"], false),
        ("n=2&last=b", vec!["c", "d"], false),
        ("n=1&last=b", vec!["c"], true),
    ] {
        let (r, v) = get_json(&c, &s.url(&format!("/v2/disc/link/tags/list?{query}"))).await;
        assert_eq!(strings(&v["tags"]), tags, "{query}");
        assert_eq!(next_link(&r).is_some(), more, "Link for {query}");
    }
}

#[tokio::test]
async fn following_tag_links_visits_every_tag_once() {
    let s = TestServer::start().await;
    let c = client();
    let all: Vec<String> = (0..7).map(|i| format!("t{i}")).collect();
    let refs: Vec<&str> = all.iter().map(String::as_str).collect();
    tag_all(&c, &s, "disc/walk", &refs).await;
    let mut url = s.url("/v2/disc/walk/tags/list?n=3");
    let mut seen = Vec::new();
    let mut pages = 0;
    loop {
        let (r, v) = get_json(&c, &url).await;
        let page = strings(&v["tags"]);
        assert!(page.len() <= 3);
        seen.extend(page);
        pages += 1;
        match next_link(&r) {
            Some(l) => url = abs(&s, &l),
            None => break,
        }
        assert!(pages < 10, "pagination ends");
    }
    assert_eq!(pages, 3);
    assert_eq!(seen, all);
}

#[tokio::test]
async fn tags_list_with_n_zero_is_empty_without_link() {
    let s = TestServer::start().await;
    let c = client();
    tag_all(&c, &s, "disc/zero", &["a", "b"]).await;
    let (r, v) = get_json(&c, &s.url("/v2/disc/zero/tags/list?n=0")).await;
    assert_eq!(v["name"], "disc/zero");
    assert_eq!(v["tags"], json!([]));
    assert!(r.headers().get("link").is_none());
}

#[tokio::test]
async fn tags_list_of_unknown_repository_is_404_name_unknown() {
    let s = TestServer::start().await;
    let c = client();
    tag_all(&c, &s, "disc/known", &["a"]).await;
    let r = c
        .get(s.url("/v2/disc/unknown/tags/list"))
        .send()
        .await
        .unwrap();
    expect_error(r, 404, "NAME_UNKNOWN").await;
    // A prefix of a repository is not a repository.
    let r = c.get(s.url("/v2/disc/tags/list")).send().await.unwrap();
    expect_error(r, 404, "NAME_UNKNOWN").await;
}

#[tokio::test]
async fn tags_list_of_repository_without_tags_is_empty() {
    let s = TestServer::start().await;
    let c = client();
    let m = image_with(&c, &s, "disc/untagged", OCI_CONFIG, 2, "").await;
    let r = put_manifest(
        &c,
        &s,
        "disc/untagged",
        &digest_of(m.as_bytes()),
        OCI_MANIFEST,
        &m,
    )
    .await;
    assert_eq!(r.status(), 201);
    let (_, v) = get_json(&c, &s.url("/v2/disc/untagged/tags/list")).await;
    assert_eq!(v["name"], "disc/untagged");
    assert_eq!(v["tags"], json!([]));
}

// ---------------------------------------------------------------- catalog

#[tokio::test]
async fn catalog_lists_every_repository_sorted_including_nested_names() {
    let s = TestServer::start().await;
    let c = client();
    for (i, repo) in ["z", "a/b", "a", "b/c/d", "a-c", "a/b/c"]
        .iter()
        .enumerate()
    {
        push_image(&c, &s, repo, "v1", 10 + i as u64, 1).await;
    }
    let (r, v) = get_json(&c, &s.url("/v2/_catalog")).await;
    assert!(hdr(&r, "content-type").starts_with("application/json"));
    assert_eq!(
        strings(&v["repositories"]),
        ["a", "a-c", "a/b", "a/b/c", "b/c/d", "z"]
    );
    assert!(next_link(&r).is_none());
}

#[tokio::test]
async fn catalog_paginates_with_n_last_and_link() {
    let s = TestServer::start().await;
    let c = client();
    for (i, repo) in ["r1", "r2", "r2/x", "r3", "r4"].iter().enumerate() {
        push_image(&c, &s, repo, "v1", 20 + i as u64, 1).await;
    }
    let (r, v) = get_json(&c, &s.url("/v2/_catalog?n=2")).await;
    assert_eq!(strings(&v["repositories"]), ["r1", "r2"]);
    let link = next_link(&r).expect("Link when more remain");
    assert!(link.starts_with("/v2/_catalog?"), "{link}");
    let (r, v) = get_json(&c, &abs(&s, &link)).await;
    assert_eq!(strings(&v["repositories"]), ["r2/x", "r3"]);
    let link = next_link(&r).expect("Link when more remain");
    let (r, v) = get_json(&c, &abs(&s, &link)).await;
    assert_eq!(strings(&v["repositories"]), ["r4"]);
    assert!(next_link(&r).is_none());
    let (r, v) = get_json(&c, &s.url("/v2/_catalog?n=5")).await;
    assert_eq!(strings(&v["repositories"]).len(), 5);
    assert!(next_link(&r).is_none());
    let (r, v) = get_json(&c, &s.url("/v2/_catalog?n=0")).await;
    assert_eq!(v["repositories"], json!([]));
    assert!(next_link(&r).is_none());
    let (_, v) = get_json(&c, &s.url("/v2/_catalog?last=r2")).await;
    assert_eq!(strings(&v["repositories"]), ["r2/x", "r3", "r4"]);
}

/// The catalog is cached; every way a repository comes to exist must show in the very
/// next listing: a blob push, a mount from another repository, a manifest push.
#[tokio::test]
async fn catalog_follows_every_new_repository() {
    let s = TestServer::start().await;
    let c = client();
    let list = |v: &Value| strings(&v["repositories"]);
    let url = s.url("/v2/_catalog");
    let (_, v) = get_json(&c, &url).await;
    assert!(list(&v).is_empty());
    let d = push_blob(&c, &s, "cat/blob", b"catalog blob").await;
    let (_, v) = get_json(&c, &url).await;
    assert_eq!(list(&v), ["cat/blob"]);
    let r = c
        .post(s.url(&format!(
            "/v2/cat/mounted/blobs/uploads/?mount={d}&from=cat/blob"
        )))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201);
    let (_, v) = get_json(&c, &url).await;
    assert_eq!(list(&v), ["cat/blob", "cat/mounted"]);
    push_image(&c, &s, "cat/a-image", "v1", 31, 1).await;
    let (_, v) = get_json(&c, &url).await;
    assert_eq!(list(&v), ["cat/a-image", "cat/blob", "cat/mounted"]);
    // A push into a listed repository keeps the listing (and its pages) whole.
    push_image(&c, &s, "cat/blob", "v2", 32, 1).await;
    let (_, v) = get_json(&c, &format!("{url}?n=1&last=cat/a-image")).await;
    assert_eq!(list(&v), ["cat/blob"]);
}

/// Folders are implicit in the store (as in a bucket): deleting a repository's last
/// link removes its folder, and the very next listing (the catalog is cached) leaves it
/// out; a repository that keeps a link stays.
#[tokio::test]
async fn a_repository_whose_last_link_is_deleted_leaves_the_catalog() {
    let s = TestServer::start().await;
    let c = client();
    let url = s.url("/v2/_catalog");
    let gone = push_blob(&c, &s, "cat/gone", b"the only blob").await;
    let kept = push_blob(&c, &s, "cat/kept", b"one of two").await;
    push_blob(&c, &s, "cat/kept", b"two of two").await;
    let (_, v) = get_json(&c, &url).await;
    assert_eq!(strings(&v["repositories"]), ["cat/gone", "cat/kept"]);
    for (repo, d) in [("cat/gone", &gone), ("cat/kept", &kept)] {
        let r = c
            .delete(s.url(&format!("/v2/{repo}/blobs/{d}")))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 202);
    }
    let (_, v) = get_json(&c, &url).await;
    assert_eq!(strings(&v["repositories"]), ["cat/kept"]);
}

#[tokio::test]
async fn catalog_of_a_fresh_registry_is_empty() {
    let s = TestServer::start().await;
    let (_, v) = get_json(&client(), &s.url("/v2/_catalog")).await;
    assert_eq!(v["repositories"], json!([]));
}

// ---------------------------------------------------------------- referrers

/// Pushes a subject image; returns its digest and size.
async fn subject(c: &reqwest::Client, s: &TestServer, repo: &str) -> (String, usize) {
    let (d, m) = push_image(c, s, repo, "subject", 30, 1).await;
    (d, m.len())
}

fn referrers_url(s: &TestServer, repo: &str, d: &str) -> String {
    s.url(&format!("/v2/{repo}/referrers/{d}"))
}

/// GETs a referrers list and checks the envelope; returns the response and manifests.
async fn referrers(c: &reqwest::Client, url: &str) -> (reqwest::Response, Vec<Value>) {
    let r = c.get(url).send().await.unwrap();
    assert_eq!(r.status(), 200, "GET {url}");
    assert_eq!(hdr(&r, "content-type"), OCI_INDEX);
    let v: Value = c.get(url).send().await.unwrap().json().await.unwrap();
    assert_eq!(v["schemaVersion"], 2);
    assert_eq!(v["mediaType"], OCI_INDEX);
    let list = v["manifests"].as_array().expect("manifests array").clone();
    (r, list)
}

fn by_digest<'a>(list: &'a [Value], d: &str) -> &'a Value {
    list.iter()
        .find(|x| x["digest"] == d)
        .unwrap_or_else(|| panic!("{d} not in {list:?}"))
}

#[tokio::test]
async fn referrers_of_a_subject_without_referrers_is_an_empty_index() {
    let s = TestServer::start().await;
    let c = client();
    let (d, _) = subject(&c, &s, "disc/ref").await;
    let (r, list) = referrers(&c, &referrers_url(&s, "disc/ref", &d)).await;
    assert!(list.is_empty());
    assert!(r.headers().get("oci-filters-applied").is_none());
    // A digest nothing was ever pushed for: also an empty list, never a 404.
    let (_, list) = referrers(&c, &referrers_url(&s, "disc/ref", &digest_of(b"none"))).await;
    assert!(list.is_empty());
}

#[tokio::test]
async fn referrers_list_image_manifests_with_their_descriptors() {
    let s = TestServer::start().await;
    let c = client();
    let repo = "disc/ref";
    let (sd, ssize) = subject(&c, &s, repo).await;
    // A signature with artifactType and annotations.
    let sig = image_with(
        &c,
        &s,
        repo,
        "application/vnd.oci.empty.v1+json",
        31,
        &format!(
            r#","artifactType":"application/vnd.example.signature.v1","annotations":{{"org.example.sig":"yes","org.opencontainers.image.created":"2024-01-01T00:00:00Z"}}{}"#,
            subject_member(&sd, ssize)
        ),
    )
    .await;
    let sig_d = digest_of(sig.as_bytes());
    let r = put_manifest(&c, &s, repo, &sig_d, OCI_MANIFEST, &sig).await;
    assert_eq!(r.status(), 201);
    assert_eq!(hdr(&r, "oci-subject"), sd);
    // An SBOM without artifactType: its config's mediaType stands in.
    let sbom = image_with(
        &c,
        &s,
        repo,
        "application/vnd.example.sbom.v1",
        32,
        &subject_member(&sd, ssize),
    )
    .await;
    let sbom_d = digest_of(sbom.as_bytes());
    let r = put_manifest(&c, &s, repo, "sbom", OCI_MANIFEST, &sbom).await;
    assert_eq!(r.status(), 201);

    let (_, list) = referrers(&c, &referrers_url(&s, repo, &sd)).await;
    assert_eq!(list.len(), 2, "{list:?}");
    let d = by_digest(&list, &sig_d);
    assert_eq!(d["mediaType"], OCI_MANIFEST);
    assert_eq!(d["size"], sig.len());
    assert_eq!(d["artifactType"], "application/vnd.example.signature.v1");
    assert_eq!(
        d["annotations"],
        json!({"org.example.sig":"yes","org.opencontainers.image.created":"2024-01-01T00:00:00Z"})
    );
    let d = by_digest(&list, &sbom_d);
    assert_eq!(d["mediaType"], OCI_MANIFEST);
    assert_eq!(d["size"], sbom.len());
    assert_eq!(d["artifactType"], "application/vnd.example.sbom.v1");
    assert!(d.get("annotations").is_none_or(Value::is_null));
    // The subject's own referrers do not show up under a referrer.
    let (_, list) = referrers(&c, &referrers_url(&s, repo, &sig_d)).await;
    assert!(list.is_empty());
}

#[tokio::test]
async fn referrers_filter_by_artifact_type_sets_oci_filters_applied() {
    let s = TestServer::start().await;
    let c = client();
    let repo = "disc/filter";
    let (sd, ssize) = subject(&c, &s, repo).await;
    let mut digests = Vec::new();
    for (i, at) in [
        "application/vnd.a",
        "application/vnd.b",
        "application/vnd.a",
    ]
    .iter()
    .enumerate()
    {
        let m = image_with(
            &c,
            &s,
            repo,
            OCI_CONFIG,
            40 + i as u64,
            &format!(r#","artifactType":"{at}"{}"#, subject_member(&sd, ssize)),
        )
        .await;
        let d = digest_of(m.as_bytes());
        assert_eq!(
            put_manifest(&c, &s, repo, &d, OCI_MANIFEST, &m)
                .await
                .status(),
            201
        );
        digests.push(d);
    }
    // One without artifactType, filtered by its config media type.
    let m = image_with(
        &c,
        &s,
        repo,
        "application/vnd.c.config",
        43,
        &subject_member(&sd, ssize),
    )
    .await;
    let cd = digest_of(m.as_bytes());
    assert_eq!(
        put_manifest(&c, &s, repo, &cd, OCI_MANIFEST, &m)
            .await
            .status(),
        201
    );

    let base = referrers_url(&s, repo, &sd);
    let (r, list) = referrers(&c, &format!("{base}?artifactType=application/vnd.a")).await;
    assert_eq!(hdr(&r, "oci-filters-applied"), "artifactType");
    let mut got: Vec<&str> = list.iter().map(|x| x["digest"].as_str().unwrap()).collect();
    got.sort();
    let mut want = vec![digests[0].as_str(), digests[2].as_str()];
    want.sort();
    assert_eq!(got, want);
    assert!(
        list.iter()
            .all(|x| x["artifactType"] == "application/vnd.a")
    );

    let (r, list) = referrers(&c, &format!("{base}?artifactType=application/vnd.c.config")).await;
    assert_eq!(hdr(&r, "oci-filters-applied"), "artifactType");
    assert_eq!(list.len(), 1);
    assert_eq!(list[0]["digest"], cd.as_str());

    let (r, list) = referrers(&c, &format!("{base}?artifactType=application/vnd.none")).await;
    assert_eq!(hdr(&r, "oci-filters-applied"), "artifactType");
    assert!(list.is_empty());

    let (r, list) = referrers(&c, &base).await;
    assert!(r.headers().get("oci-filters-applied").is_none());
    assert_eq!(list.len(), 4);
}

#[tokio::test]
async fn referrers_include_an_index_with_subject_without_artifact_type() {
    let s = TestServer::start().await;
    let c = client();
    let repo = "disc/refindex";
    let (sd, ssize) = subject(&c, &s, repo).await;
    let (child, cm) = push_image(&c, &s, repo, "child", 50, 1).await;
    let index = format!(
        r#"{{"schemaVersion":2,"mediaType":"{OCI_INDEX}","manifests":[{{"mediaType":"{OCI_MANIFEST}","digest":"{child}","size":{}}}],"annotations":{{"k":"v"}}{}}}"#,
        cm.len(),
        subject_member(&sd, ssize)
    );
    let id = digest_of(index.as_bytes());
    let r = put_manifest(&c, &s, repo, &id, OCI_INDEX, &index).await;
    assert_eq!(r.status(), 201);
    assert_eq!(hdr(&r, "oci-subject"), sd);
    let (_, list) = referrers(&c, &referrers_url(&s, repo, &sd)).await;
    assert_eq!(list.len(), 1);
    assert_eq!(list[0]["mediaType"], OCI_INDEX);
    assert_eq!(list[0]["digest"], id.as_str());
    assert_eq!(list[0]["size"], index.len());
    assert_eq!(list[0]["annotations"], json!({"k":"v"}));
    assert!(list[0].get("artifactType").is_none_or(Value::is_null));
}

#[tokio::test]
async fn referrer_pushed_before_its_subject_is_listed() {
    let s = TestServer::start().await;
    let c = client();
    let repo = "disc/early";
    let future = digest_of(b"the subject, later");
    let m = image_with(&c, &s, repo, OCI_CONFIG, 60, &subject_member(&future, 17)).await;
    let d = digest_of(m.as_bytes());
    let r = put_manifest(&c, &s, repo, &d, OCI_MANIFEST, &m).await;
    assert_eq!(r.status(), 201);
    assert_eq!(hdr(&r, "oci-subject"), future);
    let (_, list) = referrers(&c, &referrers_url(&s, repo, &future)).await;
    assert_eq!(list.len(), 1);
    assert_eq!(list[0]["digest"], d.as_str());
}

#[tokio::test]
async fn referrers_are_scoped_to_the_repository() {
    let s = TestServer::start().await;
    let c = client();
    let (sd, ssize) = subject(&c, &s, "disc/a").await;
    let m = image_with(
        &c,
        &s,
        "disc/b",
        OCI_CONFIG,
        61,
        &subject_member(&sd, ssize),
    )
    .await;
    let d = digest_of(m.as_bytes());
    assert_eq!(
        put_manifest(&c, &s, "disc/b", &d, OCI_MANIFEST, &m)
            .await
            .status(),
        201
    );
    let (_, list) = referrers(&c, &referrers_url(&s, "disc/a", &sd)).await;
    assert!(list.is_empty(), "{list:?}");
    let (_, list) = referrers(&c, &referrers_url(&s, "disc/b", &sd)).await;
    assert_eq!(list.len(), 1);
}

#[tokio::test]
async fn referrer_disappears_after_its_manifest_is_deleted() {
    let s = TestServer::start().await;
    let c = client();
    let repo = "disc/gone";
    let (sd, ssize) = subject(&c, &s, repo).await;
    let mut ds = Vec::new();
    for seed in [70, 71] {
        let m = image_with(&c, &s, repo, OCI_CONFIG, seed, &subject_member(&sd, ssize)).await;
        let d = digest_of(m.as_bytes());
        assert_eq!(
            put_manifest(&c, &s, repo, "t", OCI_MANIFEST, &m)
                .await
                .status(),
            201
        );
        ds.push(d);
    }
    let (_, list) = referrers(&c, &referrers_url(&s, repo, &sd)).await;
    assert_eq!(list.len(), 2);
    let r = c
        .delete(s.url(&format!("/v2/{repo}/manifests/{}", ds[0])))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 202);
    let (_, list) = referrers(&c, &referrers_url(&s, repo, &sd)).await;
    assert_eq!(list.len(), 1);
    assert_eq!(list[0]["digest"], ds[1].as_str());
    // Deleting only a tag keeps the referrer.
    let r = c
        .delete(s.url(&format!("/v2/{repo}/manifests/t")))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 202);
    let (_, list) = referrers(&c, &referrers_url(&s, repo, &sd)).await;
    assert_eq!(list.len(), 1);
}

#[tokio::test]
async fn referrers_with_invalid_digest_is_400() {
    let s = TestServer::start().await;
    let c = client();
    subject(&c, &s, "disc/bad").await;
    for d in ["sha256:nothex", "latest", "sha256:abc", "foo:bar"] {
        let r = c
            .get(s.url(&format!("/v2/disc/bad/referrers/{d}")))
            .send()
            .await
            .unwrap();
        expect_error(r, 400, "DIGEST_INVALID").await;
    }
}
