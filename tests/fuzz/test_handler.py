"""Property tests over the packet handler (issue 11): ``transport.Handler.handle`` with any bytes.

Whatever arrives (random bytes, valid queries with bytes flipped, cut or appended, any
flags, opcodes, counts, EDNS options), the handler never raises and never reaches its panic
path (skydns_panics_total stays 0, nothing logged at ERROR); it returns None (a drop: shorter
than a header, or a response) or bytes with the query's ID and QR set that dnspython reads
back. UDP and TCP, cached and uncached, with a forwarder that answers from memory.
"""

from __future__ import annotations

import asyncio

import dns.edns
import dns.message
import pytest
from hypothesis import given, settings, strategies as st

from tests.fuzz import strategies, targets

HANDLERS = {size: targets.make_handler(size) for size in (0, 100)}
LOOP = asyncio.new_event_loop()


def _query(name, rdtype, rdclass, flags, edns, payload, do, qid, options) -> bytes:
    q = dns.message.make_query(name, rdtype, rdclass, use_edns=edns, payload=payload, want_dnssec=do, id=qid)
    q.flags = flags & 0x7FFF  # any flag, opcode and rcode bits; QR clear (a query)
    if options and edns is not False:
        q.use_edns(0, 0, payload, options=[dns.edns.GenericOption(o, b"\x00" * n) for o, n in options])
    return q.to_wire()


QUERIES = st.builds(
    _query, st.sampled_from(targets.NAMES),
    st.sampled_from([1, 2, 5, 6, 12, 15, 16, 28, 33, 35, 255, 252, 251, 65, 999]),
    st.sampled_from([1, 3, 4, 254, 255]), st.integers(0, 0xFFFF), st.sampled_from([False, 0]),
    st.sampled_from([0, 1, 512, 1232, 4096, 65535]), st.booleans(), st.integers(0, 0xFFFF),
    st.lists(st.tuples(st.sampled_from([3, 8, 10, 12, 15, 65001]), st.integers(0, 40)), max_size=2))


@st.composite
def mutated(draw) -> bytes:
    """A valid query with a few bytes flipped, cut, repeated or appended, or a count changed."""
    data = bytearray(draw(QUERIES))
    for _ in range(draw(st.integers(1, 4))):
        kind = draw(st.sampled_from(["flip", "cut", "append", "count", "dup"]))
        if kind == "flip" and data:
            data[draw(st.integers(0, len(data) - 1))] = draw(st.integers(0, 255))
        elif kind == "cut":
            del data[draw(st.integers(0, len(data))):]
        elif kind == "append":
            data += draw(st.binary(max_size=40))
        elif kind == "count" and len(data) >= 12:
            i = draw(st.sampled_from([4, 6, 8, 10]))
            data[i:i + 2] = draw(st.integers(0, 0xFFFF)).to_bytes(2, "big")
        elif kind == "dup" and len(data) > 12:
            data += data[12:]
    return bytes(data)


PACKETS = st.one_of(st.binary(max_size=600), QUERIES, mutated(), mutated())


@pytest.fixture
def errors():
    with targets.Errors() as handler:
        yield handler


@settings(max_examples=strategies.examples(300))
@given(PACKETS, st.sampled_from(["udp", "tcp"]), st.sampled_from(sorted(HANDLERS)))
def test_handler_never_panics(errors, data, proto, cache_size):
    targets.check_packet(HANDLERS[cache_size], data, proto, LOOP, errors)
