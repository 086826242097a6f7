"""manifests/shared/ (deploy/render.py --topology shared): the rules of the large-cluster shape.

The schema validation of these files runs in test_manifests.py with the per-pod ones; here:
etcd is a 3-member StatefulSet with peer and client TLS, reached at fixed member addresses
(nothing resolves a cluster name); kube2sky is two elected writers; skydns replicas sit behind
the kube-dns Service; each daemon dials every member with its own client certificate; the
one-time auth setup grants least privilege; the daemons' args parse with their click commands.
"""

from __future__ import annotations

import ipaddress
import os

import pytest

from deploy import render
from kube2sky import settings as kube2sky_settings
from tests.deploy import common
from tests.deploy import test_container_args as args_tests


def kinds(name: str) -> dict[str, list[dict]]:
    out: dict[str, list[dict]] = {}
    for doc in common.shared(name):
        out.setdefault(doc["kind"], []).append(doc)
    return out


def one(name: str, kind: str) -> dict:
    (doc,) = kinds(name)[kind]
    return doc


def flags(argv: list[str]) -> dict[str, str]:
    """--flag=value / -flag=value -> {flag: value}; bare flags map to ""."""
    out = {}
    for arg in argv:
        if arg.startswith("-"):
            key, _, value = arg.partition("=")
            out[key] = value
    return out


ETCD = one("etcd.yaml", "StatefulSet")
ETCD_POD = ETCD["spec"]["template"]["spec"]
ETCD_ARGS = flags(ETCD_POD["containers"][0]["command"])
MEMBERS = sorted((s for s in kinds("etcd.yaml")["Service"] if s["spec"].get("clusterIP") != "None"),
                 key=lambda s: s["metadata"]["name"])
KUBE2SKY = one("kube2sky.yaml", "Deployment")
SKYDNS = one("skydns.yaml", "Deployment")
SERVICE = one("skydns-svc.yaml", "Service")
PODS = {"etcd": ETCD, "kube2sky": KUBE2SKY, "skydns": SKYDNS, "etcd-setup": one("etcd-setup.yaml", "Job")}


def member_urls(port: int) -> list[str]:
    return [f"https://{s['spec']['clusterIP']}:{port}" for s in MEMBERS]


def test_etcd_is_a_three_member_statefulset_with_volumes_and_a_quorum_budget():
    assert ETCD["spec"]["replicas"] == 3
    assert ETCD["spec"]["podManagementPolicy"] == "Parallel"
    headless = [s for s in kinds("etcd.yaml")["Service"] if s["metadata"]["name"] == ETCD["spec"]["serviceName"]]
    assert headless and headless[0]["spec"]["clusterIP"] == "None"
    (claim,) = ETCD["spec"]["volumeClaimTemplates"]
    mounts = {m["name"]: m["mountPath"] for m in ETCD_POD["containers"][0]["volumeMounts"]}
    assert ETCD_ARGS["--data-dir"].startswith(mounts[claim["metadata"]["name"]] + "/")
    term = ETCD_POD["affinity"]["podAntiAffinity"]["preferredDuringSchedulingIgnoredDuringExecution"][0]
    assert term["podAffinityTerm"]["topologyKey"] == "kubernetes.io/hostname"
    labels = ETCD["spec"]["template"]["metadata"]["labels"]
    assert term["podAffinityTerm"]["labelSelector"]["matchLabels"].items() <= labels.items()
    pdb = one("etcd.yaml", "PodDisruptionBudget")
    assert pdb["spec"]["minAvailable"] == 2  # the quorum of 3
    assert pdb["spec"]["selector"]["matchLabels"].items() <= labels.items()


def test_etcd_speaks_tls_to_clients_and_peers_with_certificates_from_a_secret():
    for flag in ("--listen-client-urls", "--advertise-client-urls", "--listen-peer-urls",
                 "--initial-advertise-peer-urls"):
        assert ETCD_ARGS[flag].startswith("https://"), flag
    assert {"--client-cert-auth", "--peer-client-cert-auth"} <= set(ETCD_ARGS)
    volumes = {v["name"]: v for v in ETCD_POD["volumes"]}
    mounts = {m["mountPath"]: m["name"] for m in ETCD_POD["containers"][0]["volumeMounts"]}
    for flag in ("--cert-file", "--key-file", "--trusted-ca-file", "--peer-cert-file", "--peer-key-file",
                 "--peer-trusted-ca-file"):
        folder = os.path.dirname(ETCD_ARGS[flag])
        assert volumes[mounts[folder]]["secret"]["secretName"] == "kube-dns-etcd-server", flag


