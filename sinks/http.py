"""The sink's HTTP API on aiohttp, served from a background thread on ``cfg.http_host:cfg.http_port``.

Routes (described, with their parameters, at ``GET /api/openapi.json``):

* ``GET /`` — the dashboard (``sinks/static/index.html``), its files under ``/static/`` (:mod:`sinks.page`);
* ``GET /api/kpis``, ``/api/whale``, ``/api/matrix``, ``/api/alerts``, ``/api/customer/{id}``, ``/api/migration``,
  ``/api/model`` — the dashboard's data as JSON (:data:`sinks.endpoints.ENDPOINTS`);
* ``GET /api/status`` — rows per table, customers, the writer's counters and lag;
* ``GET|POST /api/sql`` — a read-only query: ``?query=...`` or the POST body (plain text, or JSON
  ``{"query": ..., "format": ...}``); ``format=json`` (default: a list with one object per row) or ``tsv``
  (header line, then rows). Column names and types also come as JSON in the ``X-Cvm-Columns`` and
  ``X-Cvm-Types`` headers;
* ``GET /metrics`` — the sink's Prometheus metrics (:mod:`cvm.metrics`);
* ``GET /health`` — liveness, always open.

Every refusal is JSON ``{"error": "<one line>"}`` with its status (400, 401, 404, 405, 413, 503). Bound beyond
loopback, every ``/api`` route and ``/metrics`` require ``Authorization: Bearer <CVM_HTTP_TOKEN>`` (one
middleware), and the server refuses to start without a token. Bodies are limited to 1 MiB; a body the API does
not read (a 405, a 401) is drained by aiohttp before the connection serves the next request.
"""

from __future__ import annotations

import asyncio
import errno
import json
import logging
import threading
import time
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from http import HTTPStatus
from typing import Any

from aiohttp import web
from clickhouse_connect.driver.exceptions import ClickHouseError
from prometheus_client import CONTENT_TYPE_LATEST, REGISTRY, CollectorRegistry

from cvm import metrics
from cvm.config import Config
from cvm.exceptions import ConfigError, CvmError, PortInUse
from sinks import dashboard, endpoints, openapi, page
from sinks.clickhouse import ClickHouse, condense_error
from sinks.outcomes import OutcomeSettings
from sinks.query import Result, run_query, to_tsv

__all__ = ["MAX_BODY", "ApiServer", "build_app", "check_exposure"]

log = logging.getLogger("cvm.sink.http")

#: Largest request body accepted (a query's text).
MAX_BODY = 1 << 20
StatusFn = Callable[[], dict[str, Any]]
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
_API: web.AppKey[ApiServer] = web.AppKey("api")


def check_exposure(cfg: Config) -> None:
    """Refuse to serve the API beyond loopback without a token (:class:`ConfigError` says what to do)."""
    if not metrics.is_loopback(cfg.http_host) and not cfg.http_token:
        raise ConfigError(
            f"the HTTP API would listen on {cfg.http_host or 'every address'}, beyond this machine, without a "
            "token: set CVM_HTTP_TOKEN (clients send 'Authorization: Bearer <token>'), or bind 127.0.0.1"
        )


def _error(status: int, message: str, **headers: str) -> web.Response:
    body = json.dumps({"error": " ".join(str(message).split())}, ensure_ascii=False)
    return web.Response(status=status, text=body, content_type="application/json", headers=headers or None)


def _json(obj: Any, headers: dict[str, str] | None = None) -> web.Response:
    body = json.dumps(obj, default=str, ensure_ascii=False)
    return web.Response(text=body, content_type="application/json", headers=headers)


# --- middlewares: outermost first --------------------------------------------------------------------------------


