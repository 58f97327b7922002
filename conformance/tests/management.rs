//! Content management workflow (distribution-spec "Content Management"): deleting
//! manifests by digest, tags, and blobs; deletes disabled; read-only mode.

mod common;

use common::*;
use conformance::*;
use serde_json::Value;

async fn tags_of(c: &reqwest::Client, s: &TestServer, repo: &str) -> Vec<String> {
    let r = c
        .get(s.url(&format!("/v2/{repo}/tags/list")))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let v: Value = r.json().await.unwrap();
    v["tags"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t.as_str().unwrap().to_owned())
        .collect()
}

async fn status_of(r: reqwest::RequestBuilder) -> u16 {
    r.send().await.unwrap().status().as_u16()
}

#[tokio::test]
async fn delete_manifest_by_digest_is_202_and_it_and_its_tags_are_gone() {
    let s = TestServer::start().await;
    let c = client();
    let repo = "mgmt/bydigest";
    let (d, m) = push_image(&c, &s, repo, "v1", 1, 1).await;
    assert_eq!(
        put_manifest(&c, &s, repo, "also", OCI_MANIFEST, &m)
            .await
            .status(),
        201
    );
    push_image(&c, &s, repo, "other", 2, 1).await;
    let r = c
        .delete(s.url(&format!("/v2/{repo}/manifests/{d}")))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 202);
    for reference in [d.as_str(), "v1", "also"] {
        let r = c
            .get(s.url(&format!("/v2/{repo}/manifests/{reference}")))
            .send()
            .await
            .unwrap();
        expect_error(r, 404, "MANIFEST_UNKNOWN").await;
        assert_eq!(
            status_of(c.head(s.url(&format!("/v2/{repo}/manifests/{reference}")))).await,
            404
        );
    }
    assert_eq!(tags_of(&c, &s, repo).await, ["other"]);
    let r = c
        .get(s.url(&format!("/v2/{repo}/manifests/other")))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    // Deleting it again: it is unknown now.
    let r = c
        .delete(s.url(&format!("/v2/{repo}/manifests/{d}")))
        .send()
        .await
        .unwrap();
    expect_error(r, 404, "MANIFEST_UNKNOWN").await;
}

#[tokio::test]
async fn delete_manifest_by_digest_leaves_other_repositories_alone() {
    let s = TestServer::start().await;
    let c = client();
    let (d, m) = push_image(&c, &s, "mgmt/one", "v1", 3, 1).await;
    let (d2, _) = push_image(&c, &s, "mgmt/two", "v1", 3, 1).await;
    assert_eq!(d, d2);
    let r = c
        .delete(s.url(&format!("/v2/mgmt/one/manifests/{d}")))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 202);
    let r = c
        .get(s.url(&format!("/v2/mgmt/two/manifests/{d}")))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.text().await.unwrap(), m);
}

#[tokio::test]
async fn delete_tag_is_202_and_the_manifest_stays_pullable_by_digest() {
    let s = TestServer::start().await;
    let c = client();
    let repo = "mgmt/bytag";
    let (d, m) = push_image(&c, &s, repo, "v1", 4, 1).await;
    assert_eq!(
        put_manifest(&c, &s, repo, "v2", OCI_MANIFEST, &m)
            .await
            .status(),
        201
    );
    let r = c
        .delete(s.url(&format!("/v2/{repo}/manifests/v1")))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 202);
    let r = c
        .get(s.url(&format!("/v2/{repo}/manifests/v1")))
        .send()
        .await
        .unwrap();
    expect_error(r, 404, "MANIFEST_UNKNOWN").await;
    assert_eq!(tags_of(&c, &s, repo).await, ["v2"]);
    for reference in [d.as_str(), "v2"] {
        let r = c
            .get(s.url(&format!("/v2/{repo}/manifests/{reference}")))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200, "{reference}");
        assert_eq!(r.text().await.unwrap(), m);
    }
    // The tag can be pushed again.
    assert_eq!(
        put_manifest(&c, &s, repo, "v1", OCI_MANIFEST, &m)
            .await
            .status(),
        201
    );
    assert_eq!(tags_of(&c, &s, repo).await, ["v1", "v2"]);
}

