"""skydns.doctor against fake upstreams and a stand-in skydns (a Forwarder behind a UDP listener).

The full run against a real skydns and etcd is in tests/integration/test_forwarding_upstreams.py.
"""

from __future__ import annotations

import asyncio

from skydns import doctor
from skydns import forwarding
from skydns import settings
from tests import upstreams


def run_doctor(*modes: str, stub_mode: str | None = None, public=("example.com.", "example.org.")):
    async def main():
        servers = [await upstreams.Upstream(m).start() for m in modes]
        stub = await upstreams.Upstream(stub_mode).start() if stub_mode else None
        try:
            stubs = (("corp.example.", (stub.upstream,)),) if stub else ()
            cfg = settings.Settings(nameservers=tuple(s.upstream for s in servers), stub_domains=stubs,
                                    domains=("cluster.local.",), forward_timeout=0.5, loop_check_interval=0)
            # the stand-in skydns forwards everything (cluster names included) to the first upstream
            fwd = forwarding.Forwarder(settings.Settings(nameservers=(servers[0].upstream,), loop_check_interval=0))
            async with upstreams.Listener(fwd) as sky:
                options = doctor.Options(settings.Upstream("127.0.0.1", sky.port), public, (), "", False, 0.5)
                report = await doctor.diagnose(cfg, options)
            return report, [s.port for s in servers], stub.port if stub else None
        finally:
            for s in [*servers, *([stub] if stub else [])]:
                await s.close()

    return asyncio.run(main())


def test_all_good():
    report, _, _ = run_doctor("ok", "ok")
    assert report.problems == []
    assert report.exit_code == 0
    text = doctor.render(report)
    assert "OK: no problem found" in text
    assert "NOERROR 1" in text


def test_names_the_upstream_that_cannot_resolve_public_names():
    report, ports, _ = run_doctor("ok", "nxdomain_public")
    assert report.exit_code == 1
    assert report.problems == [
        f"upstream 127.0.0.1:{ports[1]} cannot resolve public name example.com.: NXDOMAIN (resolved by 127.0.0.1:{ports[0]})",
        f"upstream 127.0.0.1:{ports[1]} cannot resolve public name example.org.: NXDOMAIN (resolved by 127.0.0.1:{ports[0]})",
    ]


def test_silent_upstream_and_unresolvable_names():
    report, ports, _ = run_doctor("ok", "timeout", public=("example.com.", "nx.example."))
    assert f"upstream 127.0.0.1:{ports[1]} does not answer at all (timeout)" in report.problems
    assert "no upstream resolves public name nx.example." in report.problems
    assert any(p.startswith("skydns 127.0.0.1:") and "nx.example." in p for p in report.problems)


def test_broken_stub_domain_upstream():
    report, _, stub = run_doctor("ok", stub_mode="refused")
    assert report.problems == [f"stub-domain upstream 127.0.0.1:{stub} for corp.example. does not answer it (REFUSED)"]
    assert f"stub corp.example. 127.0.0.1:{stub}" in doctor.render(report)
