"""What a training run tells: the console (banner, progress, messages), ``metrics.jsonl``,
TensorBoard, validation samples and the profile files — one ``Reporter`` per run.

The trainer decides *what* happened; this module decides how it reads. Nothing here changes
training state.
"""
from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import numpy as np

import fastcpu
from fastcpu.monitor import hms, rate_and_eta

COLOURS = {"warning": "33", "error": "31", "best": "32", "note": "36"}


def gib(n) -> str:
    return f"{n / 2 ** 30:.2f} GiB" if n >= 2 ** 28 else f"{n / 2 ** 20:.1f} MiB"


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


def banner(cfg, root, train, val, n_params, mem, run_dir, resumed_from=None) -> str:
    from fastcpu import runtime
    from fastcpu.data import Batcher
    c, o = cfg.train, cfg.optimizer
    from fastcpu import distributed
    w = distributed.world()
    spe = Batcher(len(train), train.text_lengths(), c.batch_size * w.size, c.group_size,
                  c.seed).steps_per_epoch()
    lines = [f"fastcpu {fastcpu.__version__} — FastSpeech2 training run {cfg.name!r} -> "
             f"{run_dir}",
             runtime.format_info(),
             f"data: {root}  ({len(train)} train / {len(val)} val utterances, "
             f"{int(train.frames.sum()) * 256 / 22050 / 3600:.2f} h)",
             f"model: {n_params:,} trainable parameters; batch {c.batch_size} x accumulation "
             f"{o.grad_acc_step}; {o.schedule} schedule, warm-up {o.warm_up_step}, clip "
             f"{o.grad_clip_thresh}; precision {c.precision}",
             f"plan: {c.total_step} steps"
             + (f" or {c.num_epochs} epochs" if c.num_epochs else "")
             + f" (~{spe // max(o.grad_acc_step, 1)} steps/epoch, ~"
             f"{c.total_step / max(1, spe // max(o.grad_acc_step, 1)):.1f} epochs); validate "
             f"every {c.val_step}, save every {c.save_step}",
             f"memory: weights {gib(mem['weights'])} + grads {gib(mem['grads'])} + Adam "
             f"{gib(mem['adam'])} + activations ~{gib(mem['activations'])} (estimated for "
             f"the longest batch: {mem['max_phones']} phonemes / {mem['max_frames']} frames)"]
    if w.size > 1:
        lines.insert(2, f"data parallel: {w.describe()}; {runtime.num_threads()} thread(s) per "
                        f"rank; global batch {w.size} x {c.batch_size} x accumulation "
                        f"{o.grad_acc_step} = {w.size * c.batch_size * o.grad_acc_step}")
    if resumed_from:
        lines.append(f"resumed from {resumed_from}")
    return "\n".join(lines)


class Board:
    """TensorBoard through tensorboardX. ``tb/train`` and ``tb/val`` are two runs with the same
    tags (``loss/total``, ``loss/mel``, ...), so TensorBoard draws train and validation in one
    chart, as the reference's logs do; ``tb/train`` also has ``lr``, ``grad_norm`` and
    ``frames_per_s`` and the resolved config as text; samples (``mel`` figure,
    ``audio/prediction``, ``audio/target``) go to ``tb/val``; when the run closes, the config
    as hparams (``tb/train/hparams``) with the best and the last validation loss."""

    def __init__(self, root: Path, cfg, step: int):
        from tensorboardX import SummaryWriter
        self.cfg = cfg
        self.train = SummaryWriter(str(root / "train"))
        self.val = SummaryWriter(str(root / "val"))
        import yaml

        from fastcpu.config import to_dict
        text = yaml.safe_dump(to_dict(cfg), sort_keys=False)
        self.train.add_text("config", "    " + text.replace("\n", "\n    "), step)

    def train_step(self, rec: dict, step: int) -> None:
        for k, v in rec["loss"].items():
            self.train.add_scalar(f"loss/{k}", v, step)
        for k in ("lr", "grad_norm", "frames_per_s"):
            self.train.add_scalar(k, rec[k], step)
        self.train.flush()

    def validation(self, losses: dict, step: int) -> None:
        for k, v in losses.items():
            self.val.add_scalar(f"loss/{k}", v, step)
        self.val.flush()

    def sample(self, rgb, audio: dict, sr: int, step: int, free=()) -> None:
        if rgb is not None:
            self.val.add_image("mel", rgb, step, dataformats="HWC")
        for kind, wav in audio.items():
            self.val.add_audio(f"audio/{kind}", np.clip(wav, -1, 1), step, sample_rate=sr)
        for label, frgb, wav in free:
            self.val.add_image(f"free/{label}", frgb, step, dataformats="HWC")
            self.val.add_audio(f"free/{label}", np.clip(wav, -1, 1), step, sample_rate=sr)
        self.val.flush()

    def close(self, best_val=None, last_val=None) -> None:
        from fastcpu.config import to_dict
        flat = {}

        def walk(d, prefix):
            for k, v in d.items():
                if isinstance(v, dict):
                    walk(v, f"{prefix}{k}.")
                else:
                    flat[f"{prefix}{k}"] = v if isinstance(v, (bool, int, float, str)) \
                        else str(v)
        walk(to_dict(self.cfg), "")
        metrics = {f"hparam/{k}": float(v) for k, v in (("best_val_loss", best_val),
                                                          ("last_val_loss", last_val))
                   if v is not None and np.isfinite(v)}
        if metrics:
            self.train.add_hparams(flat, metrics, name="hparams")
        self.train.close()
        self.val.close()


