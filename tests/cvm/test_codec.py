"""The Confluent wire codec and the local registry file."""

from __future__ import annotations

import json
import struct

import pytest

from cvm.codec import KINDS, Codec, LocalRegistry, load_schema
from cvm.exceptions import DecodeError

T = 1_700_000_000_000
RECORDS = {
    "transactions": {"event_id": "e", "customer_id": "c", "event_time": T, "amount": -3.5, "gross_margin": 1.25},
    "contacts": {"event_id": "e", "customer_id": "c", "event_time": T, "channel": "chat", "reason": "complaint"},
    "payments": {
        "event_id": "e",
        "customer_id": "c",
        "event_time": T,
        "invoice_id": "i1",
        "amount_due": 20.0,
        "due_date": T,
        "paid_date": None,
        "status": "failed",
    },
}


@pytest.mark.parametrize("kind", list(KINDS))
def test_round_trip(kind: str) -> None:
    codec = Codec()
    kind_back, rec = codec.decode(codec.encode(kind, RECORDS[kind]))
    assert kind_back == kind
    for key, value in RECORDS[kind].items():
        assert rec[key] == value


def test_registry_file_matches_the_schemas() -> None:
    """schemas/registry.json must be regenerated ('cvm schemas sync') when an .avsc changes."""
    registry = LocalRegistry()
    ids = {kind: registry.latest_id(kind, load_schema(kind)) for kind in KINDS}
    assert sorted(ids.values()) == [1, 2, 3]


def test_local_registry_is_deterministic(tmp_path) -> None:
    a, b = LocalRegistry(tmp_path / "a.json"), LocalRegistry(tmp_path / "b.json")
    assert a.sync() == b.sync() == [1, 2, 3]
    assert (tmp_path / "a.json").read_text() == (tmp_path / "b.json").read_text()
    assert LocalRegistry(tmp_path / "a.json").sync() == []


def test_old_schema_versions_still_decode(tmp_path) -> None:
    """A record written with an older registered version is read into the current schema."""
    path = tmp_path / "r.json"
    registry = LocalRegistry(path)
    registry.sync()
    old = json.loads(json.dumps(load_schema("transactions")))
    old["fields"] = [f for f in old["fields"] if f["name"] not in ("category", "channel")]
    registry.entries.append({"id": 7, "subject": "transactions-value", "fingerprint": "old", "schema": old})
    import io

    import fastavro

    buf = io.BytesIO()
    buf.write(struct.pack(">bI", 0, 7))
    fastavro.schemaless_writer(buf, fastavro.parse_schema(old), {**RECORDS["transactions"], "currency": "EUR"})
    kind, rec = Codec(registry).decode(buf.getvalue())
    assert kind == "transactions" and rec["category"] == "other" and rec["amount"] == -3.5


@pytest.mark.parametrize(
    "raw, message",
    [
        (b"", "need at least 5"),
        (b"\x01\x00\x00\x00\x01abc", "magic byte"),
        (b"\x00\x00\x00\x03\xe7abc", "unknown schema id 999"),
        (b"\x00\x00\x00\x00\x01", "does not match schema id 1"),
    ],
)
def test_poison_bytes_raise_decode_error(raw: bytes, message: str) -> None:
    with pytest.raises(DecodeError, match=message):
        Codec().decode(raw)


def test_record_that_does_not_fit_raises_decode_error() -> None:
    with pytest.raises(DecodeError):
        Codec().encode("transactions", {"event_id": "e", "customer_id": "c", "event_time": T, "amount": "x"})
