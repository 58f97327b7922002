//! The storage driver test suite (like CNCF Distribution's `driver/testsuites`): every
//! test takes a `&dyn Driver` and a key prefix of its own, and every driver runs all of
//! them (`driver_fs.rs`, `driver_s3.rs`). After each test the suite checks that nothing
//! is left below the prefix: a test that leaks a key, a writer's state or a temp file
//! fails.

#![allow(dead_code)]

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use futures::{StreamExt, TryStreamExt};
use registry::Digest;
use registry::storage::{Driver, DriverError, Entry, PutMode, WriterStart};

/// Bytes that differ at every offset (a shifted read shows).
pub fn pattern(len: usize, seed: u32) -> Vec<u8> {
    let mut x = seed.wrapping_mul(2_654_435_761).wrapping_add(1);
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 17;
            x ^= x << 5;
            (x >> 8) as u8
        })
        .collect()
}

pub async fn read_all(d: &dyn Driver, path: &str, offset: u64, len: Option<u64>) -> Vec<u8> {
    let r = d.reader(path, offset, len).await.unwrap();
    let chunks: Vec<Bytes> = r.body.try_collect().await.unwrap();
    chunks.concat()
}

/// Fails when anything is left below `prefix`.
pub async fn assert_nothing_left(d: &dyn Driver, prefix: &str) {
    let left: Vec<String> = d
        .walk(prefix)
        .map_ok(|e| e.path)
        .try_collect()
        .await
        .unwrap();
    assert!(left.is_empty(), "the test left {left:?} below {prefix}");
    match d.list(prefix).await {
        Err(DriverError::NotFound(_)) => {}
        other => panic!("the test left the folder {prefix}: {other:?}"),
    }
}

fn k(prefix: &str, rel: &str) -> String {
    format!("{prefix}/{rel}")
}

pub async fn put_get_overwrite(d: &dyn Driver, p: &str) {
    let key = k(p, "a/b/link");
    let v1 = d
        .put(&key, Bytes::from_static(b"sha256:one"), PutMode::Overwrite)
        .await
        .unwrap();
    let (got, gv) = d.get(&key).await.unwrap();
    assert_eq!(&got[..], b"sha256:one");
    assert_eq!(gv, v1);
    let v2 = d
        .put(&key, Bytes::from_static(b"two"), PutMode::Overwrite)
        .await
        .unwrap();
    assert_ne!(v1, v2, "a new content has a new version");
    assert_eq!(&d.get(&key).await.unwrap().0[..], b"two");
    // Empty objects are objects.
    let empty = k(p, "empty");
    d.put(&empty, Bytes::new(), PutMode::Overwrite)
        .await
        .unwrap();
    assert_eq!(d.get(&empty).await.unwrap().0.len(), 0);
    assert_eq!(d.stat(&empty).await.unwrap().size, 0);
    assert!(d.get(&k(p, "missing")).await.unwrap_err().is_not_found());
    // A folder is not an object.
    assert!(d.get(&k(p, "a/b")).await.unwrap_err().is_not_found());
    d.delete(&key).await.unwrap();
    d.delete(&empty).await.unwrap();
}

pub async fn create_only_conflicts(d: &dyn Driver, p: &str) {
    let key = k(p, "lock");
    d.put(&key, Bytes::from_static(b"first"), PutMode::Create)
        .await
        .unwrap();
    let e = d
        .put(&key, Bytes::from_static(b"second"), PutMode::Create)
        .await
        .unwrap_err();
    assert!(matches!(e, DriverError::AlreadyExists(_)), "{e:?}");
    assert_eq!(&d.get(&key).await.unwrap().0[..], b"first");
    d.delete(&key).await.unwrap();

    // Racing creators: exactly one wins, and its content is what stays.
    let race = k(p, "race");
    let results = futures::future::join_all((0..8u8).map(|i| {
        let race = race.clone();
        async move {
            d.put(&race, Bytes::from(vec![i; 16]), PutMode::Create)
                .await
                .map(|_| i)
        }
    }))
    .await;
    let winners: Vec<u8> = results
        .iter()
        .filter_map(|r| r.as_ref().ok().copied())
        .collect();
    assert_eq!(winners.len(), 1, "{results:?}");
    for r in &results {
        if let Err(e) = r {
            assert!(matches!(e, DriverError::AlreadyExists(_)), "{e:?}");
        }
    }
    assert_eq!(&d.get(&race).await.unwrap().0[..], &[winners[0]; 16]);
    d.delete(&race).await.unwrap();
}

