"""How many CPU threads torch uses for dragnb's UNet work: the thread policy.

Why there is one: torch's CPU kernels run on OpenMP threads, one per core by default, and every parallel
region waits for its slowest thread. When another process keeps a core busy, one of torch's threads keeps
losing its core and every other thread waits for it: on a 2-core machine with one busy process beside it,
the demo edit took 65-154 s instead of 12 s, while one thread took about 15 s. A notebook always has
something else running (the kernel's own work, the browser, another cell, a Colab VM's agents).

The policy (``"auto"``, the default) for a model on the CPU, applied by `dragnb.unet.using` (the one door
of every UNet use) in the thread that does the work, for the time of that use (the thread's own count comes
back afterwards, so a notebook's other torch work keeps its setting):

    threads = min(ceiling, max(1, cores - 1 - extra_busy))

* ``cores``: the processors this process may run on (`os.sched_getaffinity`, and a cgroup CPU quota);
* one core is left for everything else (the kernel answering the browser, the browser, one other busy
  process), so a 2-core machine uses 1 thread and an 8-core one 7;
* ``extra_busy``: cores kept busy by other processes beyond that one, measured from ``/proc/stat`` minus
  this process's own CPU time over the time since the last look (at most every `RECHECK_S` seconds; 0
  where ``/proc/stat`` cannot be read);
* ``ceiling``: torch's thread count when dragnb first looked (so ``OMP_NUM_THREADS`` or a
  ``torch.set_num_threads`` call made before the first edit is an upper bound).

Override it (both win over the policy, the call over the variable):

* ``DRAGNB_THREADS=N`` in the environment: exactly N threads; ``DRAGNB_THREADS=torch``: dragnb never
  changes torch's setting; ``DRAGNB_THREADS=auto``: the policy;
* ``dragnb.set_threads(N)`` / ``set_threads("torch")`` / ``set_threads(None)`` (back to the variable or
  the policy).

Results are bit-identical only at the same thread count (float reductions split differently): to compare
bits across machines or loads, fix the count (``DRAGNB_THREADS=1``). On a machine of 1 or 2 cores the policy
always gives 1, so results there never depend on the load.
"""
from __future__ import annotations

import math
import os
import threading
import time
from contextlib import contextmanager

import torch

__all__ = ["set_threads", "policy", "choose_threads", "apply", "scoped", "cpu_count", "RECHECK_S"]

RECHECK_S = 5.0
"""The other processes' load is looked at again at most this often (seconds)."""

_ENV = "DRAGNB_THREADS"
_lock = threading.Lock()
_override: object = None            # None: the environment decides; else an int or "torch" or "auto"
_ceiling: int | None = None
_extra_busy = 0
_last_sample: tuple | None = None   # (monotonic time, busy ticks of the machine, own CPU seconds)
_applied = threading.local()        # .n: what this thread last set


def _parse(value, where: str):
    if value is None or isinstance(value, bool):
        raise TypeError(f"{where}: use a whole number of threads, 'auto' or 'torch', got {value!r}")
    if isinstance(value, str):
        v = value.strip().lower()
        if v in ("auto", "torch", ""):
            return v or "auto"
        try:
            value = int(v)
        except ValueError:
            raise ValueError(f"{where}={value!r}: use a whole number of threads (e.g. 1), 'auto' or 'torch'") from None
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    if not isinstance(value, int):
        raise TypeError(f"{where}: use a whole number of threads, 'auto' or 'torch', got {value!r}")
    if value < 1:
        raise ValueError(f"{where}={value}: use at least 1 thread")
    return value


def set_threads(n=None) -> None:
    """Fix the CPU thread count of dragnb's UNet work: ``set_threads(2)``; ``set_threads("torch")`` leaves
    torch's own setting alone; ``set_threads("auto")`` the policy; ``set_threads(None)`` back to the
    ``DRAGNB_THREADS`` environment variable (or the policy when it is unset). Takes effect at the next UNet use."""
    global _override
    _override = None if n is None else _parse(n, "set_threads")


