"""Issue 13: a catalogue of bad inputs and damaged files at every public entry. Each is refused with a clear
TypeError/ValueError (or DamagedSessionFile) whose message names the value received and the fix, and the session's
observable state (drags, mask, config, steps, latent, history, inputs) is what it was before the refused call."""
import json
import math
import struct

import numpy as np
import pytest
import torch

from dragnb import DragSession, SourceCache
from dragnb.models import tiny_model
from dragnb.persist import DamagedSessionFile, save_session

FAST = dict(lora_steps=2, lora_batch_size=1, n_inference_steps=10, drag_steps=6, snapshot_every=2)
NAN = float("nan")


def scene(size=32):
    yy, xx = np.mgrid[0:size, 0:size]
    img = np.zeros((size, size, 3), np.uint8)
    img[..., 0] = 40 + 4 * xx
    img[..., 2] = 200 - 3 * yy
    img[((xx - 10) ** 2 + (yy - 16) ** 2) < 25] = (250, 220, 10)
    return img


@pytest.fixture(scope="module")
def model():
    return tiny_model(seed=0)


@pytest.fixture(scope="module")
def s(model):
    """One prepared session, two steps in, with a mask: every bad call below must leave it as it is."""
    s = DragSession(model, scene(), prompt="a disc", seed=0, config=model.default_config(**FAST))
    s.add_drag((10, 16), (22, 16))
    m = np.zeros((32, 32), bool)
    m[4:28, 2:30] = True
    s.set_mask(m)
    s.step(2)
    return s


