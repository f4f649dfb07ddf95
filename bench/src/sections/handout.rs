//! Figure 8, the hand-out checks: what holding every `Allocate` answer to the guest's
//! policy costs. The NVIDIA guest answers for all 8 GPUs of the simulated DGX with every
//! field the checks look at (env, volume-mount mounts, device specs, CDI names from the
//! spec it wrote through the host), and the same answers are checked two ways, side by
//! side in one run:
//!
//! - *before*: the checks this host made until the hand-out allowlist (paths absolute,
//!   without `..`, existing; device and mount paths matched lexically; CDI names
//!   well-formed), kept here as the baseline;
//! - *after*: `handout::check_allocation`, as `ResourceService::allocate` runs it.
//!
//! Allocate "before" and "after" are the guest's `allocate` call followed by each check,
//! timed together, interleaved in the same loop.

use std::path::{Component, Path};
use std::sync::Arc;
use std::time::Instant;

use wasm_device_plugin::device::ContainerAllocation;
use wasm_device_plugin::grant::{Grant, glob};
use wasm_device_plugin::handout::{self, DeviceNodes, NodeRoot};
use wasm_device_plugin::policy::GuestLimits;
use wasm_device_plugin::policy::GuestPolicy;
use wasm_device_plugin::runtime::Runtime;

use crate::Ctx;
use crate::fixture::{Fixture, GPU, GuestKind};
use crate::stats::{Row, Samples, fmt_dur};

/// Every strategy that puts a field in the answer.
const CONFIG: &str = r#"{"deviceListStrategy": ["volume-mounts", "device-specs", "cdi-cri"]}"#;

