"""The user's guide as a user meets it: the Providers page's documentation link of the provider, in Airflow's UI.

The guide's rendering is tested with no server (ids on headings, the contents, image sources, the images shipped
in the package); then the page at ``/mlserver/docs`` through the session's Airflow API server, each image it
shows through ``/mlserver/docs/images/{name}``, names that are no image of the guide, and finally the real UI: the
Providers page, the provider's link, the guide in the tab it opens with its images loaded. The screenshot goes to
``.artifacts/ui/docs-guide.png``.
"""

from __future__ import annotations

import html
import re
import tomllib
import urllib.parse
from html.parser import HTMLParser
from pathlib import Path

from playwright.sync_api import expect

from airflow_mlserver import __version__
from airflow_mlserver.ui.guide import GUIDE, IMAGES, guide, images, render_guide
from tests.ui_fixtures import AirflowUI, UiPages, screenshot

REPO = Path(__file__).resolve().parent.parent
DOCS = "/mlserver/docs"
#: The sections a user looks for, by task (``##`` headings of the guide).
SECTIONS = (
    "Install and connect",
    "Publish and retire a service",
    "Score records in batch",
    "Wait on an execution started elsewhere",
    "Run a DAG when a batch finishes elsewhere",
    "Copy artifacts to object storage",
    'The "ML Server batch" tab',
    "Try things on a local server",
    "Troubleshooting",
)


class Page(HTMLParser):
    """What a test reads of the docs page: ids, links, image sources, the headings and the article's text."""

    def __init__(self, html: str) -> None:
        super().__init__()
        self.ids: set[str] = set()
        self.links: list[str] = []
        self.images: list[str] = []
        self.headings: dict[str, str] = {}  # id -> text
        self.article = ""
        self._heading: str | None = None
        self._in_article = 0
        self.feed(html)

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        found = dict(attrs)
        if found.get("id"):
            self.ids.add(str(found["id"]))
        if tag == "a" and found.get("href"):
            self.links.append(str(found["href"]))
        if tag == "img":
            self.images.append(str(found.get("src")))
        if tag in ("h2", "h3") and found.get("id"):
            self._heading = str(found["id"])
            self.headings[self._heading] = ""
        self._in_article += tag == "article"

    def handle_endtag(self, tag: str) -> None:
        if tag in ("h2", "h3"):
            self._heading = None
        self._in_article -= tag == "article"

    def handle_data(self, data: str) -> None:
        if self._heading is not None:
            self.headings[self._heading] += data
        if self._in_article:
            self.article += data


# --- The guide, with no server ------------------------------------------------------------------------------


def test_the_guide_renders_with_ids_contents_and_image_routes() -> None:
    rendered = render_guide(
        "# Title\n\nIntro with `code`.\n\n## One `thing`\n\ntext ![a picture](images/a.png) "
        "![elsewhere](https://example.com/b.png) [![linked](images/c.png)](images/c.png)"
        "\n\n### Sub\n\n## One thing\n\n#### Deep\n"
    )
    assert rendered.title == "Title"
    assert "<h1" not in rendered.intro + rendered.body  # the page shows the title itself
    assert rendered.intro.strip() == "<p>Intro with <code>code</code>.</p>"
    assert [(s.level, s.anchor, s.title) for s in rendered.contents] == [
        (2, "one-thing", "One thing"),
        (3, "sub", "Sub"),
        (2, "one-thing-2", "One thing"),  # the same words twice: two ids
    ]
    assert '<h2 id="one-thing">' in rendered.body and '<h2 id="one-thing-2">' in rendered.body
    assert '<h4 id="deep">' in rendered.body  # in the page, not in the contents
    assert 'src="docs/images/a.png"' in rendered.body  # relative to <base>/mlserver/docs
    assert 'src="https://example.com/b.png"' in rendered.body
    assert (
        '<a href="docs/images/c.png"><img src="docs/images/c.png"' in rendered.body
    )  # the full size, a click away


def test_the_guide_is_a_users_guide_and_ships_its_images() -> None:
    shipped = guide()
    assert shipped.title == "The airflow-mlserver user's guide"
    assert [s.title for s in shipped.contents if s.level == 2] == list(SECTIONS)
    assert not re.match(r"\s*(<[^>]+>\s*)*make\b", shipped.intro), "the guide starts with developer commands"
    assert "make demo" not in shipped.intro + shipped.body
    page = Page(shipped.body)
    assert page.images, "the guide shows its screenshots"
    for source in page.images:  # every picture is one of the folder's, which the package ships
        assert source.startswith("docs/images/"), source
        assert source.removeprefix("docs/images/") in images(), source
    assert set(images()) == {
        "connection-form.png",
        "connection-test.png",
        "batch-view.png",
        "batch-view-thumbnails.png",
    }
    assert all(kind == "image/png" for kind in images().values())
    for link in page.links:  # every link inside the guide leads to one of its sections, or its images
        assert link.startswith("#") or link.removeprefix("docs/images/") in images(), link
        if link.startswith("#"):
            assert link[1:] in page.ids, link
    package_data = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"]["package-data"]
    shipped_files = package_data["airflow_mlserver"]
    package = REPO / "airflow_mlserver"
    for path in (GUIDE, *(IMAGES / name for name in images())):
        relative = path.relative_to(package)
        assert any(relative.match(pattern) for pattern in shipped_files), f"{relative} is not package data"


