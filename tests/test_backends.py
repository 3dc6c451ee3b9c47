"""Layer 2: every Numba and Cython kernel against its NumPy reference, float32, on ordinary and
edge shapes, and accumulating correctly when backward is called twice into the same buffers."""
import numpy as np
import pytest

from fastcpu import kernels
from fastcpu.kernels import conv1d
from tests.conftest import assert_close

ELEM = 1e-6      # elementwise ops
RED = 1e-4       # reductions, attention, layernorm
F32 = np.float32


def fast_backends(op):
    return [b for b in kernels.available()[op] if b != "reference"]


def backends_of(op):
    return pytest.mark.parametrize("backend", fast_backends(op))


@pytest.fixture
def rng():
    return np.random.default_rng(99)


def r32(rng, *shape):
    return rng.standard_normal(shape).astype(F32)


def twice(call, bufs):
    """Run an accumulating backward twice; return (after one call, after two calls)."""
    call()
    once = [b.copy() for b in bufs]
    call()
    return once, [b.copy() for b in bufs]


def check_grads(ref_bufs, once, twice_, tol, what, floor=1e-30):
    for i, (r, a, b) in enumerate(zip(ref_bufs, once, twice_)):
        assert_close(a, r, tol, f"{what} grad {i}", floor)
        assert_close(b, 2 * r, tol, f"{what} grad {i} accumulated twice", floor)


def test_every_named_kernel_has_numba_and_cython():
    av = kernels.available()
    for op in kernels.CYTHON_KERNELS:
        assert {"reference", "numba", "cython"} <= set(av[op]), (op, av[op])


@backends_of("layernorm")
@pytest.mark.parametrize("N,C", [(64, 256), (1, 7), (33, 129)])
def test_layernorm(rng, backend, N, C):
    ref, k = kernels.get("layernorm", "reference"), kernels.get("layernorm", backend)
    x, w, b, dout = r32(rng, N, C), r32(rng, C), r32(rng, C), r32(rng, N, C)
    o_r, m_r, s_r = ref.forward(x, w, b)
    o, m, s = k.forward(x, w, b)
    assert_close(o, o_r, RED, "out")
    assert_close(s, s_r, RED, "rstd")
    rb = [np.zeros_like(a) for a in (x, w, b)]
    ref.backward(dout, x, w, m_r, s_r, *rb)
    bufs = [np.zeros_like(a) for a in (x, w, b)]
    once, two = twice(lambda: k.backward(dout, x, w, m, s, *bufs), bufs)
    check_grads(rb, once, two, RED, "layernorm")


@backends_of("layernorm")
@pytest.mark.parametrize("p", [0.0, 0.2])
@pytest.mark.parametrize("shape", [(4, 50, 256), (1, 1, 9)])
def test_residual_layernorm(rng, backend, p, shape):
    ref, k = kernels.get("layernorm", "reference"), kernels.get("layernorm", backend)
    C = shape[-1]
    a, res, dout = r32(rng, *shape), r32(rng, *shape), r32(rng, *shape)
    w, b = r32(rng, C), r32(rng, C)
    o_r, pre_r, m_r, s_r = ref.residual_forward(a, res, w, b, p, 42)
    o, pre, m, s = k.residual_forward(a, res, w, b, p, 42)
    np.testing.assert_array_equal(pre == res, pre_r == res)         # the same dropout mask
    assert_close(pre, pre_r, ELEM, "pre")
    assert_close(o, o_r, RED, "out")
    rb = [np.zeros_like(t) for t in (a, res, w, b)]
    ref.residual_backward(dout, pre_r, w, m_r, s_r, p, 42, *rb)
    bufs = [np.zeros_like(t) for t in (a, res, w, b)]
    once, two = twice(lambda: k.residual_backward(dout, pre, w, m, s, p, 42, *bufs), bufs)
    check_grads(rb, once, two, RED, "residual layernorm")


