"""Hostile values in etcd (issue 11): a real etcd holding every kind of bad value next to good
ones. Each bad value costs only its own key: the good siblings are loaded (by the list and by
the watch) and answered for every type; each bad value is logged and counted once per key and
revision, and `skydns doctor` names it with its reason.
"""

from __future__ import annotations

import json
import logging

import aetcd
import dns.message
import dns.rcode
import dns.rdatatype
import pytest

from skydns import answering, doctor, settings as settings_mod
from tests import procs
from tests.integration.test_mirror import key, loop_thread, mirror, record  # noqa: F401 - fixtures

pytestmark = pytest.mark.integration

# value -> what the log names as the reason (a piece of it)
BAD = {
    "ttl-1e400": ('{"host":"10.0.0.9","ttl":1e400}', "ttl must be an integer"),
    "port-nan": ('{"host":"10.0.0.9","port":NaN}', "NaN"),
    "weight-infinity": ('{"host":"10.0.0.9","weight":-Infinity}', "Infinity"),
    "priority-huge": ('{"host":"10.0.0.9","priority":' + "9" * 5000 + "}", "not JSON"),
    "targetstrip-big": ('{"host":"a.example.","targetstrip":1e30}', "out of range"),
    "zone-id": ('{"host":"fe80::1%eth0"}', "zone id"),
    "bad-label": ('{"host":"a..example."}', "neither an IP address nor a valid host name"),
    "long-name": ('{"host":"' + "a" * 300 + '."}', "longer than a DNS name"),
    "deep": ("[" * 100000 + "]" * 100000, "nested too deeply"),
    "surrogate": ('{"text":"\\ud800"}', "not valid Unicode"),
    "not-object": ('"just a string"', "want a JSON object"),
}


def put_raw(loop_thread, etcd, items: dict[str, bytes | str]) -> None:
    """Write values byte for byte (etcdctl cannot pass a 200 kB argument or non-UTF-8)."""
    async def write() -> None:
        async with aetcd.Client("127.0.0.1", etcd.client_port) as client:
            for k, v in items.items():
                await client.put(k.encode(), v if isinstance(v, bytes) else v.encode())

    loop_thread.run(write())


def answers(view, name: str, rdtype: str):
    settings = settings_mod.Settings(domains=("mirror.test.",))
    result = answering.answer(dns.message.make_query(name, rdtype), view, settings)
    return result.message


def test_bad_values_cost_only_their_own_keys(etcd, mirror, loop_thread, caplog):
    caplog.set_level(logging.WARNING, logger="skydns.etcdwatch")
    put_raw(loop_thread, etcd, {key("good.svc"): record("10.0.0.1"), key("v6.svc"): record("fd00::1"),
                                **{key(f"{label}.svc"): value for label, (value, _) in BAD.items()}})
    m = mirror()
    m.wait_keys({key("good.svc"), key("v6.svc")}, "good values loaded next to bad ones")
    bad = m.call(lambda: dict(m.view.bad))
    assert set(bad) == {key(f"{label}.svc") for label in BAD}
    assert m.metrics.etcd_bad_values.value == len(BAD)
    lines = [r.getMessage() for r in caplog.records if "bad value" in r.getMessage()]
    for label, (_, reason) in BAD.items():
        mine = [line for line in lines if key(f"{label}.svc") + " " in line]
        assert len(mine) == 1, (label, mine)
        assert reason in mine[0]
        assert len(mine[0]) < 400  # a megabyte of bad value never reaches the log

    # the parent answers with its good children for every type, never SERVFAIL
    for rdtype in ("A", "AAAA", "SRV", "TXT", "MX", "CNAME", "PTR", "NS", "CAA"):
        reply = m.call(lambda: answers(m.view, "svc.mirror.test.", rdtype))
        assert reply.rcode() == dns.rcode.NOERROR, rdtype
    a = m.call(lambda: answers(m.view, "svc.mirror.test.", "A"))
    assert [rr.to_text() for rrset in a.answer for rr in rrset] == ["10.0.0.1"]

    # a relist (etcd restarted) finds the same bad values: no new line, no new count
    before = len(caplog.records)
    etcd.stop()
    procs.wait_until(lambda: m.metrics.etcd_connected.value == 0, what="mirror notices etcd is down")
    etcd.start()
    procs.wait_until(lambda: m.metrics.etcd_connected.value == 1, what="relisted")
    etcd.ctl("put", key("after.svc"), record("10.0.0.2"))
    m.wait_keys({key("good.svc"), key("v6.svc"), key("after.svc")}, "watch after the relist")
    assert m.metrics.etcd_bad_values.value == len(BAD)
    assert not [r for r in caplog.records[before:] if "bad value" in r.getMessage()]

    # the same bad value written again is a new revision: logged and counted once more
    put_raw(loop_thread, etcd, {key("zone-id.svc"): BAD["zone-id"][0]})
    procs.wait_until(lambda: m.metrics.etcd_bad_values.value == len(BAD) + 1, what="rewrite counted")
    # a fixed value is served and leaves the bad list
    etcd.ctl("put", key("zone-id.svc"), record("fe80::1"))
    m.wait_keys({key("good.svc"), key("v6.svc"), key("after.svc"), key("zone-id.svc")}, "fixed value")
    assert key("zone-id.svc") not in m.call(lambda: dict(m.view.bad))


def test_non_utf8_and_megabyte_values(etcd, mirror, loop_thread):
    put_raw(loop_thread, etcd, {
        key("bytes.svc"): b'{"host":"\xff\xfe"}',
        key("huge.svc"): json.dumps({"text": "x" * (1 << 20)}),
        key("hugebad.svc"): b'{"host":"' + b"a" * (1 << 20) + b'"}',
        key("good.svc"): record("10.0.0.1"),
    })
    m = mirror()
    m.wait_keys({key("good.svc"), key("huge.svc")}, "good and long-text values loaded")
    bad = m.call(lambda: dict(m.view.bad))
    assert set(bad) == {key("bytes.svc"), key("hugebad.svc")}
    assert all(len(reason) < 400 for reason in bad.values())
    txt = m.call(lambda: answers(m.view, "huge.svc.mirror.test.", "TXT"))
    assert txt.rcode() == dns.rcode.NOERROR
    assert len(txt.to_wire(max_size=65535, prefer_truncation=True)) <= 65535


def test_doctor_names_bad_values(etcd, loop_thread):
    etcd.ctl("put", key("good"), record("10.0.0.1"))
    etcd.ctl("put", key("broken"), '{"host":"10.0.0.9","ttl":1e400}')
    settings = settings_mod.Settings(etcd_endpoints=(etcd.endpoint,), prefix="skydns")
    report = doctor.Report(columns=[], rows=[])
    samples = {("skydns_etcd_keys", ()): 1.0, ("skydns_etcd_revision", ()): 1.0}
    loop_thread.run(doctor._mirror(settings, samples, report))
    assert report.bad == {key("broken"): f"{key('broken')}: ttl must be an integer, got inf"}
    assert f"bad value in etcd at {key('broken')} (not served): ttl must be an integer, got inf" in report.problems
    assert "1 bad values" in report.mirror
    assert f"bad value in etcd at {key('broken')}" in doctor.render(report)
