#!/usr/bin/env python3
"""The host against an independent gRPC implementation playing the kubelet.

gRPC C core (through Python's grpcio), with stubs generated at run time from the same
proto/v1beta1/api.proto the host is built from, serves `v1beta1.Registration` on
`kubelet.sock` in a temporary device-plugin directory, and does what the kubelet's
grpc-go does (kubelet-interop.md §2, §8): during Register it dials the plug-in's socket
(`unix://` target, `:authority` localhost, blocking dial within 10 s), calls
GetDevicePluginOptions and only then answers; it then consumes ListAndWatch and drives
Allocate, GetPreferredAllocation and PreStartContainer as the device manager does.

The host is the real `wasm-device-plugin run` binary, serving the simulated DGX H100
node and the NVIDIA reference guest that `testkit`'s `simnode` binary writes.

Also checked: a request whose `:authority` is the socket path, raw (kubelets before
v1.26) or percent-encoded (grpc-go's default for a bare-path target, which the kubelet's
plugin manager sends), is served like one with `localhost` (the host's patched h2, see
README.md beside this file), a kubelet restart, and SIGTERM.

Usage: kubelet_interop.py [--target-dir DIR]   (default: <repo>/target)
Builds nothing: run `cargo build -p wasm-device-plugin -p testkit --bins` first.
Prints one line per check and, last, `N passed, N failed`; exits 1 on any failure.
"""

import argparse
import json
import os
import shutil
import signal
import stat
import subprocess
import sys
import tempfile
import threading
import time
import traceback
from concurrent import futures

import grpc
from grpc_tools import protoc

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
PROTO_DIR = os.path.join(REPO, "proto", "v1beta1")
RESOURCE = "nvidia.com/gpu"
KUBELET_SOCKET = "kubelet.sock"
# The kubelet's dial-back during Register (WithBlock, 10 s).
DIAL_TIMEOUT = 10.0
# How long to wait for things the host does within a second or two; first start
# compiles the guest, hence the longer wait for the first registration.
WAIT = 15.0
FIRST_REGISTRATION_WAIT = 90.0


# ---- results -------------------------------------------------------------------------


class Results:
    def __init__(self):
        self.passed = 0
        self.failed = 0

    def check(self, name, ok, detail=""):
        if ok:
            self.passed += 1
            print(f"ok     {name}", flush=True)
        else:
            self.failed += 1
            print(f"FAILED {name}: {detail}", flush=True)
        return ok

    def note(self, text):
        print(f"       {text}", flush=True)


# ---- stubs ---------------------------------------------------------------------------


def generate_stubs(out_dir):
    """Compiles api.proto into out_dir with grpc_tools' bundled protoc and imports it."""
    import grpc_tools

    well_known = os.path.join(os.path.dirname(grpc_tools.__file__), "_proto")
    rc = protoc.main(
        [
            "grpc_tools.protoc",
            f"-I{PROTO_DIR}",
            f"-I{well_known}",
            f"--python_out={out_dir}",
            f"--grpc_python_out={out_dir}",
            os.path.join(PROTO_DIR, "api.proto"),
        ]
    )
    if rc != 0:
        raise RuntimeError(f"protoc failed on {PROTO_DIR}/api.proto (exit {rc})")
    sys.path.insert(0, out_dir)
    import api_pb2  # noqa: E402  (generated above)
    import api_pb2_grpc  # noqa: E402

    return api_pb2, api_pb2_grpc


# ---- the kubelet stand-in ------------------------------------------------------------


