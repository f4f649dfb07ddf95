//! Reference guest for NVIDIA GPUs: advertises every GPU bound to the `nvidia` driver as
//! one device of `nvidia.com/gpu` (name configurable) and hands out its device nodes.
//!
//! Everything it knows about the node comes through the host imports: the PCI list, the
//! driver's `/proc/driver/nvidia/gpus/<address>/information` files and `/dev` lookups.
//! Nothing here panics on node or operator input; failures go back as WIT `error`s.

mod allocate;
mod config;
mod enumerate;
mod errors;

wit_bindgen::generate!({ path: "../../wit", world: "device-plugin" });

use std::cell::RefCell;

use exports::wdp::device_plugin::plugin::Guest;
use wdp::device_plugin::types::{
    ContainerAllocation, Device, Error, PreferredRequest, ResourceOptions, ResourceSpec,
};

use config::Config;

thread_local! {
    /// The configuration `configure` accepted. A component instance is single-threaded
    /// and `configure` runs once per instance before any other export.
    static CONFIG: RefCell<Config> = RefCell::new(Config::default());
}

/// Copy of the current configuration (small; keeps the borrow out of host calls).
fn config() -> Config {
    CONFIG.with(|c| c.borrow().clone())
}

/// Refuses any resource name other than the configured one.
fn check_resource(config: &Config, resource: &str) -> Result<(), Error> {
    if resource == config.resource_name {
        Ok(())
    } else {
        Err(Error::InvalidArgument(format!(
            "unknown resource `{resource}`: this guest serves only `{}`",
            config.resource_name
        )))
    }
}

struct NvidiaGpu;

impl Guest for NvidiaGpu {
    fn configure(text: String) -> Result<(), Error> {
        let parsed = Config::parse(&text)?;
        CONFIG.with(|c| *c.borrow_mut() = parsed);
        Ok(())
    }

    fn resources() -> Result<Vec<ResourceSpec>, Error> {
        Ok(vec![ResourceSpec {
            name: config().resource_name,
            // Only what is implemented is advertised: no pre-start work is needed, and
            // topology-aware preference is not implemented yet.
            options: ResourceOptions {
                pre_start_required: false,
                preferred_allocation_available: false,
            },
        }])
    }

    fn list_devices(resource: String) -> Result<Vec<Device>, Error> {
        let config = config();
        check_resource(&config, &resource)?;
        let gpus = enumerate::gpus()?;
        Ok(gpus
            .iter()
            .map(|gpu| Device {
                id: gpu.id(config.device_id_strategy),
                health: gpu.health,
                numa_nodes: gpu.numa_node.into_iter().collect(),
            })
            .collect())
    }

    fn allocate(
        resource: String,
        containers: Vec<Vec<String>>,
    ) -> Result<Vec<ContainerAllocation>, Error> {
        let config = config();
        check_resource(&config, &resource)?;
        allocate::allocate(&config, &containers)
    }

    fn preferred_allocation(
        resource: String,
        _request: PreferredRequest,
    ) -> Result<Vec<String>, Error> {
        check_resource(&config(), &resource)?;
        Err(Error::Other(
            "preferred allocation is not implemented by the nvidia-gpu guest \
             (the resource does not advertise it)"
                .into(),
        ))
    }

    fn pre_start(resource: String, _device_ids: Vec<String>) -> Result<(), Error> {
        check_resource(&config(), &resource)
    }
}

export!(NvidiaGpu);
