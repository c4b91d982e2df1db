//! [`Testbed`]: a real Envoy running meshguard in front of N mg-upstream
//! servers, as Docker containers or as local processes.
//!
//! ```text
//! use host_tests::Harness; // the API it shares with the process fixture
//! let tb = Testbed::start(TestbedSpec::new("grey", Mode::Docker), host_tests::test_paths!());
//! tb.set_behaviour(1, &Behaviour::grey(503, 35));          // u2
//! let t = traffic::burst(tb.listener, 300);
//! tb.check(t.share("u2") < 0.25, || format!("u2 still gets {t}"));
//! ```
//!
//! Docker mode: a network `mgtest-<pid>-<test>` of its own, one container per
//! upstream (`...-u1`, `...-u2`...; image meshguard/mg-upstream) and one for
//! Envoy (`...-envoy`; image meshguard/envoy) with the work directory
//! mounted at `/etc/meshguard` (config, module, Envoy's log). The test talks
//! to every container on its address in that network: nothing is published
//! on the host's interfaces. Every container carries the labels
//! [`LABEL_HARNESS`](super::docker::LABEL_HARNESS) and
//! [`LABEL_PID`](super::docker::LABEL_PID).
//!
//! Cleanup: testcontainers removes each container when its handle drops and
//! the network with its last container; [`Testbed`]'s drop does that in
//! order (Envoy first), also while a failed test unwinds. Ctrl-C is covered
//! by testcontainers' watchdog, SIGKILL by [`remove_leftovers`] on the next
//! run. Process mode uses [`ChildGuard`]s: killed on drop, and with
//! PR_SET_PDEATHSIG when the test process dies.

use std::fs::{self, File};
use std::io::Write;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use testcontainers::core::logs::LogFrame;
use testcontainers::core::{Mount, WaitFor};
use testcontainers::runners::SyncRunner;
use testcontainers::{Container, GenericImage, ImageExt};

use super::docker::{self, Images, LABEL_HARNESS, LABEL_PID};
use super::layout::{self, Layout};
use crate::envoy::{envoy_flags, free_ports, last_lines, EnvoyProcess};
use crate::fixture::TestPaths;
use crate::harness::{Harness, UpstreamRef};
use crate::http;
use crate::process::ChildGuard;
use crate::upstream::{Upstream, UpstreamAdmin, READY_PREFIX};

/// Where the work directory is mounted in the Envoy container.
const MOUNT: &str = "/etc/meshguard";
/// Ports inside containers (each container has its own address).
const ENVOY_ADMIN_PORT: u16 = 9901;
const ENVOY_LISTEN_PORT: u16 = 10000;
const UPSTREAM_DATA_PORT: u16 = 8080;
const UPSTREAM_ADMIN_PORT: u16 = 9000;
const READY_LIMIT: Duration = Duration::from_secs(30);

/// How the testbed runs Envoy and the upstreams.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// Containers on a Docker network of their own. A test in this mode
    /// fails (with instructions) when Docker is missing; it never skips.
    Docker,
    /// Local processes on loopback: no Docker needed.
    Process,
}

/// What to start.
#[derive(Debug, Clone)]
pub struct TestbedSpec {
    /// Test name: the work directory `<CARGO_TARGET_TMPDIR>/<name>/` and
    /// the Docker names `mgtest-<pid>-<name>...`.
    pub name: String,
    pub mode: Mode,
    /// Number of upstreams (u1..uN).
    pub upstreams: usize,
    /// Envoy's `--concurrency` (worker threads).
    pub concurrency: u32,
    /// meshguard's JSON configuration.
    pub plugin_config: String,
    /// Serve the listener from a watched file, so
    /// [`Testbed::update_plugin_config`] can change it at run time.
    pub dynamic_listener: bool,
}

