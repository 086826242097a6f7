"""Real resolvers for tests: a private network namespace, pod-style resolver files per client,
unbound and dnsmasq as node-local caches, and musl's getaddrinfo in a static program.

Rules:
1. Root only (``ip netns``, ``setns``, ``mount``): ``missing()`` names what is missing (root, a
   binary), so a test can skip with a clear reason. Nothing here touches the host's network or
   files: everything listens inside the namespace, and /etc is replaced only inside a private
   mount namespace of each client.
2. ``Netns`` is a fresh namespace with ``lo`` up plus a non-loopback /32 and /128 on ``lo``
   (glibc's AI_ADDRCONFIG answers nothing on a loopback-only host). ``Netns.inside()`` moves the
   *calling thread* into it (setns) and back: every socket that thread opens and every process
   or thread it starts meanwhile lives in the namespace, so procs.Etcd, skydnsproc.Skydns and
   upstreams.Thread work there unchanged, and port 53 on any 127.0.0.x is ours.
3. ``Pod.run`` runs one client as a pod would: ``unshare -m`` with the pod's ``resolv.conf``,
   ``nsswitch.conf`` (``hosts: files dns``) and ``hosts`` bind-mounted over /etc, with a timeout.
4. ``Daemon`` is a background process with its output in a log file; ``stop()`` terminates it,
   kills it if it hangs, and may be called twice. Every wait has a deadline (procs.wait_until).
"""

from __future__ import annotations

import contextlib
import ctypes
import itertools
import os
import shlex
import shutil
import signal
import subprocess

import dns.message
import dns.query

from tests import procs

# The namespace's non-loopback addresses (on lo; nothing is ever sent to them).
NODE_V4 = "10.200.0.1"
NODE_V6 = "fd00:200::1"
_CLONE_NEWNET = 0x40000000
_names = itertools.count()

# Each binary and the Debian package scripts/install-deps.sh installs it from.
TOOLS = {"ip": "iproute2", "unshare": "util-linux", "unbound": "unbound", "dnsmasq": "dnsmasq-base",
         "busybox": "busybox", "musl-gcc": "musl-tools", "getent": "libc-bin"}


def missing(*tools: str) -> str | None:
    """Why these tests cannot run here (not root, a tool not installed), or None."""
    if os.geteuid() != 0:
        return "needs root for ip netns, setns and bind mounts over /etc (CI runs as root)"
    absent = [f"{tool} (Debian {TOOLS.get(tool, tool)})" for tool in tools if shutil.which(tool) is None]
    if absent:
        return "not installed: " + ", ".join(absent) + "; scripts/install-deps.sh installs them"
    return None


def _run(*argv: str, timeout: float = 10) -> str:
    out = subprocess.run(argv, capture_output=True, text=True, timeout=timeout * procs.TIMEOUT_SCALE)
    if out.returncode != 0:
        raise RuntimeError(f"{shlex.join(argv)} exited {out.returncode}: {out.stderr.strip()}")
    return out.stdout


class Netns:
    """A private network namespace (rule 2); a context manager that deletes it at the end."""

    def __init__(self) -> None:
        self.name = f"kube-skydns-test-{os.getpid()}-{next(_names)}"
        self.created = False

    def __enter__(self) -> "Netns":
        _run("ip", "netns", "add", self.name)
        self.created = True
        try:
            _run("ip", "-n", self.name, "link", "set", "lo", "up")
            _run("ip", "-n", self.name, "addr", "add", f"{NODE_V4}/32", "dev", "lo")
            _run("ip", "-n", self.name, "-6", "addr", "add", f"{NODE_V6}/128", "dev", "lo", "nodad")
        except BaseException:
            self.delete()
            raise
        return self

    def __exit__(self, *exc) -> None:
        self.delete()

    def delete(self) -> None:
        if self.created:
            self.created = False
            subprocess.run(["ip", "netns", "del", self.name], capture_output=True, timeout=30)

    @contextlib.contextmanager
    def inside(self):
        """Run the calling thread in the namespace until the block ends (rule 2)."""
        libc = ctypes.CDLL(None, use_errno=True)
        home = os.open("/proc/thread-self/ns/net", os.O_RDONLY)
        target = os.open(f"/run/netns/{self.name}", os.O_RDONLY)
        try:
            if libc.setns(target, _CLONE_NEWNET) != 0:
                code = ctypes.get_errno()
                raise OSError(code, f"setns into {self.name}: {os.strerror(code)}")
            try:
                yield self
            finally:
                if libc.setns(home, _CLONE_NEWNET) != 0:  # pragma: no cover - would leave the thread inside
                    code = ctypes.get_errno()
                    raise OSError(code, f"setns back to the host namespace: {os.strerror(code)}")
        finally:
            os.close(target)
            os.close(home)


