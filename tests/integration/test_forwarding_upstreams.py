"""A real skydns process (real etcd) forwarding to misbehaving upstreams; `skydns doctor` on it.

The issue's failure stories: two upstreams of which one cannot resolve public names (every
public lookup must still succeed, and the doctor must name the bad upstream), and a
forwarding loop through a stub resolver (detected, reported on /ready, cluster names still
answered).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import urllib.error
import urllib.request

import dns.message
import dns.query
import dns.rcode
import pytest

from skydns import settings
from tests import procs
from tests import upstreams

pytestmark = pytest.mark.integration

ZONE = "cluster.local."
ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


class Skydns:
    """skydns in a child process, configured with Settings fields."""

    def __init__(self, etcd, port: int | None = None, **fields) -> None:
        self.port = port or procs.free_port()
        self.http_port = procs.free_port()
        fields = dict(
            domains=(ZONE,), addr_host="127.0.0.1", addr_port=self.port, etcd_endpoints=(etcd.endpoint,),
            http_host="127.0.0.1", http_port=self.http_port, lameduck=0.0, **fields,
        )
        code = (
            "import sys\n"
            "from skydns import app\n"
            "from skydns.settings import Settings, Upstream\n"
            f"app.run(Settings(**{fields!r}))\n"
        )
        self.proc = subprocess.Popen([sys.executable, "-c", code], cwd=ROOT, stdout=subprocess.PIPE,
                                     stderr=subprocess.STDOUT)
        procs.wait_until(self.is_ready_or_loop, timeout=15, what="skydns to start")

    def http(self, path: str) -> tuple[int, str]:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.http_port}{path}", timeout=2) as resp:
                return resp.status, resp.read().decode()
        except urllib.error.HTTPError as exc:
            return exc.code, exc.read().decode()

    def is_ready_or_loop(self) -> bool:
        if self.proc.poll() is not None:
            raise RuntimeError(f"skydns exited: {self.proc.stdout.read().decode()}")
        status, body = self.http("/ready")
        return status == 200 or "loop" in body

    def query(self, name: str, rdtype: str = "A") -> dns.message.Message:
        return dns.query.udp(dns.message.make_query(name, rdtype), "127.0.0.1", port=self.port, timeout=3)

    def close(self) -> str:
        self.proc.send_signal(signal.SIGTERM)
        try:
            out, _ = self.proc.communicate(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            out, _ = self.proc.communicate()
        return out.decode(errors="replace")


def doctor(sky: Skydns, etcd, *nameservers: upstreams.Upstream, public=("example.com.", "example.org.")):
    args = [sys.executable, "-m", "skydns.doctor", "--server", f"127.0.0.1:{sky.port}",
            "--nameservers", ",".join(f"127.0.0.1:{s.port}" for s in nameservers),
            "--domain", ZONE, "--machines", etcd.url, "--metrics-url", f"http://127.0.0.1:{sky.http_port}/metrics",
            "--timeout", "0.5"]
    for name in public:
        args += ["--public-name", name]
    out = subprocess.run(args, cwd=ROOT, capture_output=True, timeout=60, env=dict(os.environ, PYTHONPATH=ROOT))
    return out.returncode, out.stdout.decode() + out.stderr.decode()


@pytest.fixture
def cluster_etcd(etcd):
    etcd.ctl("put", "/skydns/local/cluster/svc/default/kubernetes/a1", json.dumps({"host": "10.96.0.1"}))
    return etcd


@pytest.mark.parametrize(
    "fields, order",
    [
        ({"forward_policy": "sequential"}, ("good", "bad")),
        ({"forward_policy": "round_robin", "forward_failover_rcodes": (2, 3, 5)}, ("bad", "good")),
        ({"forward_policy": "random", "forward_failover_rcodes": (2, 3, 5)}, ("bad", "good")),
    ],
    ids=["sequential-good-first", "round_robin-failover-nxdomain", "random-failover-nxdomain"],
)
def test_every_public_lookup_succeeds_and_doctor_names_the_bad_upstream(cluster_etcd, fields, order):
    good, bad = upstreams.Upstream("ok"), upstreams.Upstream("nxdomain_public")
    servers = {"good": good, "bad": bad}
    with upstreams.Thread(good, bad):
        nameservers = tuple(servers[n].upstream for n in order)
        sky = Skydns(cluster_etcd, nameservers=nameservers, loop_check_interval=0.0, cache_size=0, **fields)
        try:
            rcodes = [sky.query(f"host{i}.example.com.").rcode() for i in range(20)]
            cluster = sky.query(f"kubernetes.default.svc.{ZONE}")
            code, report = doctor(sky, cluster_etcd, *(servers[n] for n in order))
        finally:
            log = sky.close()
    assert rcodes == [dns.rcode.NOERROR] * 20, log
    assert cluster.answer[0][0].to_text() == "10.96.0.1"
    assert code == 1, report
    assert f"upstream 127.0.0.1:{bad.port} cannot resolve public name example.com.: NXDOMAIN" in report
    assert f"upstream 127.0.0.1:{good.port} cannot" not in report
    assert "in sync" in report


def test_doctor_is_happy_with_good_upstreams(cluster_etcd):
    good = upstreams.Upstream("ok")
    with upstreams.Thread(good):
        sky = Skydns(cluster_etcd, nameservers=(good.upstream,), loop_check_interval=0.0)
        try:
            code, report = doctor(sky, cluster_etcd, good)
        finally:
            sky.close()
    assert code == 0, report
    assert "OK: no problem found" in report
    assert "mirror: etcd 1 records at revision" in report


def test_forwarding_loop_is_detected_and_cluster_names_still_served(cluster_etcd):
    stub, good = upstreams.Upstream("forward"), upstreams.Upstream("ok")
    with upstreams.Thread(stub, good) as thread:
        port = procs.free_port()
        thread.loop.call_soon_threadsafe(setattr, stub, "forward_to", ("127.0.0.1", port))
        # the stub forwards to skydns's own port: a loop through it, none through `good`
        sky = Skydns(cluster_etcd, port=port, nameservers=(stub.upstream, good.upstream),
                     loop_check_interval=0.2, forward_policy="sequential")
        try:
            procs.wait_until(lambda: "loop" in sky.http("/ready")[1], timeout=10, what="loop reported on /ready")
            status, body = sky.http("/ready")
            cluster = sky.query(f"kubernetes.default.svc.{ZONE}")
            public = sky.query("www.example.com.")
            code, report = doctor(sky, cluster_etcd, stub, good)
        finally:
            log = sky.close()
    assert status == 503
    assert f"forwarding loop via 127.0.0.1:{stub.port}" in body
    assert cluster.answer[0][0].to_text() == "10.96.0.1"
    assert public.rcode() == dns.rcode.NOERROR  # through the good upstream
    assert f"loop detected: a query sent to 127.0.0.1:{stub.port} came back to us" in log
    assert code == 1
    assert f"forwarding loop via 127.0.0.1:{stub.port}" in report


def test_settings_upstream_repr_round_trips():
    # Skydns above passes Settings through repr(); keep that possible.
    up = settings.Upstream("127.0.0.1", 5353)
    assert eval(repr(up), {"Upstream": settings.Upstream}) == up
