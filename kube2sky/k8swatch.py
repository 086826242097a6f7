"""List then watch Kubernetes resources; hand every listing and change to a sink.

Rules (STYLE 5.7, kopf's continuous watch, client-go's reflector):
1. List first, emit Listed(items, cause), then watch from the list's resourceVersion with
   allowWatchBookmarks. A BOOKMARK only moves the resourceVersion forward. During the first
   listing (cause "start") each page is also emitted as it arrives (Page), so the sink can
   start its work before a big listing ends; the Listed that follows is the authority (a
   listing that failed halfway and was retried may have paged objects it no longer holds).
2. 410 Gone (an ERROR event with a Status of code 410, or an HTTP 410 on list/watch) means the
   history we hold is gone: list again (cause "410 Gone"); the sink replaces the whole kind and the
   writer reconciles the whole prefix, deleting orphans.
3. A watch that ends normally (server timeout) is restarted from the last resourceVersion.
   A broken stream or transport error backs off on the schedule (with jitter) and re-watches from
   the last resourceVersion; a list error backs off and lists again. Attempts are logged "#n".
   An ERROR event that is not a 410 backs off and relists (cause "watch error").
4. Unknown event types and events without an object are skipped with a warning, never fatal.
5. Runs in a plain thread. ApiTransport speaks HTTP itself through one urllib3 pool (no
   `kubernetes` import: that alone cost ~0.6 s of CPU before the first request); only a
   kubeconfig is read with the kubernetes package's loader (exec plugins, auth providers), imported
   then. A watch is read chunk by chunk and split into lines (iter_lines); stop() on the transport
   unblocks a pending read. Nothing here raises out of follow() except the stop.
6. The bearer token is asked for before every request: a token file (the service account's,
   rotated by the kubelet) is re-read at most every 60 s, a kubeconfig's refresh hook runs as the
   kubernetes ApiClient runs it.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import logging
import os
import random
import threading
import time
import urllib.parse
from collections.abc import Callable, Iterable, Iterator
from typing import Protocol

import urllib3

logger = logging.getLogger(__name__)


class WatchError(Exception):
    """Base of this module's errors."""


class Expired(WatchError):
    """The resourceVersion is too old (HTTP 410 Gone), or the source changed wholesale: list again."""

    def __init__(self, message: str = "", cause: str = "410 Gone") -> None:
        super().__init__(message or cause)
        self.cause = cause


class ApiError(WatchError):
    """A transient API error (connection, 5xx, bad stream): back off and retry."""


class NotServed(WatchError):
    """The API does not serve this resource (404)."""


class ConfigError(WatchError):
    """The API client cannot be configured (bad kubeconfig, token, URL): fix the flags."""


@dataclasses.dataclass(frozen=True, slots=True)
class Resource:
    """One kind we list and watch."""

    kind: str  # "Service"
    plural: str  # "services"
    group_version: str  # "/api/v1" or "/apis/discovery.k8s.io/v1"

    def path(self, namespace: str | None = None) -> str:
        if namespace:
            return f"{self.group_version}/namespaces/{namespace}/{self.plural}"
        return f"{self.group_version}/{self.plural}"


SERVICES = Resource("Service", "services", "/api/v1")
ENDPOINT_SLICES = Resource("EndpointSlice", "endpointslices", "/apis/discovery.k8s.io/v1")
ENDPOINTS = Resource("Endpoints", "endpoints", "/api/v1")
PODS = Resource("Pod", "pods", "/api/v1")
NAMESPACES = Resource("Namespace", "namespaces", "/api/v1")
ALL = (SERVICES, ENDPOINT_SLICES, ENDPOINTS, PODS, NAMESPACES)


@dataclasses.dataclass(frozen=True, slots=True)
class Listed:
    """A full listing of one kind: the sink replaces everything it holds for that kind."""

    resource: Resource
    items: tuple[dict, ...]
    resource_version: str
    cause: str  # "start", "410 Gone", "watch error", "manifests changed"
    received: float  # time.monotonic() when the listing completed


