//! `make run`'s demo (scripts/run-demo.sh), checked the way a new user
//! meets it: the scenes tell their story and meshguard ejects the broken
//! host; the live table reacts to a host broken by hand; Ctrl-C, a closed
//! stdout pipe, or `| tee` then Ctrl-C leave nothing running and free the
//! ports; a busy port names the process holding it.
//!
//! Needs MESHGUARD_WASM and MESHGUARD_ENVOY (`make test` sets them); the
//! demo runs in fast mode (MG_DEMO_FAST=1) on ports picked free here, with
//! its run directory (logs, rendered config) in target/tmp/demo/<test>/.

use std::io::{BufRead, BufReader, Read};
use std::net::TcpListener;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc::{self, Receiver};
use std::time::{Duration, Instant};

/// The demo's ports, in the order of its knobs: listener with meshguard,
/// Envoy alone, Envoy admin, three upstream data ports, three admin ports.
struct Ports(Vec<u16>);

impl Ports {
    /// Nine ports the OS says are free now (held together while picking, so
    /// they are distinct).
    fn pick() -> Self {
        let held: Vec<TcpListener> = (0..9)
            .map(|_| TcpListener::bind("127.0.0.1:0").expect("bind a free port"))
            .collect();
        Ports(
            held.iter()
                .map(|l| l.local_addr().expect("local addr").port())
                .collect(),
        )
    }
    fn envoy(&self) -> u16 {
        self.0[0]
    }
    fn alone(&self) -> u16 {
        self.0[1]
    }
    fn upstream_admin(&self, i: usize) -> u16 {
        self.0[6 + i]
    }
    fn list(&self, from: usize) -> String {
        self.0[from..from + 3]
            .iter()
            .map(u16::to_string)
            .collect::<Vec<_>>()
            .join(" ")
    }

    /// Ports still bound by someone (std's bind sets SO_REUSEADDR, so
    /// connections in TIME_WAIT do not count; Envoy's SO_REUSEPORT
    /// listeners and mg-upstream's do).
    fn busy(&self) -> Vec<u16> {
        self.0
            .iter()
            .copied()
            .filter(|p| TcpListener::bind(("127.0.0.1", *p)).is_err())
            .collect()
    }
}

fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("host-tests sits in the repository")
        .to_path_buf()
}

/// The script with everything `make run` passes, in fast mode, on `ports`.
fn demo_command(name: &str, ports: &Ports) -> (Command, PathBuf) {
    let wasm = host_tests::MESHGUARD_WASM.require();
    let envoy = host_tests::ENVOY_BIN.require();
    let paths = host_tests::test_paths!();
    let run_dir = paths.tmp_dir.join("demo").join(name);
    let _ = std::fs::remove_dir_all(&run_dir);
    let mut cmd = Command::new(repo_root().join("scripts/run-demo.sh"));
    cmd.env("MESHGUARD_WASM", wasm)
        .env("MESHGUARD_ENVOY", envoy)
        .env("MG_UPSTREAM", &paths.mg_upstream)
        .env("MG_LOAD", env!("CARGO_BIN_EXE_mg-load"))
        .env("MG_ENVOY_CONFIG", env!("CARGO_BIN_EXE_mg-envoy-config"))
        .env("MG_DEMO_FAST", "1")
        .env("MG_DEMO_RUN_DIR", &run_dir)
        .env("MG_DEMO_PORT", ports.envoy().to_string())
        .env("MG_DEMO_ALONE_PORT", ports.alone().to_string())
        .env("MG_DEMO_ADMIN_PORT", ports.0[2].to_string())
        .env("MG_DEMO_UPSTREAM_PORTS", ports.list(3))
        .env("MG_DEMO_UPSTREAM_ADMIN_PORTS", ports.list(6))
        .stdin(Stdio::null());
    (cmd, run_dir)
}

/// A running demo: its stdout lines arrive on a channel (and are echoed
/// for `--nocapture`); stderr is collected.
struct Demo {
    child: Child,
    lines: Receiver<String>,
    seen: Vec<String>,
    stderr: Receiver<String>,
    run_dir: PathBuf,
}

