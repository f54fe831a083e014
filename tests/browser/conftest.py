import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))   # jupyter_harness


def pytest_configure(config):
    config.addinivalue_line("markers", "browser: drives a real browser (chromium + playwright + jupyterlab + notebook)")


def pytest_terminal_summary(terminalreporter, exitstatus, config):
    """Say why the browser test did not run without needing `-rs` (it is easy to miss otherwise)."""
    from jupyter_harness import missing_requirements
    why = missing_requirements()
    if why:
        terminalreporter.write_line(f"note: the real-browser editor test was skipped: {why}", yellow=True)
