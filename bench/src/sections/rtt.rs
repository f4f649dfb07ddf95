//! Figure 1, Allocate round trip through the whole stack, in process: a client dials the
//! plug-in socket the way the kubelet does and calls `Allocate` on the real `Node`
//! serving the NVIDIA guest on the simulated DGX H100; the baseline is a bare tonic
//! server (no logic, empty answer) on a unix socket in the same directory, called with
//! an empty request by the same kind of client. Host and baseline calls alternate in
//! rounds, so that load from other processes hits both alike.

use std::time::{Duration, Instant};

use kubelet_api::v1beta1 as pb;
use pb::device_plugin_client::DevicePluginClient;
use tonic::transport::Channel;
use wasm_device_plugin::node::Node;

use crate::Ctx;
use crate::bare::{Bare, BareServer};
use crate::fixture::{Fixture, GPU, GuestKind, WAIT, WIDGET, registered};
use crate::inline::InlineGuest;
use crate::native::{Direct, NvidiaNative};
use crate::raw::{Live, Raw, werr};
use crate::stats::{Row, Samples, fmt_dur, ms};

fn request(ids: &[String]) -> pb::AllocateRequest {
    pb::AllocateRequest {
        container_requests: vec![pb::ContainerAllocateRequest {
            devices_ids: ids.to_vec(),
        }],
    }
}

async fn timed(
    client: &mut DevicePluginClient<Channel>,
    req: &pb::AllocateRequest,
) -> anyhow::Result<Duration> {
    let t = Instant::now();
    client.allocate(req.clone()).await?;
    Ok(t.elapsed())
}

/// Runs `rounds` × `per_round` calls of each `(client, request)` in turn.
pub async fn interleaved(
    calls: &mut [(&mut DevicePluginClient<Channel>, &pb::AllocateRequest)],
    warm: usize,
    rounds: usize,
    per_round: usize,
) -> anyhow::Result<Vec<Samples>> {
    for (client, req) in calls.iter_mut() {
        for _ in 0..warm {
            timed(client, req).await?;
        }
    }
    let mut out = vec![Vec::new(); calls.len()];
    for _ in 0..rounds {
        for (i, (client, req)) in calls.iter_mut().enumerate() {
            for _ in 0..per_round {
                out[i].push(timed(client, req).await?);
            }
        }
    }
    Ok(out.into_iter().map(Samples::new).collect())
}

