//! The operator's configuration: JSON, camelCase, unknown fields refused so that a typo
//! does not silently fall back to a default.

use serde::Deserialize;

use crate::wdp::device_plugin::types::Error;

/// Which identifier the kubelet sees for each GPU.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DeviceIdStrategy {
    /// The GPU UUID (`GPU-…`): stable across reboots and driver reloads.
    #[default]
    Uuid,
    /// The driver's `Device Minor` number (N in `/dev/nvidiaN`) as a decimal string.
    Index,
}

#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields, default)]
pub struct Config {
    /// The extended resource advertised (validated by the host).
    pub resource_name: String,
    pub device_id_strategy: DeviceIdStrategy,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            resource_name: "nvidia.com/gpu".into(),
            device_id_strategy: DeviceIdStrategy::Uuid,
        }
    }
}

impl Config {
    /// Parses the configuration file's text; empty text (no file) means all defaults.
    pub fn parse(text: &str) -> Result<Config, Error> {
        if text.trim().is_empty() {
            return Ok(Config::default());
        }
        serde_json::from_str(text).map_err(|e| {
            Error::InvalidConfig(format!(
                "nvidia-gpu configuration is not valid (expected JSON with optional \
                 \"resourceName\" and \"deviceIdStrategy\": \"uuid\" | \"index\"): {e}"
            ))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn empty_means_defaults() {
        assert_eq!(Config::parse(" \n").unwrap(), Config::default());
        assert_eq!(Config::default().resource_name, "nvidia.com/gpu");
    }

    #[test]
    fn reads_fields_and_refuses_unknown_ones() {
        let c = Config::parse(r#"{"resourceName":"nvidia.com/h100","deviceIdStrategy":"index"}"#)
            .unwrap();
        assert_eq!(c.resource_name, "nvidia.com/h100");
        assert_eq!(c.device_id_strategy, DeviceIdStrategy::Index);
        assert!(matches!(
            Config::parse(r#"{"migStrategy":"none"}"#),
            Err(Error::InvalidConfig(_))
        ));
        assert!(matches!(
            Config::parse(r#"{"deviceIdStrategy":"serial"}"#),
            Err(Error::InvalidConfig(_))
        ));
    }
}
