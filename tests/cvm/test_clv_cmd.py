"""``cvm clv fit`` on real chDB: directly on the data and through a running sink, against the models fitted on
summaries computed in Python from the same rows.

chDB allows one data path per process, so this test keeps chDB out of the pytest process: the rows are written
by a child process, ``cvm clv fit`` runs as a command (direct) or in this process against a ``cvm sink`` child
(through its HTTP API).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from argparse import Namespace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest

from cvm import cli, clv_cmd
from cvm.config import Config
from cvm.events import iso
from cvm.exceptions import ConfigError
from scoring.bgnbd import fit_bgnbd
from scoring.clv import occasion_facts, summaries
from scoring.gamma_gamma import fit_gamma_gamma
from tests.conftest import free_port, spawn, stop

pytestmark = pytest.mark.integration

DAY = 86_400_000
START = 1_735_689_600_000  # 2025-01-01T00:00:00Z

_WRITE = """
import json, sys
from datetime import UTC, datetime
from cvm.config import Config
from sinks.clickhouse import connect, migrate

cfg = Config.load()
rows = json.load(open(sys.argv[1]))
ch = connect(cfg)
migrate(ch)
cols = ["event_id", "customer_id", "event_time", "amount", "currency", "amount_base", "channel", "category"]
data = [[r[0], r[1], datetime.fromtimestamp(r[2] / 1000, UTC), r[3], "EUR", r[3], "web", "books"] for r in rows]
for i in range(0, len(data), 500):  # several inserts, so that FINAL has duplicates across parts to collapse
    ch.insert("transactions", cols, data[i : i + 500], token=f"batch-{i}")
