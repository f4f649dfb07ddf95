//! The operator's configuration: JSON, camelCase, unknown fields refused (a typo must not
//! silently widen a pool), every error naming the field by its path.
//!
//! ```json
//! {"pools": [{"resourceName": "rdma/hca_shared_a", "mode": "shared", "rdmaHcaMax": 1000,
//!             "selectors": {"vendors": ["15b3"], "linkTypes": ["infiniband"]}}],
//!  "cdi": false}
//! ```

use crate::json::{self, Object, Value, invalid};
use wdp_guest_sdk::types::Error;

/// Most devices the host accepts in one resource's list, hence most shared slots.
pub const MAX_SLOTS: u64 = 16_384;
/// Longest device ID the host (and the kubelet's checkpoint) accepts.
pub const MAX_ID_LEN: usize = 63;
/// PCI vendor ID of Mellanox / NVIDIA networking.
pub const MELLANOX_VENDOR: u16 = 0x15b3;

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Config {
    /// One advertised resource per pool, in configuration order.
    pub pools: Vec<Pool>,
    /// CDI kind (`vendor.com/class`) to write specs for and to name allocated HCAs in
    /// `cdi-devices`; none: no CDI (device specs and env only).
    pub cdi_kind: Option<String>,
}

impl Default for Config {
    /// Without a configuration file: every Mellanox HCA, one exclusive device each, as
    /// `rdma/hca`.
    fn default() -> Self {
        Config {
            pools: vec![Pool {
                resource_name: "rdma/hca".into(),
                mode: Mode::Exclusive(Unit::Hca),
                selectors: Selectors {
                    vendors: vec![MELLANOX_VENDOR],
                    ..Selectors::default()
                },
            }],
            cdi_kind: None,
        }
    }
}

/// One extended resource and the HCAs it is made of.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Pool {
    /// `domain/name`; checked by the host before registration.
    pub resource_name: String,
    pub mode: Mode,
    pub selectors: Selectors,
}

impl Pool {
    /// The part after the `/`, used in shared-slot IDs.
    pub fn short_name(&self) -> &str {
        self.resource_name
            .rsplit_once('/')
            .map_or(self.resource_name.as_str(), |(_, name)| name)
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    /// `slots` interchangeable devices; a container holding any of them gets every HCA
    /// of the pool (the Mellanox rdma-shared model).
    Shared { slots: u32 },
    /// One device per HCA or per port; a container gets only what its IDs name.
    Exclusive(Unit),
}

/// What one exclusive device stands for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Unit {
    Hca,
    Port,
}

/// Which HCAs a pool takes: OR within a selector, AND across selectors; an absent or
/// empty selector does not filter (as in Mellanox's plug-in).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Selectors {
    pub vendors: Vec<u16>,
    pub device_ids: Vec<u16>,
    pub drivers: Vec<String>,
    pub if_names: Vec<String>,
    pub link_types: Vec<LinkType>,
    /// `dddd:bb:dd.f`, lower case.
    pub pci_addresses: Vec<String>,
}

/// A port's `link_layer`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LinkType {
    InfiniBand,
    Ethernet,
}

impl LinkType {
    /// Whether sysfs's `link_layer` text (`InfiniBand`, `Ethernet`) is this type.
    pub fn is(self, link_layer: &str) -> bool {
        let name = match self {
            LinkType::InfiniBand => "infiniband",
            LinkType::Ethernet => "ethernet",
        };
        link_layer.trim().eq_ignore_ascii_case(name)
    }
}

