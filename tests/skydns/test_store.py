"""The in-memory mirror: load, put/delete, bad values, and SkyDNS lookup semantics."""

from __future__ import annotations

import dataclasses

import pytest
from hypothesis import given, settings as hsettings, strategies as st

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


# -- the compact table against a plain model of the rules -------------------------------------

def _model_find(model, segments, exact=False, limit=None):
    """Rules 2-5 and 8 by brute force over ``{path tuple: record}``."""
    depth = len(segments)

    def matches(path):
        if len(path) < depth or (exact and len(path) != depth):
            return False
        for want, got in zip(segments, path):
            if want in msg.WILDCARDS:
                if got.startswith("_"):
                    return False
            elif want != got:
                return False
        return not any(seg.startswith("_") for seg in path[depth:])

    found = [rec for path, rec in sorted(model.items()) if matches(path)]
    if len(found) > 1:
        found = store._group(found)
    return found[:limit] if limit is not None else found


def _model_exists(model, segments):
    return not segments or any(
        len(path) >= len(segments) and all(
            (want in msg.WILDCARDS and not got.startswith("_")) or want == got
            for want, got in zip(segments, path))
        for path in model)


def _forget(model: dict[tuple[str, ...], msg.Service], key: str) -> None:
    """The model without key's record (another spelling of its path keeps its own)."""
    path = tuple(key.lower().split("/")[2:])
    if path in model and model[path].key == key:
        del model[path]


def _delete_both(view: store.Store, model: dict[tuple[str, ...], msg.Service], key: str, step: int) -> None:
    view.delete(key, step)
    _forget(model, key)


def test_random_history_matches_the_model():
    """Many puts/deletes (blocks split and empty out, spellings change) answer like the model."""
    import random

    rng = random.Random(12)
    # Labels chosen to trip a string sort that is not segment by segment ("a" < "a-b" < "a0").
    labels = ["a", "a-b", "a0", "b", "_tcp", "_x", "Zed", "zed", "m"]
    view = store.Store()
    model: dict[tuple[str, ...], msg.Service] = {}
    keys: list[str] = []
    for step in range(1500):
        if keys and rng.random() < 0.3:
            _delete_both(view, model, rng.choice(keys), step)
            continue
        depth = rng.randint(1, 4)
        segs = [rng.choice(labels) for _ in range(depth)]
        if rng.random() < 0.5:
            segs.append(f"h{rng.randrange(400)}")  # big fan-out: blocks split
        key = "/skydns/" + "/".join(segs)
        keys.append(key)
        if rng.random() < 0.05:
            view.put(key, b'{"host": 5}', step)  # rule 6: drops this key's record, not another spelling's
            _forget(model, key)
            continue
        group = rng.choice(["", "", "", "g1", "g2"])
        rec = msg.Service(host=f"10.0.{step // 256}.{step % 256}", port=rng.choice([0, 80]), group=group,
                          key=key)
        assert view.put(key, msg.encode(rec).encode(), step)
        model[tuple(key.lower().split("/")[2:])] = rec
    assert len(view) == len(model)
    assert {r.key: r for r in view.records().values()} == {r.key: r for r in model.values()}
    queries = sorted({path[:n] for path in model for n in range(len(path) + 1)})
    queries = rng.sample(queries, 150) + [
        (), ("*",), ("a", "*"), ("*", "a"), ("any", "*", "h1"), ("_tcp", "*"), ("nope",), ("a", "nope")]
    for segments in queries:
        for exact in (False, True):
            want = _model_find(model, segments, exact)
            assert view.find(segments, exact) == want, (segments, exact)
            assert [r.key for r in view.find(segments, exact)] == [r.key for r in want]
        assert view.find(segments, limit=3) == _model_find(model, segments, limit=3), segments
        assert view.exists_path(segments) is _model_exists(model, segments), segments
        if not any(seg in msg.WILDCARDS for seg in segments):
            assert view.children(segments) == sorted(
                {path[len(segments)] for path in model if len(path) > len(segments)
                 and path[:len(segments)] == segments}), segments
    # A relist of the same data answers the same (rule 8).
    relisted = store.Store()
    relisted.replace([(r.key, msg.encode(r).encode()) for r in view.records().values()], 1)
    for segments in queries:
        assert [r.key for r in relisted.find(segments)] == [r.key for r in view.find(segments)]



