"""Model loading: diffusers folders, single-file LDM checkpoints, separate VAEs, offline hub errors, geometry.

Every model here is built in the test from small configs (`tiny_model`): no hub, no downloaded weights.
"""
from __future__ import annotations

import pickle
import shutil
import time
import warnings

import pytest
import torch
from safetensors.torch import save_file

from dragnb.checkpoint import SingleFileComponents, load_single_file, load_vae_file
from dragnb.config import DragConfig
from dragnb.models import (SD_SCHEDULER_CONFIG, DragModel, ddim_scheduler, load_model, make_byte_tokenizer,
                           save_diffusers_folder, sd15_configs, tiny_model)
from ldm_keys import model_to_ldm, vae_to_ldm


def assert_same_weights(a: torch.nn.Module, b: torch.nn.Module, what: str) -> None:
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys(), f"{what}: keys differ: {sorted(set(sa) ^ set(sb))[:5]}"
    different = [k for k in sa if sa[k].dtype != sb[k].dtype or not torch.equal(sa[k], sb[k])]
    assert not different, f"{what}: {len(different)} tensors differ, e.g. {different[:3]}"


def assert_same_model(a: DragModel, b: DragModel) -> None:
    assert_same_weights(a.unet, b.unet, "unet")
    assert_same_weights(a.vae, b.vae, "vae")
    assert_same_weights(a.text_encoder, b.text_encoder, "text encoder")


@pytest.fixture(scope="module")
def tiny():
    return tiny_model(seed=0)


@pytest.fixture(scope="module")
def tiny_folder(tiny, tmp_path_factory):
    folder = tmp_path_factory.mktemp("tiny_pipe")
    save_diffusers_folder(tiny, folder)
    return folder


@pytest.fixture(scope="module")
def tiny_ldm(tiny):
    return model_to_ldm(tiny)


def tiny_config_dict(m: DragModel) -> dict:
    strip = lambda d: {k: v for k, v in dict(d).items() if not k.startswith("_")}  # noqa: E731
    return dict(unet=strip(m.unet.config), vae=strip(m.vae.config), text=m.text_encoder.config.to_dict())


# ---- diffusers folders ---------------------------------------------------------------------------

def test_diffusers_folder_roundtrip_is_bit_identical(tiny, tiny_folder):
    m = load_model(tiny_folder, device="cpu")
    assert_same_model(tiny, m)
    assert torch.equal(m.encode_prompt("a photo of a cat"), tiny.encode_prompt("a photo of a cat"))
    assert type(m.scheduler).__name__ == "DDIMScheduler"
    assert torch.equal(m.scheduler.alphas_cumprod, tiny.scheduler.alphas_cumprod)
    assert (m.size_multiple, m.latent_scale, m.native_size) == (tiny.size_multiple, tiny.latent_scale, tiny.native_size)


def test_diffusers_folder_missing_component_is_a_clear_error(tiny_folder, tmp_path):
    broken = tmp_path / "broken"
    shutil.copytree(tiny_folder, broken)
    shutil.rmtree(broken / "text_encoder")
    with pytest.raises(ValueError, match=r"missing \['text_encoder'\]") as e:
        load_model(broken, device="cpu")
    assert str(broken) in str(e.value)


def test_separate_vae_folder_replaces_the_model_vae(tiny, tiny_folder, tmp_path):
    other = tiny_model(seed=1)
    other.vae.save_pretrained(tmp_path / "other_vae")
    m = load_model(tiny_folder, vae=tmp_path / "other_vae", device="cpu")
    assert_same_weights(m.vae, other.vae, "vae")
    assert_same_weights(m.unet, tiny.unet, "unet")  # the rest stays
    assert not torch.equal(m.vae.encoder.conv_in.weight, tiny.vae.encoder.conv_in.weight)
    x = torch.rand(1, 3, 16, 16) * 2 - 1
    assert torch.equal(m.encode(x), other.encode(x))
    save_diffusers_folder(other, tmp_path / "other_pipe")  # a whole pipeline folder: its vae/ is taken
    assert_same_weights(load_model(tiny_folder, vae=tmp_path / "other_pipe", device="cpu").vae, other.vae, "vae")
    bare = {k.removeprefix("first_stage_model."): v for k, v in vae_to_ldm(other.vae.state_dict()).items()}
    save_file(bare, str(tmp_path / "vae.safetensors"))  # a VAE file goes to dragnb's offline reader, not the hub
    with pytest.raises(ValueError, match=r"vae\.safetensors.*GroupNorm.*config="):
        load_model(tiny_folder, vae=tmp_path / "vae.safetensors", device="cpu")


