#!/usr/bin/env python3
"""Per-pod vs shared topology: API-server and etcd load for N resolvers, propagation, failover.

For each topology and each N in --replicas (default 1 3 10), on 127.0.0.1 against the API
server double (tests/apiserver.py, preloaded with --services Services):

  per-pod   N x (private etcd + kube2sky + skydns), as manifests/skydns-rc.yaml runs them;
  shared    one 3-member etcd cluster with peer/client TLS and auth (the roles of
            manifests/shared/etcd-setup.yaml), two kube2sky --leader-elect, N skydns.

Measured once every process is ready:

  api watch   watch streams the API double opened (one per kind per kube2sky)
  api lists   list requests it answered
  api KiB     bytes it sent on watch streams while --changes Services were created
  etcd keys   record copies: keys under /skydns/ summed over every etcd server
  etcd watch  etcd watchers (every skydns mirror holds one)
  txns        etcd write transactions of all kube2sky for those --changes Services
  rss MiB     resident memory of every etcd, kube2sky and skydns process
  change ms   from one Service created in the API to every skydns answering it (median and
              max over --changes)

and for the shared topology, --failovers times: SIGKILL of the leader kube2sky -> the standby
holds the lease (failover s) and a Service created right after the kill is answered by every
skydns (served s); the killed replica is replaced by a new standby each time.

Loopback only, temporary directories, every process stopped at the end (also on errors).
Not run by the tests; asserts nothing. Usage:

    .venv/bin/python bench/shared_topology.py [--replicas 1 3 10] [--services 200]
        [--changes 10] [--failovers 3] [--leader-ttl 5]
"""

from __future__ import annotations

import argparse
import contextlib
import os
import pathlib
import re
import signal
import ssl
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

import dns.exception  # noqa: E402 - after the path tweak

from deploy import render  # noqa: E402
from tests import apiserver, procs, skydnsproc  # noqa: E402
from tests.integration.test_shared_topology import Kube2sky  # noqa: E402

PROBE = "kubernetes.default.svc.cluster.local."


class Counting:
    """Bytes the API double sends on watch streams (its _chunk writes), counted in-process."""

    sent = 0

    @classmethod
    def install(cls) -> None:
        original = apiserver._Handler._chunk

        def chunk(self, data: bytes) -> None:
            cls.sent += len(data)
            original(self, data)

        apiserver._Handler._chunk = chunk


def service(name: str, ip: str, ns: str = "default") -> dict:
    return {"kind": "Service", "metadata": {"name": name, "namespace": ns},
            "spec": {"clusterIP": ip, "ports": [{"name": "http", "port": 80, "protocol": "TCP"}]}}


def metric(text: str, name: str) -> float:
    total = 0.0
    for line in text.splitlines():
        match = re.match(r"^([a-zA-Z_:]+)(?:\{.*\})? (\S+)$", line)
        if match and match.group(1) == name:
            total += float(match.group(2))
    return total


def rss_mib(pids: list[int]) -> float:
    out = subprocess.run(["ps", "-o", "rss=", "-p", ",".join(map(str, pids))], capture_output=True, text=True)
    return sum(int(x) for x in out.stdout.split()) / 1024


def answered_by_all(servers: list[skydnsproc.Skydns], name: str, ip: str) -> bool:
    for server in servers:
        try:
            if skydnsproc.addrs(server.udp(name)) != [ip]:
                return False
        except (dns.exception.Timeout, OSError):
            return False
    return True


def time_until(check, timeout: float = 60.0) -> float:
    started = time.monotonic()
    procs.wait_until(check, timeout=timeout, interval=0.005, what="the change everywhere")
    return time.monotonic() - started


class Topology:
    """The processes of one topology; subclasses start them."""

    def __init__(self, folder: pathlib.Path, api: apiserver.ApiServer) -> None:
        self.folder, self.api = folder, api
        self.kube2sky: list[Kube2sky] = []
        self.skydns: list[skydnsproc.Skydns] = []

    def etcd_metrics(self) -> list[str]:
        raise NotImplementedError

    def etcd_pids(self) -> list[int]:
        raise NotImplementedError

    def pids(self) -> list[int]:
        return [*self.etcd_pids(), *(k.proc.pid for k in self.kube2sky if k.proc.poll() is None),
                *(s.proc.pid for s in self.skydns if s.alive())]

    def wait_ready(self) -> None:
        for k in self.kube2sky:
            k.wait_ready()
        for s in self.skydns:
            s.wait_ready(timeout=120)
        procs.wait_until(lambda: answered_by_all(self.skydns, PROBE, "10.0.0.1"), timeout=120, interval=0.05,
                         what="every skydns answering")

    def close(self) -> None:
        for s in self.skydns:
            s.stop()
        for k in self.kube2sky:
            k.stop(signal.SIGKILL)


