"""The batch view, as a user meets it: the "ML Server batch" tab of a task instance in Airflow's UI.

A chunked batch with two failed records, rescored once (one of them then succeeds), runs with ``dag.test()``
(its artifacts copied by a second task); so do a mapped batch whose four executions' artifacts one task copies
(beside a plain Python task), and a batch that fails before it starts. The view is read through the plugin's
JSON route, opened in the real UI through the task instance's tab and through the extra link, and refused to
a request without a login (a browser is sent to the login page and back) and to a user who may not read the
DAG. Screenshots go to ``.artifacts/ui/batch-view*.png``.
"""

from __future__ import annotations

import contextlib
import html
import time
import urllib.parse
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
from playwright.sync_api import expect

from tests.helpers import Api
from tests.ui_fixtures import RESTRICTED_USER, USERS, AirflowUI, UiPages, free_port, screenshot

DAG_ID = "mlserver_test_ui_batch"
MAPPED_DAG = "mlserver_test_ui_mapped"
NOSTART_DAG = "mlserver_test_ui_nostart"
#: Fails a negative input; -4 only on its first attempt (a marker file in ``{seen}`` remembers it).
CODE = """import os
seen = os.path.join({seen!r}, str(x))
if x < -10 or (x < 0 and not os.path.exists(seen)):
    open(seen, 'w').close()
    raise ValueError(f'negative input {{x}}')
y = x * 2
open('out.txt', 'w').write(str(y))
"""
#: 20 records in chunks of 7: records 4 (chunk 1) and 13 (chunk 2) fail; the rescore round scores 4 again.
FAILING = (4, 13)


@pytest.fixture(scope="module")
def batch_run(
    airflow_db: Path, mlserver_conn: str, api: Api, tmp_path_factory: pytest.TempPathFactory
) -> Any:
    """Run the DAG once for the module (before any page opens: see ``tests/ui_fixtures.py``)."""
    from airflow.dag_processing.dagbag import DagBag

    folder = tmp_path_factory.mktemp("ui-batch")
    code = CODE.format(seen=str(folder))
    api.publish("uiscorer", "v1", code, {"x": "numeric"}, {"y": "numeric"}, files=["out.txt"])
    records = folder / "records.csv"
    pd.DataFrame({"x": [float(-i if i in FAILING else i) for i in range(20)]}).to_csv(records, index=False)
    bag = DagBag(dag_folder=str(Path(__file__).parent / "dags" / "ui_dags.py"))
    assert not bag.import_errors, bag.import_errors
    params = {
        "records": f"file://{records}",
        "output": f"file://{folder}/scores.parquet",
        "dest": f"file://{folder}/artifacts",
    }
    dagrun = bag.get_dag(DAG_ID).test(run_conf=params)
    assert dagrun.state == "success", dagrun.state
    return dagrun


@pytest.fixture(scope="module")
def mapped_run(batch_run: Any, tmp_path_factory: pytest.TempPathFactory) -> Any:
    """Two mapped batch tasks of 60 records (two chunks each), all four executions' artifacts copied by one
    task (120 manifest lines), then a plain Python task."""
    from airflow.dag_processing.dagbag import DagBag

    folder = tmp_path_factory.mktemp("ui-mapped")
    inputs = []
    for n in range(2):
        path = folder / f"records-{n}.csv"
        pd.DataFrame({"x": [float(1000 * n + i) for i in range(60)]}).to_csv(path, index=False)
        inputs.append(f"file://{path}")
    bag = DagBag(dag_folder=str(Path(__file__).parent / "dags" / "ui_dags.py"))
    dagrun = bag.get_dag(MAPPED_DAG).test(run_conf={"inputs": inputs, "dest": f"file://{folder}/artifacts"})
    assert dagrun.state == "success", dagrun.state
    return dagrun


@pytest.fixture(scope="module")
def nostart_run(batch_run: Any) -> Any:
    """A batch task that failed before it started an execution (its records file does not exist)."""
    from airflow.dag_processing.dagbag import DagBag

    bag = DagBag(dag_folder=str(Path(__file__).parent / "dags" / "ui_dags.py"))
    dagrun = bag.get_dag(NOSTART_DAG).test()
    assert dagrun.state == "failed", dagrun.state
    return dagrun