def test_members_have_fixed_addresses_that_peers_and_certificates_use():
    cidr = ipaddress.ip_network(render.DEFAULT_SERVICE_CIDR)
    ips = [s["spec"]["clusterIP"] for s in MEMBERS]
    assert len(set(ips)) == 3 and all(ipaddress.ip_address(ip) in cidr for ip in ips)
    assert SERVICE["spec"]["clusterIP"] not in ips
    aliases = {a["ip"]: a["hostnames"] for a in ETCD_POD["hostAliases"]}
    peers = dict(item.split("=", 1) for item in ETCD_ARGS["--initial-cluster"].split(","))
    for i, svc in enumerate(MEMBERS):
        name = f"{ETCD['metadata']['name']}-{i}"
        assert svc["metadata"]["name"] == name
        assert svc["spec"]["selector"]["statefulset.kubernetes.io/pod-name"] == name
        assert svc["spec"]["publishNotReadyAddresses"] is True
        assert aliases[svc["spec"]["clusterIP"]] == [name]
        assert peers[name] == f"https://{name}:2380"
        for item in (f"IP:{svc['spec']['clusterIP']}", f"DNS:{name}"):
            assert item in render.etcd_server_names(render.check_shared(render.Params()))
    assert ETCD_ARGS["--name"] == "$(POD_NAME)"
    assert ETCD_ARGS["--initial-advertise-peer-urls"] == "https://$(POD_NAME):2380"
    env = {e["name"]: e for e in ETCD_POD["containers"][0]["env"]}
    assert env["POD_NAME"]["valueFrom"]["fieldRef"]["fieldPath"] == "metadata.name"


@pytest.mark.parametrize("name", ["etcd", "kube2sky", "skydns", "etcd-setup"])
def test_no_pod_depends_on_cluster_dns(name):
    assert PODS[name]["spec"]["template"]["spec"]["dnsPolicy"] == "Default"


def _secret_of(pod: dict, container: dict, path: str) -> str:
    volumes = {v["name"]: v for v in pod["spec"]["template"]["spec"]["volumes"]}
    mounts = {m["mountPath"]: m["name"] for m in container["volumeMounts"]}
    return volumes[mounts[os.path.dirname(path)]]["secret"]["secretName"]


def test_daemons_dial_every_member_with_their_own_certificate():
    kube2sky = common.shared_containers("kube2sky.yaml", "Deployment")["kube2sky"]
    skydns = common.shared_containers("skydns.yaml", "Deployment")["skydns"]
    k, s = flags(kube2sky["args"]), flags(skydns["args"])
    assert k["--etcd-server"].split(",") == s["-machines"].split(",") == member_urls(2379)
    for flag in ("--etcd-cafile", "--etcd-certfile", "--etcd-keyfile"):
        assert _secret_of(KUBE2SKY, kube2sky, k[flag]) == "kube-dns-etcd-kube2sky", flag
    for flag in ("-ca-cert", "-tls-pem", "-tls-key"):
        assert _secret_of(SKYDNS, skydns, s[flag]) == "kube-dns-etcd-skydns", flag


def test_kube2sky_is_two_elected_writers():
    assert KUBE2SKY["spec"]["replicas"] == 2
    container = common.shared_containers("kube2sky.yaml", "Deployment")["kube2sky"]
    assert "--leader-elect" in container["args"]
    assert container["readinessProbe"]["httpGet"]["path"] == "/readiness"
    assert KUBE2SKY["spec"]["template"]["spec"]["serviceAccountName"] == "kube-dns"
    pdb = one("kube2sky.yaml", "PodDisruptionBudget")
    assert pdb["spec"]["minAvailable"] == 1


def test_skydns_replicas_sit_behind_the_kube_dns_service_alone():
    selector = SERVICE["spec"]["selector"]
    assert SERVICE["metadata"]["name"] == "kube-dns" and SERVICE["spec"]["clusterIP"] == render.DEFAULT_CLUSTER_DNS
    assert selector.items() <= SKYDNS["spec"]["template"]["metadata"]["labels"].items()
    for other in (ETCD, KUBE2SKY, PODS["etcd-setup"]):
        assert not selector.items() <= other["spec"]["template"]["metadata"]["labels"].items()
    assert SKYDNS["spec"]["replicas"] == common.SHARED_REPLICAS
    spec = SKYDNS["spec"]["template"]["spec"]
    assert {c["topologyKey"] for c in spec["topologySpreadConstraints"]} == {
        "kubernetes.io/hostname", "topology.kubernetes.io/zone"}
    assert spec["automountServiceAccountToken"] is False
    assert list(common.shared_containers("skydns.yaml", "Deployment")) == ["skydns", "healthz"]
    pdb = one("skydns.yaml", "PodDisruptionBudget")
    assert pdb["spec"]["maxUnavailable"] == 1
    assert pdb["spec"]["selector"]["matchLabels"].items() <= SKYDNS["spec"]["template"]["metadata"]["labels"].items()