#[tokio::test]
async fn deleted_manifest_can_be_pushed_again() {
    let s = TestServer::start().await;
    let c = client();
    let repo = "mgmt/again";
    let (d, m) = push_image(&c, &s, repo, "v1", 5, 1).await;
    let r = c
        .delete(s.url(&format!("/v2/{repo}/manifests/{d}")))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 202);
    assert_eq!(
        put_manifest(&c, &s, repo, "v1", OCI_MANIFEST, &m)
            .await
            .status(),
        201
    );
    let r = c
        .get(s.url(&format!("/v2/{repo}/manifests/v1")))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(hdr(&r, "docker-content-digest"), d);
}

#[tokio::test]
async fn delete_blob_is_202_and_then_it_is_404() {
    let s = TestServer::start().await;
    let c = client();
    let data = random_bytes(1000, 6);
    let d = push_blob(&c, &s, "mgmt/blob", &data).await;
    push_blob(&c, &s, "mgmt/keeper", &data).await;
    let r = c
        .delete(s.url(&format!("/v2/mgmt/blob/blobs/{d}")))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 202);
    assert_eq!(
        status_of(c.head(s.url(&format!("/v2/mgmt/blob/blobs/{d}")))).await,
        404
    );
    let r = c
        .get(s.url(&format!("/v2/mgmt/blob/blobs/{d}")))
        .send()
        .await
        .unwrap();
    expect_error(r, 404, "BLOB_UNKNOWN").await;
    // Another repository that links the same content still serves it.
    let r = c
        .get(s.url(&format!("/v2/mgmt/keeper/blobs/{d}")))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(&r.bytes().await.unwrap()[..], &data[..]);
    // A second delete finds nothing.
    let r = c
        .delete(s.url(&format!("/v2/mgmt/blob/blobs/{d}")))
        .send()
        .await
        .unwrap();
    expect_error(r, 404, "BLOB_UNKNOWN").await;
}

#[tokio::test]
async fn delete_of_unknown_content_is_404() {
    let s = TestServer::start().await;
    let c = client();
    push_image(&c, &s, "mgmt/known", "v1", 7, 1).await;
    let d = digest_of(b"never pushed");
    let r = c
        .delete(s.url(&format!("/v2/mgmt/known/manifests/{d}")))
        .send()
        .await
        .unwrap();
    expect_error(r, 404, "MANIFEST_UNKNOWN").await;
    let r = c
        .delete(s.url("/v2/mgmt/known/manifests/nosuchtag"))
        .send()
        .await
        .unwrap();
    expect_error(r, 404, "MANIFEST_UNKNOWN").await;
    let r = c
        .delete(s.url(&format!("/v2/mgmt/known/blobs/{d}")))
        .send()
        .await
        .unwrap();
    expect_error(r, 404, "BLOB_UNKNOWN").await;
    // In a repository that does not exist at all.
    let r = c
        .delete(s.url(&format!("/v2/mgmt/missing/manifests/{d}")))
        .send()
        .await
        .unwrap();
    expect_error_any(r, 404, &["NAME_UNKNOWN", "MANIFEST_UNKNOWN"]).await;
    let r = c
        .delete(s.url("/v2/mgmt/missing/manifests/v1"))
        .send()
        .await
        .unwrap();
    expect_error_any(r, 404, &["NAME_UNKNOWN", "MANIFEST_UNKNOWN"]).await;
    let r = c
        .delete(s.url(&format!("/v2/mgmt/missing/blobs/{d}")))
        .send()
        .await
        .unwrap();
    expect_error_any(r, 404, &["NAME_UNKNOWN", "BLOB_UNKNOWN"]).await;
}

#[tokio::test]
async fn delete_with_malformed_digest_is_400() {
    let s = TestServer::start().await;
    let c = client();
    push_image(&c, &s, "mgmt/bad", "v1", 8, 1).await;
    let r = c
        .delete(s.url("/v2/mgmt/bad/blobs/sha256:nothex"))
        .send()
        .await
        .unwrap();
    expect_error(r, 400, "DIGEST_INVALID").await;
}

