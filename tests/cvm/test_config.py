"""Configuration: precedence, parsing and the one-line errors."""

from __future__ import annotations

import pytest

from cvm.config import Config
from cvm.exceptions import ConfigError


def test_precedence_defaults_file_env(tmp_path) -> None:
    path = tmp_path / "cvm.toml"
    path.write_text('[cvm]\npartitions = 8\ntopic_prefix = "file-"\n[cvm.contact_costs]\nphone = 9\n')
    cfg = Config.load(path, env={"CVM_TOPIC_PREFIX": "env-"})
    assert cfg.partitions == 8
    assert cfg.topic_prefix == "env-"
    assert cfg.contact_costs == {"phone": 9.0}
    assert cfg.http_port == 8080


def test_env_dict_and_round_trip_through_to_env() -> None:
    cfg = Config.load(env={"CVM_CONTACT_COSTS": "phone=6,email=2.5", "CVM_PARTITIONS": "2"})
    assert cfg.contact_costs == {"phone": 6.0, "email": 2.5}
    assert Config.load(env=cfg.to_env()) == cfg


def test_secrets_are_masked() -> None:
    cfg = Config.load(
        env={"CVM_KAFKA_SASL_PASSWORD": "s3cret", "CVM_CLICKHOUSE_URL": "http://u:pw@h:8123", "CVM_HTTP_TOKEN": "t"}
    )
    shown = str(cfg.describe())
    assert "s3cret" not in shown and "pw@" not in shown and "'t'" not in shown


@pytest.mark.parametrize(
    "env, message",
    [
        ({"CVM_PARTITIONS": "four"}, "not a valid int"),
        ({"CVM_CONTACT_COSTS": "phone"}, "key=value"),
        ({"CVM_ALLOWED_LATENESS_S": "99999999"}, "between 0 and 49 days"),
        ({"CVM_SCHEMA_REGISTRY_WAIT_S": "600"}, "at most 240"),  # a worker that long without polling leaves its group
        ({"CVM_KAFKA_COMPRESSION": "brotli"}, "must be one of none, gzip, snappy, lz4, zstd"),
    ],
)
def test_bad_settings_say_what_is_wrong(env, message) -> None:
    with pytest.raises(ConfigError, match=message):
        Config.load(env=env)


def test_bad_file(tmp_path) -> None:
    with pytest.raises(ConfigError, match="does not exist"):
        Config.load(tmp_path / "missing.toml", env={})
    bad = tmp_path / "bad.toml"
    bad.write_text("partitions = = 3")
    with pytest.raises(ConfigError, match="not valid TOML"):
        Config.load(bad, env={})
    unknown = tmp_path / "unknown.toml"
    unknown.write_text("colour = 3")
    with pytest.raises(ConfigError, match="unknown setting"):
        Config.load(unknown, env={})


def test_the_readme_documents_every_setting_and_command() -> None:
    import dataclasses
    from pathlib import Path

    from cvm.cli import COMMANDS

    readme = (Path(__file__).parents[2] / "README.md").read_text()
    missing = [f.metadata["env"] for f in dataclasses.fields(Config) if f"`{f.metadata['env']}`" not in readme]
    assert not missing, f"README's configuration table lacks {missing}"
    assert not [c for c in COMMANDS if f"`cvm {c}" not in readme], "README's CLI table lacks a command"
