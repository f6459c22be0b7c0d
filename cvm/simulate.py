"""``cvm simulate``: realistic upstream traffic — a history in event time, then live events — or a JSON-lines file.

This module is the command: it asks the model (:mod:`cvm.simulation`: customers' lives, drawn from the segments
and phases of :mod:`cvm.simulation_model`, and the truth of who churned) for events and delivers them: written to
``--out`` as JSON lines, or published to Kafka, rate-limited, first the history and then live traffic on the wall
clock, with the ``--truth`` file beside. It is separate from the model so that the model stays pure (no Kafka, no
wall clock) and the delivery can change without touching it.

Live mode
---------
After the history, unless ``--out`` is given or ``--days`` is given without ``--duration``, the same customers go
on living, new ones arrive at the history's acquisition rate, and events carry the wall clock as their time (after
a history that ended more than a day ago, its end plus the wall-clock time elapsed since live traffic began). Model
time runs :data:`LIVE_SPEEDUP` times faster than the wall clock (one model hour a second) so that a live dashboard
sees traffic and a few churns within minutes; the spacing of a payment's due and paid dates around its event time
is kept as modelled. ``--rate`` caps the events per second; ``--duration`` (counted from the start of the command;
the history is always published whole) and SIGTERM/SIGINT end it.

``--published N`` draws the first ``N`` events this simulation would publish without publishing them, then publishes
what follows: the rest of the history, then live events, whose clock starts at the first one published. ``cvm up``
runs the simulator so when ClickHouse already holds what an earlier run published (a second start, same
``--customers``, ``--days`` and ``--seed``): publishing a new history would give the same customers a second,
overlapping one (their transactions doubled), and starting live traffic over would publish the earlier run's live
events again, restamped (the customers that arrived live would arrive a second time).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
from collections.abc import Callable, Iterable, Iterator
from typing import Any

from cvm.collector import settled
from cvm.config import EVENT_TOPICS, Config
from cvm.events import TIME_FIELDS, iso, parse_time
from cvm.exceptions import CvmError
from cvm.publish import Progress, Publisher, StopSignals, format_counts
from cvm.simulation import ANCHOR_MS, DAY_MS, HOUR_MS, Simulation

__all__ = ["LIVE_SPEEDUP", "main", "write_jsonl"]

#: Model seconds per wall-clock second in live mode.
LIVE_SPEEDUP = 3600.0


_DAY_TEXT: dict[int, str] = {}


def _iso(ms: int) -> str:
    """The text of :func:`cvm.events.iso`, three times faster: the date part is formatted once per day.

    >>> _iso(1_700_000_000_123) == iso(1_700_000_000_123)
    True
    """
    day, rest = divmod(ms, DAY_MS)
    date = _DAY_TEXT.get(day)
    if date is None:
        if len(_DAY_TEXT) > 100_000:
            _DAY_TEXT.clear()
        date = _DAY_TEXT[day] = iso(day * DAY_MS)[:11]
    hours, rest = divmod(rest, HOUR_MS)
    minutes, rest = divmod(rest, 60_000)
    seconds, millis = divmod(rest, 1000)
    return f"{date}{hours:02d}:{minutes:02d}:{seconds:02d}.{millis:03d}Z"


def _to_json(kind: str, record: dict[str, Any]) -> dict[str, Any]:
    """What :func:`cvm.events.to_json` returns, key for key (tested), faster: files are written at generation speed."""
    out: dict[str, Any] = {"type": kind}
    out.update(record)
    for name in TIME_FIELDS[kind]:
        value = out.get(name)
        if value is not None:
            out[name] = _iso(value)
    return out


def _compact_encoder() -> Callable[[Any], str]:
    """``json.dumps(obj, separators=(",", ":"), ensure_ascii=False)``, with the C encoder built once, not per call."""
    encoder = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False)
    make = getattr(json.encoder, "c_make_encoder", None)
    if make is None:  # no C accelerator: the documented, slower path
        return encoder.encode
    chunks = make(None, encoder.default, json.encoder.encode_basestring, None, ":", ",", False, False, True)
    join = "".join
    return lambda obj: join(chunks(obj, 0))


def write_jsonl(
    events: Iterable[tuple[str, dict[str, Any]]], path: str, progress: Progress | None = None
) -> dict[str, int]:
    """Write events as JSON lines in the form of :func:`cvm.events.to_json`; return the count per kind."""
    counts = dict.fromkeys(EVENT_TOPICS, 0)
    dumps = _compact_encoder()
    done = 0
    with open(path, "w", encoding="utf-8", buffering=1 << 20) as fh:
        write = fh.write
        for kind, rec in events:
            write(dumps(_to_json(kind, rec)) + "\n")
            counts[kind] += 1
            done += 1
            if progress is not None and not done & 1023:
                progress.update(done)
    return counts


def _write_truth(path: str, lines: list[dict[str, Any]]) -> None:
    tmp = f"{path}.tmp"
    with open(tmp, "w", encoding="utf-8") as fh:
        for line in lines:
            fh.write(json.dumps(line, separators=(",", ":")) + "\n")
    os.replace(tmp, path)


def _end_ms(args: argparse.Namespace) -> int:
    if args.end:
        try:
            return parse_time(args.end)
        except ValueError:
            raise CvmError(f"--end {args.end!r} is not an ISO-8601 time: e.g. 2026-01-01T00:00:00Z") from None
    if args.out:
        return ANCHOR_MS
    return int(time.time()) * 1000


def _in_currency(events: Iterator[tuple[str, dict[str, Any]]], currency: str) -> Iterator[tuple[str, dict[str, Any]]]:
    """The simulated amounts are money of the base currency (``CVM_BASE_CURRENCY``): say so on each transaction."""
    if currency == "EUR":  # what the model writes
        yield from events
        return
    for kind, rec in events:
        if kind == "transactions":
            rec["currency"] = currency
        yield kind, rec


def _check_span(cfg: Config, sim: Simulation) -> None:
    """Refuse a history the workers would only send to the dead letters: before the floor, or in the future."""
    if sim.start_ms <= max(cfg.min_event_time_ms, 0):
        floor = iso(cfg.min_event_time_ms)
        raise CvmError(
            f"the history would start on {iso(sim.start_ms)}, not after CVM_MIN_EVENT_TIME ({floor}): "
            "give a later --end or fewer --days"
        )
    if sim.end_ms > time.time() * 1000 + 7 * DAY_MS:
        raise CvmError(f"--end {iso(sim.end_ms)} is more than 7 days ahead: events from the future are refused")


def _goes_live(args: argparse.Namespace) -> bool:
    """Live events follow the history unless writing a file, or ``--days`` was given without ``--duration``.

    >>> ns = argparse.Namespace
    >>> _goes_live(ns(out=None, days=None, duration=None)), _goes_live(ns(out=None, days=30, duration=None))
    (True, False)
    >>> _goes_live(ns(out=None, days=30, duration=60.0)), _goes_live(ns(out="x.jsonl", days=None, duration=60.0))
    (True, False)
    """
    return not args.out and (args.days is None or args.duration is not None)


def main(cfg: Config, args: argparse.Namespace) -> int:
    """Run ``cvm simulate``: write ``--out``, or publish the history and then (maybe) live events."""
    started = time.monotonic()
    days = args.days or 180
    live = _goes_live(args)
    published = getattr(args, "published", 0) or 0  # callers building their own arguments may leave it out
    if published < 0:
        raise CvmError(f"--published {published}: a count of events, 0 or more")
    if published and args.out:
        raise CvmError("--published skips events published before: it does not go with --out")
    sim = Simulation(args.customers, days, args.seed, _end_ms(args))
    _check_span(cfg, sim)
    settled()  # its customers live until the end
    progress = Progress("cvm simulate")
    time_of: Callable[[int], int] | None = None
    with StopSignals() as stop:
        if args.out:
            counts = write_jsonl(_in_currency(sim.history(), cfg.base_currency), args.out, progress)
        else:
            pub = Publisher(cfg, rate=args.rate)
            counts = pub.counts
            span = max(1, sim.end_ms - sim.start_ms)
            drawn = 0
            for kind, rec in _in_currency(sim.history(), cfg.base_currency):
                if drawn < published:  # the lives up to now, already published by an earlier run: drawn, not sent
                    drawn += 1
                    if not drawn & 1023 and stop.requested:
                        break
                    continue
                pub.publish(kind, rec)
                if not pub.published & 1023:
                    progress.update(pub.published, (rec["event_time"] - sim.start_ms) / span, "history")
                    if stop.requested:
                        break
            if published:
                print(f"cvm simulate: {drawn:,} events of history drawn, not published (--published)", file=sys.stderr)
            if args.truth:
                _write_truth(args.truth, sim.truth())
            if live and not stop.requested:
                pub.flush()
                deadline = started + (args.duration or math.inf)
                skip = max(0, published - drawn) if published else None  # of the live events
                time_of = _run_live(sim, pub, progress, stop, deadline, cfg.base_currency, skip)
            progress.close()
            pub.flush()
    progress.close()
    if args.truth:
        _write_truth(args.truth, sim.truth(time_of))
    elapsed = time.monotonic() - started
    total = sum(counts.values())
    where = f"to {args.out}" if args.out else f"to {cfg.bootstrap}"
    print(
        f"cvm simulate: {total:,} events ({format_counts(counts)}) for {len(sim.customers):,} customers {where} "
        f"in {elapsed:.1f}s ({total / max(elapsed, 1e-9):,.0f}/s)",
        file=sys.stderr,
    )
    return 0


def _run_live(
    sim: Simulation,
    pub: Publisher,
    progress: Progress,
    stop: StopSignals,
    deadline: float,
    currency: str = "EUR",
    skip: int | None = None,
) -> Callable[[int], int]:
    """Publish live events stamped with the wall clock until the deadline or a stop signal.

    A history that ended in the past (``--end 1998-06-30``, more than a day ago) goes on from its end instead: live
    events are stamped with the time elapsed since live traffic started, added to the history's end, so event time
    stays continuous (the customers do not fall silent for the years between). Returns the map from model time to
    published time, for the truth file.

    ``skip``: an earlier run published the history and the first ``skip`` live events (``--published``): they are
    drawn without being published, and live traffic goes on with the wall clock from the next one, however long
    ago the earlier run stopped (the customers were silent since, as a shop that was closed).
    """
    live = sim.live()
    end = origin = sim.end_ms
    for _ in range(skip or 0):  # unbounded: next() always has one
        origin = next(live)[0]
    now = int(time.time() * 1000)
    wall0 = max(now, end + 1)
    shift = 0 if skip is not None or end >= now - DAY_MS else wall0 - (end + 1)  # stamps = the wall clock - shift

    def time_of(t: int) -> int:
        return t if t <= end else wall0 - shift + int((t - origin) / LIVE_SPEEDUP)

    last = wall0 - shift
    n = 0
    for t, kind, rec in live:
        due = time_of(t) + shift  # on the wall clock
        while True:
            if stop.requested or time.monotonic() >= deadline:
                return time_of
            ahead = due / 1000 - time.time()
            if ahead <= 0:
                break
            pub.wait(min(ahead, 0.25, max(0.0, deadline - time.monotonic())))
            progress.update(pub.published, None, "live")
        stamp = max(last, int(time.time() * 1000) - shift)
        last = stamp
        moved = stamp - t
        for name in TIME_FIELDS[kind]:
            if rec.get(name) is not None:
                rec[name] += moved
        if kind == "transactions":
            rec["currency"] = currency
        pub.publish(kind, rec)
        n += 1
        if not n & 63:
            progress.update(pub.published, None, "live")
    return time_of
