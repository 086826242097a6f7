"""End to end: objects created through the official client, kube2sky following them into etcd,
skydns answering. One test body, two backends:

- ``api-double``: tests/apiserver.py (real list/watch over HTTP, writes through the same client),
  always, so these tests run in every `make test` and cannot rot;
- ``real-cluster``: the cluster of ``KUBECONFIG`` (kind, or any), only when it is set.

Rules:
1. Objects live in a temporary namespace, and kube2sky runs with ``--namespaces <that
   namespace>`` and a key prefix of the test's own on the session's etcd, so the comparison
   covers exactly what the test owns: the prefix must equal records.desired() of the
   namespace's objects as the API returns them (plus the cluster records). The namespace is
   deleted at the end.
2. Processes come from the shared helpers only (tests/skydnsproc.py for skydns, ``Kube2sky``
   below for kube2sky); nothing is imported from another test module.
3. Every process a test starts is stopped by it.
"""

from __future__ import annotations

import dataclasses
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid

import dns.rcode
import pytest

from kube2sky import objects, records
from kube2sky import settings as settings_mod
from tests import apiserver, procs, skydnsproc

pytestmark = [pytest.mark.e2e, pytest.mark.integration]

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
TIMEOUT = 60  # seconds, per convergence (a real API server and its controllers can be slow)

DOUBLE_KUBECONFIG = """apiVersion: v1
kind: Config
current-context: double
clusters: [{{name: double, cluster: {{server: '{url}'}}}}]
contexts: [{{name: double, context: {{cluster: double, user: nobody}}}}]
users: [{{name: nobody, user: {{}}}}]
"""


# ---------------------------------------------------------------- the two backends

@dataclasses.dataclass
class Cluster:
    """A namespace of a cluster (the double or a real one) and the clients to change it."""

    kind: str
    kubeconfig: str
    ns: str
    core: object
    discovery: object


@pytest.fixture(params=["api-double", "real-cluster"])
def cluster(request, tmp_path):
    if request.param == "real-cluster":
        kubeconfig = os.environ.get("KUBECONFIG", "").split(os.pathsep)[0]
        if not kubeconfig:
            pytest.skip("KUBECONFIG is not set (the same tests ran against the API double)")
        yield from _namespace("real-cluster", kubeconfig)
        return
    with apiserver.ApiServer(bookmark_interval=0.5) as api:
        path = tmp_path / "kubeconfig"
        path.write_text(DOUBLE_KUBECONFIG.format(url=api.url))
        yield from _namespace("api-double", str(path))


def _namespace(kind: str, kubeconfig: str):
    from kubernetes import client, config

    api = config.new_client_from_config(config_file=kubeconfig)
    core = client.CoreV1Api(api)
    discovery = client.DiscoveryV1Api(api)
    ns = f"kube2sky-e2e-{uuid.uuid4().hex[:8]}"
    core.create_namespace({"metadata": {"name": ns}})
    try:
        yield Cluster(kind, kubeconfig, ns, core, discovery)
    finally:
        try:
            core.delete_namespace(ns)
        finally:
            api.close()


@pytest.fixture
def prefix(shared_etcd):
    """A key prefix of the test's own on the session's etcd, removed afterwards."""
    name = "e2e" + uuid.uuid4().hex[:10]
    yield name
    shared_etcd.ctl("del", "--prefix", f"/{name}")


# ---------------------------------------------------------------- objects and the desired records

def raw(api_client, obj) -> dict:
    return api_client.sanitize_for_serialization(obj)


def desired(c: Cluster, prefix: str) -> dict[str, str]:
    settings = settings_mod.Settings(namespaces=frozenset({c.ns}), prefix=prefix)
    api = c.core.api_client
    services = [objects.parse_service(raw(api, s)) for s in c.core.list_namespaced_service(c.ns).items]
    slices = [objects.parse_endpoint_slice(raw(api, s))
              for s in c.discovery.list_namespaced_endpoint_slice(c.ns).items]
    ref = settings.dns_service_ref
    try:
        services.append(objects.parse_service(raw(api, c.core.read_namespaced_service(ref[1], ref[0]))))
    except Exception:  # noqa: BLE001 - a cluster (or the double) without kube-system/kube-dns
        pass
    return records.desired(records.State(services=services, slices=slices), settings)


def service(name: str, headless: bool = False) -> dict:
    spec = {"ports": [{"name": "http", "port": 80, "protocol": "TCP"}]}
    if headless:
        spec["clusterIP"] = "None"
    return {"metadata": {"name": name}, "spec": spec}


def endpoint_slice(name: str, svc: str, ips: list[tuple[str, str]]) -> dict:
    return {"metadata": {"name": name, "labels": {"kubernetes.io/service-name": svc}}, "addressType": "IPv4",
            "ports": [{"name": "http", "port": 80, "protocol": "TCP"}],
            "endpoints": [{"addresses": [ip], "hostname": host, "conditions": {"ready": True}} for ip, host in ips]}


def etcd_prefix(etcd, prefix: str) -> dict[str, str]:
    lines = etcd.ctl("get", "--prefix", f"/{prefix}/").splitlines()
    return dict(zip(lines[0::2], lines[1::2]))


