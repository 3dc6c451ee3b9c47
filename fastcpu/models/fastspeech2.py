"""FastSpeech2 exactly as the reference (ming024/FastSpeech2) defines it, weight for weight.

Same module tree, state_dict names, order and shapes (spec Appendix A: 234 entries, 35,159,361
parameters for the LJSpeech config), same quirks: post-norm FFT blocks, no attention dropout, the
energy predictor sees the pitch embedding, frozen ``position_enc`` and ``*_bins`` stored in the
state dict, PostNet BatchNorm statistics over padded frames, decoder truncation at
``max_seq_len`` in training. One deliberate fix: inference scales energy by ``e_control`` (the
reference passes ``p_control`` there).

Activations are channels-last: texts (B, L), encoder output (B, L, H), decoder (B, T, H),
mel (B, T, 80). Padding is described by lengths (src_lens (B,), mel_lens (B,)).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from fastcpu import kernels
from fastcpu.autograd import Tensor
from fastcpu.config import ModelConfig
from fastcpu.nn import (BatchNorm1d, Conv1d, Embedding, LayerNorm, Linear, Module, ModuleList,
                        MultiHeadAttention, Parameter)
from fastcpu.nn import functional as F
from fastcpu.nn import init


def _phoneme_level():
    """The phoneme-level layers' GEMMs: forward in fp32, backward in the step's precision (see
    FastSpeech2's docstring)."""
    from fastcpu.kernels import gemm
    return kernels.use("fp32", backward=gemm.current())


def sinusoid_table(n_position: int, d_hid: int) -> np.ndarray:
    """(n_position, d_hid) float32: angle = pos / 10000^(2*floor(j/2)/d), sin on even j, cos on odd."""
    pos = np.arange(n_position, dtype=np.float64)[:, None]
    j = np.arange(d_hid)[None, :]
    angle = pos / np.power(10000, 2 * (j // 2) / d_hid)
    table = np.empty_like(angle)
    table[:, 0::2] = np.sin(angle[:, 0::2])
    table[:, 1::2] = np.cos(angle[:, 1::2])
    return table.astype(np.float32)


def _lengths(x):
    return np.asarray(x, dtype=np.int64)


# ----------------------------------------------------------------------------- blocks

class PositionwiseFeedForward(Module):
    """LayerNorm(Dropout(Conv_k1(ReLU(Conv_k0(x)))) + x); no dropout between the convs.

    With ``lengths`` the convs skip padded rows. Exact for the valid rows: the block's input is
    zero at padded rows (masked by the previous sub-layer) and its output there is masked next.
    """

    def __init__(self, d_in, d_hid, kernel_size, dropout):
        super().__init__()
        self.w_1 = Conv1d(d_in, d_hid, kernel_size[0], padding=(kernel_size[0] - 1) // 2)
        self.w_2 = Conv1d(d_hid, d_in, kernel_size[1], padding=(kernel_size[1] - 1) // 2)
        self.layer_norm = LayerNorm(d_in)
        self.p = dropout

    def forward(self, x, lengths=None):
        if lengths is not None and self.w_2.weight.shape[2] == 1 and self.w_1.backend is None \
                and self.w_2.backend is None:
            y = F.ffn(x, self.w_1.weight, self.w_1.bias, self.w_2.weight, self.w_2.bias, lengths)
        else:
            y = self.w_2(F.relu(self.w_1(x, lengths)), lengths)
        return self.layer_norm.residual(y, x, self.p)


class FFTBlock(Module):
    def __init__(self, d_model, n_head, d_inner, kernel_size, dropout):
        super().__init__()
        self.slf_attn = MultiHeadAttention(n_head, d_model, d_model // n_head, dropout=dropout)
        self.pos_ffn = PositionwiseFeedForward(d_model, d_inner, kernel_size, dropout)

    def forward(self, x, lengths):
        # padded rows are zeroed after each sub-layer (the reference's masked_fill), so neither
        # attention nor the convs compute them
        x = F.mask_rows(self.slf_attn(x, lengths, skip_padded_queries=True), lengths)
        return F.mask_rows(self.pos_ffn(x, lengths), lengths)


class Encoder(Module):
    def __init__(self, c: ModelConfig):
        super().__init__()
        self.max_seq_len = c.max_seq_len
        self.d = c.encoder_hidden
        self.src_word_emb = Embedding(c.n_src_vocab, c.encoder_hidden, padding_idx=0)
        self.position_enc = Parameter(sinusoid_table(c.max_seq_len + 1, c.encoder_hidden)[None],
                                      requires_grad=False)
        self.layer_stack = ModuleList([
            FFTBlock(c.encoder_hidden, c.encoder_head, c.conv_filter_size, c.conv_kernel_size,
                     c.encoder_dropout) for _ in range(c.encoder_layer)])

    def forward(self, texts, src_lens):
        L = texts.shape[1]
        if L > self.max_seq_len:
            if self.training:
                raise ValueError(f"encoder: {L} phonemes exceed max_seq_len={self.max_seq_len} "
                                 f"(the reference cannot train on them either)")
            table = sinusoid_table(L, self.d)
        else:
            table = self.position_enc.data[0, :L]
        x = F.add_const(self.src_word_emb(texts), table[None])
        with _phoneme_level():                       # see FastSpeech2's docstring
            for layer in self.layer_stack:
                x = layer(x, src_lens)
        return x


class Decoder(Module):
    def __init__(self, c: ModelConfig):
        super().__init__()
        self.max_seq_len = c.max_seq_len
        self.d = c.decoder_hidden
        self.position_enc = Parameter(sinusoid_table(c.max_seq_len + 1, c.decoder_hidden)[None],
                                      requires_grad=False)
        self.layer_stack = ModuleList([
            FFTBlock(c.decoder_hidden, c.decoder_head, c.conv_filter_size, c.conv_kernel_size,
                     c.decoder_dropout) for _ in range(c.decoder_layer)])

    def forward(self, x, mel_lens):
        T = x.shape[1]
        if not self.training and T > self.max_seq_len:
            table = sinusoid_table(T, self.d)
        else:                                   # training: frames past max_seq_len are dropped
            T = min(T, self.max_seq_len)
            x = F.slice_time(x, T)
            mel_lens = np.minimum(mel_lens, T)
            table = self.position_enc.data[0, :T]
        x = F.add_const(x, table[None])
        for layer in self.layer_stack:
            x = layer(x, mel_lens)
        return x, mel_lens


class Conv(Module):
    """The reference's Conv/ConvNorm wrapper (state_dict key ``.conv``)."""

    def __init__(self, c_in, c_out, kernel_size):
        super().__init__()
        self.conv = Conv1d(c_in, c_out, kernel_size, padding=(kernel_size - 1) // 2)

    def forward(self, x):
        return self.conv(x)


class VariancePredictorConvs(Module):
    def __init__(self, d_in, filt, k):
        super().__init__()
        self.conv1d_1 = Conv(d_in, filt, k)
        self.layer_norm_1 = LayerNorm(filt)
        self.conv1d_2 = Conv(filt, filt, k)
        self.layer_norm_2 = LayerNorm(filt)


class VariancePredictor(Module):
    """conv -> ReLU -> LayerNorm -> Dropout, twice, then Linear(->1), masked to 0 at padding."""

    def __init__(self, c: ModelConfig):
        super().__init__()
        self.conv_layer = VariancePredictorConvs(c.encoder_hidden, c.vp_filter_size,
                                                 c.vp_kernel_size)
        self.linear_layer = Linear(c.vp_filter_size, 1)
        self.p = c.vp_dropout

    def _dropout(self, h):
        return F.dropout(h, self.p, init.next_dropout_seed()) if self.training and self.p else h

    def forward(self, x, lengths):
        cl = self.conv_layer
        with _phoneme_level():         # see FastSpeech2's docstring
            h = self._dropout(cl.layer_norm_1(F.relu(cl.conv1d_1(x))))
            h = self._dropout(cl.layer_norm_2(F.relu(cl.conv1d_2(h))))
            out = self.linear_layer(h)
        out = F.reshape(out, out.shape[:2])
        return F.mask_rows(out, lengths)


class VarianceAdaptor(Module):
    def __init__(self, c: ModelConfig):
        super().__init__()
        self.duration_predictor = VariancePredictor(c)
        self.pitch_predictor = VariancePredictor(c)
        self.energy_predictor = VariancePredictor(c)
        self.pitch_bins = Parameter(_bins(c.pitch_range, c.n_bins, c.pitch_quantization),
                                    requires_grad=False)
        self.energy_bins = Parameter(_bins(c.energy_range, c.n_bins, c.energy_quantization),
                                     requires_grad=False)
        self.pitch_embedding = Embedding(c.n_bins, c.encoder_hidden)
        self.energy_embedding = Embedding(c.n_bins, c.encoder_hidden)

    def _embed(self, pred, target, control, bins, emb):
        if target is not None:
            return pred, emb(kernels.get("bucketize").forward(np.asarray(target, np.float32),
                                                              bins.data))
        if not _is_one(control):
            pred = Tensor(pred.data * np.asarray(control, np.float32).reshape(-1, 1))
        return pred, emb(kernels.get("bucketize").forward(pred.data, bins.data))

    def forward(self, x, src_lens, mel_lens, max_mel_len, p_targets, e_targets, d_targets,
                p_control, e_control, d_control):
        log_d_pred = self.duration_predictor(x, src_lens)
        p_pred, p_emb = self._embed(self.pitch_predictor(x, src_lens), p_targets, p_control,
                                    self.pitch_bins, self.pitch_embedding)
        x = x + p_emb
        e_pred, e_emb = self._embed(self.energy_predictor(x, src_lens), e_targets, e_control,
                                    self.energy_bins, self.energy_embedding)   # fixed: e_control
        x = x + e_emb
        if d_targets is not None:
            d_rounded = np.asarray(d_targets)
            x, _ = F.length_regulator(x, d_rounded, max_mel_len)
        else:
            d = np.round(np.exp(log_d_pred.data.astype(np.float64)) - 1)
            d = d * np.asarray(d_control, np.float64).reshape(-1, 1) if not _is_one(
                d_control) else d
            d_rounded = np.maximum(d, 0)
            d_rounded[np.arange(d.shape[1])[None, :] >= np.asarray(src_lens)[:, None]] = 0
            x, mel_lens = F.length_regulator(x, np.trunc(d_rounded).astype(np.int64), None)
        return x, p_pred, e_pred, log_d_pred, d_rounded, _lengths(mel_lens)


def _is_one(control):
    return np.ndim(control) == 0 and float(control) == 1.0


def linspace_f32(lo, hi, n) -> np.ndarray:
    """``torch.linspace(lo, hi, n)`` in float32, bit for bit: the step ``(end - start) / (n - 1)``
    in float32, then ``start + step * i`` for the first half and ``end - step * (n - 1 - i)``
    for the rest, each one fused multiply-add (torch's CPU kernel as compiled). The product of
    two float32 values is exact in float64, so one float64 multiply-add rounded to float32 is
    that FMA (checked against torch on hundreds of ranges in the tests)."""
    f = np.float32
    start, end = f(lo), f(hi)
    if n == 1:
        return np.array([start], f)
    step = f(f(end - start) / f(n - 1))
    i = np.arange(n, dtype=np.float64)
    half = n // 2
    s64 = np.float64(step)
    return np.where(i < half, s64 * i + np.float64(start),
                    -s64 * (n - 1 - i) + np.float64(end)).astype(f)


def _bins(rng, n_bins, quantization):
    """The reference's bin edges: ``torch.linspace`` (float32) of the range, or ``exp`` of it
    over the log range. Linear edges are torch's bit for bit; log edges take the correctly
    rounded ``exp`` of those float32 values, which torch's vectorised 1-ulp ``exp`` can miss by
    one ulp in a few entries (and they travel in checkpoints, so only fresh models differ)."""
    lo, hi = rng
    if quantization == "log":
        if lo <= 0:
            raise ValueError(f"log quantization needs a positive minimum, got {lo}")
        edges = linspace_f32(np.log(lo), np.log(hi), n_bins - 1)
        return np.exp(edges.astype(np.float64)).astype(np.float32)
    return linspace_f32(lo, hi, n_bins - 1)


class PostNet(Module):
    """5 x (Conv k5 -> BatchNorm -> tanh (not the last) -> Dropout 0.5); unmasked like the reference."""

    def __init__(self, c: ModelConfig):
        super().__init__()
        e, k, n = c.postnet_embedding_dim, c.postnet_kernel_size, c.postnet_n_convolutions
        chans = [c.n_mel_channels] + [e] * (n - 1) + [c.n_mel_channels]
        self.convolutions = ModuleList([
            ModuleList([Conv(chans[i], chans[i + 1], k), BatchNorm1d(chans[i + 1])])
            for i in range(n)])
        self.p = c.postnet_dropout

    def forward(self, x):
        n = len(self.convolutions)
        for i, (conv, bn) in enumerate(self.convolutions):
            x = bn(conv(x))
            if i < n - 1:
                x = F.tanh(x)
            if self.training and self.p:
                x = F.dropout(x, self.p, init.next_dropout_seed())
        return x


@dataclass
class FastSpeech2Output:
    mel: Tensor                 # (B, T', 80) before PostNet
    postnet_mel: Tensor         # (B, T', 80)
    pitch: Tensor               # (B, L) predicted (normalised) pitch
    energy: Tensor              # (B, L)
    log_duration: Tensor        # (B, L) predicted log(d + 1)
    duration_rounded: np.ndarray  # (B, L) the durations used by the length regulator
    src_lens: np.ndarray        # (B,)
    mel_lens: np.ndarray        # (B,) valid decoder frames (<= T')


class FastSpeech2(Module):
    """The reference model. ``forward`` maps onto the reference's ``forward(speakers, texts,
    src_lens, max_src_len, mels, mel_lens, max_mel_len, p_targets, e_targets, d_targets,
    p_control, e_control, d_control)``; controls may also be per-utterance arrays (B,).

    Mixed precision (``kernels.use("bf16")``, ``train.precision: bf16``): the frame-level layers
    (decoder, mel Linear, PostNet) run their GEMMs in bf16; the phoneme-level ones (encoder and
    the three variance predictors) run their forward GEMMs in fp32 and their backward GEMMs in
    bf16. They are ~10% of the step's FLOPs (B x L rows against B x T, T ~ 6.5 L), and the small
    pitch/energy/duration losses are the most sensitive to rounding in the *forward*: with the
    forward in bf16 their predictors' gradients moved 5-8% on a full-size batch (PyTorch's
    autocast: 8%); with the forward in fp32 and the backward in bf16 they move under 1%, as the
    backward's rounding is not amplified through the losses (tests/test_bf16.py)."""

    def __init__(self, config: ModelConfig | None = None):
        super().__init__()
        c = config or ModelConfig()
        c.validate()
        self.config = c
        self.encoder = Encoder(c)
        self.variance_adaptor = VarianceAdaptor(c)
        self.decoder = Decoder(c)
        self.mel_linear = Linear(c.decoder_hidden, c.n_mel_channels)
        self.postnet = PostNet(c)
        if c.multi_speaker:
            self.speaker_emb = Embedding(c.n_speakers, c.encoder_hidden)

    def forward_batch(self, b) -> FastSpeech2Output:
        """Teacher-forced forward of a ``fastcpu.data.Batch`` (targets from the batch)."""
        return self(b.speakers, b.texts, b.text_lens, b.max_text_len, b.mels, b.mel_lens,
                    b.max_mel_len, b.pitches, b.energies, b.durations)

    def forward(self, speakers, texts, src_lens, max_src_len=None, mels=None, mel_lens=None,
                max_mel_len=None, p_targets=None, e_targets=None, d_targets=None, p_control=1.0,
                e_control=1.0, d_control=1.0) -> FastSpeech2Output:
        texts = np.asarray(texts, dtype=np.int64)
        src_lens = _lengths(src_lens)
        if texts.ndim != 2 or src_lens.shape != (texts.shape[0],):
            raise ValueError(f"texts must be (B, L) with src_lens (B,); got {texts.shape}, "
                             f"{src_lens.shape}")
        x = self.encoder(texts, src_lens)
        if self.config.multi_speaker:
            x = F.add_over_time(x, self.speaker_emb(np.asarray(speakers, dtype=np.int64)))
        if mel_lens is not None:
            mel_lens = _lengths(mel_lens)
            if max_mel_len is None:
                max_mel_len = int(mel_lens.max(initial=0))
        x, p_pred, e_pred, log_d_pred, d_rounded, mel_lens = self.variance_adaptor(
            x, src_lens, mel_lens, max_mel_len, p_targets, e_targets, d_targets, p_control,
            e_control, d_control)
        x, mel_lens = self.decoder(x, mel_lens)
        mel = self.mel_linear(x)
        postnet_mel = self.postnet(mel) + mel
        return FastSpeech2Output(mel, postnet_mel, p_pred, e_pred, log_d_pred, d_rounded,
                                 src_lens, mel_lens)

    def infer(self, texts, src_lens, speakers=None, p_control=1.0, e_control=1.0, d_control=1.0):
        """Phoneme ids alone -> output (run under ``no_grad`` in eval mode by the caller)."""
        B = np.asarray(texts).shape[0]
        speakers = np.zeros(B, np.int64) if speakers is None else speakers
        return self.forward(speakers, texts, src_lens, p_control=p_control, e_control=e_control,
                            d_control=d_control)


class FastSpeech2Loss:
    """The reference loss: masked L1 on mel and postnet mel (valid frames, all bins), masked MSE on
    pitch, energy and log(duration + 1) (valid phonemes). Returns a dict of Tensors with "total"
    and each term; targets are plain arrays."""

    TERMS = ("mel", "postnet_mel", "pitch", "energy", "duration")

    def __call__(self, out: FastSpeech2Output, mels, pitches, energies, durations):
        T = out.mel.shape[1]
        mel_t = np.ascontiguousarray(np.asarray(mels, np.float32)[:, :T])
        if mel_t.shape[1] < T:
            raise ValueError(f"mel targets have {mel_t.shape[1]} frames, the model made {T}")
        log_d = np.log(np.asarray(durations, np.float64) + 1).astype(np.float32)
        terms = {
            "mel": F.masked_l1(out.mel, mel_t, out.mel_lens),
            "postnet_mel": F.masked_l1(out.postnet_mel, mel_t, out.mel_lens),
            "pitch": F.masked_mse(out.pitch, np.asarray(pitches, np.float32), out.src_lens),
            "energy": F.masked_mse(out.energy, np.asarray(energies, np.float32), out.src_lens),
            "duration": F.masked_mse(out.log_duration, log_d, out.src_lens),
        }
        total = terms["mel"]
        for k in self.TERMS[1:]:
            total = total + terms[k]
        return {"total": total, **terms}