@dataclasses.dataclass(frozen=True, slots=True)
class Changed:
    """One watch event for one object."""

    resource: Resource
    type: str  # ADDED | MODIFIED | DELETED
    obj: dict
    received: float  # time.monotonic() when the event was read


@dataclasses.dataclass(frozen=True, slots=True)
class Page:
    """One page of a first listing, as it arrives (rule 1): a hint, Listed decides."""

    resource: Resource
    items: tuple
    received: float


Event = Listed | Changed | Page


class Transport(Protocol):
    def list(self, resource: Resource,
             on_page: Callable[[list], None] | None = None) -> tuple[list[dict], str]: ...
    def watch(self, resource: Resource, resource_version: str) -> Iterator[dict]: ...
    def stop(self) -> None: ...


# ---------------------------------------------------------------- the loop

def delay(schedule: tuple[float, ...], attempt: int, rng: random.Random, jitter: float = 0.2) -> float:
    """Seconds to wait before retry number attempt (1-based): the schedule's entry, the last one
    beyond its end, times a random factor in [1-jitter, 1+jitter]."""
    if not schedule:
        return 0.0
    base = schedule[min(attempt, len(schedule)) - 1]
    return max(0.0, base * (1 + rng.uniform(-jitter, jitter)))


def follow(
    resource: Resource,
    transport: Transport,
    emit: Callable[[Event], None],
    stop: threading.Event,
    backoff: tuple[float, ...] = (0.5, 1, 2, 5, 10, 30),
    rng: random.Random | None = None,
    clock: Callable[[], float] = time.monotonic,
    on_relist: Callable[[Resource, str], None] | None = None,
    on_error: Callable[[Resource, str], None] | None = None,
) -> None:
    """List and watch resource until stop is set. Never raises (but for programming errors)."""
    rng = rng or random.Random()
    cause = "start"
    attempt = 0

    def wait(what: str, err: object) -> None:
        nonlocal attempt
        attempt += 1
        seconds = delay(backoff, attempt, rng)
        logger.warning("%s %s failed: %s; retry #%d in %.1fs", resource.plural, what, err, attempt, seconds)
        if on_error is not None:
            on_error(resource, what)
        stop.wait(seconds)

    while not stop.is_set():
        # ---- list
        try:
            if cause == "start":
                def on_page(items: list) -> None:
                    emit(Page(resource, tuple(items), clock()))

                items, rv = transport.list(resource, on_page=on_page)
            else:
                items, rv = transport.list(resource)
        except WatchError as err:
            if stop.is_set():
                return
            wait("list", err)
            continue
        if stop.is_set():
            return
        if cause != "start":
            logger.info("relisted %s (cause: %s): %d objects at resourceVersion %s", resource.plural, cause, len(items), rv)
        else:
            logger.info("listed %s: %d objects at resourceVersion %s", resource.plural, len(items), rv)
        if on_relist is not None:
            on_relist(resource, cause)
        listed = Listed(resource, tuple(items), rv, cause, clock())
        del items  # the sink owns the listing now: never keep a whole cluster alive here
        emit(listed)
        del listed
        attempt = 0
        # ---- watch until the history is gone or the server reports an error
        while not stop.is_set():
            try:
                for event in transport.watch(resource, rv):
                    if stop.is_set():
                        return
                    try:
                        rv = _handle(resource, event, rv, emit, clock)
                    except WatchError:
                        raise
                    except Exception as err:  # noqa: BLE001 - a malformed event never ends the watch
                        logger.warning("%s watch: malformed event skipped (%r): %.200s", resource.plural, err, event)
                    attempt = 0
            except Expired as err:
                cause = err.cause
                logger.info("%s watch from resourceVersion %s ended (%s): relisting", resource.plural, rv, err)
                break
            except _ServerError as err:
                cause = "watch error"
                if stop.is_set():
                    return
                wait("watch", err)
                break
            except WatchError as err:
                if stop.is_set():
                    return
                wait("watch", err)
                # a re-watch from rv; a 410 then makes us relist
                continue
            # stream ended normally (timeoutSeconds): watch again from rv


