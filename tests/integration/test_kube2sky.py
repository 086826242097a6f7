"""The real kube2sky process (python -m kube2sky) against the API server double and a real etcd.

Every scenario ends by comparing the whole etcd prefix with records.desired() of the objects
the API holds: nothing missing, nothing extra (hand-written records excepted, they must stay).
One scenario compares it with literal text written from the specification instead.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import sys
import urllib.error
import urllib.request
import uuid

import dns.rcode
import dns.rdatatype
import pytest

from kube2sky import manifests, objects, records, k8swatch
from kube2sky import settings as settings_mod
from skydns import msg
from tests import apiserver, procs, skydnsproc

pytestmark = pytest.mark.integration

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


# ---------------------------------------------------------------- objects

def service(name: str, ip: str | None = "10.0.0.10", ns: str = "default", ports=(("http", 80),), **spec) -> dict:
    body = {"ports": [{"name": n, "port": p, "protocol": "TCP"} for n, p in ports], **spec}
    if ip is not None:
        body["clusterIP"] = ip
    return {"kind": "Service", "metadata": {"name": name, "namespace": ns}, "spec": body}


def endpoint_slice(name: str, svc: str, endpoints, ns: str = "default", port=("pg", 5432)) -> dict:
    return {"kind": "EndpointSlice", "metadata": {"name": name, "namespace": ns,
                                                  "labels": {"kubernetes.io/service-name": svc}},
            "addressType": "IPv4", "ports": [{"name": port[0], "port": port[1], "protocol": "TCP"}],
            "endpoints": [{"addresses": [ip], "conditions": {"ready": ready}, **({"hostname": host} if host else {})}
                          for ip, host, ready in endpoints]}


def expected(api: apiserver.ApiServer, etcd: "Db", **overrides) -> dict[str, str]:
    settings = settings_mod.Settings(prefix=etcd.prefix, **overrides)
    state = records.State(
        services=[objects.parse_service(o) for o in api.objects("Service")],
        slices=[objects.parse_endpoint_slice(o) for o in api.objects("EndpointSlice")]
        + [objects.parse_endpoints(o) for o in api.objects("Endpoints")],
        pods=[objects.parse_pod(o) for o in api.objects("Pod")])
    return records.desired(state, settings)


class Db:
    """An etcd plus the key prefix a test owns (tests share one etcd unless they stop it)."""

    def __init__(self, server: procs.Etcd, prefix: str) -> None:
        self.server = server
        self.prefix = prefix
        self.url = server.url

    def ctl(self, *args: str) -> str:
        return self.server.ctl(*args)

    def stop(self) -> None:
        self.server.stop()

    def start(self) -> None:
        self.server.start()

    @property
    def args(self) -> list[str]:
        return ["--etcd-server", self.url, "--prefix", self.prefix]


@pytest.fixture
def etcd(shared_etcd, request):
    """This module's etcd: the session's, with a prefix of the test's own."""
    db = Db(shared_etcd, "k" + uuid.uuid4().hex[:10])
    yield db
    shared_etcd.ctl("del", "--prefix", f"/{db.prefix}")


@pytest.fixture
def own_etcd():
    """A private etcd, for tests that stop and start it."""
    with procs.running_etcd() as server:
        yield Db(server, "skydns")


def etcd_prefix(etcd: Db) -> dict[str, str]:
    lines = etcd.ctl("get", "--prefix", f"/{etcd.prefix}/").splitlines()
    return dict(zip(lines[0::2], lines[1::2]))


def converge(etcd, want, extra: dict[str, str] | None = None, timeout: float = 20.0) -> None:
    """Wait until the prefix holds exactly want() (+ extra), then return."""
    def same():
        target = dict(want() if callable(want) else want)
        target.update(extra or {})
        return etcd_prefix(etcd) == target

    try:
        procs.wait_until(same, timeout=timeout, interval=0.1, what="etcd to match the desired records")
    except TimeoutError:
        target = dict(want() if callable(want) else want)
        target.update(extra or {})
        have = etcd_prefix(etcd)
        missing = sorted(set(target) - set(have))
        orphans = sorted(set(have) - set(target))
        raise AssertionError(f"missing {missing}, orphans {orphans}") from None


# ---------------------------------------------------------------- processes