impl Config {
    /// Parses the configuration file's text; empty text (no file) means the default pool.
    pub fn parse(text: &str) -> Result<Config, Error> {
        if text.trim().is_empty() {
            return Ok(Config::default());
        }
        let value = json::parse(text).map_err(|e| {
            Error::InvalidConfig(format!(
                "infiniband configuration is not valid JSON: {e} (see guests/infiniband/README.md)"
            ))
        })?;
        let top = Object::new(&value, "", &["pools", "cdiKind"])?;
        let cdi_kind = match top.get("cdiKind") {
            Some((v, path)) => {
                let kind = json::string(v, &path)?;
                let parts: Vec<&str> = kind.split('/').collect();
                if parts.len() != 2 || parts.iter().any(|p| p.is_empty()) {
                    return Err(invalid(&path, "must be a CDI kind like nvidia.com/rdma"));
                }
                Some(kind.to_string())
            }
            None => None,
        };
        let Some((v, path)) = top.get("pools") else {
            return Ok(Config {
                cdi_kind,
                ..Config::default()
            });
        };
        let Value::Array(items) = v else {
            return Err(invalid(
                &path,
                &format!("expected an array of pools, found {}", json::kind(v)),
            ));
        };
        if items.is_empty() {
            return Err(invalid(
                &path,
                "lists no pool; leave it out for the default pool",
            ));
        }
        let mut pools: Vec<Pool> = Vec::with_capacity(items.len());
        for (i, item) in items.iter().enumerate() {
            let at = json::element(&path, i);
            let pool = pool(item, &at)?;
            if pools.iter().any(|p| p.resource_name == pool.resource_name) {
                return Err(invalid(
                    &json::child(&at, "resourceName"),
                    &format!("`{}` is used by an earlier pool", pool.resource_name),
                ));
            }
            pools.push(pool);
        }
        Ok(Config { pools, cdi_kind })
    }
}

fn pool(value: &Value, path: &str) -> Result<Pool, Error> {
    let o = Object::new(
        value,
        path,
        &["resourceName", "mode", "rdmaHcaMax", "unit", "selectors"],
    )?;
    let (v, name_path) = o
        .get("resourceName")
        .ok_or_else(|| invalid(&json::child(path, "resourceName"), "is required"))?;
    let resource_name = json::string(v, &name_path)?.to_string();
    match resource_name.rsplit_once('/') {
        Some((domain, name)) if !domain.is_empty() && !name.is_empty() => {}
        _ => {
            return Err(invalid(
                &name_path,
                &format!("`{resource_name}` is not of the form `domain/name`"),
            ));
        }
    }
    let (v, mode_path) = o.get("mode").ok_or_else(|| {
        invalid(
            &json::child(path, "mode"),
            "is required: \"shared\" or \"exclusive\"",
        )
    })?;
    let slots = o.get("rdmaHcaMax");
    let unit = o.get("unit");
    let mode = match json::string(v, &mode_path)? {
        "shared" => {
            if let Some((_, p)) = unit {
                return Err(invalid(&p, "applies only to \"mode\": \"exclusive\""));
            }
            let (v, p) = slots.ok_or_else(|| {
                invalid(
                    &json::child(path, "rdmaHcaMax"),
                    "is required with \"mode\": \"shared\" (the number of slots)",
                )
            })?;
            // Bounded by MAX_SLOTS, so the conversion cannot fail.
            let slots = u32::try_from(json::integer(v, &p, 1, MAX_SLOTS)?).unwrap_or(u32::MAX);
            Mode::Shared { slots }
        }
        "exclusive" => {
            if let Some((_, p)) = slots {
                return Err(invalid(&p, "applies only to \"mode\": \"shared\""));
            }
            match unit {
                None => Mode::Exclusive(Unit::Hca),
                Some((v, p)) => match json::string(v, &p)? {
                    "hca" => Mode::Exclusive(Unit::Hca),
                    "port" => Mode::Exclusive(Unit::Port),
                    other => {
                        return Err(invalid(
                            &p,
                            &format!("`{other}` is not \"hca\" or \"port\""),
                        ));
                    }
                },
            }
        }
        other => {
            return Err(invalid(
                &mode_path,
                &format!("`{other}` is not \"shared\" or \"exclusive\""),
            ));
        }
    };
    let selectors = match o.get("selectors") {
        Some((v, p)) => selectors(v, &p)?,
        None => Selectors::default(),
    };
    let pool = Pool {
        resource_name,
        mode,
        selectors,
    };
    if let Mode::Shared { slots } = pool.mode {
        let longest = crate::pools::slot_id(&pool, slots.saturating_sub(1));
        if longest.len() > MAX_ID_LEN {
            return Err(invalid(
                &name_path,
                &format!(
                    "slot IDs such as `{longest}` would exceed {MAX_ID_LEN} characters; \
                     use a shorter name"
                ),
            ));
        }
    }
    Ok(pool)
}

