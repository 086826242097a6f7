"""skydns metrics: Prometheus names prefixed ``skydns_``, labels shaped like CoreDNS's.

Rules:
1. The per-packet path never touches a prometheus_client object. It bumps plain ints in
   ``DNS`` (a :class:`DnsStats`); a custom collector turns them into metric families only when
   /metrics is scraped. That keeps the cost per query to a few dict updates.
2. Everything that happens rarely (mirror events, reconnects, forwarder health) uses ordinary
   prometheus_client objects defined here, so every name lives in one file and the README
   can list them.
3. Other helpers may append their own metric objects at the end of this file, each in its
   own delimited section.
4. Everything is registered in ``prometheus_client.REGISTRY`` (the default registry, which
   also carries the process_* and python_* collectors); ``render()`` exposes it.
5. No ``*_created`` series anywhere (prometheus_client.disable_created_metrics()): the
   counters built from plain ints have none, so neither do the others. kube2sky and healthz
   follow the same rule (their CLIs turn them off).
6. ``skydns_build_info{version}`` carries the installed package version (``VERSION``).

DNS metrics (CoreDNS equivalent in brackets):
- skydns_dns_requests_total{server,zone,proto,family,type}   [coredns_dns_requests_total]
- skydns_dns_responses_total{server,zone,rcode}              [coredns_dns_responses_total]
- skydns_dns_request_duration_seconds{server,zone,type}      [coredns_dns_request_duration_seconds]
- skydns_dns_request_size_bytes{server,zone,proto}           [coredns_dns_request_size_bytes]
- skydns_dns_response_size_bytes{server,zone,proto}          [coredns_dns_response_size_bytes]
- skydns_dns_dropped_total{server,reason}                    packets not answered (short, QR=1, ...)
- skydns_cache_hits_total{cache}, skydns_cache_misses_total{cache}, skydns_cache_entries{cache}
                                                             [coredns_cache_hits_total ...]
- skydns_cache_size_bytes{cache}                             what a cache holds, as its byte
                                                             budget counts it (--answer-cache-mib,
                                                             --cache-mib)
- skydns_panics_total                                        [coredns_panics_total]
"""

from __future__ import annotations

import bisect
import importlib.metadata
from collections.abc import Callable, Iterator

import prometheus_client
from prometheus_client import core

NAMESPACE = "skydns"

prometheus_client.disable_created_metrics()


def _version() -> str:
    try:
        return importlib.metadata.version("kube-skydns")
    except importlib.metadata.PackageNotFoundError:
        return "unknown"


# The installed kube-skydns version ("0.1.0"): build_info's label and the start-up log line.
VERSION = _version()

# CoreDNS plugin/metrics/vars: exponential buckets 0.25 ms .. 8.192 s.
DURATION_BUCKETS: tuple[float, ...] = tuple(0.00025 * 2**i for i in range(16))
# CoreDNS plugin/metrics/vars: request/response size buckets, bytes.
SIZE_BUCKETS: tuple[float, ...] = (
    0, 100, 200, 300, 400, 511, 1023, 2047, 4095, 8291, 16000, 32000, 48000, 64000,
)

# Query types reported by name; every other type is counted as "other" (CoreDNS does the same).
_TYPE_NAMES = {
    1: "A", 2: "NS", 5: "CNAME", 6: "SOA", 12: "PTR", 13: "HINFO", 15: "MX", 16: "TXT",
    28: "AAAA", 33: "SRV", 35: "NAPTR", 43: "DS", 48: "DNSKEY", 64: "SVCB", 65: "HTTPS",
    99: "SPF", 251: "IXFR", 252: "AXFR", 255: "ANY", 257: "CAA",
}
_RCODE_NAMES = {
    0: "NOERROR", 1: "FORMERR", 2: "SERVFAIL", 3: "NXDOMAIN", 4: "NOTIMP", 5: "REFUSED",
    6: "YXDOMAIN", 7: "YXRRSET", 8: "NXRRSET", 9: "NOTAUTH", 10: "NOTZONE", 16: "BADVERS",
}


def type_label(qtype: int) -> str:
    """The ``type`` label of a query type: its mnemonic for common types, else "other"."""
    return _TYPE_NAMES.get(qtype, "other")


def rcode_label(rcode: int) -> str:
    """The ``rcode`` label: the mnemonic, or the number for unassigned codes."""
    return _RCODE_NAMES.get(rcode, str(rcode))


def _size_table() -> bytes:
    """size (0..65535 bytes) -> index of its SIZE_BUCKETS bucket, one byte each."""
    return bytes(bisect.bisect_left(SIZE_BUCKETS, size) for size in range(65536))


