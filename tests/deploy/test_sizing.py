"""deploy/sizing.py: memory from the cluster size, and render.py's --services/--endpoints."""

from __future__ import annotations

import pytest
import yaml

from deploy import render, sizing

SIZES = [(0, 0), (1000, 1000), (10000, 10000), (10000, 100000), (50000, 500000)]


@pytest.mark.parametrize(("services", "endpoints"), SIZES, ids=[f"{s}-{e}" for s, e in SIZES])
@pytest.mark.parametrize("component", sorted(sizing.FORMULAS))
def test_limit_covers_the_formula_with_headroom(component, services, endpoints):
    size = sizing.memory(component, services, endpoints)
    need = sizing.mib(component, services, endpoints)
    assert size.request >= need and size.request >= sizing.FLOORS[component]
    assert size.limit >= size.request * 1.2 and size.limit % 16 == 0


@pytest.mark.parametrize("component", sorted(sizing.FORMULAS))
def test_memory_grows_with_the_cluster(component):
    small = sizing.memory(component, 1000, 1000)
    big = sizing.memory(component, 10000, 100000)
    assert big.limit > small.limit


def test_etcd_quota_floor_and_growth():
    assert sizing.etcd_quota_bytes(0, 0) == 256 * 2**20
    assert sizing.etcd_quota_bytes(50000, 500000) > sizing.etcd_quota_bytes(10000, 100000)


def _memory(text: str) -> dict[str, tuple[str, str]]:
    doc = yaml.safe_load(text)
    pod = doc["spec"]["template"]["spec"]
    return {c["name"]: (c["resources"]["requests"]["memory"], c["resources"]["limits"]["memory"])
            for c in pod["containers"]}


def test_render_sets_limits_and_quota_from_the_cluster_size():
    small = render.render(render.Params(services=100, endpoints=100))["replicationcontroller"]
    big = render.render(render.Params(services=10000, endpoints=100000))["replicationcontroller"]
    for name in ("etcd", "kube2sky", "skydns"):
        size = sizing.memory(name, 10000, 100000)
        assert _memory(big)[name] == (f"{size.request}Mi", f"{size.limit}Mi")
    assert _memory(small)["kube2sky"] != _memory(big)["kube2sky"]
    assert f"--quota-backend-bytes={sizing.etcd_quota_bytes(10000, 100000)}" in big


@pytest.mark.parametrize("argv", [["--services", "-1"], ["--endpoints", "many"]])
def test_bad_size_is_one_line_exit_2(argv, capsys):
    with pytest.raises(SystemExit) as exit_info:
        render.main(argv)
    assert exit_info.value.code == 2
    assert "render.py: error:" in capsys.readouterr().err


@pytest.mark.parametrize("services, endpoints", SIZES)
def test_etcd_go_env_keeps_the_heap_below_the_request(services, endpoints):
    env = sizing.etcd_go_env(services, endpoints)
    assert env["GOGC"] == str(sizing.ETCD_GOGC)
    heap = int(env["GOMEMLIMIT"].removesuffix("MiB"))
    assert sizing.GOMEMLIMIT_FLOOR <= heap <= sizing.memory("etcd", services, endpoints).request


def test_the_pod_gives_etcd_its_go_memory_settings():
    text = render.render(render.Params(services=10000, endpoints=100000))["replicationcontroller"]
    etcd = next(c for c in yaml.safe_load(text)["spec"]["template"]["spec"]["containers"] if c["name"] == "etcd")
    assert {e["name"]: e["value"] for e in etcd["env"]} == {"GOGC": "off", "GOMEMLIMIT": "436MiB"}
