"""The preprocessed-layout reader (every invariant, one clear error each) and the batcher."""
import json

import numpy as np
import pytest

from fastcpu.data import (N_VOCAB, Batcher, DataError, PreprocessedCorpus, collate, text_to_ids)

PHONES = ["IH1 T W AH0 Z", "AW1 T F IH2 T IH0 D sp", "W IH1 TH", "HH AH0 L OW1", "sp AY1 sil",
          "DH AH0 K AE1 T S AE1 T"]


def write_corpus(root, n=6, speaker="LJSpeech", rng=None):
    rng = rng or np.random.default_rng(0)
    for k in ("mel", "pitch", "energy", "duration"):
        (root / k).mkdir(parents=True, exist_ok=True)
    lines = []
    for i in range(n):
        ph = PHONES[i % len(PHONES)].split()
        d = rng.integers(1, 6, len(ph))
        base = f"U{i:03d}"
        np.save(root / "duration" / f"{speaker}-duration-{base}.npy", d.astype(np.int64))
        np.save(root / "pitch" / f"{speaker}-pitch-{base}.npy", rng.standard_normal(len(ph)))
        np.save(root / "energy" / f"{speaker}-energy-{base}.npy",
                rng.standard_normal(len(ph)).astype(np.float32))
        np.save(root / "mel" / f"{speaker}-mel-{base}.npy",
                rng.standard_normal((int(d.sum()), 80)).astype(np.float32))
        lines.append(f"{base}|{speaker}|{{{' '.join(ph)}}}|utterance {i}")
    (root / "train.txt").write_text("\n".join(lines) + "\n")
    (root / "stats.json").write_text(json.dumps({"pitch": [-2.0, 3.0, 200.0, 40.0],
                                                 "energy": [-1.0, 4.0, 30.0, 20.0]}))
    (root / "speakers.json").write_text(json.dumps({speaker: 0}))
    return root


def test_symbols_match_the_reference_example():
    ids = text_to_ids("{IH1 T W AH0 Z AW1 T F IH2 T IH0 D sp W IH1 TH}", "x")
    assert ids.tolist() == [109, 133, 144, 73, 146, 82, 133, 104, 110, 133, 108, 90, 357, 144,
                            109, 134]
    assert N_VOCAB == 361


def test_reads_the_layout_and_collates(tmp_path):
    c = PreprocessedCorpus(write_corpus(tmp_path))
    c.validate()
    items = [c.load(i) for i in range(3)]
    b = collate(items)
    assert b.texts.shape == (3, b.max_text_len) and b.mels.shape[2] == 80 and len(b) == 3
    np.testing.assert_array_equal(b.durations.sum(1), b.mel_lens)
    assert b.texts[2, len(items[2]["text"]):].sum() == 0             # zero padding
    one = b.one(2)
    assert one.max_text_len == len(items[2]["text"]) and one.mels.shape[1] == one.frames
    assert items[0]["pitch"].dtype == np.float32 and items[0]["speaker"] == 0


def _damage(root, what):
    base = "LJSpeech-{}-U001.npy"
    if what == "unknown phone":
        t = (root / "train.txt").read_text().replace("sp}", "XX9}")
        (root / "train.txt").write_text(t)
        return "train.txt:2: unknown phone 'XX9'"
    if what == "length mismatch":
        np.save(root / "pitch" / base.format("pitch"), np.zeros(3))
        return "8 phones but pitch has shape [3]"
    if what == "missing npy":
        (root / "energy" / base.format("energy")).unlink()
        return "LJSpeech-energy-U001.npy: missing"
    if what == "nan":
        e = np.load(root / "energy" / base.format("energy"))
        e[1] = np.nan
        np.save(root / "energy" / base.format("energy"), e)
        return "LJSpeech-energy-U001.npy: non-finite"
    if what == "empty split":
        (root / "train.txt").write_text("\n")
        return "no utterances"
    if what == "duration sum":
        d = np.load(root / "duration" / base.format("duration"))
        d[0] += 1
        np.save(root / "duration" / base.format("duration"), d)
        return "sum(duration)"
    if what == "mel bins":
        np.save(root / "mel" / base.format("mel"), np.zeros((5, 79), np.float32))
        return "mel must be [frames, 80]"
    if what == "bad line":
        (root / "train.txt").write_text("U000|LJSpeech|{IH1}\n")
        return "train.txt:1: expected 4"
    raise AssertionError(what)


@pytest.mark.parametrize("what", ["unknown phone", "length mismatch", "missing npy", "nan",
                                  "empty split", "duration sum", "mel bins", "bad line"])
def test_each_bad_input_is_one_clear_error(tmp_path, what):
    root = write_corpus(tmp_path)
    expect = _damage(root, what)
    with pytest.raises(DataError) as e:
        PreprocessedCorpus(root).validate()
    assert expect in str(e.value), str(e.value)
    assert "\n" not in str(e.value)


def test_batcher_groups_sorts_and_resumes_exactly():
    lengths = np.random.default_rng(0).integers(5, 100, 50)
    b = Batcher(50, lengths, batch_size=4, group_size=3, seed=7)
    ep = b.epoch_batches(0)
    assert all(len(x) == 4 for x in ep) and len(ep) == b.steps_per_epoch()
    for g in range(0, len(ep), 3):                         # sorted within each group
        grp = np.concatenate(ep[g:g + 3])
        assert (np.diff(lengths[grp]) <= 0).all()
    assert [x.tolist() for x in ep] == [x.tolist() for x in Batcher(
        50, lengths, 4, 3, seed=7).epoch_batches(0)]
    assert [x.tolist() for x in ep] != [x.tolist() for x in b.epoch_batches(1)]
    it = iter(b)
    first = [next(it)[1].tolist() for _ in range(17)]       # crosses into epoch 1
    st = b.state_dict()
    rest = [next(it)[1].tolist() for _ in range(5)]
    b2 = Batcher(50, lengths, 4, 3, seed=7)
    b2.load_state_dict(st)
    it2 = iter(b2)
    assert [next(it2)[1].tolist() for _ in range(5)] == rest
    assert st["epoch"] == 1 and len(first) == 17
    keep = Batcher(50, lengths, 4, 3, seed=7, drop_last=False).epoch_batches(0)
    assert sum(len(x) for x in keep) == 50
    with pytest.raises(ValueError, match="seed"):
        Batcher(50, lengths, 4, 3, seed=8).load_state_dict(st)
