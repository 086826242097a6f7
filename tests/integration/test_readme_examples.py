"""The README examples, pasted as written, against `make run`'s stack (they cannot drift).

Rules:
1. A block is an example when the line before its ```sh fence is a comment starting with
   ``<!-- readme-example``. Such blocks are collected from README.md, the daemon READMEs and
   docs/, and run in file order against one `make run` stack.
2. Each line runs in bash after the two lines `make run` prints for another shell (export
   ETCDCTL_API/ETCDCTL_ENDPOINTS, . .venv/bin/activate), from the repository root, as a user
   pastes them. Only `-p 1053` is changed, to the test's free port. Every line must exit 0.
3. A `dig` line whose trailing comment starts with an address or an rcode (`# 10.96.0.1`,
   `# NXDOMAIN`) must show it in dig's output.
4. Every local `etcdctl` line (the daemon READMEs, and README.md above "## Deploy", where the
   commands run in a cluster through `kubectl exec`) is in an example block, so none can lose
   what it needs to reach make run's etcd.
"""

from __future__ import annotations

import re
import subprocess

import pytest

from tests import procs
from tests.localrun import ROOT, LocalRun

pytestmark = pytest.mark.integration

FILES = ["README.md", "skydns/README.md", "kube2sky/README.md", "healthz/README.md",
         *sorted(str(p.relative_to(ROOT)) for p in (ROOT / "docs").glob("*.md"))]
MARK = "<!-- readme-example"
EXPECT = re.compile(r"^((?:\d{1,3}\.){3}\d{1,3}|NXDOMAIN|NOERROR|SERVFAIL)\b")


def code_blocks(path: str) -> list[tuple[int, bool, list[str]]]:
    """(line number of the fence, marked as an example, lines) of every fenced block."""
    lines = (ROOT / path).read_text().splitlines()
    out, i = [], 0
    while i < len(lines):
        if lines[i].startswith("```"):
            marked = i > 0 and lines[i - 1].startswith(MARK)
            start, body = i + 1, []
            i += 1
            while i < len(lines) and not lines[i].startswith("```"):
                body.append(lines[i])
                i += 1
            out.append((start, marked, body))
        i += 1
    return out


def examples() -> list[pytest.param]:
    found = []
    for path in FILES:
        for start, marked, body in code_blocks(path):
            if marked:
                found.append(pytest.param(body, id=f"{path}:{start}"))
    return found


def split_comment(line: str) -> tuple[str, str]:
    match = re.search(r"\s+#\s*(.*)$", line)
    return (line[:match.start()], match.group(1)) if match else (line, "")


@pytest.fixture(scope="module")
def stack():
    run = LocalRun()
    try:
        run.wait_banner()
        procs.wait_until(lambda: "kubernetes" in _sh(run, f"dig @127.0.0.1 -p {run.port} +short "
                                                          "-x 10.96.0.1").stdout, what="stack answers")
        yield run
    finally:
        run.stop()


def _sh(run: LocalRun, command: str) -> subprocess.CompletedProcess:
    exports = " ".join(f"{k}={v}" for k, v in run.exports.items())
    script = f"export {exports}\n. {run.activate}\n{command}\n"
    return subprocess.run(["bash", "-c", script], cwd=ROOT, capture_output=True, text=True,
                          timeout=60 * procs.TIMEOUT_SCALE)


def test_there_are_examples():
    assert len(examples()) >= 3


@pytest.mark.parametrize("body", examples())
def test_readme_example(stack, body):
    for line in body:
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        command, comment = split_comment(line)
        command = command.replace("-p 1053", f"-p {stack.port}")
        done = _sh(stack, command)
        assert done.returncode == 0, f"{line}\nexit {done.returncode}\n{done.stdout}\n{done.stderr}"
        expected = EXPECT.match(comment)
        if command.startswith("dig") and expected:
            assert expected.group(1) in done.stdout, f"{line}\n{done.stdout}"


@pytest.mark.parametrize("path", ["README.md", "skydns/README.md", "kube2sky/README.md"])
def test_every_local_etcdctl_example_is_run(path):
    lines = (ROOT / path).read_text().splitlines()
    deploy = lines.index("## Deploy") + 1 if "## Deploy" in lines else len(lines) + 1
    unmarked = [f"{path}:{start + n}: {line}" for start, marked, body in code_blocks(path)
                if not marked and start < deploy
                for n, line in enumerate(body) if line.lstrip().startswith("etcdctl ")]
    assert not unmarked, "etcdctl examples outside readme-example blocks:\n" + "\n".join(unmarked)