def follow_forever(resource: Resource, transport: Transport, emit: Callable[[Event], None],
                   stop: threading.Event, **kwargs) -> None:
    """follow(), restarted after a pause should it ever raise (a bug): a watch thread never dies
    while the process runs."""
    while not stop.is_set():
        try:
            follow(resource, transport, emit, stop, **kwargs)
        except Exception:  # noqa: BLE001 - logged with its traceback, then restarted
            logger.exception("%s watch loop failed; restarting it in 5s", resource.plural)
            stop.wait(5.0)


class _ServerError(WatchError):
    """An ERROR event other than 410: relist after a backoff."""


def _handle(resource: Resource, event: dict, rv: str, emit: Callable[[Event], None], clock: Callable[[], float]) -> str:
    """Process one raw watch event; return the resourceVersion to resume from."""
    etype = event.get("type") if isinstance(event, dict) else None
    obj = event.get("object") if isinstance(event, dict) else None
    if etype == "ERROR":
        status = obj if isinstance(obj, dict) else {}
        if status.get("code") == 410 or status.get("reason") in ("Expired", "Gone"):
            raise Expired(status.get("message") or "410 Gone")
        raise _ServerError(f"ERROR event: {status.get('code')} {status.get('reason')} {status.get('message')}")
    if not isinstance(obj, dict):
        logger.warning("%s watch: event %r without an object skipped", resource.plural, etype)
        return rv
    new_rv = str((obj.get("metadata") or {}).get("resourceVersion") or rv)
    if etype == "BOOKMARK":
        return new_rv
    if etype not in ("ADDED", "MODIFIED", "DELETED"):
        meta = obj.get("metadata") or {}
        logger.warning("%s watch: unknown event type %r for %s/%s skipped", resource.plural, etype,
                       meta.get("namespace", ""), meta.get("name", ""))
        return rv
    emit(Changed(resource, etype, obj, clock()))
    return new_rv


# ---------------------------------------------------------------- the HTTP transport (urllib3)

SERVICE_ACCOUNT_DIR = "/var/run/secrets/kubernetes.io/serviceaccount"
USER_AGENT = "kube2sky (urllib3)"


@dataclasses.dataclass(frozen=True, slots=True)
class Connection:
    """How to reach the API (from the CLI flags)."""

    master_url: str = ""  # --kube-master-url; env vars expanded
    kubeconfig: str = ""  # --kubecfg-file, else $KUBECONFIG
    token_file: str = ""
    ca_file: str = ""
    insecure: bool = False
    context: str = ""
    service_account_dir: str = SERVICE_ACCOUNT_DIR  # the pod's token and ca.crt (tests point it elsewhere)


@dataclasses.dataclass(frozen=True, slots=True)
class ApiConfig:
    """The resolved connection: all ApiTransport needs to talk to one API server."""

    host: str  # base URL, "https://10.96.0.1:443", no trailing slash
    ca_file: str = ""  # PEM bundle to verify the server with ("" = the system roots)
    verify: bool = True
    cert_file: str = ""  # client certificate and key (kubeconfig)
    key_file: str = ""
    tls_server_name: str = ""  # SNI and the name to check in the certificate, when not the host's
    proxy: str = ""  # http(s):// or socks5:// proxy URL ("" = direct)
    # the current Authorization header value (None: none); called before every request, so a
    # rotated token file, an exec plugin or an expiring token is picked up
    authorization: Callable[[], str | None] | None = None


