"""Filters (core/filters.py): the replica's containment and PostgreSQL's ``@>`` never
disagree, with PostgreSQL as the oracle on random documents, and a filter is refused (400)
when it is not one PostgreSQL could compare."""

from __future__ import annotations

import asyncio
import json
from decimal import Decimal
from typing import Any

import asyncpg
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from changefeed.core import filters
from changefeed.core.topics import InvalidInput
from tests.support import create_database

# Numbers by value, each written in several ways (PostgreSQL compares numeric values).
NUMBERS = [Decimal(v) for v in ("0", "1", "-1", "2", "0.5", "100", "0.1", "1e-20", "7e30")]
# 0.1 and this are one float but two numerics.
NEAR = Decimal("0.10000000000000000001")
STRINGS = ["", "a", "A", "é", "e\u0301", "😀", "\u2028", "a b", '"q"', "\\", "1", "true"]
KEYS = ["a", "b", "é", "", "new", "😀"]


def spellings(value: Decimal) -> list[str]:
    """Ways to write a number in JSON."""
    plain = format(value, "f")
    forms = [plain, f"{plain}e0", format(value, "E")]
    if value == value.to_integral_value() and abs(value) < 1000:
        forms += [f"{int(value)}.0", f"{int(value) * 10}E-1", f"{int(value)}.000"]
    return [f for f in forms if f not in ("-0.0e0",)]


Tree = Any

scalars = st.one_of(
    st.none().map(lambda _: ("null",)),
    st.booleans().map(lambda b: ("bool", b)),
    st.sampled_from(STRINGS).map(lambda s: ("str", s)),
    st.sampled_from([*NUMBERS, NEAR]).map(lambda n: ("num", n)),
)
trees = st.recursive(
    scalars,
    lambda inner: st.one_of(
        st.lists(inner, max_size=4).map(lambda items: ("list", items)),
        st.lists(st.tuples(st.sampled_from(KEYS), inner), max_size=4).map(
            lambda pairs: ("obj", pairs)
        ),
    ),
    max_leaves=12,
)


def render(data: st.DataObject, tree: Tree) -> str:
    kind = tree[0]
    if kind == "null":
        return "null"
    if kind == "bool":
        return "true" if tree[1] else "false"
    if kind == "str":
        return json.dumps(tree[1], ensure_ascii=data.draw(st.booleans()))
    if kind == "num":
        return data.draw(st.sampled_from(spellings(tree[1])))
    if kind == "list":
        return "[" + ", ".join(render(data, item) for item in tree[1]) + "]"
    return "{" + ", ".join(f"{json.dumps(k)}: {render(data, v)}" for k, v in tree[1]) + "}"


def part_of(data: st.DataObject, tree: Tree) -> Tree:
    """A pattern likely to be contained in ``tree``: some of its keys and elements, now and
    then a leaf changed (a near miss)."""
    kind = tree[0]
    if kind == "obj":
        last = dict(tree[1])  # duplicate keys: the last one counts, as in jsonb
        keys = data.draw(st.lists(st.sampled_from(sorted(last)), unique=True)) if last else []
        return ("obj", [(k, part_of(data, last[k])) for k in keys])
    if kind == "list":
        if not tree[1]:
            return tree
        picked = data.draw(st.lists(st.sampled_from(tree[1]), max_size=3))
        return ("list", [part_of(data, item) for item in picked])
    if data.draw(st.integers(0, 9)) == 0:
        return data.draw(scalars)
    return tree


@pytest.fixture(scope="module")
def oracle_database(admin_url: str, template: str) -> str:
    return asyncio.run(create_database(admin_url, template))


@pytest.mark.slow
@settings(max_examples=60, deadline=None, suppress_health_check=list(HealthCheck))
@given(data=st.data())
def test_containment_is_postgresqls(oracle_database: str, data: st.DataObject) -> None:
    pairs = []
    for _ in range(25):
        doc = data.draw(trees)
        pattern = part_of(data, doc) if data.draw(st.booleans()) else data.draw(trees)
        if pattern[0] not in ("obj", "list"):
            pattern = ("obj", [("a", pattern)])  # a filter is an object or, nested, an array
        pairs.append((render(data, doc), render(data, pattern)))

    async def answers() -> list[bool]:
        conn = await asyncpg.connect(oracle_database)
        try:
            rows = await conn.fetch(
                "SELECT d::jsonb @> p::jsonb AS contained "
                "FROM unnest($1::text[], $2::text[]) WITH ORDINALITY AS x(d, p, n) ORDER BY n",
                [d for d, _ in pairs],
                [p for _, p in pairs],
            )
            return [r["contained"] for r in rows]
        finally:
            await conn.close()

    for (doc, pattern), expected in zip(pairs, asyncio.run(answers()), strict=True):
        ours = filters.contains(filters.parse(doc), filters.parse(pattern))
        assert ours == expected, (doc, pattern)


