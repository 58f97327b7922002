//! Push workflow (distribution-spec "Push"): upload sessions (monolithic, single POST,
//! chunked, streamed, resumed after a restart), cross-repository mounts, manifest pushes
//! and every way they can be refused.

mod common;

use std::time::Duration;

use common::*;
use conformance::*;
use sha2::Digest as _;

/// A body sent with chunked transfer encoding (no Content-Length), in pieces of `piece`
/// bytes.
fn streamed_body(data: &[u8], piece: usize) -> reqwest::Body {
    let parts: Vec<Result<Vec<u8>, std::io::Error>> =
        data.chunks(piece).map(|p| Ok(p.to_vec())).collect();
    reqwest::Body::wrap_stream(futures::stream::iter(parts))
}

fn is_uuid(s: &str) -> bool {
    let parts: Vec<&str> = s.split('-').collect();
    parts.iter().map(|p| p.len()).collect::<Vec<_>>() == [8, 4, 4, 4, 12]
        && parts
            .iter()
            .all(|p| p.bytes().all(|b| b.is_ascii_hexdigit()))
}

async fn blob_status(c: &reqwest::Client, s: &TestServer, repo: &str, d: &str) -> u16 {
    c.head(s.url(&format!("/v2/{repo}/blobs/{d}")))
        .send()
        .await
        .unwrap()
        .status()
        .as_u16()
}

async fn blob_body(c: &reqwest::Client, s: &TestServer, repo: &str, d: &str) -> Vec<u8> {
    let r = c
        .get(s.url(&format!("/v2/{repo}/blobs/{d}")))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200, "GET blob {d} in {repo}");
    r.bytes().await.unwrap().to_vec()
}

// ---------------------------------------------------------------- upload sessions

#[tokio::test]
async fn post_starts_session_with_location_uuid_and_range() {
    let s = TestServer::start().await;
    let c = client();
    let r = c
        .post(s.url("/v2/push/sess/blobs/uploads/"))
        .header("content-length", "0")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 202);
    let loc = hdr(&r, "location");
    let id = hdr(&r, "docker-upload-uuid");
    assert!(is_uuid(&id), "Docker-Upload-UUID {id:?} is a UUID");
    assert!(loc.contains(&id), "Location {loc:?} carries the session id");
    assert!(
        loc.contains("/v2/push/sess/blobs/uploads/"),
        "Location {loc:?} is a session of this repository"
    );
    assert_eq!(hdr(&r, "range"), "0-0");
    // Two sessions are two ids.
    let r2 = c
        .post(s.url("/v2/push/sess/blobs/uploads/"))
        .send()
        .await
        .unwrap();
    assert_eq!(r2.status(), 202);
    assert_ne!(hdr(&r2, "docker-upload-uuid"), id);
}

#[tokio::test]
async fn post_then_put_creates_the_blob() {
    let s = TestServer::start().await;
    let c = client();
    let data = random_bytes(4096, 1);
    let d = digest_of(&data);
    let loc = start_session(&c, &s, "push/mono").await;
    let r = c
        .put(with_query(&loc, &format!("digest={d}")))
        .header("content-type", "application/octet-stream")
        .body(data.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201);
    assert_eq!(hdr(&r, "docker-content-digest"), d);
    let blob_loc = hdr(&r, "location");
    assert!(
        blob_loc.ends_with(&format!("/v2/push/mono/blobs/{d}")),
        "{blob_loc}"
    );
    let r = c.get(abs(&s, &blob_loc)).send().await.unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(&r.bytes().await.unwrap()[..], &data[..]);
    // The session is over.
    expect_error(
        c.get(&loc).send().await.unwrap(),
        404,
        "BLOB_UPLOAD_UNKNOWN",
    )
    .await;
}

#[tokio::test]
async fn single_post_with_digest_creates_the_blob() {
    let s = TestServer::start().await;
    let c = client();
    let data = random_bytes(10_000, 2);
    let d = digest_of(&data);
    let r = c
        .post(s.url(&format!("/v2/push/single/blobs/uploads/?digest={d}")))
        .header("content-type", "application/octet-stream")
        .body(data.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201);
    assert_eq!(hdr(&r, "docker-content-digest"), d);
    let blob_loc = hdr(&r, "location");
    assert!(
        blob_loc.ends_with(&format!("/v2/push/single/blobs/{d}")),
        "{blob_loc}"
    );
    assert_eq!(blob_body(&c, &s, "push/single", &d).await, data);
    // Nothing of the private session is left behind.
    assert!(children(&repo_dir(s.root(), "push/single").join("_uploads")).is_empty());
}

#[tokio::test]
async fn same_blob_pushed_twice_is_accepted_both_times() {
    let s = TestServer::start().await;
    let c = client();
    let data = random_bytes(500, 3);
    let d = push_blob(&c, &s, "push/twice", &data).await;
    assert_eq!(push_blob(&c, &s, "push/twice", &data).await, d);
    assert_eq!(push_blob(&c, &s, "push/other", &data).await, d);
    assert_eq!(blob_body(&c, &s, "push/twice", &d).await, data);
    assert_eq!(blob_body(&c, &s, "push/other", &d).await, data);
}

#[tokio::test]
async fn sha512_blob_digest_is_accepted() {
    let s = TestServer::start().await;
    let c = client();
    let data = random_bytes(777, 4);
    let d = format!("sha512:{}", hex::encode(sha2::Sha512::digest(&data)));
    let r = c
        .post(s.url(&format!("/v2/push/sha512/blobs/uploads/?digest={d}")))
        .body(data.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201);
    assert_eq!(hdr(&r, "docker-content-digest"), d);
    let r = c
        .get(s.url(&format!("/v2/push/sha512/blobs/{d}")))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(hdr(&r, "docker-content-digest"), d);
    assert_eq!(&r.bytes().await.unwrap()[..], &data[..]);
}

#[tokio::test]
async fn chunked_patches_in_order_grow_the_range_then_put_completes() {
    let s = TestServer::start().await;
    let c = client();
    let data = random_bytes(3000, 5);
    let d = digest_of(&data);
    let mut loc = start_session(&c, &s, "push/chunks").await;
    let id = loc.rsplit('/').next().unwrap().to_owned();
    for (a, b) in [(0usize, 1000usize), (1000, 2000), (2000, 3000)] {
        let r = patch_chunk(&c, &loc, a, &data[a..b]).await;
        assert_eq!(r.status(), 202, "chunk {a}-{}", b - 1);
        assert_eq!(hdr(&r, "range"), format!("0-{}", b - 1));
        assert_eq!(hdr(&r, "docker-upload-uuid"), id);
        let next = hdr(&r, "location");
        assert!(next.contains(&id), "Location {next:?}");
        loc = abs(&s, &next);
    }
    let r = c
        .put(with_query(&loc, &format!("digest={d}")))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201);
    assert_eq!(hdr(&r, "docker-content-digest"), d);
    assert!(hdr(&r, "location").ends_with(&format!("/v2/push/chunks/blobs/{d}")));
    assert_eq!(blob_body(&c, &s, "push/chunks", &d).await, data);
}

