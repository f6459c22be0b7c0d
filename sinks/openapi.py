"""The OpenAPI 3.1 description of the sink's HTTP API, served at ``/api/openapi.json``.

The dashboard's endpoints and their parameters come from :data:`sinks.endpoints.ENDPOINTS`, the table the server
routes, so the description cannot drift from what is served; the other routes are described here.

>>> doc = document()
>>> doc["openapi"], sorted(doc["paths"])[:3]
('3.1.0', ['/', '/api/alerts', '/api/customer/{id}'])
>>> [p["name"] for p in doc["paths"]["/api/matrix"]["get"]["parameters"]]
['low', 'high']
"""

from __future__ import annotations

from typing import Any

from sinks import endpoints

__all__ = ["document"]

_ERROR = {"$ref": "#/components/responses/Error"}
_GUARDED: list[dict[str, list[str]]] = [{"bearer": []}, {}]  # beyond loopback the token; on loopback nothing


def _param(name: str, where: str, schema: dict[str, Any], doc: str, required: bool = False) -> dict[str, Any]:
    return {"name": name, "in": where, "required": required, "description": doc, "schema": schema}


def _json_answer(doc: str, schema: dict[str, Any] | None = None) -> dict[str, Any]:
    return {"description": doc, "content": {"application/json": {"schema": schema or {"type": "object"}}}}


def _dashboard_paths() -> dict[str, Any]:
    paths: dict[str, Any] = {}
    for endpoint in endpoints.ENDPOINTS:
        params = [_param(name, "query", spec.schema(), spec.doc) for name, spec in endpoint.params.items()]
        if "{id}" in endpoint.path:
            params.insert(0, _param("id", "path", {"type": "string", "maxLength": 200}, "Customer id", True))
        name = endpoint.path.removeprefix("/api/").split("/")[0]
        paths[endpoint.path] = {
            "get": {
                "operationId": name,
                "summary": endpoint.summary,
                "tags": ["dashboard"],
                "security": _GUARDED,
                "parameters": params,
                "responses": {
                    "200": _json_answer("The figures, as JSON (times in ISO 8601 UTC)"),
                    "400": _ERROR,
                    "401": _ERROR,
                    "404": _ERROR,
                    "503": _ERROR,
                },
            }
        }
    return paths


def _sql_path() -> dict[str, Any]:
    answers = {
        "200": {
            "description": "The rows: JSON objects, or TSV with a header line; X-Cvm-Columns and X-Cvm-Types name them",
            "headers": {
                "X-Cvm-Columns": {"description": "Column names (JSON list)", "schema": {"type": "string"}},
                "X-Cvm-Types": {"description": "ClickHouse column types (JSON list)", "schema": {"type": "string"}},
            },
            "content": {
                "application/json": {"schema": {"type": "array", "items": {"type": "object"}}},
                "text/tab-separated-values": {"schema": {"type": "string"}},
            },
        },
        "400": _ERROR,
        "401": _ERROR,
    }
    query = _param("query", "query", {"type": "string"}, "A reading query (SELECT, WITH, SHOW, DESCRIBE, EXPLAIN)")
    fmt = _param("format", "query", {"type": "string", "enum": ["json", "tsv"], "default": "json"}, "Answer format")
    body = {
        "description": "The query as plain text, or a JSON object with query and format",
        "content": {
            "text/plain": {"schema": {"type": "string"}},
            "application/json": {
                "schema": {
                    "type": "object",
                    "properties": {"query": {"type": "string"}, "format": {"type": "string", "enum": ["json", "tsv"]}},
                    "required": ["query"],
                }
            },
        },
    }
    common = {"tags": ["sql"], "security": _GUARDED}
    return {
        "get": {
            **common,
            "operationId": "sql",
            "summary": "A read-only query",
            "parameters": [query, fmt],
            "responses": answers,
        },
        "post": {
            **common,
            "operationId": "sql_post",
            "summary": "A read-only query in the body (at most 1 MiB)",
            "parameters": [fmt],
            "requestBody": body,
            "responses": {**answers, "413": _ERROR},
        },
    }


def document() -> dict[str, Any]:
    """The OpenAPI document of the sink's HTTP API."""
    ops = {"tags": ["operations"]}
    paths: dict[str, Any] = {
        "/": {
            "get": {
                **ops,
                "operationId": "dashboard",
                "summary": "The dashboard page (its data needs the token beyond loopback)",
                "responses": {"200": {"description": "HTML", "content": {"text/html": {"schema": {"type": "string"}}}}},
            }
        },
        "/health": {
            "get": {
                **ops,
                "operationId": "health",
                "summary": "Liveness: whether ClickHouse answers (always open)",
                "responses": {"200": _json_answer("status ok or degraded")},
            }
        },
        "/metrics": {
            "get": {
                **ops,
                "operationId": "metrics",
                "summary": "Prometheus metrics of the sink (cvm/metrics.py)",
                "security": _GUARDED,
                "responses": {
                    "200": {
                        "description": "Prometheus text format",
                        "content": {"text/plain": {"schema": {"type": "string"}}},
                    },
                    "401": _ERROR,
                },
            }
        },
        "/api/status": {
            "get": {
                **ops,
                "operationId": "status",
                "summary": "Rows per table, customers, the writer's counters and lag",
                "security": _GUARDED,
                "responses": {"200": _json_answer("The sink's status"), "401": _ERROR},
            }
        },
        "/api/openapi.json": {
            "get": {
                **ops,
                "operationId": "openapi",
                "summary": "This description",
                "security": _GUARDED,
                "responses": {"200": _json_answer("OpenAPI 3.1"), "401": _ERROR},
            }
        },
        "/api/sql": _sql_path(),
        **_dashboard_paths(),
    }
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "cvm sink",
            "version": "1",
            "description": "Customer value, churn risk and alerts from ClickHouse, read-only. Bound beyond loopback, "
            "every /api route and /metrics need 'Authorization: Bearer <CVM_HTTP_TOKEN>'.",
        },
        "paths": dict(sorted(paths.items())),
        "components": {
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
            "schemas": {
                "Error": {"type": "object", "properties": {"error": {"type": "string"}}, "required": ["error"]}
            },
            "responses": {
                "Error": {
                    "description": "A refusal, on one line",
                    "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}},
                }
            },
        },
    }
