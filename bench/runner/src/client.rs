//! Minimal HTTP/1.1 clients: blocking (admin calls) and async (load).
//! One connection per request (`Connection: close`); a response is complete
//! at its Content-Length or last chunk, not at the close (Envoy may keep a
//! connection with a local reply open for its delayed-close timeout).

use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};

#[derive(Debug, Clone, Default)]
pub struct Reply {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Reply {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

fn request_bytes(method: &str, path: &str, body: &[u8]) -> Vec<u8> {
    let mut out = format!("{method} {path} HTTP/1.1\r\nHost: bench\r\nConnection: close\r\n");
    if !body.is_empty() || method != "GET" {
        out.push_str(&format!(
            "Content-Type: application/json\r\nContent-Length: {}\r\n",
            body.len()
        ));
    }
    out.push_str("\r\n");
    let mut v = out.into_bytes();
    v.extend_from_slice(body);
    v
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

/// `Some(reply)` once `raw` holds a whole response; `eof` accepts a body
/// that ends at the close.
pub fn parse(raw: &[u8], eof: bool) -> Option<Reply> {
    let end = find(raw, b"\r\n\r\n")?;
    let head = std::str::from_utf8(&raw[..end]).ok()?;
    let mut lines = head.split("\r\n");
    let status = lines.next()?.split(' ').nth(1)?.parse().ok()?;
    let headers: Vec<(String, String)> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_string(), v.trim().to_string()))
        .collect();
    let mut r = Reply {
        status,
        headers,
        body: Vec::new(),
    };
    let rest = &raw[end + 4..];
    if r.header("transfer-encoding")
        .is_some_and(|t| t.to_ascii_lowercase().contains("chunked"))
    {
        if !rest.ends_with(b"0\r\n\r\n") && !eof {
            return None;
        }
        r.body = rest.to_vec(); // chunk framing left in; nothing reads it
        return Some(r);
    }
    match r
        .header("content-length")
        .and_then(|l| l.parse::<usize>().ok())
    {
        Some(len) if rest.len() >= len => {
            r.body = rest[..len].to_vec();
            Some(r)
        }
        Some(_) if !eof => None,
        None if !eof && status != 204 && status != 304 => None,
        _ => {
            r.body = rest.to_vec();
            Some(r)
        }
    }
}

/// Blocking request with a timeout on every step.
pub fn request(
    addr: SocketAddr,
    method: &str,
    path: &str,
    body: &[u8],
    timeout: Duration,
) -> io::Result<Reply> {
    let mut s = TcpStream::connect_timeout(&addr, timeout)?;
    s.set_read_timeout(Some(timeout))?;
    s.set_write_timeout(Some(timeout))?;
    s.write_all(&request_bytes(method, path, body))?;
    let mut raw = Vec::new();
    let mut buf = [0u8; 16384];
    loop {
        let n = s.read(&mut buf)?;
        if n == 0 {
            return parse(&raw, true).ok_or_else(|| io::Error::other("incomplete response"));
        }
        raw.extend_from_slice(&buf[..n]);
        if let Some(r) = parse(&raw, false) {
            return Ok(r);
        }
    }
}

pub fn get(addr: SocketAddr, path: &str, timeout: Duration) -> io::Result<Reply> {
    request(addr, "GET", path, &[], timeout)
}

/// Async `GET path`; Err carries a short reason (connect, reset, timeout).
pub async fn get_async(addr: SocketAddr, path: &str) -> Result<Reply, String> {
    let mut s = tokio::net::TcpStream::connect(addr)
        .await
        .map_err(|e| format!("connect: {e}"))?;
    let _ = s.set_nodelay(true);
    s.write_all(&request_bytes("GET", path, &[]))
        .await
        .map_err(|e| format!("write: {e}"))?;
    let mut raw = Vec::with_capacity(512);
    let mut buf = [0u8; 4096];
    loop {
        let n = s.read(&mut buf).await.map_err(|e| format!("read: {e}"))?;
        if n == 0 {
            return parse(&raw, true).ok_or_else(|| "closed without a response".to_string());
        }
        raw.extend_from_slice(&buf[..n]);
        if let Some(r) = parse(&raw, false) {
            return Ok(r);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn complete_at_content_length_not_at_close() {
        let raw =
            b"HTTP/1.1 503 Service Unavailable\r\nretry-after: 3\r\ncontent-length: 2\r\n\r\nhi";
        let r = parse(raw, false).expect("complete");
        assert_eq!((r.status, r.header("Retry-After")), (503, Some("3")));
        assert!(parse(&raw[..raw.len() - 1], false).is_none());
        assert!(parse(b"HTTP/1.1 200 OK\r\n\r\nabc", false).is_none());
        assert_eq!(
            parse(b"HTTP/1.1 200 OK\r\n\r\nabc", true).map(|r| r.body),
            Some(b"abc".to_vec())
        );
    }
}
