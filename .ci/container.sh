#!/usr/bin/env bash
# CI: the host image built offline and run by a real container runtime, as the DaemonSet
# runs it, and workloads run from its answers (tests/container/README.md):
#   1. Podman, runc, musl-gcc and busybox-static from Debian (apt-get, when missing);
#   2. the image: deploy/build-image.sh (static musl host, reference guests, FROM scratch),
#      built twice to show the same artifacts give the same image; its layout listed;
#   3. the nvml image variant the same way (WDP_IMAGE_VARIANT=nvml: glibc host and its C
#      runtime, FROM scratch), which can load the node's libnvidia-ml.so.1;
#   4. a workload image: Debian's static busybox, FROM scratch;
#   5. tests/container/node_test.py: the pod generated from deploy/base/daemonset.yaml
#      (or $WDP_DAEMONSET) against the simulated node with real device nodes, the grpcio
#      kubelet stand-in of tests/interop, probes, and a workload per allocation strategy;
#   6. the same with deploy/overlays/nvml/daemonset.yaml on a node with testkit's NVML
#      double (the host must load it), and tests/container/nvml_test.py: `check` in both
#      images through the nvml overlay's mounts (the glibc host loads the node's library
#      from /host, the static one says it cannot; both list the GPUs).
# Needs root for Podman and mknod (sudo when not root). Podman runs with its own storage
# under <target>/container and its own containers.conf: runc with the cgroupfs manager
# (crun refuses cgroup v1 hybrid hosts) and no default ulimits (raising RLIMIT_NOFILE is
# not permitted on some CI machines).
#
#   bash .ci/container.sh
set -euo pipefail
cd "$(dirname "$0")/.."

target="$(realpath -m "${CARGO_TARGET_DIR:-target}")"
root=$([ "$(id -u)" -eq 0 ] || echo sudo)
step() { echo "== container: $1 (at ${SECONDS}s)"; }

step "podman, runc, musl-gcc, busybox-static from Debian"
need=()
command -v podman >/dev/null || need+=(podman)
command -v runc >/dev/null || need+=(runc)
command -v musl-gcc >/dev/null || need+=(musl-tools)
dpkg -s busybox-static >/dev/null 2>&1 || need+=(busybox-static)
if [ "${#need[@]}" -gt 0 ]; then
  $root apt-get update -qq
  $root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
    "${need[@]}"
fi
rustup target add x86_64-unknown-linux-musl

state="$target/container"
mkdir -p "$state"
conf="$state/containers.conf"
cat > "$conf" <<'EOF'
[containers]
default_ulimits = []
[engine]
runtime = "runc"
cgroup_manager = "cgroupfs"
events_logger = "file"
EOF
export CONTAINERS_CONF="$conf"
engine="$root env CONTAINERS_CONF=$conf podman --root $state/storage --runroot $state/run"
$engine --version
runc --version | head -1
$engine info --format 'storage driver {{.Store.GraphDriverName}}, runtime {{.Host.OCIRuntime.Name}} {{.Host.OCIRuntime.Version}}, cgroup manager {{.Host.CgroupManager}}, cgroups {{.Host.CgroupsVersion}}, network {{.Host.NetworkBackend}}' \
  | tr -s '\n' ' '; echo

# Builds IMAGE from CONTEXT with deploy/build-image.sh (VARIANT as WDP_IMAGE_VARIANT),
# builds it again from the same artifacts to show the image is reproducible, lists its
# files and runs its entrypoint as the image's user on the empty base.
build_image() {
  local image=$1 context=$2 variant=$3 started=$SECONDS first second id
  WDP_IMAGE_VARIANT="$variant" CONTAINER_ENGINE="$engine" bash deploy/build-image.sh "$image"
  echo "$variant image built in $((SECONDS - started)) s (cargo included)"
  first=$($engine image inspect -f '{{.Id}}' "$image")
  $engine build -q --no-cache --timestamp 0 -f deploy/Containerfile -t "$image-again" \
    "$context" >/dev/null
  second=$($engine image inspect -f '{{.Id}}' "$image-again")
  $engine rmi "$image-again" >/dev/null
  if [ "$first" != "$second" ]; then
    echo "the same $variant artifacts gave two images: $first and $second" >&2
    exit 1
  fi
  echo "reproducible: both builds are image $first"
  echo "$variant image size: $($engine image inspect -f '{{.Size}}' "$image") bytes"
  id=$($engine create --pull never "$image")
  $engine export "$id" | tar -tv | sort -k6
  $engine rm "$id" >/dev/null
  $engine run --rm --pull never "$image" --version
}

step "the image, offline (deploy/build-image.sh)"
image=wasm-device-plugin:0.1.0
# The static binary runs on an empty base.
build_image "$image" "$target/image/context" static

step "the nvml image variant, offline (WDP_IMAGE_VARIANT=nvml deploy/build-image.sh)"
nvml_image=wasm-device-plugin:0.1.0-nvml
# The glibc binary, its loader and the libraries NVML needs, on an empty base.
build_image "$nvml_image" "$target/image/context-nvml" nvml

step "a workload image: Debian's static busybox, FROM scratch"
workload="$state/workload"
rm -rf "$workload"
mkdir -p "$workload"
cp /bin/busybox "$workload/busybox"
printf 'FROM scratch\nCOPY busybox /bin/busybox\nENTRYPOINT ["/bin/busybox"]\n' > "$workload/Containerfile"
$engine build -q --timestamp 0 -t wdp-workload:test "$workload" >/dev/null

step "the simulated node (testkit's simnode) and the grpcio kubelet stand-in"
cargo build -p testkit --bin simnode
if [ ! -x "$target/interop-venv/bin/python" ]; then
  "${PYTHON:-python3}" -m venv "$target/interop-venv"
fi
"$target/interop-venv/bin/python" -m pip install --quiet --disable-pip-version-check \
  -r tests/container/requirements.txt

step "the DaemonSet's pod on the node, workloads from its answers"
$root env CONTAINERS_CONF="$conf" "$target/interop-venv/bin/python" tests/container/node_test.py \
  --simnode "$target/debug/simnode" --engine "podman --root $state/storage --runroot $state/run" \
  --manifest "${WDP_DAEMONSET:-deploy/base/daemonset.yaml}" --workload-image wdp-workload:test

step "the nvml overlay's pod on a node with the NVML double, workloads from its answers"
$root env CONTAINERS_CONF="$conf" "$target/interop-venv/bin/python" tests/container/node_test.py \
  --simnode "$target/debug/simnode" --engine "podman --root $state/storage --runroot $state/run" \
  --manifest deploy/overlays/nvml/daemonset.yaml --workload-image wdp-workload:test --nvml

step "NVML through the nvml overlay's mounts: the nvml image loads it, the static one cannot"
$root env CONTAINERS_CONF="$conf" "$target/interop-venv/bin/python" tests/container/nvml_test.py \
  --simnode "$target/debug/simnode" --engine "podman --root $state/storage --runroot $state/run" \
  --manifest deploy/overlays/nvml/daemonset.yaml --static-image "$image"
step "done"
