//! The plugin never traps, whatever the host hands it: randomised streams
//! of configurations, header maps, property answers, host-call faults,
//! shared-data corruption, clock jumps and event orders
//! (`host_tests::wasm_host::fuzz`). A modest number of cases runs in
//! `make test`; `make fuzz` runs many more
//! (`MESHGUARD_FUZZ_CASES`, `MESHGUARD_FUZZ_SEED`).

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

#[test]
fn the_plugin_never_traps() {
    let module = PluginModule::from_env();
    let cases = env_u64("MESHGUARD_FUZZ_CASES", 1000);
    let seed = env_u64("MESHGUARD_FUZZ_SEED", 0x6d65_7368_6775_6172);
    let started = Instant::now();
    match fuzz::run(&module, seed, cases) {
        Ok(totals) => println!(
            "never-trap: {} cases, {} operations, {} streams, {} host calls, seed {seed:#x}, {:.1}s",
            totals.cases,
            totals.operations,
            totals.streams,
            totals.host_calls,
            started.elapsed().as_secs_f64()
        ),
        Err(failure) => panic!("{failure}"),
    }
}
