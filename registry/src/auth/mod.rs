//! Authentication: one tower layer ([`layer`]) turns a request's credentials into a
//! [`Principal`] (anonymous, an htpasswd user, a bearer token's grant, a client
//! certificate's user), asks the [`access`](crate::access) policy whether that principal
//! may do what the request needs, and either runs the handler with a [`Caller`] in the
//! request's extensions or answers `401 UNAUTHORIZED` with the challenge or
//! `403 DENIED`. Handlers never look at credentials; the catalog and the artifacts root
//! ask the `Caller` to filter what they list.
//!
//! Costs on the hot path: a successful Basic check is cached for [`BASIC_CACHE_TTL`]
//! under the SHA-256 of the header (never the password itself), a verified token under
//! the SHA-256 of the token until it expires; bcrypt runs off the async runtime, at most
//! one per core at a time, and each source address may fail only [`FAIL_BURST`] times
//! before it is held to one attempt per [`FAIL_REFILL`].

pub mod htpasswd;
pub mod service;
pub mod token;

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::extract::{ConnectInfo, Request, State};
use axum::http::{HeaderValue, Method, Uri, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use dashmap::DashMap;
use sha2::Digest as _;

use crate::access::{Action, Actions, Policy, Resource, Who};
use crate::api::Endpoint;
use crate::api::error::Error;
use crate::config::Config;

/// How long a successful Basic check is reused without another bcrypt.
pub const BASIC_CACHE_TTL: Duration = Duration::from_secs(60);
/// Longest a verified token is reused without verifying its signature again.
const TOKEN_CACHE_TTL: Duration = Duration::from_secs(300);
/// Entries kept in the credential cache before expired ones are dropped.
const CACHE_MAX: usize = 10_000;
/// Failed logins a source may make at once...
pub const FAIL_BURST: f64 = 10.0;
/// ...and then one per this long.
pub const FAIL_REFILL: Duration = Duration::from_secs(1);

/// Who made a request.
#[derive(Debug, Clone)]
pub enum Principal {
    Anonymous,
    /// An htpasswd user or a client certificate's user: the policy decides.
    User(Arc<str>),
    /// A bearer token: its grant decides.
    Token(Arc<token::Grant>),
}

impl Principal {
    pub fn name(&self) -> &str {
        match self {
            Principal::Anonymous => "",
            Principal::User(u) => u,
            Principal::Token(g) => &g.subject,
        }
    }
}

/// The principal of a request and the policy that judges it, for handlers that filter
/// what they list.
#[derive(Clone)]
pub struct Caller {
    pub principal: Principal,
    policy: Arc<Policy>,
}

impl Caller {
    /// Everything allowed (a registry without authentication).
    pub fn open() -> Caller {
        Caller {
            principal: Principal::Anonymous,
            policy: Arc::new(Policy::open()),
        }
    }

    pub fn allowed(&self, resource: Resource<'_>) -> Actions {
        match &self.principal {
            Principal::Anonymous => self.policy.allowed(Who::Anonymous, resource),
            Principal::User(u) => self.policy.allowed(Who::User(u), resource),
            Principal::Token(g) => match resource {
                Resource::Repository(n) => g.actions("repository", n),
                Resource::Branch(b) => g.actions("artifacts", b),
            },
        }
    }

    pub fn may(&self, action: Action, resource: Resource<'_>) -> bool {
        self.allowed(resource).has(action)
    }

    /// Whether the catalog may be listed whole (a token with `registry:catalog:*`).
    pub fn sees_whole_catalog(&self) -> bool {
        match &self.principal {
            Principal::Token(g) => g.has_registry("catalog") || g.has_registry("admin"),
            Principal::User(u) => self.policy.is_admin(Who::User(u)),
            Principal::Anonymous => self.policy.is_open(),
        }
    }

    pub fn is_admin(&self) -> bool {
        match &self.principal {
            Principal::Token(g) => g.has_registry("admin"),
            Principal::User(u) => self.policy.is_admin(Who::User(u)),
            Principal::Anonymous => false,
        }
    }
}

/// The identity a verified client certificate gave a connection (set by the TLS
/// listener, read here only when `auth.mtls` is on).
#[derive(Debug, Clone)]
pub struct CertUser(pub Arc<str>);

/// The TCP peer of a request, as the listener saw it.
#[derive(Debug, Clone)]
pub struct Peer {
    pub addr: SocketAddr,
    /// The common name of the client certificate the TLS handshake verified.
    pub cert_user: Option<Arc<str>>,
    /// The connection is TLS.
    pub tls: bool,
}

impl Peer {
    /// The peer of a request: the TLS listener's (`ConnectInfo<Peer>`) or the plain
    /// listener's address (`ConnectInfo<SocketAddr>`).
    pub fn of(extensions: &axum::http::Extensions) -> Option<Peer> {
        extensions
            .get::<ConnectInfo<Peer>>()
            .map(|c| c.0.clone())
            .or_else(|| {
                extensions.get::<ConnectInfo<SocketAddr>>().map(|c| Peer {
                    addr: c.0,
                    cert_user: None,
                    tls: false,
                })
            })
    }
}

/// The client address to log: the last hop of `X-Forwarded-For` when the peer is one of
/// `trusted` proxies (`http.trustedproxies`), else the peer. Only ever logged: no
/// decision depends on it.
pub fn client_addr(
    peer: Option<&Peer>,
    headers: &axum::http::HeaderMap,
    trusted: &[IpAddr],
) -> Option<String> {
    let peer = peer?;
    if trusted.contains(&peer.addr.ip())
        && let Some(f) = headers.get("x-forwarded-for").and_then(|v| v.to_str().ok())
        && let Some(last) = f.rsplit(',').next().map(str::trim)
        && let Ok(ip) = last.parse::<IpAddr>()
    {
        return Some(ip.to_string());
    }
    Some(peer.addr.ip().to_string())
}

struct Cached {
    principal: Principal,
    generation: u64,
    until: Instant,
}

struct Bucket {
    tokens: f64,
    at: Instant,
}

/// Everything the auth layer needs, built once from the configuration.
pub struct Auth {
    /// Whether any authentication is configured; without it every request but the
    /// admin API passes untouched.
    enabled: bool,
    policy: Arc<Policy>,
    htpasswd: Option<htpasswd::Htpasswd>,
    realm: String,
    verifier: Option<token::Verifier>,
    pub(crate) server: Option<service::TokenServer>,
    mtls: bool,
    cache: DashMap<[u8; 32], Cached>,
    failures: DashMap<IpAddr, Bucket>,
    bcrypt_slots: tokio::sync::Semaphore,
    admin_loopback_only: bool,
    /// `drydock_auth_failures_total`, when the server keeps metrics.
    metrics: Option<Arc<crate::metrics::Metrics>>,
}

/// Why a request was refused.
pub(crate) enum Refusal {
    /// No or bad credentials: 401 with the challenge (`error` for bearer).
    Unauthenticated(Option<&'static str>),
    /// A token without the scope: 401 with `error="insufficient_scope"`.
    InsufficientScope,
    /// Authenticated, not allowed: 403.
    Denied(&'static str),
    TooManyFailures,
}

/// Why a request was refused, as `drydock_auth_failures_total` labels it (a bounded set).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum FailureReason {
    /// No credentials where the resource needs some: the challenge every client gets
    /// before it logs in, so a steady rate of these is normal.
    Missing,
    /// A wrong user name or password, or an `Authorization` header that does not parse.
    InvalidCredentials,
    /// A bearer token that does not verify (signature, expiry, audience, issuer), or a
    /// bearer token where none are accepted; an invalid refresh token at the token
    /// service.
    InvalidToken,
    /// A valid token without the scope the request needs.
    InsufficientScope,
    /// An authenticated principal the policy does not allow (403), and the admin API
    /// over TCP without authentication.
    Denied,
    /// A password not even checked: the source spent its failure budget (429).
    TooManyFailures,
}

impl FailureReason {
    pub(crate) fn label(self) -> &'static str {
        match self {
            FailureReason::Missing => "missing",
            FailureReason::InvalidCredentials => "invalid_credentials",
            FailureReason::InvalidToken => "invalid_token",
            FailureReason::InsufficientScope => "insufficient_scope",
            FailureReason::Denied => "denied",
            FailureReason::TooManyFailures => "too_many_failures",
        }
    }
}

impl Refusal {
    /// The reason of a refusal made after the request's credentials were accepted
    /// (`Unauthenticated` there means the request had none).
    fn reason_after_login(&self) -> FailureReason {
        match self {
            Refusal::Unauthenticated(_) => FailureReason::Missing,
            Refusal::InsufficientScope => FailureReason::InsufficientScope,
            Refusal::Denied(_) => FailureReason::Denied,
            Refusal::TooManyFailures => FailureReason::TooManyFailures,
        }
    }

    /// The reason of a refusal of the credentials themselves.
    fn reason_of_login(&self) -> FailureReason {
        match self {
            Refusal::Unauthenticated(Some(_)) => FailureReason::InvalidToken,
            Refusal::Unauthenticated(None) => FailureReason::InvalidCredentials,
            Refusal::InsufficientScope => FailureReason::InsufficientScope,
            Refusal::Denied(_) => FailureReason::Denied,
            Refusal::TooManyFailures => FailureReason::TooManyFailures,
        }
    }
}

/// What a request needs, read from its method and path.
enum Need {
    /// Not the registry's business (the token endpoint, health, unknown paths).
    Nothing,
    /// `GET /v2/`: any authenticated principal (the login check).
    Authenticated,
    /// Listings the handler filters (catalog, artifacts root).
    Listing,
    Repository {
        name: String,
        actions: Actions,
    },
    Branch {
        name: String,
        action: Action,
    },
    Admin,
}

impl Auth {
    /// Builds the layer's state from `auth`, `access` and `admin`; an error names the key.
    /// Refusals are counted in `metrics` when the server keeps them.
    pub fn from_config(
        config: &Config,
        metrics: Option<Arc<crate::metrics::Metrics>>,
    ) -> Result<Arc<Auth>, String> {
        let a = &config.auth;
        let policy = if a.enabled() {
            Policy::from_config(&config.access)
                .map_err(|(k, m)| format!("configuration key {k}: {m}"))?
        } else {
            Policy::open()
        };
        let htpasswd = match &a.htpasswd {
            Some(h) => Some(
                htpasswd::Htpasswd::open(&h.path)
                    .map_err(|e| format!("configuration key auth.htpasswd.path: {e}"))?,
            ),
            None => None,
        };
        let signing = match &a.tokenserver {
            Some(ts) => Some(Arc::new(
                token::SigningKey::load(&ts.key, ts.certificate.as_deref())
                    .map_err(|e| format!("configuration key auth.tokenserver.key: {e}"))?,
            )),
            None => None,
        };
        let verifier = match &a.token {
            Some(t) => Some(
                token::Verifier::new(t, signing.clone())
                    .map_err(|e| format!("configuration key {e}"))?,
            ),
            None => None,
        };
        let server = match (&a.tokenserver, &a.token, signing) {
            (Some(ts), Some(t), Some(key)) => Some(
                service::TokenServer::new(ts, t, key)
                    .map_err(|e| format!("configuration key auth.tokenserver: {e}"))?,
            ),
            _ => None,
        };
        let realm = a
            .htpasswd
            .as_ref()
            .map(|h| h.realm.clone())
            .unwrap_or_else(|| "drydock".into());
        let cores = std::thread::available_parallelism().map_or(2, |n| n.get());
        Ok(Arc::new(Auth {
            enabled: a.enabled(),
            policy: Arc::new(policy),
            htpasswd,
            realm,
            verifier,
            server,
            mtls: a.mtls,
            cache: DashMap::new(),
            failures: DashMap::new(),
            bcrypt_slots: tokio::sync::Semaphore::new(cores),
            admin_loopback_only: config.admin.loopback_only,
            metrics,
        }))
    }

    /// Adds the token endpoint (when configured) to `router` and puts the whole of it
    /// behind the auth layer.
    pub fn wrap(self: &Arc<Self>, router: axum::Router) -> axum::Router {
        let router = match &self.server {
            Some(ts) => router.merge(ts.router(self.clone())),
            None => router,
        };
        router.layer(axum::middleware::from_fn_with_state(self.clone(), layer))
    }

    /// Watches the htpasswd file (re-read within a second of a change). Must run inside
    /// a tokio runtime; stops when the last reference to `self` goes.
    pub fn start_watching(self: &Arc<Self>) {
        if self.htpasswd.is_none() {
            return;
        }
        let weak = Arc::downgrade(self);
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_secs(1));
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tick.tick().await;
                let Some(me) = weak.upgrade() else { return };
                me.reload_htpasswd();
            }
        });
    }

    fn reload_htpasswd(&self) {
        if let Some(h) = &self.htpasswd
            && h.reload_if_changed()
        {
            self.cache.clear();
        }
    }

    /// Re-reads the htpasswd file and the token keys (SIGHUP); a file that no longer
    /// loads keeps what was loaded before.
    pub fn reload(&self) {
        self.reload_htpasswd();
        if let Some(v) = &self.verifier {
            match v.reload() {
                Ok(()) => {
                    self.cache.clear();
                    tracing::info!("token keys reloaded");
                }
                Err(e) => {
                    tracing::error!(error = %e, "token keys not reloaded; keeping the old ones")
                }
            }
        }
    }

    pub fn policy(&self) -> &Arc<Policy> {
        &self.policy
    }

    /// Counts a request refused for its credentials (`drydock_auth_failures_total`).
    pub(crate) fn count_failure(&self, reason: FailureReason) {
        if let Some(m) = &self.metrics {
            m.auth_failures
                .get_or_create(&crate::metrics::ReasonLabels {
                    reason: reason.label(),
                })
                .inc();
        }
    }

    fn htpasswd_generation(&self) -> u64 {
        self.htpasswd.as_ref().map_or(0, |h| h.generation())
    }

    fn cached(&self, key: &[u8; 32]) -> Option<Principal> {
        let e = self.cache.get(key)?;
        let fresh = e.until > Instant::now()
            && (matches!(e.principal, Principal::Token(_))
                || e.generation == self.htpasswd_generation());
        fresh.then(|| e.principal.clone())
    }

    fn remember(&self, key: [u8; 32], principal: Principal, ttl: Duration) {
        if self.cache.len() >= CACHE_MAX {
            let now = Instant::now();
            self.cache.retain(|_, v| v.until > now);
            if self.cache.len() >= CACHE_MAX {
                self.cache.clear();
            }
        }
        self.cache.insert(
            key,
            Cached {
                principal,
                generation: self.htpasswd_generation(),
                until: Instant::now() + ttl,
            },
        );
    }

    /// Whether `ip` may try a password now (its failure budget is not spent).
    fn may_try(&self, ip: IpAddr) -> bool {
        let Some(mut b) = self.failures.get_mut(&ip) else {
            return true;
        };
        let now = Instant::now();
        b.tokens = (b.tokens + now.duration_since(b.at).as_secs_f64() / FAIL_REFILL.as_secs_f64())
            .min(FAIL_BURST);
        b.at = now;
        b.tokens >= 1.0
    }

    fn failed(&self, ip: IpAddr) {
        if self.failures.len() >= CACHE_MAX {
            let now = Instant::now();
            self.failures
                .retain(|_, b| now.duration_since(b.at) < FAIL_REFILL.mul_f64(FAIL_BURST));
        }
        let now = Instant::now();
        let mut b = self.failures.entry(ip).or_insert(Bucket {
            tokens: FAIL_BURST,
            at: now,
        });
        b.tokens = (b.tokens + now.duration_since(b.at).as_secs_f64() / FAIL_REFILL.as_secs_f64())
            .min(FAIL_BURST)
            - 1.0;
        b.at = now;
    }

    /// Checks a user name and password against htpasswd (cached, rate limited, one
    /// bcrypt per core at a time). `Ok(None)`: wrong credentials.
    pub(crate) async fn check_password(
        &self,
        ip: IpAddr,
        cache_key: [u8; 32],
        user: &str,
        password: &str,
    ) -> Result<Option<Arc<str>>, Refusal> {
        if let Some(Principal::User(u)) = self.cached(&cache_key) {
            return Ok(Some(u));
        }
        let Some(h) = &self.htpasswd else {
            return Ok(None);
        };
        if !self.may_try(ip) {
            return Err(Refusal::TooManyFailures);
        }
        let generation = h.generation();
        let ok = {
            let _slot = self.bcrypt_slots.acquire().await;
            let (u, p) = (user.to_owned(), password.to_owned());
            let entries = h.snapshot();
            tokio::task::spawn_blocking(move || entries.verify(&u, &p))
                .await
                .unwrap_or(false)
        };
        if !ok {
            self.failed(ip);
            return Ok(None);
        }
        let name: Arc<str> = Arc::from(user);
        if generation == h.generation() {
            self.remember(cache_key, Principal::User(name.clone()), BASIC_CACHE_TTL);
        }
        Ok(Some(name))
    }

    fn check_token(&self, token: &str) -> Result<Principal, &'static str> {
        let key: [u8; 32] = sha2::Sha256::digest(token.as_bytes()).into();
        if let Some(p) = self.cached(&key) {
            return Ok(p);
        }
        let Some(v) = &self.verifier else {
            return Err("bearer tokens are not accepted here");
        };
        let claims = v.verify(token).map_err(|e| {
            tracing::info!(error = %e, "bearer token refused");
            "invalid_token"
        })?;
        let grant = Arc::new(token::Grant::from_claims(&claims));
        let now = jsonwebtoken::get_current_timestamp();
        let left = Duration::from_secs(grant.exp.saturating_sub(now)).min(TOKEN_CACHE_TTL);
        let p = Principal::Token(grant);
        if !left.is_zero() {
            self.remember(key, p.clone(), left);
        }
        Ok(p)
    }

    /// The principal of a request, or why its credentials were refused.
    async fn authenticate(
        &self,
        headers: &axum::http::HeaderMap,
        peer: Option<&Peer>,
    ) -> Result<Principal, Refusal> {
        let ip = peer.map_or(IpAddr::from([0, 0, 0, 0]), |p| p.addr.ip());
        let Some(value) = headers.get(header::AUTHORIZATION) else {
            if self.mtls
                && let Some(u) = peer.and_then(|p| p.cert_user.clone())
            {
                return Ok(Principal::User(u));
            }
            return Ok(Principal::Anonymous);
        };
        let text = value.to_str().map_err(|_| Refusal::Unauthenticated(None))?;
        let (scheme, rest) = text.split_once(' ').unwrap_or((text, ""));
        if scheme.eq_ignore_ascii_case("basic") {
            let key: [u8; 32] = sha2::Sha256::digest(value.as_bytes()).into();
            // A client sends the same header on every request: a cached one costs no
            // decoding either.
            if let Some(Principal::User(u)) = self.cached(&key) {
                return Ok(Principal::User(u));
            }
            let (user, password) = parse_basic(rest).ok_or(Refusal::Unauthenticated(None))?;
            return match self.check_password(ip, key, &user, &password).await? {
                Some(u) => Ok(Principal::User(u)),
                None => Err(Refusal::Unauthenticated(None)),
            };
        }
        if scheme.eq_ignore_ascii_case("bearer") {
            return self
                .check_token(rest.trim())
                .map_err(|e| Refusal::Unauthenticated(Some(e)));
        }
        Err(Refusal::Unauthenticated(None))
    }

    /// The challenge for a refused request.
    fn challenge(&self, req: &Request, scope: Option<&str>, error: Option<&str>) -> String {
        match &self.verifier {
            Some(v) => {
                let c = v.config();
                let mut s = format!(
                    "Bearer realm=\"{}\",service=\"{}\"",
                    absolute_realm(&c.realm, req),
                    c.service
                );
                if let Some(sc) = scope {
                    s.push_str(&format!(",scope=\"{sc}\""));
                }
                if let Some(e) = error {
                    s.push_str(&format!(",error=\"{e}\""));
                }
                s
            }
            None => format!("Basic realm=\"{}\",charset=\"UTF-8\"", self.realm),
        }
    }
}

