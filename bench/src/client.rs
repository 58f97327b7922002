//! A deliberately small HTTP/1.1 client: one keep-alive connection per worker, built on
//! hyper's low-level `client::conn::http1` over a `tokio::net::TcpStream`, so the load
//! tool spends as little CPU as possible on its own side of loopback; big bodies from a
//! file go out with sendfile(2) instead (see [`FileRange`]). It knows the two
//! things a registry client must: `Location` headers may be absolute or relative, and
//! may carry a query (`?_state=...` in Distribution) that `&digest=` must extend.

use std::io::{Read, Write};
use std::net::{SocketAddr, ToSocketAddrs};
use std::os::fd::AsRawFd;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, anyhow, bail};
use bytes::Bytes;
use http::header::{self, HeaderName, HeaderValue};
use http::{HeaderMap, Method, Request, Response, StatusCode};
use http_body_util::combinators::UnsyncBoxBody;
use http_body_util::{BodyExt, Empty, Full};
use hyper::body::Incoming;
use hyper::client::conn::http1::{self, SendRequest};
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;

pub type BoxError = Box<dyn std::error::Error + Send + Sync>;
/// A request body sent through hyper: empty or in memory (files go as [`Payload::File`]).
pub type Body = UnsyncBoxBody<Bytes, BoxError>;

/// The `Authorization` header every request carries (`--authorization`), if any.
static AUTHORIZATION: std::sync::OnceLock<HeaderValue> = std::sync::OnceLock::new();

/// Sets the `Authorization` value of every request from now on (once per process).
pub fn set_authorization(value: &str) -> anyhow::Result<()> {
    let mut v = HeaderValue::from_str(value).context("--authorization is not a header value")?;
    v.set_sensitive(true);
    AUTHORIZATION
        .set(v)
        .map_err(|_| anyhow!("--authorization set twice"))
}

/// Where requests go: `http://host:port[/prefix]`.
#[derive(Debug)]
pub struct Target {
    pub addr: SocketAddr,
    pub host: HeaderValue,
    /// Sent as `Authorization` on every request.
    pub authorization: Option<HeaderValue>,
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
            authorization: AUTHORIZATION.get().cloned(),
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

/// `len` bytes of a file from `offset`: a request body that [`Conn::request`] sends with
/// sendfile(2), so the file's pages go from the page cache to the socket without being
/// read into (or allocated by) this process. On a machine where the load tool shares a
/// few cores with the server it measures, the client's own copies and page faults are
/// CPU taken from the server: with `read` + `write` they were about a fifth of all CPU
/// time during a 512 MiB push on the 2-core bench machine.
#[derive(Debug, Clone)]
pub struct FileRange {
    pub path: PathBuf,
    pub offset: u64,
    pub len: u64,
}

/// A request body: in memory (or empty), sent through hyper, or a file range sent with
/// sendfile(2).
pub enum Payload {
    Body(Body),
    File(FileRange),
}

impl Payload {
    /// The body's length in bytes, for `content-length`; `None` for a body whose length
    /// is not known in advance.
    pub fn length(&self) -> Option<u64> {
        match self {
            Payload::Body(b) => hyper::body::Body::size_hint(b).exact(),
            Payload::File(f) => Some(f.len),
        }
    }
}

/// A whole response: the status, the headers, and the (small) body.
pub struct Reply {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: Bytes,
}

impl Reply {
    async fn of(resp: Response<Incoming>) -> anyhow::Result<Reply> {
        let status = resp.status();
        let headers = resp.headers().clone();
        let body = collect(resp).await?;
        Ok(Reply {
            status,
            headers,
            body,
        })
    }
}

/// One request with a file body on a connection of its own (`connection: close`): the
/// head with `write`, the body with `sendfile`, then the response, read to the end.
fn send_file_blocking(addr: SocketAddr, head: &[u8], file: &FileRange) -> anyhow::Result<Reply> {
    let mut sock = std::net::TcpStream::connect(addr).with_context(|| format!("connect {addr}"))?;
    sock.set_nodelay(true)?;
    sock.set_read_timeout(Some(RESPONSE_TIMEOUT))?;
    sock.write_all(head).context("sending the request head")?;
    let f =
        std::fs::File::open(&file.path).with_context(|| format!("open {}", file.path.display()))?;
    let sent = send_range(&sock, &f, file.offset, file.len);
    // A server may answer before it has read the whole body (an error) and close the
    // connection: its answer says more than the failed send.
    match (read_reply(&mut sock), sent) {
        (Ok(reply), _) => Ok(reply),
        (Err(_), Err(e)) => Err(e).context("sending the body"),
        (Err(e), Ok(())) => Err(e),
    }
}

/// How long a response may take once the body is sent (a registry fsyncs a big blob).
const RESPONSE_TIMEOUT: Duration = Duration::from_secs(300);

/// `sendfile` of `len` bytes of `f` from `offset` to `sock`.
fn send_range(
    sock: &std::net::TcpStream,
    f: &std::fs::File,
    offset: u64,
    len: u64,
) -> std::io::Result<()> {
    let mut off = libc::off_t::try_from(offset).map_err(std::io::Error::other)?;
    let mut left = len;
    while left > 0 {
        let want = usize::try_from(left.min(1 << 30)).unwrap_or(1 << 30);
        // SAFETY: both descriptors are open for the duration of the call, and `off` is a
        // valid in/out pointer.
        let n = unsafe { libc::sendfile(sock.as_raw_fd(), f.as_raw_fd(), &mut off, want) };
        match n {
            n if n > 0 => left -= n as u64,
            0 => {
                return Err(std::io::Error::new(
                    std::io::ErrorKind::UnexpectedEof,
                    format!("the file ends {left} bytes before the range does"),
                ));
            }
            _ => {
                let e = std::io::Error::last_os_error();
                if e.kind() != std::io::ErrorKind::Interrupted {
                    return Err(e);
                }
            }
        }
    }
    Ok(())
}

/// Reads a response head and then the body up to its `content-length` (or to the end of
/// the connection, which the server closes after answering `connection: close`).
fn read_reply(sock: &mut std::net::TcpStream) -> anyhow::Result<Reply> {
    let mut buf = Vec::with_capacity(4096);
    let mut piece = [0u8; 4096];
    loop {
        let n = sock.read(&mut piece).context("reading the response")?;
        if n == 0 {
            bail!("the connection closed before a complete response head");
        }
        buf.extend_from_slice(&piece[..n]);
        let mut slots = [httparse::EMPTY_HEADER; 64];
        let mut parsed = httparse::Response::new(&mut slots);
        let httparse::Status::Complete(at) = parsed.parse(&buf).context("parsing the response")?
        else {
            continue;
        };
        let status = StatusCode::from_u16(parsed.code.unwrap_or(0)).context("response status")?;
        let mut headers = HeaderMap::new();
        for h in parsed.headers.iter() {
            headers.append(
                HeaderName::from_bytes(h.name.as_bytes())?,
                HeaderValue::from_bytes(h.value)?,
            );
        }
        let length = header_str(&headers, "content-length").and_then(|v| v.parse::<usize>().ok());
        let mut body = buf[at..].to_vec();
        match length {
            Some(len) => {
                while body.len() < len {
                    let n = sock.read(&mut piece).context("reading the response body")?;
                    if n == 0 {
                        bail!("the response body ends after {} of {len} bytes", body.len());
                    }
                    body.extend_from_slice(&piece[..n]);
                }
                body.truncate(len);
            }
            None => {
                sock.read_to_end(&mut body)
                    .context("reading the response body")?;
            }
        }
        return Ok(Reply {
            status,
            headers,
            body: Bytes::from(body),
        });
    }
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
        if let Some(a) = &self.target.authorization {
            h.insert(header::AUTHORIZATION, a.clone());
        }
        for (k, v) in headers {
            h.insert(k.clone(), v.clone());
        }
        let sender = self.ready().await?;
        sender
            .send_request(req)
            .await
            .with_context(|| format!("{method} {path}"))
    }

