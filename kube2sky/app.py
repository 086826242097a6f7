"""kube2sky's wiring: sources -> desired records -> etcd, with health, metrics and shutdown.

Rules (DESIGN section 4, STYLE 5.7):
1. Level-triggered. Watch threads (k8swatch.follow, one per kind) put Listed/Changed events on
   an asyncio queue. The engine keeps the latest (trimmed, immutable) objects and, per owner
   (a service with its slices, a pod, the cluster records), the inputs whose records it last
   committed (`written`, references to the same objects). No record and no etcd content is
   held: records are a pure function of the objects and are rebuilt when needed (issue 12:
   10,000 services + 100,000 endpoints in well under 150 MiB). A change of endpoints only
   builds the endpoints that went and came (records.headless_delta); other changes rebuild
   the written records and the new ones, and big services keep the 4-byte leaf labels of
   their last build for that, so the rebuild hashes nothing.
2. Writes: a changed owner commits build(written inputs) -> build(current inputs) as one diff
   (puts and deletes together); many owners are packed into transactions below
   --max-txn-ops, an owner is never split unless it alone is bigger. Never delete-then-add.
3. Foreground full sync at start and after a leader change: read the prefix page by page
   keeping only 64-bit digests of (key, value), rebuild everything, put what etcd lacks,
   delete kube2sky's orphans (reconcile ownership rule), log progress. At a start, etcd is
   read while the objects are still listed (as etcd was then: what changes there meanwhile
   is left to the next verify, as for any change during a read).
3a. A first start into an empty prefix (one Range of a single key says so, before the
   listings end) needs no comparison: the sync is skipped and each page of the first
   listings is applied as it arrives (k8swatch rule 1), its owners written at once as in 2.
   etcd writes while the API is still read. An owner written from part of its slices is
   written again as a diff when the rest come; the Listed that ends a listing decides (an
   object a retried listing no longer holds is deleted like any other). Ready as in 7.
4. Relists (410, watch error, manifests changed), etcd errors and --resync-period: the
   difference between the new objects and what was written is committed first (a Service
   created during an API-server restart is in etcd right after the relist), then etcd is
   verified in the background (the same comparison as 3: orphans, hand-edits, lost writes)
   while changes keep being written; owners found lacking records, and owners that changed
   during the verify, are rewritten in full afterwards.
5. etcd errors are never fatal: the changed owners are kept, the attempt is logged with the
   retry it will make (#n in Xs), and a background verify follows.
6. With --leader-elect only the holder of the leader key writes (each write is guarded).
7. Ready (GET /readiness 200 "ok") after the first full sync (3a: once every kind is listed
   and written; a standby replica: after its first listings, while its election reaches etcd). SIGTERM/SIGINT set one stop event; everything ends within grace_period.
8. Bad objects are logged with their namespace/name and counted; they never stop the engine.
   A value under the prefix that is not a record (bad JSON, 1e400, NaN...) is never fatal:
   kube2sky overwrites it when it wants that key, else leaves it as not its own; the first
   few per sync are logged, all are counted (kube2sky_bad_etcd_values_total).
9. A build that raises (a bug, not bad input: bad input is skipped and reported by records)
   never costs the records etcd already holds for that owner: the error is logged and counted
   (kube2sky_invalid_objects_total; the traceback at most once per 5 minutes per object), a
   change of the owner writes nothing and leaves what was written as it was, and a sync or
   verify keeps every key of the owner's names (a service's name and legacy name and what is
   below them, keys whose record points into them, such as its PTRs; a pod's names; the
   cluster records) until the owner builds again.
"""

from __future__ import annotations

import array
import asyncio
import bisect
import collections
import heapq
import contextlib
import ctypes
import gc
import json
import logging
import random
import signal
import sys
import threading
import time

import prometheus_client

from kube2sky import etcdwriter, k8swatch, leader, objects, reconcile, records
from kube2sky import settings as settings_mod
from skydns import msg

logger = logging.getLogger(__name__)

# ---------------------------------------------------------------- metrics (kube2sky_*)

REGISTRY = prometheus_client.CollectorRegistry(auto_describe=True)
EVENTS = prometheus_client.Counter(
    "kube2sky_events_total", "Watch events received, by kind and type.", ["kind", "type"], registry=REGISTRY)
INVALID = prometheus_client.Counter(
    "kube2sky_invalid_objects_total", "Objects skipped because they cannot be read.", ["kind"], registry=REGISTRY)
PROBLEMS = prometheus_client.Counter(
    "kube2sky_skipped_records_total", "Parts of objects not published (bad IP, unnamed port...).",
    registry=REGISTRY)
RELISTS = prometheus_client.Counter(
    "kube2sky_relists_total", "Full listings of a kind, by cause (start, 410 Gone, watch error...).",
    ["kind", "cause"], registry=REGISTRY)
API_ERRORS = prometheus_client.Counter(
    "kube2sky_api_errors_total", "Failed list/watch requests.", ["kind", "operation"], registry=REGISTRY)
ETCD_WRITES = prometheus_client.Counter(
    "kube2sky_etcd_writes_total", "Keys written to etcd, by operation (put, delete).", ["operation"],
    registry=REGISTRY)
ETCD_TXNS = prometheus_client.Counter(
    "kube2sky_etcd_transactions_total", "Transactions committed.", registry=REGISTRY)
ETCD_ERRORS = prometheus_client.Counter(
    "kube2sky_etcd_errors_total", "Failed etcd operations, by operation.", ["operation"], registry=REGISTRY)
SYNC_DURATION = prometheus_client.Histogram(
    "kube2sky_sync_duration_seconds",
    "Duration of full syncs and verifies (read etcd, reconcile, write), and of a first sync into an empty etcd.",
    buckets=(0.01, 0.05, 0.1, 0.5, 1, 2, 5, 10, 30, 60, 120, 300), registry=REGISTRY)
LATENCY = prometheus_client.Histogram(
    "kube2sky_programming_latency_seconds", "API event received -> its records committed in etcd.",
    buckets=(0.001, 0.0025, 0.005, 0.0075, 0.01, 0.015, 0.02, 0.025, 0.03, 0.04, 0.05, 0.1, 0.25, 0.5, 1,
             2.5, 5, 10, 30, 60), registry=REGISTRY)
KEYS = prometheus_client.Gauge(
    "kube2sky_keys_managed", "Keys kube2sky wants in etcd (desired records).", registry=REGISTRY)
OBJECTS = prometheus_client.Gauge(
    "kube2sky_objects", "Objects held, by kind.", ["kind"], registry=REGISTRY)
LEADER = prometheus_client.Gauge(
    "kube2sky_leader", "1 when this replica may write (always 1 without --leader-elect).", registry=REGISTRY)
BAD_VALUES = prometheus_client.Counter(
    "kube2sky_bad_etcd_values_total", "Values under the prefix that are not records (left alone), per verify.",
    registry=REGISTRY)
READY = prometheus_client.Gauge(
    "kube2sky_ready", "1 after the first full sync.", registry=REGISTRY)


# ---------------------------------------------------------------- the engine