_SIZE_BUCKET = _size_table()


class _Histogram:
    """A plain bucket counter; exported by the collector. Not thread-safe (one event loop)."""

    __slots__ = ("bounds", "counts", "total")

    def __init__(self, bounds: tuple[float, ...]) -> None:
        self.bounds = bounds
        self.counts = [0] * (len(bounds) + 1)
        self.total = 0.0

    def observe(self, value: float) -> None:
        self.counts[bisect.bisect_left(self.bounds, value)] += 1
        self.total += value

    def buckets(self) -> list[tuple[str, float]]:
        out = []
        running = 0
        for bound, count in zip(self.bounds, self.counts):
            running += count
            out.append((prometheus_client.utils.floatToGoString(bound), running))
        running += self.counts[-1]
        out.append(("+Inf", running))
        return out


def observe_all(histograms: list[_Histogram], value: float) -> None:
    """One observation of value in each of histograms (all with ``DURATION_BUCKETS``)."""
    index = bisect.bisect_left(DURATION_BUCKETS, value)
    for hist in histograms:
        hist.counts[index] += 1
        hist.total += value


def observe_counted(histograms: dict[_Histogram, int], value: float) -> None:
    """``n`` observations of value in each histogram of ``{histogram: n}`` (``DURATION_BUCKETS``)."""
    index = bisect.bisect_left(DURATION_BUCKETS, value)
    for hist, times in histograms.items():
        hist.counts[index] += times
        hist.total += value * times


class DnsStats:
    """Hot-path counters of one process, folded into metric families at scrape time.

    One call per answered query, ``answered()``: a dict update keyed by (zone, proto, family,
    type, rcode, request size bucket, response size bucket) holding [count, request bytes,
    response bytes], plus one duration observation. Every key part is from a small set, so
    the dict stays small whatever the traffic. ``server`` is the listen address as CoreDNS
    writes it ("dns://127.0.0.1:53").
    """

    def __init__(self) -> None:
        self.server = "dns://:53"
        self.events: dict[tuple[str, str, str, str, int, int, int], list[int]] = {}
        self.durations: dict[tuple[str, str], _Histogram] = {}      # (zone, type)
        self.dropped: dict[str, int] = {}
        self.cache_hits: dict[str, int] = {}
        self.cache_misses: dict[str, int] = {}
        self.cache_entries: dict[str, int] = {}
        # cache -> a function giving the bytes it holds by its budget's count (read at scrape time)
        self.cache_bytes: dict[str, Callable[[], int]] = {}
        self.panics = 0
        self.epoch = 0

    def reset(self) -> None:
        """Forget every count (tests); counters handed out by answered() go stale (epoch)."""
        server, epoch = self.server, self.epoch
        self.__init__()  # type: ignore[misc]
        self.server = server
        self.epoch = epoch + 1

    def answered(self, zone: str, proto: str, family: str, qtype: int, rcode: int,
                 request_size: int, response_size: int, seconds: float) -> tuple[list[int], _Histogram]:
        """Count one request and its response: sizes in bytes, time taken in seconds.

        Returns the counters it updated: a caller answering the very same bytes again may
        update them directly (``counts[0] += 1``, sizes, ``hist.observe``) while ``epoch`` is
        unchanged.
        """
        qtype_label = _TYPE_NAMES.get(qtype, "other")
        key = (zone, proto, family, qtype_label, rcode,
               _SIZE_BUCKET[request_size & 0xFFFF], _SIZE_BUCKET[response_size & 0xFFFF])
        counts = self.events.get(key)
        if counts is None:
            counts = self.events[key] = [0, 0, 0]
        counts[0] += 1
        counts[1] += request_size
        counts[2] += response_size
        hist = self.durations.get((zone, qtype_label))
        if hist is None:
            hist = self.durations[(zone, qtype_label)] = _Histogram(DURATION_BUCKETS)
        hist.observe(seconds)
        return counts, hist

    def drop(self, reason: str) -> None:
        """Count a packet that got no answer (reason: short, response, ...)."""
        self.dropped[reason] = self.dropped.get(reason, 0) + 1

    def hit(self, cache: str) -> None:
        self.cache_hits[cache] = self.cache_hits.get(cache, 0) + 1

    def miss(self, cache: str) -> None:
        self.cache_misses[cache] = self.cache_misses.get(cache, 0) + 1

    def panic(self) -> None:
        """Count an exception caught at a packet handler's edge."""
        self.panics += 1

    # -- folded views (scrape time and tests) ------------------------------------------------

    def requests(self) -> dict[tuple[str, str, str, str], int]:
        """(zone, proto, family, type) -> requests."""
        out: dict[tuple[str, str, str, str], int] = {}
        for (zone, proto, family, qtype, _rc, _qb, _rb), counts in list(self.events.items()):
            key = (zone, proto, family, qtype)
            out[key] = out.get(key, 0) + counts[0]
        return out

    def responses(self) -> dict[tuple[str, str], int]:
        """(zone, rcode name) -> responses."""
        out: dict[tuple[str, str], int] = {}
        for (zone, _proto, _family, _qtype, rcode, _qb, _rb), counts in list(self.events.items()):
            key = (zone, _RCODE_NAMES.get(rcode) or str(rcode))
            out[key] = out.get(key, 0) + counts[0]
        return out

    def sizes(self, response: bool) -> dict[tuple[str, str], tuple[list[int], int]]:
        """(zone, proto) -> (count per SIZE_BUCKETS bucket incl. +Inf, byte sum)."""
        out: dict[tuple[str, str], tuple[list[int], int]] = {}
        for (zone, proto, _family, _qtype, _rc, qb, rb), counts in list(self.events.items()):
            key = (zone, proto)
            if key not in out:
                out[key] = ([0] * (len(SIZE_BUCKETS) + 1), 0)
            buckets, total = out[key]
            buckets[rb if response else qb] += counts[0]
            out[key] = (buckets, total + (counts[2] if response else counts[1]))
        return out


