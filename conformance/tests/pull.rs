//! Pull workflow (distribution-spec "Pull"): manifests by tag and digest, blobs whole and
//! by range, existence checks with HEAD, and 404s for anything this repository does not
//! hold.

mod common;

use common::*;
use conformance::*;

#[tokio::test]
async fn manifest_get_by_tag_returns_exact_bytes_and_headers() {
    let s = TestServer::start().await;
    let c = client();
    let (d, m) = push_image(&c, &s, "pull/img", "v1", 1, 2).await;
    let r = c
        .get(s.url("/v2/pull/img/manifests/v1"))
        .header("accept", OCI_MANIFEST)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(hdr(&r, "content-type"), OCI_MANIFEST);
    assert_eq!(hdr(&r, "docker-content-digest"), d);
    assert_eq!(hdr(&r, "content-length"), m.len().to_string());
    let body = r.bytes().await.unwrap();
    assert_eq!(&body[..], m.as_bytes());
    assert_eq!(digest_of(&body), d);
}

#[tokio::test]
async fn manifest_get_by_digest_returns_exact_bytes_and_headers() {
    let s = TestServer::start().await;
    let c = client();
    let (d, m) = push_image(&c, &s, "pull/img", "v1", 2, 1).await;
    let r = c
        .get(s.url(&format!("/v2/pull/img/manifests/{d}")))
        .header("accept", OCI_MANIFEST)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(hdr(&r, "content-type"), OCI_MANIFEST);
    assert_eq!(hdr(&r, "docker-content-digest"), d);
    assert_eq!(hdr(&r, "content-length"), m.len().to_string());
    assert_eq!(&r.bytes().await.unwrap()[..], m.as_bytes());
}

#[tokio::test]
async fn manifest_head_by_tag_and_digest_has_headers_and_no_body() {
    let s = TestServer::start().await;
    let c = client();
    let (d, m) = push_image(&c, &s, "pull/head", "latest", 3, 1).await;
    for reference in ["latest", d.as_str()] {
        let r = c
            .head(s.url(&format!("/v2/pull/head/manifests/{reference}")))
            .header("accept", OCI_MANIFEST)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200, "HEAD {reference}");
        assert_eq!(hdr(&r, "content-type"), OCI_MANIFEST);
        assert_eq!(hdr(&r, "docker-content-digest"), d);
        assert_eq!(hdr(&r, "content-length"), m.len().to_string());
        assert!(r.bytes().await.unwrap().is_empty(), "HEAD has no body");
    }
}

#[tokio::test]
async fn manifest_bytes_are_served_exactly_as_pushed() {
    // Whitespace, key order and a trailing newline are the client's: the registry must
    // neither reformat them nor compute the digest over anything else.
    let s = TestServer::start().await;
    let c = client();
    let cfg = push_blob(&c, &s, "pull/exact", b"{}").await;
    let m = format!(
        "{{\n  \"schemaVersion\" : 2,\n  \"config\": {{\"size\": 2, \"digest\": \"{cfg}\",\n    \"mediaType\": \"{OCI_CONFIG}\"}},\n  \"mediaType\": \"{OCI_MANIFEST}\",\n  \"layers\": [ ]\n}}\n"
    );
    let d = digest_of(m.as_bytes());
    let r = put_manifest(&c, &s, "pull/exact", "fmt", OCI_MANIFEST, &m).await;
    assert_eq!(r.status(), 201);
    assert_eq!(hdr(&r, "docker-content-digest"), d);
    for reference in ["fmt", d.as_str()] {
        let r = c
            .get(s.url(&format!("/v2/pull/exact/manifests/{reference}")))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
        assert_eq!(hdr(&r, "docker-content-digest"), d);
        assert_eq!(r.text().await.unwrap(), m);
    }
}

