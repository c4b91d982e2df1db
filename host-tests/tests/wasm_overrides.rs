//! Per-VirtualService and per-route overrides of the shipped module in the
//! wasmtime host, through Istio-shaped route metadata: `xds.route_name` and
//! `xds.route_metadata` (protobuf `Metadata` with
//! `filter_metadata.istio.config =
//! "/apis/networking.istio.io/v1/namespaces/<ns>/virtual-service/<name>"`).

mod common;

use std::time::Duration;

use common::{host_metric, scoped, service_metric, Service};
use host_tests::wasm_host::abi::MapType;
use host_tests::wasm_host::scenario::RouteSpec;
use host_tests::wasm_host::Metadata;

const B: usize = 1;
const B_ADDR: &str = "10.0.0.2:80";

fn ms(millis: u64) -> Duration {
    Duration::from_millis(millis)
}

/// A route istiod built from VirtualService `namespace/name`.
fn istio_route(route: &str, namespace: &str, name: &str) -> RouteSpec {
    RouteSpec {
        // As istiod: one virtual host per VirtualService host.
        virtual_host: format!("{name}.{namespace}.svc.cluster.local:80"),
        name: route.to_string(),
        metadata: Some(Metadata::istio_virtual_service(namespace, name)),
    }
}

/// A route that did not come from a VirtualService.
fn plain_route(route: &str) -> RouteSpec {
    RouteSpec {
        virtual_host: "demo".to_string(),
        name: route.to_string(),
        metadata: None,
    }
}

/// B fails every 4th request it receives (25%), whichever route sent it.
struct Grey {
    b_requests: u64,
}

impl Grey {
    fn answer(&mut self, host: usize) -> u16 {
        if host != B {
            return 200;
        }
        self.b_requests += 1;
        if self.b_requests.is_multiple_of(4) {
            503
        } else {
            200
        }
    }
}

/// Requests per host on one route.
fn send(svc: &mut Service, vm: usize, route: &RouteSpec, grey: &mut Grey, tally: &mut [u64; 3]) {
    let started = svc.request(vm, Some(route), |host| grey.answer(host));
    let (_, host) = started.upstream().expect("no breaker here");
    tally[host] += 1;
}

const STRICT_AND_LENIENT: &str = r#"{
    "detection": {"windowSize": 20, "minRequests": 10, "unhealthyFailurePercent": 50},
    "steering": {"discoveryPercent": 0},
    "ejection": {"baseEjectionTime": "60s"},
    "circuitBreaker": {"enabled": false},
    "overrides": [
        {"virtualService": "shop/payments",
         "detection": {"degradedFailurePercent": 5, "unhealthyFailurePercent": 10, "recoveredFailurePercent": 1}},
        {"virtualService": "shop/batch",
         "detection": {"degradedFailurePercent": 60, "unhealthyFailurePercent": 90, "recoveredFailurePercent": 20}}
    ]
}"#;

/// One configuration, two VirtualServices of the same cluster: B failing
/// 25% is ejected for payments traffic (25% >= 10%), which is steered to A
/// and C from then on, while batch traffic (25% < 60%) keeps sending B its
/// round-robin third.
#[test]
fn a_grey_host_is_ejected_for_payments_but_kept_for_batch() {
    let mut svc = Service::new(STRICT_AND_LENIENT, 2, 3);
    let payments = istio_route("payments", "shop", "payments");
    let batch = istio_route("batch", "shop", "batch");
    let mut grey = Grey { b_requests: 0 };
    let (mut pay, mut bat) = ([0u64; 3], [0u64; 3]);
    let ejected = |svc: &Service| svc.log_lines("-> Unhealthy");
    let mut rounds = 0;
    while ejected(&svc).is_empty() {
        assert!(
            rounds < 200,
            "payments never ejected B: {:?}",
            svc.proxy.logs()
        );
        send(&mut svc, rounds % 2, &payments, &mut grey, &mut pay);
        send(&mut svc, rounds % 2, &batch, &mut grey, &mut bat);
        svc.advance(ms(10));
        rounds += 1;
    }
    let payments_key = scoped("demo", "shop/payments", "*");
    let batch_key = scoped("demo", "shop/batch", "*");
    let lines = ejected(&svc);
    assert_eq!(lines.len(), 1, "{lines:?}");
    assert!(
        lines[0].starts_with(&format!("meshguard: {payments_key} host {B_ADDR}: ")),
        "ejected in the payments scope: {lines:?}"
    );
    assert!(
        lines[0].contains(" >= 10%"),
        "by the payments threshold: {lines:?}"
    );

    // Every VM knows within a tick; then 300 more rounds.
    svc.advance(ms(100));
    let (mut pay, mut bat) = ([0u64; 3], [0u64; 3]);
    for round in 0..300 {
        send(&mut svc, round % 2, &payments, &mut grey, &mut pay);
        send(&mut svc, round % 2, &batch, &mut grey, &mut bat);
        svc.advance(ms(10));
    }
    println!("payments per host {pay:?}, batch per host {bat:?}");
    svc.advance(ms(200)); // counters are added on the tick
    assert_eq!(pay[B], 0, "payments traffic avoids B: {pay:?}");
    assert_eq!(pay.iter().sum::<u64>(), 300);
    let batch_share = bat[B] as f64 / 300.0;
    assert!(
        (0.30..=0.37).contains(&batch_share),
        "batch keeps B at a third: {bat:?}"
    );
    // Nothing happened to B in the batch scope (nor the service's own).
    assert!(
        svc.log_lines(&format!("{batch_key} host")).is_empty(),
        "{:?}",
        svc.log_lines("host")
    );
    assert_eq!(
        svc.metric(&host_metric("host_state", &payments_key, B_ADDR)),
        Some(2)
    );
    // Never graded in the batch scope: no per-host series there (they
    // exist only for graded hosts), or a Healthy one.
    assert!(matches!(
        svc.metric(&host_metric("host_state", &batch_key, B_ADDR)),
        None | Some(0)
    ));
    assert_eq!(
        svc.metric(&service_metric("requests", "demo")),
        None,
        "{}",
        svc.dump()
    );
    assert_eq!(
        svc.metric(&service_metric("steered", &payments_key)),
        Some(300),
        "{}",
        svc.dump()
    );
}

