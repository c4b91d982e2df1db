//! Envoy configurations of the bench variants, rendered from the demo
//! template (`envoy/demo.yaml.tmpl`) by the one renderer,
//! `host_tests::envoy::render`, and running Envoy on them.

use std::ffi::OsString;
use std::fs;
use std::io;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use host_tests::envoy::{free_ports, EnvoyProcess, TemplateVars, WasmPlugin, TEMPLATE};

use crate::procs::ChildGuard;

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
    /// meshguard's upstream instance (the module of `filter`) in the
    /// listener's router with this configuration, Istio's placement (see
    /// [`host_tests::fleet::add_upstream_instance_on_router`]; cluster
    /// `demo` then loses its own upstream filters).
    pub upstream_instance: Option<String>,
}

/// Renders the template for `spec` with Envoy on `admin`/`listen`: the
/// tests' renderer (meshguard block, variables), then what only the bench
/// varies: the access log, outlier detection, Envoy's outlier event log,
/// the upstream instance (the tests' renderer too).
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
    let mut rendered = host_tests::envoy::render(TEMPLATE, &vars)?;
    if let Some(config) = &spec.upstream_instance {
        let Filter::Wasm { path, .. } = &spec.filter else {
            return Err("an upstream instance needs meshguard as the filter".into());
        };
        let plugin = WasmPlugin {
            wasm_path: path.clone(),
            config: config.clone(),
        };
        rendered = host_tests::fleet::add_upstream_instance_on_router(&rendered, &plugin)?;
    }
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

/// How to launch Envoy: a command prefix (taskset, valgrind), how long to
/// wait for /ready, and how long it may take to exit on SIGTERM.
#[derive(Debug, Clone)]
pub struct Launch {
    pub prefix: Vec<OsString>,
    pub ready_timeout: Duration,
    pub grace: Duration,
}

impl Launch {
    /// Envoy itself, optionally pinned to `cpus` (taskset list).
    pub fn native(cpus: Option<&str>) -> Self {
        Self {
            prefix: cpus.map_or_else(Vec::new, |c| vec!["taskset".into(), "-c".into(), c.into()]),
            ready_timeout: Duration::from_secs(20),
            grace: Duration::from_secs(5),
        }
    }
}

/// Replaces the `demo` cluster's endpoints (the template's three) with
/// `addrs`; the rest of the rendered config is left as it is.
pub fn with_endpoints(yaml: &str, addrs: &[SocketAddr]) -> Result<String, String> {
    let cluster = yaml
        .find("\n  - name: demo\n    type: STATIC\n")
        .ok_or("template changed: demo cluster not found")?;
    let head = "      - lb_endpoints:\n";
    let start = cluster
        + yaml[cluster..]
            .find(head)
            .ok_or("template changed: demo lb_endpoints not found")?
        + head.len();
    let mut end = start;
    for line in yaml[start..].split_inclusive('\n') {
        if !line.starts_with("        - endpoint:") {
            break;
        }
        end += line.len();
    }
    if end == start {
        return Err("template changed: no demo endpoints".into());
    }
    let mut out = String::with_capacity(yaml.len() + addrs.len() * 100);
    out.push_str(&yaml[..start]);
    for a in addrs {
        out.push_str(&format!(
            "        - endpoint: {{ address: {{ socket_address: {{ address: {}, port_value: {} }} }} }}\n",
            a.ip(),
            a.port()
        ));
    }
    out.push_str(&yaml[end..]);
    Ok(out)
}

impl Envoy {
    pub fn start(bin: &Path, dir: &Path, spec: &Spec, cpus: Option<&str>) -> io::Result<Self> {
        Self::launch(
            bin,
            dir,
            spec.concurrency,
            |admin, listen| render(spec, admin, listen),
            &Launch::native(cpus),
        )
    }

    /// Starts Envoy on `make_config(admin_port, listen_port)` in `dir`
    /// (`envoy.yaml`, `envoy.log`, `envoy.stderr`) and waits for /ready and
    /// the listener.
    pub fn launch(
        bin: &Path,
        dir: &Path,
        concurrency: u32,
        make_config: impl FnOnce(u16, u16) -> Result<String, String>,
        how: &Launch,
    ) -> io::Result<Self> {
        fs::create_dir_all(dir)?;
        let ports = free_ports::<2>()?;
        let yaml = make_config(ports[0], ports[1]).map_err(io::Error::other)?;
        let process = EnvoyProcess {
            concurrency,
            extra_args: vec!["--log-format".to_string(), LOG_FORMAT.to_string()],
            prefix: how.prefix.clone(),
            grace: how.grace,
            ..EnvoyProcess::in_dir(bin, dir)
        };
        fs::write(&process.config, yaml)?;
        let mut child = process.spawn()?;
        let admin = SocketAddr::from(([127, 0, 0, 1], ports[0]));
        // Under valgrind the admin answers slowly: give each poll longer.
        let poll = if how.prefix.is_empty() {
            Duration::from_millis(500)
        } else {
            Duration::from_secs(5)
        };
        let deadline = Instant::now() + how.ready_timeout;
        process.wait_ready(&mut child, admin, how.ready_timeout, poll)?;
        let e = Self {
            admin,
            listener: SocketAddr::from(([127, 0, 0, 1], ports[1])),
            log_path: process.log_path,
            child,
        };
        // Also wait for the listener itself.
        while std::net::TcpStream::connect(e.listener).is_err() {
            if Instant::now() > deadline {
                return Err(io::Error::other("envoy listener not accepting"));
            }
            std::thread::sleep(Duration::from_millis(25));
        }
        Ok(e)
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// `GET path` on the admin port; Err unless 200.
    pub fn admin_get(&self, path: &str, timeout: Duration) -> io::Result<String> {
        host_tests::envoy::admin_get(self.admin, path, timeout)
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
            upstream_instance: None,
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
        assert!(!y.contains("root_id: meshguard-upstream") && !y.contains("upstream_http_filters"));
        let both = render(
            &Spec {
                upstream_instance: Some(r#"{"mode":"upstream"}"#.into()),
                ..spec.clone()
            },
            1,
            2,
        )
        .expect("render");
        let router = both.find("router.v3.Router\n").expect("router");
        let up = both.find("root_id: meshguard-upstream").expect("upstream");
        let codec = both
            .find("- name: envoy.filters.http.upstream_codec")
            .expect("codec");
        let demo = both.find("\n  - name: demo\n").expect("demo");
        assert!(router < up && up < codec && codec < demo, "{both}");
        assert!(both[up..codec].contains(r#"value: '{"mode":"upstream"}'"#));
        assert!(both[up..codec].contains("filename: \"/x.wasm\""));
        assert!(render(
            &Spec {
                filter: Filter::None,
                upstream_instance: Some("{}".into()),
                ..spec.clone()
            },
            1,
            2
        )
        .is_err());
        let addrs: Vec<SocketAddr> = (1..=5)
            .map(|i| SocketAddr::from(([127, 0, 1, i], 9000)))
            .collect();
        let many = with_endpoints(&y, &addrs).expect("endpoints");
        assert_eq!(many.matches("port_value: 9000").count(), 5);
        assert!(many.contains("address: 127.0.1.5, port_value: 9000"));
        // The fallback cluster keeps its one host.
        assert_eq!(many.matches("- endpoint:").count(), 6);
        assert!(!many.contains("port_value: 11 ") && many.contains("port_value: 13 "));
    }
}
