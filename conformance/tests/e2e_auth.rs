//! Authentication with the real clients: docker, podman and skopeo log in, push and pull
//! through htpasswd, through drydock's built-in token service, and through a token
//! service outside drydock whose signing key the test holds (as Harbor's or GitLab's
//! would be). A recording proxy in front of the registry shows what went on the wire:
//! Basic credentials with htpasswd, Bearer tokens (and credentials only to the token
//! endpoint) with a token service. A pull-only user's push fails in every client, and
//! every refusal leaves the store as it was.

mod clients;

use std::net::SocketAddr;
use std::sync::Arc;

use clients::*;
use conformance::auth::*;
use conformance::{TestServer, store_files};

/// What each request through the tap carried: `(request line, Authorization scheme)`.
fn wire(tap: &TapProxy) -> Vec<(String, Option<String>)> {
    let sent = tap.sent();
    let text = String::from_utf8_lossy(&sent);
    let mut out: Vec<(String, Option<String>)> = Vec::new();
    let mut in_headers = false;
    for line in text.split("\r\n") {
        let is_request = ["GET ", "HEAD ", "POST ", "PUT ", "PATCH ", "DELETE "]
            .iter()
            .any(|m| line.starts_with(m))
            && line.ends_with(" HTTP/1.1");
        if is_request {
            out.push((line.to_owned(), None));
            in_headers = true;
        } else if in_headers {
            if line.is_empty() {
                in_headers = false;
            } else if let Some((k, v)) = line.split_once(':')
                && k.eq_ignore_ascii_case("authorization")
                && let Some(last) = out.last_mut()
            {
                last.1 = v.split_whitespace().next().map(str::to_owned);
            }
        }
    }
    out
}

/// Registry requests (under `/v2/<name>/`) and the schemes they carried.
fn registry_schemes(tap: &TapProxy) -> Vec<Option<String>> {
    wire(tap)
        .into_iter()
        .filter(|(l, _)| {
            let path = l.split(' ').nth(1).unwrap_or("");
            path.starts_with("/v2/") && path.len() > "/v2/".len() && !path.starts_with("/v2/?")
        })
        .map(|(_, s)| s)
        .collect()
}

/// Checks the tap saw registry requests and that every one that carried credentials
/// used `scheme`; with `Bearer`, also that credentials went to the token endpoint only.
fn assert_wire(tap: &TapProxy, scheme: &str) {
    let schemes = registry_schemes(tap);
    let with: Vec<&String> = schemes.iter().flatten().collect();
    assert!(
        !with.is_empty(),
        "no authenticated registry request on the wire: {:?}",
        wire(tap)
    );
    assert!(
        with.iter().all(|s| s.eq_ignore_ascii_case(scheme)),
        "registry requests carried {with:?}, expected only {scheme}"
    );
}

/// Checks a client said it was not authenticated (401).
fn unauthorized(out: &Out, what: &str) {
    let text = out.stderr().to_lowercase();
    assert!(
        text.contains("unauthorized") || text.contains("authentication required"),
        "{what}: {text}"
    );
}

