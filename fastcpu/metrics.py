"""Objective speech metrics: mel-cepstral distortion (MCD) with DTW, F0 RMSE and voicing error.

MCD is computed the way speech papers and ESPnet's evaluation do it:

    1. WORLD analysis (pyworld): F0 by ``harvest`` at a 5 ms frame period, the spectral
       envelope by ``cheaptrick`` (fft size from the sample rate);
    2. mel-cepstrum of order 24 with frequency-warping constant alpha = 0.455 at 22.05 kHz
       (SPTK's ``sp2mc``, via pysptk) — 25 coefficients c0..c24 per frame;
    3. c0 (the frame's energy) dropped;
    4. the two sequences aligned by DTW over the Euclidean distance of their mel-cepstra;
    5. MCD = 10 / ln(10) * sqrt(2 * sum_{d=1..24} (c_ref[d] - c_gen[d])^2), averaged over the
       aligned frame pairs, in dB.

F0 RMSE (Hz) is taken over the DTW-aligned frame pairs that both sides call voiced; the voicing
(V/UV) error is the fraction of aligned pairs whose voicing differs.

DTW is exact (O(N*M), ``dtw_path``): the sequences here are seconds long (a few hundred frames at
5 ms), where an exact path costs milliseconds and an approximate one (fastdtw) would add its own
error to the metric.
"""
from __future__ import annotations

import math

import numpy as np

MCEP_ORDER = 24
ALPHA_22K = 0.455
FRAME_PERIOD_MS = 5.0
MCD_CONST = 10.0 / math.log(10.0) * math.sqrt(2.0)


def alpha_for(sr: int) -> float:
    """The all-pass constant commonly used at a sample rate (0.455 at 22.05 kHz)."""
    table = {8000: 0.31, 16000: 0.42, 22050: 0.455, 24000: 0.466, 44100: 0.544, 48000: 0.554}
    if sr not in table:
        raise ValueError(f"no frequency-warping constant for {sr} Hz (known: "
                         f"{', '.join(map(str, table))})")
    return table[sr]


def world_features(wav: np.ndarray, sr: int):
    """-> (f0 (T,), mel-cepstrum (T, 25)) of one waveform by WORLD + SPTK."""
    from fastcpu.data.features import import_without_pkg_resources, pyworld
    pysptk = import_without_pkg_resources("pysptk", "for MCD: pip install -e '.[eval]'")
    pw = pyworld()
    x = np.asarray(wav, np.float64)
    f0, t = pw.harvest(x, sr, frame_period=FRAME_PERIOD_MS)
    sp = pw.cheaptrick(x, f0, t, sr)
    mc = pysptk.sp2mc(sp, order=MCEP_ORDER, alpha=alpha_for(sr))
    return f0, mc


def dtw_path(a: np.ndarray, b: np.ndarray):
    """Exact DTW between sequences a (N, D) and b (M, D) under the Euclidean distance, steps
    (1, 0), (0, 1), (1, 1): -> (index pairs (K, 2), total cost)."""
    from fastcpu.kernels._dtw import accumulate
    d = np.sqrt(np.maximum(((a[:, None, :] - b[None, :, :]) ** 2).sum(-1), 0.0))
    acc = accumulate(d)
    i, j = len(a) - 1, len(b) - 1
    path = [(i, j)]
    while i > 0 or j > 0:
        if i == 0:
            j -= 1
        elif j == 0:
            i -= 1
        else:
            k = int(np.argmin((acc[i - 1, j - 1], acc[i - 1, j], acc[i, j - 1])))
            i, j = (i - 1, j - 1) if k == 0 else (i - 1, j) if k == 1 else (i, j - 1)
        path.append((i, j))
    return np.array(path[::-1]), float(acc[-1, -1])


def mcd_aligned(c_ref: np.ndarray, c_gen: np.ndarray) -> float:
    """MCD (dB) of two already aligned mel-cepstrum sequences (K, 24), c0 already dropped."""
    diff = np.asarray(c_ref, np.float64) - np.asarray(c_gen, np.float64)
    return float(MCD_CONST * np.mean(np.sqrt((diff * diff).sum(-1))))


def compare_wavs(ref, gen, sr: int, aligned: bool = False) -> dict:
    """{"mcd_db", "f0_rmse_hz", "vuv_error", "frames"} of a generated waveform against a
    reference (see the module doc). Either side may be given as its ``world_features`` already
    computed (an (f0, mcep) pair). ``aligned``: the two are frame-aligned already (a
    teacher-forced prediction of the same length), so frame k meets frame k and there is no
    DTW."""
    f0r, mcr = ref if isinstance(ref, tuple) else world_features(ref, sr)
    f0g, mcg = gen if isinstance(gen, tuple) else world_features(gen, sr)
    if aligned:
        k = np.arange(min(len(mcr), len(mcg)))
        path = np.stack([k, k], 1)
    else:
        path, _ = dtw_path(mcr[:, 1:], mcg[:, 1:])
    a, b = path[:, 0], path[:, 1]
    mcd = mcd_aligned(mcr[a, 1:], mcg[b, 1:])
    vr, vg = f0r[a] > 0, f0g[b] > 0
    both = vr & vg
    f0_rmse = float(np.sqrt(np.mean((f0r[a][both] - f0g[b][both]) ** 2))) if both.any() else \
        float("nan")
    return {"mcd_db": mcd, "f0_rmse_hz": f0_rmse, "vuv_error": float(np.mean(vr != vg)),
            "frames": int(len(path))}


# ARPAbet phones produced with the vocal folds vibrating: the vowels (any stress) and the voiced
# consonants. Pitch errors are taken over these; the unvoiced consonants and the silences carry
# only the corpus's interpolated pitch, which is nothing a listener hears.
VOICED_VOWELS = ("AA", "AE", "AH", "AO", "AW", "AY", "EH", "ER", "EY", "IH", "IY", "OW", "OY",
                 "UH", "UW")
VOICED_CONSONANTS = ("B", "D", "DH", "G", "JH", "L", "M", "N", "NG", "R", "V", "W", "Y", "Z",
                     "ZH")


def voiced_phones(symbols) -> np.ndarray:
    """Boolean mask over a symbol table: True for the voiced ARPAbet phones ("@AH0", "@B", ...)."""
    voiced = set(VOICED_CONSONANTS)
    out = np.zeros(len(symbols), bool)
    for i, s in enumerate(symbols):
        if s.startswith("@"):
            p = s[1:]
            out[i] = p in voiced or p.rstrip("012") in VOICED_VOWELS
    return out
