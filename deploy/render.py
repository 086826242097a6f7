#!/usr/bin/env python3
"""Render the kube-skydns manifests for one cluster, like CoreDNS's deploy.sh.

    python deploy/render.py --cluster-dns 10.96.0.10 --domain cluster.local \\
        --reverse-cidrs 10.96.0.0/12 --image kube-skydns:latest --replicas 1 | kubectl apply -f -

Rules:
1. Stdlib only: `python3 deploy/render.py` runs on any machine with Python 3.11, no venv.
2. The manifests go to stdout (RBAC, the kube-dns Service, then the controller), ready for
   `kubectl apply -f -`; the kubelet flags that must match go to stderr. With --out-dir the
   four files are written instead (that is how manifests/ is produced: the checked-in files
   are exactly this script's output for the kind defaults, and a test holds them to it).
3. Bad input (an address outside the service CIDR, a bad domain, a bad replica count, a
   CIDR that is not a network) prints one line `render.py: error: ...` and exits 2.
4. Every container's arguments are built here, in one place (`container_args`,
   `shared_container_args`); the tests parse them with the daemons' own click commands.
5. `--topology per-pod` (the default) puts etcd and kube2sky in every DNS pod. `--topology
   shared` renders the large-cluster shape into its own files (`SHARED_FILES`, checked in as
   manifests/shared/): a 3-member etcd StatefulSet with peer and client TLS and auth, two
   kube2sky with --leader-elect, skydns+healthz replicas behind the same kube-dns Service.
   Nothing in it resolves a cluster name (DNS must not depend on itself): every etcd member
   has a ClusterIP Service with a fixed address (`--etcd-ips`, default the three addresses
   after --cluster-dns) that the daemons dial and the server certificate names.
"""

from __future__ import annotations

import argparse
import dataclasses
import ipaddress
import json
import pathlib
import re
import string
import sys

try:
    from deploy import sizing
except ImportError:  # run as a script: deploy/ itself is on sys.path
    import sizing  # type: ignore[no-redef]

TEMPLATES = pathlib.Path(__file__).resolve().parent / "templates"

# The etcd that runs inside the pod (the official image; it ships etcdctl too).
ETCD_IMAGE = "registry.k8s.io/etcd:3.5.21-0"
# Defaults: a default kind (kubeadm) cluster.
DEFAULT_CLUSTER_DNS = "10.96.0.10"
DEFAULT_SERVICE_CIDR = "10.96.0.0/12"
DEFAULT_DOMAIN = "cluster.local"
DEFAULT_IMAGE = "kube-skydns:latest"
DEFAULT_REPLICAS = 1
MAX_REPLICAS = 100
# More reverse zones than this from --reverse-cidrs is surely a mistake (a /1 gives 128).
MAX_REVERSE_ZONES = 256
PULL_POLICIES = ("IfNotPresent", "Always", "Never")
CONTROLLERS = ("replicationcontroller", "deployment")
TOPOLOGIES = ("per-pod", "shared")

# Where each part goes: file name in manifests/ and template in deploy/templates/.
FILES = {
    "rbac": "rbac.yaml",
    "service": "skydns-svc.yaml",
    "replicationcontroller": "skydns-rc.yaml",
    "deployment": "skydns-deployment.yaml",
}

# Addresses and ports inside the pod, shared by every container (one network namespace).
ETCD_URL = "http://127.0.0.1:2379"
DNS_LISTEN = "0.0.0.0:53"
DNS_PROBE_SERVER = "127.0.0.1:53"
DNS_LISTEN_V6 = "[::]:53"
DNS_PROBE_SERVER_V6 = "[::1]:53"
SKYDNS_HTTP = "0.0.0.0:9153"
SKYDNS_HTTP_V6 = "[::]:9153"
KUBE2SKY_HEALTHZ_PORT = 8081
# Seconds skydns keeps answering after SIGTERM while /ready says 503 (no query lost in a
# rollout); well inside terminationGracePeriodSeconds (30).
SKYDNS_LAMEDUCK = 5
HEALTHZ_PORT = 8080

