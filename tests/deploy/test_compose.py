"""docker-compose.yml: parses, runs the pod's containers with the pod's flags, loopback-only ports.

`docker-compose config` (Debian's docker-compose) validates the file where it is installed.
"""

from __future__ import annotations

import os
import shutil
import subprocess

import pytest

from deploy import render
from tests.deploy import common

DAEMON_SERVICES = {"kube2sky": "kube2sky", "kube2sky-manifests": "kube2sky", "skydns": "skydns", "healthz": "healthz"}
PROFILES = {"kube2sky": ["kind"], "kube2sky-manifests": ["manifests"]}


def services() -> dict[str, dict]:
    return common.compose()["services"]


def test_compose_parses_with_the_four_parts():
    assert set(services()) == {"etcd", *DAEMON_SERVICES}


@pytest.mark.parametrize("name", sorted(DAEMON_SERVICES))
def test_daemon_shares_the_etcd_network_namespace_like_a_pod(name):
    service = services()[name]
    assert service["network_mode"] == "service:etcd"
    assert service["image"] == render.DEFAULT_IMAGE
    assert service.get("profiles") == PROFILES.get(name)
    assert service["depends_on"]["etcd"]["condition"] == "service_healthy"


@pytest.mark.parametrize("name", sorted(DAEMON_SERVICES))
def test_daemon_runs_with_the_manifest_flags(name):
    daemon = DAEMON_SERVICES[name]
    pod_args = common.containers("skydns-rc.yaml")[daemon]["args"]
    assert pod_args == render.container_args(render.check(render.Params()))[daemon]
    command = services()[name]["command"]
    assert command[0] == daemon
    if daemon == "kube2sky":
        # The same flags plus the source of the objects (the pod uses its service account).
        assert command[1:-1] == pod_args
        source = {"kube2sky": "--kubecfg-file=/etc/kube2sky/kubeconfig",
                  "kube2sky-manifests": "--manifests=/etc/kube2sky/manifests"}[name]
        assert command[-1] == source
    else:
        assert command[1:] == pod_args


def test_etcd_runs_as_in_the_pod():
    pod_etcd = common.containers("skydns-rc.yaml")["etcd"]
    etcd = services()["etcd"]
    assert etcd["image"] == pod_etcd["image"] == render.ETCD_IMAGE
    assert etcd["command"] == pod_etcd["command"]
    assert etcd["user"] != "0" and not etcd["user"].startswith("0:")


def test_ports_are_published_on_loopback_only():
    for name, service in services().items():
        for port in service.get("ports", []):
            assert isinstance(port, str) and port.startswith("127.0.0.1:"), f"{name}: {port}"
    published = {p.split(":", 1)[1] for p in services()["etcd"]["ports"]}
    # Every port a probe or a user needs, and etcd's client port is not among them.
    assert published == {"1053:53/udp", "1053:53/tcp", "9153:9153", "8081:8081", "8080:8080"}


@pytest.mark.parametrize("name", ["etcd", *sorted(DAEMON_SERVICES)])
def test_every_service_has_a_healthcheck_and_least_privilege(name):
    service = services()[name]
    test = service["healthcheck"]["test"]
    assert test[0] == "CMD"
    assert service["read_only"] is True
    assert service["cap_drop"] == ["ALL"]
    assert service.get("cap_add", []) == (["NET_BIND_SERVICE"] if name == "skydns" else [])
    assert "no-new-privileges:true" in service["security_opt"]


HEALTH_URLS = [("skydns", "http://127.0.0.1:9153/ready"), ("kube2sky", "http://127.0.0.1:8081/readiness"),
               ("kube2sky-manifests", "http://127.0.0.1:8081/readiness")]


@pytest.mark.parametrize(("name", "url"), HEALTH_URLS, ids=[h[0] for h in HEALTH_URLS])
def test_healthchecks_ask_the_probe_urls_of_the_pod(name, url):
    assert url in " ".join(services()[name]["healthcheck"]["test"])


def test_kubeconfig_is_the_internal_one_mounted_read_only():
    (volume,) = services()["kube2sky"]["volumes"]
    assert volume == "./.kube/kind-internal.yaml:/etc/kube2sky/kubeconfig:ro"
    text = common.COMPOSE.read_text()
    assert "kind get kubeconfig --internal > .kube/kind-internal.yaml" in text
    (volume,) = services()["kube2sky-manifests"]["volumes"]
    assert volume == "./examples/manifests:/etc/kube2sky/manifests:ro"


def test_network_comes_from_the_environment_default_kind():
    assert services()["etcd"]["network_mode"] == "${SKYDNS_NETWORK:-kind}"


COMPOSE_BIN = shutil.which("docker-compose")


@pytest.mark.parametrize(("profile", "network"), [("kind", ""), ("manifests", "bridge")])
def test_docker_compose_config_accepts_the_file(profile, network):
    assert COMPOSE_BIN, "docker-compose is not installed: scripts/install-deps.sh installs it (Debian package)"
    env = dict(os.environ, COMPOSE_PROFILES=profile)
    if network:
        env["SKYDNS_NETWORK"] = network
    proc = subprocess.run([COMPOSE_BIN, "-f", str(common.COMPOSE), "--profile", profile, "config"],
                          capture_output=True, text=True, cwd=common.ROOT, env=env, timeout=120, check=False)
    assert proc.returncode == 0, proc.stderr
    assert f"network_mode: {network or 'kind'}" in proc.stdout
