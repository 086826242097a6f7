"""skydns.forwarding against small misbehaving upstream servers on 127.0.0.1 (real sockets)."""

from __future__ import annotations

import asyncio
import random
import socket

import click
import click.testing

import dns.flags
import dns.message
import dns.name
import dns.rcode
import dns.rdatatype
import prometheus_client
import pytest

from skydns import forwarding
from skydns import metrics
from skydns import settings
from skydns import wire
from tests import procs
from tests import upstreams

# forward_timeout is how long a good upstream may take to answer on a loaded machine (stretched
# by the suite's scale); the "timeout" upstreams make a test wait it out once.
FAST = dict(forward_timeout=0.5 * procs.TIMEOUT_SCALE, forward_health_interval=0.05, loop_check_interval=0.0)


class Clock:
    def __init__(self, now: float = 1000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def make(*servers: upstreams.Upstream, clock=None, **fields) -> forwarding.Forwarder:
    opts = dict(FAST, nameservers=tuple(s.upstream for s in servers), forward_policy="sequential")
    opts.update(fields)
    kwargs = {"rng": random.Random(7)}
    if clock is not None:
        kwargs["clock"] = clock
    return forwarding.Forwarder(settings.Settings(**opts), metrics, **kwargs)


def query(name: str = "www.example.com.", rdtype: str = "A", **kwargs) -> dns.message.Message:
    return dns.message.make_query(name, rdtype, **kwargs)


def run(coro):
    return asyncio.run(coro)


def sample(name: str, **labels: str) -> float:
    return prometheus_client.REGISTRY.get_sample_value(name, labels) or 0.0


def test_relays_answer_with_client_id_and_question():
    async def main():
        async with upstreams.Upstream() as up:
            fwd = make(up)
            q = query("WWW.Example.COM.")
            reply = await fwd.forward(q)
            return q, reply, up.queries

    q, reply, seen = run(main())
    assert reply.id == q.id
    assert reply.question == q.question
    assert str(reply.question[0].name) == "WWW.Example.COM."
    assert reply.rcode() == dns.rcode.NOERROR
    assert reply.flags & dns.flags.RA
    assert [rr.to_text() for rr in reply.answer[0]] == ["192.0.2.1"]
    assert seen == [("udp", "www.example.com.", "A")]


@pytest.mark.parametrize(
    "mode", ["timeout", "servfail", "refused", "refused_noquestion", "formerr", "wrong_id", "wrong_question"])
def test_fails_over_to_next_upstream(mode):
    async def main():
        async with upstreams.Upstream(mode) as bad, upstreams.Upstream() as good:
            fwd = make(bad, good)
            reply = await fwd.forward(query())
            return reply, bad.queries, good.queries, fwd.default.upstreams[0]

    reply, bad_seen, good_seen, first = run(main())
    assert reply.rcode() == dns.rcode.NOERROR
    assert len(reply.answer) == 1
    assert len(bad_seen) == 1 and len(good_seen) == 1
    assert first.fails == 1
    rcode = {"servfail": "SERVFAIL", "refused": "REFUSED", "refused_noquestion": "REFUSED", "formerr": "FORMERR"}
    if mode in rcode:  # the error reply was taken (not waited out until the timeout)
        assert sample("skydns_forward_responses_total", to=first.label, rcode=rcode[mode]) == 1


def test_truncated_reply_is_retried_over_tcp():
    async def main():
        async with upstreams.Upstream("truncate") as up:
            reply = await make(up).forward(query())
            return reply, up.queries

    reply, seen = run(main())
    assert not reply.flags & dns.flags.TC
    assert [rr.to_text() for rr in reply.answer[0]] == ["192.0.2.1"]
    assert [proto for proto, _, _ in seen] == ["udp", "tcp"]


@pytest.mark.parametrize("modes", [("timeout", "servfail"), ("refused",), ("wrong_id", "wrong_question")],
                         ids=lambda m: "+".join(m))
def test_servfail_when_every_upstream_fails(modes):
    async def main():
        servers = [await upstreams.Upstream(m).start() for m in modes]
        try:
            q = query()
            return q, await make(*servers).forward(q)
        finally:
            for s in servers:
                await s.close()

    q, reply = run(main())
    assert reply.rcode() == dns.rcode.SERVFAIL
    assert reply.id == q.id and reply.question == q.question


def test_no_upstreams_or_no_rec_is_servfail_without_sending():
    async def main():
        async with upstreams.Upstream() as up:
            no_rec = await make(up, no_rec=True).forward(query())
            none = await make().forward(query())
            return no_rec, none, up.queries

    no_rec, none, seen = run(main())
    assert no_rec.rcode() == dns.rcode.SERVFAIL
    assert none.rcode() == dns.rcode.SERVFAIL
    assert seen == []


@pytest.mark.parametrize(
    "fields, expected",
    [
        ({"forward_policy": "sequential"}, [4, 0, 0]),
        ({"forward_policy": "round_robin"}, [2, 1, 1]),
        ({"forward_policy": "", "ns_rotate": True}, [2, 1, 1]),
        ({"forward_policy": "", "ns_rotate": False}, [4, 0, 0]),
    ],
    ids=["sequential", "round_robin", "ns_rotate=true", "ns_rotate=false"],
)
def test_policies_spread_queries(fields, expected):
    async def main():
        servers = [await upstreams.Upstream().start() for _ in range(3)]
        try:
            fwd = make(*servers, cache_size=0, **fields)
            for i in range(4):
                assert (await fwd.forward(query(f"n{i}.example.com."))).rcode() == dns.rcode.NOERROR
            return [len(s.queries) for s in servers]
        finally:
            for s in servers:
                await s.close()

    assert run(main()) == expected


def test_random_policy_uses_every_upstream():
    async def main():
        servers = [await upstreams.Upstream().start() for _ in range(3)]
        try:
            fwd = make(*servers, cache_size=0, forward_policy="random")
            for i in range(30):
                await fwd.forward(query(f"n{i}.example.com."))
            return [len(s.queries) for s in servers]
        finally:
            for s in servers:
                await s.close()

    counts = run(main())
    assert sum(counts) == 30
    assert all(c > 0 for c in counts)


def test_unknown_policy_is_a_configuration_error():
    with pytest.raises(ValueError, match="forward policy"):
        forwarding.Forwarder(settings.Settings(forward_policy="fastest"))


def test_failing_upstream_is_marked_down_then_recovers():
    async def main():
        async with upstreams.Upstream("servfail") as bad, upstreams.Upstream() as good:
            fwd = make(bad, good, cache_size=0, forward_max_fails=2)
            first = fwd.default.upstreams[0]
            for i in range(2):
                await fwd.forward(query(f"n{i}.example.com."))
            marked_down = first.down
            healthy_gauge = sample("skydns_forward_upstream_healthy", to=first.label)
            await fwd.forward(query("n2.example.com."))
            skipped = bad.names("A")  # the down upstream is not asked first any more
            await fwd.start()
            try:
                # health checks of the down upstream fail...
                await procs.async_wait_until(lambda: len(bad.names("NS")) >= 2, what="two failed health checks")
                still_down = first.down
                bad.mode = "ok"
                # ...until it answers again
                await procs.async_wait_until(lambda: not first.down, what="the upstream marked up again")
            finally:
                await fwd.close()
            return marked_down, healthy_gauge, skipped, still_down, first, fwd

    marked_down, healthy_gauge, skipped, still_down, first, fwd = run(main())
    assert marked_down and still_down
    assert healthy_gauge == 0
    assert skipped == ["n0.example.com.", "n1.example.com."]
    assert not first.down and first.fails == 0
    assert sample("skydns_forward_upstream_healthy", to=first.label) == 1
    assert sample("skydns_forward_healthcheck_failures_total", to=first.label) >= 2


def test_all_upstreams_down_answer_servfail_at_once_until_one_is_back():
    async def main():
        async with upstreams.Upstream("timeout") as a, upstreams.Upstream("timeout") as b:
            fwd = make(a, b, cache_size=0, forward_max_fails=1, forward_timeout=0.3)
            await fwd.forward(query("n0.example.com."))
            assert all(u.down for u in fwd.default.upstreams)
            asked = len(a.queries) + len(b.queries)
            loop = asyncio.get_running_loop()
            started = loop.time()
            # getent-like: several names and types, each answered at once (no upstream asked)
            fast = [await fwd.forward(query(f"n{i}.example.com.", t)) for i in range(1, 4) for t in ("A", "AAAA")]
            took = loop.time() - started
            asked_while_down = len(a.queries) + len(b.queries) - asked
            a.mode = "ok"
            await fwd.start()  # the health checks find a again
            try:
                while fwd.default.upstreams[0].down:
                    await asyncio.sleep(0.01)
                back = await fwd.forward(query("n1.example.com."))
            finally:
                await fwd.close()
            return fast, took, asked_while_down, back, fwd.ready()

    fast, took, asked_while_down, back, ready = run(main())
    assert [r.rcode() for r in fast] == [dns.rcode.SERVFAIL] * 6
    assert asked_while_down == 0
    assert took < 0.3  # not one forward_timeout, let alone one per query
    assert back.rcode() == dns.rcode.NOERROR  # its failure was forgotten when a came back
    assert ready == (True, "")


def test_servfail_is_cached_for_servfail_cache_ttl():
    clock = Clock()

    async def main():
        async with upstreams.Upstream("servfail") as up:
            fwd = make(up, clock=clock, forward_max_fails=100, servfail_cache_ttl=5)
            first = await fwd.forward(query())
            clock.now += 4.5
            cached = await fwd.forward(query("WWW.example.com."))
            other = await fwd.forward(query("other.example.com."))
            asked_within = len(up.queries)
            clock.now += 1
            up.mode = "ok"
            after = await fwd.forward(query())
            off = make(up, clock=clock, forward_max_fails=100, servfail_cache_ttl=0)
            up.mode = "servfail"
            await off.forward(query("x.example.com."))
            await off.forward(query("x.example.com."))
            return first, cached, other, asked_within, after, len(up.queries)

    first, cached, other, asked_within, after, asked = run(main())
    assert first.rcode() == cached.rcode() == other.rcode() == dns.rcode.SERVFAIL
    assert str(cached.question[0].name) == "WWW.example.com." and cached.id != first.id
    assert asked_within == 2  # www once, other once
    assert after.rcode() == dns.rcode.NOERROR  # expired after 5 s
    assert asked == 5  # servfail_cache_ttl=0: every query asks again


def test_relayed_servfail_is_cached_too():
    clock = Clock()

    async def main():
        async with upstreams.Upstream("servfail") as up:
            # SERVFAIL not in the failover rcodes: the upstream's SERVFAIL is relayed as it is
            fwd = make(up, clock=clock, forward_failover_rcodes=(5,))
            replies = [await fwd.forward(query()) for _ in range(3)]
            return replies, len(up.queries)

    replies, asked = run(main())
    assert [r.rcode() for r in replies] == [dns.rcode.SERVFAIL] * 3
    assert asked == 1


def test_ready_can_require_a_healthy_upstream():
    async def main():
        async with upstreams.Upstream("servfail") as a:
            fwd = make(a, cache_size=0, forward_max_fails=1, ready_requires_upstream=True)
            before = fwd.ready()
            await fwd.forward(query())
            return before, fwd.ready()

    assert run(main()) == ((True, ""), (False, "no healthy upstream"))


@pytest.mark.parametrize(
    "failover, expected_rcode, good_asked",
    [((2, 5), dns.rcode.NXDOMAIN, 0), ((2, 3, 5), dns.rcode.NOERROR, 1)],
    ids=["nxdomain-relayed", "nxdomain-failover"],
)
def test_nxdomain_failover_is_configurable(failover, expected_rcode, good_asked):
    async def main():
        async with upstreams.Upstream("nxdomain_public") as bad, upstreams.Upstream() as good:
            fwd = make(bad, good, forward_failover_rcodes=failover)
            reply = await fwd.forward(query())
            return reply, len(good.queries)

    reply, asked = run(main())
    assert reply.rcode() == expected_rcode
    assert asked == good_asked


def test_nxdomain_everywhere_is_relayed_not_servfail():
    async def main():
        async with upstreams.Upstream("nxdomain_public") as a, upstreams.Upstream("nxdomain_public") as b:
            return await make(a, b, forward_failover_rcodes=(2, 3, 5)).forward(query())

    reply = run(main())
    assert reply.rcode() == dns.rcode.NXDOMAIN
    assert reply.authority[0].rdtype == dns.rdatatype.SOA


def test_cache_answers_repeat_queries_and_counts_ttl_down():
    clock = Clock()

    async def main():
        async with upstreams.Upstream(ttl=300) as up:
            fwd = make(up, clock=clock)
            first = await fwd.forward(query())
            clock.now += 100.7
            second = await fwd.forward(query("WWW.EXAMPLE.com."))
            clock.now += 200
            third = await fwd.forward(query())
            return first, second, third, len(up.queries)

    first, second, third, asked = run(main())
    assert first.answer[0].ttl == 300
    assert second.answer[0].ttl == 200
    assert str(second.question[0].name) == "WWW.EXAMPLE.com."
    assert third.answer[0].ttl == 300  # expired -> asked again
    assert asked == 2


def test_serve_stale_when_every_upstream_fails():
    clock = Clock()

    async def main():
        async with upstreams.Upstream(ttl=60) as up:
            fwd = make(up, clock=clock, cache_serve_stale=600)
            await fwd.forward(query())
            up.mode = "servfail"
            clock.now += 300
            stale = await fwd.forward(query())
            clock.now += 400
            gone = await fwd.forward(query())
            return stale, gone

    stale, gone = run(main())
    assert stale.rcode() == dns.rcode.NOERROR
    assert stale.answer[0].ttl == 30
    assert gone.rcode() == dns.rcode.SERVFAIL


def test_identical_concurrent_queries_share_one_upstream_query():
    async def main():
        async with upstreams.Upstream("slow", delay=0.2) as up:
            fwd = make(up, cache_size=0)
            queries = [query() for _ in range(5)]
            replies = await asyncio.gather(*(fwd.forward(q) for q in queries))
            return queries, replies, up.queries

    queries, replies, seen = run(main())
    assert len(seen) == 1
    assert [r.id for r in replies] == [q.id for q in queries]
    assert all(r.rcode() == dns.rcode.NOERROR and len(r.answer) == 1 for r in replies)


def test_max_concurrent_refuses_the_excess():
    async def main():
        async with upstreams.Upstream("slow", delay=0.2) as up:
            fwd = make(up, cache_size=0, max_concurrent=2)
            before = sample("skydns_forward_max_concurrent_rejects_total")
            replies = await asyncio.gather(*(fwd.forward(query(f"n{i}.example.com.")) for i in range(3)))
            return [r.rcode() for r in replies], sample("skydns_forward_max_concurrent_rejects_total") - before

    rcodes, rejects = run(main())
    assert sorted(rcodes) == [dns.rcode.NOERROR, dns.rcode.NOERROR, dns.rcode.REFUSED]
    assert rejects == 1


def test_stub_domains_longest_suffix_wins():
    async def main():
        async with upstreams.Upstream() as default, upstreams.Upstream() as corp, upstreams.Upstream() as lab:
            fwd = make(default, stub_domains=(
                ("corp.example.", (corp.upstream,)),
                ("lab.corp.example.", (lab.upstream,)),
            ))
            for name in ("www.example.com.", "a.corp.example.", "x.lab.corp.example.", "corp.example.", "notcorp.example."):
                await fwd.forward(query(name))
            return default.names(), corp.names(), lab.names()

    default, corp, lab = run(main())
    assert default == ["www.example.com.", "notcorp.example."]
    assert corp == ["a.corp.example.", "corp.example."]
    assert lab == ["x.lab.corp.example."]


def test_edns_follows_the_client():
    async def main():
        async with upstreams.Upstream() as up:
            fwd = make(up, cache_size=0)
            plain = await fwd.forward(query())
            edns = await fwd.forward(query(use_edns=0, payload=4096, want_dnssec=True))
            return plain, edns

    plain, edns = run(main())
    assert plain.edns == -1
    assert edns.edns == 0 and edns.payload == 1232 and edns.ednsflags & dns.flags.DO


def test_lookup_returns_answer_rrsets_or_nothing():
    async def main():
        async with upstreams.Upstream() as up, upstreams.Upstream("servfail") as bad:
            good = await make(up).lookup("target.example.net.", dns.rdatatype.A)
            nx = await make(up).lookup("nx.example.net.", dns.rdatatype.A)
            failed = await make(bad).lookup("target.example.net.", dns.rdatatype.A)
            return good, nx, failed

    good, nx, failed = run(main())
    assert [rr.to_text() for rr in good[0]] == ["192.0.2.1"]
    assert nx == [] and failed == []


# What a lying upstream adds to the reply of "target.spoof.test." (tests/upstreams.py "liar"):
# records of other names, of our own zone, of another type, a second CNAME for one owner.
LIES = (
    "victim.spoof.test. 300 IN A 6.6.6.6",
    "web.default.svc.cluster.local. 300 IN A 6.6.6.6",
    "target.spoof.test. 300 IN TXT \"lie\"",
)


@pytest.mark.parametrize(
    "answer, rdtype, want",
    [
        (("target.spoof.test. 300 IN A 192.0.2.1", *LIES), "A", ["target.spoof.test. 300 IN A 192.0.2.1"]),
        (("target.spoof.test. 300 IN CNAME next.spoof.test.", "next.spoof.test. 300 IN CNAME last.example.",
          "last.example. 300 IN A 192.0.2.2", *LIES), "A",
         ["target.spoof.test. 300 IN CNAME next.spoof.test.", "next.spoof.test. 300 IN CNAME last.example.",
          "last.example. 300 IN A 192.0.2.2"]),
        # a chain that leads into our zone stops there: its records come from us, never upstream
        (("target.spoof.test. 300 IN CNAME web.default.svc.cluster.local.", *LIES), "A",
         ["target.spoof.test. 300 IN CNAME web.default.svc.cluster.local."]),
        (("target.spoof.test. 300 IN CNAME a.example.", "a.example. 300 IN CNAME target.spoof.test.",
          "a.example. 300 IN A 192.0.2.3"), "A",
         ["target.spoof.test. 300 IN CNAME a.example.", "a.example. 300 IN A 192.0.2.3"]),
        (("target.spoof.test. 300 IN CNAME a.example.", "a.example. 300 IN CNAME target.spoof.test."), "A",
         ["target.spoof.test. 300 IN CNAME a.example.", "a.example. 300 IN CNAME target.spoof.test."]),
        (("other.example. 300 IN A 192.0.2.9",), "A", []),
        (("target.spoof.test. 300 IN A 192.0.2.1", *LIES), "TXT", ['target.spoof.test. 300 IN TXT "lie"']),
        (("target.spoof.test. 300 IN CNAME a.example.", "a.example. 300 IN A 192.0.2.3"), "CNAME",
         ["target.spoof.test. 300 IN CNAME a.example."]),
        (("Target.Spoof.Test. 300 IN AAAA 2001:db8::1", "target.spoof.test. 300 IN A 192.0.2.1"), "AAAA",
         ["Target.Spoof.Test. 300 IN AAAA 2001:db8::1"]),
    ],
    ids=["extra-records", "long-chain", "chain-into-our-zone", "loop-with-records", "loop", "nothing-of-ours",
         "txt", "cname-query", "case"],
)
def test_chain_keeps_only_the_chased_chain(answer, rdtype, want):
    rrsets = [dns.rrset.from_text(*line.split(" ", 4)[:4], line.split(" ", 4)[4]) for line in answer]
    local = (dns.name.from_text("cluster.local."),)
    got = forwarding.chain(rrsets, dns.name.from_text("target.spoof.test."), dns.rdatatype.from_text(rdtype), local)
    assert [line for rrset in got for line in rrset.to_text().splitlines()] == want


@pytest.mark.parametrize("mode", ["liar", "wrong_id", "wrong_question"])
def test_lookup_through_a_lying_upstream(mode):
    async def main():
        async with upstreams.Upstream(mode) as up:
            fwd = make(up, domains=("cluster.local.",), forward_timeout=0.3)
            return await fwd.lookup("target.spoof.test.", dns.rdatatype.A)

    got = run(main())
    if mode == "liar":
        assert [rrset.to_text() for rrset in got] == ["target.spoof.test. 300 IN A 192.0.2.1"]
    else:  # a reply to another query is never taken
        assert got == []


def test_forwarded_replies_never_carry_records_of_our_zones():
    async def main():
        async with upstreams.Upstream("liar") as up:
            fwd = make(up, domains=("cluster.local.",))
            first = await fwd.forward(query("target.spoof.test."))
            cached = await fwd.forward(query("target.spoof.test."))
            return first, cached

    for reply in run(main()):
        names = {rrset.name.to_text() for section in (reply.answer, reply.authority, reply.additional)
                 for rrset in section}
        assert "target.spoof.test." in names
        assert not any(name.endswith("cluster.local.") for name in names), names


def test_metrics_count_requests_and_responses():
    async def main():
        async with upstreams.Upstream("refused") as bad, upstreams.Upstream() as good:
            fwd = make(bad, good, cache_size=0)
            await fwd.forward(query())
            return fwd.default.upstreams[0].label, fwd.default.upstreams[1].label

    bad, good = run(main())
    assert sample("skydns_forward_requests_total", to=bad) == 1
    assert sample("skydns_forward_responses_total", to=bad, rcode="REFUSED") == 1
    assert sample("skydns_forward_responses_total", to=good, rcode="NOERROR") == 1
    assert sample("skydns_forward_request_duration_seconds_count", to=good) == 1


def test_loop_is_detected_and_that_upstream_is_dropped():
    async def main():
        async with upstreams.Upstream() as good:
            fwd = make(good, cache_size=0)  # nameservers filled in below, once the loop exists
            async with upstreams.Listener(fwd) as us, upstreams.Upstream("forward", forward_to=("127.0.0.1", 0)) as stub:
                stub.forward_to = ("127.0.0.1", us.port)
                fwd = make(stub, good, cache_size=0)
                us.forwarder = fwd
                loops = [await fwd.check_loop(u) for u in fwd.upstreams()]
                ready = fwd.ready()
                reply = await fwd.forward(query())
                return loops, ready, reply, stub, good, fwd

    loops, ready, reply, stub, good, fwd = run(main())
    stub_label = fwd.default.upstreams[0].label
    assert loops == [True, False]
    assert ready == (False, f"forwarding loop via {stub_label}")
    assert reply.rcode() == dns.rcode.NOERROR
    assert stub.names("A") == []  # not forwarded to the looping upstream any more
    assert good.names("A") == ["www.example.com."]
    assert sample("skydns_forward_loop_detected", to=stub_label) == 1


def test_loop_check_runs_at_start_and_clears_when_fixed():
    async def main():
        fwd = None
        async with upstreams.Upstream("forward") as stub:
            fwd = make(stub, loop_check_interval=0.05)
            async with upstreams.Listener(fwd) as us:
                stub.forward_to = ("127.0.0.1", us.port)
                await fwd.start()
                try:
                    upstream = fwd.default.upstreams[0]
                    await procs.async_wait_until(lambda: upstream.looped, what="the loop detected at start")
                    looped_reply = await fwd.forward(query())
                    stub.mode = "ok"
                    await procs.async_wait_until(lambda: not upstream.looped, what="the loop cleared once fixed")
                    return looped_reply, fwd.ready()
                finally:
                    await fwd.close()

    looped_reply, ready = run(main())
    assert looped_reply.rcode() == dns.rcode.SERVFAIL
    assert ready == (True, "")


@pytest.mark.parametrize(
    "name, probe",
    [("a1.b2.loop-check.", True), ("A1.B2.LOOP-CHECK.", True), ("loop-check.example.com.", False),
     ("xloop-check.", False), ("x.", False)],
)
def test_is_loop_probe(name, probe):
    assert forwarding.is_loop_probe(name) is probe
    assert forwarding.is_loop_probe(dns.name.from_text(name)) is probe


def test_a_foreign_loop_probe_is_not_forwarded():
    async def main():
        async with upstreams.Upstream() as up:
            reply = await make(up).forward(query("ab.cd.loop-check.", "HINFO"))
            return reply, up.queries

    reply, seen = run(main())
    assert reply.rcode() == dns.rcode.SERVFAIL
    assert seen == []



def test_closed_port_fails_over_at_once():
    async def main():
        async with upstreams.Upstream() as good:
            dead = settings.Upstream("127.0.0.1", procs.free_port(socket.SOCK_DGRAM))
            fwd = forwarding.Forwarder(settings.Settings(**dict(
                FAST, nameservers=(dead, good.upstream), forward_policy="sequential", forward_timeout=5.0)))
            return await fwd.forward(query()), fwd.default.upstreams[0].fails

    reply, fails = run(main())
    assert reply.rcode() == dns.rcode.NOERROR
    assert fails == 1


# -- command-line options -----------------------------------------------------------------------


@click.command(context_settings={"auto_envvar_prefix": "SKYDNS"})
@forwarding.click_options
def _cli(**params):
    _cli.result = settings.Settings(**forwarding.settings_from_click(params))
    _cli.left = params


@pytest.mark.parametrize(
    "argv, env, expected",
    [
        ([], {}, {"forward_policy": "", "max_concurrent": 1000, "forward_failover_rcodes": (1, 2, 4, 5),
                  "stub_domains": (), "hosts_file": "", "cache_serve_stale": 3600.0}),
        (["--forward-policy", "random", "--max-concurrent", "5"], {}, {"forward_policy": "random", "max_concurrent": 5}),
        ([], {"SKYDNS_FORWARD_POLICY": "sequential", "SKYDNS_MAX_CONCURRENT": "7"},
         {"forward_policy": "sequential", "max_concurrent": 7}),
        (["--forward-failover", "servfail,NXDOMAIN", "--forward-failover", "refused"], {},
         {"forward_failover_rcodes": (2, 3, 5)}),
        ([], {"SKYDNS_FORWARD_FAILOVER": "SERVFAIL NXDOMAIN"}, {"forward_failover_rcodes": (2, 3)}),
        (["--stub-domain", "Corp.Example=10.1.2.3:5353,10.1.2.4", "--stub-domain", "lab.=[fd00::1]:54"], {},
         {"stub_domains": (("corp.example.", (settings.Upstream("10.1.2.3", 5353), settings.Upstream("10.1.2.4"))),
                           ("lab.", (settings.Upstream("fd00::1", 54),)))}),
        ([], {"SKYDNS_STUB_DOMAINS": "a.example=10.0.0.1 b.example=10.0.0.2:54"},
         {"stub_domains": (("a.example.", (settings.Upstream("10.0.0.1"),)),
                           ("b.example.", (settings.Upstream("10.0.0.2", 54),)))}),
        (["--cache-size", "0", "--cache-max-ttl", "60", "--cache-max-negative-ttl", "5", "--cache-serve-stale", "0"], {},
         {"cache_size": 0, "cache_max_ttl": 60, "cache_max_negative_ttl": 5, "cache_serve_stale": 0.0}),
        (["--hosts", "/etc/hosts", "--hosts-ttl", "10", "--hosts-reload", "1.5"], {},
         {"hosts_file": "/etc/hosts", "hosts_ttl": 10, "hosts_reload": 1.5}),
        ([], {"SKYDNS_HOSTS": "/etc/hosts"}, {"hosts_file": "/etc/hosts"}),
        (["--loop-check-interval", "0", "--ready-requires-upstream", "--forward-timeout", "1", "--forward-deadline", "3",
          "--forward-max-fails", "3", "--forward-health-interval", "2"], {},
         {"loop_check_interval": 0.0, "ready_requires_upstream": True, "forward_timeout": 1.0, "forward_deadline": 3.0,
          "forward_max_fails": 3, "forward_health_interval": 2.0}),
    ],
    ids=["defaults", "flags", "env", "failover-flags", "failover-env", "stub-flags", "stub-env", "cache", "hosts",
         "hosts-env", "misc"],
)
def test_click_options(argv, env, expected):
    result = click.testing.CliRunner().invoke(_cli, argv, env=env, catch_exceptions=False)
    assert result.exit_code == 0, result.output
    assert {k: getattr(_cli.result, k) for k in expected} == expected
    assert _cli.left == {}


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--forward-policy", "fastest"], "--forward-policy"),
        (["--forward-failover", "SOMETIMES"], "--forward-failover"),
        (["--stub-domain", "corp.example"], "--stub-domain"),
        (["--stub-domain", "corp.example=10.1.2.300"], "--stub-domain"),
        (["--stub-domain", "corp.example=10.1.2.3:70000"], "--stub-domain"),
        (["--max-concurrent", "-1"], "--max-concurrent"),
    ],
    ids=["policy", "rcode", "stub-no-servers", "stub-bad-ip", "stub-bad-port", "negative"],
)
def test_click_options_reject_bad_values(argv, message):
    result = click.testing.CliRunner().invoke(_cli, argv)
    assert result.exit_code == 2
    assert message in result.output


