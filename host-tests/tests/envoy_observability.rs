//! What an operator sees in the real Envoy: meshguard's Prometheus metrics
//! must count exactly what happened, and the status endpoint must answer
//! allowed sources and be invisible to everyone else.
//!
//! Needs MESHGUARD_WASM and MESHGUARD_ENVOY (`make test` sets both). Run
//! alone with `cargo test -p host-tests --test envoy_observability -- --nocapture`.

use std::time::Duration;

use host_tests::fixture::ThreeUpstreams;
use host_tests::http;
use host_tests::traffic::{burst, prometheus_sample, Tally};
use host_tests::Behaviour;
use host_tests::Harness;

const U2: usize = 1;
/// Counters are added to Envoy's stats on meshguard's 100 ms tick.
const FLUSH: Duration = Duration::from_millis(400);

fn config_with(status: &str) -> String {
    let base = host_tests::TEST_PLUGIN_CONFIG;
    format!("{},\"status\":{status}}}", &base[..base.len() - 1])
}

fn get(addr: std::net::SocketAddr, path: &str) -> http::Response {
    http::request(addr, "GET", path, &[], &[], Duration::from_secs(5)).expect("request")
}

#[test]
fn metrics_and_status_tell_what_happened() {
    let s = ThreeUpstreams::start(
        host_tests::test_paths!(),
        "envoy_observability_metrics",
        &config_with(r#"{"enabled":true,"useRemoteAddress":true}"#),
    );
    let listener = s.listener();
    let mut sent = Tally::default();
    sent.merge(&burst(listener, 300));
    std::thread::sleep(FLUSH);
    let prom = s
        .envoy
        .admin_get("/stats/prometheus")
        .expect("prometheus stats");
    let svc = ("meshguard_service", "demo");
    s.check(
        prometheus_sample(&prom, "meshguard_requests", &[svc]) == Some(300.0),
        || format!("after 300 healthy requests meshguard_requests should be 300:\n{prom}"),
    );
    s.check(
        prometheus_sample(
            &prom,
            "meshguard_hosts",
            &[svc, ("meshguard_state", "healthy")],
        ) == Some(3.0),
        || format!("three healthy hosts expected:\n{prom}"),
    );

    // u2 fails until it is ejected, then 100 more requests.
    s.set_behaviour(U2, &Behaviour::status(503));
    for _ in 0..12 {
        sent.merge(&burst(listener, 25));
        if s.transitions(U2).iter().any(|l| l.contains("-> Unhealthy")) {
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    s.check(
        s.wait_for_transition(U2, Duration::from_secs(2), |l| l.contains("-> Unhealthy"))
            .is_some(),
        || format!("u2 was never ejected: {sent}"),
    );
    sent.merge(&burst(listener, 100));
    std::thread::sleep(FLUSH);

    let prom = s
        .envoy
        .admin_get("/stats/prometheus")
        .expect("prometheus stats");
    let u2 = s.upstream(U2).data.to_string();
    let expect = |what: &str, got: Option<f64>, want: f64| {
        s.check(got == Some(want), || {
            let ours: Vec<&str> = prom
                .lines()
                .filter(|l| l.starts_with("meshguard_"))
                .collect();
            format!(
                "{what}: want {want}, got {got:?} (client saw {sent})\n{}",
                ours.join("\n")
            )
        });
    };
    expect(
        "requests",
        prometheus_sample(&prom, "meshguard_requests", &[svc]),
        sent.total as f64,
    );
    expect(
        "gateway failures = 503s the clients saw",
        prometheus_sample(
            &prom,
            "meshguard_failures",
            &[svc, ("meshguard_kind", "gateway")],
        ),
        sent.with_status(503) as f64,
    );
    expect(
        "ejections by consecutive failures",
        prometheus_sample(
            &prom,
            "meshguard_ejections",
            &[svc, ("meshguard_reason", "consecutive")],
        ),
        1.0,
    );
    expect(
        "u2's ejections",
        prometheus_sample(
            &prom,
            "meshguard_host_ejections",
            &[svc, ("meshguard_host", &u2)],
        ),
        1.0,
    );
    expect(
        "healthy -> unhealthy transitions",
        prometheus_sample(
            &prom,
            "meshguard_transitions",
            &[
                svc,
                ("meshguard_from", "healthy"),
                ("meshguard_to", "unhealthy"),
            ],
        ),
        1.0,
    );
    expect(
        "hosts unhealthy",
        prometheus_sample(
            &prom,
            "meshguard_hosts",
            &[svc, ("meshguard_state", "unhealthy")],
        ),
        1.0,
    );
    expect(
        "u2's state gauge (2 = unhealthy)",
        prometheus_sample(
            &prom,
            "meshguard_host_state",
            &[svc, ("meshguard_host", &u2)],
        ),
        2.0,
    );
    expect(
        "breaker closed",
        prometheus_sample(&prom, "meshguard_breaker_state", &[svc]),
        0.0,
    );
    let steered = prometheus_sample(&prom, "meshguard_steered", &[svc]).unwrap_or(0.0);
    // All but discovery's share (5 % at first) left to Envoy's balancer.
    s.check(steered >= 90.0, || {
        format!(
            "the 100 requests after ejection were steered, but for discovery's few; got {steered}"
        )
    });

    // The status endpoint answers loopback (allowed by default).
    let reply = get(listener, "/meshguard/status?pretty");
    s.check(
        reply.status == 200 && reply.header("x-upstream-name").is_none(),
        || format!("status endpoint should answer locally: {}", reply.status),
    );
    let status: serde_json::Value = serde_json::from_slice(&reply.body).expect("status JSON");
    let hosts = status["services"][0]["hosts"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    let u2_entry = hosts.iter().find(|h| h["address"] == u2.as_str());
    s.check(
        u2_entry.is_some_and(|h| h["state"] == "Unhealthy" && h["timesEjected"] == 1),
        || format!("status should show u2 ejected once: {status}"),
    );
    // Times in RFC 3339 beside the epoch figures, the same instant (as
    // coreutils' `date` prints it).
    let rfc3339 = |ms: &serde_json::Value| {
        let ms = ms.as_u64().unwrap_or_default();
        let out = std::process::Command::new("date")
            .args(["-u", "-d", &format!("@{}", ms / 1000), "+%Y-%m-%dT%H:%M:%S"])
            .output()
            .expect("date runs");
        format!(
            "{}.{:03}Z",
            String::from_utf8_lossy(&out.stdout).trim(),
            ms % 1000
        )
    };
    let ejected = u2_entry.cloned().unwrap_or_default();
    s.check(
        status["now"] == rfc3339(&status["nowMs"]).as_str()
            && ejected["ejectedUntil"] == rfc3339(&ejected["ejectedUntilMs"]).as_str()
            && ejected["lastSeen"] == rfc3339(&ejected["lastSeenMs"]).as_str()
            && status["services"][0]["breaker"]["openUntil"].is_null(),
        || format!("RFC 3339 times should match the epoch ones: {status}"),
    );
    // Only hosts with failures on record are listed; the service's size is
    // `members`.
    s.check(
        hosts.len() == 1 && status["services"][0]["members"] == 3,
        || format!("u2 listed, three members expected: {status}"),
    );
    // Our local replies are not counted as requests.
    std::thread::sleep(FLUSH);
    let prom = s
        .envoy
        .admin_get("/stats/prometheus")
        .expect("prometheus stats");
    expect(
        "requests after status",
        prometheus_sample(&prom, "meshguard_requests", &[svc]),
        sent.total as f64,
    );
}

#[test]
fn status_endpoint_is_invisible_to_other_sources() {
    for (name, status) in [
        (
            "envoy_observability_status_other_cidr",
            r#"{"enabled":true,"allowedCidrs":["10.99.0.0/16"]}"#,
        ),
        ("envoy_observability_status_off", r#"{"enabled":false}"#),
    ] {
        let s = ThreeUpstreams::start(host_tests::test_paths!(), name, &config_with(status));
        let reply = get(s.listener(), "/meshguard/status");
        s.check(
            reply.status == 200 && reply.header("x-upstream-name").is_some(),
            || {
                format!(
                    "{name}: the request should reach an upstream like any other: {}",
                    reply.status
                )
            },
        );
        let body = String::from_utf8_lossy(&reply.body);
        s.check(
            !body.contains("services") && !body.contains("127.0.0.1"),
            || {
                format!(
                    "{name}: no status document and no upstream address for this client: {body}"
                )
            },
        );
    }
}

fn get_forwarded(addr: std::net::SocketAddr, xff: &str) -> http::Response {
    let headers = [("x-forwarded-for", xff)];
    http::request(
        addr,
        "GET",
        "/meshguard/status",
        &headers,
        &[],
        Duration::from_secs(5),
    )
    .expect("request")
}

/// A client outside `allowedCidrs` forging an allowed address in
/// X-Forwarded-For. On the demo listener (`use_remote_address: true`)
/// Envoy's source.address is the connection's peer, so the forgery is
/// ignored; on a listener with Envoy's default (as Istio's sidecars have),
/// Envoy takes source.address from the header, and meshguard refuses any
/// status request carrying it, saying why.
#[test]
fn status_endpoint_is_not_fooled_by_x_forwarded_for() {
    let forged = ["10.1.2.3", "1.2.3.4, 10.1.2.3"];
    let edge = ThreeUpstreams::start(
        host_tests::test_paths!(),
        "envoy_observability_status_xff_edge",
        &config_with(r#"{"enabled":true,"useRemoteAddress":true,"allowedCidrs":["10.1.2.3/32"]}"#),
    );
    for xff in forged {
        let reply = get_forwarded(edge.listener(), xff);
        let body = String::from_utf8_lossy(&reply.body).to_string();
        edge.check(
            reply.status == 200
                && reply.header("x-upstream-name").is_some()
                && !body.contains("services"),
            || format!("edge listener, X-Forwarded-For {xff:?}: the request should reach an upstream, no status document: {} {body}", reply.status),
        );
    }
    drop(edge);

    let inner = ThreeUpstreams::start_edited(
        host_tests::test_paths!(),
        "envoy_observability_status_xff_inner",
        &config_with(r#"{"enabled":true,"allowedCidrs":["10.1.2.3/32","127.0.0.1/32"]}"#),
        |yaml| {
            let edge = "          use_remote_address: true\n";
            yaml.contains(edge)
                .then(|| yaml.replace(edge, ""))
                .ok_or_else(|| "envoy/demo.yaml.tmpl changed: no use_remote_address line".into())
        },
    );
    for xff in forged {
        let reply = get_forwarded(inner.listener(), xff);
        let body = String::from_utf8_lossy(&reply.body).to_string();
        inner.check(
            reply.status == 403
                && body.contains("X-Forwarded-For")
                && !body.contains("services")
                && reply.header("x-upstream-name").is_none(),
            || format!("inner listener, X-Forwarded-For {xff:?}: meshguard should refuse, saying why: {} {body}", reply.status),
        );
    }
    // An allowed client calling without the header still gets its answer.
    let reply = get(inner.listener(), "/meshguard/status");
    let body = String::from_utf8_lossy(&reply.body).to_string();
    inner.check(reply.status == 200 && body.contains("services"), || {
        format!(
            "inner listener, no X-Forwarded-For: the status document: {} {body}",
            reply.status
        )
    });
}

/// A client cannot pin a host through meshguard's steering header: the
/// demo config removes it before meshguard runs, and no upstream sees it.
#[test]
fn clients_cannot_pin_a_host_through_the_steering_header() {
    let s = ThreeUpstreams::start(
        host_tests::test_paths!(),
        "envoy_observability_client_header",
        host_tests::TEST_PLUGIN_CONFIG,
    );
    let u2 = s.upstream(U2).data.to_string();
    let mut tally = Tally::default();
    for _ in 0..60 {
        let outcome = host_tests::traffic::send_one(s.listener(), &[("x-meshguard-upstream", &u2)]);
        s.check(outcome.upstream_saw_steering.is_none(), || {
            format!("an upstream received the client's steering header: {outcome:?}")
        });
        tally.add(&outcome);
    }
    s.check(
        tally.share("u2") < 0.5 && tally.with_status(200) == 60,
        || format!("the client's header must not pin u2: {tally}"),
    );
}
