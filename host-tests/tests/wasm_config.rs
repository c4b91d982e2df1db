//! Plugin configuration through `proxy_on_configure`, on the built module:
//! each kind of invalid configuration is refused with the message the
//! README documents, and a valid reconfiguration replaces the old one.

use host_tests::wasm_host::{Exchange, PluginModule, Proxy, ProxyOptions};

const B: &str = "10.0.0.2:80";

fn start(configuration: &[u8]) -> Proxy {
    Proxy::with_options(
        &PluginModule::from_env(),
        ProxyOptions {
            workers: 1,
            plugin_configuration: configuration.to_vec(),
            ..ProxyOptions::default()
        },
    )
    .expect("the VM starts whatever the configuration")
}

/// Every kind of refusal: (kind, configuration, the field and reason logged).
const INVALID: &[(&str, &[u8], &str)] = &[
    ("not UTF-8", b"\xff\xfe", "(configuration): is not UTF-8 text"),
    ("not JSON", b"{", "(configuration): is not valid JSON: EOF while parsing an object at line 1 column 1"),
    ("not an object", b"[]", "(configuration): must be a JSON object, not an array"),
    ("section of the wrong type", br#"{"detection":5}"#, "detection: expected an object, not a number"),
    (
        "unknown field",
        br#"{"detection":{"windowSze":10}}"#,
        "detection.windowSze: unknown field (expected one of: windowSize, minRequests, degradedFailurePercent, \
         unhealthyFailurePercent, recoveredFailurePercent, consecutive5xxErrors, consecutiveGatewayErrors, \
         consecutiveLocalOriginFailures, failureStatusCodes, grpcFailureCodes, slowCallThreshold, slowCallPercent, \
         countClientCancellations)",
    ),
    ("wrong type", br#"{"detection":{"windowSize":"ten"}}"#, "detection.windowSize: expected a whole number, not a string"),
    ("below range", br#"{"detection":{"windowSize":0}}"#, "detection.windowSize: 0 is out of range (1-1000)"),
    ("above range", br#"{"detection":{"windowSize":5000}}"#, "detection.windowSize: 5000 is out of range (1-1000)"),
    (
        "minRequests > windowSize",
        br#"{"detection":{"windowSize":10,"minRequests":20}}"#,
        "detection.minRequests: 20 is more than windowSize (10), so no window would ever be judged",
    ),
    (
        "recovered >= degraded",
        br#"{"detection":{"recoveredFailurePercent":30}}"#,
        "detection.recoveredFailurePercent: 30 must be below degradedFailurePercent (30), or hosts could never recover",
    ),
    (
        "degraded > unhealthy",
        br#"{"detection":{"degradedFailurePercent":60}}"#,
        "detection.degradedFailurePercent: 60 must not exceed unhealthyFailurePercent (50)",
    ),
    (
        "maxEjectionTime < baseEjectionTime",
        br#"{"ejection":{"maxEjectionTime":"10s"}}"#,
        "ejection.maxEjectionTime: 10000ms is shorter than baseEjectionTime (30000ms)",
    ),
    ("zero ejection", br#"{"ejection":{"baseEjectionTime":"0s"}}"#, "ejection.baseEjectionTime: must be longer than 0s"),
    (
        "duration without unit",
        br#"{"ejection":{"baseEjectionTime":"30"}}"#,
        "ejection.baseEjectionTime: `30` has no unit (use ms, s, m or h, e.g. \"30s\")",
    ),
    (
        "bare number as duration",
        br#"{"ejection":{"baseEjectionTime":30}}"#,
        "ejection.baseEjectionTime: expected a duration string such as \"30s\" or \"500ms\", not a number",
    ),
    (
        "framing header for steering",
        br#"{"steering":{"header":"content-length"}}"#,
        "steering.header: `content-length` is a header HTTP itself depends on",
    ),
    ("unknown encoding", br#"{"steering":{"encoding":"hex"}}"#, "steering.encoding: `hex` is not one of: plain, base64"),
    (
        "bad status class",
        br#"{"detection":{"failureStatusCodes":["6xx"]}}"#,
        "detection.failureStatusCodes[0]: `6xx` is not a status class (1xx-5xx)",
    ),
    (
        "bad gRPC code",
        br#"{"detection":{"grpcFailureCodes":[17]}}"#,
        "detection.grpcFailureCodes[0]: is not a gRPC error status (1-16)",
    ),
];

#[test]
fn each_invalid_configuration_is_refused_with_its_message() {
    for (kind, configuration, reason) in INVALID {
        let mut proxy = start(configuration);
        assert_eq!(
            proxy.configured,
            [false],
            "{kind}: proxy_on_configure must return false"
        );
        let expected =
            format!("meshguard: invalid plugin configuration, filter not started: {reason}");
        let logged: Vec<String> = proxy.logs().into_iter().map(|r| r.message).collect();
        assert_eq!(logged, [expected], "{kind}");
        // Not started: traffic passes untouched and nothing traps.
        let sent = Exchange::new("demo", B, 503).header("x-meshguard-upstream", "10.9.9.9:80");
        let stream = proxy.exchange(0, &sent).expect(kind);
        assert_eq!(
            stream.request_headers.as_ref(),
            Some(&sent.request_headers),
            "{kind}"
        );
    }
}

#[test]
fn empty_and_partial_configurations_mean_defaults() {
    for configuration in [&b""[..], b"  ", b"{}", br#"{"detection":{}}"#] {
        assert_eq!(
            start(configuration).configured,
            [true],
            "{:?}",
            String::from_utf8_lossy(configuration)
        );
    }
}

/// Failures until `host` is ejected, at most `limit`.
fn failures_to_eject(proxy: &mut Proxy, host: &str, limit: usize) -> Option<usize> {
    let before = proxy
        .log_lines(&format!("host {host}: Healthy -> Unhealthy"))
        .len();
    for n in 1..=limit {
        proxy
            .exchange(0, &Exchange::new("demo", host, 503))
            .unwrap();
        if proxy
            .log_lines(&format!("host {host}: Healthy -> Unhealthy"))
            .len()
            > before
        {
            return Some(n);
        }
    }
    None
}

#[test]
fn reconfiguration_replaces_the_configuration_or_keeps_it_when_invalid() {
    // maxEjectionPercent 100: every host may be ejected, so each step can
    // eject a fresh host.
    let three = r#"{"detection":{"consecutive5xxErrors":3},"ejection":{"maxEjectionPercent":100},
                    "circuitBreaker":{"enabled":false}}"#;
    let seven = r#"{"detection":{"consecutive5xxErrors":7},"ejection":{"maxEjectionPercent":100},
                    "circuitBreaker":{"enabled":false}}"#;
    let mut proxy = start(three.as_bytes());
    assert_eq!(proxy.configured, [true]);
    assert_eq!(failures_to_eject(&mut proxy, "10.0.0.1:80", 20), Some(3));

    // Invalid: refused, the running configuration stays.
    assert_eq!(
        proxy
            .configure(r#"{"detection":{"consecutive5xxErrors":-1}}"#)
            .unwrap(),
        [false]
    );
    let refused = proxy.log_lines("invalid plugin configuration");
    assert_eq!(
        refused,
        [
            "meshguard: invalid plugin configuration, keeping the previous configuration: \
          detection.consecutive5xxErrors: -1 is out of range (0-65535)"
        ]
    );
    assert_eq!(
        failures_to_eject(&mut proxy, "10.0.0.2:80", 20),
        Some(3),
        "still 3 after the refusal"
    );

    // Valid: replaces it.
    assert_eq!(proxy.configure(seven).unwrap(), [true]);
    assert_eq!(
        failures_to_eject(&mut proxy, "10.0.0.3:80", 20),
        Some(7),
        "7 after the new configuration"
    );
}
