"""The HiFi-GAN generator's ops (inference): dilated conv1d and transposed conv1d with a fused
input leaky ReLU, channels-last, one sequence at a time.

Shapes: x (T, Ci); conv weight w (Co, Ci, K) as ``nn.Conv1d.weight``; transposed-conv weight
w (Ci, Co, K) as ``nn.ConvTranspose1d.weight``; b (Co,); act(v) = v if slope is None, else
leaky_relu(v, slope) = v if v > 0 else slope * v.

    conv:       y[t, o] (+)= b[o] + sum_{k, c} w[o, c, k] * act(x[t + k*d - p, c])
                             (0 outside [0, T)); p = d*(K-1)/2 ("same", K odd), To = T
    transposed: y[t, o] = b[o] + sum_{s, k : s*u + k - p = t} sum_c w[c, o, k] * act(x[s, c])
                             To = (T-1)*u - 2p + K  (= u*T for HiFi-GAN's K = 2u, p = u/2)

``accumulate=True`` adds the conv into ``out`` (the residual of a ResBlock: x = c2(.) + x costs
no extra pass). Inference only: the generator is not trained here, so there is no backward; the
references are checked against the direct sums above in float64 and the transposed conv against
the adjoint identity <convT(x), y> = <x, conv_strided(y)> (``tests/test_vocoder.py``).

The fast backend lowers a conv to GEMMs through im2col in column chunks: cols (L, K*Ci) with
cols[l, k*Ci + c] = act(x[t0 + l + k*d - p, c]) (zero outside), then out[t0:t0+L] (+)= cols @ Wt
(+ b in the GEMM's epilogue) with Wt (K*Ci, Co) = w.transpose(2, 1, 0). A chunk's columns stay
in L2 (``CHUNK_BYTES``) between the im2col pass that writes them and the GEMM that reads them; a
row of cols is K contiguous slabs of Ci floats, so the copy vectorises over channels, and the
leaky ReLU and the zero padding cost nothing extra.

The transposed conv with HiFi-GAN's geometry (K = 2u, p = u/2, u even) is a "same" 3-tap conv in
polyphase form, with no overlap-add: output t = s*u + r (phase r < u) takes the taps
k = r + p - (s' - s)*u of the inputs s' in {s-1, s, s+1} that fall in [0, K):

    y[s*u + r] = W_{r+p} x[s] + (W_{r+p+u} x[s-1]   if r < p   else   W_{r+p-u} x[s+1])

so Y (T, u*Co) = conv3(act(x), W') with W'[r*Co + o, c, (0, 1, 2)] = (W[c, o, r+p+u] if r < p,
W[c, o, r+p], W[c, o, r+p-u] if r >= p) and y = Y.reshape(u*T, Co) — 3/2 of the minimal FLOPs,
but one contiguous GEMM with a wide output (u*Co columns) and the im2col's fused leaky ReLU.
Other geometries take one GEMM Z = act(x) @ W (Ci, K*Co) and the overlap-add
y[s*u + k - p] += Z[s, k] (+ b).

Where oneDNN is installed, ``fastcpu.models.hifigan.Generator`` runs the whole network on its
convolution primitives instead (section oneDNN below: tiles over zero-haloed buffers, bias and
output activations as post-ops); the im2col backend is the fallback and the reference for it.
"""
from __future__ import annotations

from types import SimpleNamespace

import numba as nb
import numpy as np

from fastcpu.kernels import gemm
from fastcpu.kernels._common import PJIT

# auto = "numba": the reference is NumPy for checking; Numba (im2col chunks + the one GEMM entry
# point) is the only fast backend. See `python -m fastcpu.bench --inference`.
AUTO = "numba"
# The GEMMs here have a narrow output (Co = 32..256 columns) and a wide inner dim (K*Ci up to
# 2816). On them NumPy's OpenBLAS beats oneDNN's fp32 matmul by 1.2-2x, and 4 MiB chunks beat
# 1 MiB ones (2 threads, OpenBLAS vars unset, AMD EPYC, 2026-12-02, per conv of the generator at
# 4 s of audio, conv rates in GFLOP/s, oneDNN 1 MiB / OpenBLAS 1 MiB / OpenBLAS 4 MiB: 256 ch
# k11 d5 276/320/309; 128 ch k11 d5 193/257/319; 128 ch k3 190/219/301; 64 ch k7 d3
# 119/169/257; 32 ch k7 d3 62/117/159; 32 ch k3 70/112/136).
GEMM_ENGINE = "numpy"
CHUNK_BYTES = 4 << 20       # im2col chunk: ~4 MiB of columns
MIN_CHUNK = 256             # rows per chunk at least (GEMM efficiency for wide K*Ci)
POLYPHASE_MAX_STRIDE = 2    # transposed convs up to this stride in the polyphase form


