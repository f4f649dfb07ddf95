#!/usr/bin/env bash
# Builds the host image offline, from what cargo builds here:
#   1. the host, `--profile image` (release, stripped), `--no-default-features` (no demo,
#      no bundled fixtures): static for x86_64-unknown-linux-musl, or, for the nvml
#      variant, for x86_64-unknown-linux-gnu;
#   2. the reference guests for wasm32-wasip2 (release, as testkit builds them);
#   3. the image layout in <target>/image/context[-nvml]/rootfs (deploy/README.md, "The
#      image"); the nvml variant adds the glibc files the host and libnvidia-ml.so.1 load;
#   4. the image, `FROM scratch` (deploy/Containerfile, both variants), with Podman or Docker.
#
#   bash deploy/build-image.sh [IMAGE]                        static musl host
#       (default IMAGE: wasm-device-plugin:0.1.0)
#   WDP_IMAGE_VARIANT=nvml bash deploy/build-image.sh [IMAGE]  glibc host that can load NVML
#       (default IMAGE: wasm-device-plugin:0.1.0-nvml; deploy/overlays/nvml runs it)
#
# Why two variants: a static musl binary cannot load shared libraries (musl's dlopen in a
# static binary always fails), so the default image's host never uses NVML and guests
# granted `nvml` fall back to sysfs. The nvml variant is a dynamically linked glibc build
# with its C runtime beside it: the host's own `ldd` list, plus what libnvidia-ml.so.1
# needs from glibc (libdl, libpthread, librt, libm, libc and the loader). It holds no
# NVIDIA library: the host loads the node's own, which matches its kernel driver, through
# the node's directories mounted under /host. Its glibc is the build machine's, so build
# it on a distribution no newer than you trust (NVIDIA's library needs glibc 2.17 or so).
#
# Needs rustup (the pinned toolchain with the x86_64-unknown-linux-musl and wasm32-wasip2
# targets, rust-toolchain.toml), musl-gcc for the static variant (Debian: musl-tools;
# aws-lc-sys, below rustls in container-device-interface, compiles C), gcc, ldd and
# glibc's shared libraries for the nvml variant (any glibc x86_64 Linux), and podman or
# docker. Environment:
#   WDP_IMAGE_VARIANT  `static` (default) or `nvml`
#   CONTAINER_ENGINE   the engine command, word-split (default: podman, else docker);
#                      `none` lays out the context and builds no image
#   CARGO_TARGET_DIR, WDP_GUESTS_TARGET_DIR   as for cargo and testkit
# Podman builds with `--timestamp 0`, so the same artifacts give the same image ID.
set -euo pipefail
cd "$(dirname "$0")/.."

variant="${WDP_IMAGE_VARIANT:-static}"
target="$(realpath -m "${CARGO_TARGET_DIR:-target}")"
guests_target="$(realpath -m "${WDP_GUESTS_TARGET_DIR:-$target/guests}")"
case "$variant" in
  static)
    triple=x86_64-unknown-linux-musl
    image="${1:-wasm-device-plugin:0.1.0}"
    context="$target/image/context"
    ;;
  nvml)
    triple=x86_64-unknown-linux-gnu
    image="${1:-wasm-device-plugin:0.1.0-nvml}"
    context="$target/image/context-nvml"
    ;;
  *)
    echo "build-image: WDP_IMAGE_VARIANT=$variant: use static (the default) or nvml" >&2
    exit 1
    ;;
esac
binary="$target/$triple/image/wasm-device-plugin"

if [ -z "${CONTAINER_ENGINE:-}" ]; then
  CONTAINER_ENGINE="$(command -v podman || command -v docker || true)"
  [ -n "$CONTAINER_ENGINE" ] || { echo "build-image: neither podman nor docker found" >&2; exit 1; }
fi
if [ "$variant" = static ] && ! command -v musl-gcc >/dev/null; then
  echo "build-image: musl-gcc not found (Debian/Ubuntu: apt-get install musl-tools)" >&2
  exit 1
fi
if [ "$variant" = nvml ]; then
  if [ "$(uname -m)" != x86_64 ] || ! command -v ldd >/dev/null; then
    echo "build-image: the nvml variant copies this machine's glibc: build it on x86_64 Linux with glibc (ldd)" >&2
    exit 1
  fi
fi

echo "== image: host for $triple (profile image, variant $variant)"
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
if [ "$variant" = nvml ]; then
  # The C runtime at the paths this machine's loader resolves (`ldd`): the binary's
  # interpreter (/lib64/ld-linux-x86-64.so.2) and libraries in glibc's default search
  # directory, found without an ld.so.cache. Then what libnvidia-ml.so.1 is linked
  # against (its DT_NEEDED), from the same directory as libc: dlopen resolves those in
  # the container's directories, never in the node's.
  libs=$(ldd "$binary" | grep -o '/[^ ]*' | sort -u)
  libc=$(printf '%s\n' "$libs" | grep '/libc\.so\.6$' || true)
  if [ -z "$libc" ]; then
    echo "build-image: ldd found no libc.so.6 for $binary: is it a glibc build?" >&2
    exit 1
  fi
  libdir=$(dirname "$libc")
  for soname in libdl.so.2 libpthread.so.0 librt.so.1 libm.so.6 libc.so.6; do
    [ -e "$libdir/$soname" ] || { echo "build-image: $libdir/$soname not found (glibc incomplete?)" >&2; exit 1; }
    libs="$libs"$'\n'"$libdir/$soname"
  done
  for lib in $(printf '%s\n' "$libs" | sort -u); do
    install -D -m 0755 "$(realpath "$lib")" "$rootfs$lib"
  done
  # The host loads the node's NVIDIA library, matching its kernel driver; one in the image
  # would shadow nothing (`auto` searches under /host) but would be the wrong version.
  if find "$rootfs" -name 'libnvidia*' | grep -q .; then
    echo "build-image: an NVIDIA library ended up in the image: $(find "$rootfs" -name 'libnvidia*')" >&2
    exit 1
  fi
fi
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
