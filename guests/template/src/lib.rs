//! Template guest: advertises the widgets under `/sys/class/widget/` as
//! `example.com/widget` (both configurable). Each widget directory has a `health` file
//! (`ok` when healthy) and may have a `numa_node`; its device node is
//! `/dev/widget/<id>`. A container gets its widgets' nodes and
//! `WIDGET_VISIBLE_DEVICES=<id>,...`.
//!
//! Copy this crate to start a vendor guest: `config` reads the operator's file, `widgets`
//! looks at the node, and this file answers the host. See `README.md` beside it.

mod config;
mod widgets;

use wdp_guest_sdk::Plugin;
use wdp_guest_sdk::alloc::Allocation;
use wdp_guest_sdk::types::{ContainerAllocation, Device, Error, ResourceOptions, ResourceSpec};

use config::Config;

/// Tells the container which widgets it got, for software that cannot list `/dev`.
const VISIBLE_DEVICES: &str = "WIDGET_VISIBLE_DEVICES";

/// The guest: built by `configure`, kept by the SDK for the instance's lifetime.
struct Widgets {
    config: Config,
}

impl Widgets {
    /// Refuses a resource this guest does not serve (the host never sends one, but the
    /// contract makes the guest the judge).
    fn check_resource(&self, resource: &str) -> Result<(), Error> {
        if resource == self.config.resource_name {
            Ok(())
        } else {
            Err(Error::InvalidArgument(format!(
                "unknown resource `{resource}`: this guest serves {}",
                self.config.resource_name
            )))
        }
    }
}

impl Plugin for Widgets {
    fn configure(text: &str) -> Result<Self, Error> {
        Ok(Widgets {
            config: Config::parse(text)?,
        })
    }

    fn resources(&self) -> Result<Vec<ResourceSpec>, Error> {
        Ok(vec![ResourceSpec {
            name: self.config.resource_name.clone(),
            options: ResourceOptions {
                pre_start_required: false,
                preferred_allocation_available: false,
            },
        }])
    }

    fn list_devices(&mut self, resource: &str) -> Result<Vec<Device>, Error> {
        self.check_resource(resource)?;
        widgets::list(&self.config.class)
    }

    fn allocate(
        &mut self,
        resource: &str,
        containers: &[Vec<String>],
    ) -> Result<Vec<ContainerAllocation>, Error> {
        self.check_resource(resource)?;
        containers
            .iter()
            .map(|ids| {
                let mut answer = Allocation::new().env(VISIBLE_DEVICES, &ids.join(","));
                for id in ids {
                    answer = answer.device(&widgets::node(&self.config.class, id)?);
                }
                Ok(answer.build())
            })
            .collect()
    }
}

wdp_guest_sdk::export!(Widgets);
