"""Names, paths and selections the artifacts operator accepts, checked before anything is written.

An artifact name comes from the server and becomes one segment of a destination path, so a name that could
escape ``dest`` (a path separator, ``..``, a drive prefix, control characters, an overlong name) is refused.
The same rule checks every segment a path template renders. Here too: which records (``indexes``) and which
files (``file_names``) to copy. The ``*_check`` functions are the operator's argument checks
(:mod:`~airflow_mlserver.operators.arguments`): they run where the task is written, or right after a
template renders, and raise :class:`~airflow_mlserver.exceptions.OperatorArgumentError`.
"""

from __future__ import annotations

import fnmatch
import numbers
import re
import string
import unicodedata
from collections.abc import Callable, Collection, Iterable, Mapping
from typing import Any

from airflow_mlserver.client.quoting import quoted
from airflow_mlserver.client.words import plural
from airflow_mlserver.exceptions import ArtifactsConfigError, OperatorArgumentError, UnsafeArtifactNameError

#: Placeholders a path template may use: the record's execution and its index there, its number in the task
#: (as in the results file), the artifact's name, the service.
TEMPLATE_KEYS = ("execution_id", "index", "record", "file_name", "service_name", "service_version")
#: Placeholders that differ from one artifact to the next (the others are the same for one execution).
PER_ARTIFACT_KEYS = ("index", "record", "file_name")
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
        return f"it is {plural(len(encoded), 'byte')} long; stores accept at most {MAX_NAME_BYTES}"
    if name != name.strip():
        return "it starts or ends with white space, which stores strip or reject"
    return None


def _path_problem(rel: str) -> str | None:
    """Why the relative path ``rel`` could escape (or break) ``dest``; None when it is safe."""
    if rel.startswith("/") or "\\" in rel:
        return "it is absolute or has a backslash"
    for segment in rel.split("/"):
        problem = _name_problem(segment)
        if problem:
            return f"its segment {quoted(segment)} is unsafe ({problem})"
    return None


def render_relative_path(template: str, **fields: Any) -> str:
    """The destination path below ``dest`` that ``template`` gives; refused when it could escape ``dest``.

    The template itself was checked where it was written (:func:`path_template_check`); what can still be
    refused here comes from the values (an execution id, an artifact name).
    """
    rel = template.format(**fields)
    problem = _path_problem(rel)
    if problem:
        raise UnsafeArtifactNameError(
            f"The destination path {quoted(rel)} (from template {quoted(template)}) is refused: {problem}. "
            "Nothing is written outside dest."
        )
    return rel


#: Values a template is tried with where it is written: any value of the right type must fill it.
_SAMPLE = {
    "execution_id": "e",
    "index": 0,
    "record": 0,
    "file_name": "f",
    "service_name": "s",
    "service_version": "1",
}


def _placeholders(argument: str, template: Any, allowed: tuple[str, ...]) -> list[str]:
    """The placeholders of a path template, once it is known to fill (with sample values) into a safe path."""
    listed = ", ".join("{" + k + "}" for k in allowed)
    if not isinstance(template, str) or not template.strip():
        raise OperatorArgumentError(
            argument, template, f"give a path below dest, with placeholders among {listed}"
        )
    try:
        fields = [field for _, field, _, _ in string.Formatter().parse(template) if field is not None]
    except ValueError as exc:
        raise OperatorArgumentError(
            argument, template, f"write each placeholder as {{name}} and a literal brace twice ({exc})"
        ) from None
    unknown = [f for f in fields if f not in allowed]
    if unknown:
        raise OperatorArgumentError(
            argument, template, f"use only the placeholders {listed} ({{{unknown[0]}}} is not one)"
        )
    try:
        rel = template.format(**_SAMPLE)
    except (ValueError, TypeError) as exc:
        raise OperatorArgumentError(
            argument,
            template,
            f"give format specs that fit the values ({exc}); {{index}} and {{record}} are "
            "whole numbers, the others text",
        ) from None
    problem = _path_problem(rel)
    if problem:
        raise OperatorArgumentError(
            argument,
            template,
            f"give a relative path of plain names below dest (filled in, {problem})",
        )
    return fields


