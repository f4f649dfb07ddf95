//! MIG strategies: what the kubelet is offered (whole GPUs, MIG devices or both) and
//! under which resource, with NVIDIA's resource names, device IDs and refusals, so that
//! pod specs written for NVIDIA's plug-in keep working.

use crate::config::{Config, DeviceIdStrategy, MigStrategy};
use crate::enumerate::Gpu;
use crate::sharing;
use wdp_guest_sdk::host::nvml::{MigDevice, System};
use wdp_guest_sdk::types::Error;

/// NVIDIA's refusals for `single`, word for word (operators search for them).
pub const MIXED_MODES: &str =
    "all devices on the node must be configured with the same migEnabled value";
pub const MIXED_TYPES: &str =
    "invalid MIG configuration: more than one MIG device type present on node";
/// The driver's table of MIG capability device minors.
pub const MIG_MINORS: &str = "/proc/driver/nvidia-caps/mig-minors";

/// One thing a container can be given: a whole GPU, or one MIG device of it.
#[derive(Clone, Copy)]
pub struct Unit<'a> {
    /// Position of the GPU in the list `units` was given.
    pub at: usize,
    pub gpu: &'a Gpu,
    /// The MIG device and its position among the GPU's (NVML order); none: whole.
    pub mig: Option<(usize, &'a MigDevice)>,
}

impl Unit<'_> {
    /// The kubelet's ID: whole GPUs as before; MIG devices by MIG UUID or, with `index`,
    /// NVIDIA's `<gpu index>:<mig index>`.
    pub fn id(&self, strategy: DeviceIdStrategy) -> String {
        match (self.mig, strategy) {
            (None, _) => self.gpu.id(strategy),
            (Some((_, m)), DeviceIdStrategy::Uuid) => m.uuid.clone(),
            (Some((k, _)), DeviceIdStrategy::Index) => {
                let index = self.gpu.nvml.as_ref().map_or(self.gpu.minor, |n| n.index);
                format!("{index}:{k}")
            }
        }
    }

    /// `GPU-…` or `MIG-…`.
    pub fn uuid(&self) -> &str {
        self.mig.map_or(&self.gpu.uuid, |(_, m)| &m.uuid)
    }

    /// What `NVIDIA_VISIBLE_DEVICES` names: whole GPUs by UUID (this guest's indices are
    /// minors, not the runtime's), MIG devices by their ID, as NVIDIA's plug-in does.
    pub fn visible(&self, strategy: DeviceIdStrategy) -> String {
        match self.mig {
            None => self.gpu.uuid.clone(),
            Some(_) => self.id(strategy),
        }
    }
}

/// The name of a MIG profile's resource and labels under `mixed`, without the domain:
/// `mig-<profile>`, `+me` becoming `.me` as NVIDIA names it.
pub fn profile_name(profile: &str) -> String {
    let mut name = String::from("mig-");
    for c in profile.chars() {
        name.push(if c == '+' { '.' } else { c });
    }
    name
}

/// The resource of a MIG profile under `mixed`, e.g. `nvidia.com/mig-1g.10gb`.
pub fn mig_resource(profile: &str) -> String {
    format!("nvidia.com/{}", profile_name(profile))
}

/// `mixed` offers MIG devices whose compute instance fills its GPU instance, as NVIDIA's
/// plug-in does (a `1c.3g.40gb` device has no resource there either).
fn offered_in_mixed(m: &MigDevice) -> bool {
    m.compute_slices == m.gpu_slices
}

/// The resources this guest advertises, fixed when it is configured: the configuration's,
/// and under `mixed` one per MIG profile NVML shows now (a new layout needs a reload).
pub fn resource_names(config: &Config, system: Option<&System>) -> Vec<String> {
    let mut names = sharing::resource_names(config);
    if config.mig_strategy == MigStrategy::Mixed
        && let Some(system) = system
    {
        for g in &system.gpus {
            for m in g.mig_devices.iter().filter(|m| offered_in_mixed(m)) {
                let name = mig_resource(&m.profile);
                if !names.contains(&name) {
                    names.push(name);
                }
            }
        }
    }
    names
}

/// Under `single`: none while no GPU is in MIG mode (then as `none`), else the MIG device
/// whose profile every MIG device shares; NVIDIA's refusal when the layout is mixed.
pub fn single_profile<'a>(gpus: &[&'a Gpu]) -> Result<Option<&'a MigDevice>, Error> {
    if !gpus.iter().any(|g| g.mig_enabled()) {
        return Ok(None);
    }
    if gpus.iter().any(|g| !g.mig_enabled()) {
        return Err(Error::Other(format!(
            "migStrategy single: {MIXED_MODES} (enable MIG on every GPU, or use \
             migStrategy mixed)"
        )));
    }
    let mut first: Option<&MigDevice> = None;
    for g in gpus {
        for m in migs_of(g) {
            match first {
                None => first = Some(m),
                Some(f) if f.profile != m.profile => {
                    return Err(Error::Other(format!(
                        "migStrategy single: {MIXED_TYPES} (use one MIG profile throughout, \
                         or migStrategy mixed)"
                    )));
                }
                Some(_) => {}
            }
        }
    }
    Ok(first)
}