#[tokio::test]
async fn manifest_content_type_is_the_stored_media_type() {
    let s = TestServer::start().await;
    let c = client();
    let (d, m) = push_image(&c, &s, "pull/types", "img", 4, 1).await;
    let index = format!(
        r#"{{"schemaVersion":2,"mediaType":"{OCI_INDEX}","manifests":[{{"mediaType":"{OCI_MANIFEST}","digest":"{d}","size":{}}}]}}"#,
        m.len()
    );
    let r = put_manifest(&c, &s, "pull/types", "idx", OCI_INDEX, &index).await;
    assert_eq!(r.status(), 201);
    // Whatever the client accepts, the Content-Type says what the bytes are.
    let r = c
        .get(s.url("/v2/pull/types/manifests/idx"))
        .header("accept", format!("{OCI_INDEX}, {OCI_MANIFEST}"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(hdr(&r, "content-type"), OCI_INDEX);
    assert_eq!(r.text().await.unwrap(), index);
    let r = c
        .head(s.url("/v2/pull/types/manifests/img"))
        .send()
        .await
        .unwrap();
    assert_eq!(hdr(&r, "content-type"), OCI_MANIFEST);
}

#[tokio::test]
async fn unknown_manifest_tag_is_404_manifest_unknown() {
    let s = TestServer::start().await;
    let c = client();
    push_image(&c, &s, "pull/known", "v1", 5, 1).await;
    let r = c
        .get(s.url("/v2/pull/known/manifests/nope"))
        .send()
        .await
        .unwrap();
    expect_error(r, 404, "MANIFEST_UNKNOWN").await;
    let r = c
        .head(s.url("/v2/pull/known/manifests/nope"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 404);
}

#[tokio::test]
async fn unknown_manifest_digest_is_404_manifest_unknown() {
    let s = TestServer::start().await;
    let c = client();
    push_image(&c, &s, "pull/known", "v1", 6, 1).await;
    let d = digest_of(b"no such manifest");
    let r = c
        .get(s.url(&format!("/v2/pull/known/manifests/{d}")))
        .send()
        .await
        .unwrap();
    expect_error(r, 404, "MANIFEST_UNKNOWN").await;
    let r = c
        .head(s.url(&format!("/v2/pull/known/manifests/{d}")))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 404);
}

#[tokio::test]
async fn manifest_in_unknown_repository_is_404() {
    let s = TestServer::start().await;
    let c = client();
    let r = c
        .get(s.url("/v2/no/such/repo/manifests/latest"))
        .send()
        .await
        .unwrap();
    expect_error_any(r, 404, &["NAME_UNKNOWN", "MANIFEST_UNKNOWN"]).await;
    let d = digest_of(b"x");
    let r = c
        .get(s.url(&format!("/v2/no/such/repo/manifests/{d}")))
        .send()
        .await
        .unwrap();
    expect_error_any(r, 404, &["NAME_UNKNOWN", "MANIFEST_UNKNOWN"]).await;
}

#[tokio::test]
async fn manifest_pushed_to_another_repository_is_404_here() {
    let s = TestServer::start().await;
    let c = client();
    let (d, _) = push_image(&c, &s, "pull/owner", "v1", 7, 1).await;
    push_image(&c, &s, "pull/other", "v1", 8, 1).await;
    let r = c
        .get(s.url(&format!("/v2/pull/other/manifests/{d}")))
        .send()
        .await
        .unwrap();
    expect_error(r, 404, "MANIFEST_UNKNOWN").await;
    let r = c
        .head(s.url(&format!("/v2/pull/other/manifests/{d}")))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 404);
}

#[tokio::test]
async fn blob_get_returns_content_and_headers() {
    let s = TestServer::start().await;
    let c = client();
    let data = random_bytes(5000, 11);
    let d = push_blob(&c, &s, "pull/blob", &data).await;
    let r = c
        .get(s.url(&format!("/v2/pull/blob/blobs/{d}")))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(hdr(&r, "docker-content-digest"), d);
    assert_eq!(hdr(&r, "content-length"), "5000");
    assert_eq!(hdr(&r, "accept-ranges"), "bytes");
    let body = r.bytes().await.unwrap();
    assert_eq!(&body[..], &data[..]);
}

#[tokio::test]
async fn blob_head_has_headers_and_no_body() {
    let s = TestServer::start().await;
    let c = client();
    let data = random_bytes(3333, 12);
    let d = push_blob(&c, &s, "pull/blob", &data).await;
    let r = c
        .head(s.url(&format!("/v2/pull/blob/blobs/{d}")))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(hdr(&r, "docker-content-digest"), d);
    assert_eq!(hdr(&r, "content-length"), "3333");
    assert_eq!(hdr(&r, "accept-ranges"), "bytes");
    assert!(r.bytes().await.unwrap().is_empty());
}

#[tokio::test]
async fn large_blob_streams_back_intact() {
    let s = TestServer::start().await;
    let c = client();
    let data = random_bytes(3 * 1024 * 1024 + 17, 13);
    let d = push_blob(&c, &s, "pull/large", &data).await;
    let r = c
        .get(s.url(&format!("/v2/pull/large/blobs/{d}")))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let body = r.bytes().await.unwrap();
    assert_eq!(body.len(), data.len());
    assert_eq!(digest_of(&body), d);
}

#[tokio::test]
async fn blob_range_request_is_206_with_content_range() {
    let s = TestServer::start().await;
    let c = client();
    let data = random_bytes(2048, 14);
    let d = push_blob(&c, &s, "pull/range", &data).await;
    let r = c
        .get(s.url(&format!("/v2/pull/range/blobs/{d}")))
        .header("range", "bytes=10-19")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 206);
    assert_eq!(hdr(&r, "content-range"), "bytes 10-19/2048");
    assert_eq!(hdr(&r, "content-length"), "10");
    assert_eq!(&r.bytes().await.unwrap()[..], &data[10..20]);
}

