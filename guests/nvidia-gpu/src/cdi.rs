//! The CDI spec for `cdi-cri`: one device per GPU or MIG device, named by its UUID, with
//! its device nodes; the driver's control nodes as spec-wide edits. Built with the SDK's `cdi::Spec`
//! (every string escaped); the host validates the result with the CNCF
//! `container-device-interface` crate, confines it to the guest's granted kinds and
//! device nodes, and writes it atomically.

use wdp_guest_sdk::cdi::Spec;
use wdp_guest_sdk::types::Error;

pub use wdp_guest_sdk::cdi::qualified_name;

/// The spec for `devices` (name, nodes).
fn spec(kind: &str, devices: &[(String, Vec<String>)], control: &[&str]) -> Spec {
    let mut spec = Spec::new(kind);
    for (name, nodes) in devices {
        spec.device(name, nodes.clone());
    }
    spec.common_nodes(control.iter().map(ToString::to_string).collect());
    spec
}

/// Writes (replaces) the spec of `kind` for every current device; returns the qualified
/// names the host confirmed.
pub fn write_spec(
    kind: &str,
    devices: &[(String, Vec<String>)],
    control: &[&str],
) -> Result<Vec<String>, Error> {
    spec(kind, devices, control).write()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_device_per_gpu_and_shared_control_nodes() {
        let gpu = ("GPU-1".to_string(), vec!["/dev/nvidia2".to_string()]);
        let json = spec(
            "k8s.device-plugin.nvidia.com/gpu",
            &[gpu],
            &["/dev/nvidiactl"],
        )
        .to_json();
        assert_eq!(
            json,
            r#"{"cdiVersion":"0.5.0","kind":"k8s.device-plugin.nvidia.com/gpu","devices":[{"name":"GPU-1","containerEdits":{"deviceNodes":[{"path":"/dev/nvidia2"}]}}],"containerEdits":{"deviceNodes":[{"path":"/dev/nvidiactl"}]}}"#
        );
    }
}
