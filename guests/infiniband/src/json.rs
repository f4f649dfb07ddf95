//! Small JSON helpers over the SDK's parser (keys in order, numbers as text):
//! field-by-field readers whose errors name the field by its path
//! (`pools[1].selectors.vendors[0]`, which serde's derived errors do only for unknown
//! fields), and a writer for the allocation's info variable (strings escaped by the
//! SDK's writer). Hand-written rather than serde_json because the guest must stay small
//! (float parsing and formatting alone would cost more than all of this).

use wdp_guest_sdk::types::Error;

pub use wdp_guest_sdk::json::write_str as write_string;

pub use wdp_guest_sdk::json::{Value, parse};

/// A configuration error about the field at `path`.
pub fn invalid(path: &str, why: &str) -> Error {
    Error::InvalidConfig(format!(
        "infiniband configuration: field `{path}`: {why} (see guests/infiniband/README.md)"
    ))
}

/// The path of `key` inside the object at `parent` (`""` is the top level).
pub fn child(parent: &str, key: &str) -> String {
    if parent.is_empty() {
        key.to_string()
    } else {
        format!("{parent}.{key}")
    }
}

/// The path of element `i` of the array at `parent`.
pub fn element(parent: &str, i: usize) -> String {
    format!("{parent}[{i}]")
}

/// A JSON object whose keys are checked against the fields a section knows.
pub struct Object<'a> {
    path: String,
    members: &'a [(String, Value)],
}

impl<'a> Object<'a> {
    /// The object at `path`, refusing other JSON types and any key not in `known`
    /// (a typo must not silently fall back to a default).
    pub fn new(value: &'a Value, path: &str, known: &[&str]) -> Result<Object<'a>, Error> {
        let Value::Object(members) = value else {
            let what = if path.is_empty() {
                "the configuration"
            } else {
                path
            };
            return Err(Error::InvalidConfig(format!(
                "infiniband configuration: `{what}` must be a JSON object, not {}",
                kind(value)
            )));
        };
        if let Some((unknown, _)) = members.iter().find(|(k, _)| !known.contains(&k.as_str())) {
            return Err(invalid(
                &child(path, unknown),
                &format!("unknown field; expected one of: {}", known.join(", ")),
            ));
        }
        Ok(Object {
            path: path.to_string(),
            members,
        })
    }

    /// The value of `key` and its path, when present (JSON `null` counts as absent).
    pub fn get(&self, key: &str) -> Option<(&'a Value, String)> {
        self.members
            .iter()
            .find(|(k, v)| k == key && *v != Value::Null)
            .map(|(_, v)| (v, child(&self.path, key)))
    }
}

/// A short name of a value's JSON type, for error messages.
pub fn kind(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

pub fn string<'v>(value: &'v Value, path: &str) -> Result<&'v str, Error> {
    match value {
        Value::String(s) => Ok(s),
        _ => Err(invalid(
            path,
            &format!("expected a string, found {}", kind(value)),
        )),
    }
}

/// A whole number within `min..=max`.
pub fn integer(value: &Value, path: &str, min: u64, max: u64) -> Result<u64, Error> {
    let found = match value {
        Value::Number(text) => match text.parse::<u64>() {
            Ok(n) if (min..=max).contains(&n) => return Ok(n),
            _ => text.as_str(),
        },
        _ => kind(value),
    };
    Err(invalid(
        path,
        &format!("expected a whole number from {min} to {max}, found {found}"),
    ))
}

/// An array of strings, each with its path.
pub fn strings<'v>(value: &'v Value, path: &str) -> Result<Vec<(&'v str, String)>, Error> {
    let Value::Array(items) = value else {
        return Err(invalid(
            path,
            &format!("expected an array of strings, found {}", kind(value)),
        ));
    };
    items
        .iter()
        .enumerate()
        .map(|(i, item)| {
            let at = element(path, i);
            string(item, &at).map(|s| (s, at))
        })
        .collect()
}