def resolve(conn: Connection) -> ApiConfig:
    """--kube-master-url (+token/CA), else kubeconfig, else in-cluster (the service account),
    else ConfigError. Only the kubeconfig path imports the kubernetes package (its loader
    handles exec plugins, auth providers and embedded certificates)."""
    sa_token = os.path.join(conn.service_account_dir, "token")
    sa_ca = os.path.join(conn.service_account_dir, "ca.crt")
    try:
        if conn.master_url:
            host = os.path.expandvars(conn.master_url).rstrip("/")
            token_file, ca_file = conn.token_file, conn.ca_file
            if not token_file and os.path.exists(sa_token) and host.startswith("https"):
                token_file = sa_token
                ca_file = ca_file or (sa_ca if os.path.exists(sa_ca) else "")
            authorization = None
            if token_file:
                authorization = TokenFile(token_file)
                if authorization() is None:
                    raise ConfigError(f"cannot read the token file {token_file}")
            config = ApiConfig(host, ca_file=ca_file, proxy=_env_proxy(host), authorization=authorization)
        elif conn.kubeconfig or os.environ.get("KUBECONFIG"):
            config = _from_kubeconfig(conn)
        elif os.environ.get("KUBERNETES_SERVICE_HOST") and os.path.exists(sa_token):
            config = _in_cluster(sa_token, sa_ca)
        else:
            raise ConfigError("no API to talk to: give --kube-master-url, --kubecfg-file (or KUBECONFIG), "
                              "or run in a pod with a service account; or use --manifests DIR")
    except ConfigError:
        raise
    except Exception as err:  # noqa: BLE001 - the kubeconfig loader raises many kinds
        raise ConfigError(f"cannot configure the Kubernetes client: {err}") from err
    if conn.insecure or not config.verify:  # the flag, or the kubeconfig's insecure-skip-tls-verify
        config = dataclasses.replace(config, verify=False)
        urllib3.disable_warnings(urllib3.exceptions.InsecureRequestWarning)
        logger.warning("not verifying the API server certificate (--insecure-skip-tls-verify)")
    if conn.ca_file and not conn.master_url:
        config = dataclasses.replace(config, ca_file=conn.ca_file)
    return config


def _in_cluster(token_file: str, ca_file: str) -> ApiConfig:
    """The pod's service account, as client-go's rest.InClusterConfig: https to
    KUBERNETES_SERVICE_HOST:PORT, the CA and the (rotated) token from the secret's folder."""
    host, port = os.environ.get("KUBERNETES_SERVICE_HOST", ""), os.environ.get("KUBERNETES_SERVICE_PORT", "")
    if not host or not port:
        raise ConfigError("in a pod: KUBERNETES_SERVICE_HOST and KUBERNETES_SERVICE_PORT must both be set")
    if ":" in host and not host.startswith("["):
        host = f"[{host}]"  # an IPv6 address
    token = TokenFile(token_file)
    if token() is None:
        raise ConfigError(f"cannot read the service account token {token_file} (missing or empty)")
    try:
        with open(ca_file, "rb") as fh:
            if not fh.read().strip():
                raise ConfigError(f"the service account CA {ca_file} is empty")
    except OSError as err:
        raise ConfigError(f"cannot read the service account CA {ca_file}: {err.strerror}") from None
    url = f"https://{host}:{port}"
    return ApiConfig(url, ca_file=ca_file, proxy=_env_proxy(url), authorization=token)


def _from_kubeconfig(conn: Connection) -> ApiConfig:
    """kubernetes.config's loader into a Configuration, then what our transport needs from it."""
    from kubernetes.client import Configuration  # the only place kube2sky imports kubernetes
    from kubernetes.config import kube_config

    configuration = Configuration()
    kube_config.load_kube_config(config_file=conn.kubeconfig or None, context=conn.context or None,
                                 client_configuration=configuration)
    host = str(configuration.host).rstrip("/")
    proxy = configuration.proxy or ""
    if proxy and _no_proxy(host, configuration.no_proxy or ""):
        proxy = ""

    def authorization() -> str | None:
        # as ApiClient does: auth_settings() runs refresh_api_key_hook (exec plugins, expiring tokens)
        value = (configuration.auth_settings().get("BearerToken") or {}).get("value")
        if value:
            return str(value)
        if configuration.username or configuration.password:
            return configuration.get_basic_auth_token()
        return None

    return ApiConfig(host, ca_file=configuration.ssl_ca_cert or "", verify=bool(configuration.verify_ssl),
                     cert_file=configuration.cert_file or "", key_file=configuration.key_file or "",
                     tls_server_name=configuration.tls_server_name or "", proxy=proxy,
                     authorization=authorization)


