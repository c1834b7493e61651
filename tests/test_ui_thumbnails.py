"""Thumbnails of image artifacts: the plugin's ``/mlserver/artifact-image/...`` route.

First the pure rules (which names and which contents are images, the URL the page links to, which manifest
entry is taken); then the route on the session's real Airflow API server, after a DAG run (``dag.test()``, in a
module fixture, before anything asks the server) in which the R example's service drew ``Histogram.png`` for a
few mtcars records and a Python service wrote a CSV, an SVG with a script, a PNG too large and a text named
``.png``, all copied to ``file://`` destinations by artifacts tasks.
"""

from __future__ import annotations

import importlib.util
import shutil
import urllib.parse
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
from playwright.sync_api import expect

from airflow_mlserver.operators.artifacts.manifest import ArtifactEntry
from airflow_mlserver.ui import thumbnails
from airflow_mlserver.ui.thumbnails import (
    MAX_IMAGE_BYTES,
    NotAnImage,
    check_image,
    find_entry,
    image_url,
    is_image,
    is_svg,
    sniff,
    thumbnail_entries,
)
from tests.helpers import Api
from tests.ui_fixtures import RESTRICTED_USER, AirflowUI, UiPages, screenshot

REPO = Path(__file__).resolve().parent.parent
PNG = b"\x89PNG\r\n\x1a\n" + b"\0\0\0\rIHDR" + b"\0" * 20
JPEG = b"\xff\xd8\xff\xe0\0\x10JFIF\0" + b"\0" * 20
GIF = b"GIF89a" + b"\0" * 20
WEBP = b"RIFF\x24\0\0\0WEBPVP8 " + b"\0" * 20
SVG = b'<?xml version="1.0"?>\n<svg xmlns="http://www.w3.org/2000/svg" width="4" height="4"><rect/></svg>'
SCRIPTED_SVG = (
    '<svg xmlns="http://www.w3.org/2000/svg" width="10" height="10">'
    '<script>alert(document.cookie)</script><rect width="10" height="10"/></svg>'
)


# --- What is an image: names, contents, and both together ------------------------------------------------


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("Histogram.png", True),
        ("photo.JPG", True),
        ("a.jpeg", True),
        ("anim.gif", True),
        ("pic.webp", True),
        ("chart.svg", True),
        ("notes.csv", False),
        ("png", False),
        (".png", False),
        ("image.png.txt", False),
        ("drawing.svgz", False),
        ("", False),
    ],
)
def test_is_image_by_name(name: str, expected: bool) -> None:
    assert is_image(name) is expected


@pytest.mark.parametrize(
    ("data", "expected"),
    [
        (PNG, "image/png"),
        (JPEG, "image/jpeg"),
        (GIF, "image/gif"),
        (WEBP, "image/webp"),
        (SVG, "image/svg+xml"),
        (b"\xef\xbb\xbf" + SVG, "image/svg+xml"),  # a byte order mark
        (b"<svg><rect/></svg>", "image/svg+xml"),  # no namespace: still an <svg> root
        (SCRIPTED_SVG.encode(), "image/svg+xml"),  # an image; served sandboxed (see the route's test)
        (b"RIFF\x24\0\0\0WAVEfmt ", None),
        (b"a,b\n1,2\n", None),
        (b"<html><svg/></html>", None),
        (b'<svg xmlns="http://www.w3.org/1999/xhtml"/>', None),  # an svg element of another namespace
        (b"<svg>not closed", None),
        (b"", None),
    ],
)
def test_sniff_by_content(data: bytes, expected: str | None) -> None:
    assert sniff(data) == expected


def test_svg_declaring_entities_is_refused_unexpanded() -> None:
    laughs = (
        b'<?xml version="1.0"?><!DOCTYPE svg [<!ENTITY a "lol"><!ENTITY b "&a;&a;&a;&a;&a;&a;&a;&a;">]>'
        b'<svg xmlns="http://www.w3.org/2000/svg"><text>&b;</text></svg>'
    )
    external = (
        b'<?xml version="1.0"?><!DOCTYPE svg [<!ENTITY x SYSTEM "file:///etc/passwd">]>'
        b'<svg xmlns="http://www.w3.org/2000/svg"><text>&x;</text></svg>'
    )
    assert not is_svg(laughs) and not is_svg(external)
    doctype_only = (
        b'<!DOCTYPE svg PUBLIC "-//W3C//DTD SVG 1.1//EN" "http://www.w3.org/Graphics/SVG/1.1/DTD/svg11.dtd">'
    )
    assert is_svg(doctype_only + SVG.split(b"\n", 1)[1])


