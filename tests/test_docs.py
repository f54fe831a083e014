"""Every ```python block of README.md and docs/*.md runs as pasted, on the shipped demo model.

Blocks of one file run in order in one namespace, as a reader pastes them into one notebook (a later block
uses the session an earlier one made), in a temporary folder (files they write land there). A block that
needs what a test machine lacks (a GPU, a hub model, Google Colab) is marked in the Markdown with an HTML
comment on the line before it, ``<!-- skip-test: the reason -->``: it is skipped with that reason, shown in
the test's id and in pytest's summary.
"""
from __future__ import annotations

import re
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
FILES = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]

FENCE = re.compile(r"^(?P<indent>[ \t]*)```python[ \t]*\n(?P<body>.*?)^(?P=indent)```[ \t]*$", re.M | re.S)
SKIP = re.compile(r"<!--\s*skip-test:\s*(?P<why>.*?)\s*-->\s*$")

# Blocks in files this test's owner does not edit, that do not run as they stand: (file, a piece of the block's
# code or "" for every block of the file) -> why. Their owners may replace an entry with a skip-test marker.
NOT_SCRIPTS = {
    ("docs/session_api.md", ""): "an API listing with placeholders such as (x, y), not a script",
    ("docs/dragbench.md", "save_sample(editor.session"): "uses `editor`, a DragEditor shown in a notebook",
}


def not_a_script(rel: str, code: str):
    return next((why for (f, piece), why in NOT_SCRIPTS.items() if f == rel and piece in code), None)


def blocks(path: Path):
    """(line number, code, skip reason or None) of each ```python block."""
    text = path.read_text()
    out = []
    for m in FENCE.finditer(text):
        line = text.count("\n", 0, m.start()) + 1
        before = text[:m.start()].rstrip("\n").splitlines()
        why = SKIP.search(before[-1]) if before else None
        indent = m.group("indent")
        code = "".join(ln[len(indent):] if ln.startswith(indent) else ln
                       for ln in m.group("body").splitlines(keepends=True))
        out.append((line, code, why.group("why") if why else None))
    return out


CASES = []
for f in FILES:
    rel = f.relative_to(REPO).as_posix()
    for i, (line, code, why) in enumerate(blocks(f)):
        why = why or not_a_script(rel, code)
        marks = [pytest.mark.skip(reason=f"{rel}:{line}: {why}")] if why else []
        CASES.append(pytest.param(rel, i, line, code, marks=marks, id=f"{rel}:{line}"))

_NAMESPACES: dict = {}


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    return tmp_path_factory.mktemp("docs")


@pytest.mark.parametrize("rel, index, line, code", CASES)
def test_python_block_runs_as_pasted(rel, index, line, code, workdir, monkeypatch):
    monkeypatch.chdir(workdir)
    monkeypatch.setenv("MPLBACKEND", "agg")
    ns = _NAMESPACES.setdefault(rel, {"__name__": f"docs:{rel}"})
    if ns.get("__failed__"):
        pytest.skip(f"an earlier block of {rel} failed (block at line {ns['__failed__']})")
    try:
        exec(compile(code, f"{rel}:{line}", "exec"), ns)
    except Exception:
        ns["__failed__"] = line
        raise


def test_every_markdown_file_has_its_blocks_found():
    counts = {f.relative_to(REPO).as_posix(): len(blocks(f)) for f in FILES}
    assert counts["README.md"] >= 3 and counts["docs/widgets.md"] >= 3, counts
    assert all(why for f in FILES for _, _, why in blocks(f) if why is not None)
