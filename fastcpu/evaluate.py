"""Objective evaluation of a checkpoint over a corpus split, or of two folders of wavs.

    python -m fastcpu.evaluate --checkpoint runs/demo/checkpoints/final.safetensors --out eval/
    python -m fastcpu.evaluate --checkpoint CKPT --data-dir DIR --split test --mode free --out eval/
    python -m fastcpu.evaluate --ref-wavs DIR --gen-wavs DIR --out eval/

**A checkpoint** (``--checkpoint``) is scored over a split of its corpus (``--split val`` by
default; ``test`` is the held-out ``test.txt`` that ``preprocess --test-size`` writes), per
utterance and in total:

- ``mcd_db``: mel-cepstral distortion (``fastcpu.metrics``: WORLD + SPTK mel-cepstrum of order 24,
  c0 dropped). Both the prediction and the target mel are turned into audio by the same vocoder
  (Griffin-Lim by default, or ``--vocoder hifigan``), so the distance is the acoustic model's
  and the vocoder's own error is on both sides. ``--mode teacher`` (target durations: the frames
  align one to one) or ``free`` (inference: aligned by DTW);
- ``duration_mae_frames``: |predicted - target| duration per phone, in frames;
- ``pitch_rmse_hz``: phone-level pitch denormalised with the corpus statistics, over the voiced
  phones (vowels and voiced consonants);
- ``energy_mae``: phone-level energy denormalised, over all phones;
- ``loss``: the five teacher-forced loss terms and their total, each averaged over all frames
  (mel) or phones (the others) of the split: the validation loss of training.

Phone-level predictions are compared with the targets directly in both modes. Writes
``metrics.csv`` (one row per utterance) and ``summary.json`` (``mcd_db``,
``duration_mae_frames``, ``pitch_rmse_hz``, ``energy_mae``: pooled over the split, MCD the mean
over utterances; ``loss``; ``n_utterances``; what was scored) and prints a table.

**Two folders of wavs** (``--ref-wavs``/``--gen-wavs``), paired by file name, are scored with MCD
(DTW), F0 RMSE over the frames both call voiced and the voicing error: ``summary.json`` has
``mcd_db``, ``f0_rmse_hz``, ``vuv_error`` (means over the pairs) and ``n_pairs``. For vocoders and
for the outputs of other systems.

Bad input — a checkpoint that does not fit the corpus (symbols, speakers, statistics, mel bins),
a split the corpus does not have, folders without common names or at different sample rates —
is one line naming it, exit status 2.
"""
from __future__ import annotations

import argparse
import csv
import json
import sys
import time
from pathlib import Path

import numpy as np


class EvalError(ValueError):
    pass


def _read(path: Path):
    from scipy.io import wavfile
    try:
        sr, x = wavfile.read(path)
    except (OSError, ValueError) as e:
        raise EvalError(f"{path}: not a readable wav ({e})") from None
    if x.ndim != 1:
        raise EvalError(f"{path}: {x.shape[1]} channels; mono wavs expected")
    if np.issubdtype(x.dtype, np.integer):
        x = x.astype(np.float64) / float(np.iinfo(x.dtype).max)
    return sr, x.astype(np.float64)


def pair_wavs(ref_dir, gen_dir) -> list:
    ref_dir, gen_dir = Path(ref_dir), Path(gen_dir)
    for d in (ref_dir, gen_dir):
        if not d.is_dir():
            raise EvalError(f"{d}: no such directory")
    ref = {p.name for p in ref_dir.glob("*.wav")}
    gen = {p.name for p in gen_dir.glob("*.wav")}
    common = sorted(ref & gen)
    if not common:
        raise EvalError(f"{ref_dir} ({len(ref)} wavs) and {gen_dir} ({len(gen)} wavs) have no "
                        f"file name in common")
    return [(ref_dir / n, gen_dir / n) for n in common]


