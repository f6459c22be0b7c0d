"""``cvm verify``: what ClickHouse must hold once a history file went through cvm, computed from the file alone,
and checked exactly.

The expectation is computed without ``scoring/``, from the file and the rules the README promises:

* **What is published** is what ``cvm replay`` publishes: the file is read by the same
  :class:`~cvm.replay_file.HistoryFile` and each row checked by the same :class:`~cvm.replay.RowCheck`
  (:func:`cvm.events.validate` with ``CVM_MIN_EVENT_TIME``, the Avro schema, a rate to the base currency); a row
  replay skips never reaches Kafka, so it is neither counted nor a dead letter.
* **Money is in the base currency**: a transaction in another currency counts converted by
  :meth:`scoring.currency.Rates.convert`, the very function the worker applies (``CVM_BASE_CURRENCY``,
  ``CVM_FX_RATES``).
* **Publish order is file order** (repeated ``--replays`` times). Lateness is measured per topic per customer, and
  all of a customer's records of one topic lie in one partition, where Kafka keeps the order of one producer: the
  file order therefore decides exactly which events are late. The verifier cannot know the order when several
  publishers write the same customers at once (their interleaving is decided by the network), nor for events
  published by other means than ``cvm replay`` of this file (give those as ``--dead-letters`` when they are poison).
* An event is **late** when it is more than ``CVM_ALLOWED_LATENESS_S`` behind the latest event time of the same
  kind already counted for its customer; it counts nothing and goes to ``late_events``. Otherwise an event whose
  ``(kind, customer_id, event_id)`` was already counted is an **upstream duplicate** and counts nothing. Every other
  event is counted: money in integer cents, each amount rounded to the cent (``round(x * 100)``, half-even, as
  floats), the default margin rate for a transaction without margin, the channel's default cost for a contact
  without cost.

Compared with ClickHouse (database ``CVM_CLICKHOUSE_DATABASE``): per customer of ``customers FINAL``
``n_transactions``, ``revenue``, ``gross_margin``, ``cost_to_serve`` (to the cent), ``n_contacts`` and
``n_payments``, and which customers exist; per raw table the rows with ``FINAL`` (one per distinct
``(customer_id, event_id)``, late events included); the distinct records (topic, partition, offset) in
``dead_letters`` against ``--dead-letters``; and ``late_events``: every event expected late is there, and any
other event there must be an upstream duplicate — the worker's bounded memory of recent event ids may report a
duplicate as late instead of dropping it silently, which changes no total.

Limit: that bounded memory (``scoring.state.RECENT_IDS``) may also classify as late a straggler *within* the allowed
lateness when more than that many newer events of its customer arrived first; the verifier then reports the
customer as a mismatch and names the event ("reported late, but within the allowed lateness").

>>> e = Expectation(margin_rate=0.3, contact_costs={"phone": 6.0}, lateness_ms=1000)
>>> tx = {"event_id": "t1", "customer_id": "c1", "event_time": 10_000, "amount": 12.5, "gross_margin": None}
>>> e.add("transactions", tx), e.add("transactions", tx)
('counted', 'duplicate')
>>> e.add("transactions", dict(tx, event_id="t0", event_time=8_000))
'late'
>>> e.add("contacts", {"event_id": "k1", "customer_id": "c1", "event_time": 1, "channel": "phone", "cost": None})
'counted'
>>> e.customers["c1"]
Totals(n_transactions=1, n_contacts=1, n_payments=0, revenue_cents=1250, margin_cents=375, cost_cents=600)
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections import Counter
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from typing import Any

from cvm.codec import KINDS
from cvm.config import EVENT_TOPICS, Config
from cvm.exceptions import ClickHouseUnavailable, CvmError
from cvm.kafka import SESSION_TIMEOUT_S
from cvm.replay import RowCheck
from cvm.replay_file import HistoryFile, Parsed, parse_mapping

__all__ = ["Actual", "Expectation", "Report", "Totals", "compare", "expect_file", "main", "read_actual", "verify"]

#: Columns of ``customers`` the verifier checks, and the :class:`Totals` field each is compared with.
CHECKED = {
    "n_transactions": "n_transactions",
    "revenue": "revenue_cents",
    "gross_margin": "margin_cents",
    "cost_to_serve": "cost_cents",
    "n_contacts": "n_contacts",
    "n_payments": "n_payments",
}
_MONEY = {"revenue", "gross_margin", "cost_to_serve"}
_SHOWN = 8


def _cents(amount: float) -> int:
    return int(round(float(amount) * 100))


@dataclass
class Totals:
    """What one customer's counted events add up to."""

    n_transactions: int = 0
    n_contacts: int = 0
    n_payments: int = 0
    revenue_cents: int = 0
    margin_cents: int = 0
    cost_cents: int = 0


