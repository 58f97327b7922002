//! A deliberately small HTTP/1.1 client: one keep-alive connection per worker, built on
//! hyper's low-level `client::conn::http1` over a `tokio::net::TcpStream`, so the load
//! tool spends as little CPU as possible on its own side of loopback. It knows the two
//! things a registry client must: `Location` headers may be absolute or relative, and
//! may carry a query (`?_state=...` in Distribution) that `&digest=` must extend.

use std::io::{Read, Seek, SeekFrom};
use std::net::{SocketAddr, ToSocketAddrs};
use std::path::PathBuf;
use std::sync::Arc;

use anyhow::{Context, anyhow, bail};
use bytes::{Bytes, BytesMut};
use http::header::{self, HeaderName, HeaderValue};
use http::{Method, Request, Response, StatusCode};
use http_body_util::combinators::UnsyncBoxBody;
use http_body_util::{BodyExt, Empty, Full, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper::client::conn::http1::{self, SendRequest};
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;

pub type BoxError = Box<dyn std::error::Error + Send + Sync>;
/// Every request body: empty, in memory, or streamed from a file.
pub type Body = UnsyncBoxBody<Bytes, BoxError>;

/// Where requests go: `http://host:port[/prefix]`.
#[derive(Debug)]
pub struct Target {
    pub addr: SocketAddr,
    pub host: HeaderValue,
    /// The URL's path without a trailing slash (usually empty).
    pub prefix: String,
}

impl Target {
    pub fn parse(url: &str) -> anyhow::Result<Arc<Target>> {
        let rest = url
            .strip_prefix("http://")
            .ok_or_else(|| anyhow!("{url}: only http:// URLs are supported"))?;
        let (authority, path) = match rest.find('/') {
            Some(i) => (&rest[..i], &rest[i..]),
            None => (rest, ""),
        };
        let with_port = if authority
            .rsplit_once(':')
            .is_some_and(|(_, p)| !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit()))
        {
            authority.to_owned()
        } else {
            format!("{authority}:80")
        };
        let addr = with_port
            .to_socket_addrs()
            .with_context(|| format!("cannot resolve {authority}"))?
            .next()
            .ok_or_else(|| anyhow!("{authority} resolves to nothing"))?;
        Ok(Arc::new(Target {
            addr,
            host: HeaderValue::from_str(authority).context("host header")?,
            prefix: path.trim_end_matches('/').to_owned(),
        }))
    }

    /// `/v2/...` under the target's prefix.
    pub fn path(&self, p: &str) -> String {
        format!("{}{p}", self.prefix)
    }
}

/// The path and query of a `Location` or `Link` target, absolute or relative.
pub fn location_path(loc: &str) -> String {
    if let Some(i) = loc.find("://") {
        let after = &loc[i + 3..];
        match after.find('/') {
            Some(j) => after[j..].to_owned(),
            None => "/".to_owned(),
        }
    } else if loc.starts_with('/') {
        loc.to_owned()
    } else {
        format!("/{loc}")
    }
}

/// Appends `key=value` to a path that may already carry a query.
pub fn with_query(path: &str, key: &str, value: &str) -> String {
    let sep = if path.contains('?') { '&' } else { '?' };
    format!("{path}{sep}{key}={value}")
}

pub fn empty() -> Body {
    Empty::<Bytes>::new()
        .map_err(|never| match never {})
        .boxed_unsync()
}

pub fn full(b: impl Into<Bytes>) -> Body {
    Full::new(b.into())
        .map_err(|never| match never {})
        .boxed_unsync()
}

/// `len` bytes of `path` from `offset`, read by a thread in `chunk`-sized pieces a few
/// pieces ahead of the socket, so disk reads overlap sending. Nothing holds the whole
/// range in memory.
pub fn file_body(path: PathBuf, offset: u64, len: u64, chunk: usize) -> Body {
    let (tx, rx) = tokio::sync::mpsc::channel::<Result<Bytes, BoxError>>(4);
    std::thread::spawn(move || {
        let run = || -> std::io::Result<()> {
            let mut f = std::fs::File::open(&path)?;
            f.seek(SeekFrom::Start(offset))?;
            let mut left = len;
            while left > 0 {
                let want = usize::try_from(left.min(chunk as u64)).unwrap_or(chunk);
                let mut buf = BytesMut::zeroed(want);
                f.read_exact(&mut buf)?;
                left -= want as u64;
                if tx.blocking_send(Ok(buf.freeze())).is_err() {
                    return Ok(()); // the request was dropped
                }
            }
            Ok(())
        };
        if let Err(e) = run() {
            let _ = tx.blocking_send(Err(Box::new(e)));
        }
    });
    let stream = futures::stream::unfold(rx, |mut rx| async move {
        rx.recv().await.map(|item| (item.map(Frame::data), rx))
    });
    StreamBody::new(stream).boxed_unsync()
}

