"""The code stays in pieces a reader can hold: no function over 80 lines, no module of ``operators/`` over 400.

A function whose whole body is one data literal it returns (the provider's info) is exempt: its length is data,
not steps to follow.
"""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).parent.parent / "airflow_mlserver"
FUNCTION_LINES = 80
OPERATOR_MODULE_LINES = 400


def returns_one_literal(function: ast.FunctionDef | ast.AsyncFunctionDef) -> bool:
    """The body, after an optional docstring and imports (lazy ones, as in ``get_provider_info``), is one
    ``return {...}``, ``[...]``, ``(...)`` or ``dict(...)``."""
    body = function.body
    if body and isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant):
        body = body[1:]
    while body and isinstance(body[0], ast.Import | ast.ImportFrom):
        body = body[1:]
    if len(body) != 1 or not isinstance(body[0], ast.Return):
        return False
    value = body[0].value
    if isinstance(value, ast.Dict | ast.List | ast.Tuple):
        return True
    return isinstance(value, ast.Call) and isinstance(value.func, ast.Name) and value.func.id == "dict"


def long_functions(path: Path) -> list[tuple[int, str, int]]:
    """``(line, qualified name, lines)`` of each function or method of a module over :data:`FUNCTION_LINES`."""
    found: list[tuple[int, str, int]] = []

    def visit(node: ast.AST, prefix: str) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.FunctionDef | ast.AsyncFunctionDef):
                name = f"{prefix}{child.name}"
                length = (child.end_lineno or child.lineno) - child.lineno + 1
                if length > FUNCTION_LINES and not returns_one_literal(child):
                    found.append((child.lineno, name, length))
                visit(child, f"{name}.")
            elif isinstance(child, ast.ClassDef):
                visit(child, f"{prefix}{child.name}.")
            else:
                visit(child, prefix)

    visit(ast.parse(path.read_text(), str(path)), "")
    return found


def test_no_function_is_over_80_lines() -> None:
    offenders = [
        f"{path.relative_to(PACKAGE.parent)}:{line} {name}: {length} lines"
        for path in sorted(PACKAGE.rglob("*.py"))
        for line, name, length in long_functions(path)
    ]
    assert not offenders, f"functions over {FUNCTION_LINES} lines (split them):\n" + "\n".join(offenders)


def test_no_module_of_the_operators_is_over_400_lines() -> None:
    assert (PACKAGE / "operators").is_dir(), "airflow_mlserver/operators/ is gone: this test checks nothing"
    offenders = [
        f"{path.relative_to(PACKAGE.parent)}: {length} lines"
        for path in sorted((PACKAGE / "operators").rglob("*.py"))
        if (length := len(path.read_text().splitlines())) > OPERATOR_MODULE_LINES
    ]
    assert not offenders, f"modules of operators/ over {OPERATOR_MODULE_LINES} lines:\n" + "\n".join(
        offenders
    )