/// `auth.token.realm` as clients need it: absolute. A path is made absolute with the
/// request's scheme (TLS or not) and `Host`.
fn absolute_realm(realm: &str, req: &Request) -> String {
    if !realm.starts_with('/') {
        return realm.to_owned();
    }
    // HTTP/1.1 names the host in `Host`, HTTP/2 in the request's authority.
    let host = req
        .headers()
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
        .or_else(|| req.uri().authority().map(|a| a.as_str()))
        .filter(|h| !h.contains(['"', '\\', ' ', ',']))
        .unwrap_or("localhost");
    let scheme = if Peer::of(req.extensions()).is_some_and(|p| p.tls) {
        "https"
    } else {
        "http"
    };
    format!("{scheme}://{host}{realm}")
}

/// `user:password` of a Basic credential.
pub(crate) fn parse_basic(b64: &str) -> Option<(String, String)> {
    let raw = data_encoding::BASE64.decode(b64.trim().as_bytes()).ok()?;
    let s = String::from_utf8(raw).ok()?;
    let (u, p) = s.split_once(':')?;
    Some((u.to_owned(), p.to_owned()))
}

/// Removes `mount` and `from` from a query (a mount the caller may not read from).
fn strip_mount(uri: &Uri) -> Uri {
    let q: Vec<(String, String)> = uri
        .query()
        .and_then(|q| serde_urlencoded::from_str(q).ok())
        .unwrap_or_default();
    let kept: Vec<(String, String)> = q
        .into_iter()
        .filter(|(k, _)| k != "mount" && k != "from")
        .collect();
    let mut pq = uri.path().to_owned();
    if !kept.is_empty()
        && let Ok(s) = serde_urlencoded::to_string(&kept)
    {
        pq.push('?');
        pq.push_str(&s);
    }
    let mut parts = uri.clone().into_parts();
    parts.path_and_query = pq.parse().ok();
    Uri::from_parts(parts).unwrap_or_else(|_| uri.clone())
}

