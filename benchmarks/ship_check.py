"""Should a trained demo model replace the shipped one? Issue 17's figures for one weights folder, in one command.

    python benchmarks/ship_check.py WEIGHTS                 # the whole check (about 20 minutes on 2 CPU cores)
    python benchmarks/ship_check.py WEIGHTS --quick         # smoke run: 2 cases, 4 samples, one demo run
    python benchmarks/ship_check.py WEIGHTS --install       # the check, then, if every gate passes, ship it

WEIGHTS is a folder in the demo model's layout (`python -m dragnb.demo.train --out DIR`, or the GPU run's
`benchmarks/gpu_train.sh --unpack FILES WEIGHTS`). What it measures, each beside the shipped model's figure:

* the weights' size (gate: at most 25 MB, the package budget);
* the prior: x0 PSNR of one UNet call at the drag's first timestep (from the model's default config) on 16
  held-out scenes (goal >= 30 dB), the shape fidelity of samples from noise (goal >= 0.8), and, reported beside
  them, the method's DDIM inversion round trip without a LoRA on the same scenes (where a drag starts);
* drags: `bench_quality.py` on N held-out cases (default 50) with the model's default method and the official
  DragDiffusion loop; the milestone is <= 0.3 of the drag left and IoU >= 0.5 with background >= 30 dB;
* the packaged demo, `python -m dragnb demo --weights WEIGHTS`, timed as whole processes (gate: median <= 15 s,
  which only means something on an otherwise idle machine).

"Ship" (the verdict, and the gate for --install) means: within the size and demo-time gates, background >= 30 dB,
drags not worse than the shipped model's beyond noise (case by case on the same seeds: a paired mean difference of
more than two standard errors in distance left or IoU), and better: beyond noise on either, or, with drags equal
within noise, in the prior: better beyond noise in shape fidelity or in x0 PSNR and not worse
beyond noise in the other (two standard errors: fidelity as two proportions over the shapes drawn, x0 PSNR paired
over the same held-out scenes and noise). A model better on both drag means but only within noise is equal, not
better: it is kept out, since every shipped model adds its 25 MB to the repository's history (the thirteenth
session's candidate: paired -0.011 +- 0.033 and +0.001 +- 0.021, the prior equal within noise too). Without per-case
rows of the shipped model it must be better on both means. Issue 17's goals are reported beside it;
they are the issue's to close, not this gate's. --install copies WEIGHTS into dragnb/demo/weights (the old files are
removed first) and, where WEIGHTS_results/figures (what --unpack writes) exists, the training figures into
docs/demo_model/; README and benchmarks/README figures stay for a person to rewrite from the printed table.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

SIZE_MB = 25.0
DEMO_S = 15.0
GOALS = {"x0_psnr_db": 30.0, "shape_fidelity": 0.8, "dist_frac": 0.3, "iou": 0.5, "bg_psnr_db": 30.0}
FIGURES = ("training_curve.png", "samples_from_noise.png", "inversion_roundtrip.png", "loss.csv")
SHIPPED_QUALITY = ROOT / "docs" / "demo_model" / "bench_quality_default.json"


def weights_mb(folder: Path) -> float:
    """Bytes of the tensors a wheel would carry (every *.safetensors under the folder), in MB (10^6)."""
    return sum(p.stat().st_size for p in folder.rglob("*.safetensors")) / 1e6


def prior(weights: str, n_levels: int, n_samples: int) -> dict:
    """x0 PSNR at the default drag timestep and the shape fidelity of samples from noise."""
    import torch

    from dragnb import ddim, load_model
    from dragnb.demo import evaluate
    from dragnb.demo.fidelity import shape_fidelity
    torch.manual_seed(0)
    model = load_model(weights, device="cpu")
    if model.codec_factor is None:
        raise ValueError(f"{weights!r} is not a demo-layout (pixel codec) model: the shape world is rendered in pixels")
    cfg = model.default_config()
    n = cfg.n_inference_steps
    t_drag = ddim.timesteps(model.scheduler, n)[n - cfg.drag_step_index]   # where inversion stops, the drag starts
    unet = model.unet.eval()
    row = evaluate.x0_psnr_by_level(unet, model.scheduler, model.prompt_embeds, model.codec_factor, n=n_levels,
                                    timesteps=(t_drag,), per_scene=True)[0]
    out = {"method": cfg.method, "t_drag": int(t_drag), "x0_psnr_db": round(row["x0_psnr"], 2),
           "x0_psnr_scenes": [round(v, 3) for v in row["x0_psnr_scenes"]]}
    trip = evaluate.roundtrip_psnr(unet, model.scheduler, model.prompt_embeds, model.codec_factor, n=n_levels,
                                   n_steps=n, k=cfg.drag_step_index)
    out.update(roundtrip_psnr_db=round(sum(trip) / len(trip), 2), roundtrip_psnr_min=round(min(trip), 2),
               roundtrip_psnr_scenes=[round(v, 3) for v in trip])
    if n_samples:
        imgs = evaluate.samples_from_noise(unet, model.scheduler, model.prompt_embeds, model.codec_factor, n=n_samples)
        fid = shape_fidelity(imgs)
        out["shape_fidelity"] = round(fid["fidelity"], 3)
        out["fidelity_shapes"] = int(fid["shapes"])
    return out


def prior_change(cand: dict, shipped: dict) -> dict | None:
    """The candidate's prior against the shipped model's, with its noise: the shape fidelity difference with the
    standard error of two independent proportions (over the shapes each model's samples drew), and the x0 PSNR's
    paired mean difference over the held-out scenes (the same scenes and noise for both) with its standard error.
    None when either side lacks the counts (a record from before they were kept)."""
    import math
    if not all(k in d for d in (cand, shipped) for k in ("shape_fidelity", "fidelity_shapes", "x0_psnr_scenes")):
        return None
    a, b = cand["shape_fidelity"], shipped["shape_fidelity"]
    se_f = math.sqrt(a * (1 - a) / max(cand["fidelity_shapes"], 1) + b * (1 - b) / max(shipped["fidelity_shapes"], 1))
    diffs = [x - y for x, y in zip(cand["x0_psnr_scenes"], shipped["x0_psnr_scenes"])]
    return {"fidelity": {"mean": a - b, "se": se_f}, "x0_psnr_db": {**mean_se(diffs), "n": len(diffs)}}


def prior_better(cand: dict, shipped: dict) -> tuple[bool, str]:
    """(better?, text): better beyond noise in one prior measure (more than two standard errors) and not worse beyond
    noise in the other. Without the counts (`prior_change` None): higher fidelity and x0 PSNR no lower, as before."""
    ch = prior_change(cand, shipped)
    if ch is None:
        ok = cand["shape_fidelity"] > shipped["shape_fidelity"] and cand["x0_psnr_db"] >= shipped["x0_psnr_db"]
        return ok, (f"shape fidelity {shipped['shape_fidelity']} -> {cand['shape_fidelity']}, x0 PSNR "
                    f"{shipped['x0_psnr_db']:.2f} -> {cand['x0_psnr_db']:.2f} dB")
    f, x = ch["fidelity"], ch["x0_psnr_db"]
    up_f, down_f = f["mean"] > 2 * f["se"], f["mean"] < -2 * f["se"]
    up_x, down_x = x["mean"] > 2 * x["se"], x["mean"] < -2 * x["se"]
    ok = (up_f and not down_x) or (up_x and not down_f)
    return ok, (f"shape fidelity {shipped['shape_fidelity']} -> {cand['shape_fidelity']} ({f['mean']:+.3f} ± "
                f"{f['se']:.3f}), x0 PSNR {shipped['x0_psnr_db']:.2f} -> {cand['x0_psnr_db']:.2f} dB (paired over "
                f"{x['n']} scenes: {x['mean']:+.2f} ± {x['se']:.2f}; standard errors)")


def quality(weights: str, n: int, workers: int, quick: bool, json_path: Path, methods: str = "full,dragdiffusion") -> dict:
    """bench_quality.py's summary rows for the model's default method ("full") and the official loop, by method."""
    cmd = [sys.executable, str(ROOT / "benchmarks" / "bench_quality.py"), "--weights", weights, "--n", str(n),
           "--methods", methods, "--workers", str(workers), "--threads", str(workers),
           "--json", str(json_path)] + (["--quick"] if quick else [])
    subprocess.run(cmd, check=True)
    return summary_rows(json_path)


def summary_rows(json_path: Path) -> dict:
    """{label: {n, dist_frac (mean), iou (mean), bg_psnr (median), lost}} from a bench_quality.py --json file, with
    the default method as "full" and the official loop as "dragdiffusion"."""
    summary = json.loads(Path(json_path).read_text())["summary"]
    keep = ("n", "dist_frac", "iou", "bg_psnr", "lost")
    short = lambda label: "dragdiffusion" if label.startswith("DragDiffusion") else label  # noqa: E731
    return {short(label): {k: row[k] for k in keep} for label, row in summary.items()}


def case_rows(json_path: Path, label: str = "full") -> list[dict]:
    """The per-case rows of one method of a bench_quality.py --json file (each with its case's seed); [] if absent."""
    rows = json.loads(Path(json_path).read_text()).get("rows", {})
    return list(rows.get(label) or [])


def paired(cand_rows: list[dict], shipped_rows: list[dict], keys=("dist_frac", "iou")) -> dict | None:
    """Candidate minus shipped, case by case on the seeds both ran: {key: {"mean", "se"}, "n"}. The benchmark's
    cases differ far more from each other than the two models do on one case, so this tells a difference from noise
    where the two means alone cannot. None when fewer than 10 cases are common."""
    old = {r["seed"]: r for r in shipped_rows if "seed" in r}
    both = [(r, old[r["seed"]]) for r in cand_rows if r.get("seed") in old]
    if len(both) < 10:
        return None
    return {"n": len(both), **{k: mean_se([float(a[k]) - float(b[k]) for a, b in both]) for k in keys}}


def mean_se(diffs: list[float]) -> dict:
    """{"mean", "se"} of paired differences: their mean and its standard error (inf for fewer than two)."""
    se = statistics.stdev(diffs) / len(diffs) ** 0.5 if len(diffs) > 1 else float("inf")
    return {"mean": statistics.fmean(diffs), "se": se}


def demo_seconds(weights: str, runs: int) -> list[float]:
    """Wall seconds of whole `python -m dragnb demo --weights` processes (start-up and imports included)."""
    times = []
    with tempfile.TemporaryDirectory() as tmp:
        for i in range(runs):
            t = time.perf_counter()
            subprocess.run([sys.executable, "-m", "dragnb", "demo", "--out", os.path.join(tmp, str(i)),
                            "--weights", weights], check=True, stdout=subprocess.DEVNULL)
            times.append(round(time.perf_counter() - t, 2))
    return times


def verdict(cand: dict, shipped: dict | None, slow_demo_reason: str | None = None,
            pair: dict | None = None) -> tuple[bool, list[str]]:
    """(ship?, reasons): the gates, then better than the shipped model.

    Without `pair` (per-case rows of both models on common cases), "better" means a lower mean distance left and
    a higher mean IoU. With it, the drags must not be worse beyond noise (a paired mean difference of more than two
    standard errors: distance up or IoU down), and the model must be better: beyond noise on either, or, with drags
    equal within noise (better means alone are noise too), in its prior beyond noise (`prior_better`;
    `cand["shipped_prior"]` holds the shipped model's). A ship on the prior says so in the reasons."""
    why = []
    ok = True
    if cand["weights_mb"] > SIZE_MB:
        ok = False; why.append(f"weights {cand['weights_mb']:.1f} MB > {SIZE_MB:.0f} MB")
    if cand["demo_s_median"] > DEMO_S:
        if slow_demo_reason:
            why.append(f"demo {cand['demo_s_median']:.1f} s > {DEMO_S:.0f} s, allowed: {slow_demo_reason}")
        else:
            ok = False; why.append(f"demo {cand['demo_s_median']:.1f} s > {DEMO_S:.0f} s (idle machine?)")
    q = cand["quality"]["full"]
    if q["bg_psnr"] < GOALS["bg_psnr_db"]:
        ok = False; why.append(f"background {q['bg_psnr']:.1f} dB < {GOALS['bg_psnr_db']:.0f} dB")
    if shipped is None:   # never ship blind: a model is only shipped when it beats the one it replaces
        ok = False
        why.append(f"no shipped figures to compare with ({SHIPPED_QUALITY.relative_to(ROOT)} is missing or has no "
                   f"'full' row): measure the shipped model first with python benchmarks/bench_quality.py --n 50 "
                   f"--methods full,dragdiffusion --workers 2 --threads 2 --json {SHIPPED_QUALITY.relative_to(ROOT)}")
        return ok, why
    if pair is None:
        if q["dist_frac"] >= shipped["dist_frac"]:
            ok = False; why.append(f"distance left {q['dist_frac']:.2f} not below the shipped {shipped['dist_frac']:.2f}")
        if q["iou"] <= shipped["iou"]:
            ok = False; why.append(f"IoU {q['iou']:.2f} not above the shipped {shipped['iou']:.2f}")
        return ok, why
    d, i, n = pair["dist_frac"], pair["iou"], pair["n"]
    text = (f"paired over {n} cases: distance left {d['mean']:+.3f} ± {d['se']:.3f}, IoU {i['mean']:+.3f} ± "
            f"{i['se']:.3f} (standard errors)")
    if d["mean"] > 2 * d["se"] or i["mean"] < -2 * i["se"]:
        return False, why + [f"drags worse than the shipped model's beyond noise ({text})"]
    if d["mean"] < -2 * d["se"] or i["mean"] > 2 * i["se"]:
        return ok, why
    sp = cand.get("shipped_prior") or {}
    if cand.get("shape_fidelity") is None or sp.get("shape_fidelity") is None:
        return False, why + [f"no better than the shipped model: drags equal within noise ({text}), no prior to compare"]
    better, prior_text = prior_better(cand, sp)
    if better:
        return ok, why + [f"shipped on the prior: drags equal within noise ({text}); {prior_text}"]
    return False, why + [f"no better than the shipped model: drags equal within noise ({text}) and the prior not "
                         f"better beyond noise ({prior_text})"]


def install(weights: Path, dest: Path, docs: Path) -> list[str]:
    """Replace the shipped weights folder's contents with WEIGHTS (and the figures, when present)."""
    copied = []
    for old in dest.iterdir():
        shutil.rmtree(old) if old.is_dir() else old.unlink()
    for item in weights.iterdir():
        (shutil.copytree if item.is_dir() else shutil.copy2)(item, dest / item.name)
        copied.append(str(dest / item.name))
    figures = weights.parent / f"{weights.name}_results" / "figures"
    for name in FIGURES:
        if (figures / name).exists():
            shutil.copy2(figures / name, docs / name)
            copied.append(str(docs / name))
    return copied


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("weights", help="a demo-layout weights folder")
    p.add_argument("--n", type=int, default=50, help="held-out drag cases (default 50)")
    p.add_argument("--workers", type=int, default=2, help="bench_quality worker processes (default 2)")
    p.add_argument("--runs", type=int, default=3, help="timed demo runs (default 3)")
    p.add_argument("--samples", type=int, default=32, help="samples from noise for the shape fidelity (default 32)")
    p.add_argument("--methods", default="full,dragdiffusion",
                   help="bench_quality methods (default full,dragdiffusion; 'full', the model's default, is required)")
    p.add_argument("--allow-slow-demo", default=None, metavar="REASON",
                   help="let a demo over 15 s pass the gate, for the measured gain named in REASON (issue 17 allows it "
                        "when the gain is worth more); the time and the reason are printed and saved")
    p.add_argument("--quick", action="store_true", help="smoke run: 2 cases (bench --quick), 4 samples, 1 demo run")
    p.add_argument("--json", default=None, help="write every figure here")
    p.add_argument("--install", action="store_true", help="when the verdict is 'ship', copy WEIGHTS into the package")
    p.add_argument("--dest", default=str(ROOT / "dragnb" / "demo" / "weights"), help=argparse.SUPPRESS)
    p.add_argument("--docs", default=str(ROOT / "docs" / "demo_model"), help=argparse.SUPPRESS)
    a = p.parse_args(argv)
    from dragnb.demo.run import check_weights_folder
    check_weights_folder(a.weights, option="WEIGHTS ")
    if "full" not in a.methods.split(","):
        raise ValueError(f"--methods {a.methods!r} lacks 'full' (the model's default method), which the verdict reads")
    weights = Path(a.weights).resolve()
    if a.quick:
        a.n, a.samples, a.runs = 2, 4, 1

    cand = {"weights": str(weights), "weights_mb": round(weights_mb(weights), 2)}
    t0 = time.perf_counter()
    cand.update(prior(str(weights), n_levels=4 if a.quick else 16, n_samples=a.samples))
    cand["shipped_prior"] = prior("demo", n_levels=4 if a.quick else 16, n_samples=a.samples)
    print(f"prior: x0 PSNR at t = {cand['t_drag']} (the {cand['method']} drag's first timestep) "
          f"{cand['x0_psnr_db']:.2f} dB; shape fidelity {cand.get('shape_fidelity', 'n/a')}", flush=True)
    with tempfile.TemporaryDirectory() as tmp:
        cand["quality"] = quality(str(weights), a.n, a.workers, a.quick, Path(tmp) / "q.json", a.methods)
        cand["quality_rows"] = case_rows(Path(tmp) / "q.json")
    cand["demo_s"] = demo_seconds(str(weights), a.runs)
    cand["demo_s_median"] = statistics.median(cand["demo_s"])
    cand["check_s"] = round(time.perf_counter() - t0, 1)

    shipped = shipped_dd = None
    if SHIPPED_QUALITY.exists():
        rows = summary_rows(SHIPPED_QUALITY)
        shipped, shipped_dd = rows.get("full"), rows.get("dragdiffusion")
        cand["paired"] = paired(cand["quality_rows"], case_rows(SHIPPED_QUALITY))
    ok, why = verdict(cand, shipped, a.allow_slow_demo, cand.get("paired"))
    cand["verdict"] = "ship" if ok else "keep the shipped model"
    cand["reasons"] = why

    q, dd, sp = cand["quality"]["full"], cand["quality"].get("dragdiffusion"), cand["shipped_prior"]
    lines = [f"ship check of {weights} ({cand['check_s']} s)", "",
             "| figure | goal / gate | this model | shipped model |", "|---|---|---|---|",
             f"| weights (MB) | ≤ {SIZE_MB:.0f} (gate) | {cand['weights_mb']:.1f} | {weights_mb(Path(a.dest)):.1f} |",
             f"| x0 PSNR at the drag's first timestep (dB) | ≥ {GOALS['x0_psnr_db']:.0f} | {cand['x0_psnr_db']:.2f} "
             f"(t = {cand['t_drag']}) | {sp['x0_psnr_db']:.2f} (t = {sp['t_drag']}) |",
             f"| shape fidelity of {a.samples} samples from noise | ≥ {GOALS['shape_fidelity']} | "
             f"{cand.get('shape_fidelity', 'n/a')} | {sp.get('shape_fidelity', 'n/a')} |",
             f"| inversion round trip without LoRA, mean / min (dB) | | {cand['roundtrip_psnr_db']:.2f} / "
             f"{cand['roundtrip_psnr_min']:.2f} | {sp['roundtrip_psnr_db']:.2f} / {sp['roundtrip_psnr_min']:.2f} |",
             f"| drag left, {cand['method']} (mean, n = {q['n']}) | ≤ {GOALS['dist_frac']} | {q['dist_frac']:.2f} | "
             f"{shipped['dist_frac']:.2f} |" if shipped else None,
             f"| IoU | ≥ {GOALS['iou']} | {q['iou']:.2f} | {shipped['iou']:.2f} |" if shipped else None,
             f"| background PSNR (median, dB) | ≥ {GOALS['bg_psnr_db']:.0f} | {q['bg_psnr']:.1f} | "
             f"{shipped['bg_psnr']:.1f} |" if shipped else None,
             f"| shapes lost | | {q['lost']} | {shipped['lost']} |" if shipped else None,
             f"| paired difference, {cand['paired']['n']} common cases (± standard error) | not worse by > 2 SE | "
             f"distance {cand['paired']['dist_frac']['mean']:+.3f} ± {cand['paired']['dist_frac']['se']:.3f}, IoU "
             f"{cand['paired']['iou']['mean']:+.3f} ± {cand['paired']['iou']['se']:.3f} | |" if cand.get("paired") else None,
             f"| DragDiffusion loop: drag left / IoU | | {dd['dist_frac']:.2f} / {dd['iou']:.2f} | "
             f"{shipped_dd['dist_frac']:.2f} / {shipped_dd['iou']:.2f} |" if dd and shipped_dd else None,
             f"| demo wall (s, median of {len(cand['demo_s'])}) | ≤ {DEMO_S:.0f} (gate) | {cand['demo_s_median']:.1f} | |",
             "", f"verdict: {cand['verdict']}" + (f" ({'; '.join(why)})" if why else "")]
    print("\n".join(line for line in lines if line is not None), flush=True)
    if a.json:
        Path(a.json).write_text(json.dumps(cand, indent=1) + "\n")
    if a.install:
        if not ok:
            print("--install: not installed (the verdict is not 'ship')")
        else:
            copied = install(weights, Path(a.dest), Path(a.docs))
            cand["installed"] = copied
            print(f"--install: copied {len(copied)} items into {a.dest} and {a.docs}; now rerun the demo, the quality "
                  "table and the notebooks, and rewrite the figures in README.md and benchmarks/README.md")
    return cand


if __name__ == "__main__":
    main()
