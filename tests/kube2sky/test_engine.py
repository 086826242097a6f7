"""The sync engine (kube2sky.app.Engine) with an in-memory store: what each change writes,
what a relist writes before verifying etcd, and what a verify repairs."""

from __future__ import annotations

import asyncio

import pytest

from kube2sky import app, etcdwriter, k8swatch, reconcile
from kube2sky import settings as settings_mod
from skydns import msg


class Store(etcdwriter.DryRun):
    """Records every committed plan and every read (``calls``); fails the next `fail` calls
    with EtcdError."""

    def __init__(self) -> None:
        super().__init__()
        self.quiet = True
        self.plans: list[reconcile.Plan] = []
        self.calls: list[str] = []
        self.requests: list[list[int]] = []  # commit_all: operations per nested transaction
        self.fail = 0

    async def scan(self, prefix, page_size=0):
        if self.fail:
            self.fail -= 1
            raise etcdwriter.EtcdError("etcd down")
        self.calls.append("scan")
        async for page in super().scan(prefix, page_size):
            yield page

    async def commit(self, plan, guard=None, lease=None):
        if self.fail:
            self.fail -= 1
            raise etcdwriter.EtcdError("etcd down")
        self.plans.append(plan)
        self.calls.append("commit")
        return await super().commit(plan, guard, lease)

    async def commit_all(self, plans, guard=None):
        """One request of nested transactions: checked as etcd checks it (a key put twice, or
        put and deleted, in one request is refused; a child's operations count against what
        its parent leaves of --max-txn-ops)."""
        if self.fail:
            self.fail -= 1
            raise etcdwriter.EtcdError("etcd down")
        keys = [k for plan in plans for k, _ in plan.puts] + [k for plan in plans for k in plan.deletes]
        assert len(keys) == len(set(keys)), "duplicate key given in txn request"
        self.requests.append([len(plan) for plan in plans])
        self.calls.append("commit_all")
        for plan in plans:
            self.plans.append(plan)
            await super().commit(plan, guard)
        return self.revision


def svc(name: str, ip: str, ns: str = "default") -> dict:
    return {"kind": "Service", "metadata": {"name": name, "namespace": ns},
            "spec": {"clusterIP": ip, "ports": [{"name": "http", "port": 80}]}}


def listed(*items: dict, cause: str = "start") -> k8swatch.Listed:
    return k8swatch.Listed(k8swatch.SERVICES, tuple(items), "1", cause, 0.0)


def changed(etype: str, obj: dict) -> k8swatch.Changed:
    return k8swatch.Changed(k8swatch.SERVICES, etype, obj, 0.0)


def engine(store: Store, **kw) -> app.Engine:
    settings = settings_mod.Settings(backoff=(0.0,), **kw)
    return app.Engine(settings, store, kinds=(k8swatch.SERVICES,))


async def settle(e: app.Engine, *events) -> None:
    """Apply the events, then write and verify (in the engine's order) until nothing is due."""
    for event in events:
        e.apply(event)
    for _ in range(10):
        if not (e.full or e.dirty or e.verify_due):
            return
        try:
            if e.full or e.dirty:
                await e.step()
            else:
                cause, e.verify_due = e.verify_due, None
                await e.verify(cause, background=True)
        except etcdwriter.EtcdError:
            e.verify_due = e.verify_due or "etcd error"


def run(coro):
    return asyncio.run(coro)


def test_ip_change_is_one_transaction_with_puts_and_deletes():
    store = Store()
    e = engine(store)

    async def go():
        await settle(e, listed(svc("web", "10.0.0.1")))
        store.plans.clear()
        await settle(e, changed("MODIFIED", svc("web", "10.0.0.2")))

    run(go())
    assert len(store.plans) == 1
    (plan,) = store.plans
    assert plan.puts and plan.deletes  # together, never delete-then-add
    assert store.data == e.desired()


def test_unchanged_object_writes_nothing():
    store = Store()
    e = engine(store)

    async def go():
        await settle(e, listed(svc("web", "10.0.0.1")))
        store.plans.clear()
        await settle(e, changed("MODIFIED", svc("web", "10.0.0.1")))

    run(go())
    assert store.plans == []


