"""Big headless answers proved by difference (issue 12: SRV with many targets, glue kept).

A headless service with many endpoints (kube2sky's layout: ``<svc>/<leaf>`` addresses,
``<svc>/_tcp/_pg/<leaf>`` SRV records naming ``<leaf>.<svc>...``) is changed step by step:
addresses of one, a few or many endpoints, TTLs, an endpoint becoming IPv6, a name, a bad
value or grouped, endpoints added and deleted, SRV records changed, keys with odd spelling.
After every step random queries (SRV at the port name and the service name, A, MX; 0x20
letter case; no EDNS or EDNS 512/1232/4096; UDP, so truncation, and TCP) are answered by a
cached server (the fast path: ``answering.plan`` with its kept targets and glue, answering
rule 15, rendered by ``encode`` with its kept runs, encode rule 7) and by the reference: a
server without a cache whose ``answering.answer`` runs with every shortcut off (one glue read
per target, nothing kept), rendered by dnspython. The bytes must be equal.

Seeded and reproducible; a failure prints the steps.
"""

from __future__ import annotations

import json
import random

import dns.flags
import dns.message
import pytest

from skydns import answering, encode, metrics, settings as settings_mod, store, transport
from tests.skydns import test_answering_fast as fast

SVC = "/skydns/local/cluster/svc/ns/hl"
NAME = "hl.ns.svc.cluster.local."
QUERIES = [(f"_pg._tcp.{NAME}", "SRV"), (f"_pg._tcp.{NAME}", "SRV"), (NAME, "SRV"), (NAME, "A"),
           (f"_dns._udp.{NAME}", "SRV"), (f"_pg._tcp.{NAME}", "MX"), (f"e1.{NAME}", "A")]
PAYLOADS = [None, 512, 1232, 4096]


def _address(rng: random.Random) -> str:
    return f"10.{rng.randrange(4)}.{rng.randrange(256)}.{rng.randrange(1, 255)}"


def _endpoint(view: store.Store, leaf: str, rng: random.Random, revision: int) -> None:
    view.put(f"{SVC}/{leaf}", json.dumps({"host": _address(rng), "ttl": 30}).encode(), revision)
    view.put(f"{SVC}/_tcp/_pg/{leaf}", json.dumps({"host": f"{leaf}.{NAME}", "port": 5432, "ttl": 30}).encode(),
             revision)
    if rng.random() < 0.3:
        view.put(f"{SVC}/_udp/_dns/{leaf}", json.dumps({"host": f"{leaf}.{NAME}", "port": 53}).encode(), revision)


