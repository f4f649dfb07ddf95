//! Time-slicing: which resource each GPU is advertised under and how many replicas
//! (`<id>::<n>`) it has. Unlike NVIDIA's plug-in, the count can differ per GPU: each
//! `sharing.timeSlicing.resources` entry may name its GPUs.

use crate::config::{Config, SharedResource};
use crate::enumerate::Gpu;

/// Separates a GPU's ID from the replica number, as NVIDIA's plug-in does.
const REPLICA_SEPARATOR: &str = "::";

/// How one GPU is offered: under which resource, and shared by how many replicas
/// (`None`: whole).
#[derive(Debug, PartialEq, Eq)]
pub struct Placement {
    pub resource: String,
    pub replicas: Option<u32>,
}

impl Placement {
    /// Whether a container holding this GPU has it to itself.
    pub fn whole(&self) -> bool {
        self.replicas.is_none_or(|r| r == 1)
    }
}

/// The resource an entry's GPUs are advertised under.
fn entry_resource(config: &Config, entry: &SharedResource) -> String {
    match &entry.rename {
        Some(name) => name.clone(),
        None if config.sharing.time_slicing.rename_by_default => {
            format!("{}.shared", config.resource_name)
        }
        None => config.resource_name.clone(),
    }
}

/// The first entry naming the GPU decides; a GPU no entry names is offered whole.
pub fn placement(config: &Config, gpu: &Gpu) -> Placement {
    let entries = &config.sharing.time_slicing.resources;
    let chosen = entries.iter().find(|e| {
        e.devices
            .as_ref()
            .is_none_or(|selectors| selectors.iter().any(|s| gpu.matches(s)))
    });
    match chosen {
        Some(entry) => Placement {
            resource: entry_resource(config, entry),
            replicas: Some(entry.replicas),
        },
        None => Placement {
            resource: config.resource_name.clone(),
            replicas: None,
        },
    }
}

/// Every resource the configuration can place a GPU under, `resourceName` first (left
/// out when an entry without `devices` takes every remaining GPU elsewhere). Fixed by
/// the configuration alone, since the kubelet registers resources once.
pub fn resource_names(config: &Config) -> Vec<String> {
    let entries = &config.sharing.time_slicing.resources;
    let mut names = Vec::new();
    let catch_all = entries.iter().position(|e| e.devices.is_none());
    // Entries after a catch-all can never match.
    let reachable = &entries[..catch_all.map_or(entries.len(), |i| i + 1)];
    if catch_all.is_none() {
        names.push(config.resource_name.clone());
    }
    for entry in reachable {
        let name = entry_resource(config, entry);
        if !names.contains(&name) {
            names.push(name);
        }
    }
    if let Some(at) = names.iter().position(|n| *n == config.resource_name) {
        names[..=at].rotate_right(1);
    }
    names
}

/// Whether any GPU of `resource` can be given whole (only those are ever reset).
pub fn may_hold_whole_gpus(config: &Config, resource: &str) -> bool {
    let entries = &config.sharing.time_slicing.resources;
    let falls_through = entries.iter().all(|e| e.devices.is_some());
    (falls_through && resource == config.resource_name)
        || entries
            .iter()
            .any(|e| e.replicas == 1 && entry_resource(config, e) == resource)
}

/// The kubelet's ID for replica `n` of the GPU with ID `id`.
pub fn replica_id(id: &str, n: u32) -> String {
    format!("{id}{REPLICA_SEPARATOR}{n}")
}

/// Splits a kubelet device ID into the GPU's ID and the replica number (if any).
pub fn split_id(id: &str) -> (&str, Option<&str>) {
    match id.split_once(REPLICA_SEPARATOR) {
        Some((gpu, n)) => (gpu, Some(n)),
        None => (id, None),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn gpu(minor: u32) -> Gpu {
        Gpu {
            address: format!("0000:{:02x}:00.0", 0x18 + minor),
            uuid: format!("GPU-{minor}"),
            minor,
            model: String::new(),
            ..Gpu::default()
        }
    }

    fn config(json: &str) -> Config {
        Config::parse(json).unwrap()
    }

    #[test]
    fn without_sharing_every_gpu_is_whole() {
        let c = Config::default();
        assert_eq!(resource_names(&c), ["nvidia.com/gpu"]);
        assert_eq!(
            placement(&c, &gpu(0)),
            Placement {
                resource: "nvidia.com/gpu".into(),
                replicas: None
            }
        );
        assert!(may_hold_whole_gpus(&c, "nvidia.com/gpu"));
    }

    #[test]
    fn per_gpu_replicas_and_renames() {
        let c = config(
            r#"{"sharing":{"timeSlicing":{"renameByDefault":true,"resources":[
                {"devices":["GPU-0"],"replicas":2},
                {"devices":["1","0000:1a:00.0"],"replicas":4,"rename":"nvidia.com/gpu.small"}
            ]}}}"#,
        );
        assert_eq!(
            resource_names(&c),
            [
                "nvidia.com/gpu",
                "nvidia.com/gpu.shared",
                "nvidia.com/gpu.small"
            ]
        );
        let p = |m| placement(&c, &gpu(m));
        assert_eq!(p(0).resource, "nvidia.com/gpu.shared");
        assert_eq!(p(0).replicas, Some(2));
        assert_eq!(p(1).replicas, Some(4));
        assert_eq!(p(2).resource, "nvidia.com/gpu.small");
        assert_eq!(p(3).resource, "nvidia.com/gpu");
        assert!(p(3).whole() && !p(1).whole());
        assert!(!may_hold_whole_gpus(&c, "nvidia.com/gpu.shared"));
        assert!(may_hold_whole_gpus(&c, "nvidia.com/gpu"));
    }

    #[test]
    fn a_catch_all_entry_takes_the_rest() {
        let c = config(
            r#"{"sharing":{"timeSlicing":{"renameByDefault":true,"resources":[
                {"name":"nvidia.com/gpu","replicas":8},{"devices":["GPU-1"],"replicas":2}
            ]}}}"#,
        );
        assert_eq!(resource_names(&c), ["nvidia.com/gpu.shared"]);
        assert_eq!(placement(&c, &gpu(1)).replicas, Some(8));
        let c = config(r#"{"sharing":{"timeSlicing":{"resources":[{"replicas":1}]}}}"#);
        assert_eq!(resource_names(&c), ["nvidia.com/gpu"]);
        assert!(may_hold_whole_gpus(&c, "nvidia.com/gpu"));
        let c = config(
            r#"{"sharing":{"timeSlicing":{"resources":[
                {"devices":["GPU-1"],"replicas":3,"rename":"nvidia.com/a"},{"replicas":2}
            ]}}}"#,
        );
        assert_eq!(resource_names(&c), ["nvidia.com/gpu", "nvidia.com/a"]);
        assert!(!may_hold_whole_gpus(&c, "nvidia.com/gpu"));
    }

    #[test]
    fn replica_ids_round_trip() {
        assert_eq!(replica_id("GPU-1", 3), "GPU-1::3");
        assert_eq!(split_id("GPU-1::3"), ("GPU-1", Some("3")));
        assert_eq!(split_id("GPU-1"), ("GPU-1", None));
    }
}
