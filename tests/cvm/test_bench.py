"""``cvm bench``: one small real run (its own Tansu broker, Faust and Quix peers, cvm workers, sink and chDB) whose
figures are all present and plausible — no timing thresholds: speed is what the bench reports, not what tests
assert."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from cvm.bench import KEYS, MEASUREMENTS, format_table, percentile
from cvm.bench_harness import generate
from cvm.bench_restart import KEYS as RESTART_KEYS

#: The bench on 10,000 simulated customers (its default, 200,000, takes ~20 s more to draw a small load).
BENCH = (sys.executable, "-m", "cvm.cli", "bench", "--customers", "10000")
RATES = ("raw_eps", "faust_empty_eps", "quix_eps", "pipeline_eps", "pipeline_2w_eps")


@pytest.mark.integration
def test_small_run_reports_every_figure() -> None:
    # 1,000 customers: the 3,000 events span ~55 days, so the learner beside the worker publishes CLV versions and
    # the pipeline scores under them (a 10,000-customer draw spans 6 days: no version before its end). Recovery has
    # its own test below, and so has a restore without the verify phase before it (here it restores from the
    # database the verify phase wrote).
    proc = subprocess.run(
        [*BENCH[:-1], "1000", "--events", "3000", "--json", "--skip", "recovery"],
        capture_output=True,
        text=True,
        timeout=540,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    lines = proc.stdout.strip().splitlines()
    assert len(lines) == 1, proc.stdout  # one JSON object, nothing else on stdout
    result = json.loads(lines[0])
    for key in (*KEYS, "events", "customers", "machine", "date", "seconds"):
        assert (result.get(key) is None) == (key.startswith(("recovery_", "checkpoint_"))), (key, result)
    assert result["events"] == 3000
    assert 500 < result["customers"] <= 1000
    for key in RATES:
        assert result[key] > 0, (key, result)
    assert 0 < result["p50_latency_s"] <= result["p99_latency_s"] < 120
    assert 0 < result["p50_live_latency_s"] <= result["p99_live_latency_s"] < 120
    assert result["latency_samples"] > 0
    assert 50 < result["state_bytes_per_customer"] <= result["state_bytes_max"] < 100_000
    assert 20 < result["rss_mb"] < 10_000
    # the learner ran beside the worker: models were in force, and a new version re-scored the customers
    assert result["model_rescorings_per_event"] > 0 and result["stage_models_us"] > 0, result
    for stage in ("consume", "decode", "fold", "features", "score", "models", "emit", "changelog", "commit"):
        assert result[f"stage_{stage}_us"] > 0, (stage, result)
    # the floor phase sent the pipeline's outputs again (it fails when it sent another count of score messages)
    assert result["floor_eps"] > 0 and result["floor_cpu_us_per_event"] > 0, result
    # the verify phase: what both pipeline phases wrote, in ClickHouse, matches what the load adds up to, exactly
    assert result["verify_mismatches"] == 0 and result["verified_customers"] == result["customers"], result
    assert result["restore_events"] == 3000 and result["restore_verified_customers"] == result["customers"], result
    assert 0 < result["seconds"] < 540


def test_generate_splits_the_load_from_the_latency_pool() -> None:
    load = generate(events=500, customers=200, extra=100, seed=3)
    assert len(load.records) == 500 and len(load.pool) == 100
    assert {kind for kind, _, _ in load.records} == {"transactions", "contacts", "payments"}
    assert 0 < load.customers <= 200
    assert all(value[0] == 0 for _, _, value in load.records)  # Confluent wire format
    again = generate(events=500, customers=200, extra=100, seed=3)
    assert [key for _, key, _ in again.records] == [key for _, key, _ in load.records]


def test_table_shows_skipped_figures_as_dashes() -> None:
    result = {"events": 1000, "customers": 400, "machine": "m", "date": "d", "seconds": 2.0}
    result.update(dict.fromkeys(KEYS))
    result.update(raw_eps=250_000, pipeline_eps=5000, faust_empty_eps=10_000, pipeline_2w_eps=8000)
    table = format_table(result)
    assert "quix_eps" in table and "pipeline_eps / faust_empty_eps = 0.50" in table
    assert "pipeline_2w_eps / pipeline_eps = 1.60" in table
    row = next(line for line in table.splitlines() if line.startswith("quix_eps"))
    assert row.split()[1] == "-"


def test_every_measurement_can_be_skipped_from_the_command_line() -> None:
    """`cvm bench --skip` offers every measurement (the parser lists them without importing the bench, which would slow
    every cvm command)."""
    from cvm.cli import build_parser

    bench = build_parser()._subparsers._group_actions[0].choices["bench"]  # type: ignore[union-attr]
    skip = next(a for a in bench._actions if a.dest == "skip")
    assert tuple(skip.choices) == MEASUREMENTS


def test_percentile_is_nearest_rank() -> None:
    values = [float(v) for v in range(1, 101)]
    assert percentile(values, 50) == 50.0
    assert percentile(values, 99) == 99.0
    assert percentile(values, 100) == 100.0
    with pytest.raises(ValueError):
        percentile([], 50)


@pytest.mark.integration
def test_a_failing_measurement_is_one_line_and_the_others_still_report() -> None:
    skipped = ("faust", "quix", "pipeline_2w", "latency", "latency_live", "recovery", "restore")
    skip = [arg for name in skipped for arg in ("--skip", name)]
    proc = subprocess.run(
        [*BENCH, "--events", "500", "--json", *skip],
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "CVM_WORKER_BATCH": "0"},  # the worker refuses to start (the bench does not use it)
    )
    assert proc.returncode == 1
    errors = proc.stderr.strip().splitlines()
    assert len(errors) == 1 and errors[0].startswith("cvm bench: pipeline: worker "), proc.stderr
    logs = Path(errors[0].rsplit("(logs in ", 1)[1].split(")")[0])
    assert (logs / "broker.log").exists()  # kept for the operator to read
    shutil.rmtree(logs.parent)
    result = json.loads(proc.stdout)
    assert result["raw_eps"] > 0 and result["pipeline_eps"] is None
    assert set(result["errors"]) == {"pipeline"}


@pytest.mark.integration
def test_recovery_and_restore_are_measured() -> None:
    skipped = ("raw", "faust", "quix", "pipeline", "pipeline_2w", "latency", "latency_live")
    skip = [arg for name in skipped for arg in ("--skip", name)]
    proc = subprocess.run(
        [*BENCH, "--events", "3000", "--recovery-customers", "5000", "--json", *skip],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr
    result = json.loads(proc.stdout)
    assert result["recovery_customers"] == 5000 and result["restore_events"] == 3000, result
    assert result["restore_verified_customers"] == result["customers"], result  # checked exactly against the load
    assert result["verified_customers"] is None  # no pipeline phase: nothing for the verify phase to check
    assert result["floor_eps"] is None  # nor for the floor phase to send again
    assert all(result[key] is not None for key in RESTART_KEYS), result
    for key in ("recovery_changelog_s", "recovery_checkpoint_s", "checkpoint_write_s", "restore_s_per_million"):
        assert result[key] > 0, (key, result)


def test_the_bench_s_processes_leave_the_default_metrics_ports_alone() -> None:
    """A `cvm up` on the same machine (or a test beside it) holds the default /metrics ports: the bench's own learner
    and workers serve none unless a measurement gives them a free port (the restore phase failed on a taken 9110)."""
    import shutil as _shutil

    from cvm.bench import Bench
    from cvm.config import Config

    bench = Bench(Config.load(env={}), events=10, customers=10)
    try:
        assert bench.cfg.worker_metrics_port == 0 and bench.cfg.learner_metrics_port == 0
    finally:
        _shutil.rmtree(bench.workdir, ignore_errors=True)


def test_the_restore_phase_fails_at_once_when_its_worker_or_learner_dies(tmp_path: Path) -> None:
    """The restore phase watched only its sink: a crashed worker left `cvm bench` waiting ~16 minutes."""
    import time

    from cvm.bench_harness import wait_for
    from cvm.exceptions import CvmError

    class Proc:
        def __init__(self, code: int | None) -> None:
            self.returncode = code

        def poll(self) -> int | None:
            return self.returncode

    class Children:
        def tail(self, name: str) -> str:
            return f"{name}: ValueError: boom"

    class Bench:
        timeout = 60.0
        children = Children()

        def fail(self, what: str) -> CvmError:
            return CvmError(what)

    started = time.monotonic()
    with pytest.raises(CvmError, match="restore-worker exited with code 1 .*ValueError: boom"):
        wait_for(Bench(), {"sink": Proc(None), "restore-worker": Proc(1)}, lambda: None, "the restore")  # type: ignore[arg-type]
    assert time.monotonic() - started < 5


class ScoreRecord:
    """A fake ``customer-scores`` record of the reading tests: customer ``c{customer}``, one event applied."""

    def __init__(self, offset: int, customer: int, at_s: float) -> None:
        self.at_offset, self.customer, self.at_s = offset, customer, at_s

    def error(self) -> None:
        return None

    def value(self) -> bytes:
        return json.dumps({"n_events": 1}).encode()

    def key(self) -> bytes:
        return f"c{self.customer}".encode()

    def timestamp(self) -> tuple[int, int]:
        return 1, int(self.at_s * 1000)

    def partition(self) -> int:
        return 0

    def offset(self) -> int:
        return self.at_offset


def test_reading_the_scores_back_fails_only_when_they_stop_coming(monkeypatch: pytest.MonkeyPatch) -> None:
    """The scores of a run are read back until they cover every event. At 10,000 customers a run sends over a
    million score records: a fixed 60 s to read them failed a run at 270,452 of 400,000 events, and the same load,
    read until the records stop coming, covered every event. Here 120 records, one per second of (fake) time: they
    cover every event and the read succeeds; when they stop short, it fails 60 s after the last one."""
    import cvm.bench_harness as harness
    import cvm.kafka
    from cvm.config import Config
    from cvm.exceptions import CvmError

    now = [0.0]

    class Consumer:
        def __init__(self, records: int) -> None:
            self.left = list(range(records))

        def assign(self, tps: object) -> None:
            pass

        def consume(self, num_messages: int, timeout: float) -> list[ScoreRecord]:
            now[0] += 1.0
            if not self.left:
                return []
            n = self.left.pop(0)
            return [ScoreRecord(n, n, now[0])]

        def close(self) -> None:
            pass

    def read(records: int, events: int) -> tuple[int, int, int]:
        h = harness.Harness.__new__(harness.Harness)
        h.events, h.scores_from, h.workdir = events, {}, Path("/nonexistent")
        monkeypatch.setattr(cvm.kafka, "make_consumer", lambda cfg, group: Consumer(records))
        return h._read_scores(Config.load(env={}), [], [])

    monkeypatch.setattr(harness.time, "monotonic", lambda: now[0])
    assert read(120, 120) == (1000, 1, 120_000)
    now[0] = 0.0
    with pytest.raises(CvmError, match="cover 100 of 120 events"):
        read(100, 120)
    assert now[0] == pytest.approx(100 + 61, abs=1)  # 60 s after the last record


def test_a_phase_s_scores_are_read_from_where_the_phase_before_stopped_writing(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The two-worker phase scores the load again on the same ``customer-scores`` topic. The single worker before it
    wrote past the record that completed its phase (its idle re-scoring of every customer, each record covering the
    customer's events). Read from where the first phase's reading stopped, those records made the second phase's
    window start before its workers did. The topic's end as the phase starts does not keep them all out either: the
    broker's latest offset may lag its last batch (Tansu's did, by 32 records). Records stamped before the phase
    started are left out."""
    import cvm.bench_harness as harness
    import cvm.kafka
    from cvm.config import Config

    topic: list[ScoreRecord] = []

    def write(customers: int, from_s: float) -> None:  # one record per customer, one a second
        topic.extend(ScoreRecord(len(topic), c, from_s + c) for c in range(customers))

    class Consumer:
        def __init__(self) -> None:
            self.position = 0

        def assign(self, tps: list) -> None:
            self.position = tps[0].offset

        def get_watermark_offsets(self, tp: object, timeout: float = 0, cached: bool = False) -> tuple[int, int]:
            return 0, max(0, len(topic) - 32)  # behind by a batch, as Tansu's can be

        def consume(self, num_messages: int, timeout: float) -> list[ScoreRecord]:  # what has come: 10 at a time
            batch = topic[self.position : self.position + min(num_messages, 10)]
            self.position += len(batch)
            return batch

        def close(self) -> None:
            pass

    monkeypatch.setattr(cvm.kafka, "make_consumer", lambda cfg, group: Consumer())
    cfg = Config.load(env={"CVM_PARTITIONS": "1"})
    h = harness.Harness.__new__(harness.Harness)
    h.events, h.scores_from, h.workdir = 100, {}, Path("/nonexistent")

    clock = [999.0]
    monkeypatch.setattr(harness.time, "time", lambda: clock[0])

    since_ms = h._scores_end(cfg)  # the first phase
    write(100, from_s=1000)  # its scores, the 100 events covered at 1099 s
    write(100, from_s=1200)  # its idle re-scoring, after its window
    assert h._read_scores(cfg, [], [], since_ms) == (1_000_000, 1, 1_099_000)

    clock[0] = 1900.0
    since_ms = h._scores_end(cfg)  # the second phase, once the first one's workers are stopped
    write(100, from_s=2000)
    assert h._read_scores(cfg, [], [], since_ms) == (2_000_000, 1, 2_099_000)
