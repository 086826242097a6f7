#!/usr/bin/env python3
"""kube2sky benchmark: initial sync of N services, then the latency of one change, and memory.

Starts a private etcd and the API server double (tests/apiserver.py) on 127.0.0.1, creates N
ClusterIP services with one named port each (4 keys per service plus PTR), starts
`python -m kube2sky` against them and measures:

  ready     seconds from start to /readiness 200 (list + records + full sync into etcd)
  change    seconds from one new service in the API to its key in etcd
  rss       resident memory of kube2sky after the sync (ps)

Loopback only; not run by the tests. Usage:

    .venv/bin/python bench/kube2sky_sync.py [--services 10000] [--max-txn-ops 128]
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
import urllib.request

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from tests import apiserver, procs  # noqa: E402 - after the path tweak


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
            def ready() -> bool:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/readiness", timeout=2) as resp:
                    return resp.status == 200
            procs.wait_until(ready, timeout=600, interval=0.1, what="kube2sky ready")
            ready_s = time.monotonic() - started
            rss = subprocess.run(["ps", "-o", "rss=", "-p", str(proc.pid)], capture_output=True,
                                 text=True).stdout.strip()
            t0 = time.monotonic()
            api.create({"kind": "Service", "metadata": {"name": "late", "namespace": "default"},
                        "spec": {"clusterIP": "10.200.0.1"}})
            procs.wait_until(lambda: "late" in etcd.ctl("get", "--prefix", "/skydns/local/cluster/svc/default/",
                                                       "--keys-only"), timeout=60, interval=0.005)
            change_s = time.monotonic() - t0
        finally:
            proc.terminate()
            proc.wait(15)
        print(f"services={opts.services} max_txn_ops={opts.max_txn_ops} ready={ready_s:.2f}s "
              f"change={change_s * 1000:.0f}ms rss={int(rss) // 1024}MiB log={log.name}")


if __name__ == "__main__":
    main()
