"""The rules for names and positions that come from clients."""

from __future__ import annotations

import re
from collections.abc import Iterable

TOPIC = re.compile(r"[A-Za-z0-9._:-]{1,200}")
# What event types and ids may not contain: control characters (C0, DEL and C1, which holds
# U+0085) and the line and paragraph separators U+2028 and U+2029. SSE splits lines only at
# CR and LF, but parsers built on `str.splitlines` (httpx-sse before 0.4.2, among others)
# split at all of these, which would let a type forge an `id:` line. The inbox's check
# (changefeed.event_ok()) refuses the same code points, as changefeed.valid_topic() and
# valid_pattern() apply TOPIC and PATTERN: one rule each, two spellings, and a test that
# compares them (tests/test_event_rules.py).
FORBIDDEN = "\x00-\x1f\x7f-\x9f\u2028\u2029"
TYPE = re.compile(f"[^{FORBIDDEN}]{{1,200}}")
EVENT_ID = TYPE
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


_RESUME = re.compile(r"([0-9]{1,18})(?:\.([0-9a-f]{8}))?")


def parse_resume(value: str, source: str) -> tuple[int, str | None]:
    """A resume point: ``<seq>`` or ``<seq>.<hash8>`` as the stream's ids carry them."""
    match = _RESUME.fullmatch(value.strip())
    if not match:
        raise InvalidInput(
            f"invalid {source} {value[:50]!r}: expected a seq (a whole number >= 0), "
            "optionally followed by . and 8 hex digits of its hash"
        )
    return int(match[1]), match[2]


def parse_seq(value: str, source: str) -> int:
    """A non-negative seq as sent in ``Last-Event-ID`` or ``?after=``."""
    if not _SEQ.fullmatch(value.strip()):
        raise InvalidInput(f"invalid {source} {value[:50]!r}: expected a seq, a whole number >= 0")
    return int(value)


PATTERN = re.compile(r"[A-Za-z0-9._:*-]{1,200}")


class Selector:
    """Several topics streamed together: exact names and ``*`` patterns.

    ``*`` matches any run of characters, dots included: ``orders.*`` matches
    ``orders.eu`` and ``orders.eu.paid``, not ``orders``.
    """

    def __init__(self, names: list[str]) -> None:
        if not names:
            raise InvalidInput("name at least one topic or pattern (such as orders.*)")
        if len(names) > 100:
            raise InvalidInput("at most 100 topics or patterns in one stream")
        self.topics = sorted({check_topic(n) for n in names if "*" not in n})
        self.patterns = sorted({_check_pattern(n) for n in names if "*" in n})
        self._exact = frozenset(self.topics)

    @classmethod
    def union(cls, selectors: Iterable[Selector]) -> Selector:
        """Everything any of ``selectors`` selects (for one read on behalf of them all)."""
        merged = cls.__new__(cls)
        chosen = list(selectors)
        merged.topics = sorted({t for s in chosen for t in s.topics})
        merged.patterns = sorted({p for s in chosen for p in s.patterns})
        merged._exact = frozenset(merged.topics)
        return merged

    def matches(self, topic: str) -> bool:
        return topic in self._exact or any(glob_match(p, topic) for p in self.patterns)

    @property
    def like_patterns(self) -> list[str]:
        """The patterns for SQL ``LIKE`` (``\\`` escapes ``_``, which topics may contain)."""
        return [p.replace("_", "\\_").replace("*", "%") for p in self.patterns]

    def __str__(self) -> str:
        return ",".join(self.topics + self.patterns)


def _check_pattern(pattern: str) -> str:
    if not PATTERN.fullmatch(pattern):
        raise InvalidInput(
            f"invalid topic pattern {pattern[:50]!r}: A-Z a-z 0-9 . _ : - and * (any characters)"
        )
    return pattern


def glob_match(pattern: str, name: str) -> bool:
    """Whether ``name`` matches ``pattern``, in which ``*`` stands for any run of characters
    (an empty one too) and every other character for itself.

    Without backtracking: the text before the first ``*`` must start ``name``, the text
    after the last one must end it, and each piece in between is looked for once, left to
    right, from where the previous one was found (taking the earliest place never loses a
    match). So the work is at most len(name) * len(pattern) character comparisons, a few
    microseconds for the longest names: a regular expression made of the pattern (``.*``
    per ``*``) took seconds, doubling with each further ``*``, on a name that failed late.
    A ``*`` in ``name`` (a pattern checked against a grant) is matched only by a ``*`` of
    ``pattern``, since no other piece contains one.
    """
    pieces = pattern.split("*")
    if len(pieces) == 1:
        return pattern == name
    first, *middle, last = pieces
    end = len(name) - len(last)
    if end < len(first) or not name.startswith(first) or not name.endswith(last):
        return False
    position = len(first)
    for piece in middle:
        if piece:
            found = name.find(piece, position, end)
            if found < 0:
                return False
            position = found + len(piece)
    return True
