//! `make bench`: meshguard's cost on the happy path against plain Envoy and a
//! do-nothing wasm filter, and its handling of incidents against Envoy's own
//! outlier detection. See docs/performance.md and scripts/bench.sh.
//!
//! ```text
//! mg-bench run            (configured by the environment, see Config::from_env)
//! mg-bench render         re-renders the instructions section of BENCH_OUT
//!                         (default bench/results) from its results.json
//! mg-bench serve --name u1 [--fail-first N]   static upstream for the overhead runs
//! ```

mod blackhole;
mod chart;
mod envoy;
mod incidents;
mod instructions;
mod overhead;
mod procs;
mod stats;
mod upstreams;

use std::fmt::Write as _;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Instant;

use host_tests::{RequiredFile, ENVOY_BIN, MESHGUARD_WASM};
use incidents::{Outcome, Scenario};

struct Config {
    envoy: PathBuf,
    meshguard: PathBuf,
    noop: PathBuf,
    bare: PathBuf,
    mg_upstream: PathBuf,
    out: PathBuf,
    work: PathBuf,
    quick: bool,
    /// BENCH_ONLY was set: splice the sections run into existing results.
    partial: bool,
    overhead: bool,
    incidents: bool,
    instructions: bool,
    instr: InstrConfig,
    scenarios: Vec<String>,
    /// BENCH_VARIANTS: incident variant ids to run (empty: all).
    variants: Vec<String>,
    rounds: usize,
    seconds: u32,
    connections: u32,
    rate: u32,
    pin: bool,
}

/// The callgrind part's knobs (see Config::from_env).
struct InstrConfig {
    sizes: Vec<usize>,
    rows: Vec<instructions::Row>,
    repeats: usize,
    warmup: u32,
    requests: u32,
    idle_s: u64,
}

fn env(name: &str) -> Option<String> {
    std::env::var(name).ok().filter(|v| !v.is_empty())
}

/// An input file of `make bench`, named by `var` (host_tests' one helper).
fn file_env(var: &'static str, what: &'static str) -> Result<PathBuf, String> {
    RequiredFile {
        var,
        what,
        how: "Run `make bench`.",
    }
    .path()
}