def _act_reference(x, slope):
    return x if slope is None else np.where(x > 0, x, slope * x)


def _check_conv(x, w, dilation):
    T, Ci = x.shape
    Co, Ciw, K = w.shape
    if Ciw != Ci:
        raise ValueError(f"vocoder conv: x has {Ci} channels, w expects {Ciw}")
    if K % 2 != 1:
        raise ValueError(f"vocoder conv: 'same' padding needs an odd kernel, got {K}")
    return T, Ci, Co, K, dilation * (K - 1) // 2


def _check_convt(x, w, stride, padding):
    T, Ci = x.shape
    Ciw, Co, K = w.shape
    if Ciw != Ci:
        raise ValueError(f"vocoder conv_transpose: x has {Ci} channels, w expects {Ciw}")
    To = (T - 1) * stride - 2 * padding + K
    if To <= 0:
        raise ValueError(f"vocoder conv_transpose: no output for T={T}")
    return T, Ci, Co, K, To


# ----------------------------------------------------------------------------- reference (NumPy)

def leaky_relu_reference(x, slope):
    return _act_reference(x, slope)


def conv_reference(x, w, b=None, dilation=1, slope=None, out=None, accumulate=False):
    T, Ci, Co, K, p = _check_conv(x, w, dilation)
    a = _act_reference(x, slope)
    ap = np.zeros((T + 2 * p, Ci), a.dtype)
    ap[p:p + T] = a
    y = np.zeros((T, Co), np.result_type(x, w))
    for k in range(K):
        y += ap[k * dilation:k * dilation + T] @ w[:, :, k].T
    if b is not None:
        y += b
    if out is None:
        return y
    if accumulate:
        out += y
    else:
        out[...] = y
    return out


def conv_transpose_reference(x, w, b=None, stride=1, padding=0, slope=None):
    T, Ci, Co, K, To = _check_convt(x, w, stride, padding)
    a = _act_reference(x, slope)
    full = np.zeros(((T - 1) * stride + K, Co), np.result_type(x, w))
    for k in range(K):
        full[k:k + (T - 1) * stride + 1:stride] += a @ w[:, :, k]
    y = full[padding:padding + To]
    if b is not None:
        y = y + b
    return np.ascontiguousarray(y)


# ----------------------------------------------------------------------------- Numba

@nb.njit(**PJIT)
def _lrelu_nb(x, slope, y):
    n = x.shape[0]
    for i in nb.prange(n):
        v = x[i]
        y[i] = v if v > 0 else v * slope


@nb.njit(**PJIT)
def _im2col_nb(x, t0, K, d, p, slope, act, cols):
    """cols[r, k*C:(k+1)*C] = act(x[t0 + r + k*d - p]) (zero outside [0, T))."""
    T, C = x.shape
    for r in nb.prange(cols.shape[0]):
        row = cols[r]
        for k in range(K):
            s = t0 + r + k * d - p
            o = row[k * C:(k + 1) * C]
            if s < 0 or s >= T:
                for c in range(C):
                    o[c] = 0.0
            elif act:
                xr = x[s]
                for c in range(C):
                    v = xr[c]
                    o[c] = v if v > 0 else v * slope
            else:
                xr = x[s]
                for c in range(C):
                    o[c] = xr[c]


