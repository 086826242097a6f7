"""Shared loaders for the deployment tests: the repo's files as data.

Rules: read files only (no cluster, no Docker); every loader returns plain Python data.
"""

from __future__ import annotations

import pathlib

import yaml

ROOT = pathlib.Path(__file__).resolve().parents[2]
MANIFESTS = ROOT / "manifests"
COMPOSE = ROOT / "docker-compose.yml"
DOCKERFILE = ROOT / "Dockerfile"
DOCKERIGNORE = ROOT / ".dockerignore"
DEPLOY_DOC = ROOT / "README.md"
SETUP_CFG = ROOT / "setup.cfg"

MANIFEST_FILES = ("rbac.yaml", "skydns-svc.yaml", "skydns-rc.yaml", "skydns-deployment.yaml")
# The shared topology (deploy/render.py --topology shared --replicas 2 --out-dir manifests/shared).
SHARED = MANIFESTS / "shared"
SHARED_FILES = ("rbac.yaml", "skydns-svc.yaml", "etcd.yaml", "etcd-setup.yaml", "kube2sky.yaml", "skydns.yaml")
SHARED_REPLICAS = 2
CONTROLLER_FILES = ("skydns-rc.yaml", "skydns-deployment.yaml")
# Containers built from this repo: container name == package == console script.
DAEMONS = ("kube2sky", "skydns", "healthz")


def load_docs(path: pathlib.Path) -> list[dict]:
    """Every non-empty YAML document of a file."""
    with path.open(encoding="utf-8") as f:
        return [doc for doc in yaml.safe_load_all(f) if doc is not None]


def manifest(name: str) -> list[dict]:
    return load_docs(MANIFESTS / name)


def controller(name: str) -> dict:
    """The single controller object (RC or Deployment) of a controller file."""
    (doc,) = manifest(name)
    return doc


def pod_spec(name: str) -> dict:
    return controller(name)["spec"]["template"]["spec"]


def containers(name: str) -> dict[str, dict]:
    """Container name -> container of a controller file's pod."""
    return {c["name"]: c for c in pod_spec(name)["containers"]}


def container_argv(container: dict) -> list[str]:
    """command + args of a manifest container."""
    return [*container.get("command", []), *container.get("args", [])]


def compose() -> dict:
    (doc,) = load_docs(COMPOSE)
    return doc


def shared(name: str) -> list[dict]:
    """The documents of a manifests/shared/ file."""
    return load_docs(SHARED / name)


def shared_containers(name: str, kind: str) -> dict[str, dict]:
    """Container name -> container of the one `kind` object of a manifests/shared/ file."""
    (obj,) = [d for d in shared(name) if d["kind"] == kind]
    return {c["name"]: c for c in obj["spec"]["template"]["spec"]["containers"]}


def by_kind(docs: list[dict]) -> dict[str, dict]:
    return {doc["kind"]: doc for doc in docs}
