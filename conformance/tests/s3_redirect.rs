//! Blob GETs on `storage.s3` answer `307` to a presigned URL of the object (Distribution's
//! `storage.redirect`), against the Ceph RGW that `scripts/test.sh` starts; with
//! `storage.redirect.disable` the server streams the blob itself. Never skipped.

use conformance::receiver::Receiver;
use conformance::{ServerProcess, digest_of, push_blob_to, random_bytes, s3};

/// The server on `root`, with `storage.redirect.disable` set as given and `extra`
/// top-level configuration.
fn serve(root: &str, disable: bool, extra: &str) -> (tempfile::TempDir, ServerProcess) {
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("config.yml");
    let yaml = s3::yaml(root).replace(
        "  delete:\n",
        &format!("  redirect:\n    disable: {disable}\n  delete:\n"),
    );
    std::fs::write(&cfg, format!("{yaml}{extra}")).unwrap();
    let server = ServerProcess::spawn(&cfg);
    (dir, server)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn blob_gets_redirect_to_the_bucket_unless_disabled() {
    let root = s3::fresh_root("redirect");
    let rx = Receiver::start().await;
    let notify = format!(
        "notifications:\n  endpoints:\n    - name: rx\n      url: {}\n      backoff: 50ms\n",
        rx.url
    );
    let (_dir, mut server) = serve(&root, false, &notify);
    let plain = reqwest::Client::new();
    let manual = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap();
    let blob = random_bytes(300_000, 7);
    let digest = push_blob_to(&plain, &server.base, "redir/app", &blob).await;
    let url = server.url(&format!("/v2/redir/app/blobs/{digest}"));

    let r = manual.get(&url).send().await.unwrap();
    assert_eq!(r.status(), 307, "a blob GET on S3 redirects");
    assert_eq!(r.headers()["docker-content-digest"], digest.as_str());
    // A redirected GET is a pull, as Distribution counts it.
    rx.until("the redirected GET's pull event", |ev| {
        ev.iter()
            .any(|e| e["action"] == "pull" && e["target"]["digest"] == digest.as_str())
    })
    .await;
    let location = r.headers()["location"].to_str().unwrap().to_owned();
    assert!(
        location.starts_with(&s3::var("DRYDOCK_TEST_S3_ENDPOINT")),
        "the URL is the bucket's: {location}"
    );
    // The URL serves the object, and ranges, with no credentials of the client's.
    let r = manual.get(&location).send().await.unwrap();
    assert_eq!(r.status(), 200);
    assert!(
        r.bytes().await.unwrap() == blob,
        "the bucket served other bytes"
    );
    let r = manual
        .get(&location)
        .header("range", "bytes=1000-1999")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 206);
    assert!(r.bytes().await.unwrap()[..] == blob[1000..2000]);
    // A client that follows redirects just gets the blob.
    let r = plain.get(&url).send().await.unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(digest_of(&r.bytes().await.unwrap()), digest);
    // HEAD is answered by the server; a blob the repository does not link is the
    // registry's 404, not a redirect to the bucket's.
    let r = manual.head(&url).send().await.unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(
        r.headers()["content-length"],
        blob.len().to_string().as_str()
    );
    let other = manual
        .get(server.url(&format!("/v2/redir/other/blobs/{digest}")))
        .send()
        .await
        .unwrap();
    assert_eq!(other.status(), 404);
    assert!(other.text().await.unwrap().contains("BLOB_UNKNOWN"));
    server.terminate(); // a clean stop frees the bucket lock at once

    // storage.redirect.disable: the server streams it.
    let (_dir, server) = serve(&root, true, "");
    let r = manual
        .get(server.url(&format!("/v2/redir/app/blobs/{digest}")))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200, "redirects disabled");
    assert!(r.bytes().await.unwrap() == blob);
    drop(server);
    s3::remove_root(&root).await;
}
