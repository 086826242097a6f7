"""kube2sky against a real cluster (kind, or any): runs only when KUBECONFIG is set.

Objects are created with the official client in a temporary namespace and kube2sky runs with
--namespaces <that namespace>, so the comparison covers exactly what the test owns: the etcd
prefix must equal records.desired() of the namespace's objects (plus the cluster records).
The namespace is deleted at the end.
"""

from __future__ import annotations

import os
import signal
import time
import uuid

import pytest

from kube2sky import objects, records
from kube2sky import settings as settings_mod
from tests import procs
from tests.integration import test_kube2sky as local

pytestmark = [pytest.mark.e2e, pytest.mark.integration,
              pytest.mark.skipif(not os.environ.get("KUBECONFIG"), reason="KUBECONFIG is not set")]


@pytest.fixture
def cluster():
    from kubernetes import client, config

    config.load_kube_config()
    api = client.ApiClient()
    core = client.CoreV1Api(api)
    discovery = client.DiscoveryV1Api(api)
    ns = f"kube2sky-e2e-{uuid.uuid4().hex[:8]}"
    core.create_namespace({"metadata": {"name": ns}})
    try:
        yield ns, core, discovery
    finally:
        core.delete_namespace(ns)
        api.close()


def raw(api_client, obj) -> dict:
    return api_client.sanitize_for_serialization(obj)


def desired(ns: str, core, discovery) -> dict[str, str]:
    settings = settings_mod.Settings(namespaces=frozenset({ns}))
    services = [objects.parse_service(raw(core.api_client, s)) for s in core.list_namespaced_service(ns).items]
    slices = [objects.parse_endpoint_slice(raw(core.api_client, s))
              for s in discovery.list_namespaced_endpoint_slice(ns).items]
    ref = settings.dns_service_ref
    try:
        services.append(objects.parse_service(raw(core.api_client, core.read_namespaced_service(ref[1], ref[0]))))
    except Exception:  # noqa: BLE001 - a cluster without kube-system/kube-dns
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


def start(kube2sky_proc, etcd, ns: str, name: str = "kube2sky"):
    k = kube2sky_proc("--kubecfg-file", os.environ["KUBECONFIG"], "--etcd-server", etcd.url,
                      "--namespaces", ns, name=name)
    k.wait_ready()
    return k


@pytest.fixture
def kube2sky_proc(tmp_path):
    started = []

    def run(*args, name="kube2sky"):
        proc = local.Kube2sky(tmp_path, *args, name=name)
        proc.start()
        started.append(proc)
        return proc

    yield run
    for proc in started:
        proc.stop(signal.SIGKILL)


def test_services_and_slices_follow(etcd, cluster, kube2sky_proc):
    ns, core, discovery = cluster
    start(kube2sky_proc, etcd, ns)
    core.create_namespaced_service(ns, service("web"))
    core.create_namespaced_service(ns, service("db", headless=True))
    discovery.create_namespaced_endpoint_slice(ns, endpoint_slice("db-a", "db", [("10.250.0.1", "db-0"),
                                                                                  ("10.250.0.2", "db-1")]))
    local.converge(local.Db(etcd, "skydns"), lambda: desired(ns, core, discovery), timeout=60)
    discovery.replace_namespaced_endpoint_slice("db-a", ns, endpoint_slice("db-a", "db", [("10.250.0.3", "db-2")]))
    local.converge(local.Db(etcd, "skydns"), lambda: desired(ns, core, discovery), timeout=60)
    core.delete_namespaced_service("web", ns)
    discovery.delete_namespaced_endpoint_slice("db-a", ns)
    local.converge(local.Db(etcd, "skydns"), lambda: desired(ns, core, discovery), timeout=60)


def test_restart_converges_exactly(etcd, cluster, kube2sky_proc):
    ns, core, discovery = cluster
    core.create_namespaced_service(ns, service("stay"))
    core.create_namespaced_service(ns, service("goes"))
    k = start(kube2sky_proc, etcd, ns)
    local.converge(local.Db(etcd, "skydns"), lambda: desired(ns, core, discovery), timeout=60)
    k.stop(signal.SIGKILL)
    core.delete_namespaced_service("goes", ns)
    core.create_namespaced_service(ns, service("added"))
    time.sleep(1)
    start(kube2sky_proc, etcd, ns, name="kube2sky-2")
    local.converge(local.Db(etcd, "skydns"), lambda: desired(ns, core, discovery), timeout=60)


def test_dns_answers(etcd, cluster, kube2sky_proc):
    ns, core, discovery = cluster
    start(kube2sky_proc, etcd, ns)
    created = core.create_namespaced_service(ns, service("web"))
    server = local.Skydns(etcd.url)
    try:
        local.answers(server, f"web.{ns}.svc.cluster.local.", "A", {created.spec.cluster_ip})
        core.delete_namespaced_service("web", ns)
        procs.wait_until(lambda: server.query(f"web.{ns}.svc.cluster.local.", "A")[0] == 3, timeout=60,
                         what="NXDOMAIN after delete")
    finally:
        server.stop()