@nb.njit(**PJIT)
def _overlap_add_nb(z, u, p, b, y):
    """y[t] = b + sum_{s, k: s*u + k - p = t} z[s, k]; z (T, K, Co). Parallel over output rows
    (each written once: the taps k = (t + p) mod u, + u, ... of the inputs s = (t + p - k) / u)."""
    T, K, Co = z.shape
    To = y.shape[0]
    for t in nb.prange(To):
        yr = y[t]
        for o in range(Co):
            yr[o] = b[o]
        k = (t + p) % u
        while k < K:
            s = (t + p - k) // u
            if 0 <= s < T:
                zr = z[s, k]
                for o in range(Co):
                    yr[o] += zr[o]
            k += u


_WT = {}


def _wt_conv(w):
    """(K*Ci, Co) = w.transpose(2, 1, 0), kept per weight array (the generator's weights are
    fixed for the life of a model; keyed by identity, the array held so the id stays valid)."""
    hit = _WT.get(id(w))
    if hit is None or hit[0] is not w:
        Co, Ci, K = w.shape
        hit = (w, np.ascontiguousarray(w.transpose(2, 1, 0).reshape(K * Ci, Co), np.float32))
        _WT[id(w)] = hit
    return hit[1]


def _wt_convt(w):
    hit = _WT.get(id(w))
    if hit is None or hit[0] is not w:
        Ci, Co, K = w.shape
        hit = (w, np.ascontiguousarray(w.transpose(0, 2, 1).reshape(Ci, K * Co), np.float32))
        _WT[id(w)] = hit
    return hit[1]


def _polyphase(w, u, p):
    """W' (u*Co, Ci, 3) of the polyphase form (see the module doc), kept like ``_wt_conv``."""
    key = (id(w), "poly")
    hit = _WT.get(key)
    if hit is None or hit[0] is not w:
        Ci, Co, K = w.shape
        wp = np.zeros((u, Co, Ci, 3), np.float32)
        for r in range(u):
            wp[r, :, :, 1] = w[:, :, r + p].T
            if r < p:
                wp[r, :, :, 0] = w[:, :, r + p + u].T
            else:
                wp[r, :, :, 2] = w[:, :, r + p - u].T
        hit = (w, wp.reshape(u * Co, Ci, 3))
        _WT[key] = hit
    return hit[1]


def clear_weights():
    """Forget the re-laid-out weights (a model being freed)."""
    _WT.clear()


@nb.njit(**PJIT)
def _epilogue_nb(z, b, has_b, accumulate, out):
    """out (+)= z (+ b), rows in parallel (z: one chunk's GEMM result, still in cache)."""
    for t in nb.prange(z.shape[0]):
        zr, orow = z[t], out[t]
        if accumulate:
            if has_b:
                for o in range(zr.shape[0]):
                    orow[o] += zr[o] + b[o]
            else:
                for o in range(zr.shape[0]):
                    orow[o] += zr[o]
        elif has_b:
            for o in range(zr.shape[0]):
                orow[o] = zr[o] + b[o]


def leaky_relu_numba(x, slope):
    x = np.ascontiguousarray(x, np.float32)
    y = np.empty_like(x)
    _lrelu_nb(x.reshape(-1), np.float32(slope), y.reshape(-1))
    return y


