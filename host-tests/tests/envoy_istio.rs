//! meshguard in an Envoy shaped like an Istio client sidecar, generated from
//! the manifests in `istio/` (see `host_tests::istio::sidecar_config`): the
//! WasmPlugin's exact pluginConfig, routes named after the VirtualServices'
//! `http[].name` with istiod's metadata, the cluster
//! `outbound|9080||reviews.shop.svc.cluster.local`, and steering through the
//! stateful-session filter that the Service's
//! `istio.io/persistent-session-header` label turns on.
//!
//! Under a grey failure (u2 fails 25% of its requests) the thresholds of the
//! `shop/reviews-web` override (eject above 20%) eject u2 from web traffic,
//! which is then steered to u1 and u3, while the `shop/reviews-batch`
//! override (degrade above 60%) keeps using u2 for batch traffic.
//!
//! Needs MESHGUARD_ENVOY and MESHGUARD_WASM (`make test` sets both) and
//! writes to target/tmp/envoy_istio/.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use host_tests::envoy::free_ports;
use host_tests::istio::{self, Sidecar, SidecarPorts};
use host_tests::{Behaviour, Upstream};
use serde_json::Value;

const WEB_HOST: &str = "reviews.shop.svc.cluster.local:9080";
const WEB_PATH: &str = "/reviews/1";
const BATCH_HOST: &str = "reviews-batch.shop.svc.cluster.local:9080";
const BATCH_PATH: &str = "/batch/nightly";
const CLUSTER: &str = "outbound|9080||reviews.shop.svc.cluster.local";

#[derive(Default, Debug)]
struct Tally {
    total: u64,
    by_status: BTreeMap<u16, u64>,
    by_upstream: BTreeMap<String, u64>,
}

impl Tally {
    fn served_by(&self, u: &str) -> u64 {
        self.by_upstream.get(u).copied().unwrap_or(0)
    }
    fn ok(&self) -> u64 {
        self.by_status.get(&200).copied().unwrap_or(0)
    }
}

fn send(s: &Sidecar, host: &str, path: &str, t: &mut Tally) {
    let r =
        istio::send(s.listener, host, path).unwrap_or_else(|e| panic!("request {host}{path}: {e}"));
    t.total += 1;
    *t.by_status.entry(r.status).or_default() += 1;
    *t.by_upstream
        .entry(r.upstream.unwrap_or_else(|| "(envoy)".into()))
        .or_default() += 1;
}

/// meshguard's `host_state` gauge of the host on `port` in the override
/// scope whose stat name contains `scope` (0 healthy, 1 degraded, 2
/// unhealthy, 3 warming up); None if meshguard never graded it there.
fn host_state(s: &Sidecar, scope: &str, port: u16) -> Option<u64> {
    // Gauges are written on the 100 ms tick.
    std::thread::sleep(Duration::from_millis(300));
    let text = s
        .admin_get("/stats?filter=meshguard\\.host_state")
        .unwrap_or_default();
    text.lines()
        .filter(|l| l.contains(scope) && l.contains(&format!(":{port}:")))
        .find_map(|l| l.rsplit(": ").next()?.trim().parse().ok())
}

/// meshguard's `steered` counter summed over the scopes containing `scope`.
fn steered(s: &Sidecar, scope: &str) -> u64 {
    std::thread::sleep(Duration::from_millis(300));
    let text = s
        .admin_get("/stats?filter=meshguard\\.steered")
        .unwrap_or_default();
    text.lines()
        .filter(|l| l.contains(scope))
        .filter_map(|l| l.rsplit(": ").next()?.trim().parse::<u64>().ok())
        .sum()
}

fn find_route<'a>(config: &'a Value, name: &str) -> &'a Value {
    config["static_resources"]["listeners"][0]["filter_chains"][0]["filters"][0]["typed_config"]
        ["route_config"]["virtual_hosts"]
        .as_array()
        .into_iter()
        .flatten()
        .flat_map(|vh| vh["routes"].as_array().into_iter().flatten())
        .find(|r| r["name"] == name)
        .unwrap_or_else(|| panic!("no route {name}"))
}

/// Three mg-upstreams and the ports and paths of a sidecar in front of them.
fn setup(test: &str) -> (Vec<Upstream>, SidecarPorts, PathBuf, PathBuf) {
    let envoy_bin = host_tests::ENVOY_BIN.require();
    let wasm = host_tests::MESHGUARD_WASM.require();
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join(test);
    std::fs::create_dir_all(&dir).expect("work dir");
    let bin = PathBuf::from(env!("CARGO_BIN_EXE_mg-upstream"));
    let ups: Vec<Upstream> = ["u1", "u2", "u3"]
        .iter()
        .map(|n| Upstream::start(&bin, n, &dir).expect("start mg-upstream"))
        .collect();
    let [admin, listener] = free_ports::<2>().expect("free ports");
    let ports = SidecarPorts {
        admin,
        listener,
        endpoints: ups.iter().map(|u| u.data.port()).collect(),
        wasm_path: wasm,
    };
    (ups, ports, dir, envoy_bin)
}

