"""The in-memory mirror: load, put/delete, bad values, and SkyDNS lookup semantics."""

from __future__ import annotations

import pytest

from skydns import msg, store

RECORDS = {
    "/skydns/local/cluster/svc/default/web/a1": '{"host":"10.0.0.1"}',
    "/skydns/local/cluster/svc/default/web/_tcp/_http/a1": '{"host":"web.default.svc.cluster.local.","port":80}',
    "/skydns/local/cluster/svc/default/web2/b1": '{"host":"10.0.0.2"}',
    "/skydns/local/cluster/svc/default/db/db-0/h1": '{"host":"10.1.0.1"}',
    "/skydns/local/cluster/svc/default/db/db-1/h2": '{"host":"10.1.0.2"}',
    "/skydns/local/cluster/svc/default/db/_hidden": '{"host":"10.1.0.9"}',
    "/skydns/local/cluster/svc/other/web/c1": '{"host":"10.2.0.1"}',
    "/skydns/local/cluster/leaf": '{"host":"10.3.0.1"}',
    "/skydns/local/cluster/leaf/below": '{"host":"10.3.0.2"}',
}
VIEW = store.Store.from_records(RECORDS, revision=5)


def hosts(records):
    return sorted(r.host for r in records)


LOOKUPS = [
    ("web.default.svc.cluster.local.", False, ["10.0.0.1"]),
    ("WEB.Default.svc.cluster.local", False, ["10.0.0.1"]),
    ("web2.default.svc.cluster.local.", False, ["10.0.0.2"]),
    ("we.default.svc.cluster.local.", False, []),
    ("a1.web.default.svc.cluster.local.", False, ["10.0.0.1"]),
    ("_http._tcp.web.default.svc.cluster.local.", False, ["web.default.svc.cluster.local."]),
    ("a1._http._tcp.web.default.svc.cluster.local.", False, ["web.default.svc.cluster.local."]),
    ("_tcp.web.default.svc.cluster.local.", False, []),
    ("db.default.svc.cluster.local.", False, ["10.1.0.1", "10.1.0.2"]),
    ("_hidden.db.default.svc.cluster.local.", False, ["10.1.0.9"]),
    ("default.svc.cluster.local.", False, ["10.0.0.1", "10.0.0.2", "10.1.0.1", "10.1.0.2"]),
    ("web.*.svc.cluster.local.", False, ["10.0.0.1", "10.2.0.1"]),
    ("web.any.svc.cluster.local.", False, ["10.0.0.1", "10.2.0.1"]),
    ("*.*.svc.cluster.local.", False, ["10.0.0.1", "10.0.0.2", "10.1.0.1", "10.1.0.2", "10.2.0.1"]),
    ("*.web.*.svc.cluster.local.", False, ["10.0.0.1", "10.2.0.1"]),
    ("*.db.default.svc.cluster.local.", False, ["10.1.0.1", "10.1.0.2"]),
    ("*.*.*.*.*.*.*.cluster.local.", False, []),
    ("leaf.cluster.local.", False, ["10.3.0.1", "10.3.0.2"]),
    ("leaf.cluster.local.", True, ["10.3.0.1"]),
    ("web.default.svc.cluster.local.", True, []),
    ("a1.web.default.svc.cluster.local.", True, ["10.0.0.1"]),
    ("*.web.default.svc.cluster.local.", True, ["10.0.0.1"]),
    ("nothing.cluster.local.", False, []),
    ("example.com.", False, []),
    ("a..b.", False, []),
]


@pytest.mark.parametrize(("name", "exact", "want"), LOOKUPS,
                         ids=[f"{n}|{'exact' if e else 'subtree'}" for n, e, _ in LOOKUPS])
def test_lookup(name, exact, want):
    assert hosts(VIEW.lookup(name, exact=exact)) == want


EXISTS = [
    ("web.default.svc.cluster.local.", True),
    ("_tcp.web.default.svc.cluster.local.", True),
    ("svc.cluster.local.", True),
    ("cluster.local.", True),
    ("web3.default.svc.cluster.local.", False),
    ("web.*.svc.cluster.local.", True),
    ("nope.*.svc.cluster.local.", False),
    ("x.leaf.cluster.local.", False),
]