def view_path(dagrun: Any, task_id: str = "score", json: bool = True, map_index: int = -1) -> str:
    run = urllib.parse.quote(dagrun.run_id, safe="")
    return f"/mlserver/{'api/' if json else ''}batch/{dagrun.dag_id}/{run}/{task_id}/{map_index}"


def test_batch_view_counts_states_failures_and_artifacts(airflow_ui: AirflowUI, batch_run: Any) -> None:
    answer = airflow_ui.get(view_path(batch_run), user="viewer")
    assert answer.status_code == 200, answer.text
    view = answer.json()
    assert (view["kind"], view["service"], view["version"]) == ("batch", "uiscorer", "v1")
    assert (view["operator"], view["task_state"], view["live"]) == ("MLServerBatchOperator", "success", False)
    # record 4 failed in chunk 1 and succeeded when rescored; record 13 failed both times
    assert (view["total"], view["completed"], view["failed"], view["finished"]) == (20, 20, 1, True)
    assert [(c["round"], c["label"], c["state"], c["total"], c["failed"]) for c in view["chunks"]] == [
        (0, "chunk 1", "Complete", 7, 1),
        (0, "chunk 2", "Complete", 7, 1),
        (0, "chunk 3", "Complete", 6, 0),
        (1, "rescore 1", "Complete", 2, 1),
    ]
    (failure,) = view["failures"]
    assert (failure["record"], failure["where"]) == (13, "rescore 1")  # the results file's numbering
    assert "negative input -13.0" in failure["message"]
    assert view["output_uri"].endswith("/scores.parquet")
    (manifest,) = view["manifests"]
    assert manifest["task_id"] == "collect_artifacts" and manifest["problem"] is None
    assert manifest["counts"]["copied"] == 6  # the first chunk's 7 records, one of which failed
    artifacts = airflow_ui.get(view_path(batch_run, "collect_artifacts"), user="viewer").json()
    assert (
        artifacts["kind"] == "artifacts"
        and artifacts["chunks"][0]["execution_id"] == view["chunks"][0]["execution_id"]
    )


def test_a_finished_batch_shows_each_execution_s_own_times_and_no_eta(
    airflow_ui: AirflowUI, batch_run: Any
) -> None:
    """Pending and running apart, from the polls that saw them (so "about"); the rate over the running time
    only; no ETA once finished; and nothing that moves as time passes."""
    first = airflow_ui.get(view_path(batch_run), user="viewer").json()
    for chunk in first["chunks"]:
        assert chunk["took"]["qualifier"] == "about" and chunk["took"]["value"] >= 0, chunk
        assert chunk["eta"] is None, chunk
        # the driver or its trigger saw each execution finish; the running start may fall between polls
        assert chunk["running"] is None or chunk["running"]["qualifier"] == "about", chunk
    assert first["eta"] is None and first["elapsed"]["qualifier"] == "about"
    assert first["rate"]["qualifier"] in ("about", "at least")  # "at least": no poll saw one running
    time.sleep(1.5)
    again = airflow_ui.get(view_path(batch_run), user="viewer").json()
    assert (again["rate"], again["elapsed"]) == (first["rate"], first["elapsed"])  # not falling with time
    assert [c["took"] for c in again["chunks"]] == [c["took"] for c in first["chunks"]]
    page = airflow_ui.get(view_path(batch_run, json=False), user="viewer").text
    assert 'http-equiv="refresh"' not in page and "refreshes every" not in page and "ETA" not in page
    assert "<span>failed record (after rescoring)</span>" in page and "then 1 rescore execution<" in page


