"""Event filters: ``where``, a JSON object, matches an event when ``data @> where`` holds,
with exactly PostgreSQL's ``jsonb`` containment.

PostgreSQL evaluates a filter wherever events are read from the table (catch-up, pages,
exports: ``data @> $n``); this module evaluates it in the replica for the live fan-out, once
per event per distinct filter. The two must never disagree (tests/core/test_filters.py
compares them on random documents), so containment is written out here rather than taken
from a JSON library: none implements jsonb's rules, which are

- an object contains another when it has each of its keys, with a value that contains the
  other's (a value of another JSON type never does);
- an array contains another when each element of the other is contained in some element of
  it (a scalar equal to a scalar; an object or array containing the object or array);
  order and repetition do not matter;
- scalars are equal when of the same type and value: numbers by numeric value (``1``,
  ``1.0`` and ``1e0`` are one number), strings code point by code point, and ``true`` is
  not ``1``.

Numbers are parsed as ``Decimal`` (PostgreSQL's jsonb keeps them as numeric, exactly): a
float would make ``0.1`` equal to ``0.1000000000000000001``.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from decimal import Decimal
from typing import Any

from .topics import InvalidInput

# Bounds on a filter as sent (a query parameter or a token's claim): it is parsed for every
# request and evaluated for every event, so it stays small.
MAX_BYTES = 4096
MAX_DEPTH = 16
# An object or array inside a filter's array is compared with each of the event array's
# objects or arrays: few of them keep that within a few comparisons per element of the event.
MAX_ARRAY_CONTAINERS = 8
# The inbox refuses numbers of 1e4300 or more (changefeed.event_ok), and PostgreSQL's
# numeric holds at most 16383 digits after the point: a filter's numbers stay within what an
# event can hold (others could match nothing, and would fail in SQL).
_MAX_EXPONENT = 4300
_MIN_EXPONENT = -16383

Json = Any


def parse(text: str) -> Json:
    """A JSON document with its numbers exact, as ``Decimal`` (an ``int`` would stop at
    Python's 4300-digit limit for integer strings)."""
    return json.loads(text, parse_float=Decimal, parse_int=Decimal)


class Where:
    """A filter: the JSON objects of which an event's data must contain one. A request's
    ``where`` is one; a token's grants with ``where`` add alternatives (``combine``)."""

    __slots__ = ("key", "patterns", "request", "sql")

    def __init__(self, patterns: Iterable[dict[str, Json]], request: str | None = None) -> None:
        texts = sorted({_canonical(p): p for p in patterns}.items())
        self.patterns = tuple(p for _, p in texts)
        # One text per meaning: subscribers with equal filters share their evaluation, and
        # PostgreSQL gets exactly what was checked here (``data @> ANY(sql)``).
        self.sql = [text for text, _ in texts]
        self.key = "[" + ", ".join(self.sql) + "]"
        # The request's own filter, for the links a page gives (None: it had none).
        self.request = request

    @property
    def text(self) -> str:
        """The single pattern of a request's filter (its only pattern), as JSON."""
        return self.sql[0]

    def matches(self, data: Json) -> bool:
        """Whether ``data`` (as parsed by ``parse``) contains one of the patterns."""
        return any(contains(data, pattern) for pattern in self.patterns)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Where) and other.key == self.key

    def __hash__(self) -> int:
        return hash(self.key)

    def __repr__(self) -> str:
        return f"Where({self.key})"


def combine(request: Where | None, granted: tuple[Where, ...] | None) -> Where | None:
    """What a caller reads: its request's filter AND any of its grants' (None: no grant
    restricts it). ``data @> a AND data @> b`` is ``data @> merge(a, b)``, or nothing when
    the two cannot both hold; so the result is again a set of alternatives."""
    if granted is None:
        return request
    alternatives = [p for g in granted for p in g.patterns]
    if request is not None:
        merged = (_merge(r, g) for r in request.patterns for g in alternatives)
        alternatives = [m for m in merged if isinstance(m, dict)]
    return Where(alternatives, request.text if request is not None else None)