class Kube2sky:
    """A kube2sky process on a free loopback healthz port; logs to a file."""

    def __init__(self, tmp_path, *args: str, name: str = "kube2sky") -> None:
        self.port = procs.free_port()
        self.log_path = tmp_path / f"{name}.log"
        self.args = [sys.executable, "-m", "kube2sky", "--healthz-host", "127.0.0.1",
                     "--healthz-port", str(self.port), *args]
        self.proc: subprocess.Popen | None = None

    def start(self) -> "Kube2sky":
        env = {k: v for k, v in os.environ.items() if not k.startswith("KUBE2SKY_") and k != "KUBECONFIG"}
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(self.args, stdout=log, stderr=subprocess.STDOUT, cwd=ROOT, env=env)
        return self

    @property
    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def http(self, path: str) -> tuple[int, str]:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.port}{path}", timeout=2) as resp:
                return resp.status, resp.read().decode()
        except urllib.error.HTTPError as err:
            return err.code, err.read().decode()

    def alive(self) -> bool:
        if self.proc is None or self.proc.poll() is not None:
            raise AssertionError(f"kube2sky exited: {self.log[-3000:]}")
        return True

    def wait_ready(self) -> None:
        procs.wait_until(lambda: self.alive() and self.http("/readiness")[0] == 200, timeout=30,
                         what=f"kube2sky /readiness; log: {self.log_path}")

    def stop(self, sig: int = signal.SIGTERM) -> int | None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        return self.proc.returncode if self.proc is not None else None


@pytest.fixture
def api():
    with apiserver.ApiServer(bookmark_interval=0.5) as server:
        server.create(service("kubernetes", "10.0.0.1", ports=(("https", 443),)))
        server.create(service("kube-dns", "10.0.0.53", ns="kube-system", ports=(("dns", 53),)))
        yield server


@pytest.fixture
def kube2sky_proc(tmp_path):
    started: list[Kube2sky] = []

    def start(*args: str, name: str = "kube2sky") -> Kube2sky:
        proc = Kube2sky(tmp_path, *args, name=name).start()
        started.append(proc)
        return proc

    yield start
    for proc in started:
        proc.stop(signal.SIGKILL)


def api_args(api: apiserver.ApiServer, etcd: Db) -> list[str]:
    return ["--kube-master-url", api.url, *etcd.args]


# ---------------------------------------------------------------- scenarios

def test_follows_creates_updates_and_deletes(etcd, api, kube2sky_proc):
    k = kube2sky_proc(*api_args(api, etcd))
    k.wait_ready()
    converge(etcd, lambda: expected(api, etcd))
    assert k.http("/healthz") == (200, "ok\n")

    api.create(service("web", "10.0.0.20", ports=(("http", 80), ("https", 443))))
    api.create(service("db", "None", ports=(("pg", 5432),)))
    api.create(endpoint_slice("db-a", "db", [("10.1.0.1", "db-0", True), ("10.1.0.2", "db-1", True)]))
    api.create(service("search", None, type="ExternalName", externalName="www.example.com"))
    converge(etcd, lambda: expected(api, etcd))
    keys = etcd_prefix(etcd)
    assert msg.name_to_key("web.default.svc.cluster.local.", etcd.prefix) + "/" + msg.leaf_label(
        '{"host":"10.0.0.20","priority":10,"weight":10,"ttl":30}') in keys
    assert any(key.startswith(f"/{etcd.prefix}/local/cluster/svc/default/db/db-1/") for key in keys)

    api.update(service("web", "10.0.0.21"))  # new IP, one port fewer
    api.update(endpoint_slice("db-a", "db", [("10.1.0.1", "db-0", True), ("10.1.0.2", "db-1", False),
                                             ("10.1.0.3", "db-2", True)]))
    converge(etcd, lambda: expected(api, etcd))
    assert not any("/db/db-1/" in key for key in etcd_prefix(etcd))

    api.delete("Service", "default", "web")
    api.delete("EndpointSlice", "default", "db-a")
    converge(etcd, lambda: expected(api, etcd))
    assert not any("/svc/default/web" in key or "/db/db-" in key for key in etcd_prefix(etcd))

    status, metrics = k.http("/metrics")
    assert status == 200
    for name in ('kube2sky_events_total{kind="Service",type="ADDED"}', "kube2sky_etcd_writes_total",
                 "kube2sky_programming_latency_seconds_bucket", "kube2sky_sync_duration_seconds",
                 "kube2sky_keys_managed", 'kube2sky_relists_total{cause="start",kind="Service"}'):
        assert name in metrics
    assert k.stop() == 0
    assert "received SIGTERM" in k.log


def literal(prefix: str, rows: str) -> dict[str, str]:
    """{key: value} from lines `<key below /<prefix>> <value>`."""
    pairs = (line.split(None, 1) for line in rows.strip().splitlines())
    return {f"/{prefix}{key}": value for key, value in pairs}


