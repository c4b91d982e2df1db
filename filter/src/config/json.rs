//! Reading configuration fields out of a parsed JSON document with the
//! field's path in every error.
//!
//! Hand-walked rather than derived: serde's derived visitors (and the
//! path-tracking wrapper around them) cost about 45 KB of the module, and
//! walking lets a partial object be applied over any base, which is what
//! per-route overrides need.

use serde_json::{Map, Value};

use super::duration::{self, Millis};
use super::ConfigError;
use crate::template::{Template, Var};

/// One JSON object of the configuration and where it sits.
pub struct Object<'a> {
    path: String,
    map: &'a Map<String, Value>,
}

fn kind(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

pub fn join(path: &str, key: &str) -> String {
    if path.is_empty() {
        key.to_string()
    } else {
        format!("{path}.{key}")
    }
}

impl<'a> Object<'a> {
    pub fn root(value: &'a Value) -> Result<Object<'a>, ConfigError> {
        match value {
            Value::Object(map) => Ok(Object {
                path: String::new(),
                map,
            }),
            other => Err(ConfigError::new(
                "(configuration)",
                format!("must be a JSON object, not {}", kind(other)),
            )),
        }
    }

    /// An object found at `path` (an array element, say).
    pub fn at(value: &'a Value, path: String) -> Result<Object<'a>, ConfigError> {
        match value {
            Value::Object(map) => Ok(Object { path, map }),
            other => Err(ConfigError::new(
                path,
                format!("expected an object, not {}", kind(other)),
            )),
        }
    }

    pub fn path(&self, key: &str) -> String {
        join(&self.path, key)
    }

    /// Refuses any key not in `known`: a typo must not silently fall back
    /// to a default.
    pub fn only(&self, known: &[&str]) -> Result<(), ConfigError> {
        match self.map.keys().find(|k| !known.contains(&k.as_str())) {
            Some(unknown) => Err(ConfigError::new(
                self.path(unknown),
                format!("unknown field (expected one of: {})", known.join(", ")),
            )),
            None => Ok(()),
        }
    }

    fn get(&self, key: &str) -> Option<&'a Value> {
        self.map.get(key)
    }

    fn wrong(&self, key: &str, expected: &str, value: &Value) -> ConfigError {
        ConfigError::new(
            self.path(key),
            format!("expected {expected}, not {}", kind(value)),
        )
    }

    pub fn object(&self, key: &str) -> Result<Option<Object<'a>>, ConfigError> {
        match self.get(key) {
            None => Ok(None),
            Some(Value::Object(map)) => Ok(Some(Object {
                path: self.path(key),
                map,
            })),
            Some(other) => Err(self.wrong(key, "an object", other)),
        }
    }

    pub fn array(&self, key: &str) -> Result<Option<&'a Vec<Value>>, ConfigError> {
        match self.get(key) {
            None => Ok(None),
            Some(Value::Array(items)) => Ok(Some(items)),
            Some(other) => Err(self.wrong(key, "an array", other)),
        }
    }

    /// The objects of an array field, each knowing its `key[index]` path.
    pub fn objects(&self, key: &str) -> Result<Option<Vec<Object<'a>>>, ConfigError> {
        let Some(items) = self.array(key)? else {
            return Ok(None);
        };
        let path = self.path(key);
        items
            .iter()
            .enumerate()
            .map(|(index, item)| Object::at(item, format!("{path}[{index}]")))
            .collect::<Result<Vec<_>, _>>()
            .map(Some)
    }

    /// Every `name: value` pair of this object, read by `read`.
    pub fn entries<T>(
        &self,
        mut read: impl FnMut(&str, &Value) -> Result<T, String>,
    ) -> Result<Vec<T>, ConfigError> {
        self.map
            .iter()
            .map(|(name, value)| {
                read(name, value).map_err(|reason| ConfigError::new(self.path(name), reason))
            })
            .collect()
    }

    /// A string list field, each item read by `read`.
    pub fn list<T>(
        &self,
        key: &str,
        mut read: impl FnMut(&str) -> Result<T, String>,
    ) -> Result<Option<Vec<T>>, ConfigError> {
        let Some(items) = self.array(key)? else {
            return Ok(None);
        };
        each(&self.path(key), items, |item| match item {
            Value::String(text) => read(text),
            other => Err(format!("expected a string, not {}", kind(other))),
        })
        .map(Some)
    }

    pub fn template(
        &self,
        key: &str,
        target: &mut Template,
        allowed: &[Var],
    ) -> Result<(), ConfigError> {
        match self.get(key) {
            None => {}
            Some(Value::String(text)) => {
                *target = Template::parse(text, allowed)
                    .map_err(|reason| ConfigError::new(self.path(key), reason))?
            }
            Some(other) => return Err(self.wrong(key, "a string", other)),
        }
        Ok(())
    }

    pub fn has(&self, key: &str) -> bool {
        self.map.contains_key(key)
    }

    pub fn bool(&self, key: &str, target: &mut bool) -> Result<(), ConfigError> {
        match self.get(key) {
            None => {}
            Some(Value::Bool(value)) => *target = *value,
            Some(other) => return Err(self.wrong(key, "true or false", other)),
        }
        Ok(())
    }

    pub fn string(&self, key: &str, target: &mut String) -> Result<(), ConfigError> {
        match self.get(key) {
            None => {}
            Some(Value::String(value)) => value.clone_into(target),
            Some(other) => return Err(self.wrong(key, "a string", other)),
        }
        Ok(())
    }

    pub fn millis(&self, key: &str, target: &mut Millis) -> Result<(), ConfigError> {
        match self.get(key) {
            None => {}
            Some(Value::String(text)) => {
                *target = duration::parse(text)
                    .map_err(|reason| ConfigError::new(self.path(key), reason))?
            }
            Some(other) => {
                return Err(self.wrong(
                    key,
                    "a duration string such as \"30s\" or \"500ms\"",
                    other,
                ))
            }
        }
        Ok(())
    }

    /// A whole number within `min..=max`.
    pub fn number<T: TryFrom<u64>>(
        &self,
        key: &str,
        target: &mut T,
        min: u64,
        max: u64,
    ) -> Result<(), ConfigError> {
        let Some(value) = self.get(key) else {
            return Ok(());
        };
        let number = whole_number(value).ok_or_else(|| self.wrong(key, "a whole number", value))?;
        let fits = (min..=max).contains(&number);
        match T::try_from(number) {
            Ok(number) if fits => {
                *target = number;
                Ok(())
            }
            _ => Err(ConfigError::new(
                self.path(key),
                format!("{} is out of range ({min}-{max})", display_number(value)),
            )),
        }
    }
}