# -- encoded answers for the transport's hot path ----------------------------------------------


def test_encoded_replies_are_patched_per_query_until_they_expire():
    clock = Clock()

    async def main():
        async with upstreams.Upstream(ttl=300) as up:
            fwd = make(up, clock=clock)
            q1 = query("www.example.com.", use_edns=0)
            p1 = wire.parse(q1.to_wire())
            key = wire.cache_key(p1, wire.udp_limit(p1, 1232))
            assert fwd.encoded_reply(p1, key) is None
            reply = await fwd.forward(q1)
            kept = fwd.remember_encoded(key, q1, reply.to_wire(max_size=1232))
            clock.now += 100.5
            q2 = query("WWW.example.COM.", use_edns=0)
            p2 = wire.parse(q2.to_wire())
            hit = fwd.encoded_reply(p2, wire.cache_key(p2, wire.udp_limit(p2, 1232)))
            clock.now += 200
            expired = fwd.encoded_reply(p2, key)
            return kept, q2, hit, expired, len(up.queries)

    kept, q2, hit, expired, asked = run(main())
    assert kept
    message = dns.message.from_wire(hit)
    assert message.id == q2.id
    assert str(message.question[0].name) == "WWW.example.COM."
    assert message.answer[0].ttl == 200
    assert message.edns == 0
    assert expired is None
    assert asked == 1


