"""The hand-built encoder proved by difference: for random stores and random queries, the bytes
``encode.reply`` writes for an answering plan equal what dnspython renders for the same answer
(``answering.answer`` + ``transport.render``), round-robin rotations included.

Seeded and reproducible; the seed is in the test id.
"""

from __future__ import annotations

import random

import dns.message
import pytest

from skydns import answering, encode, settings as settings_mod, store, transport, wire
from tests.skydns import test_anscache_diff as gen


def _store(rng: random.Random, size: int) -> store.Store:
    view = store.Store()
    view.replace([], 1)
    for revision in range(2, size + 2):
        view.put(gen._key(rng), gen._value(rng), revision)
    if rng.random() < 0.7:  # mostly a kube2sky zone
        view.put("/skydns/local/cluster/dns-version/v", b'{"text":"1.1.0","ttl":30}', size + 2)
    return view


@pytest.mark.parametrize("seed", range(6))
def test_encoder_writes_what_dnspython_renders(seed):
    rng = random.Random(seed)
    settings = settings_mod.Settings(domains=("cluster.local.", "0.10.in-addr.arpa."),
                                     nameservers=(settings_mod.Upstream("192.0.2.53"),) if seed % 2 else (),
                                     pods="insecure", max_answers=rng.choice([3, 20, 1000]),
                                     hostmaster="" if seed % 3 else "Admin@Example.org")
    rendered = 0
    for _ in range(4):
        view = _store(rng, rng.randint(5, 60))
        written = list(view.records())
        for _ in range(150):
            data, _proto = gen._query(rng, written)
            query = wire.parse(data)
            assert query is not None
            result = answering.plan(wire.path_of(query.qname), query.qtype, query.qclass, view, settings)
            if not isinstance(result, answering.Plan):
                continue
            message = answering.answer(dns.message.from_wire(data), view, settings).message
            limit = rng.choice([512, 1232, 65535])
            count = encode.rotations(result, transport.ROTATIONS)
            together = encode.replies(query, result, answering.can_forward(settings), settings.edns_payload,
                                      limit, count)
            for turn in range(count):
                got = encode.reply(query, result, answering.can_forward(settings), settings.edns_payload,
                                   limit, turn)
                saved = transport._rotated(message, turn)
                want = transport.render(message, limit)
                for index, rrset in saved:
                    message.answer[index] = rrset
                if got is None:
                    # only when the reference had to truncate (or dropped additional records)
                    assert len(want) <= limit and (want[2] & 0x02 or len(message.to_wire()) > limit)
                    continue
                rendered += 1
                assert together is not None and together[turn] == got  # rendered once, rotated as spans
                assert got == want, (f"seed {seed}: {dns.message.from_wire(data).question[0]} turn {turn}\n"
                                     f"encoder:\n{dns.message.from_wire(got)}\ndnspython:\n{message}")
    assert rendered > 300  # most plans were written by the encoder


def test_unsupported_names_fall_back():
    result = answering.Plan(answer=[[None, "x.cluster.local.", 5, 30, ["caf\u00e9.example."]]])
    query = wire.parse(dns.message.make_query("x.cluster.local.", "CNAME").to_wire())
    assert encode.reply(query, result, True, 1232, 65535) is None  # IDNA: dnspython's job
