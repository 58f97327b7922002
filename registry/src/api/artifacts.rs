//! `/artifacts/...`: generic artifacts over HTTP, curl-friendly, with JSON listings. The
//! raw, undecoded path is parsed into a typed [`Target`] before any handler runs; every
//! component is validated (`%2e%2e` is just an invalid name), so nothing a client sends
//! can name a path outside the artifacts tree.
//!
//! | path | methods |
//! | --- | --- |
//! | `/artifacts/` | `GET` branches |
//! | `/artifacts/{branch}` | `GET` tags, `DELETE[?force]` |
//! | `/artifacts/{branch}/policy` | `GET`, `PUT` retention policy (JSON) |
//! | `/artifacts/{branch}/usage` | `GET` disk usage |
//! | `/artifacts/{branch}/{tag}` | `GET` jobs, `DELETE[?force]` |
//! | `/artifacts/{branch}/{tag}/released`, `…/locked` | `GET`, `PUT` set, `DELETE` clear |
//! | `/artifacts/{branch}/{tag}/{job}` | `GET` formats, `DELETE[?force]` |
//! | `/artifacts/{branch}/{tag}/{job}/{format}` | `GET` files, `PATCH` finalise |
//! | `/artifacts/{branch}/{tag}/{job}/{format}/{path…}` | `PUT` upload, `GET`/`HEAD` file or folder |

use std::sync::Arc;
use std::time::SystemTime;