/// Appends a JSON object whose values are all strings, in the given order.
pub fn write_string_map(out: &mut String, entries: &[(&str, String)]) {
    out.push('{');
    for (i, (key, value)) in entries.iter().enumerate() {
        if i > 0 {
            out.push(',');
        }
        write_string(out, key);
        out.push(':');
        write_string(out, value);
    }
    out.push('}');
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn strings_are_escaped() {
        let mut out = String::new();
        write_string(&mut out, "a\"b\\c\nd\u{1}é");
        assert_eq!(out, r#""a\"b\\c\nd\u0001é""#);
        let parsed: serde_json::Value = serde_json::from_str(&out).unwrap();
        assert_eq!(parsed, "a\"b\\c\nd\u{1}é");
        assert_eq!(parse(&out), Ok(Value::String("a\"b\\c\nd\u{1}é".into())));
    }

    #[test]
    fn parses_what_serde_json_parses() {
        let text = r#" {"a": [1, -2, 3.5e1, true, false, null],
            "b": {"c": "\u00e9\ud83d\ude00\t\/"}, "d": {}, "e": []} "#;
        let v = parse(text).unwrap();
        let Value::Object(members) = &v else {
            panic!("{v:?}")
        };
        assert_eq!(members.len(), 4);
        assert_eq!(
            members[0].1,
            Value::Array(vec![
                Value::Number("1".into()),
                Value::Number("-2".into()),
                Value::Number("3.5e1".into()),
                Value::Bool(true),
                Value::Bool(false),
                Value::Null
            ])
        );
        assert_eq!(
            members[1].1,
            Value::Object(vec![("c".into(), Value::String("é😀\t/".into()))])
        );
    }

    #[test]
    fn refuses_malformed_text_with_a_position() {
        // The parser is the SDK's (its own tests pin the messages); the guest relies on
        // every refusal saying where, and on deep nesting being refused.
        for text in [
            "",
            "{",
            "{\"a\" 1}",
            "[1 2]",
            "\"abc",
            "tru",
            "{} x",
            "{\"a\":1,\"a\":2}",
        ] {
            let e = parse(text).expect_err(text);
            assert!(e.contains("line"), "{text:?}: {e}");
        }
        assert!(parse(&"[".repeat(100)).is_err());
    }

    #[test]
    fn string_maps_are_objects() {
        let mut out = String::new();
        write_string_map(&mut out, &[("b", "1".into()), ("a", "x\"".into())]);
        assert_eq!(out, r#"{"b":"1","a":"x\""}"#);
    }

    #[test]
    fn objects_refuse_unknown_keys_by_path() {
        let v: Value = parse(r#"{"a":1,"zz":2}"#).unwrap();
        let Err(Error::InvalidConfig(m)) = Object::new(&v, "pools[0]", &["a"]) else {
            panic!("unknown key accepted");
        };
        assert!(m.contains("`pools[0].zz`"), "{m}");
        let o = Object::new(&v, "", &["a", "zz"]).unwrap();
        assert_eq!(o.get("a").map(|(_, p)| p), Some("a".to_string()));
        assert!(o.get("b").is_none());
    }

    #[test]
    fn typed_readers_name_the_path() {
        let v: Value = parse(r#"["x", 3]"#).unwrap();
        let Err(Error::InvalidConfig(m)) = strings(&v, "s") else {
            panic!("number accepted as string");
        };
        assert!(m.contains("`s[1]`"), "{m}");
        let number = |n: &str| Value::Number(n.into());
        assert!(integer(&number("5"), "n", 1, 4).is_err());
        assert_eq!(integer(&number("4"), "n", 1, 4).ok(), Some(4));
        assert!(integer(&number("-1"), "n", 0, 4).is_err());
        assert!(integer(&number("2.0"), "n", 0, 4).is_err());
    }
}