@pytest.mark.parametrize(("name", "want"), EXISTS, ids=[n for n, _ in EXISTS])
def test_exists(name, want):
    assert VIEW.exists(name) is want


def test_records_carry_their_key():
    (rec,) = VIEW.lookup("web2.default.svc.cluster.local.")
    assert rec.key == "/skydns/local/cluster/svc/default/web2/b1"


def test_from_records_accepts_names_and_services():
    view = store.Store.from_records({
        "x1.web.default.svc.cluster.local.": msg.Service(host="10.0.0.1", ttl=30),
        "/skydns/local/cluster/svc/default/web/x2": '{"host":"10.0.0.2"}',
    })
    assert hosts(view.lookup("web.default.svc.cluster.local.")) == ["10.0.0.1", "10.0.0.2"]
    assert view.loaded and len(view) == 2 and view.revision == 1


def test_put_delete_revision_generation():
    view = store.Store()
    assert not view.loaded and len(view) == 0
    view.replace([("/skydns/local/a/x", b'{"host":"10.0.0.1"}')], revision=10)
    gen = view.generation
    assert view.loaded and view.revision == 10
    assert view.put("/skydns/local/a/y", b'{"host":"10.0.0.2"}', 11) is True
    assert (view.revision, view.generation) == (11, gen + 1)
    assert hosts(view.lookup("a.local.")) == ["10.0.0.1", "10.0.0.2"]
    view.put("/skydns/local/a/y", b'{"host":"10.0.0.3"}', 12)
    assert hosts(view.lookup("a.local.")) == ["10.0.0.1", "10.0.0.3"]
    view.delete("/skydns/local/a/y", 13)
    assert hosts(view.lookup("a.local.")) == ["10.0.0.1"]
    assert (view.revision, view.generation, len(view)) == (13, gen + 3, 1)
    view.delete("/skydns/local/a/x", 14)
    # Deleting the last record prunes the path: the name no longer exists.
    assert not view.exists("a.local.") and not view.exists("local.") and len(view) == 0
    view.delete("/skydns/local/never", 15)
    assert view.revision == 15


def test_bad_value_removes_record_until_fixed():
    view = store.Store.from_records({"/skydns/local/a/x": '{"host":"10.0.0.1"}'})
    assert view.put("/skydns/local/a/x", b"{not json", 2) is False
    assert view.lookup("a.local.") == [] and not view.exists("a.local.")
    assert "/skydns/local/a/x" in view.bad and len(view) == 0
    assert view.put("/skydns/local/a/x", b'{"host":"10.0.0.5"}', 3) is True
    assert view.bad == {} and hosts(view.lookup("a.local.")) == ["10.0.0.5"]
    view.put("/skydns/local/a/x", b'{"port":"eighty"}', 4)
    view.delete("/skydns/local/a/x", 5)
    assert view.bad == {}


def test_replace_skips_bad_values_and_resets():
    view = store.Store.from_records({"/skydns/local/old/x": '{"host":"10.0.0.1"}'})
    view.replace([("/skydns/local/a/x", b'{"host":"10.0.0.1"}'), ("/skydns/local/a/y", b"[1,2]"),
                  ("/elsewhere/a", b"{}")], revision=20)
    assert len(view) == 1 and set(view.bad) == {"/skydns/local/a/y", "/elsewhere/a"}
    assert not view.exists("old.local.")


def test_custom_prefix_and_case_insensitive_keys():
    view = store.Store.from_records({"/custom/Local/A/X": '{"host":"10.0.0.1"}'}, prefix="custom")
    assert hosts(view.lookup("a.local.")) == ["10.0.0.1"]
    assert view.lookup("a.local.")[0].key == "/custom/Local/A/X"
    assert set(view.records()) == {"/custom/Local/A/X"}
    view.delete("/custom/local/a/x", 2)  # another etcd key: nothing to delete
    assert len(view) == 1 and view.exists("x.a.local.")
    view.delete("/custom/Local/A/X", 3)
    assert len(view) == 0 and not view.exists("a.local.")


