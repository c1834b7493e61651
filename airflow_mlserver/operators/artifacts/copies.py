"""The artifacts operator's copy: each selected record listed and its artifacts copied, in a pool of threads.

When the plan lets each record be copied as soon as it is listed (:attr:`~.plan.Plan.streams`), each thread lists
one record and copies its artifacts, a few records ahead of the transfers (:func:`~.plan.next_records`); otherwise
every record is listed and checked first, so that a collision fails before the first copy. Each artifact is
copied, or skipped, by :meth:`~.transfers.Transfers.copy`.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from airflow_mlserver.operators.artifacts.plan import Listing, Plan, Planned, next_records

if TYPE_CHECKING:
    from airflow_mlserver.operators.artifacts.destination import Destination
    from airflow_mlserver.operators.artifacts.manifest import ArtifactEntry
    from airflow_mlserver.operators.artifacts.records import Executions
    from airflow_mlserver.operators.artifacts.transfers import Transfers


@dataclass
class Copied:
    """What a copy did: the records listed, an entry per artifact, and the listing that failed, if one did.

    After a failed listing the entries are those handled before it (and by the records running then).
    """

    listings: list[Listing] = field(default_factory=list)
    entries: list[ArtifactEntry] = field(default_factory=list)
    failure: Exception | None = None


def copy_records(
    transfers: Transfers,
    plan: Plan,
    dest: Destination,
    executions: Executions,
    records: Sequence[int],
    existing: dict[str, int],
    previous: dict[str, ArtifactEntry],
    concurrency: int,
) -> Copied:
    """List ``records`` and copy their artifacts to ``dest``, ``concurrency`` at a time; the entries by record
    and name.

    :param existing: The sizes of the files already at the destination, by path in its store.
    :param previous: The previous manifest's entries, by destination URI.
    """

    def list_record(record: int) -> Listing:
        return transfers.listing(executions, record)

    def copy(item: Planned) -> ArtifactEntry:
        return transfers.copy(dest, item, existing.get(item.path), previous)

    with ThreadPoolExecutor(concurrency, thread_name_prefix="mlserver-artifacts") as pool:
        if plan.streams:
            copied = _copy_as_listed(pool, records, list_record, plan, copy, 2 * concurrency)
        else:  # every record listed and checked first: a collision fails before the first copy
            listings = list(pool.map(list_record, records))
            planned, entries = plan.all(listings)
            entries.extend(pool.map(copy, planned))
            copied = Copied(listings, entries)
    copied.entries.sort(key=lambda e: (e.record, e.file_name))
    return copied


def _copy_as_listed(
    pool: ThreadPoolExecutor,
    records: Sequence[int],
    list_record: Callable[[int], Listing],
    plan: Plan,
    copy: Callable[[Planned], ArtifactEntry],
    window: int,
) -> Copied:
    """List each record and copy its artifacts in the same thread, up to ``window`` records at a time.

    Listing never waits for the other records, as copying never waits for the last listing. A listing
    that fails stops new records (those running finish): answered with what was done, for the manifest.
    """

    def one(record: int) -> tuple[Listing, list[ArtifactEntry]]:
        listing = list_record(record)
        planned, entries = plan.record(listing)
        entries.extend(copy(item) for item in planned)
        return listing, entries

    copied = Copied()
    started = 0
    running: set[Future[tuple[Listing, list[ArtifactEntry]]]] = set()
    while True:
        starting = next_records(records, started, len(running), window, copied.failure is not None)
        started += len(starting)
        running |= {pool.submit(one, r) for r in starting}
        if not running:
            return copied
        finished, running = wait(running, return_when=FIRST_COMPLETED)
        for future in finished:
            try:
                listing, done = future.result()
            except Exception as exc:
                copied.failure = copied.failure or exc
                continue
            copied.listings.append(listing)
            copied.entries.extend(done)