class Stream:
    """One ListAndWatch stream as the device manager consumes it: every message replaces
    the view; the stream is never reopened."""

    def __init__(self, kubelet, call):
        self.kubelet = kubelet
        self.call = call
        self.lists = []
        self.ended = None  # None while open, else a description of how it ended
        self.thread = threading.Thread(target=self._consume, daemon=True)
        self.thread.start()

    def _consume(self):
        try:
            for message in self.call:
                with self.kubelet.cond:
                    self.lists.append(list(message.devices))
                    self.kubelet.cond.notify_all()
            how = "closed by the plug-in (OK)"
        except grpc.RpcError as e:
            how = f"{e.code().name}: {e.details()}"
        with self.kubelet.cond:
            self.ended = how
            self.kubelet.cond.notify_all()

    def latest(self):
        with self.kubelet.cond:
            return self.lists[-1] if self.lists else None


class Registration:
    def __init__(self, request, time_remaining, metadata):
        self.request = request
        self.time_remaining = time_remaining
        self.metadata = metadata
        self.options = None
        self.error = None
        self.at = time.monotonic()
        self.channel = None
        self.stub = None
        self.stream = None


class Kubelet:
    """Serves Registration on <dir>/kubelet.sock with grpcio, dialing plug-ins back."""

    def __init__(self, pb, pb_grpc, directory):
        self.pb = pb
        self.pb_grpc = pb_grpc
        self.dir = directory
        self.cond = threading.Condition()
        self.registrations = []
        self.server = None

    @property
    def socket(self):
        return os.path.join(self.dir, KUBELET_SOCKET)

    def start(self):
        kubelet = self

        class Servicer(self.pb_grpc.RegistrationServicer):
            def Register(self, request, context):
                return kubelet._register(request, context)

        if os.path.exists(self.socket):
            os.unlink(self.socket)
        server = grpc.server(futures.ThreadPoolExecutor(max_workers=8))
        self.pb_grpc.add_RegistrationServicer_to_server(Servicer(), server)
        server.add_insecure_port("unix://" + self.socket)
        server.start()
        self.server = server

    def stop(self):
        """A kubelet going down: the server stops, its socket goes, streams drop."""
        if self.server is not None:
            self.server.stop(grace=None).wait(5)
            self.server = None
        if os.path.exists(self.socket):
            os.unlink(self.socket)
        with self.cond:
            live = [r for r in self.registrations if r.channel is not None]
        for r in live:
            r.channel.close()

    def restart(self):
        """A kubelet restart: stop, remove every socket in the directory, serve again."""
        self.stop()
        for name in os.listdir(self.dir):
            path = os.path.join(self.dir, name)
            # The host may remove its own socket meanwhile (it saw the stream end): a
            # socket that vanishes during the clean-up is already gone.
            try:
                if stat.S_ISSOCK(os.lstat(path).st_mode):
                    os.unlink(path)
            except FileNotFoundError:
                pass
        self.start()

    def _register(self, request, context):
        pb = self.pb
        registration = Registration(
            request, context.time_remaining(), dict(context.invocation_metadata())
        )
        try:
            if request.version != "v1beta1":
                raise RuntimeError(
                    f"requested API version {request.version!r} is not supported by kubelet"
                )
            # filepath.Join(socketDir, endpoint)
            endpoint = os.path.join(self.dir, request.endpoint.lstrip("/"))
            channel = grpc.insecure_channel(
                "unix://" + endpoint, options=[("grpc.default_authority", "localhost")]
            )
            try:
                grpc.channel_ready_future(channel).result(timeout=DIAL_TIMEOUT)
            except grpc.FutureTimeoutError:
                channel.close()
                raise RuntimeError("failed to dial device plugin: timeout")
            stub = self.pb_grpc.DevicePluginStub(channel)
            try:
                options = stub.GetDevicePluginOptions(
                    pb.Empty(), timeout=max(1.0, context.time_remaining() or 1.0)
                )
            except grpc.RpcError as e:
                channel.close()
                raise RuntimeError(f"failed to get device plugin options: {e.details()}")
            registration.options = options
            registration.channel = channel
            registration.stub = stub
        except RuntimeError as e:
            registration.error = str(e)
            with self.cond:
                self.registrations.append(registration)
                self.cond.notify_all()
            context.abort(grpc.StatusCode.UNKNOWN, str(e))
        with self.cond:
            # Latest registration wins; the previous stream is dropped.
            for old in self.registrations:
                if (
                    old.request.resource_name == request.resource_name
                    and old.channel is not None
                ):
                    old.channel.close()
                    old.channel = None
            self.registrations.append(registration)
            registration.stream = Stream(self, stub.ListAndWatch(pb.Empty()))
            self.cond.notify_all()
        return pb.Empty()

    def accepted(self):
        with self.cond:
            return [r for r in self.registrations if r.error is None]

    def wait(self, predicate, timeout):
        """Waits until predicate() is truthy; returns its value or None."""
        deadline = time.monotonic() + timeout
        with self.cond:
            while True:
                value = predicate()
                if value:
                    return value
                left = deadline - time.monotonic()
                if left <= 0:
                    return None
                self.cond.wait(min(left, 0.1))

    def wait_registrations(self, count, timeout):
        return self.wait(
            lambda: (lambda a: a if len(a) >= count else None)(
                [r for r in self.registrations if r.error is None]
            ),
            timeout,
        )


