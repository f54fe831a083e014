"""The DragBench batch runner: every sample with every method through the normal `DragSession`, resumable.

Layout of `out` (per method, the official result layout, so the official evaluation scripts read it too):

    out/<method>/<category>/<sample>/dragged_image.png   the edit
    out/<method>/<category>/<sample>/record.json         settings, final handles, times per stage, peak memory,
                                                         measures (MD, fidelity, shape-world scores) or the error
    out/summary.md, out/summary.json                     the tables (process 0, at the end; or --report-only)

A sample's methods share one session: the first method trains the LoRA and inverts the image, the next is
`configure`d and `reset` and reuses them (inversion too where the methods invert equally far). Each record is
written atomically and last (image first), so a record that exists is complete, and a crash loses at most the
sample in flight. A finished (sample, method) is never run again; one that failed is, with `retry_errors`.
"""
from __future__ import annotations

import json
import os
import resource
import time
from dataclasses import dataclass, field

import numpy as np

from .format import SampleRef, find_samples, read_sample
from .metrics import (DiftFeatures, fidelity, lpips_status, match_points, point_distances, world_case,
                      world_scores)
from .parallel import Process, shard

__all__ = ["RunOptions", "plan", "record_path", "run_dragbench", "read_record", "RESULT_FILE", "RECORD_FILE"]

RESULT_FILE, RECORD_FILE = "dragged_image.png", "record.json"


@dataclass
class RunOptions:
    """What a DragBench run does (the CLI's options)."""
    model: str = "demo"
    methods: tuple = ("dragdiffusion",)
    limit: int | None = None             # the first N samples of the sorted list (the same N for every process)
    changes: dict = field(default_factory=dict)   # DragConfig changes for every method (e.g. lora_steps=2)
    seed: int = 0
    device: str | None = None
    dtype: object = None
    md: bool = True
    md_model: str | None = None          # None: the edit model (its base UNet)
    md_t: int | None = None
    md_block: int = 1
    md_ensemble: int = 8
    retry_errors: bool = False


def plan(data_dir, limit: int | None = None) -> list[SampleRef]:
    refs = find_samples(data_dir)
    return refs[:limit] if limit else refs


def record_dir(out, method: str, ref: SampleRef) -> str:
    return os.path.join(os.fspath(out), method, *([ref.category] if ref.category else []), ref.name)


def record_path(out, method: str, ref: SampleRef) -> str:
    return os.path.join(record_dir(out, method, ref), RECORD_FILE)


def read_record(path: str) -> dict | None:
    """The record at `path`, or None if absent or unreadable (a torn file counts as not written)."""
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except (OSError, json.JSONDecodeError, UnicodeDecodeError):
        return None


def _finished(path: str, retry_errors: bool) -> bool:
    rec = read_record(path)
    return rec is not None and not (retry_errors and rec.get("error"))


def _atomic_write(path: str, data: bytes) -> None:
    tmp = f"{path}.tmp{os.getpid()}"
    with open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def _write_record(path: str, record: dict, image=None) -> None:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    if image is not None:
        import io
        buf = io.BytesIO()
        image.save(buf, format="PNG")
        _atomic_write(os.path.join(os.path.dirname(path), RESULT_FILE), buf.getvalue())
    _atomic_write(path, json.dumps(record, indent=1, default=_json_default).encode())


def _json_default(o):
    if isinstance(o, np.generic):
        return o.item()
    if isinstance(o, np.ndarray):
        return o.tolist()
    return str(o)


def _peak_mb(device) -> float:
    import torch
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024   # Linux: KiB; the process's peak RSS


