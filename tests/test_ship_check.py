"""benchmarks/ship_check.py: the one command that decides whether a trained demo model replaces the shipped one."""
import json

import pytest
import torch
from benchlib import load_benchmark


@pytest.fixture(scope="module")
def sc():
    return load_benchmark("ship_check.py")


@pytest.fixture(scope="module")
def tiny_weights(tmp_path_factory):
    """An untrained tiny demo-layout folder, with a figures folder beside it as `gpu_train.sh --unpack` leaves."""
    from dragnb.demo import model as M
    from dragnb.demo import train
    d = tmp_path_factory.mktemp("w")
    torch.manual_seed(0)
    unet = M.build_demo_unet("tiny")
    train.save_weights(d / "cand", unet, M.make_prompt_embeds(0), {"steps": 1, "final_loss": 1.0}, factor=2,
                       overrides=M.config_overrides_for(unet), shard_size="400KB")
    figs = d / "cand_results" / "figures"
    figs.mkdir(parents=True)
    (figs / "training_curve.png").write_bytes(b"png")
    (figs / "loss.csv").write_text("step,loss\n1,1.0\n")
    return d / "cand"


def _cand(**q):
    quality = {"n": 50, "dist_frac": 0.25, "iou": 0.6, "bg_psnr": 31.0, "lost": 0}
    quality.update(q)
    return {"weights_mb": 20.0, "demo_s_median": 12.0, "quality": {"full": quality}}


def test_verdict_needs_the_gates_and_a_better_drag(sc):
    shipped = {"dist_frac": 0.51, "iou": 0.26, "bg_psnr": 31.8, "lost": 0}
    assert sc.verdict(_cand(), shipped) == (True, [])
    ok, why = sc.verdict(_cand(dist_frac=0.6), shipped)
    assert not ok and "distance left 0.60 not below the shipped 0.51" in why[0]
    ok, why = sc.verdict(_cand(iou=0.2), shipped)
    assert not ok and "IoU" in why[0]
    ok, why = sc.verdict(_cand(bg_psnr=25.0), shipped)
    assert not ok and "background 25.0 dB" in why[0]
    ok, why = sc.verdict({**_cand(), "weights_mb": 30.0}, shipped)
    assert not ok and "30.0 MB > 25 MB" in why[0]
    ok, why = sc.verdict({**_cand(), "demo_s_median": 16.0}, shipped)
    assert not ok and "demo 16.0 s > 15 s" in why[0]
    ok, why = sc.verdict(_cand(), None)      # nothing to compare with: never ship blind
    assert not ok and "no shipped figures" in why[0] and "bench_quality.py" in why[0]
    ok, why = sc.verdict({**_cand(), "demo_s_median": 16.0}, shipped, "IoU 0.26 -> 0.6")
    assert ok and why == ["demo 16.0 s > 15 s, allowed: IoU 0.26 -> 0.6"]


def test_summary_rows_read_the_shipped_quality_table(sc):
    rows = sc.summary_rows(sc.SHIPPED_QUALITY)
    assert {"full", "dragdiffusion"} <= set(rows)
    assert set(rows["full"]) == {"n", "dist_frac", "iou", "bg_psnr", "lost"} and rows["full"]["n"] >= 50


def test_install_replaces_the_weights_and_copies_the_figures(sc, tiny_weights, tmp_path):
    dest, docs = tmp_path / "weights", tmp_path / "docs"
    dest.mkdir(); docs.mkdir()
    (dest / "stale.safetensors").write_bytes(b"old")
    copied = sc.install(tiny_weights, dest, docs)
    assert not (dest / "stale.safetensors").exists()
    assert (dest / "dragnb_demo.json").exists() and len(list((dest / "unet").glob("*.safetensors"))) >= 2
    assert sorted(p.name for p in docs.iterdir()) == ["loss.csv", "training_curve.png"]
    assert len(copied) == len(list(tiny_weights.iterdir())) + 2
    from dragnb import load_model
    assert load_model(dest, device="cpu").codec_factor == 2