# ---- the host ------------------------------------------------------------------------


class Host:
    def __init__(self, binary, fixture, plugin_dir, log_path):
        self.log_path = log_path
        self.log = open(log_path, "wb")
        env = dict(os.environ)
        env.setdefault("RUST_LOG", "info")
        self.process = subprocess.Popen(
            [
                binary,
                "run",
                "--host-root",
                os.path.join(fixture, "root"),
                "--guests-dir",
                os.path.join(fixture, "guests"),
                "--device-plugin-dir",
                plugin_dir,
                "--rescan-seconds",
                "0.2",
                # The fixture's device nodes are plain files (built without root).
                "--simulated-node",
            ],
            stdin=subprocess.DEVNULL,
            stdout=self.log,
            stderr=subprocess.STDOUT,
            env=env,
        )

    def terminate(self, timeout):
        """SIGTERM; returns (exit code or None if still running, seconds taken)."""
        started = time.monotonic()
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
        try:
            code = self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            code = None
        return code, time.monotonic() - started

    def kill(self):
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait()
        self.log.close()

    def log_tail(self, lines=60):
        self.log.flush()
        with open(self.log_path, "rb") as f:
            text = f.read().decode("utf-8", "replace").splitlines()
        return "\n".join(text[-lines:])


# ---- the checks ----------------------------------------------------------------------


def health_of(devices, device_id):
    for d in devices:
        if d.ID == device_id:
            return d.health
    return None


