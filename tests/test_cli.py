"""`python -m dragnb`: edit writes an image and a record; errors are one clear line and exit code 2."""
import json
import subprocess
import sys

import numpy as np
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
    assert r.returncode == 2 and "x0,y0:x1,y1" in r.stderr
