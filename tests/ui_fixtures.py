"""Fixtures for tests of what a user sees in Airflow's UI: a real API server, real logins, a real Chromium.

- ``airflow_ui`` (session): ``airflow api-server`` in the session's ``AIRFLOW_HOME`` (the database that
  ``airflow_db`` migrated, so DAG runs made with ``dag.test()`` in the test process show up in it, and
  ``mlserver_default`` pointing at the session's ``mlserver``), with connection testing enabled and fixed
  users (:data:`USERS`): ``admin``, ``viewer``, and ``outsider``, a viewer that may not see the test DAGs
  (:data:`RESTRICTED_DAGS`). ``airflow_ui.get(path, user)`` answers a REST call made with a JWT from
  ``POST /auth/token`` (``user=None``: no login); ``airflow_ui.session(user)`` for other methods.
- ``chromium`` (session): one headless Debian Chromium (``/usr/bin/chromium``) for the whole session.
- ``ui_page`` (per test): ``ui_page("admin", "/connections")`` is a Playwright ``Page`` of a new browser
  context, logged in as that user through the real login page (once per user and session; the cookies
  are reused afterwards). ``ui_page(None, path)`` is not logged in. A failing test leaves screenshots of
  its pages in ``.artifacts/ui/failed-*.png``.
- :func:`screenshot` writes ``.artifacts/ui/<name>.png`` for a reviewer.

Playwright's sync API marks an asyncio loop as running in its thread for as long as it lives, which breaks
``asyncio.run()`` (and so ``dag.test()`` of a deferrable task) in the same thread. So the browser process
lives for the session, but Playwright itself only from a test's first ``ui_page(...)`` call to the end of
that test, connected to the browser over CDP: run the DAGs a test needs *before* it opens its first page
(or in a fixture).
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Generator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest
import requests

if TYPE_CHECKING:
    from playwright.sync_api import Browser, Locator, Page, Playwright, StorageState, ViewportSize

REPO = Path(__file__).resolve().parent.parent
#: Where screenshots go (git-ignored), for a reviewer to look at.
ARTIFACTS = REPO / ".artifacts" / "ui"
AIRFLOW = str(Path(sys.executable).parent / "airflow")
#: Debian's package; Playwright never downloads a browser here (``make test`` installs it).
CHROMIUM = "/usr/bin/chromium"
#: How long ``expect(...)`` waits for the UI (Playwright's default, 5 s, is short for a busy 2-core CI).
EXPECT_TIMEOUT_MS = 15_000
#: Size of every page, so screenshots are alike from run to run.
VIEWPORT: ViewportSize = {"width": 1440, "height": 1000}


@dataclass(frozen=True)
class UiUser:
    """A user of the SimpleAuthManager: name, role (viewer, user, op, admin) and password."""

    name: str
    role: str
    password: str


#: The users of the API server. ``outsider`` is a viewer that may not see :data:`RESTRICTED_DAGS`.
USERS = {
    user.name: user
    for user in (
        UiUser("admin", "admin", "admin-ui-tests-pw"),
        UiUser("viewer", "viewer", "viewer-ui-tests-pw"),
        UiUser("outsider", "viewer", "outsider-ui-tests-pw"),
    )
}
RESTRICTED_USER = "outsider"
#: ``fnmatch`` patterns of the DAG ids that :data:`RESTRICTED_USER` may not read: every test DAG.
RESTRICTED_DAGS = "mlserver_test_*"


def free_port() -> int:
    """A TCP port nobody listens on right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def _stop(proc: subprocess.Popen[bytes], timeout: float = 20) -> None:
    """Stop a process started in its own session, and its children: SIGTERM, then SIGKILL."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGTERM)
    with contextlib.suppress(subprocess.TimeoutExpired):
        proc.wait(timeout)
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)  # children that outlived their parent, too
    with contextlib.suppress(subprocess.TimeoutExpired):
        proc.wait(10)


def screenshot(target: Page | Locator, name: str, full_page: bool = True) -> Path:
    """Write a PNG of a page (whole, by default) or of one element to ``.artifacts/ui/<name>.png``."""
    from playwright.sync_api import Page

    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    path = ARTIFACTS / f"{name}.png"
    if isinstance(target, Page):  # animations: toasts are pictured as they end up, not half faded in
        target.screenshot(path=str(path), full_page=full_page, animations="disabled")
    else:
        target.screenshot(path=str(path), animations="disabled")
    return path


class AirflowUI:
    """The session's Airflow API server (REST API and UI) and its users."""

    def __init__(self, home: Path, port: int, env: dict[str, str]) -> None:
        self.home = home
        self.port = port
        self.url = f"http://127.0.0.1:{port}"
        self.env = env
        self.log_path = home / "ui-api-server.log"
        self.startup_seconds = 0.0
        self.proc: subprocess.Popen[bytes] | None = None
        self._tokens: dict[str, str] = {}

    def start(self, timeout: float = 180) -> None:
        """Start the server and wait until it answers its health route; fail with its log otherwise."""
        started = time.monotonic()
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(
                [AIRFLOW, "api-server", "--host", "127.0.0.1", "--port", str(self.port), "--workers", "1"],
                env=self.env,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        while True:
            try:
                if requests.get(f"{self.url}/api/v2/monitor/health", timeout=5).status_code == 200:
                    break
            except requests.RequestException:
                pass
            if self.proc.poll() is not None or time.monotonic() - started > timeout:
                self.stop()
                pytest.fail(f"the Airflow API server did not come up at {self.url}\n{self.logs()}")
            time.sleep(0.5)
        self.startup_seconds = time.monotonic() - started

    def stop(self) -> None:
        """Stop the server and every process it started."""
        if self.proc is not None:
            _stop(self.proc)
            self.proc = None

    def logs(self, tail: int = 6000) -> str:
        """The end of the server's log, for failure messages."""
        text = self.log_path.read_text(errors="replace") if self.log_path.exists() else "(no log)"
        return f"--- {self.log_path}\n{text[-tail:]}"

    def token(self, user: str) -> str:
        """A JWT for ``user`` from the simple auth manager's ``POST /auth/token`` (cached per session)."""
        if user not in self._tokens:
            answer = requests.post(
                f"{self.url}/auth/token",
                json={"username": user, "password": USERS[user].password},
                timeout=30,
            )
            assert answer.status_code == 201, f"login of {user}: {answer.status_code} {answer.text}"
            self._tokens[user] = answer.json()["access_token"]
        return self._tokens[user]

    def session(self, user: str | None) -> requests.Session:
        """A ``requests`` session for the REST API, logged in as ``user`` (``None``: not logged in)."""
        session = requests.Session()
        if user is not None:
            session.headers["Authorization"] = f"Bearer {self.token(user)}"
        return session

    def get(self, path: str, user: str | None = "admin", **kwargs: Any) -> requests.Response:
        """``GET`` a path of the server (``/api/v2/...``, ``/ui/...``, a plugin's route) as ``user``."""
        kwargs.setdefault("timeout", 30)
        return self.session(user).get(f"{self.url}{path}", **kwargs)


@pytest.fixture(scope="session")
def airflow_ui(airflow_db: Path, mlserver_conn: str) -> Iterator[AirflowUI]:
    """One Airflow API server for the session, on the session's database, with fixed users.

    Connection testing is enabled; the auth manager is SimpleAuthManager with :data:`RESTRICTED_USER` kept
    out of :data:`RESTRICTED_DAGS` (``tests/ui_auth.py``). Its environment is the test process's, taken
    after ``mlserver_conn`` set ``mlserver_default`` to the session's local ML Server, so pages and routes
    of the provider that read that connection reach the same server as the DAGs the tests run.
    """
    from tests.ui_auth import RESTRICTED_DAGS_ENV, RESTRICTED_USER_ENV  # imports Airflow's API server code

    home = airflow_db
    passwords = home / "ui-passwords.json"
    passwords.write_text(json.dumps({u.name: u.password for u in USERS.values()}))
    port = free_port()
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")])),
        "AIRFLOW__CORE__TEST_CONNECTION": "Enabled",
        "AIRFLOW__CORE__AUTH_MANAGER": "tests.ui_auth.RestrictedDagsAuthManager",
        "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_USERS": ",".join(f"{u.name}:{u.role}" for u in USERS.values()),
        "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_PASSWORDS_FILE": str(passwords),
        "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_ALL_ADMINS": "False",
        "AIRFLOW__API__HOST": "127.0.0.1",
        "AIRFLOW__API__PORT": str(port),
        "AIRFLOW__API_AUTH__JWT_SECRET": "ui-tests-jwt-secret-0123456789abcdef",
        RESTRICTED_USER_ENV: RESTRICTED_USER,
        RESTRICTED_DAGS_ENV: RESTRICTED_DAGS,
    }
    server = AirflowUI(home, port, env)
    server.start()
    try:
        yield server
    finally:
        server.stop()