/// `storage.filesystem.directwrites`: aligned 4 MiB blocks go past the page cache,
/// unaligned heads and tails through it. Chunks that start and end off the 4 KiB grid,
/// and a streamed body spanning several direct blocks, must come back byte for byte.
#[tokio::test]
async fn direct_writes_keep_unaligned_chunks_byte_exact() {
    let s = TestServer::start_with(|c| c.storage.filesystem.directwrites = true).await;
    let c = client();
    let data = random_bytes(14 * 1024 * 1024 + 4093, 21);
    let d = digest_of(&data);
    let mut loc = start_session(&c, &s, "push/direct").await;
    let cuts = [0usize, 3, 4096 + 5, 5 * 1024 * 1024 + 1, 9 * 1024 * 1024];
    for w in cuts.windows(2) {
        let r = patch_chunk(&c, &loc, w[0], &data[w[0]..w[1]]).await;
        assert_eq!(r.status(), 202, "chunk at {}", w[0]);
        assert_eq!(hdr(&r, "range"), format!("0-{}", w[1] - 1));
        loc = abs(&s, &hdr(&r, "location"));
    }
    let rest = cuts[cuts.len() - 1];
    let r = c
        .put(with_query(&loc, &format!("digest={d}")))
        .header("content-type", "application/octet-stream")
        .body(streamed_body(&data[rest..], 100_003))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201);
    let got = blob_body(&c, &s, "push/direct", &d).await;
    assert_eq!(got.len(), data.len());
    assert!(
        got == data,
        "the blob read back differs from what was pushed"
    );
}

#[tokio::test]
async fn patch_out_of_order_chunk_is_416() {
    let s = TestServer::start().await;
    let c = client();
    let data = random_bytes(30, 6);
    let loc = start_session(&c, &s, "push/order").await;
    assert_eq!(patch_chunk(&c, &loc, 0, &data[0..10]).await.status(), 202);
    let r = patch_chunk(&c, &loc, 20, &data[20..30]).await;
    expect_error(r, 416, "RANGE_INVALID").await;
    // Nothing of the refused chunk was kept; the status tells where to resume.
    let r = c.get(&loc).send().await.unwrap();
    assert_eq!(r.status(), 204);
    assert_eq!(hdr(&r, "range"), "0-9");
    assert_eq!(patch_chunk(&c, &loc, 10, &data[10..20]).await.status(), 202);
    assert_eq!(patch_chunk(&c, &loc, 20, &data[20..30]).await.status(), 202);
    let d = digest_of(&data);
    let r = c
        .put(with_query(&loc, &format!("digest={d}")))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201);
    assert_eq!(blob_body(&c, &s, "push/order", &d).await, data);
}

#[tokio::test]
async fn patch_overlapping_chunk_is_416() {
    let s = TestServer::start().await;
    let c = client();
    let data = random_bytes(20, 7);
    let loc = start_session(&c, &s, "push/overlap").await;
    assert_eq!(patch_chunk(&c, &loc, 0, &data[0..10]).await.status(), 202);
    let r = patch_chunk(&c, &loc, 5, &data[5..15]).await;
    expect_error(r, 416, "RANGE_INVALID").await;
    let r = c.get(&loc).send().await.unwrap();
    assert_eq!(hdr(&r, "range"), "0-9");
    assert_eq!(patch_chunk(&c, &loc, 10, &data[10..20]).await.status(), 202);
    let d = digest_of(&data);
    let r = c
        .put(with_query(&loc, &format!("digest={d}")))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201);
    assert_eq!(blob_body(&c, &s, "push/overlap", &d).await, data);
}

#[tokio::test]
async fn first_chunk_not_starting_at_zero_is_416() {
    let s = TestServer::start().await;
    let c = client();
    let loc = start_session(&c, &s, "push/first").await;
    let r = patch_chunk(&c, &loc, 1, b"abc").await;
    expect_error(r, 416, "RANGE_INVALID").await;
    let r = c.get(&loc).send().await.unwrap();
    assert_eq!(r.status(), 204);
    assert_eq!(hdr(&r, "range"), "0-0");
}

#[tokio::test]
async fn patch_without_content_range_streams_and_appends() {
    let s = TestServer::start().await;
    let c = client();
    let data = random_bytes(600 * 1024, 8);
    let d = digest_of(&data);
    let loc = start_session(&c, &s, "push/stream").await;
    let half = data.len() / 2;
    for (a, b) in [(0, half), (half, data.len())] {
        // A streamed body: chunked transfer encoding, no Content-Length, no Content-Range.
        let r = c
            .patch(&loc)
            .header("content-type", "application/octet-stream")
            .body(streamed_body(&data[a..b], 64 * 1024))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 202);
        assert_eq!(hdr(&r, "range"), format!("0-{}", b - 1));
    }
    let r = c
        .put(with_query(&loc, &format!("digest={d}")))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201);
    assert_eq!(blob_body(&c, &s, "push/stream", &d).await, data);
}

#[tokio::test]
async fn get_upload_status_is_204_with_range_and_location() {
    let s = TestServer::start().await;
    let c = client();
    let loc = start_session(&c, &s, "push/status").await;
    let id = loc.rsplit('/').next().unwrap().to_owned();
    let r = c.get(&loc).send().await.unwrap();
    assert_eq!(r.status(), 204);
    assert_eq!(hdr(&r, "range"), "0-0");
    assert_eq!(patch_chunk(&c, &loc, 0, &[7u8; 123]).await.status(), 202);
    let r = c.get(&loc).send().await.unwrap();
    assert_eq!(r.status(), 204);
    assert_eq!(hdr(&r, "range"), "0-122");
    assert!(hdr(&r, "location").contains(&id));
    assert_eq!(hdr(&r, "docker-upload-uuid"), id);
    assert!(r.bytes().await.unwrap().is_empty());
}

#[tokio::test]
async fn put_with_final_chunk_completes_the_upload() {
    let s = TestServer::start().await;
    let c = client();
    let data = random_bytes(2000, 9);
    let d = digest_of(&data);
    // Final chunk with a Content-Range.
    let loc = start_session(&c, &s, "push/final").await;
    assert_eq!(patch_chunk(&c, &loc, 0, &data[..1500]).await.status(), 202);
    let r = c
        .put(with_query(&loc, &format!("digest={d}")))
        .header("content-type", "application/octet-stream")
        .header("content-range", "1500-1999")
        .body(data[1500..].to_vec())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201);
    assert_eq!(hdr(&r, "docker-content-digest"), d);
    assert_eq!(blob_body(&c, &s, "push/final", &d).await, data);
    // Final chunk without a Content-Range.
    let data2 = random_bytes(2000, 10);
    let d2 = digest_of(&data2);
    let loc = start_session(&c, &s, "push/final").await;
    assert_eq!(patch_chunk(&c, &loc, 0, &data2[..700]).await.status(), 202);
    let r = c
        .put(with_query(&loc, &format!("digest={d2}")))
        .header("content-type", "application/octet-stream")
        .body(data2[700..].to_vec())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201);
    assert_eq!(blob_body(&c, &s, "push/final", &d2).await, data2);
}

#[tokio::test]
async fn put_final_chunk_out_of_order_is_416() {
    let s = TestServer::start().await;
    let c = client();
    let data = random_bytes(100, 11);
    let d = digest_of(&data);
    let loc = start_session(&c, &s, "push/finalorder").await;
    assert_eq!(patch_chunk(&c, &loc, 0, &data[..50]).await.status(), 202);
    let r = c
        .put(with_query(&loc, &format!("digest={d}")))
        .header("content-range", "60-99")
        .body(data[60..].to_vec())
        .send()
        .await
        .unwrap();
    expect_error(r, 416, "RANGE_INVALID").await;
    assert_eq!(blob_status(&c, &s, "push/finalorder", &d).await, 404);
    let r = c.get(&loc).send().await.unwrap();
    assert_eq!(r.status(), 204);
    assert_eq!(hdr(&r, "range"), "0-49");
}

