"""The batch answer parser, fed bytes with no socket: every way of cutting an answer into chunks reads the same.

The results are decoded in bulk by msgspec and, where it cannot, one value at a time by the standard library;
whichever path reads a result, the records are those ``json.loads`` of the whole answer gives, the errors are
the same ``MalformedResponseError`` with a short sample and why, and memory stays bounded by a chunk.
"""

from __future__ import annotations

import json
import random
import tracemalloc
from collections.abc import Iterator
from typing import Any

import pytest

from airflow_mlserver.client.errors import MalformedResponseError
from airflow_mlserver.client.models import RecordResult, ResultsPage
from airflow_mlserver.client.streaming import BatchAnswerParser, BatchReader, WireRecord

HEAD = {"name": "svc", "version": "1", "state": "Complete", "totalItemCount": 0, "completedItemCount": 0}
TRICKY_STRINGS = [
    'quote " and brace }, and bracket ]',
    'backslash \\ then quote \\" then }',
    '"}, {"success": false}',
    "},]}]",
    "\\",
    "unicode é ü 中文 😀 and a brace } after",
    "",
]
RECORDS: list[dict[str, Any]] = [
    {
        "success": True,
        "errorMessage": "",
        "consoleOutput": "",
        "changedFiles": [],
        "outputParameters": {"y": 1.5},
    },
    {"success": True, "consoleOutput": TRICKY_STRINGS[0], "outputParameters": {"s": TRICKY_STRINGS[1]}},
    {
        "success": False,
        "errorMessage": TRICKY_STRINGS[2],
        "outputParameters": {},
        "outputFiles": {"a.txt": "YQ=="},
    },
    {"success": True, "outputParameters": {"frame": [{"a": 1, "b": "x}"}, {"a": 2, "b": TRICKY_STRINGS[3]}]}},
    {
        "success": True,
        "changedFiles": [TRICKY_STRINGS[4], TRICKY_STRINGS[5]],
        "outputParameters": {"n": None},
    },
    {"success": True, "errorMessage": None, "outputParameters": {"big": 12345678901234567890123, "e": -1e-7}},
    {"success": True, "outputParameters": {"deep": {"a": {"b": {"c": [[{"d": TRICKY_STRINGS[6]}]]}}}}},
]


def answer(records: list[Any], *, indent: int | None = None, head_last: bool = False, **head: Any) -> bytes:
    fields = {**HEAD, "totalItemCount": len(records), "completedItemCount": len(records), **head}
    body = (
        {"batchExecutionResults": records, **fields}
        if head_last
        else {**fields, "batchExecutionResults": records}
    )
    return json.dumps(body, indent=indent, ensure_ascii=False).encode()


def expected(body: bytes, skip: int = 0) -> list[RecordResult]:
    results = json.loads(body)["batchExecutionResults"]
    return [RecordResult.from_api(r, i) for i, r in enumerate(results)][skip:]


def parse(
    chunks: Iterator[bytes] | list[bytes], skip: int = 0
) -> tuple[list[RecordResult], BatchAnswerParser]:
    parser = BatchAnswerParser("GET /b", skip=skip)
    items: list[Any] = []
    for chunk in chunks:
        items.extend(parser.feed(chunk))
    items.extend(parser.close())
    return [RecordResult.from_api(item, skip + i) for i, item in enumerate(items)], parser


def chunked(body: bytes, size: int) -> list[bytes]:
    return [body[i : i + size] for i in range(0, len(body), size)]


# --- chunk boundaries: every split reads the same records ---------------------------------------------


@pytest.mark.parametrize("indent", [None, 1])
def test_a_split_at_every_byte_reads_the_same_records(indent: int | None) -> None:
    body = answer(RECORDS, indent=indent)
    want = expected(body)
    assert len(want) == len(RECORDS)
    for cut in range(len(body) + 1):
        got, parser = parse([body[:cut], body[cut:]])
        assert got == want, f"split at byte {cut}"
        assert parser.head["state"] == "Complete" and parser.results_count == len(RECORDS)


def test_one_byte_chunks_and_random_chunks_read_the_same_records() -> None:
    body = answer(RECORDS * 3, indent=2)
    want = expected(body)
    assert parse(chunked(body, 1))[0] == want
    rng = random.Random(7)
    for _ in range(200):
        cuts = sorted(rng.sample(range(1, len(body)), 6))
        pieces = [body[a:b] for a, b in zip([0, *cuts], [*cuts, len(body)], strict=True)]
        assert parse(pieces)[0] == want, f"cuts {cuts}"


def test_results_are_checked_records_from_the_bulk_decoder() -> None:
    body = answer(RECORDS * 50)
    parser = BatchAnswerParser("GET /b")
    items = parser.feed(body) + parser.close()
    assert len(items) == len(RECORDS) * 50
    assert all(type(item) is WireRecord for item in items)