# The shared topology (rule 5).
SHARED_FILES = {
    "rbac": "rbac.yaml",
    "service": "skydns-svc.yaml",
    "etcd": "etcd.yaml",
    "etcd-setup": "etcd-setup.yaml",
    "kube2sky": "kube2sky.yaml",
    "skydns": "skydns.yaml",
}
SHARED_DIR = "shared"
ETCD_MEMBERS = 3
ETCD_NAME = "kube-dns-etcd"  # StatefulSet, headless Service; member i is ETCD_NAME-i
ETCD_CLIENT_PORT = 2379
ETCD_PEER_PORT = 2380
ETCD_METRICS_PORT = 2381
ETCD_TLS_DIR = "/etc/etcd-tls"  # every pod mounts its own Secret here: ca.crt, tls.crt, tls.key
RECORDS_PREFIX = "skydns"  # kube2sky --prefix default: records under /skydns/
LEADER_KEY = f"/{RECORDS_PREFIX}-leader/kube2sky"  # kube2sky's default --leader-key

_LABEL_RE = re.compile(r"^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$")
_IMAGE_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._/:@+-]*$")
_PLAIN_RE = re.compile(r"^[A-Za-z0-9-][A-Za-z0-9._:/=@,+\[\]-]*$")


class RenderError(ValueError):
    """A parameter that cannot make a working deployment; the message says what to fix."""


@dataclasses.dataclass(frozen=True, slots=True)
class Params:
    """What differs between clusters. Validated by `check`, rendered by `render`."""

    cluster_dns: str = DEFAULT_CLUSTER_DNS
    service_cidr: str = DEFAULT_SERVICE_CIDR
    domain: str = DEFAULT_DOMAIN
    # CIDRs whose reverse zones skydns answers authoritatively (NXDOMAIN for addresses it
    # holds no PTR for); empty: PTRs it holds are answered, other reverse names forwarded.
    reverse_cidrs: tuple[str, ...] = ()
    image: str = DEFAULT_IMAGE
    pull_policy: str = "IfNotPresent"
    replicas: int = DEFAULT_REPLICAS
    etcd_image: str = ETCD_IMAGE
    # Shared topology: the fixed ClusterIPs of the etcd members; empty: the ETCD_MEMBERS
    # addresses after cluster_dns.
    etcd_ips: tuple[str, ...] = ()
    # cluster size: memory requests/limits and etcd's quota come from deploy/sizing.py
    services: int = sizing.DEFAULT_SERVICES
    endpoints: int = sizing.DEFAULT_ENDPOINTS


def normalize_domain(domain: str) -> str:
    """The cluster domain lower-case without the trailing dot; RenderError when invalid."""
    name = domain.strip().lower()
    if name.endswith("."):
        name = name[:-1]
    if not name:
        raise RenderError(f"bad domain {domain!r}: empty")
    if len(name) > 253:
        raise RenderError(f"bad domain {domain!r}: longer than 253 characters")
    for label in name.split("."):
        if not _LABEL_RE.match(label):
            raise RenderError(
                f"bad domain {domain!r}: label {label!r} is not a DNS label "
                "(a-z, 0-9 and '-', 1-63 characters, no '-' at either end)"
            )
    if name == "arpa" or name.endswith(".arpa"):
        raise RenderError(f"bad domain {domain!r}: a reverse zone cannot be the cluster domain")
    return name


def _network(text: str, flag: str) -> ipaddress.IPv4Network | ipaddress.IPv6Network:
    try:
        return ipaddress.ip_network(text.strip(), strict=True)
    except ValueError as exc:
        raise RenderError(f"bad {flag} {text!r}: {exc}") from None


