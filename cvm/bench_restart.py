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
import uuid
from pathlib import Path
from typing import TYPE_CHECKING, Any

from cvm.bench_harness import free_port, raw_rows, sink_get, wait_for
from cvm.bench_verify import Expected, check, load_config
from cvm.config import Config
from cvm.exceptions import CvmError
from cvm.verify import verify

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
    "restore_verified_customers": "customers of the restored stack whose counts and money match the load exactly",
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


def restore(bench: Harness, expected: Expected) -> dict[str, Any]:
    """Write the bench's load to ClickHouse with a sink, then restore it on a fresh broker; what the restored stack
    holds is checked exactly against ``expected`` (:func:`cvm.bench_verify.check`)."""
    from cvm.broker import Broker

    cfg = load_config(bench.cfg)  # the verify phase's: the load is written already when it ran
    sink = bench.children.start("restore-sink", ["-m", "cvm.cli", "sink"], cfg)
    try:
        wait_for(bench, {"restore-sink": sink}, lambda: raw_rows(cfg) >= bench.events, "the load in ClickHouse")
    finally:
        bench.children.stop(sink, timeout=30.0)
    fresh = cfg.replace(broker_port=free_port())
    broker = Broker(fresh.broker_port, log_path=bench.workdir / "logs" / "restore-broker.log").start()
    try:
        sink = bench.children.start("restore-sink-2", ["-m", "cvm.cli", "sink"], fresh)
        learner = bench.children.start("restore-learner", ["-m", "cvm.cli", "learner"], fresh)
        worker = bench.children.start("restore-worker", ["-m", "cvm.cli", "worker", "--id", "restore"], fresh)
        try:
            procs = {"restore-sink-2": sink, "restore-learner": learner, "restore-worker": worker}
            status = wait_for(bench, procs, lambda: _restored(fresh), "the restore")
            e = expected
            report = verify(fresh, e.expectation, e.published, e.dead_letters, wait=bench.timeout * 2)
        finally:
            for proc in (worker, learner, sink):
                bench.children.stop(proc, timeout=30.0)
    finally:
        broker.stop()
    events, seconds = int(status["published"]), float(status["seconds"])
    verified = check(report, "the restored customers")["verified_customers"]
    return {
        "restore_events": events,
        "restore_s_per_million": round(seconds / max(events, 1) * 1e6, 1),
        "restore_verified_customers": verified,
    }


def _restored(cfg: Config) -> dict[str, Any] | None:
    status = ((sink_get(cfg, "/api/status").get("writer") or {}).get("restore")) or {}
    if status.get("state") == "failed":
        raise CvmError(f"the restore failed: {status.get('error')}")
    return status if status.get("state") == "done" else None


if __name__ == "__main__":  # the recovery's child process: python -m cvm.bench_restart DIRECTORY
    print(json.dumps(_recover_here(Path(sys.argv[1]))))
