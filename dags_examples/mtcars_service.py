"""The seed workflow's model: a logistic regression ``am ~ hp + wt`` on mtcars, published as a Python service.

The fit (iteratively reweighted least squares, as R's ``glm(family = binomial)`` does) runs where the DAG
runs; the service carries the three coefficients and, per record, writes ``answer.csv`` (and, for the
first records, ``histogram.png``) as artifacts, like the seed's ``manualTransmission``.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

MTCARS = Path(__file__).parent / "data" / "mtcars.csv"
SERVICE_NAME = "TxService"
SERVICE_VERSION = "1.0"

log = logging.getLogger(__name__)


def load_mtcars() -> pd.DataFrame:
    return pd.read_csv(MTCARS)


def fit_logistic(frame: pd.DataFrame) -> list[float]:
    """Coefficients (intercept, hp, wt) of ``glm(am ~ hp + wt, family = binomial)``."""
    x = np.column_stack([np.ones(len(frame)), frame["hp"], frame["wt"]])
    y = frame["am"].to_numpy(dtype=float)
    beta = np.zeros(3)
    for _ in range(50):
        eta = x @ beta
        mu = 1.0 / (1.0 + np.exp(-eta))
        w = mu * (1.0 - mu)
        z = eta + (y - mu) / w
        new = np.linalg.solve(x.T @ (w[:, None] * x), x.T @ (w * z))
        if np.max(np.abs(new - beta)) < 1e-12:
            beta = new
            break
        beta = new
    return [float(b) for b in beta]


def predict(coefficients: list[float], hp: float, wt: float) -> float:
    eta = coefficients[0] + coefficients[1] * hp + coefficients[2] * wt
    return float(1.0 / (1.0 + np.exp(-eta)))


INIT_CODE = """
import math
import struct
import zlib

def _png(width, height, pixels):
    # a minimal RGB PNG writer, so the service needs no plotting library
    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)
    raw = b"".join(b"\\x00" + bytes(row) for row in pixels)
    return (b"\\x89PNG\\r\\n\\x1a\\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0))
            + chunk(b"IDAT", zlib.compress(raw)) + chunk(b"IEND", b""))
"""

CODE = """
eta = coefficients[0] + coefficients[1] * hp + coefficients[2] * wt
answer = 1.0 / (1.0 + math.exp(-eta))
with open("answer.csv", "w") as f:
    f.write("hp,wt,answer\\n%r,%r,%.7f\\n" % (hp, wt, answer))
if hp < 150:
    # a bar whose length is the probability: the seed's per-record plot, in miniature
    width, height = 100, 20
    filled = int(round(answer * width))
    row = [c for x in range(width) for c in ((220, 30, 30) if x < filled else (255, 255, 255))]
    with open("histogram.png", "wb") as f:
        f.write(_png(width, height, [row] * height))
"""


def publish_request(coefficients: list[float]) -> dict[str, Any]:
    """The PublishWebServiceRequest body of the service (coefficients baked into ``initCode``)."""
    return {
        "code": CODE,
        "initCode": INIT_CODE + f"\ncoefficients = {coefficients!r}\n",
        "runtimeType": "Python",
        "description": "Probability of a manual transmission from horsepower and weight (mtcars logistic model).",
        "operationId": "manualTransmission",
        "inputParameterDefinitions": [{"name": "hp", "type": "numeric"}, {"name": "wt", "type": "numeric"}],
        "outputParameterDefinitions": [{"name": "answer", "type": "numeric"}],
        "outputFileNames": ["answer.csv", "histogram.png"],
    }


def publish_if_absent(
    hook: Any, name: str = SERVICE_NAME, version: str = SERVICE_VERSION, borderline_only: bool = False
) -> str:
    """Publish the service on the server of ``hook`` unless that name and version exist; answer ``name/version``.

    It logs which: ``Published web service 'TxService' version '1.0'``, or ``Found web service 'TxService'
    version '1.0' (published 2026-11-30T12:00:00, by admin)``, so the task's log tells whether this run's
    scores come from a model it fitted or from one already there. ``borderline_only=True`` publishes a variant
    for very large batches: it writes one file, ``borderline.csv``, and only for the cars the model cannot
    call (:data:`BORDERLINE`).
    """
    from airflow_mlserver.exceptions import ServiceExistsError, ServiceNotFoundError

    try:
        found = hook.get_service(name, version)
    except ServiceNotFoundError:
        found = None
    if found is not None:
        log.info(
            "Found web service '%s' version '%s' (published %s, by %s)",
            name,
            version,
            found.creation_time or "at a time the server does not say",
            found.published_by or "a user the server does not name",
        )
        return f"{name}/{version}"
    body = publish_request(fit_logistic(load_mtcars()))
    try:
        _publish(hook, name, version, body, borderline_only)
    except ServiceExistsError:
        # Another run (a backfill's runs start together) published it between our look and our publish: the
        # server keeps the first one, which is the same model, so this run scores against it.
        log.info("Found web service '%s' version '%s' (published meanwhile by another run)", name, version)
        return f"{name}/{version}"
    log.info("Published web service '%s' version '%s'", name, version)
    return f"{name}/{version}"


def _publish(hook: Any, name: str, version: str, body: dict[str, Any], borderline_only: bool) -> None:
    hook.publish_service(
        name,
        version,
        code=BORDERLINE_CODE if borderline_only else body["code"],
        inputs={p["name"]: p["type"] for p in body["inputParameterDefinitions"]},
        outputs={p["name"]: p["type"] for p in body["outputParameterDefinitions"]},
        init_code=body["initCode"],
        output_file_names=["borderline.csv"] if borderline_only else body["outputFileNames"],
        operation_id=body["operationId"],
        description=body["description"],
    )


#: P(manual) between these: a car the model cannot call either way.
BORDERLINE = (0.45, 0.55)

BORDERLINE_CODE = f"""
eta = coefficients[0] + coefficients[1] * hp + coefficients[2] * wt
answer = 1.0 / (1.0 + math.exp(-eta))
if {BORDERLINE[0]!r} < answer < {BORDERLINE[1]!r}:
    with open("borderline.csv", "w") as f:
        f.write("hp,wt,answer\\n%r,%r,%.7f\\n" % (hp, wt, answer))
"""
