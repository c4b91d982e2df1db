//! Child processes that die with the bench, and loopback ports.

use std::io::{self, BufRead, BufReader};
use std::net::TcpListener;
use std::os::unix::process::CommandExt;
use std::process::{Child, Command};
use std::sync::mpsc;
use std::time::{Duration, Instant};

/// Owns a child: SIGTERM on drop, SIGKILL after `grace`, always reaped. The
/// child also gets PR_SET_PDEATHSIG, so an interrupted bench leaves nothing.
#[derive(Debug)]
pub struct ChildGuard {
    pub name: String,
    child: Child,
    grace: Duration,
}

impl ChildGuard {
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

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn exited(&mut self) -> Option<std::process::ExitStatus> {
        self.child.try_wait().ok().flatten()
    }

    /// Reads the child's first stdout line (within `limit`), then keeps
    /// draining stdout in the background so the child never blocks.
    pub fn first_stdout_line(&mut self, limit: Duration) -> io::Result<String> {
        let out = self
            .child
            .stdout
            .take()
            .ok_or_else(|| io::Error::other(format!("{}: no stdout pipe", self.name)))?;
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            let mut lines = BufReader::new(out).lines();
            let _ = tx.send(lines.next());
            for _ in lines {}
        });
        match rx.recv_timeout(limit) {
            Ok(Some(Ok(line))) => Ok(line),
            Ok(Some(Err(e))) => Err(e),
            Ok(None) => Err(io::Error::other(format!("{} exited early", self.name))),
            Err(_) => Err(io::Error::other(format!("{} not ready", self.name))),
        }
    }

    pub fn stop(&mut self) {
        if self.exited().is_some() {
            return;
        }
        if let Ok(pid) = libc::pid_t::try_from(self.child.id()) {
            // SAFETY: plain syscall on the PID of a child we have not reaped.
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

/// `n` distinct loopback ports that were free a moment ago.
pub fn free_ports(n: usize) -> io::Result<Vec<u16>> {
    let ls = (0..n)
        .map(|_| TcpListener::bind("127.0.0.1:0"))
        .collect::<io::Result<Vec<_>>>()?;
    ls.iter().map(|l| Ok(l.local_addr()?.port())).collect()
}

/// CPU time a process (all its threads) has used so far, from
/// `/proc/<pid>/stat` (utime + stime, in clock ticks of 10 ms).
pub fn cpu_time(pid: u32) -> io::Result<Duration> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    // Fields after the command name, which is in parentheses and may hold spaces.
    let rest = stat
        .rsplit_once(')')
        .map(|(_, rest)| rest)
        .ok_or_else(|| io::Error::other("unreadable /proc stat"))?;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // utime and stime are fields 14 and 15 of the whole line; `rest`
    // starts at field 3.
    let ticks = |i: usize| -> io::Result<u64> {
        fields
            .get(i - 3)
            .and_then(|f| f.parse().ok())
            .ok_or_else(|| io::Error::other("unreadable /proc stat"))
    };
    let hz = 100; // USER_HZ on Linux
    Ok(Duration::from_millis((ticks(14)? + ticks(15)?) * 1000 / hz))
}
