//! Client traffic through Envoy, tallied by answering upstream and status.

use std::collections::BTreeMap;
use std::fmt;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use crate::http;

/// Generous: a healthy request through Envoy takes about a millisecond, and
/// a stuck one should show up as an error, not hang the test.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);

/// What one client request got.
#[derive(Debug, Clone)]
pub struct Outcome {
    /// HTTP status; 0 when the request failed below HTTP (connect, reset).
    pub status: u16,
    /// `x-upstream-name` of the answer: which mg-upstream served it (None
    /// for Envoy's own local replies).
    pub upstream: Option<String>,
    /// The `x-meshguard-upstream` value the upstream received, if any.
    pub upstream_saw_steering: Option<String>,
    pub error: Option<String>,
}

/// Sends `GET /` with `headers` to `addr`.
pub fn send_one(addr: SocketAddr, headers: &[(&str, &str)]) -> Outcome {
    send_to(addr, "/", headers)
}

/// Sends `GET path` with `headers` to `addr`.
pub fn send_to(addr: SocketAddr, path: &str, headers: &[(&str, &str)]) -> Outcome {
    match http::request(addr, "GET", path, headers, &[], REQUEST_TIMEOUT) {
        Ok(r) => Outcome {
            status: r.status,
            upstream: r.header("x-upstream-name").map(str::to_string),
            upstream_saw_steering: r
                .header("x-upstream-saw-meshguard-upstream")
                .map(str::to_string),
            error: None,
        },
        Err(e) => Outcome {
            status: 0,
            upstream: None,
            upstream_saw_steering: None,
            error: Some(e.to_string()),
        },
    }
}

/// Counts of a batch of requests.
#[derive(Debug, Clone, Default)]
pub struct Tally {
    pub total: u64,
    pub by_status: BTreeMap<u16, u64>,
    pub by_upstream: BTreeMap<String, u64>,
    /// The first few transport errors, for messages.
    pub errors: Vec<String>,
}

impl Tally {
    pub fn add(&mut self, o: &Outcome) {
        self.total += 1;
        *self.by_status.entry(o.status).or_default() += 1;
        let name = o.upstream.clone().unwrap_or_else(|| "(envoy)".to_string());
        *self.by_upstream.entry(name).or_default() += 1;
        if let Some(e) = &o.error {
            if self.errors.len() < 5 {
                self.errors.push(e.clone());
            }
        }
    }

    pub fn merge(&mut self, other: &Tally) {
        self.total += other.total;
        for (k, v) in &other.by_status {
            *self.by_status.entry(*k).or_default() += v;
        }
        for (k, v) in &other.by_upstream {
            *self.by_upstream.entry(k.clone()).or_default() += v;
        }
        for e in &other.errors {
            if self.errors.len() < 5 {
                self.errors.push(e.clone());
            }
        }
    }

    /// Answers served by upstream `name` (whatever their status).
    pub fn served_by(&self, name: &str) -> u64 {
        self.by_upstream.get(name).copied().unwrap_or(0)
    }

    /// Fraction of all requests served by `name` (0 when there were none).
    pub fn share(&self, name: &str) -> f64 {
        if self.total == 0 {
            0.0
        } else {
            self.served_by(name) as f64 / self.total as f64
        }
    }

    pub fn with_status(&self, status: u16) -> u64 {
        self.by_status.get(&status).copied().unwrap_or(0)
    }

    /// Requests that did not get a 200.
    pub fn not_ok(&self) -> u64 {
        self.total - self.with_status(200)
    }
}

impl fmt::Display for Tally {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} requests; status", self.total)?;
        for (s, n) in &self.by_status {
            write!(f, " {s}x{n}")?;
        }
        f.write_str("; served by")?;
        for (u, n) in &self.by_upstream {
            write!(f, " {u}={n} ({:.0}%)", self.share(u) * 100.0)?;
        }
        if !self.errors.is_empty() {
            write!(f, "; errors: {:?}", self.errors)?;
        }
        Ok(())
    }
}

/// Sends `n` requests back to back.
pub fn burst(addr: SocketAddr, n: u64) -> Tally {
    burst_to(addr, "/", n)
}

/// [`burst`] to `path`.
pub fn burst_to(addr: SocketAddr, path: &str, n: u64) -> Tally {
    let mut t = Tally::default();
    for _ in 0..n {
        t.add(&send_to(addr, path, &[]));
    }
    t
}

/// The value of the Prometheus sample `name{...}` (Envoy's
/// `/stats/prometheus`) whose labels include every `key="value"` of
/// `labels`, in any order.
pub fn prometheus_sample(text: &str, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    text.lines().find_map(|line| {
        let rest = line.strip_prefix(name)?.strip_prefix('{')?;
        let (set, value) = rest.rsplit_once(' ')?;
        labels
            .iter()
            .all(|(k, v)| set.contains(&format!("{k}=\"{v}\"")))
            .then(|| value.parse().ok())
            .flatten()
    })
}

/// Sends `rate` requests per second, evenly spaced, for one second; returns
/// their tally. If requests are slower than the pace the bucket runs long
/// rather than dropping requests.
pub fn paced_second(addr: SocketAddr, rate: u32) -> Tally {
    let start = Instant::now();
    let gap = Duration::from_secs(1) / rate.max(1);
    let mut t = Tally::default();
    for i in 0..rate {
        let due = start + gap * i;
        let now = Instant::now();
        if due > now {
            std::thread::sleep(due - now);
        }
        t.add(&send_one(addr, &[]));
    }
    let end = start + Duration::from_secs(1);
    let now = Instant::now();
    if end > now {
        std::thread::sleep(end - now);
    }
    t
}
