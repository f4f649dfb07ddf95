//! Answering the kubelet's `Allocate` with the configured device-list strategies.
//!
//! Fail-closed: every answer sets `NVIDIA_VISIBLE_DEVICES` itself (the UUIDs, the
//! volume-mount root, or `void`), so an image's own value (`all`, say) never widens what
//! a container that asked for GPUs gets through the NVIDIA runtime hook.

use crate::cdi;
use crate::config::{Config, ListStrategy};
use crate::enumerate::{self, Gpu};
use crate::sharing;
use wdp_guest_sdk::types::{ContainerAllocation, Error, Mount};
use wdp_guest_sdk::{alloc, dev};

/// Driver-wide nodes every CUDA process needs besides its GPUs' own nodes; each is
/// passed only when present (e.g. `nvidia-modeset` exists only with that module loaded).
const CONTROL_NODES: [&str; 4] = [
    "/dev/nvidiactl",
    "/dev/nvidia-uvm",
    "/dev/nvidia-uvm-tools",
    "/dev/nvidia-modeset",
];
const VISIBLE_DEVICES: &str = "NVIDIA_VISIBLE_DEVICES";
/// Where the NVIDIA runtime looks for the volume-mount device list.
const VOLUME_MOUNT_ROOT: &str = "/var/run/nvidia-container-devices";

/// One answer per container, in request order.
/// `last_scan` is what the last enumeration found: the answer comes from it when every ID
/// is in it, else from a fresh scan (the node may have changed since).
pub fn allocate(
    config: &Config,
    resource: &str,
    containers: &[Vec<String>],
    last_scan: &[Gpu],
) -> Result<Vec<ContainerAllocation>, Error> {
    let resolves = |gpus: &[Gpu]| {
        containers
            .iter()
            .all(|ids| resolve(config, resource, gpus, ids).is_ok())
    };
    let rescanned;
    let gpus: &[Gpu] = if !last_scan.is_empty() && resolves(last_scan) {
        last_scan
    } else {
        rescanned = enumerate::gpus()?;
        &rescanned
    };
    let assigned = containers
        .iter()
        .map(|ids| resolve(config, resource, gpus, ids))
        .collect::<Result<Vec<_>, Error>>()?;
    let needs_nodes = config.uses(ListStrategy::DeviceSpecs) || config.uses(ListStrategy::CdiCri);
    let control = if needs_nodes {
        present_control_nodes()
    } else {
        Vec::new()
    };
    // The spec must be on disk before the runtime resolves the names in the answer.
    let cdi_names = if config.uses(ListStrategy::CdiCri) {
        cdi::write_spec(&config.cdi_kind, gpus, &control)?
    } else {
        Vec::new()
    };
    assigned
        .iter()
        .map(|gpus| container_allocation(config, gpus, &control, &cdi_names))
        .collect()
}

/// The distinct GPUs behind a container's device IDs (replicas of one GPU count once),
/// in request order.
pub fn resolve<'a>(
    config: &Config,
    resource: &str,
    gpus: &'a [Gpu],
    ids: &[String],
) -> Result<Vec<&'a Gpu>, Error> {
    let sharing = &config.sharing.time_slicing;
    if sharing.fail_requests_greater_than_one
        && ids.len() > 1
        && ids.iter().any(|id| sharing::split_id(id).1.is_some())
    {
        return Err(Error::InvalidArgument(format!(
            "request for {} devices of `{resource}` too large: a container may hold one \
             replica of a shared GPU (sharing.timeSlicing.failRequestsGreaterThanOne)",
            ids.len()
        )));
    }
    let mut found: Vec<&Gpu> = Vec::with_capacity(ids.len());
    for id in ids {
        let (gpu_id, _) = sharing::split_id(id);
        // A node has a handful of GPUs: a linear search is enough (and a `HashMap`
        // would make the component import a random seed).
        let gpu = gpus
            .iter()
            .find(|g| g.id(config.device_id_strategy) == gpu_id)
            .ok_or_else(|| {
                Error::InvalidArgument(format!(
                    "device ID `{id}` of `{resource}` is not a GPU on this node \
                     (it may have been removed, unbound or excluded)"
                ))
            })?;
        if !found.iter().any(|g| g.address == gpu.address) {
            found.push(gpu);
        }
    }
    Ok(found)
}

fn container_allocation(
    config: &Config,
    gpus: &[&Gpu],
    control: &[&str],
    cdi_names: &[String],
) -> Result<ContainerAllocation, Error> {
    // UUIDs whatever the ID strategy: the runtime reads indices as nvidia-smi/CUDA
    // indices, which need not equal the minor numbers this guest uses as indices.
    let uuids: Vec<&str> = gpus.iter().map(|g| g.uuid.as_str()).collect();
    let mut answer = alloc::empty();
    let visible = if config.uses(ListStrategy::Envvar) {
        uuids.join(",")
    } else if config.uses(ListStrategy::VolumeMounts) {
        answer.mounts = uuids
            .iter()
            .map(|uuid| Mount {
                container_path: format!("{VOLUME_MOUNT_ROOT}/{uuid}"),
                host_path: "/dev/null".into(),
                read_only: true,
            })
            .collect();
        VOLUME_MOUNT_ROOT.to_string()
    } else {
        // Devices reach the container by device specs or CDI only; `void` keeps the
        // runtime hook from adding any GPU the image names.
        "void".to_string()
    };
    answer.envs.push((VISIBLE_DEVICES.into(), visible));
    if config.uses(ListStrategy::DeviceSpecs) {
        answer.devices = gpus
            .iter()
            .map(|g| g.dev_path())
            .chain(control.iter().map(ToString::to_string))
            .map(|path| alloc::device(&path, "rw"))
            .collect();
    }
    if config.uses(ListStrategy::CdiCri) {
        for uuid in &uuids {
            let name = cdi::qualified_name(&config.cdi_kind, uuid);
            if !cdi_names.contains(&name) {
                return Err(Error::Other(format!(
                    "the CDI spec written for {} does not define {name}",
                    config.cdi_kind
                )));
            }
            answer.cdi_devices.push(name);
        }
    }
    Ok(answer)
}

/// The control nodes that exist now; one that cannot be looked up is left out (logged).
fn present_control_nodes() -> Vec<&'static str> {
    CONTROL_NODES
        .into_iter()
        .filter(|path| dev::present(path))
        .collect()
}
