"""How the training loop spends and saves time on a GPU: `StepSplit` (data against model time per step, from CUDA
events) and `GraphedStep` (the whole update replayed from one CUDA graph: `python -m dragnb.demo.train --cuda-graph`).

The demo model's training step on an H100 was launch-bound: about 3,100 operations a step (forward 1,150, backward
1,940 for the 4-level `f2l4`, counted on the CPU with a dispatch mode) for 0.095 s, about 30 µs each, while the
arithmetic and memory traffic of a batch of 256 need a fraction of that. A CUDA graph launches them as one.
"""
from __future__ import annotations

import contextlib
import time

import torch

from dragnb.graphs import failure_text


class StepSplit:
    """Where the training steps' time goes: the data (scenes drawn, encoded and noised) against the model (forward,
    backward, optimiser, EMA). On a GPU it reads CUDA events, which add no synchronisation until `read()`; on a CPU,
    the clock. A step that is skipped (non-finite loss) is not counted."""

    def __init__(self, device: torch.device):
        self.cuda = device.type == "cuda"
        self.pending: list = []          # [start, after the data, end] marks of the steps since the last read
        self.data_s = self.model_s = 0.0
        self.steps = 0
        self._cur: list = []

    def _mark(self):
        if self.cuda:
            e = torch.cuda.Event(enable_timing=True)
            e.record()
            return e
        return time.perf_counter()

    def start(self) -> None:
        self._cur = [self._mark()]

    def data_done(self) -> None:
        self._cur.append(self._mark())

    def step_done(self) -> None:
        self._cur.append(self._mark())
        self.pending.append(self._cur)

    def read(self) -> tuple[float, float] | None:
        """(data, model) seconds a step over the steps since the last read (None when there were none)."""
        if not self.pending:
            return None
        if self.cuda:
            self.pending[-1][2].synchronize()
        d = m = 0.0
        for a, b, c in self.pending:
            d += a.elapsed_time(b) / 1e3 if self.cuda else b - a
            m += b.elapsed_time(c) / 1e3 if self.cuda else c - b
        n = len(self.pending)
        self.pending = []
        self.data_s, self.model_s, self.steps = self.data_s + d, self.model_s + m, self.steps + n
        return d / n, m / n

    def totals(self) -> dict:
        self.read()
        n = max(1, self.steps)
        return {"s_per_step_data": round(self.data_s / n, 5), "s_per_step_model": round(self.model_s / n, 5)}


class GraphedStep:
    """One whole training update (forward, loss, backward, gradient clipping, optimiser step) replayed from one CUDA graph.

    `update(*inputs) -> outputs` (tensors) must not read anything back to the host and must not zero the gradients
    itself; `zero_grad()` sets them to None. A call runs `update` eagerly, on a side stream, for the first `warmup`
    calls (CUDA's lazy initialisations and cuDNN's choices happen outside the capture); the next call captures it
    (gradients set to None first, so the captured backward writes them afresh at every replay; capturing computes
    nothing) and replays it, and every later call copies `inputs` into the capture's own tensors and replays. The
    outputs are the capture's tensors, overwritten by the next call: read them first. The optimiser must be
    graph-safe (`capturable=True`, a tensor learning rate). A capture that fails is reported in `failure` and every
    later call runs `update` eagerly.
    """

    def __init__(self, update, zero_grad, warmup: int = 3):
        self.update, self.zero_grad, self.warmup = update, zero_grad, warmup
        self.calls = self.replays = 0
        self.failure: str | None = None
        self._replay = self._inputs = self._outputs = None

    def __call__(self, *inputs):
        self.calls += 1
        if self._replay is None and self.failure is None and self.calls > self.warmup:
            try:
                self._inputs = tuple(x.detach().clone() for x in inputs)
                self.zero_grad()
                self._replay, self._outputs = _capture(lambda: self.update(*self._inputs), self.zero_grad)
            except Exception as e:  # noqa: BLE001 - training goes on eagerly, and says why
                self.failure = failure_text(e)
                print(f"--cuda-graph: the capture failed ({self.failure}); training goes on eagerly", flush=True)
        if self._replay is None:
            with (_side_stream() if self.failure is None else contextlib.nullcontext()):
                self.zero_grad()
                return self.update(*inputs)
        for mine, x in zip(self._inputs, inputs):
            mine.copy_(x)
        self._replay()
        self.replays += 1
        return self._outputs


def _capture(fn, zero_grad):
    """(replay, outputs): `fn` captured as a CUDA graph (a seam: the tests put an emulation here). The gradients are
    None when the capture starts, so the captured backward writes them rather than adding to them, at every replay
    (`zero_grad` is what an emulation that runs `fn` eagerly calls before each replay to do the same)."""
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        out = fn()
    return graph.replay, out


@contextlib.contextmanager
def _side_stream():
    """Work in the block on a side stream, ordered after and before the current one (torch's warm-up recipe)."""
    if not torch.cuda.is_available():
        yield
        return
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        yield
    torch.cuda.current_stream().wait_stream(side)
