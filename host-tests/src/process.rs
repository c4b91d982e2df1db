//! Child processes that cannot outlive the test that started them.

use std::io::{self, BufRead, BufReader};
use std::os::unix::process::CommandExt;
use std::process::{Child, Command};
use std::sync::mpsc;
use std::time::{Duration, Instant};

/// Owns a child process: on drop (also while unwinding from a failed
/// assertion) it sends SIGTERM, waits up to `grace`, then SIGKILLs, and
/// always reaps the child so its PID (and Envoy's SO_REUSEPORT listeners)
/// are gone when drop returns.
#[derive(Debug)]
pub struct ChildGuard {
    name: String,
    child: Child,
    grace: Duration,
}

impl ChildGuard {
    /// Spawns `cmd`. The child also gets PR_SET_PDEATHSIG(SIGKILL), so an
    /// interrupted `cargo test` (no drop runs) does not leave it behind.
    pub fn spawn(name: &str, cmd: &mut Command, grace: Duration) -> io::Result<Self> {
        // SAFETY: prctl is async-signal-safe and touches no memory of ours.
        unsafe {
            cmd.pre_exec(|| {
                if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) != 0 {
                    return Err(io::Error::last_os_error());
                }
                Ok(())
            });
        }
        let child = cmd
            .spawn()
            .map_err(|e| io::Error::new(e.kind(), format!("cannot start {name}: {e}")))?;
        Ok(Self {
            name: name.to_string(),
            child,
            grace,
        })
    }

    pub fn id(&self) -> u32 {
        self.child.id()
    }

    pub fn take_stdout(&mut self) -> Option<std::process::ChildStdout> {
        self.child.stdout.take()
    }

    /// Reads the child's first stdout line (its ready line) within
    /// `limit`, then keeps draining stdout in the background so the child
    /// never blocks on a full pipe. The child needs `Stdio::piped()`.
    pub fn first_stdout_line(&mut self, limit: Duration) -> io::Result<String> {
        let name = self.name.clone();
        let out = self
            .take_stdout()
            .ok_or_else(|| io::Error::other(format!("{name}: no stdout pipe")))?;
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            let mut lines = BufReader::new(out).lines();
            let _ = tx.send(lines.next());
            for _ in lines {}
        });
        match rx.recv_timeout(limit) {
            Ok(Some(Ok(line))) => Ok(line),
            Ok(Some(Err(e))) => Err(e),
            Ok(None) => Err(io::Error::other(format!(
                "{name} exited before it was ready"
            ))),
            Err(_) => Err(io::Error::other(format!(
                "{name} not ready after {} s",
                limit.as_secs()
            ))),
        }
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// `Some(status)` if the child already exited.
    pub fn exited(&mut self) -> Option<std::process::ExitStatus> {
        self.child.try_wait().ok().flatten()
    }

    /// Stops the child (SIGTERM, then SIGKILL after the grace period) and reaps it.
    pub fn stop(&mut self) {
        if self.exited().is_some() {
            return;
        }
        if let Ok(pid) = libc::pid_t::try_from(self.child.id()) {
            // SAFETY: plain syscall on the PID of a child we have not reaped yet.
            unsafe {
                libc::kill(pid, libc::SIGTERM);
            }
        }
        let deadline = Instant::now() + self.grace;
        while Instant::now() < deadline {
            if self.exited().is_some() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for ChildGuard {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Asks the kernel to send `signal` to this process when its parent exits
/// (PR_SET_PDEATHSIG), for servers a script starts (the demo's): if the
/// script is killed with SIGKILL its cleanup never runs, and without this
/// the servers would keep their ports. `expected_parent` is the PID of the
/// process that started this one: if the parent is already another process
/// (it died before the call, and this one was reparented), the kernel would
/// never signal, so that is an error and the caller should exit.
pub fn die_with_parent(expected_parent: u32, signal: libc::c_int) -> io::Result<()> {
    // SAFETY: prctl(PR_SET_PDEATHSIG) only sets an attribute of this process.
    let rc = unsafe { libc::prctl(libc::PR_SET_PDEATHSIG, signal) };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: getppid has no preconditions and cannot fail.
    let parent = unsafe { libc::getppid() };
    if u32::try_from(parent).ok() != Some(expected_parent) {
        return Err(io::Error::other(format!(
            "parent {expected_parent} is gone (now a child of {parent})"
        )));
    }
    Ok(())
}