#[tokio::test]
async fn blob_range_across_read_buffers_is_exact() {
    // A range that starts and ends away from any read-buffer boundary of the server.
    let s = TestServer::start().await;
    let c = client();
    let data = random_bytes(700 * 1024, 15);
    let d = push_blob(&c, &s, "pull/range", &data).await;
    let (a, b) = (262_100usize, 530_001usize);
    let r = c
        .get(s.url(&format!("/v2/pull/range/blobs/{d}")))
        .header("range", format!("bytes={a}-{b}"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 206);
    assert_eq!(
        hdr(&r, "content-range"),
        format!("bytes {a}-{b}/{}", data.len())
    );
    assert_eq!(&r.bytes().await.unwrap()[..], &data[a..=b]);
}

#[tokio::test]
async fn blob_open_ended_range_returns_the_rest() {
    let s = TestServer::start().await;
    let c = client();
    let data = random_bytes(1000, 16);
    let d = push_blob(&c, &s, "pull/range", &data).await;
    let r = c
        .get(s.url(&format!("/v2/pull/range/blobs/{d}")))
        .header("range", "bytes=900-")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 206);
    assert_eq!(hdr(&r, "content-range"), "bytes 900-999/1000");
    assert_eq!(&r.bytes().await.unwrap()[..], &data[900..]);
}

#[tokio::test]
async fn blob_suffix_range_returns_the_last_bytes() {
    let s = TestServer::start().await;
    let c = client();
    let data = random_bytes(1000, 17);
    let d = push_blob(&c, &s, "pull/range", &data).await;
    let r = c
        .get(s.url(&format!("/v2/pull/range/blobs/{d}")))
        .header("range", "bytes=-100")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 206);
    assert_eq!(hdr(&r, "content-range"), "bytes 900-999/1000");
    assert_eq!(hdr(&r, "content-length"), "100");
    assert_eq!(&r.bytes().await.unwrap()[..], &data[900..]);
}

#[tokio::test]
async fn blob_range_past_the_end_is_clamped() {
    let s = TestServer::start().await;
    let c = client();
    let data = random_bytes(1000, 18);
    let d = push_blob(&c, &s, "pull/range", &data).await;
    let r = c
        .get(s.url(&format!("/v2/pull/range/blobs/{d}")))
        .header("range", "bytes=990-5000")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 206);
    assert_eq!(hdr(&r, "content-range"), "bytes 990-999/1000");
    assert_eq!(&r.bytes().await.unwrap()[..], &data[990..]);
}

