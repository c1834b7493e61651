"""What runs inside a worker process: published services, one record or one group of records at a time.

A worker keeps one loaded service per service revision: its model objects (its snapshot) are loaded and its
``initCode`` run once, the first time that worker runs the service, by the loader of the service's runtime in
the registry (:func:`airflow_mlserver.server.runtimes.get`). Everything around a record (its working folder, its
artifacts, its answer) is :class:`Worker`'s, the same for every runtime.

Each record runs in the worker's own scratch folder, emptied after each record: a record that writes no file
touches no other folder, and only a record's declared output files are moved into the record's folder (made
then). The messages a worker answers, and the flags it shares with the server, are the worker protocol
(:mod:`~airflow_mlserver.server.runtimes.protocol`).

This module imports only the standard library (and the registry, which imports a runtime's module when a worker
first loads one of its services) at import time, so that workers start fast.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import shutil
import time
from pathlib import Path
from typing import Any

from airflow_mlserver.server import runtimes
from airflow_mlserver.server.runtimes.protocol import (
    Flags,
    Group,
    GroupDone,
    Job,
    LoadedService,
    Outcome,
    RecordDone,
    answer_text,
    format_error,
    record_job,
)


class Worker:
    """The state of one worker process: a cache of loaded service revisions and a scratch folder.

    The scratch folder is held open: each record starts there (``fchdir``) and its files are listed, moved and
    removed through that descriptor, so a record that changed directory, or renamed or swapped its folder for a
    link, cannot send the next record, or the clean-up, elsewhere.

    :param home: The worker's own folder, where it loads services (its scratch folder is ``workers/<pid>``
        below it, where every execution runs).
    """

    def __init__(self, home: str) -> None:
        self.home = home
        self.scratch = Path(home) / "workers" / str(os.getpid())
        shutil.rmtree(self.scratch, ignore_errors=True)
        self._fd = self._open_scratch()
        self._services: dict[str, LoadedService] = {}

    def _open_scratch(self) -> int:
        self.scratch.mkdir(parents=True, exist_ok=True)
        return os.open(self.scratch, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)

    def _service(self, job: Job) -> LoadedService | str:
        """The loaded service of ``job``'s revision, or why ``initCode`` (or loading its objects) failed."""
        service = self._services.get(job.key)
        if service is None:
            # out of a scratch folder the last record may have removed: loading reads the cwd
            os.chdir(self.home)
            try:
                service = runtimes.get(job.runtime_type).loader(job)
            except BaseException as exc:
                return f"initCode failed: {format_error(exc)}"
            self._services[job.key] = service
        return service

    def run(self, job: Job) -> Outcome:
        """Run one execution (a request-response call)."""
        service = self._service(job)
        if isinstance(service, str):
            return Outcome(success=False, error_message=service, init_failed=True)
        return self._execute(service, job)

    def run_group(self, group: Group, flags: Flags) -> GroupDone:
        """Run a group's records in order; before each, say which one runs and stop if the server asks to."""
        flags.position.value = -1
        service = self._service(group.job)
        if isinstance(service, str):
            return GroupDone([], init_error=service)
        done: list[RecordDone] = []
        position = flags.position
        started = time.perf_counter()
        for i, record in enumerate(group.records):
            if flags.stop.value:
                break
            position.value = i
            job = record_job(group.job, json.loads(record.inputs), f"{group.folder}/{record.record_index}")
            outcome = self._execute(service, job)
            done.append(RecordDone(record.record_index, outcome.success, answer_text(outcome)))
        position.value = len(group.records)
        return GroupDone(done, seconds=time.perf_counter() - started)

    def _execute(self, service: LoadedService, job: Job) -> Outcome:
        if os.fstat(self._fd).st_nlink == 0:  # the last record removed the scratch folder: a new one
            os.close(self._fd)
            self._fd = self._open_scratch()
        os.fchdir(self._fd)
        error, console, outputs = service.evaluate(job)
        changed, files = self._collect(job)
        return Outcome(
            success=not error,
            error_message=error,
            console_output=console,
            changed_files=changed,
            outputs=outputs if not error else {},
            artifacts=files,
        )

    def _collect(self, job: Job) -> tuple[list[str], list[str]]:
        """The files a record left in the scratch folder, and its declared output files, moved to its folder.

        Everything else is removed: the next record finds the folder empty.
        """
        fd = self._fd
        with os.scandir(fd) as found:
            entries = list(found)
        if not entries:
            return [], []
        changed = sorted(e.name for e in entries if e.is_file())
        regular = {e.name for e in entries if e.is_file(follow_symlinks=False)}  # a link is not an artifact
        files = [f for f in job.output_files if f in regular]
        if files:
            workdir = Path(job.workdir)
            workdir.mkdir(parents=True, exist_ok=True)
            for name in files:
                try:
                    os.rename(name, workdir / name, src_dir_fd=fd)
                except OSError as exc:
                    if exc.errno != errno.EXDEV:
                        raise
                    shutil.move(self.scratch / name, workdir / name)  # the data folder spans two file systems
        for entry in entries:
            if entry.name in files:
                continue
            if entry.is_dir(follow_symlinks=False):
                shutil.rmtree(entry.name, ignore_errors=True, dir_fd=fd)
            else:
                with contextlib.suppress(OSError):
                    os.unlink(entry.name, dir_fd=fd)
        return changed, files


def worker_main(conn: Any, home: str, flags: Flags) -> None:
    """Entry point of a worker process: answer jobs and groups from ``conn`` until told to stop (None)."""
    import signal

    # The server owns its workers' lifetime: a signal sent to the whole process group (Ctrl-C, a service
    # manager's stop) must not kill a record mid-way; the server stops its workers itself.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    os.chdir(home)
    worker = Worker(home)
    while True:
        try:
            message = conn.recv()
        except (EOFError, OSError):
            return
        if message is None:
            return
        try:
            if isinstance(message, Group):
                conn.send(worker.run_group(message, flags))
            else:
                conn.send(worker.run(message))
        except (BrokenPipeError, ConnectionResetError, EOFError):
            return  # the server is gone: nobody reads what this worker runs any more
