"""Confluent wire format: magic byte 0, a 4-byte big-endian schema id, then the Avro binary body.

Schemas are parsed once. Their ids come from a Confluent Schema Registry when ``CVM_SCHEMA_REGISTRY_URL`` is set,
otherwise from the local, deterministic registry file ``schemas/registry.json`` (see :class:`LocalRegistry`).

Timestamps stay integers (milliseconds since the epoch) inside cvm: the codec reads and writes the ``long`` under
the ``timestamp-millis`` logical type without turning it into a ``datetime``; exact and faster.

>>> codec = Codec(LocalRegistry())
>>> raw = codec.encode("transactions", {"event_id": "e1", "customer_id": "c1", "event_time": 1_700_000_000_000,
...                                     "amount": 12.5})
>>> raw[0], len(raw) > 5
(0, True)
>>> kind, rec = codec.decode(raw)
>>> kind, rec["customer_id"], rec["amount"], rec["gross_margin"], rec["event_time"]
('transactions', 'c1', 12.5, None, 1700000000000)
>>> codec.decode(b"garbage")
Traceback (most recent call last):
cvm.exceptions.DecodeError: not Confluent wire format: magic byte 0x67, expected 0x00
"""

from __future__ import annotations

import copy
import hashlib
import io
import json
import logging
import struct
import time
from pathlib import Path
from typing import Any

import fastavro

from cvm.exceptions import ConfigError, DecodeError, RegistryUnavailable

__all__ = ["KINDS", "Codec", "LocalRegistry", "SchemaRegistry", "load_schema", "make_registry"]

SCHEMA_DIR = Path(__file__).resolve().parent.parent / "schemas"

#: Event kind (the topic's base name) → its .avsc file.
KINDS = {"transactions": "transaction.avsc", "contacts": "contact.avsc", "payments": "payment.avsc"}

_HEADER = struct.Struct(">bI")

log = logging.getLogger("cvm.codec")


def load_schema(kind: str) -> dict[str, Any]:
    """The JSON schema of one event kind, as written in ``schemas/``."""
    return json.loads((SCHEMA_DIR / KINDS[kind]).read_text())


def _fingerprint(schema: dict[str, Any]) -> str:
    canonical = fastavro.schema.to_parsing_canonical_form(fastavro.parse_schema(copy.deepcopy(schema)))
    return hashlib.sha256(canonical.encode()).hexdigest()[:16]


def _strip_logical(schema: Any) -> Any:
    """The same schema with logical types removed, so timestamps stay ``int`` milliseconds."""
    if isinstance(schema, dict):
        return {k: _strip_logical(v) for k, v in schema.items() if k != "logicalType"}
    if isinstance(schema, list):
        return [_strip_logical(s) for s in schema]
    return schema


def _parse(schema: dict[str, Any]) -> Any:
    return fastavro.parse_schema(_strip_logical(copy.deepcopy(schema)))


class LocalRegistry:
    """Schema ids kept in a JSON file next to the .avsc contracts, deterministic across machines.

    Each subject (``<kind>-value``) has its versions, each with a global id, so that records written with an older
    version still decode. :meth:`sync` appends a version when an .avsc changed.
    """

    def __init__(self, path: Path | None = None) -> None:
        self.path = path or SCHEMA_DIR / "registry.json"
        doc = json.loads(self.path.read_text()) if self.path.exists() else {"schemas": []}
        self.entries: list[dict[str, Any]] = doc["schemas"]

    def latest_id(self, kind: str, schema: dict[str, Any]) -> int:
        """The id under which records of ``kind`` are written; the .avsc must be registered."""
        fp = _fingerprint(schema)
        for entry in reversed(self.entries):
            if entry["subject"] == f"{kind}-value" and entry["fingerprint"] == fp:
                return int(entry["id"])
        raise ConfigError(
            f"schema of {kind} is not in {self.path.name}: run 'cvm schemas sync' after changing schemas/"
        )

    def schema_by_id(self, schema_id: int) -> tuple[str, dict[str, Any]] | None:
        for entry in self.entries:
            if entry["id"] == schema_id:
                return entry["subject"].removesuffix("-value"), entry["schema"]
        return None

    def sync(self) -> list[int]:
        """Register every .avsc that changed since its last version; return the new ids."""
        added = []
        for kind in KINDS:
            schema = load_schema(kind)
            fp = _fingerprint(schema)
            if any(e["subject"] == f"{kind}-value" and e["fingerprint"] == fp for e in self.entries):
                continue
            new_id = max((e["id"] for e in self.entries), default=0) + 1
            self.entries.append({"id": new_id, "subject": f"{kind}-value", "fingerprint": fp, "schema": schema})
            added.append(new_id)
        if added:
            self.path.write_text(json.dumps({"schemas": self.entries}, indent=1, sort_keys=True) + "\n")
        return added


