"""manifests/: parse, validate against the Kubernetes schemas offline, and agree with each other.

The schema check uses kubernetes-validate (the JSON schemas of Kubernetes 1.25..1.37 ship inside
the package, strict mode: unknown fields are errors). The pod checks hold the rules of the
deployment: etcd on loopback only, probes on ports the pod serves, least privilege.
"""

from __future__ import annotations

import ipaddress
import re

import pytest

from deploy import render
from tests.deploy import common

import kubernetes_validate  # the test extra installs it
from kubernetes_validate import utils as kv_utils

# Oldest and newest schema the package ships: the manifests must hold on both.
K8S_VERSIONS = ("1.25", "1.33", "latest")

DOCS = [(name, index, doc) for name in common.MANIFEST_FILES for index, doc in enumerate(common.manifest(name))]
DOCS += [(f"shared/{name}", index, doc) for name in common.SHARED_FILES
         for index, doc in enumerate(common.shared(name))]
DOC_IDS = [f"{name}:{doc['kind']}" for name, _, doc in DOCS]


@pytest.mark.parametrize("name", [*common.MANIFEST_FILES, *(f"shared/{n}" for n in common.SHARED_FILES)])
def test_manifest_parses(name):
    docs = common.load_docs(common.MANIFESTS / name)
    assert docs, f"{name} has no document"
    for doc in docs:
        assert {"apiVersion", "kind", "metadata"} <= set(doc)


@pytest.mark.parametrize("version", K8S_VERSIONS)
@pytest.mark.parametrize(("name", "index", "doc"), DOCS, ids=DOC_IDS)
def test_manifest_validates_against_kubernetes_schema(name, index, doc, version):
    if version == "latest":
        version = kv_utils.latest_version()
    try:
        kubernetes_validate.validate(doc, version, strict=True)
    except kubernetes_validate.ValidationError as exc:
        path = ".".join(str(p) for p in exc.path)
        pytest.fail(f"{name}#{index} ({doc['kind']}) invalid for Kubernetes {version} at {path}: {exc.message}")


def test_rc_and_deployment_run_the_same_pod():
    rc = common.controller("skydns-rc.yaml")
    deployment = common.controller("skydns-deployment.yaml")
    assert rc["spec"]["template"] == deployment["spec"]["template"]
    assert rc["spec"]["selector"] == deployment["spec"]["selector"]["matchLabels"]
    assert rc["spec"]["replicas"] == deployment["spec"]["replicas"] == 1


@pytest.mark.parametrize("name", common.CONTROLLER_FILES)
def test_controller_shape(name):
    ctrl = common.controller(name)
    assert ctrl["metadata"]["name"] == "kube-dns"
    assert ctrl["metadata"]["namespace"] == "kube-system"
    template = ctrl["spec"]["template"]
    selector = ctrl["spec"]["selector"].get("matchLabels", ctrl["spec"]["selector"])
    assert selector["k8s-app"] == "kube-dns"
    assert selector.items() <= template["metadata"]["labels"].items()
    spec = template["spec"]
    assert spec["dnsPolicy"] == "Default"
    assert spec["serviceAccountName"] == "kube-dns"
    assert spec["priorityClassName"] == "system-cluster-critical"
    keys = {t["key"] for t in spec["tolerations"]}
    assert {"CriticalAddonsOnly", "node-role.kubernetes.io/control-plane"} <= keys
    assert spec["securityContext"]["runAsNonRoot"] is True
    assert spec["securityContext"]["runAsUser"] != 0
    assert list(common.containers(name)) == ["etcd", "kube2sky", "skydns", "healthz"]


@pytest.mark.parametrize("name", common.CONTROLLER_FILES)
def test_every_container_is_least_privileged_with_resources(name):
    for cname, container in common.containers(name).items():
        sc = container["securityContext"]
        assert sc["allowPrivilegeEscalation"] is False, cname
        assert sc["readOnlyRootFilesystem"] is True, cname
        assert sc["capabilities"]["drop"] == ["ALL"], cname
        added = sc["capabilities"].get("add", [])
        assert added == (["NET_BIND_SERVICE"] if cname == "skydns" else []), cname
        resources = container["resources"]
        assert {"cpu", "memory"} <= set(resources["requests"]), cname
        assert "memory" in resources["limits"], cname
        assert "livenessProbe" in container, cname