@web.middleware
async def _measured(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Count and time every answer, labelled by route pattern (a customer id is not a label)."""
    started = time.perf_counter()
    resource = request.match_info.route.resource
    route = resource.canonical if resource is not None else "unmatched"
    status = 500
    try:
        response = await handler(request)
        status = response.status
        return response
    finally:
        metrics.http_requests.labels(route=route, method=request.method, status=str(status)).inc()
        metrics.http_request_seconds.labels(route=route).observe(time.perf_counter() - started)


@web.middleware
async def _errors(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Every refusal and failure as one JSON line; the API answers, it never dies."""
    try:
        return await handler(request)
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        response = _error(exc.status, _explain(request, exc), **{k: v for k, v in exc.headers.items() if k == "Allow"})
        if exc.status == HTTPStatus.REQUEST_ENTITY_TOO_LARGE:
            response.force_close()  # the rest of a huge body is not worth reading
        return response
    except dashboard.ApiError as exc:
        return _error(exc.status, exc.message)
    except (ConnectionResetError, asyncio.CancelledError):
        raise
    except Exception as exc:  # one line to the client, details to the log
        log.warning("%s %s failed", request.method, request.path, exc_info=True)
        return _error(HTTPStatus.INTERNAL_SERVER_ERROR, f"{type(exc).__name__}: {exc}")


def _explain(request: web.Request, exc: web.HTTPException) -> str:
    if exc.status == HTTPStatus.NOT_FOUND:
        if request.path.startswith("/api/"):
            return f"no such endpoint: {request.path} (try {', '.join(endpoints.routes())})"
        return f"no such file or endpoint: {request.path}"
    if exc.status == HTTPStatus.METHOD_NOT_ALLOWED:
        return f"{request.method} is not allowed on {request.path}"
    if exc.status == HTTPStatus.REQUEST_ENTITY_TOO_LARGE:
        return f"request body over {MAX_BODY} bytes"
    return exc.text or exc.reason


def _guarded_path(path: str) -> bool:
    return path == "/metrics" or path == "/api" or path.startswith("/api/")


@web.middleware
async def _guard(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Beyond loopback, ``/api/*`` and ``/metrics`` need the bearer token."""
    api = request.app[_API]
    if api.require_token and _guarded_path(request.path):
        if not metrics.bearer_ok(request.headers.get("Authorization"), api.cfg.http_token):
            return _error(
                HTTPStatus.UNAUTHORIZED,
                "send 'Authorization: Bearer <token>' (the sink's CVM_HTTP_TOKEN)",
                **{"WWW-Authenticate": "Bearer"},
            )
    return await handler(request)


@web.middleware
async def _no_store(request: web.Request, handler: Handler) -> web.StreamResponse:
    response = await handler(request)
    response.headers.setdefault("Cache-Control", "no-store")
    return response


# --- the server --------------------------------------------------------------------------------------------------


class ApiServer:
    """The HTTP API over a read-only ClickHouse client; :meth:`start` serves it on a background thread.

    ``status`` returns the writer's counters for ``/api/status`` (None when no writer runs in this process).
    ClickHouse calls run on a small thread pool: the client is synchronous and holds a lock per call.
    """

    def __init__(
        self,
        cfg: Config,
        reader: ClickHouse,
        status: StatusFn | None = None,
        registry: CollectorRegistry = REGISTRY,
    ) -> None:
        if not reader.readonly:
            raise ValueError("the HTTP API needs a client from connect(cfg, readonly=True)")
        check_exposure(cfg)
        self.cfg = cfg
        self.reader = reader
        self.status = status
        self.registry = registry
        self.require_token = not metrics.is_loopback(cfg.http_host)
        self.started = time.time()
        self.index_html = page.index_html()
        self.context = endpoints.Context(
            cfg.default_margin_rate, status, cfg.base_currency, OutcomeSettings.from_config(cfg)
        )
        self._pool = ThreadPoolExecutor(max_workers=4, thread_name_prefix="cvm-http")
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._port = cfg.http_port

    @property
    def port(self) -> int:
        """The port actually bound (``http_port=0`` picks a free one)."""
        return self._port

    @property
    def url(self) -> str:
        host = self.cfg.http_host
        if host in ("", "0.0.0.0"):
            host = "127.0.0.1"
        elif host == "::":
            host = "::1"
        return f"http://{f'[{host}]' if ':' in host else host}:{self.port}"

    async def blocking(self, fn: Callable[..., Any], *args: Any) -> Any:
        """Run a blocking call (ClickHouse) on the API's thread pool."""
        return await asyncio.get_running_loop().run_in_executor(self._pool, fn, *args)

    def start(self) -> ApiServer:
        """Bind and serve; :class:`PortInUse` when the port is taken, :class:`ConfigError` for a bad address."""
        ready = threading.Event()
        failed: list[BaseException] = []
        self._thread = threading.Thread(target=self._serve, args=(ready, failed), name="cvm-http", daemon=True)
        self._thread.start()
        ready.wait()
        if failed:
            self._thread.join(5)
            self._thread = None
            exc = failed[0]
            host, port = self.cfg.http_host, self.cfg.http_port
            if isinstance(exc, OSError) and exc.errno == errno.EADDRINUSE:
                raise PortInUse(
                    f"port {port} is in use: stop what listens there, or pick another with --port or CVM_HTTP_PORT"
                ) from None
            reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else exc
            raise ConfigError(f"cannot listen on {host}:{port} ({reason}): check CVM_HTTP_HOST") from None
        return self

    def _serve(self, ready: threading.Event, failed: list[BaseException]) -> None:
        loop = asyncio.new_event_loop()
        # An unread body (a 405, a 401) is drained for up to lingering_time before the connection serves the next
        # request; past it, or on a 413, the connection closes.
        runner = web.AppRunner(build_app(self), access_log=None, handle_signals=False, lingering_time=2.0)
        try:
            loop.run_until_complete(runner.setup())
            site = web.TCPSite(runner, self.cfg.http_host or None, self.cfg.http_port)
            loop.run_until_complete(site.start())
            self._port = int(runner.addresses[0][1])
        except (OSError, ValueError) as exc:
            failed.append(exc)
            loop.run_until_complete(runner.cleanup())
            loop.close()
            ready.set()
            return
        self._loop = loop
        ready.set()
        try:
            loop.run_forever()
        finally:
            loop.run_until_complete(runner.cleanup())
            loop.close()

    def stop(self) -> None:
        if self._loop is not None:
            self._loop.call_soon_threadsafe(self._loop.stop)
        if self._thread is not None:
            self._thread.join(timeout=10)
            self._thread = None
        self._loop = None
        self._pool.shutdown(wait=False, cancel_futures=True)

    # --- endpoint bodies (on the thread pool) ---------------------------------------------------------------------

    def health(self) -> dict[str, Any]:
        ok = self.reader.ping()
        return {
            "status": "ok" if ok else "degraded",
            "clickhouse": ok,
            "database": self.reader.database,
            "writer": self.status is not None,
            "uptime_s": round(time.time() - self.started, 1),
        }

    def api_status(self) -> dict[str, Any]:
        db = self.reader.database
        out: dict[str, Any] = {"database": db, "time": time.time()}
        try:
            out["tables"] = {
                str(t): int(n)
                for t, n in self.reader.rows(
                    # total_rows comes from part metadata: cheap, and it lists empty tables too.
                    "SELECT name, ifNull(total_rows, 0) FROM system.tables WHERE database = {db:String} ORDER BY name",
                    {"db": db},
                )
            }
            out["customers"] = int(self.reader.rows(f"SELECT uniqExact(customer_id) FROM {db}.customers")[0][0])
            out["clickhouse"] = True
        except ClickHouseError as exc:
            out["clickhouse"] = False
            out["error"] = condense_error(exc)
        out["writer"] = self.status() if self.status is not None else None
        return out

    def sql(self, query: str) -> Result:
        return run_query(self.reader, query)


# --- routes ------------------------------------------------------------------------------------------------------


def build_app(api: ApiServer) -> web.Application:
    """The aiohttp application of ``api``: middlewares, then one route per endpoint."""
    app = web.Application(middlewares=[_measured, _errors, _guard, _no_store], client_max_size=MAX_BODY)
    app[_API] = api
    spec = openapi.document()

    async def index(request: web.Request) -> web.Response:
        return web.Response(body=api.index_html, content_type="text/html", charset="utf-8")

    async def static(request: web.Request) -> web.Response:
        found = page.static_file(request.path)
        if found is None:
            raise web.HTTPNotFound()
        body, kind = found
        content_type, _, charset = kind.partition("; charset=")
        return web.Response(body=body, content_type=content_type, charset=charset or None)

    async def health(request: web.Request) -> web.Response:
        return _json(await api.blocking(api.health))

    async def status(request: web.Request) -> web.Response:
        return _json(await api.blocking(api.api_status))

    async def served_metrics(request: web.Request) -> web.Response:
        body = await api.blocking(metrics.exposition, api.registry)
        return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})

    async def openapi_json(request: web.Request) -> web.Response:
        return _json(spec)

    app.router.add_get("/", index)
    app.router.add_get("/index.html", index)
    app.router.add_get("/static/{path:.*}", static)
    app.router.add_get("/health", health)
    app.router.add_get("/metrics", served_metrics)
    app.router.add_get("/api/openapi.json", openapi_json)
    app.router.add_get("/api/status", status)
    app.router.add_route("GET", "/api/sql", lambda request: _sql(api, request))
    app.router.add_route("POST", "/api/sql", lambda request: _sql(api, request))
    for endpoint in endpoints.ENDPOINTS:
        app.router.add_get(_aiohttp_path(endpoint.path), _dashboard_handler(api, endpoint))
    return app


def _aiohttp_path(path: str) -> str:
    # A customer id may be empty (400, said by the endpoint) or hold any character.
    return path.replace("{id}", "{id:.*}")


def _dashboard_handler(api: ApiServer, endpoint: endpoints.Endpoint) -> Handler:
    async def handle(request: web.Request) -> web.Response:
        path = dict(request.match_info)
        answer = await api.blocking(lambda: endpoint.answer(api.reader, request.query_string, api.context, **path))
        return _json(answer)

    return handle


async def _sql(api: ApiServer, request: web.Request) -> web.Response:
    query = request.query.getall("query", [""])[-1]
    fmt = request.query.getall("format", [""])[-1]
    if request.method == "POST":
        if (request.content_length or 0) > MAX_BODY:
            raise web.HTTPRequestEntityTooLarge(max_size=MAX_BODY, actual_size=request.content_length or 0)
        body = (await request.read()).decode("utf-8", "replace")
        if "json" in request.content_type and body.strip():
            try:
                doc = json.loads(body)
            except ValueError:
                return _error(HTTPStatus.BAD_REQUEST, "the body is not valid JSON")
            if not isinstance(doc, dict):
                return _error(HTTPStatus.BAD_REQUEST, 'expected a JSON object {"query": "..."}')
            query = str(doc.get("query") or query)
            fmt = str(doc.get("format") or fmt)
        elif body.strip():
            query = body
    fmt = (fmt or "json").lower()
    if fmt not in ("json", "tsv"):
        return _error(HTTPStatus.BAD_REQUEST, f"format must be json or tsv, not {fmt}")
    try:
        result: Result = await api.blocking(api.sql, query)
    except CvmError as exc:
        return _error(HTTPStatus.BAD_REQUEST, str(exc))
    # The columns travel in headers, so that an empty JSON answer still names them (ASCII JSON: header-safe).
    meta = {
        "X-Cvm-Columns": json.dumps(result.columns),
        "X-Cvm-Types": json.dumps(result.types),
        "X-Cvm-Elapsed-Ms": str(result.elapsed_ms),
    }
    if fmt == "tsv":
        return web.Response(
            text=to_tsv(result.columns, result.rows), content_type="text/tab-separated-values", headers=meta
        )
    return web.Response(
        text=json.dumps(result.records(), ensure_ascii=False), content_type="application/json", headers=meta
    )
