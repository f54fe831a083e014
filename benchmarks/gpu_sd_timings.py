"""SD-1.5-size timings of dragnb (and of the official DragDiffusion drag loop through the parity adapter, when its
checkout is given), one process, figures into OUT_DIR. Run through `benchmarks/gpu_sd_timings.sh OUT_DIR`, which
installs carried wheels first; see benchmarks/PARITY.md for the device call.

    python benchmarks/gpu_sd_timings.py OUT_DIR [--official DIR]          # random SD-1.5, float16, cuda, 512x512
    python benchmarks/gpu_sd_timings.py OUT_DIR --quick [--official DIR]  # CPU smoke run: tiny model, 64 px, few steps

Part 1: `dragnb.bench.bench_stages` (LoRA 80 steps, inversion 35 of 50 + source features, one drag step, denoise,
whole edit of 80 drag steps, cached re-edit, naive no-cache re-edit; peak memory per stage).
Part 2 (with --official): `parity_official.parity_sd` on a fresh model of the same kind: dragnb's session edit and
the official run_drag sequence (inversion, `drag_diffusion_update` on a float32 UNet under its own float16 autocast
and GradScaler, denoising with its mutual self-attention editor), each stage timed with its peak
`torch.cuda.max_memory_allocated`, plus the stage-by-stage agreement. Ratios official / dragnb per stage.
Part 3: `dragnb.bench.bench_speed`: each speed option of `dragnb.set_speed` (in `SPEED_VARIANTS`' order: CUDA graphs
of every UNet call, regional torch.compile, LoRA-only checkpointing, channels_last, gradient checkpointing, both, a
bfloat16 model) on the same short edit, per stage seconds and peak memory, and how far each option's dragged latent
lands from the baseline's; with `--re-edit-steps N`, a re-drag of N steps on the cached LoRA and inversion too; rows
that would pass the deadline (`--deadline-s`, counted from the start) are skipped and named.
Part 4 (with --profile eager,cuda_graph): `dragnb.bench.profile_drag`: drag steps under torch's profiler, on one model,
each run after its warm-up steps: wall and kernel time per step (how busy the GPU is), the operators launched from
Python per step, and the operators with the most kernel and host time.
Writes gpu_sd_timings.json (everything) and gpu_sd_timings.txt (the table); each part (and each row of part 3)
is written when it ends.
"""
from __future__ import annotations

import argparse
import gc
import json
import os
import sys
import time
import traceback

os.environ.setdefault("TQDM_DISABLE", "1")
HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
try:
    import dragnb  # noqa: F401
except ImportError:
    sys.path.insert(0, os.path.join(HERE, ".."))

import torch  # noqa: E402


def _free():
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()


def _warm_up(m, size: int) -> float:
    """A short eager dragnb edit (2 LoRA and 2 drag steps, 10 DDIM steps) on `m`, so that neither code's stages in
    part 2 pay CUDA's and cuDNN's first calls (when part 1 did not run before). Eager even with cuda_graph set:
    the graphs part 2 times are captured in part 2. Returns its seconds."""
    from dragnb.bench import bench_session
    from dragnb.speed import set_speed
    t0 = time.perf_counter()
    before = set_speed(m, cuda_graph=False)
    s = bench_session(m, size, m.default_config(lora_steps=2, drag_steps=2, n_inference_steps=10))
    s.prepare(progress=False)
    s.step(2)
    s.result()
    set_speed(m, cuda_graph=before["cuda_graph"])
    return time.perf_counter() - t0


