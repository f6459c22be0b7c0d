"""``cvm up``: the whole system on one machine — broker, sink, learner, workers and simulator, supervised.

Children start in dependency order and stop in reverse order (simulator, workers, learner, sink, broker), so that
everything published is scored and everything scored is written before the broker goes away. A worker or the
sink that dies is restarted (at most 3 times); the broker dying ends the run, because its topics live in memory.
Child output goes to ``$CVM_DATA_DIR/logs/<name>.log``.

The embedded broker starts empty every time; ClickHouse keeps the history. When it holds any, the sink first
restores it through the broker (:mod:`cvm.restore`): ``cvm up`` shows the progress and says ``ready`` only once
every customer's state, the models and the derived tables are back, and starts the simulator only then.
"""

from __future__ import annotations

import argparse
import ctypes
import json
import os
import signal
import subprocess
import sys
import threading
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cvm.broker import port_free, wait_port
from cvm.config import EVENT_TOPICS, Config
from cvm.exceptions import CvmError, PortInUse
from cvm.restore import progress_line
from cvm.signals import StopSignals

__all__ = ["Child", "main", "restart_dead", "simulator_argv", "wait_http", "wait_learner"]

_MAX_RESTARTS = 3


@dataclass
class Child:
    """One supervised process."""

    name: str
    argv: list[str]
    restartable: bool = True
    proc: subprocess.Popen[bytes] | None = None
    restarts: int = 0
    done: bool = False  # exited on its own with code 0 (the simulator after --duration)
    log: Path = field(default_factory=Path)
    env: dict[str, str] = field(default_factory=dict)  # settings of this child only (its /metrics port)
    metrics: str = ""  # where its /metrics answers

    def start(self, env: dict[str, str], logs: Path) -> None:
        self.log = logs / f"{self.name}.log"
        out = open(self.log, "ab")  # noqa: SIM115 - handed to the child
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "cvm.cli", *self.argv],
            stdout=out,
            stderr=subprocess.STDOUT,
            env={**env, **self.env},
            start_new_session=True,  # Ctrl-C reaches cvm up only: children are stopped in order
            preexec_fn=_die_with_parent,
        )
        out.close()

    def stop(self, timeout: float) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()

    def tail(self, lines: int = 3) -> str:
        try:
            return " | ".join(self.log.read_text(errors="replace").strip().splitlines()[-lines:])
        except OSError:
            return ""


class Status:
    """Figures for the status screen: the sink's /api/status plus the workers' consumer lag."""

    def __init__(self, cfg: Config, port: int) -> None:
        self.cfg = cfg
        self.url = f"http://127.0.0.1:{port}/api/status"
        self._consumer: Any = None

    def sink(self) -> dict[str, Any]:
        headers = {"Authorization": f"Bearer {self.cfg.http_token}"} if self.cfg.http_token else {}
        try:
            with urllib.request.urlopen(urllib.request.Request(self.url, headers=headers), timeout=1.0) as resp:
                return dict(json.loads(resp.read()))
        except (OSError, ValueError):
            return {}

    def lag(self) -> int | None:
        """Events published but not yet processed by the workers' consumer group."""
        from confluent_kafka import KafkaException, TopicPartition

        from cvm.kafka import make_consumer

        try:
            if self._consumer is None:
                self._consumer = make_consumer(self.cfg, group=self.cfg.app_id)
            tps = [TopicPartition(self.cfg.topic(name), p) for name in EVENT_TOPICS for p in range(self.cfg.partitions)]
            committed = self._consumer.committed(tps, timeout=2.0)
            total = 0
            for tp in committed:
                _, high = self._consumer.get_watermark_offsets(tp, timeout=2.0, cached=False)
                total += max(0, high - max(tp.offset, 0))
            return total
        except KafkaException:
            return None

    def close(self) -> None:
        if self._consumer is not None:
            self._consumer.close()


def _fmt(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:,.1f}"
    if isinstance(value, int):
        return f"{value:,}"
    return str(value)


