"""The benchmark scripts (benchmarks/*.py are scripts, not a package), loaded as modules for the tests."""
import importlib.util
from pathlib import Path

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"


def load_benchmark(filename: str):
    """benchmarks/`filename` as a fresh module object (its top level runs; nothing goes into sys.modules)."""
    spec = importlib.util.spec_from_file_location(f"{Path(filename).stem}_under_test", BENCHMARKS / filename)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod
