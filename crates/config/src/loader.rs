//! The loader: TOML/YAML files merged in order, then dotted overrides, then checked
//! against typed sections, with errors a newcomer can act on.
use serde::de::DeserializeOwned;
use serde::Serialize;
use serde_json::{Map, Value};
use std::path::{Path, PathBuf};

/// A configuration problem; every one exits with code 2.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// A file named on the command line does not exist or cannot be read.
    #[error("config file {path}: {why}")]
    File {
        /// The file.
        path: PathBuf,
        /// What went wrong.
        why: String,
    },
    /// A key that no section has.
    #[error("unknown key `{key}`; valid keys of {section}: {valid}{hint}")]
    UnknownKey {
        /// The full dotted key.
        key: String,
        /// The section, e.g. `[trainer]`.
        section: String,
        /// The keys the section has.
        valid: String,
        /// ", did you mean `...`?" or nothing.
        hint: String,
    },
    /// A value of the wrong type.
    #[error("`{key}` = {value}: expected {expected}")]
    WrongType {
        /// The full dotted key.
        key: String,
        /// The value given.
        value: String,
        /// The type expected.
        expected: String,
    },
    /// A value of the right type outside the range the option allows.
    #[error("`{key}` = {value}: {why}")]
    OutOfRange {
        /// The full dotted key.
        key: String,
        /// The value given.
        value: String,
        /// What the option allows.
        why: String,
    },
    /// Anything else serde or the command line refuses.
    #[error("{0}")]
    Invalid(String),
}

/// Reads a TOML or YAML file (by extension; TOML otherwise) into a JSON tree.
pub fn read_file(path: &Path) -> Result<Value, ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|e| ConfigError::File {
        path: path.to_owned(),
        why: if e.kind() == std::io::ErrorKind::NotFound { "file not found".into() } else { e.to_string() },
    })?;
    parse_text(path, &text)
}

/// Parses a config file's text, TOML or YAML by `path`'s extension; errors name `path`.
pub fn parse_text(path: &Path, text: &str) -> Result<Value, ConfigError> {
    let bad = |why: String| ConfigError::File { path: path.to_owned(), why };
    match path.extension().and_then(|e| e.to_str()) {
        Some("yaml" | "yml") => serde_norway::from_str(text).map_err(|e| bad(e.to_string())),
        _ => toml::from_str::<toml::Table>(text)
            .map(|t| toml_to_json(toml::Value::Table(t)))
            .map_err(|e| bad(e.to_string())),
    }
}

/// A TOML value as JSON. JSON has no NaN or infinity: such floats become their text, so
/// that the typed sections refuse them by key instead of reading them as absent.
fn toml_to_json(v: toml::Value) -> Value {
    match v {
        toml::Value::String(s) => Value::String(s),
        toml::Value::Integer(i) => Value::from(i),
        toml::Value::Float(f) => {
            serde_json::Number::from_f64(f).map_or_else(|| Value::String(f.to_string()), Value::Number)
        }
        toml::Value::Boolean(b) => Value::Bool(b),
        toml::Value::Datetime(d) => Value::String(d.to_string()),
        toml::Value::Array(a) => Value::Array(a.into_iter().map(toml_to_json).collect()),
        toml::Value::Table(t) => Value::Object(t.into_iter().map(|(k, v)| (k, toml_to_json(v))).collect()),
    }
}

/// Merges `top` into `base`: tables merge key by key, anything else replaces.
pub fn merge(base: &mut Value, top: Value) {
    match (base, top) {
        (Value::Object(b), Value::Object(t)) => {
            for (k, v) in t {
                match b.get_mut(&k) {
                    Some(existing) => merge(existing, v),
                    None => {
                        b.insert(k, v);
                    }
                }
            }
        }
        (b, t) => *b = t,
    }
}

/// Parses an override's value as a TOML value (number, bool, array, inline table,
/// quoted string), falling back to the raw text as a string.
pub fn parse_value(raw: &str) -> Value {
    toml::from_str::<toml::Table>(&format!("v = {raw}"))
        .ok()
        .and_then(|mut t| t.remove("v"))
        .map(toml_to_json)
        .unwrap_or_else(|| Value::String(raw.to_owned()))
}

