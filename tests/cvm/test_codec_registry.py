"""The codec against a Schema Registry over HTTP (confluent-kafka's real client): upstream schemas of their own, a
registry that is down for a while, ids it does not know.

No Confluent Schema Registry runs without Docker on this machine, so the server here speaks the two calls of its
REST API that cvm makes (register a subject's version, fetch a schema by id), as the registry answers them.
"""

from __future__ import annotations

import json
import subprocess
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import fastavro
import httpx
import pytest
from prometheus_client import REGISTRY
from prometheus_client.parser import text_string_to_metric_families

from cvm.codec import KINDS, Codec, load_schema, make_registry
from cvm.config import Config
from cvm.exceptions import DecodeError, RegistryUnavailable
from cvm.kafka import create_topics, make_consumer, make_producer
from cvm.metrics import sample_sums
from streams.decode import Decoder
from streams.records import RawRecord
from tests.conftest import free_port, spawn, stop


class Registry:
    """An in-process Schema Registry: subjects' versions with global ids. While ``down``, it drops every connection
    unanswered, as a registry that is restarting (the client's own retries cover a few 503s, not that)."""

    def __init__(self) -> None:
        self.schemas: dict[int, str] = {}
        self.down = False
        self.requests = 0
        registry = self

        class Handler(BaseHTTPRequestHandler):
            def _answer(self, status: int, body: dict[str, Any]) -> None:
                data = json.dumps(body).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/vnd.schemaregistry.v1+json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def do_POST(self) -> None:  # POST /subjects/{subject}/versions: register (or find) a schema
                registry.requests += 1
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                if registry.down:
                    self.close_connection = True
                    return None
                self._answer(200, {"id": registry.add(body["schema"])})

            def do_GET(self) -> None:  # GET /schemas/ids/{id}
                registry.requests += 1
                if registry.down:
                    self.close_connection = True
                    return None
                schema_id = int(self.path.split("?")[0].rsplit("/", 1)[1])
                if schema_id not in registry.schemas:
                    return self._answer(404, {"error_code": 40403, "message": "Schema not found"})
                self._answer(200, {"schema": registry.schemas[schema_id], "schemaType": "AVRO"})

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", free_port()), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def add(self, schema: str) -> int:
        for schema_id, known in self.schemas.items():
            if known == schema:
                return schema_id
        schema_id = 100 + len(self.schemas)
        self.schemas[schema_id] = schema
        return schema_id


@pytest.fixture
def registry() -> Iterator[Registry]:
    r = Registry()
    yield r
    r.server.shutdown()
    r.server.server_close()


def upstream_transaction(registry: Registry, name: str = "com.acme.sales.Transaction") -> tuple[int, dict]:
    """An upstream's own transaction schema: another (fully qualified) name, and a field cvm does not know."""
    schema = load_schema("transactions")
    schema = {**schema, "name": name, "fields": [*schema["fields"], {"name": "store_id", "type": "string"}]}
    schema.pop("namespace", None)
    return registry.add(json.dumps(schema)), schema


def wire(schema_id: int, schema: dict, record: dict) -> bytes:
    import io

    buf = io.BytesIO()
    buf.write(b"\x00" + schema_id.to_bytes(4, "big"))
    fastavro.schemaless_writer(buf, fastavro.parse_schema(schema), record)
    return buf.getvalue()


RECORD = {"event_id": "e1", "customer_id": "c1", "event_time": 1_700_000_000_000, "amount": 12.5}


def failures() -> float:
    return REGISTRY.get_sample_value("cvm_schema_registry_failures_total") or 0.0


def test_an_upstream_schema_of_its_own_name_and_fields_is_read_through_cvm_s(registry: Registry) -> None:
    codec = Codec(make_registry(registry.url))
    schema_id, schema = upstream_transaction(registry)
    kind, rec = codec.decode(wire(schema_id, schema, {**RECORD, "store_id": "s9"}))
    assert kind == "transactions" and rec["amount"] == 12.5 and rec["customer_id"] == "c1"
    assert "store_id" not in rec and rec["gross_margin"] is None


def test_a_registry_down_for_a_while_delays_the_records_and_dead_letters_none(registry: Registry) -> None:
    codec = Codec(make_registry(registry.url, wait_s=30.0))  # cvm's own schemas registered while it is up
    schema_id, schema = upstream_transaction(registry)
    registry.down = True
    threading.Timer(1.5, lambda: setattr(registry, "down", False)).start()
    before, started = failures(), time.monotonic()
    decoder = Decoder(codec, {"transactions": "transactions"}, partitions=4)
    item = decoder.decode(RawRecord("transactions", 0, 7, b"c1", wire(schema_id, schema, {**RECORD, "store_id": "s"})),
                          now_ms=RECORD["event_time"])  # fmt: skip
    assert getattr(item, "kind", None) == "transactions", item  # an Event, not Poison
    assert time.monotonic() - started >= 1.0 and failures() > before


def test_a_registry_down_longer_than_the_wait_stops_the_process_not_the_records(registry: Registry) -> None:
    codec = Codec(make_registry(registry.url, wait_s=1.0))
    schema_id, schema = upstream_transaction(registry)
    registry.down = True
    decoder = Decoder(codec, {"transactions": "transactions"}, partitions=4)
    rec = RawRecord("transactions", 0, 7, b"c1", wire(schema_id, schema, {**RECORD, "store_id": "s"}))
    with pytest.raises(RegistryUnavailable, match="CVM_SCHEMA_REGISTRY_URL"):
        decoder.decode(rec, now_ms=RECORD["event_time"])  # no Poison: nothing is dead-lettered
    registry.down = False
    assert getattr(decoder.decode(rec, now_ms=RECORD["event_time"]), "kind", None) == "transactions"


