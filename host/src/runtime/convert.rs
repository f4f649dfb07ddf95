//! WIT values to and from the host's vocabulary ([`crate::device`]).
//!
//! Conversions that can meet bad guest data return a message instead of panicking:
//! duplicate env keys, for example, are a malformed answer, not something to overwrite.

use std::collections::BTreeMap;

use crate::device;
use crate::wit::latest::types as wit;

pub(crate) fn resource(spec: wit::ResourceSpec) -> device::ResourceSpec {
    device::ResourceSpec {
        name: spec.name,
        options: device::ResourceOptions {
            pre_start_required: spec.options.pre_start_required,
            preferred_allocation_available: spec.options.preferred_allocation_available,
        },
    }
}

pub(crate) fn device(d: wit::Device) -> device::Device {
    device::Device {
        id: d.id,
        health: match d.health {
            wit::Health::Healthy => device::Health::Healthy,
            wit::Health::Unhealthy => device::Health::Unhealthy,
        },
        numa_nodes: d.numa_nodes,
    }
}

pub(crate) fn allocation(
    a: wit::ContainerAllocation,
) -> Result<device::ContainerAllocation, String> {
    Ok(device::ContainerAllocation {
        envs: unique_map("env", a.envs)?,
        mounts: a
            .mounts
            .into_iter()
            .map(|m| device::Mount {
                container_path: m.container_path,
                host_path: m.host_path,
                read_only: m.read_only,
            })
            .collect(),
        devices: a
            .devices
            .into_iter()
            .map(|d| device::DeviceSpec {
                container_path: d.container_path,
                host_path: d.host_path,
                permissions: d.permissions,
            })
            .collect(),
        annotations: unique_map("annotation", a.annotations)?,
        cdi_devices: a.cdi_devices,
    })
}

pub(crate) fn preferred_request(r: &device::PreferredRequest) -> wit::PreferredRequest {
    wit::PreferredRequest {
        available: r.available.clone(),
        must_include: r.must_include.clone(),
        size: u32::try_from(r.size).unwrap_or(u32::MAX),
    }
}

fn unique_map(
    what: &str,
    pairs: Vec<(String, String)>,
) -> Result<BTreeMap<String, String>, String> {
    let mut map = BTreeMap::new();
    for (key, value) in pairs {
        if map.insert(key.clone(), value).is_some() {
            return Err(format!("{what} {key:?} appears twice"));
        }
    }
    Ok(map)
}
