//! Driving mg-upstream servers from tests: start them, change their
//! behaviour, read their counters.
//!
//! - [`Upstream`] / [`UpstreamAdmin`]: one process, one host (`--listen`).
//! - [`Fleet`] / [`FleetAdmin`]: one process serving many hosts
//!   (`--hosts N`), each on its own loopback address and with its own
//!   behaviour and counters, for large services and EDS membership changes:
//!
//! ```text
//! let fleet = Fleet::start(bin, "h", 200, dir)?;   // h-0 .. h-199
//! fleet.hosts[7].address;                           // 127.0.1.8:PORT
//! fleet.admin.set_behaviour(7, &Behaviour::status(503))?;
//! let per_host: Vec<HostStats> = fleet.admin.stats()?;
//! fleet.admin.reset_stats()?;
//! ```

use std::fs::File;
use std::io;
use std::net::{Ipv4Addr, SocketAddr};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use crate::behaviour::{Behaviour, Stats};
use crate::http;
use crate::process::ChildGuard;
use serde::{Deserialize, Serialize};

const ADMIN_TIMEOUT: Duration = Duration::from_secs(5);

/// The first stdout line of mg-upstream, once both ports are bound.
pub const READY_PREFIX: &str = "mg-upstream ready";

/// Client for an mg-upstream admin port.
#[derive(Debug, Clone, Copy)]
pub struct UpstreamAdmin {
    pub admin: SocketAddr,
}

impl UpstreamAdmin {
    pub fn new(admin: SocketAddr) -> Self {
        Self { admin }
    }

    /// Replaces the behaviour; returns what the server now does.
    pub fn set_behaviour(&self, b: &Behaviour) -> io::Result<Behaviour> {
        let body = serde_json::to_vec(b).map_err(io::Error::other)?;
        let r = http::request(
            self.admin,
            "PUT",
            "/behaviour",
            &[("content-type", "application/json")],
            &body,
            ADMIN_TIMEOUT,
        )?;
        self.parse(r)
    }

    pub fn behaviour(&self) -> io::Result<Behaviour> {
        self.parse(http::get(self.admin, "/behaviour", ADMIN_TIMEOUT)?)
    }

    pub fn stats(&self) -> io::Result<Stats> {
        self.parse(http::get(self.admin, "/stats", ADMIN_TIMEOUT)?)
    }

    pub fn reset_stats(&self) -> io::Result<Stats> {
        let r = http::request(self.admin, "POST", "/stats/reset", &[], &[], ADMIN_TIMEOUT)?;
        self.parse(r)
    }

    fn parse<T: serde::de::DeserializeOwned>(&self, r: http::Response) -> io::Result<T> {
        if r.status != 200 {
            return Err(io::Error::other(format!(
                "mg-upstream admin {} answered {}: {}",
                self.admin,
                r.status,
                r.body_text()
            )));
        }
        serde_json::from_slice(&r.body).map_err(|e| {
            io::Error::other(format!(
                "mg-upstream admin {}: bad JSON ({e}): {}",
                self.admin,
                r.body_text()
            ))
        })
    }
}

/// A running mg-upstream process.
#[derive(Debug)]
pub struct Upstream {
    pub name: String,
    pub data: SocketAddr,
    pub admin: UpstreamAdmin,
    _child: ChildGuard,
}

impl Upstream {
    /// Starts `bin` (the mg-upstream binary) on OS-chosen loopback ports and
    /// waits for its ready line. Its stderr goes to `<log_dir>/<name>.log`.
    pub fn start(bin: &Path, name: &str, log_dir: &Path) -> io::Result<Self> {
        let log = File::create(log_dir.join(format!("{name}.log")))?;
        let mut cmd = Command::new(bin);
        cmd.args([
            "--name",
            name,
            "--listen",
            "127.0.0.1:0",
            "--admin",
            "127.0.0.1:0",
        ])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::from(log));
        let mut child = ChildGuard::spawn(name, &mut cmd, Duration::from_secs(2))?;
        let line = child.first_stdout_line(Duration::from_secs(10))?;
        let (data, admin) = parse_ready_line(&line)
            .ok_or_else(|| io::Error::other(format!("{name}: unexpected ready line {line:?}")))?;
        Ok(Self {
            name: name.to_string(),
            data,
            admin: UpstreamAdmin::new(admin),
            _child: child,
        })
    }
}

/// First host address of a [`Fleet`] unless told otherwise.
pub const FLEET_BASE: Ipv4Addr = Ipv4Addr::new(127, 0, 1, 1);
/// Last octet a fleet host address uses; the next host starts the next /24
/// at `.1` (so no `.0`, `.255` or other oddities).
pub const FLEET_LAST_OCTET: u8 = 250;

/// The address of host `i` of a fleet whose host 0 is `base`: `base`,
/// `base + 1`, .. up to `.250`, then `.1` of the next /24 (`127.0.1.250` is
/// followed by `127.0.2.1`). None when it would leave 127.0.0.0/8 or when
/// `base` itself is not a usable loopback address (last octet 1-250).
pub fn fleet_address(base: Ipv4Addr, i: usize) -> Option<Ipv4Addr> {
    let [a, b, c, d] = base.octets();
    if a != 127 || d == 0 || d > FLEET_LAST_OCTET {
        return None;
    }
    let per_net = usize::from(FLEET_LAST_OCTET);
    // Position counted from 127.0.0.1 in steps of usable addresses.
    let pos = (usize::from(b) * 256 + usize::from(c)) * per_net + usize::from(d - 1) + i;
    let net = pos / per_net;
    let last = u8::try_from(pos % per_net + 1).ok()?;
    let b = u8::try_from(net / 256).ok()?;
    let c = u8::try_from(net % 256).ok()?;
    Some(Ipv4Addr::new(127, b, c, last))
}

/// One host of a fleet (`GET /hosts` of a multi-host mg-upstream).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HostInfo {
    /// 0-based; stable for the life of the process.
    pub index: usize,
    /// `<name>-<index>`: its `x-upstream-name` and `{"upstream":..}` body.
    pub name: String,
    pub address: SocketAddr,
}

/// One host's counters (`GET /hosts/stats`, `GET /hosts/<i>/stats`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HostStats {
    pub index: usize,
    pub name: String,
    pub address: SocketAddr,
    /// Requests received since start or the last `POST /stats/reset`.
    pub requests: u64,
    /// Of those, how many got the fault.
    pub errors: u64,
}

/// Client for the admin port of a multi-host mg-upstream (`--hosts N`).
///
/// Admin interface (JSON; hosts are addressed by index):
/// - `GET /hosts`: `[HostInfo]`;
/// - `GET /hosts/stats`: `[HostStats]`, every host;
/// - `GET /hosts/<i>/stats`: one `HostStats`;
/// - `GET|PUT /hosts/<i>/behaviour`: one host's [`Behaviour`];
/// - `PUT /behaviour`: every host at once; `GET /behaviour`: host 0's;
/// - `GET /stats`: the sum over all hosts (name = the process name);
/// - `POST /stats/reset`: zero every host's counters (answers the zeroed sum).
#[derive(Debug, Clone, Copy)]
pub struct FleetAdmin {
    pub admin: SocketAddr,
}

impl FleetAdmin {
    pub fn new(admin: SocketAddr) -> Self {
        Self { admin }
    }

    fn single(&self) -> UpstreamAdmin {
        UpstreamAdmin::new(self.admin)
    }

    pub fn hosts(&self) -> io::Result<Vec<HostInfo>> {
        self.single()
            .parse(http::get(self.admin, "/hosts", ADMIN_TIMEOUT)?)
    }

    /// Replaces host `i`'s behaviour; returns what it now does.
    pub fn set_behaviour(&self, i: usize, b: &Behaviour) -> io::Result<Behaviour> {
        let body = serde_json::to_vec(b).map_err(io::Error::other)?;
        let r = http::request(
            self.admin,
            "PUT",
            &format!("/hosts/{i}/behaviour"),
            &[("content-type", "application/json")],
            &body,
            ADMIN_TIMEOUT,
        )?;
        self.single().parse(r)
    }

    /// Replaces every host's behaviour.
    pub fn set_all_behaviours(&self, b: &Behaviour) -> io::Result<Behaviour> {
        self.single().set_behaviour(b)
    }

    pub fn behaviour(&self, i: usize) -> io::Result<Behaviour> {
        self.single().parse(http::get(
            self.admin,
            &format!("/hosts/{i}/behaviour"),
            ADMIN_TIMEOUT,
        )?)
    }

    /// Every host's counters, by index.
    pub fn stats(&self) -> io::Result<Vec<HostStats>> {
        self.single()
            .parse(http::get(self.admin, "/hosts/stats", ADMIN_TIMEOUT)?)
    }

    pub fn host_stats(&self, i: usize) -> io::Result<HostStats> {
        self.single().parse(http::get(
            self.admin,
            &format!("/hosts/{i}/stats"),
            ADMIN_TIMEOUT,
        )?)
    }

