//! Small JSON helpers: a parser for the configuration that keeps keys in order and
//! reads numbers as text, field-by-field readers whose errors name the field by its path
//! (`pools[1].selectors.vendors[0]`, which serde's derived errors do only for unknown
//! fields), and a writer for the allocation's info variable (strings escaped by the
//! SDK's writer). Hand-written rather than serde_json because the guest must stay small
//! (float parsing and formatting alone would cost more than all of this).

use wdp_guest_sdk::types::Error;

pub use wdp_guest_sdk::json::write_str as write_string;

/// Deepest nesting accepted, so that hostile text cannot exhaust the stack.
const MAX_DEPTH: usize = 32;

/// A parsed JSON value. Numbers keep their text: only whole numbers are ever needed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Value {
    Null,
    Bool(bool),
    Number(String),
    String(String),
    Array(Vec<Value>),
    /// Members in document order; a repeated key is refused by the parser.
    Object(Vec<(String, Value)>),
}

/// Parses one JSON document; the error says where it went wrong.
pub fn parse(text: &str) -> Result<Value, String> {
    let mut p = Parser {
        text: text.as_bytes(),
        at: 0,
    };
    let value = p.value(0)?;
    p.skip_space();
    if p.at < p.text.len() {
        return Err(p.error("unexpected text after the JSON value"));
    }
    Ok(value)
}

struct Parser<'a> {
    text: &'a [u8],
    at: usize,
}

