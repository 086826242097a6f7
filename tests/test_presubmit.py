"""Meta rules: READMEs keep up with the flags, pure modules stay pure, the quick start stays two commands."""

from __future__ import annotations

import ast
import configparser
import os
import pathlib
import re
import subprocess
import sys

import click
import pytest

from healthz import cli as healthz_cli
from kube2sky import cli as kube2sky_cli
from skydns import cli as skydns_cli
from tests import procs

ROOT = pathlib.Path(__file__).resolve().parent.parent

DAEMONS = {
    "skydns": skydns_cli.command,
    "kube2sky": kube2sky_cli.command,
    "healthz": healthz_cli.command,
}
SECTIONS = ("Name", "Description", "Flags", "Examples", "Metrics", "Health", "See also")


@pytest.mark.parametrize("daemon", sorted(DAEMONS))
def test_daemon_readme_has_the_sections(daemon):
    text = (ROOT / daemon / "README.md").read_text()
    headings = {line.lstrip("#").strip() for line in text.splitlines() if line.startswith("## ")}
    missing = [s for s in SECTIONS if s not in headings]
    assert not missing, f"{daemon}/README.md lacks sections {missing}"


def _documented(flag: str, text: str) -> bool:
    name = flag.lstrip("-")
    return re.search(r"(?<![\w-])--?(\[no-\])?" + re.escape(name) + r"(?![\w-])", text) is not None


@pytest.mark.parametrize("daemon", sorted(DAEMONS))
def test_every_flag_is_in_the_daemon_readme(daemon):
    text = (ROOT / daemon / "README.md").read_text()
    command = DAEMONS[daemon]
    missing = []
    for param in command.params:
        if not isinstance(param, click.Option) or param.hidden:
            continue
        flags = [f for f in param.opts if f.startswith("-")]
        if flags and not any(_documented(f, text) for f in flags):
            missing.append(flags[0])
    assert not missing, f"{daemon}/README.md does not document {missing}"


PURE = [
    "skydns/msg.py", "skydns/settings.py", "skydns/store.py", "skydns/rrs.py", "skydns/answering.py",
    "skydns/wire.py", "skydns/fwdcache.py", "kube2sky/settings.py", "kube2sky/objects.py",
    "kube2sky/records.py", "kube2sky/reconcile.py", "healthz/settings.py", "healthz/verdict.py",
]
NETWORK_MODULES = {"dns.query", "dns.asyncquery", "dns.resolver", "dns.asyncresolver"}


@pytest.mark.parametrize("path", PURE)
def test_pure_modules_do_no_network_io(path):
    tree = ast.parse((ROOT / path).read_text())
    imported = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            imported |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module:
            imported.add(node.module)
            imported |= {f"{node.module}.{alias.name}" for alias in node.names}
    assert not imported & NETWORK_MODULES, f"{path} imports {imported & NETWORK_MODULES}"


def test_quick_start_is_two_commands():
    text = (ROOT / "README.md").read_text()
    section = text.split("## Quick start", 1)[1].split("\n## ", 1)[0]
    block = section.split("```sh", 1)[1].split("```", 1)[0]
    commands = [line.split("#")[0].strip() for line in block.strip().splitlines() if line.strip()]
    assert commands == ["make run", "make test"]


def test_ci_runs_the_readme_test_command():
    assert "make test" in (ROOT / ".ci" / "run").read_text()


def test_package_init_files_stay_empty():
    # kube2sky imports skydns.msg, which must not load the DNS server.
    for pkg in ("skydns", "kube2sky", "healthz"):
        assert (ROOT / pkg / "__init__.py").read_text().strip() == ""


# ---- the skip audit (tests/skipaudit.py, allow-list in tests/conftest.py) ----------------

AUDITED_MODULE = '''
import pytest

def test_runs():
    pass

def test_e2e_backend():
    pytest.skip("KUBECONFIG is not set")

@pytest.mark.skipif(True, reason={reason!r})
def test_other():
    pass
'''


AUDIT_CASES = [
    pytest.param(AUDITED_MODULE.format(reason="KUBECONFIG is not set"), "", True, id="allowed-reason"),
    pytest.param(AUDITED_MODULE.format(reason="openssl not installed"), "", False, id="missing-tool"),
    pytest.param(AUDITED_MODULE.format(reason="skydns/app.py does not exist yet"), "", False, id="not-there-yet"),
    pytest.param(AUDITED_MODULE.format(reason="needs root"), "needs root\nother", True, id="allowed-by-env"),
    pytest.param("import pytest\npytest.skip('no dig', allow_module_level=True)\n", "", False, id="module-level"),
    pytest.param("import pytest\n\n@pytest.mark.xfail(reason='flaky')\ndef test_x():\n    assert False\n", "", False,
                 id="xfail"),
]


@pytest.mark.parametrize(("body", "env", "passes"), AUDIT_CASES)
def test_skip_audit_fails_a_run_with_an_unexpected_skip(tmp_path, body, env, passes):
    (tmp_path / "conftest.py").write_text("from tests.conftest import pytest_configure  # noqa: F401\n")
    (tmp_path / "test_audited.py").write_text(body)
    environ = dict(os.environ, PYTHONPATH=str(ROOT), KUBE_SKYDNS_ALLOW_SKIPS=env)
    proc = subprocess.run([sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-rA", str(tmp_path)],
                          capture_output=True, text=True, cwd=tmp_path, env=environ, timeout=120, check=False)
    out = proc.stdout + proc.stderr
    assert (proc.returncode == 0) is passes, out
    assert "skip-audit" in out, out
    if not passes:
        assert "unexpected skip(s)" in out, out
        assert "KUBECONFIG is not set" not in out.split("unexpected skip(s)", 1)[1].split("=====")[0], out


HANGING_MODULE = '''
import asyncio
import subprocess

import uvloop


def test_hangs(tmp_path_factory):
    child = subprocess.Popen(["sleep", "600"])
    (tmp_path_factory.getbasetemp().parent / "child.pid").write_text(str(child.pid))
    async def forever():
        await asyncio.get_running_loop().create_future()
    uvloop.run(forever())  # the signal method could not interrupt this
'''


def test_a_hung_test_fails_the_run_and_leaves_no_process(tmp_path):
    """setup.cfg's timeout settings with a 2 s timeout: the run ends, exit 1, the child is gone."""
    parser = configparser.ConfigParser()
    parser.read(ROOT / "setup.cfg")
    assert parser.get("tool:pytest", "timeout_method") == "thread"
    assert int(parser.get("tool:pytest", "timeout")) >= 60
    (tmp_path / "conftest.py").write_text("from tests.conftest import pytest_configure, pytest_timeout_set_timer  # noqa: F401\n")
    (tmp_path / "test_hang.py").write_text(HANGING_MODULE)
    (tmp_path / "pytest.ini").write_text("[pytest]\ntimeout = 2\ntimeout_method = thread\n")
    proc = subprocess.run([sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "--basetemp", str(tmp_path / "t"),
                           str(tmp_path)], capture_output=True, text=True, cwd=tmp_path, timeout=120, check=False,
                          env=dict(os.environ, PYTHONPATH=str(ROOT)))
    out = proc.stdout + proc.stderr
    assert proc.returncode == 1, out
    assert "TIMEOUT: test_hang.py::test_hangs ran longer than 2 s" in out, out
    pid = int((tmp_path / "child.pid").read_text())
    assert procs.wait_until(lambda: not _running(pid), timeout=5, what=f"pid {pid} gone"), out


def _running(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as fh:
            return fh.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False