class SchemaRegistry:
    """A Confluent Schema Registry: registers cvm's schemas and fetches unknown writer schemas by id.

    An upstream's schema is recognised by its record name (``Transaction``, ``Contact``, ``Payment``, in any
    namespace) and read through cvm's own schema (Avro schema resolution: fields cvm does not know are skipped).
    While the registry does not answer for a writer schema (refused, timed out, an error status), the records wait:
    :meth:`schema_by_id` tries again with backoff for ``wait_s`` seconds, then raises
    :class:`~cvm.exceptions.RegistryUnavailable`. Only an id the registry says it does not know is undecodable.
    """

    def __init__(self, url: str, wait_s: float = 60.0) -> None:
        from confluent_kafka.schema_registry import SchemaRegistryClient

        self.client = SchemaRegistryClient({"url": url})
        self.url = url
        self.wait_s = wait_s

    def latest_id(self, kind: str, schema: dict[str, Any]) -> int:
        from confluent_kafka.schema_registry import Schema

        try:
            return int(self.client.register_schema(f"{kind}-value", Schema(json.dumps(schema), "AVRO")))
        except Exception as exc:  # the client raises transport and HTTP errors of several kinds
            raise ConfigError(
                f"schema registry {self.url} refused or did not answer ({exc}): check CVM_SCHEMA_REGISTRY_URL"
            ) from None

    def schema_by_id(self, schema_id: int) -> tuple[str, dict[str, Any]] | None:
        from confluent_kafka.schema_registry.error import SchemaRegistryError

        deadline, delay = time.monotonic() + self.wait_s, 0.25
        while True:
            try:
                found = self.client.get_schema(schema_id)
                break
            except SchemaRegistryError as exc:
                if exc.http_status_code == 404:
                    return None  # the registry does not know it: undecodable
                problem = f"answered {exc.http_status_code} ({exc.error_message})"
            except Exception as exc:  # the client raises transport errors of several kinds
                problem = f"did not answer ({exc.__class__.__name__}: {exc})"
            from cvm import metrics  # here, not at the top: every cvm command imports the codec, few need metrics

            metrics.registry_failures.inc()
            left = deadline - time.monotonic()
            if left <= 0:
                raise RegistryUnavailable(
                    f"schema registry {self.url} {problem} for schema id {schema_id} for {self.wait_s:g} s: its "
                    "records were not decoded and are read again after a restart; check CVM_SCHEMA_REGISTRY_URL"
                )
            log.warning("schema registry %s %s for schema id %d: its records wait (retry in %.2f s)",
                        self.url, problem, schema_id, min(delay, left))  # fmt: skip
            time.sleep(min(delay, left))
            delay = min(delay * 2, 5.0)
        schema = json.loads(found.schema_str)
        name = str(schema.get("name", "")).rsplit(".", 1)[-1] if isinstance(schema, dict) else ""
        kind = _KIND_OF_RECORD.get(name)
        if kind is None:
            raise DecodeError(
                f"schema id {schema_id} is a record named {name or '(none)'!r}, not one of cvm's events "
                f"({', '.join(_KIND_OF_RECORD)})"
            )
        return kind, schema


#: The record name of each event kind's schema (schemas/*.avsc), whatever the namespace.
_KIND_OF_RECORD = {load_schema(kind)["name"]: kind for kind in KINDS}


def make_registry(schema_registry_url: str = "", wait_s: float = 60.0) -> LocalRegistry | SchemaRegistry:
    """The registry a configuration asks for (``wait_s``: ``CVM_SCHEMA_REGISTRY_WAIT_S``)."""
    return SchemaRegistry(schema_registry_url, wait_s) if schema_registry_url else LocalRegistry()


class Codec:
    """Encode and decode cvm events in the Confluent wire format, schemas parsed once."""

    def __init__(self, registry: LocalRegistry | SchemaRegistry | None = None) -> None:
        self.registry = registry or LocalRegistry()
        self._writers: dict[str, tuple[bytes, Any]] = {}
        self._readers: dict[int, tuple[str, Any, Any]] = {}
        self._latest = {kind: _parse(load_schema(kind)) for kind in KINDS}
        for kind in KINDS:
            schema_id = self.registry.latest_id(kind, load_schema(kind))
            self._writers[kind] = (_HEADER.pack(0, schema_id), self._latest[kind])
            self._readers[schema_id] = (kind, self._latest[kind], None)

    def encode(self, kind: str, record: dict[str, Any]) -> bytes:
        """The wire bytes of one event of ``kind``; raises :class:`DecodeError` when it does not fit the schema."""
        header, parsed = self._writers[kind]
        buf = io.BytesIO()
        buf.write(header)
        try:
            fastavro.schemaless_writer(buf, parsed, record)
        except (ValueError, TypeError, KeyError, AttributeError) as exc:
            raise DecodeError(f"{kind} record does not fit its schema: {exc}") from exc
        return buf.getvalue()

    def decode(self, data: bytes | None) -> tuple[str, dict[str, Any]]:
        """The kind and the record of wire bytes; raises :class:`DecodeError` on anything else."""
        if not data or len(data) < 5:
            raise DecodeError(f"not Confluent wire format: {len(data or b'')} bytes, need at least 5")
        magic, schema_id = _HEADER.unpack_from(data)
        if magic != 0:
            raise DecodeError(f"not Confluent wire format: magic byte 0x{magic & 0xFF:02x}, expected 0x00")
        reader = self._readers.get(schema_id)
        if reader is None:
            reader = self._resolve(schema_id)
        kind, parsed, writer = reader
        try:
            if writer is None:
                record = fastavro.schemaless_reader(io.BytesIO(data[5:]), parsed, None)
            else:
                record = fastavro.schemaless_reader(io.BytesIO(data[5:]), writer, parsed)
        except (ValueError, TypeError, EOFError, IndexError, KeyError, UnicodeDecodeError, OverflowError) as exc:
            raise DecodeError(f"Avro body does not match schema id {schema_id} ({kind}): {exc!r}") from exc
        if not isinstance(record, dict):
            raise DecodeError(f"Avro body of schema id {schema_id} is not a record")
        return kind, record

    def _resolve(self, schema_id: int) -> tuple[str, Any, Any]:
        found = self.registry.schema_by_id(schema_id)
        if found is None:
            raise DecodeError(f"unknown schema id {schema_id}")
        kind, schema = found
        reader = (kind, self._latest[kind], _parse(schema))
        self._readers[schema_id] = reader
        return reader
