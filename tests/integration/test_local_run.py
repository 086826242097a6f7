"""`make run` (scripts/run_local.py): the whole stack comes up, answers the example names, and stops on Ctrl-C."""

from __future__ import annotations

import pathlib
import signal
import subprocess
import sys
import threading

import dns.message
import dns.query
import dns.rcode
import pytest

from tests import procs

pytestmark = pytest.mark.integration

ROOT = pathlib.Path(__file__).resolve().parents[2]


def ask(port: int, name: str, rdtype: str = "A") -> dns.message.Message:
    return dns.query.udp(dns.message.make_query(name, rdtype), "127.0.0.1", port=port, timeout=2)


def test_local_run_serves_the_examples_and_stops_on_ctrl_c():
    port = procs.free_port()
    proc = subprocess.Popen(
        [sys.executable, str(ROOT / "scripts" / "run_local.py"), "--dns-port", str(port)],
        cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        env={k: v for k, v in __import__("os").environ.items() if k != "KUBECONFIG"},
    )
    lines: list[str] = []
    banner = threading.Event()

    def read() -> None:
        for line in proc.stdout:
            lines.append(line)
            if "Ctrl-C stops everything" in line:
                banner.set()

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    try:
        assert banner.wait(60), "no banner; output:\n" + "".join(lines[-40:])
        reply = procs.wait_until(lambda: (r := ask(port, "kubernetes.default.svc.cluster.local.")).answer and r,
                                 what="kubernetes.default answered")
        assert reply.answer[0][0].address == "10.96.0.1"
        assert ask(port, "registry.cluster.local.").answer[0][0].address == "10.0.0.50"
        srv = ask(port, "_http._tcp.web.default.svc.cluster.local.", "SRV")
        assert srv.rcode() == dns.rcode.NOERROR and srv.answer
        assert ask(port, "nope.default.svc.cluster.local.").rcode() == dns.rcode.NXDOMAIN
        assert f"dig @127.0.0.1 -p {port}" in "".join(lines)
    finally:
        proc.send_signal(signal.SIGINT)
        try:
            code = proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
            raise
        reader.join(5)
    assert code == 0, "".join(lines[-40:])
    # every process of the stack is gone: the DNS port is free again
    procs.wait_until(lambda: _port_free(port), timeout=10, what="DNS port released")


def _port_free(port: int) -> bool:
    import socket

    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as udp:
        try:
            udp.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True