def run_checks(r, pb, pb_grpc, kubelet, host, fixture, expected):
    root = os.path.join(fixture, "root")
    gpus = expected["gpus"]
    uuids = [g["uuid"] for g in gpus]
    by_uuid = {g["uuid"]: g for g in gpus}

    # -- Registration, as grpc-go's kubelet sees it ------------------------------------
    accepted = kubelet.wait_registrations(1, FIRST_REGISTRATION_WAIT)
    if not r.check("the host registers with a grpcio Registration server", accepted,
                   f"no accepted Register within {FIRST_REGISTRATION_WAIT}s; "
                   f"all: {[(x.request, x.error) for x in kubelet.registrations]}"):
        return
    reg = accepted[0]
    req = reg.request
    r.check("Register: version is v1beta1", req.version == "v1beta1", repr(req.version))
    r.check("Register: resource name", req.resource_name == RESOURCE, repr(req.resource_name))
    r.check(
        "Register: endpoint is a bare socket name in the directory",
        "/" not in req.endpoint
        and stat.S_ISSOCK(os.lstat(os.path.join(kubelet.dir, req.endpoint)).st_mode),
        repr(req.endpoint),
    )
    r.check(
        "Register: deadline of at least 30 s reached the grpcio server",
        reg.time_remaining is not None and reg.time_remaining >= 29.0,
        f"time remaining {reg.time_remaining}",
    )
    r.check(
        "Register: dial-back with :authority localhost and GetDevicePluginOptions "
        "succeeded before the answer",
        reg.options is not None and reg.error is None,
        reg.error,
    )
    r.check(
        "Register: options equal GetDevicePluginOptions",
        req.HasField("options") and req.options == reg.options,
        f"request {req.options} vs GetDevicePluginOptions {reg.options}",
    )
    options = reg.options

    # -- ListAndWatch -----------------------------------------------------------------
    first = kubelet.wait(lambda: reg.stream.latest(), WAIT)
    if not r.check("ListAndWatch: a device list arrives at once", first is not None,
                   f"stream: {reg.stream.ended}"):
        return
    ids = [d.ID for d in first]
    r.check("ListAndWatch: 8 devices, no ID twice", len(ids) == 8 and len(set(ids)) == 8, ids)
    r.check("ListAndWatch: exactly the fixture's GPU UUIDs", sorted(ids) == sorted(uuids),
            f"{sorted(ids)} vs {sorted(uuids)}")
    r.check("ListAndWatch: every device Healthy (exact string)",
            all(d.health == "Healthy" for d in first), [d.health for d in first])
    topo = {d.ID: [n.ID for n in d.topology.nodes] if d.HasField("topology") else None
            for d in first}
    r.check(
        "ListAndWatch: NUMA topology of every GPU",
        all(topo.get(g["uuid"]) == [g["numa_node"]] for g in gpus),
        topo,
    )

    stub = reg.stub
    later = stub.GetDevicePluginOptions(pb.Empty(), timeout=5)
    r.check("GetDevicePluginOptions again: same answer", later == options, f"{later} vs {options}")

    # -- Allocate ---------------------------------------------------------------------
    a, b = gpus[0], gpus[2]
    answer = stub.Allocate(
        pb.AllocateRequest(container_requests=[
            pb.ContainerAllocateRequest(devices_ids=[a["uuid"], b["uuid"]])
        ]),
        timeout=WAIT,
    )
    r.check("Allocate: one answer for one container", len(answer.container_responses) == 1,
            len(answer.container_responses))
    c = answer.container_responses[0]
    paths = [d.host_path for d in c.devices]
    r.check("Allocate: device specs carry both GPUs' nodes",
            a["dev_node"] in paths and b["dev_node"] in paths, paths)
    others = [g["dev_node"] for g in gpus if g not in (a, b)]
    r.check("Allocate: no other GPU's node", not any(p in paths for p in others), paths)
    r.check(
        "Allocate: absolute paths, permissions within rwm",
        all(d.container_path.startswith("/") and d.host_path.startswith("/")
            and d.permissions and set(d.permissions) <= set("rwm") for d in c.devices),
        list(c.devices),
    )
    missing = [p for p in paths + [m.host_path for m in c.mounts]
               if not os.path.lexists(os.path.join(root, p.lstrip("/")))]
    r.check("Allocate: every host path exists on the node at return time", not missing, missing)
    r.check(
        "Allocate: NVIDIA_VISIBLE_DEVICES names the GPUs in request order",
        c.envs.get("NVIDIA_VISIBLE_DEVICES") == f"{a['uuid']},{b['uuid']}",
        dict(c.envs),
    )

    answer = stub.Allocate(
        pb.AllocateRequest(container_requests=[
            pb.ContainerAllocateRequest(devices_ids=[b["uuid"]]),
            pb.ContainerAllocateRequest(devices_ids=[a["uuid"]]),
        ]),
        timeout=WAIT,
    )
    per_container = [[d.host_path for d in x.devices] for x in answer.container_responses]
    r.check(
        "Allocate: two containers, two answers in request order",
        len(per_container) == 2
        and b["dev_node"] in per_container[0] and a["dev_node"] not in per_container[0]
        and a["dev_node"] in per_container[1] and b["dev_node"] not in per_container[1],
        per_container,
    )

    try:
        stub.Allocate(pb.AllocateRequest(container_requests=[
            pb.ContainerAllocateRequest(devices_ids=["GPU-not-on-this-node"])
        ]), timeout=WAIT)
        r.check("Allocate: an unknown ID is refused", False, "it was allocated")
    except grpc.RpcError as e:
        r.check("Allocate: an unknown ID is refused with INVALID_ARGUMENT naming it",
                e.code() == grpc.StatusCode.INVALID_ARGUMENT
                and "GPU-not-on-this-node" in (e.details() or ""),
                f"{e.code()}: {e.details()}")

    # -- GetPreferredAllocation, PreStartContainer if advertised --------------------
    if options.get_preferred_allocation_available:
        must = gpus[5]["uuid"]
        pref = stub.GetPreferredAllocation(pb.PreferredAllocationRequest(container_requests=[
            pb.ContainerPreferredAllocationRequest(
                available_deviceIDs=uuids, must_include_deviceIDs=[must], allocation_size=2)
        ]), timeout=WAIT)
        chosen = list(pref.container_responses[0].deviceIDs) if pref.container_responses else None
        r.check(
            "GetPreferredAllocation: 2 of the available, holding the must-include one",
            chosen is not None and len(chosen) == 2 and must in chosen
            and all(x in uuids for x in chosen),
            chosen,
        )
        r.check(
            "GetPreferredAllocation: the pair shares a NUMA node",
            chosen is not None and len(chosen) == 2
            and by_uuid[chosen[0]]["numa_node"] == by_uuid[chosen[1]]["numa_node"],
            chosen,
        )
    else:
        r.note("GetPreferredAllocation not advertised by the guest: not called (as the kubelet)")
    if options.pre_start_required:
        try:
            stub.PreStartContainer(
                pb.PreStartContainerRequest(devices_ids=[a["uuid"]]), timeout=30)
            r.check("PreStartContainer within the kubelet's 30 s", True)
        except grpc.RpcError as e:
            r.check("PreStartContainer within the kubelet's 30 s", False,
                    f"{e.code()}: {e.details()}")
    else:
        r.note("PreStartContainer not required by the guest: not called (as the kubelet)")

    # -- The Register answer was taken: no re-registration, the stream stays open -----
    time.sleep(1.5)
    r.check(
        "the host took grpcio's Register answer: one registration, stream still open",
        len(kubelet.registrations) == 1 and reg.stream.ended is None,
        f"{len(kubelet.registrations)} registrations, stream {reg.stream.ended}",
    )

    # -- A health change reaches the grpcio stream --------------------------------------
    gpu = gpus[4]
    node = os.path.join(root, gpu["dev_node"].lstrip("/"))
    os.rename(node, node + ".away")
    seen = kubelet.wait(
        lambda: (lambda l: l if l and health_of(l, gpu["uuid"]) == "Unhealthy" else None)(
            reg.stream.latest()), WAIT)
    r.check(
        "ListAndWatch: a GPU whose node vanished turns Unhealthy, still listed, others Healthy",
        seen is not None and len(seen) == 8
        and all(d.health == "Healthy" for d in seen if d.ID != gpu["uuid"]),
        [(d.ID, d.health) for d in (seen or reg.stream.latest() or [])],
    )
    os.rename(node + ".away", node)
    back = kubelet.wait(
        lambda: (lambda l: l if l and health_of(l, gpu["uuid"]) == "Healthy" else None)(
            reg.stream.latest()), WAIT)
    r.check("ListAndWatch: and Healthy again when it returns", back is not None,
            [(d.ID, d.health) for d in (reg.stream.latest() or [])])

    # -- :authority = the socket path (pre-v1.26 kubelets; the plugin manager's dial) -----
    check_path_authority(r, pb, pb_grpc, kubelet, reg)

    # -- Kubelet restart ----------------------------------------------------------------
    before = len(kubelet.accepted())
    restarted = time.monotonic()
    kubelet.restart()
    again = kubelet.wait_registrations(before + 1, WAIT)
    took = time.monotonic() - restarted
    if r.check("kubelet restart: the host registers again", again,
               f"registrations {[(x.request.endpoint, x.error) for x in kubelet.registrations]}"):
        new = again[-1]
        r.note(f"re-registered {took:.2f} s after the restart")
        r.check("kubelet restart: on a socket name never used before",
                new.request.endpoint != req.endpoint, new.request.endpoint)
        listed = kubelet.wait(lambda: new.stream.latest(), WAIT)
        r.check(
            "kubelet restart: the full list, all Healthy, on the new stream",
            listed is not None and sorted(d.ID for d in listed) == sorted(uuids)
            and all(d.health == "Healthy" for d in listed),
            listed,
        )
        sockets = sorted(n for n in os.listdir(kubelet.dir)
                         if stat.S_ISSOCK(os.lstat(os.path.join(kubelet.dir, n)).st_mode))
        r.check("kubelet restart: one plug-in socket left, the new one",
                sockets == sorted([KUBELET_SOCKET, new.request.endpoint]), sockets)
        reg = new

    # -- SIGTERM --------------------------------------------------------------------------
    code, took = host.terminate(10)
    r.check("SIGTERM: the host exits 0 within 10 s", code == 0,
            f"exit {code} after {took:.1f} s")
    ended = kubelet.wait(lambda: reg.stream.ended, WAIT)
    r.check("SIGTERM: the kubelet's stream ends", ended is not None, ended)
    left = sorted(os.listdir(kubelet.dir))
    r.check("SIGTERM: its socket is removed, kubelet.sock is not",
            left == [KUBELET_SOCKET], left)


