"""Train FastSpeech2 on the CPU.

    python -m fastcpu.train                                   # configs/demo.yaml, bundled corpus
    python -m fastcpu.train --config configs/ljspeech.yaml --data-dir PREPROCESSED_DIR
    python -m fastcpu.train --resume-from runs/demo            # newest good checkpoint there

The run lives in ``<output_dir>/<name>/``: ``metrics.jsonl`` (one JSON object per step,
validation, checkpoint and event), ``tb/`` (TensorBoard: scalars, mel images, Griffin-Lim audio
of validation samples), ``samples/`` (the same as .png/.wav), ``checkpoints/`` and
``config.yaml`` (the resolved config). Every config value can be overridden with
``--set section.key=value``; the common ones also have flags. Bad flags, keys, types, values
or data fail at start-up with one line and exit status 2.

Checkpoints (safetensors + JSON, atomic, checksummed): ``step-N`` every ``train.save_step``,
``epoch-N`` at each epoch end (the newest ``train.keep_last`` of those two kinds are kept),
``best`` (lowest validation loss), ``final``, ``interrupted`` (Ctrl+C or SIGTERM: the current
step finishes, the state is saved, exit status 0; a second signal stops at once) and
``emergency`` (an exception, or ``train.max_nonfinite`` non-finite steps in a row: the last
good state is saved and the error re-raised). Each holds the model, Adam's moments and step,
the sampler position, every RNG state, the step/epoch counters, the best validation loss and
the resolved config, so ``--resume-from`` continues bit for bit (same thread count).
"""
from __future__ import annotations

import argparse
import json
import math
import signal
import struct
import sys
import time
from pathlib import Path

import numpy as np

import fastcpu
from fastcpu.monitor import hms

EXIT_USAGE = 2
REPO_CONFIGS = Path(__file__).resolve().parent.parent / "configs"
TERMS = ("mel", "postnet_mel", "pitch", "energy", "duration")
CKPT_KINDS = ("step", "epoch", "best", "final", "interrupted", "emergency")

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


class NonFiniteStop(RuntimeError):
    pass


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


