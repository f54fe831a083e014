"""Float16 loss scaling (`dragnb.amp`): the drag's latent update and the LoRA fine-tune scale their loss as the
official code's GradScaler does. The drag is tested without a float16 UNet: a stand-in forward whose backward
passes the gradient through float16 at 1e-8 of its size, as a deep float16 network's small gradients do."""
import pytest
import torch

from dragnb.amp import loss_scaler, needs_scaling
from dragnb.state import DragDiverged
from test_drag import stand_in_drag


class _Fp16Backward(torch.autograd.Function):
    """Identity forward; the backward goes through float16 at 1e-8 of the gradient's size (and can be told to
    give inf once), so the stand-in drag's unscaled gradient (0.125) underflows to zero there."""
    inf_next = False

    @staticmethod
    def forward(ctx, x):
        return x.clone()

    @staticmethod
    def backward(ctx, g):
        if _Fp16Backward.inf_next:
            _Fp16Backward.inf_next = False
            return torch.full_like(g, float("inf"))
        return (g * 1e-8).half().float() * 1e8


def _setup(dtype, snapshot_every=100):
    return stand_in_drag(_Fp16Backward.apply, dtype, snapshot_every)


def test_only_float16_is_scaled():
    assert needs_scaling(torch.float16)
    assert not needs_scaling(torch.float32) and not needs_scaling(torch.bfloat16)
    assert loss_scaler(torch.float16, "cpu").is_enabled() and not loss_scaler(torch.bfloat16, "cpu").is_enabled()


def test_float16_drag_keeps_gradients_that_underflow_unscaled():
    """Unscaled (float32 bookkeeping over the float16 backward) the latent does not move at all; with the float16
    model's loss scaling it moves the way the exact gradient says."""
    _Fp16Backward.inf_next = False
    unscaled, ctx, feat0 = _setup(torch.float32)
    unscaled.step(ctx)
    assert torch.equal(unscaled.latent.detach(), feat0), "the stand-in should underflow without scaling"
    scaled, ctx, _ = _setup(torch.float16)
    rec = scaled.step(ctx)
    assert not rec.skipped and scaled.scaler.get_scale() == 2.0 ** 16
    moved = (scaled.latent.detach() - feat0)
    assert moved.abs().max() > 0.04          # Adam's first step: lr (0.05) times the gradient's sign
    # the same step with the exact gradient (no float16 anywhere) moves the same elements the same way
    exact, ctx2, _ = stand_in_drag()
    exact.step(ctx2)
    assert torch.equal(torch.sign(moved), torch.sign(exact.latent.detach() - feat0))


def test_inf_gradient_skips_the_step_halves_the_scale_and_replays_exactly():
    _Fp16Backward.inf_next = False
    state, ctx, _ = _setup(torch.float16, snapshot_every=2)
    state.step(ctx)
    before = state.latent.detach().clone()
    _Fp16Backward.inf_next = True
    rec = state.step(ctx)                                    # step 2: the scaler finds inf and skips it
    assert rec.skipped and torch.equal(state.latent.detach(), before)
    assert state.scaler.get_scale() == 2.0 ** 15
    rec3 = state.step(ctx)
    assert not rec3.skipped and state.scaler.get_scale() == 2.0 ** 15
    after3 = state.latent.detach().clone()
    # rewind 1 (back to the snapshot at step 2, the skip's halved scale included) and step again: same latent
    state.rewind(1, ctx)
    assert state.scaler.get_scale() == 2.0 ** 15 and state.n_steps == 2
    state.step(ctx)
    assert torch.equal(state.latent.detach(), after3)
    # save/load: a fresh state continues with the same scale and the same next step
    sd = state.state_dict()
    other, _, _ = _setup(torch.float16)
    other.load_state_dict(sd)
    assert other.scaler.get_scale() == 2.0 ** 15 and other.history[1].skipped
    state.step(ctx)
    other.step(ctx)
    assert torch.equal(state.latent.detach(), other.latent.detach())


def test_float32_inf_gradient_still_raises_and_keeps_state():
    _Fp16Backward.inf_next = False
    state, ctx, _ = _setup(torch.float32)
    state.step(ctx)
    before = state.latent.detach().clone()
    _Fp16Backward.inf_next = True
    with pytest.raises(DragDiverged):
        state.step(ctx)
    _Fp16Backward.inf_next = False
    assert torch.equal(state.latent.detach(), before) and state.n_steps == 1


def test_lora_fine_tune_scales_its_loss_on_a_float16_unet(monkeypatch):
    """The tiny model cast to float16 by hand (dragnb refuses float16 on the CPU for users: it is slow there):
    the fine-tune runs through an enabled scaler and trains the adapter."""
    from dragnb import lora
    from dragnb.models import tiny_model
    model = tiny_model(seed=0)
    model.unet.to(torch.float16)
    model.dtype = torch.float16
    made = []

    def spy(dtype, device):
        made.append(loss_scaler(dtype, device))
        return made[-1]
    monkeypatch.setattr(lora, "loss_scaler", spy)
    z0 = torch.randn(1, 4, 8, 8)
    state = lora.train_lora(model, z0, model.encode_prompt("a photo"), rank=4, steps=2, seed=0)
    assert len(made) == 1 and made[0].is_enabled()
    assert any("lora_B" in n and v.abs().max() > 0 for n, v in state.items()), "the adapter did not train"


def test_a_float16_step_reads_the_device_few_times(monkeypatch):
    """Every read of a tensor's value on the host (item, tolist, float, int, bool) is, on a GPU, a synchronisation
    that leaves the GPU idle until the next launch. A float16 drag step reads the device three times: the tracking's
    argmin, GradScaler's inf check, and one batched read of the losses, the finiteness checks and whether the step
    was taken. Its snapshots copy the scaler's state on the device (no `get_scale`/`state_dict` reads). The other
    reads counted here are of the handles, which live on the CPU (9 in this one-handle step), and Adam's step
    counter (CPU). Before the batching a step made 25 reads."""
    from torch.amp import GradScaler
    _Fp16Backward.inf_next = False
    state, ctx, _ = _setup(torch.float16)
    state.step(ctx)
    reads = []
    for name in ("item", "tolist", "__float__", "__int__", "__bool__"):
        f = getattr(torch.Tensor, name)
        monkeypatch.setattr(torch.Tensor, name, lambda self, *a, _f=f, _n=name, **k: (reads.append(_n), _f(self, *a, **k))[1])
    for name in ("get_scale", "state_dict"):
        monkeypatch.setattr(GradScaler, name, lambda self, _n=name: pytest.fail(f"GradScaler.{_n} read the device"))
    rec = state.step(ctx)
    assert rec is not None and not rec.skipped
    assert len(reads) <= 14, reads
    monkeypatch.undo()
    assert state.scaler.get_scale() == 2.0 ** 16
