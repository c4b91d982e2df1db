//! The plugin configuration as a typed document, for tools only (native
//! builds, never in the wasm module): it generates the JSON Schema shipped as
//! `istio/meshguard-config.schema.json` and gives tests a typed reading of
//! Istio manifests.
//!
//! The filter itself does not use these types: [`super::Config::parse`]
//! walks the JSON by hand (module size). The two are kept in step by
//! `filter/tests/config_schema.rs`, which feeds every property of the
//! generated schema to the parser and checks that both refuse the same
//! unknown fields at every level.
//!
//! Every field is optional (an empty document means all defaults); the
//! `default` of each field is the parser's default, and ranges are the
//! parser's ranges.

use std::borrow::Cow;
use std::collections::BTreeMap;

use schemars::{json_schema, JsonSchema, Schema, SchemaGenerator};
use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// Where the committed schema lives, relative to the workspace root.
pub const SCHEMA_PATH: &str = "istio/meshguard-config.schema.json";

/// A whole number in `MIN..=MAX`. Accepts whole-valued doubles (`100.0`),
/// which is how Istio's `Struct` hands numbers over.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Int<const MIN: u64, const MAX: u64>(pub u64);

impl<const MIN: u64, const MAX: u64> Serialize for Int<MIN, MAX> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_u64(self.0)
    }
}

impl<'de, const MIN: u64, const MAX: u64> Deserialize<'de> for Int<MIN, MAX> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let value = serde_json::Value::deserialize(d)?;
        let n = match &value {
            serde_json::Value::Number(n) => n.as_u64().or_else(|| {
                n.as_f64()
                    .filter(|f| f.fract() == 0.0 && *f >= 0.0)
                    .map(|f| f as u64)
            }),
            _ => None,
        };
        match n {
            Some(n) if (MIN..=MAX).contains(&n) => Ok(Int(n)),
            _ => Err(serde::de::Error::custom(format!(
                "expected a whole number {MIN}-{MAX}, got {value}"
            ))),
        }
    }
}

impl<const MIN: u64, const MAX: u64> JsonSchema for Int<MIN, MAX> {
    fn inline_schema() -> bool {
        true
    }

    fn schema_name() -> Cow<'static, str> {
        format!("Int_{MIN}_{MAX}").into()
    }

    fn json_schema(_: &mut SchemaGenerator) -> Schema {
        // "number" as well as "integer": Istio's Struct makes every number a
        // double, and a YAML editor should not flag `100.0`.
        json_schema!({
            "type": ["integer", "number"],
            "multipleOf": 1,
            "minimum": MIN,
            "maximum": MAX,
        })
    }
}

/// A duration: a number and a unit, `ms`, `s`, `m` or `h` (`"30s"`,
/// `"500ms"`, `"1.5s"`). A bare number is refused as ambiguous.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Duration(pub String);

impl JsonSchema for Duration {
    fn schema_name() -> Cow<'static, str> {
        "Duration".into()
    }

    fn json_schema(_: &mut SchemaGenerator) -> Schema {
        json_schema!({
            "description": "A duration: a number and a unit, ms, s, m or h (\"30s\", \"500ms\", \"1.5s\"). A bare number is refused as ambiguous.",
            "type": "string",
            "pattern": "^[0-9]*\\.?[0-9]+(ms|s|m|h)$",
        })
    }
}

/// An HTTP status (`503` or `"503"`), a class (`"5xx"`) or a range
/// (`"500-504"`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum StatusCode {
    Code(Int<100, 599>),
    Text(String),
}

impl JsonSchema for StatusCode {
    fn schema_name() -> Cow<'static, str> {
        "StatusCode".into()
    }

    fn json_schema(_: &mut SchemaGenerator) -> Schema {
        json_schema!({
            "description": "An HTTP status (503 or \"503\"), a class (\"5xx\") or a range (\"500-504\").",
            "anyOf": [
                {"type": ["integer", "number"], "multipleOf": 1, "minimum": 100, "maximum": 599},
                {"type": "string", "pattern": "^([1-5][xX][xX]|[1-5][0-9][0-9](-[1-5][0-9][0-9])?)$"},
            ],
        })
    }
}

