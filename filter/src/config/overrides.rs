//! `overrides`: thresholds, breaker and header rules for particular
//! VirtualServices or routes, merged over the top-level configuration.

use super::json::Object;
use super::{Config, ConfigError};
use crate::glob::Glob;

/// Most overrides one configuration may hold (each is matched against a
/// route once per worker, then cached, but the list is still bounded).
pub const MAX_OVERRIDES: usize = 64;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Override {
    /// `namespace/name` of the VirtualService (wildcards allowed).
    pub virtual_service: Option<Glob>,
    /// Envoy route name, Istio's `http[].name` (wildcards allowed).
    pub route: Option<Glob>,
    /// Stable name of the override's own health and breaker state.
    pub scope: String,
    /// Whether it changes detection, ejection or the breaker: then its
    /// routes' traffic is graded on its own, apart from the service's.
    pub has_own_state: bool,
    /// The top-level configuration with this override's sections merged in.
    pub config: Config,
}

impl Override {
    pub fn matches(&self, virtual_service: &str, route: &str) -> bool {
        let vs_ok = self
            .virtual_service
            .as_ref()
            .is_none_or(|g| !virtual_service.is_empty() && g.matches(virtual_service));
        let route_ok = self.route.as_ref().is_none_or(|g| g.matches(route));
        vs_ok && route_ok
    }
}

pub(super) fn parse(list: &[Object], base: &Config) -> Result<Vec<Override>, ConfigError> {
    if list.len() > MAX_OVERRIDES {
        return Err(ConfigError::new(
            "overrides",
            format!(
                "{} overrides, at most {MAX_OVERRIDES} are allowed",
                list.len()
            ),
        ));
    }
    list.iter()
        .enumerate()
        .map(|(index, o)| one(o, index, base))
        .collect()
}

fn one(o: &Object, index: usize, base: &Config) -> Result<Override, ConfigError> {
    o.only(&[
        "virtualService",
        "route",
        "detection",
        "ejection",
        "circuitBreaker",
        "headers",
    ])?;
    let selector = |key: &str| -> Result<Option<Glob>, ConfigError> {
        let mut text = String::new();
        o.string(key, &mut text)?;
        if o.has(key) && text.is_empty() {
            return Err(ConfigError::new(o.path(key), "must not be empty"));
        }
        Ok(o.has(key).then(|| Glob::new(&text)))
    };
    let virtual_service = selector("virtualService")?;
    let route = selector("route")?;
    if virtual_service.is_none() && route.is_none() {
        return Err(ConfigError::new(
            format!("overrides[{index}]"),
            "needs `virtualService`, `route` or both to say where it applies",
        ));
    }
    let mut config = base.clone();
    config.overrides.clear();
    if let Some(section) = o.object("detection")? {
        config.detection.apply(&section)?;
    }
    if let Some(section) = o.object("ejection")? {
        config.ejection.apply(&section)?;
    }
    if let Some(section) = o.object("circuitBreaker")? {
        config.circuit_breaker.apply(&section)?;
    }
    if let Some(section) = o.object("headers")? {
        config.headers.apply(&section)?;
    }
    config.validate(&format!("overrides[{index}]"))?;
    let show = |g: &Option<Glob>| {
        g.as_ref()
            .map_or("*".to_string(), |g| g.as_str().to_string())
    };
    Ok(Override {
        scope: format!("vs={} route={}", show(&virtual_service), show(&route)),
        has_own_state: o.has("detection") || o.has("ejection") || o.has("circuitBreaker"),
        virtual_service,
        route,
        config,
    })
}
