"""Text to speech from a trained checkpoint.

    python -m fastcpu.synthesize --checkpoint runs/demo/checkpoints/best.safetensors \\
        --text "The quick brown fox jumps over the lazy dog." --out out/
    python -m fastcpu.synthesize --checkpoint CKPT --source sentences.txt --out out/
    python -m fastcpu.synthesize --checkpoint CKPT --phonemes "{HH AH0 L OW1}" --out out/

``--source`` takes one sentence per line, or ``id|text`` lines; a text in braces is phones
(``{HH AH0 L OW1}``, as ``--phonemes``). For each sentence it writes
``<id>.wav`` (22050 Hz, 16-bit), ``<id>.npy`` (the mel, [T, 80]), ``<id>.json`` (the normalised
text, words and their phones, the predicted durations in frames and seconds, pitch in Hz and
energy per phone) and ``<id>.png`` (the mel with time and frequency axes). Sentences run in
batches (``--batch-size``) with padding masks, on every core (``--threads``).

The front end: ``espeak`` for checkpoints trained on corpora made with espeak-ng (the bundled
one), else ``lexicon`` (CMUdict, or ``--lexicon FILE``, with espeak-ng for missing words);
``--front-end`` chooses. ``--pitch-control``, ``--energy-control`` and ``--duration-control``
scale the predictions as the reference does (pitch and energy in their normalised units,
durations in frames). The vocoder is Griffin-Lim (the fast, momentum variant;
``--griffin-lim-iters``) or HiFi-GAN V1 (``--vocoder hifigan --vocoder-checkpoint FILE``: the
reference's generator weights converted once by ``python -m fastcpu.convert``).

Checkpoints carry what synthesis needs (speakers, pitch/energy statistics, the front end, the
symbol table), so no corpus directory is needed; ``python -m fastcpu.export`` makes the small
weights-only file that synthesis accepts like a full checkpoint.

Bad input — empty text, text without words, a phone outside the symbol table, an unknown
speaker, controls <= 0, a checkpoint that is not FastSpeech2 — is one line naming the sentence
(its line in ``--source``) or file; the other sentences are still written, with a summary, and
the exit status is 2.
"""
from __future__ import annotations

import argparse
import json
import re
import sys
import time
from pathlib import Path

import numpy as np


class SynthError(ValueError):
    pass


def load_model(path):
    """-> (model, config, meta) from a fastcpu checkpoint (full or weights-only)."""
    from fastcpu import checkpoint
    try:
        tensors, meta = checkpoint.load(path)
    except checkpoint.CheckpointError as e:
        raise SynthError(str(e)) from None
    return model_from(tensors, meta, path)


def model_from(tensors: dict, meta: dict, path):
    """-> (model, config, meta) from a checkpoint's contents (``checkpoint.load``); ``path``
    names it in errors."""
    from fastcpu.config import Config, ConfigError, from_dict
    from fastcpu.models import FastSpeech2
    if "config" not in meta:
        raise SynthError(f"{path}: has no run config (a reference checkpoint converted without "
                         f"--reference-config?); convert it again with its config")
    try:
        cfg = from_dict(Config, meta["config"], f"{path} config")
    except ConfigError as e:
        raise SynthError(str(e)) from None
    model = FastSpeech2(cfg.model)
    try:
        model.load_state_dict({k[6:]: v for k, v in tensors.items() if k.startswith("model/")})
    except (KeyError, ValueError) as e:
        raise SynthError(f"{path}: not a FastSpeech2 checkpoint of its own config ({e})") \
            from None
    model.eval()
    return model, cfg, meta