@backends_of("attention")
@pytest.mark.parametrize("B,T,H,D,lengths", [
    (3, 200, 2, 32, [200, 131, 64]),      # several query and key tiles, ragged
    (1, 1, 1, 3, [1]),                     # T=1, one head, odd D
    (3, 17, 1, 5, [17, 0, 9]),             # zero-length sequence in the batch
])
def test_attention(rng, backend, B, T, H, D, lengths):
    ref, k = kernels.get("attention", "reference"), kernels.get("attention", backend)
    q, kk, v, dout = (r32(rng, B, T, H, D) for _ in range(4))
    L = np.array(lengths)
    o_r, lse_r = ref.forward(q, kk, v, L)
    o, lse = k.forward(q, kk, v, L)
    assert_close(o, o_r, RED, "out")
    fin = np.isfinite(lse_r)
    np.testing.assert_array_equal(np.isfinite(lse), fin)
    assert_close(lse[fin], lse_r[fin], RED, "lse")
    rb = [np.zeros_like(q) for _ in range(3)]
    ref.backward(dout, q, kk, v, o_r, lse_r, L, None, *rb)
    bufs = [np.zeros_like(q) for _ in range(3)]
    once, two = twice(lambda: k.backward(dout, q, kk, v, o, lse, L, None, *bufs), bufs)
    # floor 1: with T=1 dq is mathematically 0 and float rounding is judged against O(1) inputs
    check_grads(rb, once, two, RED, "attention", floor=1.0)
    for g in once:
        assert np.all(g[L == 0] == 0) if (L == 0).any() else True


@backends_of("conv1d")
@pytest.mark.parametrize("B,T,Ci,Co,K", [(2, 50, 32, 48, 9), (3, 20, 64, 16, 1), (1, 1, 3, 5, 3),
                                         (2, 3, 5, 7, 9), (2, 11, 7, 3, 5)])
def test_conv1d(rng, backend, B, T, Ci, Co, K):
    ref, k = kernels.get("conv1d", "reference"), kernels.get("conv1d", backend)
    x, w, b = r32(rng, B, T, Ci), r32(rng, Co, Ci, K), r32(rng, Co)
    y_r = ref.forward(x, w, b)
    assert_close(k.forward(x, w, b), y_r, RED, "y")
    assert_close(k.forward(x, w, None), ref.forward(x, w, None), RED, "y without bias")
    dy = r32(rng, *y_r.shape)
    rb = [np.zeros_like(t) for t in (x, w, b)]
    ref.backward(dy, x, w, None, *rb)
    bufs = [np.zeros_like(t) for t in (x, w, b)]
    once, two = twice(lambda: k.backward(dy, x, w, None, *bufs), bufs)
    check_grads(rb, once, two, RED, "conv1d")


@backends_of("adam")
@pytest.mark.parametrize("wd,max_norm", [(0.0, 1.0), (0.01, None), (0.0, 1e6)])
def test_adam(rng, backend, wd, max_norm):
    ref, k = kernels.get("adam", "reference"), kernels.get("adam", backend)
    P = 100_003
    p0 = r32(rng, P)
    gs = [r32(rng, P) for _ in range(4)]
    state = {}
    for name, impl in (("ref", ref), ("fast", k)):
        p, m, v = p0.copy(), np.zeros(P, F32), np.zeros(P, F32)
        norms = [impl.clip_adam(p, g, m, v, step=i + 1, lr=1e-3, beta1=0.9, beta2=0.98, eps=1e-9,
                                weight_decay=wd, max_norm=max_norm) for i, g in enumerate(gs)]
        state[name] = (p, m, v, norms)
    for i in range(3):
        assert_close(state["fast"][i], state["ref"][i], 1e-5, f"adam buffer {i}")
    np.testing.assert_allclose(state["fast"][3], state["ref"][3], rtol=1e-7)   # fp32 sub-sums


@backends_of("adam")
def test_adam_refuses_nonfinite(rng, backend):
    k = kernels.get("adam", backend)
    p, g = r32(rng, 1000), r32(rng, 1000)
    g[17] = np.nan
    m, v, p0 = np.zeros(1000, F32), np.zeros(1000, F32), p.copy()
    norm = k.clip_adam(p, g, m, v, step=1, lr=1e-3, max_norm=1.0)
    assert not np.isfinite(norm)
    np.testing.assert_array_equal(p, p0)
    assert not m.any() and not v.any()