use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{HeaderMap, HeaderName, Method, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Serialize;

use super::blobs::parse_range;
use super::{
    ApiResult, AppState, header_str, method_not_allowed, query_get, query_pairs, response,
};
use crate::api::error::Error;
use crate::artifacts::{ArtifactStat, FilePath, FormatId, Lookup, Policy, Scope, Segment, TagFlag};
use crate::digest::Digest;

/// Largest policy document accepted.
const MAX_POLICY_BODY: usize = 64 * 1024;

/// A parsed `/artifacts/...` path.
#[derive(Debug)]
pub(crate) enum Target {
    Root,
    Branch(Segment),
    Policy(Segment),
    Usage(Segment),
    Tag(Segment, Segment),
    Flag(Segment, Segment, TagFlag),
    Job(Segment, Segment, Segment),
    Format(FormatId),
    /// A file, or a folder inside a format.
    Path(FormatId, FilePath),
}

impl Target {
    /// Parses the part of the path after `/artifacts/` (one trailing `/` is allowed).
    pub(crate) fn parse(rest: &str) -> Result<Target, Error> {
        let rest = rest.strip_suffix('/').unwrap_or(rest);
        if rest.is_empty() {
            return Ok(Target::Root);
        }
        let seg: Vec<&str> = rest.split('/').collect();
        let b = Segment::parse("branch", seg[0])?;
        match seg.len() {
            1 => return Ok(Target::Branch(b)),
            2 => {
                return Ok(match seg[1] {
                    "policy" => Target::Policy(b),
                    "usage" => Target::Usage(b),
                    t => Target::Tag(b, Segment::parse_tag(t)?),
                });
            }
            _ => {}
        }
        let t = Segment::parse_tag(seg[1])?;
        if seg.len() == 3 {
            return Ok(match seg[2] {
                "released" => Target::Flag(b, t, TagFlag::Released),
                "locked" => Target::Flag(b, t, TagFlag::Locked),
                j => Target::Job(b, t, Segment::parse_job(j)?),
            });
        }
        let f = FormatId {
            branch: b,
            tag: t,
            job: Segment::parse_job(seg[2])?,
            format: Segment::parse("format", seg[3])?,
        };
        if seg.len() == 4 {
            return Ok(Target::Format(f));
        }
        Ok(Target::Path(f, FilePath::from_components(&seg[4..])?))
    }
}

/// The branch a request under `/artifacts/` acts on and the action the policy must
/// allow: reads need pull, uploads and finalising push, and everything that removes
/// or protects content (deletes, lock/unlock, release, retention policy) needs delete.
/// `None` for a path that names no branch or does not parse.
pub(crate) fn branch_action(rest: &str, m: &Method) -> Option<(String, crate::access::Action)> {
    use crate::access::Action;
    let target = Target::parse(rest).ok()?;
    let read = m == Method::GET || m == Method::HEAD;
    let (branch, protective) = match &target {
        Target::Root => return None,
        Target::Branch(b) | Target::Usage(b) | Target::Tag(b, _) | Target::Job(b, _, _) => {
            (b, false)
        }
        Target::Policy(b) | Target::Flag(b, _, _) => (b, true),
        Target::Format(f) | Target::Path(f, _) => (&f.branch, false),
    };
    let action = if read {
        Action::Pull
    } else if protective || m == Method::DELETE {
        Action::Delete
    } else {
        Action::Push
    };
    Some((branch.as_str().to_owned(), action))
}

/// Every request under `/artifacts`.
pub(super) async fn dispatch(State(state): State<Arc<AppState>>, req: Request) -> Response {
    let path = req.uri().path().to_owned();
    let rest = path.strip_prefix("/artifacts").unwrap_or("");
    let rest = rest.strip_prefix('/').unwrap_or(rest);
    let result = match Target::parse(rest) {
        Ok(target) => handle(&state, target, req).await,
        Err(e) => Err(e),
    };
    result.unwrap_or_else(IntoResponse::into_response)
}

async fn handle(state: &AppState, target: Target, req: Request) -> ApiResult {
    let s = &state.store;
    let q = query_pairs(req.uri());
    let force = query_get(&q, "force").is_some_and(|v| v != "false" && v != "0");
    let m = req.method().clone();
    let read = m == Method::GET || m == Method::HEAD;
    match target {
        Target::Root if read => {
            let mut listing = s.list_artifact_root().await?;
            // Only the branches the caller may read (the auth layer's verdict).
            if let Some(caller) = req.extensions().get::<crate::auth::Caller>() {
                listing.children.retain(|e| {
                    caller.may(
                        crate::access::Action::Pull,
                        crate::access::Resource::Branch(&e.name),
                    )
                });
            }
            json(StatusCode::OK, &listing)
        }
        Target::Branch(b) if read => json(StatusCode::OK, &s.list_artifact_branch(&b).await?),
        Target::Branch(b) if m == Method::DELETE => delete(state, Scope::Branch(&b), force).await,
        Target::Policy(b) if read => json(StatusCode::OK, &s.artifact_policy(&b).await?),
        Target::Policy(b) if m == Method::PUT => {
            state.check_write()?;
            let body = axum::body::to_bytes(req.into_body(), MAX_POLICY_BODY)
                .await
                .map_err(|e| Error::BadRequest(format!("policy body: {e}")))?;
            let p: Policy = serde_json::from_slice(&body).map_err(|e| {
                Error::BadRequest(format!(
                    "a policy is {{\"max_daily_tags\": N|null, \"max_released_tags\": N|null}}: {e}"
                ))
            })?;
            s.set_artifact_policy(&b, &p).await?;
            json(StatusCode::OK, &p)
        }
        Target::Usage(b) if read => json(StatusCode::OK, &s.artifact_usage(&b).await?),
        Target::Tag(b, t) if read => json(StatusCode::OK, &s.list_artifact_tag(&b, &t).await?),
        Target::Tag(b, t) if m == Method::DELETE => delete(state, Scope::Tag(&b, &t), force).await,
        Target::Flag(b, t, _) if read => json(
            StatusCode::OK,
            &s.artifact_tag(&b, &t).await?.ok_or(Error::NotFound)?,
        ),
        Target::Flag(b, t, flag) if m == Method::PUT || m == Method::DELETE => {
            state.check_write()?;
            let meta = s
                .set_artifact_tag_flag(&b, &t, flag, m == Method::PUT)
                .await?;
            json(StatusCode::OK, &meta)
        }
        Target::Job(b, t, j) if read => {
            json(StatusCode::OK, &s.list_artifact_job(&b, &t, &j).await?)
        }
        Target::Job(b, t, j) if m == Method::DELETE => {
            delete(state, Scope::Job(&b, &t, &j), force).await
        }
        Target::Format(f) if read => json(StatusCode::OK, &s.list_artifact_folder(&f, None).await?),
        Target::Format(f) if m == Method::PATCH => {
            state.check_write()?;
            json(StatusCode::OK, &s.finalize_format(&f).await?)
        }
        Target::Path(f, p) if read => match s.lookup_artifact(&f, &p).await? {
            Lookup::File(stat) => get_file(state, m == Method::HEAD, stat, req.headers()).await,
            Lookup::Folder => json(StatusCode::OK, &s.list_artifact_folder(&f, Some(&p)).await?),
            Lookup::Missing => Err(Error::NotFound),
        },
        Target::Path(f, p) if m == Method::PUT => put_file(state, f, p, req).await,
        _ => Ok(method_not_allowed()),
    }
}

fn json<T: Serialize>(status: StatusCode, v: &T) -> ApiResult {
    let body = serde_json::to_vec_pretty(v).map_err(Error::internal)?;
    Ok(response(
        status,
        &[
            ("content-type", "application/json".into()),
            ("content-length", body.len().to_string()),
        ],
        Body::from(body),
    ))
}

async fn delete(state: &AppState, scope: Scope<'_>, force: bool) -> ApiResult {
    state.check_delete()?;
    let removed = state.store.delete_artifacts(scope, force).await?;
    state.deleted();
    json(StatusCode::OK, &removed)
}

/// The digest a client announces: `?digest=` and/or a `Digest: sha256:<hex>` header.
fn expected_digest(req: &Request) -> Result<Option<Digest>, Error> {
    let q = query_pairs(req.uri());
    let from_query = query_get(&q, "digest")
        .map(str::parse::<Digest>)
        .transpose()?;
    let from_header = header_str(req.headers(), HeaderName::from_static("digest"))
        .map(|v| v.trim().parse::<Digest>())
        .transpose()?;
    match (from_query, from_header) {
        (Some(a), Some(b)) if a != b => Err(Error::DigestInvalid(format!(
            "?digest={a} and the Digest header {b} disagree"
        ))),
        (a, b) => Ok(a.or(b)),
    }
}

#[derive(Serialize)]
struct Uploaded<'a> {
    path: String,
    digest: &'a Digest,
    size: u64,
    reused: bool,
}