def test_relist_deletes_orphans_but_not_hand_written_keys():
    store = Store()
    store.data["/skydns/local/cluster/registry/x1"] = '{"host":"10.5.5.5"}'
    e = engine(store)

    async def go():
        await settle(e, listed(svc("a", "10.0.0.1"), svc("b", "10.0.0.2")))
        await settle(e, listed(svc("a", "10.0.0.1"), cause="410 Gone"))

    run(go())
    assert not any("/b/" in key for key in store.data)
    assert store.data["/skydns/local/cluster/registry/x1"] == '{"host":"10.5.5.5"}'
    assert {k: v for k, v in store.data.items() if "registry" not in k} == e.desired()


def test_etcd_errors_keep_the_desired_state_and_converge():
    store = Store()
    e = engine(store)

    async def go():
        await settle(e, listed(svc("a", "10.0.0.1")))
        store.fail = 2
        await settle(e, changed("ADDED", svc("b", "10.0.0.2")), changed("DELETED", svc("a", "10.0.0.1")))

    run(go())
    assert store.data == e.desired()
    assert any("/b/" in key for key in store.data) and not any("/svc/default/a/" in key for key in store.data)


@pytest.mark.parametrize("max_ops", [1, 2, 128])
def test_big_changes_are_chunked(max_ops):
    store = Store()
    e = engine(store, max_txn_ops=max_ops)
    run(settle(e, listed(*(svc(f"s{i}", f"10.0.1.{i}") for i in range(20)))))
    assert all(len(plan) <= max_ops for plan in store.plans)
    assert store.data == e.desired()


@pytest.mark.parametrize("max_ops", [1, 7, 8, 16, 128])
def test_first_sync_sends_nested_transactions_within_etcds_limits(max_ops):
    store = Store()
    e = engine(store, max_txn_ops=max_ops)
    run(settle(e, listed(*(svc(f"s{i}", f"10.0.{i // 200}.{i % 200 + 1}") for i in range(700)))))
    assert store.data == e.desired()
    outer, inner = etcdwriter.nesting(max_ops)
    for sizes in store.requests:
        assert len(sizes) <= outer and all(size <= inner for size in sizes)
        assert len(sizes) + max(sizes) <= max_ops  # etcd: a child gets what its parent leaves
    if max_ops >= 8:
        assert store.requests and max(map(len, store.requests)) > 1


@pytest.mark.parametrize(("n_puts", "key_size", "value_size"), [
    pytest.param(0, 10, 10, id="nothing"),
    pytest.param(1, 10, 10, id="one"),
    pytest.param(4096, 60, 60, id="one full request"),
    pytest.param(4097, 60, 60, id="one more"),
    pytest.param(3000, 200, 400, id="bytes bound"),
])
def test_calls_respect_operations_and_bytes(n_puts, key_size, value_size):
    puts = {f"/k/{i:0{key_size - 3}d}": "v" * value_size for i in range(n_puts)}
    calls = app._calls(puts, 64, 64)
    got = [kv for plans in calls for plan in plans for kv in plan.puts]
    assert got == sorted(puts.items())
    for plans in calls:
        assert 1 <= len(plans) <= 64 and all(1 <= len(plan) <= 64 for plan in plans)
        size = sum(len(k) + len(v) for plan in plans for k, v in plan.puts)
        assert size <= app._CALL_BYTES or len(plans) == 1


def test_invalid_objects_are_skipped():
    store = Store()
    e = engine(store)
    bad = {"kind": "Service", "metadata": {"name": "bad", "namespace": "default"}, "spec": {"ports": "eighty"}}
    run(settle(e, listed(svc("a", "10.0.0.1"), bad)))
    assert store.data == e.desired() and any("/svc/default/a/" in key for key in store.data)


RELISTS = [
    pytest.param([svc("a", "10.0.0.1"), svc("b", "10.0.0.2")], set(), id="nothing changed"),
    pytest.param([svc("a", "10.0.0.1"), svc("b", "10.0.0.9")], {("default", "b")}, id="one changed"),
    pytest.param([svc("a", "10.0.0.1")], {("default", "b")}, id="one gone (its written records built to delete them)"),
    pytest.param([svc("a", "10.0.0.1"), svc("b", "10.0.0.2"), svc("c", "10.0.0.3")], {("default", "c")},
                 id="one new"),
]