@pytest.mark.parametrize("groups", [False, True])
@pytest.mark.parametrize("seed", range(3))
def test_reads_between_writes_match_the_model(seed, groups):
    """The read side's caches (split blocks kept across changes, kept finds patched by a new
    value of a stored key) proved by difference: after every put or delete, reads at and
    around the changed key answer like the model; with ``groups`` some records carry one."""
    import random

    rng = random.Random(300 + seed)
    grouping = random.Random(400 + seed)
    # seed 0 spells some keys in capitals (records are then built on every read, rule 13)
    labels = ["a", "a-b", "a0", "b", "_tcp", "zed"] + (["Zed"] if seed == 0 else [])
    view = store.Store()
    view.replace([], 1)
    model: dict[tuple[str, ...], msg.Service] = {}
    keys: list[str] = []
    for step in range(2, 500):
        if keys and rng.random() < 0.3:
            key = rng.choice(keys)
            _delete_both(view, model, key, step)
        else:
            if keys and rng.random() < 0.4:
                key = rng.choice(keys)  # a key written before: same host or shape, or both
            else:
                segs = [rng.choice(labels) for _ in range(rng.randint(1, 3))] + [f"h{rng.randrange(150)}"]
                key = "/skydns/" + "/".join(segs)
                keys.append(key)
            # same host, another shape; another host; a host of one character
            rec = msg.Service(host=rng.choice([f"10.0.{step // 256}.{step % 256}", "10.0.0.1", "x", ""]),
                              port=rng.choice([0, 80]), text=rng.choice(["", "t"]), key=key,
                              group=grouping.choice(["g1", "g2"] + [""] * 20) if groups else "")
            if not rec.host and not rec.text:
                rec = dataclasses.replace(rec, text="t")
            assert view.put(key, msg.encode(rec).encode(), step)
            model[tuple(key.lower().split("/")[2:])] = rec
        path = tuple(key.lower().split("/")[2:])
        reads = {path, path[:-1], path[:1], (), path[:-1] + ("*",), path + ("x",)}
        if grouping.random() < 0.3:  # sometimes a middle name: kept finds left unread for a while
            reads.add(path[:2])
        for segments in reads:
            exact = rng.random() < 0.3
            assert view.find(segments, exact) == _model_find(model, segments, exact), (step, segments)
            assert [r.key for r in view.find(segments, exact)] == [
                r.key for r in _model_find(model, segments, exact)], (step, segments)
            assert view.exists_path(segments) is _model_exists(model, segments), (step, segments)
            if "*" not in segments:
                assert view.children(segments) == sorted(
                    {p[len(segments)] for p in model if len(p) > len(segments)
                     and p[:len(segments)] == segments}), (step, segments)


# Values the fast decoder takes and those it hands to msg.decode: the store must agree with it.
VALUES = [
    b'{"host":"10.0.0.1","priority":10,"weight":10,"ttl":30}',
    b'{"host":"web.default.svc.cluster.local.","port":80,"priority":10,"weight":10,"ttl":30}',
    b'{}',
    b' {"host":"10.0.0.1"} ',
    b'{"host":"10.0.0.1","ttl":30.0}',
    b'{"host":"10.0.0.1","ttl":null,"port":null}',
    b'{"host":"10.0.0.1","extra":[1,2]}',
    b'{"text":"hello","ttl":5}',
    b'{"host":"a.example.","mail":true,"priority":5}',
    b'{"host":"10.0.0.1","group":"g1","targetstrip":1}',
    '{"host":"caf\u00e9.example."}'.encode(),
    b'{"host":"10.0.0.1","ttl":true}',
    b'{"host":"10.0.0.1","port":65536}',
    b'{"host":"10.0.0.1","ttl":-1}',
    b'{"host":"10.0.0.1","ttl":4294967296}',
    b'{"host":5}',
    b'{"host":"fd00::1","priority":10}',
    b'{"host":"10.0.0.999"}',
    b'{"host":"fe80::1%eth0"}',
    b'{"host":"two words"}',
    b'{"host":"line\\nbreak"}',
    b'{"host":"_srv._tcp.x.example."}',
    b'{"host":"' + b"a" * 64 + b'.example."}',
    b'{"host":"10.0.0.1","ttl":NaN}',
    b'{"host":"10.0.0.1"}{}',
    b'[1,2]',
    b'"host"',
    b'\xff\xfe',
    b'',
]