_CONFLICT = object()


def _merge(a: Json, b: Json) -> Json:
    """A pattern contained exactly where both are (see ``combine``), or _CONFLICT."""
    if isinstance(a, dict) and isinstance(b, dict):
        merged = dict(a)
        for key, value in b.items():
            if key in merged:
                value = _merge(merged[key], value)
                if value is _CONFLICT:
                    return _CONFLICT
            merged[key] = value
        return merged
    if isinstance(a, list) and isinstance(b, list):
        return a + b  # each element of both, in some element of the data
    if _is_scalar(a) and _is_scalar(b) and scalar_key(a) == scalar_key(b):
        return a
    return _CONFLICT


def exact(value: Json) -> Json:
    """A value decoded by another JSON parser (a token's claims), with its numbers as
    ``parse`` gives them: floats lose digits, so a claim's are written again exactly as far
    as the float holds them (a token should write filter numbers as integers or strings)."""
    if isinstance(value, dict):
        return {k: exact(v) for k, v in value.items()}
    if isinstance(value, list):
        return [exact(v) for v in value]
    if isinstance(value, int | float) and not isinstance(value, bool):
        return Decimal(repr(value)) if isinstance(value, float) else Decimal(value)
    return value


def parse_where(text: str | None, name: str = "where") -> Where | None:
    """A request's ``where``: None when absent; InvalidInput (a 400) when it is not a JSON
    object within the bounds."""
    if text is None:
        return None
    if len(text.encode()) > MAX_BYTES:
        raise InvalidInput(f"{name} is longer than {MAX_BYTES} bytes")
    try:
        pattern = json.loads(
            text, parse_float=Decimal, parse_int=Decimal, parse_constant=_no_constant
        )
    except (ValueError, RecursionError):
        raise InvalidInput(
            f'invalid {name}: expected a JSON object such as {{"tenant": "acme"}}'
        ) from None
    return checked(pattern, name)


def checked(pattern: Json, name: str = "where") -> Where:
    """``pattern`` as a filter, if it is one: a JSON object (already parsed) that PostgreSQL
    can hold, within the bounds."""
    if not isinstance(pattern, dict):
        raise InvalidInput(f'{name} must be a JSON object, such as {{"tenant": "acme"}}')
    pending: list[tuple[int, Json]] = [(1, pattern)]
    containers = 0
    while pending:
        depth, value = pending.pop()
        if depth > MAX_DEPTH:
            raise InvalidInput(f"{name} is nested deeper than {MAX_DEPTH} levels")
        if isinstance(value, dict):
            pending.extend((depth + 1, item) for item in [*value, *value.values()])
        elif isinstance(value, list):
            containers += sum(isinstance(item, dict | list) for item in value)
            if containers > MAX_ARRAY_CONTAINERS:
                raise InvalidInput(
                    f"{name} holds more than {MAX_ARRAY_CONTAINERS} objects or arrays inside arrays"
                )
            pending.extend((depth + 1, item) for item in value)
        elif isinstance(value, str) and not _storable(value):
            raise InvalidInput(
                f"{name} holds a NUL character or a lone surrogate, which no event can hold"
            )
        elif isinstance(value, Decimal) and not _in_range(value):
            raise InvalidInput(f"{name} holds a number no event can hold: {value:.10}")
    return Where([pattern], _canonical(pattern))


def _no_constant(name: str) -> None:
    raise ValueError(f"{name} is not JSON")


def _storable(text: str) -> bool:
    """Whether PostgreSQL's jsonb can hold the string (no NUL, no lone surrogate)."""
    return "\x00" not in text and not any("\ud800" <= c <= "\udfff" for c in text)


def _in_range(number: Decimal) -> bool:
    return number.is_finite() and (
        number.is_zero() or _MIN_EXPONENT < number.adjusted() < _MAX_EXPONENT
    )


