//! A guest as a vendor built it against `wdp:device-plugin@0.1.0`, the first published
//! contract, with that WIT frozen beside it (`wit/`, copied from the commit that
//! published it). The host promises that guests of any `0.1.x` keep linking; this
//! guest is how the tests hold it to that: it uses every 0.1.0 import (sysfs, pci,
//! devfs, log) and every export.
//!
//! It advertises `example.com/compat`, one device per PCI function of the vendor ID in
//! its configuration (`{"vendor": 4318}`; default 0x10de), and answers an allocation
//! with `COMPAT_VISIBLE_DEVICES` and the function's sysfs `vendor` attribute, read
//! through `sysfs.read-file`.

wit_bindgen::generate!({
    path: "wit",
    world: "device-plugin",
});

use std::cell::Cell;

use exports::wdp::device_plugin::plugin::Guest;
use wdp::device_plugin::types::{
    ContainerAllocation, Device, Error, Health, LogLevel, PreferredRequest, ResourceOptions,
    ResourceSpec,
};
use wdp::device_plugin::{devfs, log, pci, sysfs};

const RESOURCE: &str = "example.com/compat";

thread_local! {
    static VENDOR: Cell<u16> = const { Cell::new(0x10de) };
}

struct Compat;

fn functions() -> Result<Vec<String>, Error> {
    let vendor = VENDOR.with(Cell::get);
    Ok(pci::list_devices()?
        .into_iter()
        .filter(|d| d.vendor == vendor)
        .map(|d| d.address)
        .collect())
}

fn known(resource: &str) -> Result<(), Error> {
    if resource == RESOURCE {
        Ok(())
    } else {
        Err(Error::NotFound(format!("no resource {resource}")))
    }
}

impl Guest for Compat {
    fn configure(config: String) -> Result<(), Error> {
        let config = config.trim();
        if config.is_empty() {
            return Ok(());
        }
        // Deliberately no JSON crate: `{"vendor": N}` is all there is.
        let vendor = config
            .trim_start_matches('{')
            .trim_end_matches('}')
            .split_once(':')
            .filter(|(key, _)| key.trim() == "\"vendor\"")
            .and_then(|(_, value)| value.trim().parse::<u16>().ok())
            .ok_or_else(|| {
                Error::InvalidConfig(format!("expected {{\"vendor\": N}}, got {config}"))
            })?;
        VENDOR.with(|v| v.set(vendor));
        Ok(())
    }

    fn resources() -> Result<Vec<ResourceSpec>, Error> {
        Ok(vec![ResourceSpec {
            name: RESOURCE.into(),
            options: ResourceOptions {
                pre_start_required: true,
                preferred_allocation_available: true,
            },
        }])
    }

    fn list_devices(resource: String) -> Result<Vec<Device>, Error> {
        known(&resource)?;
        // devfs as a 0.1.0 guest uses it: a node that is missing is not an error.
        let _ = devfs::lookup("/dev/null")?;
        Ok(functions()?
            .into_iter()
            .map(|id| Device {
                id,
                health: Health::Healthy,
                numa_nodes: vec![],
            })
            .collect())
    }

    fn allocate(
        resource: String,
        containers: Vec<Vec<String>>,
    ) -> Result<Vec<ContainerAllocation>, Error> {
        known(&resource)?;
        let present = functions()?;
        containers
            .into_iter()
            .map(|ids| {
                let mut vendors = Vec::new();
                for id in &ids {
                    if !present.contains(id) {
                        return Err(Error::NotFound(format!("no device {id}")));
                    }
                    let vendor = sysfs::read_file(&format!("/sys/bus/pci/devices/{id}/vendor"))?;
                    vendors.push(vendor.trim().to_string());
                }
                Ok(ContainerAllocation {
                    envs: vec![
                        ("COMPAT_VISIBLE_DEVICES".into(), ids.join(",")),
                        ("COMPAT_VENDOR".into(), vendors.join(",")),
                    ],
                    mounts: vec![],
                    devices: vec![],
                    annotations: vec![],
                    cdi_devices: vec![],
                })
            })
            .collect()
    }

    fn preferred_allocation(
        resource: String,
        request: PreferredRequest,
    ) -> Result<Vec<String>, Error> {
        known(&resource)?;
        let mut chosen = request.must_include;
        for id in request.available {
            if chosen.len() >= request.size as usize {
                break;
            }
            if !chosen.contains(&id) {
                chosen.push(id);
            }
        }
        Ok(chosen)
    }

    fn pre_start(resource: String, device_ids: Vec<String>) -> Result<(), Error> {
        known(&resource)?;
        log::log(
            LogLevel::Info,
            &format!("pre-start {}", device_ids.join(",")),
        );
        Ok(())
    }
}

export!(Compat);
