"""Real resolvers in front of a real skydns, as pods and node-local caches use it (issue 10).

One private network namespace (tests/resolvers.py) holds etcd, kube2sky reading a manifests
folder, skydns on 127.0.0.10:53 (forwarding to a fake "internet" upstream that answers every
A query with HOST_IP), unbound on 127.0.0.2:53 and dnsmasq on 127.0.0.4:53 as node-local
caches. Clients run in a private mount namespace with a pod's resolv.conf (namespace default,
ndots:5): glibc getent, busybox nslookup, and musl's getaddrinfo built static with musl-gcc
(Debian's musl 1.2.3 never retries over TCP, like Alpine 3.17 and older).

What they check is issue 10's list, as real clients see it: no CNAME at SRV names (a cache
would serve SRV and AAAA queries from it), namespace / svc.<zone> names NODATA so the search
list falls through, and whole records in truncated UDP answers for clients that never retry
over TCP.
"""

from __future__ import annotations

import contextlib
import ipaddress
import json
import os
import shutil
import subprocess
import sys

import dns.flags
import dns.message
import dns.query
import dns.rcode
import dns.rdatatype
import pytest

from tests import procs, resolvers, skydnsproc, upstreams

pytestmark = pytest.mark.integration

ZONE = "cluster.local."
SKYDNS = "127.0.0.10"
UNBOUND = "127.0.0.2"
DNSMASQ = "127.0.0.4"
UPSTREAM = "127.0.0.3"
HOST_IP = "198.51.100.7"  # what the fake upstream answers for every name outside the cluster
WEB_IP, GRAFANA_IP = "10.96.0.20", "10.96.0.30"
DB = {"db-0": "10.244.1.5", "db-1": "10.244.2.7"}
BIG = [f"10.245.{i // 250}.{i % 250 + 1}" for i in range(200)]  # a 200-endpoint headless service


def _service(name: str, namespace: str, cluster_ip: str, ports: dict[str, int]) -> dict:
    return {"apiVersion": "v1", "kind": "Service", "metadata": {"name": name, "namespace": namespace},
            "spec": {"clusterIP": cluster_ip,
                     "ports": [{"name": n, "port": p, "protocol": "TCP"} for n, p in ports.items()]}}


def _slice(name: str, service: str, namespace: str, ports: dict[str, int], endpoints: list[dict]) -> dict:
    return {"apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice", "addressType": "IPv4",
            "metadata": {"name": name, "namespace": namespace, "labels": {"kubernetes.io/service-name": service}},
            "ports": [{"name": n, "port": p, "protocol": "TCP"} for n, p in ports.items()],
            "endpoints": endpoints}


def manifests() -> list[dict]:
    """What the cluster holds: the kube2sky input (JSON documents are YAML too)."""
    ready = {"ready": True}
    docs = [{"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": ns}} for ns in ("default", "monitoring")]
    docs.append(_service("web", "default", WEB_IP, {"http": 80, "https": 443}))
    docs.append(_service("grafana", "monitoring", GRAFANA_IP, {"http": 3000}))
    docs.append(_service("db", "default", "None", {"pg": 5432}))
    docs.append(_slice("db-abcde", "db", "default", {"pg": 5432},
                       [{"addresses": [ip], "hostname": host, "conditions": ready} for host, ip in DB.items()]))
    docs.append(_service("big", "default", "None", {"http": 8080}))
    for part in range(2):  # EndpointSlices hold at most 100 endpoints each
        docs.append(_slice(f"big-{part}", "big", "default", {"http": 8080},
                           [{"addresses": [ip], "conditions": ready} for ip in BIG[part * 100:(part + 1) * 100]]))
    return docs


class Cluster:
    """Handles to what the module fixture started."""

    def __init__(self, folder: str, netns: resolvers.Netns) -> None:
        self.folder = folder
        self.netns = netns
        self.musl: str | None = None

    def pod(self, nameserver: str = SKYDNS) -> resolvers.Pod:
        return resolvers.Pod(os.path.join(self.folder, f"pod-{nameserver}"), nameserver)


