"""The restart measurements of ``cvm bench``: a worker's table recovery at scale, and a restore from ClickHouse.

* **recovery** (``--recovery-customers``, default 100,000; the issue asks for 1,000,000): a changelog holding that
  many customers' states of 480 bytes, each written :data:`WRITES` times (the embedded broker never compacts), is
  recovered by a fresh table: from the whole changelog, then from the local checkpoint (``streams/table.py``).
* **restore**: a sink writes the bench's load to ClickHouse; then a fresh broker, and ``cvm sink``, ``cvm learner``
  and ``cvm worker`` restore it (``cvm/restore.py``): seconds per million events, from the sink's figures.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import urllib.parse
import urllib.request
import uuid
from pathlib import Path
from typing import TYPE_CHECKING, Any

from cvm.config import Config
from cvm.exceptions import CvmError

if TYPE_CHECKING:
    from cvm.bench_harness import Harness

__all__ = ["KEYS", "WRITES", "recovery", "restore"]

#: Writes of each customer's state in the recovery's changelog.
WRITES = 3

KEYS = {
    "recovery_customers": "customers in the recovered table (changelog: 3 states of 480 bytes each)",
    "recovery_changelog_s": "recovery of that table from the whole changelog, seconds",
    "recovery_checkpoint_s": "recovery from the local checkpoint instead, seconds",
    "checkpoint_write_s": "writing that checkpoint, seconds",
    "recovery_changelog_rss_mb": "peak memory of a process recovering that table from the changelog",
    "recovery_checkpoint_rss_mb": "peak memory of a process recovering it from the checkpoint",
    "restore_events": "events restored from ClickHouse onto a fresh broker",
    "restore_s_per_million": "restore: publish, fold by one worker, rewrite derived tables; s per million events",
}


def recovery(cfg: Config, customers: int) -> dict[str, Any]:
    """Recover a table of ``customers`` from its changelog and from its checkpoint, on ``cfg``'s broker."""
    from cvm.epoch import Epoch, claim
    from cvm.kafka import make_producer
    from streams.table import CustomerTable

    cfg = cfg.replace(app_id=f"{cfg.app_id}-recovery", topic_prefix=f"{cfg.topic_prefix}recovery-")
    claim(cfg, Epoch(1, uuid.uuid4().hex))  # checkpoints belong to a broker epoch
    table = CustomerTable(cfg, make_producer(cfg))
    table_dir = table.directory
    table.create_topic()
    table.recover(range(cfg.partitions))
    body = os.urandom(472)
    assert table.producer is not None
    for i in range(customers * WRITES):
        key = f"c{i % customers:08d}".encode()
        while True:
            try:
                table.put(i % cfg.partitions, key, i.to_bytes(8, "little") + body)
                break
            except BufferError:
                table.producer.poll(0.05)
    if table.producer.flush(120):
        raise CvmError("the recovery's changelog was not acknowledged within 120 s")
    table.seal(range(cfg.partitions))
    table.producer.flush(60)
    started = time.perf_counter()
    if table.checkpoint() != cfg.partitions:
        raise CvmError("the recovery's table could not be checkpointed")
    out: dict[str, Any] = {"checkpoint_write_s": round(time.perf_counter() - started, 2)}
    del table
    for name, directory in (("changelog", cfg.data_path / "no-checkpoints"), ("checkpoint", table_dir)):
        found = _recover_in_child(cfg, directory)
        if found["customers"] != customers:
            raise CvmError(f"recovered {found['customers']:,} customers from the {name}, not {customers:,}")
        out[f"recovery_{name}_s"] = found["seconds"]
        out[f"recovery_{name}_rss_mb"] = found["rss_mb"]
    out["recovery_customers"] = customers
    return out


def _recover_in_child(cfg: Config, directory: Path) -> dict[str, Any]:
    """Recover the table in a process of its own, whose peak memory is the table's (plus the interpreter's)."""
    env = dict(os.environ, **cfg.to_env())
    argv = [sys.executable, "-m", "cvm.bench_restart", str(directory)]
    done = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=3600)
    if done.returncode != 0:
        raise CvmError(f"the recovery process failed: {done.stderr.strip()[-300:]}")
    return dict(json.loads(done.stdout))


