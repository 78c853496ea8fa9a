//! A tiny HTTPS endpoint and client for the demo, written by hand: one
//! request per connection, `Content-Length` bodies, no keep-alive.
//!
//! The endpoint serves `GET /hello` (a few lines telling what it saw: the
//! caller's address as its TCP peer, the SNI name and TLS version) and
//! `GET /bulk` (a fixed body of random bytes whose SHA-256 the demo knows).

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use sha2::{Digest, Sha256};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinSet;
use tokio_rustls::{TlsAcceptor, server::TlsStream};
use tracing::{debug, warn};

use crate::fail::{Context, Failure, Result, bail};

/// Longest request or response head accepted.
const MAX_HEAD: usize = 16 * 1024;
/// Size of the random block the bulk body repeats.
const BLOCK: usize = 1 << 20;
/// Size of reads and writes of bodies.
const CHUNK: usize = 256 * 1024;
/// Longest wait for any single read or write before giving up.
pub const IO_TIMEOUT: Duration = Duration::from_secs(30);

/// The bulk body: a 1 MiB random block repeated up to `len` bytes.
pub struct Bulk {
    block: Vec<u8>,
    len: u64,
    sha256: [u8; 32],
}

impl Bulk {
    /// A fresh random body of `len` bytes and its digest.
    pub fn new(len: u64) -> Bulk {
        let block_len = usize::try_from(len).map_or(BLOCK, |len| len.min(BLOCK));
        let mut block = vec![0u8; block_len];
        rand::fill(block.as_mut_slice());
        let mut bulk = Bulk {
            block,
            len,
            sha256: [0; 32],
        };
        let mut hasher = Sha256::new();
        for chunk in bulk.chunks() {
            hasher.update(chunk);
        }
        bulk.sha256 = hasher.finalize().into();
        bulk
    }

    /// Length in bytes.
    pub fn len(&self) -> u64 {
        self.len
    }

    /// SHA-256 of the whole body.
    pub fn sha256(&self) -> [u8; 32] {
        self.sha256
    }

    /// The body, in slices of at most [`CHUNK`] bytes.
    fn chunks(&self) -> impl Iterator<Item = &[u8]> {
        let mut left = self.len;
        let mut offset = 0usize;
        std::iter::from_fn(move || {
            if left == 0 || self.block.is_empty() {
                return None;
            }
            if offset >= self.block.len() {
                offset = 0;
            }
            let room = (self.block.len() - offset).min(CHUNK);
            let take = usize::try_from(left).map_or(room, |left| left.min(room));
            let chunk = self.block.get(offset..offset + take)?;
            offset += take;
            left -= take as u64;
            Some(chunk)
        })
    }
}

/// A running HTTPS endpoint on loopback; stops when dropped.
pub struct Endpoint {
    /// Where it listens.
    pub addr: SocketAddr,
    tasks: JoinSet<()>,
}

impl Endpoint {
    /// Listen on 127.0.0.1 (any port) and serve `/hello` and `/bulk`.
    pub async fn start(acceptor: TlsAcceptor, bulk: Arc<Bulk>) -> Result<Endpoint> {
        let listener = TcpListener::bind(("127.0.0.1", 0))
            .await
            .context("binding the HTTPS endpoint")?;
        let addr = listener.local_addr()?;
        let mut tasks = JoinSet::new();
        tasks.spawn(accept_loop(listener, acceptor, bulk));
        Ok(Endpoint { addr, tasks })
    }

    /// Stop serving.
    pub fn stop(mut self) {
        self.tasks.abort_all();
    }
}

async fn accept_loop(listener: TcpListener, acceptor: TlsAcceptor, bulk: Arc<Bulk>) {
    let mut connections = JoinSet::new();
    loop {
        tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((tcp, peer)) => {
                    let acceptor = acceptor.clone();
                    let bulk = Arc::clone(&bulk);
                    connections.spawn(async move {
                        if let Err(e) = serve(tcp, peer, acceptor, bulk).await {
                            warn!("endpoint: connection from {peer}: {e}");
                        }
                    });
                }
                Err(e) => {
                    warn!("endpoint: accept failed: {e}");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            },
            Some(_) = connections.join_next() => {}
        }
    }
}

