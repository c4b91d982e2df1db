use super::*;
use crate::config::{Config, ConfigError, HeaderRules};

fn rules(json: &str) -> HeaderRules {
    Config::parse(format!(r#"{{"headers": {json}}}"#).as_bytes())
        .unwrap()
        .headers
}

fn refused(json: &str) -> ConfigError {
    Config::parse(format!(r#"{{"headers": {json}}}"#).as_bytes()).unwrap_err()
}

fn facts() -> Facts<'static> {
    Facts {
        host_state: Some(HostState::Degraded),
        breaker_state: BreakerState::Closed,
        route: "payments",
        virtual_service: "shop/payments",
        status: Some(503),
    }
}

fn values() -> Values<'static> {
    Values {
        service: "outbound|80||payments",
        upstream_host: "10.0.0.7:8080",
        host_state: "Degraded",
        breaker_state: "Closed",
        route: "payments",
        virtual_service: "shop/payments",
        request_id: "abc",
        retry_after_seconds: 0,
    }
}

fn run<'a>(rules: &'a [Rule], facts: &'a Facts, values: &'a Values) -> Vec<Action<'a>> {
    actions(rules, facts, values).collect()
}

#[test]
fn every_rule_kind_in_order() {
    let r = rules(
        r#"{"request": [
            {"op": "set", "name": "X-Host-State", "value": "{hostState} on {upstreamHost}"},
            {"op": "append", "name": "x-trace", "value": "meshguard"},
            {"op": "remove", "name": "x-internal"},
            {"op": "rename", "name": "x-old", "to": "x-new"},
            {"op": "set", "name": ":path", "value": "/v2"}
        ]}"#,
    );
    let (f, v) = (facts(), values());
    assert_eq!(
        run(&r.request, &f, &v),
        [
            Action::Set("x-host-state", "Degraded on 10.0.0.7:8080".to_string()),
            Action::Append("x-trace", "meshguard".to_string()),
            Action::Remove("x-internal"),
            Action::Rename("x-old", "x-new"),
            Action::Set(":path", "/v2".to_string()),
        ]
    );
}

#[test]
fn conditions_select_rules() {
    let r = rules(
        r#"{"response": [
            {"op": "set", "name": "a", "value": "1", "when": {"hostState": ["Degraded", "WarmingUp"]}},
            {"op": "set", "name": "b", "value": "1", "when": {"hostState": ["Healthy"]}},
            {"op": "set", "name": "c", "value": "1", "when": {"breakerState": ["Open"]}},
            {"op": "set", "name": "d", "value": "1", "when": {"route": "pay*", "virtualService": "shop/*"}},
            {"op": "set", "name": "e", "value": "1", "when": {"route": "batch"}},
            {"op": "set", "name": "f", "value": "1", "when": {"status": ["5xx"]}},
            {"op": "set", "name": "g", "value": "1", "when": {"status": ["2xx"]}}
        ]}"#,
    );
    let (f, v) = (facts(), values());
    let names: Vec<&str> = run(&r.response, &f, &v)
        .into_iter()
        .map(|a| match a {
            Action::Set(name, _) => name,
            other => panic!("{other:?}"),
        })
        .collect();
    assert_eq!(names, ["a", "d", "f"]);
    // No known host: host-state conditions do not hold.
    let unknown = Facts {
        host_state: None,
        ..facts()
    };
    assert_eq!(run(&r.response, &unknown, &v).len(), 2);
}

#[test]
fn refuses_headers_that_break_http() {
    let cases = [
        (
            r#"{"request": [{"op": "set", "name": ":method", "value": "GET"}]}"#,
            "only :path and :authority",
        ),
        (
            r#"{"response": [{"op": "set", "name": ":status", "value": "200"}]}"#,
            "pseudo-headers",
        ),
        (
            r#"{"request": [{"op": "set", "name": "content-length", "value": "1"}]}"#,
            "framing",
        ),
        (
            r#"{"request": [{"op": "set", "name": "Proxy-Connection", "value": "1"}]}"#,
            "framing",
        ),
        (
            r#"{"response": [{"op": "rename", "name": "a", "to": "keep-alive"}]}"#,
            "framing",
        ),
        (
            r#"{"response": [{"op": "remove", "name": "Transfer-Encoding"}]}"#,
            "framing",
        ),
        (
            r#"{"request": [{"op": "set", "name": "host", "value": "x"}]}"#,
            "use `:authority`",
        ),
        (
            r#"{"request": [{"op": "remove", "name": ":path"}]}"#,
            "only be changed with `set`",
        ),
        (
            r#"{"request": [{"op": "rename", "name": "a", "to": ":authority"}]}"#,
            "only be changed with `set`",
        ),
        (
            r#"{"request": [{"op": "set", "name": "bad name", "value": "x"}]}"#,
            "not a valid HTTP header name",
        ),
    ];
    for (json, reason) in cases {
        let err = refused(json);
        assert!(err.reason.contains(reason), "{json}: {err}");
        assert!(
            err.field.ends_with(".name") || err.field.ends_with(".to"),
            "{err}"
        );
    }
}

