"""docker-compose.yml is for users (no Docker engine here): keep it correct by parsing it."""

from __future__ import annotations

from pathlib import Path

import pytest

from pipelines.cli import parser
from pipelines.settings import (
    AlertSettings, ClickHouseSettings, KafkaSettings, LakeSettings, ModelSettings, PiiSettings,
    ServiceSettings, ValidationSettings,
)

yaml = pytest.importorskip("yaml")
ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def compose() -> dict:
    return yaml.safe_load((ROOT / "docker-compose.yml").read_text())


def _settings_env_names() -> set[str]:
    names = set()
    for cls in (AlertSettings, ClickHouseSettings, KafkaSettings, LakeSettings, ModelSettings,
                PiiSettings, ServiceSettings, ValidationSettings):
        prefix = cls.model_config["env_prefix"]
        names |= {f"{prefix}{field}".upper() for field in cls.model_fields}
    return names


def test_the_stack_has_every_part(compose):
    assert {"kafka", "clickhouse", "prometheus", "grafana", "worker", "sink", "dispatch",
            "simulator"} <= set(compose["services"])
    kafka = compose["services"]["kafka"]["environment"]
    assert "controller" in kafka["KAFKA_PROCESS_ROLES"]  # KRaft, no ZooKeeper
    assert "zookeeper" not in compose["services"]


def test_riskstream_commands_and_variables_exist(compose):
    known_env = _settings_env_names()
    cli = parser()
    for name, service in compose["services"].items():
        if service.get("image") != "riskstream:local":
            continue
        cli.parse_args(service["command"])  # exits (SystemExit) on an unknown command or flag
        env = service["environment"]
        assert env["RISKSTREAM_KAFKA_BOOTSTRAP"] == "kafka:9092", name
        unknown = {k for k in env if k.startswith("RISKSTREAM_")} - known_env
        assert not unknown, f"{name}: variables no setting reads: {unknown}"
        assert service["depends_on"]["kafka"]["condition"] == "service_healthy"


def test_secrets_come_from_the_environment(compose):
    text = (ROOT / "docker-compose.yml").read_text()
    env = compose["services"]["worker"]["environment"]
    assert env["RISKSTREAM_PII_HMAC_KEY"].startswith("${RISKSTREAM_PII_HMAC_KEY")
    assert "hooks.slack.com" not in text


def test_mounted_files_and_build_context_exist(compose):
    for service in compose["services"].values():
        for volume in service.get("volumes", []):
            source = volume.split(":")[0]
            if source.startswith("./"):
                assert (ROOT / source).exists(), source
    dockerfile = (ROOT / "Dockerfile").read_text()
    for line in dockerfile.splitlines():
        if line.startswith("COPY "):
            for source in line.split()[1:-1]:
                assert (ROOT / source).exists(), f"Dockerfile copies a missing path: {source}"


def test_the_warehouse_gets_its_schema_then_its_loader(compose):
    services = compose["services"]
    migrate, load = services["migrate"], services["load"]
    assert migrate["command"][:2] == ["warehouse", "migrate"]
    assert migrate["restart"] == "no"  # one shot
    assert migrate["depends_on"]["clickhouse"]["condition"] == "service_healthy"
    assert load["command"] == ["load"]
    assert load["depends_on"]["migrate"]["condition"] == "service_completed_successfully"
    assert load["depends_on"]["clickhouse"]["condition"] == "service_healthy"
    for service in (migrate, load):
        url = service["environment"]["RISKSTREAM_CLICKHOUSE_URL"]
        assert url == "http://riskstream@clickhouse:8123"  # the password on its own:
        assert service["environment"]["RISKSTREAM_CLICKHOUSE_PASSWORD"] == (
            services["clickhouse"]["environment"]["CLICKHOUSE_PASSWORD"])  # no URL encoding
        assert service["environment"]["RISKSTREAM_CLICKHOUSE_DATABASE"] == (
            services["clickhouse"]["environment"]["CLICKHOUSE_DB"])