def test_forget_drops_every_cached_answer_of_one_name():
    clock = Clock()

    async def main():
        async with upstreams.Upstream(ttl=300) as up:
            fwd = make(up, clock=clock)
            keys = {}
            for name in ("1.0.0.10.in-addr.arpa.", "2.0.0.10.in-addr.arpa."):
                for do in (False, True):  # two cache keys per name (the fake upstream answers only A)
                    q = query(name, "A", use_edns=0, want_dnssec=do)
                    p = wire.parse(q.to_wire())
                    key = keys[name, do] = wire.cache_key(p, wire.udp_limit(p, 1232))
                    assert fwd.remember_encoded(key, q, (await fwd.forward(q)).to_wire())
            fwd.forget("1.0.0.10.in-addr.arpa.")
            hits = {}
            for (name, do), key in keys.items():
                p = wire.parse(query(name, "A", use_edns=0, want_dnssec=do).to_wire())
                hits[name, do] = fwd.encoded_reply(p, key) is not None
            before = len(up.queries)
            await fwd.forward(query("1.0.0.10.in-addr.arpa.", "A"))  # asked again
            await fwd.forward(query("2.0.0.10.in-addr.arpa.", "A"))  # still cached
            return hits, len(up.queries) - before

    hits, asked = run(main())
    assert hits == {("1.0.0.10.in-addr.arpa.", False): False, ("1.0.0.10.in-addr.arpa.", True): False,
                    ("2.0.0.10.in-addr.arpa.", False): True, ("2.0.0.10.in-addr.arpa.", True): True}
    assert asked == 1