/// A header name meshguard may set: an HTTP token (matched case-insensitively;
/// `host`, `content-length`, `transfer-encoding` and `connection` are refused).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct HeaderName(pub String);

impl JsonSchema for HeaderName {
    fn schema_name() -> Cow<'static, str> {
        "HeaderName".into()
    }

    fn json_schema(_: &mut SchemaGenerator) -> Schema {
        json_schema!({
            "description": "An HTTP header name (a token, matched case-insensitively). host, content-length, transfer-encoding and connection are refused.",
            "type": "string",
            "pattern": "^[-!#$%&'*+.^_`|~0-9A-Za-z]+$",
        })
    }
}

/// The whole plugin configuration: the WasmPlugin's `pluginConfig` in Istio,
/// the wasm filter's `configuration` in Envoy. Every field is optional; an
/// empty object means all defaults, and a partial object keeps the defaults
/// of the fields it leaves out.
#[derive(Debug, Clone, Default, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
#[schemars(title = "meshguard plugin configuration")]
pub struct ConfigDocument {
    /// Where this instance runs. "downstream": an HTTP filter of the
    /// listener (Istio's WasmPlugin), which steers, runs the breaker and
    /// header rules, and grades hosts from the last attempt of each request.
    /// "upstream": an upstream HTTP filter of the cluster, which grades
    /// every attempt, retried ones included, into the records of the
    /// downstream instance with the same plugin name; it takes detection,
    /// ejection and limits only. Default "downstream".
    #[schemars(extend("default" = "downstream"))]
    pub mode: Option<Mode>,
    pub detection: Option<Detection>,
    pub ejection: Option<Ejection>,
    pub steering: Option<Steering>,
    pub limits: Option<Limits>,
    pub circuit_breaker: Option<CircuitBreaker>,
    pub headers: Option<Headers>,
    /// Thresholds, breaker and header rules for particular VirtualServices
    /// or routes. The first override that matches a route applies: order
    /// them from most to least specific. At most 64.
    #[schemars(length(max = 64))]
    pub overrides: Option<Vec<Override>>,
    pub status: Option<Status>,
}

/// How outcomes are judged and when a host's grade changes.
#[derive(Debug, Clone, Default, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Detection {
    /// Outcomes remembered per host (1-1000). Default 100.
    #[schemars(extend("default" = 100))]
    pub window_size: Option<Int<1, 1000>>,
    /// Outcomes a window must hold before its percentages are judged (1 to
    /// windowSize). Default 20.
    #[schemars(extend("default" = 20))]
    pub min_requests: Option<Int<1, 1000>>,
    /// Healthy -> Degraded when the failure rate reaches this (at most
    /// unhealthyFailurePercent). Default 30.
    #[schemars(extend("default" = 30))]
    pub degraded_failure_percent: Option<Int<1, 100>>,
    /// Ejection when the failure rate reaches this. Default 50.
    #[schemars(extend("default" = 50))]
    pub unhealthy_failure_percent: Option<Int<1, 100>>,
    /// Degraded -> Healthy only when the failure and slow-call rates are
    /// below this (below degradedFailurePercent). Default 10.
    #[schemars(extend("default" = 10))]
    pub recovered_failure_percent: Option<Int<0, 99>>,
    /// This many failures of any kind in a row eject the host (0 = off).
    /// Default 5.
    #[serde(rename = "consecutive5xxErrors")]
    #[schemars(extend("default" = 5))]
    pub consecutive_5xx_errors: Option<Int<0, 65535>>,
    /// This many 502/503/504 or local-origin failures in a row eject
    /// (0 = off). Default 0.
    #[schemars(extend("default" = 0))]
    pub consecutive_gateway_errors: Option<Int<0, 65535>>,
    /// This many connect failures, resets or timeouts in a row eject
    /// (0 = off). Default 5.
    #[schemars(extend("default" = 5))]
    pub consecutive_local_origin_failures: Option<Int<0, 65535>>,
    /// Statuses that count as failures: classes ("5xx", "4xx"), codes
    /// (429, "503"), ranges ("500-504"). Default ["5xx"].
    #[schemars(extend("default" = ["5xx"]))]
    pub failure_status_codes: Option<Vec<StatusCode>>,
    /// grpc-status values that count as failures (1-16; 14 = UNAVAILABLE).
    /// Default [14].
    #[schemars(extend("default" = [14]))]
    pub grpc_failure_codes: Option<Vec<Int<1, 16>>>,
    /// A call whose response headers take longer than this is slow; "0s"
    /// turns slow-call detection off. Default "0s".
    #[schemars(extend("default" = "0s"))]
    pub slow_call_threshold: Option<Duration>,
    /// Healthy -> Degraded when the slow-call rate reaches this. Default 50.
    #[schemars(extend("default" = 50))]
    pub slow_call_percent: Option<Int<1, 100>>,
    /// Count requests the client abandoned (Envoy flag DC) as failures.
    /// Default false.
    #[schemars(extend("default" = false))]
    pub count_client_cancellations: Option<bool>,
    /// While a worker has seen no failure, slow call or new host for 30 s
    /// and nothing is steered, one plain success in this many is attributed
    /// to its host, counting for this many (failures always are); 1
    /// attributes every success. Default 1.
    #[schemars(extend("default" = 1))]
    pub success_sampling: Option<Int<1, 256>>,
}

