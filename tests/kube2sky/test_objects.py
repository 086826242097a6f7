"""objects: raw API JSON (here YAML) -> frozen values; garbage -> objects.Invalid."""

from __future__ import annotations

import pytest
import yaml

from kube2sky import objects

P = objects.Port
E = objects.Endpoint

PARSED = [
    ("service-clusterip", "Service", """
metadata: {name: web, namespace: default, resourceVersion: "42"}
spec:
  clusterIP: 10.0.0.10
  clusterIPs: [10.0.0.10, "fd00::10"]
  ports: [{name: http, port: 80, protocol: TCP}, {port: 81}]
""", objects.Service("default", "web", "ClusterIP", ("10.0.0.10", "fd00::10"),
                     (P("http", "TCP", 80), P("", "TCP", 81)), "", False, False, "42")),
    ("service-headless-tolerate", "Service", """
metadata:
  name: db
  namespace: default
  annotations: {service.alpha.kubernetes.io/tolerate-unready-endpoints: "true"}
spec: {clusterIP: None, clusterIPs: [None]}
""", objects.Service("default", "db", "ClusterIP", (), (), "", True, True)),
    ("service-headless-only-clusterips", "Service", """
metadata: {name: db, namespace: default}
spec: {clusterIPs: [None], publishNotReadyAddresses: true}
""", objects.Service("default", "db", "ClusterIP", (), (), "", True, True)),
    ("service-external-name", "Service", """
metadata: {name: ext, namespace: default}
spec: {type: ExternalName, externalName: " www.example.com "}
""", objects.Service("default", "ext", "ExternalName", (), (), "www.example.com", False, False)),
    ("service-no-spec", "Service", """
metadata: {name: bare, namespace: default}
""", objects.Service("default", "bare", "ClusterIP", (), (), "", False, False)),
    ("slice", "EndpointSlice", """
metadata:
  name: db-abc
  namespace: default
  labels: {kubernetes.io/service-name: db}
addressType: IPv4
ports: [{name: pg, port: 5432, protocol: TCP}, {name: all}]
endpoints:
- {addresses: [10.1.0.1, 10.1.0.1], hostname: db-0, conditions: {ready: true}}
- {addresses: [10.1.0.2]}
- {addresses: [10.1.0.3], conditions: {ready: false, serving: true, terminating: true}}
""", objects.EndpointSlice("default", "db-abc", "db", "IPv4", (
        E(("10.1.0.1",), "db-0", True, True, False),
        E(("10.1.0.2",), "", True, True, False),
        E(("10.1.0.3",), "", False, True, True),
    ), (P("pg", "TCP", 5432), P("all", "TCP", 0)))),
    ("slice-without-label", "EndpointSlice", """
metadata: {name: orphan, namespace: default}
addressType: IPv6
""", objects.EndpointSlice("default", "orphan", "", "IPv6", (), ())),
    ("endpoints", "Endpoints", """
metadata: {name: db, namespace: default}
subsets:
- addresses: [{ip: 10.1.0.1, hostname: db-0}]
  notReadyAddresses: [{ip: 10.1.0.2}]
  ports: [{name: pg, port: 5432, protocol: TCP}]
""", objects.EndpointSlice("default", "db", "db", "", (
        E(("10.1.0.1",), "db-0", True, True, False, (P("pg", "TCP", 5432),)),
        E(("10.1.0.2",), "", False, False, False, (P("pg", "TCP", 5432),)),
    ), ())),
    ("endpoints-no-subsets", "Endpoints", """
metadata: {name: db, namespace: default}
""", objects.EndpointSlice("default", "db", "db", "", (), ())),
    ("pod", "Pod", """
metadata: {name: p, namespace: default}
status: {phase: Running, podIP: 10.2.0.1, podIPs: [{ip: 10.2.0.1}, {ip: "fd00::2:1"}]}
""", objects.Pod("default", "p", ("10.2.0.1", "fd00::2:1"), "Running")),
    ("pod-pending", "Pod", """
metadata: {name: p, namespace: default}
status: {phase: Pending}
""", objects.Pod("default", "p", (), "Pending")),
]


@pytest.mark.parametrize("kind, text, want", [r[1:] for r in PARSED], ids=[r[0] for r in PARSED])
def test_parse(kind: str, text: str, want: object) -> None:
    assert objects.parse(kind, yaml.safe_load(text)) == want


