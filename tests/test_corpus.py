"""The bundled corpus, the espeak-ng corpus builder (deterministic, exact alignments), TextGrid
reading, and `python -m fastcpu.preprocess` reproducing the builder's features from wavs and
TextGrids; every bad input one clear error and no partial output."""
import filecmp
import os
from pathlib import Path

import numpy as np
import pytest

from fastcpu.data import BUNDLED_CORPUS, PreprocessedCorpus, textgrid
from fastcpu.data import features as F
from fastcpu.data.preprocess import main as preprocess_main
from fastcpu.data.preprocess import preprocess

espeak = pytest.importorskip("fastcpu.data.espeak")
from fastcpu.data.espeak_corpus import build, main as build_main  # noqa: E402


def files(root):
    root = Path(root)
    return sorted(str(p.relative_to(root)) for p in root.rglob("*") if p.is_file())


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    """10 utterances, built once with wavs + TextGrids in the LJSpeech layout."""
    d = tmp_path_factory.mktemp("espeak")
    summary = build(d / "out", n=10, val_size=2, raw=d / "raw", log=None)
    return d, summary


def test_bundled_corpus_loads_with_every_invariant_checked():
    n = 0
    for split in ("train.txt", "val.txt"):
        c = PreprocessedCorpus(BUNDLED_CORPUS, split)
        c.validate()                       # finite values, N == len(features), sum(d) == T
        for i in range(len(c)):
            x = c.load(i)
            assert x["duration"].sum() == x["mel"].shape[0] and x["mel"].shape[1] == 80
            assert (x["duration"] >= 0).all()
        n += len(c)
    assert 200 <= n <= 400
    assert sum(p.stat().st_size for p in BUNDLED_CORPUS.rglob("*")) < 12e6


def test_bundled_corpus_is_what_the_builder_makes():
    """Rebuild the first utterances and compare phones, durations and mels with the shipped
    files (the shipped mel is float16)."""
    first = {u.basename: u for s in ("train.txt", "val.txt")
             for u in PreprocessedCorpus(BUNDLED_CORPUS, s).utts}
    from fastcpu.data import sentences
    from fastcpu.data.espeak_corpus import ESPEAK_PITCH, ESPEAK_PITCH_RANGE, utterances
    texts = sentences.generate(240, 0)[:6]
    for i, voice, text, wav, ivs in utterances(texts, ["en-us"],
                                               pitch_range=ESPEAK_PITCH_RANGE):
        base = f"ES{i + 1:04d}"
        f = F.process_utterance(F.peak_normalise(wav.astype(np.float32) / 32768.0), ivs,
                                ESPEAK_PITCH)
        u = first[base]
        assert u.raw_text == text.lower()
        np.testing.assert_array_equal(
            np.load(BUNDLED_CORPUS / "duration" / f"espeak_en_us-duration-{base}.npy"),
            f.duration)
        mel = np.load(BUNDLED_CORPUS / "mel" / f"espeak_en_us-mel-{base}.npy")
        assert mel.dtype == np.float16
        np.testing.assert_allclose(mel.astype(np.float32), f.mel, atol=1e-2, rtol=2e-3)


def test_espeak_durations_agree_with_the_audio(built):
    d, summary = built
    assert summary["utterances"] == 10 and not summary["skipped"]
    c = PreprocessedCorpus(d / "out", "train.txt")
    c.validate()
    from scipy.io import wavfile
    for u in c.utts:
        x = c.load(c.utts.index(u))
        ivs = textgrid.phone_intervals(d / "raw" / "TextGrid" / f"{u.basename}.TextGrid")
        _, n = wavfile.read(d / "raw" / "wavs" / f"{u.basename}.wav")
        speech = [iv for iv in ivs if iv[2] != "sp"]
        start, end = speech[0][0], speech[-1][1]
        # the phones cover the speech: frames = rounded span, within the audio
        assert x["duration"].sum() == np.round(end * 22050 / 256) - np.round(start * 22050 / 256)
        assert 0 <= start < end <= len(n) / 22050 + 1e-9
        # and espeak's events are contiguous phones in time order
        assert all(a[1] == b[0] for a, b in zip(ivs, ivs[1:]))


def test_espeak_build_is_byte_identical_when_repeated(built, tmp_path):
    d, _ = built
    build(tmp_path / "again", n=10, val_size=2, log=None)
    a, b = files(d / "out"), files(tmp_path / "again")
    assert a == b and len(a) == 4 * 10 + 5         # + stats, speakers, front_end, the splits
    match, mismatch, errors = filecmp.cmpfiles(d / "out", tmp_path / "again", a, shallow=False)
    assert not mismatch and not errors


