"""skydns.hosts: parsing (pure), answers, reload on change, and use before forwarding."""

from __future__ import annotations

import asyncio
import os

import dns.flags
import dns.message
import dns.rcode
import pytest

from skydns import forwarding
from skydns import hosts
from skydns import settings
from tests import procs, upstreams

TEXT = """\
# comment line
127.0.0.1   localhost
10.0.0.5    registry.corp.example   registry   # the private registry
10.0.0.6    registry.corp.example
fd00::5     registry.corp.example
10.0.0.7    Mixed.Case.Example
not-an-ip   broken.example
10.0.0.8
192.0.2.10  bad..name.example
fe80::1%eth0 link.example
"""


def test_parse_table():
    table = hosts.parse(TEXT)
    assert table.v4 == {
        "localhost.": ("127.0.0.1",),
        "registry.corp.example.": ("10.0.0.5", "10.0.0.6"),
        "registry.": ("10.0.0.5",),
        "mixed.case.example.": ("10.0.0.7",),
    }
    assert table.v6 == {"registry.corp.example.": ("fd00::5",), "link.example.": ("fe80::1",)}
    assert table.ptr["5.0.0.10.in-addr.arpa."] == ("registry.corp.example.", "registry.")
    assert table.bad_lines == (7, 8, 9)
    assert len(table) == 5


def answer(table: hosts.Table, name: str, rdtype: str, ttl: int = 60) -> dns.message.Message | None:
    return hosts.answer_from(table, dns.message.make_query(name, rdtype), ttl)


@pytest.mark.parametrize(
    "name, rdtype, rcode, records",
    [
        ("registry.corp.example.", "A", dns.rcode.NOERROR, ["10.0.0.5", "10.0.0.6"]),
        ("REGISTRY.corp.example.", "AAAA", dns.rcode.NOERROR, ["fd00::5"]),
        ("mixed.case.example.", "AAAA", dns.rcode.NOERROR, []),  # known name, no such type: NODATA
        ("registry.corp.example.", "MX", dns.rcode.NOERROR, []),
        ("5.0.0.10.in-addr.arpa.", "PTR", dns.rcode.NOERROR, ["registry.corp.example.", "registry."]),
        ("5.0.0.10.in-addr.arpa.", "A", dns.rcode.NOERROR, []),
        ("other.example.", "A", None, None),  # unknown: forwarded
        ("broken.example.", "A", None, None),
    ],
    ids=lambda v: str(v) if not isinstance(v, list) else None,
)
def test_answers(name, rdtype, rcode, records):
    reply = answer(hosts.parse(TEXT), name, rdtype)
    if rcode is None:
        assert reply is None
        return
    assert reply.rcode() == rcode
    assert reply.flags & dns.flags.AA and reply.flags & dns.flags.RA
    assert str(reply.question[0].name) == name
    got = [rr.to_text() for rrset in reply.answer for rr in rrset]
    assert got == records
    assert all(rrset.ttl == 60 for rrset in reply.answer)


def test_reload_on_change_and_missing_file_keeps_table(tmp_path):
    path = tmp_path / "hosts"
    path.write_text("10.0.0.1 one.example\n")
    h = hosts.Hosts(str(path), ttl=30)
    assert h.reload() is True
    assert h.reload() is False  # unchanged
    path.write_text("10.0.0.2 two.example\n10.0.0.3 three.example\n")
    os.utime(path, ns=(1, 1))  # a different mtime even within the same clock tick
    assert h.reload() is True
    assert set(h.table.v4) == {"two.example.", "three.example."}
    path.unlink()
    assert h.reload() is False
    assert len(h) == 2  # last good table kept
    assert h.answer(dns.message.make_query("two.example.", "A")).answer[0].ttl == 30


def test_hosts_answered_before_forwarding_and_reloaded(tmp_path):
    path = tmp_path / "hosts"
    path.write_text("10.9.9.9 registry.corp.example\n")

    async def main():
        async with upstreams.Upstream() as up:
            fwd = forwarding.Forwarder(settings.Settings(
                nameservers=(up.upstream,), hosts_file=str(path), hosts_reload=0.02, loop_check_interval=0))
            await fwd.start()
            try:
                first = await fwd.forward(dns.message.make_query("registry.corp.example.", "A"))
                path.write_text("10.8.8.8 registry.corp.example\n")
                os.utime(path, ns=(2, 2))
                async def reloaded():
                    reply = await fwd.forward(dns.message.make_query("registry.corp.example.", "A"))
                    return reply if reply.answer[0][0].to_text() != "10.9.9.9" else None

                second = await procs.async_wait_until(reloaded, what="the hosts file reloaded")
                other = await fwd.forward(dns.message.make_query("www.example.com.", "A"))
            finally:
                await fwd.close()
            return first, second, other, up.names()

    first, second, other, asked = asyncio.run(main())
    assert first.answer[0][0].to_text() == "10.9.9.9"
    assert second.answer[0][0].to_text() == "10.8.8.8"
    assert other.answer[0][0].to_text() == "192.0.2.1"
    assert asked == ["www.example.com."]


@pytest.mark.parametrize(
    "before, after, names",
    [
        ("10.0.0.1 a\n", "10.0.0.1 a\n", set()),
        ("10.0.0.1 a\n", "10.0.0.2 a\n", {"a.", "1.0.0.10.in-addr.arpa.", "2.0.0.10.in-addr.arpa."}),
        ("10.0.0.1 a\n", "10.0.0.1 a b\n", {"b.", "1.0.0.10.in-addr.arpa."}),
        ("10.0.0.1 a\nfd00::1 c\n", "10.0.0.1 a\n",
         {"c.", "1.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.d.f.ip6.arpa."}),
    ],
    ids=["same", "address-changed", "alias-added", "v6-removed"],
)
def test_changed_names_between_two_tables(before, after, names):
    assert hosts.changed(hosts.parse(before), hosts.parse(after)) == names


def test_reload_forgets_the_forwarded_answers_of_changed_names_only(tmp_path):
    from skydns import wire

    path = tmp_path / "hosts"
    path.write_text("10.9.9.9 other.corp.example\n")

    async def main():
        async with upstreams.Upstream() as up:
            fwd = forwarding.Forwarder(settings.Settings(
                nameservers=(up.upstream,), hosts_file=str(path), hosts_reload=0.02, loop_check_interval=0))
            await fwd.start()
            try:
                keys = {}
                for name in ("registry.corp.example.", "www.example.com."):
                    q = dns.message.make_query(name, "A")
                    p = wire.parse(q.to_wire())
                    keys[name] = (p, wire.cache_key(p, 512))
                    assert fwd.remember_encoded(keys[name][1], q, (await fwd.forward(q)).to_wire())
                path.write_text("10.9.9.9 other.corp.example\n10.8.8.8 registry.corp.example\n")
                os.utime(path, ns=(2, 2))
                while fwd.encoded_reply(*keys["registry.corp.example."]) is not None:
                    await asyncio.sleep(0.01)
                still = fwd.encoded_reply(*keys["www.example.com."])
                now = await fwd.forward(dns.message.make_query("registry.corp.example.", "A"))
            finally:
                await fwd.close()
            return still, now

    still, now = asyncio.run(main())
    assert still is not None  # an unrelated forwarded answer stays cached
    assert now.answer[0][0].to_text() == "10.8.8.8"
