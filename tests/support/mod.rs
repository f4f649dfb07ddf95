//! Shared set-up for the integration tests: a simulated node, a kubelet stand-in in a
//! temporary device-plugin directory, a guests directory, and the host serving them.

pub mod raw_h2;

use std::path::{Path, PathBuf};
use std::time::Duration;

use testkit::SimNode;
use testkit::kubelet::KubeletStandIn;
use wasm_device_plugin::node::HostConfig;
use wasm_device_plugin::node::Node;
use wasm_device_plugin::policy::limits::CallDeadlines;

/// How long a test waits for something the host should do within a second or two.
pub const WAIT: Duration = Duration::from_secs(15);

/// Logs to the test's output when `RUST_LOG` is set.
pub fn init_tracing() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_test_writer()
        .try_init();
}

/// One node: fixture tree, guests directory, kubelet stand-in, host.
pub struct Harness {
    pub tmp: tempfile::TempDir,
    pub node: SimNode,
    pub kubelet: KubeletStandIn,
    pub host: Option<Node>,
    pub guests_dir: PathBuf,
    pub plugin_dir: PathBuf,
    /// Deadlines given to guests (short ones make loop tests quick).
    pub deadlines: CallDeadlines,
}

impl Harness {
    /// A DGX-H100-like node with the kubelet stand-in running and no guests yet.
    pub async fn dgx() -> Harness {
        Self::with_node(SimNode::dgx_h100).await
    }

    /// A node with nothing on it but what the test adds (widgets, say).
    pub async fn empty() -> Harness {
        Self::with_node(SimNode::empty).await
    }

    async fn with_node(build: fn(&Path) -> std::io::Result<SimNode>) -> Harness {
        init_tracing();
        let tmp = tempfile::tempdir().expect("temporary directory");
        let node = build(&tmp.path().join("root")).expect("fixture tree");
        let guests_dir = tmp.path().join("guests");
        std::fs::create_dir_all(&guests_dir).expect("guests directory");
        let plugin_dir = tmp.path().join("device-plugins");
        let kubelet = KubeletStandIn::start(&plugin_dir)
            .await
            .expect("kubelet stand-in");
        Harness {
            tmp,
            node,
            kubelet,
            host: None,
            guests_dir,
            plugin_dir,
            deadlines: CallDeadlines::default(),
        }
    }

    /// Puts `<name>.wasm` (and `<name>.json` when `config` is given) in the guests
    /// directory, with [`TEST_POLICY`].
    pub fn add_guest(&self, name: &str, wasm: &[u8], config: Option<&str>) {
        self.add_guest_with_policy(name, wasm, config, Some(TEST_POLICY));
    }

    /// Like [`add_guest`](Self::add_guest) with `<name>.policy.json` holding `policy`
    /// (none: no policy file at all).
    pub fn add_guest_with_policy(
        &self,
        name: &str,
        wasm: &[u8],
        config: Option<&str>,
        policy: Option<&str>,
    ) {
        let write = |file: String, bytes: &[u8]| {
            std::fs::write(self.guests_dir.join(&file), bytes)
                .unwrap_or_else(|e| panic!("cannot write {file}: {e}"))
        };
        write(format!("{name}.wasm"), wasm);
        if let Some(config) = config {
            write(format!("{name}.json"), config.as_bytes());
        }
        if let Some(policy) = policy {
            write(format!("{name}.policy.json"), policy.as_bytes());
        }
    }

    /// The conformance guest as `<name>.wasm` with a JSON configuration, and a policy
    /// like [`TEST_POLICY`] that grants exactly the resource names it advertises (and
    /// the CDI kinds of the classes it writes specs for), so that several conformance
    /// guests on one node never claim the same names (see `node::ownership`).
    pub fn add_conformance(&self, name: &str, config: serde_json::Value) {
        self.add_guest_with_policy(
            name,
            testkit::guests::CONFORMANCE_WASM,
            Some(&config.to_string()),
            Some(&conformance_policy(&config).to_string()),
        );
    }

