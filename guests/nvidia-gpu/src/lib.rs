//! Reference guest for NVIDIA GPUs: advertises the GPUs bound to the `nvidia` driver as
//! `nvidia.com/gpu` (name configurable), whole, as time-slicing replicas or as MIG
//! devices (NVIDIA's `single` and `mixed` strategies), with health from NVML events, the
//! kernel log and sysfs, NVLink- and topology-aware preferred allocation, the device-list
//! strategies of NVIDIA's plug-in (env, volume mounts, device specs, CDI), GPU Feature
//! Discovery's node labels and an optional reset before each container start. See
//! `README.md` beside this crate.
//!
//! Everything it knows about the node comes through the host imports: NVML's reading
//! when the node has NVML (else sysfs and procfs alone), the PCI list, the driver's
//! procfs files, sysfs attributes, `/dev` lookups and the kernel log.
//! Nothing here panics on node or operator input; failures go back as WIT `error`s.

mod allocate;
mod cdi;
mod config;
mod enumerate;
mod health;
mod labels;
mod mig;
mod nvml_reading;
mod order;
mod prefer;
mod reset;
mod sharing;
#[cfg(test)]
mod testdata;
mod xid;

use wdp_guest_sdk::Plugin;
use wdp_guest_sdk::host::sysfs;
use wdp_guest_sdk::types::{
    ContainerAllocation, Device, Error, Health, PreferredRequest, ResourceOptions, ResourceSpec,
};

use config::{Config, MigStrategy};
use enumerate::{Gpu, Scan};
use health::Monitor;
use nvml_reading::NvmlReader;

/// Refuses any resource name this instance does not advertise.
fn check_resource(names: &[String], resource: &str) -> Result<(), Error> {
    if names.iter().any(|n| n == resource) {
        Ok(())
    } else {
        Err(Error::InvalidArgument(format!(
            "unknown resource `{resource}`: this guest serves {}",
            names.join(", ")
        )))
    }
}

/// One instance's state: the configuration `configure` accepted, the resources decided
/// then, and the health memory, which lives as long as the instance (the host keeps it
/// between calls).
struct NvidiaGpu {
    config: Config,
    /// Fixed at `configure` (the kubelet registers each resource once): under `mixed`,
    /// the MIG profiles NVML showed then. A new MIG layout needs a reload of the guest.
    resources: Vec<String>,
    monitor: Monitor,
    nvml: NvmlReader,
    /// The GPUs the last enumeration found. Allocation and preference answer from it (the
    /// host has already checked every ID against that list), so a pod start does not pay
    /// for a scan of the whole PCI bus; they rescan only when an ID is not in it.
    last_scan: Vec<Gpu>,
}

impl NvidiaGpu {
    /// Looks at the node once: NVML's reading when there is one, sysfs and procfs always.
    fn scan(&mut self, keep_mig: bool) -> Result<Scan, Error> {
        let (system, problem) = self.nvml.read();
        let mut scan = enumerate::scan(system, keep_mig)?;
        scan.nvml = system.is_some();
        scan.nvml_problem = problem;
        Ok(scan)
    }

    /// The scan the strategy offers from (GPUs in MIG mode kept unless it is `none`).
    fn offered(&mut self) -> Result<Scan, Error> {
        self.scan(self.config.mig_strategy != MigStrategy::None)
    }

    /// The last enumeration when it offers every ID of `ids` under `resource`, else a
    /// fresh one (the node may have changed since).
    fn gpus_for(
        &mut self,
        resource: &str,
        ids: &mut dyn Iterator<Item = &String>,
    ) -> Result<Vec<Gpu>, Error> {
        if allocate::covers(&self.config, resource, &self.last_scan, ids) {
            Ok(self.last_scan.clone())
        } else {
            Ok(self.offered()?.gpus)
        }
    }
}

