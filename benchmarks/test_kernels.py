"""pytest-benchmark: the four named kernels (forward + backward) for every backend and for the
PyTorch equivalent, at FastSpeech2 shapes; plus fused dropout+residual+LayerNorm against PyTorch's
three ops, the fused feed-forward core against PyTorch's conv-ReLU-conv, and clip+Adam on 35M
parameters against the copy-bandwidth bound.

    env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE \
        python -m pytest benchmarks/test_kernels.py --benchmark-only --benchmark-json=out.json
    python benchmarks/report.py out.json          # the README table
"""
import numba as nb
import numpy as np
import pytest
import torch
import torch.nn.functional as TF

from benchmarks.conftest import run
from fastcpu import kernels

B, T, H, D, C = 16, 400, 2, 128, 256
N_ADAM = 35_159_361 - 513_022       # the reference model's trainable parameters
RNG = np.random.default_rng(0)


def r32(*shape, scale=1.0):
    return (RNG.standard_normal(shape) * scale).astype(np.float32)


def backends(op):
    """The fast backends and PyTorch (the NumPy reference is the spec, not a contender)."""
    return pytest.mark.parametrize("impl", [b for b in kernels.available()[op]
                                            if b != "reference"] + ["torch"])


# --------------------------------------------------------------------------- attention
LENGTHS = np.random.default_rng(1).integers(200, T + 1, B)
LENGTHS[0] = T


@pytest.mark.benchmark(group="attention B16 H2 D128 T400 ragged")
@backends("attention")
def test_attention(benchmark, impl):
    q, k, v, do = (r32(B, T, H, D) for _ in range(4))
    if impl == "torch":
        tq, tk, tv = (torch.tensor(a).transpose(1, 2).requires_grad_() for a in (q, k, v))
        keep = (torch.arange(T)[None, :] < torch.tensor(LENGTHS)[:, None])[:, None, None, :]
        tdo = torch.tensor(do).transpose(1, 2)

        def step():
            tq.grad = tk.grad = tv.grad = None
            TF.scaled_dot_product_attention(tq, tk, tv, attn_mask=keep).backward(tdo)
    else:
        kk = kernels.get("attention", impl)

        def step():
            o, lse = kk.forward(q, k, v, LENGTHS)
            g = [np.zeros_like(q) for _ in range(3)]
            kk.backward(do, q, k, v, o, lse, LENGTHS, None, *g)
    run(benchmark, step)