DNS = DnsStats()


def _size_family(name: str, doc: str, data: dict[tuple[str, str], tuple[list[int], int]],
                 server: str) -> core.HistogramMetricFamily:
    family = core.HistogramMetricFamily(name, doc, labels=["server", "zone", "proto"])
    for key, (counts, total) in data.items():
        running = 0
        buckets = []
        for bound, count in zip(SIZE_BUCKETS, counts):
            running += count
            buckets.append((prometheus_client.utils.floatToGoString(bound), running))
        buckets.append(("+Inf", running + counts[-1]))
        family.add_metric([server, *key], buckets, total)
    return family


def _counts_family(kind: type, name: str, doc: str, labels: list[str], counts: dict,
                   server: str) -> core.Metric:
    """A counter or gauge family from plain counts keyed by one label value or a tuple of them."""
    family = kind(name, doc, labels=["server", *labels])
    for key, n in list(counts.items()):
        family.add_metric([server, *(key if isinstance(key, tuple) else (key,))], n)
    return family


class _DnsCollector:
    """Turns DNS (the plain counters) into metric families at scrape time."""

    def __init__(self, stats: DnsStats) -> None:
        self.stats = stats

    def describe(self) -> list:  # no description up front: collected lazily
        return []

    def collect(self) -> Iterator[core.Metric]:
        s = self.stats
        server = s.server
        yield _counts_family(
            core.CounterMetricFamily, f"{NAMESPACE}_dns_requests",
            "DNS requests answered, by zone, protocol, family and query type.",
            ["zone", "proto", "family", "type"], s.requests(), server)
        yield _counts_family(
            core.CounterMetricFamily, f"{NAMESPACE}_dns_responses", "DNS responses sent, by zone and rcode.",
            ["zone", "rcode"], s.responses(), server)
        fam = core.HistogramMetricFamily(
            f"{NAMESPACE}_dns_request_duration_seconds", "Time to answer a request, seconds.",
            labels=["server", "zone", "type"])
        for key, hist in list(s.durations.items()):
            fam.add_metric([server, *key], hist.buckets(), hist.total)
        yield fam
        yield _size_family(f"{NAMESPACE}_dns_request_size_bytes", "Size of answered requests, bytes.",
                           s.sizes(response=False), server)
        yield _size_family(f"{NAMESPACE}_dns_response_size_bytes", "Size of sent responses, bytes.",
                           s.sizes(response=True), server)
        yield _counts_family(
            core.CounterMetricFamily, f"{NAMESPACE}_dns_dropped", "Packets dropped without an answer, by reason.",
            ["reason"], s.dropped, server)
        yield _counts_family(
            core.CounterMetricFamily, f"{NAMESPACE}_cache_hits", "Answers served from a cache, by cache.",
            ["cache"], s.cache_hits, server)
        yield _counts_family(
            core.CounterMetricFamily, f"{NAMESPACE}_cache_misses", "Cache lookups that missed, by cache.",
            ["cache"], s.cache_misses, server)
        yield _counts_family(
            core.GaugeMetricFamily, f"{NAMESPACE}_cache_entries", "Entries held in a cache, by cache.",
            ["cache"], s.cache_entries, server)
        yield _counts_family(
            core.GaugeMetricFamily, f"{NAMESPACE}_cache_size_bytes",
            "Bytes held in a cache as its byte budget counts them (--answer-cache-mib, --cache-mib), by cache.",
            ["cache"], {cache: held() for cache, held in list(s.cache_bytes.items())}, server)
        fam = core.CounterMetricFamily(
            f"{NAMESPACE}_panics", "Exceptions caught at a packet handler (answered SERVFAIL or dropped).")
        fam.add_metric([], s.panics)
        yield fam


