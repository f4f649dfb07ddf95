#!/usr/bin/env python3
"""The nvml image variant loads the node's NVML through the nvml overlay's mounts, and the
static image cannot: both run `wasm-device-plugin check` with a real container runtime
against a simulated node that has testkit's NVML double as its libnvidia-ml.so.1.

1. The node: `simnode <dir> --nvml` writes the simulated DGX H100 tree with the double at
   /usr/lib/x86_64-linux-gnu/libnvidia-ml.so.1 and its fixture beside it (the double finds
   the fixture through `dladdr`, beside wherever it was loaded from); device nodes become
   real ones, as in node_test.py.
2. The image: the nvml variant holds the glibc files the host and NVIDIA's library need
   and no NVIDIA library.
3. The pod: the `podman run` options are node_test.py's, generated from the nvml overlay's
   DaemonSet (its image, securityContext, every volume and mount: the driver library
   directories read-only, /run/nvidia/driver with HostToContainer propagation), with
   `check` and the manifest's node flags (--host-root, --guests-dir, --cache-dir,
   --nvml-library) in place of `run`.
4. The runs:
   - the nvml image: `NVML: /host/usr/lib/x86_64-linux-gnu/libnvidia-ml.so.1`, and every
     GPU of the fixture listed Healthy;
   - the static image with the same mounts: `NVML: not used (...)` saying musl cannot load
     it (`Dynamic loading not supported`), and the GPUs all the same (sysfs);
   - the nvml image with the library moved where the GPU operator's driver container puts
     it (/run/nvidia/driver/usr/lib/x86_64-linux-gnu): loaded from
     /host/run/nvidia/driver/...;
   - the nvml image on a node without the library: `not used (no libnvidia-ml.so.1 under
     the host root /host ...)`, so what loads above is the node's, not the image's.

Usage (root): nvml_test.py --simnode target/debug/simnode [--engine 'podman ...']
  [--manifest deploy/overlays/nvml/daemonset.yaml] [--static-image wasm-device-plugin:0.1.0]
  [--keep]
Prints one line per check and last `N passed, N failed`; exits 1 on any failure.
"""

import argparse
import json
import os
import shlex
import shutil
import subprocess
import sys
import tempfile
import traceback

import yaml

import node_test as nt
from node_test import ConfigMapVolume, Failed, Node, Pod, run

sys.path.insert(0, os.path.join(nt.REPO, "tests", "interop"))
import kubelet_interop as ki  # noqa: E402

LIBRARY = "libnvidia-ml.so.1"
# Where the node's driver package puts it, and where the GPU operator's driver container
# does (its root is mounted at /run/nvidia/driver): both are in the host's SEARCH_DIRS.
PACKAGE_DIR = "/usr/lib/x86_64-linux-gnu"
OPERATOR_DIR = "/run/nvidia/driver/usr/lib/x86_64-linux-gnu"
# The double's files: the library and what it answers from.
DOUBLE_FILES = (LIBRARY, "nvml-fixture")
# `wasm-device-plugin check` takes the node flags of `run` (host/src/args.rs, NodeArgs).
CHECK_FLAGS = {"--host-root", "--guests-dir", "--cache-dir", "--trusted-keys",
               "--nvml-library", "--compile-timeout-seconds", "--compile-memory-mib"}
# What the glibc files in the nvml image must include: the loader the binary names and
# the libraries libnvidia-ml.so.1 is linked against.
GLIBC_FILES = ("lib64/ld-linux-x86-64.so.2", "libc.so.6", "libm.so.6", "libdl.so.2",
               "libpthread.so.0", "librt.so.1")


def image_files(engine, image):
    cid = run(engine + ["create", "--pull", "never", image]).stdout.strip()
    try:
        export = subprocess.run(engine + ["export", cid], stdout=subprocess.PIPE, check=True)
        listing = subprocess.run(["tar", "-t"], input=export.stdout, stdout=subprocess.PIPE,
                                 check=True)
        return listing.stdout.decode().split()
    finally:
        run(engine + ["rm", cid], check=False)


def gpu_lines(output, gpus):
    """The fixture's GPUs that `check` lists as Healthy under nvidia.com/gpu."""
    listed = set()
    section = None
    for line in output.splitlines():
        if not line.startswith(" "):
            section = line.split()[0] if line.split() else None
            continue
        parts = line.split()
        if section == "nvidia.com/gpu" and len(parts) >= 2 and parts[1] == "Healthy":
            listed.add(parts[0])
    return listed == {g["uuid"] for g in gpus}, sorted(listed)


