"""The package layout and its import rules (DESIGN: one room per concern, imports run one way)."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
LIBRARIES = ("pipeline", "transforms", "losses", "networks")

#: What each stage of ``pipeline`` may import from ``pipeline`` (itself always; ``pipeline.paths`` everywhere).
ALLOWED = {
    "io": set(),
    "data": {"io"},
    "evaluation": set(),
    "selective": {"io", "data", "evaluation"},
    "training": {"io", "data", "evaluation", "selective"},
    "inference": {"io", "data", "evaluation", "selective", "training"},
    "refine": {"io", "data", "evaluation", "selective", "training", "inference"},
    "experiments": {"io", "data", "evaluation", "selective", "training", "inference", "refine"},
}


def _modules() -> list[Path]:
    return sorted(p for lib in LIBRARIES for p in (REPO / lib).rglob("*.py"))


def _name(path: Path) -> str:
    parts = list(path.relative_to(REPO).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports(path: Path) -> list[tuple[str, list[str], int]]:
    """``(module, imported names, line)`` of every import, module level or inside functions."""
    out = []
    package = _name(path) if path.name == "__init__.py" else _name(path).rpartition(".")[0]
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            out += [(alias.name, [], node.lineno) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(parts + ([base] if base else []))
            out.append((base, [a.name for a in node.names], node.lineno))
    return out


def test_pipeline_root_holds_only_the_command_line_and_paths():
    root = {p.name for p in (REPO / "pipeline").glob("*.py")}
    assert root == {"__init__.py", "cli.py", "paths.py"}
    stages = {p.name for p in (REPO / "pipeline").iterdir() if p.is_dir() and (p / "__init__.py").is_file()}
    assert stages == set(ALLOWED)


@pytest.mark.parametrize("path", _modules(), ids=lambda p: str(p.relative_to(REPO)))
def test_imports_run_one_way(path: Path):
    me = _name(path)
    for module, names, line in _imports(path):
        if module.split(".")[0] != "pipeline":
            continue
        where = f"{path.relative_to(REPO)}:{line} imports {module}"
        assert me.split(".")[0] == "pipeline", f"{where}: transforms, losses and networks never import pipeline"
        if me in ("pipeline", "pipeline.cli", "pipeline.paths") or module in ("pipeline", "pipeline.paths"):
            continue
        stage, target = me.split(".")[1], module.split(".")[1] if module.count(".") else None
        if target is None:  # from pipeline import <stage>
            targets = set(names)
        else:
            targets = {target}
        for other in targets - {stage}:
            assert other in ALLOWED[stage], f"{where}: {stage} may not import {other}"


@pytest.mark.parametrize("path", _modules(), ids=lambda p: str(p.relative_to(REPO)))
def test_no_module_imports_private_names_of_another(path: Path):
    for module, names, line in _imports(path):
        if module.split(".")[0] not in LIBRARIES or module == _name(path):
            continue
        folder = REPO.joinpath(*module.split("."))
        private = [n for n in names if n.startswith("_") and not (folder / f"{n}.py").is_file()]  # private modules ok
        assert not private, f"{path.relative_to(REPO)}:{line} imports private {private} from {module}"