    /// The host's configuration for this node, with fast polling so tests are quick.
    pub fn config(&self) -> HostConfig {
        let mut config = HostConfig::new(self.node.root(), &self.guests_dir, &self.plugin_dir);
        config.rescan_interval = Duration::from_millis(100);
        // The fixture's device nodes are plain files (tests run without root).
        config.device_nodes = wasm_device_plugin::handout::DeviceNodes::Simulated;
        config.kubelet.poll_interval = Duration::from_millis(50);
        config.reload_interval = Duration::from_millis(100);
        config.limits.deadlines = self.deadlines.clone();
        config
    }

    /// Starts the host and returns it.
    pub async fn start_host(&mut self) -> &Node {
        self.start_host_with(self.config()).await
    }

    /// Starts the host with a configuration the test adjusted (from [`Harness::config`]).
    pub async fn start_host_with(&mut self, config: HostConfig) -> &Node {
        let node = Node::start(config).await.expect("host starts");
        self.host.insert(node)
    }

    pub fn host(&self) -> &Node {
        self.host.as_ref().expect("host started")
    }

    /// Stops the host as SIGTERM would.
    pub async fn stop_host(&mut self) {
        if let Some(host) = self.host.take() {
            host.shutdown().await;
        }
    }

    /// Socket files in the device-plugin directory other than `kubelet.sock`.
    pub fn plugin_sockets(&self) -> Vec<String> {
        use std::os::unix::fs::FileTypeExt;
        let mut names: Vec<String> = std::fs::read_dir(&self.plugin_dir)
            .expect("device-plugin directory")
            .filter_map(|e| e.ok())
            .filter(|e| e.file_type().is_ok_and(|t| t.is_socket()))
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .filter(|n| n != kubelet_api::v1beta1::KUBELET_SOCKET)
            .collect();
        names.sort();
        names
    }
}

/// The policy test guests get unless a test says otherwise: read sysfs, procfs and /dev,
/// hand out any node under /dev, set `*_IDS` variables and `example.com/` annotations,
/// advertise `example.com/` resources, write `example.com/widget` CDI specs.
pub const TEST_POLICY: &str = r#"{
    "read": ["/sys", "/proc", "/dev"],
    "devices": ["/dev/**"],
    "env": ["*_IDS"],
    "annotations": ["example.com/*"],
    "resourcePrefixes": ["example.com/"],
    "cdiKinds": ["example.com/widget"]
}"#;

/// [`TEST_POLICY`] narrowed to what a conformance configuration advertises and writes.
pub fn conformance_policy(config: &serde_json::Value) -> serde_json::Value {
    let resources = config["resources"].as_array().cloned().unwrap_or_else(|| {
        vec![serde_json::json!({ "name": "example.com/widget", "class": "widget" })]
    });
    // Names a policy could not hold (no domain) are left for the host to refuse as names.
    let names: Vec<&str> = resources
        .iter()
        .filter_map(|r| r["name"].as_str())
        .filter(|n| n.contains('/') && !n.starts_with('/'))
        .collect();
    let kinds: Vec<String> = resources
        .iter()
        .filter(|r| r["writeCdiSpec"] == true)
        .filter_map(|r| r["class"].as_str())
        .map(|class| format!("example.com/{class}"))
        .collect();
    serde_json::json!({
        "read": ["/sys", "/proc", "/dev"],
        "devices": ["/dev/**"],
        "env": ["*_IDS"],
        "annotations": ["example.com/*"],
        "resourcePrefixes": names,
        "cdiKinds": kinds,
    })
}

/// Widgets `w0..wN` on NUMA nodes alternating 0 and 1.
pub fn widgets(n: usize) -> Vec<(String, Option<u32>)> {
    (0..n)
        .map(|i| (format!("w{i}"), Some((i % 2) as u32)))
        .collect()
}

