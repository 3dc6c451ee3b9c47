"""PyTorch implementations of the reference (ming024/FastSpeech2) building blocks, written from
../shared/reference/fastspeech2.md, used only as the oracle in parity tests."""
import torch
from torch import nn


def key_padding_mask(lengths, T):
    """True = padding (the reference's convention)."""
    return torch.arange(T)[None, :] >= torch.as_tensor(lengths)[:, None]


class TorchMultiHeadAttention(nn.Module):
    """The reference's post-norm MultiHeadAttention (SubLayers.py), no attention dropout."""

    def __init__(self, n_head, d_model, d_k, dropout=0.1):
        super().__init__()
        self.n_head, self.d_k = n_head, d_k
        self.w_qs = nn.Linear(d_model, n_head * d_k)
        self.w_ks = nn.Linear(d_model, n_head * d_k)
        self.w_vs = nn.Linear(d_model, n_head * d_k)
        self.layer_norm = nn.LayerNorm(d_model)
        self.fc = nn.Linear(n_head * d_k, d_model)
        self.dropout = nn.Dropout(dropout)

    def forward(self, x, pad_mask):
        B, T, _ = x.shape
        H, D = self.n_head, self.d_k
        q = self.w_qs(x).view(B, T, H, D).transpose(1, 2)
        k = self.w_ks(x).view(B, T, H, D).transpose(1, 2)
        v = self.w_vs(x).view(B, T, H, D).transpose(1, 2)
        s = q @ k.transpose(-1, -2) / D ** 0.5
        s = s.masked_fill(pad_mask[:, None, None, :], float("-inf"))
        o = (torch.softmax(s, -1) @ v).transpose(1, 2).reshape(B, T, H * D)
        return self.layer_norm(self.dropout(self.fc(o)) + x)
