"""Issue 15's acceptance path: upstream as it really is. A 300-customer, 120-day simulated history that ends on
1998-06-30 is published as upstream systems publish it (Confluent-framed Avro, their own keys) into a stack started
with ``cvm up --no-simulate``, and ``cvm verify`` finds ClickHouse exactly equal to the file.

Two publications of the same file:

* keyed by customer_id (what ``cvm replay`` does): 1998 dates, the floor, ``cvm verify`` and ``cvm simulate --end``
  in the past, end to end;
* mixed keys — a third of the records without a key, a third keyed by their event id, a third by customer_id: the
  worker re-keys them by customer_id through its re-key topic before folding them.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from cvm.codec import Codec
from cvm.config import Config
from cvm.events import from_json, parse_time
from cvm.kafka import create_topics, make_producer
from tests.conftest import free_port

pytestmark = pytest.mark.integration

END = "1998-06-30T00:00:00Z"

#: How a record is keyed, by its position in the file: no key, its event id, its customer id.
MIXED: tuple[Callable[[dict], bytes | None], ...] = (
    lambda rec: None,
    lambda rec: rec["event_id"].encode(),
    lambda rec: rec["customer_id"].encode(),
)
BY_CUSTOMER: tuple[Callable[[dict], bytes | None], ...] = (lambda rec: rec["customer_id"].encode(),)


def publish(cfg: Config, path: Path, keys: tuple[Callable[[dict], bytes | None], ...]) -> int:
    """Publish a JSON-lines history as an upstream system would: Confluent-framed Avro (the local registry's ids),
    in file order, the i-th record keyed by ``keys[i % len(keys)]``; returns the number of records."""
    create_topics(cfg)
    codec, producer = Codec(), make_producer(cfg)
    n = 0
    with open(path, encoding="utf-8") as fh:
        for line in fh:
            kind, rec = from_json(json.loads(line))
            producer.produce(cfg.topic(kind), value=codec.encode(kind, rec), key=keys[n % len(keys)](rec))
            n += 1
            if not n % 1000:
                producer.poll(0)
    assert producer.flush(30) == 0
    return n


def _cvm(cfg: Config, *argv: str, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "cvm.cli", *argv],
        env={**os.environ, **cfg.to_env()},
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def _wait_http(cfg: Config, up: subprocess.Popen[bytes], timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert up.poll() is None, "cvm up exited"
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{cfg.http_port}/health", timeout=1):
                return
        except OSError:
            time.sleep(0.3)
    raise AssertionError("the sink of cvm up did not start")


@pytest.fixture
def history(cfg: Config, tmp_path: Path) -> Path:
    """`cvm simulate --out` of the issue's history: 300 customers, 120 days, ending on 1998-06-30."""
    path = tmp_path / "history-1998.jsonl"
    made = _cvm(
        cfg, "simulate", "--customers", "300", "--days", "120", "--end", END, "--seed", "15", "--out", str(path)
    )
    assert made.returncode == 0, made.stderr
    times = [json.loads(line)["event_time"] for line in path.read_text().splitlines()]
    assert len(times) > 3000 and max(parse_time(t) for t in times) <= parse_time(END)
    assert min(times).startswith("1998-0"), "a history from before 2000"
    return path


@contextmanager
def running_up(cfg: Config, tmp_path: Path) -> Iterator[Config]:
    """`cvm up --no-simulate` on a broker of its own (cvm up starts the embedded broker); stopped with Ctrl-C."""
    own = cfg.replace(broker_port=free_port(), http_port=free_port())
    logs = tmp_path / "up.log"
    with open(logs, "ab") as log:
        up = subprocess.Popen(
            [sys.executable, "-m", "cvm.cli", "up", "--no-simulate"],
            stdout=log,
            stderr=subprocess.STDOUT,
            env={**os.environ, **own.to_env(), "PYTHONUNBUFFERED": "1"},
        )
    try:
        _wait_http(own, up)
        yield own
    finally:
        up.send_signal(signal.SIGINT)
        try:
            code = up.wait(120)
        except subprocess.TimeoutExpired:
            up.kill()
            code = up.wait()
    assert code == 0, logs.read_text()[-3000:]


@pytest.fixture
def stack(cfg: Config, tmp_path: Path) -> Iterator[Config]:
    with running_up(cfg, tmp_path) as own:
        yield own


def _verify(cfg: Config, path: Path) -> str:
    checked = _cvm(cfg, "verify", str(path), "--wait", "240")
    report = checked.stdout + checked.stderr
    assert checked.returncode == 0, report
    assert "exact match" in report
    return report


def test_a_1998_history_keyed_by_customer_is_verified_exactly(stack: Config, history: Path) -> None:
    n = publish(stack, history, BY_CUSTOMER)
    report = _verify(stack, history)
    assert f"published {n:,} events" in report and "dead letters: 0 found, 0 expected" in report


def test_a_1998_history_with_mixed_keys_is_verified_exactly(stack: Config, history: Path) -> None:
    n = publish(stack, history, MIXED)
    report = _verify(stack, history)
    assert f"published {n:,} events" in report and "dead letters: 0 found, 0 expected" in report


def test_other_currencies_count_converted_and_a_missing_rate_is_a_dead_letter(cfg: Config, tmp_path: Path) -> None:
    rates = tmp_path / "rates.csv"
    rates.write_text("date,currency,rate_to_base\n1998-06-01,USD,0.9\n1998-06-01,GBP,1.5\n")
    path = tmp_path / "sales.csv"
    path.write_text(
        "customer_id,event_time,amount,currency,gross_margin\n"
        "c1,1998-06-02T10:00:00Z,100,EUR,30\n"
        "c1,1998-06-03T10:00:00Z,100,USD,30\n"  # 90 EUR, margin 27
        "c2,1998-06-04T10:00:00Z,10.01,GBP,\n"  # 15.02 EUR (15.015 rounded), margin 0.3 x 15.02 = 4.51
        "c2,1998-06-05T10:00:00Z,-10,USD,-3\n"  # a refund: -9 EUR, margin -2.70
    )
    with running_up(cfg.replace(fx_rates=str(rates)), tmp_path) as own:
        replayed = _cvm(own, "replay", str(path), "--type", "transactions")
        assert replayed.returncode == 0, replayed.stderr
        checked = _cvm(own, "verify", str(path), "--type", "transactions", "--wait", "120")
        assert checked.returncode == 0, checked.stdout + checked.stderr
        db = own.clickhouse_database
        rows = _cvm(own, "sql", f"SELECT customer_id, revenue, gross_margin FROM {db}.customers FINAL ORDER BY 1")
        assert rows.stdout.split()[-6:] == ["c1", "190", "57", "c2", "6.02", "1.81"], rows.stdout

        # Published by other means than replay (which refuses it): a transaction in yen, for which there is no rate.
        yen = {"event_id": "y1", "customer_id": "c3", "event_time": parse_time("1998-06-05"), "amount": 1000.0,
               "currency": "JPY"}  # fmt: skip
        producer = make_producer(own)
        producer.produce(own.topic("transactions"), value=Codec().encode("transactions", yen), key=b"c3")
        assert producer.flush(30) == 0
        deadline = time.monotonic() + 60
        letters = ""
        while "NoExchangeRate" not in letters and time.monotonic() < deadline:
            time.sleep(0.5)
            letters = _cvm(own, "sql", f"SELECT error_class, error FROM {db}.dead_letters").stdout
        assert "NoExchangeRate\tno JPY rate to EUR on 1998-06-05" in letters, letters
        raw = _cvm(
            own, "sql", f"SELECT currency, amount, amount_base FROM {db}.transactions FINAL WHERE event_id = 'y1'"
        )
        assert raw.stdout.split()[-3:] == ["JPY", "1000", "\\N"], raw.stdout  # the raw table keeps what was sent
        customers = _cvm(own, "sql", f"SELECT count() FROM {db}.customers FINAL WHERE customer_id = 'c3'")
        assert customers.stdout.split()[-1] == "0", "it counts nowhere"
