"""The pod's four processes, started with the exact args of docker-compose.yml (== manifests/), serve.

Runs inside a private network namespace (`unshare --net`, root only) so the pod's fixed ports
(53, 2379, 8080, 8081, 9153) are its own loopback's, as in a pod. Each process runs as the
pod's uid with no new privileges and only its container's added capabilities (setpriv), and
the pod's sysctl lets skydns bind :53 unprivileged. kube2sky reads examples/manifests/ (the
compose "manifests" profile). Checked: every readiness/health URL the probes use answers 200
and DNS answers the example services over UDP and TCP. Skipped where not root or without
unshare/setpriv/etcd.
"""

from __future__ import annotations

import json
import os
import pathlib
import shutil
import subprocess
import sys
import tempfile

import pytest

from tests import procs
from tests.deploy import common

pytestmark = pytest.mark.integration

NEEDED = ("unshare", "setpriv", "ip", "etcd")
PODRUN = pathlib.Path(__file__).with_name("podrun.py")


def _skip_reason() -> str:
    if os.geteuid() != 0:
        return "needs root for a private network namespace (unshare --net)"
    missing = [tool for tool in NEEDED if shutil.which(tool) is None]
    if missing:
        return f"missing {', '.join(missing)}"
    probe = subprocess.run(["unshare", "--net", "true"], capture_output=True, timeout=30, check=False)
    if probe.returncode != 0:
        return f"unshare --net does not work here: {probe.stderr.decode(errors='replace').strip()}"
    return ""


SKIP = _skip_reason()


def daemon_argv(command: list[str]) -> list[str]:
    """The console script of this environment (the image's is on PATH; here: next to python)."""
    script = pathlib.Path(sys.executable).parent / command[0]
    head = [str(script)] if script.exists() else [sys.executable, "-m", command[0]]
    return head + command[1:]


def as_pod_user(argv: list[str], container: dict, pod: dict) -> list[str]:
    """setpriv: the pod's uid/gid, no new privileges, only the container's added capabilities."""
    uid = pod["securityContext"]["runAsUser"]
    gid = pod["securityContext"]["runAsGroup"]
    caps = container["securityContext"]["capabilities"]
    assert caps["drop"] == ["ALL"]
    bounding = "-all" + "".join(f",+{cap.lower()}" for cap in caps.get("add", []))
    return ["setpriv", f"--reuid={uid}", f"--regid={gid}", "--clear-groups", "--no-new-privs",
            "--inh-caps=-all", f"--bounding-set={bounding}", *argv]


def can_run_as(uid: int, gid: int) -> bool:
    probe = subprocess.run(["setpriv", f"--reuid={uid}", f"--regid={gid}", "--clear-groups", sys.executable,
                            "-c", "import skydns.cli, kube2sky.cli, healthz.cli"],
                           capture_output=True, timeout=60, check=False)
    return probe.returncode == 0


@pytest.mark.skipif(bool(SKIP), reason=SKIP or "runs")
def test_pod_processes_start_with_their_args_and_serve():
    services = common.compose()["services"]
    pod = common.pod_spec("skydns-rc.yaml")
    containers = common.containers("skydns-rc.yaml")
    uid, gid = pod["securityContext"]["runAsUser"], pod["securityContext"]["runAsGroup"]
    non_root = can_run_as(uid, gid)

    work = pathlib.Path(tempfile.mkdtemp(prefix="kube-skydns-pod-"))
    try:
        for sub in ("etcd", "tmp"):
            (work / sub).mkdir()
        for path in (work, work / "etcd", work / "tmp"):
            path.chmod(0o777)
        manifests_dir = str(common.ROOT / "examples" / "manifests")
        processes = []
        for name, container_name in [("etcd", "etcd"), ("kube2sky-manifests", "kube2sky"),
                                     ("skydns", "skydns"), ("healthz", "healthz")]:
            command = list(services[name]["command"])
            if name == "etcd":
                argv = [a.replace("/var/lib/etcd", str(work / "etcd")) for a in command]
            else:
                argv = daemon_argv([a.replace("/etc/kube2sky/manifests", manifests_dir) for a in command])
            if non_root:
                argv = as_pod_user(argv, containers[container_name], pod)
            processes.append({"name": container_name, "argv": argv})
        sysctls = {s["name"]: s["value"] for s in pod.get("sysctls", pod["securityContext"].get("sysctls", []))}
        spec = {
            "workdir": str(work),
            "sysctls": sysctls,
            "processes": processes,
            "timeout": 20 * procs.TIMEOUT_SCALE,  # seconds for etcd, then for every probe URL (60 at scale 3)
            # Exactly the URLs of the pod's probes (and compose's healthchecks).
            "ready_urls": ["http://127.0.0.1:9153/ready", "http://127.0.0.1:9153/health",
                           "http://127.0.0.1:8081/readiness", "http://127.0.0.1:8080/healthz"],
            "queries": [("kubernetes.default.svc.cluster.local.", "A"), ("web.default.svc.cluster.local.", "A"),
                        ("_https._tcp.web.default.svc.cluster.local.", "SRV")],
        }
        (work / "spec.json").write_text(json.dumps(spec))
        proc = subprocess.run(["unshare", "--net", "--", sys.executable, str(PODRUN), str(work / "spec.json")],
                              capture_output=True, text=True, timeout=60 + 40 * procs.TIMEOUT_SCALE, check=False,
                              cwd=common.ROOT)
        assert proc.returncode == 0, proc.stderr[-3000:]
        result = json.loads(proc.stdout.strip().splitlines()[-1])
        logs = "\n".join(f"--- {name}\n{text}" for name, text in result.get("logs", {}).items())
        assert result["ok"], f"{result.get('error')}\n{logs}"
        assert all(result["running"].values()), f"a process exited: {result['exit']}\n{logs}"
        assert all(code == 200 for code in result["http"].values()), f"{result['http']}\n{logs}"
        answers = result["dns"]
        for proto in ("udp", "tcp"):
            assert answers[f"kubernetes.default.svc.cluster.local. A {proto}"] == \
                {"rcode": "NOERROR", "answer": ["10.96.0.1"]}, logs
            assert answers[f"web.default.svc.cluster.local. A {proto}"] == \
                {"rcode": "NOERROR", "answer": ["10.96.0.20"]}, logs
            srv = answers[f"_https._tcp.web.default.svc.cluster.local. SRV {proto}"]
            assert srv["rcode"] == "NOERROR" and srv["answer"], logs
            assert all(" 443 web.default.svc.cluster.local." in rr for rr in srv["answer"]), srv
    finally:
        shutil.rmtree(work, ignore_errors=True)
