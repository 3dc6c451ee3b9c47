"""Layer 3: kernels and layers against PyTorch 2.13 at FastSpeech2 shapes (forward and every
gradient). The four named kernels are checked for every backend."""
import numpy as np
import pytest
import torch
import torch.nn.functional as TF

from fastcpu import kernels, nn
from fastcpu.autograd import Tensor
from fastcpu.kernels._common import drop_threshold, keep_mask_reference, seed_key
from tests.conftest import assert_close
from fastcpu.testing.torch_reference import TorchMultiHeadAttention, key_padding_mask

F32 = np.float32
RED = 1e-4


@pytest.fixture
def rng():
    return np.random.default_rng(2026)


def r32(rng, *shape, scale=1.0):
    return (rng.standard_normal(shape) * scale).astype(F32)


def t(a, grad=False):
    return torch.tensor(a).requires_grad_(grad)


def all_backends(op):
    return pytest.mark.parametrize("backend", kernels.available()[op])


# --------------------------------------------------------------------------- the named kernels

@pytest.fixture(scope="module")
def attention_case():
    rng = np.random.default_rng(7)
    B, T, H, D = 16, 400, 2, 128
    L = rng.integers(150, 401, B)
    L[0] = T
    q, k, v, do = (r32(rng, B, T, H, D) for _ in range(4))
    tq, tk, tv = (t(a.transpose(0, 2, 1, 3).copy(), True) for a in (q, k, v))
    keep = ~key_padding_mask(L, T)[:, None, None, :]
    out = TF.scaled_dot_product_attention(tq, tk, tv, attn_mask=keep)
    out.backward(t(do.transpose(0, 2, 1, 3).copy()))
    back = lambda x: x.detach().numpy().transpose(0, 2, 1, 3)   # noqa: E731
    return (q, k, v, do, L), (back(out), back(tq.grad), back(tk.grad), back(tv.grad))


@all_backends("attention")
def test_attention_vs_sdpa(backend, attention_case):
    (q, k, v, do, L), (o_t, dq_t, dk_t, dv_t) = attention_case
    kk = kernels.get("attention", backend)
    o, lse = kk.forward(q, k, v, L)
    assert_close(o, o_t, RED, "out")
    g = [np.zeros_like(q) for _ in range(3)]
    kk.backward(do, q, k, v, o, lse, L, None, *g)
    for a, b, n in zip(g, (dq_t, dk_t, dv_t), "qkv"):
        assert_close(a, b, RED, f"d{n}")


