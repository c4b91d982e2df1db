//! `make unit`, `make test-wasm`, `make test-envoy` and `make test-containers`
//! run one tier each; `make test` runs the whole workspace. A test file of
//! host-tests that no tier names would run only under `make test`: this
//! fails on one, and on a tier pattern that names no file.

use std::path::Path;

/// `--test` patterns of the Makefile's `TIER_*` variables.
fn tier_patterns(makefile: &str) -> Vec<String> {
    makefile
        .lines()
        .filter(|l| l.starts_with("TIER_") && !l.starts_with("TIER_ENV "))
        .flat_map(|l| {
            l.split("--test ")
                .skip(1)
                .map(|p| {
                    p.split_whitespace()
                        .next()
                        .unwrap_or("")
                        .trim_matches('\'')
                        .to_string()
                })
                .collect::<Vec<_>>()
        })
        .collect()
}

/// cargo's glob: `*` for any run of characters (the only wildcard used).
fn matches(pattern: &str, name: &str) -> bool {
    match pattern.split_once('*') {
        None => pattern == name,
        Some((head, tail)) => {
            name.len() >= head.len() + tail.len() && name.starts_with(head) && name.ends_with(tail)
        }
    }
}

#[test]
fn every_host_test_file_is_in_a_tier() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let makefile = std::fs::read_to_string(root.join("Makefile")).expect("Makefile");
    let patterns = tier_patterns(&makefile);
    assert!(patterns.len() >= 4, "tier patterns not found: {patterns:?}");
    let mut files: Vec<String> = std::fs::read_dir(root.join("host-tests/tests"))
        .expect("host-tests/tests")
        .filter_map(|e| {
            let name = e.ok()?.file_name().into_string().ok()?;
            name.strip_suffix(".rs").map(str::to_string)
        })
        .collect();
    files.sort();
    let orphans: Vec<&String> = files
        .iter()
        .filter(|f| !patterns.iter().any(|p| matches(p, f)))
        .collect();
    assert!(
        orphans.is_empty(),
        "host-tests/tests files in no `make test-*` tier (add them to a TIER_* line of the Makefile): {orphans:?}"
    );
    let unused: Vec<&String> = patterns
        .iter()
        .filter(|p| !files.iter().any(|f| matches(p, f)))
        .collect();
    assert!(
        unused.is_empty(),
        "tier patterns that name no test file: {unused:?}"
    );
}

#[test]
fn globs_match_as_cargo_does() {
    assert!(matches("wasm_*", "wasm_abi"));
    assert!(!matches("wasm_*", "envoy_wasm"));
    assert!(matches("demo", "demo"));
    assert!(!matches("demo", "demo2"));
}