def test_multi_speaker_build(tmp_path):
    s = build(tmp_path / "multi", voices=["en-us", "en-GB-x-rp"], n=4, val_size=1, log=None)
    assert s["speakers"] == {"espeak_en_us": 0, "espeak_en_GB_x_rp": 1}
    c = PreprocessedCorpus(tmp_path / "multi", "train.txt")
    c.validate()
    assert {u.speaker for u in c.utts} <= set(s["speakers"])


def test_unmapped_espeak_phoneme_is_an_error():
    with pytest.raises(espeak.EspeakError, match=r"Q9.*no ARPAbet mapping"):
        espeak.to_arpabet([(0, "h"), (100, "'Q9"), (200, "_")], 300, "sentence 1")
    ivs = espeak.to_arpabet([(0, "h"), (100, "'aI@"), (300, "_:"), (350, "_")], 400, "x")
    assert ivs == [(0, 100, "HH"), (100, 200, "AY1"), (200, 300, "ER1"), (300, 400, "sp")]


def _rewrite_textgrids(raw, mfa2):
    """MFA 2.x style: silences as empty intervals, and a leading silence from 0."""
    for p in (raw / "TextGrid").glob("*.TextGrid"):
        ivs = textgrid.phone_intervals(p)
        ivs = [(0.0, ivs[0][0], "")] + [(s, e, "" if lab == "sp" else lab)
                                        for s, e, lab in ivs]
        textgrid.write(p.parent.parent / "TG2" / p.name if mfa2 else p, ivs[-1][1],
                       {"words": [(0.0, ivs[-1][1], "x")], "phones": ivs})


def test_preprocess_reproduces_the_builder_features(built, tmp_path):
    d, _ = built
    out = tmp_path / "pre"
    from fastcpu.data.espeak_corpus import ESPEAK_PITCH
    s = preprocess(d / "raw", out, speaker="espeak_en_us", val_size=2, seed=0, workers=2,
                   log=None, pitch_opts=ESPEAK_PITCH, front_end={"kind": "espeak",
                                                                 "voice": "en-us"})
    assert s["utterances"] == 10 and not s["missing_textgrid"]
    names = files(d / "out")
    assert files(out) == names
    match, mismatch, errors = filecmp.cmpfiles(d / "out", out, names, shallow=False)
    assert not mismatch and not errors, mismatch
    # MFA 2.x TextGrids (empty-interval silences, extra tier) give the same corpus
    (d / "raw" / "TG2").mkdir(exist_ok=True)
    _rewrite_textgrids(d / "raw", mfa2=True)
    out2 = tmp_path / "pre2"
    preprocess(d / "raw", out2, textgrids=d / "raw" / "TG2", speaker="espeak_en_us",
               val_size=2, seed=0, workers=1, log=None, pitch_opts=ESPEAK_PITCH,
               front_end={"kind": "espeak", "voice": "en-us"})
    # and from the command line, with the builder's pitch options as flags
    out3 = tmp_path / "pre3"
    assert preprocess_main(["--corpus", str(d / "raw"), "--out", str(out3), "--speaker",
                            "espeak_en_us", "--val-size", "2", "--seed", "0", "--pitch",
                            "harvest", "--f0-range", "60", "400",
                            "--unvoiced-from-alignment", "--front-end", "espeak"]) == 0
    match, mismatch, errors = filecmp.cmpfiles(d / "out", out3, names, shallow=False)
    assert not mismatch and not errors, mismatch
    match, mismatch, errors = filecmp.cmpfiles(d / "out", out2, names, shallow=False)
    assert not mismatch and not errors, mismatch


def test_textgrid_short_format_and_quotes(tmp_path):
    p = tmp_path / "s.TextGrid"
    p.write_text('File type = "ooTextFile"\nObject class = "TextGrid"\n\n0\n1.5\n<exists>\n1\n'
                 '"IntervalTier"\n"phones"\n0\n1.5\n3\n0\n0.5\n""\n0.5\n1.0\n"AH0"\n'
                 '1.0\n1.5\n"say ""hi"""\n')
    assert textgrid.read_tiers(p) == {"phones": [(0.0, 0.5, ""), (0.5, 1.0, "AH0"),
                                                 (1.0, 1.5, 'say "hi"')]}


def _tiny_raw(tmp_path, built):
    import shutil
    d, _ = built
    raw = tmp_path / "raw"
    shutil.copytree(d / "raw", raw)
    return raw


@pytest.mark.parametrize("what", ["unknown phone", "no phones tier", "missing wav",
                                  "bad metadata", "too few"])
