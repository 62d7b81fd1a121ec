from __future__ import annotations

import asyncpg
from prometheus_client.parser import text_string_to_metric_families

from services.api.metrics import route_template
from shared.config import Settings
from shared.db.tokens import Scope
from shared.db.users import Address, create_user, set_disabled
from tests.api.api_client import client_for, new_token


def samples(text: str) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    found = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            found[(sample.name, frozenset(sample.labels.items()))] = sample.value
    return found


def labels(**values: str) -> frozenset[tuple[str, str]]:
    return frozenset(values.items())


async def test_metrics_are_prometheus_text_and_open(settings: Settings, pool: asyncpg.Pool) -> None:
    async with client_for(settings, pool) as client:
        response = await client.get("/metrics")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain")
    assert "# TYPE imstack_api_requests_total counter" in response.text
    assert "# TYPE imstack_api_request_duration_seconds histogram" in response.text


async def test_requests_are_counted_and_timed_per_route_template_and_status(
    settings: Settings, pool: asyncpg.Pool
) -> None:
    await create_user(pool, Address("alice", "example.test"), "pw")
    token = await new_token(pool)
    async with client_for(settings, pool, token=token) as client:
        for _ in range(3):
            assert (await client.get("/api/v1/users/alice@example.test")).status_code == 200
        assert (await client.get("/api/v1/users/bob@example.test")).status_code == 404
        assert (await client.get("/api/v1/users", headers={"Authorization": ""})).status_code == 401
        assert (await client.get("/no/such/path")).status_code == 404
        text = (await client.get("/metrics")).text
    found = samples(text)
    route = "/api/v1/users/{address}"
    ok = labels(method="GET", route=route, status="200")
    assert found[("imstack_api_requests_total", ok)] == 3
    assert found[("imstack_api_request_duration_seconds_count", ok)] == 3
    assert found[("imstack_api_request_duration_seconds_sum", ok)] > 0
    assert ("imstack_api_request_duration_seconds_bucket", ok | labels(le="0.05")) in found
    missing = labels(method="GET", route=route, status="404")
    assert found[("imstack_api_requests_total", missing)] == 1
    denied = labels(method="GET", route="/api/v1/users", status="401")
    assert found[("imstack_api_requests_total", denied)] == 1
    unmatched = labels(method="GET", route="<unmatched>", status="404")
    assert found[("imstack_api_requests_total", unmatched)] == 1
    # Route templates, never raw paths: no user names in the metrics.
    assert "alice" not in text and "bob" not in text and "/no/such" not in text


async def test_users_are_counted_by_state(settings: Settings, pool: asyncpg.Pool) -> None:
    for name in ("alice", "bob", "carol"):
        await create_user(pool, Address(name, "example.test"), "pw")
    await set_disabled(pool, Address("bob", "example.test"), True)
    async with client_for(settings, pool) as client:
        found = samples((await client.get("/metrics")).text)
    assert found[("imstack_users", labels(state="active"))] == 2
    assert found[("imstack_users", labels(state="disabled"))] == 1


async def test_each_app_has_its_own_registry(settings: Settings, pool: asyncpg.Pool) -> None:
    async with client_for(settings, pool) as first, client_for(settings, pool) as second:
        for _ in range(2):
            await first.get("/healthz")
        await second.get("/healthz")
        first_found = samples((await first.get("/metrics")).text)
        second_found = samples((await second.get("/metrics")).text)
    healthz = labels(method="GET", route="/healthz", status="200")
    assert first_found[("imstack_api_requests_total", healthz)] == 2
    assert second_found[("imstack_api_requests_total", healthz)] == 1


def test_route_templates_come_out_whole_whether_routes_know_their_prefix_or_not() -> None:
    class Route:
        def __init__(self, path: str) -> None:
            self.path = path

    path = "/api/v1/users/alice@example.test"
    for template in ("/users/{address}", "/api/v1/users/{address}"):
        assert route_template({"path": path, "route": Route(template)}) == (
            "/api/v1/users/{address}"
        )
    assert route_template({"path": "/healthz", "route": Route("/healthz")}) == "/healthz"
    assert route_template({"path": "/nothing"}) == "<unmatched>"


async def test_metrics_need_a_token_when_not_public(settings: Settings, pool: asyncpg.Pool) -> None:
    private = settings.model_copy(update={"api_metrics_public": False})
    reader = await new_token(pool, "scraper", Scope.READ)
    async with client_for(private, pool) as client:
        missing = await client.get("/metrics")
        wrong = await client.get("/metrics", headers={"Authorization": "Bearer nope"})
        read = await client.get("/metrics", headers={"Authorization": f"Bearer {reader}"})
        health = await client.get("/healthz")
        schema = (await client.get("/openapi.json")).json()
    assert missing.status_code == 401
    assert missing.json()["code"] == "unauthorized"
    assert missing.headers["WWW-Authenticate"].startswith("Bearer")
    assert "imstack_api_requests" not in missing.text
    assert wrong.status_code == 401
    assert wrong.json()["code"] == "invalid_token"
    assert read.status_code == 200  # a read-only token is enough
    assert "# TYPE imstack_api_requests_total counter" in read.text
    assert health.status_code == 200  # /healthz stays open
    # The schema tells: /metrics takes the bearer token, like /api/v1.
    assert schema["paths"]["/metrics"]["get"]["security"] == [{"HTTPBearer": []}]
    assert "401" in schema["paths"]["/metrics"]["get"]["responses"]
