"""skydns settings: one frozen value built by the CLI; every default lives here.

PURE: no I/O. The CLI validates and converts flags into this; app.run() takes it.
"""

from __future__ import annotations

import dataclasses
import re

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
    # TTL of those generated pod answers, seconds: kube2sky's record TTL (one TTL for cluster
    # answers; CoreDNS's stock Corefile: ttl 30).
    pods_ttl: int = 30
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
    # Graceful stop: keep answering this long after SIGTERM while /ready says 503, seconds
    # (CoreDNS health lameduck 5s).
    lameduck: float = 5.0
    # Reconnect schedule for etcd, seconds; the last value repeats.
    backoff: tuple[float, ...] = (0.1, 0.2, 0.5, 1.0, 2.0, 5.0)

    # ---- forwarding, forwarded-answer cache, loop check, hosts file (FORWARD helper) ----
    # Order in which upstreams are tried: "random", "round_robin" or "sequential".
    # Empty: follow ns_rotate (true -> round_robin, false -> sequential), as SkyDNS did.
    forward_policy: str = ""
    # Most distinct upstream exchanges in flight; beyond it queries get REFUSED (CoreDNS
    # stock Corefile: 1000). 0 means no limit.
    max_concurrent: int = 1000
    # Consecutive failures after which an upstream is marked down (CoreDNS max_fails 2).
    forward_max_fails: int = 2
    # How often a down upstream is checked with ". IN NS", seconds (CoreDNS 0.5 s).
    forward_health_interval: float = 0.5
    # Upstream rcodes that make us try the next upstream (numeric: 1 FORMERR, 2 SERVFAIL,
    # 4 NOTIMP, 5 REFUSED; add 3 NXDOMAIN when one of the upstreams cannot resolve public names).
    forward_failover_rcodes: tuple[int, ...] = (1, 2, 4, 5)
    # Whole time one forwarded query may take across all upstreams, seconds (CoreDNS 5 s).
    forward_deadline: float = 5.0
    # Stub domains: (domain, upstreams) pairs; the longest matching suffix wins.
    stub_domains: tuple[tuple[str, tuple[Upstream, ...]], ...] = ()
    # Cache of forwarded answers: entries (0 turns it off), positive TTL cap and negative TTL
    # cap (SOA minimum otherwise), seconds.
    cache_size: int = 10000
    cache_max_ttl: int = 3600
    cache_max_negative_ttl: int = 30
    # Most memory the forwarded answers take, MiB (fwdcache rule 4): 3/4 for the answers, 1/4
    # for their encoded replies; the least recently used go first. Counted in deploy/sizing.py.
    cache_mib: int = 16
    # Serve an expired cached answer for up to this long after expiry when every upstream
    # fails, seconds (RFC 8767; 0 turns it off).
    cache_serve_stale: float = 3600.0
    # A query every upstream failed (or answered SERVFAIL) is answered SERVFAIL without asking
    # again for this long, seconds (CoreDNS cache: 5 s; 0 turns it off).
    servfail_cache_ttl: float = 5.0
    # Loop check: a random HINFO probe through each upstream at start and then this often,
    # seconds (0 turns it off).
    loop_check_interval: float = 60.0
    # Hosts file answered before forwarding ("" = none), its record TTL (seconds) and how
    # often it is checked for changes (seconds).
    hosts_file: str = ""
    hosts_ttl: int = 3600
    hosts_reload: float = 5.0
    # /ready also needs at least one healthy upstream (a detected loop always makes it fail).
    ready_requires_upstream: bool = False

    # ---- etcd mirror (MIRROR helper) ----
    # Deadline of one etcd request (a page of the list, opening the watch) and of the answer
    # to a watch probe, seconds.
    etcd_timeout: float = 5.0
    # A quiet watch is probed (etcd progress request) this often; no answer within
    # etcd_timeout means the connection is dead (a frozen or partitioned etcd), seconds.
    etcd_watch_check: float = 5.0
    # Keys of the first range request when listing the prefix (one consistent revision for all
    # pages; the rest comes in pages of at least this many keys): big enough that decoding it
    # takes about as long as etcd takes to serve the next page.
    etcd_page_size: int = 16384

    # ---- serving edge (SERVER helper) ----
    # Encoded answers of local names kept for the hot path (0 turns the cache off: every query
    # is parsed and rendered by dnspython; for benchmarks and debugging).
    answer_cache_size: int = 10000
    # Most memory those answers take, MiB: the answer bytes and what each entry costs beside
    # them (transport rule 3e); the oldest go first. Counted in deploy/sizing.py's skydns.
    answer_cache_mib: int = 16
    # A TCP connection with no complete query for this long is closed, seconds.
    tcp_idle_timeout: float = 10.0
    # Most TCP connections open at once; when full, the least recently active one is closed
    # to admit a new one.
    tcp_max_connections: int = 1000
    # Receive buffer asked for the UDP socket (SO_RCVBUF), bytes; the kernel caps it at
    # net.core.rmem_max (the default 208 KiB holds about 0.2 s of a query flood). 0: leave it.
    udp_rcvbuf: int = 4 * 1024 * 1024
    # Most UDP datagrams read (recvmmsg) and answered (sendmmsg) per system call on Linux
    # (skydns/udpbatch.py); 0: one per call, through the event loop's datagram transport.
    udp_batch: int = 64
    # Answer the cached hits of a UDP batch with the compiled loop (skydns/_hits.c) when it is
    # built; False: the Python loop it mirrors (the same answers, more CPU per query).
    compiled_hits: bool = True
    # Log level name: debug, info, warning, error.
    log_level: str = "info"


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