#[test]
fn istio_shaped_sidecar_applies_per_virtualservice_thresholds_and_steers_via_session_header() {
    let manifests = istio::load_manifests().unwrap_or_else(|e| panic!("{e}"));
    let (ups, ports, dir, envoy_bin) = setup("envoy_istio");
    let config = istio::sidecar_config(&manifests, &ports).unwrap_or_else(|e| panic!("{e}"));

    // The shape istiod gives it.
    let hcm = &config["static_resources"]["listeners"][0]["filter_chains"][0]["filters"][0]
        ["typed_config"];
    let filters: Vec<&str> = hcm["http_filters"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| f["name"].as_str().unwrap())
        .collect();
    assert_eq!(
        filters,
        [
            "shop.meshguard",
            "envoy.filters.http.stateful_session",
            "envoy.filters.http.router"
        ],
        "wasm before the session filter, router last"
    );
    let wasm_config = &hcm["http_filters"][0]["typed_config"]["config"];
    assert_eq!(wasm_config["name"], "shop.meshguard");
    assert_eq!(wasm_config["root_id"], "meshguard");
    assert_eq!(wasm_config["failure_policy"], "FAIL_OPEN");
    assert_eq!(wasm_config["vm_config"]["runtime"], "envoy.wasm.runtime.v8");
    let plugin_config = wasm_config["configuration"]["value"].as_str().unwrap();
    assert!(
        plugin_config.contains("\"windowSize\":100.0"),
        "numbers as Struct doubles: {plugin_config}"
    );
    for (route, vs) in [("web", "reviews-web"), ("batch", "reviews-batch")] {
        let r = find_route(&config, route);
        assert_eq!(r["route"]["cluster"], CLUSTER);
        assert_eq!(
            r["metadata"]["filter_metadata"]["istio"]["config"],
            format!("/apis/networking.istio.io/v1/namespaces/shop/virtual-service/{vs}")
        );
    }

    let s = Sidecar::start(&envoy_bin, &dir, &config, &ports).unwrap_or_else(|e| panic!("{e}"));
    let fail = |msg: String| -> ! {
        std::thread::sleep(Duration::from_millis(300));
        let stats = s
            .admin_get("/stats?filter=meshguard|outbound")
            .map(|t| {
                t.lines()
                    .filter(|l| !l.ends_with(": 0"))
                    .collect::<Vec<_>>()
                    .join("\n")
            })
            .unwrap_or_default();
        let access: Vec<String> = s.access_log().into_iter().rev().take(15).collect();
        panic!(
            "{msg}\n--- meshguard lines\n{}\n--- stats\n{stats}\n--- last access lines\n{}\n--- envoy log tail\n{}\n(logs in {})",
            s.meshguard_lines("").join("\n"),
            access.join("\n"),
            s.log_tail(20),
            s.dir.display()
        )
    };

    // a. Healthy: both routes reach all three hosts, all 200.
    let (mut web, mut batch) = (Tally::default(), Tally::default());
    for _ in 0..90 {
        send(&s, WEB_HOST, WEB_PATH, &mut web);
        send(&s, BATCH_HOST, BATCH_PATH, &mut batch);
    }
    println!("a. healthy: web {web:?}\n   batch {batch:?}");
    for (name, t) in [("web", &web), ("batch", &batch)] {
        if t.ok() != t.total || ["u1", "u2", "u3"].iter().any(|u| t.served_by(u) < 15) {
            fail(format!(
                "healthy {name} traffic should be 200 and spread over u1..u3: {t:?}"
            ));
        }
    }
    // Paths outside the named routes reach the Service through each
    // VirtualService's catch-all route instead of a 404 from the sidecar.
    let mut other = Tally::default();
    send(&s, WEB_HOST, "/", &mut other);
    send(&s, BATCH_HOST, "/other", &mut other);
    if other.ok() != 2 {
        fail(format!(
            "paths outside /reviews and /batch should reach reviews through the catch-all routes: {other:?}"
        ));
    }
    // The access log is flushed every 200 ms.
    std::thread::sleep(Duration::from_millis(400));
    let access = s.access_log();
    for route in ["web", "batch", "web-other", "batch-other"] {
        if !access
            .iter()
            .any(|l| l.contains(&format!(" {route} {CLUSTER}")))
        {
            fail(format!("no access-log line for route {route} to {CLUSTER}"));
        }
    }

    // b. Grey failure: u2 fails 25% of its requests. Web traffic until u2
    // has been out of two consecutive batches: the web override (eject above
    // 20%) ejects it and meshguard steers web requests elsewhere.
    ups[1]
        .admin
        .set_behaviour(&Behaviour::grey(503, 25))
        .expect("set u2 grey");
    let mut detection = Tally::default();
    let mut clean = 0;
    while detection.total < 600 && clean < 2 {
        let mut batch_t = Tally::default();
        for _ in 0..30 {
            send(&s, WEB_HOST, WEB_PATH, &mut batch_t);
        }
        clean = if batch_t.served_by("u2") <= 1 {
            clean + 1
        } else {
            0
        };
        for (k, v) in batch_t.by_status {
            *detection.by_status.entry(k).or_default() += v;
        }
        for (k, v) in batch_t.by_upstream {
            *detection.by_upstream.entry(k).or_default() += v;
        }
        detection.total += 30;
    }
    println!("b. web detection: {detection:?}");
    if clean < 2 {
        fail(format!(
            "u2 fails 25% (> the web override's 20%) but still gets web traffic: {detection:?}"
        ));
    }
    // meshguard's own view, from its Envoy stats: u2 is Unhealthy (2) for
    // the web override, Healthy (0) or unknown for the batch override.
    let u2_port = ups[1].data.port();
    if host_state(&s, "reviews-web", u2_port) != Some(2) {
        fail("u2 should be Unhealthy (2) under the reviews-web override".to_string());
    }
    // c. Both routes at once: web avoids u2 (steered through the session
    // header; round robin alone would give it a third) but for discovery's
    // few requests left to Envoy, retried when u2 fails them; batch keeps
    // using it (25% < the batch override's 60%).
    let (mut web, mut batch) = (Tally::default(), Tally::default());
    for _ in 0..150 {
        send(&s, WEB_HOST, WEB_PATH, &mut web);
        send(&s, BATCH_HOST, BATCH_PATH, &mut batch);
    }
    println!("c. web {web:?}\n   batch {batch:?}");
    if web.served_by("u2") > 5 || web.ok() != web.total {
        fail(format!(
            "web traffic must avoid ejected u2 and get only 200s: {web:?}"
        ));
    }
    if batch.served_by("u2") < 30 {
        fail(format!(
            "batch traffic should keep a share of u2 (its threshold is 60%): {batch:?}"
        ));
    }
    if host_state(&s, "reviews-batch", u2_port).is_some_and(|st| st != 0) {
        fail("the batch override must not grade u2 down at 25% failures".to_string());
    }
    let web_steered = steered(&s, "reviews-web");
    if web_steered < 150 {
        fail(format!(
            "meshguard should have steered every web request (>= 150), steered {web_steered}"
        ));
    }
    println!("steered web requests: {web_steered}");
}

