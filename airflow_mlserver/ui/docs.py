"""The provider's documentation page inside Airflow (the Providers page links here): ``/mlserver/docs``."""

from __future__ import annotations

import importlib.metadata
from html import escape

from airflow.api_fastapi.core_api.security import GetUserDep
from fastapi import APIRouter
from fastapi.responses import HTMLResponse

from airflow_mlserver import __version__
from airflow_mlserver.ui.pages import templates

router = APIRouter()


@router.get("/docs")
def docs(user: GetUserDep) -> HTMLResponse:
    """This provider's README, as installed (the Providers page links here)."""
    return HTMLResponse(templates.get_template("docs.html").render(version=__version__, body=readme_html()))


def readme_html() -> str:
    """The README shipped in the package's metadata, as HTML."""
    from markdown_it import MarkdownIt

    text = (importlib.metadata.metadata("airflow-mlserver").get_all("Description") or [""])[0]
    markdown = MarkdownIt("commonmark").enable("table")
    # The README's screenshots live beside it in the repository, not in the package: name them instead.
    markdown.add_render_rule(
        "image", lambda _renderer, tokens, idx, *_: f"<em>[{escape(tokens[idx].content)}]</em>"
    )
    return markdown.render(text)
