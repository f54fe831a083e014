"""DragBench: the format read safely (a pickle that runs code is refused and runs nothing), the pickle-free twin and
conversion, a session saved as a sample, MD checked on known answers, and the batch runner end to end on a
shape-world dataset: one process, two processes under accelerate (same results), a killed run restarted (finished
samples never redone), bad samples recorded as errors while the run goes on."""
import hashlib
import json
import os
import pickle
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import torch
from PIL import Image

from dragnb.dragbench import (Sample, UnsafePickleError, convert_dataset, find_samples, make_world_dataset,
                              match_points, point_distances, read_sample, save_sample, write_sample)
from dragnb.dragbench.format import IMAGE_FILE, JSON_FILE, PICKLE_FILE

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY = ["--lora-steps", "2", "--steps", "3", "--inference-steps", "10"]
METHODS = ["--methods", "dragdiffusion,gooddrag"]
VOLATILE = {"timings_s", "pid", "rank", "world_size", "finished_at", "peak_memory_mb", "out"}


class _RunsCode:
    """Pickles as a call of os.system: loading it with plain pickle would create `marker`."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def _image(h=32, w=40):
    rng = np.random.default_rng(0)
    return rng.integers(0, 256, (h, w, 3), dtype=np.uint8)


def _official_sample(folder, meta, image=None, protocol=4):
    """A sample folder written the way the official labeling tool writes one (plain pickle.dump)."""
    os.makedirs(folder, exist_ok=True)
    img = _image() if image is None else image
    Image.fromarray(img).save(os.path.join(folder, IMAGE_FILE))
    Image.fromarray(img).save(os.path.join(folder, "user_drag.png"))
    with open(os.path.join(folder, PICKLE_FILE), "wb") as f:
        pickle.dump(meta, f, protocol=protocol)
    return folder


# ---- the format ------------------------------------------------------------------------------------

def test_official_pickle_is_read(tmp_path):
    mask = np.zeros((32, 40), np.uint8); mask[5:20, 10:30] = 1
    meta = {"prompt": "a dog", "points": [[12, 10], [20, 11], (3, 4), [5, 6]], "mask": mask}
    f = _official_sample(tmp_path / "animals" / "JH_1", meta)
    s = read_sample(f)
    assert (s.category, s.name, s.id, s.prompt) == ("animals", "JH_1", "animals/JH_1", "a dog")
    assert s.handles == [(12.0, 10.0), (3.0, 4.0)] and s.targets == [(20.0, 11.0), (5.0, 6.0)]
    assert s.mask.dtype == bool and s.mask.sum() == 15 * 20 and np.array_equal(s.image, _image())
    assert s.points == [[12, 10], [20, 11], [3, 4], [5, 6]]


def test_numpy1_pickles_255_masks_and_empty_masks(tmp_path):
    mask = np.zeros((32, 40), np.uint8); mask[:4] = 255
    data = pickle.dumps({"prompt": "p", "points": [[1, 1], [2, 2]], "mask": mask}, protocol=2)
    data = data.replace(b"numpy._core.multiarray", b"numpy.core.multiarray")   # as numpy 1.x writes it
    assert b"numpy.core.multiarray" in data and b"_codecs" in data
    f = _official_sample(tmp_path / "c" / "s", {})
    (tmp_path / "c" / "s" / PICKLE_FILE).write_bytes(data)
    assert read_sample(f).mask.sum() == 4 * 40
    _official_sample(tmp_path / "c" / "e", {"prompt": "p", "points": [[1, 1], [2, 2]],
                                            "mask": np.zeros((32, 40), np.float32)})
    assert read_sample(tmp_path / "c" / "e").mask is None   # the labeling tool's empty mask: nothing painted


@pytest.mark.parametrize("evil", ["os.system", "builtins.eval", "codecs"])
def test_pickle_that_runs_code_is_refused_and_runs_nothing(tmp_path, evil):
    marker = tmp_path / "ran"
    if evil == "os.system":
        payload = _RunsCode(marker)
    elif evil == "builtins.eval":
        class Eval:
            def __reduce__(self):
                return (eval, (f"open({str(marker)!r}, 'w')",))
        payload = Eval()
    else:
        class Codec:
            def __reduce__(self):
                import _codecs
                return (_codecs.encode, ("x", "rot13"))
        payload = Codec()
    f = _official_sample(tmp_path / "cat" / "evil", {"prompt": "p", "points": [[1, 1], [2, 2]], "mask": payload})
    with pytest.raises(UnsafePickleError) as e:
        read_sample(f)
    msg = str(e.value)
    assert str(f / PICKLE_FILE) in msg or "rot13" in msg
    if evil != "codecs":
        assert ("system" in msg if evil == "os.system" else "builtins.eval" in msg) and "Nothing was run" in msg
    assert not marker.exists()
    assert isinstance(e.value, ValueError)                       # a user error: one line from the CLI


def test_bad_meta_is_a_clear_error(tmp_path):
    f = _official_sample(tmp_path / "c" / "odd", {"prompt": "p", "points": [[1, 1], [2, 2], [3, 3]], "mask": None})
    with pytest.raises(ValueError, match="even count"):
        read_sample(f)
    f = _official_sample(tmp_path / "c" / "out", {"prompt": "p", "points": [[1, 1], [45, 2]], "mask": None})
    with pytest.raises(ValueError, match=r"target 1 \(45, 2\) is outside the 40×32 image"):
        read_sample(f).check()
    os.remove(f / IMAGE_FILE)
    with pytest.raises(FileNotFoundError, match="lacks original_image.png"):
        read_sample(f)


def test_twin_format_and_conversion_both_ways(tmp_path):
    make_world_dataset(tmp_path / "pk", 3, "pickle")
    assert convert_dataset(tmp_path / "pk", tmp_path / "js", "json") == {"converted": 3, "errors": {}}
    assert convert_dataset(tmp_path / "js", tmp_path / "back", "pickle")["converted"] == 3
    for ref in find_samples(tmp_path / "pk"):
        a = read_sample(ref.folder)
        twin = tmp_path / "js" / ref.category / ref.name
        assert (twin / JSON_FILE).exists() and not (twin / PICKLE_FILE).exists()
        for other in (twin, tmp_path / "back" / ref.category / ref.name):
            b = read_sample(other)
            assert (b.prompt, b.handles, b.targets, b.extra) == (a.prompt, a.handles, a.targets, a.extra)
            assert np.array_equal(b.image, a.image) and np.array_equal(b.mask, a.mask)
    meta = json.loads((tmp_path / "js" / ref.category / ref.name / JSON_FILE).read_text())
    assert meta["mask"] == "mask.png" and meta["world_seed"] == a.extra["world_seed"]


def test_session_saved_as_sample(tmp_path, demo_model):
    from dragnb import DragSession
    img = _image(64, 64)
    s = DragSession(demo_model, img, prompt="a thing", seed=0)
    s.add_drag((10, 12), (20.5, 12))
    mask = np.zeros((64, 64), bool); mask[5:30, 5:40] = True
    s.set_mask(mask)
    for fmt in ("pickle", "json"):
        folder = save_sample(s, tmp_path / fmt / "notebook" / "edit1", format=fmt)
        back = read_sample(folder)
        assert (back.category, back.name, back.prompt) == ("notebook", "edit1", "a thing")
        assert back.handles == [(10.0, 12.0)] and back.targets == [(20.5, 12.0)]
        assert np.array_equal(back.image, img) and np.array_equal(back.mask, mask)
    with pytest.raises(ValueError, match="no drags"):
        save_sample(DragSession(demo_model, img), tmp_path / "x" / "y")


# ---- MD ------------------------------------------------------------------------------------------------

def test_matching_recovers_a_known_shift_exactly():
    g = torch.Generator().manual_seed(0)
    src = torch.randn(16, 30, 40, generator=g)
    dx, dy = -5, 3
    edit = torch.roll(src, shifts=(dy, dx), dims=(1, 2))   # the image moved by (dx, dy)
    handles = [(20, 10), (8.4, 15.6), (33, 22)]
    matched = match_points(src, edit, handles)
    assert matched == [((round(x) + dx) % 40, (round(y) + dy) % 30) for x, y in handles]
    targets = [(round(x) + dx, round(y) + dy) for x, y in handles]
    assert point_distances(matched, targets) == [0.0, 0.0, 0.0]
    assert point_distances(matched, [(round(x), round(y)) for x, y in handles]) == [pytest.approx(np.hypot(dx, dy))] * 3


def test_md_on_the_demo_model_finds_known_moves(demo_model):
    """The shape world's ground-truth edit moves the dragged shape by a known offset: MD ~ 0; the unedited image
    keeps the handle where it was: MD = the drag length exactly (the same noise draws for both images)."""
    from dragnb.dragbench import DiftFeatures
    from dragnb.demo.world import sample_drag
    dift = DiftFeatures(demo_model)
    assert dift.t == 393 and dift.block == 1 and dift.ensemble == 8 and abs(dift.alpha_bar - 0.656) < 1e-3
    gt_md = []
    for seed in range(6):
        c = sample_drag(10**9 + seed)
        src = dift(c.image)
        assert src.shape[1:] == (64, 64)
        gt_md += point_distances(match_points(src, dift(c.gt_image), [c.handle]), [c.target])
        assert point_distances(match_points(src, src, [c.handle]), [c.target]) == [pytest.approx(c.drag_length)]
    assert max(gt_md) <= 1.5 and np.mean(gt_md) <= 1.0, gt_md


# ---- the runner ------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def demo_model():
    from dragnb import load_model
    return load_model("demo")


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    """4 shape-world samples and 3 broken ones (a missing file, a point outside, a pickle that runs code), plus one
    more that --limit leaves out."""
    root = tmp_path_factory.mktemp("dragbench") / "data"
    make_world_dataset(root, 4)
    marker = root.parent / "ran"
    img = _image(64, 64)
    _official_sample(root / "zz_broken" / "a_missing", {"prompt": "", "points": [[1, 1], [5, 5]], "mask": None}, img)
    os.remove(root / "zz_broken" / "a_missing" / IMAGE_FILE)
    _official_sample(root / "zz_broken" / "b_outside", {"prompt": "", "points": [[1, 1], [70, 5]], "mask": None}, img)
    _official_sample(root / "zz_broken" / "c_evil", {"prompt": "", "points": [[1, 1], [5, 5]],
                                                     "mask": _RunsCode(marker)}, img)
    write_sample(Sample(img, "", [(3, 3)], [(6, 6)]), root / "zz_broken" / "d_left_out")
    return root, marker


def _records(out):
    recs = {}
    for dirpath, _, files in os.walk(out):
        if "record.json" in files:
            r = json.loads(open(os.path.join(dirpath, "record.json")).read())
            png = os.path.join(dirpath, "dragged_image.png")
            digest = hashlib.sha256(open(png, "rb").read()).hexdigest() if os.path.exists(png) else None
            recs[(r["method"], r["sample"])] = ({k: v for k, v in r.items() if k not in VOLATILE}, digest,
                                                os.stat(os.path.join(dirpath, "record.json")).st_mtime_ns)
    return recs


def _cli(*args, env_extra=None, **kw):
    env = dict(os.environ, OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1", TQDM_DISABLE="1", PYTHONPATH=ROOT,
               **(env_extra or {}))
    return subprocess.Popen(list(args), cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True, **kw)


@pytest.fixture(scope="module")
def one_process_run(dataset, tmp_path_factory, demo_model):
    from dragnb.cli import main
    data, _ = dataset
    out = tmp_path_factory.mktemp("one") / "out"
    assert main(["dragbench", str(data), "--out", str(out), "--limit", "7", *METHODS, *TINY]) == 0
    return out


@pytest.mark.slow
def test_one_process_run(dataset, one_process_run, capsys):
    data, marker = dataset
    recs = _records(one_process_run)
    assert len(recs) == 2 * 7 and not marker.exists()
    assert ("dragdiffusion", "zz_broken/d_left_out") not in recs            # --limit 7
    good = {k: v[0] for k, v in recs.items() if not k[1].startswith("zz_broken")}
    assert len(good) == 8 and not any("error" in r for r in good.values())
    for (method, sid), r in good.items():
        assert r["config"]["method"] == method and r["config"]["lora_steps"] == 2 and r["steps"] <= 3
        full = json.loads((one_process_run / method / sid / "record.json").read_text())
        assert len(r["final_handles"]) == 1 and set(full["timings_s"]) == {"lora", "inversion", "features", "drag",
                                                                              "denoise", "edit", "measures"}
        assert full["peak_memory_mb"] > 0 and full["out"].endswith("dragged_image.png")
        m = r["measures"]
        assert m["md"] == pytest.approx(m["md_points"][0], abs=1e-4) and m["one_minus_lpips"] is None
        assert 0 < m["one_minus_mad"] <= 1 and set(m["world"]) >= {"dist", "iou", "bg_psnr", "lost"}
        assert r["counters"]["lora_trainings"] == (1 if method == "dragdiffusion" else 0)   # one LoRA per image
    bad = {k[1]: v[0]["error"] for k, v in recs.items() if k[1].startswith("zz_broken")}
    assert "lacks original_image.png" in bad["zz_broken/a_missing"]
    assert "target 1 (70, 5) is outside the 64×64 image" in bad["zz_broken/b_outside"]
    assert "refused to load the global posix.system" in bad["zz_broken/c_evil"]
    text = (one_process_run / "summary.md").read_text()
    for part in ("Per method and category", "| dragdiffusion | circle |", "| gooddrag |", "1 − LPIPS unavailable",
                 "up_blocks[1], t = 393", "world: dist px", "6 error(s)"):
        assert part in text, part
    # run again: everything is finished, nothing is redone
    from dragnb.cli import main
    capsys.readouterr()
    assert main(["dragbench", str(data), "--out", str(one_process_run), "--limit", "7", *METHODS, *TINY]) == 0
    assert "14 finished record(s) kept, 0 to run" in capsys.readouterr().out
    assert _records(one_process_run) == recs
    assert main(["dragbench", str(data), "--out", str(one_process_run), "--report-only"]) == 0
    assert "| dragdiffusion | triangle | 1 | 0 |" in capsys.readouterr().out


def test_processes_split_the_sorted_samples(monkeypatch):
    from dragnb.dragbench.parallel import shard, this_process
    for k in ("MASTER_ADDR", "RANK", "WORLD_SIZE", "LOCAL_RANK"):
        monkeypatch.delenv(k, raising=False)
    assert (this_process().rank, this_process().world) == (0, 1)
    monkeypatch.setenv("WORLD_SIZE", "3")
    monkeypatch.setenv("RANK", "2")
    p = this_process()
    assert (p.rank, p.world, p.launcher, p.barrier) == (2, 3, "env", None)
    items = list(range(8))
    assert [shard(items, r, 3) for r in range(3)] == [[0, 3, 6], [1, 4, 7], [2, 5]]
    monkeypatch.setenv("RANK", "3")
    with pytest.raises(ValueError, match="RANK=3 is outside 0..2"):
        this_process()


@pytest.mark.slow
def test_two_processes_under_accelerate_give_the_same_results(dataset, one_process_run, tmp_path):
    """accelerate's torchrun launcher starts 2 CPU processes (on one machine its --cpu launcher starts one)."""
    pytest.importorskip("accelerate")
    data, _ = dataset
    out = tmp_path / "out2"
    p = _cli(sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
             "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no", "-m", "dragnb", "dragbench",
             str(data), "--out", str(out), "--limit", "7", *METHODS, *TINY)
    log, _ = p.communicate(timeout=300)
    assert p.returncode == 0, log
    assert "[process 1/2] 4 of 7 samples" in log and "[process 2/2] 3 of 7 samples" in log
    two, one = _records(out), _records(one_process_run)
    assert {r["world_size"] for r in (json.load(open(os.path.join(d, "record.json")))
                                      for d, _, f in os.walk(out) if "record.json" in f)} == {2}
    assert {k: v[:2] for k, v in two.items()} == {k: v[:2] for k, v in one.items()}
    assert "Per method and category" in (out / "summary.md").read_text()