@backends_of("dropout")
@pytest.mark.parametrize("shape", [(16, 400, 256), (1,), (3, 7)])
def test_dropout(rng, backend, shape):
    ref, k = kernels.get("dropout", "reference"), kernels.get("dropout", backend)
    x = r32(rng, *shape)
    y = k.forward(x, 0.2, 7)
    np.testing.assert_array_equal(y, ref.forward(x, 0.2, 7))
    dy = r32(rng, *shape)
    r = np.zeros_like(x)
    ref.backward(dy, 0.2, 7, r)
    buf = np.zeros_like(x)
    once, two = twice(lambda: k.backward(dy, 0.2, 7, buf), [buf])
    check_grads([r], once, two, ELEM, "dropout")


@backends_of("activations")
@pytest.mark.parametrize("act", ["relu", "tanh"])
def test_activations(rng, backend, act):
    ref, k = kernels.get("activations", "reference"), kernels.get("activations", backend)
    x, dy = r32(rng, 5, 33), r32(rng, 5, 33)
    y = getattr(k, f"{act}_forward")(x)
    assert_close(y, getattr(ref, f"{act}_forward")(x), ELEM, act)
    r = np.zeros_like(x)
    getattr(ref, f"{act}_backward")(dy, y, r)
    buf = np.zeros_like(x)
    once, two = twice(lambda: getattr(k, f"{act}_backward")(dy, y, buf), [buf])
    check_grads([r], once, two, ELEM, act)


@backends_of("embedding")
@pytest.mark.parametrize("padding_idx", [None, 0])
def test_embedding(rng, backend, padding_idx):
    ref, k = kernels.get("embedding", "reference"), kernels.get("embedding", backend)
    w = r32(rng, 361, 256)
    ids = rng.integers(0, 361, (4, 37))
    ids[:, -5:] = 0
    np.testing.assert_array_equal(k.forward(w, ids), ref.forward(w, ids))
    dout = r32(rng, 4, 37, 256)
    r = np.zeros_like(w)
    ref.backward(dout, ids, r, padding_idx)
    buf = np.zeros_like(w)
    once, two = twice(lambda: k.backward(dout, ids, buf, padding_idx), [buf])
    check_grads([r], once, two, RED, "embedding")


@backends_of("length_regulator")
@pytest.mark.parametrize("max_len", [None, 6, 40])
def test_length_regulator(rng, backend, max_len):
    ref, k = kernels.get("length_regulator", "reference"), kernels.get("length_regulator", backend)
    x = r32(rng, 3, 5, 8)
    d = np.array([[1, 2, 0, 3, 1], [0, 0, 0, 0, 0], [4, 1, 1, 2, -1]])
    y_r, ml_r = ref.forward(x, d, max_len)
    y, ml = k.forward(x, d, max_len)
    np.testing.assert_array_equal(y, y_r)
    np.testing.assert_array_equal(ml, ml_r)
    dout = r32(rng, *y.shape)
    r = np.zeros_like(x)
    ref.backward(dout, d, r)
    buf = np.zeros_like(x)
    once, two = twice(lambda: k.backward(dout, d, buf), [buf])
    check_grads([r], once, two, ELEM * 10, "length regulator")


