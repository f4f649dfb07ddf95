//! Conformance guest: a configurable stand-in vendor that plays whatever behaviour the
//! host's tests ask for, including faults (errors, traps, endless loops, memory growth,
//! and answers that break the contract).
//!
//! Devices are the entries of `/sys/class/<class>/` in the (simulated) node tree, so
//! tests drive enumeration and health by writing files.

mod allocate;
mod attack;
mod config;
mod devices;
mod faults;
mod prefer;

wit_bindgen::generate!({ path: "../../wit", world: "device-plugin-with-release-and-labels" });

use std::cell::RefCell;

use exports::wdp::device_plugin::plugin::Guest;
use wdp::device_plugin::types::{
    ContainerAllocation, Device, Error, LogLevel, PreferredRequest, ResourceOptions, ResourceSpec,
};
use wdp::device_plugin::{log, sysfs};

use config::{Config, Resource};
use faults::{Fault, inject};

thread_local! {
    /// The configuration `configure` accepted. A component instance is single-threaded
    /// and `configure` runs once per instance before any other export.
    static CONFIG: RefCell<Config> = RefCell::new(Config::default());
}

/// Copy of the current configuration (small; keeps the borrow out of host calls).
fn config() -> Config {
    CONFIG.with(|c| c.borrow().clone())
}

/// The configured resource of that name.
fn resource(config: &Config, name: &str) -> Result<Resource, Error> {
    config
        .resources
        .iter()
        .find(|r| r.name == name)
        .cloned()
        .ok_or_else(|| {
            Error::InvalidArgument(format!(
                "unknown resource `{name}`: not in this guest's configuration"
            ))
        })
}

struct Conformance;

impl Guest for Conformance {
    fn configure(text: String) -> Result<(), Error> {
        let parsed = Config::parse(&text)?;
        if let Some(path) = &parsed.require_file {
            sysfs::read_file(path).map_err(|e| {
                Error::Other(format!("waiting for {path}, which this guest needs: {e:?}"))
            })?;
        }
        let fault = parsed.faults.configure;
        let probe = parsed.probe.clone();
        CONFIG.with(|c| *c.borrow_mut() = parsed);
        inject(fault, probe.as_deref())
    }

    fn resources() -> Result<Vec<ResourceSpec>, Error> {
        let config = config();
        inject(config.faults.resources, config.probe.as_deref())?;
        // Names pass through unchecked: refusing invalid ones is the host's job.
        Ok(config
            .resources
            .iter()
            .map(|r| ResourceSpec {
                name: r.name.clone(),
                options: ResourceOptions {
                    pre_start_required: r.pre_start_required,
                    preferred_allocation_available: r.preferred_allocation,
                },
            })
            .collect())
    }

    fn list_devices(name: String) -> Result<Vec<Device>, Error> {
        let config = config();
        inject(config.faults.list_devices, config.probe.as_deref())?;
        let mut devices = devices::list(&resource(&config, &name)?.class)?;
        match config.faults.list_devices {
            Some(Fault::Huge) => devices = devices::huge(),
            Some(Fault::DuplicateIds) => {
                if let Some(first) = devices.first().cloned() {
                    devices.push(first);
                }
            }
            _ => {}
        }
        Ok(devices)
    }

    fn allocate(
        name: String,
        containers: Vec<Vec<String>>,
    ) -> Result<Vec<ContainerAllocation>, Error> {
        let config = config();
        faults::inject_sleeping(
            config.faults.allocate,
            config.probe.as_deref(),
            config.sleep_ms,
        )?;
        let resource = resource(&config, &name)?;
        let mut answer = allocate::allocate(&resource.class, &containers);
        if resource.write_cdi_spec {
            allocate::write_cdi_spec(&resource.class, &containers, &mut answer)?;
        }
        if let Some(fault) = config.faults.allocate {
            allocate::break_answer(&mut answer, fault);
        }
        if let Some(cdi_attack) = config.cdi_attack {
            let names = attack::write_hostile_spec(cdi_attack, &resource.class)?;
            answer
                .iter_mut()
                .for_each(|c| c.cdi_devices = names.clone());
        }
        if let Some(hostile) = config.attack {
            attack::attack_answer(hostile, &resource.class, &mut answer)?;
        }
        Ok(answer)
    }

    fn preferred_allocation(name: String, request: PreferredRequest) -> Result<Vec<String>, Error> {
        let config = config();
        inject(config.faults.preferred_allocation, config.probe.as_deref())?;
        let resource = resource(&config, &name)?;
        let mut answer = prefer::preferred(&request, |id| devices::numa_node(&resource.class, id));
        if let Some(fault) = config.faults.preferred_allocation {
            prefer::break_answer(&mut answer, &request, fault);
        }
        Ok(answer)
    }

    fn pre_start(name: String, device_ids: Vec<String>) -> Result<(), Error> {
        let config = config();
        inject(config.faults.pre_start, config.probe.as_deref())?;
        let class = resource(&config, &name)?.class;
        if config.mark_pre_start {
            for id in &device_ids {
                sysfs::write_file(&format!("/sys/class/{class}/{id}/prestarted"), "1")?;
            }
        }
        log::log(
            LogLevel::Info,
            &format!("pre-start for {name}: {}", device_ids.join(",")),
        );
        Ok(())
    }
}

impl exports::wdp::device_plugin::lifecycle::Guest for Conformance {
    /// Marks each released device by writing `1` to `/sys/class/<class>/<id>/released`
    /// (which tests create and read), as a vendor would trigger a reset.
    fn release(name: String, device_ids: Vec<String>) -> Result<(), Error> {
        let config = config();
        inject(config.faults.release, config.probe.as_deref())?;
        let class = resource(&config, &name)?.class;
        for id in &device_ids {
            sysfs::write_file(&format!("/sys/class/{class}/{id}/released"), "1")?;
        }
        log::log(
            LogLevel::Info,
            &format!("released {name}: {}", device_ids.join(",")),
        );
        Ok(())
    }
}

impl exports::wdp::device_plugin::node_labels::Guest for Conformance {
    /// The configured labels, unchecked.
    fn labels() -> Result<Vec<(String, String)>, Error> {
        Ok(config().labels)
    }
}

export!(Conformance);
