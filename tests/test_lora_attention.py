"""LoRA leaves the base UNet bit-identical; mutual self-attention keeps the source branch and shares K/V."""
import numpy as np
import pytest
import torch

from dragnb import lora
from dragnb.attention import mutual_self_attention, self_attention_modules
from dragnb.models import tiny_model


@pytest.fixture(scope="module")
def model():
    return tiny_model(seed=0)


def test_lora_trains_adapters_and_leaves_base_weights_bit_identical(model, tmp_path):
    unet = model.unet
    before = {k: v.clone() for k, v in unet.named_parameters()}
    z0 = torch.randn(1, 4, 8, 8)
    cond = model.encode_prompt("x")
    x, t = torch.randn(1, 4, 8, 8), 500
    with torch.no_grad():
        out_base = model.unet_forward(x, t, cond)
    state = lora.train_lora(model, z0, cond, rank=4, steps=3, lr=1e-2, batch_size=2, seed=0)
    assert state and all("lora_" in k for k in state)
    assert any(float(v.abs().sum()) > 0 for k, v in state.items() if "lora_B" in k)   # B moved off zero
    after = dict(unet.named_parameters())
    for k, v in before.items():                       # names may now sit under base_layer
        k2 = k if k in after else k.replace(".weight", ".base_layer.weight").replace(".bias", ".base_layer.bias")
        assert torch.equal(after[k2], v), k
    with torch.no_grad():
        assert torch.equal(model.unet_forward(x, t, cond), out_base)          # adapters off outside `applied`
        with lora.applied(unet, state):
            out_lora = model.unet_forward(x, t, cond)
        assert not torch.allclose(out_lora, out_base)
        assert torch.equal(model.unet_forward(x, t, cond), out_base)
    p = tmp_path / "a.safetensors"
    lora.save_lora(state, str(p), {"rank": 4})
    loaded = lora.load_lora(str(p))
    with torch.no_grad(), lora.applied(unet, loaded):
        assert torch.equal(model.unet_forward(x, t, cond), out_lora)
    # same seed -> same adapters (deterministic)
    again = lora.train_lora(model, z0, cond, rank=4, steps=3, lr=1e-2, batch_size=2, seed=0)
    assert all(torch.equal(again[k], state[k]) for k in state)


def test_lora_targets_the_attention_projections(model):
    state = lora.train_lora(model, torch.randn(1, 4, 8, 8), model.encode_prompt(""), rank=2, steps=1, batch_size=1)
    names = {k.split(".lora_")[0].rsplit(".", 1)[-1] if "to_out" not in k else "to_out.0" for k in state}
    assert names == {"to_q", "to_k", "to_v", "to_out.0"}


def test_mutual_attention_keeps_source_and_copies_it_for_equal_latents(model):
    cond = model.encode_prompt("x").expand(2, -1, -1)
    x = torch.randn(1, 4, 8, 8)
    y = torch.randn(1, 4, 8, 8)
    with torch.no_grad():
        plain = model.unet(torch.cat([x, y]), 300, encoder_hidden_states=cond).sample
        with mutual_self_attention(model.unet, start_step=0, start_layer=0) as ctl:
            ctl.step = 0
            mutual = model.unet(torch.cat([x, y]), 300, encoder_hidden_states=cond).sample
            same = model.unet(torch.cat([x, x]), 300, encoder_hidden_states=cond).sample
        after = model.unet(torch.cat([x, y]), 300, encoder_hidden_states=cond).sample
    assert torch.allclose(mutual[0], plain[0], atol=1e-5)        # the source branch is untouched
    assert not torch.allclose(mutual[1], plain[1], atol=1e-4)     # the edited branch attends to the source
    assert torch.allclose(same[0], same[1], atol=1e-5)
    assert torch.equal(after, plain)                              # processors restored


def test_mutual_attention_gates_by_layer_and_step(model):
    n = len(self_attention_modules(model.unet))
    assert n == 7      # tiny UNet: 2 down + 1 mid + 2×2 up transformer blocks (SD-1.5: 6 + 1 + 9 = 16)
    cond = model.encode_prompt("x").expand(2, -1, -1)
    xy = torch.randn(2, 4, 8, 8)
    with torch.no_grad():
        plain = model.unet(xy, 300, encoder_hidden_states=cond).sample
        with mutual_self_attention(model.unet, start_step=0, start_layer=n):
            beyond = model.unet(xy, 300, encoder_hidden_states=cond).sample
        with mutual_self_attention(model.unet, start_step=5, start_layer=0) as ctl:
            ctl.step = 4
            early = model.unet(xy, 300, encoder_hidden_states=cond).sample
    assert torch.allclose(beyond, plain, atol=1e-5) and torch.allclose(early, plain, atol=1e-5)


def test_applied_merges_the_lora_into_the_base_weights_and_restores_them_exactly(model):
    """Inside `applied` the adapter is off and its product sits in the base weights: the UNet output is the
    unmerged adapter's (to float32 rounding), no LoRA layer runs, and the base weights come back bit for bit."""
    unet = model.unet
    cond = model.encode_prompt("merge")
    z0 = torch.randn(1, 4, 8, 8, generator=torch.Generator().manual_seed(3))
    state = lora.train_lora(model, z0, cond, rank=4, steps=3, lr=1e-2, batch_size=2, seed=1)
    base = {n: p.detach().clone() for n, p in unet.named_parameters() if "lora_" not in n}
    x = torch.randn(1, 4, 8, 8, generator=torch.Generator().manual_seed(4))
    with torch.no_grad():
        lora._ensure_adapter(unet, 4, lora.targets_of(state))          # the unmerged reference: peft's adapter on
        for n, p in lora._lora_params(unet).items():
            p.copy_(state[n])
        unet.set_adapter(lora.ADAPTER)
        unet.enable_adapters()
        unmerged = model.unet_forward(x, 300, cond)
        lora._disable(unet)
        with lora.applied(unet, state):
            assert not lora.is_active(unet)
            merged = model.unet_forward(x, 300, cond)
            changed = [n for n, p in unet.named_parameters() if "lora_" not in n and not torch.equal(p, base[n])]
    assert torch.allclose(merged, unmerged, atol=1e-5, rtol=1e-4), float((merged - unmerged).abs().max())
    assert changed and all(n.rsplit(".", 2)[-2] == "base_layer" for n in changed)   # only the adapted projections
    assert all(torch.equal(p, base[n]) for n, p in unet.named_parameters() if "lora_" not in n)


