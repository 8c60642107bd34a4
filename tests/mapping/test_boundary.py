"""Import boundary: ``mapping`` imports nothing beyond the standard library and pydantic."""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path

import mapping

ALLOWED_THIRD_PARTY = {"pydantic", "pydantic_core", "typing_extensions", "annotated_types", "typing_inspection"}
PACKAGE = Path(mapping.__file__).parent


def test_importing_mapping_loads_only_stdlib_and_pydantic() -> None:
    code = (
        "import sys, json\n"
        "before = set(sys.modules)\n"
        "import mapping\n"
        "print(json.dumps(sorted(set(sys.modules) - before)))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=PACKAGE.parent)
    loaded = {name.split(".")[0] for name in json.loads(out.stdout)}
    foreign = {
        name for name in loaded
        if name not in sys.stdlib_module_names and name not in ALLOWED_THIRD_PARTY and name != "mapping"
        and not name.startswith("_")
    }
    assert not foreign, f"mapping pulled in {sorted(foreign)}"
    assert {"pydantic", "mapping"} <= loaded


def test_no_module_imports_outside_the_boundary() -> None:
    """Static check (covers imports inside functions too): stdlib, pydantic or mapping itself."""
    offenders: list[str] = []
    for path in sorted(PACKAGE.rglob("*.py")):
        tree = ast.parse(path.read_text(encoding="utf-8"))
        for node in ast.walk(tree):
            names: list[str] = []
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names = [node.module]
            for name in names:
                top = name.split(".")[0]
                if top not in sys.stdlib_module_names and top not in ALLOWED_THIRD_PARTY and top != "mapping":
                    offenders.append(f"{path.name}: {name}")
    assert not offenders


def test_no_io_or_clock_calls() -> None:
    """No file, network, environment or wall-clock access inside mapping."""
    banned = {"open", "now", "utcnow", "today", "getenv", "environ", "time", "urlopen", "socket"}
    offenders: list[str] = []
    for path in sorted(PACKAGE.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Call):
                func = node.func
                name = func.attr if isinstance(func, ast.Attribute) else func.id if isinstance(func, ast.Name) else ""
                if name in banned:
                    offenders.append(f"{path.name}:{node.lineno}: {name}()")
            if isinstance(node, ast.Attribute) and node.attr == "environ":
                offenders.append(f"{path.name}:{node.lineno}: environ")
    assert not offenders