#[tokio::test]
async fn delete_session_is_204_then_it_is_unknown() {
    let s = TestServer::start().await;
    let c = client();
    let loc = start_session(&c, &s, "push/cancel").await;
    assert_eq!(patch_chunk(&c, &loc, 0, b"partial").await.status(), 202);
    let r = c.delete(&loc).send().await.unwrap();
    assert_eq!(r.status(), 204);
    expect_error(
        c.get(&loc).send().await.unwrap(),
        404,
        "BLOB_UPLOAD_UNKNOWN",
    )
    .await;
    let r = patch_chunk(&c, &loc, 7, b"more").await;
    expect_error(r, 404, "BLOB_UPLOAD_UNKNOWN").await;
    let d = digest_of(b"partial");
    let r = c
        .put(with_query(&loc, &format!("digest={d}")))
        .send()
        .await
        .unwrap();
    expect_error(r, 404, "BLOB_UPLOAD_UNKNOWN").await;
    expect_error(
        c.delete(&loc).send().await.unwrap(),
        404,
        "BLOB_UPLOAD_UNKNOWN",
    )
    .await;
    assert!(children(&repo_dir(s.root(), "push/cancel").join("_uploads")).is_empty());
}

#[tokio::test]
async fn unknown_or_garbage_upload_id_is_404_blob_upload_unknown() {
    let s = TestServer::start().await;
    let c = client();
    start_session(&c, &s, "push/ids").await;
    let d = digest_of(b"x");
    for id in ["6f1c2f3e-0000-4000-8000-000000000000", "not-a-uuid", "0"] {
        let loc = s.url(&format!("/v2/push/ids/blobs/uploads/{id}"));
        expect_error(
            c.get(&loc).send().await.unwrap(),
            404,
            "BLOB_UPLOAD_UNKNOWN",
        )
        .await;
        let r = patch_chunk(&c, &loc, 0, b"x").await;
        expect_error(r, 404, "BLOB_UPLOAD_UNKNOWN").await;
        let r = c.patch(&loc).body(b"x".to_vec()).send().await.unwrap();
        expect_error(r, 404, "BLOB_UPLOAD_UNKNOWN").await;
        let r = c
            .put(with_query(&loc, &format!("digest={d}")))
            .body(b"x".to_vec())
            .send()
            .await
            .unwrap();
        expect_error(r, 404, "BLOB_UPLOAD_UNKNOWN").await;
        expect_error(
            c.delete(&loc).send().await.unwrap(),
            404,
            "BLOB_UPLOAD_UNKNOWN",
        )
        .await;
    }
    // Ids a URL library would normalize away, sent as they are.
    for id in ["..", "%2e%2e", "..%2f..%2fx"] {
        let path = format!("/v2/push/ids/blobs/uploads/{id}");
        for method in ["GET", "PATCH", "DELETE"] {
            raw_get(&s, method, &path)
                .await
                .check_error(404, &["BLOB_UPLOAD_UNKNOWN"]);
        }
        raw_get(&s, "PUT", &format!("{path}?digest={d}"))
            .await
            .check_error(404, &["BLOB_UPLOAD_UNKNOWN"]);
    }
    assert_eq!(blob_status(&c, &s, "push/ids", &d).await, 404);
}

#[tokio::test]
async fn upload_session_belongs_to_its_repository() {
    let s = TestServer::start().await;
    let c = client();
    let loc = start_session(&c, &s, "push/mine").await;
    let id = loc.rsplit('/').next().unwrap().to_owned();
    push_blob(&c, &s, "push/theirs", b"exists").await;
    let foreign = s.url(&format!("/v2/push/theirs/blobs/uploads/{id}"));
    expect_error(
        c.get(&foreign).send().await.unwrap(),
        404,
        "BLOB_UPLOAD_UNKNOWN",
    )
    .await;
    let r = patch_chunk(&c, &foreign, 0, b"abc").await;
    expect_error(r, 404, "BLOB_UPLOAD_UNKNOWN").await;
    let d = digest_of(b"abc");
    let r = c
        .put(with_query(&foreign, &format!("digest={d}")))
        .body(b"abc".to_vec())
        .send()
        .await
        .unwrap();
    expect_error(r, 404, "BLOB_UPLOAD_UNKNOWN").await;
    expect_error(
        c.delete(&foreign).send().await.unwrap(),
        404,
        "BLOB_UPLOAD_UNKNOWN",
    )
    .await;
    // The session is untouched in its own repository.
    let r = c.get(&loc).send().await.unwrap();
    assert_eq!(r.status(), 204);
    assert_eq!(hdr(&r, "range"), "0-0");
    let r = c
        .put(with_query(&loc, &format!("digest={d}")))
        .body(b"abc".to_vec())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201);
    assert_eq!(blob_status(&c, &s, "push/theirs", &d).await, 404);
}

#[tokio::test]
async fn put_with_mismatched_digest_is_400_and_stores_nothing() {
    let s = TestServer::start().await;
    let c = client();
    let data = random_bytes(1000, 12);
    let actual = digest_of(&data);
    let claimed = digest_of(b"something else entirely");
    let loc = start_session(&c, &s, "push/mismatch").await;
    let r = c
        .put(with_query(&loc, &format!("digest={claimed}")))
        .body(data.clone())
        .send()
        .await
        .unwrap();
    expect_error(r, 400, "DIGEST_INVALID").await;
    for d in [&claimed, &actual] {
        assert_eq!(blob_status(&c, &s, "push/mismatch", d).await, 404);
        assert!(!pool_data(s.root(), d).exists(), "{d} is not in the pool");
        let hex = d.split(':').nth(1).unwrap();
        assert!(
            files_containing(&s.root().join("docker/registry/v2/blobs"), hex).is_empty(),
            "nothing in the pool for {d}"
        );
        assert!(
            files_containing(&repo_dir(s.root(), "push/mismatch"), hex).is_empty(),
            "no link for {d}"
        );
    }
    // Not even in the session: the refused bytes are gone.
    assert!(children(&repo_dir(s.root(), "push/mismatch").join("_uploads")).is_empty());
}

#[tokio::test]
async fn single_post_with_mismatched_digest_is_400_and_stores_nothing() {
    let s = TestServer::start().await;
    let c = client();
    let data = random_bytes(1000, 13);
    let actual = digest_of(&data);
    let claimed = digest_of(b"not this");
    let r = c
        .post(s.url(&format!(
            "/v2/push/mismatch/blobs/uploads/?digest={claimed}"
        )))
        .body(data)
        .send()
        .await
        .unwrap();
    expect_error(r, 400, "DIGEST_INVALID").await;
    for d in [&claimed, &actual] {
        assert_eq!(blob_status(&c, &s, "push/mismatch", d).await, 404);
        let hex = d.split(':').nth(1).unwrap();
        assert!(files_containing(&s.root().join("docker/registry/v2/blobs"), hex).is_empty());
    }
    assert!(children(&repo_dir(s.root(), "push/mismatch").join("_uploads")).is_empty());
}

