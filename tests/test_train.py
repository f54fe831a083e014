"""dragnb.demo.train with a wall-clock budget, the torch data path and the GPU command (benchmarks/gpu_train.sh),
all on a tiny architecture on the CPU: what the one prepared GPU call will run, in seconds."""
import json
import os
import shlex
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]


def _tiny_args(out: Path, *extra: str) -> list[str]:
    return ["--out", str(out / "w"), "--arch", "tiny", "--batch", "2", "--warmup", "3", "--data", "torch",
            "--precision", "fp32", "--threads", "1", "--log-every", "5", "--min-snr", "5", "--t-focus", "700",
            "--t-focus-prob", "0.5", *extra]


def test_budgeted_run_stops_in_time_and_reproduces_as_a_step_count(tmp_path):
    """--minutes: the run stops on the clock, the cosine is fitted after the warm-up (schedule_steps), the folder
    loads, the figures' summary carries the x0 PSNR per level and the samples' shape fidelity; the recorded
    `reproduce` command (a plain --steps/--stop-after run) gives the same EMA weights bit for bit."""
    from dragnb import load_model
    from dragnb.demo import train
    from dragnb.demo.model import load_unet
    t0 = time.time()
    rec = train.main(_tiny_args(tmp_path, "--minutes", "0.04", "--figures", str(tmp_path / "fig"), "--samples", "4",
                                "--shard-size", "300KB", "--data-chunk", "3"))
    assert time.time() - t0 < 60
    assert rec["budget_minutes"] == 0.04 and rec["steps"] >= 3 and rec["schedule_steps"] >= 3
    assert rec["steps"] <= rec["schedule_steps"] and rec["skipped_steps"] == 0
    assert rec["arch"] == "tiny" and rec["factor"] == 2 and rec["data"] == "torch" and rec["data_chunk"] == 3
    # where a step's time went: data and model, each counted, together within the step's whole time
    assert rec["s_per_step_data"] > 0 and rec["s_per_step_model"] > 0
    assert rec["s_per_step_data"] + rec["s_per_step_model"] <= rec["s_per_step"] * 1.02
    summary = json.loads((tmp_path / "fig" / "summary.json").read_text())
    assert set(summary["x0_psnr"]) >= {"200", "681", "950"} and 0 <= summary["shape_fidelity"]["fidelity"] <= 1
    for f in ("loss.csv", "training_curve.png", "samples_from_noise.png", "inversion_roundtrip.png"):
        assert (tmp_path / "fig" / f).exists(), f
    meta = json.loads((tmp_path / "w" / "dragnb_demo.json").read_text())
    assert meta["factor"] == 2 and meta["training"]["x0_psnr"] == summary["x0_psnr"]
    assert len(list((tmp_path / "w" / "unet").glob("*.safetensors"))) >= 2          # sharded
    assert load_model(tmp_path / "w", device="cpu").codec_factor == 2
    # the same run as a step count
    cmd = shlex.split(rec["reproduce"])
    assert cmd[:3] == ["python", "-m", "dragnb.demo.train"] and "--minutes" not in cmd and "--steps" in cmd
    again = cmd[3:]
    again[again.index("--out") + 1] = str(tmp_path / "again")
    again[again.index("--figures") + 1] = "none"
    rec2 = train.main(again)
    assert rec2["steps"] == rec["steps"]
    a, b = load_unet(tmp_path / "w" / "unet").state_dict(), load_unet(tmp_path / "again" / "unet").state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_bad_budget_and_timestep_flags_raise():
    from dragnb.demo import train
    with pytest.raises(ValueError, match="--minutes"):
        train.main(["--minutes", "0", "--figures", "none"])
    with pytest.raises(ValueError, match="--t-focus"):
        train.main(["--t-focus-prob", "2", "--figures", "none"])
    with pytest.raises(ValueError, match="--data-chunk 0 is invalid"):
        train.main(["--data-chunk", "0", "--figures", "none"])
    with pytest.raises(SystemExit):
        train.main(["--arch", "nonesuch"])
    with pytest.raises(ValueError, match="--shaded 1.5 is invalid"):
        train.main(["--shaded", "1.5", "--figures", "none"])


@pytest.mark.parametrize("data", ["torch", "numpy"])
def test_shaded_world_trains_on_both_data_paths_and_is_recorded(tmp_path, monkeypatch, data):
    """--shaded P: the scenes a step trains on come from the shaded world (both sources get the probability),
    and the run's record and reproduce command carry it; without it the record has no `shaded` key."""
    from dragnb.demo import train, world, world_torch
    seen = []
    real_np, real_torch = world.random_batch, world_torch.random_batch
    monkeypatch.setattr(train, "random_batch", lambda *a, **k: seen.append(k.get("shaded")) or real_np(*a, **k))
    monkeypatch.setattr(world_torch, "random_batch", lambda *a: seen.append(a[4]) or real_torch(*a))
    args = _tiny_args(tmp_path, "--steps", "2", "--figures", "none", "--shaded", "0.5")
    args[args.index("--data") + 1] = data
    rec = train.main(args)
    assert rec["shaded"] == 0.5 and "--shaded 0.5" in rec["reproduce"]
    assert seen and all(v == 0.5 for v in seen)