#[tokio::test]
async fn blob_unsatisfiable_range_is_416_with_content_range_star() {
    let s = TestServer::start().await;
    let c = client();
    let data = random_bytes(1000, 19);
    let d = push_blob(&c, &s, "pull/range", &data).await;
    for range in ["bytes=1000-", "bytes=5000-6000", "bytes=-0"] {
        let r = c
            .get(s.url(&format!("/v2/pull/range/blobs/{d}")))
            .header("range", range)
            .send()
            .await
            .unwrap();
        assert_eq!(hdr(&r, "content-range"), "bytes */1000", "{range}");
        expect_error(r, 416, "RANGE_INVALID").await;
    }
}

#[tokio::test]
async fn unknown_blob_is_404_blob_unknown() {
    let s = TestServer::start().await;
    let c = client();
    push_blob(&c, &s, "pull/blobs", b"something").await;
    let d = digest_of(b"nothing");
    let r = c
        .get(s.url(&format!("/v2/pull/blobs/blobs/{d}")))
        .send()
        .await
        .unwrap();
    expect_error(r, 404, "BLOB_UNKNOWN").await;
    let r = c
        .head(s.url(&format!("/v2/pull/blobs/blobs/{d}")))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 404);
    let r = c
        .get(s.url(&format!("/v2/pull/blobs/blobs/{d}")))
        .header("range", "bytes=0-1")
        .send()
        .await
        .unwrap();
    expect_error(r, 404, "BLOB_UNKNOWN").await;
}

#[tokio::test]
async fn blob_pushed_to_another_repository_is_404_here() {
    // The pool holds the bytes, but this repository never linked them.
    let s = TestServer::start().await;
    let c = client();
    let data = random_bytes(100, 20);
    let d = push_blob(&c, &s, "pull/owner", &data).await;
    push_blob(&c, &s, "pull/stranger", b"other content").await;
    assert!(pool_data(s.root(), &d).exists());
    let url = s.url(&format!("/v2/pull/stranger/blobs/{d}"));
    expect_error(c.get(&url).send().await.unwrap(), 404, "BLOB_UNKNOWN").await;
    assert_eq!(c.head(&url).send().await.unwrap().status(), 404);
    let r = c
        .get(&url)
        .header("range", "bytes=0-9")
        .send()
        .await
        .unwrap();
    expect_error(r, 404, "BLOB_UNKNOWN").await;
    // Still served where it was pushed.
    let r = c
        .get(s.url(&format!("/v2/pull/owner/blobs/{d}")))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
}

#[tokio::test]
async fn blob_in_unknown_repository_is_404() {
    let s = TestServer::start().await;
    let c = client();
    let d = push_blob(&c, &s, "pull/exists", b"abc").await;
    let r = c
        .get(s.url(&format!("/v2/pull/missing/blobs/{d}")))
        .send()
        .await
        .unwrap();
    expect_error_any(r, 404, &["BLOB_UNKNOWN", "NAME_UNKNOWN"]).await;
}

#[tokio::test]
async fn manifest_digest_is_not_served_as_a_blob_of_another_repository() {
    let s = TestServer::start().await;
    let c = client();
    let (d, _) = push_image(&c, &s, "pull/m", "v1", 21, 1).await;
    let r = c
        .get(s.url(&format!("/v2/pull/n/blobs/{d}")))
        .send()
        .await
        .unwrap();
    expect_error_any(r, 404, &["BLOB_UNKNOWN", "NAME_UNKNOWN"]).await;
}

#[tokio::test]
async fn blob_with_malformed_digest_is_400_digest_invalid() {
    let s = TestServer::start().await;
    let c = client();
    push_blob(&c, &s, "pull/bad", b"abc").await;
    for d in [
        "sha256:zz",
        "sha256:abc",
        "md5:0123456789abcdef0123456789abcdef",
    ] {
        let r = c
            .get(s.url(&format!("/v2/pull/bad/blobs/{d}")))
            .send()
            .await
            .unwrap();
        expect_error(r, 400, "DIGEST_INVALID").await;
    }
}

