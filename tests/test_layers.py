"""The layers of ARCHITECTURE.md import one way: client <- hooks <- executions <- operators, triggers, sensors <- ui;
server apart. A module's layer is its first folder under ``airflow_mlserver/`` (``operators/batch/planner.py`` is in
``operators``), and every such folder is a layer with rules.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

PACKAGE = Path(__file__).parent.parent / "airflow_mlserver"

#: What each layer must not import (prefixes of module names), lazy imports inside functions included.
FORBIDDEN = {
    "client": (
        "airflow",
        "airflow_mlserver.hooks",
        "airflow_mlserver.operators",
        "airflow_mlserver.triggers",
        "airflow_mlserver.sensors",
        "airflow_mlserver.server",
        "airflow_mlserver.exceptions",
        "airflow_mlserver.tables",
        "airflow_mlserver.lineage",
        "airflow_mlserver.executions",
    ),
    "hooks": (
        "airflow_mlserver.operators",
        "airflow_mlserver.triggers",
        "airflow_mlserver.sensors",
        "airflow_mlserver.server",
        "airflow_mlserver.executions",
    ),
    # The rules of waiting on batch executions, their progress wording, the trigger's event: above the hooks,
    # below what gives them Airflow's meaning (tasks, deferral, pokes, pages), which all use it.
    "executions": (
        "airflow_mlserver.operators",
        "airflow_mlserver.triggers",
        "airflow_mlserver.sensors",
        "airflow_mlserver.server",
    ),
    "triggers": ("airflow_mlserver.operators", "airflow_mlserver.sensors", "airflow_mlserver.server"),
    "sensors": ("airflow_mlserver.operators", "airflow_mlserver.server"),
    "operators": ("airflow_mlserver.sensors", "airflow_mlserver.server", "airflow_mlserver.ui"),
    "ui": ("airflow_mlserver.server",),
    "server": (
        "airflow",
        "airflow_mlserver.hooks",
        "airflow_mlserver.operators",
        "airflow_mlserver.triggers",
        "airflow_mlserver.sensors",
        "airflow_mlserver.exceptions",
        "airflow_mlserver.tables",
        "airflow_mlserver.executions",
    ),
}
for _layer in ("client", "hooks", "executions", "triggers", "sensors", "server"):
    FORBIDDEN[_layer] = (*FORBIDDEN[_layer], "airflow_mlserver.ui")  # the UI sits on top of everything

#: Modules a layer may import although their package is forbidden to it: the contract's parameter types
#: (pure data) and the quoting of values in messages for the local server, the tasks' extra link and the
#: checks of arguments for the sensor.
ALLOWED = {
    "server": (
        "airflow_mlserver.client.parameters",
        "airflow_mlserver.client.quoting",
        "airflow_mlserver.client.publishing",  # is_rds: one rule for what an R model object looks like
        "airflow_mlserver.client.words",  # plural: "1 record", "2 records" worded as everywhere else
    ),
    "sensors": ("airflow_mlserver.operators.links", "airflow_mlserver.operators.arguments"),
}


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports(path: Path) -> set[str]:
    """The names a module imports: ``import a.b`` gives ``a.b``, ``from a import b`` gives ``a.b`` (so that
    ``from airflow_mlserver import server`` is seen), relative imports made absolute."""
    names: set[str] = set()
    package = module_name(path).split(".")
    if path.name != "__init__.py":
        package = package[:-1]
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:  # from . import x, from ..server import y
                base = ".".join(filter(None, [*package[: len(package) - node.level + 1], node.module]))
            else:
                base = node.module or ""
            names.update(f"{base}.{alias.name}" for alias in node.names)
    return names


def under(name: str, prefix: str) -> bool:
    return name == prefix or name.startswith(prefix + ".")


def layer_of(path: Path) -> str | None:
    """The first folder under ``airflow_mlserver/`` of a module; None for a top-level module."""
    parts = path.relative_to(PACKAGE).parts
    return parts[0] if len(parts) > 1 else None


def test_layers_import_one_way() -> None:
    wrong = []
    for path in sorted(PACKAGE.rglob("*.py")):
        layer = layer_of(path)
        if layer is None or layer not in FORBIDDEN:  # a folder without rules fails the test below
            continue
        for name in sorted(imports(path)):
            if any(under(name, allowed) for allowed in ALLOWED.get(layer, ())):
                continue
            if any(under(name, prefix) for prefix in FORBIDDEN[layer]) or (
                layer == "server" and under(name, "airflow_mlserver.client")
            ):
                wrong.append(f"{path.relative_to(PACKAGE.parent)} ({layer}) imports {name}")
    assert not wrong, "\n".join(wrong)


def test_every_folder_of_the_package_is_a_layer_with_rules() -> None:
    """A new package (``airflow_mlserver/<new>/``) cannot escape the rules: it gets a line in FORBIDDEN."""
    folders = {layer for path in PACKAGE.rglob("*.py") if (layer := layer_of(path)) is not None}
    assert folders <= FORBIDDEN.keys(), (
        f"folders of airflow_mlserver with no rules: {sorted(folders - FORBIDDEN.keys())}"
    )
    missing = FORBIDDEN.keys() - folders
    assert not missing, f"layers with rules but no modules (renamed? gone?): {sorted(missing)}"


def test_every_module_is_in_a_layer_or_named() -> None:
    """A new top-level module must be placed deliberately (and ARCHITECTURE.md told)."""
    top = {p.stem for p in PACKAGE.glob("*.py")}
    assert top == {"__init__", "cli", "exceptions", "lineage", "tables"}, top


def test_no_module_is_too_long_to_read_in_one_sitting() -> None:
    long = {
        str(p.relative_to(PACKAGE)): n
        for p in PACKAGE.rglob("*.py")
        if (n := len(p.read_text().splitlines())) > 520
    }
    assert not long, long


def test_task_processes_load_the_plugin_without_the_api_server() -> None:
    """Every task process loads all plugins (for macros): ours must not import the API server's app there."""
    script = """
import sys
from airflow.sdk.plugins_manager import integrate_macros_plugins
integrate_macros_plugins()
from airflow.sdk.plugins_manager import _get_plugins
names = [p.name for p in _get_plugins()[0]]
assert "mlserver" in names, names
loaded = [m for m in ("airflow.api_fastapi.app", "airflow_mlserver.ui.app") if m in sys.modules]
assert not loaded, f"a task process imported {loaded}"
from airflow_mlserver.ui.plugin import MLServerPlugin
assert MLServerPlugin.fastapi_apps[0]["url_prefix"] == "/mlserver"  # the API server's read builds the app
print("ok")
"""
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip().endswith("ok")
