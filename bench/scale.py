#!/usr/bin/env python3
"""Scale benchmark (issue 12): a large cluster in the API double -> kube2sky -> etcd -> skydns.

Everything runs on 127.0.0.1 with free ports and temporary directories: a private etcd, the
API server double (tests/apiserver.py, real list/watch with resourceVersion, paging, 410),
`python -m kube2sky` and `python -m skydns`. The cluster: `--services` services over
`--namespaces` namespaces, a tenth of them headless sharing `--endpoints` ready endpoints
(one EndpointSlice each, one named port), the rest ClusterIP with one named port. The
issue's size is the default: 9,000 ClusterIP + 1,000 headless x 100 endpoints.

Measured, in this order:

  ready         kube2sky start -> /readiness 200 (list, build, full sync into an empty etcd)
  keys, db      keys under /skydns and etcd's database size (endpoint status)
  restart       kube2sky restarted against the full etcd -> /readiness 200
  skydns load   skydns start -> first correct answer (a ClusterIP name), and again after a
                restart (SIGTERM, start) against the full etcd
  big miss      one A query for a headless name with all its addresses (first ask: cache miss)
  latency       for --churn-seconds: 20 endpoint changes/s (a new ready endpoint in a
                headless slice, the oldest added one removed) and 1 new Service/s; each is
                timed from the API update to its key in an etcd watch (p50/p99)
  410           a Service created without a watch event, then every watch gets 410: time to
                its key in etcd and to skydns's answer
  rss           VmRSS (after) and VmHWM (peak) of kube2sky, skydns and etcd

Not run by the tests; asserts nothing. Usage:

    .venv/bin/python bench/scale.py                                  # 10k services, 100k endpoints
    .venv/bin/python bench/scale.py --services 1000 --endpoints 1000
    .venv/bin/python bench/scale.py --profile-memory                 # tracemalloc of kube2sky's state
    .venv/bin/python bench/scale.py --bytecode                       # kube2sky and skydns from .pyc
    .venv/bin/python bench/scale.py --etcd-go-defaults               # etcd without the pod's GOGC/GOMEMLIMIT
    .venv/bin/python bench/scale.py --ready-only [--etcd-go-defaults] # the first sync only (A/B runs)

etcd runs with the pod's flags and the Go memory settings render.py gives it for the cluster
size (deploy/sizing.py rule 4: GOMEMLIMIT below the memory request, GOGC=off);
``--etcd-go-defaults`` runs it with Go's defaults instead, as a reference.

``--bytecode``: the image compiles every module when it is built (Dockerfile: compileall), but a
checkout run with PYTHONDONTWRITEBYTECODE=1 (as on the benchmark machine) compiles kube2sky's
and skydns's modules from source at every start (about 0.15 s of each start). With the flag,
they are compiled once before the run (``python -m compileall`` into their ``__pycache__``,
which git ignores) and the processes run without PYTHONDONTWRITEBYTECODE.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request

import dns.message

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from deploy import sizing  # noqa: E402
from tests import apiserver, procs, skydnsproc  # noqa: E402 - after the path tweak

ZONE = "cluster.local"


# ---------------------------------------------------------------- the cluster

class Cluster:
    """Names and addresses of the generated objects."""

    def __init__(self, services: int, endpoints: int, namespaces: int) -> None:
        self.headless = max(1, services // 10) if endpoints else 0
        self.per_service = endpoints // self.headless if self.headless else 0
        self.cluster_ip = services - self.headless
        self.namespaces = namespaces

    def ns(self, i: int) -> str:
        return f"ns{i % self.namespaces}"

    def service(self, i: int) -> dict:
        name = f"svc{i}"
        return {"kind": "Service", "metadata": {
            "name": name, "namespace": self.ns(i), "uid": f"uid-svc-{i}",
            "labels": {"app": name}, "creationTimestamp": "2026-01-01T00:00:00Z"},
            "spec": {"type": "ClusterIP", "clusterIP": self.cluster_ip_of(i), "clusterIPs": [self.cluster_ip_of(i)],
                     "ipFamilies": ["IPv4"], "ipFamilyPolicy": "SingleStack", "sessionAffinity": "None",
                     "internalTrafficPolicy": "Cluster", "selector": {"app": name},
                     "ports": [{"name": "http", "port": 80, "protocol": "TCP", "targetPort": 8080}]},
            "status": {"loadBalancer": {}}}

    @staticmethod
    def cluster_ip_of(i: int) -> str:
        return f"10.96.{i // 250}.{i % 250 + 1}"

    def headless_service(self, h: int) -> dict:
        name = f"hl{h}"
        return {"kind": "Service", "metadata": {
            "name": name, "namespace": self.ns(h), "uid": f"uid-hl-{h}", "labels": {"app": name}},
            "spec": {"type": "ClusterIP", "clusterIP": "None", "clusterIPs": ["None"],
                     "selector": {"app": name}, "ports": [{"name": "http", "port": 8080, "protocol": "TCP"}]}}

    @staticmethod
    def endpoint(h: int, j: int, host: str = "") -> dict:
        ip = f"10.{128 + (h * 128 + j) // 65536}.{(h * 128 + j) // 256 % 256}.{(h * 128 + j) % 256}"
        name = host or f"hl{h}-pod-{j}"
        return {"addresses": [ip], "hostname": name, "nodeName": f"node-{j % 50}", "zone": "zone-a",
                "conditions": {"ready": True, "serving": True, "terminating": False},
                "targetRef": {"kind": "Pod", "namespace": "", "name": name, "uid": f"uid-pod-{h}-{j}"}}

    def slice(self, h: int, endpoints: list[dict]) -> dict:
        return {"kind": "EndpointSlice", "metadata": {
            "name": f"hl{h}-abcde", "namespace": self.ns(h), "uid": f"uid-eps-{h}",
            "labels": {"kubernetes.io/service-name": f"hl{h}",
                       "endpointslice.kubernetes.io/managed-by": "endpointslice-controller.k8s.io"},
            "ownerReferences": [{"apiVersion": "v1", "kind": "Service", "name": f"hl{h}", "uid": f"uid-hl-{h}"}]},
            "addressType": "IPv4", "ports": [{"name": "http", "port": 8080, "protocol": "TCP"}],
            "endpoints": endpoints}

    def load(self, api: apiserver.ApiServer) -> None:
        for i in range(self.cluster_ip):
            api.create(self.service(i), silent=True)
        for h in range(self.headless):
            api.create(self.headless_service(h), silent=True)
            api.create(self.slice(h, [self.endpoint(h, j) for j in range(self.per_service)]), silent=True)


# ---------------------------------------------------------------- processes and probes

# The flags the shipped pod gives etcd (deploy/templates/pod.yaml), so its memory is the pod's.
ETCD_POD_FLAGS = ["--auto-compaction-mode=periodic", "--auto-compaction-retention=1h",
                  "--snapshot-count=10000", "--quota-backend-bytes=1073741824"]


class BenchEtcd(procs.Etcd):
    """tests/procs.py's etcd with the pod's flags and, when given, its Go memory settings
    (``env``, kept for every start)."""

    def __init__(self, data_dir: str | None = None, env: dict[str, str] | None = None) -> None:
        super().__init__(data_dir)
        self.env = dict(env or {})

    def start(self, timeout: float = 60.0) -> "BenchEtcd":
        member_dir = os.path.join(self.data_dir, "member-data")
        args = ["etcd", "--name", "bench", "--data-dir", member_dir,
                "--listen-client-urls", self.url, "--advertise-client-urls", self.url,
                "--listen-peer-urls", f"http://127.0.0.1:{self.peer_port}",
                "--initial-advertise-peer-urls", f"http://127.0.0.1:{self.peer_port}",
                "--initial-cluster", f"bench=http://127.0.0.1:{self.peer_port}", *ETCD_POD_FLAGS]
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT, env={**os.environ, **self.env})
        procs.wait_until(self.healthy, timeout=timeout, what=f"etcd on {self.url}")
        return self


@contextlib.contextmanager
def running_etcd(env: dict[str, str] | None = None):
    etcd = BenchEtcd(env=env).start()
    try:
        yield etcd
    finally:
        etcd.close()


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds a process has used (it says more than wall time on a busy
    machine)."""
    with open(f"/proc/{pid}/stat") as fh:
        fields = fh.read().rsplit(")", 1)[1].split()
    return round((int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK"), 2)


def rss(pid: int) -> tuple[int, int]:
    """(VmRSS, VmHWM) of a process in MiB."""
    out = {}
    with open(f"/proc/{pid}/status") as fh:
        for line in fh:
            if line.startswith(("VmRSS:", "VmHWM:")):
                out[line.split(":")[0]] = int(line.split()[1]) // 1024
    return out.get("VmRSS", 0), out.get("VmHWM", 0)


class Kube2sky:
    def __init__(self, api_url: str, etcd_url: str, log_path: str, cwd: str, extra: list[str]) -> None:
        self.port = procs.free_port()
        env = {k: v for k, v in os.environ.items() if not k.startswith("KUBE2SKY_")}
        with open(log_path, "ab") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "kube2sky", "--kube-master-url", api_url, "--etcd-server", etcd_url,
                 "--healthz-host", "127.0.0.1", "--healthz-port", str(self.port), *extra],
                stdout=log, stderr=subprocess.STDOUT, cwd=cwd, env=env)

    def ready(self) -> bool:
        if self.proc.poll() is not None:
            raise RuntimeError(f"kube2sky exited {self.proc.returncode}")
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/readiness", timeout=2) as resp:
                return resp.status == 200
        except OSError:
            return False

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)


