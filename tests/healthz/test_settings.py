"""Spec parsers: durations, servers, probe specs -> values or one-line SpecError."""

from __future__ import annotations

import pytest

from healthz import settings as settings_

DURATIONS = {
    "2s": 2.0, "500ms": 0.5, "1m": 60.0, "1m30s": 90.0, "1.5h": 5400.0, "300us": 0.0003,
    "2": 2.0, "0.25": 0.25, "0s": 0.0, "1h2m3s4ms": 3723.004,
}


@pytest.mark.parametrize(("text", "seconds"), DURATIONS.items(), ids=DURATIONS.keys())
def test_duration(text: str, seconds: float) -> None:
    assert settings_.parse_duration(text) == pytest.approx(seconds)


@pytest.mark.parametrize("text", ["", "2x", "s", "-1s", "1s2", "2 s", "nan", "inf"])
def test_bad_duration(text: str) -> None:
    with pytest.raises(settings_.SpecError):
        settings_.parse_duration(text)


P = settings_.DnsProbe
PROBES = {
    "full": ("kubernetes=kubernetes.default.svc.cluster.local/A@127.0.0.1:53",
             P("kubernetes", "kubernetes.default.svc.cluster.local.", "A", "127.0.0.1", 53)),
    "default type and port": ("k=Kubernetes.Default.svc.cluster.local.@10.0.0.10",
                              P("k", "kubernetes.default.svc.cluster.local.", "A", "10.0.0.10", 53)),
    "srv, lower type": ("s=_https._tcp.kubernetes.default.svc.cluster.local/srv@127.0.0.1:1053",
                        P("s", "_https._tcp.kubernetes.default.svc.cluster.local.", "SRV", "127.0.0.1", 1053)),
    "ipv6 server with port": ("six=a.b/AAAA@[::1]:5353", P("six", "a.b.", "AAAA", "::1", 5353)),
    "ipv6 server no port": ("six=a.b@[fd00::10]", P("six", "a.b.", "A", "fd00::10", 53)),
    "bare ipv6 server": ("six=a.b@::1", P("six", "a.b.", "A", "::1", 53)),
    "expect and timeout": ("kubernetes=kubernetes.default.svc.cluster.local/A@127.0.0.1:53,expect=10.96.0.1,timeout=2s",
                           P("kubernetes", "kubernetes.default.svc.cluster.local.", "A", "127.0.0.1", 53,
                             timeout=2.0, expect=("10.96.0.1",))),
    "several expects": ("k=a.b@127.0.0.1,expect=10.0.0.1+10.0.0.2,expect=fd00:0::1",
                        P("k", "a.b.", "A", "127.0.0.1", 53, expect=("10.0.0.1", "10.0.0.2", "fd00::1"))),
    "expect a name": ("c=www.x/CNAME@127.0.0.1,expect=Web.X", P("c", "www.x.", "CNAME", "127.0.0.1", 53,
                                                               expect=("web.x.",))),
    "expect nxdomain": ("gone=nope.cluster.local@127.0.0.1,rcode=nxdomain",
                        P("gone", "nope.cluster.local.", "A", "127.0.0.1", 53, rcode="NXDOMAIN", min_answers=0)),
    "nodata ok, tcp, 500ms": ("n=a.b/TXT@127.0.0.1,min-answers=0,tcp,timeout=500ms",
                              P("n", "a.b.", "TXT", "127.0.0.1", 53, min_answers=0, tcp=True, timeout=0.5)),
}


@pytest.mark.parametrize(("spec", "probe"), PROBES.values(), ids=PROBES.keys())
def test_probe(spec: str, probe: settings_.DnsProbe) -> None:
    assert settings_.parse_probe(spec) == probe


BAD_PROBES = {
    "no name": ("kubernetes.default@127.0.0.1", "expected NAME="),
    "no server": ("k=a.b", "expected QNAME"),
    "empty server": ("k=a.b@", "expected QNAME"),
    "hostname server": ("k=a.b@dns.local", "is not an IP address"),
    "bad port": ("k=a.b@127.0.0.1:0", "port '0'"),
    "bad v6": ("k=a.b@[::1", "missing ']'"),
    "bad type": ("k=a.b/BOGUS@127.0.0.1", "type 'BOGUS'"),
    "empty label": ("k=a..b@127.0.0.1", "bad query name"),
    "bad name chars": ("k k=a.b@127.0.0.1", "name 'k k'"),
    "unknown option": ("k=a.b@127.0.0.1,retries=3", "unknown option 'retries=3'"),
    "bad timeout": ("k=a.b@127.0.0.1,timeout=soon", "bad duration 'soon'"),
    "zero timeout": ("k=a.b@127.0.0.1,timeout=0s", "timeout must be > 0"),
    "bad rcode": ("k=a.b@127.0.0.1,rcode=WHAT", "rcode 'WHAT'"),
}


@pytest.mark.parametrize(("spec", "message"), BAD_PROBES.values(), ids=BAD_PROBES.keys())
def test_bad_probe_names_the_spec(spec: str, message: str) -> None:
    with pytest.raises(settings_.SpecError) as err:
        settings_.parse_probe(spec)
    text = str(err.value)
    assert message in text and repr(spec) in text and "\n" not in text


def cmd(name: str, url: str = "/healthz") -> settings_.CommandProbe:
    return settings_.CommandProbe(name=name, command="true", url=url)


PATHS = {
    "no urls: /healthz serves all": (
        settings_.Settings(probes=(settings_.parse_probe("k=a@127.0.0.1"),), commands=(cmd("cmd"),)),
        {"/healthz": ("k", "cmd")}),
    "urls elsewhere: /healthz still all": (
        settings_.Settings(commands=(cmd("cmd1", "/healthz-dnsmasq"), cmd("cmd2", "/healthz-kubedns"))),
        {"/healthz-dnsmasq": ("cmd1",), "/healthz-kubedns": ("cmd2",), "/healthz": ("cmd1", "cmd2")}),
    "a url claims /healthz: exechealthz pairing": (
        settings_.Settings(commands=(cmd("cmd1", "/healthz"), cmd("cmd2", "/other"))),
        {"/healthz": ("cmd1",), "/other": ("cmd2",)}),
}


@pytest.mark.parametrize(("config", "paths"), PATHS.values(), ids=PATHS.keys())
def test_paths(config: settings_.Settings, paths: dict) -> None:
    assert config.paths() == paths
