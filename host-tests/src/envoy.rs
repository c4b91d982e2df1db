//! Rendering `envoy/demo.yaml.tmpl` and running the real Envoy on it.

use std::fs::{self, File};
use std::io;
use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::http;
use crate::process::ChildGuard;

/// The template every harness, the bench and the demo (`mg-envoy-config`) render.
pub const TEMPLATE: &str = include_str!("../../envoy/demo.yaml.tmpl");

/// Envoy's last startup log line.
const STARTED_MARKER: &str = "starting main dispatch loop";

/// The meshguard wasm filter in the rendered config.
#[derive(Debug, Clone)]
pub struct WasmPlugin {
    pub wasm_path: PathBuf,
    /// meshguard's JSON configuration.
    pub config: String,
}

/// Values for the template's `${NAME}` variables.
#[derive(Debug, Clone)]
pub struct TemplateVars {
    pub admin_port: u16,
    pub listen_port: u16,
    pub upstream_ports: [u16; 3],
    /// Data port of the `fallback` cluster's host (`FALLBACK_PORT`); None
    /// uses u3's port, as the shell renderer does.
    pub fallback_port: Option<u16>,
    /// None renders the proxy without the meshguard filter.
    pub wasm: Option<WasmPlugin>,
}

/// Renders `template` with the same rules as the shell renderer: drop the
/// `BEGIN meshguard`..`END meshguard` lines when there is no wasm plugin,
/// replace every `${NAME}`, and fail on any variable left outside comments.
pub fn render(template: &str, vars: &TemplateVars) -> Result<String, String> {
    let mut out = String::with_capacity(template.len() + 256);
    let mut skipping = false;
    for line in template.lines() {
        let t = line.trim_start();
        if vars.wasm.is_none() {
            if t.starts_with("# BEGIN meshguard") {
                skipping = true;
                continue;
            }
            if t.starts_with("# END meshguard") {
                skipping = false;
                continue;
            }
            if skipping {
                continue;
            }
        }
        out.push_str(line);
        out.push('\n');
    }
    let mut subst: Vec<(&str, String)> = vec![
        ("ADMIN_PORT", vars.admin_port.to_string()),
        ("LISTEN_PORT", vars.listen_port.to_string()),
        ("UPSTREAM1_PORT", vars.upstream_ports[0].to_string()),
        ("UPSTREAM2_PORT", vars.upstream_ports[1].to_string()),
        ("UPSTREAM3_PORT", vars.upstream_ports[2].to_string()),
        (
            "FALLBACK_PORT",
            vars.fallback_port
                .unwrap_or(vars.upstream_ports[2])
                .to_string(),
        ),
    ];
    if let Some(w) = &vars.wasm {
        subst.push(("WASM_PATH", w.wasm_path.display().to_string()));
        // The configuration sits in a single-quoted YAML scalar.
        subst.push(("PLUGIN_CONFIG", w.config.replace('\'', "''")));
    }
    for (name, value) in subst {
        out = out.replace(&format!("${{{name}}}"), &value);
    }
    if let Some(left) = out
        .lines()
        .find(|l| !l.trim_start().starts_with('#') && l.contains("${"))
    {
        return Err(format!("unsubstituted variable in Envoy config: {left}"));
    }
    Ok(out)
}

/// `N` distinct loopback ports that were free a moment ago. All are held at
/// once while picking so they differ from each other.
pub fn free_ports<const N: usize>() -> io::Result<[u16; N]> {
    let listeners = (0..N)
        .map(|_| TcpListener::bind("127.0.0.1:0"))
        .collect::<io::Result<Vec<_>>>()?;
    let mut ports = [0u16; N];
    for (p, l) in ports.iter_mut().zip(&listeners) {
        *p = l.local_addr()?.port();
    }
    Ok(ports)
}

