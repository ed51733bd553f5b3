"""Publishing over HTTP: turn a request body into validated events for the inbox."""

from __future__ import annotations

from dataclasses import dataclass

import msgspec

from service.topics import EVENT_ID, TYPE, InvalidInput


class _EventIn(msgspec.Struct, forbid_unknown_fields=True):
    type: str = "message"
    # Kept as the client's raw JSON: checked for size and handed to PostgreSQL untouched.
    data: msgspec.Raw = msgspec.Raw(b"null")
    id: str | None = None


_decoder = msgspec.json.Decoder(_EventIn | list[_EventIn])


@dataclass(frozen=True, slots=True)
class NewEvent:
    """An event ready for the inbox; ``data`` is JSON text."""

    type: str
    data: str
    id: str | None


def parse(body: bytes, *, max_event_bytes: int, max_batch_events: int) -> list[NewEvent]:
    """One event object or a JSON array of them; InvalidInput says what is wrong."""
    try:
        decoded = _decoder.decode(body)
    except msgspec.ValidationError as exc:
        raise InvalidInput(f"invalid event: {exc}") from None
    except msgspec.DecodeError as exc:
        raise InvalidInput(f"malformed JSON: {exc}") from None
    items = decoded if isinstance(decoded, list) else [decoded]
    if not items:
        raise InvalidInput("empty batch: send one event or an array of 1 or more")
    if len(items) > max_batch_events:
        raise InvalidInput(f"batch of {len(items)} events is over the limit of {max_batch_events}")
    return [_check(item, index, max_event_bytes) for index, item in enumerate(items)]


def _check(item: _EventIn, index: int, max_event_bytes: int) -> NewEvent:
    where = f"event {index}: " if index else ""
    if not TYPE.fullmatch(item.type):
        raise InvalidInput(f"{where}type must be 1 to 200 characters without control characters")
    if item.id is not None and not EVENT_ID.fullmatch(item.id):
        raise InvalidInput(f"{where}id must be 1 to 200 characters without control characters")
    size = len(item.data)
    if size > max_event_bytes:
        raise InvalidInput(
            f"{where}data is {size} bytes, over the limit of {max_event_bytes} "
            "(CHANGEFEED_MAX_EVENT_BYTES)"
        )
    return NewEvent(item.type, bytes(item.data).decode(), item.id)