def reverse_zones(cidr: str) -> list[str]:
    """The reverse zones covering a CIDR, on octet (IPv4) or nibble (IPv6) boundaries.

    10.96.0.0/12 -> 96.10.in-addr.arpa. ... 111.10.in-addr.arpa. (16 zones); at most 256
    zones per CIDR (8 bits to round up for IPv4, 3 for IPv6).
    """
    net = _network(cidr, "--reverse-cidrs")
    step = 8 if net.version == 4 else 4
    prefix = -(-net.prefixlen // step) * step
    if prefix == 0:
        return ["in-addr.arpa." if net.version == 4 else "ip6.arpa."]
    zones = []
    for sub in net.subnets(new_prefix=prefix):
        labels = sub.network_address.reverse_pointer.split(".")
        # reverse_pointer names the address; keep only the labels of the prefix.
        keep = prefix // step
        host_labels = len(labels) - 2 - keep  # minus in-addr/ip6 and arpa
        zones.append(".".join(labels[host_labels:]) + ".")
    return zones


def check(params: Params) -> Params:
    """Validate every parameter; return them normalized. Raises RenderError."""
    domain = normalize_domain(params.domain)
    service_cidr = _network(params.service_cidr, "--service-cidr")
    try:
        dns_ip = ipaddress.ip_address(params.cluster_dns.strip())
    except ValueError:
        raise RenderError(f"bad --cluster-dns {params.cluster_dns!r}: not an IP address") from None
    if dns_ip.version != service_cidr.version or dns_ip not in service_cidr:
        raise RenderError(
            f"--cluster-dns {dns_ip} is outside the service CIDR {service_cidr} "
            "(pass the cluster's --service-cidr, the kube-apiserver's --service-cluster-ip-range)"
        )
    if dns_ip == service_cidr.network_address or (
        service_cidr.version == 4 and dns_ip == service_cidr.broadcast_address
    ):
        raise RenderError(f"--cluster-dns {dns_ip} is not a usable address of {service_cidr}")
    if dns_ip == service_cidr.network_address + 1:
        raise RenderError(
            f"--cluster-dns {dns_ip} is the kubernetes Service's address in {service_cidr}; "
            "pick another (kubeadm uses the tenth, e.g. 10.96.0.10)"
        )
    cidrs = []
    zones: list[str] = []
    for cidr in params.reverse_cidrs:
        for part in cidr.split(","):
            if part.strip():
                cidrs.append(str(_network(part, "--reverse-cidrs")))
                zones.extend(reverse_zones(part))
    if len(zones) > MAX_REVERSE_ZONES:
        raise RenderError(f"bad --reverse-cidrs: {len(zones)} reverse zones, at most {MAX_REVERSE_ZONES}")
    if isinstance(params.replicas, bool) or not isinstance(params.replicas, int):
        raise RenderError(f"bad --replicas {params.replicas!r}: not a whole number")
    if not 1 <= params.replicas <= MAX_REPLICAS:
        raise RenderError(f"bad --replicas {params.replicas}: must be 1..{MAX_REPLICAS}")
    for flag, image in (("--image", params.image), ("--etcd-image", params.etcd_image)):
        if not _IMAGE_RE.match(image) or image.endswith((":", "@", "/")):
            raise RenderError(f"bad {flag} {image!r}: not an image reference")
    try:
        sizing.check(params.services, params.endpoints)
    except ValueError as exc:
        raise RenderError(str(exc)) from None
    if params.pull_policy not in PULL_POLICIES:
        raise RenderError(f"bad --pull-policy {params.pull_policy!r}: one of {', '.join(PULL_POLICIES)}")
    return dataclasses.replace(
        params,
        cluster_dns=str(dns_ip),
        service_cidr=str(service_cidr),
        domain=domain,
        reverse_cidrs=tuple(cidrs),
        # checked here only when given: the defaults matter (and are made) in check_shared
        etcd_ips=_etcd_ips(params.etcd_ips, dns_ip, service_cidr) if params.etcd_ips else (),
    )


def check_shared(params: Params) -> Params:
    """check() plus the shared topology's etcd member addresses (defaults filled in)."""
    params = check(params)
    dns_ip = ipaddress.ip_address(params.cluster_dns)
    return dataclasses.replace(params, etcd_ips=_etcd_ips(params.etcd_ips, dns_ip,
                                                          ipaddress.ip_network(params.service_cidr)))


def _etcd_ips(given: tuple[str, ...], dns_ip, service_cidr) -> tuple[str, ...]:
    """The etcd members' fixed ClusterIPs: given (comma lists allowed) or the ones after dns_ip."""
    texts = [part.strip() for item in given for part in item.split(",") if part.strip()]
    if not texts:
        ips = [dns_ip + n for n in range(1, ETCD_MEMBERS + 1)]
    else:
        ips = []
        for text in texts:
            try:
                ips.append(ipaddress.ip_address(text))
            except ValueError:
                raise RenderError(f"bad --etcd-ips {text!r}: not an IP address") from None
    if len(ips) != ETCD_MEMBERS or len(set(ips)) != ETCD_MEMBERS:
        raise RenderError(f"bad --etcd-ips: give {ETCD_MEMBERS} different addresses, one per etcd member")
    for ip in ips:
        if ip.version != service_cidr.version or ip not in service_cidr or ip in (
                dns_ip, service_cidr.network_address, service_cidr.network_address + 1) or (
                service_cidr.version == 4 and ip == service_cidr.broadcast_address):
            raise RenderError(f"bad --etcd-ips: {ip} is not a free address of the service CIDR {service_cidr} "
                              "(not the network, the kubernetes Service or --cluster-dns); pass --etcd-ips")
    return tuple(str(ip) for ip in ips)


def skydns_domains(params: Params) -> list[str]:
    """The zones skydns serves: the cluster domain, then the reverse zones of the CIDRs."""
    zones = [params.domain + "."]
    for cidr in params.reverse_cidrs:
        for zone in reverse_zones(cidr):
            if zone not in zones:
                zones.append(zone)
    return zones


def container_args(params: Params) -> dict[str, list[str]]:
    """Container name -> args, for the daemons built from this repo (params already checked).

    An IPv6 cluster DNS address (an IPv6 cluster) makes every daemon listen on :: (the pod
    address the kubelet probes and the Service sends to is IPv6) and healthz probe [::1]:53.
    """
    ipv6 = ipaddress.ip_address(params.cluster_dns).version == 6
    listen = DNS_LISTEN_V6 if ipv6 else DNS_LISTEN
    probe_server = DNS_PROBE_SERVER_V6 if ipv6 else DNS_PROBE_SERVER
    http = SKYDNS_HTTP_V6 if ipv6 else SKYDNS_HTTP
    return {
        "kube2sky": [
            f"--domain={params.domain}",
            f"--etcd-server={ETCD_URL}",
            f"--healthz-port={KUBE2SKY_HEALTHZ_PORT}",
            "--dns-service=kube-system/kube-dns",
            *(["--healthz-host=::"] if ipv6 else []),
        ],
        "skydns": [
            f"-machines={ETCD_URL}",
            f"-addr={listen}",
            f"-domain={','.join(skydns_domains(params))}",
            f"--http-addr={http}",
            f"--lameduck={SKYDNS_LAMEDUCK}",
            # a-b-c-d.<ns>.pod.<zone> answered from the name, as the stock CoreDNS Corefile does.
            "--pods=insecure",
        ],
        "healthz": [
            f"--probe=kubernetes=kubernetes.default.svc.{params.domain}/A@{probe_server}",
            f"-port={HEALTHZ_PORT}",
            *(["-address=::"] if ipv6 else []),
        ],
    }


def _host_port(ip: str, port: int) -> str:
    return f"[{ip}]:{port}" if ":" in ip else f"{ip}:{port}"


def etcd_client_urls(params: Params) -> list[str]:
    """https://<member ClusterIP>:2379 for every member (params already checked)."""
    return [f"https://{_host_port(ip, ETCD_CLIENT_PORT)}" for ip in params.etcd_ips]


def etcd_server_names(params: Params) -> list[str]:
    """What the etcd server (and peer) certificate must name, as openssl subjectAltName items."""
    names = [f"DNS:{ETCD_NAME}-{i}" for i in range(ETCD_MEMBERS)]
    names += [f"DNS:{ETCD_NAME}-{i}.{ETCD_NAME}.kube-system.svc.{params.domain}" for i in range(ETCD_MEMBERS)]
    return names + [f"IP:{ip}" for ip in params.etcd_ips] + ["DNS:localhost", "IP:127.0.0.1"]


def shared_container_args(params: Params) -> dict[str, list[str]]:
    """container_args for the shared topology: the daemons dial every etcd member over TLS with
    their own client certificate, and kube2sky campaigns for the leader key."""
    args = container_args(params)
    urls = ",".join(etcd_client_urls(params))
    tls = {"ca": f"{ETCD_TLS_DIR}/ca.crt", "cert": f"{ETCD_TLS_DIR}/tls.crt", "key": f"{ETCD_TLS_DIR}/tls.key"}
    kube2sky = [a for a in args["kube2sky"] if not a.startswith("--etcd-server=")]
    skydns = [a for a in args["skydns"] if not a.startswith("-machines=")]
    return {
        "kube2sky": [*kube2sky[:1], f"--etcd-server={urls}", f"--etcd-cafile={tls['ca']}",
                     f"--etcd-certfile={tls['cert']}", f"--etcd-keyfile={tls['key']}", *kube2sky[1:],
                     "--leader-elect"],
        "skydns": [f"-machines={urls}", f"-ca-cert={tls['ca']}", f"-tls-pem={tls['cert']}",
                   f"-tls-key={tls['key']}", *skydns],
        "healthz": args["healthz"],
    }


def etcd_command(params: Params) -> list[str]:
    """The etcd member's command line; $(POD_NAME) is the member name (Kubernetes expands it)."""
    ipv6 = ipaddress.ip_address(params.cluster_dns).version == 6
    any_addr = "[::]" if ipv6 else "0.0.0.0"
    peers = ",".join(f"{ETCD_NAME}-{i}=https://{ETCD_NAME}-{i}:{ETCD_PEER_PORT}" for i in range(ETCD_MEMBERS))
    crt, key, ca = f"{ETCD_TLS_DIR}/tls.crt", f"{ETCD_TLS_DIR}/tls.key", f"{ETCD_TLS_DIR}/ca.crt"
    return [
        "etcd",
        "--name=$(POD_NAME)",
        "--data-dir=/var/lib/etcd/data",
        f"--listen-client-urls=https://{any_addr}:{ETCD_CLIENT_PORT}",
        f"--advertise-client-urls=https://$(POD_NAME):{ETCD_CLIENT_PORT}",
        f"--listen-peer-urls=https://{any_addr}:{ETCD_PEER_PORT}",
        f"--initial-advertise-peer-urls=https://$(POD_NAME):{ETCD_PEER_PORT}",
        f"--listen-metrics-urls=http://{any_addr}:{ETCD_METRICS_PORT}",
        f"--initial-cluster={peers}",
        "--initial-cluster-state=new",
        f"--initial-cluster-token={ETCD_NAME}",
        f"--cert-file={crt}", f"--key-file={key}", f"--trusted-ca-file={ca}", "--client-cert-auth",
        f"--peer-cert-file={crt}", f"--peer-key-file={key}", f"--peer-trusted-ca-file={ca}",
        "--peer-client-cert-auth",
        # Peers connect from pod addresses, which no certificate can name in advance.
        "--experimental-peer-skip-client-san-verification",
        "--auto-compaction-mode=periodic",
        "--auto-compaction-retention=1h",
        "--quota-backend-bytes=2147483648",
        "--snapshot-count=10000",
    ]


def etcd_auth_steps(prefix: str = RECORDS_PREFIX, leader_key: str = LEADER_KEY) -> list[tuple[str, list[str]]]:
    """(step name, etcdctl args) of the one-time least-privilege setup, in order (as root).

    A client certificate's CN is its etcd user: kube2sky reads and writes /<prefix>/ and its
    leader key, skydns only reads /<prefix>/, root does everything (the operator).
    """
    records = f"/{prefix.strip('/')}/"
    return [
        ("wait-for-etcd", ["endpoint", "health"]),
        ("root-user", ["user", "add", "root", "--no-password"]),
        ("root-role", ["role", "add", "root"]),
        ("root-grant", ["user", "grant-role", "root", "root"]),
        ("kube2sky-role", ["role", "add", "kube2sky"]),
        ("kube2sky-records", ["role", "grant-permission", "kube2sky", "readwrite", records, "--prefix=true"]),
        ("kube2sky-leader", ["role", "grant-permission", "kube2sky", "readwrite", leader_key]),
        ("kube2sky-user", ["user", "add", "kube2sky", "--no-password"]),
        ("kube2sky-grant", ["user", "grant-role", "kube2sky", "kube2sky"]),
        ("skydns-role", ["role", "add", "skydns"]),
        ("skydns-records", ["role", "grant-permission", "skydns", "read", records, "--prefix=true"]),
        ("skydns-user", ["user", "add", "skydns", "--no-password"]),
        ("skydns-grant", ["user", "grant-role", "skydns", "skydns"]),
        ("auth-enable", ["auth", "enable"]),
    ]


def _yaml_scalar(text: str) -> str:
    return text if _PLAIN_RE.match(text) else json.dumps(text)


def _yaml_list(items: list[str], indent: int) -> str:
    pad = " " * indent
    return "\n".join(f"{pad}- {_yaml_scalar(item)}" for item in items)


def _indent(text: str, indent: int) -> str:
    pad = " " * indent
    return "\n".join(pad + line if line.strip() else "" for line in text.rstrip("\n").split("\n"))


def _template(name: str) -> string.Template:
    return string.Template((TEMPLATES / name).read_text(encoding="utf-8"))


def render(params: Params) -> dict[str, str]:
    """Part name (see FILES) -> manifest text. Validates first (RenderError)."""
    params = check(params)
    args = container_args(params)
    memory = {}
    for name in ("etcd", "kube2sky", "skydns"):
        size = sizing.memory(name, params.services, params.endpoints)
        memory[f"{name}_memory_request"] = str(size.request)
        memory[f"{name}_memory_limit"] = str(size.limit)
    pod = _template("pod.yaml").substitute(
        image=params.image,
        pull_policy=params.pull_policy,
        etcd_image=params.etcd_image,
        etcd_quota=str(sizing.etcd_quota_bytes(params.services, params.endpoints)),
        **{f"etcd_{name.lower()}": value for name, value in sizing.etcd_go_env(params.services, params.endpoints).items()},
        **memory,
        **{f"{name}_args": _yaml_list(values, 8) for name, values in args.items()},
    )
    values = {
        "cluster_dns": params.cluster_dns,
        "replicas": str(params.replicas),
        "pod": _indent(pod, 4),
    }
    return {part: _template(file).substitute(values) for part, file in FILES.items()}


def render_shared(params: Params) -> dict[str, str]:
    """Part name (see SHARED_FILES) -> manifest text of the shared topology (RenderError)."""
    params = check_shared(params)
    per_pod = render(params)
    args = shared_container_args(params)
    urls = ",".join(etcd_client_urls(params))
    members = "\n".join(
        _template("shared-etcd-member-svc.yaml").substitute(index=str(i), ip=ip).rstrip("\n")
        for i, ip in enumerate(params.etcd_ips))
    aliases = "\n".join(f"        - ip: {_yaml_scalar(ip)}\n          hostnames: [{ETCD_NAME}-{i}]"
                         for i, ip in enumerate(params.etcd_ips))
    etcd = _template("shared-etcd.yaml").substitute(
        member_services=members, host_aliases=aliases, etcd_image=params.etcd_image,
        etcd_command=_yaml_list(etcd_command(params), 12), client_urls=_yaml_scalar(urls))
    steps = [_template("shared-etcd-step.yaml").substitute(
        name=name, etcd_image=params.etcd_image, command=_yaml_list(["etcdctl", *argv], 4),
        client_urls=_yaml_scalar(urls)).rstrip("\n") for name, argv in etcd_auth_steps()]
    setup = _template("shared-etcd-setup.yaml").substitute(
        steps=_indent("\n".join(steps[:-1]), 8), last_step=_indent(steps[-1], 8))
    common = {"image": params.image, "pull_policy": params.pull_policy, "replicas": str(params.replicas),
              **{f"{name}_args": _yaml_list(values, 12) for name, values in args.items()}}
    return {
        "rbac": per_pod["rbac"],
        "service": per_pod["service"],
        "etcd": etcd,
        "etcd-setup": setup,
        "kube2sky": _template("shared-kube2sky.yaml").substitute(common),
        "skydns": _template("shared-skydns.yaml").substitute(common),
    }


def kubelet_flags(params: Params) -> str:
    """The kubelet flags that send pods to this DNS (params already checked)."""
    return f"--cluster-dns={params.cluster_dns} --cluster-domain={params.domain}"


def stream(parts: dict[str, str], controller: str) -> str:
    """One multi-document YAML for `kubectl apply -f -`: RBAC, Service, controller (per-pod)
    or every part in SHARED_FILES order (controller "shared")."""
    names = list(SHARED_FILES) if controller == "shared" else ["rbac", "service", controller]
    docs = [parts[name] for name in names]
    return "---\n".join(doc if doc.endswith("\n") else doc + "\n" for doc in docs)


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # one line, exit 2 (argparse prints usage too)
        self.exit(2, f"{self.prog}: error: {message}\n")


def _replicas(text: str) -> int:
    try:
        return int(text, 10)
    except ValueError:
        raise argparse.ArgumentTypeError(f"bad --replicas {text!r}: not a whole number") from None


def _count(text: str) -> int:
    try:
        value = int(text, 10)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"{text!r} is negative")
    return value


