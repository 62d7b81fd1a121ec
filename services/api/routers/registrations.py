"""``/api/v1/users/{address}/registrations``: a user's current bindings; remove one.

Reading needs any token; removing needs an admin token. A removed binding is deleted from
the location table (no NOTIFY yet: a relay that caches bindings sees the removal when its
entry expires); the UA registers again when its refresh is due.
"""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Path, status

from services.api.deps import AdminDep, PoolDep, SettingsDep
from services.api.errors import ErrorBody, NotFound
from services.api.routers.users import AddressPath
from services.api.schemas.registrations import RegistrationPublic, RegistrationsPublic
from shared.db import locations as locations_db
from shared.db import users as users_db
from shared.db.types import Executor
from shared.db.users import Address, parse_address

router = APIRouter(prefix="/users/{address}/registrations", tags=["registrations"])

BindingPath = Annotated[int, Path(ge=1, le=2**63 - 1, description="The binding's id.")]
_NOT_FOUND: dict[int | str, dict[str, Any]] = {
    404: {"model": ErrorBody, "description": "No such user, or no such binding of theirs."}
}


async def existing_user(conn: Executor, text: str, domain: str) -> Address:
    """The user's address; :class:`UserNotFound` when there is no such user."""
    address = parse_address(text, domain)
    if await users_db.get_user(conn, address) is None:
        raise users_db.UserNotFound(f"no such user: {address}")
    return address


@router.get("", responses=_NOT_FOUND)
async def list_registrations(
    address: AddressPath, pool: PoolDep, settings: SettingsDep
) -> RegistrationsPublic:
    """The user's unexpired bindings: contact, transport, source, expiry, user agent."""
    async with pool.acquire() as conn, conn.transaction(isolation="repeatable_read", readonly=True):
        addr = await existing_user(conn, address, settings.domain)
        bindings = await locations_db.get_bindings(conn, str(addr))
    return RegistrationsPublic(
        data=[RegistrationPublic.of(b) for b in bindings], count=len(bindings)
    )


@router.delete("/{binding_id}", status_code=status.HTTP_204_NO_CONTENT, responses=_NOT_FOUND)
async def delete_registration(
    address: AddressPath, binding_id: BindingPath, pool: PoolDep, settings: SettingsDep, _: AdminDep
) -> None:
    """Remove one binding: requests for the user no longer go to that contact."""
    async with pool.acquire() as conn, conn.transaction():
        addr = await existing_user(conn, address, settings.domain)
        if not await locations_db.delete_aor_binding(conn, str(addr), binding_id):
            raise NotFound(f"{addr} has no binding {binding_id}", code="registration_not_found")
