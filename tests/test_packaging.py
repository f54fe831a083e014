"""The shipped weights are package data: every file under dragnb/demo/weights matches pyproject's globs,
so `load_model("demo")` works from an installed (non-editable) wheel too."""
import fnmatch
from pathlib import Path

import pytest

tomllib = pytest.importorskip("tomllib")   # Python >= 3.11

ROOT = Path(__file__).resolve().parents[1]


def test_every_weight_file_is_package_data():
    cfg = tomllib.loads((ROOT / "pyproject.toml").read_text())
    globs = cfg["tool"]["setuptools"]["package-data"]["dragnb"]
    files = [p.relative_to(ROOT / "dragnb").as_posix() for p in (ROOT / "dragnb/demo/weights").rglob("*") if p.is_file()]
    assert files, "no shipped weights found"
    missing = [f for f in files if not any(fnmatch.fnmatch(f, g) and f.count("/") == g.count("/") for g in globs)]
    assert not missing, f"not in package-data {globs}: {missing}"


def test_torch_requirement_cannot_pull_a_newer_cuda_build():
    deps = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    torch_req = [d for d in deps if d.startswith("torch")]
    assert torch_req and "<" in torch_req[0], "a bare torch requirement can pull a multi-GB CUDA build"
