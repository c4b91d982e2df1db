//! Driving mg-upstream servers from tests: start them, change their
//! behaviour, read their counters.

use std::fs::File;
use std::io;
use std::net::SocketAddr;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use crate::behaviour::{Behaviour, Stats};
use crate::http;
use crate::process::ChildGuard;

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
