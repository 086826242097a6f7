"""The sync engine (kube2sky.app.Engine) with an in-memory store: what each change writes."""

from __future__ import annotations

import asyncio

import pytest

from kube2sky import app, etcdwriter, k8swatch, reconcile
from kube2sky import settings as settings_mod


class Store(etcdwriter.DryRun):
    """Records every committed plan; fails the next `fail` calls with EtcdError."""

    def __init__(self) -> None:
        super().__init__()
        self.quiet = True
        self.plans: list[reconcile.Plan] = []
        self.fail = 0

    async def read_prefix(self, prefix):
        if self.fail:
            self.fail -= 1
            raise etcdwriter.EtcdError("etcd down")
        return await super().read_prefix(prefix)

    async def commit(self, plan, guard=None, lease=None):
        if self.fail:
            self.fail -= 1
            raise etcdwriter.EtcdError("etcd down")
        self.plans.append(plan)
        return await super().commit(plan, guard, lease)


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
    for event in events:
        e.apply(event)
    for _ in range(10):
        if not (e.full or e.dirty or e.actual is None):
            return
        try:
            await e.step()
        except etcdwriter.EtcdError:
            e.actual = None
            e.full = e.full or "etcd error"


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
    assert store.data == e.desired


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
    assert {k: v for k, v in store.data.items() if "registry" not in k} == e.desired


def test_etcd_errors_keep_the_desired_state_and_converge():
    store = Store()
    e = engine(store)

    async def go():
        await settle(e, listed(svc("a", "10.0.0.1")))
        store.fail = 2
        await settle(e, changed("ADDED", svc("b", "10.0.0.2")), changed("DELETED", svc("a", "10.0.0.1")))

    run(go())
    assert store.data == e.desired
    assert any("/b/" in key for key in store.data) and not any("/svc/default/a/" in key for key in store.data)


@pytest.mark.parametrize("max_ops", [1, 2, 128])
def test_big_changes_are_chunked(max_ops):
    store = Store()
    e = engine(store, max_txn_ops=max_ops)
    run(settle(e, listed(*(svc(f"s{i}", f"10.0.1.{i}") for i in range(20)))))
    assert all(len(plan) <= max_ops for plan in store.plans)
    assert store.data == e.desired


def test_invalid_objects_are_skipped():
    store = Store()
    e = engine(store)
    bad = {"kind": "Service", "metadata": {"name": "bad", "namespace": "default"}, "spec": {"ports": "eighty"}}
    run(settle(e, listed(svc("a", "10.0.0.1"), bad)))
    assert store.data == e.desired and any("/svc/default/a/" in key for key in store.data)


RELISTS = [
    pytest.param([svc("a", "10.0.0.1"), svc("b", "10.0.0.2")], set(), id="nothing changed"),
    pytest.param([svc("a", "10.0.0.1"), svc("b", "10.0.0.9")], {("default", "b")}, id="one changed"),
    pytest.param([svc("a", "10.0.0.1")], set(), id="one gone (its records dropped, nothing built)"),
    pytest.param([svc("a", "10.0.0.1"), svc("b", "10.0.0.2"), svc("c", "10.0.0.3")], {("default", "c")},
                 id="one new"),
]


@pytest.mark.parametrize(("relisted", "rebuilt"), RELISTS)
def test_relist_rebuilds_only_changed_services(monkeypatch, relisted, rebuilt):
    """Records are a pure function of the objects: an equal object keeps its records."""
    store = Store()
    e = engine(store)
    built: list[tuple[str, str]] = []
    real = app.records.build_service

    def counting(service, slices, settings):
        built.append(service.ref)
        return real(service, slices, settings)

    async def go():
        await settle(e, listed(svc("a", "10.0.0.1"), svc("b", "10.0.0.2")))
        monkeypatch.setattr(app.records, "build_service", counting)
        await settle(e, listed(*relisted, cause="410 Gone"))

    run(go())
    assert set(built) == rebuilt
    fresh = engine(Store())
    run(settle(fresh, listed(*relisted)))
    assert e.desired == fresh.desired == {k: v for k, v in store.data.items()}
