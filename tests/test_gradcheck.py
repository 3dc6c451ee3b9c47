"""Layer 1: every reference kernel against mathematics (float64 random-direction VJP checks),
on ordinary and edge shapes: T=1, odd channel counts, one head, a zero-length sequence, K > T."""
import numpy as np
import pytest

from fastcpu.kernels import (activations, attention, batchnorm, conv1d, dropout, embedding, ffn,
                             layernorm, length_regulator, linear, losses)
from tests.conftest import vjp_check

F64 = np.float64


@pytest.fixture
def rng():
    return np.random.default_rng(1234)


def z(a):
    return np.zeros_like(a)


@pytest.mark.parametrize("N,C", [(5, 8), (1, 7), (3, 1 + 2 * 5)])
def test_layernorm(rng, N, C):
    x, w, b = rng.standard_normal((N, C)), rng.standard_normal(C), rng.standard_normal(C)

    def fn(x, w, b):
        return layernorm.forward_reference(x, w, b)[0]

    def grads(u):
        _, m, r = layernorm.forward_reference(x, w, b)
        dx, dw, db = z(x), z(w), z(b)
        layernorm.backward_reference(u, x, w, m, r, dx, dw, db)
        return [dx, dw, db]
    vjp_check(fn, [x, w, b], grads, rng, what="layernorm")


@pytest.mark.parametrize("p", [0.0, 0.4])
def test_residual_layernorm(rng, p):
    a, res = rng.standard_normal((2, 3, 9)), rng.standard_normal((2, 3, 9))
    w, b = rng.standard_normal(9), rng.standard_normal(9)

    def fn(a, res, w, b):
        return layernorm.residual_forward_reference(a, res, w, b, p, 77)[0]

    def grads(u):
        _, pre, m, r = layernorm.residual_forward_reference(a, res, w, b, p, 77)
        da, dres, dw, db = z(a), z(res), z(w), z(b)
        layernorm.residual_backward_reference(u, pre, w, m, r, p, 77, da, dres, dw, db)
        return [da, dres, dw, db]
    vjp_check(fn, [a, res, w, b], grads, rng, what="residual layernorm")


@pytest.mark.parametrize("B,T,H,D,lengths", [
    (2, 6, 2, 4, [6, 3]),        # ordinary, ragged
    (1, 1, 1, 3, [1]),           # T=1, one head, odd D
    (3, 5, 1, 5, [5, 0, 2]),     # a zero-length sequence in the batch
])
def test_attention(rng, B, T, H, D, lengths):
    q, k, v = (rng.standard_normal((B, T, H, D)) for _ in range(3))
    L = np.array(lengths)

    def fn(q, k, v):
        return attention.forward_reference(q, k, v, L)[0]

    def grads(u):
        out, lse = attention.forward_reference(q, k, v, L)
        dq, dk, dv = z(q), z(k), z(v)
        attention.backward_reference(u, q, k, v, out, lse, L, None, dq, dk, dv)
        return [dq, dk, dv]
    vjp_check(fn, [q, k, v], grads, rng, what="attention")


@pytest.mark.parametrize("B,T,Ci,Co,K", [(2, 7, 4, 5, 3), (1, 1, 3, 2, 1), (2, 3, 5, 3, 9),
                                         (1, 4, 3, 7, 5)])
def test_conv1d(rng, B, T, Ci, Co, K):
    x, w, b = rng.standard_normal((B, T, Ci)), rng.standard_normal((Co, Ci, K)), \
        rng.standard_normal(Co)

    def fn(x, w, b):
        return conv1d.forward_reference(x, w, b)

    def grads(u):
        dx, dw, db = z(x), z(w), z(b)
        conv1d.backward_reference(u, x, w, None, dx, dw, db)
        return [dx, dw, db]
    vjp_check(fn, [x, w, b], grads, rng, what="conv1d")


@pytest.mark.parametrize("B,T,C,H,K,lengths", [(2, 7, 4, 6, 3, [7, 4]), (3, 5, 3, 5, 9, [5, 0, 1])])
def test_ffn(rng, B, T, C, H, K, lengths):
    x, w1, b1 = rng.standard_normal((B, T, C)), rng.standard_normal((H, C, K)), \
        rng.standard_normal(H)
    w2, b2 = rng.standard_normal((C + 1, H, 1)), rng.standard_normal(C + 1)
    L = np.array(lengths)

    def fn(x, w1, b1, w2, b2):
        return ffn.forward_reference(x, w1, b1, w2, b2, L)[0]

    def grads(u):
        h = ffn.forward_reference(x, w1, b1, w2, b2, L)[1]
        g = [z(x), z(w1), z(b1), z(w2), z(b2)]
        ffn.backward_reference(u, x, w1, w2, h, L, *g)
        return g
    vjp_check(fn, [x, w1, b1, w2, b2], grads, rng, what="ffn")


