"""The watch loop on scripted streams, and the manifests source. No sockets, no sleeping."""

from __future__ import annotations

import logging
import os
import random
import threading

import pytest

from kube2sky import k8swatch, manifests


def svc(name: str, rv: str, ns: str = "default") -> dict:
    return {"kind": "Service", "metadata": {"name": name, "namespace": ns, "resourceVersion": rv},
            "spec": {"clusterIP": "10.0.0.1"}}


def ev(etype: str, name: str, rv: str) -> dict:
    return {"type": etype, "object": svc(name, rv)}


def bookmark(rv: str) -> dict:
    return {"type": "BOOKMARK", "object": {"kind": "Service", "metadata": {"resourceVersion": rv}}}


def error(code: int, reason: str = "Expired") -> dict:
    return {"type": "ERROR", "object": {"kind": "Status", "code": code, "reason": reason, "message": f"{code} {reason}"}}


BROKEN = k8swatch.ApiError("connection reset")
GONE = k8swatch.Expired("410 from the server")

# Streams as module-level tuples (kopf style): LISTS are the successive list() answers
# ((items, rv) or an exception); WATCHES the successive watch() streams (events, and an
# exception to raise at that point). When the script runs out, the loop is stopped.
# EXPECT is what reaches the sink, WATCHED_FROM the resourceVersion of each watch() call.
CASES = [
    pytest.param(
        [([svc("a", "1")], "1")],
        [[ev("ADDED", "b", "2"), ev("MODIFIED", "a", "3"), ev("DELETED", "b", "4")]],
        [("listed", "start", ("a",)), ("ADDED", "b"), ("MODIFIED", "a"), ("DELETED", "b")],
        ["1"], id="normal"),
    pytest.param(
        [([], "1")],
        [[bookmark("7")], [ev("ADDED", "a", "8")]],
        [("listed", "start", ()), ("ADDED", "a")],
        ["1", "7"], id="bookmark moves the resourceVersion"),
    pytest.param(
        [([svc("a", "1")], "1"), ([svc("b", "9")], "9")],
        [[error(410)], []],
        [("listed", "start", ("a",)), ("listed", "410 Gone", ("b",))],
        ["1", "9"], id="410 only"),
    pytest.param(
        [([], "1"), ([], "5")],
        [[ev("ADDED", "a", "2"), GONE], []],
        [("listed", "start", ()), ("ADDED", "a"), ("listed", "410 Gone", ())],
        ["1", "5"], id="http 410 on watch"),
    pytest.param(
        [([], "1")],
        [[ev("ADDED", "a", "2"), BROKEN], [ev("ADDED", "b", "3")]],
        [("listed", "start", ()), ("ADDED", "a"), ("ADDED", "b")],
        ["1", "2"], id="error mid-stream re-watches from the last resourceVersion"),
    pytest.param(
        [([], "1")],
        [[{"type": "WEIRD", "object": svc("x", "2")}, {"type": "ADDED"}, "not an event", ev("ADDED", "a", "3")]],
        [("listed", "start", ()), ("ADDED", "a")],
        ["1"], id="unknown event types skipped"),
    pytest.param(
        [([], "1"), ([svc("a", "4")], "4")],
        [[error(500, "InternalError")], []],
        [("listed", "start", ()), ("listed", "watch error", ("a",))],
        ["1", "4"], id="error event relists"),
    pytest.param(
        [BROKEN, BROKEN, ([svc("a", "3")], "3")],
        [[]],
        [("listed", "start", ("a",))],
        ["3"], id="list errors back off"),
    pytest.param(
        [([], "1")],
        [[], [], [ev("ADDED", "a", "2")]],
        [("listed", "start", ()), ("ADDED", "a")],
        ["1", "1", "1"], id="normal stream end re-watches"),
]


class Stop(threading.Event):
    """A stop event whose wait() never sleeps; it records the backoff delays asked for."""

    def __init__(self) -> None:
        super().__init__()
        self.waits: list[float] = []

    def wait(self, timeout: float | None = None) -> bool:
        self.waits.append(timeout or 0.0)
        return self.is_set()


class Scripted:
    """A k8swatch.Transport playing LISTS and WATCHES; sets stop when the script is over."""

    def __init__(self, lists, watches, stop: Stop) -> None:
        self.lists = list(lists)
        self.watches = list(watches)
        self.stop_event = stop
        self.watched_from: list[str] = []

    def list(self, resource, on_page=None):
        if not self.lists:
            self.stop_event.set()
            raise k8swatch.ApiError("script over")
        answer = self.lists.pop(0)
        if isinstance(answer, Exception):
            raise answer
        return answer

    def watch(self, resource, resource_version):
        if not self.watches:
            self.stop_event.set()
            raise k8swatch.ApiError("script over")
        self.watched_from.append(resource_version)
        for item in self.watches.pop(0):
            if isinstance(item, Exception):
                raise item
            yield item

    def stop(self) -> None:
        self.stop_event.set()


