//! What an mg-upstream server does with requests, as set through its admin port.

use serde::{Deserialize, Serialize};

/// The behaviour of an mg-upstream data port (`PUT /behaviour` body).
///
/// Every field is optional on the wire and a missing one means its default,
/// so `{}` makes the server healthy again. A *fault* is one of `reset`,
/// `cutOff`, `grpcStatus` or `status` (checked in that order); `errorPercent` of the
/// requests get the fault, spread evenly (see [`ErrorSpreader`]).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default, deny_unknown_fields)]
pub struct Behaviour {
    /// HTTP status of faulty answers: 100-999, which is what an HTTP/1 status
    /// line can carry (Envoy passes 600-999 on to the client).
    pub status: Option<u16>,
    /// Share of requests that get the fault; defaults to 100 when a fault is
    /// configured, else 0.
    pub error_percent: Option<u8>,
    /// Added before every answer (faulty or not).
    pub latency_ms: u64,
    /// Faulty requests get their connection closed without an answer.
    pub reset: bool,
    /// Faulty requests get a 200 and the start of its body, then their
    /// connection is dropped (HTTP/2: the stream reset): a failure after the
    /// response started, which Envoy logs as `upstream_reset_after_response_started`.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub cut_off: bool,
    /// Stop listening on the data port and drop open connections, as if the
    /// host had crashed; connections are refused until this is false again.
    pub refuse: bool,
    /// Answer gRPC-style: 200, `content-type: application/grpc` and a
    /// `grpc-status` trailer: this code on faulty requests, 0 on the others.
    pub grpc_status: Option<u32>,
    /// Fault placement: false (default) spreads faults evenly
    /// ([`ErrorSpreader`]); true draws each request independently with
    /// probability `errorPercent` (seeded per server, so runs repeat), which
    /// gives the runs of consecutive faults real grey failures have.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub random_errors: bool,
    /// Overload model: when the server received more than this many requests
    /// in the last second, `overloadErrorPercent` of the requests fail
    /// (with `status`, or 503 when no status is set). None: no capacity.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub capacity_rps: Option<u32>,
    /// Share of requests that fail while over capacity (default 100).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub overload_error_percent: Option<u8>,
    /// Headers added to every answer (faulty or not), for example a
    /// steering header an application should never send.
    #[serde(skip_serializing_if = "std::collections::BTreeMap::is_empty")]
    pub headers: std::collections::BTreeMap<String, String>,
}

impl Behaviour {
    /// Healthy: every request answered 200 at once.
    pub fn healthy() -> Self {
        Self::default()
    }

    /// Every request answered with `status`.
    pub fn status(status: u16) -> Self {
        Self {
            status: Some(status),
            ..Self::default()
        }
    }

    /// `percent` of the requests answered with `status`, the rest 200.
    pub fn grey(status: u16, percent: u8) -> Self {
        Self {
            status: Some(status),
            error_percent: Some(percent),
            ..Self::default()
        }
    }

    /// Every answer delayed by `ms` milliseconds.
    pub fn slow(ms: u64) -> Self {
        Self {
            latency_ms: ms,
            ..Self::default()
        }
    }

    pub fn has_fault(&self) -> bool {
        self.reset || self.cut_off || self.grpc_status.is_some() || self.status.is_some()
    }

    /// The share of requests that get the fault, after defaults.
    pub fn effective_error_percent(&self) -> u8 {
        match self.error_percent {
            Some(p) => p,
            None if self.has_fault() => 100,
            None => 0,
        }
    }

    /// Checks values a server cannot honour; the message is shown to the caller.
    pub fn validate(&self) -> Result<(), String> {
        if let Some(s) = self.status {
            if !(100..=999).contains(&s) {
                return Err(format!("status {s} is not a 3-digit HTTP status (100-999)"));
            }
        }
        if let Some(p) = self.error_percent {
            if p > 100 {
                return Err(format!("errorPercent {p} is above 100"));
            }
        }
        if let Some(p) = self.overload_error_percent {
            if p > 100 {
                return Err(format!("overloadErrorPercent {p} is above 100"));
            }
        }
        if self.capacity_rps == Some(0) {
            return Err("capacityRps must be above 0".to_string());
        }
        if let Some(g) = self.grpc_status {
            if g > 16 {
                return Err(format!("grpcStatus {g} is not a gRPC code (0-16)"));
            }
        }
        Ok(())
    }

    /// The same behaviour with `errorPercent` spelled out, as the server reports it.
    pub fn normalized(mut self) -> Self {
        self.error_percent = Some(self.effective_error_percent());
        self
    }
}