pub async fn replace_if_unchanged(d: &dyn Driver, p: &str) {
    let key = k(p, "record.json");
    let v1 = d
        .put(&key, Bytes::from_static(b"{\"n\":1}"), PutMode::Overwrite)
        .await
        .unwrap();
    if !d.capabilities().replace_if_unchanged {
        let e = d
            .put(&key, Bytes::from_static(b"x"), PutMode::Replace(v1))
            .await
            .unwrap_err();
        assert!(matches!(e, DriverError::Unsupported { .. }), "{e:?}");
        d.delete(&key).await.unwrap();
        return;
    }
    let v2 = d
        .put(
            &key,
            Bytes::from_static(b"{\"n\":2}"),
            PutMode::Replace(v1.clone()),
        )
        .await
        .unwrap();
    // The old version no longer matches.
    let e = d
        .put(&key, Bytes::from_static(b"{\"n\":3}"), PutMode::Replace(v1))
        .await
        .unwrap_err();
    assert!(matches!(e, DriverError::PreconditionFailed(_)), "{e:?}");
    assert_eq!(&d.get(&key).await.unwrap().0[..], b"{\"n\":2}");
    // Racing replacers of one version: one wins.
    let results = futures::future::join_all((0..6u8).map(|i| {
        let (key, v2) = (key.clone(), v2.clone());
        async move {
            d.put(&key, Bytes::from(vec![b'a' + i]), PutMode::Replace(v2))
                .await
                .map(|_| i)
        }
    }))
    .await;
    let winners: Vec<u8> = results
        .iter()
        .filter_map(|r| r.as_ref().ok().copied())
        .collect();
    assert_eq!(winners.len(), 1, "{results:?}");
    assert_eq!(&d.get(&key).await.unwrap().0[..], &[b'a' + winners[0]]);
    d.delete(&key).await.unwrap();
    let e = d
        .put(&key, Bytes::from_static(b"x"), PutMode::Replace(v2))
        .await
        .unwrap_err();
    assert!(
        matches!(
            e,
            DriverError::NotFound(_) | DriverError::PreconditionFailed(_)
        ),
        "{e:?}"
    );
    assert!(d.get(&key).await.unwrap_err().is_not_found());
}

pub async fn ranged_reads(d: &dyn Driver, p: &str) {
    let key = k(p, "blobs/data");
    let data = pattern(3 * 1024 * 1024 + 17, 1);
    d.put(&key, Bytes::from(data.clone()), PutMode::Overwrite)
        .await
        .unwrap();
    let size = data.len() as u64;
    assert_eq!(d.reader(&key, 0, None).await.unwrap().size, size);
    assert_eq!(read_all(d, &key, 0, None).await, data);
    for (off, len) in [
        (1u64, 1u64),
        (4095, 4097),
        (1 << 20, 1 << 20),
        (size - 1, 1),
        (7, 0),
    ] {
        assert_eq!(
            read_all(d, &key, off, Some(len)).await,
            &data[off as usize..(off + len) as usize],
            "offset {off} len {len}"
        );
    }
    // To the end, and a range running past the end is cut there.
    assert_eq!(
        read_all(d, &key, size - 10, None).await,
        &data[data.len() - 10..]
    );
    assert_eq!(
        read_all(d, &key, size - 10, Some(1000)).await,
        &data[data.len() - 10..]
    );
    // At the end: nothing. Past it: an invalid offset.
    assert!(read_all(d, &key, size, None).await.is_empty());
    let e = d.reader(&key, size + 1, None).await.unwrap_err();
    assert!(matches!(e, DriverError::InvalidOffset { .. }), "{e:?}");
    assert!(
        d.reader(&k(p, "nope"), 0, None)
            .await
            .unwrap_err()
            .is_not_found()
    );
    d.delete(&key).await.unwrap();
}