def score_wav_folders(ref_dir, gen_dir, log=print) -> tuple:
    from fastcpu import metrics
    rows = []
    for k, (r, g) in enumerate(pair_wavs(ref_dir, gen_dir), 1):
        sr_r, x = _read(r)
        sr_g, y = _read(g)
        if sr_r != sr_g:
            raise EvalError(f"{g}: {sr_g} Hz, but {r} is {sr_r} Hz; resample one side first")
        m = metrics.compare_wavs(x, y, sr_r)
        rows.append({"name": r.name, **m})
        if log and k % 20 == 0:
            log(f"  {k} pairs scored")
    summary = {"mcd_db": float(np.mean([r["mcd_db"] for r in rows])),
               "f0_rmse_hz": float(np.nanmean([r["f0_rmse_hz"] for r in rows])),
               "vuv_error": float(np.mean([r["vuv_error"] for r in rows])),
               "n_pairs": len(rows)}
    return rows, summary


# ------------------------------------------------------------------------- a checkpoint

SPLITS = {"train": "train.txt", "val": "val.txt", "test": "test.txt"}
TERMS = ("mel", "postnet_mel", "pitch", "energy", "duration")


def open_split(cfg, data_dir, split: str):
    """-> the corpus split a checkpoint is scored on (its own corpus unless ``data_dir``)."""
    from fastcpu.data import BUNDLED_CORPUS, DataError, PreprocessedCorpus
    root = Path(data_dir) if data_dir else Path(cfg.data.path) if cfg.data.path else \
        BUNDLED_CORPUS
    if not (root / SPLITS[split]).is_file():
        have = [k for k, f in SPLITS.items() if (root / f).is_file()]
        hint = " (python -m fastcpu.preprocess --test-size N writes one)" if split == "test" \
            else ""
        raise EvalError(f"{root}: no {split} split ({SPLITS[split]}; the corpus has "
                        f"{', '.join(have) or 'no split files'}){hint}")
    try:
        return PreprocessedCorpus(root, SPLITS[split])
    except DataError as e:
        raise EvalError(str(e)) from None


def check_fit(path, cfg, info: dict, ds) -> None:
    """A checkpoint and a corpus split belong together: symbol table, speakers, statistics, mel
    bins. EvalError naming the first mismatch."""
    from fastcpu.data import SYMBOLS
    if cfg.model.n_mel_channels != 80:
        raise EvalError(f"{path}: a model of {cfg.model.n_mel_channels} mel bins; the corpus "
                        f"{ds.root} has 80")
    if list(info.get("symbols") or SYMBOLS) != list(SYMBOLS):
        raise EvalError(f"{path}: trained with another symbol table ({len(info['symbols'])} "
                        f"symbols) than the corpus reader's ({len(SYMBOLS)})")
    top = max(max(u.phones) for u in ds.utts)
    if top >= cfg.model.n_src_vocab:
        raise EvalError(f"{ds.split}: phone id {top} is outside the checkpoint's "
                        f"{cfg.model.n_src_vocab}-symbol embedding")
    spk = info.get("speakers")
    if spk is not None:
        wrong = [n for n, i in ds.speakers.items() if spk.get(n) != i]
        if wrong:
            raise EvalError(f"{ds.root / 'speakers.json'}: speaker {wrong[0]!r} is "
                            f"{ds.speakers[wrong[0]]} here, but "
                            f"{spk.get(wrong[0], 'unknown')} to the checkpoint {path} (trained "
                            f"on another corpus?)")
    n_spk = cfg.model.n_speakers if cfg.model.multi_speaker else None
    if n_spk is not None and max(ds.speakers.values()) >= n_spk:
        raise EvalError(f"{ds.root / 'speakers.json'}: speaker id "
                        f"{max(ds.speakers.values())}, but the checkpoint has {n_spk} speakers")
    stats = info.get("stats")
    for k in ("pitch", "energy"):
        if stats and not np.allclose(stats[k], ds.stats[k], rtol=1e-6, atol=1e-9):
            raise EvalError(f"{ds.root / 'stats.json'}: {k} statistics {ds.stats[k]} differ "
                            f"from the {stats[k]} the checkpoint {path} was trained with "
                            f"(another corpus, or preprocessed again?)")


