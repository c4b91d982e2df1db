#!/usr/bin/env bash
# `make bench`: builds what the benchmark needs and runs it (bench/runner).
#   1. instructions: Envoy instructions per request under callgrind (plain
#      Envoy, a do-nothing Rust wasm filter, meshguard healthy, healthy
#      with the upstream instance on the router, steering around an ejected
#      host, one host failing 40 %) at 3, 100 and 1,000 upstream hosts, 2
#      repeats; idle instructions/s; wasm memory per VM (about 36 minutes);
#   2. overhead: wrk through Envoy (1 worker) for plain Envoy, a do-nothing
#      Rust wasm filter, meshguard healthy, meshguard steering; 5 rounds
#      interleaved (wall clock);
#   3. incidents: at a fixed request rate over wall time, meshguard against
#      Envoy's own outlier detection: thirteen on Istio's default retries and
#      circuit breakers (keys r*, first), six without retries (a-f).
# Prints the tables; writes bench/results/{results.md,results.json,*.svg}.
#
# Inputs: MESHGUARD_WASM (the shipped module), MESHGUARD_ENVOY (Envoy 1.40).
# Knobs (see bench/runner/src/main.rs): BENCH_QUICK=1 (smoke run, results in
# target/bench-quick), BENCH_ONLY=instructions|overhead|incidents (comma
# list; the other parts' results already in BENCH_OUT are kept),
# BENCH_INSTR_SIZES=3,100,1000, BENCH_INSTR_ROWS=Plain,Noop,Bare,Diagnostic,Healthy,Sampled,Sampled64,Upstream,Steering,Failure,
# BENCH_INSTR_BARE_CALLS (host calls the Bare row makes, e.g. 'hdr::status'),
# BENCH_INSTR_REPEATS, BENCH_INSTR_REQUESTS, BENCH_INSTR_WARMUP, BENCH_INSTR_IDLE_S,
# BENCH_SCENARIOS=a,b,ra, BENCH_VARIANTS=retries,retries-mg (incident variant ids; the discoveryPercent-0 ones, retries-mg-d0, retries-mgup-d0 and retries-mgtuned-d0, run only when named), BENCH_ROUNDS, BENCH_SECONDS, BENCH_RATE, BENCH_PIN=0, BENCH_OUT.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
TARGET="${CARGO_TARGET_DIR:-$ROOT/target}"
# The load generator and the overhead upstream are built optimised for speed,
# in their own target dir: the workspace release profile is tuned for the
# module's size (opt-level z, fat LTO), which is slow to build and to run.
BENCH_TARGET="${BENCH_TARGET_DIR:-$TARGET/bench-release}"

: "${MESHGUARD_WASM:?set MESHGUARD_WASM (run make bench)}"
: "${MESHGUARD_ENVOY:?set MESHGUARD_ENVOY (run make bench)}"

# Which parts run (BENCH_ONLY empty: all of them).
part() { [[ -z "${BENCH_ONLY:-}" || ",${BENCH_ONLY}," == *",$1,"* ]]; }

# Tools from Debian packages, installed when missing (root only).
need() {
    local cmd="$1" pkg="$2"
    command -v "$cmd" >/dev/null && return 0
    if [[ $(id -u) -eq 0 ]] && command -v apt-get >/dev/null; then
        echo "bench: installing $pkg from Debian packages..." >&2
        apt-get update -qq >/dev/null
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$pkg" >/dev/null
    else
        echo "bench: $cmd is missing: sudo apt-get install $pkg" >&2
        exit 1
    fi
}
if part overhead; then need wrk wrk; fi
if part instructions; then need valgrind valgrind; need callgrind_control valgrind; fi
command -v taskset >/dev/null || echo "bench: taskset missing; running without CPU pinning" >&2
command -v taskset >/dev/null || export BENCH_PIN=0

# The two floors, built like the module that ships (target, release
# profile, wasm-opt flags): the do-nothing filter on the SDK, and the bare
# one with meshguard's entry points and no SDK.
floor() {
    cargo build --release --target wasm32-wasip1 -p "$1"
    local wasm="$TARGET/wasm32-wasip1/release/${1//-/_}"
    wasm-opt -Oz --enable-bulk-memory --enable-sign-ext --enable-mutable-globals \
        --enable-nontrapping-float-to-int --enable-multivalue --enable-reference-types \
        "$wasm.wasm" -o "$wasm.opt.wasm"
}
floor meshguard-noop-filter
floor meshguard-bare-filter
NOOP_OPT="$TARGET/wasm32-wasip1/release/meshguard_noop_filter.opt.wasm"
BARE_OPT="$TARGET/wasm32-wasip1/release/meshguard_bare_filter.opt.wasm"

# mg-bench and mg-upstream (the incidents' upstreams and the instruction
# runs' hosts: up to 1,000 from one process), optimised; host-tests without
# its wasmtime and container harnesses, which neither needs.
bench_build() {
    CARGO_TARGET_DIR="$BENCH_TARGET" CARGO_PROFILE_RELEASE_OPT_LEVEL=3 CARGO_PROFILE_RELEASE_LTO=false \
        CARGO_PROFILE_RELEASE_CODEGEN_UNITS=16 CARGO_PROFILE_RELEASE_PANIC=unwind CARGO_PROFILE_RELEASE_STRIP=false \
        cargo build --release "$@"
}
bench_build -p mg-bench
bench_build -p host-tests --no-default-features --bin mg-upstream

echo "bench: load average before the run: $(cut -d' ' -f1-3 /proc/loadavg)" >&2
start=$(date +%s)
NOOP_WASM="$NOOP_OPT" BARE_WASM="$BARE_OPT" MG_UPSTREAM="$BENCH_TARGET/release/mg-upstream" BENCH_WORK="${BENCH_WORK:-$TARGET/bench-work}" \
    "$BENCH_TARGET/release/mg-bench" run
echo "bench: finished in $(( $(date +%s) - start )) s (run only; builds before that)" >&2
