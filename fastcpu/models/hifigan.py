"""HiFi-GAN V1 generator (Kong, Kim and Bae 2020), inference only: log-mel (T, 80) -> waveform
(256*T,) in [-1, 1], the vocoder of the reference project's synthesis.

Architecture (the reference's ``hifigan/models.py``; ``HifiganConfig`` holds V1):

    x = conv_pre(mel)                                   Conv1d(80 -> 512, k7)
    for i, (u, k) in enumerate(((8, 16), (8, 16), (2, 4), (2, 4))):
        x = ups[i](leaky_relu(x, 0.1))                  ConvTranspose1d(C -> C/2, k, u, (k-u)/2)
        x = mean_j resblocks[3i + j](x)                 kernel sizes 3, 7, 11
    wav = tanh(conv_post(leaky_relu(x, 0.01)))          Conv1d(32 -> 1, k7)

    ResBlock1(x): for d in (1, 3, 5):
        x = c2(leaky_relu(c1(leaky_relu(x, 0.1)), 0.1)) + x    c1 dilated by d, c2 not

Weights are plain ``<name>.weight`` / ``<name>.bias`` arrays under the reference's state-dict
names (``conv_pre``, ``ups.i``, ``resblocks.n.convs{1,2}.j``, ``conv_post``); weight norm is
folded once (``fold_weight_norm``: w = g * v / ||v||, the norm over every dim but 0).

The fast forward runs on ``fastcpu.kernels.vocoder`` (channels-last; every leaky ReLU fused into
the im2col of the conv that reads it, every bias into a GEMM epilogue, every residual add into
the GEMM that produces it) and folds the mean over the three ResBlocks into the weights of the
conv that reads it (leaky_relu(s/3) = leaky_relu(s)/3, so ups[i+1] and conv_post get w/3).
``reference_forward`` is the same network in NumPy on the reference kernels (float64 capable).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

LRELU_SLOPE = 0.1
POST_SLOPE = 0.01           # PyTorch's default slope, before conv_post


@dataclass(frozen=True)
class HifiganConfig:
    n_mels: int = 80
    upsample_rates: tuple = (8, 8, 2, 2)
    upsample_kernel_sizes: tuple = (16, 16, 4, 4)
    upsample_initial_channel: int = 512
    resblock_kernel_sizes: tuple = (3, 7, 11)
    resblock_dilation_sizes: tuple = ((1, 3, 5), (1, 3, 5), (1, 3, 5))

    @property
    def hop(self) -> int:
        return int(np.prod(self.upsample_rates))


V1 = HifiganConfig()


class VocoderError(ValueError):
    """A generator file that does not fit the architecture (names the key and the shapes)."""


def expected_shapes(cfg: HifiganConfig = V1) -> dict:
    """{name: shape} of every plain weight and bias, in the reference's state-dict order."""
    c0, nk = cfg.upsample_initial_channel, len(cfg.resblock_kernel_sizes)
    out = {"conv_pre.weight": (c0, cfg.n_mels, 7), "conv_pre.bias": (c0,)}
    for i, k in enumerate(cfg.upsample_kernel_sizes):
        ci, co = c0 // 2 ** i, c0 // 2 ** (i + 1)
        out[f"ups.{i}.weight"] = (ci, co, k)
        out[f"ups.{i}.bias"] = (co,)
    for i in range(len(cfg.upsample_rates)):
        ch = c0 // 2 ** (i + 1)
        for j, (k, dils) in enumerate(zip(cfg.resblock_kernel_sizes, cfg.resblock_dilation_sizes)):
            for part in ("convs1", "convs2"):
                for n in range(len(dils)):
                    out[f"resblocks.{i * nk + j}.{part}.{n}.weight"] = (ch, ch, k)
                    out[f"resblocks.{i * nk + j}.{part}.{n}.bias"] = (ch,)
    ch = c0 // 2 ** len(cfg.upsample_rates)
    out["conv_post.weight"] = (1, ch, 7)
    out["conv_post.bias"] = (1,)
    return out


def fold_weight_norm(state: dict) -> dict:
    """``<n>.weight_g`` / ``<n>.weight_v`` pairs -> ``<n>.weight`` = g * v / ||v|| (norm over
    every dim but 0, PyTorch's ``weight_norm(dim=0)``), computed in float64, stored float32;
    every other entry is kept (as float32)."""
    out = {}
    for name, v in state.items():
        if name.endswith(".weight_g"):
            continue
        if name.endswith(".weight_v"):
            base = name[:-len(".weight_v")]
            g = state.get(base + ".weight_g")
            if g is None:
                raise VocoderError(f"{base}: weight_v without weight_g")
            v64 = np.asarray(v, np.float64)
            norm = np.sqrt((v64 * v64).reshape(v64.shape[0], -1).sum(1))
            w = np.divide(np.asarray(g, np.float64).reshape(-1), norm,
                          out=np.zeros_like(norm), where=norm > 0)     # v = 0: w = 0
            out[base + ".weight"] = (v64 * w.reshape((-1,) + (1,) * (v64.ndim - 1))
                                     ).astype(np.float32)
        else:
            out[name] = np.asarray(v, np.float32)
    return out


