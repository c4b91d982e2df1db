//! Upstreams: mg-upstream processes for the incidents, and a minimal static
//! HTTP/1.1 server (`mg-bench serve`) for the overhead runs.

use std::io;
use std::net::SocketAddr;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use host_tests::http;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

use crate::procs::ChildGuard;

/// A running upstream process.
pub struct Upstream {
    pub name: String,
    pub data: SocketAddr,
    /// mg-upstream's admin port (None for `mg-bench serve`).
    pub admin: Option<SocketAddr>,
    _process: Process,
}

/// What keeps the upstream process alive (and stops it on drop); held,
/// never read.
enum Process {
    MgUpstream { _upstream: host_tests::Upstream },
    Static { _child: ChildGuard },
}

fn field(line: &str, key: &str) -> Option<SocketAddr> {
    line.split_whitespace()
        .find_map(|kv| kv.strip_prefix(key))
        .and_then(|v| v.parse().ok())
}

impl Upstream {
    /// Starts mg-upstream `name` on OS-chosen loopback ports (stderr in
    /// `<dir>/<name>.log`).
    pub fn mg_upstream(bin: &Path, name: &str, dir: &Path) -> io::Result<Self> {
        let upstream = host_tests::Upstream::start(bin, name, dir)?;
        Ok(Self {
            name: name.into(),
            data: upstream.data,
            admin: Some(upstream.admin.admin),
            _process: Process::MgUpstream {
                _upstream: upstream,
            },
        })
    }

    /// Starts `mg-bench serve` (this executable), optionally pinned to `cpus`.
    pub fn static_server(name: &str, fail_first: u32, cpus: Option<&str>) -> io::Result<Self> {
        let exe = std::env::current_exe()?;
        let mut cmd = match cpus {
            Some(c) => {
                let mut t = Command::new("taskset");
                t.args(["-c", c]).arg(exe);
                t
            }
            None => Command::new(exe),
        };
        cmd.args([
            "serve",
            "--name",
            name,
            "--fail-first",
            &fail_first.to_string(),
        ])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit());
        let mut child = ChildGuard::spawn(name, &mut cmd, Duration::from_secs(2))?;
        let line = child.first_stdout_line(Duration::from_secs(10))?;
        let data = field(&line, "data=")
            .ok_or_else(|| io::Error::other(format!("{name}: bad ready line {line:?}")))?;
        Ok(Self {
            name: name.into(),
            data,
            admin: None,
            _process: Process::Static { _child: child },
        })
    }

    /// `PUT /behaviour` on mg-upstream (blocking).
    pub fn set_behaviour(&self, json: &str) -> io::Result<()> {
        let admin = self
            .admin
            .ok_or_else(|| io::Error::other("not an mg-upstream"))?;
        let r = http::request(
            admin,
            "PUT",
            "/behaviour",
            &[("content-type", "application/json")],
            json.as_bytes(),
            Duration::from_secs(5),
        )?;
        if r.status != 200 {
            return Err(io::Error::other(format!(
                "{}: behaviour {json} refused: {} {}",
                self.name,
                r.status,
                r.body_text()
            )));
        }
        Ok(())
    }
}

/// `mg-bench serve`: answers every request on keep-alive connections with a
/// fixed small 200 (`x-upstream-name`), the first `fail_first` with 503. One
/// thread, no allocation per request: the cheapest upstream we can offer, so
/// the overhead runs measure Envoy, not the upstream.
pub fn serve(name: &str, fail_first: u32) -> io::Result<()> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    rt.block_on(async move {
        let l = TcpListener::bind("127.0.0.1:0").await?;
        println!("mg-bench serve ready name={name} data={}", l.local_addr()?);
        let body = format!("{{\"upstream\":\"{name}\"}}");
        let ok: &'static [u8] = Box::leak(
            format!(
                "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\nx-upstream-name: {name}\r\ncontent-length: {}\r\n\r\n{body}",
                body.len()
            )
            .into_bytes()
            .into_boxed_slice(),
        );
        let fail: &'static [u8] = Box::leak(
            format!("HTTP/1.1 503 Service Unavailable\r\nx-upstream-name: {name}\r\ncontent-length: 0\r\n\r\n")
                .into_bytes()
                .into_boxed_slice(),
        );
        let failures = std::rc::Rc::new(std::cell::Cell::new(fail_first));
        let local = tokio::task::LocalSet::new();
        local
            .run_until(async move {
                loop {
                    let (mut s, _) = match l.accept().await {
                        Ok(x) => x,
                        Err(_) => {
                            tokio::time::sleep(Duration::from_millis(10)).await;
                            continue;
                        }
                    };
                    let failures = failures.clone();
                    tokio::task::spawn_local(async move {
                        let _ = s.set_nodelay(true);
                        let mut buf = vec![0u8; 16384];
                        let mut have = 0usize;
                        loop {
                            let n = match s.read(&mut buf[have..]).await {
                                Ok(0) | Err(_) => return,
                                Ok(n) => n,
                            };
                            have += n;
                            let mut out: Vec<u8> = Vec::new();
                            // Answer every complete request head (GETs, no bodies).
                            while let Some(end) = buf[..have].windows(4).position(|w| w == b"\r\n\r\n") {
                                let left = failures.get();
                                if left > 0 {
                                    failures.set(left - 1);
                                    out.extend_from_slice(fail);
                                } else {
                                    out.extend_from_slice(ok);
                                }
                                buf.copy_within(end + 4..have, 0);
                                have -= end + 4;
                            }
                            if have == buf.len() {
                                return; // a head larger than 16 KB: not ours
                            }
                            if !out.is_empty() && s.write_all(&out).await.is_err() {
                                return;
                            }
                        }
                    });
                }
            })
            .await
    })
}
