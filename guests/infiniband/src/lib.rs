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
mod errors;
mod health;
mod json;
mod pools;
mod prefer;

wit_bindgen::generate!({ path: "../../wit", world: "device-plugin" });

use std::cell::RefCell;

use exports::wdp::device_plugin::plugin::Guest;
use wdp::device_plugin::log;
use wdp::device_plugin::types::{
    ContainerAllocation, Device, Error, LogLevel, PreferredRequest, ResourceOptions, ResourceSpec,
};

use config::{Config, Mode};

thread_local! {
    /// The configuration `configure` accepted. A component instance is single-threaded
    /// and `configure` runs once per instance before any other export.
    static CONFIG: RefCell<Config> = RefCell::new(Config::default());
    /// Per resource, the unhealthy devices already logged and why, so that a link that
    /// stays down is logged once per instance rather than on every rescan.
    static LOGGED: RefCell<Vec<(String, Problems)>> = const { RefCell::new(Vec::new()) };
}

/// Copy of the current configuration (small; keeps the borrow out of host calls).
fn config() -> Config {
    CONFIG.with(|c| c.borrow().clone())
}

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

/// Logs what turned unhealthy (or changed why) since the last call, and what recovered.
fn log_changes(resource: &str, problems: Problems) {
    LOGGED.with(|logged| {
        let mut logged = logged.borrow_mut();
        let before = match logged.iter().position(|(r, _)| r == resource) {
            Some(i) => logged.swap_remove(i).1,
            None => Vec::new(),
        };
        for (id, why) in &before {
            if !problems.iter().any(|(p, _)| p == id) {
                log::log(
                    LogLevel::Info,
                    &format!("{resource}: device {id} recovered (was: {why})"),
                );
            }
        }
        for (id, why) in &problems {
            if !before.iter().any(|(b, w)| b == id && w == why) {
                log::log(
                    LogLevel::Warn,
                    &format!("{resource}: device {id} is unhealthy: {why}"),
                );
            }
        }
        logged.push((resource.to_string(), problems));
    });
}

struct Infiniband;

impl Guest for Infiniband {
    fn configure(text: String) -> Result<(), Error> {
        let parsed = Config::parse(&text)?;
        CONFIG.with(|c| *c.borrow_mut() = parsed);
        Ok(())
    }

    fn resources() -> Result<Vec<ResourceSpec>, Error> {
        Ok(config()
            .pools
            .into_iter()
            .map(|pool| ResourceSpec {
                // Shared slots are interchangeable: there is nothing to prefer among them.
                options: ResourceOptions {
                    pre_start_required: false,
                    preferred_allocation_available: matches!(pool.mode, Mode::Exclusive(_)),
                },
                name: pool.resource_name,
            })
            .collect())
    }

    fn list_devices(resource: String) -> Result<Vec<Device>, Error> {
        let config = config();
        let index = pool_index(&config, &resource)?;
        let node = discover::node()?;
        let listed = pools::devices(&config, index, &node);
        let problems = listed
            .iter()
            .filter_map(|l| Some((l.device.id.clone(), l.problem.clone()?)))
            .collect();
        log_changes(&resource, problems);
        Ok(listed.into_iter().map(|l| l.device).collect())
    }

    fn allocate(
        resource: String,
        containers: Vec<Vec<String>>,
    ) -> Result<Vec<ContainerAllocation>, Error> {
        let config = config();
        let index = pool_index(&config, &resource)?;
        allocate::allocate(&config, index, &containers)
    }

    fn preferred_allocation(
        resource: String,
        request: PreferredRequest,
    ) -> Result<Vec<String>, Error> {
        let config = config();
        let index = pool_index(&config, &resource)?;
        let Some(Mode::Exclusive(unit)) = config.pools.get(index).map(|p| p.mode) else {
            return Err(Error::Other(format!(
                "`{resource}` is a shared pool: it does not advertise preferred allocation"
            )));
        };
        let node = discover::node()?;
        let members = pools::members(&config, index, &node.hcas);
        let items = pools::items(unit, &members);
        Ok(prefer::preferred(&request, |id| {
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

    fn pre_start(resource: String, _device_ids: Vec<String>) -> Result<(), Error> {
        pool_index(&config(), &resource).map(|_| ())
    }
}

export!(Infiniband);