/// Decides which requests get the fault so that exactly `percent` of every
/// 100 consecutive requests do, evenly spread (Bresenham-style). Tests then
/// see the same sequence on every run instead of a random one.
#[derive(Debug, Clone, Default)]
pub struct ErrorSpreader {
    percent: u64,
    seen: u64,
}

impl ErrorSpreader {
    pub fn new(percent: u8) -> Self {
        Self {
            percent: u64::from(percent.min(100)),
            seen: 0,
        }
    }

    /// True when this request should get the fault.
    pub fn next_is_fault(&mut self) -> bool {
        let before = self.seen * self.percent / 100;
        self.seen += 1;
        let after = self.seen * self.percent / 100;
        after > before
    }
}

/// Requests received in the last second, in ten 100 ms buckets: the
/// "recent request rate" of [`Behaviour::capacity_rps`].
#[derive(Debug, Clone, Default)]
pub struct RateMeter {
    buckets: [u32; 10],
    /// Index (in 100 ms units since the meter's epoch) of the newest bucket.
    newest: u64,
}

impl RateMeter {
    /// Counts one request at `now_ms` (any monotonic clock in ms) and
    /// returns the requests of the last second, this one included.
    pub fn record(&mut self, now_ms: u64) -> u32 {
        let slot = now_ms / 100;
        if slot > self.newest {
            let stale = (slot - self.newest).min(10);
            for i in 1..=stale {
                self.buckets[((self.newest + i) % 10) as usize] = 0;
            }
            self.newest = slot;
        }
        let i = (self.newest % 10) as usize;
        self.buckets[i] = self.buckets[i].saturating_add(1);
        self.buckets.iter().sum()
    }
}

/// A small seeded PRNG (xorshift64*) for [`Behaviour::random_errors`].
#[derive(Debug, Clone)]
pub struct FaultDice(u64);

impl FaultDice {
    pub fn new(seed: u64) -> Self {
        Self(seed | 1)
    }

    /// True with probability `percent`/100.
    pub fn roll(&mut self, percent: u8) -> bool {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        (x.wrapping_mul(0x2545_F491_4F6C_DD1D) >> 32) % 100 < u64::from(percent)
    }
}

/// `GET /stats` of an mg-upstream server.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Stats {
    pub name: String,
    /// Requests received on the data port since start or the last reset.
    pub requests: u64,
    /// Of those, how many got the fault.
    pub errors: u64,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spreader_hits_exact_share_evenly() {
        for p in [0u8, 1, 10, 35, 50, 99, 100] {
            let mut s = ErrorSpreader::new(p);
            let faults: Vec<bool> = (0..200).map(|_| s.next_is_fault()).collect();
            assert_eq!(
                faults.iter().filter(|f| **f).count(),
                2 * p as usize,
                "p={p}"
            );
            // Evenly spread: any 20 consecutive requests hold p/5 faults, +-1.
            for w in faults.windows(20) {
                let n = w.iter().filter(|f| **f).count() as i64;
                assert!((n - i64::from(p) / 5).abs() <= 1, "p={p} window has {n}");
            }
        }
    }

    #[test]
    fn rate_meter_counts_the_last_second() {
        let mut m = RateMeter::default();
        for t in 0..50 {
            m.record(1000 + t * 10); // 100 requests/s for 0.5 s
        }
        assert_eq!(m.record(1500), 51);
        assert_eq!(m.record(2450), 2, "buckets older than 1 s are dropped");
        assert_eq!(m.record(9000), 1);
        let mut d = FaultDice::new(7);
        let n = (0..10_000).filter(|_| d.roll(38)).count();
        assert!((3_500..4_100).contains(&n), "{n}");
    }

    #[test]
    fn missing_fields_mean_defaults() {
        let b: Behaviour = serde_json::from_str(r#"{"status":503}"#).expect("parse");
        assert_eq!(b.effective_error_percent(), 100);
        let b: Behaviour = serde_json::from_str("{}").expect("parse");
        assert_eq!(b, Behaviour::healthy());
        assert_eq!(b.effective_error_percent(), 0);
        let b: Behaviour =
            serde_json::from_str(r#"{"status":503,"errorPercent":35,"latencyMs":200,"reset":false,"refuse":false,"grpcStatus":null}"#)
                .expect("parse");
        assert_eq!(
            b,
            Behaviour {
                latency_ms: 200,
                ..Behaviour::grey(503, 35)
            }
        );
        assert!(
            serde_json::from_str::<Behaviour>(r#"{"statu":503}"#).is_err(),
            "typos must be rejected"
        );
        assert!(Behaviour::status(700).validate().is_ok());
        assert!(Behaviour::status(1000).validate().is_err());
        assert!(Behaviour::status(99).validate().is_err());
    }
}