impl Demo {
    fn start(name: &str, ports: &Ports, env: &[(&str, &str)]) -> Self {
        let (mut cmd, run_dir) = demo_command(name, ports);
        for (k, v) in env {
            cmd.env(k, v);
        }
        // Its own process group, as a shell gives a foreground job: Ctrl-C
        // is then a SIGINT to that group.
        cmd.process_group(0)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = cmd.spawn().expect("start scripts/run-demo.sh");
        let out = child.stdout.take().expect("stdout");
        let err = child.stderr.take().expect("stderr");
        let (tx, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(out).lines().map_while(Result::ok) {
                println!("{line}");
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        let (etx, stderr) = mpsc::channel();
        std::thread::spawn(move || {
            let mut s = String::new();
            let _ = BufReader::new(err).read_to_string(&mut s);
            let _ = etx.send(s);
        });
        Demo {
            child,
            lines,
            seen: Vec::new(),
            stderr,
            run_dir,
        }
    }

    /// Reads lines until one matches `pred`, within `limit`.
    fn wait_for(&mut self, what: &str, limit: Duration, pred: impl Fn(&str) -> bool) -> String {
        let deadline = Instant::now() + limit;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(line) => {
                    self.seen.push(line.clone());
                    if pred(&line) {
                        return line;
                    }
                }
                Err(_) => {
                    let _ = self.child.kill();
                    panic!(
                        "no {what} within {} s. stdout so far:\n{}\nstderr:\n{}",
                        limit.as_secs(),
                        self.seen.join("\n"),
                        self.stderr
                            .recv_timeout(Duration::from_secs(2))
                            .unwrap_or_default()
                    );
                }
            }
        }
    }

    /// PID and name of each process the demo started, from its pid file.
    fn children(&self) -> Vec<(u32, String)> {
        let text = std::fs::read_to_string(self.run_dir.join("pids")).unwrap_or_default();
        text.lines()
            .filter_map(|l| {
                let (pid, name) = l.split_once(' ')?;
                Some((pid.parse().ok()?, name.to_string()))
            })
            .filter(|(_, name)| name != "script")
            .collect()
    }

    fn signal_group(&self, sig: libc::c_int) {
        assert_eq!(
            self.try_signal_group(sig),
            0,
            "kill(-{}, {sig})",
            self.child.id()
        );
    }

    fn try_signal_group(&self, sig: libc::c_int) -> libc::c_int {
        let Ok(pgid) = libc::pid_t::try_from(self.child.id()) else {
            return -1;
        };
        // SAFETY: plain syscall; the group is the script's, started above.
        unsafe { libc::kill(-pgid, sig) }
    }