@pytest.mark.parametrize(("relisted", "rebuilt"), RELISTS)
def test_relist_rebuilds_only_changed_services(monkeypatch, relisted, rebuilt):
    """Records are a pure function of the objects: an equal object writes nothing; a relist
    commits the changed owners' differences one by one (then a verify rebuilds everything in
    batches, build_services, not counted here)."""
    store = Store()
    e = engine(store)
    built: list[tuple[str, str]] = []
    real, real_labelled = app.records.build_service, app.records.build_service_labelled

    def counting(service, slices, settings):
        built.append(service.ref)
        return real(service, slices, settings)

    def counting_labelled(service, slices, settings, labels=None, memo=None):
        built.append(service.ref)
        return real_labelled(service, slices, settings, labels, memo)

    real_all = e.build_all

    def counting_all(owners, remember=False):  # new owners are built in batches; not a verify's
        if e.verifying is None:
            built.extend((o[1], o[2]) for o in owners if o[0] == "svc")
        return real_all(owners, remember)

    async def go():
        await settle(e, listed(svc("a", "10.0.0.1"), svc("b", "10.0.0.2")))
        monkeypatch.setattr(app.records, "build_service", counting)
        monkeypatch.setattr(app.records, "build_service_labelled", counting_labelled)
        monkeypatch.setattr(e, "build_all", counting_all)
        await settle(e, listed(*relisted, cause="410 Gone"))

    run(go())
    assert set(built) == rebuilt
    fresh = engine(Store())
    run(settle(fresh, listed(*relisted)))
    assert e.desired() == fresh.desired() == {k: v for k, v in store.data.items()}


def test_relist_writes_the_difference_before_reading_etcd():
    """Issue 12: a Service created while the watch was down is committed straight after the
    relist; etcd is read (verified) only afterwards."""
    store = Store()
    e = engine(store)

    async def go():
        await settle(e, listed(svc("a", "10.0.0.1")))
        store.calls.clear()
        store.plans.clear()
        await settle(e, listed(svc("a", "10.0.0.1"), svc("c", "10.0.0.3"), cause="410 Gone"))

    run(go())
    assert store.calls[:2] == ["commit", "scan"]
    assert all("/c/" in key or "/10/0/0/3/" in key or "/default/c/" in key for key, _ in store.plans[0].puts)
    assert store.data == e.desired()


def test_verify_repairs_lost_keys_and_orphans_but_keeps_hand_written():
    store = Store()
    e = engine(store)
    hand = ("/skydns/local/cluster/registry/x1", '{"host":"10.5.5.5"}')

    async def go():
        await settle(e, listed(svc("a", "10.0.0.1"), svc("b", "10.0.0.2")))
        lost = next(k for k in store.data if "/svc/default/a/" in k)
        del store.data[lost]  # deleted by hand
        orphan = '{"host":"10.9.9.9","priority":10,"weight":10,"ttl":30}'
        store.data["/skydns/local/cluster/svc/default/ghost/" + msg.leaf_label(orphan)] = orphan
        store.data[hand[0]] = hand[1]
        e.verify_due = "periodic resync"
        await settle(e)

    run(go())
    assert {k: v for k, v in store.data.items() if k != hand[0]} == e.desired()
    assert store.data[hand[0]] == hand[1]


BAD = '{"host":"web.default.svc.cluster.local.","port":1e400}'


@pytest.mark.parametrize("value", [BAD, '{"host":"10.0.0.1","ttl":NaN}', "{not json", "[" * 10000])
def test_bad_values_in_etcd_are_never_fatal(value):
    """Issue 11.2: a value no record can hold is left alone as not kube2sky's (under a key
    kube2sky does not want) or overwritten (under a key it wants)."""
    store = Store()
    foreign = "/skydns/local/cluster/svc/default/web/_tcp/_http/abc"
    store.data[foreign] = value
    e = engine(store)
    wanted = next(iter(k for k in records_of(svc("web", "10.0.0.1")) if "/svc/default/web/" in k))
    store.data[wanted] = value
    before = app.BAD_VALUES._value.get()

    async def go():
        await settle(e, listed(svc("web", "10.0.0.1")))
        e.verify_due = "periodic resync"
        await settle(e)

    run(go())
    assert store.data[foreign] == value  # not ours: left alone
    assert {k: v for k, v in store.data.items() if k != foreign} == e.desired()  # ours: rewritten
    assert app.BAD_VALUES._value.get() >= before + 1


