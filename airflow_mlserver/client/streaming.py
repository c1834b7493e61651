"""Incremental readers of answer bodies, fed chunk by chunk by the sync and the async transport alike.

The batch answer ``{"state": ..., "totalItemCount": ..., "batchExecutionResults": [...]}`` can hold
100,000 results. :class:`BatchAnswerParser` reads it as it arrives: head fields into a dict, then the results
completed by each chunk, so memory stays bounded by a chunk (or one result larger than a chunk), and a status
poll can stop reading as soon as the head fields are in (constant bytes whatever the batch size).

Results are decoded by msgspec's C decoder, all those a chunk completes in one call, into :class:`WireRecord`
(the record model, type-checked in C). Where that cannot be done (a result cut by the chunk's end, a value
msgspec refuses such as ``NaN``, a result of the wrong shape, nesting too deep) the standard library's C
decoder reads one value at a time (``raw_decode``), which decides what is valid and words every error. Never
a byte-by-byte loop in Python.
"""

from __future__ import annotations

import codecs
import json
import re
from collections.abc import Iterator
from typing import Any

import msgspec

from airflow_mlserver.client.errors import MalformedResponseError
from airflow_mlserver.client.quoting import MESSAGE_LIMIT, quoted, shortened

RESULTS_KEY = "batchexecutionresults"
#: Head fields a status poll needs before it may stop reading.
_HEAD_NEEDED = ("state", "totalitemcount", "completeditemcount")
#: A single value (one result, or one head field) larger than this is refused, to bound memory.
MAX_VALUE_CHARS = 256 * 1024 * 1024
#: Error bodies are read up to this many bytes.
MAX_ERROR_BYTES = 64 * 1024

#: Decoding attempts of the results from the cursor to a candidate end before one value at a time is read.
_BULK_TRIES = 2
#: ``}`` examined (from the buffer's end) for a result's end before one value at a time is read.
_BULK_CANDIDATES = 32

_WS = re.compile(r"[ \t\n\r]*")


class WireRecord(msgspec.Struct, rename="camel", gc=False):
    """One result of a batch answer as the server sends it (``errorMessage``, ...), checked by the C decoder.

    It accepts the records :meth:`~airflow_mlserver.client.models.RecordResult.from_api` accepts and nothing
    else (a missing or null optional field is ``None``); a result it refuses is read again as plain JSON, for
    ``from_api`` to read it or to word the error.
    """

    success: bool
    error_message: str | None = None
    console_output: str | None = None
    output_parameters: dict[str, Any] | None = None
    output_files: dict[str, str] | None = None
    changed_files: list[str] | None = None


_RECORDS = msgspec.json.Decoder(list[WireRecord])


def _malformed(what: str, why: str, sample: str) -> MalformedResponseError:
    return MalformedResponseError(
        f"The server's answer to {what} is not valid JSON ({why}): {quoted(sample)}. Check that the connection "
        "points at a Machine Learning Server (or a compatible one)."
    )


#: The first bytes a JSON text can start with (after white space).
_JSON_STARTS = frozenset(bytes([c]) for c in b'{["-0123456789tfn')


def _why(exc: RecursionError | ValueError) -> str:
    """Why the JSON decoder failed: bad JSON or UTF-8 (its message), nesting too deep, a number too long to read."""
    if isinstance(exc, RecursionError):
        return "nested too deeply"
    if isinstance(exc, json.JSONDecodeError | UnicodeDecodeError):
        return str(exc)
    return "a number too long to read"


class JsonReader:
    """Reads a whole (small) JSON body; an empty body is ``None``."""

    def __init__(self, what: str) -> None:
        self.what = what
        self.parts: list[bytes] = []
        self.bytes_read = 0

    def feed(self, chunk: bytes) -> bool:
        self.parts.append(chunk)
        self.bytes_read += len(chunk)
        return False

    def finish(self, complete: bool) -> Any:
        raw = b"".join(self.parts)
        if not raw.strip():
            return None
        try:
            return json.loads(raw)
        except (RecursionError, ValueError) as exc:
            text = raw.decode("utf-8", "replace")
            if raw.lstrip()[:1] not in _JSON_STARTS:  # not JSON at all: a web page, a proxy's text
                kind = "an HTML page" if text.lstrip().startswith("<") else "plain text"
                raise MalformedResponseError(
                    f"The server's answer to {self.what} is {kind}, not JSON: {quoted(text)}. Check that the "
                    "connection points at a Machine Learning Server (or a compatible one), not at a web page or "
                    "another service."
                ) from None
            raise _malformed(self.what, _why(exc), text) from None


