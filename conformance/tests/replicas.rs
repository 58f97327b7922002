//! Two replicas on one database and one storage root (the filesystem standing in for the
//! bucket): what is written or deleted through one is what the other answers, at once —
//! no replica answers from a cache another replica's write made stale. Against the real
//! PostgreSQL 15 that `scripts/test.sh` starts (`scripts/pg.sh`); never skipped.

mod common;

use common::*;
use conformance::*;
use serde_json::Value;

const REPO: &str = "rep/app";

/// The digest `reference` names through `s`, or the status when it names none.
async fn resolve(c: &reqwest::Client, s: &TestServer, reference: &str) -> Result<String, u16> {
    let r = c
        .get(s.url(&format!("/v2/{REPO}/manifests/{reference}")))
        .header("accept", OCI_MANIFEST)
        .send()
        .await
        .expect("get manifest");
    match r.status().as_u16() {
        200 => Ok(r
            .headers()
            .get("docker-content-digest")
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_owned()),
        s => Err(s),
    }
}

async fn json(c: &reqwest::Client, s: &TestServer, path: &str) -> Value {
    let r = c.get(s.url(path)).send().await.expect("get");
    assert_eq!(r.status(), 200, "GET {path}");
    r.json().await.expect("json")
}

async fn tags(c: &reqwest::Client, s: &TestServer) -> Vec<Value> {
    json(c, s, &format!("/v2/{REPO}/tags/list")).await["tags"]
        .as_array()
        .cloned()
        .unwrap_or_default()
}

async fn status(r: reqwest::RequestBuilder) -> u16 {
    r.send().await.expect("request").status().as_u16()
}

/// Every read through B is asked twice before A changes it (so a cache would hold it),
/// then once right after A answered the change.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tag_moved_or_deleted_through_one_replica_is_seen_at_once_through_the_other() {
    let (a, b, db) = conformance::pg::two_servers(|_| {}).await;
    let c = client();
    let (d1, m1) = push_image(&c, &a, REPO, "v1", 1, 1).await;
    for _ in 0..2 {
        assert_eq!(resolve(&c, &b, "v1").await, Ok(d1.clone()));
        assert_eq!(tags(&c, &b).await, ["v1"]);
        assert!(
            json(&c, &b, "/v2/_catalog").await["repositories"]
                .as_array()
                .is_some_and(|r| r.len() == 1)
        );
    }
    // Moved through A: B serves the new manifest and lists the new tag.
    let (d2, _) = push_image(&c, &a, REPO, "v1", 2, 1).await;
    assert_ne!(d1, d2);
    assert_eq!(resolve(&c, &b, "v1").await, Ok(d2.clone()), "the tag moved");
    assert_eq!(
        put_manifest(&c, &a, REPO, "v2", OCI_MANIFEST, &m1)
            .await
            .status(),
        201
    );
    assert_eq!(tags(&c, &b).await, ["v1", "v2"], "a tag added");
    // A new repository through A is in B's catalog.
    push_image(&c, &a, "rep/other", "latest", 3, 1).await;
    assert_eq!(
        json(&c, &b, "/v2/_catalog").await["repositories"],
        serde_json::json!(["rep/app", "rep/other"]),
        "a repository added"
    );
    // The tag deleted through A is gone through B.
    for _ in 0..2 {
        assert_eq!(resolve(&c, &b, "v2").await, Ok(d1.clone()));
    }
    assert_eq!(
        status(c.delete(a.url(&format!("/v2/{REPO}/manifests/v2")))).await,
        202
    );
    assert_eq!(resolve(&c, &b, "v2").await, Err(404), "the tag deleted");
    assert_eq!(tags(&c, &b).await, ["v1"], "the tag deleted");
    // The manifest deleted through A (by digest) is gone through B, by tag and digest.
    assert_eq!(resolve(&c, &b, &d2).await, Ok(d2.clone()));
    assert_eq!(
        status(c.delete(a.url(&format!("/v2/{REPO}/manifests/{d2}")))).await,
        202
    );
    assert_eq!(resolve(&c, &b, &d2).await, Err(404), "the manifest deleted");
    assert_eq!(resolve(&c, &b, "v1").await, Err(404), "its tag deleted");
    conformance::pg::drop_db(&db).await;
}