class _Runner:
    """One process's share of a run: the model and MD featurizer loaded on first need, then sample by sample."""

    def __init__(self, out, opts: RunOptions, proc: Process, log):
        self.out, self.opts, self.proc, self.log = os.fspath(out), opts, proc, log
        self.model = self.dift = None

    def _load(self):
        if self.model is not None:
            return
        from .. import load_model
        device = self.opts.device or self.proc.device
        t = time.perf_counter()
        self.model = load_model(self.opts.model, device=device, dtype=self.opts.dtype)
        self.load_s = time.perf_counter() - t
        if self.opts.md:
            md_model = self.model
            if self.opts.md_model and self.opts.md_model != self.opts.model:
                md_model = load_model(self.opts.md_model, device=device, dtype=self.opts.dtype)
            self.dift = DiftFeatures(md_model, t=self.opts.md_t, block=self.opts.md_block,
                                     ensemble=self.opts.md_ensemble)

    def _base(self, ref: SampleRef, method: str) -> dict:
        return dict(sample=ref.id, category=ref.category, name=ref.name, method=method, model=self.opts.model,
                    seed=self.opts.seed, rank=self.proc.rank, world_size=self.proc.world, pid=os.getpid())

    def run_sample(self, ref: SampleRef, methods: list[str]) -> list[dict]:
        """Run `methods` on one sample; write and return their records (an error record if the sample or a
        method fails: the run goes on)."""
        try:
            sample = read_sample(ref.folder, ref.category).check()
        except (ValueError, OSError) as e:
            recs = [dict(self._base(ref, m), error=f"{type(e).__name__}: {e}") for m in methods]
            for m, r in zip(methods, recs):
                _write_record(record_path(self.out, m, ref), r)
            return recs
        self._load()
        from .. import DragSession
        case = world_case(sample)
        src_feat, session, recs = None, None, []
        for method in methods:
            rec = self._base(ref, method)
            rec.update(image=os.path.join(ref.folder, "original_image.png"),
                       out=os.path.join(record_dir(self.out, method, ref), RESULT_FILE), prompt=sample.prompt,
                       drags=[dict(handle=list(h), target=list(t)) for h, t in zip(sample.handles, sample.targets)],
                       mask="painted" if sample.mask is not None else "none (whole image may change)")
            img = None
            try:
                cfg = self.model.default_config(**{"method": method, **self.opts.changes})
                if session is None:
                    session = DragSession(self.model, sample.image, prompt=sample.prompt, seed=self.opts.seed,
                                          config=cfg)
                    for h, t in zip(sample.handles, sample.targets):
                        session.add_drag(h, t)
                    session.set_mask(sample.mask)
                else:
                    session.configure(**cfg.to_dict())
                    session.reset()
                img, edit_rec = self._edit(session)
                rec.update(edit_rec)
                t = time.perf_counter()
                rec["measures"] = self._measure(sample, np.asarray(img.convert("RGB")), case, src_feat)
                src_feat = rec["measures"].pop("_src_feat", src_feat)
                rec["timings_s"]["measures"] = round(time.perf_counter() - t, 3)
            except Exception as e:  # noqa: BLE001 - one bad sample must not end a many-hour run: it is recorded
                rec["error"] = f"{type(e).__name__}: {' '.join(str(e).split())}"
                img = None
            rec["finished_at"] = time.strftime("%Y-%m-%dT%H:%M:%S")
            _write_record(record_path(self.out, method, ref), rec, img)
            recs.append(rec)
        return recs

    def _edit(self, s):
        """LoRA, inversion, features (each timed; cache hits take ~0 s), drag, denoise: (image, record part)."""
        import torch
        dev = self.model.device
        if dev.type == "cuda":
            torch.cuda.reset_peak_memory_stats(dev)
        sync = (lambda: torch.cuda.synchronize(dev)) if dev.type == "cuda" else (lambda: None)
        before = dict(s.counters)
        timings, t0 = {}, time.perf_counter()
        for stage, fn in (("lora", s.cache.train_lora), ("inversion", s.cache.invert),
                          ("features", s.cache.extract_features)):
            t = time.perf_counter()
            fn(s.spec)
            sync()
            timings[stage] = time.perf_counter() - t
        s.prepare(progress=False)
        t = time.perf_counter(); s.run(progress=False); sync(); timings["drag"] = time.perf_counter() - t
        t = time.perf_counter(); img = s.result(); sync(); timings["denoise"] = time.perf_counter() - t
        timings["edit"] = time.perf_counter() - t0
        hist = s.history
        return img, dict(config=s.config.to_dict(), final_handles=[list(h) for h in s.handles], steps=s.n_steps,
                         reached=s.reached, stop_reason=s.stop_reason, final_loss=hist[-1].loss if hist else None,
                         timings_s={k: round(v, 3) for k, v in timings.items()},
                         peak_memory_mb=round(_peak_mb(dev), 1),
                         peak_memory_kind="cuda max allocated" if dev.type == "cuda" else "process peak RSS",
                         counters={k: s.counters[k] - before.get(k, 0) for k in s.counters},
                         counters_session=dict(s.counters))

    def _measure(self, sample, edited: np.ndarray, case, src_feat) -> dict:
        m = fidelity(sample.image, edited, sample.mask)
        if self.dift is not None:
            if src_feat is None:
                src_feat = self.dift(sample.image, sample.prompt)
            matched = match_points(src_feat, self.dift(edited, sample.prompt), sample.handles)
            d = point_distances(matched, sample.targets)
            m.update(md=float(np.mean(d)), md_points=[round(v, 4) for v in d],
                     matched_handles=[list(p) for p in matched], md_features=self.dift.describe())
            m["_src_feat"] = src_feat
        if case is not None:
            m["world"] = world_scores(edited, case)
        return m


def run_dragbench(data_dir, out, opts: RunOptions, proc: Process | None = None, log=print) -> dict:
    """Run this process's share of the samples (all of them for one process) with every method; skip what has a
    record already. Returns {'ran', 'skipped', 'errors', 'samples', 'seconds'} for this process."""
    proc = proc or Process(0, 1, None)
    refs = plan(data_dir, opts.limit)
    mine = shard(refs, proc.rank, proc.world)
    runner = _Runner(out, opts, proc, log)
    tag = f"[process {proc.rank + 1}/{proc.world}] " if proc.world > 1 else ""
    todo = [(ref, [m for m in opts.methods if not _finished(record_path(out, m, ref), opts.retry_errors)])
            for ref in mine]
    skipped = sum(len(opts.methods) - len(ms) for _, ms in todo)
    todo = [(ref, ms) for ref, ms in todo if ms]
    log(f"{tag}{len(mine)} of {len(refs)} samples × {len(opts.methods)} method(s) here: "
        f"{skipped} finished record(s) kept, {sum(len(ms) for _, ms in todo)} to run")
    ran = errors = 0
    t_start = time.perf_counter()
    for i, (ref, methods) in enumerate(todo):
        recs = runner.run_sample(ref, methods)
        for r in recs:
            ran += 1
            errors += bool(r.get("error"))
            if r.get("error"):
                what = f"error: {r['error']}"
            else:
                ms = r.get("measures", {})
                md = f"MD {ms['md']:.2f} px, " if "md" in ms else ""
                what = f"{r['steps']} steps, {md}{r['timings_s']['edit']:.1f} s"
            log(f"{tag}[{i + 1}/{len(todo)}] {ref.id} {r['method']}: {what}")
        el = time.perf_counter() - t_start
        if i + 1 < len(todo):
            log(f"{tag}  {el:.0f} s so far, about {el / (i + 1) * (len(todo) - i - 1):.0f} s to go")
    return dict(ran=ran, skipped=skipped, errors=errors, samples=len(mine),
                seconds=round(time.perf_counter() - t_start, 2),
                load_model_s=round(getattr(runner, "load_s", 0.0), 2), lpips=lpips_status()[1])