def test_auth_setup_runs_the_least_privilege_steps_in_order():
    spec = PODS["etcd-setup"]["spec"]["template"]["spec"]
    steps = [*spec["initContainers"], *spec["containers"]]
    assert [(c["name"], c["command"]) for c in steps] == [
        (name, ["etcdctl", *argv]) for name, argv in render.etcd_auth_steps()]
    assert spec["restartPolicy"] == "OnFailure"
    grants = [c["command"][2:] for c in steps if c["command"][1:3] == ["role", "grant-permission"]]
    leader_key = f"/{kube2sky_settings.Settings().prefix.strip('/')}-leader/kube2sky"
    assert sorted(grants) == sorted([
        ["grant-permission", "kube2sky", "readwrite", "/skydns/", "--prefix=true"],
        ["grant-permission", "kube2sky", "readwrite", leader_key],
        ["grant-permission", "skydns", "read", "/skydns/", "--prefix=true"],
    ])
    assert steps[-1]["command"] == ["etcdctl", "auth", "enable"]
    env = {e["name"]: e["value"] for e in steps[0]["env"]}
    assert env["ETCDCTL_ENDPOINTS"].split(",") == member_urls(2379)
    assert _secret_of(PODS["etcd-setup"], steps[0], env["ETCDCTL_CERT"]) == "kube-dns-etcd-root"


def _all_containers():
    for name, obj in PODS.items():
        spec = obj["spec"]["template"]["spec"]
        for container in [*spec.get("initContainers", []), *spec["containers"]]:
            yield name, container


@pytest.mark.parametrize(("pod", "container"), list(_all_containers()),
                         ids=[f"{p}:{c['name']}" for p, c in _all_containers()])
def test_every_container_is_least_privileged_with_resources_and_pinned(pod, container):
    sc = container["securityContext"]
    assert sc["allowPrivilegeEscalation"] is False and sc["readOnlyRootFilesystem"] is True
    assert sc["capabilities"]["drop"] == ["ALL"]
    assert sc["capabilities"].get("add", []) == (["NET_BIND_SERVICE"] if container["name"] == "skydns" else [])
    assert {"cpu", "memory"} <= set(container["resources"]["requests"])
    assert "memory" in container["resources"]["limits"]
    if container["name"] in common.DAEMONS:
        assert container["image"] == render.DEFAULT_IMAGE
    else:
        assert container["image"] == render.ETCD_IMAGE
    if pod != "etcd-setup":
        assert "livenessProbe" in container
    spec = PODS[pod]["spec"]["template"]["spec"]
    assert spec["securityContext"]["runAsNonRoot"] is True


@pytest.mark.parametrize("pod", ["etcd", "kube2sky", "skydns"])
def test_http_probes_target_declared_ports(pod):
    spec = PODS[pod]["spec"]["template"]["spec"]
    for container in spec["containers"]:
        declared = {p["containerPort"] for p in container.get("ports", [])}
        for kind in ("livenessProbe", "readinessProbe", "startupProbe"):
            probe = container.get(kind, {})
            port = probe.get("httpGet", probe.get("tcpSocket", {})).get("port")
            if port is not None:
                assert port in declared, f"{container['name']} {kind} port {port}"


# ---------------------------------------------------------------- the daemons' args parse

FAKE_PEM = {"ca.crt": "CERTIFICATE", "tls.crt": "CERTIFICATE", "tls.key": "PRIVATE KEY"}


def shared_cases():
    for file, kind in (("kube2sky.yaml", "Deployment"), ("skydns.yaml", "Deployment")):
        for name, container in common.shared_containers(file, kind).items():
            yield f"shared/{file}:{name}", name, list(container["args"])


@pytest.mark.parametrize(("daemon", "args"), [c[1:] for c in shared_cases()], ids=[c[0] for c in shared_cases()])
def test_shared_args_build_the_settings_the_topology_relies_on(daemon, args, tmp_path, monkeypatch):
    for name in list(os.environ):
        if name.startswith(args_tests.ENV_PREFIXES) or name in args_tests.ENV_NAMES:
            monkeypatch.delenv(name, raising=False)
    for file, kind in FAKE_PEM.items():  # the CLIs check the files are PEM of the right kind
        (tmp_path / file).write_text(f"-----BEGIN {kind}-----\nAAAA\n-----END {kind}-----\n")
    local = [a.replace(render.ETCD_TLS_DIR, str(tmp_path)) for a in args]
    module = args_tests.cli_module(daemon)
    ctx = args_tests.click_command(module).make_context(daemon, args_tests.preprocess(module, local))
    assert not ctx.args
    settings = args_tests.invoke_main(module, local)
    urls = member_urls(2379)
    if daemon == "kube2sky":
        assert settings.leader_elect is True
        assert settings.etcd_endpoints == tuple(urls)
        assert (settings.etcd_cafile, settings.etcd_certfile) == (str(tmp_path / "ca.crt"), str(tmp_path / "tls.crt"))
    elif daemon == "skydns":
        assert settings.etcd_endpoints == tuple(urls)
        assert settings.addr_port == 53 and settings.http_port == 9153
    else:
        args_tests.check_healthz(settings, args)