def records_of(obj: dict) -> dict[str, str]:
    fresh = engine(Store())
    fresh.apply(listed(obj))
    return fresh.desired()


def pod(name: str, ip: str, phase: str = "Running") -> dict:
    return {"kind": "Pod", "metadata": {"name": name, "namespace": "default"},
            "status": {"phase": phase, "podIP": ip}}


def test_host_network_pods_share_a_key_until_the_last_one_goes():
    store = Store()
    e = app.Engine(settings_mod.Settings(backoff=(0.0,), pods=settings_mod.PodsMode.VERIFIED), store,
                   kinds=(k8swatch.SERVICES, k8swatch.PODS))

    def pods(*events):
        return [k8swatch.Listed(k8swatch.PODS, tuple(events), "1", "start", 0.0)]

    async def go():
        await settle(e, listed(), *pods(pod("a", "10.9.0.1"), pod("b", "10.9.0.1")))
        assert any("/pod/default/10-9-0-1/" in k for k in store.data)
        await settle(e, k8swatch.Changed(k8swatch.PODS, "DELETED", pod("a", "10.9.0.1"), 0.0))
        assert any("/pod/default/10-9-0-1/" in k for k in store.data)
        await settle(e, k8swatch.Changed(k8swatch.PODS, "MODIFIED", pod("b", "10.9.0.1", "Succeeded"), 0.0))

    run(go())
    assert not any("/pod/" in k for k in store.data)
    assert store.data == e.desired()


@pytest.mark.parametrize("seed", range(10))
def test_digest_index_finds_what_a_plain_search_finds(seed):
    import array
    import random

    rng = random.Random(seed)
    n = rng.choice([0, 1, 5, 1000, 8191, 8192, 20000])
    edge = [-(1 << 63), (1 << 63) - 1, 0, -1, 1 << 48, (1 << 48) - 1, -(1 << 48)]
    values = sorted({rng.choice(edge) if rng.random() < 0.05 else rng.getrandbits(64) - (1 << 63) for _ in range(n)}
                    | ({(rng.getrandbits(16) - (1 << 15)) << 48} if rng.random() < 0.5 else set()))
    digests = app.Digests(array.array("q", values))
    probes = values + edge + [rng.getrandbits(64) - (1 << 63) for _ in range(500)] + [v + 1 for v in values[:50]]
    position = {v: i for i, v in enumerate(values)}
    for probe in probes:
        assert digests.find(probe) == position.get(probe, -1)


def _headless(name: str, ns: str = "default", port: str = "http") -> dict:
    return {"kind": "Service", "metadata": {"name": name, "namespace": ns},
            "spec": {"clusterIP": "None", "ports": [{"name": port, "port": 8080}]}}


def _slice(service: str, part: int, eps: list[tuple[int, str, bool]], port: str = "http",
           ns: str = "default") -> dict:
    return {"kind": "EndpointSlice", "addressType": "IPv4",
            "metadata": {"name": f"{service}-{part}", "namespace": ns,
                         "labels": {"kubernetes.io/service-name": service}},
            "ports": [{"name": port, "port": 8080 + part, "protocol": "TCP"}],
            "endpoints": [{"addresses": [f"10.1.{part}.{i}"], "hostname": host,
                           "conditions": {"ready": ready}} for i, host, ready in eps]}