    /// Zeroes every host's counters.
    pub fn reset_stats(&self) -> io::Result<()> {
        self.single().reset_stats().map(|_| ())
    }
}

/// A running multi-host mg-upstream: `hosts.len()` hosts on distinct
/// loopback addresses ([`fleet_address`]) sharing one port.
#[derive(Debug)]
pub struct Fleet {
    pub name: String,
    /// By index: `hosts[i].address` is host `i`'s data address.
    pub hosts: Vec<HostInfo>,
    pub admin: FleetAdmin,
    _child: ChildGuard,
}

impl Fleet {
    /// Starts `bin` serving `n` hosts from [`FLEET_BASE`] on one OS-chosen
    /// port (admin on 127.0.0.1); stderr goes to `<log_dir>/<name>.log`.
    pub fn start(bin: &Path, name: &str, n: usize, log_dir: &Path) -> io::Result<Self> {
        Self::start_at(bin, name, n, FLEET_BASE, log_dir)
    }

    /// [`start`](Self::start) with host 0 on `base` (for example
    /// `127.0.5.1`, so two fleets at once do not share addresses).
    pub fn start_at(
        bin: &Path,
        name: &str,
        n: usize,
        base: Ipv4Addr,
        log_dir: &Path,
    ) -> io::Result<Self> {
        let log = File::create(log_dir.join(format!("{name}.log")))?;
        let mut cmd = Command::new(bin);
        cmd.args(["--name", name, "--hosts", &n.to_string(), "--listen"])
            .arg(format!("{base}:0"))
            .args(["--admin", "127.0.0.1:0"])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::from(log));
        let mut child = ChildGuard::spawn(name, &mut cmd, Duration::from_secs(2))?;
        let line = child.first_stdout_line(Duration::from_secs(20))?;
        let (_, admin) = parse_ready_line(&line)
            .ok_or_else(|| io::Error::other(format!("{name}: unexpected ready line {line:?}")))?;
        let admin = FleetAdmin::new(admin);
        let hosts = admin.hosts()?;
        if hosts.len() != n {
            return Err(io::Error::other(format!(
                "{name}: asked for {n} hosts, it serves {}",
                hosts.len()
            )));
        }
        Ok(Self {
            name: name.to_string(),
            hosts,
            admin,
            _child: child,
        })
    }

    /// Host `i`'s data address.
    pub fn addr(&self, i: usize) -> SocketAddr {
        self.hosts[i].address
    }

    /// Host `i`'s name (`x-upstream-name` of its answers).
    pub fn host_name(&self, i: usize) -> &str {
        &self.hosts[i].name
    }
}

/// Parses `mg-upstream ready name=u1 data=127.0.0.1:1 admin=127.0.0.1:2`.
pub fn parse_ready_line(line: &str) -> Option<(SocketAddr, SocketAddr)> {
    let rest = line.strip_prefix(READY_PREFIX)?;
    let field = |key: &str| {
        rest.split_whitespace()
            .find_map(|kv| kv.strip_prefix(key))
            .and_then(|v| v.parse().ok())
    };
    Some((field("data=")?, field("admin=")?))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fleet_addresses_skip_network_and_broadcast_octets() {
        let a = |i| fleet_address(FLEET_BASE, i).map(|a| a.to_string());
        assert_eq!(a(0).as_deref(), Some("127.0.1.1"));
        assert_eq!(a(249).as_deref(), Some("127.0.1.250"));
        assert_eq!(a(250).as_deref(), Some("127.0.2.1"));
        assert_eq!(a(10_000).as_deref(), Some("127.0.41.1"));
        let base = Ipv4Addr::new(127, 0, 3, 200);
        assert_eq!(
            fleet_address(base, 51).map(|a| a.to_string()).as_deref(),
            Some("127.0.4.1")
        );
        assert_eq!(fleet_address(Ipv4Addr::new(127, 255, 255, 250), 1), None);
        assert_eq!(fleet_address(Ipv4Addr::new(10, 0, 0, 1), 0), None);
        assert_eq!(fleet_address(Ipv4Addr::new(127, 0, 0, 0), 0), None);
    }

    #[test]
    fn ready_line_of_a_fleet() {
        let (d, a) = parse_ready_line(
            "mg-upstream ready name=h data=127.0.1.1:4000 admin=127.0.0.1:4001 hosts=3 last=127.0.1.3:4000",
        )
        .expect("parse");
        assert_eq!(d.to_string(), "127.0.1.1:4000");
        assert_eq!(a.to_string(), "127.0.0.1:4001");
    }
}
