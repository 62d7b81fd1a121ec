"""compose.yaml checked against the code (no Docker engine runs on the test machines)."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
import typer.main
import yaml

from shared.cli import app
from shared.config import Settings, env_name
from shared.lifecycle import SERVICES
from tests.stack.topology import MissingVariable, substitute

ROOT = Path(__file__).resolve().parent.parent
COMPOSE_TEXT = (ROOT / "compose.yaml").read_text()
COMPOSE: dict[str, Any] = yaml.safe_load(COMPOSE_TEXT)
IMSTACK_SERVICES = {
    name: spec
    for name, spec in COMPOSE["services"].items()
    if spec.get("image", "").startswith("imstack")
}
SETTING_NAMES = {env_name(name) for name in Settings.model_fields}
# Which setting gives the container port of each published port.
PORT_SETTINGS = {
    ("relay", "5060/udp"): "sip_port",
    ("relay", "5060/tcp"): "sip_port",
    ("relay", "5061/tcp"): "sip_tls_port",
    ("relay", "2855/tcp"): "msrp_port",
    ("api", "8000/tcp"): "api_port",
}


def test_every_service_package_runs_in_its_own_container() -> None:
    served = {
        tuple(spec["command"][1:])
        for spec in IMSTACK_SERVICES.values()
        if spec["command"][0] == "serve"
    }
    assert served == {(name,) for name in SERVICES}
    packages = {p.parent.name for p in (ROOT / "services").glob("*/service.py")}
    assert packages == set(SERVICES)


@pytest.mark.parametrize("name", sorted(IMSTACK_SERVICES))
def test_each_command_is_a_real_cli_command(name: str) -> None:
    command = IMSTACK_SERVICES[name]["command"]
    root = typer.main.get_command(app)
    ctx = root.make_context("imstack", list(command), resilient_parsing=False)
    sub = root.get_command(ctx, command[0])
    assert sub is not None, f"{name}: unknown command {command[0]!r}"
    sub.make_context(command[0], list(command[1:]), parent=ctx)  # raises on bad arguments
    if command[0] == "serve":
        assert set(command[1:]) <= set(SERVICES)


@pytest.mark.parametrize("name", sorted(IMSTACK_SERVICES))
def test_every_imstack_variable_is_a_real_setting_with_a_valid_value(name: str) -> None:
    environment: dict[str, str] = IMSTACK_SERVICES[name]["environment"]
    unknown = set(environment) - SETTING_NAMES
    assert not unknown, f"{name}: not settings: {unknown}"
    values = {
        key.removeprefix("IMSTACK_").lower(): str(value)
        for key, value in environment.items()
        if "${" not in str(value)
    }
    Settings(**values)  # type: ignore[arg-type]  # raises if a value is invalid


def test_published_ports_match_the_settings_defaults() -> None:
    published = set()
    for name, spec in IMSTACK_SERVICES.items():
        for mapping in spec.get("ports", []):
            host, container = mapping.split(":", 1)
            field = PORT_SETTINGS[(name, container)]
            default = Settings.model_fields[field].default
            port = int(container.split("/")[0])
            assert port == default == int(host), mapping
            assert int(spec["environment"][env_name(field)]) == default
            published.add((name, container))
    assert published == set(PORT_SETTINGS)


def test_healthchecks_and_startup_order() -> None:
    services = COMPOSE["services"]
    assert "pg_isready" in " ".join(services["postgres"]["healthcheck"]["test"])
    assert "/readyz" in " ".join(services["api"]["healthcheck"]["test"])
    assert services["migrate"]["depends_on"]["postgres"]["condition"] == "service_healthy"
    for name in SERVICES:
        assert services[name]["depends_on"]["migrate"]["condition"] == (
            "service_completed_successfully"
        )
    assert "pgdata" in COMPOSE["volumes"]


def test_dockerfile_builds_a_slim_non_root_image() -> None:
    dockerfile = (ROOT / "Dockerfile").read_text()
    assert "-slim" in dockerfile
    final_stage = dockerfile.rsplit("FROM ", 1)[1]
    assert "USER imstack" in final_stage
    assert "[dev]" not in dockerfile
    assert 'ENTRYPOINT ["imstack"]' in final_stage


def test_no_secret_has_a_default_and_the_database_password_must_be_set() -> None:
    # G13: compose.yaml used to default POSTGRES_PASSWORD to "imstack".
    uses = re.findall(r"\$\{(\w+)([^}]*)\}", COMPOSE_TEXT)
    secrets = [(name, rest) for name, rest in uses if re.search("PASSWORD|SECRET|TOKEN|KEY", name)]
    assert [name for name, _ in secrets].count("POSTGRES_PASSWORD") >= 2
    for name, rest in secrets:
        assert rest.startswith(":?"), f"${{{name}{rest}}} must be required, without a default"

    database_urls = [
        spec["environment"]["IMSTACK_DATABASE_URL"] for spec in IMSTACK_SERVICES.values()
    ]
    postgres = COMPOSE["services"]["postgres"]["environment"]["POSTGRES_PASSWORD"]
    for env_file in ({}, {"POSTGRES_PASSWORD": ""}):  # no .env, or an empty value
        for value in (postgres, *database_urls):
            with pytest.raises(MissingVariable, match=r"set POSTGRES_PASSWORD in \.env"):
                substitute(value, env_file)

    env_file = {"POSTGRES_PASSWORD": "0f3a9c2e7b1d4a6c8e0f2a4c6e8a0c2e"}
    assert substitute(postgres, env_file) == env_file["POSTGRES_PASSWORD"]
    for url in database_urls:
        assert substitute(url, env_file) == (
            f"postgresql://imstack:{env_file['POSTGRES_PASSWORD']}@postgres:5432/imstack"
        )
