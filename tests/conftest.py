"""Shared test set-up: small thread count (tiny models gain nothing from more threads, and oversubscribed
threads on a busy 2-core machine make them 100× slower), no hub access, and quiet warnings."""
import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TQDM_DISABLE", "1")

import torch  # noqa: E402

torch.set_num_threads(int(os.environ.get("DRAGNB_TEST_THREADS", "1")))


import pytest  # noqa: E402


@pytest.fixture(autouse=True)
def _keep_torch_threads():
    """A test that changes torch's thread count (e.g. the trainer's --threads) gives it back: results computed
    in-process later are compared bit for bit with subprocess runs, and the count changes the last bits."""
    n = torch.get_num_threads()
    yield
    if torch.get_num_threads() != n:
        torch.set_num_threads(n)