@pytest.fixture(scope="module")
def files(s, model, tmp_path_factory):
    """A good session file and damaged ones."""
    d = tmp_path_factory.mktemp("files")
    good = d / "good.dragnb"
    s.save(good)
    raw = good.read_bytes()
    out = {"dir": d, "good": good}
    (d / "truncated.dragnb").write_bytes(raw[: len(raw) // 2])
    (d / "empty.dragnb").write_bytes(b"")
    (d / "garbage.dragnb").write_bytes(np.random.default_rng(0).integers(0, 256, 4000, dtype=np.uint8).tobytes())
    (d / "text.dragnb").write_text("this is not a session\n")
    rng = np.random.default_rng(13)
    for i in range(8):   # random single-bit flips anywhere in the file
        b = bytearray(raw)
        pos = int(rng.integers(0, len(b)))
        b[pos] ^= 1 << int(rng.integers(0, 8))
        (d / f"flip{i}.dragnb").write_bytes(bytes(b))
    n = struct.unpack("<Q", raw[:8])[0]
    head = json.loads(raw[8:8 + n])

    def rewrite(name, edit):
        h = json.loads(raw[8:8 + n])
        edit(h)
        hb = json.dumps(h, separators=(",", ":")).encode()
        hb += b" " * (-len(hb) % 8)
        (d / name).write_bytes(struct.pack("<Q", len(hb)) + hb + raw[8 + n:])

    def edit_prompt(h):   # the header edited by hand: the checksum no longer matches
        inner = json.loads(h["__metadata__"]["dragnb"])
        inner["tree"]["prompt"] = "edited"
        h["__metadata__"]["dragnb"] = json.dumps(inner)
    rewrite("edited.dragnb", edit_prompt)
    rewrite("nometa.dragnb", lambda h: h.pop("__metadata__"))
    rewrite("badjson.dragnb", lambda h: h["__metadata__"].update(dragnb="{not json"))
    assert head["__metadata__"]["dragnb_sha256"]

    # consistent files (a valid checksum) whose content is wrong: written through save_session itself
    sd = {**s.state_dict(), "fingerprint": None}
    save_session({**sd, "drags": [[[300.0, 16.0], [22.0, 16.0]]]}, d / "outside.dragnb")
    save_session({**sd, "drags": [[[10.0, 16.0]]]}, d / "halfdrag.dragnb")
    save_session({**sd, "drags": [[[NAN, 16.0], [22.0, 16.0]]]}, d / "nandrag.dragnb")
    save_session({k: v for k, v in sd.items() if k != "config"}, d / "noconfig.dragnb")
    save_session({**sd, "config": {**sd["config"], "drag_steps": 2.5}}, d / "badconfig.dragnb")
    save_session({**sd, "seed": "zero"}, d / "badseed.dragnb")
    save_session({**sd, "state": {"method": "dragdiffusion"}}, d / "badstate.dragnb")
    return out


def observe(s):
    return dict(drags=s.drags, mask=None if s.mask is None else s.mask.tobytes(), config=s.config,
                n_steps=s.n_steps, latent=s.current_latent(), history=[(r.loss, r.handles) for r in s.history],
                prompt=s.prompt, seed=s.seed, image=s.image_sha, handles=s.handles, prepared=s.is_prepared)


def same(a, b):
    assert a.keys() == b.keys()
    for k in a:
        if k == "latent":
            assert torch.equal(a[k], b[k]), "the latent changed"
        else:
            assert a[k] == b[k], f"{k} changed: {a[k]!r} -> {b[k]!r}"


def other_weights_same_name():
    m = tiny_model(seed=1)
    m.name = "tiny-0"
    return m


def nan_image():
    a = np.full((32, 32, 3), 0.5, np.float32)
    a[3, 4] = NAN
    return a


def nan_latent(s):
    z = s.latent_at(0)
    z[0, 0, 0, 0] = NAN
    return z


P = pytest.param
# (call on the session s / the model m / the files f, exception, regex on the message: the value and the fix)
CATALOGUE = [
    # --- the constructor
    P(lambda s, m, f: DragSession(None, scene()), TypeError, r"model=None is not a DragModel.*load_model",
      id="model=None"),
    P(lambda s, m, f: DragSession("demo", scene()), TypeError, r"model='demo' is not a DragModel.*load_model",
      id="model=str"),
    P(lambda s, m, f: DragSession(m, scene(), config={"lam": 0.1}), TypeError,
      r"config=\{'lam': 0.1\} is not a DragConfig.*default_config", id="config=dict"),
    P(lambda s, m, f: DragSession(m, scene(), prompt=None), TypeError, r"prompt=None is not a string.*give text",
      id="prompt=None"),
    P(lambda s, m, f: DragSession(m, scene(), prompt=3), TypeError, r"prompt=3 is not a string", id="prompt=3"),
    P(lambda s, m, f: DragSession(m, scene(), seed=2.5), TypeError, r"seed=2.5 is not a whole number.*int",
      id="seed=2.5"),
    P(lambda s, m, f: DragSession(m, scene(), seed="0"), TypeError, r"seed='0' is not a whole number", id="seed=str"),
    P(lambda s, m, f: DragSession(m, scene(), seed=True), TypeError, r"seed=True is not a whole number",
      id="seed=True"),
    P(lambda s, m, f: DragSession(m, None), TypeError, r"image of type NoneType is not supported: pass",
      id="image=None"),
    P(lambda s, m, f: DragSession(m, "nope.png"), ValueError, r"'nope.png' does not exist: pass", id="image=missing"),
    P(lambda s, m, f: DragSession(m, nan_image()), ValueError, r"NaN/inf value.*replace", id="image=nan"),
    P(lambda s, m, f: DragSession(m, np.zeros((32, 32, 5), np.uint8)), ValueError,
      r"shape \(32, 32, 5\) is not an image: use HxWx3", id="image=5-channel"),
    P(lambda s, m, f: DragSession(m, scene(), mask=np.ones((16, 16), bool)), ValueError,
      r"mask of shape \(16, 16\) does not match the 32×32 image", id="init-mask-shape"),
    P(lambda s, m, f: DragSession(m, scene(), cache="shared"), TypeError,
      r"cache='shared' is not a SourceCache.*SourceCache\(model\)", id="cache=str"),
    P(lambda s, m, f: DragSession(m, scene(), cache=SourceCache(other_weights_same_name())), ValueError,
      r"cache=SourceCache.* belongs to another model.*SourceCache\(model\)", id="cache-of-another-model"),
    P(lambda s, m, f: SourceCache(m, max_entries=0), ValueError, r"max_entries=0 keeps nothing: give an int >= 1",
      id="max_entries=0"),
    P(lambda s, m, f: SourceCache(m, max_entries=2.5), TypeError, r"max_entries=2.5 is not a whole number: give",
      id="max_entries=2.5"),
    P(lambda s, m, f: SourceCache(m, max_bytes=-1), ValueError, r"max_bytes=-1 is negative: give a byte count",
      id="max_bytes=-1"),
    P(lambda s, m, f: SourceCache(m, max_bytes="1GB"), TypeError, r"max_bytes='1GB' is not a whole number: give",
      id="max_bytes=str"),
    P(lambda s, m, f: setattr(s.cache, "max_entries", None), TypeError, r"max_entries=None is not a whole number",
      id="set-max_entries=None"),
    P(lambda s, m, f: SourceCache(None), TypeError, r"SourceCache\(model=None\).*load_model", id="cache-model=None"),
    # --- drags
    P(lambda s, m, f: s.add_drag("20,24", (5, 5)), TypeError, r"handle '20,24' is not a point: give \(x, y\)",
      id="add_drag-string"),
    P(lambda s, m, f: s.add_drag((20, 24, 99), (5, 5)), TypeError, r"handle \(20, 24, 99\) is not a point: give",
      id="add_drag-triple"),
    P(lambda s, m, f: s.add_drag((NAN, 5), (5, 20)), ValueError, r"handle \(nan, 5\) is not finite: give",
      id="add_drag-nan"),
    P(lambda s, m, f: s.add_drag((5, 5), (5, math.inf)), ValueError, r"target \(5, inf\) is not finite",
      id="add_drag-inf"),
    P(lambda s, m, f: s.add_drag((300, 20), (5, 5)), ValueError,
      r"handle \(300, 20\) is outside the 32×32 image: use 0 ≤ x ≤ 31",
      id="add_drag-outside"),
    P(lambda s, m, f: s.add_drag((-1, 5), (5, 5)), ValueError, r"handle \(-1, 5\) is outside", id="add_drag-neg"),
    P(lambda s, m, f: s.add_drag(None, (5, 5)), TypeError, r"handle None is not a point", id="add_drag-None"),
    P(lambda s, m, f: s.add_drag((True, 5), (5, 20)), TypeError, r"handle \(True, 5\) is not a point.*two numbers",
      id="add_drag-bool"),
    P(lambda s, m, f: s.add_drag(("20", "24"), (5, 5)), TypeError, r"handle \('20', '24'\) is not a point",
      id="add_drag-strings"),
    P(lambda s, m, f: s.add_drag((1 + 2j, 3), (5, 5)), TypeError, r"handle \(\(1\+2j\), 3\) is not a point",
      id="add_drag-complex"),
    P(lambda s, m, f: s.add_drag((5, 5), (5, 5)), ValueError, r"target \(5.0, 5.0\) equals its handle: drag",
      id="add_drag-zero"),
    P(lambda s, m, f: s.add_drag((4, 5), (4.4, 5)), ValueError, r"same feature cell.*drag farther",
      id="add_drag-same-cell"),
    P(lambda s, m, f: s.add_drag((10, 16), (12, 16)), ValueError,
      r"drag \(10.0, 16.0\) -> \(12.0, 16.0\) is 1.0 grid cells long.*Drag farther \(at least 4 px\)",
      id="add_drag-one-cell"),
    P(lambda s, m, f: s.add_drag((10, 16), (12, 18)), ValueError, r"is 1.4 grid cells long.*Drag farther",
      id="add_drag-one-cell-diagonal"),
    P(lambda s, m, f: s.set_drags(None), TypeError, r"drags=None is not a list of drags: give", id="set_drags-None"),
    P(lambda s, m, f: s.set_drags("abc"), TypeError, r"drags='abc' is not a list of drags", id="set_drags-str"),
    P(lambda s, m, f: s.set_drags([((10, 16),)]), TypeError, r"drag \(\(10, 16\),\) is not a \(handle, target\)",
      id="set_drags-half"),
    P(lambda s, m, f: s.set_drags([((10, 16), (22, 16), (1, 1))]), TypeError, r"is not a \(handle, target\) pair",
      id="set_drags-triple"),
    P(lambda s, m, f: s.set_drags([((10, 16), (22, 16)), ((300, 0), (5, 5))]), ValueError,
      r"handle \(300, 0\) is outside", id="set_drags-one-bad"),
    P(lambda s, m, f: s.remove_drag(5), ValueError, r"drag index 5 does not exist: there are 1", id="remove_drag-5"),
    P(lambda s, m, f: s.remove_drag(0.0), TypeError, r"i=0.0 is not a whole number", id="remove_drag-float"),
    P(lambda s, m, f: s.remove_drag("0"), TypeError, r"i='0' is not a whole number", id="remove_drag-str"),
    # --- mask
    P(lambda s, m, f: s.set_mask(np.ones((16, 16), bool)), ValueError, r"mask of shape \(16, 16\) does not match",
      id="set_mask-shape"),
    P(lambda s, m, f: s.set_mask(np.zeros((32, 32), np.uint8)), ValueError, r"no editable pixel", id="set_mask-empty"),
    P(lambda s, m, f: s.set_mask("nope.png"), ValueError, r"'nope.png' does not exist", id="set_mask-missing"),
    P(lambda s, m, f: s.set_mask(np.full((32, 32), NAN)), ValueError, r"NaN", id="set_mask-nan"),
    P(lambda s, m, f: s.set_mask(np.full((32, 32), 2.0)), ValueError, r"\[0, 1\]", id="set_mask-range"),
    P(lambda s, m, f: s.set_mask(5), TypeError, r"mask of type int", id="set_mask-int"),
    # --- configure
    P(lambda s, m, f: s.configure(bogus=1), TypeError, r"unknown DragConfig field.*bogus", id="configure-unknown"),
    P(lambda s, m, f: s.configure(drag_steps=2.5), TypeError, r"drag_steps=2.5 is not a whole number",
      id="configure-2.5"),
    P(lambda s, m, f: s.configure(lam=NAN), TypeError, r"lam=nan is not a finite number", id="configure-nan"),
    P(lambda s, m, f: s.configure(inversion_strength=1.5), ValueError, r"inversion_strength=1.5 is invalid",
      id="configure-range"),
    P(lambda s, m, f: s.configure(method="nope"), ValueError, r"'nope' is unknown: use one of", id="configure-method"),
    P(lambda s, m, f: s.configure(mutual_attention=1), TypeError, r"mutual_attention=1 is not True or False",
      id="configure-bool"),
    P(lambda s, m, f: s.configure(reach_distance=-1.0), ValueError, r"reach_distance=-1.0", id="configure-reach"),
    P(lambda s, m, f: s.configure(sup_res_scale=0.0625), ValueError, r"same feature cell|grid cells long",
      id="configure-grid-too-coarse-for-the-drags"),
    # --- step / run / rewind
    P(lambda s, m, f: s.step(2.5), TypeError, r"n=2.5 is not a whole number: give an int", id="step-2.5"),
    P(lambda s, m, f: s.step(0), ValueError, r"n=0 is too small: give a whole number >= 1", id="step-0"),
    P(lambda s, m, f: s.step(-1), ValueError, r"n=-1 is too small", id="step-neg"),
    P(lambda s, m, f: s.step("1"), TypeError, r"n='1' is not a whole number", id="step-str"),
    P(lambda s, m, f: s.run(max_steps=-5), ValueError, r"max_steps=-5 is too small: give a whole number >= 0",
      id="run-neg"),
    P(lambda s, m, f: s.run(max_steps=2.5), TypeError, r"max_steps=2.5 is not a whole number", id="run-2.5"),
    P(lambda s, m, f: s.run(max_steps=1, callback=5), TypeError, r"callback=5 is not callable: give a function",
      id="run-callback"),
    P(lambda s, m, f: s.rewind(5), ValueError, r"cannot rewind 5 steps: 2 steps were taken", id="rewind-too-far"),
    P(lambda s, m, f: s.rewind(-1), ValueError, r"k=-1 is too small", id="rewind-neg"),
    P(lambda s, m, f: s.rewind(1.5), TypeError, r"k=1.5 is not a whole number", id="rewind-1.5"),
    # --- prompt / seed / image
    P(lambda s, m, f: setattr(s, "prompt", None), TypeError, r"prompt=None is not a string", id="prompt-setter-None"),
    P(lambda s, m, f: setattr(s, "seed", 1.5), TypeError, r"seed=1.5 is not a whole number", id="seed-setter-1.5"),
    P(lambda s, m, f: setattr(s, "seed", "3"), TypeError, r"seed='3' is not a whole number", id="seed-setter-str"),
    P(lambda s, m, f: s.set_image(None), TypeError, r"image of type NoneType", id="set_image-None"),
    P(lambda s, m, f: s.set_image("nope.png"), ValueError, r"'nope.png' does not exist", id="set_image-missing"),
    P(lambda s, m, f: s.set_image(nan_image()), ValueError, r"NaN/inf", id="set_image-nan"),
    # --- looking
    P(lambda s, m, f: s.render_latent(torch.zeros(1, 4, 8, 8)), ValueError,
      r"latent has shape \(1, 4, 8, 8\).*latent_at\(0\)", id="render_latent-shape"),
    P(lambda s, m, f: s.render_latent("x"), TypeError, r"latent='x' is not a tensor: give", id="render_latent-str"),
    P(lambda s, m, f: s.render_latent(nan_latent(s)), ValueError, r"latent holds 1 NaN/inf value.*latent_at",
      id="render_latent-nan"),
    P(lambda s, m, f: s.render_latent(s.latent_at(0), mutual="yes"), TypeError,
      r"mutual='yes' is not True, False or None", id="render_latent-mutual"),
    P(lambda s, m, f: s.features("target"), ValueError, r"which='target': use 'source' or 'current'",
      id="features-which"),
    P(lambda s, m, f: s.latent_at(1.5), TypeError, r"step=1.5 is not a whole number", id="latent_at-1.5"),
    P(lambda s, m, f: s.latent_at(-1), ValueError, r"step=-1 is too small", id="latent_at-neg"),
    P(lambda s, m, f: s.latent_at("0"), TypeError, r"step='0' is not a whole number", id="latent_at-str"),
    # --- save
    P(lambda s, m, f: s.save(f["dir"] / "missing" / "x.dragnb"), ValueError, r"folder .* does not exist; create it",
      id="save-missing-folder"),
    P(lambda s, m, f: s.save(f["dir"]), ValueError, r"it is a folder; give a file name", id="save-to-folder"),
    P(lambda s, m, f: s.save(None), TypeError, r"path=None is not a file path: give", id="save-None"),
    # --- load: missing, damaged, inconsistent, another model
    P(lambda s, m, f: DragSession.load(f["dir"] / "nope.dragnb", m), ValueError, r"does not exist",
      id="load-missing"),
    P(lambda s, m, f: DragSession.load(f["good"], None), TypeError, r"model=None is not a DragModel",
      id="load-model=None"),
    P(lambda s, m, f: DragSession.load(f["good"], other_weights_same_name()), ValueError,
      r"saved with other weights under the name 'tiny-0'.*Load it with the model it was made with",
      id="load-same-name-other-weights"),
    P(lambda s, m, f: DragSession.load(f["good"], tiny_model(seed=2)), ValueError,
      r"saved with model 'tiny-0' but 'tiny-2' was given", id="load-other-model"),
] + [
    P(lambda s, m, f, n=n: DragSession.load(f["dir"] / f"{n}.dragnb", m), DamagedSessionFile,
      r"this \.dragnb file is damaged", id=f"load-{n}")
    for n in ["truncated", "empty", "garbage", "text", "edited", "nometa", "badjson"]
    + [f"flip{i}" for i in range(8)]
] + [
    P(lambda s, m, f, n=n: DragSession.load(f["dir"] / f"{n}.dragnb", m), DamagedSessionFile,
      r"this \.dragnb file is damaged.*" + why, id=f"load-{n}")
    for n, why in [("outside", r"handle \(300, 16\) is outside"), ("halfdrag", r"is not a \(handle, target\)"),
                   ("nandrag", r"is not finite"), ("noconfig", r"config"), ("badconfig", r"drag_steps=2.5"),
                   ("badseed", r"seed='zero'"), ("badstate", r"state")]
]


def test_the_catalogue_is_long_enough():
    assert len(CATALOGUE) >= 60


@pytest.mark.filterwarnings("ignore::UserWarning")
@pytest.mark.parametrize("call, exc, match", CATALOGUE)
def test_bad_input_is_refused_clearly_and_changes_nothing(s, model, files, call, exc, match):
    before = observe(s)
    with pytest.raises(exc, match=match) as info:
        call(s, model, files)
    assert "Traceback" not in str(info.value) and "\n" not in str(info.value).strip()
    same(before, observe(s))


def test_the_session_still_works_after_the_catalogue(s, files, model):
    """After every refused call the session continues as if none had been made."""
    twin = DragSession.load(files["good"], model)
    assert [r.loss for r in s.step(1)] == [r.loss for r in twin.step(1)]
    assert torch.equal(s.current_latent(), twin.current_latent())
    s.rewind(1)


@pytest.mark.parametrize("change", ["mask", "drag_lr", "save-load then drag_lr"])
def test_rewind_across_a_kept_change_lands_exactly(model, tmp_path, change):
    """Found by the sequences below: a step taken before a mask or drag-setting change, between two snapshots, was
    replayed by rewind with the new settings (a different latent). Now such steps are kept as snapshots."""
    cfg = model.default_config(**{**FAST, "snapshot_every": 3})
    s = DragSession(model, scene(), prompt="a disc", seed=0, config=cfg)
    s.add_drag((10, 16), (22, 16))
    s.step(2)
    after2 = s.current_latent()
    if change.startswith("save-load"):
        s.save(tmp_path / "s.dragnb")
        s = DragSession.load(tmp_path / "s.dragnb", model)
    if change == "mask":
        m = np.zeros((32, 32), bool)
        m[8:24, 4:30] = True
        s.set_mask(m)
    else:
        s.configure(drag_lr=0.02)
    s.step(2)
    s.rewind(2)
    assert s.n_steps == 2 and torch.equal(s.current_latent(), after2)


# ----------------------------------------------------------------------------- random sequences (hypothesis)
# Random sequences of public operations on one session, checking its invariants: the history length equals the steps
# taken since the last restart; rewind then replay is bit-exact; a rejected call changes nothing; save/load continues
# identically; stop() ends a run before its next step. Few examples, derandomized: the same sequences in every run.
try:
    from hypothesis import HealthCheck, Phase, settings, strategies as st
    from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule
except ImportError:   # the `test` extras install it
    RuleBasedStateMachine = None

if RuleBasedStateMachine is None:
    def test_session_operations():
        pytest.skip("hypothesis is not installed: pip install -e '.[test]'")
else:
    from dragnb.invalidation import restarts_state

    PROP_FAST = {**FAST, "drag_steps": 40}
    DRAGS = [((10, 16), (22, 16)), ((16, 8), (16, 20)), ((24, 24), (14, 26)), ((6, 6), (12, 12))]
    MASKS = [None, np.pad(np.ones((24, 28), bool), ((4, 4), (2, 2))), np.pad(np.ones((16, 32), bool), ((8, 8), (0, 0)))]
    CONFIG = {"lam": [0.1, 0.3], "drag_lr": [0.01, 0.02], "r_m": [1, 2],            # drag-only
              "inversion_strength": [0.7, 0.5], "lora_steps": [2, 3]}            # the cache's stages
    BAD = [lambda s: s.add_drag("20,24", (5, 5)), lambda s: s.add_drag((20, 24, 99), (5, 5)),
           lambda s: s.add_drag((float("nan"), 3), (5, 5)), lambda s: s.add_drag((10, 16), (12, 16)),
           lambda s: s.step(2.5), lambda s: s.run(max_steps=-5), lambda s: s.rewind(10**6),
           lambda s: s.configure(drag_steps=2.5), lambda s: s.configure(bogus=1),
           lambda s: s.set_mask(np.zeros((3, 3))),
           lambda s: s.remove_drag(99), lambda s: setattr(s, "prompt", None), lambda s: s.latent_at(1.5)]
    _MODEL = {}

    def shared_model():
        if "m" not in _MODEL:
            _MODEL["m"] = tiny_model(seed=0)
            _MODEL["cache"] = SourceCache(_MODEL["m"], max_entries=8)   # shared by every example: prepare once
        return _MODEL["m"]

    def observe_ops(s):
        return (s.drags, None if s.mask is None else s.mask.tobytes(), s.config, s.n_steps,
                [(r.loss, r.handles) for r in s.history], s.prompt, s.seed, s.handles)

    class SessionMachine(RuleBasedStateMachine):
        def __init__(self):
            super().__init__()
            m = shared_model()
            self.s = DragSession(m, scene(), prompt="a disc", seed=0, config=m.default_config(**PROP_FAST),
                                 cache=_MODEL["cache"])
            self.s.add_drag(*DRAGS[0])
            self.restart()

        def restart(self):
            self.steps = 0                  # steps taken since the last restart, as this machine counts them
            self.latents = {}               # step -> the latent after it, as first seen
            self.kept_at = 0                # the step count at the last change that kept the drag state

        def took(self, records):
            self.steps += len(records)
            self.latents.setdefault(self.steps, self.s.current_latent())

        def kept(self):
            self.kept_at = self.steps

        # ---------------------------------------------------------------- inputs
        @precondition(lambda self: len(self.s.drags) < 3)
        @rule(i=st.integers(0, len(DRAGS) - 1))
        def add_drag(self, i):
            self.s.add_drag(*DRAGS[i])
            self.restart()

        @precondition(lambda self: len(self.s.drags) > 1)
        @rule(data=st.data())
        def remove_drag(self, data):
            self.s.remove_drag(data.draw(st.integers(0, len(self.s.drags) - 1)))
            self.restart()

        @rule(i=st.integers(0, len(MASKS) - 1))
        def set_mask(self, i):
            self.s.set_mask(MASKS[i])                       # the drag is kept: the next step uses the new mask
            assert self.s.n_steps == self.steps
            if self.steps:
                assert torch.equal(self.s.current_latent(), self.latents[self.steps])
            self.kept()

        @rule(field=st.sampled_from(sorted(CONFIG)), i=st.integers(0, 1))
        def configure(self, field, i):
            value = CONFIG[field][i]
            changed = {field} if getattr(self.s.config, field) != value else set()
            self.s.configure(**{field: value})
            if restarts_state(changed):
                self.restart()
            else:
                self.kept()

        # ---------------------------------------------------------------- verbs
        @rule(n=st.integers(1, 2))
        def step(self, n):
            self.took(self.s.step(n))

        @precondition(lambda self: self.s.n_steps >= 1)
        @rule(data=st.data())
        def rewind_then_replay(self, data):
            """Rewind lands exactly on the latent that step had; replaying gives the same steps again when the
            settings are those they were taken with (no kept change since)."""
            k = data.draw(st.integers(1, min(3, self.s.n_steps)))
            latent, history = self.s.current_latent(), [(r.loss, r.handles) for r in self.s.history]
            target = self.steps - k
            self.s.rewind(k)
            assert self.s.n_steps == target and [(r.loss, r.handles) for r in self.s.history] == history[:target]
            if target in self.latents:
                assert torch.equal(self.s.current_latent(), self.latents[target])
            self.steps = target
            self.latents = {n: z for n, z in self.latents.items() if n <= target}
            if target >= self.kept_at:
                replayed = self.s.step(k)
                assert len(replayed) == k
                assert [(r.loss, r.handles) for r in self.s.history] == history
                assert torch.equal(self.s.current_latent(), latent)
                self.took(replayed)
            else:
                self.kept_at = target

        @rule()
        def run_then_stop(self):
            """stop() called from the run's callback: the run ends before its next step."""
            records = self.s.run(max_steps=3, callback=lambda r: self.s.stop(), progress=False)
            assert len(records) <= 1
            assert len(records) == 0 or self.s.stop_reason == "stopped by stop()"
            self.took(records)

        @rule()
        def save_then_load(self):
            import tempfile
            from pathlib import Path
            path = Path(tempfile.mkdtemp(prefix="dragnb-prop-")) / "s.dragnb"
            self.s.save(path)
            twin = DragSession.load(path, self.s.model)
            assert observe_ops(twin) == observe_ops(self.s)
            assert torch.equal(twin.current_latent(), self.s.current_latent())
            a, b = self.s.step(1), twin.step(1)
            assert [(r.loss, r.handles) for r in a] == [(r.loss, r.handles) for r in b]
            assert torch.equal(twin.current_latent(), self.s.current_latent())
            self.took(a)
            twin.cache = _MODEL["cache"]
            self.s = twin                                   # go on with the loaded session

        @rule(i=st.integers(0, len(BAD) - 1))
        def rejected_call_changes_nothing(self, i):
            before, lat = observe_ops(self.s), self.s.current_latent() if self.s.n_steps else None
            with pytest.raises((TypeError, ValueError)):
                BAD[i](self.s)
            assert observe_ops(self.s) == before
            if lat is not None:
                assert torch.equal(self.s.current_latent(), lat)

        # ---------------------------------------------------------------- invariants
        @invariant()
        def history_length_is_steps_taken(self):
            assert self.s.n_steps == len(self.s.history) == self.steps
            assert [r.step for r in self.s.history] == list(range(1, self.steps + 1))

    SessionMachine.TestCase.settings = settings(
        max_examples=8, stateful_step_count=10, deadline=None, derandomize=True,
        suppress_health_check=list(HealthCheck),
        phases=[Phase.explicit, Phase.generate])   # no shrinking: a failure prints its whole sequence at once
    test_session_operations = pytest.mark.filterwarnings("ignore::UserWarning")(SessionMachine.TestCase)
