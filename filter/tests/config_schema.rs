//! The JSON Schema of the plugin configuration (`istio/meshguard-config.schema.json`)
//! is generated from the typed mirror in `meshguard::config::document`; the
//! filter itself parses by hand (`Config::parse`). These tests keep the three
//! in step:
//!
//! - the committed file is exactly what the types generate
//!   (`MESHGUARD_UPDATE_SCHEMA=1 cargo test -p meshguard --test config_schema`
//!   rewrites it);
//! - every property of the schema, set to an example value taken from the
//!   schema (`examples`, else `default`), is accepted by the parser, and so is
//!   every value of every enumeration;
//! - at every object level the parser refuses an unknown key, naming its
//!   path, exactly where the schema says `additionalProperties: false`, and
//!   the parser's list of known keys is the schema's list of properties;
//! - a document holding every documented `default` parses to the parser's
//!   defaults, so the schema cannot drift;
//! - the configuration reference, `docs/configuration.md`, documents every
//!   field of the schema in a `| field | default | meaning |` table with the
//!   schema's default, names no field the schema lacks, and every JSON
//!   example on that page is accepted by the parser (its first, the full
//!   defaults, parses to the parser's defaults).

use std::collections::BTreeSet;
use std::path::PathBuf;

use meshguard::config::document::{schema, schema_text, SCHEMA_PATH};
use meshguard::config::Config;
use serde_json::{json, Map, Value};

fn committed_path() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("..")
        .join(SCHEMA_PATH)
}

#[test]
fn committed_schema_matches_the_types() {
    let path = committed_path();
    let generated = schema_text();
    if std::env::var_os("MESHGUARD_UPDATE_SCHEMA").is_some_and(|v| v == "1") {
        std::fs::write(&path, &generated).expect("write the schema");
        println!("wrote {}", path.display());
        return;
    }
    let committed = std::fs::read_to_string(&path).unwrap_or_else(|e| {
        panic!(
            "{}: {e}. Generate it with MESHGUARD_UPDATE_SCHEMA=1 cargo test -p meshguard --test config_schema",
            path.display()
        )
    });
    assert!(
        committed == generated,
        "{} is out of date with filter/src/config/document.rs; regenerate it with\n  \
         MESHGUARD_UPDATE_SCHEMA=1 cargo test -p meshguard --test config_schema\nand commit the result",
        path.display()
    );
}

/// One step of a path into the configuration.
#[derive(Debug, Clone)]
enum Step {
    Key(String),
    Index,
}

fn path_text(steps: &[Step]) -> String {
    let mut out = String::new();
    for step in steps {
        match step {
            Step::Key(k) if out.is_empty() => out.push_str(k),
            Step::Key(k) => {
                out.push('.');
                out.push_str(k);
            }
            Step::Index => out.push_str("[0]"),
        }
    }
    out
}

/// Follows `$ref: "#/$defs/Name"`.
fn resolve<'a>(root: &'a Value, s: &'a Value) -> &'a Value {
    match s.get("$ref").and_then(Value::as_str) {
        Some(r) => {
            let name = r.strip_prefix("#/$defs/").expect("local $defs ref");
            resolve(root, &root["$defs"][name])
        }
        None => s,
    }
}

/// The annotations of a property can sit beside its `$ref`: look there first.
fn annotation<'a>(root: &'a Value, s: &'a Value, key: &str) -> Option<&'a Value> {
    s.get(key).or_else(|| resolve(root, s).get(key))
}

/// The values of an enumeration (`enum` or a `oneOf` of `const`s).
fn enum_values(s: &Value) -> Option<Vec<Value>> {
    if let Some(values) = s.get("enum").and_then(Value::as_array) {
        return Some(values.clone());
    }
    let one_of = s.get("oneOf")?.as_array()?;
    one_of.iter().map(|v| v.get("const").cloned()).collect()
}