@dataclass(frozen=True, slots=True)
class LateEvent:
    """An event expected on ``late_events``: ``behind_ms`` behind its kind's stream time for its customer."""

    kind: str
    customer_id: str
    event_id: str
    behind_ms: int


class Expectation:
    """Folds published events, in publish order, into what ClickHouse must hold (see the module docstring)."""

    def __init__(self, margin_rate: float, contact_costs: Mapping[str, float], lateness_ms: int) -> None:
        self.margin_rate = margin_rate
        self.contact_costs = dict(contact_costs)
        self.lateness_ms = lateness_ms
        self.customers: dict[str, Totals] = {}
        self.raw: dict[str, set[tuple[str, str]]] = {kind: set() for kind in KINDS}
        self.late: list[LateEvent] = []
        self.duplicates: set[tuple[str, str, str]] = set()  # (kind, customer, event id) seen again
        self.outcomes: Counter[str] = Counter()
        self._counted: set[tuple[str, str, str]] = set()
        self._stream_time: dict[tuple[str, str], int] = {}  # (kind, customer) → latest counted event time

    @classmethod
    def from_config(cls, cfg: Config) -> Expectation:
        return cls(cfg.default_margin_rate, cfg.contact_costs, int(cfg.allowed_lateness_s * 1000))

    def add(self, kind: str, record: Mapping[str, Any]) -> str:
        """Fold one published event in; return ``counted``, ``duplicate`` or ``late``."""
        cid, eid, t = str(record["customer_id"]), str(record["event_id"]), int(record["event_time"])
        self.raw[kind].add((cid, eid))  # the sink stores every valid event, late or duplicate (one row with FINAL)
        key = (kind, cid)
        stream_time = self._stream_time.get(key, 0)
        if stream_time and t < stream_time - self.lateness_ms:
            self.late.append(LateEvent(kind, cid, eid, stream_time - t))
            return self._outcome("late")
        ident = (kind, cid, eid)
        if ident in self._counted:
            self.duplicates.add(ident)
            return self._outcome("duplicate")
        self._counted.add(ident)
        if t > stream_time:
            self._stream_time[key] = t
        totals = self.customers.get(cid)
        if totals is None:
            totals = self.customers[cid] = Totals()
        if kind == "transactions":
            amount = float(record["amount"])
            margin = record.get("gross_margin")
            totals.n_transactions += 1
            totals.revenue_cents += _cents(amount)
            totals.margin_cents += _cents(amount * self.margin_rate if margin is None else margin)
        elif kind == "contacts":
            cost = record.get("cost")
            totals.n_contacts += 1
            totals.cost_cents += _cents(self.contact_costs.get(record["channel"], 0.0) if cost is None else cost)
        else:
            totals.n_payments += 1
        return self._outcome("counted")

    def _outcome(self, outcome: str) -> str:
        self.outcomes[outcome] += 1
        return outcome

    def late_ids(self) -> set[tuple[str, str, str]]:
        return {(e.kind, e.customer_id, e.event_id) for e in self.late}