# The whole prefix for the api fixture's two services plus web, db and its endpoints, written
# by hand from the specification (REFERENCE 1 and 3.2): leaves are FNV-1a 32-bit of the value in
# Go's %x (no zero padding: fd6175, 8510ea4). Legacy names off: only the spec's names.
SPEC_LITERAL = """
/local/cluster/dns-version/1204c6e5 {"text":"1.1.0","ttl":30}
/local/cluster/dns/ns/62326979 {"host":"10.0.0.53","priority":10,"weight":10,"ttl":30}
/local/cluster/svc/default/kubernetes/f488b1a2 {"host":"10.0.0.1","priority":10,"weight":10,"ttl":30}
/local/cluster/svc/default/kubernetes/_tcp/_https/f488b1a2 {"host":"kubernetes.default.svc.cluster.local.","port":443,"priority":10,"weight":10,"ttl":30}
/arpa/in-addr/10/0/0/1/25a5b606 {"host":"kubernetes.default.svc.cluster.local.","priority":10,"weight":10,"ttl":30}
/local/cluster/svc/kube-system/kube-dns/62326979 {"host":"10.0.0.53","priority":10,"weight":10,"ttl":30}
/local/cluster/svc/kube-system/kube-dns/_tcp/_dns/62326979 {"host":"kube-dns.kube-system.svc.cluster.local.","port":53,"priority":10,"weight":10,"ttl":30}
/arpa/in-addr/10/0/0/53/590ee975 {"host":"kube-dns.kube-system.svc.cluster.local.","priority":10,"weight":10,"ttl":30}
/local/cluster/svc/default/web/fd6175 {"host":"10.0.0.88","priority":10,"weight":10,"ttl":30}
/local/cluster/svc/default/web/_tcp/_http/fd6175 {"host":"web.default.svc.cluster.local.","port":80,"priority":10,"weight":10,"ttl":30}
/arpa/in-addr/10/0/0/88/6e8911f8 {"host":"web.default.svc.cluster.local.","priority":10,"weight":10,"ttl":30}
/local/cluster/svc/default/db/db-0/c0206dbb {"host":"10.1.0.1","priority":10,"weight":10,"ttl":30}
/local/cluster/svc/default/db/10-1-0-2/3019ef74 {"host":"10.1.0.2","priority":10,"weight":10,"ttl":30}
/local/cluster/svc/default/db/_tcp/_pg/34fb9c46 {"host":"db-0.db.default.svc.cluster.local.","port":5432,"priority":10,"weight":10,"ttl":30}
/local/cluster/svc/default/db/_tcp/_pg/8510ea4 {"host":"10-1-0-2.db.default.svc.cluster.local.","port":5432,"priority":10,"weight":10,"ttl":30}
/arpa/in-addr/10/1/0/1/900ecf7f {"host":"db-0.db.default.svc.cluster.local.","priority":10,"weight":10,"ttl":30}
/arpa/in-addr/10/1/0/2/c8a67099 {"host":"10-1-0-2.db.default.svc.cluster.local.","priority":10,"weight":10,"ttl":30}
"""


def test_etcd_holds_the_literal_records_of_the_specification(etcd, api, kube2sky_proc):
    """The whole prefix equals text written from the specification, not from records.desired()."""
    api.create(service("web", "10.0.0.88", ports=(("http", 80),)))
    api.create(service("db", "None", ports=(("pg", 5432),)))
    api.create(endpoint_slice("db-a", "db", [("10.1.0.1", "db-0", True), ("10.1.0.2", None, True),
                                             ("10.1.0.3", "db-2", False)]))
    k = kube2sky_proc(*api_args(api, etcd), "--no-legacy-names")
    k.wait_ready()
    converge(etcd, literal(etcd.prefix, SPEC_LITERAL))
    # and the same objects by the code's own account (the other scenarios compare with that)
    assert etcd_prefix(etcd) == expected(api, etcd, legacy_names=False)


def test_410_relists_and_deletes_orphans(etcd, api, kube2sky_proc):
    api.create(service("old", "10.0.0.30"))
    k = kube2sky_proc(*api_args(api, etcd))
    k.wait_ready()
    converge(etcd, lambda: expected(api, etcd))
    # changes whose events are lost: only a relist can see them
    api.delete("Service", "default", "old", silent=True)
    api.create(service("new", "10.0.0.31"), silent=True)
    api.expire_history()
    converge(etcd, lambda: expected(api, etcd))
    assert "relisted services (cause: 410 Gone)" in k.log


def test_watch_dropped_and_unknown_events_survive(etcd, api, kube2sky_proc):
    k = kube2sky_proc(*api_args(api, etcd))
    k.wait_ready()
    api.inject("Service", {"type": "WEIRD", "object": service("x", "10.0.0.99")})
    api.drop_watches()
    api.create(service("after", "10.0.0.40"))
    converge(etcd, lambda: expected(api, etcd))
    procs.wait_until(lambda: "unknown event type 'WEIRD'" in k.log, what="the warning")
    assert k.alive()


