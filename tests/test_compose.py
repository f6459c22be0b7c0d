"""The production-like deployment, checked by reading it: docker-compose.yml, the Dockerfile, Grafana's provisioning and
the dashboard. There is no Docker engine on these machines (FACTS.md), so nothing here starts a container; the
dashboard's SQL does run, on the embedded ClickHouse (chDB), against the columns the dashboard relies on."""

from __future__ import annotations

import dataclasses
import fnmatch
import json
import re
import subprocess
import sys
import textwrap
import tomllib
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
import yaml
from packaging.specifiers import SpecifierSet

from cvm.config import Config

ROOT = Path(__file__).resolve().parents[1]
COMPOSE = ROOT / "docker-compose.yml"
DOCKERFILE = ROOT / "Dockerfile"
DASHBOARDS = ROOT / "deploy" / "grafana" / "dashboards"
PROVISIONING = ROOT / "deploy" / "grafana" / "provisioning"

INFRA = {"kafka", "schema-registry", "clickhouse", "prometheus", "grafana"}
CVM_SERVICES = {"topics", "worker", "learner", "sink", "simulator"}
PROMETHEUS_UID = "cvm-prometheus"
CVM_TABLES = {"customers", "customer_scores", "transactions", "alerts", "model_metrics"}
CLICKHOUSE_PLUGIN = "grafana-clickhouse-datasource"
#: Settings every cvm container must agree on (the brief of the deployment).
SHARED_SETTINGS = {
    "CVM_KAFKA_BOOTSTRAP",
    "CVM_CLICKHOUSE_URL",
    "CVM_SCHEMA_REGISTRY_URL",
    "CVM_DATA_DIR",
    "CVM_PARTITIONS",
    "CVM_REPLICATION_FACTOR",
    "CVM_LOG_LEVEL",
}

_VAR = re.compile(r"\$\{(\w+)(?:(:?[-?])([^}]*))?\}")


# --- helpers ---------------------------------------------------------------------------------------------------------


def interpolate(value: Any) -> str:
    """A compose value as `docker compose` sees it with nothing set in the environment: ``${X:-d}`` → d,
    ``${X:?msg}`` → a stand-in (the operator must set it), ``${X}`` → empty, ``$$`` → ``$``."""

    def sub(m: re.Match[str]) -> str:
        name, op, arg = m.group(1), m.group(2), m.group(3)
        if op in (":-", "-"):
            return arg
        if op in (":?", "?"):
            return f"set-{name.lower()}"
        return ""

    return _VAR.sub(sub, str(value)).replace("$$", "$")


def env_of(service: dict[str, Any]) -> dict[str, str]:
    """A service's environment as a dict of raw (uninterpolated) strings, from either the map or the list form."""
    env = service.get("environment") or {}
    if isinstance(env, list):
        env = dict(item.split("=", 1) if "=" in item else (item, "") for item in env)
    return {str(k): "" if v is None else str(v) for k, v in env.items()}


def config_env_names() -> set[str]:
    return {f.metadata["env"] for f in dataclasses.fields(Config)}


def host_port(address: str) -> tuple[str, int]:
    host, _, port = address.rpartition(":")
    return host, int(port)


def listeners(value: str) -> dict[str, tuple[str, int]]:
    """``NAME://host:port,...`` → {NAME: (host, port)}."""
    out = {}
    for item in value.split(","):
        name, _, address = item.strip().partition("://")
        out[name] = host_port(address)
    return out


def bind_mounts(service: dict[str, Any]) -> list[tuple[str, str]]:
    """(source, target) of the service's bind mounts, short or long syntax."""
    mounts = []
    for volume in service.get("volumes") or []:
        if isinstance(volume, str):
            parts = volume.split(":")
            if len(parts) >= 2 and parts[0].startswith((".", "/")):
                mounts.append((parts[0], parts[1]))
        elif volume.get("type") == "bind":
            mounts.append((volume["source"], volume["target"]))
    return mounts


def published_ports(service: dict[str, Any]) -> list[Any]:
    """Port entries that publish a port on the host (``"8080"`` alone does not pin one)."""
    out = []
    for port in service.get("ports") or []:
        if isinstance(port, dict):
            if port.get("published") not in (None, ""):
                out.append(port)
        elif ":" in str(port):
            out.append(port)
    return out