class Watcher:
    """`etcdctl watch --prefix` in a thread: the first time each key was seen."""

    def __init__(self, etcd: procs.Etcd, prefix: str) -> None:
        self.seen: dict[str, float] = {}
        self.cond = threading.Condition()
        self.proc = subprocess.Popen(["etcdctl", "--endpoints", etcd.url, "watch", "--prefix", prefix],
                                     stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                                     env=dict(os.environ, ETCDCTL_API="3"))
        self.thread = threading.Thread(target=self._read, daemon=True)
        self.thread.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for raw in self.proc.stdout:
            now = time.monotonic()
            line = raw.decode(errors="replace").rstrip("\n")
            if line.startswith("/"):
                with self.cond:
                    self.seen.setdefault(line, now)
                    self.cond.notify_all()

    def wait_prefix(self, prefix: str, timeout: float = 30.0) -> float | None:
        """When a key under prefix was first seen (waits for it)."""
        deadline = time.monotonic() + timeout
        with self.cond:
            while True:
                hits = [t for k, t in self.seen.items() if k.startswith(prefix)]
                if hits:
                    return min(hits)
                left = deadline - time.monotonic()
                if left <= 0:
                    return None
                self.cond.wait(left)

    def close(self) -> None:
        self.proc.terminate()
        self.proc.wait(5)


