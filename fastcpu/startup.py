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
    "--init-from": ("train.init_from", str, "fine-tune: start a new run from the weights of this "
                                             "checkpoint (fastcpu, weights-only or converted "
                                             "reference file); optimizer, schedule and data "
                                             "order start fresh"),
    "--reinit": ("train.reinit", lambda s: [x for x in s.split(",") if x],
                 "with --init-from: module names (comma-separated, e.g. speaker_emb) kept "
                 "freshly initialised"),
    "--freeze": ("train.freeze", lambda s: [x for x in s.split(",") if x],
                 "module names (comma-separated, e.g. encoder) whose parameters are not trained"),
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


def _seconds(text):
    v = float(text)
    if not v >= 0:
        raise argparse.ArgumentTypeError(f"must be >= 0, got {text}")
    return v


def build_parser(doc: str) -> argparse.ArgumentParser:
    """The parser of ``python -m fastcpu.train``; ``doc`` (its module docstring) gives the
    description and the epilog."""
    ap = _Parser(prog="python -m fastcpu.train", description=doc.split("\n\n")[0],
                 epilog=doc.split("\n\n", 2)[2] + "\n" + config_keys_help(),
                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--config", help="YAML config file, or the name of a bundled one "
                                     "(--list-configs); default: demo")
    ap.add_argument("--list-configs", action="store_true",
                    help="list the bundled configs and what each is for, then exit")
    from fastcpu.cli import add_version
    add_version(ap)
    ap.add_argument("--set", action="append", default=[], metavar="SECTION.KEY=VALUE",
                    help="override any config value (repeatable), e.g. --set optimizer.lr=5e-5")
    for flag, (key, tp, hlp) in FLAGS.items():
        ap.add_argument(flag, type=tp, default=None, help=f"{hlp} [{key}]")
    ap.add_argument("--resume-from", metavar="FILE|DIR",
                    help="checkpoint file, or a run/checkpoint directory (newest good one)")
    ap.add_argument("--resume", choices=["auto"],
                    help="auto: continue the run already in OUTPUT_DIR/NAME from its newest "
                         "good checkpoint (start it if there is none)")
    ap.add_argument("--detach", action="store_true",
                    help="check config, data, disk, memory and the run directory, then train in "
                         "the background (console in OUTPUT_DIR/NAME/train.log, pid in "
                         "train.pid) and print how to follow, watch and stop it")
    ap.add_argument("--overwrite", action="store_true",
                    help="start afresh where a run already is (the old one is moved to "
                         "NAME.old-<time>)")
    ap.add_argument("--dry-run", action="store_true",
                    help="validate config and data, print the plan, do not train")
    ap.add_argument("--debug-fault", help=argparse.SUPPRESS)      # tests: exception@K, nan@K[:M]
    ap.add_argument("--debug-step-delay", type=_seconds, default=0.0, help=argparse.SUPPRESS)
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
        path, tensors, meta = checkpoint.resolve(target, log)
    except checkpoint.CheckpointError as e:
        raise UsageError(str(e)) from None
    if meta.get("weights_only"):
        raise UsageError(f"{path}: holds the weights only (a best checkpoint, unless "
                         f"train.best_with_optimizer is on); resume from a step, epoch or final "
                         f"checkpoint of the run, or fine-tune from this one with --init-from")
    if "config" not in meta or "state" not in meta:
        raise UsageError(f"{path}: has weights but no training state to resume (a reference "
                         f"checkpoint converted without its config?); fine-tune from it with "
                         f"--init-from {path}, or convert it with --reference-config DIR")
    return path, tensors, meta


