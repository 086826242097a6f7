"""reconcile: desired vs actual -> sorted puts/deletes; ownership; chunking into transactions."""

from __future__ import annotations

import dataclasses

import pytest

from kube2sky import objects, records, reconcile, settings
from skydns import msg

S = settings.Settings()
OWNED = reconcile.ownership(S)


def v(host: str, port: int = 0) -> str:
    return msg.encode(msg.Service(host=host, port=port, priority=10, weight=10, ttl=30))


def at(name: str, value: str, leaf: str = "") -> tuple[str, str]:
    return msg.name_to_key(name) + "/" + (leaf or msg.leaf_label(value)), value


WEB_A = at("web.default.svc.cluster.local.", v("10.0.0.10"))
WEB_A2 = at("web.default.svc.cluster.local.", v("10.0.0.11"))
WEB_SRV = at("_http._tcp.web.default.svc.cluster.local.", v("web.default.svc.cluster.local.", 80),
             leaf=msg.leaf_label(v("10.0.0.10")))
WEB_SRV_8080 = (WEB_SRV[0], v("web.default.svc.cluster.local.", 8080))
OLD_PTR = (msg.ip_to_reverse_key("10.0.0.99") + "/" + msg.leaf_label(v("old.default.svc.cluster.local.")),
           v("old.default.svc.cluster.local."))
OLD_POD = at("10-2-0-1.default.pod.cluster.local.", v("10.2.0.1"))
OLD_LEGACY = at("old.default.cluster.local.", v("10.0.0.99"))
OLD_VERSION = at("dns-version.cluster.local.", '{"text":"1.0.0","ttl":30}')

# Operators' records (etcdctl put): none of them may ever be deleted.
HAND = [
    ("/skydns/local/cluster/registry", '{"host":"10.9.0.1"}'),
    ("/skydns/local/cluster/custom/x1", '{"host":"10.9.0.2","ttl":60}'),
    ("/skydns/local/cluster/svc/default/web/extra", '{"host":"10.9.0.3"}'),
    ("/skydns/local/cluster/svc/default/web/_tcp/_http/beef", '{"host":"other.example.","port":80}'),
    ("/skydns/local/cluster/svc/default/web/_tcp/_http/custom", v("web.default.svc.cluster.local.", 81)),
    ("/skydns/arpa/in-addr/10/9/0/1/x", '{"host":"registry.cluster.local."}'),
    ("/skydns/local/cluster/bad/json", "{not json"),
    # a kube2sky-shaped record of another zone (another cluster sharing the prefix)
    at("web.default.svc.other.zone.", v("10.0.0.10")),
    ("/skydns/local/cluster", '{"host":"10.9.0.9"}'),
    ("/elsewhere/local/cluster/" + msg.leaf_label(v("1.2.3.4")), v("1.2.3.4")),
    # values no record can hold (issue 11.2): not kube2sky's, and reading them never raises
    ("/skydns/local/cluster/svc/default/web/_tcp/_http/abc",
     '{"host":"web.default.svc.cluster.local.","port":1e400}'),
    ("/skydns/local/cluster/svc/default/web/_tcp/_http/ab", '{"host":"web.default.svc.cluster.local.","port":NaN}'),
    ("/skydns/local/cluster/svc/default/web/_tcp/_http/a1", '{"host":"web.default.svc.cluster.local.","port":-Infinity}'),
    ("/skydns/local/cluster/svc/default/web/_tcp/_http/a2", '{"host":"web.default.svc.cluster.local.","port":8e99}'),
    ("/skydns/local/cluster/svc/default/web/_tcp/_http/a3", '{"host":["x"],"port":80}'),
    ("/skydns/local/cluster/svc/default/web/_tcp/_http/a4", "[" * 100000),
    ("/skydns/local/cluster/svc/default/web/_tcp/_http/a5", "\ufffd\ufffd"),
]

BAD_VALUES = [
    '{"host":"web.default.svc.cluster.local.","port":1e400}',
    '{"host":"10.0.0.1","ttl":NaN}',
    '{"host":"10.0.0.1","ttl":Infinity}',
    '{"host":"10.0.0.1","priority":1e30}',
    "[" * 100000,
    "{not json",
    '"a string"',
]


