"""Property tests over record values (issue 11): msg.decode -> store -> answering -> wire.

1. ``msg.decode`` is total: any bytes give a record or ``msg.RecordError``, nothing else.
2. Every record the store accepts can be answered: every name at and above it (and a wildcard
   form), every query type, gives an answer that is not SERVFAIL, that answering produced
   without an internal error, and that renders to wire bytes dnspython reads back (UDP sizes
   and TCP). The checks are in tests/fuzz/targets.py; ``make fuzz`` runs many more examples.
"""

from __future__ import annotations

import json

import pytest
from hypothesis import example, given, settings, strategies as st

from tests.fuzz import strategies, targets


@pytest.fixture
def errors():
    with targets.Errors() as handler:
        yield handler


@settings(max_examples=strategies.examples(300))
@example(b'{"host":"fe80::1%eth0"}')
@example(b'{"host":"10.0.0.1","ttl":1e400}')
@given(st.one_of(strategies.VALUES, strategies.JSON.map(str), st.text(max_size=50)))
def test_decode_is_total(value):
    targets.check_decode(value)


@settings(max_examples=strategies.examples(40))  # each example answers ~100 queries
@example([(f"/skydns/local/cluster/svc/default/x/{i}", v) for i, v in enumerate(strategies.KNOWN_BAD)]
         + [("/skydns/local/cluster/svc/default/x/good", b'{"host":"10.0.0.2"}'),
            ("/skydns/local/cluster/svc/default/x/v6", b'{"host":"fd00::2"}')], targets.SETTINGS[0])
@given(strategies.STORES, st.sampled_from(targets.SETTINGS))
def test_accepted_records_answer_every_type(errors, items, settings):
    targets.check_store(items, settings, errors)


KEY = "/skydns/local/cluster/svc/default/web/x"


@settings(max_examples=strategies.examples(300))
@example(b'{"host":"10.0.0.1","port":80,"priority":10,"weight":10,"ttl":30}')
@example(('{"host":"' + ".".join(["a" * 63] * 3) + "." + "a" * 61 + '"}').encode())
@example(('{"host":"' + ".".join(["a" * 63] * 3) + "." + "a" * 62 + '."}').encode())
@example(b'{"host":"10.0.0.1","ttl":30.0}')
@example(b'{"host":"10.0.0.1","port":NaN}')
@given(strategies.VALUES)
def test_the_store_decodes_exactly_like_msg(value):
    """The store's fast decoder (kube2sky's shape) accepts and builds exactly what msg.decode does."""
    from skydns import msg, store

    view = store.Store()
    ok = view.put(KEY, value, 2)
    try:
        record = msg.decode(value, key=KEY)
    except msg.RecordError:
        assert not ok and KEY in view.bad
        return
    assert ok and KEY not in view.bad
    stored = view.records()[KEY]
    assert stored == record and stored.key == KEY


def _compact(obj: dict) -> bytes:
    return json.dumps(obj, separators=(",", ":"), allow_nan=True).encode("utf-8", "surrogatepass")


# kube2sky's form (compact, fields in msg.encode's order), with hosts and numbers of any kind.
KUBE2SKY_FORM = st.builds(
    lambda host, fields: ('{"host":' + json.dumps(host, ensure_ascii=False) + "".join(
        f',"{name}":{value}' for name, value in fields) + "}").encode("utf-8", "surrogatepass"),
    strategies.HOSTS,
    st.lists(st.tuples(st.sampled_from(["port", "priority", "weight", "ttl", "targetstrip", "text", "host"]),
                       st.one_of(strategies.INTS, st.sampled_from(["-0", "010", "1e3", "30.0"]))), max_size=4))
PLAIN_FORM = st.builds(lambda host, ttl: f'{{"host":"{host}","priority":10,"ttl":{ttl}}}'.encode(),
                       st.sampled_from(["10.0.0.1", "a.b.", "web.default.svc.cluster.local.", "a..b", "a" * 64]),
                       st.sampled_from([30, 0, -1, 2**32]))
LOAD_VALUES = st.one_of(PLAIN_FORM, KUBE2SKY_FORM, KUBE2SKY_FORM, strategies.RECORD.map(_compact), strategies.VALUES)
PLAIN_KEYS = st.lists(st.sampled_from(["a", "b", "web", "db-0", "db", "_tcp", "10-0-0-1", "0", "1", "10"]),
                      min_size=1, max_size=4).map(lambda segs: "/skydns/local/" + "/".join(segs))
LOAD_KEYS = st.one_of(PLAIN_KEYS, PLAIN_KEYS.map(str.encode), strategies.KEYS, strategies.REVERSE_KEYS.map(str.encode),
                      st.sampled_from(["/skydns/local/cluster/a/x", "/skydns/local/cluster/A/x", "/skydns/local/a-b",
                                       "/skydns/local/a/b", "/skydns/local/a", b"/skydns/local/\xff", "/skydns/local/\n"]))


@settings(max_examples=strategies.examples(300))
@example([("/skydns/local/a/x", b'{"host":"10.0.0.1","ttl":30}')] * 2, [1])
@example([("/skydns/local/a/x", b'{"host":"10.0.0.1","ttl":30}'), ("/skydns/local/a/x", b"bad")], [1])
@example([("/skydns/local/a-b", b'{"host":"a."}'), ("/skydns/local/a/b", b'{"host":"b."}')], [])
@given(st.lists(st.tuples(LOAD_KEYS, LOAD_VALUES), max_size=30), st.lists(st.integers(0, 30), max_size=4))
def test_a_load_decodes_batches_exactly_like_key_by_key(items, cuts):
    """skydns.store rule 12: a batch decoded at once gives the snapshot key-by-key decoding gives
    (records, their order and keys, bad values and their reasons), however the pages are cut."""
    from skydns import store

    pages = [items[a:b] for a, b in zip([0, *sorted(cuts)], [*sorted(cuts), len(items)])]
    fast, slow = store.Store(), store.Store()
    fast_load, slow_load = fast.begin_replace(), slow.begin_replace()
    for page in pages:
        fast_load.add(page)
        slow_load._add_each(page)
        slow_load.read += len(page)
    fast.finish_replace(fast_load, 1)
    slow.finish_replace(slow_load, 1)
    assert fast.bad == slow.bad and fast_load.read == slow_load.read
    assert list(fast.records().items()) == list(slow.records().items())
    assert [r.key for r in fast.find(())] == [r.key for r in slow.find(())]
    assert len(fast) == len(slow) and fast._t.grouped == slow._t.grouped
    table = fast._t
    live = {sid for shapes in table.shapes for sid in shapes}
    assert {sid for sid, shape in enumerate(table.shape_list) if shape is not None} == live
    assert all(table.shape_refs[sid] == sum(s.count(sid) for s in table.shapes) for sid in live)