@dataclass
class Published:
    """What the publishing of a file amounts to, beside the :class:`Expectation`."""

    rows: int = 0
    published: Counter[str] = field(default_factory=Counter)
    skipped: Counter[str] = field(default_factory=Counter)


def expect_file(cfg: Config, source: HistoryFile, replays: int = 1) -> tuple[Expectation, Published]:
    """The expectation of ``replays`` successive ``cvm replay`` runs of ``source``, in file order."""
    expectation = Expectation.from_config(cfg)
    check = RowCheck(cfg)  # exactly what `cvm replay` checks before publishing a row
    pub = Published()
    for _ in range(replays):
        for row in source:
            pub.rows += 1
            if not isinstance(row, Parsed) or check(row) is not None:
                pub.skipped[row.kind or "unknown"] += 1
                continue
            pub.published[row.kind] += 1
            expectation.add(row.kind, check.rates.convert(row.kind, row.record))
    return expectation, pub


# --- what ClickHouse holds -----------------------------------------------------------------------------------------


@dataclass
class Actual:
    """What ClickHouse holds, as far as the verifier checks it."""

    customers: dict[str, dict[str, Any]]
    raw: dict[str, int]
    dead_letters: int
    dead_letter_classes: dict[str, int]
    late: set[tuple[str, str, str]]  # (kind, customer, event id)
    late_records: int  # distinct (topic, partition, offset)
    score_rows: int
    score_versions: int
    conflicting_versions: int


def read_actual(cfg: Config) -> Actual:
    """Read what the verifier compares from ClickHouse (database ``cfg.clickhouse_database``)."""
    db = cfg.clickhouse_database
    kind_of = {cfg.topic(kind): kind for kind in EVENT_TOPICS}
    from sinks.query import Reader  # sinks imports cvm: import it when reading only

    reader = Reader(cfg)
    try:
        customers = reader.records(f"SELECT customer_id, {', '.join(CHECKED)} FROM {db}.customers FINAL")
        counts = reader.records(
            "SELECT "
            + ", ".join(f"(SELECT count() FROM {db}.{kind} FINAL) AS {kind}" for kind in KINDS)
            + f", (SELECT uniqExact(topic, partition, offset) FROM {db}.dead_letters) AS dead_letters"
            + f", (SELECT uniqExact(topic, partition, offset) FROM {db}.late_events) AS late_records"
            + f", (SELECT count() FROM {db}.customer_scores) AS score_rows"
            + f", (SELECT uniqExact(customer_id, version) FROM {db}.customer_scores) AS score_versions"
            + f", (SELECT count() FROM (SELECT customer_id, version FROM {db}.customer_scores"
            " GROUP BY customer_id, version"
            " HAVING uniqExact(n_transactions, n_contacts, n_payments, revenue, gross_margin, cost_to_serve) > 1)"
            ") AS conflicting"
        )[0]
        classes = reader.records(
            f"SELECT error_class, uniqExact(topic, partition, offset) AS n FROM {db}.dead_letters GROUP BY error_class"
        )
        late = reader.records(f"SELECT DISTINCT topic, customer_id, event_id FROM {db}.late_events")
    except CvmError as exc:
        raise ClickHouseUnavailable(
            f"could not read database {db} ({exc}): is this the database cvm wrote (CVM_CLICKHOUSE_DATABASE)?"
        ) from None
    finally:
        reader.close()
    return Actual(
        customers={str(r["customer_id"]): r for r in customers},
        raw={kind: int(counts[kind]) for kind in KINDS},
        dead_letters=int(counts["dead_letters"]),
        dead_letter_classes={str(r["error_class"]): int(r["n"]) for r in classes},
        late={(kind_of.get(r["topic"], r["topic"]), str(r["customer_id"]), str(r["event_id"])) for r in late},
        late_records=int(counts["late_records"]),
        score_rows=int(counts["score_rows"]),
        score_versions=int(counts["score_versions"]),
        conflicting_versions=int(counts["conflicting"]),
    )


