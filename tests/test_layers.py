"""The layers of ARCHITECTURE.md import one way: client <- hooks <- operators, triggers, sensors <- ui; server apart."""

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
    ),
    "hooks": (
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
    ),
}
for _layer in ("client", "hooks", "triggers", "sensors", "server"):
    FORBIDDEN[_layer] = (*FORBIDDEN[_layer], "airflow_mlserver.ui")  # the UI sits on top of everything

#: Modules a layer may import although their package is forbidden to it: the contract's parameter types
#: (pure data) and the quoting of values in messages for the local server, the tasks' extra link and the
#: checks of arguments for the sensor.
ALLOWED = {
    "server": (
        "airflow_mlserver.client.parameters",
        "airflow_mlserver.client.quoting",
        "airflow_mlserver.client.publishing",  # is_rds: one rule for what an R model object looks like
    ),
    "sensors": ("airflow_mlserver.operators.links", "airflow_mlserver.operators.arguments"),
}


def imports(path: Path) -> set[str]:
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            names.add(node.module)
    return names


def under(name: str, prefix: str) -> bool:
    return name == prefix or name.startswith(prefix + ".")


def test_layers_import_one_way() -> None:
    wrong = []
    for layer, forbidden in FORBIDDEN.items():
        for path in sorted((PACKAGE / layer).glob("*.py")):
            for name in imports(path):
                if name in ALLOWED.get(layer, ()):
                    continue
                if any(under(name, prefix) for prefix in forbidden):
                    wrong.append(f"{path.relative_to(PACKAGE.parent)} imports {name}")
                if layer == "server" and under(name, "airflow_mlserver.client"):
                    wrong.append(f"{path.relative_to(PACKAGE.parent)} imports {name}")
    assert not wrong, "\n".join(wrong)


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
