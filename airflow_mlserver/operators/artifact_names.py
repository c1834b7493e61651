"""Names, paths and selections the artifacts operator accepts, checked before anything is written.

An artifact name comes from the server and becomes one segment of a destination path, so a name that could
escape ``dest`` (a path separator, ``..``, a drive prefix, control characters, an overlong name) is refused.
The same rule checks every segment a path template renders. Here too: which records (``indexes``) and which
files (``file_names``) to copy.
"""

from __future__ import annotations

import fnmatch
import re
import unicodedata
from collections.abc import Callable, Iterable
from typing import Any

from airflow_mlserver.exceptions import ArtifactsConfigError, UnsafeArtifactNameError

#: Placeholders a path template may use.
TEMPLATE_KEYS = ("execution_id", "index", "file_name", "service_name", "service_version")
#: Longest artifact name accepted, in UTF-8 bytes (most file systems and stores allow 255 per segment).
MAX_NAME_BYTES = 255

_GLOB_CHARS = frozenset("*?[")
_DRIVE = re.compile(r"^[A-Za-z]:")


def check_artifact_name(name: Any, what: str = "Artifact name") -> str:
    """``name`` if it is a plain file name that is safe to use as one segment of a destination path.

    Refused (:class:`UnsafeArtifactNameError`): non-strings, empty names, ``.`` and ``..``, path separators
    (``/`` or ``\\``), drive prefixes (``C:``), control characters, and names longer than 255 UTF-8 bytes.
    """
    problem = _name_problem(name)
    if problem:
        raise UnsafeArtifactNameError(
            f"{what} {name!r} is refused: {problem}. Nothing was written for it. Artifact names must be plain "
            "file names; fix the service's outputFileNames (or the file_names argument)."
        )
    return str(name)


def _name_problem(name: Any) -> str | None:
    if not isinstance(name, str):
        return f"it is a {type(name).__name__}, not a string"
    if not name:
        return "it is empty"
    if name in (".", ".."):
        return "it names a directory ('.' or '..'), which could escape the destination"
    if "/" in name or "\\" in name:
        return "it contains a path separator, which could place it outside its folder or the destination"
    if _DRIVE.match(name):
        return "it starts with a drive letter, which some systems read as an absolute path"
    for ch in name:
        category = unicodedata.category(ch)
        if category in ("Cc", "Cs"):
            return f"it contains the control character {ch!r}, which stores reject or mangle"
    try:
        encoded = name.encode("utf-8")
    except UnicodeEncodeError:  # pragma: no cover - lone surrogates are caught above
        return "it cannot be encoded as UTF-8"
    if len(encoded) > MAX_NAME_BYTES:
        return f"it is {len(encoded)} bytes long; stores accept at most {MAX_NAME_BYTES}"
    if name != name.strip():
        return "it starts or ends with white space, which stores strip or reject"
    return None


def render_relative_path(template: str, **fields: Any) -> str:
    """The destination path below ``dest`` that ``template`` gives; refused when it could escape ``dest``."""
    try:
        rel = template.format(**fields)
    except (KeyError, IndexError, ValueError) as exc:
        raise ArtifactsConfigError(
            f"Path template {template!r} cannot be filled ({type(exc).__name__}: {exc}). Use only the "
            f"placeholders {', '.join('{' + k + '}' for k in TEMPLATE_KEYS)}."
        ) from None
    if rel.startswith("/") or "\\" in rel:
        raise UnsafeArtifactNameError(
            f"The destination path {rel!r} (from template {template!r}) is absolute or has a backslash; it is "
            "refused so that nothing is written outside dest."
        )
    for segment in rel.split("/"):
        problem = _name_problem(segment)
        if problem:
            raise UnsafeArtifactNameError(
                f"The destination path {rel!r} (from template {template!r}) is refused: its segment "
                f"{segment!r} is unsafe ({problem}). Nothing is written outside dest."
            )
    return rel


def parse_indexes(value: Any, total: int) -> list[int]:
    """Record indexes (0-based) from ``None`` (all), an int, a range, a list, or text like ``"0-9,15"``."""
    if value is None:
        return list(range(total))
    items: list[int] = []
    if isinstance(value, bool):
        raise ArtifactsConfigError(f"indexes must be whole numbers, not {value!r}.")
    if isinstance(value, int):
        items = [value]
    elif isinstance(value, range):
        items = list(value)
    elif isinstance(value, str):
        text = value.strip().strip("[]")
        for part in filter(None, (p.strip() for p in text.split(","))):
            low, sep, high = part.partition("-")
            try:
                if sep:
                    items.extend(range(int(low), int(high) + 1))
                else:
                    items.append(int(part))
            except ValueError:
                raise ArtifactsConfigError(
                    f"indexes {value!r} cannot be read: write whole numbers and ranges like '0-9,15'."
                ) from None
    elif isinstance(value, Iterable):
        for item in value:
            if isinstance(item, bool) or not isinstance(item, int):
                raise ArtifactsConfigError(f"indexes must be whole numbers; {item!r} is not.")
            items.append(item)
    else:
        raise ArtifactsConfigError(
            f"indexes must be None (all records), a list or range of whole numbers, or text like '0-9,15'; "
            f"not {type(value).__name__}."
        )
    bad = [i for i in items if not 0 <= i < total]
    if bad:
        raise ArtifactsConfigError(
            f"Record index {bad[0]} is out of range: the execution has {total} records, indexed 0 to "
            f"{total - 1} (indexes count from 0)."
        )
    return sorted(set(items))


def compile_file_filter(file_names: Any) -> Callable[[str], bool]:
    """A predicate for artifact names from ``None`` (all) or names and globs (``*.csv``)."""
    if file_names is None:
        return lambda _name: True
    patterns = [file_names] if isinstance(file_names, str) else list(file_names)
    literals: set[str] = set()
    globs: list[str] = []
    for pattern in patterns:
        if not isinstance(pattern, str) or not pattern:
            raise ArtifactsConfigError(f"file_names must be non-empty names or globs, not {pattern!r}.")
        if _GLOB_CHARS & set(pattern):
            if "/" in pattern or "\\" in pattern:
                check_artifact_name(pattern, "File name pattern")
            globs.append(pattern)
        else:
            literals.add(check_artifact_name(pattern, "File name"))

    def accept(name: str) -> bool:
        return name in literals or any(fnmatch.fnmatchcase(name, g) for g in globs)

    return accept


def static_prefix(template: str, fields: dict[str, Any]) -> str:
    """The part of the destination paths that is the same for every artifact (a folder, maybe empty)."""
    cut = min((p for p in (template.find("{index}"), template.find("{file_name}")) if p >= 0), default=0)
    head = template[:cut].rsplit("/", 1)[0] if "/" in template[:cut] else ""
    return head.format(**fields) if head else ""
