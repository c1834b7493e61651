"""Neither the password nor any token appears in the logs of a full run, at DEBUG, urllib3 included."""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import time

import pytest

from airflow_mlserver.client import auth
from airflow_mlserver.exceptions import MLServerAuthError
from airflow_mlserver.hooks.mlserver import MLServerHook
from airflow_mlserver.server.process import LocalMLServer
from tests.helpers import Api, polled_once

CONN_ID = "mlserver_secret"


def test_no_secret_in_logs(
    mlserver: LocalMLServer,
    api: Api,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
    capfd: pytest.CaptureFixture[str],
) -> None:
    api.publish("secretsvc", "1", "y = x * 2", {"x": "integer"}, {"y": "integer"}, files=[])
    monkeypatch.setenv(
        f"AIRFLOW_CONN_{CONN_ID.upper()}", f"mlserver://admin:{mlserver.password}@127.0.0.1:{mlserver.port}"
    )
    secrets: set[str] = {mlserver.password}

    def remember(hook: MLServerHook) -> None:
        """Every token of this connection: the hook's own, and the shared cache's (where the Test's login went)."""
        shared = [token for key, token in auth.TOKENS.items() if key[0] == CONN_ID]
        tokens = [*shared, hook.get_conn().auth.token]
        assert any(t is not None for t in tokens)
        for token in tokens:
            if token is not None:
                secrets.update(s for s in (token.access_token, token.refresh_token) if s)

    caplog.set_level(logging.DEBUG)
    for name in ("urllib3", "requests", "aiohttp", "airflow"):
        logging.getLogger(name).setLevel(logging.DEBUG)

    hook = MLServerHook(CONN_ID, retry_wait=0.01)
    assert hook.test_connection()[0]
    remember(hook)
    execution_id = hook.start_batch("secretsvc", "1", {"x": list(range(20))})
    remember(hook)
    # Force a refresh ahead of expiry, then a 401 and a re-login.
    assert hook.get_conn().auth.token is not None
    hook.get_conn().auth.token = dataclasses.replace(hook.get_conn().auth.token, expires_at=time.time())
    auth.TOKENS.clear()  # expired for every hook of the process, not only this one
    hook.get_batch("secretsvc", "1", execution_id)
    remember(hook)
    hook.get_conn().auth.token = dataclasses.replace(
        hook.get_conn().auth.token, access_token="x" * 40, expires_at=None
    )
    while not hook.get_batch("secretsvc", "1", execution_id).is_finished:
        time.sleep(0.1)
    remember(hook)
    assert len(list(hook.iter_batch_results("secretsvc", "1", execution_id))) == 20
    asyncio.run(polled_once(hook, "secretsvc", "1", execution_id))
    remember(hook)

    # A bearer-token connection, and a failed login with a wrong password.
    token = api.login(mlserver.username, mlserver.password)["access_token"]
    secrets.add(token)
    monkeypatch.setenv(
        f"AIRFLOW_CONN_{CONN_ID.upper()}", f"mlserver://127.0.0.1:{mlserver.port}?access_token={token}"
    )
    assert MLServerHook(CONN_ID).consume("secretsvc", "1", {"x": 3}).outputs == {"y": 6}
    wrong = "wrong-password-" + mlserver.password[::-1]
    secrets.add(wrong)
    monkeypatch.setenv(
        f"AIRFLOW_CONN_{CONN_ID.upper()}", f"mlserver://admin:{wrong}@127.0.0.1:{mlserver.port}"
    )
    with pytest.raises(MLServerAuthError) as excinfo:
        MLServerHook(CONN_ID).list_services()
    assert wrong not in str(excinfo.value)

    captured = capfd.readouterr()
    logs = caplog.text + captured.out + captured.err
    assert "GET /api/secretsvc/1/batch" in logs  # urllib3's DEBUG request lines were captured
    assert len(secrets) >= 6
    leaked = [s for s in secrets if s in logs]
    assert leaked == []
    # And they are registered with Airflow's secrets masker, for anything else that might print them.
    from airflow.sdk._shared.secrets_masker import redact

    for secret in secrets:
        assert redact(f"value {secret}") == "value ***"