def _query(server: str, name: str, rdtype: str, tcp: bool = False, **kw) -> dns.message.Message:
    query = dns.message.make_query(name, rdtype, **kw)
    timeout = 2 * procs.TIMEOUT_SCALE
    if tcp:
        return dns.query.tcp(query, server, timeout=timeout)
    return dns.query.udp(query, server, timeout=timeout)


def _records(reply: dns.message.Message, rdtype: str) -> list[str]:
    wanted = dns.rdatatype.from_text(rdtype)
    return sorted(rd.to_text() for rrset in reply.answer if rrset.rdtype == wanted for rd in rrset)


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    reason = resolvers.missing("ip", "unshare", "etcd", "getent")
    if reason:
        pytest.skip(reason)
    folder = str(tmp_path_factory.mktemp("resolvers"))
    with contextlib.ExitStack() as stack:
        netns = stack.enter_context(resolvers.Netns())
        stack.enter_context(netns.inside())  # from here on, sockets and processes live in the namespace
        etcd = stack.enter_context(procs.running_etcd())
        internet = upstreams.Upstream(address=UPSTREAM)
        internet.answer_ip = HOST_IP
        stack.enter_context(upstreams.Thread(internet))
        source = os.path.join(folder, "manifests")
        os.makedirs(source)
        with open(os.path.join(source, "cluster.yaml"), "w", encoding="utf-8") as fh:
            fh.write("\n---\n".join(json.dumps(doc) for doc in manifests()) + "\n")
        kube2sky = stack.enter_context(resolvers.Daemon(
            "kube2sky", [sys.executable, "-m", "kube2sky", "--manifests", source, "--etcd-server", etcd.url],
            folder, env=skydnsproc.scrubbed_env()))
        stack.enter_context(skydnsproc.running(etcd.url, f"-addr={SKYDNS}:53", port=53,
                                               nameservers=f"{UPSTREAM}:{internet.port}"))

        def synced() -> bool:
            kube2sky.check()
            return len(_records(_query(SKYDNS, "big.default.svc." + ZONE, "A", tcp=True), "A")) == 200
        procs.wait_until(synced, timeout=30, interval=0.2, what="kube2sky's records for the 200-endpoint service")
        cluster = Cluster(folder, netns)
        if shutil.which("unbound"):
            cache = stack.enter_context(resolvers.unbound(
                os.path.join(folder, "unbound"), UNBOUND, {ZONE: f"{SKYDNS}@53"}, forward=f"{UPSTREAM}@{internet.port}"))
            cache.wait_answering(UNBOUND, "web.default.svc." + ZONE)
        if shutil.which("dnsmasq"):
            cache = stack.enter_context(resolvers.dnsmasq(
                os.path.join(folder, "dnsmasq"), DNSMASQ, {ZONE.rstrip("."): f"{SKYDNS}#53"},
                forward=f"{UPSTREAM}#{internet.port}"))
            cache.wait_answering(DNSMASQ, "web.default.svc." + ZONE)
        if shutil.which("musl-gcc"):
            cluster.musl = resolvers.musl_getaddrinfo(folder)
        yield cluster


def _cache(name: str) -> str:
    """The address of the cache named name (a binary name too); skips when it is not installed."""
    if reason := resolvers.missing(name):
        pytest.skip(reason)
    return {"unbound": UNBOUND, "dnsmasq": DNSMASQ}[name]


CACHES = ["unbound", "dnsmasq"]

# SRV names of kube2sky's records, their service's addresses, and the (port, target) pairs
# their SRV answer must hold.
SRV = [
    ("ClusterIP web", "_http._tcp.web.default.svc." + ZONE, [WEB_IP], {(80, "web.default.svc." + ZONE)}),
    ("headless db", "_pg._tcp.db.default.svc." + ZONE, sorted(DB.values()),
     {(5432, f"{host}.db.default.svc.{ZONE}") for host in DB}),
]


