"""The batch view, as a user meets it: the "ML Server batch" tab of a task instance in Airflow's UI.

A chunked batch with two failed records, rescored once (one of them then succeeds), runs with ``dag.test()``
(its artifacts copied by a second task); then the view is read through the plugin's JSON route, opened in the
real UI through the task instance's tab, and refused to a request without a login and to a user who may not
read the DAG. Screenshots go to
``.artifacts/ui/batch-view*.png``.
"""

from __future__ import annotations

import urllib.parse
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
from playwright.sync_api import expect

from tests.helpers import Api
from tests.ui_fixtures import RESTRICTED_USER, AirflowUI, UiPages, screenshot

DAG_ID = "mlserver_test_ui_batch"
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


def view_path(dagrun: Any, task_id: str = "score", json: bool = True) -> str:
    run = urllib.parse.quote(dagrun.run_id, safe="")
    return f"/mlserver/{'api/' if json else ''}batch/{DAG_ID}/{run}/{task_id}/-1"


def test_batch_view_counts_states_failures_and_artifacts(airflow_ui: AirflowUI, batch_run: Any) -> None:
    answer = airflow_ui.get(view_path(batch_run), user="viewer")
    assert answer.status_code == 200, answer.text
    view = answer.json()
    assert (view["kind"], view["service"], view["version"]) == ("batch", "uiscorer", "v1")
    # record 4 failed in chunk 1 and succeeded when rescored; record 13 failed both times
    assert (view["total"], view["completed"], view["failed"], view["finished"]) == (20, 20, 1, True)
    assert [(c["round"], c["chunk"], c["state"], c["total"], c["failed"]) for c in view["chunks"]] == [
        (0, 1, "Complete", 7, 1),
        (0, 2, "Complete", 7, 1),
        (0, 3, "Complete", 6, 0),
        (1, 1, "Complete", 2, 1),
    ]
    (failure,) = view["failures"]
    assert (failure["record"], failure["where"]) == (13, "rescore 1, part 1")  # the results file's numbering
    assert "negative input -13.0" in failure["message"]
    assert view["output_uri"].endswith("/scores.parquet")
    (manifest,) = view["manifests"]
    assert manifest["task_id"] == "collect_artifacts" and manifest["problem"] is None
    assert manifest["counts"]["copied"] == 6  # the first chunk's 7 records, one of which failed
    assert view["rate"] > 0 and view["eta_seconds"] is None
    artifacts = airflow_ui.get(view_path(batch_run, "collect_artifacts"), user="viewer").json()
    assert (
        artifacts["kind"] == "artifacts"
        and artifacts["chunks"][0]["execution_id"] == view["chunks"][0]["execution_id"]
    )


def test_the_view_needs_a_login_and_read_access_to_the_dag(airflow_ui: AirflowUI, batch_run: Any) -> None:
    for path in (view_path(batch_run), view_path(batch_run, json=False)):
        assert airflow_ui.get(path, user=None).status_code == 401
        refused = airflow_ui.get(path, user=RESTRICTED_USER)
        assert refused.status_code == 403, refused.text
        assert "uiscorer" not in refused.text and "execution" not in refused.text.lower()
    assert airflow_ui.get("/mlserver/docs", user=None).status_code == 401


def test_extra_link_and_providers_page_lead_to_pages_that_answer(
    airflow_ui: AirflowUI, batch_run: Any
) -> None:
    run = urllib.parse.quote(batch_run.run_id, safe="")
    links = airflow_ui.get(f"/api/v2/dags/{DAG_ID}/dagRuns/{run}/taskInstances/score/links", user="viewer")
    assert links.status_code == 200, links.text
    link = links.json()["extra_links"]["ML Server batch"]
    assert link == view_path(batch_run, json=False)
    assert airflow_ui.get(link, user="viewer").status_code == 200
    providers = airflow_ui.get("/api/v2/providers", user="viewer").json()["providers"]
    (ours,) = [p for p in providers if p["package_name"] == "airflow-mlserver"]
    docs = urllib.parse.urljoin(
        f"{airflow_ui.url}/providers", ours["documentation_url"]
    )  # as the browser does
    page = airflow_ui.session("viewer").get(docs, timeout=30)
    assert page.status_code == 200 and "MLServerBatchOperator" in page.text, docs


def test_batch_view_tab_in_the_ui(ui_page: UiPages, batch_run: Any) -> None:
    run = urllib.parse.quote(batch_run.run_id, safe="")
    page = ui_page("viewer", f"/dags/{DAG_ID}/runs/{run}/tasks/score")
    page.get_by_role("tab", name="ML Server batch").or_(
        page.get_by_role("link", name="ML Server batch")
    ).first.click()
    frame = page.frame_locator("iframe").first
    expect(frame.get_by_text("uiscorer")).to_be_visible()
    expect(frame.locator("#records-done")).to_have_text("20 / 20")
    expect(frame.locator("#records-failed")).to_have_text("1")
    expect(frame.locator("#chunks tr")).to_have_count(5)  # a header, three chunks and one rescore part
    expect(frame.locator("#failures")).to_contain_text("negative input -13.0")
    screenshot(page, "batch-view")


def test_the_tab_of_a_task_that_started_no_batch(airflow_ui: AirflowUI, batch_run: Any) -> None:
    run = urllib.parse.quote(batch_run.run_id, safe="")
    page = airflow_ui.get(f"/mlserver/batch/{DAG_ID}/{run}/no_such_task/%7BMAP_INDEX%7D", user="viewer")
    assert page.status_code == 200
    assert "No Machine Learning Server batch here" in page.text
