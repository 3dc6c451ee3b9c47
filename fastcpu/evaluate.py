"""Objective evaluation.

    python -m fastcpu.evaluate --ref-wavs DIR --gen-wavs DIR --out DIR

Scores two folders of wavs paired by file name (the wavs both folders have): MCD with DTW, F0
RMSE over the frames both call voiced, and the voicing error, as ``fastcpu.metrics`` defines
them. Writes ``metrics.csv`` (one row per pair) and ``summary.json`` (``mcd_db``,
``f0_rmse_hz``, ``vuv_error``: means over the pairs; ``n_pairs``) and prints a table. For
vocoders and for the outputs of other systems.

Work in progress (issue #16): the checkpoint mode (``--checkpoint``, teacher-forced and
free-running over a split) is not here yet.
"""
from __future__ import annotations

import argparse
import csv
import json
import sys
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


def write(out, rows, summary) -> None:
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    with open(out / "metrics.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    (out / "summary.json").write_text(json.dumps(summary, indent=1) + "\n")


def main(argv=None) -> int:
    from fastcpu.cli import add_version
    ap = argparse.ArgumentParser(prog="python -m fastcpu.evaluate",
                                 description=__doc__.split("\n\n")[0])
    add_version(ap)
    ap.add_argument("--ref-wavs", required=True, help="reference wavs")
    ap.add_argument("--gen-wavs", required=True, help="generated wavs (paired by file name)")
    ap.add_argument("--out", required=True, help="output directory")
    a = ap.parse_args(argv)
    try:
        rows, summary = score_wav_folders(a.ref_wavs, a.gen_wavs)
    except EvalError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    write(a.out, rows, summary)
    print(f"{summary['n_pairs']} pairs: MCD {summary['mcd_db']:.2f} dB, F0 RMSE "
          f"{summary['f0_rmse_hz']:.1f} Hz, V/UV error {summary['vuv_error']:.1%}")
    return 0


if __name__ == "__main__":
    from fastcpu.cli import entry
    sys.exit(entry(main))
