//! Reference guest for RDMA HCAs (Mellanox / NVIDIA ConnectX, InfiniBand or RoCE):
//! advertises configured pools of HCAs as extended resources, shared (a fixed number of
//! slots, each giving the whole pool) or exclusive (one device per HCA or per port), with
//! link-state health, NUMA topology and a switch-aware preferred allocation.
//!
//! Everything it knows about the node comes through the host imports: the PCI list,
//! `/sys/class/infiniband*`, the PCI functions' `net/` directories and `/dev` lookups.
//! Nothing here panics on node or operator input; failures go back as WIT `error`s.

mod allocate;
mod config;
mod discover;
mod health;
mod json;
mod pools;
mod prefer;

use wdp_guest_sdk::Plugin;
use wdp_guest_sdk::types::{
    ContainerAllocation, Device, Error, PreferredRequest, ResourceOptions, ResourceSpec,
};

use config::{Config, Mode};

/// The index of the pool serving `resource`.
fn pool_index(config: &Config, resource: &str) -> Result<usize, Error> {
    config
        .pools
        .iter()
        .position(|p| p.resource_name == resource)
        .ok_or_else(|| {
            Error::InvalidArgument(format!(
                "unknown resource `{resource}`: not a pool in this guest's configuration"
            ))
        })
}

/// Each unhealthy device ID of a resource and why.
type Problems = Vec<(String, String)>;

/// One instance's state: the configuration `configure` accepted and, per resource, the
/// unhealthy devices already logged and why, so that a link that stays down is logged
/// once per instance rather than on every rescan.
struct Infiniband {
    config: Config,
    logged: Vec<(String, Problems)>,
}

impl Infiniband {
    /// Logs what turned unhealthy (or changed why) since the last call, and what recovered.
    fn log_changes(&mut self, resource: &str, problems: Problems) {
        let logged = &mut self.logged;
        let before = match logged.iter().position(|(r, _)| r == resource) {
            Some(i) => logged.swap_remove(i).1,
            None => Vec::new(),
        };
        for (id, why) in &before {
            if !problems.iter().any(|(p, _)| p == id) {
                wdp_guest_sdk::log::info(&format!(
                    "{resource}: device {id} recovered (was: {why})"
                ));
            }
        }
        for (id, why) in &problems {
            if !before.iter().any(|(b, w)| b == id && w == why) {
                wdp_guest_sdk::log::warn(&format!("{resource}: device {id} is unhealthy: {why}"));
            }
        }
        logged.push((resource.to_string(), problems));
    }
}

impl Plugin for Infiniband {
    fn configure(text: &str) -> Result<Self, Error> {
        Ok(Infiniband {
            config: Config::parse(text)?,
            logged: Vec::new(),
        })
    }

    fn resources(&self) -> Result<Vec<ResourceSpec>, Error> {
        Ok(self
            .config
            .pools
            .iter()
            .map(|pool| ResourceSpec {
                // Shared slots are interchangeable: there is nothing to prefer among them.
                options: ResourceOptions {
                    pre_start_required: false,
                    preferred_allocation_available: matches!(pool.mode, Mode::Exclusive(_)),
                },
                name: pool.resource_name.clone(),
            })
            .collect())
    }

    fn list_devices(&mut self, resource: &str) -> Result<Vec<Device>, Error> {
        let index = pool_index(&self.config, resource)?;
        let node = discover::node()?;
        let listed = pools::devices(&self.config, index, &node);
        let problems = listed
            .iter()
            .filter_map(|l| Some((l.device.id.clone(), l.problem.clone()?)))
            .collect();
        self.log_changes(resource, problems);
        Ok(listed.into_iter().map(|l| l.device).collect())
    }

    fn allocate(
        &mut self,
        resource: &str,
        containers: &[Vec<String>],
    ) -> Result<Vec<ContainerAllocation>, Error> {
        let index = pool_index(&self.config, resource)?;
        allocate::allocate(&self.config, index, containers)
    }

    fn preferred_allocation(
        &mut self,
        resource: &str,
        request: &PreferredRequest,
    ) -> Result<Vec<String>, Error> {
        let config = &self.config;
        let index = pool_index(config, resource)?;
        let Some(Mode::Exclusive(unit)) = config.pools.get(index).map(|p| p.mode) else {
            return Err(Error::Other(format!(
                "`{resource}` is a shared pool: it does not advertise preferred allocation"
            )));
        };
        let node = discover::node()?;
        let members = pools::members(config, index, &node.hcas);
        let items = pools::items(unit, &members);
        Ok(prefer::preferred(request, |id| {
            let item = items.iter().find(|i| i.id() == id)?;
            let hca = item.hca();
            let mut location = vec![
                hca.numa_node
                    .map_or_else(|| "numa:?".to_string(), |n| format!("numa:{n}")),
            ];
            location.extend(
                hca.sysfs_path
                    .split('/')
                    .filter(|c| !c.is_empty())
                    .map(String::from),
            );
            if let pools::Item::Port(_, port) = item {
                location.push(format!("port:{}", port.number));
            }
            Some(location)
        }))
    }

    fn pre_start(&mut self, resource: &str, _device_ids: &[String]) -> Result<(), Error> {
        pool_index(&self.config, resource).map(|_| ())
    }
}

wdp_guest_sdk::export!(Infiniband);
