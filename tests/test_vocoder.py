"""HiFi-GAN: the vocoder kernels (reference against the defining sums in float64 and the adjoint
identity; the fast backend against the reference), the generator against a PyTorch implementation
written from its description (random weights, weight norm included), the converter round trip,
and the bad vocoder files."""
import numpy as np
import pytest

from fastcpu.kernels import vocoder as V
from fastcpu.models import hifigan


@pytest.fixture
def rng():
    return np.random.default_rng(7)


def direct_conv(x, w, b, d, slope):
    """The definition, one output at a time (float64)."""
    T, Ci = x.shape
    Co, _, K = w.shape
    p = d * (K - 1) // 2
    a = x if slope is None else np.where(x > 0, x, slope * x)
    y = np.zeros((T, Co))
    for t in range(T):
        for k in range(K):
            s = t + k * d - p
            if 0 <= s < T:
                y[t] += w[:, :, k] @ a[s]
    return y + b


def direct_convt(x, w, b, u, p):
    T, Ci = x.shape
    _, Co, K = w.shape
    To = (T - 1) * u - 2 * p + K
    y = np.zeros((To, Co))
    for s in range(T):
        for k in range(K):
            t = s * u + k - p
            if 0 <= t < To:
                y[t] += x[s] @ w[:, :, k]
    return y + b