class Pod:
    """A pod's resolver files in a folder; ``run`` starts a client that sees them as /etc (rule 3)."""

    def __init__(self, folder: str, nameserver: str, namespace: str = "default", zone: str = "cluster.local",
                 ndots: int = 5) -> None:
        self.folder = folder
        os.makedirs(folder, exist_ok=True)
        self.files = {
            "resolv.conf": (f"nameserver {nameserver}\n"
                            f"search {namespace}.svc.{zone} svc.{zone} {zone}\n"
                            f"options ndots:{ndots}\n"),
            "nsswitch.conf": "hosts: files dns\n",
            "hosts": "127.0.0.1 localhost\n::1 localhost ip6-localhost ip6-loopback\n",
        }
        for name, text in self.files.items():
            with open(os.path.join(folder, name), "w", encoding="utf-8") as fh:
                fh.write(text)

    def run(self, *argv: str, timeout: float = 20) -> subprocess.CompletedProcess:
        mounts = " && ".join(f"mount --bind {shlex.quote(os.path.join(self.folder, name))} /etc/{name}"
                             for name in self.files)
        return subprocess.run(["unshare", "-m", "--propagation", "private", "sh", "-c", mounts + ' && exec "$@"',
                               "pod", *argv], capture_output=True, text=True,
                              timeout=timeout * procs.TIMEOUT_SCALE)


class Daemon:
    """A background process with its output in folder/<name>.log (rule 4)."""

    def __init__(self, name: str, argv: list[str], folder: str, env: dict[str, str] | None = None) -> None:
        self.name = name
        self.argv = argv
        self.log_path = os.path.join(folder, f"{name}.log")
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                         env=env)

    def log(self) -> str:
        with open(self.log_path, encoding="utf-8", errors="replace") as fh:
            return fh.read()

    def check(self) -> None:
        if self.proc.poll() is not None:
            raise AssertionError(f"{self.name} exited {self.proc.returncode}: {self.log()[-3000:]}")

    def wait_answering(self, address: str, name: str, port: int = 53, timeout: float = 20) -> None:
        """Wait until the process answers name (any rcode) on address:port over UDP."""
        def answers() -> bool:
            self.check()
            query = dns.message.make_query(name, "A")
            return dns.query.udp(query, address, port=port, timeout=0.5) is not None
        procs.wait_until(answers, timeout=timeout, interval=0.1, what=f"{self.name} on {address}:{port}")

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)

    def __enter__(self) -> "Daemon":
        return self

    def __exit__(self, *exc) -> None:
        self.stop()


