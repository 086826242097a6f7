"""kube2sky settings: one frozen value built by the CLI; every default lives here.

PURE: no I/O, imports nothing from the project. The CLI validates and converts flags into
this; ``app.run()`` takes it. Times are seconds. Other modules append fields (append only,
so positional construction never shifts).
"""

from __future__ import annotations

import dataclasses
import enum
import functools
import re


class PodsMode(str, enum.Enum):
    """Which pod records kube2sky writes (``--pods``)."""

    # No pod records at all.
    DISABLED = "disabled"
    # a-b-c-d.<ns>.pod.<zone> for every running pod IP (kube2sky 1.12's pod records).
    VERIFIED = "verified"


class EndpointSource(str, enum.Enum):
    """Where headless services' endpoints come from (``--endpoint-source``)."""

    # EndpointSlices when the API serves discovery.k8s.io/v1, else core/v1 Endpoints.
    AUTO = "auto"
    ENDPOINTSLICES = "endpointslices"
    ENDPOINTS = "endpoints"


# Namespaces whose legacy name <svc>.<ns>.<zone> would land in a subtree kube2sky or skydns
# uses for something else: svc and pod (the spec's subtrees), dns (ns.dns.<zone>,
# apex.dns.<zone>) and dns-version (the schema TXT record).
RESERVED_LEGACY_NAMESPACES = frozenset({"svc", "pod", "dns", "dns-version"})


@dataclasses.dataclass(frozen=True, slots=True)
class Settings:
    """Everything kube2sky needs to run."""

    # ---- records (records.py) ----
    # Cluster zone, lower-case, fully qualified (kube2sky --domain, default cluster.local).
    domain: str = "cluster.local."
    # etcd key prefix of the records, without slashes ("skydns" -> /skydns/...).
    prefix: str = "skydns"
    # TTL written into every record, seconds (kube2sky wrote 30).
    ttl: int = 30
    # Priority and weight written into every record (kube2sky wrote 10 and 10).
    priority: int = 10
    weight: int = 10
    # Also publish <svc>.<ns>.<zone> (the pre-spec kube2sky name); never for the namespaces
    # in RESERVED_LEGACY_NAMESPACES.
    legacy_names: bool = True
    # Pod records a-b-c-d.<ns>.pod.<zone>.
    pods: PodsMode = PodsMode.DISABLED
    # Publish only these namespaces; empty means all.
    namespaces: frozenset[str] = frozenset()
    # "<namespace>/<name>" of the cluster DNS service; its ClusterIPs become ns.dns.<zone>.
    # Empty: no ns.dns records.
    dns_service: str = "kube-system/kube-dns"
    # Schema version published as TXT at dns-version.<zone> (DNS spec 1.1.0).
    schema_version: str = "1.1.0"
    # Named ports per service that get SRV records; the rest are skipped with a log line.
    max_ports_per_service: int = 256
    # Records per service (A/AAAA, SRV, PTR together); beyond it the service is cut to a
    # deterministic subset with a log line (keeps one huge headless service from flooding etcd).
    max_records_per_service: int = 20000
    # Where endpoints come from.
    endpoint_source: EndpointSource = EndpointSource.AUTO

    # ---- etcd (etcdwriter.py) ----
    # etcd endpoints: "host:port" (plain text) or "https://host:port" (TLS).
    etcd_endpoints: tuple[str, ...] = ("127.0.0.1:2379",)
    # etcd client TLS, PEM files (--etcd-cafile, --etcd-certfile, --etcd-keyfile). Any of them
    # turns TLS on for every endpoint; without a CA file the system roots verify the server.
    etcd_cafile: str = ""
    etcd_certfile: str = ""
    etcd_keyfile: str = ""
    # Most operations in one etcd transaction; etcd's --max-txn-ops defaults to 128.
    max_txn_ops: int = 128
    # Timeout of one etcd request, seconds (kube2sky --etcd-mutation-timeout; never fatal here).
    etcd_mutation_timeout: float = 10.0
    # Retry schedule for API and etcd errors, seconds; the last value repeats.
    backoff: tuple[float, ...] = (0.1, 0.2, 0.5, 1.0, 2.0, 5.0, 10.0, 30.0)
    # Elect one writer among replicas with an etcd lease.
    leader_elect: bool = False
    # Print the records instead of writing them.
    dry_run: bool = False

    # ---- health (app.py) ----
    # HTTP port for /readiness, /healthz and /metrics (kube2sky --healthz-port).
    healthz_port: int = 8081
    healthz_host: str = "0.0.0.0"

    # ---- Kubernetes API (k8swatch.py) ----
    # API server URL (kube2sky --kube-master-url); empty -> kubeconfig or in-cluster.
    kube_master_url: str = ""
    # kubeconfig file (kube2sky --kubecfg-file, or KUBECONFIG).
    kubecfg_file: str = ""
    # Bearer token file and CA bundle used with kube_master_url.
    kube_token_file: str = ""
    kube_ca_file: str = ""

    # ---- sources and lifecycle (app.py, k8swatch.py, manifests.py, leader.py) ----
    # Folder (or file) of YAML manifests read instead of the Kubernetes API; "" = use the API.
    manifests: str = ""
    # Seconds between scans of the manifests folder for changes.
    manifests_poll: float = 1.0
    # Range from which manifest Services without a clusterIP get one (so the demo resolves).
    service_cidr: str = "10.96.0.0/12"
    # Skip TLS verification of the API server certificate (test clusters only).
    kube_insecure: bool = False
    # Seconds a watch request lasts before the server ends it; re-watched from the last
    # resourceVersion (the API server caps it anyway).
    watch_timeout: int = 300
    # etcd key naming the leader with leader_elect; "" = /<prefix>-leader/kube2sky (outside
    # the records prefix, so reconciling never touches it).
    leader_key: str = ""
    # Lease TTL of the leader key, seconds: a dead leader is replaced within about this.
    leader_ttl: int = 15
    # Seconds allowed for in-flight work after SIGTERM/SIGINT (keep below the pod's
    # terminationGracePeriodSeconds).
    grace_period: float = 5.0
    # Seconds between full syncs with nothing else to do (re-read etcd, repair any drift such as
    # an etcd restored from an old backup or keys deleted by hand); 0 turns it off.
    resync_period: float = 300.0

    @property
    def zone(self) -> str:
        """The cluster zone, lower-case and fully qualified (``cluster.local.``)."""
        return _zone(self.domain)

    @property
    def dns_service_ref(self) -> tuple[str, str] | None:
        """``dns_service`` as (namespace, name), or None when unset or malformed."""
        ns, sep, name = self.dns_service.strip().partition("/")
        if not sep or not ns or not name:
            return None
        return ns, name

    def publishes(self, namespace: str) -> bool:
        """Whether objects of this namespace are published (``--namespaces``)."""
        return not self.namespaces or namespace in self.namespaces