impl Parser<'_> {
    /// `what` with the line and column of the current position.
    fn error(&self, what: &str) -> String {
        let done = &self.text[..self.at.min(self.text.len())];
        let line = done.iter().filter(|&&c| c == b'\n').count() + 1;
        let column = done.iter().rev().take_while(|&&c| c != b'\n').count() + 1;
        format!("{what} at line {line} column {column}")
    }

    fn skip_space(&mut self) {
        while self
            .text
            .get(self.at)
            .is_some_and(|c| matches!(c, b' ' | b'\t' | b'\n' | b'\r'))
        {
            self.at += 1;
        }
    }

    fn peek(&mut self) -> Option<u8> {
        self.skip_space();
        self.text.get(self.at).copied()
    }

    fn expect(&mut self, c: u8) -> Result<(), String> {
        if self.peek() == Some(c) {
            self.at += 1;
            Ok(())
        } else {
            Err(self.error(&format!("expected `{}`", char::from(c))))
        }
    }

    fn keyword(&mut self, word: &str, value: Value) -> Result<Value, String> {
        if self.text[self.at..].starts_with(word.as_bytes()) {
            self.at += word.len();
            Ok(value)
        } else {
            Err(self.error("expected a JSON value"))
        }
    }

    fn value(&mut self, depth: usize) -> Result<Value, String> {
        if depth > MAX_DEPTH {
            return Err(self.error("nested too deeply"));
        }
        match self.peek() {
            None => Err(self.error("unexpected end of text")),
            Some(b'{') => {
                self.at += 1;
                let mut members: Vec<(String, Value)> = Vec::new();
                if self.peek() == Some(b'}') {
                    self.at += 1;
                    return Ok(Value::Object(members));
                }
                loop {
                    if self.peek() != Some(b'"') {
                        return Err(self.error("expected a key in double quotes"));
                    }
                    let key = self.string()?;
                    if members.iter().any(|(k, _)| *k == key) {
                        return Err(self.error(&format!("key `{key}` appears twice")));
                    }
                    self.expect(b':')?;
                    let value = self.value(depth + 1)?;
                    members.push((key, value));
                    match self.peek() {
                        Some(b',') => self.at += 1,
                        Some(b'}') => {
                            self.at += 1;
                            return Ok(Value::Object(members));
                        }
                        _ => return Err(self.error("expected `,` or `}`")),
                    }
                }
            }
            Some(b'[') => {
                self.at += 1;
                let mut items = Vec::new();
                if self.peek() == Some(b']') {
                    self.at += 1;
                    return Ok(Value::Array(items));
                }
                loop {
                    items.push(self.value(depth + 1)?);
                    match self.peek() {
                        Some(b',') => self.at += 1,
                        Some(b']') => {
                            self.at += 1;
                            return Ok(Value::Array(items));
                        }
                        _ => return Err(self.error("expected `,` or `]`")),
                    }
                }
            }
            Some(b'"') => self.string().map(Value::String),
            Some(b't') => self.keyword("true", Value::Bool(true)),
            Some(b'f') => self.keyword("false", Value::Bool(false)),
            Some(b'n') => self.keyword("null", Value::Null),
            Some(b'-' | b'0'..=b'9') => {
                let start = self.at;
                while self
                    .text
                    .get(self.at)
                    .is_some_and(|c| matches!(c, b'-' | b'+' | b'.' | b'e' | b'E' | b'0'..=b'9'))
                {
                    self.at += 1;
                }
                let number = String::from_utf8_lossy(&self.text[start..self.at]).into_owned();
                Ok(Value::Number(number))
            }
            Some(_) => Err(self.error("expected a JSON value")),
        }
    }

    /// A string literal starting at the opening quote.
    fn string(&mut self) -> Result<String, String> {
        self.at += 1;
        let mut bytes: Vec<u8> = Vec::new();
        loop {
            let Some(&c) = self.text.get(self.at) else {
                return Err(self.error("unterminated string"));
            };
            self.at += 1;
            match c {
                b'"' => break,
                b'\\' => {
                    let Some(&e) = self.text.get(self.at) else {
                        return Err(self.error("unterminated string"));
                    };
                    self.at += 1;
                    let decoded = match e {
                        b'"' => '"',
                        b'\\' => '\\',
                        b'/' => '/',
                        b'b' => '\u{8}',
                        b'f' => '\u{c}',
                        b'n' => '\n',
                        b'r' => '\r',
                        b't' => '\t',
                        b'u' => self.unicode_escape()?,
                        _ => return Err(self.error("invalid escape in string")),
                    };
                    let mut buf = [0; 4];
                    bytes.extend_from_slice(decoded.encode_utf8(&mut buf).as_bytes());
                }
                c if c < 0x20 => return Err(self.error("control character in string")),
                c => bytes.push(c),
            }
        }
        // The input is a `&str`, and escapes were decoded to whole characters.
        String::from_utf8(bytes).map_err(|_| self.error("invalid UTF-8 in string"))
    }

    /// The character of a `\uXXXX` escape (after the `u`), joining surrogate pairs.
    fn unicode_escape(&mut self) -> Result<char, String> {
        let high = self.hex4()?;
        let code = if (0xd800..0xdc00).contains(&high) {
            if !self.text[self.at..].starts_with(b"\\u") {
                return Err(self.error("unpaired surrogate in string"));
            }
            self.at += 2;
            let low = self.hex4()?;
            if !(0xdc00..0xe000).contains(&low) {
                return Err(self.error("unpaired surrogate in string"));
            }
            0x10000 + ((high - 0xd800) << 10) + (low - 0xdc00)
        } else {
            high
        };
        char::from_u32(code).ok_or_else(|| self.error("invalid \\u escape in string"))
    }

    fn hex4(&mut self) -> Result<u32, String> {
        let digits = self
            .text
            .get(self.at..self.at + 4)
            .and_then(|d| std::str::from_utf8(d).ok())
            .and_then(|d| u32::from_str_radix(d, 16).ok())
            .ok_or_else(|| self.error("invalid \\u escape in string"))?;
        self.at += 4;
        Ok(digits)
    }
}

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
        for (text, what) in [
            ("", "unexpected end"),
            ("{", "expected a key"),
            ("{\"a\" 1}", "expected `:`"),
            ("{\"a\":1,}", "expected a key"),
            ("[1 2]", "expected `,` or `]`"),
            ("\"abc", "unterminated"),
            ("\"\\x\"", "invalid escape"),
            ("\"\\ud800\"", "unpaired surrogate"),
            ("tru", "expected a JSON value"),
            ("{} x", "after the JSON value"),
            ("{\"a\":1,\"a\":2}", "appears twice"),
            ("\"a\nb\"", "control character"),
        ] {
            let e = parse(text).expect_err(text);
            assert!(e.contains(what) && e.contains("line"), "{text:?}: {e}");
        }
        assert!(
            parse("\n  [1,\n  x]")
                .unwrap_err()
                .ends_with("line 3 column 3")
        );
        let deep = "[".repeat(100);
        assert!(parse(&deep).unwrap_err().contains("nested too deeply"));
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