/// How long ejections last and how returning hosts are eased back in.
#[derive(Debug, Clone, Default, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Ejection {
    /// The first ejection lasts this long; the n-th lasts n times this
    /// (longer than 0s). Default "30s".
    #[schemars(extend("default" = "30s"))]
    pub base_ejection_time: Option<Duration>,
    /// Cap on one ejection (at least baseEjectionTime). Default "300s".
    #[schemars(extend("default" = "300s"))]
    pub max_ejection_time: Option<Duration>,
    /// At most this share of a service's known hosts is ejected at once;
    /// one is always allowed. Default 50.
    #[schemars(extend("default" = 50))]
    pub max_ejection_percent: Option<Int<0, 100>>,
    /// Random extra time added to each ejection. Default "0s".
    #[schemars(extend("default" = "0s"))]
    pub ejection_jitter: Option<Duration>,
    /// Length of the 10% -> 30% -> 50% ramp after an ejection; "0s" returns
    /// hosts at full weight. Default "60s".
    #[schemars(extend("default" = "60s"))]
    pub warmup_duration: Option<Duration>,
    /// A Degraded host's share of a healthy host's traffic (0 starves
    /// Degraded hosts). Default 50.
    #[schemars(extend("default" = 50))]
    pub degraded_weight_percent: Option<Int<0, 100>>,
}

/// Where an instance runs (see `ConfigDocument::mode`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub enum Mode {
    /// An HTTP filter of the listener.
    Downstream,
    /// An upstream HTTP filter of the cluster (every attempt).
    Upstream,
}

/// How the steering header is written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub enum Encoding {
    /// `ip:port`, for Envoy's override_host load-balancing policy.
    Plain,
    /// base64(`ip:port`), for the stateful-session header filter (Istio's
    /// persistent sessions, `istio.io/persistent-session-header`).
    Base64,
}

/// The request header that tells Envoy's load balancer which host to use.
#[derive(Debug, Clone, Default, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Steering {
    /// Set the steering header; false grades and logs only. Default true.
    #[schemars(extend("default" = true))]
    pub enabled: Option<bool>,
    /// Request header the load-balancing policy reads. In Istio with
    /// persistent sessions: the Service's
    /// `istio.io/persistent-session-header` label value. Default
    /// "x-meshguard-upstream".
    #[schemars(extend("default" = "x-meshguard-upstream"))]
    pub header: Option<HeaderName>,
    /// "plain" = ip:port (override_host policy), "base64" = base64(ip:port)
    /// (stateful-session header, Istio persistent sessions). Default "plain".
    #[schemars(extend("default" = "plain"))]
    pub encoding: Option<Encoding>,
    /// Remove a steering header sent by the client, in the filter (one host
    /// call per request; plain encoding only). Off by default: put an Envoy
    /// header_mutation filter that removes it ahead of meshguard instead, as
    /// envoy/demo.yaml.tmpl does. Default false.
    #[schemars(extend("default" = false))]
    pub strip_client_header: Option<bool>,
    /// Percent of steered requests left to Envoy's load balancer when
    /// steering starts (0-50), so hosts meshguard has not seen yet (scale-up,
    /// rolling deployments) are found: four times that after such a request
    /// found a new host, then a 64th less after each one that found nothing,
    /// down to a tenth of it. 0 steers every request (new hosts then get
    /// traffic only once steering stops). Default 5.
    #[schemars(extend("default" = 5))]
    pub discovery_percent: Option<Int<0, 50>>,
    /// `x-envoy-retry-on` set while a host of the service is ejected on the
    /// requests meshguard leaves to Envoy (discovery), and on steered ones
    /// while two thirds of the hosts are at full weight (a steered host that
    /// has just left sends its request to Envoy's balancer), so one that
    /// lands on the ejected host is retried on another host (with
    /// `retriable-status-codes`, `x-envoy-retriable-status-codes: 503` too).
    /// Envoy retry policies only; empty sets nothing. Default
    /// "connect-failure,refused-stream,reset-before-request,retriable-status-codes".
    #[schemars(extend(
        "default" = "connect-failure,refused-stream,reset-before-request,retriable-status-codes"
    ))]
    pub retry_on: Option<String>,
}