def test_restart_converges_exactly(etcd, api, kube2sky_proc):
    api.create(service("stay", "10.0.0.50"))
    api.create(service("goes", "10.0.0.51"))
    api.create(service("moves", "10.0.0.52"))
    k = kube2sky_proc(*api_args(api, etcd))
    k.wait_ready()
    converge(etcd, lambda: expected(api, etcd))
    k.stop(signal.SIGKILL)

    api.delete("Service", "default", "goes")
    api.update(service("moves", "10.0.0.53"))
    api.create(service("added", "10.0.0.54"))
    api.expire_history()
    # a record an older kube2sky left behind (hash-named leaf), and one an operator wrote by hand
    orphan_value = '{"host":"10.9.9.9","priority":10,"weight":10,"ttl":30}'
    etcd.ctl("put", f"/{etcd.prefix}/local/cluster/svc/default/ghost/{msg.leaf_label(orphan_value)}", orphan_value)
    hand = {f"/{etcd.prefix}/local/cluster/registry/x1": '{"host":"10.5.5.5"}'}
    etcd.ctl("put", *next(iter(hand.items())))

    k2 = kube2sky_proc(*api_args(api, etcd), name="kube2sky-2")
    k2.wait_ready()
    converge(etcd, lambda: expected(api, etcd), extra=hand)


BAD_VALUE = '{"host":"web.default.svc.cluster.local.","port":1e400}'


def test_bad_value_in_etcd_is_never_fatal(etcd, api, kube2sky_proc):
    """Issue 11.2: a value no record can hold under the prefix (etcdctl put by hand) neither
    stops kube2sky nor the sync: it is left alone as not kube2sky's, the rest converges."""
    bad_key = f"/{etcd.prefix}/local/cluster/svc/default/web/_tcp/_http/abc"
    etcd.ctl("put", bad_key, BAD_VALUE)
    api.create(service("web", "10.0.0.20"))
    k = kube2sky_proc(*api_args(api, etcd), "--resync-period", "300ms")
    k.wait_ready()
    converge(etcd, lambda: expected(api, etcd), extra={bad_key: BAD_VALUE})
    api.create(service("after", "10.0.0.21"))
    converge(etcd, lambda: expected(api, etcd), extra={bad_key: BAD_VALUE})
    def verifies() -> float:
        lines = [line for line in k.http("/metrics")[1].splitlines()
                 if line.startswith("kube2sky_sync_duration_seconds_count ")]
        return float(lines[0].split()[1]) if lines else 0.0

    procs.wait_until(lambda: verifies() >= 3, what="periodic verifies (full sync + 2)")
    assert k.alive()
    assert "holds a value that is not a record" in k.log
    status, metrics = k.http("/metrics")
    assert status == 200
    count = [line for line in metrics.splitlines() if line.startswith("kube2sky_bad_etcd_values_total ")]
    assert count and float(count[0].split()[1]) >= 1


def test_periodic_resync_repairs_drift(etcd, api, kube2sky_proc):
    k = kube2sky_proc(*api_args(api, etcd), "--resync-period", "200ms")
    k.wait_ready()
    converge(etcd, lambda: expected(api, etcd))
    etcd.ctl("del", "--prefix", f"/{etcd.prefix}/local/cluster/svc/")
    converge(etcd, lambda: expected(api, etcd))
    assert "verified etcd (periodic resync)" in k.log


def test_etcd_outage_survived(own_etcd, api, kube2sky_proc):
    etcd = own_etcd
    k = kube2sky_proc(*api_args(api, etcd), "--etcd-mutation-timeout", "1s")
    k.wait_ready()
    converge(etcd, lambda: expected(api, etcd))
    etcd.stop()
    api.create(service("during", "10.0.0.60"))
    api.delete("Service", "default", "kubernetes")
    procs.wait_until(lambda: "etcd error" in k.log and "retry #" in k.log, timeout=20, what="the etcd error log")
    etcd.start()
    converge(etcd, lambda: expected(api, etcd))
    assert k.alive()


def test_readiness_waits_for_the_first_sync(own_etcd, api, kube2sky_proc):
    etcd = own_etcd
    etcd.stop()
    k = kube2sky_proc(*api_args(api, etcd), "--etcd-mutation-timeout", "1s")
    procs.wait_until(lambda: k.alive() and k.http("/readiness")[0] == 503, timeout=30, what="503")
    assert k.http("/healthz")[0] == 200
    etcd.start()
    k.wait_ready()
    converge(etcd, lambda: expected(api, etcd))


