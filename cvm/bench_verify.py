"""The ``verify`` phase of ``cvm bench``: what the pipeline phases wrote, checked exactly as ``cvm verify`` checks.

The workers of the ``pipeline`` and ``pipeline_2w`` phases write their scores to the bench's ``customer-scores``
topic (two consumer groups on the same events: every customer is scored by both). This phase starts a sink on the
bench's topics (into the database :func:`load_config` names, apart from the latency phases') and compares what it
writes with what the published load must add up to, computed from the load alone by
:class:`cvm.verify.Expectation`: per customer of ``customers FINAL`` the counts and the money to the cent, the raw
tables, late events and dead letters, and no ``(customer, version)`` of the score history with two different sets
of figures. A throughput figure is worth nothing if the numbers behind it are wrong: a mismatch fails the phase
(and ``cvm bench`` exits non-zero) with the first differences.

The restore phase (:mod:`cvm.bench_restart`) restores from the same database (:func:`load_config`: the load is
written once when both phases run) and checks the customers it restored against the same expectation.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from cvm.bench_harness import raw_rows, sink_get, wait_for
from cvm.codec import Codec
from cvm.config import Config
from cvm.events import validate
from cvm.exceptions import CvmError, InvalidEvent
from cvm.verify import Expectation, Published, Report, verify
from scoring.currency import Rates

if TYPE_CHECKING:
    from cvm.bench_harness import Harness

__all__ = ["KEYS", "Expected", "check", "expect", "load_config", "phase"]

KEYS = {
    "verified_customers": "customers whose counts and money in ClickHouse match the load exactly (verify phase)",
    "verify_mismatches": "differences between ClickHouse and what the load adds up to (0: an exact match)",
}


@dataclass(frozen=True)
class Expected:
    """What the load must add up to in ClickHouse, and how many of its records must be dead letters."""

    expectation: Expectation
    published: Published
    dead_letters: int


def expect(cfg: Config, records: Sequence[tuple[str, bytes, bytes]]) -> Expected:
    """The expectation of ``records`` (``(kind, key, Avro value)``, in publish order) under ``cfg``'s rules, as
    ``cvm verify`` computes it for a file: the event rules (:func:`cvm.events.validate`) and money converted to the
    base currency by the function the worker applies; an event that breaks them is a dead letter.

    >>> from cvm.codec import Codec
    >>> cfg = Config.load(env={})
    >>> tx = {"event_id": "t1", "customer_id": "c1", "event_time": 1_767_225_600_000, "amount": 12.5}
    >>> value = Codec().encode("transactions", tx)
    >>> e = expect(cfg, [("transactions", b"c1", value)] * 2)
    >>> e.expectation.customers["c1"].revenue_cents, dict(e.expectation.outcomes), e.dead_letters
    (1250, {'counted': 1, 'duplicate': 1}, 0)
    """
    codec, rates, now_ms = Codec(), Rates.from_config(cfg), int(time.time() * 1000)
    expectation, published, dead = Expectation.from_config(cfg), Published(), 0
    for kind, _, value in records:
        published.rows += 1
        published.published[kind] += 1
        _, record = codec.decode(value)
        try:
            validate(kind, record, now_ms, cfg.min_event_time_ms)
            converted = rates.convert(kind, record)
        except InvalidEvent:
            dead += 1
            continue
        expectation.add(kind, converted)
    return Expected(expectation, published, dead)


def load_config(cfg: Config) -> Config:
    """Where a sink writes the bench's topics to ClickHouse: the verify phase's sink and the restore phase's first
    one share its consumer group and its database, so that the second finds the load written and only checks it."""
    return cfg.replace(app_id=f"{cfg.app_id}-load", clickhouse_database="load")


def phase(bench: Harness, expected: Expected) -> dict[str, Any]:
    """A sink on the bench's topics, into the database of :func:`load_config`; ClickHouse compared with ``expected``
    until it matches or stops changing. Raises :class:`CvmError` with the first differences when it does not match."""
    cfg = load_config(bench.cfg)
    sink = bench.children.start("verify-sink", ["-m", "cvm.cli", "sink"], cfg)
    try:
        report = _compare(bench, cfg, expected, {"verify-sink": sink})
    finally:
        bench.children.stop(sink, timeout=30.0)
    return check(report, "the pipeline phases' outputs")


def check(report: Report, what: str) -> dict[str, Any]:
    """The phase's figures from a :class:`Report`; :class:`CvmError` when it is not an exact match.

    >>> from cvm.verify import Report
    >>> ok = Report(2, 2, 0, [], 0, {}, {}, {}, {}, (0, 0), {}, (0, 0), {"rows": 4, "versions": 4, "conflicting": 0})
    >>> check(ok, "x")
    {'verified_customers': 2, 'verify_mismatches': 0}
    >>> check(Report(2, 2, 1, ["customer c1: revenue 1.00 (expected 2.00)"], 1, {}, {}, {}, {}, (0, 0), {},
    ...              (0, 0), {"rows": 4, "versions": 4, "conflicting": 0}), "x")  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    cvm.exceptions.CvmError: x do not match the load: 1 mismatches, 1 of 2 customers wrong; first: customer c1: ...
    """
    conflicting = report.score_history["conflicting"]
    if report.ok and not conflicting:
        return {"verified_customers": report.customers_found, "verify_mismatches": 0}
    first = report.mismatches[0] if report.mismatches else f"{conflicting} score versions with differing figures"
    raise CvmError(
        f"{what} do not match the load: {report.n_mismatches + conflicting} mismatches, "
        f"{report.customers_wrong} of {report.customers_expected} customers wrong; first: {first}"
    )


def _compare(bench: Harness, cfg: Config, expected: Expected, procs: dict[str, Any]) -> Report:
    """Wait until the sink of ``cfg`` holds every raw event and has read its topics to their end, then compare
    until exact or quiet (``cvm verify``'s wait). Each comparison reads every customer: at 700,000 customers,
    comparing every second while the sink still wrote score records kept the bench at 40% of a core, and the sink
    answering it."""
    e = expected
    rows = sum(len(keys) for keys in e.expectation.raw.values())  # the raw tables' rows with FINAL
    wait_for(bench, procs, lambda: _caught_up(cfg, rows), "the sink to write the bench's topics")
    return verify(cfg, e.expectation, e.published, e.dead_letters, wait=bench.timeout * 2)


def _caught_up(cfg: Config, rows: int) -> bool:
    """The sink holds ``rows`` raw events, has nothing pending, and its consumer is at the end of every topic."""
    writer = sink_get(cfg, "/api/status").get("writer") or {}
    lag = writer.get("lag") or {}
    scores = cfg.topic("customer-scores")
    return scores in lag and not any(lag.values()) and not writer.get("pending_rows") and raw_rows(cfg) >= rows
