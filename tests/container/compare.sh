#!/usr/bin/env bash
# The image's static musl host against today's glibc build, in one run (BENCHMARKS.md,
# "Image"): binary and image sizes, then tests/container/compare_builds.py (start-up to
# /healthz and /readyz, RSS). Not part of CI: it builds the host a third time.
#
#   bash tests/container/compare.sh      (after .ci/container.sh, which built the rest)
#
# The glibc image for comparison is the same layout with the glibc binary and the
# shared libraries `ldd` names, FROM scratch: what distroless/cc adds beyond those
# (CA certificates, tzdata, /etc/passwd) is not counted, since it cannot be pulled here.
set -euo pipefail
cd "$(dirname "$0")/../.."

target="$(realpath -m "${CARGO_TARGET_DIR:-target}")"
state="$target/container"
root=$([ "$(id -u)" -eq 0 ] || echo sudo)
engine="$root env CONTAINERS_CONF=$state/containers.conf podman --root $state/storage --runroot $state/run"
musl="$target/x86_64-unknown-linux-musl/image/wasm-device-plugin"
glibc="$target/release/wasm-device-plugin"

echo "== compare: the glibc build (release, --no-default-features), as the old Containerfile built it"
cargo build --release --locked --no-default-features -p wasm-device-plugin

echo "== compare: a glibc image of the same layout"
context="$state/glibc-context"
rm -rf "$context"
cp -a "$target/image/context" "$context"
install -m 0755 "$glibc" "$context/rootfs/usr/local/bin/wasm-device-plugin"
for lib in $(ldd "$glibc" | grep -o '/[^ ]*'); do
  install -D -m 0755 "$(realpath "$lib")" "$context/rootfs$lib"
done
$engine build -q --timestamp 0 -f deploy/Containerfile -t wdp-compare-glibc:test "$context" >/dev/null
file "$musl" "$glibc" | sed "s|$target/||"
printf '| | musl static | glibc | musl / glibc |\n|---|---|---|---|\n'
m=$($engine image inspect -f '{{.Size}}' wasm-device-plugin:0.1.0)
g=$($engine image inspect -f '{{.Size}}' wdp-compare-glibc:test)
stripped=$(mktemp)
strip -o "$stripped" "$glibc"
awk -v m="$m" -v g="$g" -v ms="$(stat -c %s "$musl")" -v gs="$(stat -c %s "$stripped")" 'BEGIN {
  printf "| image (uncompressed) | %.1f MiB | %.1f MiB | %.2f |\n", m / 2^20, g / 2^20, m / g
  printf "| binary, both stripped | %.1f MiB | %.1f MiB | %.2f |\n", ms / 2^20, gs / 2^20, ms / gs }'
rm -f "$stripped"
$engine rmi wdp-compare-glibc:test >/dev/null

echo "== compare: start-up and memory on the simulated node"
"$target/interop-venv/bin/python" tests/container/compare_builds.py \
  --simnode "$target/debug/simnode" --musl "$musl" --glibc "$glibc"
