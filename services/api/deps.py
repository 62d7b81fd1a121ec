"""Request dependencies as ``Annotated`` aliases."""

from __future__ import annotations

from typing import Annotated, cast

import asyncpg
from fastapi import Depends, Request

from shared.config import Settings


def get_pool(request: Request) -> asyncpg.Pool:
    return cast(asyncpg.Pool, request.app.state.pool)


def get_settings(request: Request) -> Settings:
    return cast(Settings, request.app.state.settings)


PoolDep = Annotated[asyncpg.Pool, Depends(get_pool)]
SettingsDep = Annotated[Settings, Depends(get_settings)]