/// The flows every set-up must pass, through `host` (the tap): skopeo, podman and
/// docker log in (or pass credentials), push, pull; wrong passwords and pull-only users
/// are refused with the store unchanged. A pull-only user's push gets 403 `DENIED` with
/// htpasswd and 401 `insufficient_scope` with tokens; every client says "denied" to both.
async fn exercise(s: &TestServer, host: &str, docker: &Docker) {
    let fx = blocking(|| fixture(71)).await;
    let alice = format!("{}:{}", ALICE.0, ALICE.1);
    let reader = format!("{}:{}", READER.0, READER.1);
    let printed = |out: &Out, what: &str| {
        let text = format!("{}{}", out.stdout(), out.stderr()).to_lowercase();
        assert!(text.contains("denied"), "{what}: {text}");
    };

    // skopeo --creds: push and pull as alice.
    let push = |creds: &str, repo: &str| {
        skopeo([
            "copy",
            "--preserve-digests",
            "--dest-tls-verify=false",
            "--dest-creds",
            creds,
        ])
        .arg(oci(fx.dir.path(), "v1"))
        .arg(format!("docker://{host}/{repo}:v1"))
    };
    push(&alice, "auth/skopeo").run().await;
    let back = tempdir();
    skopeo([
        "copy",
        "--preserve-digests",
        "--src-tls-verify=false",
        "--src-creds",
    ])
    .arg(&alice)
    .arg(format!("docker://{host}/auth/skopeo:v1"))
    .arg(oci(back.path(), "v1"))
    .run()
    .await;
    assert_same_content(fx.dir.path(), back.path(), "v1");
    let before = store_files(s.root());
    // A wrong password, no credentials, a pull-only user: refused, nothing changes.
    let out = push(&format!("{}:wrong", ALICE.0), "auth/wrong")
        .fail()
        .await;
    unauthorized(&out, "skopeo push with a wrong password");
    let out = skopeo(["inspect", "--raw", "--tls-verify=false"])
        .arg(format!("docker://{host}/auth/skopeo:v1"))
        .fail()
        .await;
    unauthorized(&out, "skopeo anonymous pull");
    let out = push(&reader, "auth/denied").fail().await;
    printed(&out, "skopeo push as the reader");
    assert_eq!(store_files(s.root()), before, "a refused skopeo push");
    // The reader may pull.
    skopeo(["inspect", "--raw", "--tls-verify=false", "--creds"])
        .arg(&reader)
        .arg(format!("docker://{host}/auth/skopeo:v1"))
        .run()
        .await;

    // podman login, pull, push.
    let p = Podman::new();
    let login = |user: &str, password: &str| {
        p.cmd()
            .args([
                "login",
                "--tls-verify=false",
                "-u",
                user,
                "--password-stdin",
                host,
            ])
            .stdin(format!("{password}\n").into_bytes())
    };
    let out = login(ALICE.0, ALICE.1).run().await;
    assert!(out.stdout().contains("Login Succeeded"), "{}", out.stdout());
    p.cmd()
        .args(["pull", "--tls-verify=false"])
        .arg(format!("{host}/auth/skopeo:v1"))
        .run()
        .await;
    p.cmd()
        .args(["push", "--tls-verify=false"])
        .arg(format!("{host}/auth/skopeo:v1"))
        .arg(format!("docker://{host}/auth/podman:v1"))
        .run()
        .await;
    let before = store_files(s.root());
    let out = login(ALICE.0, "wrong").fail().await;
    let text = out.stderr().to_lowercase();
    assert!(
        text.contains("unauthorized") || text.contains("invalid username/password"),
        "podman login with a wrong password: {text}"
    );
    login(READER.0, READER.1).run().await;
    let out = p
        .cmd()
        .args(["push", "--tls-verify=false"])
        .arg(format!("{host}/auth/skopeo:v1"))
        .arg(format!("docker://{host}/auth/podman-denied:v1"))
        .fail()
        .await;
    printed(&out, "podman push as the reader");
    assert_eq!(store_files(s.root()), before, "a refused podman push");

    // docker login, push, rmi, pull.
    let out = docker
        .cmd()
        .args(["login", "-u", ALICE.0, "--password-stdin", host])
        .stdin(ALICE.1.as_bytes().to_vec())
        .run()
        .await;
    assert!(out.stdout().contains("Login Succeeded"), "{}", out.stdout());
    let image = format!("{host}/auth/docker:v1");
    let tar = tar_archive(&[("hello.txt", b"hello through auth\n")]);
    docker
        .cmd()
        .args(["import", "-", &image])
        .stdin(tar)
        .run()
        .await;
    let (digest, _) = docker.push(&image).await;
    docker.forget(&image).await;
    let out = docker.run(["pull", &image]).await.stdout();
    assert!(out.contains(&digest), "{out}");
    let before = store_files(s.root());
    let out = docker
        .cmd()
        .args(["login", "-u", ALICE.0, "--password-stdin", host])
        .stdin(b"wrong".to_vec())
        .fail()
        .await;
    assert!(
        out.stderr().to_lowercase().contains("unauthorized"),
        "docker login with a wrong password: {}",
        out.stderr()
    );
    docker
        .cmd()
        .args(["login", "-u", READER.0, "--password-stdin", host])
        .stdin(READER.1.as_bytes().to_vec())
        .run()
        .await;
    let denied = format!("{host}/auth/docker-denied:v1");
    docker.run(["tag", &image, &denied]).await;
    let out = docker.cmd().args(["push", &denied]).fail().await;
    printed(&out, "docker push as the reader");
    assert_eq!(store_files(s.root()), before, "a refused docker push");
}

