"""Real processes for tests: an etcd binary on free loopback ports, started and stopped by the test."""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
import urllib.request


def free_port(kind: int = socket.SOCK_STREAM, host: str = "127.0.0.1") -> int:
    """A port that is free on host for TCP (and, checked, for UDP too)."""
    for _ in range(50):
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as tcp:
            tcp.bind((host, 0))
            port = tcp.getsockname()[1]
            try:
                with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as udp:
                    udp.bind((host, port))
            except OSError:
                continue
            return port
    raise RuntimeError("no free port")


# Every wait is stretched by this factor: a loaded machine (CI, a laptop running other work)
# must never turn a slow start into a failure. Tests never fail on timing, only on a timeout.
TIMEOUT_SCALE = float(os.environ.get("KUBE_SKYDNS_TEST_TIMEOUT_SCALE", "3"))


def wait_until(check, timeout: float = 10.0, interval: float = 0.02, what: str = "condition"):
    """Poll check() until it returns a truthy value; return it, or raise TimeoutError.

    timeout (seconds) is multiplied by TIMEOUT_SCALE.
    """
    timeout *= TIMEOUT_SCALE
    deadline = time.monotonic() + timeout
    last_exc: Exception | None = None
    while time.monotonic() < deadline:
        try:
            value = check()
            if value:
                return value
        except Exception as exc:  # noqa: BLE001 - polled checks may fail until ready
            last_exc = exc
        time.sleep(interval)
    raise TimeoutError(f"timed out waiting for {what}" + (f": {last_exc!r}" if last_exc else ""))


async def async_wait_until(check, timeout: float = 10.0, interval: float = 0.01, what: str = "condition"):
    """wait_until for coroutines: poll check() (a plain or an async callable) with asyncio.sleep.

    timeout (seconds) is multiplied by TIMEOUT_SCALE; raises TimeoutError naming `what`.
    """
    deadline = time.monotonic() + timeout * TIMEOUT_SCALE
    while True:
        value = check()
        if inspect.isawaitable(value):
            value = await value
        if value:
            return value
        if time.monotonic() >= deadline:
            raise TimeoutError(f"timed out after {timeout * TIMEOUT_SCALE:g} s waiting for {what}")
        await asyncio.sleep(interval)


class Etcd:
    """A real etcd server on 127.0.0.1 with a temporary data dir."""

    def __init__(self, data_dir: str | None = None, client_port: int | None = None) -> None:
        if shutil.which("etcd") is None:
            raise RuntimeError("etcd binary not found: run scripts/install-deps.sh (Debian package etcd-server)")
        self._own_dir = data_dir is None
        self.data_dir = data_dir or tempfile.mkdtemp(prefix="kube-skydns-etcd-")
        self.client_port = client_port or free_port()
        self.peer_port = free_port()
        self.proc: subprocess.Popen | None = None
        self.log_path = os.path.join(self.data_dir, "etcd.log")

    @property
    def endpoint(self) -> str:
        return f"127.0.0.1:{self.client_port}"

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.client_port}"

    def start(self, timeout: float = 20.0) -> "Etcd":
        member_dir = os.path.join(self.data_dir, "member-data")
        args = [
            "etcd", "--name", "test", "--data-dir", member_dir,
            "--listen-client-urls", self.url, "--advertise-client-urls", self.url,
            "--listen-peer-urls", f"http://127.0.0.1:{self.peer_port}",
            "--initial-advertise-peer-urls", f"http://127.0.0.1:{self.peer_port}",
            "--initial-cluster", f"test=http://127.0.0.1:{self.peer_port}",
            "--max-txn-ops", "1024",
        ]
        log = open(self.log_path, "ab")  # noqa: SIM115 - kept open for the process lifetime
        env = dict(os.environ, ETCD_UNSUPPORTED_ARCH=os.environ.get("ETCD_UNSUPPORTED_ARCH", ""))
        self.proc = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT, env=env)
        log.close()
        wait_until(self.healthy, timeout=timeout, what=f"etcd on {self.url}")
        return self

    def healthy(self) -> bool:
        if self.proc is None or self.proc.poll() is not None:
            raise RuntimeError(f"etcd exited; log: {self.log_tail()}")
        try:
            with urllib.request.urlopen(self.url + "/health", timeout=1) as resp:
                return b"true" in resp.read()
        except OSError:
            return False

    def log_tail(self, n: int = 2000) -> str:
        try:
            with open(self.log_path, "rb") as fh:
                return fh.read()[-n:].decode(errors="replace")
        except OSError:
            return ""

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        self.proc = None

    def close(self) -> None:
        self.stop()
        if self._own_dir:
            shutil.rmtree(self.data_dir, ignore_errors=True)

    def ctl(self, *args: str, input: bytes | None = None) -> str:
        """Run etcdctl (v3 API) against this server and return its stdout."""
        out = subprocess.run(
            ["etcdctl", "--endpoints", self.url, *args],
            input=input, capture_output=True, check=True, timeout=20,
            env=dict(os.environ, ETCDCTL_API="3"),
        )
        return out.stdout.decode()


