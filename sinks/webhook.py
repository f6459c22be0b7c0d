"""Optional delivery of alerts to a webhook (``CVM_ALERT_WEBHOOK_URL``): one JSON POST per alert.

Only alerts about now are posted: an alert whose event time is more than ``max_age_days``
(``CVM_ALERT_WEBHOOK_MAX_AGE_DAYS``, 7) before the wall clock — a backfill's alerts about the distant past, a
restore's — is not posted; it is in ClickHouse like every alert, counted (``old`` in :meth:`stats`,
``cvm_webhook_alerts_total{outcome="old"}``) and logged once per batch.

The sink never waits for the webhook. :meth:`WebhookDeliverer.submit` puts alerts in a bounded queue and returns;
one background thread posts them. When the queue is full the oldest waiting alert is dropped (and counted): the
newest alerts matter most, and every alert is in ClickHouse anyway.

Each POST carries the alert as JSON (``alert_time`` in ISO-8601 UTC, ``customer_id``, ``rule``, ``severity``,
``reasons``, ``scores`` as an object, ``episode``) plus a one-line ``text`` summary (chat tools show it), and the
header ``Idempotency-Key: <episode>``. A 2xx answer is success. Connection errors, time-outs, 408, 429 and 5xx are
retried with exponential backoff (0.5 s, 1 s, 2 s, … at most 30 s, or the server's ``Retry-After`` within that),
up to ``attempts`` tries; any other answer is final. A failure is counted and logged with the URL's origin only
(webhook URLs often carry their secret in the path). Posts go through one pooled httpx client. Delivery is best
effort (the queue is in memory) and a post may arrive twice (an answer that came too late is retried):
receivers de-duplicate on the episode.

>>> payload({"alert_time": 1_772_409_600_000, "customer_id": "c42", "rule": "high_value_at_risk",
...          "severity": "high", "reasons": ["≈3 complaints in 30 days"], "scores": '{"clv": 5400.0}',
...          "episode": "c42:high_value_at_risk:1772409600000"})["text"]
'[high] c42 high_value_at_risk: ≈3 complaints in 30 days'
>>> origin("https://user:pw@hooks.example.com:8443/services/T0/B0/secret?token=x")
'https://hooks.example.com:8443'
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable, Mapping
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from typing import Any
from urllib.parse import urlsplit

import httpx

from cvm import metrics
from cvm.config import Config
from cvm.events import parse_time

__all__ = ["WebhookDeliverer", "event_ms", "origin", "payload"]

log = logging.getLogger("cvm.sink.webhook")

_RETRIED = {408, 425, 429, 500, 502, 503, 504}


def origin(url: str) -> str:
    """``scheme://host[:port]`` of a URL: what may be shown or logged of it."""
    parts = urlsplit(url)
    host = parts.hostname or ""
    if ":" in host:
        host = f"[{host}]"
    return f"{parts.scheme}://{host}{f':{parts.port}' if parts.port else ''}"


