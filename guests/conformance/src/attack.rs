//! A hostile vendor: answers and CDI specs that try to give a container more than the
//! guest's policy grants (every GPU, a disk, a host interface, a writable host path,
//! another vendor's CDI devices). The host must refuse each before the kubelet or a
//! runtime sees it; tests name the attack in the configuration.

use serde::Deserialize;

use crate::wdp::device_plugin::cdi;
use crate::wdp::device_plugin::types::{ContainerAllocation, DeviceSpec, Error, Mount};

/// An answer that reaches past the grant. Paths named `evil` are links the test puts
/// in the node (`/dev/<class>/evil`, `/opt/<class>/evil`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Attack {
    /// `NVIDIA_VISIBLE_DEVICES=all`: the NVIDIA runtime hook would add every GPU.
    GpuEnv,
    /// `LD_PRELOAD`: code of the guest's choosing in every process of the container.
    LdPreload,
    /// `cdi.k8s.io/<x>: nvidia.com/gpu=all`: containerd and CRI-O inject CDI devices.
    CdiAnnotation,
    /// `io.kubernetes.cri-o.Devices`: CRI-O adds host devices.
    CrioAnnotation,
    /// An annotation key the policy does not grant.
    UngrantedAnnotation,
    /// `nvidia.com/gpu=all`: another vendor's CDI spec on the node.
    ForeignCdiName,
    /// A CDI name of a granted kind that no spec this guest wrote defines.
    UnwrittenCdiName,
    /// `/etc` mounted read-write at `/etc`.
    EtcMount,
    /// The granted mount made writable.
    WritableMount,
    /// `/opt/<class>/evil`, a link to `/etc`, mounted.
    LinkMount,
    /// `/dev/null` over the NVIDIA hook's list, `/var/run/nvidia-container-devices/all`.
    ControlPathMount,
    /// A mount over the container's `/`.
    RootMount,
    /// `/dev/nvidia0` as a device spec.
    GpuDevice,
    /// `/dev/<class>/evil`, a link to `/dev/nvidia0`, as a device spec.
    LinkDevice,
    /// The error message is a forged log line: newlines, terminal escapes, 10 KiB.
    ForgedText,
}

/// A CDI spec that reaches past the grant; the guest writes it through the host before
/// answering, and answers with whatever names the host returned.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum CdiAttack {
    /// A `createContainer` hook running `/bin/sh` on the host.
    Hooks,
    /// The host's `eth0` moved into the container.
    NetDevices,
    /// The container's processes added to group 0.
    AdditionalGids,
    /// `/etc` bind-mounted read-write.
    EtcMount,
    /// `/dev/nvidia0` as a device node.
    GpuNode,
    /// `/dev/<class>/evil`, a link to `/dev/nvidia0`, as a device node.
    LinkNode,
    /// A granted node claimed to be block device 8:0 (`sda`).
    WrongNumbers,
    /// A spec of kind `nvidia.com/gpu`.
    ForeignKind,
    /// `LD_PRELOAD` in the spec's env.
    LdPreloadEnv,
    /// A field the host does not know.
    UnknownField,
}

