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

/// Longest configuration text meshguard accepts (a template, a header
/// name, a glob...): longer is a mistake, and it would be copied per request.
pub const MAX_TEXT: usize = 4096;
/// Placeholders in one template.
pub const MAX_PLACEHOLDERS: usize = 16;
/// What one placeholder renders at most: longer values (a client's 59 KB
/// `x-request-id`) are cut to their first bytes, so a rendered value never
/// exceeds `MAX_TEXT + MAX_PLACEHOLDERS * MAX_VALUE_BYTES` (12 KiB).
pub const MAX_VALUE_BYTES: usize = 512;

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
        checked_text(text)?;
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
                    let mut known = String::new();
                    for v in allowed {
                        let sep = if known.is_empty() { "" } else { ", " };
                        let _ = write!(known, "{sep}{{{}}}", v.name());
                    }
                    format!("unknown placeholder {{{name}}} here (use {known})")
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
        let placeholders = parts.iter().filter(|p| matches!(p, Part::Var(_))).count();
        if placeholders > MAX_PLACEHOLDERS {
            return Err(format!(
                "has {placeholders} placeholders (at most {MAX_PLACEHOLDERS})"
            ));
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
                    // one smuggle a line break into a header, nor grow it
                    // without bound.
                    let mut room = MAX_VALUE_BYTES;
                    for c in value.chars().filter(|c| !c.is_control()) {
                        room = match room.checked_sub(c.len_utf8()) {
                            Some(left) => left,
                            None => break,
                        };
                        out.push(c);
                    }
                }
            }
        }
        out
    }
}

/// Configuration text must be short and free of control characters: it
/// ends up in headers and log lines.
pub fn checked_text(text: &str) -> Result<(), String> {
    if text.len() > MAX_TEXT {
        return Err(format!("is {} bytes long (at most {MAX_TEXT})", text.len()));
    }
    if text.chars().any(char::is_control) {
        return Err("contains control characters (CR, LF, NUL...)".to_string());
    }
    Ok(())
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
    fn absurd_templates_are_refused() {
        let err = Template::parse(&"{requestId}".repeat(5000), EVERY).unwrap_err();
        assert_eq!(err, "is 55000 bytes long (at most 4096)");
        let err = Template::parse(&"{route}-".repeat(500), EVERY).unwrap_err();
        assert_eq!(err, "has 500 placeholders (at most 16)");
        assert!(Template::parse(&"{requestId}".repeat(MAX_PLACEHOLDERS), EVERY).is_ok());
        let err = Template::parse(&"a".repeat(MAX_TEXT + 1), EVERY).unwrap_err();
        assert_eq!(err, "is 4097 bytes long (at most 4096)");
        assert!(Template::parse(&"a".repeat(MAX_TEXT), EVERY).is_ok());
    }

    #[test]
    fn each_value_is_cut_to_a_bound_so_a_render_is_bounded() {
        let t = Template::parse(&"{requestId}".repeat(MAX_PLACEHOLDERS), EVERY).unwrap();
        let huge = "é".repeat(30_000);
        let values = Values {
            request_id: &huge,
            ..Values::default()
        };
        let out = t.render(&values);
        assert_eq!(
            out,
            "é".repeat(MAX_VALUE_BYTES / 2).repeat(MAX_PLACEHOLDERS)
        );
        assert!(out.len() <= MAX_TEXT + MAX_PLACEHOLDERS * MAX_VALUE_BYTES);
        // Cut on a character boundary, never inside one.
        let odd = format!("a{huge}");
        let values = Values {
            request_id: &odd,
            ..Values::default()
        };
        let one = Template::parse("{requestId}", EVERY)
            .unwrap()
            .render(&values);
        assert_eq!(one.len(), MAX_VALUE_BYTES - 1);
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