def _change(view: store.Store, rng: random.Random, leaves: list[str], revision: int,
            repairs: list[tuple[str, bytes | None]]) -> str:
    """One random change of the service; returns what it did. A change that takes the service
    off its usual shape leaves its repair in ``repairs`` (applied at a later step)."""
    if repairs and rng.random() < 0.6:
        key, value = repairs.pop(rng.randrange(len(repairs)))
        if value is None:
            view.delete(key, revision)
        else:
            view.put(key, value, revision)
        return f"repair {key} {value!r}"
    roll = rng.random()
    leaf = rng.choice(leaves)
    usual = json.dumps({"host": _address(rng), "ttl": 30}).encode()
    usual_srv = json.dumps({"host": f"{leaf}.{NAME}", "port": 5432, "ttl": 30}).encode()
    if roll < 0.7:  # new addresses for one, a few or many endpoints (the same keys)
        some = rng.sample(leaves, min(len(leaves), rng.choice([1, 1, 1, 1, 2, 3, 12, 20])))
        for other in some:
            ttl = rng.choice([30, 30, 30, 5, 0])
            view.put(f"{SVC}/{other}", json.dumps({"host": _address(rng), "ttl": ttl}).encode(), revision)
        return f"addresses of {some}"
    if roll < 0.76:
        value = rng.choice([{"host": "fd00::7"}, {"host": "db.ns.svc.cluster.local."}, {"host": _address(rng),
                            "group": "g1"}, {"host": "010.0.0.1"}, "{bad json", {"host": _address(rng), "port": 80}])
        raw = value if isinstance(value, str) else json.dumps(value)
        view.put(f"{SVC}/{leaf}", raw.encode(), revision)
        repairs.append((f"{SVC}/{leaf}", usual))
        return f"odd value at {leaf}: {raw}"
    if roll < 0.8:
        view.delete(f"{SVC}/{leaf}", revision)
        repairs.append((f"{SVC}/{leaf}", usual))
        return f"delete address of {leaf}"
    if roll < 0.85:
        new = f"n{rng.randrange(1000)}"
        if new not in leaves:
            leaves.append(new)
        _endpoint(view, new, rng, revision)
        return f"new endpoint {new}"
    if roll < 0.9:
        view.put(f"{SVC}/_tcp/_pg/{leaf}", json.dumps({"host": f"{leaf}.{NAME}", "port": rng.choice([5432, 5433]),
                                                       "priority": rng.choice([0, 10]), "weight": rng.choice([0, 5]),
                                                       "mail": rng.random() < 0.3}).encode(), revision)
        repairs.append((f"{SVC}/_tcp/_pg/{leaf}", usual_srv))
        return f"SRV of {leaf} changed"
    if roll < 0.93:
        view.delete(f"{SVC}/_tcp/_pg/{leaf}", revision)
        repairs.append((f"{SVC}/_tcp/_pg/{leaf}", usual_srv))
        return f"SRV of {leaf} deleted"
    if roll < 0.95:  # a key spelled in capitals (the store builds every record then)
        view.put(f"{SVC}/{leaf.upper()}", usual, revision)
        repairs.append((f"{SVC}/{leaf.upper()}", None))
        return f"capital key {leaf.upper()}"
    view.put(f"{SVC}/{leaf}", usual, revision)
    return f"address of {leaf} put again"


def _query(rng: random.Random) -> tuple[bytes, str, str]:
    name, rdtype = rng.choice(QUERIES)
    name = "".join(c.upper() if rng.random() < 0.3 else c for c in name)  # 0x20
    message = dns.message.make_query(name, rdtype, id=rng.randrange(1 << 16))
    payload = rng.choice(PAYLOADS)
    if payload is None:
        message.use_edns(False)
    else:
        message.use_edns(0, dns.flags.DO if rng.random() < 0.2 else 0, payload)
    proto = rng.choice(["udp", "udp", "tcp"])
    return message.to_wire(), proto, f"{name} {rdtype} edns={payload} {proto}"


@pytest.mark.parametrize("seed", range(5))
def test_headless_answers_equal_the_reference_after_every_step(seed, monkeypatch):
    rng = random.Random(4200 + seed)
    settings = settings_mod.Settings(domains=("cluster.local.",), no_rec=True,
                                     max_answers=rng.choice([1000, 1000, 30, 80]), ttl=rng.choice([30, 60]))
    view = store.Store()
    view.replace([], 1)
    view.put("/skydns/local/cluster/dns-version/v", b'{"text":"1.1.0","ttl":30}', 2)
    view.put("/skydns/local/cluster/svc/ns/db/l1", b'{"host":"10.9.0.1"}', 2)
    leaves = [f"e{n}" for n in range(rng.randint(10, 60))]
    revision = 3
    for leaf in leaves:
        _endpoint(view, leaf, rng, revision)
        revision += 1
    cached = transport.Handler(settings, view, None, stats=metrics.DnsStats(), cache_size=64)
    reference = transport.Handler(settings, view, None, stats=metrics.DnsStats(), cache_size=0)
    patched = []
    real_patch = answering._patch_glue
    monkeypatch.setattr(answering, "_patch_glue", lambda *a: patched.append(real_patch(*a)) or patched[-1])
    history: list[str] = []
    repairs: list[tuple[str, bytes | None]] = []
    big = 0
    for step in range(120):
        if step:
            revision += 1
            history.append(_change(view, rng, leaves, revision, repairs))
        for _ in range(rng.randint(2, 5)):
            data, proto, text = _query(rng)
            history.append(f"query {text}")
            for _ in range(2):  # the second time the exact-bytes cache answers
                got = cached.handle(data, proto)
                with monkeypatch.context() as patch:
                    fast._plain_steps(patch)
                    want = reference.handle(data, proto)
                assert isinstance(got, bytes) and got == want, (
                    f"seed {seed} step {step}: the cached answer differs from the reference\n"
                    + "\n".join(history[-12:])
                    + f"\ncached:\n{dns.message.from_wire(got)}\nreference:\n{dns.message.from_wire(want)}")
            big += len(dns.message.from_wire(got).additional) >= encode._GLUE_RUN
    assert big > 40  # many answers had a glue run
    if settings.max_answers >= 1000:  # (capped, the glue of many targets is read per target)
        assert sum(1 for p in patched if p is not None) > 10  # kept glue was patched, not read again


