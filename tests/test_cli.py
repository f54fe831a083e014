"""`python -m dragnb`: edit writes an image and a record; errors are one clear line and exit code 2."""
import json
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from dragnb.cli import build_parser, main


def test_help_lists_every_subcommand_and_option(capsys):
    p = build_parser()
    text = p.format_help()
    for cmd in ("demo", "edit", "bench"):
        assert cmd in text
    edit = p._subparsers._group_actions[0].choices["edit"].format_help()
    for opt in ("--drag", "--mask", "--prompt", "--model", "--steps", "--out", "--lora-steps", "--device", "--dtype"):
        assert opt in edit


def test_edit_writes_image_and_record(tmp_path):
    img = np.zeros((32, 32, 3), np.uint8); img[10:20, 5:15] = (255, 0, 0)
    Image.fromarray(img).save(tmp_path / "in.png")
    mask = np.zeros((32, 32), np.uint8); mask[5:25, 2:30] = 255
    Image.fromarray(mask).save(tmp_path / "mask.png")
    out = tmp_path / "out" / "edited.png"
    rc = main(["edit", str(tmp_path / "in.png"), "--drag", "10,15:22,15", "--mask", str(tmp_path / "mask.png"),
               "--model", "tiny", "--steps", "2", "--lora-steps", "1", "--out", str(out),
               "--save-session", str(tmp_path / "s.dragnb")])
    assert rc == 0
    assert Image.open(out).size == (32, 32)
    rec = json.loads((tmp_path / "out" / "edited.json").read_text())
    assert rec["drags"] == [{"handle": [10.0, 15.0], "target": [22.0, 15.0]}]
    assert rec["steps"] <= 2 and len(rec["final_handles"]) == 1
    assert set(rec["timings_s"]) == {"load_model", "prepare", "drag", "denoise"}
    assert rec["config"]["lora_steps"] == 1 and rec["counters"]["lora_trainings"] == 1
    assert (tmp_path / "s.dragnb").exists()


def test_edit_with_another_method_and_addons(tmp_path):
    img = np.zeros((32, 32, 3), np.uint8); img[10:20, 5:15] = (255, 0, 0)
    Image.fromarray(img).save(tmp_path / "in.png")
    out = tmp_path / "gd.png"
    rc = main(["edit", str(tmp_path / "in.png"), "--drag", "10,15:22,15", "--model", "tiny", "--steps", "3",
               "--lora-steps", "0", "--method", "gooddrag", "--restrict-tracking", "--warp-init", "0.3",
               "--auto-mask", "--speed", "channels_last,checkpointing", "--out", str(out)])
    assert rc == 0
    rec = json.loads((tmp_path / "gd.json").read_text())
    assert rec["speed"] == {"channels_last": True, "gradient_checkpointing": True}
    cfg = rec["config"]
    assert (cfg["method"], cfg["inversion_strength"], cfg["restrict_tracking"], cfg["warp_init"], cfg["auto_mask"]) \
        == ("gooddrag", 0.75, True, 0.3, True)


def test_edit_spreads_each_drag_over_its_region(tmp_path, capsys):
    img = np.zeros((64, 64, 3), np.uint8); img[20:44, 20:44] = (255, 0, 0)
    Image.fromarray(img).save(tmp_path / "in.png")
    rc = main(["edit", str(tmp_path / "in.png"), "--drag", "31,31:37,29", "--model", "tiny", "--steps", "1",
               "--lora-steps", "0", "--spread", "5", "--out", str(tmp_path / "s.png")])
    assert rc == 0
    drags = json.loads((tmp_path / "s.json").read_text())["drags"]
    assert len(drags) == 5 and drags[0] == {"handle": [31.0, 31.0], "target": [37.0, 29.0]}
    assert all(d["target"][0] - d["handle"][0] == 6 and d["target"][1] - d["handle"][1] == -2 for d in drags)
    r = subprocess.run([sys.executable, "-m", "dragnb", "edit", "x.png", "--drag", "1,2:3,4", "--spread", "6",
                        "--out", "o.png"], capture_output=True, text=True)
    assert r.returncode == 2 and "use 1 to 5 points a drag" in r.stderr