def converge(etcd, prefix: str, want) -> None:
    """Wait until the prefix holds exactly want(); else fail naming what is missing and extra."""
    try:
        procs.wait_until(lambda: etcd_prefix(etcd, prefix) == want(), timeout=TIMEOUT, interval=0.2,
                         what="etcd to match the desired records")
    except TimeoutError:
        target, have = want(), etcd_prefix(etcd, prefix)
        raise AssertionError(f"missing {sorted(set(target) - set(have))}, "
                             f"orphans {sorted(set(have) - set(target))}") from None


# ---------------------------------------------------------------- kube2sky

class Kube2sky:
    """A python -m kube2sky process on a free loopback healthz port; its output goes to a file."""

    def __init__(self, tmp_path, c: Cluster, etcd_url: str, prefix: str, name: str = "kube2sky") -> None:
        self.port = procs.free_port()
        self.log_path = tmp_path / f"{name}.log"
        self.proc = None
        self.args = [sys.executable, "-m", "kube2sky", "--kubecfg-file", c.kubeconfig, "--etcd-server", etcd_url,
                     "--prefix", prefix, "--namespaces", c.ns, "--healthz-host", "127.0.0.1",
                     "--healthz-port", str(self.port)]

    def start(self) -> "Kube2sky":
        env = {k: v for k, v in os.environ.items() if not k.startswith("KUBE2SKY_") and k != "KUBECONFIG"}
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(self.args, stdout=log, stderr=subprocess.STDOUT, cwd=ROOT, env=env)
        return self

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def ready(self) -> bool:
        if self.proc.poll() is not None:
            raise AssertionError(f"kube2sky exited {self.proc.returncode}: {self.log()[-3000:]}")
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/readiness", timeout=2) as resp:
                return resp.status == 200
        except (urllib.error.URLError, OSError):
            return False

    def wait_ready(self) -> "Kube2sky":
        procs.wait_until(self.ready, timeout=TIMEOUT, interval=0.1, what=f"kube2sky /readiness ({self.log_path})")
        return self

    def stop(self, sig: int = signal.SIGTERM) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)


@pytest.fixture
def kube2sky(tmp_path, shared_etcd, prefix):
    started: list[Kube2sky] = []

    def start(c: Cluster, name: str = "kube2sky") -> Kube2sky:
        proc = Kube2sky(tmp_path, c, shared_etcd.url, prefix, name=name).start()
        started.append(proc)
        return proc.wait_ready()

    yield start
    for proc in started:
        proc.stop(signal.SIGKILL)


# ---------------------------------------------------------------- the scenarios (one body, two backends)

def test_services_and_slices_follow(cluster, shared_etcd, prefix, kube2sky):
    c = cluster
    kube2sky(c)
    c.core.create_namespaced_service(c.ns, service("web"))
    c.core.create_namespaced_service(c.ns, service("db", headless=True))
    c.discovery.create_namespaced_endpoint_slice(c.ns, endpoint_slice("db-a", "db", [("10.250.0.1", "db-0"),
                                                                                        ("10.250.0.2", "db-1")]))
    converge(shared_etcd, prefix, lambda: desired(c, prefix))
    c.discovery.replace_namespaced_endpoint_slice("db-a", c.ns, endpoint_slice("db-a", "db", [("10.250.0.3", "db-2")]))
    converge(shared_etcd, prefix, lambda: desired(c, prefix))
    c.core.delete_namespaced_service("web", c.ns)
    c.discovery.delete_namespaced_endpoint_slice("db-a", c.ns)
    converge(shared_etcd, prefix, lambda: desired(c, prefix))


def test_restart_converges_exactly(cluster, shared_etcd, prefix, kube2sky):
    c = cluster
    c.core.create_namespaced_service(c.ns, service("stay"))
    c.core.create_namespaced_service(c.ns, service("goes"))
    first = kube2sky(c)
    converge(shared_etcd, prefix, lambda: desired(c, prefix))
    first.stop(signal.SIGKILL)
    c.core.delete_namespaced_service("goes", c.ns)
    c.core.create_namespaced_service(c.ns, service("added"))
    time.sleep(1)
    kube2sky(c, name="kube2sky-2")
    converge(shared_etcd, prefix, lambda: desired(c, prefix))


def test_dns_answers(cluster, shared_etcd, prefix, kube2sky):
    c = cluster
    kube2sky(c)
    created = c.core.create_namespaced_service(c.ns, service("web"))
    name = f"web.{c.ns}.svc.cluster.local."
    with skydnsproc.running(shared_etcd.url, prefix=prefix) as server:
        def answer() -> tuple[int, set[str]]:
            reply = server.udp(name, "A")
            return reply.rcode(), {r.to_text() for rrset in reply.answer for r in rrset if rrset.rdtype == 1}

        procs.wait_until(lambda: answer() == (dns.rcode.NOERROR, {created.spec.cluster_ip}), timeout=TIMEOUT,
                         interval=0.1, what=f"{name} -> {created.spec.cluster_ip}")
        c.core.delete_namespaced_service("web", c.ns)
        procs.wait_until(lambda: answer()[0] == dns.rcode.NXDOMAIN, timeout=TIMEOUT, interval=0.1,
                         what="NXDOMAIN after delete")