def _iso(ms: Any) -> Any:
    if isinstance(ms, int | float) and not isinstance(ms, bool):
        return datetime.fromtimestamp(ms / 1000, UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")
    return ms


def payload(alert: Mapping[str, Any]) -> dict[str, Any]:
    """The JSON object posted for an alert: an ``alerts`` topic message or a row of the ``alerts`` table."""
    scores = alert.get("scores") or {}
    if isinstance(scores, str):
        try:
            scores = json.loads(scores)
        except ValueError:
            scores = {"raw": scores}
    reasons = [str(r) for r in alert.get("reasons") or []]
    text = f"[{alert.get('severity')}] {alert.get('customer_id')} {alert.get('rule')}"
    if reasons:
        text += ": " + "; ".join(reasons)
    return {
        "alert_time": _iso(alert.get("alert_time")),
        "customer_id": alert.get("customer_id"),
        "rule": alert.get("rule"),
        "severity": alert.get("severity"),
        "reasons": reasons,
        "scores": scores,
        "episode": alert.get("episode"),
        "text": text,
    }


def event_ms(value: Any) -> int | None:
    """An alert's time in epoch ms (a row's int ms, a datetime, an ISO-8601 text), or None when it is none of those.

    >>> event_ms(1_772_409_600_000), event_ms("2026-03-02T00:00:00Z"), event_ms("soon")
    (1772409600000, 1772409600000, None)
    """
    if isinstance(value, bool):
        return None
    if isinstance(value, int | float):
        return int(value)
    if isinstance(value, datetime):
        return int((value if value.tzinfo else value.replace(tzinfo=UTC)).timestamp() * 1000)
    if isinstance(value, str):
        try:
            return parse_time(value)
        except ValueError:
            return None
    return None


def _retry_after(value: str | None) -> float | None:
    """Seconds from a ``Retry-After`` header (delta seconds or an HTTP date)."""
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        return max(0.0, (parsedate_to_datetime(value) - datetime.now(UTC)).total_seconds())
    except (TypeError, ValueError):
        return None


class WebhookDeliverer:
    """Posts alerts to ``url`` from a background thread; :meth:`submit` never blocks.

    Parameters
    ----------
    url
        Where to POST (http or https).
    attempts
        Tries per alert, the first included.
    queue_size
        Alerts waiting at most; beyond it the oldest is dropped.
    timeout_s
        Time-out of one request.
    backoff_s, max_backoff_s
        First wait between tries, doubled after each, never above the maximum.
    max_age_days
        Alerts whose event time is older than this (against ``clock``, the wall clock) are not posted; 0: post all.
    clock
        Seconds since the epoch (``time.time``; tests pass their own).
    """

    def __init__(
        self,
        url: str,
        attempts: int = 5,
        queue_size: int = 1000,
        timeout_s: float = 5.0,
        backoff_s: float = 0.5,
        max_backoff_s: float = 30.0,
        max_age_days: float = 7.0,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.url = url
        self.max_age_ms = int(max_age_days * 86_400_000)
        self.clock = clock
        self.origin = origin(url)
        self.attempts = attempts
        self.timeout_s = timeout_s
        self.backoff_s = backoff_s
        self.max_backoff_s = max_backoff_s
        self._queue: deque[Mapping[str, Any]] = deque(maxlen=queue_size)
        self._cond = threading.Condition()
        self._stopping = False
        self._abort = threading.Event()
        self._thread: threading.Thread | None = None
        self._busy = False
        self._counts = {"submitted": 0, "delivered": 0, "failed": 0, "dropped": 0, "retries": 0, "old": 0}
        self._last_error: str | None = None
        self._client: httpx.Client | None = None

    @classmethod
    def from_config(cls, cfg: Config) -> WebhookDeliverer:
        return cls(
            cfg.alert_webhook_url,
            attempts=cfg.alert_webhook_attempts,
            queue_size=cfg.alert_webhook_queue,
            max_age_days=cfg.alert_webhook_max_age_days,
        )

    def start(self) -> WebhookDeliverer:
        self._client = httpx.Client(
            timeout=self.timeout_s,
            headers={"Content-Type": "application/json; charset=utf-8", "User-Agent": "cvm-sink"},
            follow_redirects=False,
        )
        self._thread = threading.Thread(target=self._run, name="cvm-webhook", daemon=True)
        self._thread.start()
        return self

    def submit(self, alerts: Iterable[Mapping[str, Any]]) -> None:
        """Queue alerts for delivery; when the queue is full, the oldest waiting ones are dropped. Alerts whose event
        time is older than the maximum age are counted and logged (one line for them all), not queued."""
        fresh = self._recent(list(alerts))
        with self._cond:
            for alert in fresh:
                if len(self._queue) == self._queue.maxlen:
                    self._counts["dropped"] += 1
                    metrics.webhook_alerts.labels(outcome="dropped").inc()
                self._queue.append(alert)  # a full deque drops its oldest item itself
                self._counts["submitted"] += 1
            metrics.webhook_queued.set(len(self._queue) + (1 if self._busy else 0))
            self._cond.notify_all()

    def _recent(self, alerts: list[Mapping[str, Any]]) -> list[Mapping[str, Any]]:
        if not self.max_age_ms:
            return alerts
        oldest = int(self.clock() * 1000) - self.max_age_ms
        fresh: list[Mapping[str, Any]] = []
        old: list[Mapping[str, Any]] = []
        for alert in alerts:
            t = event_ms(alert.get("alert_time"))
            (old if t is not None and t < oldest else fresh).append(alert)
        if old:
            with self._cond:
                self._counts["old"] += len(old)
            metrics.webhook_alerts.labels(outcome="old").inc(len(old))
            times = [event_ms(a.get("alert_time")) or 0 for a in old]
            log.warning(
                "%d alert(s) raised by events of %s to %s, more than %g days ago, not posted to the webhook at %s "
                "(they are in cvm.alerts; CVM_ALERT_WEBHOOK_MAX_AGE_DAYS)",
                len(old),
                _iso(min(times)),
                _iso(max(times)),
                self.max_age_ms / 86_400_000,
                self.origin,
            )
        return fresh

    def stop(self, timeout_s: float = 5.0) -> None:
        """Deliver what is queued for up to ``timeout_s``, then give up on the rest (counted as dropped)."""
        with self._cond:
            self._stopping = True
            self._cond.notify_all()
        if self._thread is not None:
            self._thread.join(timeout_s)
            if self._thread.is_alive():
                self._abort.set()  # cut short a backoff wait; a request in flight ends within its time-out
                self._thread.join(self.timeout_s + 1.0)
            self._thread = None
        with self._cond:
            left = len(self._queue)
            self._queue.clear()
            self._counts["dropped"] += left
            metrics.webhook_alerts.labels(outcome="dropped").inc(left)
            metrics.webhook_queued.set(0)
        if self._client is not None:
            self._client.close()
            self._client = None
        if left:
            log.warning("stopping with %d alerts not delivered to the webhook at %s", left, self.origin)

    def stats(self) -> dict[str, Any]:
        """Counters for ``/api/status`` (safe from any thread)."""
        with self._cond:
            return {
                "url": self.origin,
                **self._counts,
                "queued": len(self._queue) + (1 if self._busy else 0),
                "last_error": self._last_error,
            }

    def wait_idle(self, timeout_s: float) -> bool:
        """Wait until nothing is queued or in flight; False when ``timeout_s`` passed first."""
        with self._cond:
            return self._cond.wait_for(lambda: not self._queue and not self._busy, timeout_s)

    # --- the delivery thread ---------------------------------------------------------------------------------------

    def _run(self) -> None:
        while True:
            with self._cond:
                while not self._queue and not self._stopping:
                    self._cond.wait()
                if not self._queue or self._abort.is_set():
                    return
                alert = self._queue.popleft()
                self._busy = True
            try:
                self._deliver(alert)
            except Exception:  # the thread must outlive any one alert (e.g. a value JSON cannot carry)
                log.warning("could not deliver an alert to the webhook at %s", self.origin, exc_info=True)
                with self._cond:
                    self._counts["failed"] += 1
                metrics.webhook_alerts.labels(outcome="failed").inc()
            finally:
                with self._cond:
                    self._busy = False
                    metrics.webhook_queued.set(len(self._queue))
                    self._cond.notify_all()

    def _deliver(self, alert: Mapping[str, Any]) -> None:
        body = json.dumps(payload(alert), ensure_ascii=False, default=str).encode()
        episode = str(alert.get("episode") or "")
        delay = self.backoff_s
        error = ""
        attempt = 0
        for attempt in range(1, self.attempts + 1):
            ok, retry, error, wait = self._post(body, episode)
            if ok:
                with self._cond:
                    self._counts["delivered"] += 1
                metrics.webhook_alerts.labels(outcome="delivered").inc()
                return
            if not retry or attempt == self.attempts:
                break
            with self._cond:
                self._counts["retries"] += 1
            metrics.webhook_retries.inc()
            if self._abort.wait(min(self.max_backoff_s, max(delay, wait or 0.0))):
                break
            delay *= 2
        with self._cond:
            self._counts["failed"] += 1
            self._last_error = error
        metrics.webhook_alerts.labels(outcome="failed").inc()
        log.warning(
            "alert %s not delivered to the webhook at %s after %d attempt(s): %s", episode, self.origin, attempt, error
        )

    def _post(self, body: bytes, episode: str) -> tuple[bool, bool, str, float | None]:
        """One POST: (delivered, worth retrying, error text, seconds the server asked to wait)."""
        assert self._client is not None, "start() first"
        try:
            answer = self._client.post(self.url, content=body, headers={"Idempotency-Key": episode})
        except httpx.TransportError as exc:  # refused, unresolvable, TLS, time-out: the text names no part of the URL
            return False, True, _reason(exc), None
        if answer.is_success:
            return True, False, "", None
        return (
            False,
            answer.status_code in _RETRIED,
            f"HTTP {answer.status_code}",
            _retry_after(answer.headers.get("Retry-After")),
        )


def _reason(exc: httpx.TransportError) -> str:
    """The innermost reason of a transport error (``ConnectionRefusedError: [Errno 111] ...``), without the URL."""
    cause: BaseException = exc
    while cause.__cause__ is not None or cause.__context__ is not None:
        cause = cause.__cause__ or cause.__context__  # type: ignore[assignment]
    return f"{type(cause).__name__}: {' '.join(str(cause).split())}"[:200]
