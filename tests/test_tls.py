"""TLS end to end: the local server over https with a certificate from a CA the test makes (trustme), and the hook,
its async side and the trigger reaching it with the connection's Verify TLS set to that CA's path, to false, or
left true (the CA unknown). A refused certificate fails at once with MLServerTLSError, never retried."""

from __future__ import annotations

import asyncio
import datetime
import re
import time
import urllib.parse
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import trustme
import urllib3

from airflow_mlserver import cli
from airflow_mlserver.client.aio import AsyncDriver
from airflow_mlserver.client.sync import SyncDriver
from airflow_mlserver.exceptions import MLServerConfigError, MLServerTLSError
from airflow_mlserver.hooks.mlserver import MLServerHook
from airflow_mlserver.server.process import LocalMLServer
from airflow_mlserver.triggers.batch import MLServerBatchTrigger

SERVICE, VERSION = "tlsadd", "1.0"


class Pki:
    """A CA made for the module, and the files the server and the connections are given."""

    def __init__(self, folder: Path) -> None:
        self.ca = trustme.CA()
        self.ca_path = folder / "ca.pem"
        self.ca.cert_pem.write_to_path(str(self.ca_path))
        # for 127.0.0.1 only: "localhost" is another host name to its checks
        self.cert, self.key = self.leaf(folder, "server", self.ca.issue_cert("127.0.0.1"))
        now = datetime.datetime.now(datetime.UTC)
        expired = self.ca.issue_cert("127.0.0.1", not_before=now - datetime.timedelta(days=30), not_after=now)
        self.expired_cert, self.expired_key = self.leaf(folder, "expired", expired)

    @staticmethod
    def leaf(folder: Path, name: str, leaf: trustme.LeafCert) -> tuple[Path, Path]:
        cert, key = folder / f"{name}.pem", folder / f"{name}.key"
        cert.write_bytes(b"".join(blob.bytes() for blob in leaf.cert_chain_pems))
        leaf.private_key_pem.write_to_path(str(key))
        return cert, key


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    return Pki(tmp_path_factory.mktemp("pki"))


@pytest.fixture(scope="module")
def tls_server(pki: Pki, tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalMLServer]:
    server = LocalMLServer(tmp_path_factory.mktemp("tls"), workers=1, tls_cert=pki.cert, tls_key=pki.key)
    with server:
        yield server


def uri(server: LocalMLServer, verify: str | None = None, host: str = "127.0.0.1") -> str:
    """The connection as a URI: https (``mlserver+https``), the Verify TLS extra as given."""
    password = urllib.parse.quote(server.password, safe="")
    query = f"?verify={urllib.parse.quote(verify, safe='')}" if verify is not None else ""
    return f"mlserver+https://{server.username}:{password}@{host}:{server.port}{query}"


def use(monkeypatch: pytest.MonkeyPatch, conn_id: str, connection_uri: str) -> MLServerHook:
    monkeypatch.setenv(f"AIRFLOW_CONN_{conn_id.upper()}", connection_uri)
    return MLServerHook(conn_id, retry_wait=0.05, retry_wait_max=0.5)


@pytest.fixture(scope="module")
def published(tls_server: LocalMLServer, pki: Pki) -> str:
    """The service, published over TLS by the hook (the CA's path as Verify TLS)."""
    with pytest.MonkeyPatch.context() as monkeypatch:
        hook = use(monkeypatch, "mlserver_tls_publish", uri(tls_server, str(pki.ca_path)))
        hook.publish_service(SERVICE, VERSION, "y = x + 1", {"x": "numeric"}, {"y": "numeric"}, replace=True)
        hook.close()
    return SERVICE