@contextlib.contextmanager
def running_etcd():
    etcd = Etcd().start()
    try:
        yield etcd
    finally:
        etcd.close()


# ---------------------------------------------------------------- TLS and a 3-member cluster

def make_pki(folder: str, clients: tuple[str, ...] = ("root", "kube2sky", "skydns"),
             hosts: tuple[str, ...] = ("127.0.0.1", "localhost")) -> dict[str, tuple[str, str]]:
    """A CA, one server/peer certificate for hosts and one client certificate per CN, via openssl.

    Returns {"ca": (ca.crt, ca.key), "server": (crt, key), <cn>: (crt, key), ...}. The client
    certificate's CN is the etcd user it authenticates as (etcd --client-cert-auth).
    """
    if shutil.which("openssl") is None:
        raise RuntimeError("openssl not found (Debian package openssl)")
    os.makedirs(folder, exist_ok=True)

    def run(*args: str) -> None:
        subprocess.run(["openssl", *args], check=True, capture_output=True, timeout=30, cwd=folder)

    def path(name: str) -> str:
        return os.path.join(folder, name)

    ec = ("-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes")
    run("req", "-x509", *ec, "-keyout", "ca.key", "-out", "ca.crt", "-days", "2", "-subj", "/CN=test-ca")
    out = {"ca": (path("ca.crt"), path("ca.key"))}
    sans = ",".join(("IP:" if h[0].isdigit() or ":" in h else "DNS:") + h for h in hosts)
    for name, cn, usage in (("server", "etcd", "serverAuth,clientAuth"),
                            *((c, c, "clientAuth") for c in clients)):
        ext = path(f"{name}.ext")
        with open(ext, "w") as fh:
            fh.write(f"extendedKeyUsage={usage}\n" + (f"subjectAltName={sans}\n" if name == "server" else ""))
        run("req", *ec, "-keyout", f"{name}.key", "-out", f"{name}.csr", "-subj", f"/CN={cn}")
        run("x509", "-req", "-in", f"{name}.csr", "-CA", "ca.crt", "-CAkey", "ca.key", "-CAcreateserial",
            "-days", "2", "-extfile", ext, "-out", f"{name}.crt")
        out[name] = (path(f"{name}.crt"), path(f"{name}.key"))
    return out


