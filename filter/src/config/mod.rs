//! The plugin configuration: what operators write (camelCase JSON, the
//! `pluginConfig` of an Istio WasmPlugin) and the checks that keep a typo or
//! an inconsistent threshold set from silently changing behaviour.

mod breaker;
/// The configuration as typed document and its JSON Schema (tools and tests only).
#[cfg(not(target_arch = "wasm32"))]
pub mod document;
mod duration;
mod headers;
mod json;
mod overrides;

pub use crate::model::{StatusSet, StatusSpec};
pub use breaker::{BreakerMode, CircuitBreaker, Fallback, LocalReply};
pub use duration::Millis;
pub use overrides::{Override, MAX_OVERRIDES};

pub use headers::{HeaderRules, Op, RequestId, Rule, When};

use json::{join, Object};

/// Why a configuration was refused: the field path (`detection.windowSize`)
/// and the reason, so the one log line tells the operator what to fix.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {reason}")]
pub struct ConfigError {
    pub field: String,
    pub reason: String,
}

impl ConfigError {
    fn new(field: impl Into<String>, reason: impl Into<String>) -> Self {
        ConfigError {
            field: field.into(),
            reason: reason.into(),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Config {
    pub mode: Mode,
    pub detection: Detection,
    pub ejection: Ejection,
    pub steering: Steering,
    pub limits: Limits,
    pub circuit_breaker: CircuitBreaker,
    pub headers: HeaderRules,
    /// In order; the first that matches a request's route applies.
    pub overrides: Vec<Override>,
    pub status: Status,
}

/// What grading a host reads of the configuration: detection and
/// ejection, nothing else (the health module takes only this).
#[derive(Debug, Clone, Copy)]
pub struct Grading<'a> {
    pub detection: &'a Detection,
    pub ejection: &'a Ejection,
}

impl Config {
    pub fn grading(&self) -> Grading<'_> {
        Grading {
            detection: &self.detection,
            ejection: &self.ejection,
        }
    }
}

/// Where in Envoy's filter chains an instance runs, and so what it sees.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Mode {
    /// An HTTP filter of the listener (Istio's WasmPlugin): one request at
    /// a time, the last attempt's host and status only; steering, the
    /// breaker, header rules and the status endpoint.
    #[default]
    Downstream,
    /// An upstream HTTP filter of the cluster: every attempt, including the
    /// ones Envoy's router retried elsewhere, graded against its own host.
    /// Nothing else; it feeds the downstream instance's records.
    Upstream,
}

/// Sections only a downstream instance can act on.
const DOWNSTREAM_ONLY: [&str; 5] = [
    "steering",
    "circuitBreaker",
    "headers",
    "overrides",
    "status",
];

/// The JSON status endpoint, off by default.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Status {
    pub enabled: bool,
    pub path: String,
    pub allowed_cidrs: Vec<crate::cidr::Cidr>,
    /// The listener's connection manager sets `use_remote_address: true`
    /// (no trusted hops), so `source.address` is the connection's peer even
    /// when the request carries `X-Forwarded-For`. Otherwise Envoy takes
    /// `source.address` from that header, which a client writes, and a
    /// status request carrying it is refused.
    pub use_remote_address: bool,
}

impl Default for Status {
    fn default() -> Self {
        Status {
            enabled: false,
            path: "/meshguard/status".to_string(),
            allowed_cidrs: ["127.0.0.1/32", "::1/128"]
                .iter()
                .filter_map(|c| crate::cidr::Cidr::parse(c).ok())
                .collect(),
            use_remote_address: false,
        }
    }
}

impl Status {
    fn apply(&mut self, o: &Object) -> Result<(), ConfigError> {
        o.only(&["enabled", "path", "allowedCidrs", "useRemoteAddress"])?;
        o.bool("enabled", &mut self.enabled)?;
        o.bool("useRemoteAddress", &mut self.use_remote_address)?;
        o.string("path", &mut self.path)?;
        if !self.path.starts_with('/') || self.path.chars().any(|c| c.is_whitespace() || c == '?') {
            return Err(ConfigError::new(
                o.path("path"),
                format!("`{}` must be an absolute path without query", self.path),
            ));
        }
        if let Some(cidrs) = o.list("allowedCidrs", crate::cidr::Cidr::parse)? {
            self.allowed_cidrs = cidrs;
        }
        Ok(())
    }
}