def test_pods_verified(etcd, api, kube2sky_proc):
    def pod(name: str, ip: str, phase: str = "Running") -> dict:
        return {"kind": "Pod", "metadata": {"name": name, "namespace": "default"},
                "status": {"phase": phase, "podIP": ip, "podIPs": [{"ip": ip}]}}

    api.create(pod("p1", "10.244.0.11"))
    k = kube2sky_proc(*api_args(api, etcd), "--pods", "verified")
    k.wait_ready()
    verified = settings_mod.PodsMode.VERIFIED
    converge(etcd, lambda: expected(api, etcd, pods=verified))
    assert any("/pod/default/10-244-0-11/" in key for key in etcd_prefix(etcd))
    api.create(pod("p2", "10.244.0.12"))
    api.update(pod("p1", "10.244.0.11", phase="Succeeded"))
    converge(etcd, lambda: expected(api, etcd, pods=verified))
    keys = etcd_prefix(etcd)
    assert any("/pod/default/10-244-0-12/" in key for key in keys)
    assert not any("/pod/default/10-244-0-11/" in key for key in keys)


def test_token_file(etcd, api, kube2sky_proc, tmp_path):
    api.token = "s3cret"
    token = tmp_path / "token"
    token.write_text("wrong\n")
    bad = kube2sky_proc(*api_args(api, etcd), "--token-file", str(token), name="bad")
    procs.wait_until(lambda: "401" in bad.log and "retry #" in bad.log, timeout=30, what="the 401 log")
    bad.stop()
    token.write_text("s3cret\n")
    good = kube2sky_proc(*api_args(api, etcd), "--token-file", str(token), name="good")
    good.wait_ready()
    converge(etcd, lambda: expected(api, etcd))


def test_endpoints_when_slices_are_not_served(etcd, kube2sky_proc):
    with apiserver.ApiServer(serve_endpointslices=False, bookmark_interval=0.5) as api:
        api.create(service("cache", "None", ports=(("redis", 6379),)))
        api.create({"kind": "Endpoints", "metadata": {"name": "cache", "namespace": "default"},
                    "subsets": [{"addresses": [{"ip": "10.2.0.1"}, {"ip": "10.2.0.2", "hostname": "c-1"}],
                                 "ports": [{"name": "redis", "port": 6379, "protocol": "TCP"}]}]})
        k = kube2sky_proc(*api_args(api, etcd))
        k.wait_ready()
        converge(etcd, lambda: expected(api, etcd))
        assert "EndpointSlices are not served" in k.log
        assert any("/svc/default/cache/c-1/" in key for key in etcd_prefix(etcd))
        k.stop()


def manifests_expected(folder: str, etcd: Db) -> dict[str, str]:
    source = manifests.ManifestSource(folder)
    state = records.State(
        services=[objects.parse_service(o) for o in source.list(k8swatch.SERVICES)[0]],
        slices=[objects.parse_endpoint_slice(o) for o in source.list(k8swatch.ENDPOINT_SLICES)[0]]
        + [objects.parse_endpoints(o) for o in source.list(k8swatch.ENDPOINTS)[0]])
    return records.desired(state, settings_mod.Settings(prefix=etcd.prefix))


def test_manifests_source(etcd, kube2sky_proc, tmp_path):
    folder = tmp_path / "manifests"
    shutil.copytree(os.path.join(ROOT, "examples", "manifests"), folder)
    k = kube2sky_proc("--manifests", str(folder), *etcd.args)
    k.wait_ready()
    converge(etcd, manifests_expected(str(folder), etcd))
    assert any("/svc/default/db/db-0/" in key for key in etcd_prefix(etcd))
    (folder / "extra.yaml").write_text(
        "apiVersion: v1\nkind: Service\nmetadata: {name: extra, namespace: default}\n"
        "spec: {clusterIP: 10.96.1.1, ports: [{name: http, port: 8080}]}\n")
    os.remove(folder / "headless-cache-endpoints.yaml")
    converge(etcd, manifests_expected(str(folder), etcd))
    assert "manifests changed" in k.log


def test_dry_run_prints_the_manifest_records(tmp_path):
    default = Db.__new__(Db)
    default.prefix = "skydns"
    folder = os.path.join(ROOT, "examples", "manifests")
    out = subprocess.run([sys.executable, "-m", "kube2sky", "--manifests", folder, "--dry-run"],
                         capture_output=True, text=True, timeout=60, cwd=ROOT)
    assert out.returncode == 0, out.stderr
    printed = dict(line.split(" ", 2)[1:] for line in out.stdout.splitlines())
    assert printed == manifests_expected(folder, default)


def test_dry_run_with_the_api_keeps_printing(api, tmp_path):
    out_path = tmp_path / "out.txt"
    with open(out_path, "wb") as out:
        proc = subprocess.Popen([sys.executable, "-m", "kube2sky", "--kube-master-url", api.url, "--dry-run"],
                                stdout=out, stderr=subprocess.DEVNULL, cwd=ROOT)
    try:
        procs.wait_until(lambda: "/svc/default/kubernetes/" in out_path.read_text(), timeout=30, what="first records")
        api.create(service("later", "10.0.0.80"))
        procs.wait_until(lambda: "put /skydns/local/cluster/svc/default/later/" in out_path.read_text(),
                         timeout=30, what="the change")
        api.delete("Service", "default", "later")
        procs.wait_until(lambda: "delete /skydns/local/cluster/svc/default/later/" in out_path.read_text(),
                         timeout=30, what="the delete")
    finally:
        proc.terminate()
        proc.wait(10)