def table(res: dict) -> str:
    lines = [f"dragnb SD-size timings: {res.get('setup')}", ""]
    b = res.get("bench_stages")
    if isinstance(b, dict) and "lora_s" in b:
        lines += ["dragnb.bench.bench_stages", f"{'stage':30s} {'seconds':>9s} {'peak MiB':>9s}"]
        for k, m in (("lora_s", "lora_peak_mb"), ("inversion_and_features_s", "invert_peak_mb"),
                     ("first_drag_step_s", None), ("drag_step_s", "drag_peak_mb"), ("denoise_s", "denoise_peak_mb"),
                     ("whole_edit_s", None),
                     ("re_edit_cached_s", None), ("re_edit_naive_s", None), ("speedup_cached_vs_naive", None)):
            if k in b:
                mem = f"{b[m]:9.0f}" if m and m in b else " " * 9
                lines.append(f"{k:30s} {b[k]:9.3f} {mem}")
        lines.append("")
    elif b is not None:
        lines += [f"bench_stages failed: {b}", ""]
    c = res.get("side_by_side")
    if isinstance(c, dict) and "rows" in c:
        lines += ["side by side (same model, image, drag, mask, seed; stage times include the first-call warm-up of "
                  "neither: part 1 or a short eager edit ran first"
                  + ("; dragnb with " + ", ".join(k for k, v in res["setup"].get("speed", {}).items() if v)
                     + ", its captures counted in its stages" if res["setup"].get("speed") else "") + ")",
                  f"{'stage':22s} {'dragnb s':>9s} {'official s':>10s} {'ratio':>6s} {'dragnb MiB':>10s} "
                  f"{'official MiB':>12s}"]
        for r in c["rows"]:
            f = lambda v, w, p: (f"{v:{w}.{p}f}" if isinstance(v, (int, float)) else f"{'n/a':>{w}s}")  # noqa: E731
            lines.append(f"{r['stage']:22s} {f(r['dragnb_s'], 9, 3)} {f(r['official_s'], 10, 3)} "
                         f"{f(r['ratio'], 6, 2)} {f(r['dragnb_peak_mb'], 10, 0)} {f(r['official_peak_mb'], 12, 0)}")
        if c.get("graphs"):
            from dragnb.graphs import stats_line
            lines += ["", f"dragnb with CUDA graphs: {stats_line(c['graphs'])}"]
        for k, line in c.items():          # parity_official.summary_lines' order, the parity line last
            if k.endswith("_line") and k != "parity_line" and line:
                lines += ["", line]
        lines += ["", c.get("parity_line", "")]
    elif c is not None:
        lines += [f"side by side: {c}"]
    sp = res.get("speed")
    if isinstance(sp, dict):
        from dragnb.bench import speed_table
        lines += ["", speed_table(sp)]
    elif sp is not None:
        lines += ["", f"speed options: {sp}"]
    if res.get("profile"):
        from dragnb.bench import profile_table
        lines.append("")
        lines += [profile_table(r) if "error" not in r else f"drag step profile {r.get('run', '')}: {r['error']}"
                  for r in res["profile"]]
    return "\n".join(lines) + "\n"


def side_by_side_rows(times: dict, steps: dict) -> list:
    g = lambda k, f="s": times.get(k, {}).get(f)  # noqa: E731
    rows = []
    for stage, dk, ok in (("lora", ["dragnb.lora"], None), ("inversion", ["dragnb.inversion"], ["official.inversion"]),
                          ("features", ["dragnb.features"], None), ("drag_loop", ["dragnb.drag_loop"],
                                                                    ["official.drag_loop"]),
                          ("denoise", ["dragnb.denoise"], ["official.denoise"])):
        ds = sum(g(k) for k in dk) if all(g(k) is not None for k in dk) else None
        os_ = sum(g(k) for k in ok) if ok and all(g(k) is not None for k in ok) else None
        dm = max((g(k, "peak_mb") or 0) for k in dk) if ds is not None else None
        om = max((g(k, "peak_mb") or 0) for k in ok) if os_ is not None else None
        rows.append(dict(stage=stage, dragnb_s=ds, official_s=os_, ratio=(os_ / ds) if ds and os_ else None,
                         dragnb_peak_mb=dm or None, official_peak_mb=om or None))
    by = {r["stage"]: r for r in rows}
    # per drag step (each code may stop early when the handles arrive)
    if by["drag_loop"]["dragnb_s"] and steps.get("dragnb"):
        ds = by["drag_loop"]["dragnb_s"] / steps["dragnb"]
        o_loop = by["drag_loop"]["official_s"]
        os_ = o_loop / steps["official"] if o_loop and steps.get("official") else None
        rows.append(dict(stage="drag_step (mean)", dragnb_s=ds, official_s=os_, ratio=os_ / ds if os_ else None,
                         dragnb_peak_mb=None, official_peak_mb=None))
    # an edit without LoRA: the official run_drag always inverts; dragnb's re-edit reuses LoRA and inversion
    d_edit = sum(by[s]["dragnb_s"] for s in ("inversion", "features", "drag_loop", "denoise"))
    o_edit = sum(by[s]["official_s"] or 0 for s in ("inversion", "drag_loop", "denoise")) or None
    rows.append(dict(stage="edit w/o LoRA", dragnb_s=d_edit, official_s=o_edit,
                     ratio=o_edit / d_edit if o_edit else None, dragnb_peak_mb=None, official_peak_mb=None))
    d_re = by["drag_loop"]["dragnb_s"] + by["denoise"]["dragnb_s"]
    rows.append(dict(stage="re-drag (cached)", dragnb_s=d_re, official_s=o_edit,
                     ratio=o_edit / d_re if o_edit else None, dragnb_peak_mb=None, official_peak_mb=None))
    return rows


