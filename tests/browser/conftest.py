import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))   # jupyter_harness


def pytest_configure(config):
    config.addinivalue_line("markers", "browser: drives a real browser (chromium + playwright + jupyterlab)")