#[tokio::test]
async fn empty_blob_is_served_with_zero_length() {
    let s = TestServer::start().await;
    let c = client();
    let d = push_blob(&c, &s, "pull/empty", b"").await;
    assert_eq!(
        d,
        "sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
    );
    let r = c
        .get(s.url(&format!("/v2/pull/empty/blobs/{d}")))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(hdr(&r, "content-length"), "0");
    assert!(r.bytes().await.unwrap().is_empty());
    let r = c
        .head(s.url(&format!("/v2/pull/empty/blobs/{d}")))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(hdr(&r, "content-length"), "0");
}

#[tokio::test]
async fn api_base_answers_200_with_version_header() {
    let s = TestServer::start().await;
    let c = client();
    for path in ["/v2/", "/v2"] {
        let r = c.get(s.url(path)).send().await.unwrap();
        assert_eq!(r.status(), 200, "GET {path}");
        assert_eq!(hdr(&r, "docker-distribution-api-version"), "registry/2.0");
        let r = c.head(s.url(path)).send().await.unwrap();
        assert_eq!(r.status(), 200, "HEAD {path}");
    }
}

#[tokio::test]
async fn manifest_without_media_type_is_served_as_the_type_it_has() {
    // `mediaType` is only RECOMMENDED in OCI manifests; the Content-Type still names
    // what the bytes are.
    let s = TestServer::start().await;
    let c = client();
    let cfg = push_blob(&c, &s, "pull/nomt", b"{}").await;
    let m = format!(
        r#"{{"schemaVersion":2,"config":{{"mediaType":"{OCI_CONFIG}","digest":"{cfg}","size":2}},"layers":[]}}"#
    );
    let md = digest_of(m.as_bytes());
    assert_eq!(
        put_manifest(&c, &s, "pull/nomt", "img", OCI_MANIFEST, &m)
            .await
            .status(),
        201
    );
    let index = format!(
        r#"{{"schemaVersion":2,"manifests":[{{"mediaType":"{OCI_MANIFEST}","digest":"{md}","size":{}}}]}}"#,
        m.len()
    );
    assert_eq!(
        put_manifest(&c, &s, "pull/nomt", "idx", OCI_INDEX, &index)
            .await
            .status(),
        201
    );
    for (reference, ct, body) in [("img", OCI_MANIFEST, &m), ("idx", OCI_INDEX, &index)] {
        let r = c
            .get(s.url(&format!("/v2/pull/nomt/manifests/{reference}")))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
        assert_eq!(hdr(&r, "content-type"), ct, "{reference}");
        assert_eq!(&r.text().await.unwrap(), body);
    }
}

#[tokio::test]
async fn manifest_pushed_by_sha512_digest_is_served_by_it() {
    use sha2::Digest as _;
    let s = TestServer::start().await;
    let c = client();
    let cfg = push_blob(&c, &s, "pull/sha512", b"{}").await;
    let m = image_manifest((&cfg, 2), &[], "");
    let d = format!("sha512:{}", hex::encode(sha2::Sha512::digest(m.as_bytes())));
    let r = put_manifest(&c, &s, "pull/sha512", &d, OCI_MANIFEST, &m).await;
    assert_eq!(r.status(), 201);
    assert_eq!(hdr(&r, "docker-content-digest"), d);
    let r = c
        .get(s.url(&format!("/v2/pull/sha512/manifests/{d}")))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(hdr(&r, "docker-content-digest"), d);
    assert_eq!(r.text().await.unwrap(), m);
}

#[tokio::test]
async fn layer_digest_is_not_a_manifest() {
    let s = TestServer::start().await;
    let c = client();
    let layer = push_blob(&c, &s, "pull/layer", b"{\"schemaVersion\":2}").await;
    let r = c
        .get(s.url(&format!("/v2/pull/layer/manifests/{layer}")))
        .send()
        .await
        .unwrap();
    expect_error(r, 404, "MANIFEST_UNKNOWN").await;
}