#[tokio::test]
async fn put_without_digest_is_400_digest_invalid() {
    let s = TestServer::start().await;
    let c = client();
    let loc = start_session(&c, &s, "push/nodigest").await;
    let r = c.put(&loc).body(b"data".to_vec()).send().await.unwrap();
    expect_error(r, 400, "DIGEST_INVALID").await;
    for bad in ["digest=", "digest=sha256:1234", "digest=nope:abc"] {
        let r = c
            .put(with_query(&loc, bad))
            .body(b"data".to_vec())
            .send()
            .await
            .unwrap();
        expect_error(r, 400, "DIGEST_INVALID").await;
    }
    let r = c
        .post(s.url("/v2/push/nodigest/blobs/uploads/?digest=sha256:xyz"))
        .body(b"data".to_vec())
        .send()
        .await
        .unwrap();
    expect_error(r, 400, "DIGEST_INVALID").await;
}

#[tokio::test]
async fn truncated_single_post_links_nothing_and_keeps_existing_content() {
    let s = TestServer::start().await;
    let c = client();
    let stored = random_bytes(4000, 14);
    let stored_d = push_blob(&c, &s, "push/trunc", &stored).await;
    let fresh = random_bytes(4000, 15);
    let fresh_d = digest_of(&fresh);
    // A client that announces the whole blob, sends half, and hangs up: once for a new
    // digest and once for one the repository already holds.
    for (d, data) in [(&fresh_d, &fresh), (&stored_d, &stored)] {
        let head = format!(
            "POST /v2/push/trunc/blobs/uploads/?digest={d} HTTP/1.1\nHost: {}\nContent-Type: application/octet-stream\nContent-Length: {}",
            s.host(),
            data.len()
        );
        let r = raw_request(&s, &head, &data[..1500], true, Duration::from_secs(5)).await;
        // The server may still answer the half-closed socket: then with an error.
        if let Some(r) = r {
            r.check_error(400, &["BLOB_UPLOAD_INVALID", "SIZE_INVALID"]);
        }
    }
    let uploads = repo_dir(s.root(), "push/trunc").join("_uploads");
    assert!(
        eventually(|| children(&uploads).is_empty()).await,
        "the private sessions of the truncated uploads are removed: {:?}",
        children(&uploads)
    );
    assert_eq!(blob_status(&c, &s, "push/trunc", &fresh_d).await, 404);
    assert!(!pool_data(s.root(), &fresh_d).exists());
    assert_eq!(blob_body(&c, &s, "push/trunc", &stored_d).await, stored);
    assert_eq!(
        std::fs::read(pool_data(s.root(), &stored_d)).unwrap(),
        stored
    );
}

#[tokio::test]
async fn truncated_final_put_links_nothing_and_session_resumes() {
    let s = TestServer::start().await;
    let c = client();
    let data = random_bytes(3000, 16);
    let d = digest_of(&data);
    let loc = start_session(&c, &s, "push/truncput").await;
    assert_eq!(patch_chunk(&c, &loc, 0, &data[..1000]).await.status(), 202);
    let path = loc.strip_prefix(&s.base).unwrap();
    let head = format!(
        "PUT {} HTTP/1.1\nHost: {}\nContent-Type: application/octet-stream\nContent-Length: 2000",
        with_query(path, &format!("digest={d}")),
        s.host()
    );
    let r = raw_request(&s, &head, &data[1000..1500], true, Duration::from_secs(5)).await;
    if let Some(r) = r {
        r.check_error(400, &["BLOB_UPLOAD_INVALID", "SIZE_INVALID"]);
    }
    assert_eq!(blob_status(&c, &s, "push/truncput", &d).await, 404);
    assert!(!pool_data(s.root(), &d).exists());
    // The session is still there; the client resumes where the status says.
    let r = c.get(&loc).send().await.unwrap();
    assert_eq!(r.status(), 204);
    let range = hdr(&r, "range");
    let end: usize = range.split('-').nth(1).unwrap().parse().unwrap();
    assert!((999..1500).contains(&end), "Range {range}");
    let r = c
        .put(with_query(&loc, &format!("digest={d}")))
        .header("content-range", format!("{}-2999", end + 1))
        .body(data[end + 1..].to_vec())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201);
    assert_eq!(blob_body(&c, &s, "push/truncput", &d).await, data);
}

#[tokio::test]
async fn upload_session_survives_a_restart() {
    let s = TestServer::start().await;
    let c = client();
    let data = random_bytes(300 * 1024, 17);
    let d = digest_of(&data);
    let r = c
        .post(s.url("/v2/push/restart/blobs/uploads/"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 202);
    let path = hdr(&r, "location");
    let first = 100 * 1024;
    let r = patch_chunk(&c, &abs(&s, &path), 0, &data[..first]).await;
    assert_eq!(r.status(), 202);
    let config = s.config.clone();
    let root = s.stop().await;
    let s = TestServer::start_on(root, config).await;
    let c = client();
    let loc = abs(&s, &path);
    let r = c.get(&loc).send().await.unwrap();
    assert_eq!(r.status(), 204);
    assert_eq!(hdr(&r, "range"), format!("0-{}", first - 1));
    let r = patch_chunk(&c, &loc, first, &data[first..200 * 1024]).await;
    assert_eq!(r.status(), 202);
    assert_eq!(hdr(&r, "range"), format!("0-{}", 200 * 1024 - 1));
    let r = c
        .put(with_query(&loc, &format!("digest={d}")))
        .header(
            "content-range",
            format!("{}-{}", 200 * 1024, data.len() - 1),
        )
        .body(data[200 * 1024..].to_vec())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201);
    assert_eq!(blob_body(&c, &s, "push/restart", &d).await, data);
}

// ---------------------------------------------------------------- mount

#[tokio::test]
async fn mount_from_another_repository_is_201() {
    let s = TestServer::start().await;
    let c = client();
    let data = random_bytes(2000, 20);
    let d = push_blob(&c, &s, "push/source", &data).await;
    let r = c
        .post(s.url(&format!(
            "/v2/push/target/blobs/uploads/?mount={d}&from=push/source"
        )))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201);
    assert_eq!(hdr(&r, "docker-content-digest"), d);
    let loc = hdr(&r, "location");
    assert!(
        loc.ends_with(&format!("/v2/push/target/blobs/{d}")),
        "{loc}"
    );
    let r = c.get(abs(&s, &loc)).send().await.unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(&r.bytes().await.unwrap()[..], &data[..]);
}

#[tokio::test]
async fn mount_of_unknown_blob_starts_a_session_202() {
    let s = TestServer::start().await;
    let c = client();
    push_blob(&c, &s, "push/source", b"something").await;
    let data = b"never pushed".to_vec();
    let d = digest_of(&data);
    let r = c
        .post(s.url(&format!(
            "/v2/push/target/blobs/uploads/?mount={d}&from=push/source"
        )))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 202);
    let loc = hdr(&r, "location");
    assert!(is_uuid(&hdr(&r, "docker-upload-uuid")));
    assert_eq!(blob_status(&c, &s, "push/target", &d).await, 404);
    // The session it opened works.
    let r = c
        .put(with_query(&abs(&s, &loc), &format!("digest={d}")))
        .body(data.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201);
    assert_eq!(blob_body(&c, &s, "push/target", &d).await, data);
}

