"""Convert checkpoints between the reference (``{step}.pth.tar``) and fastcpu (safetensors).

    python -m fastcpu.convert 900000.pth.tar 900000.safetensors     # reference -> fastcpu
        [--reference-config config/LJSpeech | --config FILE]
    python -m fastcpu.convert 900000.safetensors 900000.pth.tar     # fastcpu -> reference

The reference's ``train.py`` saves ``{"model": state_dict, "optimizer": Adam.state_dict()}``.
Adam's state is indexed by position in ``model.parameters()``: the state_dict order minus the
BatchNorm buffers, where the frozen ``position_enc`` / ``*_bins`` have indices but no state.
fastcpu keeps the same tensors by name: ``model/<key>``, ``optim/exp_avg/<key>``,
``optim/exp_avg_sq/<key>``. The converter maps the moments **by parameter name** both ways, so
a run can move from PyTorch to fastcpu and back bit for bit.

Reference -> fastcpu: the file is read with ``torch.load(weights_only=True)``, allowing only the
numpy scalar and dtype globals besides torch's own (the reference's ``ScheduledOptim`` stores
each group's ``lr`` as a ``numpy.float64``), so no code in the file runs. A ``module.`` prefix
(a state_dict saved from ``nn.DataParallel``) is stripped with a note. The output records a run
config, so it resumes with ``--resume-from`` (its data order starts a new epoch: the reference
does not record its own) or fine-tunes with ``--init-from``: the config comes from the
reference's three YAML files (``--reference-config DIR``), from a fastcpu config (``--config``),
or else the LJSpeech defaults, with the speaker count and vocabulary taken from the tensors. A
file that does not fit that config is still converted, for ``--init-from`` only, with a note.

A HiFi-GAN generator file (``{"generator": state_dict}``, the reference's
``hifigan/generator_*.pth.tar``) is recognised by its key and written as a plain-weight safetensors
vocoder file (weight norm folded: w = g * v / ||v||), for ``synthesize --vocoder-checkpoint``;
every name and shape is checked against HiFi-GAN V1 first.

fastcpu -> reference: the parameter order is the model's own (built from the checkpoint's
config) or the one recorded at conversion; ``param_groups`` come from the checkpoint's config
with ``lr`` as the schedule gives it at the checkpoint's step, in the keys the installed
torch's Adam writes; a converted reference file gets its own groups back unchanged. The
written file loads with plain ``torch.load(weights_only=True)`` (``lr`` is a Python float).
"""
from __future__ import annotations

import argparse
import os
import re
import sys
from collections import OrderedDict
from pathlib import Path

import numpy as np

from fastcpu import checkpoint

BUFFER_SUFFIXES = ("running_mean", "running_var", "num_batches_tracked")
ADAM_KEYS = {"step", "exp_avg", "exp_avg_sq"}
TORCH_ADAM_DEFAULT_LR = 1e-3       # what the reference's wrapper leaves until its first update


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


# ----------------------------------------------------------------------------- reading

def numpy_safe_globals() -> list:
    """The numpy globals a reference checkpoint pickles (``numpy.float64`` lr values): the
    scalar constructor under its numpy 1.x and 2.x module names, and the dtypes. Nothing that
    runs code."""
    try:
        from numpy._core import multiarray
    except ImportError:                                     # numpy 1.x
        from numpy.core import multiarray
    scalar = multiarray.scalar
    dtypes = [type(np.dtype(t)) for t in (np.float64, np.float32, np.float16, np.int64,
                                          np.int32, np.int16, np.int8, np.uint8, np.bool_)]
    return [(scalar, "numpy.core.multiarray.scalar"),
            (scalar, "numpy._core.multiarray.scalar"), np.dtype, *dtypes]


def load_reference(src):
    """``torch.load`` of a reference checkpoint with only numpy's scalar/dtype globals allowed."""
    torch = _torch()
    try:
        with torch.serialization.safe_globals(numpy_safe_globals()):
            return torch.load(src, map_location="cpu", weights_only=True)
    except Exception as e:                        # torch raises many kinds; one line for all
        msg = " ".join(str(e).split())
        bad = re.search(r"Unsupported global: GLOBAL (\S+)", msg)
        if bad:
            raise ConvertError(f"{src}: refused: it pickles {bad.group(1)}, not only tensors "
                               f"and numpy scalars, and loading that could run code") from None
        msg = msg.split("WeightsUnpickler error: ")[-1]
        import zipfile
        if not zipfile.is_zipfile(src):
            msg = "not a file torch.save writes: no zip archive, and not its legacy format"
        raise ConvertError(f"{src}: cannot read as a PyTorch checkpoint ({msg[:300]})") from None