@pytest.mark.parametrize("seed", range(12))
def test_kept_leaf_labels_write_what_the_plain_build_writes(monkeypatch, seed):
    """The engine's kept leaf labels (_labels), build memo and endpoint deltas against the plain path: after
    every step of a random history of big headless services (endpoints added, removed, made
    unready, renamed; ports, slices and services changed or deleted; failed commits), etcd
    holds exactly records.desired() of the objects, and every kept label list is the labels of
    a plain build of the inputs it is kept with."""
    import random

    from kube2sky import objects, records

    rng = random.Random(seed)
    if seed % 2:
        monkeypatch.setattr(app, "_RECENT_OWNERS", 0)  # every build goes through the labels
    deltas = []  # the changes written from the changed endpoints alone (records rule 5)
    plain_delta = records.headless_delta
    monkeypatch.setattr(records, "headless_delta", lambda *a: deltas.append(plain_delta(*a)) or deltas[-1])
    store = Store()
    settings = settings_mod.Settings(backoff=(0.0,))
    e = app.Engine(settings, store, kinds=(k8swatch.SERVICES, k8swatch.ENDPOINT_SLICES))
    names = ["a", "b", "c"]
    services = {n: _headless(n) for n in names}
    slices: dict[tuple[str, int], dict] = {}
    members: dict[tuple[str, int], dict[int, tuple[str, bool]]] = {}
    for n in names:
        members[(n, 0)] = {i: (f"p{i}", True) for i in range(rng.randint(10, 40))}
        slices[(n, 0)] = _slice(n, 0, [(i, h, r) for i, (h, r) in sorted(members[(n, 0)].items())])

    def slice_event(key, port="http") -> k8swatch.Changed:
        eps = [(i, h, r) for i, (h, r) in sorted(members[key].items())]
        slices[key] = _slice(key[0], key[1], eps, port=port)
        return k8swatch.Changed(k8swatch.ENDPOINT_SLICES, "MODIFIED", slices[key], 0.0)

    def check() -> None:
        state = records.State([objects.parse("Service", s) for s in services.values()],
                              [objects.parse("EndpointSlice", s) for s in slices.values()])
        assert store.data == records.desired(state, settings)
        for owner, (inputs, labels) in e._labels.items():
            _, todo, _ = records.build_service_labelled(inputs[0], inputs[1], settings)
            assert list(labels) == [int(msg.leaf_label(v), 16) for v in todo], owner

    async def go():
        await settle(e, k8swatch.Listed(k8swatch.SERVICES, tuple(services.values()), "1", "start", 0.0),
                     k8swatch.Listed(k8swatch.ENDPOINT_SLICES, tuple(slices.values()), "1", "start", 0.0))
        check()
        for _ in range(60):
            n = rng.choice(names)
            key = (n, rng.choice([0, 0, 0, 1]))
            what = rng.random()
            if what < 0.08:  # the service goes or comes back
                if n in services:
                    event = k8swatch.Changed(k8swatch.SERVICES, "DELETED", services.pop(n), 0.0)
                else:
                    services[n] = _headless(n)
                    event = k8swatch.Changed(k8swatch.SERVICES, "ADDED", services[n], 0.0)
            elif what < 0.12 and n in services:  # another port name on the service
                services[n] = _headless(n, port=rng.choice(["http", "web"]))
                event = k8swatch.Changed(k8swatch.SERVICES, "MODIFIED", services[n], 0.0)
            elif what < 0.18 and key in slices:  # the slice goes
                del slices[key]
                event = k8swatch.Changed(k8swatch.ENDPOINT_SLICES, "DELETED", _slice(key[0], key[1], []), 0.0)
                members.pop(key, None)
            else:
                eps = members.setdefault(key, {})
                for _ in range(rng.choice([1, 1, 1, 2, 5])):
                    i = rng.randrange(60)
                    change = rng.random()
                    if i in eps and change < 0.4:
                        del eps[i]
                    elif i in eps and change < 0.7:
                        host, ready = eps[i]
                        eps[i] = (host, not ready)
                    else:
                        eps[i] = (rng.choice([f"p{i}", f"q{i}", ""]), True)
                event = slice_event(key, port=rng.choice(["http", "http", "http", "grpc"]))
            if rng.random() < 0.1:
                store.fail = 1  # this change's commit fails; it is retried
            await settle(e, event)
            check()

    run(go())
    assert any(d is not None for d in deltas) and None in deltas


