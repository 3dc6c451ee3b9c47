"""BatchNorm1d, channels-last: statistics per channel over every row (B*T frames, padding included,
as the reference PostNet does).

Shapes: x (N, C) (any (..., C) is viewed as rows); weight, bias, running_mean, running_var (C,).

    train:  mean = x.mean(0); var = x.var(0) (biased); rstd = 1/sqrt(var + eps)
            out  = (x - mean) * rstd * w + b
            running_mean = (1 - momentum) * running_mean + momentum * mean
            running_var  = (1 - momentum) * running_var  + momentum * var * N / (N - 1)  (unbiased)
    eval:   mean, rstd from the running statistics (not updated)
    backward (train): xhat = (x - mean) * rstd
            dw += sum(dout * xhat); db += sum(dout)
            dx += w * rstd * (dout - mean(dout) - xhat * mean(dout * xhat))
    backward (eval):  dx += dout * w * rstd (mean and rstd are constants)
"""
from types import SimpleNamespace

import numba as nb
import numpy as np

from fastcpu.kernels._common import PJIT, as_rows

# auto = "numba": `python -m pytest benchmarks/test_kernels.py -k batchnorm --benchmark-only`
AUTO = "numba"
NCHUNK = 64


def _update_running(running_mean, running_var, mean, var, n, momentum):
    if running_mean is None:
        return
    if n < 2:
        raise ValueError("BatchNorm1d training needs more than one value per channel")
    running_mean *= 1 - momentum
    running_mean += momentum * mean
    running_var *= 1 - momentum
    running_var += momentum * var * (n / (n - 1))


def forward_reference(x, w, b, running_mean, running_var, training, momentum=0.1, eps=1e-5):
    x2 = as_rows(x)
    if training:
        mean = x2.mean(0)
        var = x2.var(0)
        _update_running(running_mean, running_var, mean, var, x2.shape[0], momentum)
    else:
        mean, var = running_mean, running_var
    rstd = (1.0 / np.sqrt(var + eps)).astype(x.dtype)
    out = (x2 - mean) * rstd * w + b
    return out.reshape(x.shape).astype(x.dtype), mean.astype(x.dtype), rstd


def backward_reference(dout, x, w, mean, rstd, training, dx, dw, db):
    x2, d2 = as_rows(x), as_rows(dout)
    xhat = (x2 - mean) * rstd
    db += d2.sum(0)
    dw += (d2 * xhat).sum(0)
    if dx is None:
        return
    if training:
        g = d2 - d2.mean(0) - xhat * (d2 * xhat).mean(0)
    else:
        g = d2
    as_rows(dx)[...] += g * (w * rstd)


@nb.njit(**PJIT)
def _colstats_nb(x, nchunk):
    # per-chunk column sums of x and x^2 (float64), summed in chunk order
    # (row slices + range(len) loops: vectorisable; float32 rows summed into float64 partials)
    N, C = x.shape
    s1 = np.zeros((nchunk, C))
    for ch in nb.prange(nchunk):
        acc = s1[ch]
        for i in range(ch * N // nchunk, (ch + 1) * N // nchunk):
            xr = x[i]
            for c in range(C):
                acc[c] += xr[c]
    mean = s1.sum(0) / N
    m32 = mean.astype(np.float32)
    s2 = np.zeros((nchunk, C))
    for ch in nb.prange(nchunk):
        acc = s2[ch]
        for i in range(ch * N // nchunk, (ch + 1) * N // nchunk):
            xr = x[i]
            for c in range(C):
                dd = xr[c] - m32[c]
                acc[c] += dd * dd
    return mean, s2.sum(0) / N


@nb.njit(**PJIT)
def _affine_nb(x, mean, scale, b, out):
    # out = (x - mean) * scale + b, scale = rstd * w
    for i in nb.prange(x.shape[0]):
        xr, orow = x[i], out[i]
        for c in range(xr.shape[0]):
            orow[c] = (xr[c] - mean[c]) * scale[c] + b[c]


@nb.njit(**PJIT)
def _bwd_sums_nb(dout, x, mean, rstd, nchunk):
    N, C = x.shape
    sd = np.zeros((nchunk, C))
    sdx = np.zeros((nchunk, C))
    for ch in nb.prange(nchunk):
        a1, a2 = sd[ch], sdx[ch]
        for i in range(ch * N // nchunk, (ch + 1) * N // nchunk):
            dr, xr = dout[i], x[i]
            for c in range(C):
                a1[c] += dr[c]
                a2[c] += dr[c] * (xr[c] - mean[c]) * rstd[c]
    return sd.sum(0), sdx.sum(0)


@nb.njit(**PJIT)
def _bwd_dx_nb(dout, x, mean, rstd, w, md, mdx, training, dx):
    for i in nb.prange(x.shape[0]):
        dr, xr, dxr = dout[i], x[i], dx[i]
        if training:
            for c in range(xr.shape[0]):
                dxr[c] += (dr[c] - md[c] - (xr[c] - mean[c]) * rstd[c] * mdx[c]) * w[c] * rstd[c]
        else:
            for c in range(xr.shape[0]):
                dxr[c] += dr[c] * w[c] * rstd[c]


def _nchunk(n):
    return max(1, min(NCHUNK, n))


def forward_numba(x, w, b, running_mean, running_var, training, momentum=0.1, eps=1e-5):
    x2 = as_rows(x)
    if training:
        mean, var = _colstats_nb(x2, _nchunk(x2.shape[0]))
        _update_running(running_mean, running_var, mean.astype(x.dtype), var.astype(x.dtype),
                        x2.shape[0], momentum)
    else:
        mean, var = running_mean, running_var
    mean = mean.astype(x.dtype)
    rstd = (1.0 / np.sqrt(var + eps)).astype(x.dtype)
    out = np.empty_like(x2)
    _affine_nb(x2, mean, (rstd * w).astype(x.dtype), b, out)
    return out.reshape(x.shape), mean, rstd


def backward_numba(dout, x, w, mean, rstd, training, dx, dw, db):
    x2, d2 = as_rows(x), as_rows(np.ascontiguousarray(dout))
    sd, sdx = _bwd_sums_nb(d2, x2, mean, rstd, _nchunk(x2.shape[0]))
    db += sd.astype(db.dtype)
    dw += sdx.astype(dw.dtype)
    if dx is not None:
        n = x2.shape[0]
        _bwd_dx_nb(d2, x2, mean, rstd, w, (sd / n).astype(x.dtype), (sdx / n).astype(x.dtype),
                   training, as_rows(dx))


BACKENDS = {
    "reference": lambda: SimpleNamespace(forward=forward_reference, backward=backward_reference),
    "numba": lambda: SimpleNamespace(forward=forward_numba, backward=backward_numba),
}