def encode_authority(endpoint):
    """grpc-go's encodeAuthority (clientconn.go): what a grpc-go client sends as
    `:authority` for a bare-path target without WithAuthority, e.g. the kubelet's
    plugin-watcher dial (operation_generator.go) with grpc-go of 2023 or later."""
    keep = set("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789"
               "-_.~!$&'()*+,;=:[]@")
    return "".join(c if c in keep else "%{:02X}".format(ord(c)) for c in endpoint)


def call_with_authority(pb, pb_grpc, endpoint, authority):
    """Two calls on one connection carrying `authority`; returns their outcomes."""
    channel = grpc.insecure_channel(
        "unix://" + endpoint, options=[("grpc.default_authority", authority)]
    )
    stub = pb_grpc.DevicePluginStub(channel)
    outcomes = []
    for call in (lambda: stub.GetDevicePluginOptions(pb.Empty(), timeout=5),
                 lambda: stub.Allocate(pb.AllocateRequest(), timeout=5)):
        try:
            call()
            outcomes.append(("OK", ""))
        except grpc.RpcError as e:
            outcomes.append((e.code().name, e.details() or ""))
    channel.close()
    return outcomes


def check_path_authority(r, pb, pb_grpc, kubelet, reg):
    """`:authority` = the plug-in's socket path, as kubelets before v1.26 sent it, and
    the same percent-encoded, as grpc-go sends it for a bare-path target today (the
    kubelet's plugin-manager dial does).

    Stock h2 (under tonic) parses `:authority` as a URI authority before any handler
    runs and resets the stream with PROTOCOL_ERROR when it is not one; the host carries a
    patched h2 (third_party/h2/PATCH.md) that serves a request whose `:authority` is a
    path as one without an authority. So these calls must be answered exactly as the
    same calls with `:authority: localhost` are; then the host must still serve.
    """
    endpoint = os.path.join(kubelet.dir, reg.request.endpoint)
    baseline = call_with_authority(pb, pb_grpc, endpoint, "localhost")
    for label, authority in (
        ("pre-1.26 :authority (raw socket path)", endpoint),
        ("grpc-go :authority for a bare-path target (percent-encoded path)",
         encode_authority(endpoint)),
    ):
        outcomes = call_with_authority(pb, pb_grpc, endpoint, authority)
        r.note(f":authority {authority!r} -> {outcomes}")
        r.check(
            f"{label}: served like :authority localhost, not reset",
            outcomes == baseline and not any("RST_STREAM" in d for _, d in outcomes),
            (outcomes, baseline),
        )

    # The host keeps serving: the open stream, the kubelet's connection, new connections.
    r.check("after the path-authority requests: the ListAndWatch stream is still open",
            reg.stream.ended is None, reg.stream.ended)
    try:
        reg.stub.GetDevicePluginOptions(pb.Empty(), timeout=5)
        again = True
        detail = ""
    except grpc.RpcError as e:
        again, detail = False, f"{e.code()}: {e.details()}"
    r.check("after the path-authority requests: the kubelet's connection is still served",
            again, detail)
    fresh = grpc.insecure_channel(
        "unix://" + endpoint, options=[("grpc.default_authority", "localhost")])
    try:
        first = pb_grpc.DevicePluginStub(fresh).Allocate(
            pb.AllocateRequest(container_requests=[pb.ContainerAllocateRequest(
                devices_ids=[reg.stream.latest()[0].ID])]), timeout=WAIT)
        ok, detail = len(first.container_responses) == 1, first
    except grpc.RpcError as e:
        ok, detail = False, f"{e.code()}: {e.details()}"
    fresh.close()
    r.check("after the path-authority requests: a new localhost connection is served", ok, detail)
    time.sleep(0.5)
    r.check("after the path-authority requests: no re-registration",
            len(kubelet.registrations) == 1, len(kubelet.registrations))


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--target-dir", default=os.environ.get(
        "CARGO_TARGET_DIR", os.path.join(REPO, "target")))
    parser.add_argument("--keep", action="store_true", help="keep the temporary directory")
    args = parser.parse_args()
    target = os.path.join(os.path.abspath(args.target_dir), "debug")
    host_binary = os.path.join(target, "wasm-device-plugin")
    simnode = os.path.join(target, "simnode")
    for binary in (host_binary, simnode):
        if not os.access(binary, os.X_OK):
            print(f"missing {binary}: run `cargo build -p wasm-device-plugin -p testkit --bins`")
            print("0 passed, 1 failed")
            return 1

    r = Results()
    tmp = tempfile.mkdtemp(prefix="wdp-interop-")
    host = None
    kubelet = None
    try:
        stubs = os.path.join(tmp, "stubs")
        os.mkdir(stubs)
        pb, pb_grpc = generate_stubs(stubs)
        r.check("stubs generated from proto/v1beta1/api.proto",
                hasattr(pb_grpc, "RegistrationServicer") and hasattr(pb_grpc, "DevicePluginStub"))

        fixture = os.path.join(tmp, "fixture")
        subprocess.run([simnode, fixture], check=True, stdout=subprocess.DEVNULL)
        with open(os.path.join(fixture, "expected.json")) as f:
            expected = json.load(f)

        plugin_dir = os.path.join(tmp, "device-plugins")
        os.mkdir(plugin_dir, 0o750)
        kubelet = Kubelet(pb, pb_grpc, plugin_dir)
        kubelet.start()
        host = Host(host_binary, fixture, plugin_dir, os.path.join(tmp, "host.log"))
        run_checks(r, pb, pb_grpc, kubelet, host, fixture, expected)
    except Exception:
        r.check("the interop run completes", False, traceback.format_exc())
    finally:
        if host is not None:
            if r.failed:
                print("---- host log (last lines) ----")
                print(host.log_tail())
                print("-------------------------------")
            host.kill()
        if kubelet is not None:
            kubelet.stop()
        if args.keep:
            print(f"kept {tmp}")
        else:
            shutil.rmtree(tmp, ignore_errors=True)
    print(f"{r.passed} passed, {r.failed} failed")
    return 1 if r.failed else 0


if __name__ == "__main__":
    sys.exit(main())
