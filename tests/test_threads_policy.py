"""The CPU thread policy (`dragnb.threads`): what it chooses, its overrides, and that every UNet use applies it."""
from __future__ import annotations

import threading

import pytest
import torch

from dragnb import threads


@pytest.fixture(autouse=True)
def fresh(monkeypatch):
    before = torch.get_num_threads()
    monkeypatch.delenv("DRAGNB_THREADS", raising=False)
    threads._reset_for_tests()
    yield
    threads._reset_for_tests()
    torch.set_num_threads(before)


def test_small_machines_leave_a_core_free(monkeypatch):
    monkeypatch.setattr(threads, "cpu_count", lambda: 2)
    threads._ceiling = 2
    assert threads.choose_threads() == 1                 # 2 cores: 1 thread, whatever the load
    monkeypatch.setattr(threads, "cpu_count", lambda: 1)
    assert threads.choose_threads() == 1


def test_busy_cores_beyond_the_free_one_are_subtracted(monkeypatch):
    monkeypatch.setattr(threads, "cpu_count", lambda: 8)
    threads._ceiling = 8
    hz = 100
    monkeypatch.setattr(threads.os, "sysconf", lambda name: hz)
    samples = iter([(0.0, 0, 0.0),                          # first look
                    (10.0, 3 * 10 * hz + 2 * 10 * hz, 20.0),  # 10 s: machine busy 5 cores, of which 2 are ours
                    (20.0, 3 * 10 * hz + 2 * 10 * hz + 2 * 10 * hz, 40.0)])
    monkeypatch.setattr(threads, "_sample", lambda: next(samples))
    assert threads.choose_threads() == 7                 # nothing measured yet: all but one core
    assert threads.choose_threads() == 5                 # others keep 3 busy: 8 - 1 - 2
    # our own work does not count as "others": 2 cores of ours and nobody else -> back to 7
    assert threads.choose_threads() == 7


def test_ceiling_is_torchs_count_at_first_look(monkeypatch):
    monkeypatch.setattr(threads, "cpu_count", lambda: 16)
    torch.set_num_threads(3)                              # e.g. OMP_NUM_THREADS=3, or the user's own call
    threads._reset_for_tests()
    assert threads.choose_threads() == 3


def test_overrides(monkeypatch):
    cpu = torch.device("cpu")
    threads.set_threads(2)
    assert threads.policy() == 2 and threads.apply(cpu) == 2 and torch.get_num_threads() == 2
    threads.set_threads("torch")
    torch.set_num_threads(1)
    assert threads.apply(cpu) is None and torch.get_num_threads() == 1   # left alone
    threads.set_threads(None)
    monkeypatch.setenv("DRAGNB_THREADS", "1")
    assert threads.policy() == 1 and threads.apply(cpu) == 1
    monkeypatch.setenv("DRAGNB_THREADS", "lots")
    assert threads.policy() == "auto" and "DRAGNB_THREADS='lots'" in threads.check_environment()
    assert threads.apply(torch.device("meta")) is None                  # not the CPU: torch's business
    for bad, err in ((0, ValueError), (1.5, TypeError), ("x", ValueError), (True, TypeError)):
        with pytest.raises(err):
            threads.set_threads(bad)
    import dragnb
    assert dragnb.set_threads is threads.set_threads


def test_every_unet_use_applies_the_policy_in_its_own_thread():
    from dragnb.models import tiny_model
    from dragnb.unet import using
    model = tiny_model(seed=0)
    seen = {}

    def work(n):
        threads.set_threads(n)
        torch.set_num_threads(3)                          # the thread's own setting ...
        with using(model, None):
            seen[n] = torch.get_num_threads()
            with using(model, None):                      # re-entrant, as the lock is
                seen[n, "inner"] = torch.get_num_threads()
        seen[n, "after"] = torch.get_num_threads()        # ... comes back after the UNet use

    for n in (1, 2):
        t = threading.Thread(target=work, args=(n,))
        t.start()
        t.join()
    assert seen == {1: 1, (1, "inner"): 1, (1, "after"): 3, 2: 2, (2, "inner"): 2, (2, "after"): 3}