fn digest_of(data: &[u8]) -> Digest {
    Digest::sha256(data)
}

/// Writes `data` in chunks of `chunk` bytes.
async fn write_chunks(w: &mut dyn registry::storage::Writer, data: &[u8], chunk: usize) {
    for c in data.chunks(chunk) {
        w.write(Bytes::copy_from_slice(c)).await.unwrap();
    }
}

pub async fn writer_append_commit(d: &dyn Driver, p: &str) {
    let path = k(p, "_uploads/u1/data");
    let dest = k(p, "blobs/sha256/ab/x/data");
    let data = pattern(1_500_000, 2);
    let mut w = d.writer(&path, WriterStart::New).await.unwrap();
    assert_eq!(w.size(), 0);
    w.reserve(data.len() as u64);
    write_chunks(w.as_mut(), &data[..700_001], 65_536).await;
    assert_eq!(w.size(), 700_001);
    w.flush().await.unwrap();
    assert_eq!(d.writer_size(&path).await.unwrap(), 700_001);
    write_chunks(w.as_mut(), &data[700_001..], 10_000).await;
    assert_eq!(w.size(), data.len() as u64);
    let c = w.commit(&digest_of(&data), &dest).await.unwrap();
    assert_eq!(c.size, data.len() as u64);
    assert!(!c.reused);
    assert_eq!(read_all(d, &dest, 0, None).await, data);
    assert!(d.writer_size(&path).await.unwrap_err().is_not_found());
    // Only the destination is left.
    let keys: Vec<String> = d.walk(p).map_ok(|e| e.path).try_collect().await.unwrap();
    assert_eq!(keys, vec!["blobs/sha256/ab/x/data".to_owned()]);
    d.delete(&dest).await.unwrap();
}

pub async fn writer_commit_keeps_existing_content(d: &dyn Driver, p: &str) {
    let dest = k(p, "blobs/pool/data");
    let data = pattern(10_000, 3);
    let v = d
        .put(&dest, Bytes::from(data.clone()), PutMode::Overwrite)
        .await
        .unwrap();
    let path = k(p, "_uploads/u2/data");
    let mut w = d.writer(&path, WriterStart::New).await.unwrap();
    write_chunks(w.as_mut(), &data, 4096).await;
    let c = w.commit(&digest_of(&data), &dest).await.unwrap();
    assert!(c.reused);
    assert_eq!(c.size, 10_000);
    assert_eq!(d.get(&dest).await.unwrap().0, data);
    let _ = v;
    assert!(d.writer_size(&path).await.unwrap_err().is_not_found());
    d.delete(&dest).await.unwrap();
}

pub async fn writer_digest_mismatch_cancels(d: &dyn Driver, p: &str) {
    let path = k(p, "_uploads/u3/data");
    let dest = k(p, "blobs/wrong/data");
    let mut w = d.writer(&path, WriterStart::New).await.unwrap();
    write_chunks(w.as_mut(), b"hello", 2).await;
    w.flush().await.unwrap();
    write_chunks(w.as_mut(), b" world", 3).await;
    let e = w.commit(&digest_of(b"hello"), &dest).await.unwrap_err();
    match e {
        DriverError::DigestMismatch { computed, .. } => {
            assert_eq!(computed, digest_of(b"hello world"))
        }
        e => panic!("{e:?}"),
    }
    assert!(d.stat(&dest).await.unwrap_err().is_not_found());
    assert!(d.writer_size(&path).await.unwrap_err().is_not_found());
}