impl Config {
    /// MESHGUARD_ENVOY, MESHGUARD_WASM, NOOP_WASM, BARE_WASM, MG_UPSTREAM: inputs.
    /// BENCH_QUICK=1: a smoke run (1 round of 2 s, incidents at 1/5 length,
    /// instructions: 1 repeat of 300 requests at 3 and 100 hosts).
    /// BENCH_ONLY=instructions|overhead|incidents (comma list; the results
    /// of the other parts already in BENCH_OUT are kept), BENCH_SCENARIOS=a,c,f,ra,
    /// BENCH_VARIANTS=retries,retries-mgup (incident variant ids; all when unset;
    /// retries-mg-d0, retries-mgup-d0, retries-mgtuned-d0 run only when named),
    /// BENCH_ROUNDS, BENCH_SECONDS (per wrk run), BENCH_CONNECTIONS,
    /// BENCH_RATE (req/s of the incidents), BENCH_PIN=0 (no CPU pinning),
    /// BENCH_OUT, BENCH_WORK. Instructions (callgrind): BENCH_INSTR_SIZES=3,100,1000,
    /// BENCH_INSTR_ROWS=Plain,Noop,Bare,Diagnostic,Healthy,Sampled,Sampled64,Upstream,Steering,Failure, BENCH_INSTR_BARE_CALLS
    /// (host calls of the Bare row, to price one), BENCH_INSTR_REPEATS (2),
    /// BENCH_INSTR_WARMUP (1000), BENCH_INSTR_REQUESTS (2000), BENCH_INSTR_IDLE_S (10).
    fn from_env() -> Result<Self, String> {
        let quick = env("BENCH_QUICK").is_some_and(|v| v != "0");
        let only_text = env("BENCH_ONLY").unwrap_or_default();
        let only: Vec<&str> = only_text
            .split(',')
            .map(str::trim)
            .filter(|w| !w.is_empty())
            .collect();
        for w in &only {
            if !["overhead", "incidents", "instructions"].contains(w) {
                return Err(format!(
                    "BENCH_ONLY={only_text}: expected instructions, overhead or incidents"
                ));
            }
        }
        let part = |name: &str| only.is_empty() || only.contains(&name);
        let num = |k: &str, d: u64| -> Result<u64, String> {
            env(k).map_or(Ok(d), |v| {
                v.parse().map_err(|_| format!("{k}={v}: not a number"))
            })
        };
        Ok(Self {
            envoy: file_env(ENVOY_BIN.var, ENVOY_BIN.what)?,
            meshguard: file_env(MESHGUARD_WASM.var, MESHGUARD_WASM.what)?,
            noop: file_env(
                "NOOP_WASM",
                "the do-nothing wasm filter (bench/noop-filter)",
            )?,
            bare: file_env(
                "BARE_WASM",
                "the do-nothing filter with meshguard's entry points (bench/bare-filter)",
            )?,
            mg_upstream: file_env("MG_UPSTREAM", "the mg-upstream binary")?,
            out: PathBuf::from(env("BENCH_OUT").unwrap_or_else(|| {
                if quick {
                    "target/bench-quick"
                } else {
                    "bench/results"
                }
                .into()
            })),
            work: PathBuf::from(env("BENCH_WORK").unwrap_or_else(|| "target/bench-work".into())),
            quick,
            partial: !only.is_empty(),
            overhead: part("overhead"),
            incidents: part("incidents"),
            instructions: part("instructions"),
            instr: InstrConfig {
                sizes: match env("BENCH_INSTR_SIZES") {
                    Some(v) => v
                        .split(',')
                        .map(|x| {
                            x.trim()
                                .parse()
                                .map_err(|_| format!("BENCH_INSTR_SIZES={v}: not numbers"))
                        })
                        .collect::<Result<Vec<usize>, String>>()?,
                    None if quick => vec![3, 100],
                    None => vec![3, 100, 1000],
                },
                rows: match env("BENCH_INSTR_ROWS") {
                    Some(v) => instructions::Row::parse_list(&v)?,
                    None => instructions::Row::ALL.to_vec(),
                },
                repeats: num("BENCH_INSTR_REPEATS", if quick { 1 } else { 2 })?.max(1) as usize,
                warmup: num("BENCH_INSTR_WARMUP", if quick { 300 } else { 1000 })? as u32,
                requests: num("BENCH_INSTR_REQUESTS", if quick { 300 } else { 2000 })?.max(1)
                    as u32,
                idle_s: num("BENCH_INSTR_IDLE_S", if quick { 4 } else { 10 })?.max(1),
            },
            variants: env("BENCH_VARIANTS")
                .map(|s| s.split(',').map(|x| x.trim().to_string()).collect())
                .unwrap_or_default(),
            scenarios: env("BENCH_SCENARIOS")
                .map(|s| s.split(',').map(|x| x.trim().to_string()).collect())
                .unwrap_or_default(),
            rounds: num("BENCH_ROUNDS", if quick { 1 } else { 5 })? as usize,
            seconds: num("BENCH_SECONDS", if quick { 2 } else { 5 })? as u32,
            connections: num("BENCH_CONNECTIONS", 16)? as u32,
            rate: num("BENCH_RATE", 200)? as u32,
            pin: env("BENCH_PIN").is_none_or(|v| v != "0"),
        })
    }
}

fn civil(epoch_s: i64) -> String {
    let epoch_s = u64::try_from(epoch_s).unwrap_or(0);
    let (y, m, d) = meshguard::calendar::civil_from_days(epoch_s / 86_400);
    let secs = epoch_s % 86_400;
    format!(
        "{y:04}-{m:02}-{d:02} {:02}:{:02} UTC",
        secs / 3600,
        secs / 60 % 60
    )
}

