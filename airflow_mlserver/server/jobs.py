"""What every execution is built from, request-response or batch: the record check, the worker job, the answer.

A job is what a worker process needs to run one execution of a service (see ``runtimes.worker.Worker.run``); a
batch sends a group of records with one job as their service part (``runtimes.protocol.Group``). A worker's
result becomes the contract's consume answer (section 3, :func:`answer`), which is also each record's result in
a batch (section 4).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from airflow_mlserver.client.quoting import quoted, shortened
from airflow_mlserver.client.words import first_few, noun
from airflow_mlserver.server import runtimes
from airflow_mlserver.server.errors import bad_request
from airflow_mlserver.server.runtimes.protocol import Job, answer
from airflow_mlserver.server.store import Store


def check_record(service: dict[str, Any], record: Any, where: str) -> None:
    """Refuse a record that is not an object or lacks a declared input (400 naming both)."""
    if not isinstance(record, dict):
        raise bad_request(f"{where} must be a JSON object of inputs, not {type(record).__name__}.")
    declared = [p["name"] for p in service.get("inputParameterDefinitions", [])]
    if len(record) == len(declared) and all(n in record for n in declared):
        return  # every declared input, nothing else (the common case: a batch checks every record)
    known = f"(declared: {shortened(', '.join(declared)) or 'none'})"
    missing = [n for n in declared if n not in record]
    if missing:
        raise bad_request(
            f"{where} is missing the declared {noun(len(missing), 'input')} {_names(missing)} of service "
            f"{quoted(service['name'])} version {quoted(service['version'])} {known}."
        )
    unknown = [n for n in record if n not in declared]
    if unknown:
        raise bad_request(
            f"{where} has {noun(len(unknown), 'input')} {_names(unknown)} that service {quoted(service['name'])} "
            f"version {quoted(service['version'])} does not declare {known}."
        )


_COMPACT = json.JSONEncoder(separators=(",", ":"))


def record_texts(service: dict[str, Any], records: list[Any]) -> list[str]:
    """Check a batch's records (a 400 names the first bad one) and answer each as the compact JSON text stored.

    One pass for the whole batch: the declared inputs are read once, and a record's place is put into words only
    when it is wrong.
    """
    declared = {p["name"] for p in service.get("inputParameterDefinitions", [])}
    texts = []
    encode = _COMPACT.encode
    for i, record in enumerate(records):
        if type(record) is not dict or record.keys() != declared:
            check_record(service, record, f"Record {i}")
        texts.append(encode(record))
    return texts


def _names(names: list[str]) -> str:
    """Up to five names, each quoted (cut if long), and how many more."""
    return first_few(map(quoted, names), shown=5)


def build_job(
    store: Store,
    service: dict[str, Any],
    revision: str,
    inputs: dict[str, Any],
    workdir: Path | None = None,
) -> Job:
    """What a worker needs to run one execution of ``service`` (see ``runtimes.worker.Worker.run``).

    Without ``inputs`` and ``workdir`` (``{}`` and None) it is the service part of a batch's groups.
    """
    name, version = service["name"], service["version"]
    return Job(
        key=f"{name}\x00{version}\x00{revision}",
        code=service["code"],
        init_code=service.get("initCode"),
        objects_dir=str(store.service_dir(name, version) / "objects"),
        scratch_dir=str(store.data_dir / "scratch" / name / version),
        inputs=inputs,
        input_types=[(p["name"], p["type"]) for p in service.get("inputParameterDefinitions", [])],
        output_names=[p["name"] for p in service.get("outputParameterDefinitions", [])],
        output_files=service.get("outputFileNames", []),
        workdir="" if workdir is None else str(workdir),
        runtime_type=runtimes.stored(service).name,
    )


__all__ = ["answer", "build_job", "check_record"]
