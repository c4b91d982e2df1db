use super::*;

fn parse(json: &str) -> Result<Config, ConfigError> {
    Config::parse(json.as_bytes())
}

fn refused(json: &str) -> ConfigError {
    match parse(json) {
        Ok(config) => panic!("accepted {json}: {config:?}"),
        Err(err) => err,
    }
}

#[test]
fn empty_configuration_means_defaults() {
    for empty in ["", "  \n", "{}"] {
        assert_eq!(parse(empty).unwrap(), Config::default());
    }
    let config = Config::default();
    assert_eq!(config.detection.window_size, 100);
    assert_eq!(config.detection.min_requests, 20);
    assert!(config.detection.failure_statuses.contains(503));
    assert!(!config.detection.failure_statuses.contains(404));
    assert_eq!(config.ejection.base_ejection_time, Millis(30_000));
    assert_eq!(config.steering.header, "x-meshguard-upstream");
}

#[test]
fn the_documented_example_parses() {
    let config = parse(
        r#"{"detection": {"windowSize": 100, "minRequests": 20, "degradedFailurePercent": 30,
            "unhealthyFailurePercent": 50, "recoveredFailurePercent": 10, "consecutive5xxErrors": 5,
            "consecutiveGatewayErrors": 0, "consecutiveLocalOriginFailures": 5,
            "failureStatusCodes": ["5xx", "429"], "grpcFailureCodes": [14, 4],
            "slowCallThreshold": "250ms", "slowCallPercent": 50},
         "ejection": {"baseEjectionTime": "30s", "maxEjectionTime": "300s", "maxEjectionPercent": 50,
            "ejectionJitter": "1s", "warmupDuration": "60s", "degradedWeightPercent": 50},
         "steering": {"enabled": true, "header": "X-MeshGuard-Upstream", "encoding": "base64"}}"#,
    )
    .unwrap();
    assert!(config.detection.failure_statuses.contains(429));
    assert!(config.detection.grpc_code_is_failure(4));
    assert!(!config.detection.grpc_code_is_failure(5));
    assert_eq!(config.detection.slow_call_threshold, Millis(250));
    assert_eq!(config.ejection.ejection_jitter, Millis(1000));
    assert_eq!(
        config.steering.header, "x-meshguard-upstream",
        "header names are lower-cased"
    );
    assert_eq!(config.steering.encoding, Encoding::Base64);
}