/// Adds widgets of `class` to the node.
pub fn add_widgets(node: &SimNode, class: &str, widgets: &[(String, Option<u32>)]) {
    let borrowed: Vec<(&str, Option<u32>)> = widgets
        .iter()
        .map(|(id, numa)| (id.as_str(), *numa))
        .collect();
    node.add_widgets(class, &borrowed).expect("widgets");
}

/// What tests read off the kubelet stand-in's view of a resource.
pub mod view {
    use std::collections::BTreeSet;

    use kubelet_api::v1beta1 as pb;
    use testkit::kubelet::ResourceView;

    use super::{Harness, WAIT};

    /// Waits until the kubelet's open stream for `resource` satisfies `check`.
    pub async fn wait_until(
        h: &Harness,
        resource: &str,
        check: impl Fn(&ResourceView) -> bool,
    ) -> ResourceView {
        h.kubelet
            .wait_for(resource, WAIT, |v| v.connected && check(v))
            .await
            .unwrap_or_else(|e| panic!("{e}"))
    }

    /// The device IDs listed.
    pub fn ids(view: &ResourceView) -> BTreeSet<String> {
        view.devices.iter().map(|d| d.id.clone()).collect()
    }

    /// The listed device `id`.
    pub fn device<'a>(view: &'a ResourceView, id: &str) -> Option<&'a pb::Device> {
        view.devices.iter().find(|d| d.id == id)
    }

    /// The health the kubelet sees for `id` (None: not listed).
    pub fn health<'a>(view: &'a ResourceView, id: &str) -> Option<&'a str> {
        device(view, id).map(|d| d.health.as_str())
    }

    /// A device's NUMA nodes as the kubelet sees them.
    pub fn numa_nodes(device: &pb::Device) -> Vec<i64> {
        device
            .topology
            .as_ref()
            .map(|t| t.nodes.iter().map(|n| n.id).collect())
            .unwrap_or_default()
    }

    /// `Allocate` with one entry per container, finishing within [`WAIT`].
    pub async fn allocate(
        h: &Harness,
        resource: &str,
        containers: &[&[&str]],
    ) -> Result<pb::AllocateResponse, tonic::Status> {
        let containers = containers
            .iter()
            .map(|ids| ids.iter().map(|s| s.to_string()).collect())
            .collect();
        tokio::time::timeout(WAIT, h.kubelet.allocate(resource, containers))
            .await
            .expect("Allocate returns")
    }
}

/// The host's operator endpoints (`/metrics`, `/healthz`, `/readyz`) over plain HTTP.
pub mod ops {
    use std::net::SocketAddr;
    use std::time::Duration;

    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    use super::WAIT;

    /// A plain HTTP/1.0 GET: (status code, body).
    pub async fn get(addr: SocketAddr, path: &str) -> (u16, String) {
        let mut stream = tokio::net::TcpStream::connect(addr).await.expect("connect");
        stream
            .write_all(format!("GET {path} HTTP/1.0\r\nHost: localhost\r\n\r\n").as_bytes())
            .await
            .expect("request");
        let mut response = String::new();
        stream
            .read_to_string(&mut response)
            .await
            .expect("response");
        let code = response
            .split_whitespace()
            .nth(1)
            .and_then(|c| c.parse().ok())
            .unwrap_or(0);
        let body = response
            .split_once("\r\n\r\n")
            .map(|(_, b)| b.to_owned())
            .unwrap_or_default();
        (code, body)
    }

    /// Polls `path` until it answers `code` with a body for which `check` holds; returns
    /// the body, or fails with the last answer after [`WAIT`].
    pub async fn eventually(
        addr: SocketAddr,
        path: &str,
        code: u16,
        check: impl Fn(&str) -> bool,
    ) -> String {
        let deadline = tokio::time::Instant::now() + WAIT;
        loop {
            let (got, body) = get(addr, path).await;
            if got == code && check(&body) {
                return body;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "{path}: waited for {code}, last got {got} {body}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}