def config_path(name):
    """--config value -> file: a path as given, or the name of a bundled config ("stable")."""
    from fastcpu.config import bundled_configs, config_dir
    bundled = bundled_configs()
    if name is None:
        if "demo" not in bundled:
            raise UsageError(f"no --config given and the default demo.yaml is missing from "
                             f"{config_dir()} (a broken install?); pass --config FILE")
        return bundled["demo"]
    p = Path(name)
    if not p.exists() and p.suffix == "" and name in bundled:
        return bundled[name]
    if not p.exists() and p.suffix == "" and len(p.parts) == 1:
        raise UsageError(f"--config {name}: no such file, and not a bundled config (those are: "
                         f"{', '.join(bundled) or 'none'}; --list-configs describes them)")
    return p


def list_configs() -> int:
    from fastcpu.config import bundled_configs, config_dir, config_summary
    configs = bundled_configs()
    print(f"bundled configs ({config_dir()}); use --config NAME:")
    width = max((len(n) for n in configs), default=0)
    for name, path in configs.items():
        print(f"  {name:<{width}}  {config_summary(path)}")
    return 0


def load_run_config(args, resume_meta=None):
    from fastcpu.config import ConfigError, from_dict, load_config, apply_override, \
        parse_override, Config
    overrides = _override_list(args)
    try:
        if resume_meta is not None:
            data = json.loads(json.dumps(resume_meta["config"]))
            for text in overrides:
                keys, value = parse_override(text)
                apply_override(data, keys, value)
            cfg = from_dict(Config, data, "checkpoint config").validate()
            _check_resume_changes(resume_meta, cfg)
            if args.config is not None:
                _same_as_file(cfg, load_config(config_path(args.config), overrides),
                              args.config)
            return cfg
        return load_config(config_path(args.config), overrides)
    except ConfigError as e:
        raise UsageError(str(e)) from None


# values that define the data order: changing them on resume would reinterpret the saved
# sampler position (utterances skipped or repeated) unless it sits at an epoch boundary
SAMPLER_KEYS = (("train", "batch_size"), ("train", "group_size"),
                ("optimizer", "grad_acc_step"))


DATA_FILLED = {("model", "pitch_range"), ("model", "energy_range"), ("model", "n_speakers")}


def _same_as_file(cfg, file_cfg, name):
    """--config with --resume-from: fine when it says what the checkpoint's config says."""
    from fastcpu.config import to_dict
    a, b = to_dict(cfg), to_dict(file_cfg)
    for sec in a:
        items = a[sec].items() if isinstance(a[sec], dict) else [(None, a[sec])]
        for key, v in items:
            w = b[sec] if key is None else b[sec][key]
            if v != w and (sec, key) not in DATA_FILLED:
                where = sec if key is None else f"{sec}.{key}"
                raise UsageError(f"--config {name}: {where} is {w!r} there but {v!r} in the "
                                 f"checkpoint; a resumed run keeps its checkpoint's config "
                                 f"(change values with --set or the flags)")


def _check_resume_changes(meta, cfg):
    old = meta["config"]
    state = meta.get("state", {})
    if cfg.train.seed != old["train"]["seed"]:
        raise UsageError(f"train.seed: the checkpoint's run has seed {old['train']['seed']} "
                         f"(its data order and RNG states follow from it); a resumed run keeps "
                         f"it — start a new run for another seed")
    at_boundary = state.get("sampler", {}).get("pos", 0) == 0
    from fastcpu import distributed
    ranks, n = int(meta.get("ranks", 1)), distributed.world().size
    for sec, key in SAMPLER_KEYS:
        was, now = old[sec][key], getattr(getattr(cfg, sec), key)
        if key == "batch_size" and (ranks > 1 or n > 1):    # the global batch is what counts
            if was * ranks != now * n and not at_boundary:
                fix = (f"resume with --batch-size {was * ranks // n}" if was * ranks % n == 0
                       else "resume from a checkpoint at an epoch end")
                raise UsageError(
                    f"train.batch_size: the checkpoint's global batch is {ranks} rank(s) x "
                    f"{was} = {was * ranks}, this run's {n} x {now} = {n * now}; the saved data "
                    f"position cannot be mapped to it mid-epoch — {fix}")
            continue
        if was != now and not at_boundary:
            raise UsageError(f"{sec}.{key}: {was} in the checkpoint, {now} asked; the saved "
                             f"data position (epoch {state['sampler']['epoch']}, batch "
                             f"{state['sampler']['pos']}) cannot be mapped to it mid-epoch — "
                             f"resume with {was}, or from a checkpoint at an epoch end")


