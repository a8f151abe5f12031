"""The house plan, checked: every floor imports only from floors below it (or its own), no file
grows past ~400 lines, no function of the models or the distributions past ~60 lines."""
import ast
import pathlib

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
PKG = ROOT / "scratchvae"
FLOORS = {"errors": 0, "backend": 1, "fused": 1, "compiled": 1, "nn": 2, "distributions": 3, "quantize": 3,
          "models": 4, "optim": 5, "progress": 5, "train": 5, "data": 5, "idx": 5, "metrics": 5,
          "cluster": 5, "recipe": 5, "options": 5, "plots": 5, "paperfigs": 5, "gradcheck": 5,
          "kl": 5, "estimators": 6, "cli": 7}
FILES = sorted(p for p in PKG.rglob("*.py"))


def _top(path: pathlib.Path) -> str:
    return path.relative_to(PKG).parts[0].removesuffix(".py")


def _imported(path: pathlib.Path) -> set:
    """Top-level package modules that ``path`` imports (module level or inside functions)."""
    rel = path.relative_to(PKG).parts
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {a.name.split(".")[1] for a in node.names
                      if a.name.startswith("scratchvae.")}
        elif isinstance(node, ast.ImportFrom):
            mod = (node.module or "").split(".") if node.module else []
            if node.level == 0:
                if mod[:1] != ["scratchvae"]:
                    continue
                parts = mod[1:]
            else:
                base = list(rel[:-1])[:len(rel) - node.level] if node.level > 1 else list(rel[:-1])
                parts = base + mod
            if parts:
                found.add(parts[0])
            else:
                found |= {a.name for a in node.names}
    return {m for m in found if m in FLOORS}


@pytest.mark.parametrize("path", FILES, ids=lambda p: str(p.relative_to(PKG)))
def test_floors_import_only_downward(path):
    if path.name == "__init__.py" and path.parent == PKG:
        return                                        # the package front door re-exports floor 6
    me = _top(path)
    assert me in FLOORS, f"{me} has no floor in the house plan; add it to FLOORS"
    upward = {m for m in _imported(path) if FLOORS[m] > FLOORS[me]}
    assert not upward, f"{path.relative_to(ROOT)} (floor {FLOORS[me]}) imports {upward}"


def test_the_checker_sees_upward_imports(tmp_path):
    """The check can fail: a models file importing the training loop is caught."""
    bad = PKG / "models" / "_probe_upward.py"
    bad.write_text("from ..train import fit\n")
    try:
        assert "train" in _imported(bad)
        assert FLOORS["train"] > FLOORS[_top(bad)]
    finally:
        bad.unlink()


@pytest.mark.parametrize("path", FILES, ids=lambda p: str(p.relative_to(PKG)))
def test_files_and_functions_stay_small(path):
    lines = path.read_text().count("\n")
    assert lines <= 420, f"{path.relative_to(ROOT)} has {lines} lines; split it"
    if _top(path) in ("models", "distributions"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                n = node.end_lineno - node.lineno + 1
                assert n <= 65, f"{path.relative_to(ROOT)}: {node.name} is {n} lines"
