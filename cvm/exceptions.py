"""Errors of cvm: one root, one line each, and the ones an operator meets say what to do next."""

from __future__ import annotations

__all__ = [
    "BrokerUnavailable",
    "ClickHouseUnavailable",
    "ConfigError",
    "CvmError",
    "DecodeError",
    "InvalidEvent",
    "NothingToFit",
    "PortInUse",
    "QueryError",
    "RestoreError",
]


class CvmError(Exception):
    """Root of every error cvm raises on purpose; the CLI prints its message on one line and exits 1."""


class ConfigError(CvmError):
    """A setting is missing or malformed."""


class BrokerUnavailable(CvmError):
    """The Kafka bootstrap servers did not answer."""


class ClickHouseUnavailable(CvmError):
    """ClickHouse could not be reached or opened."""


class QueryError(CvmError):
    """ClickHouse refused a query (syntax, unknown table, not read-only)."""


class PortInUse(CvmError):
    """A TCP port cvm wants to listen on is taken."""


class DecodeError(CvmError):
    """A record's bytes are not a Confluent-framed Avro record of a known schema."""


class InvalidEvent(CvmError):
    """A decoded event breaks a rule of its contract (missing customer_id, NaN amount, absurd time)."""


class NothingToFit(CvmError):
    """There are no transactions (or no repeat purchases) to fit the CLV models on."""


class RestoreError(CvmError):
    """The broker's topics cannot be restored from ClickHouse's history as they are (cvm/restore.py)."""
