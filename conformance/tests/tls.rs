//! TLS as clients meet it, against the real server with a CA made in each test (rcgen):
//! HTTP/2 and HTTP/1.1 over ALPN, `minimumtls`, skopeo and podman verifying the
//! certificate (`--cert-dir`), client certificates required or optional and naming the
//! user the access policy judges, certificate rotation on SIGHUP with a push in flight,
//! and the start-up errors and warnings of the `registry` binary.

mod clients;

use std::path::{Path, PathBuf};
use std::process::Command;

use clients::*;
use conformance::auth::*;
use conformance::{ServerProcess, TestServer, digest_of, push_image, random_bytes};

async fn tls_server(
    dir: &Path,
    ca: &Ca,
    adjust: impl FnOnce(&mut registry::config::Config),
) -> TestServer {
    TestServer::start_with(|c| {
        enable_tls(c, dir, ca);
        c.gc.on_startup = false;
        adjust(c);
    })
    .await
}

/// An error with its sources, for failure messages.
fn error_chain(e: &reqwest::Error) -> String {
    let mut text = e.to_string();
    let mut src = std::error::Error::source(e);
    while let Some(s) = src {
        text.push_str(": ");
        text.push_str(&s.to_string());
        src = s.source();
    }
    text
}

#[tokio::test]
async fn https_with_http2_over_alpn_and_http1() {
    let dir = tempdir();
    let ca = Ca::new("drydock test CA");
    let s = tls_server(dir.path(), &ca, |_| {}).await;
    assert!(s.base.starts_with("https://"), "{}", s.base);

    // HTTP/2 when the client offers it (ALPN), and a whole push and pull over it.
    let c = tls_client(&ca, None);
    let r = c.get(s.url("/v2/")).send().await.unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.version(), reqwest::Version::HTTP_2);
    let (digest, body) = push_image(&c, &s, "tls/h2", "v1", 7, 2).await;
    let r = c
        .get(s.url("/v2/tls/h2/manifests/v1"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.version(), reqwest::Version::HTTP_2);
    assert_eq!(r.text().await.unwrap(), body);

    // HTTP/1.1 when that is all the client speaks.
    let h1 = tls_client_builder(&ca, None).http1_only().build().unwrap();
    let r = h1
        .get(s.url(&format!("/v2/tls/h2/manifests/{digest}")))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.version(), reqwest::Version::HTTP_11);

    // TLS 1.2 is accepted by default, and 1.3 of course.
    for v in [
        reqwest::tls::Version::TLS_1_2,
        reqwest::tls::Version::TLS_1_3,
    ] {
        let c = tls_client_builder(&ca, None)
            .min_tls_version(v)
            .max_tls_version(v)
            .build()
            .unwrap();
        assert_eq!(c.get(s.url("/v2/")).send().await.unwrap().status(), 200);
    }

    // A client that does not trust the test CA refuses the server.
    let other = Ca::new("another CA");
    let e = tls_client(&other, None)
        .get(s.url("/v2/"))
        .send()
        .await
        .unwrap_err();
    assert!(e.is_connect(), "{}", error_chain(&e));
    // Plain HTTP to the TLS port gets no HTTP answer.
    let plain = reqwest::Client::new();
    assert!(
        plain
            .get(format!("http://{}/v2/", s.addr))
            .send()
            .await
            .is_err()
    );
}

