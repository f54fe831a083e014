"""Shared test set-up: small thread count (tiny models gain nothing from more threads, and oversubscribed
threads on a busy 2-core machine make them 100× slower), no hub access, and quiet warnings."""
import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TQDM_DISABLE", "1")

import torch  # noqa: E402

torch.set_num_threads(int(os.environ.get("DRAGNB_TEST_THREADS", "1")))