@backends_of("batchnorm")
@pytest.mark.parametrize("training", [True, False])
@pytest.mark.parametrize("shape", [(4, 60, 80), (2, 1, 3)])
def test_batchnorm(rng, backend, training, shape):
    ref, k = kernels.get("batchnorm", "reference"), kernels.get("batchnorm", backend)
    C = shape[-1]
    x, w, b, dout = r32(rng, *shape), r32(rng, C), r32(rng, C), r32(rng, *shape)
    rm0, rv0 = r32(rng, C), rng.uniform(0.5, 2, C).astype(F32)
    rm_r, rv_r, rm, rv = rm0.copy(), rv0.copy(), rm0.copy(), rv0.copy()
    o_r, m_r, s_r = ref.forward(x, w, b, rm_r, rv_r, training)
    o, m, s = k.forward(x, w, b, rm, rv, training)
    assert_close(o, o_r, RED, "out")
    assert_close(rm, rm_r, RED, "running_mean")
    assert_close(rv, rv_r, RED, "running_var")
    rb = [np.zeros_like(t) for t in (x, w, b)]
    ref.backward(dout, x, w, m_r, s_r, training, *rb)
    bufs = [np.zeros_like(t) for t in (x, w, b)]
    once, two = twice(lambda: k.backward(dout, x, w, m, s, training, *bufs), bufs)
    # floor 1: with 2 rows per channel dx cancels to ~1e-5 (judged against the O(1) inputs)
    check_grads(rb, once, two, RED, "batchnorm", floor=1.0)


@backends_of("losses")
@pytest.mark.parametrize("kind", ["l1", "mse"])
@pytest.mark.parametrize("shape,lengths", [((3, 50, 80), [50, 20, 0]), ((4, 9), [9, 1, 5, 3])])
def test_losses(rng, backend, kind, shape, lengths):
    ref, k = kernels.get("losses", "reference"), kernels.get("losses", backend)
    pred, target = r32(rng, *shape), r32(rng, *shape)
    L = np.array(lengths)
    lr = getattr(ref, f"{kind}_forward")(pred, target, L)
    assert abs(getattr(k, f"{kind}_forward")(pred, target, L) - lr) <= 1e-6 * abs(lr)
    r = np.zeros_like(pred)
    getattr(ref, f"{kind}_backward")(0.7, pred, target, L, r)
    buf = np.zeros_like(pred)
    once, two = twice(lambda: getattr(k, f"{kind}_backward")(0.7, pred, target, L, buf), [buf])
    check_grads([r], once, two, ELEM, kind)


def test_bucketize_matches_definition(rng):
    bins = np.linspace(-2.9, 11.4, 255).astype(F32)
    vals = np.concatenate([r32(rng, 1000) * 4, bins[:10], [-100, 100]]).astype(F32)
    idx = kernels.get("bucketize").forward(vals, bins)
    want = np.array([(bins < v).sum() for v in vals])       # #{j : bins[j] < value}
    np.testing.assert_array_equal(idx, want)


@pytest.mark.parametrize("backend", kernels.available()["layernorm"])
def test_layernorm_write_mode(rng, backend):
    """dx=None (da=dres=None) writes fresh gradients equal to accumulating into zeros."""
    k = kernels.get("layernorm", backend)
    x, a, dout = r32(rng, 6, 40, 64), r32(rng, 6, 40, 64), r32(rng, 6, 40, 64)
    w, b = r32(rng, 64), r32(rng, 64)
    y, m, s = k.forward(x, w, b)
    acc = np.zeros_like(x)
    k.backward(dout, x, w, m, s, acc, np.zeros_like(w), np.zeros_like(b))
    fresh = k.backward(dout, x, w, m, s, None, np.zeros_like(w), np.zeros_like(b))
    np.testing.assert_array_equal(fresh, acc)
    y, pre, m, s = k.residual_forward(a, x, w, b, 0.3, 9)
    da0, dr0 = np.zeros_like(a), np.zeros_like(a)
    k.residual_backward(dout, pre, w, m, s, 0.3, 9, da0, dr0, np.zeros_like(w), np.zeros_like(b))
    da, dr = k.residual_backward(dout, pre, w, m, s, 0.3, 9, None, None, np.zeros_like(w),
                                 np.zeros_like(b))
    np.testing.assert_array_equal(da, da0)
    np.testing.assert_array_equal(dr, dr0)


@pytest.mark.parametrize("backend", [b for b in kernels.available()["conv1d"] if b != "cython"])
@pytest.mark.parametrize("B,T,Ci,Co,K,lengths", [(3, 40, 16, 24, 9, [40, 17, 0]),
                                                 (2, 9, 32, 8, 1, [9, 1]),
                                                 (2, 3, 5, 7, 9, [3, 2])])