def summarize(event: k8swatch.Event) -> tuple:
    if isinstance(event, k8swatch.Listed):
        return ("listed", event.cause, tuple(i["metadata"]["name"] for i in event.items))
    return (event.type, event.obj["metadata"]["name"])


@pytest.mark.parametrize(("lists", "watches", "expect", "watched_from"), CASES)
def test_follow(lists, watches, expect, watched_from):
    stop = Stop()
    transport = Scripted(lists, watches, stop)
    got: list[k8swatch.Event] = []
    k8swatch.follow(k8swatch.SERVICES, transport, got.append, stop, backoff=(1, 2), rng=random.Random(1))
    assert [summarize(e) for e in got] == expect
    assert transport.watched_from == watched_from


class Paged(Scripted):
    """Scripted, its lists handed to on_page one object per page (as ApiTransport does)."""

    def list(self, resource, on_page=None):
        items, rv = super().list(resource)
        for item in items if on_page is not None else ():
            on_page([item])
        return items, rv


def test_first_listing_is_also_emitted_page_by_page_relists_are_not():
    stop = Stop()
    transport = Paged([([svc("a", "1"), svc("b", "1")], "1"), ([svc("a", "4")], "4")],
                      [[error(410)], []], stop)
    got: list[k8swatch.Event] = []
    k8swatch.follow(k8swatch.SERVICES, transport, got.append, stop, backoff=(1,), rng=random.Random(1))
    pages = [tuple(i["metadata"]["name"] for i in e.items) for e in got if isinstance(e, k8swatch.Page)]
    assert pages == [("a",), ("b",)]
    assert [summarize(e) for e in got if not isinstance(e, k8swatch.Page)] == [
        ("listed", "start", ("a", "b")), ("listed", "410 Gone", ("a",))]
    assert isinstance(got[2], k8swatch.Listed)  # the pages come before their listing


def test_unknown_event_type_is_logged(caplog):
    stop = Stop()
    transport = Scripted([([], "1")], [[{"type": "WEIRD", "object": svc("x", "2")}]], stop)
    with caplog.at_level(logging.WARNING, logger="kube2sky.k8swatch"):
        k8swatch.follow(k8swatch.SERVICES, transport, lambda e: None, stop, backoff=(1,))
    assert "unknown event type 'WEIRD' for default/x skipped" in caplog.text


def test_retries_are_numbered(caplog):
    stop = Stop()
    transport = Scripted([BROKEN, BROKEN, ([], "1")], [], stop)
    with caplog.at_level(logging.WARNING, logger="kube2sky.k8swatch"):
        k8swatch.follow(k8swatch.SERVICES, transport, lambda e: None, stop, backoff=(1, 2), rng=random.Random(0))
    assert "services list failed: connection reset; retry #1 in" in caplog.text
    assert "retry #2 in" in caplog.text
    assert 0.8 <= stop.waits[0] <= 1.2 and 1.6 <= stop.waits[1] <= 2.4


@pytest.mark.parametrize(("schedule", "attempt", "low", "high"), [
    pytest.param((1, 2, 5), 1, 0.8, 1.2, id="first"),
    pytest.param((1, 2, 5), 3, 4.0, 6.0, id="last"),
    pytest.param((1, 2, 5), 9, 4.0, 6.0, id="beyond the end repeats the last"),
    pytest.param((), 1, 0.0, 0.0, id="empty schedule"),
])
def test_delay(schedule, attempt, low, high):
    for seed in range(20):
        assert low <= k8swatch.delay(schedule, attempt, random.Random(seed)) <= high


@pytest.mark.parametrize(("error", "host", "expect"), [
    pytest.param("hostname '10.0.0.1' doesn't match 'kubernetes'", "https://10.0.0.1:443",
                 "not valid for https://10.0.0.1:443", id="hostname mismatch"),
    pytest.param("[SSL: CERTIFICATE_VERIFY_FAILED] certificate verify failed: IP address mismatch, "
                 "certificate is not valid for '10.0.0.1'", "https://10.0.0.1:443",
                 "KUBERNETES_SERVICE_HOST", id="ip mismatch"),
    pytest.param("certificate verify failed: self signed certificate", "https://api:6443",
                 "--ca-file", id="unknown CA"),
    pytest.param("Connection refused", "http://127.0.0.1:1", "http://127.0.0.1:1: Connection refused",
                 id="plain"),
])
def test_explain(error, host, expect):
    assert expect in k8swatch.explain(OSError(error), host)


