"""The services operators' decisions, each a function of data: no hook, no store, no clock, no Airflow.

- :func:`content_digest`: what a publish sends, as one short digest (SHA-256 of the code, init code, inputs,
  outputs, output file names, operation id, runtime and each model object's bytes);
- :func:`described`, :func:`digest_in`: the digest kept where the server keeps it and gives it back, at the end
  of the service's description as ``[content sha256:<16 hex digits>]`` (the server never gives the code back);
- :func:`newest_first`: the order of a service's versions, newest first;
- :func:`decide_publish`: publish, reuse the version there, replace it, or refuse;
- :func:`versions_to_delete`: which versions ``keep_newest`` deletes.
"""

from __future__ import annotations

import enum
import hashlib
import json
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime

from airflow_mlserver.client.models import WebService
from airflow_mlserver.client.quoting import quoted
from airflow_mlserver.client.words import first_few, plural

#: Hex digits of the SHA-256 kept in the description (64 bits: two different contents never meet).
DIGEST_LENGTH = 16
#: How ``if_exists`` treats a version that exists: same content is always reused; other content (or a version
#: that carries no digest) fails the task, replaces the version, or is reused as it is.
IF_EXISTS = ("fail_if_different", "replace", "skip")
_MARKER = re.compile(rf"\s*\[content sha256:([0-9a-f]{{{DIGEST_LENGTH}}})\]\s*\Z")
_OLDEST = datetime.min.replace(tzinfo=UTC)