/// Over TLS and HTTP/2 (no `Host` header: the authority is in the request), the built-in
/// token service's realm is the https URL the client used, and its tokens work.
#[tokio::test]
async fn token_realm_over_http2_is_the_https_url_the_client_used() {
    let dir = tempdir();
    let ca = Ca::new("drydock test CA");
    let s = tls_server(dir.path(), &ca, |c| enable_token_service(c, dir.path())).await;
    let c = tls_client(&ca, None);
    let r = c.get(s.url("/v2/")).send().await.unwrap();
    assert_eq!(r.version(), reqwest::Version::HTTP_2);
    assert_eq!(r.status(), 401);
    let challenge = r.headers()["www-authenticate"].to_str().unwrap().to_owned();
    let realm = format!("https://127.0.0.1:{}/token", s.addr.port());
    assert!(
        challenge.starts_with(&format!("Bearer realm=\"{realm}\"")),
        "{challenge}"
    );
    let r = c
        .get(format!(
            "{realm}?service={SERVICE}&scope=repository:h2/app:pull,push"
        ))
        .basic_auth(ALICE.0, Some(ALICE.1))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let token: serde_json::Value = r.json().await.unwrap();
    let bearer = format!("Bearer {}", token["token"].as_str().unwrap());
    let data = random_bytes(1000, 3);
    let r = c
        .post(s.url(&format!(
            "/v2/h2/app/blobs/uploads/?digest={}",
            digest_of(&data)
        )))
        .header("authorization", &bearer)
        .body(data)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201);
    assert_eq!(r.version(), reqwest::Version::HTTP_2);
}