def test_bad_input_is_one_clear_line(tmp_path, capsys):
    Image.fromarray(np.zeros((32, 32, 3), np.uint8)).save(tmp_path / "in.png")
    rc = main(["edit", str(tmp_path / "in.png"), "--drag", "100,15:22,15", "--model", "tiny", "--out",
               str(tmp_path / "o.png")])
    assert rc == 2
    assert "handle (100, 15) is outside the 32×32 image" in capsys.readouterr().err
    rc = main(["edit", str(tmp_path / "in.png"), "--drag", "1,1:2,2", "--model", "no-such-model", "--out",
               str(tmp_path / "o.png")])
    assert rc == 2 and "unknown model 'no-such-model'" in capsys.readouterr().err


def test_malformed_drag_is_an_argparse_error():
    r = subprocess.run([sys.executable, "-m", "dragnb", "edit", "x.png", "--drag", "1,2-3,4", "--out", "o.png"],
                       capture_output=True, text=True)
    assert r.returncode == 2 and "x0,y0:x1,y1" in r.stderr and r.stderr.count("\n") == 1  # one line, no usage dump


# ---- user errors: one line on stderr, exit status 2, before any model work ------------------------

@pytest.fixture
def no_model_work(monkeypatch):
    """Fail the test if the CLI gets as far as loading a model or running the demo."""
    import dragnb
    import dragnb.demo.run

    def refuse(*args, **kwargs):
        raise AssertionError("the CLI started model work before reporting the user error")
    monkeypatch.setattr(dragnb, "load_model", refuse)
    monkeypatch.setattr(dragnb.demo.run, "run_demo", refuse)


@pytest.fixture
def files(tmp_path):
    Image.fromarray(np.zeros((32, 32, 3), np.uint8)).save(tmp_path / "in.png")
    (tmp_path / "notes.png").write_text("these are notes, not pixels")
    (tmp_path / "a_file.txt").write_text("x")
    (tmp_path / "folder").mkdir()
    return tmp_path


def one_line_error(capsys, rc, *expected) -> str:
    err = capsys.readouterr().err
    assert rc == 2, err
    assert err.endswith("\n") and err.count("\n") == 1, f"not one line: {err!r}"
    assert "Traceback" not in err
    for text in expected:
        assert text in err, f"{text!r} not in {err!r}"
    return err


def edit(files, *extra, out="o.png"):
    args = ["edit", str(files / "in.png"), "--drag", "10,15:22,15", "--model", "tiny", "--out", str(files / out)]
    return main(args + list(extra))


def test_non_image_input_and_mask_are_one_line(files, capsys, no_model_work):
    rc = main(["edit", str(files / "notes.png"), "--drag", "1,1:2,2", "--model", "tiny", "--out", str(files / "o.png")])
    one_line_error(capsys, rc, "notes.png", "is not a readable image", "PNG or JPEG")
    rc = main(["edit", str(files / "nope.png"), "--drag", "1,1:2,2", "--model", "tiny", "--out", str(files / "o.png")])
    one_line_error(capsys, rc, "nope.png", "does not exist")
    one_line_error(capsys, edit(files, "--mask", str(files / "notes.png")), "mask file", "notes.png",
                   "not a readable image")
    one_line_error(capsys, edit(files, "--mask", str(files / "folder")), "is a folder")
    Image.fromarray(np.zeros((16, 16), np.uint8)).save(files / "small_mask.png")
    one_line_error(capsys, edit(files, "--mask", str(files / "small_mask.png")), "does not match the 32×32 image")
    assert not (files / "o.png").exists() and not (files / "o.json").exists()


