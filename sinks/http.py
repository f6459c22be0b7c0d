"""The sink's analytics HTTP API (stdlib ``ThreadingHTTPServer``), on ``cfg.http_host:cfg.http_port``.

Endpoints:

* ``GET /`` — the dashboard (``sinks/static/index.html``), its files under ``/static/``;
* ``GET /api/kpis``, ``/api/whale``, ``/api/matrix``, ``/api/alerts``, ``/api/customer/<id>``, ``/api/migration``,
  ``/api/model`` — the dashboard's data as JSON (``sinks.dashboard``);
* ``GET /health`` — ``{"status": "ok", "clickhouse": true, ...}``;
* ``GET /api/status`` — rows per table, customers, the writer's counters and lag;
* ``GET|POST /api/sql`` — a read-only query: ``?query=...`` or the POST body (plain text, or JSON
  ``{"query": ..., "format": ...}``); ``format=json`` (default: a list with one object per row) or ``tsv``
  (header line, then rows). Column names and types also come as JSON in the ``X-Cvm-Columns`` and
  ``X-Cvm-Types`` headers. Errors are HTTP 400 with ``{"error": "<one line>"}``.

Bound beyond loopback, ``/api/sql`` and the dashboard's data endpoints require
``Authorization: Bearer <CVM_HTTP_TOKEN>``, and the server refuses to start without a token.

>>> is_loopback("127.0.0.1"), is_loopback("localhost"), is_loopback("::1"), is_loopback("0.0.0.0")
(True, True, True, False)
"""

from __future__ import annotations

import errno
import hmac
import ipaddress
import json
import logging
import socket
import threading
import time
from collections.abc import Callable
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

from clickhouse_connect.driver.exceptions import ClickHouseError

from cvm.config import Config
from cvm.exceptions import ConfigError, CvmError, PortInUse
from sinks import dashboard
from sinks.clickhouse import ClickHouse, condense_error
from sinks.query import Result, run_query, to_tsv

__all__ = ["ApiServer", "check_exposure", "is_loopback"]

log = logging.getLogger("cvm.sink.http")

_MAX_BODY = 1 << 20
StatusFn = Callable[[], dict[str, Any]]