def _plain(x):
    """numpy scalars (the reference's lr) -> Python numbers; tuples -> lists (JSON)."""
    if isinstance(x, np.generic):
        return x.item()
    if isinstance(x, (list, tuple)):
        return [_plain(v) for v in x]
    if isinstance(x, dict):
        return {k: _plain(v) for k, v in x.items()}
    return x


# ----------------------------------------------------------------------------- the run config

def run_config(model_sd: dict, reference_config=None, config=None, log=print):
    """-> (Config or None, why-not). The config a converted reference checkpoint records: from
    ``--reference-config`` / ``--config``, or the LJSpeech defaults; then the speaker table and
    the vocabulary as the tensors have them. None when the tensors do not fit it."""
    from fastcpu.config import (Config, ConfigError, from_dict, from_reference, load_config,
                                to_dict)
    from fastcpu.startup import config_path
    try:
        if config is not None:
            data = to_dict(load_config(config_path(config)))
            origin = f"--config {config}"
        elif reference_config is not None:
            data, notes = from_reference(reference_config)
            for n in notes:
                log(f"note: {n}")
            origin = f"--reference-config {reference_config}"
        else:                        # this project's defaults are the reference's LJSpeech
            from fastcpu.config import REFERENCE_DATA_PATH
            data = to_dict(Config(name="LJSpeech"))
            data["data"]["path"] = REFERENCE_DATA_PATH
            origin = "the reference's LJSpeech config (no --reference-config given)"
        m = data.setdefault("model", {})
        emb = model_sd.get("encoder.src_word_emb.weight")
        if emb is not None:
            m["n_src_vocab"] = int(emb.shape[0])
        spk = model_sd.get("speaker_emb.weight")
        m["multi_speaker"] = spk is not None
        if spk is not None:
            m["n_speakers"] = int(spk.shape[0])
        ranges_from_stats = reference_config is not None and "pitch_range" in m
        for kind in ("pitch", "energy"):             # the bins the model was made with
            bins = model_sd.get(f"variance_adaptor.{kind}_bins")
            if not ranges_from_stats and bins is not None and len(bins) >= 2:
                m[f"{kind}_range"] = [float(bins[0]), float(bins[-1])]
        cfg = from_dict(Config, data, origin).validate()
    except ConfigError as e:
        raise ConvertError(str(e)) from None
    from fastcpu.models import FastSpeech2
    want = {k: tuple(v.shape) for k, v in FastSpeech2(cfg.model).state_dict().items()}
    have = {k: tuple(v.shape) for k, v in model_sd.items()}
    for k in list(have) + list(want):
        if have.get(k) != want.get(k):
            what = (f"{k}: {have[k]} in the file" if k in have else f"{k} missing in the file")
            return None, (f"the weights do not fit {origin} ({what}, "
                          f"{want[k] if k in want else 'no such key'} there)")
    return cfg, origin


def fresh_state(cfg, step: int) -> dict:
    """The counters of a run resumed from a converted file: ``step`` updates done, the data
    order at the start of an epoch, the random streams seeded from the config's seed."""
    from fastcpu import nn
    saved = nn.init.get_state()
    try:
        nn.init.manual_seed(cfg.train.seed)
        rng = nn.init.get_state()
    finally:
        nn.init.set_state(saved)
    return checkpoint.TrainState(step=step, sampler={"epoch": 0, "pos": 0,
                                                     "seed": cfg.train.seed},
                                 rng=rng).to_meta()


# ----------------------------------------------------------------------------- both ways