def test_leader_election_one_writer(etcd, api, kube2sky_proc):
    args = [*api_args(api, etcd), "--leader-elect", "--leader-ttl", "2"]
    a = kube2sky_proc(*args, name="a")
    b = kube2sky_proc(*args, name="b")
    a.wait_ready()
    b.wait_ready()
    converge(etcd, lambda: expected(api, etcd))
    procs.wait_until(lambda: ("became the leader" in a.log) != ("became the leader" in b.log), what="one leader")
    leader, standby = (a, b) if "became the leader" in a.log else (b, a)
    assert "kube2sky_leader 1.0" in leader.http("/metrics")[1]
    assert "kube2sky_leader 0.0" in standby.http("/metrics")[1]
    assert "kube2sky_etcd_transactions_total 0.0" in standby.http("/metrics")[1]
    leader.stop(signal.SIGKILL)
    api.create(service("after-failover", "10.0.0.70"))
    converge(etcd, lambda: expected(api, etcd), timeout=30)
    assert "became the leader" in standby.log


# ---------------------------------------------------------------- DNS through a real skydns

def lookup(server: skydnsproc.Skydns, name: str, rdtype: str = "A") -> tuple[int, set[str]]:
    """The rcode and the rdtype answers of one UDP query."""
    reply = server.udp(name, rdtype)
    want = dns.rdatatype.from_text(rdtype)
    return reply.rcode(), {r.to_text() for rrset in reply.answer if rrset.rdtype == want for r in rrset}


@pytest.fixture
def skydns_server(etcd):
    server = skydnsproc.Skydns(etcd.url, prefix=etcd.prefix)
    try:
        yield server
    finally:
        server.stop()


def answers(server: skydnsproc.Skydns, name: str, rdtype: str, want: set[str]):
    def check():
        return lookup(server, name, rdtype) == (dns.rcode.NOERROR, want)
    procs.wait_until(check, timeout=20, interval=0.1, what=f"{name} {rdtype} -> {want}")


def test_dns_answers_follow(etcd, api, kube2sky_proc, skydns_server):
    k = kube2sky_proc(*api_args(api, etcd))
    k.wait_ready()
    api.create(service("web", "10.0.0.20"))
    api.create(service("db", "None", ports=(("pg", 5432),)))
    api.create(endpoint_slice("db-a", "db", [("10.1.0.1", "db-0", True), ("10.1.0.2", "db-1", True)]))
    answers(skydns_server, "web.default.svc.cluster.local.", "A", {"10.0.0.20"})
    answers(skydns_server, "db.default.svc.cluster.local.", "A", {"10.1.0.1", "10.1.0.2"})
    answers(skydns_server, "db-1.db.default.svc.cluster.local.", "A", {"10.1.0.2"})
    answers(skydns_server, "_pg._tcp.db.default.svc.cluster.local.", "SRV",
            {"10 50 5432 db-0.db.default.svc.cluster.local.", "10 50 5432 db-1.db.default.svc.cluster.local."})
    answers(skydns_server, "20.0.0.10.in-addr.arpa.", "PTR", {"web.default.svc.cluster.local."})
    api.update(service("web", "10.0.0.21"))
    answers(skydns_server, "web.default.svc.cluster.local.", "A", {"10.0.0.21"})
    answers(skydns_server, "21.0.0.10.in-addr.arpa.", "PTR", {"web.default.svc.cluster.local."})
    api.delete("Service", "default", "web")

    def gone():
        return lookup(skydns_server, "web.default.svc.cluster.local.", "A")[0] == dns.rcode.NXDOMAIN
    procs.wait_until(gone, timeout=20, interval=0.1, what="NXDOMAIN after delete")
    with contextlib.suppress(Exception):
        k.stop()


# ---------------------------------------------------------------- TLS: the certificate names another host

