"""The --manifests DIR source: a folder of YAML standing in for the Kubernetes API.

Rules:
1. Every *.yaml / *.yml / *.json file under DIR (recursively, sorted) is read as multi-document
   YAML. Documents of kind Namespace, Service, EndpointSlice, Endpoints and Pod are kept;
   ``kind: List`` (and any ``*List``) contributes its items; anything else is skipped with a log line.
2. The folder is polled (mtimes, sizes and the file set); any change ends every watch with
   Expired(cause "manifests changed"), so the sync engine relists and reconciles the whole prefix.
3. A file that fails to parse is logged (file and error) and its last good documents are kept,
   so a half-saved file never removes names.
4. Services without spec.clusterIP (and not ExternalName or headless) get one from a local range
   (default 10.96.0.0/12; default/kubernetes gets .1, kube-system/kube-dns gets .10), stable for
   the life of the process. Services with a selector and no EndpointSlice/Endpoints document get an
   EndpointSlice synthesised from the Pod documents that match (status.podIP, Ready condition,
   spec.hostname when spec.subdomain is the service).
5. Implements the k8swatch.Transport protocol; list() and watch() raise only k8swatch errors.
"""

from __future__ import annotations

import copy
import ipaddress
import logging
import os
import threading
from collections.abc import Iterator

import yaml

from kube2sky import k8swatch

logger = logging.getLogger(__name__)

KINDS = ("Namespace", "Service", "EndpointSlice", "Endpoints", "Pod")
SUFFIXES = (".yaml", ".yml", ".json")
NAMESPACED = {"Service", "EndpointSlice", "Endpoints", "Pod"}


def read_documents(path: str) -> list[dict]:
    """All objects of the kinds we read in one file (List items flattened).

    Raises:
        OSError, yaml.YAMLError: unreadable file.
    """
    with open(path, encoding="utf-8") as fh:
        docs = list(yaml.safe_load_all(fh))
    out: list[dict] = []

    def add(doc: object, where: str) -> None:
        if doc is None:
            return
        if not isinstance(doc, dict):
            logger.warning("%s: %s is not a mapping; skipped", path, where)
            return
        kind = doc.get("kind")
        if isinstance(kind, str) and kind.endswith("List") and isinstance(doc.get("items"), list):
            for i, item in enumerate(doc["items"]):
                if isinstance(item, dict) and "kind" not in item and kind[:-4] in KINDS:
                    item = dict(item, kind=kind[:-4])
                add(item, f"{where} item {i}")
            return
        if kind not in KINDS:
            logger.info("%s: %s of kind %r skipped (kube2sky reads %s)", path, where, kind, ", ".join(KINDS))
            return
        meta = doc.get("metadata")
        if not isinstance(meta, dict) or not isinstance(meta.get("name"), str):
            logger.warning("%s: %s (%s) has no metadata.name; skipped", path, where, kind)
            return
        doc = copy.deepcopy(doc)
        if kind in NAMESPACED:
            doc["metadata"].setdefault("namespace", "default")
        out.append(doc)

    for i, doc in enumerate(docs):
        add(doc, f"document {i}")
    return out


