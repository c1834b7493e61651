"""What this API server's own reads of the executions saw: when each was first seen running and finished.

The batch operator stores what its polls saw (:mod:`~airflow_mlserver.executions.timing`), but not while its
trigger waits; an open batch view reads the server every few seconds, so what it sees fills that gap, to the
nearest refresh. Kept in this process only, for the most recent executions (bounded), merged with what the
task stored (the earlier time wins).
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Iterable
from typing import TYPE_CHECKING

from airflow_mlserver.executions.timing import Seen, observe

if TYPE_CHECKING:
    from airflow_mlserver.client.models import BatchStatus

#: Executions remembered, at most (the oldest seen are forgotten first).
MAX_REMEMBERED = 10_000

_seen: OrderedDict[str, Seen] = OrderedDict()
_lock = threading.Lock()


def remember(statuses: Iterable[BatchStatus], now: float) -> dict[str, Seen]:
    """Note what these statuses show at ``now``; answer what was seen of each of them so far (copies)."""
    statuses = list(statuses)
    with _lock:
        observe(_seen, statuses, now)
        answer = {}
        for status in statuses:
            _seen.move_to_end(status.execution_id)
            entry = _seen[status.execution_id]
            answer[status.execution_id] = Seen(entry.running, entry.ended)
        while len(_seen) > MAX_REMEMBERED:
            _seen.popitem(last=False)
    return answer
