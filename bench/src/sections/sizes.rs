//! Figure 7, guest sizes: the release builds `testkit/build.rs` makes (profile in
//! `guests/Cargo.toml`: opt-level "s", LTO, one codegen unit, panic=abort, stripped),
//! against the smallest component the same toolchain and profile produce (the
//! `wrong-world` test guest: wit-bindgen and std, next to no logic).

use crate::Ctx;
use crate::stats::{Row, fmt_bytes};

const TARGET: u64 = 190 * 1024;

pub fn run(ctx: &mut Ctx) -> anyhow::Result<()> {
    ctx.say("\n## 7. Guest sizes (release, stripped)");
    let floor = std::fs::metadata(testkit::guests::WRONG_WORLD)?.len();
    ctx.say(format!(
        "floor: wrong-world (a component with no logic) {} ({floor} B)",
        fmt_bytes(floor)
    ));
    for (name, path) in [
        ("nvidia-gpu", testkit::guests::NVIDIA_GPU),
        ("infiniband", testkit::guests::INFINIBAND),
        ("conformance", testkit::guests::CONFORMANCE),
    ] {
        let size = std::fs::metadata(path)?.len();
        ctx.say(format!("{name}: {} ({size} B) {path}", fmt_bytes(size)));
        if name == "conformance" {
            continue; // a test guest, not a reference guest
        }
        ctx.row(
            Row::new(format!("7. guest size: {name}"))
                .value(fmt_bytes(size))
                .baseline(format!("{} (empty component)", fmt_bytes(floor)))
                .ratio(size as f64, floor as f64)
                .target("≤ 190 KiB", size <= TARGET),
        );
    }
    Ok(())
}
