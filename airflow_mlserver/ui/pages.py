"""The Jinja environment of the plugin's pages (``ui/templates/``), with the filters they use."""

from __future__ import annotations

from pathlib import Path

from jinja2 import Environment, FileSystemLoader, select_autoescape

from airflow_mlserver.client.words import noun, plural
from airflow_mlserver.ui.format import duration, number

templates = Environment(
    loader=FileSystemLoader(Path(__file__).parent / "templates"), autoescape=select_autoescape(["html"])
)
templates.filters.update(duration=duration, number=number, noun=noun, plural=plural)
