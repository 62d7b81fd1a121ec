from __future__ import annotations

import re
from pathlib import Path

import pytest

from shared.config import Settings, SettingsError, load_settings, settings_table

ROOT = Path(__file__).resolve().parent.parent

# The table at the end of the design document: these names and defaults are the interface.
DESIGN_DEFAULTS = {
    "database_url": None,
    "data_dir": Path("./imstack-data"),
    "domain": "localhost",
    "imc_domain": None,
    "sip_host": "0.0.0.0",
    "sip_port": 5060,
    "sip_tls_port": 5061,
    "msrp_port": 2855,
    "tls_cert": None,
    "tls_key": None,
    "msrp_allow_insecure_auth": False,
    "api_host": "0.0.0.0",
    "api_port": 8000,
    "api_tokens": [],
    "log_format": "text",
}


def test_defaults_are_those_of_the_design() -> None:
    settings = Settings()
    for field, expected in DESIGN_DEFAULTS.items():
        assert getattr(settings, field) == expected, field
    assert settings.conference_domain == "conference.localhost"


def test_environment_variables_set_the_fields(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("IMSTACK_DOMAIN", "Example.COM")
    monkeypatch.setenv("IMSTACK_API_TOKENS", "one, two,,three")
    monkeypatch.setenv("IMSTACK_MSRP_ALLOW_INSECURE_AUTH", "true")
    monkeypatch.setenv("IMSTACK_SIP_PORT", "5070")
    settings = load_settings()
    assert settings.domain == "example.com"
    assert settings.conference_domain == "conference.example.com"
    assert settings.api_tokens == ["one", "two", "three"]
    assert settings.msrp_allow_insecure_auth is True
    assert settings.sip_port == 5070


def test_every_bad_variable_gets_its_own_line(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("IMSTACK_SIP_PORT", "0")
    monkeypatch.setenv("IMSTACK_SHUTDOWN_TIMEOUT", "-1")
    monkeypatch.setenv("IMSTACK_LOG_LEVEL", "chatty")
    with pytest.raises(SettingsError) as caught:
        load_settings()
    lines = caught.value.lines
    assert len(lines) == 3
    assert lines[0].startswith("invalid setting IMSTACK_SIP_PORT='0':")
    assert any(line.startswith("invalid setting IMSTACK_SHUTDOWN_TIMEOUT='-1':") for line in lines)
    assert any("IMSTACK_LOG_LEVEL='chatty'" in line for line in lines)


def test_readme_configuration_table_is_the_settings_model() -> None:
    readme = (ROOT / "README.md").read_text()
    assert settings_table() in readme, "README table is stale: paste `imstack settings`"
    documented = set(re.findall(r"`(IMSTACK_[A-Z_]+)`", readme))
    for name in Settings.model_fields:
        assert f"IMSTACK_{name.upper()}" in documented