def test_preprocess_bad_input_is_one_error_and_no_output(tmp_path, built, what, capsys):
    raw = _tiny_raw(tmp_path, built)
    tg = raw / "TextGrid" / "ES0003.TextGrid"
    if what == "unknown phone":
        ivs = textgrid.phone_intervals(tg)
        ivs[2] = (ivs[2][0], ivs[2][1], "QX")
        textgrid.write(tg, ivs[-1][1], {"phones": ivs})
        expect = f"{tg}: unknown phone 'QX'"
    elif what == "no phones tier":
        textgrid.write(tg, 1.0, {"words": [(0.0, 1.0, "hello")]})
        expect = f"{tg}: no 'phones' tier (tiers: 'words')"
    elif what == "missing wav":
        os.remove(raw / "wavs" / "ES0005.wav")
        expect = f"{raw / 'wavs' / 'ES0005.wav'}: missing"
    elif what == "bad metadata":
        with open(raw / "metadata.csv", "a") as f:
            f.write("no separator here\n")
        expect = f"{raw / 'metadata.csv'}:11: expected 'id|raw text|normalised text'"
    else:
        expect = "only 10 utterances were usable; need more than val_size + test_size = 512"
    out = tmp_path / "out"
    rc = preprocess_main(["--corpus", str(raw), "--out", str(out), "--workers", "1"] +
                         ([] if what == "too few" else ["--val-size", "2"]))
    err = capsys.readouterr().err
    assert rc == 2 and expect in err, err             # bad input: 2, as the trainer
    assert err.count("\n") == 1
    assert not out.exists() and not list(tmp_path.glob(".out.tmp-*"))


def test_builder_cli_refuses_to_clobber_and_rejects_bad_voice(tmp_path, capsys):
    (tmp_path / "x").mkdir()
    (tmp_path / "x" / "keep").write_text("mine")
    assert build_main(["--out", str(tmp_path / "x"), "--n", "3", "--val-size", "1"]) == 1
    assert "already exists" in capsys.readouterr().err
    assert (tmp_path / "x" / "keep").read_text() == "mine"
    assert build_main(["--out", str(tmp_path / "y"), "--n", "3", "--voices", "xx-nope"]) == 1
    assert "no voice 'xx-nope'" in capsys.readouterr().err
    assert not (tmp_path / "y").exists()


def _rescaled_copy(raw, dst, peak):
    """The raw corpus with every wav rewritten as float32 at the given peak."""
    import shutil

    from scipy.io import wavfile
    shutil.copytree(raw, dst)
    for p in (dst / "wavs").glob("*.wav"):
        sr, x = wavfile.read(p)
        x = x.astype(np.float32) / 32768.0
        wavfile.write(p, sr, (x / np.abs(x).max() * np.float32(peak)).astype(np.float32))
    return dst


def test_preprocess_peak_normalises_each_wav_like_the_reference(built, tmp_path):
    """The reference divides every wav by its peak before extracting features: the same wav at
    peak 0.5 and at peak 1.0 gives the same log-mel; --no-peak-normalise keeps the level
    (log-mel offset by log 0.5 where it is above the floor)."""
    d, _ = built
    half = _rescaled_copy(d / "raw", tmp_path / "half", 0.5)
    full = _rescaled_copy(d / "raw", tmp_path / "full", 1.0)
    args = ["--speaker", "espeak_en_us", "--val-size", "2", "--seed", "0", "--workers", "1"]
    for src in (half, full):
        assert preprocess_main(["--corpus", str(src), "--out", str(src) + "-out", *args]) == 0
    assert preprocess_main(["--corpus", str(half), "--out", str(half) + "-raw", *args,
                            "--no-peak-normalise"]) == 0
    names = files(str(full) + "-out")
    match, mismatch, errors = filecmp.cmpfiles(str(half) + "-out", str(full) + "-out", names,
                                               shallow=False)
    assert not mismatch and not errors, mismatch
    base = sorted(p.name for p in Path(str(full) + "-out", "mel").iterdir())[0]
    a = np.load(Path(str(full) + "-out", "mel", base))
    b = np.load(Path(str(half) + "-raw", "mel", base))
    loud = a > -9                                   # well above the log(1e-5) floor
    assert loud.mean() > 0.3
    np.testing.assert_allclose((b - a)[loud], np.log(0.5), atol=2e-3)
    import json
    mean_full = json.loads(Path(str(full) + "-out", "stats.json").read_text())["energy"][2]
    mean_half = json.loads(Path(str(half) + "-raw", "stats.json").read_text())["energy"][2]
    np.testing.assert_allclose(mean_half, 0.5 * mean_full, rtol=1e-4)   # energy: by the peak


def test_peak_normalise_is_a_float_division_without_the_int16_wrap():
    x = np.array([0.25, -0.5, 0.125], np.float32)
    np.testing.assert_array_equal(F.peak_normalise(x), [0.5, -1.0, 0.25])
    np.testing.assert_array_equal(F.peak_normalise(np.array([0.5, 0.25], np.float32)),
                                  [1.0, 0.5])             # +full scale stays +1.0
    np.testing.assert_array_equal(F.peak_normalise(np.zeros(4, np.float32)), np.zeros(4))