def test_the_guide_says_where_test_is_in_airflow_3_3() -> None:
    text = GUIDE.read_text()
    assert "Test is not a button of the form" in text
    assert "Admin > Connections" in text and "Test Connection" in text
    assert "test_connection = Enabled" in text


# --- The page through Airflow's API server ------------------------------------------------------------------


def test_docs_page_answers_a_viewer_with_contents_and_sections(airflow_ui: AirflowUI) -> None:
    answer = airflow_ui.get(DOCS, user="viewer")
    assert answer.status_code == 200, answer.text
    assert answer.headers["content-type"].startswith("text/html")
    page = Page(answer.text)
    text = html.unescape(answer.text)
    assert "<h1>The airflow-mlserver user's guide</h1>" in text
    assert f"airflow-mlserver {__version__}" in text
    assert "MLServerBatchOperator" in answer.text  # tests/test_ui_batch_view.py checks it too
    titles = {text.strip() for text in page.headings.values()}
    assert set(SECTIONS) <= titles, titles
    contents = [link for link in page.links if link.startswith("#")]
    assert len(contents) >= len(SECTIONS)
    for link in contents:  # every entry of the contents leads to a heading of the page
        assert link[1:] in page.headings, link
    assert not page.article.lstrip().startswith("make"), page.article[:200]
    assert "make demo" not in page.article and "make test" not in page.article


def test_every_image_of_the_page_answers_as_an_image(airflow_ui: AirflowUI) -> None:
    docs_url = f"{airflow_ui.url}{DOCS}"
    page = Page(airflow_ui.get(DOCS, user="viewer").text)
    assert len(page.images) == len(images()) == 4
    for source in page.images:
        url = urllib.parse.urljoin(docs_url, source)  # as the browser resolves it
        assert url.startswith(f"{docs_url}/images/"), url
        answer = airflow_ui.session("viewer").get(url, timeout=30)
        assert answer.status_code == 200, (url, answer.status_code, answer.text[:200])
        assert answer.headers["content-type"] == "image/png", answer.headers
        assert answer.content == (IMAGES / url.rsplit("/", 1)[1]).read_bytes()


def test_only_the_guides_images_are_served(airflow_ui: AirflowUI) -> None:
    names = (
        "no-such-image.png",
        "..%2Fguide.md",  # the guide's folder, one up
        "..%2F..%2Fdocs.py",
        "%2E%2E%2F%2E%2E%2Ftemplates%2Fdocs.html",
        "%2E%2E",
        "CONNECTION-FORM.PNG",  # names are matched exactly
        "connection-form.png%00.md",
        "%2Fetc%2Fpasswd",
    )
    for name in names:
        answer = airflow_ui.get(f"{DOCS}/images/{name}", user="viewer")
        assert answer.status_code == 404, (name, answer.status_code, answer.text[:200])
        assert not answer.headers.get("content-type", "").startswith("image/"), name
    guide_file = airflow_ui.get(f"{DOCS}/images/guide.md", user="viewer")
    assert guide_file.status_code == 404  # a file beside the images, not one of them


# --- The real UI ------------------------------------------------------------------------------------------------


def test_providers_page_links_to_the_guide_with_its_images(ui_page: UiPages) -> None:
    page = ui_page("viewer", "/providers")
    link = page.get_by_role("link", name="airflow-mlserver", exact=True)
    expect(link).to_be_visible()
    with page.context.expect_page() as opened:  # the Providers page opens documentation in a new tab
        link.click()
    guide_page = opened.value
    guide_page.set_viewport_size({"width": 1440, "height": 1000})
    guide_page.wait_for_load_state("load")
    assert urllib.parse.urlparse(guide_page.url).path == DOCS, guide_page.url
    expect(guide_page.get_by_role("heading", level=1)).to_have_text("The airflow-mlserver user's guide")
    expect(guide_page.locator("#version")).to_contain_text(__version__)
    contents = guide_page.get_by_role("navigation", name="Contents")
    for title in SECTIONS:
        expect(contents.get_by_role("link", name=title, exact=True)).to_be_visible()
    pictures = guide_page.locator("article img")
    expect(pictures).to_have_count(4)
    for number in range(4):
        picture = pictures.nth(number)
        picture.scroll_into_view_if_needed()
        expect(picture).to_be_visible()
        guide_page.wait_for_function("(img) => img.complete", arg=picture.element_handle())
        width = picture.evaluate("(img) => img.naturalWidth")
        assert width > 0, f"{picture.get_attribute('src')} did not load"
    guide_page.evaluate("window.scrollTo(0, 0)")
    screenshot(guide_page, "docs-guide")
    contents.get_by_role("link", name="Test the connection", exact=True).click()
    assert guide_page.url.endswith("#test-the-connection")
    expect(guide_page.locator("#test-the-connection")).to_be_in_viewport()
