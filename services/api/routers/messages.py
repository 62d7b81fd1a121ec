"""Offline messages: ``/api/v1/users/{address}/messages`` (count, list, delete one or all)
and ``/api/v1/messages/purge`` (everything received before a date, in batches); sending:
``POST /api/v1/messages`` (to a user or a room, through the normal routing).

Reading needs any token; deleting needs an admin token. Deleting a message whose delivery
is in flight does not recall it: msilo finds the row gone when the outcome arrives.
"""

from __future__ import annotations

import base64
import binascii
from typing import Annotated, Any

from fastapi import APIRouter, Path, Query, Response, status
from pydantic import AwareDatetime

from services.api import message_ops
from services.api.deps import AdminDep, PoolDep, SettingsDep
from services.api.errors import ErrorBody, InvalidInput, NotFound
from services.api.routers.registrations import existing_user
from services.api.routers.users import AddressPath
from services.api.schemas.messages import (
    BodyEncoding,
    MessageCount,
    MessagePublic,
    MessagesDeleted,
    MessageSend,
    MessageSent,
    MessagesPublic,
    MessagesPurged,
    SendOutcome,
)
from shared.db import offline as offline_db

router = APIRouter(tags=["messages"])

MAX_PAGE = 1000

MessagePath = Annotated[int, Path(ge=1, le=2**63 - 1, description="The message's id.")]
_NOT_FOUND: dict[int | str, dict[str, Any]] = {
    404: {"model": ErrorBody, "description": "No such user (or message)."}
}


@router.get("/users/{address}/messages/count", responses=_NOT_FOUND)
async def count_messages(
    address: AddressPath, pool: PoolDep, settings: SettingsDep
) -> MessageCount:
    """How many messages are stored for the user."""
    async with pool.acquire() as conn, conn.transaction(isolation="repeatable_read", readonly=True):
        addr = await existing_user(conn, address, settings.domain)
        return MessageCount(count=await offline_db.count_messages(conn, str(addr)))


@router.get("/users/{address}/messages", responses=_NOT_FOUND)
async def list_messages(
    address: AddressPath,
    pool: PoolDep,
    settings: SettingsDep,
    limit: Annotated[int, Query(ge=1, le=MAX_PAGE, description="Page size.")] = 100,
    offset: Annotated[int, Query(ge=0, le=2**31 - 1, description="Messages to skip.")] = 0,
) -> MessagesPublic:
    """The user's stored messages in delivery order (oldest first)."""
    async with pool.acquire() as conn, conn.transaction(isolation="repeatable_read", readonly=True):
        addr = await existing_user(conn, address, settings.domain)
        count = await offline_db.count_messages(conn, str(addr))
        found = await offline_db.list_messages_page(conn, str(addr), limit=limit, offset=offset)
    return MessagesPublic(
        data=[MessagePublic.of(m) for m in found], count=count, limit=limit, offset=offset
    )


@router.delete(
    "/users/{address}/messages/{message_id}",
    status_code=status.HTTP_204_NO_CONTENT,
    responses=_NOT_FOUND,
)
async def delete_message(
    address: AddressPath, message_id: MessagePath, pool: PoolDep, settings: SettingsDep, _: AdminDep
) -> None:
    """Delete one stored message (it will not be delivered)."""
    async with pool.acquire() as conn, conn.transaction():
        addr = await existing_user(conn, address, settings.domain)
        if not await offline_db.delete_recipient_message(conn, str(addr), message_id):
            raise NotFound(f"{addr} has no stored message {message_id}", code="message_not_found")


@router.delete("/users/{address}/messages", responses=_NOT_FOUND)
async def delete_messages(
    address: AddressPath, pool: PoolDep, settings: SettingsDep, _: AdminDep
) -> MessagesDeleted:
    """Delete everything stored for the user."""
    async with pool.acquire() as conn, conn.transaction():
        addr = await existing_user(conn, address, settings.domain)
        return MessagesDeleted(deleted=await offline_db.delete_recipient_messages(conn, str(addr)))


@router.post("/messages/purge")
async def purge_messages(
    pool: PoolDep,
    _: AdminDep,
    before: Annotated[
        AwareDatetime,
        Query(description="Delete every message received before this time (with a zone)."),
    ],
) -> MessagesPurged:
    """Delete every stored message received before ``before``, for all users, in batches of
    short transactions; how many."""
    async with pool.acquire() as conn:
        purged, batches = await message_ops.purge_before(conn, before)
    return MessagesPurged(purged=purged, batches=batches)


#: Most bytes of a sent body (the relay's MESSAGEs go over TCP when large).
MAX_BODY_BYTES = 65536
_SEND_ERRORS: dict[int | str, dict[str, Any]] = {
    404: {"model": ErrorBody, "description": "No such user or room."},
    409: {"model": ErrorBody, "description": "The user is disabled, or their mailbox is full."},
}


@router.post(
    "/messages",
    status_code=status.HTTP_202_ACCEPTED,
    response_model=MessageSent,
    responses=_SEND_ERRORS,
)
async def send_message(
    body: MessageSend, pool: PoolDep, settings: SettingsDep, _: AdminDep
) -> Response:
    """Send a MESSAGE from ``sender`` (default: the system address) to a user or a room,
    routed as the relay routes one: to a registered user it is queued for the relay to send
    now — if that delivery fails it is stored offline; to a user who is not registered it is
    stored, and msilo delivers it when they register; to a room it is queued for the room
    worker, which fans it out to the members (checking the sender may talk there, as for a
    MESSAGE from a client). 202: accepted, the delivery is asynchronous."""
    payload = _decode(body)
    async with pool.acquire() as conn:  # one round trip, its own transaction
        sent = await message_ops.send(
            conn,
            settings,
            to=body.to,
            sender=body.sender,
            sender_display=body.sender_display,
            content_type=body.content_type,
            body=payload,
            deliver_at=body.deliver_at,
        )
    answer = MessageSent(
        outcome=SendOutcome(sent.outcome.value),
        recipient=sent.recipient,
        sender=sent.sender,
        outbound_id=sent.id if sent.outcome is message_ops.Outcome.QUEUED else None,
        offline_id=sent.id
        if sent.outcome in (message_ops.Outcome.STORED, message_ops.Outcome.SCHEDULED)
        else None,
        room_inbox_id=sent.id if sent.outcome is message_ops.Outcome.ROOM else None,
    )
    # Serialised here: returned as a model, FastAPI would validate it against
    # response_model (a copy) before serialising it — work for a model built just above.
    return Response(
        answer.model_dump_json(),
        status_code=status.HTTP_202_ACCEPTED,
        media_type="application/json",
    )


def _decode(body: MessageSend) -> bytes:
    if body.body_encoding is BodyEncoding.BASE64:
        try:
            payload = base64.b64decode(body.body, validate=True)
        except (binascii.Error, ValueError):
            raise InvalidInput("body: not valid base64", code="invalid_message") from None
    else:
        payload = body.body.encode()
    if not payload:
        raise InvalidInput("body: empty", code="invalid_message")
    if len(payload) > MAX_BODY_BYTES:
        raise InvalidInput(
            f"body: {len(payload)} bytes, at most {MAX_BODY_BYTES}", code="invalid_message"
        )
    return payload