INVALID = [
    ("not-an-object", "Service", "[1, 2]", "Service ?/?: want a JSON object, got list"),
    ("no-name", "Service", "metadata: {namespace: default}",
     "Service default/?: metadata.name is missing"),
    ("no-namespace", "Pod", "metadata: {name: p}", "Pod ?/p: metadata.namespace is missing"),
    ("no-metadata", "EndpointSlice", "addressType: IPv4", "EndpointSlice ?/?: metadata.name is missing"),
    ("spec-not-object", "Service", "{metadata: {name: s, namespace: n}, spec: [1]}",
     "Service n/s: spec must be an object, got list"),
    ("ports-not-list", "Service", "{metadata: {name: s, namespace: n}, spec: {ports: 80}}",
     "Service n/s: spec.ports must be a list, got int"),
    ("port-number-string", "Service",
     "{metadata: {name: s, namespace: n}, spec: {ports: [{name: http, port: '80'}]}}",
     "Service n/s: spec.ports[0].port must be an integer, got '80'"),
    ("cluster-ip-number", "Service", "{metadata: {name: s, namespace: n}, spec: {clusterIP: 1}}",
     "Service n/s: spec.clusterIP must be a string, got 1"),
    ("cluster-ips-item", "Service",
     "{metadata: {name: s, namespace: n}, spec: {clusterIPs: [{}]}}",
     "Service n/s: spec.clusterIPs[0] must be a string, got {}"),
    ("ready-string", "EndpointSlice",
     "{metadata: {name: e, namespace: n}, endpoints: [{addresses: [1.2.3.4], "
     "conditions: {ready: 'yes'}}]}",
     "EndpointSlice n/e: endpoints[0].conditions.ready must be true or false, got 'yes'"),
    ("endpoint-not-object", "EndpointSlice", "{metadata: {name: e, namespace: n}, endpoints: [1]}",
     "EndpointSlice n/e: endpoints[0] must be an object, got int"),
    ("endpoints-address-ip", "Endpoints",
     "{metadata: {name: e, namespace: n}, subsets: [{addresses: [{ip: 5}]}]}",
     "Endpoints n/e: subsets[0].addresses[0].ip must be a string, got 5"),
    ("pod-ips-garbage", "Pod", "{metadata: {name: p, namespace: n}, status: {podIPs: [x]}}",
     "Pod n/p: status.podIPs[0] must be an object, got str"),
    ("unknown-kind", "ConfigMap", "{metadata: {name: c, namespace: n}}",
     "ConfigMap n/c: kind 'ConfigMap' is not one kube2sky reads"),
]


@pytest.mark.parametrize("kind, text, message", [r[1:] for r in INVALID],
                         ids=[r[0] for r in INVALID])
def test_invalid(kind: str, text: str, message: str) -> None:
    with pytest.raises(objects.Invalid) as info:
        objects.parse(kind, yaml.safe_load(text))
    assert str(info.value) == message
    assert info.value.kind == kind


@pytest.mark.parametrize("raw, want", [
    ({"metadata": {"namespace": "n", "name": "x"}}, ("n", "x")),
    ({"metadata": {"name": 5}}, ("", "")),
    ({"metadata": "x"}, ("", "")),
    (None, ("", "")),
], ids=["ok", "bad-name", "bad-metadata", "none"])
def test_ref_never_raises(raw: object, want: tuple[str, str]) -> None:
    assert objects.ref(raw) == want


def test_values_are_frozen() -> None:
    svc = objects.parse("Service", {"metadata": {"name": "a", "namespace": "b"}})
    with pytest.raises(AttributeError):
        svc.name = "c"  # type: ignore[misc]
    assert svc.ref == ("b", "a")


# ---- the plain reading of a slice's endpoints vs the checked one (seeded, random shapes)

def _random_endpoint_field(rng):
    return rng.choice([None, True, False, 0, 1, "", "x", " 10.1.0.1 ", [], {}, ["10.1.0.1"], 1.5])


def _random_endpoint(rng):
    if rng.random() < 0.03:
        return rng.choice([None, "x", 3, [], ["a"]])
    ep = {}
    if rng.random() < 0.9:
        ep["addresses"] = (rng.choice([None, "10.0.0.1", 5, {}]) if rng.random() < 0.05 else
                           [rng.choice(["10.0.0.1", " 10.0.0.2", "fd00::1 ", "10.0.0.1", "", "x"])
                            if rng.random() < 0.97 else rng.choice([None, 7, []])
                            for _ in range(rng.choice([0, 1, 1, 1, 2, 3]))])
    if rng.random() < 0.7:
        ep["hostname"] = rng.choice(["web-0", "", "Web_1", None]) if rng.random() < 0.95 else _random_endpoint_field(rng)
    if rng.random() < 0.8:
        if rng.random() < 0.05:
            ep["conditions"] = _random_endpoint_field(rng)
        else:
            ep["conditions"] = {k: (rng.choice([True, False, None]) if rng.random() < 0.95 else _random_endpoint_field(rng))
                                for k in ("ready", "serving", "terminating") if rng.random() < 0.7}
    if rng.random() < 0.5:
        ep["nodeName"] = "node-1"
        ep["targetRef"] = {"kind": "Pod", "name": "p"}
    return ep


@pytest.mark.parametrize("seed", range(30))
def test_plain_endpoint_reading_equals_the_checked_one(seed) -> None:
    import random

    rng = random.Random(seed)
    answered = 0
    for _ in range(200):
        if rng.random() < 0.05:
            eps = rng.choice([None, {}, "x", 5])
        else:
            eps = [_random_endpoint(rng) for _ in range(rng.choice([0, 1, 3, 10]))]
        raw = {"metadata": {"name": "s", "namespace": "default"}, "endpoints": eps}
        fast = objects._plain_endpoints(eps)
        try:
            checked = objects._slice_endpoints(objects._Reader("EndpointSlice", raw), raw)
        except objects.Invalid:
            assert fast is None, eps
            with pytest.raises(objects.Invalid):
                objects.parse_endpoint_slice(raw)
            continue
        if fast is not None:
            answered += 1
            assert fast == checked, eps
        assert objects.parse_endpoint_slice(raw).endpoints == checked
        # read again after the held version: equal endpoints are its very objects
        held = objects.parse_endpoint_slice({**raw, "endpoints": eps[::-1] if isinstance(eps, list) else eps})
        again = objects.parse_endpoint_slice(raw, held)
        assert again.endpoints == checked
        if fast is not None:
            by_value = {ep: ep for ep in held.endpoints if ep.ports is None}
            assert all(ep is by_value.get(ep, ep) for ep in again.endpoints), eps
    assert answered >= 40  # the plain reading is the common case, not a bystander