def _recover_here(directory: Path) -> dict[str, Any]:
    from streams.table import CustomerTable

    cfg = Config.load()
    table = CustomerTable(cfg, directory=directory)
    started = time.perf_counter()
    table.recover(range(cfg.partitions), timeout=3600)
    seconds = time.perf_counter() - started
    with open("/proc/self/status") as status:
        peak = int(status.read().split("VmHWM:")[1].split()[0]) / 1024
    return {"customers": len(table), "seconds": round(seconds, 2), "rss_mb": round(peak)}


def restore(bench: Harness) -> dict[str, Any]:
    """Write the bench's load to ClickHouse with a sink, then restore it on a fresh broker."""
    from cvm.broker import Broker

    cfg = bench.cfg.replace(app_id=f"{bench.cfg.app_id}-restore", clickhouse_database="restore")
    sink = bench.children.start("restore-sink", ["-m", "cvm.cli", "sink"], cfg)
    try:
        _wait(bench, {"restore-sink": sink}, lambda: _raw_rows(cfg) >= bench.events, "the load in ClickHouse")
    finally:
        bench.children.stop(sink, timeout=30.0)
    fresh = cfg.replace(broker_port=_port())
    broker = Broker(fresh.broker_port, log_path=bench.workdir / "logs" / "restore-broker.log").start()
    try:
        sink = bench.children.start("restore-sink-2", ["-m", "cvm.cli", "sink"], fresh)
        learner = bench.children.start("restore-learner", ["-m", "cvm.cli", "learner"], fresh)
        worker = bench.children.start("restore-worker", ["-m", "cvm.cli", "worker", "--id", "restore"], fresh)
        try:
            procs = {"restore-sink-2": sink, "restore-learner": learner, "restore-worker": worker}
            status = _wait(bench, procs, lambda: _restored(fresh), "the restore")
        finally:
            for proc in (worker, learner, sink):
                bench.children.stop(proc, timeout=30.0)
    finally:
        broker.stop()
    events, seconds = int(status["published"]), float(status["seconds"])
    return {"restore_events": events, "restore_s_per_million": round(seconds / max(events, 1) * 1e6, 1)}


def _wait(bench: Harness, procs: dict[str, Any], done: Any, what: str) -> Any:
    """Wait until ``done()`` gives something; fail at once when one of ``procs`` (name: process) exits."""
    deadline = time.monotonic() + bench.timeout * 2
    while time.monotonic() < deadline:
        for name, proc in procs.items():
            if proc.poll() is not None:
                raise bench.fail(
                    f"{name} exited with code {proc.returncode} while waiting for {what}: {bench.children.tail(name)}"
                )
        try:
            found = done()
        except (OSError, ValueError, KeyError):
            found = None
        if found:
            return found
        time.sleep(0.5)
    raise bench.fail(f"timed out waiting for {what}")


def _get(cfg: Config, path: str) -> Any:
    with urllib.request.urlopen(f"http://127.0.0.1:{cfg.http_port}{path}", timeout=5) as resp:
        return json.loads(resp.read())


def _raw_rows(cfg: Config) -> int:
    db = cfg.clickhouse_database
    query = " + ".join(f"(SELECT count() FROM {db}.{kind})" for kind in ("transactions", "contacts", "payments"))
    rows = _get(cfg, "/api/sql?" + urllib.parse.urlencode({"query": f"SELECT {query} AS n", "format": "json"}))
    return int(rows[0]["n"])


def _restored(cfg: Config) -> dict[str, Any] | None:
    status = ((_get(cfg, "/api/status").get("writer") or {}).get("restore")) or {}
    if status.get("state") == "failed":
        raise CvmError(f"the restore failed: {status.get('error')}")
    return status if status.get("state") == "done" else None


def _port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


if __name__ == "__main__":  # the recovery's child process: python -m cvm.bench_restart DIRECTORY
    print(json.dumps(_recover_here(Path(sys.argv[1]))))