@pytest.mark.parametrize(
    "mode, name, kept",
    [("ok", "www.example.com.", True), ("ok", "nx.example.com.", True), ("servfail", "www.example.com.", False),
     ("truncate", "www.example.com.", False)],
    ids=["positive", "nxdomain", "servfail", "truncated"],
)
def test_remember_encoded_only_cached_answers(mode, name, kept):
    async def main():
        async with upstreams.Upstream(mode) as up:
            fwd = make(up)
            q = query(name)
            reply = await fwd.forward(q)
            out = reply.to_wire()
            if mode == "truncate":  # pretend the transport had to cut it for a small UDP limit
                out = out[:2] + bytes([out[2] | 0x02]) + out[3:]
            p = wire.parse(q.to_wire())
            return fwd.remember_encoded(wire.cache_key(p, 512), q, out)

    assert run(main()) is kept


@pytest.mark.parametrize(
    "name, index",
    [
        (forwarding.probe_name(0x1234, 0), 0),
        (forwarding.probe_name(0xFFFF, 12), 12),
        ("0000000000001234.0.0123456789abcdef.loop-check.", None),  # forged mac
        (forwarding.probe_name(0x1234, 0).replace(".0.", ".1.", 1), None),  # index changed
        ("ab.cd.loop-check.", None),
        ("www.example.com.", None),
    ],
    ids=["signed-0", "signed-12", "forged", "tampered", "foreign", "not-a-probe"],
)
def test_probe_index(name, index):
    assert forwarding.probe_index(name) == index


def test_a_probe_sent_by_another_worker_marks_the_loop_here():
    async def main():
        async with upstreams.Upstream() as a, upstreams.Upstream() as b:
            here = make(a, b)  # same settings as the worker that sent the probe
            reply = await here.forward(query(forwarding.probe_name(42, 1), "HINFO"))
            forged = make(a, b)
            await forged.forward(query("0000000000000001.0.0123456789abcdef.loop-check.", "HINFO"))
            return reply, [u.looped for u in here.upstreams()], [u.looped for u in forged.upstreams()], here.ready()

    reply, here, forged, ready = run(main())
    assert reply.rcode() == dns.rcode.SERVFAIL
    assert here == [False, True]
    assert forged == [False, False]
    assert ready[0] is False and ready[1].startswith("forwarding loop via 127.0.0.1:")


def test_cache_mib_bounds_answers_and_encoded_replies():
    """--cache-mib (fwdcache rule 4): 3/4 of it for the answers, 1/4 for the encoded replies."""
    forwarder = make(upstreams.Upstream(), cache_mib=4)
    assert forwarder.cache.max_bytes == 3 << 20
    assert forwarder._encoded.max_bytes == 1 << 20
