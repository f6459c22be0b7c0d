"""``cvm backtest`` end to end: a simulated history replayed through its own private stack (broker, sink, learner,
worker), the figures printed against the truth and against what cvm observed, the data kept for the dashboard, and
nothing posted to a webhook however the environment is configured."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from cvm.replay_file import HistoryFile, Parsed

pytestmark = pytest.mark.integration


def _cvm(*argv: str, env: dict[str, str], timeout: float = 300) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "cvm.cli", *argv], env=env, capture_output=True, text=True, timeout=timeout
    )


@pytest.fixture
def posted() -> Iterator[tuple[str, list[bytes]]]:
    """A webhook that records what is posted to it."""
    bodies: list[bytes] = []

    class Handler(BaseHTTPRequestHandler):
        def log_message(self, format: str, *args: Any) -> None:
            pass

        def do_POST(self) -> None:  # noqa: N802 - stdlib name
            bodies.append(self.rfile.read(int(self.headers["Content-Length"])))
            self.send_response(200)
            self.send_header("Content-Length", "0")
            self.end_headers()

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}/hook", bodies
    server.shutdown()
    server.server_close()


def test_a_backtest_prints_the_alert_and_churn_figures_of_a_replay(
    tmp_path: Path, posted: tuple[str, list[bytes]]
) -> None:
    url, bodies = posted
    env = {k: v for k, v in os.environ.items() if not k.startswith("CVM_")}
    env.update(
        CVM_DATA_DIR=str(tmp_path / "data"),
        CVM_MODEL_KEY=os.environ["CVM_MODEL_KEY"],
        CVM_ALERT_WEBHOOK_URL=url,  # a deployment's setting: the backtest must not use it
        CVM_ALERT_WEBHOOK_MAX_AGE_DAYS="0",
    )
    history, truth = tmp_path / "h.jsonl", tmp_path / "t.jsonl"
    made = _cvm(
        "simulate", "--customers", "300", "--days", "200", "--seed", "3", "--out", str(history), "--truth", str(truth),
        env=env,
    )  # fmt: skip
    assert made.returncode == 0, made.stderr
    keep = tmp_path / "kept"
    run = _cvm("backtest", str(history), "--truth", str(truth), "--json", "--keep", str(keep), env=env)
    assert run.returncode == 0, run.stderr[-3000:]
    fig = json.loads(run.stdout)

    events = sum(isinstance(row, Parsed) for row in HistoryFile(history))
    assert fig["events"] == events and fig["customers"] == len(truth.read_text().splitlines()) == 300
    assert fig["basis"].startswith("truth") and fig["observed"]["basis"].startswith("observed")
    assert 0 < fig["base_rate"] < 1 and fig["leavers_in_window"] > 10
    at_risk = fig["rules"]["high_value_at_risk"]
    assert at_risk["alerts"] > 0 and 0 <= at_risk["precision"] <= 1 and at_risk["leavers"] > 0
    assert at_risk["lift"] == pytest.approx(at_risk["precision"] / fig["base_rate"])
    for name in ("churn_probability", "churn_probability_60d", "hiatus (silence / own gap)", "BG/NBD 1 - P(alive)"):
        assert 0.3 < fig["auc"][name]["30d"] < 1, name  # every score was there at the checkpoints
    assert 0 <= fig["ece"]["churn_probability vs leaving within 30 d"] < 1
    assert set(fig["targets"]) and all(isinstance(t["met"], bool) for t in fig["targets"].values())
    assert fig["observed"]["rules"]["high_value_at_risk"]["alerts"] == at_risk["alerts"]  # the same, judged twice
    assert "cvm replay: published" in run.stderr
    assert bodies == []  # a backtest posts nothing, whatever CVM_ALERT_WEBHOOK_URL says

    # The kept ClickHouse is the backtest's: its alerts and their outcomes, for `cvm sink` and the dashboard.
    kept = {k: v for k, v in env.items() if k != "CVM_DATA_DIR"} | {"CVM_DATA_DIR": str(keep)}
    window = fig["window"]
    query = (
        "SELECT count() AS n, countIf(outcome != 'pending') AS known FROM cvm.alert_outcomes(silence_days = 75, "
        f"grace_days = 30, horizon_days = 90) WHERE rule = 'high_value_at_risk' AND alert_ms BETWEEN "
        f"{window['start_ms']} AND {window['end_ms']}"
    )
    found = _cvm("sql", query, "--format", "json", env=kept, timeout=120)
    assert found.returncode == 0, found.stderr
    [row] = json.loads(found.stdout)
    assert int(row["n"]) == at_risk["alerts"] and int(row["known"]) > 0

    text = _cvm("backtest", str(history), "--keep", str(keep), env=env)  # --keep refuses a used directory
    assert text.returncode == 1 and text.stderr.count("\n") == 1 and "already holds a ClickHouse" in text.stderr
    assert math.isfinite(fig["seconds"])


@pytest.mark.parametrize(
    ("argv", "says"),
    [
        (["nowhere.jsonl"], "no such file"),
        (["{history}", "--truth", "{history}"], "not a `cvm simulate --truth` file"),
    ],
)
def test_a_backtest_that_cannot_run_says_why_on_one_line(tmp_path: Path, argv: list[str], says: str) -> None:
    history = tmp_path / "h.jsonl"
    history.write_text(
        '{"type":"transactions","event_id":"e1","customer_id":"c1","event_time":"2025-01-01T00:00:00Z"}\n'
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith("CVM_")} | {"CVM_DATA_DIR": str(tmp_path / "d")}
    run = _cvm("backtest", *[a.format(history=history) for a in argv], env=env, timeout=60)
    assert run.returncode == 1 and run.stdout == ""
    assert run.stderr.count("\n") == 1 and says in run.stderr, run.stderr