impl TestbedSpec {
    /// Three upstreams, two workers, [`crate::TEST_PLUGIN_CONFIG`], static listener.
    pub fn new(name: &str, mode: Mode) -> Self {
        Self {
            name: name.to_string(),
            mode,
            upstreams: 3,
            concurrency: 2,
            plugin_config: crate::TEST_PLUGIN_CONFIG.to_string(),
            dynamic_listener: false,
        }
    }

    pub fn plugin_config(mut self, config: &str) -> Self {
        self.plugin_config = config.to_string();
        self
    }

    pub fn concurrency(mut self, n: u32) -> Self {
        self.concurrency = n;
        self
    }

    pub fn upstreams(mut self, n: usize) -> Self {
        self.upstreams = n;
        self
    }

    pub fn dynamic_listener(mut self, on: bool) -> Self {
        self.dynamic_listener = on;
        self
    }
}

/// One upstream as the test sees it.
#[derive(Debug, Clone)]
pub struct UpstreamInfo {
    /// `u1`, `u2`...: what it answers in `x-upstream-name`.
    pub name: String,
    /// Its data address as Envoy (and meshguard's log lines) know it.
    pub data: SocketAddr,
    pub admin: UpstreamAdmin,
}

impl<'a> From<&'a UpstreamInfo> for UpstreamRef<'a> {
    fn from(u: &'a UpstreamInfo) -> Self {
        UpstreamRef {
            name: &u.name,
            data: u.data,
            admin: u.admin,
        }
    }
}

enum Backend {
    Process {
        envoy: Option<ChildGuard>,
        ups: Vec<Option<Upstream>>,
    },
    Docker {
        envoy: Option<Box<Container<GenericImage>>>,
        ups: Vec<Option<Container<GenericImage>>>,
        /// Container names, for messages.
        names: Vec<String>,
    },
}

/// A running Envoy with meshguard and its upstreams; see the module docs.
pub struct Testbed {
    pub spec: TestbedSpec,
    /// Work directory on this machine: rendered config, logs, the module.
    pub dir: PathBuf,
    /// Envoy's listener: where client traffic goes.
    pub listener: SocketAddr,
    /// Envoy's admin endpoint.
    pub admin: SocketAddr,
    pub upstreams: Vec<UpstreamInfo>,
    /// Envoy's log (`--log-path`, flushed every 200 ms).
    pub log_path: PathBuf,
    /// Envoy's stderr: the access log (`access <start> <code> <flags> <host> <details>`).
    pub stderr_path: PathBuf,
    layout: Layout,
    lds_file: Option<PathBuf>,
    backend: Backend,
}

fn setup_err(what: &str, e: impl std::fmt::Display) -> String {
    format!("testbed setup: {what}: {e}")
}

impl Testbed {
    /// Starts everything and waits until Envoy's `/ready` answers 200.
    /// Needs MESHGUARD_WASM (and in process mode MESHGUARD_ENVOY; in Docker
    /// mode the image is built from MESHGUARD_ENVOY or the `.venv` Envoy).
    /// Panics with a clear message on any setup failure, including Docker
    /// missing in [`Mode::Docker`].
    pub fn start(spec: TestbedSpec, paths: TestPaths) -> Self {
        Self::try_start(spec, paths).unwrap_or_else(|e| panic!("{e}"))
    }

    /// [`start`](Self::start), returning setup errors.
    pub fn try_start(spec: TestbedSpec, paths: TestPaths) -> Result<Self, String> {
        let wasm = crate::MESHGUARD_WASM.path()?;
        let dir = paths.tmp_dir.join(&spec.name);
        // A fresh directory: stale logs would confuse the log readers.
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(dir.join("lds")).map_err(|e| setup_err("work dir", e))?;
        match spec.mode {
            Mode::Process => Self::start_processes(spec, &paths, &wasm, dir),
            Mode::Docker => Self::start_containers(spec, &paths, &wasm, dir),
        }
    }

