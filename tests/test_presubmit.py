"""Meta rules: READMEs keep up with the flags, pure modules stay pure, the quick start stays two commands."""

from __future__ import annotations

import ast
import pathlib
import re

import click
import pytest

from healthz import cli as healthz_cli
from kube2sky import cli as kube2sky_cli
from skydns import cli as skydns_cli

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
