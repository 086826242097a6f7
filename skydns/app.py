"""skydns wiring and lifecycle: store + etcd mirror + forwarder + DNS transport + HTTP.

Rules:
1. ``run(settings)`` binds every listening socket before the event loop starts. A listen
   address in use (or any other broken configuration found at start) ends the process at
   once with exit code 1 and one line on stderr saying what to fix.
2. Root tasks: the etcd mirror (and, in the parent of --workers N, the watcher of the worker
   processes). A root task that returns or raises before a stop was asked for is a bug: it is
   logged and the process exits non-zero.
3. One stop path for SIGTERM and SIGINT: /ready turns 503 "shutting down", DNS keeps being
   answered for settings.lameduck seconds (a second signal cuts it short), then the
   listeners close, the mirror stops and the process exits 0.
4. etcd unreachable at start is not fatal: the mirror keeps retrying, /ready says
   "etcd: not loaded yet", and names outside our zones are still forwarded.
5. --workers N: the first process binds the port with SO_REUSEPORT, then spawns N-1 workers
   that bind their own sockets on the same port once their own mirror is loaded. Only the first
   process serves HTTP, so /metrics counts its own queries; workers stop when it stops.
6. The cyclic garbage collector: after every load of the mirror, one full collection and
   ``gc.freeze()`` (what is alive then is never walked again: later collections only see
   what came after), and young collections every GC_THRESHOLDS[0] allocations instead of 700.
   The answer path makes many tuples and lists but no cycles (refcounting frees them), and the
   collections they set off took a fifth of a cold answer of 100 SRV targets; what cyclic
   garbage there is (tracebacks, the forwarder's futures) waits a little longer.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import multiprocessing
import multiprocessing.process
import os
import signal
import socket
import sys
import time

from skydns import etcdwatch, forwarding, httpserver, metrics, settings as settings_mod, store, transport

logger = logging.getLogger(__name__)

# The collector's thresholds in a serving process (rule 6; Python's default is 700, 10, 10).
GC_THRESHOLDS = (10_000, 20, 20)
# Time allowed to the tasks and listeners to finish after the stop, seconds.
STOP_GRACE = 5.0
# How often the first process checks on its workers, seconds.
WORKER_CHECK = 0.5


class State:
    """What /ready reports; shared by the HTTP server and the lifecycle."""

    def __init__(self, view: store.Store, forwarder: forwarding.Forwarder | None) -> None:
        self.view = view
        self.forwarder = forwarder
        self.stopping = False

    def not_ready(self) -> str:
        """"" when ready, else the reason (the /ready 503 body)."""
        if self.stopping:
            return "shutting down"
        if not self.view.loaded:
            return "etcd: not loaded yet"
        if self.forwarder is not None:
            ok, reason = self.forwarder.ready()
            if not ok:
                return f"forward: {reason}"
        return ""


def _setup_logging(level: str) -> None:
    logging.basicConfig(
        level=getattr(logging, level.upper(), logging.INFO),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )


def _fail(text: str, code: int = 1) -> None:
    print(f"skydns: error: {text}", file=sys.stderr, flush=True)
    raise SystemExit(code)


def _loop_factory():
    try:
        import uvloop  # noqa: PLC0415 - optional
    except ImportError:  # pragma: no cover - uvloop is a dependency on Linux
        return asyncio.new_event_loop
    return uvloop.new_event_loop


def run(settings: settings_mod.Settings) -> None:
    """Serve until SIGTERM/SIGINT, then exit: 0 after a clean stop, 1 on a failure."""
    _setup_logging(settings.log_level)
    reuseport = settings.workers > 1
    try:
        udp, tcp = transport.bind(settings.addr_host, settings.addr_port, reuseport=reuseport,
                                  rcvbuf=settings.udp_rcvbuf)
        http_sock = httpserver.bind(settings.http_host, settings.http_port) if settings.http_port >= 0 else None
        forwarder = forwarding.Forwarder(settings)
    except (transport.ListenError, httpserver.ListenError, ValueError, OSError) as exc:
        _fail(str(exc))
        return
    children: list[multiprocessing.process.BaseProcess] = []
    if settings.workers > 1:
        # spawn, not fork: a forked copy of a process that imported grpc can hang at exit
        context = multiprocessing.get_context("spawn")
        port = udp.getsockname()[1]
        for number in range(1, settings.workers):
            child = context.Process(target=_worker, args=(settings, port, number), name=f"skydns-worker-{number}")
            child.start()
            children.append(child)
    code = _run_loop(settings, udp, tcp, http_sock, forwarder, children, 0)
    if code:
        raise SystemExit(code)


def _worker(settings: settings_mod.Settings, port: int, number: int) -> None:
    """A worker process: its own sockets on the first process's port, its own mirror, no HTTP."""
    _setup_logging(settings.log_level)
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the first process stops us with SIGTERM
    code = _run_loop(settings, None, None, None, forwarding.Forwarder(settings), [], number, port)
    raise SystemExit(code)


def _run_loop(settings: settings_mod.Settings, udp: socket.socket | None, tcp: socket.socket | None,
              http_sock: socket.socket | None, forwarder: forwarding.Forwarder,
              children: list[multiprocessing.process.BaseProcess], worker: int, port: int = 0) -> int:
    with asyncio.Runner(loop_factory=_loop_factory()) as runner:
        return runner.run(main(settings, udp, tcp, http_sock, forwarder, children, worker, port))


async def _watch_children(children: list[multiprocessing.process.BaseProcess]) -> None:
    """Raise when a worker process has exited (a failure: we are not stopping yet)."""
    while True:
        for child in children:
            if not child.is_alive():
                children.remove(child)
                raise RuntimeError(f"worker process {child.pid} exited with code {child.exitcode}")
        await asyncio.sleep(WORKER_CHECK)