/// Sets `key` (dotted) to `value` in `tree`, creating tables on the way.
pub fn set(tree: &mut Value, key: &str, value: Value) -> Result<(), ConfigError> {
    let mut node = tree;
    let parts: Vec<&str> = key.split('.').collect();
    for (i, part) in parts.iter().enumerate() {
        if part.is_empty() {
            return Err(ConfigError::Invalid(format!("`--{key}`: empty key component")));
        }
        if !node.is_object() {
            if node.is_null() {
                *node = Value::Object(Map::new());
            } else {
                return Err(ConfigError::Invalid(format!(
                    "`--{key}`: `{}` is a value, not a section",
                    parts[..i].join(".")
                )));
            }
        }
        let Value::Object(map) = node else { unreachable!("made an object above") };
        if i + 1 == parts.len() {
            map.insert((*part).to_owned(), value);
            return Ok(());
        }
        node = map.entry((*part).to_owned()).or_insert(Value::Object(Map::new()));
    }
    Ok(())
}

/// Turns the merged tree into typed sections; errors name the key.
pub fn resolve<T: DeserializeOwned + Serialize + Default>(tree: Value) -> Result<T, ConfigError> {
    let defaults = serde_json::to_value(T::default()).unwrap_or(Value::Null);
    serde_path_to_error::deserialize::<_, T>(tree.clone()).map_err(|e| {
        let path = e.path().to_string();
        let message = e.inner().to_string();
        explain(&path, &message, &tree, &defaults)
    })
}

fn explain(path: &str, message: &str, tree: &Value, defaults: &Value) -> ConfigError {
    if let Some(rest) = message.strip_prefix("unknown field `") {
        let name = rest.split('`').next().unwrap_or_default();
        // The path ends with the unknown key itself; its section is what comes before.
        let section_path = match path.strip_suffix(name) {
            Some(rest) => rest.trim_end_matches('.').to_owned(),
            None if path == "." => String::new(),
            None => path.to_owned(),
        };
        let key = if section_path.is_empty() { name.to_owned() } else { format!("{section_path}.{name}") };
        let valid: Vec<String> = match message.split_once("expected one of ") {
            Some((_, list)) => list.split(", ").map(|s| s.trim_matches('`').to_owned()).collect(),
            None => message
                .split_once("expected `")
                .map(|(_, one)| vec![one.trim_end_matches('`').to_owned()])
                .unwrap_or_default(),
        };
        let nearest = valid
            .iter()
            .map(|v| (strsim::damerau_levenshtein(name, v), v))
            .filter(|(d, v)| *d <= 3.max(v.len() / 3))
            .min_by_key(|(d, _)| *d)
            .map(|(_, v)| {
                format!(
                    "; did you mean `{}`?",
                    if section_path.is_empty() { v.clone() } else { format!("{section_path}.{v}") }
                )
            })
            .unwrap_or_default();
        return ConfigError::UnknownKey {
            key,
            section: if section_path.is_empty() {
                "the top level".into()
            } else {
                format!("[{section_path}]")
            },
            valid: valid.join(", "),
            hint: nearest,
        };
    }
    if let Some(rest) = message.strip_prefix("invalid type: ") {
        let expected = plain_type(rest.split_once(", expected ").map_or(rest, |(_, e)| e));
        return ConfigError::WrongType { key: path.to_owned(), value: lookup(tree, path), expected };
    }
    if let Some((_, ty)) =
        message.strip_prefix("invalid value: integer ").and_then(|m| m.split_once(", expected "))
    {
        return ConfigError::WrongType {
            key: path.to_owned(),
            value: lookup(tree, path),
            expected: plain_type(ty),
        };
    }
    if message.starts_with("invalid value: ") || message.starts_with("data did not match any variant") {
        let expected = match lookup(defaults, path) {
            d if d == "null" => message.to_owned(),
            d => format!("a value like the default {d}"),
        };
        return ConfigError::WrongType { key: path.to_owned(), value: lookup(tree, path), expected };
    }
    ConfigError::Invalid(if path == "." { message.to_owned() } else { format!("`{path}`: {message}") })
}

/// serde's Rust type names in words a config file's author knows.
fn plain_type(expected: &str) -> String {
    match expected {
        "usize" | "u64" | "u32" => "a whole number, 0 or more".into(),
        "u16" => "a whole number from 0 to 65535".into(),
        "u8" => "a whole number from 0 to 255".into(),
        "i64" | "i32" => "a whole number".into(),
        "f64" | "f32" => "a number".into(),
        "a boolean" => "true or false".into(),
        other => other.into(),
    }
}

