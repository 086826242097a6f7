"""A real skydns process (real etcd) forwarding to misbehaving upstreams; `skydns doctor` on it.

The issue's failure stories: two upstreams of which one cannot resolve public names (every
public lookup must still succeed, and the doctor must name the bad upstream), and a
forwarding loop through a stub resolver (detected, reported on /ready, cluster names still
answered).
"""

from __future__ import annotations

import json
import re
import os
import subprocess
import sys

import dns.message
import dns.rcode
import pytest

from tests import procs, skydnsproc, upstreams

pytestmark = pytest.mark.integration

ZONE = "cluster.local."
ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def start(etcd, *flags: str, nameservers: tuple[upstreams.Upstream, ...] = (),
          port: int | None = None) -> skydnsproc.Skydns:
    """skydns forwarding to nameservers, started once /ready is 200 or reports a forwarding loop."""
    sky = skydnsproc.Skydns(etcd.url, *flags, domain=ZONE, port=port, timeout=3,
                            nameservers=",".join(f"127.0.0.1:{s.port}" for s in nameservers))
    try:
        sky.wait_ready(lambda status, body: status == 200 or "loop" in body, timeout=15, what="skydns to start")
    except BaseException:
        sky.stop()
        raise
    return sky


def doctor(sky: skydnsproc.Skydns, etcd, *nameservers: upstreams.Upstream, public=("example.com.", "example.org.")):
    args = [sys.executable, "-m", "skydns.doctor", "--addr", f"127.0.0.1:{sky.port}",
            "--nameservers", ",".join(f"127.0.0.1:{s.port}" for s in nameservers),
            "--domain", ZONE, "--machines", etcd.url, "--metrics-url", f"http://127.0.0.1:{sky.http_port}/metrics",
            "--timeout", "1.0"]
    for name in public:
        args += ["--public-name", name]
    out = subprocess.run(args, cwd=ROOT, capture_output=True, timeout=60, env=dict(os.environ, PYTHONPATH=ROOT))
    return out.returncode, out.stdout.decode() + out.stderr.decode()


@pytest.fixture
def cluster_etcd(etcd):
    etcd.ctl("put", "/skydns/local/cluster/svc/default/kubernetes/a1", json.dumps({"host": "10.96.0.1"}))
    return etcd


@pytest.mark.parametrize(
    "flags, order",
    [
        (("-ns-rotate=false",), ("good", "bad")),
        (("--forward-policy", "round_robin", "--forward-failover", "SERVFAIL,REFUSED,NXDOMAIN"), ("bad", "good")),
        (("--forward-policy", "random", "--forward-failover", "SERVFAIL,REFUSED,NXDOMAIN"), ("bad", "good")),
    ],
    ids=["sequential-good-first", "round_robin-failover-nxdomain", "random-failover-nxdomain"],
)
def test_every_public_lookup_succeeds_and_doctor_names_the_bad_upstream(cluster_etcd, flags, order):
    good, bad = upstreams.Upstream("ok"), upstreams.Upstream("nxdomain_public")
    servers = {"good": good, "bad": bad}
    with upstreams.Thread(good, bad):
        nameservers = tuple(servers[n] for n in order)
        sky = start(cluster_etcd, "--loop-check-interval", "0", "--cache-size", "0", *flags, nameservers=nameservers)
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
        sky = start(cluster_etcd, "--loop-check-interval", "0", nameservers=(good,))
        try:
            code, report = doctor(sky, cluster_etcd, good)
        finally:
            sky.close()
    assert code == 0, report
    assert "OK: no problem found" in report
    assert "mirror: etcd 1 records at revision" in report


@pytest.mark.parametrize("workers", [1, 2], ids=["one-process", "two-workers"])
def test_forwarding_loop_is_detected_and_cluster_names_still_served(cluster_etcd, workers):
    stub, good = upstreams.Upstream("forward"), upstreams.Upstream("ok")
    with upstreams.Thread(stub, good) as thread:
        port = procs.free_port()
        thread.loop.call_soon_threadsafe(setattr, stub, "forward_to", ("127.0.0.1", port))
        # the stub forwards to skydns's own port: a loop through it, none through `good`
        sky = start(cluster_etcd, "--loop-check-interval", "0.2", "--forward-policy", "sequential",
                    "--workers", str(workers), nameservers=(stub, good), port=port)
        try:
            procs.wait_until(lambda: "loop" in sky.http("/ready")[1], timeout=10, what="loop reported on /ready")
            status, body = sky.http("/ready")
            cluster = sky.query(f"kubernetes.default.svc.{ZONE}")
            # every process learns of the loop (probes are signed for all workers); until then a
            # worker may still try the stub first, so poll
            public = procs.wait_until(lambda: _noerror(sky.query("www.example.com.")), timeout=10,
                                      what="public name answered through the good upstream")
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


def test_hosts_file_stub_domain_cache_and_metrics(cluster_etcd, tmp_path):
    hosts = tmp_path / "hosts"
    hosts.write_text("10.50.0.1 registry.corp.example\n")
    default, corp = upstreams.Upstream("ok"), upstreams.Upstream("ok")
    with upstreams.Thread(default, corp) as thread:
        thread.loop.call_soon_threadsafe(setattr, corp, "answer_ip", "192.0.2.99")
        sky = start(cluster_etcd, "--loop-check-interval", "0", "--hosts", str(hosts), "--hosts-reload", "0.1",
                    "--stub-domain", f"corp.example=127.0.0.1:{corp.port}", nameservers=(default,))
        try:
            from_hosts = sky.query("registry.corp.example.")
            from_stub = sky.query("wiki.corp.example.")
            public = [sky.query("www.example.com.") for _ in range(3)]
            hosts.write_text("10.50.0.2 registry.corp.example\n")
            procs.wait_until(lambda: sky.query("registry.corp.example.").answer[0][0].to_text() == "10.50.0.2",
                             timeout=10, what="hosts file reloaded")
            _, text = sky.http("/metrics")
        finally:
            sky.close()
    assert from_hosts.answer[0][0].to_text() == "10.50.0.1"
    assert from_stub.answer[0][0].to_text() == "192.0.2.99"
    assert [p.answer[0][0].to_text() for p in public] == ["192.0.2.1"] * 3
    assert corp.names() == ["wiki.corp.example."]
    assert default.names("A") == ["www.example.com."]  # the two repeats came from the cache
    assert f'skydns_forward_requests_total{{to="127.0.0.1:{default.port}"}} 1.0' in text
    assert f'skydns_forward_responses_total{{rcode="NOERROR",to="127.0.0.1:{corp.port}"}} 1.0' in text
    assert re.search(r'skydns_cache_hits_total\{cache="forward",[^}]*\} 2\.0', text)
    assert "skydns_hosts_entries 1.0" in text


def _noerror(reply: dns.message.Message) -> dns.message.Message | None:
    return reply if reply.rcode() == dns.rcode.NOERROR else None
