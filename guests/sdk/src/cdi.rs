//! Container Device Interface specs: written through the host's `cdi` (which validates
//! them, confines them to the kinds and nodes the policy grants and writes them
//! atomically), then named in allocations as `kind=name`.

use crate::error::context;
use crate::host::cdi;
use crate::json::write_str;
use crate::types::Error;

/// The CDI version of the specs written here: the oldest that has everything they use
/// (device nodes, env, mounts; 0.5.0 added `hostPath` to device nodes). A runtime's CDI
/// library refuses a spec newer than it knows, and the 0.5 library is still in wide use
/// (Podman 4.3 in Debian 12 reports `unresolvable CDI devices` for a 0.6.0 spec; the
/// container step of CI, `tests/container/`, runs it), so nothing newer is claimed.
pub const VERSION: &str = "0.5.0";

/// `kind=name`, the form an allocation's `cdi-devices` carries.
pub fn qualified_name(kind: &str, name: &str) -> String {
    format!("{kind}={name}")
}

/// A spec of one kind (`vendor.com/class`): devices, each with its device nodes, and
/// optionally nodes every device of the kind needs (spec-wide edits).
#[derive(Clone, Debug)]
pub struct Spec {
    kind: String,
    devices: Vec<(String, Vec<String>)>,
    common: Option<Vec<String>>,
}

impl Spec {
    pub fn new(kind: &str) -> Self {
        Spec {
            kind: kind.to_string(),
            devices: Vec::new(),
            common: None,
        }
    }

    /// A device named `name` that gives the container `nodes`.
    pub fn device(&mut self, name: &str, nodes: Vec<String>) -> &mut Self {
        self.devices.push((name.to_string(), nodes));
        self
    }

    /// Nodes every device of the spec gives (spec-level `containerEdits`, written even
    /// when empty once set).
    pub fn common_nodes(&mut self, nodes: Vec<String>) -> &mut Self {
        self.common = Some(nodes);
        self
    }

    pub fn is_empty(&self) -> bool {
        self.devices.is_empty()
    }

    /// The spec as JSON, every string escaped.
    pub fn to_json(&self) -> String {
        let mut out = String::from(r#"{"cdiVersion":"#);
        write_str(&mut out, VERSION);
        out.push_str(r#","kind":"#);
        write_str(&mut out, &self.kind);
        out.push_str(r#","devices":["#);
        for (i, (name, nodes)) in self.devices.iter().enumerate() {
            if i > 0 {
                out.push(',');
            }
            out.push_str(r#"{"name":"#);
            write_str(&mut out, name);
            out.push_str(r#","containerEdits":"#);
            write_edits(&mut out, nodes);
            out.push('}');
        }
        out.push(']');
        if let Some(common) = &self.common {
            out.push_str(r#","containerEdits":"#);
            write_edits(&mut out, common);
        }
        out.push('}');
        out
    }

    /// Writes (replaces) the spec of this kind; returns the qualified names the host
    /// confirmed. Write it before answering an allocation that names its devices.
    pub fn write(&self) -> Result<Vec<String>, Error> {
        cdi::write_spec(&self.to_json())
            .map_err(|e| context(e, &format!("writing the CDI spec for {}", self.kind)))
    }
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn devices_and_common_nodes() {
        let mut spec = Spec::new("example.com/widget");
        spec.device("w\"0", vec!["/dev/widget/w0".into()]);
        assert_eq!(
            spec.to_json(),
            r#"{"cdiVersion":"0.5.0","kind":"example.com/widget","devices":[{"name":"w\"0","containerEdits":{"deviceNodes":[{"path":"/dev/widget/w0"}]}}]}"#
        );
        spec.common_nodes(vec!["/dev/widgetctl".into()]);
        assert!(
            spec.to_json()
                .ends_with(r#"}],"containerEdits":{"deviceNodes":[{"path":"/dev/widgetctl"}]}}"#)
        );
        assert_eq!(
            qualified_name("example.com/widget", "w0"),
            "example.com/widget=w0"
        );
    }
}