/// A layer deleted from a repository through A is absent through B, and the pool's
/// blob sizes B read are not taken for existence: a blob HEAD that said 200 for content
/// another replica removed would tell a client to skip an upload.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_blob_deleted_through_one_replica_is_absent_through_the_other() {
    let (a, b, db) = conformance::pg::two_servers(|_| {}).await;
    let c = client();
    let data = random_bytes(4096, 7);
    let d = push_blob(&c, &a, REPO, &data).await;
    let head = |s: &TestServer| c.head(s.url(&format!("/v2/{REPO}/blobs/{d}")));
    for _ in 0..2 {
        assert_eq!(status(head(&b)).await, 200);
    }
    assert_eq!(
        status(c.delete(a.url(&format!("/v2/{REPO}/blobs/{d}")))).await,
        202
    );
    assert_eq!(status(head(&b)).await, 404, "the layer deleted through A");
    conformance::pg::drop_db(&db).await;
}

/// Fencing: replica A checks a blob for a push (`HEAD`) and is held right after the
/// check; its presence is lost (its connection ended, as in a partition) and a removal
/// session on B finds it dead, dropping its pins. A's answer must not say the blob
/// exists: what it checked was unprotected from that moment.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_found_dead_mid_write_does_not_answer_it_as_succeeded() {
    let (a, b, db) = conformance::pg::two_servers(|_| {}).await;
    let c = client();
    let d = push_blob(&c, &a, REPO, &random_bytes(2048, 9)).await;
    let digest: registry::Digest = d.parse().expect("digest");
    let gate = a
        .store
        .liveness()
        .hooks()
        .arm(registry::hooks::Point::Checked, Some(digest));
    let head = tokio::spawn(c.head(a.url(&format!("/v2/{REPO}/blobs/{d}"))).send());
    gate.arrived().await;
    // A registered first: replica 1. Its presence ends; the lock wait returns once it
    // has.
    let (ns, id) = registry::coordination::Postgres::presence_lock(1);
    let pg = conformance::pg::client(&db.dbname).await;
    let killed: i64 = pg
        .query_one(
            "SELECT count(pg_terminate_backend(pid)) FROM pg_locks
             WHERE locktype = 'advisory' AND granted AND classid = $1::int8::oid
               AND objid = $2::int8::oid AND objsubid = 2
               AND database = (SELECT oid FROM pg_database
                               WHERE datname = current_database())",
            &[&i64::from(ns), &i64::from(id)],
        )
        .await
        .expect("end A's presence")
        .get(0);
    assert_eq!(killed, 1);
    pg.execute("SELECT pg_advisory_lock($1, $2)", &[&ns, &id])
        .await
        .expect("A's presence lock");
    pg.execute("SELECT pg_advisory_unlock($1, $2)", &[&ns, &id])
        .await
        .expect("A's presence lock");
    b.store
        .liveness()
        .begin_removal()
        .await
        .expect("a removal session on B")
        .end()
        .await;
    gate.release();
    let r = head.await.expect("head").expect("head");
    assert_eq!(
        r.status(),
        500,
        "A answered a check its lost pins no longer protected"
    );
    // B, alive, answers it.
    assert_eq!(
        status(c.head(b.url(&format!("/v2/{REPO}/blobs/{d}")))).await,
        200
    );
    conformance::pg::drop_db(&db).await;
}