/// Rewrites a correct answer into the attack.
pub fn attack_answer(
    attack: Attack,
    class: &str,
    answer: &mut [ContainerAllocation],
) -> Result<(), Error> {
    if attack == Attack::ForgedText {
        let forged = format!(
            "denied\nINFO fake log line: all GPUs healthy\u{1b}[2J\u{202e}{}",
            "x".repeat(10 * 1024)
        );
        return Err(Error::Other(forged));
    }
    for container in answer.iter_mut() {
        match attack {
            Attack::GpuEnv => container
                .envs
                .push(("NVIDIA_VISIBLE_DEVICES".into(), "all".into())),
            Attack::LdPreload => container
                .envs
                .push(("LD_PRELOAD".into(), "/tmp/evil.so".into())),
            Attack::CdiAnnotation => container
                .annotations
                .push(("cdi.k8s.io/widget".into(), "nvidia.com/gpu=all".into())),
            Attack::CrioAnnotation => container.annotations.push((
                "io.kubernetes.cri-o.Devices".into(),
                "/dev/sda:/dev/sda:rwm".into(),
            )),
            Attack::UngrantedAnnotation => container
                .annotations
                .push(("other.com/x".into(), "1".into())),
            Attack::ForeignCdiName => container.cdi_devices.push("nvidia.com/gpu=all".into()),
            Attack::UnwrittenCdiName => container
                .cdi_devices
                .push(format!("example.com/{class}=w99")),
            Attack::EtcMount => container.mounts.push(mount("/etc", "/etc", false)),
            Attack::WritableMount => container.mounts.push(mount(
                &format!("/opt/{class}"),
                &format!("/opt/{class}"),
                false,
            )),
            Attack::LinkMount => container.mounts.push(mount(
                &format!("/opt/{class}/evil"),
                &format!("/opt/{class}/evil"),
                true,
            )),
            Attack::ControlPathMount => container.mounts.push(mount(
                "/dev/null",
                "/var/run/nvidia-container-devices/all",
                true,
            )),
            Attack::RootMount => container
                .mounts
                .push(mount(&format!("/opt/{class}"), "/", true)),
            Attack::GpuDevice => container.devices.push(device("/dev/nvidia0")),
            Attack::LinkDevice => container
                .devices
                .push(device(&format!("/dev/{class}/evil"))),
            Attack::ForgedText => {}
        }
    }
    Ok(())
}

fn mount(host: &str, container: &str, read_only: bool) -> Mount {
    Mount {
        container_path: container.into(),
        host_path: host.into(),
        read_only,
    }
}

fn device(host: &str) -> DeviceSpec {
    DeviceSpec {
        container_path: host.into(),
        host_path: host.into(),
        permissions: "rwm".into(),
    }
}

/// Writes the hostile spec through the host; the host's refusal is the guest's error.
pub fn write_hostile_spec(attack: CdiAttack, class: &str) -> Result<Vec<String>, Error> {
    let kind = match attack {
        CdiAttack::ForeignKind => "nvidia.com/gpu".to_string(),
        _ => format!("example.com/{class}"),
    };
    let own = format!(r#"{{"path":"/dev/{class}/w0"}}"#);
    let edits = match attack {
        CdiAttack::Hooks => format!(
            r#"{{"deviceNodes":[{own}],"hooks":[{{"hookName":"createContainer","path":"/bin/sh","args":["sh","-c","id"]}}]}}"#
        ),
        CdiAttack::NetDevices => format!(
            r#"{{"deviceNodes":[{own}],"netDevices":[{{"hostInterfaceName":"eth0","name":"eth0"}}]}}"#
        ),
        CdiAttack::AdditionalGids => format!(r#"{{"deviceNodes":[{own}],"additionalGids":[0]}}"#),
        CdiAttack::EtcMount => format!(
            r#"{{"deviceNodes":[{own}],"mounts":[{{"hostPath":"/etc","containerPath":"/etc","options":["rw","rbind"]}}]}}"#
        ),
        CdiAttack::GpuNode => r#"{"deviceNodes":[{"path":"/dev/nvidia0"}]}"#.to_string(),
        CdiAttack::LinkNode => format!(r#"{{"deviceNodes":[{{"path":"/dev/{class}/evil"}}]}}"#),
        CdiAttack::WrongNumbers => format!(
            r#"{{"deviceNodes":[{{"path":"/dev/{class}/w0","type":"b","major":8,"minor":0}}]}}"#
        ),
        CdiAttack::ForeignKind => r#"{"deviceNodes":[{"path":"/dev/nvidia0"}]}"#.to_string(),
        CdiAttack::LdPreloadEnv => {
            format!(r#"{{"deviceNodes":[{own}],"env":["LD_PRELOAD=/tmp/evil.so"]}}"#)
        }
        CdiAttack::UnknownField => format!(r#"{{"deviceNodes":[{own}],"createRuntime":["x"]}}"#),
    };
    let spec = format!(
        r#"{{"cdiVersion":"0.6.0","kind":"{kind}","devices":[{{"name":"all","containerEdits":{edits}}}]}}"#
    );
    cdi::write_spec(&spec)
}
