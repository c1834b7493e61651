"""How an error message shows a value: whole when it is short, else its start and its length.

A message that echoes what a caller passed or what a server answered stays readable whatever the size of
that value: ``'aaaa…' (30,000 characters)``. The client, the hook and the local server all quote through
here (the local server may import this module, as it imports the parameter types).
"""

from __future__ import annotations

#: The most characters of one value that a message shows.
LIMIT = 200
#: The most characters of a server's error message shown inside ours: a sentence that quotes values of its own
#: (the local server cuts each to :data:`LIMIT`), so that its advice is not cut off.
MESSAGE_LIMIT = 500


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


def shortened(text: str, limit: int = LIMIT) -> str:
    """``text`` itself (a path, a server's message), or its first ``limit`` characters and its length."""
    if len(text) <= limit:
        return text
    return f"{text[:limit]}… ({len(text):,} characters)"
