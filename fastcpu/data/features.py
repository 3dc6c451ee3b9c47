"""Acoustic features exactly as the reference computes them (spec §6.2), in NumPy/SciPy.

* STFT: centred, reflect-padded (512 each side), periodic Hann window, n_fft = win = 1024,
  hop 256 -> ``1 + n // 256`` frames, 513 bins, magnitude ``sqrt(re^2 + im^2)``.
* Mel: Slaney-scale, Slaney-area-normalised filter bank, 80 bins, 0-8000 Hz at 22050 Hz;
  ``ln(max(mel, 1e-5))``.
* Energy: L2 norm of the linear magnitude over the 513 bins of each frame.
* Pitch: WORLD ``dio`` (frame period = hop) refined by ``stonemask`` (pyworld), unvoiced
  frames linearly interpolated from the voiced ones (constant at the ends).
* Phone-level averaging of pitch and energy over each phone's frames (0 for a 0-frame phone).

``process_utterance(wav, intervals)`` runs the reference's ``process_utterance`` on one
utterance: alignment (leading/trailing silences trimmed, durations from absolute-time frame
rounding), audio trimmed to the speech, features cut to ``sum(durations)`` frames.
"""
from __future__ import annotations

import functools
import sys
import types
from dataclasses import dataclass

import numpy as np

SR, N_FFT, HOP, WIN, N_MELS, FMIN, FMAX = 22050, 1024, 256, 1024, 80, 0.0, 8000.0
LOG_FLOOR = 1e-5
SILENCES = ("sil", "sp", "spn")


class SkipUtterance(Exception):
    """The reference skips this utterance (no speech between the silences, or <= 1 voiced
    frame); the message says which."""


def hann_periodic(n: int = WIN) -> np.ndarray:
    k = np.arange(n)
    return 0.5 - 0.5 * np.cos(2.0 * np.pi * k / n)