def test_tasks_that_are_not_batches_and_things_that_do_not_exist(
    airflow_ui: AirflowUI, mapped_run: Any, nostart_run: Any
) -> None:
    plain = airflow_ui.get(view_path(mapped_run, "summary", json=False), user="viewer")
    assert plain.status_code == 200
    assert (
        "No Machine Learning Server batch here" in plain.text and "not a task of this provider" in plain.text
    )
    assert (
        "Web service" not in plain.text
        and "refresh" not in plain.text
        and "<code>@task</code> task" in plain.text
    )
    # it returns a "manifest" of its own, as the example's summary does: not taken for an artifacts task
    assert airflow_ui.get(view_path(mapped_run, "summary"), user="viewer").json()["kind"] == "other"
    failed = airflow_ui.get(view_path(nostart_run, json=False), user="viewer").text
    assert "(failed) started no batch execution" in failed and "refresh" not in failed
    run = urllib.parse.quote(mapped_run.run_id, safe="")
    missing = {
        f"/mlserver/batch/mlserver_test_no_such_dag/{run}/score/-1": "There is no DAG 'mlserver_test_no_such_dag'",
        f"/mlserver/batch/{MAPPED_DAG}/no_such_run/score/-1": "has no run 'no_such_run'",
        f"/mlserver/batch/{MAPPED_DAG}/{run}/no_such_task/-1": "has no task 'no_such_task'",
        f"/mlserver/batch/{MAPPED_DAG}/{run}/score/7": "has no map index 7",
        f"/mlserver/batch/{MAPPED_DAG}/{run}/score/%7BMAP_INDEX%7D": "is mapped",
    }
    for path, reason in missing.items():
        page = airflow_ui.get(path, user="admin")
        assert page.status_code == 404 and reason in html.unescape(page.text), (path, page.text[:500])
        assert "refresh" not in page.text
        api = airflow_ui.get(path.replace("/mlserver/batch/", "/mlserver/api/batch/"), user="admin")
        assert api.status_code == 404 and reason in api.json()["detail"]


def test_a_running_task_that_has_not_started_an_execution_says_so(
    airflow_ui: AirflowUI, nostart_run: Any
) -> None:
    """In its first seconds a batch task runs with no execution yet (set here in the database: the moment is
    too short to catch): the view says so, and refreshes; once it failed, it stops refreshing."""
    with task_instance_state(nostart_run, "score", "running"):
        page = airflow_ui.get(view_path(nostart_run, json=False), user="viewer").text
        assert "is running and has not started a batch execution yet" in page, page[-800:]
        assert 'http-equiv="refresh"' in page and "may not be an ML Server task" not in page
    with task_instance_state(
        nostart_run, "score", "scheduled"
    ):  # a tab opened before the task runs follows it
        page = airflow_ui.get(view_path(nostart_run, json=False), user="viewer").text
        assert "has not run yet; this page refreshes every 10 s" in page and 'http-equiv="refresh"' in page
    page = airflow_ui.get(view_path(nostart_run, json=False), user="viewer").text
    assert 'http-equiv="refresh"' not in page


def test_a_mapped_task_instance_shows_its_own_records_and_artifacts_a_page_at_a_time(
    airflow_ui: AirflowUI, mapped_run: Any
) -> None:
    views = [airflow_ui.get(view_path(mapped_run, map_index=i), user="viewer").json() for i in (0, 1)]
    for index, view in enumerate(views):
        assert (view["map_index"], view["total"], len(view["chunks"])) == (index, 60, 2), view
        (manifest,) = view["manifests"]
        assert manifest["task_id"] == "collect_artifacts" and manifest["problem"] is None
        # its own 60 lines of the 120 the artifacts task copied, numbered as in its own results
        assert (manifest["shown"], manifest["counts"], manifest["pages"]) == (60, {"copied": 60}, 2)
        assert manifest["records"] == list(range(50))
    ids = [{c["execution_id"] for c in view["chunks"]} for view in views]
    assert not ids[0] & ids[1]
    second = airflow_ui.get(view_path(mapped_run, map_index=1) + "?page=2", user="viewer").json()
    assert (second["manifests"][0]["page"], second["manifests"][0]["records"]) == (2, list(range(50, 60)))
    whole = airflow_ui.get(view_path(mapped_run, "collect_artifacts"), user="viewer").json()
    assert (whole["manifests"][0]["shown"], whole["manifests"][0]["pages"]) == (120, 3)


