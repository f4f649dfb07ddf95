//! `wasm-device-plugin demo`: the real host, serving a simulated DGX H100 node to an
//! in-process kubelet stand-in, printing what the kubelet sees.
//!
//! Everything lives in a temporary directory: the node's sysfs/procfs/devfs tree, the
//! guests directory (the NVIDIA reference guest, plus a corrupt file to show that bad
//! input is reported and skipped) and the device-plugin directory with `kubelet.sock`.

use std::time::Duration;

use anyhow::{Context, anyhow};
use kubelet_api::v1beta1 as pb;
use testkit::SimNode;
use testkit::kubelet::KubeletStandIn;
use wasm_device_plugin::node::HostConfig;
use wasm_device_plugin::node::Node;
use wasm_device_plugin::runtime::{CompileBudget, Compiler};

const RESOURCE: &str = "nvidia.com/gpu";
const WAIT: Duration = Duration::from_secs(20);

pub async fn run() -> anyhow::Result<()> {
    let tmp = tempfile::Builder::new()
        .prefix("wdp-demo")
        .tempdir()
        .context("cannot create a temporary directory")?;
    let root = tmp.path().join("node");
    let guests = tmp.path().join("guests");
    let plugins = tmp.path().join("device-plugins");
    let mut node = SimNode::dgx_h100(&root).context("cannot build the simulated node")?;
    // NVML as the node would have it: testkit's double of libnvidia-ml.so.1 in the
    // node's library directory, which the host finds and loads (`--nvml-library auto`).
    node.enable_nvml()
        .context("cannot install the NVML double in the simulated node")?;
    std::fs::create_dir_all(&guests)?;
    std::fs::write(
        guests.join("nvidia-gpu.wasm"),
        testkit::guests::NVIDIA_GPU_WASM,
    )?;
    std::fs::write(
        guests.join("nvidia-gpu.policy.json"),
        testkit::guests::NVIDIA_GPU_POLICY,
    )?;
    std::fs::write(guests.join("broken.wasm"), b"this is not WebAssembly")?;
    // A policy of its own: it may advertise nothing, so it contests none of the NVIDIA
    // guest's names (names belong to the policies, see node::ownership).
    std::fs::write(guests.join("broken.policy.json"), "{}")?;

    println!("wasm-device-plugin demo: the host serving a simulated DGX H100 node\n");
    println!(
        "  node root        {}  (8 H100 SXM5, 4 NVSwitches, 8 ConnectX-7; NVML: testkit's double)",
        root.display()
    );
    println!(
        "  guests           {}  (nvidia-gpu.wasm, {} KiB; broken.wasm)",
        guests.display(),
        testkit::guests::NVIDIA_GPU_WASM.len() / 1024
    );
    println!(
        "  kubelet stand-in {}\n",
        plugins.join(pb::KUBELET_SOCKET).display()
    );

    let kubelet = KubeletStandIn::start(&plugins)
        .await
        .context("cannot start the kubelet stand-in")?;
    let mut config = HostConfig::new(&root, &guests, &plugins);
    config.rescan_interval = Duration::from_millis(200);
    // The simulated node's device nodes are plain files (no root needed to build it).
    config.device_nodes = wasm_device_plugin::handout::DeviceNodes::Simulated;
    // As `run` does: each guest compiled in a child process within the default budget.
    config.compiler = Compiler::this_executable(CompileBudget::default())
        .context("cannot find this executable to compile guests with")?;
    let host = Node::start(config).await?;
    for skipped in host.skipped() {
        println!(
            "[host]    skipped {}\n          {}\n",
            skipped.path.display(),
            skipped.reason
        );
    }

    let registration = kubelet
        .wait_for_registrations(RESOURCE, 1, WAIT)
        .await
        .map_err(|e| anyhow!(e))?
        .remove(0);
    let options = registration.options.unwrap_or_default();
    println!(
        "[kubelet] Register  {}  version={}  endpoint={}\n          options: pre_start_required={} get_preferred_allocation_available={}\n",
        registration.request.resource_name,
        registration.request.version,
        registration.request.endpoint,
        options.pre_start_required,
        options.get_preferred_allocation_available,
    );

    let view = kubelet
        .wait_for(RESOURCE, WAIT, |v| v.connected && v.updates > 0)
        .await
        .map_err(|e| anyhow!(e))?;
    println!(
        "[kubelet] ListAndWatch  {RESOURCE}: capacity {}, allocatable {}",
        view.capacity(),
        view.allocatable()
    );
    for device in &view.devices {
        let numa: Vec<String> = device
            .topology
            .iter()
            .flat_map(|t| t.nodes.iter().map(|n| n.id.to_string()))
            .collect();
        let address = node
            .gpus()
            .iter()
            .find(|g| g.uuid == device.id)
            .map(|g| format!("{}  /dev/nvidia{}", g.address, g.minor))
            .unwrap_or_default();
        println!(
            "          {}  {:9}  NUMA {:3}  {address}",
            device.id,
            device.health,
            numa.join(",")
        );
    }
    println!();

    // What the guest published for Node Feature Discovery (GPU Feature Discovery's names).
    let features = config_features_file(&root);
    if let Ok(text) = std::fs::read_to_string(&features) {
        let labels: Vec<&str> = text.lines().filter(|l| !l.starts_with('#')).collect();
        println!(
            "[host]    node labels for NFD ({} in {}):",
            labels.len(),
            features.display()
        );
        for label in labels.iter().filter(|l| {
            [
                "gpu.product",
                "gpu.count",
                "gpu.family",
                "cuda.driver-version.full",
                "mig.strategy",
            ]
            .iter()
            .any(|k| l.contains(k))
        }) {
            println!("          {label}");
        }
        println!();
    }

    // The kubelet asks which two of the GPUs on NUMA node 1 to take, as its topology
    // manager would, and allocates what the guest prefers (same PCIe switch first).
    let numa1: Vec<String> = view
        .devices
        .iter()
        .filter(|d| {
            d.topology
                .as_ref()
                .is_some_and(|t| t.nodes.iter().any(|n| n.id == 1))
        })
        .map(|d| d.id.clone())
        .collect();
    let mut pair = numa1.iter().take(2).cloned().collect::<Vec<_>>();
    if options.get_preferred_allocation_available {
        let preferred = kubelet
            .preferred_allocation(RESOURCE, numa1.clone(), vec![], 2)
            .await?;
        if let Some(answer) = preferred
            .container_responses
            .first()
            .filter(|a| !a.device_i_ds.is_empty())
        {
            pair = answer.device_i_ds.clone();
        }
        println!(
            "[kubelet] GetPreferredAllocation  {RESOURCE}  2 of the {} GPUs on NUMA 1\n          preferred: [{}]\n",
            numa1.len(),
            pair.join(", ")
        );
    }
    println!("[kubelet] Allocate  {RESOURCE}  [{}]", pair.join(", "));
    let answer = kubelet.allocate(RESOURCE, vec![pair]).await?;
    for container in &answer.container_responses {
        let mut envs: Vec<_> = container.envs.iter().collect();
        envs.sort();
        for (key, value) in envs {
            println!("          env     {key}={value}");
        }
        for device in &container.devices {
            println!(
                "          device  {} ({})",
                device.host_path, device.permissions
            );
        }
        for cdi in &container.cdi_devices {
            println!("          cdi     {}", cdi.name);
        }
    }
    println!();

    let unknown = kubelet
        .allocate(RESOURCE, vec![vec!["GPU-does-not-exist".into()]])
        .await;
    match unknown {
        Err(status) => println!(
            "[kubelet] Allocate  {RESOURCE}  [GPU-does-not-exist]\n          refused: {:?}: {}\n",
            status.code(),
            status.message()
        ),
        Ok(_) => return Err(anyhow!("an unknown device ID was allocated")),
    }

    host.shutdown().await;
    // The kubelet notices the stream's end a moment after the host has stopped.
    let after = kubelet
        .wait_for(RESOURCE, WAIT, |v| !v.connected)
        .await
        .map_err(|e| anyhow!(e))?;
    println!(
        "[host]    stopped: the kubelet now counts capacity {}, allocatable {}; sockets removed\n",
        after.capacity(),
        after.allocatable()
    );
    Ok(())
}

/// The NVIDIA guest's feature file under the simulated node's root.
fn config_features_file(root: &std::path::Path) -> std::path::PathBuf {
    let dir = wasm_device_plugin::node::config::DEFAULT_FEATURES_DIR.trim_start_matches('/');
    root.join(dir).join("wdp-nvidia-gpu")
}