/// Envoy's command line after `-c <config>`, as every harness runs it
/// (the fixture, the testbed in process and container mode, the Istio
/// sidecar emulation, the bench): `--log-path` follows.
pub fn envoy_flags(concurrency: u32) -> Vec<String> {
    [
        // Otherwise Envoy dies with the thread that spawned it and
        // parallel Envoys clash on shared memory.
        "--disable-hot-restart",
        "--concurrency",
        &concurrency.to_string(),
        // Default flush is 10 s; tests read the log while Envoy runs.
        "--file-flush-interval-msec",
        "200",
        "-l",
        "info",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect()
}

/// One Envoy process on a config file: the command every harness starts
/// (with [`envoy_flags`]), its log and stderr files, and how long it has to
/// stop. `prefix` runs it under another program (valgrind in the bench).
#[derive(Debug, Clone)]
pub struct EnvoyProcess {
    pub bin: PathBuf,
    pub config: PathBuf,
    pub log_path: PathBuf,
    pub stderr_path: PathBuf,
    pub concurrency: u32,
    /// Arguments after the flags and before `--log-path` (`--log-format ...`).
    pub extra_args: Vec<String>,
    pub prefix: Vec<std::ffi::OsString>,
    /// How long Envoy gets to exit after SIGTERM before SIGKILL.
    pub grace: Duration,
}

impl EnvoyProcess {
    /// `<dir>/envoy.yaml`, `<dir>/envoy.log`, `<dir>/envoy.stderr`, two
    /// workers, 5 s to stop.
    pub fn in_dir(bin: &Path, dir: &Path) -> Self {
        EnvoyProcess {
            bin: bin.to_path_buf(),
            config: dir.join("envoy.yaml"),
            log_path: dir.join("envoy.log"),
            stderr_path: dir.join("envoy.stderr"),
            concurrency: 2,
            extra_args: Vec::new(),
            prefix: Vec::new(),
            grace: Duration::from_secs(5),
        }
    }

    /// Starts it (a stale log from an earlier run is removed first, since
    /// whoever reads it would be confused); it dies with this process.
    pub fn spawn(&self) -> io::Result<ChildGuard> {
        let _ = fs::remove_file(&self.log_path);
        let stderr = File::create(&self.stderr_path)?;
        let mut cmd = match self.prefix.split_first() {
            Some((first, rest)) => {
                let mut c = Command::new(first);
                c.args(rest).arg(&self.bin);
                c
            }
            None => Command::new(&self.bin),
        };
        cmd.arg("-c")
            .arg(&self.config)
            .args(envoy_flags(self.concurrency))
            .args(&self.extra_args)
            .arg("--log-path")
            .arg(&self.log_path)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::from(stderr));
        ChildGuard::spawn("envoy", &mut cmd, self.grace)
    }

    /// Starts it and waits until `admin` says it is ready, as the fixture
    /// and the sidecar emulation do (20 s, half-second polls).
    pub fn start(&self, admin: SocketAddr) -> io::Result<ChildGuard> {
        let mut child = self.spawn()?;
        self.wait_ready(
            &mut child,
            admin,
            Duration::from_secs(20),
            Duration::from_millis(500),
        )?;
        Ok(child)
    }

    /// Polls `admin`'s `/ready` (each poll `poll` long) until 200, for up
    /// to `limit`; Err says whether Envoy exited or never got ready, with
    /// its log tail and stderr.
    pub fn wait_ready(
        &self,
        child: &mut ChildGuard,
        admin: SocketAddr,
        limit: Duration,
        poll: Duration,
    ) -> io::Result<()> {
        let deadline = Instant::now() + limit;
        let tail = || {
            let log = fs::read_to_string(&self.log_path).unwrap_or_default();
            let lines: Vec<&str> = log.lines().collect();
            let from = lines.len().saturating_sub(40);
            format!(
                "log tail ({}):\n{}\nstderr ({}):\n{}",
                self.log_path.display(),
                lines[from..].join("\n"),
                self.stderr_path.display(),
                fs::read_to_string(&self.stderr_path).unwrap_or_default()
            )
        };
        loop {
            if let Some(status) = child.exited() {
                return Err(io::Error::other(format!(
                    "envoy exited during startup ({status}); {}",
                    tail()
                )));
            }
            if let Ok(r) = http::get(admin, "/ready", poll) {
                if r.status == 200 {
                    return Ok(());
                }
            }
            if Instant::now() > deadline {
                return Err(io::Error::other(format!(
                    "envoy not ready after {limit:?}; {}",
                    tail()
                )));
            }
            std::thread::sleep(Duration::from_millis(25));
        }
    }
}

