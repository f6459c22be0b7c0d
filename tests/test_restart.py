"""Issue 14's scenario on real processes: half a history through ``cvm up --no-simulate``, the whole stack stopped
(Ctrl-C, or SIGKILL of every process, the broker included: its topics are gone either way), ``cvm up`` again on the
same data directory, the other half; then ``cvm verify`` on the whole file must be exact and the second run's model
metrics must be in ClickHouse. Before the restore, 432 of 593 customers were wrong and the second run's metrics
were dropped as duplicates."""

from __future__ import annotations

import json
import signal
import socket
import subprocess
import sys
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from cvm.broker import port_free, wait_port
from cvm.config import Config
from tests.chaos_helpers import Stack
from tests.conftest import free_port, spawn, stop
from tests.restart_helpers import Up, Webhook, history

pytestmark = pytest.mark.integration


@pytest.fixture
def webhook() -> Iterator[Webhook]:
    hook = Webhook()
    try:
        yield hook
    finally:
        hook.close()


@pytest.fixture
def up(cfg: Config, tmp_path: Path, webhook: Webhook) -> Iterator[Up]:
    # The history ends on 2026-01-01: its alerts are posted whatever their age (0), to see that none goes twice.
    cfg = cfg.replace(
        broker_port=free_port(), log_level="WARNING", alert_webhook_url=webhook.url, alert_webhook_max_age_days=0
    )
    stack = Up(cfg, tmp_path)
    try:
        yield stack
    finally:
        stack.close()