# ---- single-file checkpoints ---------------------------------------------------------------------

def test_single_file_safetensors_with_config_folder(tiny, tiny_folder, tiny_ldm, tmp_path):
    assert any(k.startswith("model.diffusion_model.input_blocks.") for k in tiny_ldm)
    assert "first_stage_model.encoder.down.0.block.0.conv1.weight" in tiny_ldm
    assert "cond_stage_model.transformer.text_model.embeddings.position_ids" in tiny_ldm
    path = tmp_path / "tiny.safetensors"
    save_file(tiny_ldm, str(path))
    m = load_model(path, config=tiny_folder, device="cpu")
    assert_same_model(tiny, m)
    assert m.name == "tiny.safetensors"
    assert len(m.tokenizer) == len(tiny.tokenizer) and "tokenizer" in m.tokenizer.name_or_path  # config's tokenizer/
    assert torch.equal(m.encode_prompt("a dog"), tiny.encode_prompt("a dog"))
    x, t = torch.randn(1, 4, 8, 8), torch.tensor([500])
    cond = tiny.encode_prompt("")
    assert torch.equal(m.unet_forward(x, t, cond), tiny.unet_forward(x, t, cond))


def test_single_file_ckpt_with_config_dict(tiny, tiny_ldm, tmp_path):
    path = tmp_path / "tiny.ckpt"
    torch.save({"state_dict": tiny_ldm, "global_step": 123}, path)
    m = load_single_file(path, config=tiny_config_dict(tiny), tokenizer=None)
    assert isinstance(m, SingleFileComponents) and m.name == "tiny.ckpt"  # components; load_model builds the model
    assert_same_model(tiny, m)
    assert m.scheduler.config.prediction_type == "epsilon"
    assert m.scheduler.config.beta_schedule == SD_SCHEDULER_CONFIG["beta_schedule"]


def test_single_file_tiny_without_config_asks_for_config(tiny_ldm, tmp_path):
    path = tmp_path / "tiny.safetensors"
    save_file(tiny_ldm, str(path))
    with pytest.raises(ValueError, match="config=") as e:
        load_model(path, device="cpu")
    assert "tiny.safetensors" in str(e.value) and "GroupNorm" in str(e.value)


