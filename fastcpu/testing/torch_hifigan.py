"""A PyTorch HiFi-GAN V1 generator written from its description (``shared/reference/hifigan.md``;
the reference's ``hifigan/models.py`` layout and state-dict names, weight norm included): the
oracle of the vocoder parity tests and the PyTorch side of ``bench --inference``. Needs torch
(the ``test`` extra); never imported by synthesis code."""
import warnings

import torch
from torch import nn
from torch.nn import functional as F
from torch.nn.utils import remove_weight_norm
from torch.nn.utils import weight_norm as _weight_norm

from fastcpu.models.hifigan import V1, HifiganConfig

LRELU_SLOPE = 0.1


def weight_norm(m):
    """The ``weight_g``/``weight_v`` form the reference's files hold (torch calls it deprecated
    in favour of parametrizations, whose state-dict names differ)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        return _weight_norm(m)


def _pad(k, d=1):
    return (k * d - d) // 2


class TorchResBlock1(nn.Module):
    def __init__(self, ch, k, dilations):
        super().__init__()
        self.convs1 = nn.ModuleList(
            weight_norm(nn.Conv1d(ch, ch, k, dilation=d, padding=_pad(k, d))) for d in dilations)
        self.convs2 = nn.ModuleList(weight_norm(nn.Conv1d(ch, ch, k, padding=_pad(k)))
                                    for _ in dilations)

    def forward(self, x):
        for c1, c2 in zip(self.convs1, self.convs2):
            xt = c2(F.leaky_relu(c1(F.leaky_relu(x, LRELU_SLOPE)), LRELU_SLOPE))
            x = xt + x
        return x

    def remove_weight_norm(self):
        for c in list(self.convs1) + list(self.convs2):
            remove_weight_norm(c)


class TorchGenerator(nn.Module):
    def __init__(self, cfg: HifiganConfig = V1):
        super().__init__()
        self.cfg = cfg
        c0 = cfg.upsample_initial_channel
        self.num_kernels = len(cfg.resblock_kernel_sizes)
        self.conv_pre = weight_norm(nn.Conv1d(cfg.n_mels, c0, 7, padding=3))
        self.ups = nn.ModuleList()
        for i, (u, k) in enumerate(zip(cfg.upsample_rates, cfg.upsample_kernel_sizes)):
            self.ups.append(weight_norm(nn.ConvTranspose1d(c0 // 2 ** i, c0 // 2 ** (i + 1), k, u,
                                                           padding=(k - u) // 2)))
        self.resblocks = nn.ModuleList()
        for i in range(len(self.ups)):
            ch = c0 // 2 ** (i + 1)
            for k, d in zip(cfg.resblock_kernel_sizes, cfg.resblock_dilation_sizes):
                self.resblocks.append(TorchResBlock1(ch, k, d))
        self.conv_post = weight_norm(nn.Conv1d(ch, 1, 7, padding=3))

    def forward(self, x):
        x = self.conv_pre(x)
        for i, up in enumerate(self.ups):
            x = up(F.leaky_relu(x, LRELU_SLOPE))
            xs = None
            for j in range(self.num_kernels):
                r = self.resblocks[i * self.num_kernels + j](x)
                xs = r if xs is None else xs + r
            x = xs / self.num_kernels
        x = self.conv_post(F.leaky_relu(x))
        return torch.tanh(x)

    def remove_weight_norm(self):
        for m in [self.conv_pre, *self.ups, self.conv_post]:
            remove_weight_norm(m)
        for r in self.resblocks:
            r.remove_weight_norm()


def random_generator(seed=0, cfg: HifiganConfig = V1, scale=1.0):
    """A generator with seeded random weights; weight_g drawn too, so the norm matters.
    ``scale`` multiplies weight_g (small values keep the activations away from tanh's flat ends)."""
    torch.manual_seed(seed)
    g = TorchGenerator(cfg)
    with torch.no_grad():
        for name, p in g.named_parameters():
            if name.endswith("weight_g"):
                p.copy_(scale * (0.5 + torch.rand_like(p)))
            elif name.endswith("bias"):
                p.copy_(0.05 * torch.randn_like(p))
    return g.eval()


def save_generator_file(g: TorchGenerator, path):
    """Write the reference's generator file: ``{"generator": state_dict}`` with weight norm."""
    torch.save({"generator": g.state_dict()}, path)
