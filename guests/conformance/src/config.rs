//! The test's configuration: which resources to advertise and which call misbehaves how.

use serde::Deserialize;

use crate::attack::{Attack, CdiAttack};
use crate::faults::Fault;
use crate::wdp::device_plugin::types::Error;

#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields, default)]
pub struct Config {
    pub resources: Vec<Resource>,
    pub faults: Faults,
    /// The path the `probe` fault reads.
    pub probe: Option<String>,
    /// How long the `sleep` fault sleeps, in milliseconds (an hour by default).
    pub sleep_ms: Option<u64>,
    /// Whether `pre-start` marks each device by writing `1` to
    /// `/sys/class/<class>/<id>/prestarted` (tests create and read it).
    pub mark_pre_start: bool,
    /// A node file `configure` needs (as a driver's attribute that appears late at
    /// boot): while it cannot be read, `configure` fails.
    pub require_file: Option<String>,
    /// A hostile allocation answer (see `attack`).
    pub attack: Option<Attack>,
    /// A hostile CDI spec written before answering.
    pub cdi_attack: Option<CdiAttack>,
    /// Node labels returned as they are (`[name, value]` pairs; the host must refuse
    /// what the policy does not grant or Kubernetes does not accept).
    pub labels: Vec<(String, String)>,
}

impl Default for Config {
    /// Without a configuration file: one `example.com/widget` resource of class `widget`.
    fn default() -> Self {
        Config {
            resources: vec![Resource {
                name: "example.com/widget".into(),
                class: "widget".into(),
                pre_start_required: false,
                preferred_allocation: false,
                write_cdi_spec: false,
            }],
            faults: Faults::default(),
            probe: None,
            require_file: None,
            sleep_ms: None,
            mark_pre_start: false,
            attack: None,
            cdi_attack: None,
            labels: Vec::new(),
        }
    }
}

/// One advertised resource; its devices live under `/sys/class/<class>/`.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Resource {
    /// Passed through unchecked (the host must refuse invalid names).
    pub name: String,
    pub class: String,
    #[serde(default)]
    pub pre_start_required: bool,
    #[serde(default)]
    pub preferred_allocation: bool,
    /// Write a CDI spec (kind `example.com/<class>`) through the host before answering
    /// an allocation, and answer with the names the host returned.
    #[serde(default)]
    pub write_cdi_spec: bool,
}

/// Per export, the fault to inject (none by default).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields, default)]
pub struct Faults {
    pub configure: Option<Fault>,
    pub resources: Option<Fault>,
    pub list_devices: Option<Fault>,
    pub allocate: Option<Fault>,
    pub preferred_allocation: Option<Fault>,
    pub pre_start: Option<Fault>,
    pub release: Option<Fault>,
}

impl Config {
    /// Parses the configuration text; empty text (no file) means the default resource.
    pub fn parse(text: &str) -> Result<Config, Error> {
        if text.trim().is_empty() {
            return Ok(Config::default());
        }
        let config: Config = serde_json::from_str(text)
            .map_err(|e| Error::InvalidConfig(format!("conformance configuration: {e}")))?;
        config.check_faults()?;
        Ok(config)
    }

    /// Answer-breaking faults only make sense for the export whose answer they break.
    fn check_faults(&self) -> Result<(), Error> {
        let f = &self.faults;
        let checks = [
            ("configure", f.configure, false, false),
            ("resources", f.resources, false, false),
            ("listDevices", f.list_devices, false, false),
            ("allocate", f.allocate, true, false),
            ("preferredAllocation", f.preferred_allocation, false, true),
            ("preStart", f.pre_start, false, false),
            ("release", f.release, false, false),
        ];
        for (export, fault, allocate_ok, prefer_ok) in checks {
            let Some(fault) = fault else { continue };
            let listing_ok = export == "listDevices";
            let huge_ok = export == "listDevices" || export == "allocate";
            if (fault.breaks_allocate() && !allocate_ok)
                || (fault.breaks_preference() && !prefer_ok)
                || (fault.breaks_listing() && !listing_ok)
                || (fault == Fault::Huge && !huge_ok)
            {
                return Err(Error::InvalidConfig(format!(
                    "conformance configuration: fault {fault:?} cannot be injected into `{export}`"
                )));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_full_example() {
        let c = Config::parse(
            r#"{"resources":[{"name":"example.com/widget","class":"widget",
                "preStartRequired":true,"preferredAllocation":true}],
                "faults":{"configure":null,"allocate":"wrong-count","preferredAllocation":"outside",
                "listDevices":"loop"}}"#,
        )
        .unwrap();
        assert!(c.resources[0].pre_start_required && c.resources[0].preferred_allocation);
        assert_eq!(c.faults.allocate, Some(Fault::WrongCount));
        assert_eq!(c.faults.preferred_allocation, Some(Fault::Outside));
        assert_eq!(c.faults.list_devices, Some(Fault::Loop));
        assert_eq!(c.faults.configure, None);
    }

    #[test]
    fn refuses_misplaced_and_unknown() {
        assert!(Config::parse(r#"{"faults":{"listDevices":"wrong-count"}}"#).is_err());
        assert!(Config::parse(r#"{"faults":{"allocate":"outside"}}"#).is_err());
        assert!(Config::parse(r#"{"faults":{"allocate":"explode"}}"#).is_err());
        assert!(Config::parse(r#"{"resource":[]}"#).is_err());
        assert_eq!(Config::parse("  \n").unwrap(), Config::default());
    }
}
