#!/usr/bin/env python3
"""`make run`: the whole stack on this machine, in the foreground; Ctrl-C stops everything.

Starts, all on 127.0.0.1 and on free non-privileged ports:
  1. a private etcd (temporary data dir),
  2. kube2sky, fed from the Kubernetes API when a kubeconfig is given (KUBECONFIG or
     --kubeconfig), else from the example manifests folder (examples/manifests, re-read on change),
  3. skydns serving cluster.local from etcd and forwarding everything else,
  4. healthz probing skydns,
then writes a few hand-made example records with etcdctl and prints the commands to try,
including the lines that point etcdctl at this etcd and activate the virtualenv.

With a kubeconfig, kube2sky --check-api asks the API once before anything starts: an
unreachable cluster stops `make run` at once with kube2sky's own error.
Ctrl-C stops the processes one by one, newest first (healthz, skydns, kube2sky, etcd), so
nothing logs about a peer that went away first. etcd logs errors only.

Options (also as environment variables): --dns-port / DNS_PORT (default 1053), --domain / DOMAIN,
--manifests DIR, --kubeconfig FILE, --keep-data.
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PY = sys.executable


def free_port() -> int:
    for _ in range(50):
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as tcp:
            tcp.bind(("127.0.0.1", 0))
            port = tcp.getsockname()[1]
            try:
                with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as udp:
                    udp.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    raise SystemExit("run: no free port on 127.0.0.1")


def port_free(port: int) -> bool:
    try:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as udp:
            udp.bind(("127.0.0.1", port))
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as tcp:
            tcp.bind(("127.0.0.1", port))
    except OSError:
        return False
    return True


def activate_line() -> str:
    """`  . .venv/bin/activate` for the virtualenv running this script ("" outside one)."""
    script = Path(PY).parent / "activate"
    if not script.is_file():
        return ""
    shown = os.path.relpath(script, ROOT) if script.is_relative_to(ROOT) else str(script)
    return f"  . {shown}\n"


def check_api(kubeconfig: str, env: dict[str, str]) -> None:
    """kube2sky --check-api: one request to the cluster; exit at once with its error."""
    print(f"run: checking the Kubernetes API in {kubeconfig}", flush=True)
    try:
        done = subprocess.run([PY, "-m", "kube2sky", f"--kubecfg-file={kubeconfig}", "--check-api"], env=env,
                              cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, timeout=60)
    except subprocess.TimeoutExpired:
        raise SystemExit(f"run: the Kubernetes API in {kubeconfig} did not answer within 60s; "
                         "fix the kubeconfig or unset KUBECONFIG to use the manifests folder") from None
    print(done.stdout.rstrip(), flush=True)
    if done.returncode != 0:
        raise SystemExit(f"run: cannot use the cluster in {kubeconfig} (kube2sky's error above); "
                         "fix the kubeconfig, or unset KUBECONFIG to use the manifests folder")


def wait_http(url: str, timeout: float, proc: subprocess.Popen, name: str) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"run: {name} exited with code {proc.returncode}; see its output above")
        try:
            with urllib.request.urlopen(url, timeout=1) as resp:
                if resp.status == 200:
                    return True
        except OSError:
            pass
        time.sleep(0.1)
    print(f"run: {name} not ready at {url} after {timeout:.0f}s (still starting; see its log lines above)",
          flush=True)
    return False


class Stack:
    def __init__(self) -> None:
        self.procs: list[tuple[str, subprocess.Popen]] = []

    def start(self, name: str, args: list[str], env: dict[str, str] | None = None) -> subprocess.Popen:
        print(f"run: starting {name}: {' '.join(args)}", flush=True)
        proc = subprocess.Popen(args, env=env, cwd=ROOT, start_new_session=True)
        self.procs.append((name, proc))
        return proc

    def stop(self) -> None:
        """Newest first, each one gone before the next: skydns's lameduck ends before etcd stops."""
        for name, proc in reversed(self.procs):
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                print(f"run: {name} did not stop in time, killing it", flush=True)
                proc.kill()
                proc.wait()

    def watch(self) -> None:
        while True:
            for name, proc in self.procs:
                if proc.poll() is not None:
                    raise SystemExit(f"run: {name} exited with code {proc.returncode}; stopping the stack")
            time.sleep(0.5)


