//! Devices of a class: the entries of `/sys/class/<class>/`, each with a `health` file
//! (`ok` = healthy) and an optional `numa_node` file.

use crate::wdp::device_plugin::sysfs;
use crate::wdp::device_plugin::types::{Device, Error, Health};

/// Every device of the class, sorted by ID; a missing class directory means none.
pub fn list(class: &str) -> Result<Vec<Device>, Error> {
    let dir = format!("/sys/class/{class}");
    let ids = match sysfs::list_dir(&dir) {
        Ok(ids) => ids,
        Err(Error::NotFound(_)) => return Ok(Vec::new()),
        Err(e) => return Err(e),
    };
    let mut devices = Vec::with_capacity(ids.len());
    for id in ids {
        let health = match sysfs::read_file(&format!("{dir}/{id}/health")) {
            Ok(text) if text.trim() == "ok" => Health::Healthy,
            // Removed between listing and reading: gone, not unhealthy.
            Err(Error::NotFound(_)) if !exists(&format!("{dir}/{id}")) => continue,
            _ => Health::Unhealthy,
        };
        let numa_nodes = numa_node(class, &id).into_iter().collect();
        devices.push(Device {
            id,
            health,
            numa_nodes,
        });
    }
    Ok(devices)
}

/// 20,000 healthy devices: more than the host accepts in one list.
pub fn huge() -> Vec<Device> {
    (0..20_000)
        .map(|i| Device {
            id: format!("huge-{i}"),
            health: Health::Healthy,
            numa_nodes: Vec::new(),
        })
        .collect()
}

/// The device's NUMA node; none when the file is missing, says -1 or is not a number.
pub fn numa_node(class: &str, id: &str) -> Option<u32> {
    let text = sysfs::read_file(&format!("/sys/class/{class}/{id}/numa_node")).ok()?;
    text.trim().parse::<u32>().ok()
}

fn exists(dir: &str) -> bool {
    !matches!(sysfs::list_dir(dir), Err(Error::NotFound(_)))
}