def iter_panels(panels: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Every panel, including those folded inside rows."""
    out = []
    for panel in panels:
        out.append(panel)
        out.extend(iter_panels(panel.get("panels") or []))
    return out


def dashboard_queries() -> list[tuple[str, str, dict[str, Any]]]:
    """(dashboard file name, panel title, target) for every query target of every dashboard."""
    out = []
    for path in sorted(DASHBOARDS.glob("*.json")):
        board = json.loads(path.read_text())
        for panel in iter_panels(board.get("panels") or []):
            for target in panel.get("targets") or []:
                out.append((path.name, panel.get("title", ""), target))
    return out


# --- fixtures --------------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    doc = yaml.safe_load(COMPOSE.read_text())
    assert isinstance(doc, dict) and isinstance(doc.get("services"), dict), "docker-compose.yml has no services"
    return doc


@pytest.fixture(scope="module")
def services(compose: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return compose["services"]


@pytest.fixture(scope="module")
def datasource() -> dict[str, Any]:
    doc = yaml.safe_load((PROVISIONING / "datasources" / "clickhouse.yml").read_text())
    found = [d for d in doc["datasources"] if d["type"] == CLICKHOUSE_PLUGIN]
    assert len(found) == 1, "expected exactly one ClickHouse datasource"
    return found[0]


@pytest.fixture(scope="module")
def dashboard() -> dict[str, Any]:
    return json.loads((DASHBOARDS / "cvm.json").read_text())


# --- docker-compose.yml ---------------------------------------------------------------------------------------------


def test_all_services_exist(services: dict[str, Any]) -> None:
    missing = (INFRA | CVM_SERVICES) - services.keys()
    assert not missing, f"docker-compose.yml lacks services {sorted(missing)}"


def test_every_service_has_an_image_or_a_build(services: dict[str, Any]) -> None:
    for name, service in services.items():
        assert service.get("image") or service.get("build"), f"service {name} has neither image nor build"


def test_cvm_services_are_built_from_the_dockerfile(services: dict[str, Any]) -> None:
    for name in CVM_SERVICES:
        build = services[name].get("build")
        assert build, f"{name} must be built from the repository's Dockerfile"
        if isinstance(build, str):
            build = {"context": build}
        context, dockerfile = build.get("context", "."), build.get("dockerfile", "Dockerfile")
        assert (ROOT / context / dockerfile).resolve() == DOCKERFILE, f"{name} builds {context}/{dockerfile}"


def test_cvm_services_run_their_cvm_command(services: dict[str, Any]) -> None:
    expected = {"topics": "topics", "worker": "worker", "learner": "learner", "sink": "sink", "simulator": "simulate"}
    for name, sub in expected.items():
        command = services[name]["command"]
        argv = command if isinstance(command, list) else command.split()
        assert argv[:2] == ["cvm", sub], f"{name} runs {argv}"
    simulate = services["simulator"]["command"]
    assert "--customers" in simulate and simulate[simulate.index("--customers") + 1] == "5000"


def test_worker_can_be_scaled(services: dict[str, Any]) -> None:
    worker = services["worker"]
    assert "container_name" not in worker, "a container_name allows one replica only"
    assert not published_ports(worker), "a fixed host port allows one replica only"
    data_dir = interpolate(env_of(worker)["CVM_DATA_DIR"])
    for volume in worker.get("volumes") or []:
        target = volume.split(":")[1] if isinstance(volume, str) else volume.get("target")
        assert target != data_dir, "replicas sharing one data dir would share (and corrupt) their RocksDB tables"


def test_every_cvm_variable_is_a_config_setting() -> None:
    used = set(re.findall(r"\bCVM_[A-Z0-9_]+\b", COMPOSE.read_text()))
    # CVM_IMAGE names the image tag for compose itself; it never reaches a cvm process.
    unknown = used - config_env_names() - {"CVM_IMAGE"}
    assert not unknown, f"not settings of cvm.config.Config: {sorted(unknown)}"


def test_cvm_services_share_one_environment(compose: dict[str, Any], services: dict[str, Any]) -> None:
    base = {str(k): str(v) for k, v in compose["x-cvm-env"].items()}
    assert SHARED_SETTINGS <= base.keys(), f"x-cvm-env lacks {sorted(SHARED_SETTINGS - base.keys())}"
    for name in CVM_SERVICES:
        env = env_of(services[name])
        differs = {k for k in base if env.get(k) != base[k]}
        assert not differs, f"{name} disagrees with x-cvm-env on {sorted(differs)}"
        extra = env.keys() - base.keys()
        allowed = {k for k in extra if k.startswith("CVM_HTTP_")} if name == "sink" else set()
        assert extra == allowed, f"{name} sets {sorted(extra - allowed)} beyond the shared environment"


def test_the_shared_environment_loads_as_a_config(compose: dict[str, Any], services: dict[str, Any]) -> None:
    for name in CVM_SERVICES:
        cfg = Config.load(env={k: interpolate(v) for k, v in env_of(services[name]).items()})
        assert not cfg.embedded_broker and not cfg.embedded_clickhouse
        assert cfg.data_dir == "/data"
        assert cfg.replication_factor == 1
        assert cfg.partitions >= 3, "docker compose up --scale worker=3 needs at least 3 partitions"


def test_kafka_bootstrap_is_the_kafka_listener(services: dict[str, Any]) -> None:
    bootstrap = interpolate(env_of(services["worker"])["CVM_KAFKA_BOOTSTRAP"])
    kafka = {k: interpolate(v) for k, v in env_of(services["kafka"]).items()}
    advertised = listeners(kafka["KAFKA_ADVERTISED_LISTENERS"])
    bound = listeners(kafka["KAFKA_LISTENERS"])
    for server in bootstrap.split(","):
        host, port = host_port(server)
        assert host in ("kafka", services["kafka"].get("hostname")), f"{server} is not the kafka service"
        names = [name for name, (h, p) in advertised.items() if (h, p) == (host, port)]
        assert names, f"kafka advertises no listener {server}: {advertised}"
        assert all(bound[name][1] == port for name in names), f"kafka does not listen on {port}: {bound}"
        protocol = dict(item.split(":") for item in kafka["KAFKA_LISTENER_SECURITY_PROTOCOL_MAP"].split(","))
        assert all(protocol[name] == "PLAINTEXT" for name in names)


def test_kafka_is_single_node_kraft_without_auto_topics(services: dict[str, Any]) -> None:
    kafka = {k: interpolate(v) for k, v in env_of(services["kafka"]).items()}
    assert set(kafka["KAFKA_PROCESS_ROLES"].split(",")) == {"broker", "controller"}
    assert kafka["KAFKA_AUTO_CREATE_TOPICS_ENABLE"].lower() == "false", "cvm creates its topics (`cvm topics`)"
    _, controller_port = listeners(kafka["KAFKA_LISTENERS"])[kafka["KAFKA_CONTROLLER_LISTENER_NAMES"]]
    assert kafka["KAFKA_CONTROLLER_QUORUM_VOTERS"] == f"{kafka['KAFKA_NODE_ID']}@kafka:{controller_port}"
    assert kafka["KAFKA_OFFSETS_TOPIC_REPLICATION_FACTOR"] == "1"


def test_clickhouse_and_schema_registry_urls_match_their_services(services: dict[str, Any]) -> None:
    env = {k: interpolate(v) for k, v in env_of(services["sink"]).items()}
    clickhouse = {k: interpolate(v) for k, v in env_of(services["clickhouse"]).items()}
    url = urlsplit(env["CVM_CLICKHOUSE_URL"])
    assert (url.scheme, url.hostname, url.port) == ("http", "clickhouse", 8123)
    assert url.username == clickhouse["CLICKHOUSE_USER"] and url.password == clickhouse["CLICKHOUSE_PASSWORD"]
    raw_url = env_of(services["sink"])["CVM_CLICKHOUSE_URL"]
    raw_password = env_of(services["clickhouse"])["CLICKHOUSE_PASSWORD"]
    # The password comes from the environment, for the server and its clients alike.
    assert "${CLICKHOUSE_PASSWORD" in raw_url and "${CLICKHOUSE_PASSWORD" in raw_password
    assert env.get("CVM_CLICKHOUSE_DATABASE", "cvm") == clickhouse.get("CLICKHOUSE_DB", "cvm") == "cvm"
    registry = urlsplit(env["CVM_SCHEMA_REGISTRY_URL"])
    sr_env = {k: interpolate(v) for k, v in env_of(services["schema-registry"]).items()}
    assert registry.hostname == "schema-registry" and registry.port == 8081
    assert urlsplit(sr_env["SCHEMA_REGISTRY_LISTENERS"]).port == 8081
    assert "kafka:9092" in sr_env["SCHEMA_REGISTRY_KAFKASTORE_BOOTSTRAP_SERVERS"]


def test_sink_listens_beyond_loopback_only_with_a_token(services: dict[str, Any]) -> None:
    sink = services["sink"]
    env = env_of(sink)
    assert env["CVM_HTTP_HOST"] == "0.0.0.0"
    token = env["CVM_HTTP_TOKEN"]
    assert re.fullmatch(r"\$\{CVM_HTTP_TOKEN:?\?[^}]*\}", token), (
        "CVM_HTTP_TOKEN must come from the environment and be required (${CVM_HTTP_TOKEN:?...}), never a literal"
    )
    port = int(interpolate(env.get("CVM_HTTP_PORT", "8080")))
    assert any(str(p).split(":")[-1] == str(port) for p in sink.get("ports") or []), f"sink does not publish {port}"


def test_depends_on_names_services_and_waits_on_health(services: dict[str, Any]) -> None:
    conditions = {"service_started", "service_healthy", "service_completed_successfully"}
    for name, service in services.items():
        depends = service.get("depends_on") or {}
        if isinstance(depends, list):
            depends = {d: {"condition": "service_started"} for d in depends}
        for other, spec in depends.items():
            assert other in services, f"{name} depends on unknown service {other}"
            condition = spec.get("condition", "service_started")
            assert condition in conditions, f"{name} → {other}: unknown condition {condition}"
            if condition == "service_healthy":
                assert services[other].get("healthcheck"), f"{name} waits for {other} to be healthy: it has no check"
    deps = {name: services[name].get("depends_on") or {} for name in CVM_SERVICES}
    assert deps["topics"]["kafka"]["condition"] == "service_healthy"
    for name in ("worker", "learner", "sink", "simulator"):
        assert deps[name]["topics"]["condition"] == "service_completed_successfully", f"{name} starts before topics"
    assert deps["sink"]["clickhouse"]["condition"] == "service_healthy"


def test_restart_policies(services: dict[str, Any]) -> None:
    policies = {"no", "always", "on-failure", "unless-stopped"}
    for name, service in services.items():
        policy = str(service.get("restart", "no")).split(":")[0]
        assert policy in policies, f"{name}: restart {policy!r}"
        if name in ("topics", "simulator"):
            assert policy in ("no", "on-failure"), f"{name} ends by design: restarting it always would loop"
        else:
            assert policy in ("always", "unless-stopped"), f"long-running {name} should be restarted"


def test_named_volumes_are_declared(compose: dict[str, Any], services: dict[str, Any]) -> None:
    declared = set(compose.get("volumes") or {})
    for name, service in services.items():
        for volume in service.get("volumes") or []:
            source = volume.split(":")[0] if isinstance(volume, str) else volume.get("source", "")
            if source and not source.startswith((".", "/", "~")):
                assert source in declared, f"{name} uses undeclared volume {source}"


def test_bind_mounted_files_exist_in_the_repository(services: dict[str, Any]) -> None:
    for name, service in services.items():
        for source, _ in bind_mounts(service):
            assert (ROOT / source).exists(), f"{name} mounts {source}, which is not in the repository"


# --- Grafana ---------------------------------------------------------------------------------------------------------


def test_grafana_installs_the_clickhouse_plugin(services: dict[str, Any]) -> None:
    env = env_of(services["grafana"])
    # GF_INSTALL_PLUGINS is deprecated in Grafana 12 and maps onto plugins.preinstall_sync; any of them will do.
    names = ("GF_INSTALL_PLUGINS", "GF_PLUGINS_PREINSTALL", "GF_PLUGINS_PREINSTALL_SYNC")
    plugins = ",".join(env.get(name, "") for name in names).split(",")
    assert CLICKHOUSE_PLUGIN in [p.split("@")[0].strip() for p in plugins]


def test_grafana_mounts_provisioning_and_dashboards(services: dict[str, Any]) -> None:
    mounts = {(ROOT / source).resolve(): target for source, target in bind_mounts(services["grafana"])}
    provisioning = mounts.get(PROVISIONING.resolve())
    assert provisioning, "deploy/grafana/provisioning is not mounted into grafana"
    env = {k: interpolate(v) for k, v in env_of(services["grafana"]).items()}
    assert provisioning == env.get("GF_PATHS_PROVISIONING", "/etc/grafana/provisioning")
    dashboards_target = mounts.get(DASHBOARDS.resolve())
    assert dashboards_target, "deploy/grafana/dashboards is not mounted into grafana"
    providers = yaml.safe_load((PROVISIONING / "dashboards" / "dashboards.yml").read_text())["providers"]
    assert [p["options"]["path"] for p in providers] == [dashboards_target], "the provider reads another folder"
    home = env.get("GF_DASHBOARDS_DEFAULT_HOME_DASHBOARD_PATH")
    if home:
        assert home.startswith(dashboards_target + "/") and (DASHBOARDS / Path(home).name).is_file()


def test_datasource_points_at_clickhouse(services: dict[str, Any], datasource: dict[str, Any]) -> None:
    data = datasource["jsonData"]
    assert (data["host"], int(data["port"]), data["protocol"]) == ("clickhouse", 8123, "http")
    assert data["defaultDatabase"] == "cvm"
    clickhouse = {k: interpolate(v) for k, v in env_of(services["clickhouse"]).items()}
    assert data["username"] == clickhouse["CLICKHOUSE_USER"]
    # Grafana expands $VAR / ${VAR} in provisioning files from its own environment: each must be passed in.
    grafana_env = env_of(services["grafana"])
    text = (PROVISIONING / "datasources" / "clickhouse.yml").read_text()
    for name in re.findall(r"\$\{?(\w+)\}?", text):
        assert name in grafana_env, f"the datasource reads ${name}, which the grafana service does not set"
    assert "password" in datasource.get("secureJsonData", {}), "the password belongs in secureJsonData"


def test_dashboard_panels_query_cvm_tables(dashboard: dict[str, Any], datasource: dict[str, Any]) -> None:
    queries = [q for q in dashboard_queries() if q[2]["datasource"]["uid"] != PROMETHEUS_UID]
    assert len(queries) >= 8
    for board, title, target in queries:
        sql = target.get("rawSql", "")
        where = f"{board} / {title!r}"
        tables = set(re.findall(r"\bcvm\.(\w+)", sql))
        assert tables and tables <= CVM_TABLES, f"{where} reads {sorted(tables) or 'no cvm table'}"
        assert target["datasource"]["uid"] == datasource["uid"], f"{where} uses another datasource"
        assert target.get("editorType") == "sql" and target.get("format") in (0, 1)
        for table in re.findall(r"\bcvm\.customers\b(?!_)(\s+\w+)?", sql):
            assert table.strip().upper() == "FINAL", f"{where}: cvm.customers is a ReplacingMergeTree, read it FINAL"
    for panel in iter_panels(dashboard["panels"]):
        if panel.get("type") != "row":
            assert panel.get("targets"), f"panel {panel.get('title')!r} has no query"


def test_dashboard_has_the_promised_panels(dashboard: dict[str, Any]) -> None:
    sqls = {
        p["title"]: " ".join(t["rawSql"] for t in p["targets"])
        for p in iter_panels(dashboard["panels"])
        if p.get("targets") and "rawSql" in p["targets"][0]
    }
    everything = "\n".join(sqls.values())
    assert "metric = 'roc_auc'" in everything, "no latest-AUC KPI"
    whale = [sql for sql in sqls.values() if " OVER " in sql and "profitability" in sql and "DESC" in sql]
    assert whale, "no whale curve (cumulative profit over customers sorted by profitability, a window function)"
    assert any("value_tier" in sql and "churn_probability" in sql for sql in sqls.values()), "no value × risk matrix"
    assert any("cvm.alerts" in sql and "ORDER BY alert_time DESC" in sql for sql in sqls.values()), "no alerts table"
    assert any("cvm.model_metrics" in sql and "$__timeInterval" in sql for sql in sqls.values()), "no model trend"
    ids = [p["id"] for p in iter_panels(dashboard["panels"])]
    assert len(ids) == len(set(ids)), "panel ids repeat"


# The columns the dashboard relies on: the full product (value_tier, churn_probability, clv and p_alive come with the
# scoring models). Types as the sink writes them or wider.
_CUSTOMER_COLUMNS = """
    customer_id String, version UInt64, as_of DateTime64(3), revenue Float64, gross_margin Float64,
    n_transactions UInt64, n_contacts UInt64, n_payments UInt64, first_event_time DateTime64(3),
    last_event_time DateTime64(3), cost_to_serve Float64, profitability Float64, updated_at DateTime64(3),
    value_tier LowCardinality(String), churn_probability Nullable(Float64), clv Nullable(Float64),
    p_alive Nullable(Float64)
"""
_SCHEMA = [
    "CREATE DATABASE cvm",
    f"CREATE TABLE cvm.customers ({_CUSTOMER_COLUMNS}) ENGINE = ReplacingMergeTree(version) ORDER BY customer_id",
    f"CREATE TABLE cvm.customer_scores ({_CUSTOMER_COLUMNS}) ENGINE = MergeTree ORDER BY (customer_id, as_of)",
    "CREATE TABLE cvm.transactions (event_id String, customer_id String, event_time DateTime64(3), amount Float64,"
    " currency String, amount_base Nullable(Float64), gross_margin Nullable(Float64),"
    " gross_margin_base Nullable(Float64), channel String, category String)"
    " ENGINE = MergeTree ORDER BY (customer_id, event_time)",
    "CREATE TABLE cvm.alerts (alert_time DateTime64(3), customer_id String, rule String, severity String,"
    " reasons Array(String), scores String) ENGINE = MergeTree ORDER BY alert_time",
    "CREATE TABLE cvm.model_metrics (time DateTime64(3), model_version String, metric String, value Float64)"
    " ENGINE = MergeTree ORDER BY time",
    "INSERT INTO cvm.customers SELECT toString(number), 1, now64(), number, number / 3, 1, 1, 1, now64(), now64(),"
    " 5, number / 3 - 5, now64(), ['A', 'B', 'C'][number % 3 + 1], (number % 10) / 10, number, 0.5 FROM numbers(3000)",
    "INSERT INTO cvm.transactions SELECT toString(number % 900), toString(number % 50), now64() - number, 10, 'EUR',"
    " 10, if(number % 2, NULL, 3.0), if(number % 2, NULL, 3.0), 'web', 'books' FROM numbers(1000)",
    "INSERT INTO cvm.alerts VALUES (now64() - 10, '1', 'churn_risk', 'high', ['no purchase in 60 days'], '{}')",
    "INSERT INTO cvm.model_metrics VALUES (now64() - 10, 'v1', 'roc_auc', 0.8)",
]

_RUNNER = textwrap.dedent(
    """
    import json, sys
    from chdb import session
    job = json.load(sys.stdin)
    s = session.Session(job["path"])
    for statement in job["schema"]:
        s.query(statement)
    errors = {}
    for name, sql in job["queries"].items():
        try:
            s.query(sql, "JSONCompact")
        except Exception as exc:
            errors[name] = str(exc)[:500]
    print(json.dumps(errors))
    """
)


def expand_macros(sql: str, variables: dict[str, str]) -> str:
    """The Grafana ClickHouse plugin's macros and the dashboard's variables, as the plugin would send them."""
    window = "toDateTime(now() - 30 * 86400) AND {0} <= toDateTime(now() + 60)"
    sql = re.sub(r"\$__timeFilter\((\w+)\)", lambda m: f"{m[1]} >= " + window.format(m[1]), sql)
    sql = re.sub(r"\$__timeInterval\((\w+)\)", r"toStartOfInterval(toDateTime(\1), INTERVAL 3600 second)", sql)
    sql = sql.replace("$__fromTime", "toDateTime(now() - 30 * 86400)").replace("$__toTime", "toDateTime(now())")
    sql = re.sub(r"\$\{(\w+)\}|\$(\w+)", lambda m: variables.get(m[1] or m[2], m[0]), sql)
    assert "$" not in sql, f"unexpanded macro or variable in {sql}"
    return sql


def test_dashboard_sql_runs_on_clickhouse(dashboard: dict[str, Any], tmp_path: Path) -> None:
    pytest.importorskip("chdb")
    variables = {v["name"]: str(v.get("query", "")) for v in dashboard.get("templating", {}).get("list", [])}
    queries = {
        f"{title} [{t['refId']}]": expand_macros(t["rawSql"], variables)
        for _, title, t in dashboard_queries()
        if "rawSql" in t
    }
    # A child process: chDB allows one data path per process, and other tests may hold theirs.
    job = {"path": str(tmp_path / "chdb"), "schema": _SCHEMA, "queries": queries}
    proc = subprocess.run(
        [sys.executable, "-c", _RUNNER], input=json.dumps(job), capture_output=True, text=True, timeout=300
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    errors = json.loads(proc.stdout.strip().splitlines()[-1])
    assert not errors, json.dumps(errors, indent=2)


# --- Dockerfile ------------------------------------------------------------------------------------------------------


def test_dockerfile_installs_the_project() -> None:
    text = DOCKERFILE.read_text()
    lines = [line.strip() for line in re.sub(r"\\\n", " ", text).splitlines() if not line.strip().startswith("#")]
    base = [line.split()[1] for line in lines if line.upper().startswith("FROM ")]
    assert base and base[-1].startswith("python:3.11") and "slim" in base[-1], f"base image {base}"
    requires = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["requires-python"]
    assert "3.11" in SpecifierSet(requires), f"the image's Python 3.11 is outside requires-python {requires}"
    assert any(line.upper().startswith("COPY ") and line.split()[1] == "." for line in lines), "source not copied"
    runs = [line for line in lines if line.upper().startswith("RUN ")]
    assert any(re.search(r"\bpip install\b[^&;]*\s\.(\s|$)", line) for line in runs), "no `pip install .`"


def test_dockerignore_keeps_what_pip_install_needs() -> None:
    path = ROOT / ".dockerignore"
    patterns = [p.strip() for p in path.read_text().splitlines() if p.strip() and not p.startswith("#")]
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())

    def ignored(rel: str) -> bool:
        parts = rel.split("/")
        prefixes = ["/".join(parts[: i + 1]) for i in range(len(parts))]
        hit = False
        for pattern in patterns:
            negate = pattern.startswith("!")
            pattern = pattern.lstrip("!").strip("/")
            candidates = [pattern, pattern.removeprefix("**/")] if pattern.startswith("**/") else [pattern]
            if any(fnmatch.fnmatchcase(prefix, c) for prefix in prefixes for c in candidates) or any(
                pattern.startswith("**/") and fnmatch.fnmatchcase(part, pattern[3:]) for part in parts
            ):
                hit = not negate
        return hit

    needed = ["pyproject.toml", project["project"]["readme"]]
    needed += [f"{package}/__init__.py" for package in project["tool"]["setuptools"]["packages"]]
    needed += [p.relative_to(ROOT).as_posix() for p in (ROOT / "schemas").glob("*.avsc")]
    for rel in needed:
        assert not ignored(rel), f".dockerignore leaves {rel} out of the build context; `pip install .` needs it"
    for rel in (".venv/bin/python", ".git/HEAD", "data/clickhouse"):
        assert ignored(rel), f".dockerignore should keep {rel} out of the image"


# --- Prometheus and the operations row ----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def prometheus_config() -> dict[str, Any]:
    return dict(yaml.safe_load((ROOT / "deploy" / "prometheus" / "prometheus.yml").read_text()))


def test_every_cvm_service_and_model_signing_share_the_secrets(services: dict[str, Any]) -> None:
    for name in CVM_SERVICES:
        env = env_of(services[name])
        for secret in ("CVM_MODEL_KEY", "CVM_HTTP_TOKEN"):
            assert re.fullmatch(rf"\$\{{{secret}:?\?[^}}]*\}}", env[secret]), f"{name}: {secret} must be required"
        assert env["CVM_METRICS_HOST"] == "0.0.0.0", f"{name}: Prometheus scrapes over the compose network"


def test_prometheus_scrapes_every_long_running_cvm_process(
    services: dict[str, Any], prometheus_config: dict[str, Any]
) -> None:
    defaults = Config()
    sink_port = int(interpolate(env_of(services["sink"])["CVM_HTTP_PORT"]))
    expected = {"sink": ("sink", sink_port), "learner": ("learner", defaults.learner_metrics_port)}
    jobs = {job["job_name"]: job for job in prometheus_config["scrape_configs"]}
    assert set(jobs) == {"sink", "learner", "worker"}
    for name, (host, port) in expected.items():
        targets = [t for c in jobs[name]["static_configs"] for t in c["targets"]]
        assert targets == [f"{host}:{port}"], name
    [dns] = jobs["worker"]["dns_sd_configs"]
    assert dns["names"] == ["worker"] and dns["port"] == defaults.worker_metrics_port  # every replica
    prometheus = services["prometheus"]
    mounts = dict(bind_mounts(prometheus))
    assert mounts["./deploy/prometheus/prometheus.yml"] == "/etc/prometheus/prometheus.yml"
    script = " ".join(prometheus["command"])
    for job in jobs.values():
        assert job.get("metrics_path", "/metrics") == "/metrics"
        auth = job["authorization"]
        assert auth["type"] == "Bearer" and auth["credentials_file"] in script, "the token file is written at start"
    assert "$$CVM_HTTP_TOKEN" in script and "CVM_HTTP_TOKEN" in env_of(prometheus)  # $$: the shell's, not compose's
    assert all(str(p).startswith("127.0.0.1:") for p in published_ports(prometheus))


def test_grafana_has_the_prometheus_datasource(services: dict[str, Any]) -> None:
    doc = yaml.safe_load((PROVISIONING / "datasources" / "prometheus.yml").read_text())
    [source] = doc["datasources"]
    assert source["uid"] == PROMETHEUS_UID and source["type"] == "prometheus"
    assert urlsplit(source["url"]).hostname == "prometheus" and urlsplit(source["url"]).port == 9090
    assert services["grafana"]["depends_on"]["prometheus"]["condition"] == "service_healthy"


def _cvm_metric_names() -> set[str]:
    from prometheus_client import REGISTRY

    import cvm.metrics  # noqa: F401 - registers every metric

    names = set()
    for family in REGISTRY.collect():
        if family.name.startswith("cvm_"):
            names.add(family.name)
            names.update(sample.name for sample in family.samples)
            suffixes = {"counter": ["_total"], "histogram": ["_bucket", "_count", "_sum"]}.get(family.type, [])
            names.update(family.name + s for s in suffixes)
    return names


def test_the_operations_row_reads_metrics_cvm_exposes(dashboard: dict[str, Any]) -> None:
    known = _cvm_metric_names()
    rows = [p for p in dashboard["panels"] if p.get("type") == "row"]
    assert [r["title"] for r in rows] == ["Operations (Prometheus)"]
    exprs = [(title, t["expr"]) for _, title, t in dashboard_queries() if t["datasource"]["uid"] == PROMETHEUS_UID]
    assert len(exprs) >= 14
    used = set()
    for title, expr in exprs:
        names = set(re.findall(r"\bcvm_[a-z_]+\b", expr))
        assert names, f"{title!r} reads no cvm metric"
        assert names <= known, f"{title!r} reads {sorted(names - known)}, which cvm/metrics.py does not define"
        used |= names
    for needed in ("cvm_records_total", "cvm_consumer_lag_records", "cvm_batch_seconds_bucket", "cvm_model_age_seconds",
                   "cvm_rows_written_total", "cvm_insert_seconds_bucket", "cvm_webhook_alerts_total",
                   "cvm_table_customers", "cvm_table_recovery_seconds_bucket", "cvm_rescorings_total"):  # fmt: skip
        assert needed in used, f"the operations row shows no {needed}"