EXAMPLE_RECORDS = [
    # A hand-written record, exactly as an operator would add one with etcdctl.
    ("/skydns/local/cluster/registry/x1", '{"host":"10.0.0.50","ttl":60}'),
    ("/skydns/local/cluster/mail/x1", '{"host":"mx.cluster.local.","priority":10,"mail":true}'),
    ("/skydns/local/cluster/mx/x1", '{"host":"10.0.0.25"}'),
    ("/skydns/local/cluster/motd/x1", '{"text":"hello from kube-skydns"}'),
]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--dns-port", type=int, default=int(os.environ.get("DNS_PORT", "1053")))
    parser.add_argument("--domain", default=os.environ.get("DOMAIN", "cluster.local"))
    parser.add_argument("--manifests", default=os.environ.get("MANIFESTS", str(ROOT / "examples" / "manifests")))
    parser.add_argument("--kubeconfig", default=os.environ.get("KUBECONFIG", ""))
    parser.add_argument("--keep-data", action="store_true", help="keep etcd's data dir after exit")
    opts = parser.parse_args()

    for tool in ("etcd", "etcdctl"):
        if shutil.which(tool) is None:
            raise SystemExit(f"run: {tool} not found; run scripts/install-deps.sh (Debian package etcd-server)")
    if not port_free(opts.dns_port):
        raise SystemExit(f"run: 127.0.0.1:{opts.dns_port} is in use; pick another with DNS_PORT=... make run")
    if opts.kubeconfig and not Path(opts.kubeconfig).is_file():
        raise SystemExit(f"run: kubeconfig {opts.kubeconfig} does not exist; unset KUBECONFIG to use the manifests folder")
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    env.pop("KUBECONFIG", None)
    if opts.kubeconfig:
        check_api(opts.kubeconfig, env)  # exits at once, with kube2sky's error, when it cannot be reached

    data = tempfile.mkdtemp(prefix="kube-skydns-run-")
    etcd_port, peer_port, skydns_http, kube2sky_http, healthz_http = (free_port() for _ in range(5))
    etcd_url = f"http://127.0.0.1:{etcd_port}"
    domain = opts.domain.rstrip(".")
    stack = Stack()

    def on_signal(signum, frame):  # noqa: ARG001
        raise KeyboardInterrupt

    # SIGINT too: a shell starting us in the background hands us SIGINT ignored
    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    try:
        etcd = stack.start("etcd", [
            "etcd", "--name", "local", "--data-dir", os.path.join(data, "etcd"),
            "--listen-client-urls", etcd_url, "--advertise-client-urls", etcd_url,
            "--listen-peer-urls", f"http://127.0.0.1:{peer_port}",
            "--initial-advertise-peer-urls", f"http://127.0.0.1:{peer_port}",
            "--initial-cluster", f"local=http://127.0.0.1:{peer_port}",
            "--logger", "zap", "--log-level", "error",
            # no JSON gateway (nothing here uses it): its client inside etcd logged a gRPC
            # "Reconnecting..." WARNING when etcd stopped, in about 1 of 6 stops
            "--enable-grpc-gateway=false",
        ], env=env)
        wait_http(etcd_url + "/health", 20, etcd, "etcd")

        kube2sky_args = [PY, "-m", "kube2sky", f"--domain={domain}", f"--etcd-server={etcd_url}",
                         f"--healthz-port={kube2sky_http}", "--healthz-addr=127.0.0.1"]
        if opts.kubeconfig:
            kube2sky_args.append(f"--kubecfg-file={opts.kubeconfig}")
            source = f"the Kubernetes API from {opts.kubeconfig}"
        else:
            kube2sky_args.append(f"--manifests={opts.manifests}")
            source = f"the manifests in {opts.manifests}"
        kube2sky = stack.start("kube2sky", kube2sky_args, env=env)

        skydns = stack.start("skydns", [
            PY, "-m", "skydns", f"-addr=127.0.0.1:{opts.dns_port}", f"-machines={etcd_url}",
            f"-domain={domain}.", f"--http-addr=127.0.0.1:{skydns_http}", "--lameduck=1",
        ], env=env)

        for key, value in EXAMPLE_RECORDS:
            key = key.replace("/local/cluster/", "/" + "/".join(reversed(domain.split("."))) + "/")
            value = value.replace("cluster.local.", domain + ".")
            subprocess.run(["etcdctl", "--endpoints", etcd_url, "put", key, value], check=True,
                           stdout=subprocess.DEVNULL, env=dict(env, ETCDCTL_API="3"))

        wait_http(f"http://127.0.0.1:{skydns_http}/ready", 30, skydns, "skydns")
        # healthz probes skydns, so it starts once skydns answers
        healthz = stack.start("healthz", [
            PY, "-m", "healthz", f"-port={healthz_http}", "--address=127.0.0.1",
            f"--probe=kubernetes=kubernetes.default.svc.{domain}/A@127.0.0.1:{opts.dns_port}",
        ], env=env)
        synced = wait_http(f"http://127.0.0.1:{kube2sky_http}/readiness", 30, kube2sky, "kube2sky")
        wait_http(f"http://127.0.0.1:{healthz_http}/healthz", 15, healthz, "healthz")
        dig = f"dig @127.0.0.1 -p {opts.dns_port}"
        state = "is running" if synced else "is running, but kube2sky has not finished its first sync"
        print(f"""
kube-skydns {state} (records from {source}).

In another shell, from {ROOT}, paste these lines first
(etcdctl then talks to this etcd, and skydns/kube2sky/healthz are on PATH):

  export ETCDCTL_API=3 ETCDCTL_ENDPOINTS={etcd_url}
{activate_line()}
Then try:

  {dig} kubernetes.default.svc.{domain}
  {dig} web.default.svc.{domain}
  {dig} _http._tcp.web.default.svc.{domain} SRV
  {dig} db.default.svc.{domain}
  {dig} registry.{domain}
  {dig} dns-version.{domain} TXT
  {dig} -x 10.96.0.1
  {dig} {domain} SOA
  {dig} example.com           # forwarded upstream (needs a reachable resolver)

Inspect and change records:
  etcdctl get --prefix /skydns/
  etcdctl put /skydns/{"/".join(reversed(domain.split(".")))}/myapp/x1 '{{"host":"10.0.0.99"}}'
  {dig} myapp.{domain}
  etcdctl del /skydns/{"/".join(reversed(domain.split(".")))}/myapp/x1

Health and metrics:
  curl http://127.0.0.1:{skydns_http}/ready   http://127.0.0.1:{skydns_http}/metrics
  curl http://127.0.0.1:{kube2sky_http}/readiness
  curl http://127.0.0.1:{healthz_http}/healthz

Ctrl-C stops everything.
""", flush=True)
        stack.watch()
    except KeyboardInterrupt:
        print("\nrun: stopping", flush=True)
        return_code = 0
    except SystemExit as exc:
        print(exc, file=sys.stderr, flush=True)
        return_code = 1
    finally:
        # a second Ctrl-C must not cut the stop short and leave processes behind
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        stack.stop()
        if opts.keep_data:
            print(f"run: etcd data kept in {data}")
        else:
            shutil.rmtree(data, ignore_errors=True)
    return return_code


if __name__ == "__main__":
    sys.exit(main())
