"""The HTTP API on the real chDB engine: SQL as JSON and TSV, read-only, errors, tokens, status."""

from __future__ import annotations

import json
import socket
from collections.abc import Iterator

import httpx
import pytest

from cvm.config import Config
from cvm.exceptions import ConfigError, PortInUse
from sinks.clickhouse import ClickHouse
from sinks.http import ApiServer


@pytest.fixture
def api(cfg: Config, ch: ClickHouse, reader: ClickHouse) -> Iterator[ApiServer]:
    ch.command(
        f"INSERT INTO {ch.database}.customers (customer_id, version, revenue, as_of) VALUES "
        "('c1', 1, 10.5, '2025-01-01 00:00:00.123'), ('c2', 2, 7, '2025-01-02 00:00:00')"
    )
    server = ApiServer(cfg, reader, status=lambda: {"events_per_s": 1.5}).start()
    yield server
    server.stop()


def _sql(api: ApiServer, query: str, **params: str) -> httpx.Response:
    return httpx.get(f"{api.url}/api/sql", params={"query": query, **params}, timeout=30)


def test_sql_as_json(api: ApiServer, ch: ClickHouse) -> None:
    answer = _sql(api, f"SELECT customer_id, revenue, as_of FROM {ch.database}.customers ORDER BY customer_id")
    assert answer.status_code == 200
    assert answer.json() == [
        {"customer_id": "c1", "revenue": 10.5, "as_of": "2025-01-01 00:00:00.123"},
        {"customer_id": "c2", "revenue": 7.0, "as_of": "2025-01-02 00:00:00"},
    ]
    assert json.loads(answer.headers["x-cvm-columns"]) == ["customer_id", "revenue", "as_of"]
    assert json.loads(answer.headers["x-cvm-types"]) == ["String", "Float64", "DateTime64(3, 'UTC')"]
    empty = _sql(api, f"SELECT customer_id FROM {ch.database}.customers WHERE 0")
    assert empty.json() == [] and json.loads(empty.headers["x-cvm-columns"]) == ["customer_id"]


def test_sql_as_tsv_get_and_post(api: ApiServer, ch: ClickHouse) -> None:
    query = f"SELECT customer_id, version FROM {ch.database}.customers ORDER BY customer_id"
    expected = "customer_id\tversion\nc1\t1\nc2\t2\n"
    answer = _sql(api, query, format="tsv")
    assert answer.status_code == 200 and answer.text == expected
    assert answer.headers["content-type"].startswith("text/tab-separated-values")
    posted = httpx.post(f"{api.url}/api/sql?format=tsv", content=query, timeout=30)
    assert posted.text == expected
    as_json = httpx.post(f"{api.url}/api/sql", json={"query": query, "format": "tsv"}, timeout=30)
    assert as_json.text == expected


@pytest.mark.parametrize(
    "verb",
    [
        "INSERT INTO {db}.customers (customer_id) VALUES ('x')",
        "CREATE TABLE {db}.x (a UInt8) ENGINE = Memory",
        "DROP TABLE {db}.customers",
        "SELECT 1; DROP TABLE {db}.customers",
        "KILL QUERY WHERE 1",
    ],
)
def test_sql_refuses_writes(api: ApiServer, ch: ClickHouse, verb: str) -> None:
    answer = _sql(api, verb.format(db=ch.database))
    assert answer.status_code == 400
    assert set(answer.json()) == {"error"} and "\n" not in answer.json()["error"]
    assert ch.rows(f"SELECT count() FROM {ch.database}.customers")[0][0] == 2


def test_bad_sql_is_400_one_line(api: ApiServer) -> None:
    for query in ("SELECT (1 + , 2", "SELECT * FROM nowhere.nothing", "", "SELECT 1 FORMAT JSON"):
        answer = _sql(api, query)
        assert answer.status_code == 400, query
        error = answer.json()["error"]
        assert error and "\n" not in error and "Traceback" not in error
    assert _sql(api, "SELECT 1", format="xml").status_code == 400
    assert (
        httpx.post(f"{api.url}/api/sql", content=b"{", headers={"Content-Type": "application/json"}).status_code == 400
    )


def test_health_status_index_and_404(api: ApiServer, ch: ClickHouse) -> None:
    health = httpx.get(f"{api.url}/health").json()
    assert health["status"] == "ok" and health["clickhouse"] is True and health["database"] == ch.database
    status = httpx.get(f"{api.url}/api/status").json()
    assert status["customers"] == 2 and status["tables"]["customers"] == 2 and status["tables"]["alerts"] == 0
    assert status["writer"] == {"events_per_s": 1.5}
    index = httpx.get(f"{api.url}/")
    assert index.status_code == 200 and "/api/status" in index.text
    missing = httpx.get(f"{api.url}/nope")
    assert missing.status_code == 404 and "error" in missing.json()


