"""Convert checkpoints between the reference (``{step}.pth.tar``) and fastcpu (safetensors).

    python -m fastcpu.convert 900000.pth.tar 900000.safetensors     # reference -> fastcpu
    python -m fastcpu.convert 900000.safetensors 900000.pth.tar     # fastcpu -> reference

The reference file holds ``{"model": state_dict, "optimizer": Adam.state_dict()}``; Adam's state is
indexed by position in ``model.parameters()`` (state_dict order minus the BatchNorm buffers; the
frozen ``position_enc`` / ``*_bins`` have indices but no state). fastcpu keeps the same tensors by
name: ``model/<key>``, ``optim/exp_avg/<key>``, ``optim/exp_avg_sq/<key>`` (+ ``optim/step/<key>``
and the param_groups in the JSON metadata), so a run can move from PyTorch on a GPU to fastcpu on
a CPU and back, bit for bit. Reading or writing ``.pth.tar`` needs torch (``pip install torch``);
it is loaded with ``weights_only=True`` (no pickle code execution).
"""
from __future__ import annotations

import argparse
import os
import sys
from collections import OrderedDict
from pathlib import Path

import numpy as np

from fastcpu import checkpoint

BUFFER_SUFFIXES = ("running_mean", "running_var", "num_batches_tracked")
ADAM_KEYS = {"step", "exp_avg", "exp_avg_sq"}


class ConvertError(ValueError):
    pass


def _torch():
    try:
        import torch
    except ImportError:
        raise ConvertError("reading or writing .pth.tar checkpoints needs PyTorch: "
                           "pip install torch (CPU wheel is enough)") from None
    return torch


def param_keys(model_keys):
    """Keys of model.parameters() in order: the state_dict minus BatchNorm buffers."""
    return [k for k in model_keys if not k.endswith(BUFFER_SUFFIXES)]


def reference_to_fastcpu(src, dst) -> Path:
    torch = _torch()
    src = Path(src)
    try:
        ck = torch.load(src, map_location="cpu", weights_only=True)
    except Exception as e:
        raise ConvertError(f"{src}: cannot read as a PyTorch checkpoint ({e})") from None
    if not isinstance(ck, dict) or "model" not in ck:
        raise ConvertError(f"{src}: expected a dict with a 'model' entry (reference format), got "
                           f"{list(ck) if isinstance(ck, dict) else type(ck).__name__}")
    model_sd = ck["model"]
    keys = list(model_sd)
    if keys and keys[0].startswith("module."):
        raise ConvertError(f"{src}: keys carry a DataParallel 'module.' prefix; save "
                           f"model.module.state_dict() as the reference does")
    tensors = {f"model/{k}": model_sd[k].detach().cpu().numpy() for k in keys}
    meta = {"source": "reference", "model_keys": keys}
    opt = ck.get("optimizer")
    if opt is not None:
        pkeys = param_keys(keys)
        groups = opt.get("param_groups", [])
        n_idx = sum(len(g["params"]) for g in groups)
        if n_idx != len(pkeys):
            raise ConvertError(f"{src}: optimizer has {n_idx} parameters, the model "
                               f"{len(pkeys)}; not the reference's Adam over model.parameters()")
        index = [i for g in groups for i in g["params"]]
        steps = set()
        for pos, i in enumerate(index):
            st = opt["state"].get(i)
            if st is None:
                continue                                  # frozen: no Adam state
            extra = set(st) - ADAM_KEYS
            if extra:
                raise ConvertError(f"{src}: optimizer state has {sorted(extra)}; only plain Adam "
                                   f"(no amsgrad) converts")
            name = pkeys[pos]
            tensors[f"optim/exp_avg/{name}"] = st["exp_avg"].cpu().numpy()
            tensors[f"optim/exp_avg_sq/{name}"] = st["exp_avg_sq"].cpu().numpy()
            step = st["step"]
            tensors[f"optim/step/{name}"] = np.asarray(step.cpu().numpy() if hasattr(step, "cpu")
                                                       else step)
            steps.add(float(tensors[f"optim/step/{name}"]))
        meta["param_groups"] = groups
        meta["optimizer_index"] = index
        meta["optimizer_step"] = int(max(steps)) if steps else 0
    return checkpoint.save(dst, tensors, meta)


