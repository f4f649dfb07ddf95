//! A prototype backend for the proposal in BENCHMARKS.md ("Allocate round trip"): the
//! guest is called on the task that serves the request (the store behind a mutex, the
//! call under the same store limits), instead of being queued to the guest's own thread
//! and answered over a oneshot. Plugged under the host's real `ResourceService` and
//! kubelet layer, so that the two designs differ in the hop only.

use std::collections::BTreeMap;
use std::sync::Mutex;

use wasm_device_plugin::device::{
    ContainerAllocation, Device, DeviceSpec, Health, Mount, PreferredRequest,
};
use wasm_device_plugin::resource::backend::{Backend, BoxFuture};
use wasm_device_plugin::runtime::GuestError;
use wasm_device_plugin::wit::latest::types as wit;

use crate::raw::Live;

pub struct InlineGuest {
    name: String,
    live: Mutex<Live>,
    /// Run the call under `tokio::task::block_in_place`, so that the worker's other
    /// tasks move to another thread while the guest runs.
    block_in_place: bool,
}

impl InlineGuest {
    pub fn new(name: &str, live: Live, block_in_place: bool) -> Self {
        Self {
            name: name.into(),
            live: Mutex::new(live),
            block_in_place,
        }
    }

    fn run<R>(&self, f: impl FnOnce() -> R) -> R {
        if self.block_in_place {
            tokio::task::block_in_place(f)
        } else {
            f()
        }
    }

    fn trap(&self, call: &'static str, e: wasmtime::Error) -> GuestError {
        GuestError::Trap {
            guest: self.name.clone(),
            call,
            reason: format!("{e:#}"),
        }
    }

    fn reported(&self, call: &'static str, error: wit::Error) -> GuestError {
        GuestError::reported(&self.name, call, error)
    }
}

fn unique(pairs: Vec<(String, String)>) -> BTreeMap<String, String> {
    pairs.into_iter().collect()
}

impl Backend for InlineGuest {
    fn name(&self) -> &str {
        &self.name
    }

    fn list_devices<'a>(
        &'a self,
        resource: &'a str,
    ) -> BoxFuture<'a, Result<Vec<Device>, GuestError>> {
        Box::pin(async move {
            let mut live = self.live.lock().unwrap_or_else(|p| p.into_inner());
            let Live { store, plugin } = &mut *live;
            let devices = plugin
                .wdp_device_plugin_plugin()
                .call_list_devices(store, resource)
                .map_err(|e| self.trap("list-devices", e))?
                .map_err(|e| self.reported("list-devices", e))?;
            Ok(devices
                .into_iter()
                .map(|d| Device {
                    id: d.id,
                    health: match d.health {
                        wit::Health::Healthy => Health::Healthy,
                        wit::Health::Unhealthy => Health::Unhealthy,
                    },
                    numa_nodes: d.numa_nodes,
                })
                .collect())
        })
    }

    fn allocate<'a>(
        &'a self,
        resource: &'a str,
        containers: Vec<Vec<String>>,
    ) -> BoxFuture<'a, Result<Vec<ContainerAllocation>, GuestError>> {
        Box::pin(async move {
            let answer = self.run(|| {
                let mut live = self.live.lock().unwrap_or_else(|p| p.into_inner());
                let Live { store, plugin } = &mut *live;
                plugin
                    .wdp_device_plugin_plugin()
                    .call_allocate(store, resource, &containers)
            });
            let answer = answer
                .map_err(|e| self.trap("allocate", e))?
                .map_err(|e| self.reported("allocate", e))?;
            Ok(answer
                .into_iter()
                .map(|a| ContainerAllocation {
                    envs: unique(a.envs),
                    mounts: a
                        .mounts
                        .into_iter()
                        .map(|m| Mount {
                            container_path: m.container_path,
                            host_path: m.host_path,
                            read_only: m.read_only,
                        })
                        .collect(),
                    devices: a
                        .devices
                        .into_iter()
                        .map(|d| DeviceSpec {
                            container_path: d.container_path,
                            host_path: d.host_path,
                            permissions: d.permissions,
                        })
                        .collect(),
                    annotations: unique(a.annotations),
                    cdi_devices: a.cdi_devices,
                })
                .collect())
        })
    }

    fn preferred_allocation<'a>(
        &'a self,
        _resource: &'a str,
        _request: &'a PreferredRequest,
    ) -> BoxFuture<'a, Result<Vec<String>, GuestError>> {
        Box::pin(async { Ok(Vec::new()) })
    }

    fn pre_start<'a>(
        &'a self,
        _resource: &'a str,
        _ids: Vec<String>,
    ) -> BoxFuture<'a, Result<(), GuestError>> {
        Box::pin(async { Ok(()) })
    }
}
