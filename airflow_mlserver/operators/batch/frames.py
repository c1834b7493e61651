"""The input records of the parts to start or stage, read in one pass over the input.

Every part of every round carries record numbers of the whole input (see
:class:`~airflow_mlserver.operators.batch.state.Part`); the input is read chunk by chunk, as when it was
checked, and no further than the last record asked for. A part whose records are exactly one chunk (every part
of round 0) is that chunk's frame as read; others (rescore parts) are put together from the rows they name.
"""

from __future__ import annotations

from bisect import bisect_left
from collections.abc import Iterable, Iterator, Mapping, Sequence

import pandas as pd


def part_frames(
    frames: Iterable[pd.DataFrame], parts: Mapping[int, Sequence[int]]
) -> Iterator[tuple[int, pd.DataFrame]]:
    """The input rows of each of ``parts`` (its ascending record numbers, by part), each as soon as the pass
    has read its last record, in that order.

    :param frames: The input records, chunk by chunk, in input order.
    """
    wanted = {part: records for part, records in parts.items() if len(records)}
    pieces: dict[int, list[pd.DataFrame]] = {part: [] for part in wanted}
    offset = 0
    for frame in frames:
        if not wanted:
            return
        end = offset + len(frame)
        for part, records in list(wanted.items()):
            if records[0] == offset and records[-1] == end - 1 and len(records) == len(frame):
                pieces[part].append(frame)  # exactly this chunk: the frame as read
            else:
                low, high = bisect_left(records, offset), bisect_left(records, end)
                if high > low:
                    pieces[part].append(frame.iloc[[n - offset for n in records[low:high]]])
            if records[-1] < end:
                found = pieces.pop(part)
                del wanted[part]
                yield part, found[0] if len(found) == 1 else pd.concat(found, ignore_index=True)
        offset = end
