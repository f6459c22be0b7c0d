"""The /metrics server of workers and the learner: loopback by default, behind the token beyond it."""

from __future__ import annotations

import socket
from pathlib import Path

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from cvm import metrics
from cvm.config import Config
from cvm.exceptions import ConfigError, PortInUse
from tests.conftest import free_port


def _cfg(tmp_path: Path, **env: str) -> Config:
    return Config.load(env={"CVM_DATA_DIR": str(tmp_path), **env})


def test_serves_the_registry_on_loopback(tmp_path: Path) -> None:
    port = free_port()
    server = metrics.serve(_cfg(tmp_path), port, "CVM_WORKER_METRICS_PORT")
    assert server is not None
    try:
        metrics.records.labels(topic="test-serve", fate="applied").inc(5)
        metrics.model_in_force("churn", 12, signed_at=1.0)
        answer = httpx.get(server.url, timeout=10)
        assert server.url == f"http://127.0.0.1:{port}/metrics" and answer.status_code == 200
        families = list(text_string_to_metric_families(answer.text))
        assert metrics.sample_sums(families, "cvm_records_total", topic="test-serve") == 5
        assert metrics.sample_sums(families, "cvm_model_version", kind="churn") == 12
        assert metrics.sample_sums(families, "cvm_model_age_seconds", kind="churn") > 1e9  # signed in 1970
        assert httpx.get(server.url.replace("/metrics", "/other"), timeout=10).status_code == 404
    finally:
        server.stop()


def test_off_taken_and_exposed(tmp_path: Path) -> None:
    assert metrics.serve(_cfg(tmp_path), 0, "CVM_LEARNER_METRICS_PORT") is None
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        with pytest.raises(PortInUse, match=f"port {port} .*CVM_LEARNER_METRICS_PORT"):
            metrics.serve(_cfg(tmp_path), port, "CVM_LEARNER_METRICS_PORT")
    with pytest.raises(ConfigError, match="CVM_HTTP_TOKEN"):
        metrics.serve(_cfg(tmp_path, CVM_METRICS_HOST="0.0.0.0"), free_port(), "CVM_WORKER_METRICS_PORT")
    server = metrics.serve(
        _cfg(tmp_path, CVM_METRICS_HOST="0.0.0.0", CVM_HTTP_TOKEN="t0k"), free_port(), "CVM_WORKER_METRICS_PORT"
    )
    assert server is not None
    try:
        assert httpx.get(server.url, timeout=10).status_code == 401
        assert httpx.get(server.url, headers={"Authorization": "Bearer nope"}, timeout=10).status_code == 401
        assert httpx.get(server.url, headers={"Authorization": "Bearer t0k"}, timeout=10).status_code == 200
    finally:
        server.stop()
