//! `kubelet <device-plugin-dir> <resource> <count>`: the kubelet stand-in as a program,
//! for checks that run the real `wasm-device-plugin run` binary from outside Rust (a
//! real GPU node, a container runtime).
//!
//! It serves `kubelet.sock` in `<device-plugin-dir>`, waits (up to 120 s: the host may
//! still be compiling its guests) for `<resource>` to register and its first device
//! list, then does what the device manager does for a pod asking for `<count>` devices:
//! `GetPreferredAllocation` among the healthy ones (when the plug-in offers it),
//! `Allocate`, and `PreStartContainer` (when required). It prints one JSON object on
//! stdout and exits 0, or names the step that failed and exits 1:
//!
//! ```text
//! {"resource", "registration": {"version", "endpoint", "options"},
//!  "devices": [{"id", "health", "numa"}], "preferred": [ids] | null,
//!  "allocated": [ids], "allocate": {"envs", "mounts", "devices", "annotations", "cdi_devices"},
//!  "pre_start": "ok" | "not required"}
//! ```

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use kubelet_api::v1beta1 as pb;
use serde_json::{Value, json};
use testkit::kubelet::KubeletStandIn;

const WAIT: Duration = Duration::from_secs(120);

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [dir, resource, count] = args.as_slice() else {
        eprintln!("usage: kubelet <device-plugin-dir> <resource> <count>");
        return ExitCode::from(2);
    };
    let Ok(count) = count.parse::<usize>() else {
        eprintln!("kubelet: <count> must be a number, not {count:?}");
        return ExitCode::from(2);
    };
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("kubelet: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(PathBuf::from(dir), resource, count)) {
        Ok(report) => {
            println!("{report:#}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("kubelet: {e}");
            ExitCode::FAILURE
        }
    }
}

async fn run(dir: PathBuf, resource: &str, count: usize) -> Result<Value, String> {
    let kubelet = KubeletStandIn::start(&dir)
        .await
        .map_err(|e| format!("cannot serve kubelet.sock in {}: {e}", dir.display()))?;
    let registration = kubelet
        .wait_for_registrations(resource, 1, WAIT)
        .await?
        .remove(0);
    let options = registration.options.unwrap_or_default();
    let view = kubelet
        .wait_for(resource, WAIT, |v| v.connected && v.updates > 0)
        .await?;
    let healthy: Vec<String> = view
        .devices
        .iter()
        .filter(|d| d.health == pb::HEALTHY)
        .map(|d| d.id.clone())
        .collect();
    if healthy.len() < count {
        return Err(format!(
            "{resource}: {count} devices wanted, {} healthy of {}",
            healthy.len(),
            view.devices.len()
        ));
    }
    let size = i32::try_from(count).map_err(|_| "count too large".to_string())?;
    let preferred = if options.get_preferred_allocation_available {
        let answer = kubelet
            .preferred_allocation(resource, healthy.clone(), vec![], size)
            .await
            .map_err(|s| format!("GetPreferredAllocation: {s:?}"))?;
        answer
            .container_responses
            .into_iter()
            .next()
            .map(|c| c.device_i_ds)
    } else {
        None
    };
    let chosen = match &preferred {
        Some(ids) if ids.len() == count => ids.clone(),
        _ => healthy.iter().take(count).cloned().collect(),
    };
    let answer = kubelet
        .allocate(resource, vec![chosen.clone()])
        .await
        .map_err(|s| format!("Allocate {chosen:?}: {s:?}"))?;
    let container = answer
        .container_responses
        .into_iter()
        .next()
        .ok_or("Allocate answered no container")?;
    let pre_start = if options.pre_start_required {
        kubelet
            .pre_start(resource, chosen.clone())
            .await
            .map_err(|s| format!("PreStartContainer: {s:?}"))?;
        "ok"
    } else {
        "not required"
    };
    Ok(json!({
        "resource": resource,
        "registration": {
            "version": registration.request.version,
            "endpoint": registration.request.endpoint,
            "options": {
                "pre_start_required": options.pre_start_required,
                "get_preferred_allocation_available": options.get_preferred_allocation_available,
            },
        },
        "devices": view.devices.iter().map(|d| json!({
            "id": d.id,
            "health": d.health,
            "numa": d.topology.iter().flat_map(|t| t.nodes.iter().map(|n| n.id)).collect::<Vec<_>>(),
        })).collect::<Vec<_>>(),
        "preferred": preferred,
        "allocated": chosen,
        "allocate": {
            "envs": container.envs,
            "annotations": container.annotations,
            "mounts": container.mounts.iter().map(|m| json!({
                "container_path": m.container_path,
                "host_path": m.host_path,
                "read_only": m.read_only,
            })).collect::<Vec<_>>(),
            "devices": container.devices.iter().map(|d| json!({
                "container_path": d.container_path,
                "host_path": d.host_path,
                "permissions": d.permissions,
            })).collect::<Vec<_>>(),
            "cdi_devices": container.cdi_devices.iter().map(|c| c.name.clone()).collect::<Vec<_>>(),
        },
        "pre_start": pre_start,
    }))
}
