//! Answering the kubelet's `Allocate` with the configured device-list strategies.
//!
//! Fail-closed: every answer sets `NVIDIA_VISIBLE_DEVICES` itself (the UUIDs, the
//! volume-mount root, or `void`), so an image's own value (`all`, say) never widens what
//! a container that asked for GPUs gets through the NVIDIA runtime hook.
//!
//! A MIG device is its parent's node plus the capability nodes of its GPU instance and
//! compute instance (`/dev/nvidia-caps/nvidia-cap<N>`, numbered in the driver's table).

use crate::cdi;
use crate::config::{Config, ListStrategy};
use crate::enumerate::Gpu;
use crate::mig::{self, Unit};
use crate::sharing;
use wdp_guest_sdk::error::message;
use wdp_guest_sdk::host::sysfs;
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

/// Whether every ID of `ids` is offered under `resource` by `gpus` (so that an answer
/// can come from the last enumeration instead of a fresh one).
pub fn covers(
    config: &Config,
    resource: &str,
    gpus: &[Gpu],
    ids: &mut dyn Iterator<Item = &String>,
) -> bool {
    let refs: Vec<&Gpu> = gpus.iter().collect();
    let Ok(units) = mig::units(config, &refs) else {
        return false;
    };
    if gpus.is_empty() {
        return false;
    }
    for id in ids {
        let base = sharing::split_id(id).0;
        let known = units
            .iter()
            .any(|(r, u)| r == resource && u.id(config.device_id_strategy) == base);
        if !known {
            return false;
        }
    }
    true
}

/// One answer per container, in request order, for the devices of `gpus`.
pub fn allocate(
    config: &Config,
    resource: &str,
    containers: &[Vec<String>],
    gpus: &[Gpu],
) -> Result<Vec<ContainerAllocation>, Error> {
    let refs: Vec<&Gpu> = gpus.iter().collect();
    let units = mig::units(config, &refs)?;
    let mut assigned = Vec::with_capacity(containers.len());
    for ids in containers {
        assigned.push(resolve(config, resource, &units, ids)?);
    }
    let needs_nodes = config.uses(ListStrategy::DeviceSpecs) || config.uses(ListStrategy::CdiCri);
    let control = if needs_nodes {
        present_control_nodes()
    } else {
        Vec::new()
    };
    // MIG devices need their capability nodes, numbered in the driver's table.
    let table = if needs_nodes && units.iter().any(|(_, u)| u.mig.is_some()) {
        sysfs::read_file(mig::MIG_MINORS).map_err(message)
    } else {
        Ok(String::new())
    };
    // The spec must be on disk before the runtime resolves the names in the answer.
    let cdi_names = if config.uses(ListStrategy::CdiCri) {
        let mut devices = Vec::new();
        for (_, u) in &units {
            // A MIG device without its capability minors is left out (its allocation
            // fails below, saying why).
            if let Ok(nodes) = mig::nodes(u, &table) {
                devices.push((u.uuid().to_string(), nodes));
            }
        }
        cdi::write_spec(&config.cdi_kind, &devices, &control)?
    } else {
        Vec::new()
    };
    let mut answers = Vec::with_capacity(assigned.len());
    for units in &assigned {
        answers.push(container_allocation(
            config, units, &control, &cdi_names, &table,
        )?);
    }
    Ok(answers)
}

/// The distinct devices behind a container's device IDs (replicas of one GPU count
/// once), in request order.
pub fn resolve<'a>(
    config: &Config,
    resource: &str,
    units: &[(String, Unit<'a>)],
    ids: &[String],
) -> Result<Vec<Unit<'a>>, Error> {
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
    let mut found: Vec<Unit> = Vec::with_capacity(ids.len());
    for id in ids {
        let (base, _) = sharing::split_id(id);
        // A node has a handful of GPUs: a linear search is enough (and a `HashMap`
        // would make the component import a random seed).
        let unit = units
            .iter()
            .find(|(r, u)| r == resource && u.id(config.device_id_strategy) == base)
            .map(|(_, u)| *u)
            .ok_or_else(|| {
                Error::InvalidArgument(format!(
                    "device ID `{id}` of `{resource}` is not a device on this node \
                     (it may have been removed, unbound, excluded or repartitioned)"
                ))
            })?;
        if !found.iter().any(|u| u.uuid() == unit.uuid()) {
            found.push(unit);
        }
    }
    Ok(found)
}

fn container_allocation(
    config: &Config,
    units: &[Unit],
    control: &[&str],
    cdi_names: &[String],
    table: &Result<String, String>,
) -> Result<ContainerAllocation, Error> {
    let visible: Vec<String> = units
        .iter()
        .map(|u| u.visible(config.device_id_strategy))
        .collect();
    let mut answer = alloc::empty();
    let visible = if config.uses(ListStrategy::Envvar) {
        visible.join(",")
    } else if config.uses(ListStrategy::VolumeMounts) {
        answer.mounts = visible
            .iter()
            .map(|name| Mount {
                container_path: format!("{VOLUME_MOUNT_ROOT}/{name}"),
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
        let mut paths: Vec<String> = Vec::new();
        for unit in units {
            for path in mig::nodes(unit, table)? {
                // Two MIG devices of one GPU share its node.
                if !paths.contains(&path) {
                    paths.push(path);
                }
            }
        }
        answer.devices = paths
            .iter()
            .map(String::as_str)
            .chain(control.iter().copied())
            .map(|path| alloc::device(path, "rw"))
            .collect();
    }
    if config.uses(ListStrategy::CdiCri) {
        for unit in units {
            let name = cdi::qualified_name(&config.cdi_kind, unit.uuid());
            if !cdi_names.contains(&name) {
                // A MIG device left out of the spec: say why.
                mig::nodes(unit, table)?;
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