def is_loopback(host: str) -> bool:
    """True when ``host`` only accepts connections from this machine."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False  # a name: it may resolve to anything, so it counts as exposed


def check_exposure(cfg: Config) -> None:
    """Refuse to serve ``/api/sql`` beyond loopback without a token (:class:`ConfigError` says what to do)."""
    if not is_loopback(cfg.http_host) and not cfg.http_token:
        raise ConfigError(
            f"the HTTP API would listen on {cfg.http_host or 'every address'}, beyond this machine, without a "
            "token: set CVM_HTTP_TOKEN (clients send 'Authorization: Bearer <token>'), or bind 127.0.0.1"
        )


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    api: ApiServer


class _V6Server(_Server):
    address_family = socket.AF_INET6


class ApiServer:
    """The HTTP API over a read-only ClickHouse client; :meth:`start` serves it on a background thread.

    ``status`` returns the writer's counters for ``/api/status`` (None when no writer runs in this process).
    """

    def __init__(self, cfg: Config, reader: ClickHouse, status: StatusFn | None = None) -> None:
        if not reader.readonly:
            raise ValueError("the HTTP API needs a client from connect(cfg, readonly=True)")
        check_exposure(cfg)
        self.cfg = cfg
        self.reader = reader
        self.status = status
        self.require_token = not is_loopback(cfg.http_host)
        self.started = time.time()
        self._httpd: _Server | None = None
        self._thread: threading.Thread | None = None
        self.index_html = (Path(__file__).resolve().parent / "static" / "index.html").read_bytes()

    @property
    def port(self) -> int:
        """The port actually bound (``http_port=0`` picks a free one)."""
        return int(self._httpd.server_address[1]) if self._httpd else self.cfg.http_port

    @property
    def url(self) -> str:
        host = self.cfg.http_host
        if host in ("", "0.0.0.0", "::"):
            host = "127.0.0.1"
        return f"http://{f'[{host}]' if ':' in host else host}:{self.port}"

    def start(self) -> ApiServer:
        """Bind and serve; :class:`PortInUse` when the port is taken."""
        host, port = self.cfg.http_host, self.cfg.http_port
        server_cls = _V6Server if ":" in host else _Server
        try:
            httpd = server_cls((host, port), _Handler)
        except OSError as exc:
            if exc.errno == errno.EADDRINUSE:
                raise PortInUse(
                    f"port {port} is in use: stop what listens there, or pick another with --port or CVM_HTTP_PORT"
                ) from None
            raise ConfigError(f"cannot listen on {host}:{port} ({exc.strerror or exc}): check CVM_HTTP_HOST") from None
        httpd.api = self
        self._httpd = httpd
        # A short poll interval makes stop() quick; the idle cost is negligible.
        self._thread = threading.Thread(
            target=httpd.serve_forever, kwargs={"poll_interval": 0.1}, name="cvm-http", daemon=True
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._httpd is not None:
            self._httpd.shutdown()
            self._httpd.server_close()
            self._httpd = None
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None

    # --- endpoint bodies (called from handler threads) -------------------------------------------------------------

    def health(self) -> dict[str, Any]:
        ok = self.reader.ping()
        return {
            "status": "ok" if ok else "degraded",
            "clickhouse": ok,
            "database": self.reader.database,
            "clickhouse_url": self.cfg.describe()["clickhouse_url"],
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

    def authorized(self, header: str | None) -> bool:
        if not self.require_token:
            return True
        expected = f"Bearer {self.cfg.http_token}"
        return header is not None and hmac.compare_digest(header.strip().encode(), expected.encode())


class _Handler(BaseHTTPRequestHandler):
    server: _Server
    protocol_version = "HTTP/1.1"
    server_version = "cvm-sink"

    def log_message(self, format: str, *args: Any) -> None:
        log.debug("%s " + format, self.address_string(), *args)

    # --- responses -------------------------------------------------------------------------------------------------

    def _send(self, status: int, body: bytes, content_type: str, headers: dict[str, str] | None = None) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Cache-Control", "no-store")
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def _json(self, status: int, obj: Any) -> None:
        body = json.dumps(obj, default=str, ensure_ascii=False).encode()
        self._send(status, body, "application/json; charset=utf-8")

    def _error(self, status: int, message: str) -> None:
        self._json(status, {"error": " ".join(message.split())})

    # --- routing ---------------------------------------------------------------------------------------------------

    def do_GET(self) -> None:  # noqa: N802 - stdlib name
        self._route()

    def do_HEAD(self) -> None:  # noqa: N802 - stdlib name
        self._route()

    def do_POST(self) -> None:  # noqa: N802 - stdlib name
        self._route()

    def _route(self) -> None:
        api = self.server.api
        url = urlsplit(self.path)
        try:
            if url.path == "/api/sql":
                self._sql(api, url.query)
            elif self.command == "POST":
                self._error(HTTPStatus.METHOD_NOT_ALLOWED, f"POST is not allowed on {url.path}")
            elif url.path in ("/", "/index.html"):
                self._send(HTTPStatus.OK, api.index_html, "text/html; charset=utf-8")
            elif url.path == "/health":
                self._json(HTTPStatus.OK, api.health())
            elif url.path == "/api/status":
                self._json(HTTPStatus.OK, api.api_status())
            elif url.path.startswith("/api/"):
                self._dashboard(api, url.path, url.query)
            elif url.path.startswith("/static/"):
                found = dashboard.static_file(url.path)
                if found is None:
                    self._error(HTTPStatus.NOT_FOUND, f"no such file: {url.path}")
                else:
                    self._send(HTTPStatus.OK, found[0], found[1])
            else:
                self._error(HTTPStatus.NOT_FOUND, f"no such endpoint: {url.path}")
        except (BrokenPipeError, ConnectionResetError):
            pass
        except Exception as exc:  # the API must answer, never die: one line to the client, details to the log
            log.warning("%s %s failed", self.command, self.path, exc_info=True)
            try:
                self._error(HTTPStatus.INTERNAL_SERVER_ERROR, f"{type(exc).__name__}: {exc}")
            except OSError:
                pass

    def _dashboard(self, api: ApiServer, path: str, query_string: str) -> None:
        if not api.authorized(self.headers.get("Authorization")):
            self._error(HTTPStatus.UNAUTHORIZED, "send 'Authorization: Bearer <token>' (the sink's CVM_HTTP_TOKEN)")
            return
        try:
            answer = dashboard.handle(
                api.reader, path, query_string, api.cfg.default_margin_rate, api.status, api.cfg.base_currency
            )
        except dashboard.ApiError as exc:
            self._error(exc.status, exc.message)
            return
        self._json(HTTPStatus.OK, answer)

    def _sql(self, api: ApiServer, query_string: str) -> None:
        if not api.authorized(self.headers.get("Authorization")):
            self._error(HTTPStatus.UNAUTHORIZED, "send 'Authorization: Bearer <token>' (the sink's CVM_HTTP_TOKEN)")
            return
        params = {k: v[-1] for k, v in parse_qs(query_string, keep_blank_values=True).items()}
        query = params.get("query", "")
        fmt = params.get("format", "")
        if self.command == "POST":
            length = int(self.headers.get("Content-Length") or 0)
            if length > _MAX_BODY:
                self._error(HTTPStatus.REQUEST_ENTITY_TOO_LARGE, f"query body over {_MAX_BODY} bytes")
                return
            body = self.rfile.read(length).decode("utf-8", "replace") if length else ""
            if "json" in (self.headers.get("Content-Type") or "") and body.strip():
                try:
                    doc = json.loads(body)
                except ValueError:
                    self._error(HTTPStatus.BAD_REQUEST, "the body is not valid JSON")
                    return
                if not isinstance(doc, dict):
                    self._error(HTTPStatus.BAD_REQUEST, 'expected a JSON object {"query": "..."}')
                    return
                query = str(doc.get("query") or query)
                fmt = str(doc.get("format") or fmt)
            elif body.strip():
                query = body
        fmt = (fmt or "json").lower()
        if fmt not in ("json", "tsv"):
            self._error(HTTPStatus.BAD_REQUEST, f"format must be json or tsv, not {fmt}")
            return
        try:
            result = api.sql(query)
        except CvmError as exc:
            self._error(HTTPStatus.BAD_REQUEST, str(exc))
            return
        # The columns travel in headers, so that an empty JSON answer still names them (ASCII JSON: header-safe).
        meta = {
            "X-Cvm-Columns": json.dumps(result.columns),
            "X-Cvm-Types": json.dumps(result.types),
            "X-Cvm-Elapsed-Ms": str(result.elapsed_ms),
        }
        if fmt == "tsv":
            body_out = to_tsv(result.columns, result.rows).encode()
            self._send(HTTPStatus.OK, body_out, "text/tab-separated-values; charset=utf-8", meta)
            return
        body_out = json.dumps(result.records(), ensure_ascii=False).encode()
        self._send(HTTPStatus.OK, body_out, "application/json; charset=utf-8", meta)