/// A chunked upload whose POST, PATCHes and PUT alternate between the two replicas
/// completes, byte-exact (the upload's state is in the store, not a replica's memory).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_chunked_upload_continues_on_either_replica() {
    let (a, b, db) = conformance::pg::two_servers(|_| {}).await;
    let c = client();
    let data = random_bytes(3000, 11);
    let d = digest_of(&data);
    // A Location, on the other server.
    let on = |s: &TestServer, loc: &str| s.url(&loc[loc.find("/v2/").unwrap_or(0)..]);
    let mut loc = start_session(&c, &a, REPO).await;
    for (s, from, to) in [(&b, 0usize, 1000usize), (&a, 1000, 2000), (&b, 2000, 3000)] {
        let r = patch_chunk(&c, &on(s, &loc), from, &data[from..to]).await;
        assert_eq!(r.status(), 202, "chunk {from} through {}", s.url(""));
        assert_eq!(hdr(&r, "range"), format!("0-{}", to - 1));
        loc = hdr(&r, "location");
    }
    let r = c
        .put(with_query(&on(&a, &loc), &format!("digest={d}")))
        .send()
        .await
        .expect("put");
    assert_eq!(r.status(), 201);
    let r = c
        .get(b.url(&format!("/v2/{REPO}/blobs/{d}")))
        .send()
        .await
        .expect("get blob");
    assert_eq!(r.status(), 200);
    assert_eq!(r.bytes().await.expect("blob body"), data);
    conformance::pg::drop_db(&db).await;
}

/// Retention on B has decided to remove tag `v1` (it still names what was listed) and
/// is held before the removal; a push of `v1` to another manifest through A must wait
/// for it (the tag's lock is in the database) and land after it, so the push A answers
/// 201 is what `v1` names at the end. With the tag locks only in each process, A's push
/// would land first and B's removal would take the tag the client was told it pushed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tag_pushed_through_one_replica_while_another_removes_it_stays() {
    use registry::hooks::Point;
    let (a, b, db) = conformance::pg::two_servers(|_| {}).await;
    let c = client();
    let (d1, _) = push_image(&c, &a, REPO, "v1", 1, 1).await;
    let (d2, m2) = push_image(&c, &a, REPO, "v2", 2, 1).await;
    let link = a.root().join(format!(
        "docker/registry/v2/repositories/{REPO}/_manifests/tags/v1/current/link"
    ));
    let pushed = std::fs::metadata(&link)
        .and_then(|m| m.modified())
        .expect("the tag's time");
    let checked = b.store.liveness().hooks().arm(Point::TagChecked, None);
    let remove = tokio::spawn({
        let store = b.store.clone();
        let d1: registry::Digest = d1.parse().expect("digest");
        async move {
            let name = registry::RepoName::parse(REPO).expect("name");
            let tag = registry::Tag::parse("v1").expect("tag");
            store.delete_tag_if(&name, &tag, &d1, pushed).await
        }
    });
    checked.arrived().await;
    let waits = a.store.liveness().hooks().arm(Point::TagWaits, None);
    let mut push = tokio::spawn({
        let (c, url) = (c.clone(), a.url(&format!("/v2/{REPO}/manifests/v1")));
        async move {
            c.put(url)
                .header("content-type", OCI_MANIFEST)
                .body(m2)
                .send()
                .await
                .expect("push")
                .status()
                .as_u16()
        }
    });
    let early = tokio::select! {
        _ = waits.arrived() => None,
        s = &mut push => Some(s.expect("push")),
    };
    waits.release();
    checked.release();
    assert!(
        remove.await.expect("remove").expect("remove"),
        "B removed the tag it checked"
    );
    let status = match early {
        Some(s) => s,
        None => push.await.expect("push"),
    };
    assert_eq!(status, 201);
    assert_eq!(
        resolve(&c, &b, "v1").await,
        Ok(d2.clone()),
        "the pushed tag"
    );
    assert_eq!(resolve(&c, &a, "v1").await, Ok(d2), "the pushed tag");
    conformance::pg::drop_db(&db).await;
}
