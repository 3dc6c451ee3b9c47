"""Start-up of a training run: the command line (flags, ``--set`` overrides), the config (a
file, a bundled name, or a checkpoint's own), the data, and the checkpoint to resume. Every
problem is one line for the user: ``UsageError``, exit status 2 (``fastcpu.train.main``).
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

EXIT_USAGE = 2
REPO_CONFIGS = Path(__file__).resolve().parent.parent / "configs"
TERMS = ("mel", "postnet_mel", "pitch", "energy", "duration")
MEL_TERMS = ("mel", "postnet_mel")             # means over frames; the others over phonemes

# flag -> (config key, type, help)
FLAGS = {
    "--output-dir": ("train.output_dir", str, "runs are written to OUTPUT_DIR/<name>"),
    "--name": ("name", str, "run name (directory under the output dir)"),
    "--data-dir": ("data.path", str, "preprocessed corpus (reference layout); default: the "
                                      "bundled espeak-ng corpus"),
    "--batch-size": ("train.batch_size", int, "utterances per micro-batch"),
    "--learning-rate": ("optimizer.lr", float, "peak learning rate (Noam: initial scale)"),
    "--warmup-steps": ("optimizer.warm_up_step", int, "learning-rate warm-up steps"),
    "--accumulation-steps": ("optimizer.grad_acc_step", int,
                             "micro-batches per optimizer step (exactly the large batch)"),
    "--max-grad-norm": ("optimizer.grad_clip_thresh", float, "global-norm clipping threshold"),
    "--num-epochs": ("train.num_epochs", int, "stop after this many epochs (0: no limit)"),
    "--max-steps": ("train.total_step", int, "stop after this many optimizer steps"),
    "--threads": ("train.threads", int, "threads for BLAS and kernels (0: all cores)"),
    "--seed": ("train.seed", int, "seed for initialisation, dropout and data order"),
    "--profile-steps": ("train.profile_steps", int,
                        "profile N steps: per-op table + Chrome/Perfetto trace"),
    "--precision": ("train.precision", str, "GEMM precision: fp32 or bf16 (bf16 operands, fp32 "
                                            "accumulation and master weights; needs AVX512-BF16 "
                                            "or AMX)"),
}


class UsageError(Exception):
    """Bad command line, config or data: one line for the user, exit status 2."""


class _Parser(argparse.ArgumentParser):
    def error(self, message):
        print(f"{self.prog}: error: {message}", file=sys.stderr)
        sys.exit(EXIT_USAGE)


def config_keys_help() -> str:
    """Every config key with its default, from the dataclasses (for --help)."""
    import dataclasses
    import textwrap
    from fastcpu.config import Config
    lines = ["config keys (YAML sections, or --set section.key=value), with defaults:"]
    for f in dataclasses.fields(Config):
        v = getattr(Config(), f.name)
        if dataclasses.is_dataclass(v):
            items = ", ".join(f"{g.name}={getattr(v, g.name)!r}" for g in dataclasses.fields(v))
            lines += textwrap.wrap(f"{f.name}: {items}", 96, initial_indent="  ",
                                   subsequent_indent="      ")
        else:
            lines.append(f"  {f.name}={v!r}")
    return "\n".join(lines)


def build_parser(doc: str) -> argparse.ArgumentParser:
    """The parser of ``python -m fastcpu.train``; ``doc`` (its module docstring) gives the
    description and the epilog."""
    ap = _Parser(prog="python -m fastcpu.train", description=doc.split("\n\n")[0],
                 epilog=doc.split("\n\n", 2)[2] + "\n" + config_keys_help(),
                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--config", help="YAML config file, or the name of one in configs/ "
                                     "(ljspeech, demo, stable, tiny); default: demo")
    ap.add_argument("--set", action="append", default=[], metavar="SECTION.KEY=VALUE",
                    help="override any config value (repeatable), e.g. --set optimizer.lr=5e-5")
    for flag, (key, tp, hlp) in FLAGS.items():
        ap.add_argument(flag, type=tp, default=None, help=f"{hlp} [{key}]")
    ap.add_argument("--resume-from", metavar="FILE|DIR",
                    help="checkpoint file, or a run/checkpoint directory (newest good one)")
    ap.add_argument("--dry-run", action="store_true",
                    help="validate config and data, print the plan, do not train")
    ap.add_argument("--debug-fault", help=argparse.SUPPRESS)      # tests: exception@K, nan@K[:M]
    ap.add_argument("--debug-step-delay", type=float, default=0.0, help=argparse.SUPPRESS)
    return ap


# ------------------------------------------------------------------------------ start-up


def _override_list(args) -> list:
    out = list(args.set)
    for flag, (key, _, _) in FLAGS.items():
        v = getattr(args, flag[2:].replace("-", "_"))
        if v is not None:
            out.append(f"{key}={json.dumps(v)}")
    return out


def resolve_resume(target: str, log=print):
    """-> (path, tensors, meta) of the checkpoint to resume from (``checkpoint.resolve``)."""
    from fastcpu import checkpoint
    try:
        return checkpoint.resolve(target, log)
    except checkpoint.CheckpointError as e:
        raise UsageError(str(e)) from None


def config_path(name):
    """--config value -> file: a path as given, or a bare name ("stable") from configs/."""
    if name is None:
        p = REPO_CONFIGS / "demo.yaml"
        if not p.is_file():
            raise UsageError(f"no --config given and the default {p} is missing (install from a "
                             f"source checkout with `pip install -e .`, or pass --config FILE)")
        return p
    p = Path(name)
    if not p.exists() and p.suffix == "" and (REPO_CONFIGS / f"{name}.yaml").is_file():
        return REPO_CONFIGS / f"{name}.yaml"
    return p


def load_run_config(args, resume_meta=None):
    from fastcpu.config import ConfigError, from_dict, load_config, apply_override, \
        parse_override, Config
    overrides = _override_list(args)
    try:
        if resume_meta is not None:
            data = resume_meta["config"]
            for text in overrides:
                keys, value = parse_override(text)
                apply_override(data, keys, value)
            return from_dict(Config, data, "checkpoint config").validate()
        return load_config(config_path(args.config), overrides)
    except ConfigError as e:
        raise UsageError(str(e)) from None


def open_data(cfg):
    from fastcpu.data import BUNDLED_CORPUS, DataError, PreprocessedCorpus
    root = Path(cfg.data.path) if cfg.data.path else BUNDLED_CORPUS
    try:
        train = PreprocessedCorpus(root, cfg.data.train_file)
        val = PreprocessedCorpus(root, cfg.data.val_file)
    except DataError as e:
        raise UsageError(str(e)) from None
    window = cfg.train.batch_size * cfg.optimizer.grad_acc_step
    if cfg.train.batch_size > len(train):
        raise UsageError(f"train.batch_size={cfg.train.batch_size} is larger than the "
                         f"{len(train)} training utterances of {root}")
    if window > len(train):
        raise UsageError(f"an accumulation window of {cfg.optimizer.grad_acc_step} x "
                         f"{cfg.train.batch_size} = {window} utterances exceeds the "
                         f"{len(train)} training utterances of {root}")
    # the reference bins pitch/energy over the corpus' normalised range (stats.json)
    cfg.model.pitch_range = [float(x) for x in train.stats["pitch"][:2]]
    cfg.model.energy_range = [float(x) for x in train.stats["energy"][:2]]
    if cfg.model.multi_speaker:
        cfg.model.n_speakers = max(cfg.model.n_speakers, len(train.speakers))
    return root, train, val
