//! Envoy configurations of the bench variants, rendered from the demo
//! template (`envoy/demo.yaml.tmpl`, the same rules as
//! `scripts/render-envoy-config.sh`), and running Envoy on them.

use std::fs::{self, File};
use std::io;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use host_tests::envoy::{free_ports, TemplateVars, WasmPlugin};

use crate::client;
use crate::procs::ChildGuard;

pub const TEMPLATE: &str = include_str!("../../../envoy/demo.yaml.tmpl");

/// The HTTP filter in front of the router.
#[derive(Debug, Clone)]
pub enum Filter {
    /// Plain Envoy (the template's meshguard block removed).
    None,
    /// A wasm module in meshguard's place, with this configuration.
    Wasm { path: PathBuf, config: String },
}

#[derive(Debug, Clone)]
pub struct Spec {
    pub filter: Filter,
    /// YAML flow mapping for the `demo` cluster's `outlier_detection`.
    pub outlier_detection: Option<String>,
    /// Envoy's outlier event log (JSON lines, bootstrap
    /// `cluster_manager.outlier_detection.event_log_path`).
    pub event_log: Option<PathBuf>,
    /// Keep the template's per-request access log (stderr).
    pub access_log: bool,
    pub concurrency: u32,
    pub upstream_ports: [u16; 3],
}

/// Renders the template for `spec` with Envoy on `admin`/`listen`: the
/// tests' renderer (meshguard block, variables), then what only the bench
/// varies: the access log, outlier detection, Envoy's outlier event log.
pub fn render(spec: &Spec, admin: u16, listen: u16) -> Result<String, String> {
    let vars = TemplateVars {
        admin_port: admin,
        listen_port: listen,
        upstream_ports: spec.upstream_ports,
        fallback_port: None,
        wasm: match &spec.filter {
            Filter::None => None,
            Filter::Wasm { path, config } => Some(WasmPlugin {
                wasm_path: path.clone(),
                config: config.clone(),
            }),
        },
    };
    let rendered = host_tests::envoy::render(TEMPLATE, &vars)?;
    let mut out = if spec.access_log {
        rendered
    } else {
        without_access_logs(&rendered)
    };
    if let Some(od) = &spec.outlier_detection {
        let anchor = "  - name: demo\n    type: STATIC\n    connect_timeout: 1s\n";
        let at = out
            .find(anchor)
            .ok_or("template changed: demo cluster header not found")?
            + anchor.len();
        out.insert_str(at, &format!("    outlier_detection: {od}\n"));
    }
    if let Some(log) = &spec.event_log {
        out.push_str(&format!(
            "cluster_manager:\n  outlier_detection:\n    event_log_path: \"{}\"\n",
            log.display()
        ));
    }
    Ok(out)
}

/// Drops every `access_log:` key with what is nested under it.
fn without_access_logs(yaml: &str) -> String {
    let mut out = String::with_capacity(yaml.len());
    // Indentation of an `access_log:` key being dropped, while inside it.
    let mut dropping: Option<usize> = None;
    for line in yaml.lines() {
        let t = line.trim_start();
        let indent = line.len() - t.len();
        if let Some(i) = dropping {
            if t.is_empty() || indent > i || (t.starts_with('-') && indent == i) {
                continue;
            }
            dropping = None;
        }
        if t.starts_with("access_log:") {
            dropping = Some(indent);
            continue;
        }
        out.push_str(line);
        out.push('\n');
    }
    out
}

/// A running Envoy.
pub struct Envoy {
    pub admin: SocketAddr,
    pub listener: SocketAddr,
    pub log_path: PathBuf,
    child: ChildGuard,
}

/// Log lines carry epoch seconds with milliseconds: `[1715000000.123] ...`.
pub const LOG_FORMAT: &str = "[%E.%e] %v";

impl Envoy {
    pub fn start(bin: &Path, dir: &Path, spec: &Spec, cpus: Option<&str>) -> io::Result<Self> {
        fs::create_dir_all(dir)?;
        let ports = free_ports::<2>()?;
        let yaml = render(spec, ports[0], ports[1]).map_err(io::Error::other)?;
        let config = dir.join("envoy.yaml");
        fs::write(&config, yaml)?;
        let log_path = dir.join("envoy.log");
        let _ = fs::remove_file(&log_path);
        let stderr = File::create(dir.join("envoy.stderr"))?;
        let mut cmd = match cpus {
            Some(c) => {
                let mut t = Command::new("taskset");
                t.args(["-c", c]).arg(bin);
                t
            }
            None => Command::new(bin),
        };
        cmd.arg("-c")
            .arg(&config)
            .arg("--disable-hot-restart")
            .args(["--concurrency", &spec.concurrency.to_string()])
            .args(["--file-flush-interval-msec", "200"])
            .args(["-l", "info", "--log-format", LOG_FORMAT, "--log-path"])
            .arg(&log_path)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::from(stderr));
        let child = ChildGuard::spawn("envoy", &mut cmd, Duration::from_secs(5))?;
        let mut e = Self {
            admin: SocketAddr::from(([127, 0, 0, 1], ports[0])),
            listener: SocketAddr::from(([127, 0, 0, 1], ports[1])),
            log_path,
            child,
        };
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if e.child.exited().is_some() {
                return Err(io::Error::other(format!(
                    "envoy exited during startup; see {} and {}",
                    e.log_path.display(),
                    dir.join("envoy.stderr").display()
                )));
            }
            if let Ok(r) = client::get(e.admin, "/ready", Duration::from_millis(500)) {
                if r.status == 200 {
                    break;
                }
            }
            if Instant::now() > deadline {
                return Err(io::Error::other("envoy not ready after 20 s"));
            }
            std::thread::sleep(Duration::from_millis(25));
        }
        // Also wait for the listener itself.
        while std::net::TcpStream::connect(e.listener).is_err() {
            if Instant::now() > deadline {
                return Err(io::Error::other("envoy listener not accepting"));
            }
            std::thread::sleep(Duration::from_millis(25));
        }
        Ok(e)
    }

    pub fn log(&self) -> String {
        fs::read_to_string(&self.log_path).unwrap_or_default()
    }

    pub fn stop(&mut self) {
        self.child.stop();
    }

    /// CPU time Envoy used so far (all threads).
    pub fn cpu_time(&self) -> std::io::Result<Duration> {
        crate::procs::cpu_time(self.child.id())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_variants() {
        let spec = Spec {
            filter: Filter::None,
            outlier_detection: Some("{ consecutive_5xx: 5 }".into()),
            event_log: Some("/tmp/ev.log".into()),
            access_log: false,
            concurrency: 1,
            upstream_ports: [11, 12, 13],
        };
        let y = render(&spec, 1, 2).expect("render");
        assert!(!y.contains("envoy.filters.http.wasm"));
        assert!(!y.contains("access_log:") && !y.contains("log_format"));
        assert!(y.contains("codec_type: AUTO"));
        assert!(y.contains("connect_timeout: 1s\n    outlier_detection: { consecutive_5xx: 5 }\n"));
        assert!(y.ends_with(
            "cluster_manager:\n  outlier_detection:\n    event_log_path: \"/tmp/ev.log\"\n"
        ));
        let spec = Spec {
            filter: Filter::Wasm {
                path: "/x.wasm".into(),
                config: "{}".into(),
            },
            access_log: true,
            outlier_detection: None,
            event_log: None,
            ..spec
        };
        let y = render(&spec, 1, 2).expect("render");
        assert!(y.contains("/x.wasm") && y.contains("access_log:"));
        assert!(!y.contains("outlier_detection:"));
    }
}
