//! Overhead as Envoy instructions per request, counted by callgrind: a
//! measure that does not move with the machine's load (wall-clock and CPU
//! time on a shared 2-core machine vary by 15 % and more; instruction counts
//! repeat to about 0.1 %), per upstream host count.
//!
//! Each run: one multi-host mg-upstream serving N hosts (127.0.1.x), Envoy
//! `--concurrency 1` under `valgrind --tool=callgrind` (instrumentation
//! switched on after startup: startup under callgrind takes minutes
//! otherwise) with the demo template's `demo` cluster listing the N
//! addresses. Warm-up (every host seen twice, connections open, V8 tiered
//! up, the row's incident detected), `callgrind_control -z`, a fixed number
//! of sequential keep-alive requests from our own client, `callgrind_control
//! -d`; then an idle stretch measured the same way, whose rate is subtracted
//! pro rata from the request stretch (Envoy's timers, meshguard's ticks).

use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use host_tests::http;
use host_tests::upstream::Fleet;
use host_tests::Behaviour;
use serde::{Deserialize, Serialize};
use std::fmt::Write as _;

use crate::envoy::{self, Envoy, Filter, Launch, Spec};
use crate::stats::{Spread, Table};

#[derive(Debug, Clone)]
pub struct Settings {
    pub envoy: PathBuf,
    pub meshguard: PathBuf,
    pub noop: PathBuf,
    /// The bare floor: meshguard's entry points, no SDK, no logic.
    pub bare: PathBuf,
    /// Host calls the Bare row makes (`BENCH_INSTR_BARE_CALLS`, words of
    /// `bench/bare-filter`), to price one call against the same entries.
    pub bare_calls: String,
    pub mg_upstream: PathBuf,
    pub work: PathBuf,
    pub sizes: Vec<usize>,
    pub rows: Vec<Row>,
    pub repeats: usize,
    /// Sequential requests before counting (at least twice the host count).
    pub warmup: u32,
    /// Counted sequential requests.
    pub requests: u32,
    pub idle: Duration,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Row {
    Plain,
    Noop,
    /// A do-nothing filter with meshguard's entry points and no SDK.
    Bare,
    /// The SDK's do-nothing filter making meshguard's healthy-path host
    /// calls and nothing else: the price of those calls.
    Diagnostic,
    Healthy,
    /// Healthy with `detection.successSampling: 16`.
    Sampled,
    /// Healthy with `detection.successSampling: 64`.
    Sampled64,
    /// Healthy plus meshguard's upstream instance on the router.
    Upstream,
    Steering,
    Failure,
}

/// The host that misbehaves in the Steering and Failure rows.
pub const BAD_HOST: usize = 1;

/// Steering: the bad host answers 503 to everything and is ejected after 5
/// in a row; an ejection of 300 s keeps it out for the whole measurement
/// (the default 30 s is shorter than a run under callgrind).
pub const STEERING_CONFIG: &str =
    r#"{"ejection":{"baseEjectionTime":"300s","maxEjectionTime":"300s"}}"#;

/// The Sampled row: defaults but sampled successes.
pub const SAMPLED_CONFIG: &str = r#"{"detection":{"successSampling":16}}"#;
/// The Sampled64 row: one success in 64 attributed.
pub const SAMPLED64_CONFIG: &str = r#"{"detection":{"successSampling":64}}"#;

/// How long the Sampled row keeps sending paced requests after the warm-up
/// before counting: sampling starts once a worker has seen no new host
/// (nor any failure) for 30 s (`EXACT_FOR_MS` in the filter).
const SAMPLING_SETTLE: Duration = Duration::from_secs(33);

/// The Upstream row's upstream instance: defaults but the mode.
pub const UPSTREAM_CONFIG: &str = r#"{"mode":"upstream"}"#;

impl Row {
    pub const ALL: [Row; 10] = [
        Row::Plain,
        Row::Noop,
        Row::Bare,
        Row::Diagnostic,
        Row::Healthy,
        Row::Sampled,
        Row::Sampled64,
        Row::Upstream,
        Row::Steering,
        Row::Failure,
    ];

    pub fn label(self) -> &'static str {
        match self {
            Row::Plain => "plain Envoy",
            Row::Noop => "do-nothing Rust wasm filter",
            Row::Bare => "do-nothing filter with meshguard's entry points (no SDK)",
            Row::Diagnostic => "do-nothing filter + meshguard's 2 healthy-path host calls",
            Row::Healthy => "meshguard, defaults, all hosts healthy",
            Row::Sampled => "meshguard, successSampling 16, all hosts healthy",
            Row::Sampled64 => "meshguard, successSampling 64, all hosts healthy",
            Row::Upstream => "meshguard with the upstream instance, all hosts healthy",
            Row::Steering => "meshguard steering (one host answering 503, ejected)",
            Row::Failure => "meshguard failure path (one host failing 40 %)",
        }
    }

    fn meshguard(self) -> bool {
        matches!(
            self,
            Row::Healthy
                | Row::Sampled
                | Row::Sampled64
                | Row::Upstream
                | Row::Steering
                | Row::Failure
        )
    }

    /// The upstream instance's configuration (the router's
    /// `upstream_http_filters`, Istio's placement), if the row has one.
    fn upstream_instance(self) -> Option<String> {
        (self == Row::Upstream).then(|| UPSTREAM_CONFIG.to_string())
    }

    fn filter(self, s: &Settings) -> Filter {
        match self {
            Row::Plain => Filter::None,
            Row::Noop => Filter::Wasm {
                path: s.noop.clone(),
                config: "{}".into(),
            },
            Row::Bare => Filter::Wasm {
                path: s.bare.clone(),
                config: s.bare_calls.clone(),
            },
            Row::Diagnostic => Filter::Wasm {
                path: s.noop.clone(),
                config: "host-calls".into(),
            },
            Row::Healthy | Row::Upstream | Row::Failure => Filter::Wasm {
                path: s.meshguard.clone(),
                config: "{}".into(),
            },
            Row::Steering => Filter::Wasm {
                path: s.meshguard.clone(),
                config: STEERING_CONFIG.into(),
            },
            Row::Sampled => Filter::Wasm {
                path: s.meshguard.clone(),
                config: SAMPLED_CONFIG.into(),
            },
            Row::Sampled64 => Filter::Wasm {
                path: s.meshguard.clone(),
                config: SAMPLED64_CONFIG.into(),
            },
        }
    }

    fn bad_behaviour(self) -> Option<Behaviour> {
        match self {
            Row::Steering => Some(Behaviour::status(503)),
            Row::Failure => Some(Behaviour::grey(503, 40)),
            _ => None,
        }
    }

    /// `Plain,Healthy` (BENCH_INSTR_ROWS).
    pub fn parse_list(s: &str) -> Result<Vec<Row>, String> {
        s.split(',')
            .map(str::trim)
            .filter(|w| !w.is_empty())
            .map(|w| {
                Row::ALL
                    .into_iter()
                    .find(|r| format!("{r:?}").eq_ignore_ascii_case(w))
                    .ok_or_else(|| {
                        let all: Vec<String> = Row::ALL.iter().map(|r| format!("{r:?}")).collect();
                        format!("BENCH_INSTR_ROWS: unknown row {w} ({})", all.join(", "))
                    })
            })
            .collect()
    }
}

