//! The steering mechanism meshguard relies on, checked against the real Envoy
//! without the wasm filter: the demo config's cluster must pin a request to
//! the host named in `x-meshguard-upstream`, round-robin without it, and
//! strip the header before the upstream sees it. Also validates the config
//! with the meshguard module and the test plugin configuration in it (Envoy
//! loads the module and runs its on_configure in validate mode).
//!
//! Needs MESHGUARD_ENVOY and MESHGUARD_WASM (`make test` sets both).

use std::path::{Path, PathBuf};

use host_tests::envoy::{self, Envoy, TemplateVars, WasmPlugin};
use host_tests::traffic::{send_one, Tally};
use host_tests::Upstream;

fn envoy_bin() -> PathBuf {
    host_tests::ENVOY_BIN.require()
}

fn work_dir(test: &str) -> PathBuf {
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join(test);
    std::fs::create_dir_all(&dir).expect("create test work dir");
    dir
}

fn tally(envoy: &Envoy, n: usize, headers: &[(&str, &str)]) -> Tally {
    let mut t = Tally::default();
    for _ in 0..n {
        t.add(&send_one(envoy.listener, headers));
    }
    t
}

#[test]
fn override_host_header_pins_requests_and_round_robin_otherwise() {
    let envoy_bin = envoy_bin();
    let dir = work_dir("override_host");
    let bin = Path::new(env!("CARGO_BIN_EXE_mg-upstream"));
    let ups: Vec<Upstream> = ["u1", "u2", "u3"]
        .iter()
        .map(|n| Upstream::start(bin, n, &dir).expect("start mg-upstream"))
        .collect();
    let ports = [ups[0].data.port(), ups[1].data.port(), ups[2].data.port()];
    let envoy = Envoy::start(&envoy_bin, &dir, ports, None).expect("start envoy");
    let log = || envoy.log_tail(30);

    // No header: the fallback (least request) over all three; 180 requests,
    // so that short of two ninths per host is a fluke once in thousands.
    let t = tally(&envoy, 180, &[]);
    assert_eq!(t.with_status(200), 180, "without header: {t}\n{}", log());
    for u in &ups {
        assert!(
            t.served_by(&u.name) >= 40,
            "round robin should reach {}: {t}",
            u.name
        );
    }

    // Header: every request to the named host, and the header is gone
    // before the request reaches it.
    for u in &ups {
        let target = u.data.to_string();
        let t = tally(&envoy, 30, &[("x-meshguard-upstream", &target)]);
        assert_eq!(
            t.served_by(&u.name),
            30,
            "pinned to {target}: {t}\n{}",
            log()
        );
        let leaked =
            send_one(envoy.listener, &[("x-meshguard-upstream", &target)]).upstream_saw_steering;
        assert_eq!(leaked, None, "the upstream saw the steering header");
    }

    // An address outside the cluster is ignored: the fallback policy picks
    // (least request, which picks at random among idle hosts: 90 requests,
    // so that a sixth of them per host is missed only once in thousands).
    let t = tally(&envoy, 90, &[("x-meshguard-upstream", "127.0.0.1:1")]);
    assert_eq!(t.with_status(200), 90, "unknown host: {t}");
    assert!(
        ups.iter().all(|u| t.served_by(&u.name) >= 15),
        "unknown host should fall back to round robin: {t}"
    );
}

#[test]
fn demo_config_with_meshguard_validates() {
    let envoy_bin = envoy_bin();
    let wasm = host_tests::MESHGUARD_WASM.require();
    let dir = work_dir("validate");
    let yaml = envoy::render(
        envoy::TEMPLATE,
        &TemplateVars {
            admin_port: 9901,
            listen_port: 10000,
            upstream_ports: [18081, 18082, 18083],
            fallback_port: Some(18084),
            wasm: Some(WasmPlugin {
                wasm_path: wasm,
                config: host_tests::TEST_PLUGIN_CONFIG.to_string(),
            }),
        },
    )
    .expect("render");
    let path = dir.join("validate.yaml");
    std::fs::write(&path, yaml).expect("write config");
    envoy::validate(&envoy_bin, &path).unwrap_or_else(|e| panic!("{e}"));
}