pub async fn writer_cancel_removes_everything(d: &dyn Driver, p: &str) {
    let path = k(p, "_uploads/u4/data");
    let mut w = d.writer(&path, WriterStart::New).await.unwrap();
    write_chunks(w.as_mut(), &pattern(300_000, 4), 50_000).await;
    w.flush().await.unwrap();
    write_chunks(w.as_mut(), &pattern(1000, 5), 100).await;
    w.cancel().await.unwrap();
    assert!(d.writer_size(&path).await.unwrap_err().is_not_found());
    // A cancel after a restart: resume, then cancel.
    let mut w = d.writer(&path, WriterStart::New).await.unwrap();
    write_chunks(w.as_mut(), b"abc", 1).await;
    w.flush().await.unwrap();
    drop(w);
    let w = d.writer(&path, WriterStart::Resume).await.unwrap();
    assert_eq!(w.size(), 3);
    w.cancel().await.unwrap();
    assert!(
        d.writer(&path, WriterStart::Resume)
            .await
            .err()
            .unwrap()
            .is_not_found()
    );
}

/// A writer's storage outside its keys (an S3 multipart upload) is listed as a pending
/// upload at the writer's key, below its folder only, and an abort ends it; the
/// filesystem has none. What the uploads task relies on.
pub async fn pending_uploads_are_listed_and_aborted(d: &dyn Driver, p: &str) {
    let path = k(p, "_uploads/u9/data");
    let mut w = d.writer(&path, WriterStart::New).await.unwrap();
    write_chunks(w.as_mut(), b"abc", 1).await;
    w.flush().await.unwrap();
    drop(w);
    let pending = d.pending_uploads(p).await.unwrap();
    let expected = usize::from(d.name() == "s3");
    assert_eq!(pending.len(), expected, "{pending:?}");
    for u in &pending {
        assert_eq!(u.path, path);
        assert!(u.started <= std::time::SystemTime::now() + std::time::Duration::from_secs(60));
    }
    assert!(
        d.pending_uploads(&k(p, "_uploads/other"))
            .await
            .unwrap()
            .is_empty()
    );
    for u in &pending {
        d.abort_pending(u).await.unwrap();
        d.abort_pending(u).await.unwrap(); // gone counts as aborted
    }
    assert!(d.pending_uploads(p).await.unwrap().is_empty());
    d.delete(&k(p, "_uploads/u9")).await.unwrap();
}

pub async fn writer_resumes_after_restart(d: &dyn Driver, p: &str) {
    let path = k(p, "_uploads/u5/data");
    let dest = k(p, "blobs/resumed/data");
    let data = pattern(900_000, 6);
    let (a, rest) = data.split_at(300_000);
    let (b, c) = rest.split_at(300_000);
    let mut w = d.writer(&path, WriterStart::New).await.unwrap();
    write_chunks(w.as_mut(), a, 30_000).await;
    w.flush().await.unwrap();
    drop(w); // the server goes away
    assert_eq!(d.writer_size(&path).await.unwrap(), 300_000);
    let mut w = d.writer(&path, WriterStart::Resume).await.unwrap();
    assert_eq!(w.size(), 300_000);
    write_chunks(w.as_mut(), b, 7_777).await;
    w.flush().await.unwrap();
    drop(w);
    let mut w = d.writer(&path, WriterStart::Resume).await.unwrap();
    assert_eq!(w.size(), 600_000);
    // Bytes written after the last flush may or may not survive a restart; a resumed
    // writer's size says which, and its content is that prefix.
    write_chunks(w.as_mut(), &c[..1000], 100).await;
    drop(w);
    let mut w = d.writer(&path, WriterStart::Resume).await.unwrap();
    let kept = w.size() as usize;
    assert!((600_000..=601_000).contains(&kept), "{kept}");
    write_chunks(w.as_mut(), &data[kept..], 50_000).await;
    let done = w.commit(&digest_of(&data), &dest).await.unwrap();
    assert_eq!(done.size, data.len() as u64);
    assert_eq!(read_all(d, &dest, 0, None).await, data);
    d.delete(&dest).await.unwrap();
}

