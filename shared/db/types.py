"""Type aliases for what queries run on."""

from __future__ import annotations

from typing import TypeAlias

import asyncpg
from asyncpg.pool import PoolConnectionProxy

#: A connection, whether opened directly or acquired from a pool.
Connection: TypeAlias = asyncpg.Connection | PoolConnectionProxy
#: Anything with ``fetch``/``execute``: a connection or a pool.
Executor: TypeAlias = Connection | asyncpg.Pool