class Chromium:
    """One headless Chromium process; Playwright connects to it over CDP (see the module docstring)."""

    def __init__(self, profile: Path) -> None:
        self.profile = profile
        self.endpoint = ""
        self.startup_seconds = 0.0
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self, timeout: float = 60) -> None:
        """Start the browser with a private profile and wait for its DevTools port."""
        assert Path(CHROMIUM).exists(), f"{CHROMIUM} is missing: install Debian's chromium (make test does)"
        started = time.monotonic()
        log = open(self.profile.parent / "chromium.log", "ab")  # noqa: SIM115 - owned by the child process
        self.proc = subprocess.Popen(
            [
                CHROMIUM,
                "--headless",
                "--no-sandbox",  # root in CI
                "--disable-gpu",
                "--disable-dev-shm-usage",
                "--no-first-run",
                "--no-default-browser-check",
                "--disable-background-networking",
                "--disable-component-update",
                "--disable-sync",
                "--disable-extensions",
                "--disable-background-timer-throttling",
                "--disable-renderer-backgrounding",
                "--disable-backgrounding-occluded-windows",
                "--password-store=basic",
                "--hide-scrollbars",
                "--mute-audio",
                "--lang=en-US",
                "--remote-debugging-address=127.0.0.1",
                "--remote-debugging-port=0",
                f"--user-data-dir={self.profile}",
                "about:blank",
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        log.close()
        port_file = self.profile / "DevToolsActivePort"
        while not (port_file.exists() and port_file.read_text().strip()):
            if self.proc.poll() is not None or time.monotonic() - started > timeout:
                self.stop()
                text = (self.profile.parent / "chromium.log").read_text(errors="replace")[-3000:]
                pytest.fail(f"Chromium did not start\n{text}")
            time.sleep(0.1)
        self.endpoint = f"http://127.0.0.1:{port_file.read_text().split()[0]}"
        self.startup_seconds = time.monotonic() - started

    def stop(self) -> None:
        """Stop the browser and its helper processes."""
        if self.proc is not None:
            _stop(self.proc, timeout=10)
            self.proc = None


@pytest.fixture(scope="session")
def chromium(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Chromium]:
    """The session's one browser process."""
    for stale in ARTIFACTS.glob("failed-*.png"):  # pictures of an earlier run's failures would mislead
        stale.unlink()
    profile = tmp_path_factory.mktemp("chromium") / "profile"
    browser = Chromium(profile)
    browser.start()
    try:
        yield browser
    finally:
        browser.stop()
        shutil.rmtree(profile, ignore_errors=True)


@pytest.fixture(scope="session")
def ui_logins() -> dict[str, StorageState]:
    """Cookies and local storage of each user after its login through the UI, filled on first use."""
    return {}


class UiPages:
    """Opens pages of the session's Airflow UI, each in a new browser context (its own cookies)."""

    def __init__(self, chromium: Chromium, airflow: AirflowUI, logins: dict[str, StorageState]) -> None:
        self.chromium = chromium
        self.airflow = airflow
        self.logins = logins
        self.pages: list[Page] = []
        self._playwright: Playwright | None = None
        self._browser: Browser | None = None

    def __call__(self, user: str | None = "admin", path: str = "/") -> Page:
        """A page at ``path`` of the UI, logged in as ``user`` (``None``: not logged in)."""
        browser = self.browser()
        state = self.login_state(user) if user is not None else None
        context = browser.new_context(viewport=VIEWPORT, storage_state=state, locale="en-US")
        context.set_default_timeout(30_000)
        page = context.new_page()
        self.pages.append(page)
        page.goto(f"{self.airflow.url}{path}")
        return page

    def browser(self) -> Browser:
        """Playwright, connected to the session's Chromium (started on the test's first page)."""
        if self._browser is None:
            from playwright.sync_api import expect, sync_playwright

            expect.set_options(timeout=EXPECT_TIMEOUT_MS)
            self._playwright = sync_playwright().start()
            self._browser = self._playwright.chromium.connect_over_cdp(self.chromium.endpoint)
        return self._browser

    def login_state(self, user: str) -> StorageState:
        """Log ``user`` in through the simple auth manager's login page, once per session.

        The login goes on to ``/ui/auth/me`` (who the cookie says we are) rather than to the UI itself,
        which would load the UI's 7 MB of scripts once more for nothing.
        """
        if user not in self.logins:
            context = self.browser().new_context(viewport=VIEWPORT, locale="en-US")
            try:
                page = context.new_page()
                page.goto(f"{self.airflow.url}/auth/login?next=/ui/auth/me")
                page.get_by_label("Username").fill(user)
                page.get_by_label("Password").fill(USERS[user].password)
                page.get_by_role("button", name="Sign in").click()
                page.wait_for_url(lambda url: "/auth/login" not in url)
                me = json.loads(page.locator("body").inner_text())
                assert me.get("username") == user, f"logged in as {me}, not {user}"
                state = context.storage_state()
                assert any(c["name"] == "_token" for c in state.get("cookies", [])), state
                self.logins[user] = state
            finally:
                context.close()
        return self.logins[user]

    def close(self, failed_test: str | None = None) -> None:
        """Close every context; first screenshot the pages of a failed test."""
        try:
            for number, page in enumerate(self.pages):
                if failed_test is not None and not page.is_closed():
                    with contextlib.suppress(Exception):
                        name = re.sub(r"[^A-Za-z0-9_.-]+", "_", failed_test)
                        screenshot(page, f"failed-{name}-{number}")
                with contextlib.suppress(Exception):
                    page.context.close()
        finally:
            self.pages.clear()
            if self._playwright is not None:
                self._playwright.stop()  # no asyncio loop of Playwright's is left marked as running
            self._playwright = self._browser = None


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(
    item: pytest.Item, call: pytest.CallInfo[None]
) -> Generator[None, pytest.TestReport, pytest.TestReport]:
    """Keep each phase's report on the test item, so ``ui_page`` knows at teardown whether the test failed."""
    report = yield
    setattr(item, f"_report_{call.when}", report)
    return report


@pytest.fixture
def ui_page(
    request: pytest.FixtureRequest,
    chromium: Chromium,
    airflow_ui: AirflowUI,
    ui_logins: dict[str, StorageState],
) -> Iterator[UiPages]:
    """A factory of logged-in pages: ``ui_page(user, path)``; everything is closed when the test ends."""
    pages = UiPages(chromium, airflow_ui, ui_logins)
    yield pages
    report = getattr(request.node, "_report_call", None)
    pages.close(failed_test=request.node.name if report is not None and report.failed else None)
