"""``cvm worker``: run one Faust scoring worker until SIGTERM/SIGINT."""

from __future__ import annotations

import argparse
import logging
import os
import shutil

from cvm.config import Config
from cvm.kafka import check_broker, create_topics

__all__ = ["main"]


def main(cfg: Config, args: argparse.Namespace) -> int:
    import faust

    from streams.app import create_app

    check_broker(cfg)
    create_topics(cfg)
    worker_id = getattr(args, "id", "") or f"w{os.getpid()}"
    if cfg.embedded_broker:
        # The embedded broker keeps topics in memory, so its changelog — not a local RocksDB left by an earlier
        # broker — is the truth: start from an empty store and recover the table from the changelog.
        shutil.rmtree(cfg.data_path / "workers" / worker_id, ignore_errors=True)
    app = create_app(cfg, worker_id)
    level = cfg.log_level.lower()
    worker = faust.Worker(app, loglevel=level, quiet=True, redirect_stdouts=False, override_logging=False)
    logging.getLogger("faust").setLevel(max(logging.WARNING, logging.getLogger().level))
    worker.execute_from_commandline()  # handles SIGTERM/SIGINT: stops agents, commits, leaves the group
    return 0