class PerPod(Topology):
    def __init__(self, folder, api, n: int) -> None:
        super().__init__(folder, api)
        self.etcds: list[procs.Etcd] = []
        for i in range(n):
            etcd = procs.Etcd()
            self.etcds.append(etcd)
            etcd.start(timeout=60)
            self.kube2sky.append(Kube2sky(folder, f"perpod-kube2sky-{i}", "--kube-master-url", api.url,
                                          "--etcd-server", etcd.url))
            self.skydns.append(skydnsproc.Skydns(etcd.url, log_path=folder / f"perpod-skydns-{i}.log"))

    def etcd_metrics(self) -> list[str]:
        out = []
        for etcd in self.etcds:
            with urllib.request.urlopen(etcd.url + "/metrics", timeout=5) as resp:
                out.append(resp.read().decode())
        return out

    def etcd_pids(self) -> list[int]:
        return [e.proc.pid for e in self.etcds if e.proc is not None]

    def close(self) -> None:
        super().close()
        for etcd in self.etcds:
            etcd.close()


class Shared(Topology):
    def __init__(self, folder, api, n: int, ttl: int) -> None:
        super().__init__(folder, api)
        self.ttl = ttl
        self.pki = procs.make_pki(str(folder / "pki"))
        self.cluster = procs.EtcdCluster(self.pki, str(folder))
        self.cluster.start(timeout=60)
        for _, argv in render.etcd_auth_steps():
            self.cluster.ctl(*argv)
        self.started = 0
        for _ in range(2):
            self.add_kube2sky()
        crt, key = self.pki["skydns"]
        for i in range(n):
            urls = self.cluster.urls[i % 3:] + self.cluster.urls[:i % 3]
            self.skydns.append(skydnsproc.Skydns(",".join(urls), f"-ca-cert={self.pki['ca'][0]}", f"-tls-pem={crt}",
                                                 f"-tls-key={key}", log_path=folder / f"shared-skydns-{i}.log"))

    def add_kube2sky(self) -> Kube2sky:
        crt, key = self.pki["kube2sky"]
        self.started += 1
        proc = Kube2sky(self.folder, f"shared-kube2sky-{self.started}", "--kube-master-url", self.api.url,
                        "--etcd-server", ",".join(self.cluster.urls), "--etcd-cafile", self.pki["ca"][0],
                        "--etcd-certfile", crt, "--etcd-keyfile", key, "--leader-elect",
                        "--leader-ttl", str(self.ttl))
        self.kube2sky.append(proc)
        return proc

    def leader(self) -> Kube2sky:
        def one():
            live = [k for k in self.kube2sky if k.proc.poll() is None and k.is_leader()]
            return live[0] if len(live) == 1 else None
        return procs.wait_until(one, timeout=4 * self.ttl, interval=0.05, what="one leader")

    def etcd_metrics(self) -> list[str]:
        ctx = ssl.create_default_context(cafile=self.pki["ca"][0])
        ctx.load_cert_chain(*self.pki["root"])
        out = []
        for url in self.cluster.urls:
            with urllib.request.urlopen(url + "/metrics", timeout=5, context=ctx) as resp:
                out.append(resp.read().decode())
        return out

    def etcd_pids(self) -> list[int]:
        return [p.pid for p in self.cluster.procs if p is not None]

    def close(self) -> None:
        super().close()
        self.cluster.close()


def measure(top: Topology, api: apiserver.ApiServer, changes: int, tag: str) -> dict:
    watches0, lists0 = api.watch_count, api.list_count
    top.wait_ready()
    time.sleep(1.0)  # let the standby and every watch settle
    row = {"api watch": api.watch_count - watches0, "api lists": api.list_count - lists0}
    txns0 = sum(k.metric("kube2sky_etcd_transactions_total") for k in top.kube2sky)
    sent0 = Counting.sent
    took = []
    for i in range(changes):
        ip = f"10.1.{len(tag) % 200}.{i + 1}"
        name = f"{tag}-{i}"
        api.create(service(name, ip))
        took.append(time_until(lambda: answered_by_all(top.skydns, f"{name}.default.svc.cluster.local.", ip)))
    row["api KiB"] = (Counting.sent - sent0) / 1024
    row["txns"] = sum(k.metric("kube2sky_etcd_transactions_total") for k in top.kube2sky) - txns0
    texts = top.etcd_metrics()
    row["etcd keys"] = sum(metric(t, "etcd_debugging_mvcc_keys_total") for t in texts)
    row["etcd watch"] = sum(metric(t, "etcd_debugging_mvcc_watcher_total") for t in texts)
    row["rss MiB"] = rss_mib(top.pids())
    row["change ms"] = f"{statistics.median(took) * 1000:.0f} / {max(took) * 1000:.0f}"
    return row