@pytest.mark.slow
@pytest.mark.timeout(240)
def test_gpu_train_script_smoke_on_cpu(tmp_path):
    """benchmarks/gpu_train.sh end to end on the CPU with a 0.05-minute budget, the tiny architecture and a
    one-case quality run: at most 8 files come back, each under 16 MiB, and --unpack rebuilds a loadable folder."""
    out = tmp_path / "out"
    env = {**os.environ, "PYTHON": sys.executable, "ARCH": "tiny", "BATCH": "2", "WARMUP": "3", "THREADS": "1",
           "DEVICE": "cpu", "QUALITY_N": "1", "QUALITY_WORKERS": "1", "QUALITY_THREADS": "1",
           "QUALITY_ARGS": "--quick", "TRAIN_ARGS": "--samples 4 --shard-size 800KB", "OMP_NUM_THREADS": "1"}
    r = subprocess.run(["bash", str(ROOT / "benchmarks" / "gpu_train.sh"), str(out), "0.05"], env=env,
                       capture_output=True, text=True, timeout=230)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    files = [p for p in out.rglob("*") if p.is_file()]
    assert 4 <= len(files) <= 8, [str(p) for p in files]
    assert len(list((out / "unet").glob("*.safetensors"))) == 2          # the tiny model's 1.4 MB in 800 KB shards
    assert all(p.stat().st_size < 16 * 2**20 for p in files)
    assert all(len(p.relative_to(out).parts) <= 3 for p in files)        # $OUT/a/b/file at most
    summary = json.loads((out / "summary.json").read_text())
    assert summary["factor"] == 2 and summary["training"]["arch"] == "tiny" and "quality" in summary
    assert summary["training"]["cuda_graph"] is False                        # DEVICE=cpu: eager steps
    r = subprocess.run(["bash", str(ROOT / "benchmarks" / "gpu_train.sh"), "--unpack", str(out), str(tmp_path / "w")],
                       capture_output=True, text=True)
    assert r.returncode == 0, r.stdout + r.stderr
    from dragnb import load_model
    assert load_model(tmp_path / "w", device="cpu").codec_factor == 2
    assert (tmp_path / "w_results" / "figures" / "summary.json").exists()


def test_step_split_counts_data_and_model_time_per_finished_step():
    from dragnb.demo.stepping import StepSplit
    sp = StepSplit(torch.device("cpu"))
    for _ in range(3):
        sp.start()
        time.sleep(0.01)
        sp.data_done()
        time.sleep(0.03)
        sp.step_done()
    sp.start()                       # a skipped step: started, never finished, not counted
    time.sleep(0.05)
    d, m = sp.read()
    assert 0.009 < d < 0.03 and 0.029 < m < 0.06
    assert sp.read() is None and sp.steps == 3
    tot = sp.totals()
    assert abs(tot["s_per_step_data"] - d) < 1e-4 and abs(tot["s_per_step_model"] - m) < 1e-4



def _emulated_capture(fn, zero_grad):
    """`stepping._capture` without CUDA: capturing computes nothing; each replay runs `fn` on gradients set to None
    (the captured backward writes them) and writes its outputs into the same tensors (a graph's static outputs)."""
    outs = tuple(torch.zeros(()) for _ in range(4))     # train's update: mse, loss, correspondence loss, accuracy

    def replay():
        zero_grad()
        for o, r in zip(outs, fn()):
            o.copy_(r.detach())
    return replay, outs


