"""`make run` (scripts/run_local.py): the whole stack comes up, answers the example names, prints the
lines to paste (etcdctl endpoint, virtualenv), stops quietly on Ctrl-C, and fails fast on a cluster
it cannot reach."""

from __future__ import annotations

import importlib.metadata
import os
import re
import socket
import subprocess
import time
import urllib.request

import dns.message
import dns.query
import dns.rcode
import pytest

from tests import procs
from tests.localrun import ROOT, LocalRun

pytestmark = pytest.mark.integration


def ask(port: int, name: str, rdtype: str = "A") -> dns.message.Message:
    return dns.query.udp(dns.message.make_query(name, rdtype), "127.0.0.1", port=port, timeout=2)


def test_local_run_serves_the_examples_and_stops_on_ctrl_c():
    run = LocalRun()
    try:
        run.wait_banner()
        port = run.port
        reply = procs.wait_until(lambda: (r := ask(port, "kubernetes.default.svc.cluster.local.")).answer and r,
                                 what="kubernetes.default answered")
        assert reply.answer[0][0].address == "10.96.0.1"
        assert ask(port, "registry.cluster.local.").answer[0][0].address == "10.0.0.50"
        srv = ask(port, "_http._tcp.web.default.svc.cluster.local.", "SRV")
        assert srv.rcode() == dns.rcode.NOERROR and srv.answer
        assert ask(port, "nope.default.svc.cluster.local.").rcode() == dns.rcode.NXDOMAIN
        assert f"dig @127.0.0.1 -p {port}" in run.output
        # the printed lines work as pasted: etcdctl reaches this etcd, the virtualenv exists
        assert run.exports["ETCDCTL_API"] == "3"
        got = subprocess.run(["etcdctl", "get", "--prefix", "--keys-only", "/skydns/local/cluster/registry"],
                             env={**os.environ, **run.exports}, capture_output=True, text=True, timeout=30)
        assert got.returncode == 0 and "/skydns/local/cluster/registry/x1" in got.stdout, got
        assert (ROOT / run.activate).is_file() or os.path.isfile(run.activate)
        # health bodies end with a newline; one metrics rule in the three daemons: no *_created series
        urls = {path: base for base, path in re.findall(r"curl (http://127\.0\.0\.1:\d+)/(ready|readiness|healthz)\b",
                                                         run.output)}
        assert set(urls) == {"ready", "readiness", "healthz"}, run.output
        assert _get(urls["ready"] + "/ready") == "OK\n"
        assert _get(urls["healthz"] + "/healthz") == "ok\n"
        for base in urls.values():
            body = _get(base + "/metrics")
            assert "_total" in body and "_created" not in body, base
        assert 'skydns_build_info{version="%s"}' % importlib.metadata.version("kube-skydns") in _get(
            urls["ready"] + "/metrics")
        started = len(run.lines)
    finally:
        code = run.stop()
    assert code == 0, run.output[-4000:]
    # quiet: no etcd deprecation/raft noise at start, no WARNING when the stack stops
    for needle in ("Deprecated", "raft", "WARNING", "Traceback"):
        assert needle not in run.output, run.output
    assert "run: stopping" in "".join(run.lines[started:])
    # every process of the stack is gone: the DNS port is free again
    procs.wait_until(lambda: _port_free(run.port), timeout=10, what="DNS port released")


def test_unreachable_cluster_fails_fast_with_kube2sky_error(tmp_path):
    """A kubeconfig whose API server does not answer: make run stops at once, says why, starts nothing."""
    with socket.socket() as sock:  # a port with nobody listening
        sock.bind(("127.0.0.1", 0))
        dead = sock.getsockname()[1]
    kubeconfig = tmp_path / "kubeconfig"
    kubeconfig.write_text(
        "apiVersion: v1\nkind: Config\ncurrent-context: c\n"
        f"clusters: [{{name: c, cluster: {{server: 'https://127.0.0.1:{dead}', insecure-skip-tls-verify: true}}}}]\n"
        "contexts: [{name: c, context: {cluster: c, user: u}}]\nusers: [{name: u, user: {token: t}}]\n")
    started = time.monotonic()
    run = LocalRun(env={"KUBECONFIG": str(kubeconfig)})
    code = run.proc.wait(60 * procs.TIMEOUT_SCALE)
    run.reader.join(5)
    assert code == 1, run.output
    out = run.output
    assert "kube2sky: error: cannot use the Kubernetes API" in out and f"127.0.0.1:{dead}" in out, out
    assert "cannot use the cluster in" in out and "is running" not in out, out
    assert "starting etcd" not in out and "InsecureRequestWarning" not in out, out
    assert time.monotonic() - started < 30 * procs.TIMEOUT_SCALE


def _get(url: str) -> str:
    with urllib.request.urlopen(url, timeout=5) as resp:
        return resp.read().decode()


def _port_free(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as udp:
        try:
            udp.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True