    /// Waits for the script to exit, within `limit`.
    fn wait_exit(&mut self, limit: Duration) -> ExitStatus {
        let deadline = Instant::now() + limit;
        loop {
            if let Some(st) = self.child.try_wait().expect("wait") {
                return st;
            }
            if Instant::now() > deadline {
                let _ = self.child.kill();
                panic!(
                    "the demo did not exit within {} s; stdout:\n{}",
                    limit.as_secs(),
                    self.seen.join("\n")
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn stderr_text(&self) -> String {
        self.stderr
            .recv_timeout(Duration::from_secs(5))
            .unwrap_or_default()
    }
}

impl Drop for Demo {
    fn drop(&mut self) {
        // A failed assertion must not leave the demo running either.
        if self.child.try_wait().ok().flatten().is_none() {
            self.try_signal_group(libc::SIGTERM);
            let _ = self.wait_exit_quiet(Duration::from_secs(8));
        }
    }
}

impl Demo {
    fn wait_exit_quiet(&mut self, limit: Duration) -> Option<ExitStatus> {
        let deadline = Instant::now() + limit;
        while Instant::now() < deadline {
            if let Ok(Some(st)) = self.child.try_wait() {
                return Some(st);
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = self.child.kill();
        None
    }
}

fn is_table_row(line: &str) -> bool {
    // "     3s │    0/50  34% ...": seconds, then the first column bar.
    let t = line.trim_start();
    t.split_once("s │")
        .is_some_and(|(n, _)| !n.is_empty() && n.chars().all(|c| c.is_ascii_digit()))
}

/// Whether `pid` still runs the program the demo started (pids are
/// recycled: a process whose command line lacks `marker` is someone else).
fn still_running(pid: u32, marker: &str) -> bool {
    match std::fs::read(format!("/proc/{pid}/cmdline")) {
        Ok(raw) => String::from_utf8_lossy(&raw).contains(marker),
        Err(_) => false,
    }
}

/// Nothing of the run is left: no process from its pid file, no bound port.
/// Envoy takes about a second to close its listeners after SIGTERM, and the
/// script waits for it; a little slack covers the kernel's bookkeeping.
fn assert_nothing_left(what: &str, children: &[(u32, String)], ports: &Ports, run_dir: &Path) {
    assert!(
        children.len() >= 5,
        "{what}: the pid file should list 3 upstreams, Envoy and mg-load: {children:?}"
    );
    let run_dir = run_dir.to_string_lossy().to_string();
    let deadline = Instant::now() + Duration::from_secs(3);
    loop {
        let left: Vec<_> = children
            .iter()
            .filter(|(pid, name)| {
                // What only this run's process has on its command line:
                // Envoy the run directory, mg-load the listener's port, an
                // upstream its admin port.
                let marker = match name.as_str() {
                    "envoy" => run_dir.clone(),
                    "mg-load" => format!(":{}/", ports.envoy()),
                    "u1" => format!(":{}", ports.upstream_admin(0)),
                    "u2" => format!(":{}", ports.upstream_admin(1)),
                    _ => format!(":{}", ports.upstream_admin(2)),
                };
                still_running(*pid, &marker)
            })
            .collect();
        let busy = ports.busy();
        if left.is_empty() && busy.is_empty() {
            return;
        }
        if Instant::now() > deadline {
            panic!("{what}: still running: {left:?}; ports still bound: {busy:?}");
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn scenes_narrate_and_meshguard_ejects_the_broken_host() {
    let ports = Ports::pick();
    let mut demo = Demo::start("scenes", &ports, &[("MG_DEMO_LIVE_SECONDS", "2")]);
    demo.wait_for("first table row", Duration::from_secs(20), is_table_row);
    let children = demo.children();
    let status = demo.wait_exit(Duration::from_secs(85));
    // Whatever is left in the pipe.
    while let Ok(l) = demo.lines.recv_timeout(Duration::from_millis(500)) {
        demo.seen.push(l);
    }
    let out = demo.seen.join("\n");
    let stderr = demo.stderr_text();
    assert!(
        status.success(),
        "demo failed: {status}\n{out}\nstderr:\n{stderr}"
    );
    for title in [
        "== Scene 1: hard failure: u2 answers 503 to everything ==",
        "== Scene 2: grey failure: u2 fails 30% of requests, at random ==",
        "== Scene 3: slow host: u3 takes 250 ms to answer",
        "== Scene 4: the whole service is down",
        "== Your turn ==",
    ] {
        assert!(out.contains(title), "missing scene {title:?}:\n{out}");
    }
    // Scene 1 (up to scene 2): meshguard ejected u2 and steered around it,
    // Envoy alone ejected it too, and both are measured.
    let scene1 = out
        .split("== Scene 1")
        .nth(1)
        .and_then(|s| s.split("== Scene 2").next())
        .unwrap_or_default();
    assert!(
        scene1.contains("» meshguard: u2 Healthy -> Unhealthy"),
        "scene 1: meshguard should eject u2:\n{scene1}"
    );
    assert!(
        scene1
            .lines()
            .any(|l| is_table_row(l) && l.contains("Unhealthy 0%")),
        "scene 1: a row should show u2 ejected at weight 0:\n{scene1}"
    );
    assert!(
        scene1.contains("» Envoy alone: u2 ejected"),
        "scene 1: Envoy's own detection should eject u2 too:\n{scene1}"
    );
    assert!(
        scene1.contains("measured: errors") && scene1.contains("Envoy alone"),
        "scene 1: the measured comparison is missing:\n{scene1}"
    );
    // Every scene ends with its measurements, and the breaker scene shows
    // the breaker opening.
    assert!(
        out.matches("over these ").count() >= 4,
        "a scene summary is missing:\n{out}"
    );
    assert!(
        out.contains("» meshguard: breaker Closed -> Open"),
        "scene 4: meshguard's breaker should open:\n{out}"
    );
    assert!(
        out.contains("curl -s -XPUT 127.0.0.1:") && out.contains("Press Ctrl-C"),
        "the live part should print the commands to break a host:\n{out}"
    );
    assert_nothing_left("after a full run", &children, &ports, &demo.run_dir);
}

/// Breaks u1 by hand through its behaviour endpoint, the way the demo's
/// "Your turn" tells a user to, and waits for the live table to show it.
fn break_u1_and_see_it(demo: &mut Demo, ports: &Ports) {
    let admin = format!("127.0.0.1:{}", ports.upstream_admin(0));
    let r = host_tests::http::request(
        admin.parse().expect("addr"),
        "PUT",
        "/behaviour",
        &[],
        br#"{"status":503}"#,
        Duration::from_secs(5),
    )
    .expect("PUT /behaviour");
    assert_eq!(r.status, 200, "PUT /behaviour: {}", r.body_text());
    demo.wait_for(
        "the live table reacting to u1 failing",
        Duration::from_secs(10),
        |l| l.contains("» meshguard: u1 Healthy -> Unhealthy"),
    );
    demo.wait_for("a row with u1 ejected", Duration::from_secs(5), |l| {
        is_table_row(l) && l.contains("Unhealthy 0%")
    });
}

#[test]
fn ctrl_c_in_the_live_table_stops_everything() {
    let ports = Ports::pick();
    let mut demo = Demo::start("ctrl_c", &ports, &[("MG_DEMO_SCENES", "")]);
    demo.wait_for("the live table", Duration::from_secs(20), |l| {
        l.contains("== Your turn ==")
    });
    break_u1_and_see_it(&mut demo, &ports);
    let children = demo.children();
    demo.signal_group(libc::SIGINT);
    let status = demo.wait_exit(Duration::from_secs(10));
    assert!(
        status.success(),
        "Ctrl-C is how the demo ends: exit 0, got {status}"
    );
    assert_nothing_left("after Ctrl-C", &children, &ports, &demo.run_dir.clone());
    assert!(
        !demo.run_dir.join("pids").exists(),
        "the pid file goes with the processes"
    );
}

#[test]
fn a_closed_stdout_pipe_stops_everything() {
    let ports = Ports::pick();
    let mut demo = Demo::start("closed_pipe", &ports, &[("MG_DEMO_SCENES", "")]);
    demo.wait_for("first table row", Duration::from_secs(20), is_table_row);
    let children = demo.children();
    // `make run | head -5`: the reader goes away. Dropping the receiver
    // ends the reader thread at its next line, which closes the pipe.
    let Demo { lines, .. } = &mut demo;
    let (_, dead) = mpsc::channel();
    drop(std::mem::replace(lines, dead));
    let status = demo.wait_exit(Duration::from_secs(15));
    let stderr = demo.stderr_text();
    assert!(
        status.success(),
        "a closed pipe ends the demo quietly, got {status}: {stderr}"
    );
    assert!(
        !stderr.contains("write error") && !stderr.contains("Broken pipe"),
        "no write errors on the way out: {stderr}"
    );
    assert_nothing_left(
        "after stdout closed",
        &children,
        &ports,
        &demo.run_dir.clone(),
    );
}

#[test]
fn tee_then_ctrl_c_stops_everything() {
    // The issue's case: `make run 2>&1 | tee run.log`, then Ctrl-C kills
    // tee with the script, and the cleanup writes to a dead pipe.
    let ports = Ports::pick();
    let (cmd, run_dir) = demo_command("tee", &ports);
    let log = run_dir.with_extension("log");
    let _ = std::fs::remove_file(&log);
    let script = repo_root().join("scripts/run-demo.sh");
    let mut shell = Command::new("bash");
    shell
        .arg("-c")
        .arg(format!(
            "'{}' 2>&1 | tee '{}' >/dev/null",
            script.display(),
            log.display()
        ))
        .envs(cmd.get_envs().filter_map(|(k, v)| Some((k, v?))))
        .env("MG_DEMO_SCENES", "")
        .stdin(Stdio::null())
        .process_group(0);
    let mut child = shell.spawn().expect("bash -c 'run-demo.sh | tee'");
    let deadline = Instant::now() + Duration::from_secs(20);
    while !std::fs::read_to_string(&log)
        .unwrap_or_default()
        .lines()
        .any(is_table_row)
    {
        assert!(
            Instant::now() < deadline,
            "no table row in {} within 20 s",
            log.display()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    let children: Vec<(u32, String)> = std::fs::read_to_string(run_dir.join("pids"))
        .unwrap_or_default()
        .lines()
        .filter_map(|l| {
            let (pid, name) = l.split_once(' ')?;
            Some((pid.parse().ok()?, name.to_string()))
        })
        .filter(|(_, n)| n != "script")
        .collect();
    let pgid = libc::pid_t::try_from(child.id()).expect("pid");
    // SAFETY: plain syscall on the process group started above.
    assert_eq!(unsafe { libc::kill(-pgid, libc::SIGINT) }, 0);
    let _ = child.wait();
    assert_nothing_left("after tee and Ctrl-C", &children, &ports, &run_dir);
}

#[test]
fn a_busy_port_names_the_process_holding_it() {
    let ports = Ports::pick();
    let holder = TcpListener::bind(("127.0.0.1", ports.alone())).expect("hold the port");
    let (mut cmd, _) = demo_command("busy_port", &ports);
    let started = Instant::now();
    let out = cmd.output().expect("run the demo");
    drop(holder);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success(),
        "the demo must fail on a busy port: {stderr}"
    );
    assert!(
        started.elapsed() < Duration::from_secs(15),
        "the check comes before anything starts"
    );
    let me = std::process::id();
    let exe = std::env::current_exe().expect("exe");
    let exe_name = exe.file_name().expect("name").to_string_lossy().to_string();
    assert!(
        stderr.contains(&format!("port {} is in use by pid {me} (", ports.alone()))
            && stderr.contains(&exe_name),
        "the message should name the holder (pid {me}, {exe_name}): {stderr}"
    );
    assert!(
        !stderr.contains("make stop"),
        "the holder is not a demo: no `make stop` hint: {stderr}"
    );
}