# --------------------------------------------------------------------------- conv1d
@pytest.mark.benchmark(group="conv1d")
@pytest.mark.parametrize("shape", ["256-1024-k9", "1024-256-k1"])
@backends("conv1d")
def test_conv1d(benchmark, impl, shape):
    Ci, Co, K = {"256-1024-k9": (256, 1024, 9), "1024-256-k1": (1024, 256, 1)}[shape]
    benchmark.group = f"conv1d {shape} B16 T400"
    x, dy = r32(B, T, Ci), r32(B, T, Co)
    w, b = r32(Co, Ci, K, scale=0.02), r32(Co)
    if impl == "torch":
        conv = torch.nn.Conv1d(Ci, Co, K, padding=(K - 1) // 2)
        tx = torch.tensor(x).transpose(1, 2).requires_grad_()
        tdy = torch.tensor(dy).transpose(1, 2)

        def step():
            tx.grad = None
            conv.zero_grad()
            conv(tx).backward(tdy)
    else:
        kk = kernels.get("conv1d", impl)

        def step():
            kk.forward(x, w, b)
            kk.backward(dy, x, w, None, np.zeros_like(x), np.zeros_like(w), np.zeros_like(b))
    run(benchmark, step, rounds=7)


# --------------------------------------------------------------------------- vocoder
VOC = {"128ch-k11-d5": (22016, 128, 11, 5), "32ch-k7-d3": (88064, 32, 7, 3)}   # 4 s of audio


@pytest.mark.benchmark(group="vocoder conv")
@pytest.mark.parametrize("shape", list(VOC))
@backends("vocoder")
def test_vocoder_conv(benchmark, impl, shape):
    """A HiFi-GAN ResBlock conv (leaky ReLU, dilated conv, residual add), inference."""
    Tv, Cv, K, d = VOC[shape]
    benchmark.group = f"vocoder leaky_relu + conv1d {shape} T{Tv} + residual"
    x, w, b = r32(Tv, Cv), r32(Cv, Cv, K, scale=0.02), r32(Cv)
    res = r32(Tv, Cv)
    if impl == "torch":
        conv = torch.nn.Conv1d(Cv, Cv, K, dilation=d, padding=d * (K - 1) // 2).eval()
        tx, tres = torch.tensor(x.T.copy())[None], torch.tensor(res.T.copy())[None]

        def step():
            with torch.inference_mode():
                conv(TF.leaky_relu(tx, 0.1)).add_(tres)
    else:
        kk = kernels.get("vocoder", impl)

        def step():
            kk.conv(x, w, b, d, 0.1, out=res, accumulate=True)
    run(benchmark, step, rounds=7)


# --------------------------------------------------------------------------- ffn
@pytest.mark.benchmark(group="ffn 256-1024-k9 relu 1024-256-k1 B16 T400 ragged")
@backends("ffn")
def test_ffn(benchmark, impl):
    """FastSpeech2's feed-forward core on a ragged batch: PyTorch computes every frame (as the
    reference model does), fastcpu only the valid ones."""
    Hd, K = 1024, 9
    L = LENGTHS
    valid = (np.arange(T)[None, :] < L[:, None])[..., None]
    x, dy = r32(B, T, C) * valid, r32(B, T, C) * valid
    w1, b1, w2, b2 = r32(Hd, C, K, scale=0.02), r32(Hd), r32(C, Hd, 1, scale=0.03), r32(C)
    if impl == "torch":
        c1 = torch.nn.Conv1d(C, Hd, K, padding=(K - 1) // 2)
        c2 = torch.nn.Conv1d(Hd, C, 1)
        tx = torch.tensor(x).transpose(1, 2).requires_grad_()
        tdy = torch.tensor(dy).transpose(1, 2)

        def step():
            tx.grad = None
            c1.zero_grad()
            c2.zero_grad()
            c2(torch.relu(c1(tx))).backward(tdy)
    else:
        kk = kernels.get("ffn", impl)

        def step():
            y, h = kk.forward(x, w1, b1, w2, b2, L)
            kk.backward(dy, x, w1, w2, h, L, "new", *(np.zeros_like(a) for a in (w1, b1, w2, b2)))
    run(benchmark, step, rounds=7)


# --------------------------------------------------------------------------- layernorm
@pytest.mark.benchmark(group="layernorm 256 B16 T400")
@backends("layernorm")
def test_layernorm(benchmark, impl):
    x, do, w, b = r32(B, T, C), r32(B, T, C), r32(C), r32(C)
    if impl == "torch":
        tx, tw, tb = (torch.tensor(a).requires_grad_() for a in (x, w, b))
        tdo = torch.tensor(do)

        def step():
            tx.grad = tw.grad = tb.grad = None
            TF.layer_norm(tx, (C,), tw, tb).backward(tdo)
    else:
        kk = kernels.get("layernorm", impl)

        def step():
            y, m, s = kk.forward(x, w, b)
            kk.backward(do, x, w, m, s, None, np.zeros_like(w), np.zeros_like(b))
    run(benchmark, step, rounds=20)


@pytest.mark.benchmark(group="dropout(0.2)+residual+layernorm B16 T400 C256")
@backends("layernorm")
def test_residual_layernorm(benchmark, impl):
    a, res, do, w, b = r32(B, T, C), r32(B, T, C), r32(B, T, C), r32(C), r32(C)
    if impl == "torch":
        ta, tr, tw, tb = (torch.tensor(x).requires_grad_() for x in (a, res, w, b))
        tdo = torch.tensor(do)

        def step():                                 # the reference's three separate ops
            ta.grad = tr.grad = tw.grad = tb.grad = None
            TF.layer_norm(TF.dropout(ta, 0.2, True) + tr, (C,), tw, tb).backward(tdo)
    else:
        kk = kernels.get("layernorm", impl)

        def step():
            y, pre, m, s = kk.residual_forward(a, res, w, b, 0.2, 1)
            kk.residual_backward(do, pre, w, m, s, 0.2, 1, None, None, np.zeros_like(w),
                                 np.zeros_like(b))
    run(benchmark, step, rounds=20)


# --------------------------------------------------------------------------- clip + Adam
@nb.njit(parallel=True, cache=True)
def _copy_nb(src, dst):
    for i in nb.prange(src.shape[0]):
        dst[i] = src[i]


@pytest.mark.benchmark(group="clip+Adam 34.6M params")
def test_copy_bandwidth(benchmark):
    """The machine's copy bandwidth (Numba prange copy of N_ADAM floats): clip+Adam moves 32 B
    per parameter (norm: read g; update: read p, g, m, v, write p, m, v), a copy 8 B, so the
    bandwidth bound of clip+Adam is 4x this time."""
    src = r32(N_ADAM)
    dst = np.empty_like(src)
    run(benchmark, lambda: _copy_nb(src, dst), rounds=10)
    benchmark.extra_info["bytes"] = 8 * N_ADAM


@pytest.mark.benchmark(group="clip+Adam 34.6M params")
@backends("adam")
def test_clip_adam(benchmark, impl):
    if impl == "torch":
        from benchmarks.shapes import REFERENCE_TRAINABLE_SHAPES
        ps = [torch.nn.Parameter(torch.randn(s) * 0.02) for s in REFERENCE_TRAINABLE_SHAPES]
        for p in ps:
            p.grad = torch.randn_like(p) * 1e-3
        opt = torch.optim.Adam(ps, lr=1e-3, betas=(0.9, 0.98), eps=1e-9, fused=True)

        def step():
            torch.nn.utils.clip_grad_norm_(ps, 1.0)
            opt.step()
    else:
        kk = kernels.get("adam", impl)
        p, g = r32(N_ADAM, scale=0.02), r32(N_ADAM, scale=1e-3)
        m, v = np.zeros_like(p), np.zeros_like(p)
        it = iter(range(1, 10_000))

        def step():
            kk.clip_adam(p, g, m, v, step=next(it), lr=1e-3, beta1=0.9, beta2=0.98, eps=1e-9,
                         max_norm=1.0)
    benchmark.extra_info["bytes"] = 32 * N_ADAM
    run(benchmark, step, rounds=10)


# --------------------------------------------------------------------------- bf16 (oneDNN)
# fastcpu under kernels.use("bf16") (bf16 GEMM operands on oneDNN, fp32 accumulation) against
# PyTorch's bf16 autocast of the same ops, forward + backward.
BF16_OK = __import__("fastcpu.kernels.gemm", fromlist=["x"]).bf16_status().startswith("ok")
bf16_sides = pytest.mark.parametrize("impl", ["fastcpu", "torch"])
needs_bf16 = pytest.mark.skipif(not BF16_OK, reason="no native bf16 on this CPU")


def _bf16_run(benchmark, ours, theirs, rounds=7):
    if ours is not None:
        def step():
            with kernels.use("bf16"):
                ours()
    else:
        def step():
            with torch.autocast("cpu", dtype=torch.bfloat16):
                out = theirs[0]()
            out.backward(theirs[1])
    run(benchmark, step, rounds=rounds)


@needs_bf16
@pytest.mark.benchmark(group="bf16 conv1d")
@pytest.mark.parametrize("shape", ["256-1024-k9", "1024-256-k1"])
@bf16_sides
def test_bf16_conv1d(benchmark, impl, shape):
    Ci, Co, K = {"256-1024-k9": (256, 1024, 9), "1024-256-k1": (1024, 256, 1)}[shape]
    benchmark.group = f"bf16 conv1d {shape} B16 T400"
    x, dy = r32(B, T, Ci), r32(B, T, Co)
    w, b = r32(Co, Ci, K, scale=0.02), r32(Co)
    if impl == "torch":
        conv = torch.nn.Conv1d(Ci, Co, K, padding=(K - 1) // 2)
        tx = torch.tensor(x).transpose(1, 2).requires_grad_()
        _bf16_run(benchmark, None, (lambda: conv(tx), torch.tensor(dy).transpose(1, 2)))
        return
    kk = kernels.get("conv1d")
    _bf16_run(benchmark, lambda: (kk.forward(x, w, b), kk.backward(
        dy, x, w, None, np.zeros_like(x), np.zeros_like(w), np.zeros_like(b))), None)


@needs_bf16
@pytest.mark.benchmark(group="bf16 ffn 256-1024-k9 relu 1024-256-k1 B16 T400 ragged")
@bf16_sides
def test_bf16_ffn(benchmark, impl):
    Hd, K, L = 1024, 9, LENGTHS
    valid = (np.arange(T)[None, :] < L[:, None])[..., None]
    x, dy = r32(B, T, C) * valid, r32(B, T, C) * valid
    w1, b1, w2, b2 = r32(Hd, C, K, scale=0.02), r32(Hd), r32(C, Hd, 1, scale=0.03), r32(C)
    if impl == "torch":
        c1, c2 = torch.nn.Conv1d(C, Hd, K, padding=(K - 1) // 2), torch.nn.Conv1d(Hd, C, 1)
        tx = torch.tensor(x).transpose(1, 2).requires_grad_()
        _bf16_run(benchmark, None, (lambda: c2(torch.relu(c1(tx))),
                                    torch.tensor(dy).transpose(1, 2)))
        return
    kk = kernels.get("ffn")

    def ours():
        y, h = kk.forward(x, w1, b1, w2, b2, L)
        kk.backward(dy, x, w1, w2, h, L, "new", *(np.zeros_like(a) for a in (w1, b1, w2, b2)))
    _bf16_run(benchmark, ours, None)


@needs_bf16
@pytest.mark.benchmark(group="bf16 linear 256-768 B16 T400")
@bf16_sides
def test_bf16_linear(benchmark, impl):
    x, dy, w, b = r32(B, T, C), r32(B, T, 3 * C), r32(3 * C, C, scale=0.05), r32(3 * C)
    if impl == "torch":
        lin = torch.nn.Linear(C, 3 * C)
        tx = torch.tensor(x).requires_grad_()
        _bf16_run(benchmark, None, (lambda: lin(tx), torch.tensor(dy)), rounds=20)
        return
    kk = kernels.get("linear")
    _bf16_run(benchmark, lambda: (kk.forward(x, w, b), kk.backward(
        dy, x, w, "new", np.zeros_like(w), np.zeros_like(b))), None, rounds=20)


@needs_bf16
@pytest.mark.benchmark(group="bf16 attention B16 H2 D128 T400 ragged")
@bf16_sides
def test_bf16_attention(benchmark, impl):
    q, k, v, do = (r32(B, T, H, D) for _ in range(4))
    if impl == "torch":
        tq, tk, tv = (torch.tensor(a).transpose(1, 2).requires_grad_() for a in (q, k, v))
        keep = (torch.arange(T)[None, :] < torch.tensor(LENGTHS)[:, None])[:, None, None, :]
        _bf16_run(benchmark, None, (lambda: TF.scaled_dot_product_attention(
            tq, tk, tv, attn_mask=keep), torch.tensor(do).transpose(1, 2)))
        return
    kk = kernels.get("attention")

    def ours():
        o, lse = kk.forward(q, k, v, LENGTHS)
        kk.backward(do, q, k, v, o, lse, LENGTHS, None, *(np.zeros_like(q) for _ in range(3)))
    _bf16_run(benchmark, ours, None)