def count_attempts(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Every request either driver sends (each attempt of each retry), by its label."""
    attempts: list[str] = []
    sync_once, async_once = SyncDriver._send_once, AsyncDriver._send_once

    def sync_counted(self: SyncDriver, wire: Any) -> Any:
        attempts.append(wire.spec.label)
        return sync_once(self, wire)

    async def async_counted(self: AsyncDriver, session: Any, wire: Any) -> Any:
        attempts.append(wire.spec.label)
        return await async_once(self, session, wire)

    monkeypatch.setattr(SyncDriver, "_send_once", sync_counted)
    monkeypatch.setattr(AsyncDriver, "_send_once", async_counted)
    return attempts


def wait_finished(hook: MLServerHook, execution_id: str, timeout: float = 60) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        status = hook.get_batch(SERVICE, VERSION, execution_id)
        if status.is_finished:
            return status
        time.sleep(0.1)
    raise AssertionError(f"execution {execution_id} did not finish in {timeout} s")


def async_get(conn_id: str, execution_id: str) -> Any:
    """One status poll as a trigger makes it: a hook reading the connection with the async API, on aiohttp."""

    async def poll() -> Any:
        hook = MLServerHook(conn_id)
        try:
            return await hook.async_get_batch(SERVICE, VERSION, execution_id)
        finally:
            await hook.aclose()

    return asyncio.run(poll())


def events(trigger: MLServerBatchTrigger, timeout: float = 60) -> list[dict[str, Any]]:
    async def collect() -> list[dict[str, Any]]:
        return [event.payload async for event in trigger.run()]

    return asyncio.run(asyncio.wait_for(collect(), timeout))


# --- the server: https, and its certificate files checked at startup ------------------------------------------


def test_serve_checks_the_certificate_files_before_it_starts(
    pki: Pki, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    other = trustme.CA().issue_cert("127.0.0.1")
    _, other_key = Pki.leaf(tmp_path, "other", other)
    not_pem = tmp_path / "not.pem"
    not_pem.write_text("not a certificate\n")
    missing = tmp_path / "missing.pem"
    cases = {
        (
            pki.cert,
            None,
        ): "--tls-cert and --tls-key go together: give both (the certificate and its private key, "
        "PEM files) to serve https, or neither to serve http.",
        (
            missing,
            pki.key,
        ): f"--tls-cert {missing} does not exist: give the path of the server's certificate, a PEM file.",
        (
            pki.cert,
            tmp_path,
        ): f"--tls-key {tmp_path} is not a file: give the path of the server's private key, a PEM file.",
        (
            pki.cert,
            other_key,
        ): f"--tls-cert {pki.cert} and --tls-key {other_key} are not a usable certificate and "
        "key ([X509: KEY_VALUES_MISMATCH] key values mismatch",
        (
            not_pem,
            pki.key,
        ): f"--tls-cert {not_pem} and --tls-key {pki.key} are not a usable certificate and key (",
    }
    for (cert, key), message in cases.items():
        argv = ["serve", "--data-dir", str(tmp_path / "data"), "--admin-password", "pw", "--port", "0"]
        argv += ["--tls-cert", str(cert)] if cert else []
        argv += ["--tls-key", str(key)] if key else []
        assert cli.serve(cli.build_parser().parse_args(argv)) == 2
        assert capsys.readouterr().err.startswith(f"airflow-mlserver: {message}")
    assert not (tmp_path / "data").exists()  # refused before anything started


def test_the_local_server_serves_https(tls_server: LocalMLServer) -> None:
    assert tls_server.url == f"https://127.0.0.1:{tls_server.port}"
    assert any(
        line.startswith(f"airflow-mlserver listening on {tls_server.url} ") for line in tls_server.output
    )


# --- Verify TLS: the CA's path ----------------------------------------------------------------------------------


def test_sync_calls_with_the_ca_path(
    tls_server: LocalMLServer, pki: Pki, published: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    hook = use(monkeypatch, "mlserver_tls", uri(tls_server, str(pki.ca_path)))
    assert hook.test_connection() == (
        True,
        f"Connected to the Machine Learning Server at {tls_server.url} as 'admin': status pass.",
    )
    execution_id = hook.start_batch(SERVICE, VERSION, [{"x": 1.0}, {"x": 2.0}], parallel_count=2)
    status = wait_finished(hook, execution_id)
    assert (status.state, status.completed, status.failed) == ("Complete", 2, 0)
    assert [r.outputs["y"] for r in hook.iter_batch_results(SERVICE, VERSION, execution_id)] == [2.0, 3.0]
    hook.close()


def test_async_poll_with_the_ca_path(
    tls_server: LocalMLServer, pki: Pki, published: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    hook = use(monkeypatch, "mlserver_tls", uri(tls_server, str(pki.ca_path)))
    execution_id = hook.start_batch(SERVICE, VERSION, [{"x": 1.0}], parallel_count=1)
    wait_finished(hook, execution_id)
    status = async_get("mlserver_tls", execution_id)
    assert (status.state, status.completed) == ("Complete", 1)
    hook.close()


def test_the_trigger_with_the_ca_path(
    tls_server: LocalMLServer, pki: Pki, published: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    hook = use(monkeypatch, "mlserver_tls", uri(tls_server, str(pki.ca_path)))
    ids = [hook.start_batch(SERVICE, VERSION, [{"x": 1.0}] * 3, parallel_count=3) for _ in range(2)]
    hook.close()
    trigger = MLServerBatchTrigger(
        mlserver_conn_id="mlserver_tls", service_name=SERVICE, service_version=VERSION, execution_ids=ids,
        poll_interval=0.2,
    )  # fmt: skip
    (event,) = events(trigger)
    assert event["status"] == "complete"
    assert {key: e["completed"] for key, e in event["executions"].items()} == dict.fromkeys(ids, 3)


# --- a refused certificate: permanent, named, at once -----------------------------------------------------------


def refused(url: str, problem: str, fix: str, conn: str = "connection 'mlserver_tls'") -> str:
    """A TLS refusal's message, as a pattern: the call and its request (a login, or the first call when the process
    holds a token already), the server's URL, the problem, the fix."""
    tail = f" at {url} failed: {problem}. {fix} Not retried: every attempt would fail the same way."
    return r"Could not [^:]+: (GET|POST) /\S*" + re.escape(tail.replace("{conn}", conn))


