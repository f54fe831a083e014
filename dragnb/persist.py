"""Save and load a session's `state_dict()`: one safetensors file, tensors plus a JSON header (never pickle).

The header holds the state dict's tree with each tensor, image and array replaced by a reference to a named
tensor, a SHA-256 over the header and every tensor's bytes, and a fingerprint of the model's weights. Writes
are atomic (a temporary file renamed into place). Every kind of damage raises `DamagedSessionFile`.
Files of format version 1 (dragnb 0.1 before the cache/state rebuild) are converted on load.
"""
from __future__ import annotations

import hashlib
import json
import os
import tempfile

import numpy as np
import torch
from PIL import Image

FORMAT = "dragnb-session"
VERSION = 2


class DamagedSessionFile(ValueError):
    """This .dragnb file is damaged (truncated, edited, bit-flipped) or is not a dragnb session file."""


def model_fingerprint(model) -> str:
    """A cheap fingerprint of the model's UNet weights: shapes plus a strided sample of every tensor."""
    h = hashlib.sha256()
    for name, p in sorted(model.unet.state_dict().items()):
        if "lora_" in name:          # a session's adapter is not the model
            continue
        flat = p.detach().reshape(-1)
        idx = torch.linspace(0, flat.numel() - 1, steps=min(8, flat.numel())).long().to(flat.device)
        h.update(f"{name}{tuple(p.shape)}".encode())
        h.update(flat[idx].float().cpu().numpy().tobytes())
    return h.hexdigest()[:16]


def _flatten(tree, tensors: dict, path: str = ""):
    """The tree with tensors/images/arrays moved into `tensors` (by path) and replaced by references."""
    if isinstance(tree, torch.Tensor):
        tensors[path] = tree.detach().cpu().contiguous()
        return {"__tensor__": path}
    if isinstance(tree, Image.Image):
        tensors[path] = torch.from_numpy(np.asarray(tree.convert("RGB")).copy())
        return {"__image__": path}
    if isinstance(tree, np.ndarray):
        tensors[path] = torch.from_numpy(tree.astype(np.uint8) if tree.dtype == bool else tree.copy())
        return {"__array__": path, "bool": tree.dtype == bool}
    if isinstance(tree, dict):
        return {str(k): _flatten(v, tensors, f"{path}/{k}" if path else str(k)) for k, v in tree.items()}
    if isinstance(tree, (list, tuple)):
        return [_flatten(v, tensors, f"{path}/{i}") for i, v in enumerate(tree)]
    return tree


def _unflatten(tree, tensors: dict, device):
    if isinstance(tree, dict):
        if "__tensor__" in tree:
            return tensors[tree["__tensor__"]].to(device)
        if "__image__" in tree:
            return Image.fromarray(tensors[tree["__image__"]].numpy())
        if "__array__" in tree:
            a = tensors[tree["__array__"]].numpy()
            return a.astype(bool) if tree.get("bool") else a
        return {k: _unflatten(v, tensors, device) for k, v in tree.items()}
    if isinstance(tree, list):
        return [_unflatten(v, tensors, device) for v in tree]
    return tree