/// A valid example of `s`: its first `examples`, else its `default`, else
/// one built from its parts. Panics if the schema gives no way to build one
/// (every leaf must document an example or a default).
fn example(root: &Value, s: &Value, path: &[Step]) -> Value {
    if let Some(e) = annotation(root, s, "examples").and_then(|e| e.get(0)) {
        return e.clone();
    }
    if let Some(d) = annotation(root, s, "default") {
        return d.clone();
    }
    let r = resolve(root, s);
    if let Some(values) = enum_values(r) {
        return values[0].clone();
    }
    if r.get("properties").is_some() {
        return base_object(root, r, None, None);
    }
    if let Some(items) = r.get("items") {
        let mut p = path.to_vec();
        p.push(Step::Index);
        return json!([example(root, items, &p)]);
    }
    panic!(
        "schema at `{}` has neither examples nor default: document one",
        path_text(path)
    );
}

/// An object of schema `r` to put `key` (with `value`) into: the first of
/// its examples that already has that value there (a `remove` rule for
/// `op: "remove"`), else the first that has `key` (a `rename` rule for
/// `to`), else its first example, else its required properties.
fn base_object(root: &Value, r: &Value, key: Option<&str>, value: Option<&Value>) -> Value {
    if let Some(examples) = r.get("examples").and_then(Value::as_array) {
        let same = key
            .zip(value)
            .and_then(|(k, v)| examples.iter().find(|e| e.get(k) == Some(v)));
        let with_key = key.and_then(|k| examples.iter().find(|e| e.get(k).is_some()));
        if let Some(e) = same.or(with_key).or(examples.first()) {
            return e.clone();
        }
    }
    let mut map = Map::new();
    for req in r
        .get("required")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
    {
        let name = req.as_str().expect("required names are strings");
        let prop = &r["properties"][name];
        map.insert(name.to_string(), example(root, prop, &[]));
    }
    Value::Object(map)
}

/// A whole configuration with `value` at `path` and valid surroundings.
fn embed(root: &Value, s: &Value, path: &[Step], value: Value) -> Value {
    let Some((first, rest)) = path.split_first() else {
        return value;
    };
    let r = resolve(root, s);
    match first {
        Step::Key(k) => {
            let mut base = base_object(root, r, Some(k), rest.is_empty().then_some(&value));
            let child = &r["properties"][k.as_str()];
            base[k.as_str()] = embed(root, child, rest, value);
            base
        }
        Step::Index => json!([embed(root, &r["items"], rest, value)]),
    }
}

