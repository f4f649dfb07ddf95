//! The operator's configuration: JSON, camelCase, unknown fields refused so that a typo
//! does not silently fall back to a default. Every error names the field (its path).
//! `example-config.json` beside this crate documents every field.

use wdp_guest_sdk::json::{self, Value};
use wdp_guest_sdk::types::Error;

/// NVIDIA's "application" XIDs, ignored by default as NVIDIA's plug-in does: they are
/// raised by a faulty program (illegal address, bad graphics engine exception,
/// GPU stopped processing, preemptive cleanup, video processor exception, CTXSW timeout
/// recovered) rather than by a faulty GPU.
pub const DEFAULT_IGNORED_XIDS: [u32; 6] = [13, 31, 43, 45, 68, 109];
/// Longest bounded wait after a reset: below the host's 10 s pre-start deadline.
pub const MAX_RESET_TIMEOUT_MS: u32 = 9_000;
/// Most replicas per GPU: 16,384 devices per resource at most on the host side.
pub const MAX_REPLICAS: u32 = 1_024;

/// Which identifier the kubelet sees for each GPU.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum DeviceIdStrategy {
    /// The GPU UUID (`GPU-…`): stable across reboots and driver reloads.
    #[default]
    Uuid,
    /// The driver's `Device Minor` number (N in `/dev/nvidiaN`) as a decimal string.
    Index,
}

/// How an allocation tells the container runtime which GPUs a container gets.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ListStrategy {
    /// `NVIDIA_VISIBLE_DEVICES=<uuid>,…` for the NVIDIA container runtime.
    Envvar,
    /// `NVIDIA_VISIBLE_DEVICES=/var/run/nvidia-container-devices` plus one `/dev/null`
    /// mount per GPU: works with `accept-nvidia-visible-devices-as-volume-mounts`.
    VolumeMounts,
    /// The GPUs' and the driver's device nodes as `DeviceSpec`s.
    DeviceSpecs,
    /// Qualified CDI names in the CRI `CDIDevices` field, after writing the spec.
    CdiCri,
}

/// How MIG devices are offered, with NVIDIA's names and meaning (NVML only: without it,
/// a partitioned GPU is withheld whatever the strategy).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum MigStrategy {
    /// GPUs in MIG mode are not offered; the others whole.
    #[default]
    None,
    /// Every GPU in MIG mode with one profile throughout: `resourceName` is backed by the
    /// MIG devices (as `none` while no GPU is in MIG mode).
    Single,
    /// Whole GPUs under `resourceName`, MIG devices under `nvidia.com/mig-<profile>`.
    Mixed,
}