@pytest.mark.parametrize("value", BAD_VALUES, ids=[v[:40] for v in BAD_VALUES])
def test_unreadable_says_why_and_never_raises(value: str) -> None:
    reason = reconcile.unreadable(value)
    assert isinstance(reason, str) and reason


def test_readable_value_has_no_reason() -> None:
    assert reconcile.unreadable(v("10.0.0.1")) is None


@pytest.mark.parametrize("key, value", HAND, ids=[k for k, _ in HAND])
def test_hand_written_not_owned(key: str, value: str) -> None:
    assert not OWNED(key, value)


def test_everything_kube2sky_writes_is_owned() -> None:
    docs = [
        {"kind": "Service", "metadata": {"name": "web", "namespace": "default"},
         "spec": {"clusterIP": "10.0.0.10", "clusterIPs": ["10.0.0.10", "fd00::10"],
                  "ports": [{"name": "http", "port": 80}, {"name": "dns", "port": 53,
                                                          "protocol": "UDP"}]}},
        {"kind": "Service", "metadata": {"name": "db", "namespace": "default"},
         "spec": {"clusterIP": "None", "ports": [{"name": "pg", "port": 5432}]}},
        {"kind": "Service", "metadata": {"name": "ext", "namespace": "default"},
         "spec": {"type": "ExternalName", "externalName": "example.com"}},
        {"kind": "Service", "metadata": {"name": "kube-dns", "namespace": "kube-system"},
         "spec": {"clusterIP": "10.0.0.53"}},
        {"kind": "EndpointSlice", "metadata": {"name": "db-1", "namespace": "default",
                                               "labels": {"kubernetes.io/service-name": "db"}},
         "addressType": "IPv4", "ports": [{"name": "pg", "port": 5432}],
         "endpoints": [{"addresses": ["10.1.0.1"], "hostname": "db-0"},
                       {"addresses": ["10.1.0.2"]}]},
        {"kind": "Pod", "metadata": {"name": "p", "namespace": "default"},
         "status": {"phase": "Running", "podIP": "10.2.0.1"}},
    ]
    parsed = [objects.parse(d["kind"], d) for d in docs]
    state = records.State([o for o in parsed if isinstance(o, objects.Service)],
                          [o for o in parsed if isinstance(o, objects.EndpointSlice)],
                          [o for o in parsed if isinstance(o, objects.Pod)])
    s = dataclasses.replace(S, pods=settings.PodsMode.VERIFIED)
    desired = records.desired(state, s)
    assert len(desired) > 20
    assert [k for k, val in desired.items() if not OWNED(k, val)] == []
    # so an empty cluster deletes all of it, and nothing hand-written
    actual = {**desired, **dict(HAND)}
    assert reconcile.plan({}, actual, owned=OWNED) == reconcile.Plan((), tuple(sorted(desired)))


PLANS = [
    ("no-op-when-equal", dict([WEB_A, WEB_SRV]), dict([WEB_A, WEB_SRV]), (), ()),
    ("create-from-empty", dict([WEB_A, WEB_SRV]), {}, (WEB_A, WEB_SRV), ()),
    ("orphans-deleted", dict([WEB_A]), dict([WEB_A, WEB_SRV, OLD_PTR, OLD_POD, OLD_LEGACY,
                                             OLD_VERSION]),
     (), tuple(sorted(k for k, _ in [WEB_SRV, OLD_PTR, OLD_POD, OLD_LEGACY, OLD_VERSION]))),
    ("ip-change-put-new-delete-old", dict([WEB_A2]), dict([WEB_A]), (WEB_A2,), (WEB_A[0],)),
    ("same-key-new-value-is-a-put", dict([WEB_SRV_8080]), dict([WEB_SRV]), (WEB_SRV_8080,), ()),
    ("hand-written-kept", dict([WEB_A]), dict([WEB_A, *HAND]), (), ()),
    ("hand-written-overwritten-when-desired", dict([(HAND[0][0], v("10.0.0.1"))]), dict(HAND[:1]),
     ((HAND[0][0], v("10.0.0.1")),), ()),
]


@pytest.mark.parametrize("desired, actual, puts, deletes", [p[1:] for p in PLANS],
                         ids=[p[0] for p in PLANS])
