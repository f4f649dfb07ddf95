//! The real binary, `wasm-device-plugin run`, spawned against the simulated DGX H100
//! with both reference guests (nvidia-gpu, infiniband; default configurations and
//! shipped policies) and a kubelet stand-in in this process:
//!
//! - figure 3, start-up: spawn → the last `Register` (nvidia.com/gpu and rdma/hca)
//!   arrives, cold (empty compile cache) and warm (cache filled); baseline:
//!   `wdp-bench bare-plugin`, a native tokio + tonic plug-in that registers at once;
//! - figure 1b: Allocate round trip against the separate host process (its logging on,
//!   as on a node) vs the bare plug-in process;
//! - figure 4: steady resident set of the serving host vs the bare plug-in;
//! - figure 6: re-registration after `kubelet.sock` is recreated (a kubelet restart) vs
//!   the bare plug-in, which polls `kubelet.sock` at the same 100 ms and registers at
//!   once.

use std::path::Path;
use std::time::{Duration, Instant};

use kubelet_api::v1beta1 as pb;
use pb::device_plugin_client::DevicePluginClient;
use testkit::kubelet::KubeletStandIn;

use crate::Ctx;
use crate::fixture::{
    self, Fixture, GPU, GuestKind, HCA, Proc, WAIT, bare_command, host_command, registered,
};
use crate::sections::rtt::interleaved;
use crate::stats::{Row, Samples, fmt_bytes, fmt_dur, ms};

const BARE: &str = "example.com/bare";

/// One start: spawn, wait for every Register, return the process and spawn→last Register.
async fn start_host(
    ctx: &Ctx,
    fx: &Fixture,
    kubelet: &KubeletStandIn,
    cache: &Path,
    rescan: f64,
    tag: &str,
) -> anyhow::Result<(Proc, Duration)> {
    let log = fx.tmp.path().join(format!("host-{tag}.log"));
    let proc = Proc::spawn(
        host_command(&ctx.host_bin, fx, kubelet.dir(), cache, rescan),
        log,
    )?;
    let last = registered(kubelet, &[GPU, HCA], 1)
        .await
        .map_err(|e| anyhow::anyhow!("{e}\nhost log:\n{}", proc.log_text()))?;
    let took = last - proc.spawned;
    Ok((proc, took))
}

async fn start_bare(
    fx: &Fixture,
    kubelet: &KubeletStandIn,
    tag: &str,
) -> anyhow::Result<(Proc, Duration)> {
    let log = fx.tmp.path().join(format!("bare-{tag}.log"));
    let proc = Proc::spawn(bare_command(kubelet.dir(), BARE)?, log)?;
    let last = registered(kubelet, &[BARE], 1).await?;
    let took = last - proc.spawned;
    Ok((proc, took))
}

/// Start-up phases from the host's JSON log: spawn → "starting", → each resource ready,
/// → each registration.
fn phases(proc: &Proc) -> String {
    let log = proc.log_text();
    let mut parts = Vec::new();
    for (needle, label) in [
        ("starting", "runtime up"),
        ("resource ready", "ready"),
        ("registered with the kubelet", "registered"),
    ] {
        for (at, resource) in fixture::log_events(&log, proc.spawned_wall, needle) {
            let label = if resource.is_empty() {
                label.to_string()
            } else {
                format!("{label} {resource}")
            };
            parts.push((at, label));
        }
    }
    parts.sort();
    parts
        .iter()
        .map(|(at, l)| format!("{l} @{}", fmt_dur(*at)))
        .collect::<Vec<_>>()
        .join(", ")
}