def test_conv1d_lengths(rng, backend, B, T, Ci, Co, K, lengths):
    """Rows past each length: read as 0, written as 0, never computed (reference: full conv of
    the zero-masked input, output masked)."""
    ref, k = kernels.get("conv1d", "reference"), kernels.get("conv1d", backend)
    L = np.array(lengths)
    x, w, b = r32(rng, B, T, Ci), r32(rng, Co, Ci, K), r32(rng, Co)
    y_r = ref.forward(x, w, b, None, L)
    y = k.forward(x, w, b, None, L)
    assert_close(y, y_r, RED, "y")
    assert not y[np.arange(T)[None, :] >= L[:, None]].any()
    dy = r32(rng, *y.shape)
    rb = [np.zeros_like(t) for t in (x, w, b)]
    ref.backward(dy, x, w, None, *rb, lengths=L)
    bufs = [np.zeros_like(t) for t in (x, w, b)]
    once, two = twice(lambda: k.backward(dy, x, w, None, *bufs, lengths=L), bufs)
    check_grads(rb, once, two, RED, "conv1d lengths")


FIR_SHAPES = [(2, 50, 8, 6, 9, None), (3, 40, 16, 24, 9, [40, 17, 0]), (2, 11, 7, 3, 5, None),
              (1, 1, 3, 5, 3, None), (2, 3, 5, 7, 9, [3, 2]), (4, 21, 6, 5, 7, [21, 20, 1, 2]),
              (2, 8, 3, 3, 3, [7, 8]), (3, 13, 4, 6, 9, [13, 6, 3]), (2, 37, 128, 16, 5, [37, 30])]


@pytest.mark.parametrize("depth,B,T,Ci,Co,K,lengths", [
    (d,) + shape for d in (1, 2) for shape in FIR_SHAPES if shape[4] >= (1 << d) + 1])
def test_conv1d_fast_fir(rng, monkeypatch, depth, B, T, Ci, Co, K, lengths):
    """The fast FIR paths, forced on at the given nesting depth, against the reference: odd and
    even lengths, L=0, L=1, T=1, K > T, every phase of the depth-2 output."""
    monkeypatch.setattr(conv1d, "FIR_MIN_K", 2)
    monkeypatch.setattr(conv1d, "FIR_MIN_CI", 1)
    monkeypatch.setattr(conv1d, "FIR_DEPTH2_MIN_K", 3 if depth == 2 else 99)
    monkeypatch.setattr(conv1d, "FIR_DEPTH2_MIN_ROWS", 0)
    monkeypatch.setattr(conv1d, "FIR_MIN_ROWS", 0)
    assert conv1d._fir_depth(K, Ci, T, T, 0) == depth
    ref, k = kernels.get("conv1d", "reference"), kernels.get("conv1d", "fir2")
    kw = {} if lengths is None else {"lengths": np.array(lengths)}
    x, w, b = r32(rng, B, T, Ci), r32(rng, Co, Ci, K), r32(rng, Co)
    y_r = ref.forward(x, w, b, None, **kw)
    assert_close(k.forward(x, w, b, None, **kw), y_r, RED, "y")
    assert_close(k.forward(x, w, None, None, **kw), ref.forward(x, w, None, None, **kw), RED,
                 "y without bias")
    dy = r32(rng, *y_r.shape)
    rb = [np.zeros_like(t) for t in (x, w, b)]
    ref.backward(dy, x, w, None, *rb, **kw)
    bufs = [np.zeros_like(t) for t in (x, w, b)]
    once, two = twice(lambda: k.backward(dy, x, w, None, *bufs, **kw), bufs)
    check_grads(rb, once, two, RED, "conv1d fast FIR")
    fresh = k.backward(dy, x, w, None, "new", np.zeros_like(w), None, **kw)
    assert_close(fresh, rb[0], RED, "dx='new'")


