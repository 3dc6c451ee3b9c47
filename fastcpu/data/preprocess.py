"""Preprocess a raw corpus in the LJSpeech layout into the reference's preprocessed layout, on
the CPU (the reference's STFT is hard-wired to CUDA).

    python -m fastcpu.preprocess --corpus RAW --out DIR [--textgrids TG_DIR]
        [--speaker LJSpeech] [--val-size 512] [--seed 1234] [--workers N] [--overwrite]
        [--no-peak-normalise]

Input: ``RAW/metadata.csv`` (``id|raw text|normalised text``), ``RAW/wavs/<id>.wav`` and MFA
TextGrids ``<id>.TextGrid`` (looked for in ``--textgrids``, else ``RAW/TextGrid``,
``RAW/TextGrid/<speaker>``). Utterances without a TextGrid are skipped and counted, as the
reference does; MFA 2.x's empty intervals are silences (``sp``) instead of being dropped.
Features are the reference's (``fastcpu.data.features``); a wav at another sample rate is
resampled to 22050 Hz with a polyphase filter (the reference uses librosa's). Each wav is first
divided by its peak, as the reference's alignment preparation does before it extracts features
(``wav / max|wav|``; ``--no-peak-normalise`` reads the wavs at their recorded level). Every
bad input is one error naming the file (and line): a malformed metadata line, a missing wav, a TextGrid
without a ``phones`` tier, a phone outside the 361-symbol table. Nothing is written unless the
whole corpus succeeds.
"""
from __future__ import annotations

import argparse
import multiprocessing
import os
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from math import gcd
from pathlib import Path

import numpy as np

from fastcpu.data import features as F
from fastcpu.data import textgrid
from fastcpu.data.dataset import DataError
from fastcpu.data.layout import CorpusWriter
from fastcpu.data.symbols import SYMBOL_TO_ID


