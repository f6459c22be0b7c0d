"""The sink's OpenAPI description: valid, complete, and every documented operation answers as documented."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from openapi_spec_validator import validate

from cvm.config import Config
from sinks.clickhouse import ClickHouse
from sinks.http import ApiServer, build_app
from tests.sinks.test_dashboard_api import seed

TOKEN = "s3cret"


@pytest.fixture
def exposed(cfg: Config, reader: ClickHouse, ch: ClickHouse) -> Iterator[ApiServer]:
    """Bound beyond loopback (every /api route and /metrics need the token), on seeded data."""
    seed(ch)
    server = ApiServer(cfg.replace(http_host="0.0.0.0", http_token=TOKEN), reader, status=lambda: {"lag": {}}).start()
    yield server
    server.stop()


def _document(server: ApiServer) -> dict[str, Any]:
    answer = httpx.get(f"{server.url}/api/openapi.json", headers={"Authorization": f"Bearer {TOKEN}"}, timeout=30)
    assert answer.status_code == 200 and answer.headers["content-type"].startswith("application/json")
    return dict(answer.json())


def _operations(doc: dict[str, Any]) -> list[tuple[str, str, dict[str, Any]]]:
    return [(path, method, op) for path, item in doc["paths"].items() for method, op in item.items()]


def test_the_description_is_valid_openapi(exposed: ApiServer) -> None:
    doc = _document(exposed)
    validate(doc)  # raises OpenAPIValidationError with the path of what is wrong
    assert doc["openapi"].startswith("3.1")


def test_every_route_is_documented(exposed: ApiServer) -> None:
    documented = set(_document(exposed)["paths"])
    served = {r.canonical.replace("{id:.*}", "{id}") for r in build_app(exposed).router.resources()}
    assert served - {"/static/{path}", "/index.html"} == documented


def test_every_documented_operation_answers(exposed: ApiServer) -> None:
    doc = _document(exposed)
    operations = _operations(doc)
    assert len(operations) >= 13
    for path, method, op in operations:
        url = exposed.url + path.replace("{id}", "c00")
        kwargs: dict[str, Any] = {"timeout": 30}
        if method == "post":
            kwargs["content"] = "SELECT 1 AS one"
        elif path == "/api/sql":
            kwargs["params"] = {"query": "SELECT 1 AS one"}
        guarded = bool(op.get("security"))
        if guarded:
            refused = httpx.request(method.upper(), url, **kwargs)
            assert refused.status_code == 401 and "401" in op["responses"], (method, path)
        answer = httpx.request(method.upper(), url, headers={"Authorization": f"Bearer {TOKEN}"}, **kwargs)
        assert answer.status_code == 200, (method, path, answer.text[:200])
        kinds = op["responses"]["200"].get("content", {})
        assert any(answer.headers["content-type"].startswith(kind) for kind in kinds), (path, answer.headers)
        for param in op.get("parameters", []):  # a value outside a documented range is refused, as documented
            schema = param["schema"]
            if param["in"] == "query" and "maximum" in schema:
                too_big = schema["maximum"] + 1
                bad = httpx.request(
                    method.upper(),
                    url,
                    headers={"Authorization": f"Bearer {TOKEN}"},
                    params={param["name"]: too_big},
                    timeout=30,
                )
                assert bad.status_code == 400 and "400" in op["responses"], (path, param["name"])