def test_conv1d_fast_fir_choice():
    """Default thresholds: FastSpeech2's wide convs take the fast FIR path, thin ones do not."""
    assert conv1d._fir_depth(9, 256, 100, 100, 9000) == 2       # decoder FFT conv, B=16
    assert conv1d._fir_depth(9, 256, 100, 100, 2300) == 1       # decoder FFT conv, B=8
    assert conv1d._fir_depth(9, 256, 100, 100, 1400) == 1       # encoder FFT conv, B=16
    assert conv1d._fir_depth(9, 256, 100, 100, 400) == 0        # encoder FFT conv, B=8
    assert conv1d._fir_depth(5, 512, 7, 7, 3000) == 1           # PostNet
    assert conv1d._fir_depth(5, 80, 100, 100, 3000) == 0        # thin input: direct is faster
    assert conv1d._fir_depth(3, 256, 100, 100, 3000) == 0       # short kernel: direct is faster
    assert conv1d._fir_depth(9, 256, 96, 100, 3000) == 0        # not a "same" conv


def test_fast_fir_plan_flops():
    from fastcpu.kernels._fir2 import plan
    assert plan(9, 1).flops == pytest.approx(14 / 18) and plan(9, 2).flops == pytest.approx(22 / 36)
    assert plan(5, 1).flops == pytest.approx(8 / 10)
    with pytest.raises(ValueError, match="needs K >= 5"):
        plan(3, 2)


@pytest.mark.parametrize("fir", [False, True])
@pytest.mark.parametrize("B,T,C,H,K,lengths", [(3, 40, 16, 24, 9, [40, 17, 0]),
                                               (2, 11, 7, 5, 5, [11, 10]), (1, 1, 3, 4, 3, [1]),
                                               (2, 6, 4, 8, 9, [0, 0])])
def test_ffn(rng, monkeypatch, fir, B, T, C, H, K, lengths):
    """Fused conv-ReLU-conv1x1 on valid rows against the reference, with the first conv direct
    and (forced) fast FIR; dx into an array, 'new' and None."""
    if fir:
        monkeypatch.setattr(conv1d, "FIR_MIN_K", 2)
        monkeypatch.setattr(conv1d, "FIR_MIN_CI", 1)
        monkeypatch.setattr(conv1d, "FIR_MIN_ROWS", 0)
    ref, k = kernels.get("ffn", "reference"), kernels.get("ffn", "numba")
    L = np.array(lengths)
    x, w1, b1 = r32(rng, B, T, C), r32(rng, H, C, K), r32(rng, H)
    w2, b2 = r32(rng, C, H, 1), r32(rng, C)
    y_r, h_r = ref.forward(x, w1, b1, w2, b2, L)
    y, h = k.forward(x, w1, b1, w2, b2, L)
    assert_close(y, y_r, RED, "y")
    assert not y[np.arange(T)[None, :] >= L[:, None]].any()
    dy = r32(rng, *y.shape)
    rb = [np.zeros_like(t) for t in (x, w1, b1, w2, b2)]
    ref.backward(dy, x, w1, w2, h_r, L, *rb)
    bufs = [np.zeros_like(t) for t in (x, w1, b1, w2, b2)]
    once, two = twice(lambda: k.backward(dy, x, w1, w2, h, L, *bufs), bufs)
    check_grads(rb, once, two, RED, "ffn", floor=1e-6)
    fresh = k.backward(dy, x, w1, w2, h, L, "new", *(np.zeros_like(t) for t in (w1, b1, w2, b2)))
    assert_close(fresh, rb[0], RED, "dx='new'", floor=1e-6)
    gw = [np.zeros_like(t) for t in (w1, b1, w2, b2)]
    assert k.backward(dy, x, w1, w2, h, L, None, *gw) is None
    assert_close(gw[0], rb[1], RED, "dw1 without dx", floor=1e-6)


