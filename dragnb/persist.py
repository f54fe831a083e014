"""Save and load a `DragSession`: one safetensors file, tensors plus a JSON header (never pickle)."""
from __future__ import annotations

import json
import os
from dataclasses import asdict

import numpy as np
import torch
from PIL import Image

from .config import DragConfig

FORMAT = "dragnb-session"
VERSION = 1


def save_session(s, path) -> None:
    from safetensors.torch import save_file
    lk, ik, fk = s._keys()
    t: dict[str, torch.Tensor] = {"image": torch.from_numpy(np.asarray(s.image).copy())}
    if s._mask is not None:
        t["mask"] = torch.from_numpy(s._mask.astype(np.uint8))
    lstate = s._lora_cache.get(lk)
    for n, v in (lstate or {}).items():
        t[f"lora/{n}"] = v
    if ik in s._inv_cache:
        for n, v in s._inv_cache[ik].items():
            t[f"inv/{n}"] = v
    if fk in s._feat_cache:
        for n, v in s._feat_cache[fk].items():
            t[f"feat/{n}"] = v
    if s._generated is not None:
        t["gen/latents"] = torch.cat(s._generated["latents"])
    state = None
    if s._latent is not None:
        t["latent"] = s._latent.detach()
        t["handles0_rc"], t["targets_rc"], t["handles_rc"] = s._handles0_rc, s._targets_rc, s._handles_rc
        _put_opt(t, "opt", s._opt.state_dict())
        for step, snap in s._snapshots.items():
            t[f"snap/{step}/latent"] = snap["latent"]
            t[f"snap/{step}/handles"] = snap["handles"]
            _put_opt(t, f"snap/{step}/opt", snap["opt"])
        state = dict(snapshots={str(k): v["reached"] for k, v in s._snapshots.items()}, reached=s._reached)
    meta = dict(format=FORMAT, version=VERSION, model=s.model.name, prompt=s.prompt, seed=s.seed,
                config=s.config.to_dict(), drags=[list(map(list, d)) for d in s._drags],
                history=[asdict(r) for r in s._history], counters=s.counters, keys=[lk, ik, fk],
                has_lora=lstate is not None, state=state, stop_reason=s.stop_reason,
                generated=None if s._generated is None else dict(n=s._generated["n"], key=s._generated["key"]))
    tensors = {k: v.detach().cpu().contiguous() for k, v in t.items()}
    save_file(tensors, os.fspath(path), metadata={"dragnb": json.dumps(meta)})


def _put_opt(t, prefix, sd):
    st = sd["state"].get(0)
    if st:
        for k in ("step", "exp_avg", "exp_avg_sq"):
            t[f"{prefix}/{k}"] = st[k].detach().clone().reshape(st[k].shape)


def _get_opt(t, prefix, lr):
    sd = {"state": {}, "param_groups": [{"lr": lr, "betas": (0.9, 0.999), "eps": 1e-8, "weight_decay": 0,
                                         "amsgrad": False, "maximize": False, "foreach": None, "capturable": False,
                                         "differentiable": False, "fused": None, "decoupled_weight_decay": False,
                                         "params": [0]}]}
    if f"{prefix}/step" in t:
        sd["state"][0] = {k: t[f"{prefix}/{k}"].clone() for k in ("step", "exp_avg", "exp_avg_sq")}
    return sd


def load_session(cls, path, model):
    from safetensors import safe_open
    from safetensors.torch import load_file
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise ValueError(f"session file {path!r} does not exist")
    with safe_open(path, "pt") as f:
        raw = (f.metadata() or {}).get("dragnb")
    if raw is None:
        raise ValueError(f"{path!r} is not a dragnb session file (no 'dragnb' header)")
    meta = json.loads(raw)
    if meta.get("format") != FORMAT or meta.get("version") != VERSION:
        raise ValueError(f"{path!r} has format {meta.get('format')} v{meta.get('version')}; this dragnb reads "
                         f"{FORMAT} v{VERSION}")
    if meta["model"] != model.name:
        raise ValueError(f"{path!r} was saved with model {meta['model']!r} but {model.name!r} was given: load it "
                         f"with the same model (load_model({meta['model']!r}))")
    t = {k: v.to(model.device) if not k.startswith(("image", "mask")) else v for k, v in load_file(path).items()}
    image = Image.fromarray(t["image"].numpy())
    s = cls(model, image, prompt=meta["prompt"], seed=meta["seed"], config=DragConfig.from_dict(meta["config"]))
    if meta["generated"] is not None:
        lat = t["gen/latents"]
        s._generated = dict(latents=list(lat.split(1)), n=meta["generated"]["n"], key=meta["generated"]["key"])
    if "mask" in t:
        s._mask = t["mask"].numpy().astype(bool)
    s._drags = [(tuple(h), tuple(tt)) for h, tt in meta["drags"]]
    lk, ik, fk = s._keys()
    if (lk, ik, fk) != tuple(meta["keys"]):
        raise ValueError(f"{path!r}: cache keys do not match this model/config; the file may come from another "
                         "dragnb version")
    if meta["has_lora"]:
        s._lora_cache[lk] = {k[5:]: v.cpu() for k, v in t.items() if k.startswith("lora/")}
    elif any(k.startswith("inv/") for k in t):
        s._lora_cache[lk] = None
    if "inv/zt" in t:
        s._inv_cache[ik] = {k[4:]: v for k, v in t.items() if k.startswith("inv/")}
    if "feat/feat0" in t:
        s._feat_cache[fk] = {k[5:]: v for k, v in t.items() if k.startswith("feat/")}
    s.counters = dict(meta["counters"])
    from .session import StepRecord
    s._history = [StepRecord(**{**r, "handles": [tuple(p) for p in r["handles"]],
                                "handles_grid": [tuple(p) for p in r["handles_grid"]]}) for r in meta["history"]]
    s.stop_reason = meta.get("stop_reason")
    if meta["state"] is not None:
        s._latent = t["latent"].clone().requires_grad_(True)
        s._opt = torch.optim.Adam([s._latent], lr=s.config.drag_lr)
        s._opt.load_state_dict(_get_opt(t, "opt", s.config.drag_lr))
        s._handles0_rc, s._targets_rc, s._handles_rc = (t["handles0_rc"].cpu(), t["targets_rc"].cpu(),
                                                        t["handles_rc"].cpu())
        s._reached = meta["state"]["reached"]
        s._snapshots = {}
        for step, reached in meta["state"]["snapshots"].items():
            s._snapshots[int(step)] = dict(latent=t[f"snap/{step}/latent"], handles=t[f"snap/{step}/handles"].cpu(),
                                           opt=_get_opt(t, f"snap/{step}/opt", s.config.drag_lr), reached=reached)
    return s