    fn start_processes(
        spec: TestbedSpec,
        paths: &TestPaths,
        wasm: &Path,
        dir: PathBuf,
    ) -> Result<Self, String> {
        let envoy_bin = crate::ENVOY_BIN.path()?;
        let mut ups = Vec::new();
        let mut infos = Vec::new();
        for i in 0..spec.upstreams {
            let name = format!("u{}", i + 1);
            let u = Upstream::start(&paths.mg_upstream, &name, &dir)
                .map_err(|e| setup_err(&name, e))?;
            infos.push(UpstreamInfo {
                name,
                data: u.data,
                admin: u.admin,
            });
            ups.push(Some(u));
        }
        let [admin_port, listen_port] = free_ports::<2>().map_err(|e| setup_err("ports", e))?;
        let layout = Layout {
            bind_ip: IpAddr::V4(Ipv4Addr::LOCALHOST),
            admin_port,
            listen_port,
            endpoints: infos.iter().map(|u| u.data).collect(),
            wasm_path: wasm.display().to_string(),
            plugin_config: spec.plugin_config.clone(),
            lds_path: spec
                .dynamic_listener
                .then(|| dir.join("lds/listener.yaml").display().to_string()),
        };
        let lds_file = spec.dynamic_listener.then(|| dir.join("lds/listener.yaml"));
        write_config(&dir, &layout, lds_file.as_deref())?;
        let process = EnvoyProcess {
            concurrency: spec.concurrency,
            ..EnvoyProcess::in_dir(&envoy_bin, &dir)
        };
        let envoy = process.spawn().map_err(|e| setup_err("envoy", e))?;
        let (log_path, stderr_path) = (process.log_path, process.stderr_path);
        let tb = Self {
            listener: SocketAddr::new(layout.bind_ip, listen_port),
            admin: SocketAddr::new(layout.bind_ip, admin_port),
            upstreams: infos,
            log_path,
            stderr_path,
            layout,
            lds_file,
            backend: Backend::Process {
                envoy: Some(envoy),
                ups,
            },
            spec,
            dir,
        };
        tb.wait_ready()?;
        Ok(tb)
    }

