//! The admin API of a server: `GET /admin/gc` (status and last report) and
//! `POST /admin/gc` (schedule a cycle, or with `wait=true` run one and answer its
//! report; `dry_run`, `remove_untagged` and `grace` override the configured options).
//! On the HTTP listener the auth layer lets only admins through (never by address);
//! it is also served on the root's admin socket (owner-only), which the offline command
//! uses to ask the owning server to collect instead of racing it.

use std::path::{Path, PathBuf};

use axum::Router;
use axum::body::Body;
use axum::extract::{Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use http_body_util::BodyExt;
use serde::Deserialize;

use crate::Options;
use crate::cleaner::Cleaner;
use crate::maintenance::{Maintenance, Task};

#[derive(Debug, Default, Deserialize)]
pub struct GcParams {
    #[serde(default)]
    pub wait: bool,
    pub dry_run: Option<bool>,
    pub remove_untagged: Option<bool>,
    /// Go duration.
    pub grace: Option<String>,
}

fn json(status: StatusCode, v: &impl serde::Serialize) -> Response {
    let body = serde_json::to_string(v).unwrap_or_else(|_| "{}".into());
    (status, [("content-type", "application/json")], body).into_response()
}

fn error(status: StatusCode, message: String) -> Response {
    json(status, &serde_json::json!({ "error": message }))
}

async fn gc_status(State(c): State<Cleaner>) -> Response {
    json(StatusCode::OK, &c.status())
}

async fn gc_run(State(c): State<Cleaner>, Query(p): Query<GcParams>) -> Response {
    let custom = p.dry_run.is_some() || p.remove_untagged.is_some() || p.grace.is_some();
    if !p.wait && !custom {
        if !c.schedule() {
            return error(
                StatusCode::CONFLICT,
                "gc.enabled is false: cycles are not scheduled (POST /admin/gc?wait=true runs one now)"
                    .into(),
            );
        }
        return json(
            StatusCode::ACCEPTED,
            &serde_json::json!({ "scheduled": true }),
        );
    }
    let mut opts: Options = c.options().clone();
    if let Some(v) = p.dry_run {
        opts.dry_run = v;
    }
    if let Some(v) = p.remove_untagged {
        opts.remove_untagged = v;
    }
    if let Some(g) = &p.grace {
        match registry::config::parse_duration(g) {
            Ok(d) => opts.grace = d,
            Err(e) => return error(StatusCode::BAD_REQUEST, format!("grace: {e}")),
        }
    }
    match c.run_now(&opts).await {
        Ok(report) => json(StatusCode::OK, &report),
        Err(e) => error(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
    }
}

async fn maintenance_status(State(m): State<Maintenance>) -> Response {
    json(StatusCode::OK, &m.status().await)
}

/// `POST /admin/maintenance/run?task=gc&task=scrub` (or `schedule=daily`, `auto=true`,
/// nothing: every enabled task); `wait=true` answers the records, else 202.
async fn maintenance_run(State(m): State<Maintenance>, uri: axum::http::Uri) -> Response {
    let pairs: Vec<(String, String)> = uri
        .query()
        .and_then(|q| serde_urlencoded::from_str(q).ok())
        .unwrap_or_default();
    let get = |k: &str| pairs.iter().find(|(a, _)| a == k).map(|(_, v)| v.as_str());
    let mut tasks = Vec::new();
    for (k, v) in &pairs {
        if k == "task" {
            match Task::parse(v) {
                Some(t) => tasks.push(t),
                None => return error(StatusCode::BAD_REQUEST, format!("unknown task {v:?}")),
            }
        }
    }
    let auto = get("auto") == Some("true");
    let schedule = get("schedule");
    if tasks.is_empty() {
        tasks = if auto || schedule.is_some() {
            m.due(schedule, auto).await
        } else {
            m.enabled_tasks()
        };
    }
    let trigger = get("trigger").unwrap_or("admin").to_owned();
    let dry_run = get("dry_run") == Some("true");
    if get("wait") == Some("true") || dry_run {
        let records = m.run_with(tasks, &trigger, dry_run).await;
        return json(StatusCode::OK, &records);
    }
    let names: Vec<&str> = tasks.iter().map(|t| t.name()).collect();
    let body = serde_json::json!({ "queued": names });
    tokio::spawn(async move { m.run(tasks, &trigger).await });
    json(StatusCode::ACCEPTED, &body)
}

/// The admin routes. Who may reach them is the auth layer's decision
/// (`registry::auth`): an admin over TCP, whatever router serves them; anyone who can
/// open the owner-only socket.
pub fn router(cleaner: Cleaner, maintenance: Maintenance) -> Router {
    Router::new()
        .route("/admin/gc", get(gc_status).post(gc_run))
        .with_state(cleaner)
        .merge(
            Router::new()
                .route("/admin/maintenance", get(maintenance_status))
                .route("/admin/maintenance/run", post(maintenance_run))
                .with_state(maintenance),
        )
}

/// Serves `router` on a unix socket at `path` (a stale socket file is replaced).
pub async fn serve_socket(path: PathBuf, router: Router) -> std::io::Result<()> {
    let listener = bind_owner_only(&path, &|| {}, &|| {})?;
    tokio::spawn(async move {
        if let Err(e) = axum::serve(listener, router).await {
            tracing::error!(error = %e, "admin socket server stopped");
        }
    });
    Ok(())
}

/// How often binding retries when a concurrent delete pruned the socket's folder.
const BIND_RETRIES: usize = 5;

/// Binds the socket at `path` under a temporary name, makes it owner-only, then renames
/// it into place: nobody else can connect at any moment. The folder is made again when
/// a concurrent delete pruned it, empty, between its creation and the bind (the storage
/// driver prunes empty folders). `before_bind` and `after_bind` let a test put a prune,
/// or another server's bind, in between.
fn bind_owner_only(
    path: &Path,
    before_bind: &dyn Fn(),
    after_bind: &dyn Fn(),
) -> std::io::Result<tokio::net::UnixListener> {
    use std::os::unix::fs::PermissionsExt;
    match std::fs::remove_file(path) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(e),
        _ => {}
    }
    // Unique per call, not only per process: servers started in one process on one root
    // (the replica tests) bind at the same moment.
    static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let tmp = path.with_extension(format!("sock.{}.{n}", std::process::id()));
    let mut tries = 0;
    let listener = loop {
        if let Some(dir) = path.parent() {
            // std's create_dir_all answers AlreadyExists when the folder it found there
            // is pruned before it looks again: made again, like a prune before the bind.
            match std::fs::create_dir_all(dir) {
                Err(e)
                    if matches!(
                        e.kind(),
                        std::io::ErrorKind::NotFound | std::io::ErrorKind::AlreadyExists
                    ) && tries < BIND_RETRIES =>
                {
                    tries += 1;
                    continue;
                }
                r => r?,
            }
        }
        let _ = std::fs::remove_file(&tmp);
        before_bind();
        match tokio::net::UnixListener::bind(&tmp) {
            Err(e) if e.kind() == std::io::ErrorKind::NotFound && tries < BIND_RETRIES => {
                tries += 1;
            }
            r => break r?,
        }
    };
    // Bound, the folder is not empty any more: no prune removes it now.
    after_bind();
    std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(0o600))?;
    std::fs::rename(&tmp, path)?;
    Ok(listener)
}

