"""A Kubernetes API server double speaking the real list/watch protocol, for tests.

Rules:
1. Only what kube2sky reads: discovery (/api, /apis, /apis/discovery.k8s.io/v1), and list/watch of
   services, endpoints, pods, namespaces (core/v1) and endpointslices (discovery.k8s.io/v1), cluster
   wide and per namespace. Objects are plain JSON dicts, as the real server sends them.
2. One resourceVersion counter for every kind (like etcd's revision). Each change is kept in a
   history; a watch from resourceVersion N replays the history after N, then streams new events as
   chunked JSON lines. A resourceVersion older than the history floor is answered, like the real
   server, with HTTP 200 and one ERROR event carrying a Status with code 410 ("too old resource
   version"), then the stream ends.
3. Writes through HTTP work too (POST to a collection, PUT/DELETE/GET of one object,
   namespaces included), so the real client and the e2e module can drive it; ClusterIPs are
   assigned from 10.0.200.0/22 on create.
4. Tests change the world from their own thread with create/update/delete/apply, force a 410 with
   expire_history(), cut every open watch with drop_watches(), and inject raw events (unknown
   types, ERROR statuses) with inject(). silent=True changes an object without a watch event (an
   event lost in a compaction). Bookmarks are sent every bookmark_interval seconds when the
   client asks with allowWatchBookmarks=true. `token` demands a bearer token (else 401); `tls`
   serves https with the given certificate.
5. Binds 127.0.0.1:0 only; close() stops the server and ends every stream.
6. Fast enough for a large cluster (10,000 Services + 100,000 endpoints, bench/scale.py): each
   object is kept with its JSON encoding (encoded once per change, never deep-copied to serve
   it); a list pages (``limit``/``continue``) over a snapshot taken by its first page, so every
   page is served at the first page's resourceVersion, as the real server does; a continue
   token older than the history floor (after expire_history) answers 410 Gone ("Expired"),
   and the client must list from the start. Watches find their place in the per-kind
   history by bisection instead of scanning it.
"""

from __future__ import annotations

import bisect
import copy
import http.server
import itertools
import json
import socket
import ssl
import threading
import time
import urllib.parse

# plural -> (kind, group/version path, namespaced)
RESOURCES = {
    "services": ("Service", "/api/v1", True),
    "endpoints": ("Endpoints", "/api/v1", True),
    "pods": ("Pod", "/api/v1", True),
    "namespaces": ("Namespace", "/api/v1", False),
    "endpointslices": ("EndpointSlice", "/apis/discovery.k8s.io/v1", True),
}
KIND_TO_PLURAL = {kind: plural for plural, (kind, _, _) in RESOURCES.items()}


def _plural(kind_or_plural: str) -> str:
    return KIND_TO_PLURAL.get(kind_or_plural, kind_or_plural)