/// Crosses S3's part boundaries (5 MiB minimum) with flushes inside parts, so a tail is
/// kept and taken up again.
pub async fn writer_large_multipart(d: &dyn Driver, p: &str) {
    let path = k(p, "_uploads/u6/data");
    let dest = k(p, "blobs/large/data");
    let data = pattern(23 * 1024 * 1024 + 123, 7);
    let mut w = d.writer(&path, WriterStart::New).await.unwrap();
    let mut at = 0usize;
    for (i, cut) in [3_000_000usize, 9_000_000, 11_000_000, 20_000_000]
        .into_iter()
        .enumerate()
    {
        write_chunks(w.as_mut(), &data[at..cut], 256 * 1024 + i).await;
        w.flush().await.unwrap();
        at = cut;
        if i % 2 == 1 {
            drop(w);
            w = d.writer(&path, WriterStart::Resume).await.unwrap();
            assert_eq!(w.size() as usize, cut);
        }
    }
    write_chunks(w.as_mut(), &data[at..], 1 << 20).await;
    w.commit(&digest_of(&data), &dest).await.unwrap();
    let st = d.stat(&dest).await.unwrap();
    assert_eq!(st.size, data.len() as u64);
    let back = read_all(d, &dest, 0, None).await;
    assert!(back == data, "the committed content differs");
    assert_eq!(
        read_all(d, &dest, 5 * 1024 * 1024 - 3, Some(10)).await,
        &data[5 * 1024 * 1024 - 3..5 * 1024 * 1024 + 7]
    );
    d.delete(&dest).await.unwrap();
}

/// A part sent after the last flush and then lost with the server: the resumed writer
/// starts from what its state (or, on disk, the file) holds and sends the rest again.
pub async fn writer_redoes_unflushed_parts(d: &dyn Driver, p: &str) {
    let path = k(p, "_uploads/u8/data");
    let dest = k(p, "blobs/redone/data");
    let data = pattern(14 * 1024 * 1024 + 5, 8);
    let mut w = d.writer(&path, WriterStart::New).await.unwrap();
    write_chunks(w.as_mut(), &data[..3_000_000], 100_000).await;
    w.flush().await.unwrap();
    // More than a part (5 MiB on S3) goes out, then the writer is gone unflushed.
    write_chunks(w.as_mut(), &data[3_000_000..11_000_000], 100_000).await;
    drop(w);
    let mut w = d.writer(&path, WriterStart::Resume).await.unwrap();
    let kept = w.size() as usize;
    assert!((3_000_000..=11_000_000).contains(&kept), "{kept}");
    write_chunks(w.as_mut(), &data[kept..], 300_000).await;
    w.commit(&digest_of(&data), &dest).await.unwrap();
    assert!(read_all(d, &dest, 0, None).await == data, "content differs");
    d.delete(&dest).await.unwrap();
}

/// A driver that redirects gives a URL a plain HTTP client can GET the object from.
pub async fn redirect_urls_serve_the_object(d: &dyn Driver, p: &str) {
    let key = k(p, "blobs/redirect/data");
    let data = pattern(100_000, 11);
    d.put(&key, Bytes::from(data.clone()), PutMode::Overwrite)
        .await
        .unwrap();
    let url = d
        .redirect_url(&key, Duration::from_secs(600))
        .await
        .unwrap();
    match (d.capabilities().redirect, url) {
        (false, None) => {}
        (true, Some(url)) => assert_eq!(http_get(&url).await, data),
        (cap, url) => panic!("capability {cap} but url {url:?}"),
    }
    d.delete(&key).await.unwrap();
}

/// GET of a plain `http://host:port/path?query` URL over HTTP/1.0; the body of a 200.
async fn http_get(url: &str) -> Vec<u8> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let rest = url.strip_prefix("http://").expect("an http URL");
    let (host, path) = rest.split_at(rest.find('/').unwrap_or(rest.len()));
    let mut s = tokio::net::TcpStream::connect(host).await.unwrap();
    s.write_all(format!("GET {path} HTTP/1.0\r\nHost: {host}\r\n\r\n").as_bytes())
        .await
        .unwrap();
    let mut buf = Vec::new();
    s.read_to_end(&mut buf).await.unwrap();
    let at = buf.windows(4).position(|w| w == b"\r\n\r\n").unwrap();
    let head = String::from_utf8_lossy(&buf[..at]).into_owned();
    assert!(
        head.starts_with("HTTP/1.1 200") || head.starts_with("HTTP/1.0 200"),
        "{head}"
    );
    buf[at + 4..].to_vec()
}