def policy():
    """What decides the thread count now: an int (fixed), ``"torch"`` or ``"auto"``."""
    if _override is not None:
        return _override
    env = os.environ.get(_ENV)
    if env is None:
        return "auto"
    try:
        return _parse(env, _ENV)
    except (TypeError, ValueError):
        return "auto"                    # a bad variable must not break an edit; `check_environment` says why


def check_environment() -> str | None:
    """Why ``DRAGNB_THREADS`` is not understood, or None."""
    env = os.environ.get(_ENV)
    if env is None:
        return None
    try:
        _parse(env, _ENV)
    except (TypeError, ValueError) as e:
        return f"{e} (ignored: the automatic policy is used)"
    return None


def cpu_count() -> int:
    """Processors this process may use: its CPU affinity, bounded by a cgroup (v2) CPU quota when there is one."""
    try:
        n = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        n = os.cpu_count() or 1
    try:
        with open("/sys/fs/cgroup/cpu.max") as f:
            quota, period = f.read().split()[:2]
        if quota != "max":
            n = min(n, max(1, math.ceil(int(quota) / int(period))))
    except (OSError, ValueError):
        pass
    return max(1, n)


def _sample():
    """(now, busy CPU ticks of the whole machine, this process's CPU seconds), or None without /proc/stat."""
    try:
        with open("/proc/stat") as f:
            fields = f.readline().split()
    except OSError:
        return None
    if not fields or fields[0] != "cpu":
        return None
    ticks = [int(v) for v in fields[1:]]
    busy = sum(ticks) - ticks[3] - (ticks[4] if len(ticks) > 4 else 0)   # all but idle and iowait
    t = os.times()
    return time.monotonic(), busy, t.user + t.system


def _others_busy(before, after) -> float:
    """Cores the other processes kept busy between two samples."""
    hz = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100
    wall = after[0] - before[0]
    if wall <= 0:
        return 0.0
    return max(0.0, ((after[1] - before[1]) / hz - (after[2] - before[2])) / wall)


def choose_threads(now: float | None = None) -> int:
    """The policy's thread count now (see the module docstring); updates the load measure when it is due."""
    global _ceiling, _extra_busy, _last_sample
    with _lock:
        if _ceiling is None:
            _ceiling = max(1, torch.get_num_threads())
        cores = cpu_count()
        if cores > 2:                    # on 1-2 cores the answer is 1 whatever the load: no need to look
            s = _sample()
            if s is not None and _last_sample is not None and s[0] - _last_sample[0] >= RECHECK_S:
                busy = _others_busy(_last_sample, s)
                _extra_busy = max(0, math.ceil(busy - 1.3))   # beyond the one core left free; 0.3 of slack
                _last_sample = s
            elif s is not None and _last_sample is None:
                _last_sample = s
        return min(_ceiling, max(1, cores - 1 - _extra_busy))


def apply(device) -> int | None:
    """Set torch's thread count for this thread before UNet work on `device` (CPU only); returns the count set,
    or None when dragnb leaves torch alone (a GPU device, or the ``"torch"`` policy)."""
    if getattr(device, "type", str(device)) != "cpu":
        return None
    p = policy()
    if p == "torch":
        return None
    n = choose_threads() if p == "auto" else int(p)
    if getattr(_applied, "n", None) != n or torch.get_num_threads() != n:
        torch.set_num_threads(n)
        _applied.n = n
    return n


@contextmanager
def scoped(device):
    """`apply` for the block, then this thread's previous count again: dragnb's UNet work follows the policy,
    the caller's own torch work keeps the caller's setting. (A switch costs about 0.1 ms.)"""
    before = torch.get_num_threads()
    n = apply(device)
    try:
        yield n
    finally:
        if n is not None and torch.get_num_threads() != before:
            torch.set_num_threads(before)
            _applied.n = before


def _reset_for_tests() -> None:
    """Forget the measured load and the ceiling (tests only)."""
    global _ceiling, _extra_busy, _last_sample, _override
    with _lock:
        _ceiling, _extra_busy, _last_sample, _override = None, 0, None, None
    _applied.n = None
