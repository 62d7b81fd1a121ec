"""The operations and security documents (docs/*.md) checked against the code: every setting,
metric, CLI command, option, source path and link they name must exist."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import asyncpg
import pytest
import typer.main
from prometheus_client.parser import text_string_to_metric_families

from shared.cli import app
from shared.config import Settings, env_name
from tests.api.api_client import client_for, new_token

ROOT = Path(__file__).resolve().parent.parent
DOCS = sorted((ROOT / "docs").glob("*.md"))
SETTING_NAMES = {env_name(name) for name in Settings.model_fields}
#: Read by setup.py at build time (the compiled build), not a setting of a running imstack.
BUILD_VARIABLES = {"IMSTACK_COMPILE"}


def text(path: Path) -> str:
    return path.read_text(encoding="utf-8")


def code_regions(markdown: str) -> list[str]:
    """Fenced blocks and inline code spans: where commands are written."""
    fenced = re.findall(r"^```[^\n]*\n(.*?)^```", markdown, flags=re.M | re.S)
    rest = re.sub(r"^```[^\n]*\n.*?^```", "", markdown, flags=re.M | re.S)
    return fenced + re.findall(r"`([^`\n]+)`", rest)


def test_there_are_docs_and_the_readme_links_them() -> None:
    assert {p.name for p in DOCS} >= {"operations.md", "security.md"}
    readme = text(ROOT / "README.md")
    for doc in ("docs/operations.md", "docs/security.md"):
        assert f"]({doc})" in readme


@pytest.mark.parametrize("doc", DOCS, ids=lambda p: p.name)
def test_every_setting_named_is_a_real_setting(doc: Path) -> None:
    named = re.findall(r"\b(IMSTACK_[A-Z][A-Z0-9_]*[A-Z0-9])(_\*)?", text(doc))
    assert named, "no settings named at all?"
    unknown = {
        name + star
        for name, star in named
        if (
            name not in SETTING_NAMES | BUILD_VARIABLES
            if not star
            else not any(setting.startswith(name + "_") for setting in SETTING_NAMES)
        )
    }
    assert unknown == set()


async def _exported_families(settings: Settings, pool: asyncpg.Pool) -> dict[str, set[str]]:
    """Every metric family ``/metrics`` exports → the names it may be written as (the family,
    its samples, and ``<name>_total`` for a counter that has no sample yet)."""
    token = await new_token(pool)
    async with client_for(settings, pool, token=token) as client:
        assert (await client.get("/api/v1/users")).status_code == 200  # a labelled series
        exposition = (await client.get("/metrics")).text
    families: dict[str, set[str]] = {}
    for family in text_string_to_metric_families(exposition):
        names = families.setdefault(family.name, {family.name})
        names.update(sample.name for sample in family.samples)
        if family.type == "counter":
            names.add(family.name + "_total")
    return families


def _metrics_named() -> set[str]:
    named = set()
    for doc in DOCS:
        named.update(re.findall(r"\bimstack_[a-z0-9_]*[a-z0-9]", text(doc)))
    return named


async def test_every_metric_named_is_exported(settings: Settings, pool: asyncpg.Pool) -> None:
    families = await _exported_families(settings, pool)
    named = _metrics_named()
    assert named, "no metrics named at all?"
    exported = set().union(*families.values())
    assert named - exported == set()


async def test_every_metric_exported_is_documented(settings: Settings, pool: asyncpg.Pool) -> None:
    """The reverse: a new metric family must get its line in docs/operations.md's table."""
    families = await _exported_families(settings, pool)
    assert len(families) > 20, sorted(families)  # the statistics families are there too
    named = set(re.findall(r"\bimstack_[a-z0-9_]*[a-z0-9]", text(ROOT / "docs/operations.md")))
    undocumented = {family for family, names in families.items() if not names & named}
    assert undocumented == set()


def _command(words: list[str]) -> Any:
    """The CLI command ``imstack <words>`` resolves to; fails on an unknown command."""
    command: Any = typer.main.get_command(app)
    for word in words:
        subcommands = getattr(command, "commands", None)
        if not isinstance(subcommands, dict) or word.startswith("-"):
            break
        assert word in subcommands, f"no command {word!r} in `imstack {' '.join(words)}`"
        command = subcommands[word]
    return command


def _invocations(markdown: str) -> list[list[str]]:
    found = []
    for region in code_regions(markdown):
        # At the start of a line or of a shell command, after environment assignments.
        start = r"(?:^|\$\(|[;&|] *|\$ |\b[A-Z_]+=\S* +)"
        for match in re.finditer(start + r"imstack((?: +[^\s;|&>)#`]+)+)", region, re.M):
            found.append(match.group(1).split())
    return found


@pytest.mark.parametrize("doc", DOCS, ids=lambda p: p.name)
def test_every_cli_command_and_option_named_exists(doc: Path) -> None:
    invocations = _invocations(text(doc))
    for words in invocations:
        command = _command(words)
        known = {opt for param in command.params for opt in getattr(param, "opts", [])}
        known.add("--help")
        for word in words:
            if word.startswith("--"):
                assert word.split("=")[0] in known, f"`imstack {' '.join(words)}`: no {word}"


def test_the_cli_check_catches_a_wrong_command() -> None:
    with pytest.raises(AssertionError):
        _command(["user", "create"])
    assert _invocations("run `imstack token create ops --read-only` now") == [
        ["token", "create", "ops", "--read-only"]
    ]


@pytest.mark.parametrize("doc", DOCS, ids=lambda p: p.name)
def test_every_source_path_named_exists(doc: Path) -> None:
    paths = set(re.findall(r"\b((?:shared|services|tests|scripts|bench)/[\w./-]*[\w])", text(doc)))
    assert paths, "no source files named at all?"
    missing = {p for p in paths if not _exists(p)}
    assert missing == set()


def _exists(path: str) -> bool:
    """``path`` exists; ``NNNN_name.sql`` stands for any numbered migration."""
    if "NNNN" in path:
        pattern = Path(path).name.replace("NNNN", "[0-9]" * 4).replace("name", "*")
        return any((ROOT / path).parent.glob(pattern))
    return (ROOT / path).exists()


def _anchors(markdown: str) -> set[str]:
    """GitHub's heading anchors: lower case, punctuation dropped, spaces to hyphens."""
    headings = re.findall(r"^#+ +(.+?) *$", markdown, flags=re.M)
    return {re.sub(r"[^\w\- ]", "", h.lower()).replace(" ", "-") for h in headings}


@pytest.mark.parametrize("doc", [*DOCS, ROOT / "README.md"], ids=lambda p: p.name)
def test_every_relative_link_resolves(doc: Path) -> None:
    for target in re.findall(r"\]\(([^)\s]+)\)", text(doc)):
        if re.match(r"[a-z]+:", target):
            continue
        file_part, _, anchor = target.partition("#")
        path = (doc.parent / file_part).resolve() if file_part else doc
        assert path.exists(), f"{doc.name}: broken link {target}"
        if anchor:
            assert anchor in _anchors(text(path)), f"{doc.name}: no heading for {target}"