def test_the_extra_link_leads_to_the_tab_inside_airflow(
    airflow_ui: AirflowUI, batch_run: Any, mapped_run: Any
) -> None:
    for dagrun, index, tail in ((batch_run, -1, "/tasks/score"), (mapped_run, 1, "/tasks/score/mapped/1")):
        run = urllib.parse.quote(dagrun.run_id, safe="")
        query = f"?map_index={index}" if index >= 0 else ""
        answer = airflow_ui.get(
            f"/api/v2/dags/{dagrun.dag_id}/dagRuns/{run}/taskInstances/score/links{query}", user="viewer"
        )
        assert answer.status_code == 200, answer.text
        link = answer.json()["extra_links"]["ML Server batch"]
        as_the_ui_writes = urllib.parse.quote(dagrun.run_id, safe=":+@")  # its own tab links keep ":" and "+"
        assert link == f"/dags/{dagrun.dag_id}/runs/{as_the_ui_writes}{tail}/plugin/mlserver-batch", link


def test_a_browser_that_is_not_logged_in_goes_to_the_login_and_comes_back(
    airflow_ui: AirflowUI, batch_run: Any, ui_page: UiPages
) -> None:
    path = view_path(batch_run, json=False)
    answer = airflow_ui.session(None).get(
        airflow_ui.url + path, headers={"Accept": "text/html"}, allow_redirects=False, timeout=30
    )
    assert answer.status_code in (302, 303, 307) and "/auth/login" in answer.headers["location"], (
        answer.headers
    )
    query = urllib.parse.urlsplit(answer.headers["location"]).query
    assert urllib.parse.parse_qs(query)["next"] == [path], answer.headers  # back to where it was, as it was
    assert airflow_ui.get(path, user=None).status_code == 401  # a script still gets the status
    page = ui_page(None, path)
    page.get_by_label("Username").fill("viewer")
    page.get_by_label("Password").fill(USERS["viewer"].password)
    page.get_by_role("button", name="Sign in").click()
    page.wait_for_url(lambda url: "/mlserver/batch/" in url)
    expect(page.locator("#records-done")).to_have_text("20 / 20")


def test_batch_view_tab_in_the_ui(ui_page: UiPages, batch_run: Any) -> None:
    run = urllib.parse.quote(batch_run.run_id, safe="")
    page = ui_page("viewer", f"/dags/{DAG_ID}/runs/{run}/tasks/score/plugin/mlserver-batch")
    frame = page.frame_locator("iframe").first
    expect(frame.get_by_text("uiscorer")).to_be_visible()
    expect(frame.locator("#records-done")).to_have_text("20 / 20")
    expect(frame.locator("#records-failed")).to_have_text("1")
    expect(frame.get_by_text("failed record (after rescoring)", exact=True)).to_be_visible()  # one: singular
    expect(frame.locator("#chunks tr")).to_have_count(5)  # a header, three chunks and one rescore
    expect(frame.locator("#chunks")).to_contain_text("about")
    expect(frame.locator("#failures")).to_contain_text("negative input -13.0")
    expect(frame.locator("#eta")).to_have_count(0)
    screenshot(page, "batch-view")
    link = page.evaluate(
        "async (u) => (await (await fetch(u)).json()).extra_links['ML Server batch']",
        f"/api/v2/dags/{DAG_ID}/dagRuns/{run}/taskInstances/score/links",
    )
    page.goto(f"{page.url.split('/dags/')[0]}{link}")  # the extra link, as its button leads
    frame = page.frame_locator("iframe").first
    expect(frame.locator("#records-done")).to_have_text("20 / 20")
    tab = page.get_by_role("link", name="ML Server batch").or_(
        page.get_by_role("tab", name="ML Server batch")
    )
    expect(tab.first).to_have_attribute("aria-current", "page")  # the UI shows its own tab as chosen


