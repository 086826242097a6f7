"""The etcd mirror against a real etcd: list, watch, bad values, restarts, compaction, size.

The mirror runs in its own thread with its own event loop (as in the daemon); the test
thread drives etcd with etcdctl and polls the view through that loop, so every read of the
view happens on the thread that writes it. Nothing here asserts a duration: changes are
awaited with wait_until.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import logging
import random
import signal
import threading

import aetcd
import pytest

from skydns import etcdwatch
from skydns import settings as settings_mod
from tests import procs

pytestmark = pytest.mark.integration

try:
    from skydns import store as store_mod
except ImportError:  # the CORE helper's store is not in the tree yet
    store_mod = None


class StandInStore:
    """The Store interface (replace/put/delete/revision/generation/loaded/bad/len) over a dict."""

    def __init__(self, prefix: str = "skydns") -> None:
        self.prefix = prefix
        self.records: dict[str, dict] = {}
        self.bad: dict[str, str] = {}
        self.revision = 0
        self.generation = 0
        self.loaded = False

    def _decode(self, key: str, value: bytes) -> dict | None:
        try:
            record = json.loads(value)
            if not isinstance(record, dict):
                raise ValueError("not an object")
        except ValueError as exc:
            self.bad[key] = str(exc)
            return None
        self.bad.pop(key, None)
        return record

    def replace(self, items, revision: int) -> None:
        self.records, self.bad = {}, {}
        for key, value in items:
            record = self._decode(key, value)
            if record is not None:
                self.records[key] = record
        self.revision, self.loaded = revision, True
        self.generation += 1

    def put(self, key: str, value: bytes, revision: int) -> bool:
        record = self._decode(key, value)
        if record is None:
            self.records.pop(key, None)
        else:
            self.records[key] = record
        self.revision = revision
        self.generation += 1
        return record is not None

    def delete(self, key: str, revision: int) -> None:
        self.records.pop(key, None)
        self.bad.pop(key, None)
        self.revision = revision
        self.generation += 1

    def __len__(self) -> int:
        return len(self.records)


def new_view():
    return store_mod.Store() if store_mod is not None else StandInStore()


def view_keys(view) -> set[str]:
    """The etcd keys of the good records in the view."""
    if isinstance(view, StandInStore):
        return set(view.records)
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
        self.view = view if view is not None else new_view()
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
                task.print_stack(file=out)
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
def mirror(etcd, loop_thread):
    started: list[Mirror] = []

    def start(hook=None, settings=None, **overrides) -> Mirror:
        m = Mirror(loop_thread, settings or settings_for(etcd, **overrides), hook).start()
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


def test_deletes_while_disconnected_leave_no_stale_keys(etcd, mirror, loop_thread):
    put_many(loop_thread, etcd, {key(f"h{i}"): record(f"10.0.1.{i}") for i in range(20)})
    m = mirror()
    m.wait_keys({key(f"h{i}") for i in range(20)}, "initial load")
    # Freeze etcd so the open watch hangs (no FIN, no RST), then change etcd behind it.
    etcd.proc.send_signal(signal.SIGSTOP)
    try:
        procs.wait_until(lambda: m.metrics.etcd_connected.value == 0, timeout=15,
                         what="hung watch detected")
    finally:
        etcd.proc.send_signal(signal.SIGCONT)
    etcd.ctl("del", "--prefix", key("h1"))  # h1, h10..h19
    etcd.ctl("put", key("new"), record("10.0.2.1"))
    m.wait_keys(etcd_keys(etcd), "relist after the hang")
    assert len(m.keys()) == 10


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


def test_large_prefix_loads(etcd, mirror, loop_thread):
    items = {key(f"n{i}.bulk"): record(f"10.{i // 65536}.{i // 256 % 256}.{i % 256}") for i in range(5000)}
    put_many(loop_thread, etcd, items)
    m = mirror(etcd_page_size=1000)
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
