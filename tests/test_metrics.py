"""Objective metrics (fastcpu.metrics): the DTW recurrence against its plain-Python spec, MCD's
formula on known perturbations, the whole pipeline against an independent one (librosa's DTW)
on real-shaped speech, identical signals scoring 0."""
import math

import numpy as np
import pytest

from fastcpu import metrics
from fastcpu.kernels import _dtw

from fastcpu.data.features import import_without_pkg_resources  # noqa: E402

pysptk = import_without_pkg_resources("pysptk", "for MCD")


def test_dtw_accumulation_matches_its_spec():
    rng = np.random.default_rng(0)
    for shape in [(1, 1), (1, 5), (7, 1), (9, 13), (20, 20)]:
        d = rng.random(shape)
        np.testing.assert_allclose(_dtw.accumulate(d), _dtw.accumulate_reference(d),
                                   rtol=1e-12)


def test_dtw_path_is_monotone_and_exact_on_a_time_stretch():
    rng = np.random.default_rng(1)
    a = rng.standard_normal((30, 4))
    b = np.repeat(a, 2, axis=0)                      # every frame twice: a perfect alignment
    path, cost = metrics.dtw_path(a, b)
    assert cost == pytest.approx(0.0, abs=1e-12)
    assert tuple(path[0]) == (0, 0) and tuple(path[-1]) == (29, 59)
    steps = np.diff(path, axis=0)
    assert ((steps >= 0) & (steps <= 1)).all() and (steps.sum(1) >= 1).all()


def test_mcd_formula_on_known_perturbations():
    rng = np.random.default_rng(2)
    c = rng.standard_normal((50, 24))
    assert metrics.mcd_aligned(c, c) == 0.0
    delta = np.zeros(24)
    delta[3] = 0.1                                   # one coefficient off by 0.1 everywhere
    want = 10 / math.log(10) * math.sqrt(2 * 0.1 ** 2)
    assert metrics.mcd_aligned(c, c + delta) == pytest.approx(want, rel=1e-12)
    delta = np.full(24, 0.05)
    assert metrics.mcd_aligned(c, c - delta) == pytest.approx(
        10 / math.log(10) * math.sqrt(2 * 24 * 0.05 ** 2), rel=1e-12)


@pytest.fixture(scope="module")
def speech():
    """Two renderings of one bundled-corpus utterance (Griffin-Lim at 4 and 32 iterations):
    the same words, different detail."""
    from fastcpu.data import BUNDLED_CORPUS, PreprocessedCorpus
    from fastcpu.data import features as F
    mel = PreprocessedCorpus(BUNDLED_CORPUS, "val.txt").load(0)["mel"].astype(np.float32)
    return (F.griffin_lim(mel, 32, momentum=0.99), F.griffin_lim(mel, 4, seed=3), F.SR)


def test_identical_signals_score_zero(speech):
    ref, _, sr = speech
    r = metrics.compare_wavs(ref, ref, sr)
    assert r["mcd_db"] == 0.0 and r["f0_rmse_hz"] == 0.0 and r["vuv_error"] == 0.0


def test_mcd_against_an_independent_pipeline(speech):
    """pyworld + pysptk + librosa's DTW, written out here: the same MCD within 2%."""
    import librosa

    from fastcpu.data.features import pyworld
    pw = pyworld()
    ref, gen, sr = speech
    ours = metrics.compare_wavs(ref, gen, sr)

    def mcep(x):
        x = x.astype(np.float64)
        f0, t = pw.harvest(x, sr, frame_period=5.0)
        return pysptk.sp2mc(pw.cheaptrick(x, f0, t, sr), order=24, alpha=0.455)[:, 1:]
    a, b = mcep(ref), mcep(gen)
    _, wp = librosa.sequence.dtw(a.T, b.T, metric="euclidean")
    wp = wp[::-1]
    diff = a[wp[:, 0]] - b[wp[:, 1]]
    theirs = 10 / np.log(10) * np.mean(np.sqrt(2 * (diff ** 2).sum(1)))
    assert 1.0 < theirs < 20.0                       # a real, non-trivial distortion
    assert ours["mcd_db"] == pytest.approx(theirs, rel=0.02)
    assert 0 <= ours["vuv_error"] < 0.5 and np.isfinite(ours["f0_rmse_hz"])
