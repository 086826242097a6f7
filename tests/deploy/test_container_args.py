"""Every container's args in manifests/ and docker-compose.yml run through the real click commands.

Each daemon's console script is `<pkg>.cli:main`. The args are parsed twice:
1. `make_context` of the click command (parsing and type conversion only, nothing runs), after
   the same Go-style argv pre-processing the console script does;
2. the console script's `main(argv)` itself with `<pkg>.app.run` replaced by a stub that
   captures the Settings (so the CLI's own validation runs, and nothing is started).
The captured Settings are then checked against the pod: listen ports are the probed ports, the
zone is the cluster domain, the etcd endpoint is the pod's etcd.
"""

from __future__ import annotations

import importlib
import os
import pathlib

import click
import pytest

from deploy import render
from tests.deploy import common

ENV_PREFIXES = ("SKYDNS_", "KUBE2SKY_", "HEALTHZ_")
ENV_NAMES = ("ETCD_MACHINES", "KUBECONFIG", "KUBERNETES_SERVICE_HOST", "KUBERNETES_SERVICE_PORT")


class Captured(BaseException):
    """Raised by the app.run stub: carries the Settings the CLI built (BaseException so no
    `except Exception` in a CLI swallows it)."""

    def __init__(self, settings: object) -> None:
        super().__init__("captured")
        self.settings = settings


def cli_module(pkg: str):
    """`<pkg>.cli` (every daemon has one: a missing one is a failure, not a skip)."""
    return importlib.import_module(f"{pkg}.cli")


def click_command(module) -> click.Command:
    """The module's click command: `main` when it is one, else its single click.Command."""
    main = getattr(module, "main", None)
    if isinstance(main, click.Command):
        return main
    commands = {id(v): v for v in vars(module).values() if isinstance(v, click.Command)}
    assert len(commands) == 1, f"{module.__name__}: expected one click command, found {len(commands)}"
    return next(iter(commands.values()))


def preprocess(module, argv: list[str]) -> list[str]:
    """The argv rewriting the console script does before click sees it (Go-style -flag=value).

    skydns: main() calls cli.preprocess(argv) -> (args, warnings). healthz and kube2sky do it
    inside their click Command's parse_args, so make_context already covers them.
    """
    fn = getattr(module, "preprocess", None)
    if not callable(fn):
        return list(argv)
    result = fn(list(argv))
    if isinstance(result, tuple):
        args, warnings = result
        assert not warnings, f"{module.__name__}: {warnings}"
        return list(args)
    return list(result)


def invoke_main(module, argv: list[str]) -> object:
    """Run the console script's main(argv) with app.run stubbed; return the Settings."""
    app = importlib.import_module(f"{module.__name__.rsplit('.', 1)[0]}.app")

    def stub(settings, *args, **kwargs):
        raise Captured(settings)

    original = app.run
    app.run = stub
    try:
        main = getattr(module, "main")
        if isinstance(main, click.Command):
            main.main(args=list(argv), prog_name=module.__name__.split(".")[0], standalone_mode=False)
        else:
            main(list(argv))
    except Captured as captured:
        return captured.settings
    except SystemExit as exc:
        pytest.fail(f"{module.__name__}.main{tuple(argv)} exited {exc.code} before app.run")
    finally:
        app.run = original
    pytest.fail(f"{module.__name__}.main{tuple(argv)} returned without calling app.run")


@pytest.fixture(autouse=True)
def clean_env(monkeypatch):
    """No SKYDNS_/KUBE2SKY_/HEALTHZ_ variable of the machine leaks into the parse."""
    for name in list(os.environ):
        if name.startswith(ENV_PREFIXES) or name in ENV_NAMES:
            monkeypatch.delenv(name, raising=False)


def stand_ins(tmp_path: pathlib.Path, service: dict) -> dict[str, str]:
    """Container path -> local path for a compose service's volumes (files the CLI may open)."""
    mapping = {}
    for volume in service.get("volumes", []):
        host, container = volume.split(":")[:2]
        local = (common.ROOT / host).resolve()
        if not local.exists():
            local = tmp_path / pathlib.Path(container).name
            if "kubeconfig" in container:
                local.write_text(KUBECONFIG)
            else:
                local.mkdir(exist_ok=True)
        mapping[container] = str(local)
    return mapping