fn migs_of(g: &Gpu) -> &[MigDevice] {
    g.nvml.as_ref().map_or(&[], |n| &n.mig_devices)
}

/// Everything offered, with its resource, in GPU order. `gpus` are the offered GPUs
/// (GPUs in MIG mode are among them only under `single` and `mixed`).
pub fn units<'a>(config: &Config, gpus: &[&'a Gpu]) -> Result<Vec<(String, Unit<'a>)>, Error> {
    let as_migs = match config.mig_strategy {
        MigStrategy::None => false,
        MigStrategy::Single => single_profile(gpus)?.is_some(),
        MigStrategy::Mixed => true,
    };
    let mut units = Vec::new();
    for (at, gpu) in gpus.iter().copied().enumerate() {
        if !gpu.mig_enabled() {
            let resource = sharing::placement(config, gpu).resource;
            units.push((resource, Unit { at, gpu, mig: None }));
        } else if as_migs {
            for (k, m) in migs_of(gpu).iter().enumerate() {
                let resource = match config.mig_strategy {
                    MigStrategy::Mixed if offered_in_mixed(m) => mig_resource(&m.profile),
                    MigStrategy::Mixed => continue,
                    _ => config.resource_name.clone(),
                };
                let mig = Some((k, m));
                units.push((resource, Unit { at, gpu, mig }));
            }
        }
    }
    Ok(units)
}

/// The capability minors of a MIG device's GPU instance and compute instance in the
/// driver's `mig-minors` table (`gpu0/gi1/access 12`, `gpu0/gi1/ci0/access 13`, where
/// `gpu<N>` is the parent's minor).
pub fn cap_minors(table: &str, minor: u32, gi: u32, ci: u32) -> Option<(u32, u32)> {
    let instance = format!("gpu{minor}/gi{gi}/");
    let compute = format!("ci{ci}/access");
    let (mut g, mut c) = (None, None);
    for line in table.lines() {
        let Some((key, value)) = line.trim().split_once(' ') else {
            continue;
        };
        let found = value.trim().parse().ok();
        match key.strip_prefix(&instance) {
            Some("access") => g = found,
            Some(rest) if rest == compute => c = found,
            _ => {}
        }
    }
    Some((g?, c?))
}

