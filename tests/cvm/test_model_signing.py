"""Model messages are signed: unsigned, forged or tampered messages are refused (and counted) before anything in
them is loaded, so whoever can write the models topic cannot run code on the workers."""

from __future__ import annotations

import json
import pickle
import subprocess
import sys
from pathlib import Path

import pytest
from prometheus_client import REGISTRY

from cvm.config import Config
from cvm.exceptions import ConfigError, ModelRejected
from cvm.kafka import ModelKey, decode_model, encode_model
from streams.models import ModelFeed

KEY = ModelKey((b"the-learner-key-0123456789",))
OTHER = ModelKey((b"someone-else-key-0123456789",))


class _Payload:
    """What an attacker would publish: unpickling it writes a file (it would run any code)."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[object, tuple[str, str]]:
        return (Path.write_text, (str(self.marker), "pwned"))  # type: ignore[return-value]


def _refused(reason: str) -> float:
    return REGISTRY.get_sample_value("cvm_model_messages_refused_total", {"reason": reason}) or 0.0


def test_a_signed_message_round_trips_with_its_signing_time() -> None:
    meta, blob = decode_model(encode_model({"kind": "churn", "version": 7}, b"\x00blob\n", key=KEY), key=KEY)
    assert meta["kind"] == "churn" and meta["version"] == 7 and meta["signed_at"] > 1.7e9 and blob == b"\x00blob\n"


@pytest.mark.parametrize("reason", ["unsigned", "forged", "tampered", "malformed"])
def test_a_bad_message_is_refused_and_counted(reason: str, tmp_path: Path) -> None:
    marker = tmp_path / "marker"
    blob = pickle.dumps(_Payload(marker))
    if reason == "unsigned":  # the format before signing: a JSON line, then the pickle
        value, counted = json.dumps({"kind": "churn", "version": 99}).encode() + b"\n" + blob, "unsigned"
    elif reason == "forged":  # signed, with the wrong key
        value, counted = encode_model({"kind": "churn", "version": 99}, blob, key=OTHER), "forged"
    elif reason == "tampered":  # a genuine message whose blob was swapped
        genuine = encode_model({"kind": "churn", "version": 99}, b"model", key=KEY)
        value, counted = genuine.removesuffix(b"model") + blob, "forged"
    else:  # a valid signature over something that is not a model message
        body = b"[1, 2]\n"
        value, counted = b"cvm-model-hmac-sha256 " + KEY.sign(body) + b"\n" + body, "malformed"
    before = _refused(counted)
    with pytest.raises(ModelRejected) as refused:
        decode_model(value, key=KEY)
    assert refused.value.reason == counted and "refused" in str(refused.value)
    assert _refused(counted) == before + 1
    assert not marker.exists()


def test_the_worker_feed_refuses_a_forged_model(cfg: Config, tmp_path: Path) -> None:
    """Today's feed took any JSON line and handed the blob to the churn model's unpickler."""
    marker = tmp_path / "marker"
    forged = json.dumps({"kind": "churn", "version": 10**6}).encode() + b"\n" + pickle.dumps(_Payload(marker))
    feed = ModelFeed(cfg)
    with pytest.raises(ValueError):  # ModelRejected is a ValueError: the feed's reading loop skips it
        feed.offer(forged)
    assert feed.get("churn") is None and not marker.exists()
    genuine = encode_model({"kind": "churn", "version": 1}, b"blob", key=ModelKey.from_config(cfg))
    feed.offer(genuine)
    assert feed.get("churn") == (json.loads(genuine.split(b"\n")[1]), b"blob")


def test_keys_rotate_the_first_signs_any_verifies() -> None:
    old, new = b"old-key-0123456789abcdef", b"new-key-0123456789abcdef"
    signed_before = encode_model({"kind": "clv", "version": 1}, key=ModelKey((old,)))
    rotating = ModelKey((new, old))
    assert decode_model(signed_before, key=rotating)[0]["version"] == 1
    signed_now = encode_model({"kind": "clv", "version": 2}, key=rotating)
    assert decode_model(signed_now, key=ModelKey((new,)))[0]["version"] == 2
    with pytest.raises(ModelRejected):
        decode_model(signed_now, key=ModelKey((old,)))


def test_key_settings(tmp_path: Path) -> None:
    env = {"CVM_DATA_DIR": str(tmp_path / "data")}
    assert ModelKey.from_config(Config.load(env={**env, "CVM_MODEL_KEY": "a" * 16 + ", " + "b" * 20})).keys == (
        b"a" * 16,
        b"b" * 20,
    )
    with pytest.raises(ConfigError, match="at least 16 characters"):
        ModelKey.from_config(Config.load(env={**env, "CVM_MODEL_KEY": "short"}))
    # Production (an external Kafka) must configure one: workers on other hosts cannot share a file.
    with pytest.raises(ConfigError, match="set CVM_MODEL_KEY"):
        ModelKey.from_config(Config.load(env={**env, "CVM_KAFKA_BOOTSTRAP": "kafka:9092"}))
    assert "***" in Config.load(env={**env, "CVM_MODEL_KEY": "x" * 16}).describe()["model_key"]


def test_the_embedded_default_is_one_key_in_the_data_dir_whoever_makes_it_first(tmp_path: Path) -> None:
    data = tmp_path / "data"
    code = (
        "import sys; from cvm.config import Config; from cvm.kafka import ModelKey; "
        "print(ModelKey.from_config(Config.load(env={'CVM_DATA_DIR': sys.argv[1]})).keys[0].decode())"
    )
    procs = [
        subprocess.Popen([sys.executable, "-c", code, str(data)], stdout=subprocess.PIPE, text=True) for _ in range(6)
    ]
    keys = {p.communicate(timeout=60)[0].strip() for p in procs}
    assert len(keys) == 1 and len(keys.pop()) == 64
    key_file = data / "model.key"
    assert key_file.stat().st_mode & 0o777 == 0o600
    assert [p.name for p in data.iterdir()] == ["model.key"]  # no spare files left behind