CLUSTER = ("cluster",)
# Owners built between two yields to the event loop in a background verify (keeps the
# programming latency of changes low while the whole cluster is rebuilt).
_VERIFY_CHUNK = 16
# Owners built together in a foreground sync (nothing else runs): their leaf labels are hashed
# in one batch, which pays from a few thousand values on (about 30 records per owner).
_SYNC_CHUNK = 256
# The same for new owners written as they come (rule 3a: alongside the listing's pages, whose
# decoded JSON is alive at the same time): kube2sky's peak RSS at 10k services + 100k endpoints
# was 157-159 MiB with 256, 143 MiB with 64.
_DIRTY_CHUNK = 64
# Requests in flight at once when many keys are written (each up to 4,096 puts or _CALL_BYTES), and
# the size of one: etcd refuses requests over --max-request-bytes (1.5 MiB by default). Eight
# keep about half a second of etcd's work queued while the next chunk of owners is built: at
# 10k services + 100k endpoints the sync took 5.3-5.6 s instead of 6.4-6.9 s with four
# (and chunks of 512 owners), on a quiet machine.
_PIPELINE_CALLS = 8
_CALL_BYTES = 1 << 20
# Results of recent builds kept (owners, and records per result at most): for an owner that
# changes again and again (a flapping endpoint); 64 held ~5 MiB at 100-endpoint services.
_RECENT_OWNERS = 8
_RECENT_MAX_RECORDS = 4096
# Services with at least this many hashed leaves keep the leaf labels of the records last
# built for them (4 bytes each, with the inputs they belong to): rebuilding the records last
# written for a change then hashes nothing, and the new build hashes only the new values
# (hashing was half of a 100-endpoint service's build; ~1.2 MB at 100,000 endpoints).
_MIN_LABELLED = 32
# Lines logged per sync about bad values under the prefix (the rest are counted).
_BAD_VALUE_LOG_LIMIT = 5
# A build that raises is logged with its traceback at most once per this many seconds per
# owner (rule 9: every verify rebuilds it); the owners remembered for that, at most.
_BUILD_LOG_INTERVAL = 300
_BUILD_LOGGED_MOST = 1024


# The collector's thresholds for the whole process (Python's default is 700, 10, 10): a large
# cluster's listing and first sync allocate millions of long-lived objects, and the default
# walks them over and over (about 1.5 s of a 10k + 100k first sync).
_GC_THRESHOLDS = (50_000, 50, 100)


# Seconds the collector may stay off while the first sync has not ended (settle in main).
_NO_GC_LIMIT = 60.0
# Seconds after the first full sync before settle_heap() runs.
_SETTLE_DELAY = 1.0


def settle_heap() -> None:
    """After a full sync: collect once, then move every surviving object into the collector's
    permanent generation (gc.freeze: later collections never walk the cluster's objects
    again, no collector pause grows with the cluster), and hand freed pages back to the
    system (glibc's malloc_trim; the listing's pages are garbage now)."""
    gc.collect()
    gc.freeze()
    trim_malloc()


def _libc():
    try:
        return ctypes.CDLL("libc.so.6")
    except OSError:
        return None


def trim_malloc() -> None:
    """glibc's malloc_trim(0) (every arena's free pages back to the system), where there is
    a glibc."""
    libc = _libc()
    if libc is not None and hasattr(libc, "malloc_trim"):
        libc.malloc_trim(0)


# glibc's mallopt(M_ARENA_MAX, n): the watch threads list whole kinds; each thread would
# otherwise get an arena of its own whose freed pages the main thread never reuses.
_M_ARENA_MAX = -8
_ARENA_MAX = 2


def limit_arenas() -> None:
    """At most _ARENA_MAX malloc arenas (before threads start), where there is a glibc."""
    libc = _libc()
    if libc is not None and hasattr(libc, "mallopt"):
        libc.mallopt(_M_ARENA_MAX, _ARENA_MAX)


def _digest(key: str, value: str) -> int:
    """A 64-bit digest of one (key, value) (Python's string hash: stable within the process)."""
    return hash((key, value))


class Digests:
    """A sorted array of 64-bit digests and where each value of its top 16 bits starts in it:
    a lookup bisects the few entries of one bucket (about 3x faster than a bisect of the
    whole array at 337,000 keys, for 512 KiB)."""

    _SHIFT = 48
    _BUCKETS = 1 << 16

    _MIN_INDEXED = 8192  # below, a plain bisect (the index costs ~65,000 bisects to build)

    def __init__(self, values: array.array) -> None:
        self.values = values
        half = self._BUCKETS // 2
        self.starts = array.array("q", [bisect.bisect_left(values, b << self._SHIFT)
                                         for b in range(-half, half + 1)]) if len(values) >= self._MIN_INDEXED else None

    def find(self, digest: int) -> int:
        """The index of digest in the array, or -1."""
        if self.starts is None:
            lo, hi = 0, len(self.values)
        else:
            b = (digest >> self._SHIFT) + self._BUCKETS // 2
            lo, hi = self.starts[b], self.starts[b + 1]
        i = bisect.bisect_left(self.values, digest, lo, hi)
        return i if i < hi and self.values[i] == digest else -1