def test_an_id_the_registry_does_not_know_or_a_record_of_another_name_is_undecodable(registry: Registry) -> None:
    codec = Codec(make_registry(registry.url))
    with pytest.raises(DecodeError, match="unknown schema id 999"):
        codec.decode(b"\x00" + (999).to_bytes(4, "big") + b"\x02")
    schema_id, schema = upstream_transaction(registry, name="com.acme.Purchase")
    with pytest.raises(DecodeError, match="record named 'Purchase', not one of cvm's events"):
        codec.decode(wire(schema_id, schema, {**RECORD, "store_id": "s"}))


def publish_while_down(cfg: Config, registry: Registry) -> None:
    """Once a process has registered cvm's three schemas, the registry goes down and upstream publishes 20
    transactions of 5 customers under a schema of its own, which the process has not seen."""
    deadline = time.monotonic() + 60
    while registry.requests < len(KINDS) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert registry.requests >= len(KINDS), "the process never registered cvm's schemas"
    schema_id, schema = upstream_transaction(registry)
    registry.down = True
    producer = make_producer(cfg)
    t0 = int(time.time() * 1000) - 10 * 86_400_000
    for i in range(20):
        rec = {**RECORD, "event_id": f"u{i}", "customer_id": f"c{i % 5}", "event_time": t0 + i * 1000, "store_id": "s"}
        producer.produce(cfg.topic("transactions"), key=f"c{i % 5}".encode(), value=wire(schema_id, schema, rec))
    assert producer.flush(10) == 0


@pytest.mark.integration
def test_a_worker_stops_while_the_registry_is_down_and_a_restart_applies_every_record(
    cfg: Config, tmp_path: Path, registry: Registry
) -> None:
    """The real world: upstream publishes with a schema of its own while the registry restarts. The worker must not
    dead-letter those records; it stops with a one-line error, commits none of them, and applies them once the
    registry answers again."""
    cfg = cfg.replace(schema_registry_url=registry.url, schema_registry_wait_s=2.0)
    create_topics(cfg)
    log = tmp_path / "worker.log"
    worker = spawn(cfg, "worker", "--id", "a", log=log)
    publish_while_down(cfg, registry)
    try:
        code = worker.wait(60)
    finally:
        stop(worker)
    assert code != 0 and "schema registry" in log.read_text() and "RegistryUnavailable" in log.read_text()
    registry.down = False
    worker = spawn(cfg, "worker", "--id", "b", log=tmp_path / "worker-b.log")
    scores = make_consumer(cfg, group="test-scores")
    scores.subscribe([cfg.topic("customer-scores"), cfg.topic("dead-letters")])
    latest: dict[str, dict] = {}
    dead = 0
    deadline = time.monotonic() + 60
    try:
        while time.monotonic() < deadline and sum(d["n_transactions"] for d in latest.values()) < 20:
            for m in scores.consume(500, 0.5):
                if m.error() is not None:
                    continue
                if m.topic() == cfg.topic("dead-letters"):
                    dead += 1
                    continue
                d = json.loads(m.value())
                if d["version"] >= latest.get(d["customer_id"], {}).get("version", -1):
                    latest[d["customer_id"]] = d
    finally:
        assert stop(worker) == 0, (tmp_path / "worker-b.log").read_text()[-2000:]
        scores.close()
    assert dead == 0 and sum(d["n_transactions"] for d in latest.values()) == 20 and len(latest) == 5


@pytest.mark.integration
def test_a_sink_stops_while_the_registry_is_down_and_a_restart_writes_every_raw_row(
    cfg: Config, tmp_path: Path, registry: Registry
) -> None:
    """The sink reads the same upstream records: while the registry is down it must not skip them (no raw row would
    ever be written for them); it stops, and once the registry answers a restart writes them."""
    cfg = cfg.replace(schema_registry_url=registry.url, schema_registry_wait_s=2.0)
    create_topics(cfg)

    def sink(name: str) -> subprocess.Popen[bytes]:
        proc = spawn(cfg, "sink", log=tmp_path / f"{name}.log")
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and proc.poll() is None:
            try:
                if httpx.get(f"http://127.0.0.1:{cfg.http_port}/health", timeout=1).status_code == 200:
                    return proc
            except httpx.TransportError:
                time.sleep(0.3)
        raise AssertionError((tmp_path / f"{name}.log").read_text()[-2000:])

    first = sink("sink-a")
    publish_while_down(cfg, registry)
    try:
        code = first.wait(60)
    finally:
        stop(first)
    text = (tmp_path / "sink-a.log").read_text()
    assert code != 0 and "schema registry" in text and "CVM_SCHEMA_REGISTRY_URL" in text, text[-2000:]
    registry.down = False
    second = sink("sink-b")
    query = f"SELECT count() AS n FROM {cfg.clickhouse_database}.transactions FINAL"
    url = f"http://127.0.0.1:{cfg.http_port}/api/sql"
    written = 0
    deadline = time.monotonic() + 60
    try:
        while time.monotonic() < deadline and written < 20:
            time.sleep(0.5)
            written = int(httpx.get(url, params={"query": query, "format": "json"}, timeout=30).json()[0]["n"])
        families = httpx.get(f"http://127.0.0.1:{cfg.http_port}/metrics", timeout=10).text
    finally:
        assert stop(second) == 0, (tmp_path / "sink-b.log").read_text()[-2000:]
    assert written == 20
    parsed = list(text_string_to_metric_families(families))
    assert sample_sums(parsed, "cvm_records_total", fate="skipped") == 0  # the restarted sink skipped none
    assert sample_sums(parsed, "cvm_records_total", topic="transactions", fate="written") == 20