class Vocode:
    """Mel -> waveform for MCD, the same on both sides: Griffin-Lim (fixed seed, so a mel always
    gives the same audio) or a HiFi-GAN generator. Caches the targets' WORLD features, which do
    not change between checkpoints (``select`` scores many with one of these)."""

    def __init__(self, hifigan=None, gl_iters: int = 32):
        self.hifigan, self.gl_iters, self.targets = hifigan, gl_iters, {}
        self.name = "hifigan" if hifigan is not None else f"griffin-lim ({gl_iters} iterations)"

    def wav(self, mel):
        from fastcpu.data import features as F
        if self.hifigan is not None:
            return np.asarray(self.hifigan(mel), np.float64)
        return F.griffin_lim(mel, self.gl_iters, normalise=False, momentum=0.99).astype(
            np.float64)

    def features(self, mel):
        from fastcpu import metrics
        from fastcpu.data import features as F
        return metrics.world_features(self.wav(mel), F.SR)

    def target(self, key, mel):
        if key not in self.targets:
            self.targets[key] = self.features(mel)
        return self.targets[key]


def _rounded(log_d: np.ndarray) -> np.ndarray:
    """Predicted durations in frames as inference makes them: round(exp(log d) - 1), >= 0."""
    return np.maximum(np.round(np.exp(log_d.astype(np.float64)) - 1), 0)