async def _stop_children(children: list[multiprocessing.process.BaseProcess]) -> None:
    for child in children:
        if child.is_alive():
            child.terminate()  # SIGTERM: the worker's own stop path
    deadline = time.monotonic() + STOP_GRACE + 1.0
    while any(c.is_alive() for c in children) and time.monotonic() < deadline:
        await asyncio.sleep(0.05)
    for child in children:
        if child.is_alive():
            logger.warning("worker process %s did not stop; killing it", child.pid)
            child.kill()
        child.join(1.0)


async def _serve_when_loaded(settings: settings_mod.Settings, view: store.Store, port: int,
                             dns_servers: list[transport.Server], handler: transport.Handler,
                             stop: asyncio.Event) -> None:
    """A worker joins the shared port only once its own mirror is loaded (until then the
    kernel would hand it queries it could only answer SERVFAIL). Then waits for the stop."""
    while not view.loaded:
        if stop.is_set():
            return
        await asyncio.sleep(0.05)
    udp, tcp = transport.bind(settings.addr_host, port, reuseport=True, rcvbuf=settings.udp_rcvbuf)
    server = _dns_server(settings, handler, udp, tcp)
    dns_servers.append(server)
    await server.start()
    await stop.wait()


def _settle_after_load(update: etcdwatch.Update) -> None:
    """Rule 6: after a load of the mirror, collect once and freeze what is alive."""
    if update.change is etcdwatch.Change.REPLACE:
        gc.collect()
        gc.freeze()


def _dns_server(settings: settings_mod.Settings, handler: transport.Handler,
                udp: socket.socket, tcp: socket.socket) -> transport.Server:
    return transport.Server(handler, udp, tcp, idle_timeout=settings.tcp_idle_timeout,
                            max_connections=settings.tcp_max_connections, udp_batch=settings.udp_batch,
                            compiled_hits=settings.compiled_hits)


async def main(settings: settings_mod.Settings, udp: socket.socket | None, tcp: socket.socket | None,
               http_sock: socket.socket | None, forwarder: forwarding.Forwarder,
               children: list[multiprocessing.process.BaseProcess] | None = None, worker: int = 0,
               port: int = 0) -> int:
    """Serve until a signal (returns 0) or a root task failure (returns 1).

    udp/tcp None (a worker): bind them on port once the mirror is loaded.
    """
    children = children if children is not None else []
    loop = asyncio.get_running_loop()
    view = store.Store(settings.prefix)
    state = State(view, forwarder)
    handler = transport.Handler(settings, view, forwarder, cache_size=settings.answer_cache_size,
                                cache_bytes=settings.answer_cache_mib << 20)
    dns_servers = [] if udp is None or tcp is None else [_dns_server(settings, handler, udp, tcp)]
    http = httpserver.HttpServer(http_sock, state.not_ready) if http_sock is not None else None
    metrics.build_info.labels(metrics.VERSION).set(1)

    signalled = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, signalled.set)
    stop = asyncio.Event()

    try:
        for dns_server in dns_servers:
            await dns_server.start()
        await forwarder.start()
        if http is not None:
            await http.start()
    except Exception as exc:  # noqa: BLE001 - a start-up failure is one line, not a traceback
        print(f"skydns: error: cannot start: {exc}", file=sys.stderr, flush=True)
        logger.debug("start-up failed", exc_info=True)
        for dns_server in dns_servers:
            await dns_server.close()
        await _stop_children(children)
        return 1
    gc.set_threshold(*GC_THRESHOLDS)
    roots = [asyncio.create_task(etcdwatch.run(settings, view, stop, _settle_after_load), name="etcd mirror")]
    if children:
        roots.append(asyncio.create_task(_watch_children(children), name="worker watch"))
    if not dns_servers:
        roots.append(asyncio.create_task(_serve_when_loaded(settings, view, port, dns_servers, handler, stop),
                                         name="dns listener"))
    signal_task = asyncio.create_task(signalled.wait(), name="signal")
    logger.info("skydns %s started (worker %d, pid %d): zones %s, etcd %s, prefix /%s",
                metrics.VERSION, worker, os.getpid(), ",".join(settings.domains),
                ",".join(settings.etcd_endpoints), settings.prefix)

    code = 0
    done, _ = await asyncio.wait([*roots, signal_task], return_when=asyncio.FIRST_COMPLETED)
    if signal_task not in done:
        code = 1
        for task in done:
            exc = task.exception() if not task.cancelled() else None
            if isinstance(exc, etcdwatch.ConfigError):
                print(f"skydns: error: {exc}", file=sys.stderr, flush=True)
            logger.error("root task %r ended (%s); stopping", task.get_name(),
                         f"{type(exc).__name__}: {exc}" if exc else "returned, which is a bug")
    else:
        state.stopping = True
        if settings.lameduck > 0:
            logger.info("stopping: lameduck for %ss (/ready is 503, DNS still answered)", settings.lameduck)
            signalled.clear()
            with contextlib.suppress(TimeoutError, asyncio.TimeoutError):
                await asyncio.wait_for(signalled.wait(), settings.lameduck)
        logger.info("stopping")
    state.stopping = True

    stop.set()
    if children:
        await _stop_children(children)
    for dns_server in dns_servers:
        await dns_server.close()
    if http is not None:
        await http.close()
    with contextlib.suppress(Exception):
        await forwarder.close()
    signal_task.cancel()
    pending = [t for t in roots if not t.done()]
    if pending:
        _, still = await asyncio.wait(pending, timeout=STOP_GRACE)
        for task in still:
            task.cancel()
        await asyncio.gather(*pending, return_exceptions=True)
    logger.info("stopped")
    return code
