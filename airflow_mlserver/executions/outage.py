"""The one rule for a server that cannot be read while executions are waited on, for every wait alike: the
trigger, the in-worker wait (:mod:`~airflow_mlserver.executions.polling`, behind the batch operator with
``deferrable=False`` and the artifacts operator) and the sensor's pokes.

* **What an outage is** (:func:`is_outage`): the server is not readable: it could not be reached (connection
  refused, unknown host, no answer in time: :class:`~airflow_mlserver.client.errors.MLServerConnectionError`),
  it answered a server error (5xx, 408, 429) after the client's own retries, or its answer could not be read
  (:class:`~airflow_mlserver.client.errors.MalformedResponseError`). Every other error says that the input is
  wrong (the execution or the service is unknown, the credentials are refused, a setting is not usable, the
  request is refused as invalid): waiting cannot mend it, so it ends the wait at once (:data:`PERMANENT`).
* **How long it is waited out**: an outage starts when the first poll that failed began, and lasts until a
  poll reads the server again. Up to ``unreachable_timeout`` seconds (:data:`DEFAULT_UNREACHABLE_TIMEOUT`,
  30 minutes) the wait goes on (:data:`LOG` or :data:`QUIET`); a poll that fails once it has lasted that long
  ends the wait with the last error (:data:`GIVE_UP`), and no sleep runs past that moment
  (:func:`outage_sleep`). A task's deadline (``timeout``) still applies beside it: whichever comes first ends
  the wait.
* **What it logs**: two lines when the outage starts (its state, then the last error's first sentence), then
  the same once a minute (:data:`OUTAGE_LOG_INTERVAL`), never on every poll (:func:`outage_line`,
  :func:`error_line`); one line when the server is readable again (:func:`back_line`); the message the wait
  fails with names the outage's length and the last error (:func:`gave_up_message`).

:func:`judge` is the rule, a function of data (no clock, no I/O): each wait keeps the :class:`Outage` it answers
between polls; :class:`OutageWatch` is that bookkeeping and the log lines, for a caller that passes the clock.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, replace
from enum import StrEnum
from typing import Any, Protocol

from airflow_mlserver.client.errors import MalformedResponseError, MLServerApiError, MLServerConnectionError
from airflow_mlserver.client.quoting import shortened
from airflow_mlserver.client.words import first_few, noun, plural
from airflow_mlserver.executions.progress import duration

#: How long a wait goes on while the server cannot be read, by default (seconds): 30 minutes.
DEFAULT_UNREACHABLE_TIMEOUT = 30 * 60.0
#: Seconds between two log lines about one outage.
OUTAGE_LOG_INTERVAL = 60.0
#: Error statuses (after the client's retries) that say the server is not readable for now, beside 5xx.
OUTAGE_STATUSES = frozenset({408, 429})


class Verdict(StrEnum):
    """What a wait does after a poll that failed."""

    #: Not an outage (the input is wrong): end the wait now with this error.
    PERMANENT = "permanent"
    #: An outage within ``unreachable_timeout``, and a line about it is due: log it, then poll again.
    LOG = "log"
    #: An outage within ``unreachable_timeout``, said less than a minute ago: poll again.
    QUIET = "quiet"
    #: The outage has lasted ``unreachable_timeout``: end the wait with the last error.
    GIVE_UP = "give up"


PERMANENT, LOG, QUIET, GIVE_UP = Verdict.PERMANENT, Verdict.LOG, Verdict.QUIET, Verdict.GIVE_UP


def is_outage(error: BaseException) -> bool:
    """Whether ``error`` (from a status poll, after the client's own retries) says the server is not readable
    for now, rather than that the input is wrong."""
    if isinstance(error, MLServerConnectionError | MalformedResponseError):
        return True
    if isinstance(error, MLServerApiError):  # 404s (execution or service unknown), 400, 403: wrong input
        return error.status >= 500 or error.status in OUTAGE_STATUSES
    return False


@dataclass(frozen=True)
class Outage:
    """An unbroken run of polls that could not read the server.

    :param since: When the first of them began (seconds on the caller's clock).
    :param logged: When a line last said so.
    :param error: The last error's message.
    :param polls: How many polls failed.
    """

    since: float
    logged: float
    error: str
    polls: int = 1

    def lasted(self, now: float) -> float:
        """How long the server has not been readable, at ``now``."""
        return max(0.0, now - self.since)

    def to_stored(self) -> dict[str, Any]:
        """Plain JSON (a sensor in ``reschedule`` mode keeps it between pokes), on a Unix-time clock."""
        return {"since": self.since, "logged": self.logged, "error": self.error, "polls": self.polls}

    @classmethod
    def from_stored(cls, value: Any) -> Outage | None:
        """What :meth:`to_stored` wrote; None for anything else (nothing stored, or a form it cannot read)."""
        if not isinstance(value, Mapping):
            return None
        try:
            return cls(
                float(value["since"]), float(value["logged"]), str(value["error"]), int(value.get("polls", 1))
            )
        except (KeyError, TypeError, ValueError):
            return None


@dataclass(frozen=True)
class Judgement:
    """What to do after a failed poll (:attr:`verdict`) and the outage to keep until the next poll."""

    verdict: Verdict
    outage: Outage | None


def judge(
    outage: Outage | None,
    error: BaseException,
    began: float,
    now: float,
    unreachable_timeout: float,
    interval: float = OUTAGE_LOG_INTERVAL,
) -> Judgement:
    """The rule, after a poll that began at ``began`` failed with ``error`` at ``now``.

    :param outage: The outage so far (None when the last poll read the server).
    :param unreachable_timeout: How long an outage is waited out, in seconds.
    :param interval: Seconds between two lines about one outage.
    """
    if not is_outage(error):
        return Judgement(PERMANENT, outage)
    if outage is None:
        current = Outage(since=began, logged=now, error=str(error))
        due = True
    else:
        due = now - outage.logged >= interval
        current = replace(
            outage, error=str(error), polls=outage.polls + 1, logged=now if due else outage.logged
        )
    if current.lasted(now) >= unreachable_timeout:
        return Judgement(GIVE_UP, current)
    return Judgement(LOG if due else QUIET, current)


def outage_sleep(sleep: float, outage: Outage | None, unreachable_timeout: float, now: float) -> float:
    """Seconds to sleep before the next poll: ``sleep``, but never past the moment an outage is given up."""
    if outage is None:
        return sleep
    return max(0.0, min(sleep, outage.since + unreachable_timeout - now))


def outage_line(outage: Outage, now: float, unreachable_timeout: float, prefix: str = "") -> str:
    """``Batch state unknown: the server has not been readable for 1m02s; waiting for it 28m58s more
    (unreachable_timeout 30m00s)``; the last error has a line of its own (:func:`error_line`)."""
    lasted = outage.lasted(now)
    return (
        f"{prefix}Batch state unknown: the server has not been readable for {duration(lasted)}; waiting for it "
        f"{duration(max(0.0, unreachable_timeout - lasted))} more (unreachable_timeout {duration(unreachable_timeout)})"
    )


def error_line(outage: Outage, prefix: str = "") -> str:
    """``Last error: Could not get ... (GET ..., tried 9 times): nothing answers at http://... (connection
    refused)``: the first sentence of the last error, what happened (its fix is in the message a wait fails
    with)."""
    first, _, _ = outage.error.partition(". ")
    return f"{prefix}Last error: {shortened(first.rstrip('.'))}"


def back_line(outage: Outage, now: float, prefix: str = "") -> str:
    """``The server is readable again after 12s; waiting on``."""
    return f"{prefix}The server is readable again after {duration(outage.lasted(now))}; waiting on"


def gave_up_message(outage: Outage, now: float, unreachable_timeout: float, waited_for: str) -> str:
    """The error a wait ends with once the outage has lasted ``unreachable_timeout``: its length, what was
    waited for, the last error and what to do."""
    return (
        f"The server was not readable for {duration(outage.lasted(now))} ({plural(outage.polls, 'poll')} "
        "failed), as long as unreachable_timeout "
        f"({duration(unreachable_timeout)}) allows, while waiting for {waited_for}. Last error: "
        f"{outage.error.rstrip('. ')}. Raise unreachable_timeout to wait longer; a retry of the task waits for "
        "the executions again."
    )


def waited_for(execution_ids: list[str] | tuple[str, ...], service_name: str, service_version: str) -> str:
    """``batch execution e1 of web service 'svc' version '1.0'`` (``executions e1 and e2``, ``e1, e2, e3 and 5
    more`` for several)."""
    which = noun(len(execution_ids), "batch execution")
    return f"{which} {first_few(execution_ids)} of web service '{service_name}' version '{service_version}'"


class WarningLog(Protocol):
    """Where outage lines go: a ``logging.Logger``, or the structlog-style logger of an Airflow task."""

    def info(self, msg: str, /, *args: Any) -> Any: ...

    def warning(self, msg: str, /, *args: Any) -> Any: ...


class OutageWatch:
    """The rule applied across the polls of one wait: the :class:`Outage` between polls, and its log lines.

    The caller reads the clock and acts on the verdict (an event, or an error to raise); nothing here sleeps.

    :param log: Where the lines go.
    :param unreachable_timeout: How long an outage is waited out, in seconds.
    :param waited_for: What the wait is for, in the message it fails with (:func:`waited_for`).
    :param prefix: The start of every line (a mapped task's map index).
    :param outage: An outage already under way (a sensor's, kept between pokes).
    :param interval: Seconds between two lines about one outage.
    """

    def __init__(
        self,
        log: WarningLog,
        unreachable_timeout: float,
        waited_for: str,
        prefix: str = "",
        outage: Outage | None = None,
        interval: float = OUTAGE_LOG_INTERVAL,
    ) -> None:
        self.log = log
        self.unreachable_timeout = unreachable_timeout
        self.waited_for = waited_for
        self.prefix = prefix
        self.outage = outage
        self.interval = interval

    def failed(self, error: BaseException, began: float, now: float) -> Verdict:
        """A poll that began at ``began`` failed with ``error`` at ``now``: the verdict (logged if due)."""
        judgement = judge(self.outage, error, began, now, self.unreachable_timeout, self.interval)
        self.outage = judgement.outage
        if judgement.verdict is LOG and self.outage is not None:
            self.log.warning("%s", outage_line(self.outage, now, self.unreachable_timeout, self.prefix))
            self.log.warning("%s", error_line(self.outage, self.prefix))
        return judgement.verdict

    def readable(self, now: float) -> None:
        """A poll read the server: an outage under way is over (and a line says so)."""
        if self.outage is not None:
            self.log.info("%s", back_line(self.outage, now, self.prefix))
            self.outage = None

    def message(self, now: float) -> str:
        """The message a wait ends with once :data:`GIVE_UP` is the verdict."""
        assert self.outage is not None
        return gave_up_message(self.outage, now, self.unreachable_timeout, self.waited_for)

    def sleep(self, seconds: float, now: float) -> float:
        """``seconds``, but no later than the moment the outage under way is given up."""
        return outage_sleep(seconds, self.outage, self.unreachable_timeout, now)


__all__ = [
    "DEFAULT_UNREACHABLE_TIMEOUT",
    "GIVE_UP",
    "LOG",
    "OUTAGE_LOG_INTERVAL",
    "PERMANENT",
    "QUIET",
    "Judgement",
    "Outage",
    "OutageWatch",
    "Verdict",
    "WarningLog",
    "back_line",
    "error_line",
    "gave_up_message",
    "is_outage",
    "judge",
    "outage_line",
    "outage_sleep",
    "waited_for",
]
