"""healthz as a real process against a real skydns (and a real etcd), plus real commands.

healthz runs as `python -m healthz ...` with the same args a pod would pass. The DNS
server is the real skydns reading a real etcd (records put with etcdctl); the scripted
servers of tests/healthz/responder.py stand in only where a test needs a server that never
answers or a counting proxy. Nothing asserts a duration: states are awaited with wait_until.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import urllib.error
import urllib.request

import pytest

from tests import procs, skydnsproc
from tests.healthz import responder

pytestmark = pytest.mark.integration

QNAME = "kubernetes.default.svc.cluster.local"
KEY = "/skydns/local/cluster/svc/default/kubernetes/x1"
ADDRESS = "10.96.0.1"


class SkydnsBackend:
    """The real skydns process serving cluster.local. from a real etcd."""

    kind = "skydns"

    def __init__(self, etcd: procs.Etcd, tmp_path) -> None:
        self.etcd = etcd
        self.port = procs.free_port()
        self.log_path = tmp_path / "skydns.log"
        self.sky: skydnsproc.Skydns | None = None

    def put(self) -> None:
        self.etcd.ctl("put", KEY, json.dumps({"host": ADDRESS}))

    def remove(self) -> None:
        self.etcd.ctl("del", KEY)

    def start(self) -> None:
        # the same DNS port on every start; skydns's own defaults for prefix, nameservers, lameduck
        self.sky = skydnsproc.Skydns(self.etcd.url, port=self.port, nameservers=None, lameduck=None,
                                     log_path=self.log_path)
        try:
            self.sky.wait_ready()
        except BaseException:
            self.stop()
            raise

    def stop(self) -> None:
        if self.sky is not None:
            self.sky.stop(signal.SIGKILL)
        self.sky = None

    def close(self) -> None:
        self.stop()


@pytest.fixture
def dns_server(etcd, tmp_path):
    """The real skydns answering kubernetes.default.svc.cluster.local A 10.96.0.1 from etcd."""
    backend = SkydnsBackend(etcd, tmp_path)
    backend.put()
    backend.start()
    try:
        yield backend
    finally:
        backend.close()


def http_get(port: int, path: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=5) as resp:
            return resp.status, resp.read().decode()
    except urllib.error.HTTPError as err:
        return err.code, err.read().decode()
    except OSError:
        return 0, ""


@contextlib.contextmanager
def healthz(*args: str, port: int | None = None):
    """Run `python -m healthz ARGS -port=PORT --address=127.0.0.1`; yields (proc, port); stops it."""
    port = port or procs.free_port()
    proc = subprocess.Popen([sys.executable, "-m", "healthz", *args, f"-port={port}", "--address=127.0.0.1"],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            env=dict(os.environ, PYTHONUNBUFFERED="1"))
    try:
        procs.wait_until(lambda: proc.poll() is None and http_get(port, "/metrics")[0] == 200, timeout=15,
                         what="healthz listening")
        yield proc, port
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(5)
        if proc.stdout is not None:
            proc.stdout.close()


def wait_status(port: int, path: str, code: int, text: str = "", timeout: float = 15.0, exact: bool = False) -> str:
    """Poll until GET path answers `code` with `text` in the body (or as the body); return the body."""
    def check():
        got, body = http_get(port, path)
        return body if got == code and (body == text if exact else text in body) else None

    try:
        return procs.wait_until(check, timeout=timeout, interval=0.05, what=f"{path} -> {code} {text!r}")
    except TimeoutError:
        raise AssertionError(f"{path} never answered {code} {text!r}; last: {http_get(port, path)}") from None


def probe_arg(port: int) -> str:
    return f"--probe=kubernetes={QNAME}/A@127.0.0.1:{port},expect={ADDRESS},timeout=500ms"


def test_healthy_dead_back_and_removed(dns_server) -> None:
    """200 -> server killed: 503 timeout -> back: 200 -> record removed: 503 NXDOMAIN."""
    with healthz(probe_arg(dns_server.port), "-period=300ms", "-latency=10s") as (_, port):
        assert wait_status(port, "/healthz/kubernetes", 200, "ok\n", exact=True)
        assert wait_status(port, "/healthz", 200, "ok\n", exact=True)

        dns_server.stop()
        body = wait_status(port, "/healthz", 503, "timeout")
        assert "kubernetes: timeout: no reply within 0.5s" in body, body
        data = json.loads(wait_status(port, "/healthz?format=json", 503, '"timeout"'))
        assert data["checks"]["kubernetes"]["status"] == "failing"

        dns_server.start()
        assert wait_status(port, "/healthz", 200, "ok\n", exact=True)

        dns_server.remove()
        body = wait_status(port, "/healthz/kubernetes", 503, "NXDOMAIN")
        assert "rcode: NXDOMAIN for kubernetes.default.svc.cluster.local./A" in body, body
        metrics = http_get(port, "/metrics")[1]
        assert 'healthz_probe_failures_total{probe="kubernetes",reason="timeout"}' in metrics
        assert 'healthz_probe_failures_total{probe="kubernetes",reason="rcode"}' in metrics
        assert 'healthz_probe_healthy{probe="kubernetes"} 0.0' in metrics

        dns_server.put()
        assert wait_status(port, "/healthz", 200, "ok\n", exact=True)


def test_flood_does_not_multiply_queries(dns_server) -> None:
    """200 concurrent GET /healthz send no DNS query: probes run only on their period."""
    with responder.CountingProxy(dns_server.port) as proxy, \
            healthz(probe_arg(proxy.port), "-period=1m", "-latency=5m") as (_, port):
        wait_status(port, "/healthz", 200, "ok")
        procs.wait_until(lambda: json.loads(http_get(port, "/healthz?format=json")[1])
                         ["checks"]["kubernetes"]["runs"] == 1, what="first probe recorded")
        before = proxy.queries
        with concurrent.futures.ThreadPoolExecutor(32) as pool:
            codes = list(pool.map(lambda _: http_get(port, "/healthz")[0], range(200)))
        assert codes.count(200) == 200
        assert proxy.queries == before == 1
        metrics = http_get(port, "/metrics")[1]
        assert 'healthz_probe_duration_seconds_count{probe="kubernetes"} 1.0' in metrics


def test_cmd_mode_with_dig(dns_server) -> None:
    """exechealthz -cmd/-url pairs with a real dig: the good one 200, the failing one 503 with its output."""
    closed = procs.free_port()
    good = f"-cmd=dig +short +time=1 +tries=1 @127.0.0.1 -p {dns_server.port} {QNAME}"
    bad = f"-cmd=dig +time=1 +tries=1 @127.0.0.1 -p {closed} {QNAME}"
    with healthz(good, "-url=/healthz-skydns", bad, "-url=/healthz-other", "-period=500ms", "-quiet") as (_, port):
        assert wait_status(port, "/healthz-skydns", 200, "ok\n", exact=True)
        body = wait_status(port, "/healthz-other", 503, "exit status")
        assert "cmd2: exit: exit status" in body and str(closed) in body, body
        assert wait_status(port, "/healthz", 503, "cmd2:").count("cmd1:") == 0
        data = json.loads(http_get(port, "/healthz-skydns?format=json")[1])
        assert data["checks"]["cmd1"]["last"]["detail"] == ADDRESS


def test_old_kube_dns_args_run_unchanged() -> None:
    """The kube-dns v11 args, as the pod passed them (port 8080 unless it is taken here)."""
    old = ["-cmd=nslookup kubernetes.default.svc.cluster.local 127.0.0.1 >/dev/null", "-port=8080"]
    port = 8080 if _port_free(8080) else procs.free_port()
    proc = subprocess.Popen([sys.executable, "-m", "healthz", old[0], f"-port={port}"],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        # Nothing answers DNS on 127.0.0.1:53 here, so nslookup fails and its output is the reason.
        # nslookup's stdout goes to /dev/null as in the pod; the exit status is the reason.
        wait_status(port, "/healthz", 503, "cmd: exit: exit status 1")
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(10) == 0
        proc.stdout.close()


def _port_free(port: int) -> bool:
    with socket.socket() as sock:
        try:
            sock.bind(("0.0.0.0", port))
        except OSError:
            return False
    return True


def test_pending_then_graceful_stop() -> None:
    """Before the first result: 200 'ok (no result yet, starting)', JSON 'pending'; SIGTERM -> exit 0."""
    with responder.Responder(mode="silent") as silent, \
            healthz(f"--probe=k={QNAME}@127.0.0.1:{silent.port},timeout=5s", "-period=1s") as (proc, port):
        code, body = http_get(port, "/healthz")
        assert (code, body.splitlines()[0]) == (200, "ok (no result yet, starting)")
        data = json.loads(http_get(port, "/healthz?format=json")[1])
        assert data["checks"]["k"]["status"] == "pending"
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(10) == 0
        assert "stopping" in proc.stdout.read()


def test_pending_fail_and_bad_spec() -> None:
    with responder.Responder(mode="silent") as silent, \
            healthz(f"--probe=k={QNAME}@127.0.0.1:{silent.port},timeout=5s", "--pending-fail") as (_, port):
        code, body = http_get(port, "/healthz")
        assert code == 503 and "k: no result yet, starting" in body
    bad = subprocess.run([sys.executable, "-m", "healthz", "--probe=kubernetes=kubernetes@dns:53"],
                         capture_output=True, text=True, timeout=30)
    assert bad.returncode == 2
    assert bad.stderr.strip().splitlines() == [
        "healthz: error: Invalid value for '--probe': bad probe 'kubernetes=kubernetes@dns:53': "
        "bad server 'dns:53': 'dns' is not an IP address"]
