#!/usr/bin/env python3
"""The host image run by a real container runtime as deploy/base/daemonset.yaml runs it,
and workloads run from its Allocate answers, checked from inside.

1. The node: `simnode` writes the simulated DGX H100 tree (testkit); every device node in
   it becomes a real one (`mknod`, the fixture's majors and minors: /proc/devices, the
   sysfs `dev` attributes, the NVIDIA driver's fixed minors), so the host runs without
   `--simulated-node` and its real-node checks apply.
2. The kubelet: `kubelet_interop.Kubelet` (tests/interop, grpcio) serves `kubelet.sock`
   in the node's /var/lib/kubelet/device-plugins; the guests ConfigMap is laid out as the
   kubelet's atomic writer does (`..data` link), from the image's own guests directory
   plus configurations, and updated the same way.
3. The pod: the `podman run` is generated from the DaemonSet (image, args, securityContext,
   resources, volumes and mounts with hostPath types, grace period); a field the generator
   does not know fails the test, so the manifest and the run cannot drift. The probes are
   the manifest's, sent to the pod IP.
4. The workloads: for each NVIDIA device-list strategy (envvar, volume-mounts,
   device-specs, cdi-cri) and each InfiniBand pool mode (exclusive, shared), Allocate's
   answer becomes a workload container as the kubelet and CRI make it: device specs ->
   `--device`, mounts -> `-v`, env -> `-e`, annotations -> `--annotation`, CDI names ->
   `--device kind=name` (the runtime's CDI library reads the spec the guest wrote through
   the host). Inside: the allocated nodes with the fixture's major:minor, no other GPU or
   HCA node (by path or number), the device cgroup allowing exactly those, the env as
   answered.

Node paths map to <work>/node/root/<path>, except /var/run/cdi: the runtime's CDI
directory, which the host writes through its hostPath mount and the runtime reads.

With --nvml the node also has testkit's NVML double as its libnvidia-ml.so.1
(`simnode --nvml`), and the host must log that it loaded it from under its host root:
run so with deploy/overlays/nvml/daemonset.yaml (the image that can load it, the driver
library directories mounted). nvml_test.py checks `check`'s view of the same.

Usage (root): node_test.py --simnode target/debug/simnode [--engine 'podman ...']
  [--manifest deploy/base/daemonset.yaml] [--workload-image IMAGE] [--nvml] [--keep]
Prints one line per check and last `N passed, N failed`; exits 1 on any failure.
"""

import argparse
import base64
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
import traceback
import urllib.error
import urllib.request

import yaml

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(os.path.dirname(HERE))
sys.path.insert(0, os.path.join(REPO, "tests", "interop"))
import kubelet_interop as ki  # noqa: E402  (the one grpcio kubelet stand-in)

from google.protobuf import json_format  # noqa: E402

CDI_DIR = "/var/run/cdi"
NVIDIA_STRATEGIES = ["envvar", "volume-mounts", "device-specs", "cdi-cri"]
GPU_RESOURCE = "nvidia.com/gpu"
IB_EXCLUSIVE = "nvidia.com/ib"
IB_SHARED = "rdma/ib_shared"
IB_SHARED_SLOTS = 8
RDMA_CDI_KIND = "nvidia.com/rdma"
RELOAD_WAIT = 60.0
# The specs the two guests write through the host (one file per kind).
OUR_SPECS = ("k8s.device-plugin.nvidia.com+gpu.json", "nvidia.com+rdma.json")


class Failed(Exception):
    """A step that cannot go on."""


def run(cmd, check=True, **kw):
    p = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, **kw)
    if check and p.returncode != 0:
        raise Failed(f"{shlex.join(cmd)} exited {p.returncode}:\n{p.stdout}{p.stderr}")
    return p


# ---- the node --------------------------------------------------------------------------