def score_checkpoint(path, data_dir=None, split: str = "val", mode: str = "teacher",
                     vocode: Vocode | None = None, loaded=None, log=print) -> tuple:
    """-> (rows, summary) of a checkpoint over a split (see the module doc). ``loaded``: the
    (model, cfg, meta) of ``synthesize.load_model`` already in hand."""
    from fastcpu import metrics
    from fastcpu.autograd import no_grad
    from fastcpu.data import Batcher, collate
    from fastcpu.data.features import SR
    from fastcpu.synthesize import SynthError, load_model, synthesis_info
    if mode not in ("teacher", "free"):
        raise EvalError(f"--mode {mode}: teacher or free")
    try:
        model, cfg, meta = loaded or load_model(path)
    except SynthError as e:
        raise EvalError(str(e)) from None
    info = synthesis_info(cfg, meta, path, log=log)
    ds = open_split(cfg, data_dir, split)
    check_fit(path, cfg, info, ds)
    stats = ds.stats
    p_std, e_std = stats["pitch"][3], stats["energy"][3]     # errors: differences * std
    voiced = metrics.voiced_phones(info.get("symbols") or _symbols())
    vocode = vocode or Vocode()
    batches = Batcher(len(ds), ds.text_lengths(), cfg.train.batch_size, 1, 0, drop_last=False,
                      shuffle=False).epoch_batches(0)
    rows, pooled = [], {"d": [], "p": [], "e": []}
    sums, frames, phones = dict.fromkeys(TERMS, 0.0), 0, 0
    model.eval()
    t0 = time.time()
    for idx in batches:
        b = collate([ds.load(int(i)) for i in idx])
        with no_grad():
            o = model.forward_batch(b)
            f = model.infer(b.texts, b.text_lens, b.speakers) if mode == "free" else o
        post, mel = o.postnet_mel.numpy(), o.mel.numpy()
        log_d, pitch, energy = o.log_duration.numpy(), o.pitch.numpy(), o.energy.numpy()
        # phone-level predictions as the mode makes them (duration and pitch come out the same
        # in both: their predictors see the encoder alone; energy sees the pitch embedding)
        f_post, f_energy, f_pitch = f.postnet_mel.numpy(), f.energy.numpy(), f.pitch.numpy()
        f_dur = f.duration_rounded if mode == "free" else _rounded(log_d)
        for i in range(len(b)):
            n, T = int(b.text_lens[i]), int(b.mel_lens[i])
            tgt = b.mels[i, :T]
            terms = {"mel": np.abs(mel[i, :T] - tgt).mean(),
                     "postnet_mel": np.abs(post[i, :T] - tgt).mean(),
                     "pitch": np.mean((pitch[i, :n] - b.pitches[i, :n]) ** 2),
                     "energy": np.mean((energy[i, :n] - b.energies[i, :n]) ** 2),
                     "duration": np.mean((log_d[i, :n] - np.log(b.durations[i, :n] + 1.0))
                                         ** 2)}
            for k, v in terms.items():
                sums[k] += float(v) * (T if k in ("mel", "postnet_mel") else n)
            d_err = np.abs(f_dur[i, :n] - b.durations[i, :n])
            v = voiced[b.texts[i, :n]]
            p_err = (f_pitch[i, :n] - b.pitches[i, :n])[v] * p_std
            e_err = np.abs(f_energy[i, :n] - b.energies[i, :n]) * e_std
            pooled["d"].append(d_err)
            pooled["p"].append(p_err)
            pooled["e"].append(e_err)
            if mode == "free":
                T_gen = int(f.mel_lens[i])
                gen = f_post[i, :T_gen]
            else:
                T_gen, gen = T, post[i, :T]
            if T_gen >= 2:
                m = metrics.compare_wavs(vocode.target((str(ds.root), b.ids[i]), tgt),
                                         vocode.features(gen), SR, aligned=mode == "teacher")
                mcd = m["mcd_db"]
            else:
                mcd = float("nan")                   # nothing to vocode (an untrained model)
            rows.append({"id": b.ids[i], "phones": n, "frames": T, "frames_generated": T_gen,
                         "mcd_db": mcd, "duration_mae_frames": float(d_err.mean()),
                         "pitch_rmse_hz": float(np.sqrt(np.mean(p_err ** 2))) if v.any()
                         else float("nan"),
                         "energy_mae": float(e_err.mean()),
                         **{f"loss_{k}": float(x) for k, x in terms.items()}})
        frames, phones = frames + b.frames, phones + b.phones
        if log and len(rows) % 32 < len(b) and len(rows) < len(ds):
            log(f"  {len(rows)}/{len(ds)} utterances ({time.time() - t0:.0f} s)")
    loss = {k: sums[k] / (frames if k in ("mel", "postnet_mel") else phones) for k in TERMS}
    mcds = [r["mcd_db"] for r in rows if np.isfinite(r["mcd_db"])]
    p = np.concatenate(pooled["p"])
    summary = {"mcd_db": float(np.mean(mcds)) if mcds else float("nan"),
               "duration_mae_frames": float(np.concatenate(pooled["d"]).mean()),
               "pitch_rmse_hz": float(np.sqrt(np.mean(p ** 2))) if len(p) else float("nan"),
               "energy_mae": float(np.concatenate(pooled["e"]).mean()),
               "loss": {"total": sum(loss.values()), **loss},
               "n_utterances": len(rows),
               "checkpoint": str(path), "step": int(meta.get("state", {}).get("step", 0)),
               "split": split, "corpus": str(ds.root), "mode": mode, "vocoder": vocode.name,
               "seconds": round(time.time() - t0, 1)}
    if len(mcds) < len(rows):
        summary["mcd_skipped"] = len(rows) - len(mcds)
    return rows, summary


def _symbols():
    from fastcpu.data import SYMBOLS
    return SYMBOLS


def table(summary: dict, rows: list, worst: int = 5) -> str:
    """The one-screen text table of a checkpoint's scores."""
    s = summary
    lines = [f"{s['checkpoint']} (step {s['step']}): {s['split']} split of {s['corpus']}, "
             f"{s['n_utterances']} utterances, {s['mode']} mode, {s['vocoder']}",
             "",
             f"  MCD                {s['mcd_db']:8.3f} dB" + (
                 f"   ({s['mcd_skipped']} too short to score)" if s.get("mcd_skipped") else ""),
             f"  duration MAE       {s['duration_mae_frames']:8.3f} frames",
             f"  pitch RMSE         {s['pitch_rmse_hz']:8.3f} Hz (voiced phones)",
             f"  energy MAE         {s['energy_mae']:8.3f}",
             "  loss " + "  ".join(f"{k} {v:.4f}" for k, v in s["loss"].items())]
    bad = sorted((r for r in rows if np.isfinite(r["mcd_db"])), key=lambda r: -r["mcd_db"])
    if len(bad) > 1:
        lines += ["", "  highest MCD: " + ", ".join(f"{r['id']} {r['mcd_db']:.2f}"
                                                     for r in bad[:worst])]
    return "\n".join(lines)


