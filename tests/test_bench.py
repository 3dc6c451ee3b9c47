"""The bench command's own logic (not a timing): batches, FLOP count, refusal, a tiny run."""
import subprocess
import sys

import numpy as np

from fastcpu import bench
from fastcpu.config import load_config
from fastcpu.startup import config_path


def test_batch_is_seeded_ragged_and_consistent():
    a, b = bench.make_batch(16, (60, 120), 3), bench.make_batch(16, (60, 120), 3)
    for k in vars(a):
        np.testing.assert_array_equal(getattr(a, k), getattr(b, k))
    assert ((a.text_lens >= 60) & (a.text_lens <= 120)).all()
    np.testing.assert_array_equal(a.durations.sum(1), a.mel_lens)
    assert a.mel_lens.max() <= 1000 and len(set(a.text_lens)) > 1
    assert not bench.make_batch(16, (60, 120), 4).texts.tolist() == a.texts.tolist()


def test_step_flops_of_the_ljspeech_model():
    cfg = load_config(config_path("ljspeech")).model
    batch = bench.make_batch(16, (60, 120), 0)
    f = bench.step_flops(cfg, batch)
    # a conv's share alone: decoder FFN k=9 convs, 6 layers x 2*B*T*256*1024*9 x 3
    conv9 = 6 * 2 * 16 * batch.max_mel_len * 256 * 1024 * 9 * 3
    assert conv9 < f < 2.5 * conv9


def test_refuses_openblas_coretype(monkeypatch, capsys):
    monkeypatch.setenv("OPENBLAS_CORETYPE", "Haswell")
    assert bench.main(["--batch", "1", "--steps", "1"]) == 2
    assert "45%" in capsys.readouterr().err


def test_tiny_run_prints_the_table(tmp_path):
    cfg = tmp_path / "tiny.yaml"
    cfg.write_text("model: {encoder_layer: 1, decoder_layer: 1, encoder_hidden: 32, "
                   "decoder_hidden: 32, conv_filter_size: 32, vp_filter_size: 16, "
                   "postnet_embedding_dim: 16}\n")
    out = tmp_path / "r.json"
    r = subprocess.run([sys.executable, "-m", "fastcpu.bench", "--batch", "2", "--phonemes",
                        "5-9", "--steps", "2", "--threads", "1", "--config", str(cfg),
                        "--allow-openblas-env", "--json", str(out)],
                       capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr
    assert "fastcpu / PyTorch" in r.stdout and "peak RSS" in r.stdout
    import json
    rec = json.loads(out.read_text())
    assert rec["sides"]["fastcpu"]["peak_rss"] > 0 and rec["ratio_of_medians"] > 0
