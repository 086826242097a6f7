#!/usr/bin/env python3
"""kube2sky benchmark: initial sync of N services, then the latency of one change, and memory.

Starts a private etcd and the API server double (tests/apiserver.py) on 127.0.0.1, creates N
ClusterIP services with one named port each, starts `python -m kube2sky` against them and
measures:

  ready     seconds from start to /readiness 200 (list + records + full sync into etcd)
  change    milliseconds from one new service in the API to its records in etcd
  rss       resident memory of kube2sky after the sync (ps)

and checks the answers, not only kube2sky's word: right after /readiness turns 200, the etcd
prefix must hold exactly the records of every service (records.desired() of the objects the
API holds: the same number of keys, every value equal), and after the change exactly those of
every service plus the new one. A mismatch is printed (missing, extra, wrong keys) and the
script exits 1. etcd is read through one client connection (aetcd, gRPC) opened once: a poll
for the change is one Range request of the new service's prefix (well under a millisecond),
not an etcdctl process (~16 ms).

Loopback only; not run by the tests. Usage:

    .venv/bin/python bench/kube2sky_sync.py [--services 10000] [--max-txn-ops 128]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import subprocess
import sys
import tempfile
import time
import urllib.request

import aetcd

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from kube2sky import objects, records  # noqa: E402 - after the path tweak
from kube2sky import settings as settings_mod  # noqa: E402
from tests import apiserver, procs  # noqa: E402

PREFIX = "/skydns/"
LATE = {"kind": "Service", "metadata": {"name": "late", "namespace": "default"},
        "spec": {"clusterIP": "10.200.0.1", "ports": [{"name": "http", "port": 80}]}}
LATE_PREFIX = "/skydns/local/cluster/svc/default/late/"


def desired(api: apiserver.ApiServer) -> dict[str, str]:
    """What etcd must hold for the services the API serves (kube2sky's default settings)."""
    state = records.State(services=[objects.parse_service(o) for o in api.objects("Service")], slices=[], pods=[])
    return records.desired(state, settings_mod.Settings())


async def read(client: aetcd.Client, prefix: str) -> dict[str, str]:
    """Every key below prefix and its value, in one Range request."""
    result = await client.get_prefix(prefix.encode())
    return {kv.key.decode(): kv.value.decode() for kv in result}


def difference(have: dict[str, str], want: dict[str, str]) -> str:
    """'' when equal; else the counts and a few keys of each kind of mismatch."""
    missing = sorted(set(want) - set(have))
    extra = sorted(set(have) - set(want))
    wrong = sorted(k for k in set(want) & set(have) if want[k] != have[k])
    if not (missing or extra or wrong):
        return ""
    return (f"{len(have)} keys, want {len(want)}: missing {len(missing)} {missing[:3]}, "
            f"extra {len(extra)} {extra[:3]}, wrong values {len(wrong)} {wrong[:3]}")


def http_status(url: str) -> int:
    with urllib.request.urlopen(url, timeout=2) as resp:
        return resp.status


async def measure(opts, etcd: procs.Etcd, api: apiserver.ApiServer, port: int, started: float,
                  proc: subprocess.Popen) -> dict:
    client = aetcd.Client("127.0.0.1", etcd.client_port, timeout=60,
                          options={"grpc.max_receive_message_length": 1 << 30})
    await client.connect()
    try:
        procs.wait_until(lambda: http_status(f"http://127.0.0.1:{port}/readiness") == 200,
                         timeout=600, interval=0.1, what="kube2sky ready")
        out = {"ready": time.monotonic() - started}
        out["rss"] = subprocess.run(["ps", "-o", "rss=", "-p", str(proc.pid)], capture_output=True,
                                    text=True, check=False).stdout.strip()
        want = desired(api)
        problem = difference(await read(client, PREFIX), want)
        if problem:
            raise SystemExit(f"etcd after /readiness 200: {problem}")
        out["keys"] = len(want)

        t0 = time.monotonic()
        api.create(LATE)
        deadline = t0 + 60 * procs.TIMEOUT_SCALE
        polls = 0
        while not (await client.get_prefix(LATE_PREFIX.encode())):
            polls += 1
            if time.monotonic() > deadline:
                raise SystemExit("the new service never reached etcd")
            await asyncio.sleep(0.0005)
        out["change"] = time.monotonic() - t0
        out["polls"] = polls
        want = desired(api)
        # one transaction per object: once any key of the new service is there, all are
        problem = difference(await read(client, PREFIX), want)
        if problem:
            raise SystemExit(f"etcd after the change: {problem}")
        out["keys_after"] = len(want)
        return out
    finally:
        await client.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--services", type=int, default=10000)
    parser.add_argument("--max-txn-ops", type=int, default=128)
    opts = parser.parse_args()
    with procs.running_etcd() as etcd, apiserver.ApiServer(bookmark_interval=5) as api:
        for i in range(opts.services):
            api.create({"kind": "Service", "metadata": {"name": f"svc{i}", "namespace": f"ns{i % 50}"},
                        "spec": {"clusterIP": f"10.{i // 65536}.{(i // 256) % 256}.{i % 256}",
                                 "ports": [{"name": "http", "port": 80}]}}, silent=True)
        port = procs.free_port()
        log = tempfile.NamedTemporaryFile(prefix="kube2sky-bench-", suffix=".log", delete=False)
        started = time.monotonic()
        proc = subprocess.Popen([sys.executable, "-m", "kube2sky", "--kube-master-url", api.url,
                                 "--etcd-server", etcd.url, "--healthz-host", "127.0.0.1",
                                 "--healthz-port", str(port), "--max-txn-ops", str(opts.max_txn_ops)],
                                stdout=log, stderr=subprocess.STDOUT, cwd=ROOT)
        try:
            out = asyncio.run(measure(opts, etcd, api, port, started, proc))
        finally:
            proc.terminate()
            proc.wait(15)
    print(f"services={opts.services} max_txn_ops={opts.max_txn_ops} ready={out['ready']:.2f}s "
          f"keys={out['keys']} (all values checked) change={out['change'] * 1000:.1f}ms "
          f"({out['polls']} polls; then {out['keys_after']} keys checked) rss={int(out['rss']) // 1024}MiB "
          f"log={log.name}")


if __name__ == "__main__":
    main()
