"""The rules for names and positions that come from clients."""

from __future__ import annotations

import functools
import re
from collections.abc import Iterable

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

    @classmethod
    def union(cls, selectors: Iterable[Selector]) -> Selector:
        """Everything any of ``selectors`` selects (for one read on behalf of them all)."""
        merged = cls.__new__(cls)
        chosen = list(selectors)
        merged.topics = sorted({t for s in chosen for t in s.topics})
        merged.patterns = sorted({p for s in chosen for p in s.patterns})
        return merged

    @functools.cached_property
    def _regex(self) -> re.Pattern[str]:
        return re.compile(
            "|".join(
                [re.escape(t) for t in self.topics]
                + [".*".join(re.escape(part) for part in p.split("*")) for p in self.patterns]
            )
        )

    def matches(self, topic: str) -> bool:
        return self._regex.fullmatch(topic) is not None

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
