//! The plugin configuration: what operators write (camelCase JSON, the
//! `pluginConfig` of an Istio WasmPlugin) and the checks that keep a typo or
//! an inconsistent threshold set from silently changing behaviour.

mod duration;
mod status_set;

pub use duration::Millis;
pub use status_set::{StatusSet, StatusSpec};

use serde::Deserialize;

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

#[derive(Debug, Clone, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields, default)]
pub struct Config {
    pub detection: Detection,
    pub ejection: Ejection,
    pub steering: Steering,
    pub limits: Limits,
}

/// How outcomes are judged and when a host's grade changes.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields, default)]
pub struct Detection {
    /// Outcomes remembered per host (count-based sliding window).
    pub window_size: u16,
    /// Outcomes a window must hold before its percentages are judged.
    pub min_requests: u16,
    pub degraded_failure_percent: u8,
    pub unhealthy_failure_percent: u8,
    pub recovered_failure_percent: u8,
    /// Consecutive failures of any kind that eject a host (0 disables).
    #[serde(rename = "consecutive5xxErrors")]
    pub consecutive_5xx_errors: u16,
    /// Consecutive 502/503/504 (and local-origin failures) that eject (0 disables).
    pub consecutive_gateway_errors: u16,
    /// Consecutive connect failures, resets and timeouts that eject (0 disables).
    pub consecutive_local_origin_failures: u16,
    #[serde(rename = "failureStatusCodes")]
    pub failure_status_specs: Vec<StatusSpec>,
    #[serde(skip)]
    pub failure_statuses: StatusSet,
    pub grpc_failure_codes: Vec<u8>,
    /// Calls slower than this count as slow (`0s` disables slow-call detection).
    pub slow_call_threshold: Millis,
    pub slow_call_percent: u8,
    /// A client that gives up is usually not the host's fault; some teams
    /// want it counted anyway (a client timeout often means a slow host).
    pub count_client_cancellations: bool,
}

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
            failure_status_specs: vec![StatusSpec::Text("5xx".to_string())],
            failure_statuses: five_xx(),
            grpc_failure_codes: vec![14],
            slow_call_threshold: Millis(0),
            slow_call_percent: 50,
            count_client_cancellations: false,
        }
    }
}

fn five_xx() -> StatusSet {
    StatusSet::compile(&[StatusSpec::Text("5xx".to_string())]).unwrap_or_default()
}

impl Detection {
    pub fn grpc_code_is_failure(&self, code: u32) -> bool {
        self.grpc_failure_codes.iter().any(|c| u32::from(*c) == code)
    }

    pub fn slow_calls_enabled(&self) -> bool {
        self.slow_call_threshold.0 > 0
    }
}

/// How long ejections last and how returning hosts are eased back in.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields, default)]
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

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Encoding {
    /// `ip:port`, for Envoy's `override_host` load-balancing policy.
    Plain,
    /// base64(`ip:port`), for the stateful-session header filter (Istio's
    /// persistent sessions).
    Base64,
}

#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields, default)]
pub struct Steering {
    pub enabled: bool,
    pub header: String,
    pub encoding: Encoding,
}

impl Default for Steering {
    fn default() -> Self {
        Steering {
            enabled: true,
            header: "x-meshguard-upstream".to_string(),
            encoding: Encoding::Plain,
        }
    }
}

/// Bounds on what the filter tracks, so traffic cannot grow its memory.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields, default)]
pub struct Limits {
    pub max_services: u16,
    pub max_hosts_per_service: u16,
    /// A Healthy host with no traffic for this long is forgotten (scaled-down pods).
    pub host_idle_timeout: Millis,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_services: 64,
            max_hosts_per_service: 64,
            host_idle_timeout: Millis::from_secs(600),
        }
    }
}

impl Config {
    /// Parses and checks a plugin configuration. Empty input means all defaults.
    pub fn parse(bytes: &[u8]) -> Result<Config, ConfigError> {
        let text = std::str::from_utf8(bytes)
            .map_err(|_| ConfigError::new("(configuration)", "is not UTF-8 text"))?;
        if text.trim().is_empty() {
            return Ok(Config::default());
        }
        // serde would also fill a struct from a JSON array, by position.
        if !text.trim_start().starts_with('{') {
            return Err(ConfigError::new("(configuration)", "must be a JSON object"));
        }
        let mut json = serde_json::Deserializer::from_str(text);
        let mut config: Config = serde_path_to_error::deserialize(&mut json).map_err(|err| {
            let path = err.path().to_string();
            // serde_path_to_error says "." for the root and "?" when the
            // document ended before any field was reached.
            let field = if path == "." || path == "?" {
                "(configuration)".to_string()
            } else {
                path
            };
            ConfigError::new(field, strip_position(&err.inner().to_string()))
        })?;
        json.end()
            .map_err(|_| ConfigError::new("(configuration)", "trailing characters after the JSON object"))?;
        config.validate()?;
        Ok(config)
    }

    fn validate(&mut self) -> Result<(), ConfigError> {
        self.detection.validate()?;
        self.ejection.validate()?;
        self.steering.validate()?;
        self.limits.validate()
    }
}

/// serde_json appends "at line 1 column 42"; the field path already says where.
fn strip_position(message: &str) -> String {
    match message.rfind(" at line ") {
        Some(index) => message[..index].to_string(),
        None => message.to_string(),
    }
}

