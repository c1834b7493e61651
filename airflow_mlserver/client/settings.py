"""Connection settings of a Machine Learning Server client: read from connection fields, checked once.

The fields are those of an Airflow connection (host, port, schema, login, password, extras), but nothing
here imports Airflow: any object with these attributes will do (:class:`ConnectionFields`).
"""

from __future__ import annotations

import dataclasses
import math
import os
import re
import urllib.parse
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

from airflow_mlserver.client.errors import MLServerConfigError
from airflow_mlserver.client.quoting import quoted, shortened

DEFAULT_PORT = 12800
DEFAULT_TIMEOUT = 60.0
DEFAULT_MAX_RETRIES = 8
#: The longest ``timeout`` (seconds): a day, far below what a socket's timeout can hold.
MAX_TIMEOUT = 86_400.0
#: The most ``max_retries``: with the default backoff (at most 30 s a wait) about 50 minutes of retrying.
MAX_RETRIES = 100

_TRUE_TEXT = ("true", "1", "yes", "on")
_FALSE_TEXT = ("false", "0", "no", "off")
_WHOLE_TEXT = re.compile(r"^\s*[+-]?\d+\s*$")


class ConnectionFields(Protocol):
    """The fields of a connection that the settings are read from (an Airflow ``Connection`` has them)."""

    conn_id: str
    conn_type: str | None
    host: str | None
    port: int | None
    schema: str | None
    login: str | None
    password: str | None


@dataclass(frozen=True)
class ConnectionSettings:
    """Where the server is and how to authenticate, checked; secrets stay out of ``repr``.

    :param conn_id: The connection id (for messages).
    :param base_url: ``scheme://host:port[/path]`` of the server, without a trailing slash.
    :param login: The user name to log in with, if any.
    :param password: The password (or, without a login, a bearer token).
    :param access_token: A bearer token given instead of credentials.
    :param verify: TLS verification: True, False or a CA bundle path.
    :param timeout: Seconds to wait for an answer (connecting takes at most 10 s of it).
    :param max_retries: Retries of a failed request before giving up.
    """

    conn_id: str
    base_url: str
    login: str | None = None
    password: str | None = field(default=None, repr=False)
    access_token: str | None = field(default=None, repr=False)
    verify: bool | str = True
    timeout: float = DEFAULT_TIMEOUT
    max_retries: int = DEFAULT_MAX_RETRIES

    def __post_init__(self) -> None:
        """Settings built directly (not read from a connection) get the checks of ``timeout`` and ``max_retries``."""
        subject = f"Connection '{self.conn_id}':"
        object.__setattr__(self, "timeout", checked_timeout(self.timeout, f"{subject} timeout"))
        object.__setattr__(
            self, "max_retries", checked_max_retries(self.max_retries, f"{subject} max_retries")
        )

    @property
    def bearer_token(self) -> str | None:
        """The fixed token to send, when the connection gives one instead of a login."""
        if self.access_token:
            return self.access_token
        if not self.login and self.password:
            return self.password
        return None

    @property
    def secrets(self) -> tuple[str, ...]:
        """The values that must never reach a log."""
        return tuple(s for s in (self.password, self.access_token) if s)

    def with_overrides(self, timeout: Any = None, max_retries: Any = None) -> ConnectionSettings:
        """These settings with ``timeout`` and ``max_retries`` replaced where given (checked like extras)."""
        changes: dict[str, Any] = {}
        if timeout is not None:
            changes["timeout"] = checked_timeout(
                timeout, f"Connection '{self.conn_id}': the timeout override"
            )
        if max_retries is not None:
            changes["max_retries"] = checked_max_retries(
                max_retries, f"Connection '{self.conn_id}': the max_retries override"
            )
        return dataclasses.replace(self, **changes) if changes else self

    @classmethod
    def from_connection(cls, conn: ConnectionFields, extras: Mapping[str, Any]) -> ConnectionSettings:
        """Read and check the fields of ``conn``; raise :class:`MLServerConfigError` naming the bad one."""
        conn_id = conn.conn_id
        scheme = _scheme_of_conn_type(conn_id, conn.conn_type)
        schema = (conn.schema or "").strip().lower()
        if schema:
            if schema not in ("http", "https"):
                raise MLServerConfigError(
                    f"Connection '{conn_id}': schema {quoted(conn.schema)} is not a URL scheme; set it to 'http' or "
                    "'https', or leave it empty."
                )
            scheme = _agree(conn_id, scheme, schema, "schema")
        base_url = _base_url(conn_id, scheme, conn.host, conn.port)
        access_token = _extra(extras, "access_token", None)
        if access_token is not None and not isinstance(access_token, str):
            raise MLServerConfigError(f"Connection '{conn_id}': extra 'access_token' must be a string.")
        if not access_token and not conn.password:
            raise MLServerConfigError(
                f"Connection '{conn_id}' has no credentials: set login and password, or a bearer token in the "
                "'access_token' extra (or in the password, with no login)."
            )
        if conn.login and not conn.password and not access_token:
            raise MLServerConfigError(
                f"Connection '{conn_id}' has login {quoted(conn.login)} but no password: set the password."
            )
        return cls(
            conn_id=conn_id,
            base_url=base_url,
            login=conn.login or None,
            password=conn.password or None,
            access_token=access_token,
            verify=_verify(conn_id, _extra(extras, "verify", True)),
            timeout=checked_timeout(
                _extra(extras, "timeout", DEFAULT_TIMEOUT), f"Connection '{conn_id}': extra 'timeout'"
            ),
            max_retries=checked_max_retries(
                _extra(extras, "max_retries", DEFAULT_MAX_RETRIES),
                f"Connection '{conn_id}': extra 'max_retries'",
            ),
        )


