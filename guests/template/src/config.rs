//! The operator's configuration (`template.json` beside the `.wasm`; absent or empty
//! means the defaults):
//!
//! ```json
//! {"resourceName": "example.com/widget", "class": "widget"}
//! ```
//!
//! Unknown fields are refused, so that a typo does not silently fall back to a default.

use wdp_guest_sdk::json::{self, Value};
use wdp_guest_sdk::types::Error;

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Config {
    /// The extended resource advertised (the host checks it against the policy).
    pub resource_name: String,
    /// The device class: widgets are `/sys/class/<class>/*` and `/dev/<class>/*`.
    pub class: String,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            resource_name: "example.com/widget".into(),
            class: "widget".into(),
        }
    }
}

impl Config {
    pub fn parse(text: &str) -> Result<Config, Error> {
        let mut config = Config::default();
        if text.trim().is_empty() {
            return Ok(config);
        }
        let value = json::parse(text).map_err(Error::InvalidConfig)?;
        let Value::Object(members) = value else {
            return Err(invalid(&format!(
                "expected an object, found {}",
                value.kind()
            )));
        };
        for (key, value) in &members {
            let field = match key.as_str() {
                "resourceName" => &mut config.resource_name,
                "class" => &mut config.class,
                _ => return Err(invalid(&format!("unknown field `{key}`"))),
            };
            *field = value
                .as_str()
                .ok_or_else(|| invalid(&format!("`{key}` must be a string, not {}", value.kind())))?
                .to_string();
        }
        if config.class.is_empty() || config.class.contains('/') || config.class.starts_with('.') {
            return Err(invalid(&format!(
                "`class` must be one path component, not `{}`",
                config.class
            )));
        }
        Ok(config)
    }
}

fn invalid(what: &str) -> Error {
    Error::InvalidConfig(format!("template configuration: {what}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_and_overrides() {
        assert_eq!(Config::parse("").unwrap(), Config::default());
        let c = Config::parse(r#"{"resourceName": "acme.com/gizmo", "class": "gizmo"}"#).unwrap();
        assert_eq!(c.resource_name, "acme.com/gizmo");
        assert_eq!(c.class, "gizmo");
    }

    #[test]
    fn refuses_mistakes() {
        for (text, what) in [
            (r#"{"resource": "x"}"#, "unknown field `resource`"),
            (r#"{"class": 1}"#, "must be a string"),
            (r#"{"class": "../etc"}"#, "one path component"),
            ("[]", "expected an object"),
            ("{", "invalid JSON"),
        ] {
            let e = Config::parse(text).unwrap_err();
            assert!(format!("{e:?}").contains(what), "{text}: {e:?}");
        }
    }
}