async fn put_file(state: &AppState, f: FormatId, p: FilePath, req: Request) -> ApiResult {
    state.check_write()?;
    let expected = expected_digest(&req)?;
    let body = req.into_body().into_data_stream();
    let put = state
        .store
        .put_artifact(&f, &p, expected.as_ref(), body)
        .await?;
    let path = format!("{f}/{p}");
    let body = serde_json::to_vec_pretty(&Uploaded {
        path: path.clone(),
        digest: &put.digest,
        size: put.size,
        reused: put.reused,
    })
    .map_err(Error::internal)?;
    Ok(response(
        StatusCode::CREATED,
        &[
            ("location", format!("/artifacts/{path}")),
            ("docker-content-digest", put.digest.to_string()),
            ("digest", put.digest.to_string()),
            ("content-type", "application/json".into()),
            ("content-length", body.len().to_string()),
        ],
        Body::from(body),
    ))
}

async fn get_file(
    state: &AppState,
    head: bool,
    stat: ArtifactStat,
    headers: &HeaderMap,
) -> ApiResult {
    let range = match header_str(headers, header::RANGE) {
        Some(r) => parse_range(r, stat.size)?,
        None => None,
    };
    let (status, len, mut hdrs) = match range {
        Some((a, b)) => (
            StatusCode::PARTIAL_CONTENT,
            b - a + 1,
            vec![("content-range", format!("bytes {a}-{b}/{}", stat.size))],
        ),
        None => (StatusCode::OK, stat.size, Vec::new()),
    };
    hdrs.extend([
        ("content-length", len.to_string()),
        ("content-type", "application/octet-stream".to_owned()),
        ("docker-content-digest", stat.digest.to_string()),
        ("digest", stat.digest.to_string()),
        ("etag", format!("\"{}\"", stat.digest)),
        ("accept-ranges", "bytes".to_owned()),
        ("last-modified", http_date(stat.modified)),
    ]);
    let body = if head {
        Body::empty()
    } else {
        let offset = range.map_or(0, |(a, _)| a);
        let r = state
            .store
            .open_pool_blob(&stat.digest, offset, Some(len))
            .await?;
        Body::from_stream(r.body)
    };
    Ok(response(status, &hdrs, body))
}

