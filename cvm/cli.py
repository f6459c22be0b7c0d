"""The ``cvm`` command line.

Each sub-command is a function ``main(cfg, args) -> int`` in the module that owns the work; this file only parses
arguments, loads the configuration, and turns a :class:`CvmError` into one line on stderr and exit code 1.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence

from cvm.collector import roomy_gc
from cvm.config import Config
from cvm.exceptions import CvmError
from cvm.logs import setup_logging

__all__ = ["main"]

#: What ``cvm bench`` measures, in its order (``--skip`` leaves one out): here, where the parser is built, so that no
#: command imports the bench to list them; :data:`cvm.bench.MEASUREMENTS` is this tuple.
BENCH_MEASUREMENTS = (
    "raw",
    "faust",
    "quix",
    "pipeline",
    "floor",
    "pipeline_2w",
    "verify",
    "latency",
    "latency_live",
    "recovery",
    "restore",
)

#: sub-command → module whose ``main(cfg, args)`` runs it
COMMANDS = {
    "broker": "cvm.broker_cmd",
    "topics": "cvm.broker_cmd",
    "worker": "streams.worker",
    "learner": "streams.learner",
    "sink": "sinks.service",
    "simulate": "cvm.simulate",
    "replay": "cvm.replay",
    "up": "cvm.up",
    "sql": "sinks.query",
    "verify": "cvm.verify",
    "alerts": "sinks.alerts_cmd",
    "schemas": "cvm.broker_cmd",
    "config": "cvm.broker_cmd",
    "bench": "cvm.bench",
    "clv": "cvm.clv_cmd",
    "rebuild": "cvm.rebuild",
    "backtest": "cvm.backtest",
}


def _positive_int(text: str) -> int:
    value = int(text)
    if value <= 0:
        raise argparse.ArgumentTypeError(f"expected a positive whole number, got {text}")
    return value


def _positive_float(text: str) -> float:
    value = float(text)
    if value <= 0:
        raise argparse.ArgumentTypeError(f"expected a positive number, got {text}")
    return value


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="cvm", description="Streaming customer-value scoring: value, loyalty, CLV, churn risk and alerts."
    )
    parser.add_argument("--config", help="TOML configuration file (also CVM_CONFIG)")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    sub.add_parser("broker", help="run the embedded Kafka-protocol broker (Tansu) in the foreground")

    p = sub.add_parser("topics", help="create cvm's topics on the configured broker (idempotent)")
    p.add_argument("--list", action="store_true", help="list the topics and their partitions")

    p = sub.add_parser("worker", help="run a Faust scoring worker (several may run at once)")
    p.add_argument("--id", default="", help="name of this worker, used for its state directory")

    sub.add_parser("learner", help="fit the CLV models and train the churn model from the stream (run one)")

    p = sub.add_parser("sink", help="write events and scores to ClickHouse and serve the HTTP API")
    p.add_argument("--port", type=int, help="HTTP port (default CVM_HTTP_PORT, 8080)")
    p.add_argument("--host", help="HTTP bind address (default CVM_HTTP_HOST, 127.0.0.1)")

    p = sub.add_parser("simulate", help="generate realistic upstream events and publish them (or write a file)")
    p.add_argument("--customers", type=_positive_int, default=1000, help="number of customers (default 1000)")
    p.add_argument("--days", type=_positive_int, default=None, help="days of history (default 180)")
    p.add_argument("--rate", type=_positive_float, default=None, help="events per second at most (default: max)")
    p.add_argument("--seed", type=int, default=1, help="random seed: same seed, same events (default 1)")
    p.add_argument("--out", help="write JSON lines to this file instead of publishing")
    p.add_argument("--truth", help="write each customer's true churn time and cause to this JSON-lines file")
    p.add_argument(
        "--end", help="event time at which the history ends (ISO-8601; default: now, or 2026-01-01 with --out)"
    )
    p.add_argument("--duration", type=_positive_float, help="stop live traffic after this many seconds")
    p.add_argument(
        "--published",
        type=int,
        default=0,
        metavar="N",
        help="an earlier run with the same --customers, --days and --seed published its first N events: draw them "
        "without publishing them and go on from there (what cvm up runs when ClickHouse holds them)",
    )

    p = sub.add_parser("replay", help="publish a history file through the live topics")
    p.add_argument("file", help="JSON lines (simulator format), CSV, Avro container or Parquet file")
    p.add_argument("--type", choices=["transactions", "contacts", "payments"], help="event type of every row")
    p.add_argument(
        "--format", choices=["jsonl", "csv", "avro", "parquet"], help="file format (default: from the extension)"
    )
    p.add_argument("--map", action="append", default=[], metavar="FIELD=COLUMN", help="take FIELD from COLUMN")
    p.add_argument("--time-format", help="strptime format of time columns (default ISO-8601 or epoch)")
    p.add_argument("--rate", type=_positive_float, help="events per second at most (default: max)")
    p.add_argument("--max-bad", type=int, default=0, help="publish despite up to this many bad rows (default 0: none)")

    p = sub.add_parser("up", help="run broker, sink, worker and simulator together with a live status screen")
    p.add_argument("--customers", type=_positive_int, default=2000, help="simulated customers (default 2000)")
    p.add_argument("--days", type=_positive_int, default=120, help="days of simulated history (default 120)")
    p.add_argument("--rate", type=_positive_float, default=None, help="simulator events per second at most")
    p.add_argument("--seed", type=int, default=1, help="simulator seed (default 1)")
    p.add_argument("--duration", type=_positive_float, help="stop everything after this many seconds")
    p.add_argument("--no-simulate", action="store_true", help="start no simulator (replay your own data)")
    p.add_argument("--workers", type=_positive_int, default=1, help="number of scoring workers (default 1)")
    p.add_argument("--port", type=int, help="HTTP port of the sink (default 8080)")

    p = sub.add_parser("verify", help="check ClickHouse against what a history file must add up to, exactly")
    p.add_argument("file", help="the file given to cvm replay (same reading options)")
    p.add_argument("--type", choices=["transactions", "contacts", "payments"], help="event type of every row")
    p.add_argument(
        "--format", choices=["jsonl", "csv", "avro", "parquet"], help="file format (default: from the extension)"
    )
    p.add_argument("--map", action="append", default=[], metavar="FIELD=COLUMN", help="take FIELD from COLUMN")
    p.add_argument("--time-format", help="strptime format of time columns (default ISO-8601 or epoch)")
    p.add_argument("--replays", type=_positive_int, default=1, help="times the file was replayed, one after another")
    p.add_argument("--dead-letters", type=int, default=0, help="poison records published besides the file")
    p.add_argument(
        "--wait",
        type=float,
        default=0.0,
        help="read again until it matches, at most this many seconds (less once nothing changes for a while: "
        "26 s + twice CVM_IDLE_PARTITION_S)",
    )
    p.add_argument("--json", action="store_true", help="print one JSON object instead of a summary")

    p = sub.add_parser("sql", help="run a read-only query against ClickHouse")
    p.add_argument("query", help='the SQL text, e.g. "SELECT count() FROM cvm.customers FINAL"')
    p.add_argument("--format", choices=["tsv", "json"], default="tsv", help="output format (default tsv)")

    p = sub.add_parser("alerts", help="list recent alerts on at-risk high-value customers, newest first")
    p.add_argument("--since", help="alerts at or after this time: ISO-8601 (2026-03-01T08:00Z) or an age (24h, 7d)")
    p.add_argument("--format", choices=["table", "json"], default="table", help="output format (default table)")
    p.add_argument("--limit", type=_positive_int, default=50, help="at most this many alerts (default 50)")

    p = sub.add_parser("schemas", help="show or update the local schema registry file")
    p.add_argument("action", choices=["list", "sync"], help="list ids, or register changed .avsc files")

    sub.add_parser("config", help="print the effective configuration (secrets masked)")

    p = sub.add_parser("clv", help="fit the CLV models (BG/NBD, Gamma-Gamma) on the transactions in ClickHouse")
    p.add_argument("action", choices=["fit"], help="fit: print the parameters fitted as of --as-of")
    p.add_argument("--as-of", help="event time to fit as of (ISO-8601 or epoch; default: the latest transaction)")
    p.add_argument("--json", action="store_true", help="print one JSON object instead of a summary")

    p = sub.add_parser("rebuild", help="compute every customer's state and scores again from ClickHouse's raw tables")
    p.add_argument("--workers", type=_positive_int, default=1, help="scoring workers to fold with (default 1)")
    p.add_argument(
        "--reset-topics", action="store_true", help="on Kafka: delete cvm's own topics and groups first (required)"
    )

    p = sub.add_parser(
        "backtest", help="replay a history through a private stack with alerts on and print the alert and churn metrics"
    )
    p.add_argument("file", help="the history (any format cvm replay reads, e.g. cvm simulate --out)")
    p.add_argument("--truth", help="judge against this `cvm simulate --truth` file (default: the leaving cvm observed)")
    p.add_argument("--json", action="store_true", help="print one JSON object instead of tables")
    p.add_argument("--keep", metavar="DIR", help="keep the private stack's data and logs in DIR (new)")

    p = sub.add_parser("bench", help="measure throughput, latency and footprint against Faust and Quix Streams")
    p.add_argument("--events", type=_positive_int, default=400_000, help="events in the load (default 400000)")
    p.add_argument(
        "--customers",
        type=_positive_int,
        default=200_000,
        help="simulated customers (default 200000: a real base has far more customers than events per batch)",
    )
    p.add_argument("--json", action="store_true", help="print one JSON object instead of a table")
    p.add_argument(
        "--skip",
        action="append",
        choices=BENCH_MEASUREMENTS,
        help="leave out a measurement (repeatable)",
    )
    p.add_argument(
        "--recovery-customers",
        type=_positive_int,
        default=100_000,
        help="customers in the table the recovery measurement recovers (default 100000)",
    )
    p.add_argument("--profile", metavar="FILE", help="py-spy the single worker into FILE (.svg, .txt raw, .json)")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        cfg = Config.load(args.config)
        setup_logging(cfg)
        module = importlib.import_module(COMMANDS[args.command])
        with roomy_gc():  # every command holds many long-lived objects: see cvm.collector
            return int(module.main(cfg, args) or 0)
    except CvmError as exc:
        print(f"cvm {args.command}: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:  # output piped into `head` and the like
        sys.stderr.close()
        return 0


if __name__ == "__main__":
    sys.exit(main())
