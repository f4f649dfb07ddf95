//! `cdi` interface: guests write CDI specs for their own kinds, within their grant.
//!
//! A CDI spec is a set of container edits the runtime applies as root, so it is checked
//! by the same allowlist as an allocation ([`handout::cdi_spec`]): granted kind, device
//! nodes and mounts judged where they really lead, granted env, nothing else. The host
//! writes the spec it checked (re-encoded, device types and numbers filled in from the
//! node), after the CNCF `container-device-interface` crate has validated it, and
//! records the devices it defines so that the guest's answers may name them.
//!
//! Files: one per kind, `<vendor>+<class>.json` (`+` appears in neither part, so no two
//! kinds share a file), written through a temporary file unique to each write and
//! renamed into place, so concurrent writers never delete or half-write each other's
//! specs. A guest writes or removes only kinds its policy grants, and the node refuses a
//! kind that two policies grant (see `node::ownership`), so it touches only its own.

use std::path::PathBuf;

use container_device_interface::spec::new_spec;
use container_device_interface::specs::config::Spec as CdiSpec;
use rustix::fs::AtFlags;
use rustix::io::Errno;

use super::NodeAccess;
use crate::guest_text;
use crate::handout::{Refused, cdi_spec};
use crate::host_root::node_file::{NodeFile, write_atomically};
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
        serde_json::from_str::<serde_json::Value>(&spec).map_err(|e| {
            WitError::InvalidArgument(format!(
                "not a CDI spec: {}",
                guest_text::clean(&e.to_string())
            ))
        })?;
        let checked = cdi_spec::check(&self.node_root(), self.grant(), &spec).map_err(|e| {
            let message = format!("guest {}: {e}", self.guest());
            tracing::warn!(guest = self.guest(), refused = %e, "CDI spec refused: the guest asked for what its policy does not grant");
            crate::metrics::metrics().handout_refused(self.guest());
            WitError::Denied(message)
        })?;
        let kind = checked.kind;
        let raw: CdiSpec = serde_json::from_str(&checked.json)
            .map_err(|e| WitError::InvalidArgument(format!("not a CDI spec: {e}")))?;
        let dir = self.cdi_directory()?;
        let name = file_name(&kind);
        let file = dir.host().join(&name);
        let mut parsed = new_spec(&raw, &file, 0).map_err(|e| {
            WitError::InvalidArgument(format!(
                "invalid CDI spec: {}",
                guest_text::clean(&format!("{e:#}"))
            ))
        })?;
        let devices = parsed.validate().map_err(|e| {
            WitError::InvalidArgument(format!(
                "invalid CDI spec: {}",
                guest_text::clean(&format!("{e:#}"))
            ))
        })?;
        write_atomically(&dir, &name, checked.json.as_bytes())
            .map_err(|e| WitError::Io(format!("cannot write {}: {e}", file.display())))?;
        self.cdi_ledger().record(&kind, devices.keys().cloned());
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
                "guest {} may not remove CDI specs of kind {}",
                self.guest(),
                guest_text::quote(&kind)
            )));
        }
        self.cdi_ledger().forget(&kind);
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

impl From<Refused> for WitError {
    fn from(e: Refused) -> Self {
        WitError::Denied(e.to_string())
    }
}

impl NodeAccess {
    /// The CDI directory, opened like every node path (so an absolute `/var/run -> /run`
    /// link stays under the host root) and created if missing; specs are written
    /// relative to it. The directory is the operator's choice, not the guest's, so it
    /// may lie anywhere under the host root.
    fn cdi_directory(&self) -> Result<NodeFile, WitError> {
        let dir = self.cdi_dir.display().to_string();
        self.resolver()
            .with_grant(vec![PathBuf::from("/")])
            .create_dir_all(&dir)
            .map_err(WitError::from)
    }
}

