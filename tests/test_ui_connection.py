"""The ``mlserver`` connection type as a user meets it in Airflow's UI: a real API server, a real Chromium.

The form is what the provider info declares (``airflow_mlserver.get_provider_info``): the REST answer the
UI builds it from (``GET /ui/connections/hook_meta``), then the form itself, filled, saved and tested with
the Test button against the session's local ML Server, once right and twice wrong. Screenshots go to
``.artifacts/ui/connection-*.png``.
"""

from __future__ import annotations

import json
import re
import time
from typing import Any

import pytest
from playwright.sync_api import Locator, Page, ViewportSize, expect

from airflow_mlserver import get_provider_info
from airflow_mlserver.server.process import LocalMLServer
from tests.ui_fixtures import RESTRICTED_USER, AirflowUI, UiPages, free_port, screenshot

CONN_ID = "mlserver_ui_form"
#: The standard fields as the form shows them: label -> the connection attribute it edits.
STANDARD_FIELDS = {
    "Server": "host",
    "Port": "port",
    "Scheme": "schema",
    "Username": "login",
    "Password": "password",
}
#: A page size that shows the whole form, and its Save button above the notifications.
TALL: ViewportSize = {"width": 1440, "height": 1300}
#: The extra fields' labels.
EXTRA_LABELS = {
    "verify": "Verify TLS",
    "timeout": "Timeout (seconds)",
    "max_retries": "Max retries",
}


def _declared() -> dict[str, Any]:
    """Our connection type as the provider info declares it."""
    (conn_type,) = get_provider_info()["connection-types"]
    declared: dict[str, Any] = conn_type
    return declared


def _placeholder(field: str) -> str:
    placeholder: str = _declared()["ui-field-behaviour"]["placeholders"][field]
    return placeholder


def _toast(page: Page, title: str, text: str) -> Locator:
    """The notification with this title that contains ``text`` (the UI shows the Test's answer in one)."""
    toast = page.get_by_role("status").filter(has_text=title).filter(has_text=text)
    expect(toast).to_be_visible(timeout=20_000)
    return toast


def _extra_field(page: Page, form: Locator, label: str) -> Locator:
    """The input of an extra field, found through its label's group: the UI's text inputs there have no
    accessible name (their label's ``for`` points elsewhere), so ``get_by_label`` cannot find them."""
    group = form.get_by_role("group").filter(has=page.get_by_text(label, exact=True))
    expect(group).to_have_count(1)
    return group.locator("input").first


def _test_button(page: Page) -> Locator:
    return page.get_by_role("row").filter(has_text=CONN_ID).get_by_role("button", name="Test Connection")


def _edit(page: Page, label: str, value: str) -> None:
    """Open the connection's Edit form, set one standard field, save."""
    page.get_by_role("row").filter(has_text=CONN_ID).get_by_role("button", name="Edit Connection").click()
    form = page.get_by_role("dialog")
    form.get_by_label(label, exact=True).fill(value)
    form.get_by_role("button", name="Save").click()
    expect(form).to_be_hidden()


def test_hook_meta_describes_our_form(airflow_ui: AirflowUI) -> None:
    """The UI's description of connection types has ours: name, relabelled fields, placeholders, extras."""
    answer = airflow_ui.get("/ui/connections/hook_meta", user="admin")
    assert answer.status_code == 200, answer.text
    (meta,) = [m for m in answer.json() if m["connection_type"] == "mlserver"]
    assert meta["hook_name"] == "Machine Learning Server"
    assert meta["hook_class_name"] == "airflow_mlserver.hooks.mlserver.MLServerHook"

    standard = meta["standard_fields"]
    assert {name: field["title"] for name, field in standard.items() if field and field["title"]} == {
        "host": "Server",
        "url_schema": "Scheme",
        "login": "Username",
        "password": "Password",
    }
    assert not any(field["hidden"] for field in standard.values() if field)
    assert standard["host"]["placeholder"] == _placeholder("host")
    assert "https://" in standard["host"]["placeholder"]
    assert standard["port"]["placeholder"] == _placeholder("port")
    assert "12800" in standard["port"]["placeholder"]
    assert standard["url_schema"]["placeholder"] == _placeholder("schema")
    assert standard["login"]["placeholder"] == _placeholder("login")
    assert standard["password"]["placeholder"] == _placeholder("password")

    extra = meta["extra_fields"]
    assert set(extra) == set(EXTRA_LABELS)
    declared = _declared()["conn-fields"]
    for name, label in EXTRA_LABELS.items():
        assert extra[name]["schema"]["title"] == label
        assert extra[name]["description"] == declared[name]["description"]
        assert extra[name]["description"]
    assert extra["verify"]["value"] == "true"
    # the defaults the form opens with, and saves when left as they are (no null for these fields)
    assert (extra["timeout"]["value"], extra["max_retries"]["value"]) == (60, 8)
    assert extra["timeout"]["schema"]["type"] == ["number", "null"]
    assert extra["max_retries"]["schema"]["type"] == ["integer", "null"]