KUBECONFIG = """\
apiVersion: v1
kind: Config
clusters:
- name: kind-kind
  cluster: {server: "https://kind-control-plane:6443", insecure-skip-tls-verify: true}
users:
- name: kind-kind
  user: {token: test}
contexts:
- name: kind-kind
  context: {cluster: kind-kind, user: kind-kind}
current-context: kind-kind
"""


def manifest_cases() -> list[tuple[str, str, list[str], dict[str, str]]]:
    """(id, daemon, args, path map) for every daemon container of every controller file."""
    cases = []
    for name in common.CONTROLLER_FILES:
        for cname, container in common.containers(name).items():
            if cname in common.DAEMONS:
                assert container["command"] == [cname], f"{name}: {cname} runs {container['command']}"
                cases.append((f"{name}:{cname}", cname, list(container.get("args", [])), {}))
    return cases


def compose_cases() -> list[tuple[str, str, list[str], dict]]:
    cases = []
    for sname, service in common.compose()["services"].items():
        command = service.get("command")
        if service.get("image", "").startswith("kube-skydns") and command:
            cases.append((f"compose:{sname}", command[0], list(command[1:]), service))
    return cases


def render_cases() -> list[tuple[str, str, list[str], dict]]:
    """Generator variants the checked-in files do not show: reverse zones, IPv6, another domain."""
    variants = {
        "reverse-cidrs": render.Params(reverse_cidrs=("10.96.0.0/12", "fd00:10:96::/112")),
        "ipv6": render.Params(cluster_dns="fd00:10:96::a", service_cidr="fd00:10:96::/112"),
        "other-domain": render.Params(cluster_dns="10.0.0.10", service_cidr="10.0.0.0/16", domain="corp.example"),
    }
    cases = []
    for vid, params in variants.items():
        for daemon, args in render.container_args(render.check(params)).items():
            cases.append((f"render-{vid}:{daemon}", daemon, args, {}))
    return cases


CASES = manifest_cases() + compose_cases() + render_cases()


def _args_for(tmp_path, args, source) -> list[str]:
    mapping = stand_ins(tmp_path, source) if source else {}
    out = []
    for arg in args:
        for container_path, local in mapping.items():
            arg = arg.replace(container_path, local)
        out.append(arg)
    return out


@pytest.mark.parametrize(("daemon", "args", "source"), [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_args_parse_with_the_click_command(daemon, args, source, tmp_path):
    module = cli_module(daemon)
    command = click_command(module)
    argv = preprocess(module, _args_for(tmp_path, args, source))
    ctx = command.make_context(daemon, argv)
    assert not ctx.args, f"{daemon}: unexpected extra arguments {ctx.args}"


def _port(addr: str) -> int:
    return int(str(addr).rsplit(":", 1)[1])


def _zone(args: list[str]) -> str:
    """The cluster zone a container's args are for (kube2sky --domain / healthz probe name)."""
    for arg in args:
        if arg.startswith("--domain="):
            return arg.split("=", 1)[1].rstrip(".") + "."
        if arg.startswith("-domain="):
            return arg.split("=", 1)[1].split(",")[0]
        if arg.startswith("--probe="):
            return arg.split("kubernetes.default.svc.", 1)[1].split("/", 1)[0] + "."
    raise AssertionError(f"no zone in {args}")


def check_skydns(settings, args: list[str]) -> None:
    assert settings.addr_port == 53
    assert settings.addr_host in ("0.0.0.0", "::")
    assert settings.http_port == 9153
    assert settings.domains[0] == _zone(args)
    assert settings.etcd_endpoints == ("http://127.0.0.1:2379",)


def check_kube2sky(settings, args: list[str]) -> None:
    assert settings.zone == _zone(args)
    assert settings.healthz_port == 8081
    assert settings.etcd_endpoints == ("127.0.0.1:2379",)
    assert settings.dns_service == "kube-system/kube-dns"


def check_healthz(settings, args: list[str]) -> None:
    assert settings.port == 8080
    (probe,) = settings.probes
    assert probe.name == "kubernetes"
    assert probe.qname == f"kubernetes.default.svc.{_zone(args)}"
    assert (probe.server, probe.port) in (("127.0.0.1", 53), ("::1", 53))


CHECKS = {"skydns": check_skydns, "kube2sky": check_kube2sky, "healthz": check_healthz}


@pytest.mark.parametrize(("daemon", "args", "source"), [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_args_build_the_settings_the_pod_relies_on(daemon, args, source, tmp_path):
    module = cli_module(daemon)
    settings = invoke_main(module, _args_for(tmp_path, args, source))
    CHECKS[daemon](settings, args)