/// Bounds on what the filter tracks.
#[derive(Debug, Clone, Default, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Limits {
    /// Services (clusters, and overrides' own shares of them) tracked at
    /// once (1-1024). Default 256.
    #[schemars(extend("default" = 256))]
    pub max_services: Option<Int<1, 1024>>,
    /// Hosts of one service a worker knows and steers across (1-16384).
    /// Past it, new hosts are not steered to (they still get the requests
    /// left to Envoy) and `hosts_not_tracked` counts them. Default 16384
    /// (a member costs about 120 bytes per worker).
    #[schemars(extend("default" = 16384))]
    pub max_hosts_per_service: Option<Int<1, 16384>>,
    /// Hosts of one service with failures on record (window, streaks,
    /// grade) shared by the workers (1-4096); hosts without failures need
    /// no record. Past it a failing host takes the place of a Healthy one
    /// with fewer failures, or is not tracked (`hosts_not_tracked`).
    /// Default 512.
    #[schemars(extend("default" = 512))]
    pub max_watched_hosts_per_service: Option<Int<1, 4096>>,
    /// A Healthy host with no traffic for this long is forgotten. Default
    /// "600s".
    #[schemars(extend("default" = "600s"))]
    pub host_idle_timeout: Option<Duration>,
}

/// What the open breaker does with requests.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub enum BreakerMode {
    /// Answer with `localReply`.
    LocalReply,
    /// Set `fallback.header` and let the route table send the request elsewhere.
    Fallback,
}

/// The error-rate circuit breaker, one per upstream service.
#[derive(Debug, Clone, Default, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct CircuitBreaker {
    /// Turn the breaker off with false (hosts are still graded and
    /// ejected). Default true.
    #[schemars(extend("default" = true))]
    pub enabled: Option<bool>,
    /// Calls in the breaker's count window (1-1000). Default 100.
    #[schemars(extend("default" = 100))]
    pub window_size: Option<Int<1, 1000>>,
    /// Calls the window must hold before it can trip (at most windowSize).
    /// Default 20.
    #[schemars(extend("default" = 20))]
    pub min_requests: Option<Int<1, 1000>>,
    /// Opens when the failure rate reaches this. Default 50.
    #[schemars(extend("default" = 50))]
    pub failure_percent: Option<Int<1, 100>>,
    /// Calls slower than this (to response headers) are slow; "0s" = off.
    /// Default "0s".
    #[schemars(extend("default" = "0s"))]
    pub slow_call_threshold: Option<Duration>,
    /// Opens when the slow-call rate reaches this. Default 100.
    #[schemars(extend("default" = 100))]
    pub slow_call_percent: Option<Int<1, 100>>,
    /// First open period (longer than 0s); doubles per consecutive trip.
    /// Default "5s".
    #[schemars(extend("default" = "5s"))]
    pub open_duration: Option<Duration>,
    /// Cap on the open period (at least openDuration). Default "300s".
    #[schemars(extend("default" = "300s"))]
    pub max_open_duration: Option<Duration>,
    /// Probes in flight at once while half-open, across all workers
    /// (1-1000). Default 3.
    #[schemars(extend("default" = 3))]
    pub half_open_requests: Option<Int<1, 1000>>,
    /// Successful probes that close the breaker (1-1000). Default 3.
    #[schemars(extend("default" = 3))]
    pub close_after_successes: Option<Int<1, 1000>>,
    /// "localReply" answers at once; "fallback" sets fallback.header so a
    /// route can send the request elsewhere. Default "localReply".
    #[schemars(extend("default" = "localReply"))]
    pub mode: Option<BreakerMode>,
    pub local_reply: Option<LocalReply>,
    pub fallback: Option<Fallback>,
}