def main(cfg: Config, args: argparse.Namespace) -> int:
    port = args.port or cfg.http_port
    cfg = cfg.replace(http_port=port)
    if cfg.embedded_broker and not port_free(cfg.broker_port):
        raise PortInUse(
            f"port {cfg.broker_port} (embedded broker) is in use: stop what listens there or set CVM_BROKER_PORT"
        )
    if not port_free(port, cfg.http_host if cfg.http_host != "0.0.0.0" else "127.0.0.1"):
        raise PortInUse(f"port {port} (HTTP API) is in use: pick another with --port or CVM_HTTP_PORT")
    logs = cfg.data_path / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    env = dict(os.environ, **cfg.to_env(), PYTHONUNBUFFERED="1")

    children: list[Child] = []
    if cfg.embedded_broker:
        children.append(Child("broker", ["broker"], restartable=False))
    children.append(Child("sink", ["sink", "--port", str(port)], metrics=f"http://127.0.0.1:{port}/metrics"))
    children.append(Child("learner", ["learner"], metrics=_metrics_url(cfg, cfg.learner_metrics_port)))
    for i in range(args.workers):
        worker_port = cfg.worker_metrics_port + i if cfg.worker_metrics_port else 0
        children.append(
            Child(
                f"worker-{i + 1}",
                ["worker", "--id", f"w{i + 1}"],
                env={"CVM_WORKER_METRICS_PORT": str(worker_port)},
                metrics=_metrics_url(cfg, worker_port),
            )
        )
    if not args.no_simulate:
        sim = ["simulate", "--customers", str(args.customers), "--days", str(args.days), "--seed", str(args.seed)]
        if args.rate:
            sim += ["--rate", str(args.rate)]
        # --days alone means "history only" to `cvm simulate`; under `up` it keeps going live, so say so.
        sim += ["--duration", str(args.duration or 10**9)]
        children.append(Child("simulator", sim))

    started = time.monotonic()
    status = Status(cfg, port)
    code = 0
    with StopSignals() as signals:
        stop = signals.event
        try:
            print(f"cvm up: logs in {logs}; dashboard http://127.0.0.1:{port}/ ; Ctrl-C stops", file=sys.stderr)
            for child in children:
                if child.metrics:
                    print(f"cvm up: {child.name} metrics on {child.metrics}", file=sys.stderr)
            for child in children:
                if child.name == "simulator":  # new input goes after the restored history, never before
                    code, restored = _wait_restored(status, children, env, logs, stop)
                    if code or stop.is_set():
                        return code
                    anchor = cfg.data_path / "simulator.json"
                    child.argv = simulator_argv(child.argv, restored, anchor, int(time.time()) * 1000)
                child.start(env, logs)
                if child.name == "broker" and not wait_port(cfg.broker_port, timeout=15):
                    raise CvmError(f"the embedded broker did not start: see {child.log}")
                if child.name == "sink" and not wait_http(port, child, timeout=60):
                    raise CvmError(f"the sink did not start: {child.tail()} (log {child.log})")
                if child.name == "learner" and not wait_learner(cfg, child, timeout=60):
                    raise CvmError(f"the learner did not start: {child.tail()} (log {child.log})")
            if not any(c.name == "simulator" for c in children):
                code, _ = _wait_restored(status, children, env, logs, stop)
                if code or stop.is_set():
                    return code
            code = _supervise(cfg, args, children, env, logs, status, stop, started)
        finally:
            status.close()
            print("cvm up: stopping ...", file=sys.stderr)
            # After a Ctrl-C, a second one interrupts this orderly stop (the children die with this process).
            for child in reversed(children):
                child.stop(timeout=30 if child.name == "sink" else 15)
            print(f"cvm up: stopped after {time.monotonic() - started:.0f}s", file=sys.stderr)
    return code