    /// Sends one request and reads the whole response. A [`Payload::File`] goes on a
    /// connection of its own with sendfile(2) (see [`FileRange`]); this connection stays
    /// as it is.
    pub async fn request(
        &mut self,
        method: Method,
        path: &str,
        headers: &[(HeaderName, HeaderValue)],
        payload: Payload,
    ) -> anyhow::Result<Reply> {
        let file = match payload {
            Payload::Body(body) => {
                return Reply::of(self.send(method, path, headers, body).await?).await;
            }
            Payload::File(file) => file,
        };
        let mut head = format!("{method} {path} HTTP/1.1\r\n").into_bytes();
        head.extend_from_slice(b"host: ");
        head.extend_from_slice(self.target.host.as_bytes());
        head.extend_from_slice(b"\r\nconnection: close\r\n");
        if let Some(a) = &self.target.authorization {
            head.extend_from_slice(b"authorization: ");
            head.extend_from_slice(a.as_bytes());
            head.extend_from_slice(b"\r\n");
        }
        for (k, v) in headers {
            head.extend_from_slice(k.as_str().as_bytes());
            head.extend_from_slice(b": ");
            head.extend_from_slice(v.as_bytes());
            head.extend_from_slice(b"\r\n");
        }
        head.extend_from_slice(b"\r\n");
        let addr = self.target.addr;
        tokio::task::spawn_blocking(move || send_file_blocking(addr, &head, &file))
            .await
            .context("the sending thread panicked")?
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
) -> anyhow::Result<HeaderMap> {
    expect_reply(what, Reply::of(resp).await?, want)
}

/// [`expect`] for a response already read.
pub fn expect_reply(what: &str, reply: Reply, want: StatusCode) -> anyhow::Result<HeaderMap> {
    if reply.status != want {
        let body = &reply.body[..reply.body.len().min(300)];
        let text = String::from_utf8_lossy(body);
        bail!("{what}: {} (wanted {want}) {text}", reply.status);
    }
    Ok(reply.headers)
}

pub fn header_str<'a>(h: &'a HeaderMap, name: &str) -> Option<&'a str> {
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