def test_results_holding_objects_are_still_read_in_bulk_across_chunks() -> None:
    frame = [{"a": i, "b": "x"} for i in range(20)]  # a data frame output: objects inside every result
    records = [{"success": True, "outputParameters": {"frame": frame, "i": i}} for i in range(2000)]
    body = answer(records)
    parser = BatchAnswerParser("GET /b")
    items = [item for chunk in chunked(body, 64 * 1024) for item in parser.feed(chunk)] + parser.close()
    assert [RecordResult.from_api(item, i) for i, item in enumerate(items)] == expected(body)
    bulk = sum(type(item) is WireRecord for item in items)
    assert bulk > 0.95 * len(items), f"{bulk} of {len(items)} read in bulk"


@pytest.mark.parametrize("skip", [0, 1, 3, 6, 7, 20])
def test_skip_drops_the_first_results_at_every_split(skip: int) -> None:
    body = answer(RECORDS)
    want = expected(body, skip)
    for cut in range(0, len(body) + 1, 7):
        got, parser = parse([body[:cut], body[cut:]], skip=skip)
        assert got == want, f"skip {skip}, split at byte {cut}"
        assert parser.results_count == len(RECORDS)


def test_a_result_larger_than_many_chunks_is_read_whole() -> None:
    huge = {
        "success": True,
        "consoleOutput": "}, " * 300_000,
        "outputParameters": {"rows": [{"a": i} for i in range(5000)]},
    }
    body = answer([RECORDS[0], huge, RECORDS[1]])
    assert parse(chunked(body, 64 * 1024))[0] == expected(body)


# --- values only the standard library reads: the same records as json.loads --------------------------


@pytest.mark.parametrize(
    "value", [b"NaN", b"-Infinity", b"1e400", b'"\\ud800 lone surrogate"', b'"a\\u0000b"', b"-0.0", b"1E+2"]
)
def test_an_unusual_value_reads_as_json_loads_reads_it(value: bytes) -> None:
    record = b'{"success": true, "outputParameters": {"v": ' + value + b"}}"
    body = b'{"state": "Complete", "batchExecutionResults": [' + b", ".join([record] * 3) + b"]}"
    want = expected(body)
    for size in (1, 5, 64, len(body)):
        got = parse(chunked(body, size))[0]
        assert [repr(r.outputs["v"]) for r in got] == [repr(r.outputs["v"]) for r in want]


# --- head-only reads ------------------------------------------------------------------------------------


def test_a_head_only_read_stops_at_the_results_list() -> None:
    body = answer(RECORDS * 1000)
    parser = BatchAnswerParser("GET /b", head_only=True)
    fed = 0
    for chunk in chunked(body, 16):
        fed += len(chunk)
        assert parser.feed(chunk) == []
        if parser.done:
            break
    assert parser.done and fed < 8 * 1024 < len(body) // 30  # a value cut short is decoded again 4 KiB later
    assert parser.head == {**HEAD, "totalItemCount": 7000, "completedItemCount": 7000}


def test_a_head_only_read_with_the_results_first_reads_through_them_and_keeps_none() -> None:
    body = answer(RECORDS, head_last=True)
    for size in (1, 13, len(body)):
        reader = BatchReader("GET /b", head_only=True)
        for chunk in chunked(body, size):
            reader.feed(chunk)
        head, results = reader.finish(True)
        assert head["state"] == "Complete" and results is None
        assert reader.parser.results_count == len(RECORDS)


# --- malformed answers: MalformedResponseError with why and a short sample -----------------------------


@pytest.mark.parametrize(
    ("record", "message"),
    [
        ({"errorMessage": ""}, "The server's result of record 1 has no 'success' field."),
        ({"success": "yes"}, "The server's result of record 1 has 'success' = 'yes' (str), expected bool."),
        (
            {"success": True, "changedFiles": [1]},
            "The server's result of record 1 has 'changedFiles' holding 1",
        ),
        (
            {"success": True, "outputFiles": {"a": 2}},
            "The server's result of record 1 has 'outputFiles' holding 2",
        ),
        (
            {"success": True, "outputParameters": [1]},
            "The server's result of record 1 has 'outputParameters' = [1]",
        ),
        ([1, 2], "The server answered list where a result of record 1 object was expected: [1, 2]."),
    ],
)
def test_a_result_of_the_wrong_shape_is_worded_by_the_record_model(record: Any, message: str) -> None:
    body = answer([RECORDS[0], record, RECORDS[1]])
    for size in (3, len(body)):
        parser = BatchAnswerParser("GET /b")
        items = [item for chunk in chunked(body, size) for item in parser.feed(chunk)] + parser.close()
        assert items[1] == record  # kept as plain JSON: the record model words what is wrong
        with pytest.raises(MalformedResponseError) as raised:
            RecordResult.from_api(items[1], 1)
        assert str(raised.value).startswith(message)