/// The open breaker's answer. Placeholders in body and header values:
/// {service}, {retryAfterSeconds}, {route}, {virtualService}.
#[derive(Debug, Clone, Default, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct LocalReply {
    /// Status of the local reply (200-599). Default 503.
    #[schemars(extend("default" = 503))]
    pub status: Option<Int<200, 599>>,
    /// Body. Default
    /// {"error":"circuit open","service":"{service}","retryAfterSeconds":{retryAfterSeconds}}.
    #[schemars(extend(
        "default" = r#"{"error":"circuit open","service":"{service}","retryAfterSeconds":{retryAfterSeconds}}"#,
        "examples" = ["service {service} is unavailable, retry in {retryAfterSeconds}s"],
    ))]
    pub body: Option<String>,
    /// Extra headers, name -> value; retry-after is always added. Default
    /// {"content-type": "application/json"}.
    #[schemars(extend("default" = {"content-type": "application/json"}))]
    pub headers: Option<BTreeMap<String, String>>,
}

/// Where fallback mode marks requests.
#[derive(Debug, Clone, Default, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Fallback {
    /// Request header set in fallback mode. Default "x-meshguard-fallback".
    #[schemars(extend("default" = "x-meshguard-fallback"))]
    pub header: Option<HeaderName>,
    /// Its value; placeholders {service}, {retryAfterSeconds}, {route},
    /// {virtualService}. Default "{service}".
    #[schemars(extend("default" = "{service}"))]
    pub value: Option<String>,
}

/// Request and response header rules, run in order.
#[derive(Debug, Clone, Default, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Headers {
    /// Rules applied to requests before they go upstream. Default [].
    #[schemars(extend("default" = []))]
    pub request: Option<Vec<RequestRule>>,
    /// Rules applied to responses. Default [].
    #[schemars(extend("default" = []))]
    pub response: Option<Vec<ResponseRule>>,
    pub request_id: Option<RequestId>,
}

/// The request id header and whether meshguard adds one.
#[derive(Debug, Clone, Default, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RequestId {
    /// Header holding the request id. Default "x-request-id".
    #[schemars(extend("default" = "x-request-id"))]
    pub header: Option<HeaderName>,
    /// Add a random UUID-style id when the request has none. Default false.
    #[schemars(extend("default" = false))]
    pub generate: Option<bool>,
}

/// What a header rule does.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub enum Op {
    /// Replace the header (add it if absent); needs `value`.
    Set,
    /// Add one more value; needs `value`.
    Append,
    /// Delete the header.
    Remove,
    /// Move the value to `to` (nothing happens if absent).
    Rename,
}

/// A request header rule: `set` and `append` need `value`, `rename` needs
/// `to`, and neither may appear where it is not used. Placeholders in `value`: {service},
/// {upstreamHost}, {hostState}, {breakerState}, {route}, {virtualService},
/// {requestId}.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
#[schemars(extend(
    "allOf" = [
        {"if": {"properties": {"op": {"enum": ["set", "append"]}}},
         "then": {"required": ["value"], "not": {"required": ["to"]}}},
        {"if": {"properties": {"op": {"const": "remove"}}},
         "then": {"not": {"anyOf": [{"required": ["value"]}, {"required": ["to"]}]}}},
        {"if": {"properties": {"op": {"const": "rename"}}},
         "then": {"required": ["to"], "not": {"required": ["value"]}}},
    ],
    "examples" = [
        {"op": "set", "name": "x-meshguard-host-state", "value": "{hostState}"},
        {"op": "remove", "name": "x-internal-debug"},
        {"op": "rename", "name": "x-internal-debug", "to": "x-debug"},
    ],
))]
pub struct RequestRule {
    pub op: Op,
    /// Header name; of the pseudo-headers only :path and :authority, and
    /// only with `set`.
    #[schemars(extend("examples" = ["x-meshguard-host-state"]))]
    pub name: String,
    /// New value (set, append).
    #[schemars(extend("examples" = ["{hostState}"]))]
    pub value: Option<String>,
    /// New name (rename).
    #[schemars(extend("examples" = ["x-debug"]))]
    pub to: Option<String>,
    pub when: Option<RequestWhen>,
}

