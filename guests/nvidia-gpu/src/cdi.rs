//! The CDI spec for `cdi-cri`: one device per GPU, named by UUID, with its device node;
//! the driver's control nodes as spec-wide edits. Built with the SDK's `cdi::Spec`
//! (every string escaped); the host validates the result with the CNCF
//! `container-device-interface` crate, confines it to the guest's granted kinds and
//! device nodes, and writes it atomically.

use crate::enumerate::Gpu;
use wdp_guest_sdk::cdi::Spec;
use wdp_guest_sdk::types::Error;

pub use wdp_guest_sdk::cdi::qualified_name;

/// The spec for `gpus`.
fn spec(kind: &str, gpus: &[Gpu], control: &[&str]) -> Spec {
    let mut spec = Spec::new(kind);
    for g in gpus {
        spec.device(&g.uuid, vec![g.dev_path()]);
    }
    spec.common_nodes(control.iter().map(ToString::to_string).collect());
    spec
}

/// Writes (replaces) the spec of `kind` for every current GPU; returns the qualified
/// names the host confirmed.
pub fn write_spec(kind: &str, gpus: &[Gpu], control: &[&str]) -> Result<Vec<String>, Error> {
    spec(kind, gpus, control).write()
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