def stft(wav: np.ndarray) -> np.ndarray:
    """Complex STFT [513, 1 + n // 256] in float64 (centred, reflect padding, periodic Hann)."""
    wav = np.asarray(wav, dtype=np.float64)
    if wav.ndim != 1:
        raise ValueError(f"wav must be 1-D, got shape {wav.shape}")
    if len(wav) <= N_FFT // 2:
        raise ValueError(f"wav has {len(wav)} samples; reflect padding needs more than "
                         f"{N_FFT // 2}")
    padded = np.pad(wav, N_FFT // 2, mode="reflect")
    frames = np.lib.stride_tricks.sliding_window_view(padded, N_FFT)[::HOP]
    return np.fft.rfft(frames * hann_periodic(N_FFT), axis=1).T


def stft_magnitude(wav: np.ndarray) -> np.ndarray:
    """|STFT| as [513, frames] float32."""
    return np.abs(stft(wav)).astype(np.float32)


def _hz_to_mel(f):
    """Slaney mel scale: linear below 1 kHz (3 mels per 200 Hz), logarithmic above."""
    f = np.asarray(f, dtype=np.float64)
    lin = f / (200.0 / 3)
    log = 15.0 + np.log(np.maximum(f, 1e-10) / 1000.0) / (np.log(6.4) / 27.0)
    return np.where(f >= 1000.0, log, lin)


def _mel_to_hz(m):
    m = np.asarray(m, dtype=np.float64)
    lin = m * (200.0 / 3)
    log = 1000.0 * np.exp((np.log(6.4) / 27.0) * (m - 15.0))
    return np.where(m >= 15.0, log, lin)


@functools.lru_cache(maxsize=4)
def mel_filterbank(sr: int = SR, n_fft: int = N_FFT, n_mels: int = N_MELS, fmin: float = FMIN,
                   fmax: float = FMAX) -> np.ndarray:
    """Triangular filters on the Slaney mel scale, each scaled to unit area (2 / bandwidth in
    Hz) -> [n_mels, 1 + n_fft // 2] float32 (read-only, cached)."""
    edges = _mel_to_hz(np.linspace(_hz_to_mel(fmin), _hz_to_mel(fmax), n_mels + 2))
    bins = np.linspace(0.0, sr / 2.0, 1 + n_fft // 2)
    width = np.diff(edges)
    rising = (bins[None, :] - edges[:-2, None]) / width[:-1, None]
    falling = (edges[2:, None] - bins[None, :]) / width[1:, None]
    w = np.maximum(0.0, np.minimum(rising, falling))
    w *= (2.0 / (edges[2:] - edges[:-2]))[:, None]
    w = w.astype(np.float32)
    w.setflags(write=False)
    return w


def mel_and_energy(wav: np.ndarray):
    """-> (log-mel [80, frames] float32, energy [frames] float32) of a float wav in [-1, 1]."""
    mag = stft_magnitude(np.clip(wav, -1.0, 1.0))
    mel = np.log(np.maximum(mel_filterbank() @ mag, LOG_FLOOR)).astype(np.float32)
    energy = np.sqrt(np.sum(mag.astype(np.float64) ** 2, axis=0)).astype(np.float32)
    return mel, energy


def import_without_pkg_resources(name: str, hint: str):
    """Import ``name`` (pyworld 0.3.5, pysptk 1.0.1), which still import the removed
    ``pkg_resources`` (for a version string, an example file's path): a stand-in with those two
    calls is provided for the import when setuptools no longer ships it."""
    import importlib
    try:
        return importlib.import_module(name)
    except ModuleNotFoundError as e:
        if e.name != "pkg_resources":
            raise ModuleNotFoundError(f"{name} is needed {hint}", name=name) from None
    import importlib.metadata as md
    import importlib.resources as res
    shim = types.ModuleType("pkg_resources")
    shim.get_distribution = lambda dist: types.SimpleNamespace(version=md.version(dist))
    shim.resource_filename = lambda pkg, path: str(res.files(pkg) / path)
    sys.modules["pkg_resources"] = shim
    try:
        return importlib.import_module(name)
    finally:
        del sys.modules["pkg_resources"]


def pyworld():
    """Import pyworld (see ``import_without_pkg_resources``)."""
    return import_without_pkg_resources("pyworld", "for pitch: pip install -e '.[data]'")


@dataclass(frozen=True)
class PitchOptions:
    """How frame-level F0 is found. The defaults are the reference's: pyworld ``dio`` with its
    default search range (71-800 Hz) and ``stonemask``. ``harvest`` is pyworld's slower, more
    robust estimator; ``f0_range`` bounds the search to the speaker's range;
    ``unvoiced_from_alignment`` marks the frames of phones that are unvoiced by definition
    (S SH F TH HH T K P CH) as unvoiced, where estimators find spurious F0 in noise."""
    method: str = "dio"
    f0_range: tuple = (71.0, 800.0)
    unvoiced_from_alignment: bool = False

    def __post_init__(self):
        if self.method not in ("dio", "harvest"):
            raise ValueError(f"pitch method: expected dio or harvest, got {self.method!r}")
        lo, hi = self.f0_range
        if not 0 < lo < hi:
            raise ValueError(f"f0 range: expected 0 < LO < HI, got {lo} {hi}")


REFERENCE_PITCH = PitchOptions()
UNVOICED = frozenset({"S", "SH", "F", "TH", "HH", "T", "K", "P", "CH"})


def pitch(wav: np.ndarray, opts: PitchOptions = REFERENCE_PITCH) -> np.ndarray:
    """Frame-level F0 in Hz (0 = unvoiced) at a frame period of one hop: dio + stonemask (the
    reference), or harvest + stonemask."""
    pw = pyworld()
    x = np.ascontiguousarray(wav, dtype=np.float64)
    lo, hi = (float(v) for v in opts.f0_range)
    period = HOP / SR * 1000
    if opts.method == "harvest":
        f0, t = pw.harvest(x, SR, f0_floor=lo, f0_ceil=hi, frame_period=period)
    elif opts == REFERENCE_PITCH:
        f0, t = pw.dio(x, SR, frame_period=period)      # exactly the reference's call
    else:
        f0, t = pw.dio(x, SR, f0_floor=lo, f0_ceil=hi, frame_period=period)
    return pw.stonemask(x, f0, t, SR)


def mask_unvoiced_phones(f0: np.ndarray, phones, durations) -> np.ndarray:
    """F0 with the frames of phones unvoiced by definition set to 0 (unvoiced)."""
    f0 = f0.copy()
    pos = 0
    for p, d in zip(phones, durations):
        if p.rstrip("012") in UNVOICED:
            f0[pos:pos + d] = 0
        pos += d
    return f0


def interpolate_unvoiced(f0: np.ndarray) -> np.ndarray:
    voiced = np.nonzero(f0 != 0)[0]
    return np.interp(np.arange(len(f0)), voiced, f0[voiced])


def phone_average(x: np.ndarray, durations: np.ndarray) -> np.ndarray:
    """Mean of each phone's frames (0 where the duration is 0), in x's dtype."""
    out = np.zeros(len(durations), dtype=x.dtype)
    pos = 0
    for i, d in enumerate(durations):
        if d > 0:
            out[i] = np.mean(x[pos:pos + d])
        pos += d
    return out


def alignment(intervals):
    """Reference ``get_alignment``: [(start_s, end_s, phone)] -> (phones, durations in frames,
    start_s, end_s). Leading and trailing silences are dropped; a phone's duration is
    ``round(end * SR / HOP) - round(start * SR / HOP)`` (absolute rounding, half to even)."""
    phones, durs = [], []
    start_time = end_time = 0.0
    end_idx = 0
    for s, e, p in intervals:
        if not phones and p in SILENCES:
            continue
        if not phones:
            start_time = s
        phones.append(p)
        if p not in SILENCES:
            end_time, end_idx = e, len(phones)
        durs.append(int(np.round(e * SR / HOP) - np.round(s * SR / HOP)))
    return phones[:end_idx], np.array(durs[:end_idx], dtype=np.int64), start_time, end_time


def peak_normalise(wav: np.ndarray) -> np.ndarray:
    """``wav / max(|wav|)`` in float32: the reference's alignment preparation
    (``prepare_align``) rewrites every corpus wav as ``wav / max(|wav|) * 32768`` in int16 and
    extracts its features from those files, so each utterance peaks at full scale whatever its
    recording level. Done here as a float operation: no int16 rounding, and no wrap of the
    positive full-scale sample (the reference's cast turns +32768 into -32768). A silent wav is
    returned as it is."""
    wav = np.asarray(wav, dtype=np.float32)
    peak = np.float32(np.max(np.abs(wav))) if wav.size else np.float32(0)
    return wav / peak if peak > 0 else wav


@dataclass
class Features:
    phones: list
    duration: np.ndarray   # int64 [N]
    pitch: np.ndarray      # float64 [N], Hz (not normalised)
    energy: np.ndarray     # float32 [N] (not normalised)
    mel: np.ndarray        # float32 [T, 80], T == duration.sum()


def process_utterance(wav: np.ndarray, intervals,
                      pitch_opts: PitchOptions = REFERENCE_PITCH) -> Features:
    """The reference's per-utterance preprocessing (phone-level pitch and energy).
    ``wav``: float samples at 22050 Hz in [-1, 1]; ``intervals``: [(start_s, end_s, phone)]."""
    phones, dur, start, end = alignment(intervals)
    if start >= end:
        raise SkipUtterance("no phone between the leading and trailing silences")
    wav = np.asarray(wav, dtype=np.float32)[int(SR * start):int(SR * end)]
    n = int(dur.sum())
    f0 = pitch(wav, pitch_opts)[:n]
    if pitch_opts.unvoiced_from_alignment:
        f0 = mask_unvoiced_phones(f0, phones, dur)
    if np.sum(f0 != 0) <= 1:
        raise SkipUtterance("at most one voiced frame")
    mel, energy = mel_and_energy(wav)
    if mel.shape[1] < n:
        raise SkipUtterance(f"durations sum to {n} frames but the audio has {mel.shape[1]}")
    mel, energy = mel[:, :n], energy[:n]
    f0 = phone_average(interpolate_unvoiced(f0), dur)
    return Features(phones, dur, f0, phone_average(energy, dur), np.ascontiguousarray(mel.T))


# ------------------------------------------------------------------ back to audio (samples)

def istft(spec: np.ndarray, length: int) -> np.ndarray:
    """Inverse of the centred STFT (complex [513, frames]) by windowed overlap-add."""
    frames = np.fft.irfft(spec.T, n=N_FFT, axis=1) * hann_periodic(N_FFT)
    n = N_FFT + HOP * (frames.shape[0] - 1)
    out, norm = np.zeros(n), np.zeros(n)
    w2 = hann_periodic(N_FFT) ** 2
    for i, f in enumerate(frames):
        out[i * HOP:i * HOP + N_FFT] += f
        norm[i * HOP:i * HOP + N_FFT] += w2
    out /= np.where(norm > 1e-8, norm, 1.0)
    return out[N_FFT // 2:N_FFT // 2 + length]


def griffin_lim(log_mel: np.ndarray, n_iter: int = 32, seed: int = 0,
                normalise: bool = True, momentum: float = 0.0) -> np.ndarray:
    """Log-mel [T, 80] -> float32 waveform: linear magnitude from the filter bank's
    pseudo-inverse (clipped at 0), phase by Griffin-Lim. For listening to samples, not a
    vocoder. ``momentum`` > 0 is the fast variant (Perraudin, Balazs and Søndergaard 2013:
    each phase estimate extrapolated from the previous one; 0.99 is usual), which needs far
    fewer iterations. ``normalise``: scaled to a 0.9 peak; else at the level the mel gives (the
    corpus wavs are peak-normalised, so about [-1, 1])."""
    if n_iter < 0 or not 0 <= momentum < 1:
        raise ValueError(f"griffin_lim: n_iter >= 0 and 0 <= momentum < 1, got {n_iter}, "
                         f"{momentum}")
    fb = mel_filterbank().astype(np.float64)
    mag = np.maximum(np.linalg.pinv(fb) @ np.exp(np.asarray(log_mel, np.float64).T), 0.0)
    length = HOP * (mag.shape[1] - 1)
    if length <= N_FFT // 2:          # 2-3 frames: too short to re-analyse; no phase iterations
        n_iter = 0
    phase = np.exp(2j * np.pi * np.random.default_rng(seed).random(mag.shape))
    y = istft(mag * phase, length)
    previous = np.zeros_like(phase)
    for _ in range(n_iter):
        spec = stft(y)[:, :mag.shape[1]]
        est = spec - (momentum / (1 + momentum)) * previous if momentum else spec
        previous = spec
        y = istft(mag * est / np.maximum(np.abs(est), 1e-12), length)
    peak = np.max(np.abs(y)) if len(y) else 0.0
    if not normalise:
        return y.astype(np.float32)
    return (y / peak * 0.9 if peak > 0 else y).astype(np.float32)