/// Runs `envoy --mode validate` on a config file; Err carries Envoy's output.
pub fn validate(envoy_bin: &Path, config: &Path) -> io::Result<()> {
    let out = Command::new(envoy_bin)
        .args([
            "--mode",
            "validate",
            "--disable-hot-restart",
            "-l",
            "warning",
            "-c",
        ])
        .arg(config)
        .output()?;
    if out.status.success() {
        Ok(())
    } else {
        Err(io::Error::other(format!(
            "envoy rejected {}:\n{}{}",
            config.display(),
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )))
    }
}

/// A running Envoy.
#[derive(Debug)]
pub struct Envoy {
    pub admin: SocketAddr,
    pub listener: SocketAddr,
    pub config_path: PathBuf,
    pub log_path: PathBuf,
    /// Envoy's stderr: the access log (one line per request, with its
    /// response flags) and anything Envoy prints before its log opens.
    pub stderr_path: PathBuf,
    child: ChildGuard,
}

impl Envoy {
    /// Renders the template into `work_dir`, starts Envoy on fresh ports and
    /// waits until admin `/ready` says LIVE. The `fallback` cluster points at
    /// u3 (see [`start_with_fallback`](Self::start_with_fallback)).
    pub fn start(
        envoy_bin: &Path,
        work_dir: &Path,
        upstream_ports: [u16; 3],
        wasm: Option<WasmPlugin>,
    ) -> io::Result<Self> {
        Self::start_with_fallback(envoy_bin, work_dir, upstream_ports, None, wasm)
    }

    /// [`start`](Self::start) with the `fallback` cluster's host on
    /// `fallback_port` (None: u3's port).
    pub fn start_with_fallback(
        envoy_bin: &Path,
        work_dir: &Path,
        upstream_ports: [u16; 3],
        fallback_port: Option<u16>,
        wasm: Option<WasmPlugin>,
    ) -> io::Result<Self> {
        Self::start_with_config(envoy_bin, work_dir, |admin_port, listen_port| {
            render(
                TEMPLATE,
                &TemplateVars {
                    admin_port,
                    listen_port,
                    upstream_ports,
                    fallback_port,
                    wasm,
                },
            )
        })
    }