# ---- a first start into an empty prefix writes while the objects are listed (app rule 3a)

def _page(resource: k8swatch.Resource, *items: dict) -> k8swatch.Page:
    return k8swatch.Page(resource, tuple(items), 0.0)


def _listed(resource: k8swatch.Resource, *items: dict) -> k8swatch.Listed:
    return k8swatch.Listed(resource, tuple(items), "1", "start", 0.0)


async def _until(condition, what: str) -> None:
    for _ in range(2000):
        if condition():
            return
        await asyncio.sleep(0.005)
    raise AssertionError(f"timed out waiting for {what}")


async def _drive(e: app.Engine, *steps) -> None:
    """Run the engine on a queue: each step is an event to enqueue or an async check to await."""
    queue: asyncio.Queue = asyncio.Queue()
    stop = asyncio.Event()
    task = asyncio.create_task(e.run(queue, stop))
    try:
        for step in steps:
            if isinstance(step, (k8swatch.Page, k8swatch.Listed, k8swatch.Changed)):
                queue.put_nowait(step)
            else:
                await step()
    finally:
        stop.set()
        await task


def _kinds_engine(store: Store) -> app.Engine:
    settings = settings_mod.Settings(backoff=(0.0,))
    return app.Engine(settings, store, kinds=(k8swatch.SERVICES, k8swatch.ENDPOINT_SLICES))


def _fresh_desired(*events) -> dict[str, str]:
    e = _kinds_engine(Store())
    for event in events:
        e.apply(event)
    return e.desired()


def test_first_start_into_empty_prefix_writes_each_page_before_the_listings_end():
    store = Store()
    e = _kinds_engine(store)
    S, E = k8swatch.SERVICES, k8swatch.ENDPOINT_SLICES
    slices = [_slice("hl", 1, [(1, "a", True), (2, "b", True)]), _slice("hl", 2, [(1, "c", True)])]
    final = [_listed(S, svc("web", "10.0.0.1"), _headless("hl"), svc("late", "10.0.0.3")), _listed(E, *slices)]
    web_key = "/skydns/local/cluster/svc/default/web/"
    hl_key = "/skydns/local/cluster/svc/default/hl/"

    async def web_written():
        await _until(lambda: any(k.startswith(web_key) for k in store.data), "web's records")
        assert not e.synced and not e.verifying and store.calls.count("scan") == 1  # the one-key check only

    async def first_slice_written():
        await _until(lambda: any(k.startswith(hl_key + "a/") for k in store.data), "the first slice's records")
        assert not any(k.startswith(hl_key + "c/") for k in store.data) and not e.synced

    async def synced():
        await _until(lambda: e.synced, "ready")

    run(_drive(e, _page(S, svc("web", "10.0.0.1"), _headless("hl")), web_written,
               _page(E, slices[0]), first_slice_written, _page(E, slices[1]), *final, synced))
    assert store.data == e.desired() == _fresh_desired(*final)
    assert store.calls.count("scan") == 1  # no full sync: nothing to compare with
    assert e.n_keys == len(store.data)


def test_first_start_paged_objects_a_retried_listing_no_longer_holds_are_deleted():
    store = Store()
    e = _kinds_engine(store)
    S, E = k8swatch.SERVICES, k8swatch.ENDPOINT_SLICES
    gone_key = "/skydns/local/cluster/svc/default/gone/"

    async def gone_written():
        await _until(lambda: any(k.startswith(gone_key) for k in store.data), "gone's records")

    async def synced():
        await _until(lambda: e.synced, "ready")

    final = [_listed(S, svc("web", "10.0.0.1")), _listed(E)]
    run(_drive(e, _page(S, svc("web", "10.0.0.1"), svc("gone", "10.0.0.2")), gone_written, *final, synced))
    assert not any(k.startswith(gone_key) for k in store.data)
    assert store.data == e.desired() == _fresh_desired(*final)