/// An override with only `headers` has no state of its own: its routes'
/// outcomes grade the service's hosts, and what they teach applies to
/// every route of the service.
#[test]
fn a_headers_only_override_shares_the_service_state() {
    let config = r#"{
        "detection": {"consecutive5xxErrors": 3},
        "steering": {"discoveryPercent": 0},
        "circuitBreaker": {"enabled": false},
        "overrides": [
            {"virtualService": "shop/web",
             "headers": {"response": [{"op": "set", "name": "x-mg-state", "value": "{hostState}"}]}}
        ]
    }"#;
    let mut svc = Service::new(config, 2, 3);
    let web = istio_route("web", "shop", "web");
    let other = plain_route("default");
    // Both VMs have served the service once (a worker that never has does
    // not steer its first requests: see wasm_breaker.rs,
    // a_worker_that_never_saw_the_service_honours_its_state).
    for vm in 0..2 {
        svc.request(vm, Some(&other), |_| 200);
    }
    // Then web traffic only: B fails three times in a row.
    let mut seen_state = Vec::new();
    let mut failures = 0;
    while failures < 3 {
        let started = svc.start(0, Some(&web), &[]);
        let (stream, host) = started.upstream().expect("upstream");
        let state = svc.complete(stream, host, if host == B { 503 } else { 200 });
        failures += u64::from(host == B);
        let value = state
            .header(MapType::ResponseHeaders, "x-mg-state")
            .map(|v| String::from_utf8_lossy(v).into_owned());
        seen_state.push(value);
    }
    // The override's header rule ran on web responses.
    assert!(
        seen_state.iter().all(|v| v.is_some()),
        "x-mg-state on every web response: {seen_state:?}"
    );
    assert_eq!(
        svc.log_lines("-> Unhealthy").len(),
        1,
        "{:?}",
        svc.proxy.logs()
    );
    assert_eq!(
        svc.log_lines(&format!(
            "meshguard: demo host {B_ADDR}: Healthy -> Unhealthy"
        ))
        .len(),
        1,
        "ejected in the service's own state"
    );
    svc.advance(ms(100));
    // A route without any override avoids B too, on both VMs.
    let mut tally = [0u64; 3];
    for i in 0..60 {
        let started = svc.request(i % 2, Some(&other), |_| 200);
        tally[started.upstream().expect("upstream").1] += 1;
    }
    assert_eq!(tally[B], 0, "{tally:?}");
    // ... and it has no x-mg-state (the rule belongs to web routes).
    let started = svc.start(1, Some(&other), &[]);
    let (stream, host) = started.upstream().expect("upstream");
    let state = svc.complete(stream, host, 200);
    assert!(state
        .header(MapType::ResponseHeaders, "x-mg-state")
        .is_none());
    // One set of metrics, under the cluster's name only.
    svc.advance(ms(200));
    assert_eq!(
        svc.metric(&host_metric("host_state", "demo", B_ADDR)),
        Some(2)
    );
    let dump = svc.dump();
    assert!(!dump.contains("vs_"), "no scoped metrics:\n{dump}");
}