fn query_value(uri: &Uri, key: &str) -> Option<String> {
    let q: Vec<(String, String)> = uri
        .query()
        .and_then(|q| serde_urlencoded::from_str(q).ok())
        .unwrap_or_default();
    q.into_iter().find(|(k, _)| k == key).map(|(_, v)| v)
}

/// What `method path` needs.
fn classify(method: &Method, path: &str) -> Need {
    let read = method == Method::GET || method == Method::HEAD;
    if path == "/v2" || path == "/v2/" {
        return Need::Authenticated;
    }
    if path == "/v2/_catalog" {
        return Need::Listing;
    }
    if let Some(rest) = path.strip_prefix("/v2/") {
        return match Endpoint::parse(rest) {
            Ok(e) => {
                let name = e.repo().as_str().to_owned();
                let actions = if read {
                    Actions::of(&[Action::Pull])
                } else if method == Method::DELETE {
                    Actions::of(&[Action::Delete])
                } else {
                    Actions::of(&[Action::Pull, Action::Push])
                };
                Need::Repository { name, actions }
            }
            // An invalid path: only an authenticated caller learns why.
            Err(_) => Need::Authenticated,
        };
    }
    if path == "/artifacts" || path == "/artifacts/" {
        return if read {
            Need::Listing
        } else {
            Need::Authenticated
        };
    }
    if let Some(rest) = path.strip_prefix("/artifacts/") {
        return match crate::api::artifacts_branch(rest, method) {
            Some((name, action)) => Need::Branch { name, action },
            None => Need::Authenticated,
        };
    }
    if path == "/admin" || path.starts_with("/admin/") {
        return Need::Admin;
    }
    Need::Nothing
}

