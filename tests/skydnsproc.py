"""A real ``python -m skydns`` process for integration tests, on free loopback ports.

Rules:
1. One way to start skydns in tests: ``Skydns(etcd_url, *extra, ...)`` or the ``running(...)``
   context manager. Base flags are -addr, -machines, -domain, --http-addr and, unless turned off
   with None, -nameservers= (no forwarding) and --lameduck=0; a prefix adds -path-prefix. The
   caller's extra flags come last, so they win over the base ones.
2. The environment is scrubbed of SKYDNS_* and ETCD_* variables: only the flags configure it.
3. stdout and stderr go to a log file (never a pipe that can fill up); log() reads it. Without a
   log_path a temporary file is used and removed by stop(), which keeps its text for log().
4. stop() sends a signal (SIGTERM by default), waits, kills if it hangs, and returns the exit
   code; it can be called more than once; close() stops and returns the log. Every process
   started here is stopped by its test.
"""

from __future__ import annotations

import contextlib
import os
import re
import signal
import subprocess
import sys
import tempfile
import urllib.error
import urllib.request

import dns.message
import dns.query

from tests import procs

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
NAME = "web.default.svc.cluster.local."


def addrs(reply: dns.message.Message) -> list[str]:
    """The sorted A addresses of a reply's answer section."""
    return sorted(rr.to_text() for rrset in reply.answer for rr in rrset if rrset.rdtype == 1)


def key(prefix: str, name: str = NAME) -> str:
    """The etcd key of a name under /prefix (reversed labels)."""
    return "/" + prefix + "/" + "/".join(reversed(name.rstrip(".").split(".")))


def scrubbed_env() -> dict[str, str]:
    """os.environ without SKYDNS_* and ETCD_* variables."""
    return {k: v for k, v in os.environ.items() if not k.startswith(("SKYDNS_", "ETCD_"))}


class Skydns:
    """A skydns process on free loopback ports (or the given DNS port)."""

    def __init__(self, etcd_url: str, *extra: str, prefix: str | None = None, domain: str = "cluster.local.",
                 port: int | None = None, nameservers: str | None = "", lameduck: str | None = "0",
                 log_path: str | os.PathLike | None = None, timeout: float = 2.0) -> None:
        self.port = port or procs.free_port()
        self.http_port = procs.free_port()
        self.timeout = timeout
        args = [sys.executable, "-m", "skydns", f"-addr=127.0.0.1:{self.port}", f"-machines={etcd_url}",
                f"-domain={domain}"]
        if prefix is not None:
            args.append(f"-path-prefix={prefix}")
        if nameservers is not None:
            args.append(f"-nameservers={nameservers}")
        if lameduck is not None:
            args.append(f"--lameduck={lameduck}")
        self.args = [*args, f"--http-addr=127.0.0.1:{self.http_port}", *extra]
        self._own_log = log_path is None
        if log_path is None:
            fd, log_path = tempfile.mkstemp(prefix="kube-skydns-test-", suffix=".log")
            os.close(fd)
        self.log_path = str(log_path)
        self._final_log: str | None = None
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(self.args, stdout=log, stderr=subprocess.STDOUT, env=scrubbed_env(),
                                         cwd=ROOT)

    def log(self) -> str:
        if self._final_log is not None:
            return self._final_log
        with open(self.log_path, encoding="utf-8", errors="replace") as fh:
            return fh.read()

    def alive(self) -> bool:
        return self.proc.poll() is None

    def http(self, path: str) -> tuple[int, str]:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.http_port}{path}", timeout=self.timeout) as resp:
                return resp.status, resp.read().decode()
        except urllib.error.HTTPError as exc:
            return exc.code, exc.read().decode()

    def _check_alive(self) -> None:
        if not self.alive():
            raise AssertionError(f"skydns exited {self.proc.returncode}: {self.log()[-3000:]}")

    def wait_ready(self, ok=lambda status, body: status == 200, timeout: float = 20,
                   what: str = "skydns /ready") -> None:
        """Poll /ready until ok(status, body); fail at once (with the log) if the process exits."""
        def ready() -> bool:
            self._check_alive()
            return ok(*self.http("/ready"))
        procs.wait_until(ready, timeout=timeout, what=what)

    def wait_serving(self, timeout: float = 20) -> None:
        """Poll /health until 200 (the process is up, even if etcd is not loaded yet)."""
        def serving() -> bool:
            self._check_alive()
            return self.http("/health")[0] == 200
        procs.wait_until(serving, timeout=timeout, what="skydns /health")

    def query(self, name: str = NAME, rdtype: str = "A", proto: str = "udp", rdclass: str = "IN",
              **kw) -> dns.message.Message:
        q = dns.message.make_query(name, rdtype, rdclass, **kw)
        if proto == "udp":
            return dns.query.udp(q, "127.0.0.1", port=self.port, timeout=self.timeout)
        return dns.query.tcp(q, "127.0.0.1", port=self.port, timeout=self.timeout)

    def udp(self, name: str = NAME, rdtype: str = "A", **kw) -> dns.message.Message:
        return self.query(name, rdtype, "udp", **kw)

    def tcp(self, name: str = NAME, rdtype: str = "A", **kw) -> dns.message.Message:
        return self.query(name, rdtype, "tcp", **kw)

    def metric(self, name: str, **labels: str) -> float:
        """Sum of the samples of metric name whose labels include labels."""
        total = 0.0
        for line in self.http("/metrics")[1].splitlines():
            match = re.match(r"^([a-z_]+)(?:\{(.*)\})? (\S+)$", line)
            if not match or match.group(1) != name:
                continue
            have = dict(re.findall(r'(\w+)="([^"]*)"', match.group(2) or ""))
            if all(have.get(k) == v for k, v in labels.items()):
                total += float(match.group(3))
        return total

    def stop(self, sig: int = signal.SIGTERM) -> int:
        """Signal the process, wait (kill if it hangs) and return its exit code."""
        if self.alive():
            self.proc.send_signal(sig)
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        if self._own_log and self._final_log is None:
            self._final_log = self.log()
            with contextlib.suppress(OSError):
                os.unlink(self.log_path)
        return self.proc.returncode

    def close(self) -> str:
        """stop() it and return everything it logged."""
        self.stop()
        return self.log()


@contextlib.contextmanager
def running(etcd_url: str, *extra: str, ready: bool = True, **kw):
    """A started skydns, waited for /ready (or only /health with ready=False), stopped at the end."""
    server = Skydns(etcd_url, *extra, **kw)
    try:
        if ready:
            server.wait_ready()
        else:
            server.wait_serving()
        yield server
    finally:
        server.stop()