def unbound(folder: str, listen: str, stubs: dict[str, str], forward: str | None = None) -> Daemon:
    """unbound as a node-local cache on listen:53: stub zones {zone: "ip@port"}, the rest to forward."""
    lines = [
        "server:",
        f"  interface: {listen}", "  port: 53", "  do-ip6: no", "  do-daemonize: no",
        '  username: ""', '  chroot: ""', f'  directory: "{folder}"', f'  pidfile: "{folder}/unbound.pid"',
        "  use-syslog: no", '  logfile: ""', "  verbosity: 1", "  num-threads: 1", "  so-reuseport: no",
        "  access-control: 127.0.0.0/8 allow", "  do-not-query-localhost: no", '  module-config: "iterator"',
        "  qname-minimisation: yes",
        # a loaded test machine must not get skydns marked down (SERVFAIL for minutes):
        # wait at least 1.5 s for an answer and keep probing a server that timed out
        "  infra-cache-min-rtt: 1500", "  infra-keep-probing: yes",
    ]
    for zone in stubs:
        # transparent: never answered from unbound's built-in local zones (test., RFC 6303 ...)
        lines += [f'  local-zone: "{zone}" transparent']
    lines += ["remote-control:", "  control-enable: no"]
    for zone, address in stubs.items():
        lines += ["stub-zone:", f'  name: "{zone}"', f"  stub-addr: {address}"]
    if forward:
        lines += ["forward-zone:", '  name: "."', f"  forward-addr: {forward}"]
    os.makedirs(folder, exist_ok=True)
    conf = os.path.join(folder, "unbound.conf")
    with open(conf, "w", encoding="utf-8") as fh:
        fh.write("\n".join(lines) + "\n")
    _run("unbound-checkconf", conf)
    return Daemon("unbound", ["unbound", "-d", "-c", conf], folder)


def dnsmasq(folder: str, listen: str, servers: dict[str, str], forward: str | None = None) -> Daemon:
    """dnsmasq as a cache on listen:53: servers {domain: "ip#port"}, the rest to forward."""
    lines = [f"listen-address={listen}", "port=53", "bind-interfaces", "no-resolv", "no-hosts",
             "cache-size=1000", "user=root", "pid-file="]
    lines += [f"server=/{domain}/{address}" for domain, address in servers.items()]
    if forward:
        lines.append(f"server={forward}")
    os.makedirs(folder, exist_ok=True)
    conf = os.path.join(folder, "dnsmasq.conf")
    with open(conf, "w", encoding="utf-8") as fh:
        fh.write("\n".join(lines) + "\n")
    return Daemon("dnsmasq", ["dnsmasq", "--keep-in-foreground", "--log-facility=-", f"--conf-file={conf}"],
                  folder)


GETADDRINFO_C = r"""
#include <arpa/inet.h>
#include <netdb.h>
#include <stdio.h>
#include <string.h>
#include <sys/socket.h>

/* getaddrinfo NAME [4|6]: one address per line; exit 2 with gai_strerror on failure. */
int main(int argc, char **argv) {
    struct addrinfo hints, *res, *p;
    char text[INET6_ADDRSTRLEN];
    int rc;
    memset(&hints, 0, sizeof hints);
    hints.ai_family = AF_UNSPEC;
    if (argc > 2 && strcmp(argv[2], "4") == 0) hints.ai_family = AF_INET;
    if (argc > 2 && strcmp(argv[2], "6") == 0) hints.ai_family = AF_INET6;
    hints.ai_socktype = SOCK_STREAM;
    rc = getaddrinfo(argv[1], NULL, &hints, &res);
    if (rc != 0) {
        fprintf(stderr, "%s\n", gai_strerror(rc));
        return 2;
    }
    for (p = res; p != NULL; p = p->ai_next) {
        const void *addr = p->ai_family == AF_INET
            ? (const void *)&((struct sockaddr_in *)p->ai_addr)->sin_addr
            : (const void *)&((struct sockaddr_in6 *)p->ai_addr)->sin6_addr;
        puts(inet_ntop(p->ai_family, addr, text, sizeof text));
    }
    freeaddrinfo(res);
    return 0;
}
"""


def musl_getaddrinfo(folder: str) -> str:
    """Build a static program around musl's getaddrinfo (musl-gcc) in folder; its path."""
    source = os.path.join(folder, "getaddrinfo.c")
    binary = os.path.join(folder, "getaddrinfo-musl")
    with open(source, "w", encoding="utf-8") as fh:
        fh.write(GETADDRINFO_C)
    _run("musl-gcc", "-static", "-O1", "-o", binary, source, timeout=60)
    return binary