def failovers(top: Shared, api: apiserver.ApiServer, count: int) -> list[tuple[float, float]]:
    out = []
    for i in range(count):
        leader = top.leader()
        standby = [k for k in top.kube2sky if k.proc.poll() is None and k is not leader][0]
        leader.stop(signal.SIGKILL)
        killed = time.monotonic()
        ip = f"10.2.0.{i + 1}"
        api.create(service(f"failover-{i}", ip))
        procs.wait_until(standby.is_leader, timeout=4 * top.ttl, interval=0.02, what="the standby to lead")
        took_over = time.monotonic() - killed
        procs.wait_until(lambda: answered_by_all(top.skydns, f"failover-{i}.default.svc.cluster.local.", ip),
                         timeout=60, interval=0.01, what="served")
        served = time.monotonic() - killed
        out.append((took_over, served))
        top.add_kube2sky().wait_ready()
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--replicas", type=int, nargs="+", default=[1, 3, 10])
    parser.add_argument("--services", type=int, default=200, help="Services preloaded in the API double")
    parser.add_argument("--changes", type=int, default=10, help="Services created one by one and timed")
    parser.add_argument("--failovers", type=int, default=3)
    parser.add_argument("--leader-ttl", type=int, default=5, help="kube2sky --leader-ttl, seconds")
    parser.add_argument("--topology", choices=("per-pod", "shared", "both"), default="both")
    opts = parser.parse_args()
    Counting.install()
    rows: list[tuple[str, int, dict]] = []
    fails: list[tuple[float, float]] = []
    topologies = ["per-pod", "shared"] if opts.topology == "both" else [opts.topology]
    for n in opts.replicas:
        for kind in topologies:
            with tempfile.TemporaryDirectory(prefix="kube-skydns-bench-") as tmp, \
                    apiserver.ApiServer(bookmark_interval=5) as api:
                api.create(service("kubernetes", "10.0.0.1"))
                for i in range(opts.services):
                    api.create(service(f"svc{i}", f"10.3.{i // 250}.{i % 250 + 1}", ns=f"ns{i % 20}"), silent=True)
                folder = pathlib.Path(tmp)
                top: Topology | None = None
                try:
                    started = time.monotonic()
                    top = PerPod(folder, api, n) if kind == "per-pod" else Shared(folder, api, n, opts.leader_ttl)
                    row = measure(top, api, opts.changes, f"{kind}{n}")
                    row["start s"] = time.monotonic() - started
                    rows.append((kind, n, row))
                    print(kind, n, row, flush=True)
                    if kind == "shared" and n == opts.replicas[-1] and opts.failovers:
                        fails = failovers(top, api, opts.failovers)
                finally:
                    if top is not None:
                        top.close()
    cols = ["api watch", "api lists", "api KiB", "etcd keys", "etcd watch", "txns", "rss MiB", "change ms", "start s"]
    print(f"\nservices={opts.services} changes={opts.changes} (change ms: median / max)")
    print("| topology | skydns | " + " | ".join(cols) + " |")
    print("|---|---:|" + "---:|" * len(cols))
    for kind, n, row in rows:
        cells = [(f"{row[c]:.1f}" if c == "api KiB" else f"{row[c]:.0f}") if isinstance(row[c], float)
                 else str(row[c]) for c in cols]
        print(f"| {kind} | {n} | " + " | ".join(cells) + " |")
    if fails:
        print(f"\nleader failover (--leader-ttl {opts.leader_ttl}, {opts.replicas[-1]} skydns), SIGKILL of the leader:")
        for i, (took, served) in enumerate(fails, 1):
            print(f"  #{i}: standby leads after {took:.2f}s; the Service created at the kill served by every "
                  f"skydns after {served:.2f}s")


if __name__ == "__main__":
    with contextlib.suppress(KeyboardInterrupt):
        main()
