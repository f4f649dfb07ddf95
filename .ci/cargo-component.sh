#!/usr/bin/env bash
# The vendor path with `cargo component` (docs/write-a-guest.md, step 4). Vendors were
# promised it while upstream moves to plain wasm32-wasip2 builds, so CI keeps both
# working: host/tests/guest_template.rs builds the template with plain cargo, this builds
# it with the pinned cargo-component (installed from crates.io into
# target/cargo-component when absent: about 7 minutes on 2 cores, once) exactly as the
# guide says, and has the host load the result against a fixture.
set -euo pipefail
cd "$(dirname "$0")/.."

version=0.21.1
work=$PWD/target/cargo-component
has_version() { "$1" --version 2>/dev/null | grep -qx "cargo-component $version"; }
if ! has_version cargo-component; then
  if ! has_version "$work/bin/cargo-component"; then
    cargo install cargo-component --version "$version" --locked --root "$work"
  fi
  export PATH="$work/bin:$PATH"
fi
cargo-component --version

# Steps 1-2 of the guide: a copy of the template, named, pointed at this checkout, with
# the size profile. It lies inside the host workspace's directory, hence `[workspace]`.
crate=$work/acme-widget
rm -rf "$crate"
mkdir -p "$crate"
cp -r guests/template/Cargo.toml guests/template/src guests/template/policy.json "$crate/"
rm -f "$crate/src/bindings.rs"
cp guests/Cargo.lock "$crate/"
sed -i \
  -e 's|^name = "template"$|name = "acme-widget"|' \
  -e "s|path = \"../sdk\"|path = \"$PWD/guests/sdk\"|" \
  -e "s|path = \"../../wit\"|path = \"$PWD/wit\"|" \
  "$crate/Cargo.toml"
cat >> "$crate/Cargo.toml" <<'TOML'

[workspace]

[profile.release]
opt-level = "s"
lto = true
codegen-units = 1
panic = "abort"
strip = true
TOML

# Step 4: `cargo component build --release` (wasm32-wasip1 plus the WASI adapter).
(cd "$crate" && cargo component build --release --target-dir "$work/target")
wasm=$work/target/wasm32-wasip1/release/acme_widget.wasm
ls -l "$wasm"

# Step 6: the host loads it against a fixture and advertises the widget.
fixture=$work/fixture
guests=$work/guests
rm -rf "$fixture" "$guests"
mkdir -p "$fixture/sys/class/widget/w0" "$fixture/dev/widget" "$guests"
echo ok >"$fixture/sys/class/widget/w0/health"
echo 0 >"$fixture/sys/class/widget/w0/numa_node"
touch "$fixture/dev/widget/w0"
cp "$wasm" "$guests/acme-widget.wasm"
cp "$crate/policy.json" "$guests/acme-widget.policy.json"
cargo run -q -p wasm-device-plugin -- inspect "$guests/acme-widget.wasm" --host-root "$fixture"
advertised=$(cargo run -q -p wasm-device-plugin -- check --host-root "$fixture" --simulated-node --guests-dir "$guests")
echo "$advertised"
grep -q '^example.com/widget  (guest acme-widget;' <<<"$advertised"
grep -qx '  w0  Healthy  NUMA 0' <<<"$advertised"