def halves(tmp: Path) -> tuple[Path, Path, Path]:
    """The issue's history: 600 customers over 240 days, and its first and second halves (by line)."""
    whole = history(tmp / "history.jsonl", 600, 240, seed=14)
    lines = whole.read_text().splitlines(keepends=True)
    first, second = tmp / "first.jsonl", tmp / "second.jsonl"
    first.write_text("".join(lines[: len(lines) // 2]))
    second.write_text("".join(lines[len(lines) // 2 :]))
    return whole, first, second


@pytest.mark.parametrize("stop", ["ctrl-c", "sigkill-everything"])
def test_a_stopped_stack_restarts_as_if_it_had_never_stopped(
    up: Up, webhook: Webhook, tmp_path: Path, stop: str
) -> None:
    whole, first, second = halves(tmp_path)
    assert "restor" not in up.start()  # nothing to restore in an empty ClickHouse
    up.replay(first)
    report = up.verify(first)
    assert report["ok"], report
    up.wait_metrics(0)  # the first run's model metrics are in (the learner publishes on its own schedule)
    if stop == "ctrl-c":
        up.ctrl_c()
    else:
        up.sigkill_all()
    posted = webhook.episodes()
    before = up.sql("SELECT count() AS n, max(toUnixTimestamp64Milli(time)) AS t FROM {db}.model_metrics")[0]
    customers = up.sql("SELECT count() AS n FROM {db}.customers FINAL")[0]["n"]
    assert before["n"] > 0 and customers == report["customers_expected"]

    said = up.start()
    restored = up.sql("SELECT state, events FROM {db}.epochs FINAL WHERE state = 'restored'")
    assert [r["events"] for r in restored] == [sum(report["published"].values())], said
    assert "cvm up: restored" in said and said.index("cvm up: restored") < said.index("cvm up: ready")
    report = up.verify(first, wait=0)  # the restore is complete when cvm up says ready
    assert report["ok"], report
    assert webhook.episodes() == posted  # the alerts the restore raised again were sent the first time

    up.replay(second)
    report = up.verify(whole)
    assert report["ok"] and report["customers_found"] == report["customers_expected"] > 550, report
    after = up.wait_metrics(before["t"])  # the second run's: learned from labels later than any of the first run
    assert after["t"] > before["t"], (before, after, up.logs())
    epochs = up.sql("SELECT epoch, state FROM {db}.epochs FINAL ORDER BY epoch")
    assert [e["state"] for e in epochs] == ["none", "restored"], epochs
    sent = webhook.episodes()
    assert posted and len(sent) == len(set(sent)), sent  # alerts were sent, none twice


def test_ctrl_c_right_after_a_replay_loses_nothing(up: Up, tmp_path: Path) -> None:
    """Ctrl-C while the workers are still folding: the sink reads the embedded broker's topics to their end before
    the broker stops, so every event published reaches ClickHouse, and the restore folds what the workers had not."""
    path = history(tmp_path / "history.jsonl", 2000, 120, seed=15)  # ~15,000 events
    up.start()
    up.replay(path)
    up.ctrl_c()
    counts = up.sql(
        "SELECT (SELECT count() FROM {db}.transactions FINAL) + (SELECT count() FROM {db}.contacts FINAL)"
        " + (SELECT count() FROM {db}.payments FINAL) AS n"
    )[0]["n"]
    up.start()
    report = up.verify(path, wait=0)
    assert report["ok"] and counts == sum(report["published"].values()), report


def test_a_restore_waits_for_the_workers_and_a_sink_killed_during_it_resumes(cfg: Config, tmp_path: Path) -> None:
    """Processes started one by one, as an operator would: the restore publishes the history at once, then waits for
    workers; a sink SIGKILLed meanwhile resumes the collection from the beginning when it comes back."""
    cfg = cfg.replace(broker_port=free_port())
    path = history(tmp_path / "history.jsonl", 300, 120, seed=16)
    for life in (1, 2):
        logs = tmp_path / f"life-{life}"
        logs.mkdir()
        broker = spawn(cfg, "broker", log=logs / "broker.log")
        stack = Stack(cfg, logs)
        try:
            stack.wait(lambda: "Tansu listening" in (logs / "broker.log").read_text(), 30, "cvm broker")  # noqa: B023
            stack.sink()
            if life == 1:
                stack.worker("w1")
                stack.procs["learner"] = spawn(cfg, "learner", log=logs / "learner.log")
                stack.replay(path)
                stack.finish("replay")
                assert stack.verify(path).ok
                continue
            stack.wait(lambda: restore_state(stack) == "folding", 60, "the restore to wait for workers")  # noqa: B023
            stack.kill("sink", signal.SIGKILL)
            stack.sink("sink-again")
            stack.worker("w1")
            stack.procs["learner"] = spawn(cfg, "learner", log=logs / "learner.log")
            stack.wait(lambda: restore_state(stack) == "done", 180, "the end of the restore")  # noqa: B023
            assert stack.verify(path, wait=0).ok
            epochs = stack.sql(f"SELECT state FROM {cfg.clickhouse_database}.epochs FINAL ORDER BY epoch")
            assert [e["state"] for e in epochs] == ["none", "restored"], epochs
        finally:
            stack.close()
            stop(broker)


def restore_state(stack: Stack) -> str:
    """The sink's restore state from /api/status ("" while it does not answer)."""
    url = f"http://127.0.0.1:{stack.cfg.http_port}/api/status"
    try:
        with urllib.request.urlopen(url, timeout=2) as resp:
            return str(((json.loads(resp.read()).get("writer") or {}).get("restore") or {}).get("state"))
    except OSError:
        return ""


def test_sigkill_of_everything_returns_once_the_brokers_port_is_free(cfg: Config, tmp_path: Path) -> None:
    """The broker's pid shows "Z" while its other threads still exit and hold its socket: ``sigkill_all`` must wait
    for the port itself, or the next ``cvm up`` finds it in use (CI failed so on 2026-12-05)."""
    for run in range(8):
        up = Up(cfg.replace(broker_port=free_port()), tmp_path)
        up.proc = subprocess.Popen(
            [sys.executable, "-m", "cvm.cli", "broker"],
            env=up.env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        assert wait_port(up.cfg.broker_port, timeout=30), f"run {run}: cvm broker did not listen"
        socks = [socket.create_connection(("127.0.0.1", up.cfg.broker_port)) for _ in range(8)]
        try:
            up.sigkill_all()
            assert port_free(up.cfg.broker_port), f"run {run}: sigkill_all returned while the port was still bound"
        finally:
            for sock in socks:
                sock.close()