def _metrics_url(cfg: Config, port: int) -> str:
    if not port:
        return ""
    host = "127.0.0.1" if cfg.metrics_host in ("", "0.0.0.0") else cfg.metrics_host
    return f"http://{f'[{host}]' if ':' in host else host}:{port}/metrics"


def _die_with_parent() -> None:
    """In the child, before exec: on Linux, get SIGTERM when cvm up dies, however it dies (no orphans)."""
    if sys.platform.startswith("linux"):
        try:
            ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
        except (OSError, AttributeError):
            pass


def wait_learner(cfg: Config, child: Child, timeout: float) -> bool:
    """Wait until the learner has said it is here (its clock on the models topic): workers started after it wait for
    the model versions of their stream time from their first tick, so a replay scores with the same models however
    fast it runs (streams.models)."""
    from streams.models import ModelFeed

    feed = ModelFeed(cfg).start()
    try:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if child.proc is not None and child.proc.poll() is not None:
                return False
            if feed.clock is not None:
                return True
            time.sleep(0.1)
        return False
    finally:
        feed.stop()


def wait_http(port: int, child: Child, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if child.proc is not None and child.proc.poll() is not None:
            return False
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=0.5):
                return True
        except OSError:
            time.sleep(0.2)
    return False


def _supervise(
    cfg: Config,
    args: argparse.Namespace,
    children: list[Child],
    env: dict[str, str],
    logs: Path,
    status: Status,
    stop: threading.Event,
    started: float,
) -> int:
    tty = sys.stdout.isatty()
    last_print = 0.0
    while not stop.wait(1.0):
        elapsed = time.monotonic() - started
        if args.duration and elapsed >= args.duration:
            break
        if restart_dead(children, env, logs):
            return 1
        if tty or elapsed - last_print >= 10:
            last_print = elapsed
            _show(status, elapsed, children, tty)
    return 0


def restart_dead(children: list[Child], env: dict[str, str], logs: Path) -> bool:
    """Restart the children that died (at most 3 times each); True when one may not be restarted: the run ends."""
    for child in children:
        rc = child.proc.poll() if child.proc is not None else None
        if rc is None or child.done:
            continue
        if child.name == "simulator" and rc == 0:
            child.done = True
            continue
        if not child.restartable or child.restarts >= _MAX_RESTARTS:
            print(f"cvm up: {child.name} exited with code {rc}: {child.tail()} (log {child.log})", file=sys.stderr)
            return True
        child.restarts += 1
        print(
            f"cvm up: {child.name} exited with code {rc}, restarting ({child.restarts}/{_MAX_RESTARTS})",
            file=sys.stderr,
        )
        child.start(env, logs)
    return False


def simulator_argv(argv: list[str], restored: int, anchor: Path, now_ms: int) -> list[str]:
    """The simulator's arguments once the restore is over.

    A fresh history ends now, and ``anchor`` (a file in the data directory) keeps where with the simulator's
    arguments. After ``restored`` events of an earlier run came back from ClickHouse, the simulator draws the same
    lives (the same end: the same events, the same event ids) and goes on after those events (``--published``)
    rather than publish them again. Without an anchor for these arguments (data from elsewhere) it goes on from a
    history ending now: the same customers, lives drawn anew.

    >>> import tempfile
    >>> anchor = Path(tempfile.mkdtemp()) / "simulator.json"
    >>> simulator_argv(["simulate", "--days", "60"], 0, anchor, 1_767_225_600_000)[-2:]
    ['--end', '2026-01-01T00:00:00.000Z']
    >>> simulator_argv(["simulate", "--days", "60", "--duration", "5"], 3459, anchor, 1_767_312_000_000)[-4:]
    ['--end', '2026-01-01T00:00:00.000Z', '--published', '3459']
    >>> simulator_argv(["simulate", "--days", "90"], 3459, anchor, 1_767_312_000_000)[-4:]
    ['--end', '2026-01-02T00:00:00.000Z', '--published', '3459']
    """
    from cvm.events import iso

    found = None
    try:
        kept = json.loads(anchor.read_text())
        found = int(kept["end_ms"]) if kept.get("lives") == _lives(argv) else None
    except (OSError, ValueError, KeyError, TypeError):
        pass
    if restored and found is not None:
        return [*argv, "--end", iso(found), "--published", str(restored)]
    if restored:
        log_line = f"cvm up: no simulator anchor for these arguments in {anchor}: its lives go on drawn anew"
        print(log_line, file=sys.stderr)
        return [*argv, "--end", iso(now_ms), "--published", str(restored)]
    anchor.parent.mkdir(parents=True, exist_ok=True)
    anchor.write_text(json.dumps({"lives": _lives(argv), "end_ms": now_ms}))
    return [*argv, "--end", iso(now_ms)]


