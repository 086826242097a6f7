"""`make run` (scripts/run_local.py) as a test fixture: started on a free DNS port, its output
collected, stopped with SIGINT like Ctrl-C.

Rules:
1. ``LocalRun(*args, env=...)`` starts ``python scripts/run_local.py --dns-port <free> *args``
   with KUBECONFIG removed unless given in env; stdout and stderr are read line by line into
   ``lines`` by a thread (the pipe never fills up).
2. ``wait_banner()`` waits for "Ctrl-C stops everything" and parses the lines the banner tells
   a user to paste: ``exports`` (ETCDCTL_API, ETCDCTL_ENDPOINTS) and ``activate`` (the
   virtualenv's activate script).
3. ``stop()`` sends SIGINT, waits (killing on a hang) and returns the exit code; every stack a
   test starts is stopped by it.
"""

from __future__ import annotations

import os
import pathlib
import re
import signal
import subprocess
import sys
import threading

from tests import procs

ROOT = pathlib.Path(__file__).resolve().parent.parent
BANNER_END = "Ctrl-C stops everything"


class LocalRun:
    def __init__(self, *args: str, env: dict[str, str] | None = None) -> None:
        self.port = procs.free_port()
        base = {k: v for k, v in os.environ.items() if k not in ("KUBECONFIG", "ETCDCTL_ENDPOINTS", "ETCDCTL_API")}
        self.proc = subprocess.Popen(
            [sys.executable, str(ROOT / "scripts" / "run_local.py"), "--dns-port", str(self.port), *args],
            cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env={**base, **(env or {})})
        self.lines: list[str] = []
        self.banner = threading.Event()
        self.reader = threading.Thread(target=self._read, daemon=True)
        self.reader.start()
        self.exports: dict[str, str] = {}
        self.activate = ""

    def _read(self) -> None:
        for line in self.proc.stdout:
            self.lines.append(line)
            if BANNER_END in line:
                self.banner.set()

    @property
    def output(self) -> str:
        return "".join(self.lines)

    def wait_banner(self, timeout: float = 60) -> None:
        if not self.banner.wait(timeout * procs.TIMEOUT_SCALE):
            raise AssertionError("no banner; output:\n" + "".join(self.lines[-60:]))
        text = self.output
        match = re.search(r"^\s*export (ETCDCTL_API=\S+) (ETCDCTL_ENDPOINTS=\S+)\s*$", text, re.M)
        assert match, text
        self.exports = dict(item.split("=", 1) for item in match.groups())
        match = re.search(r"^\s*\. (\S+/activate)\s*$", text, re.M)
        assert match, text
        self.activate = match.group(1)

    def stop(self) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
        try:
            code = self.proc.wait(60 * procs.TIMEOUT_SCALE)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            code = self.proc.wait()
        self.reader.join(5)
        return code
