"""Data-parallel training under ``mpiexec -n 2`` (the wheel-installed MPICH): two ranks with
batch B/2 each compute what one process computes with batch B, dropout and BatchNorm on."""
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from fastcpu import checkpoint

MPIEXEC = shutil.which("mpiexec", path=str(Path(sys.executable).parent)) or \
    shutil.which("mpiexec")

# Bounds: the ranks sum their shares in another order than one process does (column sums of
# BatchNorm, the gradient buffer, the loss terms), and run 1 thread each against 2: float32
# reduction-order rounding, compounded over 20 Adam steps.
LOSS_RTOL = 1e-5
WEIGHT_RTOL = 1e-4
# Parameters whose exact gradient is zero: a conv bias just before a training-mode BatchNorm
# (which subtracts the batch mean) and the attention key bias (softmax ignores q.b_k, the same
# for every key) — and the BatchNorm running mean that follows such a bias. Their gradient is
# rounding noise, which Adam (eps 1e-9) turns into full-size steps: they wander as much between
# one process at 1 and at 2 threads (measured: 2.7e-2 norm-wise after 20 steps) as between 1 and
# 2 ranks (3.9e-2). They do not change what the model computes, which the test checks instead.
FREE = re.compile(r"postnet\.convolutions\.\d+\.0\.conv\.bias|slf_attn\.w_ks\.bias|"
                  r"postnet\.convolutions\.\d+\.1\.running_mean")


def train(out, *extra, ranks=0, batch=8, steps=20):
    cmd = [sys.executable, "-m", "fastcpu.train", "--config", "tiny", "--output-dir", str(out),
           "--max-steps", str(steps), "--batch-size", str(batch), "--set", "train.val_step=10",
           "--set", "train.save_step=10", *extra]
    if ranks:
        cmd = [MPIEXEC, "-n", str(ranks)] + cmd
    return subprocess.run(cmd, capture_output=True, text=True, timeout=900)


def losses(run, event="train"):
    recs = [json.loads(x) for x in (Path(run) / "metrics.jsonl").read_text().splitlines()]
    return {r["step"]: r["loss"] for r in recs if r["event"] == event}


def weights(path):
    t, _ = checkpoint.load(path)
    return {k: v for k, v in t.items() if k.startswith("model/")}


def norm_rel(a, b):
    return float(np.linalg.norm(a.astype(np.float64) - b) / max(np.linalg.norm(b), 1e-30))


pytestmark = pytest.mark.skipif(MPIEXEC is None, reason="needs the mpi extra (pip install "
                                                         "'fastcpu[mpi]')")


@pytest.mark.parametrize("acc", [1, 2])
def test_two_ranks_equal_one_process(tmp_path, acc):
    extra = ["--accumulation-steps", str(acc)]
    one = train(tmp_path / "one", *extra, "--threads", "2", batch=8)
    assert one.returncode == 0, one.stderr
    two = train(tmp_path / "two", *extra, ranks=2, batch=4)
    assert two.returncode == 0, two.stderr
    assert "data parallel: 2 MPI ranks on 1 node(s)" in two.stdout, two.stdout
    assert "1 thread(s) per rank" in two.stdout
    a, b = losses(tmp_path / "one" / "tiny"), losses(tmp_path / "two" / "tiny")
    assert sorted(a) == sorted(b) == list(range(1, 21))
    worst = max(abs(a[s][k] - b[s][k]) / abs(a[s][k]) for s in a for k in a[s])
    assert worst <= LOSS_RTOL, worst
    va, vb = losses(tmp_path / "one" / "tiny", "val"), losses(tmp_path / "two" / "tiny", "val")
    assert sorted(va) == sorted(vb) and all(
        abs(va[s]["total"] - vb[s]["total"]) <= LOSS_RTOL * va[s]["total"] for s in va)
    wa = weights(tmp_path / "one" / "tiny" / "checkpoints" / "final.safetensors")
    wb = weights(tmp_path / "two" / "tiny" / "checkpoints" / "final.safetensors")
    assert wa.keys() == wb.keys()
    errs = {k: norm_rel(wb[k], wa[k]) for k in wa if not FREE.search(k)}
    assert len(errs) > 0.9 * len(wa)
    worst_w = max(errs.values())
    assert worst_w <= WEIGHT_RTOL, sorted(errs.items(), key=lambda kv: -kv[1])[:3]
    # dropout and BatchNorm were on: the PostNet's running variances agree too
    assert [k for k in errs if "running_var" in k]
    # and the two models compute the same mels (eval mode, a validation batch)
    from fastcpu.autograd import no_grad
    from fastcpu.data import BUNDLED_CORPUS, PreprocessedCorpus, collate
    from fastcpu.synthesize import load_model
    val = PreprocessedCorpus(BUNDLED_CORPUS, "val.txt")
    b = collate([val.load(i) for i in range(8)])
    mels = []
    for run in ("one", "two"):
        m, _, _ = load_model(tmp_path / run / "tiny" / "checkpoints" / "final.safetensors")
        with no_grad():
            mels.append(m.forward_batch(b).postnet_mel.numpy())
    assert norm_rel(mels[1], mels[0]) <= WEIGHT_RTOL


def _launch(out, *extra, steps=30):
    cmd = [MPIEXEC, "-n", "2", sys.executable, "-m", "fastcpu.train", "--config", "tiny",
           "--output-dir", str(out), "--max-steps", str(steps), "--batch-size", "4", *extra]
    return subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _wait_for_step(out, step, p):
    log = Path(out) / "tiny" / "metrics.jsonl"
    deadline = time.time() + 120
    while time.time() < deadline and p.poll() is None:
        if log.exists() and max(losses(out / "tiny"), default=0) >= step:
            return
        time.sleep(0.02)
    raise AssertionError(f"step {step} not reached")