    fn start_containers(
        spec: TestbedSpec,
        paths: &TestPaths,
        wasm: &Path,
        dir: PathBuf,
    ) -> Result<Self, String> {
        docker::require_docker()?;
        docker::remove_leftovers();
        let Images {
            envoy: envoy_image,
            upstream: upstream_image,
        } = docker::images(&paths.mg_upstream)?;
        let net = docker::run_name(&spec.name);
        let pid = std::process::id().to_string();
        let image = |tag: &str| {
            let (repo, version) = tag.rsplit_once(':').unwrap_or((tag, "latest"));
            GenericImage::new(repo, version)
        };

        let mut ups = Vec::new();
        let mut infos = Vec::new();
        let mut names = Vec::new();
        for i in 0..spec.upstreams {
            let name = format!("u{}", i + 1);
            let cname = format!("{net}-{name}");
            let c = image(&upstream_image)
                .with_wait_for(WaitFor::message_on_stdout(READY_PREFIX))
                .with_network(&net)
                .with_container_name(&cname)
                .with_label(LABEL_HARNESS, "1")
                .with_label(LABEL_PID, &pid)
                .with_cmd([
                    "--name".to_string(),
                    name.clone(),
                    "--listen".to_string(),
                    format!("0.0.0.0:{UPSTREAM_DATA_PORT}"),
                    "--admin".to_string(),
                    format!("0.0.0.0:{UPSTREAM_ADMIN_PORT}"),
                ])
                .with_startup_timeout(READY_LIMIT)
                .start()
                .map_err(|e| setup_err(&format!("container {cname}"), e))?;
            let ip = c
                .get_bridge_ip_address()
                .map_err(|e| setup_err(&format!("address of {cname}"), e))?;
            infos.push(UpstreamInfo {
                name,
                data: SocketAddr::new(ip, UPSTREAM_DATA_PORT),
                admin: UpstreamAdmin::new(SocketAddr::new(ip, UPSTREAM_ADMIN_PORT)),
            });
            names.push(cname);
            ups.push(Some(c));
        }

        fs::copy(wasm, dir.join("meshguard.wasm")).map_err(|e| setup_err("copy the module", e))?;
        let layout = Layout {
            bind_ip: IpAddr::V4(Ipv4Addr::UNSPECIFIED),
            admin_port: ENVOY_ADMIN_PORT,
            listen_port: ENVOY_LISTEN_PORT,
            endpoints: infos.iter().map(|u| u.data).collect(),
            wasm_path: format!("{MOUNT}/meshguard.wasm"),
            plugin_config: spec.plugin_config.clone(),
            lds_path: spec
                .dynamic_listener
                .then(|| format!("{MOUNT}/lds/listener.yaml")),
        };
        let lds_file = spec.dynamic_listener.then(|| dir.join("lds/listener.yaml"));
        write_config(&dir, &layout, lds_file.as_deref())?;
        let log_path = dir.join("envoy.log");
        let stderr_path = dir.join("envoy.stderr");
        let stderr_log =
            Mutex::new(File::create(&stderr_path).map_err(|e| setup_err("envoy.stderr", e))?);
        let cname = format!("{net}-envoy");
        let mut cmd = vec!["-c".to_string(), format!("{MOUNT}/envoy.yaml")];
        cmd.extend(envoy_flags(spec.concurrency));
        cmd.extend(["--log-path".to_string(), format!("{MOUNT}/envoy.log")]);
        let envoy = image(&envoy_image)
            .with_network(&net)
            .with_container_name(&cname)
            .with_label(LABEL_HARNESS, "1")
            .with_label(LABEL_PID, &pid)
            .with_mount(Mount::bind_mount(dir.display().to_string(), MOUNT))
            .with_cmd(cmd)
            .with_log_consumer(move |frame: &LogFrame| {
                let bytes = match frame {
                    LogFrame::StdOut(b) | LogFrame::StdErr(b) => b,
                };
                if let Ok(mut f) = stderr_log.lock() {
                    let _ = f.write_all(bytes);
                }
            })
            .start()
            .map_err(|e| setup_err(&format!("container {cname}"), e))?;
        let ip = envoy
            .get_bridge_ip_address()
            .map_err(|e| setup_err(&format!("address of {cname}"), e))?;
        names.push(cname);
        let tb = Self {
            listener: SocketAddr::new(ip, ENVOY_LISTEN_PORT),
            admin: SocketAddr::new(ip, ENVOY_ADMIN_PORT),
            upstreams: infos,
            log_path,
            stderr_path,
            layout,
            lds_file,
            backend: Backend::Docker {
                envoy: Some(Box::new(envoy)),
                ups,
                names,
            },
            spec,
            dir,
        };
        tb.wait_ready()?;
        Ok(tb)
    }

    fn envoy_running(&self) -> bool {
        match &self.backend {
            Backend::Process { envoy, .. } => envoy.as_ref().is_some_and(|e| {
                // ChildGuard::exited needs &mut; /proc is enough to tell.
                Path::new(&format!("/proc/{}", e.id())).exists()
            }),
            Backend::Docker { envoy, .. } => envoy
                .as_ref()
                .is_some_and(|c| c.is_running().unwrap_or(false)),
        }
    }