fn refuse(auth: &Auth, req: &Request, refusal: Refusal, scope: Option<String>) -> Response {
    let (mut resp, challenge) = match refusal {
        Refusal::Unauthenticated(e) => (
            Error::Unauthorized.into_response(),
            Some(auth.challenge(req, scope.as_deref(), e)),
        ),
        Refusal::InsufficientScope => (
            Error::Unauthorized.into_response(),
            Some(auth.challenge(req, scope.as_deref(), Some("insufficient_scope"))),
        ),
        Refusal::Denied(_) => (Error::Denied.into_response(), None),
        Refusal::TooManyFailures => (
            Error::TooManyRequests(
                "too many failed logins from this address; try again shortly".into(),
            )
            .into_response(),
            None,
        ),
    };
    if let Some(c) = challenge
        && let Ok(v) = HeaderValue::try_from(c)
    {
        resp.headers_mut().insert(header::WWW_AUTHENTICATE, v);
    }
    resp
}

fn scope_string(kind: &str, name: &str, actions: Actions) -> String {
    let list: Vec<&str> = actions.list().iter().map(|a| a.name()).collect();
    format!("{kind}:{name}:{}", list.join(","))
}

/// The layer itself (`axum::middleware::from_fn_with_state`).
pub async fn layer(State(auth): State<Arc<Auth>>, mut req: Request, next: Next) -> Response {
    let peer = Peer::of(req.extensions());
    let need = classify(req.method(), req.uri().path());
    if matches!(need, Need::Nothing) {
        return next.run(req).await;
    }
    if !auth.enabled {
        // No principals exist, so nobody is an admin over TCP: the admin API is the
        // CLI's, through the socket in the root.
        if matches!(need, Need::Admin) {
            tracing::info!(
                path = req.uri().path(),
                "admin API refused over TCP without authentication"
            );
            auth.count_failure(FailureReason::Denied);
            return Error::Denied.into_response();
        }
        return next.run(req).await;
    }
    let principal = match auth.authenticate(req.headers(), peer.as_ref()).await {
        Ok(p) => p,
        Err(r) => {
            let scope = match &need {
                Need::Repository { name, actions } => {
                    Some(scope_string("repository", name, *actions))
                }
                _ => None,
            };
            auth.count_failure(r.reason_of_login());
            return refuse(&auth, &req, r, scope);
        }
    };
    let caller = Caller {
        principal,
        policy: auth.policy.clone(),
    };
    // The request's span (the telemetry layer's) names the user in every line it logs.
    tracing::Span::current().record("user", tracing::field::display(caller.principal.name()));
    let anonymous = matches!(caller.principal, Principal::Anonymous);
    let is_token = matches!(caller.principal, Principal::Token(_));
    let verdict: Result<(), (Refusal, Option<String>)> = match &need {
        Need::Nothing | Need::Listing => Ok(()),
        Need::Authenticated if anonymous => Err((Refusal::Unauthenticated(None), None)),
        Need::Authenticated => Ok(()),
        Need::Repository { name, actions } => {
            let ok = caller
                .allowed(Resource::Repository(name))
                .contains(*actions);
            // A mount also needs pull on `from`; without it, the mount is simply not
            // done (a plain upload session follows), so nothing leaks.
            if ok && req.method() == Method::POST && query_value(req.uri(), "mount").is_some() {
                let from = query_value(req.uri(), "from");
                let may_read_from = match &from {
                    Some(f) => caller.may(Action::Pull, Resource::Repository(f)),
                    None => auth.policy.is_open(),
                };
                if !may_read_from {
                    let uri = strip_mount(req.uri());
                    *req.uri_mut() = uri;
                }
            }
            if ok {
                Ok(())
            } else {
                // Only a refusal spells out the scope (for its challenge).
                let scope = Some(scope_string("repository", name, *actions));
                if anonymous {
                    Err((Refusal::Unauthenticated(None), scope))
                } else if is_token {
                    Err((Refusal::InsufficientScope, scope))
                } else {
                    Err((Refusal::Denied("repository"), scope))
                }
            }
        }
        Need::Branch { name, action } => {
            if caller.may(*action, Resource::Branch(name)) {
                Ok(())
            } else {
                let scope = scope_string("artifacts", name, Actions::of(&[*action]));
                if anonymous {
                    Err((Refusal::Unauthenticated(None), Some(scope)))
                } else if is_token {
                    Err((Refusal::InsufficientScope, Some(scope)))
                } else {
                    Err((Refusal::Denied("branch"), Some(scope)))
                }
            }
        }
        Need::Admin => {
            let loopback = peer.as_ref().is_some_and(|p| p.addr.ip().is_loopback());
            if !caller.is_admin() {
                if anonymous {
                    Err((
                        Refusal::Unauthenticated(None),
                        Some("registry:admin:*".into()),
                    ))
                } else {
                    Err((Refusal::Denied("admin"), None))
                }
            } else if auth.admin_loopback_only && !loopback {
                Err((Refusal::Denied("admin from a non-loopback address"), None))
            } else {
                Ok(())
            }
        }
    };
    match verdict {
        Ok(()) => {
            req.extensions_mut().insert(caller);
            next.run(req).await
        }
        Err((r, scope)) => {
            if let Refusal::Denied(what) = &r {
                tracing::info!(what, path = req.uri().path(), "access denied");
            }
            auth.count_failure(r.reason_after_login());
            refuse(&auth, &req, r, scope)
        }
    }
}

