"""Publishing over HTTP: turn a request body into validated events for the inbox.

What ``data`` may be (depth, numbers, size as stored) is decided by the inbox's check in
PostgreSQL, the one rule for HTTP, SQL and captured rows (migration 0008): only PostgreSQL
knows the size of what it stores, which can be far larger than what was sent (``1e100000``
is stored as 100,001 digits). Here the body is only taken apart.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import msgspec

from .schema import SCHEMA
from .topics import EVENT_ID, TYPE, InvalidInput


class _EventIn(msgspec.Struct, forbid_unknown_fields=True):
    type: str = "message"
    # Kept as the client's raw JSON: handed to PostgreSQL untouched.
    data: msgspec.Raw = msgspec.Raw(b"null")
    id: str | None = None


_decoder = msgspec.json.Decoder(_EventIn | list[_EventIn])

TOO_DEEP = "event data is nested more than 64 levels deep"


@dataclass(frozen=True, slots=True)
class NewEvent:
    """An event ready for the inbox; ``data`` is JSON text."""

    type: str
    data: str
    id: str | None


def parse(body: bytes, *, max_batch_events: int) -> list[NewEvent]:
    """One event object or a JSON array of them; InvalidInput says what is wrong."""
    try:
        decoded = _decoder.decode(body)
    except msgspec.ValidationError as exc:
        raise InvalidInput(f"invalid event: {exc}") from None
    except msgspec.DecodeError as exc:
        raise InvalidInput(f"malformed JSON: {exc}") from None
    except RecursionError:
        # The parser's own limit (hundreds of levels) is far beyond the rule's 64.
        raise InvalidInput(TOO_DEEP) from None
    items = decoded if isinstance(decoded, list) else [decoded]
    if not items:
        raise InvalidInput("empty batch: send one event or an array of 1 or more")
    if len(items) > max_batch_events:
        raise InvalidInput(f"batch of {len(items)} events is over the limit of {max_batch_events}")
    return [_check(item, index) for index, item in enumerate(items)]


def _check(item: _EventIn, index: int) -> NewEvent:
    where = f"event {index}: " if index else ""
    if not TYPE.fullmatch(item.type):
        raise InvalidInput(
            f"{where}type must be 1 to 200 characters without control characters or line separators"
        )
    if item.id is not None and not EVENT_ID.fullmatch(item.id):
        raise InvalidInput(
            f"{where}id must be 1 to 200 characters without control characters or line separators"
        )
    try:
        # The parser checks strings it decodes, not the raw value it passes through.
        data = bytes(item.data).decode()
    except UnicodeDecodeError:
        raise InvalidInput(f"{where}data is not valid UTF-8") from None
    return NewEvent(item.type, data, item.id)


async def max_event_bytes(conn: Any) -> int:
    """The database's size limit of event data as stored (``changefeed migrate`` sets it)."""
    limit: int = await conn.fetchval(f"SELECT {SCHEMA}.max_event_bytes()")
    return limit