def check_weights(weights: dict, cfg: HifiganConfig = V1, source: str = "generator") -> None:
    """Raise VocoderError naming the first missing, unexpected or misshapen entry."""
    want = expected_shapes(cfg)
    for name, shape in want.items():
        if name not in weights:
            raise VocoderError(f"{source}: missing {name} (a HiFi-GAN V1 generator has "
                               f"{len(want)} tensors)")
        got = tuple(np.shape(weights[name]))
        if got != shape:
            raise VocoderError(f"{source}: {name} has shape {got}, HiFi-GAN V1 expects {shape}")
    extra = sorted(set(weights) - set(want))
    if extra:
        raise VocoderError(f"{source}: unexpected tensor {extra[0]} (not a HiFi-GAN V1 "
                           f"generator{' of this configuration' if len(extra) < 5 else ''})")


def n_params(cfg: HifiganConfig = V1) -> int:
    return int(sum(np.prod(s) for s in expected_shapes(cfg).values()))


def _forward(weights, mel, cfg, k, ups_scale, sum_scale):
    """The network on kernel namespace ``k``; mel (T, n_mels) channels-last -> (hop*T,)."""
    nk = len(cfg.resblock_kernel_sizes)
    x = k.conv(mel, weights["conv_pre.weight"], weights["conv_pre.bias"])
    for i, (u, kk) in enumerate(zip(cfg.upsample_rates, cfg.upsample_kernel_sizes)):
        x = k.conv_transpose(x, ups_scale(i, weights[f"ups.{i}.weight"]),
                             weights[f"ups.{i}.bias"], u, (kk - u) // 2, LRELU_SLOPE)
        xs = None
        for j, dils in enumerate(cfg.resblock_dilation_sizes):
            r = x.copy()
            pre = f"resblocks.{i * nk + j}"
            for n, d in enumerate(dils):
                y = k.conv(r, weights[f"{pre}.convs1.{n}.weight"],
                           weights[f"{pre}.convs1.{n}.bias"], d, LRELU_SLOPE)
                k.conv(y, weights[f"{pre}.convs2.{n}.weight"], weights[f"{pre}.convs2.{n}.bias"],
                       1, LRELU_SLOPE, out=r, accumulate=True)
            if xs is None:
                xs = r
            else:
                xs += r
        x = sum_scale(xs, nk)
    y = k.conv(x, ups_scale(len(cfg.upsample_rates), weights["conv_post.weight"]),
               weights["conv_post.bias"], 1, POST_SLOPE)
    return np.tanh(y[:, 0])


def reference_forward(weights: dict, mel: np.ndarray, cfg: HifiganConfig = V1) -> np.ndarray:
    """The generator in NumPy on the reference kernels (dtype of ``mel``: float64 for checks)."""
    from fastcpu.kernels import vocoder
    k = vocoder.BACKENDS["reference"]()
    return _forward(weights, mel, cfg, k, lambda i, w: w, lambda xs, n: xs / n)


class Generator:
    """A HiFi-GAN generator with plain (weight-norm-folded) float32 weights.

    ``Generator(weights)`` checks every name and shape; ``__call__(mel)`` takes one log-mel
    (T, n_mels) channels-last (FastSpeech2's output layout) and returns the waveform (hop*T,)
    float32 in [-1, 1]; ``vocode(mels)`` does a list of them (each at its own length: no padding
    is synthesised)."""

    def __init__(self, weights: dict, cfg: HifiganConfig = V1, source: str = "generator",
                 backend: str = "auto"):
        check_weights(weights, cfg, source)
        self.cfg, self.source = cfg, source
        self.weights = {n: np.ascontiguousarray(weights[n], np.float32) for n in
                        expected_shapes(cfg)}
        nk = len(cfg.resblock_kernel_sizes)
        # the mean over the ResBlocks folded into the next conv's weights (see the module doc)
        self._scaled = {i: (self.weights[f"ups.{i}.weight"] / np.float32(nk)) for i in
                        range(1, len(cfg.upsample_rates))}
        self._scaled[len(cfg.upsample_rates)] = self.weights["conv_post.weight"] / np.float32(nk)
        from fastcpu import kernels
        from fastcpu.kernels import gemm
        if backend not in ("auto", "onednn", "numba", "reference"):
            raise ValueError(f"backend must be auto, onednn, numba or reference, got {backend!r}")
        if backend == "auto":
            backend = "onednn" if gemm.available() else "numba"
        self.backend = backend
        self._k = kernels.get("vocoder", "numba" if backend == "onednn" else backend)
        self._dnnl = {}                                  # threads -> OnednnConvs
        if backend == "onednn":
            # deconvolution weights as oneDNN's (Co, Ci, K), the 1/3 folded in where it is
            self._deconv_w = {i: np.ascontiguousarray(
                self._scaled.get(i, self.weights[f"ups.{i}.weight"]).transpose(1, 0, 2))
                for i in range(len(cfg.upsample_rates))}

    def __call__(self, mel: np.ndarray) -> np.ndarray:
        mel = np.ascontiguousarray(mel, np.float32)
        if mel.ndim != 2 or mel.shape[1] != self.cfg.n_mels:
            raise VocoderError(f"{self.source}: mel must be (T, {self.cfg.n_mels}), got "
                               f"{mel.shape}")
        if self.backend == "onednn":
            return self._forward_onednn(mel)
        return _forward(self.weights, mel, self.cfg, self._k,
                        lambda i, w: self._scaled[i] if i in self._scaled else w,
                        lambda xs, n: xs)

    def _forward_onednn(self, mel):
        """The same network on oneDNN primitives in fixed tiles over zero-haloed buffers
        (``fastcpu.kernels.vocoder``, section oneDNN): every bias and the leaky ReLU after each
        ResBlock's first conv and the final tanh are post-ops; the leaky ReLU before a conv and
        the residual add are one Numba pass between the two convs of a ResBlock step."""
        from fastcpu import runtime
        from fastcpu.kernels import vocoder as V
        nt = runtime.num_threads()
        c = self._dnnl.get(nt)
        if c is None:
            c = self._dnnl[nt] = V.OnednnConvs(nt)
        cfg, W, H, tf = self.cfg, self.weights, V.HALO, V.TILE_FRAMES
        nk = len(cfg.resblock_kernel_sizes)
        T = len(mel)
        mb = V.buffer(T, tf, cfg.n_mels)
        mb[H:H + T] = mel
        x = V.buffer(T, tf, cfg.upsample_initial_channel)
        c.conv(mb, x, T, tf, W["conv_pre.weight"], W["conv_pre.bias"], 1)
        L = tf
        for i, (u, k) in enumerate(zip(cfg.upsample_rates, cfg.upsample_kernel_sizes)):
            a = V.buffer(T, L, x.shape[1])
            V._act_into_nb(x, T, H, np.float32(LRELU_SLOPE), a)
            co = self._deconv_w[i].shape[0]
            xn = V.buffer(u * T, u * L, co)
            c.deconv(a, xn, T, L, self._deconv_w[i], W[f"ups.{i}.bias"], u, (k - u) // 2)
            T, L = u * T, u * L
            a, y, z = (V.buffer(T, L, co) for _ in range(3))
            xs = None
            for j, dils in enumerate(cfg.resblock_dilation_sizes):
                pre = f"resblocks.{i * nk + j}"
                r = xn.copy()
                V._act_into_nb(r, T, H, np.float32(LRELU_SLOPE), a)
                for n, d in enumerate(dils):
                    c.conv(a, y, T, L, W[f"{pre}.convs1.{n}.weight"], W[f"{pre}.convs1.{n}.bias"],
                           d, "lrelu", LRELU_SLOPE)
                    if T < L:
                        y[H + T:H + L] = 0.0           # the tile's rows past the end
                    c.conv(y, z, T, L, W[f"{pre}.convs2.{n}.weight"], W[f"{pre}.convs2.{n}.bias"],
                           1)
                    V._add_act_nb(r, z, T, H, np.float32(LRELU_SLOPE), a, n + 1 < len(dils))
                if xs is None:
                    xs = r
                else:
                    V._sum_into_nb(xs, r, T, H)
            x = xs
        a = V.buffer(T, L, x.shape[1])
        V._act_into_nb(x, T, H, np.float32(POST_SLOPE), a)
        out = V.buffer(T, L, 1)
        c.conv(a, out, T, L, self._scaled[len(cfg.upsample_rates)], W["conv_post.bias"], 1,
               "tanh")
        return out[H:H + T, 0].copy()

    def vocode(self, mels) -> list:
        return [self(m) for m in mels]

    @classmethod
    def load(cls, path, backend: str = "auto") -> "Generator":
        """A generator from a safetensors file (plain weights, as ``python -m fastcpu.convert``
        writes them; weight-norm pairs are folded on the way in)."""
        from pathlib import Path
        from safetensors import SafetensorError
        from safetensors.numpy import load_file
        path = Path(path)
        if not path.is_file():
            raise VocoderError(f"{path}: no such vocoder file")
        try:
            w = load_file(str(path))
        except (SafetensorError, OSError, ValueError) as e:
            raise VocoderError(f"{path}: not a safetensors generator file ({e})") from None
        if any(n.startswith("model/") for n in w):
            raise VocoderError(f"{path}: a fastcpu FastSpeech2 checkpoint, not a HiFi-GAN "
                               f"generator file")
        if any(n.endswith(".weight_v") for n in w):
            w = fold_weight_norm(w)
        return cls(w, source=str(path), backend=backend)

    def save(self, path, metadata: dict | None = None) -> None:
        from safetensors.numpy import save_file
        meta = {"format": "fastcpu-hifigan", "config": "V1" if self.cfg == V1 else repr(self.cfg)}
        meta.update(metadata or {})
        save_file(self.weights, str(path), metadata=meta)