class TokenFile:
    """A bearer token file, re-read at most every `every` seconds (the kubelet rotates service
    account tokens): calling it gives the Authorization header value, None before a first good read.
    A failed re-read keeps the previous token (logged)."""

    def __init__(self, path: str, every: float = 60.0, clock: Callable[[], float] = time.monotonic) -> None:
        self.path = path
        self.every = every
        self.clock = clock
        self._value: str | None = None
        self._read_at = float("-inf")
        self._lock = threading.Lock()

    def __call__(self) -> str | None:
        now = self.clock()
        if now - self._read_at < self.every:
            return self._value
        with self._lock:
            if now - self._read_at < self.every:
                return self._value
            self._read_at = now
            try:
                with open(self.path, encoding="utf-8") as fh:
                    token = fh.read().strip()
            except OSError as err:
                logger.warning("cannot read the token file %s: %s (keeping the previous token)", self.path, err)
                return self._value
            if token:
                self._value = "Bearer " + token
            return self._value


def _env_proxy(url: str) -> str:
    """The proxy $HTTPS_PROXY/$HTTP_PROXY/$ALL_PROXY give for url, unless $NO_PROXY covers it (as
    the kubernetes client's Configuration and client-go's ProxyFromEnvironment)."""
    import urllib.request

    proxies = urllib.request.getproxies()
    proxy = proxies.get(url.partition(":")[0].lower()) or proxies.get("all") or ""
    if proxy and _no_proxy(url, proxies.get("no", "")):
        return ""
    return proxy


def _no_proxy(url: str, rules: str) -> bool:
    """Whether a comma-separated NO_PROXY list covers url: '*', a host or domain suffix (with or
    without a leading dot), host:port, an IP address or a CIDR."""
    import ipaddress

    parts = urllib.parse.urlsplit(url)
    host = (parts.hostname or "").lower()
    if not host:
        return True
    netloc = f"{host}:{parts.port}" if parts.port else host
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        address = None
    for rule in (r.strip().lower() for r in rules.split(",")):
        if not rule:
            continue
        if rule == "*":
            return True
        if address is not None:
            try:
                if address in ipaddress.ip_network(rule, strict=False):
                    return True
            except ValueError:
                pass
        rule = rule.lstrip(".")
        if host == rule or host.endswith("." + rule) or netloc == rule:
            return True
    return False


def explain(err: BaseException, host: str) -> str:
    """A one-line explanation of a connection error, naming the host and the fix for TLS name errors."""
    text = str(err)
    lowered = text.lower()
    if "hostname" in lowered and ("match" in lowered or "mismatch" in lowered) or "ip address mismatch" in lowered:
        return (f"TLS: the API server certificate is not valid for {host} ({_short(text)}); point --kube-master-url "
                f"at a name in the certificate (e.g. https://kubernetes.default.svc), or set "
                f"KUBERNETES_SERVICE_HOST/KUBERNETES_SERVICE_PORT, or give --ca-file / --insecure-skip-tls-verify")
    if "certificate verify failed" in lowered:
        return (f"TLS: cannot verify the API server certificate of {host} ({_short(text)}); give --ca-file, "
                f"or --insecure-skip-tls-verify for a test cluster")
    return f"{host}: {_short(text)}"


def _short(text: str, limit: int = 300) -> str:
    text = " ".join(text.split())
    return text if len(text) <= limit else text[:limit] + "..."


def iter_lines(chunks: Iterable[bytes]) -> Iterator[bytes]:
    """The lines (without their b"\\n") of a byte stream read in chunks of any size: a line may
    span chunks, a last line needs no newline, an empty line is yielded as b"". Linear in the
    bytes however a long line is cut."""
    pending: list[bytes] = []
    for chunk in chunks:
        if b"\n" not in chunk:
            if chunk:
                pending.append(chunk)
            continue
        lines = chunk.split(b"\n")
        if pending:
            pending.append(lines[0])
            lines[0] = b"".join(pending)
            pending = []
        last = lines.pop()
        yield from lines
        if last:
            pending.append(last)
    if pending:
        yield b"".join(pending)