def sd_shaped_mini(seed: int = 0) -> DragModel:
    """SD-1.x's layout at toy widths that SD-1.5's unreadable settings fit: 32 GroupNorm groups, 8 UNet heads,
    12 text heads, quick_gelu, CLIP's 49408-token vocabulary."""
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel
    torch.manual_seed(seed)
    unet = UNet2DConditionModel(sample_size=64, layers_per_block=1, block_out_channels=(32, 64), norm_num_groups=32,
                                cross_attention_dim=48, attention_head_dim=8,
                                down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
                                up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"))
    vae = AutoencoderKL(block_out_channels=(32, 64), layers_per_block=1, norm_num_groups=32, latent_channels=4,
                        down_block_types=("DownEncoderBlock2D",) * 2, up_block_types=("UpDecoderBlock2D",) * 2)
    text = CLIPTextModel(CLIPTextConfig(hidden_size=48, intermediate_size=64, num_attention_heads=12,
                                        num_hidden_layers=1, vocab_size=49408, max_position_embeddings=77,
                                        hidden_act="quick_gelu", bos_token_id=512, eos_token_id=513, pad_token_id=513))
    return DragModel(unet=unet, vae=vae, text_encoder=text, tokenizer=make_byte_tokenizer(),
                     scheduler=ddim_scheduler(SD_SCHEDULER_CONFIG))


def test_single_file_architecture_read_from_shapes(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    import huggingface_hub.constants as hc
    monkeypatch.setattr(hc, "HF_HUB_CACHE", str(tmp_path / "hf" / "hub"))
    src = sd_shaped_mini()
    path = tmp_path / "mini.safetensors"
    save_file(model_to_ldm(src), str(path))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        m = DragModel(**load_single_file(path).as_kwargs())
    messages = " | ".join(str(w.message) for w in caught)
    assert "differs from SD-1.5" in messages and "block_out_channels" in messages
    assert "byte-level stand-in" in messages and "tokenizer=" in messages  # CLIP vocab, no CLIP tokenizer cached
    assert m.unet.config.block_out_channels == (32, 64) and m.unet.config.layers_per_block == 1
    assert m.unet.config.down_block_types == ("CrossAttnDownBlock2D", "DownBlock2D")
    assert m.unet.config.up_block_types == ("UpBlock2D", "CrossAttnUpBlock2D")
    assert m.unet.config.cross_attention_dim == 48
    assert m.vae.config.block_out_channels == (32, 64) and m.vae.config.scaling_factor == 0.18215
    assert m.text_encoder.config.num_hidden_layers == 1 and m.text_encoder.config.intermediate_size == 64
    assert_same_model(src, m)
    x, t, cond = torch.randn(1, 4, 8, 8), torch.tensor([300]), src.encode_prompt("")
    assert torch.equal(m.unet_forward(x, t, cond), src.unet_forward(x, t, cond))
    assert torch.equal(m.encode_prompt("a cat"), src.encode_prompt("a cat"))
    img = torch.rand(1, 3, 16, 16) * 2 - 1
    assert torch.equal(m.encode(img), src.encode(img))


def test_single_file_tokenizer_folder(tiny, tiny_folder, tiny_ldm, tmp_path):
    path = tmp_path / "tiny.safetensors"
    save_file(tiny_ldm, str(path))
    tiny.tokenizer.save_pretrained(tmp_path / "tok")
    m = DragModel(**load_single_file(path, config=tiny_config_dict(tiny), tokenizer=tmp_path / "tok").as_kwargs())
    assert len(m.tokenizer) == len(tiny.tokenizer) == 514 and m.tokenizer.model_max_length == 77
    ids = lambda tok: tok(["a red car"], padding="max_length", max_length=77).input_ids  # noqa: E731
    assert ids(m.tokenizer) == ids(tiny.tokenizer)
    assert torch.equal(m.encode_prompt("a red car"), tiny.encode_prompt("a red car"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match=r"tokenizer=.*empty.*not a CLIP tokenizer folder"):
        load_single_file(path, config=tiny_config_dict(tiny), tokenizer=tmp_path / "empty")


def test_single_file_ema_weights_are_taken_when_present(tiny, tiny_ldm, tmp_path):
    # LDM files with EMA store model_ema.<unet key without dots>; >100 of them mark an EMA checkpoint
    ema = {k: v for k, v in tiny_ldm.items()}
    for k, v in tiny_ldm.items():
        if k.startswith("model.diffusion_model."):
            ema["model_ema." + "".join(k.split(".")[1:])] = v + 1.0
    assert sum(k.startswith("model_ema.") for k in ema) > 100
    path = tmp_path / "ema.safetensors"
    save_file(ema, str(path))
    m = load_single_file(path, config=tiny_config_dict(tiny))
    assert torch.equal(m.unet.conv_in.weight, tiny.unet.conv_in.weight + 1.0)
    m_raw = load_single_file(path, config=tiny_config_dict(tiny), extract_ema=False)
    assert torch.equal(m_raw.unet.conv_in.weight, tiny.unet.conv_in.weight)


def test_single_file_errors_name_the_file_and_the_problem(tiny, tiny_ldm, tmp_path):
    not_sd = tmp_path / "other.safetensors"
    save_file({"layer.weight": torch.zeros(2, 2), "layer.bias": torch.zeros(2)}, str(not_sd))
    with pytest.raises(ValueError, match=r"not an SD-1.x checkpoint: found keys like layer\.(weight|bias)") as e:
        load_model(not_sd, device="cpu")
    assert "other.safetensors" in str(e.value)

    no_text = tmp_path / "no_text.safetensors"
    save_file({k: v for k, v in tiny_ldm.items() if not k.startswith("cond_stage_model.")}, str(no_text))
    with pytest.raises(ValueError, match=r"cond_stage_model\.transformer\.\*"):
        load_single_file(no_text, config=tiny_config_dict(tiny))

    sd2 = tmp_path / "sd2.safetensors"
    save_file({**{k: v for k, v in tiny_ldm.items() if not k.startswith("cond_stage_model.")},
               "cond_stage_model.model.token_embedding.weight": torch.zeros(4, 4)}, str(sd2))
    with pytest.raises(ValueError, match="SD-2.x"):
        load_single_file(sd2)

    lacking = tmp_path / "lacking.safetensors"
    save_file({k: v for k, v in tiny_ldm.items() if not k.endswith("out.2.weight")}, str(lacking))
    with pytest.raises(ValueError, match=r"UNet weights in .*lacking\.safetensors.* do not fit.*1 missing"):
        load_single_file(lacking, config=tiny_config_dict(tiny))

    garbage = tmp_path / "garbage.safetensors"
    garbage.write_bytes(b"this is not a safetensors file at all")
    with pytest.raises(ValueError, match="garbage.safetensors"):
        load_model(garbage, device="cpu")

    pickled = tmp_path / "object.ckpt"
    with open(pickled, "wb") as f:  # an arbitrary object: weights_only=True must refuse it
        pickle.dump({"state_dict": tiny_ldm, "callback": DragConfig()}, f, protocol=2)
    with pytest.raises(ValueError, match=r"object\.ckpt.*weights_only=True"):
        load_model(pickled, device="cpu")


def test_single_file_vae(tiny, tiny_folder, tmp_path):
    other = tiny_model(seed=2)
    bare = {k.removeprefix("first_stage_model."): v for k, v in vae_to_ldm(other.vae.state_dict()).items()}
    path = tmp_path / "vae.safetensors"
    save_file(bare, str(path))
    vae = load_vae_file(path, config=tiny_folder)
    assert_same_weights(vae, other.vae, "vae")
    with pytest.raises(ValueError, match="config="):  # widths 16/32 do not fit SD's 32 groups: no silent guess
        load_vae_file(path)


def test_no_import_circle_between_checkpoint_and_models():
    """checkpoint returns components and models builds the DragModel: checkpoint imports nothing from models, and
    the shared SD-1.x pieces live below both (sd_configs imports neither); the old names stay in dragnb.models."""
    import ast
    import importlib
    import dragnb.checkpoint as checkpoint
    import dragnb.models as models
    import dragnb.sd_configs as sd_configs

    def imported(module) -> set[str]:
        tree = ast.parse(open(module.__file__).read())
        return {node.module for node in ast.walk(tree) if isinstance(node, ast.ImportFrom) and node.level == 1}

    assert "models" not in imported(checkpoint) and "sd_configs" in imported(checkpoint)
    assert not imported(sd_configs) & {"models", "checkpoint", "session", "config"}
    for name in ("SD_SCHEDULER_CONFIG", "sd15_configs", "make_byte_tokenizer", "ddim_scheduler", "ddim_from_any"):
        assert getattr(models, name) is getattr(sd_configs, name)
    assert importlib.import_module("dragnb.models")._ddim_from_any is sd_configs.ddim_from_any


# ---- names, paths, hub, dtype --------------------------------------------------------------------

def test_hub_id_not_cached_offline_fails_fast(tmp_path, monkeypatch):
    import huggingface_hub.constants as hc
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hf" / "hub"))
    monkeypatch.setattr(hc, "HF_HUB_CACHE", str(tmp_path / "hf" / "hub"))
    monkeypatch.setattr(hc, "HF_HUB_OFFLINE", True)
    t0 = time.monotonic()
    with pytest.raises(ValueError, match="huggingface-cli download") as e:
        load_model("someone/not-a-cached-model", device="cpu")
    assert time.monotonic() - t0 < 10
    assert "someone/not-a-cached-model" in str(e.value)


def test_unknown_name_and_missing_paths(tmp_path):
    with pytest.raises(ValueError, match="'foo'") as e:
        load_model("foo", device="cpu")
    assert "'demo'" in str(e.value) and "hub id" in str(e.value) and ".safetensors" in str(e.value)
    with pytest.raises(ValueError, match=r"'\./nope\.safetensors' does not exist") as e:
        load_model("./nope.safetensors", device="cpu")
    assert "'demo'" in str(e.value)
    txt = tmp_path / "weights.txt"
    txt.write_text("not a model")
    with pytest.raises(ValueError, match=r"weights\.txt.*not a \.safetensors or \.ckpt"):
        load_model(txt, device="cpu")


def test_float16_on_cpu_is_refused():
    with pytest.raises(ValueError, match="float32 on CPU"):
        load_model("tiny", device="cpu", dtype=torch.float16)
    with pytest.raises(ValueError, match="float32 on CPU"):
        tiny_model(device="cpu", dtype=torch.float16)


# ---- geometry and configs ------------------------------------------------------------------------

def test_tiny_model_geometry(tiny):
    assert tiny.latent_scale == 2  # VAE with two levels
    assert tiny.size_multiple == 8  # × 2² UNet downsamplings
    assert tiny.native_size == 32 and tiny.prediction_type == "epsilon"
    img = torch.rand(2, 3, 24, 40) * 2 - 1
    z = tiny.encode(img)
    assert z.shape == (2, 4, 12, 20) and z.dtype == torch.float32
    out = tiny.decode(z)
    assert out.shape == (2, 3, 24, 40) and out.min() >= -1 and out.max() <= 1
    assert tiny.encode_prompt("x").shape == (1, 77, 32)
    assert tiny_model(prediction_type="v_prediction").prediction_type == "v_prediction"


def test_default_config_overrides(tiny):
    base = DragConfig()
    c = tiny.default_config()
    assert c.attn_start_layer == 4 and base.attn_start_layer == 10  # the tiny model's override
    assert c.replace(attn_start_layer=base.attn_start_layer) == base  # and nothing else changed
    c2 = tiny.default_config(attn_start_layer=1, drag_steps=5)
    assert (c2.attn_start_layer, c2.drag_steps, c2.lora_rank) == (1, 5, base.lora_rank)
    with pytest.raises(TypeError, match="not_a_field"):
        tiny.default_config(not_a_field=1)


def test_sd15_configs_match_stable_diffusion_1_5():
    c = sd15_configs()
    assert c["unet"]["block_out_channels"] == (320, 640, 1280, 1280)
    assert c["unet"]["cross_attention_dim"] == 768 and c["unet"]["layers_per_block"] == 2
    assert c["unet"]["sample_size"] == 64 and c["unet"]["attention_head_dim"] == 8
    assert c["unet"]["down_block_types"] == ("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",)
    assert c["vae"]["block_out_channels"] == (128, 256, 512, 512) and c["vae"]["scaling_factor"] == 0.18215
    assert c["vae"]["latent_channels"] == 4
    assert (c["text"]["hidden_size"], c["text"]["num_hidden_layers"], c["text"]["num_attention_heads"]) == (768, 12, 12)
    assert c["text"]["vocab_size"] == 49408 and c["text"]["hidden_act"] == "quick_gelu"
    assert SD_SCHEDULER_CONFIG["beta_schedule"] == "scaled_linear" and SD_SCHEDULER_CONFIG["beta_end"] == 0.012


def test_sd15_layout_keys_and_shapes_infer_sd15_configs():
    """SD-1.5's own architecture, built on the meta device (no memory, no init), written in the LDM layout:
    it has the key names real SD-1.5 files have, and reading its shapes gives back `sd15_configs()` exactly."""
    from accelerate import init_empty_weights
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel
    from dragnb.checkpoint import _check_guessable, _unet, infer_configs
    from ldm_keys import clip_to_ldm, unet_to_ldm
    c = sd15_configs()
    with init_empty_weights():
        unet, vae = UNet2DConditionModel(**c["unet"]), AutoencoderKL(**c["vae"])
        text = CLIPTextModel(CLIPTextConfig(**c["text"]))
    sd = {**unet_to_ldm(unet.state_dict(), 2), **vae_to_ldm(vae.state_dict())}
    sd.update(clip_to_ldm({k: v for k, v in text.state_dict().items() if not k.endswith("position_ids")}))
    for key in ("model.diffusion_model.input_blocks.1.1.transformer_blocks.0.attn2.to_k.weight",
                "model.diffusion_model.input_blocks.3.0.op.weight", "model.diffusion_model.middle_block.1.proj_in.weight",
                "model.diffusion_model.output_blocks.2.1.conv.weight", "model.diffusion_model.output_blocks.5.2.conv.weight",
                "model.diffusion_model.output_blocks.11.1.proj_out.weight", "model.diffusion_model.out.2.weight",
                "first_stage_model.encoder.mid.attn_1.q.weight", "first_stage_model.decoder.up.3.upsample.conv.weight",
                "first_stage_model.encoder.down.0.downsample.conv.weight", "first_stage_model.quant_conv.weight",
                "cond_stage_model.transformer.text_model.final_layer_norm.weight"):
        assert key in sd, key
    assert tuple(sd["first_stage_model.encoder.mid.attn_1.q.weight"].shape) == (512, 512, 1, 1)
    inferred = infer_configs(sd)
    assert inferred == c
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # SD-1.5 itself: no "differs from SD-1.5" warning
        _check_guessable("sd15.safetensors", inferred)
    unet2 = _unet(sd, inferred["unet"], "sd15.safetensors", extract_ema=True)  # every key maps, strictly
    assert unet2.state_dict().keys() == unet.state_dict().keys()