/// How outcomes are judged and when a host's grade changes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Detection {
    /// Outcomes remembered per host (count-based sliding window).
    pub window_size: u16,
    /// Outcomes a window must hold before its percentages are judged.
    pub min_requests: u16,
    pub degraded_failure_percent: u8,
    pub unhealthy_failure_percent: u8,
    pub recovered_failure_percent: u8,
    /// Consecutive failures of any kind that eject a host (0 disables).
    pub consecutive_5xx_errors: u16,
    /// Consecutive 502/503/504 (and local-origin failures) that eject (0 disables).
    pub consecutive_gateway_errors: u16,
    /// Consecutive connect failures, resets and timeouts that eject (0 disables).
    pub consecutive_local_origin_failures: u16,
    pub failure_statuses: StatusSet,
    pub grpc_failure_codes: Vec<u8>,
    /// Calls slower than this count as slow (`0s` disables slow-call detection).
    pub slow_call_threshold: Millis,
    pub slow_call_percent: u8,
    /// A client that gives up is usually not the host's fault; some teams
    /// want it counted anyway (a client timeout often means a slow host).
    pub count_client_cancellations: bool,
    /// While a worker sees nothing wrong, one plain success in this many is
    /// attributed to its host (counting for this many); 1 attributes every
    /// one. See `state::worker::Worker::sample_success`.
    pub success_sampling: u16,
}

/// Upper bound of `successSampling`.
pub const MAX_SUCCESS_SAMPLING: u16 = 256;

impl Default for Detection {
    fn default() -> Self {
        Detection {
            window_size: 100,
            min_requests: 20,
            degraded_failure_percent: 30,
            unhealthy_failure_percent: 50,
            recovered_failure_percent: 10,
            consecutive_5xx_errors: 5,
            consecutive_gateway_errors: 0,
            consecutive_local_origin_failures: 5,
            failure_statuses: StatusSet::server_errors(),
            grpc_failure_codes: vec![14],
            slow_call_threshold: Millis(0),
            slow_call_percent: 50,
            count_client_cancellations: false,
            success_sampling: 1,
        }
    }
}

impl Detection {
    pub fn grpc_code_is_failure(&self, code: u32) -> bool {
        self.grpc_failure_codes
            .iter()
            .any(|c| u32::from(*c) == code)
    }

    pub fn slow_calls_enabled(&self) -> bool {
        self.slow_call_threshold.0 > 0
    }
}

/// How long ejections last and how returning hosts are eased back in.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ejection {
    pub base_ejection_time: Millis,
    pub max_ejection_time: Millis,
    pub max_ejection_percent: u8,
    /// Random extra ejection time, so hosts ejected together do not return together.
    pub ejection_jitter: Millis,
    pub warmup_duration: Millis,
    pub degraded_weight_percent: u8,
}