def _digest(header: str, tensors: dict) -> str:
    h = hashlib.sha256(header.encode())
    for k in sorted(tensors):
        t = tensors[k]
        h.update(f"{k}{t.dtype}{tuple(t.shape)}".encode())
        h.update(t.reshape(-1).contiguous().view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()


def save_session(sd: dict, path, model=None) -> None:
    """Write a session `state_dict()` to `path` atomically."""
    from safetensors.torch import save_file
    path = os.fspath(path)
    folder = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(folder):
        raise ValueError(f"cannot save to {path!r}: the folder {folder!r} does not exist; create it first")
    if os.path.isdir(path):
        raise ValueError(f"cannot save to {path!r}: it is a folder; give a file name such as edit.dragnb")
    tensors: dict[str, torch.Tensor] = {}
    tree = _flatten(sd, tensors)
    header = json.dumps(dict(format=FORMAT, version=VERSION, fingerprint=sd.get("fingerprint"), tree=tree))
    fd, tmp = tempfile.mkstemp(prefix=".dragnb-", dir=folder)
    os.close(fd)
    try:
        save_file(tensors, tmp, metadata={"dragnb": header, "dragnb_sha256": _digest(header, tensors)})
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


FIX = "load an undamaged copy (dragnb writes atomically: a file it saved is whole unless changed since)"


def damaged(path, what: str) -> DamagedSessionFile:
    """The one error of a damaged file: 'this .dragnb file is damaged: <path> <what>; <the fix>'."""
    return DamagedSessionFile(f"this .dragnb file is damaged: {path!r} {what}; {FIX}")


def load_session(path, model) -> dict:
    """Read a session file back into a `state_dict()` for `model`; refuses damage and another model clearly.

    Every kind of damage (truncated, garbage, a flipped bit, an edited header or tensor, a missing entry) raises
    `DamagedSessionFile`; a file of another model (name or weights) raises a plain `ValueError`.
    """
    from safetensors import safe_open

    from . import validate
    path = validate.path(path)
    validate.model(model)
    if not os.path.isfile(path):
        raise ValueError(f"session file {path!r} does not exist: give the path of a file saved by session.save()")
    try:
        with safe_open(path, "pt") as f:
            meta = f.metadata() or {}
            tensors = {k: f.get_tensor(k) for k in f.keys()}
    except Exception as e:  # safetensors raises its own error types on truncated or garbage files
        raise damaged(path, f"is not a readable safetensors file ({type(e).__name__}: {e})") from None
    raw = meta.get("dragnb")
    if raw is None:
        raise damaged(path, "has no 'dragnb' header (or it is not a dragnb session file)")
    checksum = meta.get("dragnb_sha256")
    if checksum is not None and checksum != _digest(raw, tensors):   # first: a flipped bit anywhere is damage
        raise damaged(path, "does not match its checksum (a changed header or tensor)")
    try:
        head = json.loads(raw)
        fmt, version = head.get("format"), head.get("version")
    except (ValueError, AttributeError) as e:
        raise damaged(path, f"has a header that is not valid JSON ({e})") from None
    if fmt != FORMAT or version not in (1, VERSION):
        raise ValueError(f"{path!r} has format {fmt} v{version}; this dragnb reads {FORMAT} v1 and v{VERSION}: "
                         "upgrade dragnb to read it")
    if version != 1 and checksum is None:
        raise damaged(path, "has no checksum")
    try:
        if version == 1:
            return _from_v1(head, tensors, model, path)
        sd = _unflatten(head["tree"], tensors, model.device)
        saved_model, fp = sd["model"], head.get("fingerprint")
    except (KeyError, TypeError, IndexError, AttributeError) as e:
        raise damaged(path, f"lacks {e}" if isinstance(e, KeyError) else f"has a malformed header ({e})") from None
    _check_model(path, saved_model, fp, model)
    return sd


def _check_model(path, saved_name, fingerprint, model):
    if saved_name != model.name:
        raise ValueError(f"{path!r} was saved with model {saved_name!r} but {model.name!r} was given: load it "
                         f"with the same model (load_model({saved_name!r}))")
    if fingerprint is not None and fingerprint != model_fingerprint(model):
        raise ValueError(f"{path!r} was saved with other weights under the name {saved_name!r}: its LoRA, inversion "
                         "and drag state do not fit this model. Load it with the model it was made with")


def _from_v1(head, t, model, path) -> dict:
    """A version-1 file (flat tensor names, session attributes) as a version-2 state dict."""
    from . import ddim
    from .config import DragConfig
    _check_model(path, head["model"], None, model)
    dev = model.device
    cfg = DragConfig.from_dict(head["config"])
    n = cfg.n_inference_steps
    tt = ddim.timesteps(model.scheduler, n)[n - cfg.drag_step_index]
    cache: dict = {}
    if head["has_lora"] or "inv/zt" in t:
        cache["lora"] = {"trained": bool(head["has_lora"]),
                         "weights": {k[5:]: v for k, v in t.items() if k.startswith("lora/")}}
    if "inv/zt" in t:
        cache["inversion"] = {"z0": t["inv/z0"].to(dev), "zt": t["inv/zt"].to(dev), "t": tt,
                              "generated": head["generated"] is not None}
    if "feat/feat0" in t:
        cache["features"] = {"ts": [tt], "latents": torch.cat([t["inv/zt"], t["feat/x_prev0"]]).to(dev),
                             "feats": t["feat/feat0"].to(dev),
                             "x_prevs": t["feat/x_prev0"].to(dev)}
    if head["generated"] is not None:
        cache["generation"] = {"n": head["generated"]["n"], "latents": t["gen/latents"].to(dev)}

    def opt(prefix):
        o = {"lr": cfg.drag_lr}
        if f"{prefix}/step" in t:
            o.update({k: t[f"{prefix}/{k}"] for k in ("step", "exp_avg", "exp_avg_sq")})
        return o
    state = None
    if head["state"] is not None:
        snaps = {k: {"latent": t[f"snap/{k}/latent"], "opt": opt(f"snap/{k}/opt"), "handles": t[f"snap/{k}/handles"],
                     "reached": r, "position": [0, 0, 0]} for k, r in head["state"]["snapshots"].items()}
        state = {"method": "dragdiffusion", "handles0_rc": t["handles0_rc"], "targets_rc": t["targets_rc"],
                 "current": {"latent": t["latent"], "opt": opt("opt"), "handles": t["handles_rc"],
                             "reached": head["state"]["reached"], "position": [0, 0, 0]},
                 "history": head["history"], "snapshots": snaps}
    mask = t["mask"].numpy().astype(bool) if "mask" in t else None
    return {"model": head["model"], "prompt": head["prompt"], "seed": head["seed"], "config": head["config"],
            "image": Image.fromarray(t["image"].numpy()), "mask": mask, "drags": head["drags"],
            "counters": head["counters"], "stop_reason": head.get("stop_reason"), "cache": cache, "state": state}