def _chunks(resp, size: int = 65536) -> Iterator[bytes]:
    """The body of a streaming urllib3 response as it arrives: each HTTP chunk of a chunked body
    (how the API server sends a watch), else whatever read1 has."""
    if resp.chunked and resp.supports_chunked_reads():
        yield from resp.read_chunked(decode_content=True)
        return
    while True:
        data = resp.read1(size)
        if not data:
            return
        yield data


class ApiTransport:
    """List and watch over HTTP/1.1 with urllib3 (raw JSON, streaming watches)."""

    def __init__(self, config: ApiConfig, page_size: int = 500, watch_timeout: int = 300,
                 connect_timeout: float = 10.0, read_timeout: float = 60.0,
                 on_progress: Callable[[Resource, int, int | None], None] | None = None,
                 trim: Callable[[Resource, dict], object] | None = None,
                 page_sizes: dict[str, int] | None = None) -> None:
        self.config = config
        self.page_size = page_size
        # per kind (e.g. EndpointSlices, 100 endpoints each): a page of raw JSON is what a list
        # holds at its peak
        self.page_sizes = page_sizes or {}
        # applied to every listed item as its page arrives (kube2sky trims objects to what DNS
        # needs), so a listing never holds the whole cluster as raw JSON
        self.trim = trim
        self.watch_timeout = watch_timeout
        self.connect_timeout = connect_timeout
        self.read_timeout = read_timeout
        self.on_progress = on_progress
        self.pool = _pool(config)
        self._lock = threading.Lock()
        self._open: set = set()
        self._stopped = False

    @property
    def host(self) -> str:
        return self.config.host

    def _get(self, path: str, query: list[tuple[str, str]], stream: bool):
        # a watch may legitimately be silent until the server ends it after watch_timeout
        read = self.watch_timeout + 30 if stream else self.read_timeout
        url = self.config.host + path
        if query:
            url += "?" + urllib.parse.urlencode(query)
        headers = {"Accept": "application/json", "User-Agent": USER_AGENT}
        try:
            if self.config.authorization is not None:
                value = self.config.authorization()
                if value:
                    headers["Authorization"] = value
            resp = self.pool.request("GET", url, headers=headers, preload_content=not stream,
                                     timeout=urllib3.Timeout(connect=self.connect_timeout, read=read))
        except WatchError:
            raise
        except Exception as err:  # noqa: BLE001 - urllib3/ssl/socket errors, an auth hook's error
            raise ApiError(explain(err, self.host)) from err
        if not 200 <= resp.status <= 299:
            try:
                body = resp.data if not stream else resp.read()
            except Exception:  # noqa: BLE001 - the status says enough
                body = b""
            finally:
                resp.release_conn()
            raise _api_error(resp.status, _status_message(body) if body else str(resp.reason), path)
        if not stream:
            try:
                return json.loads(resp.data)
            except Exception as err:  # noqa: BLE001 - bad JSON, a read cut short
                raise ApiError(f"{path}: bad response: {err}") from err
        return resp

    def served(self, resource: Resource) -> bool:
        """Whether API discovery lists resource (for EndpointSlices vs Endpoints)."""
        try:
            doc = self._get(resource.group_version, [], stream=False)
        except NotServed:
            return False
        return any(r.get("name") == resource.plural for r in doc.get("resources") or ())

    def list(self, resource: Resource,
             on_page: Callable[[list], None] | None = None) -> tuple[list[dict], str]:
        items: list[dict] = []
        token = ""
        while True:
            query = [("limit", str(self.page_sizes.get(resource.kind, self.page_size)))]
            if token:
                query.append(("continue", token))
            doc = self._get(resource.path(), query, stream=False)
            meta = doc.get("metadata") or {}
            page = [i for i in doc.get("items") or () if isinstance(i, dict)]
            del doc
            for item in page:
                item.setdefault("kind", resource.kind)  # list items carry no kind; the sink wants it
            if self.trim:
                page = list(map(functools.partial(self.trim, resource), page))
            items.extend(page)
            if on_page is not None and page:
                on_page(page)
            del page
            token = meta.get("continue") or ""
            remaining = meta.get("remainingItemCount")
            if self.on_progress is not None:
                self.on_progress(resource, len(items), len(items) + remaining if isinstance(remaining, int) else None)
            if not token:
                return items, str(meta.get("resourceVersion") or "")

    def watch(self, resource: Resource, resource_version: str) -> Iterator[dict]:
        query = [("watch", "true"), ("allowWatchBookmarks", "true"),
                 ("timeoutSeconds", str(self.watch_timeout))]
        if resource_version:
            query.append(("resourceVersion", resource_version))
        raw = self._get(resource.path(), query, stream=True)
        with self._lock:
            if self._stopped:
                raw.release_conn()
                return
            self._open.add(raw)
        try:
            for line in iter_lines(_chunks(raw)):
                if not line.strip():
                    continue
                try:
                    event = json.loads(line)
                except ValueError as err:
                    text = line.decode("utf-8", errors="replace")
                    raise ApiError(f"{resource.plural} watch: bad JSON line: {_short(text, 120)}") from err
                obj = event.get("object") if isinstance(event, dict) else None
                if isinstance(obj, dict) and event.get("type") in ("ADDED", "MODIFIED", "DELETED"):
                    obj.setdefault("kind", resource.kind)
                yield event
        except WatchError:
            raise
        except Exception as err:  # noqa: BLE001 - ProtocolError, ReadTimeoutError, socket errors
            if self._stopped:
                return
            raise ApiError(f"{resource.plural} watch stream broke: {_short(str(err))}") from err
        finally:
            with self._lock:
                self._open.discard(raw)
            try:
                raw.release_conn()
            except Exception:  # noqa: BLE001
                pass

    def stop(self) -> None:
        with self._lock:
            self._stopped = True
            pending = list(self._open)
        for raw in pending:
            try:
                raw.shutdown()
            except Exception:  # noqa: BLE001 - best effort
                pass