    fn wait_ready(&self) -> Result<(), String> {
        let deadline = Instant::now() + READY_LIMIT;
        loop {
            if let Ok(r) = http::get(self.admin, "/ready", Duration::from_millis(500)) {
                if r.status == 200 {
                    println!(
                        "testbed {} ({:?}): envoy listener {} admin {}, upstreams {}; files in {}",
                        self.spec.name,
                        self.spec.mode,
                        self.listener,
                        self.admin,
                        self.upstreams
                            .iter()
                            .map(|u| format!("{}={}", u.name, u.data))
                            .collect::<Vec<_>>()
                            .join(" "),
                        self.dir.display()
                    );
                    return Ok(());
                }
            }
            let running = self.envoy_running();
            if !running || Instant::now() > deadline {
                std::thread::sleep(Duration::from_millis(300));
                return Err(format!(
                    "envoy {} (admin {}); log tail:\n{}\nstderr:\n{}",
                    if running {
                        "not ready in time"
                    } else {
                        "exited during startup"
                    },
                    self.admin,
                    last_lines(&self.log(), 30, |_| true),
                    last_lines(
                        &fs::read_to_string(&self.stderr_path).unwrap_or_default(),
                        30,
                        |_| true
                    )
                ));
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Stops upstream `i` as if its host went away: in Docker mode the
    /// container is stopped (kept until the testbed drops), in process mode
    /// the process is terminated.
    pub fn stop_upstream(&mut self, i: usize) {
        match &mut self.backend {
            Backend::Process { ups, .. } => drop(ups[i].take()),
            Backend::Docker { ups, names, .. } => {
                if let Some(c) = &ups[i] {
                    if let Err(e) = c.stop_with_timeout(Some(2)) {
                        let name = names[i].clone();
                        self.fail(&format!("cannot stop container {name}: {e}"));
                    }
                }
            }
        }
    }

    /// Replaces meshguard's configuration through the listener file (needs
    /// [`TestbedSpec::dynamic_listener`]): the file is written next to the
    /// old one and renamed over it, the atomic update Envoy's file watch
    /// expects. Envoy applies or rejects it asynchronously; see the
    /// `listener_manager.lds.update_success` / `update_rejected` stats.
    pub fn update_plugin_config(&mut self, config: &str) {
        let Some(file) = self.lds_file.clone() else {
            self.fail("update_plugin_config needs TestbedSpec::dynamic_listener(true)");
        };
        self.layout.plugin_config = config.to_string();
        let rendered = layout::render(&self.layout).unwrap_or_else(|e| self.fail(&e));
        let text = rendered.listener.unwrap_or_default();
        let tmp = file.with_extension("yaml.tmp");
        if let Err(e) = fs::write(&tmp, text).and_then(|()| fs::rename(&tmp, &file)) {
            self.fail(&format!("cannot replace {}: {e}", file.display()));
        }
    }
}

impl Harness for Testbed {
    fn upstream(&self, i: usize) -> UpstreamRef<'_> {
        UpstreamRef::from(&self.upstreams[i])
    }

    fn all_upstreams(&self) -> Vec<UpstreamRef<'_>> {
        self.upstreams.iter().map(UpstreamRef::from).collect()
    }

    fn listener(&self) -> SocketAddr {
        self.listener
    }

    fn envoy_admin(&self) -> SocketAddr {
        self.admin
    }

    fn log_path(&self) -> &Path {
        &self.log_path
    }

    fn stderr_path(&self) -> &Path {
        &self.stderr_path
    }

    fn dir(&self) -> &Path {
        &self.dir
    }

    /// In Docker mode, the container names.
    fn dump_extra(&self) -> String {
        match &self.backend {
            Backend::Docker { names, .. } => format!("\n\n--- containers\n{}", names.join("\n")),
            Backend::Process { .. } => String::new(),
        }
    }
}

impl Drop for Testbed {
    fn drop(&mut self) {
        // Envoy first, so it never sees its upstreams vanish while running;
        // the network goes with the last container.
        match &mut self.backend {
            Backend::Process { envoy, ups } => {
                drop(envoy.take());
                ups.clear();
            }
            Backend::Docker { envoy, ups, .. } => {
                drop(envoy.take());
                ups.clear();
            }
        }
    }
}

fn write_config(dir: &Path, layout: &Layout, lds_file: Option<&Path>) -> Result<(), String> {
    let r = layout::render(layout)?;
    fs::write(dir.join("envoy.yaml"), r.bootstrap).map_err(|e| setup_err("envoy.yaml", e))?;
    if let (Some(file), Some(text)) = (lds_file, r.listener) {
        fs::write(file, text).map_err(|e| setup_err("listener file", e))?;
    }
    Ok(())
}
