"""Start the local server as a child process and wait until it answers: for tests, the demo and benchmarks."""

from __future__ import annotations

import contextlib
import os
import secrets
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from types import TracebackType

from airflow_mlserver.server.config import READY_LINE


class ServerStartError(RuntimeError):
    """The local server did not come up; the message carries what it printed."""


class LocalMLServer:
    """``airflow-mlserver serve`` in a child process on a free loopback port.

    :param data_dir: The server's data directory (kept across :meth:`restart`).
    :param workers: Worker processes.
    :param password: The admin password (generated when not given).
    :param extra_args: Further ``serve`` flags, e.g. ``["--token-ttl", "3"]``.
    :param port: A fixed port; by default a free one is picked at the first start and kept across restarts.
    :param tls_cert: Serve https with this certificate (a PEM file, for 127.0.0.1); needs ``tls_key``.
    :param tls_key: The certificate's private key (a PEM file, unencrypted).
    """

    def __init__(
        self,
        data_dir: str | Path,
        workers: int = 2,
        password: str | None = None,
        extra_args: list[str] | None = None,
        port: int = 0,
        tls_cert: str | Path | None = None,
        tls_key: str | Path | None = None,
    ) -> None:
        self.data_dir = Path(data_dir)
        self.workers = workers
        self.username = "admin"
        self.password = password or secrets.token_urlsafe(12)
        self.extra_args = list(extra_args or [])
        self.port = port
        self.tls_cert = Path(tls_cert) if tls_cert is not None else None
        self.tls_key = Path(tls_key) if tls_key is not None else None
        self.proc: subprocess.Popen[str] | None = None
        self.output: list[str] = []

    @property
    def scheme(self) -> str:
        """``https`` when started with a certificate, else ``http``."""
        return "https" if self.tls_cert is not None else "http"

    @property
    def url(self) -> str:
        return f"{self.scheme}://127.0.0.1:{self.port}"

    def start(self, timeout: float = 60.0) -> LocalMLServer:
        cmd = [
            sys.executable, "-m", "airflow_mlserver.cli", "serve",
            "--port", str(self.port), "--data-dir", str(self.data_dir), "--workers", str(self.workers),
            *self.extra_args,
        ]  # fmt: skip
        for flag, path in (("--tls-cert", self.tls_cert), ("--tls-key", self.tls_key)):
            if path is not None:  # one without the other: the server says they go together
                cmd += [flag, str(path)]
        env = {**os.environ, "AIRFLOW_MLSERVER_ADMIN_PASSWORD": self.password}
        self.output = []
        self.proc = subprocess.Popen(
            cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env, start_new_session=True
        )
        ready = threading.Event()

        def pump(stream: object) -> None:
            for line in stream:  # type: ignore[attr-defined]
                self.output.append(line)
                if line.startswith(READY_LINE):
                    self.port = int(line.split()[3].rsplit(":", 1)[1])
                    ready.set()

        threading.Thread(target=pump, args=(self.proc.stdout,), daemon=True).start()
        deadline = time.monotonic() + timeout
        while not ready.wait(0.05):
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise ServerStartError("the local server did not start:\n" + "".join(self.output))
        return self

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 15.0) -> None:
        """Stop the server (SIGTERM: graceful; SIGKILL: as a crash) and its worker processes."""
        if self.proc is None:
            return
        if self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, sig)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(5)
        with contextlib.suppress(ProcessLookupError):  # the worker processes share the process group
            os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc = None

    def restart(self, sig: int = signal.SIGTERM) -> LocalMLServer:
        self.stop(sig)
        return self.start()

    def __enter__(self) -> LocalMLServer:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()
