//! meshguard in an Envoy shaped like an Istio ambient waypoint
//! (`host_tests::waypoint`): the three mg-upstreams are pods behind the
//! internal listener `connect_originate`, so Envoy names them
//! `envoy://connect_originate/127.0.0.1:<port>` (no `ip:port`, no
//! `upstream.port`), in the cluster
//! `inbound-vip|80|http|echo.default.svc.cluster.local`, with routes
//! carrying istiod's VirtualService metadata. Checked as a user would:
//!
//! a. healthy traffic spreads over the three pods through the tunnel;
//! b. a grey pod (u3 fails 40%) is Degraded and gets less traffic on the
//!    `default/echo` routes, and is ejected on the route of
//!    `default/echo-strict`, whose override ejects above 20%;
//! c. a dead pod (u2 refuses connections: through the tunnel a connect
//!    failure, flag UF) is ejected and steered around: clients see only 200s;
//! d. the status endpoint, the Prometheus metrics and the transition log name
//!    the hosts by their `envoy://connect_originate/...` address.
//!
//! Those steer through the demo's `override_host` policy. A second test
//! steers the way docs/ambient.md tells operators to, since istiod cannot
//! give a waypoint's clusters that policy: base64 of the internal address
//! in `x-meshguard-session`, read by the header-based `stateful_session`
//! filter of `istio/envoyfilter-waypoint-session.yaml` (scenes a and b).
//!
//! Needs MESHGUARD_WASM and MESHGUARD_ENVOY (`make test` sets both). Run
//! alone with `cargo test -p host-tests --test envoy_waypoint -- --nocapture`;
//! the generated config and the logs stay in target/tmp/envoy_waypoint/.

use std::time::Duration;

use host_tests::fixture::ThreeUpstreams;
use host_tests::http;
use host_tests::traffic::{burst_to, prometheus_sample, Tally};
use host_tests::waypoint::{self, Route, Steering, CLUSTER};
use host_tests::Behaviour;
use host_tests::Harness;
use serde_json::Value;

const U2: usize = 1;
const U3: usize = 2;
/// Counters and gauges reach Envoy's stats on meshguard's 100 ms tick.
const FLUSH: Duration = Duration::from_millis(400);

/// Windows of 50 judged after 20; Degraded above 30%, ejected above 70% (a
/// 40%-failing host stays Degraded); ejections outlast the test. The
/// `default/echo-strict` override ejects above 20%. Discovery off, so that
/// shares are meshguard's weights alone.
const CONFIG: &str = r#"{
  "detection": {"windowSize": 50, "minRequests": 20, "degradedFailurePercent": 30,
                "unhealthyFailurePercent": 70, "recoveredFailurePercent": 10},
  "ejection": {"baseEjectionTime": "60s", "maxEjectionTime": "60s", "warmupDuration": "4s"},
  "steering": {"discoveryPercent": 0},
  "status": {"enabled": true, "useRemoteAddress": true},
  "overrides": [
    {"virtualService": "default/echo-strict",
     "detection": {"degradedFailurePercent": 10, "unhealthyFailurePercent": 20,
                   "recoveredFailurePercent": 5}}
  ]
}"#;

const ROUTES: [Route; 2] = [
    Route {
        name: "strict",
        prefix: "/strict",
        virtual_service: "default/echo-strict",
    },
    Route {
        name: "echo",
        prefix: "/echo",
        virtual_service: "default/echo",
    },
];

/// The scope meshguard gives the strict override's traffic.
const STRICT_SCOPE: &str = "[vs=default/echo-strict route=*]";

/// meshguard's metric name for a host (its stat names keep letters,
/// digits and `.|:-_[]`, everything else becomes `_`).
fn metric_host(address: &str) -> String {
    address
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || ".|:-_[]".contains(c) {
                c
            } else {
                '_'
            }
        })
        .collect()
}