def profile_speed(run: str) -> dict | None:
    """One --profile run's speed options: None for 'eager', else its --speed words joined by '+'."""
    from dragnb.speed import parse_words
    return None if run == "eager" else parse_words(run.replace("+", ","))


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("out_dir")
    p.add_argument("--official", default=None, help="a DragDiffusion checkout for the side-by-side part")
    p.add_argument("--quick", action="store_true", help="CPU smoke run: tiny model, 64 px, 3 drag and 2 LoRA steps")
    p.add_argument("--model", default=None, help="default random-sd15 (tiny with --quick)")
    p.add_argument("--device", default=None, help="default cuda (cpu with --quick)")
    p.add_argument("--dtype", default=None, help="default float16 on cuda, float32 on cpu")
    p.add_argument("--size", type=int, default=None, help="default 512 (64 with --quick)")
    p.add_argument("--drag-steps", type=int, default=None, help="default 80 (3 with --quick)")
    p.add_argument("--lora-steps", type=int, default=None, help="default 80 (2 with --quick)")
    p.add_argument("--skip-bench", action="store_true", help="skip part 1 (dragnb's stages)")
    p.add_argument("--skip-speed", action="store_true", help="skip part 3 (the speed options)")
    p.add_argument("--speed-variants", default=None,
                   help="comma-separated rows of part 3 (default all: see dragnb.bench.SPEED_VARIANTS)")
    p.add_argument("--re-edit-steps", type=int, default=0,
                   help="part 3: each row also times a re-drag of this many steps on the cached LoRA and inversion "
                        "(80: the '2-s re-drag' figure); default 0, none")
    p.add_argument("--speed", default=None, metavar="OPTIONS",
                   help="dragnb.set_speed options for parts 1 and 2, as the CLI's --speed words (e.g. cuda_graph); "
                        "part 3 measures each option on its own anyway")
    p.add_argument("--no-official", action="store_true",
                   help="skip part 2 even when .official/ exists (the shell wrapper passes --official by default)")
    p.add_argument("--profile", default=None, metavar="RUNS",
                   help="part 4: comma-separated runs to profile, each 'eager' or --speed words joined by '+' (e.g. "
                        "eager,cuda_graph,cuda_graph+channels_last): --profile-steps drag steps under torch's "
                        "profiler, on one model, for the wall and kernel time of a step and the operators that take it")
    p.add_argument("--profile-steps", type=int, default=10, help="part 4's profiled drag steps (default 10)")
    p.add_argument("--deadline-s", type=float, default=450.0,
                   help="part 3 starts no row likely to end later than this many seconds after the start (default "
                        "450; the shell wrapper's cap is 480)")
    a = p.parse_args(argv)
    from dragnb.bench import SPEED_VARIANTS
    from dragnb.speed import parse_words, set_speed
    speed = parse_words(a.speed) if a.speed else {}
    # the later parts' words are checked now, before any GPU time is spent on the parts before them
    known = [n for n, _ in SPEED_VARIANTS]
    bad = [v for v in (a.speed_variants or "").split(",") if v and v not in known]
    if bad:
        p.error(f"--speed-variants: {bad} are not rows of bench_speed; use some of {known}")
    for run in (a.profile or "").split(","):
        if run.strip():
            try:
                profile_speed(run.strip())
            except ValueError as e:
                p.error(f"--profile: the run {run!r} is neither 'eager' nor speed words joined by '+' ({e})")
    import warnings
    warnings.filterwarnings("ignore")
    q = a.quick
    model = a.model or ("tiny" if q else "random-sd15")
    device = a.device or ("cpu" if q else "cuda")
    dtype = a.dtype or ("float16" if device == "cuda" else "float32")
    size = a.size or (64 if q else 512)
    drag_steps = a.drag_steps if a.drag_steps is not None else (3 if q else 80)
    lora_steps = a.lora_steps if a.lora_steps is not None else (2 if q else 80)
    os.makedirs(a.out_dir, exist_ok=True)
    torch_dtype = getattr(torch, dtype)
    if device == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = False  # the figures are for float16 work; keep float32 parts exact
    res = dict(setup=dict(model=model, device=device, dtype=dtype, size=size, drag_steps=drag_steps,
                          lora_steps=lora_steps, torch=torch.__version__, speed=speed,
                          gpu=torch.cuda.get_device_name() if device == "cuda" else None))
    try:
        import diffusers
        res["setup"]["diffusers"] = diffusers.__version__
    except ImportError:
        raise SystemExit("diffusers is not importable: run through benchmarks/gpu_sd_timings.sh, which installs the "
                         "wheels carried in .whl/") from None
    json_path = os.path.join(a.out_dir, "gpu_sd_timings.json")
    txt_path = os.path.join(a.out_dir, "gpu_sd_timings.txt")

    def write():
        with open(json_path, "w") as f:
            json.dump(res, f, indent=1, default=str)
        with open(txt_path, "w") as f:
            f.write(table(res))

    t_all = time.perf_counter()
    deadline = t_all + a.deadline_s
    if not a.skip_bench:  # part 1: dragnb alone (also warms the GPU for part 2)
        from dragnb.bench import bench_stages
        t0 = time.perf_counter()
        try:
            res["bench_stages"] = bench_stages(model=model, size=size, device=device, dtype=torch_dtype,
                                               drag_steps=drag_steps, lora_steps=lora_steps, repeats=1,
                                               speed=speed)
        except Exception as e:  # noqa: BLE001 - record and go on to part 2
            traceback.print_exc()
            res["bench_stages"] = f"{type(e).__name__}: {e}"
        res["bench_stages_wall_s"] = time.perf_counter() - t0
        write()
        _free()
    if a.official and not a.no_official:  # part 2: side by side with the official code
        import parity_official as po
        t0 = time.perf_counter()
        try:
            off = po.load_official(a.official)
            res["official_commit"] = off.commit
            m = po.build_model(model, device, torch_dtype)
            if speed:
                set_speed(m, **speed)
            if a.skip_bench:
                res["warm_up_s"] = _warm_up(m, size)
            pa = argparse.Namespace(size=size, steps=drag_steps, lora_steps=lora_steps, prompt="a photo of a red ball",
                                    seed=0)
            pr = po.parity_sd(off, m, pa)
            sm = pr["summary"]
            res["side_by_side"] = dict(
                rows=side_by_side_rows(pr["times"], pr["drag_steps_taken"]), times=pr["times"],
                stages=pr["stages"], lora_reconstruction=pr["lora_reconstruction"],
                drag_steps_taken=pr["drag_steps_taken"], summary=sm,
                per_step=[{k: v for k, v in r.items() if k in ("step", "dlatent", "handles_equal", "loss",
                                                                 "motion_loss", "mask_loss", "noise_floor_dlatent",
                                                                 "noise_floor_handles_equal", "eager_dlatent",
                                                                 "eager_handles_equal", "graphed_vs_eager_dlatent",
                                                                 "f16_reference_dlatent", "f16_reference_handles_equal",
                                                                 "f16_reference_mask_loss")}
                          for r in pr["per_step"]],
                inversion_per_step_eager_vs_official=pr.get("inversion_per_step_eager_vs_official"),
                inversion_noise_floor_per_step=pr.get("inversion_noise_floor_per_step"),
                **po.summary_lines(sm))
            if m.speed.get("cuda_graph"):
                from dragnb import graphs
                res["side_by_side"]["graphs"] = graphs.stats(m)
            del m
        except Exception as e:  # noqa: BLE001
            traceback.print_exc()
            res["side_by_side"] = f"{type(e).__name__}: {e}"
        res["side_by_side_wall_s"] = time.perf_counter() - t0
        _free()
    else:
        res["side_by_side"] = "not run: " + ("--no-official" if a.no_official else "no --official checkout given")
    if not a.skip_speed:  # part 3: the speed options, as many rows as the deadline allows
        from dragnb.bench import bench_speed
        t0 = time.perf_counter()
        variants = a.speed_variants.split(",") if a.speed_variants else None

        def row_done(r):
            res["speed"] = r
            write()
        try:
            res["speed"] = bench_speed(model=model, size=size, device=device, dtype=torch_dtype,
                                       drag_steps=3 if q else 8, lora_steps=2 if q else 10, variants=variants,
                                       deadline=deadline, on_row=row_done, re_edit_steps=a.re_edit_steps)
        except Exception as e:  # noqa: BLE001
            traceback.print_exc()
            res["speed"] = f"{type(e).__name__}: {e}"
        res["speed_wall_s"] = time.perf_counter() - t0
        _free()
    if a.profile:  # part 4: where a drag step's time goes
        from dragnb.bench import model_by_name, profile_drag
        t0 = time.perf_counter()
        res["profile"] = []
        try:
            m = model_by_name(model, device, torch_dtype)
            for run in a.profile.split(","):
                run = run.strip()
                try:
                    res["profile"].append(profile_drag(m, size=size, speed=profile_speed(run), lora_steps=2,
                                                       steps=3 if q else a.profile_steps))
                except Exception as e:  # noqa: BLE001 - the next run still goes
                    traceback.print_exc()
                    res["profile"].append(dict(run=run, error=f"{type(e).__name__}: {e}"))
                write()
            del m
        except Exception as e:  # noqa: BLE001
            traceback.print_exc()
            res["profile"].append(dict(error=f"{type(e).__name__}: {e}"))
        res["profile_wall_s"] = time.perf_counter() - t0
        _free()
    res["total_wall_s"] = time.perf_counter() - t_all
    write()
    print(table(res))
    print(f"wrote {json_path} and {txt_path} in {res['total_wall_s']:.1f} s")


if __name__ == "__main__":
    main()
