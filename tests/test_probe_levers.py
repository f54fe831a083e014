"""benchmarks/probe_demo_levers.py: its levers patch what they say, and only while asked."""
import pytest
import torch
from benchlib import load_benchmark

from dragnb import lora
from dragnb.models import tiny_model


@pytest.fixture(scope="module")
def probe():
    return load_benchmark("probe_demo_levers.py")


def test_normalised_gradient_moves_along_the_gradient_at_the_asked_size(probe):
    p = torch.zeros(4, requires_grad=True)
    opt = probe.NormalisedGD([p], lr=0.01, mul=5.0)
    p.grad = torch.tensor([1.0, -1.0, 2.0, -2.0])
    opt.step()
    rms = (p.grad.pow(2).mean()).sqrt()
    assert torch.allclose(p.detach(), -0.05 * p.grad / rms)


def test_lora_band_draws_timesteps_inside_the_band_and_restores_torch(probe, monkeypatch):
    seen = []
    real = torch.randint

    def spy(low, high, *a, **kw):
        out = real(low, high, *a, **kw)
        seen.append(out)
        return out
    monkeypatch.setattr(torch, "randint", spy)
    m = tiny_model(seed=0)
    z0 = torch.zeros(1, m.unet.config.in_channels, 8, 8)
    wrapped = probe._band(lora.train_lora, 600, 800)
    wrapped(m, z0, m.encode_prompt(""), rank=2, steps=3, batch_size=2)
    assert len(seen) == 3 and all(600 <= int(t) < 800 for ts in seen for t in ts)
    assert lora.torch is torch


def test_unknown_lever_is_refused(probe):
    with pytest.raises(ValueError, match="--lever 'sgd'"):
        probe.apply_lever("sgd")