#[test]
fn waypoint_shaped_envoy_grades_and_steers_pods_behind_the_tunnel() {
    let s = ThreeUpstreams::start_edited(
        host_tests::test_paths!(),
        "envoy_waypoint",
        CONFIG,
        |demo| waypoint::from_demo(&demo, &ROUTES),
    );
    let l = s.listener();
    let addr = |i: usize| waypoint::host_address(&s.upstream(i).data.to_string());

    // a. Healthy: all three pods answer through the tunnel, on every route.
    let base = burst_to(l, "/echo/a", 150);
    let strict = burst_to(l, "/strict/a", 60);
    println!("a. healthy: echo {base}\n   strict {strict}");
    s.check(
        base.with_status(200) == 150 && strict.with_status(200) == 60,
        || format!("healthy traffic should all get 200: echo {base}, strict {strict}"),
    );
    for u in &s.ups {
        s.check(base.share(&u.name) >= 0.2, || {
            format!("{} should get a fair share: {base}", u.name)
        });
    }
    std::thread::sleep(FLUSH);
    let access = s.envoy.access_log_matching(|_| true, 1000);
    for (route, i) in [("echo", 0), ("strict", 1)] {
        let needle = format!(" {} via_upstream {route} {CLUSTER}", addr(i));
        s.check(access.contains(&needle), || {
            format!(
                "no access line with {needle:?}: Envoy should name the pod by its internal address"
            )
        });
    }

    // b. Grey: u3 fails 40% of its requests.
    grey_pod(&s);

    let strict_svc = format!("{CLUSTER} {STRICT_SCOPE}");
    operator_view(
        &s,
        &[
            (CLUSTER.to_string(), U3, "Degraded", 1),
            (strict_svc, U3, "Unhealthy", 2),
        ],
    );
    let degraded = s.meshguard_lines(&format!("{CLUSTER} host {}: Healthy -> Degraded", addr(U3)));
    s.check(!degraded.is_empty(), || {
        format!("no Degraded transition line for {}", addr(U3))
    });
    println!("b. {}", degraded[0]);

    // c. Dead pod: u2 refuses connections. The tunnel turns that into a
    // connect failure (503, UF) that meshguard classifies as local origin;
    // five in a row eject it, then clients see only 200s.
    s.set_behaviour(U3, &Behaviour::healthy());
    s.set_behaviour(
        U2,
        &Behaviour {
            refuse: true,
            ..Behaviour::healthy()
        },
    );
    let mut detect = Tally::default();
    let mut clean = 0;
    while detect.total < 400 && clean < 2 {
        let b = burst_to(l, "/echo/c", 25);
        clean = if b.with_status(200) == b.total {
            clean + 1
        } else {
            0
        };
        detect.merge(&b);
    }
    println!("c. dead pod detection: {detect}");
    s.check(clean == 2 && detect.not_ok() <= 15, || {
        format!("dead u2 should be ejected after a few failures: {detect}")
    });
    let after = burst_to(l, "/echo/c", 300);
    println!("c. dead pod ejected: {after}");
    s.check(after.with_status(200) == 300, || {
        format!("with dead u2 ejected every request should get 200: {after}")
    });
    std::thread::sleep(FLUSH);
    let uf = s
        .envoy
        .access_log_matching(|l| l.contains(" 503 UF ") && l.contains(&addr(U2)), 5);
    s.check(!uf.is_empty(), || {
        format!(
            "u2's failures should show as connect failures (503 UF) at {}",
            addr(U2)
        )
    });

    // d. What an operator sees names the pod by its internal address.
    operator_view(&s, &[(CLUSTER.to_string(), U2, "Unhealthy", 2)]);
    let lines = s.meshguard_lines(&format!(
        "{CLUSTER} host {}: Healthy -> Unhealthy: 5 consecutive local-origin failures",
        addr(U2)
    ));
    s.check(!lines.is_empty(), || {
        format!("no local-origin ejection line for {}", addr(U2))
    });
    println!("d. {}", lines[0]);
    let prom = s
        .envoy
        .admin_get("/stats/prometheus")
        .unwrap_or_else(|e| s.fail(&format!("prometheus: {e}")));
    let ejections = prometheus_sample(
        &prom,
        "meshguard_host_ejections",
        &[
            ("meshguard_service", CLUSTER),
            ("meshguard_host", &metric_host(&addr(U2))),
        ],
    );
    s.check(ejections == Some(1.0), || {
        format!("u2 ejected once, metrics say {ejections:?}")
    });
}

/// The header the waypoint's session filter reads
/// (`istio/envoyfilter-waypoint-session.yaml`, the ambient plugins'
/// `steering.header`).
const SESSION_HEADER: &str = "x-meshguard-session";

/// The steering setup docs/ambient.md gives for waypoints, where istiod
/// cannot configure `override_host`: meshguard writes
/// base64(`envoy://connect_originate/<pod>`) into `x-meshguard-session`
/// (`steering: {header: x-meshguard-session, encoding: base64}`, as the
/// ambient plugins), and the header-based `stateful_session` filter that
/// `istio/envoyfilter-waypoint-session.yaml` inserts before the router sends
/// the request to that pod of a least-request cluster. A grey pod gets less
/// traffic, none on the strict route, and no client sees the header.
#[test]
fn waypoint_session_filter_steers_to_the_internal_address() {
    let manifest = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../istio/envoyfilter-waypoint-session.yaml"
    ))
    .expect("istio/envoyfilter-waypoint-session.yaml");
    assert!(
        manifest.contains("name: envoy.http.stateful_session.header")
            && manifest.contains(&format!("name: {SESSION_HEADER}\n")),
        "istio/envoyfilter-waypoint-session.yaml no longer reads {SESSION_HEADER}: update this test"
    );
    let plain = r#""steering": {"discoveryPercent": 0}"#;
    assert!(CONFIG.contains(plain), "CONFIG changed: no {plain}");
    let config = CONFIG.replace(
        plain,
        &format!(
            r#""steering": {{"header": "{SESSION_HEADER}", "encoding": "base64", "discoveryPercent": 0}}"#
        ),
    );
    let s = ThreeUpstreams::start_edited(
        host_tests::test_paths!(),
        "envoy_waypoint_session",
        &config,
        |demo| waypoint::from_demo_with(&demo, &ROUTES, Steering::SessionHeader(SESSION_HEADER)),
    );
    let l = s.listener();

    // a. Healthy: the least-request balancer and meshguard's picks spread
    // the traffic; the session header stays inside the waypoint.
    let base = burst_to(l, "/echo/a", 150);
    println!("a. healthy: {base}");
    s.check(base.with_status(200) == 150, || {
        format!("healthy traffic should all get 200: {base}")
    });
    for u in &s.ups {
        s.check(base.share(&u.name) >= 0.2, || {
            format!("{} should get a fair share: {base}", u.name)
        });
    }
    let reply = http::get(l, "/echo/a", Duration::from_secs(5))
        .unwrap_or_else(|e| s.fail(&format!("request: {e}")));
    s.check(reply.header(SESSION_HEADER).is_none(), || {
        format!(
            "the client must not see the pod meshguard picked: {SESSION_HEADER}: {:?}",
            reply.header(SESSION_HEADER)
        )
    });

    // b. Grey: only steering moves traffic off u3 (the cluster's own
    // balancer does not know its grade).
    grey_pod(&s);
}