def _rank_pid(out, rank):
    """The pid of a rank: the launcher's children running the trainer, in rank order."""
    pids = sorted(int(x) for x in subprocess.run(
        ["pgrep", "-f", f"fastcpu.train --config tiny --output-dir {out} "],
        capture_output=True, text=True).stdout.split())
    ranks = [p for p in pids if Path(f"/proc/{p}/cmdline").read_bytes().startswith(
        sys.executable.encode())]
    envs = {p: Path(f"/proc/{p}/environ").read_bytes().split(b"\0") for p in ranks}
    return next(p for p in ranks if f"PMI_RANK={rank}".encode() in envs[p])


@pytest.mark.parametrize("where", ["launcher", "rank 1"])
def test_sigterm_stops_every_rank_after_the_same_step_and_resumes_exactly(tmp_path, where):
    base = train(tmp_path / "base", ranks=2, batch=4, steps=30)
    assert base.returncode == 0, base.stderr
    out = tmp_path / "cut"
    p = _launch(out, "--debug-step-delay", "0.15")
    _wait_for_step(out, 8, p)
    os.kill(p.pid if where == "launcher" else _rank_pid(out, 1), signal.SIGTERM)
    stdout, stderr = p.communicate(timeout=120)
    assert p.returncode == 143, (p.returncode, stderr)
    ck = out / "tiny" / "checkpoints" / "interrupted.safetensors"
    _, meta = checkpoint.load(ck)
    k = meta["state"]["step"]
    assert meta["ranks"] == 2 and 8 <= k < 30 and max(losses(out / "tiny")) == k
    assert f"interrupted by SIGTERM at step {k}" in stdout
    # N=2 again: bit for bit the uninterrupted N=2 run
    r = train(out, "--resume-from", str(ck), ranks=2, batch=4, steps=30)
    assert r.returncode == 0, r.stderr
    assert losses(out / "tiny") == losses(tmp_path / "base" / "tiny")
    a = weights(tmp_path / "base" / "tiny" / "checkpoints" / "final.safetensors")
    b = weights(out / "tiny" / "checkpoints" / "final.safetensors")
    assert all(np.array_equal(a[n], b[n]) for n in a)
    if where == "launcher":
        # N=1 from the same checkpoint, the same global batch: correct, within rounding
        one = tmp_path / "one"
        shutil.copytree(out / "tiny", one / "tiny")
        (one / "tiny" / "checkpoints" / "final.safetensors").unlink()
        r = train(one, "--resume-from", str(one / "tiny" / "checkpoints" /
                                           "interrupted.safetensors"), batch=8, steps=30)
        assert r.returncode == 0, r.stderr
        assert "written by 2 process(es), this run has 1" in r.stdout
        got, want = losses(one / "tiny"), losses(tmp_path / "base" / "tiny")
        assert max(abs(got[s]["total"] - want[s]["total"]) / want[s]["total"]
                   for s in want) <= LOSS_RTOL
        # the global batch must match
        r = train(one, "--resume-from", str(ck), batch=4, steps=30)
        assert r.returncode == 2 and "global batch is 2 rank(s) x 4 = 8" in r.stderr, r.stderr


def test_a_killed_rank_ends_the_job_and_the_checkpoints_stay_good(tmp_path):
    out = tmp_path / "kill"
    p = _launch(out, "--debug-step-delay", "0.1", "--set", "train.save_step=5")
    _wait_for_step(out, 12, p)
    t = time.time()
    pid = _rank_pid(out, 1)
    os.kill(pid, signal.SIGKILL)
    _, stderr = p.communicate(timeout=60)
    assert time.time() - t < 30 and p.returncode != 0
    ours = [x for x in stderr.splitlines() if x.startswith("error:")]
    assert len(ours) == 1 and ours[0].startswith(f"error: rank 1 (pid {pid} on "), stderr
    assert "ended without a word" in ours[0]
    files = sorted((out / "tiny" / "checkpoints").glob("*.safetensors"))
    assert files and all(checkpoint.load(f) for f in files)


def test_a_failing_rank_is_one_line_and_ends_the_job(tmp_path):
    r = train(tmp_path, "--set", "train.save_step=5", "--debug-fault", "exception@12/r1",
              ranks=2, batch=4, steps=30)
    assert r.returncode != 0
    ours = [x for x in r.stderr.splitlines() if x.startswith("error:")]
    assert ours == ["error: rank 1 of 2: RuntimeError: injected fault in step 12 "
                    "(--debug-fault)"], r.stderr
    files = sorted((tmp_path / "tiny" / "checkpoints").glob("*.safetensors"))
    assert [f.name for f in files] == ["best.safetensors", "step-00000005.safetensors",
                                       "step-00000010.safetensors"]
    assert all(checkpoint.load(f) for f in files)


def test_a_finished_run_leaves_no_watcher_behind(tmp_path):
    r = train(tmp_path, ranks=2, batch=4, steps=3)
    assert r.returncode == 0 and "error" not in r.stderr, r.stderr
    time.sleep(0.5)
    left = subprocess.run(["pgrep", "-f", f"fastcpu.distributed --watch {tmp_path}"],
                          capture_output=True, text=True).stdout.split()
    assert left == []


def test_one_process_never_imports_mpi4py():
    r = subprocess.run([sys.executable, "-c", "import sys; from fastcpu import distributed, "
                        "train; w = distributed.world(); print(type(w).__name__, w.size, "
                        "'mpi4py' in sys.modules)"], capture_output=True, text=True)
    assert r.stdout.split() == ["World", "1", "False"], r.stderr
