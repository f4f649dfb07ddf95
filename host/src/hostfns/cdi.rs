//! `cdi` interface: guests write CDI specs for their own kinds, within their grant.
//!
//! A CDI spec is a set of container edits the runtime applies as root, so it is checked
//! as strictly as an allocation: its kind must be granted, every device node and mount it
//! names must be within the guest's device patterns and mount roots, and hooks (programs
//! the runtime would execute on the host) are refused outright. The format itself is
//! validated by the CNCF `container-device-interface` crate.

use std::io::Write;
use std::path::PathBuf;

use container_device_interface::spec::new_spec;
use container_device_interface::specs::config::Spec as CdiSpec;
use rustix::fs::{AtFlags, Mode, OFlags};
use rustix::io::Errno;
use serde_json::Value;

use super::NodeAccess;
use super::node_file::NodeFile;
use super::resolver::ResolveError;
use crate::wit::latest::cdi::Host;
use crate::wit::latest::types::Error as WitError;

/// Largest spec a guest may write.
pub const MAX_SPEC_BYTES: usize = 256 * 1024;

impl Host for NodeAccess {
    fn write_spec(&mut self, spec: String) -> Result<Vec<String>, WitError> {
        if spec.len() > MAX_SPEC_BYTES {
            return Err(WitError::InvalidArgument(format!(
                "CDI spec of {} bytes exceeds {MAX_SPEC_BYTES}",
                spec.len()
            )));
        }
        let raw: CdiSpec = serde_json::from_str(&spec)
            .map_err(|e| WitError::InvalidArgument(format!("not a CDI spec: {e}")))?;
        let value: Value = serde_json::from_str(&spec)
            .map_err(|e| WitError::InvalidArgument(format!("not JSON: {e}")))?;
        let kind = value["kind"].as_str().unwrap_or_default().to_owned();
        if !self.grant().allows_cdi_kind(&kind) {
            return Err(WitError::Denied(format!(
                "guest {} may not write CDI specs of kind {kind:?}",
                self.guest()
            )));
        }
        self.check_edits(&value)?;
        let dir = self.cdi_directory()?;
        let name = file_name(&kind);
        let file = dir.host().join(&name);
        let mut parsed = new_spec(&raw, &file, 0)
            .map_err(|e| WitError::InvalidArgument(format!("invalid CDI spec: {e:#}")))?;
        let devices = parsed
            .validate()
            .map_err(|e| WitError::InvalidArgument(format!("invalid CDI spec: {e:#}")))?;
        write_atomically(&dir, &name, spec.as_bytes())
            .map_err(|e| WitError::Io(format!("cannot write {}: {e}", file.display())))?;
        tracing::info!(
            guest = self.guest(),
            kind,
            devices = devices.len(),
            "CDI spec written"
        );
        Ok(devices
            .keys()
            .map(|name| format!("{kind}={name}"))
            .collect())
    }

    fn remove_spec(&mut self, kind: String) -> Result<(), WitError> {
        if !self.grant().allows_cdi_kind(&kind) {
            return Err(WitError::Denied(format!(
                "guest {} may not remove CDI specs of kind {kind:?}",
                self.guest()
            )));
        }
        let dir = self.cdi_directory()?;
        let name = file_name(&kind);
        match rustix::fs::unlinkat(&dir, name.as_str(), AtFlags::empty()) {
            Ok(()) | Err(Errno::NOENT) => Ok(()),
            Err(e) => Err(WitError::Io(format!(
                "cannot remove {}: {e}",
                dir.host().join(&name).display()
            ))),
        }
    }
}

impl NodeAccess {
    /// Every device node and mount in the spec must be within the grant; no hooks.
    fn check_edits(&self, spec: &Value) -> Result<(), WitError> {
        let mut edits: Vec<&Value> = vec![&spec["containerEdits"]];
        if let Some(devices) = spec["devices"].as_array() {
            edits.extend(devices.iter().map(|d| &d["containerEdits"]));
        }
        for edit in edits {
            if edit["hooks"].as_array().is_some_and(|h| !h.is_empty()) {
                return Err(WitError::Denied(
                    "CDI hooks run programs on the host and are not allowed".into(),
                ));
            }
            for node in edit["deviceNodes"].as_array().into_iter().flatten() {
                let host = node["hostPath"]
                    .as_str()
                    .or_else(|| node["path"].as_str())
                    .unwrap_or_default();
                if !self.grant().allows_device(host) {
                    return Err(WitError::Denied(format!(
                        "CDI device node {host:?} is outside guest {}'s device grant",
                        self.guest()
                    )));
                }
            }
            for mount in edit["mounts"].as_array().into_iter().flatten() {
                let host = mount["hostPath"].as_str().unwrap_or_default();
                if !self.grant().allows_mount(host) {
                    return Err(WitError::Denied(format!(
                        "CDI mount {host:?} is outside guest {}'s mount grant",
                        self.guest()
                    )));
                }
            }
        }
        Ok(())
    }

