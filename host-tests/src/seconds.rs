//! Client traffic through an [`EdsFleet`], one second at a time, and what
//! each second did: the clients' view, the attempts each host received,
//! Envoy's connect failures to cluster `demo` (attempts that reached no
//! host) and meshguard's `steered` and `requests` counters.

use crate::fleet::EdsFleet;
use crate::traffic::{paced_second, Tally};

const CONNECT_FAILURES: &str = "cluster.demo.upstream_cx_connect_fail";

/// One second of traffic (or several, merged).
#[derive(Debug, Clone, Default)]
pub struct Second {
    /// Client view: statuses and which host answered.
    pub tally: Tally,
    /// Requests each host received (attempts), by host index.
    pub got: Vec<u64>,
    /// Envoy's connect failures to `demo` (attempts on a refusing host).
    pub connect_fail: u64,
    /// meshguard's `steered` and `requests` counters of `demo` (deltas).
    pub steered: u64,
    pub seen: u64,
}

impl Second {
    pub fn merge(&mut self, o: &Second) {
        self.tally.merge(&o.tally);
        if self.got.len() < o.got.len() {
            self.got.resize(o.got.len(), 0);
        }
        for (a, b) in self.got.iter_mut().zip(&o.got) {
            *a += b;
        }
        self.connect_fail += o.connect_fail;
        self.steered += o.steered;
        self.seen += o.seen;
    }

    /// Requests host `i` received.
    pub fn got(&self, i: usize) -> u64 {
        self.got.get(i).copied().unwrap_or(0)
    }

    /// The share of the requests meshguard counted that it steered.
    pub fn steered_share(&self) -> f64 {
        if self.seen == 0 {
            0.0
        } else {
            self.steered as f64 / self.seen as f64
        }
    }
}

/// The seconds merged into one.
pub fn total(seconds: &[Second]) -> Second {
    seconds.iter().fold(Second::default(), |mut acc, s| {
        acc.merge(s);
        acc
    })
}

/// Sends `rate` requests a second to the fleet's listener and measures
/// each second against the counters at its start.
pub struct Seconds<'a> {
    fleet: &'a EdsFleet,
    rate: u32,
    got: Vec<u64>,
    connect_fail: u64,
    steered: u64,
    seen: u64,
}

impl<'a> Seconds<'a> {
    pub fn new(fleet: &'a EdsFleet, rate: u32) -> Self {
        Seconds {
            fleet,
            rate,
            got: fleet.requests(),
            connect_fail: fleet.envoy_stat(CONNECT_FAILURES),
            steered: fleet.meshguard_counter("steered"),
            seen: fleet.meshguard_counter("requests"),
        }
    }

    /// The next second of traffic.
    pub fn next_second(&mut self) -> Second {
        let tally = paced_second(self.fleet.listener(), self.rate);
        let got = self.fleet.requests();
        let connect_fail = self.fleet.envoy_stat(CONNECT_FAILURES);
        let steered = self.fleet.meshguard_counter("steered");
        let seen = self.fleet.meshguard_counter("requests");
        let sec = Second {
            tally,
            got: got
                .iter()
                .zip(self.got.iter().chain(std::iter::repeat(&0)))
                .map(|(now, before)| now.saturating_sub(*before))
                .collect(),
            connect_fail: connect_fail.saturating_sub(self.connect_fail),
            steered: steered.saturating_sub(self.steered),
            seen: seen.saturating_sub(self.seen),
        };
        self.got = got;
        self.connect_fail = connect_fail;
        self.steered = steered;
        self.seen = seen;
        sec
    }
}