@pytest.mark.parametrize("name", common.CONTROLLER_FILES)
def test_images_are_pinned(name):
    for cname, container in common.containers(name).items():
        image = container["image"]
        if cname in common.DAEMONS:
            # Our own image: the tag kind load docker-image puts on the nodes, never pulled.
            assert image == render.DEFAULT_IMAGE
            assert container["imagePullPolicy"] == "IfNotPresent"
        else:
            assert re.search(r":v?\d+\.\d+\.\d+", image), f"{cname}: {image} is not pinned to a version"
            assert not image.endswith(":latest")


def _flag(argv: list[str], flag: str) -> str:
    values = [a.split("=", 1)[1] for a in argv if a.startswith(flag + "=")]
    assert len(values) == 1, f"{flag} given {len(values)} times in {argv}"
    return values[0]


@pytest.mark.parametrize("name", common.CONTROLLER_FILES)
def test_etcd_listens_on_loopback_only_with_emptydir_data(name):
    etcd = common.containers(name)["etcd"]
    argv = common.container_argv(etcd)
    for flag in ("--listen-client-urls", "--listen-peer-urls", "--advertise-client-urls",
                 "--initial-advertise-peer-urls"):
        for url in _flag(argv, flag).split(","):
            assert re.fullmatch(r"http://127\.0\.0\.1:\d+", url), f"{flag}={url}"
    assert "ports" not in etcd, "etcd must not declare pod ports"
    data_dir = _flag(argv, "--data-dir")
    volumes = {v["name"]: v for v in common.pod_spec(name)["volumes"]}
    (mount,) = etcd["volumeMounts"]
    assert "emptyDir" in volumes[mount["name"]]
    assert data_dir.startswith(mount["mountPath"].rstrip("/") + "/")


@pytest.mark.parametrize("name", common.CONTROLLER_FILES)
def test_daemons_talk_to_the_pod_etcd(name):
    pod = common.containers(name)
    client_url = _flag(common.container_argv(pod["etcd"]), "--listen-client-urls")
    assert _flag(pod["kube2sky"]["args"], "--etcd-server") == client_url
    assert _flag(pod["skydns"]["args"], "-machines") == client_url


def _ports(container: dict) -> dict[tuple[int, str], str]:
    return {(p["containerPort"], p.get("protocol", "TCP")): p["name"] for p in container.get("ports", [])}


@pytest.mark.parametrize("name", common.CONTROLLER_FILES)
def test_port_names_are_valid_and_unique(name):
    names = [n for c in common.containers(name).values() for n in _ports(c).values()]
    assert len(names) == len(set(names))
    for port_name in names:
        assert re.fullmatch(r"[a-z0-9]([a-z0-9-]*[a-z0-9])?", port_name) and len(port_name) <= 15, port_name
        assert re.search(r"[a-z]", port_name), port_name


@pytest.mark.parametrize("name", common.CONTROLLER_FILES)
def test_every_http_probe_targets_a_port_the_pod_declares(name):
    pod = common.containers(name)
    declared = {port for c in pod.values() for (port, proto) in _ports(c) if proto == "TCP"}
    for cname, container in pod.items():
        for kind in ("livenessProbe", "readinessProbe", "startupProbe"):
            probe = container.get(kind)
            if probe and "httpGet" in probe:
                assert probe["httpGet"]["port"] in declared, f"{cname} {kind} port {probe['httpGet']['port']}"
            if probe and "tcpSocket" in probe:
                assert (probe["tcpSocket"]["port"], "TCP") in _ports(container), f"{cname} {kind}"


# Which daemon serves which probe: (container, probe kind) -> (path, owning container, port flag).
PROBES = [
    ("kube2sky", "readinessProbe", "/readiness", "kube2sky", "--healthz-port"),
    ("kube2sky", "livenessProbe", "/healthz", "healthz", "-port"),
    ("skydns", "readinessProbe", "/ready", "skydns", "--http-addr"),
    ("skydns", "livenessProbe", "/health", "skydns", "--http-addr"),
]