def test_numbers_compare_by_value_and_types_stay_apart() -> None:
    where = filters.parse_where('{"n": 1, "t": true, "s": "1"}')
    assert where is not None
    assert where.matches(filters.parse('{"n": 1.0, "t": true, "s": "1", "x": 2}'))
    assert where.matches(filters.parse('{"n": 1e0, "t": true, "s": "1"}'))
    assert not where.matches(filters.parse('{"n": true, "t": true, "s": "1"}'))
    assert not where.matches(filters.parse('{"n": 1, "t": 1, "s": "1"}'))
    assert not where.matches(filters.parse('{"n": 1, "t": true, "s": 1}'))
    tenth = filters.parse_where('{"n": 0.1}')
    assert tenth is not None and not tenth.matches(filters.parse('{"n": 0.10000000000000000001}'))
    assert filters.parse_where('{"b": 2, "a": 1.50}') == filters.parse_where('{"a":1.50,"b":2}')


@pytest.mark.parametrize(
    "text, problem",
    [
        ("", "expected a JSON object"),
        ("tenant=acme", "expected a JSON object"),
        ("[1]", "must be a JSON object"),
        ('"acme"', "must be a JSON object"),
        ('{"a": NaN}', "expected a JSON object"),
        ('{"a": 1e5000}', "no event can hold"),
        ('{"a": "\\u0000"}', "NUL character"),
        ('{"\\u0000": 1}', "NUL character"),
        ('{"a": "\\ud800"}', "lone surrogate"),
        ("[" * 20 + "]" * 20, "must be a JSON object"),
        ('{"a": ' * 17 + "1" + "}" * 17, "deeper than 16"),
        ('{"a": ' * 5000 + "1" + "}" * 5000, "longer than 4096"),
        ('{"a": [' + ", ".join(["{}"] * 9) + "]}", "more than 8 objects or arrays"),
        ('{"a": "' + "x" * 5000 + '"}', "longer than 4096"),
    ],
)
def test_bad_filters_are_refused(text: str, problem: str) -> None:
    with pytest.raises(InvalidInput, match=problem):
        filters.parse_where(text)


@pytest.mark.slow
@settings(max_examples=40, deadline=None, suppress_health_check=list(HealthCheck))
@given(data=st.data())
def test_a_request_and_its_grants_combine_as_postgresql_ands_them(
    oracle_database: str, data: st.DataObject
) -> None:
    """``combine`` turns ``data @> request AND (data @> g1 OR data @> g2)`` into one set of
    patterns (merged, or dropped when they contradict): PostgreSQL evaluates the original."""
    cases = []
    for _ in range(20):
        doc = data.draw(trees)
        texts = []
        for _ in range(3):
            pattern = part_of(data, doc) if data.draw(st.booleans()) else data.draw(trees)
            if pattern[0] != "obj":
                pattern = ("obj", [("a", pattern)])
            texts.append(render(data, pattern))
        cases.append((render(data, doc), texts))

    async def answers() -> list[bool]:
        conn = await asyncpg.connect(oracle_database)
        try:
            return [
                await conn.fetchval(
                    "SELECT $1::jsonb @> $2::jsonb AND ($1::jsonb @> $3::jsonb "
                    "OR $1::jsonb @> $4::jsonb)",
                    doc,
                    *texts,
                )
                for doc, texts in cases
            ]
        finally:
            await conn.close()

    for (doc, (request, g1, g2)), expected in zip(cases, asyncio.run(answers()), strict=True):
        # (Built directly: the request bounds of parse_where are not what is tested here.)
        where = filters.combine(
            filters.Where([filters.parse(request)], request),
            (filters.Where([filters.parse(g1)]), filters.Where([filters.parse(g2)])),
        )
        assert where is not None
        assert where.matches(filters.parse(doc)) == expected, (doc, request, g1, g2)


@pytest.mark.parametrize(
    "request_, grants, doc, expected",
    [
        ('{"tags": ["a"]}', ['{"tags": ["b"]}'], '{"tags": ["a"]}', False),
        ('{"tags": ["a"]}', ['{"tags": ["b"]}'], '{"tags": ["b", "a"]}', True),
        ('{"t": "x"}', ['{"t": "y"}'], '{"t": "x"}', False),
        ('{"t": "x"}', ['{"t": "y"}', '{"t": "x"}'], '{"t": "x"}', True),
        ('{"n": {"a": 1}}', ['{"n": {"b": 2}}'], '{"n": {"a": 1.0, "b": 2}}', True),
        ('{"n": {"a": 1}}', ['{"n": {"b": 2}}'], '{"n": {"a": 1}}', False),
        ('{"n": [1]}', ['{"n": {"a": 1}}'], '{"n": [1]}', False),
        ("{}", ['{"t": "x"}'], '{"t": "y"}', False),
    ],
)
def test_combining_is_and_then_or(
    request_: str, grants: list[str], doc: str, expected: bool
) -> None:
    granted = tuple(filters.checked(filters.parse(g)) for g in grants)
    where = filters.combine(filters.parse_where(request_), granted)
    assert where is not None and where.matches(filters.parse(doc)) is expected


def test_a_long_array_costs_a_lookup_per_element_of_the_filter(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """An event array of 10,000 scalars against a filter of 600: each element's key made
    once, not each pair compared (6 million comparisons a subscriber could ask for, per
    event)."""
    where = filters.parse_where(json.dumps({"a": list(range(0, 1800, 3))}))
    assert where is not None
    data = filters.parse(json.dumps({"a": list(range(10_000))}))
    calls = 0
    real = filters.scalar_key

    def counted(value: object) -> tuple[str, object]:
        nonlocal calls
        calls += 1
        return real(value)

    monkeypatch.setattr(filters, "scalar_key", counted)
    assert where.matches(data)
    assert calls <= 11_000, calls