/// Linear memory of one wasm VM, from /proc/<pid>/smaps.
#[derive(Debug, Clone, Copy, Serialize, Deserialize)]
pub struct VmMemory {
    /// Committed linear memory (the VM's memory size).
    pub kib: u64,
    /// Of that, resident (touched) pages.
    pub rss_kib: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Measurement {
    pub row: Row,
    pub hosts: usize,
    pub repeat: usize,
    /// Requests in each counted stretch.
    pub requests: u32,
    /// Requests in all counted stretches (what the counters below cover).
    pub counted_requests: u32,
    /// Every counted stretch, in order.
    pub stretches: Vec<Stretch>,
    /// The last two triples agreed (see [`Measurement::is_steady`]).
    pub steady: bool,
    /// Instructions (callgrind Ir) and seconds of the back-to-back
    /// stretches bracketing the last paced one (their mean).
    pub fast_ir: u64,
    pub fast_seconds: f64,
    /// The same for the last paced stretch (a pause between requests).
    pub paced_ir: u64,
    pub paced_seconds: f64,
    /// Instructions per second while busy that do not come with requests
    /// (timers, ticks), from the last triple.
    pub busy_per_second: f64,
    pub idle_ir: u64,
    pub idle_seconds: f64,
    /// Envoy's instructions per second while idle (main thread and the one
    /// worker together).
    pub idle_per_second: f64,
    /// Instructions per request: the difference between two stretches of
    /// the same duration, one with `requests` and one with half as many
    /// (see `EVEN_SPAN_OF_FAST`), less `busy_per_second` x their difference
    /// in seconds.
    pub per_request: f64,
    /// (fast_ir - busy_per_second x fast_seconds) / requests, last triple:
    /// the estimate before the even pair, which moved by up to 2 % between
    /// launches where ticks are busy.
    #[serde(default)]
    pub per_request_triple: f64,
    /// The even pair: half the requests, then all of them, over the same
    /// time.
    #[serde(default)]
    pub even: Option<(Stretch, Stretch)>,
    /// (fast_ir - idle_per_second x fast_seconds) / requests: what the
    /// idle rate alone would subtract (for comparison).
    pub per_request_idle_rate: f64,
    /// Requests sent before counting (provoking the incident included).
    pub warmup_requests: u32,
    pub non_200: u32,
    pub reconnects: u32,
    /// Requests the bad host received during the counted stretches.
    pub bad_host_requests: Option<u64>,
    /// meshguard logged a transition of the bad host before counting
    /// (Steering: `Healthy -> Unhealthy`; Failure: any).
    pub bad_host_detected: Option<bool>,
    /// Envoy's upstream retries during the counted stretches (so are the
    /// counters below).
    pub retries: u64,
    /// Envoy's upstream 5xx answers during the counted stretch.
    pub upstream_5xx: u64,
    /// Upstream connections Envoy opened during the counted stretch (0 when
    /// the warm-up opened one to every host and none was closed).
    pub upstream_connections: u64,
    pub wasm_vms: Option<u64>,
    pub vm_memory: Vec<VmMemory>,
    /// Envoy's `server.memory_allocated` (tcmalloc heap) after the run.
    pub heap_bytes: Option<u64>,
    /// Wall time of the whole run (startup to stop).
    pub run_seconds: f64,
}

impl Measurement {
    /// The last two F P F triples agree on per_request within [`STEADY`].
    pub fn is_steady(&self) -> bool {
        steady_of(&triples(&self.stretches, self.requests))
    }

    /// The measured path is the one the row is about: the bad host was
    /// graded before counting (Steering: ejected, and it got under half its
    /// fair share).
    pub fn path_ok(&self) -> bool {
        match self.row {
            Row::Failure => self.bad_host_detected == Some(true),
            Row::Steering => {
                let fair = f64::from(self.counted_requests) / self.hosts as f64;
                self.bad_host_detected == Some(true)
                    && self
                        .bad_host_requests
                        .is_some_and(|n| (n as f64) < fair / 2.0)
            }
            _ => true,
        }
    }
}

/// Sequential keep-alive HTTP/1.1 client.
struct KeepAlive {
    addr: SocketAddr,
    stream: Option<TcpStream>,
    connects: u32,
    raw: Vec<u8>,
}

const REQUEST: &[u8] = b"GET / HTTP/1.1\r\nHost: bench\r\n\r\n";

impl KeepAlive {
    fn new(addr: SocketAddr) -> Self {
        Self {
            addr,
            stream: None,
            connects: 0,
            raw: Vec::with_capacity(1024),
        }
    }

    fn once(&mut self) -> io::Result<u16> {
        if self.stream.is_none() {
            let s = TcpStream::connect_timeout(&self.addr, Duration::from_secs(30))?;
            s.set_nodelay(true)?;
            s.set_read_timeout(Some(Duration::from_secs(60)))?;
            s.set_write_timeout(Some(Duration::from_secs(60)))?;
            self.stream = Some(s);
            self.connects += 1;
        }
        let s = self
            .stream
            .as_mut()
            .ok_or_else(|| io::Error::other("no stream"))?;
        s.write_all(REQUEST)?;
        self.raw.clear();
        let mut buf = [0u8; 4096];
        loop {
            let n = s.read(&mut buf)?;
            if n == 0 {
                return Err(io::Error::other("connection closed"));
            }
            self.raw.extend_from_slice(&buf[..n]);
            if let Some(r) = http::parse_response(&self.raw, false)? {
                if r.header("connection")
                    .is_some_and(|c| c.eq_ignore_ascii_case("close"))
                {
                    self.stream = None;
                }
                return Ok(r.status);
            }
        }
    }

    /// One request; a dropped connection is reopened once.
    fn get(&mut self) -> io::Result<u16> {
        match self.once() {
            Ok(s) => Ok(s),
            Err(_) => {
                self.stream = None;
                self.once()
            }
        }
    }

    /// Sends `n` requests, paced as `pace` says; returns how many were
    /// answered with something other than a 200.
    fn send(&mut self, n: u32, pace: Pace) -> Result<u32, String> {
        let start = Instant::now();
        let mut bad = 0;
        for i in 0..n {
            let wait = match pace {
                Pace::Pause(pause) if i > 0 => pause,
                Pace::Pause(_) => Duration::ZERO,
                Pace::Over(total) => {
                    (start + total / n.max(1) * i).saturating_duration_since(Instant::now())
                }
            };
            if !wait.is_zero() {
                std::thread::sleep(wait);
            }
            match self.get() {
                Ok(200) => {}
                Ok(_) => bad += 1,
                Err(e) => return Err(format!("request through Envoy failed: {e}")),
            }
        }
        if let Pace::Over(total) = pace {
            if let Some(wait) = (start + total).checked_duration_since(Instant::now()) {
                std::thread::sleep(wait);
            }
        }
        Ok(bad)
    }
}

/// How a stretch's requests are spaced.
#[derive(Debug, Clone, Copy)]
enum Pace {
    /// This long between one answer and the next request (zero: back to
    /// back).
    Pause(Duration),
    /// The i-th of n requests leaves at i x total / n, and the stretch
    /// lasts `total`: two stretches of different sizes last the same time.
    Over(Duration),
}

/// Callgrind's interactive control of one process.
struct Callgrind {
    pid: u32,
    /// `--callgrind-out-file`; dumps are `<out>.1`, `<out>.2`, ...
    out: PathBuf,
}

impl Callgrind {
    /// Runs `callgrind_control <args> <pid>`; returns the instant halfway
    /// through the call (when valgrind acted on it, give or take 0.2 s).
    fn control(&self, args: &[&str]) -> Result<Instant, String> {
        let before = Instant::now();
        let out = Command::new("callgrind_control")
            .args(args)
            .arg(self.pid.to_string())
            .output()
            .map_err(|e| format!("cannot run callgrind_control: {e}"))?;
        let after = Instant::now();
        let text = String::from_utf8_lossy(&out.stdout);
        if !out.status.success() || !text.contains("OK") {
            return Err(format!(
                "callgrind_control {} {}: {text}{}",
                args.join(" "),
                self.pid,
                String::from_utf8_lossy(&out.stderr)
            ));
        }
        Ok(before + (after - before) / 2)
    }