@backends_of("attention")
@pytest.mark.parametrize("skip", [False, True])
def test_attention_on_packed_qkv_views(rng, backend, skip):
    """q, k, v as strided views of one (B, T, 3, H, D) projection, and dq, dk, dv as views of
    one gradient buffer (how MultiHeadAttention calls it): same results as contiguous arrays."""
    ref, k = kernels.get("attention", "reference"), kernels.get("attention", backend)
    B, T, H, D = 3, 70, 2, 16
    qkv, dout = r32(rng, B, T, 3, H, D), r32(rng, B, T, H, D)
    L = np.array([70, 33, 0])
    q, kk, v = (np.ascontiguousarray(qkv[:, :, i]) for i in range(3))
    o_r, lse_r = ref.forward(q, kk, v, L, None, skip)
    o, lse = k.forward(qkv[:, :, 0], qkv[:, :, 1], qkv[:, :, 2], L, None, skip)
    assert_close(o, o_r, RED, "out")
    rb = [np.zeros_like(q) for _ in range(3)]
    ref.backward(dout, q, kk, v, o_r, lse_r, L, None, *rb, skip)
    dqkv = np.zeros_like(qkv)
    views = [dqkv[:, :, i] for i in range(3)]
    once, two = twice(lambda: k.backward(dout, qkv[:, :, 0], qkv[:, :, 1], qkv[:, :, 2], o, lse,
                                         L, None, *views, skip), views)
    check_grads(rb, once, two, RED, "attention packed", floor=1.0)


@backends_of("attention")
def test_attention_skip_padded_queries(rng, backend):
    ref, k = kernels.get("attention", "reference"), kernels.get("attention", backend)
    B, T, H, D = 3, 150, 2, 16
    q, kk, v, dout = (r32(rng, B, T, H, D) for _ in range(4))
    L = np.array([150, 61, 0])
    o_r, lse_r = ref.forward(q, kk, v, L, None, True)
    o, lse = k.forward(q, kk, v, L, None, True)
    assert_close(o, o_r, RED, "out")
    np.testing.assert_array_equal(np.isfinite(lse), np.isfinite(lse_r))
    assert not o[1, 61:].any() and not o[2].any()
    rb = [np.zeros_like(q) for _ in range(3)]
    ref.backward(dout, q, kk, v, o_r, lse_r, L, None, *rb, True)
    bufs = [np.zeros_like(q) for _ in range(3)]
    once, two = twice(lambda: k.backward(dout, q, kk, v, o, lse, L, None, *bufs, True), bufs)
    check_grads(rb, once, two, RED, "attention skip", floor=1.0)


def test_linear_new_dx_equals_accumulated(rng):
    k = kernels.get("linear")
    x, w, dy = r32(rng, 3, 50, 64), r32(rng, 32, 64), r32(rng, 3, 50, 32)
    acc = np.zeros_like(x)
    dw1, db1, dw2, db2 = (np.zeros(s, np.float32) for s in ((32, 64), 32, (32, 64), 32))
    k.backward(dy, x, w, acc, dw1, db1)
    fresh = k.backward(dy, x, w, "new", dw2, db2)
    assert_close(fresh, acc, 1e-6, "dx")
    assert_close(db2, dy.reshape(-1, 32).sum(0), 1e-5, "db")


@pytest.mark.parametrize("backend,K,lengths", [
    (be, K, L) for be in kernels.available()["conv1d"]
    for K, L in [(9, None), (1, None), (5, [30, 11]), (1, [30, 0])]
    if L is None or be != "cython"])                # lengths: reference and numba only
def test_conv1d_new_dx_equals_accumulated(rng, backend, K, lengths):
    k = kernels.get("conv1d", backend)
    kw = {} if lengths is None else {"lengths": np.array(lengths)}
    x, w, b, dy = r32(rng, 2, 30, 24), r32(rng, 16, 24, K), r32(rng, 16), r32(rng, 2, 30, 16)
    acc = np.zeros_like(x)
    k.backward(dy, x, w, None, acc, np.zeros_like(w), np.zeros_like(b), **kw)
    fresh = k.backward(dy, x, w, None, "new", np.zeros_like(w), np.zeros_like(b), **kw)
    assert_close(fresh, acc, 1e-6, "dx")
