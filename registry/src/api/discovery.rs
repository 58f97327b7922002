//! Content discovery: tag listing, the catalog (both with `n`/`last`/`Link`
//! pagination) and the referrers API with `artifactType` filtering.

use std::cmp::Ordering;
use std::sync::Arc;

use axum::body::Body;
use axum::extract::State;
use axum::http::{StatusCode, Uri};
use axum::response::{IntoResponse, Response};

use super::{ApiResult, AppState, query_get, query_pairs, response};
use crate::api::error::Error;
use crate::digest::Digest;
use crate::manifest::media;
use crate::names::RepoName;
use crate::repository::lexical;

/// `n` and `last` of a paginated listing.
pub(crate) struct Page {
    n: Option<usize>,
    last: Option<String>,
}

impl Page {
    pub(crate) fn from_uri(uri: &Uri) -> Result<Page, Error> {
        let q = query_pairs(uri);
        let n = match query_get(&q, "n") {
            Some(v) => Some(v.parse::<usize>().map_err(|_| {
                Error::PaginationNumberInvalid(format!("n={v:?} is not a non-negative integer"))
            })?),
            None => None,
        };
        Ok(Page {
            n,
            last: query_get(&q, "last").map(str::to_owned),
        })
    }

    /// Applies the page to a list sorted by [`lexical`]; returns the slice and the `Link`
    /// for the next.
    pub(crate) fn apply(&self, items: &[String], path: &str) -> (Vec<String>, Option<String>) {
        let start = match &self.last {
            Some(l) => items.partition_point(|x| lexical(x, l) != Ordering::Greater),
            None => 0,
        };
        let rest = &items[start..];
        match self.n {
            Some(n) if n < rest.len() => {
                let page = rest[..n].to_vec();
                let link = page
                    .last()
                    .map(|l| format!("<{path}?n={n}&last={l}>; rel=\"next\""));
                (page, link)
            }
            _ => (rest.to_vec(), None),
        }
    }
}

fn json_response(
    body: serde_json::Value,
    content_type: &str,
    extra: Vec<(&str, String)>,
) -> Response {
    let text = body.to_string();
    let mut hdrs = vec![
        ("content-type", content_type.to_owned()),
        ("content-length", text.len().to_string()),
    ];
    hdrs.extend(extra);
    response(StatusCode::OK, &hdrs, Body::from(text))
}

pub(super) async fn tags(state: &AppState, name: RepoName, uri: &Uri) -> ApiResult {
    let page = Page::from_uri(uri)?;
    let all = state.store.tag_listing(&name).await?;
    let (tags, link) = page.apply(&all, &format!("/v2/{name}/tags/list"));
    let extra = link.map(|l| vec![("link", l)]).unwrap_or_default();
    Ok(json_response(
        serde_json::json!({ "name": name.as_str(), "tags": tags }),
        "application/json",
        extra,
    ))
}

pub(super) async fn catalog(
    State(state): State<Arc<AppState>>,
    caller: Option<axum::Extension<crate::auth::Caller>>,
    uri: Uri,
) -> Response {
    let run = async {
        let page = Page::from_uri(&uri)?;
        let all = state.store.catalog().await?;
        // Only the repositories the caller may pull (the auth layer's verdict).
        let visible: Vec<String>;
        let all: &[String] = match caller {
            Some(axum::Extension(c)) if !c.sees_whole_catalog() => {
                visible = all
                    .iter()
                    .filter(|r| {
                        c.may(
                            crate::access::Action::Pull,
                            crate::access::Resource::Repository(r),
                        )
                    })
                    .cloned()
                    .collect();
                &visible
            }
            _ => &all,
        };
        let (repos, link) = page.apply(all, "/v2/_catalog");
        let extra = link.map(|l| vec![("link", l)]).unwrap_or_default();
        Ok::<_, Error>(json_response(
            serde_json::json!({ "repositories": repos }),
            "application/json",
            extra,
        ))
    };
    run.await.unwrap_or_else(IntoResponse::into_response)
}

pub(super) async fn referrers(
    state: &AppState,
    name: RepoName,
    subject: Digest,
    uri: &Uri,
) -> ApiResult {
    let q = query_pairs(uri);
    let filter = query_get(&q, "artifactType");
    let manifests = state.store.referrers(&name, &subject, filter).await?;
    let extra = if filter.is_some() {
        vec![("oci-filters-applied", "artifactType".to_owned())]
    } else {
        Vec::new()
    };
    Ok(json_response(
        serde_json::json!({
            "schemaVersion": 2,
            "mediaType": media::OCI_INDEX,
            "manifests": manifests,
        }),
        media::OCI_INDEX,
        extra,
    ))
}
