"""Which share of the samples this process runs: one process, or one of many under `accelerate launch`.

`accelerate launch --multi_gpu --num_processes N -m dragnb dragbench ...` (or torchrun, or any launcher that sets
RANK and WORLD_SIZE) starts N copies of the command. (On one machine accelerate 1.x starts N processes only through
its multi-GPU launcher, torchrun: `accelerate launch --cpu --num_processes N` starts ONE process unless an MPI
hostfile is configured. Without GPUs, `--multi_gpu` still starts N CPU processes, joined with gloo.)

Each process takes every N-th sample of the one sorted sample list (`shard`), so the split depends only on the list
and N, and writes its own records; no process waits for another until the end, where process 0 assembles the table
from all records.
"""
from __future__ import annotations

import os
import time
from dataclasses import dataclass
from typing import Callable

__all__ = ["Process", "this_process", "shard", "wait_for_files"]


@dataclass(frozen=True)
class Process:
    rank: int                                   # 0 .. world - 1
    world: int                                  # number of processes
    device: str | None                          # the accelerator this process should use (None: the default)
    barrier: Callable[[], None] | None = None   # waits for every process (None: poll the records instead)
    launcher: str = "single"                    # "single", "accelerate" or "env"


def this_process() -> Process:
    """This process's rank, the process count and device, from accelerate's `PartialState` when launched by
    `accelerate launch` (or torchrun), from RANK / WORLD_SIZE / LOCAL_RANK otherwise, else a single process."""
    try:
        world = int(os.environ.get("WORLD_SIZE", "1") or 1)
        rank = int(os.environ.get("RANK", "0") or 0)
        local = int(os.environ.get("LOCAL_RANK", str(rank)) or 0)
    except ValueError:
        raise ValueError(f"RANK={os.environ.get('RANK')!r} / WORLD_SIZE={os.environ.get('WORLD_SIZE')!r} are not "
                         "whole numbers: unset them, or launch with accelerate launch") from None
    if world <= 1:
        return Process(0, 1, None)
    if not 0 <= rank < world:
        raise ValueError(f"RANK={rank} is outside 0..{world - 1} (WORLD_SIZE={world}): fix the launcher's settings")
    if os.environ.get("MASTER_ADDR"):
        try:
            from accelerate import PartialState
        except ImportError:
            PartialState = None
        if PartialState is not None:
            import torch
            # cpu=True where there is no GPU: accelerate then joins the processes with gloo (MULTI_CPU)
            st = PartialState(cpu=not torch.cuda.is_available())
            if st.num_processes == world:
                return Process(st.process_index, st.num_processes, str(st.device), st.wait_for_everyone,
                               "accelerate")
    import torch
    device = None
    if torch.cuda.is_available():
        device = f"cuda:{local % torch.cuda.device_count()}"
        torch.cuda.set_device(device)       # so that a bare "cuda" in any library means this process's GPU too
    return Process(rank, world, device, None, "env")


def shard(items: list, rank: int, world: int) -> list:
    """Every `world`-th item starting at `rank` (round robin: neighbouring samples, often of one category and
    similar cost, go to different processes)."""
    return list(items[rank::world])


def wait_for_files(paths: list[str], timeout_s: float, log=None, every_s: float = 2.0) -> list[str]:
    """Wait until every path exists or `timeout_s` passed; returns the paths still missing."""
    end = time.monotonic() + timeout_s
    last = 0.0
    while True:
        missing = [p for p in paths if not os.path.exists(p)]
        if not missing or time.monotonic() >= end:
            return missing
        if log and time.monotonic() - last > 60:
            log(f"waiting for {len(missing)} record(s) from the other processes ...")
            last = time.monotonic()
        time.sleep(every_s)