/// The device nodes a container needs for `unit`: the GPU's node, and for a MIG device
/// also its two capability nodes. `table` is the `mig-minors` text, or why it is missing.
pub fn nodes(unit: &Unit, table: &Result<String, String>) -> Result<Vec<String>, Error> {
    let mut nodes = vec![unit.gpu.dev_path()];
    if let Some((_, m)) = unit.mig {
        let (gi, ci) = (m.gpu_instance_id, m.compute_instance_id);
        let minors = match table {
            Ok(text) => cap_minors(text, unit.gpu.minor, gi, ci).ok_or("no line for it"),
            Err(why) => Err(why.as_str()),
        };
        let (a, b) = minors.map_err(|why| {
            Error::NotFound(format!(
                "MIG device {} (GPU {}, GPU instance {gi}, compute instance {ci}): {why} in \
                 {MIG_MINORS}; check that the instance still exists (nvidia-smi mig -lgi) and \
                 that the policy grants reading /proc/driver/nvidia-caps",
                m.uuid, unit.gpu.uuid
            ))
        })?;
        for n in [a, b] {
            nodes.push(format!("/dev/nvidia-caps/nvidia-cap{n}"));
        }
    }
    Ok(nodes)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testdata::{dgx, dgx_nvml, mig};
    use wdp_guest_sdk::host::nvml::MigMode;

    fn config(strategy: &str, ids: &str) -> Config {
        Config::parse(&format!(
            r#"{{"migStrategy":"{strategy}","deviceIdStrategy":"{ids}"}}"#
        ))
        .unwrap()
    }

    fn offered(config: &Config, gpus: &[Gpu]) -> Result<Vec<(String, String)>, Error> {
        let refs: Vec<&Gpu> = gpus.iter().collect();
        Ok(units(config, &refs)?
            .into_iter()
            .map(|(r, u)| (r, u.id(config.device_id_strategy)))
            .collect())
    }

    fn message(e: Error) -> String {
        wdp_guest_sdk::error::message(e)
    }

    #[test]
    fn mixed_offers_whole_gpus_and_one_resource_per_profile() {
        let c = config("mixed", "uuid");
        let system = System {
            driver_version: "580.159.04".into(),
            cuda_version: (13, 0),
            gpus: dgx_nvml(true),
        };
        assert_eq!(
            resource_names(&c, Some(&system)),
            [
                "nvidia.com/gpu",
                "nvidia.com/mig-1g.10gb",
                "nvidia.com/mig-3g.40gb"
            ]
        );
        assert_eq!(resource_names(&c, None), ["nvidia.com/gpu"]);
        let list = offered(&c, &dgx(true)).unwrap();
        let of = |r: &str| -> Vec<&str> {
            list.iter()
                .filter(|(x, _)| x == r)
                .map(|(_, id)| id.as_str())
                .collect()
        };
        assert_eq!(
            of("nvidia.com/gpu"),
            ["GPU-2", "GPU-3", "GPU-4", "GPU-5", "GPU-6", "GPU-7"]
        );
        assert_eq!(of("nvidia.com/mig-1g.10gb").len(), 7);
        assert_eq!(of("nvidia.com/mig-1g.10gb")[0], "MIG-0-7");
        assert_eq!(of("nvidia.com/mig-3g.40gb"), ["MIG-1-1", "MIG-1-2"]);
        let list = offered(&config("mixed", "index"), &dgx(true)).unwrap();
        assert!(list.contains(&("nvidia.com/mig-1g.10gb".into(), "0:6".into())));
        assert!(list.contains(&("nvidia.com/mig-3g.40gb".into(), "1:1".into())));
        assert!(list.contains(&("nvidia.com/gpu".into(), "7".into())));
    }

    #[test]
    fn mixed_leaves_out_partial_compute_instances_and_renames_plus() {
        let mut gpus = dgx(true);
        let n = gpus[1].nvml.as_mut().unwrap();
        n.mig_devices[1].compute_slices = 1;
        n.mig_devices[1].profile = "1c.3g.40gb".into();
        n.mig_devices[0].profile = "1g.18gb+me".into();
        let list = offered(&config("mixed", "uuid"), &gpus).unwrap();
        assert!(list.contains(&("nvidia.com/mig-1g.18gb.me".into(), "MIG-1-1".into())));
        assert!(!list.iter().any(|(_, id)| id == "MIG-1-2"));
    }

    #[test]
    fn single_refuses_mixed_layouts_with_nvidias_words() {
        let c = config("single", "uuid");
        let e = message(offered(&c, &dgx(true)).unwrap_err());
        assert!(e.contains(MIXED_MODES), "{e}");
        let mut gpus = dgx(true);
        gpus.truncate(2);
        let e = message(offered(&c, &gpus).unwrap_err());
        assert!(e.contains(MIXED_TYPES), "{e}");
        assert!(e.contains("more than one MIG device type present on node"));
    }

    #[test]
    fn single_offers_uniform_mig_devices_or_whole_gpus() {
        let c = config("single", "index");
        let whole = offered(&c, &dgx(false)).unwrap();
        assert_eq!(whole.len(), 8);
        assert!(whole.iter().all(|(r, _)| r == "nvidia.com/gpu"));
        let mut gpus = dgx(false);
        gpus.truncate(2);
        for g in &mut gpus {
            let n = g.nvml.as_mut().unwrap();
            n.mig_mode = MigMode::Enabled;
            n.mig_devices = vec![mig(n.index, 1, "3g.40gb", 3, 40192)];
        }
        let list = offered(&c, &gpus).unwrap();
        assert_eq!(
            list,
            [
                ("nvidia.com/gpu".to_string(), "0:0".to_string()),
                ("nvidia.com/gpu".to_string(), "1:0".to_string())
            ]
        );
    }

    #[test]
    fn none_offers_whole_gpus_only() {
        let list = offered(&Config::default(), &dgx(true)).unwrap();
        assert_eq!(list.len(), 6, "the two GPUs in MIG mode are not offered");
    }

    #[test]
    fn capability_minors_from_the_drivers_table() {
        let table = "config 1\nmonitor 2\ngpu0/gi1/access 12\ngpu0/gi1/ci0/access 13\n\
                     gpu2/gi1/access 282\ngpu2/gi1/ci0/access 283\n";
        assert_eq!(cap_minors(table, 0, 1, 0), Some((12, 13)));
        assert_eq!(cap_minors(table, 2, 1, 0), Some((282, 283)));
        assert_eq!(cap_minors(table, 2, 1, 1), None);
        assert_eq!(cap_minors(table, 1, 1, 0), None);
        let gpus = dgx(true);
        let refs: Vec<&Gpu> = gpus.iter().collect();
        let all = units(&config("mixed", "uuid"), &refs).unwrap();
        let (_, unit) = all.iter().find(|(_, u)| u.uuid() == "MIG-0-7").unwrap();
        let table = Ok("gpu0/gi7/access 66\ngpu0/gi7/ci0/access 67\n".to_string());
        assert_eq!(
            nodes(unit, &table).unwrap(),
            [
                "/dev/nvidia0",
                "/dev/nvidia-caps/nvidia-cap66",
                "/dev/nvidia-caps/nvidia-cap67"
            ]
        );
        let e = message(nodes(unit, &Ok(String::new())).unwrap_err());
        assert!(e.contains("MIG-0-7") && e.contains(MIG_MINORS), "{e}");
    }
}
