"""Publishing with model objects: each object serialized as its runtime loads it, sent through a session.

As Microsoft's Python client does (and a real server expects): create a session of the service's runtime,
upload each object to its workspace (``application/octet-stream``), take a snapshot, publish with that
snapshot id, then close the session and delete the snapshot (the published service keeps its own copy).
A Python service's objects are serialized with dill; an R service's are RDS, what R's ``saveRDS`` writes,
given as bytes or as the path of an ``.rds`` file (this module does not run R).
"""

from __future__ import annotations

import dataclasses
import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from airflow_mlserver.client.errors import MalformedResponseError, MLServerError, ModelObjectError
from airflow_mlserver.client.models import ServiceDefinition, WebService
from airflow_mlserver.client.protocol import Flow, Spec, check_segment, quote
from airflow_mlserver.client.quoting import quoted, shortened
from airflow_mlserver.client.words import first_few, noun

if TYPE_CHECKING:
    from airflow_mlserver.client.calls import Calls

#: How an RDS file starts: compressed (gzip, saveRDS's default; bzip2; xz), or a serialization header
#: (``X\n`` XDR, ``A\n`` ASCII, ``B\n`` native binary).
RDS_STARTS = (b"\x1f\x8b", b"BZh", b"\xfd7zXZ\x00", b"X\n", b"A\n", b"B\n")


def is_rds(data: bytes) -> bool:
    """Whether ``data`` starts like what R's ``saveRDS`` writes (the client checks before sending, the local
    server before keeping an R session's object)."""
    return data.startswith(RDS_STARTS)


def is_r(runtime_type: str) -> bool:
    return runtime_type.lower() == "r"


def encode_model_objects(runtime_type: str, objects: Mapping[str, Any]) -> dict[str, bytes]:
    """Each object as the bytes its runtime loads: dill for Python; RDS (bytes or an ``.rds`` path) for R."""
    encoded = {}
    for name, value in objects.items():
        check_segment(name, "Model object name", "name each object after the variable the service code uses")
        encoded[name] = _rds_bytes(name, value) if is_r(runtime_type) else _dill_bytes(name, value)
    return encoded


def _dill_bytes(name: str, value: Any) -> bytes:
    import dill

    try:
        data: bytes = dill.dumps(value)
    except Exception as exc:
        raise ModelObjectError(
            f"Model object {quoted(name)} cannot be serialized with dill ({shortened(str(exc))}): publish an object "
            "dill can pickle (plain data, a fitted model, a module-level function).",
            name,
        ) from exc
    return data


def _rds_bytes(name: str, value: Any) -> bytes:
    fix = f'write it in R with saveRDS({name}, "{name}.rds") and pass that path (or the file\'s bytes)'
    if isinstance(value, (bytes, bytearray, memoryview)):
        data, origin = bytes(value), "bytes"
    elif isinstance(value, (str, os.PathLike)):
        path = Path(value)
        try:
            data, origin = path.read_bytes(), f"bytes of file {quoted(str(path))}"
        except OSError as exc:
            raise ModelObjectError(
                f"Model object {quoted(name)} of an R service: cannot read {quoted(str(path))} "
                f"({exc.strerror or exc}): {fix}.",
                name,
            ) from exc
    else:
        raise ModelObjectError(
            f"Model object {quoted(name)} of an R service is a {type(value).__name__}, not RDS bytes or the path "
            f"of an .rds file: {fix}.",
            name,
        )
    if not is_rds(data):
        raise ModelObjectError(
            f"Model object {quoted(name)} of an R service is not RDS (the {origin} start with {data[:8]!r}): {fix}.",
            name,
        )
    return data


def publish_with_objects(
    calls: Calls,
    name: str,
    version: str | None,
    definition: ServiceDefinition,
    objects: Mapping[str, bytes],
    replace: bool,
) -> Flow[WebService]:
    """Publish ``definition`` with ``objects`` (already encoded) through a session and a snapshot.

    The session is closed and the snapshot deleted whatever happens; a failure to clean up is logged, not
    raised (the service is published, or the first error is the one worth reading).
    """
    runtime = "R" if is_r(definition.runtime_type) else "Python"
    body = json.dumps({"runtimeType": runtime}).encode()
    # A resent create (the answer was lost) leaves at worst an unused, empty session of this user.
    answer = yield from calls.auth.exchange(Spec("POST", "/sessions", f"create {runtime} session", body=body))
    session_id = _answer_id(answer.value, "sessionId", "POST /sessions")
    session = f"/sessions/{quote(session_id)}"
    snapshot_id = None
    try:
        for object_name, data in objects.items():
            what = f"upload model object {quoted(object_name)}"
            spec = Spec(
                "POST",
                f"{session}/workspace/{quote(object_name)}",
                what,
                body=data,
                content_type="application/octet-stream",
            )
            yield from calls.auth.exchange(spec)
        spec = Spec(
            "POST", f"{session}/snapshot", f"take a snapshot of session {quoted(session_id)}", body=b"{}"
        )
        answer = yield from calls.auth.exchange(spec)
        snapshot_id = _answer_id(answer.value, "snapshotId", spec.label)
        with_snapshot = dataclasses.replace(definition, snapshot_id=snapshot_id)
        service = yield from calls.publish_service(name, version, with_snapshot, replace)
    except Exception:
        yield from _clean_up(calls, session_id, snapshot_id)
        raise
    yield from _clean_up(calls, session_id, snapshot_id)
    calls.log.info(
        "Published %s with %s %s",
        _words(service),
        noun(len(objects), "model object"),
        first_few(map(quoted, objects)),
    )
    return service


def _clean_up(calls: Calls, session_id: str, snapshot_id: str | None) -> Flow[None]:
    """Close the session and delete the snapshot, as a real server expects; a failure is only logged."""
    doings = [(f"/sessions/{quote(session_id)}", f"close session {quoted(session_id)}")]
    if snapshot_id is not None:
        doings.append((f"/snapshots/{quote(snapshot_id)}", f"delete snapshot {quoted(snapshot_id)}"))
    for path, what in doings:
        try:
            yield from calls.auth.exchange(Spec("DELETE", path, what))
        except MLServerError as exc:
            calls.log.warning("Could not %s after publishing (%s); it stays on the server", what, exc)


def _answer_id(value: Any, key: str, label: str) -> str:
    found = value.get(key) if isinstance(value, dict) else None
    if not isinstance(found, str) or not found:
        raise MalformedResponseError(
            f"The server's answer to {label} is {quoted(value)}, without a {key!r} string. The server does not "
            "follow the Machine Learning Server API."
        )
    check_segment(found, f"The server's {key}", "the server answered an id that cannot be used in a path")
    return found


def _words(service: WebService) -> str:
    return f"web service {quoted(service.name)} version {quoted(service.version)}"