def test_fixture_users_and_the_restricted_dags(airflow_ui: AirflowUI, mlserver: LocalMLServer) -> None:
    """The API server's logins, permissions and connection are the ones the browser tests rely on."""
    assert airflow_ui.get("/ui/connections/hook_meta", user=None).status_code == 401
    assert airflow_ui.get("/ui/connections/hook_meta", user="viewer").status_code == 403  # connections: op+
    dag = "/api/v2/dags/mlserver_test_deferrable"
    assert airflow_ui.get(dag, user=RESTRICTED_USER).status_code == 403  # kept out of the test DAGs ...
    assert airflow_ui.get(f"{dag}/dagRuns", user=RESTRICTED_USER).status_code == 403
    assert airflow_ui.get(dag, user="viewer").status_code in (200, 404)  # ... which a viewer may read
    assert airflow_ui.get("/api/v2/dags/another_dag", user=RESTRICTED_USER).status_code == 404  # not all DAGs
    refused = airflow_ui.session(None).post(
        f"{airflow_ui.url}/auth/token", json={"username": "admin", "password": "wrong"}, timeout=30
    )
    assert refused.status_code == 401
    # mlserver_default (an environment connection) is the session's local server in the API server too
    body = {
        "connection_id": "mlserver_default",
        "conn_type": "mlserver",
        "host": "127.0.0.1",
        "port": mlserver.port,
    }
    tested = airflow_ui.session("admin").post(
        f"{airflow_ui.url}/api/v2/connections/test", json=body, timeout=30
    )
    assert tested.status_code == 200, tested.text
    assert tested.json()["status"] is True, tested.json()
    assert f"127.0.0.1:{mlserver.port}" in tested.json()["message"]


@pytest.fixture
def form_connection(airflow_ui: AirflowUI) -> Any:
    """Deletes the connection the form test saves, whatever happens."""
    yield CONN_ID
    airflow_ui.session("admin").delete(f"{airflow_ui.url}/api/v2/connections/{CONN_ID}", timeout=30)


def test_add_save_and_test_a_connection(
    ui_page: UiPages, airflow_ui: AirflowUI, mlserver: LocalMLServer, form_connection: str
) -> None:
    """Add Connection -> Machine Learning Server: our fields and help texts; save; Test right, then wrong."""
    page = ui_page("admin", "/connections")
    # Tall enough that the notifications (bottom right, 5 s each) do not cover the form's Save button: on
    # a smaller screen a user (and Playwright) waits for them to go before saving the next change.
    page.set_viewport_size(TALL)
    page.get_by_role("button", name="Add Connection").click()
    form = page.get_by_role("dialog")
    form.get_by_label("Connection ID").fill(form_connection)
    form.get_by_role("combobox").click()
    page.keyboard.type("Machine")
    option = page.get_by_role("option", name="Machine Learning Server")
    expect(option).to_be_visible()
    option.click()
    expect(form.get_by_text("Machine Learning Server", exact=True)).to_be_visible()

    # the standard fields: our labels and placeholders
    for label, attribute in STANDARD_FIELDS.items():
        box = form.get_by_label(label, exact=True)
        expect(box).to_have_attribute("name", attribute)
        expect(box).to_have_attribute("placeholder", _placeholder(attribute))
    form.get_by_label("Server", exact=True).fill("127.0.0.1")
    form.get_by_label("Port", exact=True).fill(str(mlserver.port))
    form.get_by_label("Username", exact=True).fill(mlserver.username)
    form.get_by_label("Password", exact=True).fill(mlserver.password)
    screenshot(form, "connection-form-standard-fields")

    # the extra fields: labels and help texts
    form.get_by_role("button", name="Extra Fields", exact=True).click()
    declared = _declared()["conn-fields"]
    for name, label in EXTRA_LABELS.items():
        expect(_extra_field(page, form, label)).to_be_visible()
        expect(form.get_by_text(declared[name]["description"], exact=True)).to_be_visible()
    expect(_extra_field(page, form, "Verify TLS")).to_have_value("true")
    expect(_extra_field(page, form, "Max retries")).to_have_value("8")
    _extra_field(page, form, "Timeout (seconds)").fill("20")
    screenshot(form, "connection-form-extra-fields")

    form.get_by_role("button", name="Save").click()
    expect(form).to_be_hidden()
    saved = airflow_ui.get(f"/api/v2/connections/{form_connection}").json()
    assert (saved["conn_type"], saved["host"], saved["port"], saved["login"]) == (
        "mlserver",
        "127.0.0.1",
        mlserver.port,
        mlserver.username,
    )
    extra = json.loads(saved["extra"])
    assert extra["timeout"] == 20
    assert (extra["verify"], extra["max_retries"]) == (
        "true",
        8,
    )  # the defaults, as the form opened with them
    # Nothing is stored as null: every extra field has its default (a token goes in Password, no field of its own)
    assert not [name for name, value in extra.items() if value is None], extra

    # Test: connected
    url = f"http://127.0.0.1:{mlserver.port}"
    _test_button(page).click()
    ok = _toast(page, "Test Connection Successful", f"Connected to the Machine Learning Server at {url}")
    assert f"as '{mlserver.username}'" in ok.inner_text()
    screenshot(page, "connection-test-success")

    # Test: the wrong password
    _edit(page, "Password", "not-the-password")
    _test_button(page).click()
    refused = _toast(page, "Test Connection Failed", url).inner_text()
    assert "this connection" in refused, refused
    assert "refused the login" in refused and "a wrong user name or password" in refused, refused
    assert "Check the login and password of this connection." in refused, refused
    assert not re.search(r"onnection '", refused), refused  # never the made-up id the UI tests under
    screenshot(page, "connection-test-wrong-password")

    # Test: nobody listens at that port; the answer comes quickly and names the address tried
    dead = f"http://127.0.0.1:{free_port()}"
    _edit(page, "Port", dead.rsplit(":", 1)[1])
    started = time.monotonic()
    _test_button(page).click()
    unreachable = _toast(page, "Test Connection Failed", dead).inner_text()
    assert time.monotonic() - started < 15
    assert f"nothing answers at {dead} (connection refused)" in unreachable, unreachable
    assert "Check the host and port of this connection, and that the server is running." in unreachable
    assert not re.search(r"onnection '", unreachable), unreachable
    library_words = ("HTTPConnection", "urllib3", "Errno", "object at 0x", "Max retries")
    assert not [w for w in library_words if w in unreachable], unreachable
    screenshot(page, "connection-test-unreachable")
