"""The data-parallel pieces of the kernels, in one process: a rank's rows of a global batch get
those rows' dropout masks (every backend), and BatchNorm with a reduction over simulated ranks
gives the whole batch's statistics, output and gradients."""
import threading

import numpy as np
import pytest

from fastcpu import kernels
from fastcpu.distributed import rows

B, T, C = 6, 7, 5


@pytest.mark.parametrize("backend", ["reference", "numba"])
def test_a_ranks_dropout_mask_is_its_rows_of_the_global_mask(backend):
    x = np.random.default_rng(0).standard_normal((B, T, C)).astype(np.float32)
    k = kernels.get("dropout", backend)
    whole = k.forward(x, 0.3, 1234)
    for r in range(3):
        s = rows(B, r, 3)
        part = k.forward(np.ascontiguousarray(x[s]), 0.3, (1234, s.start * T * C))
        assert np.array_equal(part, whole[s])
        dx = np.zeros_like(x[s])
        k.backward(np.ones_like(x[s]), 0.3, (1234, s.start * T * C), dx)
        assert np.array_equal(dx != 0, whole[s] != 0)


@pytest.mark.parametrize("backend", ["reference", "numba", "cython"])
def test_a_ranks_fused_residual_dropout_is_its_rows(backend):
    if backend == "cython":
        from fastcpu.kernels import _cybuild
        if not _cybuild.available("layernorm"):
            pytest.skip("no Cython build")
    rng = np.random.default_rng(1)
    a, res = (rng.standard_normal((B, T, C)).astype(np.float32) for _ in range(2))
    w, b = rng.standard_normal(C).astype(np.float32), rng.standard_normal(C).astype(np.float32)
    k = kernels.get("layernorm", backend)
    whole = k.residual_forward(a, res, w, b, 0.4, 99)[0]
    s = rows(B, 1, 2)
    part = k.residual_forward(np.ascontiguousarray(a[s]), np.ascontiguousarray(res[s]), w, b,
                              0.4, (99, s.start * T * C))[0]
    np.testing.assert_array_equal(part, whole[s])


class Ranks:
    """n threads standing in for n ranks: ``reduce`` sums an array over them, in place."""

    def __init__(self, n):
        self.n, self.barrier, self.parts = n, threading.Barrier(n), {}

    def reduce_for(self, r):
        def reduce(buf):
            self.parts[r] = buf.copy()
            self.barrier.wait()
            total = sum(self.parts[i] for i in range(self.n))
            self.barrier.wait()
            buf[...] = total
        return reduce

    def run(self, fn):
        out = [None] * self.n
        ts = [threading.Thread(target=lambda r=r: out.__setitem__(r, fn(r)))
              for r in range(self.n)]
        for t in ts:
            t.start()
        for t in ts:
            t.join()
        return out


@pytest.mark.parametrize("backend", ["reference", "numba"])
def test_batchnorm_reduced_over_ranks_is_the_whole_batch(backend):
    rng = np.random.default_rng(2)
    x = (rng.standard_normal((8, 9, C)) * 3 + 1).astype(np.float32)
    dout = rng.standard_normal(x.shape).astype(np.float32)
    w, b = rng.uniform(0.5, 2, C).astype(np.float32), rng.standard_normal(C).astype(np.float32)
    k = kernels.get("batchnorm", backend)
    rm, rv = np.zeros(C, np.float32), np.ones(C, np.float32)
    out, mean, rstd = k.forward(x, w, b, rm, rv, True)
    dx, dw, db = np.zeros_like(x), np.zeros(C, np.float32), np.zeros(C, np.float32)
    k.backward(dout, x, w, mean, rstd, True, dx, dw, db)
    ranks = Ranks(2)
    shares = [rows(8, r, 2) for r in range(2)]
    state = [(np.zeros(C, np.float32), np.ones(C, np.float32)) for _ in range(2)]

    def rank(r):
        xs, ds = np.ascontiguousarray(x[shares[r]]), np.ascontiguousarray(dout[shares[r]])
        o, m, s = k.forward(xs, w, b, *state[r], True, reduce=ranks.reduce_for(r))
        g = [np.zeros_like(xs), np.zeros(C, np.float32), np.zeros(C, np.float32)]
        k.backward(ds, xs, w, m, s, True, *g, reduce=ranks.reduce_for(r))
        return o, g

    got = ranks.run(rank)
    np.testing.assert_allclose(np.concatenate([o for o, _ in got]), out, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(np.concatenate([g[0] for _, g in got]), dx, rtol=1e-4,
                               atol=1e-5)
    # dw, db stay each rank's own share (the gradient buffers are summed after backward)
    np.testing.assert_allclose(got[0][1][1] + got[1][1][1], dw, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(got[0][1][2] + got[1][1][2], db, rtol=1e-4, atol=1e-5)
    for r in range(2):                                # running statistics of the whole batch
        np.testing.assert_allclose(state[r][0], rm, rtol=1e-6)
        np.testing.assert_allclose(state[r][1], rv, rtol=1e-6)


@pytest.mark.parametrize("size, ranks, expect", [
    (2, ["0:{dead}", "1:{dead}"], "rank 1 (pid {dead} on hostA) ended without a word"),
    (4, ["0:{dead}", "1:{alive}"], "the other 2 of the 4 ranks run on other nodes"),
])
def test_the_watcher_names_the_rank_that_vanished(tmp_path, size, ranks, expect):
    """Rank 0's watcher, told nothing ("done" never comes): one line naming the first rank of
    this node to vanish; with only rank 0 gone and ranks on other nodes, it says the death was
    probably there."""
    import subprocess
    import sys
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    alive = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    try:
        args = [r.format(dead=dead.pid, alive=alive.pid) for r in ranks]
        p = subprocess.run([sys.executable, "-m", "fastcpu.distributed", "--watch",
                            str(tmp_path), "hostA", str(size), *args], input="",
                           capture_output=True, text=True, timeout=60)
    finally:
        alive.kill()
        alive.wait()
    lines = [ln for ln in p.stderr.splitlines() if ln.startswith("error:")]
    assert p.returncode == 1 and len(lines) == 1, p.stderr
    assert expect.format(dead=dead.pid) in lines[0], lines[0]