class ManifestSource:
    """A k8swatch.Transport over a folder of manifests."""

    def __init__(self, directory: str, poll_interval: float = 1.0, service_cidr: str = "10.96.0.0/12") -> None:
        self.directory = directory
        self.poll_interval = poll_interval
        self.network = ipaddress.ip_network(service_cidr, strict=False)
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._signature: tuple = ()
        self._generation = 0
        self._good: dict[str, list[dict]] = {}  # file -> last good documents
        self._objects: dict[str, list[dict]] = {kind: [] for kind in KINDS}
        self._allocated: dict[tuple[str, str], str] = {}

    # ---- scanning
    def _files(self) -> list[str]:
        found = []
        if os.path.isfile(self.directory):
            return [self.directory]
        for root, dirs, files in os.walk(self.directory):
            dirs[:] = sorted(d for d in dirs if not d.startswith("."))
            for name in sorted(files):
                if name.endswith(SUFFIXES) and not name.startswith("."):
                    found.append(os.path.join(root, name))
        return found

    def signature(self) -> tuple:
        """What changes when any manifest changes (paths, mtimes, sizes)."""
        if not os.path.exists(self.directory):
            raise k8swatch.ApiError(f"manifests folder {self.directory} does not exist")
        sig = []
        for path in self._files():
            try:
                st = os.stat(path)
            except OSError:
                continue
            sig.append((path, st.st_mtime_ns, st.st_size))
        return tuple(sig)

    def load(self) -> None:
        """Re-read the folder if it changed since the last load."""
        with self._lock:
            sig = self.signature()
            if sig == self._signature and self._generation:
                return
            files = [entry[0] for entry in sig]
            for path in files:
                try:
                    self._good[path] = read_documents(path)
                except (OSError, yaml.YAMLError, UnicodeDecodeError) as err:
                    logger.error("manifest %s cannot be read, keeping its last good version: %s", path,
                                 " ".join(str(err).split()))
            for gone in set(self._good) - set(files):
                del self._good[gone]
            objects: dict[str, dict[tuple[str, str], dict]] = {kind: {} for kind in KINDS}
            for path in files:
                for doc in self._good.get(path, ()):
                    meta = doc["metadata"]
                    key = (meta.get("namespace", ""), meta["name"])
                    if key in objects[doc["kind"]]:
                        logger.warning("manifest %s: %s %s/%s defined twice; the later one wins", path,
                                       doc["kind"], *key)
                    objects[doc["kind"]][key] = doc
            self._assign_cluster_ips(objects["Service"])
            self._synthesise_slices(objects)
            self._generation += 1
            rv = str(self._generation)
            for kind in KINDS:
                items = []
                for doc in objects[kind].values():
                    doc = copy.deepcopy(doc)
                    doc["metadata"]["resourceVersion"] = rv
                    items.append(doc)
                self._objects[kind] = items
            self._signature = sig
            logger.info("manifests %s loaded (%d files): %s", self.directory, len(files),
                        ", ".join(f"{len(self._objects[k])} {k}" for k in KINDS))

    def _assign_cluster_ips(self, services: dict[tuple[str, str], dict]) -> None:
        used = set()
        wanted = []
        for key, svc in sorted(services.items()):
            spec = svc.setdefault("spec", {}) if isinstance(svc.get("spec", {}), dict) else None
            if spec is None:
                continue
            if spec.get("type") == "ExternalName" or spec.get("clusterIP") or spec.get("clusterIPs"):
                for ip in [spec.get("clusterIP"), *(spec.get("clusterIPs") or [])]:
                    if isinstance(ip, str):
                        used.add(ip)
                continue
            wanted.append((key, spec))
        used.update(ip for k, ip in self._allocated.items())
        hosts = self.network.hosts()
        fixed = {("default", "kubernetes"): 1, ("kube-system", "kube-dns"): 10}
        reserved = {str(self.network.network_address + offset) for offset in fixed.values()}
        for key, spec in wanted:
            ip = self._allocated.get(key)
            if ip is None and key in fixed:
                candidate = str(self.network.network_address + fixed[key])
                if candidate not in used:
                    ip = candidate
            while ip is None:
                candidate = str(next(hosts))
                if candidate in used or candidate in reserved:
                    continue
                ip = candidate
            self._allocated[key] = ip
            used.add(ip)
            spec["clusterIP"] = ip
            spec["clusterIPs"] = [ip]

    @staticmethod
    def _synthesise_slices(objects: dict[str, dict[tuple[str, str], dict]]) -> None:
        covered = {(k[0], (d["metadata"].get("labels") or {}).get("kubernetes.io/service-name", ""))
                   for k, d in objects["EndpointSlice"].items()}
        covered |= set(objects["Endpoints"])
        for (ns, name), svc in objects["Service"].items():
            spec = svc.get("spec") or {}
            selector = spec.get("selector")
            if (ns, name) in covered or not isinstance(selector, dict) or not selector:
                continue
            endpoints = []
            for (pns, _), pod in sorted(objects["Pod"].items()):
                labels = (pod.get("metadata") or {}).get("labels") or {}
                status = pod.get("status") or {}
                ip = status.get("podIP")
                if pns != ns or not ip or any(labels.get(k) != v for k, v in selector.items()):
                    continue
                conditions = {c.get("type"): c.get("status") for c in status.get("conditions") or () if isinstance(c, dict)}
                ready = conditions.get("Ready", "True") == "True" and status.get("phase", "Running") == "Running"
                ep: dict = {"addresses": [ip], "conditions": {"ready": ready}}
                pspec = pod.get("spec") or {}
                if pspec.get("hostname") and pspec.get("subdomain") == name:
                    ep["hostname"] = pspec["hostname"]
                endpoints.append(ep)
            if not endpoints:
                continue
            ports = []
            for p in spec.get("ports") or ():
                if isinstance(p, dict):
                    target = p.get("targetPort", p.get("port"))
                    ports.append({"name": p.get("name", ""), "protocol": p.get("protocol", "TCP"),
                                  "port": target if isinstance(target, int) else p.get("port")})
            family = "IPv6" if ":" in endpoints[0]["addresses"][0] else "IPv4"
            slice_name = f"{name}-manifests"
            objects["EndpointSlice"][(ns, slice_name)] = {
                "kind": "EndpointSlice", "apiVersion": "discovery.k8s.io/v1",
                "metadata": {"name": slice_name, "namespace": ns,
                             "labels": {"kubernetes.io/service-name": name}},
                "addressType": family, "endpoints": endpoints, "ports": ports}

    # ---- k8swatch.Transport
    def list(self, resource: k8swatch.Resource, on_page=None) -> tuple[list[dict], str]:
        """Everything of a kind (read at once: no pages, ``on_page`` is not called)."""
        if resource.kind not in KINDS:
            raise k8swatch.NotServed(f"manifests hold no {resource.plural}")
        self.load()
        with self._lock:
            return copy.deepcopy(self._objects[resource.kind]), str(self._generation)

    def watch(self, resource: k8swatch.Resource, resource_version: str) -> Iterator[dict]:
        with self._lock:
            if resource_version != str(self._generation):
                raise k8swatch.Expired("manifests changed", cause="manifests changed")
            sig = self._signature
        while not self._stop.wait(self.poll_interval):
            if self.signature() != sig:
                raise k8swatch.Expired("manifests changed", cause="manifests changed")
            with self._lock:
                if resource_version != str(self._generation):
                    raise k8swatch.Expired("manifests changed", cause="manifests changed")
        return
        yield  # pragma: no cover - makes this a generator

    def served(self, resource: k8swatch.Resource) -> bool:
        return resource.kind in KINDS

    def stop(self) -> None:
        self._stop.set()
