//! The CDI spec for `cdi-cri`: one device per GPU, named by UUID, with its device node;
//! the driver's control nodes as spec-wide edits. Written from typed records (every
//! string escaped by `json::write_str`); the host validates the result with the CNCF
//! `container-device-interface` crate, confines it to the guest's granted kinds and
//! device nodes, and writes it atomically.

use crate::enumerate::Gpu;
use crate::errors::context;
use crate::json::write_str;
use crate::wdp::device_plugin::cdi;
use crate::wdp::device_plugin::types::Error;

/// The oldest CDI version with everything used here that current runtimes read.
const CDI_VERSION: &str = "0.6.0";

/// One CDI device: its name and the device nodes it adds.
struct Device<'a> {
    name: &'a str,
    nodes: Vec<String>,
}

/// `kind=name`, the form `cdi-devices` carries.
pub fn qualified_name(kind: &str, name: &str) -> String {
    format!("{kind}={name}")
}

/// `{"deviceNodes":[{"path":…},…]}`
fn write_edits(out: &mut String, nodes: &[String]) {
    out.push_str(r#"{"deviceNodes":["#);
    for (i, path) in nodes.iter().enumerate() {
        if i > 0 {
            out.push(',');
        }
        out.push_str(r#"{"path":"#);
        write_str(out, path);
        out.push('}');
    }
    out.push_str("]}");
}

/// The spec for `gpus` as JSON.
pub fn spec_json(kind: &str, gpus: &[Gpu], control: &[&str]) -> String {
    let devices: Vec<Device> = gpus
        .iter()
        .map(|g| Device {
            name: &g.uuid,
            nodes: vec![g.dev_path()],
        })
        .collect();
    let mut out = String::from(r#"{"cdiVersion":"#);
    write_str(&mut out, CDI_VERSION);
    out.push_str(r#","kind":"#);
    write_str(&mut out, kind);
    out.push_str(r#","devices":["#);
    for (i, device) in devices.iter().enumerate() {
        if i > 0 {
            out.push(',');
        }
        out.push_str(r#"{"name":"#);
        write_str(&mut out, device.name);
        out.push_str(r#","containerEdits":"#);
        write_edits(&mut out, &device.nodes);
        out.push('}');
    }
    out.push_str(r#"],"containerEdits":"#);
    let control: Vec<String> = control.iter().map(ToString::to_string).collect();
    write_edits(&mut out, &control);
    out.push('}');
    out
}

/// Writes (replaces) the spec of `kind` for every current GPU; returns the qualified
/// names the host confirmed.
pub fn write_spec(kind: &str, gpus: &[Gpu], control: &[&str]) -> Result<Vec<String>, Error> {
    cdi::write_spec(&spec_json(kind, gpus, control))
        .map_err(|e| context(e, &format!("writing the CDI spec for {kind}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_device_per_gpu_and_shared_control_nodes() {
        let gpu = Gpu {
            address: "0000:18:00.0".into(),
            uuid: "GPU-1".into(),
            minor: 2,
            model: String::new(),
            numa_node: None,
            sysfs_path: String::new(),
        };
        let json = spec_json(
            "k8s.device-plugin.nvidia.com/gpu",
            &[gpu],
            &["/dev/nvidiactl"],
        );
        assert_eq!(
            json,
            r#"{"cdiVersion":"0.6.0","kind":"k8s.device-plugin.nvidia.com/gpu","devices":[{"name":"GPU-1","containerEdits":{"deviceNodes":[{"path":"/dev/nvidia2"}]}}],"containerEdits":{"deviceNodes":[{"path":"/dev/nvidiactl"}]}}"#
        );
    }
}
