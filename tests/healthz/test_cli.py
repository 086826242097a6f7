"""healthz CLI tables: (argv, env) -> Settings given to app.run, or exit 2 with one line."""

from __future__ import annotations

import dataclasses
import os
import subprocess
import sys

import pytest

from healthz import app, cli
from healthz import settings as settings_

D = settings_.Settings()
OLD_CMD = "nslookup kubernetes.default.svc.cluster.local 127.0.0.1 >/dev/null"


def cmd(command: str, name: str = "cmd", url: str = "/healthz", timeout: float = 0.0) -> settings_.CommandProbe:
    return settings_.CommandProbe(name=name, command=command, url=url, timeout=timeout)


def probe(spec: str, timeout: float = settings_.DEFAULT_PROBE_TIMEOUT) -> settings_.DnsProbe:
    return settings_.parse_probe(spec, default_timeout=timeout)


K = "kubernetes=kubernetes.default.svc.cluster.local/A@127.0.0.1:53"

GOOD = {
    # The kube-dns v11 pod, each manifest list element one argv entry.
    "exechealthz kube-dns args": (
        [f"-cmd={OLD_CMD}", "-port=8080"], {},
        dataclasses.replace(D, commands=(cmd(OLD_CMD),))),
    "exechealthz spaced values": (
        ["-cmd", OLD_CMD, "-port", "9090", "-period", "5s", "-latency", "1m", "-quiet"], {},
        dataclasses.replace(D, commands=(cmd(OLD_CMD),), port=9090, period=5.0, latency=60.0, quiet=True)),
    "double dashes": (
        [f"--cmd={OLD_CMD}", "--port=8081", "--period=500ms", "--latency=10s"], {},
        dataclasses.replace(D, commands=(cmd(OLD_CMD),), port=8081, period=0.5, latency=10.0)),
    "go bools": (["-cmd=true", "-quiet=true", "-output=false"], {},
                 dataclasses.replace(D, commands=(cmd("true"),), quiet=True, output=False)),
    "go bool false": (["-cmd=true", "-quiet=false"], {}, dataclasses.replace(D, commands=(cmd("true"),))),
    "cmd/url pairs": (
        ["-cmd=nslookup a 127.0.0.1", "-url=/healthz-dnsmasq", "-cmd=nslookup b 127.0.0.1:10053",
         "-url=/healthz-kubedns", "-port=8080", "-quiet"], {},
        dataclasses.replace(D, quiet=True, commands=(
            cmd("nslookup a 127.0.0.1", "cmd1", "/healthz-dnsmasq"),
            cmd("nslookup b 127.0.0.1:10053", "cmd2", "/healthz-kubedns")))),
    "native probe": (["--probe", K], {}, dataclasses.replace(D, probes=(probe(K),))),
    "probe with options and default timeout": (
        [f"--probe={K},expect=10.96.0.1", "--probe=six=a.b/AAAA@[::1]:1053", "--probe-timeout=1s"], {},
        dataclasses.replace(D, probes=(probe(f"{K},expect=10.96.0.1", 1.0), probe("six=a.b/AAAA@[::1]:1053", 1.0)))),
    "probes and a command, threshold, pending-fail, address": (
        [f"-probe={K}", "-cmd=true", "--failure-threshold=3", "--pending-fail", "--address=127.0.0.1",
         "--cmd-timeout=5s"], {},
        dataclasses.replace(D, probes=(probe(K),), commands=(cmd("true", timeout=5.0),), failure_threshold=3,
                            pending_ok=False, address="127.0.0.1")),
    "env vars": (
        [], {"HEALTHZ_PROBE": f"{K} other=a.b@127.0.0.1", "HEALTHZ_PORT": "9999", "HEALTHZ_PERIOD": "1s",
             "HEALTHZ_LATENCY": "5s", "HEALTHZ_QUIET": "true", "HEALTHZ_FAILURE_THRESHOLD": "2",
             "HEALTHZ_PENDING_OK": "false", "HEALTHZ_ADDRESS": "127.0.0.1", "HEALTHZ_PROBE_TIMEOUT": "3s"},
        dataclasses.replace(D, probes=(probe(K, 3.0), probe("other=a.b@127.0.0.1", 3.0)), port=9999, period=1.0,
                            latency=5.0, quiet=True, failure_threshold=2, pending_ok=False, address="127.0.0.1")),
    "env commands one per line": (
        [], {"HEALTHZ_CMD": f"{OLD_CMD}\nnslookup b 127.0.0.1\n", "HEALTHZ_URL": "/a /b"},
        dataclasses.replace(D, commands=(cmd(OLD_CMD, "cmd1", "/a"), cmd("nslookup b 127.0.0.1", "cmd2", "/b")))),
    "flag beats env": (["-port=1234", "-cmd=true"], {"HEALTHZ_PORT": "9999"},
                       dataclasses.replace(D, port=1234, commands=(cmd("true"),))),
}


