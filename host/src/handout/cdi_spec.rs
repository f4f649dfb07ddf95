//! A CDI spec a guest asks the host to write, held to the same allowlist as an answer.
//!
//! The runtime applies a spec's edits as root for every container that names one of its
//! devices, so a spec may carry only what an answer may: device nodes (granted once
//! resolved; `type`, `major` and `minor`, where given, must be the real node's, and the
//! host fills them in from the node), bind mounts (granted, read-only unless granted
//! writable, options from a short safe list) and env (granted names). Hooks (programs
//! run on the host), `netDevices` (host interfaces moved into the container),
//! `intelRdt`, `additionalGids`, ownership and mode overrides, annotations and any field
//! the host does not know are refused. The host writes the spec it checked, re-encoded,
//! never the guest's text.

use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::{NodeRoot, Refused, env, node_paths};
use crate::grant::Grant;
use crate::guest_text;
use node_paths::FileKind;

/// Mount options a spec may use; `ro` is required unless the grant says writable.
pub const SAFE_MOUNT_OPTIONS: &[&str] = &[
    "ro", "rw", "bind", "rbind", "nosuid", "nodev", "noexec", "private", "rprivate", "slave",
    "rslave",
];

/// Fields refused with their own reason, wherever they appear.
const DANGEROUS: &[(&str, &str)] = &[
    ("hooks", "hooks run programs on the host as root"),
    (
        "netDevices",
        "netDevices move host network interfaces into the container",
    ),
    (
        "intelRdt",
        "intelRdt changes the host's cache and memory-bandwidth allocation",
    ),
    (
        "additionalGids",
        "additionalGids add the container's processes to host groups",
    ),
];

/// A spec that passed: its kind and the JSON the host writes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CheckedSpec {
    pub kind: String,
    pub json: String,
}

#[derive(Debug, Deserialize, Serialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct Spec {
    cdi_version: String,
    kind: String,
    devices: Vec<Device>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    container_edits: Option<Edits>,
}

#[derive(Debug, Deserialize, Serialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct Device {
    name: String,
    container_edits: Edits,
}

#[derive(Debug, Default, Deserialize, Serialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct Edits {
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    env: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    device_nodes: Vec<DeviceNode>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    mounts: Vec<SpecMount>,
}

#[derive(Debug, Deserialize, Serialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct DeviceNode {
    path: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    host_path: Option<String>,
    #[serde(default, rename = "type", skip_serializing_if = "Option::is_none")]
    kind: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    major: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    minor: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    permissions: Option<String>,
}

#[derive(Debug, Deserialize, Serialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct SpecMount {
    host_path: String,
    container_path: String,
    #[serde(default, rename = "type", skip_serializing_if = "Option::is_none")]
    kind: Option<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    options: Vec<String>,
}

/// Checks `text` against the grant; returns the spec to write.
pub fn check(root: &NodeRoot, grant: &Grant, text: &str) -> Result<CheckedSpec, Refused> {
    let value: Value = serde_json::from_str(text).map_err(|e| {
        Refused::CdiSpec(format!("not JSON: {}", guest_text::clean(&e.to_string())))
    })?;
    refuse_dangerous(&value, "spec")?;
    let mut spec: Spec = serde_json::from_value(value).map_err(|e| {
        Refused::CdiSpec(format!(
            "{} (only cdiVersion, kind, devices[].name, containerEdits.env, .deviceNodes and .mounts are allowed)",
            guest_text::clean(&e.to_string())
        ))
    })?;
    if !grant.allows_cdi_kind(&spec.kind) {
        return Err(Refused::CdiSpec(format!(
            "kind {} is not among the policy's cdiKinds",
            guest_text::quote(&spec.kind)
        )));
    }
    let mut seen = node_paths::Resolutions::default();
    if let Some(edits) = &mut spec.container_edits {
        check_edits(root, &mut seen, grant, edits)?;
    }
    for device in &mut spec.devices {
        check_edits(root, &mut seen, grant, &mut device.container_edits)?;
    }
    let json = serde_json::to_string(&spec)
        .map_err(|e| Refused::CdiSpec(format!("cannot encode the checked spec: {e}")))?;
    Ok(CheckedSpec {
        kind: spec.kind,
        json,
    })
}