class EtcdCluster:
    """Three (or n) etcd members on loopback with peer and client TLS; auth set up by enable_auth().

    Members are named m0..m(n-1); kill(i) / start(i) stop and restart one member with its data.
    Clients must present a certificate signed by the cluster's CA (--client-cert-auth); with auth
    on, its CN is the etcd user.
    """

    def __init__(self, pki: dict[str, tuple[str, str]], folder: str, size: int = 3) -> None:
        if shutil.which("etcd") is None:
            raise RuntimeError("etcd binary not found: run scripts/install-deps.sh (Debian package etcd-server)")
        self.pki = pki
        self.folder = folder
        self.client_ports = [free_port() for _ in range(size)]
        self.peer_ports = [free_port() for _ in range(size)]
        self.procs: list[subprocess.Popen | None] = [None] * size
        self.initial = ",".join(f"m{i}=https://127.0.0.1:{p}" for i, p in enumerate(self.peer_ports))
        self._started_once = [False] * size

    @property
    def urls(self) -> list[str]:
        return [f"https://127.0.0.1:{p}" for p in self.client_ports]

    def log_path(self, i: int) -> str:
        return os.path.join(self.folder, f"m{i}.log")

    def _args(self, i: int) -> list[str]:
        crt, key = self.pki["server"]
        ca = self.pki["ca"][0]
        return [
            "etcd", "--name", f"m{i}", "--data-dir", os.path.join(self.folder, f"m{i}"),
            "--listen-client-urls", self.urls[i], "--advertise-client-urls", self.urls[i],
            "--listen-peer-urls", f"https://127.0.0.1:{self.peer_ports[i]}",
            "--initial-advertise-peer-urls", f"https://127.0.0.1:{self.peer_ports[i]}",
            "--initial-cluster", self.initial, "--initial-cluster-state", "new",
            "--initial-cluster-token", "kube-skydns-test",
            "--cert-file", crt, "--key-file", key, "--trusted-ca-file", ca, "--client-cert-auth",
            "--peer-cert-file", crt, "--peer-key-file", key, "--peer-trusted-ca-file", ca,
            "--peer-client-cert-auth", "--max-txn-ops", "1024",
        ]

    def start(self, i: int | None = None, timeout: float = 30.0) -> "EtcdCluster":
        """Start member i (all members when None) and wait until it reports healthy."""
        members = range(len(self.procs)) if i is None else [i]
        env = dict(os.environ, ETCD_UNSUPPORTED_ARCH=os.environ.get("ETCD_UNSUPPORTED_ARCH", ""))
        env = {k: v for k, v in env.items() if not (k.startswith("ETCD_") and k != "ETCD_UNSUPPORTED_ARCH")}
        for m in members:
            with open(self.log_path(m), "ab") as log:
                self.procs[m] = subprocess.Popen(self._args(m), stdout=log, stderr=subprocess.STDOUT, env=env)
        for m in members:
            wait_until(lambda m=m: self.healthy(m), timeout=timeout, what=f"etcd member m{m}")
        return self

    def alive(self, i: int) -> bool:
        proc = self.procs[i]
        return proc is not None and proc.poll() is None

    def healthy(self, i: int) -> bool:
        """GET /health over TLS (client certificate "root"); raises when the member exited."""
        if not self.alive(i):
            raise RuntimeError(f"etcd m{i} exited; log: {self.log_tail(i)}")
        import ssl
        ctx = ssl.create_default_context(cafile=self.pki["ca"][0])
        ctx.load_cert_chain(*self.pki["root"])
        try:
            with urllib.request.urlopen(self.urls[i] + "/health", timeout=1, context=ctx) as resp:
                return b'"true"' in resp.read()
        except OSError:
            return False

    def log_tail(self, i: int, n: int = 2000) -> str:
        try:
            with open(self.log_path(i), "rb") as fh:
                return fh.read()[-n:].decode(errors="replace")
        except OSError:
            return ""

    def stop(self, i: int, sig: int = signal.SIGTERM) -> None:
        proc, self.procs[i] = self.procs[i], None
        if proc is not None and proc.poll() is None:
            proc.send_signal(sig)
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(5)

    def close(self) -> None:
        for i in range(len(self.procs)):
            self.stop(i)

    def ctl(self, *args: str, user: str = "root", endpoints: list[str] | None = None,
            check: bool = True, input: bytes | None = None) -> subprocess.CompletedProcess:
        """etcdctl (v3) as user (the client certificate with that CN) against the live members."""
        live = endpoints or [u for i, u in enumerate(self.urls) if self.alive(i)]
        crt, key = self.pki[user]
        return subprocess.run(
            ["etcdctl", "--endpoints", ",".join(live), "--cacert", self.pki["ca"][0], "--cert", crt,
             "--key", key, "--command-timeout", "10s", *args],
            input=input, capture_output=True, check=check, timeout=30, env=dict(os.environ, ETCDCTL_API="3"))

    def enable_auth(self, roles: dict[str, list[tuple[str, str, bool]]]) -> None:
        """Create a role and a password-less user (CN auth) per entry, then turn auth on.

        roles: {user: [(permission, key, is_prefix), ...]} with permission read|write|readwrite;
        the user "root" gets the root role.
        """
        self.ctl("user", "add", "root", "--no-password")
        self.ctl("role", "add", "root")
        self.ctl("user", "grant-role", "root", "root")
        for user, perms in roles.items():
            self.ctl("role", "add", user)
            for perm, key, prefix in perms:
                self.ctl("role", "grant-permission", user, perm, key, *(["--prefix=true"] if prefix else []))
            self.ctl("user", "add", user, "--no-password")
            self.ctl("user", "grant-role", user, user)
        self.ctl("auth", "enable")