class ApiServer:
    """The double. Use as a context manager, or call start() and close()."""

    def __init__(self, serve_endpointslices: bool = True, bookmark_interval: float = 1.0,
                 tls: tuple[str, str] | None = None) -> None:
        self.serve_endpointslices = serve_endpointslices
        self.tls = tls  # (certfile, keyfile): serve https
        self.token = ""  # when set, requests need "Authorization: Bearer <token>" (else 401)
        self.bookmark_interval = bookmark_interval
        self._cond = threading.Condition()
        self._rv = 100
        self._floor = 0  # watches from a resourceVersion below this get 410
        self._objects: dict[str, dict[tuple[str, str], dict]] = {plural: {} for plural in RESOURCES}
        # the JSON of each object, encoded once per change (what lists serve)
        self._encoded: dict[str, dict[tuple[str, str], bytes]] = {plural: {} for plural in RESOURCES}
        self._sorted: dict[str, list[tuple[str, str]] | None] = {plural: None for plural in RESOURCES}
        # per kind: resourceVersions and encoded watch events, in order (bisect by rv)
        self._history: dict[str, tuple[list[int], list[bytes]]] = {p: ([], []) for p in RESOURCES}
        self._snapshots: dict[str, tuple[int, list[bytes]]] = {}  # continue token base -> (rv, items)
        self._snapshot_ids = itertools.count(1)
        self._drop_gen = 0
        self._next_ip = 0
        self._closed = False
        self.requests: list[str] = []  # paths with query, in order (for assertions)
        self.watch_count = 0
        self.list_count = 0
        self._server: http.server.ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    # ---- lifecycle ----
    def start(self) -> "ApiServer":
        double = self

        class Handler(_Handler):
            api = double

        self._server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        if self.tls is not None:
            context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
            context.load_cert_chain(*self.tls)
            self._server.socket = context.wrap_socket(self._server.socket, server_side=True)
        self._thread = threading.Thread(target=self._server.serve_forever, name="apiserver", daemon=True)
        self._thread.start()
        return self

    @property
    def port(self) -> int:
        assert self._server is not None
        return self._server.server_address[1]

    @property
    def url(self) -> str:
        return f"{'https' if self.tls else 'http'}://127.0.0.1:{self.port}"

    def close(self) -> None:
        with self._cond:
            self._closed = True
            self._cond.notify_all()
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None

    def __enter__(self) -> "ApiServer":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.close()

    # ---- test helpers (any thread) ----
    @property
    def resource_version(self) -> int:
        with self._cond:
            return self._rv

    def objects(self, kind: str) -> list[dict]:
        with self._cond:
            return [copy.deepcopy(o) for o in self._objects[_plural(kind)].values()]

    def get(self, kind: str, namespace: str, name: str) -> dict | None:
        with self._cond:
            obj = self._objects[_plural(kind)].get((namespace or "", name))
            return copy.deepcopy(obj) if obj is not None else None

    def count(self, kind: str) -> int:
        with self._cond:
            return len(self._objects[_plural(kind)])

    # silent=True changes the object without a watch event, as if the event had been lost in
    # a compaction: only a relist (expire_history) or a restart can find it.
    def create(self, obj: dict, silent: bool = False) -> dict:
        return self._change(obj, "ADDED", silent)

    def update(self, obj: dict, silent: bool = False) -> dict:
        return self._change(obj, "MODIFIED", silent)

    def apply(self, obj: dict, silent: bool = False) -> dict:
        """Create or update."""
        plural = _plural(obj["kind"])
        with self._cond:
            exists = _key(obj) in self._objects[plural]
        return self._change(obj, "MODIFIED" if exists else "ADDED", silent)

    def delete(self, kind: str, namespace: str, name: str, silent: bool = False) -> dict | None:
        plural = _plural(kind)
        with self._cond:
            old = self._objects[plural].pop((namespace or "", name), None)
            if old is None:
                return None
            self._encoded[plural].pop((namespace or "", name), None)
            self._sorted[plural] = None
            self._rv += 1
            old = copy.deepcopy(old)
            old["metadata"]["resourceVersion"] = str(self._rv)
            if not silent:
                self._record(plural, {"type": "DELETED", "object": old})
            self._cond.notify_all()
            return old

    def expire_history(self) -> None:
        """Forget the history: every open watch gets an ERROR 410 event, and so does every watch
        started from an older resourceVersion (the client must relist)."""
        with self._cond:
            self._rv += 1
            self._floor = self._rv
            for rvs, events in self._history.values():
                rvs.clear()
                events.clear()
            self._snapshots.clear()
            self._cond.notify_all()

    def drop_watches(self) -> None:
        """Cut every open watch connection mid-stream (no terminating chunk)."""
        with self._cond:
            self._drop_gen += 1
            self._cond.notify_all()

    def inject(self, kind: str, event: dict) -> None:
        """Send a raw event (e.g. {"type": "WEIRD", "object": {...}}) to watchers of kind."""
        with self._cond:
            self._rv += 1
            self._record(_plural(kind), event)
            self._cond.notify_all()

    # ---- internals ----
    def _change(self, obj: dict, event_type: str, silent: bool = False) -> dict:
        obj = copy.deepcopy(obj)
        plural = _plural(obj["kind"])
        kind, group_version, namespaced = RESOURCES[plural]
        meta = obj.setdefault("metadata", {})
        if namespaced:
            meta.setdefault("namespace", "default")
        else:
            meta.pop("namespace", None)
        obj.setdefault("apiVersion", group_version.split("/", 2)[-1] if group_version != "/api/v1" else "v1")
        if plural == "endpointslices":
            obj["apiVersion"] = "discovery.k8s.io/v1"
        with self._cond:
            self._rv += 1
            meta["resourceVersion"] = str(self._rv)
            meta.setdefault("uid", f"uid-{plural}-{meta.get('namespace', '')}-{meta['name']}")
            key = _key(obj)
            if key not in self._objects[plural]:
                self._sorted[plural] = None
            self._objects[plural][key] = obj
            encoded = json.dumps(obj, separators=(",", ":")).encode()
            self._encoded[plural][key] = encoded
            if not silent:
                self._record(plural, {"type": event_type, "object": obj}, b'{"type":"%s","object":%s}'
                             % (event_type.encode(), encoded))
            self._cond.notify_all()
        return copy.deepcopy(obj)

    def _record(self, plural: str, event: dict, encoded: bytes | None = None) -> None:
        """Append one watch event at the current resourceVersion (caller holds the lock)."""
        rvs, events = self._history[plural]
        rvs.append(self._rv)
        events.append(encoded if encoded is not None else json.dumps(event).encode())

    def _list(self, plural: str, namespace: str | None, token: str = "",
              limit: int = 0) -> tuple[list[bytes], int, int, str]:
        """(a page of encoded items, resourceVersion, items left after it, continue token).

        The first page snapshots the whole listing; later pages come from that snapshot.

        Raises:
            LookupError: the continue token is unknown or older than the history floor (410).
        """
        with self._cond:
            if token:
                base, _, offset = token.rpartition(":")
                snapshot = self._snapshots.get(base)
                if snapshot is None or snapshot[0] < self._floor or not offset.isdigit():
                    raise LookupError(token)
                rv, items = snapshot
                start = int(offset)
            else:
                keys = self._sorted[plural]
                if keys is None:
                    keys = self._sorted[plural] = sorted(self._objects[plural])
                encoded = self._encoded[plural]
                items = [encoded[k] for k in keys if namespace is None or k[0] == namespace]
                rv, start = self._rv, 0
                base = ""
            end = start + limit if limit else len(items)
            page = items[start:end]
            left = max(0, len(items) - end)
            if not left:
                if token:
                    self._snapshots.pop(base, None)
                return page, rv, 0, ""
            if not base:
                base = str(next(self._snapshot_ids))
                self._snapshots[base] = (rv, items)
                while len(self._snapshots) > 16:  # lists abandoned half way
                    self._snapshots.pop(next(iter(self._snapshots)))
            return page, rv, left, f"{base}:{end}"