def test_beyond_loopback_needs_a_token(cfg: Config, reader: ClickHouse) -> None:
    with pytest.raises(ConfigError, match="CVM_HTTP_TOKEN"):
        ApiServer(cfg.replace(http_host="0.0.0.0"), reader)
    server = ApiServer(cfg.replace(http_host="0.0.0.0", http_token="s3cret"), reader).start()
    try:
        url = f"{server.url}/api/sql"
        assert httpx.get(url, params={"query": "SELECT 1"}).status_code == 401
        wrong = httpx.get(url, params={"query": "SELECT 1"}, headers={"Authorization": "Bearer nope"})
        assert wrong.status_code == 401
        right = httpx.get(url, params={"query": "SELECT 1 AS one"}, headers={"Authorization": "Bearer s3cret"})
        assert right.status_code == 200 and right.json() == [{"one": 1}]
        assert httpx.get(f"{server.url}/health").status_code == 200  # health and status stay open
    finally:
        server.stop()


def test_port_in_use(cfg: Config, reader: ClickHouse) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        with pytest.raises(PortInUse, match=f"port {port} is in use.*--port"):
            ApiServer(cfg.replace(http_port=port), reader).start()


# --- the guard, bodies and keep-alive (sinks/http.py on aiohttp) ----------------------------------------------------


@pytest.fixture
def exposed(cfg: Config, reader: ClickHouse) -> Iterator[ApiServer]:
    """The API as if bound beyond loopback (0.0.0.0), with its token."""
    server = ApiServer(cfg.replace(http_host="0.0.0.0", http_token="s3cret"), reader, status=lambda: {"x": 1}).start()
    yield server
    server.stop()


def test_beyond_loopback_status_and_metrics_need_the_token(exposed: ApiServer) -> None:
    for path in ("/api/status", "/metrics", "/api/openapi.json", "/api/kpis", "/api/nothing"):
        answer = httpx.get(f"{exposed.url}{path}", timeout=30)
        assert answer.status_code == 401, path
        assert answer.headers["www-authenticate"] == "Bearer" and "CVM_HTTP_TOKEN" in answer.json()["error"]
    good = {"Authorization": "Bearer s3cret"}
    assert httpx.get(f"{exposed.url}/api/status", headers=good, timeout=30).json()["writer"] == {"x": 1}
    assert "cvm_http_requests_total" in httpx.get(f"{exposed.url}/metrics", headers=good, timeout=30).text
    assert httpx.get(f"{exposed.url}/health", timeout=30).status_code == 200  # liveness stays open


def _exchange(sock: socket.socket, request: bytes) -> tuple[int, dict[str, str], bytes]:
    """Send one request on an open connection and read one response (Content-Length framed)."""
    sock.sendall(request)
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(65536)
        assert chunk, f"connection closed before a response: {data!r}"
        data += chunk
    head, _, rest = data.partition(b"\r\n\r\n")
    status_line, *lines = head.decode("latin-1").split("\r\n")
    headers = {k.strip().lower(): v.strip() for k, _, v in (line.partition(":") for line in lines)}
    length = int(headers.get("content-length", "0"))
    while len(rest) < length:
        chunk = sock.recv(65536)
        assert chunk, "connection closed inside a response body"
        rest += chunk
    return int(status_line.split()[1]), headers, rest[:length]


@pytest.mark.parametrize(
    ("request_line", "expected"),
    [
        (b"POST /api/kpis HTTP/1.1", 405),  # a GET route
        (b"POST /health HTTP/1.1", 405),
        (b"POST /api/nothing HTTP/1.1", 404),
    ],
)
def test_an_unread_body_does_not_corrupt_the_next_request(api: ApiServer, request_line: bytes, expected: int) -> None:
    """Keep-alive: the refused request's body must not be read as the start of the next request."""
    body = b"GET /api/sql?query=SELECT%201 HTTP/1.1\r\nHost: x\r\n\r\n" * 3  # looks like requests, is a body
    with socket.create_connection(("127.0.0.1", api.port), timeout=30) as sock:
        refused = request_line + b"\r\nHost: x\r\nContent-Length: " + str(len(body)).encode() + b"\r\n\r\n" + body
        status, _, answer = _exchange(sock, refused)
        assert status == expected and "error" in json.loads(answer)
        status, _, answer = _exchange(sock, b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n")
        assert status == 200 and json.loads(answer)["status"] == "ok"


def test_the_token_refusal_drains_the_body_too(exposed: ApiServer) -> None:
    body = b"SELECT 1" * 100
    with socket.create_connection(("127.0.0.1", exposed.port), timeout=30) as sock:
        request = b"POST /api/sql HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body)
        assert _exchange(sock, request)[0] == 401
        assert _exchange(sock, b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n")[0] == 200


def test_an_oversized_body_is_413_and_the_connection_closes(api: ApiServer) -> None:
    with socket.create_connection(("127.0.0.1", api.port), timeout=30) as sock:
        head = b"POST /api/sql HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n\r\n" % (2 << 20)
        status, headers, answer = _exchange(sock, head + b"SELECT 1 " * 100)
        assert status == 413 and "over 1048576 bytes" in json.loads(answer)["error"]
        assert headers.get("connection", "").lower() == "close"
        sock.settimeout(15)
        try:
            rest = sock.recv(65536)
        except ConnectionResetError:
            rest = b""
        assert rest == b""  # closed: the rest of the body is never read as a request
    # Within the limit a POSTed query still works.
    assert httpx.post(f"{api.url}/api/sql", content="SELECT 1 AS one", timeout=30).json() == [{"one": 1}]
