"""Issue 12's acceptance path on the real stack (Tansu, sink on chDB, learner, worker): risk moves with time, and a
replay is a backtest.

A simulated history is replayed twice into two fresh deployments: once at full speed with the default batches, once
at 2,000 events/s with batches of 500. Once each stream is idle, every customer with a purchase carries P(alive), a
CLV and a churn probability as of the end of the history; silent customers got ``p_alive_drop`` alerts; and the two
runs raised the same alerts (same episodes, same figures) and left the same ``customers FINAL`` rows, every column but
the write time. ``cvm verify`` is exact both times.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Any

import pytest

from cvm.config import Config
from cvm.events import parse_time
from tests.conftest import free_port, spawn, stop
from tests.test_e2e import sql, wait_http

pytestmark = pytest.mark.integration
DAY = 86_400_000


def _cvm(cfg: Config, *argv: str, timeout: float = 600) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, **cfg.to_env()}
    return subprocess.run(
        [sys.executable, "-m", "cvm.cli", *argv], env=env, capture_output=True, text=True, timeout=timeout
    )


def _own(cfg: Config, tmp: Path, name: str, **changes: Any) -> Config:
    tag = uuid.uuid4().hex[:8]
    return cfg.replace(
        topic_prefix=f"t{tag}-",
        app_id=f"cvm-{tag}",
        data_dir=str(tmp / name),
        clickhouse_database=f"cvm_{tag}",
        http_port=free_port(),
        idle_partition_s=3.0,
        **changes,
    )


def _settled(cfg: Config, end_ms: int, timeout: float = 300) -> None:
    """Wait until every customer's latest score holds as of the end of the history (the idle scoring came)."""
    db = cfg.clickhouse_database
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        rows = sql(
            cfg,
            f"SELECT count() AS n, countIf(toUnixTimestamp64Milli(as_of) >= {end_ms - int(cfg.tick_s * 1000)}) AS fresh"
            f" FROM {db}.customers FINAL",
        )
        now = (int(rows[0]["n"]), int(rows[0]["fresh"]))
        if now[0] and now[0] == now[1] and now == last:
            return
        last = now
        time.sleep(3)
    raise AssertionError(f"the stream never settled at the end of the history: {last}")


def _run(cfg: Config, tmp: Path, history: Path, end_ms: int, *replay: str) -> dict[str, Any]:
    procs = [spawn(cfg, "sink", log=tmp / f"{cfg.data_dir}-sink.log")]
    try:
        wait_http(cfg)
        procs.append(spawn(cfg, "learner", log=tmp / "learner.log"))
        time.sleep(2)  # the learner says it is here before the worker's first tick (cvm up waits for it too)
        procs.append(spawn(cfg, "worker", "--id", "w1", log=tmp / "worker.log"))
        done = _cvm(cfg, "replay", str(history), *replay)
        assert done.returncode == 0, done.stderr
        _settled(cfg, end_ms)
        checked = _cvm(cfg, "verify", str(history), "--wait", "120")
        assert checked.returncode == 0, checked.stdout + checked.stderr
        db = cfg.clickhouse_database
        customers = sql(cfg, f"SELECT * EXCEPT updated_at FROM {db}.customers FINAL ORDER BY customer_id")
        alerts = sql(cfg, f"SELECT * FROM {db}.alerts FINAL ORDER BY episode")
        return {"customers": customers, "alerts": alerts}
    finally:
        for proc in reversed(procs):
            stop(proc)


def test_a_replay_at_any_pace_raises_the_same_alerts_and_ends_with_every_customer_scored_as_of_its_end(
    cfg: Config, tmp_path: Path
) -> None:
    history, truth = tmp_path / "h.jsonl", tmp_path / "truth.jsonl"
    gen = _cvm(
        cfg, "simulate", "--customers", "400", "--days", "240", "--seed", "12", "--out", str(history),
        "--truth", str(truth),
    )  # fmt: skip
    assert gen.returncode == 0, gen.stderr
    end_ms = max(parse_time(json.loads(line)["event_time"]) for line in history.read_text().splitlines())
    fast = _run(_own(cfg, tmp_path, "fast"), tmp_path, history, end_ms)
    slow = _run(_own(cfg, tmp_path, "slow", worker_batch=500), tmp_path, history, end_ms, "--rate", "2000")

    buyers = [c for c in fast["customers"] if int(c["frequency"]) > 0]
    assert buyers and all(c["p_alive"] is not None and c["clv"] is not None for c in buyers)
    assert all(c["churn_probability"] is not None for c in buyers), "a churn model by the end of 240 days"
    drops = {a["customer_id"] for a in fast["alerts"] if a["rule"] == "p_alive_drop"}
    assert drops, "customers who went silent lose P(alive): p_alive_drop alerts"

    assert [a["episode"] for a in slow["alerts"]] == [a["episode"] for a in fast["alerts"]]
    assert slow["alerts"] == fast["alerts"]
    assert len(slow["customers"]) == len(fast["customers"])
    for a, b in zip(fast["customers"], slow["customers"], strict=True):
        assert a == b, {k: (a[k], b[k]) for k in a if a[k] != b[k]}
