//! `headers`: request and response header rules and the request id.

use serde_json::Value;

use super::json::{whole_number, Object};
use super::{ConfigError, MAX_HEADER_RULES};
use crate::glob::Glob;
use crate::model::{BreakerState, HostState, StatusSet, StatusSpec};
use crate::template::{Template, Var};

const RULE_VARS: &[Var] = &[
    Var::Service,
    Var::UpstreamHost,
    Var::HostState,
    Var::BreakerState,
    Var::Route,
    Var::VirtualService,
    Var::RequestId,
];

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Op {
    /// Replace the header (add it if absent).
    Set {
        name: String,
        value: Template,
    },
    /// Add one more value.
    Append {
        name: String,
        value: Template,
    },
    Remove {
        name: String,
    },
    /// Move the value to another name (nothing happens if absent).
    Rename {
        from: String,
        to: String,
    },
}

/// Conditions, all of which must hold (each list is "any of").
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct When {
    pub host_states: Vec<HostState>,
    pub breaker_states: Vec<BreakerState>,
    pub route: Option<Glob>,
    pub virtual_service: Option<Glob>,
    /// Response status (response rules only).
    pub statuses: Option<StatusSet>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rule {
    pub op: Op,
    pub when: When,
}

#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct RequestId {
    pub header: String,
    /// Add a random id to requests that have none.
    pub generate: bool,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HeaderRules {
    pub request: Vec<Rule>,
    pub response: Vec<Rule>,
    pub request_id: RequestId,
}

impl Default for HeaderRules {
    fn default() -> Self {
        HeaderRules {
            request: Vec::new(),
            response: Vec::new(),
            request_id: RequestId {
                header: "x-request-id".to_string(),
                generate: false,
            },
        }
    }
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Phase {
    Request,
    Response,
}

impl HeaderRules {
    pub(super) fn apply(&mut self, o: &Object) -> Result<(), ConfigError> {
        o.only(&["request", "response", "requestId"])?;
        for (key, phase) in [("request", Phase::Request), ("response", Phase::Response)] {
            let Some(rules) = o.objects(key)? else {
                continue;
            };
            if rules.len() > MAX_HEADER_RULES {
                return Err(ConfigError::new(
                    o.path(key),
                    format!("has {} rules (at most {MAX_HEADER_RULES})", rules.len()),
                ));
            }
            let rules = rules
                .iter()
                .map(|r| rule(r, phase))
                .collect::<Result<_, _>>()?;
            match phase {
                Phase::Request => self.request = rules,
                Phase::Response => self.response = rules,
            }
        }
        if let Some(id) = o.object("requestId")? {
            id.only(&["header", "generate"])?;
            let mut header = self.request_id.header.clone();
            id.string("header", &mut header)?;
            self.request_id.header = writable(&header, Phase::Request)
                .map_err(|reason| ConfigError::new(id.path("header"), reason))?;
            id.bool("generate", &mut self.request_id.generate)?;
        }
        Ok(())
    }
}

fn rule(o: &Object, phase: Phase) -> Result<Rule, ConfigError> {
    o.only(&["op", "name", "value", "to", "when"])?;
    let mut op = String::new();
    o.string("op", &mut op)?;
    let name = || -> Result<String, ConfigError> {
        let mut name = String::new();
        o.string("name", &mut name)?;
        if !o.has("name") {
            return Err(ConfigError::new(o.path("name"), "is required"));
        }
        writable(&name, phase).map_err(|reason| ConfigError::new(o.path("name"), reason))
    };
    let value = || -> Result<Template, ConfigError> {
        if !o.has("value") {
            return Err(ConfigError::new(
                o.path("value"),
                format!("is required for `{op}`"),
            ));
        }
        let mut value = Template::default();
        o.template("value", &mut value, RULE_VARS)?;
        Ok(value)
    };
    let unused = |key: &str| -> Result<(), ConfigError> {
        if o.has(key) {
            return Err(ConfigError::new(
                o.path(key),
                format!("is not used by `{op}`"),
            ));
        }
        Ok(())
    };
    let pseudo_only_set = |name: &str| -> Result<(), ConfigError> {
        if name.starts_with(':') {
            return Err(ConfigError::new(
                o.path("name"),
                format!("`{name}` can only be changed with `set`"),
            ));
        }
        Ok(())
    };
    let op = match op.as_str() {
        "set" => {
            unused("to")?;
            Op::Set {
                name: name()?,
                value: value()?,
            }
        }
        "append" => {
            unused("to")?;
            let name = name()?;
            pseudo_only_set(&name)?;
            Op::Append {
                name,
                value: value()?,
            }
        }
        "remove" => {
            unused("to")?;
            unused("value")?;
            let name = name()?;
            pseudo_only_set(&name)?;
            Op::Remove { name }
        }
        "rename" => {
            unused("value")?;
            let from = name()?;
            pseudo_only_set(&from)?;
            let mut to = String::new();
            o.string("to", &mut to)?;
            if !o.has("to") {
                return Err(ConfigError::new(o.path("to"), "is required for `rename`"));
            }
            let to =
                writable(&to, phase).map_err(|reason| ConfigError::new(o.path("to"), reason))?;
            if to.starts_with(':') {
                return Err(ConfigError::new(
                    o.path("to"),
                    format!("`{to}` can only be changed with `set`"),
                ));
            }
            Op::Rename { from, to }
        }
        "" => {
            return Err(ConfigError::new(
                o.path("op"),
                "is required (set, append, remove or rename)",
            ))
        }
        other => {
            return Err(ConfigError::new(
                o.path("op"),
                format!("`{other}` is not one of: set, append, remove, rename"),
            ))
        }
    };
    let when = match o.object("when")? {
        Some(when) => condition(&when, phase)?,
        None => When::default(),
    };
    Ok(Rule { op, when })
}

fn condition(o: &Object, phase: Phase) -> Result<When, ConfigError> {
    o.only(&[
        "hostState",
        "breakerState",
        "route",
        "virtualService",
        "status",
    ])?;
    let mut when = When::default();
    if let Some(states) = o.list("hostState", |text| {
        [
            HostState::Healthy,
            HostState::Degraded,
            HostState::Unhealthy,
            HostState::WarmingUp,
        ]
        .into_iter()
        .find(|s| s.to_string() == text)
        .ok_or_else(|| format!("`{text}` is not one of: Healthy, Degraded, Unhealthy, WarmingUp"))
    })? {
        when.host_states = states;
    }
    if let Some(states) = o.list("breakerState", |text| {
        [
            BreakerState::Closed,
            BreakerState::Open,
            BreakerState::HalfOpen,
        ]
        .into_iter()
        .find(|s| s.to_string() == text)
        .ok_or_else(|| format!("`{text}` is not one of: Closed, Open, HalfOpen"))
    })? {
        when.breaker_states = states;
    }
    let glob = |key: &str| -> Result<Option<Glob>, ConfigError> {
        let mut text = String::new();
        o.string(key, &mut text)?;
        Ok(o.has(key).then(|| Glob::new(&text)))
    };
    when.route = glob("route")?;
    when.virtual_service = glob("virtualService")?;
    if let Some(items) = o.array("status")? {
        if phase == Phase::Request {
            return Err(ConfigError::new(
                o.path("status"),
                "only response rules can test the status",
            ));
        }
        when.statuses = Some(status_set(&o.path("status"), items)?);
    }
    Ok(when)
}

/// Reads a status list (`["5xx", 429, "500-504"]`), naming the bad entry.
pub(super) fn status_set(path: &str, items: &[Value]) -> Result<StatusSet, ConfigError> {
    let specs = super::json::each(path, items, |item| match item {
        Value::String(text) => Ok(StatusSpec::Text(text.clone())),
        number @ Value::Number(_) => whole_number(number)
            .and_then(|n| u16::try_from(n).ok())
            .map(StatusSpec::Code)
            .ok_or_else(|| "is not an HTTP status".to_string()),
        _ => Err("expected a status (503), class (\"5xx\") or range (\"500-504\")".to_string()),
    })?;
    StatusSet::compile(&specs)
        .map_err(|(index, reason)| ConfigError::new(format!("{path}[{index}]"), reason))
}

/// A header a rule may write in this phase. HTTP framing headers are
/// Envoy's business; of the pseudo-headers only a request's `:path` and
/// `:authority` make sense to change.
fn writable(text: &str, phase: Phase) -> Result<String, String> {
    let name = text.trim().to_ascii_lowercase();
    if let Some(pseudo) = name.strip_prefix(':') {
        return match (phase, pseudo) {
            (Phase::Request, "path" | "authority") => Ok(name),
            (Phase::Request, _) => Err(format!(
                "`{name}`: only :path and :authority may be changed"
            )),
            (Phase::Response, _) => Err(format!(
                "`{name}`: response pseudo-headers may not be changed"
            )),
        };
    }
    if name == "host" {
        return Err("`host`: Envoy carries the host as :authority; use `:authority`".to_string());
    }
    super::header_name(&name)
}
