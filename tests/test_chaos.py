"""Chaos scenarios: real Tansu, real Faust workers (``cvm worker``), a real sink on chDB (``cvm sink``); processes
are killed, scaled and restarted mid-stream, and every scenario ends with the verifier's exact match.

Each scenario replays a small simulated history (a few thousand events) rate-limited, so that the chaos happens
while events flow; the timeline of what was done when is in every failure message (``Stack.story``).
"""

from __future__ import annotations

import base64
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest

from cvm.codec import Codec
from cvm.config import Config
from cvm.events import to_json
from cvm.kafka import make_producer
from cvm.simulate import write_jsonl
from cvm.simulation import ANCHOR_MS, generate
from tests.chaos_helpers import Stack
from tests.conftest import free_port, spawn, stop

pytestmark = pytest.mark.integration
DAY = 86_400_000


def history(path: Path, customers: int, days: int, seed: int) -> Path:
    write_jsonl(generate(customers, days, seed=seed, end_ms=ANCHOR_MS), str(path))
    return path


@pytest.fixture
def stack(cfg: Config, tmp_path: Path) -> Iterator[Stack]:
    s = Stack(cfg, tmp_path)
    try:
        yield s
    finally:
        s.close()


def assert_exact(stack: Stack, path: Path, **options: Any) -> None:
    report = stack.verify(path, **options)
    assert report.ok, report.text() + "\n" + stack.story()


def assert_replay_running(stack: Stack) -> None:
    assert stack.procs["replay"].poll() is None, "the replay ended before the chaos: slow it down\n" + stack.story()