def reference_to_fastcpu(src, dst, reference_config=None, config=None, log=print) -> Path:
    src = Path(src)
    ck = load_reference(src)
    if isinstance(ck, dict) and "generator" in ck and "model" not in ck:
        return _generator(ck, src, dst, log)
    if not isinstance(ck, dict) or "model" not in ck:
        raise ConvertError(f"{src}: expected a dict with a 'model' entry (reference format) or "
                           f"a 'generator' entry (HiFi-GAN), got "
                           f"{list(ck) if isinstance(ck, dict) else type(ck).__name__}")
    model_sd = ck["model"]
    keys = list(model_sd)
    if keys and all(k.startswith("module.") for k in keys):
        log(f"note: {src}: keys carry nn.DataParallel's 'module.' prefix; stripped")
        model_sd = OrderedDict((k[len("module."):], v) for k, v in model_sd.items())
        keys = list(model_sd)
    tensors = {f"model/{k}": model_sd[k].detach().cpu().numpy() for k in keys}
    meta = {"source": "reference", "source_file": src.name, "model_keys": keys}
    t = 0
    opt = ck.get("optimizer")
    if opt is not None:
        pkeys = param_keys(keys)
        groups = opt.get("param_groups", [])
        n_idx = sum(len(g["params"]) for g in groups)
        if n_idx != len(pkeys):
            raise ConvertError(f"{src}: optimizer has {n_idx} parameters, the model "
                               f"{len(pkeys)}; not the reference's Adam over model.parameters()")
        index = [i for g in groups for i in g["params"]]
        steps, step_kind = set(), None
        for pos, i in enumerate(index):
            st = opt["state"].get(i)
            if st is None:
                continue                                  # frozen: no Adam state
            extra = set(st) - ADAM_KEYS
            if extra:
                raise ConvertError(f"{src}: optimizer state has {sorted(extra)}; only plain Adam "
                                   f"(no amsgrad) converts")
            name = pkeys[pos]
            for k in ("exp_avg", "exp_avg_sq"):
                if tuple(st[k].shape) != tuple(model_sd[name].shape):
                    raise ConvertError(f"{src}: Adam state {i} ({k} {tuple(st[k].shape)}) does "
                                       f"not fit parameter {i}, {name} "
                                       f"{tuple(model_sd[name].shape)}")
                tensors[f"optim/{k}/{name}"] = st[k].cpu().numpy()
            step = st["step"]
            step_kind = ("tensor" if hasattr(step, "cpu") else type(step).__name__)
            tensors[f"optim/step/{name}"] = np.asarray(step.cpu().numpy() if hasattr(step, "cpu")
                                                       else step)
            steps.add(float(tensors[f"optim/step/{name}"]))
        t = int(max(steps)) if steps else 0
        meta["param_groups"] = _plain(groups)
        meta["reference_types"] = {"betas": [type(g.get("betas")).__name__ for g in groups],
                                   "step": step_kind}
        meta["optimizer_index"] = index
        meta["optimizer_step"] = t
    elif (digits := src.name.split(".")[0]).isdigit():
        t = int(digits)                                   # the reference's {step}.pth.tar
    cfg, origin = run_config(model_sd, reference_config, config, log)
    if cfg is None:
        if reference_config is not None or config is not None:
            raise ConvertError(f"{src}: {origin}")
        log(f"note: {origin}; written without a run config: usable with --init-from, and "
            f"resumable once converted with --reference-config DIR or --config FILE")
    else:
        from fastcpu.config import to_dict
        meta.update({"kind": "converted", "config": to_dict(cfg), "state": fresh_state(cfg, t),
                     "precision": "fp32", "optimizer_step": t})
        log(f"run config: {origin}; resumes at step {t}")
    return checkpoint.save(dst, tensors, meta)


def _generator(ck, src, dst, log=print) -> Path:
    """A reference HiFi-GAN generator file -> plain-weight safetensors (see the module doc)."""
    from fastcpu.models import hifigan
    if not isinstance(ck["generator"], dict):
        raise ConvertError(f"{src}: 'generator' is not a state_dict")
    sd = OrderedDict((k[len("module."):] if k.startswith("module.") else k,
                      v.detach().cpu().numpy() if hasattr(v, "detach") else np.asarray(v))
                     for k, v in ck["generator"].items())
    try:
        w = hifigan.fold_weight_norm(sd)
        gen = hifigan.Generator(w, source=str(src))
    except hifigan.VocoderError as e:
        raise ConvertError(str(e)) from None
    folded = sum(k.endswith(".weight_v") for k in sd)
    dst = Path(dst)
    tmp = dst.with_name(dst.name + ".tmp")
    try:
        gen.save(tmp, {"source": Path(src).name, "weight_norm_folded": str(folded)})
        tmp.replace(dst)
    finally:
        tmp.unlink(missing_ok=True)
    log(f"HiFi-GAN V1 generator: {hifigan.n_params():,} parameters"
        + (f", weight norm folded in {folded} convs" if folded else ""))
    return dst


def _reference_order(tensors, meta, src):
    """The state_dict order of the reference's model for these tensors."""
    names = {k[6:] for k in tensors if k.startswith("model/")}
    keys = meta.get("model_keys")
    if not keys and "config" in meta:
        from fastcpu.config import Config, ConfigError, from_dict
        from fastcpu.models import FastSpeech2
        try:
            cfg = from_dict(Config, meta["config"], f"{src} config")
        except ConfigError as e:
            raise ConvertError(str(e)) from None
        keys = list(FastSpeech2(cfg.model).state_dict())
    if not keys:
        raise ConvertError(f"{src}: no run config and no recorded key order: cannot give the "
                           f"reference's parameter order (Adam's state is positional there)")
    if set(keys) != names:
        extra = sorted(names - set(keys)) or sorted(set(keys) - names)
        raise ConvertError(f"{src}: its tensors are not the model of its config (e.g. "
                           f"{extra[0]})")
    return list(keys)