impl Default for Ejection {
    fn default() -> Self {
        Ejection {
            base_ejection_time: Millis::from_secs(30),
            max_ejection_time: Millis::from_secs(300),
            max_ejection_percent: 50,
            ejection_jitter: Millis(0),
            warmup_duration: Millis::from_secs(60),
            degraded_weight_percent: 50,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Encoding {
    /// `ip:port`, for Envoy's `override_host` load-balancing policy.
    Plain,
    /// base64(`ip:port`), for the stateful-session header filter (Istio's
    /// persistent sessions).
    Base64,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Steering {
    pub enabled: bool,
    /// Lower-cased header name.
    pub header: String,
    pub encoding: Encoding,
    /// Remove a client-sent steering header in the filter (one host call per
    /// request). Off by default: an Envoy `header_mutation` filter ahead of
    /// meshguard does it at no cost to the filter.
    pub strip_client_header: bool,
    /// Percent of steered requests left to Envoy's load balancer, so hosts
    /// meshguard has not seen yet (scale-up, rolling deployments) are found.
    pub discovery_percent: u8,
    /// `x-envoy-retry-on` set while a host is ejected on the requests
    /// meshguard leaves to Envoy, and on steered ones while most hosts are
    /// at full weight, so one that lands there is retried elsewhere; empty
    /// sets nothing.
    pub retry_on: String,
    /// `retry_on` and `5xx`, for the idempotent requests left to Envoy's
    /// balancer while a host is ejected: one that lands there is retried
    /// after any error answer (a 500, a 504) too. Empty when `retry_on` is.
    pub discovery_retry_on: String,
}

impl Default for Steering {
    fn default() -> Self {
        Steering {
            enabled: true,
            header: "x-meshguard-upstream".to_string(),
            encoding: Encoding::Plain,
            strip_client_header: false,
            discovery_percent: 5,
            retry_on: DEFAULT_RETRY_ON.to_string(),
            discovery_retry_on: discovery_retry_on(DEFAULT_RETRY_ON),
        }
    }
}

/// Retried by Envoy without the request having reached an application
/// (connect failures, refused streams, resets before the request was sent)
/// or refused by it outright (503, see
/// `RETRIABLE_STATUS_CODES`): safe for any method.
pub const DEFAULT_RETRY_ON: &str =
    "connect-failure,refused-stream,reset-before-request,retriable-status-codes";
/// `x-envoy-retriable-status-codes` sent with `retriable-status-codes`.
pub const RETRIABLE_STATUS_CODES: &str = "503";
/// Most of the requests discovery may take while steering.
pub const MAX_DISCOVERY_PERCENT: u8 = 50;

/// Bounds on what the filter tracks, so traffic cannot grow its memory.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Limits {
    pub max_services: u16,
    /// Hosts of one service a worker knows and steers across.
    pub max_hosts_per_service: u16,
    /// Hosts of one service with failures on record (window, streaks,
    /// grade) in the shared record; hosts without failures need none.
    pub max_watched_hosts_per_service: u16,
    /// A Healthy host with no traffic for this long is forgotten (scaled-down pods).
    pub host_idle_timeout: Millis,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_services: 256,
            max_hosts_per_service: 16384,
            max_watched_hosts_per_service: 512,
            host_idle_timeout: Millis::from_secs(600),
        }
    }
}

/// Upper bound of `windowSize`: keeps a host record small enough that the
/// per-service shared-data record stays cheap to copy.
pub const MAX_WINDOW_SIZE: u16 = 1000;

/// Hard ceilings on the limits themselves. Members cost a few dozen bytes
/// per worker each; watched hosts are copied on every write of a service's
/// shared record, so they stay fewer.
pub const MAX_SERVICES: u16 = 1024;
pub const MAX_HOSTS_PER_SERVICE: u16 = 16384;
pub const MAX_WATCHED_HOSTS_PER_SERVICE: u16 = 4096;

/// Rules in one header rule list (and headers of a local reply): each
/// rule costs every request it applies to (20,000 cost 30 ms a request).
pub const MAX_HEADER_RULES: usize = 256;
/// Longest header name meshguard writes.
pub const MAX_HEADER_NAME: usize = 256;

impl Config {
    /// Parses and checks a plugin configuration. Empty input means all defaults.
    pub fn parse(bytes: &[u8]) -> Result<Config, ConfigError> {
        let text = std::str::from_utf8(bytes)
            .map_err(|_| ConfigError::new("(configuration)", "is not UTF-8 text"))?;
        if text.trim().is_empty() {
            return Ok(Config::default());
        }
        json::strict(text)?;
        let value = json::value(text).map_err(|err| {
            ConfigError::new("(configuration)", format!("is not valid JSON: {err}"))
        })?;
        let root = Object::root(&value)?;
        let mut config = Config {
            mode: mode(&root)?,
            ..Config::default()
        };
        if config.mode == Mode::Upstream {
            // An upstream instance sees one attempt, not the request: it
            // cannot steer, answer, or rewrite what the client gets.
            if let Some(section) = DOWNSTREAM_ONLY.iter().find(|s| root.has(s)) {
                return Err(ConfigError::new(
                    *section,
                    "belongs to the downstream instance: with `mode: upstream` meshguard only grades hosts from every attempt (give this instance detection, ejection and limits)",
                ));
            }
            config.steering.enabled = false;
            config.circuit_breaker.enabled = false;
        }
        config.apply(&root)?;
        config.validate("")?;
        if let Some(list) = root.objects("overrides")? {
            config.overrides = overrides::parse(&list, &config)?;
        }
        Ok(config)
    }

