"""Property tests over record values (issue 11): msg.decode -> store -> answering -> wire.

1. ``msg.decode`` is total: any bytes give a record or ``msg.RecordError``, nothing else.
2. Every record the store accepts can be answered: every name at and above it (and a wildcard
   form), every query type, gives an answer that is not SERVFAIL, that answering produced
   without an internal error, and that renders to wire bytes dnspython reads back (UDP sizes
   and TCP). The checks are in tests/fuzz/targets.py; ``make fuzz`` runs many more examples.
"""

from __future__ import annotations

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