@pytest.mark.parametrize("value", VALUES, ids=[v.decode("utf-8", "replace") or "empty" for v in VALUES])
def test_values_decode_like_msg(value):
    key = "/skydns/local/a/x"
    try:
        want: msg.Service | None = msg.decode(value, key=key)
    except msg.RecordError:
        want = None
    view = store.Store()
    assert view.put(key, value, 1) is (want is not None)
    got = view.lookup("x.a.local.")
    if want is None:
        assert got == [] and key in view.bad
    else:
        assert got == [want] and got[0].key == key and view.bad == {}


ODD_KEYS = [
    ("/skydns/local/a\0b/x", "key has a NUL or newline character"),
    ("/skydns/local/a\nb/x", "key has a NUL or newline character"),
    ("/skydns/", "key is not under /skydns/"),
    ("/skydns//", "key is not under /skydns/"),
    ("/other/local/a", "key is not under /skydns/"),
]


@pytest.mark.parametrize(("key", "error"), ODD_KEYS, ids=[repr(k) for k, _ in ODD_KEYS])
def test_keys_that_cannot_be_stored_are_bad(key, error):
    view = store.Store.from_records({key: '{"host":"10.0.0.1"}', "/skydns/local/b": '{"host":"10.0.0.2"}'})
    assert view.bad == {key: error} and len(view) == 1
    assert view.put(key, b'{"host":"10.0.0.3"}', 2) is False and view.bad == {key: error}
    view.delete(key, 3)
    assert view.bad == {} and len(view) == 1


def test_spellings_and_texts_round_trip():
    records = {
        "/skydns/local/a/x": '{"host":"10.0.0.1","text":"line\\none"}',
        "/skydns/local/a/y": '{"text":"unit\\u001fsep"}',
        "/skydns//local/A//z/": '{"host":"10.0.0.3"}',
    }
    view = store.Store.from_records(records)
    assert [(r.key, r.host, r.text) for r in view.lookup("a.local.")] == [
        ("/skydns/local/a/x", "10.0.0.1", "line\none"), ("/skydns/local/a/y", "", "unit\x1fsep"),
        ("/skydns//local/A//z/", "10.0.0.3", "")]
    view.put("/skydns/local/a/x", b'{"host":"10.0.0.1"}', 2)
    view.put("/skydns/local/a/z", b'{"host":"10.0.0.4"}', 3)  # the plain spelling now answers
    assert [(r.key, r.host, r.text) for r in view.lookup("a.local.")] == [
        ("/skydns/local/a/x", "10.0.0.1", ""), ("/skydns/local/a/y", "", "unit\x1fsep"),
        ("/skydns/local/a/z", "10.0.0.4", "")]


def test_decoder_failures_of_any_kind_are_bad_values():
    deep = b"[" * 100_000 + b"]" * 100_000  # the json module raises RecursionError
    view = store.Store()
    view.replace([("/skydns/local/a/x", deep), ("/skydns/local/a/y", b'{"host":"10.0.0.2"}')], 1)
    assert set(view.bad) == {"/skydns/local/a/x"} and hosts(view.lookup("a.local.")) == ["10.0.0.2"]
    assert view.put("/skydns/local/a/y", deep, 2) is False
    assert view.lookup("a.local.") == [] and set(view.bad) == {"/skydns/local/a/x", "/skydns/local/a/y"}


