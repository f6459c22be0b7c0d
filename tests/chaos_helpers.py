"""Helpers of the chaos tests: a stack of real cvm processes (sink, workers, replays), their logs and a timeline.

Workers run with ``CVM_LOG_LEVEL=INFO`` so that they write their group membership into their logs ("assigned
partitions", "left the group"): the tests read assignments from there.
"""

from __future__ import annotations

import json
import re
import signal
import subprocess
import time
import urllib.parse
import urllib.request
from collections.abc import Callable
from datetime import datetime
from pathlib import Path
from typing import Any

from cvm.config import EVENT_TOPICS, Config
from cvm.events import parse_time
from cvm.replay_file import HistoryFile
from cvm.verify import Report, expect_file, verify
from tests.conftest import spawn, stop

_ASSIGNED = re.compile(r"(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d+) INFO cvm\.worker: assigned partitions (.*)$")
_TP = re.compile(r"(\S+)\[(\d+)\]")
_PROBLEM = re.compile(r"Traceback|\bERROR\b|\bCRITICAL\b|crashed", re.IGNORECASE)


class Stack:
    """The processes of one scenario; :meth:`close` stops what is still running. Logs go to ``tmp``."""

    def __init__(self, cfg: Config, tmp: Path) -> None:
        self.cfg = cfg
        self.worker_cfg = cfg.replace(log_level="INFO")
        self.tmp = tmp
        self.procs: dict[str, subprocess.Popen[bytes]] = {}
        self.logs: dict[str, list[Path]] = {}
        self.t0 = time.monotonic()
        self.timeline: list[tuple[float, str]] = []

    # --- processes -----------------------------------------------------------------------------------------------

    def _spawn(self, name: str, cfg: Config, *argv: str) -> subprocess.Popen[bytes]:
        logs = self.logs.setdefault(name, [])
        log = self.tmp / f"{name}-{len(logs) + 1}.log"
        logs.append(log)
        proc = spawn(cfg, *argv, log=log)
        self.procs[name] = proc
        self.note(f"start {name} (pid {proc.pid})")
        return proc

    def sink(self, name: str = "sink") -> subprocess.Popen[bytes]:
        """Start ``cvm sink`` and wait for its HTTP API."""
        proc = self._spawn(name, self.cfg, "sink")
        self.wait(lambda: proc.poll() is not None or self._http_up(), 60, "the sink's HTTP API")
        assert proc.poll() is None, self.tail(name)
        return proc

    def worker(self, name: str) -> subprocess.Popen[bytes]:
        return self._spawn(name, self.worker_cfg, "worker", "--id", name)

    def replay(self, path: Path, rate: float | None = None, name: str = "replay") -> subprocess.Popen[bytes]:
        argv = ["replay", str(path)] + (["--rate", str(rate)] if rate else [])
        return self._spawn(name, self.cfg, *argv)

    def kill(self, name: str, sig: int = signal.SIGKILL, timeout: float = 60) -> int:
        """Send ``sig`` to a process and wait for it to end; its exit code."""
        proc = self.procs[name]
        self.note(f"{signal.Signals(sig).name} {name}")
        proc.send_signal(sig)
        code = proc.wait(timeout)
        self.note(f"{name} exited {code}")
        return code

    def finish(self, name: str, timeout: float = 120) -> int:
        """Wait for a process that ends by itself (a replay)."""
        code = self.procs[name].wait(timeout)
        self.note(f"{name} exited {code}")
        assert code == 0, self.tail(name)
        return code

    def close(self) -> dict[str, int]:
        """Stop what still runs; the timeline goes to ``timeline.txt`` beside the logs."""
        codes = {}
        for name, proc in self.procs.items():
            codes[name] = stop(proc)
        (self.tmp / "timeline.txt").write_text("".join(f"{t:7.2f}s {what}\n" for t, what in self.timeline))
        return codes

    # --- observing -----------------------------------------------------------------------------------------------

    def note(self, what: str) -> None:
        self.timeline.append((round(time.monotonic() - self.t0, 2), what))

    def wait(self, condition: Callable[[], Any], timeout: float, what: str) -> Any:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            value = condition()
            if value:
                return value
            time.sleep(0.2)
        raise AssertionError(f"timed out after {timeout:g}s waiting for {what}\n{self.story()}")

    def _http_up(self) -> bool:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.cfg.http_port}/health", timeout=1):
                return True
        except OSError:
            return False

    def sql(self, query: str) -> list[dict[str, Any]]:
        url = f"http://127.0.0.1:{self.cfg.http_port}/api/sql?" + urllib.parse.urlencode(
            {"query": query, "format": "json"}
        )
        with urllib.request.urlopen(url, timeout=30) as resp:
            return list(json.loads(resp.read()))

    def scores(self) -> int:
        """Score messages the sink has written so far (``customer_scores`` rows)."""
        return int(self.sql(f"SELECT count() AS n FROM {self.cfg.clickhouse_database}.customer_scores")[0]["n"])

    def wait_scores(self, more_than: int, timeout: float = 60) -> int:
        """Wait until the sink holds more than ``more_than`` score rows: workers are scoring."""
        return int(self.wait(lambda: (n := self.scores()) > more_than and n, timeout, f"more than {more_than} scores"))

    def assignments(self, name: str) -> list[tuple[datetime, set[tuple[str, int]]]]:
        """Each assignment the current incarnation of worker ``name`` received: (log time, event partitions)."""
        events = {self.cfg.topic(t) for t in EVENT_TOPICS}
        out = []
        for line in self.logs[name][-1].read_text(errors="replace").splitlines():
            m = _ASSIGNED.search(line)
            if m:
                tps = {(t, int(p)) for t, p in _TP.findall(m.group(2)) if t in events}
                out.append((datetime.strptime(m.group(1), "%Y-%m-%d %H:%M:%S,%f"), tps))
        return out

    def wait_assigned(self, name: str, partitions: int | None = None, after: int = 0, timeout: float = 60) -> set:
        """Wait until worker ``name`` received more than ``after`` assignments, the latest holding event partitions
        (``partitions`` of each event topic when given); the event topic-partitions it holds."""

        def done() -> set | None:
            got = self.assignments(name)
            if len(got) <= after or not got[-1][1]:
                return None
            tps = got[-1][1]
            if partitions is not None and len(tps) != partitions * len(EVENT_TOPICS):
                return None
            return tps

        tps = self.wait(done, timeout, f"an assignment of {name}")
        self.note(f"{name} assigned {len(tps)} event partitions")
        return tps

    def settle(self, path: Path, timeout: float = 180) -> None:
        """Wait until the stream went idle after ``path`` and every customer's latest score holds as of its end (the
        idle scoring: scores no longer depend on where batches ended)."""
        end = max(parse_time(json.loads(line)["event_time"]) for line in path.read_text().splitlines() if line)
        fresh_from = end - int(self.cfg.tick_s * 1000)
        db = self.cfg.clickhouse_database
        query = (
            f"SELECT count() AS n, countIf(toUnixTimestamp64Milli(as_of) >= {fresh_from}) AS fresh "
            f"FROM {db}.customers FINAL"
        )

        def done() -> bool | None:
            row = self.sql(query)[0]
            return int(row["n"]) > 0 and int(row["n"]) == int(row["fresh"]) or None

        self.wait(done, timeout, "the idle scoring at the end of the history")
        self.note("settled: every customer scored as of the end")

    def verify(self, path: Path, replays: int = 1, dead_letters: int = 0, wait: float = 120) -> Report:
        """The verifier's comparison of ``path`` with what the sink wrote, waiting up to ``wait`` s for a match
        (less when nothing changes for 20 s)."""
        expected, published = expect_file(self.cfg, HistoryFile(path), replays)
        report = verify(self.cfg, expected, published, dead_letters, wait)
        self.note(f"verified: {'exact match' if report.ok else f'{report.n_mismatches} mismatches'}")
        return report

    def problems(self, *names: str) -> list[str]:
        """Lines of the logs of ``names`` (every process when none given) that tell of an error or a crash."""
        found = []
        for name in names or tuple(self.logs):
            for log in self.logs[name]:
                found += [
                    f"{log.name}: {line}"
                    for line in log.read_text(errors="replace").splitlines()
                    if _PROBLEM.search(line)
                ]
        return found

    def tail(self, name: str, chars: int = 3000) -> str:
        return "".join(f"--- {log.name}\n{log.read_text(errors='replace')[-chars:]}\n" for log in self.logs[name])

    def story(self) -> str:
        """The timeline and the end of every log, for an assertion message."""
        lines = [f"{t:7.2f}s {what}" for t, what in self.timeline]
        return "\n".join(lines) + "\n" + "".join(self.tail(name, 1500) for name in self.logs)
