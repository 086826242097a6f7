"""app lifecycle in-process: the stop path, dead root tasks, start-up errors (etcdwatch.run is
replaced by small stand-ins; the real one is covered by tests/integration)."""

from __future__ import annotations

import asyncio
import os
import signal
import socket

import dns.message
import dns.query
import dns.rcode
import pytest

from skydns import app, etcdwatch, settings as settings_mod
from tests import procs


def _settings(**overrides) -> settings_mod.Settings:
    values = dict(addr_host="127.0.0.1", addr_port=procs.free_port(), http_host="127.0.0.1",
                  http_port=procs.free_port(), domains=("cluster.local.",), lameduck=0.0, loop_check_interval=0)
    values.update(overrides)
    return settings_mod.Settings(**values)


def test_sigterm_is_a_clean_stop(monkeypatch):
    seen = {}
    settings = _settings(lameduck=0.5 * procs.TIMEOUT_SCALE)  # the second query must land inside it

    async def mirror(settings_, view, stop, on_event=None):
        view.replace([("/skydns/local/cluster/web", b'{"host":"10.0.0.1"}')], 2)
        loop = asyncio.get_running_loop()
        reply = await loop.run_in_executor(None, lambda: dns.query.udp(
            dns.message.make_query("web.cluster.local.", "A"), "127.0.0.1", port=settings.addr_port, timeout=2))
        seen["before"] = reply.rcode()
        os.kill(os.getpid(), signal.SIGTERM)
        await asyncio.sleep(0.05)
        # lameduck: still answering
        reply = await loop.run_in_executor(None, lambda: dns.query.udp(
            dns.message.make_query("web.cluster.local.", "A"), "127.0.0.1", port=settings.addr_port, timeout=2))
        seen["lameduck"] = reply.rcode()
        await stop.wait()
        seen["stopped"] = True

    monkeypatch.setattr(etcdwatch, "run", mirror)
    app.run(settings)  # returns: exit code 0
    assert seen == {"before": dns.rcode.NOERROR, "lameduck": dns.rcode.NOERROR, "stopped": True}


ROOT_FAILURES = [
    ("raises", RuntimeError("boom")),
    ("returns", None),
]


@pytest.mark.parametrize("failure", [r[1] for r in ROOT_FAILURES], ids=[r[0] for r in ROOT_FAILURES])
def test_dead_root_task_exits_non_zero(monkeypatch, failure):
    async def mirror(settings_, view, stop, on_event=None):
        await asyncio.sleep(0.05)
        if failure is not None:
            raise failure

    monkeypatch.setattr(etcdwatch, "run", mirror)
    with pytest.raises(SystemExit) as info:
        app.run(_settings())
    assert info.value.code == 1


def test_config_error_from_the_mirror_is_one_line(monkeypatch, capsys):
    async def mirror(settings_, view, stop, on_event=None):
        raise etcdwatch.ConfigError("etcd TLS: cannot read /x/ca.pem")

    monkeypatch.setattr(etcdwatch, "run", mirror)
    with pytest.raises(SystemExit) as info:
        app.run(_settings())
    assert info.value.code == 1
    assert "skydns: error: etcd TLS: cannot read /x/ca.pem\n" in capsys.readouterr().err


@pytest.mark.parametrize("proto", ["udp", "tcp", "http"])
def test_listen_address_in_use_exits_at_once(monkeypatch, capsys, proto):
    monkeypatch.setattr(etcdwatch, "run", lambda *a, **k: pytest.fail("must not start"))
    settings = _settings()
    kind = socket.SOCK_DGRAM if proto == "udp" else socket.SOCK_STREAM
    port = settings.http_port if proto == "http" else settings.addr_port
    with socket.socket(socket.AF_INET, kind) as taken:
        taken.bind(("127.0.0.1", port))
        if kind == socket.SOCK_STREAM:
            taken.listen(1)
        with pytest.raises(SystemExit) as info:
            app.run(settings)
    assert info.value.code == 1
    err = capsys.readouterr().err.splitlines()
    hint = "--http-addr" if proto == "http" else "-addr"
    assert err[-1] == f"skydns: error: cannot listen on 127.0.0.1:{port}/{proto}: address already in use (use {hint} to pick another)"
