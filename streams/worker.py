"""``cvm worker``: run one Faust scoring worker until SIGTERM/SIGINT."""

from __future__ import annotations

import argparse
import logging
import os

from cvm.config import Config
from cvm.exceptions import ConfigError
from cvm.kafka import check_broker, create_topics

__all__ = ["main"]


def main(cfg: Config, args: argparse.Namespace) -> int:
    import faust

    from streams.app import create_app

    if not 1 <= cfg.worker_batch <= 1_000_000:
        raise ConfigError(f"CVM_WORKER_BATCH={cfg.worker_batch}: a worker takes 1 to 1,000,000 events at once")
    check_broker(cfg)
    create_topics(cfg)
    worker_id = getattr(args, "id", "") or f"w{os.getpid()}"
    app = create_app(cfg, worker_id)
    level = cfg.log_level.lower()
    worker = faust.Worker(app, loglevel=level, quiet=True, redirect_stdouts=False, override_logging=False)
    logging.getLogger("faust").setLevel(max(logging.WARNING, logging.getLogger().level))
    worker.execute_from_commandline()  # handles SIGTERM/SIGINT: the batch in flight ends, commits, leaves the group
    return 0
