"""Every cvm command runs under cvm.collector's garbage-collection settings, and leaves Python's own behind."""

from __future__ import annotations

import gc
import sys
import types
from typing import Any

import pytest

from cvm import cli
from cvm.collector import THRESHOLDS


def test_a_command_runs_with_the_roomy_thresholds_and_frozen_start_up(monkeypatch: pytest.MonkeyPatch) -> None:
    seen: dict[str, Any] = {}

    def main(cfg: object, args: object) -> int:
        seen.update(threshold=gc.get_threshold(), frozen=gc.get_freeze_count())
        return 0

    probe = types.ModuleType("cvm_gc_probe")
    probe.main = main  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "cvm_gc_probe", probe)
    monkeypatch.setitem(cli.COMMANDS, "config", "cvm_gc_probe")  # `cvm config` stands in for every command
    before = gc.get_threshold()
    assert cli.main(["config"]) == 0
    assert seen["threshold"] == THRESHOLDS
    assert seen["frozen"] > 1000  # what start-up built: modules, classes, the configuration
    assert gc.get_threshold() == before and gc.get_freeze_count() == 0
