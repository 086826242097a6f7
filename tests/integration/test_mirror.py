"""The etcd mirror against a real etcd: list, watch, bad values, restarts, compaction, size.

The mirrors run on one event loop in a thread (as in the daemon); the test thread drives
etcd with etcdctl and polls the view through that loop, so every read of the view happens
on the thread that writes it. Nothing here asserts a duration: changes are
awaited with wait_until.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import logging
import os
import random
import shutil
import signal
import subprocess
import threading

import aetcd
import pytest

from skydns import etcdwatch
from skydns import settings as settings_mod
from skydns import store
from tests import procs

pytestmark = pytest.mark.integration


def view_keys(view: store.Store) -> set[str]:
    """The etcd keys of the good records in the view."""
    return set(view.records())


ZONE = "mirror.test."


def key(name: str) -> str:
    """etcd key of name.mirror.test. (labels reversed under /skydns/test/mirror/)."""
    return "/skydns/test/mirror/" + "/".join(reversed(name.split(".")))


def record(ip: str) -> str:
    return json.dumps({"host": ip}, separators=(",", ":"))


class Metrics:
    """A stand-in metrics module that remembers the last value of each metric."""

    class Metric:
        def __init__(self) -> None:
            self.value = 0.0

        def set(self, value: float) -> None:
            self.value = value

        def inc(self, amount: float = 1) -> None:
            self.value += amount

    def __init__(self) -> None:
        for name in ("etcd_keys", "etcd_revision", "etcd_last_event_timestamp_seconds",
                     "etcd_watch_reconnects", "etcd_bad_values", "etcd_ready", "etcd_connected"):
            setattr(self, name, self.Metric())


class LoopThread:
    """One event loop in a thread for all gRPC work of this module.

    grpc.aio keeps per-process state bound to the loops it has seen; one long-lived loop
    (as in the daemon) avoids "Event loop is closed" noise from short-lived ones.
    """

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()

    def run(self, coro, timeout: float = 30.0):
        """Run coro on the loop thread and return its result."""
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def close(self) -> None:
        async def drain() -> None:
            tasks = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

        self.run(drain())
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)
        self.loop.close()


@pytest.fixture(scope="module")
def loop_thread():
    thread = LoopThread()
    yield thread
    thread.close()


class Mirror:
    """etcdwatch.run() as a task on the shared loop thread."""

    def __init__(self, loop_thread: LoopThread, settings: settings_mod.Settings, hook=None,
                 view=None) -> None:
        self.loop_thread = loop_thread
        self.settings = settings
        self.hook = hook
        self.view = view if view is not None else store.Store()
        self.metrics = Metrics()
        self.updates: list[etcdwatch.Update] = []
        self.stop_event: asyncio.Event | None = None
        self.future = None

    def _on_event(self, update: etcdwatch.Update) -> None:
        self.updates.append(update)
        if self.hook is not None:
            self.hook(update)

    def start(self) -> "Mirror":
        async def create() -> None:
            self.stop_event = asyncio.Event()

        self.loop_thread.run(create())
        self.future = asyncio.run_coroutine_threadsafe(
            etcdwatch.run(self.settings, self.view, self.stop_event, self._on_event,
                          metrics_module=self.metrics, rng=random.Random(1)),
            self.loop_thread.loop)
        return self

    def call(self, fn):
        """Run fn() on the loop thread (where the view is written) and return its result."""
        async def wrapped():
            return fn()
        return self.loop_thread.run(wrapped(), timeout=5)

    def keys(self) -> set[str]:
        return self.call(lambda: view_keys(self.view))

    def wait_keys(self, expected: set[str], what: str = "view equal to etcd") -> None:
        procs.wait_until(lambda: self.keys() == expected, timeout=15, what=what)

    def stop(self) -> None:
        if self.future is None or self.future.done() and self.stop_event.is_set():
            return
        self.loop_thread.loop.call_soon_threadsafe(self.stop_event.set)
        try:
            self.future.result(10)  # re-raises whatever run() raised
        except TimeoutError:
            import io
            out = io.StringIO()
            for task in asyncio.all_tasks(self.loop_thread.loop):
                out.write(f"{task!r}\n")
                for frame in task.get_stack():
                    out.write(f"    {frame.f_code.co_filename}:{frame.f_lineno} {frame.f_code.co_name}\n")
            raise AssertionError("run() did not return after stop; tasks:\n" + out.getvalue())


def settings_for(etcd, **overrides) -> settings_mod.Settings:
    base = settings_mod.Settings(
        domains=(ZONE,), etcd_endpoints=(etcd.endpoint,), backoff=(0.05, 0.1, 0.2),
        etcd_timeout=1.0, etcd_watch_check=0.5, etcd_page_size=100,
    )
    return dataclasses.replace(base, **overrides)


def etcd_keys(etcd) -> set[str]:
    out = etcd.ctl("get", "--prefix", "/skydns/", "--keys-only")
    return {line for line in out.splitlines() if line.strip()}


def etcd_revision(etcd) -> int:
    return int(json.loads(etcd.ctl("get", "/", "-w", "json"))["header"]["revision"])


@pytest.fixture
def mirror(request, loop_thread):
    started: list[Mirror] = []

    def start(hook=None, settings=None, **overrides) -> Mirror:
        if settings is None:
            settings = settings_for(request.getfixturevalue("etcd"), **overrides)
        m = Mirror(loop_thread, settings, hook).start()
        started.append(m)
        return m

    yield start
    for m in started:
        m.stop()


def put_many(loop_thread: LoopThread, etcd, items: dict[str, str]) -> None:
    """Write many keys in transactions of 500 puts (a real etcd client, not the mirror's)."""
    async def write() -> None:
        async with aetcd.Client("127.0.0.1", etcd.client_port) as client:
            pairs = list(items.items())
            for start in range(0, len(pairs), 500):
                puts = [client.transactions.put(k.encode(), v.encode()) for k, v in pairs[start:start + 500]]
                await client.transaction(compare=[], success=puts, failure=[])

    loop_thread.run(write())


def test_put_and_delete_reach_the_view(etcd, mirror):
    etcd.ctl("put", key("a"), record("10.0.0.1"))
    m = mirror()
    m.wait_keys({key("a")}, "initial load")
    assert m.call(lambda: m.view.loaded)
    etcd.ctl("put", key("b"), record("10.0.0.2"))
    m.wait_keys({key("a"), key("b")}, "put applied")
    etcd.ctl("del", key("a"))
    m.wait_keys({key("b")}, "delete applied")
    revision = etcd_revision(etcd)
    procs.wait_until(lambda: m.call(lambda: m.view.revision) == revision, what="view revision")
    assert m.metrics.etcd_revision.value == revision
    assert m.metrics.etcd_keys.value == 1
    assert m.metrics.etcd_ready.value == 1
    assert m.metrics.etcd_connected.value == 1
    kinds = [u.change for u in m.updates]
    assert kinds[0] is etcdwatch.Change.REPLACE
    assert kinds[-2:] == [etcdwatch.Change.PUT, etcdwatch.Change.DELETE]


def test_bad_value_is_skipped_and_counted(etcd, mirror, caplog):
    caplog.set_level(logging.WARNING)
    etcd.ctl("put", key("good"), record("10.0.0.1"))
    etcd.ctl("put", key("broken"), "{not json")
    m = mirror()
    m.wait_keys({key("good")}, "load with a bad value")
    assert key("broken") in m.call(lambda: dict(m.view.bad))
    assert m.metrics.etcd_bad_values.value == 1
    etcd.ctl("put", key("broken2"), "[1,")
    etcd.ctl("put", key("later"), record("10.0.0.3"))
    m.wait_keys({key("good"), key("later")}, "watch continues after a bad value")
    assert m.metrics.etcd_bad_values.value == 2
    assert any(key("broken") in r.getMessage() for r in caplog.records)
    assert any(key("broken2") in r.getMessage() for r in caplog.records)
    etcd.ctl("put", key("broken"), record("10.0.0.4"))
    m.wait_keys({key("good"), key("later"), key("broken")}, "fixed value served")
    assert key("broken") not in m.call(lambda: dict(m.view.bad))


def test_etcd_down_keeps_the_view_then_catches_up(etcd, mirror):
    etcd.ctl("put", key("a"), record("10.0.0.1"))
    etcd.ctl("put", key("gone"), record("10.0.0.9"))
    m = mirror()
    m.wait_keys({key("a"), key("gone")}, "initial load")
    etcd.stop()
    procs.wait_until(lambda: m.metrics.etcd_connected.value == 0, what="mirror notices etcd is down")
    procs.wait_until(lambda: m.metrics.etcd_watch_reconnects.value >= 2, what="retries")
    assert m.keys() == {key("a"), key("gone")}
    assert m.call(lambda: m.view.loaded)
    assert m.metrics.etcd_ready.value == 1
    etcd.start()
    etcd.ctl("put", key("after"), record("10.0.0.2"))
    etcd.ctl("del", key("gone"))
    m.wait_keys({key("a"), key("after")}, "changes after the restart")
    etcd.ctl("put", key("watch"), record("10.0.0.3"))
    m.wait_keys({key("a"), key("after"), key("watch")}, "watch after the restart")


class Proxy:
    """A TCP proxy on 127.0.0.1 in front of etcd that can cut the network (a partition)."""

    def __init__(self, target_port: int) -> None:
        self.target_port = target_port
        self.open = True
        self.writers: set[asyncio.StreamWriter] = set()
        self.server: asyncio.Server | None = None
        self.port = 0

    async def start(self) -> "Proxy":
        self.server = await asyncio.start_server(self._client, "127.0.0.1", 0)
        self.port = self.server.sockets[0].getsockname()[1]
        return self

    async def _client(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if not self.open:
            writer.transport.abort()
            return
        try:
            up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.target_port)
        except OSError:
            writer.transport.abort()
            return
        self.writers |= {writer, up_writer}

        async def pump(src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
            try:
                while data := await src.read(65536):
                    dst.write(data)
                    await dst.drain()
            except (OSError, asyncio.CancelledError):
                pass
            finally:
                dst.transport.abort()

        await asyncio.gather(pump(reader, up_writer), pump(up_reader, writer))
        self.writers -= {writer, up_writer}

    async def cut(self) -> None:
        self.open = False
        for writer in list(self.writers):
            writer.transport.abort()

    async def heal(self) -> None:
        self.open = True

    async def close(self) -> None:
        await self.cut()
        self.server.close()


def test_deletes_while_partitioned_leave_no_stale_keys(etcd, mirror, loop_thread):
    put_many(loop_thread, etcd, {key(f"h{i}"): record(f"10.0.1.{i}") for i in range(20)})
    proxy = loop_thread.run(Proxy(etcd.client_port).start())
    try:
        m = mirror(etcd_endpoints=(f"127.0.0.1:{proxy.port}",))
        before = {key(f"h{i}") for i in range(20)}
        m.wait_keys(before, "initial load")
        loop_thread.run(proxy.cut())
        procs.wait_until(lambda: m.metrics.etcd_connected.value == 0, what="partition noticed")
        seen = len(m.updates)
        etcd.ctl("del", "--prefix", key("h1"))  # h1, h10..h19
        etcd.ctl("put", key("new"), record("10.0.2.1"))
        assert m.keys() == before  # still serving the last good data
        loop_thread.run(proxy.heal())
        m.wait_keys(etcd_keys(etcd), "relist after the partition")
        assert len(m.keys()) == 10  # h0, h2..h9 and new
        changes = [u.change for u in m.updates[seen:]]
        assert changes[0] is etcdwatch.Change.REPLACE and etcdwatch.Change.DELETE not in changes
    finally:
        loop_thread.run(proxy.close())


def test_frozen_etcd_is_detected(etcd, mirror):
    etcd.ctl("put", key("a"), record("10.0.0.1"))
    m = mirror()
    m.wait_keys({key("a")}, "initial load")
    # A frozen etcd never closes the TCP connection: only the watch probe can notice.
    etcd.proc.send_signal(signal.SIGSTOP)
    try:
        procs.wait_until(lambda: m.metrics.etcd_connected.value == 0, timeout=15,
                         what="hung watch detected")
        assert m.keys() == {key("a")}
    finally:
        etcd.proc.send_signal(signal.SIGCONT)
    etcd.ctl("put", key("b"), record("10.0.0.2"))
    m.wait_keys({key("a"), key("b")}, "caught up after the freeze")
    procs.wait_until(lambda: m.metrics.etcd_connected.value == 1, what="connected again")


def test_compaction_relists(etcd, mirror, caplog):
    caplog.set_level(logging.INFO, logger="skydns.etcdwatch")
    etcd.ctl("put", key("a"), record("10.0.0.1"))
    listed, resume = threading.Event(), threading.Event()

    def lag_after_first_list(update: etcdwatch.Update) -> None:
        if update.change is etcdwatch.Change.REPLACE and not listed.is_set():
            listed.set()
            resume.wait(15)  # the mirror is stuck between its list and its watch

    m = mirror(hook=lag_after_first_list)
    assert listed.wait(15)
    try:
        for i in range(5):
            etcd.ctl("put", key("b"), record(f"10.0.3.{i}"))
        etcd.ctl("del", key("a"))
        etcd.ctl("put", key("c"), record("10.0.4.1"))
        etcd.ctl("compact", str(etcd_revision(etcd)))
    finally:
        resume.set()
    m.wait_keys({key("b"), key("c")}, "relist after compaction")
    assert m.keys() == etcd_keys(etcd)
    assert [u.change for u in m.updates].count(etcdwatch.Change.REPLACE) == 2
    assert any("compacted, relisting" in r.getMessage() for r in caplog.records)
    assert m.metrics.etcd_watch_reconnects.value == 1
    assert m.metrics.etcd_connected.value == 1


@pytest.mark.parametrize("page", [1000, 100])  # 100: the rest comes in pages of 625 (about 8 more)
def test_large_prefix_loads(etcd, mirror, loop_thread, page):
    items = {key(f"n{i}.bulk"): record(f"10.{i // 65536}.{i // 256 % 256}.{i % 256}") for i in range(5000)}
    put_many(loop_thread, etcd, items)
    m = mirror(etcd_page_size=page)
    m.wait_keys(set(items), "5000 keys loaded")
    assert m.metrics.etcd_keys.value == 5000


def test_second_endpoint_is_used_when_the_first_is_down(etcd, mirror):
    etcd.ctl("put", key("a"), record("10.0.0.1"))
    dead = f"127.0.0.1:{procs.free_port()}"
    m = mirror(etcd_endpoints=(dead, etcd.endpoint))
    m.wait_keys({key("a")}, "load through the second endpoint")


def test_stop_while_etcd_is_unreachable(mirror):
    m = mirror(settings=settings_mod.Settings(etcd_endpoints=(f"127.0.0.1:{procs.free_port()}",),
                                              backoff=(0.05,), etcd_timeout=0.5))
    procs.wait_until(lambda: m.metrics.etcd_watch_reconnects.value >= 2, what="retries")
    assert not m.call(lambda: m.view.loaded)
    assert m.metrics.etcd_ready.value == 0
    m.stop()


# -- TLS -------------------------------------------------------------------------------------

def _openssl(*args: str, cwd) -> None:
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True, timeout=30)


def make_pki(directory) -> dict[str, str]:
    """A throw-away CA, a server certificate for 127.0.0.1 and a client certificate."""
    ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"]
    _openssl("req", "-x509", *ec, "-keyout", "ca.key", "-out", "ca.pem", "-days", "1",
             "-subj", "/CN=kube-skydns test CA", cwd=directory)
    for name, usage in (("server", "serverAuth"), ("client", "clientAuth")):
        _openssl("req", *ec, "-keyout", f"{name}.key", "-out", f"{name}.csr", "-subj", f"/CN={name}",
                 cwd=directory)
        ext = os.path.join(directory, f"{name}.ext")
        with open(ext, "w") as fh:
            fh.write(f"subjectAltName=IP:127.0.0.1\nextendedKeyUsage={usage}\n")
        _openssl("x509", "-req", "-in", f"{name}.csr", "-CA", "ca.pem", "-CAkey", "ca.key",
                 "-CAcreateserial", "-out", f"{name}.pem", "-days", "1", "-extfile", ext, cwd=directory)
    return {name: os.path.join(directory, name) for name in
            ("ca.pem", "server.pem", "server.key", "client.pem", "client.key")}


@pytest.fixture
def tls_etcd(tmp_path):
    """A real etcd serving clients over TLS with client-certificate auth; yields (endpoint, ctl, pki)."""
    if shutil.which("openssl") is None:
        pytest.skip("openssl not installed")
    pki = make_pki(str(tmp_path))
    port, peer = procs.free_port(), procs.free_port()
    url = f"https://127.0.0.1:{port}"
    log = open(tmp_path / "etcd.log", "wb")  # noqa: SIM115 - closed below
    proc = subprocess.Popen([
        "etcd", "--name", "tls", "--data-dir", str(tmp_path / "data"),
        "--listen-client-urls", url, "--advertise-client-urls", url,
        "--listen-peer-urls", f"http://127.0.0.1:{peer}",
        "--initial-advertise-peer-urls", f"http://127.0.0.1:{peer}",
        "--initial-cluster", f"tls=http://127.0.0.1:{peer}",
        "--cert-file", pki["server.pem"], "--key-file", pki["server.key"],
        "--trusted-ca-file", pki["ca.pem"], "--client-cert-auth",
    ], stdout=log, stderr=subprocess.STDOUT)

    def ctl(*args: str) -> str:
        return subprocess.run(
            ["etcdctl", "--endpoints", url, "--cacert", pki["ca.pem"], "--cert", pki["client.pem"],
             "--key", pki["client.key"], *args],
            capture_output=True, check=True, timeout=20, env=dict(os.environ, ETCDCTL_API="3"),
        ).stdout.decode()

    try:
        procs.wait_until(lambda: ctl("put", "/tls-probe", "ok"), timeout=20, what="TLS etcd")
        yield f"127.0.0.1:{port}", ctl, pki
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)
        log.close()


def test_tls_with_client_certificate(tls_etcd, mirror):
    endpoint, ctl, pki = tls_etcd
    ctl("put", key("secure"), record("10.0.9.1"))
    base = settings_mod.Settings(etcd_endpoints=(endpoint,), backoff=(0.05,), etcd_timeout=1.0,
                                 etcd_watch_check=0.5)
    m = mirror(settings=dataclasses.replace(base, etcd_ca_cert=pki["ca.pem"], etcd_tls_pem=pki["client.pem"],
                                            etcd_tls_key=pki["client.key"]))
    m.wait_keys({key("secure")}, "load over TLS")
    ctl("put", key("secure2"), record("10.0.9.2"))
    m.wait_keys({key("secure"), key("secure2")}, "watch over TLS")
    # Without a client certificate the server refuses us: retried, never loaded.
    refused = mirror(settings=dataclasses.replace(base, etcd_ca_cert=pki["ca.pem"]))
    procs.wait_until(lambda: refused.metrics.etcd_watch_reconnects.value >= 2, what="refused retries")
    assert not refused.call(lambda: refused.view.loaded)