/// A response header rule: `set` and `append` need `value`, `rename` needs
/// `to`. Placeholders as in request rules.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
#[schemars(extend(
    "allOf" = [
        {"if": {"properties": {"op": {"enum": ["set", "append"]}}},
         "then": {"required": ["value"], "not": {"required": ["to"]}}},
        {"if": {"properties": {"op": {"const": "remove"}}},
         "then": {"not": {"anyOf": [{"required": ["value"]}, {"required": ["to"]}]}}},
        {"if": {"properties": {"op": {"const": "rename"}}},
         "then": {"required": ["to"], "not": {"required": ["value"]}}},
    ],
    "examples" = [
        {"op": "set", "name": "x-meshguard-breaker", "value": "{breakerState}"},
        {"op": "remove", "name": "x-upstream-version"},
        {"op": "rename", "name": "x-upstream-version", "to": "x-version"},
    ],
))]
pub struct ResponseRule {
    pub op: Op,
    /// Header name (no pseudo-headers).
    #[schemars(extend("examples" = ["x-meshguard-breaker"]))]
    pub name: String,
    /// New value (set, append).
    #[schemars(extend("examples" = ["{breakerState}"]))]
    pub value: Option<String>,
    /// New name (rename).
    #[schemars(extend("examples" = ["x-version"]))]
    pub to: Option<String>,
    pub when: Option<ResponseWhen>,
}

/// A host grade, as header rule conditions name it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub enum HostState {
    Healthy,
    Degraded,
    Unhealthy,
    WarmingUp,
}

/// A breaker state, as header rule conditions name it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub enum BreakerState {
    Closed,
    Open,
    HalfOpen,
}

/// Conditions of a request rule; all must hold, each list means "any of".
#[derive(Debug, Clone, Default, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RequestWhen {
    #[schemars(extend("examples" = [["Degraded", "WarmingUp"]]))]
    pub host_state: Option<Vec<HostState>>,
    #[schemars(extend("examples" = [["HalfOpen"]]))]
    pub breaker_state: Option<Vec<BreakerState>>,
    /// Envoy route name (Istio: the VirtualService's http[].name), `*`
    /// wildcards.
    #[schemars(extend("examples" = ["checkout-*"]))]
    pub route: Option<String>,
    /// namespace/name of the VirtualService, `*` wildcards.
    #[schemars(extend("examples" = ["shop/*"]))]
    pub virtual_service: Option<String>,
}

/// Conditions of a response rule; all must hold, each list means "any of".
#[derive(Debug, Clone, Default, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ResponseWhen {
    #[schemars(extend("examples" = [["Degraded", "WarmingUp"]]))]
    pub host_state: Option<Vec<HostState>>,
    #[schemars(extend("examples" = [["Open", "HalfOpen"]]))]
    pub breaker_state: Option<Vec<BreakerState>>,
    /// Envoy route name (Istio: the VirtualService's http[].name), `*`
    /// wildcards.
    #[schemars(extend("examples" = ["checkout-*"]))]
    pub route: Option<String>,
    /// namespace/name of the VirtualService, `*` wildcards.
    #[schemars(extend("examples" = ["shop/*"]))]
    pub virtual_service: Option<String>,
    /// Response statuses, same syntax as failureStatusCodes.
    #[schemars(extend("examples" = [["5xx", 429]]))]
    pub status: Option<Vec<StatusCode>>,
}