def test_find_limit():
    view = store.Store.from_records({f"/skydns/local/a/{i}": '{"host":"10.0.0.1"}' for i in range(50)})
    assert len(view.find(("local", "a"), limit=7)) == 7
    assert len(view.find(("local", "a"))) == 50


# SkyDNS msg.Group cases (skynetservices/skydns msg/service_test.go TestGroup), as keys below /skydns.
GROUPS = [
    ("shortest-key-group-wins", {"/skydns/test/skydns/dom1/sub/b": ("127.0.0.1", "g1"),
                                 "/skydns/test/skydns/dom1/a": ("127.0.0.2", "g2")}, ["127.0.0.2"]),
    ("same-level-disagree-ignored", {"/skydns/test/skydns/region1/a": ("server1", "g1"),
                                     "/skydns/test/skydns/region1/b": ("server2", "g2")}, ["server1", "server2"]),
    ("top-level-group-only", {"/skydns/test/skydns/region1/dom/a": ("server1", "g1"),
                              "/skydns/test/skydns/region1/dom/subdom/a": ("server2", "g2")}, ["server1"]),
    ("groupless-included", {"/skydns/test/skydns/region1/dom/a": ("server1", "g1"),
                            "/skydns/test/skydns/region1/dom/subdom/a": ("server2", "g2"),
                            "/skydns/test/skydns/region1/dom/subdom/b": ("server3", "")}, ["server1", "server3"]),
    ("empty-group-top-level", {"/skydns/test/skydns/region1/dom/a": ("server1", "g1"),
                               "/skydns/test/skydns/region1/dom/b": ("server4", ""),
                               "/skydns/test/skydns/region1/dom/subdom/a": ("server2", "g2")}, ["server1", "server4"]),
    ("same-group-everywhere", {"/skydns/test/skydns/region1/dom/a": ("server1", "g5"),
                               "/skydns/test/skydns/region1/dom/b": ("server4", ""),
                               "/skydns/test/skydns/region1/dom/subdom/a": ("server2", "g5")},
     ["server1", "server2", "server4"]),
    ("one-group", {"/skydns/test/skydns/region1/dom/a": ("server1", "g6")}, ["server1"]),
    ("no-group", {"/skydns/test/skydns/region1/dom/a": ("server1", "")}, ["server1"]),
]


@pytest.mark.parametrize(("records", "want"), [g[1:] for g in GROUPS], ids=[g[0] for g in GROUPS])
def test_group(records, want):
    view = store.Store.from_records(
        {key: msg.Service(host=host, group=group) for key, (host, group) in records.items()})
    assert hosts(view.lookup("skydns.test.")) == want


def test_bytes_keys_from_etcd_clients():
    view = store.Store()
    view.replace([(b"/skydns/local/a/x", b'{"host":"10.0.0.1"}')], revision=1)
    view.put(b"/skydns/local/a/y", b'{"host":"10.0.0.2"}', 2)
    view.delete(b"/skydns/local/a/x", 3)
    assert hosts(view.lookup("a.local.")) == ["10.0.0.2"]


def test_leaf_grows_children_and_back():
    view = store.Store.from_records({"/skydns/local/a/x": '{"host":"10.0.0.1"}'})
    view.put("/skydns/local/a/x/y", b'{"host":"10.0.0.2"}', 2)
    assert hosts(view.lookup("x.a.local.")) == ["10.0.0.1", "10.0.0.2"]
    view.delete("/skydns/local/a/x/y", 3)
    view.put("/skydns/local/a/w", b'{"host":"10.0.0.3"}', 4)
    assert hosts(view.lookup("x.a.local.")) == ["10.0.0.1"]
    assert not view.exists("y.x.a.local.") and not view.exists("y.w.a.local.")
    view.delete("/skydns/local/a/x", 5)
    assert hosts(view.lookup("a.local.")) == ["10.0.0.3"]
    assert store._NO_CHILDREN == {}