def conv_numba(x, w, b=None, dilation=1, slope=None, out=None, accumulate=False):
    T, Ci, Co, K, p = _check_conv(x, w, dilation)
    x = np.ascontiguousarray(x, np.float32)
    wt = _wt_conv(w)
    b = None if b is None else np.ascontiguousarray(b, np.float32)
    if out is None:
        if accumulate:
            raise ValueError("vocoder conv: accumulate needs out")
        out = np.empty((T, Co), np.float32)
    L = min(T, max(MIN_CHUNK, CHUNK_BYTES // (4 * Ci * K)))
    cols = np.empty((L, K * Ci), np.float32)
    z = np.empty((L, Co), np.float32) if accumulate else None
    act, s = slope is not None, np.float32(0.0 if slope is None else slope)
    has_b, bb = b is not None, np.zeros(1, np.float32) if b is None else b
    for t0 in range(0, T, L):
        n = min(L, T - t0)
        c, o = cols[:n], out[t0:t0 + n]
        _im2col_nb(x, t0, K, dilation, p, s, act, c)
        if accumulate:
            gemm.matmul(c, wt, z[:n], precision="fp32", engine=GEMM_ENGINE)
            _epilogue_nb(z[:n], bb, has_b, True, o)
        else:
            gemm.matmul(c, wt, o, precision="fp32", engine=GEMM_ENGINE)
            if has_b:
                _epilogue_nb(o, bb, True, False, o)
    return out


def conv_transpose_numba(x, w, b=None, stride=1, padding=0, slope=None):
    T, Ci, Co, K, To = _check_convt(x, w, stride, padding)
    # the polyphase form where it measured faster: u = 2 (k4: 128->64 ch at 4 s of audio 9.8 ms
    # against 47 ms for GEMM + overlap-add); at u = 8 its 3/2 FLOPs cost more than the
    # overlap-add saves (256 ch k16: 20.6 against 13.4 ms) (AMD EPYC, 2 threads, 2026-12-02)
    if K == 2 * stride and 2 * padding == stride and stride <= POLYPHASE_MAX_STRIDE:
        bt = None if b is None else np.tile(np.asarray(b, np.float32), stride)
        y = conv_numba(x, _polyphase(w, stride, padding), bt, 1, slope)
        return y.reshape(T * stride, Co)
    a = np.ascontiguousarray(x, np.float32) if slope is None else leaky_relu_numba(x, slope)
    z = gemm.matmul(a, _wt_convt(w), precision="fp32", engine=GEMM_ENGINE).reshape(T, K, Co)
    y = np.empty((To, Co), np.float32)
    _overlap_add_nb(z, stride, padding, np.zeros(Co, np.float32) if b is None else
                    np.ascontiguousarray(b, np.float32), y)
    return y


# ----------------------------------------------------------------------------- oneDNN

# oneDNN's brgconv (channels-last, post-ops) beats the im2col path 1.4-3x on the generator's
# convs (2 threads, AMD EPYC, 2026-12-02, one conv at 4 s of audio, accumulating: 256 ch k11 d5
# 10.3 vs 14.0 ms; 128 ch k11 d5 19.6 vs 27.3; 64 ch k7 d3 7.7 vs 12.6; 32 ch k7 d3 4.8 vs
# 10.1; 32 ch k3 1.9 vs 5.7). A primitive is made for one length, and making one costs time
# in proportion to it (~1 ms per 1000 rows), so convs run in fixed tiles of TILE_FRAMES mel
# frames (TILE_FRAMES * upsampling rows at each level) over zero-haloed buffers: one
# primitive per conv for every sentence length. A sequence longer than a tile ends with a tile
# that overlaps the one before (its rows are written twice with the same values: the tiled
# convs never accumulate into their output); a shorter one is computed in one tile and the rows
# past its end are zeroed before anything reads them.
TILE_FRAMES = 32
HALO = 32                   # zero rows around every buffer: >= the widest pad (k11 d5: 25) + 1


@nb.njit(**PJIT)
def _act_into_nb(x, T, H, slope, a):
    """a[H + t] = leaky_relu(x[H + t]) for t < T; every other row of a = 0."""
    n, C = a.shape
    for i in nb.prange(n):
        ar = a[i]
        if H <= i < H + T:
            xr = x[i]
            for c in range(C):
                v = xr[c]
                ar[c] = v if v > 0 else v * slope
        else:
            for c in range(C):
                ar[c] = 0.0


@nb.njit(**PJIT)
def _add_act_nb(r, z, T, H, slope, a, do_act):
    """r[H + t] += z[H + t] for t < T (the residual add), and a = leaky_relu(r) there, zero
    elsewhere (the next conv's input), in one pass."""
    n, C = r.shape
    for i in nb.prange(n):
        if H <= i < H + T:
            rr, zr = r[i], z[i]
            for c in range(C):
                rr[c] += zr[c]
            if do_act:
                ar = a[i]
                for c in range(C):
                    v = rr[c]
                    ar[c] = v if v > 0 else v * slope
        elif do_act:
            ar = a[i]
            for c in range(C):
                ar[c] = 0.0


@nb.njit(**PJIT)
def _sum_into_nb(acc, r, T, H):
    n, C = acc.shape
    for i in nb.prange(H, H + T):
        ar, rr = acc[i], r[i]
        for c in range(C):
            ar[c] += rr[c]


def tiles(T: int, L: int) -> list:
    """Tile starts covering [0, T) with tiles of L rows (the last one overlapping)."""
    if T <= L:
        return [0]
    return list(range(0, T - L, L)) + [T - L]


class OnednnConvs:
    """oneDNN (de)convolution primitives for one set of weights, made on first use per
    (weight, tile, geometry, epilogue) and kept; ``clear()`` frees them."""

    def __init__(self, nthreads: int):
        self.mod = gemm.dnnl()
        self.nthreads = nthreads
        self.prims = {}

    def clear(self):
        self.prims.clear()

    def _prim(self, key, make):
        p = self.prims.get(key)
        if p is None:
            p = self.mod.Conv()
            make(p)
            self.prims[key] = p
        return p

    def conv(self, src, dst, T, L, w, b, dilation, post=None, alpha=0.0):
        """dst[HALO + t] = post(conv(src)[t] + b) for t < T (rows past T up to the tile end get
        values too: the caller zeroes or ignores them); src, dst zero-haloed buffers."""
        Co, Ci, K = w.shape
        p = dilation * (K - 1) // 2
        kind = {None: self.mod.POST_NONE, "lrelu": self.mod.POST_LRELU,
                "tanh": self.mod.POST_TANH}[post]
        prim = self._prim((id(w), L, dilation, kind, alpha), lambda q: q.make(
            False, L + 2 * p, L, w, b, 1, dilation, 0, 0, False, kind, alpha, self.nthreads))
        for t0 in tiles(T, L):
            prim.run(src[HALO + t0 - p:HALO + t0 + L + p], dst[HALO + t0:HALO + t0 + L],
                     self.nthreads)

    def deconv(self, src, dst, T, L, w, b, u, pad):
        """dst[HALO + s] for s < u*T = the transposed conv (stride u, K = 2u, pad = u/2) of
        src's rows [HALO, HALO + T); w (Co, Ci, K) (PyTorch's (Ci, Co, K) transposed). A tile of
        L input rows reads one halo row each side: as a standalone deconv of L + 2 rows with
        padding pad + u its output is exactly the tile's u*L rows."""
        prim = self._prim((id(w), L, "deconv"), lambda q: q.make(
            True, L + 2, u * L, w, b, u, 1, pad + u, pad + u, False, self.mod.POST_NONE, 0.0,
            self.nthreads))
        for t0 in tiles(T, L):
            prim.run(src[HALO + t0 - 1:HALO + t0 + L + 1],
                     dst[HALO + u * t0:HALO + u * (t0 + L)], self.nthreads)


def buffer(T: int, L: int, C: int) -> np.ndarray:
    """A zero-haloed activation buffer: rows [HALO, HALO + T) are the sequence."""
    return np.zeros((max(T, L) + 2 * HALO, C), np.float32)


def warm() -> None:
    """Compile this module's Numba kernels (``python -m fastcpu.warmup``) on tiny inputs."""
    rng = np.random.default_rng(0)
    x = rng.standard_normal((6, 4)).astype(np.float32)
    w = rng.standard_normal((4, 4, 3)).astype(np.float32)
    b = np.zeros(4, np.float32)
    y = conv_numba(x, w, b, 1, 0.1)
    conv_numba(x, w, b, 2, None, out=y, accumulate=True)
    conv_numba(x, w, None, 1, None, out=y, accumulate=True)
    conv_transpose_numba(x, rng.standard_normal((4, 2, 4)).astype(np.float32), b[:2], 2, 1, 0.1)
    conv_transpose_numba(x, rng.standard_normal((4, 2, 5)).astype(np.float32), b[:2], 3, 1)
    buf, a = buffer(6, 8, 4), buffer(6, 8, 4)
    _act_into_nb(buf, 6, HALO, np.float32(0.1), a)
    _add_act_nb(buf, a, 6, HALO, np.float32(0.1), a, True)
    _sum_into_nb(buf, a, 6, HALO)


BACKENDS = {
    "reference": lambda: SimpleNamespace(conv=conv_reference,
                                         conv_transpose=conv_transpose_reference,
                                         leaky_relu=leaky_relu_reference),
    "numba": lambda: SimpleNamespace(conv=conv_numba, conv_transpose=conv_transpose_numba,
                                     leaky_relu=leaky_relu_numba),
}