def synthesis_info(cfg, meta, path, log=print):
    """The checkpoint's ``synthesis`` record (speakers, stats, front end, symbols; see
    ``fastcpu.data.dataset.synthesis_record``). A checkpoint written before checkpoints carried
    it: read from its corpus if that is still there, else the bundled symbols and espeak-ng,
    with pitch and energy reported normalised — each with a note."""
    from fastcpu.data import BUNDLED_CORPUS
    from fastcpu.data.dataset import front_end_of
    from fastcpu.data.symbols import SYMBOLS
    rec = meta.get("synthesis")
    if rec:
        return rec
    root = Path(cfg.data.path) if cfg.data.path else BUNDLED_CORPUS
    try:
        stats = json.loads((root / "stats.json").read_text())
        speakers = json.loads((root / "speakers.json").read_text())
        fe = front_end_of(root, speakers)
    except (OSError, ValueError):
        log(f"note: {path} was written before checkpoints recorded what synthesis needs, and "
            f"its corpus {root} is not readable: espeak-ng front end, speaker ids only, pitch "
            f"and energy reported normalised (re-save it with a current fastcpu to fix)")
        return {"speakers": None, "stats": None, "front_end": {"kind": "espeak"},
                "symbols": list(SYMBOLS)}
    log(f"note: {path} was written before checkpoints recorded what synthesis needs; read "
        f"speakers, statistics and front end from its corpus {root}")
    return {"speakers": speakers, "stats": stats, "front_end": fe, "symbols": list(SYMBOLS)}


def read_source(path):
    """-> [(id, text, line number)] from one sentence per line or ``id|text`` lines."""
    path = Path(path)
    if not path.is_file():
        raise SynthError(f"{path}: no such file")
    out = []
    for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        uid, sep, text = line.partition("|")
        if not sep:
            uid, text = f"{len(out) + 1:04d}", line
        uid = re.sub(r"[^A-Za-z0-9_.-]+", "_", uid.strip()) or f"{len(out) + 1:04d}"
        out.append((uid, text.strip(), n))
    if not out:
        raise SynthError(f"{path}: no sentences")
    return out