# ---------------------------------------------------------------- manifests

SERVICES_YAML = """\
apiVersion: v1
kind: Service
metadata: {name: kubernetes, namespace: default}
spec: {ports: [{name: https, port: 443}]}
---
apiVersion: v1
kind: Service
metadata: {name: web}
spec: {ports: [{name: http, port: 80}], selector: {app: web}}
---
apiVersion: v1
kind: Service
metadata: {name: fixed, namespace: prod}
spec: {clusterIP: 10.96.0.2}
---
kind: ConfigMap
metadata: {name: ignored}
"""
LIST_YAML = """\
kind: List
items:
  - kind: Pod
    metadata: {name: web-1, labels: {app: web}}
    status: {podIP: 10.244.0.5}
  - kind: Pod
    metadata: {name: web-2, labels: {app: web}}
    spec: {hostname: web-2, subdomain: web}
    status: {podIP: 10.244.0.6, conditions: [{type: Ready, status: "False"}]}
  - kind: Pod
    metadata: {name: other, labels: {app: other}}
    status: {podIP: 10.244.0.7}
"""


def write(path, text: str) -> None:
    path.write_text(text)
    st = os.stat(path)
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000_000))


def names(items) -> dict:
    return {(i["metadata"].get("namespace", ""), i["metadata"]["name"]): i for i in items}


def test_manifests_list(tmp_path):
    write(tmp_path / "services.yaml", SERVICES_YAML)
    write(tmp_path / "pods.yml", LIST_YAML)
    source = manifests.ManifestSource(str(tmp_path), poll_interval=0.001)
    services, rv = source.list(k8swatch.SERVICES)
    by = names(services)
    assert set(by) == {("default", "kubernetes"), ("default", "web"), ("prod", "fixed")}
    assert by[("default", "kubernetes")]["spec"]["clusterIP"] == "10.96.0.1"
    assert by[("prod", "fixed")]["spec"]["clusterIP"] == "10.96.0.2"
    web_ip = by[("default", "web")]["spec"]["clusterIP"]
    assert web_ip not in ("10.96.0.1", "10.96.0.2", "10.96.0.10")
    slices, _ = source.list(k8swatch.ENDPOINT_SLICES)
    assert [s["metadata"]["labels"]["kubernetes.io/service-name"] for s in slices] == ["web"]
    assert slices[0]["endpoints"] == [
        {"addresses": ["10.244.0.5"], "conditions": {"ready": True}},
        {"addresses": ["10.244.0.6"], "conditions": {"ready": False}, "hostname": "web-2"}]
    assert slices[0]["ports"] == [{"name": "http", "protocol": "TCP", "port": 80}]
    pods, _ = source.list(k8swatch.PODS)
    assert len(pods) == 3
    # stable allocation across reloads
    write(tmp_path / "pods.yml", LIST_YAML + "\n")
    again, rv2 = source.list(k8swatch.SERVICES)
    assert rv2 != rv and names(again)[("default", "web")]["spec"]["clusterIP"] == web_ip


def test_manifests_change_ends_the_watch(tmp_path):
    write(tmp_path / "a.yaml", SERVICES_YAML)
    source = manifests.ManifestSource(str(tmp_path), poll_interval=0.001)
    _, rv = source.list(k8swatch.SERVICES)
    stream = source.watch(k8swatch.SERVICES, rv)
    write(tmp_path / "b.yaml", "kind: Namespace\nmetadata: {name: extra}\n")
    with pytest.raises(k8swatch.Expired) as info:
        next(stream)
    assert info.value.cause == "manifests changed"


def test_manifests_bad_file_keeps_last_good(tmp_path, caplog):
    write(tmp_path / "a.yaml", SERVICES_YAML)
    source = manifests.ManifestSource(str(tmp_path), poll_interval=0.001)
    before, _ = source.list(k8swatch.SERVICES)
    write(tmp_path / "a.yaml", "kind: Service\nmetadata: {name: [unclosed\n")
    with caplog.at_level(logging.ERROR, logger="kube2sky.manifests"):
        after, _ = source.list(k8swatch.SERVICES)
    assert "cannot be read, keeping its last good version" in caplog.text
    assert set(names(after)) == set(names(before))


def test_manifests_stop_unblocks_watch(tmp_path):
    write(tmp_path / "a.yaml", SERVICES_YAML)
    source = manifests.ManifestSource(str(tmp_path), poll_interval=0.001)
    _, rv = source.list(k8swatch.SERVICES)
    source.stop()
    assert list(source.watch(k8swatch.SERVICES, rv)) == []
