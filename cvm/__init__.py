"""cvm: streaming customer-value scoring.

The `cvm` package holds what every process shares: the configuration, the Avro wire codec, the errors, the
metrics, the stop signals, logging, the embedded broker and the command line.
The data path itself lives in `schemas/` → `streams/` → `scoring/` → `sinks/`.
"""

from __future__ import annotations

from cvm.config import Config
from cvm.exceptions import CvmError

__all__ = ["Config", "CvmError"]
__version__ = "0.1.0"
