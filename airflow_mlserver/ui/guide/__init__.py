"""The provider's user's guide: ``guide.md`` beside this module, its screenshots in ``images/``.

:func:`guide` renders the markdown with markdown-it-py into a :class:`Guide`: the title (the first ``#``
heading), the text before the first section, the sections with an id on every heading, and the table of
contents (``##`` and ``###`` headings). An image, or a link to one, that the markdown names ``images/<name>``
(as this folder has it, so the file reads right in a repository too) points at ``docs/images/<name>``, the
route that serves it, relative to the page at ``<base>/mlserver/docs``: it works under any Airflow base URL.
Nothing here imports Airflow.
"""

from __future__ import annotations

import functools
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

GUIDE = Path(__file__).parent / "guide.md"
IMAGES = Path(__file__).parent / "images"
#: The content type of each kind of image the guide may show; no other file of the folder is served.
IMAGE_TYPES = {".png": "image/png", ".jpg": "image/jpeg", ".jpeg": "image/jpeg", ".svg": "image/svg+xml"}
#: Where the page, at ``<base>/mlserver/docs``, finds an image the guide names ``images/<name>``.
IMAGE_URL = "docs/images/"


@dataclass(frozen=True)
class Section:
    """A heading of the guide, for the table of contents."""

    level: int
    anchor: str
    title: str


@dataclass(frozen=True)
class Guide:
    """The guide as HTML: its title, the text before the first section, the sections, and their headings."""

    title: str
    intro: str
    body: str
    contents: tuple[Section, ...]


@functools.cache
def images() -> dict[str, str]:
    """The image files of the guide's folder, by name, with their content type: the only files served, and a
    name from a URL is only ever looked up here."""
    if not IMAGES.is_dir():
        return {}
    return {
        path.name: IMAGE_TYPES[path.suffix.lower()]
        for path in IMAGES.iterdir()
        if path.is_file() and path.suffix.lower() in IMAGE_TYPES
    }


@functools.cache
def guide() -> Guide:
    """The guide, rendered once per process (it is part of the installed package and does not change)."""
    return render_guide(GUIDE.read_text(encoding="utf-8"))


def render_guide(text: str) -> Guide:
    """Markdown to :class:`Guide`: headings get ids, ``images/...`` sources and links point at the image route."""
    from markdown_it import MarkdownIt

    markdown = MarkdownIt("commonmark").enable("table")
    tokens = markdown.parse(text)
    title, contents = "", []
    used: set[str] = set()
    for position, token in enumerate(tokens):
        if token.type == "heading_open":
            words = _plain(tokens[position + 1])
            anchor = _anchor(words, used)
            token.attrSet("id", anchor)
            level = int(token.tag[1:])
            if level == 1 and not title:
                title = words
            elif level in (2, 3):
                contents.append(Section(level, anchor, words))
        elif token.type == "inline":
            for child in token.children or ():  # an image, or a link to one (its full size)
                attribute = {"image": "src", "link_open": "href"}.get(child.type)
                target = str(child.attrGet(attribute) or "") if attribute else ""
                if attribute and target.startswith("images/"):
                    child.attrSet(attribute, IMAGE_URL + target.removeprefix("images/"))
    first_h1 = next((i for i, t in enumerate(tokens) if t.type == "heading_open" and t.tag == "h1"), None)
    if first_h1 is not None:  # the page shows the title above the contents, with the version
        del tokens[first_h1 : first_h1 + 3]
    first_section = next((i for i, t in enumerate(tokens) if t.type == "heading_open"), len(tokens))
    options: Any = markdown.options
    intro = markdown.renderer.render(tokens[:first_section], options, {})
    body = markdown.renderer.render(tokens[first_section:], options, {})
    return Guide(title or "airflow-mlserver", intro, body, tuple(contents))


def _plain(inline: Any) -> str:
    """A heading's text without its markup (``code`` spans keep their text)."""
    return "".join(child.content for child in inline.children or () if child.type in ("text", "code_inline"))


def _anchor(words: str, used: set[str]) -> str:
    """An id for a heading, unique in the page: its words in lower case, joined by hyphens."""
    base = re.sub(r"[^a-z0-9]+", "-", words.lower()).strip("-") or "section"
    anchor, number = base, 2
    while anchor in used:
        anchor, number = f"{base}-{number}", number + 1
    used.add(anchor)
    return anchor