def fit(text: str, width: int) -> str:
    """One terminal line: ``text`` cut to ``width`` columns (with an ellipsis)."""
    return text if len(text) <= width else text[:max(width - 1, 0)] + "…"


def kernel_cache_warm() -> bool:
    """Whether Numba's cache already holds compiled fastcpu kernels (index files next to the
    sources, under NUMBA_CACHE_DIR, or in the per-user cache Numba falls back to when the
    package directory is read-only). A cold cache means ~30 s of compiling before step 1."""
    import os
    env = os.environ.get("NUMBA_CACHE_DIR")
    if env:                                   # Numba then caches there alone
        roots, places = [Path(env)], []
    else:
        roots = [Path(os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"))
                 / "numba"]
        places = [Path(fastcpu.__file__).resolve().parent / "kernels" / "__pycache__"]
    for d in roots:
        if d.is_dir():
            places += [p for p in d.rglob("*kernels*") if p.is_dir()]
    n = 0
    for d in places:
        if d.is_dir():
            n += sum(1 for _ in d.glob("*.nbi"))
    return n >= 20


def rss_now():
    """(resident set size, its high-water mark) of this process in bytes (VmRSS, VmHWM)."""
    got = {}
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(("VmRSS:", "VmHWM:")):
                    got[line[:5]] = int(line.split()[1]) * 1024
    except OSError:
        pass
    return got.get("VmRSS", 0), got.get("VmHWM", 0)


class Reporter:
    """Console, metrics.jsonl, TensorBoard and samples of one run directory."""

    def __init__(self, run_dir: Path, cfg, out=None):
        import os
        self.run_dir, self.cfg = Path(run_dir), cfg
        self.out = out or sys.stdout
        self.tty = self.out.isatty()
        self.colour = self.tty and not os.environ.get("NO_COLOR")
        self.bar = None                  # tqdm progress bar on a terminal
        self.stamps = []                 # (time, step) of this process's step ends
        self.tb = None
        self.t_start, self.steps_at_start = time.time(), 0
        # train.log: the console text, also for foreground runs (a detached run's console is
        # that file already)
        self.log_path = None if os.environ.get("FASTCPU_DETACHED") else self.run_dir / "train.log"
        self.memory_plan = None

    # -- lifetime ---------------------------------------------------------------------------
    def open(self, step: int) -> None:
        self.tb = Board(self.run_dir / "tb", self.cfg, step)
        self.t_start, self.steps_at_start = time.time(), step
        self.stamps = []
        if not kernel_cache_warm():
            self.say("compiling kernels (first run, about 30 s; `python -m fastcpu.warmup` "
                     "does it ahead)")

    def end_progress(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None

    def close(self, best_val=None, last_val=None) -> None:
        self.end_progress()
        if self.tb:
            self.tb.close(best_val, last_val)
            self.tb = None

    # -- text -------------------------------------------------------------------------------
    def say(self, text: str, short: str | None = None) -> None:
        """A message: in full to train.log and to pipes; on a terminal ``short`` (or the text)
        cut to its width, above the progress bar."""
        if self.tty:
            import textwrap
            w = self._width()
            lines = [fit(short, w)] if short else [
                part for line in text.split("\n") for part in
                (textwrap.wrap(line, w, subsequent_indent="    ", break_on_hyphens=False)
                 or [""])]
            shown = "\n".join(self.paint(line) for line in lines)
        else:
            shown = text
        if self.bar is not None:
            self.bar.write(shown, file=self.out)        # above the bar, which is redrawn
        else:
            print(shown, file=self.out, flush=True)
        self._to_log(text)

    def paint(self, text: str) -> str:
        """Colour on a terminal (warnings yellow, errors red, a new best green); none in
        files, pipes or with NO_COLOR."""
        if not self.colour:
            return text
        kind = next((k for k in ("warning", "error", "note") if text.startswith(k + ":")),
                    "best" if text.endswith("*best*") else None)
        return f"\033[{COLOURS[kind]}m{text}\033[0m" if kind else text

    def _to_log(self, text: str) -> None:
        if self.log_path is not None and self.run_dir.is_dir():
            with open(self.log_path, "a") as f:
                f.write(text + "\n")

    def log_event(self, rec: dict) -> dict:
        rec = {"at": round(time.time(), 3), **rec}
        with open(self.run_dir / "metrics.jsonl", "a") as f:
            f.write(json.dumps(rec) + "\n")
        return rec

    # -- a training step --------------------------------------------------------------------
    def step(self, rec: dict, step: int) -> None:
        """metrics.jsonl always; TensorBoard and a console line every ``train.log_step``."""
        c = self.cfg.train
        rec["rss"], rec["peak_rss"] = rss_now()
        self.stamps.append((self.log_event(rec)["at"], step))
        self.memory(rec, step)
        logged = step % c.log_step == 0 or step == 1
        if rec["event"] != "skip" and logged and self.tb:
            self.tb.train_step(rec, step)
        self.progress(rec, step)

    def progress(self, rec: dict, step: int) -> None:
        """On a terminal one tqdm bar line, updated in place and cut to the terminal's width
        (never wrapping), with a plain record above it every ``log_step``; elsewhere only the
        plain records."""
        c = self.cfg.train
        if rec["event"] == "skip":
            self.say(f"step {rec['step']}: skipped ({rec['reason']}, {rec['in_a_row']} in a "
                     f"row)")
            return
        rate, eta = rate_and_eta(self.stamps, c.total_step)
        lo = rec["loss"]
        terms = (f"mel {lo['mel']:.3f} post {lo['postnet_mel']:.3f} d {lo['duration']:.3f} "
                 f"p {lo['pitch']:.3f} e {lo['energy']:.3f}")
        text = (f"step {step}/{c.total_step} ep {rec['epoch']} loss {lo['total']:.4f} "
                f"({terms}) lr {rec['lr']:.2e} |g| {rec['grad_norm']:.2f} "
                f"{rec['time']['step'] * 1e3:.0f} ms {rec['frames_per_s']:.0f} fr/s "
                f"ETA {hms(eta)}")
        logged = step % c.log_step == 0 or step == 1
        if self.tty:
            self._bar(step, f"ETA {hms(eta)} · "
                      + (f"{rate:.2f} steps/s · " if rate else "")
                      + f"loss {lo['total']:.4f} · {terms} · lr {rec['lr']:.1e}")
            if logged:                   # a short record above the bar, within the width
                short = (f"step {step}/{c.total_step} loss {lo['total']:.4f} ETA {hms(eta)} "
                         f"({terms})")
                self.bar.write(self.paint(fit(short, self._width())), file=self.out)
        elif logged:
            print(text, file=self.out, flush=True)
        if logged:
            self._to_log(text)

    def _width(self) -> int:
        import shutil
        return shutil.get_terminal_size((80, 24)).columns

    def _bar(self, step: int, text: str) -> None:
        from tqdm import tqdm
        total = self.cfg.train.total_step
        if self.bar is None:
            self.bar = tqdm(total=total, initial=step, file=self.out, dynamic_ncols=True,
                            bar_format="step {n_fmt}/{total_fmt} {bar:16} {desc}", leave=True,
                            colour="green" if self.colour else None, mininterval=0)
        self.bar.n = step
        self.bar.set_description_str(text, refresh=False)
        self.bar.refresh()

    def memory(self, rec: dict, step: int) -> None:
        """Once, after the first steps (the compile is over): the banner's plan against the
        measured peak RSS."""
        if self.memory_plan is None or step != self.steps_at_start + 2 or "peak_rss" not in rec:
            return
        m = self.memory_plan
        planned = m["weights"] + m["grads"] + m["adam"] + m["activations"]
        self.log_event({"event": "memory", "step": step, "planned": planned,
                        "peak_rss": rec["peak_rss"]})
        self.say(f"memory: planned {gib(planned)}, measured peak RSS {gib(rec['peak_rss'])} "
                 f"(step {step}; the plan counts tensors, RSS also the libraries and caches)")

    # -- validation -------------------------------------------------------------------------
    def validation(self, rec: dict, improved: bool) -> None:
        if "warning" in rec:
            self.say(f"warning: {rec['warning']}")
        self.log_event(rec)
        v = rec["loss"]
        if self.tb:
            self.tb.validation(v, rec["step"])
        best = "  *best*" if improved else ""
        full = (f"validation @ step {rec['step']}: loss {v['total']:.4f} "
                f"(mel {v['mel']:.4f}, postnet {v['postnet_mel']:.4f}, "
                f"pitch {v['pitch']:.4f}, energy {v['energy']:.4f}, "
                f"duration {v['duration']:.4f}){best}")
        short = (f"val @ {rec['step']}: loss {v['total']:.4f} (mel {v['mel']:.3f} "
                 f"post {v['postnet_mel']:.3f} d {v['duration']:.3f} p {v['pitch']:.3f} "
                 f"e {v['energy']:.3f}){best}")
        self.say(full, short)

    def sample(self, model, b, step: int, sentences=()) -> None:
        """Into ``samples/step-N/`` and TensorBoard: the first utterance of validation batch
        ``b`` (None: none this time; the trainer gives it every ``train.synth_step``),
        teacher-forced (a mel figure, target over prediction, time in seconds, frequency in Hz,
        colour bar; Griffin-Lim audio of the prediction), and each of ``sentences`` ([(label,
        Phonemised, ids)], ``train.sample_sentences``) free-running — predicted durations,
        pitch and energy — as a mel figure and Griffin-Lim audio. Once per run, the same
        Griffin-Lim of the *target* mel (``samples/<id>-target.wav``, TensorBoard
        ``audio/target`` at the first sample), so a listener can tell the vocoder's artefacts
        (there in the target too) from the model's errors. No per-file normalisation."""
        from scipy.io import wavfile

        from fastcpu import plots
        from fastcpu.autograd import no_grad
        from fastcpu.data import features
        root = self.run_dir / "samples"
        d = root / f"step-{step:08d}"
        d.mkdir(parents=True, exist_ok=True)

        def wav_out(path, wav):
            wavfile.write(path, features.SR, (np.clip(wav, -1.0, 1.0) * 32767).astype(np.int16))
        fig, audio = None, {}
        if b is not None:
            one = b.one(0)
            model.eval()
            try:
                with no_grad():
                    out = model.forward_batch(one)
            finally:
                model.train()
            pred, target = out.postnet_mel.numpy()[0, :one.max_mel_len], one.mels[0]
            uid = one.ids[0]
            fig = plots.mel_figure(target, pred,
                                   f"{uid}, step {step} (validation, teacher-forced)")
            audio["prediction"] = features.griffin_lim(pred, normalise=False)
            once = root / f"{uid}-target.wav"
            if not once.exists():
                audio["target"] = features.griffin_lim(np.asarray(target, np.float32),
                                                       normalise=False)
                wav_out(once, audio["target"])
            (d / f"{uid}.png").write_bytes(plots.to_png(fig))
            wav_out(d / f"{uid}-prediction.wav", audio["prediction"])
        free = []
        if sentences:
            from fastcpu.text import pad_ids
            texts, lens = pad_ids([x for _, _, x in sentences])
            model.eval()
            try:
                with no_grad():
                    o = model.infer(texts, lens)
            finally:
                model.train()
            for i, (label, ph, _) in enumerate(sentences):
                mel = o.postnet_mel.numpy()[i, :int(o.mel_lens[i])]
                if len(mel) < 2:
                    continue
                ffig = plots.mel_one(mel, f"{label}, step {step} (free-running): {ph.text[:60]}")
                wav = features.griffin_lim(mel, normalise=False)
                (d / f"{label}.png").write_bytes(plots.to_png(ffig))
                wav_out(d / f"{label}.wav", wav)
                free.append((label, plots.to_rgb(ffig), wav))
        if self.tb:
            self.tb.sample(None if fig is None else plots.to_rgb(fig), audio, features.SR, step,
                           free)

    # -- profile ----------------------------------------------------------------------------
    def profile(self, prof, steps: int, step: int) -> None:
        d = self.run_dir / "profile"
        d.mkdir(exist_ok=True)
        table = prof.table(steps)
        (d / "table.txt").write_text(table + "\n")
        prof.write_chrome_trace(d / "trace.json")
        self.say(f"profile of {steps} step(s) (open {d / 'trace.json'} in ui.perfetto.dev):\n"
                 + table)
        self.log_event({"event": "profile", "step": step, "table": str(d / "table.txt"),
                        "trace": str(d / "trace.json"), "sum_ops_s": sum(
                            v[1] for v in prof.summary().values()), "wall_s": prof.wall})
