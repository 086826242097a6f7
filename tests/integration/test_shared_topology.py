"""The shared topology on loopback: one 3-member etcd cluster (peer and client TLS, auth on),
two kube2sky with --leader-elect fed by the API double, three skydns reading the cluster.

Rules:
1. Everything is real: etcd binaries, kube2sky and skydns processes, DNS over UDP. Certificates
   are made here with the openssl CLI; etcd maps a client certificate's CN to the etcd user.
2. Least privilege exactly as the shared manifests set it up: the fixture runs the etcdctl steps
   of their setup Job (render.etcd_auth_steps) as root. kube2sky may read and write the records
   prefix and its leader key; skydns may only read the prefix; root writes custom records.
3. One world for the module (starting it costs seconds); the scenarios run in file order and
   each leaves two kube2sky, three skydns and three healthy etcd members behind.
4. Timing is never asserted tightly: every wait is a poll with a deadline stretched by
   KUBE_SKYDNS_TEST_TIMEOUT_SCALE. "Takes over within the lease TTL" is a deadline of
   TTL + one campaign interval (TTL/3) + a second, stretched the same way.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request

import dns.exception
import dns.rcode
import pytest

from deploy import render
from tests import apiserver, procs, skydnsproc

pytestmark = pytest.mark.integration

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
TTL = 3  # seconds, --leader-ttl of both kube2sky
LEADER_KEY = render.LEADER_KEY
PROBE_NAME = "kubernetes.default.svc.cluster.local."


def service(name: str, ip: str, ns: str = "default", port: int = 80) -> dict:
    return {"kind": "Service", "metadata": {"name": name, "namespace": ns},
            "spec": {"clusterIP": ip, "ports": [{"name": "http", "port": port, "protocol": "TCP"}]}}


class Kube2sky:
    """A kube2sky process with a loopback healthz port, logging to a file."""

    def __init__(self, folder, name: str, *args: str) -> None:
        self.name = name
        self.port = procs.free_port()
        self.log_path = folder / f"{name}.log"
        self.args = [sys.executable, "-m", "kube2sky", "--healthz-host", "127.0.0.1",
                     "--healthz-port", str(self.port), *args]
        env = {k: v for k, v in os.environ.items() if not k.startswith("KUBE2SKY_") and k != "KUBECONFIG"}
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(self.args, stdout=log, stderr=subprocess.STDOUT, cwd=ROOT, env=env)

    @property
    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def http(self, path: str) -> tuple[int, str]:
        if self.proc.poll() is not None:
            raise AssertionError(f"kube2sky {self.name} exited: {self.log[-3000:]}")
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.port}{path}", timeout=2) as resp:
                return resp.status, resp.read().decode()
        except urllib.error.HTTPError as err:
            return err.code, err.read().decode()

    def metric(self, name: str) -> float:
        for line in self.http("/metrics")[1].splitlines():
            if line.startswith(name + " "):
                return float(line.split()[1])
        return 0.0

    def is_leader(self) -> bool:
        return self.metric("kube2sky_leader") == 1.0

    def wait_ready(self) -> None:
        procs.wait_until(lambda: self.http("/readiness")[0] == 200, timeout=30,
                         what=f"kube2sky {self.name} /readiness; log: {self.log_path}")

    def stop(self, sig: int = signal.SIGTERM) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)


class World:
    def __init__(self, folder, cluster: procs.EtcdCluster, api: apiserver.ApiServer) -> None:
        self.folder = folder
        self.cluster = cluster
        self.api = api
        self.kube2sky: list[Kube2sky] = []
        self.skydns: list[skydnsproc.Skydns] = []
        self._started = 0

    def start_kube2sky(self) -> Kube2sky:
        crt, key = self.cluster.pki["kube2sky"]
        self._started += 1
        proc = Kube2sky(self.folder, f"kube2sky-{self._started}", "--kube-master-url", self.api.url,
                        "--etcd-server", ",".join(self.cluster.urls), "--etcd-cafile", self.cluster.pki["ca"][0],
                        "--etcd-certfile", crt, "--etcd-keyfile", key,
                        "--leader-elect", "--leader-ttl", str(TTL))
        self.kube2sky.append(proc)
        return proc

    def start_skydns(self, i: int) -> skydnsproc.Skydns:
        crt, key = self.cluster.pki["skydns"]
        urls = self.cluster.urls[i:] + self.cluster.urls[:i]  # each replica starts on another member
        server = skydnsproc.Skydns(",".join(urls), f"-ca-cert={self.cluster.pki['ca'][0]}", f"-tls-pem={crt}",
                                   f"-tls-key={key}", log_path=self.folder / f"skydns-{i}.log")
        self.skydns.append(server)
        return server

    def live_kube2sky(self) -> list[Kube2sky]:
        return [k for k in self.kube2sky if k.proc.poll() is None]

    def leader(self) -> Kube2sky:
        def one():
            leaders = [k for k in self.live_kube2sky() if k.is_leader()]
            return leaders[0] if len(leaders) == 1 else None
        return procs.wait_until(one, timeout=3 * TTL, interval=0.1, what="exactly one kube2sky leader")

    def answers(self, name: str) -> list[set[str]]:
        """The A answers of every skydns for name (an empty set for NXDOMAIN or an error)."""
        out = []
        for server in self.skydns:
            try:
                out.append(set(skydnsproc.addrs(server.udp(name))))
            except (dns.exception.Timeout, OSError):
                out.append(set())
        return out

    def wait_answered(self, name: str, ip: str, timeout: float = 20) -> None:
        procs.wait_until(lambda: all(a == {ip} for a in self.answers(name)), timeout=timeout, interval=0.1,
                         what=f"{name} -> {ip} from every skydns, have {self.answers(name)}")

    def wait_members_healthy(self) -> None:
        for i in range(len(self.cluster.procs)):
            procs.wait_until(lambda i=i: self.cluster.healthy(i), timeout=30, what=f"etcd m{i} healthy")


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    folder = tmp_path_factory.mktemp("shared")
    pki = procs.make_pki(str(folder / "pki"))
    cluster = procs.EtcdCluster(pki, str(folder))
    api = apiserver.ApiServer(bookmark_interval=0.5).start()
    w = World(folder, cluster, api)
    try:
        cluster.start()
        for _, argv in render.etcd_auth_steps():  # what manifests/shared/etcd-setup.yaml runs
            cluster.ctl(*argv)
        api.create(service("kubernetes", "10.0.0.1", port=443))
        api.create(service("kube-dns", "10.0.0.53", ns="kube-system", port=53))
        w.start_kube2sky()
        w.start_kube2sky()
        for i in range(3):
            w.start_skydns(i)
        for k in w.kube2sky:
            k.wait_ready()
        for server in w.skydns:
            server.wait_ready()
        w.wait_answered(PROBE_NAME, "10.0.0.1")
        yield w
    finally:
        for server in w.skydns:
            server.stop()
        for k in w.kube2sky:
            k.stop(signal.SIGKILL)
        cluster.close()
        api.close()


class Prober:
    """Queries every skydns in turn from a thread; counts answers that are not the expected A."""

    def __init__(self, world: World, name: str = PROBE_NAME, ip: str = "10.0.0.1") -> None:
        self.world, self.name, self.ip = world, name, ip
        self.ok = 0
        self.failed: list[str] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            for i, server in enumerate(self.world.skydns):
                try:
                    reply = server.udp(self.name)
                    if reply.rcode() == dns.rcode.NOERROR and skydnsproc.addrs(reply) == [self.ip]:
                        self.ok += 1
                    else:
                        self.failed.append(f"skydns-{i}: {dns.rcode.to_text(reply.rcode())} {reply.answer}")
                except (dns.exception.Timeout, OSError) as err:
                    self.failed.append(f"skydns-{i}: {err!r}")
            self._stop.wait(0.02)

    def __enter__(self) -> "Prober":
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join(10)


# ---------------------------------------------------------------- scenarios

def test_a_record_put_once_is_answered_by_every_skydns(world):
    world.cluster.ctl("put", "/skydns/local/cluster/custom/db", '{"host":"10.9.9.9"}')
    world.wait_answered("db.custom.cluster.local.", "10.9.9.9")
    world.cluster.ctl("del", "/skydns/local/cluster/custom/db")
    procs.wait_until(lambda: all(a == set() for a in world.answers("db.custom.cluster.local.")),
                     what="the deleted custom record gone everywhere")


@pytest.mark.parametrize("user,args", [
    ("skydns", ("put", "/skydns/local/cluster/custom/evil", '{"host":"10.6.6.6"}')),
    ("skydns", ("del", "--prefix", "/skydns/")),
    ("skydns", ("put", LEADER_KEY, "skydns")),
    ("kube2sky", ("put", "/elsewhere", "x")),
    ("skydns", ("get", LEADER_KEY)),
], ids=["skydns-put", "skydns-delete", "skydns-leader-key", "kube2sky-outside-prefix", "skydns-reads-leader"])
def test_certificates_are_least_privilege(world, user, args):
    out = world.cluster.ctl(*args, user=user, check=False)
    assert out.returncode != 0 and b"permission denied" in out.stderr, out
    assert world.cluster.ctl("get", "--prefix", "/skydns/local/cluster/custom/evil").stdout == b""
    assert world.cluster.ctl("get", "/skydns/local/cluster/svc/default/kubernetes", "--prefix", "--keys-only",
                             user="skydns").stdout  # reading the records is allowed


def test_only_the_leader_writes(world):
    world.api.create(service("web", "10.0.0.80"))
    world.wait_answered("web.default.svc.cluster.local.", "10.0.0.80")
    leader = world.leader()
    standby = [k for k in world.live_kube2sky() if k is not leader]
    assert len(standby) == 1
    assert leader.metric("kube2sky_etcd_transactions_total") > 0
    assert standby[0].metric("kube2sky_etcd_transactions_total") == 0
    holder = world.cluster.ctl("get", LEADER_KEY, "--print-value-only").stdout.decode()
    assert f"-{leader.proc.pid}-" in holder
    assert standby[0].http("/readiness")[0] == 200  # a healthy standby is ready


def test_leader_sigkill_standby_takes_over(world):
    leader = world.leader()
    standby = [k for k in world.live_kube2sky() if k is not leader][0]
    leader.stop(signal.SIGKILL)
    killed = time.monotonic()
    world.api.create(service("during-failover", "10.0.0.81"))
    procs.wait_until(standby.is_leader, timeout=TTL + TTL / 3 + 1, interval=0.05,
                     what=f"the standby to take over within the lease TTL ({TTL}s)")
    took = time.monotonic() - killed
    world.wait_answered("during-failover.default.svc.cluster.local.", "10.0.0.81")
    print(f"standby took over {took:.2f}s after the leader's SIGKILL (lease TTL {TTL}s)")
    world.start_kube2sky().wait_ready()  # the replacement joins as a standby
    assert world.leader() is standby


def test_one_member_killed_answers_continue_and_writes_land(world):
    with Prober(world) as prober:
        world.cluster.stop(0, signal.SIGKILL)
        world.api.create(service("member-down", "10.0.0.82"))
        world.wait_answered("member-down.default.svc.cluster.local.", "10.0.0.82", timeout=30)
        world.cluster.ctl("put", "/skydns/local/cluster/custom/down", '{"host":"10.9.9.8"}')
        world.wait_answered("down.custom.cluster.local.", "10.9.9.8")
    world.cluster.start(0)
    world.wait_members_healthy()
    assert prober.ok > 0 and not prober.failed, prober.failed[:5]


def test_rolling_restart_of_every_member_fails_no_query(world):
    with Prober(world) as prober:
        for i in range(3):
            world.cluster.stop(i)
            world.cluster.start(i)
            world.wait_members_healthy()
        world.api.create(service("after-rolling", "10.0.0.83"))
        world.wait_answered("after-rolling.default.svc.cluster.local.", "10.0.0.83", timeout=30)
    assert prober.ok > 0 and not prober.failed, prober.failed[:5]
    assert len(world.live_kube2sky()) == 2
    world.leader()
