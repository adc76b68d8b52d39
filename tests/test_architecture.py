"""The layout rules of ARCHITECTURE.md, checked on every test run so they stay true.

- the import layers (``[tool.importlinter]`` in pyproject.toml);
- SQL only in ``batch_pipeline/store`` (the simulator, which is OpenAI and not the pipeline, aside);
- no SQL built with f-strings: values are parameters, identifiers are ``psycopg.sql`` compositions;
- no module over 300 lines without its docstring saying why;
- one declaration per setting: ``config.Settings`` (no Dagster resource re-declares one).
"""

from __future__ import annotations

import ast
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("batch_pipeline", "intake_api")
MAX_LINES = 300
# A module longer than MAX_LINES says why in its docstring, in a sentence starting with this.
LONG_MODULE_MARK = "Longer than 300 lines:"
SQL = re.compile(
    r"^\s*(SELECT\s.+\sFROM|UPDATE\s+\S+\s+(\w+\s+)?SET|INSERT\s+INTO|DELETE\s+FROM|WITH\s+\w+|CREATE\s+|"
    r"ALTER\s+TABLE|COPY\s+\S+|ANALYZE\s+)",
    re.I | re.S,
)


def sources(*exclude: str) -> list[Path]:
    paths = [p for pkg in PACKAGES for p in (ROOT / pkg).rglob("*.py")]
    return sorted(p for p in paths if not any(p.relative_to(ROOT).as_posix().startswith(e) for e in exclude))


def string_constants(path: Path) -> list[tuple[int, str]]:
    """Every plain string literal of a module that is not a docstring, with its line."""
    tree = ast.parse(path.read_text(), str(path))
    docstrings = {
        id(node.body[0].value)
        for node in ast.walk(tree)
        if isinstance(node, ast.Module | ast.ClassDef | ast.FunctionDef | ast.AsyncFunctionDef)
        and node.body
        and isinstance(node.body[0], ast.Expr)
        and isinstance(node.body[0].value, ast.Constant)
    }
    return [
        (node.lineno, node.value)
        for node in ast.walk(tree)
        if isinstance(node, ast.Constant) and isinstance(node.value, str) and id(node) not in docstrings
    ]


def test_import_layers_hold() -> None:
    lint_imports = Path(sys.executable).with_name("lint-imports")
    result = subprocess.run(
        [str(lint_imports), "--no-cache"], cwd=ROOT, capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_sql_lives_only_in_the_store() -> None:
    found = [
        f"{path.relative_to(ROOT)}:{line}: {text.strip()[:60]!r}"
        for path in sources("batch_pipeline/store/", "batch_pipeline/simulator/")
        for line, text in string_constants(path)
        if SQL.match(text)
    ]
    assert found == []


def test_no_sql_is_built_with_f_strings() -> None:
    found = []
    for path in sources("batch_pipeline/simulator/"):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.JoinedStr):
                literal = "".join(v.value for v in node.values if isinstance(v, ast.Constant))
                if SQL.match(literal) or "batchman." in literal:
                    found.append(f"{path.relative_to(ROOT)}:{node.lineno}")
    assert found == []


def test_long_modules_say_why() -> None:
    too_long = [
        f"{path.relative_to(ROOT)} ({n} lines)"
        for path in sources()
        if (n := len(path.read_text().splitlines())) > MAX_LINES and LONG_MODULE_MARK not in path.read_text()
    ]
    assert too_long == []


def test_settings_are_declared_once() -> None:
    redeclared = [
        str(path.relative_to(ROOT))
        for path in sources()
        if "ConfigurableResource" in path.read_text() or "BaseSettings" in path.read_text()
    ]
    # The simulator is a separate program with its own SIMULATOR_* settings.
    assert redeclared == ["batch_pipeline/config.py", "batch_pipeline/simulator/settings.py"]


def test_the_checks_catch_what_they_look_for(tmp_path: Path) -> None:
    # The patterns above must match the shapes of SQL this code base writes.
    for text in (
        "SELECT id FROM batchman.batches",
        "\nUPDATE batchman.requests r\nSET state = 'x'",
        "INSERT INTO batchman.x (a) VALUES (%s)",
        "DELETE FROM batchman.batches WHERE id = %s",
        "\nWITH stalled AS (SELECT 1)",
        "COPY results_staging (a) FROM STDIN",
    ):
        assert SQL.match(text), text
    assert not SQL.match("select the batches to cut")