impl Plugin for NvidiaGpu {
    fn configure(text: &str) -> Result<Self, Error> {
        let config = Config::parse(text)?;
        let mut nvml = NvmlReader::default();
        let resources = if config.mig_strategy == MigStrategy::Mixed {
            mig::resource_names(&config, nvml.read().0)
        } else {
            sharing::resource_names(&config)
        };
        Ok(NvidiaGpu {
            config,
            resources,
            monitor: Monitor::default(),
            nvml,
            last_scan: Vec::new(),
        })
    }

    fn resources(&self) -> Result<Vec<ResourceSpec>, Error> {
        let config = &self.config;
        Ok(self
            .resources
            .iter()
            .map(|name| ResourceSpec {
                options: ResourceOptions {
                    // The kubelet calls pre-start only where a GPU may be reset.
                    pre_start_required: config.reset.enabled
                        && sharing::may_hold_whole_gpus(config, name),
                    preferred_allocation_available: true,
                },
                name: name.clone(),
            })
            .collect())
    }

    fn list_devices(&mut self, resource: &str) -> Result<Vec<Device>, Error> {
        check_resource(&self.resources, resource)?;
        let scan = self.offered()?;
        self.last_scan = scan.gpus.clone();
        let config = &self.config;
        let assessed = self.monitor.assess(&config.health, scan);
        let gpus: Vec<&Gpu> = assessed.iter().map(|a| &a.gpu).collect();
        let mut devices = Vec::new();
        for (r, unit) in mig::units(config, &gpus)? {
            if r != resource {
                continue;
            }
            let a = &assessed[unit.at];
            let healthy = match unit.mig {
                None => a.problems.is_empty(),
                Some((_, m)) => a.mig_healthy(m),
            };
            let health = if healthy {
                Health::Healthy
            } else {
                Health::Unhealthy
            };
            let numa_nodes: Vec<u32> = a.gpu.numa_node.into_iter().collect();
            let id = unit.id(config.device_id_strategy);
            let replicas = match unit.mig {
                None => sharing::placement(config, unit.gpu).replicas,
                Some(_) => None,
            };
            match replicas {
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
        check_resource(&self.resources, resource)?;
        let gpus = self.gpus_for(resource, &mut containers.iter().flatten())?;
        allocate::allocate(&self.config, resource, containers, &gpus)
    }

    fn preferred_allocation(
        &mut self,
        resource: &str,
        request: &PreferredRequest,
    ) -> Result<Vec<String>, Error> {
        check_resource(&self.resources, resource)?;
        let gpus = self.gpus_for(resource, &mut request.available.iter())?;
        Ok(prefer::preferred(
            &self.config,
            &gpus,
            &request.available,
            &request.must_include,
            usize::try_from(request.size).unwrap_or(usize::MAX),
        ))
    }

    fn pre_start(&mut self, resource: &str, device_ids: &[String]) -> Result<(), Error> {
        check_resource(&self.resources, resource)?;
        if !self.config.reset.enabled {
            return Ok(());
        }
        let mut gpus = self.offered()?.gpus;
        self.monitor.add_remembered(&mut gpus);
        reset::pre_start(&self.config, resource, &gpus, device_ids)
    }

    fn labels(&mut self) -> Result<Vec<(String, String)>, Error> {
        let (system, _) = self.nvml.read();
        // Every GPU counts, in MIG mode or not, as GFD counts them.
        let gpus = enumerate::scan(system, true)?.gpus;
        let proc_version = match system {
            None => sysfs::read_file("/proc/driver/nvidia/version").ok(),
            Some(_) => None,
        };
        let machine = sysfs::read_file("/sys/class/dmi/id/product_name").ok();
        let facts = labels::Facts {
            gpus: &gpus,
            system,
            proc_version: proc_version.as_deref(),
            machine: machine.as_deref(),
        };
        labels::labels(&self.config, &facts)
    }
}

wdp_guest_sdk::export!(NvidiaGpu);