def test_glue_runs_written_again_after_a_few_changes_like_dnspython():
    """The kept glue run of a question name (encode rule 7) written again with some RRsets
    replaced (new addresses, TTLs, another family, another owner), for the same question in
    other letter case, another question and other limits, and once in a while with an RRset
    that must not be written as a run or not as a label and a pointer (an owner twice, an owner
    below a name not written, a name the question wrote, two records): each time what dnspython
    renders."""
    rng = random.Random(77)
    settings = settings_mod.Settings(domains=("cluster.local.",))
    owners = [f"e{k}.{NAME}" for k in range(30)]
    base = [[owner, owner, 1, 30, [f"10.0.0.{k + 1}"]] for k, owner in enumerate(owners)]
    srv = [(10, 10, 5432, owner) for owner in owners]
    patched = odd = 0
    for step in range(300):
        additional = base
        if step:
            base = list(base)  # the usual changes: kept from step to step
            for _ in range(rng.choice([1, 1, 1, 2, 3, 20])):
                k = rng.randrange(len(base))
                owner = base[k][0]
                roll = rng.random()
                if roll < 0.85:
                    base[k] = [owner, owner, 1, rng.choice([30, 5]), [_address(rng)]]
                elif roll < 0.97:
                    base[k] = [owner, owner, 28, 30, ["fd00::1"]]
                else:
                    other = f"x{rng.randrange(50)}.{NAME}"
                    base[k] = [other, other, 1, 30, [_address(rng)]]
            additional = base
            if rng.random() < 0.25:  # an odd RRset for this step only
                additional = list(base)
                k = rng.randrange(len(additional))
                owner = additional[k][0]
                other = rng.choice([additional[rng.randrange(len(additional))][0], f"e1.other.{NAME}",
                                    NAME, "ns.svc.cluster.local."])
                additional[k] = rng.choice([[other, other, 28, 30, ["fd00::3"]],
                                            [owner, owner, 1, 30, ["10.0.0.1", "10.0.0.2"]]])
                odd += 1
        qname = rng.choice([f"_pg._tcp.{NAME}", f"_PG._tcp.{NAME.upper()}", NAME])
        data = dns.message.make_query(qname, "SRV", use_edns=rng.choice([False, 0]), payload=4096).to_wire()
        query = transport.wire.parse(data)
        result = answering.Plan(answer=[[None, qname.lower(), 33, 30, srv]], additional=additional)
        limit = rng.choice([512, 1232, 4096, 65535])
        kept = encode._RUNS.get((query.qname.lower(), len(additional)))
        before = kept and (kept[1], kept[3])
        got = encode.render(query, result, False, settings.edns_payload, limit, 1)
        want = transport.render(answering.to_message(dns.message.from_wire(data), result, settings), limit)
        assert got is not None and got[0] == [want], (step, qname, limit)
        # the kept run was spliced (the same entry, now holding this section and other bytes)
        patched += (kept is not None and encode._RUNS.get((query.qname.lower(), len(additional))) is kept
                    and before[0] is not additional and kept[1] is additional and before[1] != kept[3])
    assert patched > 15 and odd > 30, (patched, odd)
