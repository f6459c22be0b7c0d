"""``cvm rebuild`` on real processes: a history replayed through ``cvm up``, the stack stopped, then the rebuild —
interrupted once, then run to the end — must leave ``customers FINAL`` as the replay left it (every column but the
write time), since a rebuild is a replay of the same events in the same order."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from cvm.config import Config
from tests.conftest import free_port
from tests.restart_helpers import Up, customers, history

pytestmark = pytest.mark.integration


@dataclass
class Rebuilt:
    up: Up
    history: Path
    before: dict[str, dict[str, Any]]
    after: dict[str, dict[str, Any]]
    interrupted: subprocess.CompletedProcess[str]
    after_interrupt: dict[str, dict[str, Any]]
    done: subprocess.CompletedProcess[str]


@pytest.fixture(scope="module")
def rebuilt(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Rebuilt]:
    tmp = tmp_path_factory.mktemp("rebuild")
    tag = uuid.uuid4().hex[:8]
    cfg = Config.load(
        env={
            "CVM_BROKER_PORT": str(free_port()),
            "CVM_HTTP_PORT": str(free_port()),
            "CVM_DATA_DIR": str(tmp / "data"),
            "CVM_CLICKHOUSE_DATABASE": f"cvm_{tag}",
            "CVM_WORKER_BATCH_S": "0.05",
            "CVM_SINK_FLUSH_S": "0.2",
        }
    )
    up = Up(cfg, tmp)
    try:
        path = history(tmp / "history.jsonl", 300, 180, seed=31)
        up.start()
        up.replay(path)
        report = up.verify(path)
        assert report["ok"], report
        up.wait_metrics(0)
        up.settle(path)
        up.ctrl_c()
        before = customers(up)
        interrupted = _interrupted_rebuild(up)
        after_interrupt = customers(up)
        done = up.cvm("rebuild", timeout=600)
        yield Rebuilt(up, path, before, customers(up), interrupted, after_interrupt, done)
    finally:
        up.close()


def _interrupted_rebuild(up: Up) -> subprocess.CompletedProcess[str]:
    """``cvm rebuild`` stopped with Ctrl-C once it is folding the history."""
    proc = subprocess.Popen([sys.executable, "-m", "cvm.cli", "rebuild"], env=up.env, stderr=subprocess.PIPE, text=True)
    assert proc.stderr is not None
    seen = ""
    deadline = time.monotonic() + 120
    while "folding" not in seen and "collecting" not in seen:
        line = proc.stderr.readline()
        assert line and time.monotonic() < deadline, seen
        seen += line
    proc.send_signal(signal.SIGINT)
    _, rest = proc.communicate(timeout=120)
    return subprocess.CompletedProcess(proc.args, proc.returncode, "", seen + rest)


def _differences(before: dict[str, Any], after: dict[str, Any]) -> list[str]:
    """``column: before -> after`` for every column that differs, but the write time."""
    return [
        f"{column}: {value!r} -> {after.get(column)!r}"
        for column, value in before.items()
        if column != "updated_at" and after.get(column) != value
    ]


def test_an_interrupted_rebuild_changes_nothing_and_runs_again(rebuilt: Rebuilt) -> None:
    assert rebuilt.interrupted.returncode == 1, rebuilt.interrupted.stderr
    assert "interrupted: the derived tables are as they were" in rebuilt.interrupted.stderr
    assert rebuilt.after_interrupt == rebuilt.before
    assert rebuilt.done.returncode == 0, rebuilt.done.stderr + rebuilt.up.logs()
    assert f"{len(rebuilt.before):,} customers rebuilt from" in rebuilt.done.stderr
    report = rebuilt.up.verify(rebuilt.history, wait=0)
    assert report["ok"], report


def test_a_rebuild_leaves_every_customers_row_identical(rebuilt: Rebuilt) -> None:
    """The issue's "done when": every column but the write time, bit for bit (the worker's ticks, one fold order per
    kind and models on a stream-time grid make every figure a function of the events and their order per partition)."""
    assert set(rebuilt.after) == set(rebuilt.before)
    wrong = {cid: d for cid, row in rebuilt.before.items() if (d := _differences(row, rebuilt.after[cid]))}
    columns = sorted({x.split(":")[0] for d in wrong.values() for x in d})
    assert not wrong, f"{len(wrong)} of {len(rebuilt.before)} customers differ in {columns}"


def test_on_kafka_a_rebuild_resets_cvms_topics_first(cfg: Config, tmp_path: Path) -> None:
    """On Kafka (here the session's broker, as a Kafka cvm does not run itself) the rebuild needs --reset-topics,
    refuses while a worker is in its group, then deletes cvm's own topics and groups, restores, and the customers
    are what the replay computed."""
    from tests.chaos_helpers import Stack
    from tests.conftest import spawn

    cfg = cfg.replace(kafka_bootstrap=f"127.0.0.1:{cfg.broker_port}")
    stack = Stack(cfg, tmp_path)
    up = Up(cfg, tmp_path)
    try:
        path = history(tmp_path / "history.jsonl", 150, 120, seed=33)
        stack.sink()
        stack.worker("w1")
        learner = spawn(cfg, "learner", log=tmp_path / "learner.log")
        stack.replay(path)
        stack.finish("replay")
        stack.settle(path)
        assert stack.verify(path).ok
        for name in ("sink", "w1"):
            stack.kill(name, signal.SIGTERM)
        learner.terminate()
        learner.wait(30)
        before = customers(up)

        refused = up.cvm("rebuild")
        assert refused.returncode == 1 and "--reset-topics" in refused.stderr, refused.stderr
        stack.worker("w2")
        stack.wait_assigned("w2")
        refused = up.cvm("rebuild", "--reset-topics")
        assert refused.returncode == 1 and "is stable: stop cvm's workers and sink first" in refused.stderr, refused
        stack.kill("w2", signal.SIGTERM)

        done = up.cvm("rebuild", "--reset-topics", timeout=600)
        assert done.returncode == 0, done.stderr + up.logs()
        after = customers(up)
        assert set(after) == set(before)
        wrong = {c: d for c, row in before.items() if (d := _differences(row, after[c]))}
        assert not wrong, f"{len(wrong)} customers differ, e.g. {next(iter(wrong.items()))}"
        assert up.verify(path, wait=0)["ok"]
        epochs = up.sql("SELECT epoch, state FROM {db}.epochs FINAL ORDER BY epoch")
        assert [e["state"] for e in epochs] == ["none", "restored"], epochs
    finally:
        stack.close()
