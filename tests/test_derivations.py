"""The derivations and the code point at each other; these links must not rot.

* every ``[`path`](../path)`` link and every backticked ``path.py`` in ``derivations/*.md``
  names a file that exists;
* every backticked name right after such a file reference (``path.py` `name``) is defined in
  that file (function, class, or ``Class.method``), and every cited ``tests/...py` `test_x``
  is a test that exists;
* every ``[NN-topic.md#anchor]`` reference in a code comment names a heading (or an explicit
  ``<a id>``) that exists in that derivation.
"""
import ast
import pathlib
import re

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
DERIV = ROOT / "derivations"


def defined_names(path: pathlib.Path) -> set:
    tree = ast.parse(path.read_text())
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, (ast.FunctionDef, ast.ClassDef, ast.AsyncFunctionDef)):
            names.add(node.name)
        if isinstance(node, ast.ClassDef):
            for sub in node.body:
                if isinstance(sub, (ast.FunctionDef, ast.AsyncFunctionDef)):
                    names.add(f"{node.name}.{sub.name}")
        if isinstance(node, ast.Assign):
            for t in node.targets:
                if isinstance(t, ast.Name):
                    names.add(t.id)
    return names


def anchors(md: pathlib.Path) -> set:
    out = set()
    for line in md.read_text().splitlines():
        m = re.match(r"^#{1,6}\s+(.*)$", line)
        if m:
            text = re.sub(r"<[^>]+>", "", m.group(1)).strip().lower()
            text = re.sub(r"[^\w\- ]", "", text)
            out.add(text.replace(" ", "-"))
        out.update(re.findall(r'<a\s+(?:id|name)="([^"]+)"', line))
    return out


MD_FILES = sorted(DERIV.glob("*.md"))


def test_there_are_derivations():
    names = {p.name for p in MD_FILES}
    assert {"00-backprop.md", "01-kl-direction.md", "02-full-covariance.md",
            "03-gmvae.md", "04-vqvae.md"} <= names, names


@pytest.mark.parametrize("md", MD_FILES, ids=lambda p: p.name)
def test_derivation_links_exist(md):
    text = md.read_text()
    problems = []
    # markdown links to local files
    for target in re.findall(r"\]\((\.\./[^)#\s]+|[\w./-]+\.(?:py|md|png))(?:#[^)]*)?\)", text):
        if target.startswith("http"):
            continue
        if not (md.parent / target).resolve().exists():
            problems.append(f"missing file {target}")
    # `path.py` `name` (optionally the path inside a markdown link)
    pat = re.compile(r"(?:\[)?`((?:scratchvae|tests)/[\w/]+\.py)`(?:\]\([^)]*\))?\s+`([\w.]+)`")
    for path, name in pat.findall(text):
        f = ROOT / path
        if not f.exists():
            problems.append(f"missing file {path}")
            continue
        if name not in defined_names(f):
            problems.append(f"{path} has no {name}")
    assert not problems, problems


def test_code_anchor_references_exist():
    problems = []
    for py in sorted((ROOT / "scratchvae").rglob("*.py")):
        for md, anchor in re.findall(r"\[?(\d\d-[\w-]+\.md)#([\w-]+)\]?", py.read_text()):
            path = DERIV / md
            if not path.exists():
                problems.append(f"{py.name}: {md} does not exist")
            elif anchor not in anchors(path):
                problems.append(f"{py.name}: {md}#{anchor} not found")
    assert not problems, problems