class Node:
    """The simulated node tree with real device nodes, and what it holds."""

    def __init__(self, root, expected):
        self.root = root
        self.gpus = expected["gpus"]
        self.numbers = {}  # node path -> (major, minor), every device node of the node
        self.hcas = {}  # PCI address -> {"ib_device", "nodes"}

    def path(self, node_path):
        """Where a node path lives on this machine (see the module's docstring)."""
        if node_path == CDI_DIR or node_path.startswith(CDI_DIR + "/"):
            return node_path
        return os.path.join(self.root, node_path.lstrip("/"))

    def read(self, node_path):
        with open(self.path(node_path)) as f:
            return f.read()

    def majors(self):
        majors = {}
        for line in self.read("/proc/devices").splitlines():
            if line.startswith("Block devices"):
                break
            parts = line.split()
            if len(parts) == 2 and parts[0].isdigit():
                majors.setdefault(parts[1], int(parts[0]))
        return majors

    def sysfs_dev(self, cls, entry):
        major, minor = self.read(f"/sys/class/{cls}/{entry}/dev").strip().split(":")
        return int(major), int(minor)

    def number_of(self, node_path, majors):
        """The fixture's major:minor of one device node."""
        name = node_path[len("/dev/"):]
        nv = majors["nvidia"]
        fixed = {
            "nvidiactl": (nv, 255),  # the NVIDIA driver's fixed minors
            "nvidia-modeset": (nv, 254),
            "nvidia-uvm": (majors["nvidia-uvm"], 0),
            "nvidia-uvm-tools": (majors["nvidia-uvm"], 1),
            "nvidia-nvswitchctl": (majors["nvidia-nvswitch"], 255),
            "kmsg": (majors["mem"], 11),
            "null": (majors["mem"], 3),
            # A misc device with a dynamic minor on real kernels: illustrative, like the
            # fixture's dynamic majors.
            "infiniband/rdma_cm": (majors["misc"], 58),
        }
        if name in fixed:
            return fixed[name]
        for pattern, major in (
            (r"nvidia(\d+)", nv),
            (r"nvidia-nvswitch(\d+)", majors["nvidia-nvswitch"]),
            (r"nvidia-caps/nvidia-cap(\d+)", majors["nvidia-caps"]),
        ):
            m = re.fullmatch(pattern, name)
            if m:
                return major, int(m.group(1))
        m = re.fullmatch(r"infiniband/(uverbs\d+|umad\d+|issm\d+)", name)
        if m:
            entry = m.group(1)
            cls = "infiniband_verbs" if entry.startswith("uverbs") else "infiniband_mad"
            return self.sysfs_dev(cls, entry)
        raise Failed(f"no major:minor known for the fixture's {node_path}: add it here")

    def make_real(self):
        """Every plain file under /dev becomes the character device it stands for."""
        majors = self.majors()
        dev = self.path("/dev")
        found = []
        for dirpath, _, files in os.walk(dev):
            for f in files:
                found.append("/" + os.path.relpath(os.path.join(dirpath, f), self.root))
        if "/dev/null" not in found:
            found.append("/dev/null")  # a real node has one (volume-mounts binds it)
        for node_path in sorted(found):
            major, minor = self.number_of(node_path, majors)
            p = self.path(node_path)
            if os.path.lexists(p):
                os.unlink(p)
            os.mknod(p, 0o20666, os.makedev(major, minor))
            os.chmod(p, 0o666)
            self.numbers[node_path] = (major, minor)
        for entry in sorted(os.listdir(self.path("/sys/class/infiniband"))):
            address = os.path.basename(
                os.path.realpath(self.path(f"/sys/class/infiniband/{entry}/device")))
            self.hcas[address] = {"ib_device": entry, "nodes": []}
        by_ibdev = {h["ib_device"]: h for h in self.hcas.values()}
        for cls in ("infiniband_verbs", "infiniband_mad"):
            for entry in sorted(os.listdir(self.path(f"/sys/class/{cls}"))):
                if entry == "abi_version":
                    continue
                ibdev = self.read(f"/sys/class/{cls}/{entry}/ibdev").strip()
                by_ibdev[ibdev]["nodes"].append(f"/dev/infiniband/{entry}")

    def gpu_node_numbers(self):
        return {n for p, n in self.numbers.items() if p.startswith("/dev/nvidia")}

    def hca_node_numbers(self):
        return {n for p, n in self.numbers.items() if p.startswith("/dev/infiniband/")}


# ---- the ConfigMap volume, as the kubelet's atomic writer lays it out ---------------------


class ConfigMapVolume:
    def __init__(self, directory):
        self.dir = directory
        os.makedirs(directory, exist_ok=True)
        self.generation = 0

    def write(self, files):
        """Replaces the whole payload: a new timestamped directory, `..data` swapped to it
        in one rename, a `<key> -> ..data/<key>` link per key, the old directory removed."""
        self.generation += 1
        stamp = time.strftime("..%Y_%m_%d_%H_%M_%S.") + str(self.generation)
        new = os.path.join(self.dir, stamp)
        os.mkdir(new)
        for name, data in files.items():
            with open(os.path.join(new, name), "wb") as f:
                f.write(data)
            os.chmod(os.path.join(new, name), 0o644)
        data_link = os.path.join(self.dir, "..data")
        old = os.readlink(data_link) if os.path.islink(data_link) else None
        tmp = os.path.join(self.dir, "..data_tmp")
        os.symlink(stamp, tmp)
        os.rename(tmp, data_link)
        for name in files:
            link = os.path.join(self.dir, name)
            if not os.path.islink(link):
                os.symlink(os.path.join("..data", name), link)
        for name in os.listdir(self.dir):
            link = os.path.join(self.dir, name)
            if not name.startswith("..") and name not in files:
                os.unlink(link)
        if old:
            shutil.rmtree(os.path.join(self.dir, old))


# ---- the pod, from the DaemonSet ------------------------------------------------------------