def test_a_smoke_check_end_to_end_refuses_to_install_a_worse_model(sc, tiny_weights, tmp_path, capsys):
    dest = tmp_path / "weights"
    dest.mkdir()
    (dest / "keep.txt").write_text("the shipped model")
    out = sc.main([str(tiny_weights), "--quick", "--json", str(tmp_path / "c.json"), "--install",
                   "--dest", str(dest), "--docs", str(tmp_path)])
    text = capsys.readouterr().out
    assert out["verdict"] == "keep the shipped model" and "verdict: keep the shipped model" in text
    assert "not installed" in text and (dest / "keep.txt").exists()
    saved = json.loads((tmp_path / "c.json").read_text())
    # the shipped model's drag starts where its inversion stops (strength 0.75 of 50 steps: t = 741)
    assert saved["shipped_prior"]["t_drag"] == 741 and saved["shipped_prior"]["method"] == "gooddrag"
    assert saved["quality"]["full"]["n"] == 2 and len(saved["demo_s"]) == 1 and saved["weights_mb"] > 0


def test_a_folder_that_is_not_demo_weights_is_refused(sc, tmp_path, tiny_weights):
    with pytest.raises(ValueError, match="not a demo-model weights folder"):
        sc.main([str(tmp_path), "--quick"])
    with pytest.raises(ValueError, match="lacks 'full'"):
        sc.main([str(tiny_weights), "--quick", "--methods", "dragdiffusion"])


def _rows(dist, iou, seed0=0):
    return [{"seed": seed0 + k, "dist_frac": d, "iou": i} for k, (d, i) in enumerate(zip(dist, iou))]


def test_paired_differences_on_common_seeds(sc):
    old = _rows([0.5] * 12, [0.4] * 12)
    new = _rows([0.5 + (0.02 if k % 2 else -0.02) for k in range(12)], [0.45] * 12, seed0=0) + _rows([9.0], [0.0], 99)
    p = sc.paired(new, old)
    assert p["n"] == 12 and abs(p["dist_frac"]["mean"]) < 1e-12 and p["dist_frac"]["se"] > 0
    assert abs(p["iou"]["mean"] - 0.05) < 1e-12 and p["iou"]["se"] == 0
    assert sc.paired(new[:9], old) is None                     # too few common cases: no paired verdict


def test_paired_verdict_tells_noise_from_a_change(sc):
    shipped = {"dist_frac": 0.27, "iou": 0.48, "bg_psnr": 31.3, "lost": 0}
    prior = {"shape_fidelity": 0.836, "x0_psnr_db": 25.19, "shipped_prior": {"shape_fidelity": 0.762, "x0_psnr_db": 25.0}}
    noise = {"n": 50, "dist_frac": {"mean": 0.016, "se": 0.029}, "iou": {"mean": 0.029, "se": 0.025}}
    cand = {**_cand(dist_frac=0.29, iou=0.51), **prior}
    # the means alone say "not below the shipped distance"; paired, the drags are equal within noise and the prior
    # is better: ship, and say why
    assert not sc.verdict(cand, shipped)[0]
    ok, why = sc.verdict(cand, shipped, pair=noise)
    assert ok and len(why) == 1 and "shipped on the prior" in why[0] and "0.762 -> 0.836" in why[0]
    # equal drags and no better prior: keep
    same_prior = {**cand, "shape_fidelity": 0.70}
    ok, why = sc.verdict(same_prior, shipped, pair=noise)
    assert not ok and "no better than the shipped model" in why[0]
    # worse beyond noise: keep, whatever the prior
    worse = {**noise, "dist_frac": {"mean": 0.08, "se": 0.02}}
    ok, why = sc.verdict(cand, shipped, pair=worse)
    assert not ok and "drags worse" in why[0] and "+0.080 ± 0.020" in why[0]
    # better beyond noise in one measure, equal in the other: ship, no note
    better = {**noise, "iou": {"mean": 0.10, "se": 0.02}}
    assert sc.verdict({**cand, "shape_fidelity": 0.5}, shipped, pair=better) == (True, [])