fn machine() -> String {
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split_once(':'))
                .map(|(_, v)| v.trim().to_string())
        })
        .unwrap_or_else(|| "unknown CPU".into());
    let n = std::thread::available_parallelism().map_or(0, |n| n.get());
    let os = std::fs::read_to_string("/etc/os-release")
        .ok()
        .and_then(|s| {
            s.lines().find_map(|l| {
                l.strip_prefix("PRETTY_NAME=")
                    .map(|v| v.trim_matches('"').to_string())
            })
        })
        .unwrap_or_default();
    format!("{n} CPUs (nproc), {cpu}, {os}")
}

fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_default()
}

fn envoy_version(bin: &std::path::Path) -> String {
    std::process::Command::new(bin)
        .arg("--version")
        .output()
        .ok()
        .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
        .and_then(|s| {
            s.split_whitespace()
                .find(|w| w.contains("/1."))
                .map(|w| w.to_string())
        })
        .and_then(|w| w.split('/').nth(1).map(str::to_string))
        .unwrap_or_else(|| "?".into())
}

fn verdict(ok: bool) -> &'static str {
    if ok {
        "met"
    } else {
        "**missed**"
    }
}

fn find<'a>(outs: &'a [Outcome], sc: &str, v: &str) -> Option<&'a Outcome> {
    outs.iter().find(|o| o.scenario == sc && o.variant == v)
}

fn incident_targets(outs: &[Outcome]) -> Vec<String> {
    let mut t = Vec::new();
    let f = |sc: &str, v: &str| find(outs, sc, v).map(|o| o.failed);
    for sc in ["a", "b", "d"] {
        if let (Some(mg), Some(i10), Some(i50)) = (f(sc, "mg"), f(sc, "istio10"), f(sc, "istio50"))
        {
            t.push(format!(
                "({sc}) meshguard (defaults) fails fewer requests than every Istio-reachable native variant: {mg} vs {i10} (max 10%) and {i50} (max 50%): {}",
                verdict(mg < i10 && mg < i50)
            ));
        }
    }
    let p99 = |sc: &str, v: &str| find(outs, sc, v).map(|o| o.p99_ms);
    if let (Some(i10), Some(i50)) = (p99("c", "istio10"), p99("c", "istio50")) {
        for v in ["mg", "mg-slow", "mg-slow0"] {
            if let Some(m) = p99("c", v) {
                t.push(format!(
                    "(c) lower p99 (by 10% or more) than the Istio-reachable native variants, {v}: {m:.1} ms vs {i10:.1} / {i50:.1} ms: {}",
                    // A real improvement, not noise: at least 10% lower.
                    verdict(m < 0.9 * i10.min(i50))
                ));
            }
        }
    }
    for sc in ["a", "b"] {
        if let (Some(eq), Some(tu)) = (find(outs, sc, "mg-eq"), find(outs, sc, "tuned")) {
            t.push(format!(
                "({sc}) equal thresholds: no more failures than tuned native: {} vs {}: {}; faster detection: {} vs {} s: {}",
                eq.failed,
                tu.failed,
                verdict(eq.failed <= tu.failed),
                eq.detect_s.map_or("never".into(), |d| format!("{d:.2}")),
                tu.detect_s.map_or("never".into(), |d| format!("{d:.2}")),
                verdict(match (eq.detect_s, tu.detect_s) {
                    (Some(a), Some(b)) => a < b,
                    (Some(_), None) => true,
                    _ => false,
                })
            ));
        }
    }
    for (sc, v) in [("d", "mg"), ("e", "mg"), ("e", "mg-graded")] {
        if let (Some(mg), Some(tu)) = (find(outs, sc, v), f(sc, "tuned")) {
            t.push(format!(
                "({sc}) {} fails fewer requests than tuned native: {} vs {tu}: {}",
                mg.label,
                mg.failed,
                verdict(mg.failed < tu)
            ));
        }
    }
    if let Some(o) = find(outs, "f", "mg") {
        t.push(format!(
            "(f) breaker-open replies in under 2 ms: p99 {} ms over {} replies: {}",
            o.breaker_p99_ms.map_or("-".into(), |v| format!("{v:.2}")),
            o.breaker_replies,
            verdict(o.breaker_p99_ms.is_some_and(|v| v < 2.0))
        ));
    }
    t
}