class ErrorBodyReader:
    """Reads at most :data:`MAX_ERROR_BYTES` of an error answer and extracts its ``message`` (cut for messages)."""

    def __init__(self) -> None:
        self.parts: list[bytes] = []
        self.bytes_read = 0

    def feed(self, chunk: bytes) -> bool:
        self.parts.append(chunk)
        self.bytes_read += len(chunk)
        return self.bytes_read >= MAX_ERROR_BYTES

    def finish(self, complete: bool) -> str:
        raw = b"".join(self.parts)[:MAX_ERROR_BYTES]
        text = raw.decode("utf-8", "replace")
        try:
            body = json.loads(raw)
        except (RecursionError, ValueError):
            body = None
        if isinstance(body, dict) and isinstance(body.get("message"), str):
            return shortened(body["message"], MESSAGE_LIMIT)
        if isinstance(body, str):
            return shortened(body, MESSAGE_LIMIT)
        text = " ".join(text.split())
        return shortened(text, MESSAGE_LIMIT) if text else "(no message)"


class BatchAnswerParser:
    """Incremental parser of a batch answer object: head fields, then results as chunks complete them.

    Each result is a :class:`WireRecord`, or the plain JSON value when it does not fit that model (it is then
    malformed, or holds a value only the standard library reads, such as ``NaN``).

    :param what: What the answer answers, for error messages (e.g. ``GET /api/s/1/batch/x``).
    :param head_only: Stop once the head fields are in and the results list begins (a status poll).
    :param skip: Results to drop from the start of the list (to resume an interrupted read).
    """

    def __init__(self, what: str, head_only: bool = False, skip: int = 0) -> None:
        self.what = what
        self.head_only = head_only
        self.skip = skip
        self.head: dict[str, Any] = {}
        self.results_count = 0
        self.done = False
        self.bytes_read = 0
        self._decoder = json.JSONDecoder()
        self._utf8 = codecs.getincrementaldecoder("utf-8")()
        self._buf = ""
        self._pos = 0
        self._state = "start"
        self._key = ""
        self._retry_at = 0
        self._slow_until = 0  # the results before this position are read one value at a time
        self._opening: str | None = None  # how the first result begins, up to its first field name
        self._eof = False

    # -- feeding --------------------------------------------------------------------------------------------

    def feed(self, chunk: bytes) -> list[Any]:
        """Take the next bytes; answer the results completed by them (see the class for their type)."""
        self.bytes_read += len(chunk)
        try:
            text = self._utf8.decode(chunk)
        except UnicodeDecodeError as exc:
            raise _malformed(self.what, str(exc), "") from None
        if self.done:
            return []
        self._buf += text
        if len(self._buf) < self._retry_at:
            return []
        out = self._run()
        if self._pos:
            self._buf = self._buf[self._pos :]
            self._slow_until -= self._pos
            self._pos = 0
        return out

    def close(self) -> list[Any]:
        """The body has ended: answer the last results, or raise if the answer was cut short or malformed."""
        self._eof = True
        try:
            self._buf += self._utf8.decode(b"", final=True)
        except UnicodeDecodeError as exc:
            raise _malformed(self.what, str(exc), "") from None
        out = [] if self.done else self._run()
        if not self.done:
            raise _malformed(self.what, "the answer ended early", self._buf[self._pos :])
        return out

    # -- the state machine ----------------------------------------------------------------------------------

    def _skip_ws(self) -> bool:
        self._pos = _WS.match(self._buf, self._pos).end()  # type: ignore[union-attr]
        return self._pos < len(self._buf)

    def _expect(self, allowed: str) -> str | None:
        if not self._skip_ws():
            return None
        char = self._buf[self._pos]
        if char not in allowed:
            expected = " or ".join(repr(c) for c in allowed)
            raise _malformed(
                self.what, f"expected {expected} at character {self._pos}", self._buf[self._pos :]
            )
        self._pos += 1
        return char

    def _value(self) -> tuple[bool, Any]:
        """Decode the value at the cursor: (True, value), or (False, None) when more bytes are needed."""
        if not self._skip_ws():
            return False, None
        try:
            value, end = self._decoder.raw_decode(self._buf, self._pos)
        except RecursionError as exc:
            raise _malformed(self.what, _why(exc), self._buf[self._pos :]) from None
        except json.JSONDecodeError as exc:
            pending = len(self._buf) - self._pos
            if self._eof:
                raise _malformed(self.what, exc.msg, self._buf[self._pos :]) from None
            if pending > MAX_VALUE_CHARS:
                raise _malformed(self.what, f"a value larger than {MAX_VALUE_CHARS} characters", "") from None
            self._retry_at = (
                len(self._buf) + max(pending, 4096) - self._pos
            )  # decode again once the pending part doubled
            return False, None
        except ValueError as exc:
            raise _malformed(self.what, _why(exc), self._buf[self._pos :]) from None
        if end == len(self._buf) and not self._eof and type(value) in (int, float):
            return False, None  # a number at the very end may go on in the next chunk
        self._pos = end
        self._retry_at = 0
        return True, value

    def _run(self) -> list[Any]:
        out: list[Any] = []
        while not self.done:
            state = self._state
            if state == "start":
                if self._expect("{") is None:
                    break
                self._state = "key_or_end"
            elif state in ("key_or_end", "key"):
                if not self._skip_ws():
                    break
                if state == "key_or_end" and self._buf[self._pos] == "}":
                    self._pos += 1
                    self._finish_object()
                    break
                ok, key = self._value()
                if not ok:
                    break
                if not isinstance(key, str):
                    raise _malformed(
                        self.what, f"expected a field name, got {quoted(key)}", self._buf[self._pos :]
                    )
                self._key = key
                self._state = "colon"
            elif state == "colon":
                if self._expect(":") is None:
                    break
                self._state = "value"
            elif state == "value":
                if not self._skip_ws():
                    break
                if self._key.lower() == RESULTS_KEY and self._buf[self._pos] == "[":
                    self._pos += 1
                    if self.head_only and all(k in {h.lower() for h in self.head} for k in _HEAD_NEEDED):
                        self.done = True
                        break
                    self._state = "first_item"
                    continue
                ok, value = self._value()
                if not ok:
                    break
                self.head[self._key] = value
                self._state = "after_value"
            elif state == "after_value":
                char = self._expect(",}")
                if char is None:
                    break
                if char == "}":
                    self._finish_object()
                    break
                self._state = "key"
            elif state in ("first_item", "item"):
                if not self._skip_ws():
                    break
                if state == "first_item" and self._buf[self._pos] == "]":
                    self._pos += 1
                    self._state = "after_value"
                    continue
                items = self._results() if self._pos >= self._slow_until else None
                if items is None:
                    ok, item = self._value()
                    if not ok:
                        break
                    items = [item]
                first = self.results_count
                self.results_count += len(items)
                if self.results_count > self.skip and not self.head_only:
                    out.extend(items[max(0, self.skip - first) :])
                self._state = "after_item"
            elif state == "after_item":
                char = self._expect(",]")
                if char is None:
                    break
                self._state = "item" if char == "," else "after_value"
        return out

    def _results(self) -> list[Any] | None:
        """The results from the cursor to the last one the buffer completes, in one C call; None if it can't.

        Decoding ``[`` + the text from the cursor (a result's start) to a candidate end + ``]`` succeeds only
        if the candidate does end a result, since the JSON read from the cursor on is the same whatever
        follows. After a failure the results up to the buffer's current end are read one value at a time, so
        that failures cost at most a few decodings of each byte.
        """
        buf, start = self._buf, self._pos
        if self._opening is None and buf.startswith("{", start):
            colon = buf.find(":", start, start + 100)
            self._opening = buf[start : colon + 1] if colon > 0 else ""
        tries, tried = 0, -1
        for cut in self._ends(buf, start):
            if cut == tried:
                continue
            try:
                items: list[Any] = _RECORDS.decode("[" + buf[start : cut + 1] + "]")
            except (msgspec.MsgspecError, RecursionError, ValueError):
                tries, tried = tries + 1, cut
                if tries >= _BULK_TRIES:
                    break
                continue
            self._pos = cut + 1
            self._retry_at = 0
            return items
        self._slow_until = len(buf)
        return None

    def _ends(self, buf: str, start: int) -> Iterator[int]:
        """Where the last result in the buffer may end, likeliest first.

        First the last ``}`` before the buffer's last result start: the opening of the first result up to
        its first field name (e.g. ``{"success":``), which an object inside a result, such as a data frame's
        row, does not share. Then the last ``}`` followed by ``,`` or ``]``, which may also end such an
        inner object, or sit in a string.
        """
        if self._opening:
            found = buf.rfind(self._opening, start + 1)
            if found > 0 and (cut := buf.rfind("}", start, found)) >= 0:
                yield cut
        end = len(buf)
        for _ in range(_BULK_CANDIDATES):
            cut = buf.rfind("}", start, end)
            if cut < 0:
                return
            end = cut
            after = _WS.match(buf, cut + 1).end()  # type: ignore[union-attr]
            if after == len(buf) or buf[after] in ",]":
                yield cut

    def _finish_object(self) -> None:
        self.done = True
        if self._skip_ws():
            raise _malformed(self.what, "unexpected data after the answer object", self._buf[self._pos :])


class BatchReader:
    """A body reader over :class:`BatchAnswerParser` that keeps the head and (unless a poll) the results."""

    def __init__(self, what: str, head_only: bool) -> None:
        self.parser = BatchAnswerParser(what, head_only=head_only)
        self.results: list[Any] = []

    @property
    def bytes_read(self) -> int:
        return self.parser.bytes_read

    def feed(self, chunk: bytes) -> bool:
        self.results.extend(self.parser.feed(chunk))
        return self.parser.done

    def finish(self, complete: bool) -> tuple[dict[str, Any], list[Any] | None]:
        if complete and not self.parser.done:
            self.results.extend(self.parser.close())
        if not self.parser.done:
            raise _malformed(self.parser.what, "the answer ended early", "")
        return self.parser.head, (None if self.parser.head_only else self.results)
