"""benchmarks/official_lora.py: the official LoRA trainer run as it is, under diffusers 0.24 in a process of its own.
CI checks the parts that run with today's libraries; the whole run needs the 0.24 wheels (DRAGNB_SITE024) and a
DragDiffusion checkout (DRAGNB_OFFICIAL_DIR)."""
import os

import pytest
from benchlib import load_benchmark


@pytest.fixture(scope="module")
def ol():
    return load_benchmark("official_lora.py")


def test_the_saved_folder_has_the_slow_tokenizer_files_the_official_trainer_reads(ol, tmp_path):
    """transformers 5 saves only tokenizer.json; the official trainer loads the slow CLIPTokenizer (use_fast=False),
    which reads vocab.json and merges.txt: the saved folder has both and tokenizes as the model's tokenizer does."""
    from transformers import CLIPTokenizer

    from dragnb.models import tiny_model
    m = tiny_model(seed=0)
    ol.save_model(m, tmp_path / "model")
    tok = tmp_path / "model" / "tokenizer"
    assert (tok / "vocab.json").exists() and (tok / "merges.txt").exists()
    slow = CLIPTokenizer(str(tok / "vocab.json"), str(tok / "merges.txt"), model_max_length=77)
    text = "a photo of a red ball"
    assert slow(text).input_ids == m.tokenizer(text).input_ids
    assert (tmp_path / "model" / "unet" / "config.json").exists() and (tmp_path / "model" / "model_index.json").exists()


def test_bad_folders_are_refused_by_name(ol, tmp_path, capsys):
    with pytest.raises(SystemExit):
        ol.main([str(tmp_path / "o"), "--official", str(tmp_path), "--site024", str(tmp_path), "--quick"])
    assert "has no utils/lora_utils.py" in capsys.readouterr().err
    (tmp_path / "utils").mkdir()
    (tmp_path / "utils" / "lora_utils.py").write_text("")
    with pytest.raises(SystemExit):
        ol.main([str(tmp_path / "o"), "--official", str(tmp_path), "--site024", str(tmp_path), "--quick"])
    assert "holds no diffusers" in capsys.readouterr().err and not (tmp_path / "o").exists()


SITE = os.environ.get("DRAGNB_SITE024", "")
OFFICIAL = os.environ.get("DRAGNB_OFFICIAL_DIR", "")


@pytest.mark.skipif(not (SITE and OFFICIAL), reason="needs DRAGNB_SITE024 (diffusers 0.24 and its era's "
                    "dependencies, benchmarks/PARITY.md) and DRAGNB_OFFICIAL_DIR")
def test_the_official_trainer_runs_as_it_is(ol, tmp_path):
    res = ol.main([str(tmp_path), "--official", OFFICIAL, "--site024", SITE, "--quick"])
    o = res["official"]
    assert "error" not in o, o
    assert o["versions"]["diffusers"] == "0.24.0" and o["saved"] == ["pytorch_lora_weights.safetensors"]
    assert o["train_s"] > 0 and o["load_s"] > 0 and res["dragnb_eager"]["s"] > 0