fn requests_by_key(config: &str, routes: &[(&RouteSpec, u64)]) -> Service {
    let mut svc = Service::new(config, 2, 3);
    for (route, count) in routes {
        for i in 0..*count {
            svc.request(i as usize % 2, Some(route), |_| 200);
        }
    }
    svc.advance(ms(200));
    svc
}

/// Overrides are tried in order and the first match applies: a specific
/// override listed before a general one takes its routes; listed after,
/// it never matches anything.
#[test]
fn the_first_matching_override_wins() {
    let refunds = istio_route("refunds", "shop", "payments");
    let charge = istio_route("charge", "shop", "payments");
    let specific = r#"{"virtualService": "shop/payments", "route": "refund*", "detection": {"minRequests": 5}}"#;
    let general = r#"{"virtualService": "shop/*", "detection": {"minRequests": 7}}"#;
    let specific_key = scoped("demo", "shop/payments", "refund*");
    let general_key = scoped("demo", "shop/*", "*");
    let requests = |svc: &Service, key: &str| svc.metric(&service_metric("requests", key));

    let config = format!(r#"{{"overrides": [{specific}, {general}]}}"#);
    let svc = requests_by_key(&config, &[(&refunds, 10), (&charge, 7)]);
    assert_eq!(
        (
            requests(&svc, &specific_key),
            requests(&svc, &general_key),
            requests(&svc, "demo")
        ),
        (Some(10), Some(7), None),
        "{}",
        svc.dump()
    );

    let config = format!(r#"{{"overrides": [{general}, {specific}]}}"#);
    let svc = requests_by_key(&config, &[(&refunds, 10), (&charge, 7)]);
    assert_eq!(
        (
            requests(&svc, &specific_key),
            requests(&svc, &general_key),
            requests(&svc, "demo")
        ),
        (None, Some(17), None),
        "{}",
        svc.dump()
    );
}

/// A route without Istio's metadata has no VirtualService, and no
/// `virtualService` selector matches it, not even `*`; a `route` selector
/// alone still does.
#[test]
fn a_route_without_istio_metadata_never_matches_a_virtual_service_selector() {
    let config = r#"{"overrides": [
        {"virtualService": "*", "detection": {"minRequests": 5}},
        {"route": "payments", "detection": {"minRequests": 6}}
    ]}"#;
    let vs_key = scoped("demo", "*", "*");
    let route_key = scoped("demo", "*", "payments");
    let requests = |svc: &Service, key: &str| svc.metric(&service_metric("requests", key));

    // No metadata; metadata of another filter with the same string; Istio
    // metadata that is not a VirtualService path.
    let bare = plain_route("payments");
    let foreign = RouteSpec {
        virtual_host: "demo".into(),
        name: "payments".into(),
        metadata: Some(Metadata::new().with(
            "envoy.filters.http.other",
            "config",
            "/apis/networking.istio.io/v1/namespaces/shop/virtual-service/payments",
        )),
    };
    let not_a_vs = RouteSpec {
        virtual_host: "demo".into(),
        name: "payments".into(),
        metadata: Some(Metadata::new().with(
            "istio",
            "config",
            "/apis/networking.istio.io/v1/namespaces/shop/destination-rule/payments",
        )),
    };
    for route in [&bare, &foreign, &not_a_vs] {
        let svc = requests_by_key(config, &[(route, 9)]);
        assert_eq!(
            (requests(&svc, &vs_key), requests(&svc, &route_key)),
            (None, Some(9)),
            "{route:?}\n{}",
            svc.dump()
        );
    }
    // Control: with Istio's metadata the `*` selector matches.
    let svc = requests_by_key(config, &[(&istio_route("payments", "shop", "payments"), 9)]);
    assert_eq!(
        (requests(&svc, &vs_key), requests(&svc, &route_key)),
        (Some(9), None),
        "{}",
        svc.dump()
    );
}

/// Two VirtualServices may both name a route the same way (or leave it
/// unnamed): the override must follow each route's own metadata. Routes
/// are cached per worker by virtual host and name, which istiod makes
/// unique (one virtual host per VirtualService host).
#[test]
fn routes_with_the_same_name_in_two_virtual_services_get_their_own_override() {
    let config = r#"{"overrides": [
        {"virtualService": "shop/payments", "detection": {"minRequests": 5}},
        {"virtualService": "shop/batch", "detection": {"minRequests": 6}}
    ]}"#;
    let payments = istio_route("main", "shop", "payments");
    let batch = istio_route("main", "shop", "batch");
    let svc = requests_by_key(config, &[(&payments, 4), (&batch, 6)]);
    let requests = |key: &str| svc.metric(&service_metric("requests", key));
    assert_eq!(
        (
            requests(&scoped("demo", "shop/payments", "*")),
            requests(&scoped("demo", "shop/batch", "*"))
        ),
        (Some(4), Some(6)),
        "{}",
        svc.dump()
    );
}