def main(argv=None) -> int:
    from fastcpu.cli import add_version
    ap = argparse.ArgumentParser(prog="python -m fastcpu.synthesize",
                                 description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    add_version(ap)
    ap.add_argument("--checkpoint", required=True, help="a fastcpu checkpoint (.safetensors)")
    what = ap.add_mutually_exclusive_group(required=True)
    what.add_argument("--text", help="one sentence")
    what.add_argument("--source", help="a file: one sentence per line, or id|text lines")
    what.add_argument("--phonemes", help='phones directly, e.g. "{HH AH0 L OW1}"')
    ap.add_argument("--out", required=True, help="output directory")
    ap.add_argument("--speaker", default="0", help="speaker name or id (default 0)")
    for c in ("pitch", "energy", "duration"):
        ap.add_argument(f"--{c}-control", type=float, default=1.0,
                        help=f"scale the predicted {c} (default 1.0)")
    ap.add_argument("--front-end", choices=["auto", "espeak", "lexicon"], default="auto",
                    help="auto: espeak for corpora made with espeak-ng, else lexicon")
    ap.add_argument("--lexicon", help="a lexicon file (WORD PH ON ES per line) instead of "
                                      "CMUdict")
    add_vocoder_args(ap)
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--threads", type=int, default=0, help="0: every core")
    a = ap.parse_args(argv)
    try:
        return run(a)
    except SynthError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2


def add_vocoder_args(ap) -> None:
    """--vocoder, --vocoder-checkpoint, --griffin-lim-iters (synthesize, evaluate, select,
    compare); ``_vocoder`` reads them."""
    ap.add_argument("--vocoder", choices=["griffin-lim", "hifigan"], default="griffin-lim",
                    help="griffin-lim (default, no weights needed) or hifigan")
    ap.add_argument("--vocoder-checkpoint", metavar="FILE",
                    help="HiFi-GAN generator weights (.safetensors from python -m fastcpu.convert)")
    ap.add_argument("--griffin-lim-iters", type=int, default=32)


def _front_end(a, recorded: dict):
    """The front end: ``--front-end``, else the one the corpus was made with (the checkpoint's
    record); a recorded lexicon file is used when it is found unchanged at its path."""
    import hashlib

    from fastcpu import text
    kind = a.front_end
    if kind == "auto":
        kind = "lexicon" if a.lexicon else recorded.get("kind", "espeak")
    lexicon = a.lexicon
    lex = recorded.get("lexicon")
    if kind == "lexicon" and lexicon is None and isinstance(lex, dict):
        p = Path(lex.get("path", ""))
        if p.is_file() and hashlib.sha256(p.read_bytes()).hexdigest() == lex.get("sha256"):
            lexicon = p
        else:
            print(f"note: the corpus was aligned with lexicon {lex.get('name')}, not found "
                  f"unchanged at {p}; using CMUdict (pass --lexicon FILE)", file=sys.stderr)
    from fastcpu.data.espeak import EspeakError
    try:
        text.normalise("1 test")                  # the normalisation libraries, imported now
        record = recorded if recorded.get("kind") == kind else {"kind": kind}
        return text.front_end_for(record, lexicon if kind == "lexicon" else None)
    except (text.TextError, EspeakError) as e:
        raise SynthError(str(e)) from None
    except ImportError as e:
        raise SynthError(f"the text front ends need the synth extra: pip install "
                         f"'fastcpu[synth]' ({e}); or give --phonemes") from None


def run(a) -> int:
    from fastcpu import runtime, text
    for c in ("pitch", "energy", "duration"):
        if not getattr(a, f"{c}_control") > 0:
            raise SynthError(f"--{c}-control must be > 0, got {getattr(a, f'{c}_control')}")
    if a.batch_size < 1 or a.griffin_lim_iters < 0:
        raise SynthError("--batch-size must be >= 1 and --griffin-lim-iters >= 0")
    model, cfg, meta = load_model(a.checkpoint)
    info = synthesis_info(cfg, meta, a.checkpoint, log=lambda m: print(m, file=sys.stderr))
    stats, speakers = info["stats"], info["speakers"]
    symbol_id = {s: i for i, s in enumerate(info["symbols"])}
    speaker = _speaker(a.speaker, speakers, cfg)
    vocoder = _vocoder(a)
    if a.source:
        items = read_source(a.source)
        where = lambda n: f"{a.source}:{n}"               # noqa: E731
    else:
        items = [("utt", a.text if a.text is not None else a.phonemes, 0)]
        where = lambda n: "--text" if a.text is not None else "--phonemes"   # noqa: E731
    fe = None                                  # built when a text needs it
    ready, failed = [], []
    for uid, t, n in items:
        try:
            if not t.strip():
                raise text.TextError("empty text")
            if a.phonemes or t.strip().startswith("{"):
                ph = text.parse_phonemes(t)
            else:
                fe = fe or _front_end(a, info["front_end"])
                ph = fe(t)
            unknown = [p for p in ph.phones if "@" + p not in symbol_id]
            if unknown:
                raise text.TextError(f"phone {unknown[0]!r} is not in the checkpoint's symbol "
                                     f"table")
            ready.append((uid, ph, np.array([symbol_id["@" + p] for p in ph.phones])))
        except text.TextError as e:
            failed.append(f"{where(n)}: {e}")
            print(f"error: {where(n)}: {e}", file=sys.stderr)
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.time()
    with runtime.threads(a.threads or None):
        for start in range(0, len(ready), a.batch_size):
            _batch(model, ready[start:start + a.batch_size], speaker, a, stats, out, vocoder)
    secs = time.time() - t0
    print(f"wrote {len(ready)} sentence(s) to {out} in {secs:.1f} s"
          + (f"; {len(failed)} failed" if failed else ""))
    return 2 if failed else 0


def _speaker(value, speakers, cfg) -> int:
    if value.isdigit():
        sid = int(value)
    elif speakers and value in speakers:
        sid = int(speakers[value])
    else:
        raise SynthError(f"--speaker {value}: unknown (speakers: "
                         f"{', '.join(speakers) if speakers else 'ids only'})")
    n = cfg.model.n_speakers if cfg.model.multi_speaker else 1
    if sid >= n:
        raise SynthError(f"--speaker {value}: the checkpoint has {n} speaker(s)")
    return sid


HIFIGAN_HELP = ("HiFi-GAN weights are not bundled (they are not redistributable here): "
                "download the reference project's generator_LJSpeech.pth.tar or "
                "generator_universal.pth.tar (ming024/FastSpeech2, hifigan/), convert it once "
                "with `python -m fastcpu.convert generator_LJSpeech.pth.tar hifigan.safetensors` "
                "(needs the convert extra) and pass --vocoder-checkpoint hifigan.safetensors")


def _vocoder(a):
    """None (Griffin-Lim) or a loaded HiFi-GAN generator."""
    if a.vocoder == "griffin-lim":
        if a.vocoder_checkpoint:
            raise SynthError("--vocoder-checkpoint is for --vocoder hifigan")
        return None
    from fastcpu.models import hifigan
    if not a.vocoder_checkpoint:
        raise SynthError(f"--vocoder hifigan needs --vocoder-checkpoint. {HIFIGAN_HELP}")
    p = Path(a.vocoder_checkpoint)
    if p.name.endswith((".pth.tar", ".pth", ".pt")):
        raise SynthError(f"{p}: a PyTorch file; convert it first: python -m fastcpu.convert "
                         f"{p} {p.name.split('.')[0]}.safetensors")
    try:
        return hifigan.Generator.load(p)
    except hifigan.VocoderError as e:
        raise SynthError(str(e)) from None


def _batch(model, items, speaker, a, stats, out, vocoder=None):
    from fastcpu import plots
    from fastcpu.autograd import no_grad
    from fastcpu.data import features as F
    from scipy.io import wavfile
    from fastcpu.text import pad_ids
    texts, lens = pad_ids([ids for _, _, ids in items])
    with no_grad():
        o = model.infer(texts, lens, np.full(len(items), speaker, np.int64), a.pitch_control,
                        a.energy_control, a.duration_control)
    mels = o.postnet_mel.numpy()
    for i, (uid, ph, ids) in enumerate(items):
        T = int(o.mel_lens[i])
        mel = mels[i, :T]
        n = len(ids)
        d = o.duration_rounded[i, :n].astype(int)
        pitch = o.pitch.numpy()[i, :n].astype(float)
        energy = o.energy.numpy()[i, :n].astype(float)
        if stats:
            pitch = pitch * stats["pitch"][3] + stats["pitch"][2]
            energy = energy * stats["energy"][3] + stats["energy"][2]
        np.save(out / f"{uid}.npy", mel.astype(np.float32))
        if T < 2:
            wav = np.zeros(0, np.float32)
        elif vocoder is not None:
            wav = vocoder(mel)
        else:
            wav = F.griffin_lim(mel, a.griffin_lim_iters, normalise=False, momentum=0.99)
        wavfile.write(out / f"{uid}.wav", F.SR,
                      (np.clip(wav, -1, 1) * 32767).astype(np.int16))
        rec = {"id": uid, "text": ph.text, "words": [{"word": w, "phones": " ".join(p)}
                                                      for w, p in ph.words],
               "phones": ph.phones, "durations_frames": d.tolist(),
               "durations_s": (d * F.HOP / F.SR).round(4).tolist(),
               "pitch_hz" if stats else "pitch_normalised": np.round(pitch, 2).tolist(),
               "energy" if stats else "energy_normalised": np.round(energy, 3).tolist(),
               "frames": T, "seconds": round(len(wav) / F.SR, 3),
               "controls": {"pitch": a.pitch_control, "energy": a.energy_control,
                            "duration": a.duration_control}}
        (out / f"{uid}.json").write_text(json.dumps(rec, indent=1) + "\n")
        if T > 1:
            fig = plots.mel_one(mel, f"{uid}: {ph.text[:70]}")
            (out / f"{uid}.png").write_bytes(plots.to_png(fig))


if __name__ == "__main__":
    from fastcpu.cli import entry
    sys.exit(entry(main))
