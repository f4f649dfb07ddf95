//! Figure 2, guest call cost: the host's calls into the NVIDIA guest (`list-devices`, `allocate`
//! of all 8 GPUs) against the same logic compiled natively; and getting a guest ready
//! from the compiled cache, against compiling it.

use std::sync::Arc;
use std::time::{Duration, Instant};

use wasm_device_plugin::policy::GuestLimits;
use wasm_device_plugin::policy::GuestPolicy;
use wasm_device_plugin::runtime::Runtime;
use wasm_device_plugin::runtime::cache::CompileCache;

use crate::Ctx;
use crate::fixture::{Fixture, GPU, GuestKind};
use crate::native::{Direct, HostFns, NvidiaNative};
use crate::raw::{Live, Raw};
use crate::stats::{Row, Samples, fmt_dur, ms, time_sync};

pub async fn run(ctx: &mut Ctx) -> anyhow::Result<()> {
    ctx.say("\n## 2. Guest call cost (NVIDIA guest, simulated DGX H100, 8 GPUs)");
    let fx = Fixture::dgx()?;
    let wasm_path = fx.add_guest(GuestKind::Nvidia, None)?;
    let limits = GuestLimits::default();
    let policy = GuestPolicy::parse(GuestKind::Nvidia.policy(), &limits)
        .map_err(|e| anyhow::anyhow!("policy: {e}"))?;
    let grant = Arc::new(policy.grant.clone());

    // The host's own path: Runtime::load, then Guest calls (queue to the guest's thread,
    // epoch deadline, call, answer converted to host types, reply over a oneshot).
    let runtime = Runtime::new(fx.root(), &fx.cdi, limits.clone())
        .map(|r| r.with_device_nodes(wasm_device_plugin::handout::DeviceNodes::Simulated))
        .map_err(|e| anyhow::anyhow!("{e:#}"))?
        .with_cache(CompileCache::open(&fx.cache)?);
    let guest = runtime
        .load("nvidia-gpu", &wasm_path, String::new(), policy.clone())
        .await?;
    let ids: Vec<String> = guest
        .list_devices(GPU)
        .await?
        .into_iter()
        .map(|d| d.id)
        .collect();
    anyhow::ensure!(
        ids.len() == 8,
        "expected 8 GPUs, the guest lists {}",
        ids.len()
    );
    let containers = vec![ids.clone()];

    let n = ctx.n(1000, 10);
    let warm = ctx.n(50, 3);
    let mut list = Vec::with_capacity(n);
    let mut alloc = Vec::with_capacity(n);
    let mut resources = Vec::with_capacity(n);
    for i in 0..warm + n {
        let t = Instant::now();
        let devices = guest.list_devices(GPU).await?;
        let d1 = t.elapsed();
        let t = Instant::now();
        let answer = guest.allocate(GPU, containers.clone()).await?;
        let d2 = t.elapsed();
        anyhow::ensure!(devices.len() == 8 && answer.len() == 1);
        // The host's smallest call: `preferred-allocation` is not needed here; the
        // cheapest export through the same path is a list of an unknown resource.
        let t = Instant::now();
        let _ = guest.list_devices("example.com/none").await;
        let d3 = t.elapsed();
        if i >= warm {
            list.push(d1);
            alloc.push(d2);
            resources.push(d3);
        }
    }
    let (list, alloc, tiny) = (
        Samples::new(list),
        Samples::new(alloc),
        Samples::new(resources),
    );

    // The same logic natively: through the host's host-function code, and through std::fs.
    let mut via_hostfns = NvidiaNative::new(HostFns::new(fx.root(), policy.grant.clone()));
    let mut direct = NvidiaNative::new(Direct::new(fx.root()));
    let native_ids: Vec<String> = via_hostfns
        .list_devices()
        .map_err(anyhow::Error::msg)?
        .into_iter()
        .map(|d| d.id)
        .collect();
    anyhow::ensure!(
        native_ids == ids,
        "native enumeration differs: {native_ids:?} vs {ids:?}"
    );
    anyhow::ensure!(direct.list_devices().map_err(anyhow::Error::msg)?.len() == 8);
    let n_list_hostfns = time_sync(warm, n, || {
        via_hostfns.list_devices().expect("native list");
    });
    let n_alloc_hostfns = time_sync(warm, n, || {
        via_hostfns.allocate(&containers).expect("native allocate");
    });
    let n_alloc_targeted = time_sync(warm, n, || {
        via_hostfns
            .allocate_targeted(&containers)
            .expect("native allocate");
    });
    let n_list_direct = time_sync(warm, n, || {
        direct.list_devices().expect("native list");
    });
    let n_alloc_direct = time_sync(warm, n, || {
        direct.allocate(&containers).expect("native allocate");
    });

    // The same calls without the hop to the guest's thread (the raw wasmtime call).
    let raw = Raw::new().map_err(|e| anyhow::anyhow!("{e:#}"))?;
    let wasm = GuestKind::Nvidia.wasm();
    let compile = time_sync(0, ctx.n(5, 1), || {
        raw.compile(wasm).expect("compiles");
    });
    let component = raw.compile(wasm).map_err(|e| anyhow::anyhow!("{e:#}"))?;
    let pre = raw.pre(&component).map_err(|e| anyhow::anyhow!("{e:#}"))?;
    let mut live = Live::start(&raw, &pre, fx.root(), &grant, "")?;
    let r_list = time_sync(warm, n, || {
        live.list_devices(GPU).expect("raw list");
    });
    let r_alloc = time_sync(warm, n, || {
        live.allocate(GPU, &containers).expect("raw allocate");
    });
    let r_resources = time_sync(warm, n, || {
        live.resources().expect("raw resources");
    });

    ctx.say(format!(
        "list-devices, host call (Guest::list_devices): {}",
        list.summary()
    ));
    ctx.say(format!(
        "list-devices, raw wasmtime call (no thread hop): {}",
        r_list.summary()
    ));
    ctx.say(format!(
        "list-devices, native via host functions: {}",
        n_list_hostfns.summary()
    ));
    ctx.say(format!(
        "list-devices, native via std::fs: {}",
        n_list_direct.summary()
    ));
    ctx.say(format!(
        "allocate 8 GPUs, host call (Guest::allocate): {}",
        alloc.summary()
    ));
    ctx.say(format!(
        "allocate 8 GPUs, raw wasmtime call: {}",
        r_alloc.summary()
    ));
    ctx.say(format!(
        "allocate 8 GPUs, native via host functions: {}",
        n_alloc_hostfns.summary()
    ));
    ctx.say(format!(
        "allocate 8 GPUs, native via std::fs: {}",
        n_alloc_direct.summary()
    ));
    ctx.say(format!(
        "proposed allocate without the bus scan (re-read the 8 GPUs' information files only), native via host functions: {}",
        n_alloc_targeted.summary()
    ));
    ctx.say(format!(
        "smallest host call (list-devices of an unknown resource: guest refuses at once): {}",
        tiny.summary()
    ));
    ctx.say(format!(
        "smallest raw call (resources()): {}",
        r_resources.summary()
    ));
    let layer = |host: &Samples, native: &Samples| ms(host.p50()) - ms(native.p50());
    ctx.say(format!(
        "Wasm layer per call (host call p50 − native-via-host-functions p50): list {:.3} ms, allocate {:.3} ms; \
         of which the thread hop (host call − raw call): list {:.3} ms, allocate {:.3} ms",
        layer(&list, &n_list_hostfns),
        layer(&alloc, &n_alloc_hostfns),
        layer(&list, &r_list),
        layer(&alloc, &r_alloc),
    ));
    ctx.say(format!(
        "sandboxed node access (native via host functions − native via std::fs): list {:.3} ms, allocate {:.3} ms",
        layer(&n_list_hostfns, &n_list_direct),
        layer(&n_alloc_hostfns, &n_alloc_direct),
    ));
    for (label, host, native) in [
        ("list-devices (8 GPUs)", &list, &n_list_hostfns),
        ("allocate (8 GPUs)", &alloc, &n_alloc_hostfns),
    ] {
        ctx.row(
            Row::new(format!("2. guest call {label}, p50"))
                .value(fmt_dur(host.p50()))
                .baseline(format!(
                    "{} native, same host functions",
                    fmt_dur(native.p50())
                ))
                .ratio(ms(host.p50()), ms(native.p50())),
        );
    }
    ctx.row(
        Row::new("2. proposed allocate without bus scan (native via host functions), p50")
            .value(fmt_dur(n_alloc_targeted.p50()))
            .baseline(format!(
                "{} today's logic, same path",
                fmt_dur(n_alloc_hostfns.p50())
            ))
            .ratio(ms(n_alloc_targeted.p50()), ms(n_alloc_hostfns.p50())),
    );
    ctx.row(
        Row::new("2. guest list-devices p50 vs native std::fs")
            .value(fmt_dur(list.p50()))
            .baseline(format!("{} native, std::fs", fmt_dur(n_list_direct.p50())))
            .ratio(ms(list.p50()), ms(n_list_direct.p50())),
    );

    // Instantiation, and loading from the compiled cache.
    let n_inst = ctx.n(300, 10);
    let instantiate = time_sync(ctx.n(10, 1), n_inst, || {
        Live::start(&raw, &pre, fx.root(), &grant, "").expect("instantiates");
    });
    let native_new = time_sync(10, n_inst, || {
        std::hint::black_box(NvidiaNative::new(HostFns::new(
            fx.root(),
            policy.grant.clone(),
        )));
    });
    let cache = CompileCache::open(&fx.cache)?;
    let cache_hit = time_sync(1, ctx.n(50, 3), || {
        let (_, outcome) = cache.get_or_compile(&raw.engine, wasm).expect("cache");
        assert_eq!(
            outcome,
            wasm_device_plugin::runtime::cache::CacheOutcome::Hit,
            "the bench's engine must share the host's cache key"
        );
    });
    let serialized = component
        .serialize()
        .map_err(|e| anyhow::anyhow!("{e:#}"))?;
    let deserialize = time_sync(1, ctx.n(50, 3), || {
        // SAFETY: bytes this process just serialized with the same engine.
        unsafe { wasmtime::component::Component::deserialize(&raw.engine, &serialized) }
            .expect("deserializes");
    });
    let pre_link = time_sync(1, ctx.n(50, 3), || {
        raw.pre(&component).expect("links");
    });
    let mut load_cached = Vec::new();
    for _ in 0..ctx.n(20, 2) {
        let t = Instant::now();
        let g = runtime
            .load("nvidia-gpu", &wasm_path, String::new(), policy.clone())
            .await?;
        load_cached.push(t.elapsed());
        drop(g);
    }
    let load_cached = Samples::new(load_cached);
    let uncached = Runtime::new(fx.root(), &fx.cdi, limits.clone())
        .map(|r| r.with_device_nodes(wasm_device_plugin::handout::DeviceNodes::Simulated))
        .map_err(|e| anyhow::anyhow!("{e:#}"))?;
    let mut load_compiled = Vec::new();
    for _ in 0..ctx.n(5, 1) {
        let t = Instant::now();
        let g = uncached
            .load("nvidia-gpu", &wasm_path, String::new(), policy.clone())
            .await?;
        load_compiled.push(t.elapsed());
        drop(g);
    }
    let load_compiled = Samples::new(load_compiled);
    ctx.say(format!(
        "compile (Component::new, parallel Cranelift): {}",
        compile.summary()
    ));
    ctx.say(format!(
        "cache hit (CompileCache::get_or_compile: read, 2× SHA-256, deserialize): {}",
        cache_hit.summary()
    ));
    ctx.say(format!(
        "  of which Component::deserialize alone: {}",
        deserialize.summary()
    ));
    ctx.say(format!(
        "pre-link (instantiate_pre + DevicePluginPre::new): {}",
        pre_link.summary()
    ));
    ctx.say(format!(
        "instantiate + configure (new Store, WASI ctx, limits): {}",
        instantiate.summary()
    ));
    ctx.say(format!(
        "native equivalent (state + config): {}",
        native_new.summary()
    ));
    ctx.say(format!(
        "Runtime::load from the cache (read, check, cache hit, pre-link, thread, instantiate, configure, resources): {}",
        load_cached.summary()
    ));
    ctx.say(format!(
        "Runtime::load without a cache (compiles): {}",
        load_compiled.summary()
    ));
    ctx.row(
        Row::new("2. instantiate + configure from Pre, p50")
            .value(fmt_dur(instantiate.p50()))
            .baseline(format!(
                "{} native state + config",
                fmt_dur(native_new.p50())
            ))
            .ratio(ms(instantiate.p50()), ms(native_new.p50()))
            .target(
                "≤ 100 µs p50 (notes P3)",
                instantiate.p50() <= Duration::from_micros(100),
            ),
    );
    ctx.row(
        Row::new("2. instantiate + configure from Pre, p99")
            .value(fmt_dur(instantiate.p99()))
            .baseline("—")
            .target(
                "≤ 250 µs p99 (notes P3)",
                instantiate.p99() <= Duration::from_micros(250),
            ),
    );
    ctx.row(
        Row::new("2. guest ready from compiled cache (Runtime::load), p50")
            .value(fmt_dur(load_cached.p50()))
            .baseline(format!(
                "{} compiling (no cache)",
                fmt_dur(load_compiled.p50())
            ))
            .ratio(ms(load_cached.p50()), ms(load_compiled.p50()))
            .target(
                "≤ 5 ms (notes P2)",
                load_cached.p50() <= Duration::from_millis(5),
            ),
    );
    Ok(())
}