/// Names the first dangerous field anywhere in the document, with why it is refused.
fn refuse_dangerous(value: &Value, at: &str) -> Result<(), Refused> {
    match value {
        Value::Object(map) => {
            for (key, inner) in map {
                if let Some((_, why)) = DANGEROUS.iter().find(|(k, _)| k == key) {
                    return Err(Refused::CdiSpec(format!("{at}.{key}: {why}; refused")));
                }
                refuse_dangerous(inner, &format!("{at}.{}", guest_text::clean_to(key, 64)))?;
            }
            Ok(())
        }
        Value::Array(items) => items
            .iter()
            .enumerate()
            .try_for_each(|(i, v)| refuse_dangerous(v, &format!("{at}[{i}]"))),
        _ => Ok(()),
    }
}

fn check_edits(
    root: &NodeRoot,
    seen: &mut node_paths::Resolutions,
    grant: &Grant,
    edits: &mut Edits,
) -> Result<(), Refused> {
    for entry in &edits.env {
        let (key, value) = entry
            .split_once('=')
            .ok_or_else(|| Refused::env(entry, "CDI env entries are KEY=VALUE"))?;
        env::check(grant, key, value)?;
    }
    for node in &mut edits.device_nodes {
        check_node(root, seen, grant, node)?;
    }
    for mount in &mut edits.mounts {
        check_mount(root, seen, grant, mount)?;
    }
    Ok(())
}

fn check_node(
    root: &NodeRoot,
    seen: &mut node_paths::Resolutions,
    grant: &Grant,
    node: &mut DeviceNode,
) -> Result<(), Refused> {
    let host = node.host_path.clone().unwrap_or_else(|| node.path.clone());
    let file = node_paths::check_device(
        root,
        seen,
        grant,
        &host,
        &node.path,
        node.permissions.as_deref(),
    )?;
    let FileKind::Device { kind, numbers } = file.kind else {
        return Err(Refused::device(&host, "not a device node"));
    };
    if let Some(given) = &node.kind
        && given != kind.letter()
    {
        return Err(Refused::device(
            &host,
            format!(
                "type {} but the node is of type {:?}",
                guest_text::quote(given),
                kind.letter()
            ),
        ));
    }
    // A simulated node has no numbers: it stands for 0:0.
    let (major, minor) = numbers.unwrap_or((0, 0));
    for (field, given, real) in [("major", node.major, major), ("minor", node.minor, minor)] {
        if let Some(given) = given
            && given != i64::from(real)
        {
            return Err(Refused::device(
                &host,
                format!("{field} {given} but the node's is {real}"),
            ));
        }
    }
    node.kind = Some(kind.letter().to_owned());
    if numbers.is_some() {
        node.major = Some(i64::from(major));
        node.minor = Some(i64::from(minor));
    }
    if file.node != node.path {
        node.host_path = Some(file.node);
    }
    Ok(())
}

