//! Answering the kubelet's `Allocate`: the device nodes a container needs to use its GPUs
//! and the variable that tells the NVIDIA container runtime which GPUs to expose.

use crate::config::Config;
use crate::enumerate::{self, Gpu};
use crate::errors::message;
use crate::wdp::device_plugin::devfs;
use crate::wdp::device_plugin::log;
use crate::wdp::device_plugin::types::{ContainerAllocation, DeviceSpec, Error, LogLevel};

/// Driver-wide nodes every CUDA process needs besides its GPUs' own nodes; each is
/// passed only when present (e.g. `nvidia-modeset` exists only with that module loaded).
const CONTROL_NODES: [&str; 4] = [
    "/dev/nvidiactl",
    "/dev/nvidia-uvm",
    "/dev/nvidia-uvm-tools",
    "/dev/nvidia-modeset",
];

/// One answer per container, in request order.
pub fn allocate(
    config: &Config,
    containers: &[Vec<String>],
) -> Result<Vec<ContainerAllocation>, Error> {
    // Re-enumerate: minors and UUIDs are only as current as the last look at the node.
    let gpus = enumerate::gpus()?;
    let control = present_control_nodes();
    containers
        .iter()
        .map(|ids| {
            let assigned = ids
                .iter()
                .map(|id| {
                    // A node has a handful of GPUs: a linear search is enough (and a
                    // `HashMap` would make the component import a random seed).
                    let found = gpus.iter().find(|g| g.id(config.device_id_strategy) == *id);
                    found.ok_or_else(|| {
                        Error::InvalidArgument(format!(
                            "device ID `{id}` of `{}` is not a GPU on this node \
                             (it may have been removed, unbound or excluded)",
                            config.resource_name
                        ))
                    })
                })
                .collect::<Result<Vec<&Gpu>, Error>>()?;
            Ok(container_allocation(&assigned, &control))
        })
        .collect()
}

fn container_allocation(gpus: &[&Gpu], control: &[&str]) -> ContainerAllocation {
    let nodes = gpus
        .iter()
        .map(|g| g.dev_path())
        .chain(control.iter().map(ToString::to_string));
    // UUIDs whatever the ID strategy: the runtime reads indices as nvidia-smi/CUDA
    // indices, which need not equal the minor numbers this guest uses as indices.
    let uuids: Vec<&str> = gpus.iter().map(|g| g.uuid.as_str()).collect();
    ContainerAllocation {
        envs: vec![("NVIDIA_VISIBLE_DEVICES".into(), uuids.join(","))],
        mounts: Vec::new(),
        devices: nodes
            .map(|path| DeviceSpec {
                container_path: path.clone(),
                host_path: path,
                permissions: "rw".into(),
            })
            .collect(),
        annotations: Vec::new(),
        cdi_devices: Vec::new(),
    }
}

/// The control nodes that exist now; one that cannot be looked up is left out (logged).
fn present_control_nodes() -> Vec<&'static str> {
    CONTROL_NODES
        .into_iter()
        .filter(|path| match devfs::lookup(path) {
            Ok(found) => found.is_some(),
            Err(e) => {
                log::log(
                    LogLevel::Warn,
                    &format!("cannot look up {path}: {}", message(e)),
                );
                false
            }
        })
        .collect()
}
