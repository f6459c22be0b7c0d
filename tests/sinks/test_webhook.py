"""Webhook delivery against a real local HTTP server: retries with backoff, final failures, a bounded queue, only
recent alerts posted, and ``cvm sink`` delivering what reaches its ``alerts`` topic once per episode."""

from __future__ import annotations

import json
import logging
import os
import select
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import pytest
from prometheus_client import REGISTRY

from cvm.config import Config
from cvm.kafka import make_producer
from scoring.alert_state import AlertState
from scoring.alerts import AlertRules
from sinks.webhook import WebhookDeliverer, _retry_after
from tests.conftest import free_port

SECRET = "/hooks/T000/B000/s3cr3t-token"
DAY_MS = 86_400_000
#: The start of yesterday (UTC): alerts about now, which the webhook posts (CVM_ALERT_WEBHOOK_MAX_AGE_DAYS).
T0 = (int(time.time() * 1000) // DAY_MS - 1) * DAY_MS
T0_ISO = time.strftime("%Y-%m-%dT%H:%M:%S.000Z", time.gmtime(T0 / 1000))


@dataclass
class Hook:
    """What the test server does and what it saw."""

    fail_first: int = 0
    status: int = 503
    gate: threading.Event | None = None
    requests: list[tuple[str, dict[str, str], Any]] = field(default_factory=list)
    arrived: threading.Event = field(default_factory=threading.Event)
    lock: threading.Lock = field(default_factory=threading.Lock)
    url: str = ""

    def delivered(self) -> list[Any]:
        with self.lock:
            return [body for _, headers, body in self.requests if headers.get("x-answer") == "200"]


@pytest.fixture
def hook() -> Iterator[Hook]:
    state = Hook()

    class Handler(BaseHTTPRequestHandler):
        def log_message(self, format: str, *args: Any) -> None:
            pass

        def do_POST(self) -> None:  # noqa: N802 - stdlib name
            body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
            state.arrived.set()
            if state.gate is not None:
                state.gate.wait(30)
            with state.lock:
                code = state.status if len(state.requests) < state.fail_first else 200
                headers = {k.lower(): v for k, v in self.headers.items()} | {"x-answer": str(code)}
                state.requests.append((self.path, headers, body))
            self.send_response(code)
            self.send_header("Content-Length", "0")
            self.end_headers()

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    state.url = f"http://127.0.0.1:{server.server_address[1]}{SECRET}?key=abc"
    yield state
    if state.gate is not None:
        state.gate.set()
    server.shutdown()
    server.server_close()


def alerts(n: int, t0: int = T0, first: int = 0) -> list[dict[str, Any]]:
    """Real alerts from the rules: customer i at risk at t0 + i seconds."""
    rules = AlertRules(rules=("high_value_at_risk",))
    out = []
    for i in range(first, n):
        scores = {"value_tier": "A", "churn_probability_60d": 0.7, "clv": 100.0 * i, "complaints_30d": 2.0}
        out.extend(rules.evaluate(f"c{i}", scores, AlertState(), None, t0 + i * 1000))
    return out


def deliverer(url: str, **kwargs: Any) -> WebhookDeliverer:
    kwargs.setdefault("backoff_s", 0.01)
    kwargs.setdefault("timeout_s", 5.0)
    return WebhookDeliverer(url, **kwargs)


def test_failed_posts_are_retried_until_delivered(hook: Hook) -> None:
    hook.fail_first = 2
    d = deliverer(hook.url, attempts=5).start()
    try:
        d.submit(alerts(2))
        assert d.wait_idle(20)
    finally:
        d.stop()
    assert [h["x-answer"] for _, h, _ in hook.requests] == ["503", "503", "200", "200"]
    first, second = hook.delivered()
    assert first == {
        "alert_time": T0_ISO,
        "customer_id": "c0",
        "rule": "high_value_at_risk",
        "severity": "high",
        "reasons": ["70% chance of leaving within 60 days", "2 complaints in 30 days"],
        "scores": {"value_tier": "A", "clv": 0.0, "churn_probability_60d": 0.7, "complaints_30d": 2.0},
        "episode": f"c0:high_value_at_risk:{T0}",
        "text": "[high] c0 high_value_at_risk: 70% chance of leaving within 60 days; 2 complaints in 30 days",
    }
    assert second["customer_id"] == "c1"
    path, headers, _ = hook.requests[-1]
    assert path == SECRET + "?key=abc" and headers["idempotency-key"] == f"c1:high_value_at_risk:{T0 + 1000}"
    assert headers["content-type"].startswith("application/json")
    stats = d.stats()
    assert stats["delivered"] == 2 and stats["retries"] == 2 and stats["failed"] == 0 and stats["queued"] == 0
    assert stats["url"] == hook.url.split("/hooks")[0]  # the origin only: the path is the secret


def test_gives_up_after_its_attempts_and_logs_no_secret(hook: Hook, caplog: pytest.LogCaptureFixture) -> None:
    hook.fail_first = 99
    d = deliverer(hook.url, attempts=3).start()
    with caplog.at_level(logging.WARNING, logger="cvm.sink.webhook"):
        try:
            d.submit(alerts(1))
            assert d.wait_idle(20)
        finally:
            d.stop()
    assert len(hook.requests) == 3
    assert d.stats()["failed"] == 1 and d.stats()["last_error"] == "HTTP 503"
    [record] = [r for r in caplog.records if "not delivered" in r.getMessage()]
    text = record.getMessage()
    assert "after 3 attempt(s): HTTP 503" in text and "127.0.0.1" in text
    assert "s3cr3t" not in text and "key=abc" not in text


def test_a_client_error_is_final(hook: Hook) -> None:
    hook.fail_first, hook.status = 99, 400
    d = deliverer(hook.url, attempts=5).start()
    try:
        d.submit(alerts(1))
        assert d.wait_idle(20)
    finally:
        d.stop()
    assert len(hook.requests) == 1 and d.stats()["failed"] == 1 and d.stats()["retries"] == 0


def test_an_unreachable_webhook_is_counted_not_raised() -> None:
    d = deliverer(f"http://127.0.0.1:{free_port()}{SECRET}", attempts=2).start()
    try:
        d.submit(alerts(1))
        assert d.wait_idle(20)
    finally:
        d.stop()
    stats = d.stats()
    assert stats["failed"] == 1 and stats["retries"] == 1
    assert "ConnectionRefused" in stats["last_error"] and "s3cr3t" not in stats["last_error"]


def test_submit_never_waits_and_a_full_queue_drops_the_oldest(hook: Hook) -> None:
    hook.gate = threading.Event()  # the server holds the first request until released
    d = deliverer(hook.url, queue_size=3).start()
    try:
        first, *rest = alerts(6)
        d.submit([first])
        assert hook.arrived.wait(10)  # in flight, stuck at the server
        d.submit(rest)  # returns at once although the webhook is stuck: 5 alerts into 3 places
        assert d.stats()["dropped"] == 2 and d.stats()["queued"] == 4  # three waiting, one in flight
        hook.gate.set()
        assert d.wait_idle(20)
    finally:
        d.stop()
    assert [b["customer_id"] for b in hook.delivered()] == ["c0", "c3", "c4", "c5"]
    assert d.stats()["delivered"] == 4 and d.stats()["submitted"] == 6


def test_stop_gives_up_on_a_slow_webhook_and_counts_the_rest(hook: Hook) -> None:
    hook.fail_first = 99
    d = deliverer(hook.url, attempts=5, backoff_s=30.0).start()  # the first retry waits 30 s
    d.submit(alerts(3))
    assert hook.arrived.wait(10)
    d.stop(timeout_s=0.2)
    stats = d.stats()
    assert stats["failed"] == 1 and stats["dropped"] == 2 and stats["queued"] == 0
    assert len(hook.requests) == 1  # the backoff was cut short, no further try


def test_alerts_about_the_past_are_counted_and_logged_not_posted(hook: Hook, caplog: pytest.LogCaptureFixture) -> None:
    now = T0 / 1000 + 3 * 86_400  # the alerts at T0 are 3 days old; those 10 days before, 13
    before = REGISTRY.get_sample_value("cvm_webhook_alerts_total", {"outcome": "old"}) or 0.0
    d = deliverer(hook.url, max_age_days=7, clock=lambda: now).start()
    with caplog.at_level(logging.WARNING, logger="cvm.sink.webhook"):
        try:
            d.submit([*alerts(3, t0=T0 - 10 * DAY_MS), *alerts(2)])  # a backfill's batch: the past, then now
            d.submit([{**a, "alert_time": T0_ISO} for a in alerts(4, first=3)])  # an ISO time, recent: posted
            assert d.wait_idle(20)
        finally:
            d.stop()
    assert sorted(b["customer_id"] for b in hook.delivered()) == ["c0", "c1", "c3"]
    stats = d.stats()
    assert stats["old"] == 3 and stats["delivered"] == 3 and stats["submitted"] == 3 and stats["dropped"] == 0
    assert REGISTRY.get_sample_value("cvm_webhook_alerts_total", {"outcome": "old"}) == before + 3
    [line] = [r.getMessage() for r in caplog.records if "not posted" in r.getMessage()]  # one line for the batch
    assert line.startswith("3 alert(s) raised by events of ") and "more than 7 days ago" in line
    assert "s3cr3t" not in line


def test_a_max_age_of_zero_posts_every_alert(hook: Hook) -> None:
    d = deliverer(hook.url, max_age_days=0).start()
    try:
        d.submit(alerts(2, t0=T0 - 3650 * DAY_MS))  # ten years old
        assert d.wait_idle(20)
    finally:
        d.stop()
    assert len(hook.delivered()) == 2 and d.stats()["old"] == 0


def test_retry_after_is_read_as_seconds_or_a_date() -> None:
    assert _retry_after("3") == 3.0 and _retry_after(None) is None and _retry_after("soon") is None
    assert _retry_after("Wed, 21 Oct 2015 07:28:00 GMT") == 0.0  # in the past: no wait


# --- cvm sink with a webhook ---------------------------------------------------------------------------------------


def _wait(check: Callable[[], bool], timeout: float = 30.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return True
        time.sleep(0.1)
    return False


@pytest.mark.integration
def test_the_sink_delivers_each_new_episode_once(cfg: Config, hook: Hook, tmp_path: Path) -> None:
    hook.fail_first = 1  # the first POST fails: the sink retries it
    port = free_port()
    cfg = cfg.replace(
        clickhouse_url=f"chdb://{tmp_path / 'clickhouse'}",  # the sink process owns its own engine
        http_port=port,
        sink_flush_s=0.2,
        alert_webhook_url=hook.url,
    )
    env = dict(os.environ, **cfg.to_env())
    sink = subprocess.Popen(
        [sys.executable, "-m", "cvm.cli", "sink"], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    try:
        assert sink.stdout is not None
        ready, _, _ = select.select([sink.stdout], [], [], 60)
        assert ready and sink.stdout.readline().startswith("cvm sink: HTTP API"), sink.poll()
        producer = make_producer(cfg)

        def send(batch: list[dict[str, Any]]) -> None:
            for alert in batch:
                producer.produce(
                    cfg.topic("alerts"), key=alert["customer_id"].encode(), value=json.dumps(alert).encode()
                )
            assert producer.flush(10) == 0

        def status() -> dict[str, Any]:
            return dict(httpx.get(f"http://127.0.0.1:{port}/api/status", timeout=5).json())

        first = alerts(3)
        send(first)
        assert _wait(lambda: len(hook.delivered()) == 3), status()
        # A replay emits the same episodes again: written (and collapsed), not delivered again; a backfill's alerts
        # about the distant past are written, and not posted.
        send([*first, *alerts(4, first=3), *alerts(7, t0=T0 - 30 * DAY_MS, first=4)])
        assert _wait(lambda: status()["writer"]["rows_written"].get("alerts") == 10), status()
        # Written means handed to the deliverer: once its queue is empty, every delivery it will make is made.
        assert _wait(lambda: status()["writer"]["webhook"]["queued"] == 0)
        assert sorted(b["customer_id"] for b in hook.delivered()) == ["c0", "c1", "c2", "c3"]
        webhook = status()["writer"]["webhook"]
        assert webhook["delivered"] == 4 and webhook["retries"] == 1 and webhook["failed"] == 0
        assert webhook["old"] == 3
        assert webhook["url"] == hook.url.split("/hooks")[0]

        listed = subprocess.run(
            [sys.executable, "-m", "cvm.cli", "alerts", "--format", "json"],
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert listed.returncode == 0, listed.stderr
        assert [a["customer_id"] for a in json.loads(listed.stdout)] == ["c3", "c2", "c1", "c0", "c6", "c5", "c4"]
    finally:
        sink.terminate()
        _, err = sink.communicate(timeout=30)
    assert sink.returncode == 0, err
    assert "s3cr3t" not in err
    assert "alert(s) raised by events of" in err and "not posted to the webhook" in err
