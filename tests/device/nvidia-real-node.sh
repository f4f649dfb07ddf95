#!/usr/bin/env bash
# The NVIDIA reference guest on a real GPU node: the release host against the node's own
# /sys, /proc and /dev (host root /), the kubelet stand-in (testkit's `kubelet` program)
# registering it, listing devices and allocating one GPU per device-list strategy. Also
# records the node's facts (nvidia-smi, procfs, sysfs) that fixtures are built from.
#
# Prepare the bundle on a build machine, from the repository root:
#   cargo build --release -p wasm-device-plugin -p testkit --bins
#   tests/device/nvidia-real-node.sh --bundle .gpucheck
# then on the GPU node (root), with the bundle beside it:
#   tests/device/nvidia-real-node.sh --run .gpucheck OUTDIR
# Read-only on the node: it changes no GPU setting (no MIG mode, no reset: reset is off
# in the guest's defaults) and writes only under /tmp and OUTDIR.
set -uo pipefail

if [ "${1:-}" = "--bundle" ]; then
  set -e
  bundle=$2
  mkdir -p "$bundle"
  for bin in wasm-device-plugin kubelet; do
    cp "target/release/$bin" "$bundle/$bin"
    strip "$bundle/$bin"
  done
  cp target/guests/wasm32-wasip2/release/nvidia_gpu.wasm "$bundle/nvidia-gpu.wasm"
  cp guests/nvidia-gpu/policy.json "$bundle/nvidia-gpu.policy.json"
  cp "$0" "$bundle/"
  ls -l "$bundle"
  exit 0
fi

[ "${1:-}" = "--run" ] || { echo "usage: $0 --bundle DIR | --run DIR OUTDIR"; exit 2; }
bundle=$(realpath "$2")
out=$3
mkdir -p "$out"
exec > >(tee "$out/real-node.log") 2>&1

section() { printf '\n===== %s\n' "$*"; }

section "node"
uname -a
grep PRETTY_NAME /etc/os-release
nvidia-smi -L
nvidia-smi --query-gpu=name,pci.bus_id,uuid,memory.total,driver_version,compute_cap,mig.mode.current,persistence_mode --format=csv
nvidia-smi -q -x > "$out/nvidia-smi-q.xml" || true
nvidia-smi topo -m || true
nvidia-smi nvlink -s 2>&1 | head -30 || true
nvidia-smi mig -lgip 2>&1 | head -40 || true
section "procfs"
cat /proc/driver/nvidia/version
for g in /proc/driver/nvidia/gpus/*; do echo "--- $g"; cat "$g/information"; done
grep -iE 'nvidia|infiniband|uverbs' /proc/devices
ls -la /proc/driver/nvidia-caps/ 2>&1 | head
head -5 /proc/driver/nvidia-caps/mig-minors 2>&1
section "devfs"
ls -la /dev/nvidia* 2>&1
ls -la /dev/nvidia-caps 2>&1 | head
ls -la /dev/kmsg
section "sysfs"
for g in /proc/driver/nvidia/gpus/*; do
  bdf=$(basename "$g"); dev=/sys/bus/pci/devices/$bdf
  echo "--- $bdf -> $(readlink -f "$dev")"
  for f in vendor device subsystem_vendor subsystem_device class numa_node local_cpulist \
           current_link_speed current_link_width max_link_speed max_link_width \
           aer_dev_fatal aer_dev_nonfatal reset_method; do
    printf '%s=%s\n' "$f" "$(tr '\n' ' ' < "$dev/$f" 2>&1)"
  done
done
section "libraries"
ldconfig -p | grep -E 'libnvidia-ml|libcuda\.so' || echo "no NVML/CUDA in ldconfig"

guests=/tmp/wdp-guests
mkdir -p "$guests" /tmp/wdp-cache
cp "$bundle/nvidia-gpu.wasm" "$bundle/nvidia-gpu.policy.json" "$guests/"
chmod 0700 /tmp/wdp-cache

section "check (what would be advertised)"
"$bundle/wasm-device-plugin" check --host-root / --guests-dir "$guests" --cache-dir /tmp/wdp-cache
echo "check exit: $?"

status=0
run_strategy() {
  local name=$1 config=$2 count=$3
  section "run + kubelet stand-in: $name ($config), $count GPU(s)"
  if [ -n "$config" ]; then echo "$config" > "$guests/nvidia-gpu.json"; else rm -f "$guests/nvidia-gpu.json"; fi
  local dp=/tmp/wdp-dp-$name cdi=/tmp/wdp-cdi-$name
  rm -rf "$dp" "$cdi"; mkdir -p "$dp" "$cdi"
  "$bundle/wasm-device-plugin" run --host-root / --guests-dir "$guests" --device-plugin-dir "$dp" \
    --cdi-dir "$cdi" --cache-dir /tmp/wdp-cache --no-release-detection \
    --metrics-addr 127.0.0.1:9464 > "/tmp/wdp-host-$name.log" 2>&1 &
  local host=$!
  if timeout 90 "$bundle/kubelet" "$dp" nvidia.com/gpu "$count"; then
    echo "kubelet stand-in: ok"
  else
    echo "kubelet stand-in: FAILED"; status=1
  fi
  curl -s 127.0.0.1:9464/readyz 2>/dev/null; echo
  curl -s 127.0.0.1:9464/metrics 2>/dev/null | grep -E '^wdp_(devices|guest_call_seconds_count|handouts)' | head -20
  for f in "$cdi"/*; do [ -f "$f" ] && { echo "--- CDI spec $f"; cat "$f"; echo; }; done
  kill -TERM "$host"; wait "$host"; echo "host exit after SIGTERM: $?"
  echo "--- host log"; cat "/tmp/wdp-host-$name.log"
}
run_strategy default "" 1
run_strategy volume-mounts '{"deviceListStrategy": ["volume-mounts", "device-specs"]}' 1
run_strategy cdi '{"deviceListStrategy": ["cdi-cri"]}' 1
run_strategy index '{"deviceIdStrategy": "index"}' 1
section "done: status $status"
exit $status
