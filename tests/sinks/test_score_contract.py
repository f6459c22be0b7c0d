"""The score contract and the ClickHouse columns say the same: every field of schemas/customer_score.avsc is a column
of ``customers`` and of ``customer_scores`` with the matching type, Nullable exactly when the field may be null, and
every column is a field."""

from __future__ import annotations

import re
from typing import Any

from schemas.scores import ScoreContract
from sinks.clickhouse import SCORE_TABLES, ClickHouse, load_migrations, migrate

_INTS = {"int": {"UInt8", "UInt16", "Int8", "Int16", "Int32"}, "long": {"UInt32", "UInt64", "Int64"}}


def _column_type(avro: Any) -> set[str]:
    """The ClickHouse types a value of this Avro type is written to."""
    if isinstance(avro, list):
        (inner,) = [t for t in avro if t != "null"]
        return {f"Nullable({t})" for t in _column_type(inner)} | {
            f"LowCardinality(Nullable({t}))" for t in _column_type(inner) if t == "String"
        }
    if isinstance(avro, dict):
        if avro.get("logicalType") == "timestamp-millis":
            return {"DateTime64(3, 'UTC')"}
        if avro["type"] == "array":
            return {f"Array({t})" for t in _column_type(avro["items"])}
        return _column_type(avro["type"])
    if avro == "string":
        return {"String", "LowCardinality(String)"}
    if avro == "double":
        return {"Float64"}
    return _INTS[avro]


def test_the_schema_and_the_score_tables_have_the_same_fields_and_types(ch: ClickHouse) -> None:
    contract = ScoreContract.load()
    for table in SCORE_TABLES:
        columns = dict(
            ch.rows(
                "SELECT name, type FROM system.columns WHERE database = {db:String} AND table = {t:String}",
                {"db": ch.database, "t": table},
            )
        )
        assert sorted(columns.keys() - contract.fields.keys()) == [], f"{table} columns the contract does not know"
        assert sorted(contract.fields.keys() - columns.keys()) == [], f"contract fields {table} has no column for"
        wrong = {
            name: (columns[name], sorted(_column_type(avro)))
            for name, avro in contract.fields.items()
            if columns[name] not in _column_type(avro)
        }
        assert wrong == {}, f"{table}: column type vs the contract's"
        nullable = {name for name, typ in columns.items() if re.search(r"\bNullable\(", typ)}
        assert nullable == set(contract.nullable), table


def test_model_outputs_and_what_is_not_computed_yet_are_nullable() -> None:
    contract = ScoreContract.load()
    assert {
        "p_alive",
        "expected_purchases",
        "expected_spend",
        "clv",
        "clv_params_version",
        "churn_probability",
        "churn_probability_60d",
        "churn_model_version",
        "clv_percentile",
        "clv_x",
        "clv_t_x",
        "clv_T",
        "clv_mean_repeat_value",
        "first_purchase_time",
        "last_purchase_time",
        "last_cancellation_time",
        "scored_by",
    } == set(contract.nullable)
    assert contract.defaults["churn_reasons"] == []
    assert {"customer_id", "version", "as_of", "last_event_time", "revenue"} <= set(contract.required)


def test_migration_0004_turns_the_old_zeros_into_null_and_the_old_amounts_into_base_amounts(ch: ClickHouse) -> None:
    old = ClickHouse(ch.client, f"{ch.database}_old", ch.dsn)
    try:
        migrate(old, [m for m in load_migrations() if m.version < 4])
        db = old.database
        old.command(
            f"INSERT INTO {db}.customers (customer_id, version, frequency, first_purchase_time, clv_x, p_alive, clv, "
            "clv_params_version, churn_probability, churn_model_version) VALUES "
            "('never-bought', 1, 0, 0, 0, 0, 0, 0, 0, 0), "
            "('scored', 2, 3, '2024-05-01 00:00:00', 2, 0.75, 120.5, 4, 0.2, 7)"
        )
        old.command(
            f"INSERT INTO {db}.transactions (event_id, customer_id, event_time, amount, currency, gross_margin) "
            "VALUES ('t1', 'c1', '2024-05-01 00:00:00', 12.5, 'EUR', NULL), ('t2', 'c1', '2024-05-02', 3, 'USD', 1)"
        )
        assert migrate(old) == [m.version for m in load_migrations() if m.version >= 4]
        rows = old.rows(
            f"SELECT customer_id, first_purchase_time IS NULL, clv_x, p_alive, clv, clv_params_version, "
            f"churn_probability, churn_model_version FROM {db}.customers FINAL ORDER BY customer_id"
        )
        assert rows == [
            ("never-bought", True, None, None, None, None, None, None),
            ("scored", False, 2, 0.75, 120.5, 4, 0.2, 7),
        ]
        raw = old.rows(f"SELECT event_id, amount_base, gross_margin_base FROM {db}.transactions ORDER BY event_id")
        assert raw == [
            ("t1", 12.5, None),
            ("t2", 3.0, 1.0),  # counted as base currency by the workers of the time: the same here
        ]
    finally:
        old.command(f"DROP DATABASE IF EXISTS {old.database} SYNC")
