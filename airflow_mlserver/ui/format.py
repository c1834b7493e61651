"""Numbers and durations as a person reads them on the batch view."""

from __future__ import annotations


def duration(seconds: float | None) -> str:
    """``0.4s``, ``42s``, ``3m12s``, ``1h02m``; an em dash when unknown."""
    if seconds is None:
        return "\u2014"
    if seconds < 10:
        return f"{seconds:.1f}s"
    whole = round(seconds)
    if whole < 60:
        return f"{whole}s"
    minutes, secs = divmod(whole, 60)
    if minutes < 60:
        return f"{minutes}m{secs:02d}s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h{minutes:02d}m"


def number(value: float | None, digits: int = 0) -> str:
    """Thousands separated (``12,345``), ``digits`` decimals; an em dash when unknown."""
    if value is None:
        return "\u2014"
    return f"{value:,.{digits}f}"
