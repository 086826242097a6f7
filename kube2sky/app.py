"""kube2sky's wiring: sources -> desired records -> etcd, with health, metrics and shutdown.

Rules (DESIGN section 4, STYLE 5.7):
1. Level-triggered. Watch threads (k8swatch.follow, one per kind) put Listed/Changed events on
   an asyncio queue. The engine keeps the latest objects and, per owner (a service, a pod, the
   cluster records), the records they should produce (records.build_*), so the desired content
   of the prefix is always known in memory. Records are a pure function of the objects, so
   an object equal to the one held (a relist of an unchanged cluster) is not rebuilt, and each
   owner's records are encoded once (records.Result.values).
2. Writes: a change of one object is one etcd transaction over the keys it touched (puts and
   deletes together, chunked with reconcile.chunk below --max-txn-ops). Never delete-then-add.
3. Full sync: at start (once every kind has been listed), after every relist (410, watch error,
   manifests changed) and after any etcd error: read the whole prefix, reconcile.plan against
   the desired state (kube2sky-owned orphans deleted), commit in chunks, log progress.
4. etcd errors are never fatal: the desired state is kept, the attempt is logged with the retry
   it will make (#n in Xs) and the next attempt starts with a fresh read of etcd.
5. With --leader-elect only the holder of the leader key writes (each write is guarded).
6. Ready (GET /readiness 200 "ok") after the first full sync (a standby replica: after its
   first listings, while its election reaches etcd). SIGTERM/SIGINT set one stop event; everything ends within grace_period.
7. Bad objects are logged with their namespace/name and counted; they never stop the engine.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import random
import signal
import sys
import threading
import time

import prometheus_client

from kube2sky import etcdwriter, k8swatch, leader, manifests, objects, reconcile, records
from kube2sky import settings as settings_mod

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
    "kube2sky_sync_duration_seconds", "Duration of full syncs (read etcd, reconcile, write).",
    buckets=(0.01, 0.05, 0.1, 0.5, 1, 2, 5, 10, 30, 60, 120, 300), registry=REGISTRY)
LATENCY = prometheus_client.Histogram(
    "kube2sky_programming_latency_seconds", "API event received -> its records committed in etcd.",
    buckets=(0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60), registry=REGISTRY)
KEYS = prometheus_client.Gauge(
    "kube2sky_keys_managed", "Keys kube2sky wants in etcd (desired records).", registry=REGISTRY)
OBJECTS = prometheus_client.Gauge(
    "kube2sky_objects", "Objects held, by kind.", ["kind"], registry=REGISTRY)
LEADER = prometheus_client.Gauge(
    "kube2sky_leader", "1 when this replica may write (always 1 without --leader-elect).", registry=REGISTRY)
READY = prometheus_client.Gauge(
    "kube2sky_ready", "1 after the first full sync.", registry=REGISTRY)


# ---------------------------------------------------------------- the engine

CLUSTER = ("cluster",)


@dataclasses.dataclass(slots=True)
class _Dirty:
    received: float
    keys: set[str]


class Engine:
    """Objects -> desired records -> etcd. Driven by run(); state changes only in apply()."""

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
        self.owners: dict[tuple, dict[str, str]] = {}
        self.desired: dict[str, str] = {}
        self.refs: dict[str, int] = {}
        self.actual: dict[str, str] | None = None
        self.dirty: dict[tuple, _Dirty] = {}
        self.full: str | None = "start"
        self.full_received: float | None = None
        self.listed: set[str] = set()
        self.synced = False
        self.synced_event = asyncio.Event()
        self.wake = asyncio.Event()
        self.attempt = 0
        self.next_resync = 0.0
        self._recompute_owner(CLUSTER, None)

    # ---- state (pure bookkeeping; no I/O)
    def _set_owner(self, owner: tuple, values: dict[str, str], received: float | None) -> None:
        old = self.owners.get(owner, {})
        if old == values:
            return
        touched = set(old) | set(values)
        for key in old.keys() - values.keys():
            self.refs[key] -= 1
            if not self.refs[key]:
                del self.refs[key]
                del self.desired[key]
        for key, value in values.items():
            if key not in old:
                self.refs[key] = self.refs.get(key, 0) + 1
            self.desired[key] = value
        if values:
            self.owners[owner] = values
        else:
            self.owners.pop(owner, None)
        entry = self.dirty.get(owner)
        now = received if received is not None else self.clock()
        if entry is None:
            self.dirty[owner] = _Dirty(now, touched)
        else:
            entry.keys |= touched
            entry.received = min(entry.received, now)
        KEYS.set(len(self.desired))

    def _recompute_owner(self, owner: tuple, received: float | None) -> None:
        try:
            self._build_owner(owner, received)
        except Exception:  # noqa: BLE001 - one object never stops the engine; its records stay as they were
            logger.exception("cannot compute the records of %s; keeping its previous records", "/".join(owner))
            INVALID.labels({"svc": "Service", "pod": "Pod"}.get(owner[0], owner[0])).inc()

    def _build_owner(self, owner: tuple, received: float | None) -> None:
        if owner[0] == "svc":
            ref = owner[1], owner[2]
            svc = self.services.get(ref)
            if svc is None:
                result = records.Result()
            else:
                slices = [self.slices[k] for k in sorted(self.slices_by_service.get(ref, ()))]
                result = records.build_service(svc, slices, self.settings)
            if ref == self.settings.dns_service_ref:
                self._recompute_owner(CLUSTER, received)
        elif owner[0] == "pod":
            pod = self.pods.get((owner[1], owner[2]))
            result = records.build_pod(pod, self.settings) if pod is not None else records.Result()
        else:
            ref = self.settings.dns_service_ref
            result = records.build_cluster(self.services.get(ref) if ref else None, self.settings)
        self._publish(owner, result, received)

    def _publish(self, owner: tuple, result: records.Result, received: float | None) -> None:
        for problem in result.problems:
            logger.warning("%s", problem)
            PROBLEMS.inc()
        # result.values is result.records already encoded (records.Result); no second encode
        self._set_owner(owner, dict(result.values), received)

    def _parse(self, kind: str, raw: dict):
        try:
            return objects.parse(kind, raw)
        except objects.Invalid as err:
            logger.warning("skipped invalid object: %s", err)
            INVALID.labels(kind).inc()
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

    def apply(self, event: k8swatch.Event) -> None:
        """Take one event from a source into the state; mark the owners it touched."""
        kind = event.resource.kind
        if isinstance(event, k8swatch.Listed):
            RELISTS.labels(kind, event.cause).inc()
            self._replace(kind, event.items, event.received)
            first = kind not in self.listed
            self.listed.add(kind)
            if not first or self.synced:
                self.full = self.full or f"relist of {event.resource.plural} ({event.cause})"
                self.full_received = min(self.full_received or event.received, event.received)
        else:
            EVENTS.labels(kind, event.type).inc()
            ns, name = objects.ref(event.obj)
            parsed = None if event.type == "DELETED" else self._parse(kind, event.obj)
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
            self._recompute_owner(("svc", ns, name), received)
        elif kind in ("EndpointSlice", "Endpoints"):
            for ref in self._put_slice((kind, ns, name), parsed):
                self._recompute_owner(("svc", *ref), received)
        elif kind == "Pod":
            if parsed is None:
                self.pods.pop((ns, name), None)
            else:
                self.pods[(ns, name)] = parsed
            self._recompute_owner(("pod", ns, name), received)

    def _replace(self, kind: str, items: tuple[dict, ...], received: float) -> None:
        parsed = {}
        for raw in items:
            obj = self._parse(kind, raw)
            if obj is not None:
                parsed[objects.ref(raw)] = obj
        if kind == "Service":
            # records are a pure function of the objects: an object equal to the one held (same
            # resourceVersion and content) keeps its records, so a relist rebuilds only changes
            refs = _changed(self.services, parsed)
            self.services = parsed
            for ref in sorted(refs):
                self._recompute_owner(("svc", *ref), received)
        elif kind in ("EndpointSlice", "Endpoints"):
            touched: set[tuple[str, str]] = set()
            for key in [k for k in self.slices if k[0] == kind and (k[1], k[2]) not in parsed]:
                touched |= self._put_slice(key, None)
            for ref, eps in parsed.items():
                if self.slices.get((kind, *ref)) != eps:
                    touched |= self._put_slice((kind, *ref), eps)
            for ref in sorted(touched):
                self._recompute_owner(("svc", *ref), received)
        elif kind == "Pod":
            refs = _changed(self.pods, parsed)
            self.pods = parsed
            for ref in sorted(refs):
                self._recompute_owner(("pod", *ref), received)

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
        assert self.actual is not None
        for key, value in plan.puts:
            self.actual[key] = value
        for key in plan.deletes:
            self.actual.pop(key, None)
        logger.debug("committed %d puts, %d deletes at revision %s", len(plan.puts), len(plan.deletes), rev)

    async def full_sync(self, cause: str) -> None:
        started = self.clock()
        actual, revision = await self.store.read_prefix(self.prefix)
        self.actual = actual
        dirty, self.dirty = self.dirty, {}
        try:
            plan = reconcile.plan(self.desired, actual, self.settings.prefix, owned=self.owned)
            chunks = reconcile.chunk(plan, self.settings.max_txn_ops, self.settings.prefix)
            total = len(self.services)
            pending: dict[str, int] = {}
            for key, _ in plan.puts:
                group = reconcile.group_of(key, self.settings.prefix)
                pending[group] = pending.get(group, 0) + 1
            svc_groups = {g for g in pending if "/svc/" in "/" + g + "/"}
            quiet = cause == "periodic resync" and not plan
            (logger.debug if quiet else logger.info)(
                "full sync (%s): %d desired keys, etcd holds %d under %s at revision %d: "
                "%d puts, %d deletes in %d transactions", cause, len(self.desired), len(actual),
                self.prefix, revision, len(plan.puts), len(plan.deletes), len(chunks))
            last_log = self.clock()
            for i, part in enumerate(chunks):
                await self._commit(part)
                for key, _ in part.puts:
                    group = reconcile.group_of(key, self.settings.prefix)
                    pending[group] -= 1
                    if not pending[group]:
                        svc_groups.discard(group)
                now = self.clock()
                if now - last_log >= 1.0 and i + 1 < len(chunks):
                    last_log = now
                    logger.info("synced %d/%d services", max(0, total - len(svc_groups)), total)
        except BaseException:
            for owner, entry in dirty.items():  # keep them for the next attempt
                if owner not in self.dirty:
                    self.dirty[owner] = entry
            raise
        now = self.clock()
        for entry in dirty.values():
            LATENCY.observe(max(0.0, now - entry.received))
        if self.full_received is not None:
            LATENCY.observe(max(0.0, now - self.full_received))
        SYNC_DURATION.observe(max(0.0, now - started))
        self.next_resync = now + self.settings.resync_period
        (logger.debug if quiet else logger.info)("synced %d/%d services (%d keys) in %.2fs", len(self.services),
                                                 len(self.services), len(self.desired), now - started)

    async def sync_owner(self, owner: tuple, entry: _Dirty) -> None:
        assert self.actual is not None
        puts, deletes = [], []
        for key in sorted(entry.keys):
            want = self.desired.get(key)
            have = self.actual.get(key)
            if want is not None and want != have:
                puts.append((key, want))
            elif want is None and have is not None:
                deletes.append(key)
        plan = reconcile.Plan(tuple(puts), tuple(deletes))
        if plan:
            for part in reconcile.chunk(plan, self.settings.max_txn_ops, self.settings.prefix,
                                        group=lambda key: "one"):
                await self._commit(part)
            logger.info("%s: %d puts, %d deletes", "/".join(owner[1:]) or owner[0], len(puts), len(deletes))
        LATENCY.observe(max(0.0, self.clock() - entry.received))

    async def step(self) -> None:
        """Do the pending writes once (full sync or per-owner transactions)."""
        if self.full is not None or self.actual is None:
            cause = self.full or "etcd reconnect"
            await self.full_sync(cause)
            self.full = None
            self.full_received = None
            if not self.synced:
                self.synced = True
                self.synced_event.set()
                READY.set(1)
            return
        while self.dirty:
            owner = next(iter(self.dirty))
            entry = self.dirty[owner]
            await self.sync_owner(owner, entry)
            if self.dirty.get(owner) is entry:
                del self.dirty[owner]

    async def run(self, queue: asyncio.Queue, stop: asyncio.Event) -> None:
        """Apply events and write until stop is set."""
        while not stop.is_set():
            while not queue.empty():
                self.safe_apply(queue.get_nowait())
            period = self.settings.resync_period
            if self.synced and period > 0 and self.full is None and self.clock() >= self.next_resync:
                self.full = "periodic resync"
            work = self.all_listed and self.may_write and (self.full is not None or self.actual is None or self.dirty)
            if not work:
                get = asyncio.ensure_future(queue.get())
                waiters = [get, asyncio.ensure_future(stop.wait()), asyncio.ensure_future(self.wake.wait())]
                timeout = max(0.0, self.next_resync - self.clock()) if self.synced and period > 0 else None
                await asyncio.wait(waiters, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
                for w in waiters[1:]:
                    w.cancel()
                if get.done():
                    self.safe_apply(get.result())
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
                self.actual = None
                self.full = self.full or "leader change"
                await _sleep(stop, 1.0)
            except etcdwriter.EtcdError as err:
                ETCD_ERRORS.labels("write").inc()
                self.attempt += 1
                seconds = k8swatch.delay(self.settings.backoff, self.attempt, self.rng)
                logger.warning("etcd error: %s; keeping %d desired keys, retry #%d in %.1fs (re-read etcd, "
                               "then reconcile)", err, len(self.desired), self.attempt, seconds)
                self.actual = None
                self.full = self.full or "etcd error"
                await _sleep(stop, seconds)

    def on_leader(self, is_leader: bool) -> None:
        LEADER.set(1 if is_leader else 0)
        if is_leader:
            self.actual = None
            self.full = self.full or "became leader"
        self.wake.set()


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
        return manifests.ManifestSource(settings.manifests, settings.manifests_poll, settings.service_cidr)
    api_client = k8swatch.make_api_client(k8swatch.Connection(
        master_url=settings.kube_master_url, kubeconfig=settings.kubecfg_file,
        token_file=settings.kube_token_file, ca_file=settings.kube_ca_file, insecure=settings.kube_insecure))

    def progress(resource: k8swatch.Resource, done: int, total: int | None) -> None:
        if total is not None and total > done:
            logger.info("listed %d/%d %s", done, total, resource.plural)

    return k8swatch.ApiTransport(api_client, watch_timeout=settings.watch_timeout, on_progress=progress)


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
    try:
        import uvloop  # noqa: PLC0415 - optional
        runner = uvloop.run
    except ImportError:
        runner = asyncio.run
    code = runner(main(settings))
    if code:
        raise SystemExit(code)