/// Serve one connection: TLS handshake, one request, one response.
async fn serve(
    tcp: TcpStream,
    peer: SocketAddr,
    acceptor: TlsAcceptor,
    bulk: Arc<Bulk>,
) -> Result<()> {
    let mut tls = timed(acceptor.accept(tcp), "TLS handshake").await?;
    let (head, _rest) = read_head(&mut tls).await?;
    let request_line = head.lines().next().unwrap_or_default();
    debug!("endpoint: {peer}: {request_line}");
    let mut parts = request_line.split(' ');
    let (method, path) = (parts.next(), parts.next());
    match (method, path) {
        (Some("GET"), Some("/hello")) => {
            let body = hello_body(&tls, peer);
            respond(&mut tls, "200 OK", "text/plain", body.len() as u64).await?;
            timed(tls.write_all(body.as_bytes()), "writing the response").await?;
        }
        (Some("GET"), Some("/bulk")) => {
            respond(&mut tls, "200 OK", "application/octet-stream", bulk.len()).await?;
            for chunk in bulk.chunks() {
                timed(tls.write_all(chunk), "writing the bulk body").await?;
            }
        }
        (Some(_), Some(_)) => {
            let body = "not found\n";
            respond(&mut tls, "404 Not Found", "text/plain", body.len() as u64).await?;
            timed(tls.write_all(body.as_bytes()), "writing the response").await?;
        }
        _ => bail!("malformed request line {request_line:?}"),
    }
    timed(tls.shutdown(), "closing TLS").await?;
    Ok(())
}

/// What the endpoint saw of this caller.
fn hello_body(tls: &TlsStream<TcpStream>, peer: SocketAddr) -> String {
    let conn = tls.get_ref().1;
    let sni = conn.server_name().unwrap_or("(none)");
    let version = conn
        .protocol_version()
        .and_then(|v| v.as_str())
        .unwrap_or("?");
    format!("hello from the snitun demo endpoint\ncaller: {peer}\nsni: {sni}\ntls: {version}\n")
}

async fn respond<S: AsyncWrite + Unpin>(
    stream: &mut S,
    status: &str,
    content_type: &str,
    length: u64,
) -> Result<()> {
    let head = format!(
        "HTTP/1.1 {status}\r\nContent-Type: {content_type}\r\nContent-Length: {length}\r\nConnection: close\r\n\r\n"
    );
    timed(
        stream.write_all(head.as_bytes()),
        "writing the response head",
    )
    .await
}

/// Read up to the blank line ending an HTTP head. Returns the head as text
/// and the bytes read past it (the start of a body).
async fn read_head<S: AsyncRead + Unpin>(stream: &mut S) -> Result<(String, Vec<u8>)> {
    let mut buf = Vec::with_capacity(1024);
    let mut chunk = [0u8; 4096];
    loop {
        let n = timed(stream.read(&mut chunk), "reading an HTTP head").await?;
        if n == 0 {
            bail!(
                "connection closed before a complete HTTP head ({} bytes)",
                buf.len()
            );
        }
        buf.extend_from_slice(chunk.get(..n).unwrap_or_default());
        if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            let rest = buf.split_off(end + 4);
            let head = String::from_utf8(buf).context("HTTP head is not UTF-8")?;
            return Ok((head, rest));
        }
        if buf.len() > MAX_HEAD {
            bail!("HTTP head longer than {MAX_HEAD} bytes");
        }
    }
}

/// A response's status line and headers.
pub struct ResponseHead {
    /// Status code.
    pub status: u16,
    /// The status line, e.g. `HTTP/1.1 200 OK`.
    pub status_line: String,
    /// `Content-Length`.
    pub content_length: u64,
}

/// Send `GET path` and read the response, feeding the body to `sink` as it
/// arrives. Returns the head; the body is exactly `Content-Length` bytes,
/// or this fails.
pub async fn get<S, F>(stream: &mut S, host: &str, path: &str, mut sink: F) -> Result<ResponseHead>
where
    S: AsyncRead + AsyncWrite + Unpin,
    F: FnMut(&[u8]),
{
    let (head, mut body) = request(stream, host, path).await?;
    while let Some(chunk) = body.next_chunk(stream).await? {
        sink(&chunk);
    }
    Ok(head)
}

