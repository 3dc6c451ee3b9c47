"""Autograd Functions over the kernels: each forward calls one kernel, each backward its pair.

All take and return ``Tensor``s; the kernels come from ``fastcpu.kernels.get(name)`` (auto backend)
unless a module passes ``backend=``. Shapes are channels-last: (B, T, C).
"""
from __future__ import annotations

import numpy as np

from fastcpu import kernels
from fastcpu.kernels import gemm
from fastcpu.autograd import Function, Tensor


def _k(name, backend=None):
    return kernels.get(name, backend or "auto")


# Data parallelism (``fastcpu.distributed``): a rank runs rows offset..offset+rows-1 of each
# global batch. Dropout masks are then the global batch's rows (the element counter starts at
# the rank's first element); BatchNorm's training statistics are reduced over the ranks.
# Single process: (0, None) and None — nothing changes.
_shard = (0, None)
_bn_reduce = None


def set_data_parallel(offset: int = 0, rows=None, reduce=None) -> None:
    """This rank's rows of the global batch and the BatchNorm reduction (a callable summing a
    float64 array in place over the ranks); no arguments: single process."""
    global _shard, _bn_reduce
    _shard, _bn_reduce = (int(offset), rows), reduce


def _shard_seed(seed, x):
    offset, rows = _shard
    if not offset:
        return seed
    return (seed, offset * (x.size // rows))         # batch-major: elements per row


def _gemm_precision(ctx):
    """Record the GEMM precision of a forward's backward: the forward's own, or the
    ``backward=`` of its ``kernels.use`` (the tape runs backward after that context ended)."""
    ctx.precision = gemm.backward_precision()


def _as_forward(ctx):
    return gemm.use(ctx.precision)


class _Linear(Function):
    @staticmethod
    def forward(ctx, x, w, b):
        ctx.save_for_backward(x, w)
        ctx.has_b = b is not None
        _gemm_precision(ctx)
        return _k("linear").forward(x, w, b)

    @staticmethod
    def backward(ctx, dy):
        x, w = ctx.saved_tensors
        dw = ctx.grad_buffer(1)
        db = ctx.grad_buffer(2) if ctx.has_b else None
        with _as_forward(ctx):
            dx = _k("linear").backward(dy, x, w, ctx.dx_target(0), dw, db)
        return dx, dw, db


def linear(x, w, b=None):
    return _Linear.apply(x, w, b)


class _LinearCat(Function):
    """Several Linears of one input as one GEMM: y = x @ [w_0; w_1; ...]^T + [b_0; b_1; ...]."""
    @staticmethod
    def forward(ctx, x, *wb):
        ws, bs = wb[0::2], wb[1::2]
        w = np.concatenate(ws)
        b = None if bs[0] is None else np.concatenate(bs)
        ctx.save_for_backward(x, w)
        ctx.rows = np.cumsum([0] + [a.shape[0] for a in ws])
        ctx.has_b = b is not None
        _gemm_precision(ctx)
        return _k("linear").forward(x, w, b)

    @staticmethod
    def backward(ctx, dy):
        x, w = ctx.saved_tensors
        dw = np.zeros_like(w)
        db = np.zeros(w.shape[0], w.dtype) if ctx.has_b else None
        with _as_forward(ctx):
            dx = _k("linear").backward(dy, x, w, ctx.dx_target(0), dw, db)
        grads = []
        for i, (r0, r1) in enumerate(zip(ctx.rows[:-1], ctx.rows[1:])):
            g = ctx.grad_buffer(1 + 2 * i)
            g += dw[r0:r1]
            grads.append(g)
            if ctx.has_b:
                gb = ctx.grad_buffer(2 + 2 * i)
                gb += db[r0:r1]
                grads.append(gb)
            else:
                grads.append(None)
        return (dx, *grads)


def linear_cat(x, *wb):
    """``linear_cat(x, w0, b0, w1, b1, ...)``: the Linears (w_i, b_i) of x concatenated along the
    output features, computed as one GEMM (biases all present or all None)."""
    if len(wb) % 2 or (any(b is None for b in wb[1::2]) and any(b is not None
                                                                for b in wb[1::2])):
        raise ValueError("linear_cat: give (weight, bias) pairs, biases all present or all None")
    return _LinearCat.apply(x, *wb)


class _Conv1d(Function):
    @staticmethod
    def forward(ctx, x, w, b, padding, backend, lengths):
        ctx.save_for_backward(x, w)
        ctx.padding, ctx.backend, ctx.has_b = padding, backend, b is not None
        ctx.kw = {} if lengths is None else {"lengths": lengths}
        _gemm_precision(ctx)
        return _k("conv1d", backend).forward(x, w, b, padding, **ctx.kw)

    @staticmethod
    def backward(ctx, dy):
        x, w = ctx.saved_tensors
        dw = ctx.grad_buffer(1)
        db = ctx.grad_buffer(2) if ctx.has_b else None
        with _as_forward(ctx):
            dx = _k("conv1d", ctx.backend).backward(dy, x, w, ctx.padding, ctx.dx_target(0), dw,
                                                    db, **ctx.kw)
        return dx, dw, db


def conv1d(x, w, b=None, padding=None, backend=None, lengths=None):
    """Channels-last conv; with ``lengths`` rows t >= lengths[b] are padding: read as 0, written
    as 0, never computed."""
    return _Conv1d.apply(x, w, b, padding=padding, backend=backend, lengths=lengths)


class _FFN(Function):
    @staticmethod
    def forward(ctx, x, w1, b1, w2, b2, lengths):
        _gemm_precision(ctx)
        y, h = _k("ffn").forward(x, w1, b1, w2, b2, lengths)
        ctx.save_for_backward(x, w1, w2, h)
        ctx.lengths, ctx.has_b = lengths, (b1 is not None, b2 is not None)
        return y

    @staticmethod
    def backward(ctx, dy):
        x, w1, w2, h = ctx.saved_tensors
        dw1, dw2 = ctx.grad_buffer(1), ctx.grad_buffer(3)
        db1 = ctx.grad_buffer(2) if ctx.has_b[0] else None
        db2 = ctx.grad_buffer(4) if ctx.has_b[1] else None
        with _as_forward(ctx):
            dx = _k("ffn").backward(dy, x, w1, w2, h, ctx.lengths, ctx.dx_target(0), dw1, db1,
                                    dw2, db2)
        return dx, dw1, db1, dw2, db2


def ffn(x, w1, b1, w2, b2, lengths):
    """Conv_1x1(ReLU(Conv_K(x))) on the valid rows (``lengths``), fused (kernels.ffn)."""
    return _FFN.apply(x, w1, b1, w2, b2, lengths=lengths)


class _LayerNorm(Function):
    @staticmethod
    def forward(ctx, x, w, b, eps, backend):
        out, mean, rstd = _k("layernorm", backend).forward(x, w, b, eps)
        ctx.save_for_backward(x, w, mean, rstd)
        ctx.backend = backend
        return out

    @staticmethod
    def backward(ctx, dout):
        x, w, mean, rstd = ctx.saved_tensors
        dw, db = ctx.grad_buffer(1), ctx.grad_buffer(2)
        dx = _k("layernorm", ctx.backend).backward(np.ascontiguousarray(dout), x, w, mean, rstd,
                                                   ctx.leaf_grad(0), dw, db)
        return dx, dw, db


def layer_norm(x, w, b, eps=1e-5, backend=None):
    return _LayerNorm.apply(x, w, b, eps=eps, backend=backend)


class _ResidualLayerNorm(Function):
    @staticmethod
    def forward(ctx, a, res, w, b, p, seed, eps, backend):
        seed = _shard_seed(seed, a)
        out, pre, mean, rstd = _k("layernorm", backend).residual_forward(a, res, w, b, p, seed,
                                                                          eps)
        ctx.save_for_backward(pre, w, mean, rstd)
        ctx.p, ctx.seed, ctx.backend = p, seed, backend
        return out

    @staticmethod
    def backward(ctx, dout):
        pre, w, mean, rstd = ctx.saved_tensors
        dw, db = ctx.grad_buffer(2), ctx.grad_buffer(3)
        da, dres = ctx.leaf_grad(0), ctx.leaf_grad(1)
        if (da is None) != (dres is None):          # one leaf, one not: accumulate into both
            da, dres = ctx.grad_buffer(0), ctx.grad_buffer(1)
        da, dres = _k("layernorm", ctx.backend).residual_backward(
            np.ascontiguousarray(dout), pre, w, mean, rstd, ctx.p, ctx.seed, da, dres, dw, db)
        return da, dres, dw, db


def residual_layer_norm(a, res, w, b, p=0.0, seed=0, eps=1e-5, backend=None):
    """LayerNorm(Dropout_p(a) + res) in one kernel pass (the post-norm block's tail)."""
    return _ResidualLayerNorm.apply(a, res, w, b, p=p, seed=seed, eps=eps, backend=backend)


class _Attention(Function):
    """Inputs q, k, v (B, T, H, D), or one packed (B, T, 3, H, D) whose three slices the kernels
    read in place (and whose gradient they write in place)."""
    @staticmethod
    def _split(a):
        return a[:, :, 0], a[:, :, 1], a[:, :, 2]

    @staticmethod
    def forward(ctx, *qkv, lengths, scale, backend, skip):
        q, k, v = _Attention._split(qkv[0]) if len(qkv) == 1 else qkv
        _gemm_precision(ctx)
        out, lse = _k("attention", backend).forward(q, k, v, lengths, scale, skip)
        ctx.save_for_backward(q, k, v, out, lse)
        ctx.lengths, ctx.scale, ctx.backend, ctx.skip = lengths, scale, backend, skip
        return out

    @staticmethod
    def backward(ctx, dout):
        q, k, v, out, lse = ctx.saved_tensors
        n = len(ctx.inputs)
        grads = tuple(ctx.grad_buffer(i) for i in range(n))
        dq, dk, dv = _Attention._split(grads[0]) if n == 1 else grads
        with _as_forward(ctx):
            _k("attention", ctx.backend).backward(dout, q, k, v, out, lse, ctx.lengths,
                                                  ctx.scale, dq, dk, dv, ctx.skip)
        return grads


def attention(q, k, v, lengths, scale=None, backend=None, skip_padded_queries=False):
    """q, k, v (B, T, H, D) Tensors, key-padding ``lengths`` (B,) -> (B, T, H, D)."""
    return _Attention.apply(q, k, v, lengths=lengths, scale=scale, backend=backend,
                            skip=skip_padded_queries)


def attention_packed(qkv, lengths, scale=None, backend=None, skip_padded_queries=False):
    """Attention of q, k, v packed in one (B, T, 3, H, D) Tensor (one projection GEMM made them),
    -> (B, T, H, D); the kernels read the three strided views in place."""
    return _Attention.apply(qkv, lengths=lengths, scale=scale, backend=backend,
                            skip=skip_padded_queries)


class _Reshape(Function):
    @staticmethod
    def forward(ctx, x, shape):
        ctx.shape = x.shape
        return np.ascontiguousarray(x).reshape(shape)

    @staticmethod
    def backward(ctx, g):
        return (g.reshape(ctx.shape),)


def reshape(x, shape):
    return _Reshape.apply(x, shape=shape)


class _Dropout(Function):
    @staticmethod
    def forward(ctx, x, p, seed):
        seed = _shard_seed(seed, x)
        ctx.p, ctx.seed = p, seed
        return _k("dropout").forward(x, p, seed)

    @staticmethod
    def backward(ctx, dy):
        dx = ctx.grad_buffer(0)
        _k("dropout").backward(dy, ctx.p, ctx.seed, dx)
        return (dx,)


def dropout(x, p, seed):
    return _Dropout.apply(x, p=p, seed=seed)


def _activation(name):
    """An autograd Function for activation ``name``: y = f(x); backward from the saved output."""
    class _Act(Function):
        @staticmethod
        def forward(ctx, x):
            y = getattr(_k("activations"), f"{name}_forward")(x)
            ctx.save_for_backward(y)
            return y

        @staticmethod
        def backward(ctx, dy):
            dx = ctx.grad_buffer(0)
            getattr(_k("activations"), f"{name}_backward")(dy, ctx.saved_tensors[0], dx)
            return (dx,)
    _Act.__name__ = _Act.__qualname__ = name.capitalize()
    return _Act


_Relu, _Tanh = _activation("relu"), _activation("tanh")


def relu(x):
    return _Relu.apply(x)


def tanh(x):
    return _Tanh.apply(x)


class _Embedding(Function):
    @staticmethod
    def forward(ctx, w, ids, padding_idx):
        ctx.ids, ctx.padding_idx = ids, padding_idx
        return _k("embedding").forward(w, ids)

    @staticmethod
    def backward(ctx, dout):
        dw = ctx.grad_buffer(0)
        _k("embedding").backward(dout, ctx.ids, dw, ctx.padding_idx)
        return (dw,)


def embedding(ids, w, padding_idx=None):
    return _Embedding.apply(w, ids=np.asarray(ids), padding_idx=padding_idx)


class _BatchNorm(Function):
    @staticmethod
    def forward(ctx, x, w, b, rm, rv, training, momentum, eps):
        ctx.reduce = _bn_reduce if training else None
        if ctx.reduce is None:
            out, mean, rstd = _k("batchnorm").forward(x, w, b, rm, rv, training, momentum, eps)
        else:
            out, mean, rstd = _k("batchnorm").forward(x, w, b, rm, rv, training, momentum, eps,
                                                      reduce=ctx.reduce)
        ctx.save_for_backward(x, w, mean, rstd)
        ctx.training = training
        return out

    @staticmethod
    def backward(ctx, dout):
        x, w, mean, rstd = ctx.saved_tensors
        dx = ctx.grad_buffer(0) if ctx.needs_input_grad[0] else None
        dw, db = ctx.grad_buffer(1), ctx.grad_buffer(2)
        if ctx.reduce is None:
            _k("batchnorm").backward(dout, x, w, mean, rstd, ctx.training, dx, dw, db)
        else:
            _k("batchnorm").backward(dout, x, w, mean, rstd, ctx.training, dx, dw, db,
                                     reduce=ctx.reduce)
        return dx, dw, db


def batch_norm(x, w, b, running_mean, running_var, training, momentum=0.1, eps=1e-5):
    return _BatchNorm.apply(x, w, b, rm=running_mean, rv=running_var, training=training,
                            momentum=momentum, eps=eps)


class _LengthRegulator(Function):
    @staticmethod
    def forward(ctx, x, durations, max_len):
        out, mel_len = _k("length_regulator").forward(x, durations, max_len)
        ctx.durations = durations
        ctx.mel_len = mel_len
        return out

    @staticmethod
    def backward(ctx, dout):
        dx = ctx.grad_buffer(0)
        _k("length_regulator").backward(np.ascontiguousarray(dout), ctx.durations, dx)
        return (dx,)


def length_regulator(x, durations, max_len=None):
    """Expand phonemes by durations; returns (Tensor (B, T, C), mel_len (B,) ndarray)."""
    durations = np.asarray(durations)
    out = _LengthRegulator.apply(x, durations=durations, max_len=max_len)
    return out, np.minimum(np.maximum(durations, 0).sum(1), out.shape[1])


class _MaskedLoss(Function):
    @staticmethod
    def forward(ctx, pred, target, lengths, kind):
        ctx.save_for_backward(pred, target)
        ctx.lengths, ctx.kind = lengths, kind
        return np.asarray(getattr(_k("losses"), f"{kind}_forward")(pred, target, lengths),
                          dtype=pred.dtype)

    @staticmethod
    def backward(ctx, dloss):
        pred, target = ctx.saved_tensors
        dp = ctx.grad_buffer(0)
        getattr(_k("losses"), f"{ctx.kind}_backward")(float(dloss), pred, target, ctx.lengths, dp)
        return (dp,)


def masked_l1(pred, target, lengths):
    """Mean |pred - target| over valid steps t < lengths[b] (target is a plain array)."""
    return _MaskedLoss.apply(pred, target=target, lengths=lengths, kind="l1")


def masked_mse(pred, target, lengths):
    return _MaskedLoss.apply(pred, target=target, lengths=lengths, kind="mse")


class _MaskRows(Function):
    @staticmethod
    def forward(ctx, x, lengths):
        ctx.lengths = lengths
        return _zero_rows(x.copy(), lengths)

    @staticmethod
    def backward(ctx, g):
        return (_zero_rows(g.copy(), ctx.lengths),)


def _zero_rows(a, lengths):
    T = a.shape[1]
    for b, L in enumerate(np.asarray(lengths)):
        if L < T:
            a[b, max(int(L), 0):] = 0
    return a


def mask_rows(x, lengths):
    """Zero the padding steps t >= lengths[b] of x (B, T, ...) — the reference's masked_fill."""
    return _MaskRows.apply(x, lengths=np.asarray(lengths))


class _AddConst(Function):
    @staticmethod
    def forward(ctx, x, c):
        return x + c

    @staticmethod
    def backward(ctx, g):
        return (g,)


def add_const(x, c):
    """x + c for a constant array c broadcast over x (no gradient to c): positional tables."""
    return _AddConst.apply(x, c=c)


class _AddOverTime(Function):
    @staticmethod
    def forward(ctx, x, s):
        return x + s[:, None, :]

    @staticmethod
    def backward(ctx, g):
        return g, g.sum(1)


def add_over_time(x, s):
    """x (B, T, C) + s (B, C) broadcast over time (speaker embedding)."""
    return _AddOverTime.apply(x, s)


class _SliceTime(Function):
    @staticmethod
    def forward(ctx, x, T):
        ctx.shape = x.shape
        return np.ascontiguousarray(x[:, :T])

    @staticmethod
    def backward(ctx, g):
        full = np.zeros(ctx.shape, g.dtype)
        full[:, :g.shape[1]] = g
        return (full,)


def slice_time(x, T):
    """x[:, :T] (the decoder's max_seq_len truncation); identity when T covers x."""
    return x if T >= x.shape[1] else _SliceTime.apply(x, T=T)


__all__ = ["slice_time", "mask_rows", "add_const", "add_over_time", "linear", "conv1d", "layer_norm", "residual_layer_norm", "attention", "reshape",
           "dropout", "relu", "tanh", "embedding", "batch_norm", "length_regulator", "masked_l1",
           "masked_mse", "Tensor"]