def _pool(config: ApiConfig):
    """One urllib3 pool manager for config (through its proxy, if any)."""
    import ssl

    args: dict = {
        "maxsize": len(ALL) + 3,  # a watch per kind, a list and discovery at the same time
        "cert_reqs": ssl.CERT_REQUIRED if config.verify else ssl.CERT_NONE,
    }
    if config.ca_file:
        args["ca_certs"] = config.ca_file
    if config.cert_file:
        args["cert_file"] = config.cert_file
        args["key_file"] = config.key_file or None
    if config.tls_server_name:
        args["server_hostname"] = config.tls_server_name
    if not config.proxy:
        return urllib3.PoolManager(**args)
    if config.proxy.partition(":")[0].lower().startswith("socks"):
        from urllib3.contrib.socks import SOCKSProxyManager  # needs PySocks, as the kubernetes client did

        return SOCKSProxyManager(config.proxy, **args)
    return urllib3.ProxyManager(config.proxy, **args)


def _status_message(body: bytes) -> str:
    try:
        doc = json.loads(body)
        return f"{doc.get('reason', '')}: {doc.get('message', '')}"
    except (ValueError, AttributeError):
        return _short(body.decode(errors="replace") if isinstance(body, bytes) else str(body), 200)


def _api_error(status: int | None, text: str, path: str) -> WatchError:
    if status == 410:
        return Expired(f"{path}: 410 {text}")
    if status == 404:
        return NotServed(f"{path}: 404 {text}")
    if status in (401, 403):
        return ApiError(f"{path}: {status} {text} (check the token / RBAC: kube2sky needs list and watch)")
    return ApiError(f"{path}: {status} {text}")