@pytest.mark.parametrize(
    ("name", "data", "content_type"),
    [("Histogram.png", PNG, "image/png"), ("x.JPEG", JPEG, "image/jpeg"), ("d.svg", SVG, "image/svg+xml")],
)
def test_name_and_content_agree(name: str, data: bytes, content_type: str) -> None:
    assert check_image(name, data) == content_type


@pytest.mark.parametrize(
    ("name", "data", "says"),
    [
        ("notes.csv", b"a,b\n", "is not an image"),
        ("fake.png", b"not a png", "is no image"),
        ("photo.png", JPEG, "is image/jpeg"),  # mislabelled: refused, never served as what the name says
        ("drawing.svg", PNG, "is image/png"),
        ("page.svg", b"<html><body/></html>", "is no image"),
    ],
)
def test_name_and_content_that_disagree_are_refused(name: str, data: bytes, says: str) -> None:
    with pytest.raises(NotAnImage, match=says):
        check_image(name, data)


def test_image_url_quotes_every_part() -> None:
    url = image_url("mlserver_test_x", "manual__2026-12-07T21:01:46.123+00:00", "collect", -1, 3, "a b+c.png")
    assert url == (
        "/mlserver/artifact-image/mlserver_test_x/manual__2026-12-07T21%3A01%3A46.123%2B00%3A00/collect/-1"
        "?record=3&file=a%20b%2Bc.png"
    )
    assert image_url("d", "r", "t", "{MAP_INDEX}", 0, "h.png").endswith("/d/r/t/-1?record=0&file=h.png")
    assert "/t/2?" in image_url("d", "r", "t", "2", 0, "h.png")
    path, query = urllib.parse.urlsplit(url)[2:4]
    assert urllib.parse.unquote(path.split("/")[4]) == "manual__2026-12-07T21:01:46.123+00:00"
    assert urllib.parse.parse_qs(query) == {"record": ["3"], "file": ["a b+c.png"]}


def _entry(record: int, name: str, status: str = "copied", where: str | None = None) -> dict[str, Any]:
    return ArtifactEntry(
        record, record, name, status, destination=where or f"file:///dest/{record}/{name}"
    ).to_json()


def test_find_entry_takes_only_a_copied_file_of_that_record_inside_the_destination() -> None:
    manifest = {
        "destination": "file:///dest",
        "artifacts": [
            _entry(0, "Histogram.png"),
            _entry(1, "Histogram.png", status="failed"),
            _entry(2, "Histogram.png", where="file:///etc/Histogram.png"),
            _entry(3, "Histogram.png", where="file:///dest/../etc/Histogram.png"),
            _entry(4, "Histogram.png", where="file:///dest-other/4/Histogram.png"),
            {"record": "not a number"},
            "not an entry",
        ],
    }
    found = find_entry(manifest, 0, "Histogram.png")
    assert found is not None and found.destination == "file:///dest/0/Histogram.png"
    for record in (1, 2, 3, 4, 5):
        assert find_entry(manifest, record, "Histogram.png") is None
    assert find_entry(manifest, 0, "histogram.png") is None
    assert find_entry({"artifacts": [_entry(0, "Histogram.png")]}, 0, "Histogram.png") is None  # no root


def test_thumbnail_entries_are_copied_images_at_most_the_limit() -> None:
    entries = [ArtifactEntry.from_json(_entry(i, "Histogram.png")) for i in range(20)]
    entries.insert(0, ArtifactEntry.from_json(_entry(0, "notes.csv")))
    entries.insert(1, ArtifactEntry.from_json(_entry(0, "x.png", status="skipped")))
    shown = thumbnail_entries(entries)
    assert len(shown) == thumbnails.MAX_THUMBNAILS
    assert [e.record for e in shown] == list(range(thumbnails.MAX_THUMBNAILS))


# --- The route, on the real API server ------------------------------------------------------------------

#: The Python service: each record writes files the route must refuse, or serve with care.
FILES_CODE = f"""
open('notes.csv', 'w').write('a,b\\n1,2\\n')
open('evil.svg', 'w').write({SCRIPTED_SVG!r})
with open('big.png', 'wb') as f:
    f.write(b'\\x89PNG\\r\\n\\x1a\\n' + bytes({MAX_IMAGE_BYTES}))
open('fake.png', 'w').write('not a png')
y = x
"""
FILES = ["notes.csv", "evil.svg", "big.png", "fake.png"]
CARS = 3


def _dags() -> Any:
    from tests.dags import ui_thumbnail_dags

    return ui_thumbnail_dags