#[test]
fn refuses_malformed_rules_naming_the_field() {
    let cases = [
        (
            r#"{"request": [{"name": "a", "value": "1"}]}"#,
            "headers.request[0].op",
        ),
        (
            r#"{"request": [{"op": "replace", "name": "a"}]}"#,
            "headers.request[0].op",
        ),
        (
            r#"{"request": [{"op": "set", "value": "1"}]}"#,
            "headers.request[0].name",
        ),
        (
            r#"{"request": [{"op": "set", "name": "a"}]}"#,
            "headers.request[0].value",
        ),
        (
            r#"{"request": [{"op": "remove", "name": "a", "value": "1"}]}"#,
            "headers.request[0].value",
        ),
        (
            r#"{"request": [{"op": "rename", "name": "a"}]}"#,
            "headers.request[0].to",
        ),
        (
            r#"{"request": [{"op": "set", "name": "a", "value": "{nope}"}]}"#,
            "headers.request[0].value",
        ),
        (
            r#"{"request": [{"op": "set", "name": "a", "value": "1", "when": {"status": ["5xx"]}}]}"#,
            "headers.request[0].when.status",
        ),
        (
            r#"{"response": [{"op": "set", "name": "a", "value": "1", "when": {"hostState": ["Sick"]}}]}"#,
            "headers.response[0].when.hostState[0]",
        ),
        (
            r#"{"response": [{"op": "set", "name": "a", "value": "1", "when": {"breakerState": ["Ajar"]}}]}"#,
            "headers.response[0].when.breakerState[0]",
        ),
        (
            r#"{"response": [{"op": "set", "name": "a", "value": "1", "when": {"colour": "red"}}]}"#,
            "headers.response[0].when.colour",
        ),
        (r#"{"response": [1]}"#, "headers.response[0]"),
    ];
    for (json, field) in cases {
        assert_eq!(refused(json).field, field, "{json}");
    }
}

#[test]
fn request_ids_are_uuid_shaped_and_configurable() {
    let id = request_id(0x0123_4567_89ab_cdef, 0xfedc_ba98_7654_3210);
    assert_eq!(id.len(), 36);
    assert_eq!(&id[14..15], "4", "version 4: {id}");
    assert!("89ab".contains(&id[19..20]), "variant: {id}");
    let r = rules(r#"{"requestId": {"generate": true, "header": "X-Correlation-Id"}}"#);
    assert_eq!(r.request_id.header, "x-correlation-id");
    assert!(r.request_id.generate);
    assert!(!HeaderRules::default().request_id.generate);
}

#[test]
fn a_huge_client_value_renders_a_bounded_header() {
    // Issue 20: 5,000 `{requestId}` and a 59 KB x-request-id asked for 512 MB.
    let refused = refused(&format!(
        r#"{{"response": [{{"op": "set", "name": "x-id", "value": "{}"}}]}}"#,
        "{requestId}".repeat(5000)
    ));
    assert_eq!(refused.field, "headers.response[0].value");
    let rules = rules(&format!(
        r#"{{"response": [{{"op": "set", "name": "x-id", "value": "{}"}}]}}"#,
        "{requestId}".repeat(crate::template::MAX_PLACEHOLDERS)
    ));
    let huge = "7".repeat(59 * 1024);
    let values = Values {
        request_id: &huge,
        ..values()
    };
    let facts = facts();
    let actions = run(&rules.response, &facts, &values);
    let [Action::Set("x-id", value)] = actions.as_slice() else {
        panic!("{actions:?}");
    };
    assert_eq!(value.len(), 16 * crate::template::MAX_VALUE_BYTES);
}
