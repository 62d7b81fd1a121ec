"""Liveness and readiness probes."""

from __future__ import annotations

import asyncio
import logging

import asyncpg
from fastapi import APIRouter
from fastapi.responses import JSONResponse
from pydantic import BaseModel

from services.api.deps import PoolDep
from shared.db.migrate import applied_versions, latest_version
from shared.db.pool import describe

log = logging.getLogger(__name__)
router = APIRouter(tags=["health"])

READY_CHECK_TIMEOUT = 3.0


class Health(BaseModel):
    status: str


class Readiness(BaseModel):
    status: str
    database: str
    schema_version: int | None = None
    detail: str | None = None


@router.get("/healthz", response_model=Health)
async def healthz() -> Health:
    """The process is alive (no dependency is checked)."""
    return Health(status="ok")


@router.get("/readyz", response_model=Readiness, responses={503: {"model": Readiness}})
async def readyz(pool: PoolDep) -> Readiness | JSONResponse:
    """Ready to serve: the database answers and carries every migration. 503 otherwise."""
    try:
        async with asyncio.timeout(READY_CHECK_TIMEOUT), pool.acquire() as conn:
            done = await applied_versions(conn)
    except (OSError, TimeoutError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
        return _unready("unreachable", f"database unreachable: {describe(exc)}")
    current = max(done, default=0)
    if current < latest_version():
        return _unready(
            "not migrated", f"schema version {current}, expected {latest_version()}", current
        )
    return Readiness(status="ready", database="ok", schema_version=current)


def _unready(database: str, detail: str, version: int | None = None) -> JSONResponse:
    body = Readiness(status="unavailable", database=database, schema_version=version, detail=detail)
    return JSONResponse(body.model_dump(), status_code=503)
