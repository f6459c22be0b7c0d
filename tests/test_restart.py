"""Issue 14's scenario on real processes: half a history through ``cvm up --no-simulate``, the whole stack stopped
(Ctrl-C, or SIGKILL of every process, the broker included: its topics are gone either way), ``cvm up`` again on the
same data directory, the other half; then ``cvm verify`` on the whole file must be exact and the second run's model
metrics must be in ClickHouse. Before the restore, 432 of 593 customers were wrong and the second run's metrics
were dropped as duplicates."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from cvm.broker import port_free
from cvm.config import Config
from cvm.simulate import ANCHOR_MS, generate, write_jsonl
from tests.conftest import free_port

pytestmark = pytest.mark.integration


class Up:
    """``cvm up --no-simulate`` as a real process tree, and the commands run beside it."""

    def __init__(self, cfg: Config, tmp: Path) -> None:
        self.cfg = cfg
        self.tmp = tmp
        self.env = dict(os.environ, **cfg.to_env())
        self.proc: subprocess.Popen[bytes] | None = None
        self.runs = 0

    @property
    def err(self) -> Path:
        return self.tmp / f"up-{self.runs}.err"

    def start(self, timeout: float = 300) -> str:
        """Start ``cvm up`` and wait until it says ready; what it printed."""
        self.runs += 1
        with open(self.err, "wb") as err:
            argv = [sys.executable, "-m", "cvm.cli", "up", "--no-simulate"]
            self.proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=err, env=self.env)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            text = self.err.read_text()
            if "cvm up: ready" in text:
                return text
            assert self.proc.poll() is None, text + self.logs()
            time.sleep(0.5)
        raise AssertionError(f"cvm up was not ready after {timeout:g}s\n{self.err.read_text()}{self.logs()}")

    def cvm(self, *argv: str, timeout: float = 300) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "cvm.cli", *argv], env=self.env, capture_output=True, text=True, timeout=timeout
        )

    def replay(self, path: Path) -> None:
        done = self.cvm("replay", str(path))
        assert done.returncode == 0, done.stderr

    def verify(self, path: Path, wait: float = 180) -> dict[str, Any]:
        done = self.cvm("verify", str(path), "--wait", str(wait), "--json", timeout=wait + 120)
        report: dict[str, Any] = json.loads(done.stdout) if done.stdout.strip() else {}
        assert report, done.stderr + self.logs()
        return report

    def sql(self, query: str) -> list[dict[str, Any]]:
        done = self.cvm("sql", query.replace("{db}", self.cfg.clickhouse_database), "--format", "json")
        assert done.returncode == 0, done.stderr
        return list(json.loads(done.stdout))

    def wait_metrics(self, after: int, timeout: float = 90) -> dict[str, Any]:
        """Model metrics rows and their latest (event) time, once one is later than ``after`` or at the timeout."""
        deadline = time.monotonic() + timeout
        while True:
            found = self.sql("SELECT count() AS n, max(toUnixTimestamp64Milli(time)) AS t FROM {db}.model_metrics")[0]
            if found["t"] > after or time.monotonic() > deadline:
                return found
            time.sleep(2)

    def ctrl_c(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGINT)
        assert self.proc.wait(120) == 0, self.err.read_text()

    def sigkill_all(self) -> None:
        """SIGKILL every process of the stack at once, the broker (a grandchild) included, then cvm up."""
        assert self.proc is not None
        tree = descendants(self.proc.pid)
        for pid in tree:
            os.kill(pid, signal.SIGKILL)
        self.proc.kill()
        self.proc.wait(30)
        deadline = time.monotonic() + 30
        while any(os.path.exists(f"/proc/{pid}") and _state(pid) != "Z" for pid in tree):
            assert time.monotonic() < deadline, f"processes {tree} survived SIGKILL"
            time.sleep(0.2)
        assert port_free(self.cfg.broker_port), "the broker still listens after SIGKILL"

    def close(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
            try:
                self.proc.wait(120)
            except subprocess.TimeoutExpired:
                self.sigkill_all()

    def logs(self) -> str:
        logs = self.cfg.data_path / "logs"
        out = []
        for name in ("sink", "worker-1", "learner", "broker"):
            path = logs / f"{name}.log"
            if path.exists():
                out.append(f"--- {name}\n{path.read_text(errors='replace')[-3000:]}")
        return "\n".join(out)


def _state(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return "Z"


def descendants(root: int) -> list[int]:
    """Every process below ``root``, from /proc."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            children.setdefault(ppid, []).append(int(entry.name))
    found, todo = [], [root]
    while todo:
        for child in children.get(todo.pop(), []):
            found.append(child)
            todo.append(child)
    return found


@pytest.fixture
def up(cfg: Config, tmp_path: Path) -> Iterator[Up]:
    stack = Up(cfg.replace(broker_port=free_port(), log_level="WARNING"), tmp_path)
    try:
        yield stack
    finally:
        stack.close()


def halves(tmp: Path) -> tuple[Path, Path, Path]:
    """The issue's history: 600 customers over 240 days, and its first and second halves (by line)."""
    whole = tmp / "history.jsonl"
    write_jsonl(generate(600, 240, seed=14, end_ms=ANCHOR_MS), str(whole))
    lines = whole.read_text().splitlines(keepends=True)
    first, second = tmp / "first.jsonl", tmp / "second.jsonl"
    first.write_text("".join(lines[: len(lines) // 2]))
    second.write_text("".join(lines[len(lines) // 2 :]))
    return whole, first, second


@pytest.mark.parametrize("stop", ["ctrl-c", "sigkill-everything"])
def test_a_stopped_stack_restarts_as_if_it_had_never_stopped(up: Up, tmp_path: Path, stop: str) -> None:
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
    before = up.sql("SELECT count() AS n, max(toUnixTimestamp64Milli(time)) AS t FROM {db}.model_metrics")[0]
    customers = up.sql("SELECT count() AS n FROM {db}.customers FINAL")[0]["n"]
    assert before["n"] > 0 and customers == report["customers_expected"]

    said = up.start()
    restored = up.sql("SELECT state, events FROM {db}.epochs FINAL WHERE state = 'restored'")
    assert [r["events"] for r in restored] == [sum(report["published"].values())], said
    assert "cvm up: restored" in said and said.index("cvm up: restored") < said.index("cvm up: ready")
    report = up.verify(first, wait=0)  # the restore is complete when cvm up says ready
    assert report["ok"], report

    up.replay(second)
    report = up.verify(whole)
    assert report["ok"] and report["customers_found"] == report["customers_expected"] > 550, report
    after = up.wait_metrics(before["t"])  # the second run's: learned from labels later than any of the first run
    assert after["t"] > before["t"], (before, after, up.logs())
    epochs = up.sql("SELECT epoch, state FROM {db}.epochs FINAL ORDER BY epoch")
    assert [e["state"] for e in epochs] == ["none", "restored"], epochs
