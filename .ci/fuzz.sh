#!/usr/bin/env bash
# A short cargo-fuzz run of the path resolver (fuzz/fuzz_targets/resolve.rs). cargo fuzz
# needs a nightly toolchain (sanitizer flags); it is installed when absent, and
# cargo-fuzz itself is installed pinned into target/cargo-fuzz. The deterministic
# property test in host/src/host_root/resolver.rs runs in every `cargo test` besides this.
set -euo pipefail
cd "$(dirname "$0")/.."

seconds=${FUZZ_SECONDS:-45}
version=0.13.2
root=$PWD/target/cargo-fuzz
rustup toolchain list | grep -q '^nightly' || rustup toolchain install nightly --profile minimal
if ! "$root/bin/cargo-fuzz" --version 2>/dev/null | grep -q "$version"; then
  cargo +nightly install cargo-fuzz --version "$version" --locked --root "$root"
fi
export PATH="$root/bin:$PATH"
cd fuzz
cargo +nightly fuzz run resolve -- -max_total_time="$seconds" -seed=1 -dict=resolve.dict