def write(out, rows, summary) -> None:
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    with open(out / "metrics.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    (out / "summary.json").write_text(json.dumps(json_safe(summary), indent=1) + "\n")


def json_safe(v):
    """NaN (a metric with nothing to average) as null: summary.json stays standard JSON."""
    if isinstance(v, dict):
        return {k: json_safe(x) for k, x in v.items()}
    if isinstance(v, list):
        return [json_safe(x) for x in v]
    return None if isinstance(v, float) and not np.isfinite(v) else v


def main(argv=None) -> int:
    from fastcpu.cli import add_version
    from fastcpu.synthesize import add_vocoder_args
    ap = argparse.ArgumentParser(prog="python -m fastcpu.evaluate",
                                 description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    add_version(ap)
    ap.add_argument("--checkpoint", help="a fastcpu checkpoint to score over a corpus split")
    ap.add_argument("--data-dir", help="the corpus (default: the one the checkpoint was "
                                       "trained on)")
    ap.add_argument("--split", choices=list(SPLITS), default="val")
    ap.add_argument("--mode", choices=["teacher", "free"], default="teacher",
                    help="teacher: target durations (frames align); free: inference, DTW")
    add_vocoder_args(ap)                # mel -> audio for MCD, the same for both sides
    ap.add_argument("--threads", type=int, default=0, help="0: every core")
    ap.add_argument("--ref-wavs", help="reference wavs (with --gen-wavs, instead of "
                                       "--checkpoint)")
    ap.add_argument("--gen-wavs", help="generated wavs, paired with --ref-wavs by file name")
    ap.add_argument("--out", required=True, help="output directory")
    a = ap.parse_args(argv)
    try:
        if a.checkpoint:
            if a.ref_wavs or a.gen_wavs:
                raise EvalError("--checkpoint or --ref-wavs/--gen-wavs, not both")
            return _checkpoint_main(a)
        if not (a.ref_wavs and a.gen_wavs):
            raise EvalError("give --checkpoint CKPT, or --ref-wavs DIR and --gen-wavs DIR")
        rows, summary = score_wav_folders(a.ref_wavs, a.gen_wavs)
    except EvalError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    write(a.out, rows, summary)
    print(f"{summary['n_pairs']} pairs: MCD {summary['mcd_db']:.2f} dB, F0 RMSE "
          f"{summary['f0_rmse_hz']:.1f} Hz, V/UV error {summary['vuv_error']:.1%}")
    return 0


def vocoder_of(a) -> Vocode:
    from fastcpu.synthesize import SynthError, _vocoder
    if a.griffin_lim_iters < 0:
        raise EvalError("--griffin-lim-iters must be >= 0")
    try:
        return Vocode(_vocoder(a), a.griffin_lim_iters)
    except SynthError as e:
        raise EvalError(str(e)) from None


def _checkpoint_main(a) -> int:
    from fastcpu import runtime
    with runtime.threads(a.threads or None):
        rows, summary = score_checkpoint(a.checkpoint, a.data_dir, a.split, a.mode,
                                         vocoder_of(a),
                                         log=lambda m: print(m, file=sys.stderr))
    write(a.out, rows, summary)
    print(table(summary, rows))
    print(f"\nwrote {Path(a.out) / 'metrics.csv'} and summary.json")
    return 0


if __name__ == "__main__":
    from fastcpu.cli import entry
    sys.exit(entry(main))