def parse_args(argv: list[str] | None) -> tuple[Params, str, str]:
    """argv -> (Params, controller, out_dir); controller is "shared" for --topology shared."""
    parser = _Parser(
        prog="render.py",
        description="Render the kube-skydns manifests (RBAC, kube-dns Service, controller) to stdout "
        "and print the kubelet flags to stderr.",
    )
    parser.add_argument("--cluster-dns", default=DEFAULT_CLUSTER_DNS,
                        help="clusterIP of the kube-dns Service (kubelet --cluster-dns); default %(default)s")
    parser.add_argument("--service-cidr", default=DEFAULT_SERVICE_CIDR,
                        help="the cluster's service CIDR; --cluster-dns must be inside it; default %(default)s")
    parser.add_argument("--domain", default=DEFAULT_DOMAIN,
                        help="cluster domain (kubelet --cluster-domain); default %(default)s")
    parser.add_argument("--reverse-cidrs", action="append", default=[], metavar="CIDR[,CIDR...]",
                        help="CIDRs whose reverse zones skydns answers authoritatively "
                        "(repeatable, comma lists allowed); default none: reverse names without "
                        "records are forwarded")
    parser.add_argument("--image", default=DEFAULT_IMAGE, help="the kube-skydns image; default %(default)s")
    parser.add_argument("--pull-policy", default="IfNotPresent", choices=PULL_POLICIES,
                        help="imagePullPolicy of the kube-skydns containers; default %(default)s")
    parser.add_argument("--etcd-image", default=ETCD_IMAGE, help="the etcd image; default %(default)s")
    parser.add_argument("--replicas", type=_replicas, default=DEFAULT_REPLICAS,
                        help="pods; default %(default)s")
    parser.add_argument("--services", type=_count, default=sizing.DEFAULT_SERVICES,
                        help="Services in the cluster, for memory limits and etcd's quota "
                        "(deploy/sizing.py); default %(default)s")
    parser.add_argument("--endpoints", type=_count, default=sizing.DEFAULT_ENDPOINTS,
                        help="ready endpoints of headless Services; default %(default)s")
    parser.add_argument("--controller", default="replicationcontroller", choices=CONTROLLERS,
                        help="what runs the pods (per-pod topology; shared uses Deployments); "
                        "default %(default)s")
    parser.add_argument("--topology", default="per-pod", choices=TOPOLOGIES,
                        help="per-pod: etcd and kube2sky in every DNS pod (small clusters); shared: "
                        "one 3-member etcd, two elected kube2sky, --replicas resolvers; default %(default)s")
    parser.add_argument("--etcd-ips", action="append", default=[], metavar="IP,IP,IP",
                        help="shared topology: the fixed ClusterIPs of the 3 etcd members; default "
                        "the three addresses after --cluster-dns")
    parser.add_argument("--out-dir", default="",
                        help="write rbac.yaml, skydns-svc.yaml, skydns-rc.yaml and "
                        "skydns-deployment.yaml into this directory instead of stdout")
    ns = parser.parse_args(argv)
    params = Params(
        cluster_dns=ns.cluster_dns,
        service_cidr=ns.service_cidr,
        domain=ns.domain,
        reverse_cidrs=tuple(ns.reverse_cidrs),
        image=ns.image,
        pull_policy=ns.pull_policy,
        replicas=ns.replicas,
        etcd_image=ns.etcd_image,
        etcd_ips=tuple(ns.etcd_ips),
        services=ns.services,
        endpoints=ns.endpoints,
    )
    return params, ("shared" if ns.topology == "shared" else ns.controller), ns.out_dir


def main(argv: list[str] | None = None) -> int:
    params, controller, out_dir = parse_args(argv)
    try:
        checked = check_shared(params) if controller == "shared" else check(params)
        parts = render_shared(checked) if controller == "shared" else render(checked)
    except RenderError as exc:
        sys.stderr.write(f"render.py: error: {exc}\n")
        return 2
    files = SHARED_FILES if controller == "shared" else FILES
    if out_dir:
        out = pathlib.Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        for part, file in files.items():
            (out / file).write_text(parts[part], encoding="utf-8")
            sys.stderr.write(f"wrote {out / file}\n")
    else:
        sys.stdout.write(stream(parts, controller))
    sys.stderr.write(
        "# Set these kubelet flags (or clusterDNS/clusterDomain in the KubeletConfiguration):\n"
        f"{kubelet_flags(checked)}\n"
    )
    if controller == "shared":
        sys.stderr.write(
            "# Before applying: the Secrets kube-dns-etcd-{server,root,kube2sky,skydns} (README, "
            "\"Large clusters\");\n# the server certificate must name: "
            f"{','.join(etcd_server_names(checked))}\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