/// b. u3 fails 40% of its requests (503, evenly spread, so never five in a
/// row): both routes until the strict route no longer reaches u3 in two
/// consecutive batches; then u3 is Degraded on the echo routes (about 20% of
/// their traffic) and ejected on the strict route (none of it).
fn grey_pod(s: &ThreeUpstreams) {
    let l = s.listener();
    s.set_behaviour(U3, &Behaviour::grey(503, 40));
    let mut detect = Tally::default();
    let mut clean = 0;
    while detect.total < 1200 && clean < 2 {
        detect.merge(&burst_to(l, "/echo/b", 20));
        let b = burst_to(l, "/strict/b", 20);
        detect.merge(&b);
        clean = if b.served_by("u3") == 0 { clean + 1 } else { 0 };
    }
    println!("b. grey detection: {detect}");
    s.check(clean == 2, || {
        format!("u3 fails 40% (> the strict override's 20%) but keeps strict traffic: {detect}")
    });
    let echo = burst_to(l, "/echo/b", 300);
    let strict = burst_to(l, "/strict/b", 150);
    println!("b. grey, graded: echo {echo}\n   strict {strict}");
    // Degraded at half weight: 0.5 / 2.5 = 20% of the echo traffic.
    s.check((0.1..=0.28).contains(&echo.share("u3")), || {
        format!(
            "Degraded u3 should get about 20% of the echo traffic (half a healthy pod's): {echo}"
        )
    });
    s.check(
        strict.served_by("u3") == 0 && strict.with_status(200) == 150,
        || format!("the strict route must avoid ejected u3 and get only 200s: {strict}"),
    );
}

/// Checks, for each (service, upstream, state, gauge), that the status
/// endpoint lists the upstream under its `envoy://connect_originate/...`
/// address in that state, and that Prometheus has its `host_state` gauge
/// under the sanitised address.
fn operator_view(s: &ThreeUpstreams, want: &[(String, usize, &str, u64)]) {
    std::thread::sleep(FLUSH);
    let prom = s
        .envoy
        .admin_get("/stats/prometheus")
        .unwrap_or_else(|e| s.fail(&format!("prometheus: {e}")));
    let r = http::request(
        s.listener(),
        "GET",
        "/meshguard/status",
        &[],
        &[],
        Duration::from_secs(5),
    )
    .unwrap_or_else(|e| s.fail(&format!("status: {e}")));
    let body = r.body_text();
    let status: Value = serde_json::from_str(&body)
        .unwrap_or_else(|e| s.fail(&format!("status {} is not JSON ({e}): {body}", r.status)));
    for (svc, i, state, gauge) in want {
        let address = waypoint::host_address(&s.upstream(*i).data.to_string());
        let host = status["services"]
            .as_array()
            .into_iter()
            .flatten()
            .find(|x| x["service"] == svc.as_str())
            .and_then(|x| {
                x["hosts"]
                    .as_array()?
                    .iter()
                    .find(|h| h["address"] == address.as_str())
            });
        println!("   status of {address} in {svc}: {host:?}");
        s.check(host.is_some_and(|h| h["state"] == *state), || {
            format!("status should list {address} as {state} in {svc}: {body}")
        });
        let labels = [
            ("meshguard_service", metric_host(svc)),
            ("meshguard_host", metric_host(&address)),
        ];
        let labels: Vec<(&str, &str)> = labels.iter().map(|(k, v)| (*k, v.as_str())).collect();
        let got = prometheus_sample(&prom, "meshguard_host_state", &labels);
        s.check(got == Some(*gauge as f64), || {
            let ours: Vec<&str> = prom
                .lines()
                .filter(|l| l.starts_with("meshguard_host"))
                .collect();
            format!(
                "meshguard_host_state{labels:?}: want {gauge}, got {got:?}\n{}",
                ours.join("\n")
            )
        });
    }
}
