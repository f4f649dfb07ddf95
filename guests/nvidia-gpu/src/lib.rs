//! Reference guest for NVIDIA GPUs: advertises the GPUs bound to the `nvidia` driver as
//! `nvidia.com/gpu` (name configurable), whole or as time-slicing replicas, with health
//! from the kernel log and sysfs, topology-aware preferred allocation, the device-list
//! strategies of NVIDIA's plug-in (env, volume mounts, device specs, CDI) and an
//! optional reset before each container start. See `README.md` beside this crate.
//!
//! Everything it knows about the node comes through the host imports: the PCI list, the
//! driver's procfs files, sysfs attributes, `/dev` lookups and the kernel log.
//! Nothing here panics on node or operator input; failures go back as WIT `error`s.

mod allocate;
mod cdi;
mod config;
mod enumerate;
mod health;
mod order;
mod prefer;
mod reset;
mod sharing;
mod xid;

use wdp_guest_sdk::Plugin;
use wdp_guest_sdk::types::{
    ContainerAllocation, Device, Error, Health, PreferredRequest, ResourceOptions, ResourceSpec,
};

use config::Config;
use health::Monitor;

/// Refuses any resource name the configuration does not advertise.
fn check_resource(config: &Config, resource: &str) -> Result<(), Error> {
    let names = sharing::resource_names(config);
    if names.iter().any(|n| n == resource) {
        Ok(())
    } else {
        Err(Error::InvalidArgument(format!(
            "unknown resource `{resource}`: this guest serves {}",
            names.join(", ")
        )))
    }
}

/// One instance's state: the configuration `configure` accepted, and the health memory,
/// which lives as long as the instance (the host keeps it between calls).
struct NvidiaGpu {
    config: Config,
    monitor: Monitor,
    /// The GPUs the last enumeration found. Allocation and preference answer from it (the
    /// host has already checked every ID against that list), so a pod start does not pay
    /// for a scan of the whole PCI bus; they rescan only when an ID is not in it.
    last_scan: Vec<enumerate::Gpu>,
}

impl Plugin for NvidiaGpu {
    fn configure(text: &str) -> Result<Self, Error> {
        Ok(NvidiaGpu {
            config: Config::parse(text)?,
            monitor: Monitor::default(),
            last_scan: Vec::new(),
        })
    }

    fn resources(&self) -> Result<Vec<ResourceSpec>, Error> {
        let config = &self.config;
        Ok(sharing::resource_names(config)
            .into_iter()
            .map(|name| ResourceSpec {
                options: ResourceOptions {
                    // The kubelet calls pre-start only where a GPU may be reset.
                    pre_start_required: config.reset.enabled
                        && sharing::may_hold_whole_gpus(config, &name),
                    preferred_allocation_available: true,
                },
                name,
            })
            .collect())
    }

    fn list_devices(&mut self, resource: &str) -> Result<Vec<Device>, Error> {
        let config = &self.config;
        check_resource(config, resource)?;
        let scan = enumerate::scan()?;
        self.last_scan = scan.gpus.clone();
        let assessed = self.monitor.assess(&config.health, scan);
        let mut devices = Vec::new();
        for a in assessed {
            let placement = sharing::placement(config, &a.gpu);
            if placement.resource != resource {
                continue;
            }
            let health = if a.problems.is_empty() {
                Health::Healthy
            } else {
                Health::Unhealthy
            };
            let numa_nodes: Vec<u32> = a.gpu.numa_node.into_iter().collect();
            let id = a.gpu.id(config.device_id_strategy);
            match placement.replicas {
                None => devices.push(Device {
                    id,
                    health,
                    numa_nodes,
                }),
                Some(n) => devices.extend((0..n).map(|k| Device {
                    id: sharing::replica_id(&id, k),
                    health,
                    numa_nodes: numa_nodes.clone(),
                })),
            }
        }
        Ok(devices)
    }

    fn allocate(
        &mut self,
        resource: &str,
        containers: &[Vec<String>],
    ) -> Result<Vec<ContainerAllocation>, Error> {
        check_resource(&self.config, resource)?;
        allocate::allocate(&self.config, resource, containers, &self.last_scan)
    }

    fn preferred_allocation(
        &mut self,
        resource: &str,
        request: &PreferredRequest,
    ) -> Result<Vec<String>, Error> {
        check_resource(&self.config, resource)?;
        let known = |id: &String| {
            let (gpu_id, _) = sharing::split_id(id);
            self.last_scan
                .iter()
                .any(|g| g.id(self.config.device_id_strategy) == gpu_id)
        };
        let gpus = if !self.last_scan.is_empty() && request.available.iter().all(known) {
            self.last_scan.clone()
        } else {
            enumerate::gpus()?
        };
        Ok(prefer::preferred(
            &self.config,
            &gpus,
            &request.available,
            &request.must_include,
            usize::try_from(request.size).unwrap_or(usize::MAX),
        ))
    }

    fn pre_start(&mut self, resource: &str, device_ids: &[String]) -> Result<(), Error> {
        let config = &self.config;
        check_resource(config, resource)?;
        if !config.reset.enabled {
            return Ok(());
        }
        let mut gpus = enumerate::gpus()?;
        self.monitor.add_remembered(&mut gpus);
        reset::pre_start(config, resource, &gpus, device_ids)
    }
}

wdp_guest_sdk::export!(NvidiaGpu);