# --- comparing -----------------------------------------------------------------------------------------------------


@dataclass
class Report:
    """The comparison: ``ok`` when everything matched exactly; ``mismatches`` says what did not, one line each."""

    customers_expected: int
    customers_found: int
    customers_wrong: int
    mismatches: list[str]
    n_mismatches: int
    published: dict[str, int]
    skipped: dict[str, int]
    outcomes: dict[str, int]
    raw: dict[str, tuple[int, int]]  # kind → (found, expected)
    dead_letters: tuple[int, int]
    dead_letter_classes: dict[str, int]
    late: tuple[int, int]  # (records found, records expected)
    score_history: dict[str, int]

    @property
    def ok(self) -> bool:
        return self.n_mismatches == 0

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["ok"] = self.ok
        return out

    def text(self) -> str:
        def num(kinds: Mapping[str, int]) -> str:
            return ", ".join(f"{k} {v:,}" for k, v in kinds.items() if v) or "none"

        lines = [
            f"published {sum(self.published.values()):,} events ({num(self.published)}); "
            f"{num(self.outcomes)}; skipped by replay: {num(self.skipped)}",
            f"customers: {self.customers_expected:,} expected, {self.customers_found:,} in customers FINAL, "
            f"{self.customers_wrong:,} wrong or missing",
            "raw tables (FINAL): "
            + ", ".join(f"{k} {found:,}/{exp:,}" for k, (found, exp) in self.raw.items())
            + " (found/expected)",
            f"dead letters: {self.dead_letters[0]:,} found, {self.dead_letters[1]:,} expected"
            + (f" ({num(self.dead_letter_classes)})" if self.dead_letter_classes else ""),
            f"late events: {self.late[0]:,} records found, {self.late[1]:,} expected",
            f"score history: {self.score_history['rows']:,} rows, {self.score_history['versions']:,} distinct "
            f"(customer, version), {self.score_history['conflicting']:,} versions with differing figures",
        ]
        if self.mismatches:
            lines.append(f"{self.n_mismatches:,} mismatches; first ones:")
            lines.extend(f"  {m}" for m in self.mismatches)
            lines.append("NOT an exact match")
        else:
            lines.append("exact match")
        return "\n".join(lines)


def _money(cents: int) -> str:
    return f"{cents / 100:.2f}"


def compare(expected: Expectation, published: Published, actual: Actual, dead_letters: int = 0) -> Report:
    """Compare, exactly; ``dead_letters`` is how many poison records were published besides the file."""
    problems: list[str] = []
    wrong = 0
    for cid in sorted(expected.customers.keys() | actual.customers.keys()):
        exp, got = expected.customers.get(cid), actual.customers.get(cid)
        if got is None:
            wrong += 1
            problems.append(f"customer {cid}: missing from customers FINAL")
            continue
        if exp is None:
            wrong += 1
            problems.append(f"customer {cid}: in customers FINAL but no event of it should count")
            continue
        diffs = []
        for column, attr in CHECKED.items():
            want = getattr(exp, attr)
            if column in _MONEY:
                have = _cents(got[column] or 0.0)
                if have != want:
                    diffs.append(f"{column} {_money(have)} (expected {_money(want)})")
            elif int(got[column] or 0) != want:
                diffs.append(f"{column} {got[column]} (expected {want})")
        if diffs:
            wrong += 1
            problems.append(f"customer {cid}: " + ", ".join(diffs))
    raw = {kind: (actual.raw[kind], len(expected.raw[kind])) for kind in KINDS}
    for kind, (found, exp_n) in raw.items():
        if found != exp_n:
            problems.append(f"raw table {kind}: {found:,} rows with FINAL (expected {exp_n:,})")
    if actual.dead_letters != dead_letters:
        problems.append(f"dead_letters: {actual.dead_letters:,} records (expected {dead_letters:,})")
    late_records = len(expected.late)
    if not late_records <= actual.late_records <= late_records + expected.outcomes["duplicate"]:
        problems.append(
            f"late_events: {actual.late_records:,} records (expected {late_records:,}, plus at most "
            f"{expected.outcomes['duplicate']:,} duplicates reported late)"
        )
    late_expected = expected.late_ids()
    missing = [f"late event {k}/{c}/{e}: not in late_events" for k, c, e in sorted(late_expected - actual.late)]
    counted = [
        f"late event {k}/{c}/{e}: reported late, but within the allowed lateness (it was counted)"
        for k, c, e in sorted(actual.late - late_expected - expected.duplicates)
    ]
    n_problems = len(problems) + len(missing) + len(counted)
    for details, what in ((missing, "missing from late_events"), (counted, "reported late but counted")):
        problems.extend(details[:_SHOWN])
        if len(details) > _SHOWN:
            problems.append(f"... and {len(details) - _SHOWN:,} more late events {what}")
    return Report(
        customers_expected=len(expected.customers),
        customers_found=len(actual.customers),
        customers_wrong=wrong,
        mismatches=problems[:_SHOWN],
        n_mismatches=n_problems,
        published=dict(published.published),
        skipped=dict(published.skipped),
        outcomes=dict(expected.outcomes),
        raw=raw,
        dead_letters=(actual.dead_letters, dead_letters),
        dead_letter_classes=actual.dead_letter_classes,
        late=(actual.late_records, late_records),
        score_history={
            "rows": actual.score_rows,
            "versions": actual.score_versions,
            "conflicting": actual.conflicting_versions,
        },
    )


