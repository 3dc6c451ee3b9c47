"""Layers, each a thin shell over a kernel pair; parameter names and shapes are PyTorch's.

Activations are channels-last (B, T, C) throughout. Initialisation follows PyTorch's defaults
(fastcpu.nn.init).
"""
from __future__ import annotations

import math

import numpy as np

from fastcpu.nn import functional as F
from fastcpu.nn import init
from fastcpu.nn.module import Module, Parameter


class Linear(Module):
    """y = x @ weight^T + bias; weight (out, in)."""

    def __init__(self, in_features, out_features, bias=True):
        super().__init__()
        self.weight = Parameter(init.kaiming_uniform_default(
            np.empty((out_features, in_features), np.float32), in_features))
        self.bias = Parameter(init.uniform_(np.empty(out_features, np.float32),
                                            1 / math.sqrt(in_features))) if bias else None

    def forward(self, x):
        return F.linear(x, self.weight, self.bias)


class Conv1d(Module):
    """Channels-last conv1d: x (B, T, Ci) -> (B, To, Co); weight (Co, Ci, K) as nn.Conv1d."""

    def __init__(self, in_channels, out_channels, kernel_size, padding=None, bias=True,
                 backend=None):
        super().__init__()
        fan_in = in_channels * kernel_size
        self.padding = (kernel_size - 1) // 2 if padding is None else padding
        self.backend = backend
        self.weight = Parameter(init.kaiming_uniform_default(
            np.empty((out_channels, in_channels, kernel_size), np.float32), fan_in))
        self.bias = Parameter(init.uniform_(np.empty(out_channels, np.float32),
                                            1 / math.sqrt(fan_in))) if bias else None

    def forward(self, x, lengths=None):
        return F.conv1d(x, self.weight, self.bias, self.padding, self.backend, lengths)


class LayerNorm(Module):
    def __init__(self, normalized_shape, eps=1e-5, backend=None):
        super().__init__()
        self.eps, self.backend = eps, backend
        self.weight = Parameter(np.ones(normalized_shape, np.float32))
        self.bias = Parameter(np.zeros(normalized_shape, np.float32))

    def forward(self, x):
        return F.layer_norm(x, self.weight, self.bias, self.eps, self.backend)

    def residual(self, a, res, p=0.0):
        """LayerNorm(Dropout_p(a) + res) fused; dropout only in training mode."""
        p = p if self.training else 0.0
        seed = init.next_dropout_seed() if p > 0 else 0
        return F.residual_layer_norm(a, res, self.weight, self.bias, p, seed, self.eps,
                                     self.backend)


class BatchNorm1d(Module):
    """Per-channel batch norm over every (B, T) row; running stats with PyTorch's rules."""

    def __init__(self, num_features, eps=1e-5, momentum=0.1):
        super().__init__()
        self.eps, self.momentum = eps, momentum
        self.weight = Parameter(np.ones(num_features, np.float32))
        self.bias = Parameter(np.zeros(num_features, np.float32))
        self.register_buffer("running_mean", np.zeros(num_features, np.float32))
        self.register_buffer("running_var", np.ones(num_features, np.float32))
        self.register_buffer("num_batches_tracked", np.zeros((), np.int64))

    def forward(self, x):
        if self.training:
            self.num_batches_tracked[...] += 1
        return F.batch_norm(x, self.weight, self.bias, self.running_mean, self.running_var,
                            self.training, self.momentum, self.eps)


class Embedding(Module):
    def __init__(self, num_embeddings, embedding_dim, padding_idx=None):
        super().__init__()
        self.padding_idx = padding_idx
        w = init.normal_(np.empty((num_embeddings, embedding_dim), np.float32))
        if padding_idx is not None:
            w[padding_idx] = 0
        self.weight = Parameter(w)

    def forward(self, ids):
        return F.embedding(ids, self.weight, self.padding_idx)


class Dropout(Module):
    def __init__(self, p=0.5):
        super().__init__()
        if not 0.0 <= p < 1.0:
            raise ValueError(f"Dropout: p must be in [0, 1), got {p}")
        self.p = p

    def forward(self, x):
        if not self.training or self.p == 0:
            return x
        return F.dropout(x, self.p, init.next_dropout_seed())


class MultiHeadAttention(Module):
    """FastSpeech2's post-norm self-attention: LayerNorm(Dropout(fc(attn(x))) + x).

    Sub-module names and order are the reference's (w_qs, w_ks, w_vs, layer_norm, fc); no dropout
    on the attention probabilities; key padding by ``lengths``. ``skip_padded_queries=True``
    leaves padded rows' attention at 0 instead of computing it (for callers that zero those rows
    afterwards, as FastSpeech2's blocks do).
    """

    def __init__(self, n_head, d_model, d_k=None, dropout=0.1, backend=None):
        super().__init__()
        d_k = d_model // n_head if d_k is None else d_k
        self.n_head, self.d_k, self.p, self.backend = n_head, d_k, dropout, backend
        self.w_qs = Linear(d_model, n_head * d_k)
        self.w_ks = Linear(d_model, n_head * d_k)
        self.w_vs = Linear(d_model, n_head * d_k)
        self.layer_norm = LayerNorm(d_model)
        self.fc = Linear(n_head * d_k, d_model)

    def forward(self, x, lengths, skip_padded_queries=False):
        B, T, _ = x.shape
        H, D = self.n_head, self.d_k
        # the three projections as one GEMM; attention reads q, k, v as views of its output
        qkv = F.linear_cat(x, self.w_qs.weight, self.w_qs.bias, self.w_ks.weight, self.w_ks.bias,
                           self.w_vs.weight, self.w_vs.bias)
        o = F.attention_packed(F.reshape(qkv, (B, T, 3, H, D)), lengths, 1.0 / math.sqrt(D),
                               self.backend, skip_padded_queries)
        o = self.fc(F.reshape(o, (B, T, H * D)))
        return self.layer_norm.residual(o, x, self.p)