fn check_mount(
    root: &NodeRoot,
    seen: &mut node_paths::Resolutions,
    grant: &Grant,
    mount: &mut SpecMount,
) -> Result<(), Refused> {
    if mount.kind.as_deref().is_some_and(|k| k != "bind") {
        return Err(Refused::mount(
            &mount.host_path,
            "only bind mounts (type \"bind\" or none)",
        ));
    }
    if let Some(bad) = mount
        .options
        .iter()
        .find(|o| !SAFE_MOUNT_OPTIONS.contains(&o.as_str()))
    {
        return Err(Refused::mount(
            &mount.host_path,
            format!(
                "option {} is not one of {}",
                guest_text::quote(bad),
                SAFE_MOUNT_OPTIONS.join(", ")
            ),
        ));
    }
    if !mount.options.iter().any(|o| o == "bind" || o == "rbind") {
        return Err(Refused::mount(
            &mount.host_path,
            "options must include bind or rbind",
        ));
    }
    let read_only =
        mount.options.iter().any(|o| o == "ro") && !mount.options.iter().any(|o| o == "rw");
    let resolved = node_paths::check_mount(
        root,
        seen,
        grant,
        &mount.host_path,
        &mount.container_path,
        !read_only,
    )?;
    mount.host_path = resolved;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::handout::DeviceNodes;
    use crate::handout::testing::widget_grant as grant;
    use std::os::unix::fs::symlink;

    fn node() -> (tempfile::TempDir, NodeRoot) {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        std::fs::create_dir_all(root.join("dev/widget")).unwrap();
        std::fs::create_dir_all(root.join("opt/widget")).unwrap();
        std::fs::create_dir_all(root.join("etc")).unwrap();
        std::fs::write(root.join("dev/widget/w0"), "").unwrap();
        std::fs::write(root.join("dev/sda"), "").unwrap();
        symlink("../sda", root.join("dev/widget/w9")).unwrap();
        let root = NodeRoot::new(root, DeviceNodes::Simulated);
        (dir, root)
    }

    fn spec(edits: &str) -> String {
        format!(
            r#"{{"cdiVersion":"0.6.0","kind":"example.com/widget","devices":[{{"name":"w0","containerEdits":{edits}}}]}}"#
        )
    }

    #[test]
    fn a_granted_spec_is_rewritten_with_what_the_node_says() {
        let (_dir, root) = node();
        let checked = check(
            &root,
            &grant(),
            &spec(r#"{"env":["WIDGET_IDS=w0"],"deviceNodes":[{"path":"/dev/widget/w0"}],"mounts":[{"hostPath":"/opt/widget","containerPath":"/opt/widget","options":["ro","bind"]}]}"#),
        )
        .unwrap();
        assert_eq!(checked.kind, "example.com/widget");
        let v: Value = serde_json::from_str(&checked.json).unwrap();
        assert_eq!(
            v["devices"][0]["containerEdits"]["deviceNodes"][0]["type"],
            "c"
        );
    }

    #[test]
    fn everything_outside_the_allowlist_is_refused_with_the_field() {
        let (_dir, root) = node();
        for (edits, fragment) in [
            (
                r#"{"hooks":[{"hookName":"createContainer","path":"/bin/sh"}]}"#,
                "hooks",
            ),
            (
                r#"{"netDevices":[{"hostInterfaceName":"eth0","name":"eth0"}]}"#,
                "netDevices",
            ),
            (r#"{"intelRdt":{"closID":"x"}}"#, "intelRdt"),
            (r#"{"additionalGids":[0]}"#, "additionalGids"),
            (
                r#"{"deviceNodes":[{"path":"/dev/widget/w0","uid":0}]}"#,
                "uid",
            ),
            (
                r#"{"deviceNodes":[{"path":"/dev/widget/w0","fileMode":2559}]}"#,
                "fileMode",
            ),
            (
                r#"{"deviceNodes":[{"path":"/dev/sda"}]}"#,
                "outside the guest's device grant",
            ),
            (r#"{"deviceNodes":[{"path":"/dev/widget/w9"}]}"#, "/dev/sda"),
            (
                r#"{"deviceNodes":[{"path":"/dev/widget/w0","hostPath":"/dev/widget/../sda"}]}"#,
                "'..'",
            ),
            (
                r#"{"deviceNodes":[{"path":"/dev/widget/w0","major":8,"minor":0}]}"#,
                "major 8",
            ),
            (
                r#"{"deviceNodes":[{"path":"/dev/widget/w0","type":"b"}]}"#,
                "type",
            ),
            (
                r#"{"mounts":[{"hostPath":"/etc","containerPath":"/opt/widget/etc","options":["ro","bind"]}]}"#,
                "outside",
            ),
            (
                r#"{"mounts":[{"hostPath":"/opt/widget","containerPath":"/opt/widget","options":["bind"]}]}"#,
                "writable",
            ),
            (
                r#"{"mounts":[{"hostPath":"/opt/widget","containerPath":"/opt/widget","options":["ro","bind","suid"]}]}"#,
                "suid",
            ),
            (
                r#"{"mounts":[{"hostPath":"/opt/widget","containerPath":"/opt/widget","type":"overlay","options":["ro"]}]}"#,
                "bind",
            ),
            (r#"{"env":["LD_PRELOAD=/opt/widget/x.so"]}"#, "LD_PRELOAD"),
            (r#"{"env":["NOPE"]}"#, "KEY=VALUE"),
            (r#"{"whatever":1}"#, "whatever"),
        ] {
            let err = check(&root, &grant(), &spec(edits))
                .unwrap_err()
                .to_string();
            assert!(err.contains(fragment), "{edits}: {err}");
        }
        let foreign = r#"{"cdiVersion":"0.6.0","kind":"nvidia.com/gpu","devices":[{"name":"all","containerEdits":{}}]}"#;
        assert!(
            check(&root, &grant(), foreign)
                .unwrap_err()
                .to_string()
                .contains("cdiKinds")
        );
        let annotated = r#"{"cdiVersion":"0.6.0","kind":"example.com/widget","annotations":{"a":"b"},"devices":[]}"#;
        assert!(check(&root, &grant(), annotated).is_err());
        let spec_hooks = r#"{"cdiVersion":"0.6.0","kind":"example.com/widget","devices":[],"containerEdits":{"hooks":[]}}"#;
        assert!(
            check(&root, &grant(), spec_hooks)
                .unwrap_err()
                .to_string()
                .contains("hooks")
        );
    }
}