def test_linear(rng):
    x, w, b = rng.standard_normal((2, 3, 5)), rng.standard_normal((7, 5)), rng.standard_normal(7)

    def grads(u):
        dx, dw, db = z(x), z(w), z(b)
        linear.backward_reference(u, x, w, dx, dw, db)
        return [dx, dw, db]
    vjp_check(linear.forward_reference, [x, w, b], grads, rng, what="linear")


def test_dropout(rng):
    x = rng.standard_normal((4, 9))

    def grads(u):
        dx = z(x)
        dropout.backward_reference(u, 0.3, 5, dx)
        return [dx]
    vjp_check(lambda x: dropout.forward_reference(x, 0.3, 5), [x], grads, rng, what="dropout")


@pytest.mark.parametrize("act", ["relu", "tanh"])
def test_activations(rng, act):
    x = rng.standard_normal((3, 11))
    x[np.abs(x) < 1e-3] = 0.5                      # keep away from relu's kink
    f = getattr(activations, f"{act}_forward_reference")
    b = getattr(activations, f"{act}_backward_reference")

    def grads(u):
        dx = z(x)
        b(u, f(x), dx)
        return [dx]
    vjp_check(f, [x], grads, rng, what=act)


@pytest.mark.parametrize("padding_idx", [None, 0])
def test_embedding(rng, padding_idx):
    w = rng.standard_normal((6, 5))
    ids = np.array([[0, 3, 3], [5, 0, 1]])

    w0 = w.copy()
    rows = np.arange(6)[:, None]

    def fn(w):     # torch's padding_idx rule: the padding row is a constant for the gradient
        if padding_idx is not None:
            w = np.where(rows == padding_idx, w0, w)
        return embedding.forward_reference(w, ids)

    def grads(u):
        dw = z(w)
        embedding.backward_reference(u, ids, dw, padding_idx)
        return [dw]
    vjp_check(fn, [w], grads, rng, what="embedding")


@pytest.mark.parametrize("max_len", [None, 5, 30])
def test_length_regulator(rng, max_len):
    x = rng.standard_normal((3, 4, 5))
    d = np.array([[1, 2, 0, 3], [0, 0, 0, 0], [4, 1, 1, 2]])     # second: all-zero durations

    def grads(u):
        dx = z(x)
        length_regulator.backward_reference(u, d, dx)
        return [dx]
    vjp_check(lambda x: length_regulator.forward_reference(x, d, max_len)[0], [x], grads, rng,
              what="length regulator")


@pytest.mark.parametrize("training", [True, False])
def test_batchnorm(rng, training):
    x, w, b = rng.standard_normal((2, 5, 7)), rng.standard_normal(7), rng.standard_normal(7)
    rm, rv = rng.standard_normal(7), rng.uniform(0.5, 2, 7)

    def fn(x, w, b):
        return batchnorm.forward_reference(x, w, b, rm.copy(), rv.copy(), training)[0]

    def grads(u):
        _, m, r = batchnorm.forward_reference(x, w, b, rm.copy(), rv.copy(), training)
        dx, dw, db = z(x), z(w), z(b)
        batchnorm.backward_reference(u, x, w, m, r, training, dx, dw, db)
        return [dx, dw, db]
    vjp_check(fn, [x, w, b], grads, rng, what=f"batchnorm training={training}")


@pytest.mark.parametrize("kind", ["l1", "mse"])
@pytest.mark.parametrize("lengths", [[5, 2, 0], [1, 1, 1]])
def test_losses(rng, kind, lengths):
    pred, target = rng.standard_normal((3, 5, 4)), rng.standard_normal((3, 5, 4))
    L = np.array(lengths)
    f = getattr(losses, f"{kind}_forward_reference")
    b = getattr(losses, f"{kind}_backward_reference")

    def grads(u):
        dp = z(pred)
        b(float(u), pred, target, L, dp)
        return [dp]
    vjp_check(lambda p: np.array(f(p, target, L)), [pred], grads, rng, what=kind)
