"""The provider's user's guide inside Airflow (the Providers page links here): ``/mlserver/docs``.

The page is :mod:`airflow_mlserver.ui.guide` rendered into ``templates/docs.html``; its screenshots are served
by ``/mlserver/docs/images/{name}``. Both need a logged-in Airflow user, like every route of the plugin.
"""

from __future__ import annotations

from airflow.api_fastapi.core_api.security import GetUserDep
from fastapi import APIRouter, HTTPException
from fastapi.responses import HTMLResponse, Response

from airflow_mlserver import __version__
from airflow_mlserver.ui.guide import IMAGES, guide, images
from airflow_mlserver.ui.pages import templates

router = APIRouter()


@router.get("/docs")
def docs(user: GetUserDep) -> HTMLResponse:
    """The provider's user's guide, as installed (the Providers page links here)."""
    return HTMLResponse(templates.get_template("docs.html").render(version=__version__, guide=guide()))


@router.get("/docs/images/{name}")
def docs_image(name: str, user: GetUserDep) -> Response:
    """A screenshot of the guide: an image file of the guide's own folder, found by its exact name (so no name
    from the URL ever reaches the file system unless it is one of them)."""
    content_type = images().get(name)
    if content_type is None:
        raise HTTPException(status_code=404, detail=f"The guide has no image {name[:100]!r}.")
    return Response(
        (IMAGES / name).read_bytes(),
        media_type=content_type,
        headers={"Cache-Control": "private, max-age=3600"},
    )