def test_the_tab_of_a_mapped_task_instance_and_its_next_page(ui_page: UiPages, mapped_run: Any) -> None:
    run = urllib.parse.quote(mapped_run.run_id, safe="")
    page = ui_page("viewer", f"/dags/{MAPPED_DAG}/runs/{run}/tasks/score/mapped/1/plugin/mlserver-batch")
    tab = (
        page.get_by_role("tab", name="ML Server batch")
        .or_(page.get_by_role("link", name="ML Server batch"))
        .first
    )
    expect(tab).to_be_visible()
    assert tab.evaluate(LINES_OF_TEXT) == 1  # the label does not wrap (Airflow's own labels do here)
    frame = page.frame_locator("iframe").first
    expect(frame.locator("#records-done")).to_have_text("60 / 60")
    expect(frame.locator(".pager")).to_contain_text("Artifacts 1\u201350 of 60")
    frame.get_by_role("link", name="next").click()
    expect(frame.locator(".pager")).to_contain_text("Artifacts 51\u201360 of 60")
    screenshot(page, "batch-view-mapped")


def test_the_plain_task_s_tab(ui_page: UiPages, mapped_run: Any) -> None:
    run = urllib.parse.quote(mapped_run.run_id, safe="")
    page = ui_page("viewer", f"/dags/{MAPPED_DAG}/runs/{run}/tasks/summary/plugin/mlserver-batch")
    frame = page.frame_locator("iframe").first
    expect(frame.locator("#reason")).to_contain_text("not a task of this provider")
    screenshot(page, "batch-view-not-ours")


def test_the_view_needs_a_login_and_read_access_to_the_dag(airflow_ui: AirflowUI, batch_run: Any) -> None:
    for path in (view_path(batch_run), view_path(batch_run, json=False)):
        assert airflow_ui.get(path, user=None).status_code == 401
        refused = airflow_ui.get(path, user=RESTRICTED_USER)
        assert refused.status_code == 403, refused.text
        assert "uiscorer" not in refused.text and "execution" not in refused.text.lower()


def test_providers_page_leads_to_a_page_that_answers(airflow_ui: AirflowUI) -> None:
    providers = airflow_ui.get("/api/v2/providers", user="viewer").json()["providers"]
    (ours,) = [p for p in providers if p["package_name"] == "airflow-mlserver"]
    docs = urllib.parse.urljoin(
        f"{airflow_ui.url}/providers", ours["documentation_url"]
    )  # as the browser does
    page = airflow_ui.session("viewer").get(docs, timeout=30)
    assert page.status_code == 200 and "MLServerBatchOperator" in page.text, docs


#: How many lines the longest text of an element takes on the page.
LINES_OF_TEXT = """e => {
  const walker = document.createTreeWalker(e, NodeFilter.SHOW_TEXT);
  let node, lines = 0;
  while ((node = walker.nextNode())) {
    if (!node.textContent.trim()) continue;
    const range = document.createRange();
    range.selectNodeContents(node);
    const tops = new Set(Array.from(range.getClientRects()).map(r => Math.round(r.top)));
    lines = Math.max(lines, tops.size);
  }
  return lines;
}"""


@contextlib.contextmanager
def task_instance_state(dagrun: Any, task_id: str, state: str) -> Iterator[None]:
    """Set a task instance's state in the metadata database for a while, then put the old one back."""
    from airflow.models.taskinstance import TaskInstance
    from airflow.utils.session import create_session
    from sqlalchemy import select, update

    where = (
        TaskInstance.dag_id == dagrun.dag_id,
        TaskInstance.run_id == dagrun.run_id,
        TaskInstance.task_id == task_id,
    )
    with create_session() as session:
        before = session.scalar(select(TaskInstance.state).where(*where))
        session.execute(update(TaskInstance).where(*where).values(state=state))
    try:
        yield
    finally:
        with create_session() as session:
            session.execute(update(TaskInstance).where(*where).values(state=before))