def fastcpu_to_reference(src, dst) -> Path:
    torch = _torch()
    tensors, meta = checkpoint.load(src)
    keys = meta.get("model_keys") or [k[6:] for k in tensors if k.startswith("model/")]
    model_sd = OrderedDict((k, torch.from_numpy(np.array(tensors[f"model/{k}"]))) for k in keys)
    out = {"model": model_sd}
    pkeys = param_keys(keys)
    if any(k.startswith("optim/") for k in tensors):
        groups = meta.get("param_groups") or [{
            "lr": meta.get("lr", 0.0), "betas": (0.9, 0.98), "eps": 1e-9, "weight_decay": 0.0,
            "amsgrad": False, "maximize": False, "foreach": None, "capturable": False,
            "differentiable": False, "fused": None, "params": list(range(len(pkeys)))}]
        index = meta.get("optimizer_index") or [i for g in groups for i in g["params"]]
        state = {}
        for pos, i in enumerate(index):
            name = pkeys[pos]
            if f"optim/exp_avg/{name}" not in tensors:
                continue
            step = tensors.get(f"optim/step/{name}")
            if step is None:
                step = np.asarray(float(meta.get("optimizer_step", 0)), np.float32)
            state[i] = {"step": torch.from_numpy(np.array(step)),
                        "exp_avg": torch.from_numpy(np.array(tensors[f"optim/exp_avg/{name}"])),
                        "exp_avg_sq": torch.from_numpy(
                            np.array(tensors[f"optim/exp_avg_sq/{name}"]))}
        for g in groups:
            if isinstance(g.get("betas"), list):
                g["betas"] = tuple(g["betas"])
        out["optimizer"] = {"state": state, "param_groups": groups}
    dst = Path(dst)
    dst.parent.mkdir(parents=True, exist_ok=True)
    tmp = dst.with_name(f".{dst.name}.tmp-{os.getpid()}")
    try:
        torch.save(out, tmp)
        tmp.replace(dst)                               # atomic: never a half-written file
    finally:
        tmp.unlink(missing_ok=True)
    return dst


def _kind(path: Path):
    if path.name.endswith((".pth.tar", ".pth", ".pt")):
        return "reference"
    if path.name.endswith(".safetensors"):
        return "fastcpu"
    return None


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m fastcpu.convert",
                                 description="Convert a reference .pth.tar checkpoint to fastcpu's "
                                             "safetensors format, or back (the direction from "
                                             "both file extensions).")
    ap.add_argument("src", help="input: *.pth.tar / *.pth (reference) or *.safetensors (fastcpu)")
    ap.add_argument("dst", help="output path")
    args = ap.parse_args(argv)
    src, dst = Path(args.src), Path(args.dst)
    try:
        if not src.is_file():
            raise ConvertError(f"{src}: no such file")
        kinds = (_kind(src), _kind(dst))
        if dst.exists() and dst.resolve() == src.resolve():
            raise ConvertError(f"{dst}: the destination is the source file; give another path")
        if kinds == ("reference", "fastcpu"):
            out = reference_to_fastcpu(src, dst)
        elif kinds == ("fastcpu", "reference"):
            out = fastcpu_to_reference(src, dst)
        else:
            raise ConvertError(f"{src} -> {dst}: converts between a reference checkpoint "
                               f"(.pth.tar/.pth/.pt) and a fastcpu one (.safetensors), one of "
                               f"each; got {kinds[0] or 'an unknown kind'} -> "
                               f"{kinds[1] or 'an unknown kind'}")
    except (ConvertError, checkpoint.CheckpointError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
