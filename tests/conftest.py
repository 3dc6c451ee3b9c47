import fastcpu  # noqa: F401  (first: its thread-pool env defaults must precede NumPy's OpenBLAS)

import numpy as np
import pytest

from fastcpu import runtime


@pytest.fixture(autouse=True, scope="session")
def _two_threads():
    """Every test runs under the runtime's thread budget (2 = this machine's cores, or fewer)."""
    import numba
    with runtime.threads(min(2, numba.config.NUMBA_NUM_THREADS)):
        yield


@pytest.fixture(scope="session")
def demo_run(tmp_path_factory):
    """The README's main job as a user runs it — ``python -m fastcpu.train``, no arguments, in a
    fresh directory — once a session, for the tests of the run and of what follows it
    (test_train, test_workflow): -> (that directory, the finished process)."""
    import subprocess
    import sys
    cwd = tmp_path_factory.mktemp("demo")
    r = subprocess.run([sys.executable, "-m", "fastcpu.train"], cwd=cwd, capture_output=True,
                       text=True, timeout=900)
    return cwd, r


def rel_err(a, b, floor=1e-30):
    """max |a - b| relative to max |b| (the max-norm); ``floor`` bounds the denominator below for
    quantities that are mathematically 0 (then float rounding is judged against the inputs' scale).
    """
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    assert a.shape == b.shape, (a.shape, b.shape)
    if a.size == 0:
        return 0.0
    return float(np.abs(a - b).max() / max(np.abs(b).max(), floor))


def assert_close(a, b, tol, what="", floor=1e-30):
    e = rel_err(a, b, floor)
    assert e <= tol, f"{what}: relative error {e:.3g} > {tol:g}"


def vjp_check(fn, inputs, grads, rng, eps=1e-6, tol=1e-6, what=""):
    """Random-direction VJP check in float64.

    fn(*inputs) -> output array; grads(u) -> list of analytic d<u, fn>/d input (None to skip).
    For a random cotangent u and random direction v_i per input, compare <grad_i, v_i> with the
    central difference of <u, fn(x + t v_i)> at t = +-eps.
    """
    out = fn(*inputs)
    u = rng.standard_normal(np.shape(out))
    analytic = grads(u)
    checked = 0
    for i, g in enumerate(analytic):
        if g is None:
            continue
        v = rng.standard_normal(inputs[i].shape)
        plus = [x.copy() for x in inputs]
        minus = [x.copy() for x in inputs]
        plus[i] = plus[i] + eps * v
        minus[i] = minus[i] - eps * v
        num = (np.sum(u * fn(*plus)) - np.sum(u * fn(*minus))) / (2 * eps)
        ana = float(np.sum(g * v))
        scale = max(abs(num), abs(ana), 1e-8)
        assert abs(num - ana) / scale <= tol, \
            f"{what} input {i}: numeric {num:.10g} vs analytic {ana:.10g}"
        checked += 1
    assert checked, f"{what}: nothing checked"