def test_bad_options_are_one_line(files, capsys, no_model_work):
    one_line_error(capsys, edit(files, "--dtype", "bogus"), "--dtype", "'bogus' is not a dtype", "float16")
    one_line_error(capsys, edit(files, "--steps", "2.5"), "--steps", "whole number ≥ 1")
    one_line_error(capsys, edit(files, "--lora-steps", "-1"), "--lora-steps", "whole number ≥ 0")
    one_line_error(capsys, main(["edit", str(files / "in.png"), "--drag", "1,2-3,4", "--out", "o.png"]),
                   "x0,y0:x1,y1")
    one_line_error(capsys, main(["edit", str(files / "in.png"), "--out", "o.png"]), "--drag")  # required
    one_line_error(capsys, main(["bench", "--dtype", "half"]), "'half' is not a dtype")
    one_line_error(capsys, main(["frobnicate"]), "invalid choice")
    one_line_error(capsys, edit(files, "--method", "nope"), "invalid choice")
    one_line_error(capsys, edit(files, "--warp-init", "1.5"), "--warp-init 1.5")
    one_line_error(capsys, edit(files, "--speed", "fast"), "--speed 'fast'", "channels_last, checkpointing")
    one_line_error(capsys, edit(files, "--speed", "checkpointing,lora_checkpointing"), "--speed", "lora_checkpointing")
    one_line_error(capsys, edit(files, "--drag", "5,5:40,5"), "target (40, 5) is outside the 32×32 image")


def test_output_paths_are_checked_before_the_work(files, capsys, no_model_work):
    one_line_error(capsys, edit(files, out="folder"), "--out", "is a folder", "out.png")
    one_line_error(capsys, edit(files, out="edited"), "--out", "does not end in an image extension", ".png")
    one_line_error(capsys, edit(files, out="a_file.txt/o.png"), "--out", "is a file")
    one_line_error(capsys, edit(files, "--save-session", str(files / "missing" / "s.dragnb")),
                   "--save-session", "does not exist", "create it first")
    one_line_error(capsys, edit(files, "--save-session", str(files / "folder")), "--save-session", "is a folder")
    one_line_error(capsys, main(["demo", "--out", str(files / "a_file.txt")]), "--out", "existing file", "folder")
    one_line_error(capsys, main(["demo", "--out", str(files / "a_file.txt" / "sub")]), "is a file")
    one_line_error(capsys, main(["bench", "--json", str(files / "folder")]), "--json", "is a folder")
    one_line_error(capsys, main(["demo", "--out", str(files / "d"), "--weights", str(files / "folder")]),
                   "--weights", "not a demo-model weights folder", "dragnb_demo.json")
    one_line_error(capsys, main(["demo", "--out", str(files / "d"), "--weights", str(files / "missing")]), "--weights")
    one_line_error(capsys, main(["demo", "--out", str(files / "d"), "--spread", "9"]), "--spread", "1 to 5")
    assert sorted(p.name for p in files.iterdir()) == ["a_file.txt", "folder", "in.png", "notes.png"]
    assert not any((files / "folder").iterdir())


def test_python_m_dragnb_user_error_has_no_traceback(files):
    r = subprocess.run([sys.executable, "-m", "dragnb", "edit", str(files / "notes.png"), "--drag", "1,1:2,2",
                        "--out", str(files / "o.png")], capture_output=True, text=True)
    assert r.returncode == 2 and "Traceback" not in r.stderr and r.stderr.count("\n") == 1, r.stderr
    assert r.stderr.startswith("dragnb: error: image file") and "notes.png" in r.stderr


def test_max_side_bounds_the_working_size(files, capsys):
    with pytest.warns(UserWarning, match=r"32×32 is larger than this model's max_side=16: it is worked on at 16×16"):
        rc = edit(files, "--max-side", "16", "--steps", "1", "--lora-steps", "0")
    assert rc == 0 and Image.open(files / "o.png").size == (32, 32)  # the result comes back at the input's size
    capsys.readouterr()
    one_line_error(capsys, edit(files, "--max-side", "4"), "model.max_side=4 is invalid", "≥ 8")
