"""CVM_LOG_FORMAT=json: one JSON object per line, as a process configured from its environment writes them."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

SCRIPT = """
import logging
from cvm.config import Config
from cvm.logs import setup_logging
setup_logging(Config.load())
log = logging.getLogger("cvm.test")
log.debug("not shown at INFO")
log.info("hello %s", "json", extra={"topic": "transactions"})
try:
    1 / 0
except ZeroDivisionError:
    log.warning("it failed", exc_info=True)
"""


def _run(tmp_path: Path, **env: str) -> list[str]:
    run = subprocess.run(
        [sys.executable, "-c", SCRIPT],
        env=dict(os.environ, CVM_DATA_DIR=str(tmp_path), CVM_LOG_LEVEL="INFO", **env),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert run.returncode == 0, run.stderr
    return run.stderr.splitlines()


def test_json_lines(tmp_path: Path) -> None:
    first, second = (json.loads(line) for line in _run(tmp_path, CVM_LOG_FORMAT="json"))
    assert first["level"] == "INFO" and first["logger"] == "cvm.test" and first["message"] == "hello json"
    assert first["topic"] == "transactions" and first["time"].endswith("Z")
    assert second["level"] == "WARNING" and "ZeroDivisionError" in second["error"]


def test_text_is_the_default(tmp_path: Path) -> None:
    lines = _run(tmp_path)
    assert " INFO cvm.test: hello json" in lines[0] and not lines[0].startswith("{")