UNTRUSTED = (
    "the server's TLS certificate was not issued by a certificate authority (CA) that the workers trust "
    "(certificate verify failed: unable to get local issuer certificate)"
)
UNTRUSTED_FIX = (
    "Set the Verify TLS field (extra 'verify') of {conn} to the path of the CA bundle (a PEM file) that issued the "
    "server's certificate, as found on every worker and the triggerer, or to false to skip the check (not "
    "recommended: whoever can intercept the traffic could then read the password and tokens)."
)


def test_an_unknown_ca_fails_at_once_with_what_to_set_and_no_retry(
    tls_server: LocalMLServer, published: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    use(monkeypatch, "mlserver_tls", uri(tls_server))  # Verify TLS left true: the test's CA is unknown
    hook = MLServerHook("mlserver_tls")  # the default retries: 8, the first after about a second
    attempts = count_attempts(monkeypatch)
    started = time.monotonic()
    with pytest.raises(MLServerTLSError) as raised:
        hook.get_batch(SERVICE, VERSION, "some-id")
    took = time.monotonic() - started
    assert re.fullmatch(refused(tls_server.url, UNTRUSTED, UNTRUSTED_FIX), str(raised.value)), str(
        raised.value
    )
    assert isinstance(raised.value, MLServerConfigError)
    assert took < 1.0, took
    assert len(attempts) == 1, attempts  # one attempt, no retry (the default max_retries is 8)

    # the async side (a trigger's poll): the same error, as fast, one attempt
    attempts.clear()
    started = time.monotonic()
    with pytest.raises(MLServerTLSError) as raised:
        async_get("mlserver_tls", "some-id")
    took = time.monotonic() - started
    assert re.fullmatch(refused(tls_server.url, UNTRUSTED, UNTRUSTED_FIX), str(raised.value)), str(
        raised.value
    )
    assert took < 1.0, took
    assert len(attempts) == 1, attempts


def test_the_ui_test_and_the_trigger_say_so_at_once(
    tls_server: LocalMLServer, published: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    hook = use(monkeypatch, "mlserver_tls", uri(tls_server))
    started = time.monotonic()
    ok, message = hook.test_connection()
    assert not ok
    assert re.fullmatch(refused(tls_server.url, UNTRUSTED, UNTRUSTED_FIX, conn="this connection"), message), (
        message
    )
    trigger = MLServerBatchTrigger(
        mlserver_conn_id="mlserver_tls", service_name=SERVICE, service_version=VERSION, execution_ids=["x"],
        poll_interval=0.2,
    )  # fmt: skip
    (event,) = events(trigger)
    assert event["status"] == "error"
    assert UNTRUSTED in event["message"]
    assert time.monotonic() - started < 2.0


def test_a_ca_bundle_without_the_servers_ca_is_named(
    tls_server: LocalMLServer, published: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    other = tmp_path / "other-ca.pem"
    trustme.CA().cert_pem.write_to_path(str(other))
    hook = use(monkeypatch, "mlserver_tls", uri(tls_server, str(other)))
    with pytest.raises(MLServerTLSError) as raised:
        hook.list_services()
    problem = (
        f"the server's TLS certificate was not issued by a certificate authority (CA) in the CA bundle {other} "
        "that connection 'mlserver_tls' names (certificate verify failed: unable to get local issuer certificate)"
    )
    assert re.fullmatch(refused(tls_server.url, problem, UNTRUSTED_FIX), str(raised.value)), str(raised.value)


def test_a_ca_bundle_that_holds_no_certificate(
    tls_server: LocalMLServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    empty = tmp_path / "empty.pem"
    empty.write_text("no certificate here\n")
    message = (
        f"The CA bundle {empty}, from the Verify TLS field (extra 'verify') of connection 'mlserver_tls', cannot "
        f"check the TLS certificate of {tls_server.url}: it holds no PEM certificate. Give the path of a PEM file of "
        "the CA certificates that issued the server's certificate, readable on every worker and the triggerer."
    )
    hook = use(monkeypatch, "mlserver_tls", uri(tls_server, str(empty)))
    with pytest.raises(MLServerTLSError) as raised:
        hook.list_services()
    assert str(raised.value) == message
    with pytest.raises(MLServerTLSError) as raised:
        async_get("mlserver_tls", "some-id")
    assert str(raised.value) == message


def test_another_host_name(tls_server: LocalMLServer, pki: Pki, monkeypatch: pytest.MonkeyPatch) -> None:
    hook = use(monkeypatch, "mlserver_tls", uri(tls_server, str(pki.ca_path), host="localhost"))
    attempts = count_attempts(monkeypatch)
    with pytest.raises(MLServerTLSError) as raised:
        hook.list_services()
    pattern = refused(
        f"https://localhost:{tls_server.port}",
        "the server's TLS certificate is not issued for 'localhost', the host name connection 'mlserver_tls' uses "
        "(certificate verify failed: Hostname mismatch, certificate is not valid for 'localhost')",
        "Set the host of {conn} to a name the certificate is issued for, or the Verify TLS field (extra 'verify') "
        "of {conn} to false to skip the check (not recommended: whoever can intercept the traffic could then read "
        "the password and tokens).",
    )
    assert re.fullmatch(pattern, str(raised.value)), str(raised.value)
    assert len(attempts) == 1, attempts


def test_an_expired_certificate(pki: Pki, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    with LocalMLServer(tmp_path, workers=1, tls_cert=pki.expired_cert, tls_key=pki.expired_key) as server:
        hook = use(monkeypatch, "mlserver_tls", uri(server, str(pki.ca_path)))
        attempts = count_attempts(monkeypatch)
        pattern = refused(
            server.url,
            "the server's TLS certificate has expired (certificate verify failed: certificate has expired)",
            "Have the server's certificate renewed, and check that the clocks of the workers and the server are "
            "right; meanwhile the Verify TLS field (extra 'verify') of {conn} set to false skips the check (not "
            "recommended: whoever can intercept the traffic could then read the password and tokens).",
        )
        with pytest.raises(MLServerTLSError) as raised:
            hook.list_services()
        assert re.fullmatch(pattern, str(raised.value)), str(raised.value)
        with pytest.raises(MLServerTLSError) as raised:
            async_get("mlserver_tls", "some-id")
        assert re.fullmatch(pattern, str(raised.value)), str(raised.value)
        assert len(attempts) == 2, attempts  # one each


def test_https_to_a_plain_http_server(mlserver: LocalMLServer, monkeypatch: pytest.MonkeyPatch) -> None:
    hook = use(monkeypatch, "mlserver_tls", uri(mlserver))
    started = time.monotonic()
    with pytest.raises(MLServerTLSError) as raised:
        hook.list_services()
    pattern = refused(
        f"https://127.0.0.1:{mlserver.port}",
        "the server does not answer in TLS: it likely serves plain http on that port (wrong version number)",
        "Set the schema of {conn} to http, or its port to the server's https port.",
    )
    assert re.fullmatch(pattern, str(raised.value)), str(raised.value)
    assert time.monotonic() - started < 1.0


# --- Verify TLS false: works, and says so once per process -------------------------------------------------------


def test_verify_false_works_and_warns_once_per_process(
    tls_server: LocalMLServer,
    published: str,
    monkeypatch: pytest.MonkeyPatch,
    capfd: pytest.CaptureFixture[str],
) -> None:
    conn_id = "mlserver_tls_unverified"
    with warnings.catch_warnings(record=True) as seen:
        # every InsecureRequestWarning shown: one per request, unless the hook silences them for this server
        warnings.simplefilter("always", urllib3.exceptions.InsecureRequestWarning)
        for _ in range(2):  # two hooks, as two tasks of one worker process
            hook = use(monkeypatch, conn_id, uri(tls_server, "false"))
            assert hook.get_service(SERVICE, VERSION).name == SERVICE
            execution_id = hook.start_batch(SERVICE, VERSION, [{"x": 1.0}], parallel_count=1)
            assert wait_finished(hook, execution_id).is_complete
            status = async_get(conn_id, execution_id)
            assert status.completed == 1
            hook.close()
    assert [w for w in seen if issubclass(w.category, urllib3.exceptions.InsecureRequestWarning)] == []
    out = capfd.readouterr().out
    warning = (
        f"Connection '{conn_id}' has Verify TLS false: the TLS certificate of {tls_server.url} is not checked "
        "(said once per process)"
    )
    risk = (
        "Whoever can intercept the traffic could read the password and tokens: set Verify TLS (extra 'verify') "
        "to the path of the CA bundle that issued the server's certificate"
    )
    assert out.count(warning) == 1 and out.count(risk) == 1, out