def open_data(cfg):
    from fastcpu.data import BUNDLED_CORPUS, DataError, PreprocessedCorpus
    root = Path(cfg.data.path) if cfg.data.path else BUNDLED_CORPUS
    try:
        train = PreprocessedCorpus(root, cfg.data.train_file)
        val = PreprocessedCorpus(root, cfg.data.val_file)
    except DataError as e:
        raise UsageError(str(e)) from None
    if cfg.model.n_mel_channels != 80:
        raise UsageError(f"model.n_mel_channels: {cfg.model.n_mel_channels}, but the corpus "
                         f"{root} has 80-bin mels (the reference's features)")
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


# ------------------------------------------------------------------------------ run ownership

LOCK = ".lock"


class RunLock:
    """One owner per run directory: ``<run>/.lock`` holds the owner's pid and host for the
    life of the run. A lock of a process that no longer runs (same host) is taken over."""

    def __init__(self, run_dir: Path, log=print):
        self.path, self.log, self.held = Path(run_dir) / LOCK, log, False

    def acquire(self) -> "RunLock":
        import os
        import socket
        import time
        me = {"pid": os.getpid(), "host": socket.gethostname(), "started": time.time()}
        self.created = not self.path.parent.exists()      # removed again if left empty
        for _ in range(2):
            try:
                self.path.parent.mkdir(parents=True, exist_ok=True)
                fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:
                holder = self._holder()
                if holder and (holder.get("host") != me["host"] or _alive(holder.get("pid"))):
                    raise UsageError(f"{self.path.parent} is in use by pid {holder.get('pid')} "
                                     f"on {holder.get('host')} (lock {self.path}); stop that "
                                     f"run or choose another --name") from None
                self.log(f"note: taking over the stale lock of pid "
                         f"{(holder or {}).get('pid', '?')} (no longer running) on "
                         f"{self.path.parent}")
                self.path.unlink(missing_ok=True)
                continue
            except OSError as e:
                raise UsageError(f"{self.path.parent}: cannot create the run directory "
                                 f"({e.strerror or e})") from None
            with os.fdopen(fd, "w") as f:
                json.dump(me, f)
            self.held = True
            return self
        raise UsageError(f"{self.path}: could not take the run lock")

    def _holder(self):
        try:
            return json.loads(self.path.read_text())
        except (OSError, ValueError):
            return None

    def release(self) -> None:
        if self.held:
            self.path.unlink(missing_ok=True)
            self.held = False
            if self.created and not any(self.path.parent.iterdir()):
                self.path.parent.rmdir()          # a start-up error: leave nothing behind


def _alive(pid) -> bool:
    import os
    try:
        os.kill(int(pid), 0)
    except (ProcessLookupError, ValueError, TypeError):
        return False
    except PermissionError:
        return True
    return True


