//! Reading configuration fields out of a parsed JSON document with the
//! field's path in every error.
//!
//! Hand-walked rather than derived: serde's derived visitors (and the
//! path-tracking wrapper around them) cost about 45 KB of the module, and
//! walking lets a partial object be applied over any base, which is what
//! per-route overrides need.

use std::fmt::Write;

use serde_json::{Map, Value};

use super::duration::{self, Millis};
use super::ConfigError;
use crate::template::{checked_text, Template, Var};

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

/// `items` with `separator` between them (`[&str]::join` costs more code).
pub fn joined(items: &[&str], separator: &str) -> String {
    let mut out = String::new();
    for (i, item) in items.iter().enumerate() {
        if i > 0 {
            out.push_str(separator);
        }
        out.push_str(item);
    }
    out
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
                format!("unknown field (expected one of: {})", joined(known, ", ")),
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
            Some(Value::String(value)) => {
                checked_text(value).map_err(|reason| ConfigError::new(self.path(key), reason))?;
                value.clone_into(target)
            }
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
    // Too large (or negative): out of range, not a non-number.
    let float = number.as_f64()?;
    (float.fract() == 0.0).then_some(if (0.0..1.8e19).contains(&float) {
        float as u64
    } else {
        u64::MAX
    })
}

fn display_number(value: &Value) -> String {
    match value {
        // Through the integer, not Number's Display: that one links a float
        // formatter (about 2 KB of module) for numbers shown as integers.
        Value::Number(n) if n.is_u64() => n.as_u64().unwrap_or_default().to_string(),
        Value::Number(n) if n.is_i64() => n.as_i64().unwrap_or_default().to_string(),
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

/// Most fields one JSON object may have (the largest legitimate one is a
/// local reply's `headers`, itself capped at `MAX_HEADER_RULES`).
const MAX_FIELDS: usize = super::MAX_HEADER_RULES;
/// Longest field name (header names are the longest legitimate ones).
const MAX_KEY: usize = super::MAX_HEADER_NAME;

/// What serde_json's `Value` hides, checked on the raw text: a key given
/// twice in one object (`Value` keeps the last, so an invalid first one
/// would vanish) and numbers a double cannot hold (`1e-400` reads as 0).
/// Any text is walked without panicking; invalid JSON is serde's to report.
pub fn strict(text: &str) -> Result<(), ConfigError> {
    // Every open object's keys so far, in one list; per open object or
    // array whether it is an object, its element index, where its keys start.
    let mut keys: Vec<&str> = Vec::new();
    let mut open: Vec<(bool, usize, usize)> = Vec::new();
    let bytes = text.as_bytes();
    let mut expect_key = false;
    let mut i = 0;
    while let Some(&byte) = bytes.get(i) {
        let start = i;
        let mut token = "";
        let mut problem = "";
        match byte {
            b'{' | b'[' => {
                // Deeper than serde_json's own limit: serde refuses it.
                if open.len() == 128 {
                    return Ok(());
                }
                expect_key = byte == b'{';
                open.push((expect_key, 0, keys.len()));
            }
            b'}' | b']' => {
                if let Some((_, _, from)) = open.pop() {
                    keys.truncate(from);
                }
            }
            b',' => {
                if let Some((object, index, _)) = open.last_mut() {
                    *index += 1;
                    expect_key = *object;
                }
            }
            b'"' => {
                let mut escaped = false;
                i += 1;
                while let Some(&c) = bytes.get(i).filter(|c| **c != b'"') {
                    escaped |= c == b'\\';
                    i += 1 + usize::from(c == b'\\');
                }
                if let (true, Some(&(_, _, from))) = (expect_key, open.last()) {
                    let key = text.get(start + 1..i).unwrap_or_default();
                    let siblings = keys.get(from..).unwrap_or_default();
                    if siblings.contains(&key) {
                        problem = "appears twice (JSON keeps only the last)";
                    }
                    // Escapes would hide a duplicate; no field name needs one.
                    if escaped || key.len() > MAX_KEY || siblings.len() == MAX_FIELDS {
                        problem = "is a field name with escapes, over 256 bytes or past 256 fields";
                    }
                    keys.push(key);
                    expect_key = false;
                }
            }
            b'-' | b'0'..=b'9' => {
                while let Some(b'0'..=b'9' | b'.' | b'e' | b'E' | b'+' | b'-') = bytes.get(i + 1) {
                    i += 1;
                }
                token = text.get(start..=i).unwrap_or_default();
                let nonzero = token
                    .bytes()
                    .take_while(|b| !matches!(b, b'e' | b'E'))
                    .any(|b| matches!(b, b'1'..=b'9'));
                problem = match value(token) {
                    Err(_) => "is not a number meshguard can read",
                    Ok(n) if nonzero && whole_number(&n) == Some(0) => {
                        "is too small to tell from 0"
                    }
                    Ok(_) => "",
                };
            }
            _ => {}
        }
        if !problem.is_empty() {
            let mut field = String::new();
            for (depth, &(object, index, _)) in open.iter().enumerate() {
                if object {
                    // An object's current key is the last before the next
                    // open container's keys start.
                    let end = open.get(depth + 1).map_or(keys.len(), |next| next.2);
                    let key = end.checked_sub(1).and_then(|k| keys.get(k));
                    if !field.is_empty() {
                        field.push('.');
                    }
                    field.push_str(key.copied().unwrap_or_default());
                } else {
                    let _ = write!(field, "[{index}]");
                }
            }
            if field.is_empty() {
                field.push_str("(configuration)");
            }
            let reason = match token {
                "" => problem.to_string(),
                _ => format!("`{token}` {problem}"),
            };
            return Err(ConfigError::new(field, reason));
        }
        i += 1;
    }
    Ok(())
}

/// JSON text as a `Value` (the configuration, and numbers `strict` checks).
pub fn value(text: &str) -> Result<Value, serde_json::Error> {
    serde_json::from_str(text)
}
