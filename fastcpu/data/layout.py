"""Writing the reference's preprocessed layout, all-or-nothing.

``CorpusWriter`` builds the corpus in a hidden temporary directory next to the target and
renames it into place only when everything succeeded; any error removes the temporary
directory, so a failed run leaves no partial corpus. It saves each utterance's duration, mel
and raw (Hz / magnitude) phone-level pitch and energy, accumulates the outlier-filtered values
for the z-score statistics, and on ``finish`` rewrites pitch and energy normalised, writes
``stats.json`` ([min, max, mean, std], min/max of the normalised values), ``speakers.json``
``front_end.json`` (how text becomes the phones) and a seeded ``train.txt`` / ``val.txt``
split — the reference's steps (spec §6.2, 5-7) with
the population std its StandardScaler computes. Output is byte-for-byte deterministic.
"""
from __future__ import annotations

import json
import os
import random
import shutil
from pathlib import Path

import numpy as np

from fastcpu.data.dataset import KINDS, DataError
from fastcpu.data.features import Features


def remove_outlier(x: np.ndarray) -> np.ndarray:
    p25, p75 = np.percentile(x, 25), np.percentile(x, 75)
    lo, hi = p25 - 1.5 * (p75 - p25), p75 + 1.5 * (p75 - p25)
    return x[(x > lo) & (x < hi)]


class CorpusWriter:
    def __init__(self, out, overwrite: bool = False, mel_dtype=np.float32):
        self.out = Path(out)
        if self.out.exists() and not (self.out.is_dir() and not any(self.out.iterdir())):
            if not overwrite:
                raise DataError(f"{self.out}: already exists (pass --overwrite to replace it)")
        self.tmp = self.out.parent / f".{self.out.name}.tmp-{os.getpid()}"
        self.mel_dtype = np.dtype(mel_dtype)
        self.lines, self.speakers = [], {}
        self._pitch, self._energy = [], []
        self.frames = 0

    def __enter__(self):
        if self.tmp.exists():
            shutil.rmtree(self.tmp)
        for k in KINDS:
            (self.tmp / k).mkdir(parents=True)
        return self

    def __exit__(self, exc_type, exc, tb):
        if self.tmp.exists():         # an error, or finish() never reached: leave nothing
            shutil.rmtree(self.tmp)
        return False

    def add(self, basename: str, speaker: str, raw_text: str, f: Features) -> None:
        if "|" in raw_text or "\n" in raw_text:
            raw_text = " ".join(raw_text.replace("|", " ").split())
        self.speakers.setdefault(speaker, len(self.speakers))
        arrays = {"duration": f.duration.astype(np.int64), "pitch": f.pitch.astype(np.float64),
                  "energy": f.energy.astype(np.float32), "mel": f.mel.astype(self.mel_dtype)}
        for k, a in arrays.items():
            np.save(self.tmp / k / f"{speaker}-{k}-{basename}.npy", a)
        self._pitch.append(remove_outlier(arrays["pitch"]))
        self._energy.append(remove_outlier(arrays["energy"].astype(np.float64)))
        self.lines.append(f"{basename}|{speaker}|{{{' '.join(f.phones)}}}|{raw_text}")
        self.frames += int(f.duration.sum())

    def finish(self, val_size: int, seed: int = 1234, front_end: dict | None = None,
               test_size: int = 0) -> dict:
        """``front_end``: how text becomes this corpus's phones (``front_end.json``: {"kind":
        "espeak", "voice": ...} or {"kind": "lexicon", "lexicon": "cmudict" | a file's name and
        SHA-256}); synthesis and every checkpoint read it back."""
        if len(self.lines) <= val_size + test_size:
            raise DataError(f"{self.out}: only {len(self.lines)} utterances were usable; "
                            f"need more than val_size + test_size = {val_size + test_size}")
        stats = {}
        for kind, vals, dtype in (("pitch", self._pitch, np.float64),
                                  ("energy", self._energy, np.float32)):
            allv = np.concatenate(vals)
            mean, std = float(np.mean(allv)), float(np.std(allv))
            lo, hi = np.inf, -np.inf
            for p in sorted((self.tmp / kind).iterdir()):
                x = ((np.load(p) - mean) / std).astype(dtype)
                np.save(p, x)
                lo, hi = min(lo, float(x.min())), max(hi, float(x.max()))
            stats[kind] = [lo, hi, mean, std]
        (self.tmp / "stats.json").write_text(json.dumps(stats) + "\n")
        (self.tmp / "speakers.json").write_text(json.dumps(self.speakers) + "\n")
        if front_end is not None:
            (self.tmp / "front_end.json").write_text(json.dumps(front_end, sort_keys=True) + "\n")
        lines = list(self.lines)
        random.Random(seed).shuffle(lines)
        parts = [("val.txt", lines[:val_size]), ("train.txt", lines[val_size + test_size:])]
        if test_size:               # held out from both (the reference's layout has no test.txt)
            parts.append(("test.txt", lines[val_size:val_size + test_size]))
        for name, part in parts:
            (self.tmp / name).write_text("".join(x + "\n" for x in part), encoding="utf-8")
        if self.out.exists():
            shutil.rmtree(self.out)
        self.out.parent.mkdir(parents=True, exist_ok=True)
        os.replace(self.tmp, self.out)
        return {"utterances": len(self.lines), "hours": self.frames * 256 / 22050 / 3600,
                "stats": stats, "speakers": self.speakers}