pub async fn run(ctx: &mut Ctx) -> anyhow::Result<()> {
    ctx.say(format!(
        "\n## 3. Start-up, 4. memory, 1b. Allocate RTT and 6. re-registration: the real binary ({})",
        ctx.host_bin.display()
    ));
    let fx = Fixture::dgx()?;
    fx.add_guest(GuestKind::Nvidia, None)?;
    fx.add_guest(GuestKind::Infiniband, None)?;
    let mut k = 0;
    let warm_cache = fx.tmp.path().join("warm-cache");

    // Untimed first start: binary and guests in the page cache, warm cache filled.
    {
        let kubelet = fx.kubelet(k).await?;
        k += 1;
        let (mut p, _) = start_host(ctx, &fx, &kubelet, &warm_cache, 5.0, "first").await?;
        p.stop();
        if !ctx.quick {
            let kubelet = fx.kubelet(k).await?;
            k += 1;
            let (mut p, _) = start_bare(&fx, &kubelet, "first").await?;
            p.stop();
        }
    }

    let (mut cold, mut warm, mut bare) = (vec![], vec![], vec![]);
    let mut cold_phases = String::new();
    let mut warm_phases = String::new();
    let rounds = ctx.n(10, 1);
    for i in 0..rounds {
        let kubelet = fx.kubelet(k).await?;
        k += 1;
        let cache = fx.tmp.path().join(format!("cold-cache-{i}"));
        let (mut p, took) =
            start_host(ctx, &fx, &kubelet, &cache, 5.0, &format!("cold{i}")).await?;
        cold.push(took);
        if i == 0 {
            cold_phases = phases(&p);
        }
        p.stop();
        for j in 0..ctx.n(2, 1) {
            let kubelet = fx.kubelet(k).await?;
            k += 1;
            let (mut p, took) = start_host(
                ctx,
                &fx,
                &kubelet,
                &warm_cache,
                5.0,
                &format!("warm{i}-{j}"),
            )
            .await?;
            warm.push(took);
            if i == 0 && j == 0 {
                warm_phases = phases(&p);
            }
            p.stop();
            let kubelet = fx.kubelet(k).await?;
            k += 1;
            let (mut p, took) = start_bare(&fx, &kubelet, &format!("{i}-{j}")).await?;
            bare.push(took);
            p.stop();
        }
    }
    let (cold, warm, bare) = (Samples::new(cold), Samples::new(warm), Samples::new(bare));
    ctx.say(format!(
        "cold start (empty cache: compiles both guests): {}",
        cold.summary()
    ));
    ctx.say(format!("  phases of one cold start: {cold_phases}"));
    ctx.say(format!("warm start (cache filled): {}", warm.summary()));
    ctx.say(format!("  phases of one warm start: {warm_phases}"));
    ctx.say(format!(
        "bare native plug-in, spawn → Register: {}",
        bare.summary()
    ));
    ctx.row(
        Row::new("3. start-up → last Register, warm cache, p50")
            .value(fmt_dur(warm.p50()))
            .baseline(format!("{} bare native plug-in", fmt_dur(bare.p50())))
            .ratio(ms(warm.p50()), ms(bare.p50()))
            .target("≤ 100 ms", warm.p50() <= Duration::from_millis(100)),
    );
    ctx.row(
        Row::new("3. start-up → last Register, cold (compile), p50")
            .value(fmt_dur(cold.p50()))
            .baseline(format!("{} bare native plug-in", fmt_dur(bare.p50())))
            .ratio(ms(cold.p50()), ms(bare.p50()))
            .target("≤ 3 s", cold.p50() <= Duration::from_secs(3)),
    );

    // A serving host and a serving bare plug-in, side by side.
    let host_kubelet = fx.kubelet(k).await?;
    let mut bare_kubelet = fx.kubelet(k + 1).await?;
    let mut host_kubelet = host_kubelet;
    let (host, _) = start_host(ctx, &fx, &host_kubelet, &warm_cache, 1.0, "serving").await?;
    let (bare_proc, _) = start_bare(&fx, &bare_kubelet, "serving").await?;
    let gpus = host_kubelet
        .wait_for(GPU, WAIT, |v| v.connected && v.devices.len() == 8)
        .await
        .map_err(anyhow::Error::msg)?;
    let hcas = host_kubelet
        .wait_for(HCA, WAIT, |v| v.connected && v.devices.len() == 8)
        .await
        .map_err(anyhow::Error::msg)?;
    let bare_view = bare_kubelet
        .wait_for(BARE, WAIT, |v| v.connected)
        .await
        .map_err(anyhow::Error::msg)?;

    // 1b. Allocate round trip across processes.
    let mut host_gpu = DevicePluginClient::new(testkit::kubelet::dial(&gpus.endpoint).await?);
    let mut host_hca = DevicePluginClient::new(testkit::kubelet::dial(&hcas.endpoint).await?);
    let mut base = DevicePluginClient::new(testkit::kubelet::dial(&bare_view.endpoint).await?);
    let mut base2 = base.clone();
    let gpu_req = pb::AllocateRequest {
        container_requests: vec![pb::ContainerAllocateRequest {
            devices_ids: vec![gpus.devices[0].id.clone()],
        }],
    };
    let hca_req = pb::AllocateRequest {
        container_requests: vec![pb::ContainerAllocateRequest {
            devices_ids: vec![hcas.devices[0].id.clone()],
        }],
    };
    let empty = pb::AllocateRequest::default();
    let samples = interleaved(
        &mut [
            (&mut host_gpu, &gpu_req),
            (&mut base, &empty),
            (&mut host_hca, &hca_req),
            (&mut base2, &empty),
        ],
        ctx.n(50, 3),
        ctx.n(10, 2),
        ctx.n(100, 10),
    )
    .await?;
    ctx.say(format!(
        "Allocate 1 GPU, host process: {}",
        samples[0].summary()
    ));
    ctx.say(format!(
        "empty Allocate, bare process: {}",
        samples[1].summary()
    ));
    ctx.say(format!(
        "Allocate 1 HCA, host process: {}",
        samples[2].summary()
    ));
    ctx.say(format!(
        "empty Allocate, bare process (interleaved with HCA): {}",
        samples[3].summary()
    ));
    for (label, h, b) in [
        ("1 GPU", &samples[0], &samples[1]),
        ("1 HCA", &samples[2], &samples[3]),
    ] {
        ctx.row(
            Row::new(format!("1b. Allocate RTT ({label}), host process, p50"))
                .value(fmt_dur(h.p50()))
                .baseline(format!("{} bare process", fmt_dur(b.p50())))
                .ratio(ms(h.p50()), ms(b.p50()))
                .ratio_target(1.3),
        );
        ctx.row(
            Row::new(format!("1b. Allocate RTT ({label}), host process, p99"))
                .value(fmt_dur(h.p99()))
                .baseline(format!("{} bare process", fmt_dur(b.p99())))
                .ratio(ms(h.p99()), ms(b.p99()))
                .ratio_target(2.0),
        );
    }

    // 4. Memory: let a few rescans pass, then read the resident sets.
    tokio::time::sleep(Duration::from_millis(ctx.n(3000, 500) as u64)).await;
    let mut host_rss = fixture::rss(host.pid())?;
    let mut bare_rss = fixture::rss(bare_proc.pid())?;
    for _ in 0..ctx.n(4, 1) {
        tokio::time::sleep(Duration::from_millis(500)).await;
        let h = fixture::rss(host.pid())?;
        let b = fixture::rss(bare_proc.pid())?;
        host_rss = if h.rss > host_rss.rss { h } else { host_rss };
        bare_rss = if b.rss > bare_rss.rss { b } else { bare_rss };
    }
    ctx.say(format!(
        "host VmRSS {} (anon {}, file {}; peak VmHWM {}; {} threads)",
        fmt_bytes(host_rss.rss),
        fmt_bytes(host_rss.anon),
        fmt_bytes(host_rss.file),
        fmt_bytes(host_rss.hwm),
        host_rss.threads
    ));
    ctx.say(format!(
        "bare VmRSS {} (anon {}, file {}; peak VmHWM {}; {} threads)",
        fmt_bytes(bare_rss.rss),
        fmt_bytes(bare_rss.anon),
        fmt_bytes(bare_rss.file),
        fmt_bytes(bare_rss.hwm),
        bare_rss.threads
    ));
    let top: Vec<String> = fixture::rss_by_mapping(host.pid())?
        .into_iter()
        .take(10)
        .map(|(name, b)| format!("{name} {}", fmt_bytes(b)))
        .collect();
    ctx.say(format!("  host resident by mapping: {}", top.join(", ")));
    let anon: Vec<String> = fixture::anon_by_size(host.pid())?
        .into_iter()
        .take(10)
        .map(|(size, count, b)| format!("{count}× {} → {}", fmt_bytes(size), fmt_bytes(b)))
        .collect();
    ctx.say(format!(
        "  host anonymous mappings by size (count× size → resident): {}",
        anon.join(", ")
    ));
    let top: Vec<String> = fixture::rss_by_mapping(bare_proc.pid())?
        .into_iter()
        .take(6)
        .map(|(name, b)| format!("{name} {}", fmt_bytes(b)))
        .collect();
    ctx.say(format!("  bare resident by mapping: {}", top.join(", ")));
    ctx.row(
        Row::new("4. steady RSS, both guests serving")
            .value(fmt_bytes(host_rss.rss))
            .baseline(format!("{} bare native plug-in", fmt_bytes(bare_rss.rss)))
            .ratio(host_rss.rss as f64, bare_rss.rss as f64)
            .target("≤ 32 MiB", host_rss.rss <= 32 << 20),
    );

    // 6. Re-registration after kubelet.sock is recreated.
    let (mut rereg, mut rereg_bare) = (vec![], vec![]);
    for i in 0..ctx.n(10, 2) {
        host_kubelet.restart().await?;
        let t0 = Instant::now();
        let last = registered(&host_kubelet, &[GPU, HCA], i + 2).await?;
        rereg.push(last.saturating_duration_since(t0));
        bare_kubelet.restart().await?;
        let t0 = Instant::now();
        let last = registered(&bare_kubelet, &[BARE], i + 2).await?;
        rereg_bare.push(last.saturating_duration_since(t0));
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let (rereg, rereg_bare) = (Samples::new(rereg), Samples::new(rereg_bare));
    ctx.say(format!(
        "re-registration (both resources) after kubelet.sock is recreated: {}",
        rereg.summary()
    ));
    ctx.say(format!(
        "bare plug-in, same 100 ms poll, registers at once: {}",
        rereg_bare.summary()
    ));
    ctx.row(
        Row::new("6. re-registration after kubelet.sock recreated, p50")
            .value(fmt_dur(rereg.p50()))
            .baseline(format!(
                "{} bare plug-in, same poll",
                fmt_dur(rereg_bare.p50())
            ))
            .ratio(ms(rereg.p50()), ms(rereg_bare.p50()))
            .target("≤ 1 s", rereg.p50() <= Duration::from_secs(1)),
    );
    ctx.row(
        Row::new("6. re-registration after kubelet.sock recreated, max")
            .value(fmt_dur(rereg.max()))
            .baseline(format!("{} bare plug-in", fmt_dur(rereg_bare.max())))
            .ratio(ms(rereg.max()), ms(rereg_bare.max()))
            .target("≤ 1 s", rereg.max() <= Duration::from_secs(1)),
    );
    drop(host);
    drop(bare_proc);
    Ok(())
}
