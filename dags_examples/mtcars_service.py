"""The seed workflow's model: a logistic regression ``am ~ hp + wt`` on mtcars, published as a Python service.

The fit (iteratively reweighted least squares, as R's ``glm(family = binomial)`` does) runs where the DAG
runs (:func:`train`); the service gets the three coefficients as its model object ``coefficients`` and, per
record, writes ``answer.csv`` (and, for the first records, ``histogram.png``) as artifacts, like the seed's
``manualTransmission``. :func:`service_arguments` is the rest of what ``MLServerPublishServiceOperator`` sends.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

MTCARS = Path(__file__).parent / "data" / "mtcars.csv"
SERVICE_NAME = "TxService"
SERVICE_VERSION = "1.0"


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


def train() -> list[float]:
    """The model object ``coefficients``: :func:`fit_logistic` on mtcars, to 10 significant digits.

    Rounded so that a refit gives the same bytes, hence the same content digest, wherever it runs (another BLAS
    may differ in the last bits); the answers move by less than 1e-8.
    """
    return [float(f"{b:.10g}") for b in fit_logistic(load_mtcars())]


def service_arguments(borderline_only: bool = False) -> dict[str, Any]:
    """The arguments of ``MLServerPublishServiceOperator`` for the service, but its name, version and model.

    The code reads the model object ``coefficients`` (see :func:`train`), a variable when the code runs.
    ``borderline_only=True`` is the variant for very large batches: it writes one file, ``borderline.csv``, and
    only for the cars the model cannot call (:data:`BORDERLINE`).
    """
    return {
        "code": BORDERLINE_CODE if borderline_only else CODE,
        "init_code": INIT_CODE,
        "inputs": {"hp": "numeric", "wt": "numeric"},
        "outputs": {"answer": "numeric"},
        "output_file_names": ["borderline.csv"] if borderline_only else ["answer.csv", "histogram.png"],
        "operation_id": "manualTransmission",
        "description": "Probability of a manual transmission from horsepower and weight (mtcars logistic model).",
    }


#: P(manual) between these: a car the model cannot call either way.
BORDERLINE = (0.45, 0.55)

BORDERLINE_CODE = f"""
eta = coefficients[0] + coefficients[1] * hp + coefficients[2] * wt
answer = 1.0 / (1.0 + math.exp(-eta))
if {BORDERLINE[0]!r} < answer < {BORDERLINE[1]!r}:
    with open("borderline.csv", "w") as f:
        f.write("hp,wt,answer\\n%r,%r,%.7f\\n" % (hp, wt, answer))
"""