def _base_url(conn_id: str, scheme: str | None, host_field: str | None, port_field: Any) -> str:
    """``scheme://host:port[/path]`` from the host field (a name, or a URL) and the port field, checked."""
    host = (host_field or "").strip()
    if not host:
        raise MLServerConfigError(
            f"Connection '{conn_id}' has no host: set it to the server's address, e.g. 'localhost' or "
            "'https://mlserver.example.com'."
        )
    with_scheme = "://" in host
    try:
        parsed = urllib.parse.urlsplit(host if with_scheme else f"//{host}")
        hostname = parsed.hostname
    except ValueError as exc:
        raise MLServerConfigError(
            f"Connection '{conn_id}': host {quoted(host)} is not valid ({shortened(str(exc))})."
        ) from None
    host_port = None
    if host_port_text := port_text(parsed.netloc):
        if problem := port_problem(host_port_text):
            raise MLServerConfigError(
                f"Connection '{conn_id}': host {quoted(host)} has port {problem[0]}, which is {problem[1]}: "
                f"{_PORT_FIX}, or leave it out of the host for the default {_DEFAULT_PORTS}."
            )
        host_port = int(host_port_text)
    if with_scheme and parsed.scheme.lower() not in ("http", "https"):
        raise MLServerConfigError(
            f"Connection '{conn_id}': host {quoted(host)} is not an http(s) address; give a host name such as "
            "'localhost' or a URL such as 'https://mlserver.example.com'."
        )
    if not hostname or (not with_scheme and parsed.path not in ("", "/")):
        raise MLServerConfigError(
            f"Connection '{conn_id}': host {quoted(host)} is not valid; give a host name such as 'localhost', "
            "or a URL such as 'https://mlserver.example.com/base'."
        )
    path = parsed.path.rstrip("/") if with_scheme else ""
    if with_scheme:
        scheme = _agree(conn_id, scheme, parsed.scheme.lower(), "host")
    port = _port(conn_id, port_field)
    if port is None:
        port = host_port
    scheme = scheme or "http"
    if port is None:
        port = DEFAULT_PORT if scheme == "http" else 443
    if ":" in hostname and not hostname.startswith("["):
        hostname = f"[{hostname}]"  # IPv6 literal
    return f"{scheme}://{hostname}:{port}{path}"


def _extra(extras: Mapping[str, Any], name: str, default: Any) -> Any:
    """An extra's value; an empty one (None or blank text, as a form leaves an unset field) is the default."""
    value = extras.get(name)
    if value is None or (isinstance(value, str) and not value.strip()):
        return default
    return value


def _scheme_of_conn_type(conn_id: str, conn_type: str | None) -> str | None:
    """``mlserver`` -> no preference; ``mlserver+https`` (a URI ``mlserver+https://...``) -> https."""
    kind = (conn_type or "mlserver").lower().replace("-", "_")
    if kind == "mlserver":
        return None
    for sep in ("+", "_"):
        base, _, scheme = kind.partition(sep)
        if base == "mlserver" and scheme in ("http", "https"):
            return scheme
    raise MLServerConfigError(
        f"Connection '{conn_id}' has type {quoted(conn_type)}: use 'mlserver' (URI mlserver://...) or "
        "'mlserver+https' (URI mlserver+https://...)."
    )