def claim_run_dir(run_dir: Path, args, log=print, check_only=False):
    """What to do with ``run_dir`` before anything is written there: -> the resume target
    (``--resume auto`` with a checkpoint there), or None. A directory that already holds a run
    is refused unless the command resumes it or ``--overwrite`` archives it."""
    import time
    from fastcpu import checkpoint
    run_dir = Path(run_dir)
    existing = run_dir.is_dir() and ((run_dir / "metrics.jsonl").exists() or
                                     any((run_dir / "checkpoints").glob("*.safetensors")))
    if not existing:
        return None
    if args.overwrite and check_only:
        return None
    if args.overwrite:
        dest = run_dir.with_name(f"{run_dir.name}.old-{time.strftime('%Y%m%d-%H%M%S')}")
        dest.mkdir()
        for p in run_dir.iterdir():                  # all but our own lock
            if p.name != LOCK:
                p.rename(dest / p.name)
        log(f"note: --overwrite: the previous run in {run_dir} was moved to {dest}")
        return None
    resuming_here = args.resume_from and Path(args.resume_from).resolve().is_relative_to(
        run_dir.resolve())
    if resuming_here:
        return None
    if args.resume == "auto":     # continue from its newest checkpoint; none yet: start it
        return str(run_dir) if checkpoint.find(run_dir, resumable=True) else None
    newest = next((p for p in checkpoint.find(run_dir, resumable=True)), None)
    what = "no checkpoint"
    if newest is not None:
        try:
            step = checkpoint.peek_meta(newest)["state"]["step"]
            what = f"newest checkpoint {newest} at step {step}"
        except (OSError, ValueError, KeyError):
            what = f"newest checkpoint {newest}"
    raise UsageError(f"{run_dir} already holds a run ({what}); continue it with --resume auto, "
                     f"or start afresh with --overwrite (the old run is moved aside)")


def dry_run(cfg, root, train, val, run_dir, resume) -> int:
    """``--dry-run``: every value of every utterance checked now, the plan printed."""
    from fastcpu import reporting
    from fastcpu.data import DataError
    from fastcpu.models import FastSpeech2
    try:
        train.validate()
        val.validate()
    except DataError as e:
        raise UsageError(str(e)) from None
    n_params = FastSpeech2(cfg.model).num_parameters(trainable_only=True)
    print(reporting.banner(cfg, root, train, val, n_params, reporting.memory_plan(
        cfg, n_params, train), run_dir, resume and resume[0]))
    print(f"dry run: config and data are valid ({len(train) + len(val)} utterances checked); "
          f"nothing trained")
    return 0


def fine_tune(model, c, fresh: bool, log=print) -> None:
    """``train.init_from`` (a fresh run only: a resumed one has its own weights),
    ``train.reinit`` and ``train.freeze`` applied to a newly built model."""
    for what in ("reinit", "freeze"):
        check_module_names(model, getattr(c, what), what)
    if c.init_from and fresh:
        init_weights(model, c.init_from, c.reinit, log)
    freeze(model, c.freeze)


def init_weights(model, path, reinit=(), log=print) -> int:
    """``--init-from``: copy the weights of checkpoint ``path`` into ``model`` (fresh otherwise),
    except the modules named in ``reinit``; every other key must be there with its shape.
    -> the number of tensors copied."""
    from fastcpu import checkpoint
    try:
        tensors, _ = checkpoint.load(path)
    except checkpoint.CheckpointError as e:
        tensors = _plain_safetensors(path)          # a weights-only file of another tool
        if tensors is None:
            raise UsageError(f"--init-from: {e}") from None
    weights = {k[6:]: v for k, v in tensors.items() if k.startswith("model/")} or tensors
    mine = model.state_dict()
    keep = [k for k in mine if _under(k, reinit)]
    missing = [k for k in mine if k not in weights and k not in keep]
    shapes = [f"{k} {tuple(weights[k].shape)} (this model {tuple(mine[k].shape)})"
              for k in mine if k in weights and k not in keep
              and tuple(weights[k].shape) != mine[k].shape]
    extra = [k for k in weights if k not in mine]
    if missing or shapes or extra:
        what = "; ".join(x for x in (
            f"missing {', '.join(missing[:4])}" + (" ..." if len(missing) > 4 else "")
            if missing else "", f"other shapes: {', '.join(shapes[:3])}" if shapes else "",
            f"not in this model: {', '.join(extra[:4])}" if extra else "") if x)
        raise UsageError(f"--init-from {path}: does not fit this model ({what}); name modules to "
                         f"start afresh with --reinit")
    model.load_state_dict({k: v for k, v in weights.items() if k not in keep}, strict=False)
    if keep:
        log(f"note: --init-from: {len(keep)} tensor(s) of {', '.join(reinit)} kept freshly "
            f"initialised")
    return len(mine) - len(keep)