pub async fn run(ctx: &mut Ctx) -> anyhow::Result<()> {
    ctx.say("\n## 1. Allocate round trip, in process (client → unix socket → host → Wasm guest → answer)");
    let fx = Fixture::dgx()?;
    fx.add_guest(GuestKind::Nvidia, None)?;
    fx.add_guest(GuestKind::Conformance, None)?;
    let widgets: Vec<String> = (0..8).map(|i| format!("w{i}")).collect();
    let numa: Vec<(&str, Option<u32>)> = widgets.iter().map(|w| (w.as_str(), Some(0))).collect();
    fx.node.add_widgets("widget", &numa)?;
    let kubelet = fx.kubelet(0).await?;
    let node = Node::start(fx.host_config(&kubelet)).await?;
    registered(&kubelet, &[GPU, WIDGET], 1).await?;
    let widget_view = kubelet
        .wait_for(WIDGET, WAIT, |v| v.connected && v.devices.len() == 8)
        .await
        .map_err(anyhow::Error::msg)?;
    let mut widget = DevicePluginClient::new(testkit::kubelet::dial(&widget_view.endpoint).await?);
    let one_widget = request(&widgets[..1]);
    // The same guest behind the host's ResourceService and kubelet layer, called inline
    // (no hop to a guest thread): the proposal's prototype, on its own stand-in.
    let inline_kubelet = fx.kubelet(1).await?;
    let (stop_inline, inline_task) = serve_inline(&fx, &inline_kubelet, false).await?;
    let inline_view = inline_kubelet
        .wait_for(WIDGET, WAIT, |v| v.connected && v.devices.len() == 8)
        .await
        .map_err(anyhow::Error::msg)?;
    let mut widget_inline =
        DevicePluginClient::new(testkit::kubelet::dial(&inline_view.endpoint).await?);
    let bip_kubelet = fx.kubelet(2).await?;
    let (stop_bip, bip_task) = serve_inline(&fx, &bip_kubelet, true).await?;
    let bip_view = bip_kubelet
        .wait_for(WIDGET, WAIT, |v| v.connected && v.devices.len() == 8)
        .await
        .map_err(anyhow::Error::msg)?;
    let mut widget_bip = DevicePluginClient::new(testkit::kubelet::dial(&bip_view.endpoint).await?);
    let view = kubelet
        .wait_for(GPU, WAIT, |v| v.connected && v.devices.len() == 8)
        .await
        .map_err(anyhow::Error::msg)?;
    let ids: Vec<String> = view.devices.iter().map(|d| d.id.clone()).collect();
    let mut host = DevicePluginClient::new(testkit::kubelet::dial(&view.endpoint).await?);
    let bare_socket = kubelet.dir().join("bare.sock");
    let bare = BareServer::start(&bare_socket, Bare::default())?;
    let mut base = DevicePluginClient::new(testkit::kubelet::dial(&bare_socket).await?);
    let mut base2 = base.clone();
    let mut host8 = host.clone();
    // A native plug-in: the same NVIDIA logic compiled in, reading the node with std::fs.
    let native_socket = kubelet.dir().join("native.sock");
    let native_server = BareServer::start(
        &native_socket,
        Bare::with_native_logic(NvidiaNative::new(Direct::new(fx.root()))),
    )?;
    let mut native = DevicePluginClient::new(testkit::kubelet::dial(&native_socket).await?);
    let mut native8 = native.clone();

    let one = request(&ids[..1]);
    let eight = request(&ids);
    let empty = pb::AllocateRequest::default();
    let rounds = ctx.n(10, 2);
    let per_round = ctx.n(300, 25);
    let samples = interleaved(
        &mut [
            (&mut host, &one),
            (&mut base, &empty),
            (&mut native, &one),
            (&mut widget, &one_widget),
            (&mut widget_inline, &one_widget),
            (&mut widget_bip, &one_widget),
            (&mut host8, &eight),
            (&mut base2, &empty),
            (&mut native8, &eight),
        ],
        ctx.n(100, 5),
        rounds,
        per_round,
    )
    .await?;
    let (host1, bare1, native1) = (&samples[0], &samples[1], &samples[2]);
    let (widget1, widget_inline1, widget_bip1) = (&samples[3], &samples[4], &samples[5]);
    let (host8s, bare8, native8s) = (&samples[6], &samples[7], &samples[8]);

    // Breakdown: the host's gRPC path alone (options come from memory) against the bare
    // server, and the resource layer's allocate (ID checks + guest call + answer checks)
    // without gRPC.
    let mut opts = Vec::new();
    let mut opts_base = Vec::new();
    let mut service_alloc = Vec::new();
    let service = node
        .resources()
        .into_iter()
        .find(|r| r.name() == GPU)
        .ok_or_else(|| anyhow::anyhow!("{GPU} not served"))?;
    let mut host_opts = DevicePluginClient::new(testkit::kubelet::dial(&view.endpoint).await?);
    for _ in 0..rounds {
        for _ in 0..per_round {
            let t = Instant::now();
            host_opts.get_device_plugin_options(pb::Empty {}).await?;
            opts.push(t.elapsed());
        }
        for _ in 0..per_round {
            let t = Instant::now();
            base.get_device_plugin_options(pb::Empty {}).await?;
            opts_base.push(t.elapsed());
        }
        for _ in 0..per_round / 4 {
            let t = Instant::now();
            service
                .allocate(vec![ids[..1].to_vec()])
                .await
                .map_err(|e| anyhow::anyhow!("{e}"))?;
            service_alloc.push(t.elapsed());
        }
    }
    let (opts, opts_base, service_alloc) = (
        Samples::new(opts),
        Samples::new(opts_base),
        Samples::new(service_alloc),
    );
    ctx.say(format!("host Allocate (1 GPU): {}", host1.summary()));
    ctx.say(format!("bare unary RPC (empty): {}", bare1.summary()));
    ctx.say(format!(
        "native plug-in Allocate (1 GPU; same logic, std::fs): {}",
        native1.summary()
    ));
    ctx.say(format!(
        "host Allocate (1 widget; conformance guest, allocate reads nothing): {}",
        widget1.summary()
    ));
    ctx.say(format!(
        "prototype: same guest called inline on the serving task (no guest thread): {}",
        widget_inline1.summary()
    ));
    ctx.say(format!(
        "prototype: inline under tokio::task::block_in_place: {}",
        widget_bip1.summary()
    ));
    ctx.say(format!("host Allocate (8 GPUs): {}", host8s.summary()));
    ctx.say(format!(
        "bare unary RPC (empty), interleaved with the 8-GPU calls: {}",
        bare8.summary()
    ));
    ctx.say(format!(
        "native plug-in Allocate (8 GPUs): {}",
        native8s.summary()
    ));
    ctx.say(format!(
        "breakdown: host GetDevicePluginOptions RTT (gRPC path, no guest): {}",
        opts.summary()
    ));
    ctx.say(format!(
        "breakdown: bare GetDevicePluginOptions RTT: {}",
        opts_base.summary()
    ));
    ctx.say(format!(
        "breakdown: ResourceService::allocate (1 GPU; ID checks, guest call, answer checks; no gRPC): {}",
        service_alloc.summary()
    ));
    for (label, host, base, native) in [
        ("1 GPU", host1, bare1, native1),
        ("8 GPUs", host8s, bare8, native8s),
    ] {
        ctx.row(
            Row::new(format!("1. Allocate RTT ({label}), in process, p50"))
                .value(fmt_dur(host.p50()))
                .baseline(format!("{} bare tonic", fmt_dur(base.p50())))
                .ratio(ms(host.p50()), ms(base.p50()))
                .ratio_target(1.3),
        );
        ctx.row(
            Row::new(format!("1. Allocate RTT ({label}), in process, p99"))
                .value(fmt_dur(host.p99()))
                .baseline(format!("{} bare tonic", fmt_dur(base.p99())))
                .ratio(ms(host.p99()), ms(base.p99()))
                .ratio_target(2.0),
        );
        ctx.row(
            Row::new(format!(
                "1. Allocate RTT ({label}) vs native plug-in (same logic), p50"
            ))
            .value(fmt_dur(host.p50()))
            .baseline(format!("{} native plug-in", fmt_dur(native.p50())))
            .ratio(ms(host.p50()), ms(native.p50()))
            .ratio_target(1.3),
        );
        ctx.row(
            Row::new(format!(
                "1. Allocate RTT ({label}) vs native plug-in (same logic), p99"
            ))
            .value(fmt_dur(host.p99()))
            .baseline(format!("{} native plug-in", fmt_dur(native.p99())))
            .ratio(ms(host.p99()), ms(native.p99()))
            .ratio_target(2.0),
        );
    }
    for (p, label, h, b) in [
        (50.0, "p50", widget1.p50(), bare1.p50()),
        (99.0, "p99", widget1.p99(), bare1.p99()),
    ] {
        ctx.row(
            Row::new(format!(
                "1. Allocate RTT, guest without node I/O (conformance), {label}"
            ))
            .value(fmt_dur(h))
            .baseline(format!("{} bare tonic", fmt_dur(b)))
            .ratio(ms(h), ms(b))
            .ratio_target(if p < 90.0 { 1.3 } else { 2.0 }),
        );
    }
    for (p, label, h, b, how) in [
        (50.0, "p50", widget_inline1.p50(), bare1.p50(), "inline"),
        (99.0, "p99", widget_inline1.p99(), bare1.p99(), "inline"),
        (
            50.0,
            "p50",
            widget_bip1.p50(),
            bare1.p50(),
            "under block_in_place",
        ),
        (
            99.0,
            "p99",
            widget_bip1.p99(),
            bare1.p99(),
            "under block_in_place",
        ),
    ] {
        ctx.row(
            Row::new(format!(
                "1. same, prototype: guest called {how} (no guest thread), {label}"
            ))
            .value(fmt_dur(h))
            .baseline(format!("{} bare tonic", fmt_dur(b)))
            .ratio(ms(h), ms(b))
            .ratio_target(if p < 90.0 { 1.3 } else { 2.0 }),
        );
    }
    ctx.row(
        Row::new("1. GetDevicePluginOptions RTT (host gRPC path, no guest), p50")
            .value(fmt_dur(opts.p50()))
            .baseline(format!("{} bare tonic", fmt_dur(opts_base.p50())))
            .ratio(ms(opts.p50()), ms(opts_base.p50()))
            .ratio_target(1.3),
    );
    for (stop, task) in [(stop_inline, inline_task), (stop_bip, bip_task)] {
        let _ = stop.send(true);
        let _ = task.await;
    }
    drop(inline_kubelet);
    drop(bip_kubelet);
    native_server.stop().await;
    bare.stop().await;
    node.shutdown().await;
    drop(kubelet);
    Ok(())
}

