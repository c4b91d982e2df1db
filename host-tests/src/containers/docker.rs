//! Docker for the harness: is it usable, the images, names and labels of what
//! a run creates, and removal of what an earlier, killed run left behind.
//!
//! Containers and networks are created and removed through `testcontainers`
//! (see [`super::testbed`]); this module only shells out to the `docker` CLI
//! for the checks and the image build, which are one-off and simplest there.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::{Mutex, OnceLock};

/// Label on every container the harness starts (value "1").
pub const LABEL_HARNESS: &str = "org.meshguard.harness";
/// Label with the PID of the test process that started the container.
pub const LABEL_PID: &str = "org.meshguard.pid";
/// Every container and network name starts with `mgtest-<pid>-`.
pub const NAME_PREFIX: &str = "mgtest";

/// The two images, as built by `scripts/build-images.sh`.
#[derive(Debug, Clone)]
pub struct Images {
    /// `meshguard/envoy:<envoy version>`.
    pub envoy: String,
    /// `meshguard/mg-upstream:<crate version>`.
    pub upstream: String,
}

/// The repository root (host-tests' parent).
pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_else(|| PathBuf::from("."))
}

fn docker(args: &[&str]) -> Result<Output, String> {
    Command::new("docker")
        .args(args)
        .output()
        .map_err(|e| format!("cannot run `docker {}`: {e}", args.join(" ")))
}

/// Ok when the `docker` CLI is installed and its daemon answers; otherwise a
/// message saying what is missing and what to do. Checked once per process.
pub fn require_docker() -> Result<(), String> {
    static CHECK: OnceLock<Result<(), String>> = OnceLock::new();
    CHECK
        .get_or_init(|| {
            const HOW: &str = "This test runs Envoy and the upstreams in Docker containers \
                (harness mode Docker): install Docker and make sure this user can use it \
                (`docker info`), or run only the process-mode tests \
                (`cargo test -p host-tests --test envoy_steering`).";
            let out = Command::new("docker")
                .args(["version", "--format", "{{.Server.Version}}"])
                .output()
                .map_err(|e| {
                    format!("Docker is not available: cannot run `docker` ({e}). {HOW}")
                })?;
            if !out.status.success() {
                return Err(format!(
                    "Docker is not available: `docker version` failed: {}. {HOW}",
                    String::from_utf8_lossy(&out.stderr).trim()
                ));
            }
            Ok(())
        })
        .clone()
}

/// The images, built by `scripts/build-images.sh` if missing or out of date
/// (the script compares a hash of its inputs with the image label, so this
/// costs a few seconds when nothing changed). `mg_upstream` is the binary to
/// package; `MESHGUARD_ENVOY` names Envoy's (else the script installs it).
/// Runs once per process; later calls return the first answer.
pub fn images(mg_upstream: &Path) -> Result<Images, String> {
    static IMAGES: OnceLock<Result<Images, String>> = OnceLock::new();
    static BUILDING: Mutex<()> = Mutex::new(());
    if let Some(done) = IMAGES.get() {
        return done.clone();
    }
    let _one_at_a_time = BUILDING.lock().unwrap_or_else(|e| e.into_inner());
    IMAGES
        .get_or_init(|| {
            require_docker()?;
            let script = repo_root().join("scripts/build-images.sh");
            let out = Command::new("bash")
                .arg(&script)
                .env("MG_UPSTREAM", mg_upstream)
                .output()
                .map_err(|e| format!("cannot run {}: {e}", script.display()))?;
            let stdout = String::from_utf8_lossy(&out.stdout);
            let stderr = String::from_utf8_lossy(&out.stderr);
            if !out.status.success() {
                return Err(format!(
                    "building the test images failed ({}):\n{stderr}",
                    out.status
                ));
            }
            eprint!(
                "{}",
                stderr
                    .lines()
                    .filter(|l| l.starts_with("build-images:"))
                    .map(|l| format!("{l}\n"))
                    .collect::<String>()
            );
            let tag = |name: &str| {
                stdout
                    .lines()
                    .find_map(|l| l.strip_prefix(name)?.strip_prefix('='))
                    .map(str::to_string)
                    .ok_or_else(|| {
                        format!(
                            "{} did not report the {name} image:\n{stdout}",
                            script.display()
                        )
                    })
            };
            Ok(Images {
                envoy: tag("envoy")?,
                upstream: tag("mg-upstream")?,
            })
        })
        .clone()
}

/// `mgtest-<pid>-<test>`, with characters Docker refuses in names replaced.
pub fn run_name(test: &str) -> String {
    let clean: String = test
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == '.' {
                c
            } else {
                '-'
            }
        })
        .collect();
    format!("{NAME_PREFIX}-{}-{clean}", std::process::id())
}

fn pid_alive(pid: i32) -> bool {
    // SAFETY: signal 0 only checks that the process exists.
    pid > 0
        && (unsafe { libc::kill(pid, 0) } == 0
            || std::io::Error::last_os_error().raw_os_error() == Some(libc::EPERM))
}

/// Removes containers and networks of earlier runs whose test process is
/// gone (killed before its drop guards ran, e.g. SIGKILL). Runs of live
/// processes, including parallel ones, are left alone. Once per process.
pub fn remove_leftovers() {
    static DONE: OnceLock<()> = OnceLock::new();
    DONE.get_or_init(|| {
        let label = format!("label={LABEL_HARNESS}");
        let format = format!("{{{{.ID}}}} {{{{.Label \"{LABEL_PID}\"}}}}");
        if let Ok(out) = docker(&["ps", "-aq", "--filter", &label, "--format", &format]) {
            for line in String::from_utf8_lossy(&out.stdout).lines() {
                let mut it = line.split_whitespace();
                let (Some(id), pid) = (it.next(), it.next().and_then(|p| p.parse().ok())) else {
                    continue;
                };
                if !pid.is_some_and(pid_alive) {
                    eprintln!("harness: removing container {id} left by an earlier run");
                    let _ = docker(&["rm", "-f", "-v", id]);
                }
            }
        }
        let name_filter = format!("name={NAME_PREFIX}-");
        if let Ok(out) = docker(&[
            "network",
            "ls",
            "--filter",
            &name_filter,
            "--format",
            "{{.Name}}",
        ]) {
            for name in String::from_utf8_lossy(&out.stdout).lines() {
                let pid = name
                    .strip_prefix(NAME_PREFIX)
                    .and_then(|r| r.strip_prefix('-'))
                    .and_then(|r| r.split('-').next())
                    .and_then(|p| p.parse().ok());
                if pid.is_some_and(|p| !pid_alive(p)) {
                    eprintln!("harness: removing network {name} left by an earlier run");
                    let _ = docker(&["network", "rm", name]);
                }
            }
        }
    });
}

/// Names of this process's containers and networks that still exist (for
/// the tests that check the cleanup).
pub fn own_leftovers() -> Vec<String> {
    let prefix = format!("{NAME_PREFIX}-{}-", std::process::id());
    let filter = format!("name={prefix}");
    let mut found = Vec::new();
    for args in [
        vec![
            "ps",
            "-a",
            "--filter",
            &filter,
            "--format",
            "container {{.Names}}",
        ],
        vec![
            "network",
            "ls",
            "--filter",
            &filter,
            "--format",
            "network {{.Name}}",
        ],
    ] {
        if let Ok(out) = docker(&args) {
            found.extend(
                String::from_utf8_lossy(&out.stdout)
                    .lines()
                    .map(str::to_string),
            );
        }
    }
    found
}
