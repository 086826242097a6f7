"""healthz app: wiring and lifecycle.

EDGE. Rules:
1. run(settings) is the only entry: asyncio.run(main(settings)); it returns the exit code
   (0 after SIGTERM/SIGINT, 1 when a root task died or the port cannot be bound).
2. Root tasks: one probe loop per check. A root task that returns or raises is a bug: it
   is logged and the process exits 1 so the kubelet restarts it.
3. Shutdown is one path: a signal sets the stop event; the HTTP server closes first (no
   new connections), then the probe tasks are cancelled within GRACE seconds.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import sys

from healthz import probing, serving
from healthz import settings as settings_

logger = logging.getLogger(__name__)

# Seconds to wait for cancelled probe tasks (a killed command) at shutdown.
GRACE = 5.0


def configure_logging(config: settings_.Settings) -> None:
    logging.basicConfig(
        level=logging.WARNING if config.quiet else logging.INFO, stream=sys.stderr,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s")


def run(config: settings_.Settings) -> int:
    """Run healthz until SIGTERM/SIGINT; returns the process exit code."""
    configure_logging(config)
    try:
        return asyncio.run(main(config))
    except KeyboardInterrupt:
        return 0


async def main(config: settings_.Settings, stop: asyncio.Event | None = None,
               ready: asyncio.Future[int] | None = None) -> int:
    """Serve and probe until `stop` is set (or a signal arrives).

    `ready`, when given, receives the bound HTTP port once the server listens (tests).
    """
    stop = stop or asyncio.Event()
    loop = asyncio.get_running_loop()
    installed = []
    for signum in (signal.SIGTERM, signal.SIGINT):
        with contextlib.suppress(NotImplementedError, RuntimeError, ValueError):
            loop.add_signal_handler(signum, stop.set)
            installed.append(signum)
    metrics = probing.Metrics()
    board = probing.Board(config, metrics)
    server = serving.Server(config, lambda: board.tracks, board.started, metrics.registry,
                            before_scrape=board.refresh)
    try:
        await server.start()
    except OSError as exc:
        logger.error("healthz: cannot listen on %s:%s: %s (choose another -port/--address)",
                     config.address, config.port, exc)
        if ready is not None and not ready.done():
            ready.set_exception(exc)
        return 1
    logger.info("healthz: serving on %s:%s, checks: %s, period %gs, latency %gs",
                config.address, server.port, ", ".join(c.name for c in config.checks),
                config.period, config.latency)
    if ready is not None and not ready.done():
        ready.set_result(server.port)
    tasks = [asyncio.create_task(probing.keep_probing(check, board), name=f"probe {check.name}")
             for check in config.checks]
    stopper = asyncio.create_task(stop.wait(), name="stop")
    code = 0
    try:
        done, _ = await asyncio.wait([stopper, *tasks], return_when=asyncio.FIRST_COMPLETED)
        for task in done:
            if task is stopper:
                continue
            code = 1
            if task.cancelled():
                logger.error("healthz: root task %s was cancelled", task.get_name())
            elif task.exception() is not None:
                logger.error("healthz: root task %s failed", task.get_name(), exc_info=task.exception())
            else:
                logger.error("healthz: root task %s returned", task.get_name())
        if code == 0:
            logger.info("healthz: stopping")
    finally:
        await server.close()
        for task in (stopper, *tasks):
            task.cancel()
        await asyncio.wait([stopper, *tasks], timeout=GRACE)
        for signum in installed:
            with contextlib.suppress(Exception):
                loop.remove_signal_handler(signum)
    return code
