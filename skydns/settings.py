"""skydns settings: one frozen value built by the CLI; every default lives here.

PURE: no I/O. The CLI validates and converts flags into this; app.run() takes it.
"""

from __future__ import annotations

import dataclasses

from skydns import msg


@dataclasses.dataclass(frozen=True, slots=True)
class Upstream:
    """One forwarder address."""

    host: str
    port: int = 53

    def __str__(self) -> str:
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"


@dataclasses.dataclass(frozen=True, slots=True)
class Settings:
    """Everything skydns needs to run.

    Times are seconds, sizes bytes.
    """

    # Served zones, lower-case, fully qualified ("cluster.local."). Reverse zones
    # (in-addr.arpa., ip6.arpa.) are always answered from /<prefix>/arpa when records exist.
    domains: tuple[str, ...] = ("skydns.local.",)
    # UDP and TCP listen address.
    addr_host: str = "127.0.0.1"
    addr_port: int = 53
    # etcd endpoints as host:port pairs (http:// and https:// accepted on the CLI).
    etcd_endpoints: tuple[str, ...] = ("127.0.0.1:2379",)
    etcd_ca_cert: str = ""
    etcd_tls_pem: str = ""
    etcd_tls_key: str = ""
    # Key prefix of the records in etcd, without slashes ("skydns" -> /skydns/...).
    prefix: str = msg.DEFAULT_PREFIX
    # Upstream resolvers for every name outside the served zones; empty with no_rec -> SERVFAIL.
    nameservers: tuple[Upstream, ...] = ()
    # Start forwarded queries at a rotating upstream (SkyDNS -ns-rotate). Off: always the first.
    ns_rotate: bool = True
    # Never forward: names outside our zones get SERVFAIL.
    no_rec: bool = False
    # Shuffle A/AAAA answers (CNAMEs stay first).
    round_robin: bool = True
    # Per-upstream timeout for one forwarded query, seconds.
    forward_timeout: float = 2.0
    # Default TTL of records without one, seconds (CoreDNS etcd plugin: 300).
    ttl: int = 300
    # TTL of the SOA in NXDOMAIN/NODATA answers and the SOA minimum, seconds.
    negative_ttl: int = 30
    # Priority given to records without one (SkyDNS default 10).
    default_priority: int = 10
    # Most answer records in one reply; keeps a query for a whole zone cheap.
    max_answers: int = 1000
    # Our EDNS0 UDP payload size, bytes (DNS flag day 2020 value).
    edns_payload: int = 1232
    # Pod records a-b-c-d.<ns>.pod.<zone>: "disabled" (served only if in etcd) or "insecure"
    # (answered by parsing the name).
    pods: str = "disabled"
    # Answer ANY queries minimally (RFC 8482) instead of REFUSED.
    any_minimal: bool = True
    # HTTP server for /metrics, /health and /ready; empty host means all addresses.
    http_host: str = "0.0.0.0"
    http_port: int = 9153
    # Processes sharing the DNS port with SO_REUSEPORT.
    workers: int = 1
    # Version reported to CHAOS version.bind queries.
    version: str = "kube-skydns"
    # Hostmaster mailbox of the SOA, as a name; empty -> hostmaster.<zone>.
    hostmaster: str = ""
    # Graceful stop: keep answering this long after SIGTERM while /ready says 503, seconds.
    lameduck: float = 0.0
    # Reconnect schedule for etcd, seconds; the last value repeats.
    backoff: tuple[float, ...] = (0.1, 0.2, 0.5, 1.0, 2.0, 5.0)
