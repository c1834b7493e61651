"""The R seed's service: ``manualTransmission(hp, wt)``, a ``glm`` fitted in R, published as an R service.

The model is fitted by R itself (``Rscript``, where the fitting task runs) exactly as the seed fits it,
``glm(formula = am ~ hp + wt, data = mtcars, family = binomial)``, and saved with ``saveRDS``
(:func:`save_model` writes that file to object storage); that file is published as the service's model object
``carsModel``. The service's ``initCode`` defines the seed's function (it draws ``Histogram.png`` and predicts
with ``carsModel``); its ``code`` calls it with the record's inputs and leaves the result in the output
``answer``, as a published R service returns outputs. :data:`SERVICE_ARGUMENTS` is what a publish sends.
"""

from __future__ import annotations

import logging
import shutil
import subprocess
import tempfile
from pathlib import Path
from typing import Any

DATA = Path(__file__).parent / "data"
#: The records, as the seed reads them: ``read.csv("mtcars.csv")`` and ``read.csv("mtcars.tsv", sep = "\t")``.
MTCARS_CSV = DATA / "mtcars.csv"
MTCARS_TSV = DATA / "mtcars.tsv"
SERVICE_NAME = "mtService"
SERVICE_VERSION = "v1.0.0"
#: The seed's check: ``print(manualTransmission(120, 2.8)) # 0.6418125``.
CHECK_INPUTS = {"hp": 120, "wt": 2.8}
CHECK_ANSWER = 0.6418125

log = logging.getLogger(__name__)

#: Fits the seed's model and saves it where the first argument says.
FIT = """
args <- commandArgs(trailingOnly = TRUE)
carsModel <- glm(formula = am ~ hp + wt, data = mtcars, family = binomial)
saveRDS(carsModel, file = args[[1]])
"""

#: Run once per worker: the seed's prediction function, with ``carsModel`` (the model object) in scope.
INIT_CODE = """
manualTransmission <- function(hp, wt) {
  # --- Build a plot to demonstrate files in results ---
  png(file = "Histogram.png", bg = "transparent")
  hist(mtcars$hp, breaks = 10, col = "red", xlab = "Horsepower",
       main = "Histogram of Horsepower")
  dev.off()

  # --- Predict and return answer ---
  newdata <- data.frame(hp = hp, wt = wt)
  predict(carsModel, newdata, type = "response")
}
"""

#: Run per record: the inputs ``hp`` and ``wt`` are bound; the output ``answer`` is read back.
CODE = "answer <- manualTransmission(hp, wt)\n"


class RMissingError(RuntimeError):
    """R is not installed where the fitting task runs."""


def fit_model(folder: Path) -> Path:
    """Fit the seed's ``carsModel`` with R and save it as ``carsModel.rds`` in ``folder``; answer its path."""
    rscript = shutil.which("Rscript")
    if rscript is None:
        raise RMissingError(
            "Rscript is not on PATH where this task runs: install R (Debian: apt-get install r-base-core)."
        )
    path = folder / "carsModel.rds"
    run = subprocess.run(
        [rscript, "--vanilla", "-e", FIT, str(path)], capture_output=True, text=True, timeout=120
    )
    if run.returncode != 0 or not path.is_file():
        raise RuntimeError(f"Fitting carsModel in R failed (exit {run.returncode}): {run.stderr[-500:]}")
    return path


def save_model(target: Any) -> str:
    """Fit the seed's ``carsModel`` with R (:func:`fit_model`) and write the RDS file to ``target``, an
    ``ObjectStoragePath`` (a local folder or any object store); answer its URI."""
    with tempfile.TemporaryDirectory(prefix="carsModel-") as folder:
        model = fit_model(Path(folder))
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(model.read_bytes())
    return str(target)


#: The arguments of ``MLServerPublishServiceOperator`` (and of the hook's ``publish_service``) for the service,
#: but its name, version and model object.
SERVICE_ARGUMENTS: dict[str, Any] = {
    "code": CODE,
    "init_code": INIT_CODE,
    "runtime_type": "R",
    "inputs": {"hp": "numeric", "wt": "numeric"},
    "outputs": {"answer": "numeric"},
    "output_file_names": ["Histogram.png"],
    "operation_id": "manualTransmission",
    "description": "P(manual transmission) from horsepower and weight: glm(am ~ hp + wt) on mtcars, in R.",
}


def publish(hook: Any, name: str = SERVICE_NAME, version: str = SERVICE_VERSION) -> str:
    """Publish (or replace) the seed's service with a model fitted now, through ``hook``; answer ``name/version``.

    The example DAG publishes with ``MLServerPublishServiceOperator`` instead (once per content); this is for a
    script or a test that has a hook at hand.
    """
    with tempfile.TemporaryDirectory(prefix="carsModel-") as folder:
        model = fit_model(Path(folder))
        service = hook.publish_service(
            name,
            version,
            model_objects={"carsModel": model},  # RDS: the path of the file saveRDS wrote (or its bytes)
            replace=True,
            **SERVICE_ARGUMENTS,
        )
    log.info(
        "Published R web service '%s' version '%s' with model object 'carsModel'",
        service.name,
        service.version,
    )
    return f"{service.name}/{service.version}"


def check(hook: Any, name: str = SERVICE_NAME, version: str = SERVICE_VERSION) -> float:
    """Consume the service once with the seed's inputs; answer ``answer`` if it is the seed's value to 7 digits."""
    result = hook.consume(name, version, CHECK_INPUTS)
    if not result.success:
        raise RuntimeError(f"manualTransmission(120, 2.8) failed on the server: {result.error_message[:500]}")
    answer = float(result.outputs["answer"])
    if round(answer, 7) != CHECK_ANSWER:
        raise RuntimeError(f"manualTransmission(120, 2.8) = {answer!r}, not the seed's {CHECK_ANSWER}")
    log.info("manualTransmission(120, 2.8) = %.7f, the seed's value", answer)
    return answer