/// The module measured: size, sha256 and the filter/ commit it was built
/// from (as far as git can tell: the module may be newer than the commit).
fn module_info(wasm: &std::path::Path) -> String {
    let run = |cmd: &str, args: &[&str]| {
        std::process::Command::new(cmd)
            .args(args)
            .output()
            .ok()
            .filter(|o| o.status.success())
            .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
    };
    let path = wasm.display().to_string();
    let sha = run("sha256sum", &[&path])
        .and_then(|s| {
            s.split_whitespace()
                .next()
                .map(|h| h[..h.len().min(12)].to_string())
        })
        .unwrap_or_else(|| "?".into());
    let size = std::fs::metadata(wasm).map_or(0, |m| m.len());
    // BENCH_MODULE_SOURCE: what the module was built from, when it is not
    // this work tree (for example a clean checkout of one commit).
    let source = env("BENCH_MODULE_SOURCE").unwrap_or_else(|| {
        let commit = run("git", &["log", "-1", "--format=%h %s", "--", "filter/"])
            .unwrap_or_else(|| "?".into());
        let dirty =
            run("git", &["status", "--porcelain", "--", "filter/"]).is_some_and(|s| !s.is_empty());
        format!(
            "filter/ at commit {commit}{}",
            if dirty {
                " plus uncommitted changes"
            } else {
                ""
            }
        )
    });
    format!(
        "`{}` ({size} bytes, sha256 {sha}…), {source}",
        wasm.file_name()
            .map_or(path.clone(), |n| n.to_string_lossy().into_owned()),
    )
}

/// `doc` with the section that starts at the line `heading` replaced by
/// `body` (up to the next `## ` heading or the closing run-time line); a
/// section not there yet goes before the first later one, else before
/// that closing line.
fn splice(doc: &str, heading: &str, body: &str) -> String {
    const ORDER: [&str; 3] = [
        "## Overhead: Envoy instructions per request (callgrind)",
        "## Overhead (happy path)",
        "## Incidents",
    ];
    let footer = "\nBench run time";
    let body = format!("{}\n", body.trim_matches('\n'));
    let at_line = |h: &str| {
        doc.match_indices(h)
            .find(|(i, _)| {
                (*i == 0 || doc.as_bytes()[i - 1] == b'\n') && doc[i + h.len()..].starts_with('\n')
            })
            .map(|(i, _)| i)
    };
    let end_from = |from: usize| {
        doc[from..]
            .find("\n## ")
            .or_else(|| doc[from..].find(footer))
            .map_or(doc.len(), |e| from + e + 1)
    };
    if let Some(start) = at_line(heading) {
        let end = end_from(start + 1);
        return format!(
            "{}{body}\n{}",
            &doc[..start],
            doc[end..].trim_start_matches('\n')
        );
    }
    let later = ORDER
        .iter()
        .skip_while(|h| **h != heading)
        .skip(1)
        .find_map(|h| at_line(h));
    let at = later.unwrap_or_else(|| doc.find(footer).map_or(doc.len(), |i| i + 1));
    format!("{}{body}\n{}", &doc[..at], &doc[at..])
}

/// `mg-bench render`: the instructions section of results.md again from the
/// runs in results.json (after a change to the tables, without re-measuring).
fn render_instructions() -> Result<(), String> {
    let out = PathBuf::from(env("BENCH_OUT").unwrap_or_else(|| "bench/results".into()));
    let md_path = out.join("results.md");
    let json_path = out.join("results.json");
    let text =
        std::fs::read_to_string(&json_path).map_err(|e| format!("{}: {e}", json_path.display()))?;
    let mut json: serde_json::Value = serde_json::from_str(&text).map_err(|e| e.to_string())?;
    let meta: instructions::Meta = serde_json::from_value(json["instructions"]["meta"].clone())
        .map_err(|e| format!("results.json has no instructions meta: {e}"))?;
    let runs: Vec<instructions::Measurement> =
        serde_json::from_value(json["instructions"]["runs"].clone()).map_err(|e| e.to_string())?;
    let (section, value) = instructions::section(&meta, &runs);
    let md = std::fs::read_to_string(&md_path).unwrap_or_default();
    std::fs::write(
        &md_path,
        splice(
            &md,
            "## Overhead: Envoy instructions per request (callgrind)",
            &section,
        ),
    )
    .map_err(|e| e.to_string())?;
    json["instructions"] = value;
    std::fs::write(
        &json_path,
        serde_json::to_string(&json).map_err(|e| e.to_string())?,
    )
    .map_err(|e| e.to_string())?;
    println!("{section}");
    Ok(())
}