#[tokio::test]
async fn mount_from_repository_that_does_not_link_the_blob_is_202() {
    // The blob is in the pool (through push/owner), but push/source never had it: a
    // mount must not leak content through a repository that cannot see it.
    let s = TestServer::start().await;
    let c = client();
    let d = push_blob(&c, &s, "push/owner", b"private").await;
    push_blob(&c, &s, "push/source", b"unrelated").await;
    let r = c
        .post(s.url(&format!(
            "/v2/push/target/blobs/uploads/?mount={d}&from=push/source"
        )))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 202);
    assert_eq!(blob_status(&c, &s, "push/target", &d).await, 404);
}

#[tokio::test]
async fn mount_without_from_is_202_by_default() {
    let s = TestServer::start().await;
    let c = client();
    let d = push_blob(&c, &s, "push/source", b"pooled").await;
    let r = c
        .post(s.url(&format!("/v2/push/target/blobs/uploads/?mount={d}")))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 202);
    assert!(!hdr(&r, "location").is_empty());
    assert_eq!(blob_status(&c, &s, "push/target", &d).await, 404);
}

#[tokio::test]
async fn mount_without_from_is_201_when_enabled() {
    let s = TestServer::start_with(|cfg| cfg.oci.mount_without_from = true).await;
    let c = client();
    let d = push_blob(&c, &s, "push/source", b"pooled").await;
    let r = c
        .post(s.url(&format!("/v2/push/target/blobs/uploads/?mount={d}")))
        .send()
        .await
        .unwrap();
    if conformance::test_auth() {
        // With authentication on, a mount without `from` is done for admins only (it
        // could link a blob of a repository the caller may not read): a plain session.
        assert_eq!(r.status(), 202);
        assert_eq!(blob_status(&c, &s, "push/target", &d).await, 404);
        return;
    }
    assert_eq!(r.status(), 201);
    assert_eq!(hdr(&r, "docker-content-digest"), d);
    assert_eq!(blob_body(&c, &s, "push/target", &d).await, b"pooled");
    // A digest the pool lacks still falls back to a session.
    let missing = digest_of(b"absent");
    let r = c
        .post(s.url(&format!("/v2/push/target/blobs/uploads/?mount={missing}")))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 202);
}

#[tokio::test]
async fn mount_with_invalid_digest_or_from_is_400() {
    let s = TestServer::start().await;
    let c = client();
    let d = push_blob(&c, &s, "push/source", b"x").await;
    let r = c
        .post(s.url("/v2/push/target/blobs/uploads/?mount=sha256:nothex&from=push/source"))
        .send()
        .await
        .unwrap();
    expect_error(r, 400, "DIGEST_INVALID").await;
    let r = c
        .post(s.url(&format!(
            "/v2/push/target/blobs/uploads/?mount={d}&from=Push/Source"
        )))
        .send()
        .await
        .unwrap();
    expect_error(r, 400, "NAME_INVALID").await;
}

// ---------------------------------------------------------------- manifests

#[tokio::test]
async fn manifest_put_by_tag_is_201_with_location_and_digest() {
    let s = TestServer::start().await;
    let c = client();
    let m = image_with(&c, &s, "push/man", OCI_CONFIG, 30, "").await;
    let d = digest_of(m.as_bytes());
    let r = put_manifest(&c, &s, "push/man", "v1", OCI_MANIFEST, &m).await;
    assert_eq!(r.status(), 201);
    assert_eq!(hdr(&r, "docker-content-digest"), d);
    let loc = hdr(&r, "location");
    assert!(loc.contains("/v2/push/man/manifests/"), "{loc}");
    let r = c.get(abs(&s, &loc)).send().await.unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.text().await.unwrap(), m);
    let r = c
        .get(s.url("/v2/push/man/manifests/v1"))
        .send()
        .await
        .unwrap();
    assert_eq!(hdr(&r, "docker-content-digest"), d);
}

#[tokio::test]
async fn manifest_put_by_digest_is_201_with_location_and_digest() {
    let s = TestServer::start().await;
    let c = client();
    let m = image_with(&c, &s, "push/man", OCI_CONFIG, 31, "").await;
    let d = digest_of(m.as_bytes());
    let r = put_manifest(&c, &s, "push/man", &d, OCI_MANIFEST, &m).await;
    assert_eq!(r.status(), 201);
    assert_eq!(hdr(&r, "docker-content-digest"), d);
    assert!(hdr(&r, "location").ends_with(&format!("/v2/push/man/manifests/{d}")));
    let r = c
        .get(s.url(&format!("/v2/push/man/manifests/{d}")))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.text().await.unwrap(), m);
}

#[tokio::test]
async fn manifest_put_with_mismatched_digest_is_400_digest_invalid() {
    let s = TestServer::start().await;
    let c = client();
    let m = image_with(&c, &s, "push/man", OCI_CONFIG, 32, "").await;
    let actual = digest_of(m.as_bytes());
    let claimed = digest_of(b"another manifest");
    let r = put_manifest(&c, &s, "push/man", &claimed, OCI_MANIFEST, &m).await;
    expect_error(r, 400, "DIGEST_INVALID").await;
    for d in [&claimed, &actual] {
        let r = c
            .get(s.url(&format!("/v2/push/man/manifests/{d}")))
            .send()
            .await
            .unwrap();
        expect_error(r, 404, "MANIFEST_UNKNOWN").await;
    }
}

#[tokio::test]
async fn retagging_moves_the_tag_to_the_new_manifest() {
    let s = TestServer::start().await;
    let c = client();
    let (d1, _) = push_image(&c, &s, "push/retag", "latest", 33, 1).await;
    let (d2, m2) = push_image(&c, &s, "push/retag", "latest", 34, 1).await;
    assert_ne!(d1, d2);
    let r = c
        .get(s.url("/v2/push/retag/manifests/latest"))
        .send()
        .await
        .unwrap();
    assert_eq!(hdr(&r, "docker-content-digest"), d2);
    assert_eq!(r.text().await.unwrap(), m2);
    // The old manifest is still there by digest.
    let r = c
        .get(s.url(&format!("/v2/push/retag/manifests/{d1}")))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
}

#[tokio::test]
async fn manifest_referencing_a_missing_blob_is_manifest_blob_unknown() {
    let s = TestServer::start().await;
    let c = client();
    let cfg = push_blob(&c, &s, "push/missing", b"{}").await;
    let layer = digest_of(b"never uploaded layer");
    let m = image_manifest((&cfg, 2), &[(&layer, 20)], "");
    let r = put_manifest(&c, &s, "push/missing", "v1", OCI_MANIFEST, &m).await;
    let v = expect_error(r, 400, "MANIFEST_BLOB_UNKNOWN").await;
    assert!(
        v.to_string().contains(&layer),
        "the error names the digest: {v}"
    );
    // A missing config is the same.
    let l = push_blob(&c, &s, "push/missing", b"layer").await;
    let m = image_manifest((&digest_of(b"no config"), 9), &[(&l, 5)], "");
    let r = put_manifest(&c, &s, "push/missing", "v2", OCI_MANIFEST, &m).await;
    expect_error(r, 400, "MANIFEST_BLOB_UNKNOWN").await;
    let r = c
        .get(s.url("/v2/push/missing/manifests/v1"))
        .send()
        .await
        .unwrap();
    expect_error(r, 404, "MANIFEST_UNKNOWN").await;
}

