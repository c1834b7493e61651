"""What a publish sends, read where the DAG says: code and model objects from object storage or from the task.

Files are read through :class:`~airflow.sdk.ObjectStoragePath` (``file://``, ``s3://``, ... with the store's
Airflow connection). Model objects come out as two mappings: what the hook publishes (a Python service's
objects, an R service's RDS bytes) and the bytes the content digest is made of.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from airflow.sdk import ObjectStoragePath

from airflow_mlserver.client.publishing import encode_model_objects, is_r
from airflow_mlserver.client.quoting import quoted, shortened
from airflow_mlserver.exceptions import ModelObjectError, ServiceCodeArgumentError, ServiceModelArgumentError


def storage_path(path: Any, conn_id: str | None) -> ObjectStoragePath:
    if isinstance(path, ObjectStoragePath):
        return path
    return ObjectStoragePath(str(path), conn_id=conn_id) if conn_id else ObjectStoragePath(str(path))


def _read(path: Any, conn_id: str | None) -> bytes:
    """The file's bytes; raises OSError (or the store's error) with its reason."""
    data: bytes = storage_path(path, conn_id).read_bytes()
    return data


def read_code(argument: str, path: Any, conn_id: str | None) -> str:
    """A code file's text (UTF-8, a byte order mark dropped)."""
    try:
        data = _read(path, conn_id)
    except Exception as exc:
        raise ServiceCodeArgumentError(
            argument, str(path), f"give the path of a readable file (reading it failed: {_reason(exc)})"
        ) from exc
    try:
        code = data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise ServiceCodeArgumentError(
            argument, str(path), f"give a file of UTF-8 text (the byte at offset {exc.start:,} is not UTF-8)"
        ) from None
    if not code.strip():
        raise ServiceCodeArgumentError(argument, str(path), "give a file that holds the code (it is empty)")
    return code


def _reason(exc: Exception) -> str:
    return shortened(f"{type(exc).__name__}: {exc}")


@dataclass(frozen=True)
class ModelObjects:
    """A publish's model objects.

    :param to_publish: What the hook gets, by variable name (objects for Python, RDS bytes for R).
    :param digested: The bytes each counts with in the content digest (a file's own bytes; an object's as dill
        serializes it).
    """

    to_publish: dict[str, Any]
    digested: dict[str, bytes]


def model_objects(
    runtime_type: str, objects: Mapping[str, Any] | None, paths: Mapping[str, Any] | None, conn_id: str | None
) -> ModelObjects:
    """The model objects given as objects (``objects``) and as files (``paths``, read now)."""
    to_publish: dict[str, Any] = {}
    digested: dict[str, bytes] = {}
    if objects:
        encoded = encode_model_objects(runtime_type, objects)  # dill, or RDS checked: ModelObjectError
        digested.update(encoded)
        to_publish.update(encoded if is_r(runtime_type) else objects)
    for name, path in (paths or {}).items():
        try:
            data = _read(path, conn_id)
        except Exception as exc:
            raise ServiceModelArgumentError(
                f"model_paths[{name!r}]",
                str(path),
                f"give the path of a readable file (reading it failed: {_reason(exc)})",
            ) from exc
        digested[name] = data
        to_publish[name] = data if is_r(runtime_type) else _unpickled(name, path, data)
    if is_r(runtime_type):
        encode_model_objects(runtime_type, {n: to_publish[n] for n in paths or {}})  # each file is RDS
    return ModelObjects(to_publish, digested)


def _unpickled(name: str, path: Any, data: bytes) -> Any:
    """A Python service's object from the bytes pickle or dill wrote (the hook serializes it again with dill)."""
    import dill

    try:
        return dill.loads(data)
    except Exception as exc:
        raise ModelObjectError(
            f"Model object {quoted(name)} of a Python service: the file {quoted(str(path))} does not unpickle with "
            f"dill ({_reason(exc)}): give a file that pickle.dump or dill.dump wrote (or, for an R model saved with "
            "saveRDS, publish with runtime_type='R').",
            name,
        ) from exc