def test_a_view_that_cannot_read_the_server_or_the_connection_says_so(
    airflow_ui: AirflowUI, batch_run: Any
) -> None:
    """Never a 500: the page names the connection and the cause, and shows what Airflow keeps. The task's
    rendered connection id is switched in the database to a connection whose server is down, then to one that
    does not exist (as if the task had used them)."""
    admin = airflow_ui.session("admin")
    down = {
        "connection_id": "mlserver_test_down",
        "conn_type": "mlserver",
        "host": "127.0.0.1",
        "port": free_port(),
        "login": "someone",
        "password": "secret-of-the-down-connection",
    }
    created = admin.post(f"{airflow_ui.url}/api/v2/connections", json=down, timeout=30)
    assert created.status_code in (201, 409), created.text
    cases = {
        "mlserver_test_down": "Could not read the executions through connection 'mlserver_test_down'",
        "mlserver_test_missing": "mlserver_test_missing",
    }
    for conn_id, said in cases.items():
        with rendered_field(batch_run, "score", "mlserver_conn_id", conn_id):
            page = airflow_ui.get(view_path(batch_run, json=False), user="viewer")
        assert page.status_code == 200, (conn_id, page.text[-500:])
        problem = html.unescape(page.text.split('<div class="problem">', 1)[-1].split("</div>", 1)[0])
        assert said in problem and "Could not" in problem, (conn_id, problem)
        assert "Traceback" not in page.text and "urllib3" not in page.text and "Errno" not in page.text, (
            problem
        )


@contextlib.contextmanager
def rendered_field(dagrun: Any, task_id: str, name: str, value: Any) -> Iterator[None]:
    """Set one rendered template field of a task instance in the metadata database for a while."""
    from airflow.models.renderedtifields import RenderedTaskInstanceFields as Rtif
    from airflow.utils.session import create_session
    from sqlalchemy import select, update

    where = (Rtif.dag_id == dagrun.dag_id, Rtif.run_id == dagrun.run_id, Rtif.task_id == task_id)
    with create_session() as session:
        before = session.scalar(select(Rtif.rendered_fields).where(*where))
        session.execute(update(Rtif).where(*where).values(rendered_fields={**before, name: value}))
    try:
        yield
    finally:
        with create_session() as session:
            session.execute(update(Rtif).where(*where).values(rendered_fields=before))


@pytest.fixture(scope="module")
def publish_runs(batch_run: Any, tmp_path_factory: pytest.TempPathFactory) -> list[Any]:
    """Publish a service, score with it and keep only its newest version, twice: the second run's code is new,
    so it publishes a new version and deletes the first."""
    from airflow.dag_processing.dagbag import DagBag

    folder = tmp_path_factory.mktemp("ui-publish")
    pd.DataFrame({"x": [1.0, 2.0]}).to_csv(folder / "records.csv", index=False)
    bag = DagBag(dag_folder=str(Path(__file__).parent / "dags" / "services_dags.py"))
    dag = bag.get_dag("mlserver_test_publish_then_score")
    runs = []
    for n, code in enumerate(("y = x * 2\n", "y = x * 3\n")):
        params = {"service": "uipublished", "code": code, "records": f"file://{folder}/records.csv"}
        dagrun = dag.test(run_conf={**params, "output": f"file://{folder}/scores-{n}.csv"})
        assert dagrun.state == "success", dagrun.state
        runs.append(dagrun)
    return runs


def test_the_tab_of_a_publish_task_shows_what_was_published(
    airflow_ui: AirflowUI, publish_runs: list[Any], ui_page: UiPages
) -> None:
    view = airflow_ui.get(view_path(publish_runs[1], "publish"), user="viewer").json()
    assert (view["kind"], view["operator"]) == ("publish", "MLServerPublishServiceOperator")
    page = airflow_ui.get(view_path(publish_runs[1], "publish", json=False), user="viewer").text
    assert "Published this version." in page and "x: numeric" in page and "y: numeric" in page
    assert "refresh" not in page
    tidy = airflow_ui.get(view_path(publish_runs[1], "tidy", json=False), user="viewer").text
    assert "1 version deleted" in html.unescape(tidy), tidy[-600:]
    run = urllib.parse.quote(publish_runs[1].run_id, safe="")
    browser = ui_page(
        "viewer", f"/dags/mlserver_test_publish_then_score/runs/{run}/tasks/publish/plugin/mlserver-batch"
    )
    frame = browser.frame_locator("iframe").first
    expect(frame.locator("#published")).to_have_text("Published this version.")
    expect(frame.locator("#service")).to_contain_text("Content digest")
    screenshot(browser, "batch-view-publish")