#[tokio::test]
async fn minimumtls_tls13_refuses_a_tls12_client() {
    let dir = tempdir();
    let ca = Ca::new("drydock test CA");
    let s = tls_server(dir.path(), &ca, |c| {
        c.http.tls.as_mut().unwrap().minimumtls = Some("tls1.3".into());
    })
    .await;
    let tls12 = tls_client_builder(&ca, None)
        .max_tls_version(reqwest::tls::Version::TLS_1_2)
        .build()
        .unwrap();
    let e = tls12.get(s.url("/v2/")).send().await.unwrap_err();
    assert!(e.is_connect(), "{}", error_chain(&e));
    let r = tls_client(&ca, None)
        .get(s.url("/v2/"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
}

/// The host:port containers/image clients use (they verify the certificate's IP SAN).
fn host(s: &TestServer) -> String {
    format!("127.0.0.1:{}", s.addr.port())
}

#[tokio::test]
async fn skopeo_and_podman_verify_the_certificate() {
    require("skopeo");
    let dir = tempdir();
    let ca = Ca::new("drydock test CA");
    let s = tls_server(dir.path(), &ca, |_| {}).await;
    let certs = cert_dir(&dir.path().join("certs"), &ca, None);
    let h = host(&s);
    let fx = fixture(31);

    // skopeo with verification on (the default) and the test CA: push, inspect, pull.
    skopeo(["copy", "--preserve-digests", "--dest-cert-dir"])
        .arg(&certs)
        .arg(oci(fx.dir.path(), "v1"))
        .arg(format!("docker://{h}/tls/skopeo:v1"))
        .run()
        .await;
    let out = skopeo(["inspect", "--raw", "--cert-dir"])
        .arg(&certs)
        .arg(format!("docker://{h}/tls/skopeo:v1"))
        .run()
        .await;
    assert_eq!(digest_of(&out.stdout), fx.image.digest);
    let back = tempdir();
    skopeo(["copy", "--preserve-digests", "--src-cert-dir"])
        .arg(&certs)
        .arg(format!("docker://{h}/tls/skopeo:v1"))
        .arg(oci(back.path(), "v1"))
        .run()
        .await;
    assert_same_content(fx.dir.path(), back.path(), "v1");
    // Without the CA, skopeo refuses the server (verification is on).
    let out = skopeo(["inspect", "--raw"])
        .arg(format!("docker://{h}/tls/skopeo:v1"))
        .fail()
        .await;
    assert!(
        out.stderr().contains("certificate"),
        "skopeo without the CA: {}",
        out.stderr()
    );

    // podman with --cert-dir: pull what skopeo pushed, push it under another name.
    let p = Podman::new();
    p.cmd()
        .args(["pull", "--tls-verify=true", "--cert-dir"])
        .arg(&certs)
        .arg(format!("{h}/tls/skopeo:v1"))
        .run()
        .await;
    p.cmd()
        .args(["push", "--tls-verify=true", "--cert-dir"])
        .arg(&certs)
        .arg(format!("{h}/tls/skopeo:v1"))
        .arg(format!("docker://{h}/tls/podman:v1"))
        .run()
        .await;
    let r = tls_client(&ca, None)
        .get(s.url("/v2/tls/podman/tags/list"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let tags: serde_json::Value = r.json().await.unwrap();
    assert_eq!(tags["tags"], serde_json::json!(["v1"]));
    // And without the CA, podman refuses too.
    let out = p
        .cmd()
        .args(["pull", "--tls-verify=true"])
        .arg(format!("{h}/tls/podman:v1"))
        .fail()
        .await;
    assert!(
        out.stderr().contains("certificate"),
        "podman without the CA: {}",
        out.stderr()
    );
}

/// Client certificates from `ca` required (`require-and-verify-client-cert`) and naming
/// the user (`auth.mtls`), judged by [`POLICY`].
async fn mtls_server(dir: &Path, ca: &Ca, clientauth: Option<&str>) -> TestServer {
    let cas = ca.write(&dir.join("client-ca.crt"));
    let clientauth = clientauth.map(str::to_owned);
    let d = dir.to_owned();
    tls_server(dir, ca, move |c| {
        let t = c.http.tls.as_mut().unwrap();
        t.clientcas = vec![cas];
        t.clientauth = clientauth;
        c.auth.mtls = true;
        // htpasswd too, so optional certificates fall back to passwords.
        enable_htpasswd(c, &d);
    })
    .await
}

#[tokio::test]
async fn mtls_required_refuses_clients_without_a_certificate() {
    let dir = tempdir();
    let ca = Ca::new("drydock test CA");
    let s = mtls_server(dir.path(), &ca, None).await;
    let alice = ca.client(ALICE.0);
    let reader = ca.client(READER.0);

    // Alice's certificate is Alice: she may push.
    let c = tls_client(&ca, Some(&alice));
    push_image(&c, &s, "mtls/app", "v1", 3, 1).await;
    let before = conformance::store_files(s.root());

    // No certificate: the handshake is refused, whatever the password.
    let none = tls_client(&ca, None);
    let e = none
        .get(s.url("/v2/"))
        .header("authorization", basic(ALICE))
        .send()
        .await
        .unwrap_err();
    assert!(e.is_connect() || e.is_request(), "{}", error_chain(&e));
    // A certificate from another CA: refused the same way.
    let stranger = Ca::new("not the client CA");
    let e = tls_client_builder(&ca, Some(&stranger.client(ALICE.0)))
        .build()
        .unwrap()
        .get(s.url("/v2/"))
        .send()
        .await
        .unwrap_err();
    assert!(e.is_connect() || e.is_request(), "{}", error_chain(&e));

    // The reader's certificate is the reader: pull yes, push and delete 403.
    let rc = tls_client(&ca, Some(&reader));
    let r = rc
        .get(s.url("/v2/mtls/app/manifests/v1"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let data = random_bytes(100, 1);
    let r = rc
        .post(s.url(&format!(
            "/v2/mtls/app/blobs/uploads/?digest={}",
            digest_of(&data)
        )))
        .body(data)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 403);
    let r = rc
        .delete(s.url("/v2/mtls/app/manifests/v1"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 403);
    assert_eq!(
        conformance::store_files(s.root()),
        before,
        "a refusal changed the store"
    );

    // skopeo with the client certificate in --cert-dir: works; without: refused.
    require("skopeo");
    let h = host(&s);
    let with = cert_dir(&dir.path().join("alice-certs"), &ca, Some(&alice));
    let fx = fixture(41);
    skopeo(["copy", "--preserve-digests", "--dest-cert-dir"])
        .arg(&with)
        .arg(oci(fx.dir.path(), "v1"))
        .arg(format!("docker://{h}/mtls/skopeo:v1"))
        .run()
        .await;
    let without = cert_dir(&dir.path().join("no-client"), &ca, None);
    let out = skopeo(["inspect", "--raw", "--cert-dir"])
        .arg(&without)
        .arg(format!("docker://{h}/mtls/skopeo:v1"))
        .fail()
        .await;
    assert!(
        out.stderr().contains("certificate") || out.stderr().contains("tls"),
        "skopeo without a client certificate: {}",
        out.stderr()
    );
    let out = skopeo(["inspect", "--raw", "--cert-dir"])
        .arg(&with)
        .arg(format!("docker://{h}/mtls/skopeo:v1"))
        .run()
        .await;
    assert_eq!(digest_of(&out.stdout), fx.image.digest);
}

#[tokio::test]
async fn optional_client_certificates_name_the_user_when_given() {
    let dir = tempdir();
    let ca = Ca::new("drydock test CA");
    let s = mtls_server(dir.path(), &ca, Some("verify-client-cert-if-given")).await;
    // No certificate: an anonymous client (401 with the challenge), or a password.
    let none = tls_client(&ca, None);
    let r = none.get(s.url("/v2/")).send().await.unwrap();
    assert_eq!(r.status(), 401);
    let r = none
        .get(s.url("/v2/"))
        .header("authorization", basic(READER))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    // A certificate: its user, with no password.
    let c = tls_client(&ca, Some(&ca.client(ALICE.0)));
    push_image(&c, &s, "opt/app", "v1", 5, 1).await;
    let r = tls_client(&ca, Some(&ca.client(READER.0)))
        .put(s.url("/v2/opt/app/manifests/v2"))
        .header("content-type", "application/vnd.oci.image.manifest.v1+json")
        .body("{}")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 403);
    // A certificate from another CA is still refused at the handshake.
    let stranger = Ca::new("not the client CA");
    let e = tls_client(&ca, Some(&stranger.client(ALICE.0)))
        .get(s.url("/v2/"))
        .send()
        .await
        .unwrap_err();
    assert!(e.is_connect() || e.is_request(), "{}", error_chain(&e));
}

// ---------------------------------------------------------------------------------
// The binary: SIGHUP rotation, start-up errors and warnings
// ---------------------------------------------------------------------------------

fn write_config(dir: &Path, root: &Path, addr: &str, extra: &str) -> PathBuf {
    let p = dir.join("config.yml");
    std::fs::write(
        &p,
        format!(
            "version: 0.1\nlog:\n  level: info\nstorage:\n  filesystem:\n    rootdirectory: {}\n  delete:\n    enabled: true\ngc:\n  on_startup: false\nhttp:\n  addr: {addr}\n{extra}",
            root.display()
        ),
    )
    .unwrap();
    p
}

/// `http.tls` with `DIR/CERT` and `DIR/KEY`.
fn tls_files(dir: &Path, cert: &str, key: &str) -> String {
    format!(
        "  tls:\n    certificate: {}\n    key: {}\n",
        dir.join(cert).display(),
        dir.join(key).display()
    )
}

fn tls_section(dir: &Path) -> String {
    tls_files(dir, "server.crt", "server.key")
}

fn sighup(server: &ServerProcess) {
    // SAFETY: kill(2) with the pid of our own child.
    let rc = unsafe { libc::kill(server.child.id() as libc::pid_t, libc::SIGHUP) };
    assert_eq!(rc, 0, "kill -HUP");
}

/// The size of an upload session's data file (`.../_uploads/<id>/data`).
fn upload_file_size(root: &Path, repo: &str, session: &str) -> u64 {
    let id = session
        .split("/blobs/uploads/")
        .nth(1)
        .and_then(|rest| rest.split(['?', '/']).next())
        .expect("upload id in Location");
    let path = root
        .join("docker/registry/v2/repositories")
        .join(repo)
        .join("_uploads")
        .join(id)
        .join("data");
    std::fs::metadata(path).map_or(0, |m| m.len())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_rotates_the_certificate_and_a_push_in_flight_completes() {
    let dir = tempdir();
    let root = tempdir();
    let ca1 = Ca::new("first CA");
    ca1.server().write(dir.path(), "server");
    let cfg = write_config(
        dir.path(),
        root.path(),
        "127.0.0.1:0",
        &tls_section(dir.path()),
    );
    let server = ServerProcess::spawn(&cfg);
    let base = format!("https://{}", server.addr);

    // Client A trusts only the first CA and holds one HTTP/2 connection, made now.
    let a = tls_client(&ca1, None);
    let r = a.get(format!("{base}/v2/")).send().await.unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.version(), reqwest::Version::HTTP_2);
    let r = a
        .post(format!("{base}/v2/rotate/app/blobs/uploads/"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 202);
    let session = format!("{base}{}", r.headers()["location"].to_str().unwrap());

    // A PATCH whose body is still streaming: half of it now (2 MiB, more than the
    // server queues before it writes, so the data file shows it arrived).
    let data = random_bytes(4 << 20, 9);
    let half = data.len() / 2;
    let (mut tx, rx) = futures::channel::mpsc::channel::<Result<bytes::Bytes, std::io::Error>>(4);
    let patch = {
        let a = a.clone();
        let session = session.clone();
        tokio::spawn(async move {
            a.patch(&session)
                .header("content-type", "application/octet-stream")
                .body(reqwest::Body::wrap_stream(rx))
                .send()
                .await
        })
    };
    use futures::SinkExt as _;
    tx.send(Ok(bytes::Bytes::copy_from_slice(&data[..half])))
        .await
        .unwrap();
    // The server is writing the body before anything rotates: its data file grows. (The
    // upload status cannot say so: it waits for the PATCH that holds the session.) A
    // bounded poll of that condition, not a guess at how long it takes.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    while upload_file_size(root.path(), "rotate/app", &session) == 0 {
        assert!(
            std::time::Instant::now() < deadline,
            "the first half never reached the server's file"
        );
        tokio::time::sleep(std::time::Duration::from_millis(5)).await;
    }

    // Rotate to a certificate from another CA, then SIGHUP; wait for the server to say so.
    let ca2 = Ca::new("second CA");
    ca2.server().write(dir.path(), "server");
    sighup(&server);
    assert!(
        tokio::task::block_in_place(|| server.wait_for_log("TLS certificates reloaded", 1)),
        "no reload: {}",
        server.log_text()
    );

    // New connections get the new certificate: a fresh client of the first CA is refused,
    // one of the second CA is served.
    let e = tls_client(&ca1, None)
        .get(format!("{base}/v2/"))
        .send()
        .await
        .unwrap_err();
    assert!(e.is_connect(), "{}", error_chain(&e));
    let b = tls_client(&ca2, None);
    assert_eq!(
        b.get(format!("{base}/v2/")).send().await.unwrap().status(),
        200
    );

    // The push in flight on the old connection completes: rest of the body, then PUT.
    tx.send(Ok(bytes::Bytes::copy_from_slice(&data[half..])))
        .await
        .unwrap();
    drop(tx);
    let r = patch.await.unwrap().unwrap();
    assert_eq!(r.status(), 202, "the PATCH in flight");
    let digest = digest_of(&data);
    let sep = if session.contains('?') { '&' } else { '?' };
    let r = a
        .put(format!("{session}{sep}digest={digest}"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201, "the PUT on the old connection");
    let got = b
        .get(format!("{base}/v2/rotate/app/blobs/{digest}"))
        .send()
        .await
        .unwrap();
    assert_eq!(got.status(), 200);
    assert_eq!(got.bytes().await.unwrap(), data);

    // Files that do not load (a key that is not the certificate's): the old pair stays.
    let ca3 = Ca::new("third CA");
    std::fs::write(dir.path().join("server.crt"), ca3.server().cert_pem).unwrap();
    std::fs::write(dir.path().join("server.key"), ca3.server().key_pem).unwrap();
    sighup(&server);
    assert!(
        tokio::task::block_in_place(
            || server.wait_for_log("TLS certificates not reloaded; keeping the old ones", 1)
        ),
        "no refusal: {}",
        server.log_text()
    );
    let fresh = tls_client(&ca2, None);
    assert_eq!(
        fresh
            .get(format!("{base}/v2/"))
            .send()
            .await
            .unwrap()
            .status(),
        200
    );
    let e = tls_client(&ca3, None)
        .get(format!("{base}/v2/"))
        .send()
        .await
        .unwrap_err();
    assert!(e.is_connect(), "{}", error_chain(&e));
}

/// `registry serve CONFIG`, expected to stop at start-up; its stderr.
fn start_fails(cfg: &Path) -> String {
    let out = Command::new(conformance::registry_binary())
        .arg("serve")
        .arg(cfg)
        .env_remove("RUST_LOG")
        .output()
        .expect("run registry");
    assert!(!out.status.success(), "the server started");
    String::from_utf8_lossy(&out.stderr).into_owned()
}

#[test]
fn tls_the_server_cannot_honour_stops_start_up_naming_the_key() {
    let dir = tempdir();
    let root = tempdir();
    let ca = Ca::new("drydock test CA");
    ca.server().write(dir.path(), "server");
    // A key that is not the certificate's.
    std::fs::write(dir.path().join("other.key"), ca.server().key_pem).unwrap();
    let tls = tls_section(dir.path());
    for (section, key, says) in [
        (
            format!("{tls}    minimumtls: tls1.0\n"),
            "http.tls.minimumtls",
            "rustls",
        ),
        (
            tls_files(dir.path(), "missing.crt", "server.key"),
            "http.tls.certificate",
            "missing.crt",
        ),
        (
            tls_files(dir.path(), "server.crt", "other.key"),
            "http.tls.key",
            "does not fit",
        ),
    ] {
        let cfg = write_config(dir.path(), root.path(), "127.0.0.1:0", &section);
        let err = start_fails(&cfg);
        assert!(
            err.lines().any(|l| l.contains(key) && l.contains(says)),
            "{key}: {err}"
        );
    }
}

#[test]
fn a_non_loopback_listener_without_tls_or_auth_is_warned_about() {
    let dir = tempdir();
    let root = tempdir();
    let warned = |server: &ServerProcess| {
        let text = server.log_text();
        (
            text.contains("non-loopback address WITHOUT TLS"),
            text.contains("non-loopback address WITHOUT AUTHENTICATION"),
        )
    };
    // 0.0.0.0, plain HTTP, no auth: both warnings.
    let cfg = write_config(dir.path(), root.path(), "0.0.0.0:0", "");
    let server = ServerProcess::spawn(&cfg);
    assert_eq!(warned(&server), (true, true), "{}", server.log_text());
    drop(server);
    // Loopback: none.
    let cfg = write_config(dir.path(), root.path(), "127.0.0.1:0", "");
    let server = ServerProcess::spawn(&cfg);
    assert_eq!(warned(&server), (false, false), "{}", server.log_text());
    drop(server);
    // 0.0.0.0 with TLS and htpasswd: none.
    let ca = Ca::new("drydock test CA");
    ca.server().write(dir.path(), "server");
    write_htpasswd(&dir.path().join("htpasswd"), &[ALICE]);
    let extra = format!(
        "{}auth:\n  htpasswd:\n    path: {}\n",
        tls_section(dir.path()),
        dir.path().join("htpasswd").display()
    );
    let cfg = write_config(dir.path(), root.path(), "0.0.0.0:0", &extra);
    let server = ServerProcess::spawn(&cfg);
    assert_eq!(warned(&server), (false, false), "{}", server.log_text());
}

/// nginx in front, with the example of docs/security.md taken from the file itself (so
/// the documented set-up is the tested one): nginx terminates TLS with the test CA's
/// certificate; skopeo pushes and pulls through it with verification on and
/// credentials; the admin API is refused through it; drydock logs nginx's last
/// `X-Forwarded-For` hop as the client, never what the client claimed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nginx_in_front_as_documented() {
    require("nginx");
    require("skopeo");
    let dir = tempdir();
    let root = tempdir();
    let d = dir.path();
    write_htpasswd(&d.join("htpasswd"), &[ALICE]);
    let cfg = write_config(
        d,
        root.path(),
        "127.0.0.1:0",
        &format!(
            "  trustedproxies: [127.0.0.1]\nauth:\n  htpasswd:\n    path: {}\n",
            d.join("htpasswd").display()
        ),
    );
    let server = ServerProcess::spawn(&cfg);

    let ca = Ca::new("drydock test CA");
    let (crt, key) = ca.server().write(d, "nginx");
    let doc = include_str!("../../docs/security.md");
    let example = doc
        .split("```nginx\n")
        .nth(1)
        .and_then(|rest| rest.split("```").next())
        .expect("an nginx example in docs/security.md");
    let port = free_port();
    let mut site = example.to_owned();
    for (from, to) in [
        ("listen 443 ", format!("listen 127.0.0.1:{port} ")),
        ("/etc/nginx/tls/registry.crt", crt.display().to_string()),
        ("/etc/nginx/tls/registry.key", key.display().to_string()),
        ("http://127.0.0.1:5000", format!("http://{}", server.addr)),
    ] {
        assert!(site.contains(from), "the example no longer has {from:?}");
        site = site.replace(from, &to);
    }
    let nginx = nginx(d, &site);
    let base = format!("https://127.0.0.1:{port}");
    let c = tls_client(&ca, None);
    wait_answers(&c, &format!("{base}/v2/"), &nginx).await;

    // skopeo through nginx, verifying nginx's certificate, with credentials.
    let certs = cert_dir(&d.join("certs"), &ca, None);
    let h = format!("127.0.0.1:{port}");
    let fx = fixture(51);
    let alice = format!("{}:{}", ALICE.0, ALICE.1);
    skopeo(["copy", "--preserve-digests", "--dest-cert-dir"])
        .arg(&certs)
        .args(["--dest-creds", &alice])
        .arg(oci(fx.dir.path(), "v1"))
        .arg(format!("docker://{h}/proxied/app:v1"))
        .run()
        .await;
    let back = tempdir();
    skopeo(["copy", "--preserve-digests", "--src-cert-dir"])
        .arg(&certs)
        .args(["--src-creds", &alice])
        .arg(format!("docker://{h}/proxied/app:v1"))
        .arg(oci(back.path(), "v1"))
        .run()
        .await;
    assert_same_content(fx.dir.path(), back.path(), "v1");

    // Every request arrives from 127.0.0.1, which buys nothing: the admin API still
    // needs an admin, whatever the client claims it is.
    for auth in [None, Some(basic(ALICE))] {
        let mut rq = c
            .post(format!("{base}/admin/gc?wait=true"))
            .header("x-forwarded-for", "127.0.0.1");
        if let Some(a) = &auth {
            rq = rq.header("authorization", a);
        }
        let status = rq.send().await.unwrap().status();
        assert_eq!(status, if auth.is_some() { 403 } else { 401 });
    }
    // A client's own X-Forwarded-For is not what drydock logs: nginx's last hop is.
    let r = c
        .get(format!("{base}/v2/"))
        .header("authorization", basic(ALICE))
        .header("x-forwarded-for", "203.0.113.5")
        .header("x-request-id", "through-nginx")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert!(
        tokio::task::block_in_place(|| server.wait_for_log("through-nginx", 1)),
        "{}",
        server.log_text()
    );
    let text = server.log_text();
    let line = text.lines().find(|l| l.contains("through-nginx")).unwrap();
    assert!(
        line.contains("client=127.0.0.1") && !line.contains("203.0.113.5"),
        "{line}"
    );
}