fn run(cfg: &Config) -> Result<(), String> {
    let started = Instant::now();
    std::fs::create_dir_all(&cfg.out).map_err(|e| e.to_string())?;
    std::fs::create_dir_all(&cfg.work).map_err(|e| e.to_string())?;
    let date = civil(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs() as i64),
    );
    let machine = machine();
    let load_start = loadavg();
    let ev = envoy_version(&cfg.envoy);
    let mut md = String::new();
    let _ = writeln!(md, "# meshguard benchmark results\n");
    let _ = writeln!(
        md,
        "Measured {date} on {machine}; Envoy {ev}; command `make bench`{}. \
         Envoy, the upstreams and the load generators run as local processes on 127.0.0.1.\n",
        if cfg.quick {
            " (BENCH_QUICK=1: smoke run, not for publishing)"
        } else {
            ""
        }
    );
    let mut json =
        serde_json::json!({ "date": date, "machine": machine, "envoy": ev, "quick": cfg.quick });

    // Each part's markdown is md[start..] of its block: a section that a
    // BENCH_ONLY run splices into the existing results.md.
    let mut sections: Vec<(&str, std::ops::Range<usize>)> = Vec::new();

    if cfg.instructions {
        if let Some(n) = cfg
            .instr
            .sizes
            .iter()
            .find(|&&n| !(2..=10_000).contains(&n))
        {
            return Err(format!("BENCH_INSTR_SIZES: {n} hosts is outside 2-10000"));
        }
        let start = md.len();
        // A copy: `make build` elsewhere must not swap the module mid-run.
        let work = instructions::work_dir(&cfg.work);
        std::fs::create_dir_all(&work).map_err(|e| e.to_string())?;
        let module = module_info(&cfg.meshguard);
        let meshguard = work.join("meshguard.wasm");
        std::fs::copy(&cfg.meshguard, &meshguard)
            .map_err(|e| format!("copy {}: {e}", cfg.meshguard.display()))?;
        let s = instructions::Settings {
            envoy: cfg.envoy.clone(),
            meshguard,
            noop: cfg.noop.clone(),
            bare: cfg.bare.clone(),
            bare_calls: env("BENCH_INSTR_BARE_CALLS").unwrap_or_default(),
            mg_upstream: cfg.mg_upstream.clone(),
            work,
            sizes: cfg.instr.sizes.clone(),
            rows: cfg.instr.rows.clone(),
            repeats: cfg.instr.repeats,
            warmup: cfg.instr.warmup,
            requests: cfg.instr.requests,
            idle: std::time::Duration::from_secs(cfg.instr.idle_s),
        };
        eprintln!(
            "instructions: {} runs under callgrind ({} repeats x hosts {:?} x {} variants), {} counted requests each; module {module}",
            s.repeats * s.sizes.len() * s.rows.len(),
            s.repeats,
            s.sizes,
            s.rows.len(),
            s.requests
        );
        let runs = instructions::run(&s)?;
        let meta = instructions::Meta {
            date: date.clone(),
            module,
            sizes: s.sizes.clone(),
            rows: s.rows.clone(),
            repeats: s.repeats,
            warmup: s.warmup,
            requests: s.requests,
            idle_s: cfg.instr.idle_s,
        };
        let (section, value) = instructions::section(&meta, &runs);
        println!("\n{section}");
        md.push_str(&section);
        json["instructions"] = value;
        sections.push((
            "## Overhead: Envoy instructions per request (callgrind)",
            start..md.len(),
        ));
    }

    if cfg.overhead {
        let start = md.len();
        let pin = if cfg.pin && std::thread::available_parallelism().map_or(1, |n| n.get()) >= 2 {
            Some(("0".to_string(), "1-1023".to_string()))
        } else {
            None
        };
        let s = overhead::Settings {
            envoy: cfg.envoy.clone(),
            meshguard: cfg.meshguard.clone(),
            noop: cfg.noop.clone(),
            rounds: cfg.rounds,
            seconds: cfg.seconds,
            connections: cfg.connections,
            pin: pin.clone(),
            work: overhead::work_dir(&cfg.work),
        };
        eprintln!(
            "overhead: {} interleaved rounds of {} variants, wrk -t1 -c{} -d{}s, Envoy --concurrency 1{}",
            s.rounds,
            overhead::Variant::ALL.len(),
            s.connections,
            s.seconds,
            if pin.is_some() { ", Envoy on CPU 0, wrk and upstreams on the others" } else { "" }
        );
        let runs = overhead::run(&s)?;
        let sum = overhead::summarize(&runs, &overhead::Variant::ALL);
        let table = overhead::table(&sum, s.rounds).markdown();
        let _ = writeln!(
            md,
            "## Overhead (happy path)\n\n`wrk -t1 -c{} -d{}s --latency` through Envoy `--concurrency 1` to three static upstreams \
             (`mg-bench serve`: keep-alive, 17-byte 200 answers), {} rounds interleaved (plain, do-nothing filter, its host-call \
             diagnostic, meshguard, meshguard steering, then again), a 2 s warm-up before each run{}. Median of the rounds; spread is the min-max \
             of the rounds' req/s. Envoy's access log is off in every variant. The wasm variants use the template's \
             meshguard block, which also holds the native header_mutation filter that strips client-sent steering \
             headers.\n",
            s.connections,
            s.seconds,
            s.rounds,
            if pin.is_some() { "; Envoy pinned to CPU 0, wrk and the upstreams to CPU 1 (taskset)" } else { "" }
        );
        md.push_str(&table);
        let get = |v: overhead::Variant| sum.iter().find(|x| x.variant == v);
        if let (Some(mg), Some(noop)) = (
            get(overhead::Variant::Meshguard),
            get(overhead::Variant::Noop),
        ) {
            let _ = writeln!(
                md,
                "\nTargets: healthy-path throughput ≥ 0.90 of plain Envoy: {:.3}: {}; within 0.03 of the do-nothing filter: \
                 {:.3} vs {:.3} (gap {:.3}): {}; p99 added ≤ 0.2 ms: {:+.3} ms: {}.",
                mg.rps_ratio,
                verdict(mg.rps_ratio >= 0.90),
                mg.rps_ratio,
                noop.rps_ratio,
                noop.rps_ratio - mg.rps_ratio,
                verdict(noop.rps_ratio - mg.rps_ratio <= 0.03),
                mg.p99_added_ms,
                verdict(mg.p99_added_ms <= 0.2)
            );
        }
        println!("\n## Overhead\n\n{table}");
        json["overhead"] = serde_json::json!({ "runs": runs, "summary": sum });
        sections.push(("## Overhead (happy path)", start..md.len()));
    }

    if cfg.incidents {
        let start = md.len();
        let scale = if cfg.quick { 0.2 } else { 1.0 };
        // The Istio-shaped incidents (on Istio's default retries) first.
        let all: Vec<Scenario> = incidents::retry_scenarios(scale)
            .into_iter()
            .chain(incidents::scenarios(scale))
            .filter(|s| cfg.scenarios.is_empty() || cfg.scenarios.iter().any(|k| k == s.key))
            .collect();
        let s = incidents::Settings {
            envoy: cfg.envoy.clone(),
            meshguard: cfg.meshguard.clone(),
            mg_upstream: cfg.mg_upstream.clone(),
            rate: cfg.rate,
            work: cfg.work.join("incidents"),
            variants: cfg.variants.clone(),
        };
        let _ = writeln!(
            md,
            "\n## Incidents\n\nOpen-loop client at {} req/s per variant (requests leave on schedule whatever earlier \
             ones are doing; latency is from sending, connect included, to the whole response; 5 s timeout), \
             one connection per request, three mg-upstreams per variant, Envoy \
             `--concurrency 2`. All variants of a scenario run at the same time, side by side, one round each. \
             `failed` = client got anything but a 200. `detect` = seconds from the incident's start until the bad host gets \
             under 3/4 of its fair share for 0.5 s (for (f): until the first breaker reply). `full share back` = seconds \
             from the heal until the bad host keeps ≥ 90% of its fair share to the end of the run (`> n` = not within the run). \
             Charts: share of each second's requests per host and failed, for meshguard and native variants; the bar on \
             top is the bad host's state (meshguard: its transition log lines, rate-limited to 6 per host per minute, so \
             quick flapping can be missing; native: Envoy's outlier event log).\n\n\
             Measured {date} (load average {load_start}), module {}.\n",
            cfg.rate,
            module_info(&cfg.meshguard)
        );
        let mut outs: Vec<Outcome> = Vec::new();
        let mut last_retries = None;
        for sc in &all {
            let variants = incidents::selected_variants(sc, &cfg.variants);
            if variants.is_empty() {
                continue;
            }
            if last_retries != Some(sc.retries) {
                last_retries = Some(sc.retries);
                let _ = writeln!(md, "\n{}", incidents::group_intro(sc.retries));
            }
            eprintln!(
                "incident ({}) {}: {:.0} s, {} variants at once",
                sc.key,
                sc.title,
                sc.duration_s,
                variants.len()
            );
            let o = incidents::run_scenario(&s, sc)?;
            let table = if sc.retries {
                incidents::retry_table(sc, &o)
            } else {
                incidents::table(sc, &o)
            }
            .markdown();
            println!("\n## ({}) {}: {}\n\n{table}", sc.key, sc.title, sc.what);
            let _ = writeln!(
                md,
                "\n### ({}) {}\n\n{}.\n\n{table}",
                sc.key, sc.title, sc.what
            );
            let svg = cfg.out.join(format!("incident-{}.svg", sc.key));
            let ids: &[&str] = match sc.key {
                "c" => &["mg-slow", "mg-slow0", "istio50"],
                "e" => &["mg", "mg-graded", "tuned"],
                "f" => &["mg", "tuned"],
                _ if sc.retries => &["retries-mgtuned", "retries-mg", "retries-dr50"],
                _ => &["mg", "tuned", "istio50"],
            };
            let panels: Vec<&Outcome> = ids
                .iter()
                .filter_map(|v| o.iter().find(|x| x.variant == *v))
                .collect();
            match chart::render(&svg, sc, &panels) {
                Ok(()) => {
                    let _ = writeln!(md, "\n![({})](incident-{}.svg)", sc.key, sc.key);
                }
                Err(e) => eprintln!("  WARNING: chart {}: {e}", svg.display()),
            }
            outs.extend(o);
        }
        let mut targets = incidents::retry_targets(&outs);
        targets.extend(incident_targets(&outs));
        if !targets.is_empty() {
            let _ = writeln!(md, "\n### Targets\n");
            println!("\n## Incident targets\n");
            for t in &targets {
                let _ = writeln!(md, "- {t}");
                println!("- {t}");
            }
        }
        json["incidents"] = serde_json::to_value(&outs).map_err(|e| e.to_string())?;
        sections.push(("## Incidents", start..md.len()));
    }
    let total = started.elapsed().as_secs_f64();
    let _ = writeln!(
        md,
        "\nBench run time (without builds): {:.0} s. Load average at the start: {load_start}; at the end: {}.",
        total,
        loadavg()
    );
    json["run_seconds"] = serde_json::json!(total);
    let md_path = cfg.out.join("results.md");
    let json_path = cfg.out.join("results.json");
    let (md, json) = match (
        cfg.partial,
        std::fs::read_to_string(&md_path),
        std::fs::read_to_string(&json_path)
            .ok()
            .and_then(|t| serde_json::from_str::<serde_json::Value>(&t).ok()),
    ) {
        // A BENCH_ONLY run replaces only its sections of the existing results.
        (true, Ok(old_md), Some(mut old_json)) => {
            let mut out = old_md;
            for (heading, range) in &sections {
                out = splice(&out, heading, &md[range.clone()]);
            }
            for key in ["instructions", "overhead", "incidents"] {
                if let Some(v) = json.get(key) {
                    old_json[key] = v.clone();
                }
            }
            (out, old_json)
        }
        _ => (md, json),
    };
    std::fs::write(&md_path, md).map_err(|e| e.to_string())?;
    std::fs::write(
        &json_path,
        serde_json::to_string(&json).map_err(|e| e.to_string())?,
    )
    .map_err(|e| e.to_string())?;
    eprintln!(
        "\nwrote {} (results.md, results.json, incident-*.svg) in {total:.0} s",
        cfg.out.display()
    );
    Ok(())
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match args.first().map(String::as_str) {
        Some("serve") => {
            let mut name = "u".to_string();
            let mut fail_first = 0;
            let mut it = args.iter().skip(1);
            while let Some(a) = it.next() {
                match (a.as_str(), it.next()) {
                    ("--name", Some(v)) => name = v.clone(),
                    ("--fail-first", Some(v)) => fail_first = v.parse().unwrap_or(0),
                    _ => {
                        eprintln!("usage: mg-bench serve --name NAME [--fail-first N]");
                        return ExitCode::from(2);
                    }
                }
            }
            match upstreams::serve(&name, fail_first) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("mg-bench serve: {e}");
                    ExitCode::FAILURE
                }
            }
        }
        Some("render") => match render_instructions() {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("mg-bench render: {e}");
                ExitCode::FAILURE
            }
        },
        Some("run") | None => match Config::from_env().and_then(|c| run(&c)) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("mg-bench: {e}");
                ExitCode::FAILURE
            }
        },
        Some(other) => {
            eprintln!("mg-bench: unknown command {other} (run | render | serve)");
            ExitCode::from(2)
        }
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn splices_sections() {
        let doc = "# r\n\nMeasured x.\n## Overhead (happy path)\n\nold wall\n\n## Incidents\n\nold inc\n\nBench run time 1 s.\n";
        let ins = "## Overhead: Envoy instructions per request (callgrind)\n\nnew instr\n";
        let d = super::splice(
            doc,
            "## Overhead: Envoy instructions per request (callgrind)",
            ins,
        );
        assert_eq!(
            d,
            "# r\n\nMeasured x.\n## Overhead: Envoy instructions per request (callgrind)\n\nnew instr\n\n## Overhead (happy path)\n\nold wall\n\n## Incidents\n\nold inc\n\nBench run time 1 s.\n"
        );
        let d2 = super::splice(
            &d,
            "## Overhead: Envoy instructions per request (callgrind)",
            "\n## Overhead: Envoy instructions per request (callgrind)\n\nnewer\n",
        );
        assert!(d2.contains("\nnewer\n\n## Overhead (happy path)") && !d2.contains("new instr"));
        let d3 = super::splice(&d2, "## Incidents", "\n## Incidents\n\nnew inc\n");
        assert!(
            d3.ends_with("## Incidents\n\nnew inc\n\nBench run time 1 s.\n"),
            "{d3}"
        );
        let d4 = super::splice(
            "# r\n\nBench run time 1 s.\n",
            "## Incidents",
            "## Incidents\n\ni\n",
        );
        assert_eq!(d4, "# r\n\n## Incidents\n\ni\n\nBench run time 1 s.\n");
    }

    #[test]
    fn civil_dates() {
        assert_eq!(super::civil(0), "1970-01-01 00:00 UTC");
        assert_eq!(super::civil(1_709_251_200 + 3_660), "2024-03-01 01:01 UTC");
    }
}