fn selectors(value: &Value, path: &str) -> Result<Selectors, Error> {
    let o = Object::new(
        value,
        path,
        &[
            "vendors",
            "deviceIDs",
            "drivers",
            "ifNames",
            "linkTypes",
            "pciAddresses",
        ],
    )?;
    let list = |key: &str| -> Result<Vec<(&str, String)>, Error> {
        match o.get(key) {
            Some((v, p)) => json::strings(v, &p),
            None => Ok(Vec::new()),
        }
    };
    let hex_ids = |key: &str| -> Result<Vec<u16>, Error> {
        list(key)?
            .into_iter()
            .map(|(s, p)| {
                let digits = s
                    .strip_prefix("0x")
                    .or_else(|| s.strip_prefix("0X"))
                    .unwrap_or(s);
                match u16::from_str_radix(digits, 16) {
                    Ok(id) if digits.len() == 4 => Ok(id),
                    _ => Err(invalid(
                        &p,
                        &format!("`{s}` is not a 4-digit hex PCI ID such as \"15b3\""),
                    )),
                }
            })
            .collect()
    };
    let link_types = list("linkTypes")?
        .into_iter()
        .map(|(s, p)| match s.to_ascii_lowercase().as_str() {
            "infiniband" | "ib" => Ok(LinkType::InfiniBand),
            // `ether` is netlink's name, which Mellanox's plug-in uses.
            "ethernet" | "ether" | "eth" | "roce" => Ok(LinkType::Ethernet),
            _ => Err(invalid(
                &p,
                &format!("`{s}` is not \"infiniband\" or \"ethernet\""),
            )),
        })
        .collect::<Result<Vec<_>, Error>>()?;
    let pci_addresses = list("pciAddresses")?
        .into_iter()
        .map(|(s, p)| {
            let lower = s.to_ascii_lowercase();
            if is_pci_address(&lower) {
                Ok(lower)
            } else {
                Err(invalid(
                    &p,
                    &format!("`{s}` is not a PCI address such as \"0000:19:00.0\""),
                ))
            }
        })
        .collect::<Result<Vec<_>, Error>>()?;
    let names = |key: &str| -> Result<Vec<String>, Error> {
        list(key)?
            .into_iter()
            .map(|(s, p)| {
                if s.is_empty() {
                    Err(invalid(&p, "must not be empty"))
                } else {
                    Ok(s.to_string())
                }
            })
            .collect()
    };
    Ok(Selectors {
        vendors: hex_ids("vendors")?,
        device_ids: hex_ids("deviceIDs")?,
        drivers: names("drivers")?,
        if_names: names("ifNames")?,
        link_types,
        pci_addresses,
    })
}

/// `dddd:bb:dd.f` in lower-case hex.
fn is_pci_address(s: &str) -> bool {
    let b = s.as_bytes();
    let hex = |r: std::ops::Range<usize>| {
        b.get(r)
            .is_some_and(|part| part.iter().all(|c| matches!(c, b'0'..=b'9' | b'a'..=b'f')))
    };
    b.len() == 12
        && hex(0..4)
        && b[4] == b':'
        && hex(5..7)
        && b[7] == b':'
        && hex(8..10)
        && b[10] == b'.'
        && matches!(b[11], b'0'..=b'7')
}

#[cfg(test)]
mod tests {
    use super::*;

