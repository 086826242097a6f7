"""Real processes for tests: an etcd binary on free loopback ports, started and stopped by the test."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
import urllib.request


def free_port(kind: int = socket.SOCK_STREAM, host: str = "127.0.0.1") -> int:
    """A port that is free on host for TCP (and, checked, for UDP too)."""
    for _ in range(50):
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as tcp:
            tcp.bind((host, 0))
            port = tcp.getsockname()[1]
            try:
                with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as udp:
                    udp.bind((host, port))
            except OSError:
                continue
            return port
    raise RuntimeError("no free port")


# Every wait is stretched by this factor: a loaded machine (CI, a laptop running other work)
# must never turn a slow start into a failure. Tests never fail on timing, only on a timeout.
TIMEOUT_SCALE = float(os.environ.get("KUBE_SKYDNS_TEST_TIMEOUT_SCALE", "3"))


def wait_until(check, timeout: float = 10.0, interval: float = 0.02, what: str = "condition"):
    """Poll check() until it returns a truthy value; return it, or raise TimeoutError.

    timeout (seconds) is multiplied by TIMEOUT_SCALE.
    """
    timeout *= TIMEOUT_SCALE
    deadline = time.monotonic() + timeout
    last_exc: Exception | None = None
    while time.monotonic() < deadline:
        try:
            value = check()
            if value:
                return value
        except Exception as exc:  # noqa: BLE001 - polled checks may fail until ready
            last_exc = exc
        time.sleep(interval)
    raise TimeoutError(f"timed out waiting for {what}" + (f": {last_exc!r}" if last_exc else ""))


class Etcd:
    """A real etcd server on 127.0.0.1 with a temporary data dir."""

    def __init__(self, data_dir: str | None = None, client_port: int | None = None) -> None:
        if shutil.which("etcd") is None:
            raise RuntimeError("etcd binary not found: run scripts/install-deps.sh (Debian package etcd-server)")
        self._own_dir = data_dir is None
        self.data_dir = data_dir or tempfile.mkdtemp(prefix="kube-skydns-etcd-")
        self.client_port = client_port or free_port()
        self.peer_port = free_port()
        self.proc: subprocess.Popen | None = None
        self.log_path = os.path.join(self.data_dir, "etcd.log")

    @property
    def endpoint(self) -> str:
        return f"127.0.0.1:{self.client_port}"

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.client_port}"

    def start(self, timeout: float = 20.0) -> "Etcd":
        member_dir = os.path.join(self.data_dir, "member-data")
        args = [
            "etcd", "--name", "test", "--data-dir", member_dir,
            "--listen-client-urls", self.url, "--advertise-client-urls", self.url,
            "--listen-peer-urls", f"http://127.0.0.1:{self.peer_port}",
            "--initial-advertise-peer-urls", f"http://127.0.0.1:{self.peer_port}",
            "--initial-cluster", f"test=http://127.0.0.1:{self.peer_port}",
            "--max-txn-ops", "1024",
        ]
        log = open(self.log_path, "ab")  # noqa: SIM115 - kept open for the process lifetime
        env = dict(os.environ, ETCD_UNSUPPORTED_ARCH=os.environ.get("ETCD_UNSUPPORTED_ARCH", ""))
        self.proc = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT, env=env)
        log.close()
        wait_until(self.healthy, timeout=timeout, what=f"etcd on {self.url}")
        return self

    def healthy(self) -> bool:
        if self.proc is None or self.proc.poll() is not None:
            raise RuntimeError(f"etcd exited; log: {self.log_tail()}")
        try:
            with urllib.request.urlopen(self.url + "/health", timeout=1) as resp:
                return b"true" in resp.read()
        except OSError:
            return False

    def log_tail(self, n: int = 2000) -> str:
        try:
            with open(self.log_path, "rb") as fh:
                return fh.read()[-n:].decode(errors="replace")
        except OSError:
            return ""

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        self.proc = None

    def close(self) -> None:
        self.stop()
        if self._own_dir:
            shutil.rmtree(self.data_dir, ignore_errors=True)

    def ctl(self, *args: str, input: bytes | None = None) -> str:
        """Run etcdctl (v3 API) against this server and return its stdout."""
        out = subprocess.run(
            ["etcdctl", "--endpoints", self.url, *args],
            input=input, capture_output=True, check=True, timeout=20,
            env=dict(os.environ, ETCDCTL_API="3"),
        )
        return out.stdout.decode()


@contextlib.contextmanager
def running_etcd():
    etcd = Etcd().start()
    try:
        yield etcd
    finally:
        etcd.close()
