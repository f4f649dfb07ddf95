#!/usr/bin/env bash
# Builds the host image offline, from what cargo builds here:
#   1. the host, static: `--profile image` (release, stripped) for
#      x86_64-unknown-linux-musl, `--no-default-features` (no demo, no bundled fixtures);
#   2. the reference guests for wasm32-wasip2 (release, as testkit builds them);
#   3. the image layout in <target>/image/context/rootfs (deploy/README.md, "The image");
#   4. the image, `FROM scratch` (deploy/Containerfile), with Podman or Docker.
#
#   bash deploy/build-image.sh [IMAGE]          (default IMAGE: wasm-device-plugin:0.1.0)
#
# Needs rustup (the pinned toolchain with the x86_64-unknown-linux-musl and wasm32-wasip2
# targets, rust-toolchain.toml), musl-gcc (Debian: musl-tools; aws-lc-sys, below rustls in
# container-device-interface, compiles C) and podman or docker. Environment:
#   CONTAINER_ENGINE  the engine command, word-split (default: podman, else docker);
#                     `none` lays out the context and builds no image
#   CARGO_TARGET_DIR, WDP_GUESTS_TARGET_DIR   as for cargo and testkit
# Podman builds with `--timestamp 0`, so the same artifacts give the same image ID.
set -euo pipefail
cd "$(dirname "$0")/.."

image="${1:-wasm-device-plugin:0.1.0}"
target="$(realpath -m "${CARGO_TARGET_DIR:-target}")"
guests_target="$(realpath -m "${WDP_GUESTS_TARGET_DIR:-$target/guests}")"
triple=x86_64-unknown-linux-musl
binary="$target/$triple/image/wasm-device-plugin"
context="$target/image/context"

if [ -z "${CONTAINER_ENGINE:-}" ]; then
  CONTAINER_ENGINE="$(command -v podman || command -v docker || true)"
  [ -n "$CONTAINER_ENGINE" ] || { echo "build-image: neither podman nor docker found" >&2; exit 1; }
fi
if ! command -v musl-gcc >/dev/null; then
  echo "build-image: musl-gcc not found (Debian/Ubuntu: apt-get install musl-tools)" >&2
  exit 1
fi

echo "== image: host for $triple (profile image)"
cargo build --profile image --locked --no-default-features -p wasm-device-plugin --target "$triple"

echo "== image: reference guests for wasm32-wasip2"
(cd guests && cargo build --release --locked --target wasm32-wasip2 -p nvidia-gpu -p infiniband \
  --target-dir "$guests_target")

echo "== image: layout in $context"
rm -rf "$context"
rootfs="$context/rootfs"
install -D -m 0755 "$binary" "$rootfs/usr/local/bin/wasm-device-plugin"
for guest in nvidia-gpu infiniband; do
  wasm="$guests_target/wasm32-wasip2/release/$(echo "$guest" | tr - _).wasm"
  install -D -m 0644 "$wasm" "$rootfs/etc/wasm-device-plugin/guests/$guest.wasm"
  install -D -m 0644 "guests/$guest/policy.json" "$rootfs/etc/wasm-device-plugin/guests/$guest.policy.json"
  install -D -m 0644 "guests/$guest/example-config.json" "$rootfs/usr/share/wasm-device-plugin/examples/$guest.json"
done
mkdir -p "$rootfs/var/cache/wasm-device-plugin" "$rootfs/host"
chmod -R u=rwX,go=rX "$rootfs"
# Fixed times and owners, so that the layer depends on the contents only.
find "$rootfs" -exec touch -h -d @0 {} +
(cd "$rootfs" && find . | LC_ALL=C sort | while read -r f; do
  if [ -d "$f" ]; then printf 'dir  %s\n' "$f"; else printf '%7d %s\n' "$(stat -c %s "$f")" "$f"; fi
done)

if [ "$CONTAINER_ENGINE" = none ]; then
  echo "context laid out; no image built (CONTAINER_ENGINE=none)"
  exit 0
fi
echo "== image: $image with $CONTAINER_ENGINE"
read -r -a engine <<< "$CONTAINER_ENGINE"
reproducible=()
for word in "${engine[@]}"; do
  case "$(basename -- "$word")" in podman|buildah) reproducible=(--timestamp 0) ;; esac
done
"${engine[@]}" build "${reproducible[@]}" -f deploy/Containerfile -t "$image" "$context"
