"""``cvm sink``: migrate ClickHouse, serve the HTTP API (and ``/metrics``), and run the writer until SIGTERM/SIGINT.

Start-up fails fast, each failure on one line: ClickHouse unavailable, HTTP port taken or exposed without a token,
broker unreachable. On SIGTERM or SIGINT the writer stops consuming, writes what it holds, commits, and closes;
then the HTTP API stops and the command exits 0. A second signal interrupts a slow shutdown.
"""

from __future__ import annotations

from typing import Any

from cvm.config import Config
from cvm.kafka import ModelKey, check_broker, create_topics
from cvm.restore import Restorer
from cvm.signals import StopSignals
from sinks.clickhouse import connect, migrate
from sinks.http import ApiServer, check_exposure
from sinks.webhook import WebhookDeliverer
from sinks.writer import Writer

__all__ = ["main"]


def main(cfg: Config, args: Any) -> int:
    """Run the sink in the foreground; returns the exit code."""
    if getattr(args, "port", None) is not None:
        cfg = cfg.replace(http_port=args.port)
    if getattr(args, "host", None) is not None:
        cfg = cfg.replace(http_host=args.host)
    check_exposure(cfg)  # before opening anything: a refusal should cost nothing
    ModelKey.from_config(cfg)  # likewise: model-metrics messages are verified with it

    ch = connect(cfg)
    reader = None
    server = None
    webhook = None
    try:
        migrate(ch)
        reader = connect(cfg, readonly=True)
        writer = Writer(cfg, ch)
        restorer = Restorer(cfg, ch)

        def status() -> dict[str, Any]:
            return {**writer.stats(), "restore": restorer.stats()}

        if cfg.alert_webhook_url:
            webhook = WebhookDeliverer.from_config(cfg).start()
            writer.alert_listener = webhook.submit
            hook = webhook

            def status() -> dict[str, Any]:
                return {**writer.stats(), "restore": restorer.stats(), "webhook": hook.stats()}

        server = ApiServer(cfg, reader, status=status).start()  # port taken: fail before touching Kafka
        check_broker(cfg)
        create_topics(cfg)

        with StopSignals() as stop:
            print(
                f"cvm sink: HTTP API on {server.url} (dashboard /, SQL /api/sql, metrics /metrics); writing to "
                f"{cfg.describe()['clickhouse_url']} database {cfg.clickhouse_database}",
                flush=True,
            )
            # A broker that lost cvm's topics gets ClickHouse's history back first (cvm/restore.py).
            epoch = restorer.run(stop.event)
            if epoch is not None:
                writer.epoch = epoch
                writer.run(stop.event)
    finally:
        if webhook is not None:
            webhook.stop()
        if server is not None:
            server.stop()
        if reader is not None:
            reader.close()
        ch.close()
    return 0