/// One set-up (`adjust` turns its authentication on) through a tap: [`exercise`], then
/// what the wire showed: every registry request with credentials used `scheme`.
async fn check_setup(scheme: &str, adjust: impl FnOnce(&mut registry::config::Config)) -> TapProxy {
    require("skopeo");
    let docker = Docker::start().await;
    let s = TestServer::start_with(|c| {
        adjust(c);
        c.gc.on_startup = false;
    })
    .await;
    let tap = TapProxy::start(s.addr).await;
    exercise(&s, &tap.host(), &docker).await;
    assert_wire(&tap, scheme);
    tap
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn htpasswd_with_docker_podman_and_skopeo() {
    let dir = tempdir();
    check_setup("Basic", |c| enable_htpasswd(c, dir.path())).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn built_in_token_service_with_docker_podman_and_skopeo() {
    let dir = tempdir();
    let tap = check_setup("Bearer", |c| enable_token_service(c, dir.path())).await;
    // The realm is a path, made absolute with the Host clients send: the tap's, so the
    // token requests (with the credentials) crossed the tap too.
    assert!(
        wire(&tap)
            .iter()
            .any(|(l, _)| l.split(' ').nth(1).is_some_and(|p| p.starts_with("/token"))),
        "no token request crossed the tap"
    );
}

// ---------------------------------------------------------------------------------
// A token service outside drydock
// ---------------------------------------------------------------------------------

/// A token service as an external one works: users and passwords of its own, grants of
/// its own (alice everything, the reader pull), tokens signed with a key whose
/// certificate chains to the CA the registry trusts (sent as `x5c`). It answers the
/// docker token protocol's GET and the OAuth2 POST form.
struct ExternalTokens {
    addr: SocketAddr,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for ExternalTokens {
    fn drop(&mut self) {
        self.task.abort();
    }
}

struct Signer {
    key_pem: String,
    chain: Vec<Vec<u8>>,
}

fn grant(user: &str, actions: &[&str]) -> Vec<String> {
    actions
        .iter()
        .filter(|a| user == ALICE.0 || **a == "pull")
        .map(|a| (*a).to_owned())
        .collect()
}

fn issue(signer: &Signer, user: &str, scopes: &[String]) -> serde_json::Value {
    let mut access: Vec<(String, String, Vec<String>)> = Vec::new();
    for scope in scopes {
        let Some((rest, actions)) = scope.rsplit_once(':') else {
            continue;
        };
        let Some((kind, name)) = rest.split_once(':') else {
            continue;
        };
        let asked: Vec<&str> = actions.split(',').collect();
        access.push((kind.to_owned(), name.to_owned(), grant(user, &asked)));
    }
    let spec = TokenSpec {
        issuer: ISSUER,
        audience: SERVICE,
        subject: user,
        access: access
            .iter()
            .map(|(k, n, a)| {
                (
                    k.as_str(),
                    n.as_str(),
                    a.iter().map(String::as_str).collect(),
                )
            })
            .collect(),
        expires_in: 300,
    };
    let token = spec.sign(
        jsonwebtoken::Algorithm::ES256,
        &signer.key_pem,
        Some(signer.chain.clone()),
        None,
    );
    serde_json::json!({
        "token": token,
        "access_token": token,
        "expires_in": 300,
        "refresh_token": format!("refresh-{user}"),
    })
}

fn check_user(user: &str, password: &str) -> bool {
    [ALICE, READER]
        .iter()
        .any(|(u, p)| *u == user && *p == password)
}

async fn token_endpoint(
    axum::extract::State(signer): axum::extract::State<Arc<Signer>>,
    method: axum::http::Method,
    headers: axum::http::HeaderMap,
    axum::extract::RawQuery(query): axum::extract::RawQuery,
    body: axum::body::Bytes,
) -> axum::response::Response {
    use axum::response::IntoResponse;
    let pairs = |q: &str| -> Vec<(String, String)> {
        reqwest::Url::parse(&format!("http://x/?{q}"))
            .map(|u| u.query_pairs().into_owned().collect())
            .unwrap_or_default()
    };
    let unauthorized = || (axum::http::StatusCode::UNAUTHORIZED, "unauthorized").into_response();
    if method == axum::http::Method::POST {
        let form = pairs(&String::from_utf8_lossy(&body));
        let get = |k: &str| {
            form.iter()
                .find(|(key, _)| key == k)
                .map(|(_, v)| v.clone())
                .unwrap_or_default()
        };
        let user = match get("grant_type").as_str() {
            "password" if check_user(&get("username"), &get("password")) => get("username"),
            "refresh_token" => match get("refresh_token").strip_prefix("refresh-") {
                Some(u) if [ALICE.0, READER.0].contains(&u) => u.to_owned(),
                _ => return unauthorized(),
            },
            _ => return unauthorized(),
        };
        let scopes: Vec<String> = get("scope").split(' ').map(str::to_owned).collect();
        return axum::Json(issue(&signer, &user, &scopes)).into_response();
    }
    let q = pairs(query.as_deref().unwrap_or(""));
    let scopes: Vec<String> = q
        .iter()
        .filter(|(k, _)| k == "scope")
        .map(|(_, v)| v.clone())
        .collect();
    let creds = headers
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Basic "))
        .and_then(|b| data_encoding::BASE64.decode(b.as_bytes()).ok())
        .and_then(|b| String::from_utf8(b).ok());
    let Some((user, password)) = creds.as_deref().and_then(|c| c.split_once(':')) else {
        return unauthorized();
    };
    if !check_user(user, password) {
        return unauthorized();
    }
    axum::Json(issue(&signer, user, &scopes)).into_response()
}

impl ExternalTokens {
    async fn start(ca: &Ca) -> ExternalTokens {
        let cert = ca.signer(&rcgen::PKCS_ECDSA_P256_SHA256);
        let signer = Arc::new(Signer {
            key_pem: cert.key_pem.clone(),
            chain: vec![cert.der.clone()],
        });
        let app = axum::Router::new()
            .route(
                "/token",
                axum::routing::get(token_endpoint).post(token_endpoint),
            )
            .with_state(signer);
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let task = tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        ExternalTokens { addr, task }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn external_token_service_with_docker_podman_and_skopeo() {
    let dir = tempdir();
    let ca = Ca::new("external token CA");
    let tokens = ExternalTokens::start(&ca).await;
    let bundle = ca.write(&dir.path().join("token-ca.pem"));
    let realm = format!("http://{}/token", tokens.addr);
    check_setup("Bearer", |c| {
        c.auth.token = Some(registry::config::TokenConfig {
            realm,
            service: SERVICE.into(),
            issuer: ISSUER.into(),
            rootcertbundle: Some(bundle),
            jwks: None,
            signingalgorithms: Vec::new(),
        });
    })
    .await;
}
