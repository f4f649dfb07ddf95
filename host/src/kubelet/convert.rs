//! The host's vocabulary into the kubelet's protobuf messages.

use kubelet_api::v1beta1 as pb;

use crate::device::{ContainerAllocation, Health, ResourceOptions};
use crate::resource::Snapshot;

pub fn options(options: &ResourceOptions) -> pb::DevicePluginOptions {
    pb::DevicePluginOptions {
        pre_start_required: options.pre_start_required,
        get_preferred_allocation_available: options.preferred_allocation_available,
    }
}

/// The full device list; topology only where the NUMA node is known (C14).
pub fn devices(snapshot: &Snapshot) -> pb::ListAndWatchResponse {
    pb::ListAndWatchResponse {
        devices: snapshot
            .devices()
            .iter()
            .map(|d| pb::Device {
                id: d.id.clone(),
                health: match d.health {
                    Health::Healthy => pb::HEALTHY,
                    Health::Unhealthy => pb::UNHEALTHY,
                }
                .to_owned(),
                topology: (!d.numa_nodes.is_empty()).then(|| pb::TopologyInfo {
                    nodes: d
                        .numa_nodes
                        .iter()
                        .map(|&n| pb::NumaNode { id: i64::from(n) })
                        .collect(),
                }),
            })
            .collect(),
    }
}

pub fn allocation(a: ContainerAllocation) -> pb::ContainerAllocateResponse {
    pb::ContainerAllocateResponse {
        envs: a.envs.into_iter().collect(),
        mounts: a
            .mounts
            .into_iter()
            .map(|m| pb::Mount {
                container_path: m.container_path,
                host_path: m.host_path,
                read_only: m.read_only,
            })
            .collect(),
        devices: a
            .devices
            .into_iter()
            .map(|d| pb::DeviceSpec {
                container_path: d.container_path,
                host_path: d.host_path,
                permissions: d.permissions,
            })
            .collect(),
        annotations: a.annotations.into_iter().collect(),
        cdi_devices: a
            .cdi_devices
            .into_iter()
            .map(|name| pb::CdiDevice { name })
            .collect(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::device::Device;
    use crate::kubelet::service::MAX_MESSAGE_BYTES;
    use crate::resource::service::MAX_DEVICES;
    use crate::resource::snapshot::MAX_ID_LEN;
    use prost::Message;

    /// C15: the largest list the host accepts (the most devices, the longest IDs, four
    /// NUMA nodes each) still fits the kubelet's 4 MiB message limit.
    #[test]
    fn the_largest_accepted_device_list_fits_a_kubelet_message() {
        let devices = (0..MAX_DEVICES)
            .map(|i| Device {
                id: format!("{i:0>width$}", width = MAX_ID_LEN),
                health: Health::Unhealthy,
                numa_nodes: vec![0, 1, 2, 3],
            })
            .collect();
        let snapshot = Snapshot::new(devices, MAX_DEVICES).unwrap();
        let size = self::devices(&snapshot).encoded_len();
        assert!(size < MAX_MESSAGE_BYTES, "{size} bytes");
    }
}
