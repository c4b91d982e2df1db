//! The one HTTP/1.1 client of the harnesses, the bench and mg-load: a
//! blocking [`request`] over `std::net::TcpStream`, an async [`get_async`]
//! over tokio's, and [`parse_response`], which both (and the bench's
//! keep-alive loop) use to tell when a response is complete.
//!
//! One connection per request (`Connection: close`): through Envoy that
//! spreads requests over its worker threads the way independent clients do,
//! and it keeps the client trivially correct. Handles Content-Length,
//! chunked and read-to-EOF bodies; that is all Envoy and mg-upstream send.
//! A response is complete at its Content-Length or last chunk, not at the
//! close: Envoy may hold a connection whose request it answered early (a
//! filter's local reply) open for its `delayed_close_timeout` (1 s) before
//! closing it.

use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// A response longer than this is an error, not a reason to read forever.
pub const MAX_RESPONSE_BYTES: usize = 64 << 20;

/// A complete HTTP response.
#[derive(Debug, Clone)]
pub struct Response {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Response {
    /// First value of header `name` (case-insensitive).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    pub fn body_text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

/// The request's bytes: `Host` is `addr`, `Connection: close`, and a
/// Content-Length when there is a body or the method takes one.
fn request_bytes(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> Vec<u8> {
    let mut head = format!("{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n");
    for (k, v) in headers {
        head.push_str(&format!("{k}: {v}\r\n"));
    }
    if !body.is_empty() || matches!(method, "POST" | "PUT" | "PATCH") {
        head.push_str(&format!("Content-Length: {}\r\n", body.len()));
    }
    head.push_str("\r\n");
    let mut out = head.into_bytes();
    out.extend_from_slice(body);
    out
}

/// Sends one request and reads the whole response; `timeout` bounds connect,
/// each read and each write.
pub fn request(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
    timeout: Duration,
) -> io::Result<Response> {
    let mut stream = TcpStream::connect_timeout(&addr, timeout)?;
    stream.set_read_timeout(Some(timeout))?;
    stream.set_write_timeout(Some(timeout))?;
    let _ = stream.set_nodelay(true);
    stream.write_all(&request_bytes(addr, method, path, headers, body))?;
    let mut raw = Vec::with_capacity(1024);
    let mut buf = [0u8; 8192];
    loop {
        let n = match stream.read(&mut buf) {
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        if let Some(r) = take(&mut raw, &buf[..n])? {
            return Ok(r);
        }
    }
}

/// `GET path`, no extra headers.
pub fn get(addr: SocketAddr, path: &str, timeout: Duration) -> io::Result<Response> {
    request(addr, "GET", path, &[], &[], timeout)
}

/// `GET path` on tokio (no timeout of its own: wrap it in
/// `tokio::time::timeout`).
pub async fn get_async(addr: SocketAddr, path: &str) -> io::Result<Response> {
    let mut stream = tokio::net::TcpStream::connect(addr).await?;
    let _ = stream.set_nodelay(true);
    stream
        .write_all(&request_bytes(addr, "GET", path, &[], &[]))
        .await?;
    let mut raw = Vec::with_capacity(1024);
    let mut buf = [0u8; 4096];
    loop {
        let n = stream.read(&mut buf).await?;
        if let Some(r) = take(&mut raw, &buf[..n])? {
            return Ok(r);
        }
    }
}

/// One read's bytes (`read` empty: the server closed) added to `raw`; the
/// response once it is complete.
fn take(raw: &mut Vec<u8>, read: &[u8]) -> io::Result<Option<Response>> {
    raw.extend_from_slice(read);
    if raw.len() > MAX_RESPONSE_BYTES {
        return Err(invalid(format!("response over {MAX_RESPONSE_BYTES} bytes")));
    }
    parse_response(raw, read.is_empty())
}

fn invalid(msg: impl Into<String>) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, msg.into())
}

/// The response in `raw` once it is complete (by Content-Length, the last
/// chunk, or a status without a body); None while more is to come.
/// `at_eof`: the server has closed, so a body without a length ends here
/// and a short one is an error.
pub fn parse_response(raw: &[u8], at_eof: bool) -> io::Result<Option<Response>> {
    let Some(end) = find(raw, b"\r\n\r\n") else {
        return match (at_eof, raw.is_empty()) {
            (false, _) => Ok(None),
            (true, true) => Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "connection closed without a response",
            )),
            (true, false) => Err(invalid("response head not terminated")),
        };
    };
    let head =
        std::str::from_utf8(&raw[..end]).map_err(|_| invalid("response head is not UTF-8"))?;
    let mut lines = head.split("\r\n");
    let status_line = lines.next().unwrap_or_default();
    let status = status_line
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse::<u16>().ok())
        .ok_or_else(|| invalid(format!("bad status line {status_line:?}")))?;
    let headers: Vec<(String, String)> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_string(), v.trim().to_string()))
        .collect();
    let rest = &raw[end + 4..];
    let mut resp = Response {
        status,
        headers,
        body: Vec::new(),
    };
    if resp
        .header("transfer-encoding")
        .is_some_and(|te| te.to_ascii_lowercase().contains("chunked"))
    {
        // The last chunk can look complete before it is: only a body that
        // ends like one and dechunks is done (at the close, whatever is in).
        let body = match dechunk(rest) {
            Ok(body) if rest.ends_with(b"0\r\n\r\n") || at_eof => body,
            Err(e) if at_eof => return Err(e),
            _ => return Ok(None),
        };
        resp.body = body;
        return Ok(Some(resp));
    }
    match resp
        .header("content-length")
        .and_then(|l| l.parse::<usize>().ok())
    {
        Some(len) => match rest.get(..len) {
            Some(body) => resp.body = body.to_vec(),
            None if at_eof => return Err(invalid("body shorter than Content-Length")),
            None => return Ok(None),
        },
        // No body by definition.
        None if matches!(status, 100..=199 | 204 | 304) => {}
        None if at_eof => resp.body = rest.to_vec(),
        None => return Ok(None),
    }
    Ok(Some(resp))
}

