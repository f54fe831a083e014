"""The tables of a DragBench run, assembled from the records on disk (whichever process wrote them).

One table per method (n, errors, MD, fidelity, shape-world scores where the truth is known, time and steps per
edit, peak memory) and one per method and category (n, MD, fidelity). The header names the MD feature model and
says which fidelity measure is shown: 1 − LPIPS, or, where LPIPS is unavailable, why and the stated substitute.
"""
from __future__ import annotations

import json
import math
import os

import numpy as np

from .metrics import lpips_status
from .runner import RECORD_FILE, read_record

__all__ = ["collect", "summarise", "format_tables", "write_report"]


def collect(out) -> list[dict]:
    """Every record under `out` (any process's), sorted by (method, sample)."""
    recs = []
    for dirpath, _dirs, files in os.walk(os.fspath(out)):
        if RECORD_FILE in files:
            r = read_record(os.path.join(dirpath, RECORD_FILE))
            if r is not None and "method" in r and "sample" in r:
                recs.append(r)
    return sorted(recs, key=lambda r: (r["method"], r["sample"]))


def _mean(vals):
    vals = [v for v in vals if v is not None and not (isinstance(v, float) and math.isnan(v))]
    return float(np.mean(vals)) if vals else None


def _group(recs: list[dict]) -> dict:
    ok = [r for r in recs if not r.get("error")]
    ms = [r.get("measures", {}) for r in ok]
    md_points = [d for m in ms for d in m.get("md_points", [])]
    world = [m["world"] for m in ms if "world" in m]
    out = dict(n=len(recs), errors=len(recs) - len(ok),
               md=_mean(md_points),   # official: the mean over all points, not over samples
               one_minus_lpips=_mean([m.get("one_minus_lpips") for m in ms]),
               one_minus_mad=_mean([m.get("one_minus_mad") for m in ms]),
               bg_psnr=_mean([m.get("bg_psnr") for m in ms]),
               seconds=_mean([r["timings_s"].get("edit") for r in ok]),
               steps=_mean([r.get("steps") for r in ok]),
               peak_memory_mb=max([r.get("peak_memory_mb") or 0 for r in ok], default=None))
    if world:
        out["world"] = dict(n=len(world), dist=_mean([w["dist"] for w in world]),
                            dist_frac=_mean([w["dist_frac"] for w in world]),
                            iou=_mean([w["iou"] for w in world]), lost=int(sum(w["lost"] for w in world)))
    return out


def summarise(recs: list[dict]) -> dict:
    """{'methods': {method: figures}, 'categories': {method: {category: figures}}, 'md_features', 'fidelity'}."""
    methods = sorted({r["method"] for r in recs})
    feats = next((r["measures"]["md_features"] for r in recs if "md_features" in r.get("measures", {})), None)
    ok, why = lpips_status()
    has_lpips = any(r.get("measures", {}).get("one_minus_lpips") is not None for r in recs)
    return dict(
        methods={m: _group([r for r in recs if r["method"] == m]) for m in methods},
        categories={m: {c or "(none)": _group([r for r in recs if r["method"] == m and r["category"] == c])
                        for c in sorted({r["category"] for r in recs if r["method"] == m})} for m in methods},
        md_features=feats,
        fidelity="1 − LPIPS (AlexNet, 224×224)" if has_lpips else
        f"1 − LPIPS unavailable ({why}); shown instead: 1 − mean |source − edit| (pixels in [0, 1], whole image) "
        "and PSNR outside the mask",
        errors=[dict(sample=r["sample"], method=r["method"], error=r["error"]) for r in recs if r.get("error")])


def _f(v, fmt="{:.2f}"):
    return "–" if v is None else fmt.format(v)


def format_tables(summary: dict) -> str:
    feats = summary["md_features"]
    lines = []
    if feats:
        lines.append(f"MD features: {feats['model']}, up_blocks[{feats['block']}], t = {feats['t']} "
                     f"(ᾱ = {feats['alpha_bar']}), ensemble of {feats['ensemble']} (official: SD-2.1, up-block 1, "
                     "t = 261, 8)")
    else:
        lines.append("MD: not measured (--no-md)")
    lines.append(f"Fidelity: {summary['fidelity']}")
    lpips_col = any(g["one_minus_lpips"] is not None for g in summary["methods"].values())
    fid = "1-LPIPS" if lpips_col else "1-MAD"
    key = "one_minus_lpips" if lpips_col else "one_minus_mad"
    world = any("world" in g for g in summary["methods"].values())
    head = f"| method | n | errors | MD px ↓ | {fid} ↑ | bg PSNR dB | s/edit | steps | peak MB |"
    sep = "|---" * 9 + "|"
    if world:
        head += " world: dist px ↓ | dist/drag ↓ | IoU ↑ | lost |"
        sep += "---|" * 4
    lines += ["", "Per method", "", head, sep]
    for m, g in summary["methods"].items():
        row = (f"| {m} | {g['n']} | {g['errors']} | {_f(g['md'])} | {_f(g[key], '{:.3f}')} "
               f"| {_f(g['bg_psnr'], '{:.1f}')} | {_f(g['seconds'], '{:.1f}')} | {_f(g['steps'], '{:.0f}')} "
               f"| {_f(g['peak_memory_mb'], '{:.0f}')} |")
        if world:
            w = g.get("world")
            row += (f" {_f(w['dist'])} | {_f(w['dist_frac'])} | {_f(w['iou'])} | {w['lost']} |" if w else
                    " – | – | – | – |")
        lines.append(row)
    lines += ["", "Per method and category", "", f"| method | category | n | errors | MD px ↓ | {fid} ↑ |",
              "|---" * 6 + "|"]
    for m, cats in summary["categories"].items():
        for c, g in cats.items():
            lines.append(f"| {m} | {c} | {g['n']} | {g['errors']} | {_f(g['md'])} | {_f(g[key], '{:.3f}')} |")
    if summary["errors"]:
        lines += ["", f"{len(summary['errors'])} error(s):"]
        lines += [f"- {e['sample']} ({e['method']}): {e['error']}" for e in summary["errors"][:20]]
    return "\n".join(lines)


def write_report(out, expected: int | None = None) -> tuple[dict, str]:
    """Collect the records under `out`, write out/summary.json and out/summary.md; returns (summary, text)."""
    recs = collect(out)
    summary = summarise(recs)
    summary["records"] = len(recs)
    text = format_tables(summary)
    if expected is not None and len(recs) < expected:
        text = (f"{len(recs)} of {expected} records present (the rest are still running or failed to start): "
                "run again to finish, or with --report-only later\n\n") + text
    with open(os.path.join(os.fspath(out), "summary.json"), "w") as f:
        json.dump(summary, f, indent=1)
    with open(os.path.join(os.fspath(out), "summary.md"), "w") as f:
        f.write(text + "\n")
    return summary, text
