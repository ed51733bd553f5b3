"""The rules for client names: topics, patterns and the ``*`` matcher."""

from __future__ import annotations

import re
import time

import pytest
from hypothesis import given
from hypothesis import strategies as st

from changefeed.core.topics import (
    InvalidInput,
    Selector,
    check_topic,
    glob_match,
    parse_resume,
    parse_seq,
)

ALPHABET = "ab.*"


def reference(pattern: str, name: str) -> bool:
    """The matcher's meaning, spelled as a regular expression (slow on hostile input)."""
    return re.fullmatch(".*".join(map(re.escape, pattern.split("*"))), name, re.S) is not None


@given(st.text(ALPHABET, max_size=12), st.text(ALPHABET, max_size=12))
def test_glob_match_means_what_the_regular_expression_means(pattern: str, name: str) -> None:
    assert glob_match(pattern, name) == reference(pattern, name)


def test_glob_match_is_linear_on_a_late_failure() -> None:
    # A regular expression built from this pattern backtracks for seconds on this name.
    pattern, name = "*a" * 99 + "b", "a" * 200
    started = time.perf_counter()
    assert not glob_match(pattern, name)
    # Generous: the linear matcher takes microseconds, the regular expression seconds.
    assert time.perf_counter() - started < 0.5


@pytest.mark.parametrize(
    ("pattern", "name", "matched"),
    [
        ("orders.*", "orders.eu", True),
        ("orders.*", "orders.eu.paid", True),
        ("orders.*", "orders", False),
        ("*", "", True),
        ("a*b*c", "abc", True),
        ("a*b*c", "acb", False),
        ("ab*ba", "aba", False),
    ],
)
def test_glob_match_examples(pattern: str, name: str, matched: bool) -> None:
    assert glob_match(pattern, name) is matched


def test_selector_splits_names_and_patterns() -> None:
    selector = Selector(["b", "a", "orders.*", "a"])
    assert selector.topics == ["a", "b"]
    assert selector.patterns == ["orders.*"]
    assert selector.matches("a") and selector.matches("orders.x")
    assert not selector.matches("c")
    assert selector.like_patterns == ["orders.%"]
    assert Selector(["x_*"]).like_patterns == ["x\\_%"]


def test_selector_union() -> None:
    union = Selector.union([Selector(["a", "p.*"]), Selector(["b", "p.*"])])
    assert union.topics == ["a", "b"] and union.patterns == ["p.*"]
    assert str(union) == "a,b,p.*"


@pytest.mark.parametrize("names", [[], ["t"] * 0, [f"t{i}" for i in range(101)], ["a b"], ["*?"]])
def test_selector_refuses(names: list[str]) -> None:
    with pytest.raises(InvalidInput):
        Selector(names)


@pytest.mark.parametrize("topic", ["", "a/b", "a b", "x" * 201, "é", "a\n"])
def test_check_topic_refuses(topic: str) -> None:
    with pytest.raises(InvalidInput, match="invalid topic"):
        check_topic(topic)


def test_parse_resume() -> None:
    assert parse_resume("12", "Last-Event-ID") == (12, None)
    assert parse_resume(" 12.0a1b2c3d ", "Last-Event-ID") == (12, "0a1b2c3d")
    for bad in ("", "-1", "1.", "1.ABCDEF12", "1.abc", "1" * 19):
        with pytest.raises(InvalidInput, match="Last-Event-ID"):
            parse_resume(bad, "Last-Event-ID")


def test_parse_seq() -> None:
    assert parse_seq("0", "after") == 0
    with pytest.raises(InvalidInput, match="after"):
        parse_seq("1e3", "after")
