"""How an error message shows a value: whole when it is short, else its start and its length.

A message that echoes what a caller passed or what a server answered stays readable whatever the size of
that value: ``'aaaa…' (30,000 characters)``. The client, the hook and the local server all quote through
here (the local server may import this module, as it imports the parameter types).
"""

from __future__ import annotations

#: The most characters of one value that a message shows.
LIMIT = 200


def quoted(value: object) -> str:
    """``repr(value)``; for a longer one its first :data:`LIMIT` characters, ``…`` and its length."""
    if isinstance(value, str | bytes):
        if len(value) <= LIMIT:
            return repr(value)
        text = repr(value[:LIMIT])  # 'abc' or b'abc' (escapes may make it longer than LIMIT)
        opened = text.index(text[-1]) + 1
        unit = "characters" if isinstance(value, str) else "bytes"
        return f"{text[:opened]}{text[opened:-1][:LIMIT]}…{text[-1]} ({len(value):,} {unit})"
    return shortened(repr(value))


def shortened(text: str) -> str:
    """``text`` itself (a message of a server, a path), or its first :data:`LIMIT` characters and its length."""
    if len(text) <= LIMIT:
        return text
    return f"{text[:LIMIT]}… ({len(text):,} characters)"
