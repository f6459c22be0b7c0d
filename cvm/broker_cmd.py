"""Small operator commands: ``cvm broker``, ``cvm topics``, ``cvm schemas``, ``cvm config``."""

from __future__ import annotations

import argparse
import json
import sys

from cvm.config import Config
from cvm.exceptions import ConfigError
from cvm.signals import StopSignals

__all__ = ["main"]


def main(cfg: Config, args: argparse.Namespace) -> int:
    return {"broker": _broker, "topics": _topics, "schemas": _schemas, "config": _config}[args.command](cfg, args)


def _broker(cfg: Config, args: argparse.Namespace) -> int:
    from cvm.broker import Broker
    from cvm.kafka import create_topics

    if not cfg.embedded_broker:
        raise ConfigError(f"CVM_KAFKA_BOOTSTRAP={cfg.kafka_bootstrap} names an external broker: unset it to run Tansu")
    with StopSignals() as stop:
        broker = Broker(cfg.broker_port).start()
        try:
            create_topics(cfg)
            print(
                f"cvm broker: Tansu listening on {cfg.bootstrap} (memory storage: topics are lost on restart)",
                file=sys.stderr,
                flush=True,
            )
            while not stop.wait(0.5):
                if broker.proc is not None and broker.proc.poll() is not None:
                    print(f"cvm broker: Tansu exited with code {broker.proc.returncode}", file=sys.stderr)
                    return 1
        finally:
            broker.stop()
    return 0


def _topics(cfg: Config, args: argparse.Namespace) -> int:
    from cvm.kafka import TOPICS, check_broker, create_topics

    created = create_topics(cfg)
    for name in created:
        print(f"created {name}")
    if args.list:
        md = check_broker(cfg).list_topics(timeout=10)
        for base, spec in TOPICS.items():
            full = cfg.topic(base)
            parts = len(md.topics[full].partitions) if full in md.topics else 0
            print(f"{full}\t{parts}\t{spec.doc}")
    return 0


def _schemas(cfg: Config, args: argparse.Namespace) -> int:
    from cvm.codec import LocalRegistry

    registry = LocalRegistry()
    if args.action == "sync":
        added = registry.sync()
        print(f"registered ids {added}" if added else "schemas/registry.json is up to date")
    for entry in registry.entries:
        print(f"{entry['id']}\t{entry['subject']}\t{entry['fingerprint']}")
    return 0


def _config(cfg: Config, args: argparse.Namespace) -> int:
    print(json.dumps(cfg.describe(), indent=2))
    return 0