def _plain_safetensors(path):
    try:
        from safetensors.numpy import load_file
        return load_file(str(path))
    except Exception:                            # not a safetensors file either
        return None


def _under(name, modules) -> bool:
    return any(name == m or name.startswith(m + ".") for m in modules)


def check_module_names(model, names, what):
    """Every name must be a module (or parameter) of the model."""
    keys = list(model.state_dict())
    for m in names:
        if not any(_under(k, [m]) for k in keys):
            top = sorted({k.split(".")[0] for k in keys})
            raise UsageError(f"train.{what}: no module {m!r} in this model (top level: "
                             f"{', '.join(top)})")


def freeze(model, names) -> None:
    """Parameters under ``names`` stop being trained (they stay out of the flat buffer)."""
    for n, p in model.named_parameters():
        if _under(n, names):
            p.requires_grad = False


def detach(args, argv, cfg, root, train, run_dir) -> int:
    """``--detach``: pre-flight checks, then the same command in a new session with its console
    in ``train.log``; prints how to follow, watch and stop it."""
    import os
    import shutil
    import subprocess
    from fastcpu import reporting
    from fastcpu.models import FastSpeech2
    holder = RunLock(run_dir)._holder() if (run_dir / LOCK).exists() else None
    if holder and _alive(holder.get("pid")):
        raise UsageError(f"{run_dir} is in use by pid {holder.get('pid')} on "
                         f"{holder.get('host')}; stop that run or choose another --name")
    claim_run_dir(run_dir, args, check_only=True)
    n = FastSpeech2(cfg.model).num_parameters()
    c = cfg.train
    kept = c.keep_last if c.keep_last else c.total_step // max(c.save_step, 1)
    need = (kept + 2) * 12 * n                   # weights + two Adam moments, fp32
    base = next(p for p in [run_dir, *run_dir.parents] if p.exists())
    free = shutil.disk_usage(base).free
    if free < need:
        raise UsageError(f"{base}: {reporting.gib(free)} free, the run's checkpoints need about "
                         f"{reporting.gib(need)} (train.keep_last={c.keep_last} + 2)")
    plan = reporting.memory_plan(cfg, n, train)
    total = plan["weights"] + plan["grads"] + plan["adam"] + plan["activations"]
    try:
        import psutil
        avail = psutil.virtual_memory().available
    except ImportError:
        avail = None
    if avail is not None and total > avail:
        raise UsageError(f"the memory plan ({reporting.gib(total)}) exceeds the available "
                         f"memory ({reporting.gib(avail)}); lower train.batch_size")
    run_dir.mkdir(parents=True, exist_ok=True)
    log = open(run_dir / "train.log", "a")
    child = subprocess.Popen([sys.executable, "-m", "fastcpu.train",
                              *[a for a in argv if a != "--detach"]],
                             stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                             start_new_session=True, env={**os.environ, "FASTCPU_DETACHED": "1"})
    (run_dir / "train.pid").write_text(f"{child.pid}\n")
    print(f"training in the background: pid {child.pid}, run {run_dir}\n"
          f"  follow: tail -f {run_dir / 'train.log'}\n"
          f"  watch:  python -m fastcpu.monitor {run_dir}\n"
          f"  stop:   kill -TERM {child.pid}   (saves the state; resume with --resume auto)")
    return 0


def check_data(train, val, log=print) -> None:
    """Every value of every utterance before step 1 (cached by file sizes and mtimes, so a
    restart does not re-read an unchanged corpus); a bad one is one line, exit 2."""
    from fastcpu.data import DataError
    try:
        if train.validate(cache=True) | val.validate(cache=True) and len(train) > 2000:
            log(f"checked the values of {len(train) + len(val)} utterances (cached for the next "
                f"start)")
    except DataError as e:
        raise UsageError(str(e)) from None