def _srv_rows():
    """SRV x CACHES."""
    for row_id, name, addresses, targets in SRV:
        for cache in CACHES:
            yield pytest.param(cache, name, addresses, targets, id=f"{row_id}-{cache}")


# -- node-local caches in front of skydns ----------------------------------------------------


@pytest.mark.parametrize("cache, name, addresses, targets", list(_srv_rows()))
def test_cache_a_at_srv_name_holds_no_cname(cluster, cache, name, addresses, targets):
    # what unbound's qname minimisation (and any prefetch) sends on its own before an SRV query;
    # CoreDNS answers the service's addresses there
    reply = _query(_cache(cache), name, "A")
    assert reply.rcode() == dns.rcode.NOERROR
    assert _records(reply, "CNAME") == []
    assert set(_records(reply, "A")) <= set(addresses)


@pytest.mark.parametrize("cache, name, addresses, targets", list(_srv_rows()))
def test_cache_srv_after_a_at_srv_name(cluster, cache, name, addresses, targets):
    # a CNAME cached from the A query would answer the SRV query in unbound (before issue 10:
    # port 0 and a hash-named target; a headless service lost all targets but one)
    server = _cache(cache)
    _query(server, name, "A")
    reply = _query(server, name, "SRV")
    got = {(rr.port, rr.target.to_text().lower()) for rrset in reply.answer
           if rrset.rdtype == dns.rdatatype.SRV for rr in rrset}
    assert got == targets, reply


@pytest.mark.parametrize("cache, name, addresses, targets", list(_srv_rows()))
def test_cache_aaaa_at_srv_name_after_a(cluster, cache, name, addresses, targets):
    server = _cache(cache)
    _query(server, name, "A")
    reply = _query(server, name, "AAAA")
    assert reply.rcode() == dns.rcode.NOERROR
    assert _records(reply, "CNAME") == [] and _records(reply, "AAAA") == []


@pytest.mark.parametrize("cache", CACHES)
def test_cache_addresses_after_srv_queries(cluster, cache):
    server = _cache(cache)
    for _, name, _, _ in SRV:
        _query(server, name, "A")
        _query(server, name, "SRV")
    assert _records(_query(server, "web.default.svc." + ZONE, "A"), "A") == [WEB_IP]
    reply = _query(server, "web.default.svc." + ZONE, "AAAA")
    assert reply.rcode() == dns.rcode.NOERROR and _records(reply, "AAAA") == []
    for host, ip in DB.items():
        assert _records(_query(server, f"{host}.db.default.svc.{ZONE}", "A"), "A") == [ip]
    reply = _query(server, "db.default.svc." + ZONE, "AAAA")
    assert reply.rcode() == dns.rcode.NOERROR and _records(reply, "AAAA") == []


@pytest.mark.parametrize("cache", CACHES)
def test_cache_headless_200_complete(cluster, cache):
    # the cache gets a truncated UDP answer from skydns, retries over TCP, and has all 200
    reply = _query(_cache(cache), "big.default.svc." + ZONE, "A", tcp=True)
    assert _records(reply, "A") == sorted(BIG)


# -- skydns itself: truncated UDP answers still carry addresses --------------------------------


TRUNCATED = [
    ("no EDNS", dict(), 29),
    ("EDNS 1232", dict(use_edns=0, payload=1232), 73),
]


@pytest.mark.parametrize("kw, count", [r[1:] for r in TRUNCATED], ids=[r[0] for r in TRUNCATED])
def test_headless_200_truncated_udp_has_whole_records(cluster, kw, count):
    reply = _query(SKYDNS, "big.default.svc." + ZONE, "A", **kw)
    assert reply.flags & dns.flags.TC
    got = _records(reply, "A")
    assert len(got) == count and set(got) <= set(BIG)
    assert _records(_query(SKYDNS, "big.default.svc." + ZONE, "A", tcp=True, **kw), "A") == sorted(BIG)