def test_certificate_name_mismatch_is_explained(etcd, kube2sky_proc, tmp_path):
    if shutil.which("openssl") is None:
        pytest.skip("openssl not installed")
    cert, key = tmp_path / "apiserver.crt", tmp_path / "apiserver.key"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", str(key),
                    "-out", str(cert), "-days", "2", "-subj", "/CN=kubernetes",
                    "-addext", "subjectAltName=DNS:localhost,DNS:kubernetes"],
                   check=True, capture_output=True, timeout=60)
    with apiserver.ApiServer(tls=(str(cert), str(key)), bookmark_interval=0.5) as api:
        api.create(service("web", "10.0.0.20"))
        # reached by IP, which the certificate does not name
        bad = kube2sky_proc("--kube-master-url", api.url, "--ca-file", str(cert), *etcd.args,
                            name="bad")
        procs.wait_until(lambda: "not valid for https://127.0.0.1" in bad.log, timeout=30, what="the TLS hint")
        assert "point --kube-master-url at a name in the certificate" in bad.log
        assert "KUBERNETES_SERVICE_HOST" in bad.log
        assert bad.alive() and bad.http("/readiness")[0] == 503
        bad.stop()
        # the fix the log suggests: a name in the certificate
        good = kube2sky_proc("--kube-master-url", f"https://localhost:{api.port}", "--ca-file", str(cert),
                             *etcd.args, name="good")
        good.wait_ready()
        converge(etcd, lambda: expected(api, etcd))
        good.stop()
        # or, on a test cluster, no verification at all
        insecure = kube2sky_proc("--kube-master-url", api.url, "--insecure-skip-tls-verify", *etcd.args,
                                 name="insecure")
        insecure.wait_ready()
        assert "not verifying the API server certificate" in insecure.log


# ---------------------------------------------------------------- TLS to etcd

def _openssl(folder, *args: str) -> None:
    subprocess.run(["openssl", *args], cwd=folder, check=True, capture_output=True, timeout=60)


def etcd_pki(folder) -> dict[str, str]:
    """A one-day CA, a server certificate for 127.0.0.1 and a client certificate, as PEM files."""
    key = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"]
    _openssl(folder, "req", "-x509", *key, "-keyout", "ca.key", "-out", "ca.pem", "-days", "1",
             "-subj", "/CN=kube2sky test etcd CA")
    for name, usage in (("server", "serverAuth"), ("client", "clientAuth")):
        _openssl(folder, "req", *key, "-keyout", f"{name}.key", "-out", f"{name}.csr", "-subj", f"/CN={name}")
        (folder / f"{name}.ext").write_text(f"subjectAltName=IP:127.0.0.1\nextendedKeyUsage={usage}\n")
        _openssl(folder, "x509", "-req", "-in", f"{name}.csr", "-CA", "ca.pem", "-CAkey", "ca.key",
                 "-CAcreateserial", "-days", "1", "-extfile", f"{name}.ext", "-out", f"{name}.pem")
    return {name: str(folder / name) for name in
            ("ca.pem", "server.pem", "server.key", "client.pem", "client.key")}