@pytest.fixture(scope="module")
def thumbs_run(
    airflow_db: Path, mlserver_conn: str, api: Api, tmp_path_factory: pytest.TempPathFactory
) -> tuple[Any, Path]:
    """Publish both services and run the DAG once (before the API server is asked anything)."""
    from airflow.dag_processing.dagbag import DagBag

    from airflow_mlserver.hooks.mlserver import MLServerHook

    if shutil.which("Rscript") is None or importlib.util.find_spec("rpy2") is None:
        pytest.fail("R or rpy2 is missing: `make test` installs both.", pytrace=False)
    dags = _dags()
    spec = importlib.util.spec_from_file_location(
        "mtcars_r_service", REPO / "dags_examples/mtcars_r_service.py"
    )
    assert spec is not None and spec.loader is not None
    r_service = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(r_service)
    hook = MLServerHook(mlserver_conn)
    try:
        r_service.publish(hook, *dags.R_SERVICE)  # the R example's service: manualTransmission draws a PNG
    finally:
        hook.close()
    api.publish(*dags.FILES_SERVICE, FILES_CODE, {"x": "numeric"}, {"y": "numeric"}, files=FILES)

    folder = tmp_path_factory.mktemp("ui-thumbnails")
    cars = pd.read_csv(r_service.MTCARS_CSV).head(CARS)[["model", "hp", "wt"]]
    cars.to_csv(folder / "cars.csv", index=False)
    pd.DataFrame({"x": [1.0]}).to_csv(folder / "numbers.csv", index=False)
    bag = DagBag(dag_folder=str(Path(dags.__file__)))
    assert not bag.import_errors, bag.import_errors
    params = {
        "cars": f"file://{folder}/cars.csv",
        "numbers": f"file://{folder}/numbers.csv",
        "output": f"file://{folder}/scores",
        "dest": f"file://{folder}/artifacts",
    }
    dagrun = bag.get_dag(dags.DAG_ID).test(run_conf=params)
    assert dagrun.state == "success", dagrun.state
    return dagrun, folder / "artifacts"


def _url(dagrun: Any, task_id: str, record: int, file_name: str, map_index: Any = -1) -> str:
    return image_url(_dags().DAG_ID, dagrun.run_id, task_id, map_index, record, file_name)


def _assert_safe_headers(answer: Any) -> None:
    assert answer.headers["X-Content-Type-Options"] == "nosniff"
    assert answer.headers["Content-Security-Policy"] == thumbnails.SAFE_HEADERS["Content-Security-Policy"]
    assert "sandbox" in answer.headers["Content-Security-Policy"]


def test_the_r_histograms_are_served_as_the_png_copied(airflow_ui: AirflowUI, thumbs_run: Any) -> None:
    dagrun, artifacts = thumbs_run
    for record in range(CARS):
        for map_index in (-1, "{MAP_INDEX}"):
            answer = airflow_ui.get(
                _url(dagrun, "collect_r", record, "Histogram.png", map_index), user="viewer"
            )
            assert answer.status_code == 200, answer.text
            assert answer.headers["Content-Type"] == "image/png"
            assert answer.headers["Cache-Control"] == "private, max-age=300"
            _assert_safe_headers(answer)
            assert answer.content[:8] == b"\x89PNG\r\n\x1a\n" and len(answer.content) > 2000
            assert answer.content == (artifacts / "r" / str(record) / "Histogram.png").read_bytes()


def test_unknown_task_manifest_record_or_file_is_404(airflow_ui: AirflowUI, thumbs_run: Any) -> None:
    dagrun, _ = thumbs_run
    for path in (
        _url(dagrun, "collect_r", CARS, "Histogram.png"),  # no such record
        _url(dagrun, "collect_r", 0, "Other.png"),  # no such file
        _url(dagrun, "collect_r", 0, "../../cars.csv"),  # a path: only names in the manifest are looked for
        _url(dagrun, "score_r", 0, "Histogram.png"),  # a batch task: no manifest
        _url(dagrun, "no_such_task", 0, "Histogram.png"),
        _url(dagrun, "collect_r", 0, "Histogram.png", map_index=3),
        image_url(_dags().DAG_ID, "no_such_run", "collect_r", -1, 0, "Histogram.png"),
    ):
        answer = airflow_ui.get(path, user="viewer")
        assert answer.status_code == 404, (path, answer.status_code, answer.text)
        assert answer.headers["Content-Type"].startswith("text/plain")
        assert len(answer.text) < 200 and "Traceback" not in answer.text
        _assert_safe_headers(answer)


def test_files_that_are_not_images_are_415(airflow_ui: AirflowUI, thumbs_run: Any) -> None:
    dagrun, _ = thumbs_run
    for name, says in (("notes.csv", "is not an image"), ("fake.png", "its content is no image")):
        answer = airflow_ui.get(_url(dagrun, "collect_files", 0, name), user="viewer")
        assert answer.status_code == 415, (name, answer.text)
        assert says in answer.text and answer.headers["Content-Type"].startswith("text/plain")