def _lives(argv: list[str]) -> list[str]:
    """The simulator's arguments that decide its lives (not its pace or how long it runs).

    >>> _lives(["simulate", "--customers", "5", "--rate", "9", "--duration", "60"])
    ['simulate', '--customers', '5']
    """
    out, args = [], iter(argv)
    for arg in args:
        if arg in ("--rate", "--duration"):
            next(args, None)
        else:
            out.append(arg)
    return out


def _wait_restored(
    status: Status, children: list[Child], env: dict[str, str], logs: Path, stop: threading.Event
) -> tuple[int, int]:
    """Wait until the sink has restored the history (or found none), with a progress line; then say ready.
    Returns the exit code so far (1: a child or the restore failed) and the events restored."""
    tty = sys.stderr.isatty()
    shown, last_line = False, 0.0
    while not stop.wait(0.5):
        if restart_dead(children, env, logs):
            return 1, 0
        restore = (status.sink().get("writer") or {}).get("restore") or {}
        state = restore.get("state")
        if state == "failed":
            print(f"cvm up: the restore failed: {restore.get('error')}", file=sys.stderr)
            return 1, 0
        if state in ("done", "none"):
            if shown and tty:
                sys.stderr.write("\r\x1b[K")
            if state == "done":
                events, seconds = restore.get("published", 0), restore.get("seconds", 0.0)
                rate = f" ({seconds / max(events, 1) * 1e6:,.0f} s per million events)" if events else ""
                print(f"cvm up: restored {events:,} events from ClickHouse in {seconds:.1f}s{rate}", file=sys.stderr)
            print("cvm up: ready", file=sys.stderr, flush=True)
            return 0, int(restore.get("published", 0)) if state == "done" else 0
        if state is None or state == "starting":
            continue
        line = progress_line(restore, "cvm up: restoring")
        now = time.monotonic()
        if tty:
            sys.stderr.write(f"\r{line}\x1b[K")
            sys.stderr.flush()
            shown = True
        elif now - last_line >= 5:
            last_line = now
            print(line, file=sys.stderr, flush=True)
    return 0, 0


def _show(status: Status, elapsed: float, children: list[Child], tty: bool) -> None:
    s = status.sink()
    customers = s.get("customers")
    rows = s.get("tables") or {}
    writer = s.get("writer") or {}
    figures = [
        ("events/s", writer.get("events_per_s")),
        ("lag", status.lag()),
        ("customers", customers),
        ("transactions", rows.get("transactions")),
        ("alerts", rows.get("alerts")),
        ("dead letters", rows.get("dead_letters")),
    ]
    procs = " ".join(f"{c.name}{'' if c.proc and c.proc.poll() is None else '(done)'}" for c in children)
    if tty:
        lines = [f"cvm up  {elapsed:6.0f}s   {procs}", *(f"  {name:<14}{_fmt(v)}" for name, v in figures)]
        sys.stdout.write("\x1b[H\x1b[2J" + "\n".join(lines) + "\n")
    else:
        pairs = " ".join(f"{name.replace(' ', '_')}={_fmt(v)}" for name, v in figures)
        sys.stdout.write(f"cvm up {elapsed:.0f}s {pairs}\n")
    sys.stdout.flush()