#[tokio::test]
async fn manifest_referencing_a_blob_of_another_repository_is_manifest_blob_unknown() {
    let s = TestServer::start().await;
    let c = client();
    let cfg = push_blob(&c, &s, "push/here", b"{}").await;
    let layer = push_blob(&c, &s, "push/elsewhere", b"their layer").await;
    let m = image_manifest((&cfg, 2), &[(&layer, 11)], "");
    let r = put_manifest(&c, &s, "push/here", "v1", OCI_MANIFEST, &m).await;
    expect_error(r, 400, "MANIFEST_BLOB_UNKNOWN").await;
}

#[tokio::test]
async fn index_referencing_pushed_manifests_is_accepted() {
    let s = TestServer::start().await;
    let c = client();
    let (d1, m1) = push_image(&c, &s, "push/index", "a", 35, 1).await;
    let (d2, m2) = push_image(&c, &s, "push/index", "b", 36, 1).await;
    let index = format!(
        r#"{{"schemaVersion":2,"mediaType":"{OCI_INDEX}","manifests":[{{"mediaType":"{OCI_MANIFEST}","digest":"{d1}","size":{},"platform":{{"architecture":"amd64","os":"linux"}}}},{{"mediaType":"{OCI_MANIFEST}","digest":"{d2}","size":{},"platform":{{"architecture":"arm64","os":"linux"}}}}]}}"#,
        m1.len(),
        m2.len()
    );
    let r = put_manifest(&c, &s, "push/index", "multi", OCI_INDEX, &index).await;
    assert_eq!(r.status(), 201);
    assert_eq!(
        hdr(&r, "docker-content-digest"),
        digest_of(index.as_bytes())
    );
    let r = c
        .get(s.url("/v2/push/index/manifests/multi"))
        .send()
        .await
        .unwrap();
    assert_eq!(hdr(&r, "content-type"), OCI_INDEX);
    assert_eq!(r.text().await.unwrap(), index);
}

#[tokio::test]
async fn index_referencing_a_missing_manifest_is_manifest_blob_unknown() {
    let s = TestServer::start().await;
    let c = client();
    let (d1, m1) = push_image(&c, &s, "push/index", "a", 37, 1).await;
    let missing = digest_of(b"no such child");
    let index = format!(
        r#"{{"schemaVersion":2,"mediaType":"{OCI_INDEX}","manifests":[{{"mediaType":"{OCI_MANIFEST}","digest":"{d1}","size":{}}},{{"mediaType":"{OCI_MANIFEST}","digest":"{missing}","size":100}}]}}"#,
        m1.len()
    );
    let r = put_manifest(&c, &s, "push/index", "multi", OCI_INDEX, &index).await;
    expect_error(r, 400, "MANIFEST_BLOB_UNKNOWN").await;
    // A child that lives only in another repository is just as unknown here.
    let (other, om) = push_image(&c, &s, "push/otherindex", "a", 38, 1).await;
    let index = format!(
        r#"{{"schemaVersion":2,"mediaType":"{OCI_INDEX}","manifests":[{{"mediaType":"{OCI_MANIFEST}","digest":"{other}","size":{}}}]}}"#,
        om.len()
    );
    let r = put_manifest(&c, &s, "push/index", "multi", OCI_INDEX, &index).await;
    expect_error(r, 400, "MANIFEST_BLOB_UNKNOWN").await;
    let r = c
        .get(s.url("/v2/push/index/manifests/multi"))
        .send()
        .await
        .unwrap();
    expect_error(r, 404, "MANIFEST_UNKNOWN").await;
}