def count_keys(etcd: procs.Etcd) -> int:
    return int(json.loads(etcd.ctl("get", "/skydns/", "--prefix", "--limit", "1", "-w", "json"))
               .get("count", 0))


def db_size(etcd: procs.Etcd) -> tuple[int, int]:
    """(dbSize, dbSizeInUse) in MiB."""
    status = json.loads(etcd.ctl("endpoint", "status", "-w", "json"))[0]["Status"]
    return status.get("dbSize", 0) // 2**20, status.get("dbSizeInUse", status.get("dbSize", 0)) // 2**20


def tcp_exchange(port: int, name: str, timeout: float = 10.0) -> tuple[float, dns.message.Message]:
    """One A query over a TCP connection opened beforehand: (seconds from the query sent to the
    answer's last byte received, the answer parsed afterwards)."""
    wire = dns.message.make_query(name, "A").to_wire()
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        started = time.perf_counter()
        sock.sendall(len(wire).to_bytes(2, "big") + wire)
        got = b""
        while len(got) < 2 or len(got) < 2 + int.from_bytes(got[:2], "big"):
            chunk = sock.recv(65535)
            if not chunk:
                raise ConnectionError(f"skydns closed the connection after {len(got)} bytes")
            got += chunk
        seconds = time.perf_counter() - started
    return seconds, dns.message.from_wire(got[2:])