@pytest.fixture
def captured(monkeypatch: pytest.MonkeyPatch) -> list[settings_.Settings]:
    seen: list[settings_.Settings] = []

    def fake_run(config: settings_.Settings) -> int:
        seen.append(config)
        return 0

    monkeypatch.setattr(app, "run", fake_run)
    for key in list(os.environ):
        if key.startswith("HEALTHZ_"):
            monkeypatch.delenv(key)
    return seen


@pytest.mark.parametrize(("argv", "env", "expected"), GOOD.values(), ids=GOOD.keys())
def test_good(argv: list[str], env: dict[str, str], expected: settings_.Settings,
              captured: list[settings_.Settings], monkeypatch: pytest.MonkeyPatch) -> None:
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    with pytest.raises(SystemExit) as exit_:
        cli.main(argv)
    assert exit_.value.code == 0
    assert captured == [expected]


BAD = {
    "bad probe spec": (["--probe=k=a.b@dns.local"], "'--probe': bad probe 'k=a.b@dns.local'"),
    "bad duration": (["-cmd=true", "-period=2 seconds"], "bad duration '2 seconds'"),
    "zero period": (["-cmd=true", "-period=0s"], "-period must be > 0"),
    "url count": (["-cmd=true", "-cmd=false", "-url=/a"], "-url given 1 times but -cmd 2 times"),
    "url metrics": (["-cmd=true", "-url=/metrics"], "bad -url '/metrics'"),
    "nothing to check": ([], "nothing to check"),
    "duplicate names": (["--probe=a=x@127.0.0.1", "--probe=a=y@127.0.0.1"], "a given twice"),
    "bad go bool": (["-cmd=true", "-quiet=yes"], "'yes' is not a boolean"),
    "unknown flag": (["-cmd=true", "-bogus"], "No such option '-bogus'"),
    "bad threshold": (["-cmd=true", "--failure-threshold=0"], "--failure-threshold must be >= 1"),
}


@pytest.mark.parametrize(("argv", "message"), BAD.values(), ids=BAD.keys())
def test_bad_exits_2_with_one_line(argv: list[str], message: str, captured: list[settings_.Settings],
                                   capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_:
        cli.main(argv)
    assert exit_.value.code == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("healthz: error: ") and message in err, err
    assert captured == []


def test_python_m_healthz_help_and_bad_spec() -> None:
    ok = subprocess.run([sys.executable, "-m", "healthz", "--help"], capture_output=True, text=True, timeout=30)
    assert ok.returncode == 0 and "HEALTHZ_PROBE" in ok.stdout and "-cmd" in ok.stdout
    bad = subprocess.run([sys.executable, "-m", "healthz", "--probe", "oops"], capture_output=True, text=True,
                         timeout=30)
    assert bad.returncode == 2 and bad.stderr.count("\n") == 1 and "'oops'" in bad.stderr


ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def healthz_containers() -> list[tuple[str, list[str]]]:
    """(manifest file, args) of every container running healthz in manifests/."""
    import yaml

    found = []
    folder = os.path.join(ROOT, "manifests")
    names = [os.path.relpath(os.path.join(d, f), folder) for d, _, files in os.walk(folder) for f in files
             if f.endswith(".yaml")]  # manifests/shared/ too
    for name in sorted(names):
        with open(os.path.join(folder, name)) as fh:
            docs = [doc for doc in yaml.safe_load_all(fh) if isinstance(doc, dict)]
        for doc in docs:
            stack = [doc]
            while stack:
                node = stack.pop()
                if isinstance(node, dict):
                    if node.get("command") in (["healthz"], ["python", "-m", "healthz"]):
                        found.append((name, [str(arg) for arg in node.get("args", [])]))
                    stack.extend(node.values())
                elif isinstance(node, list):
                    stack.extend(node)
    return found


def test_manifests_run_healthz() -> None:
    assert healthz_containers(), "no manifest runs healthz"


@pytest.mark.parametrize(("manifest", "args"), healthz_containers())
def test_manifest_args_parse(manifest: str, args: list[str], captured: list[settings_.Settings]) -> None:
    with pytest.raises(SystemExit) as exit_:
        cli.main(args)
    assert exit_.value.code == 0, manifest
    assert len(captured) == 1 and captured[0].checks


def test_readme_sections() -> None:
    with open(os.path.join(ROOT, "healthz", "README.md")) as fh:
        headings = {line[3:].strip() for line in fh if line.startswith("## ")}
    assert {"Name", "Description", "Flags", "Examples", "Metrics", "Health", "See also"} <= headings


def test_readme_lists_every_flag_and_env_var() -> None:
    with open(os.path.join(ROOT, "healthz", "README.md")) as fh:
        readme = fh.read()
    for param in cli.command.params:
        if param.name in ("help", "version"):
            continue
        assert f"`HEALTHZ_{param.name.upper()}`" in readme, param.name
        for opt in param.opts:
            assert f"`{opt}" in readme or f" {opt}" in readme, opt