def test_plan(desired: dict, actual: dict, puts: tuple, deletes: tuple) -> None:
    got = reconcile.plan(desired, actual, owned=OWNED)
    assert got == reconcile.Plan(tuple(sorted(puts)), deletes)
    # idempotent: applying it leaves nothing to do
    after = {k: val for k, val in actual.items() if k not in got.deletes} | dict(got.puts)
    assert reconcile.plan(desired, after, owned=OWNED) == reconcile.Plan()
    assert not reconcile.plan(desired, after, owned=OWNED)


def test_plan_default_ownership_any_zone() -> None:
    other = at("web.default.svc.other.zone.", v("10.0.0.10"))
    assert reconcile.plan({}, dict([other])).deletes == (other[0],)
    assert reconcile.plan({}, dict([other]), owned=OWNED).deletes == ()


def test_plan_other_prefix() -> None:
    s = dataclasses.replace(S, prefix="dns")
    key = "/dns/local/cluster/svc/default/web/" + msg.leaf_label(v("10.0.0.10"))
    assert reconcile.plan({}, {key: v("10.0.0.10")}, "dns", reconcile.ownership(s)).deletes == (key,)
    assert reconcile.plan({}, {key: v("10.0.0.10")}, owned=OWNED).deletes == ()


CHANGES = [
    ("service-updated", ("/skydns/local/cluster/svc/default/web/",), dict([WEB_A2]),
     dict([WEB_A, WEB_SRV, OLD_PTR, HAND[2]]), (WEB_A2,), tuple(sorted([WEB_A[0], WEB_SRV[0]]))),
    ("old-keys-in-scope", ("/skydns/local/cluster/svc/default/web/", OLD_PTR[0]), {},
     dict([WEB_A, OLD_PTR]), (), tuple(sorted([WEB_A[0], OLD_PTR[0]]))),
    ("prefix-is-a-directory", ("/skydns/local/cluster/svc/default/we",), {},
     dict([WEB_A]), (), ()),
    ("exact-key-without-slash", ("/skydns/local/cluster/svc/default/web",), {},
     dict([WEB_A]), (), (WEB_A[0],)),
]


@pytest.mark.parametrize("prefixes, desired, actual, puts, deletes", [c[1:] for c in CHANGES],
                         ids=[c[0] for c in CHANGES])
def test_changes_for(prefixes: tuple, desired: dict, actual: dict, puts: tuple,
                     deletes: tuple) -> None:
    got = reconcile.changes_for(prefixes, desired, actual, owned=OWNED)
    assert got == reconcile.Plan(puts, deletes)


def test_changes_for_with_service_prefixes() -> None:
    svc = objects.parse_service({"metadata": {"name": "web", "namespace": "default"},
                                 "spec": {"clusterIP": "10.0.0.11"}})
    before = records.encode(records.for_service(
        objects.parse_service({"metadata": {"name": "web", "namespace": "default"},
                               "spec": {"clusterIP": "10.0.0.10",
                                        "ports": [{"name": "http", "port": 80}]}}), (), S))
    now = records.encode(records.for_service(svc, (), S))
    actual = {**before, **dict(HAND)}
    got = reconcile.changes_for((*records.service_prefixes("default", "web", S), *before),
                                now, actual, owned=OWNED)
    # the legacy alias (host = the service name) is the same before and after
    assert dict(got.puts) == {k: val for k, val in now.items() if before.get(k) != val}
    assert set(got.deletes) == set(before) - set(now)  # A, SRV, PTR of the old IP
    after = {k: val for k, val in actual.items() if k not in got.deletes} | dict(got.puts)
    assert after == {**now, **dict(HAND)}


# ---- chunking -------------------------------------------------------------------------------

def svc_ops(name: str, n_puts: int, n_deletes: int) -> tuple[list, list]:
    base = f"/skydns/local/cluster/svc/default/{name}/"
    return ([(base + f"p{i:03}", "{}") for i in range(n_puts)],
            [base + f"d{i:03}" for i in range(n_deletes)])


def make_plan(*groups: tuple[list, list]) -> reconcile.Plan:
    puts = sorted(p for g in groups for p in g[0])
    deletes = sorted(d for g in groups for d in g[1])
    return reconcile.Plan(tuple(puts), tuple(deletes))