    /// The override that applies to a route, if any: the first that matches.
    pub fn override_for(&self, virtual_service: &str, route: &str) -> Option<&Override> {
        self.overrides
            .iter()
            .find(|o| o.matches(virtual_service, route))
    }

    /// Applies a configuration object, possibly partial, over this one.
    fn apply(&mut self, object: &Object) -> Result<(), ConfigError> {
        object.only(&[
            "mode",
            "detection",
            "ejection",
            "steering",
            "limits",
            "circuitBreaker",
            "headers",
            "overrides",
            "status",
        ])?;
        if let Some(section) = object.object("detection")? {
            self.detection.apply(&section)?;
        }
        if let Some(section) = object.object("ejection")? {
            self.ejection.apply(&section)?;
        }
        if let Some(section) = object.object("steering")? {
            self.steering.apply(&section)?;
        }
        if let Some(section) = object.object("limits")? {
            self.limits.apply(&section)?;
        }
        if let Some(section) = object.object("circuitBreaker")? {
            self.circuit_breaker.apply(&section)?;
        }
        if let Some(section) = object.object("headers")? {
            self.headers.apply(&section)?;
        }
        if let Some(section) = object.object("status")? {
            self.status.apply(&section)?;
        }
        Ok(())
    }

    /// Rules that span fields, checked once everything is applied. `prefix`
    /// locates this configuration (`overrides[2]`) in error messages.
    fn validate(&self, prefix: &str) -> Result<(), ConfigError> {
        let field = |name: &str| join(prefix, name);
        let d = &self.detection;
        if d.min_requests > d.window_size {
            return Err(ConfigError::new(
                field("detection.minRequests"),
                format!(
                    "{} is more than windowSize ({}), so no window would ever be judged",
                    d.min_requests, d.window_size
                ),
            ));
        }
        if d.recovered_failure_percent >= d.degraded_failure_percent {
            return Err(ConfigError::new(
                field("detection.recoveredFailurePercent"),
                format!(
                    "{} must be below degradedFailurePercent ({}), or hosts could never recover",
                    d.recovered_failure_percent, d.degraded_failure_percent
                ),
            ));
        }
        if d.degraded_failure_percent > d.unhealthy_failure_percent {
            return Err(ConfigError::new(
                field("detection.degradedFailurePercent"),
                format!(
                    "{} must not exceed unhealthyFailurePercent ({})",
                    d.degraded_failure_percent, d.unhealthy_failure_percent
                ),
            ));
        }
        let e = &self.ejection;
        if e.base_ejection_time.0 == 0 {
            return Err(ConfigError::new(
                field("ejection.baseEjectionTime"),
                "must be longer than 0s",
            ));
        }
        if e.max_ejection_time < e.base_ejection_time {
            return Err(ConfigError::new(
                field("ejection.maxEjectionTime"),
                format!(
                    "{}ms is shorter than baseEjectionTime ({}ms)",
                    e.max_ejection_time.0, e.base_ejection_time.0
                ),
            ));
        }
        self.circuit_breaker.validate(prefix)
    }
}

fn mode(root: &Object) -> Result<Mode, ConfigError> {
    let mut text = String::new();
    root.string("mode", &mut text)?;
    match text.as_str() {
        "" | "downstream" => Ok(Mode::Downstream),
        "upstream" => Ok(Mode::Upstream),
        other => Err(ConfigError::new(
            "mode",
            format!("`{other}` is not one of: downstream, upstream"),
        )),
    }
}

const PERCENT: u64 = 100;
const COUNT: u64 = u16::MAX as u64;

impl Detection {
    fn apply(&mut self, o: &Object) -> Result<(), ConfigError> {
        o.only(&[
            "windowSize",
            "minRequests",
            "degradedFailurePercent",
            "unhealthyFailurePercent",
            "recoveredFailurePercent",
            "consecutive5xxErrors",
            "consecutiveGatewayErrors",
            "consecutiveLocalOriginFailures",
            "failureStatusCodes",
            "grpcFailureCodes",
            "slowCallThreshold",
            "slowCallPercent",
            "countClientCancellations",
            "successSampling",
        ])?;
        let window_max = u64::from(MAX_WINDOW_SIZE);
        o.number("windowSize", &mut self.window_size, 1, window_max)?;
        o.number("minRequests", &mut self.min_requests, 1, window_max)?;
        o.number(
            "degradedFailurePercent",
            &mut self.degraded_failure_percent,
            1,
            PERCENT,
        )?;
        o.number(
            "unhealthyFailurePercent",
            &mut self.unhealthy_failure_percent,
            1,
            PERCENT,
        )?;
        o.number(
            "recoveredFailurePercent",
            &mut self.recovered_failure_percent,
            0,
            99,
        )?;
        o.number(
            "consecutive5xxErrors",
            &mut self.consecutive_5xx_errors,
            0,
            COUNT,
        )?;
        o.number(
            "consecutiveGatewayErrors",
            &mut self.consecutive_gateway_errors,
            0,
            COUNT,
        )?;
        o.number(
            "consecutiveLocalOriginFailures",
            &mut self.consecutive_local_origin_failures,
            0,
            COUNT,
        )?;
        if let Some(items) = o.array("failureStatusCodes")? {
            self.failure_statuses = headers::status_set(&o.path("failureStatusCodes"), items)?;
        }
        if let Some(items) = o.array("grpcFailureCodes")? {
            self.grpc_failure_codes = json::each(&o.path("grpcFailureCodes"), items, |item| {
                json::whole_number(item)
                    .filter(|code| (1..=16).contains(code))
                    .map(|code| code as u8)
                    .ok_or_else(|| "is not a gRPC error status (1-16)".to_string())
            })?;
        }
        o.millis("slowCallThreshold", &mut self.slow_call_threshold)?;
        o.number("slowCallPercent", &mut self.slow_call_percent, 1, PERCENT)?;
        o.bool(
            "countClientCancellations",
            &mut self.count_client_cancellations,
        )?;
        o.number(
            "successSampling",
            &mut self.success_sampling,
            1,
            u64::from(MAX_SUCCESS_SAMPLING),
        )
    }
}

impl Ejection {
    fn apply(&mut self, o: &Object) -> Result<(), ConfigError> {
        o.only(&[
            "baseEjectionTime",
            "maxEjectionTime",
            "maxEjectionPercent",
            "ejectionJitter",
            "warmupDuration",
            "degradedWeightPercent",
        ])?;
        o.millis("baseEjectionTime", &mut self.base_ejection_time)?;
        o.millis("maxEjectionTime", &mut self.max_ejection_time)?;
        o.number(
            "maxEjectionPercent",
            &mut self.max_ejection_percent,
            0,
            PERCENT,
        )?;
        o.millis("ejectionJitter", &mut self.ejection_jitter)?;
        o.millis("warmupDuration", &mut self.warmup_duration)?;
        o.number(
            "degradedWeightPercent",
            &mut self.degraded_weight_percent,
            0,
            PERCENT,
        )
    }
}

impl Steering {
    fn apply(&mut self, o: &Object) -> Result<(), ConfigError> {
        o.only(&[
            "enabled",
            "header",
            "encoding",
            "stripClientHeader",
            "discoveryPercent",
            "retryOn",
        ])?;
        o.bool("enabled", &mut self.enabled)?;
        o.bool("stripClientHeader", &mut self.strip_client_header)?;
        o.number(
            "discoveryPercent",
            &mut self.discovery_percent,
            0,
            u64::from(MAX_DISCOVERY_PERCENT),
        )?;
        let mut retry_on = self.retry_on.clone();
        o.string("retryOn", &mut retry_on)?;
        self.retry_on = retry_on_list(&retry_on)
            .map_err(|reason| ConfigError::new(o.path("retryOn"), reason))?;
        self.discovery_retry_on = discovery_retry_on(&self.retry_on);
        let mut header = self.header.clone();
        o.string("header", &mut header)?;
        self.header =
            own_header(&header).map_err(|reason| ConfigError::new(o.path("header"), reason))?;
        let mut encoding = String::new();
        o.string("encoding", &mut encoding)?;
        self.encoding = match encoding.as_str() {
            "" => self.encoding,
            "plain" => Encoding::Plain,
            "base64" => Encoding::Base64,
            other => {
                return Err(ConfigError::new(
                    o.path("encoding"),
                    format!("`{other}` is not one of: plain, base64"),
                ))
            }
        };
        Ok(())
    }
}

/// Envoy's `x-envoy-retry-on` policies that never resend a request an
/// application may have acted on, plus `5xx` for those who accept that.
const RETRY_ON_POLICIES: &[&str] = &[
    "5xx",
    "gateway-error",
    "reset",
    "reset-before-request",
    "connect-failure",
    "envoy-ratelimited",
    "retriable-4xx",
    "refused-stream",
    "retriable-status-codes",
    "retriable-headers",
    "http3-post-connect-failure",
];

/// `retry_on` (normalised) with `5xx` added, or nothing when it is empty.
fn discovery_retry_on(retry_on: &str) -> String {
    if retry_on.is_empty() || retry_on.split(',').any(|p| p == "5xx") {
        retry_on.to_string()
    } else {
        format!("{retry_on},5xx")
    }
}

/// A comma-separated list of Envoy retry policies, normalised.
fn retry_on_list(text: &str) -> Result<String, String> {
    let mut out: Vec<&str> = Vec::new();
    for item in text.split(',').map(str::trim).filter(|s| !s.is_empty()) {
        if !RETRY_ON_POLICIES.contains(&item) {
            return Err(format!(
                "`{item}` is not an Envoy retry policy (one of: {})",
                json::joined(RETRY_ON_POLICIES, ", ")
            ));
        }
        if !out.contains(&item) {
            out.push(item);
        }
    }
    Ok(json::joined(&out, ","))
}

/// HTTP framing and hop-by-hop headers: Envoy's business.
const FRAMING_HEADERS: &[&str] = &[
    "host",
    "content-length",
    "transfer-encoding",
    "connection",
    "keep-alive",
    "proxy-connection",
    "upgrade",
    "te",
];
/// What a client's request carries for itself.
const CLIENT_HEADERS: &[&str] = &[
    "authorization",
    "proxy-authorization",
    "cookie",
    "set-cookie",
    "x-request-id",
];

/// A header name meshguard may set: a lower-cased HTTP token that is not
/// a pseudo-header or a header HTTP framing depends on (hop-by-hop).
fn header_name(text: &str) -> Result<String, String> {
    if text.len() > MAX_HEADER_NAME {
        return Err(format!(
            "is {} bytes long (at most {MAX_HEADER_NAME})",
            text.len()
        ));
    }
    let name = text.trim().to_ascii_lowercase();
    let token = |c: char| c.is_ascii_alphanumeric() || "!#$%&'*+-.^_`|~".contains(c);
    if name.is_empty() || !name.chars().all(token) {
        return Err(format!("`{text}` is not a valid HTTP header name"));
    }
    if FRAMING_HEADERS.contains(&name.as_str()) {
        return Err(format!(
            "`{name}` is a header HTTP framing depends on (Envoy manages it)"
        ));
    }
    Ok(name)
}

/// A header meshguard fills with its own value on the client's request
/// (the steering address, the fallback marker): not one the client's
/// request already needs.
fn own_header(text: &str) -> Result<String, String> {
    let name = header_name(text)?;
    if CLIENT_HEADERS.contains(&name.as_str()) {
        return Err(format!(
            "`{name}` belongs to the client (credentials, cookies, request id): meshguard would overwrite it"
        ));
    }
    Ok(name)
}

impl Limits {
    fn apply(&mut self, o: &Object) -> Result<(), ConfigError> {
        o.only(&[
            "maxServices",
            "maxHostsPerService",
            "maxWatchedHostsPerService",
            "hostIdleTimeout",
        ])?;
        o.number(
            "maxServices",
            &mut self.max_services,
            1,
            u64::from(MAX_SERVICES),
        )?;
        o.number(
            "maxHostsPerService",
            &mut self.max_hosts_per_service,
            1,
            u64::from(MAX_HOSTS_PER_SERVICE),
        )?;
        o.number(
            "maxWatchedHostsPerService",
            &mut self.max_watched_hosts_per_service,
            1,
            u64::from(MAX_WATCHED_HOSTS_PER_SERVICE),
        )?;
        o.millis("hostIdleTimeout", &mut self.host_idle_timeout)
    }
}

#[cfg(test)]
mod tests;