/// One keep-alive connection; reconnects when the server closed it.
pub struct Conn {
    target: Arc<Target>,
    sender: Option<SendRequest<Body>>,
    /// Connections opened after the first.
    pub reconnects: u64,
}

impl Conn {
    pub async fn connect(target: Arc<Target>) -> anyhow::Result<Conn> {
        let mut c = Conn {
            target,
            sender: None,
            reconnects: 0,
        };
        c.open().await?;
        c.reconnects = 0;
        Ok(c)
    }

    pub fn target(&self) -> &Arc<Target> {
        &self.target
    }

    async fn open(&mut self) -> anyhow::Result<()> {
        let stream = TcpStream::connect(self.target.addr)
            .await
            .with_context(|| format!("cannot connect to {}", self.target.addr))?;
        stream.set_nodelay(true)?;
        let (sender, conn) = http1::Builder::new()
            .handshake(TokioIo::new(stream))
            .await
            .context("HTTP/1.1 handshake")?;
        tokio::spawn(conn);
        self.sender = Some(sender);
        self.reconnects += 1;
        Ok(())
    }

    async fn ready(&mut self) -> anyhow::Result<&mut SendRequest<Body>> {
        let alive = match &mut self.sender {
            Some(s) => s.ready().await.is_ok(),
            None => false,
        };
        if !alive {
            self.open().await?;
        }
        self.sender.as_mut().ok_or_else(|| anyhow!("no connection"))
    }

    /// Sends one request to `path` (path and query, already under the prefix).
    pub async fn send(
        &mut self,
        method: Method,
        path: &str,
        headers: &[(HeaderName, HeaderValue)],
        body: Body,
    ) -> anyhow::Result<Response<Incoming>> {
        let mut req = Request::builder()
            .method(method.clone())
            .uri(path)
            .body(body)
            .with_context(|| format!("bad request {method} {path}"))?;
        let h = req.headers_mut();
        h.insert(header::HOST, self.target.host.clone());
        for (k, v) in headers {
            h.insert(k.clone(), v.clone());
        }
        let sender = self.ready().await?;
        sender
            .send_request(req)
            .await
            .with_context(|| format!("{method} {path}"))
    }
}

/// Reads and discards a body; returns its length.
pub async fn drain(resp: Response<Incoming>) -> anyhow::Result<u64> {
    let mut body = resp.into_body();
    let mut n = 0u64;
    while let Some(frame) = body.frame().await {
        if let Ok(d) = frame.context("reading the response body")?.into_data() {
            n += d.len() as u64;
        }
    }
    Ok(n)
}

/// Reads a whole (small) body.
pub async fn collect(resp: Response<Incoming>) -> anyhow::Result<Bytes> {
    Ok(resp
        .into_body()
        .collect()
        .await
        .context("reading the response body")?
        .to_bytes())
}

/// Fails unless the status is `want`; reads the body either way, so the connection can
/// be reused, and quotes the start of an unexpected body.
pub async fn expect(
    what: &str,
    resp: Response<Incoming>,
    want: StatusCode,
) -> anyhow::Result<http::HeaderMap> {
    let status = resp.status();
    let headers = resp.headers().clone();
    let body = collect(resp).await?;
    if status != want {
        let text = String::from_utf8_lossy(&body[..body.len().min(300)]).into_owned();
        bail!("{what}: {status} (wanted {want}) {text}");
    }
    Ok(headers)
}

pub fn header_str<'a>(h: &'a http::HeaderMap, name: &str) -> Option<&'a str> {
    h.get(name).and_then(|v| v.to_str().ok())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn locations() {
        assert_eq!(
            location_path("http://127.0.0.1:5000/v2/a/blobs/uploads/x?_state=abc"),
            "/v2/a/blobs/uploads/x?_state=abc"
        );
        assert_eq!(
            location_path("/v2/a/blobs/uploads/x"),
            "/v2/a/blobs/uploads/x"
        );
        assert_eq!(
            with_query("/u/x?_state=abc", "digest", "sha256:00"),
            "/u/x?_state=abc&digest=sha256:00"
        );
        assert_eq!(with_query("/u/x", "digest", "d"), "/u/x?digest=d");
    }

    #[test]
    fn targets() {
        let t = Target::parse("http://127.0.0.1:5000").unwrap();
        assert_eq!(t.addr.port(), 5000);
        assert_eq!(t.path("/v2/"), "/v2/");
        let t = Target::parse("http://127.0.0.1:81/pre/").unwrap();
        assert_eq!(t.path("/v2/"), "/pre/v2/");
        assert!(Target::parse("https://x").is_err());
    }
}