def nvml_line(output):
    return next((l for l in output.splitlines() if l.startswith("NVML: ")), None)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--simnode", required=True)
    parser.add_argument("--engine", default=os.environ.get("CONTAINER_ENGINE", "podman"))
    parser.add_argument("--manifest",
                        default=os.path.join(nt.REPO, "deploy/overlays/nvml/daemonset.yaml"))
    parser.add_argument("--static-image", default="wasm-device-plugin:0.1.0")
    parser.add_argument("--keep", action="store_true")
    args = parser.parse_args()
    engine = shlex.split(args.engine)

    r = ki.Results()
    work = tempfile.mkdtemp(prefix="wdp-nvml-")
    try:
        with open(args.manifest) as f:
            daemonset = next(d for d in yaml.safe_load_all(f) if d and d["kind"] == "DaemonSet")
        nvml_image = daemonset["spec"]["template"]["spec"]["containers"][0]["image"]

        # -- the image ---------------------------------------------------------------------
        files = image_files(engine, nvml_image)
        nvidia = [f for f in files if "libnvidia" in f]
        r.check(f"{nvml_image}: no NVIDIA library in the image", not nvidia, nvidia)
        missing = [g for g in GLIBC_FILES if not any(f.endswith(g) for f in files)]
        r.check(f"{nvml_image}: the glibc files the host and NVML need", not missing,
                f"missing {missing}")

        # -- the node --------------------------------------------------------------------
        run([args.simnode, os.path.join(work, "node"), "--nvml"])
        with open(os.path.join(work, "node", "expected.json")) as f:
            expected = json.load(f)
        node = Node(os.path.join(work, "node", "root"), expected)
        node.make_real()
        library = expected["nvml"]["library"]
        r.check(f"simnode --nvml installed the double at {library}",
                library == f"{PACKAGE_DIR}/{LIBRARY}" and os.path.isfile(node.path(library)),
                expected["nvml"])
        for d in ("/var/lib/kubelet/device-plugins", "/var/lib/kubelet/pod-resources"):
            os.makedirs(node.path(d), mode=0o750)

        # -- the pod's mounts, from the overlay ---------------------------------------------
        from_image = os.path.join(work, "from-image")
        cid = run(engine + ["create", "--pull", "never", nvml_image]).stdout.strip()
        try:
            run(engine + ["cp", f"{cid}:/etc/wasm-device-plugin/guests", from_image])
        finally:
            run(engine + ["rm", cid], check=False)
        configmap = ConfigMapVolume(os.path.join(work, "configmaps", "wasm-device-plugin-guests"))
        configmap.write({n: open(os.path.join(from_image, n), "rb").read()
                         for n in sorted(os.listdir(from_image))})
        pod = Pod(daemonset, node, work, {"wasm-device-plugin-guests": configmap.dir})
        if pod.args[:1] != ["run"]:
            raise Failed(f"the manifest's args do not start with `run`: {pod.args}")
        check_args = ["check"] + [a for a in pod.args[1:] if a.split("=", 1)[0] in CHECK_FLAGS]
        host_root = next(a.split("=", 1)[1] for a in check_args if a.startswith("--host-root="))
        cache = os.path.join(work, "pod", "volumes", "empty-dir", "cache")

        def check(label, image):
            """`check` in a fresh container; a fresh cache, so each run loads NVML and
            compiles its guests itself."""
            if os.path.isdir(cache):
                for name in os.listdir(cache):
                    path = os.path.join(cache, name)
                    shutil.rmtree(path) if os.path.isdir(path) else os.unlink(path)
            cmd = engine + ["run", "--rm"] + pod.run_args + [image] + check_args
            print("       " + shlex.join(cmd[len(engine):]), flush=True)
            p = run(cmd, check=False)
            r.check(f"{label}: check exits 0", p.returncode == 0,
                    f"exit {p.returncode}\n{p.stdout}{p.stderr}")
            r.note(f"{label}: {nvml_line(p.stdout)}")
            ok, listed = gpu_lines(p.stdout, node.gpus)
            r.check(f"{label}: the fixture's {len(node.gpus)} GPUs listed, Healthy", ok,
                    f"{listed}\n{p.stdout}")
            return nvml_line(p.stdout), p

        # -- the nvml image: the node's library (the double) ----------------------------------
        label = f"{nvml_image}, library in {PACKAGE_DIR}"
        line, p = check(label, nvml_image)
        want = f"NVML: {host_root}{PACKAGE_DIR}/{LIBRARY}"
        r.check(f"{label}: `{want}`", line == want, f"{line}\n{p.stdout}{p.stderr}")

        # -- the static image, same node and mounts ---------------------------------------
        label = f"{args.static_image} (static musl), library in {PACKAGE_DIR}"
        line, p = check(label, args.static_image)
        # musl's dlopen in a static binary fails with this message, whatever the file.
        r.check(f"{label}: `NVML: not used (...)`, musl cannot load it",
                line is not None and line.startswith("NVML: not used (")
                and "Dynamic loading not supported" in line,
                f"{line}\n{p.stdout}{p.stderr}")

        # -- the nvml image: the GPU operator's driver root -------------------------------
        os.makedirs(node.path(OPERATOR_DIR), exist_ok=True)
        for name in DOUBLE_FILES:
            os.rename(node.path(f"{PACKAGE_DIR}/{name}"), node.path(f"{OPERATOR_DIR}/{name}"))
        label = f"{nvml_image}, library in {OPERATOR_DIR}"
        line, p = check(label, nvml_image)
        want = f"NVML: {host_root}{OPERATOR_DIR}/{LIBRARY}"
        r.check(f"{label}: `{want}`", line == want, f"{line}\n{p.stdout}{p.stderr}")

        # -- the nvml image, a node without NVML ------------------------------------------
        for name in DOUBLE_FILES:
            os.unlink(node.path(f"{OPERATOR_DIR}/{name}"))
        label = f"{nvml_image}, no library on the node"
        line, p = check(label, nvml_image)
        want = f"NVML: not used (no {LIBRARY} under the host root {host_root} "
        r.check(f"{label}: `{want}...)`", line is not None and line.startswith(want),
                f"{line}\n{p.stdout}{p.stderr}")
    except Failed as e:
        r.check("the nvml runs complete", False, str(e))
    except Exception:
        r.check("the nvml runs complete", False, traceback.format_exc())
    finally:
        if args.keep:
            print(f"kept {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)
    print(f"{r.passed} passed, {r.failed} failed")
    return 1 if r.failed else 0


if __name__ == "__main__":
    sys.exit(main())