pub async fn writer_sha512_commit(d: &dyn Driver, p: &str) {
    let path = k(p, "_uploads/u9/data");
    let dest = k(p, "blobs/sha512/data");
    let data = pattern(200_000, 9);
    let want: Digest = {
        let mut h = registry::digest::Hasher::new(registry::digest::Algorithm::Sha512);
        h.update(&data);
        h.finish()
    };
    let mut w = d.writer(&path, WriterStart::New).await.unwrap();
    write_chunks(w.as_mut(), &data, 65_536).await;
    w.commit(&want, &dest).await.unwrap();
    assert_eq!(read_all(d, &dest, 0, None).await, data);
    d.delete(&dest).await.unwrap();
}

pub async fn writer_new_replaces_old(d: &dyn Driver, p: &str) {
    let path = k(p, "_uploads/u7/data");
    let mut w = d.writer(&path, WriterStart::New).await.unwrap();
    write_chunks(w.as_mut(), b"old bytes", 3).await;
    w.flush().await.unwrap();
    drop(w);
    let w = d.writer(&path, WriterStart::New).await.unwrap();
    assert_eq!(w.size(), 0);
    assert_eq!(d.writer_size(&path).await.unwrap(), 0);
    w.cancel().await.unwrap();
}

pub async fn concurrent_writers(d: &dyn Driver, p: &str) {
    let jobs = (0..4u32).map(|i| async move {
        let path = k(p, &format!("_uploads/c{i}/data"));
        let dest = k(p, &format!("blobs/c{i}/data"));
        let data = pattern(700_000 + i as usize * 1000, 10 + i);
        let mut w = d.writer(&path, WriterStart::New).await.unwrap();
        for c in data.chunks(16_384) {
            w.write(Bytes::copy_from_slice(c)).await.unwrap();
            tokio::task::yield_now().await;
        }
        w.commit(&digest_of(&data), &dest).await.unwrap();
        (dest, data)
    });
    for (dest, data) in futures::future::join_all(jobs).await {
        assert_eq!(read_all(d, &dest, 0, None).await, data);
        d.delete(&dest).await.unwrap();
    }
}

pub async fn stat_files_and_folders(d: &dyn Driver, p: &str) {
    let before = SystemTime::now() - Duration::from_secs(120);
    let key = k(p, "dir/file");
    d.put(&key, Bytes::from_static(b"12345"), PutMode::Overwrite)
        .await
        .unwrap();
    let st = d.stat(&key).await.unwrap();
    assert_eq!(st.size, 5);
    assert!(!st.is_dir);
    assert!(st.modified > before, "{:?}", st.modified);
    let dir = d.stat(&k(p, "dir")).await.unwrap();
    assert!(dir.is_dir);
    assert!(d.stat(&k(p, "nope")).await.unwrap_err().is_not_found());
    assert!(d.stat(&k(p, "di")).await.unwrap_err().is_not_found());
    d.touch(&key).await.unwrap();
    assert_eq!(d.get(&key).await.unwrap().0, &b"12345"[..]);
    assert!(d.stat(&key).await.unwrap().modified >= st.modified);
    assert!(d.touch(&k(p, "nope")).await.unwrap_err().is_not_found());
    d.delete(&key).await.unwrap();
}

pub async fn list_one_level(d: &dyn Driver, p: &str) {
    for rel in ["l/x", "l/y", "l/b/z", "l/b/c/deep", "lz"] {
        d.put(&k(p, rel), Bytes::from_static(b"1"), PutMode::Overwrite)
            .await
            .unwrap();
    }
    let e = |name: &str, is_dir| Entry {
        name: name.into(),
        is_dir,
    };
    assert_eq!(
        d.list(&k(p, "l")).await.unwrap(),
        vec![e("b", true), e("x", false), e("y", false)]
    );
    assert_eq!(
        d.list(&k(p, "l/b")).await.unwrap(),
        vec![e("c", true), e("z", false)]
    );
    assert!(d.list(&k(p, "nothing")).await.unwrap_err().is_not_found());
    d.delete(&k(p, "l")).await.unwrap();
    d.delete(&k(p, "lz")).await.unwrap();
}

