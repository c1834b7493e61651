"""The ``airflow-mlserver`` command: ``airflow-mlserver serve`` starts the local Machine Learning Server."""

from __future__ import annotations

import argparse
import logging
import os
import secrets
import ssl
import sys
from pathlib import Path

from airflow_mlserver.server.config import ADMIN_PASSWORD_ENV, DEFAULT_PORT, READY_LINE, ServerConfig


def _user(value: str) -> tuple[str, str]:
    name, sep, password = value.partition(":")
    if not sep or not name or not password:
        raise argparse.ArgumentTypeError(f"expected NAME:PASSWORD, got {value!r}")
    return name, password


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="airflow-mlserver", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    serve = sub.add_parser("serve", help="run the local, wire-compatible Machine Learning Server")
    serve.add_argument("--host", default="127.0.0.1", help="address to bind (default: loopback only)")
    serve.add_argument(
        "--port", type=int, default=DEFAULT_PORT, help=f"port (default {DEFAULT_PORT}; 0 = any free)"
    )
    serve.add_argument(
        "--data-dir",
        type=Path,
        default=Path.home() / ".airflow-mlserver",
        help="where services, executions and artifacts are kept (default ~/.airflow-mlserver)",
    )
    serve.add_argument(
        "--workers",
        type=int,
        default=os.cpu_count() or 1,
        help="worker processes running service code (default: one per core)",
    )
    serve.add_argument(
        "--admin-password",
        default=None,
        help=f"password of the 'admin' user (default: ${ADMIN_PASSWORD_ENV}, else generated and printed)",
    )
    serve.add_argument(
        "--user",
        type=_user,
        action="append",
        default=[],
        metavar="NAME:PASSWORD",
        help="an extra user (repeatable)",
    )
    serve.add_argument(
        "--token-ttl", type=int, default=3600, help="access-token lifetime in seconds (default 3600)"
    )
    serve.add_argument(
        "--max-parallel-count",
        type=int,
        default=100,
        help="highest parallelCount a batch may ask for (default 100)",
    )
    serve.add_argument(
        "--execution-timeout",
        type=float,
        default=600.0,
        help="seconds one execution may run before it is stopped (default 600)",
    )
    serve.add_argument(
        "--max-body-mb", type=float, default=512.0, help="largest request body in MiB (default 512)"
    )
    serve.add_argument("--faults", default="", help="fault injection, e.g. 503:0.3,reset:0.1,delay:2s:0.1")
    serve.add_argument(
        "--ignore-idempotency-keys",
        action="store_true",
        help="ignore a batch start's Idempotency-Key header, as a real Machine Learning Server does",
    )
    serve.add_argument(
        "--tls-cert",
        type=Path,
        default=None,
        metavar="CERT",
        help="serve https with this certificate (a PEM file: the server's certificate, then any intermediate "
        "ones); needs --tls-key",
    )
    serve.add_argument(
        "--tls-key",
        type=Path,
        default=None,
        metavar="KEY",
        help="the certificate's private key (a PEM file, unencrypted)",
    )
    serve.add_argument("--log-level", default="warning", help="uvicorn log level (default warning)")
    return parser


def tls_problem(cert: Path | None, key: Path | None) -> str | None:
    """What keeps ``--tls-cert`` and ``--tls-key`` from serving https (a sentence for the person who started the
    server), or None when they are usable or both absent (plain http)."""
    if cert is None and key is None:
        return None
    if cert is None or key is None:
        return (
            "--tls-cert and --tls-key go together: give both (the certificate and its private key, PEM files) to "
            "serve https, or neither to serve http"
        )
    for flag, path, what in (("--tls-cert", cert, "certificate"), ("--tls-key", key, "private key")):
        if not path.is_file():
            found = "is not a file" if path.exists() else "does not exist"
            return f"{flag} {path} {found}: give the path of the server's {what}, a PEM file"
        try:
            with path.open("rb"):
                pass
        except OSError as exc:
            return f"{flag} {path} cannot be read ({exc.strerror}): make it readable by the user running the server"
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    try:
        # a password callback that gives none: an encrypted key fails here rather than prompting on the terminal
        context.load_cert_chain(cert, key, password=lambda: b"")
    except (ssl.SSLError, OSError) as exc:
        return (
            f"--tls-cert {cert} and --tls-key {key} are not a usable certificate and key ({exc}): give PEM files, "
            "the key unencrypted and the one the certificate was issued for"
        )
    return None


def serve(args: argparse.Namespace) -> int:
    import asyncio
    import socket

    import uvicorn

    from airflow_mlserver.server.app import create_app
    from airflow_mlserver.server.faults import FaultInjector, FaultSpecError

    password = args.admin_password or os.environ.get(ADMIN_PASSWORD_ENV)
    if not password:
        password = secrets.token_urlsafe(16)
        print(f"Generated password for user 'admin': {password}", flush=True)
    try:
        FaultInjector.parse(args.faults)
    except FaultSpecError as exc:
        print(f"airflow-mlserver: {exc}", file=sys.stderr)
        return 2
    if args.workers < 1 or args.max_parallel_count < 1:
        print("airflow-mlserver: --workers and --max-parallel-count must be at least 1", file=sys.stderr)
        return 2
    if problem := tls_problem(args.tls_cert, args.tls_key):
        print(f"airflow-mlserver: {problem}.", file=sys.stderr)
        return 2
    tls = args.tls_cert is not None
    config = ServerConfig(
        data_dir=args.data_dir.expanduser().resolve(),
        workers=args.workers,
        admin_password=password,
        users=dict(args.user),
        token_ttl=args.token_ttl,
        max_parallel_count=args.max_parallel_count,
        execution_timeout=args.execution_timeout,
        max_body_bytes=int(args.max_body_mb * 1024 * 1024),
        faults=args.faults,
        idempotency_keys=not args.ignore_idempotency_keys,
    )
    # IPPROTO_TCP explicitly: asyncio only sets TCP_NODELAY on connections accepted from a socket whose
    # protocol says TCP; without it, keep-alive answers sent in two writes wait ~40 ms (Nagle + delayed ACK).
    family = socket.AF_INET6 if ":" in args.host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((args.host, args.port))
    except OSError as exc:
        print(f"airflow-mlserver: cannot listen on {args.host}:{args.port}: {exc}", file=sys.stderr)
        return 2
    port = sock.getsockname()[1]
    app = create_app(config)
    server = uvicorn.Server(
        uvicorn.Config(
            app,
            log_level=args.log_level,
            access_log=False,
            timeout_graceful_shutdown=5,
            ssl_certfile=str(args.tls_cert) if tls else None,
            ssl_keyfile=str(args.tls_key) if tls else None,
        )
    )

    async def main() -> None:
        task = asyncio.create_task(server.serve(sockets=[sock]))
        while not server.started and not task.done():
            await asyncio.sleep(0.02)
        if server.started:
            host = f"[{args.host}]" if ":" in args.host else args.host
            scheme = "https" if tls else "http"
            print(f"{READY_LINE} {scheme}://{host}:{port} (data dir {config.data_dir})", flush=True)
        await task

    asyncio.run(main())
    return 0


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    args = build_parser().parse_args(argv)
    if args.command == "serve":
        return serve(args)
    return 2


if __name__ == "__main__":
    sys.exit(main())
