"""Build an aligned speech corpus with espeak-ng, in the reference's preprocessed layout.

    python -m fastcpu.data.espeak_corpus --out DIR [--voices en-us,en-gb] [--n 240]
        [--val-size 16] [--seed 0] [--rate 175] [--mel-dtype float32|float16]
        [--sentences FILE] [--raw RAW_DIR] [--overwrite]

Each sentence (from ``fastcpu.data.sentences`` or one per line of ``--sentences``) is spoken by
the voices in turn; espeak-ng's phoneme events give every phoneme's exact sample position, the
phonemes are mapped to the reference's ARPAbet symbols (``fastcpu.data.espeak.PHONE_MAP``) and
the features are computed as the reference does (``fastcpu.data.features``), from the
peak-normalised wav as the reference's alignment preparation writes it, except the pitch
(``ESPEAK_PITCH``): harvest over 60-400 Hz with the unvoiced phones marked from the exact
alignment, because dio's errors on synthetic speech put some phones 37 sigma from the mean
(``--reference-pitch`` keeps the reference's dio). espeak-ng speaks with an intonation range of
100 (of 100) instead of its nearly monotone default 50. Several
voices make a multi-speaker corpus (``speakers.json`` lists them). ``--raw`` also writes the
utterances in the LJSpeech layout (``metadata.csv``, ``wavs/``, MFA-style ``TextGrid/``) so
``python -m fastcpu.preprocess`` can be checked against this builder. Output is deterministic:
the same arguments give byte-identical files. Nothing is left behind on failure.

The bundled corpus (``fastcpu/data/corpus``) was made with::

    python -m fastcpu.data.espeak_corpus --out fastcpu/data/corpus --mel-dtype float16 --overwrite
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

from fastcpu.data import features as F
from fastcpu.data import sentences as S
from fastcpu.data.dataset import DataError
from fastcpu.data.espeak import Espeak, EspeakError, to_arpabet
from fastcpu.data.layout import CorpusWriter


_ES = None


def _engine():
    global _ES
    if _ES is None:
        _ES = Espeak()
    return _ES


def _synth(job):
    """In the synthesis process: speak one sentence with one voice."""
    voice, prosody, text = job
    _engine().set_voice(voice, *prosody)
    return _engine().synth(text)


def utterances(texts, voices, rate=None, pitch=None, pitch_range=None):
    """Yield (index, voice, text, int16 wav, [(start_s, end_s, phone)]) for each sentence.

    espeak-ng keeps state across utterances in its process (sample positions drift by a few
    samples from one call to the next), so synthesis runs in a fresh single-worker process: a
    build is a pure function of its arguments, and rebuilding gives byte-identical output."""
    import multiprocessing as mp
    from concurrent.futures import ProcessPoolExecutor
    with ProcessPoolExecutor(1, mp_context=mp.get_context("spawn")) as ex:
        for voice in voices:           # fail early on an unknown voice
            ex.submit(_check_voice, voice).result()
        prosody = (rate, pitch, pitch_range)
        jobs = [(voices[i % len(voices)], prosody, t) for i, t in enumerate(texts)]
        for i, ((voice, _, text), (wav, events)) in enumerate(
                zip(jobs, ex.map(_synth, jobs, chunksize=4))):
            if not events:
                raise EspeakError(f"sentence {i + 1} ({text!r}): espeak produced no phonemes")
            ivs = to_arpabet(events, len(wav), f"sentence {i + 1} ({text!r}, voice {voice})")
            yield i, voice, text, wav, [(s / F.SR, e / F.SR, p) for s, e, p in ivs]


def _check_voice(voice):
    _engine().set_voice(voice)


def speaker_name(voice: str) -> str:
    return "espeak_" + "".join(c if c.isalnum() else "_" for c in voice)


# Pitch for espeak-ng's voices: dio finds spurious 300-530 Hz F0 in the noise of HH/SH/F and
# at voicing offsets of synthetic speech (up to 37 sigma from the mean after normalisation);
# harvest over the voices' range with the unvoiced phones marked from the exact alignment
# leaves a few phones beyond 4 sigma (rising list and question intonation).
ESPEAK_PITCH = F.PitchOptions(method="harvest", f0_range=(60.0, 400.0),
                              unvoiced_from_alignment=True)
ESPEAK_PITCH_RANGE = 100          # espeak-ng's intonation range, 0-100 (its default 50)


def build(out, voices=("en-us",), n=240, val_size=16, seed=0, rate=None, mel_dtype="float32",
          sentences=None, raw=None, overwrite=False, log=print, pitch_range=ESPEAK_PITCH_RANGE,
          pitch_opts=ESPEAK_PITCH, test_size=0) -> dict:
    texts = list(sentences) if sentences is not None else S.generate(n, seed)
    texts = texts[:n]
    if raw is not None:
        raw = Path(raw)
        for sub in ("wavs", "TextGrid"):
            (raw / sub).mkdir(parents=True, exist_ok=True)
        meta = []
    skipped = []
    t0 = time.time()
    with CorpusWriter(out, overwrite=overwrite, mel_dtype=mel_dtype) as w:
        for i, voice, text, wav, ivs in utterances(texts, list(voices), rate,
                                                   pitch_range=pitch_range):
            base = f"ES{i + 1:04d}"
            try:
                feats = F.process_utterance(F.peak_normalise(wav.astype(np.float32) / 32768.0),
                                             ivs, pitch_opts)
            except F.SkipUtterance as e:
                skipped.append((base, str(e)))
                continue
            w.add(base, speaker_name(voice), text.lower(), feats)
            if raw is not None:
                from scipy.io import wavfile

                from fastcpu.data import textgrid
                wavfile.write(raw / "wavs" / f"{base}.wav", F.SR, wav)
                textgrid.write(raw / "TextGrid" / f"{base}.TextGrid", len(wav) / F.SR,
                               {"phones": ivs})
                meta.append(f"{base}|{text}|{text}")
            if log and (i + 1) % 50 == 0:
                log(f"  {i + 1}/{len(texts)} utterances ({time.time() - t0:.0f} s)")
        summary = w.finish(val_size, seed, {"kind": "espeak", "voice": list(voices)[0]},
                           test_size)
    if raw is not None:
        (raw / "metadata.csv").write_text("".join(x + "\n" for x in meta), encoding="utf-8")
    summary["skipped"] = skipped
    return summary


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m fastcpu.data.espeak_corpus",
                                 description=__doc__.split("\n\n")[0])
    from fastcpu.cli import add_version
    add_version(ap)
    ap.add_argument("--out", required=True, help="output directory (the preprocessed layout)")
    ap.add_argument("--voices", default="en-us",
                    help="comma-separated espeak-ng voices; several = multi-speaker "
                         "(default en-us)")
    ap.add_argument("--n", type=int, default=240, help="number of utterances (default 240)")
    ap.add_argument("--val-size", type=int, default=16, help="utterances in val.txt")
    ap.add_argument("--test-size", type=int, default=0,
                    help="utterances held out in test.txt (default 0: none)")
    ap.add_argument("--seed", type=int, default=0, help="sentence and split seed")
    ap.add_argument("--rate", type=int, default=None, help="speaking rate, words per minute")
    ap.add_argument("--pitch-range", type=int, default=ESPEAK_PITCH_RANGE,
                    help=f"espeak-ng's intonation range, 0-100 (default {ESPEAK_PITCH_RANGE}; "
                         f"espeak-ng's own default is 50, nearly monotone)")
    ap.add_argument("--reference-pitch", action="store_true",
                    help="pitch exactly as the reference extracts it (dio 71-800 Hz) instead of "
                         "harvest 60-400 Hz with the unvoiced phones marked from the alignment")
    ap.add_argument("--mel-dtype", choices=("float32", "float16"), default="float32")
    ap.add_argument("--sentences", help="text file, one sentence per line (default: generated)")
    ap.add_argument("--raw", help="also write wavs + TextGrids + metadata.csv here")
    ap.add_argument("--overwrite", action="store_true", help="replace an existing --out")
    a = ap.parse_args(argv)
    if a.n < 1 or a.val_size < 0 or a.test_size < 0:
        ap.error("--n must be >= 1, --val-size and --test-size >= 0")
    sents = None
    if a.sentences:
        p = Path(a.sentences)
        if not p.is_file():
            ap.error(f"--sentences {p}: no such file")
        sents = [x.strip() for x in p.read_text(encoding="utf-8").splitlines() if x.strip()]
        if not sents:
            ap.error(f"--sentences {p}: no sentences")
    try:
        s = build(a.out, [v.strip() for v in a.voices.split(",") if v.strip()], a.n,
                  a.val_size, a.seed, a.rate, a.mel_dtype, sents, a.raw, a.overwrite,
                  pitch_range=a.pitch_range,
                  pitch_opts=F.REFERENCE_PITCH if a.reference_pitch else ESPEAK_PITCH,
                  test_size=a.test_size)
    except (DataError, EspeakError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    print(f"wrote {a.out}: {s['utterances']} utterances, {s['hours'] * 60:.1f} min, speakers "
          f"{list(s['speakers'])}; {len(s['skipped'])} skipped")
    for base, why in s["skipped"]:
        print(f"  skipped {base}: {why}")
    return 0


if __name__ == "__main__":
    from fastcpu.cli import entry
    sys.exit(entry(main))
