//! `circuitBreaker`: when a whole service (or one route's share of it) is
//! failing, answer locally instead of waiting on it.

use super::json::Object;
use super::{header_name, own_header, ConfigError, Millis};
use crate::template::{Template, Var};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BreakerMode {
    /// Answer with `localReply`.
    LocalReply,
    /// Set `fallback.header` and let the route table send the request elsewhere.
    Fallback,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LocalReply {
    pub status: u16,
    pub body: Template,
    pub headers: Vec<(String, Template)>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Fallback {
    pub header: String,
    pub value: Template,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CircuitBreaker {
    pub enabled: bool,
    pub window_size: u16,
    pub min_requests: u16,
    pub failure_percent: u8,
    pub slow_call_threshold: Millis,
    pub slow_call_percent: u8,
    pub open_duration: Millis,
    pub max_open_duration: Millis,
    pub half_open_requests: u16,
    pub close_after_successes: u16,
    pub mode: BreakerMode,
    pub local_reply: LocalReply,
    pub fallback: Fallback,
}

/// Placeholders a local reply or fallback value may use.
const REPLY_VARS: &[Var] = &[
    Var::Service,
    Var::RetryAfterSeconds,
    Var::Route,
    Var::VirtualService,
];

fn template(text: &str) -> Template {
    Template::parse(text, REPLY_VARS).unwrap_or_default()
}

impl Default for CircuitBreaker {
    fn default() -> Self {
        CircuitBreaker {
            enabled: true,
            window_size: 100,
            min_requests: 20,
            failure_percent: 50,
            slow_call_threshold: Millis(0),
            slow_call_percent: 100,
            open_duration: Millis::from_secs(5),
            max_open_duration: Millis::from_secs(300),
            half_open_requests: 3,
            close_after_successes: 3,
            mode: BreakerMode::LocalReply,
            local_reply: LocalReply {
                status: 503,
                body: template(
                    r#"{"error":"circuit open","service":"{service}","retryAfterSeconds":{retryAfterSeconds}}"#,
                ),
                headers: vec![("content-type".to_string(), template("application/json"))],
            },
            fallback: Fallback {
                header: "x-meshguard-fallback".to_string(),
                value: template("{service}"),
            },
        }
    }
}

impl CircuitBreaker {
    pub fn slow_calls_enabled(&self) -> bool {
        self.slow_call_threshold.0 > 0
    }

    pub(super) fn apply(&mut self, o: &Object) -> Result<(), ConfigError> {
        o.only(&[
            "enabled",
            "windowSize",
            "minRequests",
            "failurePercent",
            "slowCallThreshold",
            "slowCallPercent",
            "openDuration",
            "maxOpenDuration",
            "halfOpenRequests",
            "closeAfterSuccesses",
            "mode",
            "localReply",
            "fallback",
        ])?;
        let window_max = u64::from(super::MAX_WINDOW_SIZE);
        o.bool("enabled", &mut self.enabled)?;
        o.number("windowSize", &mut self.window_size, 1, window_max)?;
        o.number("minRequests", &mut self.min_requests, 1, window_max)?;
        o.number("failurePercent", &mut self.failure_percent, 1, 100)?;
        o.millis("slowCallThreshold", &mut self.slow_call_threshold)?;
        o.number("slowCallPercent", &mut self.slow_call_percent, 1, 100)?;
        o.millis("openDuration", &mut self.open_duration)?;
        o.millis("maxOpenDuration", &mut self.max_open_duration)?;
        o.number("halfOpenRequests", &mut self.half_open_requests, 1, 1000)?;
        o.number(
            "closeAfterSuccesses",
            &mut self.close_after_successes,
            1,
            1000,
        )?;
        let mut mode = String::new();
        o.string("mode", &mut mode)?;
        self.mode = match mode.as_str() {
            "" => self.mode,
            "localReply" => BreakerMode::LocalReply,
            "fallback" => BreakerMode::Fallback,
            other => {
                return Err(ConfigError::new(
                    o.path("mode"),
                    format!("`{other}` is not one of: localReply, fallback"),
                ))
            }
        };
        if let Some(reply) = o.object("localReply")? {
            reply.only(&["status", "body", "headers"])?;
            reply.number("status", &mut self.local_reply.status, 200, 599)?;
            reply.template("body", &mut self.local_reply.body, REPLY_VARS)?;
            if let Some(headers) = reply.object("headers")? {
                self.local_reply.headers = headers.entries(|name, value| {
                    let name = header_name(name)?;
                    let value = match value {
                        serde_json::Value::String(text) => Template::parse(text, REPLY_VARS)?,
                        _ => return Err("expected a string value".to_string()),
                    };
                    Ok((name, value))
                })?;
            }
        }
        if let Some(fallback) = o.object("fallback")? {
            fallback.only(&["header", "value"])?;
            let mut header = self.fallback.header.clone();
            fallback.string("header", &mut header)?;
            self.fallback.header = own_header(&header)
                .map_err(|reason| ConfigError::new(fallback.path("header"), reason))?;
            fallback.template("value", &mut self.fallback.value, REPLY_VARS)?;
        }
        Ok(())
    }

    pub(super) fn validate(&self, prefix: &str) -> Result<(), ConfigError> {
        let field = |name: &str| super::json::join(prefix, &format!("circuitBreaker.{name}"));
        if self.min_requests > self.window_size {
            return Err(ConfigError::new(
                field("minRequests"),
                format!(
                    "{} is more than windowSize ({}), so the breaker could never trip",
                    self.min_requests, self.window_size
                ),
            ));
        }
        if self.open_duration.0 == 0 {
            return Err(ConfigError::new(
                field("openDuration"),
                "must be longer than 0s",
            ));
        }
        if self.max_open_duration < self.open_duration {
            return Err(ConfigError::new(
                field("maxOpenDuration"),
                format!(
                    "{}ms is shorter than openDuration ({}ms)",
                    self.max_open_duration.0, self.open_duration.0
                ),
            ));
        }
        Ok(())
    }
}
