"""Counts and nouns (``client.words``): one rule for every sentence a person reads."""

from __future__ import annotations

import pytest

from airflow_mlserver.client.words import count, first_few, noun, plural


@pytest.mark.parametrize(
    ("number", "args", "expected"),
    [
        (0, ("record",), "0 records"),
        (1, ("record",), "1 record"),
        (2, ("record",), "2 records"),
        (12345, ("record",), "12,345 records"),
        (1_000_000, ("row",), "1,000,000 rows"),
        (1, ("rescore execution",), "1 rescore execution"),
        (3, ("rescore execution",), "3 rescore executions"),
        (1, ("child", "children"), "1 child"),
        (2, ("child", "children"), "2 children"),
        (1, ("failure",), "1 failure"),
        (-1, ("second",), "-1 seconds"),
    ],
)
def test_plural(number: int, args: tuple[str, ...], expected: str) -> None:
    assert plural(number, *args) == expected


def test_noun_without_the_number() -> None:
    assert noun(1, "chunk") == "chunk"
    assert noun(0, "chunk") == "chunks"
    assert noun(2, "chunk") == "chunks"
    assert noun(2, "child", "children") == "children"
    assert f"the last {count(1)} {noun(1, 'chunk')}" == "the last 1 chunk"


def test_count_separates_thousands() -> None:
    assert count(999) == "999"
    assert count(1000) == "1,000"
    assert count(12345) == "12,345"


def test_first_few_counts_the_rest() -> None:
    assert first_few([]) == ""
    assert first_few(["a"]) == "a"
    assert first_few(["a", "b"]) == "a and b"
    assert first_few(["a", "b", "c"]) == "a, b and c"
    assert first_few("abcdefghij") == "a, b, c and 7 more"
    assert first_few(range(1003), shown=1) == "0 and 1,002 more"
