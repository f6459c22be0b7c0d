"""Errors of cvm: one root, one line each, and the ones an operator meets say what to do next."""

from __future__ import annotations

__all__ = [
    "BrokenContract",
    "BrokerUnavailable",
    "ClickHouseUnavailable",
    "ConfigError",
    "CvmError",
    "DecodeError",
    "InvalidEvent",
    "ModelRejected",
    "NoExchangeRate",
    "NothingToFit",
    "PortInUse",
    "QueryError",
    "RegistryUnavailable",
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


class RegistryUnavailable(CvmError):
    """The Schema Registry did not answer for a writer schema (refused, timed out, an error status) within
    ``CVM_SCHEMA_REGISTRY_WAIT_S``: its records are not decodable yet, but not poison either, so they are not
    dead-lettered; the process stops without committing them."""


class InvalidEvent(CvmError):
    """A decoded event breaks a rule of its contract (missing customer_id, NaN amount, absurd time).

    ``reason`` is the rule broken, without the values (``event_time before the floor``): what summaries count by.
    """

    def __init__(self, message: str, reason: str | None = None) -> None:
        super().__init__(message)
        self.reason = reason or message


class NoExchangeRate(InvalidEvent):
    """A transaction's currency has no rate to the base currency at its event date (CVM_FX_RATES)."""


class BrokenContract(CvmError):
    """A score message breaks schemas/customer_score.avsc (a required field missing or null, a value of the wrong
    type)."""


class NothingToFit(CvmError):
    """There are no transactions (or no repeat purchases) to fit the CLV models on."""


class ModelRejected(CvmError, ValueError):
    """A model message is unsigned, forged (its HMAC does not match CVM_MODEL_KEY) or malformed: refused, not loaded.

    ``reason`` is ``unsigned``, ``forged`` or ``malformed`` (the label of ``cvm_model_messages_refused_total``). It
    is a ``ValueError`` too, so a reader that skips malformed messages skips a refused one.
    """

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason


class RestoreError(CvmError):
    """The broker's topics cannot be restored from ClickHouse's history as they are (cvm/restore.py)."""
