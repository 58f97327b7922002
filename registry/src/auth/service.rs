//! drydock's built-in token service (`auth.tokenserver`, off unless configured): the
//! docker token protocol at the path of `auth.token.realm`.
//!
//! - `GET ?service=S&scope=repository:NAME:pull,push&scope=…[&offline_token=true]` with
//!   Basic credentials (or none: an anonymous token) answers
//!   `{token, access_token, expires_in, issued_at[, refresh_token]}`;
//! - `POST` form `grant_type=password` (`username`, `password`, `scope`, `service`,
//!   `access_type=offline`) or `grant_type=refresh_token` (`refresh_token`, `scope`) is
//!   the OAuth2 form docker and podman use.
//!
//! Each scope is granted the intersection of what it asks and what the access policy
//! allows the user; a scope the user may not have is granted empty, not refused (the
//! token specification's rule). Refresh tokens are JWTs signed with the same key whose
//! audience is the issuer (so the registry never accepts one as an access token); they
//! stop working when their user leaves the htpasswd file.
//!
//! Handlers here return `Result<Response, Response>`: both arms are answers.
#![allow(clippy::result_large_err)]

use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::extract::{Request, State};
use axum::http::{HeaderValue, Method, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::any;
use serde::{Deserialize, Serialize};
use sha2::Digest as _;

use super::token::{AccessEntry, Audience, Claims, SigningKey};
use super::{Auth, FailureReason, Peer, Refusal};
use crate::access::{Action, Actions, Resource, Who};
use crate::config::{TokenConfig, TokenServerConfig, parse_duration};

/// Largest form body accepted.
const MAX_FORM: usize = 64 * 1024;

pub struct TokenServer {
    key: Arc<SigningKey>,
    path: String,
    service: String,
    issuer: String,
    expiration: Duration,
    refresh_expiration: Duration,
}

#[derive(Serialize, Deserialize)]
struct RefreshClaims {
    iss: String,
    sub: String,
    aud: String,
    exp: u64,
    iat: u64,
    /// Marks a refresh token.
    typ: String,
}

impl TokenServer {
    pub fn new(
        ts: &TokenServerConfig,
        token: &TokenConfig,
        key: Arc<SigningKey>,
    ) -> Result<TokenServer, String> {
        let path = if token.realm.starts_with('/') {
            token.realm.clone()
        } else {
            let u: axum::http::Uri = token
                .realm
                .parse()
                .map_err(|e| format!("auth.token.realm {:?}: {e}", token.realm))?;
            u.path().to_owned()
        };
        if path.starts_with("/v2") || path.starts_with("/admin") || path.starts_with("/artifacts") {
            return Err(format!(
                "the realm's path {path} is inside the registry API; use e.g. /token"
            ));
        }
        Ok(TokenServer {
            key,
            path,
            service: token.service.clone(),
            issuer: token.issuer.clone(),
            expiration: parse_duration(&ts.expiration)?,
            refresh_expiration: parse_duration(&ts.refreshexpiration)?,
        })
    }

    /// The route of the token endpoint.
    pub fn router(&self, auth: Arc<Auth>) -> Router {
        Router::new()
            .route(&self.path, any(endpoint))
            .with_state(auth)
    }

    fn issue(&self, subject: &str, access: Vec<AccessEntry>) -> Result<(String, u64, u64), String> {
        let now = jsonwebtoken::get_current_timestamp();
        let claims = Claims {
            iss: self.issuer.clone(),
            sub: subject.to_owned(),
            aud: Audience::One(self.service.clone()),
            exp: now + self.expiration.as_secs(),
            nbf: Some(now.saturating_sub(1)),
            iat: Some(now),
            jti: Some(uuid::Uuid::new_v4().to_string()),
            access,
        };
        Ok((self.key.sign(&claims)?, self.expiration.as_secs(), now))
    }

    fn refresh_token(&self, subject: &str) -> Result<String, String> {
        let now = jsonwebtoken::get_current_timestamp();
        self.key.sign(&RefreshClaims {
            iss: self.issuer.clone(),
            sub: subject.to_owned(),
            aud: self.issuer.clone(),
            exp: now + self.refresh_expiration.as_secs(),
            iat: now,
            typ: "refresh".into(),
        })
    }
}

/// One requested scope, `type:name:actions`; `None` when the type or the name is empty
/// (nothing is granted on a resource without a name).
pub(crate) fn parse_scope(s: &str) -> Option<(String, String, Vec<String>)> {
    let (kind, rest) = s.split_once(':')?;
    let (name, actions) = rest.rsplit_once(':')?;
    let kind = kind.split('(').next().unwrap_or(kind);
    if kind.is_empty() || name.is_empty() {
        return None;
    }
    Some((
        kind.to_owned(),
        name.to_owned(),
        actions.split(',').map(str::to_owned).collect(),
    ))
}

/// What `who` gets of the requested scopes.
fn grant(auth: &Auth, who: Who<'_>, scopes: &[String]) -> Vec<AccessEntry> {
    let policy = auth.policy();
    let mut out = Vec::new();
    for s in scopes
        .iter()
        .flat_map(|s| s.split(' '))
        .filter(|s| !s.is_empty())
    {
        let Some((kind, name, actions)) = parse_scope(s) else {
            continue;
        };
        let asked = Actions::of(
            &actions
                .iter()
                .flat_map(|a| Action::parse_many(a))
                .collect::<Vec<_>>(),
        );
        let granted: Vec<String> = match kind.as_str() {
            "repository" => asked
                .intersect(policy.allowed(who, Resource::Repository(&name)))
                .list()
                .iter()
                .map(|a| a.name().to_owned())
                .collect(),
            "artifacts" => asked
                .intersect(policy.allowed(who, Resource::Branch(&name)))
                .list()
                .iter()
                .map(|a| a.name().to_owned())
                .collect(),
            "registry" if (name == "catalog" || name == "admin") && policy.is_admin(who) => {
                vec!["*".to_owned()]
            }
            _ => Vec::new(),
        };
        out.push(AccessEntry {
            kind,
            name,
            actions: granted,
        });
    }
    out
}

fn json(status: StatusCode, v: serde_json::Value) -> Response {
    (
        status,
        [(header::CONTENT_TYPE, "application/json")],
        v.to_string(),
    )
        .into_response()
}

fn oauth_error(status: StatusCode, error: &str, description: &str) -> Response {
    json(
        status,
        serde_json::json!({ "error": error, "error_description": description }),
    )
}

/// A 401 for refused credentials, counted under `reason`.
fn unauthorized(auth: &Auth, reason: FailureReason, description: &str) -> Response {
    auth.count_failure(reason);
    let mut r = oauth_error(StatusCode::UNAUTHORIZED, "invalid_grant", description);
    if let Ok(v) = HeaderValue::try_from(format!("Basic realm=\"{}\"", auth.realm)) {
        r.headers_mut().insert(header::WWW_AUTHENTICATE, v);
    }
    r
}

fn too_many() -> Response {
    let mut r = oauth_error(
        StatusCode::TOO_MANY_REQUESTS,
        "slow_down",
        "too many failed logins from this address",
    );
    r.headers_mut()
        .insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
    r
}

fn peer_ip(req: &Request) -> IpAddr {
    Peer::of(req.extensions()).map_or(IpAddr::from([0, 0, 0, 0]), |p| p.addr.ip())
}

/// Checks a user name and password; `Err` is the response to send.
async fn login(auth: &Auth, ip: IpAddr, user: &str, password: &str) -> Result<Arc<str>, Response> {
    let key: [u8; 32] = {
        let mut h = sha2::Sha256::new();
        h.update(b"token-login\0");
        h.update(user.as_bytes());
        h.update([0]);
        h.update(password.as_bytes());
        h.finalize().into()
    };
    match auth.check_password(ip, key, user, password).await {
        Ok(Some(u)) => Ok(u),
        Err(Refusal::TooManyFailures) => {
            auth.count_failure(FailureReason::TooManyFailures);
            Err(too_many())
        }
        Ok(None) | Err(_) => Err(unauthorized(
            auth,
            FailureReason::InvalidCredentials,
            "wrong user name or password",
        )),
    }
}

async fn endpoint(State(auth): State<Arc<Auth>>, req: Request) -> Response {
    let Some(ts) = auth.server.as_ref() else {
        return StatusCode::NOT_FOUND.into_response();
    };
    let ip = peer_ip(&req);
    let method = req.method().clone();
    let result = if method == Method::GET {
        get_token(&auth, ts, ip, req).await
    } else if method == Method::POST {
        post_token(&auth, ts, ip, req).await
    } else {
        return StatusCode::METHOD_NOT_ALLOWED.into_response();
    };
    result.unwrap_or_else(|r| r)
}

fn check_service(ts: &TokenServer, service: Option<&str>) -> Result<(), Response> {
    match service {
        Some(s) if s != ts.service => Err(oauth_error(
            StatusCode::BAD_REQUEST,
            "invalid_request",
            "this token service does not issue tokens for that service",
        )),
        _ => Ok(()),
    }
}

async fn get_token(
    auth: &Auth,
    ts: &TokenServer,
    ip: IpAddr,
    req: Request,
) -> Result<Response, Response> {
    let pairs: Vec<(String, String)> = req
        .uri()
        .query()
        .and_then(|q| serde_urlencoded::from_str(q).ok())
        .unwrap_or_default();
    let get = |k: &str| pairs.iter().find(|(a, _)| a == k).map(|(_, v)| v.as_str());
    check_service(ts, get("service"))?;
    let scopes: Vec<String> = pairs
        .iter()
        .filter(|(k, _)| k == "scope")
        .map(|(_, v)| v.clone())
        .collect();
    let user: Option<Arc<str>> = match req.headers().get(header::AUTHORIZATION) {
        None => None,
        Some(v) => {
            let text = v.to_str().unwrap_or("");
            let (scheme, rest) = text.split_once(' ').unwrap_or((text, ""));
            if !scheme.eq_ignore_ascii_case("basic") {
                return Err(unauthorized(
                    auth,
                    FailureReason::InvalidCredentials,
                    "send Basic credentials",
                ));
            }
            let (u, p) = super::parse_basic(rest).ok_or_else(|| {
                unauthorized(
                    auth,
                    FailureReason::InvalidCredentials,
                    "bad Basic credentials",
                )
            })?;
            Some(login(auth, ip, &u, &p).await?)
        }
    };
    let who = match &user {
        Some(u) => Who::User(u),
        None => Who::Anonymous,
    };
    let access = grant(auth, who, &scopes);
    let subject = user.as_deref().unwrap_or("");
    let (token, expires_in, now) = ts.issue(subject, access).map_err(internal)?;
    let mut body = serde_json::json!({
        "token": token,
        "access_token": token,
        "expires_in": expires_in,
        "issued_at": rfc3339(now),
    });
    if get("offline_token") == Some("true") && user.is_some() {
        body["refresh_token"] = ts.refresh_token(subject).map_err(internal)?.into();
    }
    Ok(json(StatusCode::OK, body))
}

async fn post_token(
    auth: &Auth,
    ts: &TokenServer,
    ip: IpAddr,
    req: Request,
) -> Result<Response, Response> {
    let body = axum::body::to_bytes(req.into_body(), MAX_FORM)
        .await
        .map_err(|_| oauth_error(StatusCode::BAD_REQUEST, "invalid_request", "form too large"))?;
    let pairs: Vec<(String, String)> = serde_urlencoded::from_bytes(&body).map_err(|_| {
        oauth_error(
            StatusCode::BAD_REQUEST,
            "invalid_request",
            "the body is not a form",
        )
    })?;
    let get = |k: &str| pairs.iter().find(|(a, _)| a == k).map(|(_, v)| v.as_str());
    check_service(ts, get("service"))?;
    let scopes: Vec<String> = pairs
        .iter()
        .filter(|(k, _)| k == "scope")
        .map(|(_, v)| v.clone())
        .collect();
    let (user, refresh): (Arc<str>, Option<String>) = match get("grant_type") {
        Some("password") => {
            let u = get("username").unwrap_or("");
            let p = get("password").unwrap_or("");
            let user = login(auth, ip, u, p).await?;
            let refresh = if get("access_type") == Some("offline") {
                Some(ts.refresh_token(&user).map_err(internal)?)
            } else {
                None
            };
            (user, refresh)
        }
        Some("refresh_token") => {
            let t = get("refresh_token").unwrap_or("");
            let claims: RefreshClaims =
                ts.key.verify_own(t, &ts.issuer, &ts.issuer).map_err(|_| {
                    unauthorized(auth, FailureReason::InvalidToken, "invalid refresh token")
                })?;
            let still_there = auth
                .htpasswd
                .as_ref()
                .is_some_and(|h| h.has_user(&claims.sub));
            if claims.typ != "refresh" || !still_there {
                return Err(unauthorized(
                    auth,
                    FailureReason::InvalidToken,
                    "invalid refresh token",
                ));
            }
            (Arc::from(claims.sub.as_str()), Some(t.to_owned()))
        }
        _ => {
            return Err(oauth_error(
                StatusCode::BAD_REQUEST,
                "unsupported_grant_type",
                "grant_type must be password or refresh_token",
            ));
        }
    };
    let access = grant(auth, Who::User(&user), &scopes);
    let (token, expires_in, now) = ts.issue(&user, access).map_err(internal)?;
    let mut body = serde_json::json!({
        "access_token": token,
        "token": token,
        "expires_in": expires_in,
        "issued_at": rfc3339(now),
        "scope": scopes.join(" "),
    });
    if let Some(r) = refresh {
        body["refresh_token"] = r.into();
    }
    Ok(json(StatusCode::OK, body))
}

fn internal(e: String) -> Response {
    tracing::error!(error = %e, "token service");
    oauth_error(
        StatusCode::INTERNAL_SERVER_ERROR,
        "server_error",
        "the token could not be made",
    )
}

fn rfc3339(secs: u64) -> String {
    time::OffsetDateTime::from_unix_timestamp(secs as i64)
        .ok()
        .and_then(|t| {
            t.format(&time::format_description::well_known::Rfc3339)
                .ok()
        })
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scopes() {
        assert_eq!(
            parse_scope("repository:a/b:pull,push"),
            Some((
                "repository".into(),
                "a/b".into(),
                vec!["pull".into(), "push".into()]
            ))
        );
        assert_eq!(
            parse_scope("repository(plugin):a:pull").map(|s| s.0),
            Some("repository".into())
        );
        assert_eq!(
            parse_scope("registry:catalog:*").map(|s| s.1),
            Some("catalog".into())
        );
        assert_eq!(parse_scope("nonsense"), None);
        // Found by fuzz::scope: nothing is granted on a resource without a name.
        assert_eq!(parse_scope("repository::pull"), None);
        assert_eq!(parse_scope(":a/b:pull"), None);
    }
}