@functools.lru_cache(maxsize=16)
def _zone(domain: str) -> str:
    zone = domain.strip().lower().rstrip(".")
    return zone + "." if zone else "."


# ---- durations (flags) ----
# A Go/CoreDNS duration ("5s", "500ms", "1m30s", "1.5h") or plain seconds ("5", "0.5").
# The same grammar is parsed by kube2sky.settings and healthz.settings (the import contracts
# keep the three packages apart); tests/test_durations.py holds them equal.
_DURATION_PART = re.compile(r"(\d+(?:\.\d*)?|\.\d+)(ns|us|µs|ms|s|m|h)")
_DURATION_UNITS = {"ns": 1e-9, "us": 1e-6, "µs": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0, "h": 3600.0}


def parse_duration(text: str) -> float:
    """A Go duration ("5s", "500ms", "1m30s") or plain seconds ("5", "0.5") -> seconds.

    Raises ValueError with a one-line message naming the text.
    """
    value = str(text).strip()
    if not value:
        raise ValueError("empty duration; use e.g. 5s, 500ms, 1m30s or seconds")
    try:
        seconds = float(value)
    except ValueError:
        pos, seconds = 0, 0.0
        for match in _DURATION_PART.finditer(value):
            if match.start() != pos:
                break
            seconds += float(match.group(1)) * _DURATION_UNITS[match.group(2)]
            pos = match.end()
        if pos != len(value) or pos == 0:
            raise ValueError(f"{text!r} is not a duration; use e.g. 5s, 500ms, 1m30s or seconds") from None
    if seconds < 0 or seconds != seconds or seconds == float("inf"):
        raise ValueError(f"{text!r} is not a duration; it must be finite and >= 0")
    return seconds