prometheus_client.REGISTRY.register(_DnsCollector(DNS))

# --- etcd mirror (updated by skydns.etcdwatch) ----------------------------------------------

etcd_keys = prometheus_client.Gauge(
    f"{NAMESPACE}_etcd_keys", "Good records held in the in-memory mirror of the etcd prefix.")
etcd_revision = prometheus_client.Gauge(
    f"{NAMESPACE}_etcd_revision", "etcd revision the mirror reflects (the SOA serial).")
etcd_last_event_timestamp_seconds = prometheus_client.Gauge(
    f"{NAMESPACE}_etcd_last_event_timestamp_seconds",
    "Unix time of the last list or watch event applied to the mirror, seconds.")
etcd_watch_reconnects = prometheus_client.Counter(
    f"{NAMESPACE}_etcd_watch_reconnects", "Times the etcd list/watch was restarted (errors, compaction).")
etcd_bad_values = prometheus_client.Counter(
    f"{NAMESPACE}_etcd_bad_values", "etcd values skipped because they are not valid SkyDNS JSON.")
etcd_ready = prometheus_client.Gauge(
    f"{NAMESPACE}_etcd_ready", "1 once the first full load of the etcd prefix is done, else 0.")

# --- build info -------------------------------------------------------------------------------

build_info = prometheus_client.Gauge(
    f"{NAMESPACE}_build_info", "Always 1; the version label is the kube-skydns package version.", ["version"])


def render() -> tuple[bytes, str]:
    """The /metrics body and its content type."""
    return prometheus_client.generate_latest(prometheus_client.REGISTRY), prometheus_client.CONTENT_TYPE_LATEST

# --- forwarding (FORWARD helper; used by skydns.forwarding) -----------------------------------
# The forwarded-answer cache reports through DNS above as cache="forward" (hits, misses, entries;
# served-stale answers count as hits of cache="forward_stale").

forward_requests = prometheus_client.Counter(
    f"{NAMESPACE}_forward_requests", "Queries sent to an upstream, by upstream.", ["to"])
forward_responses = prometheus_client.Counter(
    f"{NAMESPACE}_forward_responses", "Replies received from an upstream, by upstream and rcode.", ["to", "rcode"])
forward_duration = prometheus_client.Histogram(
    f"{NAMESPACE}_forward_request_duration_seconds", "Time of one upstream exchange, seconds.", ["to"],
    buckets=DURATION_BUCKETS)
forward_healthcheck_failures = prometheus_client.Counter(
    f"{NAMESPACE}_forward_healthcheck_failures", "Failed '. IN NS' checks of a down upstream.", ["to"])
forward_upstream_healthy = prometheus_client.Gauge(
    f"{NAMESPACE}_forward_upstream_healthy", "1 while an upstream is considered healthy, else 0.", ["to"])
forward_max_concurrent_rejects = prometheus_client.Counter(
    f"{NAMESPACE}_forward_max_concurrent_rejects", "Queries answered REFUSED because --max-concurrent was reached.")
forward_loop_detected = prometheus_client.Gauge(
    f"{NAMESPACE}_forward_loop_detected", "1 when the last loop check found that an upstream forwards back to us.",
    ["to"])
forward_loop_probes_received = prometheus_client.Counter(
    f"{NAMESPACE}_forward_loop_probes_received", "Loop-check probe queries (*.loop-check.) that reached this server.")
hosts_entries = prometheus_client.Gauge(
    f"{NAMESPACE}_hosts_entries", "Names loaded from the --hosts file.")
# --- end of forwarding section ----------------------------------------------------------------

# --- etcd mirror connection (MIRROR helper; used by skydns.etcdwatch) -------------------------

etcd_connected = prometheus_client.Gauge(
    f"{NAMESPACE}_etcd_connected",
    "1 while the etcd list/watch is healthy (the mirror follows etcd), 0 while reconnecting "
    "(the mirror keeps serving its last good data).")