def time_to_answer(server: skydnsproc.Skydns, name: str, want: str, started: float, timeout: float = 900) -> float:
    deadline = started + timeout
    while time.monotonic() < deadline:
        if not server.alive():
            raise RuntimeError(f"skydns exited: {server.log()[-2000:]}")
        try:
            reply = server.udp(name)
            if want in skydnsproc.addrs(reply):
                return time.monotonic() - started
        except Exception:  # noqa: BLE001 - not up yet, timeouts
            pass
        time.sleep(0.02)
    raise TimeoutError(f"no answer {want} for {name} from skydns")


def relisted_at(log_path: str) -> float | None:
    """Wall time of kube2sky's last "relisted services" log line."""
    import datetime
    found = None
    with open(log_path, errors="replace") as fh:
        for line in fh:
            if "relisted services" in line:
                stamp = line[:23]
                found = datetime.datetime.strptime(stamp, "%Y-%m-%d %H:%M:%S,%f").timestamp()
    return found


def histogram(url: str, name: str) -> dict[float, float]:
    """The cumulative buckets (upper bound -> count) of one Prometheus histogram at url."""
    with urllib.request.urlopen(url, timeout=10) as resp:
        text = resp.read().decode()
    out: dict[float, float] = {}
    for line in text.splitlines():
        if line.startswith(name + "_bucket{"):
            le = line.split('le="', 1)[1].split('"', 1)[0]
            out[float(le)] = float(line.rsplit(" ", 1)[1])
    return out


def histogram_pct(before: dict[float, float], after: dict[float, float], q: float) -> float | None:
    """The q-quantile (ms) of what a histogram observed between two readings, interpolated
    inside its bucket (as Prometheus's histogram_quantile does)."""
    bounds = sorted(after)
    counts = [after[b] - before.get(b, 0.0) for b in bounds]
    if not counts or counts[-1] <= 0:
        return None
    rank = q * counts[-1]
    lower, below = 0.0, 0.0
    for bound, count in zip(bounds, counts):
        if count >= rank:
            if bound == float("inf"):
                return round(lower * 1000, 1)
            share = (rank - below) / (count - below) if count > below else 1.0
            return round((lower + (bound - lower) * share) * 1000, 1)
        lower, below = bound, count
    return None


