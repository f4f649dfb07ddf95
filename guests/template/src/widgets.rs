//! The widgets of a class: the entries of `/sys/class/<class>/`, each with a `health`
//! file (`ok` = healthy), an optional `numa_node` file and the node `/dev/<class>/<id>`.

use wdp_guest_sdk::attr;
use wdp_guest_sdk::dev;
use wdp_guest_sdk::host::sysfs;
use wdp_guest_sdk::types::{Device, Error, Health};

/// Every widget of the class, in ID order; no class directory means no widgets.
pub fn list(class: &str) -> Result<Vec<Device>, Error> {
    let dir = format!("/sys/class/{class}");
    let mut devices = Vec::new();
    for id in attr::list_or_empty(&dir)? {
        // A widget whose health cannot be read is not offered as healthy.
        let health = match sysfs::read_file(&format!("{dir}/{id}/health")) {
            Ok(text) if text.trim() == "ok" => Health::Healthy,
            _ => Health::Unhealthy,
        };
        let numa_nodes = sysfs::read_file(&format!("{dir}/{id}/numa_node"))
            .ok()
            .and_then(|text| attr::numa_node(&text))
            .into_iter()
            .collect();
        devices.push(Device {
            id,
            health,
            numa_nodes,
        });
    }
    Ok(devices)
}

/// The device node of widget `id`, which must exist: a container is not started without
/// the widget it was promised.
pub fn node(class: &str, id: &str) -> Result<String, Error> {
    if !is_plain_name(id) {
        return Err(Error::InvalidArgument(format!("`{id}` is not a widget ID")));
    }
    let path = format!("/dev/{class}/{id}");
    if dev::present(&path) {
        Ok(path)
    } else {
        Err(Error::NotFound(format!("widget {id}: {path} is missing")))
    }
}

/// A single path component: IDs become parts of paths.
pub fn is_plain_name(id: &str) -> bool {
    !id.is_empty() && id != "." && id != ".." && !id.contains('/')
}

#[cfg(test)]
mod tests {
    use super::is_plain_name;

    #[test]
    fn ids_are_single_path_components() {
        assert!(is_plain_name("w0"));
        for bad in ["", ".", "..", "a/b", "../w0"] {
            assert!(!is_plain_name(bad), "{bad}");
        }
    }
}