def path_template_check(name: str, template: Any) -> Any:
    """``path_template``: a safe relative path with ``{file_name}``, from the placeholders of :data:`TEMPLATE_KEYS`."""
    if "file_name" not in _placeholders(name, template, TEMPLATE_KEYS):
        raise OperatorArgumentError(
            name,
            template,
            "include {file_name}: without it, every artifact of a record lands on one path (e.g. "
            "'{record}/{file_name}')",
        )
    return template


def manifest_template_check(one_execution: bool) -> Callable[[str, Any], Any]:
    """``manifest_template``: a safe relative path; ``{execution_id}`` only where there is one execution."""
    allowed = ("execution_id", "service_name", "service_version")[0 if one_execution else 1 :]

    def check(name: str, template: Any) -> Any:
        _placeholders(name, template, allowed)
        return template

    return check


def distinguishes_executions(template: str) -> bool:
    """Whether ``template`` sends records of different executions to different paths (or names no record)."""
    fields = {field for _, field, _, _ in string.Formatter().parse(template) if field}
    return "index" not in fields or bool(fields & {"record", "execution_id"})


#: A path segment of a template: its parts in order, each a literal (text, None) or a placeholder ("", name).
_Segment = list[tuple[str, str | None]]


def _segments(template: str) -> list[_Segment] | None:
    """The template's path segments; None when a placeholder has a format spec or conversion (or a brace is
    escaped), since its value then cannot be read back from the path."""
    segments: list[_Segment] = [[]]
    for literal, field, spec, conversion in string.Formatter().parse(template):
        if "{" in literal or "}" in literal:
            return None
        *heads, tail = literal.split("/")
        for head in heads:
            if head:
                segments[-1].append((head, None))
            segments.append([])
        if tail:
            segments[-1].append((tail, None))
        if field is not None:
            if spec or conversion:
                return None
            segments[-1].append(("", field))
    return segments


def places_apart(template: str, one_execution: bool) -> bool:
    """Whether ``template`` provably sends two different artifacts (record, file name) to two paths.

    So when its last segment is exactly ``{file_name}`` and one whole segment is ``{record}``, or ``{index}``
    with one execution or beside a whole ``{execution_id}`` segment: each of those segments reads back as
    one value. The artifacts operator then copies each record's artifacts as soon as they are listed; any
    other template is checked for collisions over every record before the first copy.
    """
    segments = _segments(template)
    if not segments or segments[-1] != [("", "file_name")]:
        return False
    whole = {seg[0][1] for seg in segments if len(seg) == 1 and seg[0][1] is not None}
    return "record" in whole or ("index" in whole and (one_execution or "execution_id" in whole))


def may_render_to(template: str, rel: str) -> bool:
    """Whether some values could fill ``template`` into the path ``rel`` (numbers for ``{index}``/``{record}``)."""
    segments = _segments(template)
    if segments is None:
        return True  # cannot tell: say it might
    pattern = "/".join(
        "".join(
            re.escape(literal) if field is None else ("[0-9]+" if field in ("index", "record") else "[^/]+")
            for literal, field in seg
        )
        for seg in segments
    )
    return re.fullmatch(pattern, rel) is not None