/// The conformance guest under the host's `ResourceService` and `kubelet::plugin::run`,
/// with [`InlineGuest`] as its backend, registered with `kubelet`.
async fn serve_inline(
    fx: &Fixture,
    kubelet: &testkit::kubelet::KubeletStandIn,
    block_in_place: bool,
) -> anyhow::Result<(
    tokio::sync::watch::Sender<bool>,
    tokio::task::JoinHandle<()>,
)> {
    use std::sync::Arc;
    use wasm_device_plugin::device::{ResourceOptions, ResourceSpec};
    use wasm_device_plugin::kubelet::{KubeletConfig, plugin};
    use wasm_device_plugin::policy::GuestLimits;
    use wasm_device_plugin::policy::GuestPolicy;
    use wasm_device_plugin::resource::ResourceService;

    let raw = Raw::new().map_err(werr)?;
    let pre = raw
        .pre(&raw.compile(GuestKind::Conformance.wasm()).map_err(werr)?)
        .map_err(werr)?;
    let policy = GuestPolicy::parse(GuestKind::Conformance.policy(), &GuestLimits::default())
        .map_err(anyhow::Error::msg)?;
    let grant = Arc::new(policy.grant);
    let live = Live::start(&raw, &pre, fx.root(), &grant, "")?;
    let spec = ResourceSpec {
        name: WIDGET.into(),
        options: ResourceOptions::default(),
    };
    let service = Arc::new(ResourceService::new(
        spec,
        Arc::new(InlineGuest::new("conformance-inline", live, block_in_place)),
        wasm_device_plugin::handout::NodeRoot::new(
            fx.root(),
            wasm_device_plugin::handout::DeviceNodes::Simulated,
        ),
        grant,
    ));
    service.refresh().await;
    let (stop, stopped) = tokio::sync::watch::channel(false);
    let config = KubeletConfig::new(kubelet.dir());
    let readiness = Arc::new(wasm_device_plugin::readiness::Readiness::default());
    let tracker = plugin::track(&readiness, "conformance-inline", &config, service.name());
    let task = tokio::spawn(plugin::run(service, config, tracker, stopped));
    Ok((stop, task))
}