/// `StatusCode` of a refusal, for tests of the mapping.
#[cfg(test)]
fn status_of(r: Refusal) -> axum::http::StatusCode {
    use axum::http::StatusCode;
    match r {
        Refusal::Unauthenticated(_) | Refusal::InsufficientScope => StatusCode::UNAUTHORIZED,
        Refusal::Denied(_) => StatusCode::FORBIDDEN,
        Refusal::TooManyFailures => StatusCode::TOO_MANY_REQUESTS,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classifies_requests() {
        let need = |m: Method, p: &str| match classify(&m, p) {
            Need::Nothing => "nothing".to_owned(),
            Need::Authenticated => "authenticated".to_owned(),
            Need::Listing => "listing".to_owned(),
            Need::Repository { name, actions } => scope_string("repository", &name, actions),
            Need::Branch { name, action } => format!("branch:{name}:{action}"),
            Need::Admin => "admin".to_owned(),
        };
        assert_eq!(need(Method::GET, "/v2/"), "authenticated");
        assert_eq!(need(Method::GET, "/v2/_catalog"), "listing");
        assert_eq!(
            need(Method::GET, "/v2/a/b/manifests/latest"),
            "repository:a/b:pull"
        );
        assert_eq!(
            need(
                Method::HEAD,
                "/v2/a/blobs/sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
            ),
            "repository:a:pull"
        );
        assert_eq!(
            need(Method::POST, "/v2/a/blobs/uploads/"),
            "repository:a:pull,push"
        );
        assert_eq!(
            need(Method::PATCH, "/v2/a/blobs/uploads/x"),
            "repository:a:pull,push"
        );
        assert_eq!(
            need(Method::DELETE, "/v2/a/manifests/latest"),
            "repository:a:delete"
        );
        assert_eq!(need(Method::GET, "/v2/a/tags/list"), "repository:a:pull");
        assert_eq!(need(Method::GET, "/v2/../x"), "authenticated");
        assert_eq!(need(Method::POST, "/admin/gc"), "admin");
        assert_eq!(need(Method::GET, "/token"), "nothing");
        assert_eq!(need(Method::GET, "/artifacts/"), "listing");
        assert_eq!(need(Method::GET, "/artifacts/main/v1"), "branch:main:pull");
        assert_eq!(
            need(Method::PUT, "/artifacts/main/v1/j/f/a.txt"),
            "branch:main:push"
        );
        assert_eq!(
            need(Method::PUT, "/artifacts/main/v1/locked"),
            "branch:main:delete"
        );
        assert_eq!(
            need(Method::DELETE, "/artifacts/main"),
            "branch:main:delete"
        );
        assert_eq!(
            need(Method::PUT, "/artifacts/main/policy"),
            "branch:main:delete"
        );
        assert_eq!(
            need(Method::PATCH, "/artifacts/main/v1/j/f"),
            "branch:main:push"
        );
    }

    #[test]
    fn strips_only_mount_and_from() {
        let u: Uri = "/v2/a/blobs/uploads/?mount=sha256:x&from=b&digest=d"
            .parse()
            .unwrap();
        assert_eq!(strip_mount(&u).to_string(), "/v2/a/blobs/uploads/?digest=d");
        let u: Uri = "/v2/a/blobs/uploads/?mount=sha256:x&from=b"
            .parse()
            .unwrap();
        assert_eq!(strip_mount(&u).to_string(), "/v2/a/blobs/uploads/");
        assert_eq!(
            status_of(Refusal::Denied("x")),
            axum::http::StatusCode::FORBIDDEN
        );
    }

    #[test]
    fn basic_credentials() {
        assert_eq!(
            parse_basic("YWxpY2U6czNjcjp0"),
            Some(("alice".into(), "s3cr:t".into()))
        );
        assert_eq!(parse_basic("!!"), None);
    }
}