#[tokio::test]
async fn malformed_manifest_is_400_manifest_invalid() {
    let s = TestServer::start().await;
    let c = client();
    let cfg = push_blob(&c, &s, "push/bad", b"{}").await;
    let cases = [
        "{".to_owned(),
        "not json at all".to_owned(),
        "[]".to_owned(),
        String::new(),
        // An image manifest without its config.
        format!(r#"{{"schemaVersion":2,"mediaType":"{OCI_MANIFEST}","layers":[]}}"#),
        // A descriptor with a malformed digest.
        format!(
            r#"{{"schemaVersion":2,"mediaType":"{OCI_MANIFEST}","config":{{"mediaType":"{OCI_CONFIG}","digest":"sha256:zz","size":2}},"layers":[]}}"#
        ),
        // schemaVersion 1.
        r#"{"schemaVersion":1,"name":"push/bad","tag":"v1","fsLayers":[]}"#.to_owned(),
        // An index without manifests.
        format!(r#"{{"schemaVersion":2,"mediaType":"{OCI_INDEX}"}}"#),
        // A negative size.
        format!(
            r#"{{"schemaVersion":2,"mediaType":"{OCI_MANIFEST}","config":{{"mediaType":"{OCI_CONFIG}","digest":"{cfg}","size":-2}},"layers":[]}}"#
        ),
    ];
    for body in &cases {
        let ct = if body.contains(OCI_INDEX) {
            OCI_INDEX
        } else {
            OCI_MANIFEST
        };
        let r = put_manifest(&c, &s, "push/bad", "v1", ct, body).await;
        expect_error(r, 400, "MANIFEST_INVALID").await;
    }
    let r = c
        .get(s.url("/v2/push/bad/manifests/v1"))
        .send()
        .await
        .unwrap();
    expect_error(r, 404, "MANIFEST_UNKNOWN").await;
}

#[tokio::test]
async fn content_type_mismatching_media_type_is_manifest_invalid() {
    let s = TestServer::start().await;
    let c = client();
    let m = image_with(&c, &s, "push/ct", OCI_CONFIG, 39, "").await;
    for ct in [OCI_INDEX, DOCKER_MANIFEST, DOCKER_LIST] {
        let r = put_manifest(&c, &s, "push/ct", "v1", ct, &m).await;
        expect_error(r, 400, "MANIFEST_INVALID").await;
    }
    // Parameters on the Content-Type are ignored.
    let r = put_manifest(
        &c,
        &s,
        "push/ct",
        "v1",
        &format!("{OCI_MANIFEST}; charset=utf-8"),
        &m,
    )
    .await;
    assert_eq!(r.status(), 201);
}

#[tokio::test]
async fn unsupported_media_type_is_manifest_invalid() {
    let s = TestServer::start().await;
    let c = client();
    let cfg = push_blob(&c, &s, "push/mt", b"{}").await;
    let body = format!(
        r#"{{"schemaVersion":2,"mediaType":"text/plain","config":{{"mediaType":"{OCI_CONFIG}","digest":"{cfg}","size":2}},"layers":[]}}"#
    );
    let r = put_manifest(&c, &s, "push/mt", "v1", "text/plain", &body).await;
    expect_error(r, 400, "MANIFEST_INVALID").await;
    let body = format!(
        r#"{{"schemaVersion":2,"config":{{"mediaType":"{OCI_CONFIG}","digest":"{cfg}","size":2}},"layers":[]}}"#
    );
    let r = put_manifest(&c, &s, "push/mt", "v1", "application/x-unknown", &body).await;
    expect_error(r, 400, "MANIFEST_INVALID").await;
    let r = put_manifest(
        &c,
        &s,
        "push/mt",
        "v1",
        "application/vnd.docker.distribution.manifest.v1+prettyjws",
        r#"{"schemaVersion":1,"name":"push/mt","tag":"v1","fsLayers":[],"signatures":[]}"#,
    )
    .await;
    expect_error(r, 400, "MANIFEST_INVALID").await;
}

/// An image manifest of exactly `size` bytes (padded with an annotation).
fn manifest_of_size(cfg: &str, size: usize) -> String {
    let base = image_manifest((cfg, 2), &[], r#","annotations":{"pad":""}"#);
    assert!(size >= base.len());
    let pad = "p".repeat(size - base.len());
    let m = image_manifest(
        (cfg, 2),
        &[],
        &format!(r#","annotations":{{"pad":"{pad}"}}"#),
    );
    assert_eq!(m.len(), size);
    m
}

const LIMIT: usize = 4 * 1024 * 1024;

#[tokio::test]
async fn manifest_of_exactly_4_mib_is_accepted() {
    let s = TestServer::start().await;
    let c = client();
    let cfg = push_blob(&c, &s, "push/big", b"{}").await;
    let m = manifest_of_size(&cfg, LIMIT);
    let r = put_manifest(&c, &s, "push/big", "max", OCI_MANIFEST, &m).await;
    assert_eq!(r.status(), 201);
    let r = c
        .get(s.url("/v2/push/big/manifests/max"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.text().await.unwrap(), m);
}

#[tokio::test]
async fn manifest_over_4_mib_is_413() {
    let s = TestServer::start().await;
    let c = client();
    let cfg = push_blob(&c, &s, "push/big", b"{}").await;
    let m = manifest_of_size(&cfg, LIMIT + 1);
    let r = put_manifest(&c, &s, "push/big", "over", OCI_MANIFEST, &m).await;
    expect_error(r, 413, "SIZE_INVALID").await;
    let r = c
        .get(s.url("/v2/push/big/manifests/over"))
        .send()
        .await
        .unwrap();
    expect_error(r, 404, "MANIFEST_UNKNOWN").await;
}

#[tokio::test]
async fn manifest_over_4_mib_in_a_chunked_body_is_413() {
    let s = TestServer::start().await;
    let c = client();
    let cfg = push_blob(&c, &s, "push/big", b"{}").await;
    let m = manifest_of_size(&cfg, LIMIT + 1);
    let r = c
        .put(s.url("/v2/push/big/manifests/chunked"))
        .header("content-type", OCI_MANIFEST)
        .body(streamed_body(m.as_bytes(), 256 * 1024))
        .send()
        .await
        .unwrap();
    expect_error(r, 413, "SIZE_INVALID").await;
    let r = c
        .get(s.url("/v2/push/big/manifests/chunked"))
        .send()
        .await
        .unwrap();
    expect_error(r, 404, "MANIFEST_UNKNOWN").await;
}

#[tokio::test]
async fn manifest_announcing_over_4_mib_is_413_before_the_body() {
    // The Content-Length alone decides: the server answers without waiting for bytes
    // that never come.
    let s = TestServer::start().await;
    let head = format!(
        "PUT /v2/push/big/manifests/lying HTTP/1.1\nHost: {}\nContent-Type: {OCI_MANIFEST}\nContent-Length: {}",
        s.host(),
        LIMIT + 1
    );
    let r = raw_request(
        &s,
        &head,
        b"{\"schemaVersion\":2",
        false,
        Duration::from_secs(5),
    )
    .await
    .expect("an answer before the body is complete");
    r.check_error(413, &["SIZE_INVALID"]);
}

#[tokio::test]
async fn manifest_with_lying_short_content_length_is_not_stored() {
    // A client that announces a small manifest, sends part of it, and hangs up.
    let s = TestServer::start().await;
    let c = client();
    let (d, m) = push_image(&c, &s, "push/lie", "v1", 40, 1).await;
    let other = image_with(&c, &s, "push/lie", OCI_CONFIG, 41, "").await;
    let head = format!(
        "PUT /v2/push/lie/manifests/v1 HTTP/1.1\nHost: {}\nContent-Type: {OCI_MANIFEST}\nContent-Length: {}",
        s.host(),
        other.len()
    );
    let r = raw_request(
        &s,
        &head,
        &other.as_bytes()[..other.len() / 2],
        true,
        Duration::from_secs(5),
    )
    .await;
    if let Some(r) = r {
        r.check_error(400, &["MANIFEST_INVALID", "SIZE_INVALID"]);
    }
    let r = c
        .get(s.url("/v2/push/lie/manifests/v1"))
        .send()
        .await
        .unwrap();
    assert_eq!(hdr(&r, "docker-content-digest"), d);
    assert_eq!(r.text().await.unwrap(), m);
    let r = c
        .get(s.url(&format!(
            "/v2/push/lie/manifests/{}",
            digest_of(other.as_bytes())
        )))
        .send()
        .await
        .unwrap();
    expect_error(r, 404, "MANIFEST_UNKNOWN").await;
}

#[tokio::test]
async fn manifest_with_subject_answers_oci_subject() {
    let s = TestServer::start().await;
    let c = client();
    // The subject need not exist yet.
    let subject = digest_of(b"a manifest pushed later");
    let m = image_with(
        &c,
        &s,
        "push/subject",
        OCI_CONFIG,
        42,
        &subject_member(&subject, 123),
    )
    .await;
    let r = put_manifest(
        &c,
        &s,
        "push/subject",
        &digest_of(m.as_bytes()),
        OCI_MANIFEST,
        &m,
    )
    .await;
    assert_eq!(r.status(), 201);
    assert_eq!(hdr(&r, "oci-subject"), subject);
    // Without a subject there is no header.
    let plain = image_with(&c, &s, "push/subject", OCI_CONFIG, 43, "").await;
    let r = put_manifest(&c, &s, "push/subject", "plain", OCI_MANIFEST, &plain).await;
    assert_eq!(r.status(), 201);
    assert!(r.headers().get("oci-subject").is_none());
}

#[tokio::test]
async fn docker_schema2_manifest_and_list_are_served_with_their_media_types() {
    let s = TestServer::start().await;
    let c = client();
    let config =
        br#"{"architecture":"amd64","os":"linux","rootfs":{"type":"layers","diff_ids":[]}}"#;
    let cd = push_blob(&c, &s, "push/docker", config).await;
    let layer = random_bytes(300, 44);
    let ld = push_blob(&c, &s, "push/docker", &layer).await;
    let m = format!(
        r#"{{"schemaVersion":2,"mediaType":"{DOCKER_MANIFEST}","config":{{"mediaType":"application/vnd.docker.container.image.v1+json","size":{},"digest":"{cd}"}},"layers":[{{"mediaType":"application/vnd.docker.image.rootfs.diff.tar.gzip","size":{},"digest":"{ld}"}}]}}"#,
        config.len(),
        layer.len()
    );
    let md = digest_of(m.as_bytes());
    let r = put_manifest(&c, &s, "push/docker", "v2", DOCKER_MANIFEST, &m).await;
    assert_eq!(r.status(), 201);
    assert_eq!(hdr(&r, "docker-content-digest"), md);
    let list = format!(
        r#"{{"schemaVersion":2,"mediaType":"{DOCKER_LIST}","manifests":[{{"mediaType":"{DOCKER_MANIFEST}","size":{},"digest":"{md}","platform":{{"architecture":"amd64","os":"linux"}}}}]}}"#,
        m.len()
    );
    let r = put_manifest(&c, &s, "push/docker", "list", DOCKER_LIST, &list).await;
    assert_eq!(r.status(), 201);
    for (reference, ct, body) in [("v2", DOCKER_MANIFEST, &m), ("list", DOCKER_LIST, &list)] {
        let r = c
            .get(s.url(&format!("/v2/push/docker/manifests/{reference}")))
            .header("accept", format!("{DOCKER_MANIFEST}, {DOCKER_LIST}"))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
        assert_eq!(hdr(&r, "content-type"), ct);
        assert_eq!(&r.text().await.unwrap(), body);
    }
}

// ---------------------------------------------------------------- names and tags

#[tokio::test]
async fn invalid_repository_names_are_400_name_invalid() {
    let s = TestServer::start().await;
    let c = client();
    let d = digest_of(b"x");
    let long = "a".repeat(256);
    for name in ["UPPER", "a//b", long.as_str(), "a/-b", "a__-b", "a/b/"] {
        for (method, path) in [
            ("GET", format!("/v2/{name}/manifests/latest")),
            ("PUT", format!("/v2/{name}/manifests/latest")),
            ("GET", format!("/v2/{name}/blobs/{d}")),
            ("POST", format!("/v2/{name}/blobs/uploads/")),
            ("GET", format!("/v2/{name}/tags/list")),
        ] {
            let r = c
                .request(method.parse().unwrap(), s.url(&path))
                .header("content-type", OCI_MANIFEST)
                .body("{}")
                .send()
                .await
                .unwrap();
            let what = format!("{method} {path}");
            let got = r.status().as_u16();
            let body = r.bytes().await.unwrap();
            assert_eq!(got, 400, "{what}");
            check_error(got, &body, 400, &["NAME_INVALID"]);
        }
    }
    // Paths a URL library would normalize go over a raw socket, as an attacker sends them.
    for path in [
        "/v2/../manifests/latest",
        "/v2/a/../b/manifests/latest",
        "/v2/%2e%2e/manifests/latest",
        "/v2/a/%2e%2e/b/manifests/latest",
        "/v2/%2E%2E/blobs/uploads/",
        "/v2/a%2fb/tags/list",
        "/v2/./a/tags/list",
    ] {
        let method = if path.ends_with("uploads/") {
            "POST"
        } else {
            "GET"
        };
        let r = raw_get(&s, method, path).await;
        r.check_error(400, &["NAME_INVALID"]);
    }
    // Nothing was created anywhere outside the repositories folder.
    let root_entries = children(s.root());
    assert!(
        root_entries.iter().all(|e| e == "docker" || e == "drydock"),
        "{root_entries:?}"
    );
}

#[tokio::test]
async fn name_of_255_characters_is_accepted() {
    let s = TestServer::start().await;
    let c = client();
    let a50 = "a".repeat(50);
    let name = format!("{a50}/{a50}/{a50}/{a50}/{}", "b".repeat(51));
    assert_eq!(name.len(), 255);
    let d = push_blob(&c, &s, &name, b"long name").await;
    assert_eq!(blob_body(&c, &s, &name, &d).await, b"long name");
}

#[tokio::test]
async fn invalid_tag_on_manifest_put_is_400() {
    let s = TestServer::start().await;
    let c = client();
    let m = image_with(&c, &s, "push/tags", OCI_CONFIG, 45, "").await;
    let long = "t".repeat(129);
    for tag in [
        "-lead",
        ".dot",
        long.as_str(),
        "a+b",
        "bad:tag",
        "sha256:abc",
    ] {
        let r = put_manifest(&c, &s, "push/tags", tag, OCI_MANIFEST, &m).await;
        expect_error_any(
            r,
            400,
            &["MANIFEST_INVALID", "DIGEST_INVALID", "NAME_INVALID"],
        )
        .await;
    }
    // The longest valid tag works.
    let ok = "t".repeat(128);
    let r = put_manifest(&c, &s, "push/tags", &ok, OCI_MANIFEST, &m).await;
    assert_eq!(r.status(), 201);
    let r = c
        .get(s.url("/v2/push/tags/tags/list"))
        .send()
        .await
        .unwrap();
    let v: serde_json::Value = r.json().await.unwrap();
    assert_eq!(v["tags"], serde_json::json!([ok]));
}

#[tokio::test]
async fn patch_with_malformed_content_range_is_refused_and_writes_nothing() {
    let s = TestServer::start().await;
    let c = client();
    let loc = start_session(&c, &s, "push/badrange").await;
    for range in ["abc", "5-2", "-3", "0-"] {
        let r = c
            .patch(&loc)
            .header("content-range", range)
            .body(b"abc".to_vec())
            .send()
            .await
            .unwrap();
        expect_error_any(r, 416, &["RANGE_INVALID"]).await;
    }
    // A range that disagrees with the body's length.
    let r = c
        .patch(&loc)
        .header("content-range", "0-9")
        .body(b"abc".to_vec())
        .send()
        .await
        .unwrap();
    expect_error(r, 416, "RANGE_INVALID").await;
    let r = c.get(&loc).send().await.unwrap();
    assert_eq!(r.status(), 204);
    assert_eq!(hdr(&r, "range"), "0-0");
}

#[tokio::test]
async fn foreign_layer_with_urls_need_not_be_pushed() {
    let s = TestServer::start().await;
    let c = client();
    let cfg = push_blob(&c, &s, "push/foreign", b"{}").await;
    let foreign = digest_of(b"a windows base layer, elsewhere");
    let m = format!(
        r#"{{"schemaVersion":2,"mediaType":"{OCI_MANIFEST}","config":{{"mediaType":"{OCI_CONFIG}","digest":"{cfg}","size":2}},"layers":[{{"mediaType":"application/vnd.oci.image.layer.nondistributable.v1.tar+gzip","digest":"{foreign}","size":31,"urls":["https://example.com/layer"]}}]}}"#
    );
    let r = put_manifest(&c, &s, "push/foreign", "v1", OCI_MANIFEST, &m).await;
    assert_eq!(r.status(), 201);
    // Without urls it is an ordinary layer that must be there.
    let m = m.replace(r#","urls":["https://example.com/layer"]"#, "");
    let r = put_manifest(&c, &s, "push/foreign", "v2", OCI_MANIFEST, &m).await;
    expect_error(r, 400, "MANIFEST_BLOB_UNKNOWN").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_uploads_of_the_same_blob_all_succeed() {
    // The spec's de-duplication use case: several builders push one layer at once.
    let s = TestServer::start().await;
    let c = client();
    let data = random_bytes(512 * 1024, 60);
    let d = digest_of(&data);
    let mut tasks = Vec::new();
    for i in 0..6 {
        let (c, data, d) = (c.clone(), data.clone(), d.clone());
        let repo = format!("push/dedup{}", i % 3);
        let base = s.base.clone();
        tasks.push(tokio::spawn(async move {
            let r = c
                .post(format!("{base}/v2/{repo}/blobs/uploads/"))
                .send()
                .await
                .unwrap();
            assert_eq!(r.status(), 202);
            let loc = format!("{base}{}", hdr(&r, "location"));
            let half = data.len() / 2;
            let r = patch_chunk(&c, &loc, 0, &data[..half]).await;
            assert_eq!(r.status(), 202);
            let r = c
                .put(with_query(&loc, &format!("digest={d}")))
                .body(data[half..].to_vec())
                .send()
                .await
                .unwrap();
            r.status().as_u16()
        }));
    }
    for t in tasks {
        assert_eq!(t.await.unwrap(), 201);
    }
    for i in 0..3 {
        assert_eq!(blob_body(&c, &s, &format!("push/dedup{i}"), &d).await, data);
    }
    assert_eq!(std::fs::read(pool_data(s.root(), &d)).unwrap(), data);
}
