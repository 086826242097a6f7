"""Shared fixtures (real etcd servers on loopback), the skip allow-list, the timeout's cleanup."""

from __future__ import annotations

import asyncio
import gc
import io
import os
import signal
import threading

import pytest

from tests import procs, skipaudit

# The only reasons a test may skip (regular expressions, searched in the skip reason), each
# with why. Any other skip fails the final test `skip-audit` (tests/skipaudit.py): CI is a
# clean Debian/Ubuntu machine, running as root, after scripts/install-deps.sh, so a skip there
# is lost coverage. Add a reason only for a test that cannot run on such a machine.
ALLOWED_SKIPS = {
    r"^KUBECONFIG is not set": "tests/e2e: the real-cluster backend needs a cluster (the double runs always)",
}


def pytest_configure(config: pytest.Config) -> None:
    skipaudit.register(config, ALLOWED_SKIPS)


@pytest.fixture
def etcd():
    """A fresh etcd for one test (stopped and removed afterwards)."""
    with procs.running_etcd() as server:
        yield server


@pytest.fixture(scope="session")
def shared_etcd():
    """One etcd for a whole session; tests must use their own key prefix."""
    with procs.running_etcd() as server:
        yield server


# ---- per-test timeout (setup.cfg: timeout, timeout_method = thread) -----------------------

def descendants(pid: int) -> list[int]:
    """Every live process below pid (children first), read from /proc."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat", "rb") as fh:
                stat = fh.read()
        except OSError:
            continue
        ppid = int(stat.rsplit(b")", 1)[1].split()[1])
        children.setdefault(ppid, []).append(int(entry))
    found, todo = [], [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            found.append(child)
            todo.append(child)
    return found


def asyncio_stacks() -> str:
    """The stack of every task of every running event loop (a hung await shows where it waits)."""
    out = io.StringIO()
    for loop in [o for o in gc.get_objects() if isinstance(o, asyncio.AbstractEventLoop)]:
        if not loop.is_running():
            continue
        try:
            tasks = list(asyncio.all_tasks(loop))
        except RuntimeError:  # the set changed under us: this is a diagnostic, go on
            continue
        for task in tasks:
            out.write(f"--- asyncio task {task.get_name()} ({task.get_coro()!r})\n")
            task.print_stack(file=out)
    return out.getvalue() or "(no running asyncio event loop)"


@pytest.hookimpl(tryfirst=True, optionalhook=True)
def pytest_timeout_set_timer(item: pytest.Item, settings) -> bool | None:
    """pytest-timeout's thread method, which ends the run with os._exit(1) and so runs no
    teardown: kill the processes the hung test started (etcd, skydns, ...) before it does."""
    if settings.method != "thread":
        return None
    import pytest_timeout  # noqa: PLC0415 - present whenever this hook is called

    def expire() -> None:
        killed = descendants(os.getpid())
        for pid in killed:
            try:
                os.kill(pid, signal.SIGKILL)
            except OSError:
                pass
        capman = item.config.pluginmanager.getplugin("capturemanager")
        if capman is not None:
            capman.suspend_global_capture()
        terminal = item.config.get_terminal_writer()
        terminal.line(
            f"\nTIMEOUT: {item.nodeid} ran longer than {settings.timeout:g} s; killed its {len(killed)} "
            "child process(es); the stacks of its asyncio tasks and of every thread follow, then the "
            "run ends (exit 1)")
        terminal.line(asyncio_stacks())
        pytest_timeout.timeout_timer(item, settings)

    timer = threading.Timer(settings.timeout, expire)
    timer.name = f"timeout {item.nodeid}"
    timer.daemon = True

    def cancel() -> None:
        timer.cancel()
        timer.join()

    item.cancel_timeout = cancel  # what pytest-timeout's cancel hook calls
    timer.start()
    return True