    fn dumps(&self) -> Vec<(u32, PathBuf)> {
        let (Some(dir), Some(name)) = (
            self.out.parent(),
            self.out.file_name().and_then(|n| n.to_str()),
        ) else {
            return Vec::new();
        };
        let prefix = format!("{name}.");
        let mut v: Vec<(u32, PathBuf)> = std::fs::read_dir(dir)
            .into_iter()
            .flatten()
            .flatten()
            .filter_map(|e| {
                let f = e.file_name().to_str()?.to_string();
                let n: u32 = f.strip_prefix(&prefix)?.parse().ok()?;
                Some((n, e.path()))
            })
            .collect();
        v.sort();
        v
    }

    /// Dumps (and so zeroes) the counters; the instructions since the last
    /// zero or dump.
    fn dump(&self) -> Result<(u64, Instant), String> {
        let last = self.dumps().last().map_or(0, |d| d.0);
        let at = self.control(&["-d"])?;
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Some((_, path)) = self.dumps().into_iter().find(|d| d.0 > last) {
                if let Some(ir) = std::fs::read_to_string(&path)
                    .ok()
                    .as_deref()
                    .and_then(parse_summary)
                {
                    return Ok((ir, at));
                }
            }
            if Instant::now() > deadline {
                return Err(format!(
                    "no new callgrind dump after {} (pid {})",
                    self.out.display(),
                    self.pid
                ));
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

/// The `summary:` line of a callgrind dump (events: Ir only).
pub fn parse_summary(dump: &str) -> Option<u64> {
    dump.lines()
        .find_map(|l| l.strip_prefix("summary:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
}

/// Each wasm VM's linear memory: V8 reserves it with a guard region of
/// several GiB (one `---p` mapping) and commits the memory's current size
/// read-write right below it. Envoy's admin has no per-VM memory stat.
pub fn wasm_memories(smaps: &str) -> Vec<VmMemory> {
    struct Map {
        start: u64,
        end: u64,
        perms: String,
        rss_kib: u64,
    }
    let mut maps: Vec<Map> = Vec::new();
    for line in smaps.lines() {
        let mut words = line.split_whitespace();
        let first = words.next().unwrap_or("");
        if let Some((a, b)) = first.split_once('-') {
            if let (Ok(start), Ok(end)) = (u64::from_str_radix(a, 16), u64::from_str_radix(b, 16)) {
                maps.push(Map {
                    start,
                    end,
                    perms: words.next().unwrap_or("").to_string(),
                    rss_kib: 0,
                });
                continue;
            }
        }
        if let (Some(m), Some(v)) = (maps.last_mut(), line.strip_prefix("Rss:")) {
            m.rss_kib = v
                .split_whitespace()
                .next()
                .and_then(|x| x.parse().ok())
                .unwrap_or(0);
        }
    }
    const GUARD: u64 = 4 << 30;
    maps.windows(2)
        .filter(|w| {
            w[1].perms.starts_with("---")
                && w[1].end - w[1].start >= GUARD
                && w[0].end == w[1].start
                && w[0].perms.starts_with("rw")
        })
        .map(|w| VmMemory {
            kib: (w[0].end - w[0].start) / 1024,
            rss_kib: w[0].rss_kib,
        })
        .collect()
}

/// Counters and gauges from Envoy's admin `/stats` text.
fn stat(text: &str, name: &str) -> Option<u64> {
    text.lines().find_map(|l| {
        l.strip_prefix(name)?
            .strip_prefix(": ")?
            .trim()
            .parse()
            .ok()
    })
}

fn envoy_stats(e: &Envoy) -> String {
    e.admin_get("/stats", Duration::from_secs(30))
        .unwrap_or_default()
}

/// Installs valgrind from Debian when missing (as scripts/bench.sh does for wrk).
pub fn ensure_valgrind() -> Result<(), String> {
    let have = |c: &str| {
        Command::new("sh")
            .args(["-c", &format!("command -v {c} >/dev/null")])
            .status()
            .is_ok_and(|s| s.success())
    };
    if have("valgrind") && have("callgrind_control") {
        return Ok(());
    }
    // SAFETY: getuid has no preconditions.
    let root = unsafe { libc::getuid() } == 0;
    if !root || !have("apt-get") {
        return Err("valgrind is missing: sudo apt-get install valgrind".into());
    }
    eprintln!("instructions: installing valgrind from Debian packages...");
    let ok = Command::new("sh")
        .args([
            "-c",
            "apt-get update -qq >/dev/null && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq valgrind >/dev/null",
        ])
        .status()
        .is_ok_and(|s| s.success());
    if ok && have("callgrind_control") {
        Ok(())
    } else {
        Err("could not install valgrind (apt-get install valgrind)".into())
    }
}

/// One counted stretch: instructions and seconds.
#[derive(Debug, Clone, Copy, Serialize, Deserialize)]
pub struct Stretch {
    pub ir: u64,
    pub seconds: f64,
    pub paced: bool,
}

/// Two triples in a row must agree this closely (relative) on per_request.
const STEADY: f64 = 0.003;
/// At most this many F P F triples (2 x this + 1 stretches).
const MAX_TRIPLES: usize = 6;

fn close(a: f64, b: f64) -> bool {
    (a - b).abs() <= STEADY * b.abs()
}

/// (per_request, busy_per_second) of every F P F triple of `stretches`
/// (back to back at even positions, paced at odd ones).
pub fn triples(stretches: &[Stretch], requests: u32) -> Vec<(f64, f64)> {
    let n = f64::from(requests);
    (0..stretches.len().saturating_sub(1) / 2)
        .map(|k| {
            let (f1, p, f2) = (stretches[2 * k], stretches[2 * k + 1], stretches[2 * k + 2]);
            let f_ir = (f1.ir as f64 + f2.ir as f64) / 2.0;
            let f_s = (f1.seconds + f2.seconds) / 2.0;
            let busy = if p.seconds > f_s * 1.2 {
                (p.ir as f64 - f_ir) / (p.seconds - f_s)
            } else {
                f64::NAN
            };
            ((f_ir - busy * f_s) / n, busy)
        })
        .collect()
}

fn steady_of(est: &[(f64, f64)]) -> bool {
    let k = est.len();
    k >= 2 && close(est[k - 1].0, est[k - 2].0)
}

fn stretch(
    cg: &Callgrind,
    client: &mut KeepAlive,
    requests: u32,
    pace: Pace,
    non_200: &mut u32,
) -> Result<Stretch, String> {
    let t0 = cg.control(&["-z"])?;
    *non_200 += client.send(requests, pace)?;
    let (ir, t1) = cg.dump()?;
    Ok(Stretch {
        ir,
        seconds: (t1 - t0).as_secs_f64(),
        paced: !matches!(pace, Pace::Pause(p) if p.is_zero()),
    })
}

/// How long each stretch of the even pair lasts, in back-to-back stretches.
///
/// The even pair: after the F P F triples have settled, `requests / 2`
/// and then `requests` requests, each spread over the same time (this
/// many times the last back-to-back stretch, so the larger one runs at
/// under half the rate Envoy manages under callgrind and timers fire on
/// time in both). Work that comes with time (Envoy's timers, meshguard's
/// 100 ms ticks, which while serving cost about 1 M instructions a
/// second) is then the same in both and cancels; the triples' fit leaves
/// it to depend on how long the back-to-back stretch took, which on a
/// loaded machine moved the per-request figure of the rows with busy
/// ticks by up to 2 % between launches.
const EVEN_SPAN_OF_FAST: f64 = 2.5;

/// Instructions per request from an even pair: what the `requests - requests / 2`
/// more requests cost, less the busy rate for any difference in duration.
pub fn even_per_request(half: Stretch, full: Stretch, requests: u32, busy: f64) -> f64 {
    let extra = f64::from(requests - requests / 2);
    let seconds = full.seconds - half.seconds;
    let busy = if busy.is_finite() { busy } else { 0.0 };
    (full.ir as f64 - half.ir as f64 - busy * seconds) / extra
}

fn run_one(s: &Settings, row: Row, hosts: usize, repeat: usize) -> Result<Measurement, String> {
    let started = Instant::now();
    let dir = s.work.join(format!("{row:?}-{hosts}-{repeat}"));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).map_err(|e| e.to_string())?;
    let fleet = Fleet::start(&s.mg_upstream, "h", hosts, &dir)
        .map_err(|e| format!("mg-upstream --hosts {hosts}: {e}"))?;
    let bad = row.bad_behaviour();
    if let Some(b) = &bad {
        fleet
            .admin
            .set_behaviour(BAD_HOST, b)
            .map_err(|e| e.to_string())?;
    }
    let addrs: Vec<SocketAddr> = fleet.hosts.iter().map(|h| h.address).collect();
    let port = addrs[0].port();
    let spec = Spec {
        filter: row.filter(s),
        outlier_detection: None,
        event_log: None,
        access_log: false,
        concurrency: 1,
        upstream_ports: [port; 3],
        upstream_instance: row.upstream_instance(),
    };
    let out = dir.join("callgrind.out");
    let launch = Launch {
        prefix: [
            "valgrind",
            "--tool=callgrind",
            "--smc-check=all-non-file",
            "--dump-instr=no",
            "--instr-atstart=no",
            "--collect-atstart=yes",
        ]
        .iter()
        .map(|a| (*a).into())
        .chain(std::iter::once(
            format!("--callgrind-out-file={}", out.display()).into(),
        ))
        .collect(),
        ready_timeout: Duration::from_secs(600),
        grace: Duration::from_secs(60),
    };
    let mut envoy = Envoy::launch(
        &s.envoy,
        &dir,
        1,
        |admin, listen| envoy::with_endpoints(&envoy::render(&spec, admin, listen)?, &addrs),
        &launch,
    )
    .map_err(|e| format!("{row:?} at {hosts} hosts ({}): {e}", dir.display()))?;
    let cg = Callgrind {
        pid: envoy.pid(),
        out,
    };
    cg.control(&["-i", "on"])
        .map_err(|e| format!("instrumentation on: {e}"))?;
    let mut client = KeepAlive::new(envoy.listener);
    let bad_addr = addrs[BAD_HOST];
    let mut warmup = 0u32;
    // Steering and Failure: send until meshguard has graded the bad host
    // (Steering: ejected after 5 failures in a row; Failure: Degraded once
    // its window holds 20 outcomes; with round robin it sees every N-th
    // request), bounded, so the counted requests see the steady state.
    let mut detected = None;
    use meshguard::events::HostTransition;
    use meshguard::model::HostState;
    // The grade change that ends the warm-up: Unhealthy for Steering, any
    // for Failure.
    let bad_address = bad_addr.to_string();
    let graded = move |line: &str, want: Option<HostState>| {
        HostTransition::parse(line).is_some_and(|t| {
            t.address == bad_address
                && t.from == HostState::Healthy
                && want.is_none_or(|w| t.to == w)
        })
    };
    let provoke = match row {
        Row::Steering => Some((Some(HostState::Unhealthy), 10 * hosts as u32)),
        Row::Failure => Some((None, 30 * hosts as u32)),
        _ => None,
    };
    if let Some((want, per_host)) = provoke {
        let cap = s.warmup + per_host;
        let mut seen = false;
        while warmup < cap {
            client.send(100, Pace::Pause(Duration::ZERO))?;
            warmup += 100;
            std::thread::sleep(Duration::from_millis(300)); // log flush
            if envoy.log().lines().any(|l| graded(l, want)) {
                seen = true;
                break;
            }
        }
        detected = Some(seen);
        if !seen {
            eprintln!(
                "    WARNING: {row:?} at {hosts} hosts: meshguard did not grade {bad_addr} within {warmup} requests"
            );
        }
    }
    let main_warmup = s.warmup.max(2 * hosts as u32);
    client.send(main_warmup, Pace::Pause(Duration::ZERO))?;
    warmup += main_warmup;
    if matches!(row, Row::Sampled | Row::Sampled64) {
        let paced = 10 * SAMPLING_SETTLE.as_secs() as u32;
        client.send(paced, Pace::Pause(Duration::from_millis(100)))?;
        warmup += paced;
    }
    let before = envoy_stats(&envoy);
    let _ = fleet.admin.reset_stats();
    let connects_before = client.connects;

    // Counted stretches of the same requests, alternately back to back and
    // paced to take about twice as long: F P F P F ... Envoy's and
    // meshguard's timers (busy ticks every 100 ms) cost instructions per
    // second, and under callgrind a request takes ~50x longer than natively,
    // so they would be charged to requests ~50x too heavily. Each triple
    // F P F separates the two (instructions = per_request x requests +
    // busy_per_second x seconds, the two F bracketing P against drift);
    // triples repeat until two in a row agree on per_request, so one-off
    // work (meshguard settling its view of a large service, discovery's
    // share decaying) does not count.
    let mut stretches: Vec<Stretch> = Vec::new();
    let mut non_200 = 0;
    stretches.push(stretch(
        &cg,
        &mut client,
        s.requests,
        Pace::Pause(Duration::ZERO),
        &mut non_200,
    )?);
    loop {
        let last = stretches[stretches.len() - 1];
        let pause = Duration::from_secs_f64(last.seconds / f64::from(s.requests))
            .max(Duration::from_millis(1));
        stretches.push(stretch(
            &cg,
            &mut client,
            s.requests,
            Pace::Pause(pause),
            &mut non_200,
        )?);
        stretches.push(stretch(
            &cg,
            &mut client,
            s.requests,
            Pace::Pause(Duration::ZERO),
            &mut non_200,
        )?);
        let est = triples(&stretches, s.requests);
        let k = est.len();
        if (k >= 2 && close(est[k - 1].0, est[k - 2].0)) || k >= MAX_TRIPLES {
            break;
        }
    }
    let steady = steady_of(&triples(&stretches, s.requests));
    // The even pair (see `EVEN_SPAN_OF_FAST`): both paced, over the same time.
    let (per_request_triple, busy_per_second) = triples(&stretches, s.requests)
        .last()
        .copied()
        .unwrap_or((f64::NAN, f64::NAN));
    let fast_last = stretches[stretches.len() - 1].seconds;
    let span = Duration::from_secs_f64(fast_last * EVEN_SPAN_OF_FAST);
    let half = stretch(
        &cg,
        &mut client,
        s.requests / 2,
        Pace::Over(span),
        &mut non_200,
    )?;
    let full = stretch(&cg, &mut client, s.requests, Pace::Over(span), &mut non_200)?;
    let per_request = even_per_request(half, full, s.requests, busy_per_second);
    let n3 = stretches.len() - 3;
    let (f1, p, f2) = (stretches[n3], stretches[n3 + 1], stretches[n3 + 2]);
    let fast_ir = (f1.ir + f2.ir) / 2;
    let fast_seconds = (f1.seconds + f2.seconds) / 2.0;
    let (paced_ir, paced_seconds) = (p.ir, p.seconds);
    let counted = s.requests * stretches.len() as u32 + s.requests + s.requests / 2;
    let reconnects = client.connects - connects_before;
    let bad_host_requests = bad
        .as_ref()
        .and_then(|_| fleet.admin.host_stats(BAD_HOST).ok())
        .map(|h| h.requests);

    // Idle: after meshguard's switch to its idle tick (2 s without requests).
    std::thread::sleep(Duration::from_secs(3));
    let t2 = cg.control(&["-z"])?;
    std::thread::sleep(s.idle);
    let (idle_ir, t3) = cg.dump()?;

    let after = envoy_stats(&envoy);
    let delta = |name: &str| {
        stat(&after, name)
            .unwrap_or(0)
            .saturating_sub(stat(&before, name).unwrap_or(0))
    };
    let smaps = std::fs::read_to_string(format!("/proc/{}/smaps", envoy.pid())).unwrap_or_default();
    let idle_seconds = (t3 - t2).as_secs_f64();
    let idle_per_second = idle_ir as f64 / idle_seconds;
    let n = f64::from(s.requests);
    let per_request_idle_rate = (fast_ir as f64 - idle_per_second * fast_seconds) / n;
    let m = Measurement {
        row,
        hosts,
        repeat,
        requests: s.requests,
        counted_requests: counted,
        stretches,
        steady,
        fast_ir,
        fast_seconds,
        paced_ir,
        paced_seconds,
        busy_per_second,
        idle_ir,
        idle_seconds,
        idle_per_second,
        per_request,
        per_request_triple,
        even: Some((half, full)),
        per_request_idle_rate,
        warmup_requests: warmup,
        non_200,
        reconnects,
        bad_host_requests,
        bad_host_detected: detected,
        retries: delta("cluster.demo.upstream_rq_retry"),
        upstream_5xx: delta("cluster.demo.upstream_rq_5xx"),
        upstream_connections: delta("cluster.demo.upstream_cx_total"),
        wasm_vms: stat(&after, "wasm.wasm_vm_count"),
        vm_memory: wasm_memories(&smaps),
        heap_bytes: stat(&after, "server.memory_allocated"),
        run_seconds: 0.0,
    };
    envoy.stop();
    drop(fleet);
    Ok(Measurement {
        run_seconds: started.elapsed().as_secs_f64(),
        ..m
    })
}

/// Every row at every size, repeats interleaved (all of repeat 1, then all
/// of repeat 2), so drift shows up as spread.
pub fn run(s: &Settings) -> Result<Vec<Measurement>, String> {
    ensure_valgrind()?;
    std::fs::create_dir_all(&s.work).map_err(|e| e.to_string())?;
    let total = s.repeats * s.sizes.len() * s.rows.len();
    let mut out = Vec::new();
    for repeat in 0..s.repeats {
        for &hosts in &s.sizes {
            for &row in &s.rows {
                let m = run_one(s, row, hosts, repeat)?;
                eprintln!(
                    "  instructions {}/{total} {:>4} hosts {:<9} {:>9.0} instr/req (triple {:.0}, {:.0} with the idle rate)  busy {:.3} M/s  idle {:.3} M/s  {} stretches of {} req, {:.1} s back to back, {:.1} s paced (warm-up {}), run {:.0} s{}{}{}",
                    out.len() + 1,
                    hosts,
                    format!("{row:?}"),
                    m.per_request,
                    m.per_request_triple,
                    m.per_request_idle_rate,
                    m.busy_per_second / 1e6,
                    m.idle_per_second / 1e6,
                    m.stretches.len(),
                    m.requests,
                    m.fast_seconds,
                    m.paced_seconds,
                    m.warmup_requests,
                    m.run_seconds,
                    m.bad_host_requests
                        .map_or(String::new(), |n| format!("  bad host got {n}")),
                    if m.path_ok() { "" } else { "  (WARNING: bad host not graded)" },
                    if m.is_steady() { "" } else { "  (WARNING: not steady)" }
                );
                out.push(m);
            }
        }
    }
    Ok(out)
}

#[derive(Debug, Clone, Serialize)]
pub struct Summary {
    pub row: Row,
    pub label: &'static str,
    pub hosts: usize,
    pub runs: usize,
    pub per_request: Spread,
    /// (max - min) / median of the repeats, in percent.
    pub repeat_spread_percent: f64,
    pub idle_per_second: Spread,
    pub busy_per_second: Spread,
    pub path_ok: bool,
    /// Every run's back-to-back stretches agreed.
    pub steady: bool,
    /// Instructions per request of the first counted stretch, raw (right
    /// after the warm-up: what settling costs), median over runs.
    pub first_stretch_per_request: f64,
    /// Back-to-back stretches it took to settle, max over runs.
    pub stretches: usize,
    pub detected: Option<bool>,
    pub bad_host_requests: Option<u64>,
    pub retries_per_request: f64,
    pub upstream_5xx_per_request: f64,
    pub upstream_connections_per_request: f64,
    pub non_200_per_request: f64,
    pub wasm_vms: Option<u64>,
    /// The largest VM's linear memory, committed and resident; median over
    /// repeats.
    pub vm_memory_kib: Option<u64>,
    pub vm_rss_kib: Option<u64>,
    /// Every VM's linear memory summed (resident), median over repeats.
    pub all_vms_rss_kib: Option<u64>,
    pub heap_bytes: Option<u64>,
}

fn median_u64(mut v: Vec<u64>) -> Option<u64> {
    v.sort_unstable();
    v.get(v.len() / 2).copied()
}

pub fn summarize(ms: &[Measurement], sizes: &[usize], rows: &[Row]) -> Vec<Summary> {
    let mut out = Vec::new();
    for &row in rows {
        for &hosts in sizes {
            let of: Vec<&Measurement> = ms
                .iter()
                .filter(|m| m.row == row && m.hosts == hosts)
                .collect();
            if of.is_empty() {
                continue;
            }
            let pr: Vec<f64> = of.iter().map(|m| m.per_request).collect();
            let per_request = Spread::of(&pr).expect("not empty");
            let idle: Vec<f64> = of.iter().map(|m| m.idle_per_second).collect();
            let reqs: f64 = of.iter().map(|m| f64::from(m.counted_requests)).sum();
            out.push(Summary {
                row,
                label: row.label(),
                hosts,
                runs: of.len(),
                repeat_spread_percent: (per_request.max - per_request.min) / per_request.median
                    * 100.0,
                per_request,
                idle_per_second: Spread::of(&idle).expect("not empty"),
                busy_per_second: Spread::of(
                    &of.iter().map(|m| m.busy_per_second).collect::<Vec<f64>>(),
                )
                .expect("not empty"),
                path_ok: of.iter().all(|m| m.path_ok()),
                steady: of.iter().all(|m| m.is_steady()),
                first_stretch_per_request: Spread::of(
                    &of.iter()
                        .filter_map(|m| {
                            m.stretches
                                .first()
                                .map(|x| x.ir as f64 / f64::from(m.requests))
                        })
                        .collect::<Vec<f64>>(),
                )
                .map_or(f64::NAN, |x| x.median),
                stretches: of.iter().map(|m| m.stretches.len()).max().unwrap_or(0),
                detected: of
                    .iter()
                    .map(|m| m.bad_host_detected)
                    .try_fold(true, |acc, d| d.map(|d| acc && d)),
                bad_host_requests: of.iter().filter_map(|m| m.bad_host_requests).max(),
                retries_per_request: of.iter().map(|m| m.retries as f64).sum::<f64>() / reqs,
                upstream_5xx_per_request: of.iter().map(|m| m.upstream_5xx as f64).sum::<f64>()
                    / reqs,
                upstream_connections_per_request: of
                    .iter()
                    .map(|m| m.upstream_connections as f64)
                    .sum::<f64>()
                    / reqs,
                non_200_per_request: of.iter().map(|m| f64::from(m.non_200)).sum::<f64>() / reqs,
                wasm_vms: of.iter().filter_map(|m| m.wasm_vms).max(),
                vm_memory_kib: median_u64(
                    of.iter()
                        .filter_map(|m| m.vm_memory.iter().map(|v| v.kib).max())
                        .collect(),
                ),
                vm_rss_kib: median_u64(
                    of.iter()
                        .filter_map(|m| m.vm_memory.iter().map(|v| v.rss_kib).max())
                        .collect(),
                ),
                all_vms_rss_kib: median_u64(
                    of.iter()
                        .filter(|m| !m.vm_memory.is_empty())
                        .map(|m| m.vm_memory.iter().map(|v| v.rss_kib).sum())
                        .collect(),
                ),
                heap_bytes: median_u64(of.iter().filter_map(|m| m.heap_bytes).collect()),
            });
        }
    }
    out
}

fn find(sum: &[Summary], row: Row, hosts: usize) -> Option<&Summary> {
    sum.iter().find(|s| s.row == row && s.hosts == hosts)
}

/// 190,212 (thousands separated).
pub fn thousands(v: f64) -> String {
    let n = v.round() as i64;
    let digits = n.unsigned_abs().to_string();
    let mut out = String::new();
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    if n < 0 {
        format!("-{out}")
    } else {
        out
    }
}

fn size_label(n: usize) -> String {
    format!("{} hosts", thousands(n as f64))
}

/// Instructions per request: one row per variant, one column per size,
/// then each size against the smallest.
pub fn request_table(sum: &[Summary], sizes: &[usize], rows: &[Row]) -> Table {
    let mut header: Vec<String> = vec!["Envoy instructions per request".into()];
    header.extend(sizes.iter().map(|&n| size_label(n)));
    let base = sizes.first().copied().unwrap_or(0);
    header.extend(
        sizes
            .iter()
            .skip(1)
            .map(|&n| format!("{} / {}", thousands(n as f64), thousands(base as f64))),
    );
    let h: Vec<&str> = header.iter().map(String::as_str).collect();
    let mut t = Table::new(&h);
    for &row in rows {
        let mut cells = vec![row.label().to_string()];
        for &n in sizes {
            cells.push(find(sum, row, n).map_or("-".into(), |s| {
                let mut c = thousands(s.per_request.median);
                if s.runs > 1 {
                    c.push_str(&format!(" (±{:.2}%)", s.repeat_spread_percent / 2.0));
                }
                if row.meshguard() {
                    if let Some(noop) = find(sum, Row::Noop, n) {
                        c.push_str(&format!(
                            ", {:.3}x do-nothing",
                            s.per_request.median / noop.per_request.median
                        ));
                    }
                }
                if row == Row::Upstream {
                    if let Some(h) = find(sum, Row::Healthy, n) {
                        c.push_str(&format!(
                            ", {:.3}x healthy",
                            s.per_request.median / h.per_request.median
                        ));
                    }
                }
                if !s.path_ok {
                    c.push_str(", **bad host not graded**");
                }
                if !s.steady {
                    c.push_str(", **not steady**");
                }
                c
            }));
        }
        for &n in sizes.iter().skip(1) {
            cells.push(match (find(sum, row, n), find(sum, row, base)) {
                (Some(a), Some(b)) => {
                    format!("{:.3}", a.per_request.median / b.per_request.median)
                }
                _ => "-".into(),
            });
        }
        t.row(cells);
    }
    t
}

/// Idle instructions per second (and above plain Envoy), and the
/// per-second cost while serving that does not come with requests.
pub fn idle_table(sum: &[Summary], sizes: &[usize], rows: &[Row]) -> Table {
    let mut header: Vec<String> = vec![
        "Envoy instructions/s (main thread + 1 worker): idle (above plain); busy timers".into(),
    ];
    header.extend(sizes.iter().map(|&n| size_label(n)));
    let h: Vec<&str> = header.iter().map(String::as_str).collect();
    let mut t = Table::new(&h);
    for &row in rows {
        let mut cells = vec![row.label().to_string()];
        for &n in sizes {
            cells.push(find(sum, row, n).map_or("-".into(), |s| {
                let mut c = format!("{:.3} M", s.idle_per_second.median / 1e6);
                if row != Row::Plain {
                    if let Some(p) = find(sum, Row::Plain, n) {
                        c.push_str(&format!(
                            " ({:+.3} M)",
                            (s.idle_per_second.median - p.idle_per_second.median) / 1e6
                        ));
                    }
                }
                c.push_str(&format!("; busy {:.2} M", s.busy_per_second.median / 1e6));
                c
            }));
        }
        t.row(cells);
    }
    t
}

/// Wasm linear memory per VM and Envoy's heap.
pub fn memory_table(sum: &[Summary], sizes: &[usize], rows: &[Row]) -> Table {
    let mut header: Vec<String> = vec![
        "wasm linear memory of the largest VM, committed (resident); VMs (resident, all); Envoy heap".into(),
    ];
    header.extend(sizes.iter().map(|&n| size_label(n)));
    let h: Vec<&str> = header.iter().map(String::as_str).collect();
    let mut t = Table::new(&h);
    for &row in rows {
        let mut cells = vec![row.label().to_string()];
        for &n in sizes {
            cells.push(find(sum, row, n).map_or("-".into(), |s| {
                let heap = s
                    .heap_bytes
                    .map_or("-".into(), |b| format!("{:.1} MB", b as f64 / 1e6));
                match (s.vm_memory_kib, s.vm_rss_kib) {
                    (Some(k), Some(r)) => format!(
                        "{k} KiB ({r} KiB); {} VMs ({} KiB); heap {heap}",
                        s.wasm_vms.unwrap_or(0),
                        s.all_vms_rss_kib.unwrap_or(0)
                    ),
                    _ => format!("no wasm; heap {heap}"),
                }
            }));
        }
        t.row(cells);
    }
    t
}

/// What else each row did during the counted requests.
pub fn paths_table(sum: &[Summary], sizes: &[usize], rows: &[Row]) -> Table {
    let mut header: Vec<String> = vec![
        "counted stretches (first: its raw instructions per request); per counted request: upstream connections opened, retries, upstream 5xx, client non-200; bad host: graded before counting, requests it got".into(),
    ];
    header.extend(sizes.iter().map(|&n| size_label(n)));
    let h: Vec<&str> = header.iter().map(String::as_str).collect();
    let mut t = Table::new(&h);
    for &row in rows {
        let mut cells = vec![row.label().to_string()];
        for &n in sizes {
            cells.push(find(sum, row, n).map_or("-".into(), |s| {
                let mut c = format!(
                    "{} stretches, first {}; {:.4} cx, {:.4} retries, {:.4} 5xx, {:.4} non-200",
                    s.stretches,
                    thousands(s.first_stretch_per_request),
                    s.upstream_connections_per_request,
                    s.retries_per_request,
                    s.upstream_5xx_per_request,
                    s.non_200_per_request
                );
                if let Some(d) = s.detected {
                    c.push_str(&format!(
                        "; {}, got {}",
                        if d { "yes" } else { "no" },
                        s.bad_host_requests.map_or("-".into(), |b| b.to_string())
                    ));
                }
                c
            }));
        }
        t.row(cells);
    }
    t
}

fn verdict(ok: bool) -> &'static str {
    crate::verdict(ok)
}

/// The issue's targets, met or missed.
pub fn targets(sum: &[Summary], sizes: &[usize]) -> Vec<String> {
    let mut t = Vec::new();
    for &n in sizes {
        if let (Some(mg), Some(noop)) = (find(sum, Row::Healthy, n), find(sum, Row::Noop, n)) {
            let r = mg.per_request.median / noop.per_request.median;
            t.push(format!(
                "{}: meshguard healthy within 1.05x of the do-nothing filter per request: {} vs {} = {r:.3}x: {}",
                size_label(n),
                thousands(mg.per_request.median),
                thousands(noop.per_request.median),
                verdict(r <= 1.05)
            ));
        }
    }
    let base = sizes.first().copied().unwrap_or(0);
    for row in [Row::Healthy, Row::Upstream, Row::Steering, Row::Failure] {
        for &n in sizes.iter().skip(1) {
            if let (Some(a), Some(b)) = (find(sum, row, n), find(sum, row, base)) {
                let r = a.per_request.median / b.per_request.median;
                let ok = r <= 1.05 && a.path_ok && b.path_ok;
                t.push(format!(
                    "{}: per request at {} within 5 % of {}: {} vs {} = {r:.3}x{}: {}",
                    row.label(),
                    size_label(n),
                    size_label(base),
                    thousands(a.per_request.median),
                    thousands(b.per_request.median),
                    if a.path_ok && b.path_ok {
                        ""
                    } else {
                        " (the bad host was not graded: not the path this row is about)"
                    },
                    verdict(ok)
                ));
            }
        }
    }
    for &n in sizes {
        if let (Some(mg), Some(plain)) = (find(sum, Row::Healthy, n), find(sum, Row::Plain, n)) {
            let d = mg.idle_per_second.median - plain.idle_per_second.median;
            t.push(format!(
                "{}: idle meshguard under 0.2 M instructions/s above plain Envoy: {:+.3} M/s: {}",
                size_label(n),
                d / 1e6,
                verdict(d < 0.2e6)
            ));
        }
    }
    t
}

/// Where the instruction runs' files go.
pub fn work_dir(base: &Path) -> PathBuf {
    base.join("instructions")
}

/// What a set of runs measured, for rendering (kept in results.json).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Meta {
    pub date: String,
    pub module: String,
    pub sizes: Vec<usize>,
    pub rows: Vec<Row>,
    pub repeats: usize,
    pub warmup: u32,
    pub requests: u32,
    pub idle_s: u64,
}

pub const HEADING: &str = "## Overhead: Envoy instructions per request (callgrind)";

/// The results.md section and the results.json value of a set of runs.
pub fn section(meta: &Meta, runs: &[Measurement]) -> (String, serde_json::Value) {
    let (sizes, rows) = (&meta.sizes, &meta.rows);
    let sum = summarize(runs, sizes, rows);
    let mut md = String::new();
    let _ = writeln!(
        md,
        "{HEADING}\n\n\
         Measured {date}; module {module}. Envoy `--concurrency 1` under `valgrind --tool=callgrind \
         --smc-check=all-non-file` (instrumentation switched on after startup), the demo template's config with the \
         `demo` cluster listing N hosts (STATIC, round robin), all served by one `mg-upstream --hosts N` on 127.0.1.x. \
         Per run: a warm-up of max({warmup}, 2N) sequential keep-alive requests (Steering and Failure: first until \
         meshguard has graded the bad host: ejected, resp. Degraded; Upstream: meshguard at defaults plus its upstream \
         instance, configuration `{upstream}`, in the router's `upstream_http_filters` before `upstream_codec`, \
         Istio's placement: same plugin name and VM id, root id `meshguard-upstream`; cluster `demo` then has no \
         upstream filters of its own, so the one removing the steering header goes, as under Istio); then counted \
         stretches of {requests} sequential keep-alive requests each (`callgrind_control -z` .. `-d`), alternately back to back (F) and paced to take about \
         twice as long (P): F P F P F ..., until two F P F triples in a row agree within {steady} % on the per-request \
         part (at most {max_triples} triples); then {idle} s idle (from 3 s after the last request) measured the same \
         way. Under callgrind a request takes ~50x longer than natively, so work done per second while serving \
         (Envoy's timers, meshguard's 100 ms busy tick) would weigh ~50x too much per request: each triple separates \
         it (instructions = per request x requests + busy x seconds, the two F bracketing P). The table's figure comes \
         after that, from an even pair: {half} requests and then {requests}, each spread evenly over {span} times the last F \
         stretch's duration, so that the per-second work is the same in both and cancels (per request = the difference in \
         instructions, less the triple's busy rate times any difference in seconds, over {half}); the triple's own figure \
         moved by up to 2 % between launches where meshguard's ticks are busy, because it depends on how long F took on a \
         loaded machine. Each cell is the median of {repeats} runs (separate Envoy processes, \
         interleaved); ± is half their range. **not steady**: the last two triples still differed by more than \
         {steady} %. Instructions do not depend on the machine's load, unlike the wall-clock tables below.\n",
        date = meta.date,
        module = meta.module,
        warmup = meta.warmup,
        requests = meta.requests,
        half = meta.requests / 2,
        span = EVEN_SPAN_OF_FAST,
        max_triples = MAX_TRIPLES,
        steady = STEADY * 100.0,
        idle = meta.idle_s,
        repeats = meta.repeats,
        upstream = UPSTREAM_CONFIG,
    );
    md.push_str(&request_table(&sum, sizes, rows).markdown());
    let _ = writeln!(
        md,
        "\nIdle: Envoy's whole process (main thread and its one worker), per second, and (in brackets) above plain \
         Envoy at the same size. Busy: the per-second part while serving (from the last triple).\n"
    );
    md.push_str(&idle_table(&sum, sizes, rows).markdown());
    let _ = writeln!(
        md,
        "\nMemory: Envoy's admin has no per-VM memory stat (only `wasm.wasm_vm_count`); the linear memory of each VM \
         is read from `/proc/<pid>/smaps` (the read-write mapping V8 commits right below each wasm memory's guard \
         reservation): the largest VM's, and all VMs' resident pages together. Heap: `server.memory_allocated` \
         (tcmalloc) after the run, under callgrind.\n"
    );
    md.push_str(&memory_table(&sum, sizes, rows).markdown());
    let _ = writeln!(
        md,
        "\nThe counted stretches, max over runs (the first one's raw instructions per request shows what settling \
         after the warm-up costs) and what the counted requests did besides answering (Envoy's `cluster.demo.upstream_cx_total`, \
         `upstream_rq_retry`, `upstream_rq_5xx`; the bad host's requests from mg-upstream's counters, max over runs).\n"
    );
    md.push_str(&paths_table(&sum, sizes, rows).markdown());
    let _ = writeln!(md, "\nTargets (issues 12 and 14):\n");
    for t in targets(&sum, sizes) {
        let _ = writeln!(md, "- {t}");
    }
    let value =
        serde_json::json!({ "meta": meta, "module": meta.module, "runs": runs, "summary": sum });
    (md, value)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Time-bound work (the busy rate) cancels between the pair's two
    /// stretches; only the extra requests are counted, and a difference in
    /// duration is charged at the busy rate.
    #[test]
    fn even_pair_counts_only_the_extra_requests() {
        let busy = 1_000_000.0;
        let stretch = |requests: u32, seconds: f64| Stretch {
            ir: (200_000.0 * f64::from(requests) + busy * seconds) as u64,
            seconds,
            paced: true,
        };
        let per = even_per_request(stretch(1000, 20.0), stretch(2000, 20.0), 2000, busy);
        assert!((per - 200_000.0).abs() < 1e-6, "{per}");
        // A pair that ran 0.5 s apart in length, the busy rate known.
        let per = even_per_request(stretch(1000, 20.0), stretch(2000, 20.5), 2000, busy);
        assert!((per - 200_000.0).abs() < 1e-6, "{per}");
        // Without a busy rate the difference is charged to requests.
        let per = even_per_request(stretch(1000, 20.0), stretch(2000, 20.5), 2000, f64::NAN);
        assert!((per - 200_500.0).abs() < 1e-6, "{per}");
    }

    #[test]
    fn reads_callgrind_summary() {
        let dump = "version: 1\ncreator: callgrind-3.19.0\npid: 1\ncmd: envoy\npart: 1\n\nevents: Ir\nsummary: 260910916\n\nfl=(1)\nfn=(1)\n0 5\ntotals: 261851387\n";
        assert_eq!(parse_summary(dump), Some(260_910_916));
        assert_eq!(parse_summary("events: Ir\n"), None);
    }

    #[test]
    fn finds_wasm_linear_memories() {
        let smaps = "\
7fbe93a90000-7fbe94290000 rw-p 00000000 00:00 0 \nSize:               8192 kB\nRss:                  20 kB\n\
7fbe94290000-7fbe943a0000 rw-p 00000000 00:00 0 \nSize:               1088 kB\nRss:                  48 kB\n\
7fbe943a0000-7fc094290000 ---p 00000000 00:00 0 \nSize:            8387520 kB\nRss:                   0 kB\n\
7fc094290000-7fc094291000 ---p 00000000 00:00 0 \nSize:                  4 kB\nRss:                   0 kB\n";
        let v = wasm_memories(smaps);
        assert_eq!(v.len(), 1);
        assert_eq!((v[0].kib, v[0].rss_kib), (1088, 48));
    }

    #[test]
    fn formats_and_parses() {
        assert_eq!(thousands(190_212.4), "190,212");
        assert_eq!(thousands(999.0), "999");
        assert_eq!(thousands(1000.0), "1,000");
        assert_eq!(
            Row::parse_list("plain, Healthy").expect("rows"),
            vec![Row::Plain, Row::Healthy]
        );
        assert_eq!(
            Row::parse_list("Healthy,upstream").expect("rows"),
            vec![Row::Healthy, Row::Upstream]
        );
        assert!(Row::parse_list("x").is_err());
        assert_eq!(
            Row::Upstream.upstream_instance().as_deref(),
            Some(UPSTREAM_CONFIG)
        );
        assert!(Row::ALL
            .iter()
            .all(|&r| (r == Row::Upstream) == r.upstream_instance().is_some()));
    }

    #[test]
    fn steering_counts_only_when_the_host_is_out() {
        let m = Measurement {
            row: Row::Steering,
            hosts: 3,
            repeat: 0,
            requests: 1000,
            counted_requests: 4000,
            stretches: Vec::new(),
            steady: true,
            fast_ir: 0,
            fast_seconds: 1.0,
            paced_ir: 0,
            paced_seconds: 2.0,
            busy_per_second: 0.0,
            idle_ir: 0,
            idle_seconds: 1.0,
            idle_per_second: 0.0,
            per_request: 0.0,
            per_request_triple: 0.0,
            even: None,
            per_request_idle_rate: 0.0,
            warmup_requests: 0,
            non_200: 0,
            reconnects: 0,
            bad_host_requests: Some(60),
            bad_host_detected: Some(true),
            retries: 0,
            upstream_5xx: 0,
            upstream_connections: 0,
            wasm_vms: None,
            vm_memory: Vec::new(),
            heap_bytes: None,
            run_seconds: 0.0,
        };
        assert!(m.path_ok());
        let st = |ir: u64, seconds: f64, paced: bool| Stretch { ir, seconds, paced };
        // 200k per request and 1 M/s busy: 1000 requests back to back in
        // 4-6 s, paced in 12 s; the first stretch still settling.
        let steady = Measurement {
            stretches: vec![
                st(400_000_000, 5.0, false),
                st(212_000_000, 12.0, true),
                st(205_000_000, 5.0, false),
                st(212_000_000, 12.0, true),
                st(204_000_000, 4.0, false),
                st(212_000_000, 12.0, true),
                st(206_000_000, 6.0, false),
            ],
            ..m.clone()
        };
        let est = triples(&steady.stretches, 1000);
        assert_eq!(est.len(), 3);
        assert!((est[1].0 - 200_000.0).abs() < 1.0 && (est[1].1 - 1e6).abs() < 1.0);
        assert!(est[0].0 > 250_000.0, "{est:?}");
        assert!(steady.is_steady());
        let mut drifting = steady.clone();
        drifting.stretches[6] = st(196_000_000, 6.0, false);
        assert!(!drifting.is_steady());
        assert!(!Measurement {
            bad_host_requests: Some(1200),
            ..m.clone()
        }
        .path_ok());
        assert!(!Measurement {
            bad_host_detected: Some(false),
            ..m
        }
        .path_ok());
    }
}