def contains(data: Json, pattern: Json) -> bool:
    """jsonb's ``data @> pattern`` (see the module's docstring)."""
    if isinstance(pattern, dict):
        if not isinstance(data, dict):
            return False
        for key, wanted in pattern.items():
            if key not in data or not contains(data[key], wanted):
                return False
        return True
    if isinstance(pattern, list):
        if not isinstance(data, list):
            return False
        # The data's scalars as a set: a filter's scalars cost one lookup each, however long
        # the event's array (trying each against each was quadratic in what clients send).
        scalars = {scalar_key(item) for item in data if _is_scalar(item)}
        for wanted in pattern:
            if isinstance(wanted, dict | list):
                kind = type(wanted)
                if not any(type(item) is kind and contains(item, wanted) for item in data):
                    return False
            elif scalar_key(wanted) not in scalars:
                return False
        return True
    return _scalar_equal(data, pattern)


def _scalar_equal(a: Json, b: Json) -> bool:
    return scalar_key(a) == scalar_key(b) if _is_scalar(a) and _is_scalar(b) else False


def _is_scalar(value: Json) -> bool:
    return not isinstance(value, dict | list)


def scalar_key(value: Json) -> tuple[str, Json]:
    """A scalar as a key that is equal exactly when jsonb's scalars are: ``true`` and
    ``1`` apart (Python holds them equal), ``1`` and ``1.0`` together (Python's hash of equal
    numbers is equal, int or Decimal)."""
    if value is None:
        return ("null", None)
    if isinstance(value, bool):
        return ("boolean", value)
    if isinstance(value, str):
        return ("string", value)
    return ("number", value)


def _canonical(value: Json) -> str:
    """JSON text for a parsed value, numbers as written (Decimal keeps their digits), keys
    sorted."""
    if isinstance(value, dict):
        return (
            "{"
            + ", ".join(f"{json.dumps(k)}: {_canonical(v)}" for k, v in sorted(value.items()))
            + "}"
        )
    if isinstance(value, list):
        return "[" + ", ".join(_canonical(v) for v in value) + "]"
    if isinstance(value, Decimal):
        return str(value)
    return json.dumps(value)


def paths(pattern: dict[str, Json]) -> Iterable[tuple[tuple[str, ...], Json]]:
    """The scalars a filter requires at a path of object keys (not inside arrays): the ones
    the fan-out can look up by value."""
    for key, value in pattern.items():
        if isinstance(value, dict):
            for path, scalar in paths(value):
                yield (key, *path), scalar
        elif not isinstance(value, list):
            yield (key,), value


class Index:
    """Distinct filters, for finding those an event matches without trying each: a filter
    that requires a scalar at a path of keys (``{"tenant": "acme"}``, ``{"new":
    {"tenant_id": 42}}``: the common case) is looked up by that scalar, so an event costs
    one lookup per distinct path, however many such filters there are; the others are
    tried one by one."""

    __slots__ = ("by_path", "scan")

    def __init__(self, wheres: Iterable[Where]) -> None:
        self.by_path: dict[tuple[str, ...], dict[tuple[str, Json], list[Where]]] = {}
        self.scan: list[Where] = []
        for where in set(wheres):
            for pattern in where.patterns:
                first = next(iter(paths(pattern)), None)
                if first is None:
                    self.scan.append(where)
                    break
                path, scalar = first
                table = self.by_path.setdefault(path, {})
                table.setdefault(scalar_key(scalar), []).append(where)

    def matching(self, data: Json) -> set[Where]:
        """The filters that ``data`` (as parsed by ``parse``) matches."""
        found = {where for where in self.scan if where.matches(data)}
        for path, table in self.by_path.items():
            value = data
            for key in path:
                if not isinstance(value, dict) or key not in value:
                    break
                value = value[key]
            else:
                if _is_scalar(value):
                    found.update(w for w in table.get(scalar_key(value), ()) if w.matches(data))
        return found