pub async fn walk_a_prefix(d: &dyn Driver, p: &str) {
    let mut want = Vec::new();
    for a in 0..3 {
        for b in 0..12 {
            let rel = format!("w/{a:02x}/{b:04x}/data");
            let body = vec![b'x'; a * 10 + b];
            want.push((rel.clone(), body.len() as u64));
            d.put(&k(p, &rel), Bytes::from(body), PutMode::Overwrite)
                .await
                .unwrap();
        }
    }
    d.put(
        &k(p, "w2/outside"),
        Bytes::from_static(b"o"),
        PutMode::Overwrite,
    )
    .await
    .unwrap();
    let mut got: Vec<(String, u64)> = d
        .walk(&k(p, "w"))
        .map_ok(|e| (format!("w/{}", e.path), e.size))
        .try_collect()
        .await
        .unwrap();
    got.sort();
    want.sort();
    assert_eq!(got, want);
    assert_eq!(d.walk(&k(p, "none")).count().await, 0);
    d.delete(&k(p, "w")).await.unwrap();
    d.delete(&k(p, "w2")).await.unwrap();
}

/// A chain of single folders with files along it (`drydock/server.lock` beside nothing
/// else): each file is walked exactly once, however deep the chain.
pub async fn walk_a_chain_of_single_folders(d: &dyn Driver, p: &str) {
    let mut want = Vec::new();
    for depth in 1..=6 {
        let rel: Vec<String> = (0..depth).map(|i| format!("c{i}")).collect();
        let rel = format!("{}/f", rel.join("/"));
        d.put(&k(p, &rel), Bytes::from_static(b"f"), PutMode::Overwrite)
            .await
            .unwrap();
        want.push(rel.clone());
        let mut got: Vec<String> = d
            .walk(&k(p, "c0"))
            .map_ok(|e| format!("c0/{}", e.path))
            .try_collect()
            .await
            .unwrap();
        got.sort();
        want.sort();
        assert_eq!(got, want, "a chain {depth} deep");
    }
    d.delete(&k(p, "c0")).await.unwrap();
}

pub async fn delete_files_and_folders(d: &dyn Driver, p: &str) {
    let a = k(p, "d/one/link");
    d.put(&a, Bytes::from_static(b"1"), PutMode::Overwrite)
        .await
        .unwrap();
    d.put(
        &k(p, "d/two/link"),
        Bytes::from_static(b"2"),
        PutMode::Overwrite,
    )
    .await
    .unwrap();
    d.delete(&a).await.unwrap();
    assert!(d.stat(&a).await.unwrap_err().is_not_found());
    // The emptied folder is gone; its sibling stays.
    assert!(d.list(&k(p, "d/one")).await.unwrap_err().is_not_found());
    assert_eq!(d.list(&k(p, "d")).await.unwrap().len(), 1);
    assert!(d.delete(&a).await.unwrap_err().is_not_found());
    d.delete(&k(p, "d")).await.unwrap();
    assert!(
        d.stat(&k(p, "d/two/link"))
            .await
            .unwrap_err()
            .is_not_found()
    );
}

pub async fn delete_many_in_batches(d: &dyn Driver, p: &str) {
    // More than one DeleteObjects request holds (1,000 keys).
    let keys: Vec<String> = (0..1100)
        .map(|i| k(p, &format!("pool/{:02x}/{i:06}/data", i % 7)))
        .collect();
    futures::stream::iter(keys.iter())
        .map(|key| d.put(key, Bytes::from_static(b"b"), PutMode::Overwrite))
        .buffer_unordered(32)
        .try_collect::<Vec<_>>()
        .await
        .unwrap();
    let mut batch = keys.clone();
    batch.push(k(p, "pool/00/missing/data"));
    // A file one level below the prefix, too.
    let shallow = k(p, "top");
    d.put(&shallow, Bytes::from_static(b"t"), PutMode::Overwrite)
        .await
        .unwrap();
    batch.push(shallow);
    let results = d.delete_many(&batch).await.unwrap();
    assert_eq!(results.len(), batch.len());
    assert!(
        results.iter().all(Result::is_ok),
        "{:?}",
        results.iter().find(|r| r.is_err())
    );
    assert_eq!(d.walk(&k(p, "pool")).count().await, 0);
    assert!(d.delete_many(&[]).await.unwrap().is_empty());
}

