//! The host's vocabulary for devices and allocations, independent of both the WIT
//! bindings and the kubelet's protobuf types. The runtime converts guest answers into
//! these; the kubelet layer converts these into protobuf.

use std::collections::BTreeMap;

/// Device health, as the kubelet counts it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Health {
    Healthy,
    Unhealthy,
}

/// One device of a resource.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Device {
    pub id: String,
    pub health: Health,
    /// NUMA nodes; empty when unknown.
    pub numa_nodes: Vec<u32>,
}

/// Optional calls a resource implements.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ResourceOptions {
    pub pre_start_required: bool,
    pub preferred_allocation_available: bool,
}

/// One extended resource a guest advertises.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResourceSpec {
    pub name: String,
    pub options: ResourceOptions,
}

/// A bind mount.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mount {
    pub container_path: String,
    pub host_path: String,
    pub read_only: bool,
}

/// A device node for the container.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeviceSpec {
    pub container_path: String,
    pub host_path: String,
    pub permissions: String,
}

/// What one container gets.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ContainerAllocation {
    pub envs: BTreeMap<String, String>,
    pub mounts: Vec<Mount>,
    pub devices: Vec<DeviceSpec>,
    pub annotations: BTreeMap<String, String>,
    pub cdi_devices: Vec<String>,
}

/// The kubelet's preferred-allocation question for one container.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PreferredRequest {
    pub available: Vec<String>,
    pub must_include: Vec<String>,
    pub size: usize,
}
