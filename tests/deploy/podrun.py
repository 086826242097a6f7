"""Run the kube-dns pod's processes with their manifest args inside a private network namespace.

Started by test_pod_run.py as `unshare --net -- python podrun.py SPEC.json`; prints one JSON
object (what was seen) on stdout. Rules:
1. Everything happens inside the new network namespace: its loopback is the pod's shared
   127.0.0.1, so port 53 and the fixed ports of the pod never meet the machine's.
2. Like the pod: the sysctl net.ipv4.ip_unprivileged_port_start from the pod spec is applied,
   and each process runs as the pod's uid with no new privileges and only the capabilities its
   container adds (when `setpriv` can do that here; else as the current user).
3. Every process started here is stopped here (SIGTERM, then SIGKILL), whatever happens.
4. Never raises out: failures are reported in the JSON with the processes' logs.
"""

from __future__ import annotations

import json
import os
import pathlib
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request

import dns.message
import dns.query
import dns.rcode
import dns.rdatatype


def http_status(url: str) -> int:
    try:
        with urllib.request.urlopen(url, timeout=2) as resp:  # noqa: S310 - loopback only
            return resp.status
    except urllib.error.HTTPError as exc:
        return exc.code
    except OSError:
        return 0


def wait_for(urls: list[str], deadline: float) -> dict[str, int]:
    status = {url: 0 for url in urls}
    while time.monotonic() < deadline:
        status = {url: http_status(url) for url in urls}
        if all(code == 200 for code in status.values()):
            break
        time.sleep(0.2)
    return status


def ask(qname: str, qtype: str, tcp: bool) -> dict:
    query = dns.message.make_query(qname, qtype)
    try:
        if tcp:
            reply = dns.query.tcp(query, "127.0.0.1", port=53, timeout=3)
        else:
            reply = dns.query.udp(query, "127.0.0.1", port=53, timeout=3)
    except Exception as exc:  # noqa: BLE001 - reported, not raised
        return {"error": repr(exc)}
    return {
        "rcode": dns.rcode.to_text(reply.rcode()),
        "answer": sorted(rdata.to_text() for rrset in reply.answer for rdata in rrset
                         if rrset.rdtype == dns.rdatatype.from_text(qtype)),
    }


def main() -> int:
    spec = json.loads(pathlib.Path(sys.argv[1]).read_text())
    work = pathlib.Path(spec["workdir"])
    procs: list[tuple[str, subprocess.Popen]] = []
    result: dict = {"ok": False}
    try:
        subprocess.run(["ip", "link", "set", "lo", "up"], check=True)
        for name, value in spec.get("sysctls", {}).items():
            pathlib.Path("/proc/sys", *name.split(".")).write_text(str(value))
        env = dict(os.environ, HOME=str(work), TMPDIR=str(work / "tmp"), PYTHONDONTWRITEBYTECODE="1")
        for proc in spec["processes"]:
            log = open(work / f"{proc['name']}.log", "wb")  # noqa: SIM115 - closed with the process
            procs.append((proc["name"], subprocess.Popen(proc["argv"], stdout=log, stderr=subprocess.STDOUT,
                                                         env=env, cwd=work, start_new_session=True)))
            if proc["name"] == "etcd":
                wait_for(["http://127.0.0.1:2379/health"], time.monotonic() + spec.get("timeout", 60))
        deadline = time.monotonic() + spec.get("timeout", 60)
        result["http"] = wait_for(spec["ready_urls"], deadline)
        result["running"] = {name: p.poll() is None for name, p in procs}
        result["dns"] = {f"{q} {t} {'tcp' if tcp else 'udp'}": ask(q, t, tcp)
                         for q, t in spec["queries"] for tcp in (False, True)}
        result["ok"] = True
    except Exception as exc:  # noqa: BLE001 - reported in the JSON
        result["error"] = repr(exc)
    finally:
        for _, proc in procs:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGTERM)
        for _, proc in procs:
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
        result["exit"] = {name: p.returncode for name, p in procs}
        result["logs"] = {name: (work / f"{name}.log").read_text(errors="replace")[-3000:] for name, _ in procs}
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
