"""Helpers of the restart and rebuild tests: ``cvm up --no-simulate`` as a real process tree, the commands run beside
it, and SIGKILL of the whole tree (the broker, a grandchild, included)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, HTTPServer
from pathlib import Path
from typing import Any

from cvm.broker import port_free
from cvm.config import Config
from cvm.events import parse_time
from cvm.simulate import write_jsonl
from cvm.simulation import ANCHOR_MS, generate


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

    def settle(self, path: Path, timeout: float = 180) -> None:
        """Wait until every customer's latest score holds as of the end of ``path`` (the stream went idle)."""
        end = max(json.loads(line)["event_time"] for line in path.read_text().splitlines() if line)
        fresh_from = parse_time(end) - int(self.cfg.tick_s * 1000)
        query = "SELECT count() AS n, countIf(toUnixTimestamp64Milli(as_of) >= {t}) AS fresh FROM {db}.customers FINAL"
        deadline = time.monotonic() + timeout
        while True:
            row = self.sql(query.replace("{t}", str(fresh_from)))[0]
            if int(row["n"]) and int(row["n"]) == int(row["fresh"]):
                return
            assert time.monotonic() < deadline, f"never settled at the end of {path.name}: {row}\n{self.logs()}"
            time.sleep(2)

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
        # A multi-threaded process's leader is a zombie while its other threads still exit, and its sockets close with
        # the last of them: the broker's port frees a moment after its pid shows "Z" (CI saw it still bound).
        while not port_free(self.cfg.broker_port):
            assert time.monotonic() < deadline, "the broker still listens 30 s after SIGKILL"
            time.sleep(0.2)

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


def history(path: Path, customers: int, days: int, seed: int) -> Path:
    write_jsonl(generate(customers, days, seed=seed, end_ms=ANCHOR_MS), str(path))
    return path


def customers(up: Up) -> dict[str, dict[str, Any]]:
    """Every row of ``customers FINAL``, by customer id."""
    return {row["customer_id"]: row for row in up.sql("SELECT * FROM {db}.customers FINAL ORDER BY customer_id")}


class Webhook:
    """A local HTTP endpoint that records the alerts posted to it (``CVM_ALERT_WEBHOOK_URL``)."""

    def __init__(self) -> None:
        posted: list[dict[str, Any]] = []
        self.posted = posted

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 - http.server's name
                posted.append(json.loads(self.rfile.read(int(self.headers["Content-Length"]))))
                self.send_response(200)
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                pass

        self.server = HTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_port}/alerts"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def episodes(self) -> list[tuple[str, str, str]]:
        return [(a["customer_id"], a["rule"], a["episode"]) for a in self.posted]

    def close(self) -> None:
        self.server.shutdown()
