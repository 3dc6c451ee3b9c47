"""Feature extraction against librosa (STFT, mel filter bank, log-mel, energy) and pyworld
(pitch), and the reference's per-utterance steps (alignment rounding, phone averaging)."""
import numpy as np
import pytest

from fastcpu.data import features as F

librosa = pytest.importorskip("librosa")


def signal(seconds=1.5, seed=0):
    rng = np.random.default_rng(seed)
    t = np.arange(int(F.SR * seconds)) / F.SR
    f = 140 + 60 * t                                   # a gliding voiced tone + noise
    y = 0.4 * np.sin(2 * np.pi * np.cumsum(f) / F.SR) + 0.2 * np.sin(
        2 * np.pi * 3 * np.cumsum(f) / F.SR)
    y[int(0.6 * F.SR):int(0.8 * F.SR)] = 0.0           # an unvoiced gap
    return (y + 0.02 * rng.standard_normal(len(t))).astype(np.float32)


def test_mel_filterbank_matches_librosa():
    ref = librosa.filters.mel(sr=22050, n_fft=1024, n_mels=80, fmin=0, fmax=8000)
    ours = F.mel_filterbank()
    assert ours.shape == ref.shape == (80, 513)
    assert np.abs(ours - ref).max() <= 1e-5 * np.abs(ref).max()


def test_stft_magnitude_matches_librosa():
    y = signal()
    ref = np.abs(librosa.stft(y, n_fft=1024, hop_length=256, win_length=1024, window="hann",
                              center=True, pad_mode="reflect"))
    ours = F.stft_magnitude(y)
    assert ours.shape == ref.shape == (513, 1 + len(y) // 256)
    assert np.abs(ours - ref).max() <= 1e-5 * ref.max()


def test_log_mel_and_energy_match_the_reference_formulas():
    y = signal(seed=1)
    mag = np.abs(librosa.stft(y, n_fft=1024, hop_length=256, win_length=1024, window="hann",
                              center=True, pad_mode="reflect")).astype(np.float64)
    fb = librosa.filters.mel(sr=22050, n_fft=1024, n_mels=80, fmin=0, fmax=8000)
    mel_ref = np.log(np.maximum(fb @ mag, 1e-5))
    mel, energy = F.mel_and_energy(y)
    assert np.abs(mel - mel_ref).max() <= 1e-4          # log domain: 1e-4 absolute
    assert np.abs(energy - np.linalg.norm(mag, axis=0)).max() <= 1e-5 * energy.max()


def test_pitch_is_pyworld_dio_plus_stonemask_at_the_hop():
    pw = F.pyworld()
    y = signal(seed=2)
    x = y.astype(np.float64)
    f0, t = pw.dio(x, 22050, frame_period=256 / 22050 * 1000)
    ref = pw.stonemask(x, f0, t, 22050)
    ours = F.pitch(y)
    np.testing.assert_array_equal(ours, ref)
    assert len(ours) == 1 + len(y) // 256
    voiced = ours[ours > 0]                             # and it found the glide
    assert len(voiced) > 0.5 * len(ours) and 120 < np.median(voiced) < 240


def test_alignment_rounds_absolute_times_and_trims_silences():
    ivs = [(0.0, 0.1, "sil"), (0.1, 0.2, "HH"), (0.2, 0.25, "sp"), (0.25, 0.4, "AY1"),
           (0.4, 0.9, "sp")]
    phones, dur, start, end = F.alignment(ivs)
    assert phones == ["HH", "sp", "AY1"] and (start, end) == (0.1, 0.4)
    edges = np.round(np.array([0.1, 0.2, 0.25, 0.4]) * 22050 / 256)
    np.testing.assert_array_equal(dur, np.diff(edges))


def test_phone_average_and_unvoiced_interpolation():
    f0 = np.array([0, 0, 100, 0, 0, 200, 0], dtype=float)
    np.testing.assert_allclose(F.interpolate_unvoiced(f0),
                               [100, 100, 100, 100 + 100 / 3, 100 + 200 / 3, 200, 200])
    avg = F.phone_average(np.arange(6, dtype=np.float32), np.array([2, 0, 3, 1]))
    np.testing.assert_allclose(avg, [0.5, 0.0, 3.0, 5.0])
    assert avg.dtype == np.float32


def test_process_utterance_cuts_features_to_the_durations():
    y = signal(seconds=1.2, seed=3)
    ivs = [(0.0, 0.05, "sil"), (0.05, 0.3, "AA1"), (0.3, 0.55, "sp"), (0.55, 1.0, "OW1"),
           (1.0, 1.2, "sil")]
    f = F.process_utterance(y, ivs)
    assert f.phones == ["AA1", "sp", "OW1"]
    assert f.mel.shape == (int(f.duration.sum()), 80) and f.mel.dtype == np.float32
    assert f.pitch.shape == f.energy.shape == (3,) and np.isfinite(f.pitch).all()
    with pytest.raises(F.SkipUtterance):
        F.process_utterance(y, [(0.0, 1.0, "sil")])