    /// The CDI directory, opened like every node path (so an absolute `/var/run -> /run`
    /// link stays under the host root) and created if missing; specs are written
    /// relative to it. The directory is the operator's choice, not the guest's, so it
    /// may lie anywhere under the host root.
    fn cdi_directory(&self) -> Result<NodeFile, WitError> {
        let dir = self.cdi_dir.display().to_string();
        let resolver = self.resolver().with_grant(vec![PathBuf::from("/")]);
        match resolver.open(&dir) {
            Ok(opened) => Ok(opened),
            Err(ResolveError::NotFound { .. }) => {
                resolver.create_dir_all(&dir).map_err(WitError::from)
            }
            Err(e) => Err(e.into()),
        }
    }
}

/// `vendor.com/class` → `vendor.com-class.json` (the kind is validated before use).
fn file_name(kind: &str) -> String {
    format!("{}.json", kind.replace('/', "-"))
}

/// Write to a temporary file in the same directory, then rename: the container runtime
/// never reads half a spec. Both are names in `dir` (never followed through a link).
fn write_atomically(dir: &NodeFile, name: &str, bytes: &[u8]) -> std::io::Result<()> {
    let (tmp, mut file) = tempfile_in(dir)?;
    let written = file.write_all(bytes).and_then(|()| file.sync_all());
    let renamed = written.and_then(|()| {
        rustix::fs::renameat(dir, tmp.as_str(), dir, name).map_err(std::io::Error::from)
    });
    if renamed.is_err() {
        let _ = rustix::fs::unlinkat(dir, tmp.as_str(), AtFlags::empty());
    }
    renamed
}

fn tempfile_in(dir: &NodeFile) -> std::io::Result<(String, std::fs::File)> {
    for attempt in 0..16u32 {
        let name = format!(".wdp-{}-{attempt}.tmp", std::process::id());
        match rustix::fs::openat(
            dir,
            name.as_str(),
            OFlags::WRONLY | OFlags::CREATE | OFlags::EXCL | OFlags::NOFOLLOW | OFlags::CLOEXEC,
            Mode::from_raw_mode(0o644),
        ) {
            Ok(fd) => return Ok((name, std::fs::File::from(fd))),
            Err(Errno::EXIST) => {
                let _ = rustix::fs::unlinkat(dir, name.as_str(), AtFlags::empty());
            }
            Err(e) => return Err(e.into()),
        }
    }
    Err(std::io::Error::other("no free temporary file name"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::grant::Grant;
    use std::sync::Arc;

    fn writer(root: &std::path::Path) -> NodeAccess {
        let grant = Grant {
            device_patterns: vec!["/dev/widget/*".into()],
            mount_roots: vec!["/opt/widget".into()],
            cdi_kinds: vec!["example.com/widget".into()],
            ..Grant::none()
        };
        NodeAccess::new("t", root, Arc::new(grant), "/var/run/cdi")
    }

    fn spec(kind: &str, node: &str, extra: &str) -> String {
        format!(
            r#"{{"cdiVersion":"0.6.0","kind":"{kind}","devices":[{{"name":"w0","containerEdits":{{"deviceNodes":[{{"path":"{node}"}}]{extra}}}}}]}}"#
        )
    }

    #[test]
    fn writes_a_granted_spec_and_returns_qualified_names() {
        let dir = tempfile::tempdir().unwrap();
        let mut access = writer(dir.path());
        let names = access
            .write_spec(spec("example.com/widget", "/dev/widget/w0", ""))
            .unwrap();
        assert_eq!(names, vec!["example.com/widget=w0"]);
        let written = dir.path().join("var/run/cdi/example.com-widget.json");
        assert!(written.is_file());
        access.remove_spec("example.com/widget".into()).unwrap();
        assert!(!written.exists());
    }

    #[test]
    fn refuses_foreign_kinds_nodes_mounts_hooks_and_garbage() {
        let dir = tempfile::tempdir().unwrap();
        let mut access = writer(dir.path());
        let denied = |r: Result<Vec<String>, WitError>| matches!(r, Err(WitError::Denied(_)));
        assert!(denied(access.write_spec(spec(
            "example.com/other",
            "/dev/widget/w0",
            ""
        ))));
        assert!(denied(access.write_spec(spec(
            "example.com/widget",
            "/dev/sda",
            ""
        ))));
        assert!(denied(access.write_spec(spec(
            "example.com/widget",
            "/dev/widget/w0",
            r#","mounts":[{"hostPath":"/etc","containerPath":"/etc"}]"#
        ))));
        assert!(denied(access.write_spec(spec(
            "example.com/widget",
            "/dev/widget/w0",
            r#","hooks":[{"hookName":"createContainer","path":"/bin/sh"}]"#
        ))));
        assert!(matches!(
            access.write_spec("{".into()),
            Err(WitError::InvalidArgument(_))
        ));
        assert!(matches!(
            access.write_spec(
                r#"{"cdiVersion":"0.6.0","kind":"example.com/widget","devices":[]}"#.into()
            ),
            Err(WitError::InvalidArgument(_))
        ));
        assert!(
            !dir.path()
                .join("var/run/cdi/example.com-widget.json")
                .exists()
        );
    }
}