pub async fn rename_moves(d: &dyn Driver, p: &str) {
    let (a, b) = (k(p, "m/from/data"), k(p, "m/to/data"));
    d.put(&a, Bytes::from_static(b"moving"), PutMode::Overwrite)
        .await
        .unwrap();
    d.rename(&a, &b).await.unwrap();
    assert!(d.get(&a).await.unwrap_err().is_not_found());
    assert_eq!(&d.get(&b).await.unwrap().0[..], b"moving");
    // Onto an existing key: replaced.
    d.put(&a, Bytes::from_static(b"second"), PutMode::Overwrite)
        .await
        .unwrap();
    d.rename(&a, &b).await.unwrap();
    assert_eq!(&d.get(&b).await.unwrap().0[..], b"second");
    assert!(d.rename(&a, &b).await.unwrap_err().is_not_found());
    d.delete(&b).await.unwrap();
}

pub async fn invalid_paths_are_refused(d: &dyn Driver, p: &str) {
    for bad in ["../x", "a//b", "/abs", "a/./b", "trailing/"] {
        let bad = if bad.starts_with('/') {
            bad.to_owned()
        } else {
            k(p, bad)
        };
        let e = d
            .put(&bad, Bytes::from_static(b"x"), PutMode::Overwrite)
            .await
            .unwrap_err();
        assert!(matches!(e, DriverError::InvalidPath(_)), "{bad}: {e:?}");
        assert!(matches!(
            d.get(&bad).await.unwrap_err(),
            DriverError::InvalidPath(_)
        ));
    }
}

/// The suite as `(name, test)` pairs, for the per-driver test files' macro.
pub type SuiteFn = for<'a> fn(
    &'a dyn Driver,
    &'a str,
) -> std::pin::Pin<Box<dyn std::future::Future<Output = ()> + 'a>>;

/// Runs one suite test under its own prefix and checks it left nothing behind.
pub async fn run(d: Arc<dyn Driver>, name: &str, test: SuiteFn) {
    let prefix = format!("suite/{name}-{}", uuid::Uuid::new_v4().simple());
    test(d.as_ref(), &prefix).await;
    assert_nothing_left(d.as_ref(), &prefix).await;
}

/// Declares one `#[tokio::test]` per suite test; `$make` is an expression giving an
/// `Arc<dyn Driver>` and a closure whose future runs after the test (a driver's own
/// leftover check: files on disk, multipart uploads in a bucket).
#[macro_export]
macro_rules! driver_suite {
    ($make:expr; $($name:ident),* $(,)?) => {
        $(
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $name() {
                let (d, after) = $make;
                suite::run(d, stringify!($name), |d, p| Box::pin(suite::$name(d, p))).await;
                after().await;
            }
        )*
    };
}

/// Every test of the suite, for `driver_suite!`.
#[macro_export]
macro_rules! all_driver_tests {
    ($make:expr) => {
        driver_suite!($make;
            put_get_overwrite,
            create_only_conflicts,
            replace_if_unchanged,
            ranged_reads,
            writer_append_commit,
            writer_commit_keeps_existing_content,
            writer_digest_mismatch_cancels,
            writer_cancel_removes_everything,
            pending_uploads_are_listed_and_aborted,
            writer_resumes_after_restart,
            writer_large_multipart,
            writer_sha512_commit,
            writer_redoes_unflushed_parts,
            writer_new_replaces_old,
            concurrent_writers,
            stat_files_and_folders,
            list_one_level,
            walk_a_prefix,
            walk_a_chain_of_single_folders,
            delete_files_and_folders,
            delete_many_in_batches,
            rename_moves,
            invalid_paths_are_refused,
            redirect_urls_serve_the_object,
        );
    };
}