def pct(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    values = sorted(values)
    return values[min(len(values) - 1, int(round(q * (len(values) - 1))))]


# ---------------------------------------------------------------- the run

def run(opts: argparse.Namespace) -> dict:
    cluster = Cluster(opts.services, opts.endpoints, opts.namespaces)
    out: dict = {"services": opts.services, "endpoints": cluster.headless * cluster.per_service,
                 "headless": cluster.headless, "cluster_ip": cluster.cluster_ip,
                 "bytecode": bool(getattr(opts, "bytecode", False))}
    logdir = tempfile.mkdtemp(prefix="kube-skydns-scale-")
    print(f"logs in {logdir}", flush=True)
    cwd = opts.kube2sky_tree or ROOT
    go_env = {} if getattr(opts, "etcd_go_defaults", False) else sizing.etcd_go_env(opts.services, out["endpoints"])
    out["etcd_env"] = go_env
    with running_etcd(go_env) as etcd, apiserver.ApiServer(bookmark_interval=5) as api:
        t = time.monotonic()
        cluster.load(api)
        print(f"API double loaded in {time.monotonic() - t:.1f}s", flush=True)
        extra = ["--max-txn-ops", str(opts.max_txn_ops)]
        k = Kube2sky(api.url, etcd.url, os.path.join(logdir, "kube2sky.log"), cwd, extra)
        servers: list[skydnsproc.Skydns] = []
        watcher = None
        try:
            started = time.monotonic()
            etcd_cpu = cpu_seconds(etcd.proc.pid)
            procs.wait_until(k.ready, timeout=900, interval=0.05, what="kube2sky ready")
            out["ready_s"] = round(time.monotonic() - started, 2)
            out["ready_cpu_s"] = cpu_seconds(k.proc.pid)
            out["ready_etcd_cpu_s"] = round(cpu_seconds(etcd.proc.pid) - etcd_cpu, 2)
            out["kube2sky_rss_mib"], out["kube2sky_peak_mib"] = rss(k.proc.pid)
            out["keys"] = count_keys(etcd)
            out["etcd_db_mib"], out["etcd_db_in_use_mib"] = db_size(etcd)
            print(f"kube2sky ready in {out['ready_s']}s ({out['ready_cpu_s']}s CPU, etcd {out['ready_etcd_cpu_s']}s), "
                  f"{out['keys']} keys, rss {out['kube2sky_rss_mib']} MiB (peak {out['kube2sky_peak_mib']})", flush=True)
            if getattr(opts, "ready_only", False):
                out["etcd_rss_mib"], out["etcd_peak_mib"] = rss(etcd.proc.pid)
                return out

            # restart against the full etcd
            k.stop()
            k = Kube2sky(api.url, etcd.url, os.path.join(logdir, "kube2sky-2.log"), cwd, extra)
            started = time.monotonic()
            procs.wait_until(k.ready, timeout=900, interval=0.05, what="kube2sky ready (restart)")
            out["restart_ready_s"] = round(time.monotonic() - started, 2)
            out["restart_ready_cpu_s"] = cpu_seconds(k.proc.pid)
            print(f"kube2sky restarted, ready in {out['restart_ready_s']}s ({out['restart_ready_cpu_s']}s CPU)",
                  flush=True)

            # skydns: first load, then a restart, each to the first correct answer
            name, want = f"svc0.{cluster.ns(0)}.svc.{ZONE}.", cluster.cluster_ip_of(0)
            for label in ("skydns_load_s", "skydns_restart_s"):
                started = time.monotonic()
                server = skydnsproc.Skydns(etcd.url, "--max-answers=1000",
                                           log_path=os.path.join(logdir, f"{label}.log"), timeout=1.0)
                servers.append(server)
                out[label] = round(time_to_answer(server, name, want, started), 2)
                out[label.replace("_s", "_cpu_s")] = cpu_seconds(server.proc.pid)
                if label == "skydns_load_s":
                    time.sleep(1.0)
                    out["skydns_rss_mib"], out["skydns_peak_mib"] = rss(server.proc.pid)
                    server.stop()
                print(f"{label}: {out[label]}s", flush=True)
            server = servers[-1]
            if cluster.headless:
                # 100 A records need TCP; timed from the query sent to the answer's last byte on
                # a connection opened before (dnspython's parse of 100 records takes ~7 ms here)
                seconds, reply = tcp_exchange(server.port, f"hl0.{cluster.ns(0)}.svc.{ZONE}.")
                out["big_miss_ms"] = round(seconds * 1000, 2)
                out["big_miss_answers"] = len(skydnsproc.addrs(reply))

            # programming latency under churn
            watcher = Watcher(etcd, "/skydns/local/")
            sentinel = "/skydns/local/bench-sentinel/x"  # not kube2sky's (its leaf is no hash)
            procs.wait_until(lambda: etcd.ctl("put", sentinel, "{}") is not None
                             and watcher.wait_prefix(sentinel, timeout=0.5) is not None,
                             timeout=60, what="the etcd watch to start")
            etcd.ctl("del", sentinel)
            # the stages, from the processes' own histograms: kube2sky (event read -> commit
            # acknowledged) and etcd (WAL fsync, backend commit)
            stages = {"kube2sky": (f"http://127.0.0.1:{k.port}/metrics", "kube2sky_programming_latency_seconds"),
                      "etcd_wal_fsync": (f"{etcd.url}/metrics", "etcd_disk_wal_fsync_duration_seconds"),
                      "etcd_backend_commit": (f"{etcd.url}/metrics", "etcd_disk_backend_commit_duration_seconds")}
            before = {stage: histogram(*where) for stage, where in stages.items()}
            assert etcd.proc is not None
            pids = {"kube2sky": k.proc.pid, "etcd": etcd.proc.pid, "skydns": servers[-1].proc.pid}
            cpu_before = {name: cpu_seconds(pid) for name, pid in pids.items()}
            out.update(churn(api, cluster, watcher, opts.churn_seconds, opts.churn_rate))
            changes = max(1, out["churn_endpoint_changes"] + out["churn_new_services"])
            for name, pid in pids.items():
                out[f"churn_{name}_cpu_ms_per_change"] = round(
                    (cpu_seconds(pid) - cpu_before[name]) * 1000 / changes, 2)
            print("CPU per change during the churn: " + ", ".join(
                f"{name} {out[f'churn_{name}_cpu_ms_per_change']} ms" for name in pids), flush=True)
            for stage, where in stages.items():
                after = histogram(*where)
                for q in (0.5, 0.99):
                    out[f"{stage}_p{round(q * 100)}_ms"] = histogram_pct(before[stage], after, q)
            print("stages during the churn (p50/p99 ms): " + ", ".join(
                f"{stage} {out[f'{stage}_p50_ms']}/{out[f'{stage}_p99_ms']}" for stage in stages), flush=True)

            # a forced 410 with a Service created meanwhile
            body = cluster.service(10**6)
            body["metadata"].update(name="after-410", namespace=cluster.ns(0))
            body["spec"].update(clusterIP="10.95.0.1", clusterIPs=["10.95.0.1"])
            api.create(body, silent=True)
            started = time.monotonic()
            api.expire_history()
            seen = watcher.wait_prefix(f"/skydns/local/cluster/svc/{cluster.ns(0)}/after-410/", timeout=600)
            out["relist_to_etcd_s"] = round(seen - started, 2) if seen else None
            # from the end of kube2sky's relist of services (its log line) to the key in etcd
            relisted = relisted_at(os.path.join(logdir, "kube2sky-2.log"))
            if seen and relisted:
                wall_seen = seen + (time.time() - time.monotonic())
                out["after_relist_to_etcd_s"] = round(wall_seen - relisted, 2)
            out["relist_to_answer_s"] = round(time_to_answer(server, f"after-410.{cluster.ns(0)}.svc.{ZONE}.",
                                                             "10.95.0.1", started), 2)
            print(f"after a 410: in etcd after {out['relist_to_etcd_s']}s "
                  f"({out.get('after_relist_to_etcd_s')}s after the relist of services), answered after "
                  f"{out['relist_to_answer_s']}s", flush=True)
            time.sleep(opts.settle)
            out["kube2sky_rss_end_mib"], out["kube2sky_peak_end_mib"] = rss(k.proc.pid)
            out["load_average"] = os.getloadavg()[0]
            out["skydns_rss_end_mib"], out["skydns_peak_end_mib"] = rss(server.proc.pid)
            assert etcd.proc is not None
            out["etcd_rss_mib"], out["etcd_peak_mib"] = rss(etcd.proc.pid)
            out["etcd_db_end_mib"], out["etcd_db_in_use_end_mib"] = db_size(etcd)
        finally:
            if watcher is not None:
                watcher.close()
            for server in servers:
                server.stop()
            k.stop()
    return out


def churn(api: apiserver.ApiServer, cluster: Cluster, watcher: Watcher, seconds: float, rate: float) -> dict:
    """rate endpoint changes/s and 1 new Service/s for seconds; latency of each to etcd."""
    endpoint_ms: list[float] = []
    service_ms: list[float] = []
    pending: list[tuple[str, float, list[float]]] = []
    added: dict[int, list[int]] = {}
    start = time.monotonic()
    n = 0
    next_service = start
    services = 0
    while time.monotonic() - start < seconds and cluster.headless:
        due = start + n / rate
        now = time.monotonic()
        if due > now:
            time.sleep(due - now)
        h = n % cluster.headless
        j = cluster.per_service + n // cluster.headless  # a fresh endpoint in this slice
        mine = added.setdefault(h, [])
        mine.append(j)
        if len(mine) > 2:
            mine.pop(0)
        endpoints = [cluster.endpoint(h, x) for x in range(cluster.per_service)]
        endpoints += [cluster.endpoint(h, x, host=f"chg-{x}") for x in mine]
        t0 = time.monotonic()
        api.update(cluster.slice(h, endpoints))
        pending.append((f"/skydns/local/cluster/svc/{cluster.ns(h)}/hl{h}/chg-{j}/", t0, endpoint_ms))
        if time.monotonic() >= next_service:
            next_service += 1.0
            body = cluster.service(10**6 + services)
            body["metadata"]["name"] = f"new{services}"
            ip = f"10.94.{services // 250}.{services % 250 + 1}"
            body["spec"].update(clusterIP=ip, clusterIPs=[ip])
            t0 = time.monotonic()
            api.create(body)
            pending.append((f"/skydns/local/cluster/svc/{body['metadata']['namespace']}/new{services}/",
                            t0, service_ms))
            services += 1
        n += 1
    lost = 0
    for prefix, t0, into in pending:
        seen = watcher.wait_prefix(prefix, timeout=30)
        if seen is None:
            lost += 1
            print(f"not seen in etcd: {prefix}", flush=True)
        else:
            into.append((seen - t0) * 1000)
    out = {"churn_endpoint_changes": len(endpoint_ms), "churn_new_services": len(service_ms), "churn_lost": lost,
           "endpoint_p50_ms": round(pct(endpoint_ms, 0.5), 1), "endpoint_p99_ms": round(pct(endpoint_ms, 0.99), 1),
           "service_p50_ms": round(pct(service_ms, 0.5), 1), "service_p99_ms": round(pct(service_ms, 0.99), 1),
           "churn_rate_per_s": round(len(endpoint_ms) / max(seconds, 0.001), 1)}
    print(f"latency under {out['churn_rate_per_s']} endpoint changes/s: endpoint p50 {out['endpoint_p50_ms']} ms "
          f"p99 {out['endpoint_p99_ms']} ms; new Service p50 {out['service_p50_ms']} ms p99 "
          f"{out['service_p99_ms']} ms ({lost} not seen)", flush=True)
    return out


# ---------------------------------------------------------------- memory profile (in process)

def profile_memory(opts: argparse.Namespace) -> None:
    """Where kube2sky's bytes go: its engine fed the generated cluster, a tracemalloc snapshot
    by line after the full sync (into a store that keeps nothing)."""
    import tracemalloc

    from kube2sky import app, k8swatch
    from kube2sky import settings as settings_mod

    class NullStore:
        async def scan(self, prefix, page_size=0):
            if False:
                yield []

        async def commit(self, plan, guard=None, lease=None):
            return 1

        async def commit_all(self, plans, guard=None):
            return 1

    cluster = Cluster(opts.services, opts.endpoints, opts.namespaces)
    services = [cluster.service(i) for i in range(cluster.cluster_ip)]
    services += [cluster.headless_service(h) for h in range(cluster.headless)]
    slices = [cluster.slice(h, [cluster.endpoint(h, j) for j in range(cluster.per_service)])
              for h in range(cluster.headless)]
    tracemalloc.start(1)

    async def go() -> app.Engine:
        engine = app.Engine(settings_mod.Settings(), NullStore(),
                            kinds=(k8swatch.SERVICES, k8swatch.ENDPOINT_SLICES))
        engine.apply(k8swatch.Listed(k8swatch.SERVICES, tuple(services), "1", "start", 0.0))
        engine.apply(k8swatch.Listed(k8swatch.ENDPOINT_SLICES, tuple(slices), "1", "start", 0.0))
        await engine.step()
        return engine

    t = time.monotonic()
    engine = asyncio.run(go())
    elapsed = time.monotonic() - t
    del services[:], slices[:]
    snapshot = tracemalloc.take_snapshot()
    total = sum(stat.size for stat in snapshot.statistics("filename"))
    print(f"engine state after the full sync ({elapsed:.1f}s): {total / 2**20:.1f} MiB traced, "
          f"{engine.n_keys} keys wanted")
    for stat in snapshot.statistics("lineno")[:15]:
        frame = stat.traceback[0]
        print(f"  {stat.size / 2**20:7.2f} MiB {stat.count:9d} blocks  {os.path.relpath(frame.filename, ROOT)}:{frame.lineno}")
    if not cluster.headless:
        return

    # then what churn and a relist leave behind: --churn-seconds x --churn-rate endpoint
    # changes (as the latency run makes them), then a relist of both kinds through the
    # transport's trimming (equal objects stay the engine's own)
    async def churn_and_relist() -> int:
        n_changes = int(opts.churn_seconds * opts.churn_rate)
        for n in range(n_changes):
            h = n % cluster.headless
            j = cluster.per_service + n // cluster.headless
            endpoints = [cluster.endpoint(h, x) for x in range(cluster.per_service)]
            endpoints.append(cluster.endpoint(h, j, host=f"chg-{j}"))
            engine.apply(k8swatch.Changed(k8swatch.ENDPOINT_SLICES, "MODIFIED", cluster.slice(h, endpoints), 0.0))
            await engine.step()
        trim = app.Trim()
        trim.engine = engine
        for resource, items in ((k8swatch.SERVICES, [cluster.service(i) for i in range(cluster.cluster_ip)]
                                 + [cluster.headless_service(h) for h in range(cluster.headless)]),
                                (k8swatch.ENDPOINT_SLICES, [cluster.slice(h, [cluster.endpoint(h, j) for j in
                                                                              range(cluster.per_service)])
                                                            for h in range(cluster.headless)])):
            listed = k8swatch.Listed(resource, tuple(trim(resource, raw) for raw in items), "2", "410 Gone", 0.0)
            del items
            engine.apply(listed)
            del listed
        await engine.step()
        return n_changes

    n_changes = asyncio.run(churn_and_relist())
    engine.verify_due = None
    after = tracemalloc.take_snapshot()
    total_after = sum(stat.size for stat in after.statistics("filename"))
    print(f"after {n_changes} endpoint changes and a relist of both kinds: {total_after / 2**20:.1f} MiB traced "
          f"({(total_after - total) / 2**20:+.1f} MiB); largest differences:")
    for stat in after.compare_to(snapshot, "lineno")[:12]:
        frame = stat.traceback[0]
        print(f"  {stat.size_diff / 2**20:+7.2f} MiB {stat.count_diff:+9d} blocks  "
              f"{os.path.relpath(frame.filename, ROOT)}:{frame.lineno}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--services", type=int, default=10000)
    parser.add_argument("--endpoints", type=int, default=100000, help="ready endpoints over the headless tenth")
    parser.add_argument("--namespaces", type=int, default=100)
    parser.add_argument("--max-txn-ops", type=int, default=128)
    parser.add_argument("--churn-seconds", type=float, default=20.0)
    parser.add_argument("--churn-rate", type=float, default=20.0, help="endpoint changes per second")
    parser.add_argument("--settle", type=float, default=5.0, help="seconds before the final RSS reading")
    parser.add_argument("--kube2sky-tree", default="", help="run kube2sky from another checkout (before/after)")
    parser.add_argument("--json", default="", help="also write the figures to this file")
    parser.add_argument("--profile-memory", action="store_true")
    parser.add_argument("--ready-only", action="store_true",
                        help="stop after the first sync (ready, its CPU and etcd's, keys, RSS)")
    parser.add_argument("--etcd-go-defaults", action="store_true",
                        help="run etcd with Go's default GOGC and no GOMEMLIMIT (the pod sets both: deploy/sizing.py)")
    parser.add_argument("--bytecode", action="store_true",
                        help="run kube2sky and skydns from compiled bytecode, as the image does (see above)")
    opts = parser.parse_args()
    if opts.bytecode:
        os.environ.pop("PYTHONDONTWRITEBYTECODE", None)
        tree = opts.kube2sky_tree or ROOT
        for where in sorted({tree, ROOT}):
            subprocess.run([sys.executable, "-m", "compileall", "-q", "kube2sky", "skydns"], check=True, cwd=where)
    # SIGTERM stops every process started here, as Ctrl-C does
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    if opts.profile_memory:
        profile_memory(opts)
        return
    with contextlib.suppress(KeyboardInterrupt):
        out = run(opts)
        print(json.dumps(out, indent=1))
        if opts.json:
            with open(opts.json, "w") as fh:
                json.dump(out, fh, indent=1)


if __name__ == "__main__":
    main()