fn dechunk(mut data: &[u8]) -> io::Result<Vec<u8>> {
    let mut body = Vec::new();
    loop {
        let eol = find(data, b"\r\n").ok_or_else(|| invalid("chunk size line not terminated"))?;
        let size_text = std::str::from_utf8(&data[..eol]).map_err(|_| invalid("bad chunk size"))?;
        let size_text = size_text.split(';').next().unwrap_or_default().trim();
        let size = usize::from_str_radix(size_text, 16).map_err(|_| invalid("bad chunk size"))?;
        data = &data[eol + 2..];
        if size == 0 {
            // Trailers (if any) follow; nothing here needs them.
            return Ok(body);
        }
        let chunk = data.get(..size).ok_or_else(|| invalid("truncated chunk"))?;
        body.extend_from_slice(chunk);
        data = data
            .get(size + 2..)
            .ok_or_else(|| invalid("truncated chunk"))?;
    }
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn done(raw: &[u8], at_eof: bool) -> Option<Response> {
        parse_response(raw, at_eof).expect("well-formed")
    }

    #[test]
    fn parses_length_and_chunked_bodies() {
        let r = done(
            b"HTTP/1.1 503 Service Unavailable\r\nContent-Length: 2\r\nX-A: b\r\n\r\nhi",
            false,
        )
        .expect("complete");
        assert_eq!(
            (r.status, r.body.as_slice(), r.header("x-a")),
            (503, &b"hi"[..], Some("b"))
        );
        let chunked = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n2\r\nde\r\n0\r\n\r\n";
        assert_eq!(done(chunked, false).expect("complete").body, b"abcde");
        assert!(done(&chunked[..chunked.len() - 2], false).is_none());
        assert!(parse_response(&chunked[..chunked.len() - 9], true).is_err());
        assert!(parse_response(b"", true).is_err());
        assert!(parse_response(b"HTTP/1.1 200 OK\r\n", true).is_err());
        assert!(parse_response(b"HTTP/1.1 2x0 OK\r\n\r\n", false).is_err());
    }

    /// Complete at the Content-Length or a bodiless status, not at the
    /// close (Envoy may keep a local reply's connection open for a second).
    #[test]
    fn complete_at_content_length_not_at_close() {
        let raw =
            b"HTTP/1.1 503 Service Unavailable\r\nretry-after: 3\r\nX-Upstream-Name: u2\r\ncontent-length: 2\r\n\r\nhi";
        let r = done(raw, false).expect("complete");
        assert_eq!(
            (
                r.status,
                r.header("Retry-After"),
                r.header("x-upstream-name")
            ),
            (503, Some("3"), Some("u2"))
        );
        assert!(done(&raw[..raw.len() - 1], false).is_none());
        assert!(parse_response(&raw[..raw.len() - 1], true).is_err());
        assert!(done(b"HTTP/1.1 200 OK\r\n\r\nabc", false).is_none());
        assert_eq!(
            done(b"HTTP/1.1 200 OK\r\n\r\nabc", true).map(|r| r.body),
            Some(b"abc".to_vec())
        );
        assert!(done(b"HTTP/1.1 204 No Content\r\n\r\n", false).is_some());
    }

    #[test]
    fn a_read_at_the_close_ends_the_response() {
        let mut raw = Vec::new();
        assert!(take(&mut raw, b"HTTP/1.1 200 OK\r\n\r\nab")
            .expect("ok")
            .is_none());
        let r = take(&mut raw, b"")
            .expect("ok")
            .expect("complete at the close");
        assert_eq!(r.body, b"ab");
        let mut raw = Vec::new();
        assert!(
            take(&mut raw, b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nab")
                .expect("ok")
                .is_none()
        );
        assert!(take(&mut raw, b"").is_err());
    }
}
