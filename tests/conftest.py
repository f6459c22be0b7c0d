"""Shared fixtures: a real Tansu broker per test session, a fresh configuration per test (random topic prefix,
consumer group and data directory), and helpers to run cvm processes."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import settings

from cvm.broker import Broker
from cvm.config import Config

#: The model signing key of every test: in this process's environment (code that signs without being handed a key
#: uses it) and in every test configuration, so processes the tests start sign and verify with it too.
MODEL_KEY = "tests-model-key-0123456789abcdef"
os.environ["CVM_MODEL_KEY"] = MODEL_KEY

# No time limit per example: hypothesis's default (200 ms) is a timed assertion, and it failed a property test of
# tests/scoring/test_churn.py once on a machine busy with other work. Slowness is measured by `cvm bench`.
settings.register_profile("cvm", deadline=None)
settings.load_profile("cvm")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture(scope="session")
def broker_port() -> Iterator[int]:
    """One real Tansu broker for the session; tests isolate themselves by topic prefix."""
    port = free_port()
    with Broker(port):
        yield port


@pytest.fixture
def cfg(broker_port: int, tmp_path: Path) -> Config:
    """A configuration of its own: random topics, group and data directory on the session's broker."""
    tag = uuid.uuid4().hex[:8]
    return Config.load(
        env={
            "CVM_BROKER_PORT": str(broker_port),
            "CVM_TOPIC_PREFIX": f"t{tag}-",
            "CVM_APP_ID": f"cvm-{tag}",
            "CVM_DATA_DIR": str(tmp_path / "data"),
            "CVM_CLICKHOUSE_DATABASE": f"cvm_{tag}",
            "CVM_HTTP_PORT": str(free_port()),
            "CVM_LOG_LEVEL": "WARNING",
            "CVM_WORKER_BATCH_S": "0.05",
            "CVM_SINK_FLUSH_S": "0.2",
            "CVM_MODEL_KEY": MODEL_KEY,
            # tests start several workers and learners at once: /metrics only where a test asks for it
            "CVM_WORKER_METRICS_PORT": "0",
            "CVM_LEARNER_METRICS_PORT": "0",
        }
    )


def spawn(cfg: Config, *argv: str, log: Path) -> subprocess.Popen[bytes]:
    """Start ``cvm ARGV...`` as a real child process configured by ``cfg``; output goes to ``log``."""
    env = dict(os.environ, **cfg.to_env(), PYTHONUNBUFFERED="1")
    with open(log, "ab") as out:
        return subprocess.Popen([sys.executable, "-m", "cvm.cli", *argv], stdout=out, stderr=subprocess.STDOUT, env=env)


def stop(proc: subprocess.Popen[bytes], timeout: float = 30) -> int:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    return proc.returncode