def _agree(conn_id: str, current: str | None, new: str, where: str) -> str:
    if current is not None and current != new:
        raise MLServerConfigError(
            f"Connection '{conn_id}': the {where} says {new} but the connection type or schema says {current}; "
            "make them agree."
        )
    return new


def _verify(conn_id: str, value: Any) -> bool | str:
    if isinstance(value, bool):
        return value
    if isinstance(value, str):
        text = value.strip()
        if text.lower() in _TRUE_TEXT:
            return True
        if text.lower() in _FALSE_TEXT:
            return False
        if os.path.exists(text):
            return text
        raise MLServerConfigError(
            f"Connection '{conn_id}': extra 'verify' is {quoted(value)}, which is neither true/false nor an existing "
            "CA bundle file."
        )
    raise MLServerConfigError(
        f"Connection '{conn_id}': extra 'verify' must be true, false or a CA bundle path, not {quoted(value)}."
    )


_PORT_FIX = "give a port from 1 to 65535"
_DEFAULT_PORTS = "(12800 for http, 443 for https)"


def _port(conn_id: str, value: Any) -> int | None:
    """The port field: None when empty, else a whole number from 1 to 65535 (0 is no port, not the default)."""
    if value is None or (isinstance(value, str) and not value.strip()):
        return None
    if isinstance(value, str):
        problem = port_problem(value.strip())
        if problem is None:
            return int(value)
    elif isinstance(value, bool) or not isinstance(value, int):
        problem = quoted(value), "not a whole number"
    elif 0 < value < 65536:
        return value
    else:
        problem = quoted(value), "out of range"
    raise MLServerConfigError(
        f"Connection '{conn_id}': port {problem[0]} is {problem[1]}: {_PORT_FIX}, or leave it empty for the "
        f"default {_DEFAULT_PORTS}."
    )


def port_text(netloc: str) -> str:
    """The port written after the host of a URL's ``netloc`` ('' when none), read as ``urlsplit`` reads it."""
    hostinfo = netloc.rpartition("@")[2]
    before, bracket, after = hostinfo.partition("[")
    return (after.partition("]")[2] if bracket else before).partition(":")[2]


def port_problem(text: str) -> tuple[str, str] | None:
    """None for a port from 1 to 65535 written as ``text``; else how to show it and what is wrong with it."""
    if not (text.isascii() and text.isdigit()):
        return quoted(text), "not a number"
    if len(text) > 5 or not 0 < int(text) < 65536:
        return shortened(text), "out of range"
    return None


def _number(value: Any) -> float | None:
    """``value`` (a number, or its text) as a float; None for a boolean, NaN or what is no number."""
    if isinstance(value, bool):
        return None
    try:
        number = float(value)
    except (TypeError, ValueError, OverflowError):
        return None
    return None if math.isnan(number) else number


def checked_timeout(value: Any, subject: str) -> float:
    """``value`` as a timeout in seconds: a number (or its text) above 0 and at most :data:`MAX_TIMEOUT`.

    :param subject: What the value is, opening the message: ``Connection 'ml': extra 'timeout'``.
    :raises MLServerConfigError: NaN, infinity, 0 or less, a boolean, text that is no number.
    """
    number = _number(value)
    if number is None or number <= 0:
        raise MLServerConfigError(f"{subject} must be a positive number of seconds, not {quoted(value)}.")
    if number > MAX_TIMEOUT:
        raise MLServerConfigError(
            f"{subject} must be a positive number of seconds, at most {MAX_TIMEOUT:,.0f} (a day), not "
            f"{quoted(value)}."
        )
    return number


def checked_max_retries(value: Any, subject: str) -> int:
    """``value`` as a count of retries: a whole number (or its text) from 0 to :data:`MAX_RETRIES`.

    :param subject: What the value is, opening the message: ``Connection 'ml': extra 'max_retries'``.
    :raises MLServerConfigError: a fraction, NaN, infinity, a negative number, a boolean, text that is no number.
    """
    whole: int | None = None
    if isinstance(value, int) and not isinstance(value, bool):
        whole = value
    elif isinstance(value, str):
        whole = int(value) if _WHOLE_TEXT.match(value) else None
    elif (number := _number(value)) is not None and number.is_integer():
        whole = int(number)
    if whole is None or whole < 0:
        raise MLServerConfigError(f"{subject} must be a whole number of at least 0, not {quoted(value)}.")
    if whole > MAX_RETRIES:
        raise MLServerConfigError(
            f"{subject} must be a whole number of at least 0, at most {MAX_RETRIES}, not {quoted(value)}."
        )
    return whole