def _record_ranges(value: Any, argument: str) -> list[range]:
    """The record numbers ``indexes`` names, as ranges (never expanded here: ``'0-999999999'`` stays cheap).

    Refused (:class:`~airflow_mlserver.exceptions.OperatorArgumentError`): what cannot be read, a negative
    number, a range written backwards or selecting nothing, and an empty text. An empty list selects nothing.
    """
    fix = (
        "give None for every record, record numbers (0-based, as in the results file) as a list or a range, "
        "or text such as '0-9,15'"
    )
    if isinstance(value, str):
        text = value.strip()
        if text == "[]":  # an empty list, as a template renders it
            return []
        parts = [p.strip() for p in text.strip("[]").split(",")]
        if not all(parts):
            raise OperatorArgumentError(argument, value, f"{fix} (an empty part selects nothing)")
        ranges = []
        for part in parts:
            low, sep, high = part.partition("-")
            try:
                first, last = (int(low), int(high)) if sep else (int(part), int(part))
            except ValueError:
                raise OperatorArgumentError(argument, value, f"{fix} ({part!r} is not one)") from None
            if first > last:
                raise OperatorArgumentError(
                    argument,
                    value,
                    f"write the range {part!r} low to high ('{last}-{first}'): backwards it selects nothing",
                )
            ranges.append(range(first, last + 1))
        return ranges
    if isinstance(value, range):
        if value.step < 0 or not value:
            raise OperatorArgumentError(
                argument, value, "give a range that selects records, low to high: range(low, high + 1)"
            )
        return [value]
    single = isinstance(value, numbers.Integral) and not isinstance(value, bool)
    if not single and (not isinstance(value, Collection) or isinstance(value, bytes | Mapping)):
        raise OperatorArgumentError(argument, value, fix)
    ranges = []
    for item in [value] if single else value:
        if isinstance(item, bool) or not isinstance(item, numbers.Integral) or item < 0:
            raise OperatorArgumentError(argument, value, f"{fix} ({quoted(item)} is not a record number)")
        ranges.append(range(int(item), int(item) + 1))
    return ranges


def indexes_check(name: str, value: Any) -> Any:
    """``indexes``: readable record numbers (whether the executions have them is known at run time only)."""
    if value is not None:
        _record_ranges(value, name)
    return value


def select_records(value: Any, total: int) -> list[int]:
    """The records ``indexes`` selects among ``total``, sorted (every record for None)."""
    if value is None:
        return list(range(total))
    ranges = _record_ranges(value, "indexes")
    highest = max((r[-1] for r in ranges), default=-1)
    if highest >= total:
        raise ArtifactsConfigError(
            f"indexes selects record {highest:,}, but the executions have {plural(total, 'record')}, numbered 0 to "
            f"{total - 1:,} (as in the results file): select records below {total:,}."
        )
    return sorted(set().union(*ranges))


def compile_file_filter(file_names: Any, argument: str = "file_names") -> Callable[[str], bool]:
    """A predicate for artifact names from ``None`` (all) or names and globs (``*.csv``)."""
    if file_names is None:
        return lambda _name: True
    fix = "give None for every file, or file names and globs ('*.csv') without '/' or '\\'"
    if isinstance(file_names, str):
        patterns: list[Any] = [file_names]
    elif isinstance(file_names, Iterable) and not isinstance(file_names, bytes | dict):
        patterns = list(file_names)
    else:
        raise OperatorArgumentError(argument, file_names, fix)
    if not patterns:
        raise OperatorArgumentError(argument, file_names, f"{fix} (an empty list selects nothing)")
    literals: set[str] = set()
    globs: list[str] = []
    for pattern in patterns:
        problem = _name_problem(pattern)
        if problem:
            raise OperatorArgumentError(argument, file_names, f"{fix} ({quoted(pattern)}: {problem})")
        if _GLOB_CHARS & set(pattern):
            globs.append(pattern)
        else:
            literals.add(pattern)

    def accept(name: str) -> bool:
        return name in literals or any(fnmatch.fnmatchcase(name, g) for g in globs)

    return accept


def file_names_check(name: str, value: Any) -> Any:
    """``file_names``: None, or names and globs that are plain file names."""
    compile_file_filter(value, name)
    return value


def static_prefix(template: str, fields: dict[str, Any]) -> str:
    """The folder below ``dest`` that holds every artifact ``template`` places for ``fields`` (maybe empty).

    ``fields`` hold the values that are the same for every artifact (an execution's id, the service); the
    prefix ends before the first placeholder of :data:`PER_ARTIFACT_KEYS`.
    """
    head = ""
    for literal, field, spec, conversion in string.Formatter().parse(template):
        head += literal.replace("{", "{{").replace("}", "}}")
        if field is None:
            continue
        if field in PER_ARTIFACT_KEYS:
            break
        head += "{" + field + (f"!{conversion}" if conversion else "") + (f":{spec}" if spec else "") + "}"
    folder = head.rsplit("/", 1)[0] if "/" in head else ""
    return folder.format(**fields) if folder else ""