def build_parser() -> argparse.ArgumentParser:
    ap = _Parser(prog="python -m fastcpu.train", description=__doc__.split("\n\n")[0],
                 epilog=__doc__.split("\n\n", 2)[2] + "\n" + config_keys_help(),
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


def find_checkpoints(path: Path) -> list:
    """Checkpoint files under a run or checkpoint directory, newest (highest step) first."""
    from fastcpu import checkpoint
    d = path / "checkpoints" if (path / "checkpoints").is_dir() else path
    found = []
    for p in d.glob("*.safetensors"):
        try:
            found.append((int(checkpoint.peek_meta(p)["state"]["step"]), p.stat().st_mtime, p))
        except (ValueError, KeyError, TypeError, OSError, UnicodeDecodeError, struct.error):
            found.append((-1, p.stat().st_mtime, p))       # unreadable: tried last
    return [p for _, _, p in sorted(found, reverse=True)]


def resolve_resume(target: str, log=print):
    """-> (path, tensors, meta) of the checkpoint to resume from. A directory falls back past
    corrupted files to the newest good one; a file must be good."""
    from fastcpu import checkpoint
    p = Path(target)
    if p.is_file():
        try:
            t, m = checkpoint.load(p)
        except checkpoint.CheckpointError as e:
            raise UsageError(str(e)) from None
        return p, t, m
    if not p.is_dir():
        raise UsageError(f"--resume-from {p}: no such file or directory")
    cands = find_checkpoints(p)
    for c in cands:
        try:
            t, m = checkpoint.load(c)
            return c, t, m
        except checkpoint.CheckpointError as e:
            log(f"warning: skipping {e}")
    raise UsageError(f"--resume-from {p}: no usable checkpoint "
                     f"({len(cands)} file(s) found, none loadable)")


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


def memory_plan(cfg, n_params: int, train) -> dict:
    """Bytes for weights, gradients, Adam moments, and an estimate of the activations kept for
    backward by the longest batch (saved tensors per frame / phoneme, float32)."""
    m, B = cfg.model, cfg.train.batch_size
    order = np.argsort(-train.frames)
    T = int(train.frames[order[0]])
    L = int(max(len(u.phones) for u in train.utts))
    H, Fi = m.decoder_hidden, m.conv_filter_size
    per_frame = (m.decoder_layer * (12 * H + 3 * Fi) + m.postnet_n_convolutions * 3 *
                 m.postnet_embedding_dim + 6 * m.n_mel_channels + 2 * H)
    per_phone = m.encoder_layer * (12 * H + 3 * Fi) + 3 * 4 * m.vp_filter_size + 4 * H
    return {"weights": 4 * n_params, "grads": 4 * n_params, "adam": 8 * n_params,
            "activations": 4 * B * (T * per_frame + L * per_phone), "max_frames": T,
            "max_phones": L}


def _gib(n):
    return f"{n / 2 ** 30:.2f} GiB" if n >= 2 ** 28 else f"{n / 2 ** 20:.1f} MiB"


# ---------------------------------------------------------------------------------- trainer


class Trainer:
    def __init__(self, cfg, root, train, val, run_dir: Path, resume=None, fault=None,
                 step_delay=0.0, out=None):
        from fastcpu import nn
        from fastcpu.data import Batcher
        from fastcpu.models import FastSpeech2, FastSpeech2Loss
        from fastcpu.optim import Adam
        self.cfg, self.root, self.train_set, self.val_set = cfg, root, train, val
        self.run_dir, self.out = run_dir, out or sys.stdout
        self.tty = self.out.isatty()
        nn.init.manual_seed(cfg.train.seed)
        self.model = FastSpeech2(cfg.model)
        self.buffer = nn.flatten_parameters(self.model)
        self.opt = Adam(self.buffer, cfg.optimizer, cfg.model.decoder_hidden)
        self.loss_fn = FastSpeech2Loss()
        self.batcher = Batcher(len(train), train.text_lengths(), cfg.train.batch_size,
                               cfg.train.group_size, cfg.train.seed)
        self._epoch_cache = {}
        self.step = 0                  # loop steps done (each consumes one accumulation window)
        self.best_val = math.inf
        self.bad_vals = 0              # validations since the best (early stopping)
        self.nonfinite = 0             # non-finite steps in a row
        self.pending_val = False       # a validation was interrupted: redo it first on resume
        self.train_avg = None          # running mean of the training loss (divergence check)
        self.fault = _parse_fault(fault)
        self.step_delay = step_delay
        self.stop_signal = None
        self.in_update = False
        self.last_val_step = -1
        self.tb = None
        if resume is not None:
            self._load(*resume)

    # -- state ------------------------------------------------------------------------------
    def light_state(self) -> dict:
        from fastcpu import nn
        return {"step": self.step, "best_val": self.best_val, "bad_vals": self.bad_vals,
                "nonfinite": self.nonfinite, "pending_val": self.pending_val,
                "train_avg": self.train_avg, "sampler": self.batcher.state_dict(),
                "rng": nn.init.get_state()}

    def buffers(self) -> dict:
        """Copies of the model's non-parameter state (BatchNorm running statistics): a failed
        step's forward may already have updated them."""
        params = set(self.buffer.names)
        return {k: v.copy() for k, v in self.model.state_dict().items() if k not in params}

    def restore_light(self, st: dict) -> None:
        from fastcpu import nn
        self.step, self.bad_vals = int(st["step"]), int(st["bad_vals"])
        self.best_val = math.inf if st["best_val"] is None else float(st["best_val"])
        self.nonfinite, self.pending_val = int(st["nonfinite"]), bool(st["pending_val"])
        self.train_avg = st["train_avg"]
        self.batcher.load_state_dict(st["sampler"])
        nn.init.set_state(st["rng"])

    def save(self, kind: str, state=None, reason=None, epoch=None) -> Path:
        from fastcpu import checkpoint, runtime
        from fastcpu.config import to_dict
        st = dict(state or self.light_state())
        if not math.isfinite(st["best_val"]):
            st["best_val"] = None
        name = (f"step-{st['step']:08d}" if kind == "step" else
                f"epoch-{epoch:04d}" if kind == "epoch" else kind)
        meta = {"kind": kind, "state": st, "config": to_dict(self.cfg),
                "fastcpu_version": fastcpu.__version__, "threads": runtime.num_threads(),
                "precision": self.cfg.train.precision,
                "optimizer_step": self.opt.t, "saved_at": time.time()}
        if reason:
            meta["reason"] = reason
        path = self.run_dir / "checkpoints" / f"{name}.safetensors"
        checkpoint.save_training_state(path, self.model, self.opt, meta)
        self.log_event({"event": "checkpoint", "kind": kind, "step": st["step"],
                        "path": str(path)})
        if kind in ("step", "epoch"):
            self._retain(kind)
        return path

    def _retain(self, kind):
        keep = self.cfg.train.keep_last
        if keep <= 0:
            return
        files = sorted((self.run_dir / "checkpoints").glob(f"{kind}-*.safetensors"))
        for p in files[:-keep]:
            p.unlink()

    def _load(self, path, tensors, meta):
        from fastcpu import checkpoint, runtime
        try:
            checkpoint.apply_training_state(tensors, meta, self.model, self.opt)
        except (KeyError, ValueError) as e:
            raise UsageError(f"{path}: does not fit this model ({e})") from None
        self.restore_light(meta["state"])
        if meta.get("precision", "fp32") != self.cfg.train.precision:
            self.say(f"note: checkpoint was trained in {meta.get('precision', 'fp32')}, this run "
                     f"uses {self.cfg.train.precision} (weights and moments are fp32 either way)")
        if meta.get("threads") != runtime.num_threads():
            self.say(f"note: checkpoint was written with {meta.get('threads')} threads, this "
                     f"run uses {runtime.num_threads()}: the continuation is correct but not "
                     f"bit-identical to an uninterrupted run")
        self.log_event({"event": "resume", "from": str(path), "step": self.step})

    # -- output -----------------------------------------------------------------------------
    def say(self, text: str) -> None:
        if self.tty:
            self.out.write("\r\033[K")
        print(text, file=self.out, flush=True)

    def log_event(self, rec: dict) -> None:
        rec = {"at": round(time.time(), 3), **rec}
        with open(self.run_dir / "metrics.jsonl", "a") as f:
            f.write(json.dumps(rec) + "\n")

    # -- data -------------------------------------------------------------------------------
    def _batches(self, epoch):
        if epoch not in self._epoch_cache:
            self._epoch_cache = {epoch: self.batcher.epoch_batches(epoch)}
        return self._epoch_cache[epoch]

    def next_indices(self):
        """The next sub-batch; -> (indices, the epoch it completed or None)."""
        b = self.batcher
        batches = self._batches(b.epoch)
        if b.pos >= len(batches):
            b.epoch, b.pos = b.epoch + 1, 0
            batches = self._batches(b.epoch)
        idx = batches[b.pos]
        b.pos += 1
        return idx, (b.epoch if b.pos >= len(batches) else None)

    def epochs_done(self) -> int:
        b = self.batcher
        return b.epoch + (b.pos >= len(self._batches(b.epoch)))

    def load_batch(self, dataset, idx):
        from fastcpu.data import collate
        return collate([dataset.load(int(i)) for i in idx])

    # -- one step ---------------------------------------------------------------------------
    def forward_loss(self, b):
        out = self.model(b["speakers"], b["texts"], b["text_lens"], b["max_text_len"],
                         b["mels"], b["mel_lens"], b["max_mel_len"], b["pitches"],
                         b["energies"], b["durations"])
        return self.loss_fn(out, b["mels"], b["pitches"], b["energies"], b["durations"])

    def accumulate(self, batches, step_no, times=None):
        """Forward + backward of an accumulation window, gradients summed into the buffer.
        Each loss term is a mean over one micro-batch's frames (mel terms) or phonemes (the
        others); weighting it by that micro-batch's share of the window's frames/phonemes makes
        the accumulated gradient the gradient of the mean over the whole window, i.e. of the
        large batch, however ragged the lengths. -> (loss terms of the window, frames)."""
        times = times if times is not None else {"forward": 0.0, "backward": 0.0}
        frames = int(sum(b["mel_lens"].sum() for b in batches))
        phones = int(sum(b["text_lens"].sum() for b in batches))
        sums = dict.fromkeys(TERMS, 0.0)
        for k, b in enumerate(batches):
            t = time.perf_counter()
            terms = self.forward_loss(b)
            wf = float(b["mel_lens"].sum()) / frames
            wp = float(b["text_lens"].sum()) / phones
            w = {"mel": wf, "postnet_mel": wf, "pitch": wp, "energy": wp, "duration": wp}
            if self.fault and self.fault[0] == "nan" and self.fault[1] <= step_no <= \
                    self.fault[2]:
                w["mel"] = float("nan")
            total = None
            for name in TERMS:
                sums[name] += terms[name].item() * w[name]
                part = terms[name] * w[name]
                total = part if total is None else total + part
            times["forward"] += time.perf_counter() - t
            if self.fault and self.fault[0] == "exception" and step_no == self.fault[1] and \
                    k == len(batches) - 1:
                raise RuntimeError(f"injected fault in step {step_no} (--debug-fault)")
            t = time.perf_counter()
            total.backward()
            times["backward"] += time.perf_counter() - t
        return sums, frames

    def train_step(self):
        from fastcpu import profile
        acc = self.cfg.optimizer.grad_acc_step
        times = {"data": 0.0, "forward": 0.0, "backward": 0.0, "optimizer": 0.0}
        t0 = time.perf_counter()
        batches, epoch_end = [], None
        with profile.span("data", "data"):
            for _ in range(acc):
                idx, ended = self.next_indices()
                if ended is not None:
                    epoch_end = ended
                batches.append(self.load_batch(self.train_set, idx))
        times["data"] = time.perf_counter() - t0
        self._step_buffers = self.buffers()     # restored if this step is skipped
        if not self.model.training:
            self.model.train()
        with profile.span("zero_grad", "optimizer"):
            self.opt.zero_grad()
        sums, frames = self.accumulate(batches, self.step + 1, times)
        loss = sum(sums.values())
        step_no = self.step + 1
        rec = {"event": "train", "step": step_no, "epoch": self.batcher.epoch,
               "loss": {"total": loss, **sums}, "frames": frames}
        if not math.isfinite(loss):
            return self._skip(rec, "non-finite loss", times, t0), epoch_end
        t = time.perf_counter()
        self.in_update = True
        with profile.span("clip_adam", "optimizer"):
            norm, lr, stepped = self.opt.step()
        self.in_update = False
        times["optimizer"] = time.perf_counter() - t
        if not stepped:
            return self._skip(rec, f"non-finite gradient norm ({norm})", times, t0), epoch_end
        self.nonfinite = 0
        self.step = step_no
        times["step"] = time.perf_counter() - t0
        rec.update(lr=lr, grad_norm=float(norm), time=times,
                   frames_per_s=frames / times["step"])
        self.train_avg = loss if self.train_avg is None else 0.9 * self.train_avg + 0.1 * loss
        return rec, epoch_end

    def _skip(self, rec, why, times, t0):
        # nothing of a non-finite step is kept: no update, and the BatchNorm running statistics
        # its forward pass touched (possibly with NaN) are put back
        self.opt.zero_grad()
        self.model.load_state_dict(self._step_buffers, strict=False)
        self.nonfinite += 1
        self.step = rec["step"]
        times["step"] = time.perf_counter() - t0
        rec.update(event="skip", reason=why, time=times, in_a_row=self.nonfinite)
        rec["loss"] = {k: (v if math.isfinite(v) else str(v)) for k, v in rec["loss"].items()}
        return rec

    # -- validation -------------------------------------------------------------------------
    def validate(self):
        """Teacher-forced loss over the validation split (no gradients, eval mode), each term
        averaged over all its frames/phonemes. None if interrupted by a signal."""
        from fastcpu.autograd import no_grad
        from fastcpu.data import Batcher
        vb = Batcher(len(self.val_set), self.val_set.text_lengths(), self.cfg.train.batch_size,
                     1, 0, drop_last=False, shuffle=False)
        sums, frames, phones = dict.fromkeys(TERMS, 0.0), 0, 0
        self.model.eval()
        first = None
        try:
            with no_grad():
                for idx in vb.epoch_batches(0):
                    if self.stop_signal is not None:
                        return None
                    b = self.load_batch(self.val_set, idx)
                    terms = self.forward_loss(b)
                    nf, npn = int(b["mel_lens"].sum()), int(b["text_lens"].sum())
                    for k in TERMS:
                        sums[k] += terms[k].item() * (nf if k in ("mel", "postnet_mel")
                                                      else npn)
                    frames, phones = frames + nf, phones + npn
                    if first is None:
                        first = b
        finally:
            self.model.train()
        vals = {k: sums[k] / (frames if k in ("mel", "postnet_mel") else phones)
                for k in TERMS}
        return {"total": sum(vals.values()), **vals}, first

    def sample(self, b):
        """Mel image (target over prediction) and Griffin-Lim audio of one validation
        utterance, teacher-forced, to TensorBoard and samples/."""
        from fastcpu import tensorboard
        from fastcpu.autograd import no_grad
        from fastcpu.data import features
        sub = {k: (v[:1] if isinstance(v, (np.ndarray, list)) else v) for k, v in b.items()}
        n_mel = int(sub["mel_lens"][0])
        sub["max_mel_len"], sub["max_text_len"] = n_mel, int(sub["text_lens"][0])
        sub["mels"] = sub["mels"][:, :n_mel]
        for k in ("texts", "pitches", "energies", "durations"):
            sub[k] = sub[k][:, :sub["max_text_len"]]
        self.model.eval()
        try:
            with no_grad():
                out = self.model(sub["speakers"], sub["texts"], sub["text_lens"],
                                 sub["max_text_len"], sub["mels"], sub["mel_lens"], n_mel,
                                 sub["pitches"], sub["energies"], sub["durations"])
        finally:
            self.model.train()
        pred = out.postnet_mel.numpy()[0, :n_mel]
        target = sub["mels"][0]
        img = tensorboard.mel_image(target, pred)
        wav = features.griffin_lim(pred)
        d = self.run_dir / "samples"
        d.mkdir(exist_ok=True)
        (d / f"step-{self.step:08d}-{sub['ids'][0]}.png").write_bytes(tensorboard.png(img))
        (d / f"step-{self.step:08d}-{sub['ids'][0]}.wav").write_bytes(
            tensorboard.wav_bytes(wav, features.SR))
        if self.tb:
            self.tb.add_image("val/mel_target_over_prediction", img, self.step)
            self.tb.add_audio("val/griffin_lim", wav, features.SR, self.step)

    def run_validation(self, why: str):
        t0 = time.perf_counter()
        res = self.validate()
        if res is None:
            self.pending_val = True
            return False
        vals, first = res
        self.pending_val = False
        self.last_val_step = self.step
        improved = vals["total"] < self.best_val
        rec = {"event": "val", "step": self.step, "epoch": self.batcher.epoch, "why": why,
               "loss": vals, "seconds": time.perf_counter() - t0}
        if improved:
            self.best_val, self.bad_vals = vals["total"], 0
        else:
            self.bad_vals += 1
        rec["best"] = self.best_val
        r = self.cfg.train.divergence_ratio
        if r and self.train_avg and vals["total"] > r * self.train_avg:
            rec["warning"] = (f"validation loss {vals['total']:.4f} is more than {r}x the "
                              f"training loss {self.train_avg:.4f}: diverging / overfitting?")
            self.say(f"warning: {rec['warning']}")
        self.log_event(rec)
        if self.tb:
            self.tb.add_scalars("val", vals, self.step)
        self.say(f"validation @ step {self.step}: loss {vals['total']:.4f} "
                 f"(mel {vals['mel']:.4f}, postnet {vals['postnet_mel']:.4f}, "
                 f"pitch {vals['pitch']:.4f}, energy {vals['energy']:.4f}, "
                 f"duration {vals['duration']:.4f}){'  *best*' if improved else ''}")
        if improved:
            self.save("best")
        if first is not None and (why == "end" or self.step % self.cfg.train.synth_step == 0
                                  or why == "epoch"):
            self.sample(first)
        return True

    # -- the loop ---------------------------------------------------------------------------
    def _on_signal(self, signum, frame):
        if self.stop_signal is not None:          # a second signal: stop now
            raise KeyboardInterrupt
        self.stop_signal = signal.Signals(signum).name      # no I/O in a signal handler

    def progress(self, rec, t_start, steps_at_start):
        c = self.cfg.train
        done = self.step - steps_at_start
        rate = done / max(time.time() - t_start, 1e-9)
        left = c.total_step - self.step
        eta = left / rate if rate > 0 else float("inf")
        l = rec["loss"]
        if rec["event"] == "skip":
            line = f"step {rec['step']}: skipped ({rec['reason']}, {rec['in_a_row']} in a row)"
            self.say(line)
            return
        text = (f"step {self.step}/{c.total_step} ep {rec['epoch']} loss {l['total']:.4f} "
                f"(mel {l['mel']:.3f} post {l['postnet_mel']:.3f} d {l['duration']:.3f} "
                f"p {l['pitch']:.3f} e {l['energy']:.3f}) lr {rec['lr']:.2e} "
                f"|g| {rec['grad_norm']:.2f} {rec['time']['step'] * 1e3:.0f} ms "
                f"{rec['frames_per_s']:.0f} fr/s ETA {hms(eta)}")
        if self.tty:
            frac = self.step / c.total_step
            bar = "#" * int(24 * frac) + "-" * (24 - int(24 * frac))
            self.out.write(f"\r\033[K[{bar}] {text}")
            self.out.flush()
            if self.step % c.log_step == 0:
                self.out.write("\n")
        elif self.step % c.log_step == 0 or self.step == 1:
            print(text, file=self.out, flush=True)

    def run(self) -> int:
        from fastcpu import profile, tensorboard
        c = self.cfg.train
        self.tb = tensorboard.SummaryWriter(self.run_dir / "tb")
        handlers = {s: signal.signal(s, self._on_signal) for s in (signal.SIGINT,
                                                                   signal.SIGTERM)}
        good, good_buffers = self.light_state(), self.buffers()
        prof, prof_left = None, 0
        t_start, steps_at_start = time.time(), self.step
        try:
            if self.pending_val:
                self.run_validation("resumed")
            while self.stop_signal is None:
                if self.step >= c.total_step or (c.num_epochs and
                                                  self.epochs_done() >= c.num_epochs):
                    break
                good, good_buffers = self.light_state(), self.buffers()
                profiling = bool(c.profile_steps) and prof_left > 0 or (
                    c.profile_steps and prof is None and self.step == steps_at_start + 1)
                if profiling:                      # after the first (compiling) step
                    if prof is None:
                        prof, prof_left = profile.Profiler().__enter__(), c.profile_steps
                    else:
                        prof.resume()
                rec, epoch_end = self.train_step()
                if profiling:
                    prof.pause()
                    prof_left -= 1
                    if prof_left == 0:
                        prof.__exit__(None, None, None)
                        self._write_profile(prof, c.profile_steps)
                self.log_event(rec)
                if rec["event"] == "skip":
                    if self.nonfinite >= c.max_nonfinite:
                        raise NonFiniteStop(f"{self.nonfinite} non-finite steps in a row "
                                            f"(train.max_nonfinite={c.max_nonfinite})")
                else:
                    if self.step % c.log_step == 0 or self.step == 1:
                        self.tb.add_scalars("train", rec["loss"], self.step)
                        self.tb.add_scalar("train/lr", rec["lr"], self.step)
                        self.tb.add_scalar("train/grad_norm", rec["grad_norm"], self.step)
                        self.tb.add_scalar("train/frames_per_s", rec["frames_per_s"],
                                           self.step)
                        self.tb.flush()
                self.progress(rec, t_start, steps_at_start)
                if self.step_delay:
                    time.sleep(self.step_delay)
                finished_epoch = epoch_end is not None and rec["event"] != "skip"
                if self.step % c.val_step == 0 or finished_epoch:
                    if not self.run_validation("epoch" if finished_epoch else "step"):
                        break
                if self.step % c.save_step == 0:
                    self.save("step")
                if epoch_end is not None:
                    self.save("epoch", epoch=epoch_end)
                if c.early_stop_patience and self.bad_vals >= c.early_stop_patience:
                    self.say(f"early stopping: no validation improvement in "
                             f"{self.bad_vals} validations")
                    self.log_event({"event": "early_stop", "step": self.step})
                    break
            if self.stop_signal is not None:
                self.say(f"{self.stop_signal}: saving the state after step {self.step} "
                         f"(send again to stop at once)")
                path = self.save("interrupted", reason=self.stop_signal)
                self.say(f"interrupted by {self.stop_signal} at step {self.step}; saved {path}")
                self.log_event({"event": "end", "status": "interrupted", "step": self.step})
                return 0
            if not self.pending_val and self.step > steps_at_start and \
                    self.last_val_step != self.step:
                self.run_validation("end")
            path = self.save("final")
            self.say(f"done: {self.step} steps; final checkpoint {path}")
            self.log_event({"event": "end", "status": "done", "step": self.step})
            return 0
        except BaseException as e:
            if prof is not None and prof_left > 0:
                prof.__exit__(None, None, None)
            self._emergency(e, good, good_buffers)
            raise
        finally:
            for s, h in handlers.items():
                signal.signal(s, h)
            self.tb.close()

    def _emergency(self, exc, good, good_buffers):
        if self.in_update:
            self.say(f"error during the optimizer update: the weights may be half-updated, so "
                     f"no emergency checkpoint is written (the newest good one is in "
                     f"{self.run_dir / 'checkpoints'})")
            self.log_event({"event": "end", "status": "error", "error": repr(exc)})
            return
        # everything but the weights/moments is rolled back to the start of the failed step;
        # the weights and Adam state were not touched by it (no update happened)
        self.opt.zero_grad()
        self.model.load_state_dict(good_buffers, strict=False)
        try:
            path = self.save("emergency", state=good, reason=repr(exc))
            self.say(f"{type(exc).__name__}: saved the last good state (step {good['step']}) "
                     f"to {path}")
        except Exception as e2:                      # never mask the original error
            self.say(f"could not write the emergency checkpoint: {e2!r}")
        self.log_event({"event": "end", "status": "error", "error": repr(exc),
                        "step": good["step"]})

    def _write_profile(self, prof, steps):
        d = self.run_dir / "profile"
        d.mkdir(exist_ok=True)
        table = prof.table(steps)
        (d / "table.txt").write_text(table + "\n")
        prof.write_chrome_trace(d / "trace.json")
        self.say(f"profile of {steps} step(s) (open {d / 'trace.json'} in ui.perfetto.dev):\n"
                 + table)
        self.log_event({"event": "profile", "step": self.step, "table": str(d / "table.txt"),
                        "trace": str(d / "trace.json"), "sum_ops_s": sum(
                            v[1] for v in prof.summary().values()), "wall_s": prof.wall})


def _parse_fault(text):
    if not text:
        return None
    try:
        kind, at = text.split("@")
        a, _, b = at.partition(":")
        return kind, int(a), int(b or (a if kind == "exception" else 10 ** 9))
    except ValueError:
        raise UsageError(f"--debug-fault {text!r}: expected exception@K or nan@K[:M]") from None


def banner(cfg, root, train, val, n_params, mem, run_dir, resumed_from=None) -> str:
    from fastcpu import runtime
    c, o = cfg.train, cfg.optimizer
    from fastcpu.data import Batcher
    spe = Batcher(len(train), train.text_lengths(), c.batch_size, c.group_size,
                  c.seed).steps_per_epoch()
    lines = [f"fastcpu {fastcpu.__version__} — FastSpeech2 training run {cfg.name!r} -> "
             f"{run_dir}",
             runtime.format_info(),
             f"data: {root}  ({len(train)} train / {len(val)} val utterances, "
             f"{int(train.frames.sum()) * 256 / 22050 / 3600:.2f} h)",
             f"model: {n_params:,} trainable parameters; batch {c.batch_size} x accumulation "
             f"{o.grad_acc_step}; {o.schedule} schedule, warm-up {o.warm_up_step}, clip "
             f"{o.grad_clip_thresh}",
             f"plan: {c.total_step} steps"
             + (f" or {c.num_epochs} epochs" if c.num_epochs else "")
             + f" (~{spe // max(o.grad_acc_step, 1)} steps/epoch, ~"
             f"{c.total_step / max(1, spe // max(o.grad_acc_step, 1)):.1f} epochs); validate "
             f"every {c.val_step}, save every {c.save_step}",
             f"memory: weights {_gib(mem['weights'])} + grads {_gib(mem['grads'])} + Adam "
             f"{_gib(mem['adam'])} + activations ~{_gib(mem['activations'])} (estimated for "
             f"the longest batch: {mem['max_phones']} phonemes / {mem['max_frames']} frames)"]
    if resumed_from:
        lines.append(f"resumed from {resumed_from}")
    return "\n".join(lines)


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    try:
        resume = resolve_resume(args.resume_from) if args.resume_from else None
        cfg = load_run_config(args, resume[2] if resume else None)
        root, train, val = open_data(cfg)
        fault = _parse_fault(args.debug_fault) and args.debug_fault
        if args.debug_step_delay < 0:
            raise UsageError("--debug-step-delay must be >= 0")
    except UsageError as e:
        print(f"error: {e}", file=sys.stderr)
        return EXIT_USAGE

    from fastcpu import kernels, runtime
    from fastcpu.config import to_dict
    from fastcpu.kernels import gemm
    if cfg.train.precision == "bf16" and not gemm.bf16_status().startswith("ok"):
        print(f"error: train.precision bf16: {gemm.bf16_status()}", file=sys.stderr)
        return EXIT_USAGE
    run_dir = Path(cfg.train.output_dir) / cfg.name
    threads = cfg.train.threads or None
    with runtime.threads(threads), runtime.keep_memory(), kernels.use(cfg.train.precision):
        from fastcpu.models import FastSpeech2
        if args.dry_run:
            from fastcpu.data import DataError
            try:                                   # every value of every utterance, now
                train.validate()
                val.validate()
            except DataError as e:
                print(f"error: {e}", file=sys.stderr)
                return EXIT_USAGE
            n_params = FastSpeech2(cfg.model).num_parameters(trainable_only=True)
            print(banner(cfg, root, train, val, n_params, memory_plan(cfg, n_params, train),
                         run_dir, resume and resume[0]))
            print(f"dry run: config and data are valid ({len(train) + len(val)} utterances "
                  f"checked); nothing trained")
            return 0
        run_dir.mkdir(parents=True, exist_ok=True)
        import yaml
        (run_dir / "config.yaml").write_text(yaml.safe_dump(to_dict(cfg), sort_keys=False))
        try:
            tr = Trainer(cfg, root, train, val, run_dir, resume=resume, fault=fault,
                         step_delay=args.debug_step_delay)
        except UsageError as e:
            print(f"error: {e}", file=sys.stderr)
            return EXIT_USAGE
        mem = memory_plan(cfg, len(tr.buffer), train)
        print(banner(cfg, root, train, val, len(tr.buffer), mem, run_dir,
                     resume and resume[0]), flush=True)
        tr.log_event({"event": "start", "step": tr.step, "total_step": cfg.train.total_step,
                      "config": to_dict(cfg), "runtime": runtime.info(), "memory": mem,
                      "resumed_from": str(resume[0]) if resume else None})
        try:
            return tr.run()
        except NonFiniteStop as e:
            print(f"error: stopped: {e}", file=sys.stderr)
            return 1


if __name__ == "__main__":
    sys.exit(main())