@pytest.mark.parametrize("K,d,slope", [(3, 1, None), (7, 3, 0.1), (11, 5, 0.01), (1, 1, 0.1)])
def test_conv_reference_is_the_definition(rng, K, d, slope):
    x, w, b = rng.standard_normal((23, 5)), rng.standard_normal((4, 5, K)), rng.standard_normal(4)
    np.testing.assert_allclose(V.conv_reference(x, w, b, d, slope), direct_conv(x, w, b, d, slope),
                               rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("u,K", [(8, 16), (2, 4), (3, 5)])
def test_conv_transpose_reference_is_the_definition_and_the_adjoint(rng, u, K):
    p = (K - u) // 2
    x, w, b = rng.standard_normal((9, 6)), rng.standard_normal((6, 3, K)), rng.standard_normal(3)
    y = V.conv_transpose_reference(x, w, b, u, p)
    np.testing.assert_allclose(y, direct_convt(x, w, b, u, p), rtol=1e-12, atol=1e-12)
    # <convT(x), g> = <x, strided conv of g with the same taps>: the transpose of a strided conv
    g = rng.standard_normal(y.shape)
    lhs = np.sum((V.conv_transpose_reference(x, w, None, u, p)) * g)
    gp = np.zeros(((x.shape[0] - 1) * u + K, 3))
    gp[p:p + y.shape[0]] = g
    rhs = sum(np.sum(x[s] * (w[:, :, k] @ gp[s * u + k])) for s in range(x.shape[0])
              for k in range(K))
    assert abs(lhs - rhs) < 1e-10 * max(1.0, abs(lhs))


@pytest.mark.parametrize("T,Ci,Co,K,d,slope", [(300, 32, 32, 3, 1, 0.1), (70, 16, 8, 11, 5, None),
                                               (5, 8, 8, 7, 3, 0.1), (1, 4, 1, 7, 1, 0.01),
                                               (1200, 64, 64, 7, 3, 0.1)])
def test_conv_fast_matches_reference(rng, T, Ci, Co, K, d, slope, monkeypatch):
    monkeypatch.setattr(V, "CHUNK_BYTES", 4 * Ci * K * 256)      # several chunks
    x = rng.standard_normal((T, Ci)).astype(np.float32)
    w = (rng.standard_normal((Co, Ci, K)) / np.sqrt(Ci * K)).astype(np.float32)
    b = rng.standard_normal(Co).astype(np.float32)
    ref = V.conv_reference(x.astype(np.float64), w.astype(np.float64), b, d, slope)
    got = V.conv_numba(x, w, b, d, slope)
    np.testing.assert_allclose(got, ref, rtol=1e-4, atol=1e-5)
    base = rng.standard_normal((T, Co)).astype(np.float32)
    acc = base.copy()
    V.conv_numba(x, w, b, d, slope, out=acc, accumulate=True)
    V.conv_numba(x, w, None, d, slope, out=acc, accumulate=True)
    np.testing.assert_allclose(acc, base + 2 * ref - b, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("T,Ci,Co,u,K", [(37, 64, 32, 8, 16), (50, 16, 8, 2, 4), (1, 8, 4, 2, 4),
                                         (11, 8, 4, 3, 5)])
def test_conv_transpose_fast_matches_reference(rng, T, Ci, Co, u, K, monkeypatch):
    monkeypatch.setattr(V, "POLYPHASE_MAX_STRIDE", 8 if T % 2 else 2)   # both forms at u = 8
    p = (K - u) // 2
    x = rng.standard_normal((T, Ci)).astype(np.float32)
    w = (rng.standard_normal((Ci, Co, K)) / np.sqrt(Ci)).astype(np.float32)
    b = rng.standard_normal(Co).astype(np.float32)
    for slope in (None, 0.1):
        ref = V.conv_transpose_reference(x.astype(np.float64), w.astype(np.float64), b, u, p,
                                         slope)
        np.testing.assert_allclose(V.conv_transpose_numba(x, w, b, u, p, slope), ref,
                                   rtol=1e-4, atol=1e-5)


needs_dnnl = pytest.mark.skipif(not __import__("fastcpu.kernels.gemm", fromlist=["x"]).available(),
                                reason="oneDNN is not installed here")


@needs_dnnl
@pytest.mark.parametrize("T", [5, 32, 33, 100])          # one short tile, exact, overlapping
@pytest.mark.parametrize("K,d,post", [(3, 1, None), (11, 5, "lrelu"), (7, 1, "tanh")])
def test_onednn_tiled_conv_matches_reference(rng, T, K, d, post):
    from fastcpu import runtime
    L, Ci, Co = 32, 16, 24
    x = rng.standard_normal((T, Ci)).astype(np.float32)
    w = (rng.standard_normal((Co, Ci, K)) / np.sqrt(Ci * K)).astype(np.float32)
    b = rng.standard_normal(Co).astype(np.float32)
    src = V.buffer(T, L, Ci)
    src[V.HALO:V.HALO + T] = x
    dst = V.buffer(T, L, Co)
    with runtime.threads(2):
        V.OnednnConvs(2).conv(src, dst, T, L, w, b, d, post, 0.1)
    ref = V.conv_reference(x.astype(np.float64), w.astype(np.float64), b, d)
    ref = {None: ref, "lrelu": np.where(ref > 0, ref, 0.1 * ref), "tanh": np.tanh(ref)}[post]
    np.testing.assert_allclose(dst[V.HALO:V.HALO + T], ref, rtol=1e-4, atol=1e-5)
    assert not dst[:V.HALO].any()                        # the halo stays zero


@needs_dnnl
@pytest.mark.parametrize("T", [3, 16, 40])
@pytest.mark.parametrize("u", [8, 2])
def test_onednn_tiled_deconv_matches_reference(rng, T, u):
    from fastcpu import runtime
    L, Ci, Co, K = 16, 16, 8, 2 * u
    x = rng.standard_normal((T, Ci)).astype(np.float32)
    w = (rng.standard_normal((Ci, Co, K)) / np.sqrt(Ci)).astype(np.float32)
    b = rng.standard_normal(Co).astype(np.float32)
    src = V.buffer(T, L, Ci)
    src[V.HALO:V.HALO + T] = x
    dst = V.buffer(u * T, u * L, Co)
    with runtime.threads(2):
        V.OnednnConvs(2).deconv(src, dst, T, L, np.ascontiguousarray(w.transpose(1, 0, 2)), b,
                                u, u // 2)
    ref = V.conv_transpose_reference(x.astype(np.float64), w.astype(np.float64), b, u, u // 2)
    np.testing.assert_allclose(dst[V.HALO:V.HALO + u * T], ref, rtol=1e-4, atol=1e-5)


def test_tiles_cover_the_sequence():
    for T, L in [(1, 8), (8, 8), (9, 8), (100, 8)]:
        starts = V.tiles(T, L)
        covered = set()
        for t0 in starts:
            assert 0 <= t0 and (t0 + L <= T or T <= L)
            covered |= set(range(t0, min(t0 + L, T)))
        assert covered == set(range(T))


def test_leaky_relu(rng):
    x = rng.standard_normal(1001).astype(np.float32)
    np.testing.assert_array_equal(V.leaky_relu_numba(x, 0.1),
                                  V.leaky_relu_reference(x, np.float32(0.1)))


# ----------------------------------------------------------------------------- the generator

torch = pytest.importorskip("torch")


@pytest.fixture(scope="module")
def torch_gen():
    from fastcpu.testing.torch_hifigan import random_generator
    return random_generator(3)


def _weights(g):
    return hifigan.fold_weight_norm({k: v.detach().numpy() for k, v in g.state_dict().items()})


def test_state_dict_names_and_shapes_are_the_reference(torch_gen):
    sd = torch_gen.state_dict()
    assert sum(k.endswith("weight_v") for k in sd) == 2 + 4 + 12 * 6
    w = _weights(torch_gen)
    assert {k: tuple(v.shape) for k, v in w.items()} == hifigan.expected_shapes()
    assert 13.8e6 < hifigan.n_params() < 14.0e6          # "about 13.9M"


BACKENDS = ["numba"] + (["onednn"] if __import__("fastcpu.kernels.gemm",
                                                 fromlist=["x"]).available() else [])


@pytest.mark.parametrize("backend", BACKENDS)
def test_generator_matches_pytorch(torch_gen, backend, monkeypatch):
    monkeypatch.setattr(V, "TILE_FRAMES", 16)          # 37 frames: two tiles, one overlapping
    torch.manual_seed(5)
    mel = torch.randn(1, 80, 37) - 4
    with torch.no_grad():
        want = torch_gen(mel)[0, 0].numpy()
    gen = hifigan.Generator(_weights(torch_gen), backend=backend)
    assert gen.backend == backend
    got = gen(mel[0].numpy().T)
    assert got.shape == (37 * 256,) and got.dtype == np.float32
    scale = np.abs(want).max()
    assert 0.05 < scale < 1.0                            # neither silent nor saturated
    assert np.abs(got - want).max() <= 1e-4 * scale
    ref = hifigan.reference_forward({k: v.astype(np.float64) for k, v in
                                     _weights(torch_gen).items()},
                                    mel[0].numpy().T.astype(np.float64))
    assert np.abs(ref - want).max() <= 1e-4 * scale
    # one frame, and a batch at their own lengths
    short = mel[:, :, :1]
    with torch.no_grad():
        w1 = torch_gen(short)[0, 0].numpy()
    outs = gen.vocode([short[0].numpy().T, mel[0].numpy().T])
    assert np.abs(outs[0] - w1).max() <= 1e-4 * max(np.abs(w1).max(), 1e-3)
    assert np.abs(outs[1] - got).max() == 0


def test_converter_round_trips_a_generator_file(torch_gen, tmp_path):
    from fastcpu import convert
    from fastcpu.testing.torch_hifigan import save_generator_file
    src, dst = tmp_path / "generator_LJSpeech.pth.tar", tmp_path / "g.safetensors"
    save_generator_file(torch_gen, src)
    assert convert.main([str(src), str(dst)]) == 0
    gen = hifigan.Generator.load(dst)
    # back into a PyTorch generator without weight norm: the same outputs
    from fastcpu.testing.torch_hifigan import TorchGenerator
    plain = TorchGenerator()
    plain.remove_weight_norm()
    plain.load_state_dict({k: torch.from_numpy(v) for k, v in gen.weights.items()})
    mel = torch.randn(1, 80, 20) - 4
    with torch.no_grad():
        a, b = torch_gen(mel)[0, 0].numpy(), plain.eval()(mel)[0, 0].numpy()
    assert np.abs(a - b).max() <= 1e-5 * np.abs(a).max()
    np.testing.assert_allclose(gen(mel[0].numpy().T), a, atol=1e-4 * np.abs(a).max())


def test_bad_generator_files(tmp_path, torch_gen, capsys):
    from fastcpu import convert
    sd = dict(torch_gen.state_dict())
    sd["conv_post.weight_v"] = torch.zeros(1, 16, 7)
    bad = tmp_path / "bad.pth.tar"
    torch.save({"generator": sd}, bad)
    assert convert.main([str(bad), str(tmp_path / "o.safetensors")]) == 2
    err = capsys.readouterr().err
    assert "conv_post.weight has shape (1, 16, 7), HiFi-GAN V1 expects (1, 32, 7)" in err
    assert not (tmp_path / "o.safetensors").exists()
    junk = tmp_path / "junk.safetensors"
    junk.write_bytes(b"not a file")
    with pytest.raises(hifigan.VocoderError, match="not a safetensors generator"):
        hifigan.Generator.load(junk)
    from safetensors.numpy import save_file
    save_file({"conv_pre.weight": np.zeros((512, 80, 7), np.float32)}, str(junk))
    with pytest.raises(hifigan.VocoderError, match="missing conv_pre.bias"):
        hifigan.Generator.load(junk)