/// An HTTP date (`Sun, 06 Nov 1994 08:49:37 GMT`).
fn http_date(t: SystemTime) -> String {
    let Ok(fmt) = time::format_description::parse_borrowed::<2>(
        "[weekday repr:short], [day] [month repr:short] [year] [hour]:[minute]:[second] GMT",
    ) else {
        return String::new();
    };
    time::OffsetDateTime::from(t)
        .format(&fmt)
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_every_level() {
        assert!(matches!(Target::parse(""), Ok(Target::Root)));
        assert!(matches!(Target::parse("main"), Ok(Target::Branch(b)) if b.as_str() == "main"));
        assert!(matches!(Target::parse("main/"), Ok(Target::Branch(_))));
        assert!(matches!(
            Target::parse("main/policy"),
            Ok(Target::Policy(_))
        ));
        assert!(matches!(Target::parse("main/usage"), Ok(Target::Usage(_))));
        assert!(matches!(Target::parse("main/v1"), Ok(Target::Tag(_, t)) if t.as_str() == "v1"));
        assert!(matches!(
            Target::parse("main/v1/released"),
            Ok(Target::Flag(_, _, TagFlag::Released))
        ));
        assert!(matches!(
            Target::parse("main/v1/locked"),
            Ok(Target::Flag(_, _, TagFlag::Locked))
        ));
        assert!(matches!(
            Target::parse("main/v1/build"),
            Ok(Target::Job(..))
        ));
        assert!(
            matches!(Target::parse("main/v1/build/rpm/"), Ok(Target::Format(f)) if f.to_string() == "main/v1/build/rpm")
        );
        assert!(
            matches!(Target::parse("main/v1/build/rpm/x86_64/gcc-c++-8.rpm"), Ok(Target::Path(_, p)) if p.as_str() == "x86_64/gcc-c++-8.rpm")
        );
    }

    #[test]
    fn rejects_escapes_and_reserved_names() {
        for bad in [
            "..",
            "main/..",
            "main/v1/../x",
            "main/v1/build/rpm/../../../../etc/passwd",
            "main/v1/build/rpm/a/../b",
            "main/v1/build/rpm/a//b",
            "main//v1",
            "main/v1/build/rpm//",
            "%2e%2e/v1",
            "main/v1/build/rpm/%2e%2e/x",
            "main/v1/build/rpm/.link",
            "main/v1/build/rpm/a/.tag.json",
            ".work/x",
            ".trash",
            "main/policy/build",
            "main/usage/build/rpm/f",
            "main/v1/released/rpm",
            "main/v1/locked/rpm/f",
            "/main",
            "main/v 1",
        ] {
            assert!(
                matches!(Target::parse(bad), Err(Error::NameInvalid(_))),
                "{bad:?} parsed as {:?}",
                Target::parse(bad)
            );
        }
    }

    #[test]
    fn http_dates() {
        let t = SystemTime::UNIX_EPOCH + std::time::Duration::from_secs(784111777);
        assert_eq!(http_date(t), "Sun, 06 Nov 1994 08:49:37 GMT");
    }
}