def _param_groups(torch, meta, n_params, log):
    """``param_groups`` for the reference's Adam: recorded ones back unchanged, else from the
    checkpoint's config at its step, in the keys this torch's Adam writes."""
    groups = meta.get("param_groups")
    if groups:
        kinds = meta.get("reference_types", {}).get("betas", [])
        for g, kind in zip(groups, kinds + ["tuple"] * len(groups)):
            if isinstance(g.get("betas"), list) and kind == "tuple":
                g["betas"] = tuple(g["betas"])
        return groups
    from fastcpu.config import Config, ConfigError, from_dict
    from fastcpu.optim import Schedule
    if "config" not in meta:
        raise ConvertError("no run config in the checkpoint to give the optimizer's settings")
    try:
        cfg = from_dict(Config, meta["config"], "checkpoint config")
    except ConfigError as e:
        raise ConvertError(str(e)) from None
    o = cfg.optimizer
    t = int(meta.get("optimizer_step", 0))
    lr = float(Schedule(o, cfg.model.encoder_hidden)(t)) if t > 0 else TORCH_ADAM_DEFAULT_LR
    if o.schedule != "noam" or o.lr is not None:
        log(f"note: this run's schedule is {o.schedule!r}"
            f"{f' with lr {o.lr}' if o.lr is not None else ''}; the reference's ScheduledOptim "
            f"is Noam with init_lr = encoder_hidden ** -0.5 and sets its own lr from the next "
            f"step on")
    probe = torch.nn.Parameter(torch.zeros(1))
    group = torch.optim.Adam([probe], lr=lr, betas=tuple(o.betas), eps=o.eps,
                             weight_decay=o.weight_decay).state_dict()["param_groups"][0]
    group["params"] = list(range(n_params))
    return [group]


def fastcpu_to_reference(src, dst, log=print) -> Path:
    torch = _torch()
    src = Path(src)
    tensors, meta = checkpoint.load(src)
    keys = _reference_order(tensors, meta, src)
    model_sd = OrderedDict((k, torch.from_numpy(np.array(tensors[f"model/{k}"]))) for k in keys)
    out = {"model": model_sd}
    pkeys = param_keys(keys)
    if any(k.startswith("optim/") for k in tensors):
        groups = _param_groups(torch, meta, len(pkeys), log)
        index = meta.get("optimizer_index") or [i for g in groups for i in g["params"]]
        if len(index) != len(pkeys):
            raise ConvertError(f"{src}: {len(index)} optimizer indices for {len(pkeys)} "
                               f"parameters")
        step_kind = meta.get("reference_types", {}).get("step", "tensor")
        t = float(meta.get("optimizer_step", 0))
        state, frozen = {}, []
        for pos, i in enumerate(index):
            name = pkeys[pos]
            if f"optim/exp_avg/{name}" not in tensors:
                if not name.endswith(("position_enc", "_bins")):
                    frozen.append(name)                   # --freeze: not trained here
                continue
            step = tensors.get(f"optim/step/{name}")
            if step is None:
                step = torch.tensor(t, dtype=torch.float32)
            elif step_kind == "tensor":
                step = torch.from_numpy(np.array(step))
            else:                                         # torch < 1.12 kept a Python number
                step = np.asarray(step).item()
            state[i] = {"step": step,
                        "exp_avg": torch.from_numpy(np.array(tensors[f"optim/exp_avg/{name}"])),
                        "exp_avg_sq": torch.from_numpy(
                            np.array(tensors[f"optim/exp_avg_sq/{name}"]))}
        if frozen:
            log(f"note: {len(frozen)} parameter(s) were frozen in this run (e.g. {frozen[0]}) "
                f"and have no Adam state; PyTorch's Adam starts theirs at zero")
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
    from fastcpu.cli import add_version
    add_version(ap)
    g = ap.add_mutually_exclusive_group()
    g.add_argument("--reference-config", metavar="DIR",
                   help="reference -> fastcpu: the reference's config/<Dataset>/ directory "
                        "(preprocess.yaml, model.yaml, train.yaml) the run was trained with")
    g.add_argument("--config", metavar="FILE",
                   help="reference -> fastcpu: a fastcpu config describing the model instead")
    args = ap.parse_args(argv)
    src, dst = Path(args.src), Path(args.dst)
    try:
        if not src.is_file():
            raise ConvertError(f"{src}: no such file")
        kinds = (_kind(src), _kind(dst))
        if dst.exists() and dst.resolve() == src.resolve():
            raise ConvertError(f"{dst}: the destination is the source file; give another path")
        if kinds == ("reference", "fastcpu"):
            out = reference_to_fastcpu(src, dst, args.reference_config, args.config)
        elif kinds == ("fastcpu", "reference"):
            if args.reference_config or args.config:
                raise ConvertError("--reference-config / --config are for reference -> fastcpu; "
                                   "a fastcpu checkpoint carries its own config")
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
    from fastcpu.cli import entry
    sys.exit(entry(main))
