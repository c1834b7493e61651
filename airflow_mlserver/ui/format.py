"""Numbers and durations on the batch view, worded as in the task logs (:mod:`airflow_mlserver.executions.progress`)."""

from __future__ import annotations

from airflow_mlserver.executions import progress

UNKNOWN = "\u2014"


def duration(seconds: float | None) -> str:
    """``0.4s``, ``42s``, ``3m12s``, ``1h02m``; an em dash when unknown."""
    return UNKNOWN if seconds is None else progress.duration(seconds)


def number(value: float | None, digits: int = 0) -> str:
    """Thousands separated (``12,345``), ``digits`` decimals; an em dash when unknown."""
    return UNKNOWN if value is None else f"{value:,.{digits}f}"
