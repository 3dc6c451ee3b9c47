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

Synchronised (data-parallel ranks, each holding rows of one global batch): ``reduce`` — a
callable summing a float64 array in place over the ranks — makes the statistics the global
batch's: the column sums (and the row count), then the squared deviations about the global
mean, in forward; sum(dout) and sum(dout * xhat) for dx in backward (dw and db stay local: the
ranks' gradient buffers are summed afterwards). Without it, nothing changes.
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


def _sum_rows(a, reduce):
    """Column sums of a (N, C) and N, summed over the ranks."""
    s = np.append(a.sum(0, dtype=np.float64), float(a.shape[0]))
    reduce(s)
    return s[:-1], s[-1]


def forward_reference(x, w, b, running_mean, running_var, training, momentum=0.1, eps=1e-5,
                      reduce=None):
    x2 = as_rows(x)
    if training and reduce is not None:
        s1, n = _sum_rows(x2, reduce)
        mean = s1 / n
        s2 = ((x2 - mean.astype(x.dtype)).astype(np.float64) ** 2).sum(0)
        reduce(s2)
        var = s2 / n
        _update_running(running_mean, running_var, mean, var, n, momentum)
    elif training:
        mean = x2.mean(0)
        var = x2.var(0)
        _update_running(running_mean, running_var, mean, var, x2.shape[0], momentum)
    else:
        mean, var = running_mean, running_var
    rstd = (1.0 / np.sqrt(var + eps)).astype(x.dtype)
    out = (x2 - mean) * rstd * w + b
    return out.reshape(x.shape).astype(x.dtype), mean.astype(x.dtype), rstd


def backward_reference(dout, x, w, mean, rstd, training, dx, dw, db, reduce=None):
    x2, d2 = as_rows(x), as_rows(dout)
    xhat = (x2 - mean) * rstd
    db += d2.sum(0)
    dw += (d2 * xhat).sum(0)
    if dx is None:
        return
    if training and reduce is not None:
        s = np.concatenate([d2.sum(0, dtype=np.float64), (d2 * xhat).sum(0, dtype=np.float64),
                            [float(x2.shape[0])]])
        reduce(s)
        C = x2.shape[1]
        g = d2 - (s[:C] / s[-1]).astype(x.dtype) - xhat * (s[C:2 * C] / s[-1]).astype(x.dtype)
    elif training:
        g = d2 - d2.mean(0) - xhat * (d2 * xhat).mean(0)
    else:
        g = d2
    as_rows(dx)[...] += g * (w * rstd)


@nb.njit(**PJIT)
def _colstats_nb(x, nchunk):
    # per-chunk column sums of x and x^2 (float64), summed in chunk order
    # (row slices + range(len) loops: vectorisable; float32 rows summed into float64 partials)
    N, C = x.shape
    mean = _colsum_nb(x, nchunk) / N
    return mean, _colsqdev_nb(x, mean.astype(np.float32), nchunk) / N


@nb.njit(**PJIT)
def _colsum_nb(x, nchunk):
    N, C = x.shape
    s1 = np.zeros((nchunk, C))
    for ch in nb.prange(nchunk):
        acc = s1[ch]
        for i in range(ch * N // nchunk, (ch + 1) * N // nchunk):
            xr = x[i]
            for c in range(C):
                acc[c] += xr[c]
    return s1.sum(0)


@nb.njit(**PJIT)
def _colsqdev_nb(x, m32, nchunk):
    N, C = x.shape
    s2 = np.zeros((nchunk, C))
    for ch in nb.prange(nchunk):
        acc = s2[ch]
        for i in range(ch * N // nchunk, (ch + 1) * N // nchunk):
            xr = x[i]
            for c in range(C):
                dd = xr[c] - m32[c]
                acc[c] += dd * dd
    return s2.sum(0)


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


def forward_numba(x, w, b, running_mean, running_var, training, momentum=0.1, eps=1e-5,
                  reduce=None):
    x2 = as_rows(x)
    if training and reduce is not None:
        nch = _nchunk(x2.shape[0])
        s1 = np.append(_colsum_nb(x2, nch), float(x2.shape[0]))
        reduce(s1)
        n = s1[-1]
        mean = s1[:-1] / n
        s2 = _colsqdev_nb(x2, mean.astype(np.float32), nch)
        reduce(s2)
        var = s2 / n
        _update_running(running_mean, running_var, mean.astype(x.dtype), var.astype(x.dtype),
                        n, momentum)
    elif training:
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


def backward_numba(dout, x, w, mean, rstd, training, dx, dw, db, reduce=None):
    x2, d2 = as_rows(x), as_rows(np.ascontiguousarray(dout))
    sd, sdx = _bwd_sums_nb(d2, x2, mean, rstd, _nchunk(x2.shape[0]))
    db += sd.astype(db.dtype)
    dw += sdx.astype(dw.dtype)
    if dx is not None:
        n = x2.shape[0]
        if training and reduce is not None:      # dw, db stay local (summed with the buffer)
            s = np.concatenate([sd, sdx, [float(n)]])
            reduce(s)
            C = x2.shape[1]
            sd, sdx, n = s[:C], s[C:2 * C], s[-1]
        _bwd_dx_nb(d2, x2, mean, rstd, w, (sd / n).astype(x.dtype), (sdx / n).astype(x.dtype),
                   training, as_rows(dx))


BACKENDS = {
    "reference": lambda: SimpleNamespace(forward=forward_reference, backward=backward_reference),
    "numba": lambda: SimpleNamespace(forward=forward_numba, backward=backward_numba),
}