@pytest.mark.slow
def test_killed_run_restarts_without_redoing_finished_samples(dataset, one_process_run, tmp_path):
    data, _ = dataset
    out = tmp_path / "out3"
    args = [sys.executable, "-m", "dragnb", "dragbench", str(data), "--out", str(out), "--limit", "4",
            "--methods", "dragdiffusion", *TINY]
    p = _cli(*args, start_new_session=True)
    deadline = time.time() + 120
    while time.time() < deadline and not any(f == "record.json" for _, _, fs in os.walk(out) for f in fs):
        time.sleep(0.05)
    os.killpg(p.pid, signal.SIGKILL)
    p.wait()
    before = _records(out)
    assert 1 <= len(before) < 4, "the run was not interrupted part way"
    p = _cli(*args)
    log, _ = p.communicate(timeout=300)
    assert p.returncode == 0, log
    assert f"{len(before)} finished record(s) kept, {4 - len(before)} to run" in log
    after = _records(out)
    assert len(after) == 4 and all(after[k] == v for k, v in before.items())     # untouched: same bytes and mtime
    one = _records(one_process_run)
    assert all(after[k][:2] == one[k][:2] for k in after)


def test_cli_errors_before_any_work(tmp_path, monkeypatch, capsys, dataset):
    import dragnb
    from dragnb.cli import main

    def no_model(*a, **k):
        raise AssertionError("a model was loaded before the arguments were checked")
    monkeypatch.setattr(dragnb, "load_model", no_model)
    data, _ = dataset
    (tmp_path / "empty").mkdir()
    (tmp_path / "afile").write_text("x")
    cases = [([str(tmp_path / "nope"), "--out", str(tmp_path / "o")], "is not a folder"),
             ([str(tmp_path / "empty"), "--out", str(tmp_path / "o")], "holds no samples"),
             ([str(data), "--out", str(data / "results")], "lies inside DATA_DIR"),
             ([str(data), "--out", str(tmp_path / "afile")], "is an existing file"),
             ([str(data), "--out", str(tmp_path / "o"), "--methods", "dragdiffusion,magic"], "give distinct methods"),
             ([str(data), "--out", str(tmp_path / "o"), "--limit", "0"], "is not a whole number"),
             ([str(data), "--out", str(tmp_path / "never"), "--report-only"], "run the benchmark into it first")]
    for args, expected in cases:
        assert main(["dragbench", *args]) == 2, args
        err = capsys.readouterr().err
        assert expected in err and err.count("\n") == 1, err
    assert not (tmp_path / "o").exists()