    /// Starts Envoy on the config `make_config(admin_port, listen_port)`
    /// returns for two fresh loopback ports (admin, listener), in `work_dir`
    /// (`envoy.yaml`, `envoy.log`, `envoy.stderr`), and waits until admin
    /// `/ready` says LIVE. For configs derived from the template (render it,
    /// then edit), such as the EDS fleet of [`crate::fleet`].
    pub fn start_with_config(
        envoy_bin: &Path,
        work_dir: &Path,
        make_config: impl FnOnce(u16, u16) -> Result<String, String>,
    ) -> io::Result<Self> {
        fs::create_dir_all(work_dir)?;
        let [admin_port, listen_port] = free_ports::<2>()?;
        let yaml = make_config(admin_port, listen_port).map_err(io::Error::other)?;
        let process = EnvoyProcess::in_dir(envoy_bin, work_dir);
        fs::write(&process.config, yaml)?;
        let admin = SocketAddr::from(([127, 0, 0, 1], admin_port));
        let child = process.start(admin)?;
        Ok(Self {
            admin,
            listener: SocketAddr::from(([127, 0, 0, 1], listen_port)),
            config_path: process.config,
            log_path: process.log_path,
            stderr_path: process.stderr_path,
            child,
        })
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The whole Envoy log so far (flushed every 200 ms).
    pub fn log(&self) -> String {
        fs::read_to_string(&self.log_path).unwrap_or_default()
    }

    /// The last `n` lines of the log after startup ([`log_tail`]).
    pub fn log_tail(&self, n: usize) -> String {
        log_tail(&self.log(), n)
    }

    /// The last `n` log lines containing `needle`.
    pub fn log_matching(&self, needle: &str, n: usize) -> String {
        last_lines(&self.log(), n, |l| l.contains(needle))
    }

    /// The last `n` access-log lines (Envoy's stderr, flushed every 200 ms)
    /// that `keep` accepts. Format: `start code flags upstream details route cluster`.
    pub fn access_log_matching(&self, keep: impl Fn(&str) -> bool, n: usize) -> String {
        let text = fs::read_to_string(&self.stderr_path).unwrap_or_default();
        last_lines(&text, n, |l| l.starts_with("access ") && keep(l))
    }

    /// `GET` on the admin port ([`admin_get`], 5 s).
    pub fn admin_get(&self, path: &str) -> io::Result<String> {
        admin_get(self.admin, path, ADMIN_TIMEOUT)
    }

    /// Envoy's counter or gauge `name` ([`stat`]).
    pub fn stat(&self, name: &str) -> io::Result<u64> {
        stat(self.admin, name)
    }

    /// Stops Envoy and waits until its PID is gone.
    pub fn stop(&mut self) {
        self.child.stop();
    }
}

/// How long an admin call of the harnesses may take.
pub const ADMIN_TIMEOUT: Duration = Duration::from_secs(5);

/// `GET path` on Envoy's admin endpoint `admin`; Err unless 200.
pub fn admin_get(admin: SocketAddr, path: &str, timeout: Duration) -> io::Result<String> {
    let r = http::get(admin, path, timeout)?;
    if r.status != 200 {
        return Err(io::Error::other(format!(
            "envoy admin {path}: {} {}",
            r.status,
            r.body_text()
        )));
    }
    Ok(r.body_text())
}

/// Envoy's counter or gauge `name` (for example
/// `cluster.demo.membership_total`) from admin `admin`; 0 when Envoy does
/// not list it.
pub fn stat(admin: SocketAddr, name: &str) -> io::Result<u64> {
    let filter = format!("/stats?filter=^{}$", name.replace('.', "\\."));
    Ok(stat_in(&admin_get(admin, &filter, ADMIN_TIMEOUT)?, name))
}

/// Counter or gauge `name` in the text of Envoy's `/stats` (`name: value`
/// lines); 0 when absent.
pub fn stat_in(stats: &str, name: &str) -> u64 {
    stats
        .lines()
        .find_map(|l| {
            l.strip_prefix(name)?
                .strip_prefix(": ")?
                .trim()
                .parse()
                .ok()
        })
        .unwrap_or(0)
}

/// The last `n` lines of an Envoy log. Once Envoy has started, only lines
/// after startup: its listing of compiled-in extensions would otherwise
/// fill the tail of a short run.
pub fn log_tail(log: &str, n: usize) -> String {
    let after_start = log
        .find(STARTED_MARKER)
        .and_then(|i| log[i..].find('\n').map(|j| &log[i + j + 1..]))
        .unwrap_or(log);
    last_lines(after_start, n, |_| true)
}

/// The last `n` lines of `text` that `keep` accepts.
pub fn last_lines(text: &str, n: usize, keep: impl Fn(&str) -> bool) -> String {
    let lines: Vec<&str> = text.lines().filter(|l| keep(l)).collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vars(wasm: bool) -> TemplateVars {
        TemplateVars {
            admin_port: 1,
            listen_port: 2,
            upstream_ports: [11, 12, 13],
            fallback_port: None,
            wasm: wasm.then(|| WasmPlugin {
                wasm_path: PathBuf::from("/x/meshguard.wasm"),
                config: r#"{"note":"it's"}"#.to_string(),
            }),
        }
    }

    #[test]
    fn renders_with_and_without_wasm() {
        let with = render(TEMPLATE, &vars(true)).expect("render");
        assert!(with.contains(r#"value: '{"note":"it''s"}'"#), "{with}");
        assert!(with.contains("/x/meshguard.wasm"));
        assert!(with.contains("port_value: 13 "));
        let fb = render(
            TEMPLATE,
            &TemplateVars {
                fallback_port: Some(14),
                ..vars(true)
            },
        )
        .expect("render");
        assert!(fb.contains("port_value: 14 "), "{fb}");
        let without = render(TEMPLATE, &vars(false)).expect("render");
        assert!(!without.contains("envoy.filters.http.wasm"));
        assert!(without.contains("envoy.filters.http.router"));
        assert!(without.contains("x-meshguard-upstream"));
    }
}
