"""``cvm replay``: publish a history file through the live topics, with the same codec and producer as live events.

The file is read by :class:`cvm.replay_file.HistoryFile` (formats, event ids: see :mod:`cvm.replay_file`; times
and other values: :mod:`cvm.replay_values`), and every row checked by :class:`RowCheck`, which ``cvm verify``
applies too. Any time from ``CVM_MIN_EVENT_TIME`` (default 1970-01-01) on is history. A transaction without a
currency is in the base currency (``CVM_BASE_CURRENCY``); one in another currency needs a rate on its date in
``CVM_FX_RATES`` (:mod:`scoring.currency`), or it is a bad row: the worker would only send it to the dead letters.

Bad rows fail the command, loudly. The file is read twice: first to check every row, then to publish. A bad row
(unparseable, a required field missing, breaking :func:`cvm.events.validate`, no exchange rate) is reported as
``line N: reason`` (``record N`` in Avro files, ``row N`` in Parquet files) on stderr — the first 20 — and a
summary counts them by reason. When there are more than ``--max-bad`` of them (default 0), nothing is published
and the exit code is 1; otherwise the good rows are published and the bad ones skipped. Publishing nothing at all
(an empty file, every row bad) is an error too, and so is a stop signal before the end of the file.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable

from cvm.codec import Codec, make_registry
from cvm.config import Config
from cvm.events import validate
from cvm.exceptions import CvmError, DecodeError, InvalidEvent
from cvm.publish import Progress, Publisher, StopSignals, format_counts
from cvm.replay_file import HistoryFile, Parsed, Rejected, parse_mapping
from scoring.currency import Rates

__all__ = ["RowCheck", "main"]

_SHOWN_BAD_ROWS = 20


class RowCheck:
    """What a parsed row must pass to be published, as ``cvm replay`` and ``cvm verify`` both apply it: the event
    rules (:func:`cvm.events.validate`, with the configured floor), its Avro schema, and a rate to the base
    currency when it is a transaction in another currency."""

    def __init__(self, cfg: Config, now_ms: int | None = None) -> None:
        self.codec = Codec(make_registry(cfg.schema_registry_url, cfg.schema_registry_wait_s))
        self.rates = Rates.from_config(cfg)
        self.floor_ms = cfg.min_event_time_ms
        self.now_ms = int(time.time() * 1000) if now_ms is None else now_ms

    def __call__(self, row: Parsed) -> Rejected | None:
        """None when the row is publishable, else why not."""
        try:
            validate(row.kind, row.record, self.now_ms, self.floor_ms)
            self.codec.encode(row.kind, row.record)
            self.rates.convert(row.kind, row.record)
        except InvalidEvent as exc:
            return Rejected(row.line, str(exc), row.kind, exc.reason)
        except DecodeError as exc:
            return Rejected(row.line, str(exc), row.kind, "breaks its Avro schema")
        return None


class _BadRows:
    """Reports the first bad rows on stderr, counts all of them by reason."""

    def __init__(self, unit: str, limit: int = _SHOWN_BAD_ROWS) -> None:
        self.unit = unit
        self.limit = limit
        self.reasons: dict[str, int] = {}

    def add(self, row: Rejected, clear: Callable[[], None]) -> None:
        total = self.total
        self.reasons[row.what] = self.reasons.get(row.what, 0) + 1
        if total < self.limit:
            clear()
            print(f"{self.unit} {row.line}: {row.reason}", file=sys.stderr)

    @property
    def total(self) -> int:
        return sum(self.reasons.values())

    def summary(self) -> str:
        """``2 missing customer_id, 1 amount: not a number``, most frequent first."""
        ordered = sorted(self.reasons.items(), key=lambda kv: (-kv[1], kv[0]))
        return ", ".join(f"{n:,} {reason}" for reason, n in ordered)


def _plural(n: int, unit: str) -> str:
    return f"{n:,} {unit}{'' if n == 1 else 's'}"


def main(cfg: Config, args: argparse.Namespace) -> int:
    """Run ``cvm replay``: check every row, then publish the good ones when at most ``--max-bad`` are bad."""
    started = time.monotonic()
    max_bad = getattr(args, "max_bad", 0)
    if max_bad < 0:
        raise CvmError(f"--max-bad {max_bad}: must be 0 or more")
    source = HistoryFile(
        args.file, args.format, args.type, parse_mapping(args.map), args.time_format, cfg.base_currency
    )
    check = RowCheck(cfg)
    publisher = Publisher(cfg, rate=args.rate)
    name, unit = source.path.name, source.unit
    bad = _BadRows(unit)
    refused: set[int] = set()  # lines of parsed rows the check refused (beyond --max-bad nothing is published)
    rows = 0
    with StopSignals() as stop:
        progress = Progress(f"cvm replay: checking {name}")
        for row in source:  # first pass: every row checked, nothing published
            rows += 1
            if not rows & 511:
                progress.update(rows, source.position / max(source.size, 1))
                if stop.requested:
                    break
            rejected = row if isinstance(row, Rejected) else check(row)
            if rejected is not None:
                bad.add(rejected, progress.close)
                if isinstance(row, Parsed) and len(refused) <= max_bad:
                    refused.add(row.line)
        progress.close()
        if stop.requested:
            raise CvmError(f"stopped while checking {name}: nothing published")
        if bad.total > bad.limit:
            print(f"... and {bad.total - bad.limit:,} more bad {unit}s", file=sys.stderr)
        if bad.total:
            print(f"cvm replay: {_plural(bad.total, 'bad ' + unit)} of {rows:,} in {name}: {bad.summary()}",
                  file=sys.stderr)  # fmt: skip
        if bad.total > max_bad:
            raise CvmError(
                f"{_plural(bad.total, 'bad ' + unit)} in {name}, more than --max-bad {max_bad}: nothing published; "
                f"fix the file, or skip them with --max-bad {bad.total}"
            )
        if bad.total == rows:
            every = f" ({_plural(rows, unit)}, all bad)" if rows else ""
            raise CvmError(f"nothing published: {name} holds no event{every}")
        progress = Progress("cvm replay")
        seen = 0
        for row in source:  # second pass: the good rows published, in file order
            seen += 1
            if not seen & 511:
                progress.update(publisher.published, source.position / max(source.size, 1))
                if stop.requested:
                    break
            if isinstance(row, Parsed) and row.line not in refused:  # checked in the first pass
                publisher.publish(row.kind, row.record)
        progress.close()
        publisher.flush()
    elapsed = time.monotonic() - started
    skipped = f", skipped {_plural(bad.total, 'bad ' + unit)}" if bad.total else ""
    print(
        f"cvm replay: published {publisher.published:,} ({format_counts(publisher.counts)}){skipped} "
        f"from {name} to {cfg.bootstrap} in {elapsed:.1f}s",
        file=sys.stderr,
    )
    if stop.requested:
        raise CvmError(
            f"stopped after publishing {publisher.published:,} events of {name}: replay it again to publish the rest "
            "(events already published count once)"
        )
    return 0
