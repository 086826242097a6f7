"""The README deploy sections agree with manifests/, docker-compose.yml, the Dockerfile and the generator."""

from __future__ import annotations

import re
import shlex

import pytest

from deploy import render
from skydns import msg
from tests.deploy import common


def text() -> str:
    return common.DEPLOY_DOC.read_text(encoding="utf-8")


def code_lines() -> list[str]:
    """Every line inside ``` blocks."""
    lines, inside = [], False
    for line in text().splitlines():
        if line.strip().startswith("```"):
            inside = not inside
            continue
        if inside:
            lines.append(line.strip())
    return lines


SECTIONS = ["## Deploy", "### The pod", "### Build the image", "### Deploy on kind, step by step",
            "#### Other clusters: render the manifests", "### Migrate from kube-dns or CoreDNS",
            "### Verify from a pod", "### Inspect the records with etcdctl", "### Add a custom record",
            "### Local development with docker-compose"]


@pytest.mark.parametrize("heading", SECTIONS)
def test_section_exists(heading):
    assert heading in text().splitlines()


COMMANDS = [
    "docker build -t kube-skydns:latest .",
    "kind load docker-image kube-skydns:latest",
    "kubectl run -it --rm busybox --image=busybox:1.28 -- nslookup kubernetes.default",
    'kubectl -n kube-system exec "$POD" -c etcd -- etcdctl get --prefix /skydns/',
    "mkdir -p .kube && kind get kubeconfig --internal > .kube/kind-internal.yaml",
    "kubectl -n kube-system delete deployment coredns",
    "kubectl -n kube-system delete deployment kube-dns",
]


@pytest.mark.parametrize("command", COMMANDS)
def test_documented_command(command):
    assert command in code_lines()


def test_custom_record_is_put_under_the_served_zone_and_not_a_kube2sky_leaf():
    puts = [line for line in code_lines() if "etcdctl put " in line]
    assert puts
    for line in puts:
        words = shlex.split(line.split("--", 1)[1] if " -- " in line else line)
        key, value = words[words.index("put") + 1:words.index("put") + 3]
        assert key.startswith("/skydns/local/cluster/")
        msg.decode(value)  # valid SkyDNS JSON
        assert key.rsplit("/", 1)[1] != msg.leaf_label(value), "kube2sky would own (and delete) this key"


def test_manifest_paths_exist():
    for path in set(re.findall(r"manifests/[\w.-]+\.yaml", text())):
        assert (common.ROOT / path).exists(), path


def test_render_examples_render():
    lines = [line for line in code_lines() if line.startswith("python deploy/render.py")]
    assert len(lines) >= 2
    for line in lines:
        argv = shlex.split(line.split("|", 1)[0])[2:]
        params, controller, out_dir = render.parse_args(argv)
        render.render(params)


def test_render_flag_table_lists_every_flag():
    source = (common.ROOT / "deploy" / "render.py").read_text()
    flags = set(re.findall(r'add_argument\("(--[a-z-]+)"', source))
    documented = set(re.findall(r"^\| `(--[a-z-]+)", text(), re.M))
    assert flags == documented


def test_container_args_block_is_the_manifests():
    pod = common.containers("skydns-rc.yaml")
    documented = {}
    for line in code_lines():
        name, _, rest = line.partition(" ")
        if name in common.DAEMONS and rest.strip().startswith("-"):
            documented[name] = rest.split()
    assert documented == {name: pod[name]["args"] for name in common.DAEMONS}


def test_exec_and_selectors_name_real_containers_and_labels():
    pod = common.containers("skydns-rc.yaml")
    for container in re.findall(r" -c (\S+) ", text()):
        assert container in pod
    labels = common.controller("skydns-rc.yaml")["spec"]["template"]["metadata"]["labels"]
    for key, value in re.findall(r"-l ([\w./-]+)=([\w.-]+)", text()):
        assert labels.get(key) == value


def test_ports_and_probes_in_the_pod_table():
    doc = text()
    for port, path in [(8081, "/readiness"), (8080, "/healthz"), (9153, "/ready"), (9153, "/health")]:
        assert f"`GET :{port}{path}`" in doc
    assert "`127.0.0.1:2379`" in doc
    published = {p.split(":")[1] for p in common.compose()["services"]["etcd"]["ports"]}
    for port in published:
        assert f"`{port}`" in doc, f"compose port {port} not documented"


def test_images_and_profiles_match():
    doc = text()
    assert f"`{render.ETCD_IMAGE}`" in doc
    base = next(line.split()[1] for line in common.DOCKERFILE.read_text().splitlines() if line.startswith("FROM"))
    assert f"`{base}`" in doc
    profiles = {p for s in common.compose()["services"].values() for p in s.get("profiles", [])}
    assert set(re.findall(r"docker-compose --profile (\w+)", doc)) == profiles


def test_large_clusters_section_lists_the_auth_steps_and_the_shared_files():
    doc = text()
    assert "### Large clusters" in doc.splitlines()
    lines = code_lines()
    for name, argv in render.etcd_auth_steps():
        if name != "wait-for-etcd":
            assert " ".join(["etcdctl", *argv]) in lines, name
    for file in render.SHARED_FILES.values():
        assert f"`{file}`" in doc, file
    leader_default = re.search(r"within the lease TTL \((\d+) s\)", doc)
    from kube2sky import settings as kube2sky_settings
    assert leader_default and int(leader_default.group(1)) == kube2sky_settings.Settings().leader_ttl


# ---- links: the design notes live in docs/, every relative link resolves

DOC_FILES = ["README.md", "skydns/README.md", "kube2sky/README.md", "healthz/README.md", "bench/README.md",
             *sorted(str(p.relative_to(common.ROOT)) for p in (common.ROOT / "docs").glob("*.md"))]


@pytest.mark.parametrize("path", DOC_FILES)
def test_relative_links_resolve(path):
    doc = common.ROOT / path
    broken = []
    for target in re.findall(r"\]\(([^)\s]+)\)", doc.read_text(encoding="utf-8")):
        if re.match(r"^[a-z]+:", target) or target.startswith("#"):
            continue
        if not (doc.parent / target.split("#", 1)[0]).resolve().exists():
            broken.append(target)
    assert not broken, f"{path}: links to missing files {broken}"


@pytest.mark.parametrize("path", ["README.md", "skydns/README.md", "kube2sky/README.md", "healthz/README.md"])
def test_no_pointer_to_notes_outside_the_repository(path):
    body = (common.ROOT / path).read_text(encoding="utf-8")
    assert "DESIGN.md" not in body and "REFERENCE.md" not in body, f"{path}: point to docs/ instead"


@pytest.mark.parametrize("page", ["records.md", "semantics.md", "cache.md", "deployment.md"])
def test_docs_pages_exist_and_are_linked_from_the_readme(page):
    assert (common.ROOT / "docs" / page).is_file()
    assert f"docs/{page}" in (common.ROOT / "README.md").read_text(encoding="utf-8")