@all_backends("conv1d")
@pytest.mark.parametrize("Ci,Co,K", [(256, 1024, 9), (1024, 256, 1)])
def test_conv1d_vs_torch(rng, backend, Ci, Co, K):
    B, T = 16, 400
    conv = torch.nn.Conv1d(Ci, Co, K, padding=(K - 1) // 2)
    x, dy = r32(rng, B, T, Ci), r32(rng, B, T, Co)
    tx = t(x.transpose(0, 2, 1).copy(), True)
    y_t = conv(tx)
    y_t.backward(t(dy.transpose(0, 2, 1).copy()))
    w, b = conv.weight.detach().numpy(), conv.bias.detach().numpy()
    kk = kernels.get("conv1d", backend)
    y = kk.forward(x, w, b)
    assert_close(y, y_t.detach().numpy().transpose(0, 2, 1), RED, "y")
    dx, dw, db = np.zeros_like(x), np.zeros_like(w), np.zeros_like(b)
    kk.backward(dy, x, w, None, dx, dw, db)
    assert_close(dx, tx.grad.numpy().transpose(0, 2, 1), RED, "dx")
    assert_close(dw, conv.weight.grad.numpy(), RED, "dw")
    assert_close(db, conv.bias.grad.numpy(), RED, "db")


@all_backends("layernorm")
def test_layernorm_vs_torch(rng, backend):
    x, w, b, do = r32(rng, 16, 400, 256), r32(rng, 256), r32(rng, 256), r32(rng, 16, 400, 256)
    tx, tw, tb = t(x, True), t(w, True), t(b, True)
    y_t = TF.layer_norm(tx, (256,), tw, tb, 1e-5)
    y_t.backward(t(do))
    kk = kernels.get("layernorm", backend)
    y, m, s = kk.forward(x, w, b)
    assert_close(y, y_t.detach().numpy(), RED, "y")
    g = [np.zeros_like(a) for a in (x, w, b)]
    kk.backward(do, x, w, m, s, *g)
    for a, ref, n in zip(g, (tx.grad, tw.grad, tb.grad), ("dx", "dw", "db")):
        assert_close(a, ref.numpy(), RED, n)


@all_backends("layernorm")
@pytest.mark.parametrize("p", [0.0, 0.2])
def test_residual_layernorm_vs_torch(rng, backend, p):
    """LayerNorm(Dropout(a) + res) with our mask replayed in torch: same output and gradients."""
    shape = (16, 400, 256)
    a, res, do = r32(rng, *shape), r32(rng, *shape), r32(rng, *shape)
    w, b = r32(rng, 256), r32(rng, 256)
    keep = keep_mask_reference(seed_key(11), drop_threshold(p), shape) if p else np.ones(shape,
                                                                                         bool)
    ta, tr, tw, tb = t(a, True), t(res, True), t(w, True), t(b, True)
    y_t = TF.layer_norm(ta * torch.tensor(keep) / (1 - p) + tr, (256,), tw, tb, 1e-5)
    y_t.backward(t(do))
    kk = kernels.get("layernorm", backend)
    y, pre, m, s = kk.residual_forward(a, res, w, b, p, 11)
    assert_close(y, y_t.detach().numpy(), RED, "y")
    g = [np.zeros_like(x) for x in (a, res, w, b)]
    kk.residual_backward(do, pre, w, m, s, p, 11, *g)
    for x, ref, n in zip(g, (ta.grad, tr.grad, tw.grad, tb.grad), ("da", "dres", "dw", "db")):
        assert_close(x, ref.numpy(), RED, n)


@all_backends("adam")
@pytest.mark.parametrize("weight_decay,max_norm", [(0.0, 1.0), (0.01, None)])
def test_clip_adam_vs_torch(backend, weight_decay, max_norm):
    """5 steps of clip_grad_norm_(1.0) + torch.optim.Adam(betas=(0.9, 0.98), eps=1e-9) on ~200
    tensors, against the fused kernel over one flat buffer. Weight decay is checked without the
    clip: with both, the ~3e-5 gap between torch's float32 norm and our float64 one reaches the
    parameters (decay breaks Adam's invariance to the clip scale)."""
    rng = np.random.default_rng(5)
    shapes = [(256, 64), (256,), (64, 32, 9), (80, 16), (1,)] * 40      # 200 tensors, 1.45M
    params = [r32(rng, *s, scale=0.05) for s in shapes]
    tparams = [torch.nn.Parameter(t(p.copy())) for p in params]
    opt = torch.optim.Adam(tparams, lr=3e-3, betas=(0.9, 0.98), eps=1e-9,
                           weight_decay=weight_decay)
    flat = np.concatenate([p.reshape(-1) for p in params])
    m, v = np.zeros_like(flat), np.zeros_like(flat)
    kk = kernels.get("adam", backend)
    for step in range(1, 6):
        grads = [r32(rng, *s, scale=0.01 * step) for s in shapes]
        for tp, g in zip(tparams, grads):
            tp.grad = t(g.copy())
        tnorm = torch.nn.utils.clip_grad_norm_(tparams, max_norm or float("inf")).item()
        opt.step()
        gflat = np.concatenate([g.reshape(-1) for g in grads])
        norm = kk.clip_adam(flat, gflat, m, v, step=step, lr=3e-3, beta1=0.9, beta2=0.98,
                            eps=1e-9, weight_decay=weight_decay, max_norm=max_norm)
        # torch sums each tensor's squares in float32; ours accumulates in float64
        assert abs(norm - tnorm) <= 1e-4 * tnorm
        assert tnorm > 1.0                  # with max_norm=1 the clip really engages
    want = np.concatenate([p.detach().numpy().reshape(-1) for p in tparams])
    # With decay, g + wd * p nearly cancels for some elements, where torch's fused multiply-adds
    # and our backends' rounding differ in the last bit and Adam's normalisation amplifies it
    # (seen: 2.3e-5 for the non-FMA NumPy/Cython paths, < 1e-6 for Numba's FMA path).
    assert_close(flat, want, 1e-5 if not weight_decay else 5e-5, "params after 5 steps")
    st = [opt.state[p] for p in tparams]
    # m and v are linear/quadratic in the clipped gradient, so they carry the ~3e-5 difference of
    # torch's float32 norm; the parameters (Adam is scale-invariant up to eps) match to 1e-5.
    assert_close(m, np.concatenate([s["exp_avg"].numpy().reshape(-1) for s in st]), 1e-4, "m")
    assert_close(v, np.concatenate([s["exp_avg_sq"].numpy().reshape(-1) for s in st]), 2e-4, "v")


# --------------------------------------------------------------------------- the other kernels

def test_linear_vs_torch(rng):
    x, w, b, dy = r32(rng, 16, 400, 256), r32(rng, 80, 256), r32(rng, 80), r32(rng, 16, 400, 80)
    tx, tw, tb = t(x, True), t(w, True), t(b, True)
    y_t = TF.linear(tx, tw, tb)
    y_t.backward(t(dy))
    k = kernels.get("linear")
    assert_close(k.forward(x, w, b), y_t.detach().numpy(), RED, "y")
    g = [np.zeros_like(a) for a in (x, w, b)]
    k.backward(dy, x, w, *g)
    for a, ref in zip(g, (tx.grad, tw.grad, tb.grad)):
        assert_close(a, ref.numpy(), RED, "grad")


def test_dropout_statistics_vs_torch(rng):
    """Different RNGs, same distribution: keep rate and scaling match torch's Dropout(0.2)."""
    x = np.ones((16, 400, 256), F32)
    y = kernels.get("dropout").forward(x, 0.2, 3)
    y_t = TF.dropout(t(x), 0.2, training=True).numpy()
    assert set(np.unique(y)) == set(np.unique(y_t)) == {0.0, np.float32(1 / 0.8)}
    n = x.size
    sd = np.sqrt(0.2 * 0.8 / n)
    assert abs((y == 0).mean() - 0.2) < 5 * sd
    assert abs((y == 0).mean() - (y_t == 0).mean()) < 7 * sd


@pytest.mark.parametrize("act", ["relu", "tanh"])
def test_activations_vs_torch(rng, act):
    x, dy = r32(rng, 16, 400, 1024), r32(rng, 16, 400, 1024)
    tx = t(x, True)
    y_t = getattr(torch, act)(tx)
    y_t.backward(t(dy))
    k = kernels.get("activations")
    y = getattr(k, f"{act}_forward")(x)
    assert_close(y, y_t.detach().numpy(), 1e-6, act)
    dx = np.zeros_like(x)
    getattr(k, f"{act}_backward")(dy, y, dx)
    assert_close(dx, tx.grad.numpy(), 1e-6, f"d{act}")


def test_embedding_vs_torch(rng):
    emb = torch.nn.Embedding(361, 256, padding_idx=0)
    ids = rng.integers(0, 361, (16, 120))
    ids[:, 100:] = 0
    dout = r32(rng, 16, 120, 256)
    y_t = emb(torch.tensor(ids))
    y_t.backward(t(dout))
    w = emb.weight.detach().numpy().copy()
    k = kernels.get("embedding")
    np.testing.assert_array_equal(k.forward(w, ids), y_t.detach().numpy())
    dw = np.zeros_like(w)
    k.backward(dout, ids, dw, padding_idx=0)
    assert_close(dw, emb.weight.grad.numpy(), RED, "dw")


def test_bucketize_vs_torch(rng):
    bins = np.linspace(-2.917079304729967, 11.391254536985784, 255).astype(F32)
    vals = np.concatenate([r32(rng, 16, 120).ravel() * 5, bins, [-50, 50]]).astype(F32)
    want = torch.bucketize(t(vals), t(bins)).numpy()
    np.testing.assert_array_equal(kernels.get("bucketize").forward(vals, bins), want)


def test_length_regulator_vs_torch(rng):
    x, B = r32(rng, 16, 120, 256), 16
    d = rng.integers(0, 12, (16, 120))
    d[3] = 0
    max_len = 700
    k = kernels.get("length_regulator")
    y, mel_len = k.forward(x, d, max_len)
    tx = t(x, True)
    rows = [torch.repeat_interleave(tx[b], torch.tensor(d[b]), dim=0)[:max_len] for b in range(B)]
    y_t = torch.stack([TF.pad(r, (0, 0, 0, max_len - r.shape[0])) for r in rows])
    dout = r32(rng, *y.shape)
    y_t.backward(t(dout))
    np.testing.assert_array_equal(y, y_t.detach().numpy())
    np.testing.assert_array_equal(mel_len, np.minimum(d.sum(1), max_len))
    dx = np.zeros_like(x)
    k.backward(dout, d, dx)
    assert_close(dx, tx.grad.numpy(), 1e-6, "dx")


@pytest.mark.parametrize("training", [True, False])
def test_batchnorm_vs_torch(rng, training):
    bn = torch.nn.BatchNorm1d(512)
    with torch.no_grad():
        bn.weight.uniform_(0.5, 1.5)
        bn.bias.uniform_(-0.5, 0.5)
        bn.running_mean.uniform_(-0.1, 0.1)
        bn.running_var.uniform_(0.8, 1.2)
    bn.train(training)
    x, dout = r32(rng, 16, 400, 512), r32(rng, 16, 400, 512)
    w, b = bn.weight.detach().numpy().copy(), bn.bias.detach().numpy().copy()
    rm, rv = bn.running_mean.numpy().copy(), bn.running_var.numpy().copy()
    tx = t(x.transpose(0, 2, 1).copy(), True)
    y_t = bn(tx)
    y_t.backward(t(dout.transpose(0, 2, 1).copy()))
    k = kernels.get("batchnorm")
    y, m, s = k.forward(x, w, b, rm, rv, training)
    assert_close(y, y_t.detach().numpy().transpose(0, 2, 1), RED, "y")
    assert_close(rm, bn.running_mean.numpy(), RED, "running_mean")
    assert_close(rv, bn.running_var.numpy(), RED, "running_var")
    g = [np.zeros_like(a) for a in (x, w, b)]
    k.backward(dout, x, w, m, s, training, *g)
    assert_close(g[0], tx.grad.numpy().transpose(0, 2, 1), RED, "dx")
    assert_close(g[1], bn.weight.grad.numpy(), RED, "dw")
    assert_close(g[2], bn.bias.grad.numpy(), RED, "db")


@pytest.mark.parametrize("kind", ["l1", "mse"])
def test_masked_losses_vs_torch(rng, kind):
    pred, target = r32(rng, 16, 700, 80), r32(rng, 16, 700, 80)
    L = rng.integers(300, 701, 16)
    valid = ~key_padding_mask(L, 700)[..., None].expand(16, 700, 80)
    tp = t(pred, True)
    crit = torch.nn.L1Loss() if kind == "l1" else torch.nn.MSELoss()
    loss_t = crit(tp.masked_select(valid), t(target).masked_select(valid))
    loss_t.backward()
    k = kernels.get("losses")
    loss = getattr(k, f"{kind}_forward")(pred, target, L)
    assert abs(loss - loss_t.item()) <= 1e-5 * loss_t.item()
    dp = np.zeros_like(pred)
    getattr(k, f"{kind}_backward")(1.0, pred, target, L, dp)
    assert_close(dp, tp.grad.numpy(), 1e-5, "dpred")


# --------------------------------------------------------------------------- layers

def _grads_match(ours: nn.Module, theirs: torch.nn.Module, tol=RED):
    """Each parameter's gradient within ``tol`` relative to the max-norm of all gradients (a
    gradient that is mathematically 0, like the key bias's, is then judged at that scale)."""
    tg = {n: p.grad.numpy() for n, p in theirs.named_parameters()}
    scale = max(np.abs(g).max() for g in tg.values())
    for n, p in ours.named_parameters():
        assert_close(p.grad, tg[n], tol, f"grad {n}", floor=scale)


def _load(ours, theirs):
    ours.load_state_dict({k: v.detach().numpy() for k, v in theirs.state_dict().items()})


def test_layers_vs_torch(rng):
    """Linear, Conv1d, LayerNorm, BatchNorm1d, Embedding: same weights -> same outputs/grads."""
    cases = [
        (nn.Linear(256, 80), torch.nn.Linear(256, 80), (4, 50, 256), False),
        (nn.Conv1d(256, 1024, 9), torch.nn.Conv1d(256, 1024, 9, padding=4), (4, 50, 256), True),
        (nn.LayerNorm(256), torch.nn.LayerNorm(256), (4, 50, 256), False),
        (nn.BatchNorm1d(512), torch.nn.BatchNorm1d(512), (4, 50, 512), True),
    ]
    for ours, theirs, shape, channels_first in cases:
        _load(ours, theirs)
        x = r32(rng, *shape)
        tx = t(x.transpose(0, 2, 1).copy() if channels_first else x, True)
        y_t = theirs(tx)
        y_t = y_t.transpose(1, 2) if channels_first else y_t
        xt = Tensor(x, requires_grad=True)
        y = ours(xt)
        assert_close(y.data, y_t.detach().numpy(), RED, type(ours).__name__)
        dy = r32(rng, *y.shape)
        y.backward(dy)
        y_t.backward(t(dy))
        gx = tx.grad.numpy()
        assert_close(xt.grad, gx.transpose(0, 2, 1) if channels_first else gx, RED, "dx")
        _grads_match(ours, theirs)
    emb, temb = nn.Embedding(361, 256, padding_idx=0), torch.nn.Embedding(361, 256, padding_idx=0)
    _load(emb, temb)
    ids = rng.integers(0, 361, (4, 30))
    y, y_t = emb(ids), temb(torch.tensor(ids))
    np.testing.assert_array_equal(y.data, y_t.detach().numpy())
    dy = r32(rng, *y.shape)
    y.backward(dy)
    y_t.backward(t(dy))
    _grads_match(emb, temb)


def test_batchnorm_layer_state_dict_vs_torch(rng):
    ours, theirs = nn.BatchNorm1d(80), torch.nn.BatchNorm1d(80)
    assert list(ours.state_dict()) == list(theirs.state_dict())
    for _ in range(3):
        x = r32(rng, 2, 30, 80)
        ours(Tensor(x))
        theirs(t(x.transpose(0, 2, 1).copy()))
    for k, v in theirs.state_dict().items():
        assert_close(ours.state_dict()[k], v.numpy(), 1e-5, k)


@pytest.mark.parametrize("backend", kernels.available()["attention"])
def test_multihead_attention_vs_torch(rng, backend):
    """The reference's post-norm MHA block at FastSpeech2 size, dropout off, ragged lengths."""
    B, T = 8, 120
    theirs = TorchMultiHeadAttention(2, 256, 128, dropout=0.2).eval()
    ours = nn.MultiHeadAttention(2, 256, dropout=0.2, backend=backend).eval()
    assert list(ours.state_dict()) == [k for k in theirs.state_dict()]
    _load(ours, theirs)
    L = rng.integers(20, T + 1, B)
    x = r32(rng, B, T, 256)
    tx = t(x, True)
    y_t = theirs(tx, key_padding_mask(L, T))
    xt = Tensor(x, requires_grad=True)
    y = ours(xt, L)
    assert_close(y.data, y_t.detach().numpy(), RED, "y")
    dy = r32(rng, B, T, 256)
    y.backward(dy)
    y_t.backward(t(dy))
    assert_close(xt.grad, tx.grad.numpy(), RED, "dx")
    _grads_match(ours, theirs, 1e-3)
