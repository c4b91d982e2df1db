//! Plugin configuration through `proxy_on_configure`, on the built module:
//! each kind of invalid configuration is refused with the message the
//! configuration reference (docs/configuration.md) documents, and a valid
//! reconfiguration replaces the old one.

use host_tests::wasm_host::abi::MapType;
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
         countClientCancellations, successSampling)",
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
        "steering.header: `content-length` is a header HTTP framing depends on (Envoy manages it)",
    ),
    ("unknown encoding", br#"{"steering":{"encoding":"hex"}}"#, "steering.encoding: `hex` is not one of: plain, base64"),
    (
        "credential header for steering",
        br#"{"steering":{"header":"Authorization"}}"#,
        "steering.header: `authorization` belongs to the client (credentials, cookies, request id): meshguard would overwrite it",
    ),
    (
        "hop-by-hop header for steering",
        br#"{"steering":{"header":"te"}}"#,
        "steering.header: `te` is a header HTTP framing depends on (Envoy manages it)",
    ),
    (
        "a key given twice",
        br#"{"detection":{"windowSize":0},"detection":{}}"#,
        "detection: appears twice (JSON keeps only the last)",
    ),
    (
        "a number that underflows",
        br#"{"detection":{"consecutive5xxErrors":1e-400}}"#,
        "detection.consecutive5xxErrors: `1e-400` is too small to tell from 0",
    ),
    (
        "a number that overflows",
        br#"{"detection":{"windowSize":1e400}}"#,
        "detection.windowSize: `1e400` is not a number meshguard can read",
    ),
    (
        "control character in the status path",
        b"{\"status\":{\"path\":\"/s\\u001b\"}}",
        "status.path: contains control characters (CR, LF, NUL...)",
    ),
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

/// Issue 20, item 5: a response rule repeating `{requestId}` 5,000 times
/// and a 59 KB client `x-request-id` asked the VM for 512 MB and trapped.
/// Such a template is refused; the largest accepted one renders a bounded
/// value whatever the client sends.
#[test]
fn a_huge_request_id_cannot_make_a_rendered_header_exhaust_memory() {
    let rule = |repeats: usize| {
        format!(
            r#"{{"headers":{{"response":[{{"op":"set","name":"x-echo","value":"{}"}}]}}}}"#,
            "{requestId}".repeat(repeats)
        )
    };
    let huge_id = "a".repeat(59 * 1024);
    let echo_seen = std::cell::Cell::new(0);
    let send_huge_ids = |proxy: &mut Proxy| {
        for _ in 0..3 {
            let sent = Exchange::new("demo", B, 200).header("x-request-id", &huge_id);
            let stream = proxy
                .exchange(0, &sent)
                .expect("a huge x-request-id does not trap the VM");
            let echo = stream
                .header(MapType::ResponseHeaders, "x-echo")
                .expect("the rule still applies")
                .to_vec();
            assert!(echo.len() <= 12 * 1024, "{} bytes rendered", echo.len());
            assert!(proxy.vm(0).memory_size() < 64 << 20, "memory stays small");
            echo_seen.set(echo.len());
        }
    };

    // Before the fix this one was accepted, and its first request trapped.
    let mut proxy = start(rule(5000).as_bytes());
    if proxy.configured == [true] {
        send_huge_ids(&mut proxy);
    }
    assert_eq!(proxy.configured, [false], "55 KB of template is refused");
    assert_eq!(
        proxy.log_lines("invalid plugin configuration"),
        [
            "meshguard: invalid plugin configuration, filter not started: \
          headers.response[0].value: is 55000 bytes long (at most 4096)"
        ]
    );

    let mut proxy = start(rule(16).as_bytes());
    assert_eq!(proxy.configured, [true]);
    send_huge_ids(&mut proxy);
    // Each placeholder's value is cut to its first 512 bytes.
    assert_eq!(echo_seen.get(), 16 * 512);
}

/// Issue 20, item 11: CR/LF in a configuration value, or in a name Envoy
/// hands over (a cluster's), must not forge a line in Envoy's log.
#[test]
fn control_characters_never_reach_the_log_raw() {
    let proxy = start(b"{\"detection\":{\"window\\r\\nmeshguard: forged\":1}}");
    assert_eq!(proxy.configured, [false]);
    let logged: Vec<String> = proxy.logs().into_iter().map(|r| r.message).collect();
    assert_eq!(logged.len(), 1, "{logged:?}");
    assert!(!logged[0].contains(['\r', '\n']), "{:?}", logged[0]);

    let mut proxy = start(br#"{"detection":{"consecutive5xxErrors":2}}"#);
    let cluster = "demo\r\nmeshguard: forged\u{1b}[2J";
    for _ in 0..3 {
        proxy.exchange(0, &Exchange::new(cluster, B, 503)).unwrap();
    }
    let logged: Vec<String> = proxy.logs().into_iter().map(|r| r.message).collect();
    let ejected: Vec<&String> = logged.iter().filter(|l| l.contains("Unhealthy")).collect();
    assert!(!ejected.is_empty(), "{logged:?}");
    for line in &logged {
        assert!(
            !line.contains(['\r', '\n', '\u{1b}']),
            "raw control character: {line:?}"
        );
    }
    assert!(
        ejected[0].contains("demo\\x0d\\x0ameshguard: forged\\x1b[2J"),
        "{:?}",
        ejected[0]
    );
}