def quiet_s(cfg: Config) -> float:
    """How long a working pipeline can leave ClickHouse unchanged: a worker that takes over from a killed one waits
    for the group's session timeout, then holds the records of the tick in progress until each of its sources has
    been silent for ``CVM_IDLE_PARTITION_S`` (a source read to the end after a rebalance may be one batch short on
    Tansu); 20 s beside that for the sink's flushes and the scorings themselves.

    >>> quiet_s(Config.load(env={}))
    46.0
    """
    return 20.0 + SESSION_TIMEOUT_S + 2 * cfg.idle_partition_s


def verify(
    cfg: Config,
    expected: Expectation,
    published: Published,
    dead_letters: int = 0,
    wait: float = 0,
    settle: float | None = None,
) -> Report:
    """Read ClickHouse and compare; while it does not match, read again every second for up to ``wait`` seconds,
    but stop early once ClickHouse has not changed for ``settle`` seconds (default :func:`quiet_s`: the pipeline
    is idle, waiting longer would not help)."""
    if settle is None:
        settle = quiet_s(cfg)
    now = time.monotonic()
    deadline, changed, last = now + wait, now, None
    while True:
        actual = read_actual(cfg)
        report = compare(expected, published, actual, dead_letters)
        now = time.monotonic()
        if actual != last:
            changed, last = now, actual
        if report.ok or now >= deadline or now - changed >= settle:
            return report
        time.sleep(1.0)


def main(cfg: Config, args: argparse.Namespace) -> int:
    """``cvm verify FILE``: exit 0 when ClickHouse matches the file exactly, 1 otherwise."""
    if args.replays < 1 or args.dead_letters < 0 or args.wait < 0:
        raise CvmError("--replays must be at least 1, --dead-letters and --wait at least 0")
    source = HistoryFile(
        args.file, args.format, args.type, parse_mapping(args.map), args.time_format, cfg.base_currency
    )
    expected, published = expect_file(cfg, source, args.replays)
    report = verify(cfg, expected, published, args.dead_letters, args.wait)
    if args.json:
        sys.stdout.write(json.dumps(report.to_dict(), indent=1) + "\n")
    else:
        db = cfg.clickhouse_database
        sys.stdout.write(f"cvm verify: {source.path.name} against {db}\n{report.text()}\n")
    sys.stdout.flush()
    return 0 if report.ok else 1
