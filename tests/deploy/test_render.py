"""deploy/render.py: the generator's output for a few inputs, its errors, and manifests/ == its output."""

from __future__ import annotations

import subprocess
import sys

import pytest
import yaml

from deploy import render
from tests.deploy import common

SCRIPT = common.ROOT / "deploy" / "render.py"


def run(*argv: str) -> subprocess.CompletedProcess[str]:
    """The script as a user runs it (system-independent: this interpreter, no PYTHONPATH)."""
    return subprocess.run([sys.executable, str(SCRIPT), *argv], capture_output=True, text=True,
                          cwd=common.ROOT, timeout=60, check=False)


@pytest.mark.parametrize("part", sorted(render.FILES), ids=sorted(render.FILES))
def test_checked_in_manifest_is_the_render_for_kind_defaults(part):
    rendered = render.render(render.Params())[part]
    checked_in = (common.MANIFESTS / render.FILES[part]).read_text(encoding="utf-8")
    assert checked_in == rendered, (
        f"manifests/{render.FILES[part]} differs from the generator's output: "
        "run `python deploy/render.py --out-dir manifests`"
    )


def test_manifests_dir_holds_only_rendered_files():
    assert sorted(p.name for p in common.MANIFESTS.glob("*.yaml")) == sorted(render.FILES.values())
    assert sorted(p.name for p in common.SHARED.glob("*")) == sorted(render.SHARED_FILES.values())
    assert sorted(render.SHARED_FILES.values()) == sorted(common.SHARED_FILES)


@pytest.mark.parametrize("part", sorted(render.SHARED_FILES), ids=sorted(render.SHARED_FILES))
def test_checked_in_shared_manifest_is_the_render_for_kind(part):
    rendered = render.render_shared(render.Params(replicas=common.SHARED_REPLICAS))[part]
    checked_in = (common.SHARED / render.SHARED_FILES[part]).read_text(encoding="utf-8")
    assert checked_in == rendered, (
        f"manifests/shared/{render.SHARED_FILES[part]} differs from the generator's output: run "
        f"`python deploy/render.py --topology shared --replicas {common.SHARED_REPLICAS} --out-dir manifests/shared`"
    )


SHARED_CASES = [
    ("kind", [], ["10.96.0.11", "10.96.0.12", "10.96.0.13"], "10.96.0.10"),
    ("given-ips", ["--etcd-ips", "10.96.1.1,10.96.1.2", "--etcd-ips", "10.96.1.3"],
     ["10.96.1.1", "10.96.1.2", "10.96.1.3"], "10.96.0.10"),
    ("ipv6", ["--cluster-dns", "fd00:10:96::a", "--service-cidr", "fd00:10:96::/112"],
     ["[fd00:10:96::b]", "[fd00:10:96::c]", "[fd00:10:96::d]"], "fd00:10:96::a"),
]


@pytest.mark.parametrize(("argv", "members", "dns"), [c[1:] for c in SHARED_CASES], ids=[c[0] for c in SHARED_CASES])
def test_render_shared_stream(argv, members, dns):
    proc = run("--topology", "shared", "--replicas", "5", *argv)
    assert proc.returncode == 0, proc.stderr
    docs = [d for d in yaml.safe_load_all(proc.stdout) if d]
    assert [d["kind"] for d in docs] == [
        "ServiceAccount", "ClusterRole", "ClusterRoleBinding", "Service",
        "Service", "Service", "Service", "Service", "StatefulSet", "PodDisruptionBudget",
        "Job", "Deployment", "PodDisruptionBudget", "Deployment", "PodDisruptionBudget"]
    assert docs[3]["spec"]["clusterIP"] == dns
    assert [d["spec"]["clusterIP"] for d in docs[5:8]] == [m.strip("[]") for m in members]
    skydns = docs[13]
    assert skydns["spec"]["replicas"] == 5
    args = skydns["spec"]["template"]["spec"]["containers"][0]["args"]
    assert f"-machines={','.join(f'https://{m}:2379' for m in members)}" in args
    names = proc.stderr.splitlines()[-1]
    assert all(f"IP:{m.strip('[]')}" in names for m in members)
    assert "kube-dns-etcd-{server,root,kube2sky,skydns}" in proc.stderr


def test_render_shared_out_dir_writes_the_shared_files(tmp_path):
    proc = run("--topology", "shared", "--out-dir", str(tmp_path))
    assert proc.returncode == 0, proc.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(render.SHARED_FILES.values())


