//! `wdp-bench profile <what> <iterations>`: one operation in a loop and nothing else,
//! for `strace -c -f` (syscalls per call: run with 0 and with N iterations, subtract)
//! and `valgrind --tool=callgrind` (where the instructions go).

use std::sync::Arc;

use wasm_device_plugin::policy::GuestLimits;
use wasm_device_plugin::policy::GuestPolicy;

use crate::fixture::{Fixture, GPU, GuestKind};
use crate::native::{Direct, HostFns, NvidiaNative};
use crate::raw::{Live, Raw, werr};

pub const WHAT: [&str; 7] = [
    "list-hostfns",
    "list-direct",
    "alloc-hostfns",
    "alloc-targeted",
    "guest-list",
    "guest-alloc",
    "shared-10k",
];

pub fn run(what: &str, iterations: usize) -> anyhow::Result<()> {
    let fx = Fixture::dgx()?;
    let limits = GuestLimits::default();
    let policy =
        |kind: GuestKind| GuestPolicy::parse(kind.policy(), &limits).map_err(anyhow::Error::msg);
    let grant = policy(GuestKind::Nvidia)?.grant;
    let mut hostfns = NvidiaNative::new(HostFns::new(fx.root(), grant.clone()));
    let ids: Vec<String> = hostfns
        .list_devices()
        .map_err(anyhow::Error::msg)?
        .into_iter()
        .map(|d| d.id)
        .collect();
    let containers = vec![ids];
    match what {
        "list-hostfns" | "alloc-hostfns" | "alloc-targeted" => {
            for _ in 0..iterations {
                match what {
                    "list-hostfns" => hostfns.list_devices().map(drop),
                    "alloc-hostfns" => hostfns.allocate(&containers).map(drop),
                    _ => hostfns.allocate_targeted(&containers).map(drop),
                }
                .map_err(anyhow::Error::msg)?;
            }
        }
        "list-direct" => {
            let mut direct = NvidiaNative::new(Direct::new(fx.root()));
            for _ in 0..iterations {
                direct.list_devices().map_err(anyhow::Error::msg)?;
            }
        }
        "guest-list" | "guest-alloc" => {
            let raw = Raw::new().map_err(werr)?;
            let pre = raw
                .pre(&raw.compile(GuestKind::Nvidia.wasm()).map_err(werr)?)
                .map_err(werr)?;
            let mut live = Live::start(&raw, &pre, fx.root(), &Arc::new(grant), "")?;
            for _ in 0..iterations {
                if what == "guest-list" {
                    live.list_devices(GPU)?;
                } else {
                    live.allocate(GPU, &containers)?;
                }
            }
        }
        "shared-10k" => {
            let raw = Raw::new().map_err(werr)?;
            let pre = raw
                .pre(&raw.compile(GuestKind::Infiniband.wasm()).map_err(werr)?)
                .map_err(werr)?;
            let grant = Arc::new(policy(GuestKind::Infiniband)?.grant);
            let mut live = Live::start(
                &raw,
                &pre,
                fx.root(),
                &grant,
                crate::sections::scale::CONFIG,
            )?;
            for _ in 0..iterations {
                live.list_devices("rdma/shared")?;
            }
        }
        other => anyhow::bail!("profile: unknown {other:?}; one of {}", WHAT.join(", ")),
    }
    Ok(())
}