fn check_percent(field: &str, value: u8, min: u8, max: u8) -> Result<(), ConfigError> {
    if value < min || value > max {
        return Err(ConfigError::new(
            field,
            format!("{value} is out of range ({min}-{max})"),
        ));
    }
    Ok(())
}

/// Upper bound of `windowSize`: keeps a host record small enough that the
/// per-service shared-data record stays cheap to copy.
pub const MAX_WINDOW_SIZE: u16 = 1000;

impl Detection {
    fn validate(&mut self) -> Result<(), ConfigError> {
        const D: &str = "detection";
        if self.window_size == 0 || self.window_size > MAX_WINDOW_SIZE {
            return Err(ConfigError::new(
                format!("{D}.windowSize"),
                format!("{} is out of range (1-{MAX_WINDOW_SIZE})", self.window_size),
            ));
        }
        if self.min_requests == 0 || self.min_requests > self.window_size {
            return Err(ConfigError::new(
                format!("{D}.minRequests"),
                format!(
                    "{} is out of range (1 to windowSize, {})",
                    self.min_requests, self.window_size
                ),
            ));
        }
        check_percent(&format!("{D}.degradedFailurePercent"), self.degraded_failure_percent, 1, 100)?;
        check_percent(&format!("{D}.unhealthyFailurePercent"), self.unhealthy_failure_percent, 1, 100)?;
        check_percent(&format!("{D}.recoveredFailurePercent"), self.recovered_failure_percent, 0, 99)?;
        check_percent(&format!("{D}.slowCallPercent"), self.slow_call_percent, 1, 100)?;
        if self.recovered_failure_percent >= self.degraded_failure_percent {
            return Err(ConfigError::new(
                format!("{D}.recoveredFailurePercent"),
                format!(
                    "{} must be below degradedFailurePercent ({}), or hosts could never recover",
                    self.recovered_failure_percent, self.degraded_failure_percent
                ),
            ));
        }
        if self.degraded_failure_percent > self.unhealthy_failure_percent {
            return Err(ConfigError::new(
                format!("{D}.degradedFailurePercent"),
                format!(
                    "{} must not exceed unhealthyFailurePercent ({})",
                    self.degraded_failure_percent, self.unhealthy_failure_percent
                ),
            ));
        }
        self.failure_statuses = StatusSet::compile(&self.failure_status_specs).map_err(
            |(index, reason)| ConfigError::new(format!("{D}.failureStatusCodes[{index}]"), reason),
        )?;
        for (index, code) in self.grpc_failure_codes.iter().enumerate() {
            if !(1..=16).contains(code) {
                return Err(ConfigError::new(
                    format!("{D}.grpcFailureCodes[{index}]"),
                    format!("{code} is not a gRPC error status (1-16)"),
                ));
            }
        }
        Ok(())
    }
}

impl Ejection {
    fn validate(&self) -> Result<(), ConfigError> {
        const E: &str = "ejection";
        if self.base_ejection_time.0 == 0 {
            return Err(ConfigError::new(
                format!("{E}.baseEjectionTime"),
                "must be longer than 0s",
            ));
        }
        if self.max_ejection_time < self.base_ejection_time {
            return Err(ConfigError::new(
                format!("{E}.maxEjectionTime"),
                format!(
                    "{}ms is shorter than baseEjectionTime ({}ms)",
                    self.max_ejection_time.0, self.base_ejection_time.0
                ),
            ));
        }
        check_percent(&format!("{E}.maxEjectionPercent"), self.max_ejection_percent, 0, 100)?;
        check_percent(&format!("{E}.degradedWeightPercent"), self.degraded_weight_percent, 0, 100)
    }
}

impl Steering {
    fn validate(&mut self) -> Result<(), ConfigError> {
        let name = self.header.trim().to_ascii_lowercase();
        let token = |c: char| c.is_ascii_alphanumeric() || "!#$%&'*+-.^_`|~".contains(c);
        if name.is_empty() || !name.chars().all(token) {
            return Err(ConfigError::new(
                "steering.header",
                format!("`{}` is not a valid HTTP header name", self.header),
            ));
        }
        if matches!(name.as_str(), "host" | "content-length" | "transfer-encoding" | "connection") {
            return Err(ConfigError::new(
                "steering.header",
                format!("`{name}` is a header HTTP itself depends on"),
            ));
        }
        self.header = name;
        Ok(())
    }
}

/// Hard ceilings on the limits themselves: a service record is copied on
/// every shared-data read, so it must stay small.
pub const MAX_SERVICES: u16 = 1024;
pub const MAX_HOSTS_PER_SERVICE: u16 = 512;

impl Limits {
    fn validate(&self) -> Result<(), ConfigError> {
        if self.max_services == 0 || self.max_services > MAX_SERVICES {
            return Err(ConfigError::new(
                "limits.maxServices",
                format!("{} is out of range (1-{MAX_SERVICES})", self.max_services),
            ));
        }
        if self.max_hosts_per_service == 0 || self.max_hosts_per_service > MAX_HOSTS_PER_SERVICE {
            return Err(ConfigError::new(
                "limits.maxHostsPerService",
                format!(
                    "{} is out of range (1-{MAX_HOSTS_PER_SERVICE})",
                    self.max_hosts_per_service
                ),
            ));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests;