REVERSE_ZONES = [
    ("10.0.0.0/8", ["10.in-addr.arpa."]),
    ("10.96.0.0/16", ["96.10.in-addr.arpa."]),
    ("192.168.1.0/24", ["1.168.192.in-addr.arpa."]),
    ("10.96.0.0/12", [f"{n}.10.in-addr.arpa." for n in range(96, 112)]),
    ("10.96.0.0/23", ["0.96.10.in-addr.arpa.", "1.96.10.in-addr.arpa."]),
    # Not on an octet boundary: one zone per /24, /32 ... inside it (as CoreDNS splits CIDRs).
    ("10.96.7.128/25", [f"{n}.7.96.10.in-addr.arpa." for n in range(128, 256)]),
    ("0.0.0.0/0", ["in-addr.arpa."]),
    ("fd00::/8", ["d.f.ip6.arpa."]),
    ("fd00:10:96::/112", ["0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.6.9.0.0.0.1.0.0.0.0.d.f.ip6.arpa."]),
    ("fd00::/108", [".".join(["0"] * 25 + ["d", "f"]) + ".ip6.arpa."]),
    ("2001:db8::/32", ["8.b.d.0.1.0.0.2.ip6.arpa."]),
    ("2001:db8::/30", ["8.b.d.0.1.0.0.2.ip6.arpa.", "9.b.d.0.1.0.0.2.ip6.arpa.",
                       "a.b.d.0.1.0.0.2.ip6.arpa.", "b.b.d.0.1.0.0.2.ip6.arpa."]),
]


@pytest.mark.parametrize(("cidr", "zones"), REVERSE_ZONES, ids=[r[0] for r in REVERSE_ZONES])
def test_reverse_zones(cidr, zones):
    assert render.reverse_zones(cidr) == zones


RENDER_CASES = [
    # (id, argv, expectations on the rendered stream)
    ("kind-defaults", [], dict(cluster_ip="10.96.0.10", zone="cluster.local", replicas=1,
                               image="kube-skydns:latest", kind="ReplicationController",
                               skydns_domain="cluster.local.", kubelet="--cluster-dns=10.96.0.10 --cluster-domain=cluster.local")),
    ("brief-example", ["--cluster-dns", "10.96.0.10", "--domain", "cluster.local", "--reverse-cidrs", "10.96.0.0/12",
                       "--image", "kube-skydns:latest", "--replicas", "1"],
     dict(cluster_ip="10.96.0.10", zone="cluster.local", replicas=1, image="kube-skydns:latest",
          kind="ReplicationController",
          skydns_domain="cluster.local.," + ",".join(f"{n}.10.in-addr.arpa." for n in range(96, 112)),
          kubelet="--cluster-dns=10.96.0.10 --cluster-domain=cluster.local")),
    ("other-cluster", ["--cluster-dns", "10.0.0.10", "--service-cidr", "10.0.0.0/16", "--domain", "Corp.Example.",
                       "--image", "registry.example:5000/dns/kube-skydns:0.1.0", "--pull-policy", "Always",
                       "--replicas", "3", "--controller", "deployment"],
     dict(cluster_ip="10.0.0.10", zone="corp.example", replicas=3, image="registry.example:5000/dns/kube-skydns:0.1.0",
          kind="Deployment", skydns_domain="corp.example.", pull_policy="Always",
          kubelet="--cluster-dns=10.0.0.10 --cluster-domain=corp.example")),
    ("ipv6", ["--cluster-dns", "fd00:10:96::a", "--service-cidr", "fd00:10:96::/112", "--reverse-cidrs",
              "fd00:10:96::/112", "--replicas", "2"],
     dict(cluster_ip="fd00:10:96::a", zone="cluster.local", replicas=2, image="kube-skydns:latest",
          kind="ReplicationController",
          skydns_domain="cluster.local.,0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.6.9.0.0.0.1.0.0.0.0.d.f.ip6.arpa.",
          listen="[::]:53", probe="[::1]:53",
          kubelet="--cluster-dns=fd00:10:96::a --cluster-domain=cluster.local")),
]


@pytest.mark.parametrize(("argv", "want"), [c[1:] for c in RENDER_CASES], ids=[c[0] for c in RENDER_CASES])
def test_render_stream(argv, want):
    proc = run(*argv)
    assert proc.returncode == 0, proc.stderr
    docs = [d for d in yaml.safe_load_all(proc.stdout) if d]
    assert [d["kind"] for d in docs] == ["ServiceAccount", "ClusterRole", "ClusterRoleBinding", "Service", want["kind"]]
    kinds = common.by_kind(docs)
    assert kinds["Service"]["spec"]["clusterIP"] == want["cluster_ip"]
    ctrl = kinds[want["kind"]]
    assert ctrl["spec"]["replicas"] == want["replicas"]
    pod = {c["name"]: c for c in ctrl["spec"]["template"]["spec"]["containers"]}
    for name in common.DAEMONS:
        assert pod[name]["image"] == want["image"]
        assert pod[name]["imagePullPolicy"] == want.get("pull_policy", "IfNotPresent")
    assert f"--domain={want['zone']}" in pod["kube2sky"]["args"]
    assert f"-domain={want['skydns_domain']}" in pod["skydns"]["args"]
    assert f"-addr={want.get('listen', '0.0.0.0:53')}" in pod["skydns"]["args"]
    assert (f"--probe=kubernetes=kubernetes.default.svc.{want['zone']}/A@{want.get('probe', '127.0.0.1:53')}"
            in pod["healthz"]["args"])
    assert want["kubelet"] in proc.stderr.splitlines()


