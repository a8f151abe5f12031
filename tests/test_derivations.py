r"""The derivations and the code point at each other; these links must not rot.

* every ``[`path`](../path)`` link and every backticked ``path.py`` in ``derivations/*.md``
  names a file that exists;
* every backticked name right after such a file reference (``path.py` `name``) is defined in
  that file (function, class, or ``Class.method``), and every cited ``tests/...py` `test_x``
  is a test that exists;
* every ``[NN-topic.md#anchor]`` reference in a code comment names a heading (or an explicit
  ``<a id>``) that exists in that derivation.

They must also render on GitHub, whose Markdown pass runs before the math renderer sees the
text (``test_math_survives_githubs_markdown_pass``):

* display math is a fenced ````` ```math ````` block, never ``$$...$$`` (a ``\\`` in the middle
  of a ``$$`` line, or a ``\{``, reaches MathJax without its backslash);
* plain inline math ``$...$`` holds no backslash followed by ASCII punctuation (``\,``, ``\;``,
  ``\{``, ``\}``, ``\|``, ``\_``, ``\\``: Markdown treats each as an escaped character
  and drops the backslash), does not cross a line break, has no ``<`` directly before a letter
  (an HTML tag to Markdown) and, in a table row, no ``|``.  Write ``\lbrace``/``\rbrace``,
  ``\Vert``, ``v_{\min}`` for such symbols, or use GitHub's ``$`...`$`` form, whose content
  Markdown leaves alone.
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


# --------------------------------------------------------------------------- rendering
# A backslash before ASCII punctuation is a Markdown escape: GitHub drops the backslash before
# MathJax sees the formula (\{ -> {, \, -> ",", \| -> |, \_ -> _, \\\\ -> \\).
BACKSLASH_PUNCT = re.compile(r"\\[!-/:-@\[-`{-~]")


def _blank_fences(text: str) -> str:
    """The text with every fenced block (```...```, ```math included) blanked to spaces, so
    positions and line numbers are kept."""
    out, fence = [], None
    for line in text.split("\n"):
        s = line.lstrip()
        if fence is None and s.startswith(("```", "~~~")):
            fence = s[:3]
            out.append(" " * len(line))
            continue
        if fence is not None:
            if s.startswith(fence):
                fence = None
            out.append(" " * len(line))
            continue
        out.append(line)
    return "\n".join(out)


def math_spans(text: str):
    """(kind, offset, body) of every math span outside fenced blocks, code spans and HTML
    comments: kind "github" for $`...`$, "display" for a stray $$, "plain" for $...$."""
    text = _blank_fences(text)
    text = re.sub(r"<!--.*?-->", lambda m: " " * len(m.group(0)), text, flags=re.S)
    i, n = 0, len(text)
    while i < n:
        if text.startswith("$`", i):
            j = text.find("`$", i + 2)
            j = n if j < 0 else j
            yield "github", i, text[i + 2:j]
            i = j + 2
        elif text[i] == "\\":
            i += 2
        elif text[i] == "`":
            k = i
            while k < n and text[k] == "`":
                k += 1
            j = text.find(text[i:k], k)
            i = k if j < 0 else j + (k - i)
        elif text.startswith("$$", i):
            yield "display", i, ""
            i += 2
        elif text[i] == "$":
            j = i + 1
            while j < n and text[j] != "$":
                j += 2 if text[j] == "\\" else 1
            yield "plain", i, text[i + 1:j]
            i = j + 1
        else:
            i += 1


def rendering_problems(text: str) -> list:
    lines = text.split("\n")
    problems = []
    for kind, pos, body in math_spans(text):
        line = text.count("\n", 0, pos) + 1
        if kind == "display":
            problems.append(f"line {line}: $$ display math outside a ```math block")
            continue
        if kind != "plain":
            continue
        shown = f"${body[:60]}$"
        if "\n" in body:
            problems.append(f"line {line}: inline math crosses a line break: {shown}")
        m = BACKSLASH_PUNCT.search(body)
        if m:
            problems.append(f"line {line}: {m.group(0)} inside plain inline math: {shown}")
        if re.search(r"<[A-Za-z/!?]", body):
            problems.append(f"line {line}: '<' before a letter (an HTML tag): {shown}")
        if lines[line - 1].lstrip().startswith("|") and "|" in body:
            problems.append(f"line {line}: '|' inside math in a table row: {shown}")
    return problems


@pytest.mark.parametrize("md", MD_FILES, ids=lambda p: p.name)
def test_math_survives_githubs_markdown_pass(md):
    problems = rendering_problems(md.read_text())
    assert not problems, "\n".join(problems)


# Lines the derivations held before this check existed (verbatim), and the forms that replace them.
OLD_LINES = [
    (r"indices $k \in \{1..K\}^M$: each", r"\{"),                                  # 04: braces lost
    (r"$\mathrm{KL}(q\,\|\,p) = -H[q] - \mathbb E_q[\log p(z)]$. With", r"\,"),    # 00
    (r"$\log\pi = \mathrm{log\_softmax}(\rho)$. The softmax", r"\_"),              # 03: a subscript
    (r"   $L = \begin{pmatrix}\ell_1 & 0\\ l & L_{22}\end{pmatrix}$; $LL^\top", "\\\\"),  # 02: one row
    ("$$y = xW + \\mathbf 1 b^\\top \\tag{1.1}$$", "$$ display"),
    ("$\\mathbb E_q[\\log p(z)]\n = 0$", "line break"),
    ("Grouping by entries, $\\sum_{k<j} L_{jk}^2$", "HTML tag"),
    ("| $|x|$ | 1 |", "table row"),
]
NEW_LINES = (r"indices $k \in \lbrace 1..K\rbrace^M$: each "
             r"$\mathrm{KL}(q \Vert p) = -H[q]$, $`\mathrm{KL}(q\,\|\,p)`$, $\sum_{k < j} L_{jk}^2$"
             "\n\n   ```math\n   L = \\begin{pmatrix}\\ell_1 & 0\\\\ l & L_{22}\\end{pmatrix}\n   ```\n"
             "| $\\vert x\\vert$ | 1 |")


@pytest.mark.parametrize("line, bad", OLD_LINES)
def test_rendering_check_catches_the_old_constructs(line, bad):
    problems = rendering_problems(line)
    assert any(bad in p for p in problems), (line, problems)


def test_rendering_check_passes_the_replacements():
    assert not rendering_problems(NEW_LINES), rendering_problems(NEW_LINES)