def content_digest(
    *,
    code: str,
    init_code: str | None,
    inputs: Mapping[str, str],
    outputs: Mapping[str, str],
    output_file_names: Sequence[str],
    operation_id: str | None,
    runtime_type: str,
    model_objects: Mapping[str, bytes],
) -> str:
    """The first :data:`DIGEST_LENGTH` hex digits of the SHA-256 of what a publish sends (not its description).

    Inputs and outputs count in their order (records are laid out in it); model objects by name, each by the
    SHA-256 of its bytes, whatever the order they are given in.
    """
    content = {
        "runtime_type": runtime_type.lower(),
        "code": code,
        "init_code": init_code or "",
        "inputs": [[name, kind] for name, kind in inputs.items()],
        "outputs": [[name, kind] for name, kind in outputs.items()],
        "output_file_names": list(output_file_names),
        "operation_id": operation_id or "",
        "model_objects": {name: hashlib.sha256(data).hexdigest() for name, data in model_objects.items()},
    }
    text = json.dumps(content, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(text.encode()).hexdigest()[:DIGEST_LENGTH]


def marker(digest: str) -> str:
    return f"[content sha256:{digest}]"


def described(description: str | None, digest: str) -> str:
    """The description to publish: the user's (an earlier marker at its end taken off), then the marker."""
    text = _MARKER.sub("", description or "").rstrip()
    return f"{text} {marker(digest)}" if text else marker(digest)


def digest_in(description: str | None) -> str | None:
    """The digest at the end of a published version's description, or None when it carries none."""
    found = _MARKER.search(description or "")
    return found.group(1) if found else None


def creation_instant(text: str | None) -> datetime | None:
    """A version's ``creationTime`` (ISO 8601; without a zone it is UTC), or None when missing or unreadable."""
    if not text:
        return None
    try:
        moment = datetime.fromisoformat(text.strip())
    except ValueError:
        return None
    return moment if moment.tzinfo is not None else moment.replace(tzinfo=UTC)


def newest_first(versions: Sequence[WebService]) -> list[WebService]:
    """``versions`` newest first: by the server's creation time, then by the order the server lists them in.

    The server lists a service's versions oldest first (the client takes the last as the latest), so among
    versions of the same creation time (it has whole seconds) a later one in the list is the newer. A version
    without a readable creation time counts as older than every dated one.
    """
    ranked = sorted(
        enumerate(versions),
        key=lambda item: (creation_instant(item[1].creation_time) or _OLDEST, item[0]),
        reverse=True,
    )
    return [service for _, service in ranked]


class Action(enum.Enum):
    """What the publish operator does."""

    PUBLISH = "publish"  # a new version: the one asked for, or one the server picks
    REUSE = "reuse"  # nothing: the version there is the one to answer
    REPLACE = "replace"  # update the version there (``replace=True``)
    CONFLICT = "conflict"  # nothing, and fail: the version there has other content


@dataclass(frozen=True)
class PublishDecision:
    """What to do, and why.

    :param action: The action.
    :param version: The version to publish (None: the server picks one), reuse or replace.
    :param found: The digest the version there carries (None when there is none, or it carries none).
    :param reason: A sentence for the log; for a conflict, the error's message.
    """

    action: Action
    version: str | None
    found: str | None
    reason: str


def decide_publish(
    name: str, version: str | None, digest: str, versions: Sequence[WebService], if_exists: str
) -> PublishDecision:
    """Publish, reuse, replace or refuse, from the versions the server lists (any service's; ``name``'s count).

    With a version: absent, it is published; there with the same digest, it is reused; there with another
    digest or none, ``if_exists`` decides (``fail_if_different``: refuse; ``replace``: replace it; ``skip``:
    reuse it as it is). With ``version=None`` the server picks a new version, unless the newest version (see
    :func:`newest_first`) has the same digest: that one is reused (an older version of the same content is not,
    so that the newest, which a consumer asking for the latest gets, is always this content).
    """
    mine = [service for service in versions if service.name == name]
    service_words = f"web service {quoted(name)}"
    if version is None:
        newest = next(iter(newest_first(mine)), None)
        if newest is None:
            return PublishDecision(Action.PUBLISH, None, None, f"{service_words} has no version yet")
        found = digest_in(newest.description)
        words = f"its newest version {quoted(newest.version)}, of {plural(len(mine), 'version')}"
        if found == digest:
            return PublishDecision(
                Action.REUSE, newest.version, found, f"{words}, has content sha256:{digest}"
            )
        return PublishDecision(Action.PUBLISH, None, found, f"{words}, has {_content(found)}")
    existing = next((service for service in mine if service.version == version), None)
    words = f"{service_words} version {quoted(version)}"
    if existing is None:
        return PublishDecision(Action.PUBLISH, version, None, f"{words} does not exist")
    found = digest_in(existing.description)
    if found == digest:
        return PublishDecision(Action.REUSE, version, found, f"{words} exists with content sha256:{digest}")
    there = f"{words} exists with {_content(found)}, not this task's content sha256:{digest}"
    if if_exists == "replace":
        return PublishDecision(Action.REPLACE, version, found, f"{there}; replacing it (if_exists='replace')")
    if if_exists == "skip":
        return PublishDecision(
            Action.REUSE, version, found, f"{there}; keeping it as it is (if_exists='skip')"
        )
    return PublishDecision(
        Action.CONFLICT,
        version,
        found,
        f"{there[0].upper()}{there[1:]}, so nothing was published. Give another service_version for this "
        "content, or if_exists='replace' to replace that version (if_exists='skip' keeps it as it is).",
    )


def _content(found: str | None) -> str:
    if found is None:
        return "content of unknown digest (its description carries no [content sha256:...] marker)"
    return f"content sha256:{found}"


def versions_to_delete(name: str, versions: Sequence[WebService], keep_newest: int) -> list[str]:
    """The versions of ``name`` that keeping the newest ``keep_newest`` (see :func:`newest_first`) deletes, oldest
    first (so that a task stopped half-way has kept the newest)."""
    ordered = newest_first([service for service in versions if service.name == name])
    return [service.version for service in reversed(ordered[keep_newest:])]


def versions_words(versions: Sequence[str]) -> str:
    """``version '1'`` or ``versions '1', '2' and '3'``, for the log."""
    return f"{'version' if len(versions) == 1 else 'versions'} {first_few(map(quoted, versions))}"
