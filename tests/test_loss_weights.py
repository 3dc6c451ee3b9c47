"""loss.* weights in the config: a zero weight leaves the modules only that term trains
untouched, the objective is logged next to the unweighted terms, bad weights are one line."""
import json
import subprocess
import sys

import numpy as np

from fastcpu import checkpoint


def run(out, *extra):
    return subprocess.run([sys.executable, "-m", "fastcpu.train", "--config", "tiny",
                           "--output-dir", str(out), "--threads", "2", *extra],
                          capture_output=True, text=True, timeout=900)


def test_a_zero_weight_stops_its_term_training(tmp_path):
    r = run(tmp_path, "--max-steps", "4", "--set", "train.save_step=2", "--set",
            "train.keep_last=0", "--set", "loss.duration=0", "--set", "loss.pitch=2.5")
    assert r.returncode == 0, r.stderr
    ck = tmp_path / "tiny" / "checkpoints"
    a, _ = checkpoint.load(ck / "step-00000002.safetensors")
    b, _ = checkpoint.load(ck / "step-00000004.safetensors")
    dur = [k for k in a if k.startswith("model/variance_adaptor.duration_predictor.")]
    assert dur and all(np.array_equal(a[k], b[k]) for k in dur)
    pitch = [k for k in a if k.startswith("model/variance_adaptor.pitch_predictor.")]
    assert any(not np.array_equal(a[k], b[k]) for k in pitch)
    recs = [json.loads(x) for x in (tmp_path / "tiny" / "metrics.jsonl").read_text().splitlines()]
    tr = [x for x in recs if x["event"] == "train"][-1]["loss"]
    want = tr["mel"] + tr["postnet_mel"] + 2.5 * tr["pitch"] + tr["energy"]
    assert abs(tr["weighted"] - want) <= 1e-6 * want
    assert abs(tr["total"] - sum(tr[k] for k in ("mel", "postnet_mel", "pitch", "energy",
                                                 "duration"))) <= 1e-6 * tr["total"]


def test_bad_weights_are_one_line(tmp_path):
    for bad, want in [("loss.mel=-1", "loss.mel: must be a finite weight >= 0"),
                      ("loss.nope=1", "unknown key 'nope'")]:
        r = run(tmp_path, "--dry-run", "--set", bad)
        assert r.returncode == 2 and want in r.stderr, r.stderr
