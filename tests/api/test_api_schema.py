"""Schemathesis against the API's own OpenAPI schema: the real app (its lifespan opens a
pool on a real, migrated database) called in-process through ASGI with an admin token.
Every operation gets a bounded number of generated requests; none may answer 5xx, and every
response must match the schema (status, content type, body, headers)."""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import Iterator
from pathlib import Path

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from hypothesis.errors import Unsatisfiable
from schemathesis import GenerationMode
from schemathesis.checks import not_a_server_error
from schemathesis.python import asgi
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
)
from schemathesis.specs.openapi.schemas import OpenApiSchema

from services.api.app import create_app
from shared.config import Settings
from shared.db.users import Address, create_user
from tests.conftest import _new_database

TOKEN = "schemathesis-admin-token"
#: What is checked on every response. Not "schema-valid input is accepted": some 422s
#: follow rules a JSON schema cannot state (address *or* username; a room in the conference
#: domain; a sender that must be a local user for a room).
CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_schema_conformance,
    response_headers_conformance,
]
#: Generated requests per operation, of valid and of invalid data each: bounded so that the
#: whole run stays under a minute.
EXAMPLES = 6


async def _seed(url: str) -> None:
    """A user and a room, so that generated requests also reach the found paths."""
    import asyncpg

    from services.api import room_ops

    conn = await asyncpg.connect(url)
    try:
        await create_user(conn, Address("alice", "example.test"), "pw")
        async with conn.transaction():
            await room_ops.create_room(
                conn, "lobby@conference.example.test", owner="alice@example.test", private=False
            )
    finally:
        await conn.close()


@pytest.fixture(scope="module")
def schema_database(server_url: str, template_database: str) -> Iterator[str]:
    yield from _new_database(server_url, template_database)


@pytest.fixture(scope="module")
def api_schema(
    schema_database: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[OpenApiSchema]:
    asyncio.run(_seed(schema_database))
    api_settings = Settings(
        database_url=schema_database,
        data_dir=Path(tmp_path_factory.mktemp("schemathesis")),
        domain="example.test",
        database_connect_timeout=3,
        api_tokens=[TOKEN],
    )
    # Loading the schema starts the app's lifespan (its pool) on schemathesis' event loop.
    yield schemathesis.openapi.from_asgi("/openapi.json", create_app(api_settings))
    asgi.shutdown_lifespans()  # the pool is closed before the database is dropped


def test_the_api_matches_its_schema_and_never_fails_on_odd_input(
    api_schema: OpenApiSchema,
) -> None:
    # One test over every operation (schemathesis' pytest loader does not run on pytest 9).
    operations = [result.ok() for result in api_schema.get_all_operations()]
    assert len(operations) > 30
    failures: list[str] = []
    for operation, mode in itertools.product(operations, GenerationMode):

        @given(case=operation.as_strategy(mode))
        @settings(
            max_examples=EXAMPLES,
            deadline=None,
            derandomize=True,
            database=None,
            suppress_health_check=list(HealthCheck),
        )
        def check(case: schemathesis.Case) -> None:
            case.call_and_validate(headers={"Authorization": f"Bearer {TOKEN}"}, checks=CHECKS)

        try:
            check()
        except Unsatisfiable:
            assert mode is GenerationMode.NEGATIVE, operation.label
            continue  # no parameters and no body: there is no invalid input to make
        except Exception as exc:  # collected: every operation is tried
            failures.append(f"{operation.label} ({mode.value} data): {exc}")
    assert not failures, "\n\n".join(failures)