/// The control: the same manifests without the Service label, so istiod
/// would configure no session state. meshguard still ejects u2 from web
/// traffic (and logs it), but Envoy ignores the header and round robin keeps
/// sending u2 its third: steering above is the session filter's doing.
#[test]
fn without_the_persistent_session_label_envoy_ignores_meshguards_choice() {
    let mut manifests = istio::load_manifests().unwrap_or_else(|e| panic!("{e}"));
    for m in manifests.iter_mut().filter(|m| m.kind() == "Service") {
        m.doc["metadata"]["labels"]
            .as_object_mut()
            .expect("labels")
            .remove("istio.io/persistent-session-header");
    }
    let (ups, ports, dir, envoy_bin) = setup("envoy_istio_no_session");
    let config = istio::sidecar_config(&manifests, &ports).unwrap_or_else(|e| panic!("{e}"));
    let s = Sidecar::start(&envoy_bin, &dir, &config, &ports).unwrap_or_else(|e| panic!("{e}"));
    ups[1]
        .admin
        .set_behaviour(&Behaviour::grey(503, 25))
        .expect("set u2 grey");
    let mut warm = Tally::default();
    for _ in 0..300 {
        send(&s, WEB_HOST, WEB_PATH, &mut warm);
    }
    let before = steered(&s, "reviews-web");
    let mut web = Tally::default();
    for _ in 0..150 {
        send(&s, WEB_HOST, WEB_PATH, &mut web);
    }
    let steered_now = steered(&s, "reviews-web") - before;
    println!("no session label: web {web:?}; meshguard steered {steered_now}");
    assert!(
        steered_now >= 100,
        "meshguard should still grade u2 down and set the header (steered {steered_now}): {:?}",
        s.meshguard_lines("")
    );
    assert!(
        web.served_by("u2") >= 30,
        "without the session filter Envoy cannot follow meshguard, u2 keeps about a third: {web:?}"
    );
}
