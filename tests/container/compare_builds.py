#!/usr/bin/env python3
"""The image's static musl host against the glibc build, side by side, in one run.

For each binary: its size; the time `--version` takes (exec to exit, mean of 20); a
`run` on the simulated DGX H100 node (testkit's simnode, NVIDIA reference guest) with the
grpcio kubelet stand-in of tests/interop: time to /healthz and to /readyz and the host
process's RSS (VmRSS, VmHWM) when ready, first with an empty --cache-dir (the guest is
compiled, in a child process) and again with the cache filled. Prints a Markdown table
(BENCHMARKS.md, "Image").

Usage: compare_builds.py --simnode target/debug/simnode --musl BIN --glibc BIN
"""

import argparse
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(os.path.dirname(HERE), "interop"))
import kubelet_interop as ki  # noqa: E402


def status_kib(pid, field):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    return None


def get(url):
    try:
        with urllib.request.urlopen(url, timeout=1) as r:
            return r.status
    except Exception:
        return None


def version_time(binary, n=20):
    started = time.perf_counter()
    for _ in range(n):
        subprocess.run([binary, "--version"], stdout=subprocess.DEVNULL, check=True)
    return (time.perf_counter() - started) / n


def start_to_ready(binary, fixture, cache, plugin_dir, port, pb, pb_grpc):
    kubelet = ki.Kubelet(pb, pb_grpc, plugin_dir)
    kubelet.start()
    log = open(os.path.join(os.path.dirname(plugin_dir), f"host-{port}.log"), "wb")
    started = time.perf_counter()
    host = subprocess.Popen(
        [binary, "run", "--host-root", os.path.join(fixture, "root"),
         "--guests-dir", os.path.join(fixture, "guests"), "--device-plugin-dir", plugin_dir,
         "--cache-dir", cache, "--metrics-addr", f"127.0.0.1:{port}",
         "--no-release-detection", "--simulated-node"],
        stdout=log, stderr=subprocess.STDOUT)
    healthz = readyz = None
    try:
        while time.perf_counter() - started < 120:
            now = time.perf_counter() - started
            if healthz is None and get(f"http://127.0.0.1:{port}/healthz") == 200:
                healthz = now
            if healthz is not None and get(f"http://127.0.0.1:{port}/readyz") == 200:
                readyz = time.perf_counter() - started
                break
            time.sleep(0.005)
        rss, hwm = status_kib(host.pid, "VmRSS"), status_kib(host.pid, "VmHWM")
    finally:
        host.send_signal(signal.SIGTERM)
        host.wait(15)
        kubelet.stop()
        log.close()
    if readyz is None:
        raise RuntimeError(f"{binary} did not turn ready; see {log.name}")
    return healthz, readyz, rss, hwm


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--simnode", required=True)
    parser.add_argument("--musl", required=True)
    parser.add_argument("--glibc", required=True)
    args = parser.parse_args()
    work = tempfile.mkdtemp(prefix="wdp-compare-")
    try:
        stubs = os.path.join(work, "stubs")
        os.mkdir(stubs)
        pb, pb_grpc = ki.generate_stubs(stubs)
        rows = {}
        for n, (name, binary) in enumerate((("musl static", args.musl), ("glibc", args.glibc))):
            base = os.path.join(work, f"b{n}")
            fixture = os.path.join(base, "fixture")
            subprocess.run([args.simnode, fixture], check=True, stdout=subprocess.DEVNULL)
            cache = os.path.join(base, "cache")
            os.mkdir(cache)
            row = {"size": os.path.getsize(binary), "version": version_time(binary)}
            for phase in ("cold", "warm"):
                plugin_dir = os.path.join(base, f"plugins-{phase}")
                os.mkdir(plugin_dir)
                row[phase] = start_to_ready(binary, fixture, cache, plugin_dir,
                                            19464 + 2 * n + (phase == "warm"), pb, pb_grpc)
            rows[name] = row
        m, g = rows["musl static"], rows["glibc"]

        def line(what, f, unit):
            print(f"| {what} | {f(m):.1f} {unit} | {f(g):.1f} {unit} | {f(m) / f(g):.2f} |")

        print("| | musl static | glibc | musl / glibc |")
        print("|---|---|---|---|")
        line("binary size", lambda r: r["size"] / 2**20, "MiB")
        line("`--version`, exec to exit", lambda r: r["version"] * 1000, "ms")
        for phase, what in (("cold", "empty cache (guest compiled)"), ("warm", "cache filled")):
            line(f"`run` to /healthz, {what}", lambda r: r[phase][0] * 1000, "ms")
            line(f"`run` to /readyz, {what}", lambda r: r[phase][1] * 1000, "ms")
            line(f"RSS when ready, {what}", lambda r: r[phase][2] / 1024, "MiB")
            line(f"peak RSS (VmHWM) when ready, {what}", lambda r: r[phase][3] / 1024, "MiB")
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
