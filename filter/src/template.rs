//! Values with placeholders (`{service}`, `{hostState}`...), parsed once at
//! configure time and rendered per request.

use std::fmt::Write;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Var {
    Service,
    UpstreamHost,
    HostState,
    BreakerState,
    Route,
    VirtualService,
    RequestId,
    RetryAfterSeconds,
}

const ALL: [(Var, &str); 8] = [
    (Var::Service, "service"),
    (Var::UpstreamHost, "upstreamHost"),
    (Var::HostState, "hostState"),
    (Var::BreakerState, "breakerState"),
    (Var::Route, "route"),
    (Var::VirtualService, "virtualService"),
    (Var::RequestId, "requestId"),
    (Var::RetryAfterSeconds, "retryAfterSeconds"),
];

impl Var {
    pub fn name(self) -> &'static str {
        ALL.iter().find(|(v, _)| *v == self).map_or("", |(_, n)| n)
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Part {
    Text(String),
    Var(Var),
}

#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Template {
    parts: Vec<Part>,
}

/// What placeholders stand for in one request.
#[derive(Debug, Clone, Copy, Default)]
pub struct Values<'a> {
    pub service: &'a str,
    pub upstream_host: &'a str,
    pub host_state: &'a str,
    pub breaker_state: &'a str,
    pub route: &'a str,
    pub virtual_service: &'a str,
    pub request_id: &'a str,
    pub retry_after_seconds: u64,
}

impl Template {
    /// A placeholder is `{` + letters + `}`; any other brace is literal text,
    /// so JSON bodies need no escaping. Placeholders outside `allowed` (or
    /// unknown) are refused.
    pub fn parse(text: &str, allowed: &[Var]) -> Result<Template, String> {
        if text.chars().any(|c| c.is_control()) {
            return Err("contains control characters (CR, LF, NUL...)".to_string());
        }
        let mut parts = Vec::new();
        let mut literal = String::new();
        let mut rest = text;
        while let Some(open) = rest.find('{') {
            let after = &rest[open + 1..];
            let name_len = after
                .find(|c: char| !c.is_ascii_alphabetic())
                .unwrap_or(after.len());
            let is_placeholder = name_len > 0 && after[name_len..].starts_with('}');
            if !is_placeholder {
                literal.push_str(&rest[..=open]);
                rest = after;
                continue;
            }
            let name = &after[..name_len];
            let var = ALL
                .iter()
                .find(|(_, n)| *n == name)
                .map(|(v, _)| *v)
                .filter(|v| allowed.contains(v))
                .ok_or_else(|| {
                    let known: Vec<String> = allowed
                        .iter()
                        .map(|v| format!("{{{}}}", v.name()))
                        .collect();
                    format!(
                        "unknown placeholder {{{name}}} here (use {})",
                        known.join(", ")
                    )
                })?;
            literal.push_str(&rest[..open]);
            if !literal.is_empty() {
                parts.push(Part::Text(std::mem::take(&mut literal)));
            }
            parts.push(Part::Var(var));
            rest = &after[name_len + 1..];
        }
        literal.push_str(rest);
        if !literal.is_empty() {
            parts.push(Part::Text(literal));
        }
        Ok(Template { parts })
    }

    pub fn uses(&self, var: Var) -> bool {
        self.parts.contains(&Part::Var(var))
    }

    pub fn render(&self, values: &Values) -> String {
        let mut out = String::new();
        for part in &self.parts {
            match part {
                Part::Text(text) => out.push_str(text),
                Part::Var(Var::RetryAfterSeconds) => {
                    let _ = write!(out, "{}", values.retry_after_seconds);
                }
                Part::Var(var) => {
                    let value = match var {
                        Var::Service => values.service,
                        Var::UpstreamHost => values.upstream_host,
                        Var::HostState => values.host_state,
                        Var::BreakerState => values.breaker_state,
                        Var::Route => values.route,
                        Var::VirtualService => values.virtual_service,
                        Var::RequestId => values.request_id,
                        Var::RetryAfterSeconds => "",
                    };
                    // Values come from traffic and cluster names: never let
                    // one smuggle a line break into a header.
                    out.extend(value.chars().filter(|c| !c.is_control()));
                }
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const EVERY: &[Var] = &[
        Var::Service,
        Var::UpstreamHost,
        Var::HostState,
        Var::BreakerState,
        Var::Route,
        Var::VirtualService,
        Var::RequestId,
        Var::RetryAfterSeconds,
    ];

    #[test]
    fn renders_placeholders_and_keeps_json_braces() {
        let t = Template::parse(
            r#"{"service":"{service}","retry":{retryAfterSeconds}}"#,
            EVERY,
        )
        .unwrap();
        let values = Values {
            service: "reviews",
            retry_after_seconds: 12,
            ..Values::default()
        };
        assert_eq!(t.render(&values), r#"{"service":"reviews","retry":12}"#);
        assert!(t.uses(Var::Service) && !t.uses(Var::Route));
    }

    #[test]
    fn every_placeholder_renders() {
        let t = Template::parse(
            "{service}|{upstreamHost}|{hostState}|{breakerState}|{route}|{virtualService}|{requestId}",
            EVERY,
        )
        .unwrap();
        let values = Values {
            service: "s",
            upstream_host: "10.0.0.1:80",
            host_state: "Degraded",
            breaker_state: "Closed",
            route: "r",
            virtual_service: "ns/vs",
            request_id: "id",
            retry_after_seconds: 0,
        };
        assert_eq!(
            t.render(&values),
            "s|10.0.0.1:80|Degraded|Closed|r|ns/vs|id"
        );
    }

    #[test]
    fn refuses_unknown_or_disallowed_placeholders() {
        let err = Template::parse("{nope}", EVERY).unwrap_err();
        assert!(err.contains("{nope}"), "{err}");
        let err = Template::parse("{hostState}", &[Var::Service]).unwrap_err();
        assert!(err.contains("use {service}"), "{err}");
        assert!(Template::parse("a\r\nb", EVERY).is_err());
    }

    #[test]
    fn values_cannot_inject_line_breaks() {
        let t = Template::parse("{route}", EVERY).unwrap();
        let values = Values {
            route: "a\r\nx-evil: 1",
            ..Values::default()
        };
        assert_eq!(t.render(&values), "ax-evil: 1");
    }

    #[test]
    fn plain_text_and_stray_braces() {
        assert_eq!(
            Template::parse("a{b", EVERY)
                .unwrap()
                .render(&Values::default()),
            "a{b"
        );
        assert_eq!(
            Template::parse("{}", EVERY)
                .unwrap()
                .render(&Values::default()),
            "{}"
        );
        assert_eq!(
            Template::parse("", EVERY)
                .unwrap()
                .render(&Values::default()),
            ""
        );
    }
}