#[test]
fn partial_objects_keep_defaults_for_the_rest() {
    let config = parse(r#"{"ejection": {"baseEjectionTime": "5s"}}"#).unwrap();
    assert_eq!(config.ejection.base_ejection_time, Millis(5000));
    assert_eq!(config.ejection.max_ejection_time, Millis(300_000));
    assert_eq!(config.detection, Detection::default());
}

#[test]
fn a_typo_is_an_error_naming_the_field() {
    let err = refused(r#"{"detection": {"windowSze": 50}}"#);
    assert_eq!(err.field, "detection.windowSze");
    assert!(err.reason.starts_with("unknown field"), "{err}");
    assert!(
        err.reason.contains("windowSize"),
        "the message lists the real names: {err}"
    );
    assert_eq!(refused(r#"{"detektion": {}}"#).field, "detektion");
}

#[test]
fn istio_struct_numbers_are_accepted_when_whole() {
    // Istio's pluginConfig is a protobuf Struct: every number is a double.
    let config =
        parse(r#"{"detection": {"windowSize": 50.0, "grpcFailureCodes": [14.0]}}"#).unwrap();
    assert_eq!(config.detection.window_size, 50);
    assert!(config.detection.grpc_code_is_failure(14));
    let err = refused(r#"{"detection": {"windowSize": 50.5}}"#);
    assert_eq!(err.field, "detection.windowSize");
    assert!(err.reason.contains("whole number"), "{err}");
    let err = refused(r#"{"detection": {"windowSize": -5}}"#);
    assert_eq!(err.reason, "-5 is out of range (1-1000)");
}

#[test]
fn wrong_types_name_the_field() {
    let err = refused(r#"{"detection": {"windowSize": "big"}}"#);
    assert_eq!(err.field, "detection.windowSize");
    let err = refused(r#"{"ejection": {"baseEjectionTime": 30}}"#);
    assert_eq!(err.field, "ejection.baseEjectionTime");
    let err = refused(r#"{"ejection": {"baseEjectionTime": "30"}}"#);
    assert_eq!(err.field, "ejection.baseEjectionTime");
    assert!(err.reason.contains("no unit"), "{err}");
    let err = refused(r#"{"steering": {"encoding": "hex"}}"#);
    assert_eq!(err.field, "steering.encoding");
    assert!(err.reason.contains("plain, base64"), "{err}");
    let err = refused(r#"{"steering": {"enabled": "yes"}}"#);
    assert_eq!(err.field, "steering.enabled");
    let err = refused(r#"{"detection": []}"#);
    assert_eq!(
        (err.field.as_str(), err.reason.as_str()),
        ("detection", "expected an object, not an array")
    );
    let err = refused(r#"{"detection": {"degradedFailurePercent": 300}}"#);
    assert_eq!(err.field, "detection.degradedFailurePercent");
}

#[test]
fn malformed_input_is_refused_not_defaulted() {
    assert_eq!(refused("{").field, "(configuration)");
    assert_eq!(refused("[]").field, "(configuration)");
    assert_eq!(refused("{} {}").field, "(configuration)");
    assert_eq!(
        Config::parse(&[0xff, 0xfe]).unwrap_err().field,
        "(configuration)"
    );
}

#[test]
fn out_of_range_values_are_refused() {
    let cases = [
        (
            r#"{"detection": {"windowSize": 0}}"#,
            "detection.windowSize",
        ),
        (
            r#"{"detection": {"windowSize": 5000}}"#,
            "detection.windowSize",
        ),
        (
            r#"{"detection": {"minRequests": 0}}"#,
            "detection.minRequests",
        ),
        (
            r#"{"detection": {"windowSize": 10, "minRequests": 20}}"#,
            "detection.minRequests",
        ),
        (
            r#"{"detection": {"degradedFailurePercent": 101}}"#,
            "detection.degradedFailurePercent",
        ),
        (
            r#"{"detection": {"unhealthyFailurePercent": 0}}"#,
            "detection.unhealthyFailurePercent",
        ),
        (
            r#"{"detection": {"slowCallPercent": 0}}"#,
            "detection.slowCallPercent",
        ),
        (
            r#"{"detection": {"failureStatusCodes": ["5xx", "6xx"]}}"#,
            "detection.failureStatusCodes[1]",
        ),
        (
            r#"{"detection": {"grpcFailureCodes": [14, 0]}}"#,
            "detection.grpcFailureCodes[1]",
        ),
        (
            r#"{"detection": {"grpcFailureCodes": [17]}}"#,
            "detection.grpcFailureCodes[0]",
        ),
        (
            r#"{"ejection": {"baseEjectionTime": "0s"}}"#,
            "ejection.baseEjectionTime",
        ),
        (
            r#"{"ejection": {"maxEjectionPercent": 101}}"#,
            "ejection.maxEjectionPercent",
        ),
        (
            r#"{"ejection": {"degradedWeightPercent": 120}}"#,
            "ejection.degradedWeightPercent",
        ),
        (r#"{"steering": {"header": ""}}"#, "steering.header"),
        (r#"{"steering": {"header": "x bad"}}"#, "steering.header"),
        (
            r#"{"steering": {"header": ":authority"}}"#,
            "steering.header",
        ),
        (
            r#"{"steering": {"header": "content-length"}}"#,
            "steering.header",
        ),
        (r#"{"limits": {"maxServices": 0}}"#, "limits.maxServices"),
        (
            r#"{"limits": {"maxHostsPerService": 100000}}"#,
            "limits.maxHostsPerService",
        ),
        (
            r#"{"limits": {"maxHostsPerService": 16385}}"#,
            "limits.maxHostsPerService",
        ),
        (
            r#"{"limits": {"maxWatchedHostsPerService": 0}}"#,
            "limits.maxWatchedHostsPerService",
        ),
        (
            r#"{"limits": {"maxWatchedHostsPerService": 4097}}"#,
            "limits.maxWatchedHostsPerService",
        ),
        (
            r#"{"limits": {"maxWatchedHostsPerService": 1.5}}"#,
            "limits.maxWatchedHostsPerService",
        ),
        (
            r#"{"steering": {"discoveryPercent": 51}}"#,
            "steering.discoveryPercent",
        ),
        (
            r#"{"steering": {"discoveryPercent": -1}}"#,
            "steering.discoveryPercent",
        ),
        (
            r#"{"steering": {"retryOn": "5xx,everything"}}"#,
            "steering.retryOn",
        ),
        (r#"{"steering": {"retryOn": 5}}"#, "steering.retryOn"),
    ];
    for (json, field) in cases {
        assert_eq!(refused(json).field, field, "for {json}");
    }
}

#[test]
fn inconsistent_thresholds_are_refused() {
    let err =
        refused(r#"{"detection": {"recoveredFailurePercent": 30, "degradedFailurePercent": 30}}"#);
    assert_eq!(err.field, "detection.recoveredFailurePercent");
    assert!(err.reason.contains("never recover"), "{err}");
    let err =
        refused(r#"{"detection": {"degradedFailurePercent": 60, "unhealthyFailurePercent": 50}}"#);
    assert_eq!(err.field, "detection.degradedFailurePercent");
    let err = refused(r#"{"ejection": {"baseEjectionTime": "60s", "maxEjectionTime": "30s"}}"#);
    assert_eq!(err.field, "ejection.maxEjectionTime");
}

#[test]
fn the_error_reads_as_one_line_for_the_log() {
    let err = refused(r#"{"detection": {"windowSize": 0}}"#);
    assert_eq!(
        err.to_string(),
        "detection.windowSize: 0 is out of range (1-1000)"
    );
}

#[test]
fn overrides_merge_over_the_top_level_configuration() {
    let config = parse(
        r#"{"detection": {"degradedFailurePercent": 20, "recoveredFailurePercent": 5},
            "overrides": [
              {"virtualService": "shop/payments", "detection": {"unhealthyFailurePercent": 25},
               "circuitBreaker": {"failurePercent": 20}},
              {"route": "batch-*", "headers": {"response": [{"op": "remove", "name": "x-debug"}]}}
            ]}"#,
    )
    .unwrap();
    let payments = config
        .override_for("shop/payments", "any")
        .expect("vs match");
    assert_eq!(payments.config.detection.unhealthy_failure_percent, 25);
    assert_eq!(
        payments.config.detection.degraded_failure_percent, 20,
        "inherited"
    );
    assert_eq!(payments.config.circuit_breaker.failure_percent, 20);
    assert_eq!(
        payments.config.circuit_breaker.open_duration,
        config.circuit_breaker.open_duration
    );
    assert!(payments.has_own_state);
    assert!(payments.config.overrides.is_empty());
    let batch = config
        .override_for("", "batch-nightly")
        .expect("route match");
    assert!(
        !batch.has_own_state,
        "headers alone share the service's state"
    );
    assert_eq!(batch.config.headers.response.len(), 1);
    assert_eq!(batch.config.detection, config.detection);
    assert!(config.override_for("shop/reviews", "reviews").is_none());
}

#[test]
fn the_first_matching_override_wins() {
    let config = parse(
        r#"{"overrides": [
              {"virtualService": "shop/payments", "route": "refunds", "detection": {"windowSize": 10, "minRequests": 5}},
              {"virtualService": "shop/*", "detection": {"windowSize": 50}}
            ]}"#,
    )
    .unwrap();
    let refunds = config.override_for("shop/payments", "refunds").unwrap();
    assert_eq!(refunds.config.detection.window_size, 10);
    let other = config.override_for("shop/payments", "charge").unwrap();
    assert_eq!(other.config.detection.window_size, 50);
    assert_ne!(refunds.scope, other.scope);
    assert!(
        config.override_for("", "refunds").is_none(),
        "no VirtualService, no match"
    );
}

#[test]
fn bad_overrides_are_refused_with_their_index() {
    let cases = [
        (r#"{"overrides": [{"detection": {}}]}"#, "overrides[0]"),
        (
            r#"{"overrides": [{"route": "a", "steering": {}}]}"#,
            "overrides[0].steering",
        ),
        (
            r#"{"overrides": [{"route": "a"}, {"route": "b", "detection": {"windowSze": 1}}]}"#,
            "overrides[1].detection.windowSze",
        ),
        (
            r#"{"overrides": [{"route": "a", "detection": {"recoveredFailurePercent": 40}}]}"#,
            "overrides[0].detection.recoveredFailurePercent",
        ),
        (
            r#"{"overrides": [{"route": "a", "ejection": {"maxEjectionTime": "1s"}}]}"#,
            "overrides[0].ejection.maxEjectionTime",
        ),
        (
            r#"{"overrides": [{"route": "a", "circuitBreaker": {"maxOpenDuration": "1s"}}]}"#,
            "overrides[0].circuitBreaker.maxOpenDuration",
        ),
        (
            r#"{"overrides": [{"virtualService": ""}]}"#,
            "overrides[0].virtualService",
        ),
        (r#"{"overrides": {"route": "a"}}"#, "overrides"),
    ];
    for (json, field) in cases {
        assert_eq!(refused(json).field, field, "{json}");
    }
}

#[test]
fn circuit_breaker_settings() {
    let config = parse(
        r#"{"circuitBreaker": {"failurePercent": 40, "mode": "fallback",
              "fallback": {"header": "X-Fallback", "value": "{service}"},
              "localReply": {"status": 429, "body": "busy {service}", "headers": {"x-why": "breaker"}}}}"#,
    )
    .unwrap();
    let cb = &config.circuit_breaker;
    assert_eq!(cb.failure_percent, 40);
    assert_eq!(cb.mode, BreakerMode::Fallback);
    assert_eq!(cb.fallback.header, "x-fallback");
    assert_eq!(cb.local_reply.status, 429);
    assert_eq!(cb.local_reply.headers.len(), 1);
    let defaults = CircuitBreaker::default();
    assert!(defaults.enabled);
    assert_eq!(defaults.window_size, 100);
    assert_eq!(defaults.min_requests, 20);
    assert_eq!(defaults.failure_percent, 50);
    assert_eq!(defaults.open_duration, Millis(5_000));
    assert_eq!(defaults.max_open_duration, Millis(300_000));
    assert_eq!(
        (defaults.half_open_requests, defaults.close_after_successes),
        (3, 3)
    );
    for (json, field) in [
        (
            r#"{"circuitBreaker": {"mode": "drop"}}"#,
            "circuitBreaker.mode",
        ),
        (
            r#"{"circuitBreaker": {"localReply": {"status": 99}}}"#,
            "circuitBreaker.localReply.status",
        ),
        (
            r#"{"circuitBreaker": {"localReply": {"body": "{hostState}"}}}"#,
            "circuitBreaker.localReply.body",
        ),
        (
            r#"{"circuitBreaker": {"localReply": {"headers": {"content-length": "1"}}}}"#,
            "circuitBreaker.localReply.headers.content-length",
        ),
        (
            r#"{"circuitBreaker": {"windowSize": 10}}"#,
            "circuitBreaker.minRequests",
        ),
        (
            r#"{"circuitBreaker": {"openDuration": "0s"}}"#,
            "circuitBreaker.openDuration",
        ),
        (
            r#"{"circuitBreaker": {"halfOpenRequests": 0}}"#,
            "circuitBreaker.halfOpenRequests",
        ),
    ] {
        assert_eq!(refused(json).field, field, "{json}");
    }
}

#[test]
fn status_endpoint_settings() {
    let defaults = Config::default().status;
    assert!(!defaults.enabled, "off by default");
    assert_eq!(defaults.path, "/meshguard/status");
    let config =
        parse(r#"{"status": {"enabled": true, "path": "/_mg", "allowedCidrs": ["10.0.0.0/8"]}}"#)
            .unwrap();
    assert!(config.status.enabled);
    assert_eq!(config.status.allowed_cidrs.len(), 1);
    assert_eq!(
        refused(r#"{"status": {"allowedCidrs": ["10.0.0.0/99"]}}"#).field,
        "status.allowedCidrs[0]"
    );
    assert_eq!(
        refused(r#"{"status": {"path": "status"}}"#).field,
        "status.path"
    );
}

#[test]
fn large_service_limits_and_discovery_settings_parse() {
    let config = parse(
        r#"{"limits": {"maxHostsPerService": 16384, "maxWatchedHostsPerService": 4096, "maxServices": 1024},
            "steering": {"discoveryPercent": 0, "retryOn": " 5xx , connect-failure,5xx ,"}}"#,
    )
    .unwrap();
    assert_eq!(config.limits.max_hosts_per_service, 16384);
    assert_eq!(config.limits.max_watched_hosts_per_service, 4096);
    assert_eq!(config.steering.discovery_percent, 0);
    assert_eq!(
        config.steering.retry_on, "5xx,connect-failure",
        "trimmed, deduplicated"
    );
    assert_eq!(
        parse(r#"{"steering": {"retryOn": ""}}"#)
            .unwrap()
            .steering
            .retry_on,
        ""
    );
    let defaults = Config::default();
    assert_eq!(defaults.limits.max_services, 256);
    assert!(defaults.limits.max_hosts_per_service >= 2048);
    assert_eq!(defaults.steering.discovery_percent, 5);
    // What discovery's idempotent requests ask for while a host is ejected.
    assert_eq!(config.steering.discovery_retry_on, "5xx,connect-failure");
    assert_eq!(
        defaults.steering.discovery_retry_on,
        format!("{},5xx", crate::config::DEFAULT_RETRY_ON)
    );
    let off = parse(r#"{"steering": {"retryOn": ""}}"#).unwrap();
    assert_eq!(off.steering.discovery_retry_on, "");
}

#[test]
fn an_upstream_instance_takes_detection_ejection_and_limits_only() {
    let config = Config::parse(
        br#"{"mode":"upstream","detection":{"windowSize":50},"ejection":{"baseEjectionTime":"10s"},"limits":{"maxServices":8}}"#,
    )
    .expect("upstream configuration");
    assert_eq!(config.mode, super::Mode::Upstream);
    assert_eq!(config.detection.window_size, 50);
    assert!(!config.steering.enabled, "an attempt cannot be steered");
    assert!(
        !config.circuit_breaker.enabled,
        "the breaker is the downstream instance's"
    );
    assert_eq!(Config::parse(b"{}").unwrap().mode, super::Mode::Downstream);
    assert_eq!(
        Config::parse(br#"{"mode":"downstream"}"#).unwrap().mode,
        super::Mode::Downstream
    );
    for section in [
        "steering",
        "circuitBreaker",
        "headers",
        "overrides",
        "status",
    ] {
        let text = format!(r#"{{"mode":"upstream","{section}":{{}}}}"#);
        let text = text.replace(r#""overrides":{}"#, r#""overrides":[]"#);
        let error = Config::parse(text.as_bytes()).expect_err(section);
        assert_eq!(error.field, section);
        assert!(error.reason.contains("downstream instance"), "{error}");
    }
    let error = Config::parse(br#"{"mode":"sideways"}"#).expect_err("unknown mode");
    assert_eq!(error.field, "mode");
    assert!(error.reason.contains("downstream, upstream"), "{error}");
    let error = Config::parse(br#"{"mode":1}"#).expect_err("not a string");
    assert_eq!(error.field, "mode");
}

/// (field, reason) of a refusal, for exact comparisons.
fn why(json: &str) -> (String, String) {
    let err = refused(json);
    (err.field, err.reason)
}

fn pair(field: &str, reason: &str) -> (String, String) {
    (field.to_string(), reason.to_string())
}

#[test]
fn hop_by_hop_and_client_headers_cannot_carry_the_steering_address() {
    for name in [
        "te",
        "upgrade",
        "keep-alive",
        "connection",
        "transfer-encoding",
        "proxy-connection",
        "content-length",
        "host",
    ] {
        assert_eq!(
            why(&format!(r#"{{"steering": {{"header": "{name}"}}}}"#)),
            pair(
                "steering.header",
                &format!("`{name}` is a header HTTP framing depends on (Envoy manages it)")
            ),
        );
    }
    for name in [
        "authorization",
        "Proxy-Authorization",
        "cookie",
        "set-cookie",
        "x-request-id",
    ] {
        let lower = name.to_ascii_lowercase();
        assert_eq!(
            why(&format!(r#"{{"steering": {{"header": "{name}"}}}}"#)),
            pair(
                "steering.header",
                &format!("`{lower}` belongs to the client (credentials, cookies, request id): meshguard would overwrite it")
            ),
        );
        // The fallback header would overwrite it just the same.
        assert_eq!(
            refused(&format!(
                r#"{{"circuitBreaker": {{"fallback": {{"header": "{name}"}}}}}}"#
            ))
            .field,
            "circuitBreaker.fallback.header"
        );
    }
    for name in [":path", ":authority", "a b", ""] {
        assert_eq!(
            refused(&format!(r#"{{"steering": {{"header": "{name}"}}}}"#)).field,
            "steering.header"
        );
    }
}

#[test]
fn a_key_given_twice_is_refused_not_silently_replaced() {
    // serde_json keeps the last: the invalid first section would vanish.
    assert_eq!(
        why(r#"{"detection": {"windowSize": 0}, "detection": {}}"#),
        pair("detection", "appears twice (JSON keeps only the last)")
    );
    assert_eq!(
        why(
            r#"{"overrides": [{"route": "a"}, {"route": "b", "detection": {"minRequests": 1, "minRequests": 2}}]}"#
        ),
        pair(
            "overrides[1].detection.minRequests",
            "appears twice (JSON keeps only the last)"
        )
    );
    // Spelt with escapes it would be another key to the scan but the
    // same to serde: no field name needs escapes, so none may have them.
    assert_eq!(
        why(r#"{"mode": "downstream", "\u006dode": "upstream"}"#),
        pair(
            "\\u006dode",
            "is a field name with escapes, over 256 bytes or past 256 fields"
        )
    );
    // The same key in different objects, or as a value, is fine.
    parse(r#"{"detection": {"windowSize": 10, "minRequests": 5}, "circuitBreaker": {"windowSize": 10, "minRequests": 5}}"#).unwrap();
    parse(r#"{"status": {"path": "/path", "enabled": true}}"#).unwrap();
    parse(r#"{"headers": {"request": [{"op": "set", "name": "a", "value": "{}"}, {"op": "set", "name": "a", "value": "x"}]}}"#).unwrap();
}

#[test]
fn numbers_a_double_cannot_hold_are_refused() {
    // 1e-400 reads as 0, which would turn the consecutive-5xx ejection off.
    assert_eq!(
        why(r#"{"detection": {"consecutive5xxErrors": 1e-400}}"#),
        pair(
            "detection.consecutive5xxErrors",
            "`1e-400` is too small to tell from 0"
        )
    );
    assert_eq!(
        refused(&format!(
            r#"{{"detection": {{"consecutive5xxErrors": 0.{}1}}}}"#,
            "0".repeat(400)
        ))
        .field,
        "detection.consecutive5xxErrors"
    );
    assert_eq!(
        why(r#"{"detection": {"grpcFailureCodes": [14, 1e400]}}"#),
        pair(
            "detection.grpcFailureCodes[1]",
            "`1e400` is not a number meshguard can read"
        )
    );
    assert_eq!(
        why(r#"{"detection": {"windowSize": 1e300}}"#),
        pair(
            "detection.windowSize",
            "the number is out of range (1-1000)"
        )
    );
    assert_eq!(
        why(r#"{"detection": {"windowSize": 18446744073709551616}}"#).0,
        "detection.windowSize"
    );
    // Zero however written is zero.
    for zero in ["0", "0.0", "0e-400", "-0", "0.000"] {
        let config = parse(&format!(
            r#"{{"detection": {{"consecutive5xxErrors": {zero}}}}}"#
        ))
        .unwrap();
        assert_eq!(config.detection.consecutive_5xx_errors, 0, "{zero}");
    }
    assert_eq!(
        parse(r#"{"detection": {"windowSize": 1e2}}"#)
            .unwrap()
            .detection
            .window_size,
        100
    );
}

#[test]
fn control_characters_and_overlong_strings_are_refused() {
    assert_eq!(
        why(r#"{"status": {"path": "/status\u0007"}}"#),
        pair(
            "status.path",
            "contains control characters (CR, LF, NUL...)"
        )
    );
    assert_eq!(
        refused(r#"{"status": {"path": "/a\r\nb"}}"#).field,
        "status.path"
    );
    assert_eq!(
        refused(r#"{"overrides": [{"route": "a\nb"}]}"#).field,
        "overrides[0].route"
    );
    assert_eq!(
        refused(r#"{"headers": {"response": [{"op": "set", "name": "x", "value": "a", "when": {"route": "r\u0000"}}]}}"#).field,
        "headers.response[0].when.route"
    );
    let long = "a".repeat(4097);
    assert_eq!(
        why(&format!(r#"{{"status": {{"path": "/{long}"}}}}"#)),
        pair("status.path", "is 4098 bytes long (at most 4096)")
    );
    assert_eq!(
        why(&format!(
            r#"{{"steering": {{"header": "x{}"}}}}"#,
            "a".repeat(300)
        ))
        .1,
        "is 301 bytes long (at most 256)"
    );
}

#[test]
fn header_rule_lists_have_a_maximum() {
    let rules = |n: usize| vec![r#"{"op": "remove", "name": "x-a"}"#; n].join(",");
    for phase in ["request", "response"] {
        parse(&format!(
            r#"{{"headers": {{"{phase}": [{}]}}}}"#,
            rules(MAX_HEADER_RULES)
        ))
        .unwrap();
        assert_eq!(
            why(&format!(
                r#"{{"headers": {{"{phase}": [{}]}}}}"#,
                rules(20_000)
            )),
            pair(&format!("headers.{phase}"), "has 20000 rules (at most 256)")
        );
    }
    let headers: Vec<String> = (0..300).map(|i| format!(r#""x-{i}": "v""#)).collect();
    assert_eq!(
        why(&format!(
            r#"{{"circuitBreaker": {{"localReply": {{"headers": {{{}}}}}}}}}"#,
            headers.join(",")
        )),
        pair(
            "circuitBreaker.localReply.headers.x-256",
            "is a field name with escapes, over 256 bytes or past 256 fields"
        )
    );
    assert_eq!(
        why(&format!(
            r#"{{"headers": {{"response": [{{"op": "set", "name": "x", "value": "{}"}}]}}}}"#,
            "{requestId}".repeat(5000)
        )),
        pair(
            "headers.response[0].value",
            "is 55000 bytes long (at most 4096)"
        )
    );
    assert_eq!(
        why(&format!(
            r#"{{"circuitBreaker": {{"localReply": {{"body": "{}"}}}}}}"#,
            "{service}".repeat(17)
        )),
        pair(
            "circuitBreaker.localReply.body",
            "has 17 placeholders (at most 16)"
        )
    );
}