class TlsDb:
    """A private etcd that serves clients only over TLS and wants a client certificate."""

    prefix = "skydns"

    def __init__(self, folder) -> None:
        self.pki = etcd_pki(folder)
        port, peer = procs.free_port(), procs.free_port()
        self.url = f"https://127.0.0.1:{port}"
        self.log = open(folder / "etcd.log", "wb")  # noqa: SIM115 - closed in close()
        self.proc = subprocess.Popen([
            "etcd", "--name", "tls", "--data-dir", str(folder / "etcd-data"),
            "--listen-client-urls", self.url, "--advertise-client-urls", self.url,
            "--listen-peer-urls", f"http://127.0.0.1:{peer}",
            "--initial-advertise-peer-urls", f"http://127.0.0.1:{peer}",
            "--initial-cluster", f"tls=http://127.0.0.1:{peer}",
            "--cert-file", self.pki["server.pem"], "--key-file", self.pki["server.key"],
            "--trusted-ca-file", self.pki["ca.pem"], "--client-cert-auth",
        ], stdout=self.log, stderr=subprocess.STDOUT)

    def ctl(self, *args: str) -> str:
        return subprocess.run(
            ["etcdctl", "--endpoints", self.url, "--cacert", self.pki["ca.pem"],
             "--cert", self.pki["client.pem"], "--key", self.pki["client.key"], *args],
            capture_output=True, check=True, timeout=20, env=dict(os.environ, ETCDCTL_API="3"),
        ).stdout.decode()

    def close(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(5)
        self.log.close()


@pytest.fixture
def tls_etcd(tmp_path):
    if shutil.which("openssl") is None:
        pytest.skip("openssl not installed")
    db = TlsDb(tmp_path)
    try:
        procs.wait_until(lambda: db.ctl("put", "/tls-probe", "ok"), timeout=20, what="etcd over TLS")
        yield db
    finally:
        db.close()


def test_etcd_tls_with_client_certificate(tls_etcd, api, kube2sky_proc):
    db, pki = tls_etcd, tls_etcd.pki
    k = kube2sky_proc("--kube-master-url", api.url, "--etcd-server", db.url, "--etcd-cafile", pki["ca.pem"],
                      "--etcd-certfile", pki["client.pem"], "--etcd-keyfile", pki["client.key"])
    k.wait_ready()
    converge(db, lambda: expected(api, db))
    api.create(service("secure", "10.0.0.70"))
    converge(db, lambda: expected(api, db))
    assert "etcd over TLS" in k.log


def test_etcd_tls_refused_without_client_certificate(tls_etcd, api, kube2sky_proc):
    db, pki = tls_etcd, tls_etcd.pki
    k = kube2sky_proc("--kube-master-url", api.url, "--etcd-server", db.url, "--etcd-cafile", pki["ca.pem"],
                      "--etcd-mutation-timeout", "1s")
    procs.wait_until(lambda: "etcd error" in k.log and "retry #2" in k.log, timeout=30,
                     what=f"the etcd TLS error with its retries; log: {k.log_path}")
    line = next(line for line in k.log.splitlines() if "etcd error" in line)
    assert db.url in line and "--etcd-certfile" in line, line
    assert k.alive() and k.http("/readiness")[0] == 503
    assert etcd_prefix(db) == {}


def test_etcd_https_without_ca_uses_the_system_roots(tls_etcd, api, kube2sky_proc):
    db, pki = tls_etcd, tls_etcd.pki
    # our test CA is not among the system roots: the server certificate is refused
    k = kube2sky_proc("--kube-master-url", api.url, "--etcd-server", db.url, "--etcd-certfile", pki["client.pem"],
                      "--etcd-keyfile", pki["client.key"], "--etcd-mutation-timeout", "1s")
    procs.wait_until(lambda: "etcd error" in k.log and "retry #2" in k.log, timeout=30,
                     what=f"the etcd TLS error with its retries; log: {k.log_path}")
    line = next(line for line in k.log.splitlines() if "etcd error" in line)
    assert "--etcd-cafile" in line, line
    assert k.alive() and k.http("/readiness")[0] == 503


def test_list_pages_are_trimmed_and_consistent(api):
    """The transport trims each page as it arrives; the double (like the real server) serves
    every page of a list at the first page's resourceVersion, and a continue token from
    before a 410 is refused with 410 Gone."""
    for i in range(5):
        api.create(service(f"s{i}", f"10.0.1.{i}"))
    transport = k8swatch.ApiTransport(k8swatch.resolve(k8swatch.Connection(master_url=api.url)), page_size=2,
                                      trim=lambda resource, raw: objects.parse(resource.kind, raw))
    pages: list[list] = []
    items, rv = transport.list(k8swatch.SERVICES, on_page=pages.append)
    assert all(isinstance(item, objects.Service) for item in items)
    assert {item.name for item in items} == {o["metadata"]["name"] for o in api.objects("Service")}
    assert int(rv) <= api.resource_version
    assert [len(page) for page in pages] == [2, 2, 2, 1] and [o for page in pages for o in page] == items

    first = transport._get(k8swatch.SERVICES.path(), [("limit", "3")], stream=False)
    api.create(service("late", "10.0.1.99"))  # after the first page: not in this listing
    rest = transport._get(k8swatch.SERVICES.path(), [("limit", "100"), ("continue", first["metadata"]["continue"])],
                          stream=False)
    names = [o["metadata"]["name"] for o in first["items"] + rest["items"]]
    assert "late" not in names and len(names) == 7
    assert rest["metadata"]["resourceVersion"] == first["metadata"]["resourceVersion"]

    again = transport._get(k8swatch.SERVICES.path(), [("limit", "2")], stream=False)
    api.expire_history()
    with pytest.raises(k8swatch.Expired):
        transport._get(k8swatch.SERVICES.path(), [("limit", "2"), ("continue", again["metadata"]["continue"])],
                       stream=False)


@pytest.mark.parametrize(("plans", "ops", "size", "nested_after"), [
    pytest.param(8, 16, 1, True, id="within etcd's limit: one request"),
    pytest.param(30, 1000, 1, False, id="too many operations: one transaction per plan"),
    pytest.param(200, 100, 120, False, id="too many bytes: one transaction per plan"),
])
def test_commit_all_writes_every_plan_nested_or_not(etcd, plans, ops, size, nested_after):
    """etcdwriter.commit_all against a real etcd (--max-txn-ops 1024 here): nested
    transactions when they fit, else etcd's refusal turns nesting off and every plan is still
    written."""
    import asyncio

    from kube2sky import etcdwriter, reconcile

    batch = [reconcile.Plan(tuple((f"/{etcd.prefix}/t/{i}/{j:04d}", "v" * size) for j in range(ops)))
             for i in range(plans)]

    async def go():
        store = etcdwriter.Etcd((etcd.url,))
        try:
            await store.commit_all(batch)
            return store.nested
        finally:
            await store.close()

    assert asyncio.run(go()) is nested_after
    have = etcd_prefix(etcd)
    assert len(have) == plans * ops
    assert all(have[k] == v for plan in batch for k, v in plan.puts)