/// Order in which replicas of shared GPUs are preferred.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum ReplicaPolicy {
    /// Spread over the GPUs with the fewest replicas in use.
    #[default]
    Distributed,
    /// Fill the GPUs that already have replicas in use first.
    Packed,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Config {
    /// The extended resource advertised for whole GPUs (validated by the host).
    pub resource_name: String,
    pub device_id_strategy: DeviceIdStrategy,
    pub device_list_strategy: Vec<ListStrategy>,
    /// CDI kind (`vendor/class`) of the spec written for `cdi-cri`.
    pub cdi_kind: String,
    pub mig_strategy: MigStrategy,
    pub sharing: Sharing,
    pub health: HealthConfig,
    pub reset: ResetConfig,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            resource_name: "nvidia.com/gpu".into(),
            device_id_strategy: DeviceIdStrategy::Uuid,
            device_list_strategy: vec![ListStrategy::Envvar, ListStrategy::DeviceSpecs],
            // NVIDIA's plug-in writes its own specs under this vendor, so they never clash
            // with the `nvidia.com/gpu` spec that `nvidia-ctk cdi generate` writes.
            cdi_kind: "k8s.device-plugin.nvidia.com/gpu".into(),
            mig_strategy: MigStrategy::None,
            sharing: Sharing::default(),
            health: HealthConfig::default(),
            reset: ResetConfig::default(),
        }
    }
}

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Sharing {
    pub time_slicing: TimeSlicing,
}

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct TimeSlicing {
    /// Shared GPUs are advertised as `<resourceName>.shared` unless an entry renames them.
    pub rename_by_default: bool,
    /// A container may hold at most one replica of a shared resource.
    pub fail_requests_greater_than_one: bool,
    pub allocation_policy: ReplicaPolicy,
    /// Checked in order; a GPU takes the first entry whose `devices` match it.
    pub resources: Vec<SharedResource>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SharedResource {
    /// The resource being shared (NVIDIA's schema); must be `resourceName` if given.
    pub name: Option<String>,
    /// Advertise these GPUs under this resource instead.
    pub rename: Option<String>,
    pub replicas: u32,
    /// GPUs by UUID, minor number or PCI address; absent: every GPU not matched before.
    pub devices: Option<Vec<String>>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HealthConfig {
    /// Watch for XID errors (kernel log; with NVML also its XID and ECC events).
    pub xids: bool,
    /// Ignored on top of [`DEFAULT_IGNORED_XIDS`].
    pub ignored_xids: Vec<u32>,
    /// Acted on even when ignored by default (e.g. 43).
    pub enabled_xids: Vec<u32>,
    /// Count rising fatal AER errors (`aer_dev_fatal`).
    pub aer: bool,
    /// Report a link trained below its width (`current_link_width` < `max_link_width`).
    pub pcie_link: bool,
    /// Seconds without a new XID or fatal AER error before a GPU is Healthy again;
    /// `null` never recovers (NVIDIA's behaviour).
    pub recovery_quiet_seconds: Option<u64>,
}

impl Default for HealthConfig {
    fn default() -> Self {
        HealthConfig {
            xids: true,
            ignored_xids: Vec::new(),
            enabled_xids: Vec::new(),
            aer: true,
            pcie_link: true,
            recovery_quiet_seconds: Some(300),
        }
    }
}

impl HealthConfig {
    /// Whether an XID marks a GPU unhealthy.
    pub fn is_critical(&self, xid: u32) -> bool {
        self.enabled_xids.contains(&xid)
            || !(DEFAULT_IGNORED_XIDS.contains(&xid) || self.ignored_xids.contains(&xid))
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ResetConfig {
    /// Function-level reset of whole GPUs before each container start.
    pub enabled: bool,
    /// How long to wait for a GPU to answer again after its reset.
    pub timeout_ms: u32,
}

impl Default for ResetConfig {
    fn default() -> Self {
        ResetConfig {
            enabled: false,
            timeout_ms: 5_000,
        }
    }
}

impl Config {
    /// Parses the configuration file's text; empty text (no file) means all defaults.
    pub fn parse(text: &str) -> Result<Config, Error> {
        if text.trim().is_empty() {
            return Ok(Config::default());
        }
        let root = json::parse(text).map_err(invalid)?;
        let mut config = Config::default();
        let fields = [
            "resourceName",
            "deviceIdStrategy",
            "deviceListStrategy",
            "cdiKind",
            "migStrategy",
            "sharing",
            "health",
            "reset",
        ];
        for (key, v) in members(&root, "", &fields)? {
            let at = key.as_str();
            match at {
                "resourceName" => config.resource_name = string(v, at)?,
                "deviceIdStrategy" => {
                    config.device_id_strategy = choice(
                        v,
                        at,
                        &[
                            ("uuid", DeviceIdStrategy::Uuid),
                            ("index", DeviceIdStrategy::Index),
                        ],
                    )?
                }
                "deviceListStrategy" => {
                    config.device_list_strategy = list(v, at, |v, at| {
                        choice(
                            v,
                            at,
                            &[
                                ("envvar", ListStrategy::Envvar),
                                ("volume-mounts", ListStrategy::VolumeMounts),
                                ("device-specs", ListStrategy::DeviceSpecs),
                                ("cdi-cri", ListStrategy::CdiCri),
                            ],
                        )
                    })?
                }
                "cdiKind" => config.cdi_kind = string(v, at)?,
                "migStrategy" => {
                    config.mig_strategy = choice(
                        v,
                        at,
                        &[
                            ("none", MigStrategy::None),
                            ("single", MigStrategy::Single),
                            ("mixed", MigStrategy::Mixed),
                        ],
                    )?
                }
                "sharing" => {
                    for (key, v) in members(v, at, &["timeSlicing"])? {
                        let at = format!("{at}.{key}");
                        config.sharing.time_slicing = time_slicing(v, &at)?;
                    }
                }
                "health" => config.health = health(v, at)?,
                _ => config.reset = reset(v, at)?,
            }
        }
        config.check()?;
        Ok(config)
    }

    /// What the reader does not check: values and combinations.
    fn check(&self) -> Result<(), Error> {
        if self.resource_name.is_empty() {
            return Err(invalid("resourceName: must not be empty".into()));
        }
        let strategies = &self.device_list_strategy;
        if strategies.is_empty() {
            return Err(invalid(
                "deviceListStrategy: name at least one of envvar, volume-mounts, \
                 device-specs, cdi-cri"
                    .into(),
            ));
        }
        if self.uses(ListStrategy::Envvar) && self.uses(ListStrategy::VolumeMounts) {
            return Err(invalid(
                "deviceListStrategy: envvar and volume-mounts both set NVIDIA_VISIBLE_DEVICES; \
                 choose one"
                    .into(),
            ));
        }
        if self.uses(ListStrategy::CdiCri) {
            let ok = self
                .cdi_kind
                .split_once('/')
                .is_some_and(|(v, c)| !v.is_empty() && !c.is_empty() && !c.contains('/'));
            if !ok {
                return Err(invalid(format!(
                    "cdiKind: {:?} must look like vendor.com/class",
                    self.cdi_kind
                )));
            }
        }
        if self.mig_strategy != MigStrategy::None && !self.sharing.time_slicing.resources.is_empty()
        {
            return Err(invalid(
                "migStrategy: time-slicing (sharing.timeSlicing.resources) is offered with \
                 migStrategy \"none\" only; MIG devices are not shared. Remove one of the two"
                    .into(),
            ));
        }
        for (i, entry) in self.sharing.time_slicing.resources.iter().enumerate() {
            let at = format!("sharing.timeSlicing.resources[{i}]");
            if entry.replicas == 0 || entry.replicas > MAX_REPLICAS {
                return Err(invalid(format!(
                    "{at}.replicas: {} must be between 1 and {MAX_REPLICAS}",
                    entry.replicas
                )));
            }
            if let Some(name) = entry.name.as_ref().filter(|n| **n != self.resource_name) {
                return Err(invalid(format!(
                    "{at}.name: {name:?} is not the shared resource {:?} (resourceName)",
                    self.resource_name
                )));
            }
            if entry.rename.as_ref().is_some_and(String::is_empty) {
                return Err(invalid(format!("{at}.rename: must not be empty")));
            }
            if let Some(devices) = &entry.devices
                && (devices.is_empty() || devices.iter().any(String::is_empty))
            {
                return Err(invalid(format!(
                    "{at}.devices: list GPUs by UUID, minor or PCI address, or leave the \
                     field out for all GPUs"
                )));
            }
        }
        if self.reset.timeout_ms == 0 || self.reset.timeout_ms > MAX_RESET_TIMEOUT_MS {
            return Err(invalid(format!(
                "reset.timeoutMs: {} must be between 1 and {MAX_RESET_TIMEOUT_MS}",
                self.reset.timeout_ms
            )));
        }
        Ok(())
    }

    pub fn uses(&self, strategy: ListStrategy) -> bool {
        self.device_list_strategy.contains(&strategy)
    }
}

fn invalid(message: String) -> Error {
    Error::InvalidConfig(format!("nvidia-gpu configuration: {message}"))
}

fn time_slicing(v: &Value, at: &str) -> Result<TimeSlicing, Error> {
    let mut t = TimeSlicing::default();
    let fields = [
        "renameByDefault",
        "failRequestsGreaterThanOne",
        "allocationPolicy",
        "resources",
    ];
    for (key, v) in members(v, at, &fields)? {
        let at = &format!("{at}.{key}");
        match key.as_str() {
            "renameByDefault" => t.rename_by_default = boolean(v, at)?,
            "failRequestsGreaterThanOne" => t.fail_requests_greater_than_one = boolean(v, at)?,
            "allocationPolicy" => {
                t.allocation_policy = choice(
                    v,
                    at,
                    &[
                        ("distributed", ReplicaPolicy::Distributed),
                        ("packed", ReplicaPolicy::Packed),
                    ],
                )?
            }
            _ => t.resources = list(v, at, shared_resource)?,
        }
    }
    Ok(t)
}

fn shared_resource(v: &Value, at: &str) -> Result<SharedResource, Error> {
    let mut r = SharedResource {
        name: None,
        rename: None,
        replicas: 0,
        devices: None,
    };
    let mut replicas = None;
    for (key, v) in members(v, at, &["name", "rename", "replicas", "devices"])? {
        let at = &format!("{at}.{key}");
        match key.as_str() {
            "name" => r.name = Some(string(v, at)?),
            "rename" => r.rename = Some(string(v, at)?),
            "replicas" => replicas = Some(number(v, at)?),
            _ => r.devices = Some(list(v, at, string)?),
        }
    }
    r.replicas = replicas.ok_or_else(|| invalid(format!("{at}: missing field `replicas`")))?;
    Ok(r)
}

fn health(v: &Value, at: &str) -> Result<HealthConfig, Error> {
    let mut h = HealthConfig::default();
    let fields = [
        "xids",
        "ignoredXids",
        "enabledXids",
        "aer",
        "pcieLink",
        "recoveryQuietSeconds",
    ];
    for (key, v) in members(v, at, &fields)? {
        let at = &format!("{at}.{key}");
        match key.as_str() {
            "xids" => h.xids = boolean(v, at)?,
            "ignoredXids" => h.ignored_xids = list(v, at, number)?,
            "enabledXids" => h.enabled_xids = list(v, at, number)?,
            "aer" => h.aer = boolean(v, at)?,
            "pcieLink" => h.pcie_link = boolean(v, at)?,
            _ => {
                h.recovery_quiet_seconds = match v {
                    Value::Null => None,
                    v => Some(number(v, at)?),
                }
            }
        }
    }
    Ok(h)
}

fn reset(v: &Value, at: &str) -> Result<ResetConfig, Error> {
    let mut r = ResetConfig::default();
    for (key, v) in members(v, at, &["enabled", "timeoutMs"])? {
        let at = &format!("{at}.{key}");
        match key.as_str() {
            "enabled" => r.enabled = boolean(v, at)?,
            _ => r.timeout_ms = number(v, at)?,
        }
    }
    Ok(r)
}

/// An object's members, every one of them among `known`.
fn members<'v>(v: &'v Value, at: &str, known: &[&str]) -> Result<&'v [(String, Value)], Error> {
    let Value::Object(members) = v else {
        return Err(wrong(at, "an object", v));
    };
    if let Some((key, _)) = members.iter().find(|(k, _)| !known.contains(&k.as_str())) {
        let field = if at.is_empty() {
            key.clone()
        } else {
            format!("{at}.{key}")
        };
        return Err(invalid(format!(
            "{field}: unknown field `{key}`, expected one of {}",
            known.join(", ")
        )));
    }
    Ok(members)
}

fn wrong(at: &str, expected: &str, found: &Value) -> Error {
    let at = if at.is_empty() {
        "the configuration"
    } else {
        at
    };
    invalid(format!("{at}: expected {expected}, found {}", found.kind()))
}

fn boolean(v: &Value, at: &str) -> Result<bool, Error> {
    match v {
        Value::Bool(b) => Ok(*b),
        v => Err(wrong(at, "true or false", v)),
    }
}

fn string(v: &Value, at: &str) -> Result<String, Error> {
    match v {
        Value::String(s) => Ok(s.clone()),
        v => Err(wrong(at, "a string", v)),
    }
}

/// A whole number that fits `T`.
fn number<T: std::str::FromStr>(v: &Value, at: &str) -> Result<T, Error> {
    match v {
        Value::Number(text) => text.parse().map_err(|_| {
            invalid(format!(
                "{at}: {text} is not a whole number that fits {}",
                std::any::type_name::<T>()
            ))
        }),
        v => Err(wrong(at, "a whole number", v)),
    }
}

fn list<T>(
    v: &Value,
    at: &str,
    item: impl Fn(&Value, &str) -> Result<T, Error>,
) -> Result<Vec<T>, Error> {
    let Value::Array(items) = v else {
        return Err(wrong(at, "an array", v));
    };
    // A loop, not `collect` into a `Result`: that adapter costs kilobytes per item type.
    let mut out = Vec::with_capacity(items.len());
    for (i, v) in items.iter().enumerate() {
        out.push(item(v, &format!("{at}[{i}]"))?);
    }
    Ok(out)
}

/// One of `options` (not generic: one copy serves every enum).
fn choice_index(v: &Value, at: &str, options: &[&str]) -> Result<usize, Error> {
    let names = || {
        options
            .iter()
            .map(|n| format!("\"{n}\""))
            .collect::<Vec<_>>()
            .join(", ")
    };
    match v {
        Value::String(s) => options
            .iter()
            .position(|n| n == s)
            .ok_or_else(|| invalid(format!("{at}: {s:?} is not one of {}", names()))),
        v => Err(wrong(at, &format!("one of {}", names()), v)),
    }
}

fn choice<T: Copy>(v: &Value, at: &str, options: &[(&str, T)]) -> Result<T, Error> {
    let names: Vec<&str> = options.iter().map(|(n, _)| *n).collect();
    choice_index(v, at, &names).map(|i| options[i].1)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn message(text: &str) -> String {
        match Config::parse(text) {
            Err(Error::InvalidConfig(m)) => m,
            other => panic!("{text}: {other:?}"),
        }
    }

    #[test]
    fn empty_means_defaults() {
        assert_eq!(Config::parse(" \n").unwrap(), Config::default());
        let c = Config::default();
        assert_eq!(c.resource_name, "nvidia.com/gpu");
        assert_eq!(
            c.device_list_strategy,
            [ListStrategy::Envvar, ListStrategy::DeviceSpecs]
        );
        assert!(!c.reset.enabled);
    }

    #[test]
    fn the_example_file_parses() {
        let c = Config::parse(include_str!("../example-config.json")).unwrap();
        assert_eq!(c.sharing.time_slicing.resources.len(), 2);
        assert_eq!(c.health.recovery_quiet_seconds, Some(300));
    }

    #[test]
    fn reads_fields_and_refuses_unknown_ones() {
        let c = Config::parse(r#"{"resourceName":"nvidia.com/h100","deviceIdStrategy":"index"}"#)
            .unwrap();
        assert_eq!(c.resource_name, "nvidia.com/h100");
        assert_eq!(c.device_id_strategy, DeviceIdStrategy::Index);
        assert!(message(r#"{"migStrategy":"all"}"#).contains("migStrategy"));
        assert!(message(r#"{"passDeviceSpecs":true}"#).contains("passDeviceSpecs"));
        let c = Config::parse(r#"{"migStrategy":"mixed"}"#).unwrap();
        assert_eq!(c.mig_strategy, MigStrategy::Mixed);
        assert_eq!(Config::default().mig_strategy, MigStrategy::None);
        assert!(message(r#"{"deviceIdStrategy":"serial"}"#).contains("deviceIdStrategy"));
    }

    #[test]
    fn errors_name_the_field() {
        for (text, field) in [
            (
                r#"{"health":{"recoveryQuietSeconds":"x"}}"#,
                "health.recoveryQuietSeconds",
            ),
            (r#"{"health":{"ignoredXids":[-1]}}"#, "health.ignoredXids"),
            (
                r#"{"sharing":{"timeSlicing":{"resources":[{"replicas":0}]}}}"#,
                "sharing.timeSlicing.resources[0].replicas",
            ),
            (
                r#"{"sharing":{"timeSlicing":{"resources":[{"replicas":2,"name":"x/y"}]}}}"#,
                "sharing.timeSlicing.resources[0].name",
            ),
            (
                r#"{"sharing":{"timeSlicing":{"resources":[{"replicas":2,"devices":[]}]}}}"#,
                "sharing.timeSlicing.resources[0].devices",
            ),
            (
                r#"{"sharing":{"timeSlicing":{"resources":[{}]}}}"#,
                "sharing.timeSlicing.resources[0]",
            ),
            (r#"{"deviceListStrategy":[]}"#, "deviceListStrategy"),
            (r#"{"deviceListStrategy":["cdi"]}"#, "deviceListStrategy[0]"),
            (
                r#"{"deviceListStrategy":["envvar","volume-mounts"]}"#,
                "deviceListStrategy",
            ),
            (
                r#"{"deviceListStrategy":["cdi-cri"],"cdiKind":"gpu"}"#,
                "cdiKind",
            ),
            (r#"{"reset":{"timeoutMs":60000}}"#, "reset.timeoutMs"),
            (r#"{"reset":{"enable":true}}"#, "reset"),
            (r#"{"resourceName":""}"#, "resourceName"),
            (
                r#"{"migStrategy":"single","sharing":{"timeSlicing":{"resources":[{"replicas":2}]}}}"#,
                "migStrategy: time-slicing",
            ),
        ] {
            let m = message(text);
            assert!(m.contains(field), "{text}: {m}");
        }
    }

    #[test]
    fn xid_lists_adjust_the_defaults() {
        let mut h = HealthConfig::default();
        assert!(!h.is_critical(13) && !h.is_critical(43) && h.is_critical(79));
        h.enabled_xids = vec![43];
        h.ignored_xids = vec![94];
        assert!(h.is_critical(43) && !h.is_critical(94) && !h.is_critical(31));
    }

    #[test]
    fn null_quiet_period_never_recovers() {
        let c = Config::parse(r#"{"health":{"recoveryQuietSeconds":null}}"#).unwrap();
        assert_eq!(c.health.recovery_quiet_seconds, None);
    }
}