def test_an_svg_with_a_script_is_served_sandboxed(airflow_ui: AirflowUI, thumbs_run: Any) -> None:
    dagrun, artifacts = thumbs_run
    answer = airflow_ui.get(_url(dagrun, "collect_files", 0, "evil.svg"), user="viewer")
    assert answer.status_code == 200, answer.text
    assert answer.headers["Content-Type"] == "image/svg+xml"
    _assert_safe_headers(answer)
    assert answer.content == (artifacts / "files" / "0" / "evil.svg").read_bytes()
    assert b"<script>" in answer.content  # as copied: the sandbox, not an edit, keeps it from running


def test_an_image_over_the_cap_is_413(airflow_ui: AirflowUI, thumbs_run: Any) -> None:
    dagrun, artifacts = thumbs_run
    assert (artifacts / "files" / "0" / "big.png").stat().st_size == MAX_IMAGE_BYTES + 8
    answer = airflow_ui.get(_url(dagrun, "collect_files", 0, "big.png"), user="viewer")
    assert answer.status_code == 413, answer.text
    assert "larger than 5 MiB" in answer.text and len(answer.content) < 200


def test_a_store_that_cannot_be_read_is_502_without_its_uri(airflow_ui: AirflowUI, thumbs_run: Any) -> None:
    dagrun, artifacts = thumbs_run
    histogram = artifacts / "r" / "1" / "Histogram.png"
    saved = histogram.read_bytes()
    histogram.unlink()
    histogram.mkdir()  # a folder where the file was: the store answers, but not with a file
    try:
        answer = airflow_ui.get(_url(dagrun, "collect_r", 1, "Histogram.png"), user="viewer")
    finally:
        histogram.rmdir()
        histogram.write_bytes(saved)
    assert answer.status_code == 502, answer.text
    assert "Could not read the artifact" in answer.text and str(artifacts) not in answer.text
    gone = artifacts / "r" / "2" / "Histogram.png"
    saved = gone.read_bytes()
    gone.unlink()
    try:
        answer = airflow_ui.get(_url(dagrun, "collect_r", 2, "Histogram.png"), user="viewer")
    finally:
        gone.write_bytes(saved)
    assert answer.status_code == 404 and "no longer at its destination" in answer.text


def test_the_route_needs_a_login_and_read_access_to_the_dag(airflow_ui: AirflowUI, thumbs_run: Any) -> None:
    dagrun, _ = thumbs_run
    path = _url(dagrun, "collect_r", 0, "Histogram.png")
    anonymous = airflow_ui.get(path, user=None, allow_redirects=False)
    assert anonymous.status_code == 401 or 300 <= anonymous.status_code < 400, anonymous.status_code
    assert not anonymous.content.startswith(b"\x89PNG")
    refused = airflow_ui.get(path, user=RESTRICTED_USER)
    assert refused.status_code == 403, refused.text
    assert not refused.content.startswith(b"\x89PNG")


def test_the_batch_tab_shows_the_histograms_as_thumbnails(ui_page: UiPages, thumbs_run: Any) -> None:
    """In the browser: the R scoring task's tab and its artifacts task's tab show each record's histogram,
    loaded through the route (the files' own URIs never reach the page); the scripted SVG, shown as an image,
    is shown as an image (a picture: no script runs in an <img>), the CSV is not."""
    dagrun, _ = thumbs_run
    run = urllib.parse.quote(dagrun.run_id, safe="")
    for task_id in ("score_r", "collect_r"):
        page = ui_page("viewer", f"/dags/{_dags().DAG_ID}/runs/{run}/tasks/{task_id}/plugin/mlserver-batch")
        frame = page.frame_locator("iframe").first
        images = frame.locator(".thumbs img")
        expect(images).to_have_count(CARS)
        for n in range(CARS):
            expect(images.nth(n)).to_have_js_property("complete", True)
            assert images.nth(n).evaluate("img => img.naturalWidth") > 0, (task_id, n)
            assert "/mlserver/artifact-image/" in (images.nth(n).get_attribute("src") or "")
        expect(frame.locator(".thumbs figcaption").first).to_contain_text("Histogram.png")
        screenshot(page, f"batch-view-thumbnails-{task_id}")
    page = ui_page("viewer", f"/dags/{_dags().DAG_ID}/runs/{run}/tasks/collect_files/plugin/mlserver-batch")
    frame = page.frame_locator("iframe").first
    svg = frame.locator(".thumbs img[alt^='evil.svg']")
    expect(svg).to_have_count(1)
    expect(svg).to_have_js_property("complete", True)
    expect(frame.locator(".thumbs img[alt^='notes.csv']")).to_have_count(0)  # not an image: not shown