@pytest.mark.parametrize("name", common.CONTROLLER_FILES)
@pytest.mark.parametrize(("cname", "kind", "path", "owner", "flag"), PROBES,
                         ids=[f"{p[0]}-{p[1]}" for p in PROBES])
def test_probe_port_is_the_owning_daemons_flag(name, cname, kind, path, owner, flag):
    pod = common.containers(name)
    probe = pod[cname][kind]["httpGet"]
    assert probe["path"] == path
    value = _flag(pod[owner]["args"], flag)
    port = int(value.rsplit(":", 1)[-1])
    assert probe["port"] == port
    assert (port, "TCP") in _ports(pod[owner])


@pytest.mark.parametrize(("cname", "kind", "path", "owner", "flag"), PROBES,
                         ids=[f"{p[0]}-{p[1]}" for p in PROBES])
def test_probe_path_is_served_by_the_owning_daemon(cname, kind, path, owner, flag):
    """The path is a route of the daemon's HTTP server (a string literal in its package)."""
    sources = "\n".join(p.read_text() for p in (common.ROOT / owner).glob("*.py"))
    if f'"{path}"' not in sources:
        pytest.fail(f"{owner} does not serve {path} (probe {cname}.{kind})")


@pytest.mark.parametrize("name", common.CONTROLLER_FILES)
def test_healthz_probes_the_pods_skydns_for_kubernetes_default(name):
    pod = common.containers(name)
    probe = _flag(pod["healthz"]["args"], "--probe")
    zone = _flag(pod["kube2sky"]["args"], "--domain")
    assert probe == f"kubernetes=kubernetes.default.svc.{zone}/A@127.0.0.1:53"
    listen_port = int(_flag(pod["skydns"]["args"], "-addr").rsplit(":", 1)[1])
    assert listen_port == 53
    assert f"{zone}." in _flag(pod["skydns"]["args"], "-domain").split(",")


def test_service_matches_the_pod():
    (svc,) = common.manifest("skydns-svc.yaml")
    assert svc["metadata"]["name"] == "kube-dns"
    assert svc["metadata"]["namespace"] == "kube-system"
    assert ipaddress.ip_address(svc["spec"]["clusterIP"]) in ipaddress.ip_network(render.DEFAULT_SERVICE_CIDR)
    assert svc["spec"]["clusterIP"] == "10.96.0.10"
    ports = {(p["port"], p["protocol"]): (p["name"], p["targetPort"]) for p in svc["spec"]["ports"]}
    assert ports == {(53, "UDP"): ("dns", 53), (53, "TCP"): ("dns-tcp", 53), (9153, "TCP"): ("metrics", 9153)}
    skydns = common.containers("skydns-rc.yaml")["skydns"]
    assert set(ports) <= set(_ports(skydns))
    labels = common.controller("skydns-rc.yaml")["spec"]["template"]["metadata"]["labels"]
    assert svc["spec"]["selector"].items() <= labels.items()


def test_rbac_grants_only_reads_of_what_kube2sky_watches():
    kinds = common.by_kind(common.manifest("rbac.yaml"))
    sa, role, binding = kinds["ServiceAccount"], kinds["ClusterRole"], kinds["ClusterRoleBinding"]
    assert (sa["metadata"]["name"], sa["metadata"]["namespace"]) == ("kube-dns", "kube-system")
    assert role["metadata"]["name"] == "system:kube-dns-skydns"
    granted = set()
    for rule in role["rules"]:
        assert sorted(rule["verbs"]) == ["get", "list", "watch"]
        granted |= {(group, resource) for group in rule["apiGroups"] for resource in rule["resources"]}
    assert granted == {("", "services"), ("", "endpoints"), ("", "namespaces"), ("", "pods"),
                       ("discovery.k8s.io", "endpointslices")}
    assert binding["roleRef"] == {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole",
                                  "name": role["metadata"]["name"]}
    assert binding["subjects"] == [{"kind": "ServiceAccount", "name": "kube-dns", "namespace": "kube-system"}]
    assert common.pod_spec("skydns-rc.yaml")["serviceAccountName"] == sa["metadata"]["name"]