    fn message(text: &str) -> String {
        match Config::parse(text) {
            Err(Error::InvalidConfig(m)) => m,
            other => panic!("{text}: expected invalid-config, got {other:?}"),
        }
    }

    #[test]
    fn empty_means_the_default_pool() {
        let c = Config::parse(" \n").unwrap();
        assert_eq!(c, Config::default());
        assert_eq!(c.pools[0].resource_name, "rdma/hca");
        assert_eq!(c.pools[0].mode, Mode::Exclusive(Unit::Hca));
        assert_eq!(Config::parse("{}").unwrap(), Config::default());
        assert_eq!(
            Config::parse(r#"{"cdiKind":"nvidia.com/rdma"}"#)
                .unwrap()
                .cdi_kind
                .as_deref(),
            Some("nvidia.com/rdma")
        );
    }

    #[test]
    fn reads_every_field() {
        let c = Config::parse(
            r#"{"pools":[
              {"resourceName":"rdma/shared_a","mode":"shared","rdmaHcaMax":1000,
               "selectors":{"vendors":["15b3"],"deviceIDs":["0x1021","101D"],
                            "drivers":["mlx5_core"],"ifNames":["ibp25s0"],
                            "linkTypes":["InfiniBand","ether"],
                            "pciAddresses":["0000:19:00.0","0000:2B:00.0"]}},
              {"resourceName":"nvidia.com/ib_port","mode":"exclusive","unit":"port"},
              {"resourceName":"nvidia.com/ib","mode":"exclusive"}],
             "cdiKind":"nvidia.com/rdma"}"#,
        )
        .unwrap();
        assert_eq!(c.pools.len(), 3);
        let a = &c.pools[0];
        assert_eq!(a.mode, Mode::Shared { slots: 1000 });
        assert_eq!(a.short_name(), "shared_a");
        assert_eq!(
            a.selectors,
            Selectors {
                vendors: vec![0x15b3],
                device_ids: vec![0x1021, 0x101d],
                drivers: vec!["mlx5_core".into()],
                if_names: vec!["ibp25s0".into()],
                link_types: vec![LinkType::InfiniBand, LinkType::Ethernet],
                pci_addresses: vec!["0000:19:00.0".into(), "0000:2b:00.0".into()],
            }
        );
        assert_eq!(c.pools[1].mode, Mode::Exclusive(Unit::Port));
        assert_eq!(c.pools[2].mode, Mode::Exclusive(Unit::Hca));
        assert_eq!(c.pools[2].selectors, Selectors::default());
    }

    #[test]
    fn invalid_configs_name_the_field() {
        for (text, field) in [
            (r#"{"pool":[]}"#, "`pool`"),
            (r#"{"pools":{}}"#, "`pools`"),
            (r#"{"pools":[]}"#, "`pools`"),
            (
                r#"{"pools":[{"mode":"shared"}]}"#,
                "`pools[0].resourceName`",
            ),
            (
                r#"{"pools":[{"resourceName":"hca","mode":"exclusive"}]}"#,
                "`pools[0].resourceName`",
            ),
            (r#"{"pools":[{"resourceName":"a/b"}]}"#, "`pools[0].mode`"),
            (
                r#"{"pools":[{"resourceName":"a/b","mode":"private"}]}"#,
                "`pools[0].mode`",
            ),
            (
                r#"{"pools":[{"resourceName":"a/b","mode":"shared"}]}"#,
                "`pools[0].rdmaHcaMax`",
            ),
            (
                r#"{"pools":[{"resourceName":"a/b","mode":"shared","rdmaHcaMax":"9"}]}"#,
                "`pools[0].rdmaHcaMax`",
            ),
            (
                r#"{"pools":[{"resourceName":"a/b","mode":"shared","rdmaHcaMax":0}]}"#,
                "`pools[0].rdmaHcaMax`",
            ),
            (
                r#"{"pools":[{"resourceName":"a/b","mode":"shared","rdmaHcaMax":16385}]}"#,
                "`pools[0].rdmaHcaMax`",
            ),
            (
                r#"{"pools":[{"resourceName":"a/b","mode":"exclusive","rdmaHcaMax":4}]}"#,
                "`pools[0].rdmaHcaMax`",
            ),
            (
                r#"{"pools":[{"resourceName":"a/b","mode":"shared","rdmaHcaMax":4,"unit":"port"}]}"#,
                "`pools[0].unit`",
            ),
            (
                r#"{"pools":[{"resourceName":"a/b","mode":"exclusive","unit":"lane"}]}"#,
                "`pools[0].unit`",
            ),
            (
                r#"{"pools":[{"resourceName":"a/b","mode":"exclusive","selector":{}}]}"#,
                "`pools[0].selector`",
            ),
            (
                r#"{"pools":[{"resourceName":"a/b","mode":"exclusive","selectors":{"vendor":["15b3"]}}]}"#,
                "`pools[0].selectors.vendor`",
            ),
            (
                r#"{"pools":[{"resourceName":"a/b","mode":"exclusive","selectors":{"vendors":"15b3"}}]}"#,
                "`pools[0].selectors.vendors`",
            ),
            (
                r#"{"pools":[{"resourceName":"a/b","mode":"exclusive","selectors":{"vendors":["15b3","mlx"]}}]}"#,
                "`pools[0].selectors.vendors[1]`",
            ),
            (
                r#"{"pools":[{"resourceName":"a/b","mode":"exclusive","selectors":{"deviceIDs":["10210"]}}]}"#,
                "`pools[0].selectors.deviceIDs[0]`",
            ),
            (
                r#"{"pools":[{"resourceName":"a/b","mode":"exclusive","selectors":{"linkTypes":["fddi"]}}]}"#,
                "`pools[0].selectors.linkTypes[0]`",
            ),
            (
                r#"{"pools":[{"resourceName":"a/b","mode":"exclusive","selectors":{"pciAddresses":["19:00.0"]}}]}"#,
                "`pools[0].selectors.pciAddresses[0]`",
            ),
            (
                r#"{"pools":[{"resourceName":"a/b","mode":"exclusive","selectors":{"ifNames":[""]}}]}"#,
                "`pools[0].selectors.ifNames[0]`",
            ),
            (
                r#"{"pools":[{"resourceName":"a/b","mode":"exclusive"},{"resourceName":"a/b","mode":"exclusive"}]}"#,
                "`pools[1].resourceName`",
            ),
            (r#"{"cdiKind":true}"#, "`cdiKind`"),
            (r#"{"cdiKind":"rdma"}"#, "`cdiKind`"),
        ] {
            let m = message(text);
            assert!(m.contains(field), "{text}: {m}");
        }
        assert!(message("[1]").contains("JSON object"));
        assert!(message("{").contains("not valid JSON"));
    }

    #[test]
    fn slot_ids_must_fit_the_id_limit() {
        let long = "x".repeat(62);
        let text = format!(
            r#"{{"pools":[{{"resourceName":"a/{long}","mode":"shared","rdmaHcaMax":10}}]}}"#
        );
        assert!(message(&text).contains("`pools[0].resourceName`"));
        let text = format!(
            r#"{{"pools":[{{"resourceName":"a/{}","mode":"shared","rdmaHcaMax":10}}]}}"#,
            "x".repeat(61)
        );
        assert!(Config::parse(&text).is_ok());
    }

    #[test]
    fn pci_addresses() {
        assert!(is_pci_address("0000:19:00.0"));
        assert!(is_pci_address("0001:ab:1f.7"));
        for bad in [
            "0000:19:00.8",
            "000:19:00.0",
            "0000:19:00",
            "0000:1g:00.0",
            "",
        ] {
            assert!(!is_pci_address(bad), "{bad}");
        }
    }
}
