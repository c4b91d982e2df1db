//! Child processes that die with the bench (host-tests' guard) and a
//! process's CPU time.

use std::io;
use std::time::Duration;

pub use host_tests::process::ChildGuard;

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