def test_first_start_with_records_in_etcd_is_a_full_sync_after_the_listings():
    store = Store()
    orphan_value = msg.encode(msg.Service(host="10.9.9.9", priority=10, weight=10, ttl=30))
    orphan = f"/skydns/local/cluster/svc/default/old/{msg.leaf_label(orphan_value)}"
    store.data[orphan] = orphan_value
    e = _kinds_engine(store)
    S, E = k8swatch.SERVICES, k8swatch.ENDPOINT_SLICES

    async def page_applied_nothing_written():
        await _until(lambda: ("svc", "default", "web") in e.dirty, "the page applied")
        await asyncio.sleep(0.05)
        assert e.early is False and store.data == {orphan: orphan_value} and not e.synced
        assert store.calls == ["scan", "scan"]  # the one-key check, then etcd read while listing

    async def synced():
        await _until(lambda: e.synced, "ready")

    final = [_listed(S, svc("web", "10.0.0.1")), _listed(E)]
    run(_drive(e, _page(S, svc("web", "10.0.0.1")), page_applied_nothing_written, *final, synced))
    assert store.data == e.desired() == _fresh_desired(*final)  # the orphan is gone
    assert store.calls.count("scan") == 3  # not read again for the sync; once more for the orphan's key


def test_first_start_ready_when_the_last_listing_brings_nothing_to_write():
    """Every owner was written from the pages: the last Listed changes nothing, and the
    engine still turns ready (nothing dirty is left to wake it)."""
    store = Store()
    e = _kinds_engine(store)
    S, E = k8swatch.SERVICES, k8swatch.ENDPOINT_SLICES

    async def written():
        await _until(lambda: not e.dirty and any("/web/" in k for k in store.data), "web written")

    async def synced():
        await _until(lambda: e.synced, "ready")

    run(_drive(e, _page(S, svc("web", "10.0.0.1")), _listed(S, svc("web", "10.0.0.1")), written,
               _listed(E), synced))
    assert store.data == e.desired()


def test_a_build_that_raises_keeps_what_etcd_holds(monkeypatch, caplog):
    """app rule 9: a bug in computing one service's records (not bad input) never deletes what
    etcd holds for it, on a change, a relist's verify or a restart's full sync; other services
    are written and cleaned up as usual, and once the service builds again it converges."""
    from kube2sky import records

    broken: set[str] = set()
    real = records._service_builder

    def builder(service, slices, settings):
        if service.name in broken:
            raise RuntimeError("a bug")
        return real(service, slices, settings)

    monkeypatch.setattr(records, "_service_builder", builder)
    store = Store()
    e = engine(store)

    def of(name: str) -> dict[str, str]:
        """The keys of a service: below its names, or pointing at them (its PTR)."""
        return {k: v for k, v in store.data.items() if f"/{name}/" in k or f'"{name}.default.' in v}

    async def go():
        await settle(e, listed(svc("web", "10.0.0.1"), svc("old", "10.0.0.9"), svc("api", "10.0.0.5")))
        web = of("web")
        assert len(web) == 4 and any("/arpa/" in k for k in web)  # A, SRV, PTR, the legacy alias
        broken.add("web")
        await settle(e, changed("MODIFIED", svc("web", "10.0.0.2")))
        assert of("web") == web
        # a relist: "old" is gone and its keys go, "api" changed; web's keys stay
        await settle(e, listed(svc("web", "10.0.0.2"), svc("api", "10.0.0.6"), cause="410 Gone"))
        assert of("web") == web and not of("old")
        assert '{"host":"10.0.0.6"' in "".join(of("api").values())
        # built and failed again and again, its traceback logged once (rate-limited)
        logged = [r for r in caplog.records if "cannot compute the records of svc/default/web" in r.getMessage()]
        assert len(logged) == 1 and logged[0].exc_info
        # a restart: a full sync that knows nothing written keeps them too
        again = engine(store)
        await settle(again, listed(svc("web", "10.0.0.2"), svc("api", "10.0.0.6")))
        assert of("web") == web and not of("old")
        # fixed: the next change writes web's records and a verify leaves exactly the desired
        broken.clear()
        await settle(again, changed("MODIFIED", svc("web", "10.0.0.3")))
        await again.verify("test", background=True)
        await settle(again)
        assert store.data == again.desired()
        assert '{"host":"10.0.0.3"' in "".join(of("web").values())

    run(go())