def poison(cfg: Config) -> list[tuple[bytes, str, str]]:
    """Poison records for the transactions topic: (value, error class, words of the error)."""
    codec = Codec()
    now = int(time.time() * 1000)
    tx = {"event_id": "poison", "customer_id": "c-poison", "event_time": now - DAY, "amount": 10.0}
    contact = {"event_id": "poison-c", "customer_id": "c-poison", "event_time": now - DAY}
    contact.update(channel="phone", reason="complaint")
    return [
        (b"\xde\xad\xbe\xef not avro at all", "DecodeError", "magic byte"),
        (b"\x00\x00\x00\x7f\xff\x02\x04", "DecodeError", "unknown schema id 32767"),
        (codec.encode("contacts", contact), "DecodeError", "a contacts record on the transactions topic"),
        (codec.encode("transactions", dict(tx, customer_id="")), "InvalidEvent", "missing customer_id"),
        (codec.encode("transactions", dict(tx, amount=float("nan"))), "InvalidEvent", "amount is nan"),
        (codec.encode("transactions", dict(tx, event_time=now + 400 * DAY)), "InvalidEvent", "in the future"),
        (codec.encode("transactions", dict(tx, event_time=now // 1000)), "InvalidEvent", "seconds sent as milli"),
    ]


def publish_poison(cfg: Config, records: list[tuple[bytes, str, str]]) -> None:
    producer = make_producer(cfg)
    for value, _, _ in records:
        producer.produce(cfg.topic("transactions"), key=b"c-poison", value=value)
    assert producer.flush(10) == 0


def assert_dead_letters(stack: Stack, records: list[tuple[bytes, str, str]]) -> None:
    db = stack.cfg.clickhouse_database
    rows = stack.sql(
        f"SELECT topic, partition, offset, any(key) AS key, any(raw) AS raw, any(error_class) AS error_class, "
        f"any(error) AS error FROM {db}.dead_letters GROUP BY topic, partition, offset ORDER BY offset"
    )
    assert len(rows) == len(records), rows
    for row, (value, error_class, words) in zip(rows, records, strict=True):
        assert row["topic"] == stack.cfg.topic("transactions") and row["key"] == "c-poison", row
        assert base64.b64decode(row["raw"]) == value, row
        assert row["error_class"] == error_class and words in row["error"], row


# --- the scenarios ---------------------------------------------------------------------------------------------


def test_sigkill_a_worker_twice_mid_stream(stack: Stack, tmp_path: Path) -> None:
    path = history(tmp_path / "h.jsonl", 300, 120, seed=21)  # 3,681 events
    stack.sink()
    stack.worker("w1")
    stack.wait_assigned("w1")
    stack.replay(path, rate=120)  # ~30 s of publishing: a restart takes ~10 s (session timeout, then a join)
    for round_ in range(2):
        if round_:
            stack.wait_assigned("w1")
        stack.wait_scores(stack.scores() + 50)
        assert_replay_running(stack)
        stack.kill("w1", signal.SIGKILL)
        stack.worker("w1")
    stack.finish("replay")
    assert_exact(stack, path)
    assert not stack.problems("w1"), stack.problems("w1")


def test_scale_workers_1_2_1_during_a_replay(stack: Stack, tmp_path: Path) -> None:
    """w2 joins (w1 gives up half of the partitions, w2 recovers their table from the changelog), then leaves
    (w1 gets them back, on top of the stale local store it kept)."""
    path = history(tmp_path / "h.jsonl", 300, 120, seed=22)
    stack.sink()
    stack.worker("w1")
    stack.wait_assigned("w1", partitions=4)
    stack.replay(path, rate=120)
    stack.wait_scores(50)
    stack.worker("w2")
    stack.wait_assigned("w2")
    stack.wait_assigned("w1", partitions=2, after=1)
    stack.wait_scores(stack.scores() + 50)
    assert_replay_running(stack)
    assert stack.kill("w2", signal.SIGTERM) == 0, stack.tail("w2")
    stack.wait_assigned("w1", partitions=4, after=2)
    stack.finish("replay")
    assert_exact(stack, path)
    assert not stack.problems("w1", "w2"), stack.problems("w1", "w2")


def test_restart_the_sink_mid_stream(stack: Stack, tmp_path: Path) -> None:
    """SIGKILL (batches half written: re-read, re-inserted, collapsed by the replacing tables) and SIGTERM."""
    path = history(tmp_path / "h.jsonl", 300, 120, seed=23)
    stack.sink()
    stack.worker("w1")
    stack.wait_assigned("w1")
    stack.replay(path, rate=150)
    stack.wait_scores(50)
    assert_replay_running(stack)
    stack.kill("sink", signal.SIGKILL)
    stack.sink()
    stack.wait_scores(stack.scores() + 50)
    assert_replay_running(stack)
    assert stack.kill("sink", signal.SIGTERM) == 0, stack.tail("sink")
    stack.sink()
    stack.finish("replay")
    assert_exact(stack, path)
    assert not stack.problems("sink", "w1"), stack.problems("sink", "w1")


def test_replay_the_same_file_twice(stack: Stack, tmp_path: Path) -> None:
    """The second replay publishes every event again with new offsets: upstream duplicates inside the allowed
    lateness are ignored, older ones are late; no total moves."""
    path = history(tmp_path / "h.jsonl", 200, 90, seed=24)
    stack.sink()
    stack.worker("w1")
    stack.replay(path)
    stack.finish("replay")
    assert_exact(stack, path)
    stack.replay(path, name="replay-again")
    stack.finish("replay-again")
    assert_exact(stack, path, replays=2)
    # With the sink stopped, `cvm verify` opens the embedded ClickHouse itself.
    assert stack.kill("sink", signal.SIGTERM) == 0, stack.tail("sink")
    env = dict(os.environ, **stack.cfg.to_env())
    argv = [sys.executable, "-m", "cvm.cli", "verify", str(path), "--replays", "2"]
    done = subprocess.run(argv, env=env, capture_output=True, text=True)
    assert done.returncode == 0 and done.stdout.rstrip().endswith("exact match"), done.stdout + done.stderr
    done = subprocess.run(argv[:-1] + ["1"], env=env, capture_output=True, text=True)  # it was replayed twice
    assert done.returncode == 1 and "NOT an exact match" in done.stdout, done.stdout + done.stderr
    assert "  late_events: " in done.stdout and "customer " not in done.stdout, done.stdout  # totals unchanged


def test_poison_records_go_to_dead_letters_and_the_worker_keeps_going(stack: Stack, tmp_path: Path) -> None:
    path = history(tmp_path / "h.jsonl", 200, 90, seed=25)
    records = poison(stack.cfg)
    stack.sink()
    stack.worker("w1")
    publish_poison(stack.cfg, records)  # first in their partition: every good record there comes after them
    stack.replay(path)
    stack.finish("replay")
    assert_exact(stack, path, dead_letters=len(records))
    assert_dead_letters(stack, records)
    assert stack.procs["w1"].poll() is None, stack.tail("w1")


def _tx(cid: str, eid: str, t: int, amount: float) -> dict[str, Any]:
    return to_json("transactions", {"event_id": eid, "customer_id": cid, "event_time": t, "amount": amount})


def _contact(cid: str, eid: str, t: int) -> dict[str, Any]:
    rec = {"event_id": eid, "customer_id": cid, "event_time": t, "channel": "chat", "reason": "billing"}
    return to_json("contacts", rec)


def disorder(path: Path) -> Path:
    """Per customer: 20 daily purchases, then one 1.5 days behind (counted), one 5 days behind (late), a contact
    14 days behind the purchases (counted: lateness is per topic) and one 4 days behind it (late), a duplicate
    inside the window (ignored) and one of an old purchase (late)."""
    t0 = ANCHOR_MS - 60 * DAY
    lines = []
    for c in range(40):
        cid, base = f"o{c:03d}", t0 + c * 60_000
        lines += [_tx(cid, f"{cid}-t{d}", base + d * DAY, round(10 + d * 1.11 + c, 2)) for d in range(20)]
        lines += [
            _tx(cid, f"{cid}-ooo", base + 17 * DAY + DAY // 2, 7.77),
            _tx(cid, f"{cid}-late", base + 14 * DAY, 999.99),
            _contact(cid, f"{cid}-k1", base + 5 * DAY),
            _contact(cid, f"{cid}-k0", base + 1 * DAY),
            _tx(cid, f"{cid}-t19", base + 19 * DAY, 12345.0),
            _tx(cid, f"{cid}-t2", base + 2 * DAY, 12345.0),
        ]
    path.write_text("".join(json.dumps(line) + "\n" for line in lines))
    return path


def test_out_of_order_and_too_late_events(stack: Stack, tmp_path: Path) -> None:
    path = disorder(tmp_path / "disorder.jsonl")
    stack.sink()
    stack.worker("w1")
    stack.replay(path)
    stack.finish("replay")
    report = stack.verify(path)
    assert report.ok, report.text() + "\n" + stack.story()
    assert report.late == (120, 120) and report.outcomes == {"counted": 40 * 22, "late": 120, "duplicate": 40}


def test_graceful_sigterm_of_a_worker_hands_over_at_once(stack: Stack, tmp_path: Path) -> None:
    """SIGTERM: the worker finishes its batch, commits and leaves the group, so the other one takes over its
    partitions without waiting for the session timeout (measured: see the timeline)."""
    path = history(tmp_path / "h.jsonl", 300, 120, seed=27)
    stack.sink()
    stack.worker("w1")
    stack.wait_assigned("w1")
    stack.worker("w2")
    stack.wait_assigned("w2")
    stack.replay(path, rate=150)
    stack.wait_scores(100)
    assert_replay_running(stack)
    sent = datetime.now()
    assert stack.kill("w1", signal.SIGTERM) == 0, stack.tail("w1")
    assert "left the group" in stack.logs["w1"][-1].read_text(), stack.tail("w1")
    before = len(stack.assignments("w2"))
    stack.wait_assigned("w2", partitions=4, after=before - 1)
    taken = stack.assignments("w2")[-1][0]
    stack.note(f"w2 holds every partition {(taken - sent).total_seconds():.2f}s after the SIGTERM of w1")
    stack.finish("replay")
    assert_exact(stack, path)
    assert not stack.problems("w1", "w2"), stack.problems("w1", "w2")


def test_done_when_workers_killed_and_scaled_during_a_4000_eps_replay(cfg: Config, tmp_path: Path) -> None:
    """Issue 8's "done when": `cvm broker`, `cvm sink` and workers started separately; `cvm simulate --customers
    1000 --days 180 --seed 11` replayed at 4000 events/s while workers are SIGKILLed and scaled, plus 5 poison
    records on transactions; `cvm verify` then finds customers FINAL exactly equal to the file."""
    cfg = cfg.replace(broker_port=free_port())
    broker = spawn(cfg, "broker", log=tmp_path / "broker.log")
    stack = Stack(cfg, tmp_path)
    try:
        stack.wait(lambda: "Tansu listening" in (tmp_path / "broker.log").read_text(), 30, "cvm broker")
        path = tmp_path / "F.jsonl"
        env = dict(os.environ, **cfg.to_env())
        argv = [sys.executable, "-m", "cvm.cli", "simulate", "--customers", "1000", "--days", "180", "--seed", "11"]
        subprocess.run([*argv, "--out", str(path)], check=True, env=env, capture_output=True)
        stack.sink()
        stack.worker("w1")
        stack.worker("w2")
        stack.wait_assigned("w1")
        stack.wait_assigned("w2")
        stack.replay(path, rate=4000)
        stack.wait_scores(200)
        stack.kill("w1", signal.SIGKILL)
        stack.worker("w3")
        records = poison(cfg)[:5]
        publish_poison(cfg, records)
        stack.wait_assigned("w3")
        stack.worker("w4")  # 2 → 3 workers
        stack.wait_assigned("w4")
        stack.kill("w2", signal.SIGKILL)  # 3 → 2
        stack.finish("replay")
        verify = [sys.executable, "-m", "cvm.cli", "verify", str(path), "--dead-letters", "5", "--wait", "150"]
        done = subprocess.run([*verify, "--json"], env=env, capture_output=True, text=True)
        stack.note(f"cvm verify exited {done.returncode}")
        report = json.loads(done.stdout) if done.stdout else {}
        assert done.returncode == 0 and report.get("ok"), done.stdout + done.stderr + stack.story()
        assert report["dead_letters"] == [5, 5] and report["customers_found"] == report["customers_expected"] > 950
        assert_dead_letters(stack, records)
    finally:
        stack.close()
        stop(broker)