def test_a_page_as_columns_reads_what_the_records_say() -> None:
    """A table's columns come from the decoded results without an object per record; they say what the
    records say, whether the C decoder read the page or a NaN sent it through the checked path."""
    records = [*RECORDS, {"success": False, "errorMessage": "bad", "outputParameters": {"y": 2.0}}]
    names = ["y", "s", "n", "absent"]
    nan = {"success": True, "outputParameters": {"y": float("nan")}}
    for body, bulk in ((answer(records), True), (answer([*records, nan]), False)):
        parser = BatchAnswerParser("GET /b")
        items = parser.feed(body) + parser.close()
        assert all(type(item) is WireRecord for item in items) is bulk
        page = ResultsPage(items, 5)
        results = json.loads(body)["batchExecutionResults"]
        want = [RecordResult.from_api(r, 5 + i) for i, r in enumerate(results)]
        assert page.records() == want
        success, errors, outputs = page.columns(names)
        assert success == [r.success for r in want]
        assert errors == [r.error_message or None for r in want]
        assert outputs == {n: [r.outputs.get(n) if r.success else None for r in want] for n in names}
        assert outputs["y"][0] == 1.5
        assert outputs["y"][len(records) - 1] is None  # a failed record's output, though it sent one


def test_a_malformed_result_in_a_page_fails_its_columns_as_its_record() -> None:
    parser = BatchAnswerParser("GET /b")
    page = ResultsPage(parser.feed(answer([RECORDS[0], {"success": "yes"}])) + parser.close(), 0)
    with pytest.raises(MalformedResponseError, match=r"result of record 1 has 'success' = 'yes'"):
        page.columns(["y"])


@pytest.mark.parametrize(
    ("body", "why"),
    [
        (b'[{"success": true},, {"success": true}]}', "Expecting value"),
        (b'[{"success": tru}]}', "Expecting value"),
        (b'[{"success": true} {"success": true}]}', "expected ',' or ']'"),
        (b'[{"success": true}, "x": 1]}', "expected ',' or ']'"),
        (b'[{"success": true}]} trailing', "unexpected data after the answer object"),
        (b'[{"success": true}, {"success": "\\x"}]}', "Invalid \\escape"),
        (
            b'[{"success": true}, {"a": ' + b'{"a": ' * 100_000 + b"1" + b"}" * 100_001 + b"]}",
            "nested too deeply",
        ),
        (b'[{"success": true}, {"s": "\xff"}]}', "invalid start byte"),
        (b'[{"success": true}, {"success": true', "Expecting ',' delimiter"),
        (b'[{"success": true}, ', "the answer ended early"),
        (b'[{"success": true}, {"s": "unterminated}, {"success": true}]}', "Expecting ',' delimiter"),
        (b'[{"success": true}, {"s": "unterminated}, {', "Unterminated string starting at"),
    ],
)
def test_a_malformed_results_list_is_refused_with_why_and_a_short_sample(body: bytes, why: str) -> None:
    full = b'{"state": "Complete", "batchExecutionResults": ' + body
    for size in (1, 7, 64 * 1024):
        parser = BatchAnswerParser("GET /b")
        with pytest.raises(MalformedResponseError) as raised:
            for chunk in chunked(full, size):
                parser.feed(chunk)
            parser.close()
        message = str(raised.value)
        assert message.startswith("The server's answer to GET /b is not valid JSON ("), message
        assert why in message and len(message) < 600, message


# --- bounded memory -------------------------------------------------------------------------------------


def _stream(count: int, chunk: int) -> Iterator[bytes]:
    """A batch answer of ``count`` results, produced chunk by chunk (never whole in memory)."""
    parts = [b'{"state": "Complete", "totalItemCount": %d, "batchExecutionResults": [' % count]
    size = len(parts[0])
    for i in range(count):
        record = {
            "success": True,
            "consoleOutput": f"line {i}",
            "outputParameters": {"y": float(i), "s": "é}"},
        }
        parts.append((b", " if i else b"") + json.dumps(record).encode())
        size += len(parts[-1])
        if size >= chunk:
            pending = b"".join(parts)
            yield pending[:chunk]
            parts, size = [pending[chunk:]], len(pending) - chunk
    yield b"".join(parts) + b"]}"


def test_memory_stays_bounded_by_a_chunk_whatever_the_number_of_results() -> None:
    peaks = {}
    for count in (5_000, 50_000):
        chunks = list(_stream(count, 64 * 1024))  # made before tracing: only the reading is measured
        parser = BatchAnswerParser("GET /b")
        total = 0.0
        tracemalloc.start()
        try:
            for chunk in chunks:
                for item in parser.feed(chunk):
                    total += RecordResult.from_api(item).outputs["y"]
            parser.close()
            peaks[count] = tracemalloc.get_traced_memory()[1]
        finally:
            tracemalloc.stop()
        assert parser.results_count == count and total == sum(range(count))
    assert peaks[50_000] < 2 * 1024 * 1024, peaks  # the answer itself is about 4.5 MB
    assert peaks[50_000] < peaks[5_000] * 1.5, peaks