/// `vendor.com/class` → `vendor.com+class.json`: one file per kind, since `+` is in
/// neither a CDI vendor nor a class (the kind is validated before use).
pub fn file_name(kind: &str) -> String {
    format!("{}.json", kind.replacen('/', "+", 1))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::handout::DeviceNodes;
    use std::sync::Arc;

    fn writer(root: &std::path::Path) -> NodeAccess {
        let mut grant = crate::handout::testing::widget_grant();
        grant.cdi_kinds.extend(["a-b/c".into(), "a/b-c".into()]);
        std::fs::create_dir_all(root.join("dev/widget")).unwrap();
        std::fs::write(root.join("dev/widget/w0"), "").unwrap();
        std::fs::write(root.join("dev/sda"), "").unwrap();
        NodeAccess::new("t", root, Arc::new(grant), "/var/run/cdi")
            .with_device_nodes(DeviceNodes::Simulated)
    }

    fn spec(kind: &str, node: &str, extra: &str) -> String {
        format!(
            r#"{{"cdiVersion":"0.6.0","kind":"{kind}","devices":[{{"name":"w0","containerEdits":{{"deviceNodes":[{{"path":"{node}"}}]{extra}}}}}]}}"#
        )
    }

    #[test]
    fn writes_a_granted_spec_records_it_and_returns_qualified_names() {
        let dir = tempfile::tempdir().unwrap();
        let mut access = writer(dir.path());
        let names = access
            .write_spec(spec("example.com/widget", "/dev/widget/w0", ""))
            .unwrap();
        assert_eq!(names, vec!["example.com/widget=w0"]);
        assert!(access.cdi_ledger().defines("example.com/widget", "w0"));
        let written = dir.path().join("var/run/cdi/example.com+widget.json");
        let text = std::fs::read_to_string(&written).unwrap();
        assert!(
            text.contains(r#""type":"c""#),
            "the host fills the type: {text}"
        );
        let leftovers: Vec<_> = std::fs::read_dir(dir.path().join("var/run/cdi"))
            .unwrap()
            .filter_map(|e| e.ok())
            .filter(|e| e.file_name().to_string_lossy().ends_with(".tmp"))
            .collect();
        assert!(leftovers.is_empty(), "no temporary file left behind");
        access.remove_spec("example.com/widget".into()).unwrap();
        assert!(!written.exists());
        assert!(!access.cdi_ledger().defines("example.com/widget", "w0"));
    }

    #[test]
    fn kinds_never_share_a_file() {
        assert_ne!(file_name("a-b/c"), file_name("a/b-c"));
        let dir = tempfile::tempdir().unwrap();
        let mut access = writer(dir.path());
        access
            .write_spec(spec("a-b/c", "/dev/widget/w0", ""))
            .unwrap();
        access
            .write_spec(spec("a/b-c", "/dev/widget/w0", ""))
            .unwrap();
        let cdi = dir.path().join("var/run/cdi");
        assert!(cdi.join("a-b+c.json").is_file() && cdi.join("a+b-c.json").is_file());
    }

    #[test]
    fn concurrent_writers_leave_a_whole_spec() {
        let dir = tempfile::tempdir().unwrap();
        let access = writer(dir.path());
        std::thread::scope(|s| {
            for _ in 0..4 {
                let mut access = access.clone();
                s.spawn(move || {
                    for _ in 0..25 {
                        access
                            .write_spec(spec("example.com/widget", "/dev/widget/w0", ""))
                            .expect("every write succeeds");
                    }
                });
            }
        });
        let text = std::fs::read_to_string(dir.path().join("var/run/cdi/example.com+widget.json"))
            .unwrap();
        serde_json::from_str::<serde_json::Value>(&text).expect("a whole spec");
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
            r#","mounts":[{"hostPath":"/etc","containerPath":"/etc","options":["ro","bind"]}]"#
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
        assert!(matches!(
            access.remove_spec("example.com/other".into()),
            Err(WitError::Denied(_))
        ));
        assert!(
            !dir.path()
                .join("var/run/cdi/example.com+widget.json")
                .exists()
        );
    }
}
