"""The rules for names and positions that come from clients."""

from __future__ import annotations

import re

TOPIC = re.compile(r"[A-Za-z0-9._:-]{1,200}")
TYPE = re.compile(r"[^\x00-\x1f\x7f]{1,200}")
EVENT_ID = re.compile(r"[^\x00-\x1f\x7f]{1,200}")
_SEQ = re.compile(r"[0-9]{1,18}")


class InvalidInput(ValueError):
    """Client input that breaks a rule; the message says which and how."""


def check_topic(topic: str) -> str:
    """A topic name, or InvalidInput."""
    if not TOPIC.fullmatch(topic):
        raise InvalidInput(
            f"invalid topic {topic[:50]!r}: a topic is 1 to 200 characters of A-Z a-z 0-9 . _ : -"
        )
    return topic


def parse_seq(value: str, source: str) -> int:
    """A non-negative seq as sent in ``Last-Event-ID`` or ``?after=``."""
    if not _SEQ.fullmatch(value.strip()):
        raise InvalidInput(f"invalid {source} {value[:50]!r}: expected a seq, a whole number >= 0")
    return int(value)
