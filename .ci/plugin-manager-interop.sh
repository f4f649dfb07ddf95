#!/usr/bin/env bash
# The host in `--registration watcher` mode against a grpc-go client that dials exactly
# as the kubelet's plugin manager does (bare socket path, no WithAuthority):
# tests/interop/plugin-manager/README.md. Offline: Debian's Go, grpc-go and protobuf
# packages (installed here when missing), GOPATH mode, stubs generated from proto/.
# Expects `cargo build -p wasm-device-plugin -p testkit --bins` to have run.
set -euo pipefail
cd "$(dirname "$0")/.."
repo=$PWD
target=${CARGO_TARGET_DIR:-$repo/target}
started=$(date +%s)

# -- Debian packages ----------------------------------------------------------------------
need=()
command -v go >/dev/null || need+=(golang-go)
command -v protoc >/dev/null || need+=(protobuf-compiler)
[ -d /usr/share/gocode/src/google.golang.org/grpc ] || need+=(golang-google-grpc-dev)
if ! command -v protoc-gen-go >/dev/null || [ ! -d /usr/share/gocode/src/github.com/golang/protobuf/proto ]; then
  need+=(golang-goprotobuf-dev)
fi
if [ ${#need[@]} -gt 0 ]; then
  echo "installing ${need[*]}"
  sudo=$([ "$(id -u)" -eq 0 ] || echo sudo)
  $sudo apt-get update -qq
  $sudo env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${need[@]}"
fi
go version

for binary in "$target/debug/wasm-device-plugin" "$target/debug/simnode"; do
  [ -x "$binary" ] || { echo "missing $binary: run cargo build -p wasm-device-plugin -p testkit --bins"; exit 1; }
done

tmp=$(mktemp -d)
host_pid=
cleanup() {
  if [ -n "$host_pid" ] && kill -0 "$host_pid" 2>/dev/null; then
    kill -TERM "$host_pid" 2>/dev/null || true
    wait "$host_pid" 2>/dev/null || true
  fi
  if [ "${KEEP:-}" = 1 ]; then echo "kept $tmp"; else rm -rf "$tmp"; fi
}
trap cleanup EXIT

# -- the client: stubs from proto/, built in GOPATH mode against /usr/share/gocode --------
pkg=$tmp/gopath/src/wdp/pluginmanager
mkdir -p "$pkg/v1beta1" "$pkg/pluginregistration"
cp tests/interop/plugin-manager/main.go "$pkg/"
generate() { # dir proto-dir: old protoc-gen-go (plugins=grpc), else protoc-gen-go-grpc
  local out=$1 dir=$2
  protoc -I "$dir" --go_out=plugins=grpc,paths=source_relative,Mapi.proto=wdp/pluginmanager/$out:"$pkg/$out" api.proto 2>/dev/null ||
    protoc -I "$dir" --go_out=paths=source_relative,Mapi.proto=wdp/pluginmanager/$out:"$pkg/$out" \
      --go-grpc_out=paths=source_relative,Mapi.proto=wdp/pluginmanager/$out:"$pkg/$out" api.proto
}
generate v1beta1 proto/v1beta1
generate pluginregistration proto/pluginregistration
(cd "$pkg" && GO111MODULE=off GOPATH="$tmp/gopath:/usr/share/gocode" GOPROXY=off GOFLAGS= \
  GOCACHE="$tmp/gocache" go build -o "$tmp/plugin-manager" .)

# -- the host: the simulated DGX H100 node, watcher mode, /readyz on a free port ---------
"$target/debug/simnode" "$tmp/fixture" >/dev/null
mkdir -p "$tmp/device-plugins" "$tmp/plugins_registry"
port=$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
RUST_LOG=${RUST_LOG:-info} "$target/debug/wasm-device-plugin" run \
  --host-root "$tmp/fixture/root" --guests-dir "$tmp/fixture/guests" \
  --device-plugin-dir "$tmp/device-plugins" \
  --registration watcher --plugins-registry-dir "$tmp/plugins_registry" \
  --metrics-addr "127.0.0.1:$port" --no-release-detection --rescan-seconds 0.2 \
  --simulated-node >"$tmp/host.log" 2>&1 &
host_pid=$!

status=0
"$tmp/plugin-manager" -mode ci -registry "$tmp/plugins_registry" \
  -readyz "http://127.0.0.1:$port/readyz" || status=$?
if ! grep -q "the kubelet refused the registration" "$tmp/host.log"; then
  echo "FAIL  the host's log has no warning for the refusal"
  status=1
fi
if [ "$status" -ne 0 ]; then
  echo "-- the host's log (end)"
  tail -n 60 "$tmp/host.log"
fi
echo "plugin-manager interop: $(($(date +%s) - started)) s"
exit "$status"