def read_wav(path) -> np.ndarray:
    """-> float32 mono samples at 22050 Hz in [-1, 1] (int16 / 32768, like librosa.load)."""
    from scipy.io import wavfile
    from scipy.signal import resample_poly
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: no such wav")
    try:
        sr, x = wavfile.read(path)
    except (ValueError, OSError) as e:
        raise DataError(f"{path}: unreadable wav ({e})") from None
    if x.dtype == np.int16:
        x = x.astype(np.float32) / 32768.0
    elif x.dtype == np.int32:
        x = (x.astype(np.float64) / 2 ** 31).astype(np.float32)
    elif x.dtype == np.uint8:
        x = (x.astype(np.float32) - 128.0) / 128.0
    else:
        x = x.astype(np.float32)
    if x.ndim == 2:
        x = x.mean(axis=1, dtype=np.float32)
    if sr != F.SR:
        g = gcd(int(sr), F.SR)
        x = resample_poly(x, F.SR // g, int(sr) // g).astype(np.float32)
    return x


def read_metadata(path) -> list:
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: no such file (expected metadata.csv: id|raw text|"
                        f"normalised text)")
    out = []
    for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        parts = line.split("|")
        if len(parts) < 2 or not parts[0].strip():
            raise DataError(f"{path}:{n}: expected 'id|raw text|normalised text', got "
                            f"{line[:60]!r}")
        text = parts[2] if len(parts) > 2 and parts[2].strip() else parts[1]
        out.append((parts[0].strip(), " ".join(text.lower().split())))
    if not out:
        raise DataError(f"{path}: no utterances")
    return out


def _job(args):
    base, wav_path, tg_path, normalise, pitch_opts = args
    ivs = textgrid.phone_intervals(tg_path)
    for s, e, p in ivs:
        if p not in F.SILENCES and "@" + p not in SYMBOL_TO_ID:
            raise DataError(f"{tg_path}: unknown phone {p!r} at {s:.3f}-{e:.3f} s (not in the "
                            f"361-symbol table)")
    try:
        wav = read_wav(wav_path)
        return base, F.process_utterance(F.peak_normalise(wav) if normalise else wav, ivs,
                                         pitch_opts), None
    except F.SkipUtterance as e:
        return base, None, str(e)


def find_textgrid(base, dirs):
    for d in dirs:
        p = d / f"{base}.TextGrid"
        if p.is_file():
            return p
    return None


def preprocess(corpus, out, textgrids=None, speaker="LJSpeech", val_size=512, seed=1234,
               workers=None, overwrite=False, log=print, peak_normalise=True,
               pitch_opts=F.REFERENCE_PITCH, front_end=None, test_size=0) -> dict:
    """``front_end`` ({"kind": ...}, see ``CorpusWriter.finish``): the front end the alignments'
    phones came from; default CMUdict (MFA's English lexicons are ARPAbet)."""
    corpus = Path(corpus)
    if not corpus.is_dir():
        raise DataError(f"{corpus}: corpus directory not found")
    meta = read_metadata(corpus / "metadata.csv")
    dirs = ([Path(textgrids)] if textgrids else
            [corpus / "TextGrid", corpus / "TextGrid" / speaker])
    if textgrids and not dirs[0].is_dir():
        raise DataError(f"{textgrids}: TextGrid directory not found")
    jobs, missing = [], []
    texts = dict(meta)
    for base, _ in meta:
        wav = corpus / "wavs" / f"{base}.wav"
        if not wav.is_file():
            raise DataError(f"{wav}: missing (listed in {corpus / 'metadata.csv'})")
        tg = find_textgrid(base, dirs)
        if tg is None:
            missing.append(base)
        else:
            jobs.append((base, wav, tg, peak_normalise, pitch_opts))
    if not jobs:
        raise DataError(f"no TextGrids for any utterance of {corpus} (looked in "
                        f"{', '.join(str(d) for d in dirs)})")
    workers = workers or min(len(jobs), os.cpu_count() or 1)
    skipped = []
    t0 = time.time()
    with CorpusWriter(out, overwrite=overwrite) as w:
        # spawn, not fork: the caller may already run BLAS/OpenMP thread pools
        ex = (ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn"))
              if workers > 1 else None)
        try:
            results = (ex.map(_job, jobs, chunksize=8) if ex else map(_job, jobs))
            for i, (base, feats, why) in enumerate(results, 1):
                if feats is None:
                    skipped.append((base, why))
                else:
                    w.add(base, speaker, texts[base], feats)
                if log and i % 500 == 0:
                    log(f"  {i}/{len(jobs)} utterances ({time.time() - t0:.0f} s)")
        finally:
            if ex:
                ex.shutdown(cancel_futures=True)
        summary = w.finish(val_size, seed, front_end or {"kind": "lexicon", "lexicon": "cmudict"},
                           test_size)
    summary["skipped"], summary["missing_textgrid"] = skipped, missing
    return summary


def front_end_record(kind: str, lexicon=None, voice: str = "en-us") -> dict:
    """The ``front_end.json`` of a corpus (see ``CorpusWriter.finish``)."""
    if kind == "espeak":
        return {"kind": "espeak", "voice": voice}
    if lexicon is None:
        return {"kind": "lexicon", "lexicon": "cmudict"}
    import hashlib
    p = Path(lexicon)
    if not p.is_file():
        raise DataError(f"{p}: lexicon file not found")
    return {"kind": "lexicon", "lexicon": {"name": p.name, "path": str(p.resolve()),
                                           "sha256": hashlib.sha256(p.read_bytes()).hexdigest()}}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m fastcpu.preprocess",
                                 description=__doc__.split("\n\n")[0])
    from fastcpu.cli import add_version
    add_version(ap)
    ap.add_argument("--corpus", required=True, help="raw corpus (metadata.csv + wavs/)")
    ap.add_argument("--out", required=True, help="output directory (preprocessed layout)")
    ap.add_argument("--textgrids", help="directory of MFA TextGrids (<id>.TextGrid)")
    ap.add_argument("--speaker", default="LJSpeech", help="speaker name (default LJSpeech)")
    ap.add_argument("--val-size", type=int, default=512, help="utterances in val.txt")
    ap.add_argument("--test-size", type=int, default=0,
                    help="utterances held out in test.txt for evaluation (default 0: none, as "
                         "the reference's layout)")
    ap.add_argument("--seed", type=int, default=1234, help="train/val split seed")
    ap.add_argument("--workers", type=int, default=None, help="processes (default: cores)")
    ap.add_argument("--overwrite", action="store_true", help="replace an existing --out")
    ap.add_argument("--no-peak-normalise", dest="peak_normalise", action="store_false",
                    help="keep each wav's recorded level (default: divide it by its peak, as "
                         "the reference's prepare_align step does)")
    ap.add_argument("--pitch", choices=["dio", "harvest"], default="dio",
                    help="F0 estimator: dio (the reference's) or harvest (slower, fewer errors)")
    ap.add_argument("--f0-range", nargs=2, type=float, metavar=("LO", "HI"),
                    help="F0 search range in Hz (default: pyworld's 71-800, the reference's)")
    ap.add_argument("--unvoiced-from-alignment", action="store_true",
                    help="mark the frames of unvoiced phones (S SH F TH HH T K P CH) unvoiced "
                         "before interpolating the pitch")
    ap.add_argument("--front-end", choices=["lexicon", "espeak"], default="lexicon",
                    help="where the alignments' phones came from, recorded for synthesis: "
                         "lexicon (MFA with CMUdict or --lexicon; default) or espeak (espeak-ng)")
    ap.add_argument("--lexicon", help="the lexicon file MFA aligned with (recorded by name and "
                                      "SHA-256; synthesis uses it when it is found again)")
    ap.add_argument("--voice", default="en-us", help="espeak-ng voice of --front-end espeak")
    a = ap.parse_args(argv)
    try:
        front_end = front_end_record(a.front_end, a.lexicon, a.voice)
    except DataError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    try:
        pitch_opts = F.PitchOptions(a.pitch, tuple(a.f0_range or (71.0, 800.0)),
                                    a.unvoiced_from_alignment)
    except ValueError as e:
        ap.error(str(e))
    if a.val_size < 0 or a.test_size < 0 or (a.workers is not None and a.workers < 1):
        ap.error("--val-size and --test-size must be >= 0 and --workers >= 1")
    try:
        s = preprocess(a.corpus, a.out, a.textgrids, a.speaker, a.val_size, a.seed,
                       a.workers, a.overwrite, peak_normalise=a.peak_normalise,
                       pitch_opts=pitch_opts, front_end=front_end, test_size=a.test_size)
    except DataError as e:                     # bad input: exit 2, as the trainer
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(f"wrote {a.out}: {s['utterances']} utterances ({s['hours']:.2f} h); "
          f"{len(s['skipped'])} skipped, {len(s['missing_textgrid'])} without a TextGrid; "
          + ("each wav divided by its peak" if a.peak_normalise
             else "wavs at their recorded level"))
    for base, why in s["skipped"][:20]:
        print(f"  skipped {base}: {why}")
    return 0


if __name__ == "__main__":
    from fastcpu.cli import entry
    sys.exit(entry(main))
