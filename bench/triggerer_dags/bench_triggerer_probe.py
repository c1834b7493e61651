"""The event-loop probe of ``bench/triggerer.py``: a trigger that wakes every 0.1 s inside the triggerer and
records how late each wake-up was.

The triggerer imports it by its classpath (``bench_triggerer_probe.LagProbeTrigger``): the benchmark puts this
folder on the ``PYTHONPATH`` of every Airflow process of its deployment. The samples are written, as JSON lines
``[epoch seconds, lateness in ms]``, once ``stop_path`` exists; then the trigger fires.
"""

from __future__ import annotations

import asyncio
import json
import os
import time
from collections.abc import AsyncIterator
from typing import Any

from airflow.triggers.base import BaseTrigger, TriggerEvent

STEP_S = 0.1
#: Wake-ups between two looks for the stop file (a stat, once a second).
CHECK_EVERY = 10


class LagProbeTrigger(BaseTrigger):
    """Sleeps ``STEP_S`` in a loop and keeps ``(wall time, lateness)`` of every wake-up until ``stop_path`` exists."""

    def __init__(self, samples_path: str, stop_path: str) -> None:
        super().__init__()
        self.samples_path = samples_path
        self.stop_path = stop_path

    def serialize(self) -> tuple[str, dict[str, Any]]:
        return (
            f"{type(self).__module__}.{type(self).__qualname__}",
            {"samples_path": self.samples_path, "stop_path": self.stop_path},
        )

    async def run(self) -> AsyncIterator[TriggerEvent]:
        loop = asyncio.get_running_loop()
        samples: list[tuple[float, float]] = []
        wakes = 0
        while True:
            due = loop.time() + STEP_S
            await asyncio.sleep(STEP_S)
            samples.append((time.time(), (loop.time() - due) * 1000))
            wakes += 1
            if wakes % CHECK_EVERY == 0 and os.path.exists(self.stop_path):
                break
        partial = f"{self.samples_path}.part"
        with open(partial, "w") as out:
            out.writelines(json.dumps([round(t, 3), round(lag, 3)]) + "\n" for t, lag in samples)
        os.replace(partial, self.samples_path)
        yield TriggerEvent({"samples": len(samples)})