ch.insert("transactions", cols, data[:50], token="replayed")  # upstream duplicates: same event ids again
empty = connect(cfg.replace(clickhouse_database=sys.argv[2]))
migrate(empty)
"""


def _history(seed: int = 7) -> list[tuple[str, str, int, float]]:
    """Transactions of 400 customers: repeat buyers who drop out, one-off buyers, several purchases on one day,
    refunds, zero amounts, and customers who only ever got refunds (not in the population)."""
    rng = np.random.default_rng(seed)
    rows: list[tuple[str, str, int, float]] = []
    n = 0

    def add(cid: str, t: int, amount: float) -> None:
        nonlocal n
        rows.append((f"e{n}", cid, int(t), round(float(amount), 2)))
        n += 1

    for c in range(400):
        cid = f"c{c}"
        t = START + int(rng.integers(0, 150 * DAY))
        if c % 40 == 0:
            add(cid, t, -25.0)  # a refund only: no purchase occasion
            continue
        rate = rng.gamma(0.6, 1 / 3.0)  # purchases per day while alive
        p_drop = rng.beta(1.0, 4.0)
        value = rng.gamma(5.0, 8.0)
        add(cid, t, rng.gamma(4.0, value / 4.0))
        while True:
            t += int(rng.exponential(1 / max(rate, 1e-3)) * DAY)
            if t > START + 240 * DAY:
                break
            add(cid, t, rng.gamma(4.0, value / 4.0))
            if rng.random() < 0.2:
                add(cid, t + 1000, rng.gamma(4.0, value / 4.0))  # same day: the same occasion
            if rng.random() < 0.1:
                add(cid, t + 2000, -10.0)  # a refund: no occasion, no effect on the repeat spend
            if rng.random() < 0.05:
                add(cid, t + DAY // 2, 0.0)  # a zero amount: no occasion
            if rng.random() < p_drop:
                break
    return rows


def _reference(rows: list[tuple[str, str, int, float]], as_of_ms: int, period_days: int = 1) -> dict[str, Any]:
    """The models fitted on summaries computed in Python from the rows (duplicates by event id collapsed)."""
    by_customer: dict[str, dict[str, tuple[int, float]]] = {}
    for event_id, cid, t, amount in rows:
        by_customer.setdefault(cid, {})[event_id] = (t, amount)
    facts = [occasion_facts(txs.values(), period_days, as_of_ms) for txs in by_customer.values()]
    kept = [f for f in facts if f is not None]
    first, last, n, value = (np.array(col) for col in zip(*kept, strict=True))
    x, t_x, age, m = summaries(first, last, n, value, as_of_ms // (period_days * DAY), period_days)
    bg, gg = fit_bgnbd(x, t_x, age), fit_gamma_gamma(x, m)
    return {
        "as_of": iso(as_of_ms),
        "customers": len(kept),
        "bgnbd": {**bg.params.to_dict(), "time_unit": "week", "log_likelihood": bg.log_likelihood},
        "gamma_gamma": {**gg.params.to_dict(), "customers": gg.customers},
    }


def _assert_same(got: dict[str, Any], want: dict[str, Any]) -> None:
    assert got.keys() == want.keys()
    assert got["as_of"] == want["as_of"] and got["customers"] == want["customers"]
    assert got["bgnbd"].keys() == want["bgnbd"].keys() and got["bgnbd"]["time_unit"] == "week"
    assert got["gamma_gamma"].keys() == want["gamma_gamma"].keys()
    assert got["gamma_gamma"]["customers"] == want["gamma_gamma"]["customers"]
    for part in ("bgnbd", "gamma_gamma"):
        for key, value in want[part].items():
            if isinstance(value, float):
                assert got[part][key] == pytest.approx(value, rel=1e-6), (part, key)


def _run(cfg: Config, *argv: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, **cfg.to_env()}
    return subprocess.run(
        [sys.executable, "-m", "cvm.cli", *argv], env=env, capture_output=True, text=True, timeout=300, check=False
    )


@pytest.fixture
def filled(cfg: Config, tmp_path: Path) -> tuple[Config, list[tuple[str, str, int, float]]]:
    """cfg on a chDB data path of its own, whose database holds the history (and a second database, empty)."""
    cfg = cfg.replace(clickhouse_url=f"chdb://{tmp_path / 'clickhouse'}", http_port=free_port())
    rows = _history()
    (tmp_path / "rows.json").write_text(json.dumps(rows))
    script = tmp_path / "write.py"
    script.write_text(_WRITE)
    done = subprocess.run(
        [sys.executable, str(script), str(tmp_path / "rows.json"), cfg.clickhouse_database + "_empty"],
        env={**os.environ, **cfg.to_env(), "PYTHONPATH": str(Path(__file__).resolve().parents[2])},
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    return cfg, rows


def test_clv_fit_direct_and_through_the_sink(
    filled: tuple[Config, list[tuple[str, str, int, float]]],
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    cfg, rows = filled
    latest = max(r[2] for r in rows)
    as_of = START + 200 * DAY + 12 * 3_600_000  # mid-day: age counts the as-of day's period

    # direct on chDB (no sink answers), as a command
    got = _run(cfg, "clv", "fit", "--json", "--as-of", iso(as_of))
    assert got.returncode == 0, got.stderr
    assert got.stdout.count("\n") == 1
    _assert_same(json.loads(got.stdout), _reference(rows, as_of))

    default = _run(cfg, "clv", "fit", "--json")  # as of the latest transaction
    assert default.returncode == 0, default.stderr
    _assert_same(json.loads(default.stdout), _reference(rows, latest))

    text = _run(cfg, "clv", "fit", "--as-of", str(as_of))  # epoch milliseconds work too
    assert text.returncode == 0, text.stderr
    assert "BG/NBD" in text.stdout and "Gamma-Gamma" in text.stdout and iso(as_of) in text.stdout

    weekly = _run(cfg.replace(clv_period_days=7), "clv", "fit", "--json", "--as-of", iso(as_of))
    assert weekly.returncode == 0, weekly.stderr
    _assert_same(json.loads(weekly.stdout), _reference(rows, as_of, period_days=7))

    nothing_yet = _run(cfg, "clv", "fit", "--as-of", "2024-01-01T00:00:00Z")
    assert nothing_yet.returncode == 1
    assert nothing_yet.stderr.count("\n") == 1 and nothing_yet.stderr.startswith("cvm clv: no purchase")

    # through a running sink (it owns chDB now); this process never opens chDB
    sink = spawn(cfg, "sink", log=tmp_path / "sink.log")
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            try:
                if httpx.get(f"http://127.0.0.1:{cfg.http_port}/health", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            assert sink.poll() is None, (tmp_path / "sink.log").read_text()
            time.sleep(0.2)
        assert clv_cmd.main(cfg, Namespace(action="fit", as_of=iso(as_of), json=True)) == 0
        _assert_same(json.loads(capsys.readouterr().out), _reference(rows, as_of))

        with pytest.raises(clv_cmd.NothingToFit, match="no transactions"):
            clv_cmd.main(cfg.replace(clickhouse_database=cfg.clickhouse_database + "_empty"), Namespace(as_of=None))

        for key, value in cfg.to_env().items():
            monkeypatch.setenv(key, value)
        assert cli.main(["clv", "fit", "--as-of", "the day before yesterday"]) == 1
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and err.startswith("cvm clv: --as-of 'the day before yesterday' is not a time")
    finally:
        stop(sink)


def test_a_bad_as_of_is_refused_before_opening_anything(cfg: Config, tmp_path: Path) -> None:
    cfg = cfg.replace(clickhouse_url=f"chdb://{tmp_path / 'none'}", http_port=free_port())
    with pytest.raises(ConfigError, match="not a time"):
        clv_cmd.fit_as_of(cfg, "2025-02-30")
    assert not (tmp_path / "none").exists()


def test_the_sql_computes_the_documented_facts() -> None:
    sql = clv_cmd.occasions_sql("cvm", START, 1)
    assert "FROM cvm.transactions FINAL" in sql and "amount_base > 0" in sql and "sum(amount_base)" in sql
    assert "cityHash64" not in sql and "cityHash64(customer_id) % 3 = 2" in clv_cmd.occasions_sql("cvm", 0, 1, 3, 2)
    assert datetime.fromtimestamp(START / 1000, UTC).isoformat() == "2025-01-01T00:00:00+00:00"