/// Sends one request to an admin socket; returns the status and body.
pub async fn request(
    socket: &Path,
    method: &str,
    path_and_query: &str,
) -> Result<(StatusCode, bytes::Bytes), String> {
    let stream = tokio::net::UnixStream::connect(socket)
        .await
        .map_err(|e| format!("cannot connect to {}: {e}", socket.display()))?;
    let (mut sender, conn) =
        hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream))
            .await
            .map_err(|e| format!("admin socket handshake: {e}"))?;
    tokio::spawn(conn);
    let req = axum::http::Request::builder()
        .method(method)
        .uri(path_and_query)
        .header("host", "drydock-admin")
        .body(Body::empty())
        .map_err(|e| e.to_string())?;
    let resp = sender
        .send_request(req)
        .await
        .map_err(|e| format!("admin request failed: {e}"))?;
    let status = resp.status();
    let body = resp
        .into_body()
        .collect()
        .await
        .map_err(|e| format!("admin response: {e}"))?
        .to_bytes();
    Ok((status, body))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The folder pruned (by a concurrent delete of the storage driver) between its
    /// creation and the bind: the socket is bound all the same, owner-only, in place.
    #[tokio::test]
    async fn a_socket_folder_pruned_before_the_bind_is_made_again() {
        use std::os::unix::fs::PermissionsExt;
        let root = tempfile::tempdir().unwrap();
        let path = root.path().join("drydock").join("admin.sock");
        let pruned = std::sync::atomic::AtomicUsize::new(0);
        let prune = || {
            if pruned.fetch_add(1, std::sync::atomic::Ordering::SeqCst) == 0 {
                std::fs::remove_dir(root.path().join("drydock")).unwrap();
            }
        };
        let listener = bind_owner_only(&path, &prune, &|| {}).expect("bound after the prune");
        assert_eq!(
            pruned.load(std::sync::atomic::Ordering::SeqCst),
            2,
            "one retry"
        );
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        drop(listener);
    }

    /// Two servers in one process bind the same root's socket at once (the replica
    /// tests): the second binds between the first's bind and its rename. Each works on a
    /// temporary name of its own, so neither removes or renames the other's.
    #[tokio::test]
    async fn two_binds_of_one_socket_at_once_both_succeed() {
        let root = tempfile::tempdir().unwrap();
        let path = root.path().join("drydock").join("admin.sock");
        let second = std::cell::RefCell::new(None);
        let other = || {
            *second.borrow_mut() = Some(bind_owner_only(&path, &|| {}, &|| {}));
        };
        let first = bind_owner_only(&path, &|| {}, &other);
        let second = second.into_inner().expect("the second bind ran");
        assert!(first.is_ok(), "the first bind: {:?}", first.err());
        assert!(second.is_ok(), "the second bind: {:?}", second.err());
        assert!(path.exists());
    }
}