/// Send `GET path` and read the response head. The body follows from
/// [`Body::next_chunk`].
pub async fn request<S>(stream: &mut S, host: &str, path: &str) -> Result<(ResponseHead, Body)>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let request = format!(
        "GET {path} HTTP/1.1\r\nHost: {host}\r\nUser-Agent: snitun-demo\r\nConnection: close\r\n\r\n"
    );
    timed(stream.write_all(request.as_bytes()), "sending the request").await?;
    timed(stream.flush(), "sending the request").await?;

    let (head, rest) = read_head(stream).await?;
    let mut lines = head.lines();
    let status_line = lines.next().unwrap_or_default().to_string();
    let status = status_line
        .split(' ')
        .nth(1)
        .and_then(|code| code.parse::<u16>().ok())
        .context(format!("malformed status line {status_line:?}"))?;
    let content_length = lines
        .filter_map(|line| line.split_once(':'))
        .find(|(name, _)| name.trim().eq_ignore_ascii_case("content-length"))
        .and_then(|(_, value)| value.trim().parse::<u64>().ok())
        .context("response without a Content-Length")?;
    if rest.len() as u64 > content_length {
        bail!("response body longer than its Content-Length {content_length}");
    }
    let head = ResponseHead {
        status,
        status_line,
        content_length,
    };
    let body = Body {
        first: Some(rest),
        received: 0,
        content_length,
    };
    Ok((head, body))
}

/// The body of a response, read in chunks up to its `Content-Length`.
pub struct Body {
    /// Bytes that arrived with the head, not yet handed out.
    first: Option<Vec<u8>>,
    received: u64,
    content_length: u64,
}

impl Body {
    /// The next piece of the body (at most 256 KiB), `None` once all of it
    /// has been read. Fails if the stream ends early or sends too much.
    pub async fn next_chunk<S: AsyncRead + Unpin>(
        &mut self,
        stream: &mut S,
    ) -> Result<Option<Vec<u8>>> {
        if let Some(first) = self.first.take()
            && !first.is_empty()
        {
            self.received += first.len() as u64;
            return Ok(Some(first));
        }
        if self.received >= self.content_length {
            return Ok(None);
        }
        let mut buf = vec![0u8; CHUNK];
        let n = timed(stream.read(&mut buf), "reading the response body").await?;
        if n == 0 {
            bail!(
                "connection closed after {} of {} body bytes",
                self.received,
                self.content_length
            );
        }
        self.received += n as u64;
        if self.received > self.content_length {
            bail!(
                "response body longer than its Content-Length {}",
                self.content_length
            );
        }
        buf.truncate(n);
        Ok(Some(buf))
    }
}

/// Await an I/O step, failing after [`IO_TIMEOUT`].
async fn timed<T, E, F>(step: F, what: &str) -> Result<T>
where
    F: Future<Output = std::result::Result<T, E>>,
    E: Into<Failure>,
{
    match tokio::time::timeout(IO_TIMEOUT, step).await {
        Ok(result) => result.context(what),
        Err(_) => bail!("{what}: no progress for {} s", IO_TIMEOUT.as_secs()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tls::DemoPki;
    use tokio_rustls::TlsConnector;

    #[tokio::test]
    async fn direct_https_round_trip() {
        let pki = DemoPki::generate("demo.snitun.localhost").unwrap();
        let bulk = Arc::new(Bulk::new(3 * BLOCK as u64 + 12345));
        let endpoint = Endpoint::start(
            TlsAcceptor::from(pki.server_config().unwrap()),
            Arc::clone(&bulk),
        )
        .await
        .unwrap();
        let connector = TlsConnector::from(pki.client_config().unwrap());

        let tcp = TcpStream::connect(endpoint.addr).await.unwrap();
        let mut tls = connector
            .connect(pki.server_name().unwrap(), tcp)
            .await
            .unwrap();
        let mut body = Vec::new();
        let head = get(&mut tls, "demo.snitun.localhost", "/hello", |b| {
            body.extend_from_slice(b)
        })
        .await
        .unwrap();
        assert_eq!(head.status, 200);
        let body = String::from_utf8(body).unwrap();
        assert!(body.contains("caller: 127.0.0.1:"), "{body}");
        assert!(body.contains("sni: demo.snitun.localhost"), "{body}");

        let tcp = TcpStream::connect(endpoint.addr).await.unwrap();
        let mut tls = connector
            .connect(pki.server_name().unwrap(), tcp)
            .await
            .unwrap();
        let mut hasher = Sha256::new();
        let head = get(&mut tls, "demo.snitun.localhost", "/bulk", |b| {
            hasher.update(b)
        })
        .await
        .unwrap();
        assert_eq!(head.content_length, bulk.len());
        assert_eq!(<[u8; 32]>::from(hasher.finalize()), bulk.sha256());

        // A name the certificate does not cover fails verification.
        let tcp = TcpStream::connect(endpoint.addr).await.unwrap();
        let other = rustls::pki_types::ServerName::try_from("other.localhost").unwrap();
        assert!(connector.connect(other, tcp).await.is_err());
        endpoint.stop();
    }
}
