//! The plugin never traps, whatever the host hands it: randomised streams
//! of configurations, header maps, property answers, host-call faults,
//! shared-data corruption, clock jumps and event orders
//! (`host_tests::wasm_host::fuzz`). A modest number of cases runs in
//! `make test`; `make fuzz` runs a million (`MESHGUARD_FUZZ_CASES`,
//! `MESHGUARD_FUZZ_SEED`, `MESHGUARD_FUZZ_THREADS`; docs/safety.md has the
//! time it takes).
//!
//! Every case that ever trapped is kept in `never_trap_regressions.txt`
//! next to this file and replayed first, on every run. `make fuzz` appends
//! a case it finds there itself (`MESHGUARD_FUZZ_RECORD=1`); commit it with
//! the fix.

use std::path::PathBuf;
use std::time::Instant;

use host_tests::wasm_host::{fuzz, PluginModule};

fn env_u64(name: &str, default: u64) -> u64 {
    match std::env::var(name) {
        Ok(text) => {
            let text = text.trim();
            let parsed = match text.strip_prefix("0x") {
                Some(hex) => u64::from_str_radix(hex, 16),
                None => text.parse(),
            };
            parsed.unwrap_or_else(|_| panic!("{name}={text} is not a number"))
        }
        Err(_) => default,
    }
}

fn regressions_path() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/never_trap_regressions.txt")
}

/// The regression file's cases: `<seed> <note>` per line (`0x` hex or
/// decimal), `#` comments and blank lines ignored.
fn regressions() -> Vec<(u64, String)> {
    let path = regressions_path();
    let text = std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()));
    text.lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .map(|l| {
            let (seed, note) = l.split_once(char::is_whitespace).unwrap_or((l, ""));
            let value = match seed.strip_prefix("0x") {
                Some(hex) => u64::from_str_radix(hex, 16),
                None => seed.parse(),
            }
            .unwrap_or_else(|_| panic!("{}: bad seed {seed:?}", path.display()));
            (value, note.trim().to_string())
        })
        .collect()
}

#[test]
fn every_case_that_ever_trapped_still_passes() {
    let module = PluginModule::from_env();
    let cases = regressions();
    let mut failed = Vec::new();
    for (seed, note) in &cases {
        if let Err(report) = fuzz::run_case(&module, *seed) {
            failed.push(format!("case {seed:#x} ({note}):\n{report}"));
        }
    }
    assert!(
        failed.is_empty(),
        "{} of the {} regression cases in {} trap again:\n{}",
        failed.len(),
        cases.len(),
        regressions_path().display(),
        failed.join("\n")
    );
    println!("never-trap: {} regression cases pass", cases.len());
}

#[test]
fn the_plugin_never_traps() {
    let module = PluginModule::from_env();
    let cases = env_u64("MESHGUARD_FUZZ_CASES", 1000);
    let seed = env_u64("MESHGUARD_FUZZ_SEED", 0x6d65_7368_6775_6172);
    let threads = env_u64(
        "MESHGUARD_FUZZ_THREADS",
        std::thread::available_parallelism().map_or(1, |n| n.get() as u64),
    ) as usize;
    let started = Instant::now();
    match fuzz::run_parallel(&module, seed, cases, threads) {
        Ok(totals) => {
            let secs = started.elapsed().as_secs_f64();
            println!(
                "never-trap: {} cases, {} operations, {} streams, {} host calls, seed {seed:#x}, {threads} threads, {secs:.1}s ({:.0} cases/s)",
                totals.cases,
                totals.operations,
                totals.streams,
                totals.host_calls,
                totals.cases as f64 / secs.max(1e-9)
            );
        }
        Err(failure) => {
            let recorded = if std::env::var_os("MESHGUARD_FUZZ_RECORD").is_some_and(|v| v == "1") {
                record(&failure, seed)
            } else {
                format!(
                    "add `{:#x} <what it found>` to {} to keep it as a regression case",
                    failure.seed,
                    regressions_path().display()
                )
            };
            panic!("{failure}\n{recorded}");
        }
    }
}

/// Appends a found case to the regression file; says what it did.
fn record(failure: &fuzz::Failure, run_seed: u64) -> String {
    use std::io::Write as _;
    let path = regressions_path();
    let first = failure
        .report
        .lines()
        .next()
        .unwrap_or("trap")
        .replace(|c: char| c.is_control(), " ");
    let line = format!(
        "{:#x} found by make fuzz (case {} of MESHGUARD_FUZZ_SEED={run_seed:#x}): {}\n",
        failure.seed, failure.case, first
    );
    match std::fs::OpenOptions::new()
        .append(true)
        .open(&path)
        .and_then(|mut f| f.write_all(line.as_bytes()))
    {
        Ok(()) => format!(
            "recorded as a regression case in {}: commit it with the fix",
            path.display()
        ),
        Err(e) => format!("could not record it in {}: {e}", path.display()),
    }
}