pub async fn run(ctx: &mut Ctx) -> anyhow::Result<()> {
    ctx.say("\n## 8. Hand-out checks (NVIDIA guest, 8 GPUs, every answer field)");
    let fx = Fixture::dgx()?;
    // The volume-mounts strategy mounts /dev/null, which every real node has.
    let null = fx.root().join("dev/null");
    if !null.exists() {
        std::fs::write(&null, "")?;
    }
    let wasm_path = fx.add_guest(GuestKind::Nvidia, Some(CONFIG))?;
    let limits = GuestLimits::default();
    let policy = GuestPolicy::parse(GuestKind::Nvidia.policy(), &limits)
        .map_err(|e| anyhow::anyhow!("policy: {e}"))?;
    let grant = Arc::new(policy.grant.clone());
    let runtime = Runtime::new(fx.root(), &fx.cdi, limits)
        .map_err(|e| anyhow::anyhow!("{e:#}"))?
        .with_device_nodes(DeviceNodes::Simulated);
    let guest = runtime
        .load("nvidia-gpu", &wasm_path, CONFIG.to_string(), policy)
        .await?;
    let ids: Vec<String> = guest
        .list_devices(GPU)
        .await?
        .into_iter()
        .map(|d| d.id)
        .collect();
    let containers = vec![ids];
    let root = NodeRoot::new(fx.root(), DeviceNodes::Simulated);
    let ledger = guest.cdi_ledger().clone();

    let answer = guest.allocate(GPU, containers.clone()).await?;
    let a = &answer[0];
    anyhow::ensure!(
        !a.envs.is_empty()
            && !a.mounts.is_empty()
            && a.devices.len() >= 8
            && a.cdi_devices.len() == 8,
        "the answer lacks a field: {a:?}"
    );
    handout::check_allocation(a, &root, &grant, &ledger)
        .map_err(|e| anyhow::anyhow!("the shipped policy refuses the answer: {e}"))?;
    before_check(a, fx.root(), &grant)?;
    ctx.say(format!(
        "answer: {} env, {} mounts, {} device specs, {} CDI names",
        a.envs.len(),
        a.mounts.len(),
        a.devices.len(),
        a.cdi_devices.len()
    ));

    let n = ctx.n(2000, 20);
    let warm = ctx.n(100, 3);
    let (mut old, mut new, mut alloc_old, mut alloc_new) =
        (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    for i in 0..warm + n {
        let t = Instant::now();
        before_check(a, fx.root(), &grant)?;
        let d_old = t.elapsed();
        let t = Instant::now();
        handout::check_allocation(a, &root, &grant, &ledger)?;
        let d_new = t.elapsed();

        let t = Instant::now();
        let fresh = guest.allocate(GPU, containers.clone()).await?;
        before_check(&fresh[0], fx.root(), &grant)?;
        let d_alloc_old = t.elapsed();
        let t = Instant::now();
        let fresh = guest.allocate(GPU, containers.clone()).await?;
        handout::check_allocation(&fresh[0], &root, &grant, &ledger)?;
        let d_alloc_new = t.elapsed();
        if i >= warm {
            old.push(d_old);
            new.push(d_new);
            alloc_old.push(d_alloc_old);
            alloc_new.push(d_alloc_new);
        }
    }
    let (old, new, alloc_old, alloc_new) = (
        Samples::new(old),
        Samples::new(new),
        Samples::new(alloc_old),
        Samples::new(alloc_new),
    );
    ctx.say(format!("checks before: {}", old.summary()));
    ctx.say(format!("checks after:  {}", new.summary()));
    ctx.say(format!("allocate + checks before: {}", alloc_old.summary()));
    ctx.say(format!("allocate + checks after:  {}", alloc_new.summary()));
    let extra = new.p50().saturating_sub(old.p50());
    ctx.row(
        Row::new("Hand-out checks per Allocate (8 GPUs), p50")
            .value(fmt_dur(new.p50()))
            .baseline(format!("{} (previous checks)", fmt_dur(old.p50())))
            .ratio(new.p50().as_secs_f64(), old.p50().as_secs_f64())
            .target(
                format!("extra ≤ 50 µs (measured {})", fmt_dur(extra)),
                extra.as_micros() <= 50,
            ),
    );
    for (label, pick) in [("p50", 50.0), ("p99", 99.0)] {
        let (after, before) = (alloc_new.pct(pick), alloc_old.pct(pick));
        ctx.row(
            Row::new(format!("Guest allocate + checks, {label}"))
                .value(fmt_dur(after))
                .baseline(format!("{} (previous checks)", fmt_dur(before)))
                .ratio(after.as_secs_f64(), before.as_secs_f64())
                .target("—", true),
        );
    }
    Ok(())
}

/// The checks `resource::answer::check` made before the hand-out allowlist, as they
/// were (the baseline of this figure).
fn before_check(a: &ContainerAllocation, host_root: &Path, grant: &Grant) -> anyhow::Result<()> {
    let path_ok = |p: &str| {
        let path = Path::new(p);
        path.is_absolute()
            && !p.contains('\0')
            && !path.components().any(|c| c == Component::ParentDir)
    };
    let exists = |p: &str| host_root.join(p.trim_start_matches('/')).exists();
    for key in a.envs.keys() {
        anyhow::ensure!(!key.is_empty() && !key.contains('=') && !key.contains('\0'));
    }
    for key in a.annotations.keys() {
        anyhow::ensure!(!key.is_empty());
    }
    for m in &a.mounts {
        anyhow::ensure!(path_ok(&m.container_path) && path_ok(&m.host_path));
        anyhow::ensure!(
            grant
                .mounts
                .iter()
                .any(|g| Path::new(&m.host_path).starts_with(&g.host_root))
        );
        anyhow::ensure!(exists(&m.host_path));
    }
    for d in &a.devices {
        anyhow::ensure!(path_ok(&d.container_path) && path_ok(&d.host_path));
        anyhow::ensure!(
            !d.permissions.is_empty() && d.permissions.chars().all(|c| "rwm".contains(c))
        );
        anyhow::ensure!(grant.devices.iter().any(|g| glob(&g.pattern, &d.host_path)));
        anyhow::ensure!(exists(&d.host_path));
    }
    for name in &a.cdi_devices {
        anyhow::ensure!(handout::cdi_names::is_qualified(name));
    }
    Ok(())
}