/// The value at a dotted path (`hosts[0].port`, as serde_path_to_error writes them), as
/// JSON text.
fn lookup(tree: &Value, path: &str) -> String {
    let mut node = tree;
    for part in path.split(['.', '[']) {
        node = match node {
            Value::Object(m) => m.get(part).unwrap_or(&Value::Null),
            Value::Array(a) => part
                .trim_end_matches(']')
                .parse::<usize>()
                .ok()
                .and_then(|i| a.get(i))
                .unwrap_or(&Value::Null),
            _ => &Value::Null,
        };
    }
    node.to_string()
}

/// The typed configuration as TOML (what `--print_config` prints and `config.toml` holds).
pub fn to_toml<T: Serialize>(config: &T) -> Result<String, ConfigError> {
    toml::to_string(config)
        .map_err(|e| ConfigError::Invalid(format!("cannot write the configuration as TOML: {e}")))
}

/// Defaults, then each file's tree in order (later files win), then each dotted
/// override, resolved into the typed sections of `T`.
pub fn load<T: DeserializeOwned + Serialize + Default>(
    defaults: &T,
    files: Vec<Value>,
    overrides: &[(String, String)],
) -> Result<T, ConfigError> {
    let mut tree = serde_json::to_value(defaults).map_err(|e| ConfigError::Invalid(e.to_string()))?;
    for file in files {
        merge(&mut tree, file);
    }
    for (key, raw) in overrides {
        set(&mut tree, key, parse_value(raw))?;
    }
    within_toml(&tree, "")?;
    resolve(tree)
}

/// TOML's integers are i64: a larger whole number (YAML reads up to u64) could be loaded
/// but not printed back as `--print_config` and `config.toml`, so it is refused here.
fn within_toml(v: &Value, at: &str) -> Result<(), ConfigError> {
    match v {
        Value::Number(n) if n.is_u64() && n.as_i64().is_none() => Err(ConfigError::OutOfRange {
            key: at.to_owned(),
            value: n.to_string(),
            why: format!("must be at most {} (the largest whole number a config file holds)", i64::MAX),
        }),
        Value::Object(m) => m.iter().try_for_each(|(k, v)| {
            within_toml(v, &if at.is_empty() { k.clone() } else { format!("{at}.{k}") })
        }),
        Value::Array(a) => a.iter().enumerate().try_for_each(|(i, v)| within_toml(v, &format!("{at}[{i}]"))),
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn values_parse_as_toml_or_fall_back_to_text() {
        assert_eq!(parse_value("20"), json!(20));
        assert_eq!(parse_value("3e-4"), json!(3e-4));
        assert_eq!(parse_value("true"), json!(true));
        assert_eq!(parse_value("[0.9, 0.99]"), json!([0.9, 0.99]));
        assert_eq!(parse_value("runs/x"), json!("runs/x"));
        assert_eq!(parse_value("\"quoted\""), json!("quoted"));
    }

    #[test]
    fn later_sources_win_and_tables_merge() {
        let mut tree = json!({"trainer": {"max_epochs": 5, "seed": 1}, "model": {"hidden": 64}});
        merge(&mut tree, json!({"trainer": {"max_epochs": 9}}));
        set(&mut tree, "model.hidden", json!(512)).expect("set");
        set(&mut tree, "optimizer.lr", json!(0.1)).expect("set");
        assert_eq!(
            tree,
            json!({"trainer": {"max_epochs": 9, "seed": 1}, "model": {"hidden": 512}, "optimizer": {"lr": 0.1}})
        );
        assert!(set(&mut tree, "trainer.max_epochs.x", json!(1)).is_err());
    }

    #[test]
    fn whole_numbers_beyond_what_toml_holds_are_refused_by_key() {
        // Found by review: YAML reads u64 values TOML cannot print, so --print_config
        // and config.toml failed with a message naming no key.
        let tree =
            parse_text(Path::new("x.yaml"), "trainer:\n  max_steps: 9223372036854775808\n").expect("yaml");
        let defaults = crate::run::RunConfig::<Value, Value>::default();
        let e = load(&defaults, vec![tree], &[]).unwrap_err().to_string();
        assert!(e.contains("`trainer.max_steps` = 9223372036854775808"), "{e}");
    }
}