#[tokio::test]
async fn deletes_disabled_answer_405_unsupported_and_keep_everything() {
    let s = TestServer::start_with(|cfg| cfg.storage.delete.enabled = false).await;
    let c = client();
    let repo = "mgmt/nodelete";
    let (d, m) = push_image(&c, &s, repo, "v1", 9, 1).await;
    let blob = push_blob(&c, &s, repo, b"a blob").await;
    for url in [
        format!("/v2/{repo}/manifests/{d}"),
        format!("/v2/{repo}/manifests/v1"),
        format!("/v2/{repo}/blobs/{blob}"),
    ] {
        let r = c.delete(s.url(&url)).send().await.unwrap();
        expect_error(r, 405, "UNSUPPORTED").await;
    }
    let r = c
        .get(s.url(&format!("/v2/{repo}/manifests/v1")))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.text().await.unwrap(), m);
    assert_eq!(
        status_of(c.head(s.url(&format!("/v2/{repo}/blobs/{blob}")))).await,
        200
    );
    assert_eq!(tags_of(&c, &s, repo).await, ["v1"]);
    // Pushing still works: only deletes are off.
    push_image(&c, &s, repo, "v2", 10, 1).await;
    // Cancelling an upload session is not a content delete.
    let loc = start_session(&c, &s, repo).await;
    assert_eq!(c.delete(&loc).send().await.unwrap().status(), 204);
}

#[tokio::test]
async fn read_only_mode_refuses_writes_with_405_and_serves_reads() {
    // Content and an open upload session from a writable server, then the same root
    // served read-only.
    let s = TestServer::start().await;
    let c = client();
    let repo = "mgmt/ro";
    let (d, m) = push_image(&c, &s, repo, "v1", 11, 1).await;
    let blob_data = random_bytes(300, 12);
    let blob = push_blob(&c, &s, repo, &blob_data).await;
    let r = c
        .post(s.url(&format!("/v2/{repo}/blobs/uploads/")))
        .send()
        .await
        .unwrap();
    let session = hdr(&r, "location");
    assert_eq!(
        patch_chunk(&c, &abs(&s, &session), 0, b"abc")
            .await
            .status(),
        202
    );
    let mut config = s.config.clone();
    config.storage.maintenance.readonly.enabled = true;
    let root = s.stop().await;
    let s = TestServer::start_on(root, config).await;
    let c = client();
    let loc = abs(&s, &session);
    let other = digest_of(b"new content");

    let refused: Vec<(&str, reqwest::RequestBuilder)> = vec![
        (
            "POST session",
            c.post(s.url(&format!("/v2/{repo}/blobs/uploads/"))),
        ),
        (
            "POST monolithic",
            c.post(s.url(&format!("/v2/{repo}/blobs/uploads/?digest={other}")))
                .body(b"new content".to_vec()),
        ),
        (
            "POST mount",
            c.post(s.url(&format!(
                "/v2/mgmt/elsewhere/blobs/uploads/?mount={blob}&from={repo}"
            ))),
        ),
        (
            "PATCH",
            c.patch(&loc)
                .header("content-range", "3-5")
                .body(b"def".to_vec()),
        ),
        (
            "PUT upload",
            c.put(with_query(&loc, &format!("digest={other}"))),
        ),
        ("DELETE upload", c.delete(&loc)),
        (
            "PUT manifest",
            c.put(s.url(&format!("/v2/{repo}/manifests/v2")))
                .header("content-type", OCI_MANIFEST)
                .body(m.clone()),
        ),
        (
            "DELETE manifest",
            c.delete(s.url(&format!("/v2/{repo}/manifests/{d}"))),
        ),
        (
            "DELETE tag",
            c.delete(s.url(&format!("/v2/{repo}/manifests/v1"))),
        ),
        (
            "DELETE blob",
            c.delete(s.url(&format!("/v2/{repo}/blobs/{blob}"))),
        ),
    ];
    for (what, req) in refused {
        let r = req.send().await.unwrap();
        assert_eq!(r.status(), 405, "{what}");
        expect_error(r, 405, "UNSUPPORTED").await;
    }

    // Everything reads as before, and nothing changed.
    let r = c
        .get(s.url(&format!("/v2/{repo}/manifests/v1")))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.text().await.unwrap(), m);
    let r = c
        .get(s.url(&format!("/v2/{repo}/blobs/{blob}")))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(&r.bytes().await.unwrap()[..], &blob_data[..]);
    assert_eq!(tags_of(&c, &s, repo).await, ["v1"]);
    let r = c.get(s.url("/v2/_catalog")).send().await.unwrap();
    assert_eq!(r.status(), 200);
    let r = c
        .get(s.url(&format!("/v2/{repo}/referrers/{d}")))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let r = c.get(&loc).send().await.unwrap();
    assert_eq!(r.status(), 204);
    assert_eq!(hdr(&r, "range"), "0-2");
    assert_eq!(
        status_of(c.get(s.url(&format!("/v2/mgmt/elsewhere/blobs/{blob}")))).await,
        404
    );
}