def _in_namespace(event: bytes, namespace: str) -> bool:
    """Whether a watch event is for an object of namespace (events of other types always are)."""
    doc = json.loads(event)
    if doc.get("type") not in ("ADDED", "MODIFIED", "DELETED"):
        return True
    return ((doc.get("object") or {}).get("metadata") or {}).get("namespace", "") == namespace


def _key(obj: dict) -> tuple[str, str]:
    meta = obj["metadata"]
    return meta.get("namespace", "") or "", meta["name"]


def _status(code: int, reason: str, message: str) -> dict:
    return {"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
            "message": message, "reason": reason, "code": code}


class _Handler(http.server.BaseHTTPRequestHandler):
    api: ApiServer
    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args) -> None:  # noqa: A002 - stdlib signature
        pass

    def do_GET(self) -> None:  # noqa: N802 - stdlib name
        self.api.requests.append(self.path)
        if self.api.token and self.headers.get("Authorization") != f"Bearer {self.api.token}":
            return self._json(401, _status(401, "Unauthorized", "Unauthorized"))
        url = urllib.parse.urlsplit(self.path)
        query = dict(urllib.parse.parse_qsl(url.query))
        parts = [p for p in url.path.split("/") if p]
        if url.path == "/api":
            return self._json(200, {"kind": "APIVersions", "versions": ["v1"], "serverAddressByClientCIDRs": []})
        if url.path == "/apis":
            groups = []
            if self.api.serve_endpointslices:
                version = {"groupVersion": "discovery.k8s.io/v1", "version": "v1"}
                groups.append({"name": "discovery.k8s.io", "versions": [version], "preferredVersion": version})
            return self._json(200, {"kind": "APIGroupList", "apiVersion": "v1", "groups": groups})
        if url.path in ("/apis/discovery.k8s.io", "/apis/discovery.k8s.io/v1") and not self.api.serve_endpointslices:
            return self._json(404, _status(404, "NotFound", "the server could not find the requested resource"))
        if url.path == "/apis/discovery.k8s.io/v1":
            return self._json(200, {"kind": "APIResourceList", "apiVersion": "v1", "groupVersion": "discovery.k8s.io/v1",
                                    "resources": [{"name": "endpointslices", "singularName": "endpointslice",
                                                   "namespaced": True, "kind": "EndpointSlice",
                                                   "verbs": ["get", "list", "watch"]}]})
        if url.path == "/api/v1":
            return self._json(200, {"kind": "APIResourceList", "groupVersion": "v1", "resources": [
                {"name": p, "namespaced": ns, "kind": k, "verbs": ["get", "list", "watch"]}
                for p, (k, gv, ns) in RESOURCES.items() if gv == "/api/v1"]})
        # /api/v1/<plural> | /api/v1/namespaces/<ns>/<plural> | /apis/discovery.k8s.io/v1/... the same
        base = 2 if parts[:1] == ["api"] else 3
        rest = parts[base:]
        namespace = None
        if len(rest) in (3, 4) and rest[0] == "namespaces":
            namespace, rest = rest[1], rest[2:]
        if len(rest) == 2 and rest[0] in RESOURCES:  # GET one object
            found = self.api.get(rest[0], namespace or "", rest[1])
            if found is None:
                return self._json(404, _status(404, "NotFound", f"{rest[0]} {rest[1]} not found"))
            return self._json(200, found)
        if len(rest) != 1 or rest[0] not in RESOURCES:
            return self._json(404, _status(404, "NotFound", f"no resource at {url.path}"))
        plural = rest[0]
        kind, group_version, _ = RESOURCES[plural]
        if "/" + "/".join(parts[:base]) != group_version or (plural == "endpointslices" and not self.api.serve_endpointslices):
            return self._json(404, _status(404, "NotFound", f"no resource at {url.path}"))
        if query.get("watch") in ("1", "true", "True"):
            return self._watch(plural, namespace, query)
        self.api.list_count += 1
        limit = int(query.get("limit", "0") or 0)
        try:
            items, rv, left, token = self.api._list(plural, namespace, query.get("continue", ""), limit)
        except LookupError:
            return self._json(410, _status(410, "Expired", "The provided continue parameter is too old "
                                           "to display a consistent list result. You can start a new "
                                           "list without the continue parameter."))
        meta: dict = {"resourceVersion": str(rv)}
        if token:
            meta["continue"] = token
            meta["remainingItemCount"] = left
        api_version = group_version.split("/", 2)[-1] if plural == "endpointslices" else "v1"
        head = json.dumps({"kind": kind + "List", "apiVersion": api_version, "metadata": meta})
        return self._raw(200, head[:-1].encode() + b',"items":[' + b",".join(items) + b"]}")

    # ---- writes (what kubectl and the client's create/replace/delete send) ----
    def _target(self) -> tuple[str, str | None, str | None] | None:
        """(plural, namespace, name) of a write request, or None."""
        parts = [p for p in urllib.parse.urlsplit(self.path).path.split("/") if p]
        base = 2 if parts[:1] == ["api"] else 3
        rest = parts[base:]
        if rest[:1] == ["namespaces"] and len(rest) <= 2:
            return "namespaces", None, rest[1] if len(rest) == 2 else None
        if len(rest) >= 3 and rest[0] == "namespaces" and rest[2] in RESOURCES:
            return rest[2], rest[1], rest[3] if len(rest) > 3 else None
        return None

    def _body(self) -> dict:
        length = int(self.headers.get("Content-Length") or 0)
        return json.loads(self.rfile.read(length) or b"{}")

    def _write(self, method: str) -> None:
        self.api.requests.append(f"{method} {self.path}")
        if self.api.token and self.headers.get("Authorization") != f"Bearer {self.api.token}":
            return self._json(401, _status(401, "Unauthorized", "Unauthorized"))
        target = self._target()
        if target is None:
            return self._json(404, _status(404, "NotFound", f"no resource at {self.path}"))
        plural, namespace, name = target
        kind = RESOURCES[plural][0]
        if method == "DELETE":
            if name is None:
                return self._json(405, _status(405, "MethodNotAllowed", "delete a collection"))
            old = self.api.delete(kind, namespace or "", name)
            if old is None:
                return self._json(404, _status(404, "NotFound", f"{plural} {name} not found"))
            return self._json(200, old)
        body = self._body()
        body["kind"] = kind
        body.setdefault("metadata", {})
        if namespace:
            body["metadata"]["namespace"] = namespace
        if name:
            body["metadata"]["name"] = name
        exists = self.api.get(plural, *_key(body)) is not None
        if method == "POST" and exists:
            return self._json(409, _status(409, "AlreadyExists", f"{plural} {body['metadata']['name']} exists"))
        if method == "PUT" and not exists:
            return self._json(404, _status(404, "NotFound", f"{plural} {name} not found"))
        if plural == "services" and method == "POST":
            spec = body.setdefault("spec", {})
            if not spec.get("clusterIP") and spec.get("type") != "ExternalName":
                with self.api._cond:
                    self.api._next_ip += 1
                    spec["clusterIP"] = f"10.0.{200 + self.api._next_ip // 250}.{self.api._next_ip % 250 + 1}"
                spec["clusterIPs"] = [spec["clusterIP"]]
        obj = self.api.create(body) if method == "POST" else self.api.update(body)
        return self._json(201 if method == "POST" else 200, obj)

    def do_POST(self) -> None:  # noqa: N802 - stdlib name
        self._write("POST")

    def do_PUT(self) -> None:  # noqa: N802 - stdlib name
        self._write("PUT")

    def do_DELETE(self) -> None:  # noqa: N802 - stdlib name
        self._write("DELETE")

    # ---- responses ----
    def _json(self, code: int, body: dict) -> None:
        self._raw(code, json.dumps(body).encode())

    def _raw(self, code: int, data: bytes) -> None:
        self.send_response(code)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def _chunk(self, data: bytes) -> None:
        self.wfile.write(b"%x\r\n%s\r\n" % (len(data), data))
        self.wfile.flush()

    def _watch(self, plural: str, namespace: str | None, query: dict) -> None:
        api = self.api
        api.watch_count += 1
        bookmarks = query.get("allowWatchBookmarks") in ("1", "true", "True")
        timeout = float(query.get("timeoutSeconds", "0") or 0) or 3600.0
        deadline = time.monotonic() + timeout
        try:
            since = int(query.get("resourceVersion", "0") or 0)
        except ValueError:
            return self._json(400, _status(400, "BadRequest", "bad resourceVersion"))
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Transfer-Encoding", "chunked")
        self.end_headers()
        kind = RESOURCES[plural][0]
        with api._cond:
            drop_gen = api._drop_gen
            if since == 0:
                since = api._rv
        last_bookmark = time.monotonic()
        rvs, events = api._history[plural]
        try:
            while True:
                out: list[bytes] = []
                gone = False
                with api._cond:
                    if api._closed:
                        break
                    if api._drop_gen != drop_gen:
                        self._cut()
                        return
                    if since < api._floor:
                        gone = True
                    else:
                        first = bisect.bisect_right(rvs, since)
                        for event in events[first:]:
                            if namespace is None or _in_namespace(event, namespace):
                                out.append(event)
                        if first < len(rvs):
                            since = rvs[-1]
                    if not out and not gone:
                        now = time.monotonic()
                        if bookmarks and now - last_bookmark >= api.bookmark_interval:
                            # history was scanned up to api._rv under this same lock hold
                            last_bookmark = now
                            since = max(since, api._rv)
                            out.append(json.dumps({"type": "BOOKMARK", "object": {
                                "kind": kind, "apiVersion": "v1",
                                "metadata": {"resourceVersion": str(since)}}}).encode())
                        elif now >= deadline:
                            break
                        else:
                            wait = min(deadline - now, api.bookmark_interval - (now - last_bookmark) if bookmarks else 1.0)
                            api._cond.wait(max(wait, 0.001))
                            continue
                if gone:
                    self._chunk(json.dumps({"type": "ERROR", "object": _status(
                        410, "Expired", f"too old resource version: {since} ({api._floor})")}).encode() + b"\n")
                    break
                if out:
                    self._chunk(b"\n".join(out) + b"\n")
            self.wfile.write(b"0\r\n\r\n")
            self.wfile.flush()
        except (BrokenPipeError, ConnectionResetError, OSError):
            return
        self.close_connection = True

    def _cut(self) -> None:
        """End the connection without the terminating chunk, as a dying server or proxy would."""
        self.close_connection = True
        try:
            self.wfile.write(b"40\r\n{\"type\":\"MODIF")  # a torn chunk
            self.wfile.flush()
            self.connection.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