def test_cuda_graph_training_equals_the_eager_run_and_reports(tmp_path, monkeypatch):
    """--cuda-graph (the whole update captured after 3 eager steps, replayed after) on the CPU with an emulated
    capture: the same losses and EMA weights as the eager run, the replays counted in the record; a capture that
    fails leaves training eager and says why; --compile with it and a CPU device without the seam are refused."""
    from dragnb.demo import stepping, train
    from dragnb.demo.model import load_unet
    monkeypatch.setattr(train, "_GRAPHS_ON_CPU", True)
    monkeypatch.setattr(stepping, "_capture", _emulated_capture)
    eager = train.main(_tiny_args(tmp_path / "e", "--steps", "9", "--figures", "none"))
    graph = train.main(_tiny_args(tmp_path / "g", "--steps", "9", "--figures", "none", "--cuda-graph"))
    assert graph["cuda_graph"] and graph["graph_replays"] == 9 - 3 and graph["graph_failure"] is None
    assert graph["steps"] == eager["steps"] == 9 and abs(graph["final_loss"] - eager["final_loss"]) < 1e-5
    a, b = load_unet(tmp_path / "e" / "w" / "unet").state_dict(), load_unet(tmp_path / "g" / "w" / "unet").state_dict()
    assert max(float((a[k].float() - b[k].float()).abs().max()) for k in a) < 1e-4

    def broken(fn, zero_grad):
        raise RuntimeError("operation not permitted when stream is capturing")
    monkeypatch.setattr(stepping, "_capture", broken)
    failed = train.main(_tiny_args(tmp_path / "f", "--steps", "6", "--figures", "none", "--cuda-graph"))
    assert failed["steps"] == 6 and failed["graph_replays"] == 0 and "not permitted" in failed["graph_failure"]
    with pytest.raises(ValueError, match="use one of the two"):
        train.main(_tiny_args(tmp_path / "x", "--steps", "2", "--cuda-graph", "--compile"))
    monkeypatch.setattr(train, "_GRAPHS_ON_CPU", False)
    with pytest.raises(ValueError, match="--cuda-graph needs a CUDA device, not cpu"):
        train.main(_tiny_args(tmp_path / "y", "--steps", "2", "--cuda-graph"))


def test_figures_default_beside_the_weights_unless_the_shipped_model_is_replaced(tmp_path):
    """A trial run (`--out` anywhere but the shipped weights folder) keeps its figures beside its weights, so it
    never overwrites the shipped model's figures in docs/demo_model; a run into the shipped folder writes them there."""
    from dragnb.demo import train
    assert train.default_figures(tmp_path / "w") == tmp_path / "w_figures"
    shipped = Path(train.__file__).resolve().parent / "weights"
    assert train.default_figures(shipped) == Path("docs/demo_model")


@pytest.mark.timeout(180)
def test_train_repeat_compares_two_processes_weights(tmp_path):
    """benchmarks/train_repeat.py: two runs of the same seed in their own processes, weights compared tensor by
    tensor. On a CPU training from one seed is deterministic, so they are identical; a third run from another seed
    against the first is not (the comparison can say no). --deterministic is recorded in the training record."""
    import importlib.util
    spec = importlib.util.spec_from_file_location("train_repeat", ROOT / "benchmarks" / "train_repeat.py")
    tr = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(tr)
    small = ["--arch", "tiny", "--batch", "2", "--warmup", "2", "--threads", "1", "--device", "cpu",
             "--precision", "fp32", "--deterministic"]
    # through the GPU call's wrapper (benchmarks/gpu_train_repeat.sh), as the GPU machine runs it
    env = {**os.environ, "PYTHON": sys.executable, "OMP_NUM_THREADS": "1", "TMPDIR": str(tmp_path)}
    r = subprocess.run(["bash", str(ROOT / "benchmarks" / "gpu_train_repeat.sh"), str(tmp_path / "a"), "--steps", "3",
                        "--init", "none", "--", *small], env=env, capture_output=True, text=True, timeout=170)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    assert {"repeat.json", "repeat.log", "run1.log", "run2.log"} <= {p.name for p in (tmp_path / "a").iterdir()}
    res = json.loads((tmp_path / "a" / "repeat.json").read_text())
    assert r.stdout.strip().splitlines()[-1] == tr.repeat_line(res)
    assert res["compare"]["identical"] and res["compare"]["max_abs"] == 0.0 and res["compare"]["tensors"] > 10
    assert res["steps"] == 3 and res["device"].startswith("cpu") and len(res["training"]) == 2
    assert all(r["deterministic"] is True and r["steps"] == 3 for r in res["training"])
    assert tr.repeat_line(res).startswith("repeat: 3 steps twice from seed 0 on cpu") and \
        tr.repeat_line(res).endswith("(0 differ), identical: yes")
    # a run from another seed (in this process, so without --deterministic, which is process-wide) differs from the
    # first pair's: the comparison is not blind
    from dragnb.demo import train
    train.main(["--out", str(tmp_path / "b"), "--figures", "none", *tr.DEFAULTS, *small[:-1], "--steps", "3",
                "--seed", "1"])
    c = tr.compare(tr.load_unet_weights(Path(res["training"][0]["command"].split("--out ")[1].split()[0])),
                   tr.load_unet_weights(tmp_path / "b"))
    assert not c["identical"] and c["max_abs"] > 0 and c["differ"] > 0
    with pytest.raises(FileNotFoundError, match="no unet"):
        tr.load_unet_weights(tmp_path / "nowhere")