def test_busybox_nslookup_headless_200(cluster):
    if reason := resolvers.missing("busybox"):
        pytest.skip(reason)
    out = cluster.pod().run("busybox", "nslookup", "-type=a", "big")
    # busybox prints the server's own address first ("Address: 127.0.0.10:53"), then the answers
    got = [line.split()[-1] for line in out.stdout.splitlines() if line.startswith("Address") and ":53" not in line]
    assert len(got) >= 20, out.stdout + out.stderr  # 29 fit in 512 bytes; busybox never retries over TCP
    assert set(got) <= set(BIG), out.stdout


def test_musl_getaddrinfo_headless_200(cluster):
    if reason := resolvers.missing("musl-gcc"):
        pytest.skip(reason)
    out = cluster.pod().run(cluster.musl, "big")
    got = out.stdout.split()
    assert out.returncode == 0, out.stderr
    assert len(got) >= 20 and set(got) <= set(BIG)  # 29 fit in 512 bytes; musl 1.2.3 never retries over TCP


MUSL = [
    ("service", "web", [WEB_IP]),
    ("service in another namespace", "grafana.monitoring", [GRAFANA_IP]),
    ("headless endpoint", "db-0.db", [DB["db-0"]]),
    ("headless service", "db", sorted(DB.values())),
    ("outside the cluster", "example.org", [HOST_IP]),
]


@pytest.mark.parametrize("name, want", [r[1:] for r in MUSL], ids=[r[0] for r in MUSL])
def test_musl_getaddrinfo_search_list(cluster, name, want):
    if reason := resolvers.missing("musl-gcc"):
        pytest.skip(reason)
    out = cluster.pod().run(cluster.musl, name, "4")
    assert out.returncode == 0, out.stderr
    assert sorted(out.stdout.split()) == want


def test_musl_namespace_name_is_no_service_address(cluster):
    # musl ends the search at the first name that exists (NODATA included), so `monitoring`
    # gives "no address" at monitoring.svc.<zone>; never a service IP of the namespace
    if reason := resolvers.missing("musl-gcc"):
        pytest.skip(reason)
    out = cluster.pod().run(cluster.musl, "monitoring", "4")
    assert set(out.stdout.split()) <= {HOST_IP}, out.stdout


# -- glibc with a pod's search list ------------------------------------------------------------


GLIBC = [
    # id, name getent resolves through the search list, the addresses
    ("service", "web", [WEB_IP]),
    ("service.namespace", "grafana.monitoring", [GRAFANA_IP]),
    ("headless endpoint", "db-0.db", [DB["db-0"]]),
    ("headless service", "db", sorted(DB.values())),
    ("200 endpoints over TCP", "big", sorted(BIG)),
    ("outside the cluster", "example.org", [HOST_IP]),
    ("pod.<zone> falls through", "pod", [HOST_IP]),
    ("another namespace falls through", "monitoring", [HOST_IP]),
    ("own namespace falls through", "default", [HOST_IP]),
    ("svc.<zone> falls through", "svc", [HOST_IP]),
]


def _glibc_rows():
    for row_id, name, want in GLIBC:
        for server, address in (("skydns", SKYDNS), ("unbound", UNBOUND)):
            yield pytest.param(server, address, name, want, id=f"{row_id}-{server}")


@pytest.mark.parametrize("server, address, name, want", list(_glibc_rows()))
def test_glibc_getent_search_list(cluster, server, address, name, want):
    if server != "skydns" and (reason := resolvers.missing(server)):
        pytest.skip(reason)
    out = cluster.pod(address).run("getent", "ahostsv4", name)
    got = sorted({line.split()[0] for line in out.stdout.splitlines()})
    assert got == want, out.stdout[-2000:]


def test_netns_is_private(cluster):
    # the module really runs apart from the host: its loopback holds the node addresses
    out = subprocess.run(["ip", "-br", "addr", "show", "dev", "lo"], capture_output=True, text=True, timeout=10)
    assert resolvers.NODE_V4 in out.stdout
    assert ipaddress.ip_address(resolvers.NODE_V6).compressed in out.stdout