def test_load_page_by_page_keeps_answering_from_the_last_snapshot():
    view = store.Store.from_records({"/skydns/local/old/x": '{"host":"10.0.0.1"}'}, revision=3)
    gen = view.generation
    load = view.begin_replace()
    load.add([("/skydns/local/new/b", b'{"host":"10.0.0.3"}'), ("/skydns/local/new/a", b"nope")])
    load.add([(b"/skydns/local/new/a", b'{"host":"10.0.0.2"}'), ("/skydns/local/new/0", b'{"host":"10.0.0.4"}')])
    # Rule 10: nothing of the snapshot shows before finish_replace().
    assert hosts(view.lookup("old.local.")) == ["10.0.0.1"] and not view.exists("new.local.")
    assert (view.revision, view.generation, view.bad) == (3, gen, {})
    assert load.read == 4 and load.bad == {}  # the key's later good value cleared its bad one
    view.finish_replace(load, 9)
    assert [r.host for r in view.lookup("new.local.")] == ["10.0.0.4", "10.0.0.2", "10.0.0.3"]
    assert not view.exists("old.local.") and (view.revision, view.generation) == (9, gen + 1)


def test_on_change_hooks():
    view = store.Store()
    seen: list = []

    def broken(segments):
        raise RuntimeError("a bug in a hook")

    view.on_change.extend([seen.append, broken, seen.append])
    view.replace([("/skydns/local/a/x", b'{"host":"10.0.0.1"}')], 1)
    view.put("/skydns/Local/A/y", b'{"host":"10.0.0.2"}', 2)
    view.put("/skydns/local/a/x", b"bad", 3)
    view.delete("/skydns/local/a/y", 4)
    view.put("/elsewhere/x", b"{}", 5)
    view.delete("/elsewhere/x", 6)
    assert seen == [None, None, ("local", "a", "y"), ("local", "a", "y"), ("local", "a", "x"),
                    ("local", "a", "x"), ("local", "a", "y"), ("local", "a", "y")]


def _kube2sky_items(services: int, skip: int = -1, extra: str = "") -> list[tuple[bytes, bytes]]:
    items = []
    for n in range(services):
        if n == skip:
            continue
        svc = f"/skydns/local/cluster/svc/ns{n % 7}/svc{n}{extra if n == 5 else ''}"
        items.append((f"{svc}/a{n:x}".encode(), f'{{"host":"10.0.{n // 256}.{n % 256}","ttl":30}}'.encode()))
        items.append((f"{svc}/_tcp/_http/b{n:x}".encode(),
                      f'{{"host":"svc{n}.ns{n % 7}.svc.cluster.local.","port":80,"ttl":30}}'.encode()))
    items.sort()
    return items


@pytest.mark.parametrize("batch", [4096, 100, 7])
def test_a_relist_keeps_the_blocks_that_did_not_change(monkeypatch, batch):
    """Rule 12: blocks are cut by content, so a relist of mostly the same data shares the
    previous snapshot's strings; the result is what key-by-key decoding gives."""
    monkeypatch.setattr(store, "_BATCH", batch)
    view = store.Store()
    view.replace(_kube2sky_items(3000), 1)
    before = view._t
    changed = _kube2sky_items(3000, skip=1500, extra="x")  # one service gone, one renamed
    view.replace(changed, 2)
    slow = store.Store()
    load = slow.begin_replace()
    load._add_each(changed)
    slow.finish_replace(load, 2)
    assert list(view.records().items()) == list(slow.records().items()) and len(view) == 5998
    old = {id(k) for k in before.keys}
    shared = sum(id(k) in old for k in view._t.keys)
    assert shared >= len(view._t.keys) - 8, (shared, len(view._t.keys))
    assert all(len(store._unpack_keys(k)) <= store._MAX_BLOCK for k in view._t.keys)
    assert [r.host for r in view.lookup("svc7.ns0.svc.cluster.local.")] == ["10.0.0.7"]
    assert [r.port for r in view.lookup("_http._tcp.svc7.ns0.svc.cluster.local.")] == [80]


# -- rule 12's fast value split: the same (hosts, rests) as one regular expression per value --

# the reference: _FAST_ONE over each value (the store's own plain path)
_reference_fast_values = store._values_one_by_one


