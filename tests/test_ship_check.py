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
    # better on both means, but within noise, and no better prior: equal, kept out (the thirteenth session's case)
    both_means = {**_cand(dist_frac=0.26, iou=0.49), **prior, "shape_fidelity": 0.70}
    tiny = {"n": 50, "dist_frac": {"mean": -0.011, "se": 0.033}, "iou": {"mean": 0.001, "se": 0.021}}
    assert sc.verdict(both_means, shipped)[0]                       # the means alone would ship it
    ok, why = sc.verdict(both_means, shipped, pair=tiny)
    assert not ok and "drags equal within noise" in why[0] and "-0.011 ± 0.033" in why[0]


def test_the_prior_must_be_better_beyond_noise(sc):
    """With the counts kept (shapes drawn, x0 PSNR per held-out scene), a prior only counts as better when one
    measure rises by more than two standard errors and the other does not fall by more: the twelfth session's
    candidate (fidelity 0.836 -> 0.857 over 134 shapes, x0 PSNR +0.08 dB) is noise, and is kept out."""
    shipped = {"dist_frac": 0.29, "iou": 0.51, "bg_psnr": 31.2, "lost": 1}
    noise = {"n": 50, "dist_frac": {"mean": 0.023, "se": 0.031}, "iou": {"mean": 0.0, "se": 0.024}}
    base = [25.0 + 0.3 * k for k in range(16)]
    old_prior = {"shape_fidelity": 0.836, "fidelity_shapes": 131, "x0_psnr_db": 27.25, "x0_psnr_scenes": base}
    wobble = [b + (0.1 if k % 2 else 0.06) for k, b in enumerate(base)]     # +0.08 dB, se 0.005: beyond noise
    flat = [b + (0.5 if k % 2 else -0.34) for k, b in enumerate(base)]      # +0.08 dB, se 0.11: noise

    def cand(fid, scenes):
        return {**_cand(dist_frac=0.31, iou=0.51), "shape_fidelity": fid, "fidelity_shapes": 134,
                "x0_psnr_db": sum(scenes) / 16, "x0_psnr_scenes": scenes, "shipped_prior": old_prior}
    ok, why = sc.verdict(cand(0.857, flat), shipped, pair=noise)
    assert not ok and "not better beyond noise" in why[0] and "+0.021 ± 0.044" in why[0]
    ch = sc.prior_change(cand(0.857, flat), old_prior)
    assert abs(ch["x0_psnr_db"]["mean"] - 0.08) < 1e-9 and 0.1 < ch["x0_psnr_db"]["se"] < 0.12
    # the same x0 gain, consistent on every scene: beyond noise, and the fidelity does not fall beyond noise: ship
    ok, why = sc.verdict(cand(0.857, wobble), shipped, pair=noise)
    assert ok and "shipped on the prior" in why[0]
    # a fidelity jump beyond noise with x0 PSNR no worse beyond noise: ship
    assert sc.verdict(cand(0.95, flat), shipped, pair=noise)[0]
    # x0 better beyond noise but fidelity down beyond noise: keep
    assert not sc.verdict(cand(0.70, wobble), shipped, pair=noise)[0]
    # records without the counts fall back to the plain comparison
    assert sc.prior_change({"shape_fidelity": 0.9, "x0_psnr_db": 26.0}, old_prior) is None
