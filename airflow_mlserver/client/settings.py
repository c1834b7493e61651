"""Connection settings of a Machine Learning Server client: read from connection fields, checked once.

The fields are those of an Airflow connection (host, port, schema, login, password, extras), but nothing
here imports Airflow: any object with these attributes will do (:class:`ConnectionFields`).
"""

from __future__ import annotations

import dataclasses
import os
import urllib.parse
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

from airflow_mlserver.client.errors import MLServerConfigError
from airflow_mlserver.client.quoting import quoted, shortened

DEFAULT_PORT = 12800
DEFAULT_TIMEOUT = 60.0
DEFAULT_MAX_RETRIES = 8

_TRUE_TEXT = ("true", "1", "yes", "on")
_FALSE_TEXT = ("false", "0", "no", "off")


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
            changes["timeout"] = _positive(self.conn_id, "timeout", timeout, float)
        if max_retries is not None:
            changes["max_retries"] = int(_positive(self.conn_id, "max_retries", max_retries, int, 0))
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
        host = (conn.host or "").strip()
        if not host:
            raise MLServerConfigError(
                f"Connection '{conn_id}' has no host: set it to the server's address, e.g. 'localhost' or "
                "'https://mlserver.example.com'."
            )
        with_scheme = "://" in host
        try:
            parsed = urllib.parse.urlsplit(host if with_scheme else f"//{host}")
            hostname, host_port = parsed.hostname, parsed.port
        except ValueError as exc:
            raise MLServerConfigError(
                f"Connection '{conn_id}': host {quoted(host)} is not valid ({shortened(str(exc))})."
            ) from None
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
        port = conn.port or host_port
        if port is not None and not 0 < int(port) < 65536:
            raise MLServerConfigError(f"Connection '{conn_id}': port {port} is out of range (1 to 65535).")
        scheme = scheme or "http"
        if port is None:
            port = DEFAULT_PORT if scheme == "http" else 443
        if ":" in hostname and not hostname.startswith("["):
            hostname = f"[{hostname}]"  # IPv6 literal
        base_url = f"{scheme}://{hostname}:{port}{path}"
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
            timeout=_positive(conn_id, "timeout", _extra(extras, "timeout", DEFAULT_TIMEOUT), float),
            max_retries=int(
                _positive(conn_id, "max_retries", _extra(extras, "max_retries", DEFAULT_MAX_RETRIES), int, 0)
            ),
        )


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


def _positive(conn_id: str, name: str, value: Any, kind: type, minimum: float = 0) -> float:
    try:
        if isinstance(value, bool):
            raise ValueError
        number = kind(value)
        if kind is int and float(value) != number:
            raise ValueError
    except (TypeError, ValueError):
        number = None
    if number is None or number < minimum or (minimum == 0 and kind is float and number <= 0):
        what = "a positive number of seconds" if kind is float else "a whole number of at least 0"
        raise MLServerConfigError(
            f"Connection '{conn_id}': extra '{name}' must be {what}, not {quoted(value)}."
        )
    return float(number)