class Engine:
    """Objects -> records -> etcd. Driven by run(); state changes only in apply().

    What it keeps (compact; DESIGN 4, issue 12): the trimmed objects, and per owner (a
    service, a pod, the cluster records) the inputs whose records it last committed
    (``written``: references to the same immutable objects, no copy of any record). The
    records are rebuilt when needed: a change commits build(written inputs) -> build(current
    inputs) as one diff; a verify rebuilds everything and compares digests with etcd.
    """

    def __init__(self, settings: settings_mod.Settings, store, election: leader.Election | None = None,
                 kinds: tuple[k8swatch.Resource, ...] = (k8swatch.SERVICES,), rng: random.Random | None = None,
                 clock=time.monotonic) -> None:
        self.settings = settings
        self.store = store
        self.election = election
        self.kinds = kinds
        self.rng = rng or random.Random()
        self.clock = clock
        self.prefix = "/" + settings.prefix.strip("/") + "/"
        self.owned = reconcile.ownership(settings)
        self.services: dict[tuple[str, str], objects.Service] = {}
        self.slices: dict[tuple[str, str, str], objects.EndpointSlice] = {}  # (kind, ns, name)
        self.slices_by_service: dict[tuple[str, str], set[tuple[str, str, str]]] = {}
        self.pods: dict[tuple[str, str], objects.Pod] = {}
        self.pod_ips: dict[tuple[str, str], set[str]] = {}  # (ns, ip) -> pods holding it (hostNetwork)
        # owner -> the inputs whose records are in etcd (None: nothing written)
        self.written: dict[tuple, object] = {}
        self.dirty: dict[tuple, float] = {}  # owner -> when its first unwritten change arrived
        self.force: set[tuple] = set()  # owners whose every record is put (etcd may lack some)
        self.full: str | None = "start"  # a foreground sync is due: start, leader change
        self.early: bool | None = None  # a first start into an empty prefix (None: not known yet)
        self.early_started = 0.0
        self._prefetch: asyncio.Future | None = None  # etcd's digests, read while listing (rule 3)
        self.verify_due: str | None = None  # a background verify is due (its cause)
        self.full_received: float | None = None
        self.verifying: set[tuple] | None = None  # owners changed while a verify runs
        self.verify_task: asyncio.Task | None = None
        self.not_ours: set[int] = set()  # digests of values under the prefix that are not ours
        self.n_keys = 0
        self.listed: set[str] = set()
        self.synced = False
        self.synced_event = asyncio.Event()
        self.wake = asyncio.Event()
        self.attempt = 0
        self.next_resync = 0.0
        self._bad_logged = 0
        self._build_logged: dict[tuple, float] = {}  # owner -> when its failed build was logged
        self._recent: collections.OrderedDict[tuple, tuple[object, records.Result]] = collections.OrderedDict()
        # svc owner -> (inputs, the leaf labels of build(inputs)'s hashed values, in order);
        # used only for those very inputs (identity: objects are immutable, builds pure)
        self._labels: dict[tuple, tuple[object, array.array]] = {}
        self._touch(CLUSTER, None)

    # ---- inputs and records (pure bookkeeping; no I/O)
    def owners(self) -> list[tuple]:
        """Every owner that may have records now."""
        out = [CLUSTER]
        out += [("svc", *ref) for ref in sorted(self.services)]
        out += [("pod", *ref) for ref in sorted(self.pods)]
        return out

    def inputs(self, owner: tuple):
        """What an owner's records are built from, now (None when it has none)."""
        if owner[0] == "svc":
            ref = owner[1], owner[2]
            svc = self.services.get(ref)
            if svc is None:
                return None
            keys = self.slices_by_service.get(ref)
            return svc, tuple(self.slices[k] for k in sorted(keys)) if keys else ()
        if owner[0] == "pod":
            return self.pods.get((owner[1], owner[2]))
        ref = self.settings.dns_service_ref
        return ("cluster", self.services.get(ref) if ref else None)

    def build(self, owner: tuple, inputs) -> records.Result:
        """The records of an owner for the given inputs; never raises (a failure is logged,
        counted and gives no records)."""
        if inputs is None:
            return records.Result()
        try:
            if owner[0] == "svc":
                return records.build_service(inputs[0], inputs[1], self.settings)
            if owner[0] == "pod":
                return records.build_pod(inputs, self.settings)
            return records.build_cluster(inputs[1], self.settings)
        except Exception:  # noqa: BLE001 - one object never stops the engine
            now = self.clock()
            if now - self._build_logged.get(owner, -_BUILD_LOG_INTERVAL) >= _BUILD_LOG_INTERVAL:
                if len(self._build_logged) >= _BUILD_LOGGED_MOST:
                    self._build_logged.clear()
                self._build_logged[owner] = now
                logger.exception("cannot compute the records of %s; what etcd holds of it is kept (rule 9; "
                                 "logged once per %ds per object)", "/".join(owner), _BUILD_LOG_INTERVAL)
            INVALID.labels({"svc": "Service", "pod": "Pod"}.get(owner[0], owner[0])).inc()
            return records.Result(failed=True)

    def owner_names(self, owner: tuple, inputs) -> tuple[str, ...]:
        """The names whose records belong to an owner (rule 9), lower-case, fully qualified."""
        settings = self.settings
        if owner[0] == "svc":
            ns, name = owner[1], owner[2]
            legacy = records.legacy_name(ns, name, settings)
            return (records.service_name(ns, name, settings),) + ((legacy,) if legacy else ())
        if owner[0] == "pod":
            pod = inputs if inputs is not None else self.pods.get((owner[1], owner[2]))
            ips = pod.ips if pod is not None else ()
            return tuple(records.pod_name(owner[1], ip, settings) for ip in ips)
        return records.cluster_names(settings)

    def build_all(self, owners: list[tuple], remember: bool = False) -> list[tuple[tuple, object, records.Result]]:
        """(owner, inputs, records) of many owners, services hashed in one batch; with
        ``remember``, big services keep their leaf labels (see _labels)."""
        out = []
        svc_items, svc_owners = [], []
        for owner in owners:
            inputs = self.inputs(owner)
            if owner[0] == "svc" and inputs is not None:
                svc_items.append(inputs)
                svc_owners.append((owner, inputs))
            else:
                out.append((owner, inputs, self.build(owner, inputs)))
        if svc_items:
            try:
                labelled = records.build_services_labelled(svc_items, self.settings)
            except Exception:  # noqa: BLE001 - fall back to one by one (logs the culprit)
                labelled = [(self.build(owner, inputs), None) for owner, inputs in svc_owners]
            results = [result for result, _ in labelled]
            if remember:
                for (owner, inputs), (_, hashes) in zip(svc_owners, labelled):
                    self._remember(owner, inputs, hashes)
            out += [(owner, inputs, result) for (owner, inputs), result in zip(svc_owners, results)]
        return out

    def desired(self) -> dict[str, str]:
        """Everything kube2sky wants in etcd now (key -> JSON value); for tests and tools."""
        out: dict[str, str] = {}
        for _, _, result in self.build_all(self.owners()):
            out.update(result.values)
        return out

    def held(self, kind: str, ns: str, name: str):
        """The object of that kind and name the engine holds, or None."""
        if kind == "Service":
            return self.services.get((ns, name))
        if kind == "Pod":
            return self.pods.get((ns, name))
        return self.slices.get((kind, ns, name))

    def _touch(self, owner: tuple, received: float | None) -> None:
        now = received if received is not None else self.clock()
        if owner not in self.dirty or now < self.dirty[owner]:
            self.dirty[owner] = now
        if self.verifying is not None:
            self.verifying.add(owner)
        if owner[0] == "svc" and (owner[1], owner[2]) == self.settings.dns_service_ref:
            self._touch(CLUSTER, received)

    def _parse(self, kind: str, raw, previous=None):
        """The object (None when invalid: logged and counted); ``previous``: the slice of that
        name held now (its unchanged endpoints are reused, see records.headless_delta)."""
        if not isinstance(raw, dict):
            return raw  # already parsed (a transport that trims objects as it lists)
        try:
            if kind == "EndpointSlice" and previous is not None:
                return objects.parse_endpoint_slice(raw, previous)
            return objects.parse(kind, raw)
        except objects.Invalid as err:
            logger.warning("skipped invalid object: %s", err)
            INVALID.labels(kind).inc()
            return None

    @staticmethod
    def _parse_quietly(kind: str, raw):
        """The object, or None when invalid (the Listed that follows logs and counts it)."""
        if not isinstance(raw, dict):
            return raw
        try:
            return objects.parse(kind, raw)
        except objects.Invalid:
            return None

    def _put_slice(self, key: tuple[str, str, str], eps: objects.EndpointSlice | None) -> set[tuple[str, str]]:
        """Store or remove a slice; return the services it touched."""
        touched = set()
        old = self.slices.pop(key, None)
        if old is not None:
            ref = old.service_ref
            touched.add(ref)
            members = self.slices_by_service.get(ref)
            if members is not None:
                members.discard(key)
                if not members:
                    del self.slices_by_service[ref]
        if eps is not None:
            self.slices[key] = eps
            if eps.service:
                self.slices_by_service.setdefault(eps.service_ref, set()).add(key)
                touched.add(eps.service_ref)
        return touched

    def _put_pod(self, ref: tuple[str, str], pod: objects.Pod | None) -> None:
        old = self.pods.pop(ref, None)
        for ip in old.ips if old is not None else ():
            holders = self.pod_ips.get((ref[0], ip))
            if holders is not None:
                holders.discard(ref[1])
                if not holders:
                    del self.pod_ips[(ref[0], ip)]
        if pod is not None:
            self.pods[ref] = pod
            for ip in pod.ips:
                self.pod_ips.setdefault((ref[0], ip), set()).add(ref[1])

    def _pod_ip_wanted(self, ns: str, ip: str, but: str) -> bool:
        """Whether a pod other than ``but`` publishes ip (hostNetwork pods share the node's)."""
        for name in self.pod_ips.get((ns, ip), ()):
            if name != but and self.build(("pod", ns, name), self.pods.get((ns, name))).values:
                return True
        return False

    def apply(self, event: k8swatch.Event) -> None:
        """Take one event from a source into the state; mark the owners it touched."""
        kind = event.resource.kind
        if isinstance(event, k8swatch.Page):
            if kind not in self.listed:  # the first listing's pages, as they come (rule 3a)
                for raw in event.items:
                    obj = self._parse_quietly(kind, raw)
                    if obj is not None:
                        self._apply_one(kind, obj.ns, obj.name, obj, event.received)
        elif isinstance(event, k8swatch.Listed):
            RELISTS.labels(kind, event.cause).inc()
            self._replace(kind, event.items, event.received)
            first = kind not in self.listed
            self.listed.add(kind)
            if not first or self.synced:
                # the difference is written first (dirty owners), then etcd is verified
                self.verify_due = self.verify_due or f"relist of {event.resource.plural} ({event.cause})"
                self.full_received = min(self.full_received or event.received, event.received)
        else:
            EVENTS.labels(kind, event.type).inc()
            ns, name = objects.ref(event.obj)
            parsed = None if event.type == "DELETED" else self._parse(kind, event.obj, self.slices.get((kind, ns, name)))
            if parsed is not None or event.type == "DELETED":
                self._apply_one(kind, ns, name, parsed, event.received)
        OBJECTS.labels("Service").set(len(self.services))
        OBJECTS.labels("EndpointSlice").set(len(self.slices))
        OBJECTS.labels("Pod").set(len(self.pods))
        self.wake.set()

    def safe_apply(self, event: k8swatch.Event) -> None:
        try:
            self.apply(event)
        except Exception:  # noqa: BLE001 - a bad event never stops the engine
            logger.exception("event skipped: %.300r", event)

    def _apply_one(self, kind: str, ns: str, name: str, parsed, received: float) -> None:
        if kind == "Service":
            if parsed is None:
                self.services.pop((ns, name), None)
            else:
                self.services[(ns, name)] = parsed
            self._touch(("svc", ns, name), received)
        elif kind in ("EndpointSlice", "Endpoints"):
            for ref in self._put_slice((kind, ns, name), parsed):
                self._touch(("svc", *ref), received)
        elif kind == "Pod":
            self._put_pod((ns, name), parsed)
            self._touch(("pod", ns, name), received)

    def _replace(self, kind: str, items: tuple, received: float) -> None:
        parsed = {}
        for raw in items:
            obj = self._parse(kind, raw)
            if obj is not None:
                parsed[(obj.ns, obj.name)] = obj
        if kind == "Service":
            # an object equal to the one held stays the same object (what `written` points to)
            refs = _changed(self.services, parsed)
            self.services = {ref: (obj if ref in refs else self.services[ref]) for ref, obj in parsed.items()}
            for ref in sorted(refs):
                self._touch(("svc", *ref), received)
        elif kind in ("EndpointSlice", "Endpoints"):
            touched: set[tuple[str, str]] = set()
            for key in [k for k in self.slices if k[0] == kind and (k[1], k[2]) not in parsed]:
                touched |= self._put_slice(key, None)
            for ref, eps in parsed.items():
                if self.slices.get((kind, *ref)) != eps:
                    touched |= self._put_slice((kind, *ref), eps)
            for ref in sorted(touched):
                self._touch(("svc", *ref), received)
        elif kind == "Pod":
            refs = _changed(self.pods, parsed)
            for ref in sorted(refs):
                self._put_pod(ref, parsed.get(ref))
                self._touch(("pod", *ref), received)

    # ---- writing
    @property
    def may_write(self) -> bool:
        return self.election is None or self.election.is_leader

    @property
    def all_listed(self) -> bool:
        return all(r.kind in self.listed for r in self.kinds)

    def _guard(self) -> etcdwriter.Guard | None:
        return self.election.guard if self.election is not None else None

    async def _commit(self, plan: reconcile.Plan) -> None:
        rev = await self.store.commit(plan, guard=self._guard())
        ETCD_TXNS.inc()
        ETCD_WRITES.labels("put").inc(len(plan.puts))
        ETCD_WRITES.labels("delete").inc(len(plan.deletes))
        logger.debug("committed %d puts, %d deletes at revision %s", len(plan.puts), len(plan.deletes), rev)

    async def _commit_all(self, plans: list[reconcile.Plan]) -> None:
        """Several plans in one request (nested transactions, all or nothing)."""
        if len(plans) == 1:
            await self._commit(plans[0])
            return
        rev = await self.store.commit_all(plans, guard=self._guard())
        ETCD_TXNS.inc()
        ETCD_WRITES.labels("put").inc(sum(len(p.puts) for p in plans))
        ETCD_WRITES.labels("delete").inc(sum(len(p.deletes) for p in plans))
        logger.debug("committed %d transactions in one request at revision %s", len(plans), rev)

    def _remember(self, owner: tuple, inputs, hashes: list[str] | None) -> None:
        """Keep the leaf labels of build(inputs) of a big service (or forget the owner's)."""
        if hashes is not None and inputs is not None and len(hashes) >= _MIN_LABELLED:
            self._labels[owner] = (inputs, array.array("I", [int(h, 16) for h in hashes]))
        else:
            self._labels.pop(owner, None)

    def _build_labelled(self, owner: tuple, inputs, memo: dict[str, str] | None,
                        last: bool) -> tuple[records.Result, dict[str, str] | None]:
        """build() of a service using its kept labels (when they are of these very inputs)
        and ``memo``; returns the records and, unless ``last``, its labels as a memo for the
        next build; with ``last``, the labels are kept for the owner."""
        stored = self._labels.get(owner)
        labels = stored[1] if stored is not None and stored[0] is inputs else None
        try:
            result, todo, hashes = records.build_service_labelled(inputs[0], inputs[1], self.settings,
                                                                  labels, memo)
        except Exception:  # noqa: BLE001 - build() logs and counts it
            self._labels.pop(owner, None)
            return self.build(owner, inputs), None
        if last:
            if labels is None:
                self._remember(owner, inputs, hashes)
            return result, None
        return result, dict(zip(todo, hashes))

    def _built(self, owner: tuple, inputs, memo: dict[str, str] | None = None,
               last: bool = True) -> tuple[records.Result, dict[str, str] | None]:
        """build(), remembering the last few results: a change's "new" records are the next
        change's "old" ones (an endpoint flapping in a big headless service builds once).
        Services go through _build_labelled (same records, less hashing)."""
        hit = self._recent.get(owner)
        if hit is not None and hit[0] == inputs:
            self._recent.move_to_end(owner)
            return hit[1], None
        if owner[0] == "svc" and inputs is not None:
            result, known = self._build_labelled(owner, inputs, memo, last)
        else:
            result, known = self.build(owner, inputs), None
            if owner[0] == "svc":
                self._labels.pop(owner, None)
        if len(result.values) <= _RECENT_MAX_RECORDS:
            self._recent[owner] = (inputs, result)
            while len(self._recent) > _RECENT_OWNERS:
                self._recent.popitem(last=False)
        return result, known

    def _owner_plan(self, owner: tuple) -> tuple[object, reconcile.Plan | None, int]:
        """(current inputs, the plan from what was written to them, change in key count); the
        plan is None when the new records cannot be computed (rule 9)."""
        inputs = self.inputs(owner)
        written = self.written.get(owner)
        if (owner[0] == "svc" and inputs is not None and written is not None and written is not inputs
                and owner not in self.force):
            try:
                delta = records.headless_delta(written, inputs, self.settings)
            except Exception:  # noqa: BLE001 - the full builds below log and count it
                delta = None
            if delta is not None:  # only the changed endpoints were built (records rule 5)
                self._labels.pop(owner, None)  # kept for the written inputs, which are going
                _report(delta.problems)
                return inputs, reconcile.Plan(tuple(sorted(delta.puts.items())), tuple(sorted(delta.deletes))), \
                    delta.count
        memo = None
        if owner in self.written:
            built, memo = self._built(owner, self.written.get(owner), last=False)
            old = built.values
        else:
            old = {}
        result, _ = self._built(owner, inputs, memo)
        if result.failed:
            return inputs, None, 0  # rule 9: what was written stays
        _report(result.problems)
        new = result.values
        force = owner in self.force
        puts = [(k, v) for k, v in new.items() if force or old.get(k) != v]
        deletes = [k for k in old if k not in new]
        if owner[0] == "pod" and deletes:  # another pod (hostNetwork) may hold the same address
            deletes = [k for k in deletes if not self._pod_ip_wanted(owner[1], _host_of(old[k]), owner[2])]
        return inputs, reconcile.Plan(tuple(sorted(puts)), tuple(sorted(deletes))), len(new) - len(old)

    def _dirty_plans(self):
        """(owner, received, inputs, plan, change in key count) of every dirty owner. Owners
        never written (nothing of theirs in etcd: a first start into an empty prefix, new
        services) put all their records, built _DIRTY_CHUNK at a time (services hashed in one
        batch); the others commit the diff from what was written (_owner_plan)."""
        owners = list(self.dirty)
        fresh = [o for o in owners if o not in self.written and o not in self.force]
        for start in range(0, len(fresh), _DIRTY_CHUNK):
            for owner, inputs, result in self.build_all(fresh[start:start + _DIRTY_CHUNK], remember=True):
                _report(result.problems)
                values = result.values
                yield owner, self.dirty[owner], inputs, reconcile.Plan(tuple(sorted(values.items()))), len(values)
        fresh_set = set(fresh)
        for owner in owners:
            if owner not in fresh_set:
                inputs, plan, delta = self._owner_plan(owner)
                yield owner, self.dirty[owner], inputs, plan, delta

    async def sync_dirty(self) -> None:
        """Write every dirty owner (_dirty_plans), owners packed into requests of nested
        transactions (etcdwriter.nesting: an owner's changes are in one request, all or
        nothing, unless it alone is bigger than a request, then its parts go in order, puts
        first), a few requests in flight."""
        limit = max(1, self.settings.max_txn_ops)
        outer, inner = etcdwriter.nesting(limit)
        prefix = self.settings.prefix
        plans: list[reconcile.Plan] = []
        done: list[tuple[tuple, float, object, int]] = []
        size = 0
        inflight = _InFlight()

        async def send(call: list[reconcile.Plan], owners: list[tuple[tuple, float, object, int]]) -> None:
            async def commit() -> None:
                await self._commit_all(call)
                self._written(owners)

            await inflight.send(commit())

        async def flush() -> None:
            nonlocal plans, done, size
            if plans:
                call, owners = plans, done
                plans, done, size = [], [], 0
                await send(call, owners)

        try:
            for owner, received, inputs, plan, delta in self._dirty_plans():
                entry = (owner, received, inputs, delta)
                if plan is None:
                    # rule 9: nothing is written and what was written stays; the next change
                    # of the owner (or a verify) tries again
                    self.dirty.pop(owner, None)
                    continue
                if not plan:
                    # an owner never written that has no records stays unwritten (nothing of
                    # its is in etcd): a headless service listed before its slices is then
                    # written in the batch of new owners once they come
                    self._written([entry], keep=owner in self.written)
                    continue
                n = len(plan)
                n_bytes = sum(len(k) + len(v) for k, v in plan.puts) + sum(map(len, plan.deletes))
                if n <= inner:
                    parts = [plan]
                elif n <= limit:
                    await flush()  # one flat transaction, alone in its request
                    await send([plan], [entry])
                    continue
                else:  # one request holds it: any split will do (puts first)
                    parts = _split_plan(plan, inner)
                if len(parts) > outer or n_bytes > _CALL_BYTES:
                    # bigger than a request: its transactions one after the other, puts first
                    await flush()
                    await inflight.wait()
                    for part in reconcile.chunk(plan, limit, prefix):
                        await self._commit(part)
                    self._written([entry])
                    continue
                if plans and (len(plans) + len(parts) > outer or size + n_bytes > _CALL_BYTES):
                    await flush()
                plans += parts
                done.append(entry)
                size += n_bytes
                if n <= 16 and plan.puts:
                    logger.debug("%s: %d puts, %d deletes", "/".join(owner[1:]) or owner[0],
                                 len(plan.puts), len(plan.deletes))
            await flush()
            await inflight.wait()
        finally:
            await inflight.cancel()

    def _written(self, done: list[tuple[tuple, float, object, int]], keep: bool = True) -> None:
        now = self.clock()
        for owner, received, inputs, delta in done:
            if inputs is None or not keep:
                self.written.pop(owner, None)
                self._labels.pop(owner, None)
            else:
                self.written[owner] = inputs
            self.n_keys += delta
            self.force.discard(owner)
            if self.dirty.get(owner) == received and self.inputs(owner) == inputs:
                del self.dirty[owner]
            if self.synced:  # the first sync's owners would only say how long the start took
                LATENCY.observe(max(0.0, now - received))
        KEYS.set(max(0, self.n_keys))

    async def verify(self, cause: str, background: bool) -> None:
        """Compare etcd with every record wanted now; put what is missing, delete kube2sky's
        orphans. Reads the prefix page by page keeping only 64-bit digests of (key, value), in
        a sorted array (8 bytes per key; a set of Python ints costs about 80).

        Foreground (start, leader change): nothing else runs; what is missing is put at once
        and afterwards every owner counts as written. Background (relists, etcd errors,
        --resync-period): events keep being applied and written meanwhile; owners with
        missing records are marked to be rewritten in full, and so is every owner that
        changed during the verify (after the orphans are deleted), so nothing the engine
        wrote meanwhile can be lost.
        """
        started = self.clock()
        self.verifying = set()
        inflight = _InFlight()  # foreground writes (a failure ends the others)
        try:
            # 1. etcd's content as sorted 64-bit digests (8 bytes per key) and a found mark each
            actual = None
            prefetch, self._prefetch = self._prefetch, None
            if prefetch is not None and not background:
                try:
                    actual = await prefetch  # read while the objects were listed (rule 3)
                except etcdwriter.EtcdError as err:
                    logger.info("reading etcd while listing failed (%s): reading it again", err)
            if actual is None:
                actual = await self._read_digests()
            found = bytearray(len(actual))
            n_actual = len(actual)
            find = Digests(actual).find
            if not background:
                logger.info("full sync (%s): etcd holds %d keys under %s", cause, n_actual, self.prefix)
            # 2. rebuild everything; what etcd lacks is put (foreground) or rewritten (background)
            missing_owners: list[tuple] = []
            # foreground puts, sent many transactions per request (nested, etcdwriter.nesting)
            pending: dict[str, str] = {}
            pending_bytes = 0
            n_desired = n_puts = 0
            owners = self.owners()
            limit = max(1, self.settings.max_txn_ops)
            outer, inner = etcdwriter.nesting(limit)
            per_call = outer * inner
            last_log = self.clock()
            chunk = _VERIFY_CHUNK if background else _SYNC_CHUNK
            kept_names: set[str] = set()  # rule 9: the names of owners whose build failed
            for start in range(0, len(owners), chunk):
                for owner, inputs, result in self.build_all(owners[start:start + chunk], remember=not background):
                    if result.failed:
                        kept_names.update(self.owner_names(owner, inputs))
                        if owner in self.written:
                            kept_names.update(self.owner_names(owner, self.written[owner]))
                        if not background:
                            self.dirty.pop(owner, None)
                        continue
                    if not background:
                        self.written[owner] = inputs
                        self.dirty.pop(owner, None)
                        _report(result.problems)
                    values = result.values
                    n_desired += len(values)
                    if not n_actual:  # an empty prefix (a first start) lacks everything
                        lacking = list(values.items())
                    else:
                        lacking = []
                        for k, v in values.items():
                            d = _digest(k, v)
                            i = find(d)
                            if i >= 0:
                                found[i] = 1
                            else:
                                lacking.append((k, v))
                    if not lacking:
                        continue
                    if background:
                        missing_owners.append(owner)
                        continue
                    for k, v in lacking:
                        if pending.setdefault(k, v) is v:  # a key two owners want goes once
                            pending_bytes += len(k) + len(v)
                    if len(pending) >= per_call or pending_bytes >= _CALL_BYTES:
                        n_puts += len(pending)
                        for plans in _calls(pending, outer, inner):
                            await inflight.send(self._commit_all(plans))
                        pending, pending_bytes = {}, 0
                if background:
                    await asyncio.sleep(0)
                now = self.clock()
                if not background and now - last_log >= 1.0:
                    last_log = now
                    logger.info("synced %d/%d owners (%d keys put)", min(start + chunk, len(owners)),
                                len(owners), n_puts)
            if pending:
                n_puts += len(pending)
                for plans in _calls(pending, outer, inner):
                    await inflight.send(self._commit_all(plans))
            del pending
            await inflight.wait()
            # 3. what etcd holds and nobody wants: kube2sky's orphans go, the rest is not ours
            deletes: list[str] = []
            unknown = {d for d, hit in zip(actual, found) if not hit} - self.not_ours
            del actual, found
            if unknown:
                candidates: list[str] = []
                values_of: dict[str, str] = {}  # the candidates' values, when some names are kept
                bad = 0
                async for page in self.store.scan(self.prefix):
                    for k, v in page:
                        d = _digest(k, v)
                        if d not in unknown:
                            continue
                        if self.owned(k, v):
                            candidates.append(k)
                            if kept_names:
                                values_of[k] = v
                            continue
                        self.not_ours.add(d)
                        reason = reconcile.unreadable(v)
                        if reason is not None:
                            bad += 1
                            BAD_VALUES.inc()
                            if self._bad_logged < _BAD_VALUE_LOG_LIMIT:
                                self._bad_logged += 1
                                logger.warning("etcd key %s holds a value that is not a record (%s); "
                                               "left alone as not kube2sky's", k, reason[:200])
                if bad > _BAD_VALUE_LOG_LIMIT:
                    logger.warning("%d keys under %s hold values that are not records (left alone)",
                                   bad, self.prefix)
                if candidates and self.verifying:
                    wanted = set()
                    for owner, inputs, result in self.build_all(sorted(self.verifying)):
                        wanted.update(result.values)
                        if result.failed:
                            kept_names.update(self.owner_names(owner, inputs))
                    candidates = [k for k in candidates if k not in wanted]
                if candidates and kept_names:
                    candidates = [k for k in candidates
                                  if not _belongs(k, values_of.get(k, ""), kept_names, self.settings.prefix)]
                deletes = sorted(candidates)
                for part in reconcile.chunk(reconcile.Plan((), tuple(deletes)), limit, self.settings.prefix):
                    await self._commit(part)
            # 4. owners to rewrite in full: those lacking records, those changed meanwhile
            for owner in [*missing_owners, *sorted(self.verifying)]:
                self.force.add(owner)
                self.dirty.setdefault(owner, self.clock())
            if not background:
                self.n_keys = n_desired
                KEYS.set(n_desired)
            now = self.clock()
            SYNC_DURATION.observe(max(0.0, now - started))
            quiet = cause == "periodic resync" and not (n_puts or deletes or missing_owners)
            (logger.debug if quiet else logger.info)(
                "%s (%s) in %.2fs: %d keys wanted, etcd held %d; %d put, %d orphans deleted%s",
                "verified etcd" if background else "full sync", cause, now - started, n_desired, n_actual,
                n_puts, len(deletes),
                f", {len(missing_owners)} owners lacking records rewritten" if missing_owners else "")
        finally:
            self.verifying = None
            await inflight.cancel()

    async def _read_digests(self) -> array.array:
        """etcd's content under the prefix as sorted 64-bit digests of (key, value)."""
        runs: list[array.array] = []  # each page's digests, sorted (8 bytes each)
        async for page in self.store.scan(self.prefix):
            runs.append(array.array("q", sorted(_digest(k, v) for k, v in page)))
            del page
        return array.array("q", heapq.merge(*runs))

    async def full_sync(self, cause: str) -> None:
        """The foreground sync: at start and after a leader change (what is in etcd is unknown)."""
        self.written.clear()
        self._labels.clear()
        await self.verify(cause, background=False)

    async def _verify_in_background(self, cause: str) -> None:
        try:
            await self.verify(cause, background=True)
        except etcdwriter.NotLeader as err:
            logger.warning("verify stopped: %s", err)
        except etcdwriter.EtcdError as err:
            ETCD_ERRORS.labels("verify").inc()
            logger.warning("verify (%s) failed: %s; trying again at the next resync", cause, err)
            self.verify_due = self.verify_due or "etcd error"
        self.next_resync = self.clock() + self.settings.resync_period
        trim_malloc()  # the relist's pages and the verify's digests are garbage now
        if self.full_received is not None:
            LATENCY.observe(max(0.0, self.clock() - self.full_received))
            self.full_received = None
        self.wake.set()

    async def step(self) -> None:
        """Do the pending writes once (foreground sync, or the dirty owners)."""
        if self.full is not None:
            await self.full_sync(self.full)
            self.full = None
        if self.dirty:
            await self.sync_dirty()
        if not self.synced and not self.dirty and self.full is None and self.all_listed:
            if self.early:
                SYNC_DURATION.observe(max(0.0, self.clock() - self.early_started))
                logger.info("first sync (start, etcd held nothing) in %.2fs: %d keys put while listing",
                            self.clock() - self.early_started, self.n_keys)
            self.synced = True
            self.synced_event.set()
            READY.set(1)
            self.next_resync = self.clock() + self.settings.resync_period

    async def _check_empty(self) -> None:
        """At a first start, before the listings end: with nothing under the prefix, there is
        nothing to compare, so the foreground sync is not needed and the owners are written
        as their pages come (rule 3a)."""
        pages = self.store.scan(self.prefix, page_size=1)
        try:
            try:
                self.early = not await anext(pages)
            except StopAsyncIteration:
                self.early = True
            finally:
                await pages.aclose()
        except etcdwriter.EtcdError as err:
            logger.info("cannot tell whether etcd holds records yet (%s): full sync after the listings", err)
            self.early = False
            return
        if not self.early:  # etcd is read while the objects are listed (rule 3)
            self._prefetch = asyncio.ensure_future(self._read_digests())
        if self.early:
            self.full = None
            self.early_started = self.clock()
            logger.info("etcd holds nothing under %s: writing the records while the objects are listed",
                        self.prefix)

    def _start_verify(self) -> None:
        cause, self.verify_due = self.verify_due, None
        self.verify_task = asyncio.ensure_future(self._verify_in_background(cause or "verify"))

    @property
    def verify_running(self) -> bool:
        return self.verify_task is not None and not self.verify_task.done()

    async def run(self, queue: asyncio.Queue, stop: asyncio.Event) -> None:
        """Apply events and write until stop is set."""
        try:
            await self._run(queue, stop)
        finally:
            for task in (self.verify_task, self._prefetch):
                if task is not None:
                    task.cancel()
                    with contextlib.suppress(BaseException):
                        await task

    async def _run(self, queue: asyncio.Queue, stop: asyncio.Event) -> None:
        while not stop.is_set():
            while not queue.empty():
                self.safe_apply(queue.get_nowait())
            period = self.settings.resync_period
            if (self.synced and period > 0 and self.verify_due is None and not self.verify_running
                    and self.clock() >= self.next_resync):
                self.verify_due = "periodic resync"
            if self.early is None and self.full == "start" and self.may_write and not self.all_listed:
                await self._check_empty()
            ready = self.all_listed and self.may_write
            if ready and self.synced and not self.dirty and self.verify_due and not self.verify_running:
                self._start_verify()
            early = self.early and self.full is None and self.may_write and not self.synced
            # (ready and not synced: a first start whose owners were all written while listing)
            work = (ready and (self.full is not None or self.dirty or not self.synced)) or bool(early and self.dirty)
            if not work:
                get = asyncio.ensure_future(queue.get())
                waiters = [get, asyncio.ensure_future(stop.wait()), asyncio.ensure_future(self.wake.wait())]
                timeout = max(0.0, self.next_resync - self.clock()) if self.synced and period > 0 else None
                await asyncio.wait(waiters, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
                for w in waiters[1:]:
                    w.cancel()
                if get.done():
                    event = get.result()
                    get = None  # a listing must not outlive its apply (it can be the whole cluster)
                    self.safe_apply(event)
                    del event
                else:
                    get.cancel()
                    with contextlib.suppress(asyncio.CancelledError):
                        await get
                self.wake.clear()
                continue
            try:
                await self.step()
                self.attempt = 0
            except etcdwriter.NotLeader as err:
                logger.warning("write refused: %s", err)
                self.full = self.full or "leader change"
                await _sleep(stop, 1.0)
            except etcdwriter.EtcdError as err:
                ETCD_ERRORS.labels("write").inc()
                self.attempt += 1
                seconds = k8swatch.delay(self.settings.backoff, self.attempt, self.rng)
                logger.warning("etcd error: %s; keeping %d changed objects, retry #%d in %.1fs (then verify "
                               "etcd in the background)", err, len(self.dirty), self.attempt, seconds)
                if self.full is None:
                    self.verify_due = self.verify_due or "etcd error"
                await _sleep(stop, seconds)

    def on_leader(self, is_leader: bool) -> None:
        LEADER.set(1 if is_leader else 0)
        if is_leader:
            self.full = self.full or "became leader"
        self.wake.set()


def _report(problems: tuple[str, ...]) -> None:
    """Log and count what could not be published of an object (records' problems)."""
    for problem in problems:
        logger.warning("%s", problem)
        PROBLEMS.inc()


class _InFlight:
    """Requests to etcd sent and not answered yet, at most _PIPELINE_CALLS at once."""

    def __init__(self) -> None:
        self.tasks: list[asyncio.Future] = []

    async def send(self, request) -> None:
        """Start a request (a coroutine) and let it leave now, so etcd works while the next one
        is built; then wait for the oldest while too many are out (a failure is raised)."""
        self.tasks.append(asyncio.ensure_future(request))
        await asyncio.sleep(0)
        while len(self.tasks) >= _PIPELINE_CALLS:
            await self.tasks.pop(0)

    async def wait(self) -> None:
        """Wait for every request, oldest first (the first failure is raised)."""
        while self.tasks:
            await self.tasks.pop(0)

    async def cancel(self) -> None:
        """End the requests still out (after a failure, or when stopped)."""
        for task in self.tasks:
            task.cancel()
        if self.tasks:
            await asyncio.gather(*self.tasks, return_exceptions=True)


def _split_plan(plan: reconcile.Plan, size: int) -> list[reconcile.Plan]:
    """A plan as plans of at most ``size`` operations, its puts first (in order)."""
    puts, deletes = plan.puts, plan.deletes
    out = [reconcile.Plan(puts[i:i + size]) for i in range(0, len(puts), size)]
    if out and deletes and len(out[-1]) < size:  # the last puts' room takes the first deletes
        room = size - len(out[-1])
        out[-1] = reconcile.Plan(out[-1].puts, deletes[:room])
        deletes = deletes[room:]
    out += [reconcile.Plan((), deletes[i:i + size]) for i in range(0, len(deletes), size)]
    return out


def _calls(puts: dict[str, str], outer: int, inner: int) -> list[list[reconcile.Plan]]:
    """Puts (keys sorted) as requests of at most ``outer`` plans of at most ``inner``
    operations each, and of at most about _CALL_BYTES (a plan is never split)."""
    items = sorted(puts.items())
    calls: list[list[reconcile.Plan]] = []
    size = 0
    for i in range(0, len(items), inner):
        part = items[i:i + inner]
        part_size = sum(len(k) + len(v) for k, v in part)
        if not calls or len(calls[-1]) >= outer or size + part_size > _CALL_BYTES:
            calls.append([])
            size = 0
        calls[-1].append(reconcile.Plan(tuple(part)))
        size += part_size
    return calls


def _belongs(key: str, value: str, names: set[str], prefix: str) -> bool:
    """Whether a key is at or below one of names, or its record points there (rule 9)."""
    try:
        name = msg.key_to_name(key, prefix)
    except msg.PathError:
        name = ""
    host = _host_of(value).lower()
    if host and not host.endswith("."):
        host += "."
    return any(seen == kept or seen.endswith("." + kept) for seen in (name, host) if seen for kept in names)


def _host_of(value: str) -> str:
    try:
        return str(json.loads(value).get("host", ""))
    except Exception:  # noqa: BLE001 - a value kube2sky wrote always parses
        return ""


async def _sleep(stop: asyncio.Event, seconds: float) -> None:
    with contextlib.suppress(asyncio.TimeoutError):
        await asyncio.wait_for(stop.wait(), max(0.0, seconds))


# ---------------------------------------------------------------- HTTP: /readiness /healthz /metrics

class Health:
    def __init__(self, engine: Engine | None = None) -> None:
        self.engine = engine  # None until the kinds to watch are known (API discovery)

    def ready(self) -> bool:
        e = self.engine
        if e is None:
            return False
        if e.synced:
            return True
        # a healthy standby: listed everything and reaches etcd, so it can take over at once
        return (e.election is not None and not e.election.is_leader and e.all_listed
                and e.election.reachable)

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            line = await asyncio.wait_for(reader.readline(), 5)
            while True:
                header = await asyncio.wait_for(reader.readline(), 5)
                if header in (b"\r\n", b"\n", b""):
                    break
            parts = line.decode("latin-1").split()
            path = parts[1].split("?")[0] if len(parts) > 1 else "/"
            ctype = "text/plain; charset=utf-8"
            if path == "/readiness" or path == "/ready":
                code, body = (200, b"ok\n") if self.ready() else (503, b"not synced yet\n")
            elif path == "/healthz" or path == "/health":
                code, body = 200, b"ok\n"
            elif path == "/metrics":
                code, body = 200, prometheus_client.generate_latest(REGISTRY)
                ctype = prometheus_client.CONTENT_TYPE_LATEST
            else:
                code, body = 404, b"not found\n"
            reason = {200: "OK", 404: "Not Found", 503: "Service Unavailable"}[code]
            writer.write(f"HTTP/1.1 {code} {reason}\r\nContent-Type: {ctype}\r\nContent-Length: {len(body)}\r\n"
                         f"Connection: close\r\n\r\n".encode() + body)
            await writer.drain()
        except (asyncio.TimeoutError, OSError, UnicodeDecodeError):
            pass
        finally:
            writer.close()


# ---------------------------------------------------------------- sources

def make_source(settings: settings_mod.Settings):
    """The transport: manifests folder, or the Kubernetes API. Raises k8swatch.ConfigError."""
    if settings.manifests:
        from kube2sky import manifests  # and yaml: only for --manifests

        return manifests.ManifestSource(settings.manifests, settings.manifests_poll, settings.service_cidr)
    config = k8swatch.resolve(k8swatch.Connection(
        master_url=settings.kube_master_url, kubeconfig=settings.kubecfg_file,
        token_file=settings.kube_token_file, ca_file=settings.kube_ca_file, insecure=settings.kube_insecure))

    def progress(resource: k8swatch.Resource, done: int, total: int | None) -> None:
        if total is not None and total > done:
            logger.info("listed %d/%d %s", done, total, resource.plural)

    return k8swatch.ApiTransport(config, watch_timeout=settings.watch_timeout, on_progress=progress,
                                 trim=Trim(), page_sizes={"EndpointSlice": 50, "Endpoints": 50, "Pod": 250})


class Trim:
    """An API object -> its trimmed form as it is listed (the raw one when unreadable: the
    engine logs and counts it). Once ``engine`` is set, an object equal to the one the engine
    holds is that very object: a relist of a big unchanged cluster allocates next to nothing
    that outlives its page (runs in the watch threads; dict reads are safe under the GIL)."""

    def __init__(self) -> None:
        self.engine: Engine | None = None

    def __call__(self, resource: k8swatch.Resource, raw: dict):
        try:
            obj = objects.parse(resource.kind, raw)
        except objects.Invalid:
            return raw
        engine = self.engine
        if engine is not None:
            held = engine.held(resource.kind, obj.ns, obj.name)
            if held is not None and held == obj:
                return held
        return obj


async def choose_kinds(settings: settings_mod.Settings, source, stop: asyncio.Event,
                       rng: random.Random) -> tuple[k8swatch.Resource, ...] | None:
    kinds = [k8swatch.SERVICES]
    if settings.manifests:
        kinds += [k8swatch.ENDPOINT_SLICES, k8swatch.ENDPOINTS]
    elif settings.endpoint_source == settings_mod.EndpointSource.ENDPOINTSLICES:
        kinds.append(k8swatch.ENDPOINT_SLICES)
    elif settings.endpoint_source == settings_mod.EndpointSource.ENDPOINTS:
        kinds.append(k8swatch.ENDPOINTS)
    else:
        attempt = 0
        while not stop.is_set():
            try:
                served = await asyncio.to_thread(source.served, k8swatch.ENDPOINT_SLICES)
                break
            except k8swatch.WatchError as err:
                attempt += 1
                seconds = k8swatch.delay(settings.backoff, attempt, rng)
                logger.warning("API discovery failed: %s; retry #%d in %.1fs", err, attempt, seconds)
                API_ERRORS.labels("discovery", "get").inc()
                await _sleep(stop, seconds)
        else:
            return None
        kinds.append(k8swatch.ENDPOINT_SLICES if served else k8swatch.ENDPOINTS)
        logger.info("endpoints from %s (%s)", kinds[-1].plural,
                    "discovery.k8s.io/v1 is served" if served else "EndpointSlices are not served")
    if settings.pods == settings_mod.PodsMode.VERIFIED:
        kinds.append(k8swatch.PODS)
    return tuple(kinds)


# ---------------------------------------------------------------- main

async def main(settings: settings_mod.Settings) -> int:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    logging.getLogger("urllib3.connectionpool").setLevel(logging.ERROR)  # we log each failure ourselves
    for sig in (signal.SIGTERM, signal.SIGINT):
        with contextlib.suppress(NotImplementedError, RuntimeError):
            loop.add_signal_handler(sig, _on_signal, stop, sig)
    rng = random.Random()
    try:
        source = make_source(settings)
    except k8swatch.ConfigError as err:
        raise SystemExit(f"kube2sky: error: {err}") from None
    tls = etcdwriter.TLSFiles(settings.etcd_cafile, settings.etcd_certfile, settings.etcd_keyfile)
    try:
        etcdwriter.check_tls_files(tls)
    except etcdwriter.ConfigError as err:
        raise SystemExit(f"kube2sky: error: {err}") from None
    if (tls or any(e.startswith("https://") for e in settings.etcd_endpoints)) and not settings.dry_run:
        logger.info("etcd over TLS (CA: %s, client certificate: %s)", tls.ca or "system roots",
                    tls.cert or "none")
    if settings.dry_run:
        store = etcdwriter.DryRun()
    else:
        store = etcdwriter.Etcd(settings.etcd_endpoints, timeout=settings.etcd_mutation_timeout,
                                on_error=lambda op: ETCD_ERRORS.labels(op).inc(),
                                tls=tls)
    election = None
    if settings.leader_elect and not settings.dry_run:
        key = settings.leader_key or f"/{settings.prefix.strip('/')}-leader/kube2sky"
        election = leader.Election(store, key, ttl=settings.leader_ttl)
    else:
        LEADER.set(1)

    queue: asyncio.Queue = asyncio.Queue()
    threads_stop = threading.Event()
    tasks: list[asyncio.Task] = []
    server = None
    engine: Engine | None = None
    try:
        health = Health()
        if not settings.dry_run:
            try:
                server = await asyncio.start_server(health.handle, settings.healthz_host or None,
                                                    settings.healthz_port)
            except OSError as err:
                raise SystemExit(f"kube2sky: error: cannot serve --healthz-port {settings.healthz_port}: {err}") from None
            bound = server.sockets[0].getsockname()  # the real port when --healthz-port=0
            logger.info("serving /readiness, /healthz and /metrics on %s:%d", settings.healthz_host, bound[1])
        kinds = await choose_kinds(settings, source, stop, rng)
        if kinds is None:
            return 0
        engine = Engine(settings, store, election, kinds, rng)
        health.engine = engine
        if isinstance(getattr(source, "trim", None), Trim):
            source.trim.engine = engine
        if election is not None:
            election.on_change = engine.on_leader

        def emit(event: k8swatch.Event) -> None:
            loop.call_soon_threadsafe(queue.put_nowait, event)

        for resource in kinds:
            thread = threading.Thread(
                target=k8swatch.follow_forever, name=f"watch-{resource.plural}", daemon=True,
                args=(resource, source, emit, threads_stop),
                kwargs=dict(backoff=settings.backoff,
                            on_error=lambda r, op: API_ERRORS.labels(r.kind, op).inc()))
            thread.start()

        tasks.append(asyncio.create_task(engine.run(queue, stop), name="engine"))
        if election is not None:
            tasks.append(asyncio.create_task(election.run(stop, settings.backoff), name="leader"))
        stopper = asyncio.create_task(stop.wait(), name="stop")
        watched = [stopper, *tasks]
        if settings.dry_run and settings.manifests:
            watched.append(asyncio.create_task(engine.synced_event.wait(), name="dry-run"))

        async def settle(synced: asyncio.Event) -> None:
            # no cyclic collection on the way to ready: the listing and the first sync make
            # millions of objects that live on, and the collector would walk them again and
            # again (about 0.4 s of CPU at 10k services + 100k endpoints); turned back on
            # after the first sync, or after _NO_GC_LIMIT seconds should that take long
            gc.disable()
            try:
                with contextlib.suppress(asyncio.TimeoutError):
                    await asyncio.wait_for(synced.wait(), _NO_GC_LIMIT)
            finally:
                gc.enable()
            await synced.wait()
            await asyncio.sleep(_SETTLE_DELAY)  # housekeeping, not on the way to ready
            settle_heap()

        tasks.append(asyncio.create_task(settle(engine.synced_event), name="settle"))
        done, _ = await asyncio.wait(watched, return_when=asyncio.FIRST_COMPLETED)
        for task in done:
            if task is stopper or task.get_name() == "dry-run":
                continue
            exc = task.exception()
            logger.error("%s %s", task.get_name(), f"failed: {exc!r}" if exc else "ended unexpectedly")
            return 1
        return 0
    finally:
        stop.set()
        threads_stop.set()
        source.stop()
        for task in tasks:
            task.cancel()
        if tasks:
            await asyncio.wait(tasks, timeout=settings.grace_period)
        if election is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(election.resign(), 2)
        if server is not None:
            server.close()
        await store.close()
        logger.info("stopped")


def _changed(old: dict, new: dict) -> set:
    """Keys added, removed or holding a different value."""
    return {key for key in old.keys() | new.keys() if old.get(key) != new.get(key)}


def _on_signal(stop: asyncio.Event, sig: signal.Signals) -> None:
    logger.info("received %s: shutting down", signal.Signals(sig).name)
    stop.set()


def run(settings: settings_mod.Settings) -> None:
    """Run kube2sky until SIGTERM/SIGINT; exits non-zero when a root task fails."""
    if not logging.getLogger().handlers:
        logging.basicConfig(level=logging.INFO, stream=sys.stderr,
                            format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    gc.set_threshold(*_GC_THRESHOLDS)
    limit_arenas()
    try:
        import uvloop  # noqa: PLC0415 - optional
        runner = uvloop.run
    except ImportError:
        runner = asyncio.run
    code = runner(main(settings))
    if code:
        raise SystemExit(code)