def test_render_out_dir_writes_the_four_files(tmp_path):
    proc = run("--out-dir", str(tmp_path), "--replicas", "2")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == ""
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(render.FILES.values())
    assert yaml.safe_load((tmp_path / "skydns-deployment.yaml").read_text())["spec"]["replicas"] == 2


BAD_INPUT = [
    ("dns-outside-cidr", ["--cluster-dns", "10.112.0.10"], "outside the service CIDR 10.96.0.0/12"),
    ("dns-outside-given-cidr", ["--cluster-dns", "10.96.0.10", "--service-cidr", "10.0.0.0/16"], "outside the service CIDR"),
    ("dns-family-mismatch", ["--cluster-dns", "fd00::a"], "outside the service CIDR"),
    ("dns-not-ip", ["--cluster-dns", "kube-dns"], "not an IP address"),
    ("dns-network-address", ["--cluster-dns", "10.96.0.0"], "not a usable address"),
    ("dns-kubernetes-service", ["--cluster-dns", "10.96.0.1"], "kubernetes Service"),
    ("cidr-host-bits", ["--service-cidr", "10.96.0.1/12"], "bad --service-cidr"),
    ("reverse-cidr-bad", ["--reverse-cidrs", "10.96.0.0/33"], "bad --reverse-cidrs"),
    ("reverse-cidr-host-bits", ["--reverse-cidrs", "10.96.7.128/12"], "bad --reverse-cidrs"),
    ("reverse-too-many", ["--reverse-cidrs", "10.0.0.0/17,10.1.0.0/17,10.2.0.0/17"], "384 reverse zones, at most 256"),
    ("domain-underscore", ["--domain", "cluster_local"], "bad domain"),
    ("domain-empty", ["--domain", "."], "bad domain"),
    ("domain-dash", ["--domain=-cluster.local"], "bad domain"),
    ("domain-double-dot", ["--domain", "cluster..local"], "bad domain"),
    ("domain-long-label", ["--domain", "a" * 64 + ".local"], "bad domain"),
    ("domain-arpa", ["--domain", "in-addr.arpa"], "reverse zone"),
    ("replicas-zero", ["--replicas", "0"], "bad --replicas 0"),
    ("replicas-negative", ["--replicas", "-1"], "bad --replicas -1"),
    ("replicas-word", ["--replicas", "two"], "bad --replicas 'two'"),
    ("replicas-too-many", ["--replicas", "1000"], "bad --replicas 1000"),
    ("image-space", ["--image", "kube skydns"], "bad --image"),
    ("image-trailing-colon", ["--image", "kube-skydns:"], "bad --image"),
    ("pull-policy", ["--pull-policy", "Sometimes"], "invalid choice"),
    ("unknown-flag", ["--clusterdns", "10.96.0.10"], "unrecognized arguments"),
    ("topology", ["--topology", "big"], "invalid choice"),
    ("etcd-ips-two", ["--topology", "shared", "--etcd-ips", "10.96.0.11,10.96.0.12"], "give 3 different"),
    ("etcd-ips-same", ["--topology", "shared", "--etcd-ips", "10.96.0.11,10.96.0.11,10.96.0.12"], "give 3 different"),
    ("etcd-ips-word", ["--etcd-ips", "a,b,c"], "not an IP address"),
    ("etcd-ips-outside", ["--topology", "shared", "--etcd-ips", "10.0.0.1,10.0.0.2,10.0.0.3"], "not a free address"),
    ("etcd-ips-dns", ["--topology", "shared", "--etcd-ips", "10.96.0.10,10.96.0.12,10.96.0.13"], "not a free address"),
    ("etcd-ips-default-overflow", ["--topology", "shared", "--cluster-dns", "10.111.255.253"], "pass --etcd-ips"),
]


@pytest.mark.parametrize(("argv", "message"), [c[1:] for c in BAD_INPUT], ids=[c[0] for c in BAD_INPUT])
def test_bad_input_is_one_line_and_exit_2(argv, message):
    proc = run(*argv)
    assert proc.returncode == 2
    assert proc.stdout == ""
    lines = proc.stderr.splitlines()
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith("render.py: error: ")
    assert message in lines[0]