_FAST_PIECES = ['{"host":"', '10.0.0.1', 'svc.ns.svc.cluster.local.', '"', ',"ttl":30', ',"port":80',
                ',"priority":10', '}', '\n', 'a..b', '.', 'x' * 64, '"x"', ',"text":"t"', ',"ttl":-1',
                ',"TTL":1', '\\"', 'caf\u00e9', '', '{"host":""}', ' ', ',"port":1e3', '*', '_srv']


def _damage(rng, items: list, pieces, times: int) -> None:
    """Splice a random piece into a random item ``times`` times (at a random place, replacing
    0, 1 or 5 characters)."""
    for _ in range(times):
        i = rng.randrange(len(items))
        at = rng.randrange(len(items[i]) + 1)
        items[i] = items[i][:at] + rng.choice(pieces) + items[i][at + rng.choice([0, 0, 1, 5]):]


@pytest.mark.parametrize("seed", range(20))
def test_fast_values_split_like_one_regex_per_value(seed):
    """Seeded differential test: batches of kube2sky-like values with random damage."""
    import random

    rng = random.Random(seed)
    base = ['{"host":"10.64.%d.%d","priority":10,"weight":10,"ttl":30}' % (i // 250, i % 250) for i in range(300)]
    base += ['{"host":"db%d.ns1.svc.cluster.local.","port":5432,"ttl":30}' % i for i in range(100)]
    for _ in range(40):
        values = rng.sample(base, rng.randint(1, 60))
        _damage(rng, values, _FAST_PIECES, rng.choice([0, 0, 1, 3]))
        if rng.random() < 0.5:
            values = [v.encode() for v in values]
        assert store._fast_values(values) == _reference_fast_values(values), values


_GOOD = '{"host":"10.0.0.1","ttl":30}'
# batches one value spoils for the batched split (the reference decides what each value is)
_EDGE_BATCHES = [
    [_GOOD, '{"host":"caf\u00e9.example.","ttl":30}'],   # a host not in ASCII
    [_GOOD, '{"host":"\u0130stanbul.example."}'],        # ... that lower() would lengthen
    [_GOOD, '{"host":"","ttl":30}'],                      # an empty host
    ['{"host":""}'],
    [_GOOD, '{"host":"a\nb","ttl":30}'],                 # a newline in a host
    ['{"host":"a"}\n{"host":"b"}', 'zzz'],                # a newline and a head inside one value
    [_GOOD, '{"host":"a"}\n'],
    [_GOOD, '{"host":"a b","ttl":30}'],                   # a character no host has
    [_GOOD, '{"host":"a\tb"}', '{"host":"a/b"}', '{"host":"a\u0000b"}'],
    [_GOOD, '{"host":".a"}'], [_GOOD, '{"host":"a..b"}'], [_GOOD, '{"host":"' + "a" * 64 + '"}'],
    [_GOOD, '{"host":"' + ".".join(["a" * 63] * 4) + '"}'],  # 255 characters
    [_GOOD, '{"host":"10.0.0.1"', '{"host":"10.0.0.1","ttl":"30"}'],
]


@pytest.mark.parametrize("values", _EDGE_BATCHES, ids=[repr(b[-1])[:30] for b in _EDGE_BATCHES])
@pytest.mark.parametrize("as_bytes", [False, True])
def test_fast_values_edge_batches(values, as_bytes):
    batch = [v.encode() for v in values] if as_bytes else values
    assert store._fast_values(batch) == _reference_fast_values(batch)


@hsettings(max_examples=300, deadline=None)
@given(st.lists(st.one_of(st.binary(max_size=40), st.text(max_size=40),
                          st.lists(st.sampled_from(_FAST_PIECES), max_size=8).map("".join)),
                min_size=1, max_size=12))
def test_fast_values_takes_any_batch(values):
    """Any values (bytes or text, one kind per batch as a page has): the reference result."""
    for batch in ([v for v in values if isinstance(v, bytes)], [v for v in values if isinstance(v, str)]):
        if batch:
            assert store._fast_values(batch) == _reference_fast_values(batch)


def test_kept_finds_follow_new_values_read_or_not():
    """Rule 14: a new value of a stored key is seen by the next find of every name above it,
    whether that name was read between the changes (its kept find patched) or not (dropped)."""
    view = store.Store()
    view.replace([], 1)
    view.put("/skydns/a/b/h1", b'{"host":"10.0.0.1"}', 2)
    view.put("/skydns/a/b/h2", b'{"host":"10.0.0.2"}', 3)
    for segments in (("a", "b"), ("a",), ("a", "b", "h1")):
        assert [r.host for r in view.find(segments)][:1] == ["10.0.0.1"]
    for revision, host in enumerate(["10.0.0.3", "10.0.0.4", "10.0.0.5"], start=4):
        view.put("/skydns/a/b/h1", f'{{"host":"{host}"}}'.encode(), revision)
        assert view.find(("a", "b"))[0].host == host  # read after every change
    assert [r.host for r in view.find(("a",))] == ["10.0.0.5", "10.0.0.2"]  # not read meanwhile
    assert view.find(("a", "b", "h1"))[0].host == "10.0.0.5"
    assert view.exists_path(("a", "b")) and not view.exists_path(("a", "c"))
    view.delete("/skydns/a/b/h1", 9)
    assert [r.host for r in view.find(("a",))] == ["10.0.0.2"] and not view.exists_path(("a", "b", "h1"))


# -- rule 12's batched key split: the same paths and spellings as _path key by key --------------

_KEY_PIECES = ["/skydns/", "/SkyDNS/", "/skydnsX/", "/other/", "/", "//", "local", "Cluster", "svc", "_tcp",
               "a-b", "x.y", "\n", "\0", "caf\u00e9", "", "0a1b2c3d", "skydns", "/skydns", "\n/skydns/"]


def _paths_one_by_one(view: store.Store, keys: list) -> tuple[list, list] | None:
    """The reference: Store._path of each key; None when one of them cannot be stored."""
    found = [view._path(store._text(key)) for key in keys]
    if any(path is None for path, _, _ in found):
        return None
    return [path for path, _, _ in found], [spelling for _, spelling, _ in found]


def _check_paths(prefix: str, keys: list) -> None:
    view = store.Store(prefix)
    got = view._paths(keys)
    want = _paths_one_by_one(view, keys)
    if got is None:  # refused: the batch goes key by key (no key is lost, only speed)
        return
    assert want is not None, keys
    paths, spellings = got
    assert paths == want[0], keys
    assert (spellings or [None] * len(keys)) == want[1], keys


@pytest.mark.parametrize("prefix", ["skydns", "SkyDNS", "sky/dns"])
@pytest.mark.parametrize("seed", range(10))
def test_batched_key_split_like_one_key_at_a_time(prefix, seed):
    """Seeded differential test: batches of kube2sky-like keys with random damage; a clean batch
    is always taken whole."""
    import random

    rng = random.Random(seed)
    head = f"/{prefix}/"
    base = [f"{head}local/cluster/svc/ns{i % 7}/svc{i}/{i:08x}" for i in range(200)]
    base += [f"{head}arpa/in-addr/10/96/{i // 250}/{i % 250}/{i:08x}" for i in range(100)]
    clean = sorted(rng.sample(base, 50))
    view = store.Store(prefix)
    assert view._paths(clean) == _paths_one_by_one(view, clean)[:1] + (None,)
    for _ in range(60):
        keys = rng.sample(base, rng.randint(1, 40))
        _damage(rng, keys, _KEY_PIECES, rng.choice([0, 1, 1, 3]))
        if rng.random() < 0.3:
            keys = [key.upper() if rng.random() < 0.2 else key for key in keys]
        _check_paths(prefix, [key.encode() for key in keys] if rng.random() < 0.5 else keys)


@hsettings(max_examples=300, deadline=None)
@given(st.sampled_from(["skydns", "SkyDNS", "sky/dns"]),
       st.lists(st.lists(st.sampled_from(_KEY_PIECES), min_size=1, max_size=6).map("".join), min_size=1, max_size=10),
       st.booleans())
def test_batched_key_split_takes_any_batch(prefix, keys, as_bytes):
    """Any keys (text or UTF-8 bytes, one kind per batch as a page has): the reference result,
    or refused."""
    _check_paths(prefix, [key.encode() for key in keys] if as_bytes else keys)