/// Every property (path, schema) and every object level (path, resolved
/// schema) under `s`.
fn walk<'a>(
    root: &'a Value,
    s: &'a Value,
    path: &mut Vec<Step>,
    props: &mut Vec<(Vec<Step>, &'a Value)>,
    objects: &mut Vec<(Vec<Step>, &'a Value)>,
) {
    let r = resolve(root, s);
    if let Some(properties) = r.get("properties").and_then(Value::as_object) {
        objects.push((path.clone(), r));
        for (k, p) in properties {
            path.push(Step::Key(k.clone()));
            props.push((path.clone(), p));
            walk(root, p, path, props, objects);
            path.pop();
        }
    } else if let Some(items) = r.get("items") {
        path.push(Step::Index);
        walk(root, items, path, props, objects);
        path.pop();
    }
}

fn parse(doc: &Value) -> Result<Config, meshguard::config::ConfigError> {
    Config::parse(doc.to_string().as_bytes())
}

#[test]
fn every_schema_property_is_accepted_by_the_parser() {
    let root = schema();
    let (mut props, mut objects) = (Vec::new(), Vec::new());
    walk(&root, &root, &mut Vec::new(), &mut props, &mut objects);
    assert!(props.len() > 60, "walked only {} properties", props.len());
    let mut failures = Vec::new();
    let mut tried = 0;
    for (path, prop) in &props {
        let mut values = vec![example(&root, prop, path)];
        // Every value of an enumeration, and of a list of one.
        let r = resolve(&root, prop);
        if let Some(all) = enum_values(r) {
            values.extend(all);
        } else if let Some(all) = r
            .get("items")
            .map(|i| resolve(&root, i))
            .and_then(enum_values)
        {
            values.extend(all.into_iter().map(|v| json!([v])));
        }
        for value in values {
            let doc = embed(&root, &root, path, value);
            tried += 1;
            if let Err(e) = parse(&doc) {
                failures.push(format!("{}: {doc} -> {e}", path_text(path)));
            }
        }
    }
    assert!(
        failures.is_empty(),
        "the parser refuses {} of {tried} documents the schema describes:\n{}",
        failures.len(),
        failures.join("\n")
    );
}

#[test]
fn parser_and_schema_refuse_the_same_unknown_fields() {
    let root = schema();
    let (mut props, mut objects) = (Vec::new(), Vec::new());
    walk(&root, &root, &mut Vec::new(), &mut props, &mut objects);
    assert!(objects.len() > 15, "walked only {} objects", objects.len());
    let mut failures = Vec::new();
    for (path, r) in &objects {
        let closed = r.get("additionalProperties") == Some(&Value::Bool(false));
        if !closed {
            failures.push(format!(
                "`{}` is open in the schema (additionalProperties is not false)",
                path_text(path)
            ));
            continue;
        }
        let mut object = base_object(&root, r, None, None);
        object["bogusField"] = json!(true);
        let doc = embed(&root, &root, path, object);
        let mut expected_path = path.clone();
        expected_path.push(Step::Key("bogusField".to_string()));
        let expected_path = path_text(&expected_path);
        match parse(&doc) {
            Ok(_) => failures.push(format!("parser accepts {expected_path}: {doc}")),
            Err(e) if e.field != expected_path => failures.push(format!(
                "{expected_path}: parser names `{}` instead: {e}",
                e.field
            )),
            Err(e) => {
                // "unknown field (expected one of: a, b, c)": the parser's
                // known keys must be the schema's properties.
                let known: BTreeSet<String> = e
                    .reason
                    .split_once("expected one of: ")
                    .map(|(_, list)| {
                        list.trim_end_matches(')')
                            .split(", ")
                            .map(str::to_string)
                            .collect()
                    })
                    .unwrap_or_default();
                let in_schema: BTreeSet<String> = r["properties"]
                    .as_object()
                    .expect("object schema")
                    .keys()
                    .cloned()
                    .collect();
                // Request rules: the parser knows `when.status` only to
                // refuse it with a better message (checked below).
                let request_when = path_text(path).ends_with("request[0].when");
                let expected: BTreeSet<String> = if request_when {
                    in_schema
                        .iter()
                        .cloned()
                        .chain(["status".to_string()])
                        .collect()
                } else {
                    in_schema.clone()
                };
                if known != expected {
                    failures.push(format!(
                        "`{}`: parser knows {known:?}, schema has {in_schema:?}",
                        path_text(path)
                    ));
                }
            }
        }
    }
    let doc = json!({"headers": {"request": [{"op": "remove", "name": "x-a", "when": {"status": ["5xx"]}}]}});
    match parse(&doc) {
        Err(e) if e.reason.contains("only response rules") => {}
        other => failures.push(format!("request rules must refuse when.status: {other:?}")),
    }
    // Maps (additionalProperties is a schema) take any key: localReply.headers.
    let doc = json!({"circuitBreaker": {"localReply": {"headers": {"x-anything": "v"}}}});
    if let Err(e) = parse(&doc) {
        failures.push(format!("localReply.headers is a map but {doc} -> {e}"));
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

/// Every `default` the schema documents, at every object level outside
/// `overrides` (which inherit from the top level instead).
fn defaults_document(root: &Value, s: &Value) -> Value {
    let r = resolve(root, s);
    let mut map = Map::new();
    for (k, p) in r["properties"].as_object().expect("object schema") {
        if k == "overrides" {
            continue;
        }
        if let Some(d) = annotation(root, p, "default") {
            map.insert(k.clone(), d.clone());
        } else if resolve(root, p).get("properties").is_some() {
            map.insert(k.clone(), defaults_document(root, p));
        }
    }
    Value::Object(map)
}

#[test]
fn documented_defaults_are_the_parsers_defaults() {
    let root = schema();
    let doc = defaults_document(&root, &root);
    let text = doc.to_string();
    for needle in [
        "windowSize",
        "baseEjectionTime",
        "maxServices",
        "openDuration",
        "allowedCidrs",
    ] {
        assert!(text.contains(needle), "no default for {needle}: {text}");
    }
    let parsed = parse(&doc).unwrap_or_else(|e| panic!("{doc} -> {e}"));
    assert_eq!(
        parsed,
        Config::default(),
        "a document of the schema's defaults must parse to the parser's defaults: {doc}"
    );
}

#[test]
fn typed_document_reads_what_the_parser_reads() {
    // Examples of docs/configuration.md, through both readings.
    let docs = [
        json!({}),
        json!({"detection": {"windowSize": 100.0, "failureStatusCodes": ["5xx", 429, "500-504"]},
               "steering": {"encoding": "base64", "header": "x-session"},
               "overrides": [{"virtualService": "shop/payments", "detection": {"unhealthyFailurePercent": 10, "degradedFailurePercent": 5, "recoveredFailurePercent": 1}}]}),
    ];
    for doc in docs {
        parse(&doc).unwrap_or_else(|e| panic!("parser: {doc} -> {e}"));
        serde_json::from_value::<meshguard::config::document::ConfigDocument>(doc.clone())
            .unwrap_or_else(|e| panic!("document: {doc} -> {e}"));
    }
    let typo = json!({"detection": {"windowSze": 10}});
    assert!(parse(&typo).is_err());
    assert!(serde_json::from_value::<meshguard::config::document::ConfigDocument>(typo).is_err());
}

const REFERENCE: &str = "docs/configuration.md";

fn reference_text() -> String {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("..")
        .join(REFERENCE);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// Every field of the schema by its path (`detection.windowSize`,
/// `headers.request[].when.status`), with its documented default and whether
/// it is a leaf. Below `overrides[]` only the override's own fields: its
/// sections are partial copies of the top-level ones.
fn schema_fields(
    root: &Value,
    s: &Value,
    prefix: &str,
    out: &mut std::collections::BTreeMap<String, (Option<Value>, bool)>,
) {
    let r = resolve(root, s);
    for (k, p) in r["properties"].as_object().expect("object schema") {
        let path = if prefix.is_empty() {
            k.clone()
        } else {
            format!("{prefix}.{k}")
        };
        let pr = resolve(root, p);
        let default = annotation(root, p, "default").cloned();
        let object = pr.get("properties").is_some();
        let items = pr
            .get("items")
            .map(|i| resolve(root, i))
            .filter(|i| i.get("properties").is_some());
        out.insert(path.clone(), (default, !object && items.is_none()));
        if prefix.starts_with("overrides[]") {
            continue;
        }
        if object {
            schema_fields(root, p, &path, out);
        } else if let Some(items) = pr.get("items").filter(|_| items.is_some()) {
            schema_fields(root, items, &format!("{path}[]"), out);
        }
    }
}

/// One row of a `| field | default | meaning |` table.
#[derive(Debug)]
struct Row {
    line: usize,
    sections: Vec<String>,
    field: String,
    default: String,
}

/// The backticked spans of a line, in order.
fn code_spans(line: &str) -> Vec<&str> {
    line.split('`').skip(1).step_by(2).collect()
}

fn is_field_path(s: &str) -> bool {
    !s.is_empty()
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '[' | ']'))
}

/// The rows of the reference's field tables. A table belongs to the
/// configuration object(s) its heading names in backticks, or to the
/// top level when the heading names none.
fn reference_rows(text: &str) -> Vec<Row> {
    let mut rows = Vec::new();
    let mut sections = vec![String::new()];
    let mut in_code = false;
    let mut in_table = false;
    for (i, line) in text.lines().enumerate() {
        let t = line.trim();
        if t.starts_with("```") {
            in_code = !in_code;
            continue;
        }
        if in_code {
            continue;
        }
        if t.starts_with('#') {
            let named: Vec<String> = code_spans(t)
                .into_iter()
                .filter(|s| is_field_path(s))
                .map(String::from)
                .collect();
            sections = if named.is_empty() {
                vec![String::new()]
            } else {
                named
            };
            in_table = false;
            continue;
        }
        if !t.starts_with('|') {
            in_table = false;
            continue;
        }
        let cells: Vec<&str> = t.trim_matches('|').split('|').map(str::trim).collect();
        if cells.len() >= 3 && cells[..3] == ["field", "default", "meaning"] {
            in_table = true;
            continue;
        }
        if !in_table || cells[0].starts_with("---") {
            continue;
        }
        let field = cells[0]
            .strip_prefix('`')
            .and_then(|c| c.strip_suffix('`'))
            .filter(|c| is_field_path(c))
            .unwrap_or_else(|| {
                panic!(
                    "{REFERENCE}:{}: a field row names one field in backticks: {t}",
                    i + 1
                )
            });
        rows.push(Row {
            line: i + 1,
            sections: sections.clone(),
            field: field.to_string(),
            default: cells.get(1).copied().unwrap_or("").to_string(),
        });
    }
    rows
}

/// Whether a table's default cell says `default`: one backticked span
/// holding its JSON, or, for a string, the string itself.
fn default_matches(cell: &str, default: &Value) -> bool {
    let Some(inner) = cell.strip_prefix('`').and_then(|c| c.strip_suffix('`')) else {
        return false;
    };
    if inner.contains('`') {
        return false;
    }
    serde_json::from_str::<Value>(inner).is_ok_and(|v| &v == default)
        || default.as_str() == Some(inner)
}

#[test]
fn the_reference_documents_every_field_with_its_default() {
    let root = schema();
    let mut fields = std::collections::BTreeMap::new();
    schema_fields(&root, &root, "", &mut fields);
    let text = reference_text();
    let rows = reference_rows(&text);
    assert!(
        rows.len() > 50,
        "too few field rows in {REFERENCE}: {rows:?}"
    );
    let mut problems = Vec::new();
    let mut documented = BTreeSet::new();
    for row in &rows {
        let mut known = false;
        for section in &row.sections {
            let path = if section.is_empty() {
                row.field.clone()
            } else {
                format!("{section}.{}", row.field)
            };
            let Some((default, _)) = fields.get(&path) else {
                continue;
            };
            known = true;
            if !documented.insert(path.clone()) {
                problems.push(format!("{REFERENCE}:{}: {path} documented twice", row.line));
            }
            match default {
                Some(d) if !default_matches(&row.default, d) => problems.push(format!(
                    "{REFERENCE}:{}: {path}: default cell {:?}, the schema's default is `{d}`",
                    row.line, row.default
                )),
                None if !row.default.is_empty() => problems.push(format!(
                    "{REFERENCE}:{}: {path}: the schema has no default, the cell says {:?}",
                    row.line, row.default
                )),
                _ => {}
            }
        }
        if !known {
            problems.push(format!(
                "{REFERENCE}:{}: `{}` under {:?} is no field of the schema",
                row.line, row.field, row.sections
            ));
        }
    }
    for (path, (_, leaf)) in &fields {
        if *leaf && !documented.contains(path) {
            problems.push(format!("{REFERENCE}: no row for {path}"));
        }
    }
    assert!(problems.is_empty(), "{}", problems.join("\n"));
}

#[test]
fn the_reference_examples_are_accepted() {
    let text = reference_text();
    let mut blocks = Vec::new();
    let mut current: Option<(usize, String)> = None;
    for (i, line) in text.lines().enumerate() {
        let t = line.trim_start();
        match current.as_mut() {
            Some(_) if t.starts_with("```") => blocks.push(current.take().expect("open block")),
            Some((_, body)) => {
                body.push_str(line);
                body.push('\n');
            }
            None if t == "```json" => current = Some((i + 1, String::new())),
            None => {}
        }
    }
    assert!(current.is_none(), "{REFERENCE}: unclosed code block");
    assert!(blocks.len() >= 4, "too few JSON examples in {REFERENCE}");
    for (line, body) in &blocks {
        Config::parse(body.as_bytes())
            .unwrap_or_else(|e| panic!("{REFERENCE}:{line}: example refused: {e}\n{body}"));
    }
    let (line, defaults) = &blocks[0];
    assert_eq!(
        Config::parse(defaults.as_bytes()).expect("parsed above"),
        Config::default(),
        "{REFERENCE}:{line}: the first example must spell out the parser's defaults"
    );
}
