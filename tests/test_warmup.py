"""Time to first step: after ``python -m fastcpu.warmup`` fills the Numba cache, a fresh process
builds the full LJSpeech model and finishes its first training step within 10 s of starting."""
import os
import subprocess
import sys
import time

PROBE = r"""
import time, sys
import numpy as np
from fastcpu.startup import config_path
from fastcpu.config import load_config
from fastcpu.warmup import tiny_step
cfg = load_config(config_path("ljspeech")).model
tiny_step(config=cfg)          # full-size model: build, forward, loss, backward, Adam, inference
print("done")
"""


def test_first_step_within_10s_after_warmup(tmp_path):
    env = dict(os.environ, NUMBA_CACHE_DIR=str(tmp_path))
    r = subprocess.run([sys.executable, "-m", "fastcpu.warmup"], env=env, capture_output=True,
                       text=True, timeout=900)
    assert r.returncode == 0 and "warm:" in r.stdout, r.stderr
    t0 = time.perf_counter()
    r = subprocess.run([sys.executable, "-c", PROBE], env=env, capture_output=True, text=True,
                       timeout=300)
    elapsed = time.perf_counter() - t0
    assert r.returncode == 0 and "done" in r.stdout, r.stderr
    assert elapsed < 10, f"first full-model step took {elapsed:.1f} s from process start"
