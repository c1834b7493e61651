"""Counts and nouns in the sentences a person reads: "1 record", "2 records", "12,345 records".

One rule for every message, log line, exception and page of the provider (the local server's too): the number
with its thousands separated, the noun in the singular for exactly one and in the plural otherwise (zero
included: "0 records"). A regular noun takes an "s"; an irregular one gives its plural (``plural(n, "child",
"children")``). A noun of several words is given whole: ``plural(1, "rescore execution")``.

A list that may be long (execution ids, names) shows its first few and counts the rest: ``a, b, c and 7 more``
(:func:`first_few`), so that a line stays readable whatever the batch's size.
"""

from __future__ import annotations

from collections.abc import Iterable

__all__ = ["count", "first_few", "noun", "plural"]


def count(number: int) -> str:
    """The number as a person reads it: ``12345`` as ``12,345``."""
    return f"{number:,}"


def noun(number: int, singular: str, plural: str | None = None) -> str:
    """The noun alone, agreeing with ``number``: ``noun(1, "chunk")`` is ``chunk``, ``noun(3, "chunk")`` is
    ``chunks``; for "the last 3 chunks" or "chunk 2 of 3" the caller places the numbers itself."""
    if number == 1:
        return singular
    return plural if plural is not None else singular + "s"


def plural(number: int, singular: str, plural: str | None = None) -> str:
    """The number and its noun: ``plural(1, "record")`` is ``1 record``, ``plural(12345, "record")`` is
    ``12,345 records``, ``plural(2, "child", "children")`` is ``2 children``."""
    return f"{count(number)} {noun(number, singular, plural)}"


def first_few(items: Iterable[object], shown: int = 3) -> str:
    """The first ``shown`` items, comma-separated, and how many more: ``a, b, c and 7 more``; ``a and b`` for
    two, ``a`` for one, nothing for none."""
    names = [str(i) for i in items]
    if len(names) <= shown:
        return " and ".join(names) if len(names) <= 2 else f"{', '.join(names[:-1])} and {names[-1]}"
    return f"{', '.join(names[:shown])} and {count(len(names) - shown)} more"
