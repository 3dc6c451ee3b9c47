"""python -m fastcpu.evaluate over two wav folders, and the held-out test split."""
import json
import subprocess
import sys

import numpy as np
import pytest
from scipy.io import wavfile


def evaluate(*args):
    return subprocess.run([sys.executable, "-m", "fastcpu.evaluate", *args], capture_output=True,
                          text=True, timeout=600)


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    from fastcpu.data import BUNDLED_CORPUS, PreprocessedCorpus
    from fastcpu.data import features as F
    val = PreprocessedCorpus(BUNDLED_CORPUS, "val.txt")
    root = tmp_path_factory.mktemp("wavs")
    (root / "a").mkdir()
    (root / "b").mkdir()
    for i in range(2):
        mel = val.load(i)["mel"].astype(np.float32)
        for d, it in (("a", 32), ("b", 4)):
            wav = F.griffin_lim(mel, it, momentum=0.99)
            wavfile.write(root / d / f"u{i}.wav", F.SR, (wav * 32767).astype(np.int16))
    return root


def test_a_folder_against_itself_scores_zero(folders, tmp_path):
    r = evaluate("--ref-wavs", str(folders / "a"), "--gen-wavs", str(folders / "a"), "--out",
                 str(tmp_path))
    assert r.returncode == 0, r.stderr
    s = json.loads((tmp_path / "summary.json").read_text())
    assert s == {"mcd_db": 0.0, "f0_rmse_hz": 0.0, "vuv_error": 0.0, "n_pairs": 2}
    assert (tmp_path / "metrics.csv").read_text().count("\n") == 3
    r = evaluate("--ref-wavs", str(folders / "a"), "--gen-wavs", str(folders / "b"), "--out",
                 str(tmp_path / "ab"))
    assert r.returncode == 0, r.stderr
    assert json.loads((tmp_path / "ab" / "summary.json").read_text())["mcd_db"] > 1.0


def test_bad_folders_are_one_line(folders, tmp_path):
    (tmp_path / "other").mkdir()
    wavfile.write(tmp_path / "other" / "x.wav", 22050, np.zeros(4000, np.int16))
    wavfile.write(tmp_path / "other" / "u0.wav", 16000, np.zeros(4000, np.int16))
    for gen, want in [(tmp_path / "nowhere", "no such directory"),
                      (tmp_path / "other", "16000 Hz, but")]:
        r = evaluate("--ref-wavs", str(folders / "a"), "--gen-wavs", str(gen), "--out",
                     str(tmp_path / "o"))
        assert r.returncode == 2 and want in r.stderr and r.stderr.count("\n") == 1, r.stderr
    (tmp_path / "none").mkdir()
    wavfile.write(tmp_path / "none" / "zz.wav", 22050, np.zeros(4000, np.int16))
    r = evaluate("--ref-wavs", str(folders / "a"), "--gen-wavs", str(tmp_path / "none"),
                 "--out", str(tmp_path / "o"))
    assert r.returncode == 2 and "no file name in common" in r.stderr


def test_the_builder_holds_out_a_test_split(tmp_path):
    pytest.importorskip("fastcpu.data.espeak")
    from fastcpu.data import PreprocessedCorpus
    from fastcpu.data.espeak_corpus import build
    build(tmp_path / "c", n=10, val_size=2, test_size=3, log=None)
    parts = {n: (tmp_path / "c" / n).read_text().splitlines() for n in
             ("train.txt", "val.txt", "test.txt")}
    assert [len(parts[n]) for n in ("train.txt", "val.txt", "test.txt")] == [5, 2, 3]
    ids = [line.split("|")[0] for p in parts.values() for line in p]
    assert len(set(ids)) == 10                             # disjoint, all used
    assert len(PreprocessedCorpus(tmp_path / "c", "test.txt")) == 3