def test_merged_weights_are_built_once_per_state_and_rebuilt_when_anything_they_came_from_changes(monkeypatch):
    """A drag step enters `applied` at every step: the merge is computed once and swapped in after that. A new
    state dict, or base weights written in place, rebuild it; the base tensors themselves are never written."""
    from peft.tuners.lora.layer import Linear as LoraLinear
    model = tiny_model(seed=0)
    unet = model.unet
    cond = model.encode_prompt("cache")
    state = lora.train_lora(model, torch.randn(1, 4, 8, 8), cond, rank=4, steps=2, lr=1e-2, batch_size=1, seed=2)
    calls = []
    real = LoraLinear.get_delta_weight
    monkeypatch.setattr(LoraLinear, "get_delta_weight", lambda self, *a, **kw: calls.append(1) or real(self, *a, **kw))
    x = torch.randn(1, 4, 8, 8, generator=torch.Generator().manual_seed(5))
    with torch.no_grad():
        with lora.applied(unet, state):
            first = model.unet_forward(x, 200, cond)
        n_layers = len(calls)
        assert n_layers > 0
        bases = [layer.get_base_layer().weight for layer in lora._lora_layers(unet)]
        ptrs = [b.data_ptr() for b in bases]
        versions = [b._version for b in bases]
        for _ in range(3):
            with lora.applied(unet, state):
                assert torch.equal(model.unet_forward(x, 200, cond), first)
        assert len(calls) == n_layers, "the merge was computed again for the same state"
        assert [b.data_ptr() for b in bases] == ptrs and [b._version for b in bases] == versions  # never written
        # the same values in another dict: a rebuild, the same output
        other = {k: v.clone() for k, v in state.items()}
        with lora.applied(unet, other):
            assert torch.equal(model.unet_forward(x, 200, cond), first)
        assert len(calls) == 2 * n_layers
        # a base weight written in place (a user's load_state_dict, say): the same dict is merged again, on the
        # new weight
        bases[0].mul_(1.5)
        base_out = model.unet_forward(x, 200, cond)
        with lora.applied(unet, other):
            changed = model.unet_forward(x, 200, cond)
        assert len(calls) == 3 * n_layers
        assert not torch.equal(changed, first)
        assert torch.equal(model.unet_forward(x, 200, cond), base_out)   # out of the block: the (scaled) base UNet


def test_disable_switches_off_every_adapter_layer_and_follows_a_recreated_adapter():
    """`_disable` lists the tuner layers once per set of adapters instead of walking the UNet at every call; it must
    still switch off whatever is on, and see the layers of an adapter created again at another rank."""
    model = tiny_model(seed=0)
    unet = model.unet
    lora._ensure_adapter(unet, 4)
    unet.enable_adapters()
    assert lora.is_active(unet)
    lora._disable(unet)
    assert not lora.is_active(unet)
    lora._ensure_adapter(unet, 8)                       # deleted and added again: new layers
    unet.enable_adapters()
    assert lora.is_active(unet)
    lora._disable(unet)
    assert not lora.is_active(unet)
    x, cond = torch.randn(1, 4, 8, 8), model.encode_prompt("x")
    with torch.no_grad():
        lora._disable(unet)
        off = model.unet_forward(x, 100, cond)
        unet.disable_adapters()                          # diffusers' own switch agrees
        assert torch.equal(model.unet_forward(x, 100, cond), off)


def test_applied_blocks_nest():
    """A stage may call another under the re-entrant UNet lock: the same LoRA nested is applied once, a base block
    (None) or another LoRA nested inside takes the outer one off for its time, and the outer one is back after."""
    model = tiny_model(seed=0)
    unet = model.unet
    cond = model.encode_prompt("nest")
    z0 = torch.randn(1, 4, 8, 8, generator=torch.Generator().manual_seed(6))
    a = lora.train_lora(model, z0, cond, rank=4, steps=2, lr=1e-2, batch_size=1, seed=3)
    b = lora.train_lora(model, z0, cond, rank=4, steps=2, lr=1e-2, batch_size=1, seed=4)
    x = torch.randn(1, 4, 8, 8, generator=torch.Generator().manual_seed(7))
    f = lambda: model.unet_forward(x, 300, cond)  # noqa: E731
    with torch.no_grad():
        base = f()
        with lora.applied(unet, a):
            out_a = f()
        with lora.applied(unet, b):
            out_b = f()
        assert not torch.equal(out_a, base) and not torch.equal(out_b, out_a)
        with lora.applied(unet, a):
            with lora.applied(unet, a):
                assert torch.equal(f(), out_a)                  # applied once, not twice
            assert torch.equal(f(), out_a)
            with lora.applied(unet, None):
                assert torch.equal(f(), base)
            assert torch.equal(f(), out_a)
            with lora.applied(unet, b):
                assert torch.equal(f(), out_b)
            assert torch.equal(f(), out_a)
        assert torch.equal(f(), base)