/// Istio hands `pluginConfig` over as a protobuf Struct, where every number
/// is a double: `100.0` must read as 100.
pub fn whole_number(value: &Value) -> Option<u64> {
    let Value::Number(number) = value else {
        return None;
    };
    if let Some(n) = number.as_u64() {
        return Some(n);
    }
    if number.is_i64() {
        // Negative: report it as out of range rather than as a non-number.
        return Some(u64::MAX);
    }
    let float = number.as_f64()?;
    (float.fract() == 0.0 && (0.0..1.8e19).contains(&float)).then_some(float as u64)
}

fn display_number(value: &Value) -> String {
    match value {
        Value::Number(n) if n.is_i64() || n.is_u64() => n.to_string(),
        Value::Number(n) => match n.as_f64() {
            Some(f) if f.fract() == 0.0 && f.abs() < 1e15 => format!("{}", f as i64),
            _ => "the number".to_string(),
        },
        other => kind(other).to_string(),
    }
}

/// Reads each element of an array with `read`, naming `path[index]` in errors.
pub fn each<T>(
    path: &str,
    items: &[Value],
    mut read: impl FnMut(&Value) -> Result<T, String>,
) -> Result<Vec<T>, ConfigError> {
    items
        .iter()
        .enumerate()
        .map(|(index, item)| {
            read(item).map_err(|reason| ConfigError::new(format!("{path}[{index}]"), reason))
        })
        .collect()
}