# Pod fields that only the API server, the scheduler or the kubelet's API client act on:
# nothing of the container's run depends on them.
POD_NOT_RENDERED = {
    "serviceAccountName", "automountServiceAccountToken", "enableServiceLinks",
    "priorityClassName", "affinity", "tolerations", "nodeSelector",
}
CONTAINER_NOT_RENDERED = {"name"}


def memory_bytes(quantity):
    m = re.fullmatch(r"(\d+)(Ki|Mi|Gi|K|M|G)?", str(quantity))
    if not m:
        raise Failed(f"memory quantity {quantity!r} not understood")
    unit = {None: 1, "Ki": 1 << 10, "Mi": 1 << 20, "Gi": 1 << 30,
            "K": 10**3, "M": 10**6, "G": 10**9}[m.group(2)]
    return int(m.group(1)) * unit


def cpu_millis(quantity):
    q = str(quantity)
    return int(q[:-1]) if q.endswith("m") else int(float(q) * 1000)


class Pod:
    """The `podman run` arguments of the DaemonSet's pod on this node, and its probes."""

    def __init__(self, daemonset, node, work, configmaps):
        spec = daemonset["spec"]["template"]["spec"]
        unknown = set(spec) - POD_NOT_RENDERED - {
            "containers", "volumes", "terminationGracePeriodSeconds", "hostNetwork", "hostPID",
        }
        if unknown:
            raise Failed(f"pod spec fields this run cannot render: {sorted(unknown)}")
        if len(spec["containers"]) != 1:
            raise Failed("one container expected")
        c = spec["containers"][0]
        self.container = c
        self.image = c["image"]
        args = ["--pull", "never" if c.get("imagePullPolicy", "IfNotPresent") != "Always"
                else "always"]
        if spec.get("hostNetwork"):
            args += ["--network", "host"]
        if spec.get("hostPID"):
            args += ["--pid", "host"]
        args += ["--stop-timeout", str(spec.get("terminationGracePeriodSeconds", 30))]

        sources = {}
        for v in spec.get("volumes", []):
            name = v["name"]
            kinds = set(v) - {"name"}
            if kinds == {"hostPath"}:
                sources[name] = self.host_path(node, v["hostPath"])
            elif kinds == {"configMap"}:
                cm = v["configMap"]
                if set(cm) - {"name"}:
                    raise Failed(f"volume {name}: configMap fields {sorted(cm)} not rendered")
                if cm["name"] not in configmaps:
                    raise Failed(f"volume {name}: ConfigMap {cm['name']} does not exist "
                                 "(the pod would wait in ContainerCreating)")
                sources[name] = configmaps[cm["name"]]
            elif kinds == {"emptyDir"}:
                d = os.path.join(work, "pod", "volumes", "empty-dir", name)
                os.makedirs(d)
                # As the kubelet creates an emptyDir: open to all (the host makes its
                # cache directory private itself).
                os.chmod(d, 0o777)
                sources[name] = d
            else:
                raise Failed(f"volume {name}: {sorted(kinds)} not rendered")

        known = {"image", "imagePullPolicy", "args", "command", "env", "ports",
                 "startupProbe", "livenessProbe", "readinessProbe", "resources",
                 "securityContext", "volumeMounts"} | CONTAINER_NOT_RENDERED
        unknown = set(c) - known
        if unknown:
            raise Failed(f"container fields this run cannot render: {sorted(unknown)}")
        for e in c.get("env", []):
            if set(e) != {"name", "value"}:
                raise Failed(f"env {e}: only name/value is rendered")
            args += ["-e", f"{e['name']}={e['value']}"]
        for m in c.get("volumeMounts", []):
            extra = set(m) - {"name", "mountPath", "readOnly", "mountPropagation"}
            if extra:
                raise Failed(f"volumeMount {m['name']}: {sorted(extra)} not rendered")
            if m["name"] not in sources:
                raise Failed(f"volumeMount {m['name']}: no such volume")
            options = ["ro" if m.get("readOnly") else "rw"]
            propagation = {"None": "rprivate", "HostToContainer": "rslave",
                           "Bidirectional": "rshared"}[m.get("mountPropagation", "None")]
            options.append(propagation)
            args += ["-v", f"{sources[m['name']]}:{m['mountPath']}:{','.join(options)}"]
        args += self.security(c.get("securityContext", {}))
        args += self.resources(c.get("resources", {}))
        self.ports = {p["name"]: p["containerPort"] for p in c.get("ports", []) if "name" in p}
        for p in c.get("ports", []):
            if set(p) - {"name", "containerPort", "protocol"}:
                raise Failed(f"port {p}: not rendered")
        if "command" in c:
            args += ["--entrypoint", json.dumps(c["command"])]
        self.run_args = args
        self.args = [str(a) for a in c.get("args", [])]

    @staticmethod
    def host_path(node, hp):
        path = node.path(hp["path"])
        kind = hp.get("type", "")
        if kind == "DirectoryOrCreate":
            os.makedirs(path, mode=0o755, exist_ok=True)
        elif kind == "Directory":
            if not os.path.isdir(path):
                raise Failed(f"hostPath {hp['path']} ({path}): type Directory, but it is not "
                             "a directory (the kubelet refuses to start the pod)")
        elif kind in ("", None):
            pass
        else:
            raise Failed(f"hostPath type {kind} not rendered")
        return path

    @staticmethod
    def security(sc):
        known = {"privileged", "runAsUser", "runAsGroup", "runAsNonRoot",
                 "readOnlyRootFilesystem", "allowPrivilegeEscalation", "capabilities",
                 "seccompProfile"}
        if set(sc) - known:
            raise Failed(f"securityContext fields not rendered: {sorted(set(sc) - known)}")
        args = []
        if sc.get("privileged"):
            args.append("--privileged")
        if "runAsUser" in sc:
            user = str(sc["runAsUser"])
            if "runAsGroup" in sc:
                user += f":{sc['runAsGroup']}"
            if sc.get("runAsNonRoot") and sc["runAsUser"] == 0:
                raise Failed("runAsNonRoot with runAsUser 0: the kubelet refuses it")
            args += ["--user", user]
        if sc.get("readOnlyRootFilesystem"):
            args += ["--read-only", "--read-only-tmpfs=false"]
        if sc.get("allowPrivilegeEscalation") is False:
            args += ["--security-opt", "no-new-privileges"]
        caps = sc.get("capabilities", {})
        for cap in caps.get("drop", []):
            args += ["--cap-drop", cap]
        for cap in caps.get("add", []):
            args += ["--cap-add", cap]
        seccomp = sc.get("seccompProfile", {}).get("type")
        if seccomp == "Unconfined":
            args += ["--security-opt", "seccomp=unconfined"]
        elif seccomp not in (None, "RuntimeDefault"):
            raise Failed(f"seccompProfile {seccomp} not rendered")
        return args

    @staticmethod
    def resources(r):
        args = []
        limits, requests = r.get("limits", {}), r.get("requests", {})
        if "memory" in limits:
            args += ["--memory", str(memory_bytes(limits["memory"]))]
        if "memory" in requests:
            args += ["--memory-reservation", str(memory_bytes(requests["memory"]))]
        if "cpu" in limits:
            args += ["--cpus", str(cpu_millis(limits["cpu"]) / 1000)]
        if "cpu" in requests:
            # The kubelet's shares for a request: millicores * 1024 / 1000, at least 2.
            args += ["--cpu-shares", str(max(2, cpu_millis(requests["cpu"]) * 1024 // 1000))]
        return args

    def probe_url(self, probe, ip):
        get = probe["httpGet"]
        port = get["port"]
        port = self.ports[port] if isinstance(port, str) else port
        return f"http://{ip}:{port}{get.get('path', '/')}"


def http_status(url, timeout):
    try:
        with urllib.request.urlopen(url, timeout=timeout) as r:
            return r.status, r.read().decode("utf-8", "replace")
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode("utf-8", "replace")
    except OSError as e:
        return None, str(e)


def wait_probe(pod, name, ip, tries=None):
    """Probes as the kubelet does, periodSeconds apart: a startup or liveness probe must
    succeed within failureThreshold tries (else the container is killed); readiness is
    probed on, here for `tries`."""
    probe = pod.container[name]
    url = pod.probe_url(probe, ip)
    period = probe.get("periodSeconds", 10)
    tries = tries or probe.get("failureThreshold", 3)
    timeout = probe.get("timeoutSeconds", 1)
    last = None
    for attempt in range(tries):
        status, body = http_status(url, timeout)
        last = (status, body.strip()[:300])
        if status is not None and 200 <= status < 400:
            return True, f"{url} -> {status} after {attempt + 1} tries"
        time.sleep(period)
    return False, f"{url}: {tries} failures, last {last}"


# ---- workloads ------------------------------------------------------------------------------

REPORT = r"""
echo '== dev'
find /dev -type c | while read -r f; do stat -c '%n %t %T' "$f"; done
echo '== cgroup'
cat /sys/fs/cgroup/devices/devices.list 2>/dev/null || echo none
echo '== environ'
base64 /proc/1/environ | tr -d '\n'; echo
echo '== nvidia-container-devices'
ls -1 /var/run/nvidia-container-devices 2>/dev/null
echo '== end'
"""


def parse_report(text):
    sections, current = {}, None
    for line in text.splitlines():
        if line.startswith("== "):
            current = line[3:]
            sections[current] = []
        elif current:
            sections[current].append(line)
    if "end" not in sections:
        raise Failed(f"the workload's report is incomplete:\n{text}")
    dev = {}
    for line in sections["dev"]:
        path, major, minor = line.rsplit(" ", 2)
        dev[path] = (int(major, 16), int(minor, 16))
    environ = base64.b64decode("".join(sections["environ"])).split(b"\0")
    env = dict(e.decode().split("=", 1) for e in environ if b"=" in e)
    cgroup = sections["cgroup"]
    cgroup = None if cgroup == ["none"] else cgroup
    return dev, cgroup, env, sections["nvidia-container-devices"]


def cgroup_allows(entries, number):
    """Whether a cgroup v1 devices.list lets the container read or write char device
    `number` (`m` alone, which runtimes grant for every device, opens nothing)."""
    major, minor = number
    for entry in entries:
        kind, numbers, access = entry.split()
        if kind not in ("a", "c") or not set(access) & {"r", "w"}:
            continue
        emaj, emin = numbers.split(":")
        if emaj in ("*", str(major)) and emin in ("*", str(minor)):
            return True
    return False


class Workloads:
    def __init__(self, engine, image, node, answers_dir):
        self.engine = engine
        self.image = image
        self.node = node
        self.answers_dir = answers_dir

    def args_from(self, answer):
        """The container's devices, mounts, env and CDI devices as the kubelet hands them
        to CRI and the runtime applies them; node paths mapped onto this machine."""
        args = []
        for d in answer.devices:
            host = self.node.path(d.host_path)
            args += ["--device", f"{host}:{d.container_path}:{d.permissions}"]
        for m in answer.mounts:
            mode = "ro" if m.read_only else "rw"
            args += ["-v", f"{self.node.path(m.host_path)}:{m.container_path}:{mode}"]
        for k, v in sorted(answer.envs.items()):
            args += ["-e", f"{k}={v}"]
        for k, v in sorted(answer.annotations.items()):
            args += ["--annotation", f"{k}={v}"]
        for c in answer.cdi_devices:
            args += ["--device", c.name]
        return args

    def run(self, label, answer):
        with open(os.path.join(self.answers_dir, f"{label}.json"), "w") as f:
            f.write(json_format.MessageToJson(answer))
        cmd = self.engine + ["run", "--rm", "--pull", "never"] + self.args_from(answer) + [
            self.image, "sh", "-c", REPORT]
        p = run(cmd, check=False)
        if p.returncode != 0:
            raise Failed(f"the runtime refused the answer ({shlex.join(cmd[len(self.engine):])}):"
                         f"\n{p.stdout}{p.stderr}")
        return parse_report(p.stdout)


def cdi_spec_nodes(kind, names):
    """The device nodes the CDI spec the host wrote gives `names` (spec-wide edits too)."""
    path = os.path.join(CDI_DIR, kind.replace("/", "+", 1) + ".json")
    with open(path) as f:
        spec = json.load(f)
    nodes = {}
    edits = [spec.get("containerEdits", {})] if names else []
    devices = {d["name"]: d for d in spec["devices"]}
    for name in names:
        edits.append(devices[name]["containerEdits"])
    for e in edits:
        for n in e.get("deviceNodes", []):
            nodes[n["path"]] = (n.get("major"), n.get("minor"))
    return spec, nodes


def check_workload(r, label, node, answer, seen, expected_nodes, scope_numbers, scope_prefixes):
    """The container holds exactly `expected_nodes` among the GPU and HCA nodes, each with
    the fixture's numbers, the device cgroup agrees, and the env is as answered."""
    dev, cgroup, env, _ = seen
    for path in expected_nodes:
        want = node.numbers[path]
        r.check(f"{label}: {path} is there as {want[0]}:{want[1]}", dev.get(path) == want,
                f"found {dev.get(path)}")
    extra = sorted(p for p in dev if p.startswith(scope_prefixes) and p not in expected_nodes)
    r.check(f"{label}: no other GPU or HCA node by path", not extra, extra)
    allowed_numbers = {node.numbers[p] for p in expected_nodes}
    by_number = sorted(p for p, n in dev.items()
                       if n in scope_numbers and n not in allowed_numbers)
    r.check(f"{label}: no other GPU or HCA device by major:minor", not by_number, by_number)
    if cgroup is not None:
        wrong = sorted(
            f"{m}:{n}" for (m, n) in scope_numbers
            if cgroup_allows(cgroup, (m, n)) != ((m, n) in allowed_numbers))
        r.check(f"{label}: the device cgroup allows exactly those", not wrong,
                f"disagrees on {wrong}; devices.list {cgroup}")
    mismatched = {k: (v, env.get(k)) for k, v in answer.envs.items() if env.get(k) != v}
    r.check(f"{label}: env as answered ({len(answer.envs)} variables)", not mismatched,
            mismatched)


# ---- the run -------------------------------------------------------------------------------


def latest_registration(kubelet, resource):
    accepted = [x for x in kubelet.accepted() if x.request.resource_name == resource]
    return accepted[-1] if accepted else None


def allocate(pb, reg, ids):
    try:
        return reg.stub.Allocate(pb.AllocateRequest(container_requests=[
            pb.ContainerAllocateRequest(devices_ids=ids)]), timeout=ki.WAIT).container_responses[0]
    except ki.grpc.RpcError as e:
        raise Failed(f"Allocate {ids} on {reg.request.resource_name}: "
                     f"{e.code().name}: {e.details()}")


def strategy_of(answer):
    if answer.cdi_devices:
        return "cdi-cri"
    if answer.mounts:
        return "volume-mounts"
    if answer.devices:
        return "device-specs"
    return "envvar"


def nvidia_config(strategy):
    return json.dumps({"deviceListStrategy": [strategy]}, indent=2).encode()


def ib_config(node):
    addresses = sorted(node.hcas)
    half = len(addresses) // 2
    return {
        "pools": [
            {"resourceName": IB_EXCLUSIVE, "mode": "exclusive", "unit": "hca",
             "selectors": {"vendors": ["15b3"], "pciAddresses": addresses[:half]}},
            {"resourceName": IB_SHARED, "mode": "shared", "rdmaHcaMax": IB_SHARED_SLOTS,
             "selectors": {"vendors": ["15b3"], "pciAddresses": addresses[half:]}},
        ],
        "cdiKind": RDMA_CDI_KIND,
    }, addresses[:half], addresses[half:]


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--simnode", required=True)
    parser.add_argument("--engine", default=os.environ.get("CONTAINER_ENGINE", "podman"))
    parser.add_argument("--manifest", default=os.path.join(REPO, "deploy/base/daemonset.yaml"))
    parser.add_argument("--workload-image", default="wdp-workload:test")
    parser.add_argument("--nvml", action="store_true",
                        help="install the NVML double on the node; the host must load it")
    parser.add_argument("--keep", action="store_true")
    args = parser.parse_args()
    engine = shlex.split(args.engine)

    r = ki.Results()
    work = tempfile.mkdtemp(prefix="wdp-container-")
    kubelet = None
    cid = None
    cdi_before = set(os.listdir(CDI_DIR)) if os.path.isdir(CDI_DIR) else set()
    try:
        stubs = os.path.join(work, "stubs")
        os.mkdir(stubs)
        pb, pb_grpc = ki.generate_stubs(stubs)
        with open(args.manifest) as f:
            daemonset = next(d for d in yaml.safe_load_all(f) if d and d["kind"] == "DaemonSet")

        # -- the node ------------------------------------------------------------------
        run([args.simnode, os.path.join(work, "node")] + (["--nvml"] if args.nvml else []))
        with open(os.path.join(work, "node", "expected.json")) as f:
            expected = json.load(f)
        node = Node(os.path.join(work, "node", "root"), expected)
        node.make_real()
        r.check(f"the node's {len(node.numbers)} device nodes are real character devices",
                all(os.path.exists(node.path(p)) for p in node.numbers))
        for d in ("/var/lib/kubelet/device-plugins", "/var/lib/kubelet/pod-resources"):
            os.makedirs(node.path(d), mode=0o750)
        for name in OUR_SPECS:
            if os.path.exists(os.path.join(CDI_DIR, name)):
                os.unlink(os.path.join(CDI_DIR, name))  # a previous run's

        # -- the guests ConfigMap, from the image's guests directory ------------------------
        image = daemonset["spec"]["template"]["spec"]["containers"][0]["image"]
        from_image = os.path.join(work, "from-image")
        cid_tmp = run(engine + ["create", "--pull", "never", image]).stdout.strip()
        try:
            run(engine + ["cp", f"{cid_tmp}:/etc/wasm-device-plugin/guests", from_image])
        finally:
            run(engine + ["rm", cid_tmp], check=False)
        guest_files = {n: open(os.path.join(from_image, n), "rb").read()
                       for n in sorted(os.listdir(from_image))}
        r.check("the image's guests directory holds both reference guests and policies",
                sorted(guest_files) == sorted(["nvidia-gpu.wasm", "nvidia-gpu.policy.json",
                                               "infiniband.wasm", "infiniband.policy.json"]),
                sorted(guest_files))
        ib, exclusive_hcas, shared_hcas = ib_config(node)
        guest_files["infiniband.json"] = json.dumps(ib, indent=2).encode()
        configmap = ConfigMapVolume(os.path.join(work, "configmaps", "wasm-device-plugin-guests"))
        first = nvidia_config(NVIDIA_STRATEGIES[0])
        configmap.write(dict(guest_files, **{"nvidia-gpu.json": first}))

        # -- the kubelet, then the pod ---------------------------------------------------------
        kubelet = ki.Kubelet(pb, pb_grpc, node.path("/var/lib/kubelet/device-plugins"))
        kubelet.start()
        pod = Pod(daemonset, node, work,
                  {"wasm-device-plugin-guests": configmap.dir})
        cmd = engine + ["run", "-d", "--name", f"wdp-node-test-{os.getpid()}"] + pod.run_args + [
            pod.image] + pod.args
        print("       " + shlex.join(cmd[len(engine):]), flush=True)
        started = time.monotonic()
        cid = run(cmd).stdout.strip()
        ip = run(engine + ["inspect", "-f", "{{.NetworkSettings.IPAddress}}", cid]).stdout.strip()
        for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
            if probe in pod.container:
                # Ready within 2 minutes: the guests compile on first start.
                tries = 120 // pod.container[probe].get("periodSeconds", 10) \
                    if probe == "readinessProbe" else None
                ok, detail = wait_probe(pod, probe, ip, tries)
                if not r.check(f"{probe} answers from the container", ok, detail):
                    raise Failed("the pod does not come up")
                if probe == "readinessProbe":
                    r.note(f"ready {time.monotonic() - started:.1f} s after `run`")

        if args.nvml:
            # The host reads NVML before it serves (start-up waits for the first reading).
            host_root = next((a.split("=", 1)[1] for a in pod.args
                              if a.startswith("--host-root=")), "/")
            library = os.path.join(host_root, expected["nvml"]["library"].lstrip("/"))
            logs = run(engine + ["logs", cid], check=False)
            loaded = [l for l in (logs.stdout + logs.stderr).splitlines()
                      if "NVML loaded" in l]
            r.check(f"NVML: the host loaded the node's library, {library}",
                    len(loaded) == 1 and library in loaded[0],
                    loaded or (logs.stdout + logs.stderr)[-3000:])

        # The cache emptyDir was created open to all, as the kubelet creates one: the host
        # made it private before trusting it, and filled it.
        cache = os.path.join(work, "pod", "volumes", "empty-dir", "cache")
        if os.path.isdir(cache):
            mode = os.stat(cache).st_mode & 0o7777
            compiled = sorted(n for n in os.listdir(cache) if n.endswith(".cwasm"))
            r.check("cache: the emptyDir made private (0700), the guests compiled into it",
                    mode == 0o700 and len(compiled) >= 2, (oct(mode), compiled))

        resources = [GPU_RESOURCE, IB_EXCLUSIVE, IB_SHARED]
        regs = kubelet.wait(lambda: (lambda m: m if all(m) else None)(
            [latest_registration(kubelet, x) for x in resources]), ki.WAIT)
        if not r.check("registered: " + ", ".join(resources), regs,
                       [x.request.resource_name for x in kubelet.registrations]):
            raise Failed("not registered")
        gpu_reg, ib_reg, shared_reg = regs
        lists = [kubelet.wait(lambda g=g: g.stream.latest(), ki.WAIT) for g in regs]
        uuids = sorted(g["uuid"] for g in node.gpus)
        r.check("ListAndWatch nvidia.com/gpu: the fixture's 8 GPUs, Healthy",
                lists[0] is not None and sorted(d.ID for d in lists[0]) == uuids
                and all(d.health == "Healthy" for d in lists[0]),
                [(d.ID, d.health) for d in lists[0] or []])
        r.check(f"ListAndWatch {IB_EXCLUSIVE}: its HCAs, Healthy",
                lists[1] is not None and sorted(d.ID for d in lists[1]) == exclusive_hcas
                and all(d.health == "Healthy" for d in lists[1]),
                [(d.ID, d.health) for d in lists[1] or []])
        r.check(f"ListAndWatch {IB_SHARED}: {IB_SHARED_SLOTS} slots, Healthy",
                lists[2] is not None and len(lists[2]) == IB_SHARED_SLOTS
                and all(d.health == "Healthy" for d in lists[2]),
                [(d.ID, d.health) for d in lists[2] or []])

        # -- workloads -----------------------------------------------------------------------
        answers = os.path.join(work, "answers")
        os.mkdir(answers)
        workloads = Workloads(engine, args.workload_image, node, answers)
        gpu_numbers = node.gpu_node_numbers() | node.hca_node_numbers()
        scope = ("/dev/nvidia", "/dev/infiniband/")
        a, b = node.gpus[0], node.gpus[2]
        control = [p for p in ("/dev/nvidiactl", "/dev/nvidia-uvm", "/dev/nvidia-uvm-tools",
                               "/dev/nvidia-modeset") if p in node.numbers]
        for n, strategy in enumerate(NVIDIA_STRATEGIES):
            label = f"nvidia {strategy}"
            if n > 0:
                configmap.write(dict(guest_files, **{"nvidia-gpu.json": nvidia_config(strategy)}))
            deadline = time.monotonic() + RELOAD_WAIT
            while True:
                answer = allocate(pb, latest_registration(kubelet, GPU_RESOURCE),
                                  [a["uuid"], b["uuid"]])
                if strategy_of(answer) == strategy or time.monotonic() > deadline:
                    break
                time.sleep(0.5)
            what = "the host reloaded the ConfigMap's new configuration" if n > 0 \
                else "the answer has the configured strategy's form"
            if not r.check(f"{label}: {what}", strategy_of(answer) == strategy, answer):
                continue
            seen = workloads.run(label.replace(" ", "-"), answer)
            nodes = []
            if strategy == "device-specs":
                nodes = [a["dev_node"], b["dev_node"]] + control
            elif strategy == "cdi-cri":
                names = [c.name for c in answer.cdi_devices]
                r.check(f"{label}: CDI names are the GPUs' in request order",
                        names == [f"k8s.device-plugin.nvidia.com/gpu={x['uuid']}" for x in (a, b)],
                        names)
                spec, spec_nodes = cdi_spec_nodes("k8s.device-plugin.nvidia.com/gpu",
                                                  [x.split("=", 1)[1] for x in names])
                nodes = [a["dev_node"], b["dev_node"]] + control
                r.check(f"{label}: the spec gives exactly those nodes, with the node's numbers",
                        spec_nodes == {p: node.numbers[p] for p in nodes},
                        f"{spec_nodes} (cdiVersion {spec['cdiVersion']})")
            check_workload(r, label, node, answer, seen, nodes, gpu_numbers, scope)
            env = seen[2].get("NVIDIA_VISIBLE_DEVICES")
            want = {"envvar": f"{a['uuid']},{b['uuid']}",
                    "volume-mounts": "/var/run/nvidia-container-devices"}.get(strategy, "void")
            r.check(f"{label}: NVIDIA_VISIBLE_DEVICES={want}", env == want, env)
            if strategy == "volume-mounts":
                r.check(f"{label}: /var/run/nvidia-container-devices names exactly the GPUs",
                        sorted(seen[3]) == sorted([a["uuid"], b["uuid"]]), seen[3])

        x = exclusive_hcas[1]
        rdma_cm = ["/dev/infiniband/rdma_cm"] if "/dev/infiniband/rdma_cm" in node.numbers else []
        for label, reg, ids, hcas, var in (
            ("infiniband exclusive", ib_reg, [x], [x], "PCIDEVICE_NVIDIA_COM_IB"),
            ("infiniband shared", shared_reg, [lists[2][0].ID], shared_hcas,
             "PCIDEVICE_RDMA_IB_SHARED"),
        ):
            answer = allocate(pb, reg, ids)
            seen = workloads.run(label.replace(" ", "-"), answer)
            nodes = sorted({p for h in hcas for p in node.hcas[h]["nodes"]} | set(rdma_cm))
            check_workload(r, label, node, answer, seen, nodes, gpu_numbers, scope)
            names = sorted(c.name for c in answer.cdi_devices)
            r.check(f"{label}: CDI names are the HCAs'", names ==
                    sorted(f"{RDMA_CDI_KIND}={h}" for h in hcas), names)
            _, spec_nodes = cdi_spec_nodes(RDMA_CDI_KIND, [n.split("=", 1)[1] for n in names])
            r.check(f"{label}: the spec gives exactly those nodes, with the node's numbers",
                    spec_nodes == {p: node.numbers[p] for p in nodes}, spec_nodes)
            r.check(f"{label}: {var} names the HCAs",
                    sorted(seen[2].get(var, "").split(",")) == sorted(hcas), seen[2].get(var))

        # -- SIGTERM, as the kubelet stops the pod ---------------------------------------------
        endpoint_dir = kubelet.dir
        run(engine + ["stop", cid])
        code = run(engine + ["inspect", "-f", "{{.State.ExitCode}}", cid]).stdout.strip()
        r.check("stop (SIGTERM): the host exits 0", code == "0", code)
        left = sorted(os.listdir(endpoint_dir))
        r.check("stop: its sockets are removed, kubelet.sock is not",
                left == [ki.KUBELET_SOCKET], left)
    except Failed as e:
        r.check("the container run completes", False, str(e))
    except Exception:
        r.check("the container run completes", False, traceback.format_exc())
    finally:
        if cid is not None:
            if r.failed:
                logs = run(engine + ["logs", "--tail", "60", cid], check=False)
                print("---- host log (last lines) ----")
                print(logs.stdout + logs.stderr)
                print("-------------------------------")
            run(engine + ["rm", "-f", "-t", "0", cid], check=False)
        if kubelet is not None:
            kubelet.stop()
        if os.path.isdir(CDI_DIR):
            for name in (set(os.listdir(CDI_DIR)) - cdi_before) | set(OUR_SPECS):
                if os.path.exists(os.path.join(CDI_DIR, name)):
                    os.unlink(os.path.join(CDI_DIR, name))
        if args.keep:
            print(f"kept {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)
    print(f"{r.passed} passed, {r.failed} failed")
    return 1 if r.failed else 0


if __name__ == "__main__":
    sys.exit(main())
