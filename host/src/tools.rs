//! The offline commands: keys and signatures, inspecting, checking and precompiling guests.

use std::path::Path;

use anyhow::Context;
use wasm_device_plugin::node::check::check as check_node;
use wasm_device_plugin::runtime::signature;

use crate::args::NodeArgs;

pub fn keygen(out: &Path) -> anyhow::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let (secret, public) = signature::generate().context("cannot read system randomness")?;
    let secret_path = out.with_extension("key");
    let public_path = out.with_extension("pub");
    std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&secret_path)
        .and_then(|mut f| writeln!(f, "{secret}"))
        .with_context(|| format!("cannot create {}", secret_path.display()))?;
    std::fs::write(&public_path, format!("{public}\n"))
        .with_context(|| format!("cannot write {}", public_path.display()))?;
    println!(
        "secret key: {} (keep it off the nodes)",
        secret_path.display()
    );
    println!(
        "public key: {} (add its line to the host's --trusted-keys file)",
        public_path.display()
    );
    Ok(())
}

pub fn sign(key: &Path, guest: &Path) -> anyhow::Result<()> {
    let secret =
        std::fs::read_to_string(key).with_context(|| format!("cannot read {}", key.display()))?;
    let bytes = std::fs::read(guest).with_context(|| format!("cannot read {}", guest.display()))?;
    let sig =
        signature::sign(&secret, &bytes).map_err(|e| anyhow::anyhow!("{}: {e}", key.display()))?;
    let sig_path = signature::signature_path(guest);
    std::fs::write(&sig_path, format!("{sig}\n"))
        .with_context(|| format!("cannot write {}", sig_path.display()))?;
    println!("{}", sig_path.display());
    Ok(())
}

/// `inspect`: what the file is, and what it advertises when its policy is beside it.
pub async fn inspect(guest: &Path, node: &NodeArgs) -> anyhow::Result<()> {
    let config = node.config(Path::new("/nonexistent"))?;
    let runtime = wasm_device_plugin::node::runtime(&config)?;
    let info = runtime.inspect(guest).await?;
    println!("file       {}", guest.display());
    println!("size       {} bytes ({} KiB)", info.size, info.size / 1024);
    println!("sha256     {}", info.sha256);
    println!(
        "contract   {}",
        info.contract
            .as_deref()
            .map(|v| format!("wdp:device-plugin@{v}"))
            .unwrap_or_else(|| "none: not a device-plugin guest".into())
    );
    let sig = signature::signature_path(guest);
    let signed = match (&config.trusted_keys, sig.is_file()) {
        (_, false) => "unsigned".to_string(),
        (None, true) => format!(
            "{} present (not verified: no --trusted-keys)",
            sig.display()
        ),
        (Some(keys), true) => {
            let keys = signature::TrustedKeys::read(keys)?;
            let bytes = std::fs::read(guest)?;
            match keys.verify(guest, &bytes) {
                Ok(()) => "valid (trusted key)".into(),
                Err(e) => format!("INVALID: {e}"),
            }
        }
    };
    println!("signature  {signed}");
    println!("imports");
    for name in &info.imports {
        println!("  {name}");
    }
    println!("exports");
    for name in &info.exports {
        println!("  {name}");
    }
    let policy = wasm_device_plugin::policy::GuestPolicy::for_guest(guest, &config.limits)?;
    match policy {
        None => println!("resources  (no policy beside it: not started)"),
        Some(policy) => {
            let name = guest
                .file_stem()
                .and_then(|s| s.to_str())
                .unwrap_or("guest");
            let text = guest.with_extension("json");
            let guest_config = std::fs::read_to_string(&text).unwrap_or_default();
            let loaded = runtime.load(name, guest, guest_config, policy).await?;
            println!("resources");
            for spec in loaded.resources() {
                println!(
                    "  {}  pre-start={} preferred-allocation={}",
                    spec.name,
                    spec.options.pre_start_required,
                    spec.options.preferred_allocation_available
                );
            }
        }
    }
    Ok(())
}

/// `check`: what would be advertised, without registering.
pub async fn check(node: &NodeArgs) -> anyhow::Result<()> {
    let config = node.config(Path::new("/nonexistent"))?;
    let report = check_node(&config).await?;
    // Only where it matters: NVML serves, or a guest is granted it.
    match &report.nvml {
        Ok(library) => println!("NVML: {library}"),
        Err(reason) if report.nvml_granted => println!("NVML: not used ({reason})"),
        Err(_) => {}
    }
    for resource in &report.resources {
        let s = &resource.spec;
        println!(
            "{}  (guest {}; pre-start={} preferred-allocation={})",
            s.name,
            resource.guest,
            s.options.pre_start_required,
            s.options.preferred_allocation_available
        );
        match &resource.devices {
            Ok(devices) if devices.is_empty() => println!("  no devices"),
            Ok(devices) => {
                for d in devices {
                    let numa: Vec<String> = d.numa_nodes.iter().map(u32::to_string).collect();
                    println!(
                        "  {}  {:?}  NUMA {}",
                        d.id,
                        d.health,
                        if numa.is_empty() {
                            "-".into()
                        } else {
                            numa.join(",")
                        }
                    );
                }
            }
            Err(e) => println!("  enumeration failed: {e}"),
        }
    }
    for (guest, labels) in &report.labels {
        println!("node labels (guest {guest}):");
        for (name, value) in &labels.accepted {
            println!("  {name}={value}");
        }
        for reason in &labels.refused {
            println!("  refused: {reason}");
        }
    }
    for skipped in &report.skipped {
        println!("refused: {}", skipped.reason);
    }
    if report.resources.is_empty() {
        println!("nothing would be advertised");
    }
    let failed = report.resources.iter().any(|r| r.devices.is_err());
    if !report.skipped.is_empty() || failed {
        anyhow::bail!(
            "{} refused, {} failed to enumerate",
            report.skipped.len(),
            report
                .resources
                .iter()
                .filter(|r| r.devices.is_err())
                .count()
        );
    }
    Ok(())
}

/// `compile`: fill the cache so that the next start does not compile.
pub async fn compile(guests: &[std::path::PathBuf], node: &NodeArgs) -> anyhow::Result<()> {
    let config = node.config(Path::new("/nonexistent"))?;
    anyhow::ensure!(config.cache_dir.is_some(), "compile needs --cache-dir");
    let runtime = wasm_device_plugin::node::runtime(&config)?;
    for guest in guests {
        let outcome = runtime.precompile(guest).await?;
        println!("{}: {outcome:?}", guest.display());
    }
    Ok(())
}