/// Thresholds, breaker and header rules for one VirtualService or route,
/// merged over the top-level configuration (fields left out are inherited
/// from it, not from the defaults). Needs virtualService, route or both.
#[derive(Debug, Clone, Default, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
#[schemars(extend(
    "anyOf" = [{"required": ["virtualService"]}, {"required": ["route"]}],
    "examples" = [{"virtualService": "shop/reviews-web"}],
))]
pub struct Override {
    /// namespace/name of the Istio VirtualService, `*` wildcards.
    #[schemars(length(min = 1), extend("examples" = ["shop/reviews-web"]))]
    pub virtual_service: Option<String>,
    /// Envoy route name (Istio: the VirtualService's http[].name), `*`
    /// wildcards.
    #[schemars(length(min = 1), extend("examples" = ["web"]))]
    pub route: Option<String>,
    pub detection: Option<Detection>,
    pub ejection: Option<Ejection>,
    pub circuit_breaker: Option<CircuitBreaker>,
    /// Header rule lists given here replace the top-level ones.
    pub headers: Option<Headers>,
}

/// The JSON status endpoint, off by default.
#[derive(Debug, Clone, Default, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Status {
    /// Serve the endpoint. Default false.
    #[schemars(extend("default" = false))]
    pub enabled: Option<bool>,
    /// Path that is answered (the query string is ignored). Default
    /// "/meshguard/status".
    #[schemars(extend("default" = "/meshguard/status"), regex(pattern = r"^/[^?\s]*$"))]
    pub path: Option<String>,
    /// Source addresses allowed to see it: addresses or CIDR ranges, IPv4
    /// and IPv6. Default ["127.0.0.1/32", "::1/128"].
    #[schemars(extend("default" = ["127.0.0.1/32", "::1/128"]))]
    pub allowed_cidrs: Option<Vec<String>>,
    /// Set it when the listener's HTTP connection manager has
    /// `use_remote_address: true` and no trusted hops: Envoy's
    /// `source.address` is then the connection's peer, and requests
    /// carrying X-Forwarded-For are answered too. Default false: Envoy may
    /// take `source.address` from X-Forwarded-For, which clients write, so
    /// a status request carrying that header is refused (403).
    #[schemars(extend("default" = false))]
    pub use_remote_address: Option<bool>,
}

/// The JSON Schema of the plugin configuration (draft 2020-12), as
/// committed in [`SCHEMA_PATH`].
pub fn schema() -> serde_json::Value {
    let generator = schemars::generate::SchemaSettings::draft2020_12().into_generator();
    let schema = generator.into_root_schema_for::<ConfigDocument>();
    let mut value = schema.to_value();
    tidy(&mut value);
    value
}

/// Optional fields are left out, never null (the parser refuses null), so
/// the `null` alternatives schemars adds for `Option` go; doc-comment line
/// breaks become spaces.
fn tidy(value: &mut serde_json::Value) {
    use serde_json::Value;
    match value {
        Value::Object(map) => {
            if let Some(Value::Array(types)) = map.get_mut("type") {
                types.retain(|t| t != "null");
                if types.len() == 1 {
                    let only = types.remove(0);
                    map.insert("type".to_string(), only);
                }
            }
            if let Some(Value::Array(any)) = map.get_mut("anyOf") {
                any.retain(|s| s != &serde_json::json!({"type": "null"}));
                if any.len() == 1 {
                    if let Value::Object(inner) = any.remove(0) {
                        map.remove("anyOf");
                        for (k, v) in inner {
                            map.entry(k).or_insert(v);
                        }
                    }
                }
            }
            if let Some(Value::String(text)) = map.get_mut("description") {
                *text = text
                    .split("\n\n")
                    .map(|p| p.replace('\n', " "))
                    .collect::<Vec<_>>()
                    .join("\n\n");
            }
            map.values_mut().for_each(tidy);
        }
        Value::Array(items) => items.iter_mut().for_each(tidy),
        _ => {}
    }
}

/// [`schema`] as the committed file's text (pretty, trailing newline).
pub fn schema_text() -> String {
    // A serde_json::Value always serializes; the Display form is the same
    // JSON on one line, never reached.
    let schema = schema();
    let mut text = serde_json::to_string_pretty(&schema).unwrap_or_else(|_| schema.to_string());
    text.push('\n');
    text
}