def check_batches(plan: reconcile.Plan, batches: list[reconcile.Plan], max_ops: int) -> None:
    assert all(0 < len(b) <= max_ops for b in batches)
    assert sorted(p for b in batches for p in b.puts) == list(plan.puts)
    assert sorted(d for b in batches for d in b.deletes) == list(plan.deletes)
    # every delete comes in the same or a later batch than every put of its group
    last_put: dict[str, int] = {}
    for i, batch in enumerate(batches):
        for key, _ in batch.puts:
            last_put[reconcile.group_of(key)] = i
    for i, batch in enumerate(batches):
        for key in batch.deletes:
            assert last_put.get(reconcile.group_of(key), -1) <= i, key


CHUNKS = [
    ("empty", make_plan(), 128, 0),
    ("small-one-batch", make_plan(svc_ops("a", 3, 2), svc_ops("b", 1, 1)), 128, 1),
    ("groups-kept-together", make_plan(svc_ops("a", 3, 2), svc_ops("b", 3, 2)), 6, 2),
    ("big-group-split-puts-first", make_plan(svc_ops("big", 7, 5)), 4, 3),
    ("many-groups", make_plan(*(svc_ops(f"s{i}", 2, 1) for i in range(100))), 128, 3),
    ("max-ops-1", make_plan(svc_ops("a", 2, 2)), 1, 4),
]


@pytest.mark.parametrize("plan, max_ops, n_batches", [c[1:] for c in CHUNKS],
                         ids=[c[0] for c in CHUNKS])
def test_chunk(plan: reconcile.Plan, max_ops: int, n_batches: int) -> None:
    batches = reconcile.chunk(plan, max_ops)
    assert len(batches) == n_batches
    check_batches(plan, batches, max_ops)


def test_chunk_groups_together_and_deletes_last() -> None:
    a, b = svc_ops("a", 3, 2), svc_ops("b", 3, 2)
    only_deletes = svc_ops("c", 0, 4)
    batches = reconcile.chunk(make_plan(only_deletes, a, b), 6)
    assert [sorted({reconcile.group_of(k) for k in [*dict(x.puts), *x.deletes]})
            for x in batches] == [
        ["local/cluster/svc/default/a"], ["local/cluster/svc/default/b"],
        ["local/cluster/svc/default/c"]]


def test_chunk_big_group_puts_before_deletes() -> None:
    batches = reconcile.chunk(make_plan(svc_ops("big", 7, 5)), 4)
    assert [(len(x.puts), len(x.deletes)) for x in batches] == [(4, 0), (3, 1), (0, 4)]


def test_chunk_real_reconcile_below_etcd_limit() -> None:
    svcs = [objects.parse_service({"metadata": {"name": f"s{i}", "namespace": "default"},
                                   "spec": {"clusterIP": f"10.0.{i // 250}.{i % 250 + 1}",
                                            "ports": [{"name": "http", "port": 80}]}})
            for i in range(300)]
    desired = records.desired(records.State(svcs), S)
    plan = reconcile.plan(desired, {}, owned=OWNED)
    batches = reconcile.chunk(plan, S.max_txn_ops)
    check_batches(plan, batches, S.max_txn_ops)
    # a service's svc-subtree records (A + SRV) travel together in one batch
    batch_of: dict[str, set[int]] = {}
    for i, batch in enumerate(batches):
        for key, _ in batch.puts:
            batch_of.setdefault(reconcile.group_of(key), set()).add(i)
    assert all(len(found) == 1 for found in batch_of.values())


@pytest.mark.parametrize("key, want", [
    ("/skydns/local/cluster/svc/default/web/5f106532", "local/cluster/svc/default/web"),
    ("/skydns/local/cluster/svc/default/db/db-0/abc", "local/cluster/svc/default/db"),
    ("/skydns/local/cluster/svc/default/web/_tcp/_http/5f106532", "local/cluster/svc/default/web"),
    ("/skydns/local/cluster/pod/default/10-2-0-1/abc", "local/cluster/pod/default/10-2-0-1"),
    ("/skydns/arpa/in-addr/10/0/0/1/abc", "arpa/in-addr/10/0/0/1"),
    ("/skydns/local/cluster/default/web/abc", "local/cluster/default/web"),
    ("/skydns/local/cluster/dns-version/abc", "local/cluster/dns-version"),
    ("/other/x", "/other/x"),
], ids=["svc-a", "svc-endpoint", "svc-srv", "pod", "arpa", "legacy", "dns-version", "foreign"])
def test_group_of(key: str, want: str) -> None:
    assert reconcile.group_of(key) == want
